//! [`Vcpu`]: NVMM's VCPU contract on top of a kernel backend.
//!
//! The front end owns what NVMM defines: the state cache (what is current,
//! what goes to the kernel at the next run: `state.rs`), the run loop and
//! the exits it reports (`run.rs`), the instruction behind the last I/O or
//! memory exit as NVMM shows it (RIP on it until it is answered:
//! `inflight.rs`), the I/O instruction (`io.rs`), the assists
//! (`assist.rs`), MSR exits (`msr.rs`), the exit state and NetBSD's C exit
//! (`exit_state.rs`), configuration (`configure.rs`), other threads
//! (`handle.rs`). How any of it reaches KVM is the backend's business
//! ([`crate::backend::VcpuBackend`]).
//!
//! # The state contract
//!
//! [`Vcpu::get_state`] fetches only the components that are not cached;
//! [`Vcpu::set_state`] only marks components (the new values are what the
//! caller wrote into [`Vcpu::state_mut`]); [`Vcpu::inject`] only records the
//! event. Everything lands at the next [`Vcpu::run`], which also invalidates
//! the cache. The cache lives in NetBSD's comm page layout, which the C
//! library hands to C programs as `vcpu->state`: one cache for both APIs.
//!
//! # What costs a system call
//!
//! General-purpose, segment and control registers (with EFER) and the
//! event state around exits cost nothing once the VCPU saw them used (KVM
//! copies them through `kvm_run`); XCR0, the other MSRs, the debug
//! registers and the FPU cost one ioctl each to get after an exit, and to
//! set at the next run (XCR0 only if it changed). [`Vcpu::state_ioctls`]
//! counts them.

use std::sync::Arc;

use crate::backend::{Parts, VcpuBackend, VcpuImpl};
use crate::error::{Error, Result};
use crate::exit::record::ExitRecord;
use crate::machine::MachineShared;
use crate::netbsd::CommPage;
use crate::os::CommBox;
use crate::x86::cpuid::{CpuidConf, CpuidConfig};
use crate::x86::event::Event;
use crate::x86::reset::reset_state;
use crate::x86::state::State;
use crate::x86::xsave::{Xsave, xfeature};

mod assist;
mod configure;
mod debug;
mod dump;
mod emulation;
mod exit_state;
mod guest_memory;
mod handle;
mod inflight;
mod io;
mod msr;
mod run;
mod snapshot;
mod state;
#[cfg(test)]
mod test_guest;
mod time_slice;
mod window_steps;

pub use assist::{AssistOutcome, IoRequest, MemRequest};
pub use handle::{StopHandle, VcpuHandle};
pub(crate) use inflight::Inflight;

/// A VCPU configuration request (`nvmm_vcpu_configure`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VcpuConf {
    /// `NVMM_VCPU_CONF_CPUID`: change what CPUID returns for a leaf. Only
    /// before the VCPU first runs (KVM freezes CPUID afterwards).
    Cpuid(CpuidConf),
    /// `NVMM_VCPU_CONF_TPR`: report guest changes of the TPR (CR8) as
    /// [`Exit::TprChanged`](crate::Exit::TprChanged).
    Tpr {
        /// Whether to exit on changes.
        exit_changed: bool,
    },
}

/// What happens at the next run to an I/O or memory exit the VMM neither
/// answered (through the exit's data or an assist) nor emulated (by
/// changing the state).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Unanswered {
    /// The exit's data answers it: an IN reads what [`IoExit::data_mut`](crate::IoExit::data_mut)
    /// holds, an MMIO read what [`MemoryExit::data_mut`](crate::MemoryExit::data_mut)
    /// holds (all-ones unless set), a write is done. The Rust API's
    /// default: an `Exit::Io` is answered by its payload.
    #[default]
    Complete,
    /// NetBSD's rule: the instruction executes again (against whatever
    /// is mapped now), giving the same exit again unless something changed.
    /// The C library's choice.
    Reexecute,
}

/// Configuration of a VCPU.
#[derive(Debug)]
struct Conf {
    cpuid: CpuidConfig,
    /// Machine VCPU count the CPUID table was built for.
    cpuid_nvcpus: u32,
    has_run: bool,
    tpr_exit: bool,
    unanswered: Unanswered,
    /// Emulation failures the emulator can complete on RAM are completed
    /// by the run loop.
    complete_failures: bool,
    /// Guest physical address width, from the guest's CPUID.
    phys_bits: u8,
    /// Whether the guest's CPUID offers 1 GiB pages.
    gib_pages: bool,
}

/// Window exits armed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Windows {
    int: bool,
    nmi: bool,
}

/// The state cache's bookkeeping (the values live in the comm page).
#[derive(Debug, Default)]
struct Cache {
    /// Parts of the state that hold current values.
    have: Parts,
    /// Parts to store at the next run.
    dirty: Parts,
    /// The XSAVE area beyond FXSAVE holds KVM's values (fetched, or set by
    /// the caller): storing the FPU keeps the rest of it.
    xsave_current: bool,
    /// Clear every pending event at the next store (a reused VCPU).
    reset_events: bool,
    /// `have` and `dirty` as last written into the comm page.
    published: Option<(Parts, Parts)>,
}

