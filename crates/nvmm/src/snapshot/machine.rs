//! Whole machines: their VCPUs and guest memory, snapshotted, reset in
//! place, and forked copy-on-write.

use std::sync::Arc;

use super::VcpuSnapshot;
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::memory::{PAGE_SIZE, Prot};
use crate::os::{FrozenMemory, HostRegion, populated_pages};
use crate::system::Nvmm;
use crate::vcpu::Vcpu;

/// One host region of the snapshot: its bytes start at `offset` in the
/// snapshot's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RegionImage {
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

/// One guest physical mapping of the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AreaImage {
    /// Guest physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Protection.
    pub prot: Prot,
    /// Which host region backs it, and where in it.
    pub(crate) region: usize,
    pub(crate) offset: u64,
}

/// A whole machine's state: every VCPU's [`VcpuSnapshot`], the guest
/// physical memory map, and guest memory, frozen in a sealed memfd (or a
/// snapshot file) that any number of machines map copy-on-write.
///
/// Mappings that share host memory (two guest addresses of one page) share
/// it again in every machine made from the snapshot. Memory a mapping has
/// no access to (`PROT_NONE`) is carried like the rest.
#[derive(Clone, Debug)]
pub struct MachineSnapshot {
    pub(crate) vcpus: Vec<VcpuSnapshot>,
    pub(crate) regions: Vec<RegionImage>,
    pub(crate) areas: Vec<AreaImage>,
    pub(crate) memory: Arc<FrozenMemory>,
    /// The CPU it was taken on.
    pub(crate) cpu: super::file::CpuTag,
}

