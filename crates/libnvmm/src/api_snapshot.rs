//! Snapshots from C (an nvmm-rs extension; NetBSD's libnvmm has none):
//! `nvmm_machine_snapshot`, `nvmm_machine_reset`, `nvmm_machine_fork`,
//! `nvmm_snapshot_save`, `nvmm_snapshot_load`, `nvmm_snapshot_free`, and
//! `nvmm_keep_vms_ready` (VMs made ahead of time for faster forks).
//! A snapshot is an opaque `struct nvmm_snapshot *` the library allocates.

use crate::vcpu_lock::VcpuGuard;
use std::ffi::{CStr, c_char, c_int, c_void};

use nvmm::{MachineSnapshot, Vcpu};

use crate::abi::NvmmMachine;
use crate::errno::{CResult, check, entry, non_null};
use crate::handles::{self, VcpuCtx};

/// `struct nvmm_snapshot`: opaque to C.
pub struct NvmmSnapshot(MachineSnapshot);

/// The snapshot behind `p`, or `EFAULT`.
fn snapshot<'a>(p: *const NvmmSnapshot) -> CResult<&'a MachineSnapshot> {
    if p.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: non-null; the caller passes a pointer this library returned
    // and has not freed (the documented contract of the snapshot calls).
    Ok(unsafe { &(*p).0 })
}

/// Hands a snapshot to C.
fn give(snap: MachineSnapshot, out: *mut *mut NvmmSnapshot) -> CResult<()> {
    let out = non_null(out)?;
    // SAFETY: non-null pointer to the caller's `struct nvmm_snapshot *`.
    unsafe { out.write(Box::into_raw(Box::new(NvmmSnapshot(snap)))) };
    Ok(())
}

/// Every VCPU of the machine, locked without waiting (`EBUSY` when one
/// runs on another thread; each guard holds a VCPU).
fn lock_vcpus(all: &[(u32, std::sync::Arc<VcpuCtx>)]) -> CResult<Vec<VcpuGuard<'_>>> {
    all.iter().map(|(_, v)| v.try_lock()).collect()
}

/// `nvmm_machine_snapshot`: snapshots the machine and every VCPU it has
/// (none may be running: `EBUSY`), into a new `*snap`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_machine_snapshot(mach: *mut NvmmMachine, snap: *mut *mut NvmmSnapshot) -> c_int {
    entry(|| {
        let ctx = handles::machine(mach)?;
        let all = ctx.lock_all()?;
        let mut guards = lock_vcpus(&all)?;
        let mut refs: Vec<&mut Vcpu> = guards.iter_mut().filter_map(|g| g.as_mut()).collect();
        let s = check(ctx.machine.snapshot(&mut refs))?;
        give(s, snap)
    })
}

/// `nvmm_machine_reset`: puts the machine back to `snap` in place: its
/// VCPUs (the snapshot's ids, none running: `EBUSY`) and guest memory.
/// `EINVAL` when the machine's VCPUs or memory map are not the snapshot's.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_machine_reset(mach: *mut NvmmMachine, snap: *const NvmmSnapshot) -> c_int {
    entry(|| {
        let ctx = handles::machine(mach)?;
        let s = snapshot(snap)?;
        let all = ctx.lock_all()?;
        let mut slots: Vec<Option<VcpuGuard<'_>>> = lock_vcpus(&all)?.into_iter().map(Some).collect();
        // The VCPUs in the snapshot's order, each once.
        let mut guards = Vec::with_capacity(s.vcpus().len());
        for v in s.vcpus() {
            let i = all.iter().position(|(id, _)| *id == v.id()).ok_or(libc::EINVAL)?;
            guards.push(slots[i].take().ok_or(libc::EINVAL)?);
        }
        let mut ordered: Vec<&mut Vcpu> = guards.iter_mut().filter_map(|g| g.as_mut()).collect();
        check(ctx.machine.reset_to(&mut ordered, s))
    })
}

/// `nvmm_machine_fork`: a new machine in `*mach` from `snap`, its memory
/// shared copy-on-write with the snapshot. Its VCPUs exist already:
/// `nvmm_vcpu_create` with each of the snapshot's ids returns the restored
/// VCPU (state, registers, pending events as in the snapshot).
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_machine_fork(snap: *const NvmmSnapshot, mach: *mut NvmmMachine) -> c_int {
    entry(|| {
        let s = snapshot(snap)?;
        let out = non_null(mach)?;
        let nvmm = handles::nvmm()?;
        let (machine, vcpus) = check(nvmm.fork(s))?;
        let ctx = handles::add_machine(machine, nvmm.capability().max_vcpus);
        ctx.add_restored(vcpus);
        let filled = NvmmMachine {
            machid: ctx.machine.id(),
            pages: ctx.pages(),
            areas: std::sync::Arc::as_ptr(&ctx).cast_mut().cast::<c_void>(),
        };
        // SAFETY: non-null pointer to the caller's `struct nvmm_machine`.
        unsafe { out.write(filled) };
        Ok(())
    })
}

/// The path behind `p`, or `EFAULT`/`EINVAL`.
fn path<'a>(p: *const c_char) -> CResult<&'a str> {
    if p.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: non-null NUL-terminated string of the caller.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| libc::EINVAL)
}

/// `nvmm_snapshot_save`: writes `snap` to the file `path`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_snapshot_save(snap: *const NvmmSnapshot, file: *const c_char) -> c_int {
    entry(|| {
        let s = snapshot(snap)?;
        check(s.save(path(file)?))
    })
}

/// `nvmm_snapshot_load`: reads the snapshot file `path` into a new
/// `*snap`; `EINVAL` for a file of another version, a damaged one, or one
/// taken on an incompatible CPU.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_snapshot_load(file: *const c_char, snap: *mut *mut NvmmSnapshot) -> c_int {
    entry(|| {
        let nvmm = handles::nvmm()?;
        let s = check(nvmm.load_snapshot(path(file)?))?;
        give(s, snap)
    })
}

/// `nvmm_snapshot_free`: frees a snapshot (machines forked from it keep
/// working). `NULL` is ignored.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_snapshot_free(snap: *mut NvmmSnapshot) {
    if !snap.is_null() {
        // SAFETY: a pointer this library returned, freed once (the
        // caller's contract).
        drop(unsafe { Box::from_raw(snap) });
    }
}

/// `nvmm_keep_vms_ready`: keeps `depth` empty VMs made ahead of time by a
/// thread of the library, for `nvmm_machine_create` and
/// `nvmm_machine_fork` to take (0 stops it and closes them). The first
/// `depth` are made before it returns.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_keep_vms_ready(depth: usize) -> c_int {
    entry(|| check(handles::nvmm()?.keep_vms_ready(depth)))
}
