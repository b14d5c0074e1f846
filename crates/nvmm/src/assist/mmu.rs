//! The MMU walker: guest virtual to guest physical translation in every x86
//! paging mode, with the protection the page tables grant and typed faults
//! that carry the #PF error code the CPU would push.
//!
//! Modes: no paging; 32-bit (4 KiB pages, 4 MiB pages with CR4.PSE,
//! PSE-36 high address bits); PAE (4 KiB, 2 MiB, physical addresses above
//! 4 GiB); 4-level and 5-level (CR4.LA57) long mode (4 KiB, 2 MiB, 1 GiB).
//! Reserved bits are checked against the guest's physical address width and
//! EFER.NXE; access checks honour U/S, R/W with CR0.WP, NX, SMEP and SMAP.
//! Protection keys are not modelled.
//!
//! **Accessed and dirty bits are never set.** The walker only reads guest
//! page tables. The CPU sets A (and D) bits for the guest's own accesses and
//! KVM for its own emulation; the assists emulate accesses the CPU has
//! already translated for the faulting instruction, so those entries are
//! accessed already. Setting the bits from another thread without an atomic
//! read-modify-write could lose a concurrent update the guest makes to the
//! same entry, which is worse than a missing D bit on an emulated write.
#![forbid(unsafe_code)]

/// Guest physical memory as the walker reads it.
pub trait PhysMemory {
    /// Reads `buf.len()` bytes at `gpa`; `false` if any byte is not RAM.
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> bool;
}

/// Control registers and MSRs that decide the translation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingRegs {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// Guest physical address width (CPUID 0x80000008 EAX\[7:0\]), 32..=52.
    pub phys_bits: u8,
    /// The guest has 1 GiB pages (CPUID 0x80000001 EDX\[26\]); without them
    /// the PS bit of a PDPTE is reserved.
    pub gib_pages: bool,
}

use crate::x86::bits::pte::{P, PS, RW, US, XD};
use crate::x86::bits::{cr0, cr4, efer};

pub use crate::x86::mode::PagingMode;

impl PagingRegs {
    /// The paging mode, or `None` for an impossible combination (long mode
    /// without PAE).
    pub fn mode(&self) -> Option<PagingMode> {
        PagingMode::of(self.cr0, self.cr4, self.efer)
    }

    fn nxe(&self) -> bool {
        self.efer & efer::NXE != 0
    }

    /// Mask of the physical address bits the guest may use.
    fn phys_mask(&self) -> u64 {
        let bits = self.phys_bits.clamp(32, 52);
        (1u64 << bits) - 1
    }
}

/// Rights a translation grants (NVMM's `NVMM_PROT_*` bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PageProt(pub u8);

impl PageProt {
    /// Readable (always, for a present page).
    pub const READ: u8 = 0x1;
    /// Writable at every level.
    pub const WRITE: u8 = 0x2;
    /// Executable (no XD at any level).
    pub const EXEC: u8 = 0x4;
    /// User-accessible at every level.
    pub const USER: u8 = 0x8;
    /// Everything (no paging).
    pub const ALL: PageProt = PageProt(0xf);

    /// Whether `bits` are all granted.
    pub fn has(self, bits: u8) -> bool {
        self.0 & bits == bits
    }
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Guest physical address.
    pub gpa: u64,
    /// Rights granted by the page tables.
    pub prot: PageProt,
    /// Size of the page that maps the address (4 KiB, 2 or 4 MiB, 1 GiB).
    pub page_size: u64,
}

/// Kind of access being checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch.
    Fetch,
}

/// An access to check against a translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    /// Read, write or fetch.
    pub kind: AccessKind,
    /// Made at CPL 3.
    pub user: bool,
    /// RFLAGS.AC (lifts SMAP for supervisor data accesses).
    pub ac: bool,
}

impl Access {
    /// A supervisor access.
    pub const fn supervisor(kind: AccessKind) -> Access {
        Access { kind, user: false, ac: false }
    }

    /// A user-mode access.
    pub const fn user(kind: AccessKind) -> Access {
        Access { kind, user: true, ac: false }
    }
}

