//! Guest memory by linear address, as one VCPU's code sees it: addresses
//! translated with the VCPU's paging registers (the MMU walker) over the
//! machine's guest physical memory, read and written at any alignment and
//! length, page by page, with the count done and the first failing address
//! when a page is missing. One home for what the assists, the I/O
//! instruction decoder, the MSR exits and the debugger need.

mod source;

pub(crate) use source::WindowSource;

use crate::assist::mmu::{
    Access, Mapping, PageProt, PagingRegs, Translation, WalkError, mappings, translate_range, walk,
};
use crate::memory::{MemoryMap, PAGE_SIZE};

/// How far a guest-virtual read or write got: a short count stops at the
/// first page that is not translated, not guest RAM, or (for a guest
/// write) not writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes transferred (a prefix of the buffer).
    pub done: usize,
    /// The first linear address that could not be reached, when `done` is
    /// short of the buffer.
    pub failed_at: Option<u64>,
}

/// Whose rights a guest-virtual write honours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteRights {
    /// The guest's: the page must be writable in the page tables and the
    /// guest physical mapping must have `PROT_WRITE`.
    Guest,
    /// A debugger's: write protection is ignored (breakpoints in code and
    /// in read-only mappings such as firmware).
    Debug,
}

/// A VCPU's view of guest memory.
pub(crate) struct GuestView<'a> {
    map: &'a MemoryMap,
    regs: PagingRegs,
}

