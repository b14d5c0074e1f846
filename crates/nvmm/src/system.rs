//! [`Nvmm`]: the process's connection to KVM, opened once, and what it can
//! do ([`Capability`]).

use std::sync::{Arc, Mutex};

use crate::backend::BackendFacts;
use crate::backend::kvm::KvmSystem;
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::os::install_kick_handler;
use crate::registry::{self, MachineInfo};
use crate::x86::cpuid::{CPUID_CONF_MAX, xcr0_mask};
use crate::x86::state::STATE_SIZE;

/// `NVMM_KERN_VERSION`: the kernel API version NVMM programs expect.
pub const NVMM_KERN_VERSION: u32 = 2;
/// `NVMM_USER_VERSION`: the library API version.
pub const NVMM_USER_VERSION: u32 = 2;

/// Upper bound on live machines per process.
pub const MAX_MACHINES: u32 = 4096;

/// `NVMM_CAP_ARCH_VCPU_CONF_CPUID`.
pub const CAP_ARCH_VCPU_CONF_CPUID: u64 = 1 << 0;
/// `NVMM_CAP_ARCH_VCPU_CONF_TPR`.
pub const CAP_ARCH_VCPU_CONF_TPR: u64 = 1 << 1;

/// What this implementation supports (`struct nvmm_capability`). Every
/// number is a limit the library enforces.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Capability {
    /// `NVMM_KERN_VERSION` (2).
    pub version: u32,
    /// Size of the state structure (1008).
    pub state_size: u32,
    /// Live machines per process: 4096, or fewer when the open-files limit
    /// cannot hold two descriptors per machine.
    pub max_machines: u32,
    /// VCPUs per machine (KVM's `KVM_CAP_MAX_VCPUS`); VCPU ids are
    /// `0..max_vcpus`.
    pub max_vcpus: u32,
    /// Size of the guest physical address space: guest physical addresses
    /// are `0..max_ram`.
    pub max_ram: u64,
    /// Architecture-specific part.
    pub arch: CapabilityArch,
}

/// The x86 part of [`Capability`] (`struct nvmm_cap_md`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CapabilityArch {
    /// Machine configuration operations (none).
    pub mach_conf_support: u64,
    /// VCPU configuration operations: CPUID and TPR.
    pub vcpu_conf_support: u64,
    /// XCR0 bits a guest may enable.
    pub xcr0_mask: u64,
    /// The host FPU's MXCSR mask.
    pub mxcsr_mask: u32,
    /// CPUID leaves a VCPU's configuration holds.
    pub conf_cpuid_maxops: u32,
}

/// How the process opens nvmm.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Options {
    /// The signal [`StopHandle`](crate::StopHandle)s and time slices send
    /// to kick a VCPU thread out of the guest. nvmm installs a handler that
    /// does nothing; a thread that runs VCPUs may block it (KVM then
    /// unblocks it while the guest runs). Default: `SIGRTMAX - 1`.
    pub kick_signal: i32,
    /// How long a run may last without an exit before it returns
    /// [`Exit::None`](crate::Exit::None), as NetBSD's returns when the
    /// scheduler wants the CPU back: a guest that never exits still hands
    /// control back to its program at that pace. The library ends a run
    /// with the kick signal once the VCPU thread has used a slice of CPU
    /// time in it (it looks every slice: after one to two slices of
    /// computing). `None`: runs last until the guest exits or is stopped.
    /// Default: 100 ms, NetBSD's round-robin interval; at least 1 ms.
    pub time_slice: Option<std::time::Duration>,
}

/// The shortest [`Options::time_slice`].
const MIN_TIME_SLICE: std::time::Duration = std::time::Duration::from_millis(1);

impl Default for Options {
    fn default() -> Options {
        Options { kick_signal: libc::SIGRTMAX() - 1, time_slice: Some(std::time::Duration::from_millis(100)) }
    }
}

pub(crate) struct System {
    pub(crate) kvm: KvmSystem,
    pub(crate) cap: Capability,
    pub(crate) options: Options,
    /// VMs made ahead of time ([`Nvmm::keep_vms_ready`]).
    pub(crate) ready_vms: crate::ready_vms::ReadyVms,
}

static SYSTEM: Mutex<Option<Arc<System>>> = Mutex::new(None);

/// The connection to KVM. `/dev/kvm` is opened once per process; every
/// `Nvmm` value shares it (cloning is cheap).
#[derive(Clone)]
pub struct Nvmm {
    pub(crate) sys: Arc<System>,
}

impl std::fmt::Debug for Nvmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvmm").field("capability", &self.sys.cap).finish()
    }
}

