//! Whether the host's KVM exits for an armed interrupt window at the
//! instruction boundary where the guest opens it.
//!
//! VMX and SVM do (interrupt-window exiting), and so does KVM's own loop
//! that emulates real-mode code on VMX without unrestricted guest. Hosts
//! whose KVM emulates guest kernel code instruction by instruction in
//! another way may not: there a window the guest opens for a few
//! instructions (`sti; nop; cli`, how firmware waits for an interrupt from
//! code that otherwise runs with interrupts off) is reported only when some
//! other exit happens to land inside it, usually never. The VCPU then
//! single-steps while such a window is armed and closed (see
//! `vcpu::window_steps`).
//!
//! Probed once per process, when `/dev/kvm` is first opened (before a VMM
//! may sandbox itself), on a throwaway VM: real-mode `cli; sti; nop; cli;
//! out 0x80, al` with the window armed. A host with boundary exits reports
//! the window before the second CLI; one without reports the OUT. A probe
//! that cannot run counts as boundary exits (nothing is stepped).

use std::sync::OnceLock;

use kvm_bindings::{kvm_regs, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};

use crate::error::{Error, Result};
use crate::os::HostRegion;

/// The probe's code, at guest physical address 0.
const PROBE: [u8; 7] = [
    0xfa, //       cli
    0xfb, //       sti
    0x90, //       nop
    0xfa, //       cli
    0xe6, 0x80, // out 0x80, al
    0xf4, //       hlt
];

/// How often the probe runs before a host counts as exiting at the
/// boundary: a host that does not can still report the window when a host
/// interrupt lands inside it, never three times in a row.
const TRIES: usize = 3;

static EXACT: OnceLock<bool> = OnceLock::new();

/// Probes this host's KVM through `kvm`, once per process (`/dev/kvm`'s
/// first opening calls it).
pub(crate) fn probe_once(kvm: &Kvm) {
    EXACT.get_or_init(|| probe(kvm).unwrap_or(true));
}

/// Whether this host's KVM exits for an armed interrupt window where it
/// opens (`true` when the probe could not run, or has not: the answer
/// that changes nothing).
pub(crate) fn window_exits_are_exact() -> bool {
    EXACT.get().copied().unwrap_or(true)
}

/// Runs the probe; `Ok(false)` as soon as one run misses the window.
fn probe(kvm: &Kvm) -> Result<bool> {
    // Declared first, dropped last: the VM and its VCPU go before the
    // memory their slot points to.
    let ram = HostRegion::anonymous(4096)?;
    ram.write(0, &PROBE);
    let vm = kvm.create_vm().map_err(|e| Error::kvm_errno("KVM_CREATE_VM", e))?;
    let mem = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 4096,
        userspace_addr: ram.addr(),
    };
    // SAFETY: `ram` is a live 4 KiB mapping that outlives the VM (see its
    // declaration).
    unsafe { vm.set_user_memory_region(mem) }.map_err(|e| Error::kvm_errno("KVM_SET_USER_MEMORY_REGION", e))?;
    run_probe(&vm)
}

/// The probe's runs on `vm`, whose RAM holds [`PROBE`] at 0.
fn run_probe(vm: &kvm_ioctls::VmFd) -> Result<bool> {
    let mut vcpu = vm.create_vcpu(0).map_err(|e| Error::kvm_errno("KVM_CREATE_VCPU", e))?;
    let mut sregs = vcpu.get_sregs().map_err(|e| Error::kvm_errno("KVM_GET_SREGS", e))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(|e| Error::kvm_errno("KVM_SET_SREGS", e))?;
    for _ in 0..TRIES {
        let regs = kvm_regs { rip: 0, rflags: 2, ..Default::default() };
        vcpu.set_regs(&regs).map_err(|e| Error::kvm_errno("KVM_SET_REGS", e))?;
        vcpu.get_kvm_run().request_interrupt_window = 1;
        match vcpu.run() {
            Ok(VcpuExit::IrqWindowOpen) => {}
            Ok(VcpuExit::IoOut(..)) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(Error::kvm_errno("KVM_RUN", e)),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    /// The probe agrees with the test kit's bare KVM loop.
    #[test]
    fn the_probe_agrees_with_a_bare_kvm_loop() {
        nvmm_testkit::kvm_or_skip!();
        // Opening /dev/kvm runs the probe.
        crate::Nvmm::open().unwrap();
        let bare = nvmm_testkit::host::exits_at_interrupt_windows().unwrap();
        assert_eq!(super::window_exits_are_exact(), bare);
    }
}
