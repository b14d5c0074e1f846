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
    mem.add(0, RAM, Prot::ALL).unwrap();
    mem.add(0xfff0_0000, 0x1000, Prot::READ | Prot::EXEC).unwrap();
    mem.write(0xfff0_0000, &[0xf4; 16]).unwrap();
    mem.write(GDT, &modes::gdt_bytes()).unwrap();
    let pages = match mode {
        Some(m) if m != PagingMode::Off => data_pages(m),
        _ => (0..4).map(|k| (0x70_0000 - k * 0x3000, 0x70_0000 - k * 0x3000)).collect(),
    };
    for &(_, gpa) in &pages {
        mem.write(gpa, &datum(gpa).to_le_bytes()).unwrap();
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
            mem.write(gpa, page).unwrap();
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

/// Checks every VCPU's registers and the guest's memory through gdb.
fn check_with_gdb(name: &str, images: &[VcpuImage], pages: &[(u64, u64)], mem: &VecMemory) {
    let core = core_path(name);
    let mut f = std::fs::File::create(&core).unwrap();
    let stats = write_core(images, mem, &mut f).unwrap();
    drop(f);
    assert_eq!(stats.vcpus, images.len());
    let mut cmds = vec!["info threads".to_string()];
    cmds.extend(gdb_vcpu_commands(images.len()));
    for &(gva, _) in pages {
        cmds.push(format!("p/x *(unsigned long *){gva:#x}"));
    }
    let out = gdb(&core, &cmds);
    assert_eq!(gdb_threads(&out), (1..=images.len() as u32).collect::<Vec<_>>(), "gdb's threads:\n{out}");
    let vals = values(&out);
    let per = GDB_VCPU_VALUES;
    assert_eq!(vals.len(), images.len() * per + pages.len(), "gdb printed:\n{out}");
    for (i, v) in images.iter().enumerate() {
        let s = &v.state;
        let want = gdb_vcpu_expected(v.index, s.gprs[Gpr::Rip], s.segs[nvmm::Seg::Cs].selector, s.gprs[Gpr::Rflags]);
        assert_eq!(&vals[i * per..(i + 1) * per], &want, "VCPU {i} in gdb:\n{out}");
    }
    for (k, &(_, gpa)) in pages.iter().enumerate() {
        assert_eq!(vals[images.len() * per + k], format!("{:#x}", datum(gpa)), "memory at page {k}:\n{out}");
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

/// lldb's `name = value` register lines, in order.
fn lldb_registers(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.split_once(" = "))
        .filter(|(n, _)| {
            !n.trim().is_empty() && !n.contains(' ') || n.trim().chars().all(|c| c.is_ascii_alphanumeric())
        })
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Bytes as lldb prints a vector register.
fn lldb_bytes(b: &[u8]) -> String {
    let parts: Vec<String> = b.iter().map(|x| format!("{x:#04x}")).collect();
    format!("{{{}}}", parts.join(" "))
}

/// Checks every VCPU's registers and the guest's memory through lldb.
fn check_with_lldb(name: &str, images: &[VcpuImage], pages: &[(u64, u64)], mem: &VecMemory) {
    let core = core_path(name);
    let mut f = std::fs::File::create(&core).unwrap();
    write_core(images, mem, &mut f).unwrap();
    drop(f);
    let mut cmds = vec!["thread list".to_string()];
    for i in 1..=images.len() {
        cmds.push(format!("thread select {i}"));
        cmds.push("register read rax rbx rcx rsp rip st0 xmm3".into());
    }
    for &(gva, _) in pages {
        cmds.push(format!("memory read --format x --size 8 --count 1 {gva:#x}"));
    }
    let out = lldb(&core, &cmds);
    let tids: Vec<u32> =
        out.lines().filter_map(|l| l.split_once("tid = ")?.1.split(',').next()?.trim().parse().ok()).collect();
    // `thread list` lists each thread; `thread select` announces it again.
    let listed: Vec<u32> = tids[..images.len()].to_vec();
    assert_eq!(listed, (1..=images.len() as u32).collect::<Vec<_>>(), "lldb's threads:\n{out}");
    let regs = lldb_registers(&out);
    let per = 7;
    assert_eq!(regs.len(), images.len() * per, "lldb printed:\n{out}");
    for (i, v) in images.iter().enumerate() {
        let m = marks(v.index);
        let got: Vec<&str> = regs[i * per..(i + 1) * per].iter().map(|(_, v)| v.as_str()).collect();
        let want = [
            format!("{:#018x}", m.rax),
            format!("{:#018x}", m.rbx),
            format!("{:#018x}", m.rcx),
            format!("{:#018x}", m.rsp),
            format!("{:#018x}", v.state.gprs[Gpr::Rip]),
            lldb_bytes(&x87(m.st0)),
            lldb_bytes(&m.xmm3.to_le_bytes()),
        ];
        assert_eq!(got, want, "VCPU {i} in lldb:\n{out}");
    }
    let hex = |t: &str| u64::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok();
    let words: Vec<(u64, u64)> =
        out.lines().filter_map(|l| l.split_once(": ")).filter_map(|(a, v)| Some((hex(a)?, hex(v)?))).collect();
    for &(gva, gpa) in pages {
        assert!(words.contains(&(gva, datum(gpa))), "lldb should read {:#x} at {gva:#x}:\n{out}", datum(gpa));
    }
    let _ = std::fs::remove_file(&core);
}

#[test]
fn long_mode_cores_open_in_lldb() {
    for n in [1, 4] {
        let (images, mem, pages) = guest(Some(PagingMode::Level4), n);
        check_with_lldb(&format!("lldb-long{n}"), &images, &pages, &mem);
    }
}

#[test]
fn paged_32bit_and_real_mode_cores_open_in_lldb() {
    let (images, mem, pages) = guest(Some(PagingMode::Bits32), 2);
    check_with_lldb("lldb-bits32", &images, &pages, &mem);
    let (images, mem, pages) = guest(None, 2);
    check_with_lldb("lldb-real", &images, &pages, &mem);
}

#[test]
fn readelf_and_eu_readelf_parse_it() {
    let (images, mem, _) = guest(Some(PagingMode::Level4), 4);
    let core = core_path("readelf");
    let mut f = std::fs::File::create(&core).unwrap();
    let stats = write_core(&images, &mem, &mut f).unwrap();
    drop(f);
    let path = core.display().to_string();
    let out = run_tool("readelf", &["-W", "-h", "-n", "-l", &path]);
    assert!(out.contains("CORE (Core file)") && out.contains("Advanced Micro Devices X86-64"), "{out}");
    for (note, count) in [("NT_PRSTATUS", 4), ("NT_FPREGSET", 4), ("NT_X86_XSTATE", 4), ("NT_PRPSINFO", 1)] {
        assert_eq!(out.matches(note).count(), count, "{note} in:\n{out}");
    }
    assert_eq!(out.lines().filter(|l| l.trim_start().starts_with("LOAD ")).count(), stats.loads, "{out}");
    assert_eq!(out.lines().filter(|l| l.trim_start().starts_with("NOTE ")).count(), 1, "{out}");
    let out = run_tool("eu-readelf", &["-h", "-n", "-l", &path]);
    assert!(out.contains("CORE (Core file)"), "{out}");
    let lower = out.to_lowercase();
    assert!(!lower.contains("invalid") && !lower.contains("error") && !lower.contains("cannot"), "{out}");
    assert_eq!(out.matches("PRSTATUS").count(), 4, "{out}");
    let _ = std::fs::remove_file(&core);
}

#[test]
fn more_than_65534_segments_use_pn_xnum() {
    const N: u64 = 70_000;
    let mut mem = VecMemory::new();
    mem.add(0, RAM, Prot::ALL).unwrap();
    mem.write(GDT, &modes::gdt_bytes()).unwrap();
    let mut t = PageTables::new(PagingMode::Level4, TABLES);
    // Every other virtual page, onto 16 physical pages: no two mappings merge.
    let gva = |k: u64| 0x1_0000_0000 + 2 * k * 0x1000;
    let gpa = |k: u64| 0x60_0000 + (k % 16) * 0x1000;
    for k in 0..N {
        t.map(gva(k), gpa(k), 0x1000, pte::RW).unwrap();
    }
    for (a, page) in t.pages() {
        assert!(a < 0x60_0000, "tables stay below the data pages");
        mem.write(a, page).unwrap();
    }
    for k in 0..16 {
        mem.write(gpa(k), &datum(gpa(k)).to_le_bytes()).unwrap();
    }
    let mut s = nvmm::x86::reset::reset_state();
    modes::long_mode(&mut s, GDT, t.cr3());
    let images = vec![VcpuImage::from_state(0, s, Xsave::default(), &mem, 40)];
    let core = core_path("xnum");
    let mut f = std::fs::File::create(&core).unwrap();
    let stats = write_core(&images, &mem, &mut f).unwrap();
    drop(f);
    assert!(stats.loads as u64 > N, "{stats:?}");
    let path = core.display().to_string();
    let out = run_tool("readelf", &["-W", "-h", &path]);
    let phnum = format!("Number of program headers:         65535 ({})", stats.loads + 1);
    assert!(out.contains(&phnum), "readelf should report {phnum}:\n{out}");
    let last = N - 1;
    let out = gdb(&core, &[format!("p/x *(unsigned long *){:#x}", gva(last))]);
    assert_eq!(values(&out), vec![format!("{:#x}", datum(gpa(last)))], "{out}");
    let _ = std::fs::remove_file(&core);
}
