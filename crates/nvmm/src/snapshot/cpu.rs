//! Whether a snapshot's CPU and this host's agree in the ways that
//! matter: the vendor, and every feature the snapshot's guests were shown
//! (CPUID leaves 1, 7, 0xD and 0x8000_0001) present on this host.

use super::file::{CpuTag, fnv1a};
use crate::error::{Error, Result};
use crate::x86::cpuid::CpuidEntry;

/// The feature words compared: (leaf, subleaf, register index 0=EAX..3=EDX,
/// bits that reflect guest state rather than the CPU).
const FEATURE_WORDS: [(u32, u32, usize, u32); 8] = [
    (1, 0, 2, 1 << 27), // ECX; OSXSAVE follows CR4
    (1, 0, 3, 0),       // EDX
    (7, 0, 1, 0),       // EBX
    (7, 0, 2, 1 << 4),  // ECX; OSPKE follows CR4
    (7, 0, 3, 0),       // EDX
    (0xd, 0, 0, 0),     // EAX: XCR0 features
    (0x8000_0001, 0, 2, 0),
    (0x8000_0001, 0, 3, 0),
];

fn word(entries: &[CpuidEntry], leaf: u32, sub: u32, reg: usize) -> u32 {
    entries
        .iter()
        .find(|e| e.function == leaf && (e.index == sub || e.flags & 1 == 0))
        .map_or(0, |e| [e.regs.eax, e.regs.ebx, e.regs.ecx, e.regs.edx][reg])
}

/// This host's tag: vendor and a digest of its supported feature words.
pub(crate) fn host_tag(vendor: &str, supported: &[CpuidEntry]) -> CpuTag {
    let mut v = [0u8; 12];
    let b = vendor.as_bytes();
    v[..b.len().min(12)].copy_from_slice(&b[..b.len().min(12)]);
    let words: Vec<u8> = FEATURE_WORDS
        .iter()
        .flat_map(|&(l, s, r, dynamic)| (word(supported, l, s, r) & !dynamic).to_le_bytes())
        .collect();
    CpuTag { vendor: v, digest: fnv1a(&words) }
}

/// Refuses a snapshot taken on a CPU of another vendor, or whose guests
/// were shown features this host lacks (`guest` is one VCPU's CPUID).
pub(crate) fn check(file: CpuTag, host: CpuTag, guest: &[CpuidEntry], supported: &[CpuidEntry]) -> Result<()> {
    if file.vendor != host.vendor {
        return Err(Error::InvalidSnapshot {
            why: format!(
                "taken on a {} CPU, this host is {}",
                String::from_utf8_lossy(&file.vendor),
                String::from_utf8_lossy(&host.vendor)
            ),
        });
    }
    if file.digest == host.digest {
        return Ok(());
    }
    for &(leaf, sub, reg, dynamic) in &FEATURE_WORDS {
        let missing = word(guest, leaf, sub, reg) & !word(supported, leaf, sub, reg) & !dynamic;
        if missing != 0 {
            return Err(Error::InvalidSnapshot {
                why: format!(
                    "the guests use CPUID leaf {leaf:#x}.{sub} {} bits {missing:#x}, which this CPU lacks",
                    ["EAX", "EBX", "ECX", "EDX"][reg]
                ),
            });
        }
    }
    Ok(())
}
