//! The MMU walker against two oracles: a walker written from the SDM in
//! the test tree (`oracle/paging_model.rs`, no library code) on random page
//! tables in every paging mode, rights, page sizes and #PF error codes
//! included; and KVM's own walker (`KVM_TRANSLATE`) on the same kind of
//! tables inside a guest, in every mode the host runs. KVM reports only
//! whether and where an address translates, so rights and error codes are
//! the model's to check.

mod common;
#[path = "oracle/paging_model.rs"]
mod paging_model;

use common::*;
use nvmm::assist::mmu::{self, AccessKind, PageProt, PagingRegs, WalkError};
use nvmm::x86::modes;
use nvmm::{Cr, Gpr, Msr, StateMask, Vcpu};
use paging_model::{
    CR0_PE, CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_LME, EFER_NXE, Kind, Memory,
    Outcome, Regs,
};

/// Guest physical address of the random page tables.
const TABLES: u64 = 0x10_0000;
/// Pages of random tables.
const TABLE_PAGES: u64 = 12;
/// Guest physical address of the tables the 32-bit guests turn paging on
/// with (identity map of the first 2 or 4 MiB).
const BOOT_TABLES: u64 = 0x20_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Bits32,
    Pae,
    Level4,
    Level5,
}

impl Mode {
    fn entry_bytes(self) -> usize {
        if self == Mode::Bits32 { 4 } else { 8 }
    }
}

struct Phys<'a>(&'a Memory);

impl mmu::PhysMemory for Phys<'_> {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let Some(page) = self.0.pages.get(&(gpa & !0xfff)) else { return false };
        let off = (gpa & 0xfff) as usize;
        match page.get(off..off + buf.len()) {
            Some(b) => {
                buf.copy_from_slice(b);
                true
            }
            None => false,
        }
    }
}

/// The model's registers as the library's.
fn paging_regs(r: &Regs) -> PagingRegs {
    PagingRegs { cr0: r.cr0, cr3: r.cr3, cr4: r.cr4, efer: r.efer, phys_bits: r.maxphyaddr as u8, gib_pages: r.page1gb }
}

/// The library's answer in the model's terms.
fn ours(mem: &Memory, r: &Regs, gva: u64, access: Option<paging_model::Access>) -> Outcome {
    let regs = paging_regs(r);
    let result = match access {
        None => mmu::walk(&Phys(mem), &regs, gva),
        Some(a) => {
            let kind = match a.kind {
                Kind::Read => AccessKind::Read,
                Kind::Write => AccessKind::Write,
                Kind::Fetch => AccessKind::Fetch,
            };
            mmu::translate(&Phys(mem), &regs, gva, mmu::Access { kind, user: a.user, ac: a.ac })
        }
    };
    match result {
        Ok(t) => Outcome::Ok {
            pa: t.gpa,
            write: t.prot.has(PageProt::WRITE),
            user: t.prot.has(PageProt::USER),
            exec: t.prot.has(PageProt::EXEC),
            size: t.page_size,
        },
        Err(WalkError::NonCanonical { .. }) => Outcome::NonCanonical,
        Err(WalkError::NotPresent { level, error_code, .. }) => Outcome::NotPresent { level, code: error_code },
        Err(WalkError::Reserved { level, error_code, .. }) => Outcome::Reserved { level, code: error_code },
        Err(WalkError::Protection { error_code, .. }) => Outcome::Protection { code: error_code },
        Err(WalkError::TableUnreadable { gpa }) => Outcome::Unreadable { pa: gpa },
        Err(WalkError::InvalidMode) => Outcome::Invalid,
    }
}

