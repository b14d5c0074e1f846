//! Guest debugging through the library: single steps, hardware
//! breakpoints and watchpoints, software breakpoints, and the guest's own
//! #BP and #DB still reaching the guest. Oracles: the guest CPU (where it
//! stops, what its handlers record) and the x86 rules for DR6/DR7.

mod common;

use common::*;
use nvmm::{DebugEvent, Exit, Gpr, GuestDebug, HwBreakpoint, StateMask, Vcpu, WatchKind};

/// Runs until the next exit other than NONE; returns the debug exit's
/// event and PC, or panics with what came instead.
fn next_debug(vcpu: &mut Vcpu) -> (DebugEvent, u64) {
    for _ in 0..1000 {
        match vcpu.run().expect("run") {
            Exit::None => continue,
            Exit::Debug(d) => return (d.event(), d.pc()),
            other => panic!("expected a debug exit, got {other:?}"),
        }
    }
    panic!("no debug exit");
}

fn step_debug() -> GuestDebug {
    GuestDebug { single_step: true, ..GuestDebug::default() }
}

/// Where the watchpoint tests watch.
const WATCHED: u64 = 0x3000;

/// `debug` with a write watchpoint on `len` bytes at [`WATCHED`] in slot
/// `slot`.
fn watching(mut debug: GuestDebug, slot: usize, len: u8) -> GuestDebug {
    debug.hardware[slot] = Some(HwBreakpoint::new(WATCHED, WatchKind::Write, len).unwrap());
    debug
}

/// The debug exit of the watchpoint of [`watching`] in `slot` at `pc`.
fn watch_hit(slot: u8, pc: u64) -> (DebugEvent, u64) {
    (DebugEvent::Watchpoint { index: slot, addr: WATCHED, kind: WatchKind::Write }, pc)
}

/// `mov [rdi], rax ; nop ; hlt` in 64-bit code, RDI at [`WATCHED`], RAX
/// at `rax`: the store ends at `CODE + 3`.
fn storing(rax: u64) -> Guest {
    let mut g = long_mode(&[0x48, 0x89, 0x07, 0x90, 0xf4]);
    g.vcpu
        .update(StateMask::GPRS, |s| {
            s.gprs[Gpr::Rdi] = WATCHED;
            s.gprs[Gpr::Rax] = rax;
        })
        .unwrap();
    g
}

/// nop ; nop ; xchg ax,ax (2 bytes) ; nop ; hlt
const NOPS: [u8; 6] = [0x90, 0x90, 0x66, 0x90, 0x90, 0xf4];

fn steps_walk_the_instructions(mut g: Guest) {
    g.vcpu.set_guest_debug(&step_debug()).unwrap();
    for pc in [CODE + 1, CODE + 2, CODE + 4, CODE + 5] {
        assert_eq!(next_debug(&mut g.vcpu), (DebugEvent::SingleStep, pc));
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), pc);
    }
    g.vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
    run_to_halt(&mut g.vcpu);
}

#[test]
fn single_step_in_every_mode() {
    nvmm_testkit::kvm_or_skip!();
    steps_walk_the_instructions(real_mode(&NOPS));
    steps_walk_the_instructions(protected_mode(&NOPS));
    steps_walk_the_instructions(long_mode(&NOPS));
}

