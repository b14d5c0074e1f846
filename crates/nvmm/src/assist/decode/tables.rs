//! The decoder's tables: what each byte is as a prefix, and what each
//! opcode of the one- and two-byte maps is, packed small so that one load
//! answers every question the state machine asks about an opcode.
#![forbid(unsafe_code)]

use super::instruction::op_number;
use super::{AluOp, Op, VecMove, X87Op};
use crate::x86::state::Seg;

/// REX bits (VEX's R, X, B and W land in the same places).
pub(super) const REX_W: u8 = 8;
pub(super) const REX_R: u8 = 4;
pub(super) const REX_X: u8 = 2;
pub(super) const REX_B: u8 = 1;

/// Displacement bytes by ModRM.mod with 32/64-bit addressing.
pub(super) const DISP32_BY_MOD: [u8; 4] = [0, 1, 4, 0];

/// Operand forms. The first three are numbered as their [`Shape`]s.
///
/// [`Shape`]: super::Shape
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(super) enum Form {
    /// `op r/m, reg` (ModRM, register is the source).
    RmReg,
    /// `op reg, r/m`.
    RegRm,
    /// `op r/m, imm`.
    RmImm,
    /// Memory only (CMPXCHG8B/16B).
    RmOnly,
    /// `mov acc, moffs`.
    MoffsLoad,
    /// `mov moffs, acc`.
    MoffsStore,
    /// String instructions (implicit operands).
    Str,
    /// No operands (INT3).
    Bare,
    /// x87 memory forms: operation and size from the opcode and ModRM.reg.
    X87,
    /// An SSE move: operation from the mandatory prefix.
    Vec,
    /// Not an instruction the decoder supports.
    None,
}

impl Form {
    /// `op r/m, reg`, `op reg, r/m` or `op r/m, imm`: the common forms.
    #[inline(always)]
    pub(super) const fn is_alu_like(self) -> bool {
        (self as u8) <= Form::RmImm as u8
    }
}

/// Where the operation comes from when the opcode alone does not say.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Group {
    /// The opcode says.
    None,
    /// Group 1 (80-83): the ALU operation is ModRM.reg.
    Alu,
    /// Group 3 (F6/F7): TEST for ModRM.reg 0 and 1.
    Test,
    /// Group 11 (C6/C7): MOV for ModRM.reg 0.
    Mov,
    /// Group 9 (0F C7): CMPXCHG8B/16B for ModRM.reg 1.
    Cmpxchg,
}

/// Immediate encodings.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(super) enum Imm {
    /// None.
    None,
    /// One byte, sign-extended to the operand size.
    Ib,
    /// 2 or 4 bytes by operand size, sign-extended to 64 bits.
    Iz,
}

/// One opcode.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    /// The operation's number (for groups: resolved from ModRM.reg).
    pub(super) op: u8,
    pub(super) form: Form,
    pub(super) group: Group,
    /// Byte operands (the opcode's bit 0 is clear).
    pub(super) byte: bool,
    pub(super) imm: Imm,
    /// LOCK allowed (with a memory destination).
    pub(super) lockable: bool,
    /// Memory operand size fixed by the opcode (MOVZX), else 0: the
    /// operand size.
    pub(super) mem_size: u8,
    /// A ModRM byte follows, and the opcode alone says the operation
    /// class (not the SSE moves, which need the mandatory prefix first).
    pub(super) modrm: bool,
    /// The operation comes from ModRM.reg (groups, x87).
    pub(super) reg_op: bool,
}

/// An unsupported opcode.
const NONE: Entry = Entry {
    op: 0,
    form: Form::None,
    group: Group::None,
    byte: false,
    imm: Imm::None,
    lockable: false,
    mem_size: 0,
    modrm: false,
    reg_op: false,
};

const fn e(op: Op, form: Form, byte: bool) -> Entry {
    let modrm = matches!(form, Form::RmReg | Form::RegRm | Form::RmImm | Form::RmOnly | Form::X87);
    let reg_op = matches!(form, Form::X87);
    Entry {
        op: op_number(op),
        form,
        group: Group::None,
        byte,
        imm: Imm::None,
        lockable: false,
        mem_size: 0,
        modrm,
        reg_op,
    }
}

const fn lockable(mut x: Entry) -> Entry {
    x.lockable = true;
    x
}

const fn group(g: Group, form: Form, byte: bool, imm: Imm, lock: bool) -> Entry {
    Entry { op: 0, form, group: g, byte, imm, lockable: lock, mem_size: 0, modrm: true, reg_op: true }
}

