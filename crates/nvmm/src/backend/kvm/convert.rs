//! Conversions between NVMM's state layout and KVM's structures.

use kvm_bindings::{
    KVM_X86_SHADOW_INT_MOV_SS, KVM_X86_SHADOW_INT_STI, kvm_cpuid_entry2, kvm_debugregs, kvm_dtable, kvm_regs,
    kvm_segment, kvm_sregs, kvm_vcpu_events,
};

use crate::backend::EventStatus;
use crate::x86::cpuid::{CpuidEntry, CpuidRegs};
use crate::x86::event::{Event, EventKind};
use crate::x86::state::{Cr, Crs, Dr, Drs, Gpr, Gprs, Intr, Seg, SegAttrib, Segment, Segs};

pub(crate) fn cpuid_from_kvm(e: &kvm_cpuid_entry2) -> CpuidEntry {
    CpuidEntry {
        function: e.function,
        index: e.index,
        flags: e.flags,
        regs: CpuidRegs { eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx },
    }
}

pub(crate) fn cpuid_to_kvm(e: &CpuidEntry) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function: e.function,
        index: e.index,
        flags: e.flags,
        eax: e.regs.eax,
        ebx: e.regs.ebx,
        ecx: e.regs.ecx,
        edx: e.regs.edx,
        ..Default::default()
    }
}

pub(crate) fn gprs_from_kvm(r: &kvm_regs, g: &mut Gprs) {
    g[Gpr::Rax] = r.rax;
    g[Gpr::Rcx] = r.rcx;
    g[Gpr::Rdx] = r.rdx;
    g[Gpr::Rbx] = r.rbx;
    g[Gpr::Rsp] = r.rsp;
    g[Gpr::Rbp] = r.rbp;
    g[Gpr::Rsi] = r.rsi;
    g[Gpr::Rdi] = r.rdi;
    g[Gpr::R8] = r.r8;
    g[Gpr::R9] = r.r9;
    g[Gpr::R10] = r.r10;
    g[Gpr::R11] = r.r11;
    g[Gpr::R12] = r.r12;
    g[Gpr::R13] = r.r13;
    g[Gpr::R14] = r.r14;
    g[Gpr::R15] = r.r15;
    g[Gpr::Rip] = r.rip;
    g[Gpr::Rflags] = r.rflags;
}

pub(crate) fn gprs_to_kvm(g: &Gprs) -> kvm_regs {
    kvm_regs {
        rax: g[Gpr::Rax],
        rbx: g[Gpr::Rbx],
        rcx: g[Gpr::Rcx],
        rdx: g[Gpr::Rdx],
        rsi: g[Gpr::Rsi],
        rdi: g[Gpr::Rdi],
        rsp: g[Gpr::Rsp],
        rbp: g[Gpr::Rbp],
        r8: g[Gpr::R8],
        r9: g[Gpr::R9],
        r10: g[Gpr::R10],
        r11: g[Gpr::R11],
        r12: g[Gpr::R12],
        r13: g[Gpr::R13],
        r14: g[Gpr::R14],
        r15: g[Gpr::R15],
        rip: g[Gpr::Rip],
        // Bit 1 of RFLAGS is reserved as 1; KVM refuses entry without it.
        rflags: g[Gpr::Rflags] | 0x2,
    }
}

pub(crate) fn seg_from_kvm(k: &kvm_segment) -> Segment {
    let present = k.present != 0 && k.unusable == 0;
    Segment {
        selector: k.selector,
        attrib: SegAttrib::new(k.type_, k.s != 0, k.dpl, present, k.avl != 0, k.l != 0, k.db != 0, k.g != 0),
        limit: k.limit,
        base: k.base,
    }
}

fn seg_to_kvm(s: &Segment) -> kvm_segment {
    let a = s.attrib;
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: a.typ(),
        present: a.p() as u8,
        dpl: a.dpl(),
        db: a.def() as u8,
        s: a.s() as u8,
        l: a.l() as u8,
        g: a.g() as u8,
        avl: a.avl() as u8,
        unusable: (!a.p()) as u8,
        padding: 0,
    }
}

fn dtable_into(d: &kvm_dtable, s: &mut Segment) {
    s.base = d.base;
    s.limit = d.limit.into();
}

fn dtable_from(s: &Segment) -> kvm_dtable {
    kvm_dtable { base: s.base, limit: s.limit as u16, padding: [0; 3] }
}

