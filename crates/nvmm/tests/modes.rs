//! Guests in real, protected and long mode run and write memory.

mod common;

use common::*;
use nvmm::{Cr, Gpr, Msr, Seg, StateMask};

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