/// Random registers for `mode`: CR3 at one of the table pages (for PAE at
/// a random 32-byte slot of one), WP, PSE, SMEP, SMAP, NXE, MAXPHYADDR and
/// 1 GiB pages at random.
fn random_regs(rng: &mut Rng, mode: Mode) -> Regs {
    let pick = |rng: &mut Rng, bit: u64| if rng.next() % 2 == 0 { bit } else { 0 };
    let mut cr3 = TABLES + (rng.next() % TABLE_PAGES) * 4096;
    if mode == Mode::Pae {
        cr3 += (rng.next() % 128) * 32;
    }
    let mut cr4 = pick(rng, CR4_SMEP) | pick(rng, CR4_SMAP) | pick(rng, CR4_PSE);
    let mut efer = pick(rng, EFER_NXE);
    match mode {
        Mode::Bits32 => {}
        Mode::Pae => cr4 |= CR4_PAE,
        Mode::Level4 => {
            cr4 |= CR4_PAE;
            efer |= EFER_LME | EFER_LMA;
        }
        Mode::Level5 => {
            cr4 |= CR4_PAE | CR4_LA57;
            efer |= EFER_LME | EFER_LMA;
        }
    }
    let maxphyaddr = [36, 39, 40, 42, 46, 48, 52][(rng.next() % 7) as usize];
    Regs { cr0: CR0_PE | CR0_PG | pick(rng, CR0_WP), cr3, cr4, efer, maxphyaddr, page1gb: rng.next() % 2 == 0 }
}

/// A random linear address: canonical most of the time in long mode.
fn random_la(rng: &mut Rng, mode: Mode) -> u64 {
    let la = rng.next();
    let width = match mode {
        Mode::Bits32 | Mode::Pae => return la & 0xffff_ffff,
        Mode::Level4 => 48,
        Mode::Level5 => 57,
    };
    if rng.next() % 8 == 0 {
        return la;
    }
    ((la << (64 - width)) as i64 >> (64 - width)) as u64
}

fn random_access(rng: &mut Rng) -> Option<paging_model::Access> {
    let r = rng.next();
    let kind = match r % 4 {
        0 => return None,
        1 => Kind::Read,
        2 => Kind::Write,
        _ => Kind::Fetch,
    };
    Some(paging_model::Access { kind, user: r & 4 != 0, ac: r & 8 != 0 })
}

/// The library's walker agrees with the SDM model on every outcome: the
/// physical address, rights and page size of a translation, or the kind,
/// level and #PF error code of a fault.
fn compare_with_model(mode: Mode, seed: u64) -> [usize; 4] {
    let mut rng = Rng(seed);
    // [translated, not present, reserved, protection]
    let mut seen = [0usize; 4];
    let mut sizes = std::collections::BTreeMap::new();
    for round in 0..40 {
        let mem = paging_model::random_tables(&mut || rng.next(), TABLES, TABLE_PAGES, mode.entry_bytes(), true);
        for _ in 0..2000 {
            let r = random_regs(&mut rng, mode);
            let la = random_la(&mut rng, mode);
            let access = random_access(&mut rng);
            let model = paging_model::walk(&mem, &r, la, access);
            let got = ours(&mem, &r, la, access);
            assert_eq!(got, model, "{mode:?} round {round}: la {la:#x} {access:?} {r:x?}");
            match model {
                Outcome::Ok { size, .. } => {
                    seen[0] += 1;
                    *sizes.entry(size).or_insert(0usize) += 1;
                }
                Outcome::NotPresent { .. } => seen[1] += 1,
                Outcome::Reserved { .. } => seen[2] += 1,
                Outcome::Protection { .. } => seen[3] += 1,
                _ => {}
            }
        }
    }
    // The random tables reach every outcome often enough to mean something.
    assert!(seen.iter().all(|&n| n > 500), "{mode:?}: outcomes {seen:?}");
    let expected: &[u64] = match mode {
        Mode::Bits32 => &[4096, 4 << 20],
        Mode::Pae => &[4096, 2 << 20],
        Mode::Level4 | Mode::Level5 => &[4096, 2 << 20, 1 << 30],
    };
    for size in expected {
        assert!(sizes.get(size).is_some_and(|&n| n > 25), "{mode:?}: translations by page size {sizes:?}");
    }
    seen
}

