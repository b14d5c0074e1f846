//! NetBSD's semantics where KVM behaves differently: memory exits that
//! leave the instruction undone (map memory and run again), instruction
//! fetches from unmapped memory, exits reported in order and never stale,
//! assist callbacks that call back, other threads injecting and stopping,
//! stops whatever signals the VCPU thread blocks, and an FPU set without a
//! get.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use nvmm::exit::reason;
use nvmm::x86::modes;
use nvmm::x86::xsave::xfeature;
use nvmm::{Event, Exit, Gpr, MemAccess, Prot, Seg, StateMask, Unanswered, Vcpu, VcpuConf};

/// Guest physical page with nothing mapped until a test maps it.
const HOLE: u64 = 0x80_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Real,
    Protected,
    Long,
}

const MODES: [Mode; 3] = [Mode::Real, Mode::Protected, Mode::Long];

/// A guest in `mode` running `code`, with RBX (or DS:BX in real mode)
/// addressing the first byte of `HOLE`.
fn guest(mode: Mode, code: &[u8]) -> Guest {
    let mut g = match mode {
        Mode::Real => real_mode(code),
        Mode::Protected => protected_mode(code),
        Mode::Long => long_mode(code),
    };
    g.vcpu
        .update(StateMask::GPRS | StateMask::SEGS, |s| match mode {
            Mode::Real => {
                // DS = ES = HOLE >> 4: offset 0 is HOLE.
                for seg in [Seg::Ds, Seg::Es] {
                    s.segs[seg].selector = (HOLE >> 4) as u16;
                    s.segs[seg].base = HOLE;
                }
                s.gprs[Gpr::Rbx] = 0;
                s.gprs[Gpr::Rdi] = 0;
            }
            _ => {
                s.gprs[Gpr::Rbx] = HOLE;
                s.gprs[Gpr::Rdi] = HOLE;
            }
        })
        .unwrap();
    g
}

/// The MOV encodings `[(size, store, load)]` of `mode` with `[rbx]`
/// (`[bx]` in real mode) and AL/AX/EAX/RAX.
fn movs(mode: Mode) -> Vec<(usize, Vec<u8>, Vec<u8>)> {
    match mode {
        Mode::Real => vec![
            (1, vec![0x88, 0x07], vec![0x8a, 0x07]),
            (2, vec![0x89, 0x07], vec![0x8b, 0x07]),
            (4, vec![0x66, 0x89, 0x07], vec![0x66, 0x8b, 0x07]),
        ],
        Mode::Protected => vec![
            (1, vec![0x88, 0x03], vec![0x8a, 0x03]),
            (2, vec![0x66, 0x89, 0x03], vec![0x66, 0x8b, 0x03]),
            (4, vec![0x89, 0x03], vec![0x8b, 0x03]),
        ],
        Mode::Long => vec![
            (1, vec![0x88, 0x03], vec![0x8a, 0x03]),
            (2, vec![0x66, 0x89, 0x03], vec![0x66, 0x8b, 0x03]),
            (4, vec![0x89, 0x03], vec![0x8b, 0x03]),
            (8, vec![0x48, 0x89, 0x03], vec![0x48, 0x8b, 0x03]),
        ],
    }
}

/// Runs to the next exit that is not NONE, through `f`.
fn next_exit<R>(vcpu: &mut Vcpu, f: impl Fn(Exit<'_>) -> R) -> R {
    for _ in 0..1000 {
        match vcpu.run().expect("run") {
            Exit::None => continue,
            e => return f(e),
        }
    }
    panic!("only NONE exits");
}

/// The memory exit of `vcpu`'s next run: its address, kind and size,
/// without answering it.
fn memory_exit(vcpu: &mut Vcpu) -> (u64, MemAccess, usize) {
    next_exit(vcpu, |e| match e {
        Exit::Memory(m) => (m.gpa(), m.access(), m.size()),
        other => panic!("expected a memory exit, got {other:?}"),
    })
}

/// A guest in `mode` running the byte-sized MOV store (or load) of
/// `movs` through `[rbx]`, then HLT; with the access size and the MOV's
/// length.
fn byte_mov_guest(mode: Mode, store: bool) -> (Guest, usize, u64) {
    let (size, st, ld) = movs(mode).remove(0);
    let mut code = if store { st } else { ld };
    let len = code.len() as u64;
    code.push(0xf4); // hlt
    (guest(mode, &code), size, len)
}

/// Source of the MOVS tests (DS:SI): guest RAM after the code.
const SRC: u64 = CODE + 0x100;

/// A guest in `mode` running the string instruction `code` with RCX = `cx`
/// and RSI = `SRC` (DS flat in real mode; ES:RDI addresses `HOLE`, as
/// `guest` sets it).
fn string_guest(mode: Mode, code: &[u8], cx: u64) -> Guest {
    let mut g = guest(mode, code);
    g.vcpu
        .update(StateMask::GPRS | StateMask::SEGS, |s| {
            s.gprs[Gpr::Rcx] = cx;
            s.gprs[Gpr::Rsi] = SRC;
            if mode == Mode::Real {
                // DS addresses the source for MOVS: ES holds HOLE.
                s.segs[Seg::Ds].selector = 0;
                s.segs[Seg::Ds].base = 0;
            }
        })
        .unwrap();
    g
}

/// RDI as `guest` sets it: `HOLE`, or offset 0 of ES = `HOLE` in real mode.
fn hole_di(mode: Mode) -> u64 {
    if mode == Mode::Real { 0 } else { HOLE }
}

const VALUE: u64 = 0x8877_6655_4433_2211;

#[test]
fn a_store_to_memory_mapped_after_its_exit_lands_there() {
    nvmm_testkit::kvm_or_skip!();
    for mode in MODES {
        for (size, store, _) in movs(mode) {
            let mut code = store.clone();
            code.push(0xf4); // hlt
            let mut g = guest(mode, &code);
            g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rax] = VALUE).unwrap();
            assert_eq!(memory_exit(&mut g.vcpu), (HOLE, MemAccess::Write, size), "{mode:?} size {size}");
            // NetBSD: the guest stopped before the store.
            assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE, "{mode:?} size {size}: RIP on the store");
            g.machine.map_anonymous(HOLE, 4096, Prot::ALL).unwrap();
            run_to_halt(&mut g.vcpu);
            let mut got = [0u8; 8];
            g.machine.read_gpa(HOLE, &mut got).unwrap();
            assert_eq!(&got[..size], &VALUE.to_le_bytes()[..size], "{mode:?} size {size}: the store landed");
            assert!(got[size..].iter().all(|&b| b == 0), "{mode:?} size {size}: no more than the store");
            assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + code.len() as u64, "{mode:?}: halted once");
        }
    }
}

