//! The CPUID filter against NetBSD's own masks, copied from NetBSD's source
//! rather than from the library: `sys/dev/nvmm/x86/nvmm_x86.c` r1.25
//! (`nvmm_cpuid_00000001` ... `nvmm_cpuid_80000008`) and the backends'
//! in-kernel rules (`nvmm_x86_svm.c` r1.89.2.1, `nvmm_x86_vmx.c`
//! r1.90.2.2: the forced hypervisor bit, APIC id, leaf 7 EAX = 0, leaf 0xD
//! subleaf 1, the `"___ NVMM ___"` leaf). Every place the library differs
//! from NetBSD is listed in [`Extension`] with its reason and checked bit
//! for bit; nothing else may differ.
//!
//! Two checks: the table the filter builds from a host that claims every
//! bit (so each mask bit shows), and what a guest's CPUID instruction
//! returns on this host (so the table is what KVM serves).

mod common;

use common::*;
use nvmm::x86::cpuid::{CpuidConfig, CpuidEntry, CpuidRegs};
use nvmm::{Gpr, StateMask};

/// NetBSD's masks, register by register, as hexadecimal copies of the
/// `nvmm_x86.c` r1.25 tables (bit names in the comments).
mod netbsd {
    /// Leaf 1 ECX: SSE3 PCLMULQDQ SSSE3 FMA CX16 SSE41 SSE42 MOVBE POPCNT
    /// AESNI XSAVE OSXSAVE AVX F16C RDRAND.
    pub const L1_ECX: u32 = 0x7ed8_3203;
    /// Leaf 1 ECX bit 31 (CPUID2_RAZ), forced on by both backends.
    pub const L1_ECX_RAZ: u32 = 0x8000_0000;
    /// Leaf 1 EDX: FPU VME DE PSE TSC MSR PAE CX8 APIC SEP PGE CMOV PAT
    /// PSE36 CLFSH MMX FXSR SSE SSE2 SS HTT PBE.
    pub const L1_EDX: u32 = 0x9f8b_ab7f;
    /// Leaf 7.0 EBX: FSGSBASE BMI1 AVX2 FDPEXONLY SMEP BMI2 ERMS FPUCSDS
    /// RDSEED ADX SMAP CLFLUSHOPT CLWB.
    pub const L7_EBX: u32 = 0x019c_23e9;
    /// Leaf 7.0 ECX: PREFETCHWT1 UMIP GFNI VAES VPCLMULQDQ CLDEMOTE MOVDIRI
    /// MOVDIR64B.
    pub const L7_ECX: u32 = 0x1a00_0705;
    /// Leaf 7.0 EDX: FSRM MD_CLEAR SERIALIZE.
    pub const L7_EDX: u32 = 0x0000_4410;
    /// Leaf 0xD.1 EAX: XSAVEOPT XSAVEC XGETBV (the backends).
    pub const LD1_EAX: u32 = 0x7;
    /// Leaf 0x80000001 ECX: LAHF CMPLEGACY ALTMOVCR0 ABM SSE4A MISALIGNSSE
    /// 3DNOWPF XOP FMA4 TCE TBM TOPOEXT.
    pub const E1_ECX: u32 = 0x0063_09f3;
    /// Leaf 0x80000001 EDX: the leaf-1 mirror bits, SYSCALL XD MMXX MMX
    /// FXSR FFXSR PAGE1GB EM64T 3DNOW2 3DNOW.
    pub const E1_EDX: u32 = 0xe7d3_ab7f;
    /// Leaf 0x80000007 EDX: ITSC (EAX, EBX, ECX are 0).
    pub const E7_EDX: u32 = 0x100;
    /// Leaf 0x80000008 EBX: CLZERO XSAVEERPTR WBNOINVD (EDX is 0).
    pub const E8_EBX: u32 = 0x205;
    /// The SVM backend's highest basic leaf (the VMX backend's is 0x16).
    pub const SVM_MAX_BASIC: u32 = 0xd;
    /// The SVM backend's highest extended leaf.
    pub const SVM_MAX_EXTENDED: u32 = 0x8000_001f;
}

