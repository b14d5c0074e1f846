//! [`Machine`]: a virtual machine, its guest memory and its VCPUs.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::backend::kvm::KvmVm;
use crate::breakpoints::SwBreakpoints;
use crate::error::{Error, Result};
use crate::memory::{MemoryMap, PAGE_SIZE, Prot};
use crate::os::HostRegion;
use crate::registry::{self, MachineInfo, MachineRecord};
use crate::system::System;
use crate::vcpu::Vcpu;

/// What a machine's VCPUs share with it.
pub(crate) struct MachineShared {
    pub(crate) sys: Arc<System>,
    pub(crate) vm: KvmVm,
    pub(crate) record: Arc<MachineRecord>,
    memory: RwLock<MemoryMap>,
    /// Counts the times the memory map was opened for writing: what was
    /// found in it under one value still holds while it is unchanged.
    memory_generation: AtomicU64,
    vcpus: Mutex<BTreeSet<u32>>,
    /// KVM VCPUs whose `Vcpu` was destroyed, kept for reuse of their id
    /// (`None`: could not be quiesced, the id is lost).
    parked: Mutex<HashMap<u32, Option<OwnedFd>>>,
    /// The debugger's software breakpoints.
    pub(crate) breakpoints: SwBreakpoints,
}

impl MachineShared {
    pub(crate) fn memory(&self) -> RwLockReadGuard<'_, MemoryMap> {
        self.memory.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn memory_mut(&self) -> RwLockWriteGuard<'_, MemoryMap> {
        let map = self.memory.write().unwrap_or_else(|e| e.into_inner());
        self.memory_generation.fetch_add(1, Ordering::SeqCst);
        map
    }

    /// The memory map's generation (see `memory_generation`); read it
    /// under [`MachineShared::memory`] to date what the map showed.
    pub(crate) fn memory_generation(&self) -> u64 {
        self.memory_generation.load(Ordering::SeqCst)
    }

    fn vcpu_ids(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.vcpus.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of VCPUs alive.
    pub(crate) fn nvcpus(&self) -> u32 {
        self.vcpu_ids().len() as u32
    }

    /// Called when VCPU `id` goes away; `parked` keeps the KVM VCPU.
    pub(crate) fn release_vcpu(&self, id: u32, parked: Option<OwnedFd>) {
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).insert(id, parked);
        self.vcpu_ids().remove(&id);
        self.record.add_vcpus(-1);
    }

    /// The parked KVM VCPU with this id: `Ok(None)` if the id was never
    /// used, an error if it cannot be reused.
    pub(crate) fn take_parked(&self, id: u32) -> Result<Option<OwnedFd>> {
        match self.parked.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
            None => Ok(None),
            Some(Some(fd)) => Ok(Some(fd)),
            Some(None) => Err(Error::VcpuExists { id }),
        }
    }
}

impl Drop for MachineShared {
    fn drop(&mut self) {
        registry::unregister(self.record.id);
    }
}

/// A virtual machine.
///
/// Dropping it (or calling [`Machine::destroy`]) destroys the machine once
/// its last [`Vcpu`] is gone too: VCPUs keep their machine alive. `Machine`
/// is `Send + Sync`; memory operations may run while VCPUs run on other
/// threads.
pub struct Machine {
    shared: Arc<MachineShared>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine").field("id", &self.id()).finish()
    }
}

impl Machine {
    pub(crate) fn create(sys: Arc<System>) -> Result<Machine> {
        let vm = match sys.ready_vms.take() {
            Some(vm) => vm,
            None => sys.kvm.create_vm()?,
        };
        let record = registry::register(sys.cap.max_machines, vm.raw_fd())?;
        let memory = MemoryMap::new(sys.cap.max_ram, sys.kvm.facts().memslots);
        let shared = MachineShared {
            sys,
            vm,
            record,
            memory: RwLock::new(memory),
            memory_generation: AtomicU64::new(0),
            vcpus: Mutex::new(BTreeSet::new()),
            parked: Mutex::new(HashMap::new()),
            breakpoints: SwBreakpoints::default(),
        };
        Ok(Machine { shared: Arc::new(shared) })
    }

