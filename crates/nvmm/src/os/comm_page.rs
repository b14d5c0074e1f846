//! The memory the library shares with C programs: a VCPU's comm page
//! ([`CommPage`]), owned by the VCPU and reached by C code through raw
//! pointers (`vcpu->state`, `vcpu->event`, `vcpu->stop`, `vcpu->exit`).
//!
//! The rule that keeps this sound: the library never forms a reference to
//! the whole page, only to its `state` and `exit` fields, and only for as
//! long as a call into the library lasts; C code writes those fields only
//! between calls, or from a callback the library makes while holding no
//! such reference (the callbacks receive the VCPU itself, so the borrow
//! checker enforces it). `event_commit`, `event` and `stop` may be written
//! by any thread at any time: they are accessed atomically or copied.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use crate::netbsd::{COMM_MAGIC, CommPage, NbEvent, NbExit};
use crate::vcpu::VcpuHandle;
use crate::x86::state::State;

/// A heap-allocated comm page, freed on drop.
pub(crate) struct CommBox {
    page: NonNull<CommPage>,
}

// SAFETY: the page is plain memory owned by this value; its shared fields
// are atomics, and the others are only touched by whoever holds the owning
// VCPU (`&mut`), on one thread at a time.
unsafe impl Send for CommBox {}

impl CommBox {
    /// A page holding `state`.
    pub(crate) fn new(state: State, handle: VcpuHandle) -> CommBox {
        let page = Box::new(CommPage {
            state_wanted: 0,
            state_cached: 0,
            state_commit: 0,
            state,
            event_commit: AtomicBool::new(false),
            event: NbEvent::default(),
            stop: AtomicI32::new(0),
            magic: AtomicU64::new(COMM_MAGIC),
            exit: NbExit::default(),
            handle,
        });
        CommBox { page: NonNull::from(Box::leak(page)) }
    }

    /// The page, for C code.
    pub(crate) fn as_ptr(&self) -> *mut CommPage {
        self.page.as_ptr()
    }

    fn raw(&self) -> *mut CommPage {
        self.page.as_ptr()
    }

    /// The state buffer.
    pub(crate) fn state(&self) -> &State {
        // SAFETY: the page lives as long as `self`; only the `state` field is
        // borrowed, for as long as `self` is (see the module rule).
        unsafe { &(*self.raw()).state }
    }

    /// The state buffer, mutably.
    pub(crate) fn state_mut(&mut self) -> &mut State {
        // SAFETY: as in `state`; `&mut self` makes the borrow unique on the
        // Rust side, and C code does not write while it lives.
        unsafe { &mut (*self.raw()).state }
    }

    /// Records the NVMM components current in `state` and those to commit,
    /// where C programs can see them.
    pub(crate) fn set_bits(&mut self, cached: u64, commit: u64) {
        // SAFETY: plain fields of the live page, written only by the owner.
        unsafe {
            (*self.raw()).state_cached = cached;
            (*self.raw()).state_commit = commit;
        }
    }
}

impl Drop for CommBox {
    fn drop(&mut self) {
        // SAFETY: the page came from `Box::leak` in `new` and is not used
        // after this; the magic is cleared first so that a late
        // `nvmm_vcpu_stop` through a stale pointer more likely sees a dead
        // page.
        unsafe {
            (*self.raw()).magic.store(0, Ordering::SeqCst);
            drop(Box::from_raw(self.raw()));
        }
    }
}

/// Stops the VCPU whose comm page `stop` points into (`nvmm_vcpu_stop`):
/// sets the flag and kicks the VCPU. Returns `false`, doing nothing, when
/// the page does not look alive (its magic is gone). Async-signal-safe:
/// atomics and at most one `tgkill`.
///
/// # Safety
///
/// `stop` is null or points into memory that can be read 8 bytes past the
/// end of a comm page's `stop` field (what `vcpu->stop` of a VCPU created by
/// the C library is), and the page is not freed during the call.
pub unsafe fn stop_by_flag(stop: *mut i32) -> bool {
    if stop.is_null() {
        return false;
    }
    let page = stop.cast::<u8>().wrapping_sub(std::mem::offset_of!(CommPage, stop)).cast::<CommPage>();
    // SAFETY: by the caller's contract the magic field is readable; it is
    // only ever accessed atomically.
    if unsafe { (*page).magic.load(Ordering::SeqCst) } != COMM_MAGIC {
        return false;
    }
    // SAFETY: a live page; `stop` is atomic and `handle` is never written
    // after the page is built (only its atomics change).
    unsafe {
        (*page).stop.store(1, Ordering::SeqCst);
        (*page).handle.stop();
    }
    true
}
