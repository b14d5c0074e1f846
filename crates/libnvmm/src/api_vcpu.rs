//! VCPUs: `nvmm_vcpu_*`.

use std::ffi::{CString, c_int, c_void};
use std::sync::atomic::Ordering;

use nvmm::x86::{CpuidConf, CpuidRegs};
use nvmm::{StateMask, Unanswered, VcpuConf};

use crate::abi::{
    AssistCallbacks, ConfCpuid, ConfTpr, NvmmMachine, NvmmVcpu, VCPU_CONF_CALLBACKS, VCPU_CONF_CPUID, VCPU_CONF_TPR,
};
use crate::errno::{CResult, check, entry, non_null};
use crate::handles::{self, VcpuCtx};

/// `nvmm_vcpu_create`: the VCPU starts in NVMM's x86 RESET state, cached
/// in its comm page. `vcpu->cbs` is cleared (configure the callbacks with
/// `NVMM_VCPU_CONF_CALLBACKS`).
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_create(mach: *mut NvmmMachine, cpuid: u32, vcpu: *mut NvmmVcpu) -> c_int {
    entry(|| {
        let ctx = handles::machine(mach)?;
        let out = non_null(vcpu)?;
        // A forked machine's VCPU comes restored from its snapshot.
        let mut v = match ctx.take_restored(cpuid) {
            Some(v) => v,
            None => check(ctx.machine.create_vcpu(cpuid))?,
        };
        // NetBSD: an exit nobody answered executes again.
        v.set_unanswered(Unanswered::Reexecute);
        let vc = VcpuCtx::new(v);
        let comm = vc.comm_page();
        // SAFETY: field projections of the VCPU's live comm page, for the C
        // program (the page lives as long as the VCPU).
        let (state, event, exit, stop) = unsafe {
            (
                &raw mut (*comm).state,
                &raw mut (*comm).event,
                &raw mut (*comm).exit,
                (&raw mut (*comm).stop).cast::<c_int>(),
            )
        };
        ctx.add_vcpu(cpuid, vc);
        let filled = NvmmVcpu { cpuid, cbs: AssistCallbacks { io: None, mem: None }, state, event, exit, stop };
        // SAFETY: non-null pointer to the caller's `struct nvmm_vcpu`.
        unsafe { out.write(filled) };
        Ok(())
    })
}

/// `nvmm_vcpu_destroy`: stops the VCPU if another thread runs it, waits for
/// that run to end (it returns `NVMM_VCPU_EXIT_STOPPED`; later calls on the
/// VCPU fail with `ENOENT`), then destroys it. Its `state`, `event`, `exit`
/// and `stop` pointers become invalid. `EBUSY` from inside one of its own
/// assist callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_destroy(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu) -> c_int {
    entry(|| {
        let ctx = handles::machine(mach)?;
        let vcpu = non_null(vcpu)?;
        // SAFETY: non-null `struct nvmm_vcpu` of the caller.
        let id = unsafe { (*vcpu).cpuid };
        ctx.remove_vcpu(id)
    })
}

/// The VCPU id in the caller's struct.
fn cpuid_of(vcpu: *mut NvmmVcpu) -> CResult<u32> {
    let vcpu = non_null(vcpu)?;
    // SAFETY: non-null; the caller passes a `struct nvmm_vcpu`.
    Ok(unsafe { (*vcpu).cpuid })
}

/// Runs `f` on the VCPU `vcpu` names (locked, or through the callback this
/// thread is inside).
fn on_vcpu<R>(
    mach: *mut NvmmMachine,
    vcpu: *mut NvmmVcpu,
    f: impl FnOnce(&mut nvmm::Vcpu) -> CResult<R>,
) -> CResult<R> {
    let id = cpuid_of(vcpu)?;
    handles::with_vcpu_of(mach, id, |_, v| f(v))
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
            on_vcpu(mach, vcpu, |_| Ok(()))?;
            // SAFETY: the VCPU exists, so `vcpu` is a non-null caller struct.
            unsafe { (*vcpu).cbs = cbs };
            Ok(())
        }
        VCPU_CONF_CPUID => {
            let c: ConfCpuid = read_conf(conf)?;
            let regs = |r: [u32; 4]| CpuidRegs { eax: r[0], ebx: r[1], ecx: r[2], edx: r[3] };
            let conf =
                check(CpuidConf::from_raw(c.flags & 1 != 0, c.flags & 2 != 0, c.leaf, regs(c.set), regs(c.del)))?;
            on_vcpu(mach, vcpu, |v| check(v.configure(VcpuConf::Cpuid(conf))))
        }
        VCPU_CONF_TPR => {
            let t: ConfTpr = read_conf(conf)?;
            on_vcpu(mach, vcpu, |v| check(v.configure(VcpuConf::Tpr { exit_changed: t.flags & 1 != 0 })))
        }
        _ => {
            on_vcpu(mach, vcpu, |_| Ok(()))?;
            Err(libc::EINVAL)
        }
    })
}

