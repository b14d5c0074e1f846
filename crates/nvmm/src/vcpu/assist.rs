//! `assist_io` and `assist_mem`: NVMM's I/O and memory assists on a VCPU,
//! and the [`Exit`] view of an exit record.
//!
//! On KVM a plain I/O or MMIO exit is already decoded by the kernel, which
//! also performs the guest-memory side of string I/O: the assists hand
//! each element to the VMM's callback and KVM completes the instruction at
//! the next run. An emulation failure (KVM could not emulate the
//! instruction), an instruction fetch from unmapped memory, and an MMIO
//! exit whose state the program changed before assisting go through the
//! decoder and the emulator instead: operands are reached through the MMU
//! walker, guest RAM directly and everything else through the memory
//! callback, and the registers through the state cache; RIP is advanced
//! and the state stored at the next run.
//!
//! The callbacks may call back: each request carries the VCPU
//! ([`IoRequest::vcpu`], [`MemRequest::vcpu`]), whose state, injection,
//! stop handle and machine work from there as anywhere else (no lock is
//! held); only running it or starting another assist is refused (`EBUSY`).

use super::Vcpu;
use crate::backend::{Parts, VcpuBackend};
use crate::error::{Error, Result};
use crate::exit::record::ExitRecord;
use crate::exit::{
    EmulationFailure, Exit, InvalidExit, IoDirection, IoExit, MemAccess, MemoryExit, RdmsrExit, WrmsrExit,
};

/// One port access handed to the I/O callback (`struct nvmm_io`).
#[derive(Debug)]
pub struct IoRequest<'a> {
    /// The port.
    pub port: u16,
    /// IN (the callback fills `data`) or OUT (the callback reads it).
    pub is_in: bool,
    /// The element: 1, 2 or 4 bytes.
    pub data: &'a mut [u8],
    vcpu: &'a mut Vcpu,
}

impl IoRequest<'_> {
    /// The VCPU being assisted: get and set its state, inject, stop it,
    /// reach its machine, as outside the callback (running it or starting
    /// another assist is refused with `EBUSY`). The state shows the
    /// instruction not done yet, as NVMM's assists do.
    pub fn vcpu(&mut self) -> &mut Vcpu {
        self.vcpu
    }
}

/// One device memory access handed to the memory callback
/// (`struct nvmm_mem`).
#[derive(Debug)]
pub struct MemRequest<'a> {
    /// Guest physical address.
    pub gpa: u64,
    /// The guest writes (the callback reads `data`) or reads (the callback
    /// fills `data`).
    pub write: bool,
    /// The bytes: 1 to 8 for plain accesses, up to a page chunk (32 bytes
    /// for AVX moves, 16 for CMPXCHG16B, 10 for x87 m80, up to 1024 for an
    /// XSAVE component) for emulated ones.
    pub data: &'a mut [u8],
    pub(super) vcpu: &'a mut Vcpu,
}

impl MemRequest<'_> {
    /// The VCPU being assisted (see [`IoRequest::vcpu`]).
    pub fn vcpu(&mut self) -> &mut Vcpu {
        self.vcpu
    }
}

/// How an assist ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssistOutcome {
    /// The instruction completed (or completes at the next run).
    Completed,
    /// The instruction raised an exception, now pending for the guest
    /// (delivered at the next run, like the CPU would).
    Exception {
        /// The vector.
        vector: u8,
    },
}

