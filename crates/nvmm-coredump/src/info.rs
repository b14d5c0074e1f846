//! Reading a core back (`nvmmctl core-info`): its VCPUs with their modes
//! and RIPs, and its memory segments, through `object`'s ELF reader
//! (lazily: a core of a large guest is not read whole).

use std::fmt;
use std::fs::File;
use std::path::Path;

use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader as _, ProgramHeader as _};
use object::{Endianness, ReadCache};

use crate::Error;
use crate::notes::{
    NT_QEMU_CPUSTATE, NT_X86_XSTATE, PRSTATUS_PID_OFFSET, PRSTATUS_REG_OFFSET, PRSTATUS_SIZE, QEMU_CPUSTATE_SIZE,
    QEMU_CR_OFFSET, QEMU_CS_FLAGS_OFFSET, QEMU_NOTE_OWNER,
};

/// One VCPU of a core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VcpuInfo {
    /// Thread id in the core (`pr_pid`: VCPU index + 1).
    pub thread: u32,
    /// RIP.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CR0, CR3 and CR4 (from the QEMU note), when present.
    pub crs: Option<[u64; 3]>,
    /// CS descriptor flags in QEMU's layout, when present.
    pub cs_flags: Option<u32>,
    /// Whether the core also has its FXSAVE (`NT_PRFPREG`) and XSAVE
    /// (`NT_X86_XSTATE`) notes.
    pub fpu: (bool, bool),
}

impl VcpuInfo {
    /// The CPU mode, as far as the notes tell.
    pub fn mode(&self) -> &'static str {
        let (Some([cr0, _, cr4]), Some(cs)) = (self.crs, self.cs_flags) else { return "unknown mode" };
        let paging = cr0 & (1 << 31) != 0;
        match (cr0 & 1 != 0, cs & (1 << 21) != 0, cs & (1 << 22) != 0) {
            (false, _, _) => "real mode",
            (true, true, _) if cr4 & (1 << 12) != 0 => "64-bit, 5-level paging",
            (true, true, _) => "64-bit, 4-level paging",
            (true, false, true) if paging && cr4 & (1 << 5) != 0 => "32-bit protected, PAE paging",
            (true, false, true) if paging => "32-bit protected, paging",
            (true, false, true) => "32-bit protected",
            (true, false, false) => "16-bit protected",
        }
    }
}

/// One `PT_LOAD`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Guest virtual address.
    pub vaddr: u64,
    /// Guest physical address.
    pub paddr: u64,
    /// Length.
    pub size: u64,
    /// `PF_*` flags.
    pub flags: u32,
}

