//! The instruction behind the last I/O or memory exit, as NVMM shows it.
//!
//! NVMM stops the guest *before* such an instruction: RIP is on it and
//! nothing is done until the VMM answers (an assist, or the exit's data)
//! or emulates it (changes the state); if the VMM does neither, the next
//! run executes it again, against whatever memory is mapped by then. KVM
//! stops the guest in the middle of it instead: it has already done part
//! of the work (an OUT or an MMIO write may be complete, RIP past it) and
//! finishes the rest at the next `KVM_RUN`, whatever the state then says.
//!
//! This module reconciles the two. The state a program reads shows the
//! instruction undone while the exit is unanswered, done once answered;
//! at the next run the library lets KVM finish it (answered), finishes it
//! against memory mapped meanwhile (an MMIO access whose address is now
//! RAM), or cancels it (the program changed the state, or NetBSD's rule
//! says execute it again) by letting KVM finish it without entering the
//! guest and loading the state the instruction started from.

use super::Vcpu;
use super::io::IoSite;
use crate::assist::decode::Instruction;
use crate::backend::{Parts, VcpuBackend};
use crate::error::{Error, Result};
use crate::exit::record::ExitRecord;
use crate::memory::Prot;
use crate::vcpu::Unanswered;
use crate::vmem::GuestView;
use crate::x86::bits::rflags;
use crate::x86::mode::{CpuMode, linear_rip};
use crate::x86::state::{Gpr, Gprs, Seg, State};

/// How many exits finishing one instruction may produce before the library
/// gives up (a REP string instruction touching MMIO exits per element).
const FINISH_ATTEMPTS: usize = 4096;

/// The instruction behind the last I/O, memory or MSR exit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Inflight {
    /// The exit.
    pub(crate) exit: ExitRecord,
    /// The VMM answered it (an assist, the exit's data, an MSR reply).
    pub(crate) answered: bool,
    /// KVM has nothing left to do for it.
    pub(crate) finished: bool,
    /// The I/O instruction is decoded (kept in `Vcpu::inflight_site`, out
    /// of this record, which is copied at every exit).
    pub(crate) site_known: bool,
    /// The general-purpose registers before the instruction are known
    /// (kept in `Vcpu::before_gprs`, out of this record, which is copied
    /// around at every exit).
    pub(crate) before_known: bool,
    /// The assists emulated it in the library: KVM must not finish it.
    pub(crate) emulated: bool,
    /// KVM reported an instruction fetch from unmapped memory as a read
    /// (its emulator fetches that way); reported as a fetch.
    pub(crate) fetch: bool,
}

impl Inflight {
    pub(crate) fn new(exit: ExitRecord) -> Inflight {
        Inflight {
            exit,
            answered: false,
            finished: false,
            site_known: false,
            before_known: false,
            emulated: false,
            fetch: false,
        }
    }
}

/// What the next run does instead of entering the guest.
pub(super) enum Settled {
    /// Enter the guest.
    Enter,
    /// Report this exit again without entering (NetBSD would execute the
    /// instruction again and get the same exit).
    Replay(ExitRecord),
}

impl Vcpu {
    /// Shows the general-purpose registers just loaded from the backend as
    /// NVMM would: before the instruction while the exit is unanswered (or
    /// still hidden behind another report), after it once answered.
    pub(super) fn present_gprs(&mut self) -> Result<()> {
        let Some(f) = self.inflight.as_ref() else { return Ok(()) };
        if f.finished && f.answered {
            return self.present_finished();
        }
        if f.answered && self.queued.is_none() {
            return self.present_after();
        }
        self.gprs_before()?;
        self.comm.state_mut().gprs = self.before_gprs;
        Ok(())
    }

