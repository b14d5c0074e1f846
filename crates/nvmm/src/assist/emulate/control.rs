//! Execution of the control instructions ([`ControlInsn`]): x87 control,
//! MXCSR, vector register moves and zeroing, XGETBV, the integer
//! instructions (CLAC, STAC, POPCNT, CRC32, VERR, VERW, LSL, LAR), and (in
//! [`xsave_area`](super::xsave_area)) the XSAVE family.
//!
//! Each checks what the CPU checks first: CR0.EM and CR0.TS for x87
//! (#NM), CR0.EM, CR4.OSFXSR and CR0.TS for SSE (#UD, #NM), real mode,
//! CR4.OSXSAVE and XCR0 for VEX (#UD), pending unmasked x87 exceptions
//! for the waiting instructions FWAIT, FLDCW, FLDENV and FRSTOR (#MF, with CR0.NE; with
//! CR0.NE clear the CPU signals FERR# instead, which the emulator does
//! not model, so nothing is raised). The instruction works on a copy of
//! the FPU state, taken back only when it completes.
#![forbid(unsafe_code)]

use super::{Ctx, EmuCpu, EmuError, EmuMemory, gp0, x87_env, xsave_area};
use crate::assist::decode::{ControlInsn, ControlOp, CpuMode, Reg};
use crate::assist::mmu::{Access, AccessKind};
use crate::x86::bits::{cr0, cr4, efer, rflags};
use crate::x86::state::{Cr, Fxsave, Gpr, Msr, StateMask};
use crate::x86::xsave::{Xsave, xfeature};

/// An exception without error code.
pub(super) fn fault(vector: u8) -> EmuError {
    EmuError::Exception { vector, error_code: None, cr2: None }
}

const UD: u8 = 6;
const NM: u8 = 7;
const MF: u8 = 16;

/// x87 status-word bits.
const FSW_ES: u16 = 1 << 7;
const FSW_B: u16 = 1 << 15;

/// Executes a control instruction (x87 control, MXCSR, vector registers,
/// XGETBV, the XSAVE family; see [`ControlOp`]). On success
/// RIP is past it.
///
/// # Errors
///
/// [`EmuError::Exception`] for the exception the CPU raises (nothing
/// changed), [`EmuError::Unsupported`] for an XSAVE of components the
/// emulator does not know (AMX), [`EmuError::State`] and
/// [`EmuError::Memory`] from the CPU and memory.
pub fn execute_control<C: EmuCpu + ?Sized, M: EmuMemory + ?Sized>(
    insn: &ControlInsn,
    cpu: &mut C,
    mem: &mut M,
) -> Result<(), EmuError> {
    let want = StateMask::GPRS | StateMask::SEGS | StateMask::CRS | StateMask::MSRS;
    if !insn.op.uses_fpu() {
        // General registers and flags only: no FPU state to fetch or store.
        let mut c = Ctx::with_len(cpu.state(want)?, insn.len);
        let (mut fx, mut xs) = (Fxsave::default(), Xsave::default());
        run(&mut c, insn, mem, &mut fx, &mut xs)?;
        c.complete(true);
        cpu.mark(StateMask::GPRS);
        return Ok(());
    }
    let mut fx = cpu.state(want | StateMask::FPU)?.fpu;
    let mut xs = cpu.xsave().clone();
    let mut c = Ctx::with_len(cpu.state(StateMask::NONE)?, insn.len);
    run(&mut c, insn, mem, &mut fx, &mut xs)?;
    c.complete(true);
    c.st.fpu = fx;
    *cpu.xsave() = xs;
    cpu.mark(StateMask::FPU | StateMask::GPRS);
    Ok(())
}

