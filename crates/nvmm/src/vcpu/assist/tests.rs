//! The exit view of an emulation failure as another host's KVM may
//! report it: without instruction bytes (this host reports those only for
//! fetches from unmapped memory, which become MEMORY exits first); the
//! element copy of the assists.

use crate::exit::record::{ExitRecord, InsnBytes};
use crate::vcpu::test_guest::guest;
use crate::{EmulationFailure, Exit};

/// NetBSD's exit carries `inst_len` 0 when the kernel has no bytes: the
/// view says `None`, not an empty slice; with bytes, exactly those.
#[test]
fn an_emulation_failure_without_bytes_has_none() {
    nvmm_testkit::kvm_or_skip!();
    let (_machine, mut vcpu) = guest(&[0xf4], &[], &[]);
    for len in [0u8, 2] {
        let record = ExitRecord::EmulationFailure { insn: InsnBytes { bytes: [0x0f; 15], len } };
        vcpu.last = record;
        let Exit::EmulationFailure(EmulationFailure { bytes, .. }) = super::view(&mut vcpu, record) else {
            panic!("not an emulation failure")
        };
        assert_eq!(bytes, (len > 0).then_some(&[0x0f, 0x0f][..]), "{len} bytes");
    }
}

/// The assists' element copy (two overlapping fixed-size halves) copies
/// exactly what `copy_from_slice` copies, at every length an I/O element or
/// MMIO access has and beyond, and touches nothing past the destination.
#[test]
fn element_copies_match_a_plain_copy() {
    for n in 0..=16usize {
        let src: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37).wrapping_add(1)).collect();
        let mut dst = [0xeeu8; 24];
        super::copy_element(&mut dst[..n], &src);
        assert_eq!(&dst[..n], &src[..], "length {n}");
        assert!(dst[n..].iter().all(|&b| b == 0xee), "length {n}: bytes past the element");
    }
}
