//! Reaching a VCPU from other threads: stop it (`nvmm_vcpu_stop`) and
//! inject an event for its next run (`nvmm_vcpu_inject`), without waiting
//! for it to leave the guest.
//!
//! A stop sets a request flag, then kicks the VCPU: the backend's kick
//! makes a run that has not entered the guest yet return at once
//! (`immediate_exit` on KVM, through a mapping the handle owns, so it
//! stays valid even if the VCPU is dropped) and, if a thread is inside the
//! run, sends it the kick signal. The VCPU side clears the kick *before*
//! it looks at the flag, so a request that arrives after the check still
//! finds the kick armed when the run starts: no request is lost, and a
//! request that interrupts a run makes it return at once. The VCPU reports
//! each request once, as [`Exit::Stopped`](crate::Exit::Stopped).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::time_slice::RunWatch;
use crate::backend::{Kick, KickImpl};
use crate::error::Result;
use crate::x86::event::Event;

/// State shared by a VCPU and its handles.
pub(crate) struct Shared {
    requested: AtomicBool,
    /// The thread inside `run()` and the runs entered (which the time
    /// slicer reads too).
    pub(crate) watch: RunWatch,
    kick: KickImpl,
    /// An event injected from another thread, for the next run.
    injected: Mutex<Option<Event>>,
    /// Whether `injected` holds one (read without the lock on every run).
    has_injected: AtomicBool,
}

impl Shared {
    pub(crate) fn new(kick: KickImpl, signal: i32) -> Shared {
        Shared {
            requested: AtomicBool::new(false),
            watch: RunWatch::new(signal),
            kick,
            injected: Mutex::new(None),
            has_injected: AtomicBool::new(false),
        }
    }

    /// Called by `run()` before entering the guest, after it cleared the
    /// kick: publishes the thread, then consumes a pending request.
    pub(crate) fn enter(&self, tid: i32) -> bool {
        self.watch.enter(tid);
        if self.take() {
            self.watch.leave();
            return true;
        }
        false
    }

    /// Called by `run()` once the guest has exited. (A requester that still
    /// reads the old thread id signals a thread that has left the run: the
    /// same as one that read it just before; the flag decides.)
    pub(crate) fn leave(&self) {
        self.watch.leave();
    }

    /// Consumes a pending request. A load first: the swap, a locked
    /// instruction, only when there is one (both are in the single total
    /// order of sequentially consistent operations, so a request the swap
    /// would see, the load sees).
    pub(crate) fn take(&self) -> bool {
        self.requested.load(Ordering::SeqCst) && self.requested.swap(false, Ordering::SeqCst)
    }

    /// The event injected from another thread, if any (consumed).
    pub(crate) fn take_injected(&self) -> Option<Event> {
        if !self.has_injected.load(Ordering::SeqCst) {
            return None;
        }
        let mut slot = self.injected.lock().unwrap_or_else(|e| e.into_inner());
        self.has_injected.store(false, Ordering::SeqCst);
        slot.take()
    }

    /// Whether another thread injected an event for the next run.
    pub(crate) fn has_injected(&self) -> bool {
        self.has_injected.load(Ordering::SeqCst)
    }

    pub(crate) fn signal(&self) -> i32 {
        self.watch.signal()
    }

    fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.kick.kick(self.watch.thread(), self.watch.signal());
    }
}

/// Stops a VCPU, or injects an event into it, from any thread.
///
/// Cloneable, `Send + Sync`. [`VcpuHandle::stop`] is async-signal-safe (two
/// atomic stores, one load and at most one `tgkill`): a stop requested
/// before `run()` makes that `run()` return [`Exit::Stopped`](crate::Exit::Stopped)
/// without entering the guest; one requested during `run()` makes it return
/// at once, whatever signals the running thread blocks. Requests made
/// before the VCPU reports `Stopped` are reported once.
///
/// A handle keeps one page of the VCPU's kernel state mapped, so the kernel
/// frees the VM only when its last handle is dropped.
#[derive(Clone)]
pub struct VcpuHandle {
    pub(crate) shared: Arc<Shared>,
}

/// The name this handle had when all it did was stop.
pub type StopHandle = VcpuHandle;

impl VcpuHandle {
    /// Asks the VCPU to stop (`nvmm_vcpu_stop`).
    pub fn stop(&self) {
        self.shared.request();
    }

    /// Withdraws a stop request the VCPU has not reported yet; returns
    /// whether there was one. For a controller that stopped several VCPUs
    /// at once and saw some of them end their runs for other reasons
    /// before the request reached them (a debugger stub's all-stop).
    pub fn cancel_stop(&self) -> bool {
        self.shared.take()
    }

    /// Records `event` for the VCPU's next run (`nvmm_vcpu_inject` from
    /// another thread), checking NVMM's rules now. It does not interrupt a
    /// run in progress: stop the VCPU too for the event to be delivered
    /// promptly. A later injection before that run replaces this one.
    pub fn inject(&self, event: Event) -> Result<()> {
        event.validate()?;
        let mut slot = self.shared.injected.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(event);
        self.shared.has_injected.store(true, Ordering::SeqCst);
        Ok(())
    }
}

impl std::fmt::Debug for VcpuHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuHandle").field("requested", &self.shared.requested.load(Ordering::Relaxed)).finish()
    }
}
