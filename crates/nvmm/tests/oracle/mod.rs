//! The decoder's oracle: iced-x86. Shared by the decoder tests and the
//! decoder fuzz target (which includes this file by path).
#![allow(dead_code)]

use iced_x86::{Code, Decoder, DecoderOptions, EncodingKind, Mnemonic, OpKind, Register};
use nvmm::assist::decode::*;
use nvmm::x86::state::Seg;

#[allow(unused_imports)]
pub use nvmm_testkit::Rng;

fn bits(mode: CpuMode) -> u32 {
    match mode {
        CpuMode::Bits16 => 16,
        CpuMode::Bits32 => 32,
        CpuMode::Bits64 => 64,
    }
}

pub fn iced(bytes: &[u8], mode: CpuMode) -> iced_x86::Instruction {
    Decoder::with_ip(bits(mode), bytes, 0, DecoderOptions::NONE).decode()
}

/// Whether iced's instruction is one the emulator claims, with a memory
/// operand (the assists only see instructions that access memory).
fn claimed(i: &iced_x86::Instruction) -> bool {
    use Mnemonic::*;
    let has_mem = (0..i.op_count()).any(|n| {
        matches!(
            i.op_kind(n),
            OpKind::Memory
                | OpKind::MemorySegSI
                | OpKind::MemorySegESI
                | OpKind::MemorySegRSI
                | OpKind::MemoryESDI
                | OpKind::MemoryESEDI
                | OpKind::MemoryESRDI
        )
    });
    let code = format!("{:?}", i.code()).to_lowercase();
    let supported = match i.mnemonic() {
        Mov => {
            !code.contains("sreg")
                && !code.contains("cr")
                && !code.contains("dr")
                && !code.contains("tr")
                && i.code() != Code::Mov_r64_imm64
        }
        Movzx | Add | Or | Adc | Sbb | And | Sub | Xor | Cmp | Test | Xchg | Cmpxchg | Cmpxchg8b | Cmpxchg16b
        | Xadd => true,
        Movsb | Movsw | Movsq | Cmpsb | Cmpsw | Cmpsq | Stosb | Stosw | Stosd | Stosq | Lodsb | Lodsw | Lodsd
        | Lodsq => true,
        // The string forms, not SSE's MOVSD/CMPSD (scalar double).
        Movsd => code.starts_with("movsd_m"),
        Cmpsd => code.starts_with("cmpsd_m"),
        Fld | Fst | Fstp | Fild | Fistp => true,
        Movups | Movaps | Movdqa | Movdqu | Movntdq | Vmovups | Vmovaps | Vmovdqa | Vmovdqu | Vmovntdq => true,
        // Not the MMX forms.
        Movd | Movq | Vmovd | Vmovq => !code.contains("_mm_") && !code.ends_with("_mm"),
        _ => false,
    };
    // Forms of these mnemonics the decoder does not claim: register
    // immediates of MOV/TEST/ALU on the accumulator (no memory operand
    // anyway), MOVQ between MMX registers, x87 register forms.
    supported && has_mem && !code.contains("_k") && !code.contains("zmm") && !code.contains("evex")
}

fn reg_tuple(r: Register) -> (u8, u8, bool) {
    let high8 = matches!(r, Register::AH | Register::CH | Register::DH | Register::BH);
    (r.full_register().number() as u8, r.size() as u8, high8)
}

fn check_reg(ours: &Reg, theirs: Register, opsize: u8, ctx: &str) {
    match *ours {
        Reg::Gpr { num, size, high8 } => assert_eq!((num, size, high8), reg_tuple(theirs), "{ctx}: register"),
        Reg::Xmm(n) => {
            let want = if opsize == 32 { theirs.is_ymm() } else { theirs.is_xmm() };
            assert!(want && theirs.number() as u8 == n, "{ctx}: vector register {n} vs {theirs:?}");
        }
        Reg::St0 => assert_eq!(theirs, Register::ST0, "{ctx}"),
    }
}

/// All ones in the low `bytes` bytes (the oracle's own, not the crate's).
fn width_mask(bytes: u8) -> u64 {
    match bytes {
        2 => 0xffff,
        4 => 0xffff_ffff,
        8 => u64::MAX,
        b => panic!("address size {b}"),
    }
}

