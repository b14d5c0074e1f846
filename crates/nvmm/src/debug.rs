//! Guest debugging: what a debugger asks of a VCPU (single step, hardware
//! breakpoints and watchpoints, software breakpoints) and the exit that
//! reports what it caught.
//!
//! The guest cannot hide from it: single steps run with guest interrupts
//! blocked where the kernel can (so an interrupt handler is not what the
//! step lands in), the debugger's breakpoints live in the hardware debug
//! registers whatever the guest writes to its own, and a software
//! breakpoint is recognised by the machine's breakpoint table
//! ([`Machine::insert_sw_breakpoint`](crate::Machine::insert_sw_breakpoint)),
//! keyed by guest physical address. A `#BP` or `#DB` the debugger did not
//! cause goes to the guest, as if no debugger were attached.
//!
//! ```no_run
//! use nvmm::{GuestDebug, HwBreakpoint, WatchKind, Exit};
//! # fn main() -> nvmm::Result<()> {
//! let nvmm = nvmm::Nvmm::open()?;
//! let machine = nvmm.create_machine()?;
//! let mut vcpu = machine.create_vcpu(0)?;
//! let mut debug = GuestDebug::default();
//! debug.hardware[0] = Some(HwBreakpoint::new(0x2000, WatchKind::Write, 8)?);
//! vcpu.set_guest_debug(&debug)?;
//! if let Exit::Debug(d) = vcpu.run()? {
//!     println!("{:?} at pc {:#x}", d.event(), d.pc());
//! }
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};

/// What a hardware breakpoint watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchKind {
    /// Instruction execution at the address (length 1).
    Execute,
    /// Data writes.
    Write,
    /// Data reads and writes (x86 has no read-only watchpoint).
    ReadWrite,
}

/// One of the four x86 debug-register breakpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HwBreakpoint {
    addr: u64,
    kind: WatchKind,
    len: u8,
}

impl HwBreakpoint {
    /// A breakpoint on `len` bytes at linear address `addr`. x86's rules:
    /// `len` is 1, 2, 4 or 8 and `addr` a multiple of it; an execute
    /// breakpoint has length 1. `EINVAL` otherwise.
    pub fn new(addr: u64, kind: WatchKind, len: u8) -> Result<HwBreakpoint> {
        if !matches!(len, 1 | 2 | 4 | 8) {
            return Err(Error::InvalidConfiguration { why: "a hardware breakpoint covers 1, 2, 4 or 8 bytes" });
        }
        if addr % u64::from(len) != 0 {
            return Err(Error::InvalidConfiguration {
                why: "a hardware breakpoint's address must be a multiple of its length",
            });
        }
        if kind == WatchKind::Execute && len != 1 {
            return Err(Error::InvalidConfiguration { why: "an execute breakpoint has length 1" });
        }
        Ok(HwBreakpoint { addr, kind, len })
    }

    /// The linear address watched.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// What is watched.
    pub fn kind(&self) -> WatchKind {
        self.kind
    }

    /// Bytes watched.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether it covers no bytes (never: the length is at least 1).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// DR7's RW and LEN fields for this breakpoint (4 bits).
    fn dr7_bits(&self) -> u64 {
        let rw = match self.kind {
            WatchKind::Execute => 0b00,
            WatchKind::Write => 0b01,
            WatchKind::ReadWrite => 0b11,
        };
        let len = match self.len {
            1 => 0b00,
            2 => 0b01,
            8 => 0b10,
            _ => 0b11,
        };
        rw | len << 2
    }
}

/// A VCPU's debug control ([`Vcpu::set_guest_debug`](crate::Vcpu::set_guest_debug)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestDebug {
    /// Stop after every instruction ([`DebugEvent::SingleStep`]); guest
    /// interrupts are held off meanwhile where the kernel can
    /// ([`Vcpu::debug_blocks_interrupts`](crate::Vcpu::debug_blocks_interrupts)).
    /// A step over a HLT ends past it without halting (no HLT exit).
    pub single_step: bool,
    /// Report the machine's software breakpoints
    /// ([`DebugEvent::SoftwareBreakpoint`]).
    pub software_breakpoints: bool,
    /// The debugger's DR0–DR3 breakpoints. While any is set the guest's own
    /// debug registers do not trigger (the hardware holds the debugger's);
    /// the guest still reads back what it wrote.
    pub hardware: [Option<HwBreakpoint>; 4],
}

impl GuestDebug {
    /// Whether nothing is asked for (debugging off).
    pub fn is_off(&self) -> bool {
        !self.single_step && !self.software_breakpoints && self.hardware.iter().all(Option::is_none)
    }

    /// The data watchpoints (hardware breakpoints that are not execute
    /// breakpoints), with their debug register index.
    pub fn watchpoints(&self) -> impl Iterator<Item = (usize, HwBreakpoint)> + '_ {
        self.hardware.iter().enumerate().filter_map(|(i, b)| b.filter(|b| b.kind != WatchKind::Execute).map(|b| (i, b)))
    }

    /// DR7 for the hardware breakpoints: local enables, RW and LEN fields,
    /// and the always-one bit 10.
    pub fn dr7(&self) -> u64 {
        let mut dr7 = 1 << 10;
        for (i, bp) in self.hardware.iter().enumerate() {
            if let Some(bp) = bp {
                dr7 |= 1 << (2 * i);
                dr7 |= bp.dr7_bits() << (16 + 4 * i);
            }
        }
        dr7
    }
}

