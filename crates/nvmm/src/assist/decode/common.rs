//! The decoder's common path: the instructions behind most MMIO exits,
//! decoded straight through with a few table loads.
//!
//! An instruction takes this path when, in 32- or 64-bit code and given
//! the [`MAX_LEN`] bytes an exit carries, it is
//! - at most REP (F2 or F3), 66 and REX, in that order, then a one-byte or
//!   0F opcode of the `op r/m, reg`, `op reg, r/m` or `op r/m, imm` forms
//!   (MOV, MOVZX, the ALU operations, TEST, XCHG, CMPXCHG, XADD) with a
//!   memory operand, or a string instruction (MOVS, CMPS, STOS, LODS);
//! - or a 2-byte VEX (C5) move of an XMM or YMM register (MOVUPS, MOVAPS,
//!   MOVDQA, MOVDQU, MOVNTDQ, MOVD, MOVQ).
//!
//! For those the states of the machine ([`fsm`](super::fsm)) have nothing
//! left to decide that a table cannot say ahead of time: what depends on
//! the opcode and the operand size is a precomputed template, and the path
//! only takes the operands apart. Everything else (other prefixes or
//! orders, 16-bit code, register operands, group encodings that are not
//! instructions, fewer bytes) goes to the machine, which stays the
//! reference: the path gives exactly the machine's answer or none at all,
//! which the tests check over every opcode, ModRM, SIB and prefix.
#![forbid(unsafe_code)]

use super::instruction::{Instruction, OPS, Shape, field, op_number};
use super::tables::{
    DISP32_BY_MOD, Form, Imm, Mandatory, ONE_BYTE, REX_B, REX_R, REX_W, REX_X, TWO_BYTE, group_op, vec_move,
};
use super::{CpuMode, MAX_LEN, Op};
use crate::x86::state::Seg;

/// Operand sizes by size index (see [`Opcode`]): none, 66, REX.W, both
/// (REX.W wins).
const FULL_SIZES: [u8; 4] = [4, 2, 8, 8];

/// Marks, in [`Opcode::ops`], a ModRM.reg with which the opcode is not an
/// instruction of the common path.
const NO_OP: u8 = u8::MAX;

/// One opcode, as the common path needs it. What depends on the operand
/// size is laid out by the size's index: REX.W times 2, plus 1 with a 66
/// prefix.
#[derive(Clone, Copy)]
struct Opcode {
    /// By size index: the SHAPE, OPSIZE and MEM_SIZE fields, in place.
    bits: [u64; 4],
    /// The operation's number by ModRM.reg (the same eight times unless
    /// the opcode is a group), [`NO_OP`] for none.
    ops: [u8; 8],
    /// By size index: the operand size.
    size: [u8; 4],
    /// By size index: the immediate's bytes.
    imm: [u8; 4],
    /// All ones when ModRM.reg names a register operand, else 0.
    reg_mask: u64,
    /// A string instruction: no ModRM, the operands are in `bits`.
    string: bool,
}

const NOT_COMMON: Opcode =
    Opcode { bits: [0; 4], ops: [NO_OP; 8], size: [0; 4], imm: [0; 4], reg_mask: 0, string: false };

/// The one-byte map (`0..256`) and the 0F map (`256..512`), as far as the
/// common path goes: the ALU-like forms and the string instructions.
/// (82, which only 32-bit code has, is left to the machine.)
static OPCODES: [Opcode; 512] = {
    let mut t = [NOT_COMMON; 512];
    let mut i = 0;
    while i < 512 {
        let entry = if i < 256 { ONE_BYTE[1][i] } else { TWO_BYTE[i - 256] };
        if entry.form.is_alu_like() {
            let mut x = Opcode { ops: [entry.op; 8], ..NOT_COMMON };
            if entry.reg_op {
                let mut reg = 0;
                while reg < 8 {
                    x.ops[reg] = match group_op(entry.group, reg as u8) {
                        Some(op) => op,
                        None => NO_OP,
                    };
                    reg += 1;
                }
            }
            let mut k = 0;
            while k < 4 {
                let size = if entry.byte { 1 } else { FULL_SIZES[k] };
                let mem_size = if entry.mem_size != 0 { entry.mem_size } else { size };
                x.size[k] = size;
                x.bits[k] = (entry.form as u64) << field::SHAPE
                    | (size as u64) << field::OPSIZE
                    | (mem_size as u64) << field::MEM_SIZE;
                x.imm[k] = match entry.imm {
                    Imm::None => 0,
                    Imm::Ib => 1,
                    Imm::Iz if size == 2 => 2,
                    Imm::Iz => 4,
                };
                k += 1;
            }
            if !matches!(entry.form, Form::RmImm) {
                x.reg_mask = u64::MAX;
            }
            t[i] = x;
        } else if matches!(entry.form, Form::Str) {
            // STOS writes ES:rDI (no override here); the others name
            // DS:rSI, MOVS and CMPS with ES:rDI too.
            let (shape, seg, base) = match OPS[entry.op as usize] {
                Op::Movs => (Shape::DiMem, Seg::Ds, 6),
                Op::Cmps => (Shape::MemDi, Seg::Ds, 6),
                Op::Stos => (Shape::MemReg, Seg::Es, 7),
                _ => (Shape::RegMem, Seg::Ds, 6),
            };
            let mut x = Opcode { ops: [entry.op; 8], string: true, ..NOT_COMMON };
            let mut k = 0;
            while k < 4 {
                let size = if entry.byte { 1 } else { FULL_SIZES[k] };
                x.bits[k] = (shape as u64) << field::SHAPE
                    | (size as u64) << field::OPSIZE
                    | (seg as u64) << field::MEM_SEG
                    | (field::PRESENT | base) << field::BASE
                    | (size as u64) << field::MEM_SIZE;
                k += 1;
            }
            t[i] = x;
        }
        i += 1;
    }
    t
};

