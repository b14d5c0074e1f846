//! How VCPU state moves between the front end's cache and KVM.
//!
//! KVM copies the general-purpose registers, the segment and control
//! registers (with EFER) and the event state into `kvm_run` at every exit
//! when asked to (`KVM_CAP_SYNC_REGS`), and loads them from there at the
//! next entry when marked dirty. The front end says which parts it reads
//! and writes around exits ([`VcpuBackend::want`](crate::backend::VcpuBackend::want));
//! the sets it used during the last few runs stay requested, so a loop
//! that reads GPRS and SEGS at every exit and writes GPRS back makes no
//! ioctl besides `KVM_RUN`, while a loop that never looks at the state
//! pays nothing for the copies. XCR0, the other MSRs, the debug registers
//! and the XSAVE area are not in `kvm_run`: loading them costs one ioctl
//! each, storing them one ioctl (XCR0 only when it changed).

use kvm_bindings::{Msrs, kvm_msr_entry, kvm_regs, kvm_run, kvm_sregs, kvm_vcpu_events, kvm_xcr, kvm_xcrs, kvm_xsave};

use super::convert;
use super::vcpu::{KvmVcpu, sync_sets};
use crate::backend::Parts;
use crate::error::{Error, Result};
use crate::x86::event::Event;
use crate::x86::mode::CodeRegs;
use crate::x86::state::{Cr, Fxsave, Intr, Msr, State};
use crate::x86::xsave::{XSAVE_SIZE, Xsave, xfeature};

/// MSRs of the MSRS component moved with `KVM_GET/SET_MSRS` (EFER travels
/// with the special registers).
const IOCTL_MSRS: [Msr; 10] = [
    Msr::Star,
    Msr::Lstar,
    Msr::Cstar,
    Msr::Sfmask,
    Msr::KernelGsBase,
    Msr::SysenterCs,
    Msr::SysenterEsp,
    Msr::SysenterEip,
    Msr::Pat,
    Msr::Tsc,
];

/// Runs a sync set stays requested after its last use.
const SYNC_TTL: u8 = 16;

/// Which register sets travel through `kvm_run`, and what it holds now.
#[derive(Debug)]
pub(crate) struct SyncPolicy {
    /// Sets `kvm_run` holds current values of.
    synced: u64,
    /// Sets the front end used since the last run.
    used: u64,
    /// Remaining runs for which each set stays requested.
    ttl: [u8; 3],
    /// Sets requested for the current run.
    valid: u64,
    /// Each set in `valid` has its full TTL, the others none: a run that
    /// used exactly `valid` again changes nothing.
    ttl_full: bool,
    /// XCR0 known to be loaded in KVM.
    xcr0: Option<u64>,
    /// The TSC value last loaded: storing it back does not reset the
    /// guest's TSC (NVMM's rule: only a changed TSC is written).
    tsc_loaded: Option<u64>,
}

impl Default for SyncPolicy {
    fn default() -> SyncPolicy {
        // KVM's RESET has XCR0 = x87 and TSC 0.
        SyncPolicy {
            synced: 0,
            used: 0,
            ttl: [0; 3],
            valid: 0,
            ttl_full: true,
            xcr0: Some(xfeature::X87),
            tsc_loaded: Some(0),
        }
    }
}

fn sync_sets_of(parts: Parts) -> u64 {
    let mut s = 0;
    if parts.intersects(Parts::GPRS) {
        s |= sync_sets::REGS;
    }
    if parts.intersects(Parts::SEGS | Parts::CS | Parts::CR | Parts::EFER) {
        s |= sync_sets::SREGS;
    }
    if parts.intersects(Parts::INTR) {
        s |= sync_sets::EVENTS;
    }
    s
}

impl SyncPolicy {
    pub(super) fn want(&mut self, parts: Parts) {
        self.used |= sync_sets_of(parts);
    }

