//! [`Vcpu`]: state by components with NVMM's cache contract, the run loop,
//! event injection, configuration and stop handles.
//!
//! # The state contract
//!
//! [`Vcpu::get_state`] fetches only the components that are not cached;
//! [`Vcpu::set_state`] only marks components (the new values are what the
//! caller wrote into [`Vcpu::state_mut`]); [`Vcpu::inject`] only records the
//! event. Everything lands at the next [`Vcpu::run`], which also invalidates
//! the cache.
//!
//! # What costs an ioctl
//!
//! KVM copies general-purpose registers, segment and control registers
//! (with EFER) and the event state into `kvm_run` at every exit when asked
//! to (`KVM_CAP_SYNC_REGS`), and loads them from there at the next entry.
//! The VCPU asks for the sets its caller used during the previous few
//! exits, so a loop that reads GPRS and SEGS at every exit and writes GPRS
//! back makes no ioctl besides `KVM_RUN`, while a loop that never looks at
//! the state pays nothing for the copies. XCR0, the other MSRs, the debug
//! registers and the FPU/XSAVE area are not in `kvm_run`: getting them
//! costs one ioctl each after an exit, setting them one ioctl at the next
//! run (XCR0 only if it changed).

use std::sync::Arc;

use crate::assist::io_insn::{CpuMode, IoInstruction, decode_io};
use crate::assist::mmu::{PageProt, PagingRegs, walk};
use crate::backend::kvm::{Events, KvmVcpu, RawExit, RunAlias, RunOutcome, Sregs, convert};
use crate::error::{Error, Result};
use crate::exit::{Exit, InvalidExit};
use crate::machine::MachineShared;
use crate::stop::{StopHandle, StopShared};
use crate::x86::cpuid::{CpuidConf, CpuidConfig};
use crate::x86::event::Event;
use crate::x86::modes::{cr0, efer};
use crate::x86::reset::reset_state;
use crate::x86::state::{Cr, Fxsave, Gpr, Msr, Seg, State, StateMask};
use crate::x86::xsave::{Xsave, xfeature};

mod assist;
mod exit_state;
mod msr;
pub use assist::{AssistOutcome, IoRequest, MemRequest};

/// A VCPU configuration request (`nvmm_vcpu_configure`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VcpuConf {
    /// `NVMM_VCPU_CONF_CPUID`: change what CPUID returns for a leaf. Only
    /// before the VCPU first runs (KVM freezes CPUID afterwards).
    Cpuid(CpuidConf),
    /// `NVMM_VCPU_CONF_TPR`: report guest changes of the TPR (CR8) as
    /// [`Exit::TprChanged`].
    Tpr {
        /// Whether to exit on changes.
        exit_changed: bool,
    },
}

/// Internal state parts, finer than NVMM's components.
mod part {
    pub(super) const GPRS: u16 = 1 << 0;
    pub(super) const SEGS: u16 = 1 << 1;
    /// CR0, CR2, CR3, CR4, CR8.
    pub(super) const CR: u16 = 1 << 2;
    pub(super) const XCR0: u16 = 1 << 3;
    pub(super) const EFER: u16 = 1 << 4;
    /// The MSRs other than EFER.
    pub(super) const MSRS: u16 = 1 << 5;
    pub(super) const DRS: u16 = 1 << 6;
    /// Interrupt shadow and pending event.
    pub(super) const INTR: u16 = 1 << 7;
    pub(super) const FPU: u16 = 1 << 8;
    pub(super) const ALL: u16 = (1 << 9) - 1;
    pub(super) const SREGS: u16 = SEGS | CR | EFER;
}

/// Register sets KVM syncs through `kvm_run`.
mod sync {
    pub(super) const REGS: u64 = kvm_bindings::KVM_SYNC_X86_REGS as u64;
    pub(super) const SREGS: u64 = kvm_bindings::KVM_SYNC_X86_SREGS as u64;
    pub(super) const EVENTS: u64 = kvm_bindings::KVM_SYNC_X86_EVENTS as u64;
}

fn parts_of(mask: StateMask) -> u16 {
    let mut p = 0;
    if mask.contains(StateMask::GPRS) {
        p |= part::GPRS;
    }
    if mask.contains(StateMask::SEGS) {
        p |= part::SEGS;
    }
    if mask.contains(StateMask::CRS) {
        p |= part::CR | part::XCR0;
    }
    if mask.contains(StateMask::MSRS) {
        p |= part::EFER | part::MSRS;
    }
    if mask.contains(StateMask::DRS) {
        p |= part::DRS;
    }
    if mask.contains(StateMask::INTR) {
        p |= part::INTR;
    }
    if mask.contains(StateMask::FPU) {
        p |= part::FPU;
    }
    p
}

