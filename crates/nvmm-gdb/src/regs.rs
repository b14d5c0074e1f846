//! Between nvmm's state (NVMM's components and the XSAVE area) and the
//! debugger's register file.

use nvmm::x86::bits::{cr0, efer, rflags};
use nvmm::x86::xsave::xfeature;
use nvmm::{Cr, Gpr, Msr, Seg, State, StateMask, Vcpu};

use crate::arch::Regs;

/// gdb's general-purpose register order.
const GDB_GPRS: [Gpr; 16] = [
    Gpr::Rax,
    Gpr::Rbx,
    Gpr::Rcx,
    Gpr::Rdx,
    Gpr::Rsi,
    Gpr::Rdi,
    Gpr::Rbp,
    Gpr::Rsp,
    Gpr::R8,
    Gpr::R9,
    Gpr::R10,
    Gpr::R11,
    Gpr::R12,
    Gpr::R13,
    Gpr::R14,
    Gpr::R15,
];

/// gdb's segment register order.
const GDB_SEGS: [Seg; 6] = [Seg::Cs, Seg::Ss, Seg::Ds, Seg::Es, Seg::Fs, Seg::Gs];

/// The control registers gdb sees, in its order.
const GDB_CRS: [Cr; 5] = [Cr::Cr0, Cr::Cr2, Cr::Cr3, Cr::Cr4, Cr::Cr8];

/// Reads the whole register file of `vcpu`.
pub(crate) fn read(vcpu: &mut Vcpu) -> nvmm::Result<Regs> {
    vcpu.get_state(StateMask::ALL)?;
    let s = *vcpu.state();
    let mut r = Regs::default();
    for (slot, g) in r.core.regs.iter_mut().zip(GDB_GPRS) {
        *slot = s.gprs[g];
    }
    r.core.rip = s.gprs[Gpr::Rip];
    r.core.eflags = s.gprs[Gpr::Rflags] as u32;
    let sel: Vec<u32> = GDB_SEGS.iter().map(|&g| u32::from(s.segs[g].selector)).collect();
    let seg = &mut r.core.segments;
    (seg.cs, seg.ss, seg.ds, seg.es, seg.fs, seg.gs) = (sel[0], sel[1], sel[2], sel[3], sel[4], sel[5]);
    let f = &s.fpu;
    for (st, ac) in r.core.st.iter_mut().zip(&f.fx_87_ac) {
        st.copy_from_slice(&ac[..10]);
    }
    let fpu = &mut r.core.fpu;
    fpu.fctrl = u32::from(f.fx_cw);
    fpu.fstat = u32::from(f.fx_sw);
    fpu.ftag = u32::from(full_tag(f.fx_tw, f.fx_sw, &f.fx_87_ac));
    fpu.fioff = f.fx_ip as u32;
    fpu.fiseg = (f.fx_ip >> 32) as u32 & 0xffff;
    fpu.fooff = f.fx_dp as u32;
    fpu.foseg = (f.fx_dp >> 32) as u32 & 0xffff;
    fpu.fop = u32::from(f.fx_opcode);
    for (x, b) in r.core.xmm.iter_mut().zip(&f.fx_xmm) {
        *x = u128::from_le_bytes(*b);
    }
    r.core.mxcsr = f.fx_mxcsr;
    r.fs_base = s.segs[Seg::Fs].base;
    r.gs_base = s.segs[Seg::Gs].base;
    let xsave = vcpu.xsave();
    if xsave.xstate_bv() & xfeature::AVX != 0 {
        for (i, y) in r.ymm_hi.iter_mut().enumerate() {
            *y = u128::from_le_bytes(xsave.ymm_hi(i)?);
        }
    }
    for (c, cr) in r.cr.iter_mut().zip(GDB_CRS) {
        *c = s.crs[cr];
    }
    r.efer = s.msrs[Msr::Efer];
    r.kernel_gs_base = s.msrs[Msr::KernelGsBase];
    Ok(r)
}

