//! Locating the I/O instruction behind an I/O exit where KVM leaves RIP
//! past an OUT it executed (hosts whose KVM emulates OUT, and string OUT
//! everywhere) and before an instruction it stopped at, with the registers
//! and bytes such a host leaves. This host's KVM intercepts the tested
//! forms before executing them, so each case sets RIP as the other kind of
//! host leaves it and hands the run loop the exit directly. The oracle is
//! where the bytes were placed.

use crate::exit::record::ExitRecord;
use crate::vcpu::io::IoSite;
use crate::vcpu::test_guest::{CODE, guest, to_long_mode};
use crate::{Gpr, Seg, StateMask, Vcpu};

/// `code` at `CODE`, RIP at `CODE + rip_at` and RCX at `rcx`, and an I/O
/// exit to `port` (DX too) of `size` bytes: where the library locates it.
fn locate(code: &[u8], rip_at: u64, rcx: u64, port: u16, size: u8, is_in: bool) -> IoSite {
    let (_machine, mut vcpu) = guest(code, &[], &[]);
    exit_at(&mut vcpu, rip_at, rcx, port, size, is_in)
}

/// An I/O exit on `vcpu` with RIP at `CODE + rip_at` and RCX at `rcx`:
/// where the library locates it.
fn exit_at(vcpu: &mut Vcpu, rip_at: u64, rcx: u64, port: u16, size: u8, is_in: bool) -> IoSite {
    vcpu.inflight = None;
    vcpu.update(StateMask::GPRS, |s| {
        s.gprs[Gpr::Rip] = CODE + rip_at;
        s.gprs[Gpr::Rcx] = rcx;
        s.gprs[Gpr::Rdx] = u64::from(port);
        s.gprs[Gpr::Rsi] = 0x3000;
        s.gprs[Gpr::Rdi] = 0x3000;
    })
    .unwrap();
    // Into KVM without running the guest, as at an exit.
    vcpu.complete_pending().unwrap();
    vcpu.keep_inflight(ExitRecord::Io { port, size, count: 1, is_in });
    vcpu.io_site().unwrap()
}

/// An OUT KVM executed ends at RIP: found backwards, with the prefixes it
/// has and not the bytes before them (`mov al, 0x65` ends with a byte
/// that reads as GS).
#[test]
fn an_out_kvm_executed_ends_at_rip() {
    nvmm_testkit::kvm_or_skip!();
    // mov al, 0x65 ; out dx, al ; nop
    let s = locate(&[0xb0, 0x65, 0xee, 0x90], 3, 0, 0x70, 1, false);
    assert_eq!((s.start, s.npc, s.advanced, s.insn.length), (CODE + 2, CODE + 3, true, 1));
    // mov al, 0x66 ; out 0x80, al ; nop (66 would make it a word OUT)
    let s = locate(&[0xb0, 0x66, 0xe6, 0x80, 0x90], 4, 0, 0x80, 1, false);
    assert_eq!((s.start, s.npc, s.insn.port_immediate), (CODE + 2, CODE + 4, Some(0x80)));
    // out dx, ax (66 EF) ; nop
    let s = locate(&[0x66, 0xef, 0x90], 2, 0, 0x70, 2, false);
    assert_eq!((s.start, s.npc, s.insn.operand_size), (CODE, CODE + 2, 2));
}

/// A REP OUTS whose count reached zero, behind a segment override: KVM
/// executed it, RIP is past it, and its prefixes (the longest run) say
/// the segment and the REP.
#[test]
fn a_finished_rep_outs_ends_at_rip_with_its_prefixes() {
    nvmm_testkit::kvm_or_skip!();
    // nop ; cs rep outsb ; nop
    let s = locate(&[0x90, 0x2e, 0xf3, 0x6e, 0x90], 4, 0, 0x70, 1, false);
    assert_eq!((s.start, s.npc, s.advanced), (CODE + 1, CODE + 4, true));
    assert_eq!((s.insn.length, s.insn.string, s.insn.rep, s.insn.segment), (3, true, true, Some(Seg::Cs)));
    // nop ; outsb (no REP: executed, RIP past it) ; nop
    let s = locate(&[0x90, 0x6e, 0x90], 2, 7, 0x70, 1, false);
    assert_eq!((s.start, s.npc, s.insn.rep), (CODE + 1, CODE + 2, false));
}