/// #PF error code bits.
pub mod pf {
    /// The entry was present (a protection or reserved-bit fault).
    pub const P: u32 = 1 << 0;
    /// The access was a write.
    pub const W: u32 = 1 << 1;
    /// The access was made at CPL 3.
    pub const U: u32 = 1 << 2;
    /// A reserved bit was set.
    pub const RSVD: u32 = 1 << 3;
    /// The access was an instruction fetch.
    pub const ID: u32 = 1 << 4;
}

/// Why a translation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// The address is not canonical (long mode): #GP or #SS, not #PF.
    NonCanonical {
        /// The address.
        gva: u64,
    },
    /// An entry on the way was not present.
    NotPresent {
        /// The address.
        gva: u64,
        /// Level of the entry (1 = page table, 5 = PML5).
        level: u8,
        /// #PF error code (for the access checked, else a read).
        error_code: u32,
    },
    /// An entry had a reserved bit set.
    Reserved {
        /// The address.
        gva: u64,
        /// Level of the entry.
        level: u8,
        /// #PF error code.
        error_code: u32,
    },
    /// The page is mapped but forbids the access.
    Protection {
        /// The address.
        gva: u64,
        /// #PF error code.
        error_code: u32,
    },
    /// A page table lies outside guest RAM (for instance in MMIO).
    TableUnreadable {
        /// Guest physical address of the entry.
        gpa: u64,
    },
    /// Long mode without PAE: no valid translation exists.
    InvalidMode,
}

impl WalkError {
    /// The #PF error code to inject, for page faults.
    pub fn page_fault_error_code(&self) -> Option<u32> {
        match *self {
            WalkError::NotPresent { error_code, .. }
            | WalkError::Reserved { error_code, .. }
            | WalkError::Protection { error_code, .. } => Some(error_code),
            _ => None,
        }
    }
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::NonCanonical { gva } => write!(f, "{gva:#x} is not canonical"),
            WalkError::NotPresent { gva, level, .. } => write!(f, "{gva:#x}: level-{level} entry not present"),
            WalkError::Reserved { gva, level, .. } => write!(f, "{gva:#x}: level-{level} entry has reserved bits set"),
            WalkError::Protection { gva, error_code } => {
                write!(f, "{gva:#x}: access forbidden (#PF error code {error_code:#x})")
            }
            WalkError::TableUnreadable { gpa } => write!(f, "page table entry at {gpa:#x} is not in guest RAM"),
            WalkError::InvalidMode => write!(f, "long mode without PAE"),
        }
    }
}

impl std::error::Error for WalkError {}

/// Base error-code bits for `access` (W, U, I/D), without P or RSVD.
fn access_code(regs: &PagingRegs, access: Option<Access>, mode: PagingMode) -> u32 {
    let Some(a) = access else { return 0 };
    let mut code = 0;
    if a.kind == AccessKind::Write {
        code |= pf::W;
    }
    if a.user {
        code |= pf::U;
    }
    let nx_capable = mode != PagingMode::Bits32 && regs.nxe();
    if a.kind == AccessKind::Fetch && (nx_capable || regs.cr4 & cr4::SMEP != 0) {
        code |= pf::ID;
    }
    code
}

fn read_entry(mem: &dyn PhysMemory, gpa: u64, wide: bool) -> Result<u64, WalkError> {
    let mut b = [0u8; 8];
    let n = if wide { 8 } else { 4 };
    if !mem.read_phys(gpa, &mut b[..n]) {
        return Err(WalkError::TableUnreadable { gpa });
    }
    Ok(u64::from_le_bytes(b))
}

/// Translates `gva` and returns what the page tables grant, without
/// checking an access (NVMM's `nvmm_gva_to_gpa`). Faults report a read.
pub fn walk(mem: &dyn PhysMemory, regs: &PagingRegs, gva: u64) -> Result<Translation, WalkError> {
    walk_inner(mem, regs, gva, None)
}

