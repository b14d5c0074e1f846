//! A decoded instruction, packed into three words.
//!
//! Everything but the displacement and the immediate fits in one 64-bit
//! word of small fields, which the decoder assembles in a register with
//! shifts and ORs, and the accessors take apart. (The fields are exact
//! for every instruction the decoder accepts; which ones mean something
//! depends on [`Shape`].)
#![forbid(unsafe_code)]

use super::{AluOp, Mem, Op, Operand, Reg, Rep, VecMove, X87Op};
use crate::x86::state::Seg;

/// Where an instruction's operands are: which of [`Instruction::mem`],
/// [`Instruction::reg`] and [`Instruction::imm`] are its destination and
/// source.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[repr(u8)]
pub enum Shape {
    /// Destination memory, source register.
    MemReg,
    /// Destination register, source memory.
    RegMem,
    /// Destination memory, source immediate.
    MemImm,
    /// Memory only (CMPXCHG8B/16B).
    Mem,
    /// Destination ES:rDI, source memory (MOVS).
    DiMem,
    /// Destination memory, source ES:rDI (CMPS).
    MemDi,
    /// No operands (INT3).
    None,
}

const SHAPES: [Shape; 8] =
    [Shape::MemReg, Shape::RegMem, Shape::MemImm, Shape::Mem, Shape::DiMem, Shape::MemDi, Shape::None, Shape::None];

/// Bit positions of the fields of [`Instruction::bits`]. From
/// [`MEM`](field::MEM) on, the fields are those of [`Mem`] in the same
/// layout.
pub(super) mod field {
    use super::super::mem::field as mem;

    /// Length (4 bits).
    pub const LEN: u32 = 0;
    /// REP prefix (2 bits: none, REP, REPNE).
    pub const REP: u32 = 4;
    /// LOCK prefix.
    pub const LOCK: u32 = 6;
    /// VEX-encoded.
    pub const VEX: u32 = 7;
    /// Segment override (3 bits: 0 for none, else the segment plus 1).
    pub const SEG_OVERRIDE: u32 = 8;
    /// Shape (3 bits).
    pub const SHAPE: u32 = 13;
    /// Operation (5 bits, see `OPS`).
    pub const OP: u32 = 16;
    /// Operand size in bytes (6 bits).
    pub const OPSIZE: u32 = 21;
    /// Register kind (2 bits: GPR, XMM, ST0).
    pub const REG_KIND: u32 = 27;
    /// Register number (4 bits).
    pub const REG_NUM: u32 = 29;
    /// AH, CH, DH or BH.
    pub const HIGH8: u32 = 33;
    /// The memory operand's fields start here.
    pub const MEM: u32 = 34;
    /// Segment of the memory operand (3 bits).
    pub const MEM_SEG: u32 = MEM + mem::SEG;
    /// Base register (5 bits: bit 4 says present, bits 0-3 the number).
    pub const BASE: u32 = MEM + mem::BASE;
    /// Index register (5 bits, as the base).
    pub const INDEX: u32 = MEM + mem::INDEX;
    /// Scale (2 bits: log2).
    pub const SCALE: u32 = MEM + mem::SCALE;
    /// RIP-relative.
    pub const RIP: u32 = MEM + mem::RIP;
    /// Memory operand size in bytes (6 bits).
    pub const MEM_SIZE: u32 = MEM + mem::SIZE;
    /// Address size (2 bits: log2 of the size in bytes, minus 1).
    pub const ADDR_SIZE: u32 = MEM + mem::ADDR_SIZE;
    /// "Present" in the base and index fields.
    pub const PRESENT: u64 = mem::PRESENT as u64;
    /// Register kinds.
    pub const KIND_XMM: u64 = 1;
    /// The x87 stack top.
    pub const KIND_ST0: u64 = 2;
}

use field::*;

/// The operations, by their number in [`Instruction::bits`].
pub(super) const OPS: [Op; 32] = [
    Op::Mov,
    Op::Movzx,
    Op::Alu(AluOp::Add),
    Op::Alu(AluOp::Or),
    Op::Alu(AluOp::Adc),
    Op::Alu(AluOp::Sbb),
    Op::Alu(AluOp::And),
    Op::Alu(AluOp::Sub),
    Op::Alu(AluOp::Xor),
    Op::Alu(AluOp::Cmp),
    Op::Test,
    Op::Xchg,
    Op::Movs,
    Op::Cmps,
    Op::Stos,
    Op::Lods,
    Op::Cmpxchg,
    Op::CmpxchgNb,
    Op::Xadd,
    Op::Int3,
    Op::X87(X87Op::Fld),
    Op::X87(X87Op::Fst),
    Op::X87(X87Op::Fstp),
    Op::X87(X87Op::Fild),
    Op::X87(X87Op::Fistp),
    Op::Vec(VecMove::Movups),
    Op::Vec(VecMove::Movaps),
    Op::Vec(VecMove::Movdqa),
    Op::Vec(VecMove::Movdqu),
    Op::Vec(VecMove::Movntdq),
    Op::Vec(VecMove::Movd),
    Op::Vec(VecMove::Movq),
];