#[test]
fn bits32_paging_matches_the_sdm_model() {
    compare_with_model(Mode::Bits32, 1);
}

#[test]
fn pae_paging_matches_the_sdm_model() {
    compare_with_model(Mode::Pae, 2);
}

#[test]
fn four_level_paging_matches_the_sdm_model() {
    compare_with_model(Mode::Level4, 3);
}

#[test]
fn five_level_paging_matches_the_sdm_model() {
    compare_with_model(Mode::Level5, 4);
}

#[test]
fn paging_off_and_long_mode_without_pae_match_the_sdm_model() {
    let mem = Memory::default();
    let mut rng = Rng(5);
    for _ in 0..1000 {
        let la = rng.next();
        let mut r = random_regs(&mut rng, Mode::Level4);
        r.cr0 &= !CR0_PG;
        assert_eq!(ours(&mem, &r, la, random_access(&mut rng)), paging_model::walk(&mem, &r, la, None));
        r.cr0 |= CR0_PG;
        r.cr4 &= !CR4_PAE;
        assert_eq!(ours(&mem, &r, la, None), Outcome::Invalid);
    }
}

/// One translation the model finds: (linear address, physical address,
/// writable, user, executable, size).
type Page = (u64, u64, bool, bool, bool, u64);

/// Every translation of the tables, found by asking the SDM model at each
/// address in turn and skipping what a not-present or reserved entry at
/// some level leaves out (the span of that entry), in linear-address
/// order (lower half first, then the sign-extended upper half).
fn model_pages(mem: &Memory, r: &Regs, mode: Mode) -> Vec<Page> {
    let (va_bits, index_bits) = match mode {
        Mode::Bits32 => (32u32, 10u32),
        Mode::Pae => (32, 9),
        Mode::Level4 => (48, 9),
        Mode::Level5 => (57, 9),
    };
    let long = matches!(mode, Mode::Level4 | Mode::Level5);
    let span = |level: u8| 1u128 << (12 + index_bits * (u32::from(level) - 1));
    let mut out = Vec::new();
    let mut la: u128 = 0;
    while la < 1u128 << va_bits {
        let mut addr = la as u64;
        if long && addr >> (va_bits - 1) != 0 {
            addr |= !((1u64 << va_bits) - 1);
        }
        la += match paging_model::walk(mem, r, addr, None) {
            Outcome::Ok { pa, write, user, exec, size } => {
                assert_eq!(addr % size, 0, "{mode:?}: a {size:#x} page met off its start at {addr:#x}");
                out.push((addr, pa, write, user, exec, size));
                u128::from(size)
            }
            Outcome::NotPresent { level, .. } | Outcome::Reserved { level, .. } => span(level),
            // A table outside memory (32-bit paging's PDE with PS and no
            // PSE points anywhere): one page at a time.
            Outcome::Unreadable { .. } => 4096,
            other => panic!("{mode:?}: {other:?} at {addr:#x}"),
        };
    }
    out
}

/// [`model_pages`] merged as `mmu::mappings` documents: adjacent pages
/// whose physical pages follow each other and whose rights match.
fn merged(pages: &[Page]) -> Vec<Page> {
    let mut runs: Vec<Page> = Vec::new();
    for &(la, pa, w, u, x, size) in pages {
        if let Some(last) = runs.last_mut()
            && last.0.wrapping_add(last.5) == la
            && last.1 + last.5 == pa
            && (last.2, last.3, last.4) == (w, u, x)
        {
            last.5 += size;
            continue;
        }
        runs.push((la, pa, w, u, x, size));
    }
    runs
}

