//! The memory of a snapshot: a sealed memfd (or a snapshot file) that
//! machines map copy-on-write, and the page map that tells which pages of
//! guest memory hold anything.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};

/// Guest memory frozen for a snapshot: a file nobody writes any more.
#[derive(Debug)]
pub(crate) struct FrozenMemory {
    file: File,
    /// Unique in the process: tells the regions that map it.
    id: u64,
}

fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl FrozenMemory {
    /// A new memfd of `len` bytes (a hole: reads zero, holds nothing).
    pub(crate) fn memfd(len: u64) -> Result<FrozenMemory> {
        let name = c"nvmm-snapshot";
        // SAFETY: memfd_create reads a NUL-terminated string and returns a
        // new descriptor or -1.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if fd < 0 {
            return Err(Error::kvm("memfd_create", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(len).map_err(|e| Error::kvm("ftruncate(snapshot memfd)", e))?;
        Ok(FrozenMemory { file, id: next_id() })
    }

    /// A snapshot file opened read-only.
    pub(crate) fn from_file(file: File) -> FrozenMemory {
        FrozenMemory { file, id: next_id() }
    }

    /// Its id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Writes `bytes` at `offset` (while the snapshot is being taken).
    pub(crate) fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(bytes, offset).map_err(|e| Error::kvm("writing snapshot memory", e))
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, offset).map_err(|e| Error::kvm("reading snapshot memory", e))
    }

    /// Forbids every later write, size change included (a memfd; a file
    /// opened read-only is already safe from this process).
    pub(crate) fn seal(&self) -> Result<()> {
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS takes an integer argument; the descriptor is
        // ours.
        if unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(Error::kvm("sealing the snapshot memfd", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The descriptor, for private mappings of it.
    pub(crate) fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Runs `(offset, len)` of `[0, len)` that hold data (the rest are
    /// holes), as `SEEK_DATA`/`SEEK_HOLE` tell.
    pub(crate) fn data_runs(&self, len: u64) -> Result<Vec<(u64, u64)>> {
        let fd = self.file.as_raw_fd();
        let mut runs = Vec::new();
        let mut at = 0u64;
        while at < len {
            // SAFETY: lseek on our descriptor with integer arguments.
            let data = unsafe { libc::lseek(fd, at as i64, libc::SEEK_DATA) };
            if data < 0 {
                break; // ENXIO: no data after `at`.
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            let end = if hole < 0 { len } else { (hole as u64).min(len) };
            if data as u64 >= len {
                break;
            }
            runs.push((data as u64, end - data as u64));
            at = end;
        }
        Ok(runs)
    }
}

/// `/proc/self/pagemap`: present (bit 63) or swapped (bit 62).
const PAGEMAP_IN_USE: u64 = 3 << 62;
const PAGE: u64 = 4096;

/// Runs `(offset, len)` of the host range `[hva, hva + size)` whose pages
/// are present or swapped out (pages never touched hold nothing).
pub fn populated_pages(hva: u64, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut map = File::open("/proc/self/pagemap")?;
    let pages = size / PAGE;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; 8 * 65536];
    let mut page = 0;
    while page < pages {
        let n = (pages - page).min(65536);
        let bytes = &mut buf[..8 * n as usize];
        map.seek(SeekFrom::Start((hva / PAGE + page) * 8))?;
        map.read_exact(bytes)?;
        for (i, e) in bytes.chunks_exact(8).enumerate() {
            if u64::from_le_bytes(e.try_into().expect("8 bytes")) & PAGEMAP_IN_USE == 0 {
                continue;
            }
            let off = (page + i as u64) * PAGE;
            match runs.last_mut() {
                Some((start, len)) if *start + *len == off => *len += PAGE,
                _ => runs.push((off, PAGE)),
            }
        }
        page += n;
    }
    Ok(runs)
}
