//! The decoder's finite-state machine: legacy prefixes and REX → VEX →
//! opcode → ModRM → SIB → displacement → immediate, each state consuming
//! its bytes and naming the next.
//!
//! It is written to stay in registers. The first 16 bytes are loaded once
//! into a 128-bit number that the states consume from the low end (a byte
//! or a displacement is a shift, never a bounds check), and whether the
//! instruction really fit in the bytes given, and in 15 bytes, is settled
//! once at the end from how far the machine went ([`Fsm::overrun`]): the
//! machine reads its bytes in order, so the first byte it needed and did
//! not have decides the error exactly as checking every read would.
#![forbid(unsafe_code)]

use super::tables::{
    ADDR16, Entry, Form, Group, Imm, LEAD, Lead, Mandatory, OPCODES, VecForm, group_op, vec_move, x87_op, x87_size,
};
use super::{CpuMode, DecodeError, Instruction, MAX_LEN, Mem, Op, Reg, Rep, Shape, VecMove, X87Op, mask};
use crate::x86::state::Seg;

/// States of the decoder.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Node {
    Vex,
    Opcode,
    ModRm,
    Sib,
    Disp,
    Immediate,
    Done,
}

/// REX bits.
const REX_W: u8 = 8;
const REX_R: u8 = 4;
const REX_X: u8 = 2;
const REX_B: u8 = 1;

/// Displacement size by ModRM.mod with 32/64-bit addressing.
const DISP32_BY_MOD: [u8; 4] = [0, 1, 4, 0];
/// Displacement size by ModRM.mod with 16-bit addressing.
const DISP16_BY_MOD: [u8; 4] = [0, 1, 2, 0];

/// The entry of SSE and AVX moves (the operation comes from the
/// mandatory prefix or VEX.pp).
static VEC_ENTRY: Entry = match OPCODES[1][0x10] {
    Some(e) => e,
    None => panic!("0F 10 is an SSE move"),
};

/// The first 16 bytes of the instruction as one little-endian number,
/// zero past the bytes given, and how many of them are the caller's (at
/// most [`MAX_LEN`]).
#[inline(always)]
fn window(bytes: &[u8]) -> (u128, usize) {
    let n = bytes.len().min(16);
    let w = if n >= 8 {
        // Two overlapping words cover any length from 8 to 16 (the usual
        // callers pass 15 or more bytes).
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&bytes[..8]);
        hi.copy_from_slice(&bytes[n - 8..n]);
        let hi = u64::from_le_bytes(hi).checked_shr(8 * (16 - n as u32)).unwrap_or(0);
        u128::from(u64::from_le_bytes(lo)) | u128::from(hi) << 64
    } else {
        bytes[..n].iter().rev().fold(0u128, |w, &b| (w << 8) | u128::from(b))
    };
    (w, bytes.len().min(MAX_LEN))
}

/// What the prefixes say.
#[derive(Clone, Copy, Debug)]
struct Prefixes {
    opsize: bool,
    addrsize: bool,
    lock: bool,
    rep: Rep,
    seg: Option<Seg>,
    /// REX (or VEX) W/R/X/B bits.
    rex: u8,
    /// A REX prefix is present (AH..BH become SPL..DIL).
    rex_present: bool,
}

impl Prefixes {
    /// Applies a legacy prefix (which voids an earlier REX).
    #[inline(always)]
    fn legacy(&mut self, lead: Lead, long: bool) {
        match lead {
            Lead::OpSize => self.opsize = true,
            Lead::AddrSize => self.addrsize = true,
            Lead::Lock => self.lock = true,
            Lead::Repne => self.rep = Rep::Repne,
            Lead::Rep => self.rep = Rep::Rep,
            Lead::Es | Lead::Cs | Lead::Ss | Lead::Ds | Lead::Fs | Lead::Gs => {
                let seg = lead.segment();
                // In 64-bit mode an FS or GS prefix wins over ES, CS, SS and
                // DS prefixes (which have no effect there anyway).
                let fs_gs = matches!(self.seg, Some(Seg::Fs | Seg::Gs));
                if !long || !fs_gs || matches!(seg, Seg::Fs | Seg::Gs) {
                    self.seg = Some(seg);
                }
            }
            Lead::Opcode | Lead::Escape | Lead::Vex | Lead::Rex => {}
        }
        self.rex = 0;
        self.rex_present = false;
    }
}