/// The ALU operations in opcode order (bits 5:3 of 00-3F, ModRM.reg of
/// group 1).
pub(super) const ALU_BY_REG: [AluOp; 8] =
    [AluOp::Add, AluOp::Or, AluOp::Adc, AluOp::Sbb, AluOp::And, AluOp::Sub, AluOp::Xor, AluOp::Cmp];

/// The operation (its number) of a group opcode with ModRM.reg `reg`.
#[inline(always)]
pub(super) const fn group_op(g: Group, reg: u8) -> Option<u8> {
    match (g, reg) {
        (Group::Alu, r) => Some(op_number(Op::Alu(ALU_BY_REG[(r & 7) as usize]))),
        (Group::Test, 0 | 1) => Some(op_number(Op::Test)),
        (Group::Mov, 0) => Some(op_number(Op::Mov)),
        (Group::Cmpxchg, 1) => Some(op_number(Op::CmpxchgNb)),
        _ => None,
    }
}

const fn one_byte_map(long: bool) -> [Entry; 256] {
    let mut t: [Entry; 256] = [NONE; 256];
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
    t[0x80] = group(Group::Alu, Form::RmImm, true, Imm::Ib, true);
    t[0x81] = group(Group::Alu, Form::RmImm, false, Imm::Iz, true);
    if !long {
        // An alias of 80, invalid in 64-bit mode.
        t[0x82] = group(Group::Alu, Form::RmImm, true, Imm::Ib, true);
    }
    t[0x83] = group(Group::Alu, Form::RmImm, false, Imm::Ib, true);
    t[0x84] = e(Op::Test, Form::RmReg, true);
    t[0x85] = e(Op::Test, Form::RmReg, false);
    t[0x86] = lockable(e(Op::Xchg, Form::RmReg, true));
    t[0x87] = lockable(e(Op::Xchg, Form::RmReg, false));
    t[0x88] = e(Op::Mov, Form::RmReg, true);
    t[0x89] = e(Op::Mov, Form::RmReg, false);
    t[0x8a] = e(Op::Mov, Form::RegRm, true);
    t[0x8b] = e(Op::Mov, Form::RegRm, false);
    t[0xa0] = e(Op::Mov, Form::MoffsLoad, true);
    t[0xa1] = e(Op::Mov, Form::MoffsLoad, false);
    t[0xa2] = e(Op::Mov, Form::MoffsStore, true);
    t[0xa3] = e(Op::Mov, Form::MoffsStore, false);
    t[0xa4] = e(Op::Movs, Form::Str, true);
    t[0xa5] = e(Op::Movs, Form::Str, false);
    t[0xa6] = e(Op::Cmps, Form::Str, true);
    t[0xa7] = e(Op::Cmps, Form::Str, false);
    t[0xaa] = e(Op::Stos, Form::Str, true);
    t[0xab] = e(Op::Stos, Form::Str, false);
    t[0xac] = e(Op::Lods, Form::Str, true);
    t[0xad] = e(Op::Lods, Form::Str, false);
    t[0xc6] = group(Group::Mov, Form::RmImm, true, Imm::Ib, false);
    t[0xc7] = group(Group::Mov, Form::RmImm, false, Imm::Iz, false);
    t[0xcc] = e(Op::Int3, Form::Bare, true);
    t[0xd9] = e(Op::X87(X87Op::Fld), Form::X87, false);
    t[0xdb] = e(Op::X87(X87Op::Fld), Form::X87, false);
    t[0xdd] = e(Op::X87(X87Op::Fld), Form::X87, false);
    t[0xdf] = e(Op::X87(X87Op::Fld), Form::X87, false);
    t[0xf6] = group(Group::Test, Form::RmImm, true, Imm::Ib, false);
    t[0xf7] = group(Group::Test, Form::RmImm, false, Imm::Iz, false);
    t
}

const fn two_byte_map() -> [Entry; 256] {
    let mut t: [Entry; 256] = [NONE; 256];
    // The SSE moves, resolved by mandatory prefix (`vec_move`).
    let sse = [0x10, 0x11, 0x28, 0x29, 0x6e, 0x6f, 0x7e, 0x7f, 0xd6, 0xe7];
    let mut i = 0;
    while i < sse.len() {
        t[sse[i]] = e(Op::Vec(VecMove::Movups), Form::Vec, false);
        i += 1;
    }
    t[0xb0] = lockable(e(Op::Cmpxchg, Form::RmReg, true));
    t[0xb1] = lockable(e(Op::Cmpxchg, Form::RmReg, false));
    t[0xb6] = Entry { mem_size: 1, ..e(Op::Movzx, Form::RegRm, false) };
    t[0xb7] = Entry { mem_size: 2, ..e(Op::Movzx, Form::RegRm, false) };
    t[0xc0] = lockable(e(Op::Xadd, Form::RmReg, true));
    t[0xc1] = lockable(e(Op::Xadd, Form::RmReg, false));
    t[0xc7] = group(Group::Cmpxchg, Form::RmOnly, false, Imm::None, true);
    t
}

