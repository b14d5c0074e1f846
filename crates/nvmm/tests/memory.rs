//! Guest memory through a real machine: NVMM's two steps, their errors, and
//! copies at every offset and size across mappings.

mod common;

use common::*;
use nvmm::exit::reason;
use nvmm::{Exit, MemAccess, Prot};

#[test]
fn mapping_errors_have_nvmms_errno() {
    nvmm_testkit::kvm_or_skip!();
    let n = nvmm();
    let m = n.create_machine().unwrap();
    let hva = m.hva_map_anonymous(4 * 4096).unwrap();
    let errno = |r: nvmm::Result<()>| r.unwrap_err().errno();
    assert_eq!(m.hva_map_anonymous(0).unwrap_err().errno(), 22);
    assert_eq!(m.hva_map_anonymous(4097).unwrap_err().errno(), 22);
    assert_eq!(errno(m.gpa_map(hva, 0x1001, 4096, Prot::READ)), 22, "misaligned gpa");
    assert_eq!(errno(m.gpa_map(hva + 8, 0x1000, 4096, Prot::READ)), 22, "misaligned hva");
    assert_eq!(errno(m.gpa_map(hva, 0x1000, 100, Prot::READ)), 22, "misaligned size");
    assert_eq!(errno(m.gpa_map(hva, 0x1000, 5 * 4096, Prot::READ)), 22, "beyond the host mapping");
    assert_eq!(errno(m.gpa_map(0x1000, 0x1000, 4096, Prot::READ)), 22, "no host mapping");
    let max = n.capability().max_ram;
    assert_eq!(errno(m.gpa_map(hva, max, 4096, Prot::READ)), 22, "beyond max_ram");
    assert_eq!(errno(m.gpa_map(hva, !0xfff, 8192, Prot::READ)), 22, "wraps");
    assert_eq!(nvmm::Prot::from_bits(8).unwrap_err().errno(), 22, "unknown protection bit");
    m.gpa_map(hva, 0x10000, 2 * 4096, Prot::ALL).unwrap();
    assert_eq!(errno(m.gpa_map(hva, 0x11000, 4096, Prot::READ)), 22, "overlap");
    assert_eq!(errno(m.gpa_unmap(hva, 0x10000, 4096)), 2, "unmap takes the exact triple");
    assert_eq!(errno(m.gpa_unmap(hva + 4096, 0x10000, 8192)), 2);
    assert_eq!(m.gpa_to_hva(0x10004).unwrap(), (hva + 4, Prot::ALL));
    assert_eq!(m.gpa_to_hva(0x12000).unwrap_err().errno(), 2);
    m.gpa_unmap(hva, 0x10000, 2 * 4096).unwrap();
    assert_eq!(errno(m.gpa_unmap(hva, 0x10000, 2 * 4096)), 2, "already unmapped");
    assert_eq!(errno(m.hva_unmap(hva, 4096)), 2, "hva_unmap takes the exact range");
    m.hva_unmap(hva, 4 * 4096).unwrap();
    assert_eq!(errno(m.hva_unmap(hva, 4 * 4096)), 2);
    assert_eq!(errno(m.gpa_map(hva, 0x1000, 4096, Prot::READ)), 22, "host mapping gone");
}

#[test]
fn the_last_page_of_the_guest_space_maps_and_unmaps() {
    nvmm_testkit::kvm_or_skip!();
    let n = nvmm();
    let m = n.create_machine().unwrap();
    let hva = m.hva_map_anonymous(4096).unwrap();
    let last = n.capability().max_ram - 4096;
    m.gpa_map(hva, last, 4096, Prot::ALL).unwrap();
    m.write_gpa(last + 4095, &[9]).unwrap();
    m.gpa_unmap(hva, last, 4096).unwrap();
}

#[test]
fn copies_at_every_offset_and_size_across_mappings() {
    nvmm_testkit::kvm_or_skip!();
    let m = nvmm().create_machine().unwrap();
    // Two host mappings, mapped back to back in reverse order, so one
    // guest range spans two host pages that are not contiguous.
    let a = m.hva_map_anonymous(4096).unwrap();
    let b = m.hva_map_anonymous(4096).unwrap();
    m.gpa_map(b, 0x20000, 4096, Prot::ALL).unwrap();
    m.gpa_map(a, 0x21000, 4096, Prot::READ).unwrap();
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    for off in 0..4096u64 {
        for size in (1..=16).chain([31, 64, 4096]) {
            if off + size as u64 > 8192 {
                continue;
            }
            let gpa = 0x20000 + off + 4096 - (size as u64).min(4096) / 2;
            let gpa = gpa.min(0x22000 - size as u64);
            let src = &pattern[off as usize..off as usize + size];
            m.write_gpa(gpa, src).unwrap();
            let mut back = vec![0u8; size];
            m.read_gpa(gpa, &mut back).unwrap();
            assert_eq!(back, src, "gpa {gpa:#x} size {size}");
        }
    }
    m.write_gpa(0x20000, &pattern).unwrap();
    let mut all = vec![0u8; 8192];
    m.read_gpa(0x20000, &mut all).unwrap();
    assert_eq!(all, pattern);
    assert_eq!(m.read_gpa(0x21ffc, &mut [0u8; 8]).unwrap_err().errno(), 2, "runs into unmapped memory");
    assert_eq!(m.write_gpa(0x1f000, &[1]).unwrap_err().errno(), 2, "unmapped");
    let mut untouched = [0u8; 4];
    m.read_gpa(0x21ffc, &mut untouched).unwrap();
    assert_eq!(&untouched, &pattern[8188..], "a failed copy writes nothing");
}

