//! Interrupt-window exits where the kernel does not give them at the
//! instruction boundary.
//!
//! NVMM's `NVMM_VCPU_EXIT_INT_READY` comes as soon as the guest can take
//! an interrupt: VMX's and SVM's interrupt-window exiting stop the guest at
//! the boundary where IF becomes set with no interrupt shadow. Some hosts'
//! KVM, emulating guest kernel code instruction by instruction, only checks
//! the window when something else makes the guest exit (probed once per
//! process, see the KVM backend's `window_probe`). A window the guest opens
//! for a few instructions, as firmware does when it waits for an interrupt
//! from code that otherwise runs with interrupts off (SeaBIOS's `sti; nop;
//! rep nop; cli`), is then never reported, and the VMM never delivers the
//! interrupt it holds.
//!
//! There, while the program keeps the window armed and the guest has
//! interrupts off (or is in an interrupt shadow), the VCPU runs one step at
//! a time, with steps the program never sees, and the window exit is
//! reported before the first instruction that finds it open, as NetBSD
//! reports it. The guest runs slower meanwhile (one exit per instruction);
//! nothing changes while no window is armed, or on hosts whose KVM exits
//! at the boundary. A HLT is not stepped (see the debugging module): a HLT
//! with interrupts on ends the window with the HLT exit, as before.
//!
//! While the library steps, a guest's own RFLAGS.TF trap is lost (as for
//! the debugging module's own steps). No steps are taken while an event
//! waits for delivery: it goes in first, and the window is looked at again
//! after it.

use super::Vcpu;

/// The most steps one run takes looking for the window. A guest that keeps
/// interrupts off longer (clearing memory a byte at a time, say) runs on
/// unstepped, at the speed of the kernel's emulator, until its next exit;
/// the window is then looked for again with as many steps. Enough for
/// SeaBIOS's wait loop, whose window follows its timer-port read within a
/// few dozen instructions, mode switches included.
pub(super) const WINDOW_STEPS: u16 = 256;
use crate::backend::VcpuBackend;
use crate::error::Result;

impl Vcpu {
    /// Whether the next run single-steps to find the armed interrupt
    /// window: armed, closed (else the run reports it without entering),
    /// nothing to deliver first, and a kernel that would miss it.
    pub(super) fn window_needs_steps(&mut self) -> Result<bool> {
        if self.debug.window_steps_left == 0
            || !self.pending_windows().int
            || self.event_waiting()
            || self.backend.window_exits_are_exact()
            || self.backend.event_status()?.pending
        {
            return Ok(false);
        }
        self.debug.window_steps_left -= 1;
        Ok(true)
    }

    /// Whether the run loop must ready debug settings for a run with the
    /// window armed as `armed` says (cheap: the probe's answer is kept).
    pub(super) fn window_may_need_steps(&self, armed: bool) -> bool {
        armed && !self.backend.window_exits_are_exact()
    }
}
