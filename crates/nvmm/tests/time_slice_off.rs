//! `Options::time_slice = None`: runs last until the guest exits or is
//! stopped (a test binary of its own: the options are the process's).

use std::time::{Duration, Instant};

use nvmm::{Exit, Nvmm, Options, Prot, StateMask};

/// Slices under 1 ms are refused (EINVAL). With none, over five default
/// slices pass with the guest computing, and its run ends only with the
/// stop.
#[test]
fn with_no_time_slice_a_run_lasts_until_stopped() {
    nvmm_testkit::kvm_or_skip!();
    for short in [Duration::ZERO, Duration::from_micros(999)] {
        let e = Nvmm::open_with(Options { time_slice: Some(short), ..Options::default() }).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{short:?}: {e}");
    }
    let nvmm = Nvmm::open_with(Options { time_slice: None, ..Options::default() }).unwrap();
    let machine = nvmm.create_machine().unwrap();
    machine.map_anonymous(0, 0x10000, Prot::ALL).unwrap();
    // l: inc word [0x500] ; jmp l
    machine.write_gpa(0x1000, &[0xff, 0x06, 0x00, 0x05, 0xeb, 0xfa]).unwrap();
    let mut vcpu = machine.create_vcpu(0).unwrap();
    vcpu.update(StateMask::GPRS | StateMask::SEGS, |s| nvmm::x86::modes::real_mode_entry(s, 0x1000)).unwrap();
    let h = vcpu.stop_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        h.stop();
    });
    let t0 = Instant::now();
    let exit = vcpu.run().unwrap();
    assert!(matches!(exit, Exit::Stopped), "{exit:?} after {:?}: a run ended before the stop", t0.elapsed());
    assert!(t0.elapsed() >= Duration::from_millis(500));
    stopper.join().unwrap();
}
