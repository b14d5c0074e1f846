//! The CPU's execution mode and what follows from it: the code size that
//! decoding uses, the width of RIP, the linear address of RIP, and the
//! paging mode the control registers select. One definition of each,
//! shared by the assists, the VCPU and the debugger's memory access.

use super::bits::{cr0, cr4, efer};
use super::state::{Cr, Gpr, Msr, Seg, SegAttrib, State};

/// Execution mode of the code, as decoding needs it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum CpuMode {
    /// Real mode, virtual-8086 or 16-bit protected mode code.
    Bits16,
    /// 32-bit protected mode or compatibility mode with a 32-bit CS.
    Bits32,
    /// 64-bit mode.
    Bits64,
}

impl CpuMode {
    /// The mode `state` runs in: 64-bit with CS.L in long mode, 32-bit with
    /// CS.D in protected mode, 16-bit otherwise. Needs SEGS, CRS and MSRS
    /// (EFER).
    pub fn of(state: &State) -> CpuMode {
        CpuMode::select(state.msrs[Msr::Efer], state.crs[Cr::Cr0], state.segs[Seg::Cs].attrib)
    }

    /// The mode EFER, CR0 and CS's attributes select.
    fn select(efer: u64, cr0: u64, cs: SegAttrib) -> CpuMode {
        CpuMode::select_by(efer, cr0, cs.l(), cs.def())
    }

    /// The mode EFER, CR0 and CS's L and D bits select.
    fn select_by(efer: u64, cr0: u64, cs_l: bool, cs_d: bool) -> CpuMode {
        if efer & efer::LMA != 0 && cs_l {
            CpuMode::Bits64
        } else if cr0 & cr0::PE != 0 && cs_d {
            CpuMode::Bits32
        } else {
            CpuMode::Bits16
        }
    }

    /// The mask of an instruction pointer in this mode (IP, EIP or RIP).
    pub const fn ip_mask(self) -> u64 {
        match self {
            CpuMode::Bits16 => 0xffff,
            CpuMode::Bits32 => 0xffff_ffff,
            CpuMode::Bits64 => u64::MAX,
        }
    }

    /// `ip + len`, wrapped to this mode's instruction pointer width.
    pub const fn advance(self, ip: u64, len: u64) -> u64 {
        ip.wrapping_add(len) & self.ip_mask()
    }
}

/// The linear address of `state`'s RIP: CS base plus RIP, truncated to
/// 32 bits outside 64-bit mode. Needs GPRS, SEGS, CRS and MSRS.
pub fn linear_rip(state: &State) -> u64 {
    linear(CpuMode::of(state), state.segs[Seg::Cs].base, state.gprs[Gpr::Rip])
}

/// CS base plus `rip`, truncated to 32 bits outside 64-bit mode.
fn linear(mode: CpuMode, cs_base: u64, rip: u64) -> u64 {
    match mode {
        CpuMode::Bits64 => rip,
        _ => cs_base.wrapping_add(rip) & 0xffff_ffff,
    }
}

/// The few registers that place the code at RIP (RIP, CS's base and
/// attributes, CR0, CR3, CR4, EFER) and the two an I/O instruction counts
/// and addresses ports with (RCX, RDX): what locating the instruction
/// behind an exit reads, without the rest of the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CodeRegs {
    pub(crate) rip: u64,
    pub(crate) rcx: u64,
    pub(crate) rdx: u64,
    pub(crate) cs_base: u64,
    /// CS's L (64-bit code) and D (32-bit default size) bits: what its
    /// attributes tell of the mode.
    pub(crate) cs_l: bool,
    pub(crate) cs_d: bool,
    pub(crate) cr0: u64,
    pub(crate) cr3: u64,
    pub(crate) cr4: u64,
    pub(crate) efer: u64,
}

impl CodeRegs {
    /// The code registers of `state` (which needs GPRS, SEGS, CRS and
    /// EFER).
    pub(crate) fn of(state: &State) -> CodeRegs {
        let cs = state.segs[Seg::Cs];
        CodeRegs {
            rip: state.gprs[Gpr::Rip],
            rcx: state.gprs[Gpr::Rcx],
            rdx: state.gprs[Gpr::Rdx],
            cs_base: cs.base,
            cs_l: cs.attrib.l(),
            cs_d: cs.attrib.def(),
            cr0: state.crs[Cr::Cr0],
            cr3: state.crs[Cr::Cr3],
            cr4: state.crs[Cr::Cr4],
            efer: state.msrs[Msr::Efer],
        }
    }

