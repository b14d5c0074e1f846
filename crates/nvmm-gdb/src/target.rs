//! The machine as gdbstub's target: threads are VCPUs, all-stop (any
//! stop stops every VCPU; events that happen meanwhile are reported at the
//! next resumes, none is lost), breakpoints and memory through the
//! library.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::mpsc::Sender;

use gdbstub::common::{Signal, Tid};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::single_register_access::{SingleRegisterAccess, SingleRegisterAccessOps};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint as GdbHwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind as GdbWatchKind,
};
use gdbstub::target::ext::monitor_cmd::MonitorCmdOps;
use gdbstub::target::ext::thread_extra_info::{ThreadExtraInfo, ThreadExtraInfoOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use nvmm::{DebugEvent, GuestDebug, HwBreakpoint, Machine, WatchKind};

use crate::arch::{NvmmX86_64, RegNum, Regs, reg_offset};
use crate::inbox::Inbox;
use crate::vcpus::{Cmd, Slot, VcpuEvent};
use crate::{Next, regs};

/// `EFAULT`, for memory the guest's page tables do not map.
const EFAULT: u8 = 14;
/// `EIO`, for state that could not be read or written.
const EIO: u8 = 5;

/// What a VCPU does at the next resume.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    Continue,
    Step,
}

/// The stop reason type.
pub(crate) type StopReason = MultiThreadStopReason<u64>;

/// The machine under the debugger.
pub(crate) struct VmTarget<'a> {
    pub(crate) machine: &'a Machine,
    pub(crate) slots: &'a [Slot],
    pub(crate) cmds: Vec<Sender<Cmd>>,
    pub(crate) inbox: &'a RefCell<Inbox>,
    /// Per VCPU: what the debugger asked (`None`: not mentioned).
    actions: Vec<Option<Action>>,
    /// Unmentioned VCPUs stay stopped (gdb's scheduler locking, and its
    /// step over a breakpoint).
    lock: bool,
    pub(crate) running: Vec<bool>,
    /// Events that happened while the VCPUs were being stopped for
    /// another: reported at the next resumes.
    pending: VecDeque<(usize, VcpuEvent)>,
    /// A stop to report without running (a pending event).
    deliver_now: Option<StopReason>,
    /// The debugger's hardware breakpoints, on every VCPU.
    hw: [Option<HwBreakpoint>; 4],
    /// Software breakpoints: the debugger's address and the guest
    /// physical address the machine's table keys it by.
    sw: BTreeMap<u64, u64>,
    /// Memory packets address guest physical memory.
    pub(crate) phys: bool,
    /// The VCPU of the last stop: breakpoints and monitor commands use its
    /// page tables.
    pub(crate) selected: usize,
    /// A run failed: the session ends with this.
    pub(crate) failure: Option<nvmm::Error>,
    /// The VMM's exit handler panicked: the session ends.
    pub(crate) panicked: bool,
}

/// Thread id of VCPU `index`.
fn tid(index: usize) -> Tid {
    NonZeroUsize::MIN.saturating_add(index)
}

