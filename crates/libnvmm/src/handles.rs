//! The library's global state: the connection opened by `nvmm_init`, and
//! the live machines with their VCPUs, found by id from the caller's
//! structs.
//!
//! Locks are taken in one order, each briefly except the last: the machine
//! table, a machine's VCPU table, then one VCPU (held while it runs, so
//! that the VCPUs of a machine run in parallel on their own threads).
//! Calls that NetBSD makes without touching the kernel take no VCPU lock:
//! `nvmm_vcpu_inject` and `nvmm_vcpu_stop` only write the comm page, so
//! they never wait for a running VCPU.
//!
//! Calls on a VCPU from inside one of its own assist callbacks reach it
//! through the callback (which holds it) instead of its lock: the callback
//! records the VCPU for its thread, and a call on that same VCPU from that
//! thread uses it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use nvmm::netbsd::CommPage;
use nvmm::{Machine, Nvmm, Vcpu};

use crate::abi::NvmmMachine;
use crate::errno::{CResult, non_null};

/// Hashes the small integer ids the tables are keyed by as themselves (the
/// default hasher costs more than the rest of a lookup).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

/// A table keyed by id.
type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

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

/// A VCPU and what other threads may use without its lock.
pub(crate) struct VcpuCtx {
    pub(crate) vcpu: Mutex<Vcpu>,
    /// Its comm page (lives as long as the VCPU).
    pub(crate) comm: *mut CommPage,
    /// Being destroyed: runs that have not started are refused.
    dying: AtomicBool,
    handle: nvmm::VcpuHandle,
}

// SAFETY: `comm` points to the VCPU's comm page, which lives as long as the
// VCPU this context owns; other threads only touch its atomic fields
// (`event_commit`, `stop`) through it.
unsafe impl Send for VcpuCtx {}
// SAFETY: as above; the VCPU itself is behind a mutex.
unsafe impl Sync for VcpuCtx {}

impl VcpuCtx {
    pub(crate) fn new(vcpu: Vcpu) -> VcpuCtx {
        let comm = vcpu.comm_page();
        let handle = vcpu.handle();
        VcpuCtx { vcpu: Mutex::new(vcpu), comm, dying: AtomicBool::new(false), handle }
    }

    pub(crate) fn dying(&self) -> bool {
        self.dying.load(Ordering::SeqCst)
    }
}

