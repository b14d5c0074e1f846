//! The walker against page tables built from a list of mappings (the
//! reference model), plus the corner cases of every mode.

use std::cell::RefCell;
use std::collections::HashMap;

use super::*;
use crate::x86::paging::PageTables;
use nvmm_testkit::Rng;

/// Sparse guest RAM.
#[derive(Default)]
struct Ram {
    pages: RefCell<HashMap<u64, Box<[u8; 4096]>>>,
    /// Pages that are not RAM (MMIO).
    holes: Vec<u64>,
}

impl Ram {
    fn write(&self, gpa: u64, v: u64, wide: bool) {
        let mut pages = self.pages.borrow_mut();
        let page = pages.entry(gpa & !0xfff).or_insert_with(|| Box::new([0; 4096]));
        let off = (gpa & 0xfff) as usize;
        let n = if wide { 8 } else { 4 };
        page[off..off + n].copy_from_slice(&v.to_le_bytes()[..n]);
    }
}

impl PhysMemory for Ram {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> bool {
        if self.holes.contains(&(gpa & !0xfff)) {
            return false;
        }
        let pages = self.pages.borrow();
        for (i, b) in buf.iter_mut().enumerate() {
            let a = gpa + i as u64;
            *b = pages.get(&(a & !0xfff)).map_or(0, |p| p[(a & 0xfff) as usize]);
        }
        true
    }
}

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;

/// Page tables for one mode, built with the public builder, and the
/// registers that select it.
struct Builder {
    tables: PageTables,
    regs: PagingRegs,
    ram: Ram,
}

impl Builder {
    fn new(mode: PagingMode) -> Builder {
        let (cr4, efer) = match mode {
            PagingMode::Off => (0, 0),
            PagingMode::Bits32 => (cr4::PSE, 0),
            PagingMode::Pae => (cr4::PAE, efer::NXE),
            PagingMode::Level4 => (cr4::PAE, efer::NXE | efer::LMA),
            PagingMode::Level5 => (cr4::PAE | cr4::LA57, efer::NXE | efer::LMA),
        };
        let cr0 = if mode == PagingMode::Off { 0 } else { cr0::PG | cr0::WP | 1 };
        let tables = PageTables::new(if mode == PagingMode::Off { PagingMode::Level4 } else { mode }, 0x10_0000);
        let regs = PagingRegs { cr0, cr3: tables.cr3(), cr4, efer, phys_bits: 46, gib_pages: true };
        Builder { tables, regs, ram: Ram::default() }
    }

    fn map(&mut self, gva: u64, gpa: u64, size: u64, flags: u64) {
        self.tables.map(gva, gpa, size, flags).unwrap_or_else(|e| panic!("map {gva:#x}: {e:?}"));
        let mut pages = self.ram.pages.borrow_mut();
        for (a, p) in self.tables.pages() {
            pages.insert(a, Box::new(*p));
        }
    }
}

fn expect_prot(flags: u64) -> PageProt {
    let mut p = PageProt::READ;
    if flags & RW != 0 {
        p |= PageProt::WRITE;
    }
    if flags & US != 0 {
        p |= PageProt::USER;
    }
    if flags & XD == 0 {
        p |= PageProt::EXEC;
    }
    PageProt(p)
}

