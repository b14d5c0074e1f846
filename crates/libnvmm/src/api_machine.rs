//! Machines and guest memory: `nvmm_machine_*`, `nvmm_hva_*`,
//! `nvmm_gpa_*`.

use std::ffi::{c_int, c_void};

use nvmm::Prot;

use crate::abi::NvmmMachine;
use crate::errno::{CResult, check, entry, non_null};
use crate::handles;

/// `nvmm_machine_create`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_machine_create(mach: *mut NvmmMachine) -> c_int {
    entry(|| {
        let mach = non_null(mach)?;
        let nvmm = handles::nvmm()?;
        let machine = check(nvmm.create_machine())?;
        let ctx = handles::add_machine(machine, nvmm.capability().max_vcpus);
        let out = NvmmMachine {
            machid: ctx.machine.id(),
            pages: ctx.pages(),
            areas: std::sync::Arc::as_ptr(&ctx).cast_mut().cast::<c_void>(),
        };
        // SAFETY: non-null pointer to the caller's `struct nvmm_machine`.
        unsafe { mach.write(out) };
        Ok(())
    })
}

/// `nvmm_machine_destroy`: destroys the machine and its VCPUs (their
/// `state`, `event`, `exit` and `stop` pointers become invalid). VCPUs
/// other threads run are stopped first; their runs return
/// `NVMM_VCPU_EXIT_STOPPED` and later calls fail with `ENOENT`. `EBUSY`
/// from inside an assist callback of one of its VCPUs.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_machine_destroy(mach: *mut NvmmMachine) -> c_int {
    entry(|| {
        let ctx = handles::machine(mach)?;
        if ctx.in_callback_here() {
            return Err(libc::EBUSY);
        }
        handles::remove_machine(ctx.machine.id());
        // Stop and destroy the VCPUs now, even those other threads run.
        ctx.remove_all_vcpus();
        Ok(())
    })
}

/// `nvmm_machine_configure`: no machine configuration exists on x86, so
/// every operation is `EINVAL`, as on NetBSD.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_machine_configure(mach: *mut NvmmMachine, _op: u64, _conf: *mut c_void) -> c_int {
    entry(|| {
        handles::machine(mach)?;
        Err(libc::EINVAL)
    })
}

/// `nvmm_hva_map`: registers `[hva, hva + size)`, which the program mapped
/// (normally with `mmap`), as host memory for the guest. Unlike NetBSD the
/// content is not zeroed and the range stays the program's mapping.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_hva_map(mach: *mut NvmmMachine, hva: usize, size: usize) -> c_int {
    entry(|| {
        let ctx = handles::machine(mach)?;
        // SAFETY: nvmm_hva_map's contract: the range is the program's memory
        // and stays mapped while the machine uses it (NetBSD's man page:
        // unmapping it is illegal).
        check(unsafe { ctx.machine.hva_map_borrowed(hva as u64, size as u64) })
    })
}

/// `nvmm_hva_unmap`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_hva_unmap(mach: *mut NvmmMachine, hva: usize, size: usize) -> c_int {
    entry(|| {
        let ctx = handles::machine(mach)?;
        check(ctx.machine.hva_unmap(hva as u64, size as u64))
    })
}

/// Converts `PROT_*` bits (`EINVAL` for unknown ones).
fn prot_of(prot: c_int) -> CResult<Prot> {
    u32::try_from(prot).ok().and_then(|p| Prot::from_bits(p).ok()).ok_or(libc::EINVAL)
}

/// `nvmm_gpa_map`. Failures return -1 and `errno` where NetBSD aborts.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_gpa_map(mach: *mut NvmmMachine, hva: usize, gpa: u64, size: usize, prot: c_int) -> c_int {
    entry(|| {
        let ctx = handles::machine(mach)?;
        let prot = prot_of(prot)?;
        check(ctx.machine.gpa_map(hva as u64, gpa, size as u64, prot))
    })
}

/// `nvmm_gpa_unmap`. A range that was not mapped exactly so is `ENOENT`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_gpa_unmap(mach: *mut NvmmMachine, hva: usize, gpa: u64, size: usize) -> c_int {
    entry(|| {
        let ctx = handles::machine(mach)?;
        check(ctx.machine.gpa_unmap(hva as u64, gpa, size as u64))
    })
}

/// `nvmm_gpa_to_hva`: `NVMM_PROT_*` rights as given to `nvmm_gpa_map`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_gpa_to_hva(mach: *mut NvmmMachine, gpa: u64, hva: *mut usize, prot: *mut u64) -> c_int {
    entry(|| {
        let ctx = handles::machine(mach)?;
        let (hva, prot) = (non_null(hva)?, non_null(prot)?);
        let (h, p) = check(ctx.machine.gpa_to_hva(gpa))?;
        // SAFETY: non-null output pointers from the caller.
        unsafe {
            hva.write(h as usize);
            prot.write(u64::from(p.bits()));
        }
        Ok(())
    })
}
