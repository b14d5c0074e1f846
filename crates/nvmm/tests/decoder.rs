//! The decoder against iced-x86: every opcode it supports, in every mode,
//! with prefix combinations and every ModRM, SIB and displacement form;
//! whenever one decoder accepts an instruction the emulator supports, the
//! other must agree on length and operands.

mod oracle;

use nvmm::assist::decode::CpuMode;
use oracle::{PREFIXES, Rng, compare, compare_control, compare_memory_operand, control_templates, templates};

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

/// Control instructions up to and past the 15-byte limit (segment
/// prefixes in front of forms with a 32-bit displacement) against iced:
/// the same length up to 15 bytes, rejected beyond.
#[test]
fn control_instructions_at_the_length_limit_agree_with_iced() {
    let mut checked = 0;
    for mode in [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64] {
        // xsave [disp32], fnstcw [disp32] (in 16-bit code with 0x67).
        for form in [&[0x0f, 0xae, 0x25][..], &[0xd9, 0x3d]] {
            for k in 0..=12 {
                let mut bytes = vec![0x2e; k];
                if mode == CpuMode::Bits16 {
                    bytes.push(0x67);
                }
                bytes.extend_from_slice(form);
                bytes.extend_from_slice(&[0x78, 0x56, 0x34, 0x12]);
                bytes.resize(20, 0x90);
                compare_control(&bytes, mode);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 78);
}

/// What the SDM makes #UD the decoder reports as invalid, as iced does,
/// not as unsupported (which would leave the instruction to the VMM): a
/// VEX prefix after REX (each of 40-4F in 64-bit code, in front of every
/// VEX template), and the register forms of CMPXCHG8B/16B and MOVNTDQ.
#[test]
fn encodings_the_sdm_makes_ud_are_invalid() {
    use nvmm::assist::decode::{DecodeError, decode};
    let mut checked = 0;
    let mut invalid = |bytes: &[u8], mode: CpuMode| {
        let mut b = bytes.to_vec();
        b.resize(16, 0);
        assert_eq!(oracle::iced(&b, mode).code(), iced_x86::Code::INVALID, "{mode:?} {b:02x?}: iced");
        assert_eq!(decode(&b, mode), Err(DecodeError::Invalid), "{mode:?} {b:02x?}");
        checked += 1;
    };
    for t in templates().iter().filter(|t| matches!(t.first(), Some(0xc4 | 0xc5))) {
        for rex in 0x40..=0x4fu8 {
            let mut b = vec![rex];
            b.extend_from_slice(t);
            b.push(0x03);
            invalid(&b, CpuMode::Bits64);
        }
    }
    for mode in [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64] {
        for modrm in [0xc8u8, 0xcb, 0xcf] {
            invalid(&[0x0f, 0xc7, modrm], mode);
        }
        for modrm in [0xc0u8, 0xd3] {
            invalid(&[0x66, 0x0f, 0xe7, modrm], mode);
        }
        // Other register forms are valid, only not the assists' (no
        // memory exit comes from them): unsupported.
        let mut mov = [0x8b, 0xc3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(decode(&mov, mode), Err(DecodeError::Unsupported { opcode: 0x8b }), "{mode:?} mov eax, ebx");
        mov[..4].copy_from_slice(&[0x0f, 0xc7, 0xf0, 0]);
        assert_eq!(decode(&mov, mode), Err(DecodeError::Unsupported { opcode: 0xc7 }), "{mode:?} rdrand eax");
    }
    assert!(checked > 100, "{checked}");
}

/// LOCK in front of a control instruction is #UD (SDM vol. 2: "#UD If
/// the LOCK prefix is used"; iced says invalid too): the decoder reports
/// the instruction invalid, not unsupported (which would leave it to the
/// VMM instead of raising #UD).
#[test]
fn lock_makes_control_instructions_invalid() {
    use nvmm::assist::decode::{DecodeError, decode_control};
    let mut checked = 0;
    for mode in [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64] {
        for t in control_templates() {
            for modrm in [0x03u8, 0x23, 0xc1, 0xe3] {
                let mut bytes = t.clone();
                bytes.push(modrm);
                bytes.resize(16, 0);
                if decode_control(&bytes, mode).is_err() {
                    continue;
                }
                let mut locked = vec![0xf0];
                locked.extend_from_slice(&bytes);
                assert_eq!(decode_control(&locked, mode), Err(DecodeError::Invalid), "{mode:?} {locked:02x?}");
                assert_eq!(oracle::iced(&locked, mode).code(), iced_x86::Code::INVALID, "{mode:?} {locked:02x?}");
                checked += 1;
            }
        }
    }
    assert!(checked > 300, "{checked}");
}

/// The ModRM grammar the control decoder borrows for the memory operands
/// of the x87, MXCSR and XSAVE-family instructions (`memory_operand`, a
/// public function) against iced: any number of segment-override and
/// address-size prefixes up to and past the 15-byte limit, REX X and B in
/// every mode (they count in 64-bit code only), every ModRM, and a tail as
/// long as an instruction may be.
#[test]
fn memory_operands_agree_with_iced() {
    const LEGACY: [u8; 7] = [0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x67];
    let mut rng = Rng(0x510e_527f_ade6_82d1);
    let mut accepted = 0usize;
    for mode in [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64] {
        for nlegacy in 0..=15 {
            for rex in 0..4u8 {
                for modrm in 0..=255u8 {
                    let legacy: Vec<u8> =
                        (0..nlegacy).map(|_| LEGACY[(rng.next() % LEGACY.len() as u64) as usize]).collect();
                    let tail: Vec<u8> = std::iter::once(modrm).chain((0..14).map(|_| rng.byte())).collect();
                    if compare_memory_operand(&legacy, rex, &tail, mode) {
                        accepted += 1;
                    }
                }
            }
        }
    }
    // Every memory ModRM behind up to 7 prefixes fits whatever follows
    // (REX, opcode, ModRM, SIB and a 4-byte displacement: 8 more bytes).
    assert!(accepted >= 3 * 8 * 4 * 192, "only {accepted} decoded");
}

/// The I/O-instruction decoder (which locates the instruction behind an
/// I/O exit) against iced-x86 on every IN/OUT/INS/OUTS opcode behind every
/// sequence of up to three legacy prefixes (and REX in 64-bit mode), in
/// each mode: length, direction, string form, REP, the memory segment, the
/// address size, the operand size and the port immediate. Truncated
/// bytes and more than 15 bytes are errors, as iced says they are invalid.
#[test]
fn io_instructions_match_iced() {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
    use nvmm::assist::io_insn::{IoDecodeError, decode_io};
    const OPCODES: [u8; 12] = [0xe4, 0xe5, 0xe6, 0xe7, 0xec, 0xed, 0xee, 0xef, 0x6c, 0x6d, 0x6e, 0x6f];
    const LEGACY: [u8; 11] = [0x66, 0x67, 0xf2, 0xf3, 0xf0, 0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65];
    let mut sequences: Vec<Vec<u8>> = vec![vec![]];
    for a in LEGACY {
        sequences.push(vec![a]);
        for b in LEGACY {
            sequences.push(vec![a, b]);
            for c in LEGACY {
                sequences.push(vec![a, b, c]);
            }
        }
    }
    let mut compared = 0;
    for (mode, bits) in [(CpuMode::Bits16, 16), (CpuMode::Bits32, 32), (CpuMode::Bits64, 64)] {
        let mut prefixes = sequences.clone();
        if bits == 64 {
            // REX after the legacy prefixes, once or twice (the last counts).
            for s in sequences.iter().filter(|s| s.len() <= 2) {
                for rex in [0x40u8, 0x41, 0x48, 0x4f] {
                    prefixes.push([&s[..], &[rex]].concat());
                    prefixes.push([&s[..], &[0x48, rex]].concat());
                }
            }
        }
        for p in &prefixes {
            for op in OPCODES {
                let bytes = [&p[..], &[op, 0x5a]].concat();
                let i = Decoder::with_ip(bits, &bytes, 0, DecoderOptions::NONE).decode();
                let ctx = format!("{bytes:02x?} in {bits}-bit code");
                if i.is_invalid() {
                    // LOCK on I/O: the CPU raises #UD, no exit ever shows it.
                    assert!(p.contains(&0xf0), "{ctx}: iced rejects it");
                    continue;
                }
                let d = decode_io(&bytes, mode).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                use Mnemonic::*;
                let (is_in, string) = match i.mnemonic() {
                    In => (true, false),
                    Out => (false, false),
                    Insb | Insw | Insd => (true, true),
                    Outsb | Outsw | Outsd => (false, true),
                    m => panic!("{ctx}: iced says {m:?}"),
                };
                assert_eq!(usize::from(d.length), i.len(), "{ctx}: length");
                assert_eq!((d.is_in, d.string), (is_in, string), "{ctx}: direction and form");
                let imm = (0..i.op_count()).find(|&n| i.op_kind(n) == OpKind::Immediate8).map(|_| i.immediate8());
                assert_eq!(d.port_immediate, imm, "{ctx}: port");
                let size = if string {
                    i.memory_size().size()
                } else {
                    // The accumulator (DX, when there, is the port).
                    let acc = |r: &Register| matches!(r, Register::AL | Register::AX | Register::EAX);
                    let r = (0..i.op_count()).map(|n| i.op_register(n)).find(acc).unwrap_or(Register::None);
                    r.size()
                };
                assert_eq!(usize::from(d.operand_size), size, "{ctx}: operand size");
                if string {
                    assert_eq!(d.rep, i.has_rep_prefix() || i.has_repne_prefix(), "{ctx}: REP");
                    let kind = (0..i.op_count()).map(|n| i.op_kind(n)).find(|k| {
                        matches!(
                            k,
                            OpKind::MemorySegSI
                                | OpKind::MemorySegESI
                                | OpKind::MemorySegRSI
                                | OpKind::MemoryESDI
                                | OpKind::MemoryESEDI
                                | OpKind::MemoryESRDI
                        )
                    });
                    let addr = match kind {
                        Some(OpKind::MemorySegSI | OpKind::MemoryESDI) => 2,
                        Some(OpKind::MemorySegESI | OpKind::MemoryESEDI) => 4,
                        Some(_) => 8,
                        None => panic!("{ctx}: no string operand"),
                    };
                    assert_eq!(d.address_size, addr, "{ctx}: address size");
                    // ES:DI for INS (no override); iced's memory segment
                    // for OUTS.
                    let es_di = matches!(kind, Some(OpKind::MemoryESDI | OpKind::MemoryESEDI | OpKind::MemoryESRDI));
                    let seg = oracle::seg_of(if es_di { Register::ES } else { i.memory_segment() });
                    // (64-bit code ignores ES/CS/SS/DS overrides, all based
                    // at 0 there; iced and the decoder both name the prefix.)
                    assert_eq!(d.segment, Some(seg), "{ctx}: segment");
                } else {
                    assert_eq!((d.rep, d.segment), (false, None), "{ctx}: REP and segment");
                }
                compared += 1;
                // Cut anywhere before its end, it is truncated.
                for cut in 0..i.len() {
                    assert_eq!(decode_io(&bytes[..cut], mode), Err(IoDecodeError::Truncated), "{ctx} cut at {cut}");
                }
            }
        }
        // 15 bytes is the most an instruction may have.
        let long = [vec![0x66; 14], vec![0xec]].concat();
        assert_eq!(decode_io(&long, mode).map(|d| d.length), Ok(15));
        let too_long = [vec![0x66; 15], vec![0xec]].concat();
        assert!(Decoder::with_ip(bits, &too_long, 0, DecoderOptions::NONE).decode().is_invalid());
        assert_eq!(decode_io(&too_long, mode), Err(IoDecodeError::TooLong));
        let long_imm = [vec![0x66; 13], vec![0xe4, 0x10]].concat();
        assert_eq!(decode_io(&long_imm, mode).map(|d| d.length), Ok(15));
        let too_long_imm = [vec![0x66; 14], vec![0xe4, 0x10]].concat();
        assert_eq!(decode_io(&too_long_imm, mode), Err(IoDecodeError::TooLong));
    }
    assert!(compared > 40_000, "{compared} encodings compared");
    // The errors say what is wrong.
    assert_eq!(IoDecodeError::NotIo(0x90).to_string(), "opcode 0x90 is not a port I/O instruction");
    assert!(IoDecodeError::Truncated.to_string().contains("end early"));
    assert!(IoDecodeError::TooLong.to_string().contains("15 bytes"));
}