#[test]
fn random_mappings_agree_with_the_model() {
    for (mode, sizes, va_bits) in [
        (PagingMode::Bits32, &[4096u64, 4 << 20][..], 32),
        (PagingMode::Pae, &[4096, MIB2], 32),
        (PagingMode::Level4, &[4096, MIB2, GIB], 48),
        (PagingMode::Level5, &[4096, MIB2, GIB], 57),
    ] {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ va_bits);
        let mut b = Builder::new(mode);
        let mut model: Vec<(u64, u64, u64, u64)> = Vec::new();
        let max_gpa = if mode == PagingMode::Bits32 { 1 << 40 } else { 1 << 46 };
        for _ in 0..200 {
            let size = sizes[(rng.next() % sizes.len() as u64) as usize];
            let mut gva = rng.next() & ((1u64 << va_bits) - 1) & !(size - 1);
            if va_bits > 32 && gva >> (va_bits - 1) != 0 {
                gva |= !((1u64 << va_bits) - 1); // canonical upper half
            }
            if model.iter().any(|m| gva < m.0 + m.2 && m.0 < gva + size) {
                continue;
            }
            let max = if mode == PagingMode::Bits32 && size == 4096 { 1 << 32 } else { max_gpa };
            let gpa = (rng.next() % max) & !(size - 1);
            let mut flags = rng.next() & (RW | US);
            if mode != PagingMode::Bits32 && rng.next() % 3 == 0 {
                flags |= XD;
            }
            b.map(gva, gpa, size, flags);
            model.push((gva, gpa, size, flags));
        }
        assert!(model.len() > 100, "{mode:?}: only {} mappings", model.len());
        for &(gva, gpa, size, flags) in &model {
            for _ in 0..4 {
                let off = rng.next() % size;
                let t = walk(&b.ram, &b.regs, gva + off).unwrap_or_else(|e| panic!("{mode:?} {:#x}: {e}", gva + off));
                assert_eq!(t, Translation { gpa: gpa + off, prot: expect_prot(flags), page_size: size }, "{mode:?}");
            }
        }
        // Addresses no mapping covers are not present.
        let mut misses = 0;
        while misses < 200 {
            let mut gva = rng.next() & ((1u64 << va_bits) - 1);
            if va_bits > 32 && gva >> (va_bits - 1) != 0 {
                gva |= !((1u64 << va_bits) - 1);
            }
            if model.iter().any(|m| m.0 <= gva && gva < m.0 + m.2) {
                continue;
            }
            assert!(matches!(walk(&b.ram, &b.regs, gva), Err(WalkError::NotPresent { .. })), "{mode:?} {gva:#x}");
            misses += 1;
        }
    }
}

#[test]
fn no_paging_is_identity() {
    let b = Builder::new(PagingMode::Off);
    let t = walk(&b.ram, &b.regs, 0x1234_5678).unwrap();
    assert_eq!(t, Translation { gpa: 0x1234_5678, prot: PageProt::ALL, page_size: 4096 });
    assert_eq!(walk(&b.ram, &b.regs, 0x1_0000_0010).unwrap().gpa, 0x10, "linear addresses are 32-bit");
}

#[test]
fn bits32_pse_rules() {
    let mut b = Builder::new(PagingMode::Bits32);
    b.map(0x40_0000, 0x12_3456_7000 & 0xff_ffc0_0000, 4 << 20, RW);
    let t = walk(&b.ram, &b.regs, 0x40_1234).unwrap();
    assert_eq!((t.gpa, t.page_size), (0x12_3440_1234 & 0xff_ffff_ffff, 4 << 20), "PSE-36 high bits");
    // With CR4.PSE clear the PS bit is ignored: the PDE points at a table.
    let mut regs = b.regs;
    regs.cr4 &= !cr4::PSE;
    assert!(matches!(walk(&b.ram, &regs, 0x40_1234), Err(WalkError::NotPresent { level: 1, .. })));
    // Bit 21 of a 4 MiB PDE is reserved.
    b.ram.write(b.regs.cr3 + 4, 0x40_0000 | PS | P | (1 << 21), false);
    assert!(matches!(walk(&b.ram, &b.regs, 0x40_0000), Err(WalkError::Reserved { level: 2, .. })));
    // Physical bits beyond MAXPHYADDR are reserved.
    regs = b.regs;
    regs.phys_bits = 36;
    b.ram.write(b.regs.cr3 + 4, PS | P | (0x20 << 13), false);
    assert!(matches!(walk(&b.ram, &regs, 0x40_0000), Err(WalkError::Reserved { .. })));
}

#[test]
fn pae_reaches_above_4gib_and_checks_pdptes() {
    let mut b = Builder::new(PagingMode::Pae);
    b.map(0x8000_0000, 0x3_4560_0000, MIB2, RW | US);
    b.map(0x1000, 0x2_0000_3000, 4096, 0);
    assert_eq!(walk(&b.ram, &b.regs, 0x8001_2345).unwrap().gpa, 0x3_4561_2345);
    assert_eq!(walk(&b.ram, &b.regs, 0x1abc).unwrap().gpa, 0x2_0000_3abc);
    // A PDPTE with a reserved bit.
    let pdpte = b.regs.cr3 & !0x1f;
    let mut e = [0u8; 8];
    b.ram.read_phys(pdpte, &mut e);
    b.ram.write(pdpte, u64::from_le_bytes(e) | RW, true);
    assert!(matches!(walk(&b.ram, &b.regs, 0x1abc), Err(WalkError::Reserved { level: 3, .. })));
}

