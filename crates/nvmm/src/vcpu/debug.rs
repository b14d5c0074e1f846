//! Guest debugging on a VCPU: the debugger's settings go to the backend,
//! and what comes back (a `#BP` or `#DB` the kernel intercepted, an `INT3`
//! the kernel's emulator gave up on) becomes an [`Exit::Debug`](crate::Exit::Debug)
//! when the debugger caused it, and goes to the guest when it did not.
//!
//! Three things the kernel does not do on every host are done here, with
//! single steps the program never sees:
//! - stepping over an execute breakpoint the VCPU stopped at (RFLAGS.RF
//!   is not honoured by KVM's emulator on hosts that emulate guest kernel
//!   code): the next run steps once with that breakpoint lifted;
//! - software breakpoints in real mode, where such hosts' emulator hands
//!   `INT3` straight to the guest's interrupt vector table: real-mode code
//!   runs one step at a time while software breakpoints exist, and the VCPU
//!   stops before executing one;
//! - data watchpoints, which that emulator does not check: while one is
//!   set the VCPU runs one step at a time and the watched bytes are
//!   compared after each step (a write that changes them is reported; the
//!   debug registers are programmed too, so hosts whose hardware checks
//!   them also report reads and writes of equal values).
//!
//! A HLT is never single-stepped: after a stepped HLT such hosts' KVM
//! leaves a halt pending (the next run executes one more instruction and
//! exits for HLT again). It runs unstepped; the debugger's step over it
//! ends past it, without halting, and the library's own steps report its
//! HLT exit. The exception: where a step that delivers an event runs the
//! first instruction of its handler too (these hosts' KVM does), a HLT
//! there does not halt (the guest goes on as after a wake-up; no HLT
//! exit).
//!
//! While the library steps for itself, a guest's own RFLAGS.TF trap is
//! lost: KVM hides TF from register reads while it single-steps, so the
//! library cannot tell the guest's trap from its own.

use super::Vcpu;
use crate::backend::{Parts, VcpuBackend};
use crate::breakpoints::INT3;
use crate::debug::{DebugEvent, DebugExit, GuestDebug, WatchKind, classify_db, dr6};
use crate::error::Result;
use crate::exit::record::{ExitRecord, InsnBytes};
use crate::vmem::GuestView;
use crate::x86::bits::cr0;
use crate::x86::event::Event;
use crate::x86::mode::{CodeRegs, linear_rip};
use crate::x86::state::{Cr, Dr, Gpr, StateMask};

/// `#DB`.
const DB_VECTOR: u8 = 1;
/// `#BP`.
const BP_VECTOR: u8 = 3;
/// The HLT opcode.
const HLT: u8 = 0xf4;

/// A VCPU's debugging state.
#[derive(Debug, Default)]
pub(super) struct DebugState {
    /// What the debugger asked for.
    user: GuestDebug,
    /// What the backend has now.
    applied: GuestDebug,
    /// Single steps block guest interrupts on this host.
    blockirq: bool,
    /// The VCPU stopped at the execute breakpoint at this linear address:
    /// the next run steps over it.
    step_over: Option<u64>,
    /// The current run single-steps for the library, not the debugger.
    internal_step: bool,
    /// The watched bytes before the current step (`None`: unreadable).
    watched: [Option<u64>; 4],
    /// The current run executes a HLT without the single step the
    /// settings ask for; its HLT exit ends the step.
    hlt_unstepped: bool,
    /// The last debug exit.
    exit: Option<DebugExit>,
    /// `user` or `applied` is not all off (kept with them: the run loop
    /// asks at every run).
    active: bool,
    /// The steps taken to find an armed interrupt window (see
    /// `window_steps`).
    pub(super) window: super::window_steps::WindowSearch,
}

impl DebugState {
    /// Records what the debugger asked for and what the backend has.
    fn set(&mut self, user: GuestDebug, applied: GuestDebug) {
        self.user = user;
        self.applied = applied;
        self.active = !(user.is_off() && applied.is_off());
    }
}

impl Vcpu {
    /// Sets what the debugger asks of this VCPU (see [`GuestDebug`]); all
    /// off ends debugging. Takes effect at the next run.
    pub fn set_guest_debug(&mut self, debug: &GuestDebug) -> Result<()> {
        self.refuse_in_assist("changing guest debugging")?;
        self.debug.blockirq = self.backend.set_guest_debug(debug)?;
        self.debug.set(*debug, *debug);
        Ok(())
    }

