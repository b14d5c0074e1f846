//! `nvmmctl bench NAME`: speed and scale, one JSON object per line.
//!
//! Every speed figure is a ratio against a floor measured in the same run:
//! a bare `KVM_RUN` loop on the same guest with nothing of nvmm in it
//! (`nvmm_testkit::floor`). Each round times a batch of the floor and a batch
//! of nvmm back to back (alternating which goes first) and yields one ratio;
//! the reported ratio is the median of the rounds', so slow drifts of the
//! shared host cancel out.

use std::io::Write;
use std::time::Instant;

use nvmm::{Exit, Gpr, Nvmm, Prot, StateMask, Vcpu};
use nvmm_testkit::floor::{RawExitKind, RawKvm, RawVm};

use crate::format::{json_f64, json_line, json_str};

/// Benchmarks `nvmmctl bench` knows.
pub const NAMES: [&str; 7] = ["exits", "exit-state", "lifecycle", "scale", "core", "debug-step", "snapshot"];

/// Where the benchmark guests run.
pub(crate) const CODE: u64 = 0x1000;
/// `out 0x10,al ; jmp $-2`: one port I/O exit per iteration.
const EXIT_GUEST: [u8; 4] = [0xe6, 0x10, 0xeb, 0xfc];
/// `hlt`.
const HALT_GUEST: [u8; 1] = [0xf4];
pub(crate) const RAM: u64 = 0x10000;

/// Tuning of a run.
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    /// Operations per round.
    pub iterations: u64,
    /// Rounds per side.
    pub rounds: usize,
}

type Res<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Runs benchmark `name`.
pub fn bench(nvmm: &Nvmm, name: &str, cfg: BenchConfig, out: &mut dyn Write) -> Res<()> {
    match name {
        "exits" => exits(nvmm, cfg, false, out),
        "exit-state" => exits(nvmm, cfg, true, out),
        "lifecycle" => lifecycle(nvmm, cfg, out),
        "scale" => scale(nvmm, out),
        "core" => crate::bench_core::core(nvmm, cfg, out),
        "debug-step" => crate::bench_debug::debug_step(nvmm, cfg, out),
        "snapshot" => crate::bench_snapshot::snapshot(nvmm, cfg, out),
        "all" => NAMES.iter().try_for_each(|n| bench(nvmm, n, cfg, out)),
        other => Err(format!("unknown benchmark '{other}'; choose one of {} or all", NAMES.join(", "))),
    }
}

/// The median of `v` (not empty).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `n` calls of `op`, in nanoseconds per call.
fn per_op(n: u64, mut op: impl FnMut() -> Res<()>) -> Res<f64> {
    let t = Instant::now();
    for _ in 0..n {
        op()?;
    }
    Ok(t.elapsed().as_nanos() as f64 / n as f64)
}

/// Medians of the floor's and nvmm's time per operation, and of the
/// per-round ratios.
pub(crate) struct Comparison {
    pub(crate) raw: f64,
    pub(crate) ours: f64,
    pub(crate) ratio: f64,
}

/// Runs `rounds` rounds of a floor batch and an nvmm batch.
pub(crate) fn compare(
    cfg: BenchConfig,
    mut raw: impl FnMut() -> Res<()>,
    mut ours: impl FnMut() -> Res<()>,
) -> Res<Comparison> {
    compare_batches(cfg, |n| per_op(n, &mut raw), |n| per_op(n, &mut ours))
}

/// Times `n` calls of `op`, each timing the part that counts itself, in
/// nanoseconds per call (for operations that need untimed preparation).
pub(crate) fn per_op_timed(n: u64, mut op: impl FnMut() -> Res<std::time::Duration>) -> Res<f64> {
    let mut total = std::time::Duration::ZERO;
    for _ in 0..n {
        total += op()?;
    }
    Ok(total.as_nanos() as f64 / n as f64)
}

