//! The state cache: NVMM's get/set contract over the comm page, and the
//! store of dirty parts before a run.

use super::Vcpu;
use crate::backend::{Parts, VcpuBackend};
use crate::error::{Error, Result};
use crate::x86::event::Event;
use crate::x86::state::{Cr, State, StateMask};
use crate::x86::xsave::{Xsave, xfeature};

impl Vcpu {
    /// The state buffer (`vcpu->state`): current for the components got
    /// since the last run, and whatever was last written otherwise.
    pub fn state(&self) -> &State {
        self.comm.state()
    }

    /// The state buffer, to modify before [`Vcpu::set_state`].
    pub fn state_mut(&mut self) -> &mut State {
        self.comm.state_mut()
    }

    /// The XSAVE area beyond the FXSAVE image (part of the FPU component).
    pub fn xsave(&self) -> &Xsave {
        &self.xsave
    }

    /// The XSAVE area, to modify before `set_state(StateMask::FPU)`. What it
    /// holds then goes to the VCPU; without a call to this (or a get of
    /// the FPU), setting the FPU changes only the FXSAVE part and keeps the
    /// guest's AVX and other extended state.
    pub fn xsave_mut(&mut self) -> &mut Xsave {
        self.cache.xsave_current = true;
        &mut self.xsave
    }

    /// Fetches the components of `mask` that are not cached
    /// (`nvmm_vcpu_getstate`).
    ///
    /// After an I/O or memory exit nobody answered yet, the state shows
    /// the instruction not executed (RIP on it), as NVMM does; after it was
    /// answered, executed.
    pub fn get_state(&mut self, mask: StateMask) -> Result<()> {
        self.get_parts(Parts::of(mask))
    }

    /// [`Vcpu::get_state`] by parts: the library's own reads fetch only
    /// what they use (EFER without the other MSRs, say).
    pub(super) fn get_parts(&mut self, parts: Parts) -> Result<()> {
        self.take_payload_answer();
        self.backend.want(parts);
        let need = parts.minus(self.cache.have);
        if !need.is_empty() {
            self.settle_for_read(need)?;
            self.fetch(need)?;
        }
        Ok(())
    }

    /// Marks the components of `mask` to be loaded from [`Vcpu::state`] at
    /// the next run (`nvmm_vcpu_setstate`). No system call.
    pub fn set_state(&mut self, mask: StateMask) -> Result<()> {
        self.take_payload_answer();
        let parts = Parts::of(mask);
        self.backend.want(parts);
        self.cache.dirty |= parts;
        self.cache.have |= parts;
        Ok(())
    }

    /// Like [`Vcpu::get_state`] and [`Vcpu::set_state`] with raw
    /// `NVMM_X64_STATE_*` bits, rejecting unknown bits with `EINVAL`.
    pub fn get_state_bits(&mut self, bits: u64) -> Result<()> {
        self.get_state(mask_of_bits(bits)?)
    }

    /// See [`Vcpu::get_state_bits`].
    pub fn set_state_bits(&mut self, bits: u64) -> Result<()> {
        self.set_state(mask_of_bits(bits)?)
    }

    /// Gets `mask`, lets `f` modify the state, and sets `mask`.
    pub fn update<R>(&mut self, mask: StateMask, f: impl FnOnce(&mut State) -> R) -> Result<R> {
        self.get_state(mask)?;
        let r = f(self.comm.state_mut());
        self.set_state(mask)?;
        Ok(r)
    }

    /// Records `event` for injection at the next run (`nvmm_vcpu_inject`),
    /// checking NVMM's rules now. Injecting an NMI arms the NMI window exit,
    /// like NVMM. A later injection before the run replaces it.
    pub fn inject(&mut self, event: Event) -> Result<()> {
        event.validate()?;
        self.event = Some(event);
        self.backend.want(Parts::INTR);
        Ok(())
    }

    /// Makes an event pending without NVMM's rules (the assists raise
    /// exceptions NVMM's public injection refuses, like #BP).
    pub(super) fn inject_internal(&mut self, event: Event) {
        self.internal_events.push(event);
        self.backend.want(Parts::INTR);
    }

    /// Whether an event waits for the next run.
    pub(super) fn event_waiting(&self) -> bool {
        self.event.is_some() || !self.internal_events.is_empty() || self.shared.has_injected()
    }

