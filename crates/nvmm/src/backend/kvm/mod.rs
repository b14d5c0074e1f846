//! The KVM backend: the only code that talks to the kernel.
//!
//! `unsafe` is allowed here and nowhere else in the crate; every block says
//! why it is sound.
#![allow(unsafe_code)]

pub(crate) mod convert;
mod debug;
mod exit_decode;
pub(crate) mod msr_filter;
mod run_alias;
mod snapshot;
mod state;
mod vcpu;
mod window_probe;

use std::io;
use std::os::fd::{IntoRawFd, OwnedFd};

use kvm_bindings::{
    KVM_CAP_DISABLE_QUIRKS2, KVM_CAP_EXIT_ON_EMULATION_FAILURE, KVM_CAP_X86_USER_SPACE_MSR, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_READONLY, KVM_MSR_EXIT_REASON_FILTER, KVM_MSR_EXIT_REASON_UNKNOWN, KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS,
    KVM_X86_QUIRK_OUT_7E_INC_RIP, kvm_enable_cap, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VmFd};

use crate::error::{Error, Result};
use crate::os::HostRegion;
use crate::x86::cpuid::CpuidEntry;

pub(crate) use run_alias::RunAlias;
pub(crate) use snapshot::cpuid_of_component;
pub(crate) use vcpu::{KvmVcpu, MSR_UNANSWERED};
pub(crate) use window_probe::window_exits_are_exact;

/// A KVM capability: number, name, and what nvmm needs it for.
struct Requirement {
    cap: u32,
    name: &'static str,
    why: &'static str,
}

const REQUIRED: &[Requirement] = &[
    Requirement { cap: kvm_bindings::KVM_CAP_USER_MEMORY, name: "KVM_CAP_USER_MEMORY", why: "guest memory" },
    Requirement { cap: kvm_bindings::KVM_CAP_EXT_CPUID, name: "KVM_CAP_EXT_CPUID", why: "CPUID configuration" },
    Requirement {
        cap: kvm_bindings::KVM_CAP_VCPU_EVENTS,
        name: "KVM_CAP_VCPU_EVENTS",
        why: "event injection and the interrupt state",
    },
    Requirement { cap: kvm_bindings::KVM_CAP_DEBUGREGS, name: "KVM_CAP_DEBUGREGS", why: "the DRS state component" },
    Requirement {
        cap: kvm_bindings::KVM_CAP_XSAVE,
        name: "KVM_CAP_XSAVE",
        why: "the FPU state component (XSAVE area)",
    },
    Requirement { cap: kvm_bindings::KVM_CAP_XCRS, name: "KVM_CAP_XCRS", why: "XCR0 in the CRS state component" },
    Requirement {
        cap: kvm_bindings::KVM_CAP_READONLY_MEM,
        name: "KVM_CAP_READONLY_MEM",
        why: "read-only guest mappings",
    },
    Requirement {
        cap: kvm_bindings::KVM_CAP_IMMEDIATE_EXIT,
        name: "KVM_CAP_IMMEDIATE_EXIT",
        why: "race-free VCPU stop",
    },
    Requirement { cap: KVM_CAP_X86_USER_SPACE_MSR, name: "KVM_CAP_X86_USER_SPACE_MSR", why: "RDMSR/WRMSR exits" },
    Requirement {
        cap: kvm_bindings::KVM_CAP_X86_MSR_FILTER,
        name: "KVM_CAP_X86_MSR_FILTER",
        why: "RDMSR/WRMSR exits for every MSR NVMM leaves to the VMM",
    },
    Requirement {
        cap: KVM_CAP_EXIT_ON_EMULATION_FAILURE,
        name: "KVM_CAP_EXIT_ON_EMULATION_FAILURE",
        why: "emulation-failure exits with instruction bytes",
    },
];

/// `KVM_CAP_SYNC_REGS` and the register sets we need from it.
const CAP_SYNC_REGS: u32 = kvm_bindings::KVM_CAP_SYNC_REGS;
const SYNC_ALL: i32 = 7;