impl<'a> VmTarget<'a> {
    pub(crate) fn new(
        machine: &'a Machine,
        slots: &'a [Slot],
        cmds: Vec<Sender<Cmd>>,
        inbox: &'a RefCell<Inbox>,
    ) -> VmTarget<'a> {
        let n = slots.len();
        VmTarget {
            machine,
            slots,
            cmds,
            inbox,
            actions: vec![None; n],
            lock: false,
            running: vec![false; n],
            pending: VecDeque::new(),
            deliver_now: None,
            hw: [None; 4],
            sw: BTreeMap::new(),
            phys: false,
            selected: 0,
            failure: None,
            panicked: false,
        }
    }

    fn index(&self, t: Tid) -> Option<usize> {
        let i = t.get() - 1;
        (i < self.slots.len()).then_some(i)
    }

    /// A stop to report now, instead of resuming: an event that happened
    /// during an earlier all-stop and still stands.
    pub(crate) fn take_delivery(&mut self) -> Option<StopReason> {
        self.deliver_now.take()
    }

    /// Stops every running VCPU and waits for each; `first` is the event
    /// that started it. Returns the stop to report (`None` when nothing
    /// happened but the stop itself: an interrupt).
    pub(crate) fn stop_all(&mut self, first: Option<(usize, VcpuEvent)>) -> Option<StopReason> {
        let mut events: Vec<(usize, VcpuEvent)> = first.into_iter().collect();
        for (i, slot) in self.slots.iter().enumerate() {
            if self.running[i] {
                slot.handle.stop();
            }
        }
        while self.running.iter().any(|&r| r) {
            let Some((i, e)) = self.inbox.borrow_mut().event() else { break };
            self.running[i] = false;
            events.push((i, e));
        }
        let mut report = None;
        for (i, e) in events {
            match e {
                VcpuEvent::Stopped => {}
                other if report.is_none() => report = self.reason(i, other),
                other => self.pending.push_back((i, other)),
            }
        }
        report
    }

    /// The stop reason for VCPU `i`'s event.
    fn reason(&mut self, i: usize, e: VcpuEvent) -> Option<StopReason> {
        self.selected = i;
        let t = tid(i);
        Some(match e {
            VcpuEvent::Stopped => return None,
            VcpuEvent::Debug(d) => match d.event() {
                DebugEvent::SoftwareBreakpoint => MultiThreadStopReason::SwBreak(t),
                DebugEvent::HardwareBreakpoint { .. } => MultiThreadStopReason::HwBreak(t),
                DebugEvent::Watchpoint { addr, kind, .. } => MultiThreadStopReason::Watch {
                    tid: t,
                    kind: if kind == WatchKind::Write { GdbWatchKind::Write } else { GdbWatchKind::ReadWrite },
                    addr,
                },
                DebugEvent::SingleStep => MultiThreadStopReason::SignalWithThread { tid: t, signal: Signal::SIGTRAP },
                _ => MultiThreadStopReason::SignalWithThread { tid: t, signal: Signal::SIGTRAP },
            },
            VcpuEvent::Handler(Next::Exited(code)) => MultiThreadStopReason::Exited(code),
            VcpuEvent::Handler(Next::Signal(signal)) => MultiThreadStopReason::SignalWithThread { tid: t, signal },
            VcpuEvent::Handler(Next::Run) => return None,
            VcpuEvent::Failed(err) => {
                self.failure = Some(err);
                MultiThreadStopReason::Terminated(Signal::SIGKILL)
            }
            VcpuEvent::Panicked => {
                self.panicked = true;
                MultiThreadStopReason::Terminated(Signal::SIGABRT)
            }
        })
    }

    /// The first pending event that still stands: a breakpoint the VCPU
    /// still sits on, a watchpoint still set, anything the VMM reported.
    /// Steps and stale breakpoints are dropped (the VCPU runs again).
    fn next_standing(&mut self) -> Option<StopReason> {
        while let Some((i, e)) = self.pending.pop_front() {
            let stands = match &e {
                VcpuEvent::Debug(d) => match d.event() {
                    DebugEvent::SoftwareBreakpoint => self.sits_at(i, d.pc()) && self.sw_at(i, d.pc()),
                    DebugEvent::HardwareBreakpoint { index } => {
                        self.sits_at(i, d.pc()) && self.hw[usize::from(index)].is_some_and(|b| b.addr() == d.pc())
                    }
                    DebugEvent::Watchpoint { index, .. } => self.hw[usize::from(index)].is_some(),
                    _ => false,
                },
                _ => true,
            };
            if stands {
                return self.reason(i, e);
            }
        }
        None
    }

    /// Whether VCPU `i`'s next instruction is at linear address `pc`.
    fn sits_at(&self, i: usize, pc: u64) -> bool {
        regs::linear_pc(&mut self.slots[i].lock()).is_ok_and(|p| p == pc)
    }

    /// Whether a software breakpoint is at linear address `pc` of VCPU `i`.
    fn sw_at(&self, i: usize, pc: u64) -> bool {
        let gpa = self.slots[i].lock().gva_to_gpa(pc).map(|(g, _)| g);
        gpa.is_ok_and(|g| self.sw.values().any(|&v| v == g))
    }

    /// The debug settings for a VCPU resumed with `action`.
    fn settings(&self, action: Action) -> GuestDebug {
        GuestDebug { single_step: action == Action::Step, software_breakpoints: true, hardware: self.hw }
    }

    /// Clears every setting and breakpoint (end of the session).
    pub(crate) fn clear_debugging(&mut self) {
        for slot in self.slots {
            let _ = slot.lock().set_guest_debug(&GuestDebug::default());
        }
        for (_, gpa) in std::mem::take(&mut self.sw) {
            let _ = self.machine.remove_sw_breakpoint(gpa);
        }
    }

    /// Guest physical address of the debugger's address `addr`.
    pub(crate) fn gpa_of(&self, addr: u64) -> Option<u64> {
        if self.phys {
            return Some(addr);
        }
        self.slots[self.selected].lock().gva_to_gpa(addr).ok().map(|(g, _)| g)
    }
}