    /// A finished REP string instruction whose count reached zero: KVM
    /// leaves RIP on it until the guest runs again (where it ends at
    /// once); NVMM shows it done, RIP past it.
    fn present_finished(&mut self) -> Result<()> {
        use crate::assist::decode::mask;
        let Some(exit) = self.inflight.as_ref().map(|f| f.exit) else { return Ok(()) };
        let (start, npc, amask) = match exit {
            ExitRecord::Io { .. } => {
                let site = self.io_site()?;
                if !(site.insn.string && site.insn.rep) {
                    return Ok(());
                }
                (site.start, site.npc, mask(site.insn.address_size))
            }
            ExitRecord::Memory { gpa, write, .. } => {
                self.raw_state(Parts::CODE | Parts::SEGS)?;
                let raw = &self.raw;
                let mem = self.machine.memory();
                let view = GuestView::new(&mem, self.paging_of(raw));
                let w = view.around(linear_rip(raw));
                let Some(insn) = rep_string_of_exit(raw, &view, w.after(), write, gpa) else { return Ok(()) };
                let rip = raw.gprs[Gpr::Rip];
                (rip, CpuMode::of(raw).advance(rip, insn.len().into()), mask(insn.addr_size()))
            }
            _ => return Ok(()),
        };
        let g = &mut self.comm.state_mut().gprs;
        if g[Gpr::Rip] == start && g[Gpr::Rcx] & amask == 0 {
            g[Gpr::Rip] = npc;
        }
        Ok(())
    }

    /// The answered I/O instruction done: RIP past it, the IN's data in
    /// RAX (KVM does the same at the next run).
    fn present_after(&mut self) -> Result<()> {
        let Some(ExitRecord::Io { is_in, size, .. }) = self.inflight.as_ref().map(|f| f.exit) else { return Ok(()) };
        let site = self.io_site()?;
        if site.advanced || site.insn.string {
            return Ok(());
        }
        let mut data = [0u8; 4];
        let n = usize::from(size).min(4);
        if is_in {
            data[..n].copy_from_slice(&self.backend.io_data()[..n]);
        }
        let g = &mut self.comm.state_mut().gprs;
        g[Gpr::Rip] = site.npc;
        if is_in {
            g[Gpr::Rax] = merge_in(g[Gpr::Rax], &data[..n]);
        }
        Ok(())
    }

    /// The general-purpose registers before the instruction behind the
    /// last exit (computed once per exit).
    /// (Kept in `Vcpu::before_gprs`, computed there in place: a register
    /// set is copied as a whole, and this runs at every C I/O exit.)
    pub(super) fn gprs_before(&mut self) -> Result<&Gprs> {
        let Some(f) = self.inflight.as_ref() else {
            return Err(Error::WrongExit { what: "gprs_before", expected: "an exit" });
        };
        if f.before_known {
            return Ok(&self.before_gprs);
        }
        let exit = f.exit;
        // The I/O site is located from the backend's code registers: only
        // the GPRS here.
        let parts = if matches!(exit, ExitRecord::Io { .. }) { Parts::GPRS } else { Parts::CODE };
        self.raw_state(parts)?;
        self.before_gprs = self.raw.gprs;
        match exit {
            ExitRecord::Io { .. } => {
                let site = self.io_site()?;
                if site.advanced {
                    site.rewind(&mut self.before_gprs);
                }
            }
            ExitRecord::Memory { gpa, write: true, .. } => {
                // ES too: a string store's destination.
                self.raw_state(Parts::SEGS)?;
                let mut g = self.before_gprs;
                self.rewind_memory_write(&mut g, gpa);
                self.before_gprs = g;
            }
            ExitRecord::Halted => {
                let raw = &self.raw;
                let mem = self.machine.memory();
                let view = GuestView::new(&mem, self.paging_of(raw));
                let mut b = [0u8; 1];
                let linear = linear_rip(raw).wrapping_sub(1);
                let hlt = view.read(linear, &mut b).done == 1 && b[0] == 0xf4;
                drop(mem);
                if hlt {
                    let rip = &mut self.before_gprs[Gpr::Rip];
                    *rip = CpuMode::of(&self.raw).advance(*rip, u64::MAX);
                }
            }
            _ => {}
        }
        if let Some(f) = self.inflight.as_mut() {
            f.before_known = true;
        }
        Ok(&self.before_gprs)
    }

    /// Parts of the state as the backend has them now (not the cache,
    /// which may hold the program's changes or NVMM's view).
    /// (Read from the backend once per exit: the result stays valid until
    /// KVM runs again.)
    pub(super) fn raw_state(&mut self, parts: Parts) -> Result<&State> {
        let mut missing = parts.minus(Parts::FPU).minus(self.raw_parts);
        if self.raw_parts.intersects(Parts::SEGS) {
            missing = missing.minus(Parts::CS);
        }
        if !missing.is_empty() {
            self.backend.want(missing);
            // No FPU part: the XSAVE area is not touched.
            self.backend.load(missing, &mut self.raw, &mut self.xsave)?;
            self.raw_parts |= missing;
        }
        Ok(&self.raw)
    }