/// The address size the legacy prefixes select in `mode`, in bytes, read
/// from the raw bytes (0x67 toggles 16/32 and selects 32 in 64-bit mode).
fn prefix_addr_size(bytes: &[u8], mode: CpuMode) -> u8 {
    // REX bytes may sit between legacy prefixes (then they are ignored).
    let rex = |b: u8| mode == CpuMode::Bits64 && b & 0xf0 == 0x40;
    let a67 = bytes.iter().take_while(|&&b| PREFIXES.contains(&b) || rex(b)).any(|&b| b == 0x67);
    match (mode, a67) {
        (CpuMode::Bits16, false) | (CpuMode::Bits32, true) => 2,
        (CpuMode::Bits16, true) | (CpuMode::Bits32, false) | (CpuMode::Bits64, true) => 4,
        (CpuMode::Bits64, false) => 8,
    }
}

fn check_mem(m: &Mem, i: &iced_x86::Instruction, addr: u8, ctx: &str) {
    check_address(m, i, addr, ctx);
    assert_eq!(usize::from(m.size()), i.memory_size().size(), "{ctx}: memory size {:?}", i.memory_size());
}

/// [`check_mem`] but for the size (operands of no fixed size, or too large
/// for the field: the XSAVE area, FNSAVE's image).
fn check_address(m: &Mem, i: &iced_x86::Instruction, addr: u8, ctx: &str) {
    assert_eq!(m.seg(), seg_of(i.memory_segment()), "{ctx}: segment");
    assert_eq!(m.addr_size(), addr, "{ctx}: address size");
    let base = i.memory_base();
    let index = i.memory_index();
    for r in [base, index] {
        if r != Register::None && r != Register::RIP && r != Register::EIP {
            assert_eq!(r.size() as u8, addr, "{ctx}: iced's {r:?} against the prefixes' address size");
        }
    }
    if m.rip_relative() {
        let want = if addr == 8 { Register::RIP } else { Register::EIP };
        assert_eq!(base, want, "{ctx}: rip-relative");
        assert_eq!(index, Register::None, "{ctx}: rip-relative with an index");
        // iced resolves the target with IP 0: the instruction's length
        // plus the displacement, wrapped to the address size.
        let target = (i.len() as u64).wrapping_add(m.disp() as u64) & width_mask(addr);
        assert_eq!(target, i.memory_displacement64(), "{ctx}: rip-relative target");
    } else {
        assert!(!matches!(base, Register::RIP | Register::EIP), "{ctx}: iced says rip-relative, we do not");
        assert_eq!(m.base(), (base != Register::None).then(|| base.full_register().number() as u8), "{ctx}: base");
        assert_eq!(
            m.disp() as u64 & width_mask(addr),
            i.memory_displacement64() & width_mask(addr),
            "{ctx}: displacement"
        );
    }
    assert_eq!(
        m.index(),
        (index != Register::None).then(|| (index.full_register().number() as u8, i.memory_index_scale() as u8)),
        "{ctx}: index"
    );
}

/// The segment iced names.
pub fn seg_of(r: Register) -> Seg {
    match r {
        Register::ES => Seg::Es,
        Register::CS => Seg::Cs,
        Register::SS => Seg::Ss,
        Register::DS => Seg::Ds,
        Register::FS => Seg::Fs,
        Register::GS => Seg::Gs,
        r => panic!("iced's memory segment is {r:?}"),
    }
}

