//! The VCPU state, component by component, laid out exactly like NetBSD's
//! `struct nvmm_x64_state` (spec §2.7): 1008 bytes, 16-byte aligned, so the
//! C library can hand a pointer to it to C programs as `vcpu->state`.
//!
//! The FPU component is the 512-byte FXSAVE image here; the rest of the XSAVE
//! area (AVX, AVX-512, ...) travels with it in [`crate::x86::Xsave`].

use std::ops::{BitAnd, BitAndAssign, BitOr, BitOrAssign, Index, IndexMut, Not};

/// A set of state components (`NVMM_X64_STATE_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StateMask(u64);

impl StateMask {
    /// Segment registers, GDTR, IDTR, LDTR and TR.
    pub const SEGS: StateMask = StateMask(0x01);
    /// General-purpose registers, RIP and RFLAGS.
    pub const GPRS: StateMask = StateMask(0x02);
    /// CR0, CR2, CR3, CR4, CR8 and XCR0.
    pub const CRS: StateMask = StateMask(0x04);
    /// DR0-DR3, DR6, DR7.
    pub const DRS: StateMask = StateMask(0x08);
    /// EFER, STAR, LSTAR, CSTAR, SFMASK, KERNELGSBASE, SYSENTER_*, PAT, TSC.
    pub const MSRS: StateMask = StateMask(0x10);
    /// Interrupt shadow, window exiting, pending event.
    pub const INTR: StateMask = StateMask(0x20);
    /// x87, MMX, SSE and every other XSAVE component.
    pub const FPU: StateMask = StateMask(0x40);
    /// Every component.
    pub const ALL: StateMask = StateMask(0x7f);
    /// No component.
    pub const NONE: StateMask = StateMask(0);

    /// Builds a mask from raw `NVMM_X64_STATE_*` bits, rejecting unknown bits.
    pub fn from_bits(bits: u64) -> Option<StateMask> {
        (bits & !Self::ALL.0 == 0).then_some(StateMask(bits))
    }

    /// The raw `NVMM_X64_STATE_*` bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The components of both (`|`, usable in constants).
    pub const fn union(self, other: StateMask) -> StateMask {
        StateMask(self.0 | other.0)
    }

    /// Whether every component of `other` is in `self`.
    pub const fn contains(self, other: StateMask) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether `self` and `other` share a component.
    pub const fn intersects(self, other: StateMask) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether the mask is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Debug for StateMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const NAMES: [&str; 7] = ["SEGS", "GPRS", "CRS", "DRS", "MSRS", "INTR", "FPU"];
        let names: Vec<&str> =
            NAMES.iter().enumerate().filter(|(i, _)| self.0 & (1 << i) != 0).map(|(_, n)| *n).collect();
        write!(f, "StateMask({})", if names.is_empty() { "NONE".into() } else { names.join("|") })
    }
}

impl BitOr for StateMask {
    type Output = StateMask;
    fn bitor(self, rhs: StateMask) -> StateMask {
        StateMask(self.0 | rhs.0)
    }
}
impl BitOrAssign for StateMask {
    fn bitor_assign(&mut self, rhs: StateMask) {
        self.0 |= rhs.0;
    }
}
impl BitAnd for StateMask {
    type Output = StateMask;
    fn bitand(self, rhs: StateMask) -> StateMask {
        StateMask(self.0 & rhs.0)
    }
}
impl BitAndAssign for StateMask {
    fn bitand_assign(&mut self, rhs: StateMask) {
        self.0 &= rhs.0;
    }
}
impl Not for StateMask {
    type Output = StateMask;
    fn not(self) -> StateMask {
        StateMask(!self.0 & Self::ALL.0)
    }
}

