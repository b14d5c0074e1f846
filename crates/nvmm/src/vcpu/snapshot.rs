//! Capturing and restoring one VCPU ([`crate::snapshot`]).

use super::Vcpu;
use crate::backend::{Parts, VcpuBackend};
use crate::error::Result;
use crate::exit::record::ExitRecord;
use crate::snapshot::{ModelState, VcpuSnapshot};

impl Vcpu {
    /// Captures the VCPU's complete state (see [`VcpuSnapshot`]). The
    /// state set since the last run, the injected event and any instruction
    /// the last I/O or memory exit left half done are committed first
    /// ([`Vcpu::complete_pending`]), so the snapshot is the VCPU as its next
    /// run would start.
    pub fn snapshot(&mut self) -> Result<VcpuSnapshot> {
        self.complete_pending()?;
        let kernel = self.backend.capture()?;
        let model = ModelState {
            int_window: self.windows.int,
            nmi_window: self.windows.nmi,
            tpr_exit: self.conf.tpr_exit,
            last_tpr: self.last_tpr,
        };
        Ok(VcpuSnapshot { id: self.id, kernel, model })
    }

    /// Restores a snapshot taken from this VCPU or another (of this
    /// machine or any other), in the order the kernel requires. What the
    /// program had set or injected and not yet run is dropped, and the last
    /// exit is forgotten: the next run starts from the snapshot.
    pub fn restore(&mut self, snapshot: &VcpuSnapshot) -> Result<()> {
        self.refuse_in_assist("restoring a snapshot")?;
        self.backend.restore(&snapshot.kernel)?;
        let m = snapshot.model;
        self.cache.have = Parts::NONE;
        self.cache.dirty = Parts::NONE;
        self.cache.xsave_current = false;
        self.cache.reset_events = false;
        self.last = ExitRecord::None;
        self.queued = None;
        self.inflight = None;
        self.event = None;
        self.internal_events.clear();
        self.forget_raw();
        self.payload_used.set(false);
        self.windows = super::Windows { int: m.int_window, nmi: m.nmi_window };
        self.conf.tpr_exit = m.tpr_exit;
        self.last_tpr = m.last_tpr;
        // The snapshot's CPUID is the VCPU's now: not rebuilt at the next run.
        self.conf.has_run = true;
        // Nobody stays waiting on a stop request of the old timeline.
        self.shared.take();
        let _ = self.shared.take_injected();
        self.publish_comm_bits();
        Ok(())
    }
}
