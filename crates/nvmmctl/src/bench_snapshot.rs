//! `nvmmctl bench snapshot`: reset, fork, restore from a file, and the
//! memory a fork costs, each against the bare KVM work it cannot avoid,
//! measured in the same run.
//!
//! - `snapshot-reset`: `Machine::reset_to` of a forked machine after the
//!   VMM wrote a few pages, against the bare state-set ioctls (all but the
//!   CPUID, which a reset VCPU has) plus copying as many pages (target
//!   1.05, and 50 µs);
//! - `snapshot-fork`: `Nvmm::fork` of a 16 MiB and a 16 GiB guest, against
//!   `KVM_CREATE_VM` + `KVM_CREATE_VCPU` + the state set (target 1.3,
//!   whatever the size), with VMs made on the spot and made ahead of time
//!   ([`Nvmm::keep_vms_ready`]); KVM's own cost of the memory slot, which
//!   grows with the size on these hosts, is measured beside it. Both
//!   sides keep what they made until the batch is timed: teardowns are
//!   not part of a fork;
//! - `snapshot-load`: from a file to the first guest exit, for 16 MiB and
//!   16 GiB (should not grow with size), and the page-fault tail of reading
//!   10 % of memory afterwards;
//! - `snapshot-rss`: 1000 forks of a 1 GiB guest that each write 1 MiB:
//!   the process's RSS growth per fork.

use std::io::Write;
use std::time::Instant;

use nvmm::{Exit, MachineSnapshot, Nvmm, Prot, StateMask};
use nvmm_testkit::floor::RawKvm;
use nvmm_testkit::floor_state::{RawState, Reservation, create_and_set};

use crate::bench::{BenchConfig, CODE, compare_batches, per_op_kept, per_op_timed, report_with};
use crate::format::{json_f64, json_line, json_str};

type Res<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The guest: `out 0x10, al ; hlt` in real mode.
const GUEST: [u8; 3] = [0xe6, 0x10, 0xf4];

/// A snapshot of a real-mode guest with `ram` bytes at 0, before its first
/// instruction, that touched `touched` pages.
fn guest_snapshot(nvmm: &Nvmm, ram: u64, touched: u64) -> Res<MachineSnapshot> {
    guest_machine(nvmm, ram, touched).map(|(_, _, s)| s)
}

/// The guest of [`guest_snapshot`], its VCPU and the snapshot.
fn guest_machine(nvmm: &Nvmm, ram: u64, touched: u64) -> Res<(nvmm::Machine, nvmm::Vcpu, MachineSnapshot)> {
    let m = nvmm.create_machine().map_err(err)?;
    m.map_anonymous(0, ram, Prot::ALL).map_err(err)?;
    m.write_gpa(CODE, &GUEST).map_err(err)?;
    for p in 0..touched {
        m.write_gpa(0x10_0000 + p * 4096, &[1]).map_err(err)?;
    }
    let mut v = m.create_vcpu(0).map_err(err)?;
    v.update(StateMask::GPRS | StateMask::SEGS, |s| nvmm::x86::modes::real_mode_entry(s, CODE)).map_err(err)?;
    let snap = m.snapshot(&mut [&mut v]).map_err(err)?;
    Ok((m, v, snap))
}

/// Runs the benchmarks.
pub fn snapshot(nvmm: &Nvmm, cfg: BenchConfig, out: &mut dyn Write) -> Res<()> {
    reset(nvmm, cfg, out)?;
    fork(nvmm, cfg, out)?;
    pool(nvmm, out)?;
    load(nvmm, out)?;
    rss(nvmm, out)
}

const RESET_DIRTY: u64 = 4;

fn reset(nvmm: &Nvmm, cfg: BenchConfig, out: &mut dyn Write) -> Res<()> {
    // A fork of the snapshot, and the machine that took it.
    let (parent, mut pv, snap) = guest_machine(nvmm, 16 << 20, 16)?;
    let (m, mut v) = nvmm.fork(&snap).map_err(err)?;
    reset_one(cfg, out, "fork", &m, &mut v[0], &snap)?;
    reset_one(cfg, out, "parent", &parent, &mut pv, &snap)
}

