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
//! through the callback (which holds it) instead of its lock: the assist
//! marks the VCPU as lent to its thread for the callback's duration, and a
//! call on that same VCPU from that thread uses it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nvmm::netbsd::CommPage;
use nvmm::{Machine, Nvmm, Vcpu};

use crate::abi::NvmmMachine;
use crate::errno::{CResult, non_null};
use crate::remembered::{self, Remembered};
use crate::vcpu_lock::{VcpuGuard, VcpuLock};

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
///
/// Destroying the VCPU empties the context (`vcpu` and `live` become
/// `None`); the context itself is freed with its last reference, which may
/// be a thread's lookup cache (see `with_vcpu_of`), so it owns nothing
/// else worth freeing early.
pub(crate) struct VcpuCtx {
    /// The VCPU, `None` once destroyed.
    vcpu: VcpuLock,
    /// Its comm page, valid while `live` holds the handle.
    comm: *mut CommPage,
    /// Being destroyed: runs that have not started are refused.
    dying: AtomicBool,
    /// The VCPU's handle while it lives: destroying the VCPU takes it out
    /// (under this lock) before it frees the VCPU, so holding the lock with
    /// `Some` here keeps the comm page alive.
    live: Mutex<Option<nvmm::VcpuHandle>>,
    /// The thread (its `this_thread` identity) inside one of this VCPU's assist
    /// callbacks, 0 when none: only that thread ever reads its own id here
    /// (a live thread's id is unique), so the marker costs two plain stores
    /// per callback where a global count and a thread-local record cost two
    /// locked instructions and a thread-local lookup.
    lent_to: AtomicUsize,
    /// The VCPU that callback's assist holds, valid while `lent_to` is set.
    lent: AtomicPtr<Vcpu>,
}

// SAFETY: `comm` points to the VCPU's comm page, which lives as long as the
// VCPU this context owns; other threads only touch its atomic fields
// (`event_commit`, `stop`) through it, under `live` (see `with_comm`).
unsafe impl Send for VcpuCtx {}
// SAFETY: as above; the VCPU itself is behind a mutex.
unsafe impl Sync for VcpuCtx {}

impl VcpuCtx {
    pub(crate) fn new(vcpu: Vcpu) -> VcpuCtx {
        let comm = vcpu.comm_page();
        let handle = vcpu.handle();
        VcpuCtx {
            vcpu: VcpuLock::new(Some(vcpu)),
            comm,
            dying: AtomicBool::new(false),
            live: Mutex::new(Some(handle)),
            lent_to: AtomicUsize::new(0),
            lent: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    pub(crate) fn dying(&self) -> bool {
        self.dying.load(Ordering::SeqCst)
    }

    /// The comm page of the VCPU, which the caller still owns (creation).
    pub(crate) fn comm_page(&self) -> *mut CommPage {
        self.comm
    }

    /// The VCPU's comm page, for `f`, while the VCPU lives; `ENOENT` once it
    /// is destroyed.
    pub(crate) fn with_comm<R>(&self, f: impl FnOnce(*mut CommPage) -> R) -> CResult<R> {
        let live = lock(&self.live);
        if live.is_none() {
            return Err(libc::ENOENT);
        }
        Ok(f(self.comm))
    }

    /// The VCPU, locked without waiting: `EBUSY` when it runs on another
    /// thread, `ENOENT` once destroyed.
    pub(crate) fn try_lock(&self) -> CResult<VcpuGuard<'_>> {
        let g = self.vcpu.try_lock().ok_or(libc::EBUSY)?;
        if g.is_none() {
            return Err(libc::ENOENT);
        }
        Ok(g)
    }

    /// The VCPU, when an assist lent it to a callback on this thread.
    fn lent_here(&self) -> Option<*mut Vcpu> {
        let t = self.lent_to.load(Ordering::Acquire);
        (t != 0 && t == this_thread()).then(|| self.lent.load(Ordering::Relaxed))
    }
}

/// The calling thread's identity among live threads: its thread pointer,
/// the address x86-64's TLS ABI keeps at `%fs:0` (what glibc's and musl's
/// `pthread_self` return). Read in place: `pthread_self` is a call into the
/// C library through the GOT, an indirect branch at every assist, which the
/// host's branch-predictor barrier at VM exits makes mispredict.
#[cfg(target_arch = "x86_64")]
fn this_thread() -> usize {
    let tp: usize;
    // SAFETY: a load from the thread's own TCB, whose first word the TLS
    // ABI defines as its own address; no memory is written, the stack and
    // flags are untouched.
    unsafe { std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags)) };
    tp
}

