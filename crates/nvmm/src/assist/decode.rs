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
#![forbid(unsafe_code)]

pub use super::io_insn::CpuMode;
use crate::x86::state::Seg;

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

const ALU_BY_REG: [AluOp; 8] =
    [AluOp::Add, AluOp::Or, AluOp::Adc, AluOp::Sbb, AluOp::And, AluOp::Sub, AluOp::Xor, AluOp::Cmp];

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

/// A memory operand: `seg:[base + index * scale + disp]`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Mem {
    /// Segment (override, else DS, or SS for BP/SP bases).
    pub seg: Seg,
    /// Base register number (0-15), if any.
    pub base: Option<u8>,
    /// Index register number and scale, if any.
    pub index: Option<(u8, u8)>,
    /// Displacement, sign-extended (for moffs: the absolute offset).
    pub disp: i64,
    /// RIP-relative: the displacement is added to the next instruction's
    /// RIP.
    pub rip_relative: bool,
    /// Address size in bytes (2, 4, 8): registers and the sum are
    /// truncated to it.
    pub addr_size: u8,
    /// Size of the access in bytes.
    pub size: u8,
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

/// A decoded instruction.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Instruction {
    /// Length in bytes.
    pub len: u8,
    /// The operation.
    pub op: Op,
    /// Destination (or first) operand.
    pub dst: Operand,
    /// Source (or second) operand.
    pub src: Operand,
    /// Operand size in bytes: 1, 2, 4, 8; 16 or 32 for vector moves, the
    /// memory size for x87 forms, 8 or 16 for CMPXCHG8B/16B.
    pub opsize: u8,
    /// Address size in bytes.
    pub addr_size: u8,
    /// REP/REPNE prefix, for string instructions.
    pub rep: Rep,
    /// LOCK prefix.
    pub lock: bool,
    /// Segment override prefix.
    pub seg_override: Option<Seg>,
    /// VEX-encoded (AVX) rather than legacy SSE.
    pub vex: bool,
}

impl Instruction {
    /// The memory operand, if any (the first one for MOVS and CMPS).
    pub fn mem(&self) -> Option<Mem> {
        match (self.dst, self.src) {
            (Operand::Mem(m), _) | (_, Operand::Mem(m)) => Some(m),
            _ => None,
        }
    }
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

// --- opcode tables -----------------------------------------------------

/// Operand forms.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Form {
    /// `op r/m, reg` (ModRM, register is the source).
    RmReg,
    /// `op reg, r/m`.
    RegRm,
    /// `op r/m, imm` with the operation from ModRM.reg (group).
    RmImm,
    /// Memory-only with the operation from ModRM.reg.
    RmOnly,
    /// `mov acc, moffs` / `mov moffs, acc`.
    Moffs { to_mem: bool },
    /// String instructions.
    Str,
    /// No operands.
    Bare,
    /// x87 memory forms (operation from ModRM.reg).
    X87,
}

/// Immediate encodings.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Imm {
    None,
    /// One byte, sign-extended to the operand size.
    Ib,
    /// 2 or 4 bytes by operand size, sign-extended to 64 bits.
    Iz,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    op: Option<Op>,
    form: Form,
    byte: bool,
    imm: Imm,
    /// Group: operations by ModRM.reg.
    group: Option<&'static [Option<Op>; 8]>,
    /// LOCK allowed (with a memory destination).
    lockable: bool,
}

const fn e(op: Op, form: Form, byte: bool) -> Option<Entry> {
    Some(Entry { op: Some(op), form, byte, imm: Imm::None, group: None, lockable: false })
}

const fn lockable(mut x: Option<Entry>) -> Option<Entry> {
    if let Some(ref mut en) = x {
        en.lockable = true;
    }
    x
}

const fn group(g: &'static [Option<Op>; 8], form: Form, byte: bool, imm: Imm, lock: bool) -> Option<Entry> {
    Some(Entry { op: None, form, byte, imm, group: Some(g), lockable: lock })
}