impl Nvmm {
    /// Opens KVM with default [`Options`] (or returns the process's open
    /// connection). Fails with a message naming what is missing when KVM is
    /// absent, inaccessible, too old, or lacks a capability nvmm needs.
    pub fn open() -> Result<Nvmm> {
        Self::open_with(Options::default())
    }

    /// Opens KVM with `options`. The first successful open in a process
    /// fixes the options; a later call with different ones fails.
    pub fn open_with(options: Options) -> Result<Nvmm> {
        if options.time_slice.is_some_and(|s| s < MIN_TIME_SLICE) {
            return Err(Error::InvalidConfiguration {
                why: "a time slice is at least 1 ms (None turns time slices off)",
            });
        }
        let mut global = SYSTEM.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sys) = global.as_ref() {
            if sys.options != options {
                return Err(Error::AlreadyOpen);
            }
            return Ok(Nvmm { sys: sys.clone() });
        }
        let kvm = KvmSystem::open()?;
        install_kick_handler(options.kick_signal)?;
        let nofile = crate::os::raise_fd_limit();
        let facts = kvm.facts();
        let cap = Capability {
            version: NVMM_KERN_VERSION,
            state_size: STATE_SIZE as u32,
            max_machines: max_machines(nofile),
            max_vcpus: facts.max_vcpus.min(facts.max_vcpu_id).max(1),
            max_ram: 1u64 << facts.phys_addr_bits.clamp(32, 52),
            arch: CapabilityArch {
                mach_conf_support: 0,
                vcpu_conf_support: CAP_ARCH_VCPU_CONF_CPUID | CAP_ARCH_VCPU_CONF_TPR,
                xcr0_mask: xcr0_mask(kvm.supported_cpuid()),
                mxcsr_mask: kvm.mxcsr_mask(),
                conf_cpuid_maxops: CPUID_CONF_MAX,
            },
        };
        let sys = Arc::new(System { kvm, cap, options, ready_vms: Default::default() });
        *global = Some(sys.clone());
        Ok(Nvmm { sys })
    }

    /// What this implementation supports.
    pub fn capability(&self) -> &Capability {
        &self.sys.cap
    }

    /// What the kernel backend (KVM) reported about itself: API version,
    /// limits, capabilities (`nvmmctl identify` prints them).
    pub fn backend_facts(&self) -> &BackendFacts {
        self.sys.kvm.facts()
    }

    /// Whether the host's KVM exits for an armed interrupt window at the
    /// instruction where the guest opens it (VMX and SVM hosts do). Where
    /// it does not (hosts whose KVM emulates guest kernel code may check
    /// the window only at other exits), runs with the window armed and
    /// closed single-step to find it; see [`StateMask::INTR`]'s window
    /// bits and `libnvmm(3)`. Probed once per process, on a throwaway VM,
    /// when `/dev/kvm` is first opened.
    ///
    /// [`StateMask::INTR`]: crate::StateMask::INTR
    pub fn interrupt_windows_exit_exactly(&self) -> bool {
        crate::backend::window_exits_are_exact()
    }

    /// Creates a machine.
    pub fn create_machine(&self) -> Result<Machine> {
        Machine::create(self.sys.clone())
    }

    /// Information about machine `machid` of this process
    /// (`NVMM_CTL_MACH_INFO`).
    pub fn machine_info(&self, machid: u32) -> Result<MachineInfo> {
        registry::machine_info(machid, self.sys.cap.max_machines)
    }

    /// Information about machine `machid` in NVMM's root view
    /// (`nvmm_root_init`), which numbers every machine on the host: this
    /// process's machines keep their ids, and the machines other processes
    /// publish follow, past this process's highest id, ordered by owner pid
    /// and then by their id in that process. Iterating `machid` from 0 to
    /// [`Capability::max_machines`] lists them all, as NetBSD's `nvmmctl
    /// list` does; the numbering shifts when other processes' machines come
    /// and go.
    pub fn machine_info_any(&self, machid: u32) -> Result<MachineInfo> {
        registry::machine_info_any(machid, self.sys.cap.max_machines)
    }
}

/// Machines the descriptor limit can hold: one for the VM, at least one for
/// a VCPU, with room left for the rest of the program.
fn max_machines(nofile: u64) -> u32 {
    let spare = nofile.saturating_sub(256) / 2;
    spare.clamp(1, u64::from(MAX_MACHINES)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_limit_follows_descriptors() {
        assert_eq!(max_machines(20000), MAX_MACHINES);
        assert_eq!(max_machines(1024), 384);
        assert_eq!(max_machines(10), 1);
    }
}
