//! Time slices: a guest that computes without exits hands control back to
//! its program, as NetBSD's `nvmm_vcpu_run` returns `NVMM_VCPU_EXIT_NONE`
//! when the scheduler wants the thread's CPU back.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use nvmm::{Cr, Event, Exit, Gpr, Options, StateMask, VcpuConf};

/// `l: inc word [0x500] ; jmp l`: counts at 0x500, never exits.
const COUNT: [u8; 6] = [0xff, 0x06, 0x00, 0x05, 0xeb, 0xfa];

fn counter(machine: &nvmm::Machine) -> u16 {
    let mut b = [0u8; 2];
    machine.read_gpa(0x500, &mut b).unwrap();
    u16::from_le_bytes(b)
}

/// Stops the VCPU of `handle` after 20 s unless the watchdog is ended
/// first, so that a run no slice ends does not hang the test; the test
/// then fails (a stop ends the run, and reports a pending TPR or NMI window
/// exit as a slice would: [`Watchdog::end`] says whether it fired).
struct Watchdog {
    done: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<bool>,
}

impl Watchdog {
    fn end(self) -> bool {
        drop(self.done);
        self.thread.join().unwrap()
    }
}

fn watchdog(handle: nvmm::StopHandle) -> Watchdog {
    let (done, wait) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let fired = matches!(wait.recv_timeout(Duration::from_secs(20)), Err(mpsc::RecvTimeoutError::Timeout));
        if fired {
            handle.stop();
        }
        fired
    });
    Watchdog { done, thread }
}

/// Each run lasts at least one slice (the default, 100 ms), returns
/// `Exit::None` with RIP inside the loop, and the guest goes on counting
/// from where it was.
#[test]
fn a_run_without_exits_returns_none_after_a_slice() {
    nvmm_testkit::kvm_or_skip!();
    assert_eq!(Options::default().time_slice, Some(Duration::from_millis(100)));
    let mut g = real_mode(&COUNT);
    let dog = watchdog(g.vcpu.stop_handle());
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
    assert!(!dog.end(), "no slice ended the run in 20 s: the watchdog stopped it");
}

/// A slice is not a stop: a stop requested while the guest computes is
/// still reported once, as `Stopped`, whatever slices ended runs before.
#[test]
fn slices_and_a_stop_are_reported_apart() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&COUNT);
    let h = g.vcpu.stop_handle();
    let dog = watchdog(g.vcpu.stop_handle());
    assert!(matches!(g.vcpu.run().unwrap(), Exit::None), "a slice first");
    h.stop();
    assert!(matches!(g.vcpu.run().unwrap(), Exit::Stopped), "then the stop, at once");
    assert!(matches!(g.vcpu.run().unwrap(), Exit::None), "then slices again, the stop reported once");
    assert!(!dog.end(), "no slice ended the run in 20 s: the watchdog stopped it");
}

/// A TPR the guest raises shows at its next exit (KVM exits on CR8 writes
/// only when they lower the TPR): for a guest that then computes without
/// exits, when a slice ends its run. `mov rax,5 ; mov cr8,rax ; jmp $`.
#[test]
fn a_tpr_raised_by_a_computing_guest_is_reported_when_a_slice_ends() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = long_mode(&[
        0x48, 0xc7, 0xc0, 0x05, 0x00, 0x00, 0x00, // mov rax,5
        0x44, 0x0f, 0x22, 0xc0, //                  mov cr8,rax
        0xeb, 0xfe, //                              jmp $
    ]);
    g.vcpu.configure(VcpuConf::Tpr { exit_changed: true }).unwrap();
    let dog = watchdog(g.vcpu.stop_handle());
    let exit = g.vcpu.run().unwrap();
    assert!(matches!(exit, Exit::TprChanged), "{exit:?} (Stopped: no slice ended the run in 20 s)");
    g.vcpu.get_state(StateMask::CRS).unwrap();
    assert_eq!(g.vcpu.state().crs[Cr::Cr8], 5);
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + 11, "on the spin");
    assert!(!dog.end(), "no slice ended the run in 20 s: the watchdog stopped it");
}

/// An NMI window the guest opens (its NMI handler's IRET) and then
/// computes without exits is reported when a slice ends the run (KVM has
/// no NMI window exit for user space).
#[test]
fn an_nmi_window_a_computing_guest_opens_is_reported_when_a_slice_ends() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[0xeb, 0xfe]); // jmp $
    g.machine.write_gpa(0x1900, &[0xcf]).unwrap(); // NMI handler: iret
    ivt(&g, 2, 0x1900);
    g.vcpu.update(StateMask::INTR, |s| s.intr.set_nmi_window_exiting(true)).unwrap();
    g.vcpu.inject(Event::nmi()).unwrap();
    let dog = watchdog(g.vcpu.stop_handle());
    let t0 = Instant::now();
    let exit = g.vcpu.run().unwrap();
    assert!(matches!(exit, Exit::NmiReady), "{exit:?} (Stopped: no slice ended the run in 20 s)");
    assert!(t0.elapsed() >= Duration::from_millis(100), "reported after {:?}", t0.elapsed());
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE, "on the spin, the handler done");
    assert!(!dog.end(), "no slice ended the run in 20 s: the watchdog stopped it");
}