const GROUP1: [Option<Op>; 8] = [
    Some(Op::Alu(AluOp::Add)),
    Some(Op::Alu(AluOp::Or)),
    Some(Op::Alu(AluOp::Adc)),
    Some(Op::Alu(AluOp::Sbb)),
    Some(Op::Alu(AluOp::And)),
    Some(Op::Alu(AluOp::Sub)),
    Some(Op::Alu(AluOp::Xor)),
    Some(Op::Alu(AluOp::Cmp)),
];
const GROUP3: [Option<Op>; 8] = [Some(Op::Test), Some(Op::Test), None, None, None, None, None, None];
const GROUP11: [Option<Op>; 8] = [Some(Op::Mov), None, None, None, None, None, None, None];
const GROUP9: [Option<Op>; 8] = [None, Some(Op::CmpxchgNb), None, None, None, None, None, None];

const fn primary_table() -> [Option<Entry>; 256] {
    let mut t: [Option<Entry>; 256] = [None; 256];
    let mut i = 0;
    while i < 8 {
        // 00-3F: ALU ops in blocks of 8 (only the four ModRM forms).
        let base = i * 8;
        let op = Op::Alu(ALU_BY_REG[i]);
        let lock = !matches!(ALU_BY_REG[i], AluOp::Cmp);
        t[base] = e(op, Form::RmReg, true);
        t[base + 1] = e(op, Form::RmReg, false);
        if lock {
            t[base] = lockable(t[base]);
            t[base + 1] = lockable(t[base + 1]);
        }
        t[base + 2] = e(op, Form::RegRm, true);
        t[base + 3] = e(op, Form::RegRm, false);
        i += 1;
    }
    t[0x80] = group(&GROUP1, Form::RmImm, true, Imm::Ib, true);
    t[0x81] = group(&GROUP1, Form::RmImm, false, Imm::Iz, true);
    t[0x82] = group(&GROUP1, Form::RmImm, true, Imm::Ib, true); // not in 64-bit mode
    t[0x83] = group(&GROUP1, Form::RmImm, false, Imm::Ib, true);
    t[0x84] = e(Op::Test, Form::RmReg, true);
    t[0x85] = e(Op::Test, Form::RmReg, false);
    t[0x86] = lockable(e(Op::Xchg, Form::RmReg, true));
    t[0x87] = lockable(e(Op::Xchg, Form::RmReg, false));
    t[0x88] = e(Op::Mov, Form::RmReg, true);
    t[0x89] = e(Op::Mov, Form::RmReg, false);
    t[0x8a] = e(Op::Mov, Form::RegRm, true);
    t[0x8b] = e(Op::Mov, Form::RegRm, false);
    t[0xa0] = e(Op::Mov, Form::Moffs { to_mem: false }, true);
    t[0xa1] = e(Op::Mov, Form::Moffs { to_mem: false }, false);
    t[0xa2] = e(Op::Mov, Form::Moffs { to_mem: true }, true);
    t[0xa3] = e(Op::Mov, Form::Moffs { to_mem: true }, false);
    t[0xa4] = e(Op::Movs, Form::Str, true);
    t[0xa5] = e(Op::Movs, Form::Str, false);
    t[0xa6] = e(Op::Cmps, Form::Str, true);
    t[0xa7] = e(Op::Cmps, Form::Str, false);
    t[0xaa] = e(Op::Stos, Form::Str, true);
    t[0xab] = e(Op::Stos, Form::Str, false);
    t[0xac] = e(Op::Lods, Form::Str, true);
    t[0xad] = e(Op::Lods, Form::Str, false);
    t[0xc6] = group(&GROUP11, Form::RmImm, true, Imm::Ib, false);
    t[0xc7] = group(&GROUP11, Form::RmImm, false, Imm::Iz, false);
    t[0xcc] = e(Op::Int3, Form::Bare, true);
    t[0xd9] = e(Op::X87(X87Op::Fld), Form::X87, false);
    t[0xdb] = e(Op::X87(X87Op::Fld), Form::X87, false);
    t[0xdd] = e(Op::X87(X87Op::Fld), Form::X87, false);
    t[0xdf] = e(Op::X87(X87Op::Fld), Form::X87, false);
    t[0xf6] = group(&GROUP3, Form::RmImm, true, Imm::Ib, false);
    t[0xf7] = group(&GROUP3, Form::RmImm, false, Imm::Iz, false);
    t
}

const fn secondary_table() -> [Option<Entry>; 256] {
    let mut t: [Option<Entry>; 256] = [None; 256];
    t[0xb0] = lockable(e(Op::Cmpxchg, Form::RmReg, true));
    t[0xb1] = lockable(e(Op::Cmpxchg, Form::RmReg, false));
    t[0xb6] = e(Op::Movzx, Form::RegRm, false);
    t[0xb7] = e(Op::Movzx, Form::RegRm, false);
    t[0xc0] = lockable(e(Op::Xadd, Form::RmReg, true));
    t[0xc1] = lockable(e(Op::Xadd, Form::RmReg, false));
    t[0xc7] = group(&GROUP9, Form::RmOnly, false, Imm::None, true);
    t
}

