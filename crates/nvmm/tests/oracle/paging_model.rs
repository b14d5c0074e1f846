//! An x86 page walker written from the Intel SDM (vol. 3A, chapter 4:
//! tables 4-4..4-11 for 32-bit and PAE paging, 4-14..4-20 for 4- and
//! 5-level paging, section 4.6 for access rights, 4.7 for the #PF error
//! code), and a generator of random page-table memory. Neither uses any
//! of the library's paging code or constants: the walker tests compare the
//! library's walker with this one, and both with KVM where the host can.
#![allow(dead_code)]

use std::collections::HashMap;

/// The registers that decide a translation, as the SDM names them.
#[derive(Clone, Copy, Debug)]
pub struct Regs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// MAXPHYADDR.
    pub maxphyaddr: u32,
    /// CPUID.80000001H:EDX.Page1GB.
    pub page1gb: bool,
}

/// Control-register and EFER bits, from the SDM (vol. 3A 2.5, 2.2.1).
pub const CR0_PE: u64 = 1;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PSE: u64 = 1 << 4;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_LA57: u64 = 1 << 12;
pub const CR4_SMEP: u64 = 1 << 20;
pub const CR4_SMAP: u64 = 1 << 21;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;

/// An access: data read, data write or instruction fetch, at CPL 3 or not,
/// with EFLAGS.AC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Fetch,
}

#[derive(Clone, Copy, Debug)]
pub struct Access {
    pub kind: Kind,
    pub user: bool,
    pub ac: bool,
}

/// What the SDM says happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Translated: physical address, (writable, user, executable), page size.
    Ok { pa: u64, write: bool, user: bool, exec: bool, size: u64 },
    /// #GP: the linear address is not canonical.
    NonCanonical,
    /// #PF for a not-present entry at `level` (1 = the PTE).
    NotPresent { level: u8, code: u32 },
    /// #PF for a reserved bit at `level`.
    Reserved { level: u8, code: u32 },
    /// #PF for a right the page does not grant.
    Protection { code: u32 },
    /// A paging-structure entry is not in memory at this physical address.
    Unreadable { pa: u64 },
    /// IA-32e mode without PAE (cannot be entered).
    Invalid,
}

/// Memory the walker reads: 4 KiB pages at their physical addresses.
#[derive(Default, Clone)]
pub struct Memory {
    pub pages: HashMap<u64, Vec<u8>>,
}

impl Memory {
    /// Reads `n` bytes (4 or 8) little-endian at `pa`, inside one page.
    pub fn read(&self, pa: u64, n: usize) -> Option<u64> {
        let page = self.pages.get(&(pa & !0xfff))?;
        let off = (pa & 0xfff) as usize;
        let mut v = 0u64;
        for i in (0..n).rev() {
            v = (v << 8) | u64::from(*page.get(off + i)?);
        }
        Some(v)
    }

    /// Writes `n` bytes of `v` at `pa` (the page must exist).
    pub fn write(&mut self, pa: u64, n: usize, v: u64) {
        let page = self.pages.get_mut(&(pa & !0xfff)).expect("page exists");
        let off = (pa & 0xfff) as usize;
        page[off..off + n].copy_from_slice(&v.to_le_bytes()[..n]);
    }
}

/// Bits `lo..=hi` set.
fn bits(lo: u32, hi: u32) -> u64 {
    if lo > hi { 0 } else { (u64::MAX >> (63 - hi)) & (u64::MAX << lo) }
}

/// One level of a paging structure: the linear-address bits that index it,
/// the entry size, and whether a PS=1 entry maps a page here.
struct Level {
    number: u8,
    index_lo: u32,
    index_bits: u32,
    entry_bytes: usize,
}