pub(super) struct Fsm {
    /// The bytes from `pos` on (see [`window`]).
    w: u128,
    /// How many bytes the caller gave (at most [`MAX_LEN`]).
    avail: usize,
    /// The next byte to consume.
    pos: usize,
    mode: CpuMode,
    p: Prefixes,
    /// Address size in bytes, once the prefixes are known.
    addr_size: u8,
    /// VEX-encoded, with VEX.L.
    vex_l: Option<bool>,
    opcode: u8,
    entry: &'static Entry,
    op: Op,
    vec: Option<VecForm>,
    modrm: u8,
    base: Option<u8>,
    index: Option<(u8, u8)>,
    disp_size: u8,
    disp: i64,
    rip_relative: bool,
    /// The default segment is SS (BP or SP base).
    ss_default: bool,
    imm: u64,
}

impl Fsm {
    #[inline(always)]
    pub(super) fn new(bytes: &[u8], mode: CpuMode) -> Fsm {
        let (w, avail) = window(bytes);
        Fsm {
            w,
            avail,
            pos: 0,
            mode,
            p: Prefixes {
                opsize: false,
                addrsize: false,
                lock: false,
                rep: Rep::None,
                seg: None,
                rex: 0,
                rex_present: false,
            },
            addr_size: 0,
            vex_l: None,
            opcode: 0,
            entry: &VEC_ENTRY,
            op: Op::Mov,
            vec: None,
            modrm: 0,
            base: None,
            index: None,
            disp_size: 0,
            disp: 0,
            rip_relative: false,
            ss_default: false,
            imm: 0,
        }
    }

    /// The byte `k` places past the next one.
    #[inline(always)]
    fn peek(&self, k: u32) -> u8 {
        (self.w >> (8 * k)) as u8
    }

    #[inline(always)]
    fn next(&mut self) -> u8 {
        let b = self.w as u8;
        self.w >>= 8;
        self.pos += 1;
        b
    }

    /// Consumes `n` (at most 8) bytes as a little-endian number.
    #[inline(always)]
    fn le(&mut self, n: u8) -> u64 {
        let v = self.w as u64 & mask(n);
        self.w >>= 8 * u32::from(n);
        self.pos += usize::from(n);
        v
    }

    /// Consumes `n` (1, 2 or 4) bytes as a sign-extended number.
    #[inline(always)]
    fn signed(&mut self, n: u8) -> i64 {
        let shift = 64 - 8 * u32::from(n);
        ((self.le(n) << shift) as i64) >> shift
    }

    #[inline(always)]
    fn long(&self) -> bool {
        self.mode == CpuMode::Bits64
    }

    #[inline(always)]
    fn gpr_opsize(&self) -> u8 {
        if self.p.rex & REX_W != 0 {
            8
        } else if (self.mode == CpuMode::Bits16) != self.p.opsize {
            2
        } else {
            4
        }
    }

    /// Whether the machine went past the bytes it was given, or past 15:
    /// the first byte it needed and did not have decides.
    #[inline(always)]
    pub(super) fn overrun(&self) -> Option<DecodeError> {
        if self.pos <= self.avail {
            None
        } else if self.avail < MAX_LEN {
            Some(DecodeError::Truncated)
        } else {
            Some(DecodeError::TooLong)
        }
    }

