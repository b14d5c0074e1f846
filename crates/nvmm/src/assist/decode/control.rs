//! Decoding of the instructions that work on the FPU, MXCSR and vector
//! registers themselves rather than on a general instruction's memory
//! operand: x87 control (FNINIT, FNCLEX, FWAIT, FNSTSW, FNSTCW, FLDCW,
//! FNSTENV, FLDENV, FNSAVE, FRSTOR),
//! LDMXCSR/STMXCSR, SSE and AVX moves between registers and the zeroing
//! idioms (MOVAPS/MOVUPS/MOVAPD/MOVUPD/MOVDQA/MOVDQU, MOVD/MOVQ with a GPR,
//! MOVQ between XMM registers, PXOR/XORPS/XORPD, VZEROUPPER, VZEROALL),
//! XGETBV and the XSAVE family (XSAVE, XSAVEOPT, XSAVEC, XRSTOR), and a
//! few integer instructions such code runs (CLAC, STAC, POPCNT, VERR,
//! VERW, LSL, LAR, CRC32).
//!
//! Guest kernels and firmware run these at boot; when KVM emulates the
//! guest's code (nested, CPL 0) its emulator gives up on them. The machine
//! in [`fsm`](super::fsm) decodes the instructions with memory operands
//! that MMIO faults on; this small decoder covers the rest, reusing the
//! machine's ModRM grammar for the memory operands.
#![forbid(unsafe_code)]

use super::{CpuMode, DecodeError, MAX_LEN, Mem, memory_operand};

/// What a [`ControlInsn`] does.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum ControlOp {
    /// FNINIT: the x87 state to its initial values.
    Fninit,
    /// FNCLEX: clears the x87 exception flags, ES and B.
    Fnclex,
    /// FWAIT: raises a pending unmasked x87 exception (#MF).
    Fwait,
    /// FNSTSW AX.
    FnstswAx,
    /// FNSTSW m16.
    Fnstsw,
    /// FNSTCW m16.
    Fnstcw,
    /// FLDCW m16.
    Fldcw,
    /// FNSTENV m14/28: the x87 environment (control, status and full tag
    /// words, instruction and data pointers, opcode) in the 16- or 32-bit
    /// format of the operand size ([`ControlInsn::opsize`] 2 or 4); then
    /// every exception masked.
    Fnstenv,
    /// FLDENV m14/28: loads the environment FNSTENV stores.
    Fldenv,
    /// FNSAVE m94/108: the environment and ST0-ST7, then the FPU
    /// initialized as by FNINIT.
    Fnsave,
    /// FRSTOR m94/108: loads what FNSAVE stores.
    Frstor,
    /// LDMXCSR m32 / VLDMXCSR.
    Ldmxcsr,
    /// STMXCSR m32 / VSTMXCSR.
    Stmxcsr,
    /// A full move between vector registers (MOVAPS, MOVUPS, MOVAPD,
    /// MOVUPD, MOVDQA, MOVDQU and their VEX forms): `dst` gets `src`.
    MovReg,
    /// MOVQ xmm, xmm (F3 0F 7E, 66 0F D6): the low 64 bits, the rest of
    /// the destination zeroed.
    MovqReg,
    /// MOVD/MOVQ xmm, r32/r64: `dst` (XMM) gets `src` (GPR) zero-extended.
    MovdToXmm,
    /// MOVD/MOVQ r32/r64, xmm: `dst` (GPR) gets the low bits of `src`.
    MovdFromXmm,
    /// PXOR, XORPS, XORPD and their VEX forms: `dst` gets `src1` XOR the
    /// register `src` or the memory operand.
    Xor,
    /// VZEROUPPER: bits 255:128 of every YMM register zeroed.
    Vzeroupper,
    /// VZEROALL: every YMM register zeroed.
    Vzeroall,
    /// XGETBV: EDX:EAX gets the XCR that ECX selects.
    Xgetbv,
    /// CLAC: clears RFLAGS.AC (CPL 0 only).
    Clac,
    /// STAC: sets RFLAGS.AC (CPL 0 only).
    Stac,
    /// POPCNT: `dst` (GPR) gets the number of set bits of the GPR `src`
    /// or the memory operand, `opsize` bytes.
    Popcnt,
    /// VERR: ZF says whether the selector in the GPR `src` or the memory
    /// operand names a segment readable at the current privilege.
    Verr,
    /// VERW: ZF says whether it names a writable one.
    Verw,
    /// LSL: `dst` (GPR, `opsize` bytes) gets the byte-granular limit of
    /// the segment the selector in the GPR `src` or the memory operand
    /// names, and ZF is set, when its descriptor is one LSL accepts at the
    /// current privilege; else ZF is cleared and `dst` kept.
    Lsl,
    /// LAR: as LSL, with the descriptor's access rights.
    Lar,
    /// CRC32: `dst` (GPR, 32 bits, or 64 with [`ControlInsn::w`]) gets the
    /// CRC-32C of the `opsize` bytes of the GPR `src` or the memory operand,
    /// continuing from its own low 32 bits; flags unchanged.
    Crc32,
    /// XSAVE: the components EDX:EAX and XCR0 select, standard format.
    Xsave,
    /// XSAVEOPT (executed as XSAVE, which the CPU may always do).
    Xsaveopt,
    /// XSAVEC: compacted format.
    Xsavec,
    /// XRSTOR, standard or compacted format.
    Xrstor,
}