/// Translates `gva` for `access`, failing like the CPU would.
pub fn translate(mem: &dyn PhysMemory, regs: &PagingRegs, gva: u64, access: Access) -> Result<Translation, WalkError> {
    let t = walk_inner(mem, regs, gva, Some(access))?;
    let mode = regs.mode().ok_or(WalkError::InvalidMode)?;
    if mode == PagingMode::Off {
        return Ok(t);
    }
    let user_page = t.prot.has(PageProt::USER);
    let allowed = match (access.kind, access.user) {
        (AccessKind::Read, true) => user_page,
        (AccessKind::Write, true) => user_page && t.prot.has(PageProt::WRITE),
        (AccessKind::Fetch, true) => user_page && t.prot.has(PageProt::EXEC),
        (AccessKind::Read, false) => !(user_page && smap(regs, access)),
        (AccessKind::Write, false) => {
            !(user_page && smap(regs, access)) && (t.prot.has(PageProt::WRITE) || regs.cr0 & cr0::WP == 0)
        }
        (AccessKind::Fetch, false) => t.prot.has(PageProt::EXEC) && !(user_page && regs.cr4 & cr4::SMEP != 0),
    };
    if allowed {
        Ok(t)
    } else {
        Err(WalkError::Protection { gva, error_code: pf::P | access_code(regs, Some(access), mode) })
    }
}

fn smap(regs: &PagingRegs, access: Access) -> bool {
    regs.cr4 & cr4::SMAP != 0 && !access.ac
}

/// Splits `[gva, gva + len)` at page boundaries and translates each piece
/// for `access`: the guest physical ranges, in order.
pub fn translate_range(
    mem: &dyn PhysMemory,
    regs: &PagingRegs,
    gva: u64,
    len: usize,
    access: Access,
) -> Result<Vec<(u64, usize)>, WalkError> {
    let mut out = Vec::with_capacity(2);
    let mut done = 0usize;
    let wrap = match regs.mode() {
        Some(PagingMode::Level4 | PagingMode::Level5) => u64::MAX,
        _ => 0xffff_ffff,
    };
    while done < len {
        let at = gva.wrapping_add(done as u64) & wrap;
        let n = ((4096 - (at & 0xfff)) as usize).min(len - done);
        let t = translate(mem, regs, at, access)?;
        match out.last_mut() {
            Some((g, l)) if *g + *l as u64 == t.gpa => *l += n,
            _ => out.push((t.gpa, n)),
        }
        done += n;
    }
    Ok(out)
}