/// The calling thread's id, as `pthread_self` gives it.
#[cfg(not(target_arch = "x86_64"))]
fn this_thread() -> usize {
    // SAFETY: pthread_self has no preconditions and cannot fail.
    unsafe { libc::pthread_self() as usize }
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
        if self.in_callback_here() {
            return Err(libc::EBUSY);
        }
        let mut all: Vec<(u32, Arc<VcpuCtx>)> = lock(&self.vcpus).iter().map(|(&i, v)| (i, v.clone())).collect();
        all.sort_by_key(|(i, _)| *i);
        Ok(all)
    }

    /// Whether this thread is inside an assist callback of one of this
    /// machine's VCPUs.
    pub(crate) fn in_callback_here(&self) -> bool {
        lock(&self.vcpus).values().any(|v| v.lent_here().is_some())
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
        let comm = ctx.comm_page();
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
        let ctx = {
            let mut vcpus = lock(&self.vcpus);
            if vcpus.get(&id).is_some_and(|v| v.lent_here().is_some()) {
                return Err(libc::EBUSY);
            }
            vcpus.remove(&id).ok_or(libc::ENOENT)?
        };
        REMOVALS.fetch_add(1, Ordering::SeqCst);
        if (id as usize) < self.npages {
            // SAFETY: in bounds of the array from `new`.
            unsafe { *self.pages.add(id as usize) = std::ptr::null_mut() };
        }
        ctx.dying.store(true, Ordering::SeqCst);
        // From here on nobody reaches the comm page through the context.
        let handle = lock(&ctx.live).take();
        if let Some(h) = &handle {
            h.stop();
        }
        // Wait for a run in progress on another thread to leave, then free
        // the VCPU (the context may live on in a thread's lookup cache).
        let vcpu = ctx.vcpu.lock().take();
        drop(vcpu);
        drop(handle);
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

/// Keeps the remembered VCPU's context alive, and forgets it when dropped
/// (a thread's exit). A strong reference, where a weak one would cost two
/// locked instructions per call to upgrade and drop: a destroyed VCPU is
/// freed all the same (its context is emptied), only the empty context
/// waits for the thread's next lookup or exit.
struct Kept {
    _ctx: Arc<VcpuCtx>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        remembered::set(Remembered::NONE);
    }
}

