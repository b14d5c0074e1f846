//! The MMU walker against KVM's own (`KVM_TRANSLATE`) in every paging mode
//! the host supports.

mod common;

use common::*;
use nvmm::x86::modes::{self, cr0, cr4, efer};
use nvmm::x86::paging::{PageTables, PagingMode, pte};
use nvmm::{Cr, Msr, StateMask, Vcpu};

const TABLES: u64 = 0x10_0000;

fn compare(mode: PagingMode, sizes: &[u64], va_bits: u32) {
    let mut g = real_mode(&[0xf4]);
    let mut t = PageTables::new(mode, TABLES);
    let mut rng = Rng(0x1234_5678_9abc_def1 ^ u64::from(va_bits));
    let mut mapped = Vec::new();
    while mapped.len() < 64 {
        let size = sizes[(rng.next() % sizes.len() as u64) as usize];
        let mut gva = rng.next() & ((1u64 << va_bits) - 1) & !(size - 1);
        if va_bits > 32 && gva >> (va_bits - 1) != 0 {
            gva |= !((1u64 << va_bits) - 1);
        }
        let gpa_limit = if mode == PagingMode::Bits32 && size == 4096 { 1u64 << 32 } else { 1u64 << 40 };
        let gpa = (rng.next() % gpa_limit) & !(size - 1);
        let mut flags = rng.next() & (pte::RW | pte::US);
        if mode != PagingMode::Bits32 && rng.next() % 4 == 0 {
            flags |= pte::XD;
        }
        if t.map(gva, gpa, size, flags).is_ok() {
            mapped.push((gva, size));
        }
    }
    for (gpa, page) in t.pages() {
        g.machine.write_gpa(gpa, page).unwrap();
    }
    let long = matches!(mode, PagingMode::Level4 | PagingMode::Level5);
    g.machine.write_gpa(GDT, &modes::gdt_bytes()).unwrap();
    g.vcpu
        .update(StateMask::ALL, |s| {
            if long {
                modes::long_mode(s, GDT, t.cr3());
            } else {
                modes::protected_mode(s, GDT);
                s.crs[Cr::Cr0] |= cr0::PG | cr0::WP;
                s.crs[Cr::Cr3] = t.cr3();
                s.crs[Cr::Cr4] |= if mode == PagingMode::Pae { cr4::PAE } else { cr4::PSE };
                s.msrs[Msr::Efer] |= efer::NXE;
            }
            if mode == PagingMode::Level5 {
                s.crs[Cr::Cr4] |= 1 << 12;
            }
        })
        .unwrap();
    // Hosts whose KVM only pages in long mode drop CR0.PG elsewhere.
    kvm_translate(&mut g.vcpu, 0);
    g.vcpu.get_state(StateMask::CRS).unwrap();
    if g.vcpu.state().crs[Cr::Cr0] & cr0::PG == 0 {
        println!("SKIP {mode:?}: this host's KVM does not run guests with {mode:?} paging (the model tests cover it)");
        return;
    }
    let mut probes: Vec<u64> = mapped.iter().map(|&(gva, size)| gva + rng.next() % size).collect();
    probes.extend((0..64).map(|_| {
        let gva = rng.next() & ((1u64 << va_bits) - 1);
        if va_bits > 32 && gva >> (va_bits - 1) != 0 { gva | !((1u64 << va_bits) - 1) } else { gva }
    }));
    let mut hits = 0;
    for gva in probes {
        let ours = g.vcpu.gva_to_gpa(gva).ok().map(|(gpa, _)| gpa);
        let kvm = kvm_translate(&mut g.vcpu, gva);
        assert_eq!(ours, kvm, "{mode:?}: {gva:#x}");
        hits += usize::from(ours.is_some());
    }
    // 1 GiB pages are reserved-bit faults for guests without them (the
    // walkers must agree on that too), so not every mapping translates.
    assert!(hits >= 32, "{mode:?}: only {hits} translations");
}

fn kvm_translate(vcpu: &mut Vcpu, gva: u64) -> Option<u64> {
    vcpu.kvm_translate(gva).unwrap()
}

#[test]
fn bits32_paging_matches_kvm() {
    nvmm_testkit::kvm_or_skip!();
    compare(PagingMode::Bits32, &[4096, 4 << 20], 32);
}

#[test]
fn pae_paging_matches_kvm() {
    nvmm_testkit::kvm_or_skip!();
    compare(PagingMode::Pae, &[4096, 2 << 20], 32);
}

#[test]
fn four_level_paging_matches_kvm() {
    nvmm_testkit::kvm_or_skip!();
    compare(PagingMode::Level4, &[4096, 2 << 20, 1 << 30], 48);
}

#[test]
fn five_level_paging_matches_kvm() {
    nvmm_testkit::kvm_or_skip!();
    let cpu_has_la57 = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().contains(" la57");
    if !cpu_has_la57 {
        println!(
            "SKIP five_level_paging_matches_kvm: the host CPU has no LA57 (5-level paging is covered by the model tests)"
        );
        return;
    }
    compare(PagingMode::Level5, &[4096, 2 << 20, 1 << 30], 57);
}
