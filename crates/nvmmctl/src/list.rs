//! `nvmmctl list`: every KVM virtual machine on this host, found through
//! `/proc`.
//!
//! A VM is a descriptor pointing at `anon_inode:kvm-vm`; its VCPUs are
//! `anon_inode:kvm-vcpu:N`. Processes using nvmm also publish their machines
//! (id, VCPUs, RAM, creation time) in a memfd, read here; for other VMMs the
//! RAM is unknown, the VCPUs are only known when the process has a single
//! VM, and the time shown is the process's start.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nvmm::registry::{REGISTRY_NAME, Record, parse_registry};

use crate::format::{asctime_utc, humanize};

/// One VM found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmRow {
    /// nvmm machine id, when the owner uses nvmm.
    pub machid: Option<u32>,
    /// Number of VCPUs, when known.
    pub vcpus: Option<u32>,
    /// Guest RAM in bytes, when known.
    pub ram: Option<u64>,
    /// Owner process.
    pub pid: u32,
    /// Owner command name.
    pub command: String,
    /// Creation time (or the owner's start time).
    pub created: Option<SystemTime>,
    /// Descriptor of the VM in the owner.
    pub fd: i32,
}

/// What one process holds.
#[derive(Default, Debug)]
struct ProcessVms {
    vm_fds: Vec<i32>,
    vcpus: u32,
    registry: Vec<Record>,
}

fn scan_process(pid_dir: &Path) -> Option<ProcessVms> {
    let mut p = ProcessVms::default();
    for entry in fs::read_dir(pid_dir.join("fd")).ok()?.flatten() {
        let Ok(target) = fs::read_link(entry.path()) else { continue };
        let target = target.to_string_lossy();
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap_or(-1);
        if target == "anon_inode:kvm-vm" {
            p.vm_fds.push(fd);
        } else if target.starts_with("anon_inode:kvm-vcpu") {
            p.vcpus += 1;
        } else if target.starts_with(&format!("/memfd:{REGISTRY_NAME}"))
            && let Ok(bytes) = fs::read(entry.path())
        {
            p.registry = parse_registry(&bytes);
        }
    }
    p.vm_fds.sort_unstable();
    Some(p)
}

/// Seconds since boot of a process's start, from `/proc/PID/stat`.
fn process_start(pid_dir: &Path, boot: Option<u64>) -> Option<SystemTime> {
    let stat = fs::read_to_string(pid_dir.join("stat")).ok()?;
    // Fields after the command (which may contain spaces) start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    // /proc reports times in USER_HZ, 100 on x86 Linux.
    Some(UNIX_EPOCH + Duration::from_secs(boot? + ticks / 100))
}

fn boot_time(proc: &Path) -> Option<u64> {
    let stat = fs::read_to_string(proc.join("stat")).ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// Finds every VM under `proc` (normally `/proc`). Also returns how many
/// processes could not be inspected.
pub fn scan(proc: &Path) -> (Vec<VmRow>, usize) {
    let boot = boot_time(proc);
    let mut rows = Vec::new();
    let mut unreadable = 0;
    let mut pids: BTreeMap<u32, std::path::PathBuf> = BTreeMap::new();
    if let Ok(dir) = fs::read_dir(proc) {
        for e in dir.flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() {
                pids.insert(pid, e.path());
            }
        }
    }
    for (pid, dir) in pids {
        let Some(p) = scan_process(&dir) else {
            unreadable += usize::from(dir.exists());
            continue;
        };
        if p.vm_fds.is_empty() {
            continue;
        }
        let command = fs::read_to_string(dir.join("comm")).map(|c| c.trim().to_string()).unwrap_or_default();
        let started = process_start(&dir, boot);
        let single = p.vm_fds.len() == 1;
        for &fd in &p.vm_fds {
            let row = match p.registry.iter().find(|r| r.vm_fd == fd) {
                Some(r) => VmRow {
                    machid: Some(r.machid),
                    vcpus: Some(r.nvcpus),
                    ram: Some(r.nram),
                    pid,
                    command: command.clone(),
                    created: Some(UNIX_EPOCH + Duration::from_secs(r.created_unix)),
                    fd,
                },
                None => VmRow {
                    machid: None,
                    vcpus: single.then_some(p.vcpus),
                    ram: None,
                    pid,
                    command: command.clone(),
                    created: started,
                    fd,
                },
            };
            rows.push(row);
        }
    }
    (rows, unreadable)
}

/// Writes the table (NetBSD's columns plus the owner's command).
pub fn print(rows: &[VmRow], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "Machine ID VCPUs RAM  Owner PID Creation Time (UTC)      Command")?;
    writeln!(out, "---------- ----- ---- --------- ------------------------ -------")?;
    for r in rows {
        let id = r.machid.map_or_else(|| format!("kvm:fd{}", r.fd), |m| m.to_string());
        let vcpus = r.vcpus.map_or_else(|| "?".to_string(), |v| v.to_string());
        let ram = r.ram.map_or_else(|| "-".to_string(), humanize);
        let when = r.created.map_or_else(|| "?".to_string(), asctime_utc);
        writeln!(out, "{id:<10} {vcpus:<5} {ram:<4} {:<9} {when:<24} {}", r.pid, r.command)?;
    }
    Ok(())
}
