//! VCPU state: the RESET state, every component round-tripping through KVM,
//! the full XSAVE area, and NVMM's cache contract.

mod common;

use common::*;
use nvmm::x86::modes::cr4;
use nvmm::x86::xsave::xfeature;
use nvmm::{Cr, Dr, Gpr, Msr, Prot, Seg, StateMask};

/// A VCPU that executes one HLT at the RESET fetch address.
fn at_reset() -> Guest {
    let machine = nvmm().create_machine().unwrap();
    machine.map_anonymous(0xffff_f000, 4096, Prot::READ | Prot::EXEC).unwrap();
    machine.write_gpa(0xffff_fff0, &[0xf4]).unwrap(); // hlt
    let vcpu = machine.create_vcpu(0).unwrap();
    Guest { machine, vcpu }
}

#[test]
fn reset_state_is_nvmms() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = at_reset();
    run_to_halt(&mut g.vcpu);
    g.vcpu.get_state(StateMask::ALL).unwrap();
    let s = *g.vcpu.state();
    assert_eq!(s.gprs[Gpr::Rip], 0xfff1);
    assert_eq!(s.gprs[Gpr::Rdx], 0x600);
    assert_eq!(s.gprs[Gpr::Rflags], 0x2);
    assert_eq!((s.segs[Seg::Cs].selector, s.segs[Seg::Cs].base, s.segs[Seg::Cs].limit), (0xf000, 0xffff_0000, 0xffff));
    for seg in [Seg::Ds, Seg::Es, Seg::Ss, Seg::Fs, Seg::Gs] {
        let d = s.segs[seg];
        assert_eq!((d.selector, d.base, d.limit, d.attrib.typ(), d.attrib.p()), (0, 0, 0xffff, 3, true), "{seg:?}");
    }
    assert_eq!((s.segs[Seg::Tr].attrib.typ(), s.segs[Seg::Tr].attrib.s()), (3, false));
    assert_eq!((s.segs[Seg::Ldt].attrib.typ(), s.segs[Seg::Ldt].limit), (2, 0xffff));
    assert_eq!(s.segs[Seg::Gdt].limit, 0xffff);
    assert_eq!(s.crs[Cr::Cr0], 0x6000_0010);
    assert_eq!((s.crs[Cr::Cr3], s.crs[Cr::Cr4], s.crs[Cr::Cr8], s.crs[Cr::Xcr0]), (0, 0, 0, 1));
    assert_eq!((s.drs[Dr::Dr6], s.drs[Dr::Dr7]), (0xffff_0ff0, 0x400));
    assert_eq!(s.msrs[Msr::Pat], 0x0007_0406_0007_0406);
    assert_eq!(s.msrs[Msr::Efer], 0);
    assert_eq!((s.fpu.fx_cw, s.fpu.fx_tw, s.fpu.fx_mxcsr), (0x40, 0x55, 0x1f80));
    assert!(!s.intr.evt_pending() && !s.intr.int_shadow());
}

