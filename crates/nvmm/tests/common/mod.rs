//! Guests for the integration tests. Every guest is hand-assembled bytes
//! with the assembly beside them.
#![allow(dead_code)]

use nvmm::x86::modes;
use nvmm::{Exit, Gpr, Machine, Nvmm, Prot, Seg, StateMask, Vcpu};

/// Where guest code is loaded.
pub const CODE: u64 = 0x1000;
/// Guest RAM size (identity mapped in long mode).
pub const RAM: u64 = 0x40_0000;
/// Initial stack pointer.
pub const STACK: u64 = 0x8000;
/// GDT location for protected and long mode.
pub const GDT: u64 = 0x800;
/// Page tables for long mode.
pub const PML4: u64 = 0x10000;

/// A machine with one VCPU and RAM at `[0, RAM)`.
pub struct Guest {
    pub machine: Machine,
    pub vcpu: Vcpu,
}

pub fn nvmm() -> Nvmm {
    Nvmm::open().expect("open nvmm")
}

fn with_ram(code: &[u8]) -> Guest {
    let machine = nvmm().create_machine().expect("create machine");
    machine.map_anonymous(0, RAM, Prot::ALL).expect("map RAM");
    machine.write_gpa(CODE, code).expect("load code");
    let vcpu = machine.create_vcpu(0).expect("create vcpu");
    Guest { machine, vcpu }
}

/// A real-mode guest executing `code` at 0:CODE.
pub fn real_mode(code: &[u8]) -> Guest {
    let mut g = with_ram(code);
    g.vcpu
        .update(StateMask::GPRS | StateMask::SEGS, |s| {
            modes::real_mode_entry(s, CODE);
            s.gprs[Gpr::Rsp] = STACK;
        })
        .unwrap();
    g
}

/// A flat 32-bit protected-mode guest executing `code` at CODE.
pub fn protected_mode(code: &[u8]) -> Guest {
    let mut g = with_ram(code);
    g.machine.write_gpa(GDT, &modes::gdt_bytes()).unwrap();
    g.vcpu
        .update(StateMask::ALL, |s| {
            modes::protected_mode(s, GDT);
            s.gprs[Gpr::Rip] = CODE;
            s.gprs[Gpr::Rsp] = STACK;
        })
        .unwrap();
    g
}

/// A 64-bit guest executing `code` at CODE, with `[0, 1 GiB)` identity
/// mapped.
pub fn long_mode(code: &[u8]) -> Guest {
    let mut g = with_ram(code);
    g.machine.write_gpa(GDT, &modes::gdt_bytes()).unwrap();
    g.machine.write_gpa(PML4, &modes::identity_page_tables(PML4, 1 << 30)).unwrap();
    g.vcpu
        .update(StateMask::ALL, |s| {
            modes::long_mode(s, GDT, PML4);
            s.gprs[Gpr::Rip] = CODE;
            s.gprs[Gpr::Rsp] = STACK;
        })
        .unwrap();
    g
}

/// A 64-bit guest at CPL 3 (IOPL 3), where hosts that emulate guest
/// kernel code run guest code natively. It ends with an OUT, not HLT.
pub fn user_mode64(code: &[u8]) -> Guest {
    let mut g = long_mode(code);
    g.vcpu.update(StateMask::SEGS | StateMask::GPRS, modes::user_mode).unwrap();
    g
}

/// Runs until HLT, failing on anything but NONE.
pub fn run_to_halt(vcpu: &mut Vcpu) {
    for _ in 0..1000 {
        match vcpu.run().expect("run") {
            Exit::None => continue,
            Exit::Halted => return,
            other => panic!("unexpected exit before HLT: {other:?}"),
        }
    }
    panic!("guest did not halt");
}

/// Runs until an exit other than NONE and returns its reason code.
pub fn next_reason(vcpu: &mut Vcpu) -> u64 {
    for _ in 0..1000 {
        let e = vcpu.run().expect("run");
        if !matches!(e, Exit::None) {
            return e.reason();
        }
    }
    panic!("only NONE exits");
}

/// Reads a general-purpose register.
pub fn gpr(vcpu: &mut Vcpu, r: Gpr) -> u64 {
    vcpu.get_state(StateMask::GPRS).unwrap();
    vcpu.state().gprs[r]
}

/// IDT location for protected-mode guests.
pub const IDT: u64 = 0x600;

/// Installs 32-bit interrupt gates for `handlers` (vector, code address)
/// in an IDT covering vectors 0-31.
pub fn idt32(g: &mut Guest, handlers: &[(u8, u64)]) {
    for &(v, h) in handlers {
        let gate: u64 =
            (h & 0xffff) | (u64::from(modes::CODE32_SELECTOR) << 16) | (0x8e00u64 << 32) | ((h >> 16) << 48);
        g.machine.write_gpa(IDT + 8 * u64::from(v), &gate.to_le_bytes()).unwrap();
    }
    g.vcpu
        .update(StateMask::SEGS, |s| {
            s.segs[Seg::Idt].base = IDT;
            s.segs[Seg::Idt].limit = 32 * 8 - 1;
        })
        .unwrap();
}

/// Points real-mode interrupt vector `v` at `0:handler`.
pub fn ivt(g: &Guest, v: u8, handler: u16) {
    let entry = u32::from(handler).to_le_bytes();
    g.machine.write_gpa(4 * u64::from(v), &entry).unwrap();
}

/// Reads a little-endian u32 of guest memory.
pub fn read_u32(g: &Guest, gpa: u64) -> u32 {
    let mut b = [0u8; 4];
    g.machine.read_gpa(gpa, &mut b).unwrap();
    u32::from_le_bytes(b)
}

/// Recomputes the metadata checksum of a snapshot file edited by a test,
/// by the documented format (metadata length at byte 12, FNV-1a 64 of the
/// metadata at 16, metadata from 40), written here, not the library's.
pub fn reseal_snapshot_file(f: &mut [u8]) {
    let meta_len = u32::from_le_bytes(f[12..16].try_into().unwrap()) as usize;
    let sum = f[40..40 + meta_len]
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    f[16..24].copy_from_slice(&sum.to_le_bytes());
}

#[allow(unused_imports)]
pub use nvmm_testkit::Rng;