macro_rules! indexed_array {
    ($(#[$m:meta])* $name:ident, $idx:ident, $elem:ty, $n:expr) => {
        $(#[$m])*
        #[repr(transparent)]
        #[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
        pub struct $name(pub [$elem; $n]);

        impl Index<$idx> for $name {
            type Output = $elem;
            fn index(&self, i: $idx) -> &$elem {
                &self.0[i as usize]
            }
        }
        impl IndexMut<$idx> for $name {
            fn index_mut(&mut self, i: $idx) -> &mut $elem {
                &mut self.0[i as usize]
            }
        }
    };
}

/// Segment register indexes (`NVMM_X64_SEG_*`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Seg {
    Es = 0,
    Cs = 1,
    Ss = 2,
    Ds = 3,
    Fs = 4,
    Gs = 5,
    Gdt = 6,
    Idt = 7,
    Ldt = 8,
    Tr = 9,
}

impl Seg {
    /// All ten, in index order.
    pub const ALL: [Seg; 10] =
        [Seg::Es, Seg::Cs, Seg::Ss, Seg::Ds, Seg::Fs, Seg::Gs, Seg::Gdt, Seg::Idt, Seg::Ldt, Seg::Tr];
    /// Names as `nvmm_vcpu_dump` prints them.
    pub const NAMES: [&'static str; 10] = ["ES", "CS", "SS", "DS", "FS", "GS", "GDT", "IDT", "LDT", "TR"];
}

/// General-purpose register indexes (`NVMM_X64_GPR_*`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[repr(usize)]
#[allow(missing_docs)]
pub enum Gpr {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
    Rip = 16,
    Rflags = 17,
}

impl Gpr {
    /// Names in index order.
    pub const NAMES: [&'static str; 18] = [
        "RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI", "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15",
        "RIP", "RFLAGS",
    ];
}

/// Control register indexes (`NVMM_X64_CR_*`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[repr(usize)]
#[allow(missing_docs)]
pub enum Cr {
    Cr0 = 0,
    Cr2 = 1,
    Cr3 = 2,
    Cr4 = 3,
    Cr8 = 4,
    Xcr0 = 5,
}

/// Debug register indexes (`NVMM_X64_DR_*`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[repr(usize)]
#[allow(missing_docs)]
pub enum Dr {
    Dr0 = 0,
    Dr1 = 1,
    Dr2 = 2,
    Dr3 = 3,
    Dr6 = 4,
    Dr7 = 5,
}

/// MSR indexes in the state (`NVMM_X64_MSR_*`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[repr(usize)]
#[allow(missing_docs)]
pub enum Msr {
    Efer = 0,
    Star = 1,
    Lstar = 2,
    Cstar = 3,
    Sfmask = 4,
    KernelGsBase = 5,
    SysenterCs = 6,
    SysenterEsp = 7,
    SysenterEip = 8,
    Pat = 9,
    Tsc = 10,
}

impl Msr {
    /// All eleven, in index order.
    pub const ALL: [Msr; 11] = [
        Msr::Efer,
        Msr::Star,
        Msr::Lstar,
        Msr::Cstar,
        Msr::Sfmask,
        Msr::KernelGsBase,
        Msr::SysenterCs,
        Msr::SysenterEsp,
        Msr::SysenterEip,
        Msr::Pat,
        Msr::Tsc,
    ];

    /// The architectural MSR number.
    pub const fn index(self) -> u32 {
        match self {
            Msr::Efer => 0xC000_0080,
            Msr::Star => 0xC000_0081,
            Msr::Lstar => 0xC000_0082,
            Msr::Cstar => 0xC000_0083,
            Msr::Sfmask => 0xC000_0084,
            Msr::KernelGsBase => 0xC000_0102,
            Msr::SysenterCs => 0x174,
            Msr::SysenterEsp => 0x175,
            Msr::SysenterEip => 0x176,
            Msr::Pat => 0x277,
            Msr::Tsc => 0x10,
        }
    }
}

indexed_array!(
    /// The ten segment registers, indexed by [`Seg`].
    Segs, Seg, Segment, 10
);
indexed_array!(
    /// The general-purpose registers, indexed by [`Gpr`].
    Gprs, Gpr, u64, 18
);
indexed_array!(
    /// The control registers, indexed by [`Cr`].
    Crs, Cr, u64, 6
);
indexed_array!(
    /// The debug registers, indexed by [`Dr`].
    Drs, Dr, u64, 6
);
indexed_array!(
    /// The MSRs, indexed by [`Msr`].
    Msrs, Msr, u64, 11
);

/// Hidden attributes of a segment: NVMM's 16-bit bitfield
/// (type:4 s:1 dpl:2 p:1 avl:1 l:1 def:1 g:1 rsvd:4).
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct SegAttrib(pub u16);

impl SegAttrib {
    /// Builds attributes from their fields.
    #[allow(clippy::too_many_arguments)]
    pub const fn new(typ: u8, s: bool, dpl: u8, p: bool, avl: bool, l: bool, def: bool, g: bool) -> SegAttrib {
        SegAttrib(
            (typ as u16 & 0xf)
                | (s as u16) << 4
                | (dpl as u16 & 3) << 5
                | (p as u16) << 7
                | (avl as u16) << 8
                | (l as u16) << 9
                | (def as u16) << 10
                | (g as u16) << 11,
        )
    }
    /// Descriptor type (bits 0-3).
    pub const fn typ(self) -> u8 {
        (self.0 & 0xf) as u8
    }
    /// 1 for code/data, 0 for system segments.
    pub const fn s(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// Descriptor privilege level.
    pub const fn dpl(self) -> u8 {
        ((self.0 >> 5) & 3) as u8
    }
    /// Present.
    pub const fn p(self) -> bool {
        self.0 & (1 << 7) != 0
    }
    /// Available for software.
    pub const fn avl(self) -> bool {
        self.0 & (1 << 8) != 0
    }
    /// 64-bit code segment.
    pub const fn l(self) -> bool {
        self.0 & (1 << 9) != 0
    }
    /// Default operation size (D/B): 32-bit when set.
    pub const fn def(self) -> bool {
        self.0 & (1 << 10) != 0
    }
    /// Granularity: limit counted in 4 KiB units in the descriptor.
    pub const fn g(self) -> bool {
        self.0 & (1 << 11) != 0
    }
}

impl std::fmt::Debug for SegAttrib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SegAttrib {{ type: {}, s: {}, dpl: {}, p: {}, avl: {}, l: {}, def: {}, g: {} }}",
            self.typ(),
            self.s() as u8,
            self.dpl(),
            self.p() as u8,
            self.avl() as u8,
            self.l() as u8,
            self.def() as u8,
            self.g() as u8
        )
    }
}

