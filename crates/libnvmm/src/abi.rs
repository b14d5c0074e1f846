//! The C structs of `nvmm.h`, laid out exactly as NetBSD's (the sizes and
//! offsets are checked at compile time here, and by the C tests against
//! the header).

use std::ffi::{c_int, c_uint, c_void};
use std::mem::{offset_of, size_of};

use nvmm_core::State;

use crate::comm::CommPage;

/// `struct nvmm_machine`: opaque to programs. `areas` holds nothing the
/// library reads back (machines are found by `machid`); `pages` is the
/// per-VCPU comm page array, as on NetBSD.
#[repr(C)]
pub(crate) struct NvmmMachine {
    pub(crate) machid: u32,
    pub(crate) pages: *mut *mut CommPage,
    pub(crate) areas: *mut c_void,
}

/// `struct nvmm_assist_callbacks`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct AssistCallbacks {
    pub(crate) io: Option<unsafe extern "C" fn(*mut NvmmIo)>,
    pub(crate) mem: Option<unsafe extern "C" fn(*mut NvmmMem)>,
}

/// `struct nvmm_vcpu`.
#[repr(C)]
pub(crate) struct NvmmVcpu {
    pub(crate) cpuid: u32,
    pub(crate) cbs: AssistCallbacks,
    pub(crate) state: *mut State,
    pub(crate) event: *mut Event,
    pub(crate) exit: *mut Exit,
    pub(crate) stop: *mut c_int,
}

/// `struct nvmm_io`.
#[repr(C)]
pub(crate) struct NvmmIo {
    pub(crate) mach: *mut NvmmMachine,
    pub(crate) vcpu: *mut NvmmVcpu,
    pub(crate) port: u16,
    pub(crate) is_in: bool,
    pub(crate) size: usize,
    pub(crate) data: *mut u8,
}

/// `struct nvmm_mem`.
#[repr(C)]
pub(crate) struct NvmmMem {
    pub(crate) mach: *mut NvmmMachine,
    pub(crate) vcpu: *mut NvmmVcpu,
    pub(crate) gpa: u64,
    pub(crate) write: bool,
    pub(crate) size: usize,
    pub(crate) data: *mut u8,
}

/// `struct nvmm_x86_event`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct Event {
    pub(crate) typ: c_uint,
    pub(crate) vector: u8,
    /// `u.excp.error`.
    pub(crate) error: u64,
}

/// `struct nvmm_x86_exit_memory`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ExitMemory {
    pub(crate) prot: c_int,
    pub(crate) gpa: u64,
    pub(crate) inst_len: u8,
    pub(crate) inst_bytes: [u8; 15],
}

/// `struct nvmm_x86_exit_io`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ExitIo {
    pub(crate) is_in: bool,
    pub(crate) port: u16,
    pub(crate) seg: i8,
    pub(crate) address_size: u8,
    pub(crate) operand_size: u8,
    pub(crate) rep: bool,
    pub(crate) string: bool,
    pub(crate) npc: u64,
}

/// `struct nvmm_x86_exit_rdmsr`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ExitRdmsr {
    pub(crate) msr: u32,
    pub(crate) npc: u64,
}

/// `struct nvmm_x86_exit_wrmsr`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ExitWrmsr {
    pub(crate) msr: u32,
    pub(crate) val: u64,
    pub(crate) npc: u64,
}

/// `struct nvmm_x86_exit_insn` and `struct nvmm_x86_exit_invalid` (one
/// 64-bit field each).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ExitWord {
    pub(crate) value: u64,
}

/// The payload union of `struct nvmm_x86_exit`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) union ExitPayload {
    pub(crate) mem: ExitMemory,
    pub(crate) io: ExitIo,
    pub(crate) rdmsr: ExitRdmsr,
    pub(crate) wrmsr: ExitWrmsr,
    pub(crate) word: ExitWord,
    pub(crate) raw: [u64; 4],
}

/// `exitstate` of `struct nvmm_x86_exit`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct ExitStateC {
    pub(crate) rflags: u64,
    pub(crate) cr8: u64,
    /// `int_shadow:1, int_window_exiting:1, nmi_window_exiting:1,
    /// evt_pending:1`.
    pub(crate) bits: u64,
}

/// `struct nvmm_x86_exit`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Exit {
    pub(crate) reason: u64,
    pub(crate) u: ExitPayload,
    pub(crate) exitstate: ExitStateC,
}

