//! KVM VMs made ahead of time ([`Nvmm::keep_vms_ready`]): a thread of the
//! library's own keeps a few empty VMs, configured as every NVMM machine
//! is (MSR exits, NVMM's MSR filter, emulation-failure exits, quirks off),
//! so that [`Nvmm::create_machine`] and [`Nvmm::fork`] take one instead of
//! waiting for `KVM_CREATE_VM` and the configuration (whose MSR filter
//! waits for an SRCU grace period): about 0.4 ms of a fork on these
//! machines.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::backend::kvm::KvmVm;
use crate::error::{Error, Result};
use crate::system::{Nvmm, System};

/// The process's VM maker, while one runs.
#[derive(Default)]
pub(crate) struct ReadyVms(Mutex<Option<Maker>>);

struct Maker {
    shelf: Arc<Shelf>,
    worker: JoinHandle<()>,
}

/// The ready VMs, and what the thread waits on.
struct Shelf {
    state: Mutex<ShelfState>,
    /// Signalled when a VM is taken or the thread must stop.
    changed: Condvar,
}

struct ShelfState {
    vms: VecDeque<KvmVm>,
    depth: usize,
    stop: bool,
}

impl Shelf {
    fn lock(&self) -> MutexGuard<'_, ShelfState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Maker {
    /// Stops the thread and closes the VMs it made.
    fn stop(self) {
        self.shelf.lock().stop = true;
        self.shelf.changed.notify_all();
        let _ = self.worker.join();
        self.shelf.lock().vms.clear();
    }
}

impl ReadyVms {
    fn maker(&self) -> MutexGuard<'_, Option<Maker>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A VM made ahead of time, if one is ready now.
    pub(crate) fn take(&self) -> Option<KvmVm> {
        let maker = self.maker();
        let shelf = &maker.as_ref()?.shelf;
        let vm = shelf.lock().vms.pop_front();
        if vm.is_some() {
            shelf.changed.notify_all();
        }
        vm
    }
}

/// The thread: tops the shelf up to its depth, one VM at a time.
fn make(sys: Arc<System>, shelf: Arc<Shelf>) {
    loop {
        {
            let mut s = shelf.lock();
            while !s.stop && s.vms.len() >= s.depth {
                s = shelf.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if s.stop {
                return;
            }
        }
        // A failure (no more descriptors, say) ends the thread: machines
        // are then created on the spot, where the error reaches the caller.
        let Ok(vm) = sys.kvm.create_vm() else { return };
        shelf.lock().vms.push_back(vm);
    }
}

impl Nvmm {
    /// Keeps `depth` empty KVM VMs ready, made by a thread of the
    /// library's own, for [`Nvmm::create_machine`] and [`Nvmm::fork`] to
    /// take: the VM creation and its configuration leave the caller's path
    /// (a fork then costs its memory slots, VCPUs and their state). A
    /// machine made from a ready VM is the same as one made on the spot;
    /// when none is ready, one is made on the spot. The first `depth` VMs
    /// are made before this returns; the thread replaces those taken. Each
    /// ready VM holds one file descriptor. `depth` 0 stops the thread and
    /// closes the ready VMs; a new call replaces the previous one (a call
    /// that fails leaves it as it was). A depth
    /// above [`Capability::max_machines`](crate::Capability::max_machines)
    /// is `EINVAL`.
    ///
    /// ```no_run
    /// # fn main() -> nvmm::Result<()> {
    /// let nvmm = nvmm::Nvmm::open()?;
    /// nvmm.keep_vms_ready(4)?;
    /// let machine = nvmm.create_machine()?; // no KVM_CREATE_VM here
    /// # drop(machine);
    /// nvmm.keep_vms_ready(0)?;
    /// # Ok(()) }
    /// ```
    pub fn keep_vms_ready(&self, depth: usize) -> Result<()> {
        if depth > self.sys.cap.max_machines as usize {
            return Err(Error::InvalidConfiguration {
                why: "more VMs made ahead than the process may have machines (Capability::max_machines)",
            });
        }
        // The first `depth` are made here, before the maker's lock is
        // taken (other threads keep creating machines meanwhile): the next
        // machines are sure to find them, and an error shows now.
        let mut vms = VecDeque::with_capacity(depth);
        for _ in 0..depth {
            vms.push_back(self.sys.kvm.create_vm()?);
        }
        let mut maker = self.sys.ready_vms.maker();
        if let Some(old) = maker.take() {
            old.stop();
        }
        if depth == 0 {
            return Ok(());
        }
        let shelf =
            Arc::new(Shelf { state: Mutex::new(ShelfState { vms, depth, stop: false }), changed: Condvar::new() });
        let (sys, for_thread) = (self.sys.clone(), shelf.clone());
        let worker = std::thread::Builder::new()
            .name("nvmm-ready-vms".into())
            .spawn(move || make(sys, for_thread))
            .map_err(|_| Error::NoMemory { what: "starting the thread that makes VMs ahead of time" })?;
        *maker = Some(Maker { shelf, worker });
        Ok(())
    }

    /// How many VMs made ahead of time are ready now (0 unless
    /// [`Nvmm::keep_vms_ready`] is on).
    pub fn vms_ready(&self) -> usize {
        self.sys.ready_vms.maker().as_ref().map_or(0, |m| m.shelf.lock().vms.len())
    }
}