/// The one-byte map outside (`[0]`) and in (`[1]`) 64-bit mode.
pub(super) static ONE_BYTE: [[Entry; 256]; 2] = [one_byte_map(false), one_byte_map(true)];

/// The 0F map.
pub(super) static TWO_BYTE: [Entry; 256] = two_byte_map();

/// Mandatory prefix of an SSE instruction (or VEX.pp).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mandatory {
    None,
    P66,
    F3,
    F2,
}

/// A vector move: the operation, whether memory is the destination, and
/// the memory size when fixed (`0`: 16 bytes, or 32 with VEX.L).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct VecForm {
    pub(super) op: VecMove,
    pub(super) to_mem: bool,
    pub(super) fixed_size: u8,
}

/// The vector move of 0F `opcode` with a mandatory prefix and REX.W/VEX.W.
pub(super) const fn vec_move(mandatory: Mandatory, opcode: u8, w: bool) -> Option<VecForm> {
    use Mandatory::*;
    use VecMove::*;
    let (op, to_mem, fixed_size) = match (mandatory, opcode) {
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
    };
    Some(VecForm { op, to_mem, fixed_size })
}

/// The x87 operation of opcode `op` with ModRM.reg `reg` (memory forms).
pub(super) fn x87_op(op: u8, reg: u8) -> Option<X87Op> {
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
pub(super) fn x87_size(op: u8, reg: u8) -> u8 {
    match (op, reg) {
        (0xd9, _) => 4,
        (0xdd, _) => 8,
        (0xdb, 5) | (0xdb, 7) => 10,
        (0xdb, _) => 4,
        (0xdf, 0) | (0xdf, 3) => 2,
        _ => 8,
    }
}

/// What a byte is where an instruction starts (or after a prefix).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(super) enum Lead {
    /// A one-byte opcode.
    Opcode,
    /// 0F: a two-byte opcode follows.
    Escape,
    /// C4/C5: VEX in 64-bit mode, else VEX or LES/LDS by the next byte.
    Vex,
    /// 40-4F: REX in 64-bit mode, else INC/DEC.
    Rex,
    /// 66.
    OpSize,
    /// 67.
    AddrSize,
    /// F0.
    Lock,
    /// F3.
    Rep,
    /// F2.
    Repne,
    /// 26.
    Es,
    /// 2E.
    Cs,
    /// 36.
    Ss,
    /// 3E.
    Ds,
    /// 64.
    Fs,
    /// 65.
    Gs,
}

impl Lead {
    /// An opcode starts here (one-byte or 0F).
    #[inline(always)]
    pub(super) fn is_opcode(self) -> bool {
        (self as u8) <= Lead::Escape as u8
    }

    /// A legacy prefix (66, 67, F0, F2, F3 or a segment).
    #[inline(always)]
    pub(super) fn is_legacy(self) -> bool {
        (self as u8) >= Lead::OpSize as u8
    }

    /// The segment of a segment prefix.
    pub(super) fn segment(self) -> Seg {
        match self {
            Lead::Es => Seg::Es,
            Lead::Cs => Seg::Cs,
            Lead::Ss => Seg::Ss,
            Lead::Fs => Seg::Fs,
            Lead::Gs => Seg::Gs,
            _ => Seg::Ds,
        }
    }
}

/// What each byte is where an instruction starts.
pub(super) static LEAD: [Lead; 256] = {
    let mut t = [Lead::Opcode; 256];
    t[0x0f] = Lead::Escape;
    t[0xc4] = Lead::Vex;
    t[0xc5] = Lead::Vex;
    t[0x66] = Lead::OpSize;
    t[0x67] = Lead::AddrSize;
    t[0xf0] = Lead::Lock;
    t[0xf2] = Lead::Repne;
    t[0xf3] = Lead::Rep;
    t[0x26] = Lead::Es;
    t[0x2e] = Lead::Cs;
    t[0x36] = Lead::Ss;
    t[0x3e] = Lead::Ds;
    t[0x64] = Lead::Fs;
    t[0x65] = Lead::Gs;
    let mut r = 0x40;
    while r < 0x50 {
        t[r] = Lead::Rex;
        r += 1;
    }
    t
};

/// 16-bit addressing: base and index of each ModRM.rm (`(0, 6)` is a bare
/// disp16 and handled apart).
pub(super) const ADDR16: [(u8, Option<u8>); 8] =
    [(3, Some(6)), (3, Some(7)), (5, Some(6)), (5, Some(7)), (6, None), (7, None), (5, None), (3, None)];