/// The settings read back as set, and all off when debugging ends; single
/// steps hold interrupts off exactly where KVM offers it
/// (`KVM_CAP_SET_GUEST_DEBUG2` lists `KVM_GUESTDBG_BLOCKIRQ`).
#[test]
fn settings_read_back_and_steps_block_interrupts_where_kvm_offers_it() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = long_mode(&NOPS);
    assert_eq!(g.vcpu.guest_debug(), &GuestDebug::default());
    assert!(!g.vcpu.debug_blocks_interrupts(), "nothing single-steps");
    // A store under a watchpoint the library steps for.
    let mut w = storing(1);
    w.vcpu.set_guest_debug(&watching(GuestDebug::default(), 0, 4)).unwrap();
    assert_eq!(next_debug(&mut w.vcpu), watch_hit(0, CODE + 3));
    assert!(
        !w.vcpu.debug_blocks_interrupts(),
        "the debugger does not single-step (the library does, for the watchpoint)"
    );
    g.vcpu.set_guest_debug(&step_debug()).unwrap();
    assert_eq!(g.vcpu.guest_debug(), &step_debug());
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let flags = kvm.check_extension_raw(kvm_bindings::KVM_CAP_SET_GUEST_DEBUG2.into());
    let offered = flags > 0 && (flags as u32) & kvm_bindings::KVM_GUESTDBG_BLOCKIRQ != 0;
    assert_eq!(g.vcpu.debug_blocks_interrupts(), offered, "KVM's guest-debug flags {flags:#x}");
    g.vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
    assert_eq!(g.vcpu.guest_debug(), &GuestDebug::default());
    assert!(!g.vcpu.debug_blocks_interrupts(), "debugging ended");
    run_to_halt(&mut g.vcpu);
}

#[test]
fn execute_breakpoint_then_continue() {
    nvmm_testkit::kvm_or_skip!();
    for mut g in [real_mode(&NOPS), protected_mode(&NOPS), long_mode(&NOPS)] {
        let mut d = GuestDebug::default();
        d.hardware[2] = Some(HwBreakpoint::new(CODE + 4, WatchKind::Execute, 1).unwrap());
        g.vcpu.set_guest_debug(&d).unwrap();
        assert_eq!(next_debug(&mut g.vcpu), (DebugEvent::HardwareBreakpoint { index: 2 }, CODE + 4));
        run_to_halt(&mut g.vcpu);
    }
}

#[test]
fn software_breakpoint_in_every_mode() {
    nvmm_testkit::kvm_or_skip!();
    for mut g in [real_mode(&NOPS), protected_mode(&NOPS), long_mode(&NOPS)] {
        g.machine.insert_sw_breakpoint(CODE + 2).unwrap();
        let d = GuestDebug { software_breakpoints: true, ..GuestDebug::default() };
        g.vcpu.set_guest_debug(&d).unwrap();
        assert_eq!(next_debug(&mut g.vcpu), (DebugEvent::SoftwareBreakpoint, CODE + 2));
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + 2);
        g.machine.remove_sw_breakpoint(CODE + 2).unwrap();
        run_to_halt(&mut g.vcpu);
    }
}

#[test]
fn write_watchpoint() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = storing(0x1234_5678);
    g.vcpu.set_guest_debug(&watching(GuestDebug::default(), 1, 8)).unwrap();
    assert_eq!(next_debug(&mut g.vcpu), watch_hit(1, CODE + 3));
    run_to_halt(&mut g.vcpu);
}

/// A write that changes only the last byte a watchpoint covers is caught:
/// the whole watched length is compared.
#[test]
fn watchpoint_covers_its_whole_length() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = storing(0xff11_2233_4455_6677);
    g.machine.write_gpa(WATCHED, &0x0011_2233_4455_6677u64.to_le_bytes()).unwrap();
    g.vcpu.set_guest_debug(&watching(GuestDebug::default(), 0, 8)).unwrap();
    let exit = g.vcpu.run().unwrap();
    let Exit::Debug(e) = exit else { panic!("expected the watchpoint, got {exit:?}") };
    assert_eq!((e.event(), e.pc()), watch_hit(0, CODE + 3));
    assert_ne!(e.dr6() & (1 << 14), 0, "DR6.BS: found by the library's step");
}

fn sw_debug() -> GuestDebug {
    GuestDebug { software_breakpoints: true, ..GuestDebug::default() }
}

/// Where the guest's own exception handlers go.
const HANDLER: u64 = CODE + 0x100;