    /// Chooses the sets KVM copies out at the next exit: those used during
    /// the last `SYNC_TTL` runs.
    #[inline(always)]
    pub(super) fn before_run(&mut self, run: &mut kvm_run) {
        let used = std::mem::take(&mut self.used);
        // (`kvm_run` still asks for `valid`: KVM does not change it.)
        if used == self.valid && self.ttl_full {
            return;
        }
        self.age(used, run);
    }

    /// [`SyncPolicy::before_run`] when a set's TTL changes.
    #[inline(never)]
    fn age(&mut self, used: u64, run: &mut kvm_run) {
        let mut valid = 0;
        for (i, ttl) in self.ttl.iter_mut().enumerate() {
            let bit = 1u64 << i;
            if used & bit != 0 {
                *ttl = SYNC_TTL;
            } else {
                *ttl = ttl.saturating_sub(1);
            }
            if *ttl > 0 {
                valid |= bit;
            }
        }
        self.valid = valid;
        self.ttl_full = used == valid;
        run.kvm_valid_regs = valid;
    }

    /// After a `KVM_RUN`: KVM copied the requested sets out (on every
    /// return, interrupted runs included) unless the run failed.
    pub(super) fn after_run(&mut self, ok: bool) {
        self.synced = if ok { self.valid } else { 0 };
    }

    /// Forgets XCR0 (a reused VCPU keeps its last owner's).
    pub(super) fn forget_xcr0(&mut self) {
        self.xcr0 = None;
    }

    /// Nothing `kvm_run` holds is current (the state was set by ioctls).
    pub(super) fn invalidate(&mut self) {
        self.synced = 0;
    }

    /// `kvm_run` holds these sets now (written there, to be loaded).
    pub(super) fn hold(&mut self, sets: u64) {
        self.synced |= sets;
    }
}

impl KvmVcpu {
    fn synced(&self, set: u64) -> bool {
        self.sync.synced & set != 0
    }

    pub(super) fn add_dirty(&mut self, set: u64) {
        self.fd.get_kvm_run().kvm_dirty_regs |= set;
    }

    /// The current special registers: from `kvm_run` if KVM synced them,
    /// else by ioctl (then kept in `kvm_run` until the next run).
    fn current_sregs(&mut self) -> Result<&kvm_sregs> {
        if !self.synced(sync_sets::SREGS) {
            self.fetch_sregs()?;
        }
        Ok(&self.fd.sync_regs_mut().sregs)
    }

    /// `KVM_GET_SREGS` into `kvm_run` (out of line: a `kvm_sregs` on the
    /// stack of every state read otherwise).
    #[cold]
    #[inline(never)]
    fn fetch_sregs(&mut self) -> Result<()> {
        self.ioctls += 1;
        let s = self.fd.get_sregs().map_err(|e| Error::kvm_errno("KVM_GET_SREGS", e))?;
        self.fd.sync_regs_mut().sregs = s;
        self.sync.synced |= sync_sets::SREGS;
        Ok(())
    }

    /// `f` of the general-purpose registers KVM has now: from `kvm_run`
    /// if KVM synced them, else by ioctl (not kept in `kvm_run`, which may
    /// hold registers stored for the next run).
    fn with_current_regs<R>(&mut self, f: impl FnOnce(&kvm_regs) -> R) -> Result<R> {
        if self.synced(sync_sets::REGS) {
            return Ok(f(&self.fd.sync_regs_mut().regs));
        }
        self.with_fetched_regs(f)
    }

    /// [`KvmVcpu::with_current_regs`] by `KVM_GET_REGS` (out of line: a
    /// `kvm_regs` on the stack of every state read otherwise).
    #[cold]
    #[inline(never)]
    fn with_fetched_regs<R>(&mut self, f: impl FnOnce(&kvm_regs) -> R) -> Result<R> {
        self.ioctls += 1;
        let r = self.fd.get_regs().map_err(|e| Error::kvm_errno("KVM_GET_REGS", e))?;
        Ok(f(&r))
    }