    /// KVM ran: what [`Vcpu::raw_state`] read is stale.
    pub(super) fn forget_raw(&mut self) {
        self.raw_parts = Parts::NONE;
    }

    /// Undoes an MMIO write KVM executed before the exit: finds the
    /// instruction that ends at RIP and puts RIP back on it, with the
    /// string registers of MOVS/STOS as they were. When no instruction
    /// decodes there the registers are left as KVM has them.
    fn rewind_memory_write(&self, g: &mut Gprs, gpa: u64) {
        use crate::assist::decode::{Op, Rep, decode};
        let raw = &self.raw;
        let mode = CpuMode::of(raw);
        let linear = linear_rip(raw);
        let mem = self.machine.memory();
        let view = GuestView::new(&mem, self.paging_of(raw));
        let w = view.around(linear);
        // A REP string store KVM did one element of, leaving RIP on the
        // instruction (even after the last element, RCX then 0).
        if let Some(insn) = rep_string_of_exit(raw, &view, w.after(), true, gpa) {
            undo_string_element(g, insn.op(), insn.opsize(), insn.addr_size(), true);
            return;
        }
        // Else it is done: the longest instruction that ends exactly at
        // RIP and writes memory.
        let window = w.before();
        let back = window.len();
        for len in (1..=back).rev() {
            let Ok(insn) = decode(&window[back - len..back], mode) else { continue };
            if usize::from(insn.len()) != len || insn.memory().is_none() {
                continue;
            }
            g[Gpr::Rip] = mode.advance(g[Gpr::Rip], (len as u64).wrapping_neg());
            if matches!(insn.op(), Op::Movs | Op::Stos) {
                undo_string_element(g, insn.op(), insn.opsize(), insn.addr_size(), insn.rep() != Rep::None);
            }
            return;
        }
    }

    /// Before the backend's values of `parts` are read: when the
    /// instruction behind an answered exit changes them, KVM finishes it
    /// first (for an I/O instruction the library knows the result and
    /// shows it without that, but for INS).
    pub(super) fn settle_for_read(&mut self, parts: Parts) -> Result<()> {
        let Some(f) = self.inflight.as_ref() else { return Ok(()) };
        if !f.answered || f.finished || self.queued.is_some() {
            return Ok(());
        }
        let finish = match f.exit {
            ExitRecord::Io { is_in: true, .. } => parts.intersects(Parts::GPRS) && self.io_site()?.insn.string,
            ExitRecord::Memory { .. } => {
                parts.intersects(Parts::GPRS | Parts::SEGS | Parts::CR | Parts::EFER | Parts::INTR | Parts::FPU)
            }
            _ => false,
        };
        if finish {
            self.finish_inflight("reading the state")?;
        }
        Ok(())
    }

    /// Lets KVM finish the instruction behind the last exit now, without
    /// entering the guest. A further exit finishing it produces (the next
    /// fragment of a split MMIO access) is reported at the next run.
    pub(super) fn finish_inflight(&mut self, what: &'static str) -> Result<()> {
        self.forget_raw();
        if let Some(next) = self.finish_pending_instruction()? {
            let next = self.noted(next);
            self.queue_behind(next);
        }
        if let Some(f) = self.inflight.as_mut() {
            f.finished = true;
        }
        let _ = what;
        Ok(())
    }

    /// Lets KVM run whatever it has pending to its end without entering
    /// the guest, discarding the exits that produces (for an instruction
    /// being cancelled).
    fn drain_pending(&mut self, what: &'static str) -> Result<()> {
        self.forget_raw();
        for _ in 0..FINISH_ATTEMPTS {
            match self.finish_pending_instruction()? {
                None => return Ok(()),
                Some(ExitRecord::Memory { .. }) | Some(ExitRecord::Io { .. }) => continue,
                Some(_) => continue,
            }
        }
        Err(Error::Unsettled { what })
    }

    /// A further exit produced while finishing an instruction: reported at
    /// the next run.
    fn queue_behind(&mut self, next: ExitRecord) {
        if self.queued.is_none() {
            self.queued = Some(next);
            self.inflight = Some(Inflight::new(next));
        }
    }