/// Where the library deliberately differs from NetBSD, and why.
mod extension {
    const fn bits(list: &[u32]) -> u32 {
        let mut v = 0;
        let mut i = 0;
        while i < list.len() {
            v |= 1 << list[i];
            i += 1;
        }
        v
    }
    /// AVX-512 in leaf 7.0 EBX (F DQ IFMA PF ER CD BW VL): NVMM hands only
    /// x87/SSE state to userland and hides AVX-512; this library carries the
    /// whole XSAVE area, so it keeps AVX-512 where the host has it.
    pub const L7_EBX_AVX512: u32 = bits(&[16, 17, 21, 26, 27, 28, 30, 31]);
    /// AVX-512 in leaf 7.0 ECX (VBMI VBMI2 VNNI BITALG VPOPCNTDQ) and LA57
    /// (bit 16): NetBSD's VMX backend refuses CR4.LA57; KVM runs it.
    pub const L7_ECX_AVX512_LA57: u32 = bits(&[1, 6, 11, 12, 14, 16]);
    /// AVX-512 in leaf 7.0 EDX (4VNNIW 4FMAPS VP2INTERSECT FP16).
    pub const L7_EDX_AVX512: u32 = bits(&[2, 3, 8, 23]);
    // Two more, in values rather than masks, from the reference
    // specification's §4.7 (which follows NVMM's DragonFly port; NetBSD
    // passes both fields through from the host): leaf 1 EBX[23:16] is the
    // machine's VCPU count, and leaf 0x80000008 ECX is
    // (VCPUs - 1) | 8 << 12 (8 APIC id bits). And the ranges and the
    // dropped leaves 2, 4 and 0xB are the SVM backend's on every host (the
    // VMX backend also passes 2, 4, 0x15 and 0x16 through, synthesises 0xB,
    // and re-adds PCID and INVPCID when the host has INVPCID exiting).
}

const ALL: u32 = u32::MAX;

/// A host that claims everything: every leaf up to 0x20 and 0x80000021,
/// every bit set, leaf 0xD with AVX and AVX-512 state.
fn greedy_host() -> Vec<CpuidEntry> {
    let e = |function, index, eax| CpuidEntry {
        function,
        index,
        flags: 0,
        regs: CpuidRegs { eax, ebx: ALL, ecx: ALL, edx: ALL },
    };
    let mut t = vec![e(0, 0, 0x20), e(0x8000_0000, 0, 0x8000_0021)];
    t.extend((1..=0x20).filter(|&f| f != 7 && f != 0xd).map(|f| e(f, 0, ALL)));
    t.extend((0..4).map(|i| e(7, i, ALL)));
    t.push(e(0xd, 0, 0xe7)); // x87 SSE AVX OPMASK ZMM_Hi256 Hi16_ZMM
    t.push(e(0xd, 1, ALL));
    t.extend((2..=9).map(|i| e(0xd, i, ALL)));
    t.extend((0x8000_0001..=0x8000_0021).map(|f| e(f, 0, ALL)));
    t
}

fn find(t: &[CpuidEntry], function: u32, index: u32) -> Option<CpuidRegs> {
    t.iter().find(|e| e.function == function && e.index == index).map(|e| e.regs)
}

