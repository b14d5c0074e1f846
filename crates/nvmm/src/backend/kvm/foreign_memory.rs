//! Guest memory the program mapped itself (the C library's
//! `nvmm_hva_map`, where the caller chooses the address).

use super::host_memory::HostRegion;
use crate::error::{Error, Result};
use crate::machine::Machine;

impl Machine {
    /// Registers `[hva, hva + size)`, memory the program mapped itself, as
    /// a host mapping of the machine (`nvmm_hva_map` with a caller-chosen
    /// address). Its content is left as it is. A range inside an existing
    /// host mapping is accepted and adds nothing (NVMM accepts it too); a
    /// partial overlap is `EEXIST`.
    ///
    /// # Safety
    ///
    /// The range must be readable and writable memory of this process that
    /// stays mapped until the machine is destroyed or the range is unmapped
    /// from it with [`Machine::hva_unmap`] and from the guest with
    /// [`Machine::gpa_unmap`]: the library and the guest access it.
    pub unsafe fn hva_map_borrowed(&self, hva: u64, size: u64) -> Result<()> {
        let len = usize::try_from(size).map_err(|_| Error::NoMemory { what: "mapping guest memory" })?;
        // SAFETY: the caller vouches for the range (this function's contract).
        let region = unsafe { HostRegion::borrowed(hva, len)? };
        self.add_host_region(region)
    }
}