impl ControlOp {
    /// Whether it reads or writes the FPU, vector or XSAVE state (the
    /// others work on general registers and flags only).
    pub fn uses_fpu(self) -> bool {
        !matches!(
            self,
            ControlOp::Clac
                | ControlOp::Stac
                | ControlOp::Popcnt
                | ControlOp::Verr
                | ControlOp::Verw
                | ControlOp::Lsl
                | ControlOp::Lar
                | ControlOp::Crc32
        )
    }
}

/// A decoded control instruction. Register numbers are XMM/YMM numbers
/// or GPR numbers as [`op`](Self::op) says; fields an operation does not
/// use are zero.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct ControlInsn {
    /// The operation.
    pub op: ControlOp,
    /// Length in bytes.
    pub len: u8,
    /// The memory operand, if any (its size is the access size for the
    /// 16-, 32- and vector-sized operands and the x87 environment, 0 for
    /// the XSAVE area and FNSAVE's image).
    pub mem: Option<Mem>,
    /// Destination register.
    pub dst: u8,
    /// Source register (the second source of a three-operand XOR).
    pub src: u8,
    /// First source of XOR: the destination in legacy SSE, VEX.vvvv
    /// otherwise.
    pub src1: u8,
    /// VEX-encoded.
    pub vex: bool,
    /// VEX.L: 256-bit operation.
    pub wide: bool,
    /// REX.W or VEX.W in 64-bit mode: 64-bit GPR for MOVD/MOVQ, 64-bit
    /// FPU pointers for the XSAVE family.
    pub w: bool,
    /// Operand size in bytes of the integer operations (POPCNT, CRC32's
    /// source), and of the x87 environment's format (2 or 4).
    pub opsize: u8,
    /// The byte register `src` (0-3) is AH, CH, DH or BH: a one-byte
    /// register operand numbered 4-7 without a REX prefix (CRC32's source).
    pub high8: bool,
}

/// Prefixes read in front of the opcode.
#[derive(Default)]
struct Prefixes {
    /// The last segment override.
    seg: Option<u8>,
    /// 67: address-size override.
    addr: bool,
    p66: bool,
    /// The last of F2/F3.
    rep: Option<u8>,
    lock: bool,
    /// REX (0 when absent).
    rex: u8,
}

/// Decodes a control instruction at the start of `bytes`.
///
/// # Errors
///
/// [`DecodeError::Truncated`] when the bytes end early,
/// [`DecodeError::Unsupported`] for anything else than the instructions
/// of [`ControlOp`], [`DecodeError::Invalid`] for a LOCK prefix or a VEX
/// form the CPU rejects.
pub fn decode_control(bytes: &[u8], mode: CpuMode) -> Result<ControlInsn, DecodeError> {
    let bytes = &bytes[..bytes.len().min(MAX_LEN)];
    let long = mode == CpuMode::Bits64;
    let mut p = Prefixes::default();
    let mut i = 0;
    let at = |i: usize| bytes.get(i).copied().ok_or(DecodeError::Truncated);
    loop {
        let b = at(i)?;
        match b {
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => {
                // In 64-bit mode an FS or GS override wins over ES, CS,
                // SS and DS ones (the machine's rule).
                let fs_gs = matches!(p.seg, Some(0x64 | 0x65));
                if !long || !fs_gs || b >= 0x64 {
                    p.seg = Some(b);
                }
                p.rex = 0;
            }
            0x67 => {
                p.addr = true;
                p.rex = 0;
            }
            0x66 => {
                p.p66 = true;
                p.rex = 0;
            }
            0xf2 | 0xf3 => {
                p.rep = Some(b);
                p.rex = 0;
            }
            0xf0 => {
                p.lock = true;
                p.rex = 0;
            }
            0x40..=0x4f if long => p.rex = b,
            _ => break,
        }
        i += 1;
        if i >= MAX_LEN {
            return Err(DecodeError::TooLong);
        }
    }
    let opcode = at(i)?;
    let vex = matches!(opcode, 0xc4 | 0xc5) && (long || at(i + 1)? & 0xc0 == 0xc0);
    let insn = if vex { decode_vex(bytes, i, &p, mode)? } else { decode_legacy(bytes, i, &p, mode)? };
    if p.lock {
        return Err(DecodeError::Invalid);
    }
    Ok(insn)
}

