//! Where KVM's instruction emulator gives up, and what the run loop does
//! about it.
//!
//! On hosts where KVM emulates guest CPL 0 code (nested virtualization),
//! its emulator gives up on instructions that need no device at all.
//! NetBSD's NVMM runs that code natively, so the run loop completes what
//! the emulator implements. Each instruction below runs at CPL 0 twice,
//! with the completion off (KVM's verdict) and on (ours), and where we
//! completed it, the result (registers, FPU, vector registers, memory)
//! must equal the CPU's own, run natively at CPL 3 from the same state.
//! The test prints one JSON line per instruction: the measured list of
//! what KVM gives up on here and whether we complete it.

mod common;

use common::*;
use nvmm::x86::modes::cr4;
use nvmm::x86::xsave::xfeature;
use nvmm::{Cr, Exit, Gpr, StateMask};

const DATA: u64 = 0x2_0000;
/// Two pages: the cases that cross a page boundary end in the second.
const DATA_LEN: usize = 8192;

/// How a run ended.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// The instruction executed and the OUT after it exited.
    Done,
    /// An emulation failure reached the program.
    Failure,
    /// Anything else (a triple fault after an exception, say).
    Other(String),
}

/// What the guest state and memory became.
#[derive(Debug, PartialEq)]
struct Snapshot {
    gprs: [u64; 16],
    flags: u64,
    x87: (u16, u16, u8),
    mxcsr: u32,
    xmm: [[u8; 16]; 16],
    ymm_hi: Vec<[u8; 16]>,
    memory: Vec<u8>,
}

/// Who finishes what KVM gives up on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum How {
    /// Nobody: the emulation failure reaches the program (KVM's verdict).
    Kvm,
    /// The run loop's completion.
    RunLoop,
    /// The program, through `assist_mem` (the completion off).
    Assist,
}

/// Where the data's second page is: right after the first (the identity
/// map), or at a distant frame (4 KiB page tables map it there), so that
/// an access across the boundary is two pieces of guest memory.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Frames {
    Adjacent,
    Apart,
}

/// The distant frame of [`Frames::Apart`].
const APART: u64 = 0x30_0000;

/// The guest-physical address of the data's byte `off`.
fn data_gpa(frames: Frames, off: usize) -> u64 {
    match frames {
        Frames::Apart if off >= 4096 => APART + (off - 4096) as u64,
        _ => DATA + off as u64,
    }
}

/// Page tables for [`Frames::Apart`]: the low 2 MiB identity mapped in
/// 4 KiB user pages, but the data's second page at [`APART`].
fn tables_apart(g: &mut Guest) -> u64 {
    let mut t = nvmm::x86::paging::PageTables::new(nvmm::x86::PagingMode::Level4, 0x20_0000);
    let flags = nvmm::x86::bits::pte::RW | nvmm::x86::bits::pte::US;
    for page in (0..2 << 20).step_by(4096) {
        let gpa = if page == DATA + 4096 { APART } else { page };
        t.map(page, gpa, 4096, flags).unwrap();
    }
    for (gpa, page) in t.pages() {
        g.machine.write_gpa(gpa, page).unwrap();
    }
    t.cr3()
}