/// Random tables thinned out so that their walks end (about one entry in
/// 64 kept; in PAE's three levels one in 8, and the four PDPTEs at CR3),
/// with every table pointer of a long-mode or PAE entry inside the table
/// pages or beyond MAXPHYADDR (no walk meets a table outside memory
/// there); some entries are clean table pointers without their P bit, or
/// with a bit set above MAXPHYADDR.
fn sparse_tables(rng: &mut Rng, mode: Mode, r: &Regs) -> Memory {
    let n = mode.entry_bytes();
    let mut mem = paging_model::random_tables(&mut || rng.next(), TABLES, TABLE_PAGES, n, true);
    for k in 0..TABLE_PAGES {
        for slot in 0..4096 / n {
            let at = TABLES + k * 4096 + (slot * n) as u64;
            let e = mem.read(at, n).unwrap();
            let frame = e & 0x000f_ffff_ffff_f000;
            // (One beyond MAXPHYADDR stays: its reserved bits end the walk.)
            let outside = n == 8
                && e & 0x80 == 0
                && frame >> r.maxphyaddr == 0
                && !(TABLES..TABLES + TABLE_PAGES * 4096).contains(&frame);
            let pdpte = mode == Mode::Pae && (r.cr3..r.cr3 + 32).contains(&at);
            let keep = if mode == Mode::Pae { 8 } else { 64 };
            if (rng.next() % keep != 0 && !pdpte) || outside {
                mem.write(at, n, 0);
            } else if n == 8 && r.maxphyaddr < 52 && rng.next() % 6 == 0 {
                // A present table pointer with a bit set above MAXPHYADDR
                // (reserved: the walk ends there).
                let bit = r.maxphyaddr + (rng.next() % u64::from(52 - r.maxphyaddr)) as u32;
                mem.write(at, n, (TABLES + (rng.next() % TABLE_PAGES) * 4096) | (1 << bit) | 1);
            } else if rng.next() % 6 == 0 {
                // Not present, but otherwise a clean pointer to a table:
                // only the P bit keeps a walk out.
                mem.write(at, n, (TABLES + (rng.next() % TABLE_PAGES) * 4096) | (rng.next() & 6));
            } else if n == 8 && !pdpte && rng.next() % 4 == 0 {
                // A large page below 4 GiB, 2 MiB or 1 GiB aligned (a PS
                // entry of random address rarely fits MAXPHYADDR).
                let align = if rng.next() % 2 == 0 { 0xffe0_0000 } else { 0xc000_0000 };
                mem.write(at, n, (rng.next() & align) | 0x80 | (rng.next() & 6) | 1);
            }
        }
    }
    mem
}

/// `mmu::mappings` lists what the SDM model translates, run for run: every
/// page with its physical address and rights, entries with reserved bits
/// and not-present ones left out, adjacent pages merged; on random sparse
/// tables in every paging mode with PSE, NXE, MAXPHYADDR and 1 GiB pages
/// varied.
#[test]
fn mappings_match_the_sdm_model() {
    let mut rng = Rng(6);
    for mode in [Mode::Bits32, Mode::Pae, Mode::Level4, Mode::Level5] {
        let mut pages = 0;
        let mut sizes = std::collections::BTreeSet::new();
        for round in 0..12 {
            let r = random_regs(&mut rng, mode);
            let mem = sparse_tables(&mut rng, mode, &r);
            let model = model_pages(&mem, &r, mode);
            pages += model.len();
            sizes.extend(model.iter().map(|p| p.5));
            let ours: Vec<Page> = mmu::mappings(&Phys(&mem), &paging_regs(&r))
                .iter()
                .map(|m| {
                    let p = m.prot;
                    (m.gva, m.gpa, p.has(PageProt::WRITE), p.has(PageProt::USER), p.has(PageProt::EXEC), m.size)
                })
                .collect();
            assert_eq!(ours, merged(&model), "{mode:?} round {round}: {r:x?}");
        }
        // The tables map enough, in pages of more than one size, to mean
        // something.
        assert!(pages > 100 && sizes.len() > 1, "{mode:?}: {pages} pages, sizes {sizes:?}");
    }
}

