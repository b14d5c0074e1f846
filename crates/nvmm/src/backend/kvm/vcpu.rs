//! A KVM VCPU: `KVM_RUN`, the exit decoded once into an [`ExitRecord`],
//! the exit buffers of the `kvm_run` page, the signal mask, parking.
//! How state moves between the front end and KVM is in `state.rs`.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

use kvm_bindings::{
    CpuId, KVM_EXIT_IO_IN, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
    KVM_SYNC_X86_EVENTS, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS, kvm_run,
};
use kvm_ioctls::VcpuFd;

use super::RunAlias;
use super::convert;
use super::exit_decode::{self, Decoded};
use super::state::SyncPolicy;
use crate::backend::{MsrAnswer, Parts, RunCall, RunResult, VcpuBackend};
use crate::error::{Error, Result};
use crate::exit::record::{ExitRecord, InsnBytes};
use crate::os::SignalMask;
use crate::x86::cpuid::CpuidEntry;

/// How many pending exits reviving a parked VCPU completes before giving
/// up ([`KvmVcpu::finish_everything_pending`]).
const PARK_ATTEMPTS: usize = 4096;

/// `kvm_run.msr.error` of an MSR exit the VMM has not answered yet (any
/// value but 0 and 1; KVM would raise #GP should it ever see it).
pub(crate) const MSR_UNANSWERED: u8 = 0x80;

/// `KVM_SET_SIGNAL_MASK`: `_IOW(KVMIO, 0x8b, struct kvm_signal_mask)`, the
/// struct being its 4-byte header.
const KVM_SET_SIGNAL_MASK: libc::c_ulong = 0x4004_ae8b;

/// A KVM VCPU.
pub(crate) struct KvmVcpu {
    pub(super) fd: VcpuFd,
    run_size: usize,
    /// State ioctls made so far (everything but `KVM_RUN`).
    pub(super) ioctls: u64,
    /// Register sets KVM copies through `kvm_run`, and what is current.
    pub(super) sync: SyncPolicy,
    /// The segments last read, converted (see [`convert::SegsMemo`]).
    pub(super) segs_memo: convert::SegsMemo,
    /// The exit information of the last emulation failure.
    failure_info: [u64; 5],
    /// The thread whose signal mask `KVM_SET_SIGNAL_MASK` was last set
    /// for (0: never), and whether a mask is installed.
    mask_thread: i32,
    mask_active: bool,
    /// The kick signal, when the installed mask unblocks it for runs only
    /// (it must then be consumed after an interrupted run).
    drain_signal: Option<i32>,
    /// `kvm_run.cr8` and `kvm_run.if_flag` as of the last run.
    cr8: u64,
    if_flag: bool,
    /// `KVM_GUESTDBG_BLOCKIRQ` was refused once: not asked for again.
    pub(super) no_blockirq: bool,
    /// The MSRs KVM lists (`KVM_GET_MSR_INDEX_LIST`), and those of them
    /// this VCPU can read (probed at the first snapshot).
    pub(super) msr_index_list: std::sync::Arc<[u32]>,
    pub(super) msr_list: Option<Vec<u32>>,
    /// What restores learned: a digest of the CPUID table last set (KVM
    /// takes an identical table again, so it is not sent again), the TSC
    /// frequency, and the MSRs KVM refuses to write even with the value it
    /// holds (checked by reading them instead).
    pub(super) restored: super::snapshot::RestoreMemo,
}