fn run<M: EmuMemory + ?Sized>(
    c: &mut Ctx<'_>,
    insn: &ControlInsn,
    mem: &mut M,
    fx: &mut Fxsave,
    xs: &mut Xsave,
) -> Result<(), EmuError> {
    use ControlOp::*;
    let cr0v = c.st.crs[Cr::Cr0];
    match insn.op {
        Fninit | Fnclex | FnstswAx | Fnstsw | Fnstcw | Fldcw | Fnstenv | Fldenv | Fnsave | Frstor => {
            if cr0v & (cr0::EM | cr0::TS) != 0 {
                return Err(fault(NM));
            }
            // Real and virtual-8086 mode have environment formats of their
            // own (the pointers as 20-bit linear addresses): left to the VMM.
            let real = cr0v & cr0::PE == 0 || c.st.gprs[Gpr::Rflags] & rflags::VM != 0;
            if real && matches!(insn.op, Fnstenv | Fldenv | Fnsave | Frstor) {
                return Err(EmuError::Unsupported("the x87 environment in real or virtual-8086 mode"));
            }
        }
        Fwait => {
            if cr0v & (cr0::MP | cr0::TS) == cr0::MP | cr0::TS {
                return Err(fault(NM));
            }
        }
        Xgetbv | Popcnt | Crc32 => {}
        Clac | Stac => {
            if c.cpl != 0 {
                return Err(fault(UD));
            }
        }
        Verr | Verw | Lsl | Lar => {
            if cr0v & cr0::PE == 0 || c.st.gprs[Gpr::Rflags] & rflags::VM != 0 {
                return Err(fault(UD));
            }
        }
        Xsave | Xsaveopt | Xsavec | Xrstor => {
            if c.st.crs[Cr::Cr4] & cr4::OSXSAVE == 0 {
                return Err(fault(UD));
            }
            if cr0v & cr0::TS != 0 {
                return Err(fault(NM));
            }
        }
        _ => vector_available(c, insn.vex)?,
    }
    if matches!(insn.op, Fwait | Fldcw | Fldenv | Frstor) && fx.fx_sw & FSW_ES != 0 && cr0v & cr0::NE != 0 {
        return Err(fault(MF));
    }
    let mem_op = || insn.mem.ok_or(EmuError::Unsupported("control instruction without its memory operand"));
    match insn.op {
        Fninit => x87_env::initialize(fx),
        // IE, DE, ZE, OE, UE, PE, SF, ES and B.
        Fnclex => fx.fx_sw &= !0x80ff,
        Fwait => {}
        FnstswAx => c.write_reg(Reg::Gpr { num: 0, size: 2, high8: false }, u64::from(fx.fx_sw)),
        Fnstsw => c.store(mem, &mem_op()?, &fx.fx_sw.to_le_bytes())?,
        Fnstcw => c.store(mem, &mem_op()?, &fx.fx_cw.to_le_bytes())?,
        Fnstenv | Fnsave => {
            let env = x87_env::env_len(insn.opsize);
            let mut image = [0u8; 108];
            x87_env::store_env(fx, insn.opsize, &mut image);
            let len = if insn.op == Fnsave {
                x87_env::store_registers(fx, &mut image[env..env + 80]);
                env + 80
            } else {
                env
            };
            c.store(mem, &mem_op()?, &image[..len])?;
            if insn.op == Fnsave {
                x87_env::initialize(fx);
            } else {
                // Then every exception masked.
                fx.fx_cw |= 0x3f;
            }
        }
        Fldenv | Frstor => {
            let env = x87_env::env_len(insn.opsize);
            let len = if insn.op == Frstor { env + 80 } else { env };
            let mut image = [0u8; 108];
            c.load(mem, &mem_op()?, &mut image[..len])?;
            x87_env::load_env(fx, insn.opsize, &image[..env]);
            if insn.op == Frstor {
                x87_env::load_registers(fx, &image[env..len]);
            }
        }
        Fldcw => {
            let mut b = [0u8; 2];
            c.load(mem, &mem_op()?, &mut b)?;
            fx.fx_cw = x87_env::control_word(u16::from_le_bytes(b));
            // The new masks decide whether an exception is pending.
            if fx.fx_sw & 0x3f & !fx.fx_cw != 0 {
                fx.fx_sw |= FSW_ES | FSW_B;
            } else {
                fx.fx_sw &= !(FSW_ES | FSW_B);
            }
        }
        Ldmxcsr => {
            let mut b = [0u8; 4];
            c.load(mem, &mem_op()?, &mut b)?;
            let v = u32::from_le_bytes(b);
            if v & !mxcsr_mask(fx) != 0 {
                return Err(gp0());
            }
            fx.fx_mxcsr = v;
        }
        Stmxcsr => c.store(mem, &mem_op()?, &fx.fx_mxcsr.to_le_bytes())?,
        MovReg => {
            let v = ymm(fx, xs, insn.src);
            set_vector(fx, xs, insn, v);
        }
        MovqReg => {
            let mut v = [0u8; 32];
            v[..8].copy_from_slice(&fx.fx_xmm[usize::from(insn.src)][..8]);
            set_vector(fx, xs, insn, v);
        }
        MovdToXmm => {
            let size = if insn.w { 8 } else { 4 };
            let g = c.read_reg(Reg::Gpr { num: insn.src, size, high8: false });
            let mut v = [0u8; 32];
            v[..8].copy_from_slice(&g.to_le_bytes());
            set_vector(fx, xs, insn, v);
        }
        MovdFromXmm => {
            let size = if insn.w { 8 } else { 4 };
            let x = u64::from_le_bytes(fx.fx_xmm[usize::from(insn.src)][..8].try_into().expect("8 bytes"));
            c.write_reg(Reg::Gpr { num: insn.dst, size, high8: false }, x);
        }
        Xor => {
            let a = ymm(fx, xs, insn.src1);
            let b = match insn.mem {
                Some(m) => {
                    let size = if insn.wide { 32 } else { 16 };
                    let lin = c.mem_linear(&m, size as u64, false)?;
                    // Legacy SSE memory operands are aligned.
                    if !insn.vex && lin % 16 != 0 {
                        return Err(gp0());
                    }
                    let mut b = [0u8; 32];
                    c.load(mem, &m, &mut b[..size])?;
                    b
                }
                None => ymm(fx, xs, insn.src),
            };
            let mut v = [0u8; 32];
            for (o, (x, y)) in v.iter_mut().zip(a.iter().zip(b)) {
                *o = x ^ y;
            }
            set_vector(fx, xs, insn, v);
        }
        Vzeroupper | Vzeroall => {
            let n = if c.mode == CpuMode::Bits64 { 16 } else { 8 };
            for r in 0..n {
                if insn.op == Vzeroall {
                    fx.fx_xmm[r] = [0; 16];
                }
                let _ = xs.set_ymm_hi(r, [0; 16]);
            }
            if (0..16).all(|r| xs.ymm_hi(r).is_ok_and(|h| h == [0; 16])) {
                xs.set_xstate_bv(xs.xstate_bv() & !xfeature::AVX);
            }
        }
        Xgetbv => {
            if c.st.crs[Cr::Cr4] & cr4::OSXSAVE == 0 {
                return Err(fault(UD));
            }
            let xcr0 = c.st.crs[Cr::Xcr0];
            let v = match c.gpr(1) as u32 {
                0 => xcr0,
                1 => xcr0 & xsave_area::in_use(fx, xs),
                _ => return Err(gp0()),
            };
            c.write_reg(Reg::Gpr { num: 0, size: 4, high8: false }, v & 0xffff_ffff);
            c.write_reg(Reg::Gpr { num: 2, size: 4, high8: false }, v >> 32);
        }
        Clac => c.st.gprs[Gpr::Rflags] &= !rflags::AC,
        Stac => c.st.gprs[Gpr::Rflags] |= rflags::AC,
        Popcnt => {
            let size = insn.opsize;
            let v = match insn.mem {
                Some(m) => c.read_mem(mem, &m, size)?,
                None => c.read_reg(Reg::Gpr { num: insn.src, size, high8: false }),
            };
            c.write_reg(Reg::Gpr { num: insn.dst, size, high8: false }, u64::from(v.count_ones()));
            // ZF when the source is zero; CF, OF, SF, AF and PF cleared.
            let zf = if v == 0 { rflags::ZF } else { 0 };
            c.set_flags(zf);
        }
        Crc32 => {
            let size = insn.opsize;
            let v = match insn.mem {
                Some(m) => c.read_mem(mem, &m, size)?,
                None => c.read_reg(Reg::Gpr { num: insn.src, size, high8: insn.high8 }),
            };
            let crc = crc32c(c.gpr(insn.dst) as u32, &v.to_le_bytes()[..usize::from(size)]);
            c.write_reg(Reg::Gpr { num: insn.dst, size: if insn.w { 8 } else { 4 }, high8: false }, u64::from(crc));
        }
        Verr | Verw => {
            let selector = selector_operand(c, mem, insn)?;
            let ok = segment_accessible(c, mem, selector, insn.op == Verw)?;
            c.set_zf(ok);
        }
        Lsl | Lar => {
            let selector = selector_operand(c, mem, insn)?;
            let value = segment_limit_or_rights(c, mem, selector, insn.op == Lsl)?;
            // (A 16-bit destination takes the low 16 bits.)
            if let Some(v) = value {
                c.write_reg(Reg::Gpr { num: insn.dst, size: insn.opsize, high8: false }, u64::from(v));
            }
            c.set_zf(value.is_some());
        }
        Xsave | Xsaveopt => xsave_area::save(c, insn, mem, fx, xs, false)?,
        Xsavec => xsave_area::save(c, insn, mem, fx, xs, true)?,
        Xrstor => xsave_area::restore(c, insn, mem, fx, xs)?,
    }
    Ok(())
}

