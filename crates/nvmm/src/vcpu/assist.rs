//! `assist_io` and `assist_mem`: NVMM's I/O and memory assists on a VCPU.
//!
//! On KVM a plain I/O or MMIO exit is already decoded by the kernel, which
//! also performs the guest-memory side of string I/O: the assists hand each
//! element to the VMM's callback and KVM completes the instruction at the
//! next run. An emulation-failure exit (KVM could not emulate the
//! instruction) goes through the decoder and the emulator instead: operands
//! are reached through the MMU walker, guest RAM directly and everything
//! else through the memory callback, and the registers through the state
//! cache; RIP is advanced and the state committed at the next run.

use super::{ExitKind, Vcpu, part};
use crate::assist::decode::{DecodeError, MAX_LEN, decode};
use crate::assist::emulate::{EmuCpu, EmuError, EmuMemory, cpu_mode, execute};
use crate::assist::mmu::{Access, AccessKind, WalkError, translate_range};
use crate::error::{Error, Result};
use crate::memory::{MemoryMap, Prot};
use crate::x86::event::Event;
use crate::x86::state::{Cr, Gpr, State, StateMask};
use crate::x86::xsave::Xsave;

/// One port access handed to the I/O callback (`struct nvmm_io`).
#[derive(Debug)]
pub struct IoRequest<'a> {
    /// The port.
    pub port: u16,
    /// IN (the callback fills `data`) or OUT (the callback reads it).
    pub is_in: bool,
    /// The element: 1, 2 or 4 bytes.
    pub data: &'a mut [u8],
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
    /// for AVX moves, 16 for CMPXCHG16B, 10 for x87 m80) for emulated ones.
    pub data: &'a mut [u8],
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
    /// The I/O assist (`nvmm_assist_io`) for the last [`Exit::Io`](crate::Exit::Io):
    /// calls `io` once per element (for OUT with the data the guest wrote,
    /// for IN to get the data it reads). KVM completes the instruction
    /// (registers, guest memory for INS, RIP) at the next run.
    pub fn assist_io(&mut self, mut io: impl FnMut(&mut IoRequest<'_>)) -> Result<AssistOutcome> {
        if self.last_exit != ExitKind::Io {
            return Err(Error::WrongExit { what: "assist_io", expected: "an I/O exit" });
        }
        let mut exit = self.kvm.io_exit();
        let (port, is_in, size) = (exit.port, exit.is_in(), exit.size());
        if size == 0 {
            return Ok(AssistOutcome::Completed);
        }
        for chunk in exit.data_mut().chunks_exact_mut(size) {
            io(&mut IoRequest { port, is_in, data: chunk });
        }
        self.assisted = true;
        Ok(AssistOutcome::Completed)
    }

    /// Whether KVM finishes the instruction an assist answered at the next
    /// run. Until then [`Vcpu::state`] shows it unfinished;
    /// [`Vcpu::get_state`] shows it finished.
    pub fn finishes_at_next_run(&self) -> bool {
        self.assisted
    }

    /// The memory assist (`nvmm_assist_mem`) for the last
    /// [`Exit::Memory`](crate::Exit::Memory) or
    /// [`Exit::EmulationFailure`](crate::Exit::EmulationFailure): calls
    /// `mem` for every device access of the instruction.
    ///
    /// For an MMIO exit KVM has decoded the instruction: one call, and KVM
    /// completes it at the next run. For an emulation failure the
    /// instruction is decoded and emulated here; if it faults (a #PF from
    /// the page tables, a #GP for a misaligned MOVAPS, INT3's #BP...) the
    /// exception is made pending for the guest. Unsupported instructions
    /// fail with `ENODEV`.
    pub fn assist_mem(&mut self, mut mem: impl FnMut(&mut MemRequest<'_>)) -> Result<AssistOutcome> {
        match self.last_exit {
            ExitKind::Memory => {
                let mut exit = self.kvm.memory_exit();
                let (gpa, write) = (exit.gpa(), exit.is_write());
                mem(&mut MemRequest { gpa, write, data: exit.data_mut() });
                self.assisted = true;
                Ok(AssistOutcome::Completed)
            }
            ExitKind::EmulationFailure => self.emulate(&mut mem),
            _ => Err(Error::WrongExit { what: "assist_mem", expected: "a memory or emulation-failure exit" }),
        }
    }

    fn emulate(&mut self, mem: &mut dyn FnMut(&mut MemRequest<'_>)) -> Result<AssistOutcome> {
        let mut bytes = [0u8; MAX_LEN];
        let n = match self.kvm.emulation_failure().bytes {
            Some(b) => {
                bytes[..b.len()].copy_from_slice(b);
                b.len()
            }
            None => self.fetch_instruction(&mut bytes)?,
        };
        self.get_state(StateMask::GPRS | StateMask::SEGS | StateMask::CRS | StateMask::MSRS)?;
        let mode = cpu_mode(&self.state);
        let insn = decode(&bytes[..n], mode).map_err(|e| match e {
            DecodeError::Truncated => Error::Translation { gva: self.state.gprs[Gpr::Rip] },
            _ => Error::UnsupportedInstruction { detail: e.to_string() },
        })?;
        let regs = self.paging_regs()?;
        let result = {
            let machine = self.machine.clone();
            let memory = machine.memory();
            let mut guest = GuestMemory { map: &memory, regs, callback: mem };
            execute(&insn, &mut CpuView { vcpu: self }, &mut guest)
        };
        self.set_state(StateMask::GPRS)?;
        match result {
            Ok(()) => {
                // The instruction is done: nothing for KVM to complete.
                self.last_exit = ExitKind::None;
                Ok(AssistOutcome::Completed)
            }
            Err(EmuError::Exception { vector, error_code, cr2 }) => {
                if let Some(cr2) = cr2 {
                    self.state.crs[Cr::Cr2] = cr2;
                    self.set_state(StateMask::CRS)?;
                }
                self.inject_internal(Event::exception(vector, u64::from(error_code.unwrap_or(0))));
                self.last_exit = ExitKind::None;
                Ok(AssistOutcome::Exception { vector })
            }
            Err(EmuError::State(e)) => Err(e),
            Err(EmuError::Memory(what)) => Err(Error::GuestMemory { what }),
            Err(EmuError::Unsupported(what)) => Err(Error::UnsupportedInstruction { detail: what.to_string() }),
        }
    }

    /// Reads up to 15 instruction bytes at CS:RIP, stopping early only at a
    /// page that cannot be read (NVMM bug #16: an instruction at the end of
    /// the last mapped page still decodes).
    fn fetch_instruction(&mut self, bytes: &mut [u8; MAX_LEN]) -> Result<usize> {
        let (_, _, linear) = self.code_position()?;
        self.read_linear(linear, bytes)
    }
}

/// The VCPU state cache as the emulator's CPU.
struct CpuView<'a> {
    vcpu: &'a mut Vcpu,
}

impl EmuCpu for CpuView<'_> {
    fn state(&mut self, mask: StateMask) -> Result<&mut State, EmuError> {
        self.vcpu.get_state(mask).map_err(EmuError::State)?;
        Ok(&mut self.vcpu.state)
    }

    fn xsave(&mut self) -> &mut Xsave {
        &mut self.vcpu.xsave
    }

    fn mark(&mut self, mask: StateMask) {
        let parts = super::parts_of(mask);
        self.vcpu.dirty |= parts;
        self.vcpu.have |= parts & part::ALL;
    }
}

