//! Building guest page tables for any paging mode: for VMMs that load a
//! kernel directly, and for testing the MMU walker.

use std::collections::BTreeMap;

pub use super::mode::PagingMode;

pub use super::bits::pte;

/// Page tables under construction, kept as pages of bytes to copy into
/// guest memory.
#[derive(Clone, Debug)]
pub struct PageTables {
    mode: PagingMode,
    root: u64,
    next: u64,
    pages: BTreeMap<u64, Box<[u8; 4096]>>,
}

/// Why a mapping cannot be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The mode has no pages of this size.
    BadSize(u64),
    /// Address or size not aligned to the page size, or out of the mode's
    /// range.
    BadAddress(u64),
    /// A large page already covers the address.
    Overlap(u64),
}

impl PageTables {
    /// Empty tables whose root (and further tables) are allocated from
    /// `base` upwards, one 4 KiB page each. `mode` must not be `Off`.
    pub fn new(mode: PagingMode, base: u64) -> PageTables {
        let mut t = PageTables { mode, root: base & !0xfff, next: (base & !0xfff) + 0x1000, pages: BTreeMap::new() };
        t.pages.insert(t.root, Box::new([0; 4096]));
        t
    }

    /// The value for CR3.
    pub fn cr3(&self) -> u64 {
        self.root
    }

    /// The table pages: (guest physical address, content).
    pub fn pages(&self) -> impl Iterator<Item = (u64, &[u8; 4096])> {
        self.pages.iter().map(|(a, p)| (*a, &**p))
    }

    fn wide(&self) -> bool {
        self.mode != PagingMode::Bits32
    }

    fn levels(&self) -> u8 {
        match self.mode {
            PagingMode::Off => 0,
            PagingMode::Bits32 => 2,
            PagingMode::Pae => 3,
            PagingMode::Level4 => 4,
            PagingMode::Level5 => 5,
        }
    }

    fn page_size(&self, level: u8) -> u64 {
        if self.wide() { 1 << (12 + 9 * (u32::from(level) - 1)) } else { 1 << (12 + 10 * (u32::from(level) - 1)) }
    }

    fn index(&self, va: u64, level: u8) -> u64 {
        match (self.mode, level) {
            (PagingMode::Bits32, l) => (va >> (12 + 10 * (u32::from(l) - 1))) & 0x3ff,
            (PagingMode::Pae, 3) => (va >> 30) & 3,
            (_, l) => (va >> (12 + 9 * (u32::from(l) - 1))) & 0x1ff,
        }
    }

    fn read(&self, gpa: u64) -> u64 {
        let off = (gpa & 0xfff) as usize;
        let n = if self.wide() { 8 } else { 4 };
        let mut b = [0u8; 8];
        if let Some(p) = self.pages.get(&(gpa & !0xfff)) {
            b[..n].copy_from_slice(&p[off..off + n]);
        }
        u64::from_le_bytes(b)
    }

    fn write(&mut self, gpa: u64, v: u64) {
        let off = (gpa & 0xfff) as usize;
        let n = if self.wide() { 8 } else { 4 };
        let page = self.pages.entry(gpa & !0xfff).or_insert_with(|| Box::new([0; 4096]));
        page[off..off + n].copy_from_slice(&v.to_le_bytes()[..n]);
    }

    /// Maps the page of `size` at `gva` to `gpa` with leaf bits `flags`
    /// (`pte::RW`, `pte::US`, `pte::XD`; present is implied). Tables on the
    /// way grant everything, so the leaf decides the rights.
    pub fn map(&mut self, gva: u64, gpa: u64, size: u64, flags: u64) -> Result<(), MapError> {
        let levels = self.levels();
        if levels == 0 {
            return Err(MapError::BadAddress(gva));
        }
        // Largest leaf level: 4 MiB (32-bit), 2 MiB (PAE), 1 GiB (long mode).
        let max_leaf = match self.mode {
            PagingMode::Bits32 | PagingMode::Pae => 2,
            _ => 3,
        };
        let Some(leaf) = (1..=max_leaf).find(|&l| self.page_size(l) == size) else {
            return Err(MapError::BadSize(size));
        };
        if gva % size != 0 || gpa % size != 0 || (!self.wide() && gva >> 32 != 0) {
            return Err(MapError::BadAddress(gva));
        }
        let esize = if self.wide() { 8 } else { 4 };
        let mut table = self.root;
        for level in (leaf + 1..=levels).rev() {
            let slot = table + self.index(gva, level) * esize;
            let e = self.read(slot);
            if e & pte::P != 0 {
                if e & pte::PS != 0 {
                    return Err(MapError::Overlap(gva));
                }
                table = e & 0x000f_ffff_ffff_f000;
                continue;
            }
            let t = self.next;
            self.next += 0x1000;
            self.pages.insert(t, Box::new([0; 4096]));
            // PAE PDPTEs take no rights bits.
            let bits = if self.mode == PagingMode::Pae && level == 3 { pte::P } else { pte::P | pte::RW | pte::US };
            self.write(slot, t | bits);
            table = t;
        }
        let slot = table + self.index(gva, leaf) * esize;
        let mut e = gpa | flags | pte::P;
        if leaf > 1 {
            e |= pte::PS;
            if !self.wide() {
                // PSE-36: physical address bits 39:32 go to bits 20:13.
                e = (gpa & 0xffc0_0000) | (((gpa >> 32) & 0xff) << 13) | flags | pte::P | pte::PS;
            }
        } else if !self.wide() && gpa >> 32 != 0 {
            return Err(MapError::BadAddress(gpa));
        }
        self.write(slot, e);
        Ok(())
    }
}

/// The tables can be walked where they are built (the pages they hold are
/// the only guest memory they know).
impl crate::assist::mmu::PhysMemory for PageTables {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> bool {
        for (i, b) in buf.iter_mut().enumerate() {
            let a = gpa.wrapping_add(i as u64);
            let Some(p) = self.pages.get(&(a & !0xfff)) else { return false };
            *b = p[(a & 0xfff) as usize];
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_per_mode() {
        let mut t = PageTables::new(PagingMode::Bits32, 0x1000);
        assert!(t.map(0x40_0000, 0x40_0000, 4 << 20, 0).is_ok());
        assert_eq!(t.map(0, 0, 2 << 20, 0), Err(MapError::BadSize(2 << 20)));
        assert_eq!(t.map(0x40_1000, 0x1000, 4096, 0), Err(MapError::Overlap(0x40_1000)));
        let mut t = PageTables::new(PagingMode::Pae, 0x1000);
        assert_eq!(t.map(0, 0, 1 << 30, 0), Err(MapError::BadSize(1 << 30)));
        assert!(t.map(0x20_0000, 0x1_0020_0000, 2 << 20, 0).is_ok());
        let mut t = PageTables::new(PagingMode::Level4, 0x1000);
        assert!(t.map(0, 0, 1 << 30, 0).is_ok());
        assert_eq!(t.map(0x1000, 0, 4096, 0), Err(MapError::Overlap(0x1000)));
        assert_eq!(t.map(0x40_0001, 0, 4096, 0), Err(MapError::BadAddress(0x40_0001)));
        assert_eq!(t.map(0, 0, 512 << 30, 0), Err(MapError::BadSize(512 << 30)));
    }
}
