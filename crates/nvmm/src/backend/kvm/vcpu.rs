//! A KVM VCPU: `KVM_RUN`, the `kvm_run` page, sync regs and the state
//! ioctls.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::{NonNull, addr_of, addr_of_mut};

use kvm_bindings::{
    CpuId, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_INTR, KVM_EXIT_IO, KVM_EXIT_IO_IN,
    KVM_EXIT_IRQ_WINDOW_OPEN, KVM_EXIT_MMIO, KVM_EXIT_SET_TPR, KVM_EXIT_SHUTDOWN, KVM_EXIT_X86_RDMSR,
    KVM_EXIT_X86_WRMSR, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, Msrs,
    kvm_debugregs, kvm_msr_entry, kvm_regs, kvm_run, kvm_sregs, kvm_vcpu_events, kvm_xcr, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::VcpuFd;

use super::convert;
use crate::error::{Error, Result};
use crate::exit::{EmulationFailure, InvalidExit, IoDirection, IoExit, MemAccess, MemoryExit, RdmsrExit, WrmsrExit};
use crate::x86::cpuid::CpuidEntry;
use crate::x86::xsave::XSAVE_SIZE;

/// How many pending exits [`KvmVcpu::park`] completes before giving up.
const PARK_ATTEMPTS: usize = 4096;

/// A summary of the last exit that borrows nothing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RawExit {
    Mmio,
    Io,
    Rdmsr,
    Wrmsr,
    Hlt,
    Shutdown,
    IrqWindowOpen,
    SetTpr,
    Intr,
    EmulationFailure,
    Other { reason: u32, detail: u64 },
}

/// Outcome of one `KVM_RUN`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RunOutcome {
    /// The guest exited; see [`KvmVcpu::exit`].
    Exited,
    /// `KVM_RUN` returned `EINTR` (a signal or `immediate_exit`).
    Interrupted,
}

/// A KVM VCPU.
pub(crate) struct KvmVcpu {
    fd: VcpuFd,
    run: NonNull<kvm_run>,
    run_size: usize,
    /// State ioctls made so far (everything but `KVM_RUN`).
    ioctls: u64,
}

// SAFETY: `run` points into the mapping owned by `fd`, which moves with
// this value; nothing else refers to it (the stop handles use their own
// mapping and only touch `immediate_exit` atomically).
unsafe impl Send for KvmVcpu {}

/// `kvm_run.msr.error` of an MSR exit the VMM has not answered yet (any
/// non-zero value makes KVM raise #GP, should it ever see this one).
const MSR_UNANSWERED: u8 = 0x80;

impl KvmVcpu {
    pub(super) fn new(mut fd: VcpuFd, run_size: usize) -> Result<KvmVcpu> {
        assert!(run_size >= std::mem::size_of::<kvm_run>(), "kvm_run mapping too small");
        let run = NonNull::from(fd.get_kvm_run());
        Ok(KvmVcpu { fd, run, run_size, ioctls: 0 })
    }