#[test]
fn long_mode_sizes_canonical_and_reserved() {
    let mut b = Builder::new(PagingMode::Level4);
    b.map(0xffff_8000_0000_0000, 0x1_0000_0000, GIB, RW);
    b.map(0x20_0000, 0x40_0000, MIB2, RW | US | XD);
    assert_eq!(walk(&b.ram, &b.regs, 0xffff_8000_1234_5678).unwrap().page_size, GIB);
    let t = walk(&b.ram, &b.regs, 0x20_0010).unwrap();
    assert_eq!((t.gpa, t.prot), (0x40_0010, PageProt(PageProt::READ | PageProt::WRITE | PageProt::USER)));
    assert_eq!(
        walk(&b.ram, &b.regs, 0x0000_8000_0000_0000),
        Err(WalkError::NonCanonical { gva: 0x0000_8000_0000_0000 })
    );
    // NX without EFER.NXE is a reserved bit.
    let mut regs = b.regs;
    regs.efer &= !efer::NXE;
    assert!(matches!(walk(&b.ram, &regs, 0x20_0010), Err(WalkError::Reserved { .. })));
    // Physical address bits beyond the width are reserved.
    regs = b.regs;
    regs.phys_bits = 32;
    assert!(matches!(walk(&b.ram, &regs, 0xffff_8000_0000_0000), Err(WalkError::Reserved { level: 3, .. })));
    // Without 1 GiB pages in CPUID, PS in a PDPTE is reserved.
    regs = b.regs;
    regs.gib_pages = false;
    assert!(matches!(walk(&b.ram, &regs, 0xffff_8000_0000_0000), Err(WalkError::Reserved { level: 3, .. })));
    // LMA without PAE is no mode at all.
    regs = b.regs;
    regs.cr4 &= !cr4::PAE;
    assert_eq!(walk(&b.ram, &regs, 0), Err(WalkError::InvalidMode));
}

#[test]
fn five_level_uses_the_fifth_level() {
    let mut b = Builder::new(PagingMode::Level5);
    b.map(0x0080_0000_0000_0000, 0x5000, 4096, RW);
    assert_eq!(walk(&b.ram, &b.regs, 0x0080_0000_0000_0123).unwrap().gpa, 0x5123);
    assert!(matches!(walk(&b.ram, &b.regs, 0x0100_0000_0000_0000), Err(WalkError::NonCanonical { .. })));
    // In 4-level paging that address is not canonical.
    let mut regs = b.regs;
    regs.cr4 &= !cr4::LA57;
    assert!(matches!(walk(&b.ram, &regs, 0x0080_0000_0000_0123), Err(WalkError::NonCanonical { .. })));
}

#[test]
fn access_checks_and_error_codes() {
    let mut b = Builder::new(PagingMode::Level4);
    b.map(0x1000, 0x1000, 4096, 0); // supervisor, read-only
    b.map(0x2000, 0x2000, 4096, US); // user, read-only
    b.map(0x3000, 0x3000, 4096, US | RW | XD); // user, writable, no-exec
    let r = &b.regs;
    let ram = &b.ram;
    let ok = |gva, a| translate(ram, r, gva, a).is_ok();
    let code = |gva, a| translate(ram, r, gva, a).unwrap_err().page_fault_error_code().unwrap();
    use AccessKind::*;
    assert!(ok(0x1000, Access::supervisor(Read)));
    assert_eq!(code(0x1000, Access::supervisor(Write)), pf::P | pf::W, "CR0.WP");
    assert_eq!(code(0x1000, Access::user(Read)), pf::P | pf::U);
    assert!(ok(0x2000, Access::user(Read)));
    assert_eq!(code(0x2000, Access::user(Write)), pf::P | pf::W | pf::U);
    assert_eq!(code(0x3000, Access::user(Fetch)), pf::P | pf::U | pf::ID);
    assert!(ok(0x3000, Access::user(Write)));
    assert_eq!(code(0x4000, Access::user(Write)), pf::W | pf::U, "not present: P clear");
    let mut regs = *r;
    regs.cr0 &= !cr0::WP;
    assert!(translate(ram, &regs, 0x1000, Access::supervisor(Write)).is_ok(), "WP clear");
    regs = *r;
    regs.cr4 |= cr4::SMAP | cr4::SMEP;
    assert!(translate(ram, &regs, 0x2000, Access::supervisor(Read)).is_err(), "SMAP");
    assert!(translate(ram, &regs, 0x2000, Access { kind: Read, user: false, ac: true }).is_ok(), "AC lifts SMAP");
    assert_eq!(
        translate(ram, &regs, 0x2000, Access::supervisor(Fetch)).unwrap_err().page_fault_error_code(),
        Some(pf::P | pf::ID),
        "SMEP"
    );
}

