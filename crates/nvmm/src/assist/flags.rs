//! Arithmetic flags computed in software, bit-exact with the CPU for every
//! flag the instructions define. AND, OR, XOR and TEST leave AF undefined;
//! x86 CPUs clear it, and so does this module (the differential tests check
//! it against the real CPU).
#![forbid(unsafe_code)]

pub use crate::x86::bits::rflags;

use rflags::*;

fn bits(size: u8) -> u32 {
    8 * u32::from(size)
}

fn mask(size: u8) -> u64 {
    if size >= 8 { u64::MAX } else { (1u64 << bits(size)) - 1 }
}

fn sign(v: u64, size: u8) -> bool {
    (v >> (bits(size) - 1)) & 1 != 0
}

/// ZF, SF and PF of a result.
fn szp(r: u64, size: u8) -> u64 {
    let r = r & mask(size);
    let mut f = 0;
    if r == 0 {
        f |= ZF;
    }
    if sign(r, size) {
        f |= SF;
    }
    if (r as u8).count_ones() % 2 == 0 {
        f |= PF;
    }
    f
}

/// Result and arithmetic flags of `a + b + carry`.
pub fn add(a: u64, b: u64, carry: bool, size: u8) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let wide = u128::from(a) + u128::from(b) + u128::from(carry);
    let r = (wide as u64) & m;
    let mut f = szp(r, size);
    if wide > u128::from(m) {
        f |= CF;
    }
    if sign((a ^ r) & (b ^ r), size) {
        f |= OF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= AF;
    }
    (r, f)
}

/// Result and arithmetic flags of `a - b - borrow`.
pub fn sub(a: u64, b: u64, borrow: bool, size: u8) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let r = a.wrapping_sub(b).wrapping_sub(u64::from(borrow)) & m;
    let mut f = szp(r, size);
    if u128::from(a) < u128::from(b) + u128::from(borrow) {
        f |= CF;
    }
    if sign((a ^ b) & (a ^ r), size) {
        f |= OF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= AF;
    }
    (r, f)
}

/// Flags of a logical result (AND, OR, XOR, TEST): CF, OF and AF clear.
pub fn logic(r: u64, size: u8) -> u64 {
    szp(r, size)
}

/// Replaces the arithmetic flags of `rflags` with `f`.
pub fn merge(rflags: u64, f: u64) -> u64 {
    (rflags & !ARITH) | (f & ARITH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(add(0xff, 1, false, 1), (0, CF | ZF | PF | AF));
        assert_eq!(add(0x7f, 1, false, 1), (0x80, OF | SF | AF));
        assert_eq!(sub(0, 1, false, 2), (0xffff, CF | SF | PF | AF));
        assert_eq!(sub(0x80, 1, false, 1), (0x7f, OF | AF));
        assert_eq!(add(u64::MAX, 0, true, 8), (0, CF | ZF | PF | AF));
        assert_eq!(sub(5, 5, true, 4), (0xffff_ffff, CF | SF | PF | AF));
        assert_eq!(logic(0x100, 2), PF);
        assert_eq!(merge(0xffff_ffff, 0), 0xffff_ffff & !ARITH);
    }
}
