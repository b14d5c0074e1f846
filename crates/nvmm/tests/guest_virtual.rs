//! Guest memory by virtual address: reads and writes through the guest's
//! page tables with short counts, debugger writes past write protection,
//! and the list of mappings. Oracles: the guest CPU itself (it loads what
//! we wrote, we read what it stored) and KVM's own translation
//! (`KVM_TRANSLATE`).

mod common;

use common::*;
use nvmm::assist::mmu::{Mapping, PageProt};
use nvmm::x86::PagingMode;
use nvmm::x86::bits::pte;
use nvmm::x86::paging::PageTables;
use nvmm::{Cr, Exit, Gpr, Prot, StateMask, Transfer};

/// Where the test's own page tables go (guest RAM).
const TABLES: u64 = 0x20_0000;
/// A read-only guest physical mapping (firmware-like), outside RAM.
const ROM: u64 = 0x50_0000;

/// A long-mode guest whose page tables map: the low 2 MiB identity (code,
/// stack, GDT), 0x4000_0000 → 0x30_0000 writable (4 KiB), 0x4000_1000 →
/// 0x30_1000 read-only, 0x4000_2000 → ROM writable in the page tables,
/// 0x4000_3000 → 0x10_0000_0000 (not guest RAM), and nothing at
/// 0x4000_4000.
fn guest(code: &[u8]) -> (Guest, Vec<(u64, u64, u64, u64)>) {
    let mut g = long_mode(code);
    let rom = g.machine.map_anonymous(ROM, 0x1000, Prot::READ | Prot::EXEC);
    rom.expect("map the read-only page");
    let mut t = PageTables::new(PagingMode::Level4, TABLES);
    let maps = vec![
        (0, 0, 2 << 20, pte::RW),
        (0x4000_0000, 0x30_0000, 0x1000, pte::RW),
        (0x4000_1000, 0x30_1000, 0x1000, 0),
        (0x4000_2000, ROM, 0x1000, pte::RW),
        (0x4000_3000, 0x10_0000_0000, 0x1000, pte::RW),
    ];
    for &(gva, gpa, size, flags) in &maps {
        t.map(gva, gpa, size, flags).unwrap();
    }
    for (gpa, page) in t.pages() {
        g.machine.write_gpa(gpa, page).unwrap();
    }
    g.vcpu.update(StateMask::CRS, |s| s.crs[Cr::Cr3] = t.cr3()).unwrap();
    (g, maps)
}

#[test]
fn reads_and_writes_agree_with_the_guest_cpu() {
    nvmm_testkit::kvm_or_skip!();
    // mov rax, [rsi] ; mov [rdi], rbx ; out 0x10, al
    let (mut g, _) = guest(&[0x48, 0x8b, 0x06, 0x48, 0x89, 0x1f, 0xe6, 0x10]);
    // Our write, the guest's load.
    let at = 0x4000_0ff8;
    let t = g.vcpu.write_virtual(at, &0x1122_3344_5566_7788u64.to_le_bytes()).unwrap();
    assert_eq!(t, Transfer { done: 8, failed_at: None });
    g.vcpu
        .update(StateMask::GPRS, |s| {
            s.gprs[Gpr::Rsi] = at;
            s.gprs[Gpr::Rdi] = 0x4000_0800;
            s.gprs[Gpr::Rbx] = 0xdead_beef_cafe_f00d;
        })
        .unwrap();
    match g.vcpu.run().unwrap() {
        Exit::Io(io) => assert_eq!(io.port(), 0x10),
        e => panic!("{e:?}"),
    }
    g.vcpu.get_state(StateMask::GPRS).unwrap();
    let rax = g.vcpu.state().gprs[Gpr::Rax];
    assert_eq!(rax, 0x1122_3344_5566_7788, "the guest loads what we wrote");
    let mut b = [0u8; 8];
    assert_eq!(g.vcpu.read_virtual(0x4000_0800, &mut b).unwrap(), Transfer { done: 8, failed_at: None });
    assert_eq!(u64::from_le_bytes(b), 0xdead_beef_cafe_f00d, "we read what the guest stored");
}

