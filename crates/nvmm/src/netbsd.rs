//! NetBSD's C structures that the library itself produces: the per-VCPU
//! comm page (where the VCPU's state cache lives, shared with C programs)
//! and the exit structure `nvmm_vcpu_run` fills. Laid out exactly as in
//! NetBSD's `nvmm.h` (checked at compile time here and by the C tests
//! against the header). The C library hands pointers into these to C
//! programs; Rust programs never need them.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64};

pub use crate::os::stop_by_flag;
use crate::vcpu::VcpuHandle;
use crate::x86::state::State;

/// `struct nvmm_x86_event` (`struct nvmm_vcpu_event`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct NbEvent {
    /// `NVMM_VCPU_EVENT_EXCP` (0) or `NVMM_VCPU_EVENT_INTR` (1).
    pub typ: u32,
    /// The vector.
    pub vector: u8,
    /// `u.excp.error`.
    pub error: u64,
}

/// `struct nvmm_x86_exit_memory`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NbExitMemory {
    /// `PROT_READ`, `PROT_WRITE` or `PROT_EXEC`.
    pub prot: i32,
    /// Guest physical address.
    pub gpa: u64,
    /// Instruction bytes supplied (0 when none).
    pub inst_len: u8,
    /// Instruction bytes.
    pub inst_bytes: [u8; 15],
}

/// `struct nvmm_x86_exit_io`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NbExitIo {
    /// IN or INS.
    pub is_in: bool,
    /// The port.
    pub port: u16,
    /// Segment of a string instruction (`NVMM_X64_SEG_*`), -1 otherwise.
    pub seg: i8,
    /// Address size in bytes.
    pub address_size: u8,
    /// Operand size in bytes.
    pub operand_size: u8,
    /// REP prefix.
    pub rep: bool,
    /// INS or OUTS.
    pub string: bool,
    /// Address of the next instruction.
    pub npc: u64,
}

/// `struct nvmm_x86_exit_rdmsr`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NbExitRdmsr {
    /// ECX.
    pub msr: u32,
    /// Address of the next instruction.
    pub npc: u64,
}

/// `struct nvmm_x86_exit_wrmsr`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NbExitWrmsr {
    /// ECX.
    pub msr: u32,
    /// EDX:EAX.
    pub val: u64,
    /// Address of the next instruction.
    pub npc: u64,
}

/// The payload union of `struct nvmm_x86_exit`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union NbExitPayload {
    /// `NVMM_VCPU_EXIT_MEMORY`.
    pub mem: NbExitMemory,
    /// `NVMM_VCPU_EXIT_IO`.
    pub io: NbExitIo,
    /// `NVMM_VCPU_EXIT_RDMSR`.
    pub rdmsr: NbExitRdmsr,
    /// `NVMM_VCPU_EXIT_WRMSR`.
    pub wrmsr: NbExitWrmsr,
    /// `u.insn.npc` and `u.inv.hwcode` (one 64-bit field each).
    pub word: u64,
    /// The raw bytes.
    pub raw: [u64; 4],
}

impl std::fmt::Debug for NbExitPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NbExitPayload")
    }
}

/// `exitstate` of `struct nvmm_x86_exit`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct NbExitState {
    /// RFLAGS.
    pub rflags: u64,
    /// CR8.
    pub cr8: u64,
    /// `int_shadow:1, int_window_exiting:1, nmi_window_exiting:1,
    /// evt_pending:1`.
    pub bits: u64,
}

/// `struct nvmm_x86_exit` (`struct nvmm_vcpu_exit`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NbExit {
    /// `NVMM_VCPU_EXIT_*`.
    pub reason: u64,
    /// The reason's details.
    pub u: NbExitPayload,
    /// The partial state reported with every exit.
    pub exitstate: NbExitState,
}

impl Default for NbExit {
    fn default() -> NbExit {
        NbExit { reason: 0, u: NbExitPayload { raw: [0; 4] }, exitstate: NbExitState::default() }
    }
}

/// Marks a live comm page.
pub const COMM_MAGIC: u64 = 0x6e76_6d6d_636f_6d6d; // "nvmmcomm"

/// A VCPU's comm page: NetBSD's `struct nvmm_comm_page` (1072 bytes),
/// followed by the library's own fields.
///
/// The VCPU keeps its state cache here: `state` is the state buffer
/// (`vcpu->state`), `state_cached` says which components hold current
/// values, `state_commit` which ones go to the kernel at the next run.
/// `event_commit`, `event` and `stop` may be written by other threads at
/// any time and are only ever accessed atomically or copied.
#[repr(C)]
pub struct CommPage {
    /// Components the caller wants fetched.
    pub state_wanted: u64,
    /// Components current in `state`.
    pub state_cached: u64,
    /// Components set since the last run.
    pub state_commit: u64,
    /// The state buffer.
    pub state: State,
    /// `nvmm_vcpu_inject` was called: `event` goes in at the next run.
    pub event_commit: AtomicBool,
    /// The event to inject.
    pub event: NbEvent,
    /// `volatile int stop`: set to stop the VCPU.
    pub stop: AtomicI32,
    // --- beyond NetBSD's layout --------------------------------------------
    /// [`COMM_MAGIC`] while the page is alive.
    pub magic: AtomicU64,
    /// The exit buffer `vcpu->exit` points to.
    pub exit: NbExit,
    /// Stops the VCPU from any thread (`nvmm_vcpu_stop`).
    pub handle: VcpuHandle,
}

// NetBSD's layout for the head, and of the exit (spec §2).
const _: () = {
    assert!(size_of::<State>() == 1008);
    assert!(offset_of!(CommPage, state) == 32);
    assert!(offset_of!(CommPage, event_commit) == 1040);
    assert!(offset_of!(CommPage, event) == 1048);
    assert!(offset_of!(CommPage, stop) == 1064);
    assert!(offset_of!(CommPage, magic) == 1072);
    assert!(size_of::<NbEvent>() == 16);
    assert!(offset_of!(NbEvent, vector) == 4);
    assert!(offset_of!(NbEvent, error) == 8);
    assert!(size_of::<NbExitMemory>() == 32);
    assert!(offset_of!(NbExitMemory, inst_len) == 16);
    assert!(size_of::<NbExitIo>() == 24);
    assert!(offset_of!(NbExitIo, seg) == 4);
    assert!(offset_of!(NbExitIo, string) == 8);
    assert!(offset_of!(NbExitIo, npc) == 16);
    assert!(size_of::<NbExitWrmsr>() == 24);
    assert!(size_of::<NbExit>() == 64);
    assert!(offset_of!(NbExit, u) == 8);
    assert!(offset_of!(NbExit, exitstate) == 40);
};
