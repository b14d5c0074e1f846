//! A 1 TiB guest maps on a small host and costs nothing until touched.
//! (One test per binary: it measures the process's RSS.)

mod common;

use common::*;
use nvmm::{Prot, StateMask};

#[test]
fn a_one_tib_guest_costs_nothing_until_touched() {
    nvmm_testkit::kvm_or_skip!();
    const TIB: u64 = 1 << 40;
    let rss0 = nvmm_testkit::rss_bytes();
    let m = nvmm().create_machine().unwrap();
    m.map_anonymous(0, TIB, Prot::ALL).unwrap();
    // Touch one page every 64 GiB from the host, and run a guest in it.
    for i in 0..16u64 {
        m.write_gpa(i * (64 << 30) + 123, &i.to_le_bytes()).unwrap();
    }
    m.write_gpa(TIB - 8, b"the end!").unwrap();
    m.write_gpa(CODE, &[0xf4]).unwrap();
    let mut v = m.create_vcpu(0).unwrap();
    v.update(StateMask::GPRS | StateMask::SEGS, |s| nvmm::x86::modes::real_mode_entry(s, CODE)).unwrap();
    run_to_halt(&mut v);
    let mut b = [0u8; 8];
    m.read_gpa(15 * (64 << 30) + 123, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), 15);
    m.read_gpa(TIB - 8, &mut b).unwrap();
    assert_eq!(&b, b"the end!");
    assert_eq!(m.info().nram, TIB);
    let grown = nvmm_testkit::rss_bytes().saturating_sub(rss0);
    assert!(grown < 64 << 20, "a 1 TiB guest cost {grown} bytes of RSS");
    println!("1 TiB guest: RSS grew by {} KiB", grown >> 10);
}