static PRIMARY: [Option<Entry>; 256] = primary_table();
static SECONDARY: [Option<Entry>; 256] = secondary_table();

/// Mandatory prefix of an SSE instruction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mandatory {
    None,
    P66,
    F3,
    F2,
}

/// A vector move: operation, whether memory is the destination, memory
/// size for the 128-bit form (`0` = by VEX.L).
fn vec_entry(mandatory: Mandatory, opcode: u8, w: bool) -> Option<(VecMove, bool, u8)> {
    use Mandatory::*;
    use VecMove::*;
    Some(match (mandatory, opcode) {
        (None, 0x10) => (Movups, false, 0),
        (None, 0x11) => (Movups, true, 0),
        (None, 0x28) => (Movaps, false, 0),
        (None, 0x29) => (Movaps, true, 0),
        (P66, 0x6f) => (Movdqa, false, 0),
        (P66, 0x7f) => (Movdqa, true, 0),
        (F3, 0x6f) => (Movdqu, false, 0),
        (F3, 0x7f) => (Movdqu, true, 0),
        (P66, 0xe7) => (Movntdq, true, 0),
        (P66, 0x6e) if w => (Movq, false, 8),
        (P66, 0x6e) => (Movd, false, 4),
        (P66, 0x7e) if w => (Movq, true, 8),
        (P66, 0x7e) => (Movd, true, 4),
        (F3, 0x7e) => (Movq, false, 8),
        (P66, 0xd6) => (Movq, true, 8),
        _ => return Option::None,
    })
}

// --- the state machine ---------------------------------------------------

/// States of the decoder.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Node {
    LegacyPrefix,
    Rex,
    Vex,
    Opcode,
    ModRm,
    Sib,
    Disp,
    Immediate,
    Done,
}

#[derive(Clone, Copy, Debug, Default)]
struct Rex {
    present: bool,
    w: bool,
    r: bool,
    x: bool,
    b: bool,
}

#[derive(Clone, Copy, Debug)]
struct Vex {
    /// 0F map only.
    l: bool,
    mandatory: Mandatory,
}

struct Fsm<'a> {
    bytes: &'a [u8],
    pos: usize,
    mode: CpuMode,
    opsize_override: bool,
    addrsize_override: bool,
    rep: Rep,
    lock: bool,
    seg: Option<Seg>,
    /// Last of 66/F2/F3 for mandatory-prefix purposes.
    last_simd_prefix: Option<u8>,
    rex: Rex,
    vex: Option<Vex>,
    two_byte: bool,
    opcode: u8,
    entry: Option<Entry>,
    vec: Option<(VecMove, bool, u8)>,
    op: Option<Op>,
    modrm: u8,
    /// Memory operand under construction (from ModRM/SIB).
    base: Option<u8>,
    index: Option<(u8, u8)>,
    disp_size: u8,
    disp: i64,
    rip_relative: bool,
    bp_sp_base: bool,
    register_rm: bool,
    imm: u64,
}

impl<'a> Fsm<'a> {
    #[inline(always)]
    fn byte(&self, at: usize) -> Result<u8, DecodeError> {
        match self.bytes.get(at) {
            Some(&b) if at < MAX_LEN => Ok(b),
            _ if at >= MAX_LEN => Err(DecodeError::TooLong),
            _ => Err(DecodeError::Truncated),
        }
    }

    fn next(&mut self) -> Result<u8, DecodeError> {
        let b = self.byte(self.pos)?;
        self.pos += 1;
        Ok(b)
    }

