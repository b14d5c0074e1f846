//! The decoder against iced-x86: every opcode it supports, in every mode,
//! with prefix combinations and every ModRM, SIB and displacement form;
//! whenever one decoder accepts an instruction the emulator supports, the
//! other must agree on length and operands.

mod oracle;

use nvmm::assist::decode::CpuMode;
use oracle::{PREFIXES, Rng, compare, compare_control, control_templates, templates};

#[test]
fn every_supported_opcode_agrees_with_iced() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut seen = Seen::default();
    let mut accepted = 0usize;
    let mut total = 0usize;
    for mode in [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64] {
        for t in templates() {
            for modrm in 0..=255u8 {
                for variant in 0..6 {
                    let mut bytes = Vec::with_capacity(16);
                    // Prefix combinations: none, one, two, three random ones.
                    for _ in 0..(variant % 4) {
                        bytes.push(PREFIXES[(rng.next() % PREFIXES.len() as u64) as usize]);
                    }
                    if mode == CpuMode::Bits64 && variant >= 2 && t[0] != 0xc4 && t[0] != 0xc5 {
                        bytes.push(0x40 | (rng.byte() & 0xf));
                    }
                    bytes.extend_from_slice(&t);
                    bytes.push(modrm);
                    // SIB, displacement and immediate bytes.
                    while bytes.len() < 16 {
                        bytes.push(if variant == 5 { 0 } else { rng.byte() });
                    }
                    total += 1;
                    if compare(&bytes, mode) {
                        accepted += 1;
                        seen.count(&bytes, mode);
                    }
                }
            }
        }
    }
    // The bulk of the claimed encodings decodes, and with it every form the
    // comparison is meant to cover.
    // (A third of the VEX templates are invalid on purpose: vvvv != 1111,
    // map 2, R/X clear outside 64-bit mode.)
    assert!(accepted > total / 5, "only {accepted} of {total} decoded");
    seen.assert_covered();
}

/// Forms among the accepted instructions, counted from our decoding (the
/// comparison with iced has already checked each field).
#[derive(Default, Debug)]
struct Seen {
    addr_override: [usize; 3],
    rip_relative: usize,
    seg_override: usize,
    sib_index: usize,
    disp: usize,
    high_regs: usize,
    vex: usize,
    vex_high_regs: usize,
}

impl Seen {
    fn count(&mut self, bytes: &[u8], mode: CpuMode) {
        use nvmm::assist::decode::{Operand, Reg, decode};
        let d = decode(bytes, mode).expect("accepted");
        let default_addr = match mode {
            CpuMode::Bits16 => 2,
            CpuMode::Bits32 => 4,
            CpuMode::Bits64 => 8,
        };
        let vex = bytes.iter().any(|&b| b == 0xc4 || b == 0xc5) && d.opsize() >= 16;
        self.vex += usize::from(vex);
        for op in [d.dst(), d.src()] {
            match op {
                Operand::Mem(m) => {
                    if m.addr_size() != default_addr {
                        self.addr_override[mode as usize] += 1;
                    }
                    self.rip_relative += usize::from(m.rip_relative());
                    self.seg_override += usize::from(!matches!(m.seg(), nvmm::Seg::Ds | nvmm::Seg::Ss));
                    self.sib_index += usize::from(m.index().is_some());
                    self.disp += usize::from(m.disp() != 0);
                    self.high_regs += usize::from(m.base().is_some_and(|b| b >= 8));
                }
                Operand::Reg(Reg::Gpr { num, .. }) if num >= 8 => self.high_regs += 1,
                Operand::Reg(Reg::Xmm(n)) if n >= 8 => {
                    self.high_regs += 1;
                    self.vex_high_regs += usize::from(vex);
                }
                _ => {}
            }
        }
    }

    fn assert_covered(&self) {
        let Seen { addr_override, rip_relative, seg_override, sib_index, disp, high_regs, vex, vex_high_regs } = *self;
        assert!(addr_override.iter().all(|&n| n > 1000), "0x67 in each mode: {self:?}");
        for (what, n) in [
            ("rip-relative", rip_relative),
            ("segment override", seg_override),
            ("SIB index", sib_index),
            ("displacement", disp),
            ("REX.R/B/X registers", high_regs),
            ("VEX", vex),
            ("VEX.R/B/X registers", vex_high_regs),
        ] {
            assert!(n > 1000, "{what}: {n} ({self:?})");
        }
    }
}

#[test]
fn string_moffs_and_int3_agree_with_iced() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for mode in [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64] {
        for op in [0xa0u8, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xaa, 0xab, 0xac, 0xad, 0xcc] {
            for variant in 0..64 {
                let mut bytes = Vec::new();
                for _ in 0..(variant % 4) {
                    bytes.push(PREFIXES[(rng.next() % PREFIXES.len() as u64) as usize]);
                }
                if mode == CpuMode::Bits64 && variant % 3 == 0 {
                    bytes.push(0x40 | (rng.byte() & 0xf));
                }
                bytes.push(op);
                while bytes.len() < 16 {
                    bytes.push(rng.byte());
                }
                compare(&bytes, mode);
            }
        }
    }
}

#[test]
fn random_bytes_are_never_misdecoded() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for mode in [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64] {
        for _ in 0..100_000 {
            let bytes: Vec<u8> = (0..16).map(|_| rng.byte()).collect();
            compare(&bytes, mode);
        }
    }
}

#[test]
fn control_instructions_agree_with_iced() {
    let mut rng = Rng(0x6a09_e667_f3bc_c908);
    let mut accepted = 0usize;
    for mode in [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64] {
        for t in control_templates() {
            for modrm in 0..=255u8 {
                for variant in 0..4 {
                    let mut bytes = Vec::with_capacity(16);
                    for _ in 0..(variant % 3) {
                        bytes.push(PREFIXES[(rng.next() % PREFIXES.len() as u64) as usize]);
                    }
                    if mode == CpuMode::Bits64 && variant == 3 && t[0] != 0xc4 && t[0] != 0xc5 {
                        bytes.push(0x40 | (rng.byte() & 0xf));
                    }
                    bytes.extend_from_slice(&t);
                    bytes.push(modrm);
                    while bytes.len() < 16 {
                        bytes.push(rng.byte());
                    }
                    if compare_control(&bytes, mode) {
                        accepted += 1;
                    }
                }
            }
        }
        // FWAIT alone and in front of the x87 control instructions.
        for next in [0xdbu8, 0xd9, 0x90] {
            assert!(compare_control(&[0x9b, next, 0xe3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], mode));
        }
        for _ in 0..100_000 {
            let bytes: Vec<u8> = (0..16).map(|_| rng.byte()).collect();
            compare_control(&bytes, mode);
        }
    }
    assert!(accepted > 10_000, "only {accepted} decoded");
}
