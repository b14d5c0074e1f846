//! The MSRs a guest reaches without exiting, as under NVMM.
//!
//! NVMM's kernel handles a short list of MSRs itself (the SYSCALL and
//! SYSENTER MSRs, the segment bases, EFER, PAT, the TSC, and a few model
//! MSRs that read as constants) and sends every other RDMSR and WRMSR to
//! the VMM as an `RDMSR`/`WRMSR` exit: APIC base, MTRRs, machine check,
//! performance counters, KVM's own paravirtual MSRs and MSRs nobody
//! implements alike. KVM would answer many of those itself, so the VM
//! gets a default-deny MSR filter that lets only NVMM's list through; a
//! denied access exits to user space (`KVM_MSR_EXIT_REASON_FILTER`) the
//! same way an MSR unknown to KVM does.
//!
//! The filter applies to the guest's RDMSR/WRMSR only: nvmm's own state
//! transfers (`KVM_GET_MSRS`/`KVM_SET_MSRS`) are not filtered.

use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};

use crate::error::{Error, Result};

/// One run of consecutive MSRs the guest may access without an exit.
struct Allowed {
    base: u32,
    count: u32,
}

/// NVMM's in-kernel MSRs (both its SVM and VMX backends).
const IN_KERNEL: &[Allowed] = &[
    Allowed { base: 0x10, count: 1 },        // TSC
    Allowed { base: 0x17, count: 1 },        // PLATFORM_ID (reads 0)
    Allowed { base: 0x8b, count: 1 },        // BIOS_SIGN / UCODE_AMD_PATCHLEVEL
    Allowed { base: 0x10a, count: 1 },       // ARCH_CAPABILITIES
    Allowed { base: 0x174, count: 3 },       // SYSENTER_CS/ESP/EIP
    Allowed { base: 0x1a0, count: 1 },       // MISC_ENABLE
    Allowed { base: 0x277, count: 1 },       // PAT
    Allowed { base: 0xc000_0080, count: 5 }, // EFER, STAR, LSTAR, CSTAR, SFMASK
    Allowed { base: 0xc000_0100, count: 3 }, // FS_BASE, GS_BASE, KERNEL_GS_BASE
    Allowed { base: 0xc001_001f, count: 1 }, // NB_CFG (AMD)
    Allowed { base: 0xc001_0055, count: 1 }, // CMPHALT (AMD)
    Allowed { base: 0xc001_1021, count: 1 }, // IC_CFG (AMD)
    Allowed { base: 0xc001_1029, count: 1 }, // DE_CFG (AMD)
];

/// A bitmap with a bit set for every MSR of the largest run.
const ALL_ALLOWED: [u8; 1] = [0xff];

/// Installs the filter on a new VM.
pub(crate) fn install(vm: &VmFd) -> Result<()> {
    let ranges: Vec<MsrFilterRange<'_>> = IN_KERNEL
        .iter()
        .map(|a| MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base: a.base,
            msr_count: a.count,
            bitmap: &ALL_ALLOWED,
        })
        .collect();
    vm.set_msr_filter(MsrFilterDefaultAction::DENY, &ranges).map_err(|e| Error::kvm_errno("KVM_X86_SET_MSR_FILTER", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the guest reaches `msr` without an exit.
    fn handled_in_kernel(msr: u32) -> bool {
        IN_KERNEL.iter().any(|a| msr >= a.base && msr - a.base < a.count)
    }

    #[test]
    fn the_list_fits_kvm_and_one_bitmap_byte() {
        assert!(IN_KERNEL.len() <= kvm_bindings::KVM_MSR_FILTER_MAX_RANGES as usize);
        assert!(IN_KERNEL.iter().all(|a| a.count >= 1 && a.count <= 8));
    }

    #[test]
    fn nvmm_s_list() {
        for msr in [0x10, 0x174, 0x176, 0x277, 0xc000_0080, 0xc000_0084, 0xc000_0102] {
            assert!(handled_in_kernel(msr), "{msr:#x}");
        }
        for msr in [0, 0x1b, 0x179, 0x2ff, 0x800, 0xc000_0085, 0xc000_0103, 0x4b56_4d00, u32::MAX] {
            assert!(!handled_in_kernel(msr), "{msr:#x}");
        }
    }
}
