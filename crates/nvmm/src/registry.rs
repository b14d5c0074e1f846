//! The machines of this process: ids, limits, the facts `nvmm_ctl`
//! (`NVMM_CTL_MACH_INFO`) reports, and their publication for
//! `nvmmctl list`.
//!
//! KVM keeps no table of VMs that another process could query, so every
//! process using nvmm keeps its table in a memfd named [`REGISTRY_NAME`]:
//! `nvmmctl list` finds it under `/proc/PID/fd` and decodes it with
//! [`parse_registry`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::os::Publisher;

/// Name of the memfd holding a process's published table (it shows as
/// `/memfd:nvmm-registry (deleted)` in `/proc/PID/fd`).
pub const REGISTRY_NAME: &str = "nvmm-registry";

const MAGIC: &[u8; 16] = b"NVMM-REGISTRY-1\n";
const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"NVVM");

/// What `nvmm_ctl(NVMM_CTL_MACH_INFO)` reports about a machine.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MachineInfo {
    /// Machine id.
    pub machid: u32,
    /// Number of VCPUs.
    pub nvcpus: u32,
    /// Bytes of host memory mapped for the guest (`hva_map`).
    pub nram: u64,
    /// Owner process.
    pub pid: u32,
    /// Creation time.
    pub created: SystemTime,
}

/// One published machine, as stored in the registry memfd (64 bytes,
/// little endian: magic "NVVM", machid, VM fd, VCPUs, RAM bytes, creation
/// time in seconds since the epoch).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Record {
    /// Machine id.
    pub machid: u32,
    /// Descriptor number of the KVM VM in the owner process.
    pub vm_fd: i32,
    /// Number of VCPUs.
    pub nvcpus: u32,
    /// Bytes of host memory mapped for the guest.
    pub nram: u64,
    /// Creation time, seconds since the epoch.
    pub created_unix: u64,
}

impl Record {
    /// Size of an encoded record.
    pub const SIZE: usize = 64;

    /// Encodes the record.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.machid.to_le_bytes());
        b[8..12].copy_from_slice(&self.vm_fd.to_le_bytes());
        b[12..16].copy_from_slice(&self.nvcpus.to_le_bytes());
        b[16..24].copy_from_slice(&self.nram.to_le_bytes());
        b[24..32].copy_from_slice(&self.created_unix.to_le_bytes());
        b
    }

    /// Decodes a record; `None` for an empty or foreign slot.
    pub fn decode(b: &[u8]) -> Option<Record> {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        if b.len() < Self::SIZE || u32_at(0) != RECORD_MAGIC {
            return None;
        }
        Some(Record {
            machid: u32_at(4),
            vm_fd: u32_at(8) as i32,
            nvcpus: u32_at(12),
            nram: u64_at(16),
            created_unix: u64_at(24),
        })
    }
}

/// Decodes a registry memfd's content.
pub fn parse_registry(bytes: &[u8]) -> Vec<Record> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Vec::new();
    }
    bytes[Record::SIZE..].chunks_exact(Record::SIZE).filter_map(Record::decode).collect()
}

/// A live machine's entry.
#[derive(Debug)]
pub(crate) struct MachineRecord {
    pub(crate) id: u32,
    vm_fd: i32,
    pid: u32,
    created: SystemTime,
    nvcpus: AtomicU32,
    nram: AtomicU64,
}

impl MachineRecord {
    pub(crate) fn info(&self) -> MachineInfo {
        MachineInfo {
            machid: self.id,
            nvcpus: self.nvcpus.load(Ordering::Relaxed),
            nram: self.nram.load(Ordering::Relaxed),
            pid: self.pid,
            created: self.created,
        }
    }

    fn record(&self) -> Record {
        Record {
            machid: self.id,
            vm_fd: self.vm_fd,
            nvcpus: self.nvcpus.load(Ordering::Relaxed),
            nram: self.nram.load(Ordering::Relaxed),
            created_unix: self.created.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs(),
        }
    }

    /// Adds `delta` VCPUs (may be negative) and republishes.
    pub(crate) fn add_vcpus(&self, delta: i32) {
        self.nvcpus.fetch_add(delta as u32, Ordering::Relaxed);
        publish(self);
    }

    /// Sets the mapped host memory and republishes.
    pub(crate) fn set_nram(&self, nram: u64) {
        self.nram.store(nram, Ordering::Relaxed);
        publish(self);
    }
}

struct Table {
    slots: Vec<Option<Arc<MachineRecord>>>,
    publisher: Option<Publisher>,
    publisher_tried: bool,
}

static TABLE: Mutex<Table> = Mutex::new(Table { slots: Vec::new(), publisher: None, publisher_tried: false });

fn table() -> std::sync::MutexGuard<'static, Table> {
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

fn slot_offset(id: u32) -> u64 {
    Record::SIZE as u64 * (u64::from(id) + 1)
}

fn publish(rec: &MachineRecord) {
    let t = table();
    if let Some(p) = &t.publisher {
        p.write_at(slot_offset(rec.id), &rec.record().encode());
    }
}

