//! XSAVE, XSAVEOPT, XSAVEC and XRSTOR against guest memory, in the
//! standard and the compacted format.
//!
//! The requested-feature bitmap is XCR0 AND EDX:EAX. The legacy region
//! holds the x87 state (bytes 0-23 and 32-159: FIP and FDP 64-bit with
//! REX.W, otherwise 32-bit with FCS and FDS as zero, which the CPUs that
//! deprecate them store), MXCSR and MXCSR_MASK (24-31, with SSE or AVX)
//! and the XMM registers (160-415; XMM0-7 only outside 64-bit mode, as
//! YMM0-7 for AVX). The header's XSTATE_BV bits of the saved components
//! say whether each was in use; XSAVEC also writes XCOMP_BV and skips
//! components not in use. Components 2-9 sit at the offsets every x86 CPU
//! reports in CPUID leaf 0xD; in the compacted format each follows the
//! previous one without 64-byte alignment (again what CPUs report for
//! them). Components past PKRU (AMX) are not emulated.
//!
//! XRSTOR raises #GP(0) for a header the SDM forbids (standard form:
//! XSTATE_BV outside XCR0 or bytes 8-23 not zero, bytes 24-63 being
//! ignored; compacted form: XCOMP_BV outside XCR0, XSTATE_BV outside
//! XCOMP_BV or bytes 16-63 not zero) and for reserved MXCSR bits where it
//! loads MXCSR; it keeps 11 bits of FOP and 80 of each x87 register, as
//! the CPU does. Outside 64-bit mode an area's addresses wrap at 4 GiB.
//!
//! XSAVEOPT is executed as XSAVE: it writes components it could skip,
//! which the instruction always permits. A #PF part-way through a save
//! leaves the components before it written, as the SDM allows.
#![forbid(unsafe_code)]

use super::control::mxcsr_mask;
use super::{Ctx, EmuError, EmuMemory, gp0};
use crate::assist::decode::{ControlInsn, CpuMode};
use crate::assist::mmu::AccessKind;
use crate::x86::state::{Cr, Fxsave};
use crate::x86::xsave::{Xsave, xfeature};

/// Components 2-9 the emulator saves: bit, offset in the standard format,
/// size.
const EXTENDED: [(u32, usize, usize); 7] =
    [(2, 576, 256), (3, 960, 64), (4, 1024, 64), (5, 1088, 64), (6, 1152, 512), (7, 1664, 1024), (9, 2688, 8)];

/// The components the emulator knows.
const KNOWN: u64 = 0x2ff;

const HEADER: usize = 512;
const EXTENDED_START: usize = 576;
const COMPACTED: u64 = 1 << 63;

/// Which components are in use (XINUSE): x87 when its registers are not in
/// their initial state; the others as the XSAVE header KVM keeps says (the
/// CPU's own tracking, which may keep a bit set for a component back in
/// its initial state, as the SDM allows and CPUs do for SSE), and SSE also
/// whenever its registers are not in their initial state.
pub(super) fn in_use(fx: &Fxsave, xs: &Xsave) -> u64 {
    let x87 = fx.fx_cw != 0x37f
        || fx.fx_sw != 0
        || fx.fx_tw != 0
        || fx.fx_opcode != 0
        || fx.fx_ip != 0
        || fx.fx_dp != 0
        || fx.fx_87_ac.iter().any(|r| r[..10] != [0; 10]);
    let sse = fx.fx_mxcsr != 0x1f80 || fx.fx_xmm.iter().any(|r| *r != [0; 16]);
    (xs.xstate_bv() & !xfeature::X87) | if x87 { xfeature::X87 } else { 0 } | if sse { xfeature::SSE } else { 0 }
}

/// The area's layout for a bitmap: the offset of each extended
/// component, and the size of the whole.
fn layout(bitmap: u64, compacted: bool) -> ([Option<usize>; 7], usize) {
    let mut offsets = [None; 7];
    let mut end = EXTENDED_START;
    for (slot, &(bit, off, size)) in offsets.iter_mut().zip(EXTENDED.iter()) {
        if bitmap & (1 << bit) == 0 {
            continue;
        }
        let at = if compacted { end } else { off };
        *slot = Some(at);
        end = end.max(at + size);
    }
    (offsets, end)
}

/// The requested-feature bitmap, and the linear address of the area
/// (64-byte aligned, the whole area inside its segment).
fn area(c: &Ctx<'_>, insn: &ControlInsn, rfbm: u64, compacted: bool, write: bool) -> Result<u64, EmuError> {
    let m = insn.mem.ok_or(EmuError::Unsupported("XSAVE without a memory operand"))?;
    if rfbm & !KNOWN != 0 {
        return Err(EmuError::Unsupported("XSAVE of state components past PKRU (AMX)"));
    }
    let (_, size) = layout(rfbm, compacted);
    let lin = c.mem_linear(&m, size as u64, write)?;
    if lin % 64 != 0 {
        return Err(gp0());
    }
    Ok(lin)
}

