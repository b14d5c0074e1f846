//! The decoder and the emulator run against a VCPU: for `assist_mem` on
//! exits KVM did not decode (emulation failures, instruction fetches from
//! unmapped memory, MMIO exits whose state the program changed), and in
//! the run loop for the emulation failures that touch only guest RAM.
//!
//! On these hosts KVM emulates guest code that runs at CPL 0 and gives up
//! on instructions that need no device at all: x87 control, SSE and AVX
//! register moves, the XSAVE family, INT3. NetBSD's NVMM runs such code
//! natively and the program never sees an exit for it, so
//! [`Vcpu::run`](super::Vcpu::run) completes those instructions itself
//! (when the emulator implements them) and enters the guest again: the
//! instruction's writes are staged and land only if it touches RAM alone;
//! one that reaches a device, or that the emulator does not implement,
//! is reported as [`Exit::EmulationFailure`](crate::Exit::EmulationFailure)
//! with nothing changed, for `assist_mem` and the program's devices.

use super::Vcpu;
use super::assist::{AssistOutcome, MemRequest};
use super::inflight::Inflight;
use crate::assist::decode::{ControlInsn, DecodeError, Instruction, MAX_LEN, Op, decode, decode_control};
use crate::assist::emulate::{EmuCpu, EmuError, EmuMemory, execute, execute_control};
use crate::assist::mmu::{Access, AccessKind, WalkError};
use crate::error::{Error, Result};
use crate::exit::record::ExitRecord;
use crate::memory::Prot;
use crate::vmem::GuestView;
use crate::x86::event::Event;
use crate::x86::mode::{CpuMode, linear_rip};
use crate::x86::state::{Cr, State, StateMask};
use crate::x86::xsave::Xsave;

/// An instruction the emulator executes: a general one or a control one.
enum Decoded {
    General(Instruction),
    Control(ControlInsn),
}

impl Decoded {
    /// Decodes with the general decoder, then the control decoder.
    fn of(bytes: &[u8], mode: CpuMode) -> std::result::Result<Decoded, DecodeError> {
        match decode(bytes, mode) {
            Ok(i) => Ok(Decoded::General(i)),
            Err(DecodeError::Truncated) => Err(DecodeError::Truncated),
            Err(e) => match decode_control(bytes, mode) {
                Ok(c) => Ok(Decoded::Control(c)),
                Err(DecodeError::Unsupported { .. }) => Err(e),
                Err(other) => Err(other),
            },
        }
    }

    /// Whether it works on the FPU state.
    fn uses_fpu(&self) -> bool {
        match self {
            Decoded::General(i) => matches!(i.op(), Op::X87(_) | Op::Vec(_)),
            Decoded::Control(c) => c.op.uses_fpu(),
        }
    }
}

/// How an emulation went.
enum Emulated {
    /// The instruction completed or raised an exception for the guest.
    Done(AssistOutcome),
    /// RAM only was asked for and the instruction reaches a device (or
    /// the emulator cannot run it): nothing changed.
    NotHere,
}

