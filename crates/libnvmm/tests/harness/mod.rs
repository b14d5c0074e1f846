//! Builds libnvmm (`libnvmm.so`, `libnvmm.a`), compiles C programs against
//! `include/nvmm.h` with `cc -Wall -Wextra -Werror`, and runs them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The crate's directory.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `include/` (holds `nvmm.h`).
pub fn include_dir() -> PathBuf {
    crate_dir().join("include")
}

/// A C test program's source.
pub fn source(name: &str) -> PathBuf {
    crate_dir().join("tests/c").join(name)
}

/// Libraries the Rust static library needs from the system.
pub const STATIC_DEPS: &[&str] = &["-lutil", "-lrt", "-lpthread", "-lm", "-ldl"];

/// Whether these tests were built with the release profile.
pub fn release_profile() -> bool {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).and_then(Path::file_name).is_some_and(|n| n == "release")
}

/// A directory with `libnvmm.so`, `libnvmm.so.0` and `libnvmm.a` (links
/// to the build of the profile these tests were built with, made on first
/// use).
pub fn library_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/<this test>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
        let release = release_profile();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "libnvmm", "--lib"]).current_dir(crate_dir());
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p libnvmm failed");
        // Tests run in parallel processes: each makes the directory aside
        // and renames it into place; the first one wins, the others use it.
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let stage = tmp.join(format!("libnvmm-v2-{}", if release { "release" } else { "debug" }));
        if !stage.join("libnvmm.a").exists() {
            let mine = tmp.join(format!("libnvmm-stage-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&mine);
            std::fs::create_dir_all(&mine).expect("create staging directory");
            let link = |target: &str, name: &str| {
                std::os::unix::fs::symlink(profile_dir.join(target), mine.join(name)).expect("link the library")
            };
            link("liblibnvmm.so", "libnvmm.so.0");
            link("liblibnvmm.so", "libnvmm.so");
            link("liblibnvmm.a", "libnvmm.a");
            if std::fs::rename(&mine, &stage).is_err() {
                let _ = std::fs::remove_dir_all(&mine);
            }
        }
        stage
    })
}

/// A compiled program, deleted when dropped.
pub struct Program {
    path: PathBuf,
}

impl std::ops::Deref for Program {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How to link a program.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Link {
    /// Against `libnvmm.so` (`-lnvmm`).
    Shared,
    /// Fully static (`-static`, with `libnvmm.a`): no shared library at
    /// all at run time.
    Static,
}

/// Compiles `tests/c/<name>` (plus extra sources) into an executable.
pub fn compile(name: &str, extra: &[&str], link: Link) -> Program {
    let lib = library_dir();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{}-{link:?}-{}",
        name.trim_end_matches(".c"),
        std::process::id()
    ));
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args(["-std=c11", "-D_GNU_SOURCE", "-O1", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(include_dir())
        .arg(source(name));
    for e in extra {
        cc.arg(source(e));
    }
    cc.arg("-o").arg(&out);
    match link {
        Link::Shared => {
            cc.arg("-L").arg(lib).args(["-lnvmm", "-lpthread"]);
        }
        Link::Static => {
            cc.arg("-static").arg(lib.join("libnvmm.a")).args(STATIC_DEPS);
        }
    }
    let output = cc.output().expect("run cc");
    assert!(
        output.status.success(),
        "cc {name} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Program { path: out }
}

/// Runs a compiled program (at most two minutes).
pub fn run(exe: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(exe)
        .args(args)
        .env("LD_LIBRARY_PATH", library_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the program");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait for the program").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "{} did not finish in two minutes:\n{}{}",
                exe.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a program and requires success; returns its standard output.
pub fn run_ok(exe: &Path, args: &[&str]) -> String {
    let out = run(exe, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}{}",
        exe.display(),
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