    /// The current events, like [`KvmVcpu::current_sregs`].
    pub(super) fn current_events(&mut self) -> Result<&kvm_vcpu_events> {
        if !self.synced(sync_sets::EVENTS) {
            self.ioctls += 1;
            let e = self.fd.get_vcpu_events().map_err(|e| Error::kvm_errno("KVM_GET_VCPU_EVENTS", e))?;
            self.fd.sync_regs_mut().events = e;
            self.sync.synced |= sync_sets::EVENTS;
        }
        Ok(&self.fd.sync_regs_mut().events)
    }

    /// The registers that locate the code at RIP
    /// ([`VcpuBackend::code_regs`](crate::backend::VcpuBackend::code_regs)),
    /// read from `kvm_run` without converting the rest of the state.
    #[inline]
    pub(super) fn load_code_regs(&mut self) -> Result<CodeRegs> {
        self.sync.want(Parts::CODE);
        let (rip, rcx, rdx) = self.with_current_regs(|r| (r.rip, r.rcx, r.rdx))?;
        let s = self.current_sregs()?;
        Ok(CodeRegs {
            rip,
            rcx,
            rdx,
            cs_base: s.cs.base,
            cs_l: s.cs.l != 0,
            cs_d: s.cs.db != 0,
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
        })
    }

    /// RFLAGS ([`VcpuBackend::rflags`](crate::backend::VcpuBackend::rflags)),
    /// read from `kvm_run` without converting the other registers.
    pub(super) fn load_rflags(&mut self) -> Result<u64> {
        self.sync.want(Parts::GPRS);
        self.with_current_regs(|r| r.rflags)
    }

    #[inline]
    pub(super) fn load_parts(&mut self, parts: Parts, state: &mut State, xsave: &mut Xsave) -> Result<()> {
        if parts.intersects(Parts::GPRS) {
            self.with_current_regs(|r| convert::gprs_from_kvm(r, &mut state.gprs))?;
        }
        if parts.intersects(Parts::SEGS) {
            self.current_sregs()?;
            let s = &self.fd.sync_regs_mut().sregs;
            self.segs_memo.segs_from_kvm(s, &mut state.segs);
        }
        // (The rest out of line, behind one branch: the common read after
        // an exit is GPRS and SEGS, whose code then stays together.)
        if parts.intersects(
            Parts::CS | Parts::CR | Parts::EFER | Parts::XCR0 | Parts::MSRS | Parts::DRS | Parts::INTR | Parts::FPU,
        ) {
            crate::hint::cold_path();
            self.load_others(parts, state, xsave)?;
        }
        Ok(())
    }

    /// The parts of `load_parts` other than GPRS and SEGS.
    #[inline(never)]
    fn load_others(&mut self, parts: Parts, state: &mut State, xsave: &mut Xsave) -> Result<()> {
        if parts.intersects(Parts::CS | Parts::CR | Parts::EFER) {
            self.current_sregs()?;
            let s = &self.fd.sync_regs_mut().sregs;
            if parts.intersects(Parts::CS) && !parts.intersects(Parts::SEGS) {
                convert::cs_from_kvm(s, &mut state.segs);
            }
            if parts.intersects(Parts::CR) {
                convert::crs_from_kvm(s, &mut state.crs);
            }
            if parts.intersects(Parts::EFER) {
                state.msrs[Msr::Efer] = s.efer;
            }
        }
        if parts.intersects(Parts::XCR0 | Parts::MSRS | Parts::DRS | Parts::INTR | Parts::FPU) {
            self.load_by_ioctl(parts, state, xsave)?;
        }
        Ok(())
    }

