//! `nvmmctl run --snapshot-at N --save FILE` and `run --restore FILE`:
//! a guest saved after its Nth handled exit, and a guest started from a
//! saved file (forked from it: its memory maps the file copy-on-write).

use std::io::Write;
use std::path::Path;

use nvmm::x86::bits::{cr0, efer};
use nvmm::{Cr, Machine, Msr, Nvmm, StateMask, Vcpu};

use crate::run::{Mode, RunError};

/// Snapshots the machine and saves it to `path`.
pub(crate) fn save(
    machine: &Machine,
    vcpu: &mut Vcpu,
    exits: u64,
    path: &Path,
    log: &mut dyn Write,
) -> Result<(), RunError> {
    let snap = machine.snapshot(&mut [vcpu]).map_err(|e| RunError(format!("cannot snapshot the guest: {e}")))?;
    snap.save(path).map_err(|e| RunError(format!("cannot save the snapshot to {}: {e}", path.display())))?;
    let _ = writeln!(
        log,
        "[nvmmctl] snapshot after {exits} exits saved to {} ({} MiB of guest memory)",
        path.display(),
        snap.memory_size() >> 20
    );
    Ok(())
}

/// A machine forked from the snapshot file `path`, its VCPU, and the CPU
/// mode and RAM size its devices need (read from the snapshot).
pub(crate) fn restore(nvmm: &Nvmm, path: &Path) -> Result<(Machine, Vcpu, Mode, u64), RunError> {
    let snap = nvmm.load_snapshot(path).map_err(|e| RunError(format!("cannot load {}: {e}", path.display())))?;
    if snap.vcpus().len() != 1 {
        return Err(RunError(format!("{} holds {} VCPUs; nvmmctl runs one", path.display(), snap.vcpus().len())));
    }
    let mem =
        snap.areas().iter().find(|a| a.gpa == 0).map(|a| a.size).ok_or_else(|| {
            RunError(format!("{} has no RAM at address 0: not a snapshot nvmmctl took", path.display()))
        })?;
    let (machine, mut vcpus) =
        nvmm.fork(&snap).map_err(|e| RunError(format!("cannot restore {}: {e}", path.display())))?;
    let mut vcpu = vcpus.pop().ok_or_else(|| RunError("the snapshot's VCPU is missing".into()))?;
    vcpu.get_state(StateMask::CRS | StateMask::MSRS)?;
    let s = vcpu.state();
    let mode = if s.crs[Cr::Cr0] & cr0::PE == 0 {
        Mode::Real
    } else if s.msrs[Msr::Efer] & efer::LMA != 0 {
        Mode::Long64
    } else {
        Mode::Prot32
    };
    Ok((machine, vcpu, mode, mem))
}
