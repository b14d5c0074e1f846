//! The one seam between the library and a kernel.
//!
//! Everything above this module speaks NVMM's model: state by components,
//! exits as [`ExitRecord`]s, events. A kernel backend provides the
//! operations of [`VcpuBackend`] (and a system and VM type that create
//! them); `kvm` is the only one today. The VCPU front end (`crate::vcpu`)
//! calls nothing else of the backend, and no KVM type crosses this module.
//!
//! What a backend decides on its own, below the seam: how state reaches
//! the kernel (KVM copies registers through `kvm_run` for the sets the
//! front end said it uses, other parts cost an ioctl), how an exit is
//! decoded, how a pending instruction is finished.

pub(crate) mod kvm;

use std::os::fd::OwnedFd;

pub use kvm::BackendFacts;
/// The CPUID table in a snapshot's CPUID component.
pub(crate) use kvm::cpuid_of_component;
pub(crate) use kvm::window_exits_are_exact;

/// The backend this build uses.
pub(crate) type VcpuImpl = kvm::KvmVcpu;
/// Its kick.
pub(crate) type KickImpl = <VcpuImpl as VcpuBackend>::Kick;

use crate::error::Result;
use crate::exit::record::ExitRecord;
use crate::x86::cpuid::CpuidEntry;
use crate::x86::event::Event;
use crate::x86::state::{Intr, State, StateMask};
use crate::x86::xsave::Xsave;

/// Pieces of VCPU state a backend moves separately: NVMM's components,
/// with CRS split into the control registers and XCR0, and MSRS into EFER
/// and the other MSRs.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug, Hash)]
pub(crate) struct Parts(u16);

impl Parts {
    pub(crate) const NONE: Parts = Parts(0);
    /// The general-purpose registers, RIP and RFLAGS.
    pub(crate) const GPRS: Parts = Parts(1 << 0);
    /// Segments and descriptor tables.
    pub(crate) const SEGS: Parts = Parts(1 << 1);
    /// CR0, CR2, CR3, CR4, CR8.
    pub(crate) const CR: Parts = Parts(1 << 2);
    /// XCR0.
    pub(crate) const XCR0: Parts = Parts(1 << 3);
    /// EFER.
    pub(crate) const EFER: Parts = Parts(1 << 4);
    /// The MSRs other than EFER.
    pub(crate) const MSRS: Parts = Parts(1 << 5);
    /// Debug registers.
    pub(crate) const DRS: Parts = Parts(1 << 6);
    /// Interrupt shadow and pending-event state.
    pub(crate) const INTR: Parts = Parts(1 << 7);
    /// The FPU: FXSAVE image and the XSAVE area beyond it.
    pub(crate) const FPU: Parts = Parts(1 << 8);
    pub(crate) const ALL: Parts = Parts((1 << 9) - 1);
    /// CS alone (part of SEGS): what locating the code needs, cheaper than
    /// all segments. Never a part of the cache's bookkeeping.
    pub(crate) const CS: Parts = Parts(1 << 9);
    /// What a paging walk needs: control registers and EFER.
    pub(crate) const PAGING: Parts = Parts(Self::CR.0 | Self::EFER.0);
    /// What locating and decoding the instruction at RIP needs.
    pub(crate) const CODE: Parts = Parts(Self::GPRS.0 | Self::CS.0 | Self::PAGING.0);

    /// The parts of NVMM components `mask`.
    pub(crate) const fn of(mask: StateMask) -> Parts {
        let b = mask.bits();
        let mut p = 0;
        if b & StateMask::GPRS.bits() != 0 {
            p |= Self::GPRS.0;
        }
        if b & StateMask::SEGS.bits() != 0 {
            p |= Self::SEGS.0;
        }
        if b & StateMask::CRS.bits() != 0 {
            p |= Self::CR.0 | Self::XCR0.0;
        }
        if b & StateMask::MSRS.bits() != 0 {
            p |= Self::EFER.0 | Self::MSRS.0;
        }
        if b & StateMask::DRS.bits() != 0 {
            p |= Self::DRS.0;
        }
        if b & StateMask::INTR.bits() != 0 {
            p |= Self::INTR.0;
        }
        if b & StateMask::FPU.bits() != 0 {
            p |= Self::FPU.0;
        }
        Parts(p)
    }