fn reset_one(
    cfg: BenchConfig,
    out: &mut dyn Write,
    which: &str,
    m: &nvmm::Machine,
    v: &mut nvmm::Vcpu,
    snap: &MachineSnapshot,
) -> Res<()> {
    let raw_kvm = RawKvm::open().map_err(err)?;
    let raw_vm = raw_kvm.vm(&GUEST, CODE, 16 << 20).map_err(err)?;
    let state = RawState::capture(&raw_kvm, &raw_vm).map_err(err)?;
    let source = vec![7u8; 4096 * RESET_DIRTY as usize];
    let mut target = vec![0u8; 4096 * RESET_DIRTY as usize];
    let raw = || -> Res<()> {
        state.set(raw_vm.vcpu(), false).map_err(err)?;
        target.copy_from_slice(std::hint::black_box(&source));
        Ok(())
    };
    let mut page = [9u8; 4096];
    // Only the reset is timed: the writes that dirty the pages are not.
    let mut ours = || -> Res<std::time::Duration> {
        for p in 0..RESET_DIRTY {
            page[0] = p as u8;
            m.write_gpa(0x20_0000 + p * 4096, &page).map_err(err)?;
        }
        let t = Instant::now();
        m.reset_to(&mut [&mut *v], snap).map_err(err)?;
        Ok(t.elapsed())
    };
    let mut raw = raw;
    let mut timed_raw = || -> Res<std::time::Duration> {
        let t = Instant::now();
        raw()?;
        Ok(t.elapsed())
    };
    let cfg = BenchConfig { iterations: cfg.iterations.min(500), rounds: cfg.rounds };
    let c = compare_batches(cfg, |n| per_op_timed(n, &mut timed_raw), |n| per_op_timed(n, &mut ours))?;
    let us = c.ours / 1000.0;
    let extra = [
        ("machine", json_str(which)),
        ("dirty_pages", RESET_DIRTY.to_string()),
        ("reset_us", json_f64(us)),
        ("us_per_dirty_page", json_f64(us / RESET_DIRTY as f64)),
        ("target_us", json_f64(50.0)),
        ("pass_us", (us <= 50.0).to_string()),
    ];
    report_with(
        out,
        "snapshot-reset",
        cfg,
        c,
        1.05,
        "reset_to a snapshot after writing 4 pages, against the state-set ioctls + copying 4 pages",
        &extra,
    )
}

fn fork(nvmm: &Nvmm, cfg: BenchConfig, out: &mut dyn Write) -> Res<()> {
    let raw_kvm = RawKvm::open().map_err(err)?;
    let raw_vm = raw_kvm.vm(&GUEST, CODE, 1 << 20).map_err(err)?;
    let state = RawState::capture(&raw_kvm, &raw_vm).map_err(err)?;
    for (name, ram) in [("16MiB", 16u64 << 20), ("16GiB", 16u64 << 30)] {
        // A batch's VMs live until it is timed: KVM's per-page metadata of
        // twenty 16 GiB slots is already 640 MiB of kernel memory here.
        let batch = if ram > 1 << 30 { 20 } else { 100 };
        let small = BenchConfig { iterations: cfg.iterations.min(batch), rounds: cfg.rounds.min(21) };
        let snap = guest_snapshot(nvmm, ram, 16)?;
        // KVM's own cost of a memory slot this size, in the same run.
        let reserved = Reservation::new(ram).map_err(err)?;
        let slot = compare_batches(
            small,
            |n| per_op_kept(n, || create_and_set(&raw_kvm, &state, None).map_err(err)),
            |n| per_op_kept(n, || create_and_set(&raw_kvm, &state, Some((reserved.addr(), ram))).map_err(err)),
        )?;
        // VMs made on the spot, then ahead of time by the library's thread.
        for ready in [0, 4] {
            nvmm.keep_vms_ready(ready).map_err(err)?;
            let raw = |n| per_op_kept(n, || create_and_set(&raw_kvm, &state, None).map_err(err));
            let ours = |n| per_op_kept(n, || nvmm.fork(&snap).map_err(err));
            let c = compare_batches(small, raw, ours)?;
            let extra = [
                ("guest_ram", json_str(name)),
                ("vms", json_str(if ready == 0 { "made on the spot" } else { "made ahead (keep_vms_ready(4))" })),
                ("fork_us", json_f64(c.ours / 1000.0)),
                ("kvm_slot_us", json_f64((slot.ours - slot.raw) / 1000.0)),
                ("ratio_with_kvm_slot", json_f64(c.ours / slot.ours)),
            ];
            report_with(
                out,
                "snapshot-fork",
                small,
                c,
                1.3,
                "fork a snapshot into a new machine, against KVM_CREATE_VM + KVM_CREATE_VCPU + the state set",
                &extra,
            )?;
        }
        nvmm.keep_vms_ready(0).map_err(err)?;
    }
    Ok(())
}