/// CRC32's accumulation: the CRC-32C (Castagnoli, reflected polynomial
/// 0x82F63B78) of `bytes` continuing from `crc`, with neither the initial
/// nor the final inversion (the instruction leaves both to software).
fn crc32c(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82f6_3b78 & (crc & 1).wrapping_neg());
        }
    }
    crc
}

/// VERR/VERW: whether `selector` names a segment readable (`write`
/// false) or writable at the current privilege, from its descriptor in the
/// GDT or LDT.
fn segment_accessible<M: EmuMemory + ?Sized>(
    c: &Ctx<'_>,
    mem: &mut M,
    selector: u16,
    write: bool,
) -> Result<bool, EmuError> {
    let mut d = [0u8; 8];
    if !read_descriptor(c, mem, selector, &mut d)? {
        return Ok(false);
    }
    let typ = d[5] & 0xf;
    let s = d[5] & 0x10 != 0;
    let dpl = (d[5] >> 5) & 3;
    if !s {
        return Ok(false);
    }
    let code = typ & 8 != 0;
    let conforming = code && typ & 4 != 0;
    let rpl = (selector & 3) as u8;
    let privileged = conforming || (dpl >= c.cpl && dpl >= rpl);
    Ok(privileged && if write { !code && typ & 2 != 0 } else { !code || typ & 2 != 0 })
}

