//! Branch hints for the exit path.

/// Marks the branch that calls it as the unlikely one: the compiler treats
/// a call to a `#[cold]` function as rare and lays the other path out as
/// the straight one, which matters after a VM exit, where the host leaves
/// the caches and branch predictor cold. (`std::hint::cold_path` does the
/// same without the call from Rust 1.95 on, above this crate's MSRV.)
#[cold]
#[inline(never)]
pub(crate) fn cold_path() {}