/// Writes `new` into `vcpu`: only the components that change are set
/// (at the next run). A changed selector takes a real-mode base
/// (selector × 16) in real mode and keeps its hidden part otherwise.
pub(crate) fn write(vcpu: &mut Vcpu, new: &Regs) -> nvmm::Result<()> {
    let old = read(vcpu)?;
    if old == *new {
        return Ok(());
    }
    let mut s: State = *vcpu.state();
    for (&v, g) in new.core.regs.iter().zip(GDB_GPRS) {
        s.gprs[g] = v;
    }
    s.gprs[Gpr::Rip] = new.core.rip;
    s.gprs[Gpr::Rflags] = (s.gprs[Gpr::Rflags] & !0xffff_ffff) | u64::from(new.core.eflags);
    let seg = &new.core.segments;
    let real = s.crs[Cr::Cr0] & cr0::PE == 0;
    for (g, v) in GDB_SEGS.iter().zip([seg.cs, seg.ss, seg.ds, seg.es, seg.fs, seg.gs]) {
        let v = v as u16;
        if s.segs[*g].selector != v {
            s.segs[*g].selector = v;
            if real {
                s.segs[*g].base = u64::from(v) << 4;
            }
        }
    }
    s.segs[Seg::Fs].base = new.fs_base;
    s.segs[Seg::Gs].base = new.gs_base;
    let f = &mut s.fpu;
    for (ac, st) in f.fx_87_ac.iter_mut().zip(&new.core.st) {
        ac[..10].copy_from_slice(st);
    }
    f.fx_cw = new.core.fpu.fctrl as u16;
    f.fx_sw = new.core.fpu.fstat as u16;
    f.fx_tw = abridged_tag(new.core.fpu.ftag as u16);
    f.fx_ip = u64::from(new.core.fpu.fioff) | u64::from(new.core.fpu.fiseg & 0xffff) << 32;
    f.fx_dp = u64::from(new.core.fpu.fooff) | u64::from(new.core.fpu.foseg & 0xffff) << 32;
    f.fx_opcode = new.core.fpu.fop as u16;
    for (b, x) in f.fx_xmm.iter_mut().zip(&new.core.xmm) {
        *b = x.to_le_bytes();
    }
    f.fx_mxcsr = new.core.mxcsr;
    for (cr, &v) in GDB_CRS.iter().zip(&new.cr) {
        s.crs[*cr] = v;
    }
    s.msrs[Msr::Efer] = new.efer;
    s.msrs[Msr::KernelGsBase] = new.kernel_gs_base;
    let mut mask = StateMask::NONE;
    let old_s = *vcpu.state();
    if s.gprs != old_s.gprs {
        mask |= StateMask::GPRS;
    }
    if s.segs != old_s.segs {
        mask |= StateMask::SEGS;
    }
    if s.crs != old_s.crs {
        mask |= StateMask::CRS;
    }
    if s.msrs != old_s.msrs {
        mask |= StateMask::MSRS;
    }
    let fpu_changed = s.fpu != old_s.fpu || new.ymm_hi != old.ymm_hi;
    if fpu_changed {
        mask |= StateMask::FPU;
    }
    *vcpu.state_mut() = s;
    if new.ymm_hi != old.ymm_hi {
        let x = vcpu.xsave_mut();
        for (i, y) in new.ymm_hi.iter().enumerate() {
            x.set_ymm_hi(i, y.to_le_bytes())?;
        }
    }
    vcpu.set_state(mask)
}

/// The linear address of `vcpu`'s next instruction.
pub(crate) fn linear_pc(vcpu: &mut Vcpu) -> nvmm::Result<u64> {
    vcpu.get_state(StateMask::GPRS | StateMask::SEGS | StateMask::CRS | StateMask::MSRS)?;
    Ok(nvmm::x86::mode::linear_rip(vcpu.state()))
}

/// The CPU mode's name and the current privilege level.
pub(crate) fn mode_and_cpl(vcpu: &mut Vcpu) -> nvmm::Result<(&'static str, u8)> {
    vcpu.get_state(StateMask::GPRS | StateMask::SEGS | StateMask::CRS | StateMask::MSRS)?;
    let s = vcpu.state();
    let lma = s.msrs[Msr::Efer] & efer::LMA != 0;
    let mode = if s.crs[Cr::Cr0] & cr0::PE == 0 {
        "real mode"
    } else if s.gprs[Gpr::Rflags] & rflags::VM != 0 {
        "virtual-8086 mode"
    } else if lma && s.segs[Seg::Cs].attrib.l() {
        "64-bit mode"
    } else if lma {
        "compatibility mode"
    } else {
        "protected mode"
    };
    Ok((mode, s.segs[Seg::Ss].attrib.dpl()))
}

/// The full x87 tag word (2 bits per physical register: 00 valid, 01
/// zero, 10 special, 11 empty) from FXSAVE's abridged one (1 bit: not
/// empty) and the registers' contents, as the SDM defines the tags.
pub(crate) fn full_tag(abridged: u8, fsw: u16, st: &[[u8; 16]; 8]) -> u16 {
    let top = usize::from((fsw >> 11) & 7);
    let mut tag = 0u16;
    for phys in 0..8 {
        let t = if abridged & (1 << phys) == 0 {
            3
        } else {
            let r = &st[(phys + 8 - top) % 8];
            let exp = u16::from_le_bytes([r[8], r[9]]) & 0x7fff;
            let mantissa = u64::from_le_bytes(r[..8].try_into().unwrap_or([0; 8]));
            match (exp, mantissa) {
                (0x7fff, _) => 2,
                (0, 0) => 1,
                (0, _) => 2,
                _ if mantissa >> 63 == 0 => 2,
                _ => 0,
            }
        };
        tag |= t << (2 * phys);
    }
    tag
}