    /// Readies the VCPU for reuse after its owner is gone: lets KVM finish
    /// any instruction it left pending (a later owner must not see it
    /// completed over a fresh state), then returns a descriptor that keeps
    /// the KVM VCPU. `None` when the VCPU cannot be quiesced (e.g. a REP
    /// string instruction with billions of iterations left).
    pub(crate) fn park(&mut self) -> Option<OwnedFd> {
        for _ in 0..PARK_ATTEMPTS {
            self.set_immediate_exit();
            let r = self.run();
            self.clear_immediate_exit();
            match r {
                Ok(RunOutcome::Interrupted) => {
                    // SAFETY: the descriptor is open for as long as `self.fd`,
                    // which outlives this borrow.
                    let fd = unsafe { BorrowedFd::borrow_raw(self.fd.as_raw_fd()) };
                    return fd.try_clone_to_owned().ok();
                }
                Ok(RunOutcome::Exited) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Runs the VCPU until the next exit.
    pub(crate) fn run(&mut self) -> Result<RunOutcome> {
        match self.fd.run() {
            Ok(_) => Ok(RunOutcome::Exited),
            Err(e) if e.errno() == libc::EINTR => Ok(RunOutcome::Interrupted),
            Err(e) if e.errno() == libc::EAGAIN => Ok(RunOutcome::Interrupted),
            Err(e) => Err(Error::kvm_errno("KVM_RUN", e)),
        }
    }

    fn run_ptr(&self) -> *mut kvm_run {
        self.run.as_ptr()
    }

    /// The last exit, without borrowing its payload.
    pub(crate) fn exit(&self) -> RawExit {
        let r = self.run_ptr();
        // SAFETY: `r` points at the live kvm_run page; exit_reason is a
        // plain u32 the kernel wrote before KVM_RUN returned.
        let reason = unsafe { (*r).exit_reason };
        match reason {
            KVM_EXIT_MMIO => RawExit::Mmio,
            KVM_EXIT_IO => RawExit::Io,
            KVM_EXIT_X86_RDMSR => RawExit::Rdmsr,
            KVM_EXIT_X86_WRMSR => RawExit::Wrmsr,
            KVM_EXIT_HLT => RawExit::Hlt,
            KVM_EXIT_SHUTDOWN => RawExit::Shutdown,
            KVM_EXIT_IRQ_WINDOW_OPEN => RawExit::IrqWindowOpen,
            KVM_EXIT_SET_TPR => RawExit::SetTpr,
            KVM_EXIT_INTR => RawExit::Intr,
            KVM_EXIT_INTERNAL_ERROR => {
                // SAFETY: exit_reason says the `internal` member is live.
                let sub = unsafe { (*r).__bindgen_anon_1.internal.suberror };
                if sub == KVM_INTERNAL_ERROR_EMULATION {
                    RawExit::EmulationFailure
                } else {
                    RawExit::Other { reason, detail: sub.into() }
                }
            }
            KVM_EXIT_FAIL_ENTRY => {
                // SAFETY: exit_reason says the `fail_entry` member is live.
                let d = unsafe { (*r).__bindgen_anon_1.fail_entry.hardware_entry_failure_reason };
                RawExit::Other { reason, detail: d }
            }
            _ => RawExit::Other { reason, detail: 0 },
        }
    }

    /// Prepares a fresh exit for the VMM: reads see all-ones (open bus) and
    /// unknown MSR accesses fault unless the VMM completes them.
    pub(crate) fn prepare_exit(&mut self, exit: RawExit) {
        let r = self.run_ptr();
        match exit {
            RawExit::Mmio => {
                // SAFETY: exit_reason is KVM_EXIT_MMIO, so `mmio` is live.
                unsafe {
                    let m = addr_of_mut!((*r).__bindgen_anon_1.mmio);
                    if (*m).is_write == 0 {
                        (*m).data = [0xff; 8];
                    }
                }
            }
            RawExit::Io => {
                let (data, is_in) = self.io_parts();
                if is_in {
                    // SAFETY: `data` is the PIO buffer inside the kvm_run
                    // mapping, `count * size` bytes long.
                    unsafe { std::ptr::write_bytes(data.0, 0xff, data.1) };
                }
            }
            RawExit::Rdmsr | RawExit::Wrmsr => {
                // SAFETY: exit_reason is an MSR exit, so `msr` is live.
                unsafe { (*r).__bindgen_anon_1.msr.error = MSR_UNANSWERED };
            }
            _ => {}
        }
    }

    fn io_parts(&self) -> ((*mut u8, usize), bool) {
        let r = self.run_ptr();
        // SAFETY: only called for KVM_EXIT_IO, where `io` is live.
        let io = unsafe { (*r).__bindgen_anon_1.io };
        let len = io.count as usize * io.size as usize;
        let off = io.data_offset as usize;
        // KVM places the data inside its kvm_run mapping (the PIO page);
        // should it ever not, hand out nothing rather than foreign memory.
        let len = if off.checked_add(len).is_some_and(|end| end <= self.run_size) { len } else { 0 };
        let off = if len == 0 { 0 } else { off };
        // SAFETY: the offset is inside the mapping (the kernel guarantees
        // data_offset + count * size lies within the mmap'ed area).
        let p = unsafe { r.cast::<u8>().add(off) };
        ((p, len), u32::from(io.direction) == KVM_EXIT_IO_IN)
    }

    /// Payload of an MMIO exit.
    pub(crate) fn memory_exit(&mut self) -> MemoryExit<'_> {
        let r = self.run_ptr();
        // SAFETY: only called for KVM_EXIT_MMIO, where `mmio` is live; the
        // returned borrow of `data` is tied to `&mut self`, so no KVM_RUN can
        // rewrite it meanwhile.
        unsafe {
            let m = addr_of_mut!((*r).__bindgen_anon_1.mmio);
            let len = ((*m).len as usize).min(8);
            MemoryExit {
                gpa: (*m).phys_addr,
                access: if (*m).is_write != 0 { MemAccess::Write } else { MemAccess::Read },
                data: &mut (&mut (*m).data)[..len],
            }
        }
    }

    /// Direction (in?), operand size, port and count of the last I/O exit.
    pub(crate) fn io_summary(&self) -> (bool, u8, u16, u32) {
        let r = self.run_ptr();
        // SAFETY: only called after KVM_EXIT_IO, where `io` is live.
        let io = unsafe { (*r).__bindgen_anon_1.io };
        (u32::from(io.direction) == KVM_EXIT_IO_IN, io.size, io.port, io.count)
    }

    /// Payload of a port I/O exit.
    pub(crate) fn io_exit(&mut self) -> IoExit<'_> {
        let r = self.run_ptr();
        // SAFETY: only called for KVM_EXIT_IO, where `io` is live.
        let io = unsafe { (*r).__bindgen_anon_1.io };
        let ((p, len), is_in) = self.io_parts();
        IoExit {
            port: io.port,
            direction: if is_in { IoDirection::In } else { IoDirection::Out },
            size: io.size,
            count: io.count,
            // SAFETY: `p..p+len` lies in the kvm_run mapping (io_parts) and
            // is borrowed for as long as `&mut self`.
            data: unsafe { std::slice::from_raw_parts_mut(p, len) },
        }
    }

    /// Payload of an RDMSR exit; `npc` is the address past the RDMSR.
    pub(crate) fn rdmsr_exit(&mut self, npc: u64) -> RdmsrExit<'_> {
        let r = self.run_ptr();
        // SAFETY: only called for KVM_EXIT_X86_RDMSR, where `msr` is live;
        // the borrows are tied to `&mut self`.
        unsafe {
            let m = addr_of_mut!((*r).__bindgen_anon_1.msr);
            RdmsrExit { msr: (*m).index, npc, data: &mut (*m).data, error: &mut (*m).error }
        }
    }

