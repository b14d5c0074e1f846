//! Machines and VCPUs: creation, limits, bad ids, threads.

mod common;

use std::sync::{Arc, Barrier};

use common::*;
use nvmm::{Exit, Gpr, Nvmm, Options, Prot, StateMask};

#[test]
fn open_is_once_per_process() {
    nvmm_testkit::kvm_or_skip!();
    let a = nvmm();
    let b = nvmm();
    assert_eq!(a.capability(), b.capability());
    let other = Options { kick_signal: a_different_signal(), ..Options::default() };
    assert_eq!(Nvmm::open_with(other).unwrap_err().errno(), 16, "EBUSY: already open with other options");
}

fn a_different_signal() -> i32 {
    Options::default().kick_signal - 1
}

#[test]
fn capability_reports_what_is_honoured() {
    nvmm_testkit::kvm_or_skip!();
    let n = nvmm();
    let c = n.capability();
    let k = n.backend_facts();
    assert_eq!((c.version, c.state_size), (2, 1008));
    assert!(c.max_machines >= 1024, "{}", c.max_machines);
    assert_eq!(c.max_vcpus, k.max_vcpus.min(k.max_vcpu_id));
    assert!(c.max_ram >= 1 << 40, "at least 1 TiB of guest physical space");
    assert_eq!(c.arch.mach_conf_support, 0);
    assert_eq!(c.arch.vcpu_conf_support, 3);
    assert_eq!(c.arch.xcr0_mask & 3, 3);
    assert_eq!(c.arch.conf_cpuid_maxops, 32);
    assert_ne!(c.arch.mxcsr_mask, 0);
    assert_eq!(k.api_version, 12);
}

#[test]
fn machine_ids_info_and_reuse() {
    nvmm_testkit::kvm_or_skip!();
    let n = nvmm();
    let m = n.create_machine().unwrap();
    let id = m.id();
    let info = n.machine_info(id).unwrap();
    assert_eq!((info.machid, info.nvcpus, info.nram, info.pid), (id, 0, 0, std::process::id()));
    let _v0 = m.create_vcpu(0).unwrap();
    let _v5 = m.create_vcpu(5).unwrap();
    m.hva_map_anonymous(8192).unwrap();
    let info = m.info();
    assert_eq!((info.nvcpus, info.nram), (2, 8192));
    drop((_v0, _v5));
    assert_eq!(m.info().nvcpus, 0);
    let destroyed = std::time::SystemTime::now();
    drop(m);
    match n.machine_info(id) {
        Err(e) => assert_eq!(e.errno(), 2, "ENOENT after destroy"),
        // Another test of this process took the freed id.
        Ok(other) => assert!(other.created >= destroyed),
    }
    assert_eq!(n.machine_info(n.capability().max_machines).unwrap_err().errno(), 22, "EINVAL out of range");
}

#[test]
fn vcpu_ids_are_checked() {
    nvmm_testkit::kvm_or_skip!();
    let n = nvmm();
    let m = n.create_machine().unwrap();
    let max = n.capability().max_vcpus;
    assert_eq!(m.create_vcpu(max).unwrap_err().errno(), 22, "EINVAL");
    assert_eq!(m.create_vcpu(u32::MAX).unwrap_err().errno(), 22, "EINVAL");
    let v = m.create_vcpu(max - 1).unwrap();
    assert_eq!(m.create_vcpu(max - 1).unwrap_err().errno(), 16, "EBUSY");
    drop(v);
    let v = m.create_vcpu(max - 1).unwrap();
    assert_eq!(v.id(), max - 1);
}

#[test]
fn a_destroyed_vcpu_id_comes_back_in_reset_state() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[
        0xec, // in al,dx    (left pending: the VCPU is destroyed at this exit)
        0xf4, // hlt
    ]);
    g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rax] = 0x77).unwrap();
    assert_eq!(next_reason(&mut g.vcpu), nvmm::exit::reason::IO);
    let Guest { machine, vcpu } = g;
    drop(vcpu);
    let mut v = machine.create_vcpu(0).unwrap();
    let shown = format!("{v:?}");
    assert!(shown.starts_with("Vcpu {") && shown.contains("id: 0"), "{shown}");
    let handle = v.handle();
    assert_eq!(format!("{handle:?}"), "VcpuHandle { requested: false }");
    handle.stop();
    assert_eq!(format!("{handle:?}"), "VcpuHandle { requested: true }");
    assert!(handle.cancel_stop(), "the request was there to cancel");
    assert!(!handle.cancel_stop(), "and is gone: the run below is not stopped");
    v.get_state(StateMask::ALL).unwrap();
    let fresh = *v.state();
    machine.map_anonymous(0xffff_f000, 4096, Prot::READ | Prot::EXEC).unwrap();
    machine.write_gpa(0xffff_fff0, &[0xf4]).unwrap();
    run_to_halt(&mut v);
    v.get_state(StateMask::GPRS | StateMask::SEGS).unwrap();
    assert_eq!(v.state().gprs[Gpr::Rip], 0xfff1, "runs from the RESET fetch address");
    assert_eq!(v.state().gprs[Gpr::Rax], 0, "the old VCPU's pending IN did not complete into the new one");
    assert_eq!(v.state().segs, fresh.segs);
}