thread_local! {
    static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// Runs `f` on VCPU `cpuid` of the machine `mach` names, with its context:
/// as [`machine`] then [`MachineCtx::vcpu`] find it, but the VCPU this
/// thread used last is found without taking the tables' locks, while no
/// machine or VCPU was removed since it was looked up. From inside one of
/// that VCPU's assist callbacks on this thread, through the callback.
pub(crate) fn with_vcpu_of<R>(
    mach: *mut NvmmMachine,
    cpuid: u32,
    f: impl FnOnce(&VcpuCtx, &mut Vcpu) -> CResult<R>,
) -> CResult<R> {
    let m = non_null(mach)?;
    // SAFETY: non-null; the caller passes a `struct nvmm_machine`.
    let (machid, pages) = unsafe { ((*m).machid, (*m).pages) };
    let removals = REMOVALS.load(Ordering::SeqCst);
    // The VCPU this thread looked up last, found again without the tables'
    // locks (a VCPU thread calls `nvmm_vcpu_run` and an assist on the same
    // VCPU at every exit); `KEPT` holds the reference that keeps it alive.
    let last = remembered::get();
    let known = (!last.vcpu.is_null()
        && last.machid == machid
        && last.pages == pages
        && last.cpuid == cpuid
        && last.removals == removals)
        .then_some(last);
    let v: &VcpuCtx = match known {
        // SAFETY: `KEPT` holds a strong reference to the remembered context
        // (they are set together, and dropping it forgets it). A call made
        // from within `f` may replace it; the context stays alive for this
        // call all the same: the tables still hold it (no removal since the
        // lookup), or the thread removing it holds it while it waits for
        // the VCPU's lock, which this call (or the assist that lent the VCPU
        // to this thread) holds until `f` returns.
        Some(r) => unsafe { &*r.vcpu },
        None => {
            let v = machine(mach)?.vcpu(cpuid)?;
            let vcpu = Arc::as_ptr(&v);
            let old = KEPT.replace(Some(Kept { _ctx: v }));
            drop(old);
            remembered::set(Remembered { vcpu, pages, removals, machid, cpuid });
            // SAFETY: `KEPT` now holds it; as above.
            unsafe { &*vcpu }
        }
    };
    use_vcpu(v, |g| f(v, g))
}

/// Runs `f` on a VCPU: through the assist callback that holds it when
/// called from inside one on this thread, else under its lock.
fn use_vcpu<R>(v: &VcpuCtx, f: impl FnOnce(&mut Vcpu) -> CResult<R>) -> CResult<R> {
    if let Some(p) = v.lent_here() {
        // SAFETY: the pointer is the `&mut Vcpu` the assist lent to the
        // callback this thread is inside (see `in_callback`); nothing else
        // uses that borrow until the callback returns, and `f` runs within
        // it.
        return f(unsafe { &mut *p });
    }
    run_locked(v, f)
}

/// Runs `f` on a VCPU under its lock; `ENOENT` when it is being destroyed.
fn run_locked<R>(v: &VcpuCtx, f: impl FnOnce(&mut Vcpu) -> CResult<R>) -> CResult<R> {
    let mut g = v.vcpu.lock();
    if v.dying() {
        return Err(libc::ENOENT);
    }
    let Some(vcpu) = g.as_mut() else { return Err(libc::ENOENT) };
    f(vcpu)
}

/// Calls a C callback with `vcpu` (the VCPU of `ctx`, which the running
/// assist holds) lent to this thread, so that calls on it from the callback
/// reach it. The marker is undone even if `f` unwinds.
pub(crate) fn in_callback<R>(ctx: &VcpuCtx, vcpu: &mut Vcpu, f: impl FnOnce() -> R) -> R {
    /// Puts back what `lent_to` and `lent` held before.
    struct Restore<'a> {
        ctx: &'a VcpuCtx,
        outer: (usize, *mut Vcpu),
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            self.ctx.lent.store(self.outer.1, Ordering::Relaxed);
            self.ctx.lent_to.store(self.outer.0, Ordering::Release);
        }
    }
    let _restore = Restore { ctx, outer: (ctx.lent_to.load(Ordering::Relaxed), ctx.lent.load(Ordering::Relaxed)) };
    ctx.lent.store(vcpu, Ordering::Relaxed);
    ctx.lent_to.store(this_thread(), Ordering::Release);
    f()
}

#[cfg(test)]
mod tests {
    use super::this_thread;

    /// The thread identity is `pthread_self`'s value (the C library's own
    /// answer is the oracle), and differs between live threads.
    #[test]
    fn the_thread_identity_is_pthread_self() {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        assert_eq!(this_thread(), me);
        let other = std::thread::spawn(|| {
            // SAFETY: as above.
            (this_thread(), unsafe { libc::pthread_self() } as usize)
        })
        .join()
        .unwrap();
        assert_eq!(other.0, other.1);
        assert_ne!(other.0, me);
    }
}
