//! Guest memory by linear address, as one VCPU's code sees it: addresses
//! translated with the VCPU's paging registers (the MMU walker) over the
//! machine's guest physical memory, read and written at any alignment and
//! length, page by page, with the count done and the first failing address
//! when a page is missing. One home for what the assists, the I/O
//! instruction decoder, the MSR exits and the debugger need.

use crate::assist::mmu::{PagingRegs, Translation, WalkError, walk};
use crate::memory::{MemoryMap, PAGE_SIZE};

/// How far a transfer got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transfer {
    /// Bytes transferred (a prefix of the buffer).
    pub(crate) done: usize,
    /// The first linear address that could not be reached, when `done` is
    /// short of the buffer.
    pub(crate) failed_at: Option<u64>,
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

    /// Reads `buf.len()` bytes at `linear`, stopping at the first page that
    /// is not translated or not guest RAM.
    pub(crate) fn read(&self, linear: u64, buf: &mut [u8]) -> Transfer {
        self.transfer(linear, buf.len(), |gpa, range| self.map.read(gpa, &mut buf[range]).is_ok())
    }

    fn transfer(&self, linear: u64, len: usize, mut copy: impl FnMut(u64, std::ops::Range<usize>) -> bool) -> Transfer {
        let mut done = 0;
        while done < len {
            let at = linear.wrapping_add(done as u64);
            let n = ((PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize).min(len - done);
            let Ok(t) = self.translate(at) else { return Transfer { done, failed_at: Some(at) } };
            if !copy(t.gpa, done..done + n) {
                return Transfer { done, failed_at: Some(at) };
            }
            done += n;
        }
        Transfer { done, failed_at: None }
    }
}
