//! x87 loads and stores in software: FLD/FST/FSTP of m32/m64/m80 and
//! FILD/FISTP of m16/m32/m64 against the FXSAVE image, with the stack
//! (TOP, abridged tag word), the status flags (IE, DE, OE, UE, PE, SF, C1,
//! ES/B) and the masked responses the CPU gives (QNaN indefinite, integer
//! indefinite, rounding by FCW.RC, overflow to infinity or the largest
//! finite value). With an unmasked exception ES is set, so the guest takes
//! #MF at its next x87 instruction, and nothing is stored or pushed, as on
//! the CPU, but for a denormal operand, which a load pushes all the same,
//! and inexactness alone, which a store lets through; an unmasked overflow
//! or underflow of a store reports OE or UE without PE. Tininess is
//! detected before rounding. The last-instruction pointers (FIP, FDP, FOP)
//! are not updated.
#![forbid(unsafe_code)]

use super::decode::X87Op;
use crate::x86::state::Fxsave;

/// FSW / FCW exception bits.
mod ex {
    pub const IE: u16 = 1 << 0;
    pub const DE: u16 = 1 << 1;
    pub const OE: u16 = 1 << 3;
    pub const UE: u16 = 1 << 4;
    pub const PE: u16 = 1 << 5;
    pub const SF: u16 = 1 << 6;
    pub const ES: u16 = 1 << 7;
    pub const C1: u16 = 1 << 9;
    pub const B: u16 = 1 << 15;
}

/// An 80-bit extended value: sign, biased exponent, 64-bit significand.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct F80 {
    sign: bool,
    exp: u16,
    man: u64,
}

impl F80 {
    fn from_bytes(b: &[u8; 16]) -> F80 {
        let man = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let se = u16::from_le_bytes([b[8], b[9]]);
        F80 { sign: se & 0x8000 != 0, exp: se & 0x7fff, man }
    }

    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.man.to_le_bytes());
        b[8..10].copy_from_slice(&(u16::from(self.sign) << 15 | self.exp).to_le_bytes());
        b
    }

    /// The QNaN indefinite.
    const INDEFINITE: F80 = F80 { sign: true, exp: 0x7fff, man: 0xc000_0000_0000_0000 };
}

/// Rounding control.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rc {
    Nearest,
    Down,
    Up,
    Zero,
}

fn rc(fx: &Fxsave) -> Rc {
    match (fx.fx_cw >> 10) & 3 {
        0 => Rc::Nearest,
        1 => Rc::Down,
        2 => Rc::Up,
        _ => Rc::Zero,
    }
}

fn top(fx: &Fxsave) -> u16 {
    (fx.fx_sw >> 11) & 7
}

fn set_top(fx: &mut Fxsave, t: u16) {
    fx.fx_sw = (fx.fx_sw & !(7 << 11)) | ((t & 7) << 11);
}

fn tag_valid(fx: &Fxsave, phys: u16) -> bool {
    fx.fx_tw & (1 << phys) != 0
}

/// Raises exception bits; returns whether all of them are masked.
fn raise(fx: &mut Fxsave, bits: u16) -> bool {
    fx.fx_sw |= bits & 0x7f;
    let unmasked = bits & 0x3f & !fx.fx_cw;
    if unmasked != 0 {
        fx.fx_sw |= ex::ES | ex::B;
    }
    unmasked == 0
}

fn push(fx: &mut Fxsave, v: F80) {
    let t = top(fx).wrapping_sub(1) & 7;
    set_top(fx, t);
    fx.fx_tw |= 1 << t;
    for i in (1..8).rev() {
        fx.fx_87_ac[i] = fx.fx_87_ac[i - 1];
    }
    fx.fx_87_ac[0] = v.to_bytes();
}

fn pop(fx: &mut Fxsave) {
    let t = top(fx);
    fx.fx_tw &= !(1 << t);
    set_top(fx, t + 1);
    let old = fx.fx_87_ac[0];
    for i in 0..7 {
        fx.fx_87_ac[i] = fx.fx_87_ac[i + 1];
    }
    fx.fx_87_ac[7] = old;
}

