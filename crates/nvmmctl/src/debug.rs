//! `nvmmctl run --gdb ADDR`: the guest waits for gdb or lldb before its
//! first instruction; the devices work as in a plain run.

use std::io::Write;
use std::sync::Mutex;

use nvmm::{Machine, Vcpu};
use nvmm_gdb::{Address, End, Next, Signal, VcpuExits};

use crate::run::{Outcome, RunConfig, RunError, Vmm, exit_loop};

/// The machine's devices behind the stub.
struct Devices<'a> {
    vmm: Mutex<Vmm<'a>>,
    outcome: Mutex<Option<Result<Outcome, RunError>>>,
}

impl VcpuExits for Devices<'_> {
    fn handle(&self, _index: usize, vcpu: &mut Vcpu) -> nvmm::Result<Next> {
        let r = self.vmm.lock().unwrap_or_else(|e| e.into_inner()).handle(vcpu);
        let next = match &r {
            Ok(None) => return Ok(Next::Run),
            Ok(Some(Outcome::Halted { .. })) => Next::Exited(0),
            Ok(Some(Outcome::Fault { .. } | Outcome::TripleFault)) => Next::Signal(Signal::SIGSEGV),
            Ok(Some(_)) | Err(_) => Next::Signal(Signal::SIGILL),
        };
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.map(|o| o.expect("handled above")));
        Ok(next)
    }
}

/// Serves the guest to a debugger at `address`; when the debugger
/// detaches (or goes away) the guest runs on to its end. Returns how the
/// guest ended and its VCPU.
pub(crate) fn run_under_debugger<'a>(
    machine: &'a Machine,
    vcpu: Vcpu,
    cfg: &'a RunConfig,
    address: &Address,
    console: &'a mut (dyn Write + Send),
    log: &'a mut (dyn Write + Send),
) -> Result<(Outcome, Vcpu), RunError> {
    let devices = Devices { vmm: Mutex::new(Vmm::new(machine, cfg, console, log)), outcome: Mutex::new(None) };
    let session = nvmm_gdb::serve(machine, vec![vcpu], &devices, address, |bound| {
        let mut vmm = devices.vmm.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(vmm.log(), "[nvmmctl] waiting for the debugger on {bound} (gdb: target remote {bound})");
    })
    .map_err(|e| RunError(e.to_string()))?;
    let mut vcpu = session.vcpus.into_iter().next().expect("the VCPU comes back");
    let mut vmm = devices.vmm.into_inner().unwrap_or_else(|e| e.into_inner());
    let last = devices.outcome.into_inner().unwrap_or_else(|e| e.into_inner());
    let outcome = match session.end {
        End::Killed => Outcome::Killed,
        End::Exited(_) => last.unwrap_or(Ok(Outcome::Killed))?,
        End::Detached | End::Disconnected => {
            let _ = writeln!(vmm.log(), "[nvmmctl] the debugger left; the guest runs on");
            match last {
                // The guest had already ended (a fault the debugger saw).
                Some(r) => r?,
                None => exit_loop(&mut vmm, &mut vcpu)?,
            }
        }
    };
    Ok((outcome, vcpu))
}
