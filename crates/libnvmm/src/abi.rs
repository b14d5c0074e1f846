//! The C structs of `nvmm.h`, laid out exactly as NetBSD's (the sizes and
//! offsets are checked at compile time here, and by the C tests against
//! the header). The comm page, the event and the exit are the `nvmm`
//! crate's own (`nvmm::netbsd`), which fills them.

use std::ffi::{c_int, c_void};
use std::mem::{offset_of, size_of};

use nvmm::State;
use nvmm::netbsd::{CommPage, NbEvent, NbExit};

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
    pub(crate) event: *mut NbEvent,
    pub(crate) exit: *mut NbExit,
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
    assert!(size_of::<Capability>() == 104);
    assert!(offset_of!(Capability, arch) == 24);
    assert!(size_of::<ConfCpuid>() == 40);
    assert!(size_of::<ConfTpr>() == 4);
    assert!(size_of::<CtlMachInfo>() == 32);
};
