//! Guest memory bookkeeping: host mappings (step one, `hva_map`), guest
//! physical mappings with protection (step two, `gpa_map`), their
//! validation with NVMM's rules and errno, `gpa → hva` lookups and copies to
//! and from guest physical memory.
//!
//! What KVM can enforce: a mapping without `WRITE` becomes a read-only KVM
//! slot (guest writes come back as [`Exit::Memory`](crate::Exit::Memory));
//! a mapping with no access at all gets no slot, so every access exits. KVM
//! slots are always readable and executable: a mapping without `READ` (but
//! with `WRITE`) or without `EXEC` behaves as if it had them.

use std::collections::BTreeMap;
use std::ops::{BitOr, BitOrAssign};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::os::HostRegion;
pub use crate::os::populated_pages;

/// Page size of guest mappings.
pub const PAGE_SIZE: u64 = 4096;

/// Protection of a guest mapping, with `<sys/mman.h>`'s `PROT_*` values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Prot(u32);

impl Prot {
    /// No access.
    pub const NONE: Prot = Prot(0);
    /// `PROT_READ`.
    pub const READ: Prot = Prot(1);
    /// `PROT_WRITE`.
    pub const WRITE: Prot = Prot(2);
    /// `PROT_EXEC`.
    pub const EXEC: Prot = Prot(4);
    /// Read, write and execute.
    pub const ALL: Prot = Prot(7);

    /// Builds a protection from `PROT_*` bits, rejecting others.
    pub fn from_bits(bits: u32) -> Result<Prot> {
        if bits & !Self::ALL.0 != 0 {
            return Err(Error::InvalidProtection { prot: bits });
        }
        Ok(Prot(bits))
    }

    /// The `PROT_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Prot) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Prot {
    type Output = Prot;
    fn bitor(self, rhs: Prot) -> Prot {
        Prot(self.0 | rhs.0)
    }
}
impl BitOrAssign for Prot {
    fn bitor_assign(&mut self, rhs: Prot) {
        self.0 |= rhs.0;
    }
}

impl std::fmt::Debug for Prot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = if self.contains(Prot::READ) { 'r' } else { '-' };
        let w = if self.contains(Prot::WRITE) { 'w' } else { '-' };
        let x = if self.contains(Prot::EXEC) { 'x' } else { '-' };
        write!(f, "Prot({r}{w}{x})")
    }
}

/// One host mapping.
struct HostMapping {
    size: u64,
    region: Arc<HostRegion>,
}

/// One guest physical mapping.
pub(crate) struct GpaArea {
    pub(crate) gpa: u64,
    pub(crate) size: u64,
    pub(crate) hva: u64,
    pub(crate) prot: Prot,
    /// KVM slot, `None` for mappings without access.
    pub(crate) slot: Option<u32>,
    /// The host memory, kept alive while the guest can see it.
    pub(crate) region: Arc<HostRegion>,
    /// Offset of `hva` in `region`.
    pub(crate) offset: u64,
}

impl GpaArea {
    fn end(&self) -> u64 {
        self.gpa + self.size
    }
}

/// A validated request to map guest memory, ready for a KVM slot.
pub(crate) struct GpaPlan {
    pub(crate) area: GpaArea,
}

/// The memory of one machine.
pub(crate) struct MemoryMap {
    host: BTreeMap<u64, HostMapping>,
    areas: BTreeMap<u64, GpaArea>,
    free_slots: Vec<u32>,
    next_slot: u32,
    max_slots: u32,
    max_ram: u64,
}

fn aligned(what: &'static str, value: u64) -> Result<()> {
    if value % PAGE_SIZE != 0 {
        return Err(Error::Misaligned { what, value });
    }
    Ok(())
}

impl MemoryMap {
    /// An empty map for a guest physical space of `max_ram` bytes and
    /// `max_slots` KVM slots.
    pub(crate) fn new(max_ram: u64, max_slots: u32) -> MemoryMap {
        MemoryMap {
            host: BTreeMap::new(),
            areas: BTreeMap::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            max_slots,
            max_ram,
        }
    }

    /// Checks a host range for `hva_map`.
    pub(crate) fn check_host_range(&self, hva: u64, size: u64) -> Result<()> {
        aligned("host address", hva)?;
        aligned("size", size)?;
        if hva == 0 || size == 0 || hva.checked_add(size).is_none() {
            return Err(Error::InvalidRange {
                what: "host",
                start: hva,
                size,
                why: "it is empty, at address 0, or wraps",
            });
        }
        // A range entirely inside an existing mapping is accepted (NVMM
        // does the same); a partial overlap is an error.
        if self.host_containing(hva, size).is_some() {
            return Ok(());
        }
        for (&other, m) in self.host.range(..hva.saturating_add(size)) {
            if other + m.size > hva {
                return Err(Error::HostOverlap { hva, size, other, other_size: m.size });
            }
        }
        Ok(())
    }

