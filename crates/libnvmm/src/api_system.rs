//! `nvmm_init`, `nvmm_root_init`, `nvmm_capability`, `nvmm_ctl`.

use std::ffi::{c_int, c_void};
use std::time::UNIX_EPOCH;

use nvmm::Nvmm;

use crate::abi::{CTL_MACH_INFO, CapMd, Capability, CtlMachInfo};
use crate::errno::{CResult, check, entry, non_null};
use crate::handles;

/// The kernel API version this library implements.
const KERN_VERSION: u32 = 2;

fn init(root: bool) -> CResult {
    if handles::initialised() {
        handles::set_lib(handles::nvmm()?, root);
        return Ok(());
    }
    let nvmm = check(Nvmm::open())?;
    if nvmm.capability().version != KERN_VERSION {
        return Err(nvmm::error::EPROGMISMATCH);
    }
    handles::set_lib(nvmm, root);
    Ok(())
}

/// `nvmm_init`: opens KVM once for the process (idempotent).
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_init() -> c_int {
    entry(|| init(false))
}

/// `nvmm_root_init`: like `nvmm_init`, and `nvmm_ctl` may then describe
/// the machines of other processes too.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_root_init() -> c_int {
    entry(|| init(true))
}

/// `nvmm_capability`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_capability(cap: *mut Capability) -> c_int {
    entry(|| {
        let cap = non_null(cap)?;
        let nvmm = handles::nvmm()?;
        let c = nvmm.capability();
        let out = Capability {
            version: c.version,
            state_size: c.state_size,
            max_machines: c.max_machines,
            max_vcpus: c.max_vcpus,
            max_ram: c.max_ram,
            arch: CapMd {
                mach_conf_support: c.arch.mach_conf_support,
                vcpu_conf_support: c.arch.vcpu_conf_support,
                xcr0_mask: c.arch.xcr0_mask,
                mxcsr_mask: c.arch.mxcsr_mask,
                conf_cpuid_maxops: c.arch.conf_cpuid_maxops,
                rsvd: [0; 6],
            },
        };
        // SAFETY: non-null pointer to the caller's `struct nvmm_capability`.
        unsafe { cap.write(out) };
        Ok(())
    })
}

/// `nvmm_ctl`: `NVMM_CTL_MACH_INFO` only.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_ctl(op: c_int, data: *mut c_void, size: usize) -> c_int {
    entry(|| {
        let nvmm = handles::nvmm()?;
        if op != CTL_MACH_INFO || size != size_of::<CtlMachInfo>() {
            return Err(libc::EINVAL);
        }
        let info = non_null(data.cast::<CtlMachInfo>())?;
        // SAFETY: non-null, and the caller says it is a
        // `struct nvmm_ctl_mach_info` (the size matches).
        let machid = unsafe { (*info).machid };
        let m = check(if handles::is_root() { nvmm.machine_info_any(machid) } else { nvmm.machine_info(machid) })?;
        let time = m.created.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        // SAFETY: as above.
        unsafe {
            (*info).nvcpus = m.nvcpus;
            (*info).nram = m.nram;
            (*info).pid = m.pid as libc::pid_t;
            (*info).time = time as libc::time_t;
        }
        Ok(())
    })
}