impl MachineSnapshot {
    /// Saves the snapshot to `path` (nvmm's format, see
    /// [`FORMAT_VERSION`](super::FORMAT_VERSION); guest memory raw and
    /// sparse at a page-aligned offset, so loading maps it whatever its
    /// size).
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        let mut f = std::fs::File::create(path)
            .map_err(|e| Error::InvalidSnapshot { why: format!("cannot create {}: {e}", path.display()) })?;
        super::file::save(self, self.cpu, &mut f)
    }

    /// The VCPUs, in the order they were given.
    pub fn vcpus(&self) -> &[VcpuSnapshot] {
        &self.vcpus
    }

    /// The guest physical mappings, in address order.
    pub fn areas(&self) -> &[AreaImage] {
        &self.areas
    }

    /// Bytes of guest memory the snapshot holds (host regions, holes
    /// included).
    pub fn memory_size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// Reads guest physical memory of the snapshot (`ENOENT` where it has
    /// no mapping).
    pub fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = gpa + done as u64;
            let a =
                self.areas.iter().find(|a| at >= a.gpa && at < a.gpa + a.size).ok_or(Error::GpaUnmapped { gpa: at })?;
            let n = ((a.gpa + a.size - at) as usize).min(buf.len() - done);
            let off = self.regions[a.region].offset + a.offset + (at - a.gpa);
            self.memory.read_at(off, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

/// Bytes copied per read while taking a snapshot.
const CHUNK: usize = 1 << 20;

impl Machine {
    /// Snapshots the machine with `vcpus` (each stopped, between runs: see
    /// [`Vcpu::snapshot`]): their state, the memory map, and the guest
    /// memory's pages that hold anything (pages never touched stay holes,
    /// so the cost follows what the guest used, not its size). When
    /// `vcpus` are all the machine's VCPUs, the memory the library
    /// allocated then maps the snapshot copy-on-write (same bytes; pages
    /// shared until written), so that resetting to it later costs what was
    /// written since.
    pub fn snapshot(&self, vcpus: &mut [&mut Vcpu]) -> Result<MachineSnapshot> {
        let vcpu_images = vcpus.iter_mut().map(|v| v.snapshot()).collect::<Result<Vec<_>>>()?;
        // Exclusive: no guest memory write of the VMM's runs meanwhile, and
        // no VCPU runs when all of them were given (they are borrowed).
        let all_vcpus = vcpus.len() as u32 == self.shared().nvcpus();
        let mem = self.shared().memory_mut();
        // Host regions the guest sees, each once.
        let mut hosts: Vec<Arc<HostRegion>> = Vec::new();
        let mut areas = Vec::new();
        for a in mem.areas() {
            let index = match hosts.iter().position(|h| Arc::ptr_eq(h, &a.region)) {
                Some(i) => i,
                None => {
                    hosts.push(a.region.clone());
                    hosts.len() - 1
                }
            };
            areas.push(AreaImage { gpa: a.gpa, size: a.size, prot: a.prot, region: index, offset: a.offset });
        }
        let mut regions = Vec::new();
        let mut total = 0u64;
        for h in &hosts {
            regions.push(RegionImage { offset: total, size: h.len() as u64 });
            total += (h.len() as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        }
        let frozen = FrozenMemory::memfd(total)?;
        let mut buf = vec![0u8; CHUNK];
        for (h, r) in hosts.iter().zip(&regions) {
            let runs =
                populated_pages(h.addr(), h.len() as u64).map_err(|e| Error::kvm("reading /proc/self/pagemap", e))?;
            for (start, len) in runs {
                let mut at = start;
                while at < start + len {
                    let n = ((start + len - at) as usize).min(CHUNK);
                    h.read(at, &mut buf[..n]);
                    // All-zero pages stay holes.
                    for (i, page) in buf[..n].chunks(PAGE_SIZE as usize).enumerate() {
                        if page.iter().any(|&b| b != 0) {
                            frozen.write_at(r.offset + at + (i as u64) * PAGE_SIZE, page)?;
                        }
                    }
                    at += n as u64;
                }
            }
        }
        // The snapshot holds the program's bytes, not the debugger's INT3s.
        for (gpa, original) in self.sw_breakpoints() {
            if let Some(a) = areas.iter().find(|a| gpa >= a.gpa && gpa < a.gpa + a.size) {
                frozen.write_at(regions[a.region].offset + a.offset + (gpa - a.gpa), &[original])?;
            }
        }
        frozen.seal()?;
        // The machine's own memory becomes a private view of the snapshot:
        // the same bytes, and a later reset only drops what was written
        // since. Only when nothing can write it meanwhile.
        if all_vcpus {
            for (h, r) in hosts.iter().zip(&regions) {
                if h.is_owned() {
                    h.rebase(&frozen, r.offset)?;
                }
            }
        }
        drop(mem);
        let sys = &self.shared().sys;
        let cpu = super::cpu::host_tag(&sys.kvm.facts().vendor, sys.kvm.supported_cpuid());
        Ok(MachineSnapshot { vcpus: vcpu_images, regions, areas, memory: Arc::new(frozen), cpu })
    }

    /// Puts the machine back to `snapshot`, in place: every VCPU's state
    /// (`vcpus` in the snapshot's order) and the guest memory. Memory that
    /// maps the snapshot copy-on-write (a machine forked from it, or the
    /// machine that took it, whose memory the library allocated and whose
    /// VCPUs were all given to [`Machine::snapshot`]) only drops the pages
    /// written since; other memory the library allocated is cleared and
    /// refilled with the snapshot's data, and memory the program mapped
    /// itself is rewritten in full. The memory map must be the snapshot's
    /// (`EINVAL` otherwise).
    pub fn reset_to(&self, vcpus: &mut [&mut Vcpu], snapshot: &MachineSnapshot) -> Result<()> {
        if vcpus.len() != snapshot.vcpus.len() {
            return Err(Error::InvalidSnapshot {
                why: format!("{} VCPUs given for a snapshot of {}", vcpus.len(), snapshot.vcpus.len()),
            });
        }
        {
            // Exclusive, as for a snapshot: regions may be remapped.
            let all_vcpus = vcpus.len() as u32 == self.shared().nvcpus();
            let mem = self.shared().memory_mut();
            let mine: Vec<_> = mem.areas().collect();
            if mine.len() != snapshot.areas.len()
                || mine.iter().zip(&snapshot.areas).any(|(a, s)| a.gpa != s.gpa || a.size != s.size || a.prot != s.prot)
            {
                return Err(Error::InvalidSnapshot { why: "the machine's memory map is not the snapshot's".into() });
            }
            let mut done: Vec<*const HostRegion> = Vec::new();
            for (a, s) in mine.iter().zip(&snapshot.areas) {
                if done.contains(&Arc::as_ptr(&a.region)) {
                    continue;
                }
                done.push(Arc::as_ptr(&a.region));
                reset_region(&a.region, snapshot, snapshot.regions[s.region], all_vcpus)?;
            }
        }
        self.reinsert_sw_breakpoints()?;
        for (v, s) in vcpus.iter_mut().zip(&snapshot.vcpus) {
            v.restore(s)?;
        }
        Ok(())
    }
}

/// Makes `region` hold the snapshot's region `image` again.
///
/// (The machine's software breakpoints are written again afterwards by
/// [`Machine::reset_to`]: they survive a reset.)
fn reset_region(region: &HostRegion, snapshot: &MachineSnapshot, image: RegionImage, exclusive: bool) -> Result<()> {
    let len = region.len();
    if len as u64 != image.size {
        return Err(Error::InvalidSnapshot { why: "a host region's size differs from the snapshot's".into() });
    }
    if region.backing() == Some((snapshot.memory.id(), image.offset)) {
        // A private mapping of the snapshot: dropping the written pages is
        // the whole reset.
        return region.discard(0, len);
    }
    if region.is_owned() && exclusive {
        // Nothing can write it meanwhile: map this snapshot instead (its
        // bytes at once, and cheap resets to it from now on).
        return region.rebase(&snapshot.memory, image.offset);
    }
    if region.is_owned() && region.backing().is_none() {
        // Anonymous memory reads zero once dropped.
        region.discard(0, len)?;
    } else {
        let zeros = vec![0u8; CHUNK];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(CHUNK);
            region.write(at as u64, &zeros[..n]);
            at += n;
        }
    }
    let mut buf = vec![0u8; CHUNK];
    for (start, run) in snapshot.memory.data_runs(image.offset + image.size)? {
        let (from, to) = (start.max(image.offset), (start + run).min(image.offset + image.size));
        let mut at = from;
        while at < to {
            let n = ((to - at) as usize).min(CHUNK);
            snapshot.memory.read_at(at, &mut buf[..n])?;
            region.write(at - image.offset, &buf[..n]);
            at += n as u64;
        }
    }
    Ok(())
}

impl Nvmm {
    /// Loads a snapshot file (see [`MachineSnapshot::save`]). Its memory
    /// stays in the file: machines forked from it map the file
    /// copy-on-write, so loading costs the same whatever the guest's size.
    /// A file of another format version, a truncated or corrupt one, or
    /// one taken on a CPU of another vendor or with features this one
    /// lacks, is `EINVAL` with the reason.
    pub fn load_snapshot(&self, path: impl AsRef<std::path::Path>) -> Result<MachineSnapshot> {
        let (mut snap, file_cpu) = super::file::load(path.as_ref())?;
        let supported = self.sys.kvm.supported_cpuid();
        let host = super::cpu::host_tag(&self.sys.kvm.facts().vendor, supported);
        for v in &snap.vcpus {
            let guest = crate::backend::cpuid_of_component(v.component(super::Component::Cpuid).unwrap_or(&[]))?;
            super::cpu::check(file_cpu, host, &guest, supported)?;
        }
        snap.cpu = file_cpu;
        Ok(snap)
    }

    /// A new machine from `snapshot`: its memory maps the snapshot's
    /// copy-on-write (nothing is copied; a page costs memory only once the
    /// new machine writes it), its VCPUs are created with the snapshot's
    /// ids and restored. Machines forked from one snapshot never see each
    /// other's writes.
    pub fn fork(&self, snapshot: &MachineSnapshot) -> Result<(Machine, Vec<Vcpu>)> {
        let machine = self.create_machine()?;
        let mut hvas = Vec::with_capacity(snapshot.regions.len());
        for r in &snapshot.regions {
            let len = usize::try_from(r.size).map_err(|_| Error::NoMemory { what: "mapping snapshot memory" })?;
            let region = HostRegion::private_file(&snapshot.memory, r.offset, len)?;
            hvas.push(machine.add_region(region)?);
        }
        for a in &snapshot.areas {
            machine.gpa_map(hvas[a.region] + a.offset, a.gpa, a.size, a.prot)?;
        }
        let mut vcpus = Vec::with_capacity(snapshot.vcpus.len());
        for s in &snapshot.vcpus {
            let mut v = machine.create_vcpu_for_restore(s.id())?;
            v.restore(s)?;
            vcpus.push(v);
        }
        Ok((machine, vcpus))
    }
}
