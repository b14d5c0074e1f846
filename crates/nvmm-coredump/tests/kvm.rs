//! Cores of real guests run by KVM: 1, 2 and 4 VCPUs in long mode (paged,
//! data at virtual addresses on scattered physical pages), real mode and
//! flat protected mode, each VCPU stopped at its own OUT with distinctive
//! registers; opened by gdb and lldb. And a 16 GiB guest that touched a few
//! MiB: a small core, written fast.

mod common;

use std::time::Instant;

use common::*;
use nvmm::x86::modes;
use nvmm::x86::paging::{PageTables, PagingMode, pte};
use nvmm::{Exit, Gpr, Machine, Nvmm, Prot, Seg, StateMask, Vcpu};
use nvmm_coredump::{WriteCore, read_core};

const RAM: u64 = 8 << 20;
const GDT: u64 = 0x500;
const TABLES: u64 = 0x20_0000;
const CODE: u64 = 0x1000;

/// Guest virtual page of VCPU `i`'s store, and the physical page behind it.
fn store_page(i: u32) -> (u64, u64) {
    (0x4000_0000 + u64::from(i) * 0x1000, 0x70_0000 - u64::from(i) * 0x3000)
}

/// `mov rax, imm64; mov [rdi], rax; out 0x10, al` (the OUT at offset 13).
fn store_and_out(value: u64) -> Vec<u8> {
    let mut c = vec![0x48, 0xb8];
    c.extend_from_slice(&value.to_le_bytes());
    c.extend_from_slice(&[0x48, 0x89, 0x07, 0xe6, 0x10]);
    c
}

/// Runs `v` to its OUT to port 0x10.
fn run_to_out(v: &mut Vcpu) {
    let id = v.id();
    match v.run().unwrap() {
        Exit::Io(io) => assert_eq!(io.port(), 0x10),
        e => panic!("VCPU {id}: {e:?}"),
    }
}

/// Sets VCPU `i`'s FPU marks through the state API (kernel-mode guests
/// cannot load them here: the host's KVM does not emulate SSE moves).
fn set_fpu_marks(v: &mut Vcpu, i: u32) {
    v.get_state(StateMask::ALL).unwrap();
    let mut s = *v.state();
    let mut x = v.xsave().clone();
    put_fpu_marks(i, &mut s, &mut x);
    *v.state_mut() = s;
    *v.xsave_mut() = x;
    v.set_state(StateMask::ALL).unwrap();
}

/// A long-mode machine of `n` VCPUs, each stopped at its OUT after storing
/// its RAX mark at its store page. Returns the OUT addresses.
fn long_mode_machine(n: u32) -> (Machine, Vec<Vcpu>, Vec<u64>) {
    let m = Nvmm::open().unwrap().create_machine().unwrap();
    m.map_anonymous(0, RAM, Prot::ALL).unwrap();
    m.write_gpa(GDT, &modes::gdt_bytes()).unwrap();
    let mut t = PageTables::new(PagingMode::Level4, TABLES);
    t.map(0, 0, 0x20_0000, pte::RW).unwrap();
    for i in 0..n {
        let (gva, gpa) = store_page(i);
        t.map(gva, gpa, 0x1000, pte::RW).unwrap();
    }
    for (gpa, page) in t.pages() {
        m.write_gpa(gpa, page).unwrap();
    }
    let mut vcpus = Vec::new();
    let mut outs = Vec::new();
    for i in 0..n {
        let code = CODE + 0x100 * u64::from(i);
        m.write_gpa(code, &store_and_out(marks(i).rax)).unwrap();
        let mut v = m.create_vcpu(i).unwrap();
        v.update(StateMask::ALL, |s| {
            modes::long_mode(s, GDT, t.cr3());
            put_gpr_marks(i, s);
            s.gprs[Gpr::Rip] = code;
            s.gprs[Gpr::Rdi] = store_page(i).0;
        })
        .unwrap();
        set_fpu_marks(&mut v, i);
        run_to_out(&mut v);
        outs.push(code + 13);
        vcpus.push(v);
    }
    (m, vcpus, outs)
}

/// A machine of `n` VCPUs in real mode (`long == false`, protected
/// `true`), each stopped at an OUT of its own.
fn flat_machine(protected: bool, n: u32) -> (Machine, Vec<Vcpu>, Vec<u64>) {
    let m = Nvmm::open().unwrap().create_machine().unwrap();
    m.map_anonymous(0, RAM, Prot::ALL).unwrap();
    m.write_gpa(GDT, &modes::gdt_bytes()).unwrap();
    let mut vcpus = Vec::new();
    let mut outs = Vec::new();
    for i in 0..n {
        let code = 0x7c00 + 0x10 * u64::from(i);
        m.write_gpa(code, &[0xe6, 0x10]).unwrap();
        let mut v = m.create_vcpu(i).unwrap();
        v.update(StateMask::ALL, |s| {
            if protected {
                modes::protected_mode(s, GDT);
                s.gprs[Gpr::Rip] = code;
            } else {
                modes::real_mode_entry(s, code);
            }
            put_gpr_marks(i, s);
        })
        .unwrap();
        set_fpu_marks(&mut v, i);
        run_to_out(&mut v);
        v.get_state(StateMask::GPRS).unwrap();
        outs.push(v.state().gprs[Gpr::Rip]);
        vcpus.push(v);
    }
    (m, vcpus, outs)
}

