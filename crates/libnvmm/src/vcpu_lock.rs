//! The lock around a VCPU: a futex word and the VCPU, without poisoning.
//!
//! A VCPU thread takes it twice per exit (`nvmm_vcpu_run`, then the
//! assist). `std::sync::Mutex` adds poisoning to a futex lock like this
//! one: at every lock and unlock it reads the process-wide panic count, a
//! cache line the kernel's work at every VM exit has evicted, and this
//! library ignores poisoning anyway (a panic is a library bug, reported as
//! `EIO`, and the VCPU stays usable). The lock is the classic three-state
//! futex lock: 0 free, 1 held, 2 held with waiters (who sleep in
//! `FUTEX_WAIT` until the holder's unlock wakes one).

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};

use nvmm::Vcpu;

const FREE: u32 = 0;
const HELD: u32 = 1;
const CONTENDED: u32 = 2;

/// A VCPU (or `None` once destroyed) behind a lock.
pub(crate) struct VcpuLock {
    state: AtomicU32,
    vcpu: UnsafeCell<Option<Vcpu>>,
}

// SAFETY: the VCPU is only reached through a guard, which exists for one
// thread at a time (the lock's acquire/release ordering hands it over);
// `Vcpu` is `Send`.
unsafe impl Sync for VcpuLock {}

/// Holds the lock; the VCPU through `Deref`.
pub(crate) struct VcpuGuard<'a> {
    lock: &'a VcpuLock,
}

impl VcpuLock {
    pub(crate) fn new(vcpu: Option<Vcpu>) -> VcpuLock {
        VcpuLock { state: AtomicU32::new(FREE), vcpu: UnsafeCell::new(vcpu) }
    }

    /// Takes the lock, waiting for its holder.
    #[inline]
    pub(crate) fn lock(&self) -> VcpuGuard<'_> {
        if self.state.compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.lock_contended();
        }
        VcpuGuard { lock: self }
    }

    /// Takes the lock if it is free.
    pub(crate) fn try_lock(&self) -> Option<VcpuGuard<'_>> {
        // (`then`, not `then_some`: a guard built and dropped on failure
        // would release the holder's lock.)
        self.state
            .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then(|| VcpuGuard { lock: self })
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        // Marked contended while waiting, so that the holder's unlock wakes
        // a waiter; taken when the swap finds it free.
        while self.state.swap(CONTENDED, Ordering::Acquire) != FREE {
            futex(&self.state, libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, CONTENDED);
        }
    }

    #[inline]
    fn unlock(&self) {
        if self.state.swap(FREE, Ordering::Release) == CONTENDED {
            futex(&self.state, libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1);
        }
    }
}

impl Deref for VcpuGuard<'_> {
    type Target = Option<Vcpu>;
    fn deref(&self) -> &Option<Vcpu> {
        // SAFETY: the guard holds the lock: no other reference to the VCPU
        // exists until it is dropped.
        unsafe { &*self.lock.vcpu.get() }
    }
}

impl DerefMut for VcpuGuard<'_> {
    fn deref_mut(&mut self) -> &mut Option<Vcpu> {
        // SAFETY: as in `deref`; `&mut self` makes this the only borrow.
        unsafe { &mut *self.lock.vcpu.get() }
    }
}

impl Drop for VcpuGuard<'_> {
    fn drop(&mut self) {
        self.lock.unlock();
    }
}

/// `FUTEX_WAIT` (sleep while `word` holds `val`) or `FUTEX_WAKE` (wake
/// `val` sleepers). Interrupted or spurious returns are fine: the callers
/// check the word again.
fn futex(word: &AtomicU32, op: libc::c_int, val: u32) {
    // SAFETY: `word` is a live, aligned 32-bit word for the duration of the
    // call; no timeout and no second word are passed.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), op, val, std::ptr::null::<libc::timespec>());
    }
}

#[cfg(test)]
mod tests {
    use super::{FREE, VcpuLock};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    /// Two threads counting under the lock lose no increment, and each
    /// waits for the other (the counter lives beside the lock: the VCPU slot
    /// stays `None`).
    #[test]
    fn the_lock_excludes_and_wakes() {
        struct Shared {
            lock: VcpuLock,
            count: std::cell::UnsafeCell<u64>,
        }
        // SAFETY: `count` is only touched under `lock` (the test's claim).
        unsafe impl Sync for Shared {}
        let s = Arc::new(Shared { lock: VcpuLock::new(None), count: std::cell::UnsafeCell::new(0) });
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..100_000 {
                        let g = s.lock.lock();
                        // SAFETY: under the lock.
                        unsafe { *s.count.get() += 1 };
                        drop(g);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // SAFETY: the threads are done.
        assert_eq!(unsafe { *s.count.get() }, 200_000);
        assert_eq!(s.lock.state.load(Ordering::SeqCst), FREE, "free once every guard is gone");
    }

    /// `try_lock` fails while the lock is held and succeeds once released;
    /// a waiter blocked in `lock` gets it when the holder lets go.
    #[test]
    fn try_lock_and_waiting() {
        let lock = Arc::new(VcpuLock::new(None));
        let held = lock.lock();
        assert!(lock.try_lock().is_none());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                let g = lock.lock();
                tx.send(()).unwrap();
                drop(g);
            })
        };
        assert!(rx.recv_timeout(std::time::Duration::from_millis(50)).is_err(), "the waiter waits");
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the waiter gets the lock");
        waiter.join().unwrap();
        assert!(lock.try_lock().is_some());
    }
}