/// Runs `insn` followed by `out 0x10, al` from a fixed state, at CPL 3
/// (`user`) or CPL 0, finished by `how` where KVM gives up, with the
/// data's pages laid out as `frames` says.
fn run(insn: &[u8], user: bool, how: How, frames: Frames) -> (Verdict, Option<Snapshot>) {
    let mut code = insn.to_vec();
    code.extend_from_slice(&[0xe6, 0x10]);
    let mut g = if user { user_mode64(&code) } else { long_mode(&code) };
    g.vcpu.set_complete_emulation_failures(how == How::RunLoop);
    let cr3 = (frames == Frames::Apart).then(|| tables_apart(&mut g));
    let avx = nvmm().capability().arch.xcr0_mask & xfeature::AVX != 0;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut data: Vec<u8> = (0..DATA_LEN).map(|_| rng.next() as u8).collect();
    // A valid MXCSR at RSI, for LDMXCSR.
    data[128..132].copy_from_slice(&0x1fa0u32.to_le_bytes());
    g.machine.write_gpa(DATA, &data[..4096]).unwrap();
    g.machine.write_gpa(data_gpa(frames, 4096), &data[4096..]).unwrap();
    g.vcpu.get_state(StateMask::ALL).unwrap();
    {
        let s = g.vcpu.state_mut();
        if let Some(cr3) = cr3 {
            s.crs[Cr::Cr3] = cr3;
        }
        s.crs[Cr::Cr4] |= cr4::OSFXSR | cr4::OSXMMEXCPT | cr4::OSXSAVE;
        s.crs[Cr::Xcr0] = if avx { 7 } else { 3 };
        for r in [Gpr::Rax, Gpr::Rcx, Gpr::Rdx, Gpr::R8, Gpr::R9, Gpr::R10] {
            s.gprs[r] = rng.next();
        }
        // XSAVE everything; XGETBV's XCR0.
        s.gprs[Gpr::Rax] = 7;
        s.gprs[Gpr::Rdx] = 0;
        s.gprs[Gpr::Rcx] = 0;
        s.gprs[Gpr::Rbx] = DATA + 64;
        s.gprs[Gpr::Rsi] = DATA + 128;
        s.gprs[Gpr::Rdi] = DATA + 256;
        s.fpu.fx_cw = 0x27f;
        s.fpu.fx_mxcsr = 0x1f80;
        for x in s.fpu.fx_xmm.iter_mut() {
            *x = std::array::from_fn(|_| rng.next() as u8);
        }
    }
    if avx {
        let his: Vec<[u8; 16]> = (0..16).map(|_| std::array::from_fn(|_| rng.next() as u8)).collect();
        for (i, h) in his.into_iter().enumerate() {
            g.vcpu.xsave_mut().set_ymm_hi(i, h).unwrap();
        }
    }
    g.vcpu.set_state(StateMask::ALL).unwrap();
    let mut verdict = Verdict::Other("no exit".into());
    for _ in 0..10 {
        match g.vcpu.run().unwrap() {
            Exit::None => continue,
            Exit::Io(io) if io.port() == 0x10 => verdict = Verdict::Done,
            Exit::EmulationFailure(_) if how == How::Assist => {
                g.vcpu.assist_mem(|r| panic!("no device here: {:#x}", r.gpa)).unwrap();
                continue;
            }
            Exit::EmulationFailure(_) => verdict = Verdict::Failure,
            other => verdict = Verdict::Other(format!("{other:?}")),
        }
        break;
    }
    if verdict != Verdict::Done {
        return (verdict, None);
    }
    g.vcpu.get_state(StateMask::ALL).unwrap();
    let s = *g.vcpu.state();
    let mut memory = vec![0u8; DATA_LEN];
    g.machine.read_gpa(DATA, &mut memory[..4096]).unwrap();
    g.machine.read_gpa(data_gpa(frames, 4096), &mut memory[4096..]).unwrap();
    let ymm_hi = (0..16).map(|i| g.vcpu.xsave().ymm_hi(i).unwrap()).collect();
    let snap = Snapshot {
        gprs: s.gprs.0[..16].try_into().unwrap(),
        flags: s.gprs[Gpr::Rflags] & 0x8d5,
        x87: (s.fpu.fx_cw, s.fpu.fx_sw, s.fpu.fx_tw),
        mxcsr: s.fpu.fx_mxcsr,
        xmm: s.fpu.fx_xmm,
        ymm_hi,
        memory,
    };
    (Verdict::Done, Some(snap))
}