fn at(c: &Ctx<'_>, base: u64, off: usize) -> u64 {
    let a = base.wrapping_add(off as u64);
    if c.mode == CpuMode::Bits64 { a } else { a & 0xffff_ffff }
}

fn put<M: EmuMemory + ?Sized>(c: &Ctx<'_>, mem: &mut M, base: u64, off: usize, b: &[u8]) -> Result<(), EmuError> {
    c.write_linear(mem, at(c, base, off), b, c.access(AccessKind::Write))
}

fn get<M: EmuMemory + ?Sized>(c: &Ctx<'_>, mem: &mut M, base: u64, off: usize, b: &mut [u8]) -> Result<(), EmuError> {
    c.read_linear(mem, at(c, base, off), b, c.access(AccessKind::Read))
}

/// The legacy region of `fx` as the instruction stores it.
fn legacy_image(fx: &Fxsave, wide_pointers: bool) -> [u8; 512] {
    let mut b = fx.to_bytes();
    // The byte after the abridged tag word is reserved: stored as zero.
    b[5] = 0;
    if !wide_pointers {
        // FIP and FDP 32-bit, FCS, FDS and the reserved words zero.
        b[12..16].fill(0);
        b[20..24].fill(0);
    }
    b
}

fn rfbm(c: &Ctx<'_>) -> u64 {
    c.st.crs[Cr::Xcr0] & ((c.gpr(2) & 0xffff_ffff) << 32 | (c.gpr(0) & 0xffff_ffff))
}

/// XSAVE (and XSAVEOPT) or XSAVEC.
pub(super) fn save<M: EmuMemory + ?Sized>(
    c: &mut Ctx<'_>,
    insn: &ControlInsn,
    mem: &mut M,
    fx: &Fxsave,
    xs: &Xsave,
    compacted: bool,
) -> Result<(), EmuError> {
    let rfbm = rfbm(c);
    let base = area(c, insn, rfbm, compacted, true)?;
    let inuse = in_use(fx, xs);
    // XSAVEC skips components in their initial state.
    let saved = if compacted { rfbm & inuse } else { rfbm };
    let long = c.mode == CpuMode::Bits64;
    let nregs = if long { 16 } else { 8 };
    let legacy = legacy_image(fx, long && insn.w);
    if saved & xfeature::X87 != 0 {
        put(c, mem, base, 0, &legacy[..24])?;
        put(c, mem, base, 32, &legacy[32..160])?;
    }
    // MXCSR: the standard form with SSE or AVX, the compacted form with
    // SSE.
    let mxcsr = if compacted { saved & xfeature::SSE } else { rfbm & (xfeature::SSE | xfeature::AVX) };
    if mxcsr != 0 {
        put(c, mem, base, 24, &legacy[24..32])?;
    }
    if saved & xfeature::SSE != 0 {
        put(c, mem, base, 160, &legacy[160..160 + 16 * nregs])?;
    }
    let mut header = [0u8; 16];
    if compacted {
        header[..8].copy_from_slice(&(rfbm & inuse).to_le_bytes());
        header[8..].copy_from_slice(&(rfbm | COMPACTED).to_le_bytes());
        put(c, mem, base, HEADER, &header)?;
    } else {
        // XSTATE_BV is read and written back: a write access, as the
        // CPU's (its #PF reports a write).
        c.read_linear(mem, at(c, base, HEADER), &mut header[..8], c.access(AccessKind::Write))?;
        let old = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let bv = (old & !rfbm) | (rfbm & inuse);
        put(c, mem, base, HEADER, &bv.to_le_bytes())?;
    }
    let (offsets, _) = layout(rfbm, compacted);
    let bytes = xs.as_bytes();
    for (slot, &(bit, off, size)) in offsets.iter().zip(EXTENDED.iter()) {
        let Some(dst) = *slot else { continue };
        if saved & (1 << bit) == 0 {
            continue;
        }
        // Outside 64-bit mode only YMM0-7.
        let size = if bit == 2 { 16 * nregs } else { size };
        let mut data = [0u8; 1024];
        if xs.xstate_bv() & (1 << bit) != 0 {
            data[..size].copy_from_slice(&bytes[off..off + size]);
        }
        put(c, mem, base, dst, &data[..size])?;
    }
    Ok(())
}

