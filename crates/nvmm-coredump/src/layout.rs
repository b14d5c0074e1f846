//! Where everything goes in the file: each guest physical area once, page
//! aligned after the headers; a `PT_LOAD` per virtual mapping pointing at
//! the bytes of the physical pages it maps (several mappings of one page
//! share them), and a `PT_LOAD` with `p_vaddr = p_paddr` for every physical
//! range no virtual mapping covers.

use std::collections::HashSet;

use nvmm::Prot;
use nvmm::assist::mmu::PageProt;

use crate::image::VcpuImage;
use crate::memory::{MemoryArea, PAGE};

/// One `PT_LOAD`, with its file offset relative to the start of the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// Guest virtual address (the guest physical address for physical
    /// ranges).
    pub vaddr: u64,
    /// Guest physical address.
    pub paddr: u64,
    /// Offset of its bytes from the start of the memory data.
    pub data_offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// `PF_R`/`PF_W`/`PF_X`.
    pub flags: u32,
}

/// The memory part of a core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// The areas with the offset of their bytes from the start of the data.
    pub areas: Vec<(MemoryArea, u64)>,
    /// Every `PT_LOAD`: virtual mappings first (VCPU order), then the
    /// physical ranges no mapping covers.
    pub loads: Vec<Load>,
    /// Length of the data.
    pub data_len: u64,
}

const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;

fn area_flags(p: Prot) -> u32 {
    let mut f = PF_R;
    if p.contains(Prot::WRITE) {
        f |= PF_W;
    }
    if p.contains(Prot::EXEC) {
        f |= PF_X;
    }
    f
}

fn page_flags(p: PageProt) -> u32 {
    let mut f = PF_R;
    if p.has(PageProt::WRITE) {
        f |= PF_W;
    }
    if p.has(PageProt::EXEC) {
        f |= PF_X;
    }
    f
}

/// Plans the memory of a core of `vcpus` over `areas` (in address order).
pub fn plan(areas: &[MemoryArea], vcpus: &[VcpuImage]) -> Layout {
    let mut placed = Vec::with_capacity(areas.len());
    let mut off = 0;
    for a in areas {
        placed.push((*a, off));
        off += a.size.next_multiple_of(PAGE);
    }
    let mut loads = Vec::new();
    let mut covered: Vec<(u64, u64)> = Vec::new();
    let mut seen = HashSet::new();
    for m in vcpus.iter().flat_map(|v| &v.mappings) {
        if !seen.insert(*m) {
            continue;
        }
        let end = m.gpa.saturating_add(m.size);
        for &(a, base) in &placed {
            let (s, e) = (m.gpa.max(a.gpa), end.min(a.end()));
            if s >= e {
                continue;
            }
            loads.push(Load {
                vaddr: m.gva.wrapping_add(s - m.gpa),
                paddr: s,
                data_offset: base + (s - a.gpa),
                size: e - s,
                flags: page_flags(m.prot) & area_flags(a.prot),
            });
            covered.push((s, e));
        }
    }
    covered.sort_unstable();
    for &(a, base) in &placed {
        let mut at = a.gpa;
        let mut push_gap = |from: u64, to: u64| {
            if from < to {
                loads.push(Load {
                    vaddr: from,
                    paddr: from,
                    data_offset: base + (from - a.gpa),
                    size: to - from,
                    flags: area_flags(a.prot),
                });
            }
        };
        for &(s, e) in covered.iter().filter(|(s, e)| *s < a.end() && *e > a.gpa) {
            push_gap(at, s.max(at));
            at = at.max(e);
        }
        push_gap(at, a.end());
    }
    Layout { areas: placed, loads, data_len: off }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvmm::State;
    use nvmm::assist::mmu::Mapping;
    use nvmm::x86::xsave::Xsave;

    fn vcpu(mappings: Vec<Mapping>) -> VcpuImage {
        VcpuImage { index: 0, state: State::default(), xsave: Xsave::default(), mappings }
    }

    fn map(gva: u64, gpa: u64, size: u64, prot: u8) -> Mapping {
        Mapping { gva, gpa, size, prot: PageProt(prot) }
    }

    #[test]
    fn without_paging_every_area_is_at_its_physical_address() {
        let areas = [
            MemoryArea { gpa: 0, size: 0x10000, prot: Prot::ALL },
            MemoryArea { gpa: 0xfff0_0000, size: 0x1000, prot: Prot::READ | Prot::EXEC },
        ];
        let l = plan(&areas, &[vcpu(vec![])]);
        assert_eq!(l.data_len, 0x11000);
        assert_eq!(
            l.loads,
            vec![
                Load { vaddr: 0, paddr: 0, data_offset: 0, size: 0x10000, flags: PF_R | PF_W | PF_X },
                Load { vaddr: 0xfff0_0000, paddr: 0xfff0_0000, data_offset: 0x10000, size: 0x1000, flags: PF_R | PF_X },
            ]
        );
    }

    #[test]
    fn mappings_share_the_physical_bytes_and_leave_the_rest_physical() {
        let areas = [MemoryArea { gpa: 0, size: 0x10000, prot: Prot::ALL }];
        let rw = PageProt::READ | PageProt::WRITE;
        let v0 = vcpu(vec![map(0xffff_8000_0000_0000, 0x2000, 0x2000, rw), map(0x4000_0000, 0x3000, 0x1000, 1)]);
        // A second VCPU with one mapping in common and one past RAM.
        let v1 = vcpu(vec![map(0x4000_0000, 0x3000, 0x1000, 1), map(0x5000_0000, 0xf000, 0x2000, 1)]);
        let l = plan(&areas, &[v0, v1]);
        let virt: Vec<_> =
            l.loads.iter().filter(|p| p.vaddr != p.paddr).map(|p| (p.vaddr, p.data_offset, p.size)).collect();
        assert_eq!(
            virt,
            vec![(0xffff_8000_0000_0000, 0x2000, 0x2000), (0x4000_0000, 0x3000, 0x1000), (0x5000_0000, 0xf000, 0x1000)]
        );
        let phys: Vec<_> = l.loads.iter().filter(|p| p.vaddr == p.paddr).map(|p| (p.paddr, p.size)).collect();
        assert_eq!(phys, vec![(0, 0x2000), (0x4000, 0xb000)]);
    }
}
