//! A scripted session with the real lldb (14) against a guest on real KVM.
//! The oracles: lldb's view, the guest CPU, and the VCPU state the library
//! reads back.

mod common;

use common::paged::{RO, SPLIT, machine};
use common::*;
use nvmm::{Gpr, StateMask};
use nvmm_gdb::{Address, End};

/// mov rax, 0x1111 ; mov rbx, 0x2222 ; nop ; mov [0x3000], rax ; nop ;
/// movzx eax, byte [RO] ; out 0x10, al
const PROGRAM: [u8; 34] = [
    0x48, 0xc7, 0xc0, 0x11, 0x11, 0, 0, //          0x1000
    0x48, 0xc7, 0xc3, 0x22, 0x22, 0, 0,    //          0x1007
    0x90, //                                        0x100e
    0x48, 0x89, 0x04, 0x25, 0x00, 0x30, 0, 0,    //    0x100f mov [0x3000], rax
    0x90, //                                        0x1017
    0x0f, 0xb6, 0x04, 0x25, 0x00, 0x20, 0, 0x40, // 0x1018 movzx eax, byte [0x40002000]
    0xe6, 0x10, //                                  0x1020 out 0x10, al
];

const YMM5_HI: u128 = 0x5555_0000_0000_0000_0000_0000_0000_5555;

#[test]
fn an_lldb_session() {
    nvmm_testkit::kvm_or_skip!();
    let (machine, mut vcpus) = machine(&PROGRAM, 2);
    for v in &mut vcpus {
        v.get_state(StateMask::ALL).unwrap();
        v.state_mut().crs[nvmm::Cr::Xcr0] = 7;
        v.state_mut().crs[nvmm::Cr::Cr4] |= 1 << 18;
        v.state_mut().fpu.fx_tw = 1;
        v.state_mut().fpu.fx_87_ac[0][..10].copy_from_slice(&nvmm_testkit::debuggers::x87(1.5));
        v.xsave_mut().set_ymm_hi(5, YMM5_HI.to_le_bytes()).unwrap();
        v.set_state(StateMask::ALL).unwrap();
    }
    machine.write_gpa(common::paged::SPLIT_GPAS[0] + 0xffe, &[0xa0, 0xa1]).unwrap();
    machine.write_gpa(common::paged::SPLIT_GPAS[1], &[0xb0, 0xb1]).unwrap();
    let exits = AllOut { n: 1, count: Default::default() };
    let (out, mut session) = with_stub_exits(&machine, vcpus, "127.0.0.1:0".parse().unwrap(), &exits, |a| {
        let Address::Tcp(t) = a else { unreachable!("a TCP address") };
        nvmm_testkit::debuggers::lldb(
            &[],
            &[
                format!("gdb-remote {}", t.port()),
                "thread list".into(),
                "register read rip ymm5 st0".into(),
                format!("memory read -s1 -c4 -fx {:#x}", SPLIT + 0xffe),
                "breakpoint set -a 0x100e".into(),
                "continue".into(),
                "register read rip rbx".into(),
                "breakpoint delete 1".into(),
                "thread step-inst".into(),
                "register read rip".into(),
                "watchpoint set expression -w write -s 8 -- 0x3000".into(),
                "continue".into(),
                "register read rip".into(),
                "watchpoint delete 1".into(),
                "register write rcx 0x5555".into(),
                format!("memory write {RO:#x} 0x2a"),
                "continue".into(),
            ],
        )
    });
    let has = |s: &str| assert!(out.contains(s), "lldb should show {s:?}:\n{out}");
    has("thread #1: tid = 0x0001");
    has("thread #2: tid = 0x0002");
    has("rip = 0x0000000000001000");
    has("ymm5 = {0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x55 0x55");
    // lldb 14 shows an 80-bit register of a remote target as its bytes:
    // 1.5 is mantissa 0xc000_0000_0000_0000, exponent 0x3fff.
    has("st0 = {0x00 0x00 0x00 0x00 0x00 0x00 0x00 0xc0 0xff 0x3f}");
    has(&format!("{:#x}: 0xa0 0xa1 0xb0 0xb1", SPLIT + 0xffe));
    has("stop reason = breakpoint 1.1");
    has("rip = 0x000000000000100e");
    has("rbx = 0x0000000000002222");
    has("rip = 0x000000000000100f");
    has("stop reason = watchpoint 1");
    has("rip = 0x0000000000001017");
    has("exited with status = 42");
    assert_eq!(session.end, End::Exited(42));
    let v = &mut session.vcpus[0];
    v.get_state(StateMask::GPRS).unwrap();
    assert_eq!(v.state().gprs[Gpr::Rcx], 0x5555, "lldb's register write reached the VCPU");
}