/// The walk as the SDM describes it, for `access` (or for no access: the
/// rights are reported and faults carry a read's error code).
pub fn walk(mem: &Memory, r: &Regs, la: u64, access: Option<Access>) -> Outcome {
    if r.cr0 & CR0_PG == 0 {
        return Outcome::Ok { pa: la & 0xffff_ffff, write: true, user: true, exec: true, size: 4096 };
    }
    let lma = r.efer & EFER_LMA != 0;
    let pae = r.cr4 & CR4_PAE != 0;
    if lma && !pae {
        return Outcome::Invalid;
    }
    let nxe = r.efer & EFER_NXE != 0;
    let m = r.maxphyaddr;
    // Section 4.7: the error code.
    let mut code = 0u32;
    if let Some(a) = access {
        if a.kind == Kind::Write {
            code |= 1 << 1;
        }
        if a.user {
            code |= 1 << 2;
        }
        if a.kind == Kind::Fetch && (r.cr4 & CR4_SMEP != 0 || (pae && nxe)) {
            code |= 1 << 4;
        }
    }
    let levels: Vec<Level> = if !pae {
        vec![
            Level { number: 2, index_lo: 22, index_bits: 10, entry_bytes: 4 },
            Level { number: 1, index_lo: 12, index_bits: 10, entry_bytes: 4 },
        ]
    } else if !lma {
        vec![
            Level { number: 3, index_lo: 30, index_bits: 2, entry_bytes: 8 },
            Level { number: 2, index_lo: 21, index_bits: 9, entry_bytes: 8 },
            Level { number: 1, index_lo: 12, index_bits: 9, entry_bytes: 8 },
        ]
    } else {
        let top = if r.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
        // Canonical: bits 63:(top*9+11) all equal bit (top*9+11).
        let width = 12 + 9 * top as u32;
        let upper = la >> (width - 1);
        if upper != 0 && upper != (u64::MAX >> (width - 1)) {
            return Outcome::NonCanonical;
        }
        (1..=top)
            .rev()
            .map(|n| Level { number: n, index_lo: 12 + 9 * (n as u32 - 1), index_bits: 9, entry_bytes: 8 })
            .collect()
    };
    let la = if lma { la } else { la & 0xffff_ffff };
    // Table 4-4 (32-bit: CR3 bits 31:12), 4-7 (PAE: CR3 bits 31:5),
    // 4-12 (IA-32e: CR3 bits M-1:12).
    let mut table = if !pae {
        r.cr3 & bits(12, 31)
    } else if !lma {
        r.cr3 & bits(5, 31)
    } else {
        r.cr3 & bits(12, m - 1)
    };
    let (mut write, mut user, mut exec) = (true, true, true);
    for lv in &levels {
        let index = (la >> lv.index_lo) & bits(0, lv.index_bits - 1);
        let entry_pa = table + index * lv.entry_bytes as u64;
        let Some(e) = mem.read(entry_pa, lv.entry_bytes) else {
            return Outcome::Unreadable { pa: entry_pa };
        };
        if e & 1 == 0 {
            return Outcome::NotPresent { level: lv.number, code };
        }
        let ps = e & (1 << 7) != 0;
        let pdpte_pae = pae && !lma && lv.number == 3;
        // Whether this entry maps a page.
        let leaf = lv.number == 1
            || (ps
                && match (pae, lma, lv.number) {
                    (false, _, 2) => r.cr4 & CR4_PSE != 0,
                    (true, false, 2) => true,
                    (true, true, 2) => true,
                    (true, true, 3) => true, // Reserved below without Page1GB.
                    _ => false,
                });
        // Reserved bits.
        let rsvd = if !pae {
            if lv.number == 2 && leaf {
                // Table 4-4 note: bits (M-32)+13..20 hold PA bits above 32
                // only up to MAXPHYADDR (40 at most); bit 21 is reserved.
                let high_ok = m.min(40) - 32;
                e & (bits(13 + high_ok, 20) | 1 << 21)
            } else {
                0
            }
        } else if pdpte_pae {
            // Table 4-8: bits 2:1, 8:5 and 63:M.
            e & (bits(1, 2) | bits(5, 8) | bits(m, 63))
        } else {
            // PAE tables 4-9..4-11: 62:M reserved, 63 (XD) unless NXE.
            // IA-32e tables 4-14..4-19: 51:M reserved, 62:52 ignored.
            let mut r_bits = if lma { bits(m, 51) } else { bits(m, 62) };
            if !nxe {
                r_bits |= 1 << 63;
            }
            if lma && lv.number >= 4 {
                r_bits |= 1 << 7;
            }
            if lma && lv.number == 3 && ps {
                r_bits |= if r.page1gb { bits(13, 29) } else { 1 << 7 };
            }
            if lv.number == 2 && leaf {
                r_bits |= bits(13, 20);
            }
            e & r_bits
        };
        if rsvd != 0 {
            return Outcome::Reserved { level: lv.number, code: code | 1 | 1 << 3 };
        }
        if !pdpte_pae {
            write &= e & (1 << 1) != 0;
            user &= e & (1 << 2) != 0;
            if pae && nxe && e & (1 << 63) != 0 {
                exec = false;
            }
        }
        let addr_hi = if !pae { 31 } else { m - 1 };
        if leaf {
            let size = 1u64 << lv.index_lo;
            let pa = if !pae && lv.number == 2 {
                (e & bits(22, 31)) | (((e >> 13) & 0xff) << 32) | (la & (size - 1))
            } else {
                (e & bits(lv.index_lo, addr_hi)) | (la & (size - 1))
            };
            if let Some(a) = access
                && !allowed(r, a, write, user, exec)
            {
                return Outcome::Protection { code: code | 1 };
            }
            return Outcome::Ok { pa, write, user, exec, size };
        }
        table = e & bits(12, addr_hi);
    }
    unreachable!("level 1 always maps a page")
}