#[test]
fn short_counts_stop_at_the_first_page_that_fails() {
    nvmm_testkit::kvm_or_skip!();
    let (mut g, _) = guest(&[0xf4]);
    let mut b = [0u8; 32];
    // Writable, then read-only in the page tables.
    let t = g.vcpu.write_virtual(0x4000_0ff0, &[7; 32]).unwrap();
    assert_eq!(t, Transfer { done: 16, failed_at: Some(0x4000_1000) });
    // The debugger's write goes through the read-only page.
    let t = g.vcpu.write_virtual_debug(0x4000_0ff0, &[9; 32]).unwrap();
    assert_eq!(t, Transfer { done: 32, failed_at: None });
    g.machine.read_gpa(0x30_1000, &mut b[..16]).unwrap();
    assert_eq!(b[..16], [9; 16]);
    // Writable in the page tables, read-only guest physical mapping.
    // Nothing written: EFAULT, as ptrace's PT_IO.
    assert_eq!(g.vcpu.write_virtual(0x4000_2000, &[1; 4]).unwrap_err().errno(), libc::EFAULT);
    assert_eq!(g.vcpu.write_virtual_debug(0x4000_2000, &[1; 4]).unwrap().done, 4);
    g.machine.read_gpa(ROM, &mut b[..4]).unwrap();
    assert_eq!(b[..4], [1; 4]);
    // Mapped to something that is not guest RAM, and not mapped at all.
    let t = g.vcpu.read_virtual(0x4000_2ff8, &mut b[..16]).unwrap();
    assert_eq!(t, Transfer { done: 8, failed_at: Some(0x4000_3000) });
    let e = g.vcpu.read_virtual(0x4000_4000, &mut b[..16]).unwrap_err();
    assert_eq!(e.errno(), libc::EFAULT);
    assert!(e.to_string().contains("0x40004000"), "{e}");
    assert_eq!(g.vcpu.write_virtual_debug(0x4000_4000, &[1]).unwrap_err().errno(), libc::EFAULT);
    // An empty transfer is not an error, wherever it points.
    assert_eq!(g.vcpu.read_virtual(0x4000_4000, &mut []).unwrap(), Transfer { done: 0, failed_at: None });
}

#[test]
fn mappings_are_the_page_tables_and_match_kvm() {
    nvmm_testkit::kvm_or_skip!();
    let (mut g, maps) = guest(&[0xf4]);
    let list = g.vcpu.virtual_mappings().unwrap();
    let rights = |flags: u64| {
        // The leaves have no US bit: supervisor pages.
        let mut p = PageProt::READ | PageProt::EXEC;
        if flags & pte::RW != 0 {
            p |= PageProt::WRITE;
        }
        PageProt(p)
    };
    // 0x4000_0000 and 0x4000_1000 differ in rights; no run merges.
    let want: Vec<Mapping> =
        maps.iter().map(|&(gva, gpa, size, flags)| Mapping { gva, gpa, size, prot: rights(flags) }).collect();
    assert_eq!(list, want);
    // KVM's walker agrees on every page of every run, and finds nothing
    // past them.
    for m in &list {
        for off in (0..m.size).step_by(0x1000).take(64) {
            assert_eq!(g.vcpu.kvm_translate(m.gva + off).unwrap(), Some(m.gpa + off), "{m:x?}");
        }
    }
    assert_eq!(g.vcpu.kvm_translate(0x4000_4000).unwrap(), None);
    assert_eq!(g.vcpu.kvm_translate(2 << 20).unwrap(), None);
}