    /// The NVMM components all of whose parts are in `self`.
    pub(crate) fn complete_components(self) -> StateMask {
        let p = self.0;
        let bit = |on: bool, c: StateMask| if on { c.bits() } else { 0 };
        let bits = bit(p & Self::GPRS.0 != 0, StateMask::GPRS)
            | bit(p & Self::SEGS.0 != 0, StateMask::SEGS)
            | bit(p & (Self::CR.0 | Self::XCR0.0) == Self::CR.0 | Self::XCR0.0, StateMask::CRS)
            | bit(p & (Self::EFER.0 | Self::MSRS.0) == Self::EFER.0 | Self::MSRS.0, StateMask::MSRS)
            | bit(p & Self::DRS.0 != 0, StateMask::DRS)
            | bit(p & Self::INTR.0 != 0, StateMask::INTR)
            | bit(p & Self::FPU.0 != 0, StateMask::FPU);
        StateMask::from_bits(bits).unwrap_or(StateMask::NONE)
    }

    /// The NVMM components with at least one part in `self`.
    pub(crate) fn touched_components(self) -> StateMask {
        let p = self.0;
        let bit = |on: bool, c: StateMask| if on { c.bits() } else { 0 };
        let bits = bit(p & Self::GPRS.0 != 0, StateMask::GPRS)
            | bit(p & Self::SEGS.0 != 0, StateMask::SEGS)
            | bit(p & (Self::CR.0 | Self::XCR0.0) != 0, StateMask::CRS)
            | bit(p & (Self::EFER.0 | Self::MSRS.0) != 0, StateMask::MSRS)
            | bit(p & Self::DRS.0 != 0, StateMask::DRS)
            | bit(p & Self::INTR.0 != 0, StateMask::INTR)
            | bit(p & Self::FPU.0 != 0, StateMask::FPU);
        StateMask::from_bits(bits).unwrap_or(StateMask::NONE)
    }

    pub(crate) const fn union(self, o: Parts) -> Parts {
        Parts(self.0 | o.0)
    }

    pub(crate) const fn minus(self, o: Parts) -> Parts {
        Parts(self.0 & !o.0)
    }

    pub(crate) const fn and(self, o: Parts) -> Parts {
        Parts(self.0 & o.0)
    }

    pub(crate) const fn contains(self, o: Parts) -> bool {
        self.0 & o.0 == o.0
    }

    pub(crate) const fn intersects(self, o: Parts) -> bool {
        self.0 & o.0 != 0
    }

    pub(crate) const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Parts {
    type Output = Parts;
    fn bitor(self, o: Parts) -> Parts {
        self.union(o)
    }
}

impl std::ops::BitOrAssign for Parts {
    fn bitor_assign(&mut self, o: Parts) {
        *self = self.union(o);
    }
}

/// What the system call entering the guest returned: `Ok`, or its errno.
pub(crate) type RunCall = std::result::Result<(), i32>;

/// What one entry into the guest ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunResult {
    /// The guest exited.
    Exit(ExitRecord),
    /// The run was interrupted (a signal, or an immediate-exit request)
    /// before or while the guest ran.
    Interrupted,
}

/// The event state the front end reasons about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EventStatus {
    /// In an STI or MOV SS interrupt shadow.
    pub(crate) int_shadow: bool,
    /// An exception, interrupt or NMI is still to be delivered.
    pub(crate) pending: bool,
    /// NMIs are blocked, or one is on its way.
    pub(crate) nmi_busy: bool,
}

/// A VCPU of a kernel backend: the operations the front end uses, with
/// NVMM-level names. A new kernel implements these (plus creating VMs and
/// VCPUs); nothing else of the front end changes.
pub(crate) trait VcpuBackend: Send {
    /// Interrupts [`VcpuBackend::run`] from any thread, even after the VCPU
    /// is gone.
    type Kick: Kick;

    /// A kick handle for this VCPU.
    fn kick(&self) -> Result<Self::Kick>;

    /// Disarms a kick that arrived after the last run (called before the
    /// front end checks for stop requests).
    fn clear_kick(&mut self);

    /// Makes sure `signal` interrupts a run on the calling thread (kernel
    /// id `thread`) even if the thread blocks it (called before each run;
    /// cheap when the thread did not change).
    fn prepare_thread(&mut self, thread: i32, signal: i32) -> Result<()>;

    /// Readies the next [`VcpuBackend::enter`], which loads the state stored
    /// since the last run and finishes the instruction behind the last exit
    /// first.
    fn begin_run(&mut self);

    /// Enters the guest until the next exit: the system call alone, inlined
    /// into the run loop's caller so that no stack frame of the library is
    /// live across it (see [`Vcpu::run`](crate::Vcpu::run)).
    fn enter(&mut self) -> RunCall;

    /// The outcome of the [`VcpuBackend::enter`] that returned `call`.
    fn end_run(&mut self, call: RunCall) -> Result<RunResult>;

