//! Guest memory as the core writer sees it: the guest physical areas, their
//! bytes, and which pages hold data at all (the rest become holes).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use nvmm::assist::mmu::PhysMemory;
use nvmm::{Machine, Prot};

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

/// `/proc/self/pagemap`: present (bit 63) or swapped (bit 62).
const PAGEMAP_IN_USE: u64 = 3 << 62;

/// Runs `(offset, len)` of the host range `[hva, hva + size)` whose pages
/// are present or swapped out.
pub fn populated_pages(hva: u64, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut map = File::open("/proc/self/pagemap")?;
    let pages = size / PAGE;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; 8 * 65536];
    let mut page = 0;
    while page < pages {
        let n = (pages - page).min(65536);
        let bytes = &mut buf[..8 * n as usize];
        map.seek(SeekFrom::Start((hva / PAGE + page) * 8))?;
        map.read_exact(bytes)?;
        for (i, e) in bytes.chunks_exact(8).enumerate() {
            if u64::from_le_bytes(e.try_into().expect("8 bytes")) & PAGEMAP_IN_USE == 0 {
                continue;
            }
            let off = (page + i as u64) * PAGE;
            match runs.last_mut() {
                Some((start, len)) if *start + *len == off => *len += PAGE,
                _ => runs.push((off, PAGE)),
            }
        }
        page += n;
    }
    Ok(runs)
}

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

    /// Adds a zeroed area of `size` bytes at `gpa` (both page aligned, not
    /// overlapping another area).
    pub fn add(&mut self, gpa: u64, size: u64, prot: Prot) -> &mut Self {
        assert!(gpa % PAGE == 0 && size % PAGE == 0 && size > 0, "areas are whole pages");
        assert!(self.areas.iter().all(|(a, _)| gpa + size <= a.gpa || a.end() <= gpa), "areas do not overlap");
        self.areas.push((MemoryArea { gpa, size, prot }, vec![0; size as usize]));
        self.areas.sort_by_key(|(a, _)| a.gpa);
        self
    }

    /// Writes `data` at `gpa` (inside one area).
    pub fn write(&mut self, gpa: u64, data: &[u8]) -> &mut Self {
        let (a, bytes) = self
            .areas
            .iter_mut()
            .find(|(a, _)| a.gpa <= gpa && gpa + data.len() as u64 <= a.end())
            .expect("write inside an area");
        let off = (gpa - a.gpa) as usize;
        bytes[off..off + data.len()].copy_from_slice(data);
        self
    }
}

impl GuestMemory for VecMemory {
    fn areas(&self) -> Vec<MemoryArea> {
        self.areas.iter().map(|(a, _)| *a).collect()
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let Some((a, bytes)) = self.areas.iter().find(|(a, _)| a.gpa <= gpa && gpa + buf.len() as u64 <= a.end())
        else {
            return false;
        };
        let off = (gpa - a.gpa) as usize;
        buf.copy_from_slice(&bytes[off..off + buf.len()]);
        true
    }
}
