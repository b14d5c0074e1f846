//! Stopping a running VCPU from anywhere (`nvmm_vcpu_stop`).
//!
//! A [`StopHandle`] sets a request flag, sets `kvm_run.immediate_exit`
//! (through a mapping of its own, so it stays valid even if the VCPU is
//! dropped) and, if the VCPU is inside `run()`, sends its thread the kick
//! signal. The VCPU side clears `immediate_exit` (through its own mapping of
//! the same page, which keeps the run path on pages it touches anyway)
//! *before* it looks at the flag, so a request that arrives after the check
//! still finds `immediate_exit` set when `KVM_RUN` starts: no request is
//! lost, and a request that interrupts `KVM_RUN` makes it return at once.
//! The VCPU reports each request once, as [`Exit::Stopped`](crate::Exit::Stopped).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::backend::kvm::RunAlias;
use crate::os::{kick_thread, this_thread_id};

/// State shared by a VCPU and its stop handles.
pub(crate) struct StopShared {
    requested: AtomicBool,
    /// Kernel thread id of the thread inside `run()`, 0 when none.
    tid: AtomicI32,
    alias: RunAlias,
    signal: i32,
}

impl StopShared {
    pub(crate) fn new(alias: RunAlias, signal: i32) -> StopShared {
        StopShared { requested: AtomicBool::new(false), tid: AtomicI32::new(0), alias, signal }
    }

    /// Called by `run()` before entering the guest, after it cleared
    /// `immediate_exit` through its own mapping of the page: publishes the
    /// thread, then consumes a pending request.
    pub(crate) fn enter(&self) -> bool {
        self.tid.store(this_thread_id(), Ordering::SeqCst);
        if self.requested.swap(false, Ordering::SeqCst) {
            self.tid.store(0, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Called by `run()` once the guest has exited.
    pub(crate) fn leave(&self) {
        self.tid.store(0, Ordering::SeqCst);
    }

    /// Consumes a pending request (after `KVM_RUN` returned `EINTR`).
    pub(crate) fn take(&self) -> bool {
        self.requested.swap(false, Ordering::SeqCst)
    }

    fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.alias.set_immediate_exit(true);
        let tid = self.tid.load(Ordering::SeqCst);
        if tid != 0 {
            kick_thread(tid, self.signal);
        }
    }
}

/// Stops a VCPU from any thread, or from a signal handler.
///
/// Cloneable, `Send + Sync`. [`StopHandle::stop`] is async-signal-safe (two
/// atomic stores, one load and at most one `tgkill`). A stop requested
/// before `run()` makes that `run()` return [`Exit::Stopped`](crate::Exit::Stopped)
/// without entering the guest; one requested during `run()` makes it return
/// at the next exit at the latest. Requests made before the VCPU reports
/// `Stopped` are reported once.
///
/// A handle keeps one page of the VCPU's kernel state mapped, so the kernel
/// frees the VM only when its last handle is dropped.
#[derive(Clone)]
pub struct StopHandle {
    pub(crate) shared: Arc<StopShared>,
}

impl StopHandle {
    /// Asks the VCPU to stop.
    pub fn stop(&self) {
        self.shared.request();
    }
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle").field("requested", &self.shared.requested.load(Ordering::Relaxed)).finish()
    }
}