/// ModRM fields: mod, reg, rm.
fn modrm(b: u8) -> (u8, u8, u8) {
    (b >> 6, (b >> 3) & 7, b & 7)
}

/// The memory operand starting at the ModRM byte `bytes[at]`; the
/// instruction's length with it.
fn mem_at(bytes: &[u8], at: usize, p: &Prefixes, xb: u8, mode: CpuMode, size: u8) -> Result<(Mem, u8), DecodeError> {
    let mut legacy = [0u8; 2];
    let mut n = 0;
    for b in [p.seg, p.addr.then_some(0x67)].into_iter().flatten() {
        legacy[n] = b;
        n += 1;
    }
    let (m, used) = memory_operand(&legacy[..n], xb, &bytes[at..], mode, size).ok_or(DecodeError::Truncated)?;
    let len = at + used;
    if len > MAX_LEN {
        return Err(DecodeError::TooLong);
    }
    Ok((m, len as u8))
}

fn insn(op: ControlOp, len: usize) -> ControlInsn {
    ControlInsn {
        op,
        len: len as u8,
        mem: None,
        dst: 0,
        src: 0,
        src1: 0,
        vex: false,
        wide: false,
        w: false,
        opsize: 0,
        high8: false,
    }
}

fn decode_legacy(bytes: &[u8], i: usize, p: &Prefixes, mode: CpuMode) -> Result<ControlInsn, DecodeError> {
    let at = |i: usize| bytes.get(i).copied().ok_or(DecodeError::Truncated);
    let opcode = at(i)?;
    let unsupported = Err(DecodeError::Unsupported { opcode });
    let (r, x, b) = ((p.rex >> 2) & 1, (p.rex >> 1) & 1, p.rex & 1);
    let w = p.rex & 8 != 0;
    // The size of a general-purpose register operand.
    let gpr_opsize = if w {
        8
    } else if p.p66 != (mode == CpuMode::Bits16) {
        2
    } else {
        4
    };
    let memory = |at: usize, size: u8, op: ControlOp| -> Result<ControlInsn, DecodeError> {
        let (m, len) = mem_at(bytes, at, p, x << 1 | b, mode, size)?;
        Ok(ControlInsn { mem: Some(m), w, ..insn(op, usize::from(len)) })
    };
    // The x87 environment's format: 16-bit with a 16-bit operand size,
    // else 32-bit (also in 64-bit mode, where REX.W does not change it).
    let env_opsize = if p.p66 == (mode == CpuMode::Bits16) { 4u8 } else { 2 };
    let environment = |op: ControlOp| -> Result<ControlInsn, DecodeError> {
        // FNSAVE's 94 and 108 bytes do not fit a memory operand's size
        // field: 0, as for the XSAVE area.
        let size = match op {
            ControlOp::Fnsave | ControlOp::Frstor => 0,
            _ if env_opsize == 4 => 28,
            _ => 14,
        };
        Ok(ControlInsn { opsize: env_opsize, ..memory(i + 1, size, op)? })
    };
    match opcode {
        0x9b => Ok(insn(ControlOp::Fwait, i + 1)),
        0xd9 | 0xdb | 0xdd | 0xdf => {
            let m = at(i + 1)?;
            let (md, reg, _) = modrm(m);
            match (opcode, md == 3, reg, m) {
                (0xd9, false, 5, _) => memory(i + 1, 2, ControlOp::Fldcw),
                (0xd9, false, 7, _) => memory(i + 1, 2, ControlOp::Fnstcw),
                (0xdd, false, 7, _) => memory(i + 1, 2, ControlOp::Fnstsw),
                (0xd9, false, 4, _) => environment(ControlOp::Fldenv),
                (0xd9, false, 6, _) => environment(ControlOp::Fnstenv),
                (0xdd, false, 4, _) => environment(ControlOp::Frstor),
                (0xdd, false, 6, _) => environment(ControlOp::Fnsave),
                (0xdb, true, _, 0xe2) => Ok(insn(ControlOp::Fnclex, i + 2)),
                (0xdb, true, _, 0xe3) => Ok(insn(ControlOp::Fninit, i + 2)),
                (0xdf, true, _, 0xe0) => Ok(insn(ControlOp::FnstswAx, i + 2)),
                _ => unsupported,
            }
        }
        0x0f if at(i + 1)? == 0x38 => {
            // CRC32 is F2 0F 38 F0/F1 (the last of F2 and F3 counts); the
            // same opcodes without F2 are MOVBE, which KVM emulates.
            let op3 = at(i + 2)?;
            if p.rep != Some(0xf2) || !matches!(op3, 0xf0 | 0xf1) {
                return Err(DecodeError::Unsupported { opcode: op3 });
            }
            let m = at(i + 3)?;
            let (md, reg, rm) = modrm(m);
            let size = if op3 == 0xf0 { 1 } else { gpr_opsize };
            let x = if md == 3 {
                let rm = rm | b << 3;
                let high8 = size == 1 && p.rex == 0 && rm >= 4;
                let src = if high8 { rm - 4 } else { rm };
                ControlInsn { src, high8, w, ..insn(ControlOp::Crc32, i + 4) }
            } else {
                memory(i + 3, size, ControlOp::Crc32)?
            };
            Ok(ControlInsn { dst: reg | r << 3, opsize: size, ..x })
        }
        0x0f => {
            let op2 = at(i + 1)?;
            let m = at(i + 2)?;
            let (md, reg, rm) = modrm(m);
            let (reg, rm) = (reg | r << 3, rm | b << 3);
            let regs = |op: ControlOp, dst: u8, src: u8| Ok(ControlInsn { dst, src, w, ..insn(op, i + 3) });
            // The mandatory prefix: none, 66, F3 or F2.
            let mp = match (p.rep, p.p66) {
                (Some(0xf3), _) => 0xf3,
                (Some(_), _) => 0xf2,
                (None, true) => 0x66,
                (None, false) => 0,
            };
            match (op2, mp, md == 3) {
                (0x01, 0, true) if m == 0xd0 => Ok(insn(ControlOp::Xgetbv, i + 3)),
                (0x01, 0, true) if m == 0xca => Ok(insn(ControlOp::Clac, i + 3)),
                (0x01, 0, true) if m == 0xcb => Ok(insn(ControlOp::Stac, i + 3)),
                (0x00, _, _) if reg & 7 == 4 || reg & 7 == 5 => {
                    let op = if reg & 7 == 4 { ControlOp::Verr } else { ControlOp::Verw };
                    if md == 3 { regs(op, 0, rm) } else { memory(i + 2, 2, op) }
                }
                (0xb8, 0xf3, _) => {
                    let x = if md == 3 {
                        regs(ControlOp::Popcnt, reg, rm)?
                    } else {
                        memory(i + 2, gpr_opsize, ControlOp::Popcnt)?
                    };
                    Ok(ControlInsn { dst: reg, opsize: gpr_opsize, ..x })
                }
                (0x02 | 0x03, _, _) => {
                    let op = if op2 == 0x03 { ControlOp::Lsl } else { ControlOp::Lar };
                    // The selector is 16 bits, from a register or memory.
                    let x = if md == 3 { regs(op, reg, rm)? } else { memory(i + 2, 2, op)? };
                    Ok(ControlInsn { dst: reg, opsize: gpr_opsize, ..x })
                }
                (0xae, 0, false) => match reg & 7 {
                    2 => memory(i + 2, 4, ControlOp::Ldmxcsr),
                    3 => memory(i + 2, 4, ControlOp::Stmxcsr),
                    4 => memory(i + 2, 0, ControlOp::Xsave),
                    5 => memory(i + 2, 0, ControlOp::Xrstor),
                    6 => memory(i + 2, 0, ControlOp::Xsaveopt),
                    _ => unsupported,
                },
                (0xc7, 0, false) if reg & 7 == 4 => memory(i + 2, 0, ControlOp::Xsavec),
                (0x10 | 0x28, 0 | 0x66, true) | (0x6f, 0x66 | 0xf3, true) => regs(ControlOp::MovReg, reg, rm),
                (0x11 | 0x29, 0 | 0x66, true) | (0x7f, 0x66 | 0xf3, true) => regs(ControlOp::MovReg, rm, reg),
                (0x57, 0 | 0x66, _) | (0xef, 0x66, _) => {
                    if md == 3 {
                        Ok(ControlInsn { src1: reg, ..regs(ControlOp::Xor, reg, rm)? })
                    } else {
                        let x = memory(i + 2, 16, ControlOp::Xor)?;
                        Ok(ControlInsn { dst: reg, src1: reg, ..x })
                    }
                }
                (0x6e, 0x66, true) => regs(ControlOp::MovdToXmm, reg, rm),
                (0x7e, 0x66, true) => regs(ControlOp::MovdFromXmm, rm, reg),
                (0x7e, 0xf3, true) => regs(ControlOp::MovqReg, reg, rm),
                (0xd6, 0x66, true) => regs(ControlOp::MovqReg, rm, reg),
                _ => Err(DecodeError::Unsupported { opcode: op2 }),
            }
        }
        _ => unsupported,
    }
}

