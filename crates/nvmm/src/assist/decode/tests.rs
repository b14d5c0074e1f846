//! Known encodings; the differential tests against iced-x86 are in
//! `tests/decoder.rs`.

use super::*;

#[test]
fn known_encodings() {
    // movq $-1, (%rax): the immediate is sign-extended (NVMM bug #1).
    let d = decode(&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff], CpuMode::Bits64).unwrap();
    assert_eq!((d.op(), d.src(), d.opsize()), (Op::Mov, Operand::Imm(u64::MAX), 8));
    // cmpw $-1, (%bx): imm8 sign-extended to 16 bits.
    let d = decode(&[0x83, 0x3f, 0xff], CpuMode::Bits16).unwrap();
    assert_eq!((d.op(), d.src()), (Op::Alu(AluOp::Cmp), Operand::Imm(0xffff)));
    // mov -8(%rbp), %eax uses SS.
    let d = decode(&[0x8b, 0x45, 0xf8], CpuMode::Bits64).unwrap();
    assert_eq!(d.memory().unwrap().seg(), crate::x86::state::Seg::Ss);
    assert_eq!(decode(&[0x0f, 0x0b], CpuMode::Bits64), Err(DecodeError::Unsupported { opcode: 0x0b }));
    assert_eq!(decode(&[0x8b], CpuMode::Bits64), Err(DecodeError::Truncated));
    assert_eq!(decode(&[0x66; 15], CpuMode::Bits64), Err(DecodeError::TooLong));
    assert_eq!(decode(&[0xf0, 0x8b, 0x00], CpuMode::Bits64), Err(DecodeError::Invalid), "LOCK MOV");
    assert_eq!(decode(&[0xf0, 0x01, 0xc0], CpuMode::Bits64), Err(DecodeError::Invalid), "LOCK on a register");
    let d = decode(&[0xc5, 0xfe, 0x6f, 0x00], CpuMode::Bits32).unwrap();
    assert_eq!((d.op(), d.opsize()), (Op::Vec(VecMove::Movdqu), 32));
    assert!(DecodeError::Unsupported { opcode: 0x0b }.to_string().contains("unsupported"));
}

/// Whether the common path gives the machine's answer for `bytes` (or
/// leaves it to the machine); whether it took the instruction.
fn common_agrees(bytes: &[u8], mode: CpuMode) -> bool {
    match common::decode(bytes, mode) {
        Some(insn) => {
            assert_eq!(Ok(insn), fsm::decode(bytes, mode), "{bytes:02x?} in {mode:?}");
            true
        }
        None => false,
    }
}

/// The common path against the machine: every opcode of both maps after
/// every 66/REX combination, with every ModRM, in 32- and 64-bit code,
/// whole and cut short; then every SIB byte under every ModRM that takes
/// one, for the opcodes the path takes.
#[test]
fn common_path_is_the_machine() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let rexes: Vec<Option<u8>> = std::iter::once(None).chain((0x40..0x50).map(Some)).collect();
    let (mut taken, mut cases) = (0usize, 0usize);
    let mut common_opcodes = Vec::new();
    for mode in [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64] {
        for o16 in [false, true] {
            for &rex in &rexes {
                for opcode in 0..512u16 {
                    let mut took = false;
                    for modrm in 0..=255u8 {
                        let mut b = Vec::with_capacity(16);
                        b.extend(o16.then_some(0x66));
                        b.extend(rex);
                        if opcode >= 256 {
                            b.push(0x0f);
                        }
                        b.push(opcode as u8);
                        b.push(modrm);
                        b.extend_from_slice(&next().to_le_bytes());
                        b.extend_from_slice(&next().to_le_bytes());
                        b.truncate(MAX_LEN);
                        cases += 1;
                        if common_agrees(&b, mode) {
                            taken += 1;
                            took = true;
                        }
                        // Cut short anywhere: the machine's Truncated, or
                        // the same instruction if it still fits.
                        let cut = (next() % b.len() as u64) as usize;
                        common_agrees(&b[..cut], mode);
                    }
                    if took {
                        common_opcodes.push((mode, o16, rex, opcode));
                    }
                }
            }
        }
    }
    // The path takes the usual MMIO instructions.
    for (bytes, mode) in [
        (&[0x8b, 0x06][..], CpuMode::Bits64),
        (&[0x66, 0x48, 0x89, 0x44, 0x8e, 0x08][..], CpuMode::Bits64),
        (&[0x0f, 0xb6, 0x05, 1, 2, 3, 4][..], CpuMode::Bits32),
        (&[0x81, 0x0e, 0x00, 0x01, 0x00, 0x00][..], CpuMode::Bits64),
    ] {
        let mut b = bytes.to_vec();
        b.resize(MAX_LEN, 0x90);
        assert!(common_agrees(&b, mode), "{bytes:02x?} should take the common path");
    }
    assert!(taken > cases / 50, "the common path took {taken} of {cases}");
    assert!(common_opcodes.iter().all(|&(mode, ..)| mode != CpuMode::Bits16));
    // Every SIB byte, for the opcodes the path takes, with a subset of
    // REX values (X and B are what SIB decoding reads).
    for &(mode, o16, rex, opcode) in &common_opcodes {
        if !matches!(rex, None | Some(0x40 | 0x41 | 0x42 | 0x43 | 0x48 | 0x4f)) {
            continue;
        }
        for md in 0..3u8 {
            for reg in 0..8u8 {
                for sib in 0..=255u8 {
                    let mut b = Vec::with_capacity(16);
                    b.extend(o16.then_some(0x66));
                    b.extend(rex);
                    if opcode >= 256 {
                        b.push(0x0f);
                    }
                    b.extend_from_slice(&[opcode as u8, md << 6 | reg << 3 | 4, sib]);
                    b.extend_from_slice(&next().to_le_bytes());
                    b.extend_from_slice(&next().to_le_bytes());
                    b.truncate(MAX_LEN);
                    common_agrees(&b, mode);
                }
            }
        }
    }
}
