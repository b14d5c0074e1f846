//! The `nvmmctl` binary, end to end.

use std::path::PathBuf;
use std::process::{Command, Output};

fn nvmmctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nvmmctl")).args(args).output().expect("run nvmmctl")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// A guest image file unique to this test, deleted when dropped.
struct Image(PathBuf);

impl Image {
    fn path(&self) -> &str {
        self.0.to_str().expect("temporary paths are UTF-8")
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `bytes` to a file unique to this test.
fn image(name: &str, bytes: &[u8]) -> Image {
    let p = std::env::temp_dir().join(format!("nvmmctl-test-{}-{name}.bin", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    Image(p)
}

#[test]
fn run_without_arguments_runs_the_demo_guest() {
    nvmm_testkit::kvm_or_skip!();
    let o = nvmmctl(&["run"]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    assert!(out.contains("Hello from the nvmm demo guest!"), "{out}");
    assert!(out.contains("[device] guest read the ID register: 0x4d4d564e"), "{out}");
    assert!(out.contains("[device] guest wrote 0x4d4d564f to the scratch register"), "{out}");
    assert!(out.contains("guest: device register check passed"), "{out}");
    assert!(text(&o.stderr).contains("guest halted"));
}

#[test]
fn run_images_in_every_mode() {
    nvmm_testkit::kvm_or_skip!();
    let real = image(
        "real",
        &[
            0xbe, 0x0c, 0x7c, //       mov si,0x7c0c
            0xb9, 0x03, 0x00, //       mov cx,0x3
            0xba, 0xe9, 0x00, //       mov dx,0xe9
            0xf3, 0x6e, //             rep outs dx,BYTE PTR ds:[si]
            0xf4, //                   hlt
            b'h', b'i', b'\n', // msg
        ],
    );
    let prot = image(
        "prot32",
        &[
            0xbe, 0x11, 0x00, 0x10, 0x00, // mov esi,0x100011
            0xb9, 0x03, 0x00, 0x00, 0x00, // mov ecx,0x3
            0x66, 0xba, 0xe9, 0x00, //       mov dx,0xe9
            0xf3, 0x6e, //                   rep outs dx,BYTE PTR ds:[esi]
            0xf4, //                         hlt
            b'h', b'i', b'\n', //      msg
        ],
    );
    let long = image(
        "long64",
        &[
            0x48, 0xc7, 0xc6, 0x13, 0x00, 0x20, 0x00, // mov rsi,0x200013
            0xb9, 0x03, 0x00, 0x00, 0x00, //             mov ecx,0x3
            0x66, 0xba, 0xe9, 0x00, //                   mov dx,0xe9
            0xf3, 0x6e, //                               rep outs dx,BYTE PTR ds:[rsi]
            0xf4, //                                     hlt
            b'h', b'i', b'\n', //                  msg
        ],
    );
    for (path, gpa, mode) in [(&real, "0x7c00", "real"), (&prot, "0x100000", "prot32"), (&long, "0x200000", "long64")] {
        let o = nvmmctl(&["run", "--image", path.path(), "--gpa", gpa, "--mode", mode]);
        assert!(o.status.success(), "{mode}: {}", text(&o.stderr));
        assert_eq!(text(&o.stdout), "hi\n", "{mode}");
    }
    let o = nvmmctl(&["run", "--image", real.path(), "--gpa", "0x7c00", "--mode", "real", "--mem", "1G"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn guest_faults_are_reported() {
    nvmm_testkit::kvm_or_skip!();
    let ud2 = image("ud2", &[0x90, 0x0f, 0x0b]); // nop ; ud2
    for mode in ["prot32", "long64"] {
        let o = nvmmctl(&["run", "--image", ud2.path(), "--gpa", "0x1000", "--mode", mode]);
        assert_eq!(o.status.code(), Some(3), "{mode}");
        let err = text(&o.stderr);
        assert!(err.contains("guest fault: #UD invalid opcode (vector 6) at RIP 0x1001"), "{mode}: {err}");
    }
    let triple = image(
        "triple",
        &[
            0x48, 0xbc, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, // movabs rsp,0x8000000000000000
            0x0f, 0x0b, //                                                 ud2
        ],
    );
    let o = nvmmctl(&["run", "--image", triple.path(), "--gpa", "0x1000", "--mode", "long64"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("triple-faulted") || err.contains("guest fault"), "{err}");
    // An MSR NVMM leaves to the VMM (APIC base): nvmmctl refuses it with #GP.
    let rdmsr = image("rdmsr", &[0xb9, 0x1b, 0x00, 0x00, 0x00, 0x0f, 0x32]); // mov ecx,0x1b ; rdmsr
    let o = nvmmctl(&["run", "--image", rdmsr.path(), "--gpa", "0x1000", "--mode", "long64"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("RDMSR 0x1b: unknown MSR, the guest gets #GP"), "{err}");
    assert!(err.contains("guest fault: #GP general protection (vector 13, error code 0x0) at RIP 0x1005"), "{err}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    nvmm_testkit::kvm_or_skip!();
    let o = nvmmctl(&["run", "--image", "/nonexistent/guest.bin", "--gpa", "0", "--mode", "real"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("cannot read image /nonexistent/guest.bin"), "{}", text(&o.stderr));
    let img = image("tiny", &[0xf4]);
    let p = img.path();
    let o = nvmmctl(&["run", "--image", p, "--gpa", "0", "--mode", "protected"]);
    assert_eq!(o.status.code(), Some(2), "clap rejects an unknown mode");
    assert!(text(&o.stderr).contains("invalid value 'protected'"));
    let o = nvmmctl(&["run", "--image", p, "--gpa", "0x2000000", "--mode", "real", "--mem", "1M"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("does not fit"), "{}", text(&o.stderr));
    let o = nvmmctl(&["run", "--image", p, "--mode", "real"]);
    assert_eq!(o.status.code(), Some(2), "--image needs --gpa");
    let o = nvmmctl(&["calc", "70000", "1"]);
    assert_eq!(o.status.code(), Some(2));
    let o = nvmmctl(&["bench", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("unknown benchmark 'nope'"));
    for panic_free in [&["run", "--timeout=-1"][..], &["run", "--timeout=0"], &["run", "--timeout=nan"]] {
        let o = nvmmctl(panic_free);
        assert_eq!(o.status.code(), Some(1), "{panic_free:?}: {}", text(&o.stderr));
        assert!(!text(&o.stderr).contains("panicked"));
    }
}

#[test]
fn a_timeout_stops_a_spinning_guest() {
    nvmm_testkit::kvm_or_skip!();
    let spin = image("spin", &[0xeb, 0xfe]); // jmp $
    let o = nvmmctl(&["run", "--image", spin.path(), "--gpa", "0x1000", "--mode", "real", "--timeout", "0.2"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("timeout"));
}

#[test]
fn calc_adds() {
    nvmm_testkit::kvm_or_skip!();
    let o = nvmmctl(&["calc", "3", "5"]);
    assert_eq!(text(&o.stdout), "Result: 8\n");
    let o = nvmmctl(&["calc", "65535", "2"]);
    assert_eq!(text(&o.stdout), "Result: 1\n", "16-bit wrap-around, like the original");
}

#[test]
fn identify_prints_nvmms_lines_and_kvm_facts() {
    nvmm_testkit::kvm_or_skip!();
    let o = nvmmctl(&["identify"]);
    let out = text(&o.stdout);
    assert!(o.status.success());
    for line in [
        "nvmm: Kernel API version 2\n",
        "nvmm: State size 1008\n",
        "nvmm: Max machines ",
        "nvmm: Max VCPUs per machine ",
        "nvmm: Max RAM per machine ",
        "nvmm: Arch Mach conf 0x0\n",
        "nvmm: Arch VCPU conf 0x3<CPUID,TPR>\n",
        "nvmm: Guest FPU states 0x",
        "kvm: API version 12\n",
        "kvm: KVM_CAP_SYNC_REGS yes\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    // The interrupt-window line says what a bare KVM loop finds.
    let exact = nvmm_testkit::host::exits_at_interrupt_windows().unwrap();
    let window = if exact { "at the instruction" } else { "at other exits only" };
    assert!(out.contains(&format!("kvm: Interrupt-window exits {window}")), "{out}");
}

#[test]
fn list_shows_this_processs_machine() {
    nvmm_testkit::kvm_or_skip!();
    let n = nvmm::Nvmm::open().unwrap();
    let m = n.create_machine().unwrap();
    m.hva_map_anonymous(2 << 20).unwrap();
    let _v = (m.create_vcpu(0).unwrap(), m.create_vcpu(1).unwrap());
    let o = nvmmctl(&["list"]);
    let out = text(&o.stdout);
    assert!(out.starts_with("Machine ID VCPUs RAM  Owner PID"), "{out}");
    let pid = std::process::id().to_string();
    let row = out
        .lines()
        .find(|l| l.split_whitespace().nth(3) == Some(&pid) && l.starts_with(&format!("{} ", m.id())))
        .unwrap_or_else(|| panic!("no row for machine {} of pid {pid} in\n{out}", m.id()));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!((cols[1], cols[2]), ("2", "2.0M"), "{row}");
}

#[test]
fn bench_prints_json_lines_with_a_ratio() {
    nvmm_testkit::kvm_or_skip!();
    for name in ["exits", "exit-state", "core"] {
        let o = nvmmctl(&["bench", name, "--iterations", "200", "--rounds", "3"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let out = text(&o.stdout);
        let line = out.lines().next().unwrap();
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        assert!(line.contains(&format!("\"bench\":\"{name}\"")) && line.contains("\"ratio\":"), "{line}");
        if name == "exit-state" {
            for field in ["kernel_sync_ratio", "library_share", "library_target", "library_pass"] {
                assert!(line.contains(&format!("\"{field}\":")), "{line}");
            }
        }
    }
}

/// A core path unique to this test.
fn core_file(name: &str) -> Image {
    Image(std::env::temp_dir().join(format!("nvmmctl-test-{}-{name}.core", std::process::id())))
}

#[test]
fn a_faulting_guest_leaves_a_core_that_core_info_and_gdb_read() {
    nvmm_testkit::kvm_or_skip!();
    let ud2 = image("core-ud2", &[0x90, 0x0f, 0x0b]); // nop ; ud2
    let core = core_file("ud2");
    let o = nvmmctl(&["run", "--image", ud2.path(), "--gpa", "0x1000", "--mode", "long64", "--core", core.path()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains(&format!("core written to {}", core.path())), "{}", text(&o.stderr));
    let o = nvmmctl(&["core-info", core.path()]);
    let info = text(&o.stdout);
    assert!(o.status.success(), "{info}{}", text(&o.stderr));
    assert!(info.starts_with("1 VCPU(s)\n"), "{info}");
    assert!(info.contains("VCPU 0 (thread 1): 64-bit, 4-level paging, RIP 0xc00020"), "the fault stub's RIP:\n{info}");
    assert!(info.contains("FXSAVE and XSAVE"), "{info}");
    // gdb, the independent reader: the guest's code at its virtual address.
    let g = Command::new("gdb")
        .args(["-batch", "-nx", "-c", core.path(), "-ex", "info threads", "-ex", "x/3xb 0x1000"])
        .output()
        .expect("gdb runs (.ci/run installs it)");
    let out = text(&g.stdout);
    assert!(out.contains("LWP 1"), "{out}");
    assert!(out.contains("0x1000:\t0x90\t0x0f\t0x0b"), "{out}");
    // A triple fault (a non-canonical stack for the #UD frame) leaves one too.
    let triple = image("core-triple", &[0x48, 0xbc, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x0f, 0x0b]); // movabs rsp,1<<63 ; ud2
    let core2 = core_file("triple");
    let o = nvmmctl(&["run", "--image", triple.path(), "--gpa", "0x1000", "--mode", "long64", "--core", core2.path()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains(&format!("core written to {}", core2.path())), "{}", text(&o.stderr));
    let o = nvmmctl(&["core-info", core2.path()]);
    assert!(text(&o.stdout).contains("RSP 0x8000000000000000"), "{}", text(&o.stdout));
    // Not a core: a clear error.
    let o = nvmmctl(&["core-info", ud2.path()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("not an x86-64 ELF core"), "{}", text(&o.stderr));
}

#[test]
fn sigquit_stops_the_guest_and_writes_a_core() {
    nvmm_testkit::kvm_or_skip!();
    use std::io::BufRead;
    // mov al,'g' ; out 0xe9,al ; mov al,'o' ; out 0xe9,al ; mov al,10 ; out 0xe9,al ; jmp $
    let spin = image("core-spin", &[0xb0, b'g', 0xe6, 0xe9, 0xb0, b'o', 0xe6, 0xe9, 0xb0, 10, 0xe6, 0xe9, 0xeb, 0xfe]);
    let core = core_file("quit");
    // The timeout only bounds the test if SIGQUIT were lost.
    let mut child = Command::new(env!("CARGO_BIN_EXE_nvmmctl"))
        .args(["run", "--image", spin.path(), "--gpa", "0x7c00", "--mode", "real", "--timeout", "60", "--core"])
        .arg(core.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "go\n", "the guest runs (and spins) before the signal");
    let kill = Command::new("kill").args(["-QUIT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(err.contains("guest stopped: SIGQUIT"), "{err}");
    let o = nvmmctl(&["core-info", core.path()]);
    let info = text(&o.stdout);
    assert!(info.contains("VCPU 0 (thread 1): real mode, RIP 0x7c0c"), "stopped on its jmp $:\n{info}");
}

/// Starts `nvmmctl run` with `args` (which include `--gdb`); returns the
/// child and the address it listens on once its stderr says so (no
/// sleeps: the line is the signal).
fn run_waiting_for_gdb(args: &[&str]) -> (std::process::Child, std::io::BufReader<std::process::ChildStderr>, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_nvmmctl"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start nvmmctl");
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .split("waiting for the debugger on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no listening line: {line}"))
        .to_string();
    (child, err, addr)
}

/// Waits for `child`; its status, stdout and the rest of its stderr.
fn finish(
    mut child: std::process::Child,
    mut err: std::io::BufReader<std::process::ChildStderr>,
) -> (std::process::ExitStatus, String, String) {
    use std::io::Read;
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    (child.wait().unwrap(), stdout, rest)
}

/// The demo guest under gdb over a Unix socket: it waits before its first
/// instruction, gdb steps it and lets it finish; the devices work as in a
/// plain run.
#[test]
fn run_gdb_waits_for_the_debugger() {
    nvmm_testkit::kvm_or_skip!();
    let sock = std::env::temp_dir().join(format!("nvmmctl-gdb-{}.sock", std::process::id()));
    let (child, err, addr) = run_waiting_for_gdb(&["run", "--gdb", &format!("unix:{}", sock.display())]);
    assert_eq!(addr, format!("unix:{}", sock.display()));
    let out = nvmm_testkit::debuggers::gdb(
        &[],
        &[
            format!("target remote {}", sock.display()),
            "p/x $rip".into(),
            "stepi".into(),
            "p $rip != 0x7c00".into(),
            "continue".into(),
        ],
    );
    let (status, stdout, rest) = finish(child, err);
    assert_eq!(nvmm_testkit::debuggers::values(&out), vec!["0x7c00", "1"], "{out}");
    assert!(out.contains("exited normally"), "{out}");
    assert!(stdout.contains("Hello from the nvmm demo guest!"), "{stdout}");
    assert!(status.success(), "{rest}");
}

/// Over TCP on a port the system picks: detaching lets the guest run to
/// its end. `--gdb` refuses a bad address and `--timeout`.
#[test]
fn run_gdb_detach_and_errors() {
    nvmm_testkit::kvm_or_skip!();
    let (child, err, addr) = run_waiting_for_gdb(&["run", "--gdb", "127.0.0.1:0"]);
    let out = nvmm_testkit::debuggers::gdb(&[], &[format!("target remote {addr}"), "stepi".into(), "detach".into()]);
    let (status, stdout, rest) = finish(child, err);
    assert!(out.contains("detached"), "{out}");
    assert!(rest.contains("the debugger left; the guest runs on"), "{rest}");
    assert!(stdout.contains("guest: device register check passed"), "{stdout}");
    assert!(status.success(), "{rest}");
    let o = nvmmctl(&["run", "--gdb", "nonsense"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("HOST:PORT"), "{}", text(&o.stderr));
    let o = nvmmctl(&["run", "--gdb", ":1", "--timeout", "1"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("cannot be used with"), "{}", text(&o.stderr));
}

/// The demo guest saved after its 30th exit, then started from the file:
/// the restored run prints exactly what the first run printed after the
/// snapshot, and halts the same way.
#[test]
fn run_snapshot_save_and_restore() {
    nvmm_testkit::kvm_or_skip!();
    let file = std::env::temp_dir().join(format!("nvmmctl-snap-{}.nvmmsnap", std::process::id()));
    let path = file.to_str().unwrap();
    let first = nvmmctl(&["run", "--snapshot-at", "30", "--save", path]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(text(&first.stderr).contains("snapshot after 30 exits saved to"), "{}", text(&first.stderr));
    let second = nvmmctl(&["run", "--restore", path]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    let (a, b) = (text(&first.stdout), text(&second.stdout));
    assert!(!b.is_empty() && a.ends_with(&b) && a.len() > b.len(), "first run:\n{a}\nrestored run:\n{b}");
    assert!(b.contains("guest: device register check passed"), "{b}");
    // A damaged file is a clear error.
    std::fs::write(&file, b"NVMMSNAP but not really").unwrap();
    let bad = nvmmctl(&["run", "--restore", path]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("invalid snapshot"), "{}", text(&bad.stderr));
    let _ = std::fs::remove_file(&file);
}
