//! Known encodings; the differential tests against iced-x86 are in
//! `tests/decoder.rs`.

use super::*;
use nvmm_testkit::Rng;

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

/// The debug form names every field a diagnostic needs.
#[test]
fn debug_shows_the_fields() {
    // fs: mov %al,(%rbx)
    let d = decode(&[0x64, 0x88, 0x03], CpuMode::Bits64).unwrap();
    let text = format!("{d:?}");
    for field in [
        "len: 3",
        "op: Mov",
        "base: Some(3)",
        "src: Reg(Gpr { num: 0, size: 1, high8: false })",
        "opsize: 1",
        "addr_size: 8",
        "lock: false",
        "seg_override: Some(Fs)",
        "vex: false",
    ] {
        assert!(text.contains(field), "{field} missing from {text}");
    }
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

/// `head` and then pseudo-random bytes from `rng`, [`MAX_LEN`] in all.
fn fill(rng: &mut Rng, head: &[u8]) -> [u8; MAX_LEN] {
    let mut b = [0; MAX_LEN];
    b[..8].copy_from_slice(&rng.next().to_le_bytes());
    b[7..].copy_from_slice(&rng.next().to_le_bytes());
    b[..head.len()].copy_from_slice(head);
    b
}

/// The common path against the machine: every opcode of both maps after
/// every 66/REX combination, with every ModRM, in 16-, 32- and 64-bit
/// code, whole and cut short; REP prefixes in front of them; every SIB
/// byte under every ModRM that takes one, for the opcodes the path
/// takes; and every 2-byte VEX prefix before the vector moves' opcodes.
#[test]
fn common_path_is_the_machine() {
    let mut tail = Rng(0x9e37_79b9_7f4a_7c15);
    let modes = [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64];
    let rexes: Vec<Option<u8>> = std::iter::once(None).chain((0x40..0x50).map(Some)).collect();
    let (mut taken, mut cases) = (0usize, 0usize);
    let mut common_opcodes = Vec::new();
    // Prefixes (REP, 66, REX), then the opcode's bytes.
    let head = |rep: Option<u8>, o16: bool, rex: Option<u8>, opcode: u16| {
        let mut b: Vec<u8> = rep.into_iter().chain(o16.then_some(0x66)).chain(rex).collect();
        if opcode >= 256 {
            b.push(0x0f);
        }
        b.push(opcode as u8);
        b
    };
    for mode in modes {
        for rep in [None, Some(0xf3), Some(0xf2)] {
            for o16 in [false, true] {
                for &rex in &rexes {
                    // With REP, a few REX values and every fifth ModRM.
                    if rep.is_some() && !matches!(rex, None | Some(0x41 | 0x44 | 0x48 | 0x4f)) {
                        continue;
                    }
                    let step = if rep.is_some() { 5 } else { 1 };
                    for opcode in 0..512u16 {
                        let mut took = false;
                        for modrm in (0..=255u8).step_by(step) {
                            let mut h = head(rep, o16, rex, opcode);
                            h.push(modrm);
                            let b = fill(&mut tail, &h);
                            cases += 1;
                            if common_agrees(&b, mode) {
                                taken += 1;
                                took = true;
                            }
                            // Cut short anywhere: the machine's answer.
                            if modrm % 8 == 3 {
                                let cut = (tail.next() % MAX_LEN as u64) as usize;
                                common_agrees(&b[..cut], mode);
                            }
                        }
                        if took && rep.is_none() {
                            common_opcodes.push((mode, o16, rex, opcode));
                        }
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
        (&[0xf3, 0x48, 0xa5][..], CpuMode::Bits64),
        (&[0xf3, 0x66, 0xab][..], CpuMode::Bits32),
        (&[0xc5, 0xfe, 0x6f, 0x06][..], CpuMode::Bits64),
        (&[0xc5, 0xf9, 0xd6, 0x44, 0x24, 0x08][..], CpuMode::Bits32),
    ] {
        assert!(common_agrees(&fill(&mut tail, bytes), mode), "{bytes:02x?} should take the common path");
    }
    // Fewer bytes than an exit carries go to the machine, which decodes
    // what fits and finds what does not.
    assert!(!common_agrees(&[0x8b, 0x06], CpuMode::Bits64));
    assert_eq!(decode(&[0x8b, 0x06], CpuMode::Bits64).map(|i| i.len()), Ok(2));
    assert_eq!(decode(&[0x8b, 0x46], CpuMode::Bits64), Err(DecodeError::Truncated));
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
                    let mut h = head(None, o16, rex, opcode);
                    h.extend_from_slice(&[md << 6 | reg << 3 | 4, sib]);
                    common_agrees(&fill(&mut tail, &h), mode);
                }
            }
        }
    }
    // 2-byte VEX: every second byte (R, vvvv, L, pp) and ModRM before the
    // moves' opcodes and some that are not moves; SIB bytes under some.
    let mut vex_taken = 0;
    for mode in modes {
        for opcode in [0x10, 0x11, 0x28, 0x29, 0x6e, 0x6f, 0x7e, 0x7f, 0xd6, 0xe7, 0x00, 0x12, 0x2b, 0x58, 0xc7] {
            for p in 0..=255u8 {
                for modrm in 0..=255u8 {
                    vex_taken += usize::from(common_agrees(&fill(&mut tail, &[0xc5, p, opcode, modrm]), mode));
                }
                if p % 9 == 7 {
                    for sib in 0..=255u8 {
                        common_agrees(&fill(&mut tail, &[0xc5, p, opcode, 0x44, sib]), mode);
                        common_agrees(&fill(&mut tail, &[0xc5, p, opcode, 0x0c, sib]), mode);
                    }
                }
            }
        }
    }
    assert!(vex_taken > 10_000, "the common path took {vex_taken} VEX moves");
}