    /// Loads `need` from the backend into the cache, showing the
    /// instruction behind the last exit as NVMM does.
    pub(super) fn fetch(&mut self, need: Parts) -> Result<()> {
        if need.is_empty() {
            return Ok(());
        }
        // What the library already read this exit comes from there.
        let from_raw = need.and(self.raw_parts).and(RAW_PARTS);
        if !from_raw.is_empty() {
            self.fetch_from_raw(from_raw);
        }
        let rest = need.minus(from_raw);
        if !rest.is_empty() {
            let state = self.comm.state_mut();
            self.backend.load(rest, state, &mut self.xsave)?;
        }
        if need.intersects(Parts::GPRS) {
            self.present_gprs()?;
        }
        if need.intersects(Parts::FPU | Parts::INTR) {
            self.fetched_fpu_or_intr(need);
        }
        self.cache.have |= need;
        Ok(())
    }

    /// Copies `parts` from what the library read of the backend's state
    /// this exit (out of line, as the next: the code of the common reads
    /// stays together).
    #[inline(never)]
    fn fetch_from_raw(&mut self, parts: Parts) {
        let (raw, state) = (&self.raw, self.comm.state_mut());
        if parts.intersects(Parts::GPRS) {
            state.gprs = raw.gprs;
        }
        if parts.intersects(Parts::SEGS) {
            state.segs = raw.segs;
        }
        if parts.intersects(Parts::CR) {
            let xcr0 = state.crs[Cr::Xcr0];
            state.crs = raw.crs;
            state.crs[Cr::Xcr0] = xcr0;
        }
        if parts.intersects(Parts::EFER) {
            state.msrs[crate::x86::state::Msr::Efer] = raw.msrs[crate::x86::state::Msr::Efer];
        }
    }

    /// What a fetch of `need` notes besides the values: the XSAVE area is
    /// KVM's, the window bits are the library's.
    #[inline(never)]
    fn fetched_fpu_or_intr(&mut self, need: Parts) {
        if need.intersects(Parts::FPU) {
            self.cache.xsave_current = true;
        }
        if need.intersects(Parts::INTR) {
            let w = self.windows;
            let intr = &mut self.comm.state_mut().intr;
            intr.set_int_window_exiting(w.int);
            intr.set_nmi_window_exiting(w.nmi);
        }
    }

    /// RFLAGS as NVMM shows it now: the cache's when it holds GPRS (they
    /// may hold the program's changes), else the backend's, read alone (the
    /// view of an in-flight instruction differs in RIP and the string
    /// registers only).
    pub(super) fn rflags_now(&mut self) -> Result<u64> {
        if self.cache.have.contains(Parts::GPRS) {
            Ok(self.comm.state().gprs[crate::x86::state::Gpr::Rflags])
        } else {
            self.backend.rflags()
        }
    }

    /// Writes NVMM's `state_cached` and `state_commit` into the comm page,
    /// where C programs see them (the C library does after each call; Rust
    /// programs have no use for them).
    pub fn publish_comm_bits(&mut self) {
        let bits = (self.cache.have, self.cache.dirty);
        if self.cache.published == Some(bits) {
            return;
        }
        self.cache.published = Some(bits);
        let cached = self.cache.have.complete_components().bits();
        let commit = self.cache.dirty.touched_components().bits();
        self.comm.set_bits(cached, commit);
    }

    /// Stores the dirty parts and the pending events for the next run.
    /// A part that fails is forgotten (a get fetches the kernel's value
    /// again); the others stay marked for the next run.
    pub(super) fn store_dirty(&mut self) -> Result<()> {
        if !self.cache.reset_events && !self.event_waiting() {
            if self.cache.dirty.is_empty() {
                return Ok(());
            }
            // The common store after an exit: the registers alone (into
            // `kvm_run`), forgotten if that fails, as below.
            if self.cache.dirty == Parts::GPRS {
                self.cache.dirty = Parts::NONE;
                return self
                    .backend
                    .store(Parts::GPRS, self.comm.state(), &self.xsave)
                    .inspect_err(|_| self.cache.have = self.cache.have.minus(Parts::GPRS));
            }
        }
        self.store_dirty_generally()
    }

