//! The notes of a core: per VCPU, what Linux writes per thread
//! (`NT_PRSTATUS`, `NT_PRFPREG`, `NT_X86_XSTATE`) and QEMU's CPU-state
//! note; once per core, `NT_PRPSINFO`.
//!
//! The payloads are the Linux x86-64 structures gdb and lldb read
//! (`struct elf_prstatus`, `struct user_i387_struct`, the XSAVE image
//! with XCR0 in its software-reserved bytes, `struct elf_prpsinfo`) and
//! QEMU's `QEMUCPUState` (version 1). They are built field by field in
//! declaration order; the note headers come from `object`.

use nvmm::x86::xsave::xfeature;
use nvmm::{Cr, Gpr, Msr, Seg, State};
use object::LittleEndian as LE;
use object::elf::{self, NoteHeader64, NoteType};
use object::endian::U32;
use object::pod::bytes_of;

use crate::image::VcpuImage;

/// `NT_X86_XSTATE`: the XSAVE image (owner `LINUX`).
pub const NT_X86_XSTATE: u32 = 0x202;
/// Type of QEMU's CPU-state note (owner `QEMU`).
pub const NT_QEMU_CPUSTATE: u32 = 0;
/// Owner of QEMU's CPU-state note.
pub const QEMU_NOTE_OWNER: &[u8] = b"QEMU";
/// `sizeof(struct elf_prstatus)` on x86-64.
pub const PRSTATUS_SIZE: usize = 336;
/// `sizeof(struct elf_prpsinfo)` on x86-64.
pub const PRPSINFO_SIZE: usize = 136;
/// `sizeof(QEMUCPUState)`, version 1.
pub const QEMU_CPUSTATE_SIZE: usize = 440;
/// Offset of XCR0 in the XSAVE image of a Linux core
/// (`sw_reserved`, `USER_XSTATE_XCR0_WORD`).
pub const XSTATE_XCR0_OFFSET: usize = 464;
/// Offset of `pr_reg` in `struct elf_prstatus`.
pub const PRSTATUS_REG_OFFSET: usize = 112;
/// Offset of `pr_pid` in `struct elf_prstatus`.
pub const PRSTATUS_PID_OFFSET: usize = 32;
/// Offset of the CS descriptor flags in `QEMUCPUState`.
pub const QEMU_CS_FLAGS_OFFSET: usize = 160;
/// Offset of `cr[0]` in `QEMUCPUState`.
pub const QEMU_CR_OFFSET: usize = 392;

/// Little-endian fields appended in declaration order.
#[derive(Default)]
struct Fields(Vec<u8>);

