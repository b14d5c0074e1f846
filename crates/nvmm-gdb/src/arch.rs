//! The register file gdb and lldb see: gdb's own x86-64 features (core,
//! SSE, segment bases, AVX upper halves) plus the system registers, in one
//! target description with explicit register numbers.

use std::num::NonZeroUsize;

use gdbstub::arch::{Arch, RegId, Registers};
use gdbstub_arch::x86::reg::X86_64CoreRegs;

/// x86-64 as an nvmm VCPU shows it to a debugger.
pub enum NvmmX86_64 {}

impl Arch for NvmmX86_64 {
    type Usize = u64;
    type Registers = Regs;
    type BreakpointKind = usize;
    type RegId = RegNum;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// The registers, in the target description's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// gdb's core and SSE registers (numbers 0 to 56), as `gdbstub_arch`
    /// lays them out.
    pub core: X86_64CoreRegs,
    /// FS base (57).
    pub fs_base: u64,
    /// GS base (58).
    pub gs_base: u64,
    /// Upper halves of YMM0–15 (59–74).
    pub ymm_hi: [u128; 16],
    /// CR0, CR2, CR3, CR4, CR8 (75–79).
    pub cr: [u64; 5],
    /// EFER (80).
    pub efer: u64,
    /// KERNEL_GS_BASE (81).
    pub kernel_gs_base: u64,
}

/// Bytes of the core and SSE registers in a `g` packet.
const CORE_BYTES: usize = 0x218;

/// Register sizes in bytes, by number.
fn reg_size(n: usize) -> Option<usize> {
    Some(match n {
        0..=16 => 8,
        17..=23 => 4,
        24..=31 => 10,
        32..=39 => 4,
        40..=55 => 16,
        56 => 4,
        57 | 58 => 8,
        59..=74 => 16,
        75..=81 => 8,
        _ => return None,
    })
}

/// Offset of register `n` in a `g` packet.
pub(crate) fn reg_offset(n: usize) -> Option<(usize, usize)> {
    let size = reg_size(n)?;
    let offset = (0..n).map(|i| reg_size(i).unwrap_or(0)).sum();
    Some((offset, size))
}

/// Number of registers.
pub(crate) const NUM_REGS: usize = 82;

impl Registers for Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        let mut put = |bytes: &[u8]| bytes.iter().for_each(|&b| write_byte(Some(b)));
        put(&self.fs_base.to_le_bytes());
        put(&self.gs_base.to_le_bytes());
        for y in &self.ymm_hi {
            put(&y.to_le_bytes());
        }
        for c in &self.cr {
            put(&c.to_le_bytes());
        }
        put(&self.efer.to_le_bytes());
        put(&self.kernel_gs_base.to_le_bytes());
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let (total, _) = reg_offset(NUM_REGS - 1).ok_or(())?;
        if bytes.len() < total + 8 {
            return Err(());
        }
        self.core.gdb_deserialize(&bytes[..CORE_BYTES])?;
        let mut rest = bytes[CORE_BYTES..].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        let mut next = || rest.next().ok_or(());
        self.fs_base = next()?;
        self.gs_base = next()?;
        for y in &mut self.ymm_hi {
            let lo = next()?;
            let hi = next()?;
            *y = u128::from(lo) | u128::from(hi) << 64;
        }
        for c in &mut self.cr {
            *c = next()?;
        }
        self.efer = next()?;
        self.kernel_gs_base = next()?;
        Ok(())
    }
}

/// A register number of the target description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegNum(pub usize);

impl RegId for RegNum {
    fn from_raw_id(id: usize) -> Option<(RegNum, Option<NonZeroUsize>)> {
        let size = reg_size(id)?;
        Some((RegNum(id), NonZeroUsize::new(size)))
    }
}