/// The number of `op` in [`OPS`].
pub(super) const fn op_number(op: Op) -> u8 {
    match op {
        Op::Mov => 0,
        Op::Movzx => 1,
        Op::Alu(a) => 2 + a as u8,
        Op::Test => 10,
        Op::Xchg => 11,
        Op::Movs => 12,
        Op::Cmps => 13,
        Op::Stos => 14,
        Op::Lods => 15,
        Op::Cmpxchg => 16,
        Op::CmpxchgNb => 17,
        Op::Xadd => 18,
        Op::Int3 => 19,
        Op::X87(x) => 20 + x as u8,
        Op::Vec(v) => 25 + v as u8,
    }
}

/// A decoded instruction.
///
/// One memory operand, one register and one immediate, with a [`Shape`]
/// saying which are the destination and the source ([`Instruction::dst`],
/// [`Instruction::src`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Instruction {
    /// The small fields (see [`field`]).
    pub(super) bits: u64,
    /// Displacement, sign-extended (for moffs: the absolute offset).
    pub(super) disp: i64,
    /// Immediate, extended to the operand size.
    pub(super) imm: u64,
}

impl Instruction {
    #[inline(always)]
    fn get(&self, at: u32, width: u32) -> u64 {
        (self.bits >> at) & ((1 << width) - 1)
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> u8 {
        self.get(LEN, 4) as u8
    }

    /// Whether the instruction is empty (never: at least one byte).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The operation.
    #[inline]
    pub fn op(&self) -> Op {
        OPS[self.get(OP, 5) as usize]
    }

    /// Operand size in bytes: 1, 2, 4, 8; 16 or 32 for vector moves, the
    /// memory size for x87 forms, 8 or 16 for CMPXCHG8B/16B.
    #[inline]
    pub fn opsize(&self) -> u8 {
        self.get(OPSIZE, 6) as u8
    }

    /// Address size in bytes.
    #[inline]
    pub fn addr_size(&self) -> u8 {
        2 << self.get(ADDR_SIZE, 2)
    }

    /// REP/REPNE prefix, for string instructions.
    #[inline]
    pub fn rep(&self) -> Rep {
        [Rep::None, Rep::Rep, Rep::Repne, Rep::None][self.get(REP, 2) as usize]
    }

    /// LOCK prefix.
    #[inline]
    pub fn lock(&self) -> bool {
        self.get(LOCK, 1) != 0
    }

    /// Segment override prefix.
    #[inline]
    pub fn seg_override(&self) -> Option<Seg> {
        match self.get(SEG_OVERRIDE, 3) {
            0 => None,
            n => Some(Seg::ALL[n as usize - 1]),
        }
    }

    /// VEX-encoded (AVX) rather than legacy SSE.
    #[inline]
    pub fn vex(&self) -> bool {
        self.get(VEX, 1) != 0
    }

    /// Where the operands are.
    #[inline]
    pub fn shape(&self) -> Shape {
        SHAPES[self.get(SHAPE, 3) as usize]
    }

    /// The memory operand (for MOVS and CMPS the DS:rSI one, the other
    /// being [`Instruction::di`]; meaningless for [`Shape::None`]).
    #[inline]
    pub fn mem(&self) -> Mem {
        Mem { bits: self.get(MEM, super::mem::field::WIDTH) as u32, disp: self.disp }
    }

    /// The register operand (meaningless unless the shape has one).
    #[inline]
    pub fn reg(&self) -> Reg {
        let num = self.get(REG_NUM, 4) as u8;
        match self.get(REG_KIND, 2) {
            KIND_XMM => Reg::Xmm(num),
            KIND_ST0 => Reg::St0,
            _ => Reg::Gpr { num, size: self.opsize(), high8: self.get(HIGH8, 1) != 0 },
        }
    }

    /// The immediate, sign- or zero-extended to the operand size as the
    /// instruction defines (meaningless unless the shape has one).
    #[inline]
    pub fn imm(&self) -> u64 {
        self.imm
    }

    /// The ES:rDI operand of MOVS and CMPS.
    #[inline]
    pub fn di(&self) -> Mem {
        self.mem().es_rdi()
    }

    /// The destination (or first) operand.
    #[inline]
    pub fn dst(&self) -> Operand {
        match self.shape() {
            Shape::MemReg | Shape::MemImm | Shape::Mem | Shape::MemDi => Operand::Mem(self.mem()),
            Shape::RegMem => Operand::Reg(self.reg()),
            Shape::DiMem => Operand::Mem(self.di()),
            Shape::None => Operand::None,
        }
    }

    /// The source (or second) operand.
    #[inline]
    pub fn src(&self) -> Operand {
        match self.shape() {
            Shape::MemReg => Operand::Reg(self.reg()),
            Shape::RegMem | Shape::DiMem => Operand::Mem(self.mem()),
            Shape::MemImm => Operand::Imm(self.imm),
            Shape::MemDi => Operand::Mem(self.di()),
            Shape::Mem | Shape::None => Operand::None,
        }
    }

    /// The memory operand, if any (for MOVS and CMPS the DS:rSI one).
    #[inline]
    pub fn memory(&self) -> Option<Mem> {
        (self.shape() != Shape::None).then(|| self.mem())
    }
}

impl std::fmt::Debug for Instruction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instruction")
            .field("len", &self.len())
            .field("op", &self.op())
            .field("dst", &self.dst())
            .field("src", &self.src())
            .field("opsize", &self.opsize())
            .field("addr_size", &self.addr_size())
            .field("rep", &self.rep())
            .field("lock", &self.lock())
            .field("seg_override", &self.seg_override())
            .field("vex", &self.vex())
            .finish()
    }
}
