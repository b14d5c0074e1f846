//! The XSAVE area of a VCPU: everything of the FPU component beyond the
//! 512-byte FXSAVE image kept in [`State::fpu`](crate::x86::State).
//!
//! The area is KVM's `kvm_xsave` (4096 bytes, standard non-compacted
//! format). Bytes 0..512 mirror the FXSAVE image: on a get they are copied to
//! `State::fpu`, on a set `State::fpu` overwrites them, so edit the legacy
//! registers through `State::fpu`. The header (XSTATE_BV) and the extended
//! components (AVX, opmask, AVX-512, PKRU) are edited here.

/// Size of the XSAVE area exchanged with KVM.
pub const XSAVE_SIZE: usize = 4096;

/// XCR0 / XSTATE_BV component bits.
pub mod xfeature {
    /// x87 state.
    pub const X87: u64 = 1 << 0;
    /// SSE state (XMM registers, MXCSR).
    pub const SSE: u64 = 1 << 1;
    /// AVX: upper halves of YMM0-15.
    pub const AVX: u64 = 1 << 2;
    /// MPX bound registers.
    pub const BNDREGS: u64 = 1 << 3;
    /// MPX configuration.
    pub const BNDCSR: u64 = 1 << 4;
    /// AVX-512 opmask registers k0-k7.
    pub const OPMASK: u64 = 1 << 5;
    /// AVX-512: upper 256 bits of ZMM0-15.
    pub const ZMM_HI256: u64 = 1 << 6;
    /// AVX-512: ZMM16-31.
    pub const HI16_ZMM: u64 = 1 << 7;
    /// Protection keys.
    pub const PKRU: u64 = 1 << 9;
    /// Names of the bits, as `nvmmctl identify` prints them.
    pub const NAMES: [(u64, &str); 12] = [
        (X87, "x87"),
        (SSE, "SSE"),
        (AVX, "AVX"),
        (BNDREGS, "BNDREGS"),
        (BNDCSR, "BNDCSR"),
        (OPMASK, "Opmask"),
        (ZMM_HI256, "ZMM_Hi256"),
        (HI16_ZMM, "Hi16_ZMM"),
        (1 << 8, "PT"),
        (PKRU, "PKRU"),
        (1 << 17, "XTILECFG"),
        (1 << 18, "XTILEDATA"),
    ];
}

use crate::error::{Error, Result};

const XSTATE_BV: usize = 512;
const AVX_OFF: usize = 576;
const OPMASK_OFF: usize = 1088;
const ZMM_HI256_OFF: usize = 1152;
const HI16_ZMM_OFF: usize = 1664;
const PKRU_OFF: usize = 2688;

/// The XSAVE area (see the module documentation).
#[derive(Clone, PartialEq, Eq)]
pub struct Xsave {
    bytes: Box<[u8; XSAVE_SIZE]>,
}

impl Default for Xsave {
    fn default() -> Xsave {
        Xsave { bytes: Box::new([0; XSAVE_SIZE]) }
    }
}

impl std::fmt::Debug for Xsave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Xsave {{ xstate_bv: {:#x}, .. }}", self.xstate_bv())
    }
}

impl Xsave {
    /// The raw area.
    pub fn as_bytes(&self) -> &[u8; XSAVE_SIZE] {
        &self.bytes
    }

    /// The raw area, mutable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8; XSAVE_SIZE] {
        &mut self.bytes
    }

    fn read<const N: usize>(&self, off: usize) -> [u8; N] {
        self.bytes[off..off + N].try_into().expect("in bounds")
    }

    fn write(&mut self, off: usize, v: &[u8], feature: u64) {
        self.bytes[off..off + v.len()].copy_from_slice(v);
        self.set_xstate_bv(self.xstate_bv() | feature);
    }

    /// XSTATE_BV: which components hold non-initial values.
    pub fn xstate_bv(&self) -> u64 {
        u64::from_le_bytes(self.read::<8>(XSTATE_BV))
    }

    /// Sets XSTATE_BV. A component whose bit is clear is loaded in its
    /// initial state (zeros) regardless of the bytes in the area.
    pub fn set_xstate_bv(&mut self, bv: u64) {
        self.bytes[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&bv.to_le_bytes());
    }

    fn check(what: &'static str, i: usize, range: std::ops::Range<usize>) -> Result<()> {
        if range.contains(&i) { Ok(()) } else { Err(Error::InvalidRegister { what, index: i }) }
    }