/// A virtual CPU.
///
/// `Send`: each VCPU can run on a thread of its own. One VCPU is driven by
/// one thread at a time (methods take `&mut self`); use a [`VcpuHandle`] to
/// stop it or inject into it from elsewhere.
pub struct Vcpu {
    machine: Arc<MachineShared>,
    id: u32,
    backend: VcpuImpl,
    comm: CommBox,
    xsave: Xsave,
    cache: Cache,
    shared: Arc<handle::Shared>,
    conf: Conf,
    /// The last exit reported.
    last: ExitRecord,
    /// An exit that happened and is reported after the one reported now
    /// (a TPR change or an open NMI window goes first).
    queued: Option<ExitRecord>,
    /// The instruction behind the last I/O or memory exit.
    inflight: Option<Inflight>,
    /// The I/O instruction of the in-flight exit, when its record says it
    /// is known.
    inflight_site: Option<io::IoSite>,
    /// The last I/O instruction located, for the next I/O exit.
    io_memo: Option<io::IoSiteMemo>,
    /// The exit information of the emulation failure last kept as an exit
    /// (the last or the queued one).
    failure_info: [u64; 5],
    /// Where the guest bytes around RIP were found at the last I/O exit.
    code_source: Option<crate::vmem::WindowSource>,
    /// The general-purpose registers before the in-flight instruction,
    /// when its record says they are known.
    before_gprs: crate::x86::state::Gprs,
    /// The event [`Vcpu::inject`] recorded, for the next run.
    event: Option<Event>,
    /// Events made pending by the assists (NVMM's public injection refuses
    /// some of them, like #BP), for the next run.
    internal_events: Vec<Event>,
    /// Parts of the state as the backend had them at the last exit (read
    /// once per exit for the library's own decoding), and which are valid.
    raw: State,
    raw_parts: Parts,
    /// The program used the data of the last exit's Rust view (which
    /// answers it).
    payload_used: std::cell::Cell<bool>,
    /// The interrupt and NMI window exits armed (NVMM's
    /// `int_window_exiting`, `nmi_window_exiting`; the library's own state,
    /// shown in the INTR component).
    windows: Windows,
    /// The TPR the guest had at the last run's end.
    last_tpr: u8,
    /// An assist is calling back: runs and nested assists are refused.
    in_assist: bool,
    /// Guest debugging.
    debug: debug::DebugState,
    /// The kernel id of the thread that last ran the VCPU.
    thread: crate::os::ThreadMemo,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").field("machine", &self.machine.record.id).field("id", &self.id).finish()
    }
}

impl Vcpu {
    pub(crate) fn create(machine: Arc<MachineShared>, id: u32) -> Result<Vcpu> {
        Self::create_with(machine, id, true)
    }

    /// A VCPU whose CPUID comes from a snapshot: NVMM's table is not built
    /// (the restore sets the snapshot's).
    pub(crate) fn create_for_restore(machine: Arc<MachineShared>, id: u32) -> Result<Vcpu> {
        Self::create_with(machine, id, false)
    }

    fn create_with(machine: Arc<MachineShared>, id: u32, cpuid: bool) -> Result<Vcpu> {
        let (backend, reused) = match machine.take_parked(id)? {
            Some(fd) => (machine.vm.revive_vcpu(fd)?, true),
            None => (machine.vm.create_vcpu(id)?, false),
        };
        let shared = Arc::new(handle::Shared::new(backend.kick()?, machine.sys.options.kick_signal));
        if let Some(slice) = machine.sys.options.time_slice {
            time_slice::watch(&shared, slice)?;
        }
        let mut state = reset_state();
        state.fpu.fx_mxcsr_mask = machine.sys.cap.arch.mxcsr_mask;
        let comm = CommBox::new(state, VcpuHandle { shared: shared.clone() });
        let mut v = Vcpu {
            machine,
            id,
            backend,
            comm,
            xsave: Xsave::default(),
            cache: Cache {
                have: Parts::ALL,
                // KVM's own RESET matches NVMM's except for RDX, the segment
                // attributes and the FPU, which are stored at the first run.
                dirty: Parts::GPRS | Parts::SEGS | Parts::FPU,
                xsave_current: true,
                reset_events: false,
                published: None,
            },
            shared,
            conf: Conf {
                cpuid: CpuidConfig::default(),
                cpuid_nvcpus: 0,
                has_run: false,
                tpr_exit: false,
                unanswered: Unanswered::default(),
                complete_failures: true,
                phys_bits: 36,
                gib_pages: false,
            },
            last: ExitRecord::None,
            queued: None,
            inflight: None,
            inflight_site: None,
            io_memo: None,
            failure_info: [0; 5],
            code_source: None,
            before_gprs: crate::x86::state::Gprs::default(),
            event: None,
            internal_events: Vec::new(),
            raw: State::default(),
            raw_parts: Parts::NONE,
            payload_used: std::cell::Cell::new(false),
            windows: Windows::default(),
            last_tpr: 0,
            in_assist: false,
            debug: debug::DebugState::default(),
            thread: crate::os::ThreadMemo::default(),
        };
        v.xsave.set_xstate_bv(xfeature::X87 | xfeature::SSE);
        if reused {
            // The KVM VCPU keeps its last state: store all of RESET.
            v.cache.dirty = Parts::ALL;
            v.cache.reset_events = true;
            v.conf.has_run = v.apply_cpuid().is_err();
        } else if cpuid {
            v.apply_cpuid()?;
        }
        v.publish_comm_bits();
        Ok(v)
    }

