//! The CPUID a guest sees: NVMM's default filtering of the host's CPUID
//! (spec §4.7) applied to what KVM supports, then the VMM's per-leaf masks
//! (`NVMM_VCPU_CONF_CPUID`).
//!
//! One deliberate extension over NVMM: NVMM only hands x87/SSE state to
//! userland, so it hides AVX-512. This library round-trips the whole XSAVE
//! area, so AVX-512 (and its XCR0 bits) stay visible when the host has them.

use crate::error::{Error, Result};
use crate::x86::xsave::xfeature;

/// The four output registers of CPUID.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub struct CpuidRegs {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

impl CpuidRegs {
    fn overlaps(&self, o: &CpuidRegs) -> bool {
        self.eax & o.eax != 0 || self.ebx & o.ebx != 0 || self.ecx & o.ecx != 0 || self.edx & o.edx != 0
    }
    fn apply(&mut self, set: &CpuidRegs, del: &CpuidRegs) {
        self.eax = (self.eax & !del.eax) | set.eax;
        self.ebx = (self.ebx & !del.ebx) | set.ebx;
        self.ecx = (self.ecx & !del.ecx) | set.ecx;
        self.edx = (self.edx & !del.edx) | set.edx;
    }
}

/// One CPUID table entry (a leaf and subleaf).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CpuidEntry {
    /// Leaf (EAX input).
    pub function: u32,
    /// Subleaf (ECX input), meaningful when `flags` says so.
    pub index: u32,
    /// KVM's entry flags (`KVM_CPUID_FLAG_SIGNIFCANT_INDEX`).
    pub flags: u32,
    /// The output.
    pub regs: CpuidRegs,
}

/// What to do with one leaf (`struct nvmm_vcpu_conf_cpuid`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CpuidAction {
    /// Forget any configuration of the leaf (neither `mask` nor `exit`).
    Default,
    /// Clear the `del` bits then set the `set` bits of the default answer,
    /// for every subleaf of the leaf.
    Mask {
        /// Bits ORed in.
        set: CpuidRegs,
        /// Bits cleared.
        del: CpuidRegs,
    },
    /// Make CPUID of the leaf exit to the VMM. KVM has no such exit:
    /// configuring it fails with `ENOTSUP`.
    Exit,
}

/// Configuration of one CPUID leaf.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CpuidConf {
    /// The leaf (EAX input); the subleaf is not part of the key.
    pub leaf: u32,
    /// What to do with it.
    pub action: CpuidAction,
}

impl CpuidConf {
    /// Builds a configuration from the C struct's fields, with NVMM's checks.
    pub fn from_raw(mask: bool, exit: bool, leaf: u32, set: CpuidRegs, del: CpuidRegs) -> Result<CpuidConf> {
        let action = match (mask, exit) {
            (true, true) => {
                return Err(Error::InvalidConfiguration { why: "a CPUID leaf cannot both be masked and exit" });
            }
            (true, false) => CpuidAction::Mask { set, del },
            (false, true) => CpuidAction::Exit,
            (false, false) => CpuidAction::Default,
        };
        Ok(CpuidConf { leaf, action })
    }
}

/// Number of leaves a VCPU's CPUID configuration holds
/// (`nvmm_capability::arch.conf_cpuid_maxops`).
pub const CPUID_CONF_MAX: u32 = 32;

/// XCR0 bits the library lets a guest enable (if the host has them).
pub const XCR0_SUPPORTED: u64 =
    xfeature::X87 | xfeature::SSE | xfeature::AVX | xfeature::OPMASK | xfeature::ZMM_HI256 | xfeature::HI16_ZMM;

/// A VCPU's CPUID configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuidConfig {
    masks: Vec<(u32, CpuidRegs, CpuidRegs)>,
}

const fn bits(list: &[u32]) -> u32 {
    let mut v = 0;
    let mut i = 0;
    while i < list.len() {
        v |= 1 << list[i];
        i += 1;
    }
    v
}

