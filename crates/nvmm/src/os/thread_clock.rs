//! The CPU time of a thread of this process, read from another thread.

use std::time::Duration;

/// The CPU time thread `tid` of this process has used (guest time inside
/// `KVM_RUN` included), or `None` if there is no such thread.
pub(crate) fn thread_cpu_time(tid: i32) -> Option<Duration> {
    // The kernel's per-thread CPU clock of `tid` (what glibc's
    // pthread_getcpuclockid builds): ~tid << 3 | CPUCLOCK_PERTHREAD (4) |
    // CPUCLOCK_SCHED (2).
    let clock = (!tid << 3) | 6;
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own; an id naming no
    // thread of this process makes it fail with EINVAL.
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return None;
    }
    Some(Duration::new(u64::try_from(t.tv_sec).ok()?, u32::try_from(t.tv_nsec).ok()?))
}

#[cfg(test)]
mod tests {
    use super::thread_cpu_time;

    /// Checked against the calling thread's own CPU clock (the kernel is
    /// the oracle): read through the thread id, it moves as the thread
    /// computes, and names no thread once the thread is gone.
    #[test]
    fn reads_the_cpu_time_of_a_thread_by_id() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let before = thread_cpu_time(tid).expect("this thread");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = thread_cpu_time(tid).expect("this thread");
        assert!(after > before, "{before:?} then {after:?}");
        let mut own = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: writes one timespec we own.
        assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut own) }, 0);
        let own = std::time::Duration::new(own.tv_sec as u64, own.tv_nsec as u32);
        assert!(own >= after, "the thread's own clock, read later: {own:?} against {after:?}");
        // SAFETY: gettid has no preconditions.
        let gone = std::thread::spawn(|| unsafe { libc::gettid() }).join().unwrap();
        assert_eq!(thread_cpu_time(gone), None, "a thread that exited");
    }
}
