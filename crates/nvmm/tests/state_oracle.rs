//! NVMM's state components against KVM's own structures: values set
//! through `Vcpu::set_state` are read back from what KVM holds (a
//! snapshot's components are KVM's bytes), decoded here from KVM's
//! documented ABI layouts (`struct kvm_regs`, `kvm_sregs`, `kvm_xsave`,
//! `kvm_debugregs`, MSR indexes), not through the library's conversion
//! tables. A symmetric mix-up in those tables cannot hide from this.

mod common;

use common::*;
use nvmm::x86::xsave::xfeature;
use nvmm::{Component, Cr, Dr, Gpr, Msr, Seg, StateMask};

/// `struct kvm_regs`'s order: rax rbx rcx rdx rsi rdi rsp rbp r8..r15,
/// then rip and rflags.
const KVM_REGS_ORDER: [Gpr; 16] = [
    Gpr::Rax,
    Gpr::Rbx,
    Gpr::Rcx,
    Gpr::Rdx,
    Gpr::Rsi,
    Gpr::Rdi,
    Gpr::Rsp,
    Gpr::Rbp,
    Gpr::R8,
    Gpr::R9,
    Gpr::R10,
    Gpr::R11,
    Gpr::R12,
    Gpr::R13,
    Gpr::R14,
    Gpr::R15,
];

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