/// The instructions early boot code of kernels and firmware runs, with
/// whether the emulator implements them.
const CASES: &[(&str, &[u8], bool)] = &[
    ("fninit", &[0xdb, 0xe3], true),
    ("fnclex", &[0xdb, 0xe2], true),
    ("fwait", &[0x9b], true),
    ("fnstcw [rbx]", &[0xd9, 0x3b], true),
    ("fldcw [rbx]", &[0xd9, 0x2b], true),
    ("fnstsw [rbx]", &[0xdd, 0x3b], true),
    ("fnstsw ax", &[0xdf, 0xe0], true),
    ("fld1", &[0xd9, 0xe8], false),
    ("fstp st0", &[0xdd, 0xd8], false),
    ("fnsave [rbx]", &[0xdd, 0x33], true),
    ("frstor [rbx]", &[0xdd, 0x23], true),
    ("fnstenv [rbx]", &[0xd9, 0x33], true),
    ("fldenv [rbx]", &[0xd9, 0x23], true),
    ("fld qword [rbx]", &[0xdd, 0x03], true),
    ("fstp qword [rsi]", &[0xdd, 0x1e], true),
    ("movaps xmm0, xmm1", &[0x0f, 0x28, 0xc1], true),
    ("movups xmm9, xmm2", &[0x44, 0x0f, 0x10, 0xca], true),
    ("movdqa xmm0, xmm1", &[0x66, 0x0f, 0x6f, 0xc1], true),
    ("movdqu xmm0, xmm1", &[0xf3, 0x0f, 0x6f, 0xc1], true),
    ("movaps [rbx], xmm0", &[0x0f, 0x29, 0x03], true),
    ("movdqu xmm0, [rbx]", &[0xf3, 0x0f, 0x6f, 0x03], true),
    ("movq xmm0, rax", &[0x66, 0x48, 0x0f, 0x6e, 0xc0], true),
    ("movd eax, xmm0", &[0x66, 0x0f, 0x7e, 0xc0], true),
    ("movq xmm1, xmm2", &[0xf3, 0x0f, 0x7e, 0xca], true),
    ("pxor xmm0, xmm0", &[0x66, 0x0f, 0xef, 0xc0], true),
    ("xorps xmm3, xmm5", &[0x0f, 0x57, 0xdd], true),
    ("pxor xmm2, [rbx]", &[0x66, 0x0f, 0xef, 0x13], true),
    ("vmovdqa ymm0, ymm1", &[0xc5, 0xfd, 0x6f, 0xc1], true),
    ("vmovdqu ymm0, [rbx]", &[0xc5, 0xfe, 0x6f, 0x03], true),
    ("vmovdqu [rsi], ymm2", &[0xc5, 0xfe, 0x7f, 0x16], true),
    ("vpxor xmm0, xmm0, xmm0", &[0xc5, 0xf9, 0xef, 0xc0], true),
    ("vxorps ymm1, ymm2, ymm3", &[0xc5, 0xec, 0x57, 0xcb], true),
    ("vzeroupper", &[0xc5, 0xf8, 0x77], true),
    ("vzeroall", &[0xc5, 0xfc, 0x77], true),
    ("fxsave [rbx]", &[0x0f, 0xae, 0x03], false),
    ("fxrstor [rbx]", &[0x0f, 0xae, 0x0b], false),
    ("xsave [rbx]", &[0x0f, 0xae, 0x23], true),
    ("xsave64 [rbx]", &[0x48, 0x0f, 0xae, 0x23], true),
    ("xsaveopt [rbx]", &[0x0f, 0xae, 0x33], true),
    ("xsavec [rbx]", &[0x0f, 0xc7, 0x23], true),
    ("xgetbv", &[0x0f, 0x01, 0xd0], true),
    ("ldmxcsr [rsi]", &[0x0f, 0xae, 0x16], true),
    ("stmxcsr [rbx]", &[0x0f, 0xae, 0x1b], true),
    ("vstmxcsr [rbx]", &[0xc5, 0xf8, 0xae, 0x1b], true),
    ("lfence", &[0x0f, 0xae, 0xe8], true),
    ("pause", &[0xf3, 0x90], true),
    ("int3", &[0xcc], true),
    ("cmpxchg16b [rbx]", &[0x48, 0x0f, 0xc7, 0x0b], true),
    // Accesses that cross a page boundary (RBX + 0xfb8 is 8 bytes before
    // it, + 0xf80 is 64): the completion reads and writes each page's part.
    ("movdqu xmm0, [rbx+0xfb8]", &[0xf3, 0x0f, 0x6f, 0x83, 0xb8, 0x0f, 0x00, 0x00], true),
    ("movdqu [rbx+0xfb8], xmm1", &[0xf3, 0x0f, 0x7f, 0x8b, 0xb8, 0x0f, 0x00, 0x00], true),
    ("vmovdqu ymm0, [rbx+0xfb0]", &[0xc5, 0xfe, 0x6f, 0x83, 0xb0, 0x0f, 0x00, 0x00], true),
    ("fxsave [rbx+0xf80]", &[0x0f, 0xae, 0x83, 0x80, 0x0f, 0x00, 0x00], false),
    ("vmovdqu [rbx+0xfb0], ymm1", &[0xc5, 0xfe, 0x7f, 0x8b, 0xb0, 0x0f, 0x00, 0x00], true),
    ("xsave [rbx+0xf80]", &[0x0f, 0xae, 0xa3, 0x80, 0x0f, 0x00, 0x00], true),
    ("popcnt eax, ebx", &[0xf3, 0x0f, 0xb8, 0xc3], true),
    ("popcnt rax, [rbx]", &[0xf3, 0x48, 0x0f, 0xb8, 0x03], true),
    ("rdtscp", &[0x0f, 0x01, 0xf9], false),
    ("crc32 eax, bl", &[0xf2, 0x0f, 0x38, 0xf0, 0xc3], true),
    ("crc32 rax, qword [rbx]", &[0xf2, 0x48, 0x0f, 0x38, 0xf1, 0x03], true),
    // LSL and LAR on the test GDT's user data (0x2b) and code (0x33)
    // segments, a kernel segment with RPL 3 (0x13), a selector past the
    // GDT's limit, the null selector and a selector from memory (a Linux
    // kernel's NMI entry reads its CPU number with LSL).
    ("mov ebx,0x2b; lsl eax,ebx", &[0xbb, 0x2b, 0, 0, 0, 0x0f, 0x03, 0xc3], true),
    ("mov ebx,0x2b; lsl ax,bx", &[0xbb, 0x2b, 0, 0, 0, 0x66, 0x0f, 0x03, 0xc3], true),
    ("mov ebx,0x33; lsl rax,rbx", &[0xbb, 0x33, 0, 0, 0, 0x48, 0x0f, 0x03, 0xc3], true),
    ("mov ebx,0x33; lar rcx,rbx", &[0xbb, 0x33, 0, 0, 0, 0x48, 0x0f, 0x02, 0xcb], true),
    ("mov ebx,0x2b; lar cx,bx", &[0xbb, 0x2b, 0, 0, 0, 0x66, 0x0f, 0x02, 0xcb], true),
    ("mov ebx,0x13; lar eax,ebx", &[0xbb, 0x13, 0, 0, 0, 0x0f, 0x02, 0xc3], true),
    ("mov ebx,0x3b; lsl eax,ebx", &[0xbb, 0x3b, 0, 0, 0, 0x0f, 0x03, 0xc3], true),
    ("xor ebx,ebx; lsl eax,ebx", &[0x31, 0xdb, 0x0f, 0x03, 0xc3], true),
    ("lsl eax, word [rbx]", &[0x0f, 0x03, 0x03], true),
    // Vector arithmetic (a Linux kernel's SIMD BLAKE2s runs these).
    ("paddd xmm0, xmm1", &[0x66, 0x0f, 0xfe, 0xc1], false),
    ("pshufb xmm3, xmm13", &[0x66, 0x41, 0x0f, 0x38, 0x00, 0xdd], false),
    ("vpaddq xmm4, xmm4, xmm5", &[0xc5, 0xd9, 0xd4, 0xe5], false),
];

