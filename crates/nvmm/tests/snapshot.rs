//! VCPU snapshots against real KVM: bit-exact round trips (the oracle is
//! KVM's own state, read back component by component), and guests that
//! resume from a snapshot exactly as the uninterrupted run goes on.

mod common;

use common::*;
use nvmm::{Component, Event, Exit, Gpr, Msr, StateMask, Vcpu};

/// Runs until an exit other than NONE.
fn next_exit(vcpu: &mut Vcpu) -> String {
    loop {
        match vcpu.run().expect("run") {
            Exit::None => continue,
            e => return format!("{e:?}"),
        }
    }
}

/// Distinct values in every component that has them.
fn mark(vcpu: &mut Vcpu) {
    vcpu.get_state(StateMask::ALL).unwrap();
    let s = vcpu.state_mut();
    for (i, r) in [Gpr::Rax, Gpr::Rbx, Gpr::Rcx, Gpr::Rdx, Gpr::R8, Gpr::R15].into_iter().enumerate() {
        s.gprs[r] = 0x1111_0000_0000_0000 * (i as u64 + 1) + 0x77;
    }
    s.msrs[Msr::KernelGsBase] = 0xffff_8000_1234_0000;
    s.msrs[Msr::Lstar] = 0xffff_8000_0000_4000;
    s.drs[nvmm::Dr::Dr0] = 0x4000;
    s.drs[nvmm::Dr::Dr7] = 0x401;
    s.fpu.fx_cw = 0x27f;
    s.fpu.fx_tw = 0x01;
    s.fpu.fx_87_ac[0][..10].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 0x80, 0xff, 0x3f]);
    s.fpu.fx_xmm[7] = [0xab; 16];
    s.crs[nvmm::Cr::Xcr0] = 7;
    s.crs[nvmm::Cr::Cr4] |= 1 << 18;
    vcpu.xsave_mut().set_ymm_hi(9, [0xcd; 16]).unwrap();
    vcpu.set_state(StateMask::ALL).unwrap();
}

/// A snapshot restored into a fresh VCPU of another machine and taken
/// again is the same, byte for byte, in every component and every MSR
/// (the TSC only moves forward by the time between the two).
#[test]
fn round_trips_are_bit_exact() {
    nvmm_testkit::kvm_or_skip!();
    let mut a = long_mode(&[0xf4]);
    mark(&mut a.vcpu);
    let first = a.vcpu.snapshot().unwrap();
    for c in Component::ALL {
        if c != Component::TscKhz {
            assert!(first.component(c).is_some_and(|b| !b.is_empty()), "{c:?} captured");
        }
    }
    assert!(first.msrs().len() > 10, "KVM lists more MSRs than NVMM's eleven: {}", first.msrs().len());
    assert_eq!(first.msrs()[0].0, 0x10, "the TSC comes first");
    // Twice: the first fresh VCPU teaches the library what KVM's fresh
    // VCPUs hold (MP state, TSC frequency, MSRs it refuses to write); the
    // second is restored with that knowledge, and must not differ.
    let mut last = None;
    for round in 0..2 {
        let mut b = long_mode(&[0xf4]);
        b.vcpu.restore(&first).unwrap();
        let second = b.vcpu.snapshot().unwrap();
        for c in Component::ALL {
            assert_eq!(first.component(c), second.component(c), "{c:?} differs after round trip {round}");
        }
        assert_eq!(first.msrs().len(), second.msrs().len());
        for (&(i1, v1), &(i2, v2)) in first.msrs().iter().zip(second.msrs()) {
            assert_eq!(i1, i2);
            if i1 == 0x10 {
                assert!(v2 >= v1 && v2 - v1 < 1 << 40, "TSC {v1:#x} -> {v2:#x}");
            } else {
                assert_eq!(v1, v2, "MSR {i1:#x} after round trip {round}");
            }
        }
        last = Some(b);
    }
    let mut b = last.expect("two rounds");
    // Through NVMM's state too.
    b.vcpu.get_state(StateMask::ALL).unwrap();
    let s = *b.vcpu.state();
    assert_eq!(s.gprs[Gpr::R15], 0x6666_0000_0000_0077);
    assert_eq!(s.msrs[Msr::KernelGsBase], 0xffff_8000_1234_0000);
    assert_eq!(s.fpu.fx_xmm[7], [0xab; 16]);
    assert_eq!(b.vcpu.xsave().ymm_hi(9).unwrap(), [0xcd; 16]);
    // And the restored VCPU runs.
    assert_eq!(next_exit(&mut b.vcpu), "Halted");
}

