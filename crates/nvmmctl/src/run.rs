//! `nvmmctl run`: runs a flat binary (or the built-in demo guest) in real,
//! 32-bit protected or 64-bit long mode, with a console port, a small MMIO
//! device and exception reporting.
//!
//! Machine layout:
//! - RAM at `[0, mem)`, the image copied at `gpa`;
//! - port 0xE9: console (bytes written go to standard output);
//! - MMIO device at 0xFED00000 (and at 0xD0000 when RAM does not cover it):
//!   register 0 reads "NVMM" (0x4d4d564e), register 4 is a scratch register;
//! - protected and long mode: a GDT, an IDT whose 32 exception vectors
//!   report the exception on port 0xF0, and (long mode) page tables
//!   identity-mapping the low 4 GiB, all in 64 KiB at 0xC0000000;
//! - the stack starts at the top of RAM (real mode: 0:7C00).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use nvmm_coredump::WriteCore;

use nvmm::x86::modes;
use nvmm::{Exit, Gpr, Machine, MemAccess, Nvmm, Prot, Seg, StateMask, Vcpu};

use crate::guest::{FAULT_STUB_SIZE, exception_name, fault_stub};

/// CPU mode the guest starts in.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Mode {
    /// 16-bit real mode.
    Real,
    /// Flat 32-bit protected mode, no paging.
    Prot32,
    /// 64-bit long mode, low 4 GiB identity-mapped.
    Long64,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The flat binary.
    pub image: Vec<u8>,
    /// Where it is loaded.
    pub gpa: u64,
    /// CPU mode.
    pub mode: Mode,
    /// First instruction (defaults to `gpa`).
    pub entry: u64,
    /// RAM size.
    pub mem: u64,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Write a core here when the guest faults, triple-faults or the
    /// program gets SIGQUIT.
    pub core: Option<PathBuf>,
    /// Wait for a debugger here before the first instruction.
    pub gdb: Option<nvmm_gdb::Address>,
    /// Save a snapshot of the guest to the path after this many handled
    /// exits.
    pub save_at: Option<(u64, PathBuf)>,
    /// Start from this snapshot file instead of the image.
    pub restore: Option<PathBuf>,
}

/// How the guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// HLT.
    Halted {
        /// Exits handled.
        exits: u64,
    },
    /// An exception reached the IDT.
    Fault {
        /// Vector.
        vector: u8,
        /// Error code, for exceptions that push one.
        error_code: Option<u64>,
        /// Faulting instruction.
        rip: u64,
    },
    /// Triple fault.
    TripleFault,
    /// The timeout expired.
    TimedOut,
    /// The debugger killed the guest.
    Killed,
    /// SIGQUIT stopped the guest (with `--core`).
    Quit,
    /// Something the host cannot handle.
    Unsupported(String),
}

/// A host-side failure: bad arguments or an nvmm error.
#[derive(Debug)]
pub struct RunError(pub String);

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<nvmm::Error> for RunError {
    fn from(e: nvmm::Error) -> RunError {
        RunError(e.to_string())
    }
}

const SYS: u64 = 0xc000_0000;
const SYS_SIZE: u64 = 0x10000;
const GDT: u64 = SYS;
const IDT: u64 = SYS + 0x1000;
const STUBS: u64 = SYS + 0x2000;
const PML4: u64 = SYS + 0x4000;
const CONSOLE_PORT: u16 = 0xe9;
const FAULT_PORT: u16 = 0xf0;
const DEVICE: u64 = 0xfed0_0000;
const LOW_DEVICE: u64 = 0xd_0000;
const DEVICE_ID: u32 = u32::from_le_bytes(*b"NVMM");
/// Largest RAM: the system area and devices sit above it.
pub const MAX_MEM: u64 = SYS;

/// The demo device: an ID register and a scratch register.
struct Device {
    scratch: u32,
}

impl Device {
    fn base(&self, gpa: u64, mem: u64) -> Option<u64> {
        [DEVICE, LOW_DEVICE].into_iter().find(|&b| (b..b + 0x1000).contains(&gpa) && (b >= mem || b == DEVICE))
    }
}