    /// Settles the instruction behind the last exit before the next run,
    /// the way NVMM's semantics need (see the module documentation).
    /// Called with the program's changes still in the cache, not stored.
    pub(super) fn settle_inflight(&mut self) -> Result<Settled> {
        if self.queued.is_none() {
            match &self.inflight {
                None => return Ok(Settled::Enter),
                // The common case: an answered I/O or memory exit, which
                // KVM completes in the run (the general path below does
                // the same for it).
                Some(f)
                    if f.answered
                        && !f.emulated
                        && matches!(f.exit, ExitRecord::Io { .. } | ExitRecord::Memory { .. }) =>
                {
                    let (exit, finished) = (f.exit, f.finished);
                    self.complete_inflight(exit, finished)?;
                    self.inflight = None;
                    return Ok(Settled::Enter);
                }
                Some(_) => {}
            }
        }
        self.settle_inflight_generally()
    }

    /// [`Vcpu::settle_inflight`] in every case.
    #[cold]
    #[inline(never)]
    fn settle_inflight_generally(&mut self) -> Result<Settled> {
        let changed = !self.cache.dirty.is_empty() || self.event_waiting();
        let mut dropped = false;
        if let Some(q) = self.queued {
            if !changed {
                self.queued = None;
                if let Some(f) = self.inflight.as_mut() {
                    f.answered = false;
                }
                return Ok(Settled::Replay(q));
            }
            // The program acted on the report that went first: the queued
            // exit's instruction runs again.
            self.queued = None;
            dropped = true;
            if let Some(f) = self.inflight.as_mut() {
                f.answered = false;
            }
            if q == ExitRecord::IntReady && !self.cache.dirty.intersects(Parts::INTR) {
                // The window the program armed did open; it still waits.
                self.set_int_window(true);
            }
        }
        let Some(mut f) = self.inflight else { return Ok(Settled::Enter) };
        if f.emulated {
            // Done by the emulator, whose results are in the cache.
            if !f.finished {
                self.drain_pending("settling an emulated instruction")?;
            }
            self.inflight = None;
            return Ok(Settled::Enter);
        }
        if matches!(f.exit, ExitRecord::Rdmsr { .. } | ExitRecord::Wrmsr { .. }) {
            self.settle_msr_exit()?;
            self.inflight = None;
            return Ok(Settled::Enter);
        }
        if !f.answered
            && let ExitRecord::Memory { gpa, len, write } = f.exit
            && self.memory_now_ram(gpa, len, write)
        {
            // Mapped meanwhile: the access goes to the new memory.
            self.redo_on_ram(gpa, len, write)?;
            f.answered = true;
        }
        if f.fetch && !f.answered {
            // Nothing at the code's address: executing again faults the
            // same way, unless the program changed something.
            if changed {
                self.cancel_inflight(&f)?;
                self.inflight = None;
                return Ok(Settled::Enter);
            }
            if let ExitRecord::Memory { gpa, .. } = f.exit {
                return Ok(Settled::Replay(ExitRecord::Fetch { gpa }));
            }
        }
        // Unanswered: the VMM emulated it if it changed the registers; with
        // NetBSD's rule it executes again; else the exit's data answers it.
        let emulated_by_vmm = self.cache.dirty.intersects(Parts::GPRS);
        let complete = f.answered || (!dropped && !emulated_by_vmm && self.conf.unanswered == Unanswered::Complete);
        if complete {
            self.complete_inflight(f.exit, f.finished)?;
        } else if changed || dropped || matches!(f.exit, ExitRecord::Io { .. } | ExitRecord::Halted) {
            self.cancel_inflight(&f)?;
        } else if matches!(f.exit, ExitRecord::Memory { .. }) {
            // NetBSD executes it again and exits again, the same way.
            return Ok(Settled::Replay(f.exit));
        }
        self.inflight = None;
        Ok(Settled::Enter)
    }

    /// KVM finishes the instruction behind `exit` in the run (unless it
    /// is `finished`); the program's changes to the registers go in after
    /// it.
    #[inline]
    fn complete_inflight(&mut self, exit: ExitRecord, finished: bool) -> Result<()> {
        if finished || !self.cache.dirty.intersects(Parts::GPRS) {
            return Ok(());
        }
        self.complete_under_program_gprs(exit)
    }