fn sync_of(parts: u16) -> u64 {
    let mut s = 0;
    if parts & part::GPRS != 0 {
        s |= sync::REGS;
    }
    if parts & part::SREGS != 0 {
        s |= sync::SREGS;
    }
    if parts & part::INTR != 0 {
        s |= sync::EVENTS;
    }
    s
}

/// MSRs of the MSRS component fetched with `KVM_GET_MSRS` (EFER comes with
/// the special registers).
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

/// Exit kinds, without payload borrows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ExitKind {
    None,
    Stopped,
    Memory,
    Io,
    Rdmsr,
    Wrmsr,
    Halted,
    Shutdown,
    IntReady,
    NmiReady,
    TprChanged,
    EmulationFailure,
    Invalid(InvalidExit),
}

/// A virtual CPU.
///
/// `Send`: each VCPU can run on a thread of its own. One VCPU is driven by
/// one thread at a time (methods take `&mut self`); use a [`StopHandle`] to
/// interrupt it from elsewhere.
pub struct Vcpu {
    machine: Arc<MachineShared>,
    id: u32,
    kvm: KvmVcpu,
    stop: Arc<StopShared>,
    state: State,
    xsave: Xsave,
    /// Parts of `state` that hold current values.
    have: u16,
    /// Parts to commit at the next run.
    dirty: u16,
    /// Sync sets `kvm_run` holds current values of.
    synced: u64,
    /// Sync sets the caller used since the last run.
    used: u64,
    /// Remaining runs for which each sync set stays requested.
    ttl: [u8; 3],
    /// Sync sets requested for the current run.
    valid_regs: u64,
    event: Option<Event>,
    cpuid: CpuidConfig,
    cpuid_nvcpus: u32,
    has_run: bool,
    tpr_exit: bool,
    last_cr8: u64,
    /// XCR0 known to be loaded in KVM.
    kvm_xcr0: Option<u64>,
    /// TSC value last reported by a get (NVMM's TSC rule).
    tsc_reported: Option<u64>,
    replay: Option<ExitKind>,
    last_exit: ExitKind,
    /// `io_instruction`'s answer for the last exit.
    io_insn: Option<(IoInstruction, u64)>,
    /// Clear every pending event at the next commit (reused VCPU).
    reset_events: bool,
    /// The last exit is an MSR access KVM will finish at the next run,
    /// unless the VMM left it unanswered (see `msr.rs`).
    msr_pending: bool,
    /// An assist answered a KVM-decoded exit: KVM finishes the instruction
    /// at the next run, and reading the state first makes it finish now.
    assisted: bool,
    /// Guest physical address width, from the guest's CPUID.
    guest_phys_bits: u8,
    /// Whether the guest's CPUID offers 1 GiB pages.
    guest_gib_pages: bool,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").field("machine", &self.machine.record.id).field("id", &self.id).finish()
    }
}

impl Vcpu {
    pub(crate) fn create(machine: Arc<MachineShared>, id: u32) -> Result<Vcpu> {
        let (kvm, reused) = match machine.take_parked(id)? {
            Some(fd) => (machine.vm.revive_vcpu(fd)?, true),
            None => (machine.vm.create_vcpu(id)?, false),
        };
        let alias = RunAlias::map(kvm.raw_fd())?;
        let stop = Arc::new(StopShared::new(alias, machine.sys.options.kick_signal));
        let mut state = reset_state();
        state.fpu.fx_mxcsr_mask = machine.sys.cap.arch.mxcsr_mask;
        let mut v = Vcpu {
            machine,
            id,
            kvm,
            stop,
            state,
            xsave: Xsave::default(),
            have: part::ALL,
            // KVM's own RESET matches NVMM's except for RDX, the segment
            // attributes and the FPU, which are committed at the first run.
            dirty: part::GPRS | part::SEGS | part::FPU,
            synced: 0,
            used: 0,
            ttl: [0; 3],
            valid_regs: 0,
            event: None,
            cpuid: CpuidConfig::default(),
            cpuid_nvcpus: 0,
            has_run: false,
            tpr_exit: false,
            last_cr8: 0,
            kvm_xcr0: Some(xfeature::X87),
            tsc_reported: Some(0),
            replay: None,
            last_exit: ExitKind::None,
            io_insn: None,
            reset_events: false,
            msr_pending: false,
            assisted: false,
            guest_phys_bits: 36,
            guest_gib_pages: false,
        };
        v.xsave.set_xstate_bv(xfeature::X87 | xfeature::SSE);
        if reused {
            // The KVM VCPU keeps its last state: load all of RESET.
            v.dirty = part::ALL;
            v.kvm_xcr0 = None;
            v.reset_events = true;
            v.has_run = v.apply_cpuid().is_err();
        } else {
            v.apply_cpuid()?;
        }
        Ok(v)
    }

