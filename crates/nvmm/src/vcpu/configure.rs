//! VCPU configuration (`nvmm_vcpu_configure`): CPUID and TPR exits.

use super::{Vcpu, VcpuConf};
use crate::backend::VcpuBackend;
use crate::error::{Error, Result};
use crate::x86::cpuid::one_gib_pages;

impl Vcpu {
    /// Applies a configuration request (`nvmm_vcpu_configure`).
    pub fn configure(&mut self, conf: VcpuConf) -> Result<()> {
        match conf {
            VcpuConf::Cpuid(c) => {
                if self.conf.has_run {
                    return Err(Error::CpuidLocked);
                }
                let mut next = self.conf.cpuid.clone();
                next.configure(&c)?;
                let prev = std::mem::replace(&mut self.conf.cpuid, next);
                if let Err(e) = self.apply_cpuid() {
                    self.conf.cpuid = prev;
                    return Err(e);
                }
                Ok(())
            }
            VcpuConf::Tpr { exit_changed } => {
                self.conf.tpr_exit = exit_changed;
                Ok(())
            }
        }
    }

    /// Builds the guest's CPUID table (NVMM's filter, then the VMM's masks)
    /// and hands it to the backend.
    pub(super) fn apply_cpuid(&mut self) -> Result<()> {
        let nvcpus = self.machine.nvcpus().max(1);
        let table = self.conf.cpuid.build(self.machine.sys.kvm.supported_cpuid(), self.id, nvcpus);
        self.backend.set_cpuid(&table)?;
        self.conf.cpuid_nvcpus = self.machine.nvcpus();
        self.conf.phys_bits = crate::x86::cpuid::phys_addr_bits(&table) as u8;
        // The CPU walks 1 GiB pages where it has them and the guest's CPUID
        // offers them (so does KVM's walker), whatever a VMM's mask sets.
        self.conf.gib_pages = one_gib_pages(&table) && one_gib_pages(self.machine.sys.kvm.supported_cpuid());
        Ok(())
    }
}