fn check(cfg: &RunConfig) -> Result<(), RunError> {
    if cfg.mem == 0 || cfg.mem % 4096 != 0 || cfg.mem > MAX_MEM {
        return Err(RunError(format!(
            "--mem must be a multiple of 4096 between 4096 and {MAX_MEM:#x} (got {:#x})",
            cfg.mem
        )));
    }
    let end = cfg.gpa.checked_add(cfg.image.len() as u64);
    if end.is_none_or(|e| e > cfg.mem) {
        return Err(RunError(format!(
            "the image ({} bytes at {:#x}) does not fit in guest RAM ({:#x} bytes); raise --mem or lower --gpa",
            cfg.image.len(),
            cfg.gpa,
            cfg.mem
        )));
    }
    if cfg.mode == Mode::Real && cfg.entry >= 0x10_0000 {
        return Err(RunError(format!("real-mode entry {:#x} is above 1 MiB", cfg.entry)));
    }
    if cfg.mode == Mode::Prot32 && cfg.entry > u64::from(u32::MAX) {
        return Err(RunError(format!("32-bit entry {:#x} is above 4 GiB", cfg.entry)));
    }
    Ok(())
}

pub(crate) fn setup(nvmm: &Nvmm, cfg: &RunConfig) -> Result<(Machine, Vcpu), RunError> {
    check(cfg)?;
    let machine = nvmm.create_machine()?;
    machine.map_anonymous(0, cfg.mem, Prot::ALL)?;
    machine.write_gpa(cfg.gpa, &cfg.image)?;
    let mut vcpu = machine.create_vcpu(0)?;
    if cfg.mode == Mode::Real {
        vcpu.update(StateMask::GPRS | StateMask::SEGS, |s| {
            modes::real_mode_entry(s, cfg.entry);
            s.gprs[Gpr::Rsp] = 0x7c00;
        })?;
        return Ok((machine, vcpu));
    }
    machine.map_anonymous(SYS, SYS_SIZE, Prot::ALL)?;
    machine.write_gpa(GDT, &modes::gdt_bytes())?;
    let long = cfg.mode == Mode::Long64;
    for v in 0..32u8 {
        let stub = STUBS + u64::from(v) * FAULT_STUB_SIZE;
        machine.write_gpa(stub, &fault_stub(v))?;
        machine.write_gpa(IDT + u64::from(v) * if long { 16 } else { 8 }, &gate(stub, long))?;
    }
    if long {
        machine.write_gpa(PML4, &modes::identity_page_tables(PML4, 4 << 30))?;
    }
    vcpu.update(StateMask::ALL, |s| {
        if long {
            modes::long_mode(s, GDT, PML4);
        } else {
            modes::protected_mode(s, GDT);
        }
        s.segs[Seg::Idt].base = IDT;
        s.segs[Seg::Idt].limit = if long { 32 * 16 - 1 } else { 32 * 8 - 1 };
        s.gprs[Gpr::Rip] = cfg.entry;
        s.gprs[Gpr::Rsp] = cfg.mem & !0xf;
    })?;
    Ok((machine, vcpu))
}

/// An interrupt gate to `handler` (32-bit: 8 bytes; 64-bit: 16 bytes).
fn gate(handler: u64, long: bool) -> Vec<u8> {
    let sel = u64::from(if long { modes::CODE64_SELECTOR } else { modes::CODE32_SELECTOR });
    let low = (handler & 0xffff) | (sel << 16) | (0x8e00 << 32) | (((handler >> 16) & 0xffff) << 48);
    let mut g = low.to_le_bytes().to_vec();
    if long {
        g.extend_from_slice(&(handler >> 32).to_le_bytes());
    }
    g
}

/// Exceptions that push an error code.
fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 30)
}