/// Fills the segment part of the state. GDTR and IDTR keep the selector and
/// attributes they had (KVM has none for them).
pub(crate) fn segs_from_kvm(k: &kvm_sregs, s: &mut Segs) {
    s[Seg::Es] = seg_from_kvm(&k.es);
    s[Seg::Cs] = seg_from_kvm(&k.cs);
    s[Seg::Ss] = seg_from_kvm(&k.ss);
    s[Seg::Ds] = seg_from_kvm(&k.ds);
    s[Seg::Fs] = seg_from_kvm(&k.fs);
    s[Seg::Gs] = seg_from_kvm(&k.gs);
    dtable_into(&k.gdt, &mut s[Seg::Gdt]);
    dtable_into(&k.idt, &mut s[Seg::Idt]);
    s[Seg::Ldt] = seg_from_kvm(&k.ldt);
    s[Seg::Tr] = seg_from_kvm(&k.tr);
}

/// The last segment registers converted from KVM, kept to convert again
/// only when KVM's bytes differ: they rarely change between exits, and a
/// conversion (ten segments, each attribute byte tested) was the largest
/// part of reading the segments after an exit.
#[derive(Clone, Copy, Default)]
pub(crate) struct SegsMemo {
    key: Option<[u8; SEGS_BYTES]>,
    segs: Segs,
}

/// The segment part of `kvm_sregs`: eight `kvm_segment`s, GDTR and IDTR,
/// before CR0.
const SEGS_BYTES: usize = 8 * 24 + 2 * 16;
const _: () = assert!(std::mem::offset_of!(kvm_sregs, cr0) == SEGS_BYTES);
const _: () = assert!(std::mem::size_of::<kvm_segment>() == 24 && std::mem::size_of::<kvm_dtable>() == 16);

impl SegsMemo {
    /// Fills the segment part of `s` from `k`, as [`segs_from_kvm`] does.
    pub(crate) fn segs_from_kvm(&mut self, k: &kvm_sregs, s: &mut Segs) {
        let key = segs_bytes(k);
        if !self.key.as_ref().is_some_and(|kept| same_bytes(kept, key)) {
            self.convert(k);
        }
        for seg in [Seg::Es, Seg::Cs, Seg::Ss, Seg::Ds, Seg::Fs, Seg::Gs, Seg::Ldt, Seg::Tr] {
            s[seg] = self.segs[seg];
        }
        dtable_into(&k.gdt, &mut s[Seg::Gdt]);
        dtable_into(&k.idt, &mut s[Seg::Idt]);
    }

    /// Converts `k` and keeps it (out of line: the segments rarely change,
    /// and the conversion is most of the code of a state read).
    #[cold]
    #[inline(never)]
    fn convert(&mut self, k: &kvm_sregs) {
        segs_from_kvm(k, &mut self.segs);
        self.key = Some(*segs_bytes(k));
    }
}

/// Whether `a` and `b` hold the same bytes: compared word by word inline,
/// where `==` on arrays calls the C library's `memcmp` (through the GOT:
/// an indirect call at every exit, which the host's branch-predictor
/// barrier at VM exits makes mispredict).
#[inline(always)]
fn same_bytes(a: &[u8; SEGS_BYTES], b: &[u8; SEGS_BYTES]) -> bool {
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or_default());
    a.chunks_exact(8).zip(b.chunks_exact(8)).fold(0, |d, (x, y)| d | (word(x) ^ word(y))) == 0
}

/// The bytes of the segment part of `k`.
fn segs_bytes(k: &kvm_sregs) -> &[u8; SEGS_BYTES] {
    // SAFETY: `kvm_sregs` is `repr(C)` and begins with eight `kvm_segment`
    // and two `kvm_dtable` (checked above: CR0 follows at SEGS_BYTES); both
    // are integers only, with their padding as named fields, so every one
    // of these bytes is initialised, and `[u8; N]` needs no alignment. The
    // borrow keeps `k` alive and unmodified.
    unsafe { &*std::ptr::from_ref(k).cast::<[u8; SEGS_BYTES]>() }
}

/// Fills CS alone.
pub(crate) fn cs_from_kvm(k: &kvm_sregs, s: &mut Segs) {
    s[Seg::Cs] = seg_from_kvm(&k.cs);
}

pub(crate) fn segs_into_kvm(s: &Segs, k: &mut kvm_sregs) {
    k.es = seg_to_kvm(&s[Seg::Es]);
    k.cs = seg_to_kvm(&s[Seg::Cs]);
    k.ss = seg_to_kvm(&s[Seg::Ss]);
    k.ds = seg_to_kvm(&s[Seg::Ds]);
    k.fs = seg_to_kvm(&s[Seg::Fs]);
    k.gs = seg_to_kvm(&s[Seg::Gs]);
    k.gdt = dtable_from(&s[Seg::Gdt]);
    k.idt = dtable_from(&s[Seg::Idt]);
    k.ldt = seg_to_kvm(&s[Seg::Ldt]);
    k.tr = seg_to_kvm(&s[Seg::Tr]);
}