/// Read-only memory mapped where a store exited (a VMM's ROM) does not
/// take the store. With NetBSD's rule the guest stores again and exits
/// again (the VMM then discards the write); with the Rust API's default
/// the exit's data completes it, to no memory.
#[test]
fn a_store_to_memory_mapped_read_only_after_its_exit_never_lands() {
    nvmm_testkit::kvm_or_skip!();
    for rule in [Unanswered::Reexecute, Unanswered::Complete] {
        for mode in MODES {
            let (mut g, size, _) = byte_mov_guest(mode, true);
            g.vcpu.set_unanswered(rule);
            g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rax] = VALUE).unwrap();
            assert_eq!(memory_exit(&mut g.vcpu), (HOLE, MemAccess::Write, size), "{rule:?} {mode:?}");
            g.machine.map_anonymous(HOLE, 4096, Prot::READ | Prot::EXEC).unwrap();
            if rule == Unanswered::Reexecute {
                assert_eq!(memory_exit(&mut g.vcpu), (HOLE, MemAccess::Write, size), "{mode:?}: the store exits again");
                assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE, "{mode:?}: RIP on the store");
            } else {
                run_to_halt(&mut g.vcpu);
            }
            let mut got = [0u8; 8];
            g.machine.read_gpa(HOLE, &mut got).unwrap();
            assert_eq!(got, [0; 8], "{rule:?} {mode:?}: the read-only memory kept its bytes");
        }
    }
}

#[test]
fn a_load_from_memory_mapped_after_its_exit_reads_it() {
    nvmm_testkit::kvm_or_skip!();
    for mode in MODES {
        for (size, _, load) in movs(mode) {
            let mut code = load.clone();
            code.push(0xf4);
            let mut g = guest(mode, &code);
            let old = 0xa5a5_a5a5_a5a5_a5a5u64;
            g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rax] = old).unwrap();
            assert_eq!(memory_exit(&mut g.vcpu), (HOLE, MemAccess::Read, size), "{mode:?} size {size}");
            assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE, "{mode:?} size {size}: RIP on the load");
            g.machine.map_anonymous(HOLE, 4096, Prot::ALL).unwrap();
            g.machine.write_gpa(HOLE, &VALUE.to_le_bytes()).unwrap();
            run_to_halt(&mut g.vcpu);
            let mask = if size == 8 { u64::MAX } else { (1u64 << (8 * size)) - 1 };
            let rax = gpr(&mut g.vcpu, Gpr::Rax);
            // A 32-bit load zero-extends in 64-bit mode; outside it the
            // upper half of RAX is not architectural.
            let (rax, old) = if mode == Mode::Long { (rax, old) } else { (rax & 0xffff_ffff, old & 0xffff_ffff) };
            let want = if size == 4 && mode == Mode::Long { VALUE & mask } else { (old & !mask) | (VALUE & mask) };
            assert_eq!(rax, want, "{mode:?} size {size}: loaded from the new memory");
        }
    }
}

#[test]
fn string_stores_to_memory_mapped_after_their_exit_land_there() {
    nvmm_testkit::kvm_or_skip!();
    for mode in MODES {
        // rep stosb with CX = 4 ; rep movsb with CX = 4 (from CODE + 0x100)
        for (name, insn) in [("rep stosb", [0xf3u8, 0xaa]), ("rep movsb", [0xf3, 0xa4])] {
            let mut g = string_guest(mode, &[insn[0], insn[1], 0xf4], 4);
            g.machine.write_gpa(SRC, &[1, 2, 3, 4]).unwrap();
            g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rax] = 0x5a).unwrap();
            let (gpa, access, _) = memory_exit(&mut g.vcpu);
            assert_eq!((gpa, access), (HOLE, MemAccess::Write), "{mode:?} {name}");
            g.vcpu.get_state(StateMask::GPRS).unwrap();
            let s = g.vcpu.state();
            assert_eq!((s.gprs[Gpr::Rip], s.gprs[Gpr::Rcx] & 0xffff), (CODE, 4), "{mode:?} {name}: nothing done");
            g.machine.map_anonymous(HOLE, 4096, Prot::ALL).unwrap();
            run_to_halt(&mut g.vcpu);
            let mut got = [0u8; 5];
            g.machine.read_gpa(HOLE, &mut got).unwrap();
            let want: [u8; 5] = if name == "rep stosb" { [0x5a, 0x5a, 0x5a, 0x5a, 0] } else { [1, 2, 3, 4, 0] };
            assert_eq!(got, want, "{mode:?} {name}");
            assert_eq!(gpr(&mut g.vcpu, Gpr::Rcx) & 0xffff, 0, "{mode:?} {name}");
        }
    }
}