#[test]
fn every_component_lands_where_kvm_keeps_it() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = long_mode(&[0xf4]);
    let v = &mut g.vcpu;
    v.get_state(StateMask::ALL).unwrap();
    let s = v.state_mut();
    for (i, r) in KVM_REGS_ORDER.iter().enumerate() {
        s.gprs[*r] = (0x0101_0101_0101_0101 * (i as u64 + 1)) ^ 0xa5;
    }
    s.gprs[Gpr::Rip] = 0x1234;
    s.gprs[Gpr::Rflags] = 0x2 | 0x1 | 0x80 | 0x800;
    s.segs[Seg::Fs].base = 0x7000_0000_1000;
    s.segs[Seg::Gs].base = 0x7000_0000_2000;
    s.segs[Seg::Ds].selector = 0x10;
    s.segs[Seg::Gdt].limit = 0x37;
    s.segs[Seg::Idt].base = 0x9000;
    s.segs[Seg::Idt].limit = 0xfff;
    s.crs[Cr::Cr2] = 0xdead_0000;
    s.crs[Cr::Cr8] = 5;
    s.drs[Dr::Dr0] = 0x1000;
    s.drs[Dr::Dr1] = 0x2000;
    s.drs[Dr::Dr2] = 0x3000;
    s.drs[Dr::Dr3] = 0x4000;
    s.drs[Dr::Dr7] = 0x455;
    s.msrs[Msr::Star] = 0x0023_0010_0000_0000;
    s.msrs[Msr::Lstar] = 0xffff_8000_0000_1000;
    s.msrs[Msr::Cstar] = 0xffff_8000_0000_2000;
    s.msrs[Msr::Sfmask] = 0x4700;
    s.msrs[Msr::KernelGsBase] = 0xffff_8000_0000_3000;
    s.msrs[Msr::SysenterCs] = 0x8;
    s.msrs[Msr::SysenterEsp] = 0xffff_8000_0000_4000;
    s.msrs[Msr::SysenterEip] = 0xffff_8000_0000_5000;
    s.msrs[Msr::Pat] = 0x0007_0406_0007_0406;
    s.fpu.fx_cw = 0x27f;
    s.fpu.fx_sw = 0x3800;
    s.fpu.fx_tw = 0x81;
    s.fpu.fx_opcode = 0x1d9;
    s.fpu.fx_mxcsr = 0x1f80 | 0x8000;
    s.fpu.fx_87_ac[2][..10].copy_from_slice(&[9, 8, 7, 6, 5, 4, 3, 0x82, 0x01, 0x40]);
    s.fpu.fx_xmm[11] = [0x3c; 16];
    s.crs[Cr::Xcr0] = 7;
    s.crs[Cr::Cr4] |= 1 << 18;
    let want = *s;
    v.xsave_mut().set_ymm_hi(13, [0x5e; 16]).unwrap();
    v.set_state(StateMask::ALL).unwrap();
    let snap = v.snapshot().unwrap();

    // struct kvm_regs: 18 u64.
    let regs = snap.component(Component::Regs).unwrap();
    assert_eq!(regs.len(), 18 * 8);
    for (i, r) in KVM_REGS_ORDER.iter().enumerate() {
        assert_eq!(u64_at(regs, 8 * i), want.gprs[*r], "{r:?} in kvm_regs");
    }
    assert_eq!(u64_at(regs, 128), 0x1234, "rip");
    assert_eq!(u64_at(regs, 136), want.gprs[Gpr::Rflags], "rflags");

    // struct kvm_sregs: cs ds es fs gs ss tr ldt (24 bytes each: base u64,
    // limit u32, selector u16, type, present, dpl, db, s, l, g, avl,
    // unusable, padding), gdt idt (base u64, limit u16, 6 bytes), cr0 cr2
    // cr3 cr4 cr8 efer apic_base, interrupt_bitmap[4].
    let sregs = snap.component(Component::Sregs).unwrap();
    let seg_at = |i: usize| (u64_at(sregs, 24 * i), u32_at(sregs, 24 * i + 8), u16_at(sregs, 24 * i + 12));
    for (i, seg) in [Seg::Cs, Seg::Ds, Seg::Es, Seg::Fs, Seg::Gs, Seg::Ss, Seg::Tr, Seg::Ldt].into_iter().enumerate() {
        let (base, limit, sel) = seg_at(i);
        let w = want.segs[seg];
        assert_eq!((base, limit, sel), (w.base, w.limit, w.selector), "{seg:?} in kvm_sregs");
        let attr = &sregs[24 * i + 14..24 * i + 22];
        assert_eq!(attr[0], w.attrib.typ(), "{seg:?} type");
        assert_eq!(attr[2], w.attrib.dpl(), "{seg:?} dpl");
        assert_eq!(attr[5] != 0, w.attrib.l(), "{seg:?} l");
    }
    assert_eq!((u64_at(sregs, 192), u16_at(sregs, 200)), (want.segs[Seg::Gdt].base, 0x37), "gdt");
    assert_eq!((u64_at(sregs, 208), u16_at(sregs, 216)), (0x9000, 0xfff), "idt");
    for (i, cr) in [Cr::Cr0, Cr::Cr2, Cr::Cr3, Cr::Cr4, Cr::Cr8].into_iter().enumerate() {
        assert_eq!(u64_at(sregs, 224 + 8 * i), want.crs[cr], "{cr:?} in kvm_sregs");
    }
    assert_eq!(u64_at(sregs, 264), want.msrs[Msr::Efer], "efer");

    // struct kvm_debugregs: db[4], dr6, dr7, flags, reserved[9].
    let dr = snap.component(Component::DebugRegs).unwrap();
    for (i, d) in [Dr::Dr0, Dr::Dr1, Dr::Dr2, Dr::Dr3].into_iter().enumerate() {
        assert_eq!(u64_at(dr, 8 * i), want.drs[d], "{d:?}");
    }
    assert_eq!(u64_at(dr, 40), 0x455, "dr7");

    // The MSRs by their architectural indexes.
    let msr = |i: u32| snap.msrs().iter().find(|(k, _)| *k == i).map(|(_, v)| *v);
    for (index, m) in [
        (0xc000_0081, Msr::Star),
        (0xc000_0082, Msr::Lstar),
        (0xc000_0083, Msr::Cstar),
        (0xc000_0084, Msr::Sfmask),
        (0xc000_0102, Msr::KernelGsBase),
        (0x174, Msr::SysenterCs),
        (0x175, Msr::SysenterEsp),
        (0x176, Msr::SysenterEip),
        (0x277, Msr::Pat),
    ] {
        assert_eq!(msr(index), Some(want.msrs[m]), "MSR {index:#x} ({m:?})");
    }
    // FS and GS bases travel in kvm_sregs (checked above), not as MSRs.

    // The XSAVE area (SDM vol. 1, 13.4.1 and 10.5.1): FCW at 0, FSW 2,
    // abridged FTW 4, FOP 6, MXCSR 24, ST0.. at 32 (16 bytes each),
    // XMM0.. at 160, YMM upper halves at 576, XCR0 from the XCRs.
    let x = snap.component(Component::Xsave).unwrap();
    assert_eq!(u16_at(x, 0), 0x27f);
    assert_eq!(u16_at(x, 2), 0x3800);
    assert_eq!(x[4], 0x81);
    assert_eq!(u16_at(x, 6), 0x1d9);
    assert_eq!(u32_at(x, 24), 0x1f80 | 0x8000);
    assert_eq!(&x[32 + 2 * 16..32 + 2 * 16 + 10], &[9, 8, 7, 6, 5, 4, 3, 0x82, 0x01, 0x40]);
    assert_eq!(&x[160 + 11 * 16..160 + 12 * 16], &[0x3c; 16]);
    assert_eq!(&x[576 + 13 * 16..576 + 14 * 16], &[0x5e; 16]);
    // struct kvm_xcrs: nr_xcrs u32, flags u32, then {xcr u32, reserved u32,
    // value u64}: XCR0.
    let xcrs = snap.component(Component::Xcrs).unwrap();
    assert!(u32_at(xcrs, 0) >= 1);
    assert_eq!((u32_at(xcrs, 8), u64_at(xcrs, 16)), (0, 7), "XCR0");
}

