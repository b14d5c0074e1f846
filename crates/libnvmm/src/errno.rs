//! The C error convention: 0 on success, -1 with `errno` set on failure.

use std::ffi::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// An error as the C API reports it: an errno value.
pub(crate) type Errno = c_int;

/// Result of an entry point's body.
pub(crate) type CResult<T = ()> = Result<T, Errno>;

/// Sets the calling thread's `errno`.
pub(crate) fn set_errno(e: Errno) {
    // SAFETY: `__errno_location` returns the calling thread's errno slot,
    // valid for the thread's lifetime.
    unsafe { *libc::__errno_location() = e };
}

/// Runs an entry point's body: 0 on success, -1 and `errno` on error. A
/// panic (a bug in the library) must not unwind into C: it becomes `EIO`.
pub(crate) fn entry(body: impl FnOnce() -> CResult) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            set_errno(e);
            -1
        }
        Err(_) => {
            set_errno(libc::EIO);
            -1
        }
    }
}

/// The errno of a library error.
pub(crate) fn errno_of(e: &nvmm::Error) -> Errno {
    e.errno()
}

/// Converts a library result.
pub(crate) fn check<T>(r: nvmm::Result<T>) -> CResult<T> {
    r.map_err(|e| errno_of(&e))
}

/// A non-null pointer, or `EFAULT`.
pub(crate) fn non_null<T>(p: *mut T) -> CResult<*mut T> {
    if p.is_null() { Err(libc::EFAULT) } else { Ok(p) }
}