    /// The machine id (`nvmm_machine::machid`), unique among this
    /// process's live machines.
    pub fn id(&self) -> u32 {
        self.shared.record.id
    }

    /// Destroys the machine (same as dropping it).
    pub fn destroy(self) {}

    /// What `NVMM_CTL_MACH_INFO` reports for this machine.
    pub fn info(&self) -> MachineInfo {
        self.shared.record.info()
    }

    /// Creates VCPU `id` in the x86 RESET state.
    ///
    /// Fails with `EINVAL` when `id` is not below `Capability::max_vcpus`
    /// and `EBUSY` when the machine already has a VCPU `id`. An id whose
    /// VCPU was destroyed can be used again (KVM cannot destroy a VCPU: the
    /// library keeps it and resets it; its CPUID can then no longer change).
    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu> {
        self.create_vcpu_with(id, Vcpu::create)
    }

    /// A VCPU about to take a snapshot's state (its CPUID included).
    pub(crate) fn create_vcpu_for_restore(&self, id: u32) -> Result<Vcpu> {
        self.create_vcpu_with(id, Vcpu::create_for_restore)
    }

    fn create_vcpu_with(&self, id: u32, create: fn(Arc<MachineShared>, u32) -> Result<Vcpu>) -> Result<Vcpu> {
        let max = self.shared.sys.cap.max_vcpus;
        if id >= max {
            return Err(Error::InvalidVcpuId { id, max });
        }
        if !self.shared.vcpu_ids().insert(id) {
            return Err(Error::VcpuExists { id });
        }
        match create(self.shared.clone(), id) {
            Ok(v) => {
                self.shared.record.add_vcpus(1);
                Ok(v)
            }
            Err(e) => {
                self.shared.vcpu_ids().remove(&id);
                Err(e)
            }
        }
    }

    /// Step one of giving the guest memory (`nvmm_hva_map`): allocates
    /// `size` bytes of zero-filled host memory and registers it with the
    /// machine; returns its host address. The memory is lazily backed:
    /// only the pages the guest or the VMM touch cost anything.
    pub fn hva_map_anonymous(&self, size: u64) -> Result<u64> {
        if size == 0 || size % PAGE_SIZE != 0 {
            return Err(Error::Misaligned { what: "size", value: size });
        }
        let len = usize::try_from(size).map_err(|_| Error::NoMemory { what: "mapping guest memory" })?;
        let region = HostRegion::anonymous(len)?;
        let mut mem = self.shared.memory_mut();
        let hva = mem.add_host(region)?;
        self.shared.record.set_nram(mem.host_bytes());
        Ok(hva)
    }

    /// Registers `[hva, hva + size)`, memory the program mapped itself, as
    /// a host mapping of the machine (`nvmm_hva_map` with a caller-chosen
    /// address). Its content is left as it is. A range inside an existing
    /// host mapping is accepted and adds nothing (NVMM accepts it too); a
    /// partial overlap is `EEXIST`.
    ///
    /// # Safety
    ///
    /// The range must be readable and writable memory of this process that
    /// stays mapped until the machine is destroyed or the range is unmapped
    /// from it with [`Machine::hva_unmap`] and from the guest with
    /// [`Machine::gpa_unmap`]: the library and the guest access it.
    #[allow(unsafe_code)]
    pub unsafe fn hva_map_borrowed(&self, hva: u64, size: u64) -> Result<()> {
        let len = usize::try_from(size).map_err(|_| Error::NoMemory { what: "mapping guest memory" })?;
        // SAFETY: the caller vouches for the range (this function's contract).
        let region = unsafe { HostRegion::borrowed(hva, len)? };
        self.add_host_region(region)
    }

    /// Registers a host region the library made (snapshot memory, say);
    /// returns its host address.
    pub(crate) fn add_region(&self, region: HostRegion) -> Result<u64> {
        let mut mem = self.shared.memory_mut();
        let hva = mem.add_host(region)?;
        self.shared.record.set_nram(mem.host_bytes());
        Ok(hva)
    }

