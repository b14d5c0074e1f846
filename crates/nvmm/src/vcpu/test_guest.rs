//! A guest for the in-crate tests that drive the run loop's pieces
//! directly, as another host's KVM would report to them: flat 32-bit
//! protected mode, code at [`CODE`], one handler at [`HANDLER`] for the
//! vectors asked for.

use crate::x86::modes;
use crate::{Exit, Gpr, Machine, Nvmm, Prot, Seg, StateMask, Vcpu};

/// Where the guest's code starts.
pub(super) const CODE: u64 = 0x1000;
/// Where its interrupt and exception handler starts.
pub(super) const HANDLER: u64 = 0x1100;
/// The end of its RAM (nothing is mapped above).
pub(super) const RAM: u64 = 0x10_0000;
const GDT: u64 = 0x800;
const IDT: u64 = 0x600;
const STACK: u64 = 0x8000;
const PML4: u64 = 0x10000;

/// A flat 32-bit protected-mode guest running `code` at [`CODE`], with
/// `handler` at [`HANDLER`] behind interrupt gates for `vectors`.
pub(super) fn guest(code: &[u8], handler: &[u8], vectors: &[u8]) -> (Machine, Vcpu) {
    let machine = Nvmm::open().expect("open nvmm").create_machine().expect("create machine");
    machine.map_anonymous(0, RAM, Prot::ALL).unwrap();
    machine.write_gpa(CODE, code).unwrap();
    machine.write_gpa(HANDLER, handler).unwrap();
    machine.write_gpa(GDT, &modes::gdt_bytes()).unwrap();
    for &v in vectors {
        let gate = (HANDLER & 0xffff)
            | (u64::from(modes::CODE32_SELECTOR) << 16)
            | (0x8e00u64 << 32)
            | ((HANDLER >> 16) << 48);
        machine.write_gpa(IDT + 8 * u64::from(v), &gate.to_le_bytes()).unwrap();
    }
    let mut vcpu = machine.create_vcpu(0).expect("create vcpu");
    vcpu.update(StateMask::ALL, |s| {
        modes::protected_mode(s, GDT);
        s.gprs[Gpr::Rip] = CODE;
        s.gprs[Gpr::Rsp] = STACK;
        s.segs[Seg::Idt].base = IDT;
        s.segs[Seg::Idt].limit = 0x7ff;
    })
    .unwrap();
    (machine, vcpu)
}

/// Switches the guest of [`guest`] to 64-bit code, with its RAM identity
/// mapped.
pub(super) fn to_long_mode(machine: &Machine, vcpu: &mut Vcpu) {
    machine.write_gpa(PML4, &modes::identity_page_tables(PML4, 1 << 30)).unwrap();
    vcpu.update(StateMask::ALL, |s| {
        let rip = s.gprs[Gpr::Rip];
        modes::long_mode(s, GDT, PML4);
        s.gprs[Gpr::Rip] = rip;
        s.gprs[Gpr::Rsp] = STACK;
    })
    .unwrap();
}

/// Runs until a HLT exit.
pub(super) fn run_to_halt(vcpu: &mut Vcpu) {
    for _ in 0..100 {
        match vcpu.run().expect("run") {
            Exit::None => continue,
            Exit::Halted => return,
            e => panic!("expected HLT, got {e:?}"),
        }
    }
    panic!("the guest did not halt");
}

/// A general-purpose register, fetched.
pub(super) fn gpr(vcpu: &mut Vcpu, r: Gpr) -> u64 {
    vcpu.get_state(StateMask::GPRS).unwrap();
    vcpu.state().gprs[r]
}
