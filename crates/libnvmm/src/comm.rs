//! The per-VCPU comm page: the memory `vcpu->state`, `vcpu->event`,
//! `vcpu->exit` and `vcpu->stop` point into.
//!
//! Its head is NetBSD's `struct nvmm_comm_page` (1072 bytes); the library
//! keeps its own fields after it. The C program reads and writes the page
//! directly between calls, and another thread may set `stop` at any time,
//! so the library never forms a reference to the whole page: it reaches the
//! fields through the raw pointer, and `stop` only atomically.

use std::ffi::c_int;
use std::mem::offset_of;
use std::ptr::addr_of_mut;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use nvmm_core::{State, StopHandle};

use crate::abi::{Event, Exit};

/// Marks a live comm page (checked by `nvmm_vcpu_stop`, which has nothing
/// else to go by).
const MAGIC: u64 = 0x6e76_6d6d_636f_6d6d; // "nvmmcomm"

/// A VCPU's comm page.
#[repr(C)]
pub(crate) struct CommPage {
    /// Components the caller wants fetched (informational, as on NetBSD).
    pub(crate) state_wanted: u64,
    /// Components valid in `state` (reset by every run).
    pub(crate) state_cached: u64,
    /// Components set since the last run.
    pub(crate) state_commit: u64,
    pub(crate) state: State,
    /// `nvmm_vcpu_inject` was called: `event` goes in at the next run.
    pub(crate) event_commit: bool,
    pub(crate) event: Event,
    /// `volatile int stop`.
    pub(crate) stop: AtomicI32,
    // --- beyond NetBSD's layout --------------------------------------------
    magic: AtomicU64,
    /// The buffer `vcpu->exit` points to.
    pub(crate) exit: Exit,
    /// Kicks the VCPU thread out of the guest.
    stop_handle: StopHandle,
}

// NetBSD's layout for the head (checked against the header by the C tests).
const _: () = {
    assert!(offset_of!(CommPage, state) == 32);
    assert!(offset_of!(CommPage, event_commit) == 1040);
    assert!(offset_of!(CommPage, event) == 1048);
    assert!(offset_of!(CommPage, stop) == 1064);
    assert!(offset_of!(CommPage, magic) == 1072);
};

impl CommPage {
    /// Allocates a comm page; free it with [`CommPage::free`].
    pub(crate) fn alloc(state: &State, stop_handle: StopHandle) -> *mut CommPage {
        Box::into_raw(Box::new(CommPage {
            state_wanted: 0,
            state_cached: 0,
            state_commit: 0,
            state: *state,
            event_commit: false,
            event: Event::default(),
            stop: AtomicI32::new(0),
            magic: AtomicU64::new(MAGIC),
            exit: Exit::default(),
            stop_handle,
        }))
    }

    /// Frees a page from [`CommPage::alloc`].
    ///
    /// # Safety
    ///
    /// `page` comes from `alloc` and is not used afterwards.
    pub(crate) unsafe fn free(page: *mut CommPage) {
        // SAFETY: the caller hands over the page from `alloc`; the magic is
        // cleared first so that a late `nvmm_vcpu_stop` through a stale
        // pointer more likely sees a dead page.
        unsafe {
            (*page).magic.store(0, Ordering::SeqCst);
            drop(Box::from_raw(page));
        }
    }

    /// The comm page `stop` belongs to, if it looks alive.
    ///
    /// # Safety
    ///
    /// `stop` is null or points into memory that can be read 8 bytes past
    /// the end of a comm page's `stop` field (what `vcpu->stop` of a VCPU
    /// created by this library is).
    pub(crate) unsafe fn from_stop(stop: *mut c_int) -> Option<*const CommPage> {
        if stop.is_null() {
            return None;
        }
        let page = stop.cast::<u8>().wrapping_sub(offset_of!(CommPage, stop)).cast::<CommPage>();
        // SAFETY: by the caller's contract the magic field is readable; it
        // is only ever accessed atomically.
        let alive = unsafe { (*page).magic.load(Ordering::SeqCst) == MAGIC };
        alive.then_some(page.cast_const())
    }

    /// Requests a stop: sets `stop` and kicks the VCPU thread.
    /// Async-signal-safe (atomics and `tgkill`).
    ///
    /// # Safety
    ///
    /// `page` is a live comm page.
    pub(crate) unsafe fn request_stop(page: *const CommPage) {
        // SAFETY: live page (caller); `stop` is atomic and the stop handle
        // is only read (its operations are atomic stores and a signal).
        unsafe {
            (*page).stop.store(1, Ordering::SeqCst);
            (*page).stop_handle.stop();
        }
    }

    /// Passes a stop the program requested by setting `stop` itself on to
    /// the VCPU (`nvmm_vcpu_stop` does both).
    ///
    /// # Safety
    ///
    /// `page` is a live comm page.
    pub(crate) unsafe fn forward_stop(page: *mut CommPage) {
        // SAFETY: live page; atomic access and a shared read of the handle.
        unsafe {
            if (*page).stop.load(Ordering::SeqCst) != 0 {
                (*page).stop_handle.stop();
            }
        }
    }

    /// Clears `stop` once the VCPU reported the stop, as NVMM's kernel does.
    ///
    /// # Safety
    ///
    /// `page` is a live comm page.
    pub(crate) unsafe fn clear_stop(page: *mut CommPage) {
        // SAFETY: live page; atomic access.
        unsafe { (*page).stop.store(0, Ordering::SeqCst) };
    }

    /// The state buffer.
    ///
    /// # Safety
    ///
    /// `page` is live and the C program is not using the state (it is
    /// inside a library call on this VCPU's thread).
    pub(crate) unsafe fn state<'a>(page: *mut CommPage) -> &'a mut State {
        // SAFETY: as the caller promises; only the `state` field is
        // borrowed, never `stop`, which other threads may touch.
        unsafe { &mut *addr_of_mut!((*page).state) }
    }
}
