//! Where the guest bytes around an address were found, to read them again
//! without translating while nothing that decided it has changed.
//!
//! Locating the instruction behind an I/O exit reads up to 15 bytes before
//! RIP and 15 from it through the guest's page tables. A VMM's port
//! accesses come from a few instructions executed again and again, so the
//! VCPU keeps where its last window came from: the pieces of guest RAM
//! (host memory and offset) and every page-table entry the translation
//! read, with its value. While the machine's memory map is unchanged (its
//! generation), the paging registers and the address are equal, and every
//! recorded entry still holds its value, the translation is the same, and
//! the bytes are read from the pieces directly. Anything else goes through
//! the walker again.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use super::{GuestView, Window};
use crate::assist::mmu::{PagingRegs, PhysMemory, walk};
use crate::memory::{MemoryMap, PAGE_SIZE};
use crate::os::HostRegion;

/// Guest RAM as host memory: a region and an offset in it.
struct Piece {
    region: Arc<HostRegion>,
    offset: u64,
    len: usize,
}

impl Piece {
    /// The RAM holding `[gpa, gpa + len)` in one mapping.
    fn of(map: &MemoryMap, gpa: u64, len: usize) -> Option<Piece> {
        let a = map.area(gpa)?;
        let end = gpa.checked_add(len as u64)?;
        (end <= a.gpa + a.size).then(|| Piece { region: a.region.clone(), offset: a.offset + (gpa - a.gpa), len })
    }

    fn read(&self, buf: &mut [u8]) {
        self.region.read(self.offset, &mut buf[..self.len]);
    }

    /// Whether the piece holds `value` (its first `len` bytes) now.
    fn holds(&self, value: &[u8; 8]) -> bool {
        if self.len == 8 {
            return self.region.read_array::<8>(self.offset) == *value;
        }
        let mut now = [0u8; 8];
        self.read(&mut now);
        now == *value
    }
}

/// A page-table entry a walk read, and its value then.
struct Entry {
    piece: Piece,
    value: [u8; 8],
}

/// The guest memory a walk reads, with each read recorded.
struct Recorder<'a> {
    map: &'a MemoryMap,
    entries: RefCell<Vec<Entry>>,
    /// Every read was of RAM in one mapping, at most 8 bytes.
    complete: Cell<bool>,
}

impl PhysMemory for Recorder<'_> {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let ok = self.map.read_phys(gpa, buf);
        match Piece::of(self.map, gpa, buf.len()) {
            Some(piece) if ok && buf.len() <= 8 => {
                let mut value = [0u8; 8];
                value[..buf.len()].copy_from_slice(buf);
                self.entries.borrow_mut().push(Entry { piece, value });
            }
            _ => self.complete.set(false),
        }
        ok
    }
}

/// Where a full window (15 bytes before the address, or as many as lie
/// above 0, and 15 from it) was read.
pub(crate) struct WindowSource {
    linear: u64,
    regs: PagingRegs,
    generation: u64,
    back: usize,
    pieces: Vec<Piece>,
    entries: Vec<Entry>,
}