#[test]
fn an_instruction_fetch_from_unmapped_memory_is_an_exec_memory_exit() {
    nvmm_testkit::kvm_or_skip!();
    for mode in MODES {
        // Start the VCPU at HOLE (CS base HOLE in real mode).
        let mut g = guest(mode, &[0xf4]);
        g.vcpu
            .update(StateMask::GPRS | StateMask::SEGS, |s| {
                if mode == Mode::Real {
                    s.segs[Seg::Cs].base = HOLE;
                    s.gprs[Gpr::Rip] = 0;
                } else {
                    s.gprs[Gpr::Rip] = HOLE;
                }
            })
            .unwrap();
        let (gpa, access, _) = memory_exit(&mut g.vcpu);
        assert_eq!((gpa, access), (HOLE, MemAccess::Exec), "{mode:?}");
        // Map code there and run again: the guest executes it.
        g.machine.map_anonymous(HOLE, 4096, Prot::ALL).unwrap();
        g.machine.write_gpa(HOLE, &[0x90, 0xf4]).unwrap(); // nop ; hlt
        run_to_halt(&mut g.vcpu);
        let rip = gpr(&mut g.vcpu, Gpr::Rip);
        let want = if mode == Mode::Real { 2 } else { HOLE + 2 };
        assert_eq!(rip, want, "{mode:?}");
    }
}

/// A long-mode guest: `mov rax,5 ; mov cr8,rax ; out 0x10,al ; hlt`.
fn tpr_guest() -> Guest {
    let mut g = long_mode(&[
        0x48, 0xc7, 0xc0, 0x05, 0x00, 0x00, 0x00, // mov rax,5
        0x44, 0x0f, 0x22, 0xc0, //                  mov cr8,rax
        0xe6, 0x10, //                              out 0x10,al
        0xf4, //                                    hlt
    ]);
    g.vcpu.configure(VcpuConf::Tpr { exit_changed: true }).unwrap();
    g
}

/// The data byte of the next exit, an OUT.
fn out_byte(vcpu: &mut Vcpu) -> u8 {
    next_exit(vcpu, |e| match e {
        Exit::Io(io) => io.data()[0],
        other => panic!("expected the OUT, got {other:?}"),
    })
}

#[test]
fn a_tpr_exit_goes_first_once_and_shows_the_new_tpr() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = tpr_guest();
    assert_eq!(next_reason(&mut g.vcpu), reason::TPR_CHANGED);
    assert_eq!(g.vcpu.exit_state().unwrap().cr8, 5);
    g.vcpu.get_state(StateMask::CRS).unwrap();
    assert_eq!(g.vcpu.state().crs[nvmm::Cr::Cr8], 5, "CR8 in the state");
    // The OUT has not happened yet as far as the program can see.
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + 11, "RIP on the OUT");
    // Nothing changed: the OUT comes next, once.
    assert_eq!(out_byte(&mut g.vcpu), 5);
    assert_eq!(next_reason(&mut g.vcpu), reason::HALTED);
}

#[test]
fn an_exit_after_a_tpr_exit_is_not_stale_when_the_state_changed() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = tpr_guest();
    assert_eq!(next_reason(&mut g.vcpu), reason::TPR_CHANGED);
    g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rax] = 0x42).unwrap();
    // The guest executes the OUT with the new RAX: no stale exit.
    assert_eq!(out_byte(&mut g.vcpu), 0x42);
    assert_eq!(next_reason(&mut g.vcpu), reason::HALTED);
}

/// A real-mode guest: `mov al,0x11 ; out 0x10,al ; hlt`, with a handler
/// for vector 0x40 at 0x1800 (`mov byte [0x2000],0x40 ; hlt`).
fn io_then_halt() -> Guest {
    let g = real_mode(&[0xb0, 0x11, 0xe6, 0x10, 0xf4]);
    g.machine.write_gpa(0x1800, &[0xc6, 0x06, 0x00, 0x20, 0x40, 0xf4]).unwrap();
    ivt(&g, 0x40, 0x1800);
    g
}

#[test]
fn io_callbacks_reach_the_vcpu_they_serve() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = io_then_halt();
    let machine = &g.machine;
    assert_eq!(next_reason(&mut g.vcpu), reason::IO);
    let mut seen = Vec::new();
    g.vcpu
        .assist_io(|io| {
            assert_eq!(io.data[0], 0x11);
            let v = io.vcpu();
            v.get_state(StateMask::ALL).unwrap();
            // As NVMM's assist shows it: the OUT not done yet.
            seen.push(v.state().gprs[Gpr::Rip]);
            v.state_mut().gprs[Gpr::Rbx] = 0x1234;
            v.set_state(StateMask::GPRS).unwrap();
            v.inject(Event::interrupt(0x40)).unwrap();
            // Running or another assist from here is refused.
            assert_eq!(v.run().unwrap_err().errno(), libc_ebusy());
            assert_eq!(v.assist_io(|_| {}).unwrap_err().errno(), libc_ebusy());
            // Memory calls work.
            machine.map_anonymous(HOLE, 4096, Prot::ALL).unwrap();
            assert!(machine.gpa_to_hva(HOLE).is_ok());
        })
        .unwrap();
    assert_eq!(seen, [CODE + 2]);
    // The assist kept the callback's change and finished the OUT.
    g.vcpu.get_state(StateMask::GPRS).unwrap();
    assert_eq!((g.vcpu.state().gprs[Gpr::Rbx], g.vcpu.state().gprs[Gpr::Rip]), (0x1234, CODE + 4));
    // The event injected from the callback is delivered.
    assert_eq!(next_reason(&mut g.vcpu), reason::HALTED);
    assert_eq!(read_u32(&g, 0x2000) & 0xff, 0x40);
}