#[test]
fn every_mask_bit_is_netbsds_or_a_listed_extension() {
    let (vcpu, nvcpus) = (3, 4);
    let t = CpuidConfig::default().build(&greedy_host(), vcpu, nvcpus);
    let get = |f, i| find(&t, f, i).unwrap_or_else(|| panic!("leaf {f:#x}.{i} missing"));

    let l0 = get(0, 0);
    assert_eq!(l0.eax, netbsd::SVM_MAX_BASIC, "leaf 0: highest basic leaf");
    let l1 = get(1, 0);
    assert_eq!(l1.ecx, netbsd::L1_ECX | netbsd::L1_ECX_RAZ, "leaf 1 ECX");
    assert_eq!(l1.edx, netbsd::L1_EDX, "leaf 1 EDX");
    assert_eq!(l1.ebx >> 24, vcpu, "leaf 1 EBX[31:24]: the VCPU's APIC id, as NetBSD");
    assert_eq!((l1.ebx >> 16) & 0xff, nvcpus, "leaf 1 EBX[23:16]: the VCPU count (spec §4.7)");
    assert_eq!(l1.ebx & 0xffff, 0xffff, "leaf 1 EBX[15:0]: the host's, as NetBSD");
    let l7 = get(7, 0);
    assert_eq!(l7.eax, 0, "leaf 7.0 EAX: no subleaves, as NetBSD");
    assert_eq!(l7.ebx, netbsd::L7_EBX | extension::L7_EBX_AVX512, "leaf 7.0 EBX");
    assert_eq!(l7.ecx, netbsd::L7_ECX | extension::L7_ECX_AVX512_LA57, "leaf 7.0 ECX");
    assert_eq!(l7.edx, netbsd::L7_EDX | extension::L7_EDX_AVX512, "leaf 7.0 EDX");
    for i in 1..4 {
        assert_eq!(find(&t, 7, i), None, "leaf 7.{i}: zero (dropped), as NetBSD");
    }
    let d1 = get(0xd, 1);
    assert_eq!((d1.eax, d1.ecx, d1.edx), (netbsd::LD1_EAX, 0, 0), "leaf 0xD.1");
    let d0 = get(0xd, 0);
    assert_eq!((d0.eax, d0.edx), (0xe7, 0), "leaf 0xD.0: XCR0 as the library carries it (AVX, AVX-512)");
    for i in [2, 5, 6, 7] {
        assert!(find(&t, 0xd, i).is_some(), "leaf 0xD.{i}: the state component's size and offset");
    }
    for i in [3, 4, 8, 9] {
        assert_eq!(find(&t, 0xd, i), None, "leaf 0xD.{i}: a component the guest may not enable");
    }
    for f in [2, 3, 4, 5, 6, 8, 9, 0xa, 0xb, 0xc] {
        assert_eq!(find(&t, f, 0), None, "leaf {f:#x}: zero (dropped), as NetBSD's SVM backend");
    }
    for f in 0xe..=0x20 {
        assert_eq!(find(&t, f, 0), None, "leaf {f:#x}: above the highest basic leaf");
    }
    let e0 = get(0x8000_0000, 0);
    assert_eq!(e0.eax, netbsd::SVM_MAX_EXTENDED, "leaf 0x80000000: highest extended leaf");
    let e1 = get(0x8000_0001, 0);
    assert_eq!((e1.eax, e1.ebx), (ALL, ALL), "leaf 0x80000001 EAX, EBX: the host's, as NetBSD");
    assert_eq!(e1.ecx, netbsd::E1_ECX, "leaf 0x80000001 ECX");
    assert_eq!(e1.edx, netbsd::E1_EDX, "leaf 0x80000001 EDX");
    for f in 0x8000_0002..=0x8000_0006 {
        assert_eq!(get(f, 0), CpuidRegs { eax: ALL, ebx: ALL, ecx: ALL, edx: ALL }, "leaf {f:#x}: the host's");
    }
    assert_eq!(get(0x8000_0007, 0), CpuidRegs { eax: 0, ebx: 0, ecx: 0, edx: netbsd::E7_EDX }, "leaf 0x80000007");
    let e8 = get(0x8000_0008, 0);
    assert_eq!(e8.eax, ALL, "leaf 0x80000008 EAX: the host's address sizes, as NetBSD");
    assert_eq!(e8.ebx, netbsd::E8_EBX, "leaf 0x80000008 EBX");
    assert_eq!(e8.ecx, (nvcpus - 1) | 8 << 12, "leaf 0x80000008 ECX: VCPU count and APIC id size (spec §4.7)");
    assert_eq!(e8.edx, 0, "leaf 0x80000008 EDX");
    for f in (0x8000_0009..=0x8000_0018).chain([0x8000_001b, 0x8000_001c, 0x8000_001f]) {
        assert_eq!(find(&t, f, 0), None, "leaf {f:#x}: zero (dropped), as NetBSD's SVM backend");
    }
    for f in [0x8000_0019, 0x8000_001a, 0x8000_001d, 0x8000_001e] {
        assert!(find(&t, f, 0).is_some(), "leaf {f:#x}: the host's, as NetBSD's SVM backend");
    }
    for f in 0x8000_0020..=0x8000_0021 {
        assert_eq!(find(&t, f, 0), None, "leaf {f:#x}: above the highest extended leaf");
    }
    let hv = get(0x4000_0000, 0);
    let sig: Vec<u8> = [hv.ebx, hv.ecx, hv.edx].iter().flat_map(|r| r.to_le_bytes()).collect();
    assert_eq!((hv.eax, &sig[..]), (0x4000_0000, &b"___ NVMM ___"[..]), "leaf 0x40000000");
}

/// Runs CPUID in the guest with `leaf` and `subleaf`.
fn guest_cpuid(g: &mut Guest, leaf: u32, subleaf: u32) -> [u32; 4] {
    g.vcpu
        .update(StateMask::GPRS, |s| {
            s.gprs[Gpr::Rip] = CODE;
            s.gprs[Gpr::Rax] = u64::from(leaf);
            s.gprs[Gpr::Rcx] = u64::from(subleaf);
        })
        .unwrap();
    run_to_halt(&mut g.vcpu);
    g.vcpu.get_state(StateMask::GPRS).unwrap();
    let r = &g.vcpu.state().gprs;
    [r[Gpr::Rax] as u32, r[Gpr::Rbx] as u32, r[Gpr::Rcx] as u32, r[Gpr::Rdx] as u32]
}

