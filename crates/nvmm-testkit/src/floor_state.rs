//! The floor of snapshot benchmarks: the bare ioctls a restore must make
//! (KVM's state set, in Firecracker's order) and a bare VM and VCPU
//! creation, on `kvm-ioctls` alone.
#![allow(unsafe_code)]

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_debugregs, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::floor::{FloorError, RawVm, kvm_err};

type Result<T> = std::result::Result<T, FloorError>;

/// A VCPU's KVM state as the floor captured it.
pub struct RawState {
    cpuid: CpuId,
    mp: kvm_mp_state,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    dregs: kvm_debugregs,
    msrs: Msrs,
    events: kvm_vcpu_events,
}

/// The MSRs of `kvm`'s index list that `vcpu` reads.
fn readable_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<u32>> {
    let mut list: Vec<u32> = kvm.get_msr_index_list().map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?.as_slice().to_vec();
    let mut start = 0;
    while start < list.len() {
        let e: Vec<kvm_msr_entry> =
            list[start..].iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut m = Msrs::from_entries(&e)
            .map_err(|_| FloorError { what: "MSR list", source: std::io::ErrorKind::OutOfMemory.into() })?;
        let n = vcpu.get_msrs(&mut m).map_err(kvm_err("KVM_GET_MSRS"))?;
        if start + n == list.len() {
            break;
        }
        list.remove(start + n);
        start += n;
    }
    Ok(list)
}

impl RawState {
    /// Captures `vm`'s VCPU.
    pub fn capture(kvm: &crate::floor::RawKvm, vm: &RawVm) -> Result<RawState> {
        let v = vm.vcpu();
        let list = readable_msrs(kvm.kvm(), v)?;
        let e: Vec<kvm_msr_entry> = list.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&e)
            .map_err(|_| FloorError { what: "MSR list", source: std::io::ErrorKind::OutOfMemory.into() })?;
        v.get_msrs(&mut msrs).map_err(kvm_err("KVM_GET_MSRS"))?;
        // A VCPU that never had a table gets the host's, as a VMM's would.
        let mut cpuid = v.get_cpuid2(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_CPUID2"))?;
        if cpuid.as_slice().is_empty() {
            cpuid = kvm.kvm().get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
            v.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        }
        Ok(RawState {
            cpuid,
            mp: v.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?,
            regs: v.get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
            sregs: v.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?,
            xsave: v.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?,
            xcrs: v.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?,
            dregs: v.get_debug_regs().map_err(kvm_err("KVM_GET_DEBUGREGS"))?,
            msrs,
            events: v.get_vcpu_events().map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?,
        })
    }

    /// Sets it all on `vcpu`, in Firecracker's order; the CPUID table only
    /// with `cpuid` (a fresh VCPU needs it, a reset one has it).
    pub fn set(&self, vcpu: &VcpuFd, cpuid: bool) -> Result<()> {
        if cpuid {
            vcpu.set_cpuid2(&self.cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        }
        vcpu.set_mp_state(self.mp).map_err(kvm_err("KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&self.regs).map_err(kvm_err("KVM_SET_REGS"))?;
        vcpu.set_sregs(&self.sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
        // SAFETY: a complete 4096-byte kvm_xsave, all KVM reads here.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(kvm_err("KVM_SET_XSAVE"))?;
        vcpu.set_debug_regs(&self.dregs).map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
        vcpu.set_msrs(&self.msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        vcpu.set_vcpu_events(&self.events).map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

/// `KVM_CREATE_VM` + `KVM_CREATE_VCPU` + the state set: the floor of a
/// fork. With `slot`, also one memory slot of that many bytes over
/// `host` (an address of the caller's reserved memory): what KVM itself
/// spends on a guest of that size. The VM lives until the returned value
/// is dropped.
pub fn create_and_set(kvm: &crate::floor::RawKvm, state: &RawState, slot: Option<(u64, u64)>) -> Result<RawFork> {
    let vm = kvm.kvm().create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    if let Some((host, size)) = slot {
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: the caller reserved `size` bytes at `host` for longer than
        // this VM lives (it is dropped at the end of this function).
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    state.set(&vcpu, true)?;
    Ok(RawFork { _vcpu: vcpu, _vm: vm })
}

/// A VM made by [`create_and_set`] and its VCPU (closed when dropped, the
/// VCPU first).
pub struct RawFork {
    _vcpu: VcpuFd,
    _vm: kvm_ioctls::VmFd,
}

/// Reserves `size` bytes of address space (no memory), for
/// [`create_and_set`]'s slot; unmapped when dropped.
pub struct Reservation {
    addr: u64,
    size: usize,
}

impl Reservation {
    /// Reserves `size` bytes.
    pub fn new(size: u64) -> Result<Reservation> {
        let size = size as usize;
        // SAFETY: a fresh private anonymous mapping at a kernel-chosen
        // address overlaps nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(FloorError { what: "mmap", source: std::io::Error::last_os_error() });
        }
        Ok(Reservation { addr: p as u64, size })
    }

    /// Its address.
    pub fn addr(&self) -> u64 {
        self.addr
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the VMs that used it are gone.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.size) };
    }
}