/// The bytes that may start an instruction of the common path as a
/// prefix: F2, F3, 66, REX (40-4F, only a prefix in 64-bit mode) and C5.
static PREFIX: [bool; 256] = {
    let mut t = [false; 256];
    t[0xf2] = true;
    t[0xf3] = true;
    t[0x66] = true;
    t[0xc5] = true;
    let mut rex = 0x40;
    while rex < 0x50 {
        t[rex] = true;
        rex += 1;
    }
    t
};

/// A VEX move's fields by VEX.pp (the mandatory prefix), the opcode and
/// VEX.L: SHAPE, OP, OPSIZE and MEM_SIZE in place, 0 where 2-byte VEX
/// (W clear) has no such move or the length is #UD (MOVD/MOVQ with L).
static VEX_MOVES: [[[u64; 2]; 256]; 4] = {
    let mut t = [[[0; 2]; 256]; 4];
    let mandatory = [Mandatory::None, Mandatory::P66, Mandatory::F3, Mandatory::F2];
    let mut pp = 0;
    while pp < 4 {
        let mut opcode = 0;
        while opcode < 256 {
            if let Some(form) = vec_move(mandatory[pp], opcode as u8, false) {
                let shape = if form.to_mem { Shape::MemReg } else { Shape::RegMem };
                let mut l = 0;
                while l < 2 {
                    let size = match (form.fixed_size, l) {
                        (0, 0) => 16,
                        (0, _) => 32,
                        (n, _) => n,
                    };
                    if form.fixed_size == 0 || l == 0 {
                        t[pp][opcode][l] = (shape as u64) << field::SHAPE
                            | (op_number(Op::Vec(form.op)) as u64) << field::OP
                            | (size as u64) << field::OPSIZE
                            | (size as u64) << field::MEM_SIZE;
                    }
                    l += 1;
                }
            }
            opcode += 1;
        }
        pp += 1;
    }
    t
};

/// Decodes the instruction at the start of `bytes` if it is on the
/// common path; `None` sends it to the machine. The path wants the usual
/// [`MAX_LEN`] bytes (what an exit carries); fewer also go to the machine.
///
/// Every byte is read where it is, with one load, and every field comes
/// from a table or a little arithmetic: the path is a straight line but
/// for the few choices between encodings (a prefix or not, SIB or not,
/// RIP-relative or not) that code makes the same way each time it runs.
#[inline(always)]
pub(super) fn decode(bytes: &[u8], mode: CpuMode) -> Option<Instruction> {
    let b: &[u8; MAX_LEN] = bytes.get(..MAX_LEN)?.try_into().ok()?;
    if mode == CpuMode::Bits16 {
        return None;
    }
    let long = mode == CpuMode::Bits64;
    let addr_size: u64 = if long { 2 } else { 1 };
    // F2 or F3 (REP), 66, then REX (kept with its 4 in place, so that
    // none is 0); or C5, 2-byte VEX (outside 64-bit mode only with
    // ModRM.mod 11 in its place, else LDS).
    let mut pos = 0;
    let mut rep = 0;
    let mut o16 = false;
    let mut rex = 0;
    if PREFIX[usize::from(b[0])] {
        if b[0] == 0xc5 {
            return if long || b[1] >= 0xc0 { vex(b, long) } else { None };
        }
        if b[0] | 1 == 0xf3 {
            rep = 2 - u64::from(b[0] & 1);
            pos = 1;
        }
        o16 = b[pos] == 0x66;
        pos += usize::from(o16);
        if long && b[pos] & 0xf0 == 0x40 {
            rex = b[pos];
            pos += 1;
        }
    }
    // The opcode, one byte or 0F and one.
    let mut index = usize::from(b[pos]);
    if index == 0x0f {
        pos += 1;
        index = 0x100 | usize::from(b[pos]);
    }
    let opcode = &OPCODES[index];
    let k = usize::from((rex & REX_W) >> 2) | usize::from(o16);
    if opcode.string {
        // MOVS, CMPS, STOS, LODS: the operands are implicit (in the
        // template), and REP counts.
        let bits = addr_size << field::ADDR_SIZE
            | (pos + 1) as u64
            | rep << field::REP
            | opcode.bits[k]
            | u64::from(opcode.ops[0]) << field::OP;
        return Some(Instruction { bits, disp: 0, imm: 0 });
    }
    // ModRM, with a memory operand.
    let modrm = b[pos + 1];
    let reg = modrm >> 3 & 7;
    let op = opcode.ops[usize::from(reg)];
    if modrm >= 0xc0 || op == NO_OP {
        return None;
    }
    let (mem, disp, pos) = memory(b, pos + 2, modrm, rex, long);

    // The immediate.
    let size = opcode.size[k];
    let imm_bytes = usize::from(opcode.imm[k]);
    let imm = signed(b, pos, imm_bytes) as u64 & u64::MAX >> (64 - 8 * u32::from(size));
    let len = pos + imm_bytes;

    // The register operand: AH, CH, DH, BH are byte registers 4-7 without
    // REX.
    let num = reg | (rex & REX_R) << 1;
    let high8 = u8::from(size == 1) & u8::from(rex == 0) & (num >> 2);
    let reg_bits = u64::from(num - 4 * high8) << field::REG_NUM | u64::from(high8) << field::HIGH8;
    let bits = addr_size << field::ADDR_SIZE
        | len as u64
        | opcode.bits[k]
        | u64::from(op) << field::OP
        | reg_bits & opcode.reg_mask
        | mem;
    Some(Instruction { bits, disp, imm })
}

