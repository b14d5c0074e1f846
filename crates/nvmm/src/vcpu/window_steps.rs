//! Interrupt-window exits where the kernel does not give them at the
//! instruction boundary.
//!
//! NVMM's `NVMM_VCPU_EXIT_INT_READY` comes as soon as the guest can take
//! an interrupt: VMX's and SVM's interrupt-window exiting stop the guest at
//! the boundary where IF becomes set with no interrupt shadow. Some hosts'
//! KVM, emulating guest kernel code instruction by instruction, only checks
//! the window when something else makes the guest exit (probed once per
//! process, see the KVM backend's `window_probe`). A window the guest opens
//! for a few instructions, as firmware does when it waits for an interrupt
//! from code that otherwise runs with interrupts off (SeaBIOS's `sti; nop;
//! rep nop; cli`), is then never reported, and the VMM never delivers the
//! interrupt it holds.
//!
//! There, while the program keeps the window armed and the guest has
//! interrupts off (or is in an interrupt shadow), the VCPU runs one step at
//! a time, with steps the program never sees, and the window exit is
//! reported before the first instruction that finds it open, as NetBSD
//! reports it. A step costs an exit, so the steps are rationed by where the
//! guest was when the run started (its last exit): from a place where
//! stepping found the window before, twice the steps that took, plus 8;
//! from a place where it did not (the guest reached another exit, or kept
//! interrupts off longer than [`WINDOW_STEPS`]), none, but for one try in
//! [`RETRY_EVERY`] runs from there, one in twice as many after each try
//! that misses again (up to [`RETRY_EVERY_MAX`]); from a new place,
//! [`FIRST_LOOK_STEPS`] (a miss there is tried again later with
//! [`WINDOW_STEPS`]). [`PLACES`] places are remembered. A guest's polling
//! loop (SeaBIOS reads a timer port, then opens the window) is learned at
//! once when its window is within the first look, within [`RETRY_EVERY`]
//! runs otherwise; code that runs long with interrupts off between exits
//! (SeaBIOS printing to its debug port with the timer's interrupt pending)
//! is stepped rarely. Nothing changes while no window is armed, or on
//! hosts whose KVM exits at the boundary. A HLT is not stepped (see the
//! debugging module): a HLT with interrupts on ends the window with the
//! HLT exit, as before.
//!
//! While the library steps, a guest's own RFLAGS.TF trap is lost (as for
//! the debugging module's own steps). No steps are taken while an event
//! waits for delivery: it goes in first, and the window is looked at again
//! after it.

use super::Vcpu;
use crate::backend::VcpuBackend;
use crate::error::Result;
use crate::exit::record::ExitRecord;

/// The most steps one run takes looking for the window. A guest that keeps
/// interrupts off longer (clearing memory a byte at a time, say) runs on
/// unstepped, at the speed of the kernel's emulator, until its next exit.
/// Enough for SeaBIOS's wait loop, whose window follows its timer-port read
/// within a few dozen instructions, mode switches included.
pub(super) const WINDOW_STEPS: u16 = 256;

/// The steps from a place seen for the first time. Most places a guest
/// starts runs from with an interrupt waiting reach their next exit with
/// interrupts still off: SeaBIOS's POST under QEMU starts stepped runs
/// from about 100 places, and the window is found from two of them, 60
/// and 72 steps away (the second by a later try). With a first look of 64
/// steps its POST is 3 % faster than with 128, 4 % faster than with 256.
pub(super) const FIRST_LOOK_STEPS: u16 = 64;

/// A place where stepping did not find the window is tried again with
/// [`WINDOW_STEPS`] once in this many runs from it; after each try that
/// misses again, once in twice as many.
pub(super) const RETRY_EVERY: u8 = 8;

/// The longest interval between tries from a place that keeps missing.
pub(super) const RETRY_EVERY_MAX: u8 = 128;

/// How many places are remembered (the oldest is forgotten first). With
/// fewer than SeaBIOS's 100, its places were forgotten and stepped from as
/// new ones again and again.
pub(super) const PLACES: usize = 128;

/// A place runs start from, and what stepping from it found.
#[derive(Clone, Copy, Debug)]
struct Place {
    /// The linear address of RIP when the run started.
    pc: u64,
    /// Steps to take from there (0: stepping did not find the window).
    budget: u16,
    /// Runs from there without steps since the last try.
    skipped: u8,
    /// Runs from there between tries (while `budget` is 0).
    interval: u8,
}