#[test]
fn memory_callbacks_reach_the_vcpu_they_serve() {
    nvmm_testkit::kvm_or_skip!();
    for emulated in [false, true] {
        // mov al,[bx] with DS:BX at HOLE ; hlt
        let mut g = guest(Mode::Real, &[0x8a, 0x07, 0xf4]);
        let stop = g.vcpu.handle();
        assert_eq!(memory_exit(&mut g.vcpu).0, HOLE);
        if emulated {
            // A state change before the assist makes it emulate the
            // instruction in the library (as NetBSD's assist does).
            g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rcx] = 7).unwrap();
        }
        let mut calls = 0;
        g.vcpu
            .assist_mem(|m| {
                calls += 1;
                assert!(!m.write);
                m.data.fill(0x66);
                let v = m.vcpu();
                v.get_state(StateMask::GPRS | StateMask::SEGS).unwrap();
                assert_eq!(v.state().gprs[Gpr::Rip], CODE, "the load not done yet");
                v.state_mut().gprs[Gpr::Rdx] = 0xdd;
                v.set_state(StateMask::GPRS).unwrap();
                stop.stop();
            })
            .unwrap();
        assert_eq!(calls, 1);
        g.vcpu.get_state(StateMask::GPRS).unwrap();
        let s = g.vcpu.state().gprs;
        assert_eq!((s[Gpr::Rdx], s[Gpr::Rax] & 0xff), (0xdd, 0x66), "emulated={emulated}");
        assert!(matches!(g.vcpu.run().unwrap(), Exit::Stopped), "the stop from the callback");
        run_to_halt(&mut g.vcpu);
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + 3, "emulated={emulated}");
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rax) & 0xff, 0x66, "emulated={emulated}");
        if emulated {
            assert_eq!(gpr(&mut g.vcpu, Gpr::Rcx), 7);
        }
    }
}

fn libc_ebusy() -> i32 {
    16
}

/// A real-mode guest that counts in the word at 0x500 forever
/// (`inc word [0x500] ; jmp $-4`), with the vector 0x40 handler of
/// [`io_then_halt`].
fn counting_guest() -> Guest {
    let g = real_mode(&[0xff, 0x06, 0x00, 0x05, 0xeb, 0xfa]);
    g.machine.write_gpa(0x1800, &[0xc6, 0x06, 0x00, 0x20, 0x40, 0xf4]).unwrap();
    ivt(&g, 0x40, 0x1800);
    g
}

/// Waits (bounded) until the counting guest has counted: it is inside a
/// run then.
fn wait_until_counting(m: &nvmm::Machine) {
    let mut first = [0u8; 2];
    m.read_gpa(0x500, &mut first).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut now = [0u8; 2];
        m.read_gpa(0x500, &mut now).unwrap();
        if now != first {
            return;
        }
        assert!(Instant::now() < deadline, "the guest never ran");
        std::thread::yield_now();
    }
}

#[test]
fn another_thread_injects_and_stops_a_spinning_vcpu() {
    nvmm_testkit::kvm_or_skip!();
    let g = counting_guest();
    let (machine, mut vcpu) = (g.machine, g.vcpu);
    let handle = vcpu.handle();
    let (tx, rx) = mpsc::channel();
    let runner = std::thread::spawn(move || {
        // Runs until the stop, then until the injected interrupt's HLT.
        let first = next_exit(&mut vcpu, |e| e.reason());
        let second = next_exit(&mut vcpu, |e| e.reason());
        tx.send(()).unwrap();
        (first, second)
    });
    wait_until_counting(&machine);
    // Neither waits for the VCPU to leave the guest.
    handle.inject(Event::interrupt(0x40)).unwrap();
    handle.stop();
    rx.recv_timeout(Duration::from_secs(20)).expect("the VCPU stopped");
    let (first, second) = runner.join().unwrap();
    assert_eq!((first, second), (reason::STOPPED, reason::HALTED));
    let mut marker = [0u8; 1];
    machine.read_gpa(0x2000, &mut marker).unwrap();
    assert_eq!(marker[0], 0x40, "the interrupt injected from another thread was delivered");
}

#[test]
fn a_vcpu_thread_that_blocks_every_signal_still_stops() {
    nvmm_testkit::kvm_or_skip!();
    for _ in 0..20 {
        let g = counting_guest();
        let (machine, mut vcpu) = (g.machine, g.vcpu);
        let handle = vcpu.handle();
        let runner = std::thread::spawn(move || {
            block_every_signal();
            next_exit(&mut vcpu, |e| e.reason())
        });
        wait_until_counting(&machine);
        handle.stop();
        let start = Instant::now();
        assert_eq!(runner.join().unwrap(), reason::STOPPED);
        assert!(start.elapsed() < Duration::from_secs(20));
    }
}

/// Blocks every signal in the calling thread (QEMU's VCPU threads block
/// all but their own).
#[allow(unsafe_code)]
fn block_every_signal() {
    let all: u64 = !0;
    // SAFETY: rt_sigprocmask(SIG_BLOCK, &all, NULL, 8) reads 8 bytes of
    // mask and changes only the calling thread's signal mask.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_BLOCK, &all as *const u64, 0usize, 8usize) };
    assert_eq!(r, 0, "rt_sigprocmask");
}