/// A 1 GiB page (PS in a PDPTE) translates when the guest's CPUID offers
/// 1 GiB pages (leaf 0x8000_0001, EDX bit 26) and is a reserved-bit fault
/// when the VMM's CPUID mask hides them (SDM vol. 3, 4.5.5), as KVM's own
/// walker finds for the same tables and CPUID: as the host offers them,
/// hidden, and set by the VMM's mask, which gives them only where the CPU
/// has them. The tables are written by hand here, not with the library's
/// builder.
#[test]
fn one_gib_pages_follow_the_guests_cpuid() {
    use nvmm::VcpuConf;
    use nvmm::x86::{CpuidAction, CpuidConf, CpuidRegs};
    nvmm_testkit::kvm_or_skip!();
    const P_RW: u64 = 0x3;
    const PS: u64 = 0x80;
    let mut offered = None;
    for (hide, offer) in [(false, false), (true, false), (false, true)] {
        let mut g = long_mode(&[0xf4]);
        let bit = CpuidRegs { edx: 1 << 26, ..Default::default() };
        if hide || offer {
            let (set, del) = if hide { (CpuidRegs::default(), bit) } else { (bit, CpuidRegs::default()) };
            let conf = CpuidConf { leaf: 0x8000_0001, action: CpuidAction::Mask { set, del } };
            g.vcpu.configure(VcpuConf::Cpuid(conf)).unwrap();
        }
        // PML4[0] -> PDPT; PDPT[0] -> PD (a 2 MiB identity page for the
        // code and stack); PDPT[1]: 0x4000_0000 is a 1 GiB page at 0.
        let (pml4, pdpt, pd) = (TABLES, TABLES + 0x1000, TABLES + 0x2000);
        g.machine.write_gpa(pml4, &(pdpt | P_RW).to_le_bytes()).unwrap();
        g.machine.write_gpa(pdpt, &(pd | P_RW).to_le_bytes()).unwrap();
        g.machine.write_gpa(pdpt + 8, &(PS | P_RW).to_le_bytes()).unwrap();
        g.machine.write_gpa(pd, &(PS | P_RW).to_le_bytes()).unwrap();
        g.vcpu.update(StateMask::CRS, |s| s.crs[Cr::Cr3] = pml4).unwrap();
        let ours = g.vcpu.gva_to_gpa(0x4000_1234).ok().map(|(gpa, _)| gpa);
        let kvm = g.vcpu.kvm_translate(0x4000_1234).unwrap();
        assert_eq!(ours, kvm, "1 GiB pages hidden: {hide}, offered by the program: {offer}");
        if hide {
            assert_eq!(ours, None, "PS in a PDPTE is reserved without 1 GiB pages");
        } else if offer {
            let host = offered.expect("measured first");
            assert_eq!(ours.is_some(), host, "a VMM's mask gives 1 GiB pages only where the CPU has them");
        } else {
            offered = Some(ours.is_some());
            if let Some(gpa) = ours {
                assert_eq!(gpa, 0x1234);
            }
        }
    }
    println!("this host offers 1 GiB pages to guests: {offered:?}");
}

/// After the guest switches page tables itself, guest-virtual accesses
/// and `gva_to_gpa` follow the new tables (the view fetches the control registers the run
/// changed): the guest's own loads are the oracle.
#[test]
fn virtual_accesses_follow_page_tables_the_guest_switched_to() {
    nvmm_testkit::kvm_or_skip!();
    // mov cr3, rax ; mov rbx, [rsi] ; out 0x10, al ; hlt
    let (mut g, _) = guest(&[0x0f, 0x22, 0xd8, 0x48, 0x8b, 0x1e, 0xe6, 0x10, 0xf4]);
    const TABLES2: u64 = 0x38_0000;
    let mut t = PageTables::new(PagingMode::Level4, TABLES2);
    t.map(0, 0, 2 << 20, pte::RW).unwrap();
    t.map(0x4000_0000, 0x30_1000, 0x1000, pte::RW).unwrap();
    for (gpa, page) in t.pages() {
        g.machine.write_gpa(gpa, page).unwrap();
    }
    g.machine.write_gpa(0x30_0000, &0x1111_1111_1111_1111u64.to_le_bytes()).unwrap();
    g.machine.write_gpa(0x30_1000, &0x2222_2222_2222_2222u64.to_le_bytes()).unwrap();
    // The old tables cached before the run.
    let mut b = [0u8; 8];
    g.vcpu.read_virtual(0x4000_0000, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), 0x1111_1111_1111_1111);
    g.vcpu
        .update(StateMask::GPRS, |s| {
            s.gprs[Gpr::Rax] = t.cr3();
            s.gprs[Gpr::Rsi] = 0x4000_0000;
        })
        .unwrap();
    match g.vcpu.run().unwrap() {
        Exit::Io(io) => assert_eq!(io.port(), 0x10),
        e => panic!("{e:?}"),
    }
    // nvmm_gva_to_gpa follows them too (asked first, before anything
    // else fetched the control registers).
    assert_eq!(g.vcpu.gva_to_gpa(0x4000_0008).unwrap().0, 0x30_1008);
    // What the guest loaded through its new tables, we read.
    g.vcpu.read_virtual(0x4000_0000, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), gpr(&mut g.vcpu, Gpr::Rbx));
    assert_eq!(u64::from_le_bytes(b), 0x2222_2222_2222_2222);
}