/// What the current call of the run loop does about the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Call {
    /// No step decided yet.
    #[default]
    Undecided,
    /// Stepping from `pc`: `used` steps taken, `left` allowed.
    Stepping { pc: u64, used: u16, left: u16 },
    /// No steps in this call.
    Unstepped,
}

/// The rationing of window steps across calls of the run loop.
#[derive(Debug, Default)]
pub(super) struct WindowSearch {
    call: Call,
    /// The places remembered, at most [`PLACES`] (empty, and unallocated,
    /// on hosts whose KVM exits at the window).
    places: Vec<Place>,
    /// The slot the next new place takes once all are used.
    next: usize,
}

impl WindowSearch {
    /// A call of the run loop starts.
    pub(super) fn start_call(&mut self) {
        self.call = Call::Undecided;
    }

    /// Whether to take one more step; `pc` gives the guest's linear RIP
    /// when the call's first step is decided.
    pub(super) fn take_step(&mut self, pc: impl FnOnce() -> Result<u64>) -> Result<bool> {
        if self.call == Call::Undecided {
            let pc = pc()?;
            let left = self.budget_at(pc);
            self.call = if left == 0 { Call::Unstepped } else { Call::Stepping { pc, used: 0, left } };
        }
        match &mut self.call {
            Call::Stepping { used, left, .. } if *left > 0 => {
                *left -= 1;
                *used += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Whether this call stepped.
    pub(super) fn stepped(&self) -> bool {
        matches!(self.call, Call::Stepping { .. })
    }

    /// The call ends with `exit`: the window found, or another exit
    /// before it (a stop says nothing about the place).
    pub(super) fn end_call(&mut self, exit: ExitRecord) {
        let Call::Stepping { pc, used, .. } = self.call else { return };
        self.call = Call::Undecided;
        let budget = match exit {
            ExitRecord::IntReady => used.saturating_mul(2).saturating_add(8).min(WINDOW_STEPS),
            ExitRecord::Stopped | ExitRecord::None => return,
            _ => 0,
        };
        let (slot, interval) = match self.slot_of(pc) {
            // A try from a place that had missed, missing again.
            Some(slot) if budget == 0 && self.places[slot].budget == 0 => {
                (slot, self.places[slot].interval.saturating_mul(2).min(RETRY_EVERY_MAX))
            }
            Some(slot) => (slot, RETRY_EVERY),
            None if self.places.len() < PLACES => {
                self.places.push(Place { pc, budget, skipped: 0, interval: RETRY_EVERY });
                return;
            }
            None => {
                let s = self.next;
                self.next = (s + 1) % PLACES;
                (s, RETRY_EVERY)
            }
        };
        self.places[slot] = Place { pc, budget, skipped: 0, interval };
    }

    /// The steps allowed from `pc`.
    fn budget_at(&mut self, pc: u64) -> u16 {
        let Some(slot) = self.slot_of(pc) else { return FIRST_LOOK_STEPS };
        let place = &mut self.places[slot];
        if place.budget > 0 {
            return place.budget;
        }
        place.skipped = place.skipped.saturating_add(1);
        if place.skipped < place.interval {
            return 0;
        }
        place.skipped = 0;
        WINDOW_STEPS
    }

    fn slot_of(&self, pc: u64) -> Option<usize> {
        self.places.iter().position(|p| p.pc == pc)
    }
}

impl Vcpu {
    /// Whether the next run single-steps to find the armed interrupt
    /// window: armed, closed (else the run reports it without entering),
    /// nothing to deliver first, a kernel that would miss it, and a step
    /// left in this call's ration.
    pub(super) fn window_needs_steps(&mut self) -> Result<bool> {
        if !self.pending_windows().int
            || self.event_waiting()
            || self.backend.window_exits_are_exact()
            || self.backend.event_status()?.pending
        {
            return Ok(false);
        }
        let backend = &mut self.backend;
        self.debug.window.take_step(|| Ok(backend.code_regs()?.linear_rip()))
    }

    /// Whether the run loop must ready debug settings for a run with the
    /// window armed as `armed` says (cheap: the probe's answer is kept).
    pub(super) fn window_may_need_steps(&self, armed: bool) -> bool {
        armed && !self.backend.window_exits_are_exact()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(s: &mut WindowSearch, pc: u64, steps_to_window: Option<u16>) -> u16 {
        s.start_call();
        let mut taken = 0;
        while s.take_step(|| Ok(pc)).unwrap() {
            taken += 1;
            if Some(taken) == steps_to_window {
                s.end_call(ExitRecord::IntReady);
                return taken;
            }
        }
        s.end_call(ExitRecord::Halted);
        taken
    }

    #[test]
    fn a_new_place_gets_a_first_look() {
        let mut s = WindowSearch::default();
        assert_eq!(call(&mut s, 0x1000, None), FIRST_LOOK_STEPS);
    }

    #[test]
    fn a_place_that_found_the_window_gets_twice_its_steps_and_a_few() {
        let mut s = WindowSearch::default();
        assert_eq!(call(&mut s, 0x1000, Some(20)), 20);
        assert_eq!(call(&mut s, 0x1000, None), 48);
        // Found after 200 steps (by a try after the first look missed):
        // the ration stays at most WINDOW_STEPS.
        let mut s = WindowSearch::default();
        call(&mut s, 0x1000, None);
        while call(&mut s, 0x1000, Some(200)) == 0 {}
        assert_eq!(call(&mut s, 0x1000, None), WINDOW_STEPS);
    }

    #[test]
    fn a_place_that_missed_is_tried_once_in_retry_every() {
        let mut s = WindowSearch::default();
        assert_eq!(call(&mut s, 0x1000, None), FIRST_LOOK_STEPS);
        let steps: Vec<u16> = (0..2 * RETRY_EVERY).map(|_| call(&mut s, 0x1000, Some(5))).collect();
        let tried: Vec<usize> = steps.iter().enumerate().filter(|&(_, &n)| n > 0).map(|(i, _)| i).collect();
        // The retry finds the window in 5 steps: from then on, 18 steps.
        assert_eq!(tried[0], usize::from(RETRY_EVERY) - 1);
        assert!(steps[tried[0] + 1..].iter().all(|&n| n == 5), "{steps:?}");
    }

    #[test]
    fn a_place_that_keeps_missing_is_tried_ever_more_rarely() {
        let mut s = WindowSearch::default();
        assert_eq!(call(&mut s, 0x1000, None), FIRST_LOOK_STEPS);
        let steps: Vec<u16> = (0..600).map(|_| call(&mut s, 0x1000, None)).collect();
        assert!(steps.iter().all(|&n| n == 0 || n == WINDOW_STEPS), "tries take the full ration");
        let tried: Vec<usize> = (0..600).filter(|&i| steps[i] > 0).collect();
        let gaps: Vec<usize> = std::iter::once(tried[0] + 1).chain(tried.windows(2).map(|w| w[1] - w[0])).collect();
        let want: Vec<usize> = [8, 16, 32, 64, 128, 128, 128].into_iter().take(gaps.len()).collect();
        assert_eq!(gaps, want, "runs between tries");
        // A try that finds the window ends the backing off: after the next
        // miss the place is tried once in RETRY_EVERY again.
        let mut s = WindowSearch::default();
        call(&mut s, 0x1000, None);
        while call(&mut s, 0x1000, None) == 0 {}
        while call(&mut s, 0x1000, None) == 0 {}
        while call(&mut s, 0x1000, Some(4)) == 0 {}
        assert_eq!(call(&mut s, 0x1000, None), 16, "found after 4 steps: 16 now");
        let skipped = (0..).take_while(|_| call(&mut s, 0x1000, None) == 0).count();
        assert_eq!(skipped, usize::from(RETRY_EVERY) - 1);
    }

    #[test]
    fn a_stop_says_nothing_about_the_place() {
        let mut s = WindowSearch::default();
        s.start_call();
        assert!(s.take_step(|| Ok(0x1000)).unwrap());
        s.end_call(ExitRecord::Stopped);
        assert_eq!(call(&mut s, 0x1000, None), FIRST_LOOK_STEPS);
    }

    #[test]
    fn places_are_forgotten_oldest_first() {
        let mut s = WindowSearch::default();
        for pc in 1..=PLACES as u64 + 1 {
            call(&mut s, pc * 0x10, Some(3));
        }
        assert_eq!(call(&mut s, 0x10, None), FIRST_LOOK_STEPS, "the first place was forgotten");
        assert_eq!(call(&mut s, 0x30, None), 14, "the third is remembered");
    }
}