    /// Whether `[hva, hva + size)` lies inside one registered host mapping.
    pub(crate) fn host_contains(&self, hva: u64, size: u64) -> bool {
        self.host_containing(hva, size).is_some()
    }

    fn host_containing(&self, hva: u64, size: u64) -> Option<(&u64, &HostMapping)> {
        self.host.range(..=hva).next_back().filter(|(start, m)| hva + size <= **start + m.size)
    }

    /// Registers a host mapping (after [`check_host_range`]). A range inside
    /// an existing mapping adds nothing.
    pub(crate) fn add_host(&mut self, region: HostRegion) -> Result<u64> {
        let hva = region.addr();
        let size = region.len() as u64;
        self.check_host_range(hva, size)?;
        self.host.insert(hva, HostMapping { size, region: Arc::new(region) });
        Ok(hva)
    }

    /// Removes the host mapping with exactly this range. Guest mappings of
    /// it keep the memory alive until they are unmapped.
    pub(crate) fn remove_host(&mut self, hva: u64, size: u64) -> Result<()> {
        match self.host.get(&hva) {
            Some(m) if m.size == size => {
                self.host.remove(&hva);
                Ok(())
            }
            _ => Err(Error::NoHostMapping { hva, size }),
        }
    }

    /// Bytes of host memory registered with `hva_map`.
    pub(crate) fn host_bytes(&self) -> u64 {
        self.host.values().map(|m| m.size).sum()
    }

    /// Validates `gpa_map(hva, gpa, size, prot)` with NVMM's rules and
    /// reserves a KVM slot for it.
    pub(crate) fn plan_gpa_map(&mut self, hva: u64, gpa: u64, size: u64, prot: Prot) -> Result<GpaPlan> {
        aligned("guest address", gpa)?;
        aligned("host address", hva)?;
        aligned("size", size)?;
        let end = gpa.checked_add(size);
        if size == 0 || end.is_none_or(|e| e > self.max_ram) {
            return Err(Error::InvalidRange {
                what: "guest",
                start: gpa,
                size,
                why: "it is empty or outside the guest physical address space (capability max_ram)",
            });
        }
        let (host_start, region) = self
            .host_containing(hva, size)
            .map(|(start, m)| (*start, m.region.clone()))
            .ok_or(Error::HostRangeNotMapped { hva, size })?;
        if let Some(a) = self.overlapping_area(gpa, size) {
            return Err(Error::GpaOverlap { gpa, size, other: a.gpa, other_size: a.size });
        }
        let slot = if prot == Prot::NONE { None } else { Some(self.take_slot()?) };
        Ok(GpaPlan { area: GpaArea { gpa, size, hva, prot, slot, region, offset: hva - host_start } })
    }

    fn overlapping_area(&self, gpa: u64, size: u64) -> Option<&GpaArea> {
        self.areas.range(..gpa + size).next_back().map(|(_, a)| a).filter(|a| a.end() > gpa)
    }

    fn take_slot(&mut self) -> Result<u32> {
        if let Some(s) = self.free_slots.pop() {
            return Ok(s);
        }
        if self.next_slot >= self.max_slots {
            return Err(Error::TooManyGpaMappings { max: self.max_slots });
        }
        self.next_slot += 1;
        Ok(self.next_slot - 1)
    }

    /// Gives back the slot of a plan that could not be installed.
    pub(crate) fn abandon(&mut self, plan: GpaPlan) {
        if let Some(s) = plan.area.slot {
            self.free_slots.push(s);
        }
    }

    /// Records an installed mapping.
    pub(crate) fn commit(&mut self, plan: GpaPlan) {
        self.areas.insert(plan.area.gpa, plan.area);
    }

    /// Finds the mapping with exactly this triple, for `gpa_unmap`.
    pub(crate) fn find_exact(&self, hva: u64, gpa: u64, size: u64) -> Result<&GpaArea> {
        match self.areas.get(&gpa) {
            Some(a) if a.hva == hva && a.size == size => Ok(a),
            _ => Err(Error::NoGpaMapping { hva, gpa, size }),
        }
    }

    /// Forgets a mapping whose KVM slot is gone.
    pub(crate) fn remove_area(&mut self, gpa: u64) {
        if let Some(a) = self.areas.remove(&gpa)
            && let Some(s) = a.slot
        {
            self.free_slots.push(s);
        }
    }

