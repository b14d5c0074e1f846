//! Why [`Vcpu::run`](crate::Vcpu::run) returned: NVMM's exit reasons as a
//! Rust enum whose payloads borrow straight from KVM's `kvm_run` page (no
//! copies). Completing an exit (data for a read, the result of an MSR
//! access) is a write through the payload before the next run.

pub(crate) mod record;

use std::cell::Cell;

/// NVMM's exit reason codes (`NVMM_VCPU_EXIT_*`).
pub mod reason {
    /// `NVMM_VCPU_EXIT_NONE`.
    pub const NONE: u64 = 0;
    /// `NVMM_VCPU_EXIT_STOPPED`.
    pub const STOPPED: u64 = 0xFFFF_FFFF_FFFF_FFFE;
    /// `NVMM_VCPU_EXIT_INVALID`.
    pub const INVALID: u64 = 0xFFFF_FFFF_FFFF_FFFF;
    /// `NVMM_VCPU_EXIT_MEMORY`.
    pub const MEMORY: u64 = 0x1;
    /// `NVMM_VCPU_EXIT_IO`.
    pub const IO: u64 = 0x2;
    /// `NVMM_VCPU_EXIT_SHUTDOWN`.
    pub const SHUTDOWN: u64 = 0x1000;
    /// `NVMM_VCPU_EXIT_INT_READY`.
    pub const INT_READY: u64 = 0x1001;
    /// `NVMM_VCPU_EXIT_NMI_READY`.
    pub const NMI_READY: u64 = 0x1002;
    /// `NVMM_VCPU_EXIT_HALTED`.
    pub const HALTED: u64 = 0x1003;
    /// `NVMM_VCPU_EXIT_TPR_CHANGED`.
    pub const TPR_CHANGED: u64 = 0x1004;
    /// `NVMM_VCPU_EXIT_RDMSR`.
    pub const RDMSR: u64 = 0x2000;
    /// `NVMM_VCPU_EXIT_WRMSR`.
    pub const WRMSR: u64 = 0x2001;
    /// `NVMM_VCPU_EXIT_MONITOR`.
    pub const MONITOR: u64 = 0x2002;
    /// `NVMM_VCPU_EXIT_MWAIT`.
    pub const MWAIT: u64 = 0x2003;
    /// `NVMM_VCPU_EXIT_CPUID`.
    pub const CPUID: u64 = 0x2004;
    /// A debug exit ([`Exit::Debug`](crate::Exit::Debug)): nvmm-rs's own
    /// code, outside NetBSD's ranges (NVMM has no debugger interface).
    pub const DEBUG: u64 = 0x1_0000;
}