    /// Legacy prefixes and REX, up to the opcode. A REX prefix counts only
    /// right before the opcode: one followed by a legacy prefix is void,
    /// and of several the last one counts.
    #[inline(always)]
    fn prefixes(&mut self) -> Result<Node, DecodeError> {
        let long = self.long();
        let mut lead = LEAD[usize::from(self.w as u8)];
        if !lead.is_opcode() {
            let mut p = self.p;
            loop {
                match lead {
                    Lead::Opcode | Lead::Escape => break,
                    Lead::Vex => {
                        if long {
                            break;
                        }
                        // Outside 64-bit mode C4/C5 are LES/LDS unless
                        // ModRM.mod is 11.
                        if self.pos + 1 >= self.avail {
                            self.pos += 2;
                            return Err(DecodeError::Truncated);
                        }
                        if self.peek(1) & 0xc0 != 0xc0 {
                            lead = Lead::Opcode;
                        }
                        break;
                    }
                    Lead::Rex if long => {
                        p.rex = self.w as u8 & 0xf;
                        p.rex_present = true;
                    }
                    Lead::Rex => {
                        lead = Lead::Opcode;
                        break;
                    }
                    _ => p.legacy(lead, long),
                }
                self.w >>= 8;
                self.pos += 1;
                if self.pos >= MAX_LEN {
                    self.pos = MAX_LEN + 1;
                    return Err(DecodeError::TooLong);
                }
                lead = LEAD[usize::from(self.w as u8)];
            }
            self.p = p;
        }
        self.addr_size = match (self.mode, self.p.addrsize) {
            (CpuMode::Bits16, false) | (CpuMode::Bits32, true) => 2,
            (CpuMode::Bits16, true) | (CpuMode::Bits32, false) | (CpuMode::Bits64, true) => 4,
            (CpuMode::Bits64, false) => 8,
        };
        Ok(if lead == Lead::Vex { Node::Vex } else { Node::Opcode })
    }

    /// A VEX prefix and the opcode after it (VEX moves live in the 0F map).
    #[inline(always)]
    fn vex(&mut self) -> Result<Node, DecodeError> {
        let first = self.next();
        // VEX after 66, F2, F3, LOCK or REX is #UD.
        if self.p.rex_present || self.p.lock || self.p.opsize || self.p.rep != Rep::None {
            return Err(DecodeError::Invalid);
        }
        let (rxb, w, vvvv, l, pp, map) = if first == 0xc5 {
            let p = self.next();
            ((!p >> 5) & REX_R, false, (p >> 3) & 0xf, p & 4 != 0, p & 3, 1)
        } else {
            let p1 = self.next();
            let p2 = self.next();
            ((!p1 >> 5) & (REX_R | REX_X | REX_B), p2 & 0x80 != 0, (p2 >> 3) & 0xf, p2 & 4 != 0, p2 & 3, p1 & 0x1f)
        };
        let opcode = self.next();
        self.opcode = opcode;
        if map != 1 {
            return Err(DecodeError::Unsupported { opcode });
        }
        // Outside 64-bit mode VEX.R/X/B are ignored (must be 1), and W is
        // ignored for these moves except MOVD/MOVQ.
        if self.long() {
            self.p.rex = rxb | if w { REX_W } else { 0 };
        }
        let mandatory = [Mandatory::None, Mandatory::P66, Mandatory::F3, Mandatory::F2][usize::from(pp)];
        let form = vec_move(mandatory, opcode, self.long() && w);
        // The moves take no second source: VEX.vvvv must be 1111.
        if vvvv != 0xf {
            return Err(if form.is_some() { DecodeError::Invalid } else { DecodeError::Unsupported { opcode } });
        }
        let form = form.ok_or(DecodeError::Unsupported { opcode })?;
        // MOVD/MOVQ have no 256-bit form.
        if l && form.fixed_size != 0 {
            return Err(DecodeError::Invalid);
        }
        self.vex_l = Some(l);
        self.entry = &VEC_ENTRY;
        self.vec = Some(form);
        self.op = Op::Vec(form.op);
        Ok(Node::ModRm)
    }

