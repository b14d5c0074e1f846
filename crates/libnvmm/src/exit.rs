//! Filling `struct nvmm_x86_exit` from an exit of the `nvmm` crate.

use nvmm_core::exit::reason;
use nvmm_core::{Exit, Vcpu};

use crate::abi::{self, ExitIo, ExitMemory, ExitPayload, ExitRdmsr, ExitStateC, ExitWord, ExitWrmsr};

/// What an exit says, owned (the exit borrows the VCPU, which the details
/// below need again).
pub(crate) enum Summary {
    Plain(u64),
    Memory { gpa: u64, write: bool, bytes: Option<([u8; 15], u8)> },
    Io { port: u16, is_in: bool, size: u8 },
    Rdmsr { msr: u32, npc: u64 },
    Wrmsr { msr: u32, val: u64, npc: u64 },
    Invalid { hwcode: u64 },
}

impl Summary {
    pub(crate) fn of(exit: &Exit<'_>) -> Summary {
        match exit {
            Exit::Memory(m) => Summary::Memory { gpa: m.gpa(), write: m.is_write(), bytes: None },
            Exit::EmulationFailure(f) => {
                let bytes = f.instruction_bytes().map(|b| {
                    let mut buf = [0u8; 15];
                    let n = b.len().min(15);
                    buf[..n].copy_from_slice(&b[..n]);
                    (buf, n as u8)
                });
                Summary::Memory { gpa: 0, write: false, bytes }
            }
            Exit::Io(io) => Summary::Io { port: io.port(), is_in: io.is_in(), size: io.size() as u8 },
            Exit::Rdmsr(r) => Summary::Rdmsr { msr: r.msr(), npc: r.npc() },
            Exit::Wrmsr(w) => Summary::Wrmsr { msr: w.msr(), val: w.value(), npc: w.npc() },
            Exit::Invalid(i) => Summary::Invalid { hwcode: i.hwcode },
            other => Summary::Plain(other.reason()),
        }
    }
}

/// Builds the C exit. Details the exit does not carry (the I/O
/// instruction's form and `npc`, `exitstate`) come from the VCPU; if one
/// cannot be found the field is left zero rather than failing the run.
pub(crate) fn build(summary: &Summary, vcpu: &mut Vcpu) -> abi::Exit {
    let mut out = abi::Exit::default();
    match *summary {
        Summary::Plain(r) => out.reason = r,
        Summary::Memory { gpa, write, bytes } => {
            out.reason = reason::MEMORY;
            let (inst_bytes, inst_len) = bytes.unwrap_or(([0; 15], 0));
            let prot = if write { libc::PROT_WRITE } else { libc::PROT_READ };
            out.u = ExitPayload { mem: ExitMemory { prot, gpa, inst_len, inst_bytes } };
        }
        Summary::Io { port, is_in, size } => {
            out.reason = reason::IO;
            out.u = ExitPayload { io: io_payload(vcpu, port, is_in, size) };
        }
        Summary::Rdmsr { msr, npc } => {
            out.reason = reason::RDMSR;
            out.u = ExitPayload { rdmsr: ExitRdmsr { msr, npc } };
        }
        Summary::Wrmsr { msr, val, npc } => {
            out.reason = reason::WRMSR;
            out.u = ExitPayload { wrmsr: ExitWrmsr { msr, val, npc } };
        }
        Summary::Invalid { hwcode } => {
            out.reason = reason::INVALID;
            out.u = ExitPayload { word: ExitWord { value: hwcode } };
        }
    }
    if let Ok(s) = vcpu.exit_state() {
        out.exitstate = ExitStateC {
            rflags: s.rflags,
            cr8: s.cr8,
            bits: u64::from(s.int_shadow)
                | u64::from(s.int_window_exiting) << 1
                | u64::from(s.nmi_window_exiting) << 2
                | u64::from(s.evt_pending) << 3,
        };
    }
    out
}

/// The I/O payload: the exit's port, direction and size, the rest from
/// the instruction at RIP.
fn io_payload(vcpu: &mut Vcpu, port: u16, is_in: bool, size: u8) -> ExitIo {
    let (string, rep, seg, address_size, npc) = match vcpu.io_instruction() {
        Ok((insn, npc)) => (insn.string, insn.rep, insn.segment.map_or(-1, |s| s as i8), insn.address_size, npc),
        Err(_) => (false, false, -1, 0, 0),
    };
    ExitIo { is_in, port, seg, address_size, operand_size: size, rep, string, npc }
}