#[test]
fn every_component_round_trips() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[0xf4]); // hlt
    let xcr0_mask = nvmm().capability().arch.xcr0_mask;
    g.vcpu.get_state(StateMask::ALL).unwrap();
    let s = g.vcpu.state_mut();
    for (i, r) in [Gpr::Rax, Gpr::Rcx, Gpr::Rdx, Gpr::Rbx, Gpr::Rbp, Gpr::Rsi, Gpr::Rdi, Gpr::R8, Gpr::R15]
        .into_iter()
        .enumerate()
    {
        s.gprs[r] = 0x0101_0101_0101_0101 * (i as u64 + 1);
    }
    s.gprs[Gpr::Rflags] = 0x2 | 0x1 | 0x40 | 0x800; // CF, ZF, OF
    s.segs[Seg::Fs].selector = 0x1234;
    s.segs[Seg::Fs].base = 0x12340;
    s.segs[Seg::Gs].base = 0x5_6780;
    s.segs[Seg::Gdt].base = 0x7000;
    s.segs[Seg::Gdt].limit = 0x3f;
    s.segs[Seg::Idt].base = 0x8000;
    s.segs[Seg::Idt].limit = 0x3ff;
    s.crs[Cr::Cr2] = 0xdead_b000;
    s.crs[Cr::Cr3] = 0x5000;
    s.crs[Cr::Cr4] = cr4::OSFXSR | cr4::OSXMMEXCPT | cr4::OSXSAVE;
    s.crs[Cr::Cr8] = 7;
    s.crs[Cr::Xcr0] = xcr0_mask & (xfeature::X87 | xfeature::SSE | xfeature::AVX);
    s.drs[Dr::Dr0] = 0x9000;
    s.drs[Dr::Dr3] = 0xa000;
    s.drs[Dr::Dr7] = 0x400 | 0x1;
    s.msrs[Msr::Efer] = 1; // SCE
    s.msrs[Msr::Star] = 0x0023_0010_0000_0000;
    s.msrs[Msr::Lstar] = 0xffff_ffff_8100_0000;
    s.msrs[Msr::Cstar] = 0xffff_ffff_8100_1000;
    s.msrs[Msr::Sfmask] = 0x4_7700;
    s.msrs[Msr::KernelGsBase] = 0xffff_8880_0000_0000;
    s.msrs[Msr::SysenterCs] = 0x10;
    s.msrs[Msr::SysenterEsp] = 0xffff_c900_0000_0000;
    s.msrs[Msr::SysenterEip] = 0xffff_ffff_8100_2000;
    s.msrs[Msr::Pat] = 0x0606_0606_0606_0606;
    s.msrs[Msr::Tsc] = 1 << 40;
    s.fpu.fx_cw = 0x37f;
    s.fpu.fx_mxcsr = 0x1f80 | 0x6000;
    for (i, x) in s.fpu.fx_xmm.iter_mut().enumerate() {
        *x = [i as u8 + 0x10; 16];
    }
    s.fpu.fx_87_ac[0][..10].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f]); // 1.0
    s.fpu.fx_tw = 0x80; // ST0 (physical register 7 after a push) valid
    s.fpu.fx_sw = 7 << 11; // TOP = 7
    let want = *s;
    let has_avx = xcr0_mask & xfeature::AVX != 0;
    if has_avx {
        for i in 0..16 {
            g.vcpu.xsave_mut().set_ymm_hi(i, [0xa0 + i as u8; 16]).unwrap();
        }
    }
    g.vcpu.set_state(StateMask::ALL).unwrap();
    run_to_halt(&mut g.vcpu);
    g.vcpu.get_state(StateMask::ALL).unwrap();
    let got = *g.vcpu.state();
    assert_eq!(got.gprs[Gpr::Rip], CODE + 1);
    for r in [Gpr::Rax, Gpr::Rcx, Gpr::Rdx, Gpr::Rbx, Gpr::Rbp, Gpr::Rsi, Gpr::Rdi, Gpr::R8, Gpr::R15, Gpr::Rflags] {
        assert_eq!(got.gprs[r], want.gprs[r], "{r:?}");
    }
    for seg in [Seg::Fs, Seg::Gs, Seg::Gdt, Seg::Idt] {
        assert_eq!((got.segs[seg].base, got.segs[seg].limit), (want.segs[seg].base, want.segs[seg].limit), "{seg:?}");
    }
    assert_eq!(got.segs[Seg::Fs].selector, 0x1234);
    assert_eq!(got.crs, want.crs);
    assert_eq!(got.drs[Dr::Dr0], want.drs[Dr::Dr0]);
    assert_eq!(got.drs[Dr::Dr3], want.drs[Dr::Dr3]);
    assert_eq!(got.drs[Dr::Dr7], want.drs[Dr::Dr7]);
    for m in Msr::ALL.into_iter().filter(|m| *m != Msr::Tsc) {
        assert_eq!(got.msrs[m], want.msrs[m], "{m:?}");
    }
    let tsc = got.msrs[Msr::Tsc];
    if !(1 << 40..(1 << 40) + (1 << 38)).contains(&tsc) {
        // Hosts without TSC offsetting (guest code reading the host's TSC)
        // ignore TSC writes: then a fresh VCPU reads about the same.
        let mut fresh = real_mode(&[0xf4]);
        run_to_halt(&mut fresh.vcpu);
        fresh.vcpu.get_state(StateMask::MSRS).unwrap();
        let other = fresh.vcpu.state().msrs[Msr::Tsc];
        assert!(other.abs_diff(tsc) < 1 << 38, "TSC {tsc:#x} neither set nor the host's ({other:#x})");
        println!("NOTE every_component_round_trips: this host ignores guest TSC writes");
    }
    assert_eq!((got.fpu.fx_cw, got.fpu.fx_mxcsr, got.fpu.fx_xmm), (0x37f, want.fpu.fx_mxcsr, want.fpu.fx_xmm));
    assert_eq!(
        (got.fpu.fx_sw, got.fpu.fx_tw, got.fpu.fx_87_ac[0][..10].to_vec()),
        (want.fpu.fx_sw, want.fpu.fx_tw, want.fpu.fx_87_ac[0][..10].to_vec())
    );
    if has_avx {
        for i in 0..16 {
            assert_eq!(g.vcpu.xsave().ymm_hi(i).unwrap(), [0xa0 + i as u8; 16], "YMM{i}");
        }
    }
}