/// The target description: gdb's feature names, so gdb's x86-64 support
/// takes them up (`$ymm0`, `$fs_base`, `info float`), and lldb's register
/// attributes (`generic`, `encoding`, `format`), which gdb ignores.
pub(crate) const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
  <architecture>i386:x86-64</architecture>
  <feature name="org.gnu.gdb.i386.core">
    <flags id="i386_eflags" size="4">
      <field name="CF" start="0" end="0"/>
      <field name="" start="1" end="1"/>
      <field name="PF" start="2" end="2"/>
      <field name="AF" start="4" end="4"/>
      <field name="ZF" start="6" end="6"/>
      <field name="SF" start="7" end="7"/>
      <field name="TF" start="8" end="8"/>
      <field name="IF" start="9" end="9"/>
      <field name="DF" start="10" end="10"/>
      <field name="OF" start="11" end="11"/>
      <field name="NT" start="14" end="14"/>
      <field name="RF" start="16" end="16"/>
      <field name="VM" start="17" end="17"/>
      <field name="AC" start="18" end="18"/>
      <field name="VIF" start="19" end="19"/>
      <field name="VIP" start="20" end="20"/>
      <field name="ID" start="21" end="21"/>
    </flags>
    <reg name="rax" bitsize="64" type="int64" regnum="0"/>
    <reg name="rbx" bitsize="64" type="int64"/>
    <reg name="rcx" bitsize="64" type="int64"/>
    <reg name="rdx" bitsize="64" type="int64"/>
    <reg name="rsi" bitsize="64" type="int64"/>
    <reg name="rdi" bitsize="64" type="int64"/>
    <reg name="rbp" bitsize="64" type="data_ptr" generic="fp"/>
    <reg name="rsp" bitsize="64" type="data_ptr" generic="sp"/>
    <reg name="r8" bitsize="64" type="int64"/>
    <reg name="r9" bitsize="64" type="int64"/>
    <reg name="r10" bitsize="64" type="int64"/>
    <reg name="r11" bitsize="64" type="int64"/>
    <reg name="r12" bitsize="64" type="int64"/>
    <reg name="r13" bitsize="64" type="int64"/>
    <reg name="r14" bitsize="64" type="int64"/>
    <reg name="r15" bitsize="64" type="int64"/>
    <reg name="rip" bitsize="64" type="code_ptr" generic="pc"/>
    <reg name="eflags" bitsize="32" type="i386_eflags" generic="flags"/>
    <reg name="cs" bitsize="32" type="int32"/>
    <reg name="ss" bitsize="32" type="int32"/>
    <reg name="ds" bitsize="32" type="int32"/>
    <reg name="es" bitsize="32" type="int32"/>
    <reg name="fs" bitsize="32" type="int32"/>
    <reg name="gs" bitsize="32" type="int32"/>
    <reg name="st0" bitsize="80" type="i387_ext"/>
    <reg name="st1" bitsize="80" type="i387_ext"/>
    <reg name="st2" bitsize="80" type="i387_ext"/>
    <reg name="st3" bitsize="80" type="i387_ext"/>
    <reg name="st4" bitsize="80" type="i387_ext"/>
    <reg name="st5" bitsize="80" type="i387_ext"/>
    <reg name="st6" bitsize="80" type="i387_ext"/>
    <reg name="st7" bitsize="80" type="i387_ext"/>
    <reg name="fctrl" bitsize="32" type="int" group="float"/>
    <reg name="fstat" bitsize="32" type="int" group="float"/>
    <reg name="ftag" bitsize="32" type="int" group="float"/>
    <reg name="fiseg" bitsize="32" type="int" group="float"/>
    <reg name="fioff" bitsize="32" type="int" group="float"/>
    <reg name="foseg" bitsize="32" type="int" group="float"/>
    <reg name="fooff" bitsize="32" type="int" group="float"/>
    <reg name="fop" bitsize="32" type="int" group="float"/>
  </feature>
  <feature name="org.gnu.gdb.i386.sse">
    <vector id="v8bf16" type="bfloat16" count="8"/>
    <vector id="v4f" type="ieee_single" count="4"/>
    <vector id="v2d" type="ieee_double" count="2"/>
    <vector id="v16i8" type="int8" count="16"/>
    <vector id="v8i16" type="int16" count="8"/>
    <vector id="v4i32" type="int32" count="4"/>
    <vector id="v2i64" type="int64" count="2"/>
    <union id="vec128">
      <field name="v8_bfloat16" type="v8bf16"/>
      <field name="v4_float" type="v4f"/>
      <field name="v2_double" type="v2d"/>
      <field name="v16_int8" type="v16i8"/>
      <field name="v8_int16" type="v8i16"/>
      <field name="v4_int32" type="v4i32"/>
      <field name="v2_int64" type="v2i64"/>
      <field name="uint128" type="uint128"/>
    </union>
    <flags id="i386_mxcsr" size="4">
      <field name="IE" start="0" end="0"/>
      <field name="DE" start="1" end="1"/>
      <field name="ZE" start="2" end="2"/>
      <field name="OE" start="3" end="3"/>
      <field name="UE" start="4" end="4"/>
      <field name="PE" start="5" end="5"/>
      <field name="DAZ" start="6" end="6"/>
      <field name="IM" start="7" end="7"/>
      <field name="DM" start="8" end="8"/>
      <field name="ZM" start="9" end="9"/>
      <field name="OM" start="10" end="10"/>
      <field name="UM" start="11" end="11"/>
      <field name="PM" start="12" end="12"/>
      <field name="FZ" start="15" end="15"/>
    </flags>
    <reg name="xmm0" bitsize="128" type="vec128" regnum="40" encoding="vector" format="vector-uint8"/>
    <reg name="xmm1" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="xmm2" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="xmm3" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="xmm4" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="xmm5" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="xmm6" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="xmm7" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="xmm8" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="xmm9" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="xmm10" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="xmm11" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="xmm12" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="xmm13" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="xmm14" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="xmm15" bitsize="128" type="vec128" encoding="vector" format="vector-uint8"/>
    <reg name="mxcsr" bitsize="32" type="i386_mxcsr" group="vector"/>
  </feature>
  <feature name="org.gnu.gdb.i386.segments">
    <reg name="fs_base" bitsize="64" type="int" regnum="57"/>
    <reg name="gs_base" bitsize="64" type="int"/>
  </feature>
  <feature name="org.gnu.gdb.i386.avx">
    <reg name="ymm0h" bitsize="128" type="uint128" regnum="59"/>
    <reg name="ymm1h" bitsize="128" type="uint128"/>
    <reg name="ymm2h" bitsize="128" type="uint128"/>
    <reg name="ymm3h" bitsize="128" type="uint128"/>
    <reg name="ymm4h" bitsize="128" type="uint128"/>
    <reg name="ymm5h" bitsize="128" type="uint128"/>
    <reg name="ymm6h" bitsize="128" type="uint128"/>
    <reg name="ymm7h" bitsize="128" type="uint128"/>
    <reg name="ymm8h" bitsize="128" type="uint128"/>
    <reg name="ymm9h" bitsize="128" type="uint128"/>
    <reg name="ymm10h" bitsize="128" type="uint128"/>
    <reg name="ymm11h" bitsize="128" type="uint128"/>
    <reg name="ymm12h" bitsize="128" type="uint128"/>
    <reg name="ymm13h" bitsize="128" type="uint128"/>
    <reg name="ymm14h" bitsize="128" type="uint128"/>
    <reg name="ymm15h" bitsize="128" type="uint128"/>
  </feature>
  <feature name="org.nvmm.x86.system">
    <reg name="cr0" bitsize="64" type="int64" regnum="75" group="system"/>
    <reg name="cr2" bitsize="64" type="int64" group="system"/>
    <reg name="cr3" bitsize="64" type="int64" group="system"/>
    <reg name="cr4" bitsize="64" type="int64" group="system"/>
    <reg name="cr8" bitsize="64" type="int64" group="system"/>
    <reg name="efer" bitsize="64" type="int64" group="system"/>
    <reg name="k_gs_base" bitsize="64" type="int64" group="system"/>
  </feature>
