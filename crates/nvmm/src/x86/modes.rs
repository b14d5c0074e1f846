//! Ready-made CPU modes for guests that start without firmware: flat 32-bit
//! protected mode and 64-bit long mode with identity-mapped memory. Used by
//! `nvmmctl run`, the tests and the benchmarks; handy for any VMM that loads
//! a kernel directly.

use super::state::{Cr, Gpr, Msr, Seg, SegAttrib, Segment, State};

/// Selector of the flat 32-bit code segment in [`gdt`].
pub const CODE32_SELECTOR: u16 = 0x08;
/// Selector of the flat data segment in [`gdt`].
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the 64-bit code segment in [`gdt`].
pub const CODE64_SELECTOR: u16 = 0x18;
/// Selector (with RPL 3) of the flat 32-bit user code segment in [`gdt`].
pub const USER_CODE32_SELECTOR: u16 = 0x23;
/// Selector (with RPL 3) of the flat user data segment in [`gdt`].
pub const USER_DATA_SELECTOR: u16 = 0x2b;
/// Selector (with RPL 3) of the 64-bit user code segment in [`gdt`].
pub const USER_CODE64_SELECTOR: u16 = 0x33;

pub use super::bits::{cr0, cr4, efer};

/// The GDT the modes below expect: null, flat code32, flat data, code64,
/// then the same three for user mode (DPL 3).
pub fn gdt() -> [u64; 7] {
    [
        0,
        0x00cf_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x00af_9b00_0000_ffff,
        0x00cf_fb00_0000_ffff,
        0x00cf_f300_0000_ffff,
        0x00af_fb00_0000_ffff,
    ]
}

/// The GDT as bytes, to copy into guest memory.
pub fn gdt_bytes() -> Vec<u8> {
    gdt().iter().flat_map(|d| d.to_le_bytes()).collect()
}

/// Points a real-mode state at linear address `entry` (below 1 MiB): CS
/// becomes the 64 KiB segment holding it, IP the offset.
pub fn real_mode_entry(s: &mut State, entry: u64) {
    let base = entry & 0xf_0000;
    s.segs[Seg::Cs].selector = (base >> 4) as u16;
    s.segs[Seg::Cs].base = base;
    s.gprs[Gpr::Rip] = entry - base;
}

fn flat(selector: u16, attrib: SegAttrib) -> Segment {
    Segment { selector, attrib, limit: 0xffff_ffff, base: 0 }
}

fn load_common(s: &mut State, gdt_base: u64, code: Segment) {
    let data = flat(DATA_SELECTOR, SegAttrib::new(3, true, 0, true, false, false, true, true));
    for seg in [Seg::Ds, Seg::Es, Seg::Fs, Seg::Gs, Seg::Ss] {
        s.segs[seg] = data;
    }
    s.segs[Seg::Cs] = code;
    s.segs[Seg::Gdt] = Segment { limit: (gdt().len() * 8 - 1) as u32, base: gdt_base, ..s.segs[Seg::Gdt] };
    s.segs[Seg::Tr] = Segment {
        selector: 0,
        attrib: SegAttrib::new(11, false, 0, true, false, false, false, false),
        limit: 0x67,
        base: 0,
    };
    s.crs[Cr::Cr0] |= cr0::PE | cr0::ET | cr0::NE;
    s.crs[Cr::Cr0] &= !(1 << 30 | 1 << 29); // caches on: clear CD and NW
    s.crs[Cr::Cr4] |= cr4::OSFXSR | cr4::OSXMMEXCPT;
    s.gprs[Gpr::Rflags] = 0x2;
}

/// Puts `s` in flat 32-bit protected mode without paging (segments, CR0, CR4).
/// `gdt_base` is where the caller copied [`gdt_bytes`].
pub fn protected_mode(s: &mut State, gdt_base: u64) {
    load_common(s, gdt_base, flat(CODE32_SELECTOR, SegAttrib::new(11, true, 0, true, false, false, true, true)));
}