    /// The parts of `load_parts` not in `kvm_run`, one ioctl each (out of
    /// line: their buffers would sit on the stack of every state read).
    #[inline(never)]
    fn load_by_ioctl(&mut self, parts: Parts, state: &mut State, xsave: &mut Xsave) -> Result<()> {
        if parts.intersects(Parts::XCR0) {
            self.ioctls += 1;
            let x = self.fd.get_xcrs().map_err(|e| Error::kvm_errno("KVM_GET_XCRS", e))?;
            let n = (x.nr_xcrs as usize).min(x.xcrs.len());
            let v = x.xcrs[..n].iter().find(|x| x.xcr == 0).map_or(xfeature::X87, |x| x.value);
            state.crs[Cr::Xcr0] = v;
            self.sync.xcr0 = Some(v);
        }
        if parts.intersects(Parts::MSRS) {
            self.load_msrs(state)?;
        }
        if parts.intersects(Parts::DRS) {
            self.ioctls += 1;
            let d = self.fd.get_debug_regs().map_err(|e| Error::kvm_errno("KVM_GET_DEBUGREGS", e))?;
            convert::drs_from_kvm(&d, &mut state.drs);
        }
        if parts.intersects(Parts::INTR) {
            let e = self.current_events()?;
            convert::intr_from_kvm(e, &mut state.intr);
        }
        if parts.intersects(Parts::FPU) {
            self.load_xsave(xsave)?;
            let legacy: &[u8; 512] = xsave.as_bytes()[..512].try_into().expect("512 bytes");
            state.fpu = Fxsave::from_bytes(legacy);
        }
        Ok(())
    }