impl KvmVcpu {
    pub(super) fn new(
        fd: VcpuFd,
        run_size: usize,
        msr_index_list: std::sync::Arc<[u32]>,
        restored: super::snapshot::RestoreMemo,
    ) -> Result<KvmVcpu> {
        if run_size < std::mem::size_of::<kvm_run>() {
            return Err(Error::Unsupported { what: "a kvm_run mapping smaller than struct kvm_run" });
        }
        Ok(KvmVcpu {
            fd,
            run_size,
            ioctls: 0,
            sync: SyncPolicy::default(),
            segs_memo: convert::SegsMemo::default(),
            failure_info: [0; 5],
            mask_thread: 0,
            mask_active: false,
            drain_signal: None,
            cr8: 0,
            if_flag: false,
            no_blockirq: false,
            msr_index_list,
            msr_list: None,
            restored,
        })
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn run_page(&mut self) -> &mut kvm_run {
        self.fd.get_kvm_run()
    }

    /// Sets or clears `kvm_run.immediate_exit`, atomically with `order`:
    /// kick handles write it from other threads through their own mapping
    /// of the page (the CPU orders accesses by physical address, so the two
    /// mappings behave as one location).
    fn set_immediate_exit(&mut self, on: bool, order: Ordering) {
        let off = std::mem::offset_of!(kvm_run, immediate_exit);
        let page: *mut kvm_run = self.run_page();
        // SAFETY: the byte lies in the live kvm_run mapping owned by `fd`;
        // user space only ever accesses it atomically.
        let byte = unsafe { std::sync::atomic::AtomicU8::from_ptr(page.cast::<u8>().add(off)) };
        byte.store(on as u8, order);
    }

    /// One `KVM_RUN`, decoded.
    #[inline(always)]
    fn enter_and_decode(&mut self) -> Result<RunResult> {
        let call = VcpuBackend::enter(self);
        self.decode_run(call)
    }

    /// The exit of the `KVM_RUN` that returned `result`, read from
    /// `kvm_run`.
    #[inline(always)]
    fn decode_run(&mut self, result: RunCall) -> Result<RunResult> {
        // A VCPU that ran is no longer as KVM created it.
        self.restored.fresh = None;
        // KVM writes these at every return from KVM_RUN.
        let run = self.run_page();
        (self.cr8, self.if_flag) = (run.cr8, run.if_flag != 0);
        let record = match result {
            Ok(()) => exit_decode::decode(self.run_page()),
            Err(errno) if errno == libc::EINTR || errno == libc::EAGAIN => {
                crate::hint::cold_path();
                self.sync.after_run(true);
                self.drain_kick();
                return Ok(RunResult::Interrupted);
            }
            Err(errno) => {
                crate::hint::cold_path();
                self.sync.after_run(false);
                return Err(Error::kvm("KVM_RUN", std::io::Error::from_raw_os_error(errno)));
            }
        };
        self.sync.after_run(true);
        let record = match record {
            Decoded::Done(r) => r,
            Decoded::Io { port, is_in } => self.io_record(port, is_in),
            Decoded::InternalError => self.internal_error(),
        };
        self.prepare(&record);
        Ok(RunResult::Exit(record))
    }

    /// [`VcpuBackend::prepare_thread`] for a thread other than the last
    /// one: its signal mask decides how the kick reaches it.
    #[cold]
    #[inline(never)]
    fn prepare_new_thread(&mut self, tid: i32, signal: i32) -> Result<()> {
        let mask = SignalMask::of_this_thread();
        if mask.blocks(signal) {
            // The thread blocks the kick signal: let it through during runs
            // only, and consume it after an interrupted run.
            self.set_signal_mask(Some(mask.without(signal)))?;
            self.drain_signal = Some(signal);
        } else {
            if self.mask_active {
                self.set_signal_mask(None)?;
            }
            self.drain_signal = None;
        }
        self.mask_thread = tid;
        Ok(())
    }

    /// Consumes a kick signal the thread blocks outside runs (see
    /// [`VcpuBackend::prepare_thread`]).
    fn drain_kick(&mut self) {
        if let Some(signal) = self.drain_signal {
            crate::os::consume_pending(signal);
        }
    }

    fn io_record(&mut self, port: u16, is_in: bool) -> ExitRecord {
        let run = self.run_page();
        // SAFETY: the exit reason is KVM_EXIT_IO, so `io` is the live member
        // of the union (plain integers).
        let io = unsafe { run.__bindgen_anon_1.io };
        debug_assert_eq!(u32::from(io.direction) == KVM_EXIT_IO_IN, is_in);
        ExitRecord::Io { port, size: io.size, count: io.count, is_in }
    }

    fn internal_error(&mut self) -> ExitRecord {
        let run = self.run_page();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal`
        // and its alias `emulation_failure` are the live members (plain
        // integers and bytes).
        let (internal, ef) = unsafe { (run.__bindgen_anon_1.internal, run.__bindgen_anon_1.emulation_failure) };
        if internal.suberror != KVM_INTERNAL_ERROR_EMULATION {
            return ExitRecord::Invalid {
                hwcode: kvm_bindings::KVM_EXIT_INTERNAL_ERROR.into(),
                detail: internal.suberror.into(),
            };
        }
        let has_bytes = ef.ndata >= 3 && ef.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0;
        let start = if has_bytes { 3 } else { 1 };
        let n = (internal.ndata as usize).min(internal.data.len());
        let mut info = [0u64; 5];
        for (i, v) in info.iter_mut().enumerate() {
            if start + i < n {
                *v = internal.data[start + i];
            }
        }
        let mut bytes = [0u8; 15];
        let mut len = 0;
        if has_bytes {
            // SAFETY: the flags say the instruction-bytes member is live.
            let ib = unsafe { ef.__bindgen_anon_1.__bindgen_anon_1 };
            len = ib.insn_size.min(15);
            bytes[..len as usize].copy_from_slice(&ib.insn_bytes[..len as usize]);
        }
        self.failure_info = info;
        ExitRecord::EmulationFailure { insn: InsnBytes { bytes, len } }
    }

    /// Readies a fresh exit for the VMM: reads see all-ones (open bus) and
    /// MSR accesses stay unanswered until the VMM answers them.
    /// (The buffers are filled with stores of fixed size: a fill of a
    /// variable length is a call to the C library's `memset` through the
    /// GOT, an indirect branch at every exit, which the host's
    /// branch-predictor barrier at VM exits makes mispredict.)
    fn prepare(&mut self, record: &ExitRecord) {
        match record {
            ExitRecord::Memory { write: false, .. } => {
                // After a memory exit `mmio` is the live member of the
                // union (KVM reads `len` of these bytes).
                self.run_page().__bindgen_anon_1.mmio.data = [0xff; 8];
            }
            ExitRecord::Io { is_in: true, .. } => {
                let data = self.io_data();
                match data.len() {
                    1 => data[0] = 0xff,
                    2 => data.copy_from_slice(&[0xff; 2]),
                    4 => data.copy_from_slice(&[0xff; 4]),
                    _ => data.fill(0xff),
                }
            }
            ExitRecord::Rdmsr { .. } | ExitRecord::Wrmsr { .. } => *self.msr_answer().error = MSR_UNANSWERED,
            _ => {}
        }
    }
}

impl VcpuBackend for KvmVcpu {
    type Kick = RunAlias;

    fn kick(&self) -> Result<RunAlias> {
        RunAlias::map(self.raw_fd())
    }

    /// A relaxed store suffices here: the front end then publishes the
    /// running thread with a sequentially consistent store (a release)
    /// before it checks for stop requests, and a requester kicks only after
    /// it read that publication (an acquire), so its `1` lands after this
    /// `0` — or else it read an older thread id, and the check finds its
    /// request. This saves a locked instruction per run on x86. (The clear
    /// after [`VcpuBackend::finish_pending`] stays sequentially consistent:
    /// no publication follows it before the next check.)
    fn clear_kick(&mut self) {
        self.set_immediate_exit(false, Ordering::Relaxed);
    }

    fn prepare_thread(&mut self, tid: i32, signal: i32) -> Result<()> {
        if tid == self.mask_thread {
            return Ok(());
        }
        self.prepare_new_thread(tid, signal)
    }

    fn begin_run(&mut self) {
        self.sync.before_run(self.fd.get_kvm_run());
    }

    #[inline(always)]
    fn enter(&mut self) -> RunCall {
        exit_decode::kvm_run_ioctl(self.raw_fd())
    }

    #[inline(always)]
    fn end_run(&mut self, call: RunCall) -> Result<RunResult> {
        self.decode_run(call)
    }

    fn finish_pending(&mut self) -> Result<Option<ExitRecord>> {
        self.begin_run();
        self.set_immediate_exit(true, Ordering::SeqCst);
        let r = self.enter_and_decode();
        self.set_immediate_exit(false, Ordering::SeqCst);
        match r? {
            RunResult::Interrupted => Ok(None),
            RunResult::Exit(e) => Ok(Some(e)),
        }
    }

    fn want(&mut self, parts: Parts) {
        self.sync.want(parts);
    }

    #[inline]
    fn code_regs(&mut self) -> Result<crate::x86::mode::CodeRegs> {
        self.load_code_regs()
    }

    fn rflags(&mut self) -> Result<u64> {
        self.load_rflags()
    }

    fn load(
        &mut self,
        parts: Parts,
        state: &mut crate::x86::state::State,
        xsave: &mut crate::x86::xsave::Xsave,
    ) -> Result<()> {
        self.load_parts(parts, state, xsave)
    }

    fn store(
        &mut self,
        parts: Parts,
        state: &crate::x86::state::State,
        xsave: &crate::x86::xsave::Xsave,
    ) -> Result<()> {
        self.store_parts(parts, state, xsave)
    }

    fn store_events(
        &mut self,
        intr: Option<&crate::x86::state::Intr>,
        events: &[crate::x86::event::Event],
        reset: bool,
    ) -> Result<()> {
        self.store_event_parts(intr, events, reset)
    }

    fn event_status(&mut self) -> Result<crate::backend::EventStatus> {
        Ok(convert::event_status(self.current_events()?))
    }

    fn tpr(&self) -> u8 {
        self.cr8 as u8
    }

    fn interrupts_enabled(&self) -> bool {
        self.if_flag
    }

    fn set_interrupt_window(&mut self, on: bool) {
        self.run_page().request_interrupt_window = on as u8;
    }

    fn window_exits_are_exact(&self) -> bool {
        super::window_probe::window_exits_are_exact()
    }

    fn failure_info(&self) -> [u64; 5] {
        self.failure_info
    }

    fn io_data(&mut self) -> &mut [u8] {
        let run_size = self.run_size;
        let run = self.run_page();
        // SAFETY: only meaningful after KVM_EXIT_IO, where `io` is the live
        // member (plain integers); after any other exit the bytes read are
        // whatever the union holds, and the bounds check below still keeps
        // the slice inside the mapping.
        let io = unsafe { run.__bindgen_anon_1.io };
        let len = io.count as usize * io.size as usize;
        let off = io.data_offset as usize;
        // KVM places the data inside its kvm_run mapping (the PIO page);
        // should it ever not, hand out nothing rather than foreign memory.
        let (off, len) = if off.checked_add(len).is_some_and(|end| end <= run_size) { (off, len) } else { (0, 0) };
        let base: *mut kvm_run = run;
        // SAFETY: `off + len <= run_size`, the size of the mapping `run`
        // starts; the slice borrows `self` mutably, so no KVM_RUN can
        // rewrite it meanwhile.
        unsafe { std::slice::from_raw_parts_mut(base.cast::<u8>().add(off), len) }
    }

    fn mmio_data(&mut self) -> &mut [u8] {
        let run = self.run_page();
        // SAFETY: `mmio` is plain bytes and integers; after a memory exit it
        // is the live member, and `len` is at most 8 by KVM's contract
        // (clamped anyway).
        let m = unsafe { &mut run.__bindgen_anon_1.mmio };
        let len = (m.len as usize).min(8);
        &mut m.data[..len]
    }

    fn msr_answer(&mut self) -> MsrAnswer<'_> {
        let run = self.run_page();
        // SAFETY: `msr` is plain integers; after an MSR exit it is the live
        // member, which is when the front end asks.
        let m = unsafe { &mut run.__bindgen_anon_1.msr };
        MsrAnswer { data: &mut m.data, error: &mut m.error }
    }

    fn set_guest_debug(&mut self, debug: &crate::debug::GuestDebug) -> Result<bool> {
        self.apply_guest_debug(debug)
    }

    fn capture(&mut self) -> Result<crate::snapshot::KernelState> {
        self.capture_state()
    }

    fn restore(&mut self, state: &crate::snapshot::KernelState) -> Result<()> {
        self.restore_state(state)
    }

    fn set_cpuid(&mut self, entries: &[CpuidEntry]) -> Result<()> {
        self.ioctls += 1;
        let k: Vec<_> = entries.iter().map(convert::cpuid_to_kvm).collect();
        let c = CpuId::from_entries(&k).map_err(|_| Error::NoMemory { what: "building the CPUID table" })?;
        self.fd.set_cpuid2(&c).map_err(|e| match e.errno() {
            libc::EBUSY | libc::EINVAL => Error::CpuidLocked,
            _ => Error::kvm_errno("KVM_SET_CPUID2", e),
        })
    }

    fn translate(&mut self, gva: u64) -> Result<Option<u64>> {
        self.ioctls += 1;
        let t = self.fd.translate_gva(gva).map_err(|e| Error::kvm_errno("KVM_TRANSLATE", e))?;
        Ok((t.valid != 0).then_some(t.physical_address))
    }

    fn state_ioctls(&self) -> u64 {
        self.ioctls
    }

    fn park(&mut self) -> Option<OwnedFd> {
        // What KVM left pending is finished when the VCPU is taken again
        // (`KvmVm::revive_vcpu`), before its new owner's state goes in: a
        // machine destroyed first never pays the `KVM_RUN` that costs.
        // SAFETY: the descriptor is open for as long as `self.fd`, which
        // outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd.as_raw_fd()) };
        fd.try_clone_to_owned().ok()
    }
}

impl KvmVcpu {
    /// Lets KVM finish any instruction a parked VCPU's last owner left
    /// pending (its new owner must not see it completed over a fresh
    /// state).
    pub(super) fn finish_everything_pending(&mut self) -> Result<()> {
        for _ in 0..PARK_ATTEMPTS {
            if self.finish_pending()?.is_none() {
                return Ok(());
            }
        }
        Err(Error::Unsettled { what: "reviving a parked VCPU" })
    }
}

impl KvmVcpu {
    /// Installs (or removes, with `None`) the signal mask KVM applies
    /// during runs.
    fn set_signal_mask(&mut self, mask: Option<SignalMask>) -> Result<()> {
        self.ioctls += 1;
        let r = match mask {
            Some(m) => {
                // struct kvm_signal_mask { __u32 len; __u8 sigset[]; } with
                // the kernel's 8-byte sigset.
                let mut buf = [0u8; 12];
                buf[..4].copy_from_slice(&8u32.to_ne_bytes());
                buf[4..].copy_from_slice(&m.kernel_bits().to_ne_bytes());
                // SAFETY: KVM_SET_SIGNAL_MASK reads a 4-byte length and that
                // many bytes of mask from `buf`, which holds both.
                unsafe { libc::ioctl(self.fd.as_raw_fd(), KVM_SET_SIGNAL_MASK, buf.as_ptr()) }
            }
            // SAFETY: a null argument removes the mask; nothing is read.
            None => unsafe { libc::ioctl(self.fd.as_raw_fd(), KVM_SET_SIGNAL_MASK, std::ptr::null::<u8>()) },
        };
        if r != 0 {
            return Err(Error::kvm("KVM_SET_SIGNAL_MASK", std::io::Error::last_os_error()));
        }
        self.mask_active = mask.is_some();
        Ok(())
    }
}

/// The register sets of `kvm_run` NVMM's parts travel in.
pub(super) mod sync_sets {
    use super::*;
    pub(crate) const REGS: u64 = KVM_SYNC_X86_REGS as u64;
    pub(crate) const SREGS: u64 = KVM_SYNC_X86_SREGS as u64;
    pub(crate) const EVENTS: u64 = KVM_SYNC_X86_EVENTS as u64;
}