impl Vcpu {
    /// The I/O assist (`nvmm_assist_io`) for the last [`Exit::Io`]: calls
    /// `io` once per element (for OUT with the data the guest wrote, for IN
    /// to get the data it reads). KVM completes the instruction (registers,
    /// guest memory for INS, RIP) at the next run; the state shows it
    /// completed from now on.
    pub fn assist_io(&mut self, mut io: impl FnMut(&mut IoRequest<'_>)) -> Result<AssistOutcome> {
        self.refuse_in_assist("assist_io")?;
        let ExitRecord::Io { port, size, is_in, .. } = self.last else {
            return Err(Error::WrongExit { what: "assist_io", expected: "an I/O exit" });
        };
        let size = usize::from(size);
        let was_answered = self.inflight.as_ref().is_some_and(|f| f.answered);
        if !(1..=4).contains(&size) {
            return Ok(AssistOutcome::Completed);
        }
        let total = self.backend.io_data().len();
        self.in_assist = true;
        let mut at = 0;
        while at + size <= total {
            let mut elem = [0u8; 4];
            copy_element(&mut elem[..size], &self.backend.io_data()[at..at + size]);
            io(&mut IoRequest { port, is_in, data: &mut elem[..size], vcpu: self });
            copy_element(&mut self.backend.io_data()[at..at + size], &elem[..size]);
            at += size;
        }
        self.in_assist = false;
        self.mark_answered(was_answered)?;
        Ok(AssistOutcome::Completed)
    }

    /// The exit is answered: the state shows the instruction done. Cached
    /// registers that showed it undone are dropped (fetched again as done);
    /// registers the program set are taken as the state the instruction
    /// starts from, and it is applied to them, as NVMM's assists do.
    fn mark_answered(&mut self, was_answered: bool) -> Result<()> {
        let Some(f) = self.inflight.as_mut() else { return Ok(()) };
        f.answered = true;
        let exit = f.exit;
        if was_answered {
            return Ok(());
        }
        if !self.cache.dirty.intersects(Parts::GPRS) {
            self.cache.have = self.cache.have.minus(Parts::GPRS);
            return Ok(());
        }
        if let ExitRecord::Io { is_in, size, count, .. } = exit {
            let site = self.io_site()?;
            let n = usize::from(size).min(4);
            let mut data = [0u8; 4];
            data[..n].copy_from_slice(&self.backend.io_data()[..n]);
            let g = &mut self.comm.state_mut().gprs;
            super::inflight::apply_io(&site, g, is_in, &data[..n], count);
        }
        Ok(())
    }

    /// Whether KVM finishes the instruction an assist answered at the next
    /// run (the registers then change again in KVM, matching what the
    /// state already shows).
    pub fn finishes_at_next_run(&self) -> bool {
        self.inflight.as_ref().is_some_and(|f| f.answered && !f.finished)
    }

    /// The memory assist (`nvmm_assist_mem`) for the last
    /// [`Exit::Memory`] or [`Exit::EmulationFailure`]: calls `mem` for
    /// every device access of the instruction.
    ///
    /// For an MMIO exit KVM has decoded the instruction: one call, and KVM
    /// completes it at the next run. For an emulation failure, an
    /// instruction fetch from unmapped memory, or an MMIO exit after the
    /// program changed the state, the instruction is decoded and emulated
    /// here; if it faults (a #PF from the page tables, a #GP for a
    /// misaligned MOVAPS, INT3's #BP...) the exception is made pending for
    /// the guest. Unsupported instructions fail with `ENODEV`.
    pub fn assist_mem(&mut self, mut mem: impl FnMut(&mut MemRequest<'_>)) -> Result<AssistOutcome> {
        self.refuse_in_assist("assist_mem")?;
        match self.last {
            ExitRecord::Memory { gpa, write, .. } if self.cache.dirty.is_empty() => {
                let n = self.backend.mmio_data().len();
                let mut buf = [0u8; 8];
                copy_element(&mut buf[..n], self.backend.mmio_data());
                self.in_assist = true;
                mem(&mut MemRequest { gpa, write, data: &mut buf[..n], vcpu: self });
                self.in_assist = false;
                copy_element(self.backend.mmio_data(), &buf[..n]);
                if let Some(f) = self.inflight.as_mut() {
                    f.answered = true;
                }
                if self.cache.dirty.intersects(Parts::GPRS) {
                    // The callback changed registers: they are the state the
                    // instruction ran from, as for NetBSD's assist.
                    self.merge_after_completion()?;
                }
                // The instruction may change anything: what is cached shows
                // it undone.
                let clean = self.cache.have.minus(self.cache.dirty);
                self.cache.have = self.cache.have.minus(clean.minus(Parts::MSRS | Parts::DRS | Parts::XCR0));
                Ok(AssistOutcome::Completed)
            }
            ExitRecord::Memory { .. } | ExitRecord::Fetch { .. } | ExitRecord::EmulationFailure { .. } => {
                self.in_assist = true;
                let r = self.emulate(&mut mem);
                self.in_assist = false;
                r
            }
            _ => Err(Error::WrongExit { what: "assist_mem", expected: "a memory or emulation-failure exit" }),
        }
    }

    /// After a callback changed registers during a KVM-decoded memory
    /// assist: KVM finishes the instruction now, and the registers become
    /// its result with the callback's changes kept (those it made to
    /// registers the instruction leaves alone; the instruction's result
    /// wins where both wrote).
    fn merge_after_completion(&mut self) -> Result<()> {
        let before = *self.gprs_before()?;
        let program = self.comm.state().gprs;
        self.finish_inflight("completing a memory assist")?;
        let after = self.raw_state(Parts::GPRS)?.gprs;
        let merged = &mut self.comm.state_mut().gprs;
        for i in 0..merged.0.len() {
            merged.0[i] = if after.0[i] != before.0[i] { after.0[i] } else { program.0[i] };
        }
        Ok(())
    }
}

/// The zero-copy view of an exit record.
///
/// I/O and memory exits, the common ones, are tested first: a `match` on
/// every kind is a jump table, an indirect branch at every exit, which the
/// host's branch-predictor barrier at VM exits makes mispredict.
pub(super) fn view(v: &mut Vcpu, r: ExitRecord) -> Exit<'_> {
    match r {
        ExitRecord::Io { port, size, count, is_in } => Exit::Io(IoExit {
            port,
            direction: if is_in { IoDirection::In } else { IoDirection::Out },
            size,
            count,
            data: v.backend.io_data(),
            answered: &v.payload_used,
        }),
        ExitRecord::Memory { gpa, write, .. } => Exit::Memory(MemoryExit {
            gpa,
            access: if write { MemAccess::Write } else { MemAccess::Read },
            data: v.backend.mmio_data(),
            answered: &v.payload_used,
        }),
        other => view_other(v, other),
    }
}

/// [`view`] of the exits other than I/O and memory.
#[inline(never)]
fn view_other(v: &mut Vcpu, r: ExitRecord) -> Exit<'_> {
    match r {
        ExitRecord::None => Exit::None,
        ExitRecord::Stopped => Exit::Stopped,
        ExitRecord::Io { .. } | ExitRecord::Memory { .. } => view(v, r),
        ExitRecord::Fetch { gpa } => {
            Exit::Memory(MemoryExit { gpa, access: MemAccess::Exec, data: &mut [], answered: &v.payload_used })
        }
        ExitRecord::Rdmsr { msr } => {
            let npc = v.msr_npc().unwrap_or(0);
            let a = v.backend.msr_answer();
            Exit::Rdmsr(RdmsrExit { msr, npc, data: a.data, error: a.error })
        }
        ExitRecord::Wrmsr { msr, value } => {
            let npc = v.msr_npc().unwrap_or(0);
            let a = v.backend.msr_answer();
            Exit::Wrmsr(WrmsrExit { msr, value, npc, error: a.error })
        }
        ExitRecord::Halted => Exit::Halted,
        ExitRecord::Shutdown => Exit::Shutdown,
        ExitRecord::IntReady => Exit::IntReady,
        ExitRecord::NmiReady => Exit::NmiReady,
        ExitRecord::TprChanged => Exit::TprChanged,
        ExitRecord::EmulationFailure { insn } => {
            let info = v.failure_info();
            let bytes = match &v.last {
                ExitRecord::EmulationFailure { insn: kept } if insn.len > 0 => Some(kept.valid()),
                _ => None,
            };
            Exit::EmulationFailure(EmulationFailure { bytes, info })
        }
        // Always recorded with the exit.
        ExitRecord::Debug => v.last_debug_exit().map_or(Exit::None, Exit::Debug),
        ExitRecord::Trap { .. } => Exit::None,
        ExitRecord::Invalid { hwcode, detail } => Exit::Invalid(InvalidExit { hwcode, detail }),
    }
}

/// Copies an I/O element (1, 2 or 4 bytes) or an MMIO access (1 to 8)
/// with moves of a fixed size, as two overlapping halves: a copy of a
/// variable length is a call into the C library, and a `match` on the
/// length a jump table, each an indirect branch at every exit, which the
/// host's branch-predictor barrier at VM exits makes mispredict.
fn copy_element(dst: &mut [u8], src: &[u8]) {
    let n = dst.len();
    if n != src.len() || n > 8 {
        dst.copy_from_slice(src);
    } else if n >= 4 {
        dst[..4].copy_from_slice(&src[..4]);
        dst[n - 4..].copy_from_slice(&src[n - 4..]);
    } else if n >= 2 {
        dst[..2].copy_from_slice(&src[..2]);
        dst[n - 2..].copy_from_slice(&src[n - 2..]);
    } else if n == 1 {
        dst[0] = src[0];
    }
}

#[cfg(test)]
mod tests;
