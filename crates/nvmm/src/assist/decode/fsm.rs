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

use super::instruction::{Instruction, Shape, field, op_number};
use super::tables::{
    ADDR16, DISP32_BY_MOD, Entry, Form, Imm, LEAD, Lead, Mandatory, ONE_BYTE, REX_B, REX_R, REX_W, REX_X, TWO_BYTE,
    VecForm, group_op, vec_move, x87_op, x87_size,
};
use super::{AluOp, CpuMode, DecodeError, MAX_LEN, Op, Rep, VecMove, X87Op, mask};
use crate::x86::state::Seg;

/// Displacement size by ModRM.mod with 16-bit addressing.
const DISP16_BY_MOD: [u8; 4] = [0, 1, 2, 0];

/// The entry of SSE and AVX moves (the operation comes from the
/// mandatory prefix or VEX.pp).
static VEC_ENTRY: Entry = TWO_BYTE[0x10];

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
    } else if n >= 4 {
        // Likewise with two 4-byte words.
        let mut lo = [0u8; 4];
        let mut hi = [0u8; 4];
        lo.copy_from_slice(&bytes[..4]);
        hi.copy_from_slice(&bytes[n - 4..n]);
        u128::from(u64::from(u32::from_le_bytes(lo)) | u64::from(u32::from_le_bytes(hi)) << (8 * (n - 4)))
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
    /// Segment override: 0 for none, else the segment plus 1.
    seg: u8,
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
                let fs_gs = self.seg == Seg::Fs as u8 + 1 || self.seg == Seg::Gs as u8 + 1;
                if !long || !fs_gs || matches!(seg, Seg::Fs | Seg::Gs) {
                    self.seg = seg as u8 + 1;
                }
            }
            Lead::Opcode | Lead::Escape | Lead::Vex | Lead::Rex => {}
        }
        self.rex = 0;
        self.rex_present = false;
    }
}

pub(super) struct Fsm<const P: bool> {
    /// The bytes from `pos` on (see [`window`]).
    w: u128,
    /// How many bytes the caller gave (at most [`MAX_LEN`]).
    avail: usize,
    /// The next byte to consume.
    pos: usize,
    mode: CpuMode,
    p: Prefixes,
    /// Address size, as log2 of the bytes minus 1, once the prefixes are
    /// known.
    addr_size: u8,
    /// Operand size of general-purpose operands (not byte ones), once the
    /// prefixes are known.
    osize: u8,
    /// The fields of [`Instruction::bits`] the prefixes decide (LOCK, VEX,
    /// segment override, address size).
    fixed: u64,
    /// Segment of memory operands: the override, else DS.
    seg_ds: Seg,
    /// Segment of BP/SP-based memory operands: the override, else SS.
    seg_ss: Seg,
    /// VEX-encoded, with VEX.L.
    vex_l: Option<bool>,
    opcode: u8,
    entry: &'static Entry,
    /// The operation's number.
    op: u8,
    vec: Option<VecForm>,
    modrm: u8,
    /// The base, index, scale and RIP fields of the memory operand.
    mem: u64,
    /// The default segment is SS (BP or SP base).
    ss_default: bool,
    disp_size: u8,
    disp: i64,
    imm: u64,
}

/// Decodes the instruction at the start of `bytes` in `mode`. The
/// machine comes in two builds: one for instructions with prefixes, and
/// one for the many without, where everything the prefixes decide is a
/// constant of the mode. (Most instructions never get here: see
/// [`common`](super::common).)
#[inline(never)]
pub(super) fn decode(bytes: &[u8], mode: CpuMode) -> Result<Instruction, DecodeError> {
    let (w, avail) = window(bytes);
    let lead = LEAD[usize::from(w as u8)];
    if lead.is_opcode() {
        return Fsm::<false>::new(w, avail, mode).decode();
    }
    // A lone REX prefix, the most common one in 64-bit code, takes the
    // unprefixed build too (REX is the only prefix state it keeps).
    if lead == Lead::Rex && mode == CpuMode::Bits64 && LEAD[usize::from((w >> 8) as u8)].is_opcode() {
        let mut f = Fsm::<false>::new(w >> 8, avail, mode);
        f.pos = 1;
        f.p.rex = w as u8 & 0xf;
        f.p.rex_present = true;
        return f.decode();
    }
    Fsm::<true>::new(w, avail, mode).decode()
}

/// What the mode alone decides: address size (log2 of the bytes, minus
/// 1) and operand size.
const MODE_DEFAULTS: [(u8, u8); 3] = [(0, 2), (1, 4), (2, 4)];