/// XGETBV 0 returns XCR0, the guest's (`run` sets it). A host that runs
/// guest user code with its own XCR0 (this kind of machine does) answers
/// the host's: the CPU's result is then replaced by the SDM's, said by
/// name.
fn hold_xgetbv_to_the_sdm(native: &mut Option<Snapshot>) {
    let xcr0: u64 = if nvmm().capability().arch.xcr0_mask & xfeature::AVX != 0 { 7 } else { 3 };
    let Some(n) = native.as_mut() else { return };
    let cpu = (n.gprs[0] & 0xffff_ffff) | n.gprs[2] << 32;
    if cpu != xcr0 {
        println!("xgetbv: the CPU runs CPL 3 with XCR0 {cpu:#x}, not the guest's {xcr0:#x}: held to the SDM");
        (n.gprs[0], n.gprs[2]) = (xcr0 & 0xffff_ffff, xcr0 >> 32);
    }
}

#[test]
fn the_run_loop_completes_what_kvm_gives_up_on_as_the_cpu_would() {
    nvmm_testkit::kvm_or_skip!();
    let (mut gaps, mut completed) = (0, 0);
    for &(name, insn, implemented) in CASES {
        let (kvm, _) = run(insn, false, How::Kvm, Frames::Adjacent);
        let (ours, snap) = run(insn, false, How::RunLoop, Frames::Adjacent);
        let (native, mut native_snap) = run(insn, true, How::RunLoop, Frames::Adjacent);
        if name == "xgetbv" {
            hold_xgetbv_to_the_sdm(&mut native_snap);
        }
        let gives_up = kvm == Verdict::Failure;
        println!(
            "{{\"instruction\":\"{name}\",\"kvm\":\"{}\",\"nvmm\":\"{}\"}}",
            if gives_up { "gives up" } else { "emulates" },
            match &ours {
                Verdict::Done if gives_up => "completes",
                Verdict::Done => "kvm completes",
                Verdict::Failure => "exit with the bytes",
                Verdict::Other(_) => "the exception, as the CPU",
            }
        );
        if !gives_up {
            continue;
        }
        gaps += 1;
        if implemented {
            // Completed as the CPU executes it (an exception included).
            assert_eq!(ours, native, "{name}: outcome");
            assert_eq!(snap, native_snap, "{name}: registers and memory");
            completed += 1;
        } else {
            assert_eq!(ours, Verdict::Failure, "{name}: an instruction the emulator lacks stays an exit");
        }
    }
    println!("{{\"kvm_gives_up\":{gaps},\"completed\":{completed}}}");
}