/// The 16-bit selector VERR, VERW, LSL and LAR take: from the memory
/// operand, else from the GPR `src`.
fn selector_operand<M: EmuMemory + ?Sized>(c: &mut Ctx<'_>, mem: &mut M, insn: &ControlInsn) -> Result<u16, EmuError> {
    Ok(match insn.mem {
        Some(m) => c.read_mem(mem, &m, 2)?,
        None => c.read_reg(Reg::Gpr { num: insn.src, size: 2, high8: false }),
    } as u16)
}

/// Reads the descriptor `selector` names into `d` (8 bytes, or 16 for a
/// system descriptor in IA-32e mode); `false` when there is none: a null
/// selector, an unusable LDT, or a descriptor past its table's limit.
fn read_descriptor<M: EmuMemory + ?Sized>(
    c: &Ctx<'_>,
    mem: &mut M,
    selector: u16,
    d: &mut [u8],
) -> Result<bool, EmuError> {
    use crate::x86::state::Seg;
    let table = if selector & 4 != 0 { c.st.segs[Seg::Ldt] } else { c.st.segs[Seg::Gdt] };
    let index = u64::from(selector & !7);
    let usable = if selector & 4 != 0 { table.attrib.p() && table.selector & !3 != 0 } else { true };
    if (selector & !3 == 0) || !usable || index + d.len() as u64 - 1 > u64::from(table.limit) {
        return Ok(false);
    }
    // Descriptor tables have 64-bit bases in IA-32e mode, compatibility
    // mode included (a 32-bit program's GDT is its 64-bit kernel's); only
    // legacy protected mode wraps their addresses at 4 GiB.
    let lin = table.base.wrapping_add(index);
    let lin = if c.st.msrs[Msr::Efer] & efer::LMA != 0 { lin } else { lin & 0xffff_ffff };
    mem.read(lin, d, Access::supervisor(AccessKind::Read))?;
    Ok(true)
}

