//! The partial state NVMM reports with every exit.

use super::{Vcpu, part, sync};
use crate::backend::kvm::convert;
use crate::error::Result;
use crate::exit::ExitState;
use crate::x86::state::{Gpr, Intr};

impl Vcpu {
    /// RFLAGS, CR8, the interrupt shadow, the armed window exits and
    /// whether an event is pending, as of the last exit
    /// (`exit->exitstate`). Free once KVM copies the registers and events
    /// out at every exit, which it does for a VCPU whose exits are read
    /// this way.
    pub fn exit_state(&mut self) -> Result<ExitState> {
        self.used |= sync::REGS | sync::EVENTS;
        self.fetch(part::GPRS & !self.have)?;
        let events = self.current_events()?;
        let mut intr = Intr::default();
        convert::intr_from_kvm(&events, &mut intr);
        Ok(ExitState {
            rflags: self.state.gprs[Gpr::Rflags],
            cr8: self.kvm.cr8(),
            int_shadow: intr.int_shadow(),
            int_window_exiting: self.state.intr.int_window_exiting(),
            nmi_window_exiting: self.state.intr.nmi_window_exiting(),
            evt_pending: intr.evt_pending(),
        })
    }
}