#[test]
fn setting_the_fpu_without_getting_it_keeps_the_avx_upper_halves() {
    nvmm_testkit::kvm_or_skip!();
    // At CPL 3: hosts that emulate guest kernel code cannot emulate AVX.
    let mut g = user_mode64(&[
        0xc5, 0xfd, 0x74, 0xc0, //                               vpcmpeqb ymm0,ymm0,ymm0
        0xe6, 0x10, //                                           out 0x10,al
        0xc5, 0xfe, 0x7f, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00, // vmovdqu YMMWORD PTR ds:0x2000,ymm0
        0xe6, 0x10, //                                           out 0x10,al
    ]);
    assert_ne!(g.vcpu.state().fpu.fx_cw, 0);
    g.vcpu
        .update(StateMask::CRS, |s| {
            s.crs[nvmm::Cr::Cr4] |= modes::cr4::OSXSAVE;
            s.crs[nvmm::Cr::Xcr0] = xfeature::X87 | xfeature::SSE | xfeature::AVX;
        })
        .unwrap();
    assert_eq!(next_reason(&mut g.vcpu), reason::IO);
    // Set XMM0 without getting the FPU first.
    g.vcpu.state_mut().fpu.fx_xmm[0] = [0x42; 16];
    g.vcpu.state_mut().fpu.fx_cw = 0x37f;
    g.vcpu.state_mut().fpu.fx_mxcsr = 0x1f80;
    g.vcpu.set_state(StateMask::FPU).unwrap();
    assert_eq!(next_reason(&mut g.vcpu), reason::IO);
    let mut ymm0 = [0u8; 32];
    g.machine.read_gpa(0x2000, &mut ymm0).unwrap();
    assert_eq!(&ymm0[..16], &[0x42; 16], "the FXSAVE part was set");
    assert_eq!(&ymm0[16..], &[0xff; 16], "the upper half the guest wrote is kept");
}

/// A long-mode guest: `mov rax,5 ; mov cr8,rax ; hlt ; out 0x11,al ; hlt`
/// (the OUT only runs if the first HLT is skipped).
fn tpr_then_halt_guest() -> Guest {
    let mut g = long_mode(&[
        0x48, 0xc7, 0xc0, 0x05, 0x00, 0x00, 0x00, // mov rax,5
        0x44, 0x0f, 0x22, 0xc0, //                  mov cr8,rax
        0xf4, //                                    hlt (CODE + 11)
        0xe6, 0x11, //                              out 0x11,al
        0xf4, //                                    hlt
    ]);
    g.vcpu.configure(VcpuConf::Tpr { exit_changed: true }).unwrap();
    g
}

#[test]
fn a_halt_behind_a_tpr_exit_is_shown_not_executed_yet() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = tpr_then_halt_guest();
    assert_eq!(next_reason(&mut g.vcpu), reason::TPR_CHANGED);
    // The TPR raise is reported at the HLT's exit, first: the HLT has not
    // executed yet as far as the program can see.
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + 11, "RIP on the HLT");
    assert_eq!(next_reason(&mut g.vcpu), reason::HALTED);
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + 12, "RIP past the HLT");
}

#[test]
fn a_halt_behind_a_tpr_exit_executes_again_after_a_state_change() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = tpr_then_halt_guest();
    assert_eq!(next_reason(&mut g.vcpu), reason::TPR_CHANGED);
    g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rax] = 0x42).unwrap();
    // The guest runs from the HLT again (not past it, which would OUT).
    assert_eq!(next_reason(&mut g.vcpu), reason::HALTED);
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + 12, "RIP past the first HLT");
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rax), 0x42);
}

/// QEMU's way before a run: CR8 set through the state, then a stop. The
/// run returns STOPPED without entering; the exit state shows the CR8
/// the program set (NetBSD stores the state before looking at the stop).
#[test]
fn the_exit_state_of_a_stopped_run_shows_the_cr8_just_set() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = tpr_guest();
    assert_eq!(next_reason(&mut g.vcpu), reason::TPR_CHANGED);
    assert_eq!(g.vcpu.exit_state().unwrap().cr8, 5);
    g.vcpu.update(StateMask::CRS, |s| s.crs[nvmm::Cr::Cr8] = 9).unwrap();
    g.vcpu.stop_handle().stop();
    assert_eq!(next_reason(&mut g.vcpu), reason::STOPPED);
    assert_eq!(g.vcpu.exit_state().unwrap().cr8, 9, "CR8 as set");
    g.vcpu.get_state(StateMask::CRS).unwrap();
    assert_eq!(g.vcpu.state().crs[nvmm::Cr::Cr8], 9);
}

/// The same for the interrupt shadow and window set through the state and
/// an event injected: a run stopped before entering reports them.
#[test]
fn the_exit_state_of_a_stopped_run_shows_the_intr_and_event_just_set() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[0xf4]);
    let before = g.vcpu.exit_state().unwrap();
    assert!(!before.int_shadow && !before.int_window_exiting && !before.evt_pending);
    g.vcpu
        .update(StateMask::INTR, |s| {
            s.intr.set_int_shadow(true);
            s.intr.set_int_window_exiting(true);
        })
        .unwrap();
    g.vcpu.inject(Event::exception(6, 0)).unwrap();
    g.vcpu.stop_handle().stop();
    assert_eq!(next_reason(&mut g.vcpu), reason::STOPPED);
    let e = g.vcpu.exit_state().unwrap();
    assert!(e.int_shadow, "the shadow as set");
    assert!(e.int_window_exiting, "the window as armed");
    assert!(e.evt_pending, "the event waits");
}