/// Section 4.6: whether an access to a page with these rights is allowed.
fn allowed(r: &Regs, a: Access, write: bool, user: bool, exec: bool) -> bool {
    let wp = r.cr0 & CR0_WP != 0;
    let smep = r.cr4 & CR4_SMEP != 0;
    let smap = r.cr4 & CR4_SMAP != 0;
    if a.user {
        // User-mode accesses need a user-mode address; writes need R/W
        // (whatever CR0.WP says); fetches need XD clear.
        return user
            && match a.kind {
                Kind::Read => true,
                Kind::Write => write,
                Kind::Fetch => exec,
            };
    }
    match a.kind {
        Kind::Read => !(user && smap && !a.ac),
        Kind::Write => !(user && smap && !a.ac) && (write || !wp),
        Kind::Fetch => exec && !(user && smep),
    }
}

/// Fills `count` pages at `base`, `base + 4096`, ... with random entries of
/// `entry_bytes` (4 for 32-bit paging, else 8): mostly present, pointing at
/// one of the pages (so walks go deep), with random R/W, U/S, XD and PS,
/// and now and then a reserved bit (when `reserved_bits`), a pointer outside
/// the pages, or a not-present entry.
pub fn random_tables(
    rng: &mut impl FnMut() -> u64,
    base: u64,
    count: u64,
    entry_bytes: usize,
    reserved_bits: bool,
) -> Memory {
    let addr_hi = if entry_bytes == 4 { 31 } else { 51 };
    let mut mem = Memory::default();
    for k in 0..count {
        let mut page = vec![0u8; 4096];
        for slot in page.chunks_mut(entry_bytes) {
            let r = rng();
            let mut e = if r % 10 == 0 { rng() & !1 } else { 1 };
            if e & 1 != 0 {
                e |= rng() & ((1 << 1) | (1 << 2)); // R/W, U/S
                if r % 5 == 1 {
                    e |= 1 << 63;
                }
                e |= if r % 4 == 2 {
                    // PS: a large page, aligned to 1 GiB, 2 or 4 MiB, or
                    // (for reserved bits in the low address bits) not.
                    let addr = rng() & bits(12, addr_hi);
                    (1 << 7)
                        | match (r >> 16) % 4 {
                            0 => addr & !bits(12, 29),
                            1 => addr & !bits(12, 20),
                            2 => addr & !bits(12, 21),
                            _ => addr,
                        }
                } else if (r >> 8) % 16 == 0 {
                    rng() & bits(12, addr_hi)
                } else {
                    base + (rng() % count) * 4096
                };
                if reserved_bits && (r >> 12) % 12 == 0 {
                    e |= 1 << (rng() % (8 * entry_bytes as u64));
                }
            }
            slot.copy_from_slice(&e.to_le_bytes()[..entry_bytes]);
        }
        mem.pages.insert(base + k * 4096, page);
    }
    mem
}
