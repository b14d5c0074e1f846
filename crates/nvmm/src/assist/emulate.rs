//! The instruction emulator: executes one decoded instruction against the
//! VCPU state and guest memory, both reached through traits
//! ([`EmuCpu`], [`EmuMemory`]) so that tests and fuzzers drive it without
//! KVM.
//!
//! What it models: effective addresses (RIP-relative from the next
//! instruction, BP/SP-based addresses in SS, everything truncated to the
//! address size); segmentation (bases, present and type checks, expand-up
//! and expand-down limits, 64-bit mode chosen by CS.L with only FS/GS bases
//! and canonical checks); alignment checks for MOVAPS/MOVDQA/MOVNTDQ and
//! CMPXCHG16B (#GP) and for CPL 3 with CR0.AM and RFLAGS.AC (#AC); flags
//! computed in software; REP with RCX, ECX or CX by address size and DF,
//! REPE/REPNE termination for CMPS, and REP meaning nothing for other
//! instructions; RIP advanced past the instruction, RF cleared.
//!
//! LOCK: the emulator reads, computes and writes; an MMIO device sees a read
//! then a write, as with any emulated read-modify-write. Atomicity against
//! other VCPUs touching the same location in the meantime is not provided
//! (the instructions that fault into the assists are MMIO accesses, where
//! the device, not memory, arbitrates). TF single-stepping of an emulated
//! instruction is not reported.
//!
//! [`execute_control`] runs the instructions of
//! [`decode_control`](super::decode::decode_control): x87 control, MXCSR,
//! vector register moves and XOR idioms, VZEROUPPER/VZEROALL, XGETBV, the
//! XSAVE family (standard and compacted formats) and the integer
//! instructions CLAC, STAC, POPCNT, CRC32, VERR, VERW, LSL and LAR, each
//! checked against the CPU in `tests/emulator.rs` (or, where the host runs
//! guest user code with descriptors of its own, against the SDM).
#![forbid(unsafe_code)]

use super::decode::{AluOp, CpuMode, Instruction, Mem, Op, Operand, Reg, Rep, Shape, VecMove, X87Op, mask};
use super::flags::{self, rflags};
use super::mmu::{Access, AccessKind};
use super::x87;
use crate::x86::state::{Cr, Gpr, Seg, State, StateMask};
use crate::x86::xsave::Xsave;

mod control;
mod held_cpu;
mod x87_env;
mod xsave_area;

pub use control::execute_control;
pub use held_cpu::HeldCpu;

/// Why an instruction could not be emulated.
#[derive(Debug)]
pub enum EmuError {
    /// The guest gets this exception (RIP still at the instruction, except
    /// for INT3 where it is past it, like the CPU).
    Exception {
        /// Vector.
        vector: u8,
        /// Error code, for exceptions that push one.
        error_code: Option<u32>,
        /// Faulting linear address, for #PF.
        cr2: Option<u64>,
    },
    /// The instruction is not supported.
    Unsupported(&'static str),
    /// Guest memory that cannot be accessed from the host (for instance a
    /// page table in MMIO).
    Memory(&'static str),
    /// Reading or writing the VCPU state failed.
    State(crate::error::Error),
}

impl std::fmt::Display for EmuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmuError::Exception { vector, error_code, .. } => {
                write!(f, "the instruction raises exception {vector}")?;
                if let Some(e) = error_code {
                    write!(f, " (error code {e:#x})")?;
                }
                Ok(())
            }
            EmuError::Unsupported(what) => write!(f, "cannot emulate: {what}"),
            EmuError::Memory(what) => write!(f, "guest memory not accessible: {what}"),
            EmuError::State(e) => write!(f, "VCPU state: {e}"),
        }
    }
}

impl std::error::Error for EmuError {}

fn gp0() -> EmuError {
    EmuError::Exception { vector: 13, error_code: Some(0), cr2: None }
}