/// A 2-byte VEX move (C5): an XMM or YMM register and memory.
#[inline(always)]
fn vex(b: &[u8; MAX_LEN], long: bool) -> Option<Instruction> {
    let p = b[1];
    // VEX.R is stored inverted (and ignored outside 64-bit mode); VEX.vvvv
    // must be 1111 for moves.
    let rex = if long { 0x40 | (!p >> 5 & REX_R) } else { 0 };
    let template = VEX_MOVES[usize::from(p & 3)][usize::from(b[2])][usize::from(p >> 2 & 1)];
    let modrm = b[3];
    if template == 0 || p >> 3 & 0xf != 0xf || modrm >= 0xc0 {
        return None;
    }
    let (mem, disp, len) = memory(b, 4, modrm, rex, long);
    let num = (modrm >> 3 & 7) | (rex & REX_R) << 1;
    let addr_size: u64 = if long { 2 } else { 1 };
    let bits = addr_size << field::ADDR_SIZE
        | 1 << field::VEX
        | len as u64
        | template
        | field::KIND_XMM << field::REG_KIND
        | u64::from(num) << field::REG_NUM
        | mem;
    Some(Instruction { bits, disp, imm: 0 })
}

/// The memory operand of ModRM `modrm` (mod not 11) with 32/64-bit
/// addressing, its SIB and displacement from `pos` on: the fields of the
/// operand and its segment, the displacement, and where the bytes after
/// it start.
///
/// Base 5 with mod 0 means no base and a 32-bit displacement:
/// RIP-relative in 64-bit mode after ModRM, absolute after SIB. BP and
/// SP bases mean SS.
#[inline(always)]
fn memory(b: &[u8; MAX_LEN], mut pos: usize, modrm: u8, rex: u8, long: bool) -> (u64, i64, usize) {
    let md = modrm >> 6;
    let rm = modrm & 7;
    let mut disp_bytes = usize::from(DISP32_BY_MOD[usize::from(md)]);
    let mut mem;
    let mut ss_default = false;
    if rm == 4 {
        let sib = b[pos];
        pos += 1;
        let index = (sib >> 3 & 7) | (rex & REX_X) << 2;
        mem = if index != 4 {
            (field::PRESENT | u64::from(index)) << field::INDEX | u64::from(sib >> 6) << field::SCALE
        } else {
            0
        };
        if sib & 7 == 5 && md == 0 {
            disp_bytes = 4;
        } else {
            let base = (sib & 7) | (rex & REX_B) << 3;
            mem |= (field::PRESENT | u64::from(base)) << field::BASE;
            ss_default = base & 0xe == 4;
        }
    } else if rm == 5 && md == 0 {
        disp_bytes = 4;
        mem = u64::from(long) << field::RIP;
    } else {
        let base = rm | (rex & REX_B) << 3;
        mem = (field::PRESENT | u64::from(base)) << field::BASE;
        ss_default = base & 0xe == 4;
    }
    let seg = if ss_default { Seg::Ss } else { Seg::Ds };
    let disp = signed(b, pos, disp_bytes);
    (mem | (seg as u64) << field::MEM_SEG, disp, pos + disp_bytes)
}

/// `n` (0, 1, 2 or 4) bytes of `b` from `at`, sign-extended (0 for none).
#[inline(always)]
fn signed(b: &[u8; MAX_LEN], at: usize, n: usize) -> i64 {
    // At most 2 prefixes, 2 opcode bytes, ModRM, SIB and a 4-byte
    // displacement come first, so four bytes from a displacement or an
    // immediate are always there.
    let Some(&[b0, b1, b2, b3]) = b.get(at..at + 4) else { return 0 };
    let shift = 64 - 8 * n as u32;
    let v = (i64::from(i32::from_le_bytes([b0, b1, b2, b3])) << (shift & 63)) >> (shift & 63);
    v & -i64::from(n != 0)
}
