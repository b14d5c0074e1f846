//! The library's global state: the connection opened by `nvmm_init`, and
//! the live machines with their VCPUs, found by id from the caller's
//! structs.
//!
//! Locks are taken in one order, each briefly except the last: the machine
//! table, a machine's VCPU table, then one VCPU (held while it runs, so
//! that the VCPUs of a machine run in parallel on their own threads).

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nvmm_core::{Machine, Nvmm, Vcpu};

use crate::abi::{NvmmMachine, NvmmVcpu};
use crate::comm::CommPage;
use crate::errno::{CResult, non_null};

/// What `nvmm_init` / `nvmm_root_init` opened.
struct Lib {
    nvmm: Nvmm,
    root: bool,
}

static LIB: Mutex<Option<Lib>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records the connection (the first `nvmm_init` wins; `nvmm_root_init`
/// after it adds the root view).
pub(crate) fn set_lib(nvmm: Nvmm, root: bool) {
    let mut lib = lock(&LIB);
    match lib.as_mut() {
        Some(l) => l.root |= root,
        None => *lib = Some(Lib { nvmm, root }),
    }
}

/// Whether `nvmm_init` already ran.
pub(crate) fn initialised() -> bool {
    lock(&LIB).is_some()
}

/// The connection, or `EBADF` before `nvmm_init` (what NetBSD's calls on
/// its unopened descriptor report).
pub(crate) fn nvmm() -> CResult<Nvmm> {
    lock(&LIB).as_ref().map(|l| l.nvmm.clone()).ok_or(libc::EBADF)
}

/// Whether `nvmm_root_init` ran.
pub(crate) fn is_root() -> bool {
    lock(&LIB).as_ref().is_some_and(|l| l.root)
}

/// A VCPU and its comm page.
pub(crate) struct VcpuCtx {
    pub(crate) vcpu: Vcpu,
    pub(crate) comm: *mut CommPage,
}

// SAFETY: the comm page is heap memory owned by this context (freed in its
// `Drop`); moving the context between threads moves that ownership. The C
// side touches the page only from the thread driving the VCPU, except for
// the atomic `stop` field.
unsafe impl Send for VcpuCtx {}

impl Drop for VcpuCtx {
    fn drop(&mut self) {
        // SAFETY: `comm` came from `CommPage::alloc` and dies with the VCPU.
        unsafe { CommPage::free(self.comm) };
    }
}

/// A machine, its VCPUs and the `pages` array the C struct points to.
pub(crate) struct MachineCtx {
    pub(crate) machine: Machine,
    vcpus: Mutex<HashMap<u32, Arc<Mutex<VcpuCtx>>>>,
    /// `mach->pages`: comm page pointers by VCPU id.
    pages: *mut *mut CommPage,
    npages: usize,
}

// SAFETY: `pages` is a heap array owned by this context; entries are
// written under the VCPU-table lock and only read by the C program.
unsafe impl Send for MachineCtx {}
// SAFETY: as above; every other field is `Sync`.
unsafe impl Sync for MachineCtx {}

impl MachineCtx {
    fn new(machine: Machine, max_vcpus: u32) -> MachineCtx {
        let pages: Box<[*mut CommPage]> = vec![std::ptr::null_mut(); max_vcpus as usize].into_boxed_slice();
        let npages = pages.len();
        MachineCtx { machine, vcpus: Mutex::new(HashMap::new()), pages: Box::into_raw(pages).cast(), npages }
    }

    /// The array for `mach->pages`.
    pub(crate) fn pages(&self) -> *mut *mut CommPage {
        self.pages
    }

    /// VCPU `id`, or `ENOENT`.
    pub(crate) fn vcpu(&self, id: u32) -> CResult<Arc<Mutex<VcpuCtx>>> {
        lock(&self.vcpus).get(&id).cloned().ok_or(libc::ENOENT)
    }

    /// Adds a created VCPU.
    pub(crate) fn add_vcpu(&self, id: u32, ctx: VcpuCtx) {
        let comm = ctx.comm;
        lock(&self.vcpus).insert(id, Arc::new(Mutex::new(ctx)));
        if (id as usize) < self.npages {
            // SAFETY: in bounds of the array from `new`.
            unsafe { *self.pages.add(id as usize) = comm };
        }
    }

    /// Removes VCPU `id` (waiting for a run in progress to end).
    pub(crate) fn remove_vcpu(&self, id: u32) -> CResult<()> {
        let ctx = lock(&self.vcpus).remove(&id).ok_or(libc::ENOENT)?;
        if (id as usize) < self.npages {
            // SAFETY: in bounds of the array from `new`.
            unsafe { *self.pages.add(id as usize) = std::ptr::null_mut() };
        }
        // Drop after any run in progress on another thread.
        drop(lock_vcpu(&ctx)?);
        drop(ctx);
        Ok(())
    }

    /// Removes every VCPU.
    fn remove_all_vcpus(&self) {
        let ids: Vec<u32> = lock(&self.vcpus).keys().copied().collect();
        for id in ids {
            let _ = self.remove_vcpu(id);
        }
    }
}

impl Drop for MachineCtx {
    fn drop(&mut self) {
        self.remove_all_vcpus();
        // SAFETY: `pages`/`npages` describe the boxed slice from `new`.
        unsafe { drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.pages, self.npages))) };
    }
}