/// Compares one decoding; returns whether ours accepted.
pub fn compare(bytes: &[u8], mode: CpuMode) -> bool {
    let theirs = iced(bytes, mode);
    let ours = decode(bytes, mode);
    let ctx = format!("{mode:?} {bytes:02x?} ({:?})", theirs.code());
    let Ok(d) = ours else {
        assert!(
            theirs.code() == Code::INVALID || !claimed(&theirs),
            "{ctx}: iced decodes a claimed instruction we reject: {ours:?}"
        );
        return false;
    };
    assert_ne!(theirs.code(), Code::INVALID, "{ctx}: we decode {d:?}, iced says invalid");
    assert_eq!(usize::from(d.len()), theirs.len(), "{ctx}: length ({d:?})");
    // Every strict prefix of the instruction is truncated, whatever it
    // holds.
    for k in 0..usize::from(d.len()) {
        assert_eq!(decode(&bytes[..k], mode), Err(DecodeError::Truncated), "{ctx}: first {k} bytes");
    }
    assert_eq!(d.lock(), theirs.has_lock_prefix(), "{ctx}: lock");
    assert!(!d.is_empty(), "{ctx}: empty");
    let addr = prefix_addr_size(bytes, mode);
    assert_eq!(d.addr_size(), addr, "{ctx}: the instruction's address size");
    assert_eq!(d.vex(), theirs.encoding() == EncodingKind::VEX, "{ctx}: VEX");
    let prefix = theirs.segment_prefix();
    assert_eq!(d.seg_override(), (prefix != Register::None).then(|| seg_of(prefix)), "{ctx}: segment override");
    let string = matches!(d.op(), Op::Movs | Op::Cmps | Op::Stos | Op::Lods);
    if string {
        assert_eq!(d.rep() == Rep::Rep, theirs.has_rep_prefix() || theirs.has_repe_prefix(), "{ctx}: rep");
        assert_eq!(d.rep() == Rep::Repne, theirs.has_repne_prefix(), "{ctx}: repne");
    }
    if d.op() == Op::Int3 {
        assert_eq!(theirs.mnemonic(), Mnemonic::Int3, "{ctx}");
        return true;
    }
    assert!(claimed(&theirs), "{ctx}: we decode {d:?}, iced decodes an instruction we do not claim");
    assert!(mnemonics(&d).contains(&theirs.mnemonic()), "{ctx}: we decode {:?}, iced {:?}", d.op(), theirs.mnemonic());
    if let Op::X87(_) = d.op() {
        // The other operand is the stack top: every x87 memory form the
        // emulator claims (iced's mnemonic, checked above: FLD, FILD, FST,
        // FSTP, FISTP) loads into or stores from ST(0) (SDM vol. 1, 8.1.2);
        // iced lists neither it among the operands nor among the
        // registers used.
        let st0 = if d.shape() == Shape::RegMem { d.dst() } else { d.src() };
        assert_eq!(st0, Operand::Reg(Reg::St0), "{ctx}: the x87 register operand");
        // Loads read the memory operand, stores write it (iced's memory
        // access, from its instruction information).
        let mut factory = iced_x86::InstructionInfoFactory::new();
        let access = factory.info(&theirs).used_memory()[0].access();
        let stores = matches!(d.dst(), Operand::Mem(_));
        assert_eq!(stores, access == iced_x86::OpAccess::Write, "{ctx}: memory written (iced: {access:?})");
        assert!(matches!(access, iced_x86::OpAccess::Read | iced_x86::OpAccess::Write), "{ctx}: {access:?}");
    }
    // Operands in iced's order.
    let ours_ops: Vec<Operand> = match d.op() {
        Op::X87(_) | Op::CmpxchgNb => vec![Operand::Mem(d.memory().unwrap())],
        Op::Cmps => vec![d.dst(), d.src()],
        _ => vec![d.dst(), d.src()],
    };
    let mut n = 0;
    for op in ours_ops {
        if n >= theirs.op_count() {
            assert!(matches!(op, Operand::None), "{ctx}: extra operand {op:?}");
            continue;
        }
        let kind = theirs.op_kind(n);
        match op {
            Operand::Reg(r) => {
                assert_eq!(kind, OpKind::Register, "{ctx}: operand {n}");
                check_reg(&r, theirs.op_register(n), d.opsize(), &ctx);
            }
            Operand::Mem(m) => {
                match kind {
                    OpKind::Memory => check_mem(&m, &theirs, addr, &ctx),
                    OpKind::MemorySegSI | OpKind::MemorySegESI | OpKind::MemorySegRSI => {
                        assert_eq!(m.seg(), seg_of(theirs.memory_segment()), "{ctx}: string source segment");
                        assert_eq!(m.base(), Some(6));
                        assert_eq!(usize::from(m.size()), theirs.memory_size().size(), "{ctx}: size");
                    }
                    OpKind::MemoryESDI | OpKind::MemoryESEDI | OpKind::MemoryESRDI => {
                        assert_eq!((m.seg(), m.base()), (Seg::Es, Some(7)), "{ctx}");
                        assert_eq!(usize::from(m.size()), theirs.memory_size().size(), "{ctx}: size");
                    }
                    k => panic!("{ctx}: operand {n} is {k:?}, ours is memory"),
                }
                let iced_addr = match kind {
                    OpKind::MemorySegSI | OpKind::MemoryESDI => 2,
                    OpKind::MemorySegESI | OpKind::MemoryESEDI => 4,
                    OpKind::MemorySegRSI | OpKind::MemoryESRDI => 8,
                    _ => addr,
                };
                assert_eq!(iced_addr, addr, "{ctx}: iced's string address size against the prefixes'");
                assert_eq!(m.addr_size(), addr, "{ctx}: address size");
            }
            Operand::Imm(v) => {
                assert!(
                    matches!(
                        kind,
                        OpKind::Immediate8
                            | OpKind::Immediate16
                            | OpKind::Immediate32
                            | OpKind::Immediate64
                            | OpKind::Immediate8to16
                            | OpKind::Immediate8to32
                            | OpKind::Immediate8to64
                            | OpKind::Immediate32to64
                    ),
                    "{ctx}: operand {n} is {kind:?}, ours is an immediate"
                );
                // iced sign-extends to 64 bits; compare at the operand size.
                let size = theirs.memory_size().size() as u8;
                let m = if size >= 8 { u64::MAX } else { (1u64 << (8 * size)) - 1 };
                assert_eq!(v & m, theirs.immediate(n) & m, "{ctx}: immediate");
                assert_eq!(d.imm() & m, theirs.immediate(n) & m, "{ctx}: imm()");
            }
            Operand::None => continue,
        }
        n += 1;
    }
    // Every operand iced sees was matched, but the ones the emulator
    // takes implicitly: CMPXCHG's accumulator, CMPXCHG8B/16B's register
    // pairs are not operands in iced either.
    assert_eq!(n, theirs.op_count(), "{ctx}: we matched {n} of iced's {} operands", theirs.op_count());
    if let Op::Vec(_) = d.op() {
        // The vector register is implied by the check above; nothing else.
    }
    true
}