/// Where each component's bytes are in a saved snapshot file of one
/// VCPU (offset, length), by component.
type Spans = std::collections::HashMap<Component, (usize, usize)>;

/// `g`'s machine saved to a snapshot file, `edit`ed there (KVM's own bytes,
/// by the documented file and ABI layouts), resealed, loaded and forked:
/// the fork's VCPU starts from KVM structures the library did not write.
fn fork_with_kvm_bytes(g: &mut Guest, edit: impl FnOnce(&mut [u8], &Spans)) -> (nvmm::Machine, nvmm::Vcpu) {
    let snap = g.machine.snapshot(&mut [&mut g.vcpu]).unwrap();
    static FILES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("nvmm-state-oracle-{}-{n}.nvmmsnap", std::process::id()));
    snap.save(&path).unwrap();
    let mut f = std::fs::read(&path).unwrap();
    // Header: magic, version, metadata length (u32 at 12), checksum (u64
    // at 16). Metadata at 40: vendor 12, digest 8, 3 counts; VCPU 0: id,
    // model state, component count, then (tag, length, bytes)...
    let mut at = 40 + 12 + 8 + 12 + 4 + 4;
    let ncomp = u32_at(&f, at) as usize;
    at += 4;
    let mut spans = Spans::new();
    for _ in 0..ncomp {
        let (tag, len) = (u32_at(&f, at) as usize, u32_at(&f, at + 4) as usize);
        spans.insert(Component::ALL[tag], (at + 8, len));
        at += 8 + len;
    }
    edit(&mut f, &spans);
    reseal_snapshot_file(&mut f);
    std::fs::write(&path, &f).unwrap();
    let nvmm = nvmm();
    let edited = nvmm.load_snapshot(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let (m, mut v) = nvmm.fork(&edited).unwrap();
    (m, v.remove(0))
}

/// The other way: values written into KVM's own structures (the
/// components of a snapshot file, edited here by the documented file and
/// ABI layouts) read back through NVMM's state.
#[test]
fn kvm_structures_read_back_through_nvmms_state() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = long_mode(&[0xf4]);
    let (_m, mut v) = fork_with_kvm_bytes(&mut g, |f, spans| {
        let (regs, _) = spans[&Component::Regs];
        for i in 0..16 {
            f[regs + 8 * i..regs + 8 * i + 8]
                .copy_from_slice(&(0x1000_0000_0000_0000u64 + i as u64 * 0x111).to_le_bytes());
        }
        let (sregs, _) = spans[&Component::Sregs];
        // FS (index 3): base; GS (4): base, selector; CR2 at 232.
        f[sregs + 72..sregs + 80].copy_from_slice(&0x7100_0000_0000u64.to_le_bytes());
        f[sregs + 96..sregs + 104].copy_from_slice(&0x7200_0000_0000u64.to_le_bytes());
        f[sregs + 96 + 12..sregs + 96 + 14].copy_from_slice(&0x33u16.to_le_bytes());
        f[sregs + 232..sregs + 240].copy_from_slice(&0xcafe_0000u64.to_le_bytes());
        let (dr, _) = spans[&Component::DebugRegs];
        f[dr + 16..dr + 24].copy_from_slice(&0x6000u64.to_le_bytes());
    });
    v.get_state(StateMask::ALL).unwrap();
    let s = *v.state();
    for (i, r) in KVM_REGS_ORDER.iter().enumerate() {
        assert_eq!(s.gprs[*r], 0x1000_0000_0000_0000 + i as u64 * 0x111, "{r:?}");
    }
    assert_eq!(s.segs[Seg::Fs].base, 0x7100_0000_0000);
    assert_eq!((s.segs[Seg::Gs].base, s.segs[Seg::Gs].selector), (0x7200_0000_0000, 0x33));
    assert_eq!(s.crs[Cr::Cr2], 0xcafe_0000);
    assert_eq!(s.drs[Dr::Dr2], 0x6000);
}