/// A guest mid-way through a register-only computation (at CPL 3, with
/// SSE state live): restored N times from a snapshot taken at an OUT, it
/// finishes with the uninterrupted run's registers every time.
#[test]
fn restored_guests_finish_like_the_uninterrupted_run() {
    nvmm_testkit::kvm_or_skip!();
    // rcx = 40 rounds of: rax = rax * 31 + rcx ; paddq xmm0, xmm1 ;
    // psllq xmm1, 1 ; vpaddq ymm2, ymm2, ymm3 (AVX: both 128-bit halves) ;
    // fadd st0, st1 (x87) ; out 0x10, al ; loop.  Then out 0x11, al.
    let code = [
        0x48, 0x6b, 0xc0, 0x1f, //       imul rax, rax, 31
        0x48, 0x01, 0xc8, //             add rax, rcx
        0x66, 0x0f, 0xd4, 0xc1, //       paddq xmm0, xmm1
        0x66, 0x0f, 0x73, 0xf1, 0x01, // psllq xmm1, 1
        0xc5, 0xed, 0xd4, 0xd3, //       vpaddq ymm2, ymm2, ymm3
        0xd8, 0xc1, //                   fadd st0, st1
        0xe6, 0x10, //                   out 0x10, al
        0xe2, 0xe6, //                   loop (back to imul)
        0xe6, 0x11, //                   out 0x11, al
    ];
    let start = |g: &mut Guest| {
        g.vcpu.get_state(StateMask::ALL).unwrap();
        let s = g.vcpu.state_mut();
        s.gprs[Gpr::Rcx] = 40;
        s.gprs[Gpr::Rax] = 7;
        s.fpu.fx_xmm[1] = 3u128.to_le_bytes();
        s.fpu.fx_xmm[3] = 5u128.to_le_bytes();
        // x87: ST0 = 1.0, ST1 = 1.0 (TOP 6, registers 6 and 7 valid).
        s.fpu.fx_cw = 0x37f;
        s.fpu.fx_sw = 6 << 11;
        s.fpu.fx_tw = 0xc0;
        s.fpu.fx_87_ac[0][..10].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f]);
        s.fpu.fx_87_ac[1][..10].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f]);
        s.crs[nvmm::Cr::Cr4] |= (1 << 9) | (1 << 18); // OSFXSR, OSXSAVE
        s.crs[nvmm::Cr::Xcr0] = 7;
        g.vcpu.xsave_mut().set_ymm_hi(3, 9u128.to_le_bytes()).unwrap();
        g.vcpu.set_state(StateMask::ALL).unwrap();
    };
    type End = (u64, [u8; 16], [u8; 16], [u8; 16], [u8; 16], [u8; 10]);
    let run_to_end = |v: &mut Vcpu| -> End {
        loop {
            match v.run().unwrap() {
                Exit::Io(io) if io.port() == 0x11 => break,
                Exit::Io(_) | Exit::None => {}
                other => panic!("{other:?}"),
            }
        }
        v.get_state(StateMask::GPRS | StateMask::FPU).unwrap();
        let s = *v.state();
        let st0: [u8; 10] = s.fpu.fx_87_ac[0][..10].try_into().unwrap();
        (s.gprs[Gpr::Rax], s.fpu.fx_xmm[0], s.fpu.fx_xmm[1], s.fpu.fx_xmm[2], v.xsave().ymm_hi(2).unwrap(), st0)
    };
    let mut g = user_mode64(&code);
    start(&mut g);
    // Run 17 rounds, take the snapshot at the 17th OUT (answered).
    for _ in 0..17 {
        let e = next_exit(&mut g.vcpu);
        assert!(e.starts_with("Io"), "{e} at {:#x}", gpr(&mut g.vcpu, Gpr::Rip));
    }
    let snap = g.vcpu.snapshot().unwrap();
    let expected = run_to_end(&mut g.vcpu);
    assert_ne!(expected.0, 0);
    // The AVX upper half and x87 moved: live state, not zeros.
    assert_eq!(u128::from_le_bytes(expected.4), 9 * 40);
    assert_eq!(expected.5, nvmm_testkit::debuggers::x87(41.0));
    for _ in 0..5 {
        g.vcpu.restore(&snap).unwrap();
        assert_eq!(run_to_end(&mut g.vcpu), expected);
    }
    // In another machine, with the same code.
    let mut other = user_mode64(&code);
    other.vcpu.restore(&snap).unwrap();
    assert_eq!(run_to_end(&mut other.vcpu), expected);
}