/// FXSAVE's abridged tag word from the full one.
pub(crate) fn abridged_tag(full: u16) -> u8 {
    (0..8).filter(|i| (full >> (2 * i)) & 3 != 3).fold(0, |a, i| a | 1 << i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SDM vol. 1, 8.1.7: one value (1.0) pushed on an empty stack sits in
    /// physical register 7 (TOP = 7) and is valid; the rest are empty.
    #[test]
    fn tags_follow_the_sdm() {
        let mut st = [[0u8; 16]; 8];
        st[0][..10].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f]);
        let fsw = 7 << 11;
        assert_eq!(full_tag(0x80, fsw, &st), 0x3fff);
        // A zero in st0 instead: tag 01.
        st[0] = [0; 16];
        assert_eq!(full_tag(0x80, fsw, &st), 0x7fff);
        // NaN/infinity exponent: special.
        st[0][8] = 0xff;
        st[0][9] = 0x7f;
        assert_eq!(full_tag(0x80, fsw, &st), 0xbfff);
        assert_eq!(abridged_tag(0x3fff), 0x80);
        assert_eq!(abridged_tag(0xffff), 0);
        assert_eq!(abridged_tag(0), 0xff);
    }
}

#[cfg(test)]
mod kvm_tests {
    use super::*;
    use nvmm::{Nvmm, Prot};

    /// Every register the debugger can write, changed, stored into KVM
    /// (`complete_pending` loads the state without running) and read back
    /// from KVM: what comes back is what was written.
    #[test]
    fn the_register_file_round_trips_through_kvm() {
        nvmm_testkit::kvm_or_skip!();
        let machine = Nvmm::open().unwrap().create_machine().unwrap();
        machine.map_anonymous(0, 1 << 20, Prot::ALL).unwrap();
        machine.write_gpa(0x800, &nvmm::x86::modes::gdt_bytes()).unwrap();
        machine.write_gpa(0x10000, &nvmm::x86::modes::identity_page_tables(0x10000, 1 << 30)).unwrap();
        let mut vcpu = machine.create_vcpu(0).unwrap();
        vcpu.update(StateMask::ALL, |s| {
            nvmm::x86::modes::long_mode(s, 0x800, 0x10000);
            s.crs[Cr::Xcr0] = 7;
            s.crs[Cr::Cr4] |= 1 << 18;
        })
        .unwrap();
        let mut r = read(&mut vcpu).unwrap();
        for (i, g) in r.core.regs.iter_mut().enumerate() {
            *g = 0x0101_0101_0101_0101u64.wrapping_mul(i as u64 + 1);
        }
        r.core.rip = 0x1234;
        r.core.eflags = 0x2 | 0x1 | 0x40 | 0x800;
        for (i, st) in r.core.st.iter_mut().enumerate() {
            *st = [i as u8 + 1, 2, 3, 4, 5, 6, 7, 0x80, 0xff, 0x3f];
        }
        r.core.fpu.fctrl = 0x27f;
        r.core.fpu.fstat = 0x3800;
        r.core.fpu.ftag = 0x0fff;
        r.core.fpu.fop = 0x1d9;
        r.core.fpu.fioff = 0x4000;
        r.core.fpu.fooff = 0x5000;
        for (i, x) in r.core.xmm.iter_mut().enumerate() {
            *x = u128::MAX / (i as u128 + 2);
        }
        r.core.mxcsr = 0x1f80 | 0x8000;
        r.fs_base = 0x7000_0000_0000;
        r.gs_base = 0xffff_8000_0000_1000;
        r.kernel_gs_base = 0xffff_8000_0000_2000;
        for (i, y) in r.ymm_hi.iter_mut().enumerate() {
            *y = 0x1111_2222_3333_4444_5555_6666_7777_8888u128.rotate_left(i as u32 * 8);
        }
        write(&mut vcpu, &r).unwrap();
        vcpu.complete_pending().unwrap();
        let back = read(&mut vcpu).unwrap();
        assert_eq!(back, r);
        // The full tag word 0x0fff: registers 6 and 7 valid, the rest empty.
        assert_eq!(vcpu.state().fpu.fx_tw, 0xc0);
    }
}
