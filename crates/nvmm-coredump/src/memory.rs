//! Guest memory as the core writer sees it: the guest physical areas, their
//! bytes, and which pages hold data at all (the rest become holes).

use nvmm::assist::mmu::PhysMemory;
use nvmm::{Machine, Prot};

use crate::Error;

/// Size of a guest page.
pub const PAGE: u64 = 4096;

/// One guest physical area backed by memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryArea {
    /// First guest physical address (page aligned).
    pub gpa: u64,
    /// Length in bytes (a multiple of the page size).
    pub size: u64,
    /// The guest's access rights to it.
    pub prot: Prot,
}

impl MemoryArea {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.gpa + self.size
    }
}

/// What the core writer reads guest memory through.
pub trait GuestMemory {
    /// The areas, in address order, not overlapping.
    fn areas(&self) -> Vec<MemoryArea>;

    /// Reads `buf.len()` bytes at `gpa`; `false` if any byte is not in an
    /// area.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool;

    /// The runs `(gpa, len)` of `area` that may hold data: pages the guest
    /// or the host never touched can be left out and become holes. The
    /// default is the whole area.
    fn populated(&self, area: &MemoryArea) -> Vec<(u64, u64)> {
        vec![(area.gpa, area.size)]
    }
}

/// The walker reads page tables through any [`GuestMemory`].
pub(crate) struct Phys<'a>(pub(crate) &'a dyn GuestMemory);

impl PhysMemory for Phys<'_> {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.0.read(gpa, buf)
    }
}

impl GuestMemory for Machine {
    fn areas(&self) -> Vec<MemoryArea> {
        self.gpa_mappings().into_iter().map(|(gpa, size, _, prot)| MemoryArea { gpa, size, prot }).collect()
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.read_gpa(gpa, buf).is_ok()
    }

    /// Pages present in, or swapped out of, this process's memory
    /// (`/proc/self/pagemap`); the whole area if that cannot be read.
    fn populated(&self, area: &MemoryArea) -> Vec<(u64, u64)> {
        let Ok((hva, _)) = self.gpa_to_hva(area.gpa) else { return vec![(area.gpa, area.size)] };
        populated_pages(hva, area.size)
            .map(|runs| runs.into_iter().map(|(off, len)| (area.gpa + off, len)).collect())
            .unwrap_or_else(|_| vec![(area.gpa, area.size)])
    }
}

/// Runs `(offset, len)` of the host range `[hva, hva + size)` whose pages
/// are present or swapped out (nvmm's own, for snapshots too).
pub use nvmm::memory::populated_pages;

/// Guest memory held in byte vectors: synthetic guests for tests and
/// tools that build cores of machines that no longer run.
#[derive(Clone, Debug, Default)]
pub struct VecMemory {
    areas: Vec<(MemoryArea, Vec<u8>)>,
}

impl VecMemory {
    /// No memory.
    pub fn new() -> VecMemory {
        VecMemory::default()
    }

    /// Adds a zeroed area of `size` bytes at `gpa`: both page aligned, the
    /// area not empty and not overlapping another ([`Error::Area`] else).
    pub fn add(&mut self, gpa: u64, size: u64, prot: Prot) -> Result<(), Error> {
        let end = gpa.checked_add(size).filter(|_| gpa % PAGE == 0 && size % PAGE == 0 && size > 0);
        let Some(end) = end else { return Err(Error::Area { gpa, size }) };
        if self.areas.iter().any(|(a, _)| gpa < a.end() && a.gpa < end) {
            return Err(Error::Area { gpa, size });
        }
        let len = usize::try_from(size).map_err(|_| Error::Area { gpa, size })?;
        self.areas.push((MemoryArea { gpa, size, prot }, vec![0; len]));
        self.areas.sort_by_key(|(a, _)| a.gpa);
        Ok(())
    }

    /// Writes `data` at `gpa`, inside one area ([`Error::Memory`] else).
    pub fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), Error> {
        let inside = |a: &MemoryArea| a.gpa <= gpa && gpa.checked_add(data.len() as u64).is_some_and(|e| e <= a.end());
        let Some((a, bytes)) = self.areas.iter_mut().find(|(a, _)| inside(a)) else {
            return Err(Error::Memory { gpa });
        };
        let off = (gpa - a.gpa) as usize;
        bytes[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }
}

impl GuestMemory for VecMemory {
    fn areas(&self) -> Vec<MemoryArea> {
        self.areas.iter().map(|(a, _)| *a).collect()
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let inside = |a: &MemoryArea| a.gpa <= gpa && gpa.checked_add(buf.len() as u64).is_some_and(|e| e <= a.end());
        let Some((a, bytes)) = self.areas.iter().find(|(a, _)| inside(a)) else {
            return false;
        };
        let off = (gpa - a.gpa) as usize;
        buf.copy_from_slice(&bytes[off..off + buf.len()]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_areas_and_writes_are_errors() {
        let mut m = VecMemory::new();
        m.add(0, 0x2000, Prot::ALL).unwrap();
        assert!(matches!(m.add(0x1000, 0x1000, Prot::ALL), Err(Error::Area { .. })), "overlap");
        assert!(matches!(m.add(0x3001, 0x1000, Prot::ALL), Err(Error::Area { .. })), "unaligned");
        assert!(matches!(m.add(u64::MAX - 0xfff, 0x2000, Prot::ALL), Err(Error::Area { .. })), "wraps");
        assert!(matches!(m.write(0x1ff8, &[0; 16]), Err(Error::Memory { gpa: 0x1ff8 })));
        assert!(!m.read(u64::MAX - 2, &mut [0; 8]));
        m.write(0x1ff8, &[7; 8]).unwrap();
        let mut b = [0; 8];
        assert!(m.read(0x1ff8, &mut b) && b == [7; 8]);
    }
}