</target>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialize_round_trips_and_matches_the_offsets() {
        let mut r = Regs::default();
        r.core.regs[3] = 0x1122_3344_5566_7788;
        r.core.rip = 0xffff_8000_0000_1000;
        r.core.xmm[15] = 0xdead_beef;
        r.fs_base = 0x7000;
        r.ymm_hi[1] = u128::MAX - 5;
        r.cr[2] = 0x1000;
        r.kernel_gs_base = 42;
        let mut bytes = Vec::new();
        r.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        let (last, size) = reg_offset(NUM_REGS - 1).unwrap();
        assert_eq!(bytes.len(), last + size);
        let (off, _) = reg_offset(16).unwrap();
        assert_eq!(&bytes[off..off + 8], &r.core.rip.to_le_bytes());
        let (off, _) = reg_offset(60).unwrap();
        assert_eq!(&bytes[off..off + 16], &r.ymm_hi[1].to_le_bytes());
        let (off, _) = reg_offset(77).unwrap();
        assert_eq!(&bytes[off..off + 8], &0x1000u64.to_le_bytes());
        let mut back = Regs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, r);
        assert!(back.gdb_deserialize(&bytes[..bytes.len() - 1]).is_err());
    }

    /// The description's register numbers agree with the layout: every
    /// `regnum` given is where the sizes put it, and there are as many
    /// registers as numbers.
    #[test]
    fn description_agrees_with_the_layout() {
        let regs: Vec<&str> = TARGET_XML.lines().filter(|l| l.trim_start().starts_with("<reg ")).collect();
        assert_eq!(regs.len(), NUM_REGS);
        for (n, line) in regs.iter().enumerate() {
            if let Some(i) = line.find("regnum=\"") {
                let v: usize = line[i + 8..].split('"').next().unwrap().parse().unwrap();
                assert_eq!(v, n, "{line}");
            }
            let bits: usize = line.split("bitsize=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
            assert_eq!(bits / 8, reg_size(n).unwrap(), "{line}");
        }
    }
}
