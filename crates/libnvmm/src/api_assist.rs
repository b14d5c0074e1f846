//! The assists and the MMU walker: `nvmm_assist_io`, `nvmm_assist_mem`,
//! `nvmm_gva_to_gpa`.

use std::ffi::c_int;

use nvmm_core::StateMask;

use crate::abi::{NvmmIo, NvmmMachine, NvmmMem, NvmmVcpu};
use crate::errno::{CResult, check, entry, non_null};
use crate::registry::{self, VcpuCtx, in_callback, lock_vcpu};

/// What NVMM's assists fetch before they start.
const ASSIST_STATE: StateMask = StateMask::GPRS.union(StateMask::SEGS).union(StateMask::CRS).union(StateMask::MSRS);

/// Runs an assist on the VCPU `vcpu` names, then leaves the comm page as
/// NVMM's assists do: the registers they changed are shown when the
/// library has them, else they are fetched at the next `getstate`.
fn assist(
    mach: *mut NvmmMachine,
    vcpu: *mut NvmmVcpu,
    f: impl FnOnce(&mut VcpuCtx) -> nvmm_core::Result<nvmm_core::AssistOutcome>,
) -> CResult {
    let ctx = registry::machine(mach)?;
    let v = registry::vcpu(&ctx, vcpu)?;
    let mut g = lock_vcpu(&v)?;
    // NVMM's assists work on the comm page, including changes the program
    // made to cached components without setstate.
    g.push_cached(ASSIST_STATE);
    check(f(&mut g))?;
    if g.vcpu.finishes_at_next_run() {
        // KVM finishes the instruction: the registers change then.
        g.uncache(StateMask::GPRS);
    } else {
        // Emulated here: registers (and possibly CR2, a pending event, the
        // FPU) changed in the library's cache.
        g.uncache(StateMask::ALL);
        g.pull(StateMask::GPRS)?;
    }
    Ok(())
}

/// `nvmm_assist_io`: emulates the I/O of the last `NVMM_VCPU_EXIT_IO`
/// (`EINVAL` after another exit), calling `vcpu->cbs.io` once per element
/// (`EINVAL` if it is null).
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_assist_io(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu) -> c_int {
    entry(|| {
        // SAFETY: read only when non-null; the caller's `struct nvmm_vcpu`.
        let cb = unsafe { non_null(vcpu)?.as_ref() }.and_then(|v| v.cbs.io).ok_or(libc::EINVAL);
        assist(mach, vcpu, |g| {
            let cb = cb.map_err(|_| nvmm_core::Error::InvalidConfiguration { why: "no I/O callback configured" })?;
            g.vcpu.assist_io(|req| {
                let mut io = NvmmIo {
                    mach,
                    vcpu,
                    port: req.port,
                    is_in: req.is_in,
                    size: req.data.len(),
                    data: req.data.as_mut_ptr(),
                };
                // SAFETY: the program's callback, with a descriptor valid for
                // the call (`data` points at `size` bytes).
                in_callback(|| unsafe { cb(&mut io) });
            })
        })
    })
}

/// `nvmm_assist_mem`: emulates the memory access of the last
/// `NVMM_VCPU_EXIT_MEMORY` (`EINVAL` after another exit), calling
/// `vcpu->cbs.mem` for each device access (`EINVAL` if it is null);
/// `ENODEV` for an instruction it cannot emulate, `EFAULT` when guest
/// memory cannot be reached.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_assist_mem(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu) -> c_int {
    entry(|| {
        // SAFETY: read only when non-null; the caller's `struct nvmm_vcpu`.
        let cb = unsafe { non_null(vcpu)?.as_ref() }.and_then(|v| v.cbs.mem).ok_or(libc::EINVAL);
        assist(mach, vcpu, |g| {
            let cb = cb.map_err(|_| nvmm_core::Error::InvalidConfiguration { why: "no memory callback configured" })?;
            g.vcpu.assist_mem(|req| {
                let mut mem = NvmmMem {
                    mach,
                    vcpu,
                    gpa: req.gpa,
                    write: req.write,
                    size: req.data.len(),
                    data: req.data.as_mut_ptr(),
                };
                // SAFETY: as in `nvmm_assist_io`.
                in_callback(|| unsafe { cb(&mut mem) });
            })
        })
    })
}

/// `nvmm_gva_to_gpa`: translates with the guest's paging; `NVMM_PROT_*`
/// rights of the page. `EFAULT` when there is no translation.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_gva_to_gpa(
    mach: *mut NvmmMachine,
    vcpu: *mut NvmmVcpu,
    gva: u64,
    gpa: *mut u64,
    prot: *mut u64,
) -> c_int {
    entry(|| {
        let (gpa, prot) = (non_null(gpa)?, non_null(prot)?);
        let ctx = registry::machine(mach)?;
        let v = registry::vcpu(&ctx, vcpu)?;
        let mut g = lock_vcpu(&v)?;
        let paging = StateMask::CRS.union(StateMask::MSRS);
        g.getstate(paging)?;
        g.push_cached(paging);
        let (p, r) = check(g.vcpu.gva_to_gpa(gva))?;
        // SAFETY: non-null output pointers from the caller.
        unsafe {
            gpa.write(p);
            prot.write(u64::from(r.0));
        }
        Ok(())
    })
}