    fn le(&mut self, n: u8) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(self.next()?) << (8 * i);
        }
        Ok(v)
    }

    fn long(&self) -> bool {
        self.mode == CpuMode::Bits64
    }

    fn addr_size(&self) -> u8 {
        match (self.mode, self.addrsize_override) {
            (CpuMode::Bits16, false) | (CpuMode::Bits32, true) => 2,
            (CpuMode::Bits16, true) | (CpuMode::Bits32, false) | (CpuMode::Bits64, true) => 4,
            (CpuMode::Bits64, false) => 8,
        }
    }

    fn gpr_opsize(&self) -> u8 {
        if self.rex.w {
            8
        } else {
            match (self.mode, self.opsize_override) {
                (CpuMode::Bits16, false) | (CpuMode::Bits32 | CpuMode::Bits64, true) => 2,
                _ => 4,
            }
        }
    }

    /// Consumes legacy prefixes (a REX prefix before one is void).
    fn legacy_prefix(&mut self) -> Result<Node, DecodeError> {
        loop {
            let b = self.byte(self.pos)?;
            let kind = PREFIX[usize::from(b)];
            // The common case first, with a plain branch.
            if kind == P_NONE {
                return Ok(Node::Rex);
            }
            match kind {
                P_OPSIZE => {
                    self.opsize_override = true;
                    self.last_simd_prefix = Some(b);
                }
                P_ADDRSIZE => self.addrsize_override = true,
                P_LOCK => self.lock = true,
                P_REPNE => {
                    self.rep = Rep::Repne;
                    self.last_simd_prefix = Some(b);
                }
                P_REP => {
                    self.rep = Rep::Rep;
                    self.last_simd_prefix = Some(b);
                }
                k => {
                    let seg = SEG_PREFIX[usize::from(k - P_SEG)];
                    // In 64-bit mode an FS or GS prefix wins over ES, CS, SS
                    // and DS prefixes (which have no effect there anyway).
                    let fs_gs = matches!(self.seg, Some(Seg::Fs | Seg::Gs));
                    if !self.long() || !fs_gs || matches!(seg, Seg::Fs | Seg::Gs) {
                        self.seg = Some(seg);
                    }
                }
            }
            self.pos += 1;
            self.rex = Rex::default();
        }
    }

    fn rex_prefix(&mut self) -> Result<Node, DecodeError> {
        let b = self.byte(self.pos)?;
        if self.long() && (0x40..=0x4f).contains(&b) {
            self.pos += 1;
            self.rex = Rex { present: true, w: b & 8 != 0, r: b & 4 != 0, x: b & 2 != 0, b: b & 1 != 0 };
            // Another REX, or a legacy prefix, may follow; only the last
            // REX right before the opcode counts.
            let next = self.byte(self.pos)?;
            if (0x40..=0x4f).contains(&next) {
                return Ok(Node::Rex);
            }
            if is_legacy_prefix(next) {
                return Ok(Node::LegacyPrefix);
            }
        }
        let b = self.byte(self.pos)?;
        if (b == 0xc4 || b == 0xc5) && (self.long() || self.byte(self.pos + 1)? & 0xc0 == 0xc0) {
            return Ok(Node::Vex);
        }
        Ok(Node::Opcode)
    }

    fn vex_prefix(&mut self) -> Result<Node, DecodeError> {
        let first = self.next()?;
        // VEX after 66, F2, F3, LOCK or REX is #UD.
        if self.rex.present || self.lock || self.opsize_override || self.rep != Rep::None {
            return Err(DecodeError::Invalid);
        }
        let (r, x, b, w, vvvv, l, pp, map) = if first == 0xc5 {
            let p = self.next()?;
            (p & 0x80 == 0, false, false, false, (p >> 3) & 0xf, p & 4 != 0, p & 3, 1)
        } else {
            let p1 = self.next()?;
            let p2 = self.next()?;
            (
                p1 & 0x80 == 0,
                p1 & 0x40 == 0,
                p1 & 0x20 == 0,
                p2 & 0x80 != 0,
                (p2 >> 3) & 0xf,
                p2 & 4 != 0,
                p2 & 3,
                p1 & 0x1f,
            )
        };
        let opcode = self.byte(self.pos)?;
        if map != 1 {
            return Err(DecodeError::Unsupported { opcode });
        }
        // Outside 64-bit mode VEX.R/X/B are ignored (must be 1), W is
        // ignored for these moves except MOVD/MOVQ.
        self.rex =
            Rex { present: false, w: w && self.long(), r: r && self.long(), x: x && self.long(), b: b && self.long() };
        let mandatory = match pp {
            0 => Mandatory::None,
            1 => Mandatory::P66,
            2 => Mandatory::F3,
            _ => Mandatory::F2,
        };
        self.vex = Some(Vex { l, mandatory });
        // The moves take no second source: VEX.vvvv must be 1111.
        if vvvv != 0xf {
            let _ = self.next();
            return Err(if vec_entry(mandatory, opcode, w).is_some() {
                DecodeError::Invalid
            } else {
                DecodeError::Unsupported { opcode }
            });
        }
        self.two_byte = true;
        Ok(Node::Opcode)
    }

    fn opcode(&mut self) -> Result<Node, DecodeError> {
        let mut b = self.next()?;
        if self.vex.is_none() && b == 0x0f {
            self.two_byte = true;
            b = self.next()?;
        }
        self.opcode = b;
        if let Some(vex) = self.vex {
            let w = self.rex.w;
            let v = vec_entry(vex.mandatory, b, w).ok_or(DecodeError::Unsupported { opcode: b })?;
            // MOVD/MOVQ have no 256-bit form.
            if vex.l && v.2 != 0 {
                let _ = self.next();
                return Err(DecodeError::Invalid);
            }
            self.vec = Some(v);
            self.op = Some(Op::Vec(v.0));
            return Ok(Node::ModRm);
        }
        if self.two_byte {
            let mandatory = match self.last_simd_prefix {
                Some(0xf3) => Mandatory::F3,
                Some(0xf2) => Mandatory::F2,
                Some(0x66) => Mandatory::P66,
                _ => Mandatory::None,
            };
            // F2/F3 win over 66 as the mandatory prefix.
            let mandatory = match (mandatory, self.rep) {
                (Mandatory::P66, Rep::Rep) => Mandatory::F3,
                (Mandatory::P66, Rep::Repne) => Mandatory::F2,
                (m, _) => m,
            };
            if let Some(v) = vec_entry(mandatory, b, self.rex.w) {
                if self.lock {
                    return Err(DecodeError::Invalid);
                }
                self.vec = Some(v);
                self.op = Some(Op::Vec(v.0));
                return Ok(Node::ModRm);
            }
            self.entry = SECONDARY[usize::from(b)];
        } else if !(b == 0x82 && self.long()) {
            self.entry = PRIMARY[usize::from(b)];
        }
        let entry = self.entry.ok_or(DecodeError::Unsupported { opcode: b })?;
        if matches!(entry.form, Form::Moffs { .. }) {
            let n = self.addr_size();
            self.disp = self.le(n)? as i64;
            self.op = entry.op;
            return Ok(Node::Done);
        }
        if matches!(entry.form, Form::Str | Form::Bare) {
            self.op = entry.op;
            return Ok(Node::Done);
        }
        Ok(Node::ModRm)
    }

    fn modrm(&mut self) -> Result<Node, DecodeError> {
        let m = self.next()?;
        self.modrm = m;
        let md = m >> 6;
        let reg = (m >> 3) & 7;
        let rm = m & 7;
        if let Some(entry) = self.entry {
            if let Some(g) = entry.group {
                self.op = g[usize::from(reg)];
                if self.op.is_none() {
                    return Err(DecodeError::Unsupported { opcode: self.opcode });
                }
            } else if entry.form == Form::X87 {
                self.op =
                    Some(Op::X87(x87_op(self.opcode, reg).ok_or(DecodeError::Unsupported { opcode: self.opcode })?));
            } else {
                self.op = entry.op;
            }
        }
        if md == 3 {
            // Register forms never reach the assists: memory exits come from
            // memory operands.
            self.register_rm = true;
            if self.lock {
                return Err(DecodeError::Invalid);
            }
            return Err(match (self.op, self.vec) {
                (Some(Op::CmpxchgNb), _) | (_, Some((VecMove::Movntdq, _, _))) => DecodeError::Invalid,
                _ => DecodeError::Unsupported { opcode: self.opcode },
            });
        }
        if self.addr_size() == 2 {
            match (md, rm) {
                (0, 6) => self.disp_size = 2,
                _ => {
                    const BASES: [(Option<u8>, Option<u8>); 8] = [
                        (Some(3), Some(6)),
                        (Some(3), Some(7)),
                        (Some(5), Some(6)),
                        (Some(5), Some(7)),
                        (Some(6), None),
                        (Some(7), None),
                        (Some(5), None),
                        (Some(3), None),
                    ];
                    let (base, index) = BASES[usize::from(rm)];
                    self.base = base;
                    self.index = index.map(|i| (i, 1));
                    self.bp_sp_base = base == Some(5);
                    self.disp_size = [0, 1, 2][usize::from(md)];
                }
            }
            return Ok(if self.disp_size > 0 { Node::Disp } else { self.after_address() });
        }
        if rm == 4 {
            self.disp_size = [0, 1, 4][usize::from(md)];
            return Ok(Node::Sib);
        }
        if md == 0 && rm == 5 {
            self.disp_size = 4;
            self.rip_relative = self.long();
            return Ok(Node::Disp);
        }
        let base = rm | (u8::from(self.rex.b) << 3);
        self.base = Some(base);
        self.bp_sp_base = base == 4 || base == 5;
        self.disp_size = [0, 1, 4][usize::from(md)];
        Ok(if self.disp_size > 0 { Node::Disp } else { self.after_address() })
    }

    fn sib(&mut self) -> Result<Node, DecodeError> {
        let s = self.next()?;
        let scale = 1u8 << (s >> 6);
        let index = ((s >> 3) & 7) | (u8::from(self.rex.x) << 3);
        let base = (s & 7) | (u8::from(self.rex.b) << 3);
        if index != 4 {
            self.index = Some((index, scale));
        }
        if s & 7 == 5 && self.modrm >> 6 == 0 {
            self.disp_size = 4;
        } else {
            self.base = Some(base);
            self.bp_sp_base = base == 4 || base == 5;
        }
        Ok(if self.disp_size > 0 { Node::Disp } else { self.after_address() })
    }

    fn displacement(&mut self) -> Result<Node, DecodeError> {
        let n = self.disp_size;
        let raw = self.le(n)?;
        self.disp = match n {
            1 => raw as u8 as i8 as i64,
            2 => raw as u16 as i16 as i64,
            _ => raw as u32 as i32 as i64,
        };
        Ok(self.after_address())
    }

    fn after_address(&self) -> Node {
        match self.entry.map(|e| e.imm) {
            Some(Imm::Ib | Imm::Iz) => Node::Immediate,
            _ => Node::Done,
        }
    }

    fn immediate(&mut self) -> Result<Node, DecodeError> {
        let entry = self.entry.ok_or(DecodeError::Invalid)?;
        let opsize = if entry.byte { 1 } else { self.gpr_opsize() };
        let (n, value) = match entry.imm {
            Imm::Ib => (1, self.le(1)? as u8 as i8 as i64),
            Imm::Iz if opsize == 2 => (2, self.le(2)? as u16 as i16 as i64),
            Imm::Iz => (4, self.le(4)? as u32 as i32 as i64),
            Imm::None => (0, 0),
        };
        let _ = n;
        self.imm = value as u64 & mask(opsize);
        Ok(Node::Done)
    }

    /// Runs the machine. States only move forward (prefixes may loop
    /// among themselves), so the dispatch is a sequence of checks rather
    /// than one indirect jump per state: each check is a branch of its own
    /// that the CPU predicts well, which halves the decoding time.
    fn run(&mut self) -> Result<(), DecodeError> {
        let mut node = Node::LegacyPrefix;
        while matches!(node, Node::LegacyPrefix | Node::Rex) {
            node = if node == Node::LegacyPrefix { self.legacy_prefix()? } else { self.rex_prefix()? };
        }
        if node == Node::Vex {
            node = self.vex_prefix()?;
        }
        if node == Node::Opcode {
            node = self.opcode()?;
        }
        if node == Node::ModRm {
            node = self.modrm()?;
        }
        if node == Node::Sib {
            node = self.sib()?;
        }
        if node == Node::Disp {
            node = self.displacement()?;
        }
        if node == Node::Immediate {
            node = self.immediate()?;
        }
        debug_assert_eq!(node, Node::Done);
        Ok(())
    }

    fn gpr(&self, num: u8, size: u8) -> Reg {
        let high8 = size == 1 && !self.rex.present && (4..8).contains(&num);
        Reg::Gpr { num: if high8 { num - 4 } else { num }, size, high8 }
    }

    fn mem(&self, size: u8) -> Mem {
        let seg = self.seg.unwrap_or(if self.bp_sp_base { Seg::Ss } else { Seg::Ds });
        Mem {
            seg,
            base: self.base,
            index: self.index,
            disp: self.disp,
            rip_relative: self.rip_relative,
            addr_size: self.addr_size(),
            size,
        }
    }

    /// Assembles the instruction once the bytes are consumed.
    fn finish(&self) -> Result<Instruction, DecodeError> {
        let op = self.op.ok_or(DecodeError::Unsupported { opcode: self.opcode })?;
        let reg_field = ((self.modrm >> 3) & 7) | (u8::from(self.rex.r) << 3);
        let rm_reg = (self.modrm & 7) | (u8::from(self.rex.b) << 3);
        let addr_size = self.addr_size();
        let mut lock_ok = false;
        let special = matches!(
            op,
            Op::Vec(_) | Op::X87(_) | Op::Int3 | Op::Movs | Op::Cmps | Op::Stos | Op::Lods | Op::CmpxchgNb
        );
        // The common shapes (MOV, ALU, TEST, XCHG, ...) first, with a plain branch.
        let (dst, src, opsize) = if !special {
            let entry = self.entry.ok_or(DecodeError::Invalid)?;
            let size = if entry.byte { 1 } else { self.gpr_opsize() };
            if let Form::Moffs { to_mem } = entry.form {
                let m = Mem {
                    seg: self.seg.unwrap_or(Seg::Ds),
                    base: None,
                    index: None,
                    disp: self.disp,
                    rip_relative: false,
                    addr_size,
                    size,
                };
                let acc = Operand::Reg(Reg::Gpr { num: 0, size, high8: false });
                let (d, s) = if to_mem { (Operand::Mem(m), acc) } else { (acc, Operand::Mem(m)) };
                (d, s, size)
            } else {
                let src_size = match (op, self.opcode) {
                    (Op::Movzx, 0xb6) => 1,
                    (Op::Movzx, _) => 2,
                    _ => size,
                };
                let rm = if self.register_rm {
                    Operand::Reg(self.gpr(rm_reg, src_size))
                } else {
                    Operand::Mem(self.mem(src_size))
                };
                let (d, s) = match entry.form {
                    Form::RmReg => (rm, Operand::Reg(self.gpr(reg_field, size))),
                    Form::RegRm => (Operand::Reg(self.gpr(reg_field, size)), rm),
                    Form::RmImm => (rm, Operand::Imm(self.imm)),
                    _ => return Err(DecodeError::Invalid),
                };
                lock_ok = entry.lockable && matches!(d, Operand::Mem(_)) && op != Op::Alu(AluOp::Cmp);
                (d, s, size)
            }
        } else {
            match op {
                Op::Vec(kind) => {
                    let (_, to_mem, fixed) = self.vec.ok_or(DecodeError::Invalid)?;
                    let size = match (fixed, self.vex) {
                        (0, Some(v)) if v.l => 32,
                        (0, _) => 16,
                        (n, _) => n,
                    };
                    // Only the memory forms: register-to-register moves never
                    // cause memory exits. MOVNTDQ has no register form at all.
                    if self.register_rm {
                        return Err(if kind == VecMove::Movntdq {
                            DecodeError::Invalid
                        } else {
                            DecodeError::Unsupported { opcode: self.opcode }
                        });
                    }
                    let xmm = Operand::Reg(Reg::Xmm(reg_field));
                    let m = Operand::Mem(self.mem(size));
                    if to_mem { (m, xmm, size) } else { (xmm, m, size) }
                }
                Op::X87(x) => {
                    if self.register_rm {
                        return Err(DecodeError::Unsupported { opcode: self.opcode });
                    }
                    let size = x87_size(self.opcode, (self.modrm >> 3) & 7);
                    let st = Operand::Reg(Reg::St0);
                    let m = Operand::Mem(self.mem(size));
                    match x {
                        X87Op::Fld | X87Op::Fild => (st, m, size),
                        _ => (m, st, size),
                    }
                }
                Op::Int3 => (Operand::None, Operand::None, 1),
                Op::Movs | Op::Cmps | Op::Stos | Op::Lods => {
                    let entry = self.entry.ok_or(DecodeError::Invalid)?;
                    let size = if entry.byte { 1 } else { self.gpr_opsize() };
                    let si = Mem {
                        seg: self.seg.unwrap_or(Seg::Ds),
                        base: Some(6),
                        index: None,
                        disp: 0,
                        rip_relative: false,
                        addr_size,
                        size,
                    };
                    let di = Mem { seg: Seg::Es, base: Some(7), ..si };
                    let acc = Operand::Reg(Reg::Gpr { num: 0, size, high8: false });
                    match op {
                        Op::Movs => (Operand::Mem(di), Operand::Mem(si), size),
                        Op::Cmps => (Operand::Mem(si), Operand::Mem(di), size),
                        Op::Stos => (Operand::Mem(di), acc, size),
                        _ => (acc, Operand::Mem(si), size),
                    }
                }
                Op::CmpxchgNb => {
                    if self.register_rm {
                        return Err(DecodeError::Invalid);
                    }
                    let size = if self.rex.w { 16 } else { 8 };
                    lock_ok = true;
                    (Operand::Mem(self.mem(size)), Operand::None, size)
                }
                _ => return Err(DecodeError::Invalid),
            }
        };
        if self.lock && !lock_ok {
            return Err(DecodeError::Invalid);
        }
        let rep = match op {
            Op::Movs | Op::Cmps | Op::Stos | Op::Lods => self.rep,
            _ => Rep::None,
        };
        Ok(Instruction {
            len: self.pos as u8,
            op,
            dst,
            src,
            opsize,
            addr_size,
            rep,
            lock: self.lock,
            seg_override: self.seg,
            vex: self.vex.is_some(),
        })
    }
}