/// The cases that cross a page boundary, with the data's second page
/// mapped at a distant frame: the run loop's completion and `assist_mem`
/// split each access into two pieces of guest memory, and the result is
/// the CPU's, which walks the same page tables natively at CPL 3.
#[test]
fn accesses_across_pages_mapped_apart_are_completed_as_the_cpu_would() {
    nvmm_testkit::kvm_or_skip!();
    let mut compared = 0;
    for &(name, insn, _) in CASES.iter().filter(|c| c.0.contains("+0xf")) {
        if run(insn, false, How::Kvm, Frames::Apart).0 != Verdict::Failure {
            continue;
        }
        let (native, native_snap) = run(insn, true, How::RunLoop, Frames::Apart);
        assert_eq!(native, Verdict::Done, "{name}: the CPU runs it");
        for how in [How::RunLoop, How::Assist] {
            let (ours, snap) = run(insn, false, how, Frames::Apart);
            assert_eq!(ours, native, "{name} by {how:?}: outcome");
            assert_eq!(snap, native_snap, "{name} by {how:?}: registers and memory");
        }
        compared += 1;
    }
    if compared == 0 {
        nvmm_testkit::skip("KVM completes every page-crossing case itself here: nothing of ours to compare");
    }
    println!("{{\"page_crossing_cases_compared\":{compared}}}");
}

/// Instructions the run loop completes, on guest memory the mapping does
/// not let the guest access that way (a store to a read-only mapping, a
/// load from a mapping with no access): the completion leaves them to the
/// program, which gets the exit with nothing done; the read-only memory
/// keeps its bytes, as for the guest's own MOV
/// (`exits::read_only_and_inaccessible_mappings_exit`).
#[test]
fn completion_leaves_accesses_the_mapping_forbids_to_the_program() {
    nvmm_testkit::kvm_or_skip!();
    const ROM: u64 = 0x50_0000;
    const HIDDEN: u64 = 0x50_1000;
    // x87 loads and stores, which KVM's emulator gives up on here.
    let cases: [(&str, [u8; 2], u64, nvmm::Prot); 2] = [
        ("fstp qword [rbx]", [0xdd, 0x1b], ROM, nvmm::Prot::READ),
        ("fld qword [rbx]", [0xdd, 0x03], HIDDEN, nvmm::Prot::NONE),
    ];
    for (name, insn, at, prot) in cases {
        let mut code = insn.to_vec();
        code.extend_from_slice(&[0xe6, 0x10]);
        let mut g = long_mode(&code);
        g.machine.map_anonymous(at, 0x1000, prot).unwrap();
        if prot == nvmm::Prot::READ {
            g.machine.write_gpa(at, &[0xa5; 16]).unwrap();
        }
        g.vcpu
            .update(StateMask::GPRS | StateMask::CRS | StateMask::FPU, |s| {
                s.crs[Cr::Cr4] |= cr4::OSFXSR;
                s.gprs[Gpr::Rbx] = at;
                s.fpu.fx_cw = 0x37f;
            })
            .unwrap();
        g.vcpu.get_state(StateMask::FPU).unwrap();
        let x87 = (g.vcpu.state().fpu.fx_sw, g.vcpu.state().fpu.fx_tw);
        let exit = g.vcpu.run().unwrap();
        assert!(matches!(exit, Exit::EmulationFailure(_) | Exit::Memory(_)), "{name}: {exit:?}");
        g.vcpu.get_state(StateMask::GPRS | StateMask::FPU).unwrap();
        assert_eq!(g.vcpu.state().gprs[Gpr::Rip], CODE, "{name}: RIP on the instruction");
        let fpu = g.vcpu.state().fpu;
        assert_eq!((fpu.fx_sw, fpu.fx_tw), x87, "{name}: nothing pushed or popped");
        if prot == nvmm::Prot::READ {
            let mut back = [0u8; 16];
            g.machine.read_gpa(at, &mut back).unwrap();
            assert_eq!(back, [0xa5; 16], "{name}: the read-only memory kept its bytes");
        }
    }
}