/// CR0, CR2, CR3, CR4, CR8 (XCR0 is not in `kvm_sregs`).
pub(crate) fn crs_from_kvm(k: &kvm_sregs, c: &mut Crs) {
    c[Cr::Cr0] = k.cr0;
    c[Cr::Cr2] = k.cr2;
    c[Cr::Cr3] = k.cr3;
    c[Cr::Cr4] = k.cr4;
    c[Cr::Cr8] = k.cr8;
}

pub(crate) fn crs_into_kvm(c: &Crs, k: &mut kvm_sregs) {
    k.cr0 = c[Cr::Cr0];
    k.cr2 = c[Cr::Cr2];
    k.cr3 = c[Cr::Cr3];
    k.cr4 = c[Cr::Cr4];
    k.cr8 = c[Cr::Cr8] & 0xf;
}

pub(crate) fn drs_from_kvm(k: &kvm_debugregs, d: &mut Drs) {
    d[Dr::Dr0] = k.db[0];
    d[Dr::Dr1] = k.db[1];
    d[Dr::Dr2] = k.db[2];
    d[Dr::Dr3] = k.db[3];
    d[Dr::Dr6] = k.dr6;
    d[Dr::Dr7] = k.dr7;
}

pub(crate) fn drs_to_kvm(d: &Drs) -> kvm_debugregs {
    kvm_debugregs {
        db: [d[Dr::Dr0], d[Dr::Dr1], d[Dr::Dr2], d[Dr::Dr3]],
        dr6: d[Dr::Dr6],
        dr7: d[Dr::Dr7],
        ..Default::default()
    }
}

/// Interrupt shadow and pending-event bits (the window bits are the
/// library's own and are left alone).
pub(crate) fn intr_from_kvm(e: &kvm_vcpu_events, i: &mut Intr) {
    i.set_int_shadow(e.interrupt.shadow != 0);
    i.set_evt_pending(
        e.exception.injected != 0 || e.exception.pending != 0 || e.interrupt.injected != 0 || e.nmi.injected != 0,
    );
}

pub(crate) fn intr_into_kvm(i: &Intr, e: &mut kvm_vcpu_events) {
    if !i.int_shadow() {
        e.interrupt.shadow = 0;
    } else if e.interrupt.shadow & (KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI) as u8 == 0 {
        // MOV SS blocking is valid whatever RFLAGS.IF is, STI blocking is
        // not: choose it when the caller asks for a shadow KVM did not have.
        e.interrupt.shadow = KVM_X86_SHADOW_INT_MOV_SS as u8;
    }
}

/// Queues `ev` in the event structure.
pub(crate) fn event_into_kvm(ev: &Event, e: &mut kvm_vcpu_events) {
    match ev.kind {
        EventKind::Interrupt if ev.is_nmi() => {
            e.nmi.pending = 1;
        }
        EventKind::Interrupt => {
            e.interrupt.injected = 1;
            e.interrupt.nr = ev.vector;
            e.interrupt.soft = 0;
        }
        EventKind::Exception => {
            e.exception.injected = 1;
            e.exception.pending = 0;
            e.exception.nr = ev.vector;
            e.exception.has_error_code = ev.has_error_code() as u8;
            e.exception.error_code = if ev.has_error_code() { ev.error_code as u32 } else { 0 };
        }
    }
}

/// Events of a VCPU at RESET: nothing pending, no shadow, NMIs unmasked.
pub(crate) fn reset_events() -> kvm_vcpu_events {
    kvm_vcpu_events {
        flags: kvm_bindings::KVM_VCPUEVENT_VALID_NMI_PENDING | kvm_bindings::KVM_VCPUEVENT_VALID_SHADOW,
        ..Default::default()
    }
}