    /// The mapping that contains `gpa`.
    pub(crate) fn area(&self, gpa: u64) -> Option<&GpaArea> {
        self.areas.range(..=gpa).next_back().map(|(_, a)| a).filter(|a| gpa < a.end())
    }

    /// Every mapping, in address order.
    pub(crate) fn areas(&self) -> impl Iterator<Item = &GpaArea> {
        self.areas.values()
    }

    /// `gpa → (hva, prot)`.
    pub(crate) fn gpa_to_hva(&self, gpa: u64) -> Result<(u64, Prot)> {
        let a = self.area(gpa).ok_or(Error::GpaUnmapped { gpa })?;
        Ok((a.hva + (gpa - a.gpa), a.prot))
    }

    /// Walks `[gpa, gpa + len)` mapping by mapping.
    fn for_each_chunk(&self, gpa: u64, len: usize, mut f: impl FnMut(&GpaArea, u64, usize, usize)) -> Result<()> {
        let mut done = 0usize;
        while done < len {
            let at = gpa.checked_add(done as u64).ok_or(Error::GpaUnmapped { gpa: u64::MAX })?;
            let a = self.area(at).ok_or(Error::GpaUnmapped { gpa: at })?;
            let n = ((a.end() - at) as usize).min(len - done);
            f(a, a.offset + (at - a.gpa), done, n);
            done += n;
        }
        Ok(())
    }

    /// Copies guest physical memory into `buf`; fails if any byte is
    /// unmapped (nothing is copied then).
    pub(crate) fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        // The common case: one mapping holds it all.
        if let Some(a) = self.area(gpa)
            && gpa.saturating_add(buf.len() as u64) <= a.end()
        {
            a.region.read(a.offset + (gpa - a.gpa), buf);
            return Ok(());
        }
        self.for_each_chunk(gpa, buf.len(), |_, _, _, _| {})?;
        self.for_each_chunk(gpa, buf.len(), |a, off, done, n| a.region.read(off, &mut buf[done..done + n]))
    }

    /// Whether `[gpa, gpa + len)` is mapped with `PROT_WRITE` throughout.
    pub(crate) fn writable(&self, gpa: u64, len: usize) -> bool {
        let mut ok = true;
        let mapped = self.for_each_chunk(gpa, len, |a, _, _, _| ok &= a.prot.contains(Prot::WRITE));
        mapped.is_ok() && ok
    }

    /// Copies `buf` into guest physical memory; fails if any byte is
    /// unmapped (nothing is copied then).
    pub(crate) fn write(&self, gpa: u64, buf: &[u8]) -> Result<()> {
        if let Some(a) = self.area(gpa)
            && gpa.saturating_add(buf.len() as u64) <= a.end()
        {
            a.region.write(a.offset + (gpa - a.gpa), buf);
            return Ok(());
        }
        self.for_each_chunk(gpa, buf.len(), |_, _, _, _| {})?;
        self.for_each_chunk(gpa, buf.len(), |a, off, done, n| a.region.write(off, &buf[done..done + n]))
    }
}

impl crate::assist::mmu::PhysMemory for MemoryMap {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.read(gpa, buf).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn map_with(pages: u64) -> (MemoryMap, u64) {
        let mut m = MemoryMap::new(64 * GIB, 8);
        let hva = m.add_host(HostRegion::anonymous((pages * PAGE_SIZE) as usize).unwrap()).unwrap();
        (m, hva)
    }

    fn gpa_map(m: &mut MemoryMap, hva: u64, gpa: u64, size: u64, prot: Prot) -> Result<()> {
        let plan = m.plan_gpa_map(hva, gpa, size, prot)?;
        m.commit(plan);
        Ok(())
    }