/// Takes the lowest free id, or fails when `max` machines are alive.
pub(crate) fn register(max: u32, vm_fd: i32) -> Result<Arc<MachineRecord>> {
    let mut t = table();
    let id = match t.slots.iter().position(Option::is_none) {
        Some(i) => i,
        None if t.slots.len() < max as usize => {
            t.slots.push(None);
            t.slots.len() - 1
        }
        None => return Err(Error::TooManyMachines { max }),
    };
    if id >= max as usize {
        return Err(Error::TooManyMachines { max });
    }
    let rec = Arc::new(MachineRecord {
        id: id as u32,
        vm_fd,
        pid: std::process::id(),
        created: SystemTime::now(),
        nvcpus: AtomicU32::new(0),
        nram: AtomicU64::new(0),
    });
    t.slots[id] = Some(rec.clone());
    if !t.publisher_tried {
        t.publisher_tried = true;
        t.publisher = Publisher::create(REGISTRY_NAME).ok();
        if let Some(p) = &t.publisher {
            let mut header = [0u8; Record::SIZE];
            header[..MAGIC.len()].copy_from_slice(MAGIC);
            p.write_at(0, &header);
        }
    }
    if let Some(p) = &t.publisher {
        p.write_at(slot_offset(rec.id), &rec.record().encode());
    }
    Ok(rec)
}

/// Frees the id of a destroyed machine.
pub(crate) fn unregister(id: u32) {
    let mut t = table();
    if let Some(slot) = t.slots.get_mut(id as usize) {
        *slot = None;
    }
    if let Some(p) = &t.publisher {
        p.write_at(slot_offset(id), &[0u8; Record::SIZE]);
    }
}

/// Information about machine `id` of this process.
pub(crate) fn machine_info(id: u32, max: u32) -> Result<MachineInfo> {
    if id >= max {
        return Err(Error::InvalidMachineId { id, max });
    }
    let t = table();
    match t.slots.get(id as usize) {
        Some(Some(rec)) => Ok(rec.info()),
        _ => Err(Error::NoSuchMachine { id }),
    }
}

/// The machines other processes publish, found through `proc` (normally
/// `/proc`): owner pid and record. Processes that cannot be inspected are
/// skipped.
pub fn published_machines(proc: &std::path::Path) -> Vec<(u32, Record)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(proc) else { return out };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            if target.to_string_lossy().starts_with(&format!("/memfd:{REGISTRY_NAME}"))
                && let Ok(bytes) = std::fs::read(fd.path())
            {
                out.extend(parse_registry(&bytes).into_iter().map(|r| (pid, r)));
            }
        }
    }
    out
}

/// Other processes' machines as the root view last read them.
struct Snapshot {
    /// The last id asked for.
    last_id: u32,
    /// Owner pid and record, in root-view order.
    others: Vec<(u32, Record)>,
}

static SNAPSHOT: Mutex<Option<Snapshot>> = Mutex::new(None);

/// Machine `id` of NVMM's root view, which numbers every machine on the
/// host: this process's machines keep their own ids; the machines other
/// processes publish follow, ordered by owner pid and then by their id in
/// that process, from the first id past this process's table. The
/// numbering is a snapshot, taken when a walk over the ids starts (an id
/// not past the previous one asked for): it shifts when other processes'
/// machines come and go, as a listing of them would.
pub(crate) fn machine_info_any(id: u32, max: u32) -> Result<MachineInfo> {
    match machine_info(id, max) {
        Err(Error::NoSuchMachine { .. }) => {}
        r => return r,
    }
    let own = table().slots.len() as u32;
    if id < own {
        return Err(Error::NoSuchMachine { id });
    }
    let mut snap = SNAPSHOT.lock().unwrap_or_else(|e| e.into_inner());
    // A walk asks for increasing ids and reads /proc once; asking for an
    // id not past the last one starts a new walk on a fresh snapshot.
    if snap.as_ref().is_none_or(|s| id <= s.last_id) {
        let me = std::process::id();
        let mut others: Vec<(u32, Record)> =
            published_machines(std::path::Path::new("/proc")).into_iter().filter(|(pid, _)| *pid != me).collect();
        others.sort_by_key(|(pid, r)| (*pid, r.machid));
        *snap = Some(Snapshot { last_id: id, others });
    }
    let Some(snap) = snap.as_mut() else { return Err(Error::NoSuchMachine { id }) };
    snap.last_id = id;
    snap.others
        .get((id - own) as usize)
        .map(|(pid, r)| MachineInfo {
            machid: id,
            nvcpus: r.nvcpus,
            nram: r.nram,
            pid: *pid,
            created: UNIX_EPOCH + Duration::from_secs(r.created_unix),
        })
        .ok_or(Error::NoSuchMachine { id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let r = Record { machid: 7, vm_fd: 12, nvcpus: 3, nram: 1 << 40, created_unix: 1_700_000_000 };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(&[0u8; 64]), None);
        let mut file = vec![0u8; 64 * 4];
        file[..16].copy_from_slice(MAGIC);
        file[64 * 2..64 * 3].copy_from_slice(&r.encode());
        assert_eq!(parse_registry(&file), vec![r]);
        assert!(parse_registry(b"garbage").is_empty());
    }
}