    /// The debugger's current settings.
    pub fn guest_debug(&self) -> &GuestDebug {
        &self.debug.user
    }

    /// Whether the debugger's single steps hold guest interrupts off
    /// (`KVM_GUESTDBG_BLOCKIRQ`): `true` while the settings single-step on
    /// a host whose KVM offers it, `false` when they do not single-step.
    /// Without it a step taken with an interrupt pending lands in the
    /// guest's interrupt handler.
    pub fn debug_blocks_interrupts(&self) -> bool {
        // (`blockirq` follows the backend's last settings, which include
        // the library's own steps.)
        self.debug.user.single_step && self.debug.blockirq
    }

    /// Whether a debugger or the library's own steps set debug settings
    /// (the backend's must then be readied before each run).
    pub(super) fn debugging(&self) -> bool {
        self.debug.active
    }

    /// Readies the backend's debug settings for the next run: the
    /// debugger's, plus the library's own steps. Returns a software
    /// breakpoint the VCPU sits on in real mode (reported without
    /// running). The run calls it only while [`Vcpu::debugging`], or with
    /// an interrupt window armed on a kernel that may miss it (see
    /// `window_steps`).
    #[cold]
    #[inline(never)]
    pub(super) fn prepare_debug_run(&mut self) -> Result<Option<ExitRecord>> {
        let mut eff = self.debug.user;
        let mut internal = false;
        let step_over = self.debug.step_over.take();
        let real_mode_bps = eff.software_breakpoints && !self.machine.breakpoints.is_empty();
        let watching = eff.watchpoints().next().is_some();
        if step_over.is_some() || real_mode_bps || watching {
            let pc = self.code_pc()?;
            if let Some(at) = step_over.filter(|&at| at == pc) {
                for slot in &mut eff.hardware {
                    if slot.is_some_and(|b| b.kind() == WatchKind::Execute && b.addr() == at) {
                        *slot = None;
                    }
                }
                eff.single_step = true;
                internal = true;
            }
            if real_mode_bps && self.comm.state().crs[Cr::Cr0] & cr0::PE == 0 {
                let regs = self.paging_of(self.comm.state());
                if self.breakpoint_at(pc, regs) {
                    return Ok(Some(self.debug_exit(DebugEvent::SoftwareBreakpoint, pc, 0)));
                }
                eff.single_step = true;
                internal = true;
            }
            if watching {
                self.debug.watched = self.watched_values(self.paging_of(self.comm.state()));
                eff.single_step = true;
                internal = true;
            }
        }
        if self.window_needs_steps()? {
            eff.single_step = true;
            internal = true;
        }
        // A stepped HLT leaves a halt pending in KVM where it emulates guest
        // kernel code: the next run executes one more instruction and then
        // exits for HLT. A HLT runs unstepped (its exit comes at once, no
        // device has to answer it); with an event to deliver first, the
        // guest starts elsewhere.
        self.debug.hlt_unstepped = eff.single_step && !self.event_waiting() && self.at_hlt()?;
        if self.debug.hlt_unstepped {
            eff.single_step = false;
            internal = false;
        }
        self.debug.internal_step = internal && !self.debug.user.single_step;
        if eff != self.debug.applied {
            self.debug.blockirq = self.backend.set_guest_debug(&eff)?;
            self.debug.set(self.debug.user, eff);
        }
        Ok(None)
    }

    /// The linear address of RIP, with what locating the code needs in the
    /// cache (not the other MSRs: an ioctl).
    fn code_pc(&mut self) -> Result<u64> {
        self.get_parts(Parts::GPRS | Parts::SEGS | Parts::PAGING)?;
        Ok(linear_rip(self.comm.state()))
    }

    /// Whether the instruction at RIP is a HLT. (Asked before every step:
    /// from the code registers alone, or from the state the program set.)
    fn at_hlt(&mut self) -> Result<bool> {
        let code = if self.cache.dirty.intersects(Parts::GPRS | Parts::SEGS | Parts::PAGING) {
            self.get_parts(Parts::GPRS | Parts::SEGS | Parts::PAGING)?;
            CodeRegs::of(self.comm.state())
        } else {
            self.backend.code_regs()?
        };
        let mem = self.machine.memory();
        let mut byte = [0u8];
        let view = GuestView::new(&mem, self.paging_of_code(&code));
        Ok(view.read(code.linear_rip(), &mut byte).done == 1 && byte[0] == HLT)
    }