/// A load the program answered through the exit's data is done as far as
/// the state shows, before the next run: RAX holds the data, RIP is past.
#[test]
fn an_answered_load_shows_done_before_the_next_run() {
    nvmm_testkit::kvm_or_skip!();
    for mode in MODES {
        for (size, _, load) in movs(mode) {
            let mut code = load.clone();
            code.push(0xf4); // hlt
            let mut g = guest(mode, &code);
            next_exit(&mut g.vcpu, |e| match e {
                Exit::Memory(mut m) => m.data_mut().copy_from_slice(&VALUE.to_le_bytes()[..size]),
                other => panic!("{mode:?} size {size}: expected the load's exit, got {other:?}"),
            });
            let mask = if size == 8 { u64::MAX } else { (1u64 << (size * 8)) - 1 };
            assert_eq!(gpr(&mut g.vcpu, Gpr::Rax) & mask, VALUE & mask, "{mode:?} size {size}: RAX loaded");
            assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + load.len() as u64, "{mode:?} size {size}: RIP past");
            run_to_halt(&mut g.vcpu);
            assert_eq!(gpr(&mut g.vcpu, Gpr::Rax) & mask, VALUE & mask, "{mode:?} size {size}: after the run");
        }
    }
}

/// A store split across two unmapped pages is two exits; reading the
/// state after the first lets KVM go on to the second, which the next run
/// reports (not lost, not done without the program).
#[test]
fn the_second_half_of_a_split_store_is_reported_after_a_state_read() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = guest(Mode::Long, &[0x89, 0x03, 0xf4]); // mov [rbx],eax ; hlt
    g.vcpu
        .update(StateMask::GPRS, |s| {
            s.gprs[Gpr::Rbx] = HOLE + 0xffe;
            s.gprs[Gpr::Rax] = 0x4433_2211;
        })
        .unwrap();
    let first = next_exit(&mut g.vcpu, |e| match e {
        Exit::Memory(m) => (m.gpa(), m.is_write(), m.data().to_vec()),
        other => panic!("expected the first half, got {other:?}"),
    });
    assert_eq!(first, (HOLE + 0xffe, true, vec![0x11, 0x22]));
    g.vcpu.get_state(StateMask::GPRS).unwrap();
    let second = next_exit(&mut g.vcpu, |e| match e {
        Exit::Memory(m) => (m.gpa(), m.is_write(), m.data().to_vec()),
        other => panic!("expected the second half, got {other:?}"),
    });
    assert_eq!(second, (HOLE + 0x1000, true, vec![0x33, 0x44]));
    run_to_halt(&mut g.vcpu);
}

/// At the exit of a string store into unmapped memory, REP with elements
/// left (CX 4) or none (CX 1, which KVM may have finished already), or
/// plain, the registers show the instruction not started: RIP on it, CX,
/// DI and SI as they were.
#[test]
fn string_stores_show_their_registers_untouched_at_the_exit() {
    nvmm_testkit::kvm_or_skip!();
    let cases: [(&str, &[u8], &[u64]); 4] = [
        ("rep stosb", &[0xf3, 0xaa, 0xf4], &[4, 1]),
        ("rep movsb", &[0xf3, 0xa4, 0xf4], &[4, 1]),
        ("stosb", &[0xaa, 0xf4], &[4]),
        ("movsb", &[0xa4, 0xf4], &[4]),
    ];
    for mode in MODES {
        for (name, code, cxs) in cases {
            for &cx in cxs {
                let mut g = string_guest(mode, code, cx);
                let (gpa, access, _) = memory_exit(&mut g.vcpu);
                assert_eq!((gpa, access), (HOLE, MemAccess::Write), "{mode:?} {name} cx {cx}");
                g.vcpu.get_state(StateMask::GPRS).unwrap();
                let s = g.vcpu.state().gprs;
                let what = format!("{mode:?} {name} cx {cx}");
                assert_eq!(s[Gpr::Rip], CODE, "{what}: RIP");
                assert_eq!(s[Gpr::Rcx], cx, "{what}: RCX");
                assert_eq!(s[Gpr::Rdi], hole_di(mode), "{what}: RDI");
                assert_eq!(s[Gpr::Rsi], SRC, "{what}: RSI");
            }
        }
    }
}

/// A store the program neither answered nor let complete, but emulated by
/// changing the registers: the guest executes it again with them (NetBSD
/// runs the instruction again), so the next exit carries the new data and
/// the first store never happens.
#[test]
fn a_store_whose_registers_changed_after_its_exit_executes_again() {
    nvmm_testkit::kvm_or_skip!();
    for mode in MODES {
        let (mut g, size, len) = byte_mov_guest(mode, true);
        g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rax] = 0x11).unwrap();
        assert_eq!(memory_exit(&mut g.vcpu), (HOLE, MemAccess::Write, size), "{mode:?}");
        g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rax] = 0x42).unwrap();
        let data = next_exit(&mut g.vcpu, |e| match e {
            Exit::Memory(m) => (m.gpa(), m.data().to_vec()),
            other => panic!("{mode:?}: expected the store again, got {other:?}"),
        });
        assert_eq!(data, (HOLE, vec![0x42]), "{mode:?}: the store again, with the new RAX");
        // Its data was used: the store is done as far as the state shows.
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + len, "{mode:?}: RIP past the store");
    }
}

/// A load the program neither answered nor let complete, but emulated by
/// changing other registers: the guest executes it again with them, and
/// the exit's stale data never reaches RAX.
#[test]
fn a_load_whose_registers_changed_after_its_exit_executes_again() {
    nvmm_testkit::kvm_or_skip!();
    for mode in MODES {
        let (mut g, size, _) = byte_mov_guest(mode, false);
        g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rax] = 0x11).unwrap();
        assert_eq!(memory_exit(&mut g.vcpu), (HOLE, MemAccess::Read, size), "{mode:?}");
        g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rdx] = 0x77).unwrap();
        assert_eq!(memory_exit(&mut g.vcpu), (HOLE, MemAccess::Read, size), "{mode:?}: the load again");
        let s = {
            g.vcpu.get_state(StateMask::GPRS).unwrap();
            g.vcpu.state().gprs
        };
        assert_eq!((s[Gpr::Rip], s[Gpr::Rax] & 0xff, s[Gpr::Rdx]), (CODE, 0x11, 0x77), "{mode:?}");
    }
}