    /// Registers a host region, unless it lies inside an existing mapping
    /// (then it adds nothing, as NVMM).
    fn add_host_region(&self, region: HostRegion) -> Result<()> {
        let mut mem = self.shared.memory_mut();
        mem.check_host_range(region.addr(), region.len() as u64)?;
        if mem.host_contains(region.addr(), region.len() as u64) {
            return Ok(());
        }
        mem.add_host(region)?;
        self.shared.record.set_nram(mem.host_bytes());
        Ok(())
    }

    /// Unregisters the host mapping with exactly this range
    /// (`nvmm_hva_unmap`). Guest mappings of it keep working; the memory is
    /// released when the last of them is unmapped.
    pub fn hva_unmap(&self, hva: u64, size: u64) -> Result<()> {
        let mut mem = self.shared.memory_mut();
        mem.remove_host(hva, size)?;
        self.shared.record.set_nram(mem.host_bytes());
        Ok(())
    }

    /// Step two (`nvmm_gpa_map`): makes `[hva, hva + size)`, which must lie
    /// inside one host mapping, appear at guest physical address `gpa` with
    /// protection `prot`. See [`crate::memory`] for what KVM enforces.
    pub fn gpa_map(&self, hva: u64, gpa: u64, size: u64, prot: Prot) -> Result<()> {
        let mut mem = self.shared.memory_mut();
        let plan = mem.plan_gpa_map(hva, gpa, size, prot)?;
        if let Some(slot) = plan.area.slot {
            let readonly = !prot.contains(Prot::WRITE);
            if let Err(e) = self.shared.vm.set_slot(slot, gpa, &plan.area.region, plan.area.offset, size, readonly) {
                mem.abandon(plan);
                return Err(e);
            }
        }
        mem.commit(plan);
        Ok(())
    }

    /// Removes the guest mapping with exactly this host address, guest
    /// address and size (`nvmm_gpa_unmap`).
    pub fn gpa_unmap(&self, hva: u64, gpa: u64, size: u64) -> Result<()> {
        let mut mem = self.shared.memory_mut();
        let area = mem.find_exact(hva, gpa, size)?;
        if let Some(slot) = area.slot {
            self.shared.vm.clear_slot(slot, gpa)?;
        }
        mem.remove_area(gpa);
        Ok(())
    }

    /// Convenience: `hva_map_anonymous` + `gpa_map` of the whole range.
    /// Returns the host address.
    pub fn map_anonymous(&self, gpa: u64, size: u64, prot: Prot) -> Result<u64> {
        let hva = self.hva_map_anonymous(size)?;
        if let Err(e) = self.gpa_map(hva, gpa, size, prot) {
            let _ = self.hva_unmap(hva, size);
            return Err(e);
        }
        Ok(hva)
    }

    /// What the VCPUs share with the machine.
    pub(crate) fn shared(&self) -> &MachineShared {
        &self.shared
    }

    /// The host address and protection behind guest physical address `gpa`
    /// (`nvmm_gpa_to_hva`); `ENOENT` when unmapped.
    pub fn gpa_to_hva(&self, gpa: u64) -> Result<(u64, Prot)> {
        self.shared.memory().gpa_to_hva(gpa)
    }

    /// Reads guest physical memory at any address and size, across mappings.
    /// Fails without copying anything if a byte is unmapped.
    pub fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        self.shared.memory().read(gpa, buf)
    }

    /// Writes guest physical memory at any address and size, across
    /// mappings, whatever their protection (the VMM sees all of it). Fails
    /// without copying anything if a byte is unmapped.
    pub fn write_gpa(&self, gpa: u64, buf: &[u8]) -> Result<()> {
        self.shared.memory().write(gpa, buf)
    }

    /// The guest physical mappings: `(gpa, size, hva, prot)` in address
    /// order.
    pub fn gpa_mappings(&self) -> Vec<(u64, u64, u64, Prot)> {
        self.shared.memory().areas().map(|a| (a.gpa, a.size, a.hva, a.prot)).collect()
    }
}
