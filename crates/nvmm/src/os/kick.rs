//! The signal that kicks a VCPU thread out of `KVM_RUN` when it is stopped
//! from elsewhere.
//!
//! The handler does nothing: its only job is to exist so that the signal
//! interrupts `KVM_RUN` (which then returns `EINTR`) instead of killing the
//! process. `immediate_exit` (set before the signal is sent) covers the
//! window where the target thread has not entered `KVM_RUN` yet.

use std::cell::Cell;
use std::sync::Mutex;

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

thread_local! {
    static TID: Cell<i32> = const { Cell::new(0) };
}

/// Kernel thread id of the calling thread (cached per thread).
pub(crate) fn this_thread_id() -> i32 {
    TID.with(|t| {
        if t.get() == 0 {
            // SAFETY: gettid has no preconditions.
            t.set(unsafe { libc::gettid() });
        }
        t.get()
    })
}

/// Sends `signal` to thread `tid` of this process. Async-signal-safe.
pub(crate) fn kick_thread(tid: i32, signal: i32) {
    // SAFETY: tgkill only sends a signal; a stale tid at worst signals
    // nothing (ESRCH) or a thread of ours whose handler does nothing.
    unsafe {
        libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal);
    }
}