/// Guest memory for the emulator: linear addresses through the walker,
/// RAM directly, devices through the callback.
struct GuestMemory<'a, 'b> {
    map: &'a MemoryMap,
    regs: crate::assist::mmu::PagingRegs,
    callback: &'b mut dyn FnMut(&mut MemRequest<'_>),
}

impl GuestMemory<'_, '_> {
    fn pieces(&self, linear: u64, len: usize, access: Access) -> Result<Vec<(u64, usize)>, EmuError> {
        translate_range(self.map, &self.regs, linear, len, access).map_err(|e| match e {
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

    /// Whether `gpa..gpa+len` is RAM the access may use directly.
    fn ram(&self, gpa: u64, len: usize, write: bool) -> bool {
        let need = if write { Prot::WRITE } else { Prot::READ };
        match self.map.area(gpa) {
            Some(a) => a.prot.contains(need) && gpa + len as u64 <= a.gpa + a.size,
            None => false,
        }
    }
}

impl EmuMemory for GuestMemory<'_, '_> {
    fn read(&mut self, linear: u64, buf: &mut [u8], access: Access) -> Result<(), EmuError> {
        let mut done = 0;
        for (gpa, n) in self.pieces(linear, buf.len(), access)? {
            let chunk = &mut buf[done..done + n];
            if self.ram(gpa, n, false) {
                self.map.read(gpa, chunk).map_err(|_| EmuError::Memory("RAM read"))?;
            } else {
                (self.callback)(&mut MemRequest { gpa, write: false, data: chunk });
            }
            done += n;
        }
        Ok(())
    }

    fn write(&mut self, linear: u64, buf: &[u8], access: Access) -> Result<(), EmuError> {
        let access = Access { kind: AccessKind::Write, ..access };
        let mut done = 0;
        for (gpa, n) in self.pieces(linear, buf.len(), access)? {
            let chunk = &buf[done..done + n];
            if self.ram(gpa, n, true) {
                self.map.write(gpa, chunk).map_err(|_| EmuError::Memory("RAM write"))?;
            } else {
                let mut data = chunk.to_vec();
                (self.callback)(&mut MemRequest { gpa, write: true, data: &mut data });
            }
            done += n;
        }
        Ok(())
    }
}