    /// [`Vcpu::complete_inflight`] when the program set the registers (out
    /// of line: the common run stores none).
    #[inline(never)]
    fn complete_under_program_gprs(&mut self, exit: ExitRecord) -> Result<()> {
        if self.gprs_survive_completion(exit)? {
            return Ok(());
        }
        self.finish_inflight("completing the last exit")
    }

    /// Whether storing the cache's registers before KVM finishes the
    /// instruction gives the same result as storing them after: true for
    /// plain IN and OUT when RIP is past the instruction (KVM then skips
    /// its completion, or repeats exactly what the registers say).
    fn gprs_survive_completion(&mut self, exit: ExitRecord) -> Result<bool> {
        let ExitRecord::Io { is_in, size, .. } = exit else { return Ok(false) };
        let site = self.io_site()?;
        if site.insn.string {
            return Ok(false);
        }
        if site.advanced {
            return Ok(true);
        }
        let g = self.comm.state().gprs;
        if g[Gpr::Rip] != site.npc {
            return Ok(false);
        }
        if is_in {
            // An emulated IN writes its data into RAX again: make it the
            // value the registers hold.
            let n = usize::from(size).min(4);
            let bytes = g[Gpr::Rax].to_le_bytes();
            self.backend.io_data()[..n].copy_from_slice(&bytes[..n]);
        }
        Ok(true)
    }

    /// The instruction does not take effect: KVM finishes it without
    /// entering the guest, then the state it started from (with the
    /// program's changes) is loaded.
    fn cancel_inflight(&mut self, f: &Inflight) -> Result<()> {
        let program_gprs = self.cache.dirty.intersects(Parts::GPRS);
        let before = if program_gprs { None } else { Some(*self.gprs_before()?) };
        if !f.finished {
            self.drain_pending("cancelling the last exit")?;
        }
        if let Some(g) = before {
            self.comm.state_mut().gprs = g;
            self.cache.dirty |= Parts::GPRS;
            self.cache.have |= Parts::GPRS;
        }
        Ok(())
    }

    /// Whether guest RAM now backs `gpa..gpa+len`, writable for a write
    /// (a write to memory mapped read-only since exits again, as on
    /// NetBSD, where the VMM discards it: ROM).
    fn memory_now_ram(&self, gpa: u64, len: u8, write: bool) -> bool {
        let mem = self.machine.memory();
        mem.area(gpa).is_some_and(|a| {
            a.slot.is_some() && gpa + u64::from(len) <= a.gpa + a.size && (!write || a.prot.contains(Prot::WRITE))
        })
    }

    /// Performs the access of an MMIO exit on RAM mapped at its address
    /// since: a read gets the RAM's bytes, a write lands in it.
    fn redo_on_ram(&mut self, gpa: u64, len: u8, write: bool) -> Result<()> {
        let n = usize::from(len).min(8);
        let mut buf = [0u8; 8];
        if write {
            buf[..n].copy_from_slice(&self.backend.mmio_data()[..n]);
            self.machine.memory().write(gpa, &buf[..n])
        } else {
            self.machine.memory().read(gpa, &mut buf[..n])?;
            self.backend.mmio_data()[..n].copy_from_slice(&buf[..n]);
            Ok(())
        }
    }
}

/// The REP string instruction at RIP (its bytes `at_rip`, registers in
/// `raw`) when it is the one behind a memory exit at `gpa`: KVM left RIP on
/// it after one element, and that element was at `gpa` (else RIP is past
/// another instruction and the string instruction merely follows it).
/// The element is one back: its destination ES:RDI for a write (MOVS,
/// STOS), its source DS:RSI for a read (MOVS, LODS, CMPS); a segment
/// override is not followed (no match: the caller leaves the registers as
/// KVM has them).
fn rep_string_of_exit(raw: &State, view: &GuestView<'_>, at_rip: &[u8], write: bool, gpa: u64) -> Option<Instruction> {
    use crate::assist::decode::{Op, Rep, decode};
    let insn = decode(at_rip, CpuMode::of(raw)).ok()?;
    let moves = if write {
        matches!(insn.op(), Op::Movs | Op::Stos)
    } else {
        matches!(insn.op(), Op::Movs | Op::Lods | Op::Cmps)
    };
    (moves && insn.rep() != Rep::None && last_element_at(raw, view, &insn, write, gpa)).then_some(insn)
}

