//! Time slices: a run that lasts without an exit returns
//! [`Exit::None`](crate::Exit::None) after about one slice, as NetBSD's
//! does.
//!
//! NetBSD's kernel leaves its run loop for user space when the thread must
//! return there (`nvmm_return_needed`: a pending signal, the scheduler
//! wanting the CPU back, a stop request); `nvmm_vcpu_run` then reports
//! `NVMM_VCPU_EXIT_NONE`. The scheduler asks for the CPU of a thread that
//! computes without sleeping every round-robin interval or two (100 ms at
//! NetBSD's default `hz`), so a guest that never exits still hands control
//! back to its program at that pace, and a program may count on it (a
//! single-threaded VMM that checks its timers between runs does). Under
//! KVM the thread is rescheduled inside `KVM_RUN` and never returns.
//!
//! So the library ends such runs itself: one thread per process looks at
//! every VCPU once per slice and sends the kick signal to the thread of
//! each VCPU that has been inside the same run since its last look and
//! has used a whole slice of CPU time meanwhile (the kernel's per-thread
//! clock, guest time included: a run the host merely keeps waiting is not
//! ended, as NetBSD's scheduler would not preempt a thread that is not
//! running). The run returns `EINTR` (through `KVM_SET_SIGNAL_MASK` when
//! the thread blocks the signal), which the run loop reports as
//! `Exit::None`. Runs with exits cost nothing more than a counter written
//! at each entry; the thread keeps no VCPU alive (it holds each VCPU's
//! shared part weakly, and strongly only while it looks at it).

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::handle::Shared;
use crate::error::{Error, Result};
use crate::os::{kick_thread, thread_cpu_time};

/// What the slicer reads of one VCPU: the thread inside a run, and how
/// many runs the VCPU entered.
#[derive(Debug)]
pub(crate) struct RunWatch {
    /// Kernel thread id of the thread inside `run()`, 0 when none.
    tid: AtomicI32,
    /// Runs entered. Written by the running thread only, before it
    /// publishes `tid`.
    runs: AtomicU64,
    signal: i32,
}

impl RunWatch {
    pub(crate) fn new(signal: i32) -> RunWatch {
        RunWatch { tid: AtomicI32::new(0), runs: AtomicU64::new(0), signal }
    }