/// iced's mnemonics for one of our operations.
fn mnemonics(d: &Instruction) -> Vec<Mnemonic> {
    use Mnemonic as M;
    let vex = |legacy: M, v: M| vec![legacy, v];
    match d.op() {
        Op::Mov => vec![M::Mov],
        Op::Movzx => vec![M::Movzx],
        Op::Alu(a) => vec![match a {
            AluOp::Add => M::Add,
            AluOp::Or => M::Or,
            AluOp::Adc => M::Adc,
            AluOp::Sbb => M::Sbb,
            AluOp::And => M::And,
            AluOp::Sub => M::Sub,
            AluOp::Xor => M::Xor,
            AluOp::Cmp => M::Cmp,
        }],
        Op::Test => vec![M::Test],
        Op::Xchg => vec![M::Xchg],
        Op::Movs => vec![[M::Movsb, M::Movsw, M::Movsd, M::Movsq][d.opsize().trailing_zeros() as usize]],
        Op::Cmps => vec![[M::Cmpsb, M::Cmpsw, M::Cmpsd, M::Cmpsq][d.opsize().trailing_zeros() as usize]],
        Op::Stos => vec![[M::Stosb, M::Stosw, M::Stosd, M::Stosq][d.opsize().trailing_zeros() as usize]],
        Op::Lods => vec![[M::Lodsb, M::Lodsw, M::Lodsd, M::Lodsq][d.opsize().trailing_zeros() as usize]],
        Op::Cmpxchg => vec![M::Cmpxchg],
        Op::CmpxchgNb => vec![if d.opsize() == 16 { M::Cmpxchg16b } else { M::Cmpxchg8b }],
        Op::Xadd => vec![M::Xadd],
        Op::Int3 => vec![M::Int3],
        Op::X87(x) => vec![match x {
            X87Op::Fld => M::Fld,
            X87Op::Fst => M::Fst,
            X87Op::Fstp => M::Fstp,
            X87Op::Fild => M::Fild,
            X87Op::Fistp => M::Fistp,
        }],
        Op::Vec(v) => match v {
            VecMove::Movups => vex(M::Movups, M::Vmovups),
            VecMove::Movaps => vex(M::Movaps, M::Vmovaps),
            VecMove::Movdqa => vex(M::Movdqa, M::Vmovdqa),
            VecMove::Movdqu => vex(M::Movdqu, M::Vmovdqu),
            VecMove::Movntdq => vex(M::Movntdq, M::Vmovntdq),
            VecMove::Movd => vex(M::Movd, M::Vmovd),
            VecMove::Movq => vex(M::Movq, M::Vmovq),
        },
    }
}