/// One segment register with its hidden part (`struct nvmm_x64_state_seg`).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Segment {
    /// Visible selector.
    pub selector: u16,
    /// Hidden attributes.
    pub attrib: SegAttrib,
    /// Hidden limit, in bytes (already scaled by the granularity).
    pub limit: u32,
    /// Hidden base.
    pub base: u64,
}

/// Interrupt state (`struct nvmm_x64_state_intr`), a 64-bit bitfield.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Intr(pub u64);

impl Intr {
    const SHADOW: u64 = 1 << 0;
    const INT_WINDOW: u64 = 1 << 1;
    const NMI_WINDOW: u64 = 1 << 2;
    const EVT_PENDING: u64 = 1 << 3;

    fn bit(self, b: u64) -> bool {
        self.0 & b != 0
    }
    fn set(&mut self, b: u64, v: bool) {
        if v { self.0 |= b } else { self.0 &= !b }
    }
    /// STI / MOV SS interrupt shadow.
    pub fn int_shadow(self) -> bool {
        self.bit(Self::SHADOW)
    }
    /// Sets the interrupt shadow.
    pub fn set_int_shadow(&mut self, v: bool) {
        self.set(Self::SHADOW, v)
    }
    /// An `IntReady` exit is requested when the guest can take an interrupt.
    pub fn int_window_exiting(self) -> bool {
        self.bit(Self::INT_WINDOW)
    }
    /// Arms or disarms the interrupt window exit.
    pub fn set_int_window_exiting(&mut self, v: bool) {
        self.set(Self::INT_WINDOW, v)
    }
    /// An `NmiReady` exit is requested when the guest can take an NMI.
    pub fn nmi_window_exiting(self) -> bool {
        self.bit(Self::NMI_WINDOW)
    }
    /// Arms or disarms the NMI window exit.
    pub fn set_nmi_window_exiting(&mut self, v: bool) {
        self.set(Self::NMI_WINDOW, v)
    }
    /// (Read only) an injected event has not been delivered yet.
    pub fn evt_pending(self) -> bool {
        self.bit(Self::EVT_PENDING)
    }
    /// Sets the pending-event bit (the library does this on get).
    pub fn set_evt_pending(&mut self, v: bool) {
        self.set(Self::EVT_PENDING, v)
    }
}