impl WindowSource {
    /// Records where `window`, read at `linear` through `view` with the
    /// memory map at `generation`, came from; `None` unless the window is
    /// full and every byte and page-table entry lies in guest RAM.
    pub(crate) fn record(view: &GuestView<'_>, linear: u64, window: &Window, generation: u64) -> Option<WindowSource> {
        let (back, ahead) = window.lengths();
        if back != linear.min(15) as usize || ahead != 15 {
            return None;
        }
        let rec = Recorder { map: view.map, entries: RefCell::new(Vec::new()), complete: Cell::new(true) };
        let start = linear - back as u64;
        let len = back + ahead;
        let mut pieces: Vec<Piece> = Vec::new();
        let mut done = 0;
        while done < len {
            let at = start.wrapping_add(done as u64);
            let n = ((PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize).min(len - done);
            let t = walk(&rec, &view.regs, at).ok()?;
            let piece = Piece::of(view.map, t.gpa, n)?;
            match pieces.last_mut() {
                // Consecutive in one host region (guest pages that are
                // consecutive in RAM): one piece, read at once.
                Some(last)
                    if Arc::ptr_eq(&last.region, &piece.region) && last.offset + last.len as u64 == piece.offset =>
                {
                    last.len += n;
                }
                _ => pieces.push(piece),
            }
            done += n;
        }
        if !rec.complete.get() {
            return None;
        }
        Some(WindowSource { linear, regs: view.regs, generation, back, pieces, entries: rec.entries.into_inner() })
    }

    /// The window at `linear` read again from where it was found, when
    /// the paging registers and the memory map's `generation` are the
    /// recorded ones and every page-table entry the walk read still holds
    /// its value; `None` otherwise.
    pub(crate) fn reread(&self, linear: u64, regs: &PagingRegs, generation: u64) -> Option<Window> {
        if !self.translates(linear, regs, generation) {
            return None;
        }
        let now = self.bytes_now();
        Some(Window::filled(self.back, 15, |bytes| bytes.copy_from_slice(&now[..bytes.len()])))
    }

    /// Whether the window this source describes holds the bytes of `window`
    /// now, the memory map being at `generation` and every page-table entry
    /// the walk read holding its value (compared in place, without building
    /// a window). The caller knows the address and paging registers are
    /// the recorded ones (they are part of what it keyed the window by).
    #[inline(always)]
    pub(crate) fn holds(&self, generation: u64, window: &Window) -> bool {
        if generation != self.generation || window.lengths() != (self.back, 15) || !self.entries_hold() {
            return false;
        }
        let now = self.bytes_now();
        // Both zero beyond the window's `back + 15` bytes: one compare of
        // fixed length, as two overlapping 16-byte words.
        let w = window.padded();
        let word = |b: &[u8; 30], at: usize| u128::from_le_bytes(b[at..at + 16].try_into().unwrap_or_default());
        word(&now, 0) == word(w, 0) && word(&now, 14) == word(w, 14)
    }

    /// The window's bytes as the pieces hold them now, then zeros (one
    /// inline copy when they are one piece).
    #[inline(always)]
    fn bytes_now(&self) -> [u8; 30] {
        match self.pieces.as_slice() {
            [p] if p.len == 30 => p.region.read_array::<30>(p.offset),
            pieces => {
                crate::hint::cold_path();
                let mut now = [0u8; 30];
                let mut at = 0;
                for p in pieces {
                    p.read(&mut now[at..]);
                    at += p.len;
                }
                now
            }
        }
    }

    /// Whether `linear` still translates to the recorded pieces: same
    /// address, paging registers and memory map, and every page-table entry
    /// the walk read still holds its value.
    #[inline(always)]
    fn translates(&self, linear: u64, regs: &PagingRegs, generation: u64) -> bool {
        if linear != self.linear || generation != self.generation || *regs != self.regs {
            return false;
        }
        self.entries_hold()
    }

    /// Whether every page-table entry the walk read still holds its value.
    #[inline(always)]
    fn entries_hold(&self) -> bool {
        self.entries.iter().all(|e| e.piece.holds(&e.value))
    }
}

#[cfg(test)]
mod tests {
    //! Over the hand-built 4-level tables of the view's tests (virtual
    //! pages at `BASE` on physical pages 0x5000, 0x2000, none, 0x7000):
    //! the oracle is `GuestView::around`, which always walks.

    use super::super::tests::{BASE, PAGES, machine, regs};
    use super::*;
    use crate::os::HostRegion;

    /// A window straddling virtual pages 0 and 1 (two walks, two pieces).
    const AT: u64 = BASE + 0x1000 + 4;

    fn around(map: &MemoryMap, r: PagingRegs, at: u64) -> Window {
        GuestView::new(map, r).around(at)
    }

    fn record(map: &MemoryMap, r: PagingRegs, at: u64, generation: u64) -> Option<WindowSource> {
        let view = GuestView::new(map, r);
        WindowSource::record(&view, at, &view.around(at), generation)
    }

    #[test]
    fn reads_again_what_a_walk_reads_while_nothing_changed() {
        let m = machine();
        let s = record(&m, regs(), AT, 7).expect("a full window in RAM is recorded");
        assert_eq!(s.pieces.len(), 2, "two pages");
        assert_eq!(s.entries.len(), 8, "four levels walked for each page");
        let then = around(&m, regs(), AT);
        assert_eq!(s.reread(AT, &regs(), 7), Some(then));
        assert!(s.holds(7, &then));
        // Code written since: the new bytes.
        m.write(0x2000 + 2, &[0xee, 0xee, 0xee]).unwrap();
        m.write(0x5000 + 0xffe, &[0x66]).unwrap();
        let now = around(&m, regs(), AT);
        assert_eq!(&now.after()[..1], &[0xee]);
        assert_eq!(s.reread(AT, &regs(), 7), Some(now));
        assert!(!s.holds(7, &then), "the bytes changed");
        assert!(s.holds(7, &now));
        // One byte changed, in either piece.
        for gpa in [0x5000 + 0xff5, 0x2000 + 0x12] {
            let m = machine();
            let s = record(&m, regs(), AT, 7).unwrap();
            let w = around(&m, regs(), AT);
            let mut b = [0u8];
            m.read(gpa, &mut b).unwrap();
            m.write(gpa, &[b[0] ^ 1]).unwrap();
            assert!(!s.holds(7, &w), "byte at {gpa:#x} changed");
        }
    }