/// A pending exception is part of the state: injected, captured, and
/// delivered to the guest's handler after a restore into another VCPU.
#[test]
fn pending_events_survive_a_restore() {
    nvmm_testkit::kvm_or_skip!();
    // nop ; hlt       handler: mov eax, 0x66 ; hlt
    let mut g = protected_mode(&[0x90, 0xf4]);
    let handler = CODE + 0x100;
    g.machine.write_gpa(handler, &[0xb8, 0x66, 0, 0, 0, 0xf4]).unwrap();
    idt32(&mut g, &[(6, handler)]);
    g.vcpu.inject(Event::exception(6, 0)).unwrap();
    let snap = g.vcpu.snapshot().unwrap();
    let mut h = protected_mode(&[0x90, 0xf4]);
    h.machine.write_gpa(handler, &[0xb8, 0x66, 0, 0, 0, 0xf4]).unwrap();
    idt32(&mut h, &[(6, handler)]);
    h.vcpu.restore(&snap).unwrap();
    assert_eq!(next_exit(&mut h.vcpu), "Halted");
    assert_eq!(gpr(&mut h.vcpu, Gpr::Rax), 0x66);
    assert_eq!(gpr(&mut h.vcpu, Gpr::Rip), handler + 6);
}

/// The checksum guest: rcx rounds of rax = rax * 0x5851f42d + 0x14057b7,
/// stored at [rsi + rcx * 8] and summed into rbx, an OUT 0x10 per round,
/// OUT 0x11 at the end.
const CHECKSUM: [u8; 26] = [
    0x48, 0x69, 0xc0, 0x2d, 0xf4, 0x51, 0x58, // imul rax, rax, 0x5851f42d
    0x48, 0x05, 0xb7, 0x57, 0x40, 0x01, //       add rax, 0x14057b7
    0x48, 0x89, 0x04, 0xce, //                   mov [rsi + rcx*8], rax
    0x48, 0x01, 0xc3, //                         add rbx, rax
    0xe6, 0x10, //                               out 0x10, al
    0xe2, 0xe8, //                               loop
    0xe6, 0x11, //                               out 0x11, al
];
const ROUNDS: u64 = 3000;
const ARRAY: u64 = 0x10_0000;

fn checksum_guest() -> Guest {
    let mut g = long_mode(&CHECKSUM);
    g.vcpu
        .update(StateMask::GPRS, |s| {
            s.gprs[Gpr::Rcx] = ROUNDS;
            s.gprs[Gpr::Rsi] = ARRAY;
            s.gprs[Gpr::Rax] = 1;
        })
        .unwrap();
    g
}

/// What the guest computed: rax, rbx and its array.
fn finish(machine: &nvmm::Machine, vcpu: &mut Vcpu) -> (u64, u64, Vec<u8>) {
    loop {
        match vcpu.run().unwrap() {
            Exit::Io(io) if io.port() == 0x11 => break,
            Exit::Io(_) | Exit::None => {}
            other => panic!("{other:?}"),
        }
    }
    let mut array = vec![0u8; 8 * (ROUNDS as usize + 1)];
    machine.read_gpa(ARRAY, &mut array).unwrap();
    (gpr(vcpu, Gpr::Rax), gpr(vcpu, Gpr::Rbx), array)
}