/// What a core holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreInfo {
    /// The VCPUs, in note order.
    pub vcpus: Vec<VcpuInfo>,
    /// The memory segments.
    pub segments: Vec<SegmentInfo>,
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map_or(0, |s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

fn bad(why: impl Into<String>) -> Error {
    Error::NotACore { why: why.into() }
}

/// Reads the core at `path`.
pub fn read_core(path: &Path) -> Result<CoreInfo, Error> {
    let file = File::open(path)?;
    let cache = ReadCache::new(file);
    let header = FileHeader64::<Endianness>::parse(&cache).map_err(|e| bad(e.to_string()))?;
    let endian = header.endian().map_err(|e| bad(e.to_string()))?;
    if header.e_type(endian) != elf::ET_CORE || header.e_machine(endian) != elf::EM_X86_64 {
        return Err(bad("not an x86-64 ELF core file"));
    }
    let phdrs = header.program_headers(endian, &cache).map_err(|e| bad(e.to_string()))?;
    let mut info = CoreInfo::default();
    for ph in phdrs {
        if ph.p_type(endian) == elf::PT_LOAD {
            info.segments.push(SegmentInfo {
                vaddr: ph.p_vaddr(endian),
                paddr: ph.p_paddr(endian),
                size: ph.p_memsz(endian),
                flags: ph.p_flags(endian).0,
            });
            continue;
        }
        let Some(mut notes) = ph.notes(endian, &cache).map_err(|e| bad(e.to_string()))? else { continue };
        while let Some(note) = notes.next().map_err(|e| bad(e.to_string()))? {
            let (name, kind, desc) = (note.name(), note.n_type(endian), note.desc());
            if name == elf::ELF_NOTE_CORE && kind == elf::NT_PRSTATUS {
                if desc.len() != PRSTATUS_SIZE {
                    return Err(bad(format!("NT_PRSTATUS of {} bytes (x86-64 has {PRSTATUS_SIZE})", desc.len())));
                }
                let reg = |i: usize| u64_at(desc, PRSTATUS_REG_OFFSET + 8 * i);
                let thread = u32_at(desc, PRSTATUS_PID_OFFSET);
                info.vcpus.push(VcpuInfo {
                    thread,
                    rip: reg(16),
                    rflags: reg(18),
                    rsp: reg(19),
                    ..VcpuInfo::default()
                });
                continue;
            }
            let Some(v) = info.vcpus.last_mut() else { continue };
            if name == elf::ELF_NOTE_CORE && kind == elf::NT_PRFPREG {
                v.fpu.0 = true;
            } else if name == elf::ELF_NOTE_LINUX && kind.0 == NT_X86_XSTATE {
                v.fpu.1 = true;
            } else if name == QEMU_NOTE_OWNER && kind.0 == NT_QEMU_CPUSTATE && desc.len() >= QEMU_CPUSTATE_SIZE {
                let cr = |i: usize| u64_at(desc, QEMU_CR_OFFSET + 8 * i);
                v.crs = Some([cr(0), cr(3), cr(4)]);
                v.cs_flags = Some(u32_at(desc, QEMU_CS_FLAGS_OFFSET));
            }
        }
    }
    Ok(info)
}

fn flags(f: u32) -> String {
    [(4, 'r'), (2, 'w'), (1, 'x')].iter().map(|&(b, c)| if f & b != 0 { c } else { '-' }).collect()
}

/// Segments printed before the rest is summarised.
const SHOWN_SEGMENTS: usize = 64;

impl fmt::Display for CoreInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} VCPU(s)", self.vcpus.len())?;
        for v in &self.vcpus {
            // A core of another writer may number a thread 0.
            let index = v.thread.checked_sub(1).map_or_else(|| "?".to_string(), |i| i.to_string());
            write!(
                f,
                "  VCPU {index} (thread {}): {}, RIP {:#x}, RSP {:#x}, RFLAGS {:#x}",
                v.thread,
                v.mode(),
                v.rip,
                v.rsp,
                v.rflags
            )?;
            if let Some([cr0, cr3, cr4]) = v.crs {
                write!(f, ", CR0 {cr0:#x} CR3 {cr3:#x} CR4 {cr4:#x}")?;
            }
            let fpu = match v.fpu {
                (true, true) => "FXSAVE and XSAVE",
                (true, false) => "FXSAVE",
                (false, true) => "XSAVE",
                (false, false) => "no FPU",
            };
            writeln!(f, ", {fpu}")?;
        }
        let virt = self.segments.iter().filter(|s| s.vaddr != s.paddr).count();
        let bytes: u64 = self.segments.iter().filter(|s| s.vaddr == s.paddr).map(|s| s.size).sum();
        writeln!(
            f,
            "{} memory segment(s): {virt} virtual mapping(s), {} physical range(s) ({bytes:#x} bytes) not mapped virtually",
            self.segments.len(),
            self.segments.len() - virt
        )?;
        for s in self.segments.iter().take(SHOWN_SEGMENTS) {
            let end = s.vaddr.wrapping_add(s.size);
            writeln!(
                f,
                "  {:#018x}-{:#018x} {} gpa {:#x} ({:#x} bytes)",
                s.vaddr,
                end,
                flags(s.flags),
                s.paddr,
                s.size
            )?;
        }
        if self.segments.len() > SHOWN_SEGMENTS {
            writeln!(f, "  ... and {} more", self.segments.len() - SHOWN_SEGMENTS)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_numbered_0_prints_without_an_index() {
        let info = CoreInfo { vcpus: vec![VcpuInfo::default()], segments: Vec::new() };
        assert!(info.to_string().contains("VCPU ? (thread 0): unknown mode"), "{info}");
    }
}