impl Prefixes {
    const NONE: Prefixes =
        Prefixes { opsize: false, addrsize: false, lock: false, rep: Rep::None, seg: 0, rex: 0, rex_present: false };
}

impl<const P: bool> Fsm<P> {
    #[inline(always)]
    fn new(w: u128, avail: usize, mode: CpuMode) -> Fsm<P> {
        Fsm {
            w,
            avail,
            pos: 0,
            mode,
            p: Prefixes::NONE,
            addr_size: 0,
            osize: 4,
            fixed: 0,
            seg_ds: Seg::Ds,
            seg_ss: Seg::Ss,
            vex_l: None,
            opcode: 0,
            entry: &VEC_ENTRY,
            op: 0,
            vec: None,
            modrm: 0,
            mem: 0,
            ss_default: false,
            disp_size: 0,
            disp: 0,
            imm: 0,
        }
    }

    /// Runs the machine and assembles the instruction; running out of
    /// bytes decides over anything seen on the way.
    #[inline(always)]
    fn decode(mut self) -> Result<Instruction, DecodeError> {
        if let Err(e) = self.run() {
            return Err(self.overrun().unwrap_or(e));
        }
        if let Some(e) = self.overrun() {
            return Err(e);
        }
        self.finish()
    }

    /// The prefixes (at most a REX in the build for unprefixed
    /// instructions).
    #[inline(always)]
    fn pfx(&self) -> Prefixes {
        if P { self.p } else { Prefixes { rex: self.p.rex, rex_present: self.p.rex_present, ..Prefixes::NONE } }
    }

    #[inline(always)]
    fn addr_size(&self) -> u8 {
        if P { self.addr_size } else { MODE_DEFAULTS[self.mode as usize].0 }
    }

    #[inline(always)]
    fn osize(&self) -> u8 {
        match P {
            true => self.osize,
            false if self.p.rex & REX_W != 0 => 8,
            false => MODE_DEFAULTS[self.mode as usize].1,
        }
    }

    #[inline(always)]
    fn fixed(&self) -> u64 {
        if P { self.fixed } else { u64::from(self.addr_size()) << field::ADDR_SIZE }
    }

    #[inline(always)]
    fn seg_ds(&self) -> Seg {
        if P { self.seg_ds } else { Seg::Ds }
    }