/// The guest runs CPUID (MAXPHYADDR, 1 GiB pages) and, for the 32-bit
/// modes, turns paging on itself with identity-mapping boot tables (KVM
/// drops CR0.PG when `KVM_SET_SREGS` turns paging on outside long mode);
/// then KVM translates through random tables in guest RAM, and every answer
/// agrees with the model's and ours. Hosts whose KVM cannot run 32-bit or
/// PAE paging at all (nested ones; a bare-KVM probe tells) leave those
/// modes to the model.
fn compare_with_kvm(mode: Mode) {
    let long = matches!(mode, Mode::Level4 | Mode::Level5);
    if !long && !nvmm_testkit::host::runs_legacy_paging(mode == Mode::Pae).expect("raw KVM probe") {
        // Proven with bare KVM ioctls, not with the library: the SDM model
        // test of this mode is the oracle on such hosts.
        eprintln!(
            "{mode:?} paging: this host's KVM cannot run it (bare-KVM probe); checked against the SDM model only"
        );
        return;
    }
    let mut code = vec![
        0xb8, 0x08, 0x00, 0x00, 0x80, // mov eax, 0x80000008
        0x0f, 0xa2, //                   cpuid
        0x89, 0xc6, //                   mov esi, eax
        0xb8, 0x01, 0x00, 0x00, 0x80, // mov eax, 0x80000001
        0x0f, 0xa2, //                   cpuid
        0x89, 0xd7, //                   mov edi, edx
    ];
    if !long {
        code.extend([
            0x0f, 0x20, 0xc0, //             mov eax, cr0
            0x0d, 0x00, 0x00, 0x01, 0x80, // or eax, 0x80010000 (PG, WP)
            0x0f, 0x22, 0xc0, //             mov cr0, eax
        ]);
    }
    code.push(0xf4); // hlt
    let mut g = protected_mode(&code);
    let boot_cr4 = match mode {
        Mode::Bits32 => {
            // PDE 0: a 4 MiB page at 0.
            g.machine.write_gpa(BOOT_TABLES, &0x83u32.to_le_bytes()).unwrap();
            CR4_PSE
        }
        _ => {
            // PDPTE 0 -> PD; PDE 0: a 2 MiB page at 0.
            g.machine.write_gpa(BOOT_TABLES, &((BOOT_TABLES + 0x1000) | 1).to_le_bytes()).unwrap();
            g.machine.write_gpa(BOOT_TABLES + 0x1000, &0x83u64.to_le_bytes()).unwrap();
            CR4_PAE
        }
    };
    g.vcpu
        .update(StateMask::CRS, |s| {
            s.crs[Cr::Cr3] = BOOT_TABLES;
            s.crs[Cr::Cr4] |= boot_cr4;
        })
        .unwrap();
    run_to_halt(&mut g.vcpu);
    let maxphyaddr = (gpr(&mut g.vcpu, Gpr::Rsi) & 0xff) as u32;
    let page1gb = gpr(&mut g.vcpu, Gpr::Rdi) & (1 << 26) != 0;
    let mut rng = Rng(0x1234_5678_9abc_def1 ^ mode as u64);
    let mut hits = 0;
    for round in 0..8 {
        // No reserved bits in PAE: KVM reloads the PDPTEs on KVM_SET_SREGS
        // and refuses ones with reserved bits. The model test covers them.
        let reserved = mode != Mode::Pae;
        let mem = paging_model::random_tables(&mut || rng.next(), TABLES, TABLE_PAGES, mode.entry_bytes(), reserved);
        for (&gpa, page) in &mem.pages {
            g.machine.write_gpa(gpa, page).unwrap();
        }
        let mut r = random_regs(&mut rng, mode);
        r.maxphyaddr = maxphyaddr;
        r.page1gb = page1gb;
        // KVM_TRANSLATE checks a supervisor read, with SMAP as KVM sees it:
        // leave SMAP out.
        r.cr4 &= !CR4_SMAP;
        if mode == Mode::Pae {
            r.cr3 = TABLES;
            // The four PDPTEs must be valid for KVM to take CR3.
            for i in 0..4u64 {
                let e = (TABLES + (rng.next() % TABLE_PAGES) * 4096) | 1;
                g.machine.write_gpa(TABLES + i * 8, &e.to_le_bytes()).unwrap();
            }
        }
        g.vcpu
            .update(StateMask::CRS | StateMask::MSRS | StateMask::SEGS, |s| {
                if long {
                    modes::long_mode(s, GDT, r.cr3);
                }
                s.crs[Cr::Cr0] = (s.crs[Cr::Cr0] & !CR0_WP) | (r.cr0 & CR0_WP);
                s.crs[Cr::Cr3] = r.cr3;
                s.crs[Cr::Cr4] = r.cr4;
                s.msrs[Msr::Efer] = r.efer;
            })
            .unwrap();
        g.vcpu.get_state(StateMask::CRS | StateMask::MSRS).unwrap();
        let s = g.vcpu.state();
        r.cr0 = s.crs[Cr::Cr0];
        assert_eq!(r.cr0 & CR0_PG, CR0_PG, "{mode:?}: KVM turned paging off");
        assert_eq!(s.crs[Cr::Cr4], r.cr4, "{mode:?}: KVM changed CR4");
        assert_eq!(s.msrs[Msr::Efer], r.efer, "{mode:?}: KVM changed EFER");
        let model_mem = if mode == Mode::Pae {
            let mut m = mem.clone();
            let page = m.pages.get_mut(&TABLES).unwrap();
            let mut first = [0u8; 32];
            g.machine.read_gpa(TABLES, &mut first).unwrap();
            page[..32].copy_from_slice(&first);
            m
        } else {
            mem
        };
        for _ in 0..128 {
            let la = random_la(&mut rng, mode);
            let model = paging_model::walk(&model_mem, &r, la, None);
            assert_eq!(ours(&model_mem, &r, la, None), model, "{mode:?} round {round}: {la:#x}");
            let model_pa = match model {
                Outcome::Ok { pa, .. } => Some(pa),
                // KVM_TRANSLATE does not check canonicality (it walks
                // bits 47:0 or 56:0); the model and ours do.
                Outcome::NonCanonical => continue,
                _ => None,
            };
            let kvm = kvm_translate(&mut g.vcpu, la);
            assert_eq!(kvm, model_pa, "{mode:?} round {round}: KVM and the model disagree on {la:#x} ({model:?})");
            hits += usize::from(kvm.is_some());
        }
    }
    assert!(hits >= 100, "{mode:?}: only {hits} translations");
}

fn kvm_translate(vcpu: &mut Vcpu, gva: u64) -> Option<u64> {
    vcpu.kvm_translate(gva).unwrap()
}

#[test]
fn bits32_paging_matches_kvm_where_the_host_runs_it() {
    nvmm_testkit::kvm_or_skip!();
    compare_with_kvm(Mode::Bits32);
}

#[test]
fn pae_paging_matches_kvm_where_the_host_runs_it() {
    nvmm_testkit::kvm_or_skip!();
    compare_with_kvm(Mode::Pae);
}

#[test]
fn four_level_paging_matches_kvm() {
    nvmm_testkit::kvm_or_skip!();
    compare_with_kvm(Mode::Level4);
}

/// Five-level paging needs a host CPU with LA57; where it has none, the
/// SDM model (`five_level_paging_matches_the_sdm_model`) is the oracle.
#[test]
fn five_level_paging_matches_kvm_where_the_host_has_la57() {
    nvmm_testkit::kvm_or_skip!();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
    if cpuinfo.split_whitespace().any(|w| w == "la57") {
        compare_with_kvm(Mode::Level5);
    } else {
        eprintln!("five-level paging: the host CPU has no LA57; checked against the SDM model only");
    }
}