// Leaf 1.
const L1_ECX: u32 = bits(&[0, 1, 9, 12, 13, 19, 20, 22, 23, 25, 26, 27, 28, 29, 30]);
const L1_ECX_HYPERVISOR: u32 = 1 << 31;
const L1_EDX: u32 = bits(&[0, 1, 2, 3, 4, 5, 6, 8, 9, 11, 13, 15, 16, 17, 19, 23, 24, 25, 26, 27, 28, 31]);
// Leaf 7 subleaf 0; AVX-512 (EBX 16, 17, 21, 26-28, 30, 31; ECX 1, 6, 11,
// 12, 14; EDX 2, 3, 8, 23) and LA57 (ECX 16) are our extension.
const L7_EBX: u32 = bits(&[0, 3, 5, 6, 7, 8, 9, 13, 16, 17, 18, 19, 20, 21, 23, 24, 26, 27, 28, 30, 31]);
const L7_ECX: u32 = bits(&[0, 1, 2, 6, 8, 9, 10, 11, 12, 14, 16, 25, 27, 28]);
const L7_EDX: u32 = bits(&[2, 3, 4, 8, 10, 14, 23]);
// Leaf 0xD subleaf 1: XSAVEOPT, XSAVEC, XGETBV1.
const LD1_EAX: u32 = bits(&[0, 1, 2]);
// Extended leaves.
const E1_ECX: u32 = bits(&[0, 1, 4, 5, 6, 7, 8, 11, 16, 17, 21, 22]);
const E1_EDX: u32 = bits(&[0, 1, 2, 3, 4, 5, 6, 8, 9, 11, 13, 15, 16, 17, 20, 22, 23, 24, 25, 26, 29, 30, 31]);
const E7_EDX: u32 = bits(&[8]);
const E8_EBX: u32 = bits(&[0, 2, 9]);

const MAX_BASIC: u32 = 0xd;
const MAX_EXTENDED: u32 = 0x8000_001f;
const HYPERVISOR_LEAF: u32 = 0x4000_0000;

/// `"___ NVMM ___"`, in EBX, ECX, EDX order.
const SIGNATURE: [u32; 3] = [u32::from_le_bytes(*b"___ "), u32::from_le_bytes(*b"NVMM"), u32::from_le_bytes(*b" ___")];

impl CpuidConfig {
    /// Applies one configuration request with NVMM's rules.
    pub fn configure(&mut self, conf: &CpuidConf) -> Result<()> {
        match conf.action {
            CpuidAction::Exit => {
                Err(Error::Unsupported { what: "CPUID exits (KVM answers CPUID in the kernel); use a mask instead" })
            }
            CpuidAction::Default => {
                self.masks.retain(|(leaf, _, _)| *leaf != conf.leaf);
                Ok(())
            }
            CpuidAction::Mask { set, del } => {
                if set.overlaps(&del) {
                    return Err(Error::InvalidConfiguration { why: "CPUID set and del masks share bits" });
                }
                if let Some(e) = self.masks.iter_mut().find(|(leaf, _, _)| *leaf == conf.leaf) {
                    *e = (conf.leaf, set, del);
                } else if self.masks.len() >= CPUID_CONF_MAX as usize {
                    return Err(Error::CpuidTableFull { max: CPUID_CONF_MAX });
                } else {
                    self.masks.push((conf.leaf, set, del));
                }
                Ok(())
            }
        }
    }

    /// Number of configured leaves.
    pub fn len(&self) -> usize {
        self.masks.len()
    }

    /// Whether no leaf is configured.
    pub fn is_empty(&self) -> bool {
        self.masks.is_empty()
    }

    /// The table the guest sees, from what KVM supports.
    pub fn build(&self, supported: &[CpuidEntry], vcpu_id: u32, nvcpus: u32) -> Vec<CpuidEntry> {
        let mut out = default_table(supported, vcpu_id, nvcpus);
        for (leaf, set, del) in &self.masks {
            let mut found = false;
            for e in out.iter_mut().filter(|e| e.function == *leaf) {
                e.regs.apply(set, del);
                found = true;
            }
            if !found {
                let mut regs = CpuidRegs::default();
                regs.apply(set, del);
                out.push(CpuidEntry { function: *leaf, index: 0, flags: 0, regs });
            }
        }
        out
    }
}

/// XCR0 bits a guest may enable on this host.
pub fn xcr0_mask(supported: &[CpuidEntry]) -> u64 {
    supported.iter().find(|e| e.function == 0xd && e.index == 0).map_or(xfeature::X87 | xfeature::SSE, |e| {
        (u64::from(e.regs.edx) << 32 | u64::from(e.regs.eax)) & XCR0_SUPPORTED
    })
}

/// Guest physical address width (CPUID 0x80000008 EAX\[7:0\]), 36 if absent.
pub fn phys_addr_bits(supported: &[CpuidEntry]) -> u32 {
    supported.iter().find(|e| e.function == 0x8000_0008).map_or(36, |e| e.regs.eax & 0xff)
}