/// An answered REP INSB element is done as far as the state shows before
/// the next run: the byte in memory, RDI and RCX moved, RIP past.
#[test]
fn an_answered_ins_shows_done_before_the_next_run() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[0xf3, 0x6c, 0xf4]); // rep insb ; hlt
    g.vcpu
        .update(StateMask::GPRS | StateMask::SEGS, |s| {
            s.segs[Seg::Es].selector = 0;
            s.segs[Seg::Es].base = 0;
            s.gprs[Gpr::Rdi] = 0x3000;
            s.gprs[Gpr::Rdx] = 0x10;
            s.gprs[Gpr::Rcx] = 1;
        })
        .unwrap();
    next_exit(&mut g.vcpu, |e| match e {
        Exit::Io(mut io) => {
            assert!(io.is_in());
            io.data_mut()[0] = 0xab;
        }
        other => panic!("expected the INSB, got {other:?}"),
    });
    g.vcpu.get_state(StateMask::GPRS).unwrap();
    let s = g.vcpu.state().gprs;
    assert_eq!((s[Gpr::Rip], s[Gpr::Rcx], s[Gpr::Rdi]), (CODE + 2, 0, 0x3001));
    let mut b = [0u8; 1];
    g.machine.read_gpa(0x3000, &mut b).unwrap();
    assert_eq!(b[0], 0xab);
    run_to_halt(&mut g.vcpu);
}

/// A long-mode guest with IF set: `mov rax,5 ; mov cr8,rax ; out 0x10,al ;
/// hlt`, TPR exits on.
fn tpr_guest_with_interrupts_on() -> Guest {
    let mut g = tpr_guest();
    g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rflags] |= 0x200).unwrap();
    g
}

/// The program acted on a TPR report that went before the OUT: the OUT
/// runs again, and no interrupt window exit appears that nobody armed.
#[test]
fn a_dropped_exit_behind_a_tpr_report_arms_no_window() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = tpr_guest_with_interrupts_on();
    assert_eq!(next_reason(&mut g.vcpu), reason::TPR_CHANGED);
    g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rax] = 0x42).unwrap();
    assert_eq!(out_byte(&mut g.vcpu), 0x42);
    assert_eq!(next_reason(&mut g.vcpu), reason::HALTED);
}

/// A window exit queued behind a TPR report, dropped because the program
/// acted on the report: the window it armed did open, so it stays armed
/// and the next run reports it.
#[test]
fn a_dropped_window_exit_behind_a_tpr_report_stays_armed() {
    nvmm_testkit::kvm_or_skip!();
    // mov rax,5 ; mov cr8,rax ; sti ; mov ecx,1000000 ; loop $ ; hlt (IF
    // clear at first; KVM reports the window while the guest loops, and
    // the HLT ends the test if no window is armed)
    let mut g = long_mode(&[
        0x48, 0xc7, 0xc0, 0x05, 0x00, 0x00, 0x00, // mov rax,5
        0x44, 0x0f, 0x22, 0xc0, //                  mov cr8,rax
        0xfb, //                                    sti
        0xb9, 0x40, 0x42, 0x0f, 0x00, //            mov ecx,1000000
        0xe2, 0xfe, //                              loop $
        0xf4, //                                    hlt
    ]);
    g.vcpu.configure(VcpuConf::Tpr { exit_changed: true }).unwrap();
    g.vcpu.update(StateMask::INTR, |s| s.intr.set_int_window_exiting(true)).unwrap();
    assert_eq!(next_reason(&mut g.vcpu), reason::TPR_CHANGED);
    g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rbx] = 1).unwrap();
    assert_eq!(next_reason(&mut g.vcpu), reason::INT_READY);
}

/// Registers the program set after an I/O exit are the state NVMM's I/O
/// assist starts from: it applies the instruction to them (the IN's data
/// into AL, the string registers moved with the address size's wrap, RIP
/// past unless a REP has elements left), and the guest runs on from there.
#[test]
fn the_io_assist_applies_the_instruction_to_registers_set_after_the_exit() {
    nvmm_testkit::kvm_or_skip!();
    // in al,0x10 ; hlt
    let mut g = real_mode(&[0xe4, 0x10, 0xf4]);
    g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rax] = 0x1111_2222).unwrap();
    assert_eq!(next_reason(&mut g.vcpu), reason::IO);
    g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rbx] = 0x1234).unwrap();
    g.vcpu.assist_io(|io| io.data[0] = 0x5a).unwrap();
    g.vcpu.get_state(StateMask::GPRS).unwrap();
    let s = g.vcpu.state().gprs;
    assert_eq!((s[Gpr::Rax], s[Gpr::Rbx], s[Gpr::Rip]), (0x1111_225a, 0x1234, CODE + 2), "IN");
    run_to_halt(&mut g.vcpu);
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rax), 0x1111_225a, "IN, after the run");

    // rep outsb (SI wrapping at 64 KiB, DF both ways), elements left or not.
    for (cx, df, si, si_after) in [(3u64, false, 0xffff, 0x0000), (1, false, 0x10, 0x11), (3, true, 0x0000, 0xffff)] {
        let mut g = real_mode(&[0xf3, 0x6e, 0xf4]);
        let high = 0xdead_0000u64;
        g.vcpu
            .update(StateMask::GPRS, |s| {
                s.gprs[Gpr::Rcx] = high | cx;
                s.gprs[Gpr::Rsi] = high | si;
                s.gprs[Gpr::Rdx] = 0x10;
                if df {
                    s.gprs[Gpr::Rflags] |= 0x400;
                }
            })
            .unwrap();
        assert_eq!(next_reason(&mut g.vcpu), reason::IO);
        g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rbx] = 0x1234).unwrap();
        g.vcpu.assist_io(|_| {}).unwrap();
        g.vcpu.get_state(StateMask::GPRS).unwrap();
        let s = g.vcpu.state().gprs;
        let what = format!("rep outsb cx {cx} df {df} si {si:#x}");
        assert_eq!(s[Gpr::Rsi], high | si_after, "{what}: RSI");
        assert_eq!(s[Gpr::Rcx], high | (cx - 1), "{what}: RCX");
        assert_eq!(s[Gpr::Rip], if cx == 1 { CODE + 2 } else { CODE }, "{what}: RIP");
        assert_eq!(s[Gpr::Rbx], 0x1234, "{what}: the program's RBX");
    }
}