/// Times `n` calls of `op` whose results are kept until the batch is
/// timed, in nanoseconds per call: creations whose teardown is not theirs
/// to pay (both sides of a comparison drop theirs after the clock stops).
pub(crate) fn per_op_kept<T>(n: u64, mut op: impl FnMut() -> Res<T>) -> Res<f64> {
    let mut kept = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for _ in 0..n {
        kept.push(op()?);
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    drop(kept);
    Ok(ns)
}

/// Warms both sides up, then runs `rounds` rounds of a floor batch and an
/// nvmm batch of `iterations` (`batch(n)` gives nanoseconds per
/// operation), alternating which goes first.
pub(crate) fn compare_batches(
    cfg: BenchConfig,
    mut raw: impl FnMut(u64) -> Res<f64>,
    mut ours: impl FnMut(u64) -> Res<f64>,
) -> Res<Comparison> {
    let rounds = time_rounds(cfg, [&mut raw, &mut ours])?;
    Ok(Comparison {
        raw: median(rounds.iter().map(|[a, _]| *a).collect()),
        ours: median(rounds.iter().map(|[_, b]| *b).collect()),
        ratio: median(rounds.iter().map(|[a, b]| b / a).collect()),
    })
}

/// Warms each side up, then runs `rounds` rounds of a batch of
/// `iterations` of each side (`batch(n)` gives nanoseconds per operation),
/// the order rotating from round to round (with two sides: alternating
/// which goes first). Each round's nanoseconds per operation, by side.
pub(crate) fn time_rounds<const N: usize>(
    cfg: BenchConfig,
    mut sides: [&mut dyn FnMut(u64) -> Res<f64>; N],
) -> Res<Vec<[f64; N]>> {
    for side in sides.iter_mut() {
        side(cfg.iterations / 10 + 1)?;
    }
    let mut rounds = Vec::with_capacity(cfg.rounds);
    for round in 0..cfg.rounds {
        let mut ns = [0.0; N];
        for k in 0..N {
            let side = (round + k) % N;
            ns[side] = sides[side](cfg.iterations)?;
        }
        rounds.push(ns);
    }
    Ok(rounds)
}

fn report(out: &mut dyn Write, name: &str, cfg: BenchConfig, c: Comparison, target: f64, what: &str) -> Res<()> {
    report_with(out, name, cfg, c, target, what, &[])
}

pub(crate) fn report_with(
    out: &mut dyn Write,
    name: &str,
    cfg: BenchConfig,
    c: Comparison,
    target: f64,
    what: &str,
    extra: &[(&str, String)],
) -> Res<()> {
    let Comparison { raw, ours, ratio } = c;
    let mut fields = vec![
        ("bench", json_str(name)),
        ("what", json_str(what)),
        ("iterations", cfg.iterations.to_string()),
        ("rounds", cfg.rounds.to_string()),
        ("raw_ns", json_f64(raw)),
        ("ours_ns", json_f64(ours)),
        ("ratio", json_f64(ratio)),
        ("target", json_f64(target)),
        ("pass", (ratio <= target).to_string()),
    ];
    fields.extend_from_slice(extra);
    writeln!(out, "{}", json_line(&fields)).map_err(err)
}

pub(crate) fn real_mode_vcpu(nvmm: &Nvmm, code: &[u8]) -> Res<(nvmm::Machine, Vcpu)> {
    let m = nvmm.create_machine().map_err(err)?;
    m.map_anonymous(0, RAM, Prot::ALL).map_err(err)?;
    m.write_gpa(CODE, code).map_err(err)?;
    let mut v = m.create_vcpu(0).map_err(err)?;
    v.update(StateMask::GPRS | StateMask::SEGS, |s| nvmm::x86::modes::real_mode_entry(s, CODE)).map_err(err)?;
    Ok((m, v))
}

fn exits(nvmm: &Nvmm, cfg: BenchConfig, with_state: bool, out: &mut dyn Write) -> Res<()> {
    let floor = RawKvm::open().map_err(err)?;
    let mut raw_vm = floor.vm(&EXIT_GUEST, CODE, RAM as usize).map_err(err)?;
    let (_m, mut vcpu) = real_mode_vcpu(nvmm, &EXIT_GUEST)?;
    let raw = || floor_exit(&mut raw_vm, RawExitKind::Io);
    let ours = || {
        match vcpu.run().map_err(err)? {
            // A VMM reads the OUT's data: that answers the exit.
            Exit::Io(io) => {
                std::hint::black_box(io.data());
            }
            other => return Err(format!("guest: unexpected exit {other:?}")),
        }
        if with_state {
            vcpu.get_state(StateMask::GPRS | StateMask::SEGS).map_err(err)?;
            let rax = vcpu.state().gprs[Gpr::Rax];
            vcpu.state_mut().gprs[Gpr::Rax] = rax.wrapping_add(1);
            vcpu.set_state(StateMask::GPRS).map_err(err)?;
        }
        Ok(())
    };
    if !with_state {
        let c = compare(cfg, raw, ours)?;
        return report(out, "exits", cfg, c, 1.03, "PIO exit round trip");
    }
    // The kernel's own share: the same bare loop with KVM copying the
    // registers out and loading GPRS back through kvm_run. The library's
    // share is the loop against that floor, timed in the same rounds.
    let mut sync_vm = floor.vm(&EXIT_GUEST, CODE, RAM as usize).map_err(err)?;
    sync_vm.sync_registers(true, true);
    let sync = || floor_exit(&mut sync_vm, RawExitKind::Io);
    let (c, kernel, library) = compare_with_sync_floor(cfg, raw, sync, ours)?;
    let extra = [
        ("kernel_sync_ratio", json_f64(kernel)),
        ("library_share", json_f64(library)),
        ("library_target", json_f64(1.02)),
        ("library_pass", (library <= 1.02).to_string()),
    ];
    report_with(out, "exit-state", cfg, c, 1.05, "PIO exit + get GPRS|SEGS + set GPRS, against a bare exit", &extra)
}

/// Like [`compare`] with a second floor, `sync` (the bare loop with KVM's
/// register copies): each round times a batch of all three, in a rotating
/// order. Returns the comparison with `raw`, and the medians of the
/// rounds' `sync / raw` (the kernel's share) and `ours / sync` (the
/// library's).
fn compare_with_sync_floor(
    cfg: BenchConfig,
    mut raw: impl FnMut() -> Res<()>,
    mut sync: impl FnMut() -> Res<()>,
    mut ours: impl FnMut() -> Res<()>,
) -> Res<(Comparison, f64, f64)> {
    let rounds =
        time_rounds(cfg, [&mut |n| per_op(n, &mut raw), &mut |n| per_op(n, &mut sync), &mut |n| per_op(n, &mut ours)])?;
    let of = |f: fn(&[f64; 3]) -> f64| median(rounds.iter().map(f).collect());
    let c = Comparison { raw: of(|[a, _, _]| *a), ours: of(|[_, _, b]| *b), ratio: of(|[a, _, b]| b / a) };
    Ok((c, of(|[a, s, _]| s / a), of(|[_, s, b]| b / s)))
}

/// Runs a floor VM once; an error unless it exits with `want`.
pub(crate) fn floor_exit(vm: &mut RawVm, want: RawExitKind) -> Res<()> {
    match vm.run().map_err(err)? {
        got if got == want => Ok(()),
        other => Err(format!("floor guest: unexpected exit {other:?}")),
    }
}

fn lifecycle(nvmm: &Nvmm, cfg: BenchConfig, out: &mut dyn Write) -> Res<()> {
    let floor = RawKvm::open().map_err(err)?;
    let cfg = BenchConfig { iterations: (cfg.iterations / 50).max(5), ..cfg };
    let raw = || {
        let mut vm = floor.vm(&HALT_GUEST, CODE, RAM as usize).map_err(err)?;
        floor_exit(&mut vm, RawExitKind::Hlt)
    };
    let ours = || {
        let (_m, mut v) = real_mode_vcpu(nvmm, &HALT_GUEST)?;
        match v.run().map_err(err)? {
            Exit::Halted => Ok(()),
            other => Err(format!("guest: unexpected exit {other:?}")),
        }
    };
    let c = compare(cfg, raw, ours)?;
    report(out, "lifecycle", cfg, c, 1.10, "create machine + VCPU + map a page + run to HLT + destroy")
}

/// A "Key:  N kB" line of a /proc file, in bytes.
fn proc_kib(file: &str, key: &str) -> u64 {
    let s = std::fs::read_to_string(file).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

pub(crate) fn rss() -> u64 {
    proc_kib("/proc/self/status", "VmRSS:")
}

fn mem_available() -> u64 {
    proc_kib("/proc/meminfo", "MemAvailable:")
}

fn scale(nvmm: &Nvmm, out: &mut dyn Write) -> Res<()> {
    let cap = *nvmm.capability();
    let mut line = |fields: &[(&str, String)]| writeln!(out, "{}", json_line(fields)).map_err(err);

    let t = Instant::now();
    let mut machines = Vec::new();
    let mut stop = String::new();
    while machines.len() < cap.max_machines as usize {
        match nvmm.create_machine().and_then(|m| m.create_vcpu(0).map(|v| (m, v))) {
            Ok(mv) => machines.push(mv),
            Err(e) => {
                stop = e.to_string();
                break;
            }
        }
    }
    let reached = machines.len();
    let elapsed = t.elapsed();
    drop(machines);
    line(&[
        ("bench", json_str("scale")),
        ("metric", json_str("live_machines")),
        ("reached", reached.to_string()),
        ("limit", cap.max_machines.to_string()),
        ("target", "1024".into()),
        ("pass", (reached >= 1024).to_string()),
        ("seconds", json_f64(elapsed.as_secs_f64())),
        ("stopped_by", json_str(&stop)),
    ])?;

    let t = Instant::now();
    let m = nvmm.create_machine().map_err(err)?;
    let mut vcpus = Vec::new();
    let mut stop = String::new();
    for id in 0..cap.max_vcpus {
        match m.create_vcpu(id) {
            Ok(v) => vcpus.push(v),
            Err(e) => {
                stop = e.to_string();
                break;
            }
        }
    }
    let kvm_max = nvmm.backend_facts().max_vcpus;
    line(&[
        ("bench", json_str("scale")),
        ("metric", json_str("vcpus_per_machine")),
        ("reached", vcpus.len().to_string()),
        ("target", kvm_max.to_string()),
        ("pass", (vcpus.len() as u32 >= kvm_max).to_string()),
        ("seconds", json_f64(t.elapsed().as_secs_f64())),
        ("stopped_by", json_str(&stop)),
    ])?;
    drop(vcpus);
    drop(m);

    const TIB: u64 = 1 << 40;
    let (rss0, avail0) = (rss(), mem_available());
    let t = Instant::now();
    let m = nvmm.create_machine().map_err(err)?;
    m.map_anonymous(0, TIB, Prot::ALL).map_err(err)?;
    let map_time = t.elapsed();
    for i in 0..16u64 {
        m.write_gpa(i * (TIB / 16), &[1]).map_err(err)?;
    }
    let rss_cost = rss().saturating_sub(rss0);
    let kernel_cost = avail0.saturating_sub(mem_available()).saturating_sub(rss_cost);
    line(&[
        ("bench", json_str("scale")),
        ("metric", json_str("sparse_1tib_guest")),
        ("rss_bytes", rss_cost.to_string()),
        ("target_rss_bytes", (64u64 << 20).to_string()),
        ("pass", (rss_cost < 64 << 20).to_string()),
        ("map_seconds", json_f64(map_time.as_secs_f64())),
        ("host_kernel_bytes", kernel_cost.to_string()),
    ])?;
    drop(m);
    Ok(())
}
