//! Decoding of the port I/O instructions (IN, OUT, INS, OUTS) that cause I/O
//! exits, to recover what NVMM's exit carries and KVM's does not: string and
//! REP flags, segment, address size and the next RIP.
#![forbid(unsafe_code)]

use crate::x86::state::Seg;

pub use crate::x86::mode::CpuMode;

/// A decoded I/O instruction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IoInstruction {
    /// Length in bytes.
    pub length: u8,
    /// IN/INS (`true`) or OUT/OUTS.
    pub is_in: bool,
    /// INS or OUTS.
    pub string: bool,
    /// With a REP (F3) or REPNE (F2) prefix (string forms only).
    pub rep: bool,
    /// Memory segment of a string instruction (ES for INS, DS or the
    /// override for OUTS).
    pub segment: Option<Seg>,
    /// Address size in bytes (2, 4 or 8).
    pub address_size: u8,
    /// Operand size in bytes (1, 2 or 4).
    pub operand_size: u8,
    /// The port, when it is an immediate operand.
    pub port_immediate: Option<u8>,
}

/// Why bytes are not an I/O instruction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IoDecodeError {
    /// The bytes end before the instruction does.
    Truncated,
    /// The opcode is not IN, OUT, INS or OUTS.
    NotIo(u8),
    /// More than 15 bytes.
    TooLong,
}

impl std::fmt::Display for IoDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoDecodeError::Truncated => write!(f, "instruction bytes end early"),
            IoDecodeError::NotIo(op) => write!(f, "opcode {op:#04x} is not a port I/O instruction"),
            IoDecodeError::TooLong => write!(f, "instruction longer than 15 bytes"),
        }
    }
}

impl std::error::Error for IoDecodeError {}