/// Where KVM stops before the instruction: an IN (nothing done yet), a
/// REP OUTS with elements left (RCX at its address size not zero: one
/// element done, RIP still on it), a REP INS.
#[test]
fn kvm_stops_on_an_in_and_on_a_rep_outs_with_elements_left() {
    nvmm_testkit::kvm_or_skip!();
    // in al, dx
    let s = locate(&[0xec, 0x90], 0, 0, 0x70, 1, true);
    assert_eq!((s.start, s.npc, s.advanced), (CODE, CODE + 1, false));
    // rep outsb, 5 elements left
    let s = locate(&[0xf3, 0x6e, 0x90], 0, 5, 0x70, 1, false);
    assert_eq!((s.start, s.npc, s.advanced, s.insn.rep), (CODE, CODE + 2, true, true));
    // rep outsb with ECX's low half zero but ECX not: the count is ECX
    // in 32-bit code.
    let s = locate(&[0xf3, 0x6e, 0x90], 0, 0x1_0000, 0x70, 1, false);
    assert_eq!((s.start, s.advanced), (CODE, true));
    // rep insb
    let s = locate(&[0xf3, 0x6c, 0x90], 0, 5, 0x70, 1, true);
    assert_eq!((s.start, s.npc, s.advanced, s.insn.string), (CODE, CODE + 2, false, true));
}

/// Two string OUTs in a row, RIP on the second: the one KVM reported is
/// at RIP while a REP count is left (RCX at the address size not zero),
/// and the one before when the count ran out or there is no REP (KVM
/// executed it; then RIP is past it). The same site met with another
/// count is located again, not taken from the last exit's.
#[test]
fn of_two_string_outs_the_count_tells_which_one_exited() {
    nvmm_testkit::kvm_or_skip!();
    // outsb ; rep outsb, 5 elements left: the REP OUTS at RIP.
    assert_eq!(locate(&[0x6e, 0xf3, 0x6e, 0x90], 1, 5, 0x70, 1, false).start, CODE + 1);
    // outsb ; outsb, RCX 7 (no REP: it counts nothing): the one before.
    assert_eq!(locate(&[0x6e, 0x6e, 0x90], 1, 7, 0x70, 1, false).start, CODE);
    // rep outsb ; rep outsb on one VCPU: with elements left the one at
    // RIP, then, the count run out, the one before.
    let (_machine, mut vcpu) = guest(&[0xf3, 0x6e, 0xf3, 0x6e, 0x90], &[], &[]);
    assert_eq!(exit_at(&mut vcpu, 2, 5, 0x70, 1, false).start, CODE + 2);
    assert_eq!(exit_at(&mut vcpu, 2, 0, 0x70, 1, false).start, CODE);
}

/// An IN stops KVM before it, whatever precedes it: `in al, 0xee` twice
/// (the first ends with a byte that reads as `out dx, al`), RIP on the
/// second, is the second.
#[test]
fn an_in_is_at_rip_even_after_bytes_that_read_as_an_out() {
    nvmm_testkit::kvm_or_skip!();
    let s = locate(&[0xe4, 0xee, 0xe4, 0xee, 0x90], 2, 0, 0xee, 1, true);
    assert_eq!((s.start, s.npc, s.advanced), (CODE + 2, CODE + 4, false));
}

/// An OUTS KVM executed whose prefixes fill the 15 bytes before RIP: the
/// backwards walk stops at the first of them and takes the 15-byte
/// instruction.
#[test]
fn prefixes_up_to_the_length_limit_are_walked_back_to_their_start() {
    nvmm_testkit::kvm_or_skip!();
    let mut code = vec![0x2e; 14];
    code.extend_from_slice(&[0x6e, 0x90]);
    let s = locate(&code, 15, 0, 0x70, 1, false);
    assert_eq!((s.start, s.npc, s.insn.length, s.insn.segment), (CODE, CODE + 15, 15, Some(Seg::Cs)));
}

/// In 64-bit code REX is a prefix too: a finished `rep rex.w outsb` ending
/// at RIP is the three bytes, REP included.
#[test]
fn rex_counts_among_the_prefixes_walked_back_in_64_bit_code() {
    nvmm_testkit::kvm_or_skip!();
    let (machine, mut vcpu) = guest(&[0xf3, 0x48, 0x6e, 0x90], &[], &[]);
    to_long_mode(&machine, &mut vcpu);
    let s = exit_at(&mut vcpu, 3, 0, 0x70, 1, false);
    assert_eq!((s.start, s.npc, s.insn.length, s.insn.rep, s.insn.address_size), (CODE, CODE + 3, 3, true, 8));
}
