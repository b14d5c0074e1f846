//! A second mapping of a VCPU's `kvm_run` page, owned by its handles, so
//! that any thread can set `immediate_exit` for as long as a handle lives,
//! even after the VCPU itself is gone: KVM's kick.

use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

use kvm_bindings::kvm_run;

use crate::backend::Kick;
use crate::error::{Error, Result};
use crate::os::kick_thread;

const PAGE: usize = 4096;

/// The alias mapping.
pub(crate) struct RunAlias {
    page: NonNull<u8>,
}

// SAFETY: the page is only accessed through the atomic `immediate_exit`
// byte, which is valid from any thread.
unsafe impl Send for RunAlias {}
// SAFETY: as above.
unsafe impl Sync for RunAlias {}

impl RunAlias {
    /// Maps the first page of the VCPU's `kvm_run` area.
    pub(crate) fn map(vcpu_fd: RawFd) -> Result<RunAlias> {
        // SAFETY: mapping a VCPU fd at offset 0 yields its kvm_run page; the
        // new mapping overlaps nothing the program owns.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, vcpu_fd, 0)
        };
        if p == libc::MAP_FAILED {
            return Err(Error::kvm("mmap(kvm_run)", std::io::Error::last_os_error()));
        }
        let page = NonNull::new(p.cast::<u8>()).ok_or(Error::NoMemory { what: "mapping kvm_run" })?;
        Ok(RunAlias { page })
    }

    fn immediate_exit(&self) -> &AtomicU8 {
        let off = std::mem::offset_of!(kvm_run, immediate_exit);
        // SAFETY: the offset is inside the mapped page; a u8 has no alignment
        // requirement; the byte is only ever accessed atomically by user
        // space (the kernel reads it with READ_ONCE at KVM_RUN entry).
        unsafe { AtomicU8::from_ptr(self.page.as_ptr().add(off)) }
    }
}

impl Kick for RunAlias {
    /// Sets `kvm_run.immediate_exit` (a run that has not entered the guest
    /// yet returns at once), then signals the thread inside `KVM_RUN`, if
    /// any (a run in the guest returns).
    fn kick(&self, thread: i32, signal: i32) {
        self.immediate_exit().store(1, Ordering::SeqCst);
        if thread != 0 {
            kick_thread(thread, signal);
        }
    }
}

impl Drop for RunAlias {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the page mapped in `map`; the only
        // reference into it (`immediate_exit`) cannot outlive `self`.
        unsafe { libc::munmap(self.page.as_ptr().cast(), PAGE) };
    }
}
