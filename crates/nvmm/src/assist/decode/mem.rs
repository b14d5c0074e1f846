//! A memory operand, packed: the displacement and one word of small
//! fields laid out as in [`Instruction`](super::Instruction), so that
//! taking the memory operand out of an instruction is a shift.
#![forbid(unsafe_code)]

use crate::x86::state::Seg;

/// Bit positions of the fields of [`Mem::bits`].
pub(super) mod field {
    /// Segment (3 bits).
    pub const SEG: u32 = 0;
    /// Base register (5 bits: bit 4 says present, bits 0-3 the number).
    pub const BASE: u32 = 3;
    /// Index register (5 bits, as the base).
    pub const INDEX: u32 = 8;
    /// Scale (2 bits: log2).
    pub const SCALE: u32 = 13;
    /// RIP-relative.
    pub const RIP: u32 = 15;
    /// Access size in bytes (6 bits).
    pub const SIZE: u32 = 16;
    /// Address size (2 bits: log2 of the bytes, minus 1).
    pub const ADDR_SIZE: u32 = 22;
    /// Width of the whole.
    pub const WIDTH: u32 = 24;
    /// "Present" in the base and index fields.
    pub const PRESENT: u32 = 0x10;
}

use field::*;

/// A memory operand: `seg:[base + index * scale + disp]`, `size` bytes,
/// with `addr_size`-byte address arithmetic.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mem {
    /// The small fields (see [`field`]).
    pub(super) bits: u32,
    pub(super) disp: i64,
}

impl Mem {
    /// A memory operand from its parts. `index` is a register number and
    /// a scale of 1, 2, 4 or 8; `addr_size` is 2, 4 or 8.
    pub fn new(
        seg: Seg,
        base: Option<u8>,
        index: Option<(u8, u8)>,
        disp: i64,
        rip_relative: bool,
        addr_size: u8,
        size: u8,
    ) -> Mem {
        let reg = |r: Option<u8>| r.map_or(0, |n| PRESENT | u32::from(n & 0xf));
        let (idx, scale) = match index {
            Some((n, s)) => (reg(Some(n)), s.trailing_zeros() & 3),
            None => (0, 0),
        };
        let bits = (seg as u32 & 7) << SEG
            | reg(base) << BASE
            | idx << INDEX
            | scale << SCALE
            | u32::from(rip_relative) << RIP
            | (u32::from(size) & 0x3f) << SIZE
            | (addr_size.trailing_zeros().saturating_sub(1) & 3) << ADDR_SIZE;
        Mem { bits, disp }
    }

    #[inline(always)]
    fn get(&self, at: u32, width: u32) -> u32 {
        (self.bits >> at) & ((1 << width) - 1)
    }

    #[inline(always)]
    fn reg(f: u32) -> Option<u8> {
        (f & PRESENT != 0).then_some((f & 0xf) as u8)
    }

    /// Segment (the override, else DS, or SS for BP/SP bases).
    #[inline]
    pub fn seg(&self) -> Seg {
        Seg::ALL[self.get(SEG, 3) as usize]
    }

    /// Base register number (0-15), if any.
    #[inline]
    pub fn base(&self) -> Option<u8> {
        Self::reg(self.get(BASE, 5))
    }

    /// Index register number and scale, if any.
    #[inline]
    pub fn index(&self) -> Option<(u8, u8)> {
        Self::reg(self.get(INDEX, 5)).map(|i| (i, 1 << self.get(SCALE, 2)))
    }

    /// Displacement, sign-extended (for moffs: the absolute offset).
    #[inline]
    pub fn disp(&self) -> i64 {
        self.disp
    }

    /// RIP-relative: the displacement is added to the next instruction's
    /// RIP.
    #[inline]
    pub fn rip_relative(&self) -> bool {
        self.get(RIP, 1) != 0
    }

    /// Address size in bytes (2, 4, 8): registers and the sum are
    /// truncated to it.
    #[inline]
    pub fn addr_size(&self) -> u8 {
        2 << self.get(ADDR_SIZE, 2)
    }

    /// Size of the access in bytes.
    #[inline]
    pub fn size(&self) -> u8 {
        self.get(SIZE, 6) as u8
    }

    /// ES:rDI with this operand's sizes (the destination of MOVS and the
    /// second operand of CMPS).
    #[inline]
    pub fn es_rdi(&self) -> Mem {
        let keep = self.bits & ((0x3f << SIZE) | (3 << ADDR_SIZE));
        Mem { bits: keep | (Seg::Es as u32) << SEG | (PRESENT | 7) << BASE, disp: 0 }
    }
}

impl std::fmt::Debug for Mem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mem")
            .field("seg", &self.seg())
            .field("base", &self.base())
            .field("index", &self.index())
            .field("disp", &self.disp)
            .field("rip_relative", &self.rip_relative())
            .field("addr_size", &self.addr_size())
            .field("size", &self.size())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let m = Mem::new(Seg::Ss, Some(13), Some((9, 8)), -8, false, 4, 10);
        assert_eq!(
            (m.seg(), m.base(), m.index(), m.disp(), m.rip_relative(), m.addr_size(), m.size()),
            (Seg::Ss, Some(13), Some((9, 8)), -8, false, 4, 10)
        );
        let m = Mem::new(Seg::Gs, None, None, 0x10, true, 8, 32);
        assert_eq!((m.base(), m.index(), m.rip_relative(), m.addr_size(), m.size()), (None, None, true, 8, 32));
        let d = Mem::new(Seg::Fs, Some(6), None, 0, false, 2, 2).es_rdi();
        assert_eq!((d.seg(), d.base(), d.addr_size(), d.size()), (Seg::Es, Some(7), 2, 2));
    }

    #[test]
    fn debug_shows_every_field() {
        let m = Mem::new(Seg::Ss, Some(13), Some((9, 8)), -8, false, 4, 10);
        assert_eq!(
            format!("{m:?}"),
            "Mem { seg: Ss, base: Some(13), index: Some((9, 8)), disp: -8, rip_relative: false, addr_size: 4, size: 10 }"
        );
    }
}
