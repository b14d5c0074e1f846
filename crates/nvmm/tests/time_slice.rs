//! Time slices: a guest that computes without exits hands control back to
//! its program, as NetBSD's `nvmm_vcpu_run` returns `NVMM_VCPU_EXIT_NONE`
//! when the scheduler wants the thread's CPU back.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use nvmm::{Exit, Gpr, Options};

/// `l: inc word [0x500] ; jmp l`: counts at 0x500, never exits.
const COUNT: [u8; 6] = [0xff, 0x06, 0x00, 0x05, 0xeb, 0xfa];

fn counter(machine: &nvmm::Machine) -> u16 {
    let mut b = [0u8; 2];
    machine.read_gpa(0x500, &mut b).unwrap();
    u16::from_le_bytes(b)
}

/// Stops the VCPU of `handle` after 20 s unless the returned sender is
/// dropped first: a run that no slice ends then reports `Stopped`, which
/// the test rejects, instead of hanging.
fn watchdog(handle: nvmm::StopHandle) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (done, wait) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(Duration::from_secs(20)) {
            handle.stop();
        }
    });
    (done, t)
}

/// Each run lasts at least one slice (the default, 100 ms), returns
/// `Exit::None` with RIP inside the loop, and the guest goes on counting
/// from where it was.
#[test]
fn a_run_without_exits_returns_none_after_a_slice() {
    nvmm_testkit::kvm_or_skip!();
    assert_eq!(Options::default().time_slice, Some(Duration::from_millis(100)));
    let mut g = real_mode(&COUNT);
    let (done, dog) = watchdog(g.vcpu.stop_handle());
    let mut last = counter(&g.machine);
    for round in 0..3 {
        let t0 = Instant::now();
        let exit = g.vcpu.run().unwrap();
        let took = t0.elapsed();
        assert!(matches!(exit, Exit::None), "round {round}: {exit:?} (Stopped: no slice ended the run in 20 s)");
        assert!(took >= Duration::from_millis(100), "round {round}: the run ended after {took:?}, before a slice");
        let rip = gpr(&mut g.vcpu, Gpr::Rip);
        assert!((CODE..CODE + COUNT.len() as u64).contains(&rip), "round {round}: RIP {rip:#x} left the loop");
        let now = counter(&g.machine);
        assert_ne!(now, last, "round {round}: the guest did not run");
        last = now;
    }
    drop(done);
    dog.join().unwrap();
}

/// A slice is not a stop: a stop requested while the guest computes is
/// still reported once, as `Stopped`, whatever slices ended runs before.
#[test]
fn slices_and_a_stop_are_reported_apart() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&COUNT);
    let h = g.vcpu.stop_handle();
    let (done, dog) = watchdog(g.vcpu.stop_handle());
    assert!(matches!(g.vcpu.run().unwrap(), Exit::None), "a slice first");
    h.stop();
    assert!(matches!(g.vcpu.run().unwrap(), Exit::Stopped), "then the stop, at once");
    assert!(matches!(g.vcpu.run().unwrap(), Exit::None), "then slices again, the stop reported once");
    drop(done);
    dog.join().unwrap();
}
