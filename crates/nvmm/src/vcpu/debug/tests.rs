//! What [`Vcpu::debug_trap`] does with the traps hosts whose KVM
//! intercepts `#BP` and the guest's own `#DB` report (`KVM_EXIT_DEBUG`
//! with the vector and DR6). These machines' KVM emulates guest kernel
//! code and delivers those exceptions to the guest itself, so the run loop
//! never sees them here: each test brings a guest to the instruction, lets
//! the run ready the debug settings as it does before entering, hands the
//! trap to the VCPU as such a host reports it, and checks the guest's own
//! handler against the CPU's rules and, for DR6, against the same guest
//! run with KVM delivering the exception itself.

use super::{BP_VECTOR, DB_VECTOR};
use crate::debug::{DebugEvent, GuestDebug, HwBreakpoint, WatchKind};
use crate::exit::record::ExitRecord;
use crate::vcpu::test_guest::{self, CODE, HANDLER, gpr, run_to_halt};
use crate::x86::bits::rflags;
use crate::{Dr, Exit, Gpr, Machine, StateMask, Vcpu};

/// DR6 as a guest left it: B1, B2 and BS from earlier exceptions.
const STALE_DR6: u64 = 0xffff_4ff6;
/// DR6 as KVM reports a single-step trap and an instruction breakpoint on
/// DR0 (the active-low bits set).
const DR6_STEP: u64 = 0xffff_4ff0;
const DR6_B0: u64 = 0xffff_0ff1;
const DATA: u64 = 0x3000;

/// A guest running `code`, with `mov eax, dr6 ; hlt` as its `#DB` and
/// `#BP` handler and DR6 at [`STALE_DR6`].
fn guest(code: &[u8]) -> (Machine, Vcpu) {
    let (machine, mut vcpu) = test_guest::guest(code, &[0x0f, 0x21, 0xf0, 0xf4], &[DB_VECTOR, BP_VECTOR]);
    vcpu.update(StateMask::DRS, |s| s.drs[Dr::Dr6] = STALE_DR6).unwrap();
    (machine, vcpu)
}

/// The run readies the debug settings, then the host reports `vector`
/// at linear `pc` with `dr6`.
fn trap(vcpu: &mut Vcpu, vector: u8, pc: u64, dr6: u64) -> Option<ExitRecord> {
    assert_eq!(vcpu.prepare_debug_run().unwrap(), None);
    vcpu.debug_trap(vector, pc, dr6).unwrap()
}

/// What the guest's handler saw once it halted: DR6 (EAX), the pushed
/// return address, and the pushed flags' TF.
fn handler_saw(machine: &Machine, vcpu: &mut Vcpu) -> (u64, u64, bool) {
    run_to_halt(vcpu);
    assert_eq!(gpr(vcpu, Gpr::Rip), HANDLER + 4, "the guest's handler ran");
    let mut frame = [0u8; 12];
    machine.read_gpa(gpr(vcpu, Gpr::Rsp), &mut frame).unwrap();
    let slot = |i: usize| u64::from(u32::from_le_bytes(frame[4 * i..4 * i + 4].try_into().unwrap()));
    (gpr(vcpu, Gpr::Rax), slot(0), slot(2) & rflags::TF != 0)
}

fn hw_elsewhere() -> GuestDebug {
    let mut d = GuestDebug::default();
    d.hardware[1] = Some(HwBreakpoint::new(CODE + 0x40, WatchKind::Execute, 1).unwrap());
    d
}

