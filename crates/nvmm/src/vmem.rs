//! Guest memory by linear address, as one VCPU's code sees it: addresses
//! translated with the VCPU's paging registers (the MMU walker) over the
//! machine's guest physical memory, read and written at any alignment and
//! length, page by page, with the count done and the first failing address
//! when a page is missing. One home for what the assists, the I/O
//! instruction decoder, the MSR exits and the debugger need.

use crate::assist::mmu::{
    Access, Mapping, PageProt, PagingRegs, Translation, WalkError, mappings, translate_range, walk,
};
use crate::memory::{MemoryMap, PAGE_SIZE};

/// How far a guest-virtual read or write got: a short count stops at the
/// first page that is not translated, not guest RAM, or (for a guest
/// write) not writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes transferred (a prefix of the buffer).
    pub done: usize,
    /// The first linear address that could not be reached, when `done` is
    /// short of the buffer.
    pub failed_at: Option<u64>,
}

/// Whose rights a guest-virtual write honours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteRights {
    /// The guest's: the page must be writable in the page tables and the
    /// guest physical mapping must have `PROT_WRITE`.
    Guest,
    /// A debugger's: write protection is ignored (breakpoints in code and
    /// in read-only mappings such as firmware).
    Debug,
}

/// A VCPU's view of guest memory.
pub(crate) struct GuestView<'a> {
    map: &'a MemoryMap,
    regs: PagingRegs,
}

impl<'a> GuestView<'a> {
    pub(crate) fn new(map: &'a MemoryMap, regs: PagingRegs) -> GuestView<'a> {
        GuestView { map, regs }
    }

    /// Translates a linear address (the guest physical address and the
    /// rights of its page).
    pub(crate) fn translate(&self, linear: u64) -> Result<Translation, WalkError> {
        walk(self.map, &self.regs, linear)
    }

    /// Up to 15 bytes before `linear` and 15 from it (what decoding the
    /// instruction at, or ending at, an address needs).
    pub(crate) fn around(&self, linear: u64) -> Window {
        Window::around(self, linear)
    }

    /// Reads `buf.len()` bytes at `linear`, stopping at the first page that
    /// is not translated or not guest RAM.
    pub(crate) fn read(&self, linear: u64, buf: &mut [u8]) -> Transfer {
        self.transfer(linear, buf.len(), 0, |gpa, range| self.map.read(gpa, &mut buf[range]).is_ok())
    }

    /// Writes `buf` at `linear`, stopping at the first page that is not
    /// translated, not guest RAM, or not writable by `rights`.
    pub(crate) fn write(&self, linear: u64, buf: &[u8], rights: WriteRights) -> Transfer {
        let guest = rights == WriteRights::Guest;
        let need = if guest { PageProt::WRITE } else { 0 };
        self.transfer(linear, buf.len(), need, |gpa, range| {
            (!guest || self.map.writable(gpa, range.len())) && self.map.write(gpa, &buf[range]).is_ok()
        })
    }

    /// The guest physical pieces of `[linear, linear + len)` for `access`,
    /// checked as the CPU checks it (the emulator's operands).
    pub(crate) fn pieces(&self, linear: u64, len: usize, access: Access) -> Result<Vec<(u64, usize)>, WalkError> {
        translate_range(self.map, &self.regs, linear, len, access)
    }

    /// Every translation of the page tables, as runs.
    pub(crate) fn mappings(&self) -> Vec<Mapping> {
        mappings(self.map, &self.regs)
    }

    /// Copies page by page, as one copy while the pages are contiguous in
    /// guest physical memory; pages must grant the `need` rights.
    fn transfer(
        &self,
        linear: u64,
        len: usize,
        need: u8,
        mut copy: impl FnMut(u64, std::ops::Range<usize>) -> bool,
    ) -> Transfer {
        let mut done = 0;
        let mut failed_at = None;
        // A run of contiguous guest physical pages not copied yet.
        let mut run: Option<(u64, usize, usize)> = None;
        while done < len {
            let at = linear.wrapping_add(done as u64);
            let n = ((PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize).min(len - done);
            let Ok(t) = self.translate(at).map_err(|_| ()).and_then(|t| if t.prot.has(need) { Ok(t) } else { Err(()) })
            else {
                failed_at = Some(at);
                break;
            };
            match run.as_mut() {
                Some((gpa, from, to)) if *gpa + (*to - *from) as u64 == t.gpa => *to += n,
                _ => {
                    if let Some((gpa, from, to)) = run.take()
                        && !copy(gpa, from..to)
                    {
                        return self.transfer_pages(linear, from, to, &mut copy);
                    }
                    run = Some((t.gpa, done, done + n));
                }
            }
            done += n;
        }
        if let Some((gpa, from, to)) = run
            && !copy(gpa, from..to)
        {
            return self.transfer_pages(linear, from, to, &mut copy);
        }
        Transfer { done, failed_at }
    }

    /// Page-by-page copy of `start..end`, after a copy of several pages at
    /// once failed: how far it gets.
    fn transfer_pages(
        &self,
        linear: u64,
        start: usize,
        len: usize,
        copy: &mut impl FnMut(u64, std::ops::Range<usize>) -> bool,
    ) -> Transfer {
        let mut done = start;
        while done < len {
            let at = linear.wrapping_add(done as u64);
            let n = ((PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize).min(len - done);
            let ok = self.translate(at).is_ok_and(|t| copy(t.gpa, done..done + n));
            if !ok {
                return Transfer { done, failed_at: Some(at) };
            }
            done += n;
        }
        // The whole run copied page by page: the failure was elsewhere.
        Transfer { done, failed_at: Some(linear.wrapping_add(done as u64)) }
    }
}

/// Up to 15 guest bytes before a linear address and up to 15 from it,
/// read at once.
pub(crate) struct Window {
    bytes: [u8; 30],
    /// Bytes before the address (fewer near address 0 or when the page
    /// before cannot be read).
    back: usize,
    /// Bytes from the address.
    ahead: usize,
}

impl Window {
    fn around(view: &GuestView<'_>, linear: u64) -> Window {
        let mut w = Window { bytes: [0; 30], back: linear.min(15) as usize, ahead: 0 };
        let start = linear - w.back as u64;
        let t = view.read(start, &mut w.bytes[..w.back + 15]);
        if t.done >= w.back {
            w.ahead = t.done - w.back;
            return w;
        }
        // The page before cannot be read: only what lies in RIP's page
        // before it.
        let in_page = (linear & 0xfff).min(15) as usize;
        w.back = in_page;
        let t = view.read(linear - in_page as u64, &mut w.bytes[..in_page + 15]);
        if t.done < in_page {
            w.back = 0;
            w.ahead = view.read(linear, &mut w.bytes[..15]).done;
        } else {
            w.ahead = t.done - in_page;
        }
        w
    }

    pub(crate) fn before(&self) -> &[u8] {
        &self.bytes[..self.back]
    }

    pub(crate) fn after(&self) -> &[u8] {
        &self.bytes[self.back..self.back + self.ahead]
    }
}