    /// The VCPU id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The state buffer (`vcpu->state`): current for the components got
    /// since the last run, and whatever was last written otherwise.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The state buffer, to modify before [`Vcpu::set_state`].
    pub fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// The XSAVE area beyond the FXSAVE image (part of the FPU component).
    pub fn xsave(&self) -> &Xsave {
        &self.xsave
    }

    /// The XSAVE area, to modify before `set_state(StateMask::FPU)`.
    pub fn xsave_mut(&mut self) -> &mut Xsave {
        &mut self.xsave
    }

    /// Fetches the components of `mask` that are not cached
    /// (`nvmm_vcpu_getstate`).
    pub fn get_state(&mut self, mask: StateMask) -> Result<()> {
        let parts = parts_of(mask);
        self.used |= sync_of(parts);
        if self.assisted && parts != 0 {
            // Show the instruction the assist answered as finished, as
            // NVMM's assists do.
            self.flush_to_kvm()?;
        }
        self.fetch(parts & !self.have)
    }

    /// Marks the components of `mask` to be loaded from [`Vcpu::state`] at
    /// the next run (`nvmm_vcpu_setstate`). No system call.
    pub fn set_state(&mut self, mask: StateMask) -> Result<()> {
        let parts = parts_of(mask);
        self.used |= sync_of(parts);
        self.dirty |= parts;
        self.have |= parts;
        Ok(())
    }

    /// Like [`Vcpu::get_state`] and [`Vcpu::set_state`] with raw
    /// `NVMM_X64_STATE_*` bits, rejecting unknown bits with `EINVAL`.
    pub fn get_state_bits(&mut self, bits: u64) -> Result<()> {
        let mask = StateMask::from_bits(bits).ok_or(Error::InvalidStateMask { bits: bits & !StateMask::ALL.bits() })?;
        self.get_state(mask)
    }

    /// See [`Vcpu::get_state_bits`].
    pub fn set_state_bits(&mut self, bits: u64) -> Result<()> {
        let mask = StateMask::from_bits(bits).ok_or(Error::InvalidStateMask { bits: bits & !StateMask::ALL.bits() })?;
        self.set_state(mask)
    }

    /// Gets `mask`, lets `f` modify the state, and sets `mask`.
    pub fn update<R>(&mut self, mask: StateMask, f: impl FnOnce(&mut State) -> R) -> Result<R> {
        self.get_state(mask)?;
        let r = f(&mut self.state);
        self.set_state(mask)?;
        Ok(r)
    }

    /// Records `event` for injection at the next run (`nvmm_vcpu_inject`),
    /// checking NVMM's rules now. Injecting an NMI arms the NMI window exit,
    /// like NVMM.
    pub fn inject(&mut self, event: Event) -> Result<()> {
        event.validate()?;
        self.event = Some(event);
        self.used |= sync::EVENTS;
        Ok(())
    }

    /// Makes an event pending without NVMM's rules (the assists raise
    /// exceptions NVMM's public injection refuses, like #BP).
    fn inject_internal(&mut self, event: Event) {
        self.event = Some(event);
        self.used |= sync::EVENTS;
    }

    /// Applies a configuration request (`nvmm_vcpu_configure`).
    pub fn configure(&mut self, conf: VcpuConf) -> Result<()> {
        match conf {
            VcpuConf::Cpuid(c) => {
                if self.has_run {
                    return Err(Error::CpuidLocked);
                }
                let mut next = self.cpuid.clone();
                next.configure(&c)?;
                let prev = std::mem::replace(&mut self.cpuid, next);
                if let Err(e) = self.apply_cpuid() {
                    self.cpuid = prev;
                    return Err(e);
                }
                Ok(())
            }
            VcpuConf::Tpr { exit_changed } => {
                self.tpr_exit = exit_changed;
                Ok(())
            }
        }
    }