/// Capabilities reported by `nvmmctl identify` beyond the required ones.
const REPORTED: &[(u32, &str)] = &[
    (kvm_bindings::KVM_CAP_SET_GUEST_DEBUG, "KVM_CAP_SET_GUEST_DEBUG"),
    (kvm_bindings::KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"),
    (kvm_bindings::KVM_CAP_SPLIT_IRQCHIP, "KVM_CAP_SPLIT_IRQCHIP"),
    (kvm_bindings::KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"),
    (kvm_bindings::KVM_CAP_COALESCED_MMIO, "KVM_CAP_COALESCED_MMIO"),
    (kvm_bindings::KVM_CAP_COALESCED_PIO, "KVM_CAP_COALESCED_PIO"),
    (kvm_bindings::KVM_CAP_DIRTY_LOG_RING, "KVM_CAP_DIRTY_LOG_RING"),
    (kvm_bindings::KVM_CAP_EXCEPTION_PAYLOAD, "KVM_CAP_EXCEPTION_PAYLOAD"),
    (kvm_bindings::KVM_CAP_XSAVE2, "KVM_CAP_XSAVE2"),
    (kvm_bindings::KVM_CAP_NESTED_STATE, "KVM_CAP_NESTED_STATE"),
    (kvm_bindings::KVM_CAP_GUEST_MEMFD, "KVM_CAP_GUEST_MEMFD"),
];

/// What the kernel backend (KVM) reported about itself: the API version,
/// its limits and which capabilities it has; `nvmmctl identify` prints it.
#[derive(Clone, Debug)]
pub struct BackendFacts {
    /// `KVM_GET_API_VERSION`.
    pub api_version: i32,
    /// `KVM_CAP_MAX_VCPUS`.
    pub max_vcpus: u32,
    /// `KVM_CAP_MAX_VCPU_ID`.
    pub max_vcpu_id: u32,
    /// `KVM_CAP_NR_MEMSLOTS`.
    pub memslots: u32,
    /// Size of the `kvm_run` mapping.
    pub run_size: usize,
    /// Every capability checked, with whether KVM has it.
    pub capabilities: Vec<(&'static str, bool)>,
    /// Host CPU vendor string (CPUID leaf 0).
    pub vendor: String,
    /// Guest physical address width.
    pub phys_addr_bits: u32,
    /// Whether KVM is itself running nested (the host CPUID has the
    /// hypervisor bit).
    pub nested: bool,
}

/// An open `/dev/kvm`.
pub(crate) struct KvmSystem {
    kvm: Kvm,
    facts: BackendFacts,
    supported_cpuid: Vec<CpuidEntry>,
    is_intel: bool,
    mxcsr_mask: u32,
    /// `KVM_GET_MSR_INDEX_LIST`: the MSRs a snapshot carries (those each
    /// VCPU can read).
    msr_index_list: std::sync::Arc<[u32]>,
    /// `KVM_CHECK_EXTENSION(KVM_CAP_DISABLE_QUIRKS2)`: the quirks KVM can
    /// turn off.
    quirks2: u32,
    /// What restores learned of VCPUs fresh from `KVM_CREATE_VCPU`.
    fresh_vcpus: std::sync::Arc<snapshot::FreshVcpuMemo>,
}

impl KvmSystem {
    /// Opens `/dev/kvm` and checks everything nvmm relies on.
    pub(crate) fn open() -> Result<KvmSystem> {
        let kvm = Kvm::new().map_err(|e| Error::OpenKvm { source: io::Error::from_raw_os_error(e.errno()) })?;
        let api_version = kvm.get_api_version();
        if api_version != 12 {
            return Err(Error::ApiVersion { found: api_version });
        }
        let mut capabilities = Vec::new();
        for r in REQUIRED {
            let has = kvm.check_extension_raw(r.cap.into()) > 0;
            if !has {
                return Err(Error::MissingCapability { name: r.name, why: r.why });
            }
            capabilities.push((r.name, true));
        }
        let sync = kvm.check_extension_raw(CAP_SYNC_REGS.into());
        if sync & SYNC_ALL != SYNC_ALL {
            return Err(Error::MissingCapability {
                name: "KVM_CAP_SYNC_REGS (regs, sregs, events)",
                why: "reading and writing registers around exits without ioctls",
            });
        }
        capabilities.push(("KVM_CAP_SYNC_REGS", true));
        for (cap, name) in REPORTED {
            capabilities.push((name, kvm.check_extension_raw((*cap).into()) > 0));
        }
        let run_size = kvm.get_vcpu_mmap_size().map_err(|e| Error::kvm_errno("KVM_GET_VCPU_MMAP_SIZE", e))?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::kvm_errno("KVM_GET_SUPPORTED_CPUID", e))?;
        let supported_cpuid: Vec<CpuidEntry> = supported.as_slice().iter().map(convert::cpuid_from_kvm).collect();
        let vendor = host_vendor();
        let is_intel = vendor == "GenuineIntel";
        let facts = BackendFacts {
            api_version,
            max_vcpus: kvm.get_max_vcpus() as u32,
            max_vcpu_id: kvm.get_max_vcpu_id() as u32,
            memslots: kvm.get_nr_memslots() as u32,
            run_size,
            capabilities,
            vendor,
            phys_addr_bits: crate::x86::cpuid::phys_addr_bits(&supported_cpuid),
            nested: host_is_virtualized(),
        };
        let msr_index_list: std::sync::Arc<[u32]> =
            kvm.get_msr_index_list().map_err(|e| Error::kvm_errno("KVM_GET_MSR_INDEX_LIST", e))?.as_slice().into();
        let quirks2 = kvm.check_extension_raw(KVM_CAP_DISABLE_QUIRKS2.into()) as u32;
        // Probed now, while the program can still open /dev/kvm and create
        // VMs (a VMM may sandbox itself before its guests run).
        window_probe::probe_once(&kvm);
        Ok(KvmSystem {
            kvm,
            facts,
            supported_cpuid,
            is_intel,
            mxcsr_mask: host_mxcsr_mask(),
            msr_index_list,
            quirks2,
            fresh_vcpus: Default::default(),
        })
    }

    pub(crate) fn facts(&self) -> &BackendFacts {
        &self.facts
    }

    pub(crate) fn supported_cpuid(&self) -> &[CpuidEntry] {
        &self.supported_cpuid
    }

    pub(crate) fn mxcsr_mask(&self) -> u32 {
        self.mxcsr_mask
    }

    /// Creates a VM with the capabilities nvmm needs enabled.
    pub(crate) fn create_vm(&self) -> Result<KvmVm> {
        let fd = self.kvm.create_vm().map_err(|e| Error::kvm_errno("KVM_CREATE_VM", e))?;
        let enable = |cap: u32, arg: u64, what: &'static str| {
            let mut c = kvm_enable_cap { cap, ..Default::default() };
            c.args[0] = arg;
            fd.enable_cap(&c).map_err(|e| Error::kvm_errno(what, e))
        };
        enable(KVM_CAP_EXIT_ON_EMULATION_FAILURE, 1, "KVM_ENABLE_CAP(EXIT_ON_EMULATION_FAILURE)")?;
        let msr_exits = KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_FILTER;
        enable(KVM_CAP_X86_USER_SPACE_MSR, msr_exits.into(), "KVM_ENABLE_CAP(X86_USER_SPACE_MSR)")?;
        msr_filter::install(&fd)?;
        // OUT to port 0x7E advances RIP before the exit unless that quirk
        // is off (NVMM leaves RIP on the instruction for every port); KVM
        // runs MONITOR/MWAIT as NOPs whatever CPUID says unless the other
        // is off (NVMM's CPUID hides them: the guest gets #UD, as a VMM
        // answers NetBSD's MONITOR/MWAIT exits).
        let quirks = self.quirks2 & (KVM_X86_QUIRK_OUT_7E_INC_RIP | KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS);
        if quirks != 0 {
            enable(KVM_CAP_DISABLE_QUIRKS2, quirks.into(), "KVM_ENABLE_CAP(DISABLE_QUIRKS2)")?;
        }
        if self.is_intel {
            // Real mode on VMX without unrestricted guest needs a TSS; the
            // three pages below 0xfffc0000 are where firmware-less VMMs put it.
            fd.set_tss_address(0xfffb_d000).map_err(|e| Error::kvm_errno("KVM_SET_TSS_ADDR", e))?;
        }
        Ok(KvmVm {
            fd,
            run_size: self.facts.run_size,
            msr_index_list: self.msr_index_list.clone(),
            fresh_vcpus: self.fresh_vcpus.clone(),
        })
    }
}

/// The host CPU vendor string.
fn host_vendor() -> String {
    // CPUID is available on every x86_64 CPU.
    let r = std::arch::x86_64::__cpuid(0);
    let mut v = Vec::with_capacity(12);
    for reg in [r.ebx, r.edx, r.ecx] {
        v.extend_from_slice(&reg.to_le_bytes());
    }
    String::from_utf8_lossy(&v).into_owned()
}

fn host_is_virtualized() -> bool {
    std::arch::x86_64::__cpuid(1).ecx & (1 << 31) != 0
}

/// MXCSR_MASK of the host FPU, from an FXSAVE image.
fn host_mxcsr_mask() -> u32 {
    #[repr(C, align(16))]
    struct Area([u8; 512]);
    let mut area = Area([0; 512]);
    // SAFETY: FXSAVE writes exactly 512 bytes to a 16-byte aligned buffer,
    // which `area` is; FXSR is part of x86_64.
    unsafe { std::arch::x86_64::_fxsave(area.0.as_mut_ptr()) };
    let mask = u32::from_le_bytes(area.0[28..32].try_into().expect("4 bytes"));
    // A zero mask means the default 0xFFBF (Intel SDM 11.6.6).
    if mask == 0 { 0xffbf } else { mask }
}

/// A KVM virtual machine.
pub(crate) struct KvmVm {
    fd: VmFd,
    run_size: usize,
    msr_index_list: std::sync::Arc<[u32]>,
    fresh_vcpus: std::sync::Arc<snapshot::FreshVcpuMemo>,
}

impl KvmVm {
    /// The VM's file descriptor number (used to name it for `nvmmctl list`).
    pub(crate) fn raw_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Installs guest memory slot `slot`: `size` bytes at `gpa` backed by
    /// `region[offset..]`.
    pub(crate) fn set_slot(
        &self,
        slot: u32,
        gpa: u64,
        region: &HostRegion,
        offset: u64,
        size: u64,
        readonly: bool,
    ) -> Result<()> {
        assert!(offset.checked_add(size).is_some_and(|end| end <= region.len() as u64), "slot outside its region");
        let mem = kvm_userspace_memory_region {
            slot,
            flags: if readonly { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: region.addr() + offset,
        };
        // SAFETY: the range lies inside `region` (asserted above), which the
        // caller keeps mapped for as long as the slot exists (the guest
        // mapping holds a reference to it and clears the slot before
        // dropping it).
        unsafe { self.fd.set_user_memory_region(mem) }.map_err(|e| Error::kvm_errno("KVM_SET_USER_MEMORY_REGION", e))
    }

    /// Removes memory slot `slot`.
    pub(crate) fn clear_slot(&self, slot: u32, gpa: u64) -> Result<()> {
        let mem =
            kvm_userspace_memory_region { slot, flags: 0, guest_phys_addr: gpa, memory_size: 0, userspace_addr: 0 };
        // SAFETY: a zero-sized region deletes the slot; no host memory is
        // referenced.
        unsafe { self.fd.set_user_memory_region(mem) }.map_err(|e| Error::kvm_errno("KVM_SET_USER_MEMORY_REGION", e))
    }

    /// Creates VCPU `id`.
    pub(crate) fn create_vcpu(&self, id: u32) -> Result<KvmVcpu> {
        let fd = self.fd.create_vcpu(id.into()).map_err(|e| Error::kvm_errno("KVM_CREATE_VCPU", e))?;
        let memo = snapshot::RestoreMemo::fresh(&self.fresh_vcpus);
        KvmVcpu::new(fd, self.run_size, self.msr_index_list.clone(), memo)
    }

    /// Takes back a VCPU parked with [`KvmVcpu::park`] (KVM cannot destroy
    /// a VCPU short of destroying the VM, so a destroyed VCPU id is reused).
    pub(crate) fn revive_vcpu(&self, parked: OwnedFd) -> Result<KvmVcpu> {
        let raw = parked.into_raw_fd();
        // SAFETY: `raw` is a VCPU descriptor of this VM, owned by us (it was
        // duplicated by `KvmVcpu::park`); ownership passes to the VcpuFd.
        let fd = unsafe { self.fd.create_vcpu_from_rawfd(raw) }.map_err(|e| Error::kvm_errno("mmap(kvm_run)", e))?;
        let mut v = KvmVcpu::new(fd, self.run_size, self.msr_index_list.clone(), Default::default())?;
        v.finish_everything_pending()?;
        v.forget_loaded_state();
        Ok(v)
    }
}