/// The guest's own INT3, with a debugger attached whose breakpoint is
/// elsewhere, reaches the guest's handler with the return address past
/// it: `int3 ; hlt` and a handler `mov eax, 0x33 ; hlt`.
#[test]
fn guests_own_int3_reaches_its_handler() {
    nvmm_testkit::kvm_or_skip!();
    let handler = [0xb8, 0x33, 0, 0, 0, 0xf4];
    // Protected mode: IDT gate for #BP.
    let mut g = protected_mode(&[0xcc, 0xf4]);
    g.machine.write_gpa(HANDLER, &handler).unwrap();
    idt32(&mut g, &[(3, HANDLER)]);
    // Real mode: the IVT's vector 3 (real-mode library steps are on:
    // software breakpoints exist).
    let r = real_mode(&[0xcc, 0xf4]);
    r.machine.write_gpa(HANDLER, &handler[..3]).unwrap(); // mov ax, 0x33
    r.machine.write_gpa(HANDLER + 3, &[0xf4]).unwrap();
    ivt(&r, 3, HANDLER as u16);
    for (mut g, sp_width) in [(g, 4u64), (r, 2)] {
        g.machine.insert_sw_breakpoint(CODE + 0x40).unwrap();
        g.vcpu.set_guest_debug(&sw_debug()).unwrap();
        run_to_halt(&mut g.vcpu);
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), HANDLER + if sp_width == 4 { 6 } else { 4 });
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rax) & 0xffff, 0x33);
        // The pushed return address: past the INT3.
        let sp = gpr(&mut g.vcpu, Gpr::Rsp);
        let mut ret = [0u8; 4];
        g.machine.read_gpa(sp, &mut ret[..sp_width as usize]).unwrap();
        assert_eq!(u64::from(u32::from_le_bytes(ret)), CODE + 1);
    }
}

/// A guest that programs its own DR0/DR7 (an execute breakpoint with a
/// #DB handler of its own) does not hide the debugger's breakpoint, reads
/// back its own values, and gets its own #DB once the debugger lifts its
/// breakpoint.
#[test]
fn guests_own_debug_registers() {
    nvmm_testkit::kvm_or_skip!();
    // nop x4 ; mov eax, 1 ; hlt     handler: mov ebx, 0x44 ; hlt
    let code = [0x90, 0x90, 0x90, 0x90, 0xb8, 1, 0, 0, 0, 0xf4];
    let setup = |g: &mut Guest| {
        g.machine.write_gpa(HANDLER, &[0xbb, 0x44, 0, 0, 0, 0xf4]).unwrap();
        idt32(g, &[(1, HANDLER)]);
        g.vcpu
            .update(StateMask::DRS, |s| {
                s.drs[nvmm::Dr::Dr0] = CODE + 4;
                s.drs[nvmm::Dr::Dr7] = 0x401;
            })
            .unwrap();
    };
    let mut g = protected_mode(&code);
    setup(&mut g);
    let mut d = GuestDebug::default();
    d.hardware[0] = Some(HwBreakpoint::new(CODE + 3, WatchKind::Execute, 1).unwrap());
    g.vcpu.set_guest_debug(&d).unwrap();
    assert_eq!(next_debug(&mut g.vcpu), (DebugEvent::HardwareBreakpoint { index: 0 }, CODE + 3));
    g.vcpu.get_state(StateMask::DRS).unwrap();
    assert_eq!(g.vcpu.state().drs[nvmm::Dr::Dr0], CODE + 4, "the guest reads its own DR0");
    assert_eq!(g.vcpu.state().drs[nvmm::Dr::Dr7] & 0xff, 0x01, "the guest reads its own DR7");
    // The debugger lifts its hardware breakpoint: the guest's DR0 fires
    // into the guest's handler.
    g.machine.insert_sw_breakpoint(CODE + 0x40).unwrap();
    g.vcpu.set_guest_debug(&sw_debug()).unwrap();
    run_to_halt(&mut g.vcpu);
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rbx), 0x44, "the guest's own #DB handler ran");
}