/// Opcode bytes (after prefixes) of every form the decoder supports.
pub fn templates() -> Vec<Vec<u8>> {
    let mut t: Vec<Vec<u8>> = Vec::new();
    for base in (0..0x40u8).step_by(8) {
        for k in 0..4 {
            t.push(vec![base + k]);
        }
    }
    for op in [
        0x80u8, 0x81, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0xc6, 0xc7, 0xd9, 0xdb, 0xdd, 0xdf, 0xf6,
        0xf7,
    ] {
        t.push(vec![op]);
    }
    for op in [0xb0u8, 0xb1, 0xb6, 0xb7, 0xc0, 0xc1, 0xc7] {
        t.push(vec![0x0f, op]);
    }
    for (p, op) in [
        (None, 0x10u8),
        (None, 0x11),
        (None, 0x28),
        (None, 0x29),
        (Some(0x66u8), 0x6f),
        (Some(0x66), 0x7f),
        (Some(0xf3), 0x6f),
        (Some(0xf3), 0x7f),
        (Some(0x66), 0xe7),
        (Some(0x66), 0x6e),
        (Some(0x66), 0x7e),
        (Some(0xf3), 0x7e),
        (Some(0x66), 0xd6),
    ] {
        t.push(p.into_iter().chain([0x0f, op]).collect());
        // VEX2: R=1, vvvv=1111, L and pp.
        let pp = match p {
            None => 0u8,
            Some(0x66) => 1,
            _ => 2,
        };
        for l in [0u8, 4] {
            // VEX2: R (inverted, bit 7) both ways; vvvv 1111 (the only
            // valid value for these moves) and 0000 (#UD).
            for r in [0x80u8, 0] {
                for vvvv in [0x78u8, 0] {
                    t.push(vec![0xc5, r | vvvv | l | pp, op]);
                }
            }
            // VEX3: every R/X/B, map 1 (and map 2, which has none of
            // these), W both ways, vvvv 1111 and 0000.
            for rxb in 0..8u8 {
                for w in [0u8, 0x80] {
                    t.push(vec![0xc4, rxb << 5 | 1, 0x78 | w | l | pp, op]);
                }
            }
            t.push(vec![0xc4, 0xe1, l | pp, op]);
            t.push(vec![0xc4, 0xe2, 0x78 | l | pp, op]);
        }
    }
    t
}

pub const PREFIXES: [u8; 11] = [0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65];

/// Whether iced's instruction is one the control decoder claims: x87
/// control, MXCSR, vector register moves (register forms: the memory
/// forms are the main decoder's), MOVD/MOVQ with a GPR, the XOR idioms,
/// VZEROUPPER/VZEROALL, XGETBV and the XSAVE family.
fn claimed_control(i: &iced_x86::Instruction) -> bool {
    use Mnemonic::*;
    let code = format!("{:?}", i.code()).to_lowercase();
    let has_mem = (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory);
    if code.contains("_mm_") || code.ends_with("_mm") || code.contains("evex") || code.contains("_k") {
        return false;
    }
    match i.mnemonic() {
        Fninit | Fnclex | Fnstcw | Fldcw | Ldmxcsr | Vldmxcsr | Stmxcsr | Vstmxcsr | Vzeroupper | Vzeroall | Xgetbv => {
            true
        }
        Fnstsw => true,
        Fnstenv | Fldenv | Fnsave | Frstor => true,
        Xsave | Xsave64 | Xsaveopt | Xsaveopt64 | Xsavec | Xsavec64 | Xrstor | Xrstor64 => true,
        Movaps | Movups | Movapd | Movupd | Movdqa | Movdqu | Vmovaps | Vmovups | Vmovapd | Vmovupd | Vmovdqa
        | Vmovdqu => !has_mem,
        Movd | Movq | Vmovd | Vmovq => !has_mem,
        Pxor | Xorps | Xorpd | Vpxor | Vxorps | Vxorpd => true,
        Clac | Stac | Popcnt | Verr | Verw | Lsl | Lar | Crc32 => true,
        _ => false,
    }
}