/// Runs the guest until it halts, faults or times out. What the guest
/// prints goes to `console`; the device's activity and warnings to `log`.
pub fn run(
    nvmm: &Nvmm,
    cfg: &RunConfig,
    console: &mut (dyn Write + Send),
    log: &mut (dyn Write + Send),
) -> Result<Outcome, RunError> {
    let restored;
    let (machine, mut vcpu, cfg) = match &cfg.restore {
        Some(path) => {
            let (m, v, mode, mem) = crate::snapshot::restore(nvmm, path)?;
            restored = RunConfig { mode, mem, ..cfg.clone() };
            (m, v, &restored)
        }
        None => {
            let (m, v) = setup(nvmm, cfg)?;
            (m, v, cfg)
        }
    };
    if let Some(address) = &cfg.gdb {
        let (outcome, v) = crate::debug::run_under_debugger(&machine, vcpu, cfg, address, console, log)?;
        vcpu = v;
        if let (Some(path), Outcome::Fault { .. } | Outcome::TripleFault) = (&cfg.core, &outcome) {
            write_core(&machine, &mut vcpu, path, log)?;
        }
        return Ok(outcome);
    }
    let (cancel, cancelled) = mpsc::channel::<()>();
    if let Some(t) = cfg.timeout {
        let stop = vcpu.stop_handle();
        std::thread::spawn(move || {
            if cancelled.recv_timeout(t).is_err() {
                stop.stop();
            }
        });
    }
    let quit = Arc::new(AtomicBool::new(false));
    let signals = match &cfg.core {
        Some(_) => Some(quit_on_sigquit(&vcpu, &quit)?),
        None => None,
    };
    let mut outcome = exit_loop(&mut Vmm::new(&machine, cfg, console, log), &mut vcpu);
    drop(cancel);
    if let Some(s) = signals {
        s.close();
    }
    if matches!(outcome, Ok(Outcome::TimedOut)) && quit.load(Ordering::SeqCst) {
        outcome = Ok(Outcome::Quit);
    }
    let _ = console.flush();
    if let (Some(path), Ok(Outcome::Fault { .. } | Outcome::TripleFault | Outcome::Quit)) = (&cfg.core, &outcome) {
        write_core(&machine, &mut vcpu, path, log)?;
    }
    outcome
}

/// Writes the guest's core to `path`.
fn write_core(machine: &Machine, vcpu: &mut Vcpu, path: &std::path::Path, log: &mut dyn Write) -> Result<(), RunError> {
    let stats = machine
        .write_core_file(&mut [vcpu], path)
        .map_err(|e| RunError(format!("cannot write the core {}: {e}", path.display())))?;
    let _ = writeln!(
        log,
        "[nvmmctl] core written to {} ({} VCPU, {} bytes of guest memory, {} segments)",
        path.display(),
        stats.vcpus,
        stats.data_written,
        stats.loads
    );
    Ok(())
}

/// Stops the guest on SIGQUIT (and notes why); the handle closes the
/// signal thread.
fn quit_on_sigquit(vcpu: &Vcpu, quit: &Arc<AtomicBool>) -> Result<signal_hook::iterator::Handle, RunError> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGQUIT])
        .map_err(|e| RunError(format!("cannot catch SIGQUIT: {e}")))?;
    let handle = signals.handle();
    let stop = vcpu.stop_handle();
    let quit = Arc::clone(quit);
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            quit.store(true, Ordering::SeqCst);
            stop.stop();
        }
    });
    Ok(handle)
}

pub(crate) fn exit_loop(vmm: &mut Vmm<'_>, vcpu: &mut Vcpu) -> Result<Outcome, RunError> {
    loop {
        match vcpu.run()? {
            Exit::None | Exit::IntReady | Exit::NmiReady | Exit::TprChanged => continue,
            Exit::Stopped => return Ok(Outcome::TimedOut),
            _ => {}
        }
        if let Some(outcome) = vmm.handle(vcpu)? {
            return Ok(outcome);
        }
        if let Some((at, path)) = &vmm.cfg.save_at
            && vmm.exits == *at
        {
            crate::snapshot::save(vmm.machine, vcpu, *at, path, vmm.log)?;
        }
    }
}

/// The machine's devices and what they report: the console, the MMIO
/// device, the fault port, MSRs.
pub(crate) struct Vmm<'a> {
    machine: &'a Machine,
    cfg: &'a RunConfig,
    device: Device,
    exits: u64,
    console: &'a mut (dyn Write + Send),
    log: &'a mut (dyn Write + Send),
}

