//! The run loop's decisions on what this host's KVM never reports, driven
//! directly as another host's KVM would drive them: a code fetch through
//! the MMIO path, an interrupt window at entry with a shadow or a pending
//! event, KVM's own TPR and window exits, a report queued behind itself.
//! The oracle is NVMM's documented behaviour (`libnvmm(3)`, the spec).

use crate::exit::record::ExitRecord;
use crate::vcpu::Windows;
use crate::vcpu::test_guest::{CODE, RAM, guest};
use crate::x86::bits::rflags;
use crate::{Event, Gpr, StateMask};

/// KVM's emulator fetches code outside RAM through its MMIO path: a read
/// of the 15 bytes from RIP, when RIP's page is not RAM, is the fetch
/// (NetBSD's MEMORY exit with `PROT_EXEC`). A read just outside those
/// bytes, a write, or a read at RIP in RAM is a read.
#[test]
fn a_read_at_rip_outside_ram_is_the_fetch() {
    nvmm_testkit::kvm_or_skip!();
    let (_machine, mut vcpu) = guest(&[0xf4], &[], &[]);
    let out = RAM + 0x2000;
    // Stored into KVM (`complete_pending` enters KVM without running the
    // guest), where the run loop reads RIP at an exit.
    vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rip] = out).unwrap();
    vcpu.complete_pending().unwrap();
    for (gpa, fetch) in [(out, true), (out + 14, true), (out + 15, false), (out - 1, false)] {
        assert_eq!(vcpu.is_fetch(gpa), fetch, "{gpa:#x}");
    }
    let read = ExitRecord::Memory { gpa: out + 3, len: 1, write: false };
    assert_eq!(vcpu.keep_inflight(read), ExitRecord::Fetch { gpa: out + 3 });
    let write = ExitRecord::Memory { gpa: out + 3, len: 1, write: true };
    assert_eq!(vcpu.keep_inflight(write), write);
    vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rip] = CODE).unwrap();
    vcpu.complete_pending().unwrap();
    assert!(!vcpu.is_fetch(CODE), "code in RAM is fetched by KVM itself");
}

/// NVMM's interrupt window exit fires as the guest is entered when it can
/// take an interrupt, before any instruction: with IF set and nothing in
/// the way, not with IF clear, an interrupt shadow the program set, or an
/// event KVM holds for delivery.
#[test]
fn the_interrupt_window_at_entry_waits_for_if_the_shadow_and_pending_events() {
    nvmm_testkit::kvm_or_skip!();
    let armed = Windows { int: true, nmi: false };
    let set_if = |on: bool| {
        move |s: &mut crate::State| {
            s.gprs[Gpr::Rflags] = if on { s.gprs[Gpr::Rflags] | rflags::IF } else { s.gprs[Gpr::Rflags] & !rflags::IF }
        }
    };
    let (_machine, mut vcpu) = guest(&[0x90, 0xf4], &[0xf4], &[0x20]);
    vcpu.update(StateMask::GPRS, set_if(true)).unwrap();
    vcpu.commit().unwrap();
    assert_eq!(vcpu.window_at_entry(armed).unwrap(), Some(ExitRecord::IntReady), "open");

    vcpu.update(StateMask::GPRS, set_if(false)).unwrap();
    vcpu.commit().unwrap();
    assert_eq!(vcpu.window_at_entry(armed).unwrap(), None, "IF clear");

    vcpu.update(StateMask::GPRS, set_if(true)).unwrap();
    vcpu.update(StateMask::INTR, |s| s.intr.set_int_shadow(true)).unwrap();
    assert_eq!(vcpu.window_at_entry(armed).unwrap(), None, "a shadow the program set");
    vcpu.update(StateMask::INTR, |s| s.intr.set_int_shadow(false)).unwrap();
    vcpu.commit().unwrap();

    vcpu.inject(Event::interrupt(0x20)).unwrap();
    assert_eq!(vcpu.window_at_entry(armed).unwrap(), None, "an event to inject");
    vcpu.commit().unwrap();
    assert_eq!(vcpu.window_at_entry(armed).unwrap(), None, "an event KVM holds for delivery");
}

/// KVM's own exits as NVMM reports them: a TPR exit only when the program
/// asked for TPR exits, an interrupt window exit only while the window is
/// armed (and it disarms it).
#[test]
fn kvms_tpr_and_window_exits_are_reported_only_when_asked_for() {
    nvmm_testkit::kvm_or_skip!();
    let (_machine, mut vcpu) = guest(&[0xf4], &[], &[]);
    assert_eq!(vcpu.classify(ExitRecord::TprChanged), ExitRecord::None);
    vcpu.conf.tpr_exit = true;
    assert_eq!(vcpu.classify(ExitRecord::TprChanged), ExitRecord::TprChanged);
    assert_eq!(vcpu.classify(ExitRecord::IntReady), ExitRecord::None);
    vcpu.set_int_window(true);
    assert_eq!(vcpu.classify(ExitRecord::IntReady), ExitRecord::IntReady);
    assert!(!vcpu.windows.int, "reported once");
}

/// A report is never queued behind a report of the same kind (KVM's TPR
/// exit that the library reports as the TPR change), while any other
/// exit is kept for the next run.
#[test]
fn a_report_is_not_queued_behind_itself() {
    nvmm_testkit::kvm_or_skip!();
    let (_machine, mut vcpu) = guest(&[0xf4], &[], &[]);
    assert_eq!(vcpu.report_first(ExitRecord::TprChanged, ExitRecord::TprChanged), ExitRecord::TprChanged);
    assert_eq!(vcpu.queued, None);
    assert_eq!(vcpu.report_first(ExitRecord::TprChanged, ExitRecord::Halted), ExitRecord::TprChanged);
    assert_eq!(vcpu.queued, Some(ExitRecord::Halted));
}
