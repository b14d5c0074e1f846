//! `nvmmctl`: the command line of nvmm-rs.
//!
//! - `identify`: what this NVMM implementation supports, and the KVM behind it;
//! - `list`: every KVM virtual machine on the host;
//! - `calc A B`: NVMM's calculator guest adds two numbers;
//! - `run`: the built-in demo guest, or a flat binary;
//! - `core-info FILE`: what a guest core holds;
//! - `bench NAME`: benchmarks, one JSON object per line.
#![forbid(unsafe_code)]

mod bench;
mod bench_core;
mod bench_debug;
mod bench_snapshot;
mod debug;
mod format;
mod guest;
mod identify;
mod list;
mod run;
mod snapshot;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use nvmm::{Exit, Gpr, Nvmm, Prot, StateMask};

use run::{Mode, Outcome, RunConfig};

/// Exit status for host-side failures (no KVM, bad image, ...).
const EXIT_ERROR: u8 = 1;
/// Exit status when the guest faulted or triple-faulted.
const EXIT_GUEST_FAULT: u8 = 3;
/// Exit status when the guest did something the host cannot handle.
const EXIT_GUEST_UNSUPPORTED: u8 = 4;
/// Exit status when the timeout expired.
const EXIT_TIMEOUT: u8 = 5;

#[derive(Parser)]
#[command(name = "nvmmctl", version, about = "NetBSD's NVMM on Linux KVM: inspect, run and benchmark virtual machines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print what this NVMM implementation supports and the KVM facts behind it.
    Identify,
    /// List the virtual machines on this host (all KVM users, not only nvmm).
    List,
    /// Add two 16-bit numbers in a real-mode guest (NVMM's calc-vm).
    Calc {
        /// First number (0-65535).
        a: u16,
        /// Second number (0-65535).
        b: u16,
    },
    /// Run the built-in demo guest, or a flat binary with --image.
    Run {
        /// Flat binary to load.
        #[arg(long, requires_all = ["gpa", "mode"])]
        image: Option<PathBuf>,
        /// Guest physical address to load the image at.
        #[arg(long, value_parser = parse_number)]
        gpa: Option<u64>,
        /// CPU mode to start in.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// First instruction (default: the load address).
        #[arg(long, value_parser = parse_number, requires = "image")]
        entry: Option<u64>,
        /// Guest RAM from address 0, suffixes K, M, G (default 16M).
        #[arg(long, value_parser = parse_size, requires = "image")]
        mem: Option<u64>,
        /// Stop the guest after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Write an ELF core of the guest to FILE when it faults, triple-faults,
        /// or nvmmctl gets SIGQUIT (open it with gdb -c FILE or lldb --core FILE).
        #[arg(long, value_name = "FILE")]
        core: Option<PathBuf>,
        /// Wait for gdb or lldb at ADDR (HOST:PORT, :PORT or unix:PATH) before
        /// the first instruction; the guest runs on when the debugger detaches.
        #[arg(long, value_name = "ADDR", conflicts_with = "timeout")]
        gdb: Option<nvmm_gdb::Address>,
        /// Snapshot the guest after its Nth handled exit (with --save).
        #[arg(long, value_name = "N", requires = "save")]
        snapshot_at: Option<u64>,
        /// Where --snapshot-at saves the snapshot.
        #[arg(long, value_name = "FILE", requires = "snapshot_at")]
        save: Option<PathBuf>,
        /// Start the guest from a snapshot file instead of an image.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["image", "snapshot_at"])]
        restore: Option<PathBuf>,
    },
    /// Print what a core written by nvmm holds: VCPUs, modes, RIPs, memory.
    CoreInfo {
        /// The core file.
        file: PathBuf,
    },
    /// Run a benchmark: exits, exit-state, lifecycle, scale, core, debug-step, snapshot or all.
    Bench {
        /// Which benchmark.
        name: String,
        /// Operations per batch (lifecycle: divided by 50).
        #[arg(long, default_value_t = 2_000)]
        iterations: u64,
        /// Rounds, each a floor batch and an nvmm batch (the median counts).
        #[arg(long, default_value_t = 41)]
        rounds: usize,
    },
}

/// Parses `0x1000`, `4096` or `0o777`.
fn parse_number(s: &str) -> Result<u64, String> {
    let s = s.trim().replace('_', "");
    let r = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else if let Some(o) = s.strip_prefix("0o") {
        u64::from_str_radix(o, 8)
    } else {
        s.parse()
    };
    r.map_err(|_| format!("'{s}' is not a number (use decimal or 0x hex)"))
}

/// Parses a size with an optional K, M or G suffix.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n = parse_number(num)?;
    n.checked_shl(shift).filter(|v| v >> shift == n).ok_or_else(|| format!("size '{s}' is too large"))
}

fn open() -> Result<Nvmm, ExitCode> {
    Nvmm::open().map_err(|e| fail(&e.to_string()))
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("nvmmctl: {msg}");
    ExitCode::from(EXIT_ERROR)
}

