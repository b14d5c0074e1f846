//! Guest memory by virtual address, through the VCPU's page tables: what a
//! debugger's memory packets and a core file's virtual segments need.

use super::Vcpu;
use crate::assist::mmu::Mapping;
use crate::error::Result;
use crate::vmem::{GuestView, Transfer, WriteRights};
use crate::x86::state::StateMask;

impl Vcpu {
    /// The guest's view through its current page tables (fetches CRS and
    /// MSRS when not cached).
    fn view_state(&mut self) -> Result<crate::assist::mmu::PagingRegs> {
        self.get_state(StateMask::CRS | StateMask::MSRS)?;
        Ok(self.paging_of(self.comm.state()))
    }

    /// Reads guest memory at guest-virtual address `gva`, translated with
    /// the guest's current paging, at any alignment and length, as
    /// ptrace's `PT_IO` does: a short count stops at the first page that is
    /// not mapped or not guest RAM ([`Transfer::failed_at`]); when not even
    /// the first byte can be read, the call fails with `EFAULT`
    /// ([`Error::Translation`](crate::Error::Translation) naming `gva`).
    pub fn read_virtual(&mut self, gva: u64, buf: &mut [u8]) -> Result<Transfer> {
        let regs = self.view_state()?;
        let mem = self.machine.memory();
        nothing_is_an_error(GuestView::new(&mem, regs).read(gva, buf), buf.len())
    }

    /// Writes guest memory at `gva` as the guest could: every page must be
    /// writable in the page tables and mapped with `PROT_WRITE`; a short
    /// count stops at the first that is not (`EFAULT` when that is the
    /// first byte).
    pub fn write_virtual(&mut self, gva: u64, buf: &[u8]) -> Result<Transfer> {
        let regs = self.view_state()?;
        let mem = self.machine.memory();
        nothing_is_an_error(GuestView::new(&mem, regs).write(gva, buf, WriteRights::Guest), buf.len())
    }

    /// Writes guest memory at `gva` as a debugger does: write protection
    /// (read-only pages, read-only guest physical mappings such as
    /// firmware) is ignored; a short count stops at the first page that is
    /// not mapped or not guest RAM (`EFAULT` when that is the first byte).
    pub fn write_virtual_debug(&mut self, gva: u64, buf: &[u8]) -> Result<Transfer> {
        let regs = self.view_state()?;
        let mem = self.machine.memory();
        nothing_is_an_error(GuestView::new(&mem, regs).write(gva, buf, WriteRights::Debug), buf.len())
    }

    /// Every translation the guest's current page tables hold, in address
    /// order, as runs of pages contiguous in guest physical memory with the
    /// same rights (the identity map of the low 4 GiB without paging).
    pub fn virtual_mappings(&mut self) -> Result<Vec<Mapping>> {
        let regs = self.view_state()?;
        let mem = self.machine.memory();
        Ok(GuestView::new(&mem, regs).mappings())
    }
}

/// A transfer that could not move its first byte is an error (ptrace's
/// `PT_IO` rule); an empty one is not.
fn nothing_is_an_error(t: Transfer, len: usize) -> Result<Transfer> {
    match t {
        Transfer { done: 0, failed_at: Some(gva) } if len > 0 => Err(crate::error::Error::Translation { gva }),
        t => Ok(t),
    }
}