fn run_rounds(vcpu: &mut Vcpu, n: u64) {
    for _ in 0..n {
        assert!(next_exit(vcpu).starts_with("Io"));
    }
}

/// Snapshot mid-way; the uninterrupted run's result is what every reset
/// in place and every fork (one after the other, and eight at once on
/// threads) finishes with.
#[test]
fn resets_and_forks_finish_like_the_uninterrupted_run() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = checksum_guest();
    run_rounds(&mut g.vcpu, 1234);
    let snap = g.machine.snapshot(&mut [&mut g.vcpu]).unwrap();
    let expected = finish(&g.machine, &mut g.vcpu);
    for _ in 0..3 {
        g.machine.reset_to(&mut [&mut g.vcpu], &snap).unwrap();
        assert!(finish(&g.machine, &mut g.vcpu) == expected, "reset in place");
    }
    let nvmm = nvmm();
    for _ in 0..3 {
        let (m, mut v) = nvmm.fork(&snap).unwrap();
        assert!(finish(&m, &mut v[0]) == expected, "fork");
        // A used fork reset to the snapshot finishes the same again.
        m.reset_to(&mut [&mut v[0]], &snap).unwrap();
        assert!(finish(&m, &mut v[0]) == expected, "fork reset in place");
    }
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let (m, mut v) = nvmm.fork(&snap).unwrap();
                    finish(&m, &mut v[0])
                })
            })
            .collect();
        for r in runs {
            assert!(r.join().unwrap() == expected, "concurrent fork");
        }
    });
}

/// A thousand forks of one parent each write different data: none sees
/// another's writes, and the parent sees none.
#[test]
fn forks_are_isolated() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = checksum_guest();
    g.machine.write_gpa(0x20_0000, b"parent").unwrap();
    let snap = g.machine.snapshot(&mut [&mut g.vcpu]).unwrap();
    let nvmm = nvmm();
    let forks: Vec<_> = (0..1000).map(|_| nvmm.fork(&snap).unwrap()).collect();
    for (i, (m, _)) in forks.iter().enumerate() {
        m.write_gpa(0x20_0000, format!("fork {i:04}").as_bytes()).unwrap();
    }
    for (i, (m, _)) in forks.iter().enumerate() {
        let mut b = [0u8; 9];
        m.read_gpa(0x20_0000, &mut b).unwrap();
        assert_eq!(&b, format!("fork {i:04}").as_bytes());
    }
    let mut b = [0u8; 6];
    g.machine.read_gpa(0x20_0000, &mut b).unwrap();
    assert_eq!(&b, b"parent");
    snap.read_gpa(0x20_0000, &mut b).unwrap();
    assert_eq!(&b, b"parent");
}

/// A reset after the guest or the VMM wrote 1, 100 and 10 000 pages
/// gives the snapshot's memory exactly, in the machine that took it and in
/// a fork.
#[test]
fn reset_restores_memory_exactly() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = long_mode(&[0xf4]);
    // 48 MiB more, above the first 4 MiB, some of it with data.
    g.machine.map_anonymous(RAM, 48 << 20, nvmm::Prot::ALL).unwrap();
    for p in (0..12288u64).step_by(7) {
        g.machine.write_gpa(RAM + p * 4096, &p.to_le_bytes()).unwrap();
    }
    let snap = g.machine.snapshot(&mut [&mut g.vcpu]).unwrap();
    let image = |m: &nvmm::Machine| {
        let mut all = vec![0u8; (RAM + (48 << 20)) as usize];
        m.read_gpa(0, &mut all).unwrap();
        all
    };
    let want = image(&g.machine);
    let nvmm = nvmm();
    let (fork, mut fv) = nvmm.fork(&snap).unwrap();
    assert!(image(&fork) == want);
    for pages in [1u64, 100, 10_000] {
        for (m, v) in [(&g.machine, &mut g.vcpu), (&fork, &mut fv[0])] {
            for p in 0..pages {
                m.write_gpa(RAM + (p * 4096 * 13) % (48 << 20), &[0xee; 16]).unwrap();
            }
            m.reset_to(&mut [v], &snap).unwrap();
            assert!(image(m) == want, "after {pages} pages written");
        }
    }
}

