//! VCPUs: `nvmm_vcpu_*`.

use std::ffi::{CString, c_int, c_void};

use nvmm_core::x86::{CpuidConf, CpuidRegs};
use nvmm_core::{Event, Exit, StateMask, VcpuConf};

use crate::abi::{
    AssistCallbacks, ConfCpuid, ConfTpr, NvmmMachine, NvmmVcpu, VCPU_CONF_CALLBACKS, VCPU_CONF_CPUID, VCPU_CONF_TPR,
};
use crate::comm::CommPage;
use crate::errno::{CResult, check, entry, non_null};
use crate::exit::{self, Summary};
use crate::registry::{self, VcpuCtx, lock_vcpu};
use crate::state_sync::mask_of;

/// `nvmm_vcpu_create`: the VCPU starts in NVMM's x86 RESET state, cached
/// in its comm page. `vcpu->cbs` is cleared (configure the callbacks with
/// `NVMM_VCPU_CONF_CALLBACKS`).
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_create(mach: *mut NvmmMachine, cpuid: u32, vcpu: *mut NvmmVcpu) -> c_int {
    entry(|| {
        let ctx = registry::machine(mach)?;
        let out = non_null(vcpu)?;
        let v = check(ctx.machine.create_vcpu(cpuid))?;
        let comm = CommPage::alloc(v.state(), v.stop_handle());
        // SAFETY: fresh page; plain fields.
        unsafe { (*comm).state_cached = StateMask::ALL.bits() };
        // SAFETY: field projections of the live page, for the C program.
        let (state, event, exit, stop) = unsafe {
            (
                &raw mut (*comm).state,
                &raw mut (*comm).event,
                &raw mut (*comm).exit,
                (&raw mut (*comm).stop).cast::<c_int>(),
            )
        };
        ctx.add_vcpu(cpuid, VcpuCtx { vcpu: v, comm });
        let filled = NvmmVcpu { cpuid, cbs: AssistCallbacks { io: None, mem: None }, state, event, exit, stop };
        // SAFETY: non-null pointer to the caller's `struct nvmm_vcpu`.
        unsafe { out.write(filled) };
        Ok(())
    })
}

/// `nvmm_vcpu_destroy`: the VCPU's `state`, `event`, `exit` and `stop`
/// pointers become invalid.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_destroy(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu) -> c_int {
    entry(|| {
        let ctx = registry::machine(mach)?;
        let vcpu = non_null(vcpu)?;
        // SAFETY: non-null `struct nvmm_vcpu` of the caller.
        let id = unsafe { (*vcpu).cpuid };
        ctx.remove_vcpu(id)
    })
}

/// Runs `f` on the VCPU `vcpu` names, locked.
fn with_vcpu<R>(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu, f: impl FnOnce(&mut VcpuCtx) -> CResult<R>) -> CResult<R> {
    let ctx = registry::machine(mach)?;
    let v = registry::vcpu(&ctx, vcpu)?;
    let mut g = lock_vcpu(&v)?;
    f(&mut g)
}

/// Reads a configuration struct the caller passed.
fn read_conf<T: Copy>(conf: *mut c_void) -> CResult<T> {
    let p = non_null(conf.cast::<T>())?;
    // SAFETY: non-null; the operation says which struct the caller passes.
    Ok(unsafe { p.read_unaligned() })
}

/// `nvmm_vcpu_configure`: `NVMM_VCPU_CONF_CALLBACKS`, `NVMM_VCPU_CONF_CPUID`
/// (masks; exits cannot be delivered on KVM: `ENOTSUP`), `NVMM_VCPU_CONF_TPR`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_configure(
    mach: *mut NvmmMachine,
    vcpu: *mut NvmmVcpu,
    op: u64,
    conf: *mut c_void,
) -> c_int {
    entry(|| match op {
        VCPU_CONF_CALLBACKS => {
            let cbs: AssistCallbacks = read_conf(conf)?;
            with_vcpu(mach, vcpu, |_| Ok(()))?;
            // SAFETY: the VCPU exists, so `vcpu` is a non-null caller struct.
            unsafe { (*vcpu).cbs = cbs };
            Ok(())
        }
        VCPU_CONF_CPUID => {
            let c: ConfCpuid = read_conf(conf)?;
            let regs = |r: [u32; 4]| CpuidRegs { eax: r[0], ebx: r[1], ecx: r[2], edx: r[3] };
            let conf =
                check(CpuidConf::from_raw(c.flags & 1 != 0, c.flags & 2 != 0, c.leaf, regs(c.set), regs(c.del)))?;
            with_vcpu(mach, vcpu, |v| check(v.vcpu.configure(VcpuConf::Cpuid(conf))))
        }
        VCPU_CONF_TPR => {
            let t: ConfTpr = read_conf(conf)?;
            with_vcpu(mach, vcpu, |v| check(v.vcpu.configure(VcpuConf::Tpr { exit_changed: t.flags & 1 != 0 })))
        }
        _ => {
            with_vcpu(mach, vcpu, |_| Ok(()))?;
            Err(libc::EINVAL)
        }
    })
}

