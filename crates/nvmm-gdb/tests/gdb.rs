//! Scripted sessions with the real gdb against guests on real KVM.

mod common;

use common::*;
use nvmm_gdb::Address;

/// mov rax, 0x1111 ; mov rbx, 0x2222 ; nop ; mov [0x3000], rax ; nop ;
/// mov al, 7 ; out 0x10, al
const PROGRAM: [u8; 28] = [
    0x48, 0xc7, 0xc0, 0x11, 0x11, 0, 0, // 0x1000 mov rax, 0x1111
    0x48, 0xc7, 0xc3, 0x22, 0x22, 0, 0,    // 0x1007 mov rbx, 0x2222
    0x90, // 0x100e nop
    0x48, 0x89, 0x04, 0x25, 0x00, 0x30, 0, 0,    // 0x100f mov [0x3000], rax
    0x90, // 0x1017 nop
    0xb0, 0x07, // 0x1018 mov al, 7
    0xe6, 0x10, // 0x101a out 0x10, al
];

#[test]
fn smoke() {
    nvmm_testkit::kvm_or_skip!();
    let (machine, vcpus) = long_mode(&PROGRAM, 1);
    let (out, session) = with_stub(&machine, vcpus, Address::Unix(socket_path("smoke")), |a| {
        gdb(
            a,
            &[
                "info threads",
                "p/x $rip",
                "break *0x100e",
                "continue",
                "p/x $rip",
                "p/x $rax",
                "p/x $rbx",
                "stepi",
                "p/x $rip",
                "watch *(long *)0x3000",
                "continue",
                "p/x $rip",
                "p $ymm0",
                "p $st0",
                "p/x $fs_base",
                "p/x $cr0",
                "continue",
            ],
        )
    });
    println!("{}", text(&out));
    println!("{:?}", session.end);
}
