//! `nvmmctl bench core`: writing a core of a guest with 256 MiB touched,
//! against `cp` of a file of the same size in the same directory (the
//! disk's and page cache's limit). Each round times one core and one `cp`
//! back to back; the ratio is the median of the rounds' (core time over
//! `cp` time: 1.0 is as fast as `cp`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use nvmm::{Nvmm, Prot};
use nvmm_coredump::WriteCore;

use crate::bench::{BenchConfig, median};
use crate::format::{json_f64, json_line, json_str};

/// Guest memory the guest "touched".
const TOUCHED: u64 = 256 << 20;

/// Files of this run, removed when dropped.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn cp(from: &Path, to: &Path) -> Result<(), String> {
    let s = Command::new("cp").arg(from).arg(to).status().map_err(|e| format!("cannot run cp: {e}"))?;
    if s.success() { Ok(()) } else { Err(format!("cp failed: {s}")) }
}

/// Runs the benchmark; `cfg.rounds` rounds (at most 11: each writes 512 MiB).
pub fn core(nvmm: &Nvmm, cfg: BenchConfig, out: &mut dyn Write) -> Result<(), String> {
    let dir = std::env::temp_dir();
    let tag = std::process::id();
    let files = Scratch(["src", "cp", "core"].iter().map(|n| dir.join(format!("nvmm-bench-core-{tag}.{n}"))).collect());
    let (src, dst, core_path) = (&files.0[0], &files.0[1], &files.0[2]);
    let machine = nvmm.create_machine().map_err(|e| e.to_string())?;
    machine.map_anonymous(0, TOUCHED, Prot::ALL).map_err(|e| e.to_string())?;
    // Every page touched, none all zeros (no hole to skip).
    let mut page = vec![0u8; 1 << 20];
    for (i, b) in page.iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    let mut data = std::fs::File::create(src).map_err(|e| format!("{}: {e}", src.display()))?;
    for at in (0..TOUCHED).step_by(page.len()) {
        machine.write_gpa(at, &page).map_err(|e| e.to_string())?;
        data.write_all(&page).map_err(|e| e.to_string())?;
    }
    drop(data);
    let mut vcpu = machine.create_vcpu(0).map_err(|e| e.to_string())?;
    let (mut ours, mut floor, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..cfg.rounds.clamp(1, 11) {
        let _ = std::fs::remove_file(dst);
        let _ = std::fs::remove_file(core_path);
        let mut time_core = || -> Result<f64, String> {
            let t = Instant::now();
            machine.write_core_file(&mut [&mut vcpu], core_path).map_err(|e| e.to_string())?;
            Ok(t.elapsed().as_secs_f64())
        };
        let time_cp = || -> Result<f64, String> {
            let t = Instant::now();
            cp(src, dst)?;
            Ok(t.elapsed().as_secs_f64())
        };
        let (a, b) = if round % 2 == 0 {
            let b = time_cp()?;
            (time_core()?, b)
        } else {
            let a = time_core()?;
            (a, time_cp()?)
        };
        ours.push(a);
        floor.push(b);
        ratios.push(a / b);
    }
    let mb = TOUCHED as f64 / 1e6;
    let rounds = ratios.len();
    let ratio = median(ratios);
    let fields = [
        ("bench", json_str("core")),
        ("what", json_str("core of a guest with 256 MiB touched, against cp of 256 MiB in the same directory")),
        ("rounds", rounds.to_string()),
        ("core_mb_s", json_f64(mb / median(ours))),
        ("cp_mb_s", json_f64(mb / median(floor))),
        ("ratio", json_f64(ratio)),
        ("target", json_f64(1.5)),
        ("pass", (ratio <= 1.5).to_string()),
    ];
    writeln!(out, "{}", json_line(&fields)).map_err(|e| e.to_string())
}