    #[inline(always)]
    fn opcode(&mut self) -> Result<Node, DecodeError> {
        let mut b = self.next();
        let mut map = 0;
        if b == 0x0f {
            map = 1;
            b = self.next();
        }
        self.opcode = b;
        let entry = OPCODES[map][usize::from(b)].as_ref();
        let entry = match entry {
            Some(e) if !(b == 0x82 && map == 0 && self.long()) => e,
            _ => return Err(DecodeError::Unsupported { opcode: b }),
        };
        self.entry = entry;
        self.op = entry.op;
        match entry.form {
            Form::RmReg | Form::RegRm | Form::RmImm | Form::RmOnly | Form::X87 => Ok(Node::ModRm),
            Form::Vec => self.sse(b),
            Form::MoffsLoad | Form::MoffsStore => {
                self.disp = self.le(self.addr_size) as i64;
                Ok(Node::Done)
            }
            Form::Str | Form::Bare => Ok(Node::Done),
        }
    }

    /// A legacy SSE move: the operation comes from the mandatory prefix.
    #[inline(always)]
    fn sse(&mut self, opcode: u8) -> Result<Node, DecodeError> {
        // F2/F3 win over 66 as the mandatory prefix; of F2 and F3 the last.
        let mandatory = match (self.p.rep, self.p.opsize) {
            (Rep::Rep, _) => Mandatory::F3,
            (Rep::Repne, _) => Mandatory::F2,
            (Rep::None, true) => Mandatory::P66,
            (Rep::None, false) => Mandatory::None,
        };
        let form = vec_move(mandatory, opcode, self.p.rex & REX_W != 0).ok_or(DecodeError::Unsupported { opcode })?;
        if self.p.lock {
            return Err(DecodeError::Invalid);
        }
        self.vec = Some(form);
        self.op = Op::Vec(form.op);
        Ok(Node::ModRm)
    }

    #[inline(always)]
    fn modrm(&mut self) -> Result<Node, DecodeError> {
        let m = self.next();
        self.modrm = m;
        let md = m >> 6;
        let rm = m & 7;
        if self.entry.group != Group::None {
            let reg = (m >> 3) & 7;
            self.op = group_op(self.entry.group, reg).ok_or(DecodeError::Unsupported { opcode: self.opcode })?;
        } else if self.entry.form == Form::X87 {
            let reg = (m >> 3) & 7;
            let x = x87_op(self.opcode, reg).ok_or(DecodeError::Unsupported { opcode: self.opcode })?;
            self.op = Op::X87(x);
        }
        if md == 3 {
            return Err(self.register_form());
        }
        if self.addr_size == 2 {
            return Ok(self.modrm16(md, rm));
        }
        self.disp_size = DISP32_BY_MOD[usize::from(md)];
        if rm == 4 {
            return Ok(Node::Sib);
        }
        if md == 0 && rm == 5 {
            self.disp_size = 4;
            self.rip_relative = self.long();
            return Ok(Node::Disp);
        }
        let base = rm | ((self.p.rex & REX_B) << 3);
        self.base = Some(base);
        self.ss_default = base == 4 || base == 5;
        Ok(self.after_address())
    }

    /// Register operands never reach the assists (memory exits come from
    /// memory operands), and some instructions have no register form.
    #[inline(always)]
    fn register_form(&self) -> DecodeError {
        if self.p.lock {
            return DecodeError::Invalid;
        }
        match (self.op, self.vec) {
            (Op::CmpxchgNb, _) | (_, Some(VecForm { op: VecMove::Movntdq, .. })) => DecodeError::Invalid,
            _ => DecodeError::Unsupported { opcode: self.opcode },
        }
    }