/// An exit from [`Vcpu::run`](crate::Vcpu::run).
#[derive(Debug)]
#[non_exhaustive]
pub enum Exit<'a> {
    /// Nothing for the VMM to do (a host signal, an exit KVM handled, a
    /// time slice); run again. Gives the VMM a chance to stop the VM in its
    /// tracks. As NetBSD's run returns when the scheduler wants the CPU
    /// back, a run in which the guest computes without exits ends this way
    /// once the VCPU thread has used a slice of CPU time in it (see
    /// [`Options::time_slice`](crate::Options::time_slice)).
    None,
    /// A [`StopHandle`](crate::StopHandle) asked the VCPU to stop. Reported
    /// once per request.
    Stopped,
    /// The guest accessed a guest-physical address with no mapping, or wrote
    /// to a read-only mapping.
    Memory(MemoryExit<'a>),
    /// The guest executed IN, OUT, INS or OUTS.
    Io(IoExit<'a>),
    /// The guest read an MSR that NVMM leaves to the VMM.
    Rdmsr(RdmsrExit<'a>),
    /// The guest wrote an MSR that NVMM leaves to the VMM.
    Wrmsr(WrmsrExit<'a>),
    /// The guest executed HLT; RIP is already past it.
    Halted,
    /// The guest triple-faulted (KVM has put the VCPU back in its INIT
    /// state).
    Shutdown,
    /// The guest can take an external interrupt (armed with
    /// `Intr::set_int_window_exiting`, disarmed now).
    IntReady,
    /// The guest can take an NMI (armed with
    /// `Intr::set_nmi_window_exiting` or by injecting an NMI; disarmed now).
    NmiReady,
    /// The guest changed its TPR (CR8); enabled with
    /// [`VcpuConf::Tpr`](crate::VcpuConf::Tpr).
    TprChanged,
    /// KVM could not emulate an instruction (on hosts where KVM emulates
    /// guest CPL 0 code, and for some instructions on MMIO); the bytes come
    /// with it when KVM has them, RIP still points at the instruction.
    /// [`Vcpu::run`](crate::Vcpu::run) completes on its own those the
    /// emulator implements and that touch guest RAM only (x87 control,
    /// SSE/AVX register moves, the XSAVE family, INT3...: NetBSD runs them
    /// natively, see
    /// [`Vcpu::set_complete_emulation_failures`](crate::Vcpu::set_complete_emulation_failures)),
    /// so this reports an instruction that reaches a device, which
    /// [`Vcpu::assist_mem`](crate::Vcpu::assist_mem) completes, or one the
    /// emulator lacks (`ENODEV` from the assist). Its reason code is
    /// `MEMORY`.
    EmulationFailure(EmulationFailure<'a>),
    /// The debugger's breakpoint, watchpoint or single step
    /// ([`Vcpu::set_guest_debug`](crate::Vcpu::set_guest_debug)).
    Debug(crate::debug::DebugExit),
    /// An exit nvmm does not model; `hwcode` is KVM's raw exit reason.
    Invalid(InvalidExit),
}

impl Exit<'_> {
    /// NVMM's reason code for this exit (`NVMM_VCPU_EXIT_*`). Emulation
    /// failures come from memory accesses and report `MEMORY`.
    pub fn reason(&self) -> u64 {
        match self {
            Exit::None => reason::NONE,
            Exit::Stopped => reason::STOPPED,
            Exit::Memory(_) | Exit::EmulationFailure(_) => reason::MEMORY,
            Exit::Io(_) => reason::IO,
            Exit::Rdmsr(_) => reason::RDMSR,
            Exit::Wrmsr(_) => reason::WRMSR,
            Exit::Halted => reason::HALTED,
            Exit::Shutdown => reason::SHUTDOWN,
            Exit::IntReady => reason::INT_READY,
            Exit::NmiReady => reason::NMI_READY,
            Exit::TprChanged => reason::TPR_CHANGED,
            Exit::Debug(_) => reason::DEBUG,
            Exit::Invalid(_) => reason::INVALID,
        }
    }
}

/// Kind of guest memory access.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum MemAccess {
    /// A read.
    Read,
    /// A write.
    Write,
    /// An instruction fetch.
    Exec,
}

/// A guest access to memory nvmm has no mapping for (MMIO), a write to a
/// read-only mapping, or an instruction fetch from unmapped memory
/// ([`MemAccess::Exec`]).
///
/// As with NVMM the guest stopped *before* the instruction: the state
/// shows RIP on it. The exit is answered by [`Vcpu::assist_mem`](crate::Vcpu::assist_mem)
/// or by using its data ([`MemoryExit::data`] for a write,
/// [`MemoryExit::data_mut`] for a read, which holds all-ones, like an
/// open bus, until you fill it); the instruction then completes at the
/// next run. Mapping memory at [`MemoryExit::gpa`] instead makes the next
/// run execute the instruction against that memory; changing the state
/// without answering means the VMM emulated the instruction itself.
#[derive(Debug)]
pub struct MemoryExit<'a> {
    pub(crate) gpa: u64,
    pub(crate) access: MemAccess,
    pub(crate) data: &'a mut [u8],
    pub(crate) answered: &'a Cell<bool>,
}

impl MemoryExit<'_> {
    /// Guest physical address accessed.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }
    /// Read, write or fetch.
    pub fn access(&self) -> MemAccess {
        self.access
    }
    /// Whether the guest writes.
    pub fn is_write(&self) -> bool {
        self.access == MemAccess::Write
    }
    /// Access size in bytes (1 to 8).
    pub fn size(&self) -> usize {
        self.data.len()
    }
    /// The bytes written by the guest (for a write), or the bytes it will
    /// read (for a read). Answers the exit.
    pub fn data(&self) -> &[u8] {
        self.answered.set(true);
        self.data
    }
    /// The bytes the guest will read; set them before the next run.
    /// Answers the exit.
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.answered.set(true);
        self.data
    }
    /// The instruction bytes, when KVM supplies them. KVM decodes MMIO
    /// instructions itself and does not hand them over, so this is `None`
    /// on KVM; see [`Exit::EmulationFailure`] for the cases it cannot
    /// decode.
    pub fn instruction_bytes(&self) -> Option<&[u8]> {
        None
    }
}

/// Direction of a port I/O access.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum IoDirection {
    /// IN / INS: the guest reads the port.
    In,
    /// OUT / OUTS: the guest writes the port.
    Out,
}

/// A guest port access.
///
/// KVM hands over the data of every repetition of a string instruction at
/// once: `count` elements of `size` bytes. For IN, fill
/// [`IoExit::data_mut`] before the next run (all-ones until you do).
///
/// As with NVMM the guest stopped before the instruction (the state shows
/// RIP on it) until the exit is answered: by using its data, by
/// [`Vcpu::assist_io`](crate::Vcpu::assist_io), or by running again
/// without changing the state (the data answers it, unless
/// [`Unanswered::Reexecute`](crate::Unanswered::Reexecute) is chosen).
/// Once answered the state shows the instruction done.
/// Whether the instruction was a string or REP instruction, its segment,
/// address size and next RIP are decoded on demand by
/// [`Vcpu::io_instruction`](crate::Vcpu::io_instruction).
#[derive(Debug)]
pub struct IoExit<'a> {
    pub(crate) port: u16,
    pub(crate) direction: IoDirection,
    pub(crate) size: u8,
    pub(crate) count: u32,
    pub(crate) data: &'a mut [u8],
    pub(crate) answered: &'a Cell<bool>,
}