fn ss0() -> EmuError {
    EmuError::Exception { vector: 12, error_code: Some(0), cr2: None }
}

/// The VCPU as the emulator sees it.
pub trait EmuCpu {
    /// The state with at least the components of `mask` current.
    fn state(&mut self, mask: StateMask) -> Result<&mut State, EmuError>;
    /// The XSAVE area beyond FXSAVE (current once `state` got the FPU).
    fn xsave(&mut self) -> &mut Xsave;
    /// Marks components the emulator changed.
    fn mark(&mut self, mask: StateMask);
}

/// Guest memory as the emulator sees it: linear addresses, translated and
/// dispatched (RAM or device) by the implementation, which raises #PF.
/// Outside 64-bit mode no access crosses 4 GiB: the emulator splits one
/// that would and continues it at linear address 0, as the CPU does.
pub trait EmuMemory {
    /// Reads `buf.len()` bytes at a linear address.
    fn read(&mut self, linear: u64, buf: &mut [u8], access: Access) -> Result<(), EmuError>;
    /// Writes `buf` at a linear address (`access.kind` is
    /// [`AccessKind::Write`]).
    fn write(&mut self, linear: u64, buf: &[u8], access: Access) -> Result<(), EmuError>;
}

/// Most REP iterations one call performs before returning with RIP still
/// at the instruction (the guest then re-executes it).
pub const REP_BATCH: u64 = 4096;

/// The code mode from CS and EFER (64-bit only with CS.L in long mode).
pub fn cpu_mode(st: &State) -> CpuMode {
    CpuMode::of(st)
}

struct Ctx<'a> {
    st: &'a mut State,
    mode: CpuMode,
    cpl: u8,
    next_rip: u64,
}