#[test]
fn avx_state_is_what_the_guest_sees() {
    nvmm_testkit::kvm_or_skip!();
    if nvmm().capability().arch.xcr0_mask & xfeature::AVX == 0 {
        nvmm_testkit::skip("the host CPU has no AVX, so the guest has no YMM state");
        return;
    }
    // At CPL 3: hosts that emulate guest kernel code cannot emulate AVX.
    let mut g = user_mode64(&[
        0xc5, 0xfe, 0x7f, 0x0c, 0x25, 0x00, 0x20, 0x00, 0x00, // vmovdqu YMMWORD PTR ds:0x2000,ymm1
        0xc5, 0xfe, 0x6f, 0x14, 0x25, 0x00, 0x21, 0x00, 0x00, // vmovdqu ymm2,YMMWORD PTR ds:0x2100
        0xf3, 0x0f, 0x7f, 0x1c, 0x25, 0x00, 0x22, 0x00, 0x00, // movdqu XMMWORD PTR ds:0x2200,xmm3
        0xe6, 0x10, //                                           out 0x10,al
    ]);
    let loaded: Vec<u8> = (0..32).map(|i| 0xc0 + i).collect();
    g.machine.write_gpa(0x2100, &loaded).unwrap();
    g.vcpu
        .update(StateMask::CRS | StateMask::FPU, |s| {
            s.crs[Cr::Cr4] |= cr4::OSXSAVE;
            s.crs[Cr::Xcr0] = xfeature::X87 | xfeature::SSE | xfeature::AVX;
            s.fpu.fx_xmm[1] = [0x11; 16];
            s.fpu.fx_xmm[3] = [0x33; 16];
        })
        .unwrap();
    g.vcpu.xsave_mut().set_ymm_hi(1, [0x99; 16]).unwrap();
    assert_eq!(next_reason(&mut g.vcpu), nvmm::exit::reason::IO);
    let mut ymm1 = [0u8; 32];
    g.machine.read_gpa(0x2000, &mut ymm1).unwrap();
    assert_eq!(&ymm1[..16], &[0x11; 16]);
    assert_eq!(&ymm1[16..], &[0x99; 16]);
    let mut xmm3 = [0u8; 16];
    g.machine.read_gpa(0x2200, &mut xmm3).unwrap();
    assert_eq!(xmm3, [0x33; 16]);
    g.vcpu.get_state(StateMask::FPU).unwrap();
    assert_eq!(&g.vcpu.state().fpu.fx_xmm[2], &loaded[..16]);
    assert_eq!(&g.vcpu.xsave().ymm_hi(2).unwrap(), &loaded[16..]);
}