impl std::fmt::Debug for Intr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intr")
            .field("int_shadow", &self.int_shadow())
            .field("int_window_exiting", &self.int_window_exiting())
            .field("nmi_window_exiting", &self.nmi_window_exiting())
            .field("evt_pending", &self.evt_pending())
            .finish()
    }
}

/// The 512-byte FXSAVE image (`struct fxsave`): x87, MMX and SSE state.
#[repr(C, align(16))]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fxsave {
    /// x87 control word.
    pub fx_cw: u16,
    /// x87 status word.
    pub fx_sw: u16,
    /// Abridged x87 tag word (one bit per register, 1 = valid).
    pub fx_tw: u8,
    /// Reserved (NVMM's reset state puts 0x55 here).
    pub fx_zero: u8,
    /// Last x87 opcode.
    pub fx_opcode: u16,
    /// Last x87 instruction pointer.
    pub fx_ip: u64,
    /// Last x87 data pointer.
    pub fx_dp: u64,
    /// MXCSR.
    pub fx_mxcsr: u32,
    /// MXCSR mask (read only: the host's).
    pub fx_mxcsr_mask: u32,
    /// ST0-ST7 / MM0-MM7, 10 significant bytes each.
    pub fx_87_ac: [[u8; 16]; 8],
    /// XMM0-XMM15.
    pub fx_xmm: [[u8; 16]; 16],
    /// Reserved / available bytes.
    pub fx_rsvd: [u8; 96],
}

impl Default for Fxsave {
    fn default() -> Fxsave {
        Fxsave {
            fx_cw: 0,
            fx_sw: 0,
            fx_tw: 0,
            fx_zero: 0,
            fx_opcode: 0,
            fx_ip: 0,
            fx_dp: 0,
            fx_mxcsr: 0,
            fx_mxcsr_mask: 0,
            fx_87_ac: [[0; 16]; 8],
            fx_xmm: [[0; 16]; 16],
            fx_rsvd: [0; 96],
        }
    }
}

impl Fxsave {
    /// The image as bytes, in FXSAVE layout.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..2].copy_from_slice(&self.fx_cw.to_le_bytes());
        b[2..4].copy_from_slice(&self.fx_sw.to_le_bytes());
        b[4] = self.fx_tw;
        b[5] = self.fx_zero;
        b[6..8].copy_from_slice(&self.fx_opcode.to_le_bytes());
        b[8..16].copy_from_slice(&self.fx_ip.to_le_bytes());
        b[16..24].copy_from_slice(&self.fx_dp.to_le_bytes());
        b[24..28].copy_from_slice(&self.fx_mxcsr.to_le_bytes());
        b[28..32].copy_from_slice(&self.fx_mxcsr_mask.to_le_bytes());
        for (i, r) in self.fx_87_ac.iter().enumerate() {
            b[32 + 16 * i..48 + 16 * i].copy_from_slice(r);
        }
        for (i, r) in self.fx_xmm.iter().enumerate() {
            b[160 + 16 * i..176 + 16 * i].copy_from_slice(r);
        }
        b[416..512].copy_from_slice(&self.fx_rsvd);
        b
    }

    /// Parses an FXSAVE image.
    pub fn from_bytes(b: &[u8; 512]) -> Fxsave {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let mut f = Fxsave {
            fx_cw: u16_at(0),
            fx_sw: u16_at(2),
            fx_tw: b[4],
            fx_zero: b[5],
            fx_opcode: u16_at(6),
            fx_ip: u64_at(8),
            fx_dp: u64_at(16),
            fx_mxcsr: u32_at(24),
            fx_mxcsr_mask: u32_at(28),
            ..Fxsave::default()
        };
        for (i, r) in f.fx_87_ac.iter_mut().enumerate() {
            r.copy_from_slice(&b[32 + 16 * i..48 + 16 * i]);
        }
        for (i, r) in f.fx_xmm.iter_mut().enumerate() {
            r.copy_from_slice(&b[160 + 16 * i..176 + 16 * i]);
        }
        f.fx_rsvd.copy_from_slice(&b[416..512]);
        f
    }
}