impl<'a> Vmm<'a> {
    /// The devices of a fresh machine.
    pub(crate) fn new(
        machine: &'a Machine,
        cfg: &'a RunConfig,
        console: &'a mut (dyn Write + Send),
        log: &'a mut (dyn Write + Send),
    ) -> Vmm<'a> {
        Vmm { machine, cfg, device: Device { scratch: 0 }, exits: 0, console, log }
    }

    /// The log.
    pub(crate) fn log(&mut self) -> &mut (dyn Write + Send) {
        self.log
    }

    /// Handles the VCPU's last exit; `Some` when the guest is done.
    pub(crate) fn handle(&mut self, vcpu: &mut Vcpu) -> Result<Option<Outcome>, RunError> {
        let stubs = STUBS..STUBS + 32 * FAULT_STUB_SIZE;
        let (console, log) = (&mut *self.console, &mut *self.log);
        let fault_port_hit;
        match vcpu.last_exit() {
            Exit::None | Exit::IntReady | Exit::NmiReady | Exit::TprChanged | Exit::Stopped => return Ok(None),
            Exit::Halted => return Ok(Some(Outcome::Halted { exits: self.exits })),
            Exit::Shutdown => return Ok(Some(Outcome::TripleFault)),
            Exit::Io(mut io) => {
                self.exits += 1;
                fault_port_hit = io.port() == FAULT_PORT && !io.is_in();
                if fault_port_hit {
                    // Handled below, once the exit's borrow ends.
                } else if io.port() == CONSOLE_PORT && !io.is_in() {
                    let _ = console.write_all(io.data());
                    if io.data().contains(&b'\n') {
                        let _ = console.flush();
                    }
                } else if io.port() == CONSOLE_PORT {
                    io.data_mut().fill(0xe9);
                } else if io.is_in() {
                    let _ = writeln!(log, "[nvmmctl] unhandled read of port {:#x} ({} bytes)", io.port(), io.size());
                } else {
                    let _ = writeln!(log, "[nvmmctl] unhandled write to port {:#x}: {:02x?}", io.port(), io.data());
                }
            }
            Exit::Memory(mut m) => {
                self.exits += 1;
                fault_port_hit = false;
                match self.device.base(m.gpa(), self.cfg.mem) {
                    Some(base) => device_access(&mut self.device, m.gpa() - base, &mut m, console)?,
                    None => {
                        let what = if m.access() == MemAccess::Write { "write to" } else { "read of" };
                        let _ = writeln!(log, "[nvmmctl] unhandled MMIO {what} {:#x} ({} bytes)", m.gpa(), m.size());
                    }
                }
            }
            Exit::Rdmsr(mut r) => {
                self.exits += 1;
                fault_port_hit = false;
                r.fail();
                let _ = writeln!(log, "[nvmmctl] RDMSR {:#x}: unknown MSR, the guest gets #GP", r.msr());
            }
            Exit::Wrmsr(mut w) => {
                self.exits += 1;
                fault_port_hit = false;
                w.fail();
                let _ = writeln!(log, "[nvmmctl] WRMSR {:#x}: unknown MSR, the guest gets #GP", w.msr());
            }
            Exit::EmulationFailure(f) => {
                let bytes = f.instruction_bytes().map_or_else(|| "unknown".into(), |b| format!("{b:02x?}"));
                let rip = rip_of(vcpu)?;
                return Ok(Some(Outcome::Unsupported(format!(
                    "KVM could not emulate the instruction at RIP {rip:#x} (bytes {bytes})"
                ))));
            }
            Exit::Invalid(i) => {
                return Ok(Some(Outcome::Unsupported(format!(
                    "unexpected KVM exit {} (detail {:#x})",
                    i.hwcode, i.detail
                ))));
            }
            other => return Ok(Some(Outcome::Unsupported(format!("unexpected exit {other:?}")))),
        }
        if fault_port_hit {
            vcpu.get_state(StateMask::GPRS)?;
            let rip = vcpu.state().gprs[Gpr::Rip];
            if stubs.contains(&rip) {
                let vector = ((rip - STUBS) / FAULT_STUB_SIZE) as u8;
                return fault_report(self.machine, vcpu, self.cfg.mode, vector).map(Some);
            }
            let _ = writeln!(self.log, "[nvmmctl] unhandled write to port {FAULT_PORT:#x}");
        }
        Ok(None)
    }
}

fn rip_of(vcpu: &mut Vcpu) -> Result<u64, RunError> {
    vcpu.get_state(StateMask::GPRS)?;
    Ok(vcpu.state().gprs[Gpr::Rip])
}