impl Target for VmTarget<'_> {
    type Arch = NvmmX86_64;
    type Error = ();

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }
}

impl MultiThreadBase for VmTarget<'_> {
    fn read_registers(&mut self, out: &mut Regs, t: Tid) -> TargetResult<(), Self> {
        let i = self.index(t).ok_or(TargetError::NonFatal)?;
        *out = regs::read(&mut self.slots[i].lock()).map_err(|_| TargetError::Errno(EIO))?;
        Ok(())
    }

    fn write_registers(&mut self, new: &Regs, t: Tid) -> TargetResult<(), Self> {
        let i = self.index(t).ok_or(TargetError::NonFatal)?;
        regs::write(&mut self.slots[i].lock(), new).map_err(|_| TargetError::Errno(EIO))
    }

    fn support_single_register_access(&mut self) -> Option<SingleRegisterAccessOps<'_, Tid, Self>> {
        Some(self)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], t: Tid) -> TargetResult<usize, Self> {
        let i = self.index(t).ok_or(TargetError::NonFatal)?;
        let done = if self.phys {
            crate::memory::read_physical(self.machine, start, data)
        } else {
            crate::memory::read_virtual(self.machine, &mut self.slots[i].lock(), start, data)
        };
        if done == 0 && !data.is_empty() {
            return Err(TargetError::Errno(EFAULT));
        }
        Ok(done)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], t: Tid) -> TargetResult<(), Self> {
        let i = self.index(t).ok_or(TargetError::NonFatal)?;
        let done = if self.phys {
            crate::memory::write_physical(self.machine, start, data)
        } else {
            self.slots[i].lock().write_virtual_debug(start, data).map_or(0, |t| t.done)
        };
        if done < data.len() {
            return Err(TargetError::Errno(EFAULT));
        }
        Ok(())
    }

    fn list_active_threads(&mut self, thread_is_active: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        (0..self.slots.len()).for_each(|i| thread_is_active(tid(i)));
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }

    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}

impl SingleRegisterAccess<Tid> for VmTarget<'_> {
    fn read_register(&mut self, t: Tid, reg: RegNum, buf: &mut [u8]) -> TargetResult<usize, Self> {
        let mut all = Regs::default();
        self.read_registers(&mut all, t)?;
        let (off, size) = reg_offset(reg.0).ok_or(TargetError::NonFatal)?;
        let mut bytes = Vec::new();
        gdbstub::arch::Registers::gdb_serialize(&all, |b| bytes.push(b.unwrap_or(0)));
        let n = size.min(buf.len());
        buf[..n].copy_from_slice(&bytes[off..off + n]);
        Ok(n)
    }

    fn write_register(&mut self, t: Tid, reg: RegNum, val: &[u8]) -> TargetResult<(), Self> {
        let mut all = Regs::default();
        self.read_registers(&mut all, t)?;
        let (off, size) = reg_offset(reg.0).ok_or(TargetError::NonFatal)?;
        if val.len() != size {
            return Err(TargetError::NonFatal);
        }
        let mut bytes = Vec::new();
        gdbstub::arch::Registers::gdb_serialize(&all, |b| bytes.push(b.unwrap_or(0)));
        bytes[off..off + size].copy_from_slice(val);
        gdbstub::arch::Registers::gdb_deserialize(&mut all, &bytes).map_err(|_| TargetError::NonFatal)?;
        self.write_registers(&all, t)
    }
}