    /// Lets the backend finish the instruction it has pending without
    /// entering the guest ([`VcpuBackend::finish_pending`]). When the run
    /// that stopped at that instruction was one of the library's own
    /// steps, finishing it ends the step with a single-step trap: that
    /// trap is dropped (the step did what it was for), where kept for the
    /// next run it would reach the guest as its own `#DB`. A trap the
    /// debugger asked for, or one that must be checked for a watchpoint, is
    /// kept.
    pub(super) fn finish_pending_instruction(&mut self) -> Result<Option<ExitRecord>> {
        let next = self.backend.finish_pending()?;
        let own_step = self.debug.internal_step && self.debug.user.watchpoints().next().is_none();
        Ok(match next {
            Some(ExitRecord::Trap { vector: DB_VECTOR, dr6: bits, .. }) if own_step && bits & dr6::BS != 0 => None,
            other => other,
        })
    }

    /// The exit for a HLT exit while debugging: the end of a debugger's
    /// step over a HLT run unstepped (past it, without halting, as KVM
    /// steps a HLT), a HLT exit otherwise.
    #[cold]
    #[inline(never)]
    pub(super) fn halt_while_debugging(&mut self) -> Result<ExitRecord> {
        if !std::mem::take(&mut self.debug.hlt_unstepped) || !self.debug.user.single_step {
            return Ok(ExitRecord::Halted);
        }
        let pc = self.code_pc()?;
        Ok(self.debug_exit(DebugEvent::SingleStep, pc, dr6::BS))
    }

    /// What an intercepted exception `vector` (with `dr6` for `#DB`, the
    /// linear `pc`) means: a debug exit, or `None` once it was handed to
    /// the guest or was the library's own step.
    pub(super) fn debug_trap(&mut self, vector: u8, pc: u64, dr6_bits: u64) -> Result<Option<ExitRecord>> {
        match vector {
            BP_VECTOR if self.is_our_breakpoint(pc) => Ok(Some(self.debug_exit(DebugEvent::SoftwareBreakpoint, pc, 0))),
            BP_VECTOR => {
                // The guest's own INT3: RIP is on it; the #BP it raises is
                // a trap, returning past it.
                self.get_state(StateMask::GPRS)?;
                let rip = &mut self.comm.state_mut().gprs[Gpr::Rip];
                *rip = rip.wrapping_add(1);
                self.set_state(StateMask::GPRS)?;
                self.inject_internal(Event::exception(BP_VECTOR, 0));
                Ok(None)
            }
            DB_VECTOR => match classify_db(&self.debug.user, dr6_bits & dr6::B_MASK)
                .or_else(|| self.watch_hit(dr6_bits))
                .or_else(|| classify_db(&self.debug.user, dr6_bits))
            {
                Some(event) => {
                    if let DebugEvent::HardwareBreakpoint { .. } = event {
                        self.debug.step_over = Some(pc);
                    }
                    Ok(Some(self.debug_exit(event, pc, dr6_bits)))
                }
                None if self.debug.internal_step && dr6_bits & dr6::BS != 0 => {
                    // The library's own step; the next instruction may be
                    // a real-mode breakpoint.
                    self.debug.internal_step = false;
                    Ok(None)
                }
                None => {
                    self.give_guest_db(dr6_bits)?;
                    Ok(None)
                }
            },
            // The backend reports no other vector.
            _ => Ok(Some(ExitRecord::None)),
        }
    }

    /// Hands the guest its own `#DB` (its TF, its debug registers) with
    /// `dr6_bits`' cause in its DR6, as the CPU and KVM deliver it: B0–B3
    /// replaced by the cause's, BS set by a step and otherwise left as the
    /// guest had it (the CPU never clears it).
    fn give_guest_db(&mut self, dr6_bits: u64) -> Result<()> {
        self.get_state(StateMask::DRS)?;
        let d = &mut self.comm.state_mut().drs[Dr::Dr6];
        *d = (*d & !dr6::B_MASK) | (dr6_bits & (dr6::B_MASK | dr6::BS));
        self.set_state(StateMask::DRS)?;
        self.inject_internal(Event::exception(DB_VECTOR, 0));
        Ok(())
    }

