//! The signal that kicks a VCPU thread out of `KVM_RUN` when it is stopped
//! from elsewhere.
//!
//! The handler does nothing: its only job is to exist so that the signal
//! interrupts `KVM_RUN` (which then returns `EINTR`) instead of killing the
//! process. `immediate_exit` (set before the signal is sent) covers the
//! window where the target thread has not entered `KVM_RUN` yet.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

extern "C" fn on_kick(_signal: libc::c_int) {}

static INSTALLED: Mutex<Option<i32>> = Mutex::new(None);

/// Installs the no-op handler for `signal`, once per process.
pub(crate) fn install_kick_handler(signal: i32) -> Result<()> {
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *installed == Some(signal) {
        return Ok(());
    }
    // SAFETY: sigaction with a null new action only reads the current one
    // into `old`, a properly sized, zeroed sigaction struct.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) } != 0 {
        return Err(Error::kvm("sigaction", std::io::Error::last_os_error()));
    }
    let ours = on_kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
    if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN && old.sa_sigaction != ours {
        return Err(Error::KickSignalInUse { signal });
    }
    // SAFETY: a zeroed sigaction is a valid starting point; we fill the
    // handler, an empty mask and flags.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = ours;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: `act.sa_mask` is a valid sigset_t owned by `act`.
    unsafe { libc::sigemptyset(&mut act.sa_mask) };
    // SAFETY: installs an async-signal-safe handler that does nothing.
    if unsafe { libc::sigaction(signal, &act, std::ptr::null_mut()) } != 0 {
        return Err(Error::kvm("sigaction", std::io::Error::last_os_error()));
    }
    *installed = Some(signal);
    Ok(())
}

/// Exits of threads that asked for their id (VCPU threads): a
/// remembered (thread pointer, id) pair holds while this count is
/// unchanged, since a new thread may take over the thread pointer of one
/// that exited, never that of a live one.
static THREAD_EXITS: AtomicU64 = AtomicU64::new(0);

/// Counts its thread's exit when dropped (a thread-local destructor).
struct ExitCounter;

impl Drop for ExitCounter {
    fn drop(&mut self) {
        THREAD_EXITS.fetch_add(1, Ordering::SeqCst);
    }
}

thread_local! {
    static TID: Cell<i32> = const { Cell::new(0) };
    static ON_EXIT: ExitCounter = const { ExitCounter };
}

/// Kernel thread id of the calling thread (cached per thread).
pub(crate) fn this_thread_id() -> i32 {
    // Registers the exit count's destructor for this thread.
    let _ = ON_EXIT.try_with(|_| ());
    TID.with(|t| {
        if t.get() == 0 {
            // SAFETY: gettid has no preconditions.
            t.set(unsafe { libc::gettid() });
        }
        t.get()
    })
}

/// The id of the thread that last ran a VCPU, remembered beside it by its
/// thread pointer: the run loop needs the caller's kernel thread id at
/// every run, and a thread-local lookup in a shared library is a call
/// through the PLT (an indirect branch, which the host's branch-predictor
/// barrier at VM exits makes mispredict).
#[derive(Debug, Default)]
pub(crate) struct ThreadMemo {
    thread_pointer: usize,
    tid: i32,
    exits: u64,
}

impl ThreadMemo {
    /// The calling thread's kernel id.
    #[inline(always)]
    pub(crate) fn tid(&mut self) -> i32 {
        let exits = THREAD_EXITS.load(Ordering::SeqCst);
        match thread_pointer() {
            Some(tp) if tp == self.thread_pointer && exits == self.exits && self.tid != 0 => self.tid,
            tp => self.remember(tp.unwrap_or(0), exits),
        }
    }

    #[cold]
    #[inline(never)]
    fn remember(&mut self, thread_pointer: usize, exits: u64) -> i32 {
        let tid = this_thread_id();
        *self = ThreadMemo { thread_pointer, tid, exits };
        tid
    }
}

/// The calling thread's thread pointer, the address x86-64's TLS ABI keeps
/// at `%fs:0` (unique among live threads).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn thread_pointer() -> Option<usize> {
    let tp: usize;
    // SAFETY: a load from the thread's own TCB, whose first word the TLS
    // ABI defines as its own address; no memory is written, the stack and
    // flags are untouched.
    unsafe { std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags)) };
    Some(tp)
}

/// No thread pointer read elsewhere: every call looks the id up.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn thread_pointer() -> Option<usize> {
    None
}

/// Sends `signal` to thread `tid` of this process. Async-signal-safe.
pub(crate) fn kick_thread(tid: i32, signal: i32) {
    // SAFETY: tgkill only sends a signal; a stale tid at worst signals
    // nothing (ESRCH) or a thread of ours whose handler does nothing.
    unsafe {
        libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::{ThreadMemo, thread_pointer};

    fn gettid() -> i32 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    }

    /// The memo gives the kernel's id of whichever thread asks (the
    /// kernel is the oracle), including a thread created after the one it
    /// remembered exited, which usually takes over its thread pointer.
    #[test]
    fn the_remembered_id_is_the_callers() {
        let mut memo = ThreadMemo::default();
        assert_eq!(memo.tid(), gettid());
        assert_eq!(memo.tid(), gettid(), "remembered");
        let (memo, first_tp) = std::thread::spawn(move || {
            assert_eq!(memo.tid(), gettid(), "another thread");
            (memo, thread_pointer())
        })
        .join()
        .unwrap();
        let mut memo = memo;
        let (tid, next_tp, now) = std::thread::spawn(move || (memo.tid(), thread_pointer(), gettid())).join().unwrap();
        assert_eq!(tid, now, "a thread created after the remembered one exited");
        println!("thread pointer reused by the next thread: {}", first_tp == next_tp);
    }
}
