//! Guests with distinctive state for the core tests, and the debuggers and
//! ELF readers that check the cores (the oracles).
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};

use nvmm::x86::xsave::Xsave;
use nvmm::{Cr, Gpr, State};
pub use nvmm_testkit::debuggers::{self, run_tool, values, x87};

/// The distinctive values VCPU `i` holds.
pub struct Marks {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rsp: u64,
    pub st0: f64,
    pub xmm3: u128,
    pub ymm5_hi: u128,
}

pub fn marks(i: u32) -> Marks {
    let i64 = u64::from(i);
    Marks {
        rax: 0x1111_2222_3333_0000 | i64,
        rbx: 0xb0b0_0000_0000_0000 | i64 << 8,
        rcx: 0x0c0c_0c0c_0000_0000 + i64,
        rsp: 0x8000 - 0x100 * i64,
        st0: 1.5 + f64::from(i),
        xmm3: 0x3333_3333_3333_3333_0000_0000_0000_0000 | u128::from(i),
        ymm5_hi: 0x5555_0000_0000_0000_0000_0000_0000_5555 | u128::from(i) << 32,
    }
}

/// Puts VCPU `i`'s marks in the FPU part of `s` and `x` (x87 ST0 valid,
/// XMM3, YMM5's upper half; XCR0 with AVX).
pub fn put_fpu_marks(i: u32, s: &mut State, x: &mut Xsave) {
    let m = marks(i);
    s.fpu.fx_cw = 0x37f;
    s.fpu.fx_sw = 0;
    s.fpu.fx_tw = 0x01;
    s.fpu.fx_mxcsr = 0x1f80;
    s.fpu.fx_87_ac[0] = [0; 16];
    s.fpu.fx_87_ac[0][..10].copy_from_slice(&x87(m.st0));
    s.fpu.fx_xmm[3] = m.xmm3.to_le_bytes();
    x.set_ymm_hi(5, m.ymm5_hi.to_le_bytes()).unwrap();
    s.crs[Cr::Xcr0] = 7;
    s.crs[Cr::Cr4] |= 1 << 18; // OSXSAVE
}

/// Puts VCPU `i`'s general-purpose marks in `s`.
pub fn put_gpr_marks(i: u32, s: &mut State) {
    let m = marks(i);
    s.gprs[Gpr::Rax] = m.rax;
    s.gprs[Gpr::Rbx] = m.rbx;
    s.gprs[Gpr::Rcx] = m.rcx;
    s.gprs[Gpr::Rsp] = m.rsp;
}

/// A fresh path for a core under the target directory.
pub fn core_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cores");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}.{}.core", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// `gdb -batch -c CORE` with `commands`.
pub fn gdb(core: &Path, commands: &[String]) -> String {
    debuggers::gdb(&["-c", &core.display().to_string()], commands)
}

/// `lldb --batch --core CORE` with `commands`.
pub fn lldb(core: &Path, commands: &[String]) -> String {
    debuggers::lldb(&["--core", &core.display().to_string()], commands)
}

/// The LWP ids of the rows of gdb's `info threads` table.
pub fn gdb_threads(out: &str) -> Vec<u32> {
    let mut ids: Vec<u32> = out
        .lines()
        .filter_map(|l| {
            let mut t = l.trim_start_matches([' ', '*']).split_whitespace();
            t.next()?.parse::<u32>().ok()?;
            (t.next()? == "LWP").then_some(())?;
            t.next()?.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// How many values [`gdb_vcpu_commands`] prints per VCPU.
pub const GDB_VCPU_VALUES: usize = 10;

/// gdb commands that select each of threads `1..=n` and print its
/// registers, in the order of [`gdb_vcpu_expected`].
pub fn gdb_vcpu_commands(n: usize) -> Vec<String> {
    let mut cmds = Vec::new();
    for i in 1..=n {
        cmds.push(format!("thread {i}"));
        for e in ["$rax", "$rbx", "$rcx", "$rsp", "$rip", "$cs", "$eflags", "$xmm3.uint128", "$ymm5.v2_int128"] {
            cmds.push(format!("p/x {e}"));
        }
        cmds.push("p $st0".into());
    }
    cmds
}

/// What gdb prints for VCPU `i` (its [`marks`]) stopped at `rip` with CS
/// selector `cs` and `rflags`.
pub fn gdb_vcpu_expected(i: u32, rip: u64, cs: u16, rflags: u64) -> Vec<String> {
    let m = marks(i);
    vec![
        format!("{:#x}", m.rax),
        format!("{:#x}", m.rbx),
        format!("{:#x}", m.rcx),
        format!("{:#x}", m.rsp),
        format!("{rip:#x}"),
        format!("{cs:#x}"),
        format!("{rflags:#x}"),
        format!("{:#x}", m.xmm3),
        format!("{{0x0, {:#x}}}", m.ymm5_hi),
        format!("{}", m.st0),
    ]
}