    #[test]
    fn anything_that_decided_the_translation_forces_a_walk() {
        let m = machine();
        let s = record(&m, regs(), AT, 7).unwrap();
        let w = around(&m, regs(), AT);
        assert_eq!(s.reread(AT + 1, &regs(), 7), None, "another address");
        assert_eq!(s.reread(AT, &regs(), 8), None, "the memory map changed");
        assert!(!s.holds(8, &w), "the memory map changed");
        let other = PagingRegs { cr3: 0x84000, ..regs() };
        assert_eq!(s.reread(AT, &other, 7), None, "other paging registers");
        // Virtual page 1 moved onto physical page 0x7000: its PTE changed.
        m.write(0x83000 + 8, &(0x7000u64 | 3).to_le_bytes()).unwrap();
        assert_eq!(s.reread(AT, &regs(), 7), None, "a page-table entry changed");
        assert!(!s.holds(7, &w), "a page-table entry changed");
        // A higher level changed (the PDE, to an identical copy elsewhere).
        let m = machine();
        let s = record(&m, regs(), AT, 7).unwrap();
        let mut pt = [0u8; 4096];
        m.read(0x83000, &mut pt).unwrap();
        m.write(0x84000, &pt).unwrap();
        m.write(0x82000, &(0x84000u64 | 3).to_le_bytes()).unwrap();
        assert_eq!(s.reread(AT, &regs(), 7), None, "a page-directory entry changed");
    }

    #[test]
    fn only_full_windows_in_ram_are_recorded() {
        let m = machine();
        // Ahead of it the unmapped virtual page 2: fewer than 15 bytes.
        assert!(record(&m, regs(), BASE + 0x2000 - 4, 0).is_none(), "a short window");
        assert!(PAGES[2].is_none());
        // Paging off: linear is physical. Near 0 the window has fewer
        // bytes before the address, and is full still.
        let flat = PagingRegs { cr0: 0x11, cr4: 0, efer: 0, ..regs() };
        let s = record(&m, flat, 5, 0).expect("5 bytes before address 5");
        assert_eq!(s.reread(5, &flat, 0), Some(around(&m, flat, 5)));
        assert!(s.entries.is_empty(), "no walk without paging");
        // Across a page boundary, consecutive in RAM: one piece.
        let s = record(&m, flat, 0x1004, 0).unwrap();
        assert_eq!(s.pieces.len(), 1);
        let w = around(&m, flat, 0x1004);
        assert_eq!(s.reread(0x1004, &flat, 0), Some(w));
        assert!(s.holds(0, &w));
        m.write(0xff6, &[0x90 ^ w.before()[1]]).unwrap();
        assert!(!s.holds(0, &w), "a byte before the boundary changed");
        // A window with other lengths is not the recorded one.
        let short = Window::filled(3, 15, |b| b.copy_from_slice(&w.padded()[12..30]));
        assert!(!s.holds(0, &short));
        // Ending exactly where guest RAM ends.
        let end = 0x10_0000 - 15;
        let s = record(&m, flat, end, 0).expect("the window ends with RAM");
        assert_eq!(s.reread(end, &flat, 0), Some(around(&m, flat, end)));
        // One byte further the window is short.
        assert!(record(&m, flat, end + 1, 0).is_none());
    }

    #[test]
    fn ram_mapped_above_zero_is_found_at_its_offset() {
        let mut m = MemoryMap::new(1 << 30, 8);
        let hva = m.add_host(HostRegion::anonymous(0x2000).unwrap()).unwrap();
        // The region's second page at guest physical 0x20_0000.
        let plan = m.plan_gpa_map(hva + 0x1000, 0x20_0000, 0x1000, crate::memory::Prot::ALL).unwrap();
        m.commit(plan);
        let bytes: Vec<u8> = (0..0x1000u32).map(|i| (i * 13 + 1) as u8).collect();
        m.write(0x20_0000, &bytes).unwrap();
        let flat = PagingRegs { cr0: 0x11, cr4: 0, efer: 0, ..regs() };
        let at = 0x20_0020;
        let s = record(&m, flat, at, 0).expect("recorded");
        let w = s.reread(at, &flat, 0).expect("read again");
        assert_eq!(w, around(&m, flat, at));
        assert_eq!(w.after()[0], bytes[0x20]);
    }
}