    /// Upper 128 bits of YMM`i` (`i < 16`).
    pub fn ymm_hi(&self, i: usize) -> Result<[u8; 16]> {
        Self::check("YMM", i, 0..16)?;
        Ok(self.read(AVX_OFF + 16 * i))
    }

    /// Sets the upper 128 bits of YMM`i` and marks the AVX component in use.
    pub fn set_ymm_hi(&mut self, i: usize, v: [u8; 16]) -> Result<()> {
        Self::check("YMM", i, 0..16)?;
        self.write(AVX_OFF + 16 * i, &v, xfeature::AVX);
        Ok(())
    }

    /// Opmask register k`i` (`i < 8`).
    pub fn opmask(&self, i: usize) -> Result<u64> {
        Self::check("opmask", i, 0..8)?;
        Ok(u64::from_le_bytes(self.read(OPMASK_OFF + 8 * i)))
    }

    /// Sets k`i` and marks the opmask component in use.
    pub fn set_opmask(&mut self, i: usize, v: u64) -> Result<()> {
        Self::check("opmask", i, 0..8)?;
        self.write(OPMASK_OFF + 8 * i, &v.to_le_bytes(), xfeature::OPMASK);
        Ok(())
    }

    /// Bits 511:256 of ZMM`i` (`i < 16`).
    pub fn zmm_hi256(&self, i: usize) -> Result<[u8; 32]> {
        Self::check("ZMM", i, 0..16)?;
        Ok(self.read(ZMM_HI256_OFF + 32 * i))
    }

    /// Sets bits 511:256 of ZMM`i` (`i < 16`).
    pub fn set_zmm_hi256(&mut self, i: usize, v: [u8; 32]) -> Result<()> {
        Self::check("ZMM", i, 0..16)?;
        self.write(ZMM_HI256_OFF + 32 * i, &v, xfeature::ZMM_HI256);
        Ok(())
    }

    /// ZMM`i` for `16 <= i < 32`.
    pub fn hi16_zmm(&self, i: usize) -> Result<[u8; 64]> {
        Self::check("ZMM", i, 16..32)?;
        Ok(self.read(HI16_ZMM_OFF + 64 * (i - 16)))
    }

    /// Sets ZMM`i` for `16 <= i < 32`.
    pub fn set_hi16_zmm(&mut self, i: usize, v: [u8; 64]) -> Result<()> {
        Self::check("ZMM", i, 16..32)?;
        self.write(HI16_ZMM_OFF + 64 * (i - 16), &v, xfeature::HI16_ZMM);
        Ok(())
    }

    /// PKRU.
    pub fn pkru(&self) -> u32 {
        u32::from_le_bytes(self.read(PKRU_OFF))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PKRU lives where the CPU says (CPUID leaf 0xD, subleaf 9, EBX is its
    /// offset in the standard format) on hosts with PKU; the SDM's standard
    /// layout puts it at 2688 where CPUID does not tell.
    #[test]
    fn pkru_is_where_the_cpu_puts_it() {
        let leaf = std::arch::x86_64::__cpuid_count(0xd, 9);
        let offset = if leaf.eax == 4 { leaf.ebx as usize } else { 2688 };
        let mut x = Xsave::default();
        x.as_bytes_mut()[offset..offset + 4].copy_from_slice(&0x5555_0004u32.to_le_bytes());
        assert_eq!(x.pkru(), 0x5555_0004);
    }

    #[test]
    fn setters_mark_components() {
        let mut x = Xsave::default();
        x.set_ymm_hi(3, [9; 16]).unwrap();
        assert_eq!(x.xstate_bv(), xfeature::AVX);
        assert_eq!(x.ymm_hi(3).unwrap(), [9; 16]);
        assert_eq!(x.as_bytes()[576 + 48], 9);
        x.set_opmask(7, 0x1234).unwrap();
        x.set_hi16_zmm(31, [1; 64]).unwrap();
        assert_eq!(x.opmask(7).unwrap(), 0x1234);
        assert_eq!(x.hi16_zmm(31).unwrap(), [1; 64]);
        assert_eq!(x.ymm_hi(16).unwrap_err().errno(), libc::EINVAL);
        assert!(x.set_opmask(8, 0).is_err());
        assert!(x.hi16_zmm(15).is_err());
        assert!(x.set_zmm_hi256(16, [0; 32]).is_err());
        assert_eq!(x.zmm_hi256(15).unwrap(), [0; 32]);
        assert_eq!(x.xstate_bv(), xfeature::AVX | xfeature::OPMASK | xfeature::HI16_ZMM);
    }
}
