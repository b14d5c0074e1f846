//! The assists and the MMU walker: `nvmm_assist_io`, `nvmm_assist_mem`,
//! `nvmm_gva_to_gpa`.
//!
//! The callbacks may call back into the library on the VCPU they serve
//! (get/set state, inject, stop, mapping calls): those calls reach the
//! VCPU through the assist (see `handles`), as NetBSD's comm page makes
//! them work there.

use std::ffi::c_int;

use crate::abi::{NvmmIo, NvmmMachine, NvmmMem, NvmmVcpu};
use crate::errno::{check, entry, non_null};
use crate::handles::{in_callback, with_vcpu_of};

/// `nvmm_assist_io`: emulates the I/O of the last `NVMM_VCPU_EXIT_IO`
/// (`EINVAL` after another exit), calling `vcpu->cbs.io` once per element
/// (`EINVAL` if it is null).
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_assist_io(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu) -> c_int {
    entry(|| {
        let vp = non_null(vcpu)?;
        // SAFETY: non-null; the caller's `struct nvmm_vcpu`.
        let (id, cb) = unsafe { ((*vp).cpuid, (*vp).cbs.io) };
        with_vcpu_of(mach, id, |ctx, v| {
            let cb = cb.ok_or(libc::EINVAL)?;
            check(v.assist_io(|req| {
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
                in_callback(ctx, req.vcpu(), || unsafe { cb(&mut io) });
            }))
            .map(drop)
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
        let vp = non_null(vcpu)?;
        // SAFETY: non-null; the caller's `struct nvmm_vcpu`.
        let (id, cb) = unsafe { ((*vp).cpuid, (*vp).cbs.mem) };
        with_vcpu_of(mach, id, |ctx, v| {
            let cb = cb.ok_or(libc::EINVAL)?;
            check(v.assist_mem(|req| {
                let mut mem = NvmmMem {
                    mach,
                    vcpu,
                    gpa: req.gpa,
                    write: req.write,
                    size: req.data.len(),
                    data: req.data.as_mut_ptr(),
                };
                // SAFETY: as in `nvmm_assist_io`.
                in_callback(ctx, req.vcpu(), || unsafe { cb(&mut mem) });
            }))
            .map(drop)
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
        let vp = non_null(vcpu)?;
        // SAFETY: non-null; the caller's `struct nvmm_vcpu`.
        let id = unsafe { (*vp).cpuid };
        let (p, r) = with_vcpu_of(mach, id, |_, v| check(v.gva_to_gpa(gva)))?;
        // SAFETY: non-null output pointers from the caller.
        unsafe {
            gpa.write(p);
            prot.write(u64::from(r.0));
        }
        Ok(())
    })
}
