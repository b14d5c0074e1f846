//! Cores of synthetic guests (states and memory built here, no KVM) in
//! every CPU and paging mode, opened by gdb, lldb, readelf and eu-readelf.
//! These cover the paging modes this host's KVM cannot run (32-bit and PAE
//! paging); `kvm.rs` writes cores of real guests.

mod common;

use common::*;
use nvmm::x86::modes;
use nvmm::x86::paging::{PageTables, PagingMode, pte};
use nvmm::x86::xsave::Xsave;
use nvmm::{Cr, Gpr, Prot};
use nvmm_coredump::{VcpuImage, VecMemory, write_core};

const RAM: u64 = 8 << 20;
const TABLES: u64 = 0x20_0000;
const GDT: u64 = 0x500;

/// Scattered data pages: (guest virtual, guest physical) — virtual pages
/// in order, physical pages descending and apart.
fn data_pages(mode: PagingMode) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = (0..4).map(|k| (0x4000_0000 + k * 0x1000, 0x70_0000 - k * 0x3000)).collect();
    if matches!(mode, PagingMode::Level4) {
        v.push((0xffff_8000_0000_0000, 0x50_0000));
    }
    v
}

/// The value stored at the start of data page `gpa`.
fn datum(gpa: u64) -> u64 {
    0xda7a_0000_0000_0000 | gpa
}

/// A guest of `n` VCPUs in `mode` (`None`: real mode), each VCPU at its own
/// RIP with its marks.
fn guest(mode: Option<PagingMode>, n: u32) -> (Vec<VcpuImage>, VecMemory, Vec<(u64, u64)>) {
    let mut mem = VecMemory::new();
    mem.add(0, RAM, Prot::ALL);
    mem.add(0xfff0_0000, 0x1000, Prot::READ | Prot::EXEC);
    mem.write(0xfff0_0000, &[0xf4; 16]);
    mem.write(GDT, &modes::gdt_bytes());
    let pages = match mode {
        Some(m) if m != PagingMode::Off => data_pages(m),
        _ => (0..4).map(|k| (0x70_0000 - k * 0x3000, 0x70_0000 - k * 0x3000)).collect(),
    };
    for &(_, gpa) in &pages {
        mem.write(gpa, &datum(gpa).to_le_bytes());
    }
    let mut cr3 = 0;
    if let Some(m) = mode.filter(|m| *m != PagingMode::Off) {
        let mut t = PageTables::new(m, TABLES);
        let big = if m == PagingMode::Bits32 { 0x40_0000 } else { 0x20_0000 };
        t.map(0, 0, big, pte::RW).unwrap();
        for &(gva, gpa) in &pages {
            t.map(gva, gpa, 0x1000, pte::RW).unwrap();
        }
        for (gpa, page) in t.pages() {
            mem.write(gpa, page);
        }
        cr3 = t.cr3();
    }
    let images = (0..n)
        .map(|i| {
            let mut s = nvmm::x86::reset::reset_state();
            let mut x = Xsave::default();
            match mode {
                None => modes::real_mode_entry(&mut s, 0x7c00 + 0x10 * u64::from(i)),
                Some(PagingMode::Level4) => {
                    modes::long_mode(&mut s, GDT, cr3);
                    s.gprs[Gpr::Rip] = 0x1000 + 0x10 * u64::from(i);
                }
                Some(m) => {
                    modes::protected_mode(&mut s, GDT);
                    if m != PagingMode::Off {
                        s.crs[Cr::Cr0] |= modes::cr0::PG;
                        s.crs[Cr::Cr3] = cr3;
                        s.crs[Cr::Cr4] |= if m == PagingMode::Pae { modes::cr4::PAE } else { modes::cr4::PSE };
                    }
                    s.gprs[Gpr::Rip] = 0x1000 + 0x10 * u64::from(i);
                }
            }
            put_gpr_marks(i, &mut s);
            put_fpu_marks(i, &mut s, &mut x);
            VcpuImage::from_state(i, s, x, &mem, 40)
        })
        .collect();
    (images, mem, pages)
}