    fn load_msrs(&mut self, state: &mut State) -> Result<()> {
        self.ioctls += 1;
        let entries: Vec<kvm_msr_entry> =
            IOCTL_MSRS.iter().map(|m| kvm_msr_entry { index: m.index(), ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::NoMemory { what: "building an MSR list" })?;
        let n = self.fd.get_msrs(&mut msrs).map_err(|e| Error::kvm_errno("KVM_GET_MSRS", e))?;
        if n != IOCTL_MSRS.len() {
            return Err(Error::kvm("KVM_GET_MSRS", std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        for (m, e) in IOCTL_MSRS.iter().zip(msrs.as_slice()) {
            state.msrs[*m] = e.data;
        }
        self.sync.tsc_loaded = Some(state.msrs[Msr::Tsc]);
        Ok(())
    }

    /// Reads KVM's XSAVE area into `xsave`.
    pub(super) fn load_xsave(&mut self, xsave: &mut Xsave) -> Result<()> {
        self.ioctls += 1;
        let x = self.fd.get_xsave().map_err(|e| Error::kvm_errno("KVM_GET_XSAVE", e))?;
        let out: &mut [u8; XSAVE_SIZE] = xsave.as_bytes_mut();
        for (chunk, word) in out.chunks_exact_mut(4).zip(x.region.iter()) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Ok(())
    }

    #[inline]
    pub(super) fn store_parts(&mut self, parts: Parts, state: &State, xsave: &Xsave) -> Result<()> {
        if parts.intersects(Parts::XCR0 | Parts::MSRS | Parts::DRS | Parts::FPU) {
            self.store_by_ioctl(parts, state, xsave)?;
        }
        if parts.intersects(Parts::GPRS) {
            self.fd.sync_regs_mut().regs = convert::gprs_to_kvm(&state.gprs);
            self.add_dirty(sync_sets::REGS);
        }
        if parts.intersects(Parts::SEGS | Parts::CR | Parts::EFER) {
            let mut s = *self.current_sregs()?;
            if parts.intersects(Parts::SEGS) {
                convert::segs_into_kvm(&state.segs, &mut s);
            }
            if parts.intersects(Parts::CR) {
                convert::crs_into_kvm(&state.crs, &mut s);
                // Without an in-kernel LAPIC KVM reloads the TPR from
                // kvm_run.cr8 after the sync registers.
                self.fd.get_kvm_run().cr8 = s.cr8;
            }
            if parts.intersects(Parts::EFER) {
                s.efer = state.msrs[Msr::Efer];
            }
            self.fd.sync_regs_mut().sregs = s;
            self.add_dirty(sync_sets::SREGS);
        }
        Ok(())
    }

    /// The parts of `store_parts` not in `kvm_run`, one ioctl each, in the
    /// order KVM needs (out of line, as `load_by_ioctl`).
    #[inline(never)]
    fn store_by_ioctl(&mut self, parts: Parts, state: &State, xsave: &Xsave) -> Result<()> {
        // The order KVM needs: XCR0 before the XSAVE area that uses it.
        if parts.intersects(Parts::XCR0) {
            let x = state.crs[Cr::Xcr0];
            if self.sync.xcr0 != Some(x) {
                self.sync.xcr0 = None;
                self.ioctls += 1;
                let mut k = kvm_xcrs { nr_xcrs: 1, ..Default::default() };
                k.xcrs[0] = kvm_xcr { xcr: 0, reserved: 0, value: x };
                self.fd.set_xcrs(&k).map_err(|e| Error::kvm_errno("KVM_SET_XCRS", e))?;
                self.sync.xcr0 = Some(x);
            }
        }
        if parts.intersects(Parts::MSRS) {
            self.store_msrs(state)?;
        }
        if parts.intersects(Parts::DRS) {
            self.ioctls += 1;
            self.fd
                .set_debug_regs(&convert::drs_to_kvm(&state.drs))
                .map_err(|e| Error::kvm_errno("KVM_SET_DEBUGREGS", e))?;
        }
        if parts.intersects(Parts::FPU) {
            self.store_xsave(xsave)?;
        }
        Ok(())
    }

    fn store_msrs(&mut self, state: &State) -> Result<()> {
        let mut entries: Vec<kvm_msr_entry> = Vec::with_capacity(IOCTL_MSRS.len());
        for m in IOCTL_MSRS {
            let v = state.msrs[m];
            if m == Msr::Tsc && (v == 0 || Some(v) == self.sync.tsc_loaded) {
                continue;
            }
            entries.push(kvm_msr_entry { index: m.index(), data: v, ..Default::default() });
        }
        self.ioctls += 1;
        let msrs = Msrs::from_entries(&entries).map_err(|_| Error::NoMemory { what: "building an MSR list" })?;
        let n = self.fd.set_msrs(&msrs).map_err(|e| Error::kvm_errno("KVM_SET_MSRS", e))?;
        if n != entries.len() {
            // KVM stops at the first MSR it refuses.
            return Err(Error::InvalidConfiguration {
                why: "KVM refused an MSR value (e.g. PAT or EFER reserved bits)",
            });
        }
        Ok(())
    }

    fn store_xsave(&mut self, xsave: &Xsave) -> Result<()> {
        self.ioctls += 1;
        let mut x = kvm_xsave::default();
        for (word, chunk) in x.region.iter_mut().zip(xsave.as_bytes().chunks_exact(4)) {
            *word = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        }
        // SAFETY: `x` is a complete 4096-byte kvm_xsave; KVM_SET_XSAVE reads
        // exactly that much because we never enable larger (AMX) state.
        unsafe { self.fd.set_xsave(&x) }.map_err(|e| Error::kvm_errno("KVM_SET_XSAVE", e))
    }

    pub(super) fn store_event_parts(&mut self, intr: Option<&Intr>, events: &[Event], reset: bool) -> Result<()> {
        let mut e = if reset { convert::reset_events() } else { *self.current_events()? };
        if let Some(i) = intr {
            convert::intr_into_kvm(i, &mut e);
        }
        for ev in events {
            convert::event_into_kvm(ev, &mut e);
        }
        self.fd.sync_regs_mut().events = e;
        self.sync.synced |= sync_sets::EVENTS;
        self.add_dirty(sync_sets::EVENTS);
        Ok(())
    }

    /// A reused VCPU: its XCR0 is whatever its last owner left.
    pub(crate) fn forget_loaded_state(&mut self) {
        self.sync.forget_xcr0();
        self.sync.tsc_loaded = None;
    }
}
