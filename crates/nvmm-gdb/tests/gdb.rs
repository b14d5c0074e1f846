//! Scripted sessions with the real gdb against guests on real KVM. The
//! oracles: gdb's own view, the guest CPU (what it does with what gdb
//! wrote) and the VCPU state the library reads back after the session.

mod common;

use common::paged::{RO, RO_GPA, SPLIT, SPLIT_GPAS};
use common::*;
use nvmm::{Cr, Gpr, Seg, StateMask};
use nvmm_gdb::{Address, End};
use nvmm_testkit::debuggers::{values, x87};

/// The session program (64-bit, CPL 0, at 0x1000).
const PROGRAM: [u8; 37] = [
    0x48, 0xc7, 0xc0, 0x11, 0x11, 0, 0, //       0x1000 mov rax, 0x1111
    0x48, 0xc7, 0xc3, 0x22, 0x22, 0, 0,    //       0x1007 mov rbx, 0x2222
    0xfa, //                                     0x100e cli
    0x90, //                                     0x100f nop
    0xfb, //                                     0x1010 sti
    0x90, //                                     0x1011 nop
    0x48, 0x89, 0x04, 0x25, 0x00, 0x30, 0, 0,    // 0x1012 mov [0x3000], rax
    0x90, //                                     0x101a nop
    0x0f, 0xb6, 0x04, 0x25, 0x00, 0x20, 0, 0x40, // 0x101b movzx eax, byte [0x40002000]
    0xe6, 0x10, //                               0x1023 out 0x10, al
];

/// Values the VCPU holds when gdb attaches.
const RCX: u64 = 0x0c0c_1234_5678_0c0c;
const XMM3: u128 = 0x3333_3333_3333_3333_0000_0000_0000_0003;
const YMM5_HI: u128 = 0x5555_0000_0000_0000_0000_0000_0000_5555;
const ST0: f64 = 1.5;
const FS_BASE: u64 = 0x7000_0000_1234;

fn session_machine() -> (nvmm::Machine, Vec<nvmm::Vcpu>) {
    let (machine, mut vcpus) = paged::machine(&PROGRAM, 1);
    let v = &mut vcpus[0];
    v.get_state(StateMask::ALL).unwrap();
    let s = v.state_mut();
    s.gprs[Gpr::Rcx] = RCX;
    s.segs[Seg::Fs].base = FS_BASE;
    s.fpu.fx_cw = 0x37f;
    s.fpu.fx_tw = 0x01;
    s.fpu.fx_87_ac[0][..10].copy_from_slice(&x87(ST0));
    s.fpu.fx_xmm[3] = XMM3.to_le_bytes();
    s.crs[Cr::Xcr0] = 7;
    s.crs[Cr::Cr4] |= 1 << 18;
    v.xsave_mut().set_ymm_hi(5, YMM5_HI.to_le_bytes()).unwrap();
    v.set_state(StateMask::ALL).unwrap();
    // Distinct bytes on both sides of the virtual page boundary.
    machine.write_gpa(SPLIT_GPAS[0] + 0xff8, &[0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7]).unwrap();
    machine.write_gpa(SPLIT_GPAS[1], &[0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7]).unwrap();
    (machine, vcpus)
}

