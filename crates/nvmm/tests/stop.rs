//! Stopping a VCPU: before run, during run, and 10 000 races.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use common::*;
use nvmm::{Exit, Gpr};

#[test]
fn a_stop_before_run_is_reported_once_without_entering() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[0xf4]);
    let h = g.vcpu.stop_handle();
    h.stop();
    h.stop();
    assert!(matches!(g.vcpu.run().unwrap(), Exit::Stopped));
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE, "the guest did not run");
    run_to_halt(&mut g.vcpu);
}

/// The stop lands while the guest runs: the main thread waits (bounded)
/// until the guest's counter moves, so the VCPU is inside `KVM_RUN`.
#[test]
fn a_stop_during_run_interrupts_the_guest() {
    nvmm_testkit::kvm_or_skip!();
    // l: inc word [0x500] ; jmp l
    let Guest { machine, mut vcpu } = real_mode(&[0xff, 0x06, 0x00, 0x05, 0xeb, 0xfa]);
    let h = vcpu.stop_handle();
    let runner = std::thread::spawn(move || {
        loop {
            match vcpu.run().unwrap() {
                Exit::Stopped => return,
                Exit::None => {}
                e => panic!("{e:?}"),
            }
        }
    });
    let counter = || {
        let mut b = [0u8; 2];
        machine.read_gpa(0x500, &mut b).unwrap();
        u16::from_le_bytes(b)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while counter() == 0 {
        assert!(std::time::Instant::now() < deadline, "the guest never ran");
        std::thread::yield_now();
    }
    h.stop();
    runner.join().unwrap();
}

/// Runs `stops` stop requests against a VCPU running `code` on another
/// thread, one at a time, and checks each is reported exactly once.
fn race(code: &[u8], stops: usize) {
    let mut g = real_mode(code);
    let handle = g.vcpu.stop_handle();
    let done = Arc::new(AtomicBool::new(false));
    let (ack_tx, ack_rx) = mpsc::channel::<usize>();
    let runner = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut stopped = 0usize;
            loop {
                match g.vcpu.run().unwrap() {
                    Exit::Stopped => {
                        stopped += 1;
                        if done.load(Ordering::SeqCst) {
                            return stopped;
                        }
                        ack_tx.send(stopped).unwrap();
                    }
                    Exit::Io(_) | Exit::None => {}
                    e => panic!("{e:?}"),
                }
            }
        })
    };
    let mut spin = 0x9e37_79b9u32;
    for i in 1..=stops {
        // Vary where the request lands: between runs, entering, inside.
        spin ^= spin << 13;
        spin ^= spin >> 17;
        spin ^= spin << 5;
        for _ in 0..(spin % 20_000) {
            std::hint::spin_loop();
        }
        handle.stop();
        match ack_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(n) => assert_eq!(n, i, "a stop was reported twice or spuriously"),
            Err(e) => panic!("stop {i} was lost: {e}"),
        }
    }
    done.store(true, Ordering::SeqCst);
    handle.stop();
    assert_eq!(runner.join().unwrap(), stops + 1);
}

#[test]
fn five_thousand_races_with_an_exiting_guest() {
    nvmm_testkit::kvm_or_skip!();
    race(&[0xe6, 0x10, 0xeb, 0xfc], 5000); // out 0x10,al ; jmp $-2
}

#[test]
fn five_thousand_races_with_a_spinning_guest() {
    nvmm_testkit::kvm_or_skip!();
    race(&[0xeb, 0xfe], 5000); // jmp $
}

#[test]
fn a_handle_outlives_its_vcpu() {
    nvmm_testkit::kvm_or_skip!();
    let g = real_mode(&[0xf4]);
    let h = g.vcpu.stop_handle();
    let h2 = h.clone();
    drop(g);
    h.stop();
    h2.stop();
}

/// NetBSD's way of answering an MSR exit (RIP set to `npc` through the
/// state, as QEMU does) makes the next run let KVM finish the RDMSR before
/// entering the guest, which then spins. Stops land while that run
/// settles, enters or spins: each is reported, none is lost in the
/// settling (the guest would spin forever).
#[test]
fn stops_while_a_run_settles_an_msr_exit_are_not_lost() {
    nvmm_testkit::kvm_or_skip!();
    // l: mov ecx,0xffffffff ; rdmsr ; jmp $
    let mut g = real_mode(&[0x66, 0xb9, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x32, 0xeb, 0xfe]);
    let handle = g.vcpu.stop_handle();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (ack_tx, ack_rx) = mpsc::channel::<()>();
    const ROUNDS: usize = 2000;
    let runner = std::thread::spawn(move || {
        for _ in 0..ROUNDS {
            g.vcpu.update(nvmm::StateMask::GPRS, |s| s.gprs[Gpr::Rip] = CODE).unwrap();
            let npc = loop {
                match g.vcpu.run().unwrap() {
                    Exit::Rdmsr(r) => break r.npc(),
                    Exit::None => {}
                    e => panic!("expected the RDMSR, got {e:?}"),
                }
            };
            g.vcpu.update(nvmm::StateMask::GPRS, |s| s.gprs[Gpr::Rip] = npc).unwrap();
            ready_tx.send(()).unwrap();
            loop {
                match g.vcpu.run().unwrap() {
                    Exit::Stopped => break,
                    Exit::None => {}
                    e => panic!("{e:?}"),
                }
            }
            ack_tx.send(()).unwrap();
        }
    });
    let mut spin = 0x2545_f491u32;
    for i in 0..ROUNDS {
        ready_rx.recv_timeout(Duration::from_secs(30)).expect("the runner reaches the RDMSR");
        spin ^= spin << 13;
        spin ^= spin >> 17;
        spin ^= spin << 5;
        for _ in 0..(spin % 30_000) {
            std::hint::spin_loop();
        }
        handle.stop();
        if ack_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("stop {i} was lost while the run settled the MSR exit");
        }
    }
    runner.join().unwrap();
}
