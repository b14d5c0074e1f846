//! 2 000 create/run/destroy cycles leave the descriptor count and the RSS
//! flat. (One test per binary: it measures the whole process.)

mod common;

use common::*;
use nvmm::{Prot, StateMask};

fn cycle(n: &nvmm::Nvmm) {
    let m = n.create_machine().unwrap();
    m.map_anonymous(0, 0x2000, Prot::ALL).unwrap();
    m.write_gpa(CODE, &[0xf4]).unwrap();
    let mut v = m.create_vcpu(0).unwrap();
    let _h = v.stop_handle();
    v.update(StateMask::GPRS | StateMask::SEGS, |s| nvmm::x86::modes::real_mode_entry(s, CODE)).unwrap();
    run_to_halt(&mut v);
    v.get_state(StateMask::ALL).unwrap();
}

#[test]
fn create_run_destroy_does_not_leak() {
    nvmm_testkit::kvm_or_skip!();
    let n = nvmm();
    for _ in 0..100 {
        cycle(&n);
    }
    let fds = nvmm_testkit::open_fds();
    let rss = nvmm_testkit::rss_bytes();
    for _ in 0..2000 {
        cycle(&n);
    }
    assert_eq!(nvmm_testkit::open_fds(), fds, "descriptors leaked");
    let grown = nvmm_testkit::rss_bytes().saturating_sub(rss);
    assert!(grown < 8 << 20, "RSS grew by {grown} bytes over 2000 cycles");
}