/// The guest's own single step (RFLAGS.TF) reaches its #DB handler while
/// a debugger watches with a hardware breakpoint elsewhere (so #DB exits
/// to the library, which hands this one back): only the library's own
/// steps are its to swallow.
#[test]
fn guests_own_single_step_reaches_its_handler() {
    nvmm_testkit::kvm_or_skip!();
    // pushfd ; or dword [esp], 0x100 ; popfd ; nop ; hlt
    // handler: mov ebx, 0x44 ; hlt
    let code = [0x9c, 0x81, 0x0c, 0x24, 0x00, 0x01, 0x00, 0x00, 0x9d, 0x90, 0xf4];
    let mut g = protected_mode(&code);
    g.machine.write_gpa(HANDLER, &[0xbb, 0x44, 0, 0, 0, 0xf4]).unwrap();
    idt32(&mut g, &[(1, HANDLER)]);
    let mut d = GuestDebug::default();
    d.hardware[0] = Some(HwBreakpoint::new(CODE + 0x40, WatchKind::Execute, 1).unwrap());
    g.vcpu.set_guest_debug(&d).unwrap();
    run_to_halt(&mut g.vcpu);
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rbx), 0x44, "the guest's own #DB handler ran");
    // It trapped after the first instruction with TF set (the NOP): the
    // return address is the HLT.
    let sp = gpr(&mut g.vcpu, Gpr::Rsp);
    let mut ret = [0u8; 4];
    g.machine.read_gpa(sp, &mut ret).unwrap();
    assert_eq!(u64::from(u32::from_le_bytes(ret)), CODE + 10);
}

/// Single steps through `cli ; nop ; sti ; nop ; nop` with an interrupt
/// handler installed: each step lands on the next instruction, none in
/// the handler, whatever IF says.
#[test]
fn steps_across_an_interrupt_window() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = protected_mode(&[0xfa, 0x90, 0xfb, 0x90, 0x90, 0xf4]);
    g.machine.write_gpa(HANDLER, &[0xf4]).unwrap();
    idt32(&mut g, &[(0x20, HANDLER)]);
    g.vcpu.set_guest_debug(&step_debug()).unwrap();
    for pc in [CODE + 1, CODE + 2, CODE + 3, CODE + 4, CODE + 5] {
        assert_eq!(next_debug(&mut g.vcpu), (DebugEvent::SingleStep, pc));
    }
}