/// Saved to a file and loaded back (memory mapped from the file), a
/// snapshot forks machines that finish like the uninterrupted run; a
/// file of another vendor is refused.
#[test]
fn saved_snapshots_fork_like_the_original() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = checksum_guest();
    run_rounds(&mut g.vcpu, 999);
    let snap = g.machine.snapshot(&mut [&mut g.vcpu]).unwrap();
    let expected = finish(&g.machine, &mut g.vcpu);
    let path = std::env::temp_dir().join(format!("nvmm-test-{}.nvmmsnap", std::process::id()));
    snap.save(&path).unwrap();
    // Sparse: the 4 MiB guest touched a few pages.
    let on_disk = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).unwrap();
    assert!(on_disk < 1 << 20, "{on_disk} bytes on disk");
    let nvmm = nvmm();
    let loaded = nvmm.load_snapshot(&path).unwrap();
    assert_eq!(loaded.vcpus(), snap.vcpus());
    for _ in 0..3 {
        let (m, mut v) = nvmm.fork(&loaded).unwrap();
        assert!(finish(&m, &mut v[0]) == expected);
    }
    // Another vendor: the metadata's first 12 bytes, checksum recomputed.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40..52].copy_from_slice(b"CyrixInstead");
    reseal_snapshot_file(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    let e = nvmm.load_snapshot(&path).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(e.to_string().contains("CyrixInstead"), "{e}");
    let _ = std::fs::remove_file(path);
}

/// Debugger breakpoints and snapshots: a snapshot holds the program's
/// bytes, not the INT3; a breakpoint survives a reset; a fork's breakpoint
/// lands in its private pages, never in the snapshot or another fork.
#[test]
fn breakpoints_and_snapshots() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = checksum_guest();
    g.machine.insert_sw_breakpoint(CODE + 7).unwrap();
    let snap = g.machine.snapshot(&mut [&mut g.vcpu]).unwrap();
    let mut b = [0u8];
    snap.read_gpa(CODE + 7, &mut b).unwrap();
    assert_eq!(b[0], CHECKSUM[7], "the snapshot has the program's byte");
    g.machine.reset_to(&mut [&mut g.vcpu], &snap).unwrap();
    g.machine.read_gpa(CODE + 7, &mut b).unwrap();
    assert_eq!(b[0], nvmm::INT3, "the breakpoint survives the reset");
    g.vcpu.set_guest_debug(&nvmm::GuestDebug { software_breakpoints: true, ..Default::default() }).unwrap();
    match g.vcpu.run().unwrap() {
        Exit::Debug(d) => assert_eq!(d.pc(), CODE + 7),
        other => panic!("{other:?}"),
    }
    let nvmm = nvmm();
    let (f1, _v1) = nvmm.fork(&snap).unwrap();
    let (f2, _v2) = nvmm.fork(&snap).unwrap();
    f1.insert_sw_breakpoint(CODE).unwrap();
    f2.read_gpa(CODE, &mut b).unwrap();
    assert_eq!(b[0], CHECKSUM[0], "another fork does not see it");
    snap.read_gpa(CODE, &mut b).unwrap();
    assert_eq!(b[0], CHECKSUM[0], "the snapshot does not see it");
}