fn decode_vex(bytes: &[u8], i: usize, p: &Prefixes, mode: CpuMode) -> Result<ControlInsn, DecodeError> {
    let at = |i: usize| bytes.get(i).copied().ok_or(DecodeError::Truncated);
    // VEX after 66, F2, F3 or REX is #UD.
    if p.p66 || p.rep.is_some() || p.rex != 0 {
        return Err(DecodeError::Invalid);
    }
    let long = mode == CpuMode::Bits64;
    let b1 = at(i + 1)?;
    let (rxb, w, vvvv, l, pp, map, next) = if at(i)? == 0xc5 {
        ((!b1 >> 5) & 4, false, (!b1 >> 3) & 0xf, b1 & 4 != 0, b1 & 3, 1, i + 2)
    } else {
        let b2 = at(i + 2)?;
        ((!b1 >> 5) & 7, b2 & 0x80 != 0, (!b2 >> 3) & 0xf, b2 & 4 != 0, b2 & 3, b1 & 0x1f, i + 3)
    };
    // Outside 64-bit mode only eight registers: R, X, B and vvvv's top bit
    // are ignored.
    let (rxb, vvvv, w) = if long { (rxb, vvvv, w) } else { (0, vvvv & 7, false) };
    let opcode = at(next)?;
    if map != 1 {
        return Err(DecodeError::Unsupported { opcode });
    }
    let base = ControlInsn { vex: true, wide: l, w, ..insn(ControlOp::Vzeroupper, next + 1) };
    if opcode == 0x77 && pp == 0 {
        if vvvv != 0 {
            return Err(DecodeError::Invalid);
        }
        return Ok(ControlInsn { op: if l { ControlOp::Vzeroall } else { ControlOp::Vzeroupper }, ..base });
    }
    let m = at(next + 1)?;
    let (md, reg, rm) = modrm(m);
    let (reg, rm) = (reg | (rxb & 4) << 1, rm | (rxb & 1) << 3);
    let xb = rxb & 3;
    let len = next + 2;
    let regs = |op: ControlOp, dst: u8, src: u8| ControlInsn { op, dst, src, len: len as u8, ..base };
    // Two-operand forms take no vvvv register: it must be 1111.
    let two = |insn: ControlInsn| if vvvv != 0 { Err(DecodeError::Invalid) } else { Ok(insn) };
    let narrow = |insn: ControlInsn| if l { Err(DecodeError::Invalid) } else { two(insn) };
    match (opcode, pp, md == 3) {
        (0xae, 0, false) if reg & 7 == 2 || reg & 7 == 3 => {
            let op = if reg & 7 == 2 { ControlOp::Ldmxcsr } else { ControlOp::Stmxcsr };
            let (mem, len) = mem_at(bytes, next + 1, p, xb, mode, 4)?;
            narrow(ControlInsn { op, mem: Some(mem), len, ..base })
        }
        (0x10 | 0x28, 0 | 1, true) | (0x6f, 1 | 2, true) => two(regs(ControlOp::MovReg, reg, rm)),
        (0x11 | 0x29, 0 | 1, true) | (0x7f, 1 | 2, true) => two(regs(ControlOp::MovReg, rm, reg)),
        (0x57, 0 | 1, _) | (0xef, 1, _) => {
            if md == 3 {
                Ok(ControlInsn { src1: vvvv, ..regs(ControlOp::Xor, reg, rm) })
            } else {
                let (mem, len) = mem_at(bytes, next + 1, p, xb, mode, if l { 32 } else { 16 })?;
                Ok(ControlInsn { op: ControlOp::Xor, mem: Some(mem), len, dst: reg, src1: vvvv, ..base })
            }
        }
        (0x6e, 1, true) => narrow(regs(ControlOp::MovdToXmm, reg, rm)),
        (0x7e, 1, true) => narrow(regs(ControlOp::MovdFromXmm, rm, reg)),
        (0x7e, 2, true) => narrow(regs(ControlOp::MovqReg, reg, rm)),
        (0xd6, 1, true) => narrow(regs(ControlOp::MovqReg, rm, reg)),
        _ => Err(DecodeError::Unsupported { opcode }),
    }
}