#[test]
fn ranges_split_at_pages_and_tables_must_be_ram() {
    let mut b = Builder::new(PagingMode::Level4);
    b.map(0x1000, 0x9000, 4096, RW);
    b.map(0x2000, 0x5000, 4096, RW);
    b.map(0x3000, 0x6000, 4096, RW);
    let a = Access::supervisor(AccessKind::Read);
    assert_eq!(translate_range(&b.ram, &b.regs, 0x1ffe, 4, a).unwrap(), vec![(0x9ffe, 2), (0x5000, 2)]);
    assert_eq!(translate_range(&b.ram, &b.regs, 0x2ffd, 6, a).unwrap(), vec![(0x5ffd, 6)], "contiguous pieces merge");
    // Above 4 GiB in long mode; wrapping at 4 GiB in 32-bit paging.
    b.map(0x1_0000_0000, 0x7000, 4096, RW);
    b.map(0x1_0000_1000, 0xa000, 4096, RW);
    let high = translate_range(&b.ram, &b.regs, 0x1_0000_0ffe, 4, a).unwrap();
    assert_eq!(high, vec![(0x7ffe, 2), (0xa000, 2)]);
    let mut b32 = Builder::new(PagingMode::Bits32);
    b32.map(0xffff_f000, 0x8000, 4096, RW);
    b32.map(0, 0x3000, 4096, RW);
    let wrapped = translate_range(&b32.ram, &b32.regs, 0xffff_fffe, 4, a).unwrap();
    assert_eq!(wrapped, vec![(0x8ffe, 2), (0x3000, 2)]);
    assert!(translate_range(&b.ram, &b.regs, 0x3ffe, 4, a).is_err(), "second page unmapped");
    b.ram.holes.push(b.regs.cr3);
    assert_eq!(walk(&b.ram, &b.regs, 0x1000), Err(WalkError::TableUnreadable { gpa: b.regs.cr3 }));
}

/// The model's mappings page by page, merged as `mappings` merges them.
fn merged_model(model: &[(u64, u64, u64, u64)]) -> Vec<Mapping> {
    let mut sorted = model.to_vec();
    sorted.sort_by_key(|m| m.0);
    let mut out: Vec<Mapping> = Vec::new();
    for (gva, gpa, size, flags) in sorted {
        let prot = expect_prot(flags);
        match out.last_mut() {
            Some(l) if l.gva.wrapping_add(l.size) == gva && l.gpa + l.size == gpa && l.prot == prot => l.size += size,
            _ => out.push(Mapping { gva, gpa, size, prot }),
        }
    }
    out
}