/// `hlt ; int3 ; hlt`: a `#BP` the debugger did not plant goes to the
/// guest, which returns past the INT3 (a trap), whether the debugger
/// reports software breakpoints with one elsewhere or reports none with
/// one planted at that very INT3.
#[test]
fn a_guests_own_int3_goes_to_its_handler() {
    nvmm_testkit::kvm_or_skip!();
    let sw = GuestDebug { software_breakpoints: true, ..GuestDebug::default() };
    for (debug, planted) in [(sw, CODE + 0x40), (hw_elsewhere(), CODE + 1)] {
        let (machine, mut vcpu) = guest(&[0xf4, 0xcc, 0xf4]);
        machine.insert_sw_breakpoint(planted).unwrap();
        vcpu.set_guest_debug(&debug).unwrap();
        run_to_halt(&mut vcpu);
        assert_eq!(trap(&mut vcpu, BP_VECTOR, CODE + 1, 0), None, "{debug:?}");
        let (_, ret, _) = handler_saw(&machine, &mut vcpu);
        assert_eq!(ret, CODE + 2, "{debug:?}");
    }
}

/// A `#BP` at one of the machine's breakpoints, with software breakpoints
/// reported, is the debugger's: a breakpoint exit at it, RIP left on it.
#[test]
fn the_debuggers_int3_is_a_breakpoint_exit() {
    nvmm_testkit::kvm_or_skip!();
    let (machine, mut vcpu) = guest(&[0xf4, 0x90, 0xf4]);
    machine.insert_sw_breakpoint(CODE + 1).unwrap();
    vcpu.set_guest_debug(&GuestDebug { software_breakpoints: true, ..GuestDebug::default() }).unwrap();
    run_to_halt(&mut vcpu);
    assert_eq!(trap(&mut vcpu, BP_VECTOR, CODE + 1, 0), Some(ExitRecord::Debug));
    let exit = vcpu.last_debug_exit().expect("a debug exit");
    assert_eq!((exit.event, exit.pc), (DebugEvent::SoftwareBreakpoint, CODE + 1));
    assert_eq!(gpr(&mut vcpu, Gpr::Rip), CODE + 1);
}

/// The guest's own `#DB`s handed back see DR6 as KVM delivers them
/// itself (the oracle: the same guest, no debugger, KVM raising the
/// exception): B0–B3 replaced by the cause's, BS kept. An instruction
/// breakpoint of the guest's DR0 (a fault, on the instruction) while the
/// debugger single-steps, and the guest's TF (a trap, after the
/// instruction, TF in the pushed flags) while the debugger watches with an
/// execute breakpoint elsewhere.
#[test]
fn a_guests_own_db_shows_its_cause_in_dr6_as_kvm_delivers_it() {
    nvmm_testkit::kvm_or_skip!();
    // nop x3 ; hlt ; mov eax, 1 ; hlt, with the guest's DR0 on the MOV.
    let code = [0x90, 0x90, 0x90, 0xf4, 0xb8, 1, 0, 0, 0, 0xf4];
    let with_dr0 = || {
        let (machine, mut vcpu) = guest(&code);
        vcpu.update(StateMask::DRS, |s| {
            s.drs[Dr::Dr0] = CODE + 4;
            s.drs[Dr::Dr7] = 0x401;
        })
        .unwrap();
        (machine, vcpu)
    };
    let (machine, mut vcpu) = with_dr0();
    run_to_halt(&mut vcpu);
    let native = handler_saw(&machine, &mut vcpu);
    assert_eq!((native.1, native.2), (CODE + 4, false));
    assert_ne!(native.0, STALE_DR6, "KVM delivered a new DR6");
    let (machine, mut vcpu) = with_dr0();
    run_to_halt(&mut vcpu);
    vcpu.set_guest_debug(&GuestDebug { single_step: true, ..GuestDebug::default() }).unwrap();
    assert_eq!(trap(&mut vcpu, DB_VECTOR, CODE + 4, DR6_B0), None);
    vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
    assert_eq!(handler_saw(&machine, &mut vcpu), native, "DR0's #DB");

    // pushfd ; or dword [esp], 0x100 ; popfd ; nop ; hlt: the trap comes
    // after the NOP, on the HLT.
    let tf_code = [0x9c, 0x81, 0x0c, 0x24, 0x00, 0x01, 0x00, 0x00, 0x9d, 0x90, 0xf4];
    let (machine, mut vcpu) = guest(&tf_code);
    let native = handler_saw(&machine, &mut vcpu);
    assert_eq!((native.1, native.2), (CODE + 10, true));
    assert_ne!(native.0, STALE_DR6, "KVM delivered a new DR6");
    // The same state at the trap: `hlt ; nop ; hlt` stopped on the NOP,
    // which ran with TF set.
    let (machine, mut vcpu) = guest(&[0xf4, 0x90, 0xf4]);
    vcpu.set_guest_debug(&hw_elsewhere()).unwrap();
    run_to_halt(&mut vcpu);
    vcpu.update(StateMask::GPRS, |s| {
        s.gprs[Gpr::Rip] = CODE + 2;
        s.gprs[Gpr::Rflags] |= rflags::TF;
    })
    .unwrap();
    assert_eq!(trap(&mut vcpu, DB_VECTOR, CODE + 2, DR6_STEP), None);
    assert_eq!(handler_saw(&machine, &mut vcpu), (native.0, CODE + 2, true), "TF's #DB");
}