/// XRSTOR from the standard or the compacted format.
pub(super) fn restore<M: EmuMemory + ?Sized>(
    c: &mut Ctx<'_>,
    insn: &ControlInsn,
    mem: &mut M,
    fx: &mut Fxsave,
    xs: &mut Xsave,
) -> Result<(), EmuError> {
    let rfbm = rfbm(c);
    let xcr0 = c.st.crs[Cr::Xcr0];
    // The header decides the format: read it within the smallest area.
    let base = area(c, insn, 0, false, false)?;
    let mut header = [0u8; 64];
    get(c, mem, base, HEADER, &mut header)?;
    let word = |i: usize| u64::from_le_bytes(header[8 * i..8 * i + 8].try_into().expect("8 bytes"));
    let (bv, comp) = (word(0), word(1));
    let compacted = comp & COMPACTED != 0;
    // The bytes that must be zero: 16-63 of a compacted header, 8-23 of a
    // standard one (SDM 13.8.1: the CPU ignores its bytes 24-63).
    let reserved = if compacted { 16..64 } else { 8..24 };
    let bad = if compacted { comp & !COMPACTED & !xcr0 != 0 || bv & !comp != 0 } else { bv & !xcr0 != 0 };
    if bad || header[reserved].iter().any(|&b| b != 0) {
        return Err(gp0());
    }
    let layout_bits = if compacted { comp & !COMPACTED } else { rfbm };
    // The whole area within its segment.
    area(c, insn, layout_bits, compacted, false)?;
    let long = c.mode == CpuMode::Bits64;
    let nregs = if long { 16 } else { 8 };
    let wide_pointers = long && insn.w;
    let mut legacy = [0u8; 512];
    let load = |what: u64| rfbm & what != 0 && bv & what != 0;
    // The standard form loads MXCSR with SSE or AVX requested; the
    // compacted form with SSE requested, from the area when SSE is in use
    // there and as 1F80H otherwise (SDM 13.8.2; some AMD CPUs leave MXCSR
    // alone in that last case).
    let mxcsr_loaded = if compacted { load(xfeature::SSE) } else { rfbm & (xfeature::SSE | xfeature::AVX) != 0 };
    if compacted && rfbm & xfeature::SSE != 0 && !mxcsr_loaded {
        fx.fx_mxcsr = 0x1f80;
    }
    if mxcsr_loaded {
        get(c, mem, base, 24, &mut legacy[24..28])?;
        let v = u32::from_le_bytes(legacy[24..28].try_into().expect("4 bytes"));
        if v & !mxcsr_mask(fx) != 0 {
            return Err(gp0());
        }
        fx.fx_mxcsr = v;
    }
    if rfbm & xfeature::X87 != 0 {
        if load(xfeature::X87) {
            get(c, mem, base, 0, &mut legacy[..24])?;
            get(c, mem, base, 32, &mut legacy[32..160])?;
            if !wide_pointers {
                legacy[12..16].fill(0);
                legacy[20..24].fill(0);
            }
            let img = Fxsave::from_bytes(&legacy);
            fx.fx_cw = img.fx_cw;
            // ES and B follow the loaded flags and masks, as on the CPU.
            let pending = img.fx_sw & 0x3f & !img.fx_cw != 0;
            fx.fx_sw = (img.fx_sw & !0x8080) | if pending { 0x8080 } else { 0 };
            fx.fx_tw = img.fx_tw;
            // FOP has 11 bits; the registers 80 (the rest of their
            // 16-byte slots is reserved and reads as zero afterwards).
            fx.fx_opcode = img.fx_opcode & 0x7ff;
            fx.fx_ip = img.fx_ip;
            fx.fx_dp = img.fx_dp;
            fx.fx_87_ac = img.fx_87_ac;
            for r in fx.fx_87_ac.iter_mut() {
                r[10..].fill(0);
            }
        } else {
            // The initial configuration: FNINIT's, registers zeroed.
            super::x87_env::initialize(fx);
            fx.fx_87_ac = [[0; 16]; 8];
        }
    }
    if rfbm & xfeature::SSE != 0 {
        if load(xfeature::SSE) {
            get(c, mem, base, 160, &mut legacy[160..160 + 16 * nregs])?;
        }
        for (r, x) in fx.fx_xmm.iter_mut().enumerate().take(nregs) {
            x.copy_from_slice(&legacy[160 + 16 * r..176 + 16 * r]);
        }
    }
    let (offsets, _) = layout(layout_bits, compacted);
    let mut out_bv = xs.xstate_bv();
    let bytes = xs.as_bytes_mut();
    for (slot, &(bit, off, size)) in offsets.iter().zip(EXTENDED.iter()) {
        let f = 1u64 << bit;
        if rfbm & f == 0 {
            continue;
        }
        let size = if bit == 2 { 16 * nregs } else { size };
        match *slot {
            Some(src) if bv & f != 0 => {
                get(c, mem, base, src, &mut bytes[off..off + size])?;
                out_bv |= f;
            }
            _ => {
                bytes[off..off + size].fill(0);
                out_bv &= !f;
            }
        }
    }
    out_bv = (out_bv & !(rfbm & (xfeature::X87 | xfeature::SSE))) | (rfbm & bv & (xfeature::X87 | xfeature::SSE));
    xs.set_xstate_bv(out_bv);
    Ok(())
}