/// LSL (`limit`) and LAR: the byte-granular limit, or the access rights
/// (bits 23:8 of the descriptor's second dword; the SDM leaves bits 19:16
/// undefined, the CPU returns the limit's bits there), of the segment
/// `selector` names, when its descriptor is one the instruction accepts
/// and the current privilege and the selector's RPL may see it
/// (conforming code segments always); `None` otherwise. IA-32e mode
/// accepts only the LDT, 64-bit TSS (and, for LAR, call gate) system
/// descriptors, whose upper half must have type 0.
fn segment_limit_or_rights<M: EmuMemory + ?Sized>(
    c: &Ctx<'_>,
    mem: &mut M,
    selector: u16,
    limit: bool,
) -> Result<Option<u32>, EmuError> {
    let ia32e = c.st.msrs[Msr::Efer] & efer::LMA != 0;
    let mut d = [0u8; 16];
    if !read_descriptor(c, mem, selector, &mut d[..8])? {
        return Ok(None);
    }
    let (typ, system, dpl) = (d[5] & 0xf, d[5] & 0x10 == 0, (d[5] >> 5) & 3);
    let conforming = !system && typ & 0xc == 0xc;
    if system {
        let accepted = match (ia32e, limit) {
            (true, true) => matches!(typ, 0x2 | 0x9 | 0xb),
            (true, false) => matches!(typ, 0x2 | 0x9 | 0xb | 0xc),
            (false, true) => matches!(typ, 0x1 | 0x2 | 0x3 | 0x9 | 0xb),
            (false, false) => matches!(typ, 0x1..=0x5 | 0x9 | 0xb | 0xc),
        };
        if !accepted {
            return Ok(None);
        }
        if ia32e && (!read_descriptor(c, mem, selector, &mut d)? || d[13] & 0x1f != 0) {
            return Ok(None);
        }
    }
    let rpl = (selector & 3) as u8;
    if !conforming && (dpl < c.cpl || dpl < rpl) {
        return Ok(None);
    }
    let high = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
    Ok(Some(if limit {
        let raw = u32::from(d[0]) | u32::from(d[1]) << 8 | u32::from(d[6] & 0xf) << 16;
        if d[6] & 0x80 != 0 { raw << 12 | 0xfff } else { raw }
    } else {
        high & 0x00ff_ff00
    }))
}

/// #UD and #NM for SSE (`vex` false) and AVX instructions.
fn vector_available(c: &Ctx<'_>, vex: bool) -> Result<(), EmuError> {
    let cr0v = c.st.crs[Cr::Cr0];
    let cr4v = c.st.crs[Cr::Cr4];
    if vex {
        let real = cr0v & cr0::PE == 0 || c.st.gprs[Gpr::Rflags] & rflags::VM != 0;
        let enabled = xfeature::SSE | xfeature::AVX;
        if real || cr4v & cr4::OSXSAVE == 0 || c.st.crs[Cr::Xcr0] & enabled != enabled {
            return Err(fault(UD));
        }
    } else if cr0v & cr0::EM != 0 || cr4v & cr4::OSFXSR == 0 {
        return Err(fault(UD));
    }
    if cr0v & cr0::TS != 0 {
        return Err(fault(NM));
    }
    Ok(())
}

/// The MXCSR bits software may set (the CPU's MXCSR_MASK, 0xffbf when it
/// reports none).
pub(super) fn mxcsr_mask(fx: &Fxsave) -> u32 {
    if fx.fx_mxcsr_mask == 0 { 0xffbf } else { fx.fx_mxcsr_mask }
}

/// YMM`r` (XMM in the low half).
fn ymm(fx: &Fxsave, xs: &Xsave, r: u8) -> [u8; 32] {
    let r = usize::from(r & 15);
    let mut v = [0u8; 32];
    v[..16].copy_from_slice(&fx.fx_xmm[r]);
    v[16..].copy_from_slice(&xs.ymm_hi(r).unwrap_or([0; 16]));
    v
}

/// Writes the destination of a vector instruction: legacy SSE writes the
/// XMM register and keeps bits 255:128; VEX.128 zeroes them; VEX.256
/// writes all 256 bits.
fn set_vector(fx: &mut Fxsave, xs: &mut Xsave, insn: &ControlInsn, v: [u8; 32]) {
    let r = usize::from(insn.dst & 15);
    fx.fx_xmm[r].copy_from_slice(&v[..16]);
    if insn.vex {
        let hi: [u8; 16] = if insn.wide { v[16..].try_into().expect("16 bytes") } else { [0; 16] };
        let _ = xs.set_ymm_hi(r, hi);
    }
}

#[cfg(test)]
mod tests {
    use super::crc32c;

    #[test]
    fn crc32c_gives_the_castagnoli_check_value() {
        // The catalogue's check value of CRC-32C ("123456789", with the
        // initial and final inversions the instruction leaves out).
        assert_eq!(!crc32c(!0, b"123456789"), 0xe306_9283);
        // iSCSI's test vector (RFC 3720, B.4): 32 bytes of zeros.
        assert_eq!(!crc32c(!0, &[0; 32]), 0x8a91_36aa);
    }
}