    /// [`Vcpu::store_dirty`] in every case (out of line: the code of the
    /// common stores stays together).
    #[inline(never)]
    fn store_dirty_generally(&mut self) -> Result<()> {
        let mut pending = std::mem::take(&mut self.cache.dirty);
        let intr = pending.intersects(Parts::INTR);
        pending = pending.minus(Parts::INTR);
        if intr {
            let i = self.comm.state().intr;
            self.windows = super::Windows { int: i.int_window_exiting(), nmi: i.nmi_window_exiting() };
        }
        let result = self.store_parts(&mut pending);
        if result.is_err() {
            self.cache.dirty = pending;
            if intr {
                self.cache.dirty |= Parts::INTR;
            }
        }
        result?;
        self.store_events(intr).inspect_err(|_| self.cache.have = self.cache.have.minus(Parts::INTR))
    }

    fn store_parts(&mut self, pending: &mut Parts) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        // The order KVM needs: XCR0 before the XSAVE area that uses it.
        const ORDER: [Parts; 6] = [
            Parts::XCR0,
            Parts::MSRS,
            Parts::DRS,
            Parts::FPU,
            Parts::GPRS,
            Parts::SEGS.union(Parts::CR).union(Parts::EFER),
        ];
        for group in ORDER {
            let parts = pending.and(group);
            if parts.is_empty() {
                continue;
            }
            *pending = pending.minus(parts);
            self.store_group(parts).inspect_err(|_| self.cache.have = self.cache.have.minus(parts))?;
        }
        Ok(())
    }

    fn store_group(&mut self, parts: Parts) -> Result<()> {
        if parts.intersects(Parts::XCR0) {
            let mask = self.machine.sys.cap.arch.xcr0_mask;
            let s = self.comm.state_mut();
            s.crs[Cr::Xcr0] = (s.crs[Cr::Xcr0] & mask) | xfeature::X87;
        }
        if parts.intersects(Parts::FPU) {
            self.fpu_into_xsave()?;
        }
        self.backend.store(parts, self.comm.state(), &self.xsave)?;
        if parts.intersects(Parts::CR) {
            self.last_tpr = (self.comm.state().crs[Cr::Cr8] & 0xf) as u8;
        }
        Ok(())
    }

    /// Puts the cache's FXSAVE image into the XSAVE area to store (out of
    /// line: a state and an XSAVE area on the stack of every store
    /// otherwise).
    #[inline(never)]
    fn fpu_into_xsave(&mut self) -> Result<()> {
        let arch = self.machine.sys.cap.arch;
        if !self.cache.xsave_current {
            // Only the FXSAVE part was set: keep the rest of KVM's area.
            let mut fresh = Xsave::default();
            let mut scratch = *self.comm.state();
            self.backend.load(Parts::FPU, &mut scratch, &mut fresh)?;
            self.xsave = fresh;
            self.cache.xsave_current = true;
        }
        let s = self.comm.state_mut();
        s.fpu.fx_mxcsr_mask = arch.mxcsr_mask;
        s.fpu.fx_mxcsr &= arch.mxcsr_mask;
        let legacy = s.fpu.to_bytes();
        self.xsave.as_bytes_mut()[..512].copy_from_slice(&legacy);
        self.xsave.set_xstate_bv(self.xsave.xstate_bv() | xfeature::X87 | xfeature::SSE);
        Ok(())
    }

    /// Hands the pending events (and the interrupt state, when set) to the
    /// backend. An event a C program posted that breaks NVMM's rules fails
    /// the run with `EINVAL`, as on NetBSD.
    fn store_events(&mut self, intr_dirty: bool) -> Result<()> {
        let mut events = std::mem::take(&mut self.internal_events);
        if let Some(e) = self.shared.take_injected() {
            events.push(e);
        }
        if let Some(e) = self.event.take() {
            events.push(e);
        }
        if events.is_empty() && !intr_dirty && !self.cache.reset_events {
            return Ok(());
        }
        if events.iter().any(Event::is_nmi) {
            self.set_nmi_window(true);
        }
        let intr = intr_dirty.then(|| self.comm.state().intr);
        let reset = std::mem::take(&mut self.cache.reset_events);
        self.backend.store_events(intr.as_ref(), &events, reset)
    }
}

/// The parts [`Vcpu::raw_state`] keeps.
const RAW_PARTS: Parts = Parts::GPRS.union(Parts::SEGS).union(Parts::CR).union(Parts::EFER);

fn mask_of_bits(bits: u64) -> Result<StateMask> {
    StateMask::from_bits(bits).ok_or(Error::InvalidStateMask { bits: bits & !StateMask::ALL.bits() })
}