#[test]
fn unmapping_makes_guest_accesses_exit() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = protected_mode(&[
        0xa1, 0x00, 0x00, 0x00, 0x10, // mov eax,ds:0x10000000
        0xa1, 0x00, 0x00, 0x00, 0x10, // mov eax,ds:0x10000000
        0xf4, //                         hlt
    ]);
    let hva = g.machine.map_anonymous(0x1000_0000, 4096, Prot::READ).unwrap();
    g.machine.write_gpa(0x1000_0000, &[0xaa; 4]).unwrap();
    // Unmapped: the first read exits; mapped again: the second reads RAM.
    let m = &g.machine;
    m.gpa_unmap(hva, 0x1000_0000, 4096).unwrap();
    match g.vcpu.run().unwrap() {
        Exit::Memory(e) => assert_eq!((e.gpa(), e.access()), (0x1000_0000, MemAccess::Read)),
        e => panic!("{e:?}"),
    }
    m.gpa_map(hva, 0x1000_0000, 4096, Prot::READ).unwrap();
    assert_eq!(next_reason(&mut g.vcpu), reason::HALTED);
    assert_eq!(gpr(&mut g.vcpu, nvmm::Gpr::Rax), 0xaaaa_aaaa);
}

/// `gpa_mappings` lists what was mapped, and each host range is a mapping
/// of the process with the rights asked for (`/proc/self/maps` is the
/// oracle for the host side).
#[test]
fn gpa_mappings_are_the_process_mappings() {
    nvmm_testkit::kvm_or_skip!();
    let n = nvmm();
    let m = n.create_machine().unwrap();
    let asked = [
        (0x10_0000u64, 0x3000u64, Prot::ALL),
        (0x0, 0x1000, Prot::READ),
        (0x2000_0000, 0x2_0000, Prot::READ | Prot::WRITE),
    ];
    for &(gpa, size, prot) in &asked {
        m.map_anonymous(gpa, size, prot).unwrap();
    }
    let got = m.gpa_mappings();
    let mut want: Vec<_> = asked.to_vec();
    want.sort_by_key(|a| a.0);
    assert_eq!(got.iter().map(|&(g, s, _, p)| (g, s, p)).collect::<Vec<_>>(), want, "in address order");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for &(gpa, size, hva, _) in &got {
        let covering = maps.lines().find_map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (lo, hi) = range.split_once('-')?;
            let (lo, hi) = (u64::from_str_radix(lo, 16).ok()?, u64::from_str_radix(hi, 16).ok()?);
            (lo <= hva && hva + size <= hi).then(|| rest[..2].to_owned())
        });
        // Guest memory is always readable and writable from the host: the
        // guest's rights live in the KVM slot, not in the host mapping.
        assert_eq!(covering.as_deref(), Some("rw"), "gpa {gpa:#x}: host range {hva:#x}+{size:#x} in /proc/self/maps");
        assert_eq!(m.gpa_to_hva(gpa).unwrap().0, hva);
    }
}

/// The VCPU's own physical accessors see what the guest wrote and feed
/// what it reads (the CPU is the oracle).
#[test]
fn vcpu_physical_accessors_meet_the_guest() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = protected_mode(&[
        0xc7, 0x05, 0x00, 0x30, 0x00, 0x00, 0x78, 0x56, 0x34, 0x12, // mov dword [0x3000],0x12345678
        0xf4, //                                                       hlt
        0x8b, 0x1d, 0x04, 0x30, 0x00, 0x00, //                         mov ebx,[0x3004]
        0xf4, //                                                       hlt
    ]);
    run_to_halt(&mut g.vcpu);
    let mut b = [0u8; 4];
    g.vcpu.read_gpa(0x3000, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
    g.vcpu.write_gpa(0x3004, &0xcafe_f00du32.to_le_bytes()).unwrap();
    run_to_halt(&mut g.vcpu);
    assert_eq!(gpr(&mut g.vcpu, nvmm::Gpr::Rbx), 0xcafe_f00d);
    // ENOENT, as nvmm_gpa_to_hva for an unmapped address.
    assert_eq!(g.vcpu.read_gpa(0x1000_0000, &mut b).unwrap_err().errno(), 2, "unmapped");
}