impl Default for Exit {
    fn default() -> Exit {
        Exit { reason: 0, u: ExitPayload { raw: [0; 4] }, exitstate: ExitStateC::default() }
    }
}

/// `struct nvmm_cap_md`.
#[repr(C)]
pub(crate) struct CapMd {
    pub(crate) mach_conf_support: u64,
    pub(crate) vcpu_conf_support: u64,
    pub(crate) xcr0_mask: u64,
    pub(crate) mxcsr_mask: u32,
    pub(crate) conf_cpuid_maxops: u32,
    pub(crate) rsvd: [u64; 6],
}

/// `struct nvmm_capability`.
#[repr(C)]
pub(crate) struct Capability {
    pub(crate) version: u32,
    pub(crate) state_size: u32,
    pub(crate) max_machines: u32,
    pub(crate) max_vcpus: u32,
    pub(crate) max_ram: u64,
    pub(crate) arch: CapMd,
}

/// `struct nvmm_vcpu_conf_cpuid`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ConfCpuid {
    /// `mask:1, exit:1, rsvd:30`.
    pub(crate) flags: u32,
    pub(crate) leaf: u32,
    pub(crate) set: [u32; 4],
    pub(crate) del: [u32; 4],
}

/// `struct nvmm_vcpu_conf_tpr`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ConfTpr {
    /// `exit_changed:1, rsvd:31`.
    pub(crate) flags: u32,
}

/// `struct nvmm_ctl_mach_info`.
#[repr(C)]
pub(crate) struct CtlMachInfo {
    pub(crate) machid: u32,
    pub(crate) nvcpus: u32,
    pub(crate) nram: u64,
    pub(crate) pid: libc::pid_t,
    pub(crate) time: libc::time_t,
}

/// `NVMM_VCPU_CONF_CALLBACKS`.
pub(crate) const VCPU_CONF_CALLBACKS: u64 = 0;
/// `NVMM_VCPU_CONF_CPUID`.
pub(crate) const VCPU_CONF_CPUID: u64 = 200;
/// `NVMM_VCPU_CONF_TPR`.
pub(crate) const VCPU_CONF_TPR: u64 = 201;
/// `NVMM_CTL_MACH_INFO`.
pub(crate) const CTL_MACH_INFO: c_int = 0;

// NetBSD's sizes and offsets (spec §2), checked at compile time.
const _: () = {
    assert!(size_of::<State>() == 1008);
    assert!(size_of::<NvmmMachine>() == 24);
    assert!(size_of::<AssistCallbacks>() == 16);
    assert!(size_of::<NvmmVcpu>() == 56);
    assert!(offset_of!(NvmmVcpu, cbs) == 8);
    assert!(offset_of!(NvmmVcpu, state) == 24);
    assert!(offset_of!(NvmmVcpu, stop) == 48);
    assert!(size_of::<NvmmIo>() == 40);
    assert!(offset_of!(NvmmIo, port) == 16);
    assert!(offset_of!(NvmmIo, is_in) == 18);
    assert!(offset_of!(NvmmIo, size) == 24);
    assert!(size_of::<NvmmMem>() == 48);
    assert!(offset_of!(NvmmMem, write) == 24);
    assert!(offset_of!(NvmmMem, size) == 32);
    assert!(size_of::<Event>() == 16);
    assert!(offset_of!(Event, vector) == 4);
    assert!(offset_of!(Event, error) == 8);
    assert!(size_of::<ExitMemory>() == 32);
    assert!(offset_of!(ExitMemory, inst_len) == 16);
    assert!(size_of::<ExitIo>() == 24);
    assert!(offset_of!(ExitIo, seg) == 4);
    assert!(offset_of!(ExitIo, string) == 8);
    assert!(offset_of!(ExitIo, npc) == 16);
    assert!(size_of::<ExitWrmsr>() == 24);
    assert!(size_of::<Exit>() == 64);
    assert!(offset_of!(Exit, u) == 8);
    assert!(offset_of!(Exit, exitstate) == 40);
    assert!(size_of::<Capability>() == 104);
    assert!(offset_of!(Capability, arch) == 24);
    assert!(size_of::<ConfCpuid>() == 40);
    assert!(size_of::<ConfTpr>() == 4);
    assert!(size_of::<CtlMachInfo>() == 32);
};