impl Fields {
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// Appends one note (header, name and descriptor, each padded to 4 bytes).
fn push_note(out: &mut Vec<u8>, owner: &[u8], kind: u32, desc: &[u8]) {
    let mut name = owner.to_vec();
    name.push(0);
    let header = NoteHeader64::<LE> {
        n_namesz: U32::new(LE, name.len() as u32),
        n_descsz: U32::new(LE, desc.len() as u32),
        n_type: U32::new(LE, NoteType(kind)),
    };
    out.extend_from_slice(bytes_of(&header));
    for part in [&name[..], desc] {
        out.extend_from_slice(part);
        out.resize(out.len().next_multiple_of(4), 0);
    }
}

/// `struct user_regs_struct` of x86-64, as in `pr_reg`.
fn user_regs(s: &State) -> Fields {
    let g = &s.gprs;
    let mut f = Fields::default();
    for r in [Gpr::R15, Gpr::R14, Gpr::R13, Gpr::R12, Gpr::Rbp, Gpr::Rbx, Gpr::R11, Gpr::R10, Gpr::R9, Gpr::R8] {
        f.u64(g[r]);
    }
    for r in [Gpr::Rax, Gpr::Rcx, Gpr::Rdx, Gpr::Rsi, Gpr::Rdi] {
        f.u64(g[r]);
    }
    // orig_rax: not in a system call.
    f.u64(u64::MAX);
    f.u64(g[Gpr::Rip]).u64(s.segs[Seg::Cs].selector.into()).u64(g[Gpr::Rflags]).u64(g[Gpr::Rsp]);
    f.u64(s.segs[Seg::Ss].selector.into()).u64(s.segs[Seg::Fs].base).u64(s.segs[Seg::Gs].base);
    for seg in [Seg::Ds, Seg::Es, Seg::Fs, Seg::Gs] {
        f.u64(s.segs[seg].selector.into());
    }
    f
}

/// `struct elf_prstatus` of VCPU `v`: `pr_pid` is its index + 1 (0 would
/// read as "no thread").
pub fn prstatus(v: &VcpuImage) -> Vec<u8> {
    let pid = v.index + 1;
    let mut f = Fields::default();
    // pr_info (si_signo, si_code, si_errno), pr_cursig and padding.
    f.u32(0).u32(0).u32(0).u16(0).u16(0);
    // pr_sigpend, pr_sighold.
    f.u64(0).u64(0);
    debug_assert_eq!(f.0.len(), PRSTATUS_PID_OFFSET);
    // pr_pid, pr_ppid, pr_pgrp, pr_sid.
    f.u32(pid).u32(1).u32(1).u32(1);
    // pr_utime, pr_stime, pr_cutime, pr_cstime.
    f.zeros(64);
    debug_assert_eq!(f.0.len(), PRSTATUS_REG_OFFSET);
    f.bytes(&user_regs(&v.state).0);
    // pr_fpvalid and padding.
    f.u32(1).u32(0);
    debug_assert_eq!(f.0.len(), PRSTATUS_SIZE);
    f.0
}

/// `struct elf_prpsinfo`: the "process" is the guest.
pub fn prpsinfo(name: &str) -> Vec<u8> {
    let mut f = Fields::default();
    // pr_state, pr_sname ('R'), pr_zomb, pr_nice, padding, pr_flag.
    f.bytes(&[0, b'R', 0, 0]).u32(0).u64(0);
    // pr_uid, pr_gid, pr_pid, pr_ppid, pr_pgrp, pr_sid.
    f.u32(0).u32(0).u32(1).u32(1).u32(1).u32(1);
    let mut fname = [0u8; 16];
    let mut args = [0u8; 80];
    let n = name.len().min(15);
    fname[..n].copy_from_slice(&name.as_bytes()[..n]);
    let n = name.len().min(79);
    args[..n].copy_from_slice(&name.as_bytes()[..n]);
    f.bytes(&fname).bytes(&args);
    debug_assert_eq!(f.0.len(), PRPSINFO_SIZE);
    f.0
}

/// Where each XSAVE component ends in the standard format, by XCR0 bit.
const XSTATE_END: [(u64, usize); 5] = [
    (xfeature::AVX, 832),
    (xfeature::OPMASK, 1152),
    (xfeature::ZMM_HI256, 1664),
    (xfeature::HI16_ZMM, 2688),
    (xfeature::PKRU, 2696),
];

/// The legacy area and the XSAVE header: the image without extended
/// components.
const XSTATE_LEGACY_END: usize = 576;

/// The XCR0 a debugger is told: the guest's, with x87 and SSE always (the
/// FXSAVE image holds both whatever XCR0 says).
pub fn debugger_xcr0(s: &State) -> u64 {
    s.crs[Cr::Xcr0] | xfeature::X87 | xfeature::SSE
}

/// The XSAVE image of `NT_X86_XSTATE`: the legacy area from `State::fpu`,
/// XCR0 at byte 464 where Linux puts it, the header and the extended
/// components from the VCPU's XSAVE area, as long as XCR0's highest
/// component needs.
pub fn xstate(v: &VcpuImage) -> Vec<u8> {
    let xcr0 = debugger_xcr0(&v.state);
    let len = XSTATE_END.iter().filter(|(bit, _)| xcr0 & bit != 0).map(|&(_, end)| end).max();
    let mut img = v.xsave.as_bytes()[..len.unwrap_or(XSTATE_LEGACY_END)].to_vec();
    img[..512].copy_from_slice(&v.state.fpu.to_bytes());
    img[XSTATE_XCR0_OFFSET..XSTATE_XCR0_OFFSET + 8].copy_from_slice(&xcr0.to_le_bytes());
    img[XSTATE_XCR0_OFFSET + 8..512].fill(0);
    // XSTATE_BV: the legacy area is always meaningful here.
    let bv = u64::from_le_bytes(img[512..520].try_into().expect("8 bytes")) | xfeature::X87 | xfeature::SSE;
    img[512..520].copy_from_slice(&(bv & xcr0).to_le_bytes());
    img
}

/// QEMU's segment flags: descriptor bits 8..23 in place.
fn qemu_segment(f: &mut Fields, s: &State, seg: Seg) {
    let sg = s.segs[seg];
    let a = u32::from(sg.attrib.0);
    let flags = (a & 0xff) << 8 | ((a >> 8) & 0xf) << 20;
    f.u32(sg.selector.into()).u32(sg.limit).u32(flags).u32(0).u64(sg.base);
}

/// `QEMUCPUState` (version 1): the system registers tools that read
/// QEMU's dumps look for.
pub fn qemu_cpu_state(s: &State) -> Vec<u8> {
    let g = &s.gprs;
    let mut f = Fields::default();
    f.u32(1).u32(QEMU_CPUSTATE_SIZE as u32);
    for r in [Gpr::Rax, Gpr::Rbx, Gpr::Rcx, Gpr::Rdx, Gpr::Rsi, Gpr::Rdi, Gpr::Rsp, Gpr::Rbp] {
        f.u64(g[r]);
    }
    for r in [Gpr::R8, Gpr::R9, Gpr::R10, Gpr::R11, Gpr::R12, Gpr::R13, Gpr::R14, Gpr::R15, Gpr::Rip, Gpr::Rflags] {
        f.u64(g[r]);
    }
    debug_assert_eq!(f.0.len() + 8, QEMU_CS_FLAGS_OFFSET);
    for seg in [Seg::Cs, Seg::Ds, Seg::Es, Seg::Fs, Seg::Gs, Seg::Ss, Seg::Ldt, Seg::Tr, Seg::Gdt, Seg::Idt] {
        qemu_segment(&mut f, s, seg);
    }
    debug_assert_eq!(f.0.len(), QEMU_CR_OFFSET);
    // cr[0..4]: CR0, CR1 (none), CR2, CR3, CR4.
    f.u64(s.crs[Cr::Cr0]).u64(0).u64(s.crs[Cr::Cr2]).u64(s.crs[Cr::Cr3]).u64(s.crs[Cr::Cr4]);
    f.u64(s.msrs[Msr::KernelGsBase]);
    debug_assert_eq!(f.0.len(), QEMU_CPUSTATE_SIZE);
    f.0
}

/// Every note of a core of `vcpus`, in the order gdb and lldb expect:
/// the process, then per VCPU its `NT_PRSTATUS` first.
pub fn all(vcpus: &[VcpuImage], name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    push_note(&mut out, elf::ELF_NOTE_CORE, elf::NT_PRPSINFO.0, &prpsinfo(name));
    for v in vcpus {
        push_note(&mut out, elf::ELF_NOTE_CORE, elf::NT_PRSTATUS.0, &prstatus(v));
        push_note(&mut out, elf::ELF_NOTE_CORE, elf::NT_PRFPREG.0, &v.state.fpu.to_bytes());
        push_note(&mut out, elf::ELF_NOTE_LINUX, NT_X86_XSTATE, &xstate(v));
        push_note(&mut out, QEMU_NOTE_OWNER, NT_QEMU_CPUSTATE, &qemu_cpu_state(&v.state));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvmm::x86::xsave::Xsave;

    fn vcpu() -> VcpuImage {
        let mut state = State::default();
        for (i, r) in [Gpr::Rax, Gpr::Rbx, Gpr::R15, Gpr::Rip, Gpr::Rsp, Gpr::Rflags].into_iter().enumerate() {
            state.gprs[r] = 0x1111 * (i as u64 + 1);
        }
        state.segs[Seg::Cs].selector = 0x33;
        state.segs[Seg::Fs].base = 0xfeed;
        state.crs[Cr::Xcr0] = 7;
        state.fpu.fx_xmm[3] = [0x33; 16];
        let mut xsave = Xsave::default();
        xsave.set_ymm_hi(5, [0x55; 16]).unwrap();
        VcpuImage { index: 2, state, xsave, mappings: Vec::new() }
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn prstatus_follows_the_linux_layout() {
        let b = prstatus(&vcpu());
        assert_eq!(b.len(), PRSTATUS_SIZE);
        // pr_pid at 32 (after siginfo 12, cursig 2 + 2, sigpend 8, sighold 8).
        assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 3);
        let reg = |i: usize| u64_at(&b, PRSTATUS_REG_OFFSET + 8 * i);
        // user_regs_struct: r15 is 0, rbx 5, rax 10, rip 16, cs 17, eflags 18, rsp 19, fs_base 21.
        assert_eq!(reg(0), 0x3333);
        assert_eq!(reg(5), 0x2222);
        assert_eq!(reg(10), 0x1111);
        assert_eq!(reg(15), u64::MAX);
        assert_eq!((reg(16), reg(17), reg(18), reg(19)), (0x4444, 0x33, 0x6666, 0x5555));
        assert_eq!(reg(21), 0xfeed);
        assert_eq!(u32::from_le_bytes(b[328..332].try_into().unwrap()), 1, "pr_fpvalid");
    }

    #[test]
    fn xstate_carries_xcr0_and_the_avx_halves() {
        let img = xstate(&vcpu());
        assert_eq!(img.len(), 832);
        assert_eq!(u64_at(&img, 464), 7);
        assert_eq!(u64_at(&img, 512), 7, "XSTATE_BV: x87, SSE (legacy area) and AVX");
        assert_eq!(&img[160 + 3 * 16..160 + 4 * 16], &[0x33; 16]);
        assert_eq!(&img[576 + 5 * 16..576 + 6 * 16], &[0x55; 16]);
    }

    #[test]
    fn qemu_note_has_the_system_registers() {
        let mut v = vcpu();
        v.state.crs[Cr::Cr3] = 0x1000;
        v.state.segs[Seg::Cs].attrib = nvmm::x86::state::SegAttrib::new(11, true, 0, true, false, true, false, true);
        let b = qemu_cpu_state(&v.state);
        assert_eq!(b.len(), QEMU_CPUSTATE_SIZE);
        // cs at 8 + 18 * 8 = 152: flags at +8 = type 11 << 8 | S | P | L | G.
        let flags = u32::from_le_bytes(b[160..164].try_into().unwrap());
        assert_eq!(flags, 0xb << 8 | 1 << 12 | 1 << 15 | 1 << 21 | 1 << 23);
        // cr[3] at 8 + 144 + 240 + 24.
        assert_eq!(u64_at(&b, 8 + 144 + 240 + 24), 0x1000);
    }

    #[test]
    fn notes_are_padded_and_ordered() {
        let n = all(&[vcpu()], "guest");
        // First note: CORE / NT_PRPSINFO.
        assert_eq!(u32::from_le_bytes(n[8..12].try_into().unwrap()), 3);
        assert_eq!(&n[12..17], b"CORE\0");
        assert_eq!(n.len() % 4, 0);
    }
}