    /// A new run of thread `tid` begins (the thread is published with a
    /// sequentially consistent store, which callers rely on: see
    /// `Shared::enter`).
    #[inline(always)]
    pub(crate) fn enter(&self, tid: i32) {
        // One writer: a plain increment, no locked instruction.
        self.runs.store(self.runs.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        self.tid.store(tid, Ordering::SeqCst);
    }

    /// The run ended.
    #[inline(always)]
    pub(crate) fn leave(&self) {
        self.tid.store(0, Ordering::Release);
    }

    /// The thread inside a run, 0 when none.
    pub(crate) fn thread(&self) -> i32 {
        self.tid.load(Ordering::SeqCst)
    }

    /// The kick signal.
    pub(crate) fn signal(&self) -> i32 {
        self.signal
    }

    /// One look of the slicer, `seen` being what the last one saw of this
    /// run (its count, and the thread's CPU time then): kicks the thread
    /// when it has been inside the same run since, computing for a whole
    /// `slice`; whether it did.
    fn look(&self, seen: &mut Option<Seen>, slice: Duration) -> bool {
        let tid = self.tid.load(Ordering::SeqCst);
        // Read after the thread: a run published with `tid` has counted
        // itself (the count's store precedes the publication).
        let runs = self.runs.load(Ordering::Relaxed);
        let cpu = if tid == 0 { None } else { thread_cpu_time(tid) };
        let Some(cpu) = cpu else {
            *seen = None;
            return false;
        };
        match *seen {
            Some((run, since)) if run == runs => {
                if cpu.saturating_sub(since) < slice {
                    return false;
                }
                // The thread may leave the run meanwhile: the signal then
                // finds it outside (a handler that does nothing, or pending
                // until its next run if it blocks the signal, which that run
                // reports as `Exit::None` at once; both are what NetBSD
                // does when a reschedule comes as the run ends).
                kick_thread(tid, self.signal);
                *seen = Some((runs, cpu));
                true
            }
            _ => {
                *seen = Some((runs, cpu));
                false
            }
        }
    }
}

/// What a look saw of a run: its count, and the thread's CPU time then.
type Seen = (u64, Duration);

/// One process's slicer: the VCPUs it looks at, with what its last look
/// saw of each, and the signal that the first one arrived.
struct Registry {
    watched: Mutex<Vec<(Weak<Shared>, Option<Seen>)>>,
    not_empty: Condvar,
    slice: Duration,
}

impl Registry {
    fn watched(&self) -> MutexGuard<'_, Vec<(Weak<Shared>, Option<Seen>)>> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The registry of this process, with the process it was made in. A child
/// made by `fork` makes its own, and a slicer thread with it: it never
/// touches its parent's, whose lock the parent's slicer may have held
/// when the child was made (only threads creating VCPUs take this one).
static REGISTRY: Mutex<Option<(u32, &'static Registry)>> = Mutex::new(None);

/// This process's registry, with its slicer thread started.
fn registry(slice: Duration) -> Result<&'static Registry> {
    let mut r = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if let Some((made_in, registry)) = *r
        && made_in == pid
    {
        return Ok(registry);
    }
    // One per process (and per forked child) for its lifetime.
    let registry: &'static Registry =
        Box::leak(Box::new(Registry { watched: Mutex::new(Vec::new()), not_empty: Condvar::new(), slice }));
    std::thread::Builder::new()
        .name("nvmm-time-slice".into())
        .spawn(move || slicer(registry))
        .map_err(|e| Error::kvm("starting the time-slice thread", e))?;
    *r = Some((pid, registry));
    Ok(registry)
}

/// Watches the VCPU of `shared` with slices of `slice` (the process's
/// [`Options::time_slice`](crate::Options::time_slice)), starting the
/// slicer thread if this process has none.
pub(crate) fn watch(shared: &Arc<Shared>, slice: Duration) -> Result<()> {
    let registry = registry(slice)?;
    let mut w = registry.watched();
    w.push((Arc::downgrade(shared), None));
    if w.len() == 1 {
        registry.not_empty.notify_all();
    }
    Ok(())
}

/// The slicer thread: looks at every watched VCPU once per slice; waits,
/// without waking, while there is none.
fn slicer(registry: &'static Registry) {
    let mut w = registry.watched();
    loop {
        w.retain(|(v, _)| v.strong_count() > 0);
        if w.is_empty() {
            w = registry.not_empty.wait(w).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        for (v, seen) in w.iter_mut() {
            if let Some(v) = v.upgrade() {
                v.watch.look(seen, registry.slice);
            }
        }
        drop(w);
        std::thread::sleep(registry.slice);
        w = registry.watched();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::RunWatch;

    /// Computes on the calling thread until its CPU clock moved by `d`.
    fn compute(d: Duration) {
        let cpu = || crate::os::thread_cpu_time(crate::os::this_thread_id()).unwrap();
        let start = cpu();
        let mut x = 0u64;
        while cpu() - start < d {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    /// The slicer kicks only a thread it finds in the same run at two
    /// looks, having computed a whole slice in between (the thread's CPU
    /// clock, read by the kernel, decides); a new run, or none, starts
    /// over. (Kicks ending real runs are tested in `tests/time_slice.rs`.)
    #[test]
    fn a_kick_needs_a_slice_of_computing_in_one_run() {
        // Signal 0: tgkill checks the thread and delivers nothing.
        let w = RunWatch::new(0);
        let tid = crate::os::this_thread_id();
        let slice = Duration::from_millis(10);
        let mut seen = None;
        assert!(!w.look(&mut seen, slice), "no run");
        w.enter(tid);
        assert!(!w.look(&mut seen, slice), "first look at run 1");
        assert!(!w.look(&mut seen, Duration::from_secs(3600)), "run 1 has not computed for an hour");
        compute(slice);
        assert!(w.look(&mut seen, slice), "run 1 computed for a slice");
        assert!(!w.look(&mut seen, Duration::from_secs(3600)), "a kick starts the next slice");
        w.leave();
        w.enter(tid);
        compute(slice);
        assert!(!w.look(&mut seen, slice), "run 2 is new");
        w.leave();
        assert!(!w.look(&mut seen, slice), "outside runs");
        w.enter(tid);
        assert!(!w.look(&mut seen, slice), "run 3, after a look outside");
    }
}
