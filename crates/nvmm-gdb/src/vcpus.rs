//! The VCPUs under the debugger: one thread each, running on command and
//! reporting one event per run; the stub's thread reads and writes a
//! VCPU only while its thread is idle.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Mutex, MutexGuard};

use nvmm::{DebugExit, Exit, Vcpu, VcpuHandle};

use crate::{Next, VcpuExits};

/// Why a VCPU's run ended.
#[derive(Debug)]
pub(crate) enum VcpuEvent {
    /// The debugger's breakpoint, watchpoint or step.
    Debug(DebugExit),
    /// Stopped on request.
    Stopped,
    /// The VMM's exit handler asked to stop.
    Handler(Next),
    /// The run failed.
    Failed(nvmm::Error),
    /// The VMM's exit handler panicked.
    Panicked,
}

/// A message to the stub's thread.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A byte from the debugger.
    Byte(u8),
    /// The debugger closed the connection (or reading it failed).
    Closed,
    /// VCPU `index` ended a run.
    Vcpu(usize, VcpuEvent),
}

/// A command to a VCPU's thread.
pub(crate) enum Cmd {
    /// Run until an event.
    Run,
    /// End the thread.
    Quit,
}

/// One VCPU as the stub holds it.
pub(crate) struct Slot {
    pub(crate) vcpu: Mutex<Vcpu>,
    pub(crate) handle: VcpuHandle,
}

impl Slot {
    pub(crate) fn new(vcpu: Vcpu) -> Slot {
        let handle = vcpu.handle();
        Slot { vcpu: Mutex::new(vcpu), handle }
    }

    /// The VCPU, for the stub's thread (its own thread is idle then).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Vcpu> {
        self.vcpu.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The body of VCPU `index`'s thread.
pub(crate) fn vcpu_thread(index: usize, slot: &Slot, exits: &dyn VcpuExits, cmds: Receiver<Cmd>, events: Sender<Msg>) {
    while let Ok(Cmd::Run) = cmds.recv() {
        // A panicking handler ends this VCPU's runs, not the session's
        // wait for it.
        let event =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_until_event(index, &mut slot.lock(), exits)))
                .unwrap_or(VcpuEvent::Panicked);
        if events.send(Msg::Vcpu(index, event)).is_err() {
            return;
        }
    }
}

fn run_until_event(index: usize, vcpu: &mut Vcpu, exits: &dyn VcpuExits) -> VcpuEvent {
    loop {
        match vcpu.run() {
            Ok(Exit::Debug(d)) => return VcpuEvent::Debug(d),
            Ok(Exit::Stopped) => return VcpuEvent::Stopped,
            Ok(Exit::None) => {}
            Ok(_) => match exits.handle(index, vcpu) {
                Ok(Next::Run) => {}
                Ok(next) => return VcpuEvent::Handler(next),
                Err(e) => return VcpuEvent::Failed(e),
            },
            Err(e) => return VcpuEvent::Failed(e),
        }
    }
}