    #[test]
    fn validation_follows_nvmm() {
        let (mut m, hva) = map_with(4);
        let e = |r: Result<()>| r.unwrap_err().errno();
        assert_eq!(e(gpa_map(&mut m, hva, 0x1001, 4096, Prot::READ)), libc::EINVAL);
        assert_eq!(e(gpa_map(&mut m, hva + 1, 0x1000, 4096, Prot::READ)), libc::EINVAL);
        assert_eq!(e(gpa_map(&mut m, hva, 0x1000, 4095, Prot::READ)), libc::EINVAL);
        assert_eq!(e(gpa_map(&mut m, hva, 0x1000, 0, Prot::READ)), libc::EINVAL);
        assert_eq!(e(gpa_map(&mut m, hva, 64 * GIB - 4096, 8192, Prot::READ)), libc::EINVAL);
        assert_eq!(e(gpa_map(&mut m, hva, u64::MAX - 4095, 8192, Prot::READ)), libc::EINVAL);
        assert_eq!(e(gpa_map(&mut m, hva, 0, 5 * 4096, Prot::READ)), libc::EINVAL, "beyond the host mapping");
        assert_eq!(e(gpa_map(&mut m, 0x1000, 0, 4096, Prot::READ)), libc::EINVAL, "no host mapping");
        gpa_map(&mut m, hva, 0x10000, 8192, Prot::READ).unwrap();
        assert_eq!(e(gpa_map(&mut m, hva, 0x11000, 4096, Prot::READ)), libc::EINVAL, "overlap");
        assert_eq!(e(gpa_map(&mut m, hva, 0xf000, 8192, Prot::READ)), libc::EINVAL, "overlap below");
        gpa_map(&mut m, hva, 0xf000, 4096, Prot::READ).unwrap();
        gpa_map(&mut m, hva, 0x12000, 4096, Prot::READ).unwrap();
        // The last page of the guest space can be mapped (and unmapped).
        gpa_map(&mut m, hva, 64 * GIB - 4096, 4096, Prot::READ).unwrap();
        assert!(m.find_exact(hva, 64 * GIB - 4096, 4096).is_ok());
        assert_eq!(m.find_exact(hva, 0x10000, 4096).err().unwrap().errno(), libc::ENOENT);
        assert_eq!(m.find_exact(hva + 4096, 0x10000, 8192).err().unwrap().errno(), libc::ENOENT);
    }

    #[test]
    fn host_ranges() {
        let (mut m, hva) = map_with(4);
        m.check_host_range(hva + 4096, 4096).unwrap();
        let e = m.check_host_range(hva - 4096, 8192).unwrap_err();
        assert_eq!(e.errno(), libc::EEXIST);
        assert_eq!(m.check_host_range(hva + 1, 4096).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(m.check_host_range(0, 4096).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(m.remove_host(hva, 4096).unwrap_err().errno(), libc::ENOENT);
        assert_eq!(m.host_bytes(), 4 * 4096);
        m.remove_host(hva, 4 * 4096).unwrap();
        assert_eq!(m.host_bytes(), 0);
    }

    #[test]
    fn slots_run_out_and_come_back() {
        let (mut m, hva) = map_with(16);
        for i in 0..8 {
            gpa_map(&mut m, hva, i * 4096, 4096, Prot::READ).unwrap();
        }
        assert_eq!(gpa_map(&mut m, hva, 9 * 4096, 4096, Prot::READ).unwrap_err().errno(), libc::ENOBUFS);
        // Mappings without access take no slot.
        gpa_map(&mut m, hva, 10 * 4096, 4096, Prot::NONE).unwrap();
        m.remove_area(0);
        gpa_map(&mut m, hva, 9 * 4096, 4096, Prot::READ).unwrap();
    }

    #[test]
    fn copies_cross_mappings_and_pages() {
        let mut m = MemoryMap::new(64 * GIB, 8);
        let a = m.add_host(HostRegion::anonymous(8192).unwrap()).unwrap();
        let b = m.add_host(HostRegion::anonymous(8192).unwrap()).unwrap();
        // Two discontiguous host regions back one contiguous guest range,
        // in reverse order.
        gpa_map(&mut m, b, 0x1000, 8192, Prot::ALL).unwrap();
        gpa_map(&mut m, a, 0x3000, 8192, Prot::ALL).unwrap();
        let data: Vec<u8> = (0..=255u8).cycle().take(3 * 4096).collect();
        for off in 0..4096u64 {
            for len in [1usize, 2, 3, 4, 7, 8, 15, 16, 17, 100] {
                let gpa = 0x1000 + off * 2 + 4096 - 50;
                let src = &data[..len];
                m.write(gpa, src).unwrap();
                let mut back = vec![0u8; len];
                m.read(gpa, &mut back).unwrap();
                assert_eq!(back, src, "gpa {gpa:#x} len {len}");
            }
        }
        m.write(0x1000, &data).unwrap();
        let mut all = vec![0u8; data.len()];
        m.read(0x1000, &mut all).unwrap();
        assert_eq!(all, data);
        let mut one = [0u8; 1];
        assert_eq!(m.read(0x5000, &mut one).unwrap_err().errno(), libc::ENOENT);
        assert_eq!(m.read(0x4fff, &mut [0u8; 2]).unwrap_err().errno(), libc::ENOENT);
        assert_eq!(m.gpa_to_hva(0x3004).unwrap(), (a + 4, Prot::ALL));
        assert_eq!(m.gpa_to_hva(0x0fff).unwrap_err().errno(), libc::ENOENT);
    }
}
