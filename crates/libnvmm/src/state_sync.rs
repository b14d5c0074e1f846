//! Moving state components between the comm page (what the C program
//! sees) and the VCPU's state cache (what the `nvmm` crate commits and
//! fetches), with NVMM's caching rules.

use nvmm_core::{State, StateMask};

use crate::comm::CommPage;
use crate::errno::{CResult, check};
use crate::registry::VcpuCtx;

/// Copies the components of `mask` from `src` to `dst`.
pub(crate) fn copy_components(dst: &mut State, src: &State, mask: StateMask) {
    if mask.contains(StateMask::SEGS) {
        dst.segs = src.segs;
    }
    if mask.contains(StateMask::GPRS) {
        dst.gprs = src.gprs;
    }
    if mask.contains(StateMask::CRS) {
        dst.crs = src.crs;
    }
    if mask.contains(StateMask::DRS) {
        dst.drs = src.drs;
    }
    if mask.contains(StateMask::MSRS) {
        dst.msrs = src.msrs;
    }
    if mask.contains(StateMask::INTR) {
        dst.intr = src.intr;
    }
    if mask.contains(StateMask::FPU) {
        dst.fpu = src.fpu;
    }
}

/// Parses `NVMM_X64_STATE_*` bits (`EINVAL` for unknown ones).
pub(crate) fn mask_of(flags: u64) -> CResult<StateMask> {
    StateMask::from_bits(flags).ok_or(libc::EINVAL)
}

impl VcpuCtx {
    /// `nvmm_vcpu_setstate`: the program wrote the components into the
    /// comm page; they are cached and land at the next run.
    pub(crate) fn setstate(&mut self, mask: StateMask) -> CResult {
        // SAFETY: the program is inside a library call on this VCPU.
        let comm = unsafe { CommPage::state(self.comm) };
        copy_components(self.vcpu.state_mut(), comm, mask);
        check(self.vcpu.set_state(mask))?;
        self.mark_cached(mask);
        // SAFETY: as above; plain fields of the live page.
        unsafe { (*self.comm).state_commit |= mask.bits() };
        Ok(())
    }

    /// `nvmm_vcpu_getstate`: fetches the components not cached in the comm
    /// page. Cached ones are left as the program may have changed them.
    pub(crate) fn getstate(&mut self, mask: StateMask) -> CResult {
        // SAFETY: plain field of the live page.
        let cached = unsafe { (*self.comm).state_cached };
        let missing = StateMask::from_bits(mask.bits() & !cached).unwrap_or(StateMask::NONE);
        if missing == StateMask::NONE {
            return Ok(());
        }
        // SAFETY: as above.
        unsafe { (*self.comm).state_wanted = missing.bits() };
        check(self.vcpu.get_state(missing))?;
        // SAFETY: the program is inside a library call on this VCPU.
        let comm = unsafe { CommPage::state(self.comm) };
        copy_components(comm, self.vcpu.state(), missing);
        self.mark_cached(missing);
        // SAFETY: as above.
        unsafe { (*self.comm).state_wanted = 0 };
        Ok(())
    }

    /// Hands the components cached in the comm page to the VCPU's cache
    /// before an assist works on them (NVMM's assists start from the comm
    /// page, including changes the program made without `setstate`).
    pub(crate) fn push_cached(&mut self, mask: StateMask) {
        // SAFETY: plain field of the live page.
        let cached =
            StateMask::from_bits(unsafe { (*self.comm).state_cached } & mask.bits()).unwrap_or(StateMask::NONE);
        if cached == StateMask::NONE {
            return;
        }
        // SAFETY: the program is inside a library call on this VCPU.
        let comm = unsafe { CommPage::state(self.comm) };
        copy_components(self.vcpu.state_mut(), comm, cached);
    }

    /// After an assist changed components in the VCPU's cache: show them in
    /// the comm page, cached, as NVMM's assists leave them.
    pub(crate) fn pull(&mut self, mask: StateMask) -> CResult {
        check(self.vcpu.get_state(mask))?;
        // SAFETY: the program is inside a library call on this VCPU.
        let comm = unsafe { CommPage::state(self.comm) };
        copy_components(comm, self.vcpu.state(), mask);
        self.mark_cached(mask);
        Ok(())
    }

    /// Forgets the comm page's cache of `mask` (a run or a pending
    /// instruction completion changes them).
    pub(crate) fn uncache(&mut self, mask: StateMask) {
        // SAFETY: plain field of the live page.
        unsafe { (*self.comm).state_cached &= !mask.bits() };
    }

    fn mark_cached(&mut self, mask: StateMask) {
        // SAFETY: plain field of the live page.
        unsafe { (*self.comm).state_cached |= mask.bits() };
    }
}