/// gdb's `$N = value` lines, in order.
fn values(out: &str) -> Vec<String> {
    out.lines().filter(|l| l.starts_with('$')).map(|l| l.split_once(" = ").unwrap().1.to_string()).collect()
}

/// Checks every VCPU's registers and the guest's memory through gdb.
fn check_with_gdb(name: &str, images: &[VcpuImage], pages: &[(u64, u64)], mem: &VecMemory) {
    let core = core_path(name);
    let mut f = std::fs::File::create(&core).unwrap();
    let stats = write_core(images, mem, &mut f).unwrap();
    drop(f);
    assert_eq!(stats.vcpus, images.len());
    let mut cmds = vec!["info threads".to_string()];
    for i in 1..=images.len() {
        cmds.push(format!("thread {i}"));
        for e in ["$rax", "$rbx", "$rcx", "$rsp", "$rip", "$cs", "$eflags", "$st0", "$xmm3.uint128", "$ymm5.v2_int128"]
        {
            cmds.push(format!("p/x {e}"));
        }
        cmds.push("p $st0".into());
    }
    for &(gva, _) in pages {
        cmds.push(format!("p/x *(unsigned long *){gva:#x}"));
    }
    let out = gdb(&core, &cmds);
    assert_eq!(gdb_threads(&out), (1..=images.len() as u32).collect::<Vec<_>>(), "gdb's threads:\n{out}");
    let vals = values(&out);
    assert_eq!(vals.len(), images.len() * 11 + pages.len(), "gdb printed:\n{out}");
    for (i, v) in images.iter().enumerate() {
        let m = marks(v.index);
        let s = &v.state;
        let got = &vals[i * 11..i * 11 + 11];
        let want = [
            format!("{:#x}", m.rax),
            format!("{:#x}", m.rbx),
            format!("{:#x}", m.rcx),
            format!("{:#x}", m.rsp),
            format!("{:#x}", s.gprs[Gpr::Rip]),
            format!("{:#x}", s.segs[nvmm::Seg::Cs].selector),
            format!("{:#x}", s.gprs[Gpr::Rflags]),
        ];
        assert_eq!(&got[..7], &want, "VCPU {i} GPRs in gdb:\n{out}");
        assert_eq!(got[8], format!("{:#x}", m.xmm3), "VCPU {i} xmm3");
        assert_eq!(got[9], format!("{{0x0, {:#x}}}", m.ymm5_hi), "VCPU {i} ymm5");
        assert_eq!(got[10], format!("{}", m.st0), "VCPU {i} st0");
    }
    for (k, &(_, gpa)) in pages.iter().enumerate() {
        assert_eq!(vals[images.len() * 11 + k], format!("{:#x}", datum(gpa)), "memory at page {k}:\n{out}");
    }
    let _ = std::fs::remove_file(&core);
}

#[test]
fn real_mode_cores_open_in_gdb() {
    for n in [1, 2, 4] {
        let (images, mem, pages) = guest(None, n);
        check_with_gdb(&format!("real{n}"), &images, &pages, &mem);
    }
}

#[test]
fn protected_mode_cores_open_in_gdb() {
    for n in [1, 2, 4] {
        let (images, mem, pages) = guest(Some(PagingMode::Off), n);
        check_with_gdb(&format!("prot{n}"), &images, &pages, &mem);
    }
}

#[test]
fn paged_32bit_cores_open_in_gdb() {
    for n in [1, 2, 4] {
        let (images, mem, pages) = guest(Some(PagingMode::Bits32), n);
        assert!(images[0].mappings.iter().any(|m| m.gva == 0x4000_1000 && m.gpa == 0x6f_d000));
        check_with_gdb(&format!("bits32-{n}"), &images, &pages, &mem);
    }
}

#[test]
fn pae_cores_open_in_gdb() {
    for n in [1, 2, 4] {
        let (images, mem, pages) = guest(Some(PagingMode::Pae), n);
        check_with_gdb(&format!("pae{n}"), &images, &pages, &mem);
    }
}

#[test]
fn long_mode_cores_open_in_gdb() {
    for n in [1, 2, 4] {
        let (images, mem, pages) = guest(Some(PagingMode::Level4), n);
        check_with_gdb(&format!("long{n}"), &images, &pages, &mem);
    }
}
