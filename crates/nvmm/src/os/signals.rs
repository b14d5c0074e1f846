//! Thread signal masks, for the kick signal: a VMM may block it in its
//! VCPU threads (QEMU blocks every signal there but its own), and the
//! VCPU must still be stoppable.

/// A set of blocked signals (1 to 64, the ones the kernel's 8-byte mask
/// holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SignalMask(u64);

impl SignalMask {
    /// The calling thread's mask.
    pub(crate) fn of_this_thread() -> SignalMask {
        // SAFETY: an all-zero sigset_t is a valid (empty) set.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: a null `set` only queries the mask into `set`, which we own.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set) };
        let mut bits = 0u64;
        for sig in 1..=64 {
            // SAFETY: `set` is a valid sigset_t; `sig` is in range.
            if unsafe { libc::sigismember(&set, sig) } == 1 {
                bits |= 1 << (sig - 1);
            }
        }
        SignalMask(bits)
    }

    /// Whether `signal` is blocked.
    pub(crate) fn blocks(self, signal: i32) -> bool {
        (1..=64).contains(&signal) && self.0 & (1 << (signal - 1)) != 0
    }

    /// The set without `signal`.
    pub(crate) fn without(self, signal: i32) -> SignalMask {
        if (1..=64).contains(&signal) { SignalMask(self.0 & !(1 << (signal - 1))) } else { self }
    }

    /// The kernel's representation: bit `n - 1` for signal `n`.
    pub(crate) fn kernel_bits(self) -> u64 {
        self.0
    }
}

/// Consumes pending instances of `signal`, which the calling thread blocks,
/// without waiting.
pub(crate) fn consume_pending(signal: i32) {
    // SAFETY: an all-zero sigset_t is a valid (empty) set, filled below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is ours; `signal` was checked by the caller's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
    }
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    for _ in 0..64 {
        // SAFETY: waits for a signal of `set` with a zero timeout; the info
        // pointer may be null.
        if unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) } < 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        let m = SignalMask(0b1010);
        assert!(m.blocks(2) && m.blocks(4) && !m.blocks(1) && !m.blocks(65));
        assert_eq!(m.without(4), SignalMask(0b10));
        assert_eq!(m.without(70), m);
    }

    #[test]
    fn this_threads_mask_is_read() {
        std::thread::spawn(|| {
            // SAFETY: building and applying a mask for this test thread.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR2);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            assert!(SignalMask::of_this_thread().blocks(libc::SIGUSR2));
        })
        .join()
        .unwrap();
    }
}
