//! Every translation the page tables hold, as runs of linear addresses:
//! what a debugger's memory map and a core file's virtual segments need.
#![forbid(unsafe_code)]

use super::{PageProt, PagingMode, PagingRegs, PhysMemory, prot_of};
use crate::x86::bits::cr4;
use crate::x86::bits::pte::{P, PS, RW, US, XD};

/// A run of linear addresses mapped to contiguous guest physical memory
/// with the same rights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// First linear address (canonical).
    pub gva: u64,
    /// The guest physical address it maps to.
    pub gpa: u64,
    /// Length in bytes (a multiple of 4 KiB).
    pub size: u64,
    /// The rights the page tables grant.
    pub prot: PageProt,
}

/// Lists the translations of the page tables `regs` select, in linear
/// address order, adjacent pages merged when their guest physical pages
/// follow each other and their rights match. Entries with reserved bits
/// set (the CPU faults on them) and tables outside guest RAM are left
/// out. Without paging, one run covers the 4 GiB identity map.
pub fn mappings(mem: &dyn PhysMemory, regs: &PagingRegs) -> Vec<Mapping> {
    let mut out = Runs::default();
    let Some(mode) = regs.mode() else { return Vec::new() };
    let phys = regs.phys_mask();
    let nx = regs.nxe();
    let xd_reserved = if nx { 0 } else { XD };
    match mode {
        PagingMode::Off => out.push(0, 0, 1 << 32, PageProt::ALL),
        PagingMode::Bits32 => {
            for i in 0..1024u64 {
                let Some(pde) = entry(mem, (regs.cr3 & 0xffff_f000) | (i << 2), false) else { continue };
                if pde & P == 0 {
                    continue;
                }
                let va = i << 22;
                if pde & PS != 0 && regs.cr4 & cr4::PSE != 0 {
                    let high = ((pde >> 13) & 0xff) << 32;
                    if pde & (1 << 21) == 0 && high & !phys == 0 {
                        out.push(va, (pde & 0xffc0_0000) | high, 4 << 20, prot_of(pde, false));
                    }
                    continue;
                }
                for j in 0..1024u64 {
                    let Some(pte) = entry(mem, (pde & 0xffff_f000) | (j << 2), false) else { continue };
                    if pte & P != 0 {
                        let rights = pde & (pte | !(RW | US));
                        out.push(va | (j << 12), pte & 0xffff_f000, 4096, prot_of(rights, false));
                    }
                }
            }
        }
        PagingMode::Pae => {
            let addr_mask = phys & !0xfff;
            for i in 0..4u64 {
                let Some(pdpte) = entry(mem, (regs.cr3 & 0xffff_ffe0) | (i << 3), true) else { continue };
                if pdpte & P == 0 || pdpte & (0x1e6 | XD | (!phys & !XD & !0xfff)) != 0 {
                    continue;
                }
                let walk = Walk { mem, phys, addr_mask, xd_reserved, nx, gib_pages: false, va_bits: 32 };
                walk.table(&mut out, pdpte & addr_mask, 2, i << 30, RW | US, false);
            }
        }
        PagingMode::Level4 | PagingMode::Level5 => {
            let top = if mode == PagingMode::Level5 { 5 } else { 4 };
            let addr_mask = phys & !0xfff;
            let walk = Walk { mem, phys, addr_mask, xd_reserved, nx, gib_pages: regs.gib_pages, va_bits: 12 + 9 * top };
            walk.table(&mut out, regs.cr3 & addr_mask, top, 0, RW | US, false);
        }
    }
    out.0
}

fn entry(mem: &dyn PhysMemory, gpa: u64, wide: bool) -> Option<u64> {
    let mut b = [0u8; 8];
    let n = if wide { 8 } else { 4 };
    mem.read_phys(gpa, &mut b[..n]).then(|| u64::from_le_bytes(b))
}

/// The PAE and long-mode table walk.
struct Walk<'a> {
    mem: &'a dyn PhysMemory,
    phys: u64,
    addr_mask: u64,
    xd_reserved: u64,
    nx: bool,
    gib_pages: bool,
    /// Linear address width: 32 (PAE), 48 or 57 (long mode, where the
    /// top bit is sign-extended).
    va_bits: u32,
}

impl Walk<'_> {
    /// The entries of the level-`level` table at `table`, which maps from
    /// linear address `va`, with `rights` and `xd` from the levels above.
    fn table(&self, out: &mut Runs, table: u64, level: u32, va: u64, rights: u64, xd: bool) {
        let shift = 12 + 9 * (level - 1);
        for i in 0..512u64 {
            let Some(e) = entry(self.mem, table | (i << 3), true) else { continue };
            if e & P == 0 {
                continue;
            }
            let mut rsvd = if self.va_bits > 32 {
                // Bits 62:52 are ignored in long mode.
                (e & 0x000f_ffff_ffff_f000 & !self.phys) | (e & self.xd_reserved)
            } else {
                (e & !XD & !0xfff) & !self.phys | (e & self.xd_reserved)
            };
            let large = e & PS != 0 && level != 1;
            match level {
                4 | 5 if large => rsvd |= PS,
                3 if large && !self.gib_pages => rsvd |= PS,
                3 if large => rsvd |= e & 0x3fff_e000,
                2 if large => rsvd |= e & 0x1f_e000,
                _ => {}
            }
            if rsvd != 0 {
                continue;
            }
            let mut at = va | (i << shift);
            if self.va_bits > 32 && at >> (self.va_bits - 1) != 0 {
                at |= !((1u64 << self.va_bits) - 1);
            }
            let r = rights & e;
            let x = xd || e & XD != 0;
            if level == 1 || large {
                let size = 1u64 << shift;
                out.push(at, e & self.addr_mask & !(size - 1), size, prot_of(r, x && self.nx));
            } else {
                self.table(out, e & self.addr_mask, level - 1, at, r, x);
            }
        }
    }
}

/// Mappings in order, merged as they come.
#[derive(Default)]
struct Runs(Vec<Mapping>);

impl Runs {
    fn push(&mut self, gva: u64, gpa: u64, size: u64, prot: PageProt) {
        if let Some(last) = self.0.last_mut()
            && last.gva + last.size == gva
            && last.gpa + last.size == gpa
            && last.prot == prot
        {
            last.size += size;
            return;
        }
        self.0.push(Mapping { gva, gpa, size, prot });
    }
}