impl<'a> Ctx<'a> {
    fn new(st: &'a mut State, insn: &Instruction) -> Ctx<'a> {
        Ctx::with_len(st, insn.len())
    }

    /// The context of an instruction of `len` bytes at RIP.
    fn with_len(st: &'a mut State, len: u8) -> Ctx<'a> {
        let mode = CpuMode::of(st);
        let next_rip = mode.advance(st.gprs[Gpr::Rip], u64::from(len));
        let cpl = st.segs[Seg::Ss].attrib.dpl();
        Ctx { st, mode, cpl, next_rip }
    }

    /// RIP past the instruction (and RF clear) once it completed.
    fn complete(&mut self, done: bool) {
        if done {
            self.st.gprs[Gpr::Rip] = self.next_rip;
            self.st.gprs[Gpr::Rflags] &= !rflags::RF;
        }
    }

    fn long(&self) -> bool {
        self.mode == CpuMode::Bits64
    }

    fn gpr(&self, n: u8) -> u64 {
        self.st.gprs.0[usize::from(n)]
    }

    #[inline]
    fn read_reg(&self, r: Reg) -> u64 {
        match r {
            Reg::Gpr { num, size, high8: true } => (self.gpr(num) >> 8) & mask(size),
            Reg::Gpr { num, size, .. } => self.gpr(num) & mask(size),
            _ => 0,
        }
    }

    #[inline]
    fn write_reg(&mut self, r: Reg, v: u64) {
        if let Reg::Gpr { num, size, high8 } = r {
            let old = self.gpr(num);
            let new = match (size, high8) {
                (1, true) => (old & !0xff00) | ((v & 0xff) << 8),
                (1, false) => (old & !0xff) | (v & 0xff),
                (2, _) => (old & !0xffff) | (v & 0xffff),
                // 32-bit writes zero bits 63:32 (in every mode).
                (4, _) => v & 0xffff_ffff,
                _ => v,
            };
            self.st.gprs.0[usize::from(num)] = new;
        }
    }

    /// Effective address of a memory operand.
    #[inline]
    fn ea(&self, m: &Mem) -> u64 {
        let am = mask(m.addr_size());
        let mut a = m.disp() as u64;
        if m.rip_relative() {
            a = a.wrapping_add(self.next_rip);
        }
        if let Some(b) = m.base() {
            a = a.wrapping_add(self.gpr(b) & am);
        }
        if let Some((i, scale)) = m.index() {
            a = a.wrapping_add((self.gpr(i) & am).wrapping_mul(u64::from(scale)));
        }
        a & am
    }

    /// Segmentation: the linear address of `size` bytes at offset `ea` in
    /// segment `seg`.
    #[inline]
    fn linear(&self, seg: Seg, ea: u64, size: u64, write: bool) -> Result<u64, EmuError> {
        let fault = || if seg == Seg::Ss { ss0() } else { gp0() };
        if self.long() {
            let base = if matches!(seg, Seg::Fs | Seg::Gs) { self.st.segs[seg].base } else { 0 };
            let lin = base.wrapping_add(ea);
            // Canonical check (4-level; a 5-level guest has more room).
            let la57 = self.st.crs[Cr::Cr4] & (1 << 12) != 0;
            let top = if la57 { 56 } else { 47 };
            // The bits above `top` all 0 or all 1: the top plus 1 is 0 or 1.
            let canonical = |a: u64| (((a as i64) >> top) as u64).wrapping_add(1) <= 1;
            if !canonical(lin) || !canonical(lin.wrapping_add(size - 1)) {
                return Err(fault());
            }
            return Ok(lin);
        }
        let s = self.st.segs[seg];
        let protected = self.st.crs[Cr::Cr0] & 1 != 0 && self.st.gprs[Gpr::Rflags] & (1 << 17) == 0;
        if protected {
            if !s.attrib.p() || !s.attrib.s() {
                return Err(fault());
            }
            // Type bit 3: code; bit 1: writable (data) or readable (code).
            let code = s.attrib.typ() & 8 != 0;
            let rw = s.attrib.typ() & 2 != 0;
            let allowed = if write { !code && rw } else { !code || rw };
            if !allowed {
                return Err(fault());
            }
        }
        let last = ea.checked_add(size - 1).ok_or_else(fault)?;
        let expand_down = s.attrib.s() && s.attrib.typ() & 0xc == 0x4;
        let limit = u64::from(s.limit);
        let ok = if expand_down {
            let upper = if s.attrib.def() { 0xffff_ffff } else { 0xffff };
            ea > limit && last <= upper
        } else {
            last <= limit
        };
        if !ok {
            return Err(fault());
        }
        Ok(s.base.wrapping_add(ea) & 0xffff_ffff)
    }

    #[inline]
    fn access(&self, kind: AccessKind) -> Access {
        Access { kind, user: self.cpl == 3, ac: self.st.gprs[Gpr::Rflags] & rflags::AC != 0 }
    }

    /// #AC for misaligned accesses at CPL 3 with CR0.AM and RFLAGS.AC.
    #[inline]
    fn alignment_check(&self, lin: u64, size: u64) -> Result<(), EmuError> {
        if self.cpl != 3 {
            return Ok(());
        }
        let on = self.st.crs[Cr::Cr0] & (1 << 18) != 0 && self.st.gprs[Gpr::Rflags] & rflags::AC != 0;
        let natural = size.min(8).next_power_of_two();
        if on && lin % natural != 0 {
            return Err(EmuError::Exception { vector: 17, error_code: Some(0), cr2: None });
        }
        Ok(())
    }

    #[inline]
    fn mem_linear(&self, m: &Mem, size: u64, write: bool) -> Result<u64, EmuError> {
        let lin = self.linear(m.seg(), self.ea(m), size, write)?;
        self.alignment_check(lin, size)?;
        Ok(lin)
    }

    #[inline]
    fn load<M: EmuMemory + ?Sized>(&self, mem: &mut M, m: &Mem, buf: &mut [u8]) -> Result<(), EmuError> {
        let lin = self.mem_linear(m, buf.len() as u64, false)?;
        self.read_linear(mem, lin, buf, self.access(AccessKind::Read))
    }

    #[inline]
    fn store<M: EmuMemory + ?Sized>(&self, mem: &mut M, m: &Mem, buf: &[u8]) -> Result<(), EmuError> {
        let lin = self.mem_linear(m, buf.len() as u64, true)?;
        self.write_linear(mem, lin, buf, self.access(AccessKind::Write))
    }

    /// Where an access of `len` bytes at `lin` crosses 4 GiB outside
    /// 64-bit mode, whose linear addresses have 32 bits: the bytes before
    /// it (the rest continue at 0, as on the CPU).
    #[inline]
    fn wraps_after(&self, lin: u64, len: usize) -> Option<usize> {
        if self.long() {
            return None;
        }
        let room = (1u64 << 32).wrapping_sub(lin);
        (room < len as u64).then_some(room as usize)
    }

    /// Reads `buf` at the linear address `lin`, wrapping at 4 GiB
    /// outside 64-bit mode.
    #[inline]
    fn read_linear<M: EmuMemory + ?Sized>(
        &self,
        mem: &mut M,
        lin: u64,
        buf: &mut [u8],
        a: Access,
    ) -> Result<(), EmuError> {
        match self.wraps_after(lin, buf.len()) {
            None => mem.read(lin, buf, a),
            Some(n) => {
                let (low, high) = buf.split_at_mut(n);
                mem.read(lin, low, a)?;
                mem.read(0, high, a)
            }
        }
    }

    /// Writes `buf` at the linear address `lin`, wrapping at 4 GiB
    /// outside 64-bit mode.
    #[inline]
    fn write_linear<M: EmuMemory + ?Sized>(
        &self,
        mem: &mut M,
        lin: u64,
        buf: &[u8],
        a: Access,
    ) -> Result<(), EmuError> {
        match self.wraps_after(lin, buf.len()) {
            None => mem.write(lin, buf, a),
            Some(n) => {
                mem.write(lin, &buf[..n], a)?;
                mem.write(0, &buf[n..], a)
            }
        }
    }

    /// Loads bytes the instruction then writes back (read-modify-write):
    /// the CPU checks write rights at the read already, so a segment or
    /// page fault there is a write's (#PF error code W set).
    #[inline]
    fn load_for_update<M: EmuMemory + ?Sized>(&self, mem: &mut M, m: &Mem, buf: &mut [u8]) -> Result<(), EmuError> {
        let lin = self.mem_linear(m, buf.len() as u64, true)?;
        self.read_linear(mem, lin, buf, self.access(AccessKind::Write))
    }

    /// [`read`](Self::read) of an operand the instruction then writes.
    fn read_for_update(&self, mem: &mut dyn EmuMemory, op: &Operand, size: u8) -> Result<u64, EmuError> {
        match *op {
            Operand::Mem(m) => {
                let mut b = [0u8; 8];
                self.load_for_update(mem, &m, &mut b[..usize::from(size.min(8))])?;
                Ok(u64::from_le_bytes(b))
            }
            _ => self.read(mem, op, size),
        }
    }

    /// Reads `size` (at most 8) bytes of memory.
    fn read_mem<M: EmuMemory + ?Sized>(&self, mem: &mut M, m: &Mem, size: u8) -> Result<u64, EmuError> {
        let mut b = [0u8; 8];
        self.load(mem, m, &mut b[..usize::from(size.min(8))])?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes `size` (at most 8) bytes of memory.
    fn write_mem<M: EmuMemory + ?Sized>(&self, mem: &mut M, m: &Mem, size: u8, v: u64) -> Result<(), EmuError> {
        self.store(mem, m, &v.to_le_bytes()[..usize::from(size.min(8))])
    }

    fn read(&self, mem: &mut dyn EmuMemory, op: &Operand, size: u8) -> Result<u64, EmuError> {
        Ok(match *op {
            Operand::Reg(r) => self.read_reg(r),
            Operand::Imm(v) => v & mask(size),
            Operand::Mem(m) => self.read_mem(mem, &m, size)?,
            Operand::None => 0,
        })
    }

    fn write(&mut self, mem: &mut dyn EmuMemory, op: &Operand, size: u8, v: u64) -> Result<(), EmuError> {
        match *op {
            Operand::Reg(r) => self.write_reg(r, v),
            Operand::Mem(m) => self.write_mem(mem, &m, size, v)?,
            _ => {}
        }
        Ok(())
    }

    fn set_flags(&mut self, f: u64) {
        let r = &mut self.st.gprs[Gpr::Rflags];
        *r = flags::merge(*r, f);
    }

    /// Sets or clears ZF alone (the other flags kept).
    fn set_zf(&mut self, on: bool) {
        let r = &mut self.st.gprs[Gpr::Rflags];
        *r = if on { *r | rflags::ZF } else { *r & !rflags::ZF };
    }

    fn flag(&self, f: u64) -> bool {
        self.st.gprs[Gpr::Rflags] & f != 0
    }
}

/// Executes `insn` (fetched at the current RIP). On success RIP is past the
/// instruction, or still at it when a REP instruction has iterations left.
///
/// Generic, so that the common MOV between memory and a register calls
/// the implementations directly; the rest goes through `dyn`.
pub fn execute<C: EmuCpu, M: EmuMemory>(insn: &Instruction, cpu: &mut C, mem: &mut M) -> Result<(), EmuError> {
    let want = StateMask::GPRS | StateMask::SEGS | StateMask::CRS | StateMask::MSRS;
    if matches!(insn.op(), Op::X87(_) | Op::Vec(_)) {
        return execute_fpu(insn, cpu, mem, want | StateMask::FPU);
    }
    let mut c = Ctx::new(cpu.state(want)?, insn);
    // The bulk of MMIO accesses, MOV between memory and a register, here
    // rather than through the dispatch of every operation.
    let done = match (insn.op(), insn.shape()) {
        (Op::Mov, Shape::RegMem) => {
            let v = c.read_mem(mem, &insn.mem(), insn.opsize())?;
            c.write_reg(insn.reg(), v);
            true
        }
        (Op::Mov, Shape::MemReg) => {
            let v = c.read_reg(insn.reg());
            c.write_mem(mem, &insn.mem(), insn.opsize(), v)?;
            true
        }
        _ => run(&mut c, insn, mem, None)?,
    };
    c.complete(done);
    cpu.mark(StateMask::GPRS);
    Ok(())
}

/// [`execute`] for x87 and vector instructions: they work on a copy of the
/// FPU state, written back only when they complete.
fn execute_fpu(
    insn: &Instruction,
    cpu: &mut dyn EmuCpu,
    mem: &mut dyn EmuMemory,
    want: StateMask,
) -> Result<(), EmuError> {
    let fx = cpu.state(want)?.fpu;
    let mut fpu = (fx, cpu.xsave().clone());
    let mut c = Ctx::new(cpu.state(StateMask::NONE)?, insn);
    let done = run(&mut c, insn, mem, Some(&mut fpu))?;
    c.complete(done);
    c.st.fpu = fpu.0;
    *cpu.xsave() = fpu.1;
    cpu.mark(StateMask::FPU | StateMask::GPRS);
    Ok(())
}

/// Executes; returns whether the instruction completed.
fn run(
    c: &mut Ctx<'_>,
    insn: &Instruction,
    mem: &mut dyn EmuMemory,
    fpu: Option<&mut (crate::x86::state::Fxsave, Xsave)>,
) -> Result<bool, EmuError> {
    let size = insn.opsize();
    match insn.op() {
        Op::Mov => {
            let v = c.read(mem, &insn.src(), size)?;
            c.write(mem, &insn.dst(), size, v)?;
        }
        Op::Movzx => {
            let src_size = match insn.src() {
                Operand::Mem(m) => m.size(),
                _ => 1,
            };
            let v = c.read(mem, &insn.src(), src_size)?;
            c.write(mem, &insn.dst(), size, v)?;
        }
        Op::Alu(op) => {
            let a = if op == AluOp::Cmp {
                c.read(mem, &insn.dst(), size)?
            } else {
                c.read_for_update(mem, &insn.dst(), size)?
            };
            let b = c.read(mem, &insn.src(), size)?;
            let carry = c.flag(rflags::CF);
            let (r, f) = match op {
                AluOp::Add => flags::add(a, b, false, size),
                AluOp::Adc => flags::add(a, b, carry, size),
                AluOp::Sub | AluOp::Cmp => flags::sub(a, b, false, size),
                AluOp::Sbb => flags::sub(a, b, carry, size),
                AluOp::And => (a & b, flags::logic(a & b, size)),
                AluOp::Or => (a | b, flags::logic(a | b, size)),
                AluOp::Xor => (a ^ b, flags::logic(a ^ b, size)),
            };
            if op != AluOp::Cmp {
                c.write(mem, &insn.dst(), size, r)?;
            }
            c.set_flags(f);
        }
        Op::Test => {
            let a = c.read(mem, &insn.dst(), size)?;
            let b = c.read(mem, &insn.src(), size)?;
            c.set_flags(flags::logic(a & b, size));
        }
        Op::Xchg => {
            let a = c.read_for_update(mem, &insn.dst(), size)?;
            let b = c.read_for_update(mem, &insn.src(), size)?;
            c.write(mem, &insn.dst(), size, b)?;
            c.write(mem, &insn.src(), size, a)?;
        }
        Op::Xadd => {
            let a = c.read_for_update(mem, &insn.dst(), size)?;
            let b = c.read(mem, &insn.src(), size)?;
            let (r, f) = flags::add(a, b, false, size);
            c.write(mem, &insn.dst(), size, r)?;
            c.write(mem, &insn.src(), size, a)?;
            c.set_flags(f);
        }
        Op::Cmpxchg => {
            let acc = Reg::Gpr { num: 0, size, high8: false };
            let d = c.read_for_update(mem, &insn.dst(), size)?;
            let a = c.read_reg(acc);
            let (_, f) = flags::sub(a, d, false, size);
            if a == d {
                let s = c.read(mem, &insn.src(), size)?;
                c.write(mem, &insn.dst(), size, s)?;
            } else {
                // The CPU writes the destination back unchanged.
                c.write(mem, &insn.dst(), size, d)?;
                c.write_reg(acc, d);
            }
            c.set_flags(f);
        }
        Op::CmpxchgNb => cmpxchg_nb(c, insn, mem)?,
        Op::Movs | Op::Cmps | Op::Stos | Op::Lods => return string(c, insn, mem),
        Op::Int3 => {
            // A trap: the handler returns past the INT3.
            c.st.gprs[Gpr::Rip] = c.next_rip;
            return Err(EmuError::Exception { vector: 3, error_code: None, cr2: None });
        }
        Op::X87(x) => {
            let (fx, _) = fpu.ok_or(EmuError::Unsupported("x87 state unavailable"))?;
            x87_op(c, insn, x, fx, mem)?;
        }
        Op::Vec(v) => {
            let (fx, xs) = fpu.ok_or(EmuError::Unsupported("vector state unavailable"))?;
            vec_move(c, insn, v, fx, xs, mem)?;
        }
    }
    Ok(true)
}

fn cmpxchg_nb(c: &mut Ctx<'_>, insn: &Instruction, mem: &mut dyn EmuMemory) -> Result<(), EmuError> {
    let Operand::Mem(m) = insn.dst() else { return Err(EmuError::Unsupported("CMPXCHG8B without memory")) };
    let half = usize::from(insn.opsize() / 2);
    let lin = c.mem_linear(&m, u64::from(insn.opsize()), true)?;
    if insn.opsize() == 16 && lin % 16 != 0 {
        return Err(gp0());
    }
    let mut cur = [0u8; 16];
    c.load_for_update(mem, &m, &mut cur[..2 * half])?;
    let hmask = mask(half as u8);
    let (lo, hi) = (c.gpr(0) & hmask, c.gpr(2) & hmask);
    let cur_lo = u64::from_le_bytes(pad8(&cur[..half]));
    let cur_hi = u64::from_le_bytes(pad8(&cur[half..2 * half]));
    let mut out = [0u8; 16];
    let zf = cur_lo == lo && cur_hi == hi;
    if zf {
        out[..half].copy_from_slice(&(c.gpr(3) & hmask).to_le_bytes()[..half]);
        out[half..2 * half].copy_from_slice(&(c.gpr(1) & hmask).to_le_bytes()[..half]);
    } else {
        out[..2 * half].copy_from_slice(&cur[..2 * half]);
        let size = half as u8;
        c.write_reg(Reg::Gpr { num: 0, size, high8: false }, cur_lo);
        c.write_reg(Reg::Gpr { num: 2, size, high8: false }, cur_hi);
    }
    c.store(mem, &m, &out[..2 * half])?;
    c.set_zf(zf);
    Ok(())
}

fn pad8(b: &[u8]) -> [u8; 8] {
    let mut o = [0u8; 8];
    o[..b.len()].copy_from_slice(b);
    o
}

/// MOVS, CMPS, STOS, LODS with or without REP. Returns whether the
/// instruction completed.
fn string(c: &mut Ctx<'_>, insn: &Instruction, mem: &mut dyn EmuMemory) -> Result<bool, EmuError> {
    let size = insn.opsize();
    let am = mask(insn.addr_size());
    let step = if c.flag(rflags::DF) { (size as u64).wrapping_neg() } else { u64::from(size) };
    let rep = insn.rep() != Rep::None;
    let acc = Reg::Gpr { num: 0, size, high8: false };
    let advance = |c: &mut Ctx<'_>, n: u8| {
        let v = c.gpr(n);
        c.st.gprs.0[usize::from(n)] = (v & !am) | (v.wrapping_add(step) & am);
    };
    for _ in 0..REP_BATCH {
        if rep && c.gpr(1) & am == 0 {
            return Ok(true);
        }
        match insn.op() {
            Op::Movs => {
                let v = c.read(mem, &insn.src(), size)?;
                c.write(mem, &insn.dst(), size, v)?;
                advance(c, 6);
                advance(c, 7);
            }
            Op::Stos => {
                let v = c.read_reg(acc);
                c.write(mem, &insn.dst(), size, v)?;
                advance(c, 7);
            }
            Op::Lods => {
                let v = c.read(mem, &insn.src(), size)?;
                c.write_reg(acc, v);
                advance(c, 6);
            }
            _ => {
                let a = c.read(mem, &insn.dst(), size)?;
                let b = c.read(mem, &insn.src(), size)?;
                c.set_flags(flags::sub(a, b, false, size).1);
                advance(c, 6);
                advance(c, 7);
            }
        }
        if !rep {
            return Ok(true);
        }
        let rcx = c.gpr(1);
        c.st.gprs.0[1] = (rcx & !am) | (rcx.wrapping_sub(1) & am);
        if insn.op() == Op::Cmps {
            let zf = c.flag(rflags::ZF);
            if (insn.rep() == Rep::Rep && !zf) || (insn.rep() == Rep::Repne && zf) {
                return Ok(true);
            }
        }
    }
    Ok(c.gpr(1) & am == 0)
}

fn x87_op(
    c: &mut Ctx<'_>,
    insn: &Instruction,
    op: X87Op,
    fx: &mut crate::x86::state::Fxsave,
    mem: &mut dyn EmuMemory,
) -> Result<(), EmuError> {
    let m = insn.memory().ok_or(EmuError::Unsupported("x87 form without memory"))?;
    // CR0.EM or CR0.TS: #NM.
    if c.st.crs[Cr::Cr0] & 0xc != 0 {
        return Err(EmuError::Exception { vector: 7, error_code: None, cr2: None });
    }
    let size = usize::from(m.size());
    match op {
        X87Op::Fld | X87Op::Fild => {
            let mut b = [0u8; 10];
            c.load(mem, &m, &mut b[..size])?;
            x87::load(fx, op, &b[..size]);
        }
        X87Op::Fst | X87Op::Fstp | X87Op::Fistp => {
            let mut b = [0u8; 10];
            // Check the destination before changing the x87 state.
            c.mem_linear(&m, size as u64, true)?;
            if let Some(bytes) = x87::store(fx, op, size) {
                b[..size].copy_from_slice(&bytes[..size]);
                c.store(mem, &m, &b[..size])?;
            }
        }
    }
    Ok(())
}

fn vec_move(
    c: &mut Ctx<'_>,
    insn: &Instruction,
    kind: VecMove,
    fx: &mut crate::x86::state::Fxsave,
    xs: &mut Xsave,
    mem: &mut dyn EmuMemory,
) -> Result<(), EmuError> {
    let size = usize::from(insn.opsize());
    let (reg, m, load) = match (insn.dst(), insn.src()) {
        (Operand::Reg(Reg::Xmm(r)), Operand::Mem(m)) => (r, m, true),
        (Operand::Mem(m), Operand::Reg(Reg::Xmm(r))) => (r, m, false),
        _ => return Err(EmuError::Unsupported("vector move without memory")),
    };
    let vex = insn.vex();
    // #UD without the right enables: CR0.EM, CR4.OSFXSR, and for AVX
    // CR4.OSXSAVE with XCR0 SSE|AVX; #NM with CR0.TS.
    let cr0 = c.st.crs[Cr::Cr0];
    let cr4 = c.st.crs[Cr::Cr4];
    let ud = EmuError::Exception { vector: 6, error_code: None, cr2: None };
    if vex {
        if cr4 & (1 << 18) == 0 || c.st.crs[Cr::Xcr0] & 0x6 != 0x6 {
            return Err(ud);
        }
    } else if cr0 & 4 != 0 || cr4 & (1 << 9) == 0 {
        return Err(ud);
    }
    if cr0 & 8 != 0 {
        return Err(EmuError::Exception { vector: 7, error_code: None, cr2: None });
    }
    let lin = c.mem_linear(&m, size as u64, !load)?;
    if kind.aligned() && lin % size as u64 != 0 {
        return Err(gp0());
    }
    let r = usize::from(reg);
    if r >= 16 {
        return Err(EmuError::Unsupported("vector register above 15"));
    }
    if load {
        let mut b = [0u8; 32];
        c.load(mem, &m, &mut b[..size])?;
        let mut low = [0u8; 16];
        low[..size.min(16)].copy_from_slice(&b[..size.min(16)]);
        fx.fx_xmm[r] = low;
        if size == 32 {
            let hi: [u8; 16] = b[16..32].try_into().expect("16 bytes");
            let _ = xs.set_ymm_hi(r, hi);
        } else if vex {
            // VEX-encoded loads zero the upper part of the YMM register.
            let _ = xs.set_ymm_hi(r, [0; 16]);
        }
    } else {
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(&fx.fx_xmm[r]);
        if size == 32 {
            b[16..].copy_from_slice(&xs.ymm_hi(r).unwrap_or([0; 16]));
        }
        c.store(mem, &m, &b[..size])?;
    }
    Ok(())
}