/// iced's mnemonics for a control operation.
fn control_mnemonics(c: &ControlInsn) -> Vec<Mnemonic> {
    use Mnemonic as M;
    let w = |a: M, b: M| if c.w { b } else { a };
    match c.op {
        ControlOp::Fninit => vec![M::Fninit],
        ControlOp::Fnclex => vec![M::Fnclex],
        ControlOp::Fwait => vec![M::Wait],
        ControlOp::FnstswAx | ControlOp::Fnstsw => vec![M::Fnstsw],
        ControlOp::Fnstcw => vec![M::Fnstcw],
        ControlOp::Fldcw => vec![M::Fldcw],
        ControlOp::Fnstenv => vec![M::Fnstenv],
        ControlOp::Fldenv => vec![M::Fldenv],
        ControlOp::Fnsave => vec![M::Fnsave],
        ControlOp::Frstor => vec![M::Frstor],
        ControlOp::Ldmxcsr => vec![if c.vex { M::Vldmxcsr } else { M::Ldmxcsr }],
        ControlOp::Stmxcsr => vec![if c.vex { M::Vstmxcsr } else { M::Stmxcsr }],
        ControlOp::MovReg if c.vex => vec![M::Vmovaps, M::Vmovups, M::Vmovapd, M::Vmovupd, M::Vmovdqa, M::Vmovdqu],
        ControlOp::MovReg => vec![M::Movaps, M::Movups, M::Movapd, M::Movupd, M::Movdqa, M::Movdqu],
        ControlOp::MovqReg => vec![if c.vex { M::Vmovq } else { M::Movq }],
        ControlOp::MovdToXmm | ControlOp::MovdFromXmm if c.vex => vec![w(M::Vmovd, M::Vmovq)],
        ControlOp::MovdToXmm | ControlOp::MovdFromXmm => vec![w(M::Movd, M::Movq)],
        ControlOp::Xor if c.vex => vec![M::Vpxor, M::Vxorps, M::Vxorpd],
        ControlOp::Xor => vec![M::Pxor, M::Xorps, M::Xorpd],
        ControlOp::Vzeroupper => vec![M::Vzeroupper],
        ControlOp::Vzeroall => vec![M::Vzeroall],
        ControlOp::Xgetbv => vec![M::Xgetbv],
        ControlOp::Xsave => vec![w(M::Xsave, M::Xsave64)],
        ControlOp::Xsaveopt => vec![w(M::Xsaveopt, M::Xsaveopt64)],
        ControlOp::Xsavec => vec![w(M::Xsavec, M::Xsavec64)],
        ControlOp::Xrstor => vec![w(M::Xrstor, M::Xrstor64)],
        ControlOp::Clac => vec![M::Clac],
        ControlOp::Stac => vec![M::Stac],
        ControlOp::Popcnt => vec![M::Popcnt],
        ControlOp::Verr => vec![M::Verr],
        ControlOp::Verw => vec![M::Verw],
        ControlOp::Lsl => vec![M::Lsl],
        ControlOp::Lar => vec![M::Lar],
        ControlOp::Crc32 => vec![M::Crc32],
    }
}