/// FLD / FILD: pushes the memory value.
pub(crate) fn load(fx: &mut Fxsave, op: X87Op, bytes: &[u8]) {
    fx.fx_sw &= !ex::C1;
    let t = top(fx).wrapping_sub(1) & 7;
    if tag_valid(fx, t) {
        // Stack overflow: C1 = 1.
        fx.fx_sw |= ex::C1;
        if raise(fx, ex::IE | ex::SF) {
            push(fx, F80::INDEFINITE);
        }
        return;
    }
    let (v, flags) = match (op, bytes.len()) {
        (X87Op::Fild, n) => (from_int(bytes, n), 0),
        (_, 10) => {
            let mut b = [0u8; 16];
            b[..10].copy_from_slice(bytes);
            (F80::from_bytes(&b), 0)
        }
        (_, 8) => from_float(u64::from_le_bytes(bytes.try_into().expect("8 bytes")), 52, 11),
        (_, _) => from_float(u64::from(u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"))), 23, 8),
    };
    // An unmasked invalid operation (an SNaN) pushes nothing; a denormal
    // operand is loaded whether its exception is masked or not, as the
    // CPU does.
    let blocked = flags & ex::IE & !fx.fx_cw != 0;
    raise(fx, flags);
    if !blocked {
        push(fx, v);
    }
}

fn from_int(bytes: &[u8], n: usize) -> F80 {
    let mut b = [0u8; 8];
    b[..n].copy_from_slice(&bytes[..n]);
    let shift = 64 - 8 * n as u32;
    let v = (i64::from_le_bytes(b) << shift) >> shift;
    if v == 0 {
        return F80 { sign: false, exp: 0, man: 0 };
    }
    let mag = v.unsigned_abs();
    let lz = mag.leading_zeros();
    F80 { sign: v < 0, exp: (16383 + 63 - lz) as u16, man: mag << lz }
}

/// An IEEE single or double to extended: exact. Returns the exception bits
/// (IE for an SNaN, DE for a denormal).
fn from_float(bits: u64, frac_bits: u32, exp_bits: u32) -> (F80, u16) {
    let sign = bits >> (frac_bits + exp_bits) & 1 != 0;
    let emax = (1u64 << exp_bits) - 1;
    let bias = (emax >> 1) as i32;
    let e = (bits >> frac_bits) & emax;
    let f = bits & ((1u64 << frac_bits) - 1);
    if e == emax {
        let quiet = f >> (frac_bits - 1) & 1 != 0;
        let man = (1u64 << 63) | (f << (63 - frac_bits)) | if f != 0 { 1 << 62 } else { 0 };
        let flags = if f != 0 && !quiet { ex::IE } else { 0 };
        return (F80 { sign, exp: 0x7fff, man }, flags);
    }
    if e == 0 {
        if f == 0 {
            return (F80 { sign, exp: 0, man: 0 }, 0);
        }
        let lz = f.leading_zeros();
        // value = f * 2^(1 - bias - frac_bits)
        let exp = 16383 + 1 - bias - frac_bits as i32 + (63 - lz as i32);
        return (F80 { sign, exp: exp as u16, man: f << lz }, ex::DE);
    }
    let exp = (e as i32 - bias + 16383) as u16;
    (F80 { sign, exp, man: (1u64 << 63) | (f << (63 - frac_bits)) }, 0)
}

/// Whether an extended value is a supported (canonical) encoding.
fn supported(v: &F80) -> bool {
    v.exp == 0 || v.man >> 63 == 1
}

/// FST / FSTP / FISTP: the bytes to store (`None`: unmasked exception,
/// nothing stored, nothing popped).
pub(crate) fn store(fx: &mut Fxsave, op: X87Op, size: usize) -> Option<[u8; 10]> {
    fx.fx_sw &= !ex::C1;
    let t = top(fx);
    let popping = matches!(op, X87Op::Fstp | X87Op::Fistp);
    if !tag_valid(fx, t) {
        // Stack underflow: C1 = 0.
        if !raise(fx, ex::IE | ex::SF) {
            return None;
        }
        let out = indefinite(op, size);
        if popping {
            pop(fx);
        }
        return Some(out);
    }
    let v = F80::from_bytes(&fx.fx_87_ac[0]);
    let (out, flags, up) = if size == 10 && op != X87Op::Fistp {
        let mut o = [0u8; 10];
        o.copy_from_slice(&v.to_bytes()[..10]);
        (o, 0, false)
    } else if op == X87Op::Fistp {
        to_int(&v, size, rc(fx))
    } else if size == 8 {
        to_float(&v, 52, 11, rc(fx), fx.fx_cw)
    } else {
        to_float(&v, 23, 8, rc(fx), fx.fx_cw)
    };
    // Masked or not, PE alone lets the result through; any other unmasked
    // exception stops the store.
    let blocking = flags & !ex::PE & 0x3f & !fx.fx_cw;
    raise(fx, flags);
    if blocking != 0 {
        return None;
    }
    if up {
        fx.fx_sw |= ex::C1;
    }
    if popping {
        pop(fx);
    }
    Some(out)
}

fn indefinite(op: X87Op, size: usize) -> [u8; 10] {
    let mut o = [0u8; 10];
    match (op, size) {
        (X87Op::Fistp, n) => o[n - 1] = 0x80,
        (_, 4) => o[..4].copy_from_slice(&0xffc0_0000u32.to_le_bytes()),
        (_, 8) => o[..8].copy_from_slice(&0xfff8_0000_0000_0000u64.to_le_bytes()),
        _ => o.copy_from_slice(&F80::INDEFINITE.to_bytes()[..10]),
    }
    o
}

/// Rounds `man` right by `drop` bits; returns (kept, inexact, rounded up).
fn round_shift(man: u64, drop: u32, sign: bool, rc: Rc) -> (u64, bool, bool) {
    if drop == 0 {
        return (man, false, false);
    }
    let (kept, rem, half) = if drop >= 64 {
        let half_bit = if drop == 64 { 1u128 << 63 } else { 0 };
        (0u64, u128::from(man), if drop == 64 { half_bit } else { u128::MAX })
    } else {
        (man >> drop, u128::from(man & ((1u64 << drop) - 1)), 1u128 << (drop - 1))
    };
    if rem == 0 {
        return (kept, false, false);
    }
    let up = match rc {
        Rc::Nearest => {
            if drop > 64 {
                false
            } else {
                rem > half || (rem == half && kept & 1 == 1)
            }
        }
        Rc::Down => sign,
        Rc::Up => !sign,
        Rc::Zero => false,
    };
    (kept + u64::from(up), true, up)
}

/// Extended to IEEE single (23, 8) or double (52, 11): bytes, exception
/// bits, rounded up.
fn to_float(v: &F80, frac_bits: u32, exp_bits: u32, rc: Rc, cw: u16) -> ([u8; 10], u16, bool) {
    let emax_field = (1u64 << exp_bits) - 1;
    let bias = (emax_field >> 1) as i32;
    let sign_bit = u64::from(v.sign) << (frac_bits + exp_bits);
    let pack = |bits: u64| {
        let mut o = [0u8; 10];
        let n = ((frac_bits + exp_bits + 1) / 8) as usize;
        o[..n].copy_from_slice(&bits.to_le_bytes()[..n]);
        o
    };
    if !supported(v) {
        return (pack(indefinite_bits(frac_bits, exp_bits)), ex::IE, false);
    }
    if v.exp == 0x7fff {
        let f = v.man << 1;
        if f == 0 {
            return (pack(sign_bit | emax_field << frac_bits), 0, false);
        }
        let quiet = v.man >> 62 & 1 == 1;
        let frac = (v.man >> (63 - frac_bits)) & ((1u64 << frac_bits) - 1) | 1 << (frac_bits - 1);
        return (pack(sign_bit | emax_field << frac_bits | frac), if quiet { 0 } else { ex::IE }, false);
    }
    if v.man == 0 {
        return (pack(sign_bit), 0, false);
    }
    // Normalize (extended denormals have exponent field 0 and value
    // man * 2^(1 - 16383 - 63)).
    let lz = v.man.leading_zeros();
    let man = v.man << lz;
    let e = if v.exp == 0 { 1 - 16383 } else { i32::from(v.exp) - 16383 } - lz as i32;
    let p = frac_bits + 1;
    let emin = 1 - bias;
    let emax = bias;
    let mut flags = 0u16;
    let tiny = e < emin;
    let drop = if tiny { 64 - p + (emin - e) as u32 } else { 64 - p };
    let (mut kept, inexact, up) = round_shift(man, drop.min(200), v.sign, rc);
    let mut e = e;
    if !tiny && kept >> p != 0 {
        kept >>= 1;
        e += 1;
    }
    if inexact {
        flags |= ex::PE;
    }
    if tiny && cw & ex::UE == 0 {
        // Unmasked: nothing is stored and UE alone is reported (as the CPU
        // does for a memory destination).
        flags = ex::UE;
    } else if tiny && inexact {
        flags |= ex::UE;
    }
    if !tiny && e > emax {
        // Masked: the rounded result is inexact too. Unmasked, nothing is
        // stored and OE alone is reported (as the CPU does for a memory
        // destination).
        flags = if cw & ex::OE != 0 { ex::OE | ex::PE } else { ex::OE };
        let to_inf = match rc {
            Rc::Nearest => true,
            Rc::Zero => false,
            Rc::Down => v.sign,
            Rc::Up => !v.sign,
        };
        let bits = if to_inf {
            sign_bit | emax_field << frac_bits
        } else {
            sign_bit | (emax_field - 1) << frac_bits | ((1u64 << frac_bits) - 1)
        };
        return (pack(bits), flags, to_inf);
    }
    let bits = if tiny {
        // kept may have become the smallest normal through rounding.
        sign_bit | kept
    } else {
        sign_bit | ((e + bias) as u64) << frac_bits | (kept & ((1u64 << frac_bits) - 1))
    };
    (pack(bits), flags, up)
}

fn indefinite_bits(frac_bits: u32, exp_bits: u32) -> u64 {
    let emax = (1u64 << exp_bits) - 1;
    1 << (frac_bits + exp_bits) | emax << frac_bits | 1 << (frac_bits - 1)
}

/// Extended to a signed integer of `size` bytes.
fn to_int(v: &F80, size: usize, rc: Rc) -> ([u8; 10], u16, bool) {
    let mut o = [0u8; 10];
    let bits = 8 * size as u32;
    let invalid = |o: &mut [u8; 10]| {
        o[size - 1] = 0x80;
        (*o, ex::IE, false)
    };
    if !supported(v) || v.exp == 0x7fff {
        return invalid(&mut o);
    }
    if v.man == 0 {
        return (o, 0, false);
    }
    let e = if v.exp == 0 { 1 - 16383 } else { i32::from(v.exp) - 16383 };
    // value = man * 2^(e - 63)
    let (mag, inexact, up) = if e >= 63 {
        if e > 63 + 64 {
            return invalid(&mut o);
        }
        let shifted = u128::from(v.man) << (e - 63);
        if shifted > u128::from(u64::MAX) {
            return invalid(&mut o);
        }
        (shifted as u64, false, false)
    } else {
        round_shift(v.man, (63 - e) as u32, v.sign, rc)
    };
    let limit = 1u64 << (bits - 1);
    if (!v.sign && mag >= limit) || (v.sign && mag > limit) {
        return invalid(&mut o);
    }
    let val = if v.sign { mag.wrapping_neg() } else { mag };
    o[..size].copy_from_slice(&val.to_le_bytes()[..size]);
    (o, if inexact { ex::PE } else { 0 }, up)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Fxsave {
        Fxsave { fx_cw: 0x37f, fx_mxcsr: 0x1f80, ..Default::default() }
    }

    fn f64_to_f80_via_load(x: f64) -> (Fxsave, F80) {
        let mut fx = fresh();
        load(&mut fx, X87Op::Fld, &x.to_le_bytes());
        let v = F80::from_bytes(&fx.fx_87_ac[0]);
        (fx, v)
    }

    #[test]
    fn doubles_round_trip_exactly() {
        for x in [1.0f64, -2.5, 1e300, -1e-300, f64::MIN_POSITIVE, 5e-324, f64::INFINITY, 0.0, -0.0, 123456.789] {
            let (mut fx, _) = f64_to_f80_via_load(x);
            assert_eq!(top(&fx), 7);
            assert_eq!(fx.fx_tw, 0x80);
            let out = store(&mut fx, X87Op::Fstp, 8).unwrap();
            assert_eq!(f64::from_le_bytes(out[..8].try_into().unwrap()).to_bits(), x.to_bits(), "{x}");
            assert_eq!(top(&fx), 0);
            assert_eq!(fx.fx_tw, 0);
        }
        let (fx, v) = f64_to_f80_via_load(1.0);
        assert_eq!((v.exp, v.man), (16383, 1 << 63));
        assert_eq!(fx.fx_sw & 0x3f, 0);
        let (fx, _) = f64_to_f80_via_load(5e-324);
        assert_eq!(fx.fx_sw & ex::DE, ex::DE, "denormal operand");
    }

    #[test]
    fn stores_round_and_flag() {
        let mut fx = fresh();
        load(&mut fx, X87Op::Fld, &(1.0f64 + f64::EPSILON).to_le_bytes());
        let out = store(&mut fx, X87Op::Fst, 4).unwrap();
        assert_eq!(f32::from_le_bytes(out[..4].try_into().unwrap()), 1.0);
        assert_eq!(fx.fx_sw & ex::PE, ex::PE);
        let mut fx = fresh();
        load(&mut fx, X87Op::Fld, &1e300f64.to_le_bytes());
        let out = store(&mut fx, X87Op::Fstp, 4).unwrap();
        assert_eq!(f32::from_le_bytes(out[..4].try_into().unwrap()), f32::INFINITY);
        assert_eq!(fx.fx_sw & (ex::OE | ex::PE), ex::OE | ex::PE);
        // Round toward zero gives the largest finite value.
        let mut fx = fresh();
        fx.fx_cw |= 3 << 10;
        load(&mut fx, X87Op::Fld, &1e300f64.to_le_bytes());
        let out = store(&mut fx, X87Op::Fstp, 4).unwrap();
        assert_eq!(f32::from_le_bytes(out[..4].try_into().unwrap()), f32::MAX);
    }

    #[test]
    fn integers() {
        let mut fx = fresh();
        load(&mut fx, X87Op::Fild, &(-12345i32).to_le_bytes());
        let out = store(&mut fx, X87Op::Fistp, 2).unwrap();
        assert_eq!(i16::from_le_bytes([out[0], out[1]]), -12345);
        let mut fx = fresh();
        load(&mut fx, X87Op::Fld, &2.5f64.to_le_bytes());
        let out = store(&mut fx, X87Op::Fistp, 4).unwrap();
        assert_eq!(i32::from_le_bytes(out[..4].try_into().unwrap()), 2, "round to even");
        let mut fx = fresh();
        load(&mut fx, X87Op::Fld, &1e10f64.to_le_bytes());
        let out = store(&mut fx, X87Op::Fistp, 4).unwrap();
        assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()), 0x8000_0000, "integer indefinite");
        assert_eq!(fx.fx_sw & ex::IE, ex::IE);
        let mut fx = fresh();
        load(&mut fx, X87Op::Fild, &i64::MIN.to_le_bytes());
        let out = store(&mut fx, X87Op::Fistp, 8).unwrap();
        assert_eq!(i64::from_le_bytes(out[..8].try_into().unwrap()), i64::MIN);
    }

    #[test]
    fn stack_faults() {
        let mut fx = fresh();
        // Underflow: storing from an empty stack gives the indefinite.
        let out = store(&mut fx, X87Op::Fstp, 8).unwrap();
        assert_eq!(u64::from_le_bytes(out[..8].try_into().unwrap()), 0xfff8_0000_0000_0000);
        assert_eq!(fx.fx_sw & (ex::IE | ex::SF | ex::C1), ex::IE | ex::SF);
        // Unmasked: nothing stored, ES set.
        let mut fx = fresh();
        fx.fx_cw &= !1;
        assert!(store(&mut fx, X87Op::Fstp, 8).is_none());
        assert_eq!(fx.fx_sw & (ex::ES | ex::B), ex::ES | ex::B);
        // Overflow after eight pushes.
        let mut fx = fresh();
        for _ in 0..9 {
            load(&mut fx, X87Op::Fild, &[1, 0]);
        }
        assert_eq!(fx.fx_sw & (ex::IE | ex::SF | ex::C1), ex::IE | ex::SF | ex::C1);
    }
}
