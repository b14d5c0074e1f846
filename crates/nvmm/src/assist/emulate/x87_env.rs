//! The x87 environment and register image of FNSTENV, FLDENV, FNSAVE and
//! FRSTOR in protected and 64-bit mode (SDM Vol. 1, 8.1.10 and figures
//! 8-9 to 8-12), built from and loaded into the FXSAVE image the library
//! keeps.
//!
//! The 32-bit format is 28 bytes: the control, status and full tag words
//! in the low halves of three doublewords, the instruction pointer, the
//! code selector with the last opcode's 11 bits above it, the data
//! pointer and the data selector; the 16-bit format (a 16-bit operand
//! size) is 14 bytes of words with the pointers' low halves and no opcode.
//! FNSAVE and FRSTOR add ST0-ST7, 10 bytes each, in stack order.
//!
//! The FXSAVE image keeps the pointers in 64-bit form (the kernel saves
//! the FPU with XSAVE64), so the selectors are not known: they are stored
//! as zero, as CPUs that deprecate the FPU CS and DS values
//! (CPUID.(EAX=7,ECX=0):EBX[13]) store them, and ignored on load. The
//! full tag word is computed from the abridged one and each register's
//! contents (valid, zero, special, empty) and folded back on load.
#![forbid(unsafe_code)]

use crate::x86::state::Fxsave;

/// What the reserved halves of the 32-bit format hold when stored (the
/// CPU writes ones there).
const RESERVED: u16 = 0xffff;

/// FNINIT's x87 state (FNSAVE ends with it too): control word 037FH,
/// status and tags cleared (every register empty), no last instruction.
pub(super) fn initialize(fx: &mut Fxsave) {
    fx.fx_cw = 0x37f;
    fx.fx_sw = 0;
    fx.fx_tw = 0;
    fx.fx_opcode = 0;
    fx.fx_ip = 0;
    fx.fx_dp = 0;
}

/// A control word as FLDCW and FLDENV load it: bit 6 reads as 1, bits
/// 13-15 as 0.
pub(super) fn control_word(v: u16) -> u16 {
    (v & 0x1f3f) | 0x40
}

/// The environment's size for an operand size of `opsize` bytes.
pub(super) fn env_len(opsize: u8) -> usize {
    if opsize == 4 { 28 } else { 14 }
}

/// The full tag word: two bits per physical register, 00 valid, 01 zero,
/// 10 special (NaN, infinity, denormal, unsupported), 11 empty.
pub(super) fn full_tags(fx: &Fxsave) -> u16 {
    let top = (fx.fx_sw >> 11) & 7;
    (0..8u16).fold(0, |tw, phys| {
        let tag =
            if fx.fx_tw & (1 << phys) == 0 { 3 } else { classify(&fx.fx_87_ac[usize::from((phys + 8 - top) & 7)]) };
        tw | tag << (2 * phys)
    })
}

/// The tag of a register that holds a value.
fn classify(r: &[u8; 16]) -> u16 {
    let mut m = [0u8; 8];
    m.copy_from_slice(&r[..8]);
    let man = u64::from_le_bytes(m);
    let exp = u16::from_le_bytes([r[8], r[9]]) & 0x7fff;
    match exp {
        0x7fff => 2,
        0 if man == 0 => 1,
        0 => 2,
        _ if man >> 63 == 0 => 2,
        _ => 0,
    }
}

/// The abridged tag word of a full one: a register is valid unless empty.
pub(super) fn abridged_tags(tw: u16) -> u8 {
    (0..8).fold(0, |a, i| if (tw >> (2 * i)) & 3 == 3 { a } else { a | 1 << i })
}

/// FNSTENV's image for an operand size of `opsize` bytes, into the first
/// [`env_len`] bytes of `out`.
pub(super) fn store_env(fx: &Fxsave, opsize: u8, out: &mut [u8]) {
    let tw = full_tags(fx);
    let mut words = |at: usize, v: u16| out[at..at + 2].copy_from_slice(&v.to_le_bytes());
    if opsize == 4 {
        for (at, v) in [(0, fx.fx_cw), (4, fx.fx_sw), (8, tw)] {
            words(at, v);
            words(at + 2, RESERVED);
        }
        words(12, fx.fx_ip as u16);
        words(14, (fx.fx_ip >> 16) as u16);
        words(16, 0);
        words(18, fx.fx_opcode & 0x7ff);
        words(20, fx.fx_dp as u16);
        words(22, (fx.fx_dp >> 16) as u16);
        words(24, 0);
        words(26, RESERVED);
    } else {
        for (at, v) in
            [(0, fx.fx_cw), (2, fx.fx_sw), (4, tw), (6, fx.fx_ip as u16), (8, 0), (10, fx.fx_dp as u16), (12, 0)]
        {
            words(at, v);
        }
    }
}

