//! `monitor` commands (`qRcmd`): what a debugger of a whole machine needs
//! beyond the register file.

use gdbstub::outputln;
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd};
use nvmm::{Dr, Seg, StateMask};

use crate::target::VmTarget;

const HELP: &str = "\
monitor commands:
  gva2gpa ADDR [VCPU]   translate a guest virtual address
  regs [VCPU]           system registers: segments, descriptor tables, CRs, EFER, DRs
  phys on|off           memory packets address guest physical memory (on) or virtual (off)
  help                  this text";

impl MonitorCmd for VmTarget<'_> {
    fn handle_monitor_cmd(&mut self, cmd: &[u8], mut out: ConsoleOutput<'_>) -> Result<(), Self::Error> {
        let text = String::from_utf8_lossy(cmd);
        let words: Vec<&str> = text.split_whitespace().collect();
        let vcpu_arg = |w: Option<&&str>| -> Result<usize, String> {
            match w {
                None => Ok(self.selected),
                Some(s) => match s.parse::<usize>() {
                    Ok(i) if i < self.slots.len() => Ok(i),
                    _ => Err(format!("no VCPU {s}: VCPUs are 0 to {}", self.slots.len() - 1)),
                },
            }
        };
        match words.as_slice() {
            ["gva2gpa", addr, rest @ ..] => {
                let Some(gva) = parse_u64(addr) else {
                    outputln!(out, "gva2gpa: {addr} is not an address (hex with 0x, or decimal)");
                    return Ok(());
                };
                let i = match vcpu_arg(rest.first()) {
                    Ok(i) => i,
                    Err(e) => {
                        outputln!(out, "{e}");
                        return Ok(());
                    }
                };
                match self.slots[i].lock().gva_to_gpa(gva) {
                    Ok((gpa, prot)) => outputln!(out, "{gva:#x} -> {gpa:#x} ({})", describe_prot(prot.0)),
                    Err(e) => outputln!(out, "{gva:#x}: {e}"),
                }
            }
            ["regs", rest @ ..] => match vcpu_arg(rest.first()) {
                Ok(i) => self.system_registers(i, &mut out),
                Err(e) => outputln!(out, "{e}"),
            },
            ["phys", "on"] => {
                self.phys = true;
                outputln!(out, "memory packets address guest physical memory");
            }
            ["phys", "off"] => {
                self.phys = false;
                outputln!(out, "memory packets address guest virtual memory (VCPU page tables)");
            }
            ["phys"] => outputln!(out, "phys is {}", if self.phys { "on" } else { "off" }),
            _ => outputln!(out, "{HELP}"),
        }
        Ok(())
    }
}

impl VmTarget<'_> {
    fn system_registers(&mut self, i: usize, out: &mut ConsoleOutput<'_>) {
        let mut v = self.slots[i].lock();
        if let Err(e) = v.get_state(StateMask::ALL) {
            outputln!(out, "VCPU {i}: {e}");
            return;
        }
        let s = *v.state();
        outputln!(out, "VCPU {i}");
        for (name, seg) in [
            ("cs", Seg::Cs),
            ("ds", Seg::Ds),
            ("es", Seg::Es),
            ("fs", Seg::Fs),
            ("gs", Seg::Gs),
            ("ss", Seg::Ss),
            ("ldtr", Seg::Ldt),
            ("tr", Seg::Tr),
        ] {
            let g = s.segs[seg];
            outputln!(
                out,
                "{name:<5}sel={:#06x} base={:#018x} limit={:#010x} attr={:#06x}",
                g.selector,
                g.base,
                g.limit,
                g.attrib.0
            );
        }
        for (name, seg) in [("gdtr", Seg::Gdt), ("idtr", Seg::Idt)] {
            outputln!(out, "{name:<5}base={:#018x} limit={:#06x}", s.segs[seg].base, s.segs[seg].limit);
        }
        let c = &s.crs;
        outputln!(
            out,
            "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} cr8={:#x} xcr0={:#x}",
            c[nvmm::Cr::Cr0],
            c[nvmm::Cr::Cr2],
            c[nvmm::Cr::Cr3],
            c[nvmm::Cr::Cr4],
            c[nvmm::Cr::Cr8],
            c[nvmm::Cr::Xcr0]
        );
        outputln!(out, "efer={:#x} kernel_gs_base={:#x}", s.msrs[nvmm::Msr::Efer], s.msrs[nvmm::Msr::KernelGsBase]);
        let d = &s.drs;
        outputln!(
            out,
            "dr0={:#x} dr1={:#x} dr2={:#x} dr3={:#x} dr6={:#x} dr7={:#x}",
            d[Dr::Dr0],
            d[Dr::Dr1],
            d[Dr::Dr2],
            d[Dr::Dr3],
            d[Dr::Dr6],
            d[Dr::Dr7]
        );
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn describe_prot(p: u8) -> String {
    let f = |bit: u8, c: char| if p & bit != 0 { c } else { '-' };
    format!("{}{}{}{}", f(1, 'r'), f(2, 'w'), f(4, 'x'), f(8, 'u'))
}