/// Setting FPU (NetBSD's FXSAVE image) lands in KVM whatever KVM's XSAVE
/// header said of the x87 and SSE components before: a component KVM held
/// in its initial state (XSTATE_BV bit clear) and one it held in use both
/// take the values set (SDM vol. 1, 13.8: XRSTOR initialises a component
/// whose XSTATE_BV bit is clear, so the header must mark both in use).
#[test]
fn fpu_set_lands_whatever_kvms_xsave_header_said() {
    nvmm_testkit::kvm_or_skip!();
    for before in [0, xfeature::X87, xfeature::SSE, xfeature::X87 | xfeature::SSE] {
        for get_first in [false, true] {
            // fnstcw [0x3000] ; movdqu [0x3010],xmm3 ; hlt: the guest
            // stores what its FPU holds (KVM's emulator runs both on the
            // guest's FPU state).
            let mut g = long_mode(&[
                0xd9, 0x3c, 0x25, 0x00, 0x30, 0x00, 0x00, //
                0xf3, 0x0f, 0x7f, 0x1c, 0x25, 0x10, 0x30, 0x00, 0x00, //
                0xf4,
            ]);
            g.vcpu.update(StateMask::CRS, |s| s.crs[Cr::Cr4] |= 1 << 9).unwrap();
            let (m, mut v) = fork_with_kvm_bytes(&mut g, |f, spans| {
                let (x, _) = spans[&Component::Xsave];
                // XSTATE_BV at 512; a component in use holds values of its
                // own (FCW 0x7f, XMM3 all 0x11) so that it is not initial.
                f[x + 512..x + 520].copy_from_slice(&before.to_le_bytes());
                f[x..x + 2].copy_from_slice(&0x7fu16.to_le_bytes());
                f[x + 160 + 3 * 16..x + 160 + 4 * 16].copy_from_slice(&[0x11; 16]);
            });
            if get_first {
                v.get_state(StateMask::FPU).unwrap();
            }
            let s = v.state_mut();
            s.fpu.fx_cw = 0x27f;
            s.fpu.fx_xmm[3] = [0x5a; 16];
            v.set_state(StateMask::FPU).unwrap();
            let what = format!("XSTATE_BV {before:#x} before, get first: {get_first}");
            // As stored, before the guest runs (this host's KVM loads the
            // FXSAVE part whatever the header says, and after a run the
            // header is the CPU's XINUSE; other kernels follow the header).
            let stored = v.snapshot().unwrap();
            let x = stored.component(Component::Xsave).unwrap();
            assert_eq!(u64_at(x, 512) & 3, 3, "XSTATE_BV as stored; {what}");
            assert!(matches!(v.run().unwrap(), nvmm::Exit::Halted), "{what}");
            let snap = v.snapshot().unwrap();
            let x = snap.component(Component::Xsave).unwrap();
            assert_eq!(u16_at(x, 0), 0x27f, "FCW; {what}");
            assert_eq!(&x[160 + 3 * 16..160 + 4 * 16], &[0x5a; 16], "XMM3; {what}");
            assert_eq!(u64_at(x, 512) & 3, 3, "XSTATE_BV; {what}");
            let mut stored = [0u8; 32];
            m.read_gpa(0x3000, &mut stored).unwrap();
            assert_eq!(u16_at(&stored, 0), 0x27f, "FCW the guest stored; {what}");
            assert_eq!(&stored[16..], &[0x5a; 16], "XMM3 the guest stored; {what}");
        }
    }
}

/// XCR0 as set is what KVM holds, with the bits this host cannot give a
/// guest dropped and x87 always on (NetBSD's `vmx_vcpu_setstate` masks it
/// the same way): read back from `struct kvm_xcrs`.
#[test]
fn xcr0_lands_masked_with_x87_on() {
    nvmm_testkit::kvm_or_skip!();
    let mask = nvmm().capability().arch.xcr0_mask;
    for (set, want) in [
        (xfeature::X87, xfeature::X87),
        (0, xfeature::X87),
        (xfeature::X87 | xfeature::SSE | 1 << 63, xfeature::X87 | xfeature::SSE),
        (xfeature::SSE, xfeature::X87 | xfeature::SSE),
    ] {
        let mut g = long_mode(&[0xf4]);
        g.vcpu.state_mut().crs[Cr::Xcr0] = set;
        g.vcpu.set_state(StateMask::CRS).unwrap();
        let snap = g.vcpu.snapshot().unwrap();
        let xcrs = snap.component(Component::Xcrs).unwrap();
        assert_eq!((u32_at(xcrs, 8), u64_at(xcrs, 16)), (0, want), "XCR0 set to {set:#x} (mask {mask:#x})");
    }
}