/// FLDENV: loads the environment `image` holds in the format of an
/// operand size of `opsize` bytes (FRSTOR then loads the registers, in
/// the stack order of the new TOP).
pub(super) fn load_env(fx: &mut Fxsave, opsize: u8, image: &[u8]) {
    let word = |at: usize| u16::from_le_bytes([image[at], image[at + 1]]);
    let dword = |at: usize| u64::from(u32::from_le_bytes([image[at], image[at + 1], image[at + 2], image[at + 3]]));
    let (cw, sw, tw) = if opsize == 4 { (word(0), word(4), word(8)) } else { (word(0), word(2), word(4)) };
    fx.fx_cw = control_word(cw);
    // The registers stay where they are while TOP moves: the image keeps
    // them in stack order, so it turns with TOP.
    let turn = usize::from(((sw >> 11) + 8 - ((fx.fx_sw >> 11) & 7)) & 7);
    fx.fx_87_ac.rotate_left(turn);
    fx.fx_sw = sw;
    fx.fx_tw = abridged_tags(tw);
    if opsize == 4 {
        fx.fx_ip = dword(12);
        fx.fx_opcode = word(18) & 0x7ff;
        fx.fx_dp = dword(20);
    } else {
        fx.fx_ip = u64::from(word(6));
        fx.fx_opcode = 0;
        fx.fx_dp = u64::from(word(10));
    }
}

/// FNSAVE's register image: ST0-ST7, 10 bytes each, into `out`.
pub(super) fn store_registers(fx: &Fxsave, out: &mut [u8]) {
    for (i, r) in fx.fx_87_ac.iter().enumerate() {
        out[i * 10..i * 10 + 10].copy_from_slice(&r[..10]);
    }
}

/// FRSTOR's register load from `image` (ST0-ST7, 10 bytes each).
pub(super) fn load_registers(fx: &mut Fxsave, image: &[u8]) {
    for (i, r) in fx.fx_87_ac.iter_mut().enumerate() {
        r[..10].copy_from_slice(&image[i * 10..i * 10 + 10]);
        r[10..].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An x87 register holding `man` and the sign/exponent word `se`.
    fn reg(man: u64, se: u16) -> [u8; 16] {
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&man.to_le_bytes());
        r[8..10].copy_from_slice(&se.to_le_bytes());
        r
    }

    /// The SDM's tag classes (Vol. 1, 8.1.7): valid for a normal number,
    /// zero for +0 and -0, special for NaN, infinity, denormals and the
    /// unsupported encodings (an unnormal: J clear with a nonzero
    /// exponent), empty where the abridged tag says so; physical register
    /// i is ST((i - TOP) mod 8).
    #[test]
    fn full_tags_classify_by_contents_and_top() {
        let mut fx = Fxsave { fx_sw: 5 << 11, fx_tw: 0b1110_1111, ..Fxsave::default() };
        let contents = [
            reg(1 << 63, 0x3fff),               // ST0: 1.0, valid
            reg(0, 0x8000),                     // ST1: -0, zero
            reg(1 << 63, 0x7fff),               // ST2: infinity, special
            reg(0xc000_0000_0000_0000, 0x7fff), // ST3: NaN, special
            reg(1, 0),                          // ST4: denormal, special
            reg(0x4000_0000_0000_0000, 0x4000), // ST5: unnormal, special
            reg(0x8000_0000_0000_0001, 0x1),    // ST6: smallest normal, valid
            reg(1 << 63, 0x3fff),               // ST7: physical 4, empty by its abridged bit
        ];
        fx.fx_87_ac = contents;
        let tw = full_tags(&fx);
        let tag_of_st = |st: u16| (tw >> (2 * ((st + 5) & 7))) & 3;
        let want = [0, 1, 2, 2, 2, 2, 0];
        for (st, w) in want.iter().enumerate() {
            assert_eq!(tag_of_st(st as u16), *w, "ST{st}");
        }
        // ST7 is physical register 4, whose abridged bit is clear: empty.
        assert_eq!(tag_of_st(7), 3);
        assert_eq!(abridged_tags(tw), fx.fx_tw);
    }

    #[test]
    fn environment_round_trips_in_both_formats() {
        let mut fx = Fxsave {
            fx_cw: 0x027f,
            fx_sw: 0x3881,
            fx_tw: 0b1000_0001,
            fx_opcode: 0x5d9,
            fx_ip: 0x1234_5678,
            fx_dp: 0x9abc_def0,
            ..Fxsave::default()
        };
        fx.fx_87_ac[1] = reg(1 << 63, 0x3fff);
        fx.fx_87_ac[0] = reg(0, 0);
        for opsize in [4u8, 2] {
            let mut image = [0u8; 28];
            store_env(&fx, opsize, &mut image);
            let mut back = Fxsave::default();
            load_env(&mut back, opsize, &image[..env_len(opsize)]);
            assert_eq!((back.fx_cw, back.fx_sw, back.fx_tw), (fx.fx_cw | 0x40, fx.fx_sw, fx.fx_tw), "{opsize}");
            let mask = if opsize == 4 { 0xffff_ffff } else { 0xffff };
            assert_eq!((back.fx_ip, back.fx_dp), (fx.fx_ip & mask, fx.fx_dp & mask), "{opsize}");
        }
        let mut image = [0u8; 28];
        store_env(&fx, 4, &mut image);
        // The SDM's 32-bit layout: FCW, FSW, FTW at 0, 4, 8; FIP at 12;
        // FOP in bits 16-26 of the doubleword at 16; FDP at 20.
        assert_eq!(u16::from_le_bytes([image[0], image[1]]), 0x027f);
        assert_eq!(u16::from_le_bytes([image[4], image[5]]), 0x3881);
        assert_eq!(u32::from_le_bytes(image[12..16].try_into().unwrap()), 0x1234_5678);
        assert_eq!(u32::from_le_bytes(image[16..20].try_into().unwrap()) >> 16, 0x5d9);
        assert_eq!(u32::from_le_bytes(image[20..24].try_into().unwrap()), 0x9abc_def0);
    }
}