fn walk_inner(
    mem: &dyn PhysMemory,
    regs: &PagingRegs,
    gva: u64,
    access: Option<Access>,
) -> Result<Translation, WalkError> {
    let mode = regs.mode().ok_or(WalkError::InvalidMode)?;
    let flat = Translation { gpa: gva & 0xffff_ffff, prot: PageProt::ALL, page_size: 4096 };
    if mode == PagingMode::Off {
        // Tested apart: a `match` over the four modes is a jump table, an
        // indirect branch the host's branch-predictor barrier at VM exits
        // makes mispredict (real-mode and flat guests walk at every MMIO
        // read).
        return Ok(flat);
    }
    let code = access_code(regs, access, mode);
    let not_present = |level| WalkError::NotPresent { gva, level, error_code: code };
    let reserved = |level| WalkError::Reserved { gva, level, error_code: code | pf::P | pf::RSVD };
    let phys = regs.phys_mask();
    match mode {
        PagingMode::Off => Ok(flat),
        PagingMode::Bits32 => {
            let va = gva & 0xffff_ffff;
            let pde_addr = (regs.cr3 & 0xffff_f000) | ((va >> 22) << 2);
            let pde = read_entry(mem, pde_addr, false)?;
            if pde & P == 0 {
                return Err(not_present(2));
            }
            let mut rights = pde;
            if pde & PS != 0 && regs.cr4 & cr4::PSE != 0 {
                // 4 MiB page; bits 20:13 hold physical address bits 39:32
                // (PSE-36/40), bit 21 is reserved.
                let high = ((pde >> 13) & 0xff) << 32;
                if pde & (1 << 21) != 0 || high & !phys != 0 {
                    return Err(reserved(2));
                }
                let gpa = (pde & 0xffc0_0000) | high | (va & 0x3f_ffff);
                return Ok(Translation { gpa, prot: prot_of(rights, false), page_size: 4 << 20 });
            }
            let pte_addr = (pde & 0xffff_f000) | (((va >> 12) & 0x3ff) << 2);
            let pte = read_entry(mem, pte_addr, false)?;
            if pte & P == 0 {
                return Err(not_present(1));
            }
            rights &= pte | !(RW | US);
            let gpa = (pte & 0xffff_f000) | (va & 0xfff);
            Ok(Translation { gpa, prot: prot_of(rights, false), page_size: 4096 })
        }
        PagingMode::Pae => {
            let va = gva & 0xffff_ffff;
            let addr_mask = phys & !0xfff;
            let xd_reserved = if regs.nxe() { 0 } else { XD };
            let pdpte_addr = (regs.cr3 & 0xffff_ffe0) | ((va >> 30) << 3);
            let pdpte = read_entry(mem, pdpte_addr, true)?;
            if pdpte & P == 0 {
                return Err(not_present(3));
            }
            // PDPTEs have no rights bits; bits 1, 2, 5-8 and 63 are reserved.
            if pdpte & (0x1e6 | XD | (!phys & !XD & !0xfff)) != 0 {
                return Err(reserved(3));
            }
            let mut table = pdpte & addr_mask;
            let mut rights = RW | US;
            let mut nx = false;
            for level in [2u8, 1] {
                let shift = 12 + 9 * (u32::from(level) - 1);
                let e = read_entry(mem, table | (((va >> shift) & 0x1ff) << 3), true)?;
                if e & P == 0 {
                    return Err(not_present(level));
                }
                let mut rsvd = (e & !XD & !0xfff) & !phys | (e & xd_reserved);
                let large = level == 2 && e & PS != 0;
                if large {
                    rsvd |= e & 0x1f_e000;
                }
                if rsvd != 0 {
                    return Err(reserved(level));
                }
                rights &= e;
                nx |= e & XD != 0;
                if large {
                    let gpa = (e & addr_mask & !0x1f_ffff) | (va & 0x1f_ffff);
                    return Ok(Translation { gpa, prot: prot_of(rights, nx && regs.nxe()), page_size: 2 << 20 });
                }
                table = e & addr_mask;
            }
            let gpa = table | (va & 0xfff);
            Ok(Translation { gpa, prot: prot_of(rights, nx && regs.nxe()), page_size: 4096 })
        }
        PagingMode::Level4 | PagingMode::Level5 => {
            let top: u8 = if mode == PagingMode::Level5 { 5 } else { 4 };
            let va_bits = 12 + 9 * u32::from(top);
            let sign = (gva as i64) >> (va_bits - 1);
            if sign != 0 && sign != -1 {
                return Err(WalkError::NonCanonical { gva });
            }
            let addr_mask = phys & !0xfff;
            let xd_reserved = if regs.nxe() { 0 } else { XD };
            let mut table = regs.cr3 & addr_mask;
            let mut rights = RW | US;
            let mut nx = false;
            for level in (1..=top).rev() {
                let shift = 12 + 9 * (u32::from(level) - 1);
                let e = read_entry(mem, table | (((gva >> shift) & 0x1ff) << 3), true)?;
                if e & P == 0 {
                    return Err(not_present(level));
                }
                // Bits 62:52 are ignored in long mode; 51:MAXPHYADDR reserved.
                let mut rsvd = (e & 0x000f_ffff_ffff_f000 & !phys) | (e & xd_reserved);
                let large = e & PS != 0 && level != 1;
                match level {
                    4 | 5 if large => rsvd |= PS,
                    3 if large && !regs.gib_pages => rsvd |= PS,
                    3 if large => rsvd |= e & 0x3fff_e000,
                    2 if large => rsvd |= e & 0x1f_e000,
                    _ => {}
                }
                if rsvd != 0 {
                    return Err(reserved(level));
                }
                rights &= e;
                nx |= e & XD != 0;
                if large {
                    let size = 1u64 << shift;
                    let gpa = (e & addr_mask & !(size - 1)) | (gva & (size - 1));
                    return Ok(Translation { gpa, prot: prot_of(rights, nx && regs.nxe()), page_size: size });
                }
                table = e & addr_mask;
            }
            let gpa = table | (gva & 0xfff);
            Ok(Translation { gpa, prot: prot_of(rights, nx && regs.nxe()), page_size: 4096 })
        }
    }
}

fn prot_of(rights: u64, nx: bool) -> PageProt {
    let mut p = PageProt::READ;
    if rights & RW != 0 {
        p |= PageProt::WRITE;
    }
    if rights & US != 0 {
        p |= PageProt::USER;
    }
    if !nx {
        p |= PageProt::EXEC;
    }
    PageProt(p)
}

mod mappings;

pub use mappings::{Mapping, mappings};

#[cfg(test)]
mod tests;
