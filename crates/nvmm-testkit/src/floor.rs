//! The floor the benchmarks measure against: a bare `KVM_RUN` loop written
//! directly on `kvm-ioctls`, with nothing of nvmm in it.
#![allow(unsafe_code)]

use kvm_bindings::{KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

/// A floor failure: which step failed and the errno.
#[derive(Debug)]
pub struct FloorError {
    /// The step (an ioctl name).
    pub what: &'static str,
    /// The error.
    pub source: std::io::Error,
}

impl std::fmt::Display for FloorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "raw KVM floor: {} failed: {}", self.what, self.source)
    }
}

impl std::error::Error for FloorError {}

type Result<T> = std::result::Result<T, FloorError>;

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> FloorError {
    move |e| FloorError { what, source: std::io::Error::from_raw_os_error(e.errno()) }
}

/// Page-aligned zeroed memory for the floor's guest.
struct GuestRam {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl GuestRam {
    fn new(len: usize) -> Result<GuestRam> {
        let layout = Layout::from_size_align(len.max(4096), 4096)
            .map_err(|_| FloorError { what: "guest memory layout", source: std::io::ErrorKind::InvalidInput.into() })?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(p)
            .ok_or(FloorError { what: "allocating guest memory", source: std::io::ErrorKind::OutOfMemory.into() })?;
        Ok(GuestRam { ptr, layout })
    }

    fn write(&self, offset: u64, bytes: &[u8]) {
        assert!(offset as usize + bytes.len() <= self.layout.size(), "floor guest code outside its RAM");
        // SAFETY: in bounds (asserted); no reference into the block exists.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(offset as usize), bytes.len()) }
    }

    fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the VM that used it
        // is dropped first (field order of `RawVm`).
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A minimal VM: one VCPU in real mode executing `code` at guest physical
/// address `gpa` (CS base 0), with `mem_size` bytes of RAM at 0.
pub struct RawVm {
    vcpu: VcpuFd,
    sync: (bool, bool),
    _vm: VmFd,
    mem: GuestRam,
}

/// What a raw exit was.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RawExitKind {
    /// Port I/O.
    Io,
    /// HLT.
    Hlt,
    /// `KVM_EXIT_DEBUG` (a single step, say).
    Debug,
    /// Anything else.
    Other,
}

/// A `/dev/kvm` descriptor of the floor's own.
pub struct RawKvm {
    kvm: Kvm,
}

impl RawKvm {
    /// Opens `/dev/kvm`.
    pub fn open() -> Result<RawKvm> {
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        Ok(RawKvm { kvm })
    }

    /// The `/dev/kvm` descriptor, for the host probes.
    pub(crate) fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Builds a VM.
    pub fn vm(&self, code: &[u8], gpa: u64, mem_size: usize) -> Result<RawVm> {
        RawVm::new(&self.kvm, code, gpa, mem_size)
    }
}

impl RawVm {
    fn new(kvm: &Kvm, code: &[u8], gpa: u64, mem_size: usize) -> Result<RawVm> {
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let mem = GuestRam::new(mem_size)?;
        mem.write(gpa, code);
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem_size as u64,
            userspace_addr: mem.addr(),
        };
        // SAFETY: `mem` is a live mapping of `mem_size` bytes owned by the
        // returned value, which also owns the VM: the slot never outlives it.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
        let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
        regs.rip = gpa;
        regs.rflags = 2;
        vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
        Ok(RawVm { vcpu, sync: (false, false), _vm: vm, mem })
    }

    /// The VCPU, for probes that set up more than real mode, and the
    /// state floor.
    pub fn vcpu(&self) -> &VcpuFd {
        &self.vcpu
    }

    /// Makes every run single-step (`KVM_SET_GUEST_DEBUG` with
    /// `KVM_GUESTDBG_SINGLESTEP`): each run ends after one instruction with
    /// [`RawExitKind::Debug`].
    pub fn single_step(&mut self) -> Result<()> {
        use kvm_bindings::{KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, kvm_guest_debug};
        let dbg = kvm_guest_debug {
            control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | kvm_bindings::KVM_GUESTDBG_BLOCKIRQ,
            ..Default::default()
        };
        self.vcpu.set_guest_debug(&dbg).map_err(kvm_err("KVM_SET_GUEST_DEBUG"))
    }

    /// Turns on `KVM_CAP_EXIT_ON_EMULATION_FAILURE` and runs once: when
    /// KVM's emulator gives up, the internal error's sub-error and data
    /// words as KVM wrote them (`None` for any other exit).
    pub fn run_to_emulation_failure(&mut self) -> Result<Option<(u32, Vec<u64>)>> {
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_EXIT_ON_EMULATION_FAILURE,
            args: [1, 0, 0, 0],
            ..Default::default()
        };
        self._vm.enable_cap(&cap).map_err(kvm_err("KVM_ENABLE_CAP(EXIT_ON_EMULATION_FAILURE)"))?;
        match self.vcpu.run().map_err(kvm_err("KVM_RUN"))? {
            VcpuExit::InternalError => {}
            _ => return Ok(None),
        }
        let run = self.vcpu.get_kvm_run();
        // SAFETY: the exit was KVM_EXIT_INTERNAL_ERROR, whose `internal`
        // member (plain integers) is the live one.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        Ok(Some((internal.suberror, internal.data[..n].to_vec())))
    }

    /// Writes `bytes` into guest RAM at `gpa`.
    pub(crate) fn write(&self, gpa: u64, bytes: &[u8]) {
        self.mem.write(gpa, bytes);
    }

    /// Makes every following run copy the general-purpose and special
    /// registers out through `kvm_run` at the exit (`valid`) and load the
    /// general-purpose registers from it at the entry (`load_regs`): the
    /// kernel's share of reading and writing state around an exit.
    pub fn sync_registers(&mut self, valid: bool, load_regs: bool) {
        self.sync = (valid, load_regs);
    }

    /// Asks KVM for an exit when the guest can take an interrupt
    /// (`kvm_run.request_interrupt_window`, kept for every later run); that
    /// exit is [`RawExitKind::Other`].
    pub fn request_interrupt_window(&mut self) {
        self.vcpu.get_kvm_run().request_interrupt_window = 1;
    }

    /// One `KVM_RUN`.
    pub fn run(&mut self) -> Result<RawExitKind> {
        let (valid, load) = self.sync;
        let run = self.vcpu.get_kvm_run();
        run.kvm_valid_regs = if valid { u64::from(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS) } else { 0 };
        if load {
            run.kvm_dirty_regs |= u64::from(KVM_SYNC_X86_REGS);
        }
        match self.vcpu.run().map_err(kvm_err("KVM_RUN"))? {
            VcpuExit::IoOut(..) | VcpuExit::IoIn(..) => Ok(RawExitKind::Io),
            VcpuExit::Hlt => Ok(RawExitKind::Hlt),
            VcpuExit::Debug(_) => Ok(RawExitKind::Debug),
            _ => Ok(RawExitKind::Other),
        }
    }
}