fn device_access(
    device: &mut Device,
    offset: u64,
    m: &mut nvmm::MemoryExit<'_>,
    console: &mut dyn Write,
) -> Result<(), RunError> {
    let mut value = [0u8; 8];
    let n = m.size().min(4);
    match (m.access(), offset) {
        (MemAccess::Write, 4) => {
            value[..n].copy_from_slice(&m.data()[..n]);
            device.scratch = u32::from_le_bytes(value[..4].try_into().expect("4 bytes"));
            let _ = writeln!(console, "[device] guest wrote {:#x} to the scratch register", device.scratch);
        }
        (MemAccess::Write, _) => {
            let _ = writeln!(console, "[device] guest wrote to read-only register {offset:#x}; ignored");
        }
        (_, 0) => {
            value[..4].copy_from_slice(&DEVICE_ID.to_le_bytes());
            let _ = writeln!(console, "[device] guest read the ID register: {DEVICE_ID:#x}");
        }
        (_, 4) => {
            value[..4].copy_from_slice(&device.scratch.to_le_bytes());
            let _ = writeln!(console, "[device] guest read the scratch register: {:#x}", device.scratch);
        }
        _ => value = [0xff; 8],
    }
    let size = m.size();
    m.data_mut().copy_from_slice(&value[..size]);
    Ok(())
}

/// Reads the exception frame the CPU pushed and describes the fault.
fn fault_report(machine: &Machine, vcpu: &mut Vcpu, mode: Mode, vector: u8) -> Result<Outcome, RunError> {
    let rsp = vcpu.state().gprs[Gpr::Rsp];
    let width = if mode == Mode::Long64 { 8 } else { 4 };
    let read = |at: u64| -> Result<u64, RunError> {
        let mut b = [0u8; 8];
        machine.read_gpa(at, &mut b[..width])?;
        Ok(u64::from_le_bytes(b))
    };
    let (error_code, frame) = if has_error_code(vector) { (Some(read(rsp)?), rsp + width as u64) } else { (None, rsp) };
    Ok(Outcome::Fault { vector, error_code, rip: read(frame)? })
}

/// A line describing an outcome.
pub fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Halted { exits } => format!("guest halted after {exits} exits"),
        Outcome::Fault { vector, error_code: Some(e), rip } => {
            format!("guest fault: {} (vector {vector}, error code {e:#x}) at RIP {rip:#x}", exception_name(*vector))
        }
        Outcome::Fault { vector, error_code: None, rip } => {
            format!("guest fault: {} (vector {vector}) at RIP {rip:#x}", exception_name(*vector))
        }
        Outcome::TripleFault => "guest triple-faulted (shutdown)".into(),
        Outcome::TimedOut => "guest stopped: timeout expired".into(),
        Outcome::Quit => "guest stopped: SIGQUIT".into(),
        Outcome::Killed => "guest killed by the debugger".into(),
        Outcome::Unsupported(why) => format!("guest stopped: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        let cfg = RunConfig {
            image: vec![0; 100],
            gpa: 0x1000,
            mode: Mode::Real,
            entry: 0x1000,
            mem: 0x2000,
            timeout: None,
            core: None,
            gdb: None,
            save_at: None,
            restore: None,
        };
        assert!(check(&cfg).is_ok());
        assert!(check(&RunConfig { gpa: 0x1fff, ..cfg.clone() }).unwrap_err().0.contains("does not fit"));
        assert!(check(&RunConfig { mem: 100, ..cfg.clone() }).unwrap_err().0.contains("--mem"));
        assert!(check(&RunConfig { mem: MAX_MEM + 4096, ..cfg.clone() }).is_err());
        assert!(check(&RunConfig { entry: 0x10_0000, ..cfg.clone() }).unwrap_err().0.contains("1 MiB"));
        assert!(check(&RunConfig { gpa: u64::MAX - 10, ..cfg }).is_err());
    }

    #[test]
    fn gates() {
        let g = gate(0x1234_5678, false);
        assert_eq!(u64::from_le_bytes(g[..8].try_into().unwrap()), 0x1234_8e00_0008_5678);
        assert_eq!(gate(0xc000_2000, true).len(), 16);
    }
}