#[test]
fn vcpus_keep_their_machine_alive() {
    nvmm_testkit::kvm_or_skip!();
    let g = real_mode(&[0xf4]);
    let Guest { machine, mut vcpu } = g;
    drop(machine);
    run_to_halt(&mut vcpu);
}

#[test]
fn machine_limit_is_enforced() {
    nvmm_testkit::kvm_or_skip!();
    let n = nvmm();
    let max = n.capability().max_machines as usize;
    let mut machines = Vec::with_capacity(max);
    let err = loop {
        match n.create_machine() {
            Ok(m) => machines.push(m),
            Err(e) => break e,
        }
        assert!(machines.len() <= max, "more machines than max_machines");
    };
    // Other tests of this binary may hold a few machines.
    assert!(machines.len() + 8 >= max && machines.len() >= 1024, "only {} machines", machines.len());
    assert_eq!(err.errno(), 105, "ENOBUFS, got {err}");
    machines.pop();
    n.create_machine().unwrap();
}

#[test]
fn vcpus_run_on_their_own_threads() {
    nvmm_testkit::kvm_or_skip!();
    const N: u32 = 4;
    const EXITS: u64 = 300;
    let m = nvmm().create_machine().unwrap();
    m.map_anonymous(0, RAM, Prot::ALL).unwrap();
    // out 0x10,al ; jmp $-2
    m.write_gpa(CODE, &[0xe6, 0x10, 0xeb, 0xfc]).unwrap();
    let barrier = Arc::new(Barrier::new(N as usize));
    let threads: Vec<_> = (0..N)
        .map(|id| {
            let mut v = m.create_vcpu(id).unwrap();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                v.update(StateMask::GPRS | StateMask::SEGS, |s| {
                    s.segs[nvmm::Seg::Cs].base = 0;
                    s.segs[nvmm::Seg::Cs].selector = 0;
                    s.gprs[Gpr::Rip] = CODE;
                    s.gprs[Gpr::Rax] = u64::from(id);
                })
                .unwrap();
                barrier.wait();
                let mut seen = 0;
                while seen < EXITS {
                    match v.run().unwrap() {
                        Exit::Io(io) => {
                            assert_eq!((io.port(), io.data()), (0x10, &[id as u8][..]));
                            seen += 1;
                        }
                        Exit::None => {}
                        e => panic!("vcpu {id}: {e:?}"),
                    }
                }
                seen
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, u64::from(N) * EXITS);
    assert_eq!(m.info().nvcpus, 0);
}

/// Machines made from VMs made ahead of time are NVMM machines like the
/// rest: the guest's RDMSR of APIC_BASE (which KVM would answer itself)
/// exits, and `out 0x7e` (which KVM would step past) leaves RIP on it.
/// Stopping the maker closes every VM it made.
#[test]
fn machines_from_vms_made_ahead_are_nvmm_machines() {
    nvmm_testkit::kvm_or_skip!();
    let nvmm = nvmm();
    // The first machine opens the process's registry of machines.
    drop(nvmm.create_machine().unwrap());
    let before = nvmm_testkit::open_fds();
    let too_many = nvmm.capability().max_machines as usize + 1;
    assert_eq!(nvmm.keep_vms_ready(too_many).unwrap_err().errno(), libc::EINVAL);
    nvmm.keep_vms_ready(2).unwrap();
    assert_eq!(nvmm.vms_ready(), 2, "the first VMs are made before keep_vms_ready returns");
    // The next machine takes one of them (the thread only ever adds).
    let mut g = protected_mode(&[
        0xb9, 0x1b, 0x00, 0x00, 0x00, //       mov ecx,0x1b (APIC_BASE)
        0x0f, 0x32, //                         rdmsr
        0xe6, 0x7e, //                         out 0x7e,al
        0xf4, //                               hlt
    ]);
    match g.vcpu.run().unwrap() {
        Exit::Rdmsr(mut r) => {
            assert_eq!(r.msr(), 0x1b);
            r.complete(0xfee0_0900);
        }
        e => panic!("{e:?}"),
    }
    match g.vcpu.run().unwrap() {
        Exit::Io(io) => assert_eq!(io.port(), 0x7e),
        e => panic!("{e:?}"),
    }
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), common::CODE + 7, "RIP stays on the OUT");
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rdx) << 32 | gpr(&mut g.vcpu, Gpr::Rax), 0xfee0_0900);
    drop(g);
    nvmm.keep_vms_ready(0).unwrap();
    assert_eq!(nvmm.vms_ready(), 0);
    assert_eq!(nvmm_testkit::open_fds(), before, "no VM left behind");
}
