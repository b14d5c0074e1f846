//! Any bytes, any mode: the decoders (general and control) never panic,
//! and whatever they accept iced-x86 decodes the same way (the oracle of
//! the decoder tests).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvmm::assist::decode::CpuMode;

#[path = "../../crates/nvmm/tests/oracle/mod.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let mode = match sel % 3 {
        0 => CpuMode::Bits16,
        1 => CpuMode::Bits32,
        _ => CpuMode::Bits64,
    };
    let mut buf = bytes.to_vec();
    buf.truncate(16);
    oracle::compare(&buf, mode);
    oracle::compare_control(&buf, mode);
});