impl IoExit<'_> {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// In or out.
    pub fn direction(&self) -> IoDirection {
        self.direction
    }
    /// Whether the guest reads the port.
    pub fn is_in(&self) -> bool {
        self.direction == IoDirection::In
    }
    /// Operand size: 1, 2 or 4 bytes.
    pub fn size(&self) -> usize {
        self.size.into()
    }
    /// Number of elements (more than one only for REP INS/OUTS).
    pub fn count(&self) -> u32 {
        self.count
    }
    /// All elements, `count * size` bytes. Answers the exit.
    pub fn data(&self) -> &[u8] {
        self.answered.set(true);
        self.data
    }
    /// All elements, for IN. Answers the exit.
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.answered.set(true);
        self.data
    }
}

/// A guest RDMSR of an MSR that NVMM leaves to the VMM: every MSR but the
/// SYSCALL/SYSENTER MSRs, the segment bases, EFER, PAT, the TSC and a few
/// model MSRs that read as constants (even those KVM could answer).
///
/// As with NVMM, RIP is still at the RDMSR. Answer with
/// [`RdmsrExit::complete`] (the guest reads the value, RIP moves past the
/// instruction) or [`RdmsrExit::fail`] (the guest gets a #GP, as on
/// hardware for a non-existent MSR). Left unanswered, the exit is the
/// caller's, NVMM's convention: write RAX and RDX and set RIP to
/// [`RdmsrExit::npc`] in the state, or leave RIP alone and the guest
/// executes the RDMSR again.
#[derive(Debug)]
pub struct RdmsrExit<'a> {
    pub(crate) msr: u32,
    pub(crate) npc: u64,
    pub(crate) data: &'a mut u64,
    pub(crate) error: &'a mut u8,
}

impl RdmsrExit<'_> {
    /// The MSR (ECX).
    pub fn msr(&self) -> u32 {
        self.msr
    }
    /// The address of the next instruction (NVMM's `npc`).
    pub fn npc(&self) -> u64 {
        self.npc
    }
    /// Returns `value` to the guest in EDX:EAX.
    pub fn complete(&mut self, value: u64) {
        *self.data = value;
        *self.error = 0;
    }
    /// Makes the RDMSR raise #GP.
    pub fn fail(&mut self) {
        *self.error = 1;
    }
}

/// A guest WRMSR of an MSR that NVMM leaves to the VMM. Answer with
/// [`WrmsrExit::accept`] or [`WrmsrExit::fail`] (#GP); left unanswered, it
/// is the caller's as for [`RdmsrExit`].
#[derive(Debug)]
pub struct WrmsrExit<'a> {
    pub(crate) msr: u32,
    pub(crate) value: u64,
    pub(crate) npc: u64,
    pub(crate) error: &'a mut u8,
}

impl WrmsrExit<'_> {
    /// The MSR (ECX).
    pub fn msr(&self) -> u32 {
        self.msr
    }
    /// The value written (EDX:EAX).
    pub fn value(&self) -> u64 {
        self.value
    }
    /// The address of the next instruction (NVMM's `npc`).
    pub fn npc(&self) -> u64 {
        self.npc
    }
    /// Lets the write complete.
    pub fn accept(&mut self) {
        *self.error = 0;
    }
    /// Makes the WRMSR raise #GP.
    pub fn fail(&mut self) {
        *self.error = 1;
    }
}

/// The partial state NVMM reports with every exit (`exit->exitstate`), a
/// fast path for event-injection decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitState {
    /// RFLAGS.
    pub rflags: u64,
    /// CR8 (the TPR).
    pub cr8: u64,
    /// In an STI or MOV SS interrupt shadow.
    pub int_shadow: bool,
    /// An interrupt-window exit is armed.
    pub int_window_exiting: bool,
    /// An NMI-window exit is armed.
    pub nmi_window_exiting: bool,
    /// An event is still waiting to be delivered.
    pub evt_pending: bool,
}

/// KVM gave up emulating an instruction (`KVM_INTERNAL_ERROR_EMULATION`).
#[derive(Debug)]
pub struct EmulationFailure<'a> {
    pub(crate) bytes: Option<&'a [u8]>,
    pub(crate) info: [u64; 5],
}

impl EmulationFailure<'_> {
    /// The instruction bytes KVM fetched at RIP (up to 15; possibly more
    /// than the instruction), if it could fetch them.
    pub fn instruction_bytes(&self) -> Option<&[u8]> {
        self.bytes
    }
    /// KVM's exit information: hardware exit reason, exit info 1 and 2,
    /// interrupt info, error code.
    pub fn exit_info(&self) -> [u64; 5] {
        self.info
    }
}

/// An exit nvmm does not model.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct InvalidExit {
    /// KVM's exit reason (`KVM_EXIT_*`).
    pub hwcode: u64,
    /// Sub-reason where KVM gives one (internal-error suberror, hardware
    /// entry failure reason).
    pub detail: u64,
}