/// Once answered, the program's later changes win over the instruction's
/// results: RAX set after an answered MMIO load keeps its value, and RIP
/// moved after an answered IN sends the guest there.
#[test]
fn changes_after_an_answer_are_not_undone_by_the_completion() {
    nvmm_testkit::kvm_or_skip!();
    for mode in MODES {
        let (mut g, size, _) = byte_mov_guest(mode, false);
        next_exit(&mut g.vcpu, |e| match e {
            Exit::Memory(mut m) => m.data_mut().fill(0x11),
            other => panic!("{mode:?}: expected the load, got {other:?}"),
        });
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rax) & 0xff, 0x11, "{mode:?} size {size}");
        g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rax] = 0x99).unwrap();
        run_to_halt(&mut g.vcpu);
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rax), 0x99, "{mode:?}: RAX as the program set it");
    }
    // in al,0x10 ; hlt ; ... ; at CODE + 0x10: hlt
    let mut code = vec![0xe4, 0x10, 0xf4];
    code.resize(0x10, 0x90);
    code.push(0xf4);
    let mut g = real_mode(&code);
    next_exit(&mut g.vcpu, |e| match e {
        Exit::Io(mut io) => io.data_mut()[0] = 0x5a,
        other => panic!("expected the IN, got {other:?}"),
    });
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + 2);
    g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rip] = CODE + 0x10).unwrap();
    run_to_halt(&mut g.vcpu);
    let s = {
        g.vcpu.get_state(StateMask::GPRS).unwrap();
        g.vcpu.state().gprs
    };
    assert_eq!((s[Gpr::Rip], s[Gpr::Rax] & 0xff), (CODE + 0x11, 0x5a), "the guest went where the program said");
}

/// With NetBSD's rule, an unanswered OUT left alone executes again: the
/// same exit, RIP on it.
#[test]
fn an_unanswered_out_left_alone_executes_again_with_netbsds_rule() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[0xb0, 0x33, 0xe6, 0x10, 0xf4]); // mov al,0x33 ; out 0x10,al ; hlt
    g.vcpu.set_unanswered(Unanswered::Reexecute);
    for round in 0..3 {
        assert_eq!(next_reason(&mut g.vcpu), reason::IO, "round {round}");
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + 2, "round {round}: RIP on the OUT");
    }
    assert_eq!(out_byte(&mut g.vcpu), 0x33);
    assert_eq!(next_reason(&mut g.vcpu), reason::HALTED);
}

/// A fetch from unmapped memory left alone faults again the same way; once
/// the program moves RIP, the guest runs from there.
#[test]
fn a_fetch_fault_left_alone_repeats_until_the_program_acts() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[0xf4]);
    g.vcpu
        .update(StateMask::GPRS | StateMask::SEGS, |s| {
            s.segs[Seg::Cs].base = HOLE;
            s.segs[Seg::Cs].selector = (HOLE >> 4) as u16;
            s.gprs[Gpr::Rip] = 0;
        })
        .unwrap();
    for round in 0..3 {
        let gpa = next_exit(&mut g.vcpu, |e| match e {
            Exit::Memory(m) => (m.gpa(), m.access()),
            other => panic!("round {round}: expected the fetch fault, got {other:?}"),
        });
        assert_eq!(gpa, (HOLE, MemAccess::Exec), "round {round}");
    }
    g.vcpu
        .update(StateMask::GPRS | StateMask::SEGS, |s| {
            s.segs[Seg::Cs].base = 0;
            s.segs[Seg::Cs].selector = 0;
            s.gprs[Gpr::Rip] = CODE;
        })
        .unwrap();
    assert_eq!(next_reason(&mut g.vcpu), reason::HALTED);
}

/// A REP STOSB element the program answered (it used the exit's data) is
/// done as far as the state shows: with elements left RIP stays on the
/// instruction, after the last one RIP is past it (KVM still has RIP on it,
/// RCX 0, until the guest runs again).
#[test]
fn an_answered_string_store_element_shows_done() {
    nvmm_testkit::kvm_or_skip!();
    for mode in MODES {
        for cx in [3u64, 1] {
            let mut g = string_guest(mode, &[0xf3, 0xaa, 0xf4], cx); // rep stosb ; hlt
            let di = hole_di(mode);
            next_exit(&mut g.vcpu, |e| match e {
                Exit::Memory(m) => assert_eq!((m.gpa(), m.data().len()), (HOLE, 1)),
                other => panic!("{mode:?} cx {cx}: expected the store, got {other:?}"),
            });
            g.vcpu.get_state(StateMask::GPRS).unwrap();
            let s = g.vcpu.state().gprs;
            let rip = if cx == 1 { CODE + 2 } else { CODE };
            assert_eq!((s[Gpr::Rip], s[Gpr::Rcx], s[Gpr::Rdi]), (rip, cx - 1, di + 1), "{mode:?} cx {cx}");
        }
    }
}
