//! `KVM_RUN` itself, and the exit it reports read from `kvm_run`.
//!
//! The run loop's system call is issued here with the `syscall`
//! instruction, and its exit told apart by comparisons, the exits of every
//! emulator's loop (port I/O, then MMIO) first. kvm-ioctls' `VcpuFd::run`
//! calls the C library's `ioctl` through the PLT and tells exits apart with
//! one `match` over every kind, a jump table: two indirect branches per
//! exit, which the host's branch-predictor barrier at every VM exit makes
//! mispredict (about 15 ns each here: `crates/libnvmm/bench/run.sh cold`).
//! Every other KVM call goes through kvm-ioctls.

use std::os::fd::RawFd;

use kvm_bindings::{
    KVM_EXIT_DEBUG, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_INTR, KVM_EXIT_IO,
    KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT, KVM_EXIT_IRQ_WINDOW_OPEN, KVM_EXIT_MMIO, KVM_EXIT_SET_TPR, KVM_EXIT_SHUTDOWN,
    KVM_EXIT_X86_RDMSR, KVM_EXIT_X86_WRMSR, kvm_run,
};

use crate::exit::record::ExitRecord;

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;

/// Runs `KVM_RUN` on the VCPU descriptor `fd`: `Ok` when it returned 0,
/// else the errno.
#[inline(always)]
pub(super) fn kvm_run_ioctl(fd: RawFd) -> Result<(), i32> {
    let ret: i64;
    // SAFETY: ioctl(fd, KVM_RUN, 0) on a VCPU descriptor the caller owns:
    // the kernel reads and writes only that VCPU's `kvm_run` page, which
    // the caller keeps mapped, and takes no pointer argument. The
    // `syscall` instruction clobbers RCX and R11 (declared) and nothing
    // else; memory is not declared untouched, so reads of `kvm_run` after
    // it are not moved before it.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") libc::SYS_ioctl => ret,
            in("rdi") i64::from(fd),
            in("rsi") KVM_RUN,
            in("rdx") 0u64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 { Err(-ret as i32) } else { Ok(()) }
}

/// What an exit's reason and payload in `kvm_run` say, before the VCPU
/// adds what it keeps (the element size of port I/O, an internal error's
/// payload).
pub(super) enum Decoded {
    Done(ExitRecord),
    /// Port I/O: the element size comes from `kvm_run`.
    Io {
        port: u16,
        is_in: bool,
    },
    /// The payload comes from `kvm_run`.
    InternalError,
}

/// The exit `run` reports after `KVM_RUN` returned 0.
#[inline(always)]
pub(super) fn decode(run: &kvm_run) -> Decoded {
    if run.exit_reason == KVM_EXIT_IO {
        // SAFETY: the exit reason says `io` is the live member of the
        // union (plain integers).
        let io = unsafe { run.__bindgen_anon_1.io };
        match u32::from(io.direction) {
            KVM_EXIT_IO_IN => return Decoded::Io { port: io.port, is_in: true },
            KVM_EXIT_IO_OUT => return Decoded::Io { port: io.port, is_in: false },
            _ => {}
        }
    }
    decode_memory(run)
}

/// [`decode`] for the exits other than port I/O.
#[inline(never)]
fn decode_memory(run: &kvm_run) -> Decoded {
    if run.exit_reason == KVM_EXIT_MMIO {
        // SAFETY: the exit reason says `mmio` is the live member of the
        // union (plain integers and bytes).
        let mmio = unsafe { run.__bindgen_anon_1.mmio };
        let len = mmio.len.min(8) as u8;
        return Decoded::Done(ExitRecord::Memory { gpa: mmio.phys_addr, len, write: mmio.is_write != 0 });
    }
    decode_other(run)
}

/// [`decode`] for the exits other than port I/O and MMIO.
#[inline(never)]
fn decode_other(run: &kvm_run) -> Decoded {
    let reason = run.exit_reason;
    let invalid = |detail: u64| ExitRecord::Invalid { hwcode: reason.into(), detail };
    let r = if reason == KVM_EXIT_INTERNAL_ERROR {
        return Decoded::InternalError;
    } else if reason == KVM_EXIT_X86_RDMSR || reason == KVM_EXIT_X86_WRMSR {
        // SAFETY: the exit reason says `msr` is the live member of the
        // union (plain integers).
        let msr = unsafe { run.__bindgen_anon_1.msr };
        if reason == KVM_EXIT_X86_RDMSR {
            ExitRecord::Rdmsr { msr: msr.index }
        } else {
            ExitRecord::Wrmsr { msr: msr.index, value: msr.data }
        }
    } else if reason == KVM_EXIT_DEBUG {
        // SAFETY: the exit reason says `debug` is the live member of the
        // union (plain integers).
        let d = unsafe { run.__bindgen_anon_1.debug.arch };
        if d.exception == 1 || d.exception == 3 {
            ExitRecord::Trap { vector: d.exception as u8, pc: d.pc, dr6: d.dr6 }
        } else {
            invalid(d.exception.into())
        }
    } else if reason == KVM_EXIT_HLT {
        ExitRecord::Halted
    } else if reason == KVM_EXIT_SHUTDOWN {
        ExitRecord::Shutdown
    } else if reason == KVM_EXIT_IRQ_WINDOW_OPEN {
        ExitRecord::IntReady
    } else if reason == KVM_EXIT_SET_TPR {
        ExitRecord::TprChanged
    } else if reason == KVM_EXIT_INTR {
        ExitRecord::None
    } else if reason == KVM_EXIT_FAIL_ENTRY {
        // SAFETY: the exit reason says `fail_entry` is the live member of
        // the union (plain integers).
        invalid(unsafe { run.__bindgen_anon_1.fail_entry.hardware_entry_failure_reason })
    } else {
        // Port I/O with a direction KVM does not define lands here too.
        invalid(0)
    };
    Decoded::Done(r)
}