static MACHINES: Mutex<Option<HashMap<u32, Arc<MachineCtx>>>> = Mutex::new(None);

/// Registers a new machine; returns its context.
pub(crate) fn add_machine(machine: Machine, max_vcpus: u32) -> Arc<MachineCtx> {
    let id = machine.id();
    let ctx = Arc::new(MachineCtx::new(machine, max_vcpus));
    lock(&MACHINES).get_or_insert_with(HashMap::new).insert(id, ctx.clone());
    ctx
}

/// The machine `mach` names, checking that the struct is one
/// `nvmm_machine_create` filled (`EFAULT` for null, `ENOENT` otherwise).
pub(crate) fn machine(mach: *mut NvmmMachine) -> CResult<Arc<MachineCtx>> {
    let mach = non_null(mach)?;
    // SAFETY: non-null; the caller passes a `struct nvmm_machine`.
    let (id, pages) = unsafe { ((*mach).machid, (*mach).pages) };
    let ctx = lock(&MACHINES).as_ref().and_then(|m| m.get(&id).cloned()).ok_or(libc::ENOENT)?;
    if ctx.pages != pages {
        return Err(libc::ENOENT);
    }
    Ok(ctx)
}

/// Unregisters machine `id` (it is destroyed when the last user lets go).
pub(crate) fn remove_machine(id: u32) -> Option<Arc<MachineCtx>> {
    lock(&MACHINES).as_mut().and_then(|m| m.remove(&id))
}

/// The VCPU `vcpu` names in `ctx` (`EFAULT` for null, `ENOENT` otherwise).
pub(crate) fn vcpu(ctx: &MachineCtx, vcpu: *mut NvmmVcpu) -> CResult<Arc<Mutex<VcpuCtx>>> {
    let vcpu = non_null(vcpu)?;
    // SAFETY: non-null; the caller passes a `struct nvmm_vcpu`.
    let id = unsafe { (*vcpu).cpuid };
    ctx.vcpu(id)
}

thread_local! {
    /// Inside an assist callback on this thread.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Locks a VCPU. From inside one of its own assist callbacks that would
/// wait forever: `EDEADLK` instead.
pub(crate) fn lock_vcpu(v: &Mutex<VcpuCtx>) -> CResult<MutexGuard<'_, VcpuCtx>> {
    if IN_CALLBACK.get() {
        return match v.try_lock() {
            Ok(g) => Ok(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(libc::EDEADLK),
        };
    }
    Ok(v.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Runs a C callback, marking the thread as inside one.
pub(crate) fn in_callback<R>(f: impl FnOnce() -> R) -> R {
    let outer = IN_CALLBACK.replace(true);
    let r = f();
    IN_CALLBACK.set(outer);
    r
}
