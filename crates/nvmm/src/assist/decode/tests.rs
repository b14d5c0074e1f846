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
