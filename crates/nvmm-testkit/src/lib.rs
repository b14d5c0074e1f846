//! Test and benchmark support shared by the nvmm-rs crates.
//!
//! [`floor`] is the bare `KVM_RUN` loop the benchmarks measure nvmm
//! against, written on `kvm-ioctls` with nothing of nvmm in it; [`Rng`] the
//! one deterministic PRNG of the tests, benchmarks and fuzz oracles.
//!
//! Every test that needs `/dev/kvm` starts with [`kvm_or_skip!`] (or calls
//! [`kvm_available`]); every test that cannot run its check on the host it
//! finds (no AVX, say) calls [`skip`]. **No skip is silent:**
//!
//! - under `NVMM_REQUIRE_KVM=1` (what `.ci/run` always sets) a skip is a
//!   failure, with the test's name and the reason in the panic message;
//! - otherwise the test passes, prints `SKIP <test>: <reason>` on stderr and
//!   appends the same line to `target/nvmm-skipped.txt` (or the file named by
//!   `NVMM_SKIP_LOG`), which lists every test that did not check what it
//!   claims, by name, after the run.
//!
//! The test's name is the name of the thread the test harness runs it on
//! (libtest and nextest both name it after the test).

use std::fs::OpenOptions;
use std::io::Write as _;

pub mod debuggers;
pub mod floor;
pub mod floor_state;
pub mod host;
mod rng;

pub use rng::Rng;

/// Environment variable that turns every skip (missing KVM, missing CPU
/// feature) into a failure.
pub const REQUIRE_KVM_ENV: &str = "NVMM_REQUIRE_KVM";

/// Environment variable naming the file skipped tests are listed in.
pub const SKIP_LOG_ENV: &str = "NVMM_SKIP_LOG";

/// Whether skips are failures in this run (`NVMM_REQUIRE_KVM=1`).
pub fn skips_forbidden() -> bool {
    std::env::var(REQUIRE_KVM_ENV).is_ok_and(|v| v == "1")
}

/// The running test's name (the harness names the test thread after it).
pub fn test_name() -> String {
    std::thread::current().name().unwrap_or("<unnamed test thread>").to_owned()
}

/// The file skipped tests are listed in.
pub fn skip_log() -> std::path::PathBuf {
    match std::env::var_os(SKIP_LOG_ENV) {
        Some(p) => p.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/nvmm-skipped.txt"),
    }
}

/// Records that the running test cannot check what it claims (or a part
/// of it) on this host, for `reason`; the caller then returns or leaves that
/// part out.
///
/// # Panics
///
/// Under `NVMM_REQUIRE_KVM=1`, always: a skip is a failure there. Also when
/// the skip cannot be recorded in [`skip_log`] (an unrecorded skip would be
/// a silent one).
pub fn skip(reason: &str) {
    let test = test_name();
    assert!(!skips_forbidden(), "{test} cannot run on this host ({reason}) and {REQUIRE_KVM_ENV}=1 forbids skips");
    let line = format!("SKIP {test}: {reason}");
    eprintln!("{line}");
    let path = skip_log();
    let logged = OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = logged {
        panic!("{line}; and the skip cannot be recorded in {}: {e}", path.display());
    }
}

/// Returns `true` when `/dev/kvm` can be opened read-write; otherwise
/// records a [`skip`] (a failure under `NVMM_REQUIRE_KVM=1`) and returns
/// `false`.
pub fn kvm_available() -> bool {
    match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            skip(&format!("/dev/kvm cannot be opened ({e})"));
            false
        }
    }
}

/// Returns from the calling test when KVM is unavailable, after recording
/// the skip (see [`skip`]; a failure under `NVMM_REQUIRE_KVM=1`).
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
        if !$crate::kvm_available() {
            return;
        }
    };
    ($ret:expr) => {
        if !$crate::kvm_available() {
            return $ret;
        }
    };
}

/// Number of open file descriptors of this process.
///
/// # Panics
///
/// When `/proc/self/fd` cannot be read: a leak test must not pass because
/// it could not count.
pub fn open_fds() -> usize {
    match std::fs::read_dir("/proc/self/fd") {
        Ok(d) => d.count(),
        Err(e) => panic!("cannot count open descriptors in /proc/self/fd: {e}"),
    }
}

/// Resident set size of this process in bytes.
///
/// # Panics
///
/// When `/proc/self/status` has no readable `VmRSS` line: a leak test must
/// not pass because it could not measure.
pub fn rss_bytes() -> u64 {
    let status =
        std::fs::read_to_string("/proc/self/status").unwrap_or_else(|e| panic!("cannot read /proc/self/status: {e}"));
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no VmRSS line in /proc/self/status"));
    kib * 1024
}