    /// The execution mode (as [`CpuMode::of`]).
    pub(crate) fn mode(&self) -> CpuMode {
        CpuMode::select_by(self.efer, self.cr0, self.cs_l, self.cs_d)
    }

    /// The linear address of RIP (as [`linear_rip`]).
    pub(crate) fn linear_rip(&self) -> u64 {
        linear(self.mode(), self.cs_base, self.rip)
    }
}

/// The paging mode the control registers select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PagingMode {
    /// CR0.PG = 0: linear addresses are physical.
    Off,
    /// 32-bit paging.
    Bits32,
    /// PAE paging.
    Pae,
    /// 4-level paging.
    Level4,
    /// 5-level paging.
    Level5,
}

impl PagingMode {
    /// The mode CR0, CR4 and EFER select, or `None` for an impossible
    /// combination (long mode without PAE).
    pub fn of(cr0: u64, cr4: u64, efer: u64) -> Option<PagingMode> {
        if cr0 & self::cr0::PG == 0 {
            return Some(PagingMode::Off);
        }
        match (efer & self::efer::LMA != 0, cr4 & self::cr4::PAE != 0) {
            (false, false) => Some(PagingMode::Bits32),
            (false, true) => Some(PagingMode::Pae),
            (true, true) if cr4 & self::cr4::LA57 != 0 => Some(PagingMode::Level5),
            (true, true) => Some(PagingMode::Level4),
            (true, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86::modes;

    #[test]
    fn modes_of_the_ready_made_states() {
        let mut s = crate::x86::reset::reset_state();
        assert_eq!(CpuMode::of(&s), CpuMode::Bits16);
        assert_eq!(linear_rip(&s), 0xffff_fff0);
        modes::protected_mode(&mut s, 0x1000);
        assert_eq!(CpuMode::of(&s), CpuMode::Bits32);
        modes::long_mode(&mut s, 0x1000, 0x10000);
        assert_eq!(CpuMode::of(&s), CpuMode::Bits64);
        assert_eq!(CpuMode::Bits16.advance(0xffff, 2), 1);
        assert_eq!(CpuMode::Bits32.advance(0xffff_ffff, 1), 0);
    }

    /// The code registers of a state tell its mode and RIP's linear
    /// address as the state does, in each mode (CS base above 4 GiB too:
    /// dropped outside 64-bit mode, ignored in it).
    #[test]
    fn code_registers_agree_with_the_state() {
        let code = CodeRegs::of;
        let mut states = vec![crate::x86::reset::reset_state()];
        let mut s = crate::x86::reset::reset_state();
        modes::real_mode_entry(&mut s, 0x7c00);
        states.push(s);
        modes::protected_mode(&mut s, 0x1000);
        states.push(s);
        modes::long_mode(&mut s, 0xffff_8000_0000_1000, 0x10000);
        states.push(s);
        for mut s in states {
            for base in [0, 0x1234_5000, 0x1_0000_f000] {
                s.segs[Seg::Cs].base = base;
                let c = code(&s);
                assert_eq!(c.mode(), CpuMode::of(&s));
                assert_eq!(c.linear_rip(), linear_rip(&s));
            }
        }
    }

    #[test]
    fn paging_modes() {
        use crate::x86::bits::{cr0, cr4, efer};
        assert_eq!(PagingMode::of(0, 0, 0), Some(PagingMode::Off));
        assert_eq!(PagingMode::of(cr0::PG, 0, 0), Some(PagingMode::Bits32));
        assert_eq!(PagingMode::of(cr0::PG, cr4::PAE, 0), Some(PagingMode::Pae));
        assert_eq!(PagingMode::of(cr0::PG, cr4::PAE, efer::LMA), Some(PagingMode::Level4));
        assert_eq!(PagingMode::of(cr0::PG, cr4::PAE | cr4::LA57, efer::LMA), Some(PagingMode::Level5));
        assert_eq!(PagingMode::of(cr0::PG, 0, efer::LMA), None);
    }
}
