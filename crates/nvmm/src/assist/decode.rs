//! The instruction decoder: a finite-state machine over the bytes of the
//! instruction behind a memory exit, like NVMM's (legacy prefixes → REX →
//! VEX → opcode → ModRM → SIB → displacement → immediate), driven by opcode
//! tables.
//!
//! It decodes what the emulator executes, and rejects everything else with
//! [`DecodeError`] rather than guessing: NVMM's instructions (MOV, MOVZX,
//! OR/AND/XOR/SUB/CMP, TEST, XCHG, MOVS, CMPS, STOS, LODS) plus ADD, ADC and
//! SBB, CMPXCHG, CMPXCHG8B/16B, XADD, INT3, the x87 loads and stores (FLD,
//! FST, FSTP of m32/m64/m80, FILD and FISTP of m16/m32/m64), and the SSE and
//! AVX moves (MOVD, MOVQ, MOVDQA, MOVDQU, MOVAPS, MOVUPS, MOVNTDQ, with VEX
//! 128- and 256-bit forms). Immediates are sign-extended as the CPU does,
//! RIP-relative displacements are relative to the next instruction, and the
//! default segment of BP/SP-based addresses is SS.
//!
//! Most instructions behind MMIO exits never enter the machine: given the
//! 15 bytes an exit carries, the *common path* (`common.rs`) decodes the
//! ALU-like forms (MOV, MOVZX, ALU, TEST, XCHG, CMPXCHG, XADD with a memory
//! operand), the string instructions and the 2-byte-VEX moves, after at
//! most REP, 66 and REX, straight from the bytes with per-opcode templates;
//! everything else (other prefixes, 16-bit code, fewer bytes, errors) goes
//! to the machine. The path gives the machine's answer or none, which the
//! tests check over every opcode, ModRM, SIB and prefix combination.
#![forbid(unsafe_code)]

pub use crate::x86::mode::CpuMode;

/// Longest x86 instruction.
pub const MAX_LEN: usize = 15;

/// ALU operations with the same shape (`op r/m, r`, `op r, r/m`, group 1).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum AluOp {
    /// ADD.
    Add,
    /// OR.
    Or,
    /// ADC.
    Adc,
    /// SBB.
    Sbb,
    /// AND.
    And,
    /// SUB.
    Sub,
    /// XOR.
    Xor,
    /// CMP (flags only).
    Cmp,
}

/// SSE/AVX moves.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum VecMove {
    /// MOVUPS.
    Movups,
    /// MOVAPS (16- or 32-byte aligned).
    Movaps,
    /// MOVDQA (aligned).
    Movdqa,
    /// MOVDQU.
    Movdqu,
    /// MOVNTDQ (store, aligned).
    Movntdq,
    /// MOVD (32 bits, zero-extended into the XMM register on loads).
    Movd,
    /// MOVQ (64 bits, zero-extended into the XMM register on loads).
    Movq,
}

impl VecMove {
    /// Whether the memory operand must be aligned to its size.
    pub fn aligned(self) -> bool {
        matches!(self, VecMove::Movaps | VecMove::Movdqa | VecMove::Movntdq)
    }
}

/// x87 memory forms.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum X87Op {
    /// FLD m32/m64/m80: push a floating-point value.
    Fld,
    /// FST m32/m64: store ST0.
    Fst,
    /// FSTP m32/m64/m80: store ST0 and pop.
    Fstp,
    /// FILD m16/m32/m64: push an integer.
    Fild,
    /// FISTP m16/m32/m64: store ST0 as an integer and pop.
    Fistp,
}

/// What the instruction does.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Op {
    /// MOV.
    Mov,
    /// MOVZX (source size in the memory/register operand).
    Movzx,
    /// ADD, OR, ADC, SBB, AND, SUB, XOR, CMP.
    Alu(AluOp),
    /// TEST (flags only).
    Test,
    /// XCHG (always locked with a memory operand).
    Xchg,
    /// MOVS.
    Movs,
    /// CMPS.
    Cmps,
    /// STOS.
    Stos,
    /// LODS.
    Lods,
    /// CMPXCHG.
    Cmpxchg,
    /// CMPXCHG8B (operand size 8) or CMPXCHG16B (16).
    CmpxchgNb,
    /// XADD.
    Xadd,
    /// INT3.
    Int3,
    /// An x87 load or store.
    X87(X87Op),
    /// An SSE or AVX move.
    Vec(VecMove),
}

