//! Forks made ahead of time: a thread keeps a few machines forked from
//! one snapshot ready, so that taking one costs a channel receive, not a
//! VM creation (whose memory slot KVM builds in time proportional to the
//! guest's size on some hosts).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::MachineSnapshot;
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::system::Nvmm;
use crate::vcpu::Vcpu;

/// A ready fork: the machine and its VCPUs.
pub type Fork = (Machine, Vec<Vcpu>);

/// Machines forked from one snapshot ahead of time
/// ([`Nvmm::fork_pool`]). Dropping the pool stops its thread and destroys
/// the forks nobody took.
#[derive(Debug)]
pub struct ForkPool {
    ready: Option<Receiver<Result<Fork>>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl ForkPool {
    /// A fork of the snapshot: one made ahead of time when there is one,
    /// else the next the thread finishes. The thread's error, if forking
    /// failed (no more KVM VMs, say), comes back here.
    pub fn take(&self) -> Result<Fork> {
        let rx = self.ready.as_ref().ok_or(Error::Unsupported { what: "a fork pool that was shut down" })?;
        rx.recv().map_err(|_| Error::Unsupported { what: "a fork pool whose thread is gone" })?
    }

    /// A fork made ahead of time, if one is ready now.
    pub fn try_take(&self) -> Option<Result<Fork>> {
        self.ready.as_ref()?.try_recv().ok()
    }
}

impl Drop for ForkPool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Closing the receiver wakes a thread blocked on a full queue.
        drop(self.ready.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn refill(nvmm: Nvmm, snapshot: MachineSnapshot, tx: SyncSender<Result<Fork>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let fork = nvmm.fork(&snapshot);
        let failed = fork.is_err();
        if tx.send(fork).is_err() || failed {
            return;
        }
    }
}

impl Nvmm {
    /// A pool that keeps `depth` (at least 1) machines forked from
    /// `snapshot` ready, made by a thread of its own.
    pub fn fork_pool(&self, snapshot: &MachineSnapshot, depth: usize) -> Result<ForkPool> {
        let (tx, rx) = sync_channel(depth.max(1) - 1);
        let stop = Arc::new(AtomicBool::new(false));
        let (nvmm, snap, flag) = (self.clone(), snapshot.clone(), stop.clone());
        let worker = std::thread::Builder::new()
            .name("nvmm-fork-pool".into())
            .spawn(move || refill(nvmm, snap, tx, flag))
            .map_err(|_| Error::NoMemory { what: "starting the fork pool's thread" })?;
        Ok(ForkPool { ready: Some(rx), stop, worker: Some(worker) })
    }
}
