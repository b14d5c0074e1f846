//! Guests in real, protected and long mode run and write memory, and
//! enter their kernel from user mode.

mod common;

use common::*;
use nvmm::x86::modes::{CODE64_SELECTOR, USER_CODE64_SELECTOR};
use nvmm::{Cr, Exit, Gpr, Msr, Seg, StateMask};
use nvmm_testkit::host::{SYSCALL_KERNEL_CS, int80_vector, interrupt_gate64, syscall_code_selector};

fn read_u64(g: &Guest, gpa: u64) -> u64 {
    let mut b = [0u8; 8];
    g.machine.read_gpa(gpa, &mut b).unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn real_mode_guest_writes_memory() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[
        0xb8, 0x34, 0x12, // mov ax,0x1234
        0xa3, 0x00, 0x20, // mov ds:0x2000,ax
        0xf4, //             hlt
    ]);
    run_to_halt(&mut g.vcpu);
    assert_eq!(read_u64(&g, 0x2000), 0x1234);
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + 7);
}

#[test]
fn protected_mode_guest_writes_memory() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = protected_mode(&[
        0xb8, 0x78, 0x56, 0x34, 0x12, // mov eax,0x12345678
        0xa3, 0x00, 0x20, 0x00, 0x00, // mov ds:0x2000,eax
        0xf4, //                         hlt
    ]);
    run_to_halt(&mut g.vcpu);
    assert_eq!(read_u64(&g, 0x2000), 0x1234_5678);
    g.vcpu.get_state(StateMask::SEGS | StateMask::CRS).unwrap();
    assert!(g.vcpu.state().segs[Seg::Cs].attrib.def());
    assert_eq!(g.vcpu.state().crs[Cr::Cr0] & 1, 1);
}

#[test]
fn long_mode_guest_writes_memory() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = long_mode(&[
        0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // movabs rax,0x1122334455667788
        0x48, 0x89, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00, //             mov QWORD PTR ds:0x2000,rax
        0xf4, //                                                       hlt
    ]);
    run_to_halt(&mut g.vcpu);
    assert_eq!(read_u64(&g, 0x2000), 0x1122_3344_5566_7788);
    g.vcpu.get_state(StateMask::SEGS | StateMask::MSRS).unwrap();
    assert!(g.vcpu.state().segs[Seg::Cs].attrib.l());
    assert_ne!(g.vcpu.state().msrs[Msr::Efer] & (1 << 10), 0, "EFER.LMA");
}

/// A SYSCALL from CPL 3 (STAR, LSTAR and SFMASK set through the state):
/// the state read at the handler's exit shows the code segment the guest
/// itself reads (the handler OUTs it), RIP past the answered OUT and RCX
/// at the return address. Where the host's SYSCALL loads STAR's selector
/// (the raw KVM probe says so), that is the kernel's code segment at DPL
/// 0; on hosts whose SYSCALL jumps to LSTAR and leaves CS as it was, the
/// user's, as under KVM alone.
#[test]
fn a_system_call_from_user_mode_reads_back_as_the_guest_has_it() {
    nvmm_testkit::kvm_or_skip!();
    let host_switches = syscall_code_selector().expect("probe KVM") == Some(SYSCALL_KERNEL_CS);
    let mut g = user_mode64(&[0x0f, 0x05]); // syscall
    let handler = CODE + 0x100;
    g.machine.write_gpa(handler, &[0x8c, 0xc8, 0xe6, 0x10]).unwrap(); // mov eax, cs ; out 0x10, al
    g.vcpu
        .update(StateMask::MSRS, |s| {
            s.msrs[Msr::Star] = u64::from(CODE64_SELECTOR) << 32;
            s.msrs[Msr::Lstar] = handler;
            s.msrs[Msr::Sfmask] = 0x200;
        })
        .unwrap();
    let guest_cs = match g.vcpu.run().unwrap() {
        Exit::Io(io) if io.port() == 0x10 => io.data()[0],
        other => panic!("expected the handler's OUT, got {other:?}"),
    };
    g.vcpu.get_state(StateMask::GPRS | StateMask::SEGS).unwrap();
    let s = g.vcpu.state();
    assert_eq!(s.segs[Seg::Cs].selector & 0xff, u16::from(guest_cs), "CS as the guest reads it");
    // (Reading the OUT's data answered it: RIP is past it.)
    assert_eq!((s.gprs[Gpr::Rip], s.gprs[Gpr::Rcx]), (handler + 4, CODE + 2), "RIP past the OUT, RCX past the SYSCALL");
    if host_switches {
        assert_eq!((s.segs[Seg::Cs].selector, s.segs[Seg::Cs].attrib.dpl()), (CODE64_SELECTOR, 0));
    } else {
        assert_eq!(s.segs[Seg::Cs].selector, USER_CODE64_SELECTOR, "this host's SYSCALL keeps CS");
    }
}

/// An `int 0x80` from CPL 3 through a DPL-3 gate is delivered as the raw
/// KVM probe's guest sees it (vector 0x80 from the CPU; `#UD` on hosts
/// that raise it there): the handler that runs OUTs its vector, and the
/// state read at that exit shows the kernel's code segment at DPL 0 and
/// RSP within the TSS's kernel stack.
#[test]
fn int_0x80_from_user_mode_is_delivered_as_under_kvm_alone() {
    nvmm_testkit::kvm_or_skip!();
    const IDT: u64 = 0x3000;
    const RSP0: u64 = 0x9000;
    let expected = int80_vector().expect("probe KVM").expect("the probe's guest reaches a handler");
    let mut g = user_mode64(&[0xcd, 0x80]); // int 0x80
    for (i, (vector, dpl)) in [(6u8, 0u8), (13, 0), (0x80, 3)].into_iter().enumerate() {
        let handler = CODE + 0x100 + 8 * i as u64;
        g.machine.write_gpa(handler, &[0xb0, vector, 0xe6, 0x10]).unwrap(); // mov al, vector ; out 0x10, al
        g.machine.write_gpa(IDT + 16 * u64::from(vector), &interrupt_gate64(handler, CODE64_SELECTOR, dpl)).unwrap();
    }
    g.machine.write_gpa(4, &RSP0.to_le_bytes()).unwrap(); // the TSS (at 0) RSP0
    g.vcpu
        .update(StateMask::SEGS, |s| {
            s.segs[Seg::Idt].base = IDT;
            s.segs[Seg::Idt].limit = 0xfff;
        })
        .unwrap();
    let vector = match g.vcpu.run().unwrap() {
        Exit::Io(io) if io.port() == 0x10 => io.data()[0],
        other => panic!("expected a handler's OUT, got {other:?}"),
    };
    assert_eq!(vector, expected, "the vector the handler reports, as under KVM alone");
    g.vcpu.get_state(StateMask::GPRS | StateMask::SEGS).unwrap();
    let s = g.vcpu.state();
    assert_eq!((s.segs[Seg::Cs].selector, s.segs[Seg::Cs].attrib.dpl()), (CODE64_SELECTOR, 0));
    assert!((RSP0 - 64..RSP0).contains(&s.gprs[Gpr::Rsp]), "RSP {:#x} on the kernel stack", s.gprs[Gpr::Rsp]);
}