/// A register operand.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Reg {
    /// A general-purpose register: number 0-15 (RAX..R15), size in bytes,
    /// and whether it is AH/CH/DH/BH (bits 15:8 of register `num - 4`).
    Gpr {
        /// Register number.
        num: u8,
        /// Size in bytes.
        size: u8,
        /// AH, CH, DH or BH.
        high8: bool,
    },
    /// XMM0-XMM15 (or YMM, by the instruction's operand size).
    Xmm(u8),
    /// The top of the x87 stack.
    St0,
}

/// An operand.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Operand {
    /// No operand.
    None,
    /// A register.
    Reg(Reg),
    /// Memory.
    Mem(Mem),
    /// An immediate, sign- or zero-extended to the operand size as the
    /// instruction defines.
    Imm(u64),
}

/// REP prefixes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Rep {
    /// None.
    None,
    /// F3: REP / REPE.
    Rep,
    /// F2: REPNE.
    Repne,
}

/// Why bytes were not decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum DecodeError {
    /// The bytes end before the instruction does.
    Truncated,
    /// More than 15 bytes.
    TooLong,
    /// Not an instruction the emulator supports (`opcode` is the first
    /// opcode byte).
    Unsupported {
        /// First opcode byte (after prefixes).
        opcode: u8,
    },
    /// An encoding the CPU rejects (#UD): bad LOCK, bad VEX, register form
    /// of a memory-only instruction.
    Invalid,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "the instruction bytes end early"),
            DecodeError::TooLong => write!(f, "instruction longer than 15 bytes"),
            DecodeError::Unsupported { opcode } => {
                write!(f, "unsupported instruction (opcode {opcode:#04x}): the assists do not emulate it")
            }
            DecodeError::Invalid => write!(f, "invalid encoding (the CPU raises #UD)"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Mask of `size` bytes.
#[inline(always)]
pub fn mask(size: u8) -> u64 {
    if size >= 8 { u64::MAX } else { (1u64 << (8 * u32::from(size))) - 1 }
}

/// Decodes the instruction at the start of `bytes` in `mode`.
///
/// Bytes past the instruction are ignored; at most [`MAX_LEN`] are looked
/// at.
///
/// # Errors
///
/// [`DecodeError::Truncated`] if `bytes` ends before the instruction does,
/// [`DecodeError::TooLong`] past 15 bytes, [`DecodeError::Unsupported`] for
/// an instruction the emulator does not execute, [`DecodeError::Invalid`]
/// for an encoding the CPU rejects.
#[inline]
pub fn decode(bytes: &[u8], mode: CpuMode) -> Result<Instruction, DecodeError> {
    match common::decode(bytes, mode) {
        Some(insn) => Ok(insn),
        None => fsm::decode(bytes, mode),
    }
}

/// The memory operand of an instruction the machine does not decode
/// itself (the FPU, MXCSR and XSAVE-family instructions): `modrm` holds the
/// ModRM byte and what follows it; `legacy` the segment-override and
/// address-size prefixes in front of the instruction; `rex` its REX (or
/// VEX) X and B bits. Decoded with the machine's own ModRM, SIB and
/// displacement grammar, as the memory operand of `mov r32, r/m32`. Returns
/// the operand with its size set to `size`, and how many bytes ModRM and
/// the rest took. `None` for a register form, bytes that end early, or an
/// instruction longer than 15 bytes.
pub fn memory_operand(legacy: &[u8], rex: u8, modrm: &[u8], mode: CpuMode, size: u8) -> Option<(Mem, usize)> {
    // Room for the opcode and ModRM behind the prefixes.
    if modrm.first().is_none_or(|m| m >> 6 == 3) || legacy.len() > MAX_LEN - 2 {
        return None;
    }
    let mut bytes = [0u8; MAX_LEN];
    let mut n = 0;
    for &p in legacy {
        bytes[n] = p;
        n += 1;
    }
    if mode == CpuMode::Bits64 && rex & 3 != 0 {
        bytes[n] = 0x40 | (rex & 3);
        n += 1;
    }
    let head = n;
    bytes[n] = 0x8b;
    n += 1;
    let rest = modrm.len().min(MAX_LEN - n);
    bytes[n..n + rest].copy_from_slice(&modrm[..rest]);
    let insn = fsm::decode(&bytes[..n + rest], mode).ok()?;
    let m = insn.memory()?;
    let used = usize::from(insn.len()) - head - 1;
    Some((Mem::new(m.seg(), m.base(), m.index(), m.disp(), m.rip_relative(), m.addr_size(), size), used))
}

mod common;
mod control;
mod fsm;
mod instruction;
mod mem;
mod tables;

pub use control::{ControlInsn, ControlOp, decode_control};
pub use instruction::{Instruction, Shape};
pub use mem::Mem;

#[cfg(test)]
mod tests;
