//! A VCPU's complete KVM state, captured bit-exactly and restored in the
//! order KVM requires (Firecracker's: CPUID, MP state, registers, special
//! registers, XSAVE, XCRs, debug registers, MSRs with the TSC first,
//! events). Each component travels as the bytes of KVM's own structure,
//! so a snapshot compares, saves and loads without knowing KVM's types.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_cpuid_entry2, kvm_debugregs, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};

use std::sync::{Arc, Mutex};

use super::KvmVcpu;
use super::vcpu::sync_sets;
use crate::error::{Error, Result};
use crate::snapshot::{Component, KernelState};

/// `MSR_IA32_TSC`: restored before the MSRs that depend on it
/// (`TSC_DEADLINE`, `TSC_ADJUST`).
const MSR_TSC: u32 = 0x10;

/// The bytes of a plain KVM structure.
fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    let n = std::mem::size_of::<T>();
    // SAFETY: `T` is one of KVM's bindgen structures: plain integers and
    // arrays without padding KVM leaves uninitialised (they come zeroed or
    // from the kernel, which fills every byte), readable as `n` bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), n) }.to_vec()
}

/// A KVM structure from its bytes; `EINVAL` when the size is wrong.
fn from_bytes<T: Copy + Default>(what: &'static str, b: &[u8]) -> Result<T> {
    if b.len() != std::mem::size_of::<T>() {
        return Err(Error::InvalidSnapshot {
            why: format!("{what} has {} bytes, KVM's structure {}", b.len(), std::mem::size_of::<T>()),
        });
    }
    let mut v = T::default();
    // SAFETY: `b` has exactly size_of::<T>() bytes (checked) and `T` is a
    // plain KVM structure for which every bit pattern is valid.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), b.len()) };
    Ok(v)
}

/// An MSR and its value.
type Msr = (u32, u64);

/// What restores of one VCPU learned (see `KvmVcpu::restored`).
#[derive(Debug, Default)]
pub(crate) struct RestoreMemo {
    cpuid: Option<u64>,
    tsc_khz: Option<u32>,
    /// The MP state last set. Without an in-kernel LAPIC (NVMM's model
    /// has none) KVM never changes it itself: HLT and the rest exit to
    /// the VMM instead.
    mp_state: Option<u32>,
    /// MSRs KVM refuses to write, with the value found there (KVM refuses
    /// the guest's writes too, so it stays).
    refused_msrs: Vec<(u32, u64)>,
    /// While the VCPU is as `KVM_CREATE_VCPU` made it (never run, never
    /// restored): what the system learned of such VCPUs.
    pub(super) fresh: Option<Arc<FreshVcpuMemo>>,
}

impl RestoreMemo {
    /// The memo of a VCPU fresh from `KVM_CREATE_VCPU`.
    pub(super) fn fresh(system: &Arc<FreshVcpuMemo>) -> RestoreMemo {
        RestoreMemo { fresh: Some(system.clone()), ..Default::default() }
    }
}

/// What the first restore of a fresh VCPU learned, for every later fresh
/// VCPU of the same system restored with the same CPUID table: KVM makes
/// every VCPU alike (the VM's default TSC frequency, the reset values of
/// the MSRs it refuses to write), so a fork's new VCPU need not ask again
/// (two ioctls fewer per fork on hosts with such MSRs, one on the rest).
#[derive(Debug, Default)]
pub(crate) struct FreshVcpuMemo(Mutex<Option<FreshRestore>>);

#[derive(Clone, Debug)]
struct FreshRestore {
    /// The CPUID table's digest: which MSRs KVM refuses depends on it.
    cpuid: u64,
    tsc_khz: Option<u32>,
    mp_state: Option<u32>,
    refused_msrs: Vec<Msr>,
}

impl FreshVcpuMemo {
    fn get(&self, cpuid: u64) -> Option<FreshRestore> {
        let known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        known.as_ref().filter(|k| k.cpuid == cpuid).cloned()
    }

    fn learn(&self, learned: FreshRestore) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(learned);
    }
}

