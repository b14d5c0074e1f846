//! The VCPU a thread looked up last (see `handles::with_vcpu_of`), kept in
//! thread-local storage that is read without a call.
//!
//! Rust's thread-locals in a shared library use the general-dynamic TLS
//! model: every access calls `__tls_get_addr` through the PLT, an indirect
//! branch, which the host's branch-predictor barrier at every VM exit makes
//! mispredict (`nvmm_vcpu_run` and the assist after it look the VCPU up at
//! every exit: two such calls per exit, about 1% of a bare `KVM_RUN` loop
//! here). On x86-64 this record lives in the initial-exec model instead:
//! its offset from the thread pointer comes from the GOT, set once when the
//! library is loaded. The cost: a program that `dlopen`s the library needs
//! room for these 32 bytes in the static TLS block, which glibc and musl
//! reserve for such libraries (programs linked with `-lnvmm` need nothing).

use crate::handles::VcpuCtx;
use nvmm::netbsd::CommPage;

/// A thread's last lookup: `vcpu` is null when there is none.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Remembered {
    pub(crate) vcpu: *const VcpuCtx,
    pub(crate) pages: *mut *mut CommPage,
    pub(crate) removals: u64,
    pub(crate) machid: u32,
    pub(crate) cpuid: u32,
}

impl Remembered {
    /// No lookup (what a new thread's all-zero storage holds).
    pub(crate) const NONE: Remembered =
        Remembered { vcpu: std::ptr::null(), pages: std::ptr::null_mut(), removals: 0, machid: 0, cpuid: 0 };
}

#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .tbss,\"awT\",@nobits",
    // Global for the crate's other code units, hidden from the library's
    // users.
    ".globl libnvmm_remembered",
    ".hidden libnvmm_remembered",
    ".type libnvmm_remembered,@tls_object",
    ".size libnvmm_remembered,{size}",
    ".p2align 4",
    "libnvmm_remembered:",
    ".zero {size}",
    ".popsection",
    size = const std::mem::size_of::<Remembered>(),
);

/// This thread's record.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn slot() -> *mut Remembered {
    let p: usize;
    // SAFETY: the initial-exec TLS sequence: the thread pointer (`%fs:0`,
    // the TCB's own address by the x86-64 TLS ABI) plus the record's offset
    // from it, which the GOT holds. Reads only; writes a register.
    unsafe {
        std::arch::asm!(
            "mov {p}, qword ptr fs:[0]",
            "add {p}, qword ptr [rip + libnvmm_remembered@GOTTPOFF]",
            p = out(reg) p,
            options(nostack, readonly),
        );
    }
    p as *mut Remembered
}

/// The calling thread's last lookup.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn get() -> Remembered {
    // SAFETY: `slot` is this thread's own record: in its static TLS block,
    // aligned (16 bytes) and sized for a `Remembered`, zero-initialised
    // (`Remembered::NONE`: null pointers and zeros are valid values), and
    // only ever accessed by this thread through `get` and `set`, which hand
    // out copies, never references.
    unsafe { slot().read() }
}

/// Records the calling thread's last lookup.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn set(r: Remembered) {
    // SAFETY: as in `get`.
    unsafe { slot().write(r) }
}

#[cfg(not(target_arch = "x86_64"))]
thread_local! {
    static REMEMBERED: std::cell::Cell<Remembered> = const { std::cell::Cell::new(Remembered::NONE) };
}

/// The calling thread's last lookup.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn get() -> Remembered {
    REMEMBERED.get()
}

/// Records the calling thread's last lookup.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn set(r: Remembered) {
    let _ = REMEMBERED.try_with(|c| c.set(r));
}

#[cfg(test)]
mod tests {
    use super::{Remembered, get, set};

    /// Each thread has its own record, empty at first.
    #[test]
    fn each_thread_has_its_own_record() {
        let mine = Remembered { machid: 7, cpuid: 3, removals: 11, ..Remembered::NONE };
        set(mine);
        let other = std::thread::spawn(|| {
            let fresh = get();
            set(Remembered { machid: 9, ..Remembered::NONE });
            (fresh.vcpu.is_null(), fresh.machid, fresh.cpuid, fresh.removals, get().machid)
        })
        .join()
        .unwrap();
        assert_eq!(other, (true, 0, 0, 0, 9), "a new thread's record starts empty and is its own");
        let now = get();
        assert_eq!((now.machid, now.cpuid, now.removals), (7, 3, 11), "untouched by the other thread");
        set(Remembered::NONE);
    }
}