    /// The VCPU id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A handle that stops this VCPU, or injects into it, from any thread.
    pub fn handle(&self) -> VcpuHandle {
        VcpuHandle { shared: self.shared.clone() }
    }

    /// Same as [`Vcpu::handle`].
    pub fn stop_handle(&self) -> StopHandle {
        self.handle()
    }

    /// Chooses what the next run does with an I/O or memory exit nobody
    /// answered (see [`Unanswered`]).
    pub fn set_unanswered(&mut self, policy: Unanswered) {
        self.conf.unanswered = policy;
    }

    /// Whether [`run`](Self::run) completes the emulation failures whose
    /// instruction the emulator implements and that touch guest RAM only
    /// (on by default: NetBSD runs that code natively, and the program
    /// never sees an exit for it). Off, every emulation failure is
    /// reported as [`Exit::EmulationFailure`](crate::Exit::EmulationFailure),
    /// for a program that wants to see where the kernel's emulator gives
    /// up.
    pub fn set_complete_emulation_failures(&mut self, on: bool) {
        self.conf.complete_failures = on;
    }

    /// How many state system calls (everything but entering the guest)
    /// this VCPU has made: a diagnostic to check that a loop's state
    /// accesses are free.
    pub fn state_ioctls(&self) -> u64 {
        self.backend.state_ioctls()
    }

    /// The guest's TPR (CR8) as of the last exit; no system call.
    pub fn tpr(&self) -> u8 {
        self.backend.tpr()
    }

    /// Copies guest physical memory (see [`Machine::read_gpa`](crate::Machine::read_gpa)).
    pub fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        self.machine.memory().read(gpa, buf)
    }

    /// Writes guest physical memory (see [`Machine::write_gpa`](crate::Machine::write_gpa)).
    pub fn write_gpa(&self, gpa: u64, buf: &[u8]) -> Result<()> {
        self.machine.memory().write(gpa, buf)
    }

    /// NetBSD's comm page of this VCPU, for C bindings: the state buffer
    /// (`vcpu->state`), event (`vcpu->event`), stop flag (`vcpu->stop`) and
    /// exit buffer (`vcpu->exit`) C programs use. It lives as long as the
    /// VCPU. C code may write `state` and `exit` only while no call on this
    /// VCPU is in progress (or from inside its assist callbacks), and
    /// `event`, `event_commit` and `stop` at any time.
    pub fn comm_page(&self) -> *mut CommPage {
        self.comm.as_ptr()
    }

    /// Translates with the kernel's own walker, after loading pending state
    /// into it: a reference for testing the MMU walker.
    #[doc(hidden)]
    pub fn kvm_translate(&mut self, gva: u64) -> Result<Option<u64>> {
        self.complete_pending()?;
        self.backend.translate(gva)
    }

    /// Translates a guest virtual address with the guest's current paging
    /// (`nvmm_gva_to_gpa`): the guest physical address and the rights the
    /// page tables grant. Any offset within the page is kept. Fails with
    /// `EFAULT` when there is no translation.
    pub fn gva_to_gpa(&mut self, gva: u64) -> Result<(u64, crate::assist::mmu::PageProt)> {
        self.get_state(crate::x86::state::StateMask::CRS | crate::x86::state::StateMask::MSRS)?;
        let regs = self.paging_of(self.comm.state());
        let map = self.machine.memory();
        let t = crate::vmem::GuestView::new(&map, regs).translate(gva).map_err(|_| Error::Translation { gva })?;
        Ok((t.gpa, t.prot))
    }

    /// Arms or disarms the interrupt window exit (also in the cached
    /// INTR component).
    fn set_int_window(&mut self, on: bool) {
        self.windows.int = on;
        self.comm.state_mut().intr.set_int_window_exiting(on);
    }

    /// Arms or disarms the NMI window exit (also in the cached INTR
    /// component).
    fn set_nmi_window(&mut self, on: bool) {
        self.windows.nmi = on;
        self.comm.state_mut().intr.set_nmi_window_exiting(on);
    }

    fn refuse_in_assist(&self, what: &'static str) -> Result<()> {
        if self.in_assist {
            crate::hint::cold_path();
            return Err(Error::Busy { what });
        }
        Ok(())
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        // Parking keeps the kernel VCPU for a later VCPU of the same id;
        // when this is the machine's last reference (the `Machine` and every
        // other VCPU are gone) the VM goes away with it: nothing to park.
        let parked = if Arc::strong_count(&self.machine) > 1 { self.backend.park() } else { None };
        self.machine.release_vcpu(self.id, parked);
    }
}