/// The CPUID table of a captured state (the `Cpuid` component's bytes).
pub(crate) fn cpuid_of_component(bytes: &[u8]) -> Result<Vec<crate::x86::cpuid::CpuidEntry>> {
    let entry = std::mem::size_of::<kvm_cpuid_entry2>();
    if bytes.len() % entry != 0 {
        return Err(Error::InvalidSnapshot { why: "the CPUID component is not a whole number of entries".into() });
    }
    bytes
        .chunks_exact(entry)
        .map(|c| from_bytes::<kvm_cpuid_entry2>("a CPUID entry", c).map(|e| super::convert::cpuid_from_kvm(&e)))
        .collect()
}

impl KvmVcpu {
    /// The MSRs KVM reports (`KVM_GET_MSR_INDEX_LIST`) that this VCPU can
    /// read, the TSC first; probed once.
    fn snapshot_msrs(&mut self) -> Result<Vec<u32>> {
        if let Some(l) = &self.msr_list {
            return Ok(l.clone());
        }
        let mut list: Vec<u32> = self.msr_index_list.iter().copied().collect();
        if let Some(i) = list.iter().position(|&m| m == MSR_TSC) {
            list.remove(i);
            list.insert(0, MSR_TSC);
        }
        // KVM_GET_MSRS stops at the first MSR it cannot read (one the
        // guest's CPUID does not offer, say): drop it and go on.
        let mut start = 0;
        while start < list.len() {
            let entries: Vec<kvm_msr_entry> =
                list[start..].iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
            let mut msrs =
                Msrs::from_entries(&entries).map_err(|_| Error::NoMemory { what: "building an MSR list" })?;
            self.ioctls += 1;
            let n = self.fd.get_msrs(&mut msrs).map_err(|e| Error::kvm_errno("KVM_GET_MSRS", e))?;
            if start + n == list.len() {
                break;
            }
            list.remove(start + n);
            start += n;
        }
        self.msr_list = Some(list.clone());
        Ok(list)
    }