    /// 16-bit addressing: fixed base/index pairs.
    #[inline(always)]
    fn modrm16(&mut self, md: u8, rm: u8) -> Node {
        if md == 0 && rm == 6 {
            self.disp_size = 2;
        } else {
            let (base, index) = ADDR16[usize::from(rm)];
            self.base = base;
            self.index = index.map(|i| (i, 1));
            self.ss_default = base == Some(5);
            self.disp_size = DISP16_BY_MOD[usize::from(md)];
        }
        self.after_address()
    }

    #[inline(always)]
    fn sib(&mut self) -> Node {
        let s = self.next();
        let scale = 1u8 << (s >> 6);
        let index = ((s >> 3) & 7) | ((self.p.rex & REX_X) << 2);
        let base = (s & 7) | ((self.p.rex & REX_B) << 3);
        if index != 4 {
            self.index = Some((index, scale));
        }
        if s & 7 == 5 && self.modrm >> 6 == 0 {
            self.disp_size = 4;
        } else {
            self.base = Some(base);
            self.ss_default = base == 4 || base == 5;
        }
        self.after_address()
    }

    #[inline(always)]
    fn after_address(&self) -> Node {
        if self.disp_size > 0 {
            Node::Disp
        } else if self.entry.imm != Imm::None {
            Node::Immediate
        } else {
            Node::Done
        }
    }

    #[inline(always)]
    fn displacement(&mut self) -> Node {
        self.disp = self.signed(self.disp_size);
        if self.entry.imm != Imm::None { Node::Immediate } else { Node::Done }
    }

    #[inline(always)]
    fn immediate(&mut self) -> Node {
        let opsize = if self.entry.byte { 1 } else { self.gpr_opsize() };
        let value = match self.entry.imm {
            Imm::Ib => self.signed(1),
            Imm::Iz if opsize == 2 => self.signed(2),
            Imm::Iz => self.signed(4),
            Imm::None => 0,
        };
        self.imm = value as u64 & mask(opsize);
        Node::Done
    }

    /// Runs the machine. States only move forward, so the dispatch is a
    /// sequence of checks rather than one indirect jump per state: each
    /// check is a branch of its own that the CPU predicts well.
    #[inline(always)]
    pub(super) fn run(&mut self) -> Result<(), DecodeError> {
        let mut node = self.prefixes()?;
        if node == Node::Vex {
            node = self.vex()?;
        }
        if node == Node::Opcode {
            node = self.opcode()?;
        }
        if node == Node::ModRm {
            node = self.modrm()?;
        }
        if node == Node::Sib {
            node = self.sib();
        }
        if node == Node::Disp {
            node = self.displacement();
        }
        if node == Node::Immediate {
            node = self.immediate();
        }
        debug_assert_eq!(node, Node::Done);
        Ok(())
    }

    #[inline(always)]
    fn gpr(&self, num: u8, size: u8) -> Reg {
        let high8 = size == 1 && !self.p.rex_present && (4..8).contains(&num);
        Reg::Gpr { num: if high8 { num - 4 } else { num }, size, high8 }
    }