#[test]
fn get_does_not_overwrite_what_set_marked() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[0xf4]);
    g.vcpu.state_mut().gprs[Gpr::Rax] = 0x1234;
    g.vcpu.set_state(StateMask::GPRS).unwrap();
    g.vcpu.get_state(StateMask::GPRS).unwrap();
    assert_eq!(g.vcpu.state().gprs[Gpr::Rax], 0x1234, "set components are cached");
    run_to_halt(&mut g.vcpu);
    g.vcpu.state_mut().gprs[Gpr::Rax] = 0;
    g.vcpu.get_state(StateMask::GPRS).unwrap();
    assert_eq!(g.vcpu.state().gprs[Gpr::Rax], 0x1234, "a run invalidates the cache; get fetches again");
    g.vcpu.state_mut().gprs[Gpr::Rax] = 0;
    g.vcpu.get_state(StateMask::GPRS).unwrap();
    assert_eq!(g.vcpu.state().gprs[Gpr::Rax], 0, "a cached component is not fetched again");
}

#[test]
fn state_around_exits_costs_no_ioctl() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[
        0xe6, 0x10, // out 0x10,al
        0xeb, 0xfc, // jmp $-2
    ]);
    let mut after_warmup = 0;
    for i in 0..200 {
        match g.vcpu.run().unwrap() {
            nvmm::Exit::Io(_) => {}
            e => panic!("{e:?}"),
        }
        g.vcpu.get_state(StateMask::GPRS | StateMask::SEGS).unwrap();
        g.vcpu.get_state(StateMask::CRS & StateMask::NONE).unwrap();
        let rax = g.vcpu.state().gprs[Gpr::Rax];
        g.vcpu.state_mut().gprs[Gpr::Rax] = rax.wrapping_add(1);
        g.vcpu.set_state(StateMask::GPRS).unwrap();
        if i == 9 {
            after_warmup = g.vcpu.state_ioctls();
        }
    }
    assert_eq!(g.vcpu.state_ioctls(), after_warmup, "GPRS/SEGS around exits come from kvm_run");
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rax) & 0xffff, 200);
    // The count does count: debug registers go to KVM with their own call.
    g.vcpu.set_state(StateMask::DRS).unwrap();
    g.vcpu.run().unwrap();
    assert!(g.vcpu.state_ioctls() > after_warmup, "storing DRS is a system call");
}

#[test]
fn unknown_components_are_refused() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[0xf4]);
    assert_eq!(g.vcpu.get_state_bits(0x80).unwrap_err().errno(), 22);
    assert_eq!(g.vcpu.set_state_bits(0x7f | 0x100).unwrap_err().errno(), 22);
    // The error names the unknown bits only.
    for (bits, unknown) in [(0x80u64, 0x80u64), (0x7f | 0x100, 0x100), (0x41 | 1 << 40, 1 << 40)] {
        let e = g.vcpu.get_state_bits(bits).unwrap_err();
        assert!(matches!(e, nvmm::Error::InvalidStateMask { bits } if bits == unknown), "{bits:#x}: {e}");
    }
    g.vcpu.get_state_bits(0x7f).unwrap();
    g.vcpu.set_state_bits(0).unwrap();
}

#[test]
fn dump_prints_the_state() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = at_reset();
    let d = g.vcpu.dump().unwrap();
    assert!(d.starts_with("+ VCPU id=0\n"), "{d}");
    assert!(d.contains("| -> RIP=0xfff0"), "{d}");
    assert!(d.contains("| -> CS: sel=0xf000 base=0xffff0000, limit=0xffff"), "{d}");
}

/// INTR read alone after a run shows the guest's state then, not the
/// values the program set before it (oracle: the CPU, whose interrupt
/// shadow covers only the one instruction after it is set: two NOPs later,
/// at the OUT, it is gone).
#[test]
fn intr_read_alone_after_a_run_is_current() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[
        0x90, 0x90, // nop; nop
        0xe6, 0x10, // out 0x10, al
        0xf4, // hlt
    ]);
    g.vcpu.update(StateMask::INTR, |s| s.intr.set_int_shadow(true)).unwrap();
    run_to_out(&mut g, 0x10);
    g.vcpu.get_state(StateMask::INTR).unwrap();
    assert!(!g.vcpu.state().intr.int_shadow(), "the shadow set before the run is gone at the OUT");
}