    /// An emulation failure on `INT3` (the kernel emulates CPL 0 code on
    /// some hosts and gives up there) at one of the machine's breakpoints,
    /// reported as the breakpoint.
    pub(super) fn breakpoint_behind_failure(&mut self, record: &ExitRecord) -> Result<Option<ExitRecord>> {
        let ExitRecord::EmulationFailure { insn: InsnBytes { bytes, len: 1.. } } = record else { return Ok(None) };
        if bytes[0] != INT3 || !self.debug.user.software_breakpoints {
            return Ok(None);
        }
        let pc = linear_rip(self.raw_state(Parts::CODE)?);
        if !self.is_our_breakpoint(pc) {
            return Ok(None);
        }
        Ok(Some(self.debug_exit(DebugEvent::SoftwareBreakpoint, pc, 0)))
    }

    /// A completed instruction while single-stepping is a step (or a
    /// watchpoint's write).
    pub(super) fn step_after_completion(&mut self) -> Result<Option<ExitRecord>> {
        if !self.debug.applied.single_step {
            return Ok(None);
        }
        let event = match self.watch_hit(dr6::BS) {
            Some(e) => e,
            None if self.debug.user.single_step => DebugEvent::SingleStep,
            None => return Ok(None),
        };
        let pc = self.code_pc()?;
        Ok(Some(self.debug_exit(event, pc, dr6::BS)))
    }

    /// After a step (`dr6_bits` has BS): the first data watchpoint whose
    /// bytes changed.
    fn watch_hit(&mut self, dr6_bits: u64) -> Option<DebugEvent> {
        if dr6_bits & dr6::BS == 0 || !self.debug.internal_step && !self.debug.user.single_step {
            return None;
        }
        // Nothing to compare without a watchpoint.
        self.debug.user.watchpoints().next()?;
        let before = self.debug.watched;
        let &raw = self.raw_state(Parts::CODE).ok()?;
        let now = self.watched_values(self.paging_of(&raw));
        self.debug.watched = now;
        self.debug.user.watchpoints().find_map(|(i, bp)| {
            (before[i] != now[i]).then_some(DebugEvent::Watchpoint { index: i as u8, addr: bp.addr(), kind: bp.kind() })
        })
    }

    /// The bytes each data watchpoint covers, through page tables `regs`.
    fn watched_values(&self, regs: crate::assist::mmu::PagingRegs) -> [Option<u64>; 4] {
        let mem = self.machine.memory();
        let view = GuestView::new(&mem, regs);
        let mut out = [None; 4];
        for (i, bp) in self.debug.user.watchpoints() {
            let mut b = [0u8; 8];
            let n = usize::from(bp.len());
            if view.read(bp.addr(), &mut b[..n]).done == n {
                out[i] = Some(u64::from_le_bytes(b));
            }
        }
        out
    }

    /// Whether linear address `pc` holds one of the machine's software
    /// breakpoints, through the page tables as of the last exit.
    fn is_our_breakpoint(&mut self, pc: u64) -> bool {
        let Ok(&raw) = self.raw_state(Parts::CODE) else { return false };
        let regs = self.paging_of(&raw);
        self.breakpoint_at(pc, regs)
    }

    /// Whether linear address `pc` holds one of the machine's software
    /// breakpoints, through the page tables `regs`.
    fn breakpoint_at(&self, pc: u64, regs: crate::assist::mmu::PagingRegs) -> bool {
        if !self.debug.user.software_breakpoints || self.machine.breakpoints.is_empty() {
            return false;
        }
        let mem = self.machine.memory();
        match GuestView::new(&mem, regs).translate(pc) {
            Ok(t) => self.machine.breakpoints.contains(t.gpa),
            Err(_) => false,
        }
    }

    /// A debug exit: kept here, out of the exit record (which is copied
    /// at every exit and stays small without it).
    fn debug_exit(&mut self, event: DebugEvent, pc: u64, dr6: u64) -> ExitRecord {
        self.debug.exit = Some(DebugExit { event, pc, dr6 });
        ExitRecord::Debug
    }

    /// The last debug exit's details (`None` before the first).
    pub(super) fn last_debug_exit(&self) -> Option<DebugExit> {
        self.debug.exit
    }
}

#[cfg(test)]
mod tests;