#[test]
fn clac_stac_and_verw_at_cpl0_do_what_the_sdm_says() {
    nvmm_testkit::kvm_or_skip!();
    // stac ; pushf ; pop rbx ; clac ; pushf ; pop rcx ; verw [rsi] ; pushf ;
    // pop rdx ; verw [rdi] ; pushf ; pop r8 ; out 0x10, al
    let code = [
        0x0f, 0x01, 0xcb, 0x9c, 0x5b, 0x0f, 0x01, 0xca, 0x9c, 0x59, 0x0f, 0x00, 0x2e, 0x9c, 0x5a, 0x0f, 0x00, 0x2f,
        0x9c, 0x41, 0x58, 0xe6, 0x10,
    ];
    let mut g = long_mode(&code);
    g.machine.write_gpa(DATA, &nvmm::x86::modes::DATA_SELECTOR.to_le_bytes()).unwrap();
    g.machine.write_gpa(DATA + 2, &nvmm::x86::modes::CODE64_SELECTOR.to_le_bytes()).unwrap();
    g.vcpu
        .update(StateMask::GPRS, |s| {
            s.gprs[Gpr::Rsi] = DATA;
            s.gprs[Gpr::Rdi] = DATA + 2;
        })
        .unwrap();
    match g.vcpu.run().unwrap() {
        Exit::Io(io) => assert_eq!(io.port(), 0x10),
        e => panic!("{e:?}"),
    }
    g.vcpu.get_state(StateMask::GPRS).unwrap();
    let s = g.vcpu.state();
    const AC: u64 = 1 << 18;
    const ZF: u64 = 1 << 6;
    assert_eq!(s.gprs[Gpr::Rbx] & AC, AC, "STAC sets AC");
    assert_eq!(s.gprs[Gpr::Rcx] & AC, 0, "CLAC clears it");
    assert_eq!(s.gprs[Gpr::Rdx] & ZF, ZF, "VERW of the kernel data segment: writable");
    assert_eq!(s.gprs[Gpr::R8] & ZF, 0, "VERW of a code segment: not writable");
}

