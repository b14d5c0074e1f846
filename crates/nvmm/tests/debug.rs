//! Guest debugging through the library: single steps, hardware
//! breakpoints and watchpoints, software breakpoints, and the guest's own
//! #BP and #DB still reaching the guest. Oracles: the guest CPU (where it
//! stops, what its handlers record) and the x86 rules for DR6/DR7.

mod common;

use common::*;
use nvmm::{DebugEvent, Exit, GuestDebug, Gpr, HwBreakpoint, StateMask, Vcpu, WatchKind};

/// Runs until the next exit other than NONE; returns the debug exit's
/// event and PC, or panics with what came instead.
fn next_debug(vcpu: &mut Vcpu) -> (DebugEvent, u64) {
    for _ in 0..1000 {
        match vcpu.run().expect("run") {
            Exit::None => continue,
            Exit::Debug(d) => return (d.event(), d.pc()),
            other => panic!("expected a debug exit, got {other:?}"),
        }
    }
    panic!("no debug exit");
}

fn step_debug() -> GuestDebug {
    GuestDebug { single_step: true, ..GuestDebug::default() }
}

/// nop ; nop ; xchg ax,ax (2 bytes) ; nop ; hlt
const NOPS: [u8; 6] = [0x90, 0x90, 0x66, 0x90, 0x90, 0xf4];

fn steps_walk_the_instructions(mut g: Guest) {
    g.vcpu.set_guest_debug(&step_debug()).unwrap();
    for pc in [CODE + 1, CODE + 2, CODE + 4, CODE + 5] {
        assert_eq!(next_debug(&mut g.vcpu), (DebugEvent::SingleStep, pc));
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), pc);
    }
    g.vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
    run_to_halt(&mut g.vcpu);
}

#[test]
fn single_step_in_every_mode() {
    nvmm_testkit::kvm_or_skip!();
    steps_walk_the_instructions(real_mode(&NOPS));
    steps_walk_the_instructions(protected_mode(&NOPS));
    steps_walk_the_instructions(long_mode(&NOPS));
}

#[test]
fn execute_breakpoint_then_continue() {
    nvmm_testkit::kvm_or_skip!();
    for mut g in [real_mode(&NOPS), protected_mode(&NOPS), long_mode(&NOPS)] {
        let mut d = GuestDebug::default();
        d.hardware[2] = Some(HwBreakpoint::new(CODE + 4, WatchKind::Execute, 1).unwrap());
        g.vcpu.set_guest_debug(&d).unwrap();
        assert_eq!(next_debug(&mut g.vcpu), (DebugEvent::HardwareBreakpoint { index: 2 }, CODE + 4));
        run_to_halt(&mut g.vcpu);
    }
}

#[test]
fn software_breakpoint_in_every_mode() {
    nvmm_testkit::kvm_or_skip!();
    for mut g in [real_mode(&NOPS), protected_mode(&NOPS), long_mode(&NOPS)] {
        g.machine.insert_sw_breakpoint(CODE + 2).unwrap();
        let d = GuestDebug { software_breakpoints: true, ..GuestDebug::default() };
        g.vcpu.set_guest_debug(&d).unwrap();
        assert_eq!(next_debug(&mut g.vcpu), (DebugEvent::SoftwareBreakpoint, CODE + 2));
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + 2);
        g.machine.remove_sw_breakpoint(CODE + 2).unwrap();
        run_to_halt(&mut g.vcpu);
    }
}

#[test]
fn write_watchpoint() {
    nvmm_testkit::kvm_or_skip!();
    // mov [rdi], rax ; nop ; hlt
    let mut g = long_mode(&[0x48, 0x89, 0x07, 0x90, 0xf4]);
    g.vcpu
        .update(StateMask::GPRS, |s| {
            s.gprs[Gpr::Rdi] = 0x3000;
            s.gprs[Gpr::Rax] = 0x1234_5678;
        })
        .unwrap();
    let mut d = GuestDebug::default();
    d.hardware[1] = Some(HwBreakpoint::new(0x3000, WatchKind::Write, 8).unwrap());
    g.vcpu.set_guest_debug(&d).unwrap();
    assert_eq!(
        next_debug(&mut g.vcpu),
        (DebugEvent::Watchpoint { index: 1, addr: 0x3000, kind: WatchKind::Write }, CODE + 3)
    );
    run_to_halt(&mut g.vcpu);
}