/// Taking a fork from a pool that made it ahead of time, between runs of
/// the taken guest to its first exit (a sandbox's loop).
fn pool(nvmm: &Nvmm, out: &mut dyn Write) -> Res<()> {
    for (name, ram) in [("16MiB", 16u64 << 20), ("16GiB", 16u64 << 30)] {
        let snap = guest_snapshot(nvmm, ram, 16)?;
        let pool = nvmm.fork_pool(&snap, 4).map_err(err)?;
        // The first take waits for the thread's first fork.
        drop(pool.take().map_err(err)?);
        let mut takes = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let (_m, mut v) = pool.take().map_err(err)?;
            takes.push(t.elapsed().as_secs_f64() * 1e6);
            match v[0].run().map_err(err)? {
                Exit::Io(_) => {}
                other => return Err(format!("guest: unexpected exit {other:?}")),
            }
        }
        let fields = [
            ("bench", json_str("snapshot-pool")),
            ("what", json_str("take a fork from a pool of 4 made ahead of time, between runs of the taken guest")),
            ("guest_ram", json_str(name)),
            ("take_us_median", json_f64(crate::bench::median(takes.clone()))),
            ("take_us_min", json_f64(takes.iter().copied().fold(f64::INFINITY, f64::min))),
        ];
        writeln!(out, "{}", json_line(&fields)).map_err(err)?;
    }
    Ok(())
}

fn load(nvmm: &Nvmm, out: &mut dyn Write) -> Res<()> {
    for (name, ram) in [("16MiB", 16u64 << 20), ("16GiB", 16u64 << 30)] {
        let snap = guest_snapshot(nvmm, ram, (ram / 4096 / 10).min(4096))?;
        let path = std::env::temp_dir().join(format!("nvmmctl-bench-{}.nvmmsnap", std::process::id()));
        snap.save(&path).map_err(err)?;
        drop(snap);
        let mut first = Vec::new();
        let mut tail = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let loaded = nvmm.load_snapshot(&path).map_err(err)?;
            let (m, mut v) = nvmm.fork(&loaded).map_err(err)?;
            match v[0].run().map_err(err)? {
                Exit::Io(_) => {}
                other => return Err(format!("guest: unexpected exit {other:?}")),
            }
            first.push(t.elapsed().as_secs_f64() * 1e6);
            // Reading 10 % of the guest's pages faults them in from the file.
            let t = Instant::now();
            let mut b = [0u8; 8];
            let pages = ram / 4096 / 10;
            for p in 0..pages {
                m.read_gpa(p * 4096 * 10 % ram, &mut b).map_err(err)?;
            }
            tail.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let _ = std::fs::remove_file(&path);
        let fields = [
            ("bench", json_str("snapshot-load")),
            ("what", json_str("load a snapshot file and fork it, to the first guest exit; then read 10% of its pages")),
            ("guest_ram", json_str(name)),
            ("first_exit_us", json_f64(crate::bench::median(first))),
            ("touch_10pct_ms", json_f64(crate::bench::median(tail))),
        ];
        writeln!(out, "{}", json_line(&fields)).map_err(err)?;
    }
    Ok(())
}

fn rss(nvmm: &Nvmm, out: &mut dyn Write) -> Res<()> {
    const FORKS: usize = 1000;
    let snap = guest_snapshot(nvmm, 1 << 30, 256)?;
    let before = crate::bench::rss();
    let t = Instant::now();
    let mut forks = Vec::with_capacity(FORKS);
    let data = vec![0x5au8; 1 << 20];
    for i in 0..FORKS {
        let (m, v) = nvmm.fork(&snap).map_err(|e| format!("fork {i}: {e}"))?;
        m.write_gpa(0x1000_0000, &data).map_err(err)?;
        forks.push((m, v));
    }
    let secs = t.elapsed().as_secs_f64();
    let grown = crate::bench::rss().saturating_sub(before);
    let fields = [
        ("bench", json_str("snapshot-rss")),
        ("what", json_str("1000 forks of a 1 GiB guest, each writing 1 MiB: RSS growth per fork")),
        ("forks", FORKS.to_string()),
        ("rss_per_fork_kib", json_f64(grown as f64 / FORKS as f64 / 1024.0)),
        ("written_per_fork_kib", "1024".into()),
        ("forks_per_s", json_f64(FORKS as f64 / secs)),
    ];
    writeln!(out, "{}", json_line(&fields)).map_err(err)
}