/// Writes a core of `m` and checks every VCPU and `reads` (virtual address,
/// expected u64) through gdb, and the threads and registers through lldb.
fn check(name: &str, m: &Machine, vcpus: &mut [Vcpu], outs: &[u64], reads: &[(u64, u64)]) {
    let core = core_path(name);
    let mut refs: Vec<&mut Vcpu> = vcpus.iter_mut().collect();
    let stats = m.write_core_file(&mut refs, &core).unwrap();
    assert_eq!(stats.vcpus, vcpus.len());
    let n = vcpus.len();
    let mut cmds = vec!["info threads".to_string()];
    cmds.extend(gdb_vcpu_commands(n));
    for (gva, _) in reads {
        cmds.push(format!("p/x *(unsigned long *){gva:#x}"));
    }
    let out = gdb(&core, &cmds);
    assert_eq!(gdb_threads(&out), (1..=n as u32).collect::<Vec<_>>(), "gdb's threads:\n{out}");
    let vals = values(&out);
    let per = GDB_VCPU_VALUES;
    assert_eq!(vals.len(), n * per + reads.len(), "gdb printed:\n{out}");
    for (i, (v, &rip)) in vcpus.iter().zip(outs).enumerate() {
        // CS and RFLAGS as the VCPU holds them (fetched whole for the core).
        let (cs, rflags) = (v.state().segs[Seg::Cs].selector, v.state().gprs[Gpr::Rflags]);
        let want = gdb_vcpu_expected(i as u32, rip, cs, rflags);
        assert_eq!(&vals[i * per..(i + 1) * per], &want, "VCPU {i} in gdb:\n{out}");
    }
    for (k, (_, want)) in reads.iter().enumerate() {
        assert_eq!(vals[n * per + k], format!("{want:#x}"), "read {k} in gdb:\n{out}");
    }
    let mut cmds = vec!["thread list".to_string()];
    for i in 1..=n {
        cmds.push(format!("thread select {i}"));
        cmds.push("register read rax rip".into());
    }
    let out = lldb(&core, &cmds);
    for (i, out_at) in outs.iter().enumerate() {
        let mk = marks(i as u32);
        assert!(out.contains(&format!("tid = {}", i + 1)), "lldb thread {}:\n{out}", i + 1);
        assert!(out.contains(&format!("rax = {:#018x}", mk.rax)), "lldb rax of VCPU {i}:\n{out}");
        assert!(out.contains(&format!("rip = {out_at:#018x}")), "lldb rip of VCPU {i}:\n{out}");
    }
    let info = read_core(&core).unwrap();
    assert_eq!(info.vcpus.iter().map(|v| v.rip).collect::<Vec<_>>(), outs);
    let _ = std::fs::remove_file(&core);
}

#[test]
fn long_mode_guests_open_in_gdb_and_lldb() {
    nvmm_testkit::kvm_or_skip!();
    for n in [1, 2, 4] {
        let (m, mut vcpus, outs) = long_mode_machine(n);
        // What each VCPU stored, at its virtual address (scattered physical pages).
        let reads: Vec<(u64, u64)> = (0..n).map(|i| (store_page(i).0, marks(i).rax)).collect();
        check(&format!("kvm-long{n}"), &m, &mut vcpus, &outs, &reads);
    }
}

#[test]
fn real_and_protected_mode_guests_open_in_gdb_and_lldb() {
    nvmm_testkit::kvm_or_skip!();
    for (protected, n) in [(false, 1), (false, 2), (true, 2), (true, 4)] {
        let (m, mut vcpus, outs) = flat_machine(protected, n);
        m.write_gpa(0x30_0000, &0x0123_4567_89ab_cdefu64.to_le_bytes()).unwrap();
        check(&format!("kvm-flat{protected}{n}"), &m, &mut vcpus, &outs, &[(0x30_0000, 0x0123_4567_89ab_cdef)]);
    }
}

/// Bytes the file takes on disk.
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn a_16_gib_guest_that_touched_4_mib_gives_a_core_of_about_4_mib() {
    nvmm_testkit::kvm_or_skip!();
    const SIZE: u64 = 16 << 30;
    let m = Nvmm::open().unwrap().create_machine().unwrap();
    m.map_anonymous(0, SIZE, Prot::ALL).unwrap();
    // 64 KiB at each of 64 places spread over the 16 GiB.
    let chunk = vec![0xa5u8; 64 << 10];
    let places: Vec<u64> = (0..64).map(|k| k * (SIZE / 64) + 0x1000 * k).collect();
    for &p in &places {
        m.write_gpa(p, &chunk).unwrap();
        m.write_gpa(p, &p.to_le_bytes()).unwrap();
    }
    let touched = 64 * chunk.len() as u64;
    let mut v = m.create_vcpu(0).unwrap();
    let core = core_path("sparse16g");
    let t = Instant::now();
    let stats = m.write_core_file(&mut [&mut v], &core).unwrap();
    let took = t.elapsed();
    let on_disk = allocated(&core);
    eprintln!("16 GiB guest, {touched} bytes touched: core written in {took:?}, {on_disk} bytes on disk");
    assert_eq!(stats.data_written, touched);
    assert!(std::fs::metadata(&core).unwrap().len() > SIZE, "the file spans the whole guest");
    assert!(on_disk < touched + (4 << 20), "{on_disk} bytes on disk for {touched} bytes touched");
    // A generous bound: the benchmark measures the speed.
    assert!(took.as_secs() < 20, "writing took {took:?}");
    let last = *places.last().unwrap();
    let out =
        gdb(&core, &[format!("p/x *(unsigned long *){last:#x}"), format!("p/x *(unsigned long *){:#x}", last + 8)]);
    assert_eq!(values(&out), vec![format!("{last:#x}"), "0xa5a5a5a5a5a5a5a5".to_string()], "{out}");
    let _ = std::fs::remove_file(&core);
}