/// The event state the front end reasons about.
pub(crate) fn event_status(e: &kvm_vcpu_events) -> EventStatus {
    EventStatus {
        int_shadow: e.interrupt.shadow != 0,
        pending: e.exception.injected != 0
            || e.exception.pending != 0
            || e.interrupt.injected != 0
            || e.nmi.injected != 0,
        nmi_busy: e.nmi.masked != 0 || e.nmi.pending != 0 || e.nmi.injected != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86::reset::reset_state;

    #[test]
    fn segments_round_trip() {
        let s = reset_state();
        let mut k = kvm_sregs::default();
        segs_into_kvm(&s.segs, &mut k);
        assert_eq!(k.cs.base, 0xffff_0000);
        assert_eq!(k.cs.type_, 3);
        assert_eq!(k.tr.s, 0);
        let mut back = s.segs;
        back[Seg::Cs] = Segment::default();
        segs_from_kvm(&k, &mut back);
        assert_eq!(back, s.segs);
    }

    #[test]
    fn the_segment_memo_converts_what_changed() {
        let s = reset_state();
        let mut k = kvm_sregs::default();
        segs_into_kvm(&s.segs, &mut k);
        let mut memo = SegsMemo::default();
        let plain = |k: &kvm_sregs, into: &Segs| {
            let mut out = *into;
            segs_from_kvm(k, &mut out);
            out
        };
        // GDTR and IDTR keep the selector and attributes they had.
        let mut dest = s.segs;
        dest[Seg::Gdt].selector = 0x1234;
        dest[Seg::Idt].attrib = SegAttrib(0x82);
        let before = dest;
        memo.segs_from_kvm(&k, &mut dest);
        assert_eq!(dest, plain(&k, &before));
        // Every field of every segment, GDTR and IDTR counts.
        let flips: [fn(&mut kvm_segment); 12] = [
            |s| s.base ^= 1 << 40,
            |s| s.limit ^= 0x100,
            |s| s.selector ^= 8,
            |s| s.type_ ^= 2,
            |s| s.present ^= 1,
            |s| s.dpl ^= 3,
            |s| s.db ^= 1,
            |s| s.s ^= 1,
            |s| s.l ^= 1,
            |s| s.g ^= 1,
            |s| s.avl ^= 1,
            |s| s.unusable ^= 1,
        ];
        let segs: [fn(&mut kvm_sregs) -> &mut kvm_segment; 8] = [
            |k| &mut k.cs,
            |k| &mut k.ds,
            |k| &mut k.es,
            |k| &mut k.fs,
            |k| &mut k.gs,
            |k| &mut k.ss,
            |k| &mut k.tr,
            |k| &mut k.ldt,
        ];
        let mut variants = Vec::new();
        for seg in segs {
            for flip in flips {
                let mut changed = k;
                flip(seg(&mut changed));
                variants.push(changed);
            }
        }
        let dts: [fn(&mut kvm_sregs) -> &mut kvm_dtable; 2] = [|k| &mut k.gdt, |k| &mut k.idt];
        for dt in dts {
            let mut changed = k;
            dt(&mut changed).base ^= 0x10;
            variants.push(changed);
            let mut changed = k;
            dt(&mut changed).limit ^= 0x10;
            variants.push(changed);
        }
        for (i, changed) in variants.iter().enumerate() {
            let mut out = before;
            memo.segs_from_kvm(changed, &mut out);
            assert_eq!(out, plain(changed, &before), "variant {i}");
            assert_ne!(out, plain(&k, &before), "variant {i} differs");
            let mut out = before;
            memo.segs_from_kvm(&k, &mut out);
            assert_eq!(out, plain(&k, &before), "variant {i} changed back");
        }
    }

    #[test]
    fn gprs_round_trip() {
        let mut g = Gprs([0; 18]);
        for (i, v) in g.0.iter_mut().enumerate() {
            *v = 0x1000 + i as u64;
        }
        g[Gpr::Rflags] = 0x202;
        let k = gprs_to_kvm(&g);
        assert_eq!(k.rbx, 0x1003);
        let mut back = Gprs([0; 18]);
        gprs_from_kvm(&k, &mut back);
        assert_eq!(back, g);
    }

    #[test]
    fn events() {
        let mut e = kvm_vcpu_events::default();
        event_into_kvm(&Event::exception(13, 0xabc), &mut e);
        assert_eq!(
            (e.exception.injected, e.exception.nr, e.exception.has_error_code, e.exception.error_code),
            (1, 13, 1, 0xabc)
        );
        event_into_kvm(&Event::exception(6, 0xabc), &mut e);
        assert_eq!((e.exception.has_error_code, e.exception.error_code), (0, 0));
        event_into_kvm(&Event::nmi(), &mut e);
        assert_eq!(e.nmi.pending, 1);
        event_into_kvm(&Event::interrupt(0x30), &mut e);
        assert_eq!((e.interrupt.injected, e.interrupt.nr), (1, 0x30));
        let mut i = Intr::default();
        intr_from_kvm(&e, &mut i);
        assert!(i.evt_pending());
        i.set_int_shadow(true);
        intr_into_kvm(&i, &mut e);
        assert_eq!(e.interrupt.shadow, 1);
    }
}