/// An IDT at `idt` whose vector `vector` is a 64-bit interrupt gate to
/// `handler`.
fn idt_with(g: &mut Guest, idt: u64, vector: u8, handler: u64) {
    let mut gate = [0u8; 16];
    gate[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&nvmm::x86::modes::CODE64_SELECTOR.to_le_bytes());
    gate[5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
    gate[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    gate[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g.machine.write_gpa(idt + 16 * u64::from(vector), &gate).unwrap();
    g.vcpu
        .update(StateMask::SEGS, |s| {
            s.segs[nvmm::Seg::Idt].base = idt;
            s.segs[nvmm::Seg::Idt].limit = 0xfff;
        })
        .unwrap();
}

#[test]
fn int3_completed_at_cpl0_returns_past_itself() {
    nvmm_testkit::kvm_or_skip!();
    // int3 ; nop ; nop ; hlt   and at 0x1100 the #BP handler:
    // mov rax, [rsp] ; out 0x10, al
    let mut code = vec![0xcc, 0x90, 0x90, 0xf4];
    code.resize(0x100, 0x90);
    code.extend_from_slice(&[0x48, 0x8b, 0x04, 0x24, 0xe6, 0x10]);
    let mut g = long_mode(&code);
    idt_with(&mut g, 0x3000, 3, CODE + 0x100);
    match g.vcpu.run().unwrap() {
        Exit::Io(io) => assert_eq!(io.port(), 0x10),
        e => panic!("{e:?}"),
    }
    g.vcpu.get_state(StateMask::GPRS).unwrap();
    // The return address the CPU pushes for INT3: the byte after it.
    assert_eq!(g.vcpu.state().gprs[Gpr::Rax], CODE + 1);
}

/// An instruction neither KVM's emulator nor nvmm's completes (AESENC in
/// real mode, emulated by KVM on these hosts) is reported with KVM's
/// data: the bytes and `exit_info` are what a bare KVM VM running the same
/// code reports in its internal-error exit (data words 3 to 7 after the
/// flags and the 16 bytes of instruction).
#[test]
fn emulation_failure_carries_kvms_exit_information() {
    nvmm_testkit::kvm_or_skip!();
    let code = [0x66, 0x0f, 0x38, 0xdc, 0xc1, 0xf4]; // aesenc xmm0, xmm1 ; hlt
    let mut raw = nvmm_testkit::floor::RawKvm::open().unwrap().vm(&code, CODE, 1 << 20).unwrap();
    let Some((suberror, data)) = raw.run_to_emulation_failure().unwrap() else {
        // Hosts that run real-mode code natively execute it: nothing to
        // compare, and the library must not report a failure either.
        let mut g = real_mode(&code);
        run_to_halt(&mut g.vcpu);
        return;
    };
    assert_eq!(suberror, kvm_bindings::KVM_INTERNAL_ERROR_EMULATION);
    let mut g = real_mode(&code);
    let exit = g.vcpu.run().unwrap();
    let Exit::EmulationFailure(f) = exit else { panic!("expected an emulation failure, got {exit:?}") };
    let bytes = f.instruction_bytes().expect("KVM hands over the bytes");
    assert_eq!(&bytes[..5], &code[..5]);
    let want: Vec<u64> = (0..5).map(|i| data.get(3 + i).copied().unwrap_or(0)).collect();
    assert_eq!(f.exit_info().to_vec(), want, "raw data words {data:x?}");
    // The memory assist cannot emulate it either: ENODEV, RIP unmoved.
    let e = g.vcpu.assist_mem(|_| {}).unwrap_err();
    assert_eq!(e.errno(), libc::ENODEV, "{e}");
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE);
}

/// With the completion off (`Vcpu::set_complete_emulation_failures`), an
/// instruction a bare KVM VM gives up on (POPCNT in real mode, on hosts
/// whose KVM emulates CPL 0 code) reaches the program as an emulation
/// failure with its bytes; with it on (the default) the run loop
/// completes it and the guest goes on to its HLT.
#[test]
fn completion_off_reports_what_a_bare_kvm_gives_up_on() {
    nvmm_testkit::kvm_or_skip!();
    let code = [0xf3, 0x0f, 0xb8, 0xc3, 0xf4]; // popcnt ax, bx ; hlt
    let mut raw = nvmm_testkit::floor::RawKvm::open().unwrap().vm(&code, CODE, 1 << 20).unwrap();
    let gives_up = raw.run_to_emulation_failure().unwrap().is_some();
    println!("a bare KVM VM {} POPCNT in real mode", if gives_up { "gives up on" } else { "runs" });
    let mut g = real_mode(&code);
    g.vcpu.set_complete_emulation_failures(false);
    let exit = g.vcpu.run().unwrap();
    if gives_up {
        let Exit::EmulationFailure(f) = exit else { panic!("completion off: expected the failure, got {exit:?}") };
        assert_eq!(f.instruction_bytes().map(|b| b[..4].to_vec()), Some(vec![0xf3, 0x0f, 0xb8, 0xc3]));
    } else {
        assert!(matches!(exit, Exit::Halted), "{exit:?}");
    }
    let mut g = real_mode(&code);
    run_to_halt(&mut g.vcpu);
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + 5);
}