/// Compares the control decoder with iced on `bytes`; returns whether
/// ours accepted. FWAIT is an instruction of its own for the CPU (iced
/// folds it into a following FNINIT/FNCLEX/FNSTSW/FNSTCW): only its length
/// is checked.
pub fn compare_control(bytes: &[u8], mode: CpuMode) -> bool {
    let theirs = iced(bytes, mode);
    let ours = decode_control(bytes, mode);
    let ctx = format!("{mode:?} {bytes:02x?} ({:?})", theirs.code());
    let Ok(c) = ours else {
        assert!(
            theirs.code() == Code::INVALID || !claimed_control(&theirs) || theirs.has_lock_prefix(),
            "{ctx}: iced decodes a claimed control instruction we reject: {ours:?}"
        );
        return false;
    };
    if c.op == ControlOp::Fwait {
        assert_eq!(
            c.len,
            1 + bytes
                .iter()
                .take_while(|b| PREFIXES.contains(b) || (0x40..0x50).contains(*b) && mode == CpuMode::Bits64)
                .count() as u8,
            "{ctx}"
        );
        return true;
    }
    assert_ne!(theirs.code(), Code::INVALID, "{ctx}: we decode {c:?}, iced says invalid");
    assert_eq!(usize::from(c.len), theirs.len(), "{ctx}: length ({c:?})");
    assert!(claimed_control(&theirs), "{ctx}: we decode {c:?}, iced an instruction we do not claim");
    assert!(control_mnemonics(&c).contains(&theirs.mnemonic()), "{ctx}: we decode {c:?}, iced {:?}", theirs.mnemonic());
    // Registers and the memory operand, in iced's operand order.
    let regs: Vec<Register> = (0..theirs.op_count())
        .filter(|&n| theirs.op_kind(n) == OpKind::Register)
        .map(|n| theirs.op_register(n))
        .collect();
    let num = |r: &Register| r.full_register().number() as u8;
    match c.op {
        ControlOp::MovReg | ControlOp::MovqReg | ControlOp::MovdToXmm | ControlOp::MovdFromXmm => {
            assert_eq!((num(&regs[0]), num(&regs[1])), (c.dst, c.src), "{ctx}: registers {regs:?}");
            if matches!(c.op, ControlOp::MovdToXmm | ControlOp::MovdFromXmm) {
                let gpr = if c.op == ControlOp::MovdToXmm { regs[1] } else { regs[0] };
                assert_eq!(gpr.size(), if c.w { 8 } else { 4 }, "{ctx}: GPR size");
            }
            if c.op == ControlOp::MovReg {
                assert_eq!(regs[0].is_ymm(), c.wide, "{ctx}: width");
            }
        }
        ControlOp::Xor => {
            assert_eq!(num(&regs[0]), c.dst, "{ctx}: destination");
            assert_eq!(regs[0].is_ymm(), c.wide, "{ctx}: width");
            if c.vex {
                assert_eq!(num(&regs[1]), c.src1, "{ctx}: first source");
            }
            if c.mem.is_none() {
                assert_eq!(num(regs.last().unwrap()), c.src, "{ctx}: source");
            }
        }
        ControlOp::FnstswAx => assert_eq!(regs, [Register::AX], "{ctx}"),
        ControlOp::Popcnt => {
            assert_eq!((num(&regs[0]), regs[0].size()), (c.dst, usize::from(c.opsize)), "{ctx}: destination");
            if c.mem.is_none() {
                assert_eq!((num(&regs[1]), regs[1].size()), (c.src, usize::from(c.opsize)), "{ctx}: source");
            }
        }
        ControlOp::Crc32 => {
            assert_eq!((num(&regs[0]), regs[0].size()), (c.dst, if c.w { 8 } else { 4 }), "{ctx}: destination");
            assert_eq!(
                theirs.memory_size().size().max(regs.get(1).map_or(0, |r| r.size())),
                usize::from(c.opsize),
                "{ctx}: source size"
            );
            if c.mem.is_none() {
                let high8 = matches!(regs[1], Register::AH | Register::CH | Register::DH | Register::BH);
                assert_eq!((num(&regs[1]), high8), (c.src, c.high8), "{ctx}: source");
            }
        }
        ControlOp::Verr | ControlOp::Verw if c.mem.is_none() => assert_eq!(num(&regs[0]), c.src, "{ctx}: selector"),
        ControlOp::Lsl | ControlOp::Lar => {
            assert_eq!((num(&regs[0]), regs[0].size()), (c.dst, usize::from(c.opsize)), "{ctx}: destination");
            if c.mem.is_none() {
                assert_eq!(num(&regs[1]), c.src, "{ctx}: selector");
            }
        }
        ControlOp::Fnstenv | ControlOp::Fldenv | ControlOp::Fnsave | ControlOp::Frstor => {
            let image = theirs.memory_size().size();
            assert_eq!(usize::from(c.opsize), if image == 14 || image == 94 { 2 } else { 4 }, "{ctx}: format");
        }
        _ => {}
    }
    match c.mem {
        Some(m) => {
            assert!((0..theirs.op_count()).any(|n| theirs.op_kind(n) == OpKind::Memory), "{ctx}: memory operand");
            let t = theirs;
            if matches!(
                c.op,
                ControlOp::Xsave
                    | ControlOp::Xsaveopt
                    | ControlOp::Xsavec
                    | ControlOp::Xrstor
                    | ControlOp::Fnsave
                    | ControlOp::Frstor
            ) {
                // The XSAVE area has no fixed size, FNSAVE's does not fit
                // the field: compare the address.
                assert_eq!(m.size(), 0, "{ctx}");
                check_address(&m, &t, prefix_addr_size(bytes, mode), &ctx);
            } else {
                check_mem(&m, &t, prefix_addr_size(bytes, mode), &ctx);
            }
        }
        None => {
            assert!(!(0..theirs.op_count()).any(|n| theirs.op_kind(n) == OpKind::Memory), "{ctx}: no memory operand")
        }
    }
    true
}