/// Decodes the I/O instruction at the start of `bytes`.
pub fn decode_io(bytes: &[u8], mode: CpuMode) -> Result<IoInstruction, IoDecodeError> {
    let mut opsize_override = false;
    let mut addrsize_override = false;
    let mut rep = false;
    let mut segment = None;
    // REX.W of a REX right before the opcode (one before a legacy prefix
    // is ignored): it overrides 0x66, and I/O has no 64-bit form.
    let mut rex_w = false;
    let mut i = 0usize;
    let opcode = loop {
        let b = *bytes.get(i).ok_or(IoDecodeError::Truncated)?;
        let this_rex_w = mode == CpuMode::Bits64 && (0x40..=0x4f).contains(&b) && b & 8 != 0;
        match b {
            0x66 => opsize_override = true,
            0x67 => addrsize_override = true,
            0xf2 | 0xf3 => rep = true,
            0xf0 => {}
            // In 64-bit code ES, CS, SS and DS overrides are null
            // prefixes: they never replace an FS or GS override.
            0x26 | 0x2e | 0x36 | 0x3e if mode == CpuMode::Bits64 && matches!(segment, Some(Seg::Fs | Seg::Gs)) => {}
            0x26 => segment = Some(Seg::Es),
            0x2e => segment = Some(Seg::Cs),
            0x36 => segment = Some(Seg::Ss),
            0x3e => segment = Some(Seg::Ds),
            0x64 => segment = Some(Seg::Fs),
            0x65 => segment = Some(Seg::Gs),
            0x40..=0x4f if mode == CpuMode::Bits64 => {
                // Only the REX right before the opcode counts.
                let next = *bytes.get(i + 1).ok_or(IoDecodeError::Truncated)?;
                if (0x40..=0x4f).contains(&next) {
                    i += 1;
                    continue;
                }
            }
            _ => break b,
        }
        rex_w = this_rex_w;
        i += 1;
        if i >= 15 {
            return Err(IoDecodeError::TooLong);
        }
    };
    let (is_in, string, byte, imm) = match opcode {
        0xe4 => (true, false, true, true),
        0xe5 => (true, false, false, true),
        0xe6 => (false, false, true, true),
        0xe7 => (false, false, false, true),
        0xec => (true, false, true, false),
        0xed => (true, false, false, false),
        0xee => (false, false, true, false),
        0xef => (false, false, false, false),
        0x6c => (true, true, true, false),
        0x6d => (true, true, false, false),
        0x6e => (false, true, true, false),
        0x6f => (false, true, false, false),
        op => return Err(IoDecodeError::NotIo(op)),
    };
    let mut length = i + 1;
    let port_immediate = if imm {
        let p = *bytes.get(length).ok_or(IoDecodeError::Truncated)?;
        length += 1;
        Some(p)
    } else {
        None
    };
    if length > 15 {
        return Err(IoDecodeError::TooLong);
    }
    let operand_size = match (byte, mode, opsize_override) {
        (true, _, _) => 1,
        (false, _, _) if rex_w => 4,
        (false, CpuMode::Bits16, false) | (false, CpuMode::Bits32 | CpuMode::Bits64, true) => 2,
        _ => 4,
    };
    let address_size = match (mode, addrsize_override) {
        (CpuMode::Bits16, false) | (CpuMode::Bits32, true) => 2,
        (CpuMode::Bits16, true) | (CpuMode::Bits32, false) | (CpuMode::Bits64, true) => 4,
        (CpuMode::Bits64, false) => 8,
    };
    let segment = match (string, is_in) {
        (false, _) => None,
        (true, true) => Some(Seg::Es),
        (true, false) => Some(segment.unwrap_or(Seg::Ds)),
    };
    Ok(IoInstruction {
        length: length as u8,
        is_in,
        string,
        rep: rep && string,
        segment,
        address_size,
        operand_size,
        port_immediate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_forms() {
        let d = decode_io(&[0xe6, 0x80], CpuMode::Bits16).unwrap();
        assert_eq!((d.length, d.is_in, d.string, d.operand_size, d.port_immediate), (2, false, false, 1, Some(0x80)));
        let d = decode_io(&[0xed], CpuMode::Bits16).unwrap();
        assert_eq!((d.length, d.is_in, d.operand_size), (1, true, 2));
        let d = decode_io(&[0x66, 0xed], CpuMode::Bits16).unwrap();
        assert_eq!((d.length, d.operand_size), (2, 4));
        let d = decode_io(&[0x66, 0xef], CpuMode::Bits64).unwrap();
        assert_eq!((d.length, d.operand_size, d.is_in), (2, 2, false));
        let d = decode_io(&[0x48, 0xef], CpuMode::Bits64).unwrap();
        assert_eq!((d.length, d.operand_size), (2, 4));
    }

    #[test]
    fn string_forms() {
        let d = decode_io(&[0xf3, 0x2e, 0x6e], CpuMode::Bits32).unwrap();
        assert_eq!((d.length, d.string, d.rep, d.segment, d.address_size), (3, true, true, Some(Seg::Cs), 4));
        let d = decode_io(&[0x64, 0x6d], CpuMode::Bits16).unwrap();
        assert_eq!((d.segment, d.rep, d.operand_size, d.address_size), (Some(Seg::Es), false, 2, 2));
        let d = decode_io(&[0x67, 0xf3, 0x6f], CpuMode::Bits64).unwrap();
        assert_eq!((d.address_size, d.segment, d.rep), (4, Some(Seg::Ds), true));
        let d = decode_io(&[0xf3, 0xee], CpuMode::Bits32).unwrap();
        assert!(!d.rep, "REP means nothing on OUT");
    }

    #[test]
    fn rejects() {
        assert_eq!(decode_io(&[0x90], CpuMode::Bits16), Err(IoDecodeError::NotIo(0x90)));
        assert_eq!(decode_io(&[0x66], CpuMode::Bits16), Err(IoDecodeError::Truncated));
        assert_eq!(decode_io(&[0xe4], CpuMode::Bits16), Err(IoDecodeError::Truncated));
        assert_eq!(decode_io(&[0x66; 16], CpuMode::Bits16), Err(IoDecodeError::TooLong));
        assert_eq!(decode_io(&[], CpuMode::Bits16), Err(IoDecodeError::Truncated));
        // A REX prefix outside 64-bit mode is INC/DEC, not a prefix.
        assert_eq!(decode_io(&[0x48, 0xef], CpuMode::Bits32), Err(IoDecodeError::NotIo(0x48)));
    }
}