    /// Finishes the instruction behind the last exit (with the data its
    /// exit buffer holds now) and loads stored state, without running the
    /// guest. Returns the exit finishing it caused, if any (a second
    /// fragment of a split MMIO access, say).
    fn finish_pending(&mut self) -> Result<Option<ExitRecord>>;

    /// Tells the backend which parts the front end reads and writes around
    /// exits (a hint: KVM copies those through `kvm_run`).
    fn want(&mut self, parts: Parts);

    /// Reads `parts` of the current state into `state` and `xsave`.
    fn load(&mut self, parts: Parts, state: &mut State, xsave: &mut Xsave) -> Result<()>;

    /// The registers locating the code at RIP, as the backend has them now
    /// (what `load` of [`Parts::CODE`] reads, without converting the rest).
    fn code_regs(&mut self) -> Result<crate::x86::mode::CodeRegs>;

    /// RFLAGS as the backend has it now (what `load` of [`Parts::GPRS`]
    /// reads for it, without converting the other registers).
    fn rflags(&mut self) -> Result<u64>;

    /// Stores `parts` of `state` and `xsave` for the next run. XCR0 and the
    /// MXCSR mask must already be within what the host allows.
    fn store(&mut self, parts: Parts, state: &State, xsave: &Xsave) -> Result<()>;

    /// Stores the interrupt shadow of `intr` (when given) and queues
    /// `events`, for the next run. `reset` clears every pending event
    /// first (a VCPU reused after a destroy).
    fn store_events(&mut self, intr: Option<&Intr>, events: &[Event], reset: bool) -> Result<()>;

    /// The current event state.
    fn event_status(&mut self) -> Result<EventStatus>;

    /// The TPR (CR8) as of the last exit.
    fn tpr(&self) -> u8;

    /// RFLAGS.IF as of the last exit.
    fn interrupts_enabled(&self) -> bool;

    /// Asks for an exit as soon as the guest can take an interrupt.
    fn set_interrupt_window(&mut self, on: bool);

    /// Whether the kernel exits for an armed interrupt window at the
    /// instruction boundary where the guest opens it (else only when
    /// another exit finds it open: the front end then single-steps while
    /// the window is armed and closed).
    fn window_exits_are_exact(&self) -> bool;

    /// The data of the last I/O exit: `count * size` bytes.
    fn io_data(&mut self) -> &mut [u8];

    /// The exit information of the last emulation failure decoded:
    /// hardware exit reason, exit info 1 and 2, interrupt info, error
    /// code.
    fn failure_info(&self) -> [u64; 5];

    /// The data of the last memory exit.
    fn mmio_data(&mut self) -> &mut [u8];

    /// The answer to the last RDMSR/WRMSR exit: the value read (RDMSR) and
    /// the error flag. `None` until the VMM answered.
    fn msr_answer(&mut self) -> MsrAnswer<'_>;

    /// Applies the debugger's settings; returns whether single steps
    /// block guest interrupts.
    fn set_guest_debug(&mut self, debug: &crate::debug::GuestDebug) -> Result<bool>;

    /// Captures everything the kernel holds for this VCPU, bit-exactly.
    fn capture(&mut self) -> Result<crate::snapshot::KernelState>;

    /// Loads a captured state, in the order the kernel requires.
    fn restore(&mut self, state: &crate::snapshot::KernelState) -> Result<()>;

    /// Sets the CPUID table.
    fn set_cpuid(&mut self, entries: &[CpuidEntry]) -> Result<()>;

    /// The kernel's own translation of a guest virtual address (a reference
    /// for testing the walker); `None` when there is none.
    fn translate(&mut self, gva: u64) -> Result<Option<u64>>;

    /// State system calls made so far (everything but runs).
    fn state_ioctls(&self) -> u64;

    /// Keeps the VCPU for reuse after its owner is gone (the kernel cannot
    /// destroy a VCPU): its descriptor, whose pending work the backend
    /// finishes when it revives it; `None` when it cannot be kept.
    fn park(&mut self) -> Option<OwnedFd>;
}

/// The answer slots of an MSR exit.
pub(crate) struct MsrAnswer<'a> {
    /// The value an RDMSR reads.
    pub(crate) data: &'a mut u64,
    /// 0: answered, success; 1: answered, #GP; anything else: unanswered.
    pub(crate) error: &'a mut u8,
}

/// Interrupts a run from any thread; async-signal-safe.
pub(crate) trait Kick: Send + Sync {
    /// Makes the next or current run return as soon as possible.
    fn kick(&self, thread: i32, signal: i32);
}