/// Compares [`memory_operand`](nvmm::assist::decode::memory_operand) with
/// iced on the instruction it stands for: `legacy`, REX with `rex`'s X and
/// B bits in 64-bit code (elsewhere they do not exist and are ignored),
/// then `mov r32, r/m32` with `tail` as its ModRM and what follows. Where
/// iced decodes it (15 bytes at most, a memory form), ours must give the
/// same operand and the bytes ModRM and the rest took; else nothing. Returns
/// whether ours gave an operand.
pub fn compare_memory_operand(legacy: &[u8], rex: u8, tail: &[u8], mode: CpuMode) -> bool {
    let mut bytes = legacy.to_vec();
    if mode == CpuMode::Bits64 && rex & 3 != 0 {
        bytes.push(0x40 | (rex & 3));
    }
    let head = bytes.len() + 1;
    bytes.push(0x8b);
    bytes.extend_from_slice(tail);
    let theirs = iced(&bytes, mode);
    let ours = nvmm::assist::decode::memory_operand(legacy, rex, tail, mode, 4);
    let ctx = format!("{mode:?} legacy {legacy:02x?} rex {rex:#x} tail {tail:02x?}");
    let memory = (0..theirs.op_count()).any(|n| theirs.op_kind(n) == OpKind::Memory);
    if theirs.code() == Code::INVALID || !memory {
        assert!(ours.is_none(), "{ctx}: iced has no memory operand here, we give {ours:?}");
        return false;
    }
    let (m, used) = ours.unwrap_or_else(|| panic!("{ctx}: iced decodes {:?}, we give nothing", theirs.code()));
    // The size is the caller's (the stand-in MOV's is not the operand's).
    check_address(&m, &theirs, prefix_addr_size(&bytes, mode), &ctx);
    assert_eq!(m.size(), 4, "{ctx}: size");
    assert_eq!(used, theirs.len() - head, "{ctx}: bytes used");
    true
}

/// Opcode templates of the control instructions (a ModRM follows).
pub fn control_templates() -> Vec<Vec<u8>> {
    let mut t: Vec<Vec<u8>> = vec![
        vec![0xd9],
        vec![0xdb],
        vec![0xdd],
        vec![0xdf],
        vec![0x0f, 0x00],
        vec![0x0f, 0x01],
        vec![0x0f, 0xae],
        vec![0x0f, 0xc7],
        vec![0xf3, 0x0f, 0xb8],
        vec![0x66, 0xf3, 0x0f, 0xb8],
        // CRC32, and MOVBE (the same opcodes without F2: not ours).
        vec![0xf2, 0x0f, 0x38, 0xf0],
        vec![0xf2, 0x0f, 0x38, 0xf1],
        vec![0x66, 0xf2, 0x0f, 0x38, 0xf1],
        vec![0x0f, 0x38, 0xf1],
    ];
    for p in [&[][..], &[0x66], &[0xf3], &[0xf2]] {
        for op in [0x10u8, 0x11, 0x28, 0x29, 0x57, 0x6e, 0x6f, 0x7e, 0x7f, 0xd6, 0xef] {
            let mut v = p.to_vec();
            v.extend([0x0f, op]);
            t.push(v);
        }
    }
    for pp in 0..4u8 {
        for op in [0x10u8, 0x11, 0x28, 0x29, 0x57, 0x6e, 0x6f, 0x77, 0x7e, 0x7f, 0xae, 0xd6, 0xef] {
            for l in [0u8, 4] {
                for vvvv in [0x78u8, 0x00, 0x28] {
                    t.push(vec![0xc5, 0x80 | vvvv | l | pp, op]);
                    // VEX.R set (its bit clear): XMM8-15 in ModRM.reg.
                    t.push(vec![0xc5, vvvv | l | pp, op]);
                    t.push(vec![0xc4, 0x41, vvvv | l | pp | 0x80, op]);
                    t.push(vec![0xc4, 0xe1, vvvv | l | pp, op]);
                }
            }
        }
    }
    t
}
