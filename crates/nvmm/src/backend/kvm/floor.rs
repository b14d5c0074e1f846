//! The floor the benchmarks measure against: a bare `KVM_RUN` loop written
//! directly on `kvm-ioctls`, with nothing of nvmm in it.

use kvm_bindings::{KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use super::HostRegion;
use crate::error::{Error, Result};

/// A minimal VM: one VCPU in real mode executing `code` at guest physical
/// address `gpa` (CS base 0), with `mem_size` bytes of RAM at 0.
pub struct RawVm {
    vcpu: VcpuFd,
    sync: (bool, bool),
    _vm: VmFd,
    _mem: HostRegion,
}

/// What a raw exit was.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RawExitKind {
    /// Port I/O.
    Io,
    /// HLT.
    Hlt,
    /// Anything else.
    Other,
}

/// A `/dev/kvm` descriptor of the floor's own.
pub struct RawKvm {
    kvm: Kvm,
}

impl RawKvm {
    /// Opens `/dev/kvm`.
    pub fn open() -> Result<RawKvm> {
        let kvm = Kvm::new().map_err(|e| Error::OpenKvm { source: std::io::Error::from_raw_os_error(e.errno()) })?;
        Ok(RawKvm { kvm })
    }

    /// Builds a VM.
    pub fn vm(&self, code: &[u8], gpa: u64, mem_size: usize) -> Result<RawVm> {
        RawVm::new(&self.kvm, code, gpa, mem_size)
    }
}

impl RawVm {
    fn new(kvm: &Kvm, code: &[u8], gpa: u64, mem_size: usize) -> Result<RawVm> {
        let vm = kvm.create_vm().map_err(|e| Error::kvm_errno("KVM_CREATE_VM", e))?;
        let mem = HostRegion::anonymous(mem_size)?;
        mem.write(gpa, code);
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem_size as u64,
            userspace_addr: mem.addr(),
        };
        // SAFETY: `mem` is a live mapping of `mem_size` bytes owned by the
        // returned value, which also owns the VM: the slot never outlives it.
        unsafe { vm.set_user_memory_region(region) }.map_err(|e| Error::kvm_errno("KVM_SET_USER_MEMORY_REGION", e))?;
        let vcpu = vm.create_vcpu(0).map_err(|e| Error::kvm_errno("KVM_CREATE_VCPU", e))?;
        let mut sregs = vcpu.get_sregs().map_err(|e| Error::kvm_errno("KVM_GET_SREGS", e))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).map_err(|e| Error::kvm_errno("KVM_SET_SREGS", e))?;
        let mut regs = vcpu.get_regs().map_err(|e| Error::kvm_errno("KVM_GET_REGS", e))?;
        regs.rip = gpa;
        regs.rflags = 2;
        vcpu.set_regs(&regs).map_err(|e| Error::kvm_errno("KVM_SET_REGS", e))?;
        Ok(RawVm { vcpu, sync: (false, false), _vm: vm, _mem: mem })
    }

    /// Makes every following run copy the general-purpose and special
    /// registers out through `kvm_run` at the exit (`valid`) and load the
    /// general-purpose registers from it at the entry (`load_regs`): the
    /// kernel's share of reading and writing state around an exit.
    pub fn sync_registers(&mut self, valid: bool, load_regs: bool) {
        self.sync = (valid, load_regs);
    }

    /// One `KVM_RUN`.
    pub fn run(&mut self) -> Result<RawExitKind> {
        let (valid, load) = self.sync;
        let run = self.vcpu.get_kvm_run();
        run.kvm_valid_regs = if valid { u64::from(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS) } else { 0 };
        if load {
            run.kvm_dirty_regs |= u64::from(KVM_SYNC_X86_REGS);
        }
        match self.vcpu.run().map_err(|e| Error::kvm_errno("KVM_RUN", e))? {
            VcpuExit::IoOut(..) | VcpuExit::IoIn(..) => Ok(RawExitKind::Io),
            VcpuExit::Hlt => Ok(RawExitKind::Hlt),
            _ => Ok(RawExitKind::Other),
        }
    }
}