/// The whole VCPU state (`struct nvmm_x64_state`).
#[repr(C, align(16))]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct State {
    /// Segment registers ([`StateMask::SEGS`]).
    pub segs: Segs,
    /// General-purpose registers, RIP, RFLAGS ([`StateMask::GPRS`]).
    pub gprs: Gprs,
    /// Control registers and XCR0 ([`StateMask::CRS`]).
    pub crs: Crs,
    /// Debug registers ([`StateMask::DRS`]).
    pub drs: Drs,
    /// MSRs ([`StateMask::MSRS`]).
    pub msrs: Msrs,
    /// Interrupt state ([`StateMask::INTR`]).
    pub intr: Intr,
    /// Legacy FPU/SSE area ([`StateMask::FPU`]; the rest is in `Xsave`).
    pub fpu: Fxsave,
}

/// Size of [`State`] (`nvmm_capability::state_size`).
pub const STATE_SIZE: usize = std::mem::size_of::<State>();

const _: () = assert!(std::mem::size_of::<Segment>() == 16);
const _: () = assert!(std::mem::size_of::<Fxsave>() == 512);
const _: () = assert!(std::mem::size_of::<State>() == 1008);
const _: () = assert!(std::mem::align_of::<State>() == 16);
const _: () = assert!(std::mem::offset_of!(State, gprs) == 160);
const _: () = assert!(std::mem::offset_of!(State, crs) == 304);
const _: () = assert!(std::mem::offset_of!(State, drs) == 352);
const _: () = assert!(std::mem::offset_of!(State, msrs) == 400);
const _: () = assert!(std::mem::offset_of!(State, intr) == 488);
const _: () = assert!(std::mem::offset_of!(State, fpu) == 496);
const _: () = assert!(std::mem::offset_of!(Fxsave, fx_mxcsr) == 24);
const _: () = assert!(std::mem::offset_of!(Fxsave, fx_87_ac) == 32);
const _: () = assert!(std::mem::offset_of!(Fxsave, fx_xmm) == 160);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(StateMask::from_bits(0x80), None);
        assert_eq!(StateMask::from_bits(0x7f), Some(StateMask::ALL));
        assert!((StateMask::GPRS | StateMask::SEGS).contains(StateMask::SEGS));
        assert_eq!(!StateMask::FPU, StateMask::from_bits(0x3f).unwrap());
        assert_eq!(format!("{:?}", StateMask::GPRS | StateMask::FPU), "StateMask(GPRS|FPU)");
    }

    #[test]
    fn attrib_bitfield_matches_c() {
        let a = SegAttrib::new(0xb, true, 3, true, false, true, false, true);
        assert_eq!(a.0, 0xb | 1 << 4 | 3 << 5 | 1 << 7 | 1 << 9 | 1 << 11);
        assert_eq!(
            (a.typ(), a.s(), a.dpl(), a.p(), a.avl(), a.l(), a.def(), a.g()),
            (0xb, true, 3, true, false, true, false, true)
        );
    }

    #[test]
    fn fxsave_bytes_round_trip() {
        let mut f = Fxsave { fx_cw: 0x37f, fx_mxcsr: 0x1f80, fx_tw: 0x81, ..Default::default() };
        f.fx_xmm[15] = [7; 16];
        f.fx_87_ac[3][9] = 0x40;
        let b = f.to_bytes();
        assert_eq!(&b[0..2], &[0x7f, 0x03]);
        assert_eq!(b[160 + 15 * 16], 7);
        assert_eq!(Fxsave::from_bytes(&b), f);
    }

    #[test]
    fn indexes() {
        let mut s = State::default();
        s.gprs[Gpr::Rip] = 5;
        s.segs[Seg::Cs].selector = 0xf000;
        s.crs[Cr::Xcr0] = 1;
        s.msrs[Msr::Pat] = 7;
        assert_eq!(s.gprs.0[16], 5);
        assert_eq!(s.segs.0[1].selector, 0xf000);
        assert_eq!(s.crs.0[5], 1);
        assert_eq!(s.msrs.0[9], 7);
        let mut i = Intr::default();
        i.set_nmi_window_exiting(true);
        assert_eq!(i.0, 4);
    }
}