#[test]
fn mappings_list_what_was_mapped() {
    for (mode, sizes, va_bits) in [
        (PagingMode::Bits32, &[4096u64, 4 << 20][..], 32),
        (PagingMode::Pae, &[4096, MIB2], 32),
        (PagingMode::Level4, &[4096, MIB2, GIB], 48),
        (PagingMode::Level5, &[4096, MIB2, GIB], 57),
    ] {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ va_bits);
        let mut b = Builder::new(mode);
        let mut model: Vec<(u64, u64, u64, u64)> = Vec::new();
        for k in 0..300 {
            let size = sizes[(rng.next() % sizes.len() as u64) as usize];
            let mut gva = rng.next() & ((1u64 << va_bits) - 1) & !(size - 1);
            // Every third mapping follows the previous one, in both
            // address spaces, so that runs merge.
            let mut gpa = (rng.next() % (1 << 32)) & !(size - 1);
            let mut flags = rng.next() & (RW | US);
            if let Some(&(pg, pp, ps, pf)) = model.last()
                && k % 3 == 0
                && ps == size
            {
                gva = pg.wrapping_add(ps) & ((1u64 << va_bits) - 1);
                gpa = pp + ps;
                flags = pf;
            }
            if va_bits > 32 && gva >> (va_bits - 1) != 0 {
                gva |= !((1u64 << va_bits) - 1);
            }
            if mode != PagingMode::Bits32 && flags & 1 == 0 && rng.next() % 3 == 0 {
                flags |= XD;
            }
            if model.iter().any(|m| gva < m.0.wrapping_add(m.2) && m.0 < gva.wrapping_add(size)) {
                continue;
            }
            b.map(gva, gpa, size, flags);
            model.push((gva, gpa, size, flags));
        }
        let ours = mappings(&b.ram, &b.regs);
        let want = merged_model(&model);
        assert!(want.len() < model.len(), "{mode:?}: nothing merged");
        assert_eq!(ours, want, "{mode:?}");
    }
    // Without paging: the 4 GiB identity map.
    let b = Builder::new(PagingMode::Off);
    assert_eq!(mappings(&b.ram, &b.regs), [Mapping { gva: 0, gpa: 0, size: 1 << 32, prot: PageProt::ALL }]);
}

#[test]
fn mappings_skip_reserved_entries_and_unreadable_tables() {
    let mut b = Builder::new(PagingMode::Level4);
    b.map(0x40_0000, 0x1000_0000, 4096, RW);
    b.map(0x8000_0000, 0x2000_0000, 4096, RW);
    let before = mappings(&b.ram, &b.regs);
    assert_eq!(before.len(), 2);
    // Find the PTE of 0x40_0000 and set a reserved bit (above the 46-bit
    // physical width): the walker faults there, so the list drops it.
    let t = walk(&b.ram, &b.regs, 0x40_0000).unwrap();
    assert_eq!(t.gpa, 0x1000_0000);
    let pte_addr = b
        .tables
        .pages()
        .flat_map(|(a, p)| {
            (0..512).map(move |i| {
                (a + 8 * i, u64::from_le_bytes(p[8 * i as usize..8 * i as usize + 8].try_into().unwrap()))
            })
        })
        .find(|&(_, e)| e & !0xfff & ((1 << 46) - 1) == 0x1000_0000 && e & P != 0)
        .unwrap()
        .0;
    b.ram.write(pte_addr, 0x1000_0000 | P | RW | (1 << 50), true);
    assert!(matches!(walk(&b.ram, &b.regs, 0x40_0000), Err(WalkError::Reserved { .. })));
    assert_eq!(mappings(&b.ram, &b.regs), [before[1]]);
    // A table in MMIO: its mappings are not listed, and nothing fails.
    b.ram.holes.push(pte_addr & !0xfff);
    let after = mappings(&b.ram, &b.regs);
    assert!(after.len() <= 1);
}

#[test]
fn walk_errors_say_what_failed_and_where() {
    let shown: Vec<String> = [
        WalkError::NonCanonical { gva: 0x8000_0000_0000 },
        WalkError::NotPresent { gva: 0x4000, level: 2, error_code: 0 },
        WalkError::Reserved { gva: 0x5000, level: 4, error_code: pf::P | pf::RSVD },
        WalkError::Protection { gva: 0x6000, error_code: pf::P | pf::W },
        WalkError::TableUnreadable { gpa: 0xfee0_0000 },
        WalkError::InvalidMode,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(
        shown,
        [
            "0x800000000000 is not canonical",
            "0x4000: level-2 entry not present",
            "0x5000: level-4 entry has reserved bits set",
            "0x6000: access forbidden (#PF error code 0x3)",
            "page table entry at 0xfee00000 is not in guest RAM",
            "long mode without PAE",
        ]
    );
}