fn is_legacy_prefix(b: u8) -> bool {
    PREFIX[usize::from(b)] != P_NONE
}

const P_NONE: u8 = 0;
const P_OPSIZE: u8 = 1;
const P_ADDRSIZE: u8 = 2;
const P_LOCK: u8 = 3;
const P_REP: u8 = 4;
const P_REPNE: u8 = 5;
/// Segment prefixes: `P_SEG + index` into `SEG_PREFIX`.
const P_SEG: u8 = 6;
const SEG_PREFIX: [Seg; 6] = [Seg::Es, Seg::Cs, Seg::Ss, Seg::Ds, Seg::Fs, Seg::Gs];

/// What each byte is as a legacy prefix.
static PREFIX: [u8; 256] = {
    let mut t = [P_NONE; 256];
    t[0x66] = P_OPSIZE;
    t[0x67] = P_ADDRSIZE;
    t[0xf0] = P_LOCK;
    t[0xf2] = P_REPNE;
    t[0xf3] = P_REP;
    t[0x26] = P_SEG;
    t[0x2e] = P_SEG + 1;
    t[0x36] = P_SEG + 2;
    t[0x3e] = P_SEG + 3;
    t[0x64] = P_SEG + 4;
    t[0x65] = P_SEG + 5;
    t
};