/// What a debug exit caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DebugEvent {
    /// A software breakpoint of the machine's table; the PC is on the
    /// breakpoint (the original instruction has not run).
    SoftwareBreakpoint,
    /// An execute breakpoint in debug register `index`; the PC is on it.
    HardwareBreakpoint {
        /// DR0–DR3.
        index: u8,
    },
    /// A data watchpoint in debug register `index`; the PC is past the
    /// access.
    Watchpoint {
        /// DR0–DR3.
        index: u8,
        /// The watched address.
        addr: u64,
        /// What it watches.
        kind: WatchKind,
    },
    /// One instruction ran.
    SingleStep,
}

/// A debug exit: [`Exit::Debug`](crate::Exit::Debug).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DebugExit {
    pub(crate) event: DebugEvent,
    pub(crate) pc: u64,
    pub(crate) dr6: u64,
}

impl DebugExit {
    /// What was caught.
    pub fn event(&self) -> DebugEvent {
        self.event
    }

    /// The linear address of the next instruction (CS base + RIP).
    pub fn pc(&self) -> u64 {
        self.pc
    }

    /// DR6 as the hardware reported it (0 for a software breakpoint).
    pub fn dr6(&self) -> u64 {
        self.dr6
    }
}

/// DR6 bits.
pub(crate) mod dr6 {
    /// B0–B3: which debug register triggered.
    pub(crate) const B_MASK: u64 = 0xf;
    /// BS: single step.
    pub(crate) const BS: u64 = 1 << 14;
}

/// What the debugger's settings make of a `#DB` with `dr6`; `None`: not
/// the debugger's, the guest gets it.
pub(crate) fn classify_db(debug: &GuestDebug, dr6_bits: u64) -> Option<DebugEvent> {
    for (i, bp) in debug.hardware.iter().enumerate() {
        if let Some(bp) = bp
            && dr6_bits & (1 << i) != 0
        {
            let index = i as u8;
            return Some(match bp.kind {
                WatchKind::Execute => DebugEvent::HardwareBreakpoint { index },
                kind => DebugEvent::Watchpoint { index, addr: bp.addr, kind },
            });
        }
    }
    (debug.single_step && dr6_bits & dr6::BS != 0).then_some(DebugEvent::SingleStep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_alignment_rules() {
        assert!(HwBreakpoint::new(0x1000, WatchKind::Write, 8).is_ok());
        assert!(HwBreakpoint::new(0x1004, WatchKind::Write, 8).is_err());
        assert!(HwBreakpoint::new(0x1002, WatchKind::ReadWrite, 2).is_ok());
        assert!(HwBreakpoint::new(0x1001, WatchKind::ReadWrite, 2).is_err());
        assert!(HwBreakpoint::new(0x1001, WatchKind::Execute, 1).is_ok());
        assert!(HwBreakpoint::new(0x1000, WatchKind::Execute, 4).is_err());
        assert!(HwBreakpoint::new(0x1000, WatchKind::Write, 3).is_err());
        assert_eq!(HwBreakpoint::new(0x1000, WatchKind::Write, 16).unwrap_err().errno(), libc::EINVAL);
        let bp = HwBreakpoint::new(0x2000, WatchKind::ReadWrite, 4).unwrap();
        assert_eq!((bp.addr(), bp.kind(), bp.len(), bp.is_empty()), (0x2000, WatchKind::ReadWrite, 4, false));
    }

    #[test]
    fn off_means_nothing_asked() {
        let mut d = GuestDebug::default();
        assert!(d.is_off());
        d.software_breakpoints = true;
        assert!(!d.is_off());
        d = GuestDebug { single_step: true, ..GuestDebug::default() };
        assert!(!d.is_off());
        d = GuestDebug::default();
        d.hardware[3] = Some(HwBreakpoint::new(0, WatchKind::Execute, 1).unwrap());
        assert!(!d.is_off());
    }

    /// DR7 as the SDM lays it out (vol. 3, 18.2.4): L0 bit 0, L1 bit 2,
    /// RW0 bits 16-17, LEN0 18-19, RW1 20-21, LEN1 22-23..., LEN 10b = 8
    /// bytes.
    #[test]
    fn dr7_layout_follows_the_sdm() {
        let mut d = GuestDebug::default();
        assert_eq!(d.dr7(), 0x400);
        d.hardware[0] = Some(HwBreakpoint::new(0x10, WatchKind::Execute, 1).unwrap());
        assert_eq!(d.dr7(), 0x401);
        d.hardware[1] = Some(HwBreakpoint::new(0x10, WatchKind::Write, 4).unwrap());
        assert_eq!(d.dr7(), 0x401 | 0x4 | (0b11_01 << 20));
        d.hardware[3] = Some(HwBreakpoint::new(0x10, WatchKind::ReadWrite, 8).unwrap());
        assert_eq!(d.dr7() >> 28, 0b10_11);
        assert_eq!(d.dr7() & 0xff, 0x45);
        // LEN 01b = 2 bytes, with RW 01b (write) in slot 2.
        d.hardware[2] = Some(HwBreakpoint::new(0x10, WatchKind::Write, 2).unwrap());
        assert_eq!((d.dr7() >> 24) & 0xf, 0b01_01);
    }

    #[test]
    fn db_is_the_debuggers_only_when_it_asked() {
        let mut d = GuestDebug::default();
        assert_eq!(classify_db(&d, dr6::BS), None);
        d.single_step = true;
        assert_eq!(classify_db(&d, dr6::BS), Some(DebugEvent::SingleStep));
        assert_eq!(classify_db(&d, 0x2), None);
        d.hardware[1] = Some(HwBreakpoint::new(0x2000, WatchKind::Write, 8).unwrap());
        assert_eq!(
            classify_db(&d, 0x2 | dr6::BS),
            Some(DebugEvent::Watchpoint { index: 1, addr: 0x2000, kind: WatchKind::Write })
        );
        assert_eq!(classify_db(&d, 0x1), None);
    }
}
