//! `KVM_SET_GUEST_DEBUG`: the debugger's settings as KVM takes them.

use kvm_bindings::{
    KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP, kvm_guest_debug,
};

use super::KvmVcpu;
use crate::debug::GuestDebug;
use crate::error::{Error, Result};

impl KvmVcpu {
    /// Applies `debug`; returns whether single steps block interrupts
    /// (`KVM_GUESTDBG_BLOCKIRQ`, which older kernels refuse: then the
    /// settings go without it, and it is not asked for again).
    pub(super) fn apply_guest_debug(&mut self, debug: &GuestDebug) -> Result<bool> {
        let mut arg = kvm_guest_debug::default();
        if !debug.is_off() {
            arg.control = KVM_GUESTDBG_ENABLE;
            if debug.single_step {
                arg.control |= KVM_GUESTDBG_SINGLESTEP;
                if !self.no_blockirq {
                    arg.control |= KVM_GUESTDBG_BLOCKIRQ;
                }
            }
            if debug.software_breakpoints {
                arg.control |= KVM_GUESTDBG_USE_SW_BP;
            }
            if debug.hardware.iter().any(Option::is_some) {
                arg.control |= KVM_GUESTDBG_USE_HW_BP;
                for (slot, bp) in arg.arch.debugreg.iter_mut().zip(&debug.hardware) {
                    *slot = bp.map_or(0, |b| b.addr());
                }
                arg.arch.debugreg[7] = debug.dr7();
            }
        }
        self.ioctls += 1;
        match self.fd.set_guest_debug(&arg) {
            Ok(()) => Ok(arg.control & KVM_GUESTDBG_BLOCKIRQ != 0),
            Err(e) if e.errno() == libc::EINVAL && arg.control & KVM_GUESTDBG_BLOCKIRQ != 0 => {
                self.no_blockirq = true;
                self.apply_guest_debug(debug)
            }
            Err(e) => Err(Error::kvm_errno("KVM_SET_GUEST_DEBUG", e)),
        }
    }
}