    /// A handle that stops this VCPU from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle { shared: self.stop.clone() }
    }

    /// How many state ioctls (everything but `KVM_RUN`) this VCPU has made:
    /// a diagnostic to check that a loop's state accesses are free.
    pub fn state_ioctls(&self) -> u64 {
        self.kvm.ioctl_count()
    }

    /// The guest's TPR (CR8) as of the last exit; no system call.
    pub fn tpr(&self) -> u8 {
        self.kvm.cr8() as u8
    }

    /// Copies guest physical memory (see [`Machine::read_gpa`](crate::Machine::read_gpa)).
    pub fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        self.machine.memory().read(gpa, buf)
    }

    /// Writes guest physical memory (see [`Machine::write_gpa`](crate::Machine::write_gpa)).
    pub fn write_gpa(&self, gpa: u64, buf: &[u8]) -> Result<()> {
        self.machine.memory().write(gpa, buf)
    }

    /// Runs the VCPU until an exit the VMM must see (`nvmm_vcpu_run`).
    ///
    /// Commits set state and the injected event first; an invalid one fails
    /// the run with `EINVAL`.
    pub fn run(&mut self) -> Result<Exit<'_>> {
        self.io_insn = None;
        self.last_exit = ExitKind::None;
        let kind = self.run_kind()?;
        self.last_exit = kind;
        let npc = match kind {
            ExitKind::Rdmsr | ExitKind::Wrmsr => {
                self.msr_pending = true;
                self.msr_npc()?
            }
            _ => 0,
        };
        Ok(match kind {
            ExitKind::None => Exit::None,
            ExitKind::Stopped => Exit::Stopped,
            ExitKind::Memory => Exit::Memory(self.kvm.memory_exit()),
            ExitKind::Io => Exit::Io(self.kvm.io_exit()),
            ExitKind::Rdmsr => Exit::Rdmsr(self.kvm.rdmsr_exit(npc)),
            ExitKind::Wrmsr => Exit::Wrmsr(self.kvm.wrmsr_exit(npc)),
            ExitKind::Halted => Exit::Halted,
            ExitKind::Shutdown => Exit::Shutdown,
            ExitKind::IntReady => Exit::IntReady,
            ExitKind::NmiReady => Exit::NmiReady,
            ExitKind::TprChanged => Exit::TprChanged,
            ExitKind::EmulationFailure => Exit::EmulationFailure(self.kvm.emulation_failure()),
            ExitKind::Invalid(i) => Exit::Invalid(i),
        })
    }

    fn run_kind(&mut self) -> Result<ExitKind> {
        self.kvm.clear_immediate_exit();
        if self.stop.enter() {
            return Ok(ExitKind::Stopped);
        }
        let r = self.enter_guest();
        self.stop.leave();
        r
    }

    fn enter_guest(&mut self) -> Result<ExitKind> {
        if let Some(k) = self.replay.take() {
            return Ok(k);
        }
        if self.state.intr.nmi_window_exiting() && self.nmi_window_open()? {
            self.state.intr.set_nmi_window_exiting(false);
            return Ok(ExitKind::NmiReady);
        }
        self.settle_msr_exit()?;
        self.assisted = false;
        self.commit()?;
        let outcome = self.kvm.run();
        self.has_run = true;
        self.have = 0;
        self.synced = if outcome.is_ok() { self.valid_regs } else { 0 };
        let kind = match outcome? {
            RunOutcome::Interrupted => {
                if self.stop.take() {
                    ExitKind::Stopped
                } else {
                    ExitKind::None
                }
            }
            RunOutcome::Exited => self.classify(),
        };
        let cr8 = self.kvm.cr8();
        let tpr_changed = cr8 != self.last_cr8;
        self.last_cr8 = cr8;
        if self.tpr_exit && (tpr_changed || kind == ExitKind::TprChanged) {
            return Ok(self.report_first(ExitKind::TprChanged, kind));
        }
        if self.state.intr.nmi_window_exiting() && kind != ExitKind::NmiReady && self.nmi_window_open()? {
            self.state.intr.set_nmi_window_exiting(false);
            return Ok(self.report_first(ExitKind::NmiReady, kind));
        }
        Ok(kind)
    }

    /// Reports `first` now and `then` at the next run (without entering the
    /// guest).
    fn report_first(&mut self, first: ExitKind, then: ExitKind) -> ExitKind {
        if !matches!(then, ExitKind::None) && then != first {
            self.replay = Some(then);
        }
        first
    }

    fn classify(&mut self) -> ExitKind {
        let raw = self.kvm.exit();
        self.kvm.prepare_exit(raw);
        match raw {
            RawExit::Mmio => ExitKind::Memory,
            RawExit::Io => ExitKind::Io,
            RawExit::Rdmsr => ExitKind::Rdmsr,
            RawExit::Wrmsr => ExitKind::Wrmsr,
            RawExit::Hlt => {
                if self.state.intr.int_window_exiting() && self.kvm.if_flag() {
                    self.state.intr.set_int_window_exiting(false);
                }
                ExitKind::Halted
            }
            RawExit::Shutdown => ExitKind::Shutdown,
            RawExit::IrqWindowOpen if self.state.intr.int_window_exiting() => {
                self.state.intr.set_int_window_exiting(false);
                ExitKind::IntReady
            }
            RawExit::SetTpr if self.tpr_exit => ExitKind::TprChanged,
            RawExit::IrqWindowOpen | RawExit::SetTpr | RawExit::Intr => ExitKind::None,
            RawExit::EmulationFailure => ExitKind::EmulationFailure,
            RawExit::Other { .. } => ExitKind::Invalid(KvmVcpu::invalid_exit(raw)),
        }
    }

    // --- state cache ------------------------------------------------------

    /// The current special registers: from `kvm_run` if KVM synced them,
    /// else by ioctl (then cached in `kvm_run` until the next run).
    fn current_sregs(&mut self) -> Result<Sregs> {
        if self.synced & sync::SREGS != 0 {
            return Ok(self.kvm.synced_sregs());
        }
        let s = self.kvm.get_sregs()?;
        self.kvm.write_sregs(&s, false);
        self.synced |= sync::SREGS;
        Ok(s)
    }

    /// The current events, like [`Vcpu::current_sregs`].
    fn current_events(&mut self) -> Result<Events> {
        if self.synced & sync::EVENTS != 0 {
            return Ok(self.kvm.synced_events());
        }
        let e = self.kvm.get_events()?;
        self.kvm.write_events(&e, false);
        self.synced |= sync::EVENTS;
        Ok(e)
    }

    fn nmi_window_open(&mut self) -> Result<bool> {
        let e = self.current_events()?;
        Ok(!convert::nmi_busy(&e) && self.event.is_none_or(|ev| !ev.is_nmi()))
    }

    fn fetch(&mut self, need: u16) -> Result<()> {
        if need == 0 {
            return Ok(());
        }
        if need & part::GPRS != 0 {
            let regs = if self.synced & sync::REGS != 0 { self.kvm.synced_regs() } else { self.kvm.get_regs()? };
            convert::gprs_from_kvm(&regs, &mut self.state.gprs);
        }
        if need & part::SREGS != 0 {
            let s = self.current_sregs()?;
            if need & part::SEGS != 0 {
                convert::segs_from_kvm(&s, &mut self.state.segs);
            }
            if need & part::CR != 0 {
                convert::crs_from_kvm(&s, &mut self.state.crs);
            }
            if need & part::EFER != 0 {
                self.state.msrs[Msr::Efer] = s.efer;
            }
        }
        if need & part::XCR0 != 0 {
            let x = self.kvm.get_xcr0()?;
            self.state.crs[Cr::Xcr0] = x;
            self.kvm_xcr0 = Some(x);
        }
        if need & part::MSRS != 0 {
            let idx = IOCTL_MSRS.map(Msr::index);
            let mut vals = [0u64; IOCTL_MSRS.len()];
            self.kvm.get_msrs(&idx, &mut vals)?;
            for (m, v) in IOCTL_MSRS.iter().zip(vals) {
                self.state.msrs[*m] = v;
            }
            self.tsc_reported = Some(self.state.msrs[Msr::Tsc]);
        }
        if need & part::DRS != 0 {
            let d = self.kvm.get_debugregs()?;
            convert::drs_from_kvm(&d, &mut self.state.drs);
        }
        if need & part::INTR != 0 {
            let e = self.current_events()?;
            convert::intr_from_kvm(&e, &mut self.state.intr);
        }
        if need & part::FPU != 0 {
            self.kvm.get_xsave(self.xsave.as_bytes_mut())?;
            let legacy: &[u8; 512] = self.xsave.as_bytes()[..512].try_into().expect("512 bytes");
            self.state.fpu = Fxsave::from_bytes(legacy);
        }
        self.have |= need;
        Ok(())
    }

    /// Loads dirty parts and the pending event into KVM before a run.
    fn commit(&mut self) -> Result<()> {
        if !self.has_run && self.cpuid_nvcpus != self.machine.nvcpus() {
            self.apply_cpuid()?;
        }
        let mut result = Ok(());
        if self.dirty != 0 || self.event.is_some() || self.reset_events {
            let mut pending = std::mem::take(&mut self.dirty);
            result = self.commit_parts(&mut pending);
            if result.is_err() {
                // The part that failed is forgotten (a get fetches KVM's
                // value again); the others stay marked for the next run.
                self.dirty = pending;
            }
        }
        self.request_sync_sets();
        self.kvm.set_request_interrupt_window(self.state.intr.int_window_exiting());
        result
    }

    fn commit_parts(&mut self, pending: &mut u16) -> Result<()> {
        let mut step = |this: &mut Vcpu, p: u16, f: fn(&mut Vcpu) -> Result<()>| -> Result<()> {
            if *pending & p == 0 {
                return Ok(());
            }
            *pending &= !p;
            f(this).inspect_err(|_| this.have &= !p)
        };
        step(self, part::XCR0, Vcpu::commit_xcr0)?;
        step(self, part::MSRS, Vcpu::commit_msrs)?;
        step(self, part::DRS, Vcpu::commit_drs)?;
        step(self, part::FPU, Vcpu::commit_fpu)?;
        step(self, part::GPRS, Vcpu::commit_gprs)?;
        let sregs = *pending & part::SREGS;
        if sregs != 0 {
            *pending &= !part::SREGS;
            self.commit_sregs(sregs).inspect_err(|_| self.have &= !sregs)?;
        }
        if *pending & part::INTR != 0 || self.event.is_some() || self.reset_events {
            let intr = *pending & part::INTR != 0;
            *pending &= !part::INTR;
            self.commit_events(intr).inspect_err(|_| self.have &= !part::INTR)?;
        }
        Ok(())
    }

    fn commit_xcr0(&mut self) -> Result<()> {
        let x = (self.state.crs[Cr::Xcr0] & self.machine.sys.cap.arch.xcr0_mask) | xfeature::X87;
        self.state.crs[Cr::Xcr0] = x;
        if self.kvm_xcr0 != Some(x) {
            self.kvm_xcr0 = None;
            self.kvm.set_xcr0(x)?;
            self.kvm_xcr0 = Some(x);
        }
        Ok(())
    }

    fn commit_msrs(&mut self) -> Result<()> {
        let mut vals: Vec<(u32, u64)> = Vec::with_capacity(IOCTL_MSRS.len());
        for m in IOCTL_MSRS {
            let v = self.state.msrs[m];
            if m == Msr::Tsc && (v == 0 || Some(v) == self.tsc_reported) {
                continue;
            }
            vals.push((m.index(), v));
        }
        self.kvm.set_msrs(&vals)
    }

    fn commit_drs(&mut self) -> Result<()> {
        self.kvm.set_debugregs(&convert::drs_to_kvm(&self.state.drs))
    }

    fn commit_fpu(&mut self) -> Result<()> {
        let mask = self.machine.sys.cap.arch.mxcsr_mask;
        self.state.fpu.fx_mxcsr_mask = mask;
        self.state.fpu.fx_mxcsr &= mask;
        self.xsave.as_bytes_mut()[..512].copy_from_slice(&self.state.fpu.to_bytes());
        self.xsave.set_xstate_bv(self.xsave.xstate_bv() | xfeature::X87 | xfeature::SSE);
        self.kvm.set_xsave(self.xsave.as_bytes())
    }

    fn commit_gprs(&mut self) -> Result<()> {
        self.kvm.write_regs(&convert::gprs_to_kvm(&self.state.gprs));
        Ok(())
    }

    fn commit_sregs(&mut self, parts: u16) -> Result<()> {
        let mut s = self.current_sregs()?;
        if parts & part::SEGS != 0 {
            convert::segs_into_kvm(&self.state.segs, &mut s);
        }
        if parts & part::CR != 0 {
            convert::crs_into_kvm(&self.state.crs, &mut s);
            // KVM reloads the TPR from kvm_run.cr8 after the sync registers.
            self.kvm.set_cr8(s.cr8);
            self.last_cr8 = s.cr8;
        }
        if parts & part::EFER != 0 {
            s.efer = self.state.msrs[Msr::Efer];
        }
        self.kvm.write_sregs(&s, true);
        Ok(())
    }

    fn commit_events(&mut self, intr: bool) -> Result<()> {
        let mut e =
            if std::mem::take(&mut self.reset_events) { convert::reset_events() } else { self.current_events()? };
        if intr {
            convert::intr_into_kvm(&self.state.intr, &mut e);
        }
        // Checked by `inject` (or made by the assists, e.g. INT3's #BP).
        if let Some(ev) = self.event.take() {
            convert::event_into_kvm(&ev, &mut e);
            if ev.is_nmi() {
                self.state.intr.set_nmi_window_exiting(true);
            }
        }
        self.kvm.write_events(&e, true);
        Ok(())
    }

    /// Chooses the register sets KVM copies out at the next exit: those
    /// used during the last `SYNC_TTL` runs.
    fn request_sync_sets(&mut self) {
        let mut used = std::mem::take(&mut self.used);
        if self.state.intr.nmi_window_exiting() {
            used |= sync::EVENTS;
        }
        if used == 0 && self.valid_regs == 0 {
            return;
        }
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
        self.valid_regs = valid;
        self.kvm.set_valid_regs(valid);
    }

    fn apply_cpuid(&mut self) -> Result<()> {
        let nvcpus = self.machine.nvcpus().max(1);
        let table = self.cpuid.build(self.machine.sys.kvm.supported_cpuid(), self.id, nvcpus);
        self.kvm.set_cpuid(&table)?;
        self.cpuid_nvcpus = self.machine.nvcpus();
        self.guest_phys_bits = crate::x86::cpuid::phys_addr_bits(&table) as u8;
        self.guest_gib_pages = table.iter().any(|e| e.function == 0x8000_0001 && e.regs.edx & (1 << 26) != 0);
        Ok(())
    }

    // --- helpers for exits ------------------------------------------------

    /// Decodes the instruction behind the last [`Exit::Io`]: string and REP
    /// flags, segment, sizes, and the next RIP (NVMM's `npc`).
    ///
    /// KVM does not report where the instruction is: it leaves RIP at an IN
    /// and at a string instruction, but may already have advanced it past a
    /// plain OUT (when it emulated the instruction rather than intercepting
    /// it). For a plain OUT this method therefore lets KVM finish the
    /// instruction first (a `KVM_RUN` that does not enter the guest), which
    /// commits pending state, then finds the instruction that ends at RIP.
    /// The one case it cannot tell apart is a plain OUT that KVM already
    /// finished, directly followed by an OUTS to the same port with the same
    /// size: it then reports the OUTS.
    pub fn io_instruction(&mut self) -> Result<(IoInstruction, u64)> {
        if self.last_exit != ExitKind::Io {
            return Err(Error::WrongExit { what: "io_instruction", expected: "an I/O exit" });
        }
        if let Some(r) = self.io_insn {
            return Ok(r);
        }
        let (is_in, size, port, _) = self.kvm.io_summary();
        let (mode, rip0, linear0) = self.code_position()?;
        let rdx = self.state.gprs[Gpr::Rdx];
        let matches = |d: &IoInstruction| {
            d.is_in == is_in
                && d.operand_size == size
                && d.port_immediate.map_or(rdx as u16 == port, |p| u16::from(p) == port)
        };
        let mut bytes = [0u8; 15];
        let n = self.read_linear(linear0, &mut bytes)?;
        let at_rip = decode_io(&bytes[..n], mode).ok().filter(|d| matches(d));
        let width = mode_mask(mode);
        let answer = match at_rip {
            Some(d) if is_in || d.string => (d, rip0.wrapping_add(d.length.into()) & width),
            _ => {
                self.flush_to_kvm()?;
                let (_, rip1, _) = self.code_position()?;
                match at_rip {
                    Some(d) if rip1 != rip0 => (d, rip1),
                    _ => (self.io_instruction_ending_at(linear0, mode, &matches)?, rip0),
                }
            }
        };
        self.io_insn = Some(answer);
        Ok(answer)
    }

    /// The registers the MMU walker needs (from `kvm_run` when synced).
    fn paging_regs(&mut self) -> Result<PagingRegs> {
        self.used |= sync::SREGS;
        self.fetch((part::CR | part::EFER) & !self.have)?;
        let s = &self.state;
        Ok(PagingRegs {
            cr0: s.crs[Cr::Cr0],
            cr3: s.crs[Cr::Cr3],
            cr4: s.crs[Cr::Cr4],
            efer: s.msrs[Msr::Efer],
            phys_bits: self.guest_phys_bits,
            gib_pages: self.guest_gib_pages,
        })
    }

    /// Translates a guest virtual address with the guest's current paging
    /// (`nvmm_gva_to_gpa`): the guest physical address and the rights the
    /// page tables grant. Any offset within the page is kept. Fails with
    /// `EFAULT` when there is no translation.
    pub fn gva_to_gpa(&mut self, gva: u64) -> Result<(u64, PageProt)> {
        let regs = self.paging_regs()?;
        let t = walk(&*self.machine.memory(), &regs, gva).map_err(|_| Error::Translation { gva })?;
        Ok((t.gpa, t.prot))
    }

    /// Lets KVM finish the instruction behind the last I/O or memory exit
    /// (with the data the exit holds now) without running the guest, so
    /// that the state reflects the completed instruction. Pending state and
    /// events are loaded into KVM too. `run` does this on its own; call it
    /// when you need the completed state before running again.
    pub fn complete_pending(&mut self) -> Result<()> {
        self.flush_to_kvm()
    }

    /// Translates with KVM's own walker (`KVM_TRANSLATE`), after loading
    /// pending state into KVM: a reference for testing the MMU walker.
    #[doc(hidden)]
    pub fn kvm_translate(&mut self, gva: u64) -> Result<Option<u64>> {
        self.flush_to_kvm()?;
        self.kvm.translate(gva)
    }

    /// Execution mode, RIP and the linear address of RIP.
    fn code_position(&mut self) -> Result<(CpuMode, u64, u64)> {
        self.used |= sync::REGS | sync::SREGS;
        self.fetch((part::GPRS | part::SREGS) & !self.have)?;
        let s = &self.state;
        let cs = s.segs[Seg::Cs];
        let mode = if s.msrs[Msr::Efer] & efer::LMA != 0 && cs.attrib.l() {
            CpuMode::Bits64
        } else if cs.attrib.def() && s.crs[Cr::Cr0] & cr0::PE != 0 {
            CpuMode::Bits32
        } else {
            CpuMode::Bits16
        };
        let rip = s.gprs[Gpr::Rip];
        let linear = if mode == CpuMode::Bits64 { rip } else { cs.base.wrapping_add(rip) & 0xffff_ffff };
        Ok((mode, rip, linear))
    }

    /// Finds an I/O instruction that ends right before `linear`.
    fn io_instruction_ending_at(
        &mut self,
        linear: u64,
        mode: CpuMode,
        matches: &dyn Fn(&IoInstruction) -> bool,
    ) -> Result<IoInstruction> {
        // The bytes before `linear`: up to 15, fewer near address 0, and
        // only from `linear`'s page when the page before cannot be read.
        let mut window = [0u8; 15];
        let mut back = linear.min(15) as usize;
        let mut n = self.read_linear(linear - back as u64, &mut window[..back]).unwrap_or(0);
        if n < back {
            back = (((linear - 1) & 0xfff) + 1).min(15) as usize;
            n = self.read_linear(linear - back as u64, &mut window[..back]).unwrap_or(0);
        }
        if n == back {
            for len in (1..=back).rev() {
                if let Ok(d) = decode_io(&window[back - len..back], mode)
                    && usize::from(d.length) == len
                    && matches(&d)
                {
                    return Ok(d);
                }
            }
        }
        Err(Error::Unsupported { what: "locating the I/O instruction KVM already completed" })
    }

    /// Loads pending state into KVM and lets it finish a pending
    /// instruction, without entering the guest (`KVM_RUN` with
    /// `immediate_exit`).
    fn flush_to_kvm(&mut self) -> Result<()> {
        self.settle_msr_exit()?;
        self.assisted = false;
        self.commit()?;
        self.kvm.set_immediate_exit();
        let outcome = self.kvm.run();
        self.kvm.clear_immediate_exit();
        self.have = 0;
        self.synced = 0;
        match outcome? {
            RunOutcome::Interrupted => Ok(()),
            RunOutcome::Exited => {
                Err(Error::Unsupported { what: "completing an I/O instruction without running the guest" })
            }
        }
    }

    /// Reads guest memory at a linear address, page by page, translating
    /// with the guest's paging. Returns how many bytes could be read (at
    /// least one, or an error).
    fn read_linear(&mut self, linear: u64, buf: &mut [u8]) -> Result<usize> {
        let regs = self.paging_regs()?;
        let mem = self.machine.memory();
        let mut done = 0;
        while done < buf.len() {
            let at = linear.wrapping_add(done as u64);
            let n = ((4096 - (at & 0xfff)) as usize).min(buf.len() - done);
            let Ok(t) = walk(&*mem, &regs, at) else { break };
            if mem.read(t.gpa, &mut buf[done..done + n]).is_err() {
                break;
            }
            done += n;
        }
        if done == 0 {
            return Err(Error::Translation { gva: linear });
        }
        Ok(done)
    }

    /// A printable dump of the whole state (`nvmm_vcpu_dump`).
    pub fn dump(&mut self) -> Result<String> {
        use std::fmt::Write;
        self.get_state(StateMask::ALL)?;
        let s = &self.state;
        let mut o = String::new();
        let _ = writeln!(o, "+ VCPU id={}", self.id);
        for (i, name) in crate::x86::state::Gpr::NAMES.iter().enumerate() {
            let _ = writeln!(o, "| -> {name}={:#x}", s.gprs.0[i]);
        }
        for (i, name) in Seg::NAMES.iter().enumerate() {
            let g = s.segs.0[i];
            let _ = writeln!(
                o,
                "| -> {name}: sel={:#x} base={:#x}, limit={:#x}, attrib={:#x} [type={},l={},def={}]",
                g.selector,
                g.base,
                g.limit,
                g.attrib.0,
                g.attrib.typ(),
                g.attrib.l() as u8,
                g.attrib.def() as u8
            );
        }
        let _ = writeln!(o, "| -> MSR_EFER={:#x}", s.msrs[Msr::Efer]);
        for (name, cr) in [
            ("CR0", Cr::Cr0),
            ("CR2", Cr::Cr2),
            ("CR3", Cr::Cr3),
            ("CR4", Cr::Cr4),
            ("CR8", Cr::Cr8),
            ("XCR0", Cr::Xcr0),
        ] {
            let _ = writeln!(o, "| -> {name}={:#x}", s.crs[cr]);
        }
        Ok(o)
    }
}

fn mode_mask(mode: CpuMode) -> u64 {
    match mode {
        CpuMode::Bits16 => 0xffff,
        CpuMode::Bits32 => 0xffff_ffff,
        CpuMode::Bits64 => u64::MAX,
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        let parked = self.kvm.park();
        self.machine.release_vcpu(self.id, parked);
    }
}