    /// Payload of a WRMSR exit; `npc` is the address past the WRMSR.
    pub(crate) fn wrmsr_exit(&mut self, npc: u64) -> WrmsrExit<'_> {
        let r = self.run_ptr();
        // SAFETY: only called for KVM_EXIT_X86_WRMSR, where `msr` is live.
        unsafe {
            let m = addr_of_mut!((*r).__bindgen_anon_1.msr);
            WrmsrExit { msr: (*m).index, value: (*m).data, npc, error: &mut (*m).error }
        }
    }

    /// Whether the last MSR exit is still unanswered (neither completed
    /// nor refused by the VMM).
    pub(crate) fn msr_unanswered(&self) -> bool {
        let r = self.run_ptr();
        // SAFETY: only called after an MSR exit, before the next KVM_RUN
        // changes the union; `error` is a plain byte.
        unsafe { (*r).__bindgen_anon_1.msr.error == MSR_UNANSWERED }
    }

    /// Answers the last MSR exit successfully with `data` (for RDMSR), so
    /// that KVM finishes the instruction at the next `KVM_RUN`.
    pub(crate) fn answer_msr(&mut self, data: u64) {
        let r = self.run_ptr();
        // SAFETY: as in `msr_unanswered`; plain fields of the live page.
        unsafe {
            let m = addr_of_mut!((*r).__bindgen_anon_1.msr);
            (*m).error = 0;
            (*m).data = data;
        }
    }

    /// Payload of an emulation failure.
    pub(crate) fn emulation_failure(&mut self) -> EmulationFailure<'_> {
        let r = self.run_ptr();
        // SAFETY: only called for an emulation-failure internal error, where
        // `emulation_failure` and `internal` (same memory) are live.
        unsafe {
            let ef = addr_of!((*r).__bindgen_anon_1.emulation_failure);
            let internal = addr_of!((*r).__bindgen_anon_1.internal);
            let has_bytes =
                (*ef).ndata >= 3 && (*ef).flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0;
            let start = if has_bytes { 3 } else { 1 };
            let mut info = [0u64; 5];
            let n = ((*internal).ndata as usize).min(16);
            for (i, v) in info.iter_mut().enumerate() {
                if start + i < n {
                    *v = (*internal).data[start + i];
                }
            }
            let bytes = if has_bytes {
                let ib = &(*ef).__bindgen_anon_1.__bindgen_anon_1;
                let len = (ib.insn_size as usize).min(15);
                Some(&(&(*ef).__bindgen_anon_1.__bindgen_anon_1.insn_bytes)[..len])
            } else {
                None
            };
            EmulationFailure { bytes, info }
        }
    }

    /// Payload of an exit nvmm does not model.
    pub(crate) fn invalid_exit(exit: RawExit) -> InvalidExit {
        match exit {
            RawExit::Other { reason, detail } => InvalidExit { hwcode: reason.into(), detail },
            _ => InvalidExit { hwcode: u64::MAX, detail: 0 },
        }
    }

    // --- kvm_run fields -------------------------------------------------

    /// Sets `kvm_run.immediate_exit`: the next `KVM_RUN` completes pending
    /// work and returns `EINTR` without entering the guest.
    pub(crate) fn set_immediate_exit(&self) {
        let off = std::mem::offset_of!(kvm_run, immediate_exit);
        // SAFETY: as in `clear_immediate_exit`.
        let byte = unsafe { std::sync::atomic::AtomicU8::from_ptr(self.run_ptr().cast::<u8>().add(off)) };
        byte.store(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Clears `kvm_run.immediate_exit`, atomically: stop handles set it
    /// from other threads through their own mapping of the same page (the
    /// CPU orders accesses by physical address, so the two mappings behave
    /// as one location).
    pub(crate) fn clear_immediate_exit(&self) {
        let off = std::mem::offset_of!(kvm_run, immediate_exit);
        // SAFETY: the byte lies in the live kvm_run mapping; user space only
        // ever accesses it atomically.
        let byte = unsafe { std::sync::atomic::AtomicU8::from_ptr(self.run_ptr().cast::<u8>().add(off)) };
        byte.store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// TPR as KVM reported it after the last run (`kvm_run.cr8`).
    pub(crate) fn cr8(&self) -> u64 {
        // SAFETY: plain field of the live kvm_run page.
        unsafe { (*self.run_ptr()).cr8 }
    }

    /// Sets the TPR KVM loads at the next entry (`kvm_run.cr8`; without an
    /// in-kernel LAPIC KVM applies it at every `KVM_RUN`).
    pub(crate) fn set_cr8(&mut self, cr8: u64) {
        // SAFETY: plain field of the live kvm_run page.
        unsafe { (*self.run_ptr()).cr8 = cr8 };
    }

    /// RFLAGS.IF as KVM reported it after the last run.
    pub(crate) fn if_flag(&self) -> bool {
        // SAFETY: plain field of the live kvm_run page.
        unsafe { (*self.run_ptr()).if_flag != 0 }
    }

    /// Asks KVM for an exit when the guest can take an interrupt.
    pub(crate) fn set_request_interrupt_window(&mut self, on: bool) {
        // SAFETY: plain field of the live kvm_run page.
        unsafe { (*self.run_ptr()).request_interrupt_window = on as u8 };
    }

    /// Which register sets KVM copies into `kvm_run` at the next exit.
    pub(crate) fn set_valid_regs(&mut self, bits: u64) {
        // SAFETY: plain field of the live kvm_run page.
        unsafe { (*self.run_ptr()).kvm_valid_regs = bits };
    }

    fn add_dirty(&mut self, bit: u32) {
        // SAFETY: plain field of the live kvm_run page.
        unsafe { (*self.run_ptr()).kvm_dirty_regs |= u64::from(bit) };
    }

    /// General-purpose registers synced at the last exit.
    pub(crate) fn synced_regs(&self) -> kvm_regs {
        // SAFETY: `s.regs` is the sync-regs member of the live page; reading
        // a copy of plain data.
        unsafe { (*self.run_ptr()).s.regs.regs }
    }

    /// Special registers synced at the last exit.
    pub(crate) fn synced_sregs(&self) -> kvm_sregs {
        // SAFETY: as above.
        unsafe { (*self.run_ptr()).s.regs.sregs }
    }

    /// Events synced at the last exit.
    pub(crate) fn synced_events(&self) -> kvm_vcpu_events {
        // SAFETY: as above.
        unsafe { (*self.run_ptr()).s.regs.events }
    }

    /// Stores `regs` for KVM to load at the next entry.
    pub(crate) fn write_regs(&mut self, regs: &kvm_regs) {
        // SAFETY: writes plain data into the sync-regs member.
        unsafe { (*self.run_ptr()).s.regs.regs = *regs };
        self.add_dirty(kvm_bindings::KVM_SYNC_X86_REGS);
    }

    /// Stores `sregs` for KVM to load at the next entry (also used as the
    /// cache of the current special registers).
    pub(crate) fn write_sregs(&mut self, sregs: &kvm_sregs, dirty: bool) {
        // SAFETY: writes plain data into the sync-regs member.
        unsafe { (*self.run_ptr()).s.regs.sregs = *sregs };
        if dirty {
            self.add_dirty(kvm_bindings::KVM_SYNC_X86_SREGS);
        }
    }

    /// Stores `events` for KVM to load at the next entry (also used as the
    /// cache of the current events).
    pub(crate) fn write_events(&mut self, events: &kvm_vcpu_events, dirty: bool) {
        // SAFETY: writes plain data into the sync-regs member.
        unsafe { (*self.run_ptr()).s.regs.events = *events };
        if dirty {
            self.add_dirty(kvm_bindings::KVM_SYNC_X86_EVENTS);
        }
    }

    // --- ioctls ---------------------------------------------------------

    /// Number of state ioctls made so far.
    pub(crate) fn ioctl_count(&self) -> u64 {
        self.ioctls
    }

    pub(crate) fn get_regs(&mut self) -> Result<kvm_regs> {
        self.ioctls += 1;
        self.fd.get_regs().map_err(|e| Error::kvm_errno("KVM_GET_REGS", e))
    }

    pub(crate) fn get_sregs(&mut self) -> Result<kvm_sregs> {
        self.ioctls += 1;
        self.fd.get_sregs().map_err(|e| Error::kvm_errno("KVM_GET_SREGS", e))
    }

    pub(crate) fn get_events(&mut self) -> Result<kvm_vcpu_events> {
        self.ioctls += 1;
        self.fd.get_vcpu_events().map_err(|e| Error::kvm_errno("KVM_GET_VCPU_EVENTS", e))
    }

    pub(crate) fn get_xcr0(&mut self) -> Result<u64> {
        self.ioctls += 1;
        let x = self.fd.get_xcrs().map_err(|e| Error::kvm_errno("KVM_GET_XCRS", e))?;
        let n = (x.nr_xcrs as usize).min(x.xcrs.len());
        Ok(x.xcrs[..n].iter().find(|x| x.xcr == 0).map_or(1, |x| x.value))
    }

    pub(crate) fn set_xcr0(&mut self, value: u64) -> Result<()> {
        self.ioctls += 1;
        let mut x = kvm_xcrs { nr_xcrs: 1, ..Default::default() };
        x.xcrs[0] = kvm_xcr { xcr: 0, reserved: 0, value };
        self.fd.set_xcrs(&x).map_err(|e| Error::kvm_errno("KVM_SET_XCRS", e))
    }

    pub(crate) fn get_msrs(&mut self, indexes: &[u32], out: &mut [u64]) -> Result<()> {
        self.ioctls += 1;
        let entries: Vec<kvm_msr_entry> =
            indexes.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::NoMemory { what: "building an MSR list" })?;
        let n = self.fd.get_msrs(&mut msrs).map_err(|e| Error::kvm_errno("KVM_GET_MSRS", e))?;
        if n != indexes.len() {
            return Err(Error::kvm("KVM_GET_MSRS", std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        for (o, e) in out.iter_mut().zip(msrs.as_slice()) {
            *o = e.data;
        }
        Ok(())
    }

    pub(crate) fn set_msrs(&mut self, values: &[(u32, u64)]) -> Result<()> {
        self.ioctls += 1;
        if values.is_empty() {
            return Ok(());
        }
        let entries: Vec<kvm_msr_entry> =
            values.iter().map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() }).collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| Error::NoMemory { what: "building an MSR list" })?;
        let n = self.fd.set_msrs(&msrs).map_err(|e| Error::kvm_errno("KVM_SET_MSRS", e))?;
        if n != values.len() {
            // KVM stops at the first MSR it refuses.
            return Err(Error::InvalidConfiguration {
                why: "KVM refused an MSR value (e.g. PAT or EFER reserved bits)",
            });
        }
        Ok(())
    }

    pub(crate) fn get_debugregs(&mut self) -> Result<kvm_debugregs> {
        self.ioctls += 1;
        self.fd.get_debug_regs().map_err(|e| Error::kvm_errno("KVM_GET_DEBUGREGS", e))
    }

    pub(crate) fn set_debugregs(&mut self, d: &kvm_debugregs) -> Result<()> {
        self.ioctls += 1;
        self.fd.set_debug_regs(d).map_err(|e| Error::kvm_errno("KVM_SET_DEBUGREGS", e))
    }

    pub(crate) fn get_xsave(&mut self, out: &mut [u8; XSAVE_SIZE]) -> Result<()> {
        self.ioctls += 1;
        let x = self.fd.get_xsave().map_err(|e| Error::kvm_errno("KVM_GET_XSAVE", e))?;
        for (chunk, word) in out.chunks_exact_mut(4).zip(x.region.iter()) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Ok(())
    }

    pub(crate) fn set_xsave(&mut self, area: &[u8; XSAVE_SIZE]) -> Result<()> {
        self.ioctls += 1;
        let mut x = kvm_xsave::default();
        for (word, chunk) in x.region.iter_mut().zip(area.chunks_exact(4)) {
            *word = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        }
        // SAFETY: `x` is a complete 4096-byte kvm_xsave; KVM_SET_XSAVE reads
        // exactly that much because we never enable larger (AMX) state.
        unsafe { self.fd.set_xsave(&x) }.map_err(|e| Error::kvm_errno("KVM_SET_XSAVE", e))
    }

    pub(crate) fn set_cpuid(&mut self, entries: &[CpuidEntry]) -> Result<()> {
        self.ioctls += 1;
        let k: Vec<_> = entries.iter().map(convert::cpuid_to_kvm).collect();
        let c = CpuId::from_entries(&k).map_err(|_| Error::NoMemory { what: "building the CPUID table" })?;
        self.fd.set_cpuid2(&c).map_err(|e| match e.errno() {
            libc::EBUSY | libc::EINVAL => Error::CpuidLocked,
            _ => Error::kvm_errno("KVM_SET_CPUID2", e),
        })
    }

    /// Translates a guest virtual address with the VCPU's current paging
    /// (`KVM_TRANSLATE`); `None` when there is no valid translation.
    pub(crate) fn translate(&mut self, gva: u64) -> Result<Option<u64>> {
        self.ioctls += 1;
        let t = self.fd.translate_gva(gva).map_err(|e| Error::kvm_errno("KVM_TRANSLATE", e))?;
        Ok((t.valid != 0).then_some(t.physical_address))
    }
}
