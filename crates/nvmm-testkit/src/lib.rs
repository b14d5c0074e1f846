//! Test and benchmark support shared by the nvmm-rs crates.
//!
//! [`floor`] is the bare `KVM_RUN` loop the benchmarks measure nvmm
//! against, written on `kvm-ioctls` with nothing of nvmm in it; [`Rng`] the
//! one deterministic PRNG of the tests, benchmarks and fuzz oracles.
//!
//! Every test that needs `/dev/kvm` starts with [`kvm_or_skip!`] (or calls
//! [`kvm_available`]). Without KVM the test prints one `SKIP` line and
//! passes; with `NVMM_REQUIRE_KVM=1` in the environment (CI sets it whenever
//! `/dev/kvm` exists) a missing or unusable KVM fails the test instead.

use std::fs::OpenOptions;

pub mod floor;
mod rng;

pub use rng::Rng;

/// Environment variable that turns a missing KVM from a skip into a failure.
pub const REQUIRE_KVM_ENV: &str = "NVMM_REQUIRE_KVM";

/// Returns `true` when `/dev/kvm` can be opened read-write.
///
/// When it cannot, prints `SKIP <test>: <reason>` and returns `false`, or
/// panics if `NVMM_REQUIRE_KVM=1` is set.
pub fn kvm_available(test: &str) -> bool {
    match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            let required = std::env::var(REQUIRE_KVM_ENV).is_ok_and(|v| v == "1");
            assert!(!required, "{test}: /dev/kvm is required ({REQUIRE_KVM_ENV}=1) but cannot be opened: {e}");
            println!("SKIP {test}: /dev/kvm cannot be opened ({e})");
            false
        }
    }
}

/// Returns from the calling test (which passes) when KVM is unavailable.
///
/// ```
/// fn my_test() {
///     nvmm_testkit::kvm_or_skip!();
///     // ... code that needs /dev/kvm ...
/// }
/// ```
#[macro_export]
macro_rules! kvm_or_skip {
    () => {
        if !$crate::kvm_available(module_path!()) {
            return;
        }
    };
    ($ret:expr) => {
        if !$crate::kvm_available(module_path!()) {
            return $ret;
        }
    };
}

/// Number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Resident set size of this process in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