impl MultiThreadResume for VmTarget<'_> {
    fn resume(&mut self) -> Result<(), Self::Error> {
        if let Some(r) = self.next_standing() {
            self.deliver_now = Some(r);
            return Ok(());
        }
        for (i, slot) in self.slots.iter().enumerate() {
            let action = match self.actions[i] {
                Some(a) => a,
                None if self.lock => continue,
                None => Action::Continue,
            };
            let wanted = self.settings(action);
            {
                let mut v = slot.lock();
                if *v.guest_debug() != wanted && v.set_guest_debug(&wanted).is_err() {
                    return Err(());
                }
            }
            // A stop request of the last all-stop that this VCPU did not
            // need (it had stopped for something else) must not end this
            // run.
            slot.handle.cancel_stop();
            self.running[i] = true;
            if self.cmds[i].send(Cmd::Run).is_err() {
                self.running[i] = false;
                return Err(());
            }
        }
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.actions.fill(None);
        self.lock = false;
        Ok(())
    }

    fn set_resume_action_continue(&mut self, t: Tid, _signal: Option<Signal>) -> Result<(), Self::Error> {
        if let Some(i) = self.index(t) {
            self.actions[i] = Some(Action::Continue);
        }
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSchedulerLocking for VmTarget<'_> {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        self.lock = true;
        Ok(())
    }
}

impl MultiThreadSingleStep for VmTarget<'_> {
    fn set_resume_action_step(&mut self, t: Tid, _signal: Option<Signal>) -> Result<(), Self::Error> {
        if let Some(i) = self.index(t) {
            self.actions[i] = Some(Action::Step);
        }
        Ok(())
    }
}

impl ThreadExtraInfo for VmTarget<'_> {
    fn thread_extra_info(&self, t: Tid, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let Some(i) = self.index(t) else { return Ok(0) };
        let text = match regs::mode_and_cpl(&mut self.slots[i].lock()) {
            Ok((mode, cpl)) => format!("VCPU {i}, {mode}, CPL {cpl}"),
            Err(_) => format!("VCPU {i}"),
        };
        let n = text.len().min(buf.len());
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        Ok(n)
    }
}

impl Breakpoints for VmTarget<'_> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for VmTarget<'_> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let Some(gpa) = self.gpa_of(addr) else { return Ok(false) };
        if self.machine.insert_sw_breakpoint(gpa).is_err() {
            return Ok(false);
        }
        self.sw.insert(addr, gpa);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let Some(gpa) = self.sw.remove(&addr) else { return Ok(false) };
        // Another address of the same page may share the breakpoint.
        if !self.sw.values().any(|&g| g == gpa) {
            let _ = self.machine.remove_sw_breakpoint(gpa);
        }
        Ok(true)
    }
}

impl VmTarget<'_> {
    fn add_hw(&mut self, bp: Option<HwBreakpoint>) -> bool {
        let Some(bp) = bp else { return false };
        match self.hw.iter_mut().find(|s| s.is_none()) {
            Some(slot) => {
                *slot = Some(bp);
                true
            }
            None => false,
        }
    }

    fn remove_hw(&mut self, f: impl Fn(&HwBreakpoint) -> bool) -> bool {
        match self.hw.iter_mut().find(|s| s.as_ref().is_some_and(&f)) {
            Some(slot) => {
                *slot = None;
                true
            }
            None => false,
        }
    }
}

impl GdbHwBreakpoint for VmTarget<'_> {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.add_hw(HwBreakpoint::new(addr, WatchKind::Execute, 1).ok()))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.remove_hw(|b| b.kind() == WatchKind::Execute && b.addr() == addr))
    }
}

/// The library's kind of a gdb watchpoint (x86 has no read-only one).
fn watch_kind(kind: GdbWatchKind) -> Option<WatchKind> {
    match kind {
        GdbWatchKind::Write => Some(WatchKind::Write),
        GdbWatchKind::ReadWrite => Some(WatchKind::ReadWrite),
        GdbWatchKind::Read => None,
    }
}

impl HwWatchpoint for VmTarget<'_> {
    fn add_hw_watchpoint(&mut self, addr: u64, len: u64, kind: GdbWatchKind) -> TargetResult<bool, Self> {
        let Some(k) = watch_kind(kind) else { return Ok(false) };
        let bp = u8::try_from(len).ok().and_then(|len| HwBreakpoint::new(addr, k, len).ok());
        Ok(self.add_hw(bp))
    }

    fn remove_hw_watchpoint(&mut self, addr: u64, len: u64, kind: GdbWatchKind) -> TargetResult<bool, Self> {
        let Some(k) = watch_kind(kind) else { return Ok(false) };
        Ok(self.remove_hw(|b| b.kind() == k && b.addr() == addr && u64::from(b.len()) == len))
    }
}