/// Each component read alone after a run holds what the guest wrote
/// before the exit (oracle: the guest's own instructions): RAX, DS, CR3,
/// DR0 and SYSENTER_CS, each fetched by a get of its component only.
#[test]
fn each_component_read_alone_after_a_run_is_the_guests() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[
        0x66, 0xb8, 0x00, 0x50, 0x34, 0x12, // mov eax, 0x12345000
        0x8e, 0xd8, // mov ds, ax
        0x0f, 0x22, 0xd8, // mov cr3, eax
        0x0f, 0x23, 0xc0, // mov dr0, eax
        0x66, 0xb9, 0x74, 0x01, 0x00, 0x00, // mov ecx, 0x174 (SYSENTER_CS)
        0x66, 0x31, 0xd2, // xor edx, edx
        0x0f, 0x30, // wrmsr
        0xe6, 0x10, // out 0x10, al
        0xf4, // hlt
    ]);
    run_to_out(&mut g, 0x10);
    g.vcpu.get_state(StateMask::SEGS).unwrap();
    assert_eq!(g.vcpu.state().segs[Seg::Ds].selector, 0x5000);
    g.vcpu.get_state(StateMask::CRS).unwrap();
    assert_eq!(g.vcpu.state().crs[Cr::Cr3], 0x1234_5000);
    g.vcpu.get_state(StateMask::DRS).unwrap();
    assert_eq!(g.vcpu.state().drs[Dr::Dr0], 0x1234_5000);
    g.vcpu.get_state(StateMask::MSRS).unwrap();
    assert_eq!(g.vcpu.state().msrs[Msr::SysenterCs], 0x1234_5000);
    g.vcpu.get_state(StateMask::GPRS).unwrap();
    assert_eq!(g.vcpu.state().gprs[Gpr::Rax], 0x1234_5000);
}

/// Each component set alone before a run reaches KVM, and read alone
/// after it comes back from KVM (the cache is dropped at the run): RBX,
/// FS's base, CR2, DR1, SYSENTER_ESP and the x87 control word, one run
/// each, none of which the guest (`out 0x10, al; jmp $-2`) touches.
#[test]
fn each_component_set_alone_round_trips_through_a_run() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[0xe6, 0x10, 0xeb, 0xfc]);
    type Field = fn(&mut nvmm::x86::state::State) -> &mut u64;
    let cases: [(StateMask, Field, u64); 5] = [
        (StateMask::GPRS, |s| &mut s.gprs[Gpr::Rbx], 0x1234_5678_9abc_def0),
        (StateMask::SEGS, |s| &mut s.segs[Seg::Fs].base, 0x4_5600),
        (StateMask::CRS, |s| &mut s.crs[Cr::Cr2], 0xdead_b000),
        (StateMask::DRS, |s| &mut s.drs[Dr::Dr1], 0x9000),
        (StateMask::MSRS, |s| &mut s.msrs[Msr::SysenterEsp], 0xffff_c900_0000_0000),
    ];
    for (mask, field, value) in cases {
        g.vcpu.update(mask, |s| *field(s) = value).unwrap();
        run_to_out(&mut g, 0x10);
        g.vcpu.get_state(mask).unwrap();
        assert_eq!(*field(g.vcpu.state_mut()), value, "{mask:?}");
    }
    g.vcpu.update(StateMask::FPU, |s| s.fpu.fx_cw = 0x27f).unwrap();
    run_to_out(&mut g, 0x10);
    g.vcpu.get_state(StateMask::FPU).unwrap();
    assert_eq!(g.vcpu.state().fpu.fx_cw, 0x27f);
}

/// Runs `g` to its next exit, which must be an OUT to `port`.
fn run_to_out(g: &mut Guest, port: u16) {
    match g.vcpu.run().unwrap() {
        nvmm::Exit::Io(io) => assert_eq!(io.port(), port),
        other => panic!("expected the OUT to port {port:#x}, got {other:?}"),
    }
}
