//! What NVMM reports with an exit besides its reason: the partial state
//! of every exit (`exit->exitstate`) and NetBSD's C exit structure.
//!
//! Cost of each field of [`NbExit`], once the VCPU's exits are read this
//! way (KVM then copies registers and events through `kvm_run` at every
//! exit): `reason`, the memory exit's `gpa` and `prot`, the MSR exits'
//! `msr` and `val`, `exitstate`: no system call; the I/O exit's `npc`,
//! `rep`, `str`, `seg` and sizes, the MSR exits' `npc`: a decode of the
//! instruction bytes at RIP in guest memory, no system call but for an
//! `out; out` pair (see [`Vcpu::io_instruction`]).

use super::Vcpu;
use crate::backend::{Parts, VcpuBackend};
use crate::error::Result;
use crate::exit::ExitState;
use crate::exit::record::{ExitRecord, InsnBytes};
use crate::netbsd::{NbExit, NbExitIo, NbExitMemory, NbExitPayload, NbExitRdmsr, NbExitState, NbExitWrmsr};
use crate::x86::state::Cr;

/// SVM's nested-page-fault exit code, in an emulation failure's exit
/// information (KVM then reports the faulting address too).
const SVM_EXIT_NPF: u64 = 0x400;

impl Vcpu {
    /// RFLAGS, CR8, the interrupt shadow, the armed window exits and
    /// whether an event is pending, as of the last exit
    /// (`exit->exitstate`); after a run that returned without entering the
    /// guest (a stop, a window exit), with the CR8, interrupt state and
    /// event the program set or injected before it, as NetBSD's kernel
    /// stores them first. Free once KVM copies the registers and events
    /// out at every exit, which it does for a VCPU whose exits are read
    /// this way.
    pub fn exit_state(&mut self) -> Result<ExitState> {
        self.backend.want(Parts::GPRS | Parts::INTR);
        let rflags = self.rflags_now()?;
        let events = self.backend.event_status()?;
        // What the program set or injected since, when the run returned
        // before storing it (a stop, a window exit): NetBSD's kernel
        // stores it first.
        let cr8 = if self.cache.dirty.intersects(Parts::CR) {
            self.comm.state().crs[Cr::Cr8]
        } else {
            u64::from(self.backend.tpr())
        };
        let int_shadow = if self.cache.dirty.intersects(Parts::INTR) {
            self.comm.state().intr.int_shadow()
        } else {
            events.int_shadow
        };
        let windows = self.pending_windows();
        Ok(ExitState {
            rflags,
            cr8,
            int_shadow,
            int_window_exiting: windows.int,
            nmi_window_exiting: windows.nmi,
            evt_pending: events.pending || self.event_waiting(),
        })
    }

    /// Runs the VCPU like [`Vcpu::run`] and returns NetBSD's exit structure
    /// for the exit it stopped at, as `nvmm_vcpu_run` fills it (see
    /// [`Vcpu::netbsd_exit`]), without building the Rust view of the exit.
    #[inline(always)]
    pub fn run_netbsd(&mut self) -> Result<NbExit> {
        self.run_to_exit_inlined()?;
        Ok(self.netbsd_exit())
    }

    /// NetBSD's `struct nvmm_vcpu_exit` for the last exit, as
    /// `nvmm_vcpu_run` fills it. NetBSD's kernel also provides state with
    /// I/O and memory exits (GPRS, SEGS, CRS and MSRS marked cached, a
    /// shortcut for its own assists); here `nvmm_vcpu_getstate` fetches
    /// them when asked, showing the instruction not done the same way, and
    /// without a system call for GPRS, SEGS and CRS (the registers were
    /// copied out with the exit). Providing GPRS at every exit cost a
    /// register conversion and three register-set copies that the exit loop
    /// of most programs never reads.
    /// A detail that cannot be found is left zero rather than failing.
    pub fn netbsd_exit(&mut self) -> NbExit {
        // The exits of every emulator's loop first, each tested on its
        // own: one `match` over every kind compiles to a jump table, an
        // indirect branch the host's branch-predictor barrier at every VM
        // exit makes mispredict.
        let mut out = match self.last {
            ExitRecord::Io { port, size, is_in, .. } => {
                let io = match self.io_site() {
                    Ok(site) => NbExitIo {
                        is_in,
                        port,
                        seg: site.insn.segment.map_or(-1, |s| s as i8),
                        address_size: site.insn.address_size,
                        operand_size: size,
                        rep: site.insn.rep,
                        string: site.insn.string,
                        npc: site.npc,
                    },
                    Err(_) => NbExitIo {
                        is_in,
                        port,
                        seg: -1,
                        address_size: 0,
                        operand_size: size,
                        rep: false,
                        string: false,
                        npc: 0,
                    },
                };
                NbExit { reason: crate::exit::reason::IO, u: NbExitPayload { io }, ..NbExit::default() }
            }
            ExitRecord::Memory { gpa, write, .. } => {
                let prot = if write { libc::PROT_WRITE } else { libc::PROT_READ };
                let mem = NbExitMemory { prot, gpa, inst_len: 0, inst_bytes: [0; 15] };
                NbExit { reason: crate::exit::reason::MEMORY, u: NbExitPayload { mem }, ..NbExit::default() }
            }
            other => self.netbsd_exit_other(other),
        };
        if let Ok(s) = self.exit_state() {
            out.exitstate = NbExitState {
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

    /// [`Vcpu::netbsd_exit`] without the exit state, for the exits other
    /// than plain I/O and memory ones.
    #[inline(never)]
    fn netbsd_exit_other(&mut self, last: ExitRecord) -> NbExit {
        let mut out = NbExit { reason: last.reason(), ..NbExit::default() };
        match last {
            ExitRecord::Fetch { gpa } => {
                out.u = NbExitPayload {
                    mem: NbExitMemory { prot: libc::PROT_EXEC, gpa, inst_len: 0, inst_bytes: [0; 15] },
                };
            }
            ExitRecord::EmulationFailure { insn: InsnBytes { bytes, len } } => {
                let info = self.failure_info();
                let (gpa, prot) = if info[0] == SVM_EXIT_NPF {
                    let prot = if info[1] & 2 != 0 {
                        libc::PROT_WRITE
                    } else if info[1] & 0x10 != 0 {
                        libc::PROT_EXEC
                    } else {
                        libc::PROT_READ
                    };
                    (info[2], prot)
                } else {
                    (0, libc::PROT_READ)
                };
                out.u = NbExitPayload { mem: NbExitMemory { prot, gpa, inst_len: len, inst_bytes: bytes } };
            }
            ExitRecord::Rdmsr { msr } => {
                out.u = NbExitPayload { rdmsr: NbExitRdmsr { msr, npc: self.msr_npc().unwrap_or(0) } };
            }
            ExitRecord::Wrmsr { msr, value } => {
                out.u = NbExitPayload { wrmsr: NbExitWrmsr { msr, val: value, npc: self.msr_npc().unwrap_or(0) } };
            }
            ExitRecord::Invalid { hwcode, .. } => out.u = NbExitPayload { word: hwcode },
            _ => {}
        }
        out
    }
}