/// Needs a host whose KVM answers a guest's CPUID from the VCPU's table;
/// some nested hosts answer leaf 1 and leaf 7 from their own (a bare-KVM
/// probe tells), and there the table test above is the oracle.
#[test]
fn what_the_guest_sees_is_within_netbsds_masks_where_the_host_honours_cpuid() {
    nvmm_testkit::kvm_or_skip!();
    if !nvmm_testkit::host::honours_cpuid_table().expect("raw KVM probe") {
        eprintln!(
            "this host's KVM does not answer guest CPUID from the VCPU's table (bare-KVM probe); the table test is the oracle"
        );
        return;
    }
    let mut g = long_mode(&[0x0f, 0xa2, 0xf4]); // cpuid; hlt
    let within = |what: &str, v: u32, mask: u32| {
        assert_eq!(v & !mask, 0, "{what}: bits {:#x} are neither NetBSD's nor a listed extension", v & !mask);
    };
    let [max_basic, ..] = guest_cpuid(&mut g, 0, 0);
    assert!(max_basic <= netbsd::SVM_MAX_BASIC, "leaf 0 EAX {max_basic:#x}");
    let [_, ebx, ecx, edx] = guest_cpuid(&mut g, 1, 0);
    within("leaf 1 ECX", ecx, netbsd::L1_ECX | netbsd::L1_ECX_RAZ);
    assert_ne!(ecx & netbsd::L1_ECX_RAZ, 0, "leaf 1 ECX: the hypervisor bit");
    within("leaf 1 EDX", edx, netbsd::L1_EDX);
    assert_eq!(ebx >> 24, 0, "leaf 1 EBX: APIC id of VCPU 0");
    assert_eq!((ebx >> 16) & 0xff, 1, "leaf 1 EBX: one VCPU");
    let [eax, ebx, ecx, edx] = guest_cpuid(&mut g, 7, 0);
    assert_eq!(eax, 0, "leaf 7.0 EAX");
    within("leaf 7.0 EBX", ebx, netbsd::L7_EBX | extension::L7_EBX_AVX512);
    within("leaf 7.0 ECX", ecx, netbsd::L7_ECX | extension::L7_ECX_AVX512_LA57);
    within("leaf 7.0 EDX", edx, netbsd::L7_EDX | extension::L7_EDX_AVX512);
    assert_eq!(guest_cpuid(&mut g, 7, 1), [0; 4], "leaf 7.1");
    let [eax, _, ecx, edx] = guest_cpuid(&mut g, 0xd, 1);
    within("leaf 0xD.1 EAX", eax, netbsd::LD1_EAX);
    assert_eq!((ecx, edx), (0, 0), "leaf 0xD.1 ECX, EDX");
    for leaf in [2, 3, 4, 5, 6, 8, 9, 0xa, 0xb, 0xc] {
        assert_eq!(guest_cpuid(&mut g, leaf, 0), [0; 4], "leaf {leaf:#x}");
    }
    let [_, _, ecx, edx] = guest_cpuid(&mut g, 0x8000_0001, 0);
    within("leaf 0x80000001 ECX", ecx, netbsd::E1_ECX);
    within("leaf 0x80000001 EDX", edx, netbsd::E1_EDX);
    let [eax, ebx, ecx, edx] = guest_cpuid(&mut g, 0x8000_0007, 0);
    assert_eq!((eax, ebx, ecx), (0, 0, 0), "leaf 0x80000007");
    within("leaf 0x80000007 EDX", edx, netbsd::E7_EDX);
    let [_, ebx, ecx, edx] = guest_cpuid(&mut g, 0x8000_0008, 0);
    within("leaf 0x80000008 EBX", ebx, netbsd::E8_EBX);
    assert_eq!((ecx, edx), (8 << 12, 0), "leaf 0x80000008 ECX, EDX");
    let [eax, ebx, ecx, edx] = guest_cpuid(&mut g, 0x4000_0000, 0);
    let sig: Vec<u8> = [ebx, ecx, edx].iter().flat_map(|r| r.to_le_bytes()).collect();
    assert_eq!((eax, &sig[..]), (0x4000_0000, &b"___ NVMM ___"[..]), "leaf 0x40000000");
}