/// Puts `s` in 64-bit long mode with paging rooted at `pml4` (segments, CRs,
/// EFER). `gdt_base` is where the caller copied [`gdt_bytes`].
pub fn long_mode(s: &mut State, gdt_base: u64, pml4: u64) {
    load_common(s, gdt_base, flat(CODE64_SELECTOR, SegAttrib::new(11, true, 0, true, false, true, false, true)));
    s.crs[Cr::Cr0] |= cr0::PG | cr0::WP;
    s.crs[Cr::Cr3] = pml4;
    s.crs[Cr::Cr4] |= cr4::PAE;
    s.msrs[Msr::Efer] |= efer::LME | efer::LMA | efer::SCE | efer::NXE;
}

/// Moves a state set up by [`protected_mode`] or [`long_mode`] to user
/// mode (CPL 3) with the same flat segments, and IOPL 3 so that the guest
/// may use port I/O.
pub fn user_mode(s: &mut State) {
    let long = s.segs[Seg::Cs].attrib.l();
    let code = if long {
        flat(USER_CODE64_SELECTOR, SegAttrib::new(11, true, 3, true, false, true, false, true))
    } else {
        flat(USER_CODE32_SELECTOR, SegAttrib::new(11, true, 3, true, false, false, true, true))
    };
    let data = flat(USER_DATA_SELECTOR, SegAttrib::new(3, true, 3, true, false, false, true, true));
    for seg in [Seg::Ds, Seg::Es, Seg::Fs, Seg::Gs, Seg::Ss] {
        s.segs[seg] = data;
    }
    s.segs[Seg::Cs] = code;
    s.gprs[Gpr::Rflags] |= 3 << 12;
}

/// Page tables that identity-map `[0, size)` with 2 MiB pages, to be copied
/// at guest physical address `base` (4 KiB aligned). The PML4 is at `base`.
/// `size` is rounded up to 1 GiB and may not exceed 512 GiB. Pages are
/// writable and user-accessible.
pub fn identity_page_tables(base: u64, size: u64) -> Vec<u8> {
    const GIB: u64 = 1 << 30;
    assert!(base % 4096 == 0, "page tables must be page aligned");
    let gibs = size.div_ceil(GIB).clamp(1, 512);
    let mut t = vec![0u8; (2 + gibs as usize) * 4096];
    let put = |t: &mut Vec<u8>, off: usize, v: u64| t[off..off + 8].copy_from_slice(&v.to_le_bytes());
    const P_RW: u64 = 0b111;
    put(&mut t, 0, (base + 0x1000) | P_RW);
    for g in 0..gibs {
        let pd = base + 0x2000 + g * 0x1000;
        put(&mut t, 0x1000 + 8 * g as usize, pd | P_RW);
        for e in 0..512u64 {
            let frame = g * GIB + e * (2 << 20);
            put(&mut t, 0x2000 + (g as usize) * 0x1000 + 8 * e as usize, frame | P_RW | 1 << 7);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86::reset::reset_state;

    #[test]
    fn real_mode_entries() {
        let mut s = reset_state();
        real_mode_entry(&mut s, 0x7c00);
        assert_eq!((s.segs[Seg::Cs].selector, s.segs[Seg::Cs].base, s.gprs[Gpr::Rip]), (0, 0, 0x7c00));
        real_mode_entry(&mut s, 0x9_1234);
        assert_eq!((s.segs[Seg::Cs].selector, s.segs[Seg::Cs].base, s.gprs[Gpr::Rip]), (0x9000, 0x9_0000, 0x1234));
    }

    #[test]
    fn long_mode_state() {
        let mut s = reset_state();
        long_mode(&mut s, 0x1000, 0x10000);
        assert!(s.segs[Seg::Cs].attrib.l());
        assert_eq!(s.crs[Cr::Cr3], 0x10000);
        assert_ne!(s.msrs[Msr::Efer] & efer::LMA, 0);
        assert_eq!(s.segs[Seg::Gdt].limit, 55);
    }

    #[test]
    fn page_tables_map_identity() {
        let t = identity_page_tables(0x10000, 3 << 30);
        assert_eq!(t.len(), 5 * 4096);
        let rd = |off: usize| u64::from_le_bytes(t[off..off + 8].try_into().unwrap());
        assert_eq!(rd(0), 0x11007);
        assert_eq!(rd(0x1000 + 16), 0x14007);
        // Third GiB, entry 1: 2 GiB + 2 MiB.
        assert_eq!(rd(0x2000 + 2 * 0x1000 + 8), ((2 << 30) + (2 << 20)) | 0x87);
    }
}