    /// Sets the MSRs in order. KVM refuses some writes even of the value
    /// it reads back (paravirtual MSRs that need an in-kernel LAPIC, which
    /// these machines do not have): such an MSR is skipped when the VCPU
    /// already holds the snapshot's value, and is an error otherwise.
    fn restore_msrs(&mut self, msrs: &[(u32, u64)]) -> Result<()> {
        // MSRs KVM refused before are not written: they must hold the
        // snapshot's value already (checked by reading unless it is the
        // value found last time).
        let refused = &self.restored.refused_msrs;
        let (known, write): (Vec<Msr>, Vec<Msr>) = msrs.iter().partition(|(i, _)| refused.iter().any(|(r, _)| r == i));
        let check: Vec<Msr> = known.into_iter().filter(|m| !refused.contains(m)).collect();
        let mut start = 0;
        while start < write.len() {
            let entries: Vec<kvm_msr_entry> = write[start..]
                .iter()
                .map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() })
                .collect();
            let list = Msrs::from_entries(&entries).map_err(|_| Error::NoMemory { what: "building an MSR list" })?;
            self.ioctls += 1;
            let n = self.fd.set_msrs(&list).map_err(|e| Error::kvm_errno("KVM_SET_MSRS", e))?;
            if start + n == write.len() {
                break;
            }
            self.check_msrs(&write[start + n..start + n + 1])?;
            self.restored.refused_msrs.push(write[start + n]);
            start += n + 1;
        }
        self.check_msrs(&check)?;
        for m in check {
            if let Some(r) = self.restored.refused_msrs.iter_mut().find(|(i, _)| *i == m.0) {
                r.1 = m.1;
            }
        }
        Ok(())
    }

    /// Fails unless the VCPU holds these MSR values already.
    fn check_msrs(&mut self, msrs: &[(u32, u64)]) -> Result<()> {
        if msrs.is_empty() {
            return Ok(());
        }
        let entries: Vec<kvm_msr_entry> =
            msrs.iter().map(|&(index, _)| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut list = Msrs::from_entries(&entries).map_err(|_| Error::NoMemory { what: "building an MSR list" })?;
        self.ioctls += 1;
        let n = self.fd.get_msrs(&mut list).map_err(|e| Error::kvm_errno("KVM_GET_MSRS", e))?;
        for (i, &(index, want)) in msrs.iter().enumerate() {
            if i >= n || list.as_slice()[i].data != want {
                return Err(Error::InvalidSnapshot {
                    why: format!("KVM refused MSR {index:#x} = {want:#x} of the snapshot (another CPU model?)"),
                });
            }
        }
        Ok(())
    }

    /// Captures every component KVM holds for this VCPU.
    pub(super) fn capture_state(&mut self) -> Result<KernelState> {
        let kerr = |what: &'static str| move |e: kvm_ioctls::Error| Error::kvm_errno(what, e);
        let mut components = Vec::new();
        self.ioctls += 9;
        let cpuid = self.fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES).map_err(kerr("KVM_GET_CPUID2"))?;
        let cpuid_bytes: Vec<u8> = cpuid.as_slice().iter().flat_map(bytes_of).collect();
        components.push((Component::Cpuid, cpuid_bytes));
        components.push((Component::MpState, bytes_of(&self.fd.get_mp_state().map_err(kerr("KVM_GET_MP_STATE"))?)));
        components.push((Component::Regs, bytes_of(&self.fd.get_regs().map_err(kerr("KVM_GET_REGS"))?)));
        components.push((Component::Sregs, bytes_of(&self.fd.get_sregs().map_err(kerr("KVM_GET_SREGS"))?)));
        let xsave = self.fd.get_xsave().map_err(kerr("KVM_GET_XSAVE"))?;
        components.push((Component::Xsave, xsave.region.iter().flat_map(|w| w.to_le_bytes()).collect()));
        components.push((Component::Xcrs, bytes_of(&self.fd.get_xcrs().map_err(kerr("KVM_GET_XCRS"))?)));
        components
            .push((Component::DebugRegs, bytes_of(&self.fd.get_debug_regs().map_err(kerr("KVM_GET_DEBUGREGS"))?)));
        components
            .push((Component::Events, bytes_of(&self.fd.get_vcpu_events().map_err(kerr("KVM_GET_VCPU_EVENTS"))?)));
        if let Ok(khz) = self.fd.get_tsc_khz() {
            components.push((Component::TscKhz, khz.to_le_bytes().to_vec()));
        }
        let list = self.snapshot_msrs()?;
        let entries: Vec<kvm_msr_entry> =
            list.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::NoMemory { what: "building an MSR list" })?;
        let n = self.fd.get_msrs(&mut msrs).map_err(kerr("KVM_GET_MSRS"))?;
        if n != list.len() {
            return Err(Error::kvm("KVM_GET_MSRS", std::io::Error::from_raw_os_error(libc::EIO)));
        }
        let msrs = msrs.as_slice().iter().map(|e| (e.index, e.data)).collect();
        Ok(KernelState { components, msrs })
    }

    /// Loads a captured state, in KVM's order. The TSC frequency is set
    /// only when it differs (hosts without TSC scaling refuse any change).
    pub(super) fn restore_state(&mut self, s: &KernelState) -> Result<()> {
        let kerr = |what: &'static str| move |e: kvm_ioctls::Error| Error::kvm_errno(what, e);
        let part = |c: Component| {
            s.component(c).ok_or_else(|| Error::InvalidSnapshot { why: format!("the {c:?} component is missing") })
        };
        let cpuid_bytes = part(Component::Cpuid)?;
        // A digest of the table, to recognise one already set.
        let cpuid_digest = crate::snapshot::fnv1a(cpuid_bytes);
        // A fresh VCPU starts from what the system knows of fresh VCPUs
        // under this CPUID table; the first one teaches it (below).
        let fresh = self.restored.fresh.take();
        let known = fresh.as_ref().and_then(|f| f.get(cpuid_digest));
        if let Some(k) = &known {
            self.restored.tsc_khz = k.tsc_khz;
            self.restored.mp_state = k.mp_state;
            self.restored.refused_msrs = k.refused_msrs.clone();
        }
        if self.restored.cpuid != Some(cpuid_digest) {
            let entry = std::mem::size_of::<kvm_cpuid_entry2>();
            if cpuid_bytes.len() % entry != 0 {
                return Err(Error::InvalidSnapshot {
                    why: "the CPUID component is not a whole number of entries".into(),
                });
            }
            let entries: Vec<kvm_cpuid_entry2> =
                cpuid_bytes.chunks_exact(entry).map(|c| from_bytes("a CPUID entry", c)).collect::<Result<_>>()?;
            let cpuid =
                CpuId::from_entries(&entries).map_err(|_| Error::NoMemory { what: "building the CPUID table" })?;
            self.ioctls += 1;
            self.fd.set_cpuid2(&cpuid).map_err(|e| match e.errno() {
                libc::EBUSY | libc::EINVAL => Error::CpuidLocked,
                _ => Error::kvm_errno("KVM_SET_CPUID2", e),
            })?;
            self.restored.cpuid = Some(cpuid_digest);
        }
        let mp: kvm_mp_state = from_bytes("MP state", part(Component::MpState)?)?;
        let mut fresh_mp_state = None;
        if fresh.is_some() && known.is_none() {
            // The first fresh VCPU: learn how KVM makes them.
            self.ioctls += 1;
            fresh_mp_state = Some(self.fd.get_mp_state().map_err(kerr("KVM_GET_MP_STATE"))?.mp_state);
            self.restored.mp_state = fresh_mp_state;
        }
        if self.restored.mp_state != Some(mp.mp_state) {
            self.ioctls += 1;
            self.fd.set_mp_state(mp).map_err(kerr("KVM_SET_MP_STATE"))?;
            self.restored.mp_state = Some(mp.mp_state);
        }
        self.ioctls += 3;
        let regs: kvm_regs = from_bytes("registers", part(Component::Regs)?)?;
        let sregs: kvm_sregs = from_bytes("special registers", part(Component::Sregs)?)?;
        let events: kvm_vcpu_events = from_bytes("events", part(Component::Events)?)?;
        let area = part(Component::Xsave)?;
        let mut xsave = kvm_xsave::default();
        if area.len() != 4 * xsave.region.len() {
            return Err(Error::InvalidSnapshot { why: format!("the XSAVE area has {} bytes, not 4096", area.len()) });
        }
        for (w, b) in xsave.region.iter_mut().zip(area.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        let xcrs: kvm_xcrs = from_bytes("XCRs", part(Component::Xcrs)?)?;
        // XCR0 first: KVM checks the XSAVE area against it.
        self.fd.set_xcrs(&xcrs).map_err(kerr("KVM_SET_XCRS"))?;
        // SAFETY: `xsave` is a complete 4096-byte kvm_xsave, all KVM reads
        // (the library never enables larger, AMX, state).
        unsafe { self.fd.set_xsave(&xsave) }.map_err(kerr("KVM_SET_XSAVE"))?;
        let dr: kvm_debugregs = from_bytes("debug registers", part(Component::DebugRegs)?)?;
        self.fd.set_debug_regs(&dr).map_err(kerr("KVM_SET_DEBUGREGS"))?;
        let mut fresh_tsc_khz = None;
        if let Some(b) = s.component(Component::TscKhz) {
            let want =
                u32::from_le_bytes(b.try_into().map_err(|_| Error::InvalidSnapshot { why: "TSC frequency".into() })?);
            let now = match self.restored.tsc_khz {
                Some(k) => Some(k),
                None => {
                    self.ioctls += 1;
                    self.fd.get_tsc_khz().ok()
                }
            };
            fresh_tsc_khz = now;
            if now.is_some_and(|now| now != want) {
                self.fd.set_tsc_khz(want).map_err(kerr("KVM_SET_TSC_KHZ"))?;
            }
            self.restored.tsc_khz = Some(want);
        }
        self.restore_msrs(&s.msrs)?;
        if let (Some(f), None) = (&fresh, known) {
            f.learn(FreshRestore {
                cpuid: cpuid_digest,
                tsc_khz: fresh_tsc_khz,
                mp_state: fresh_mp_state,
                refused_msrs: self.restored.refused_msrs.clone(),
            });
        }
        // Registers, special registers and events travel through `kvm_run`
        // (KVM loads them at the next entry, in that order, after all of
        // the above): three ioctls fewer. `kvm_run` holds them now.
        let sync = self.fd.sync_regs_mut();
        sync.regs = regs;
        sync.sregs = sregs;
        sync.events = events;
        self.sync.invalidate();
        let all = sync_sets::REGS | sync_sets::SREGS | sync_sets::EVENTS;
        self.sync.hold(all);
        self.fd.get_kvm_run().kvm_dirty_regs = 0;
        self.add_dirty(all);
        self.forget_loaded_state();
        Ok(())
    }
}
