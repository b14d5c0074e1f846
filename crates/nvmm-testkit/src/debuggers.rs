//! The debuggers as test oracles: `gdb` and `lldb` run in batch mode under
//! a time bound, and readers for what they print.

use std::process::Command;

/// Runs `program` with `args` under a 120 s bound; its stdout and stderr.
/// Panics (the test fails) when it cannot run or times out.
pub fn run_tool(program: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} cannot run ({e}): install it (.ci/run does)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.code() != Some(124), "{program} timed out:\n{text}");
    // `timeout` itself says 127 when it cannot find the program.
    assert!(out.status.code() != Some(127), "{program} cannot run: install it (.ci/run does):\n{text}");
    text
}

/// `gdb -batch -nx` with `setup` arguments (`-c CORE`, say) then each of
/// `commands` as an `-ex`.
pub fn gdb(setup: &[&str], commands: &[String]) -> String {
    let mut args: Vec<&str> = vec!["-batch", "-nx", "-ex", "set confirm off", "-ex", "set pagination off"];
    args.extend_from_slice(setup);
    for c in commands {
        args.push("-ex");
        args.push(c);
    }
    run_tool("gdb", &args)
}

/// `lldb --batch --no-lldbinit` with `setup` arguments (`--core CORE`,
/// say) then each of `commands` as an `-o`.
pub fn lldb(setup: &[&str], commands: &[String]) -> String {
    let mut args: Vec<&str> = vec!["--no-lldbinit", "--batch"];
    args.extend_from_slice(setup);
    for c in commands {
        args.push("-o");
        args.push(c);
    }
    run_tool("lldb", &args)
}

/// gdb's `$N = value` lines, in order.
pub fn values(out: &str) -> Vec<String> {
    out.lines().filter(|l| l.starts_with('$')).filter_map(|l| Some(l.split_once(" = ")?.1.to_string())).collect()
}

/// `v` as an x87 80-bit extended value (normal numbers only).
pub fn x87(v: f64) -> [u8; 10] {
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as u16 - 1023 + 16383;
    let mant = 1u64 << 63 | (bits & ((1 << 52) - 1)) << 11;
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&mant.to_le_bytes());
    b[8..].copy_from_slice(&(exp | ((bits >> 48) as u16 & 0x8000)).to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x87_encodes_as_the_sdm_says() {
        // 1.0: exponent 0x3fff, integer bit set, fraction 0.
        assert_eq!(x87(1.0), [0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f]);
        // -2.5 = -1.25 * 2^1: exponent 0x4000, mantissa 0xa000...
        assert_eq!(x87(-2.5), [0, 0, 0, 0, 0, 0, 0, 0xa0, 0x00, 0xc0]);
    }

    #[test]
    fn values_reads_gdb_lines() {
        assert_eq!(values("$1 = 0x10\nnoise\n$2 = {1, 2}\n"), vec!["0x10", "{1, 2}"]);
    }
}