/// Whether `table` offers 1 GiB pages (CPUID 0x80000001 EDX\[26\]).
pub fn one_gib_pages(table: &[CpuidEntry]) -> bool {
    table.iter().any(|e| e.function == 0x8000_0001 && e.regs.edx & (1 << 26) != 0)
}

/// NVMM's default filtering of the supported table.
fn default_table(supported: &[CpuidEntry], vcpu_id: u32, nvcpus: u32) -> Vec<CpuidEntry> {
    let host_basic = supported.iter().find(|e| e.function == 0).map_or(0, |e| e.regs.eax);
    let host_ext = supported.iter().find(|e| e.function == 0x8000_0000).map_or(0, |e| e.regs.eax);
    let max_basic = host_basic.min(MAX_BASIC);
    let max_ext = host_ext.min(MAX_EXTENDED);
    let xcr0 = xcr0_mask(supported);
    let nvcpus = nvcpus.clamp(1, 255);

    let mut out = Vec::with_capacity(supported.len());
    for e in supported {
        let mut e = *e;
        let r = &mut e.regs;
        let keep = match e.function {
            0 => {
                r.eax = max_basic;
                true
            }
            1 => {
                r.ebx = (r.ebx & 0xffff) | (nvcpus << 16) | ((vcpu_id & 0xff) << 24);
                r.ecx = (r.ecx & L1_ECX) | L1_ECX_HYPERVISOR;
                r.edx &= L1_EDX;
                true
            }
            2..=6 | 8..=0xc => false,
            7 => {
                if e.index == 0 {
                    r.eax = 0;
                    r.ebx &= L7_EBX;
                    r.ecx &= L7_ECX;
                    r.edx &= L7_EDX;
                }
                e.index == 0
            }
            0xd => match e.index {
                0 => {
                    r.eax = xcr0 as u32;
                    r.edx = (xcr0 >> 32) as u32;
                    true
                }
                1 => {
                    r.eax &= LD1_EAX;
                    r.ecx = 0;
                    r.edx = 0;
                    true
                }
                i => i < 64 && xcr0 & (1 << i) != 0,
            },
            0x8000_0000 => {
                r.eax = max_ext;
                true
            }
            0x8000_0001 => {
                r.ecx &= E1_ECX;
                r.edx &= E1_EDX;
                true
            }
            0x8000_0007 => {
                *r = CpuidRegs { edx: r.edx & E7_EDX, ..CpuidRegs::default() };
                true
            }
            0x8000_0008 => {
                r.ebx &= E8_EBX;
                r.ecx = (nvcpus - 1) | (8 << 12);
                r.edx = 0;
                true
            }
            0x8000_0009..=0x8000_0018 | 0x8000_001b | 0x8000_001c | 0x8000_001f => false,
            f if f <= max_basic => true,
            f if (0x8000_0000..=max_ext).contains(&f) => true,
            _ => false,
        };
        if keep {
            out.push(e);
        }
    }
    out.push(CpuidEntry {
        function: HYPERVISOR_LEAF,
        index: 0,
        flags: 0,
        regs: CpuidRegs { eax: HYPERVISOR_LEAF, ebx: SIGNATURE[0], ecx: SIGNATURE[1], edx: SIGNATURE[2] },
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidEntry {
        CpuidEntry { function, index, flags: 0, regs: CpuidRegs { eax, ebx, ecx, edx } }
    }

    fn host() -> Vec<CpuidEntry> {
        vec![
            entry(0, 0, 0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65),
            entry(1, 0, 0x00a0_0f11, 0x0810_0800, 0xfffa_3203, 0x178b_fbff),
            entry(4, 0, 1, 2, 3, 4),
            entry(7, 0, 1, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff),
            entry(7, 1, 1, 1, 1, 1),
            entry(0xd, 0, 0xe7, 0x340, 0x988, 0),
            entry(0xd, 1, 0xf, 0x340, 0x1800, 0),
            entry(0xd, 2, 0x100, 0x240, 0, 0),
            entry(0xd, 11, 0x10, 0, 1, 0),
            entry(0x10, 0, 1, 1, 1, 1),
            entry(0x4000_0000, 0, 0x4000_0001, 1, 2, 3),
            entry(0x4000_0001, 0, 0xffff, 0, 0, 0),
            entry(0x8000_0000, 0, 0x8000_0021, 0, 0, 0),
            entry(0x8000_0001, 0, 0, 0, 0xffff_ffff, 0xffff_ffff),
            entry(0x8000_0008, 0, 0x3030, 0xffff_ffff, 0xffff, 0xffff),
            entry(0x8000_000a, 0, 1, 1, 1, 1),
            entry(0x8000_0021, 0, 1, 1, 1, 1),
        ]
    }

    fn find(t: &[CpuidEntry], f: u32, i: u32) -> Option<CpuidRegs> {
        t.iter().find(|e| e.function == f && e.index == i).map(|e| e.regs)
    }

    #[test]
    fn default_filtering() {
        let t = CpuidConfig::default().build(&host(), 3, 4);
        assert_eq!(find(&t, 0, 0).unwrap().eax, 0xd);
        let l1 = find(&t, 1, 0).unwrap();
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
        assert_eq!(l1.ecx & (1 << 5), 0, "VMX hidden");
        assert_eq!(l1.edx & (1 << 12), 0, "MTRR hidden");
        assert!(find(&t, 4, 0).is_none());
        assert!(find(&t, 7, 1).is_none());
        assert_eq!(find(&t, 7, 0).unwrap().eax, 0);
        assert_eq!(find(&t, 7, 0).unwrap().ebx, L7_EBX);
        let d0 = find(&t, 0xd, 0).unwrap();
        assert_eq!(u64::from(d0.eax), 0xe7 & XCR0_SUPPORTED);
        assert!(find(&t, 0xd, 2).is_some());
        assert!(find(&t, 0xd, 11).is_none());
        assert!(find(&t, 0x10, 0).is_none(), "basic leaves above 0xd dropped");
        let hv = find(&t, 0x4000_0000, 0).unwrap();
        assert_eq!((hv.ebx, hv.ecx, hv.edx), (SIGNATURE[0], SIGNATURE[1], SIGNATURE[2]));
        assert!(find(&t, 0x4000_0001, 0).is_none());
        assert_eq!(find(&t, 0x8000_0000, 0).unwrap().eax, 0x8000_001f);
        assert!(find(&t, 0x8000_000a, 0).is_none());
        assert!(find(&t, 0x8000_0021, 0).is_none());
        let e8 = find(&t, 0x8000_0008, 0).unwrap();
        assert_eq!(e8.ecx, 3 | 8 << 12);
        assert_eq!(e8.eax, 0x3030);
    }

    #[test]
    fn masks_and_rules() {
        let mut c = CpuidConfig::default();
        let set = CpuidRegs { edx: 1 << 12, ..Default::default() };
        let del = CpuidRegs { ecx: 1 << 28, ..Default::default() };
        c.configure(&CpuidConf { leaf: 1, action: CpuidAction::Mask { set, del } }).unwrap();
        let t = c.build(&host(), 0, 1);
        let l1 = find(&t, 1, 0).unwrap();
        assert_ne!(l1.edx & (1 << 12), 0);
        assert_eq!(l1.ecx & (1 << 28), 0);

        let bad = CpuidConf { leaf: 1, action: CpuidAction::Mask { set, del: set } };
        assert_eq!(c.configure(&bad).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(CpuidConf::from_raw(true, true, 1, set, del).unwrap_err().errno(), libc::EINVAL);
        let exit = CpuidConf { leaf: 1, action: CpuidAction::Exit };
        assert_eq!(c.configure(&exit).unwrap_err().errno(), libc::ENOTSUP);

        for leaf in 100..100 + CPUID_CONF_MAX - 1 {
            c.configure(&CpuidConf { leaf, action: CpuidAction::Mask { set, del } }).unwrap();
        }
        let full = CpuidConf { leaf: 5000, action: CpuidAction::Mask { set, del } };
        assert_eq!(c.configure(&full).unwrap_err().errno(), libc::ENOBUFS);
        // Replacing an existing leaf still works when full.
        c.configure(&CpuidConf { leaf: 1, action: CpuidAction::Mask { set, del } }).unwrap();
        c.configure(&CpuidConf { leaf: 1, action: CpuidAction::Default }).unwrap();
        assert_eq!(c.len(), CPUID_CONF_MAX as usize - 1);
        // A masked leaf that the default table does not have gets an entry.
        let t = c.build(&host(), 0, 1);
        assert_eq!(find(&t, 100, 0).unwrap().edx, 1 << 12);
    }
}
