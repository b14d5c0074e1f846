//! `nvmmctl identify`: what NetBSD's prints, then the KVM facts behind it.

use std::io::Write;

use nvmm::x86::xsave::xfeature;
use nvmm::{CAP_ARCH_VCPU_CONF_CPUID, CAP_ARCH_VCPU_CONF_TPR, Nvmm};

use crate::format::{humanize, snprintb};

/// Writes the report.
pub fn identify(nvmm: &Nvmm, out: &mut dyn Write) -> std::io::Result<()> {
    let c = nvmm.capability();
    writeln!(out, "nvmm: Kernel API version {}", c.version)?;
    writeln!(out, "nvmm: State size {}", c.state_size)?;
    writeln!(out, "nvmm: Max machines {}", c.max_machines)?;
    writeln!(out, "nvmm: Max VCPUs per machine {}", c.max_vcpus)?;
    writeln!(out, "nvmm: Max RAM per machine {}", humanize(c.max_ram))?;
    writeln!(out, "nvmm: Arch Mach conf {}", snprintb(c.arch.mach_conf_support, &[]))?;
    let vcpu_conf = [(CAP_ARCH_VCPU_CONF_CPUID, "CPUID"), (CAP_ARCH_VCPU_CONF_TPR, "TPR")];
    writeln!(out, "nvmm: Arch VCPU conf {}", snprintb(c.arch.vcpu_conf_support, &vcpu_conf))?;
    writeln!(out, "nvmm: Guest FPU states {}", snprintb(c.arch.xcr0_mask, &xfeature::NAMES))?;
    writeln!(out, "nvmm: MXCSR mask {:#x}", c.arch.mxcsr_mask)?;
    writeln!(out, "nvmm: CPUID configuration slots {}", c.arch.conf_cpuid_maxops)?;

    let k = nvmm.backend_facts();
    writeln!(out, "kvm: API version {}", k.api_version)?;
    writeln!(out, "kvm: Host CPU {}{}", k.vendor, if k.nested { " (itself virtualized)" } else { "" })?;
    writeln!(out, "kvm: Max VCPUs {} (max VCPU id {})", k.max_vcpus, k.max_vcpu_id)?;
    writeln!(out, "kvm: Memory slots {}", k.memslots)?;
    writeln!(out, "kvm: Guest physical address bits {}", k.phys_addr_bits)?;
    writeln!(
        out,
        "kvm: Interrupt-window exits {}",
        if nvmm.interrupt_windows_exit_exactly() {
            "at the instruction"
        } else {
            "at other exits only (the library steps to the window)"
        }
    )?;
    for (name, has) in &k.capabilities {
        writeln!(out, "kvm: {name} {}", if *has { "yes" } else { "no" })?;
    }
    Ok(())
}
