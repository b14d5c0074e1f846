//! `install.sh` installs a usable library: the products under a prefix,
//! a pkg-config file that builds programs, shared and static.

mod harness;

use std::path::Path;
use std::process::Command;

use harness::{crate_dir, release_profile, source};

fn pkg_config(prefix: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .args(args)
        .arg("libnvmm")
        .output()
        .expect("run pkg-config (install it: apt-get install pkg-config)");
    assert!(out.status.success(), "pkg-config {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

#[test]
fn install_sh_installs_a_library_pkg_config_can_build_with() {
    let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("prefix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    let mut install = Command::new(crate_dir().join("install.sh"));
    install.arg("--prefix").arg(&prefix);
    if !release_profile() {
        install.arg("--debug");
    }
    let status = install.status().expect("run install.sh");
    assert!(status.success(), "install.sh failed");
    for f in [
        "lib/libnvmm.so.0.1",
        "lib/libnvmm.so.0",
        "lib/libnvmm.so",
        "lib/libnvmm.a",
        "lib/pkgconfig/libnvmm.pc",
        "include/nvmm.h",
        "sbin/nvmmctl",
        "share/man/man3/libnvmm.3",
        "share/man/man8/nvmmctl.8",
    ] {
        assert!(prefix.join(f).exists(), "{f} is not installed");
    }
    let dynamic = Command::new("readelf").arg("-d").arg(prefix.join("lib/libnvmm.so")).output().expect("readelf");
    assert!(String::from_utf8_lossy(&dynamic.stdout).contains("Library soname: [libnvmm.so.0]"));

    // Shared and static builds with nothing but pkg-config's flags.
    let cflags = pkg_config(&prefix, &["--cflags"]);
    // `cc -Wall -Wextra -Werror FLAGS CFLAGS SOURCE -o OUT LIBS`.
    let cc = |flags: &[&str], src: &str, out: &Path, libs: &[String]| {
        let st = Command::new("cc")
            .args(["-Wall", "-Wextra", "-Werror"])
            .args(flags)
            .args(&cflags)
            .arg(source(src))
            .arg("-o")
            .arg(out)
            .args(libs)
            .status()
            .expect("cc");
        assert!(st.success(), "building {} failed", out.display());
    };
    let shared = prefix.join("calc-shared");
    cc(&[], "calc_vm.c", &shared, &pkg_config(&prefix, &["--libs"]));
    let fully_static = prefix.join("calc-static");
    cc(&["-static"], "calc_vm.c", &fully_static, &pkg_config(&prefix, &["--static", "--libs"]));

    // The exit-loop benchmark, built as `bench/run.sh` builds it.
    let bench = prefix.join("exits");
    let st = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror"])
        .args(&cflags)
        .arg(crate_dir().join("bench/exits.c"))
        .arg("-o")
        .arg(&bench)
        .args(pkg_config(&prefix, &["--libs"]))
        .status()
        .expect("cc");
    assert!(st.success(), "building bench/exits.c failed");

    nvmm_testkit::kvm_or_skip!();
    let out = Command::new(&bench)
        .args(["io", "--iterations", "20", "--rounds", "3"])
        .env("LD_LIBRARY_PATH", prefix.join("lib"))
        .output()
        .expect("run the benchmark");
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{line}{}", String::from_utf8_lossy(&out.stderr));
    assert!(line.starts_with("{\"bench\":\"c-io\"") && line.trim_end().ends_with('}'), "{line}");
    for field in ["ratio", "kernel_sync_ratio", "library_share"] {
        assert!(line.contains(&format!("\"{field}\":")), "{line}");
    }
    for (exe, libs) in [(&shared, Some(prefix.join("lib"))), (&fully_static, None)] {
        let mut run = Command::new(exe);
        run.args(["20", "22"]);
        if let Some(l) = libs {
            run.env("LD_LIBRARY_PATH", l);
        }
        let out = run.output().expect("run the program");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "Result: 42\n", "{}", String::from_utf8_lossy(&out.stderr));
    }

    // Loaded with dlopen instead (its initial-exec TLS from the static TLS
    // reserve): NVMM's RESET values (RIP 0xfff0, CS 0xf000) come back.
    let loader = prefix.join("dlopen");
    cc(&[], "dlopen.c", &loader, &["-ldl".to_string()]);
    let out = Command::new(&loader).arg(prefix.join("lib/libnvmm.so")).output().expect("run the dlopen program");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "rip=0xfff0 cs=0xf000\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&prefix).expect("clean up");
}
