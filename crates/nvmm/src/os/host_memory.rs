//! Host memory that backs guest RAM.

use std::ptr::NonNull;

use crate::error::{Error, Result};

/// Host memory backing guest RAM: either owned by the library
/// (anonymous, private, lazily backed with `MAP_NORESERVE`, unmapped on
/// drop) or borrowed from the program (see [`HostRegion::borrowed`]).
///
/// Guest code may change the bytes at any time while a VCPU runs, so the
/// region is only ever accessed through raw copies, never through Rust
/// references.
pub(crate) struct HostRegion {
    ptr: NonNull<u8>,
    len: usize,
    owned: bool,
    /// A private mapping of snapshot memory: its id (0: none) and the
    /// offset mapped. Changes when the region is rebased on a snapshot.
    backing: std::sync::Mutex<(u64, u64)>,
}

// SAFETY: the region is plain memory owned by this value; all accesses are
// raw copies bounded by `len`, valid from any thread.
unsafe impl Send for HostRegion {}
// SAFETY: as above; concurrent copies race only with each other or with the
// guest, which is the nature of guest memory and cannot break Rust invariants
// because no reference into the region is ever created.
unsafe impl Sync for HostRegion {}

impl HostRegion {
    /// Maps `len` bytes of zero-filled anonymous memory. Nothing is
    /// committed until touched.
    pub(crate) fn anonymous(len: usize) -> Result<HostRegion> {
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address
        // overlaps nothing the program owns.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOMEM) => Error::NoMemory { what: "mapping guest memory (address space exhausted?)" },
                _ => Error::kvm("mmap", e),
            });
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(Error::NoMemory { what: "mapping guest memory" })?;
        Ok(HostRegion { ptr, len, owned: true, backing: std::sync::Mutex::new((0, 0)) })
    }

    /// Maps `len` bytes of `frozen` from `offset` copy-on-write: reads see
    /// the file, writes make private pages (allocated only when written).
    pub(crate) fn private_file(frozen: &super::FrozenMemory, offset: u64, len: usize) -> Result<HostRegion> {
        // SAFETY: a fresh private mapping at a kernel-chosen address
        // overlaps nothing the program owns; the file stays open while
        // mapped (the mapping holds its own reference).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                frozen.raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::kvm("mmap(snapshot memory)", std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(Error::NoMemory { what: "mapping snapshot memory" })?;
        Ok(HostRegion { ptr, len, owned: true, backing: std::sync::Mutex::new((frozen.id(), offset)) })
    }

    /// Drops the private pages of `[offset, offset + len)`: an anonymous
    /// region reads zero there again, a private file mapping reads the
    /// file (a snapshot's memory) again. Only pages that were written cost
    /// anything.
    pub(crate) fn discard(&self, offset: u64, len: usize) -> Result<()> {
        let off = self.check(offset, len);
        if !self.owned {
            return Err(Error::Unsupported { what: "resetting memory the program mapped itself" });
        }
        // SAFETY: the range lies in our own mapping (checked); MADV_DONTNEED
        // on a private mapping only drops its private pages, which no Rust
        // reference points into.
        let r = unsafe { libc::madvise(self.ptr.as_ptr().add(off).cast(), len, libc::MADV_DONTNEED) };
        if r != 0 {
            return Err(Error::kvm("madvise(MADV_DONTNEED)", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Memory the program already mapped at `addr`.
    ///
    /// # Safety
    ///
    /// `[addr, addr + len)` must be readable and writable memory of this
    /// process that stays mapped for as long as the region (and any guest
    /// mapping of it) lives; the library never unmaps it.
    pub(crate) unsafe fn borrowed(addr: u64, len: usize) -> Result<HostRegion> {
        let ptr = NonNull::new(addr as *mut u8).ok_or(Error::InvalidRange {
            what: "host",
            start: addr,
            size: len as u64,
            why: "it is at address 0",
        })?;
        Ok(HostRegion { ptr, len, owned: false, backing: std::sync::Mutex::new((0, 0)) })
    }

    /// The snapshot memory this region maps privately, and from where.
    pub(crate) fn backing(&self) -> Option<(u64, u64)> {
        let b = *self.backing.lock().unwrap_or_else(|e| e.into_inner());
        (b.0 != 0).then_some(b)
    }

    /// Replaces the region's pages, in place, by a private mapping of
    /// `frozen` from `offset` that holds the same bytes (a snapshot just
    /// taken of it): later resets to that snapshot only drop the pages
    /// written since. Nothing may write the region meanwhile.
    pub(crate) fn rebase(&self, frozen: &super::FrozenMemory, offset: u64) -> Result<()> {
        if !self.owned {
            return Err(Error::Unsupported { what: "rebasing memory the program mapped itself" });
        }
        // SAFETY: replaces exactly our own mapping, at the same address and
        // size, with a private mapping of a file holding the same bytes;
        // no Rust reference points into it, and the caller guarantees no
        // writer runs meanwhile.
        let p = unsafe {
            libc::mmap(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                frozen.raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED || p.cast::<u8>() != self.ptr.as_ptr() {
            return Err(Error::kvm("mmap(MAP_FIXED, snapshot memory)", std::io::Error::last_os_error()));
        }
        *self.backing.lock().unwrap_or_else(|e| e.into_inner()) = (frozen.id(), offset);
        Ok(())
    }

    /// Whether the library mapped it (and may drop its pages).
    pub(crate) fn is_owned(&self) -> bool {
        self.owned
    }

    /// Host virtual address of the first byte.
    pub(crate) fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn check(&self, offset: u64, n: usize) -> usize {
        let end = offset.checked_add(n as u64);
        assert!(end.is_some_and(|e| e <= self.len as u64), "access outside the host region");
        offset as usize
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`.
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) {
        let off = self.check(offset, buf.len());
        // SAFETY: `off + buf.len() <= len` (checked), so the source lies in
        // the mapping, which lives as long as `self`; `buf` cannot overlap it
        // because no reference into the mapping is ever handed out.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), buf.as_mut_ptr(), buf.len()) }
    }

    /// The `N` bytes at `offset`, copied inline (`read` calls the C
    /// library's copy, a cost for the few bytes read at every exit).
    pub(crate) fn read_array<const N: usize>(&self, offset: u64) -> [u8; N] {
        let off = self.check(offset, N);
        // SAFETY: `off + N <= len` (checked), so the source lies in the
        // mapping, which lives as long as `self`; `[u8; N]` has alignment 1
        // and every bit pattern is valid for it.
        unsafe { self.ptr.as_ptr().add(off).cast::<[u8; N]>().read() }
    }

    /// Copies `buf` to `offset`.
    pub(crate) fn write(&self, offset: u64, buf: &[u8]) {
        let off = self.check(offset, buf.len());
        // SAFETY: as in `read`, with the roles of source and destination
        // swapped.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.ptr.as_ptr().add(off), buf.len()) }
    }
}

impl Drop for HostRegion {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // SAFETY: unmaps exactly the mapping created in `anonymous`, which
        // nothing references any more (KVM slots are removed before the last
        // reference to the region goes away).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl std::fmt::Debug for HostRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostRegion({:#x}+{:#x})", self.addr(), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write() {
        let r = HostRegion::anonymous(8192).unwrap();
        r.write(4090, &[1, 2, 3, 4, 5, 6]);
        let mut b = [0u8; 8];
        r.read(4088, &mut b);
        assert_eq!(b, [0, 0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn bounds() {
        let r = HostRegion::anonymous(4096).unwrap();
        r.write(4095, &[1, 2]);
    }
}