/// Two VCPUs at the same software breakpoint, each on its own thread:
/// both are reported.
#[test]
fn two_vcpus_hit_one_breakpoint() {
    nvmm_testkit::kvm_or_skip!();
    let g = long_mode(&NOPS);
    g.machine.insert_sw_breakpoint(CODE + 4).unwrap();
    let mut second = g.machine.create_vcpu(1).unwrap();
    second
        .update(StateMask::ALL, |s| {
            nvmm::x86::modes::long_mode(s, GDT, PML4);
            s.gprs[Gpr::Rip] = CODE;
            s.gprs[Gpr::Rsp] = STACK - 0x1000;
        })
        .unwrap();
    let Guest { machine, vcpu } = g;
    let hits: Vec<_> = std::thread::scope(|t| {
        let runs: Vec<_> = [vcpu, second]
            .into_iter()
            .map(|mut v| {
                t.spawn(move || {
                    v.set_guest_debug(&sw_debug()).unwrap();
                    next_debug(&mut v)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(hits, vec![(DebugEvent::SoftwareBreakpoint, CODE + 4); 2]);
    drop(machine);
}

/// Guest user code (CPL 3): the library debugs it exactly as far as the
/// host's KVM does (the oracle is a bare KVM guest at CPL 3 with
/// `KVM_GUESTDBG_SINGLESTEP`). Where KVM debugs user code, steps and
/// breakpoints are reported; where it runs user code without intercepts,
/// the guest runs to its OUT, and the README says so.
#[test]
fn user_code_is_debugged_as_far_as_kvm_does() {
    nvmm_testkit::kvm_or_skip!();
    let kvm_debugs = nvmm_testkit::host::debugs_user_code().expect("probe KVM");
    // nop ; nop ; xchg ax,ax ; nop ; out 0x10, al
    let code = [0x90, 0x90, 0x66, 0x90, 0x90, 0xe6, 0x10];
    let mut g = user_mode64(&code);
    g.vcpu.set_guest_debug(&step_debug()).unwrap();
    let first = g.vcpu.run().unwrap();
    if kvm_debugs {
        assert!(matches!(first, Exit::Debug(d) if d.pc() == CODE + 1), "{first:?}");
        let mut g = user_mode64(&code);
        g.machine.insert_sw_breakpoint(CODE + 2).unwrap();
        g.vcpu.set_guest_debug(&sw_debug()).unwrap();
        assert_eq!(next_debug(&mut g.vcpu), (DebugEvent::SoftwareBreakpoint, CODE + 2));
    } else {
        assert!(matches!(first, Exit::Io(_)), "KVM does not step user code here; neither can the library: {first:?}");
    }
}

/// A software breakpoint belongs to a guest physical address: inserted
/// once, it stops code running through another virtual mapping of the same
/// page, and is reported at that mapping's address.
#[test]
fn a_breakpoint_is_shared_by_every_mapping_of_its_page() {
    nvmm_testkit::kvm_or_skip!();
    use nvmm::x86::PagingMode;
    use nvmm::x86::bits::pte;
    use nvmm::x86::paging::PageTables;
    const ALIAS: u64 = 0x4000_0000;
    let mut g = long_mode(&NOPS);
    let mut t = PageTables::new(PagingMode::Level4, 0x20_0000);
    t.map(0, 0, 2 << 20, pte::RW).unwrap();
    t.map(ALIAS, CODE & !0xfff, 0x1000, pte::RW).unwrap();
    for (gpa, page) in t.pages() {
        g.machine.write_gpa(gpa, page).unwrap();
    }
    g.vcpu
        .update(StateMask::CRS | StateMask::GPRS, |s| {
            s.crs[nvmm::Cr::Cr3] = t.cr3();
            s.gprs[Gpr::Rip] = ALIAS + (CODE & 0xfff);
        })
        .unwrap();
    // Inserted at the physical address of CODE + 4, hit through the alias.
    g.machine.insert_sw_breakpoint(CODE + 4).unwrap();
    g.vcpu.set_guest_debug(&sw_debug()).unwrap();
    assert_eq!(next_debug(&mut g.vcpu), (DebugEvent::SoftwareBreakpoint, ALIAS + (CODE & 0xfff) + 4));
    assert_eq!(g.machine.sw_breakpoints(), vec![(CODE + 4, 0x90)]);
    g.machine.remove_sw_breakpoint(CODE + 4).unwrap();
    assert_eq!(g.machine.remove_sw_breakpoint(CODE + 4).unwrap_err().errno(), libc::ENOENT);
    run_to_halt(&mut g.vcpu);
}

/// Bad settings are clear errors: unaligned or oversized hardware
/// breakpoints, breakpoints in unmapped memory.
#[test]
fn bad_debug_settings_are_errors() {
    nvmm_testkit::kvm_or_skip!();
    let g = long_mode(&NOPS);
    assert_eq!(HwBreakpoint::new(0x1001, WatchKind::Write, 2).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(g.machine.insert_sw_breakpoint(0x10_0000_0000).unwrap_err().errno(), libc::ENOENT);
    assert!(g.machine.sw_breakpoints().is_empty());
}

/// Stale DR6 bits a guest left behind (B1, B2): the CPU replaces B0–B3
/// with the cause of each `#DB` and never clears BS.
const STALE_DR6: u64 = 0xffff_0ff6;

/// What the guest's own `#DB` handler (`mov eax, dr6 ; hlt`) saw: DR6,
/// the return address it was pushed and the pushed flags' TF.
#[derive(Debug, PartialEq)]
struct GuestDb {
    dr6: u64,
    ret: u64,
    tf: bool,
}

/// Runs `g` to the HLT of its `#DB` handler and reads what the handler
/// saw; `width` is the stack slot size (2 in real mode, 4 in protected).
fn guest_db(g: &mut Guest, width: usize) -> GuestDb {
    run_to_halt(&mut g.vcpu);
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), HANDLER + 4, "the guest's #DB handler ran to its HLT");
    let sp = gpr(&mut g.vcpu, Gpr::Rsp);
    let mut frame = [0u8; 12];
    g.machine.read_gpa(sp, &mut frame[..3 * width]).unwrap();
    let slot = |i: usize| {
        let mut b = [0u8; 8];
        b[..width].copy_from_slice(&frame[i * width..(i + 1) * width]);
        u64::from_le_bytes(b)
    };
    GuestDb {
        dr6: gpr(&mut g.vcpu, Gpr::Rax) & 0xffff_ffff,
        ret: slot(0),
        tf: slot(2) & nvmm::x86::bits::rflags::TF != 0,
    }
}

/// A guest that sets its own RFLAGS.TF, with `mov eax, dr6 ; hlt` as its
/// `#DB` handler and DR6 holding [`STALE_DR6`]; the trap comes after the
/// NOP, on the HLT at `CODE + hlt`.
fn guest_tf(real: bool) -> (Guest, u64) {
    let handler = [0x0f, 0x21, 0xf0, 0xf4];
    let (mut g, hlt) = if real {
        // pushf ; pop ax ; or ax, 0x100 ; push ax ; popf ; nop ; hlt
        let g = real_mode(&[0x9c, 0x58, 0x0d, 0x00, 0x01, 0x50, 0x9d, 0x90, 0xf4]);
        ivt(&g, 1, HANDLER as u16);
        (g, 8)
    } else {
        // pushfd ; or dword [esp], 0x100 ; popfd ; nop ; hlt
        let mut g = protected_mode(&[0x9c, 0x81, 0x0c, 0x24, 0x00, 0x01, 0x00, 0x00, 0x9d, 0x90, 0xf4]);
        idt32(&mut g, &[(1, HANDLER)]);
        (g, 10)
    };
    g.machine.write_gpa(HANDLER, &handler).unwrap();
    g.vcpu.update(StateMask::DRS, |s| s.drs[nvmm::Dr::Dr6] = STALE_DR6).unwrap();
    (g, hlt)
}

/// The guest's own single step beside a debugger. Where the library takes
/// no steps of its own (software breakpoints with none inserted in
/// protected or real mode, one inserted in protected mode, an execute
/// breakpoint elsewhere) the guest's `#DB` handler runs on the same
/// instruction and sees the same DR6 and frame as the same guest run with
/// no debugger (KVM delivering the trap: the oracle). Where the library
/// steps for itself (a software breakpoint inserted in real mode, a
/// watchpoint) the guest's trap is lost, as the README and `vcpu/debug.rs`
/// say: KVM hides RFLAGS.TF from register reads while it single-steps, and
/// the guest runs on to its HLT.
#[test]
fn guests_own_single_step_beside_a_debugger() {
    nvmm_testkit::kvm_or_skip!();
    for real in [true, false] {
        let width = if real { 2 } else { 4 };
        let (mut g, hlt) = guest_tf(real);
        let native = guest_db(&mut g, width);
        assert_eq!((native.ret, native.tf), (CODE + hlt, true), "real mode {real}");
        let watch = watching(GuestDebug::default(), 3, 4);
        let mut hw = GuestDebug::default();
        hw.hardware[0] = Some(HwBreakpoint::new(CODE + 0x40, WatchKind::Execute, 1).unwrap());
        let debuggers = [
            ("software breakpoints, none inserted", sw_debug(), false, false),
            ("a software breakpoint elsewhere", sw_debug(), true, real),
            ("a watchpoint elsewhere", watch, false, true),
            ("an execute breakpoint elsewhere", hw, false, false),
        ];
        for (what, debug, insert, library_steps) in debuggers {
            let (mut g, _) = guest_tf(real);
            if insert {
                g.machine.insert_sw_breakpoint(CODE + 0x40).unwrap();
            }
            g.vcpu.set_guest_debug(&debug).unwrap();
            if library_steps {
                run_to_halt(&mut g.vcpu);
                assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + hlt + 1, "real mode {real}, {what}: the trap is lost");
            } else {
                assert_eq!(guest_db(&mut g, width), native, "real mode {real}, {what}");
            }
        }
    }
}

/// Instructions KVM's emulator gives up on and the run loop completes
/// (x87 at CPL 0 on hosts that emulate guest kernel code; natively run
/// elsewhere) are stepped like any other, and a watched write by one is
/// reported after it: `fld qword [0x3008] ; fstp qword [0x3000] ; nop ;
/// hlt` with 1.0 at 0x3008.
#[test]
fn steps_and_watchpoints_cover_instructions_the_run_loop_completes() {
    nvmm_testkit::kvm_or_skip!();
    let code = [0xdd, 0x04, 0x25, 0x08, 0x30, 0, 0, 0xdd, 0x1c, 0x25, 0x00, 0x30, 0, 0, 0x90, 0xf4];
    let long_mode = |code: &[u8]| {
        let g = long_mode(code);
        g.machine.write_gpa(0x3008, &1.0f64.to_le_bytes()).unwrap();
        g
    };
    let mut g = long_mode(&code);
    g.vcpu.set_guest_debug(&step_debug()).unwrap();
    for pc in [CODE + 7, CODE + 14, CODE + 15] {
        assert_eq!(next_debug(&mut g.vcpu), (DebugEvent::SingleStep, pc));
    }
    g.vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
    run_to_halt(&mut g.vcpu);
    assert_eq!(read_u32(&g, 0x3004), 0x3ff0_0000, "1.0 stored");

    let mut g = long_mode(&code);
    g.vcpu.set_guest_debug(&watching(GuestDebug::default(), 2, 8)).unwrap();
    assert_eq!(next_debug(&mut g.vcpu), watch_hit(2, CODE + 14));
    run_to_halt(&mut g.vcpu);
}

/// A HLT while debugging halts once: `hlt ; nop ; nop ; nop ; hlt`. KVM
/// leaves a halt pending after a stepped HLT on hosts that emulate guest
/// kernel code (the next run executes one instruction, then exits for HLT),
/// so the library never steps a HLT: its own steps (a watchpoint, real-mode
/// software breakpoints, stepping over an execute breakpoint) report the
/// HLT exit, a debugger's step reports the step past it. Either way, with
/// debugging then off, the guest runs on to its second HLT, or through
/// an interrupt handler (`nop ; hlt`) to its HLT, and halts only there.
#[test]
fn a_hlt_while_debugging_halts_once() {
    nvmm_testkit::kvm_or_skip!();
    let code = [0xf4, 0x90, 0x90, 0x90, 0xf4];
    let watch = watching(GuestDebug::default(), 0, 4);
    let mut on_hlt = GuestDebug::default();
    on_hlt.hardware[1] = Some(HwBreakpoint::new(CODE, WatchKind::Execute, 1).unwrap());
    let debuggers = [
        ("a watchpoint", watch),
        ("software breakpoints", sw_debug()),
        ("an execute breakpoint on the HLT", on_hlt),
        ("the debugger's steps", step_debug()),
    ];
    for real in [false, true] {
        for (what, debug) in debuggers {
            for inject in [false, true] {
                let mut g = if real { real_mode(&code) } else { protected_mode(&code) };
                g.machine.write_gpa(HANDLER, &[0x90, 0xf4]).unwrap();
                if real {
                    ivt(&g, 0x20, HANDLER as u16);
                } else {
                    idt32(&mut g, &[(0x20, HANDLER)]);
                    g.vcpu.update(StateMask::SEGS, |s| s.segs[nvmm::Seg::Idt].limit = 0xfff).unwrap();
                }
                g.machine.insert_sw_breakpoint(CODE + 0x40).unwrap();
                g.vcpu.set_guest_debug(&debug).unwrap();
                let case = format!("real mode {real}, {what}, inject {inject}");
                if debug == on_hlt {
                    assert_eq!(next_debug(&mut g.vcpu), (DebugEvent::HardwareBreakpoint { index: 1 }, CODE), "{case}");
                }
                if debug == step_debug() {
                    assert_eq!(next_debug(&mut g.vcpu), (DebugEvent::SingleStep, CODE + 1), "{case}");
                } else {
                    run_to_halt(&mut g.vcpu);
                }
                assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + 1, "{case}");
                g.vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
                if inject {
                    g.vcpu.inject(nvmm::Event::interrupt(0x20)).unwrap();
                }
                run_to_halt(&mut g.vcpu);
                let end = if inject { HANDLER + 2 } else { CODE + 5 };
                assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), end, "{case}: halted once, at the HLT");
            }
        }
    }
}

/// An interrupt delivered while the library steps for a watchpoint, whose
/// handler is `hlt ; nop ; hlt`. Where the step that delivers it runs the
/// handler's first instruction too (these hosts), that HLT does not halt
/// (KVM ends the step instead; the guest goes on as after a wake-up, as
/// `vcpu/debug.rs` and the README say); where the step ends at the
/// handler's entry, that HLT runs unstepped and halts. Either way the
/// second HLT halts once, and no halt is left pending.
#[test]
fn an_interrupt_delivered_by_a_step_runs_its_handlers_first_instruction() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = protected_mode(&[0x90, 0x90, 0x90, 0xf4]);
    g.machine.write_gpa(HANDLER, &[0xf4, 0x90, 0xf4]).unwrap();
    idt32(&mut g, &[(0x20, HANDLER)]);
    g.vcpu.update(StateMask::SEGS, |s| s.segs[nvmm::Seg::Idt].limit = 0xfff).unwrap();
    g.vcpu.set_guest_debug(&watching(GuestDebug::default(), 0, 4)).unwrap();
    g.vcpu.inject(nvmm::Event::interrupt(0x20)).unwrap();
    run_to_halt(&mut g.vcpu);
    let first = gpr(&mut g.vcpu, Gpr::Rip);
    assert!(first == HANDLER + 3 || first == HANDLER + 1, "halted at {first:#x}");
    if first == HANDLER + 1 {
        run_to_halt(&mut g.vcpu);
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), HANDLER + 3);
    }
    println!("{{\"a step delivering an interrupt runs the handler's first instruction\":{}}}", first == HANDLER + 3);
    g.vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
    g.vcpu.inject(nvmm::Event::interrupt(0x20)).unwrap();
    run_to_halt(&mut g.vcpu);
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), HANDLER + 1, "no halt left pending: the next HLT halts");
}

/// A debugger's single step that writes a watched value reports the
/// watchpoint (the more specific event), and steps that write nothing
/// watched report steps: `mov [rdi], rax ; nop ; hlt`.
#[test]
fn a_step_that_changes_a_watched_value_reports_the_watchpoint() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = storing(0x1234_5678);
    g.vcpu.set_guest_debug(&watching(step_debug(), 1, 8)).unwrap();
    assert_eq!(next_debug(&mut g.vcpu), watch_hit(1, CODE + 3));
    assert_eq!(next_debug(&mut g.vcpu), (DebugEvent::SingleStep, CODE + 4));
}
