//! The machine's software breakpoints: an `INT3` byte written into guest
//! memory, keyed by guest physical address, so that every virtual mapping
//! of the page and every VCPU shares one breakpoint. The original byte is
//! kept to put back and to show a debugger.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::machine::Machine;

/// The `INT3` opcode.
pub const INT3: u8 = 0xcc;

/// The table of software breakpoints: guest physical address to the byte
/// the breakpoint replaced.
#[derive(Debug, Default)]
pub(crate) struct SwBreakpoints {
    table: Mutex<BTreeMap<u64, u8>>,
}

impl SwBreakpoints {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, u8>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a breakpoint sits at `gpa`.
    pub(crate) fn contains(&self, gpa: u64) -> bool {
        self.lock().contains_key(&gpa)
    }

    /// Whether there are any.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl Machine {
    /// Inserts a software breakpoint at guest physical address `gpa`:
    /// writes `INT3` there (whatever the mapping's protection) and keeps
    /// the byte it replaces. Inserting one that exists is a no-op. VCPUs
    /// with [`GuestDebug::software_breakpoints`](crate::GuestDebug::software_breakpoints)
    /// report it as [`DebugEvent::SoftwareBreakpoint`](crate::DebugEvent::SoftwareBreakpoint);
    /// others deliver the `#BP` to the guest. `ENOENT` when nothing is
    /// mapped at `gpa`.
    pub fn insert_sw_breakpoint(&self, gpa: u64) -> Result<()> {
        let shared = self.shared();
        let mut table = shared.breakpoints.lock();
        if table.contains_key(&gpa) {
            return Ok(());
        }
        let mut original = [0u8];
        self.read_gpa(gpa, &mut original)?;
        self.write_gpa(gpa, &[INT3])?;
        table.insert(gpa, original[0]);
        Ok(())
    }

    /// Removes the software breakpoint at `gpa`, putting the original byte
    /// back (unless something else overwrote the `INT3` meanwhile, which
    /// then stays). `ENOENT` when there is none.
    pub fn remove_sw_breakpoint(&self, gpa: u64) -> Result<()> {
        let shared = self.shared();
        let mut table = shared.breakpoints.lock();
        let Some(original) = table.remove(&gpa) else {
            return Err(Error::NoBreakpoint { gpa });
        };
        let mut now = [0u8];
        if self.read_gpa(gpa, &mut now).is_ok() && now[0] == INT3 {
            self.write_gpa(gpa, &[original])?;
        }
        Ok(())
    }

    /// Writes every breakpoint's INT3 again over memory that was replaced
    /// (a reset to a snapshot), keeping the bytes now there as the
    /// originals.
    pub(crate) fn reinsert_sw_breakpoints(&self) -> Result<()> {
        let shared = self.shared();
        let mut table = shared.breakpoints.lock();
        for (&gpa, original) in table.iter_mut() {
            let mut now = [0u8];
            self.read_gpa(gpa, &mut now)?;
            if now[0] != INT3 {
                *original = now[0];
                self.write_gpa(gpa, &[INT3])?;
            }
        }
        Ok(())
    }

    /// The software breakpoints: guest physical address and the byte each
    /// replaced, in address order.
    pub fn sw_breakpoints(&self) -> Vec<(u64, u8)> {
        self.shared().breakpoints.lock().iter().map(|(&a, &b)| (a, b)).collect()
    }

    /// Replaces, in `buf` read from guest physical address `gpa`, the
    /// breakpoints' `INT3` bytes with the bytes they replaced: memory as
    /// the guest's program has it, for a debugger.
    pub fn hide_sw_breakpoints(&self, gpa: u64, buf: &mut [u8]) {
        let table = self.shared().breakpoints.lock();
        let end = gpa.saturating_add(buf.len() as u64);
        for (&at, &original) in table.range(gpa..end) {
            let i = (at - gpa) as usize;
            if buf[i] == INT3 {
                buf[i] = original;
            }
        }
    }
}