fn calc(nvmm: &Nvmm, a: u16, b: u16) -> Result<u16, nvmm::Error> {
    let machine = nvmm.create_machine()?;
    let hva = machine.hva_map_anonymous(4096)?;
    machine.gpa_map(hva, 0xffff_0000, 4096, Prot::READ | Prot::EXEC)?;
    machine.write_gpa(0xffff_0000, &guest::CALC_CODE)?;
    let mut vcpu = machine.create_vcpu(0)?;
    vcpu.update(StateMask::GPRS, |s| {
        s.gprs[Gpr::Rip] = 0;
        s.gprs[Gpr::Rax] = a.into();
        s.gprs[Gpr::Rbx] = b.into();
    })?;
    loop {
        match vcpu.run()? {
            Exit::None => continue,
            Exit::Halted => break,
            other => {
                return Err(nvmm::Error::WrongExit { what: "the calculator guest", expected: exit_name(&other) });
            }
        }
    }
    vcpu.get_state(StateMask::GPRS)?;
    Ok(vcpu.state().gprs[Gpr::Rbx] as u16)
}

fn exit_name(e: &Exit<'_>) -> &'static str {
    match e {
        Exit::Shutdown => "HLT, not a triple fault",
        _ => "HLT",
    }
}

fn run_cmd(nvmm: &Nvmm, cfg: &RunConfig) -> ExitCode {
    let mut console = std::io::stdout();
    let mut log = std::io::stderr();
    match run::run(nvmm, cfg, &mut console, &mut log) {
        Err(e) => fail(&e.0),
        Ok(o) => {
            let _ = console.flush();
            eprintln!("nvmmctl: {}", run::describe(&o));
            ExitCode::from(match o {
                Outcome::Halted { .. } => 0,
                Outcome::Fault { .. } | Outcome::TripleFault => EXIT_GUEST_FAULT,
                Outcome::Unsupported(_) => EXIT_GUEST_UNSUPPORTED,
                Outcome::TimedOut | Outcome::Quit | Outcome::Killed => EXIT_TIMEOUT,
            })
        }
    }
}

fn load_image(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read image {}: {e}", path.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CoreInfo { file } = &cli.command {
        return match nvmm_coredump::read_core(file) {
            Ok(info) => {
                print!("{info}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("{}: {e}", file.display())),
        };
    }
    let nvmm = match open() {
        Ok(n) => n,
        Err(code) => return code,
    };
    match cli.command {
        Command::Identify => {
            let mut out = std::io::stdout().lock();
            match identify::identify(&nvmm, &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::List => {
            let (rows, unreadable) = list::scan(Path::new("/proc"));
            let mut out = std::io::stdout().lock();
            if let Err(e) = list::print(&rows, &mut out) {
                return fail(&e.to_string());
            }
            if unreadable > 0 {
                eprintln!("nvmmctl: {unreadable} processes could not be inspected (run as root to see all VMs)");
            }
            ExitCode::SUCCESS
        }
        Command::Calc { a, b } => match calc(&nvmm, a, b) {
            Ok(r) => {
                println!("Result: {r}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        Command::CoreInfo { .. } => unreachable!("handled before KVM is opened"),
        Command::Run { image, gpa, mode, entry, mem, timeout, core, gdb, snapshot_at, save, restore } => {
            let save_at = snapshot_at.zip(save);
            let timeout = match timeout {
                Some(t) if !(t.is_finite() && t > 0.0) => {
                    return fail("--timeout must be a positive number of seconds");
                }
                t => t.map(Duration::from_secs_f64),
            };
            let cfg = match image {
                None => RunConfig {
                    image: guest::demo_image(),
                    gpa: guest::DEMO_GPA,
                    mode: Mode::Real,
                    entry: guest::DEMO_GPA,
                    mem: 0xa_0000,
                    timeout,
                    core,
                    gdb,
                    save_at,
                    restore,
                },
                Some(path) => {
                    let image = match load_image(&path) {
                        Ok(i) => i,
                        Err(e) => return fail(&e),
                    };
                    let (Some(gpa), Some(mode)) = (gpa, mode) else {
                        return fail("--image needs --gpa and --mode");
                    };
                    RunConfig {
                        image,
                        gpa,
                        mode,
                        entry: entry.unwrap_or(gpa),
                        mem: mem.unwrap_or(16 << 20),
                        timeout,
                        core,
                        gdb,
                        save_at,
                        restore,
                    }
                }
            };
            run_cmd(&nvmm, &cfg)
        }
        Command::Bench { name, iterations, rounds } => {
            if iterations == 0 || rounds == 0 {
                return fail("--iterations and --rounds must be positive");
            }
            let cfg = bench::BenchConfig { iterations, rounds };
            let mut out = std::io::stdout().lock();
            match bench::bench(&nvmm, &name, cfg, &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_sizes() {
        assert_eq!(parse_number("0x7c00"), Ok(0x7c00));
        assert_eq!(parse_number("4096"), Ok(4096));
        assert!(parse_number("0xzz").is_err());
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert!(parse_size("99999999999G").is_err());
    }
}