/// Parses `NVMM_X64_STATE_*` bits (`EINVAL` for unknown ones).
fn mask_of(flags: u64) -> CResult<StateMask> {
    StateMask::from_bits(flags).ok_or(libc::EINVAL)
}

/// `nvmm_vcpu_setstate`: marks the components the caller wrote into
/// `vcpu->state`; no system call.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_setstate(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu, flags: u64) -> c_int {
    entry(|| {
        let mask = mask_of(flags)?;
        on_vcpu(mach, vcpu, |v| {
            check(v.set_state(mask))?;
            v.publish_comm_bits();
            Ok(())
        })
    })
}

/// `nvmm_vcpu_getstate`: fetches into `vcpu->state` the components not
/// cached since the last run.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_getstate(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu, flags: u64) -> c_int {
    entry(|| {
        let mask = mask_of(flags)?;
        on_vcpu(mach, vcpu, |v| {
            check(v.get_state(mask))?;
            v.publish_comm_bits();
            Ok(())
        })
    })
}

/// `nvmm_vcpu_inject`: the event in `vcpu->event` goes in at the next run
/// (an invalid one makes that run fail with `EINVAL`, as on NetBSD). Only
/// marks the comm page: it never waits for a VCPU another thread runs.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_inject(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu) -> c_int {
    entry(|| {
        let ctx = handles::machine(mach)?;
        let v = ctx.vcpu(cpuid_of(vcpu)?)?;
        // SAFETY: `with_comm` lends the comm page only while the VCPU lives;
        // `event_commit` is atomic.
        v.with_comm(|comm| unsafe { (*comm).event_commit.store(true, Ordering::SeqCst) })
    })
}

/// `nvmm_vcpu_run`: commits pending state and event, runs until an exit
/// for the caller, and describes it in `*vcpu->exit`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmm_vcpu_run(mach: *mut NvmmMachine, vcpu: *mut NvmmVcpu) -> c_int {
    entry(|| {
        let out = {
            let vcpu = non_null(vcpu)?;
            // SAFETY: non-null caller struct.
            non_null(unsafe { (*vcpu).exit })?
        };
        let exit = on_vcpu(mach, vcpu, |v| {
            let comm = v.comm_page();
            // SAFETY: the VCPU's live comm page; `stop` and `event_commit`
            // are atomic, `event` is copied (another thread writing it
            // meanwhile is the program's race, as on NetBSD). The commit
            // flag is read first and swapped (a locked instruction) only
            // when set.
            let (stop, posted) = unsafe {
                let commit = &(*comm).event_commit;
                let posted = commit.load(Ordering::SeqCst) && commit.swap(false, Ordering::SeqCst);
                (
                    (*comm).stop.load(Ordering::SeqCst) != 0,
                    posted.then(|| std::ptr::read_volatile(&raw const (*comm).event)),
                )
            };
            if stop {
                // Set by the program itself rather than nvmm_vcpu_stop.
                v.handle().stop();
            }
            if let Some(e) = posted {
                // An invalid event fails the run, as on NetBSD.
                let ev = check(nvmm::Event::from_raw(e.typ, e.vector, e.error))?;
                check(v.inject(ev))?;
            }
            let r = check(v.run_netbsd());
            let exit = match r {
                Ok(e) => e,
                Err(_) => v.netbsd_exit(),
            };
            if exit.reason == nvmm::exit::reason::STOPPED {
                // SAFETY: as above; NVMM clears the flag when it reports it.
                unsafe { (*comm).stop.store(0, Ordering::SeqCst) };
            }
            v.publish_comm_bits();
            r.map(|_| exit)
        })?;
        // SAFETY: non-null `vcpu->exit`, normally the comm page's buffer.
        unsafe { out.write(exit) };
        Ok(())
    })
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
        if !unsafe { nvmm::netbsd::stop_by_flag((*vcpu).stop) } {
            return Err(libc::EINVAL);
        }
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
        let text = on_vcpu(mach, vcpu, |v| check(v.dump()))?;
        let text = CString::new(text).map_err(|_| libc::EIO)?;
        // SAFETY: `stdout` is the C library's stream, initialised before
        // `main`; `text` is a NUL-terminated string.
        if unsafe { libc::fputs(text.as_ptr(), stdout) } < 0 {
            return Err(libc::EIO);
        }
        Ok(())
    })
}