    /// Assembles the instruction once the bytes are consumed.
    #[inline(always)]
    pub(super) fn finish(&self) -> Result<Instruction, DecodeError> {
        let entry = self.entry;
        let op = self.op;
        let reg_field = ((self.modrm >> 3) & 7) | ((self.p.rex & REX_R) << 1);
        let gpr_size = if entry.byte { 1 } else { self.gpr_opsize() };
        let acc = Reg::Gpr { num: 0, size: gpr_size, high8: false };
        let mut seg = match self.p.seg {
            Some(s) => s,
            None if self.ss_default => Seg::Ss,
            None => Seg::Ds,
        };
        let mut base = self.base;
        let mut lock_ok = false;
        let mut rep = Rep::None;
        // Shape, register, operand size and memory size.
        let (shape, reg, opsize, mem_size) = match entry.form {
            // The common shapes (MOV, ALU, TEST, XCHG, ...) first.
            Form::RmReg => {
                lock_ok = entry.lockable;
                (Shape::MemReg, self.gpr(reg_field, gpr_size), gpr_size, gpr_size)
            }
            Form::RegRm => {
                let mem_size = match (op, self.opcode) {
                    (Op::Movzx, 0xb6) => 1,
                    (Op::Movzx, _) => 2,
                    _ => gpr_size,
                };
                (Shape::RegMem, self.gpr(reg_field, gpr_size), gpr_size, mem_size)
            }
            Form::RmImm => {
                lock_ok = entry.lockable && op != Op::Alu(super::AluOp::Cmp);
                (Shape::MemImm, Reg::Gpr { num: 0, size: 0, high8: false }, gpr_size, gpr_size)
            }
            Form::MoffsLoad => (Shape::RegMem, acc, gpr_size, gpr_size),
            Form::MoffsStore => (Shape::MemReg, acc, gpr_size, gpr_size),
            Form::Str => {
                rep = self.p.rep;
                // STOS writes ES:rDI (no override); the others name
                // DS:rSI (overridable), MOVS and CMPS with ES:rDI too.
                if op == Op::Stos {
                    seg = Seg::Es;
                    base = Some(7);
                } else {
                    seg = self.p.seg.unwrap_or(Seg::Ds);
                    base = Some(6);
                }
                let shape = match op {
                    Op::Movs => Shape::DiMem,
                    Op::Cmps => Shape::MemDi,
                    Op::Stos => Shape::MemReg,
                    _ => Shape::RegMem,
                };
                (shape, acc, gpr_size, gpr_size)
            }
            Form::Bare => {
                return self.bare();
            }
            Form::X87 => {
                let size = x87_size(self.opcode, (self.modrm >> 3) & 7);
                let shape = match op {
                    Op::X87(X87Op::Fld | X87Op::Fild) => Shape::RegMem,
                    _ => Shape::MemReg,
                };
                (shape, Reg::St0, size, size)
            }
            Form::Vec => {
                let form = self.vec.ok_or(DecodeError::Invalid)?;
                let size = match (form.fixed_size, self.vex_l) {
                    (0, Some(true)) => 32,
                    (0, _) => 16,
                    (n, _) => n,
                };
                let shape = if form.to_mem { Shape::MemReg } else { Shape::RegMem };
                (shape, Reg::Xmm(reg_field), size, size)
            }
            Form::RmOnly => {
                let size = if self.p.rex & REX_W != 0 { 16 } else { 8 };
                lock_ok = true;
                (Shape::Mem, Reg::Gpr { num: 0, size: 0, high8: false }, size, size)
            }
        };
        if self.p.lock && !lock_ok {
            return Err(DecodeError::Invalid);
        }
        Ok(Instruction {
            len: self.pos as u8,
            op,
            opsize,
            addr_size: self.addr_size,
            rep,
            lock: self.p.lock,
            seg_override: self.p.seg,
            vex: self.vex_l.is_some(),
            shape,
            mem: Mem {
                seg,
                base,
                index: self.index,
                disp: self.disp,
                rip_relative: self.rip_relative,
                addr_size: self.addr_size,
                size: mem_size,
            },
            reg,
            imm: self.imm,
        })
    }

    /// INT3: no operands.
    #[inline(always)]
    fn bare(&self) -> Result<Instruction, DecodeError> {
        if self.p.lock {
            return Err(DecodeError::Invalid);
        }
        Ok(Instruction {
            len: self.pos as u8,
            op: self.op,
            opsize: 1,
            addr_size: self.addr_size,
            rep: Rep::None,
            lock: false,
            seg_override: self.p.seg,
            vex: false,
            shape: Shape::None,
            mem: Mem { seg: Seg::Ds, base: None, index: None, disp: 0, rip_relative: false, addr_size: 0, size: 0 },
            reg: Reg::Gpr { num: 0, size: 0, high8: false },
            imm: 0,
        })
    }
}
