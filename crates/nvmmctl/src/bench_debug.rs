//! `nvmmctl bench debug-step`: single-step exits through the library
//! against a bare `KVM_SET_GUEST_DEBUG` single-step loop on the same guest
//! (target ratio 1.05), and the time gdb takes for 10 000 `stepi` over the
//! stub (reported; QEMU's stub is what a user would compare it with).

use std::io::Write;
use std::time::Instant;

use nvmm::{Exit, GuestDebug, Nvmm, Vcpu};
use nvmm_gdb::{Address, Next, VcpuExits};
use nvmm_testkit::floor::{RawExitKind, RawKvm};

use crate::bench::{BenchConfig, CODE, RAM, compare, floor_exit, real_mode_vcpu, report_with};
use crate::format::{json_f64, json_str};

/// The guest: `jmp $` (every step lands on itself).
const SPIN: [u8; 2] = [0xeb, 0xfe];
/// gdb's steps.
const GDB_STEPS: u32 = 10_000;

/// Runs the benchmark.
pub fn debug_step(nvmm: &Nvmm, cfg: BenchConfig, out: &mut dyn Write) -> Result<(), String> {
    let floor = RawKvm::open().map_err(|e| e.to_string())?;
    let mut raw_vm = floor.vm(&SPIN, CODE, RAM as usize).map_err(|e| e.to_string())?;
    raw_vm.single_step().map_err(|e| e.to_string())?;
    let (_m, mut vcpu) = real_mode_vcpu(nvmm, &SPIN)?;
    vcpu.set_guest_debug(&GuestDebug { single_step: true, ..GuestDebug::default() }).map_err(|e| e.to_string())?;
    let raw = || floor_exit(&mut raw_vm, RawExitKind::Debug);
    let ours = || match vcpu.run().map_err(|e| e.to_string())? {
        Exit::Debug(d) => {
            std::hint::black_box(d.pc());
            Ok(())
        }
        other => Err(format!("guest: unexpected exit {other:?}")),
    };
    let c = compare(cfg, raw, ours)?;
    let gdb = gdb_stepi(nvmm)?;
    let extra = match gdb {
        Some(secs) => vec![
            ("gdb_stepi", GDB_STEPS.to_string()),
            ("gdb_seconds", json_f64(secs)),
            ("gdb_stepi_per_s", json_f64(f64::from(GDB_STEPS) / secs)),
        ],
        None => vec![("gdb", json_str("not installed: gdb timing skipped"))],
    };
    report_with(out, "debug-step", cfg, c, 1.05, "single-step exit, against a bare KVM single-step loop", &extra)
}

/// No exit reaches the VMM from the spinning guest.
struct NoDevices;

impl VcpuExits for NoDevices {
    fn handle(&self, _index: usize, _vcpu: &mut Vcpu) -> nvmm::Result<Next> {
        Ok(Next::Signal(nvmm_gdb::Signal::SIGILL))
    }
}

/// Seconds gdb takes for `stepi 10000` over the stub (after connecting);
/// `None` without gdb.
fn gdb_stepi(nvmm: &Nvmm) -> Result<Option<f64>, String> {
    if std::process::Command::new("gdb").arg("--version").output().is_err() {
        return Ok(None);
    }
    let (machine, vcpu) = real_mode_vcpu(nvmm, &SPIN)?;
    let listener = nvmm_gdb::Listener::bind(&"127.0.0.1:0".parse().map_err(|e: nvmm_gdb::Error| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let Address::Tcp(addr) = listener.local_address().map_err(|e| e.to_string())? else {
        return Err("a TCP listener has a TCP address".into());
    };
    std::thread::scope(|s| {
        let stub = s.spawn(|| {
            let stream = listener.accept().map_err(|e| e.to_string())?;
            nvmm_gdb::debug(&machine, vec![vcpu], &NoDevices, stream).map_err(|e| e.to_string())
        });
        let t = Instant::now();
        let o = std::process::Command::new("gdb")
            .args(["-nx", "-batch", "-ex", &format!("target remote {addr}")])
            .args(["-ex", "python import time; t0 = time.monotonic()"])
            .args(["-ex", &format!("stepi {GDB_STEPS}")])
            .args(["-ex", "python print('STEPI_SECONDS', time.monotonic() - t0)"])
            .args(["-ex", "kill"])
            .output()
            .map_err(|e| format!("cannot run gdb: {e}"))?;
        stub.join().map_err(|_| "the stub thread panicked".to_string())??;
        let text = String::from_utf8_lossy(&o.stdout);
        let secs = text
            .lines()
            .find_map(|l| l.strip_prefix("STEPI_SECONDS ")?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| t.elapsed().as_secs_f64());
        Ok(Some(secs))
    })
}