impl<'a> GuestView<'a> {
    pub(crate) fn new(map: &'a MemoryMap, regs: PagingRegs) -> GuestView<'a> {
        GuestView { map, regs }
    }

    /// Translates a linear address (the guest physical address and the
    /// rights of its page).
    pub(crate) fn translate(&self, linear: u64) -> Result<Translation, WalkError> {
        walk(self.map, &self.regs, linear)
    }

    /// Up to 15 bytes before `linear` and 15 from it (what decoding the
    /// instruction at, or ending at, an address needs).
    pub(crate) fn around(&self, linear: u64) -> Window {
        Window::around(self, linear)
    }

    /// Reads `buf.len()` bytes at `linear`, stopping at the first page that
    /// is not translated or not guest RAM.
    pub(crate) fn read(&self, linear: u64, buf: &mut [u8]) -> Transfer {
        self.transfer(linear, buf.len(), 0, |gpa, range| self.map.read(gpa, &mut buf[range]).is_ok())
    }

    /// Writes `buf` at `linear`, stopping at the first page that is not
    /// translated, not guest RAM, or not writable by `rights`.
    pub(crate) fn write(&self, linear: u64, buf: &[u8], rights: WriteRights) -> Transfer {
        let guest = rights == WriteRights::Guest;
        let need = if guest { PageProt::WRITE } else { 0 };
        self.transfer(linear, buf.len(), need, |gpa, range| {
            (!guest || self.map.writable(gpa, range.len())) && self.map.write(gpa, &buf[range]).is_ok()
        })
    }

    /// The guest physical pieces of `[linear, linear + len)` for `access`,
    /// checked as the CPU checks it (the emulator's operands).
    pub(crate) fn pieces(&self, linear: u64, len: usize, access: Access) -> Result<Vec<(u64, usize)>, WalkError> {
        translate_range(self.map, &self.regs, linear, len, access)
    }

    /// Every translation of the page tables, as runs.
    pub(crate) fn mappings(&self) -> Vec<Mapping> {
        mappings(self.map, &self.regs)
    }

    /// Copies page by page, as one copy while the pages are contiguous in
    /// guest physical memory; pages must grant the `need` rights.
    fn transfer(
        &self,
        linear: u64,
        len: usize,
        need: u8,
        mut copy: impl FnMut(u64, std::ops::Range<usize>) -> bool,
    ) -> Transfer {
        let mut done = 0;
        let mut failed_at = None;
        // A run of contiguous guest physical pages not copied yet.
        let mut run: Option<(u64, usize, usize)> = None;
        while done < len {
            let at = linear.wrapping_add(done as u64);
            let n = ((PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize).min(len - done);
            let Ok(t) = self.translate(at).map_err(|_| ()).and_then(|t| if t.prot.has(need) { Ok(t) } else { Err(()) })
            else {
                failed_at = Some(at);
                break;
            };
            match run.as_mut() {
                Some((gpa, from, to)) if *gpa + (*to - *from) as u64 == t.gpa => *to += n,
                _ => {
                    if let Some((gpa, from, to)) = run.take()
                        && !copy(gpa, from..to)
                    {
                        return self.transfer_pages(linear, from, to, &mut copy);
                    }
                    run = Some((t.gpa, done, done + n));
                }
            }
            done += n;
        }
        if let Some((gpa, from, to)) = run
            && !copy(gpa, from..to)
        {
            return self.transfer_pages(linear, from, to, &mut copy);
        }
        Transfer { done, failed_at }
    }

    /// Page-by-page copy of `start..end`, after a copy of several pages at
    /// once failed: how far it gets.
    fn transfer_pages(
        &self,
        linear: u64,
        start: usize,
        len: usize,
        copy: &mut impl FnMut(u64, std::ops::Range<usize>) -> bool,
    ) -> Transfer {
        let mut done = start;
        while done < len {
            let at = linear.wrapping_add(done as u64);
            let n = ((PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize).min(len - done);
            let ok = self.translate(at).is_ok_and(|t| copy(t.gpa, done..done + n));
            if !ok {
                return Transfer { done, failed_at: Some(at) };
            }
            done += n;
        }
        // The whole run copied page by page: the failure was elsewhere.
        Transfer { done, failed_at: Some(linear.wrapping_add(done as u64)) }
    }
}

/// Up to 15 guest bytes before a linear address and up to 15 from it,
/// read at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    bytes: [u8; 30],
    /// Bytes before the address (fewer near address 0 or when the page
    /// before cannot be read).
    back: usize,
    /// Bytes from the address.
    ahead: usize,
}

impl Window {
    fn around(view: &GuestView<'_>, linear: u64) -> Window {
        let mut w = Window { bytes: [0; 30], back: linear.min(15) as usize, ahead: 0 };
        let start = linear - w.back as u64;
        let t = view.read(start, &mut w.bytes[..w.back + 15]);
        if t.done >= w.back {
            w.ahead = t.done - w.back;
            return w.zero_padded();
        }
        // The page before cannot be read: only what lies in RIP's page
        // before it.
        let in_page = (linear & 0xfff).min(15) as usize;
        w.back = in_page;
        let t = view.read(linear - in_page as u64, &mut w.bytes[..in_page + 15]);
        if t.done < in_page {
            w.back = 0;
            w.ahead = view.read(linear, &mut w.bytes[..15]).done;
        } else {
            w.ahead = t.done - in_page;
        }
        w.zero_padded()
    }

    /// `self` with zeros after its bytes (a failed read may have left some).
    fn zero_padded(mut self) -> Window {
        self.bytes[self.back + self.ahead..].fill(0);
        self
    }

    pub(crate) fn before(&self) -> &[u8] {
        &self.bytes[..self.back]
    }

    pub(crate) fn after(&self) -> &[u8] {
        &self.bytes[self.back..self.back + self.ahead]
    }

    /// All the bytes, those before the address first, then zeros.
    pub(crate) fn padded(&self) -> &[u8; 30] {
        &self.bytes
    }

    /// Bytes before the address, bytes from it.
    pub(crate) fn lengths(&self) -> (usize, usize) {
        (self.back, self.ahead)
    }

    /// A window of `back` bytes before the address and `ahead` from it,
    /// filled by `fill` (given all `back + ahead` bytes).
    pub(crate) fn filled(back: usize, ahead: usize, fill: impl FnOnce(&mut [u8])) -> Window {
        let mut w = Window { bytes: [0; 30], back, ahead };
        fill(&mut w.bytes[..back + ahead]);
        w
    }
}

#[cfg(test)]
mod tests {
    //! Exhaustive transfers over hand-built 4-level tables (entries written
    //! here from the SDM's layout, not by the crate's builder): four
    //! adjacent virtual pages at `BASE` on physical pages in scrambled
    //! order, the third one not mapped, the fourth read-only. The oracle
    //! is a model of which guest physical byte each virtual byte is.

    use super::*;
    use crate::memory::Prot;
    use crate::os::HostRegion;

    pub(super) const BASE: u64 = 0x4000_0000;
    /// Physical page of each virtual page (`None`: not present).
    pub(super) const PAGES: [Option<u64>; 4] = [Some(0x5000), Some(0x2000), None, Some(0x7000)];
    const READ_ONLY: usize = 3;

    pub(super) fn machine() -> MemoryMap {
        let mut m = MemoryMap::new(1 << 30, 8);
        let hva = m.add_host(HostRegion::anonymous(0x10_0000).unwrap()).unwrap();
        let plan = m.plan_gpa_map(hva, 0, 0x10_0000, Prot::ALL).unwrap();
        m.commit(plan);
        // PML4 at 0x80000, PDPT 0x81000, PD 0x82000, PT 0x83000: present
        // (bit 0) and writable (bit 1); BASE is PML4[0], PDPT[1], PD[0].
        let e = |addr: u64, rw: bool| (addr | 1 | u64::from(rw) << 1).to_le_bytes();
        m.write(0x80000, &e(0x81000, true)).unwrap();
        m.write(0x81000 + 8, &e(0x82000, true)).unwrap();
        m.write(0x82000, &e(0x83000, true)).unwrap();
        for (i, p) in PAGES.iter().enumerate() {
            if let Some(p) = p {
                m.write(0x83000 + 8 * i as u64, &e(*p, i != READ_ONLY)).unwrap();
            }
        }
        // Each physical page holds distinct bytes.
        for p in PAGES.iter().flatten() {
            let bytes: Vec<u8> = (0..4096u64).map(|i| (i as u8) ^ (p >> 12) as u8 ^ (i >> 8) as u8).collect();
            m.write(*p, &bytes).unwrap();
        }
        m
    }

    pub(super) fn regs() -> PagingRegs {
        PagingRegs { cr0: 0x8000_0011, cr3: 0x80000, cr4: 0x20, efer: 0x500, phys_bits: 40, gib_pages: false }
    }

    /// The model: the guest physical address of virtual byte `at`.
    fn model_gpa(at: u64) -> Option<u64> {
        let page = usize::try_from((at.checked_sub(BASE)?) >> 12).ok()?;
        PAGES.get(page).copied().flatten().map(|p| p + (at & 0xfff))
    }

    /// What a transfer of `len` bytes at `at` must report when pages stop
    /// it where `stops` says.
    fn expected(at: u64, len: usize, stops: impl Fn(u64) -> bool) -> Transfer {
        (0..len as u64).map(|i| at + i).find(|&a| stops(a)).map_or(Transfer { done: len, failed_at: None }, |a| {
            Transfer { done: (a - at) as usize, failed_at: Some(a) }
        })
    }

    fn lengths() -> impl Iterator<Item = usize> {
        (1..=17).chain([4095, 4096, 4097])
    }

    /// The bytes of virtual pages 0..4 as the model says they are now
    /// (zeros for the hole).
    fn virtual_bytes(m: &MemoryMap) -> Vec<u8> {
        let mut v = vec![0u8; 4 * 4096];
        for (i, p) in PAGES.iter().enumerate() {
            if let Some(p) = p {
                m.read(*p, &mut v[i * 4096..(i + 1) * 4096]).unwrap();
            }
        }
        v
    }

    #[test]
    fn reads_at_every_offset_and_length() {
        let m = machine();
        let model = virtual_bytes(&m);
        let view = GuestView::new(&m, regs());
        let mut buf = vec![0u8; 4097];
        // Every offset of the first page (crossing onto a lower, non-adjacent
        // physical page) and of the second (crossing onto the hole).
        for off in 0..2 * 4096usize {
            let at = BASE + off as u64;
            for len in lengths() {
                let t = view.read(at, &mut buf[..len]);
                assert_eq!(t, expected(at, len, |a| model_gpa(a).is_none()), "read {len} at {at:#x}");
                assert!(buf[..t.done] == model[off..off + t.done], "bytes of a read of {len} at {at:#x}");
            }
        }
    }

    #[test]
    fn guest_and_debugger_writes_at_every_offset_and_length() {
        for rights in [WriteRights::Guest, WriteRights::Debug] {
            let m = machine();
            let mut model = virtual_bytes(&m);
            let view = GuestView::new(&m, regs());
            let stops =
                |a: u64| model_gpa(a).is_none() || rights == WriteRights::Guest && (a - BASE) >> 12 == READ_ONLY as u64;
            // Every offset of the first page, and offsets around the hole
            // and the read-only page.
            for off in (0..4096usize).chain(2 * 4096 - 20..2 * 4096 + 20).chain(3 * 4096 - 20..3 * 4096 + 20) {
                let at = BASE + off as u64;
                for len in lengths() {
                    let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ off as u8 ^ 0x5a).collect();
                    let t = view.write(at, &data, rights);
                    assert_eq!(t, expected(at, len, stops), "{rights:?} write {len} at {at:#x}");
                    model[off..off + t.done].copy_from_slice(&data[..t.done]);
                    // Every page the write could have reached is exactly the
                    // model: nothing else changed.
                    let now = virtual_bytes(&m);
                    let (from, to) = (off / 4096 * 4096, ((off + len).div_ceil(4096) * 4096).min(4 * 4096));
                    assert!(now[from..to] == model[from..to], "{rights:?} write {len} at {at:#x}");
                }
            }
        }
    }

    #[test]
    fn an_unmapped_middle_page_stops_a_long_read() {
        let m = machine();
        let view = GuestView::new(&m, regs());
        let mut buf = vec![0u8; 3 * 4096];
        let t = view.read(BASE + 0x1f00, &mut buf);
        assert_eq!(t, Transfer { done: 0x100, failed_at: Some(BASE + 0x2000) });
        let t = view.read(BASE + 0x2800, &mut buf[..16]);
        assert_eq!(t, Transfer { done: 0, failed_at: Some(BASE + 0x2800) });
    }
}