/// Mask of `size` bytes.
pub fn mask(size: u8) -> u64 {
    if size >= 8 { u64::MAX } else { (1u64 << (8 * u32::from(size))) - 1 }
}

/// The x87 operation of opcode `op` with ModRM.reg `reg` (memory forms).
fn x87_op(op: u8, reg: u8) -> Option<X87Op> {
    Some(match (op, reg) {
        (0xd9, 0) | (0xdd, 0) | (0xdb, 5) => X87Op::Fld,
        (0xd9, 2) | (0xdd, 2) => X87Op::Fst,
        (0xd9, 3) | (0xdd, 3) | (0xdb, 7) => X87Op::Fstp,
        (0xdf, 0) | (0xdb, 0) | (0xdf, 5) => X87Op::Fild,
        (0xdf, 3) | (0xdb, 3) | (0xdf, 7) => X87Op::Fistp,
        _ => return None,
    })
}

/// Memory size of an x87 form.
fn x87_size(op: u8, reg: u8) -> u8 {
    match (op, reg) {
        (0xd9, _) => 4,
        (0xdd, _) => 8,
        (0xdb, 5) | (0xdb, 7) => 10,
        (0xdb, _) => 4,
        (0xdf, 0) | (0xdf, 3) => 2,
        _ => 8,
    }
}

/// Decodes the instruction at the start of `bytes` in `mode`.
pub fn decode(bytes: &[u8], mode: CpuMode) -> Result<Instruction, DecodeError> {
    let mut f = Fsm {
        bytes,
        pos: 0,
        mode,
        opsize_override: false,
        addrsize_override: false,
        rep: Rep::None,
        lock: false,
        seg: None,
        last_simd_prefix: None,
        rex: Rex::default(),
        vex: None,
        two_byte: false,
        opcode: 0,
        entry: None,
        vec: None,
        op: None,
        modrm: 0,
        base: None,
        index: None,
        disp_size: 0,
        disp: 0,
        rip_relative: false,
        bp_sp_base: false,
        register_rm: false,
        imm: 0,
    };
    f.run()?;
    f.finish()
}

#[cfg(test)]
mod tests;
