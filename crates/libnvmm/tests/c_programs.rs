//! The C programs in `tests/c`, built against `nvmm.h` and libnvmm with
//! `cc -Wall -Wextra -Werror` and run against KVM.

mod harness;

use harness::{Link, compile, run_ok};

#[test]
fn calc_vm_adds_in_the_guest() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("calc_vm.c", &[], Link::Shared);
    assert_eq!(run_ok(&exe, &["3", "5"]), "Result: 8\n");
    assert_eq!(run_ok(&exe, &["-7", "1000000"]), "Result: 999993\n");
}

#[test]
fn a_statically_linked_program_runs() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("calc_vm.c", &[], Link::Static);
    let dynamic = std::process::Command::new("readelf").arg("-d").arg(&*exe).output().expect("readelf");
    assert!(!String::from_utf8_lossy(&dynamic.stdout).contains("NEEDED"), "no shared library at run time");
    assert_eq!(run_ok(&exe, &["40", "2"]), "Result: 42\n");
}

#[test]
fn memory_assist_matches_the_cpu_in_every_mode() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("mem_assist.c", &["mem_assist_asm.S", "guest.c"], Link::Shared);
    let out = run_ok(&exe, &[]);
    assert_eq!(out.matches("passed").count(), 27, "{out}");
}

#[test]
fn io_assist_follows_the_architecture_in_every_mode() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("io_assist.c", &["io_assist_asm.S", "guest.c"], Link::Shared);
    let out = run_ok(&exe, &[]);
    assert_eq!(out.matches("passed").count(), 18, "{out}");
}

#[test]
fn bad_input_gets_the_documented_errno() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("errors.c", &[], Link::Shared);
    let out = run_ok(&exe, &[]);
    assert!(out.ends_with(", 0 failures\n"), "{out}");
}

#[test]
fn vcpus_stop_from_other_threads_and_signal_handlers() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("stop.c", &[], Link::Shared);
    assert_eq!(run_ok(&exe, &[]), "0 failures\n");
}

#[test]
fn vcpu_state_follows_the_comm_page_contract() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("state.c", &[], Link::Shared);
    let out = run_ok(&exe, &[]);
    assert!(out.ends_with(", 0 failures\n"), "{out}");
}

#[test]
fn structs_and_constants_match_netbsd() {
    // Compile-time checks: needs no KVM to build, and none to run.
    let exe = compile("layout.c", &[], Link::Shared);
    assert_eq!(run_ok(&exe, &[]), "layout ok\n");
}

#[test]
fn root_view_describes_other_processes_machines() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("root.c", &[], Link::Shared);
    assert_eq!(run_ok(&exe, &[]), "0 failures\n");
}

#[test]
fn instructions_kvm_cannot_emulate_complete_through_the_assist() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("emu_failure.c", &[], Link::Shared);
    let out = run_ok(&exe, &[]);
    assert!(out.ends_with(" 0 failures\n"), "{out}");
}

#[test]
fn memory_exits_tpr_exits_and_callbacks_follow_netbsd() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("semantics.c", &["guest.c"], Link::Shared);
    let out = run_ok(&exe, &[]);
    assert!(out.ends_with("\n0 failures\n"), "{out}");
    // 3 modes x (4 or 3 MOV sizes + 2 string forms + 1 fetch + 1 ROM store
    // + 1 last string element), TPR x4, state fetched at getstate x1,
    // callbacks x2.
    assert_eq!(out.matches("passed").count(), 9 + 8 + 8 + 4 + 1 + 2, "{out}");
}

#[test]
fn other_threads_inject_stop_and_destroy_running_vcpus() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("threads.c", &[], Link::Shared);
    let out = run_ok(&exe, &[]);
    assert!(out.ends_with("\n0 failures\n"), "{out}");
    assert_eq!(out.matches("passed").count(), 8, "{out}");
}

#[test]
fn kernel_boot_code_gives_no_exit_as_on_netbsd() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("boot_code.c", &["guest.c"], Link::Shared);
    let out = run_ok(&exe, &[]);
    assert!(out.ends_with("\n0 failures\n"), "{out}");
    assert_eq!(out.matches("passed").count(), 2, "{out}");
}

#[test]
fn an_fpu_set_without_a_get_keeps_the_avx_upper_halves() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("fpu.c", &[], Link::Shared);
    let out = run_ok(&exe, &[]);
    assert!(out.ends_with("passed\n0 failures\n"), "{out}");
}

#[test]
fn snapshots_reset_fork_save_and_load_from_c() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("snapshot.c", &[], Link::Shared);
    let file = std::env::temp_dir().join(format!("libnvmm-snapshot-{}.nvmmsnap", std::process::id()));
    assert_eq!(run_ok(&exe, &[file.to_str().unwrap()]), "0 failures\n");
}

#[test]
fn gva_to_gpa_walks_the_guests_page_tables() {
    nvmm_testkit::kvm_or_skip!();
    let exe = compile("gva_paging.c", &["guest.c"], Link::Shared);
    assert_eq!(run_ok(&exe, &[]), "0 failures\n");
}