/// `nvmm_vcpu_setstate`: marks the components the caller wrote into
/// `vcpu->state`; no system call.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_setstate(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu, flags: u64) -> c_int {
    entry(|| {
        let mask = mask_of(flags)?;
        with_vcpu(mach, vcpu, |v| v.setstate(mask))
    })
}

/// `nvmm_vcpu_getstate`: fetches into `vcpu->state` the components not
/// cached since the last run.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_getstate(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu, flags: u64) -> c_int {
    entry(|| {
        let mask = mask_of(flags)?;
        with_vcpu(mach, vcpu, |v| v.getstate(mask))
    })
}

/// `nvmm_vcpu_inject`: the event in `vcpu->event` goes in at the next run
/// (an invalid one makes that run fail with `EINVAL`, as on NetBSD).
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_inject(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu) -> c_int {
    entry(|| {
        with_vcpu(mach, vcpu, |v| {
            // SAFETY: plain field of the live page.
            unsafe { (*v.comm).event_commit = true };
            Ok(())
        })
    })
}

/// `nvmm_vcpu_run`: commits pending state and event, runs until an exit
/// for the caller, and describes it in `*vcpu->exit`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_run(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu) -> c_int {
    entry(|| {
        with_vcpu(mach, vcpu, |v| {
            // SAFETY: the VCPU exists, so `vcpu` is a non-null caller struct.
            let out = non_null(unsafe { (*vcpu).exit })?;
            let exit = run(v)?;
            // SAFETY: non-null `vcpu->exit`, normally the comm page's buffer.
            unsafe { out.write(exit) };
            Ok(())
        })
    })
}

fn run(v: &mut VcpuCtx) -> CResult<crate::abi::Exit> {
    // SAFETY: live page; a stop the program requested by setting the flag
    // itself reaches the VCPU like one from `nvmm_vcpu_stop`.
    unsafe { CommPage::forward_stop(v.comm) };
    // SAFETY: plain fields of the live page.
    if unsafe { std::mem::take(&mut (*v.comm).event_commit) } {
        // SAFETY: as above.
        let e = unsafe { (*v.comm).event };
        let ev = Event::from_raw(e.typ, e.vector, e.error).map_err(|_| libc::EINVAL)?;
        check(v.vcpu.inject(ev))?;
    }
    let summary = match check(v.vcpu.run())? {
        Exit::Stopped => {
            // SAFETY: live page; NVMM clears the flag when it reports it.
            unsafe { CommPage::clear_stop(v.comm) };
            Summary::of(&Exit::Stopped)
        }
        e => Summary::of(&e),
    };
    v.uncache(StateMask::ALL);
    Ok(exit::build(&summary, &mut v.vcpu))
}

/// `nvmm_vcpu_stop`: makes the VCPU leave `nvmm_vcpu_run` with
/// `NVMM_VCPU_EXIT_STOPPED`. From any thread, or from a signal handler
/// (async-signal-safe: no lock, no allocation).
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_stop(vcpu: *mut NvmmVcpu) -> c_int {
    entry(|| {
        let vcpu = non_null(vcpu)?;
        // SAFETY: non-null caller struct; `stop` of a VCPU this library
        // created points into its comm page (checked by its magic).
        let page = unsafe { CommPage::from_stop((*vcpu).stop) }.ok_or(libc::EINVAL)?;
        // SAFETY: a live comm page.
        unsafe { CommPage::request_stop(page) };
        Ok(())
    })
}

unsafe extern "C" {
    /// The C library's standard output stream (glibc and musl export it).
    static mut stdout: *mut libc::FILE;
}

/// `nvmm_vcpu_dump`: prints the VCPU's state on standard output, through
/// C's `stdout` so that it interleaves with the program's own `printf`s.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_dump(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu) -> c_int {
    entry(|| {
        let text = with_vcpu(mach, vcpu, |v| {
            v.getstate(StateMask::ALL)?;
            check(v.vcpu.dump())
        })?;
        let text = CString::new(text).map_err(|_| libc::EIO)?;
        // SAFETY: `stdout` is the C library's stream, initialised before
        // `main`; `text` is a NUL-terminated string.
        if unsafe { libc::fputs(text.as_ptr(), stdout) } < 0 {
            return Err(libc::EIO);
        }
        Ok(())
    })
}
