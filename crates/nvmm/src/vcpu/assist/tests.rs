//! The exit view of an emulation failure as another host's KVM may
//! report it: without instruction bytes (this host reports those only for
//! fetches from unmapped memory, which become MEMORY exits first).

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