/// A machine, its VCPUs and the `pages` array the C struct points to.
pub(crate) struct MachineCtx {
    pub(crate) machine: Machine,
    vcpus: Mutex<IdMap<Arc<VcpuCtx>>>,
    /// VCPUs of a forked machine not yet claimed by `nvmm_vcpu_create`.
    restored: Mutex<IdMap<Vcpu>>,
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
        MachineCtx {
            machine,
            vcpus: Mutex::new(IdMap::default()),
            restored: Mutex::new(IdMap::default()),
            pages: Box::into_raw(pages).cast(),
            npages,
        }
    }

    /// Keeps the VCPUs of a fork for `nvmm_vcpu_create` to claim.
    pub(crate) fn add_restored(&self, vcpus: Vec<Vcpu>) {
        let mut r = lock(&self.restored);
        for v in vcpus {
            r.insert(v.id(), v);
        }
    }

    /// The restored VCPU `id` of a fork, if one waits.
    pub(crate) fn take_restored(&self, id: u32) -> Option<Vcpu> {
        lock(&self.restored).remove(&id)
    }

    /// Every VCPU, in id order, locked; `EBUSY` when one is running on
    /// another thread or this thread is inside an assist callback.
    pub(crate) fn lock_all(&self) -> CResult<Vec<(u32, Arc<VcpuCtx>)>> {
        if in_callback_of_machine(self.machine.id()) {
            return Err(libc::EBUSY);
        }
        let mut all: Vec<(u32, Arc<VcpuCtx>)> = lock(&self.vcpus).iter().map(|(&i, v)| (i, v.clone())).collect();
        all.sort_by_key(|(i, _)| *i);
        Ok(all)
    }

    /// The array for `mach->pages`.
    pub(crate) fn pages(&self) -> *mut *mut CommPage {
        self.pages
    }

    /// VCPU `id`, or `ENOENT`.
    pub(crate) fn vcpu(&self, id: u32) -> CResult<Arc<VcpuCtx>> {
        lock(&self.vcpus).get(&id).cloned().ok_or(libc::ENOENT)
    }

    /// Adds a created VCPU.
    pub(crate) fn add_vcpu(&self, id: u32, ctx: VcpuCtx) {
        let comm = ctx.comm;
        lock(&self.vcpus).insert(id, Arc::new(ctx));
        if (id as usize) < self.npages {
            // SAFETY: in bounds of the array from `new`.
            unsafe { *self.pages.add(id as usize) = comm };
        }
    }

    /// Removes VCPU `id`: stops it if it runs, waits for the run to end,
    /// then destroys it. A run that starts afterwards on another thread
    /// fails with `ENOENT`.
    pub(crate) fn remove_vcpu(&self, id: u32) -> CResult<()> {
        if in_callback_of(self.machine.id(), id) {
            return Err(libc::EBUSY);
        }
        let ctx = lock(&self.vcpus).remove(&id).ok_or(libc::ENOENT)?;
        REMOVALS.fetch_add(1, Ordering::SeqCst);
        if (id as usize) < self.npages {
            // SAFETY: in bounds of the array from `new`.
            unsafe { *self.pages.add(id as usize) = std::ptr::null_mut() };
        }
        ctx.dying.store(true, Ordering::SeqCst);
        ctx.handle.stop();
        // Wait for a run in progress on another thread to leave.
        drop(lock(&ctx.vcpu));
        drop(ctx);
        Ok(())
    }

    /// Removes every VCPU.
    pub(crate) fn remove_all_vcpus(&self) {
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

static MACHINES: Mutex<Option<IdMap<Arc<MachineCtx>>>> = Mutex::new(None);

/// Registers a new machine; returns its context.
pub(crate) fn add_machine(machine: Machine, max_vcpus: u32) -> Arc<MachineCtx> {
    let id = machine.id();
    let ctx = Arc::new(MachineCtx::new(machine, max_vcpus));
    lock(&MACHINES).get_or_insert_with(IdMap::default).insert(id, ctx.clone());
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

/// Unregisters machine `id`; it is destroyed (its VCPUs stopped and
/// destroyed first) when the last user lets go.
pub(crate) fn remove_machine(id: u32) -> Option<Arc<MachineCtx>> {
    let removed = lock(&MACHINES).as_mut().and_then(|m| m.remove(&id));
    REMOVALS.fetch_add(1, Ordering::SeqCst);
    removed
}

/// Counts the machines and VCPUs taken out of the tables: a thread's
/// remembered lookup holds only while it is unchanged.
static REMOVALS: AtomicU64 = AtomicU64::new(0);

/// The VCPU a thread looked up last, found again without the tables' locks
/// (a VCPU thread calls `nvmm_vcpu_run` and an assist on the same VCPU at
/// every exit). Weak: a destroyed VCPU is freed whatever threads remember.
struct Remembered {
    machid: u32,
    pages: *mut *mut CommPage,
    cpuid: u32,
    removals: u64,
    vcpu: Weak<VcpuCtx>,
}

thread_local! {
    static REMEMBERED: RefCell<Option<Remembered>> = const { RefCell::new(None) };
}

/// Runs `f` on VCPU `cpuid` of the machine `mach` names, with that
/// machine's id: as [`machine`] then [`with_vcpu`] do, but the VCPU this
/// thread used last is found without taking the tables' locks, while no
/// machine or VCPU was removed since it was looked up.
pub(crate) fn with_vcpu_of<R>(
    mach: *mut NvmmMachine,
    cpuid: u32,
    f: impl FnOnce(u32, &mut Vcpu) -> CResult<R>,
) -> CResult<R> {
    let m = non_null(mach)?;
    // SAFETY: non-null; the caller passes a `struct nvmm_machine`.
    let (machid, pages) = unsafe { ((*m).machid, (*m).pages) };
    if current_callback().is_some() {
        // Perhaps this very VCPU, lent to the callback: `with_vcpu` tells.
        return with_vcpu(&*machine(mach)?, cpuid, |v| f(machid, v));
    }
    let removals = REMOVALS.load(Ordering::SeqCst);
    let known = REMEMBERED.with_borrow(|r| {
        r.as_ref()
            .filter(|r| r.machid == machid && r.pages == pages && r.cpuid == cpuid && r.removals == removals)
            .and_then(|r| r.vcpu.upgrade())
    });
    let v = match known {
        Some(v) => v,
        None => {
            let v = machine(mach)?.vcpu(cpuid)?;
            REMEMBERED.set(Some(Remembered { machid, pages, cpuid, removals, vcpu: Arc::downgrade(&v) }));
            v
        }
    };
    run_locked(&v, |g| f(machid, g))
}

/// Runs `f` on a VCPU under its lock; `ENOENT` when it is being destroyed.
fn run_locked<R>(v: &VcpuCtx, f: impl FnOnce(&mut Vcpu) -> CResult<R>) -> CResult<R> {
    let mut g = lock(&v.vcpu);
    if v.dying() {
        return Err(libc::ENOENT);
    }
    f(&mut g)
}

/// The VCPU an assist callback on this thread is serving.
#[derive(Clone, Copy)]
struct InCallback {
    machid: u32,
    cpuid: u32,
    vcpu: *mut Vcpu,
}

thread_local! {
    static IN_CALLBACK: Cell<Option<InCallback>> = const { Cell::new(None) };
}

/// Threads inside an assist callback now: while none is, no lookup needs
/// the thread-local record (it costs more than the rest of a call).
static CALLBACKS: AtomicUsize = AtomicUsize::new(0);

fn current_callback() -> Option<InCallback> {
    if CALLBACKS.load(Ordering::SeqCst) == 0 {
        return None;
    }
    IN_CALLBACK.get()
}

/// Whether this thread is inside an assist callback of a VCPU of machine
/// `machid`.
pub(crate) fn in_callback_of_machine(machid: u32) -> bool {
    current_callback().is_some_and(|c| c.machid == machid)
}

fn in_callback_of(machid: u32, cpuid: u32) -> bool {
    current_callback().is_some_and(|c| c.machid == machid && c.cpuid == cpuid)
}

/// Runs `f` on VCPU `cpuid` of `ctx`: through the assist callback that
/// holds it when called from inside one on this thread, else under its
/// lock. `ENOENT` when it is being destroyed.
pub(crate) fn with_vcpu<R>(ctx: &MachineCtx, cpuid: u32, f: impl FnOnce(&mut Vcpu) -> CResult<R>) -> CResult<R> {
    if let Some(c) = current_callback()
        && c.machid == ctx.machine.id()
        && c.cpuid == cpuid
    {
        // SAFETY: the pointer comes from the `&mut Vcpu` the assist lent to
        // the callback this thread is inside (see `in_callback`); nothing
        // else uses that borrow until the callback returns, and `f` runs
        // within it.
        return f(unsafe { &mut *c.vcpu });
    }
    run_locked(&*ctx.vcpu(cpuid)?, f)
}

/// Calls a C callback with `vcpu` recorded as this thread's VCPU in a
/// callback, so that calls on it from the callback reach it.
pub(crate) fn in_callback<R>(machid: u32, vcpu: &mut Vcpu, f: impl FnOnce() -> R) -> R {
    let me = InCallback { machid, cpuid: vcpu.id(), vcpu };
    CALLBACKS.fetch_add(1, Ordering::SeqCst);
    // One thread-local lookup for both (each costs a call in a shared
    // library).
    let r = IN_CALLBACK.with(|slot| {
        let outer = slot.replace(Some(me));
        let r = f();
        slot.set(outer);
        r
    });
    CALLBACKS.fetch_sub(1, Ordering::SeqCst);
    r
}
