//! The x86 RESET state NVMM installs in a new VCPU (spec §4.8): real mode,
//! CS:IP = F000:FFF0 with CS.base = 0xFFFF0000, so the first instruction is
//! fetched at 0xFFFFFFF0.

use super::state::{Cr, Dr, Fxsave, Gpr, Msr, Seg, SegAttrib, Segment, State};

/// PAT after RESET: WB, WT, UC-, UC, twice.
pub const RESET_PAT: u64 = 0x0007_0406_0007_0406;

/// Builds the RESET state.
pub fn reset_state() -> State {
    let mut s = State::default();
    let data = Segment {
        selector: 0,
        attrib: SegAttrib::new(3, true, 0, true, false, false, false, false),
        limit: 0xffff,
        base: 0,
    };
    for seg in [Seg::Es, Seg::Ss, Seg::Ds, Seg::Fs, Seg::Gs] {
        s.segs[seg] = data;
    }
    s.segs[Seg::Cs] = Segment { selector: 0xf000, base: 0xffff_0000, ..data };
    let table = Segment { attrib: SegAttrib::new(2, true, 0, true, false, false, false, false), ..data };
    s.segs[Seg::Gdt] = table;
    s.segs[Seg::Idt] = table;
    s.segs[Seg::Ldt] = Segment { attrib: SegAttrib::new(2, false, 0, true, false, false, false, false), ..data };
    s.segs[Seg::Tr] = Segment { attrib: SegAttrib::new(3, false, 0, true, false, false, false, false), ..data };

    s.gprs[Gpr::Rdx] = 0x600;
    s.gprs[Gpr::Rip] = 0xfff0;
    s.gprs[Gpr::Rflags] = 0x2;

    s.crs[Cr::Cr0] = 0x6000_0010;
    s.crs[Cr::Xcr0] = 0x1;

    s.drs[Dr::Dr6] = 0xffff_0ff0;
    s.drs[Dr::Dr7] = 0x400;

    s.msrs[Msr::Pat] = RESET_PAT;

    s.fpu = Fxsave { fx_cw: 0x0040, fx_sw: 0, fx_tw: 0x55, fx_zero: 0x55, fx_mxcsr: 0x1f80, ..Fxsave::default() };
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fetch_is_at_fffffff0() {
        let s = reset_state();
        assert_eq!(s.segs[Seg::Cs].base + s.gprs[Gpr::Rip], 0xffff_fff0);
        assert_eq!(s.segs[Seg::Tr].attrib.typ(), 3);
        assert!(!s.segs[Seg::Ldt].attrib.s());
        assert_eq!(s.crs[Cr::Cr0], 0x6000_0010);
        assert_eq!(s.fpu.fx_mxcsr, 0x1f80);
    }
}