/// Whether the element `insn` (at RIP, registers in `raw`) did last was at
/// `gpa` (see [`rep_string_of_exit`]).
fn last_element_at(raw: &State, view: &GuestView<'_>, insn: &Instruction, write: bool, gpa: u64) -> bool {
    let mut undone = raw.gprs;
    undo_string_element(&mut undone, insn.op(), insn.opsize(), insn.addr_size(), true);
    let amask = crate::assist::decode::mask(insn.addr_size());
    let (seg, reg) = if write { (Seg::Es, Gpr::Rdi) } else { (Seg::Ds, Gpr::Rsi) };
    let base = if CpuMode::of(raw) == CpuMode::Bits64 { 0 } else { raw.segs[seg].base };
    view.translate(base.wrapping_add(undone[reg] & amask)).is_ok_and(|t| t.gpa == gpa)
}

/// Undoes one element of a MOVS or STOS: RDI (and RSI) back by the element
/// size in the direction DF says, RCX up by one for REP.
fn undo_string_element(g: &mut Gprs, op: crate::assist::decode::Op, size: u8, addr_size: u8, rep: bool) {
    let step = u64::from(size);
    let down = g[Gpr::Rflags] & rflags::DF != 0;
    let undo = |v: u64| if down { v.wrapping_add(step) } else { v.wrapping_sub(step) };
    let amask = crate::assist::decode::mask(addr_size);
    let merge = |old: u64, new: u64| (old & !amask) | (new & amask);
    g[Gpr::Rdi] = merge(g[Gpr::Rdi], undo(g[Gpr::Rdi]));
    if op == crate::assist::decode::Op::Movs {
        g[Gpr::Rsi] = merge(g[Gpr::Rsi], undo(g[Gpr::Rsi]));
    }
    if rep {
        g[Gpr::Rcx] = merge(g[Gpr::Rcx], g[Gpr::Rcx].wrapping_add(1));
    }
}

/// Applies an answered I/O instruction to the registers it started from,
/// as NVMM's I/O assist does: the IN's data in RAX, the string registers
/// moved by the `count` elements, RIP past it unless a REP has elements
/// left.
pub(super) fn apply_io(site: &IoSite, g: &mut Gprs, is_in: bool, data: &[u8], count: u32) {
    let insn = site.insn;
    if !insn.string {
        if is_in {
            g[Gpr::Rax] = merge_in(g[Gpr::Rax], data);
        }
        g[Gpr::Rip] = site.npc;
        return;
    }
    let amask = crate::assist::decode::mask(insn.address_size);
    let merge = |old: u64, new: u64| (old & !amask) | (new & amask);
    let bytes = u64::from(insn.operand_size) * u64::from(count);
    let down = g[Gpr::Rflags] & rflags::DF != 0;
    let reg = if is_in { Gpr::Rdi } else { Gpr::Rsi };
    let moved = if down { g[reg].wrapping_sub(bytes) } else { g[reg].wrapping_add(bytes) };
    g[reg] = merge(g[reg], moved);
    let mut done = true;
    if insn.rep {
        let left = (g[Gpr::Rcx] & amask).wrapping_sub(u64::from(count)) & amask;
        g[Gpr::Rcx] = merge(g[Gpr::Rcx], left);
        done = left == 0;
    }
    g[Gpr::Rip] = if done { site.npc } else { site.start };
}

/// RAX after an IN of `data` (1, 2 or 4 bytes): the low bytes replaced; a
/// 4-byte IN zero-extends, as writing EAX does.
pub(super) fn merge_in(rax: u64, data: &[u8]) -> u64 {
    match data.len() {
        1 => (rax & !0xff) | u64::from(data[0]),
        2 => (rax & !0xffff) | u64::from(u16::from_le_bytes([data[0], data[1]])),
        4 => u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]])),
        _ => rax,
    }
}

#[cfg(test)]
mod tests {
    use super::merge_in;

    #[test]
    fn in_merges_like_the_cpu() {
        assert_eq!(merge_in(0x1122_3344_5566_7788, &[0xaa]), 0x1122_3344_5566_77aa);
        assert_eq!(merge_in(0x1122_3344_5566_7788, &[0xaa, 0xbb]), 0x1122_3344_5566_bbaa);
        assert_eq!(merge_in(0x1122_3344_5566_7788, &[1, 2, 3, 4]), 0x0403_0201);
    }
}