    #[inline(always)]
    fn seg_ss(&self) -> Seg {
        if P { self.seg_ss } else { Seg::Ss }
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
    fn take_signed(&mut self, n: u8) -> i64 {
        let bits = 8 * u32::from(n);
        let shift = 64 - bits;
        let v = (((self.w as u64) << shift) as i64) >> shift;
        self.w >>= bits;
        self.pos += usize::from(n);
        v
    }

    #[inline(always)]
    fn long(&self) -> bool {
        self.mode == CpuMode::Bits64
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

    /// Legacy prefixes and REX, up to the opcode (see [`decode`]);
    /// whether a VEX prefix follows.
    #[inline(always)]
    fn prefixes(&mut self) -> Result<bool, DecodeError> {
        if P { self.prefixed(LEAD[usize::from(self.w as u8)]) } else { Ok(false) }
    }

    /// Legacy prefixes and REX. A REX prefix counts only right before the
    /// opcode: one followed by a legacy prefix is void, and of several the
    /// last one counts.
    #[inline(always)]
    fn prefixed(&mut self, mut lead: Lead) -> Result<bool, DecodeError> {
        /// Address size (log2 of the bytes, minus 1) by mode and 67 prefix.
        const ADDR_SIZES: [[u8; 2]; 3] = [[0, 1], [1, 0], [2, 1]];
        /// Operand size by mode and 66 prefix (without REX.W).
        const OSIZES: [[u8; 2]; 3] = [[2, 4], [4, 2], [4, 2]];
        let long = self.long();
        let mut p = self.p;
        loop {
            if lead == Lead::Rex && long {
                p.rex = self.w as u8 & 0xf;
                p.rex_present = true;
            } else if lead.is_legacy() {
                p.legacy(lead, long);
            } else {
                break;
            }
            self.w >>= 8;
            self.pos += 1;
            if self.pos >= MAX_LEN {
                self.pos = MAX_LEN + 1;
                return Err(DecodeError::TooLong);
            }
            lead = LEAD[usize::from(self.w as u8)];
        }
        if lead == Lead::Vex && !long {
            // Outside 64-bit mode C4/C5 are LES/LDS unless ModRM.mod is 11.
            if self.pos + 1 >= self.avail {
                self.pos += 2;
                return Err(DecodeError::Truncated);
            }
            if self.peek(1) & 0xc0 != 0xc0 {
                lead = Lead::Opcode;
            }
        }
        self.p = p;
        let mode = Self::mode_index(self.mode);
        self.addr_size = ADDR_SIZES[mode][usize::from(p.addrsize)];
        self.osize = if p.rex & REX_W != 0 { 8 } else { OSIZES[mode][usize::from(p.opsize)] };
        self.fixed = u64::from(p.lock) << field::LOCK
            | u64::from(p.seg) << field::SEG_OVERRIDE
            | u64::from(self.addr_size) << field::ADDR_SIZE;
        if p.seg != 0 {
            let seg = Seg::ALL[usize::from(p.seg - 1)];
            self.seg_ds = seg;
            self.seg_ss = seg;
        }
        Ok(lead == Lead::Vex)
    }

    #[inline(always)]
    fn mode_index(mode: CpuMode) -> usize {
        match mode {
            CpuMode::Bits16 => 0,
            CpuMode::Bits32 => 1,
            CpuMode::Bits64 => 2,
        }
    }

    /// A VEX prefix and the opcode after it (VEX moves live in the 0F
    /// map); a ModRM byte follows.
    #[inline(always)]
    fn vex(&mut self) -> Result<bool, DecodeError> {
        let first = self.next();
        // VEX after 66, F2, F3, LOCK or REX is #UD.
        if self.pfx().rex_present || self.pfx().lock || self.pfx().opsize || self.pfx().rep != Rep::None {
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
        self.fixed |= 1 << field::VEX;
        self.entry = &VEC_ENTRY;
        self.vec = Some(form);
        self.op = op_number(Op::Vec(form.op));
        Ok(true)
    }

    /// The opcode; whether a ModRM byte follows.
    #[inline(always)]
    fn opcode(&mut self) -> Result<bool, DecodeError> {
        let mut b = self.next();
        let entry = if b == 0x0f {
            b = self.next();
            &TWO_BYTE[usize::from(b)]
        } else {
            &ONE_BYTE[usize::from(self.long())][usize::from(b)]
        };
        self.opcode = b;
        self.entry = entry;
        self.op = entry.op;
        if entry.modrm {
            return Ok(true);
        }
        match entry.form {
            Form::RmReg | Form::RegRm | Form::RmImm | Form::RmOnly | Form::X87 => Ok(true),
            Form::Vec => self.sse(b),
            Form::MoffsLoad | Form::MoffsStore => {
                self.disp = self.le(2 << self.addr_size()) as i64;
                Ok(false)
            }
            Form::Str | Form::Bare => Ok(false),
            Form::None => Err(DecodeError::Unsupported { opcode: b }),
        }
    }

    /// A legacy SSE move: the operation comes from the mandatory prefix.
    #[inline(always)]
    fn sse(&mut self, opcode: u8) -> Result<bool, DecodeError> {
        // F2/F3 win over 66 as the mandatory prefix; of F2 and F3 the last.
        let mandatory = match (self.pfx().rep, self.pfx().opsize) {
            (Rep::Rep, _) => Mandatory::F3,
            (Rep::Repne, _) => Mandatory::F2,
            (Rep::None, true) => Mandatory::P66,
            (Rep::None, false) => Mandatory::None,
        };
        let form =
            vec_move(mandatory, opcode, self.pfx().rex & REX_W != 0).ok_or(DecodeError::Unsupported { opcode })?;
        if self.pfx().lock {
            return Err(DecodeError::Invalid);
        }
        self.vec = Some(form);
        self.op = op_number(Op::Vec(form.op));
        Ok(true)
    }

    /// ModRM, then SIB, displacement and immediate.
    #[inline(always)]
    fn modrm(&mut self) -> Result<(), DecodeError> {
        let m = self.next();
        self.modrm = m;
        let md = m >> 6;
        let rm = m & 7;
        if self.entry.reg_op {
            self.op = self.operation_by_reg((m >> 3) & 7)?;
        }
        if md == 3 {
            return Err(self.register_form());
        }
        if self.addr_size() == 0 {
            self.modrm16(md, rm);
        } else {
            self.disp_size = DISP32_BY_MOD[usize::from(md)];
            if rm == 4 {
                self.sib();
            } else if md == 0 && rm == 5 {
                self.disp_size = 4;
                self.mem = u64::from(self.long()) << field::RIP;
            } else {
                let base = rm | ((self.pfx().rex & REX_B) << 3);
                self.mem = (field::PRESENT | u64::from(base)) << field::BASE;
                self.ss_default = base & 0xe == 4;
            }
        }
        if self.disp_size != 0 {
            self.disp = self.take_signed(self.disp_size);
        }
        if self.entry.imm != Imm::None {
            self.immediate();
        }
        Ok(())
    }

    /// The operation of a group or x87 opcode, from ModRM.reg.
    #[inline(always)]
    fn operation_by_reg(&self, reg: u8) -> Result<u8, DecodeError> {
        let unsupported = DecodeError::Unsupported { opcode: self.opcode };
        if self.entry.form == Form::X87 {
            x87_op(self.opcode, reg).map(|x| op_number(Op::X87(x))).ok_or(unsupported)
        } else {
            group_op(self.entry.group, reg).ok_or(unsupported)
        }
    }

    /// Register operands never reach the assists (memory exits come from
    /// memory operands), and some instructions have no register form.
    #[inline(always)]
    fn register_form(&self) -> DecodeError {
        if self.pfx().lock {
            return DecodeError::Invalid;
        }
        match self.vec {
            _ if self.op == op_number(Op::CmpxchgNb) => DecodeError::Invalid,
            Some(VecForm { op: VecMove::Movntdq, .. }) => DecodeError::Invalid,
            _ => DecodeError::Unsupported { opcode: self.opcode },
        }
    }

    /// 16-bit addressing: fixed base/index pairs.
    #[inline(always)]
    fn modrm16(&mut self, md: u8, rm: u8) {
        if md == 0 && rm == 6 {
            self.disp_size = 2;
        } else {
            let (base, index) = ADDR16[usize::from(rm)];
            self.mem = (field::PRESENT | u64::from(base)) << field::BASE;
            if let Some(i) = index {
                self.mem |= (field::PRESENT | u64::from(i)) << field::INDEX;
            }
            self.ss_default = base == 5;
            self.disp_size = DISP16_BY_MOD[usize::from(md)];
        }
    }

    #[inline(always)]
    fn sib(&mut self) {
        let s = self.next();
        let index = ((s >> 3) & 7) | ((self.pfx().rex & REX_X) << 2);
        let base = (s & 7) | ((self.pfx().rex & REX_B) << 3);
        if index != 4 {
            self.mem = (field::PRESENT | u64::from(index)) << field::INDEX | u64::from(s >> 6) << field::SCALE;
        }
        if s & 7 == 5 && self.modrm >> 6 == 0 {
            self.disp_size = 4;
        } else {
            self.mem |= (field::PRESENT | u64::from(base)) << field::BASE;
            self.ss_default = base & 0xe == 4;
        }
    }

    /// The immediate.
    #[inline(always)]
    fn immediate(&mut self) {
        /// Immediate bytes by encoding and whether the operand size is 2.
        const BYTES: [[u8; 2]; 3] = [[0, 0], [1, 1], [4, 2]];
        let opsize = if self.entry.byte { 1 } else { self.osize() };
        let n = BYTES[self.entry.imm as usize][usize::from(opsize == 2)];
        self.imm = self.take_signed(n) as u64 & mask(opsize);
    }

    /// Runs the machine. The states only move forward, each calling the
    /// next: prefixes → VEX or opcode → ModRM (→ SIB) → displacement →
    /// immediate.
    #[inline(always)]
    pub(super) fn run(&mut self) -> Result<(), DecodeError> {
        let modrm = if P && self.prefixes()? { self.vex()? } else { self.opcode()? };
        if modrm {
            self.modrm()?;
        }
        Ok(())
    }

    /// A general-purpose register operand's fields.
    #[inline(always)]
    fn gpr(&self, num: u8, size: u8) -> u64 {
        // Without a branch: AH, CH, DH, BH are byte registers 4-7 without
        // REX.
        let high8 = (size == 1) & !self.pfx().rex_present & (num & 0xc == 4);
        let num = num - 4 * u8::from(high8);
        u64::from(num) << field::REG_NUM | u64::from(high8) << field::HIGH8
    }

    /// The segment of a ModRM memory operand.
    #[inline(always)]
    fn modrm_segment(&self) -> Seg {
        if self.ss_default { self.seg_ss() } else { self.seg_ds() }
    }

    /// Assembles the instruction once the bytes are consumed.
    #[inline(always)]
    pub(super) fn finish(&self) -> Result<Instruction, DecodeError> {
        let entry = self.entry;
        if !entry.form.is_alu_like() {
            return self.finish_other();
        }
        // MOV, MOVZX, ALU, TEST, XCHG, CMPXCHG, XADD: memory and a
        // general-purpose register or an immediate.
        let op = self.op;
        let size = if entry.byte { 1 } else { self.osize() };
        let reg = if entry.form != Form::RmImm {
            self.gpr(((self.modrm >> 3) & 7) | ((self.pfx().rex & REX_R) << 1), size)
        } else {
            0
        };
        let mem_size = if entry.mem_size != 0 { entry.mem_size } else { size };
        let lock_ok = entry.lockable && op != op_number(Op::Alu(AluOp::Cmp));
        if self.pfx().lock && !lock_ok {
            return Err(DecodeError::Invalid);
        }
        let bits = self.fixed()
            | self.pos as u64
            | u64::from(entry.form as u8) << field::SHAPE
            | u64::from(op) << field::OP
            | u64::from(size) << field::OPSIZE
            | reg
            | (self.modrm_segment() as u64) << field::MEM_SEG
            | self.mem
            | u64::from(mem_size) << field::MEM_SIZE;
        Ok(Instruction { bits, disp: self.disp, imm: self.imm })
    }

    /// The other forms: accumulator, strings, x87, vectors, CMPXCHG8B/16B,
    /// INT3.
    #[inline(always)]
    fn finish_other(&self) -> Result<Instruction, DecodeError> {
        let entry = self.entry;
        let op = self.op;
        let gpr_size = if entry.byte { 1 } else { self.osize() };
        let mut seg = self.modrm_segment();
        let mut mem = self.mem;
        let mut lock_ok = false;
        let mut rep = Rep::None;
        let (shape, reg, opsize, mem_size) = match entry.form {
            Form::MoffsLoad => (Shape::RegMem, 0, gpr_size, gpr_size),
            Form::MoffsStore => (Shape::MemReg, 0, gpr_size, gpr_size),
            Form::Str => {
                rep = self.pfx().rep;
                // STOS writes ES:rDI (no override); the others name
                // DS:rSI (overridable), MOVS and CMPS with ES:rDI too.
                let (s, base) = if op == op_number(Op::Stos) { (Seg::Es, 7) } else { (self.seg_ds(), 6) };
                seg = s;
                mem = (field::PRESENT | base) << field::BASE;
                let shape = if op == op_number(Op::Movs) {
                    Shape::DiMem
                } else if op == op_number(Op::Cmps) {
                    Shape::MemDi
                } else if op == op_number(Op::Stos) {
                    Shape::MemReg
                } else {
                    Shape::RegMem
                };
                (shape, 0, gpr_size, gpr_size)
            }
            Form::Bare => (Shape::None, 0, 1, 0),
            Form::X87 => {
                let size = x87_size(self.opcode, (self.modrm >> 3) & 7);
                let load = op == op_number(Op::X87(X87Op::Fld)) || op == op_number(Op::X87(X87Op::Fild));
                let shape = if load { Shape::RegMem } else { Shape::MemReg };
                (shape, field::KIND_ST0 << field::REG_KIND, size, size)
            }
            Form::Vec => {
                let form = self.vec.ok_or(DecodeError::Invalid)?;
                let size = match (form.fixed_size, self.vex_l) {
                    (0, Some(true)) => 32,
                    (0, _) => 16,
                    (n, _) => n,
                };
                let shape = if form.to_mem { Shape::MemReg } else { Shape::RegMem };
                let num = ((self.modrm >> 3) & 7) | ((self.pfx().rex & REX_R) << 1);
                let reg = field::KIND_XMM << field::REG_KIND | u64::from(num) << field::REG_NUM;
                (shape, reg, size, size)
            }
            Form::RmOnly => {
                let size = if self.pfx().rex & REX_W != 0 { 16 } else { 8 };
                lock_ok = true;
                (Shape::Mem, 0, size, size)
            }
            Form::RmReg | Form::RegRm | Form::RmImm | Form::None => {
                return Err(DecodeError::Unsupported { opcode: self.opcode });
            }
        };
        if self.pfx().lock && !lock_ok {
            return Err(DecodeError::Invalid);
        }
        let bits = self.fixed()
            | self.pos as u64
            | (rep as u64) << field::REP
            | (shape as u64) << field::SHAPE
            | u64::from(op) << field::OP
            | u64::from(opsize) << field::OPSIZE
            | reg
            | (seg as u64) << field::MEM_SEG
            | mem
            | u64::from(mem_size) << field::MEM_SIZE;
        Ok(Instruction { bits, disp: self.disp, imm: self.imm })
    }
}