impl Vcpu {
    /// Decodes and emulates the last exit's instruction, devices through
    /// `mem`.
    pub(super) fn emulate(&mut self, mem: &mut dyn FnMut(&mut MemRequest<'_>)) -> Result<AssistOutcome> {
        match self.emulate_with(mem, false)? {
            Emulated::Done(outcome) => Ok(outcome),
            Emulated::NotHere => Err(Error::GuestMemory { what: "device memory reached without a callback" }),
        }
    }

    /// Completes the last exit, an emulation failure, when its instruction
    /// touches guest RAM only and the emulator implements it; returns
    /// whether it did (the guest then goes on as if KVM had executed it).
    pub(super) fn complete_in_userland(&mut self) -> Result<bool> {
        let mut no_device = |_: &mut MemRequest<'_>| {};
        match self.emulate_with(&mut no_device, true) {
            Ok(Emulated::Done(_)) => Ok(true),
            Ok(Emulated::NotHere) => Ok(false),
            Err(e @ Error::Kvm { .. }) => Err(e),
            Err(_) => Ok(false),
        }
    }

    fn emulate_with(&mut self, mem: &mut dyn FnMut(&mut MemRequest<'_>), ram_only: bool) -> Result<Emulated> {
        let from_kvm = matches!(self.last, ExitRecord::Memory { .. });
        self.get_state(StateMask::GPRS | StateMask::SEGS | StateMask::CRS | StateMask::MSRS)?;
        let mut bytes = [0u8; MAX_LEN];
        let n = match self.last {
            ExitRecord::EmulationFailure { insn } if insn.len > 0 => {
                let b = insn.valid();
                bytes[..b.len()].copy_from_slice(b);
                b.len()
            }
            _ => self.fetch_instruction(&mut bytes, mem)?,
        };
        let state = *self.comm.state();
        let mode = CpuMode::of(&state);
        let insn = Decoded::of(&bytes[..n], mode).map_err(|e| match e {
            DecodeError::Truncated => Error::Translation { gva: linear_rip(&state) },
            _ => Error::UnsupportedInstruction { detail: e.to_string() },
        })?;
        let regs = self.paging_of(&state);
        let fpu = insn.uses_fpu();
        if fpu {
            self.get_state(StateMask::FPU)?;
        }
        let state = *self.comm.state();
        let mut cpu =
            CpuCopy { state, xsave: fpu.then(|| self.xsave.clone()), marked: StateMask::NONE, before: state.gprs };
        let (result, staged) = {
            let staged = ram_only.then(Staged::default);
            let mut guest = GuestMemory { vcpu: self, regs, callback: mem, staged };
            let r = match &insn {
                Decoded::General(i) => execute(i, &mut cpu, &mut guest),
                Decoded::Control(c) => execute_control(c, &mut cpu, &mut guest),
            };
            (r, guest.staged)
        };
        if let Some(s) = &staged {
            let keep = matches!(result, Ok(()) | Err(EmuError::Exception { .. }));
            if s.device || !keep {
                return Ok(Emulated::NotHere);
            }
            for (gpa, data) in &s.writes {
                if !self.write_ram(*gpa, data) {
                    return Err(Error::GuestMemory { what: "guest RAM unmapped while an instruction completed" });
                }
            }
        }
        self.adopt(&cpu)?;
        // The instruction is done here: KVM must not finish anything.
        if let Some(f) = self.inflight.as_mut() {
            f.emulated = true;
        } else if from_kvm {
            self.inflight = Some(Inflight { emulated: true, ..Inflight::new(self.last) });
        }
        match result {
            Ok(()) => Ok(Emulated::Done(AssistOutcome::Completed)),
            Err(EmuError::Exception { vector, error_code, cr2 }) => {
                if let Some(cr2) = cr2 {
                    self.get_state(StateMask::CRS)?;
                    self.comm.state_mut().crs[Cr::Cr2] = cr2;
                    self.set_state(StateMask::CRS)?;
                }
                self.inject_internal(Event::exception(vector, u64::from(error_code.unwrap_or(0))));
                Ok(Emulated::Done(AssistOutcome::Exception { vector }))
            }
            Err(EmuError::State(e)) => Err(e),
            Err(EmuError::Memory(what)) => Err(Error::GuestMemory { what }),
            Err(EmuError::Unsupported(what)) => Err(Error::UnsupportedInstruction { detail: what.to_string() }),
        }
    }

    /// Takes the emulator's results into the cache: the registers it
    /// changed (a callback may have changed others meanwhile, which stay;
    /// INT3 moves RIP past itself before raising #BP), the FPU when it
    /// ran an x87 or vector instruction.
    fn adopt(&mut self, cpu: &CpuCopy) -> Result<()> {
        let m = cpu.marked | StateMask::GPRS;
        let s = self.comm.state_mut();
        for ((reg, new), old) in s.gprs.0.iter_mut().zip(cpu.state.gprs.0).zip(cpu.before.0) {
            if new != old {
                *reg = new;
            }
        }
        if m.contains(StateMask::FPU) {
            s.fpu = cpu.state.fpu;
            if let Some(x) = &cpu.xsave {
                self.xsave = x.clone();
                self.cache.xsave_current = true;
            }
        }
        if !m.is_empty() {
            self.set_state(m)?;
        }
        Ok(())
    }

    /// Reads up to 15 instruction bytes at CS:RIP: from guest RAM, and
    /// through the memory callback where RIP's page is not RAM (code run
    /// from a device). Stops early only at a page the walker cannot
    /// translate (NVMM bug #16: an instruction at the end of the last
    /// mapped page still decodes).
    fn fetch_instruction(
        &mut self,
        bytes: &mut [u8; MAX_LEN],
        mem: &mut dyn FnMut(&mut MemRequest<'_>),
    ) -> Result<usize> {
        let state = *self.comm.state();
        let linear = linear_rip(&state);
        let regs = self.paging_of(&state);
        let access = Access {
            kind: AccessKind::Fetch,
            user: state.segs[crate::x86::state::Seg::Ss].attrib.dpl() == 3,
            ac: false,
        };
        let mut done = 0;
        while done < MAX_LEN {
            let at = linear.wrapping_add(done as u64);
            let n = ((4096 - (at & 0xfff)) as usize).min(MAX_LEN - done);
            let pieces = {
                let map = self.machine.memory();
                match GuestView::new(&map, regs).pieces(at, n, access) {
                    Ok(p) => p,
                    Err(_) => break,
                }
            };
            for (gpa, len) in pieces {
                let chunk = &mut bytes[done..done + len];
                if !self.read_ram(gpa, chunk) {
                    mem(&mut MemRequest { gpa, write: false, data: chunk, vcpu: self });
                }
                done += len;
            }
        }
        if done == 0 {
            return Err(Error::Translation { gva: linear });
        }
        Ok(done)
    }

    /// Whether `len` bytes at `gpa` are guest RAM the guest may access
    /// with `prot`.
    fn is_ram(&self, gpa: u64, len: usize, prot: Prot) -> bool {
        self.machine.memory().area(gpa).is_some_and(|a| {
            a.slot.is_some() && a.prot.contains(prot) && gpa.saturating_add(len as u64) <= a.gpa + a.size
        })
    }

    /// Copies guest RAM at `gpa` when all of it is RAM the guest may read.
    fn read_ram(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.is_ram(gpa, buf.len(), Prot::READ) && self.machine.memory().read(gpa, buf).is_ok()
    }

    /// Writes guest RAM at `gpa` when all of it is RAM the guest may write.
    fn write_ram(&self, gpa: u64, buf: &[u8]) -> bool {
        self.is_ram(gpa, buf.len(), Prot::WRITE) && self.machine.memory().write(gpa, buf).is_ok()
    }
}

/// The emulator's CPU: a copy of the state (the FPU fetched beforehand for
/// x87 and vector instructions), so that the memory callback can use the
/// VCPU meanwhile; [`Vcpu::adopt`] takes the result back.
struct CpuCopy {
    state: State,
    xsave: Option<Xsave>,
    marked: StateMask,
    /// The registers the emulation started from.
    before: crate::x86::state::Gprs,
}

impl EmuCpu for CpuCopy {
    fn state(&mut self, _mask: StateMask) -> std::result::Result<&mut State, EmuError> {
        Ok(&mut self.state)
    }

    fn xsave(&mut self) -> &mut Xsave {
        self.xsave.get_or_insert_with(Xsave::default)
    }

    fn mark(&mut self, mask: StateMask) {
        self.marked |= mask;
    }
}

/// Guest memory for the emulator: linear addresses through the walker,
/// RAM directly, devices through the callback (no lock held while it runs).
struct GuestMemory<'v, 'b> {
    /// RAM only, writes held back: see [`Staged`].
    staged: Option<Staged>,
    vcpu: &'v mut Vcpu,
    regs: crate::assist::mmu::PagingRegs,
    callback: &'b mut dyn FnMut(&mut MemRequest<'_>),
}

impl GuestMemory<'_, '_> {
    fn pieces(&self, linear: u64, len: usize, access: Access) -> std::result::Result<Vec<(u64, usize)>, EmuError> {
        let map = self.vcpu.machine.memory();
        GuestView::new(&map, self.regs).pieces(linear, len, access).map_err(|e| match e {
            WalkError::TableUnreadable { .. } | WalkError::InvalidMode => {
                EmuError::Memory("page tables outside guest RAM")
            }
            WalkError::NonCanonical { .. } => EmuError::Exception { vector: 13, error_code: Some(0), cr2: None },
            WalkError::NotPresent { gva, error_code, .. }
            | WalkError::Reserved { gva, error_code, .. }
            | WalkError::Protection { gva, error_code } => {
                EmuError::Exception { vector: 14, error_code: Some(error_code), cr2: Some(gva) }
            }
        })
    }
}

impl EmuMemory for GuestMemory<'_, '_> {
    fn read(&mut self, linear: u64, buf: &mut [u8], access: Access) -> std::result::Result<(), EmuError> {
        let mut done = 0;
        for (gpa, n) in self.pieces(linear, buf.len(), access)? {
            let chunk = &mut buf[done..done + n];
            if let Some(s) = self.staged.as_mut() {
                if !self.vcpu.read_ram(gpa, chunk) {
                    s.device = true;
                    return Err(EmuError::Memory("device memory"));
                }
                s.overlay(gpa, chunk);
                done += n;
                continue;
            }
            if !self.vcpu.read_ram(gpa, chunk) {
                (self.callback)(&mut MemRequest { gpa, write: false, data: chunk, vcpu: self.vcpu });
            }
            done += n;
        }
        Ok(())
    }

    fn write(&mut self, linear: u64, buf: &[u8], access: Access) -> std::result::Result<(), EmuError> {
        let mut done = 0;
        for (gpa, n) in self.pieces(linear, buf.len(), access)? {
            let chunk = &buf[done..done + n];
            if let Some(s) = self.staged.as_mut() {
                if !self.vcpu.is_ram(gpa, n, Prot::WRITE) {
                    s.device = true;
                    return Err(EmuError::Memory("device memory"));
                }
                s.writes.push((gpa, chunk.to_vec()));
                done += n;
                continue;
            }
            if !self.vcpu.write_ram(gpa, chunk) {
                let mut data = [0u8; 64];
                let len = n.min(64);
                data[..len].copy_from_slice(&chunk[..len]);
                let mut big;
                let slice: &mut [u8] = if n <= 64 {
                    &mut data[..n]
                } else {
                    big = chunk.to_vec();
                    &mut big
                };
                (self.callback)(&mut MemRequest { gpa, write: true, data: slice, vcpu: self.vcpu });
            }
            done += n;
        }
        Ok(())
    }
}

/// The writes of an instruction completed in the run loop, held back
/// until it is known to touch RAM only; reads see them.
#[derive(Default)]
struct Staged {
    writes: Vec<(u64, Vec<u8>)>,
    /// The instruction reached memory that is not RAM.
    device: bool,
}

impl Staged {
    /// Lays the staged writes over `buf`, read from RAM at `gpa`.
    fn overlay(&self, gpa: u64, buf: &mut [u8]) {
        let end = gpa + buf.len() as u64;
        for (at, data) in &self.writes {
            let (from, to) = ((*at).max(gpa), (at + data.len() as u64).min(end));
            if from < to {
                let src = &data[(from - at) as usize..(to - at) as usize];
                buf[(from - gpa) as usize..(to - gpa) as usize].copy_from_slice(src);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Staged;
    use nvmm_testkit::Rng;

    /// Staged writes seen by a later read: the bytes a plain array gives
    /// after the writes are applied to it in order, wherever they fall
    /// against the read (before, after, inside, across either end,
    /// overlapping each other).
    #[test]
    fn reads_see_staged_writes_as_applied_in_order() {
        const BASE: u64 = 0x7000;
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..5000 {
            let ram: Vec<u8> = (0..96).map(|_| rng.byte()).collect();
            let mut model = ram.clone();
            let mut staged = Staged::default();
            for _ in 0..rng.next() % 5 {
                let at = (rng.next() % 80) as usize;
                let len = 1 + (rng.next() % 16) as usize;
                let data: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
                model[at..at + len].copy_from_slice(&data);
                staged.writes.push((BASE + at as u64, data));
            }
            let from = (rng.next() % 80) as usize;
            let len = 1 + (rng.next() % 16) as usize;
            let mut buf = ram[from..from + len].to_vec();
            staged.overlay(BASE + from as u64, &mut buf);
            assert_eq!(buf, &model[from..from + len], "read {from}+{len} over {:?}", staged.writes);
        }
    }
}