/// Everything a debugger of a whole machine does in one session: threads,
/// registers of every kind, memory across non-contiguous pages and into a
/// read-only page, a breakpoint, steps across CLI/STI, a watchpoint,
/// writes to registers, monitor commands, and the guest's exit.
#[test]
fn a_whole_session() {
    nvmm_testkit::kvm_or_skip!();
    let (machine, vcpus) = session_machine();
    let across = format!("x/16xb {:#x}", SPLIT + 0xff8);
    let ro_write = format!("set {{unsigned char}}{RO:#x} = 42");
    let gva2gpa = format!("monitor gva2gpa {:#x}", SPLIT + 0x1000);
    let (out, session) = with_stub(&machine, vcpus, Address::Unix(socket_path("session")), |a| {
        gdb(
            a,
            &[
                "info threads",
                "p/x $rip",
                "p/x $rcx",
                "p/x $xmm3.uint128",
                "p/x $ymm5.v2_int128",
                "p $st0",
                "p/x $ftag",
                "p/x $fs_base",
                "p/x $cr4 & 0x40000",
                &across,
                &ro_write,
                &gva2gpa,
                "break *0x100e",
                "continue",
                "p/x $rip",
                "p/x $rbx",
                "delete 1",
                "stepi",
                "p/x $rip",
                "p/x $eflags & 0x200",
                "stepi",
                "stepi",
                "p/x $rip",
                "p/x $eflags & 0x200",
                "stepi",
                "p/x $rip",
                "watch *(long *)0x3000",
                "continue",
                "p/x $rip",
                "delete 2",
                "set $rbx = 0x5555",
                "set $ymm0.v2_int128[1] = 0x77",
                "set $st1 = 2.5",
                "set $ftag = 0xfff0",
                "continue",
            ],
        )
    });
    let vals = values(&out);
    let expected = [
        "0x1000".to_string(),
        format!("{RCX:#x}"),
        format!("{XMM3:#x}"),
        format!("{{0x0, {YMM5_HI:#x}}}"),
        format!("{ST0}"),
        // Full tag word: physical register 0 (ST0, TOP = 0) valid, the
        // rest empty (SDM vol. 1, 8.1.7).
        "0xfffc".into(),
        format!("{FS_BASE:#x}"),
        "0x40000".into(),
        "0x100e".into(),
        "0x2222".into(),
        "0x100f".into(),
        "0x0".into(),
        "0x1011".into(),
        "0x200".into(),
        "0x1012".into(),
        "0x101a".into(),
    ];
    assert_eq!(vals, expected, "{out}");
    assert!(out.contains("VCPU 0, 64-bit mode, CPL 0"), "thread name: {out}");
    assert!(
        out.contains("0xa0\t0xa1\t0xa2\t0xa3\t0xa4\t0xa5\t0xa6\t0xa7")
            && out.contains("0xb0\t0xb1\t0xb2\t0xb3\t0xb4\t0xb5\t0xb6\t0xb7"),
        "memory across the page boundary: {out}"
    );
    assert!(out.contains(&format!("{:#x} -> {:#x}", SPLIT + 0x1000, SPLIT_GPAS[1])), "monitor gva2gpa: {out}");
    assert!(out.contains("Old value = 0") && out.contains("New value = 4369"), "watchpoint: {out}");
    // The guest read the byte gdb wrote into its read-only page.
    assert!(out.contains("exited with code 052"), "{out}");
    let mut session = session;
    assert_eq!(session.end, End::Exited(42));
    let mut b = [0u8];
    machine.read_gpa(RO_GPA, &mut b).unwrap();
    assert_eq!(b[0], 42);
    // Register writes reached the VCPU.
    let v = &mut session.vcpus[0];
    v.get_state(StateMask::ALL).unwrap();
    assert_eq!(v.state().gprs[Gpr::Rbx], 0x5555);
    assert_eq!(u128::from_le_bytes(v.xsave().ymm_hi(0).unwrap()), 0x77);
    assert_eq!(v.state().fpu.fx_87_ac[1][..10], x87(2.5));
    assert_eq!(v.state().fpu.fx_tw, 0x3, "gdb's full tag word 0xfff0 is ST0 and ST1 valid");
    assert_eq!(v.state().fpu.fx_87_ac[0][..10], x87(ST0), "ST0 kept");
}

/// Two VCPUs at one breakpoint: both threads listed, both hits reported
/// (the second is kept while the first is shown), then the guest exits
/// once both are past it.
#[test]
fn two_vcpus_both_hits_reported() {
    nvmm_testkit::kvm_or_skip!();
    // 14 NOPs ; (0x100e) nop ; out 0x10, al ; jmp $
    let mut code = vec![0x90; 15];
    code.extend_from_slice(&[0xe6, 0x10, 0xeb, 0xfe]);
    let (machine, vcpus) = paged::machine(&code, 2);
    let exits = AllOut { n: 2, count: Default::default() };
    let (out, session) = with_stub_exits(&machine, vcpus, Address::Unix(socket_path("two")), &exits, |a| {
        gdb(
            a,
            &[
                "info threads",
                "break *0x100e",
                "continue",
                "p $_thread",
                "continue",
                "p $_thread",
                "delete",
                "continue",
            ],
        )
    });
    assert!(out.contains("VCPU 0, 64-bit mode, CPL 0") && out.contains("VCPU 1, 64-bit mode, CPL 0"), "{out}");
    let mut threads = values(&out);
    threads.sort();
    assert_eq!(threads, vec!["1", "2"], "each VCPU hit the breakpoint once: {out}");
    assert_eq!(session.end, End::Exited(0));
}

/// Detach: breakpoints leave guest memory, debugging is off, and the
/// guest runs on to its end under the VMM alone.
#[test]
fn detach_lets_the_guest_run_on() {
    nvmm_testkit::kvm_or_skip!();
    let (machine, vcpus) = paged::machine(&PROGRAM, 1);
    let (out, mut session) = with_stub(&machine, vcpus, Address::Unix(socket_path("detach")), |a| {
        gdb(a, &["break *0x1012", "hbreak *0x101b", "continue", "p/x $rip", "detach"])
    });
    assert_eq!(values(&out), vec!["0x1012"], "{out}");
    assert_eq!(session.end, End::Detached);
    let mut code = [0u8; 1];
    machine.read_gpa(0x1012, &mut code).unwrap();
    assert_eq!(code[0], 0x48, "the breakpoint's INT3 is gone");
    let v = &mut session.vcpus[0];
    assert!(v.guest_debug().is_off());
    loop {
        match v.run().unwrap() {
            nvmm::Exit::Io(io) => {
                assert_eq!(io.port(), EXIT_PORT);
                break;
            }
            nvmm::Exit::None => {}
            other => panic!("the detached guest should run to its OUT: {other:?}"),
        }
    }
}

/// Kill ends the session as killed, over TCP this time.
#[test]
fn kill_over_tcp() {
    nvmm_testkit::kvm_or_skip!();
    let (machine, vcpus) = paged::machine(&PROGRAM, 1);
    let (out, session) =
        with_stub(&machine, vcpus, "127.0.0.1:0".parse().unwrap(), |a| gdb(a, &["stepi", "p/x $rip", "kill"]));
    assert_eq!(values(&out), vec!["0x1007"], "{out}");
    assert_eq!(session.end, End::Killed);
}