/// A `#DB` that is no step (ICEBP's, which sets no DR6 cause bit) while
/// the library steps for a watchpoint is the guest's, and reports no
/// watchpoint even though the watched bytes changed meanwhile: only a
/// step compares them.
#[test]
fn a_db_that_is_no_step_is_the_guests_while_the_library_steps() {
    nvmm_testkit::kvm_or_skip!();
    let (machine, mut vcpu) = guest(&[0xf4, 0x90, 0xf4]);
    let mut d = GuestDebug::default();
    d.hardware[0] = Some(HwBreakpoint::new(DATA, WatchKind::Write, 4).unwrap());
    vcpu.set_guest_debug(&d).unwrap();
    run_to_halt(&mut vcpu);
    assert_eq!(vcpu.prepare_debug_run().unwrap(), None);
    assert!(vcpu.debug.internal_step, "the library steps while a watchpoint is set");
    machine.write_gpa(DATA, &[0x55]).unwrap();
    assert_eq!(vcpu.debug_trap(DB_VECTOR, CODE + 1, 0xffff_0ff0).unwrap(), None);
    vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
    let (_, ret, _) = handler_saw(&machine, &mut vcpu);
    assert_eq!(ret, CODE + 1);
}

/// Stepping over the execute breakpoint the VCPU stopped at lifts that
/// breakpoint alone for the step: another execute breakpoint and a data
/// watchpoint on the stepped instruction's own byte stay programmed
/// (hosts whose CPU checks the debug registers report them).
#[test]
fn stepping_over_a_breakpoint_lifts_only_that_breakpoint() {
    nvmm_testkit::kvm_or_skip!();
    let (_machine, mut vcpu) = guest(&[0x90, 0x90, 0x90, 0x90, 0xf4]);
    let at = HwBreakpoint::new(CODE + 1, WatchKind::Execute, 1).unwrap();
    let other = HwBreakpoint::new(CODE + 3, WatchKind::Execute, 1).unwrap();
    let on_its_byte = HwBreakpoint::new(CODE + 1, WatchKind::ReadWrite, 1).unwrap();
    let debug = GuestDebug { hardware: [Some(at), Some(other), Some(on_its_byte), None], ..GuestDebug::default() };
    vcpu.set_guest_debug(&debug).unwrap();
    let exit = vcpu.run().unwrap();
    assert!(matches!(exit, Exit::Debug(d) if d.pc() == CODE + 1), "{exit:?}");
    assert_eq!(vcpu.prepare_debug_run().unwrap(), None);
    let stepping = vcpu.debug.applied;
    assert!(stepping.single_step);
    assert_eq!(stepping.hardware, [None, Some(other), Some(on_its_byte), None]);
    assert_eq!(vcpu.guest_debug(), &debug, "the debugger's settings stay as set");
}
