//! `nvmm_vcpu_dump`: a printable dump of the whole state.

use super::Vcpu;
use crate::error::Result;
use crate::x86::state::{Cr, Msr, Seg, StateMask};

impl Vcpu {
    /// A printable dump of the whole state (`nvmm_vcpu_dump`).
    pub fn dump(&mut self) -> Result<String> {
        use std::fmt::Write;
        self.get_state(StateMask::ALL)?;
        let s = self.comm.state();
        let mut o = String::new();
        let _ = writeln!(o, "+ VCPU id={}", self.id);
        for (i, name) in crate::x86::state::Gpr::NAMES.iter().enumerate() {
            let _ = writeln!(o, "| -> {name}={:#x}", s.gprs.0[i]);
        }
        for (i, name) in Seg::NAMES.iter().enumerate() {
            let g = s.segs.0[i];
            let _ = writeln!(
                o,
                "| -> {name}: sel={:#x} base={:#x}, limit={:#x}, attrib={:#x} [type={},l={},def={}]",
                g.selector,
                g.base,
                g.limit,
                g.attrib.0,
                g.attrib.typ(),
                g.attrib.l() as u8,
                g.attrib.def() as u8
            );
        }
        let _ = writeln!(o, "| -> MSR_EFER={:#x}", s.msrs[Msr::Efer]);
        for (name, cr) in [
            ("CR0", Cr::Cr0),
            ("CR2", Cr::Cr2),
            ("CR3", Cr::Cr3),
            ("CR4", Cr::Cr4),
            ("CR8", Cr::Cr8),
            ("XCR0", Cr::Xcr0),
        ] {
            let _ = writeln!(o, "| -> {name}={:#x}", s.crs[cr]);
        }
        Ok(o)
    }
}
