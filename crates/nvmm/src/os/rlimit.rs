//! The open-files limit.

/// Raises the soft open-files limit to the hard one (programs with many
/// machines need a descriptor per VM and per VCPU); returns the limit now in
/// force.
pub(crate) fn raise_fd_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    let want = r.rlim_max.min(1 << 20);
    if r.rlim_cur < want {
        let new = libc::rlimit { rlim_cur: want, rlim_max: r.rlim_max };
        // SAFETY: setrlimit reads one rlimit struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            return want;
        }
    }
    r.rlim_cur
}
