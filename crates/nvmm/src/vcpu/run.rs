//! The run loop: stop requests, settling the last exit, storing the
//! state, entering the guest, and turning what the backend reports into
//! the exits NVMM reports (window exits only when armed, TPR changes only
//! when asked for, an NMI window checked at run boundaries, the exit a
//! TPR or NMI report went before kept for the next run).

use super::inflight::{Inflight, Settled};
use super::{Vcpu, assist};
use crate::backend::{Parts, RunCall, RunResult, VcpuBackend};
use crate::error::Result;
use crate::exit::Exit;
use crate::exit::record::{ExitRecord, InsnBytes};
use crate::hint::cold_path;
use crate::vmem::GuestView;
use crate::x86::mode::linear_rip;

impl Vcpu {
    /// Runs the VCPU until an exit the VMM must see (`nvmm_vcpu_run`).
    ///
    /// Stores set state and the injected event first; an invalid one fails
    /// the run with `EINVAL`.
    ///
    /// Inlined into the caller with the system call that enters the guest
    /// (the rest is out of line), so that no stack frame of the library is
    /// live across it: the host refills the return-stack predictor at
    /// every VM exit, and a return to a frame made before the call
    /// mispredicts. Timed by `rdtsc` on the development hosts, that one
    /// return cost 70 – 140 cycles per exit, the most where the library was
    /// loaded at some addresses (bits 12 – 14), which made the cost of an
    /// exit depend on where the program was loaded.
    #[inline(always)]
    pub fn run(&mut self) -> Result<Exit<'_>> {
        self.run_to_exit()?;
        Ok(self.exit_view(self.last))
    }

    /// Runs until an exit for the VMM and records it as the last exit
    /// (`self.last`: returning the record by value copied it through one
    /// more stack slot at every exit). The first pass of the run loop is
    /// split at the system call, which is inlined here (see [`Vcpu::run`]);
    /// the passes after a trap or an instruction completed in user space,
    /// rare, are made by [`Vcpu::run_on`].
    #[inline(always)]
    pub(crate) fn run_to_exit(&mut self) -> Result<()> {
        let entry = self.start_run()?;
        let first = self.pass(entry, Self::after_entry);
        self.finish_run(first)
    }

    /// [`Vcpu::run_to_exit`] with every part inlined, for a caller that is
    /// itself the library's (`nvmm_vcpu_run`, one function of the C
    /// library): calls after the system call cost more there than the
    /// code they would save.
    #[inline(always)]
    pub(crate) fn run_to_exit_inlined(&mut self) -> Result<()> {
        let entry = self.start_run_inlined()?;
        let first = self.pass(entry, Self::after_entry_inlined);
        self.finish_run_inlined(first)
    }

    /// A pass of the run loop from `entry` on: the guest entered, and the
    /// exit handed to `after` ([`Vcpu::after_entry`], or its inlined
    /// body), when it is ready; else the exit found before.
    #[inline(always)]
    fn pass(
        &mut self,
        entry: Entry,
        after: impl FnOnce(&mut Self, RunCall) -> Result<ExitRecord>,
    ) -> Result<ExitRecord> {
        match entry {
            Entry::Ready => {
                let call = self.backend.enter();
                after(self, call)
            }
            Entry::Decided(r) => r,
        }
    }

    /// [`Vcpu::run_to_exit`] up to the system call: whether the guest is to
    /// be entered, or the exit of this pass found before. `Err` only when
    /// the call is refused outright.
    #[inline(never)]
    fn start_run(&mut self) -> Result<Entry> {
        self.start_run_inlined()
    }

    /// [`Vcpu::start_run`], inlined.
    #[inline(always)]
    fn start_run_inlined(&mut self) -> Result<Entry> {
        self.refuse_in_assist("running the VCPU")?;
        self.take_payload_answer();
        self.debug.window.start_call();
        Ok(self.before_entry())
    }

    /// The record of the first pass, `first`, handled as the run loop
    /// handles each (see [`Vcpu::run_on`]), and the call's end.
    #[inline(never)]
    fn finish_run(&mut self, first: Result<ExitRecord>) -> Result<()> {
        self.finish_run_inlined(first)
    }

    /// [`Vcpu::finish_run`], inlined.
    #[inline(always)]
    fn finish_run_inlined(&mut self, first: Result<ExitRecord>) -> Result<()> {
        let r = match first {
            Ok(record) => self.run_on(record),
            Err(e) => Err(e),
        };
        if self.debug.window.stepped() {
            cold_path();
            self.debug.window.end_call(self.last);
        }
        r
    }

    /// The run loop from the exit `record` of a pass on: records it as the
    /// last exit, and returns unless it is a debug trap or an instruction
    /// KVM's emulator gave up on, which the library follows up itself
    /// (and then may run the guest on).
    #[inline(always)]
    fn run_on(&mut self, mut record: ExitRecord) -> Result<()> {
        loop {
            self.last = record;
            if !matches!(
                record,
                ExitRecord::Trap { .. } | ExitRecord::EmulationFailure { insn: InsnBytes { len: 1.., .. } }
            ) {
                if matches!(record, ExitRecord::Halted) && self.debugging() {
                    cold_path();
                    self.last = self.halt_while_debugging()?;
                }
                return Ok(());
            }
            cold_path();
            if let Some(r) = self.follow_up(record)? {
                self.last = r;
                return Ok(());
            }
            record = self.next_exit()?;
        }
    }

    /// What the library does itself about a debug trap or an instruction
    /// KVM's emulator gave up on: the exit to report, or `None` to run on.
    #[cold]
    #[inline(never)]
    fn follow_up(&mut self, record: ExitRecord) -> Result<Option<ExitRecord>> {
        if let ExitRecord::Trap { vector, pc, dr6 } = record {
            return self.debug_trap(vector, pc, dr6);
        }
        if let Some(r) = self.breakpoint_behind_failure(&record)? {
            return Ok(Some(r));
        }
        // What NetBSD runs natively, KVM's emulator may give up on:
        // complete it here when it touches RAM only.
        if self.conf.complete_failures && self.complete_in_userland()? {
            // The instruction ran without the kernel seeing it: a single
            // step ends here.
            return self.step_after_completion();
        }
        Ok(Some(record))
    }

    /// One pass of the run loop, whole: the exit it ends with.
    #[cold]
    #[inline(never)]
    fn next_exit(&mut self) -> Result<ExitRecord> {
        let entry = self.before_entry();
        self.pass(entry, Self::after_entry)
    }

    /// A pass of the run loop up to the system call: [`Entry::Ready`] once
    /// the guest is to be entered (the run counted as started: see
    /// [`Vcpu::after_entry`]), or the exit found before entering.
    fn before_entry(&mut self) -> Entry {
        self.last = ExitRecord::None;
        let tid = self.thread.tid();
        if let Err(e) = self.backend.prepare_thread(tid, self.shared.signal()) {
            return Entry::Decided(Err(e));
        }
        self.backend.clear_kick();
        if self.shared.enter(tid) {
            cold_path();
            return Entry::Decided(Ok(ExitRecord::Stopped));
        }
        let r = self.before_guest();
        if !matches!(r, Entry::Ready) {
            self.shared.leave();
        }
        r
    }

    /// [`Vcpu::before_entry`] once the run is counted: the exits found
    /// before entering (window exits due at entry, kept exits, debugger
    /// work, a stop), and the state stored.
    #[inline(always)]
    fn before_guest(&mut self) -> Entry {
        match self.prepare_guest() {
            Ok(None) => {
                self.backend.begin_run();
                Entry::Ready
            }
            Ok(Some(r)) => Entry::Decided(Ok(r)),
            Err(e) => Entry::Decided(Err(e)),
        }
    }

    /// [`Vcpu::before_guest`]'s checks: an exit found before entering, or
    /// `None` with the state stored.
    #[inline(always)]
    fn prepare_guest(&mut self) -> Result<Option<ExitRecord>> {
        let windows = self.pending_windows();
        if (windows.nmi || windows.int)
            && self.queued.is_none()
            && let Some(r) = self.window_at_entry(windows)?
        {
            return Ok(Some(r));
        }
        if let Settled::Replay(r) = self.settle_inflight()? {
            return Ok(Some(self.replay(r)));
        }
        if (self.debugging() || self.window_may_need_steps(self.pending_windows().int))
            && let Some(r) = self.prepare_debug_run()?
        {
            return Ok(Some(r));
        }
        self.commit()?;
        // Settling may have run KVM to finish the last instruction, which
        // consumes a kick: a stop requested meanwhile is honoured here
        // (one requested from now on finds the kick armed).
        if self.shared.take() {
            cold_path();
            return Ok(Some(ExitRecord::Stopped));
        }
        Ok(None)
    }

    /// The exit of the entry into the guest that returned `call`; ends the
    /// run [`Vcpu::before_entry`] counted.
    #[inline(never)]
    fn after_entry(&mut self, call: RunCall) -> Result<ExitRecord> {
        self.after_entry_inlined(call)
    }

    /// [`Vcpu::after_entry`], inlined.
    #[inline(always)]
    fn after_entry_inlined(&mut self, call: RunCall) -> Result<ExitRecord> {
        let r = self.after_guest(call);
        self.shared.leave();
        r
    }

    /// [`Vcpu::after_entry`]'s decoding and bookkeeping.
    #[inline(always)]
    fn after_guest(&mut self, call: RunCall) -> Result<ExitRecord> {
        let result = self.backend.end_run(call);
        self.forget_raw();
        self.conf.has_run = true;
        self.cache.have = Parts::NONE;
        self.cache.xsave_current = false;
        let record = match result? {
            RunResult::Interrupted => {
                cold_path();
                if self.shared.take() { ExitRecord::Stopped } else { ExitRecord::None }
            }
            RunResult::Exit(r) => {
                let r = self.noted(r);
                self.classify(r)
            }
        };
        let record = if has_pending_instruction(record) { self.keep_inflight(record) } else { record };
        let tpr = self.backend.tpr();
        let tpr_changed = tpr != self.last_tpr;
        self.last_tpr = tpr;
        let tpr_report = self.conf.tpr_exit && (tpr_changed || matches!(record, ExitRecord::TprChanged));
        if tpr_report || self.windows.nmi {
            cold_path();
            return self.report_before(record, tpr_report);
        }
        Ok(record)
    }

    /// A window exit due as the guest is entered (before any instruction),
    /// when one of `windows` is armed and open.
    #[cold]
    #[inline(never)]
    fn window_at_entry(&mut self, windows: super::Windows) -> Result<Option<ExitRecord>> {
        if windows.nmi && self.nmi_window_open()? {
            self.set_nmi_window(false);
            return Ok(Some(ExitRecord::NmiReady));
        }
        if windows.int && self.int_window_open()? {
            // NVMM's window exit fires as the guest is entered when it can
            // take an interrupt already, before any instruction.
            self.set_int_window(false);
            return Ok(Some(ExitRecord::IntReady));
        }
        Ok(None)
    }

    /// A kept exit reported again without entering the guest.
    #[cold]
    #[inline(never)]
    fn replay(&mut self, r: ExitRecord) -> ExitRecord {
        if !has_pending_instruction(r) {
            // Done by KVM (a HLT behind a TPR report): the state shown
            // before it (RIP on the HLT) is stale now.
            self.inflight = None;
            self.cache.have = Parts::NONE;
        }
        r
    }

    /// Records the instruction behind `record` as in flight; the exit to
    /// report for it (an instruction fetch KVM reported as a read is a
    /// fetch).
    pub(super) fn keep_inflight(&mut self, record: ExitRecord) -> ExitRecord {
        let mut f = Inflight::new(record);
        let reported = match record {
            ExitRecord::Memory { gpa, write: false, .. } if self.is_fetch(gpa) => {
                f.fetch = true;
                ExitRecord::Fetch { gpa }
            }
            other => other,
        };
        self.inflight = Some(f);
        reported
    }

    /// A TPR change to report (`tpr_report`), or else the NMI window the
    /// program armed if it is open, reported before `record` (kept for the
    /// next run); else `record`. (A run's exit is never `NmiReady`: the
    /// library makes those, before entering.)
    #[cold]
    #[inline(never)]
    fn report_before(&mut self, record: ExitRecord, tpr_report: bool) -> Result<ExitRecord> {
        if tpr_report {
            return Ok(self.report_first(ExitRecord::TprChanged, record));
        }
        if self.windows.nmi && self.nmi_window_open()? {
            self.set_nmi_window(false);
            return Ok(self.report_first(ExitRecord::NmiReady, record));
        }
        Ok(record)
    }

    /// Reports `first` now and keeps `then` for the next run, which reports
    /// it without entering the guest unless the program changed the state
    /// meanwhile (then the guest executes its instruction again).
    fn report_first(&mut self, first: ExitRecord, then: ExitRecord) -> ExitRecord {
        if !matches!(then, ExitRecord::None) && then != first {
            self.queued = Some(then);
            if matches!(then, ExitRecord::Halted) {
                self.inflight = Some(Inflight::new(then));
            }
            if let Some(f) = self.inflight.as_mut() {
                f.answered = false;
            }
        }
        first
    }

    /// The program used the last exit's data: that answers it.
    pub(super) fn take_payload_answer(&mut self) {
        if self.payload_used.replace(false)
            && let Some(f) = self.inflight.as_mut()
            && self.queued.is_none()
        {
            f.answered = true;
        }
    }

    /// Loads set parts and the pending events into the backend before a
    /// run.
    fn commit(&mut self) -> Result<()> {
        if !self.conf.has_run && self.conf.cpuid_nvcpus != self.machine.nvcpus() {
            cold_path();
            self.apply_cpuid()?;
        }
        self.store_dirty()?;
        let window = self.windows.int;
        self.backend.set_interrupt_window(window);
        Ok(())
    }

    /// `r`, a record the backend just reported and the VCPU keeps, with
    /// what the backend keeps beside it (an emulation failure's exit
    /// information) kept too.
    pub(super) fn noted(&mut self, r: ExitRecord) -> ExitRecord {
        if matches!(r, ExitRecord::EmulationFailure { .. }) {
            self.failure_info = self.backend.failure_info();
        }
        r
    }

    /// The exit information of the last emulation failure kept.
    pub(super) fn failure_info(&self) -> [u64; 5] {
        self.failure_info
    }

    /// NVMM's exit for what the backend reported. (I/O and memory exits,
    /// the common ones, are tested before the others, which are matched
    /// out of line: see `assist::view`.)
    #[inline(always)]
    fn classify(&mut self, r: ExitRecord) -> ExitRecord {
        if matches!(r, ExitRecord::Io { .. } | ExitRecord::Memory { .. }) {
            return r;
        }
        self.classify_other(r)
    }

    /// [`Vcpu::classify`] of the exits other than I/O and memory.
    #[inline(never)]
    fn classify_other(&mut self, r: ExitRecord) -> ExitRecord {
        match r {
            ExitRecord::Halted => {
                if self.windows.int && self.backend.interrupts_enabled() {
                    self.set_int_window(false);
                }
                ExitRecord::Halted
            }
            ExitRecord::IntReady if self.windows.int => {
                self.set_int_window(false);
                ExitRecord::IntReady
            }
            ExitRecord::IntReady => ExitRecord::None,
            ExitRecord::TprChanged if !self.conf.tpr_exit => ExitRecord::None,
            ExitRecord::EmulationFailure { insn: InsnBytes { len: 0, .. } } => self.fetch_fault().unwrap_or(r),
            other => other,
        }
    }

    /// An emulation failure with no instruction bytes: KVM could not fetch
    /// the instruction. When RIP's page is not guest RAM that is NVMM's
    /// MEMORY exit for an instruction fetch.
    #[cold]
    fn fetch_fault(&mut self) -> Option<ExitRecord> {
        self.raw_state(Parts::CODE).ok()?;
        let raw = &self.raw;
        let mem = self.machine.memory();
        let view = GuestView::new(&mem, self.paging_of(raw));
        let linear = linear_rip(raw);
        let t = view.translate(linear).ok()?;
        let ram = mem.area(t.gpa).is_some_and(|a| a.slot.is_some());
        (!ram).then_some(ExitRecord::Fetch { gpa: t.gpa })
    }

    /// The window exits armed for this run: the program's INTR when it set
    /// it since the last run (stored in `commit`, read here first).
    pub(super) fn pending_windows(&self) -> super::Windows {
        if self.cache.dirty.intersects(Parts::INTR) {
            let i = self.comm.state().intr;
            super::Windows { int: i.int_window_exiting(), nmi: i.nmi_window_exiting() }
        } else {
            self.windows
        }
    }

    /// Whether the guest can take an external interrupt now: IF set, no
    /// interrupt shadow, nothing else to deliver first.
    fn int_window_open(&mut self) -> Result<bool> {
        if self.event_waiting() {
            return Ok(false);
        }
        let rflags = self.rflags_now()?;
        let e = self.backend.event_status()?;
        let shadow =
            if self.cache.dirty.intersects(Parts::INTR) { self.comm.state().intr.int_shadow() } else { e.int_shadow };
        Ok(rflags & crate::x86::bits::rflags::IF != 0 && !shadow && !e.pending)
    }

    /// Whether a memory read at `gpa` is the instruction fetch at RIP
    /// (KVM's emulator fetches through its MMIO path when the code is not
    /// in RAM).
    /// (From the code registers alone: this runs at every MMIO read. Out
    /// of line: the code of the other exits skips a call, not its body.)
    #[inline(never)]
    fn is_fetch(&mut self, gpa: u64) -> bool {
        let Ok(code) = self.backend.code_regs() else { return false };
        let mem = self.machine.memory();
        let view = GuestView::new(&mem, self.paging_of_code(&code));
        let Ok(t) = view.translate(code.linear_rip()) else { return false };
        gpa >= t.gpa && gpa < t.gpa + 15 && mem.area(t.gpa).is_none_or(|a| a.slot.is_none())
    }

    fn nmi_window_open(&mut self) -> Result<bool> {
        let e = self.backend.event_status()?;
        Ok(!e.nmi_busy && self.event.is_none_or(|ev| !ev.is_nmi()))
    }

    /// Lets KVM finish the instruction behind the last I/O or memory exit
    /// (with the data the exit holds now) without running the guest, so
    /// that the state reflects the completed instruction, and stores the
    /// set state and pending events. `run` does this on its own; call it
    /// when you need the completed state before running again.
    pub fn complete_pending(&mut self) -> Result<()> {
        self.refuse_in_assist("completing the last exit")?;
        if let Some(f) = self.inflight.as_mut() {
            f.answered = true;
        }
        if let Settled::Replay(r) = self.settle_inflight()? {
            self.queued = Some(r);
        }
        self.commit()?;
        self.forget_raw();
        if let Some(next) = self.finish_pending_instruction()? {
            let next = self.noted(next);
            self.queued = Some(next);
            self.inflight = Some(Inflight::new(next));
        }
        self.cache.have = Parts::NONE;
        self.cache.xsave_current = false;
        Ok(())
    }

    /// The last exit [`Vcpu::run`] reported, viewed again (for code that
    /// inspects the exit after `run`'s borrow ended, like a debugger stub
    /// handing exits to the VMM). Its data is the same buffer: using it
    /// answers the exit as using `run`'s view does.
    pub fn last_exit(&mut self) -> Exit<'_> {
        self.exit_view(self.last)
    }

    /// The zero-copy view of `record`.
    fn exit_view(&mut self, record: ExitRecord) -> Exit<'_> {
        assist::view(self, record)
    }
}

/// A pass of the run loop before the system call that enters the guest.
enum Entry {
    /// Enter the guest.
    Ready,
    /// The pass's exit (or error), found without entering.
    Decided(Result<ExitRecord>),
}

/// Whether KVM keeps something of the exit's instruction to finish at the
/// next run.
fn has_pending_instruction(r: ExitRecord) -> bool {
    matches!(r, ExitRecord::Io { .. } | ExitRecord::Memory { .. } | ExitRecord::Rdmsr { .. } | ExitRecord::Wrmsr { .. })
}

#[cfg(test)]
mod tests;