/// More than 4 GiB of guest memory in several mappings, some above 4 GiB:
/// snapshot, fork and reset carry every byte written, at any address.
#[test]
fn memory_over_4_gib_in_several_mappings() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = long_mode(&[0xf4]);
    let high = [(1u64 << 32, 3u64 << 30), (8u64 << 30, 2u64 << 30)];
    for (gpa, size) in high {
        g.machine.map_anonymous(gpa, size, nvmm::Prot::ALL).unwrap();
    }
    let marks: Vec<u64> = high.iter().flat_map(|&(gpa, size)| [gpa, gpa + size / 2 + 8, gpa + size - 8]).collect();
    for &at in &marks {
        g.machine.write_gpa(at, &at.to_le_bytes()).unwrap();
    }
    let snap = g.machine.snapshot(&mut [&mut g.vcpu]).unwrap();
    assert!(snap.memory_size() > 5 << 30);
    let (f, mut fv) = nvmm().fork(&snap).unwrap();
    for m in [&g.machine, &f] {
        for &at in &marks {
            m.write_gpa(at, &[0xff; 8]).unwrap();
        }
    }
    g.machine.reset_to(&mut [&mut g.vcpu], &snap).unwrap();
    f.reset_to(&mut [&mut fv[0]], &snap).unwrap();
    for m in [&g.machine, &f] {
        for &at in &marks {
            let mut b = [0u8; 8];
            m.read_gpa(at, &mut b).unwrap();
            assert_eq!(u64::from_le_bytes(b), at);
        }
    }
}

/// A reset and forks while other machines made from the same snapshot
/// keep running on other threads.
#[test]
fn restore_while_other_machines_run() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = checksum_guest();
    run_rounds(&mut g.vcpu, 500);
    let snap = g.machine.snapshot(&mut [&mut g.vcpu]).unwrap();
    let expected = finish(&g.machine, &mut g.vcpu);
    let nvmm = nvmm();
    std::thread::scope(|s| {
        let runners: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let (m, mut v) = nvmm.fork(&snap).unwrap();
                    (0..3).all(|_| {
                        let r = finish(&m, &mut v[0]) == expected;
                        m.reset_to(&mut [&mut v[0]], &snap).unwrap();
                        r
                    })
                })
            })
            .collect();
        for _ in 0..3 {
            g.machine.reset_to(&mut [&mut g.vcpu], &snap).unwrap();
            assert!(finish(&g.machine, &mut g.vcpu) == expected);
        }
        for r in runners {
            assert!(r.join().unwrap());
        }
    });
}

/// A pool keeps forks ready; each one taken finishes like the
/// uninterrupted run, and dropping the pool destroys the ones not taken.
#[test]
fn a_fork_pool_hands_out_ready_forks() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = checksum_guest();
    run_rounds(&mut g.vcpu, 2000);
    let snap = g.machine.snapshot(&mut [&mut g.vcpu]).unwrap();
    let expected = finish(&g.machine, &mut g.vcpu);
    let nvmm = nvmm();
    let before = nvmm_testkit::open_fds();
    {
        let pool = nvmm.fork_pool(&snap, 3).unwrap();
        for _ in 0..6 {
            let (m, mut v) = pool.take().unwrap();
            assert!(finish(&m, &mut v[0]) == expected);
        }
    }
    assert_eq!(nvmm_testkit::open_fds(), before, "the pool's forks are gone with it");
}

/// Resetting to an older snapshot after a newer one: memory is exactly
/// the older one's, also where only the newer one has data.
#[test]
fn reset_to_an_older_snapshot() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = long_mode(&[0xf4]);
    g.machine.write_gpa(0x30_0000, b"first").unwrap();
    let a = g.machine.snapshot(&mut [&mut g.vcpu]).unwrap();
    g.machine.write_gpa(0x30_0000, b"SECOND").unwrap();
    g.machine.write_gpa(0x31_0000, b"only in b").unwrap();
    let b = g.machine.snapshot(&mut [&mut g.vcpu]).unwrap();
    let nvmm = nvmm();
    let (f, mut fv) = nvmm.fork(&b).unwrap();
    for (m, v) in [(&g.machine, &mut g.vcpu), (&f, &mut fv[0])] {
        m.reset_to(&mut [v], &a).unwrap();
        let mut buf = [0u8; 9];
        m.read_gpa(0x30_0000, &mut buf[..6]).unwrap();
        assert_eq!(&buf[..6], b"first\0");
        m.read_gpa(0x31_0000, &mut buf).unwrap();
        assert_eq!(buf, [0; 9], "the newer snapshot's data is gone");
        m.reset_to(&mut [v], &b).unwrap();
        m.read_gpa(0x31_0000, &mut buf).unwrap();
        assert_eq!(&buf, b"only in b");
    }
}
