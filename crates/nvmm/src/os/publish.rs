//! Publishes this process's machines for `nvmmctl list`.
//!
//! NVMM's `nvmmctl list` asks the kernel; KVM keeps no such table, so each
//! process that uses nvmm keeps one in a memfd named
//! [`REGISTRY_NAME`](crate::registry::REGISTRY_NAME). Other processes find
//! it through `/proc/PID/fd` and read it. The format is in
//! [`crate::registry::Record`].

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};

/// The memfd.
pub(crate) struct Publisher {
    file: File,
}

impl Publisher {
    /// Creates the memfd.
    pub(crate) fn create(name: &str) -> Result<Publisher> {
        let cname = std::ffi::CString::new(name).map_err(|_| Error::InvalidConfiguration { why: "memfd name" })?;
        // SAFETY: memfd_create reads a NUL-terminated string and returns a
        // new descriptor or -1.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::kvm("memfd_create", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(Publisher { file })
    }

    /// Writes `bytes` at `offset`. Failures are ignored: the registry is
    /// informational and must never make a VM operation fail.
    pub(crate) fn write_at(&self, offset: u64, bytes: &[u8]) {
        let _ = self.file.write_all_at(bytes, offset);
    }
}
