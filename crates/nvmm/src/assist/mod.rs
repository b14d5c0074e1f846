//! Assists: pure logic that interprets guest instructions, with no KVM and
//! no `unsafe`. The full MMU walker, decoder and emulator build on this.
#![forbid(unsafe_code)]

pub mod decode;
pub mod emulate;
pub mod flags;
pub mod io_insn;
pub mod mmu;
pub mod x87;
