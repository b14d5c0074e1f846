//! The I/O instruction behind an I/O exit: what NVMM's exit carries and
//! KVM's does not (string and REP flags, segment, address size, the next
//! RIP), and where the instruction is.
//!
//! KVM does not report where the instruction is. An IN, and an OUT it
//! intercepted, leave RIP on the instruction; an OUT or OUTS it emulated
//! (all string I/O, and all guest code on hosts that emulate it) has RIP
//! past it already. So the instruction at RIP is decoded, and when it is a
//! plain OUT matching the exit, the bytes before RIP too: only when an
//! OUT matching the exit also ends at RIP (an `out; out` pair) is the
//! answer ambiguous, and then KVM finishes the instruction without
//! entering the guest and RIP tells (it moved only if the OUT was not
//! done yet).

use super::Vcpu;
use crate::assist::io_insn::{IoInstruction, decode_io};
use crate::assist::mmu::PagingRegs;
use crate::backend::{Parts, VcpuBackend};
use crate::error::{Error, Result};
use crate::exit::record::ExitRecord;
use crate::vmem::{GuestView, Window, WindowSource};
use crate::x86::bits::rflags;
use crate::x86::mode::{CodeRegs, CpuMode};
use crate::x86::state::{Cr, Gpr, Gprs, Msr, State};

/// Where the I/O instruction of the last exit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IoSite {
    /// The instruction.
    pub(crate) insn: IoInstruction,
    /// Its address (RIP before it).
    pub(crate) start: u64,
    /// RIP after it (NVMM's `npc`).
    pub(crate) npc: u64,
    /// KVM already executed it (RIP past it, string registers advanced).
    pub(crate) advanced: bool,
}

/// The last I/O site decoded, kept for the next I/O exit: a VMM's port
/// accesses come from a few instructions executed again and again, and
/// decoding them (forwards, and backwards when KVM already executed the
/// OUT) is most of an I/O exit's user-space cost. Reused only when
/// everything the decode looked at is equal: the registers that place the
/// code (RIP, CS, CR0, CR3, CR4, EFER, which give its linear address, the
/// mode and the paging registers), the exit, the RDX port and RCX's zero
/// tests, and the guest bytes around RIP (read again at every exit through
/// [`Vcpu::code_source`](super::Vcpu), so changed code or page tables are
/// seen). Whenever a memo is kept, `code_source` is where its window came
/// from: a miss replaces both or drops the memo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IoSiteMemo {
    key: IoSiteKey,
    /// The guest bytes around RIP the site was decoded from.
    window: Window,
    site: IoSite,
}

/// What an I/O site's decode depends on besides the guest's bytes, as
/// compared at every I/O exit: RIP, CS's base, CR0, CR3, CR4, EFER, then
/// the small fields packed in one word (see [`IoSiteKey::of`]). Plain
/// words, compared without a branch per word.
#[derive(Clone, Copy, Debug, Eq)]
struct IoSiteKey([u64; 7]);

impl PartialEq for IoSiteKey {
    #[inline(always)]
    fn eq(&self, other: &IoSiteKey) -> bool {
        self.0.iter().zip(other.0.iter()).fold(0, |d, (a, b)| d | (a ^ b)) == 0
    }
}

impl IoSiteKey {
    /// The key of an I/O exit (`port`, `size`, `is_in`) with the code
    /// registers `code`, under the paging facts of the VCPU's CPUID.
    /// RCX counts only by its zero tests (CX, ECX, RCX: a REP count of each
    /// address size) and RDX only as DX (the port); the mode is what CS's
    /// attributes contribute.
    #[inline(always)]
    fn of(code: &CodeRegs, port: u16, size: u8, is_in: bool, phys_bits: u8, gib_pages: bool) -> IoSiteKey {
        let rcx = code.rcx;
        let count_zero = u64::from(rcx as u16 == 0) | u64::from(rcx as u32 == 0) << 1 | u64::from(rcx == 0) << 2;
        let small = count_zero
            | u64::from(code.rdx as u16) << 3
            | (code.mode() as u64) << 19
            | u64::from(port) << 22
            | u64::from(size) << 38
            | u64::from(is_in) << 46
            | u64::from(phys_bits) << 47
            | u64::from(gib_pages) << 55;
        IoSiteKey([code.rip, code.cs_base, code.cr0, code.cr3, code.cr4, code.efer, small])
    }
}

impl IoSite {
    /// Puts `g` back to before the instruction (when KVM executed it).
    pub(crate) fn rewind(&self, g: &mut Gprs) {
        g[Gpr::Rip] = self.start;
        if self.insn.string {
            // One element of OUTS was done: RSI moved, RCX counted it.
            let step = u64::from(self.insn.operand_size);
            let amask = crate::assist::decode::mask(self.insn.address_size);
            let merge = |old: u64, new: u64| (old & !amask) | (new & amask);
            let down = g[Gpr::Rflags] & rflags::DF != 0;
            let rsi = if down { g[Gpr::Rsi].wrapping_add(step) } else { g[Gpr::Rsi].wrapping_sub(step) };
            g[Gpr::Rsi] = merge(g[Gpr::Rsi], rsi);
            if self.insn.rep {
                g[Gpr::Rcx] = merge(g[Gpr::Rcx], g[Gpr::Rcx].wrapping_add(1));
            }
        }
    }
}

impl Vcpu {
    /// Decodes the instruction behind the last [`Exit::Io`](crate::Exit::Io):
    /// string and REP flags, segment, sizes, and the next RIP (NVMM's
    /// `npc`). Free of system calls once the VCPU's exits are read this way
    /// (KVM then copies the registers out at every exit), but for an
    /// `out; out` pair, where KVM finishes the instruction first to tell
    /// which of the two exited.
    pub fn io_instruction(&mut self) -> Result<(IoInstruction, u64)> {
        if !matches!(self.last, ExitRecord::Io { .. }) {
            return Err(Error::WrongExit { what: "io_instruction", expected: "an I/O exit" });
        }
        let site = self.io_site()?;
        Ok((site.insn, site.npc))
    }

    /// The paging registers of `state`, for the walker.
    pub(super) fn paging_of(&self, s: &State) -> PagingRegs {
        self.paging(s.crs[Cr::Cr0], s.crs[Cr::Cr3], s.crs[Cr::Cr4], s.msrs[Msr::Efer])
    }

    /// The paging registers of `code`, for the walker.
    pub(super) fn paging_of_code(&self, code: &CodeRegs) -> PagingRegs {
        self.paging(code.cr0, code.cr3, code.cr4, code.efer)
    }

    /// These control registers and EFER with what this VCPU's CPUID says
    /// about physical addresses and 1 GiB pages.
    fn paging(&self, cr0: u64, cr3: u64, cr4: u64, efer: u64) -> PagingRegs {
        PagingRegs { cr0, cr3, cr4, efer, phys_bits: self.conf.phys_bits, gib_pages: self.conf.gib_pages }
    }

    /// Where the I/O instruction of the last (or queued) I/O exit is;
    /// decoded once per exit.
    #[inline]
    pub(super) fn io_site(&mut self) -> Result<IoSite> {
        if let Some(f) = self.inflight.as_ref()
            && f.site_known
            && let Some(site) = self.inflight_site
        {
            return Ok(site);
        }
        self.io_site_of_exit()
    }

    /// [`Vcpu::io_site`] the first time for an exit: the memo's, or
    /// decoded.
    #[inline(never)]
    fn io_site_of_exit(&mut self) -> Result<IoSite> {
        // (Not `ok_or`: its error would be built, and dropped, at every call.)
        let Some(f) = self.inflight.as_ref() else {
            return Err(Error::WrongExit { what: "io_instruction", expected: "an I/O exit" });
        };
        let ExitRecord::Io { port, size, is_in, .. } = f.exit else {
            return Err(Error::WrongExit { what: "io_instruction", expected: "an I/O exit" });
        };
        let code = self.backend.code_regs()?;
        let key = IoSiteKey::of(&code, port, size, is_in, self.conf.phys_bits, self.conf.gib_pages);
        let generation = self.machine.memory_generation();
        let site = match self.memo_site(key, generation) {
            Some(site) => site,
            None => {
                crate::hint::cold_path();
                self.io_site_missed(key, (port, size, is_in), generation)?
            }
        };
        if let Some(f) = self.inflight.as_mut() {
            f.site_known = true;
            self.inflight_site = Some(site);
        }
        Ok(site)
    }

    /// The memo's site, if it was decoded under `key` from bytes that the
    /// guest still has there (memory map at `generation`).
    #[inline(always)]
    fn memo_site(&self, key: IoSiteKey, generation: u64) -> Option<IoSite> {
        let (Some(m), Some(s)) = (self.io_memo.as_ref(), self.code_source.as_ref()) else {
            crate::hint::cold_path();
            return None;
        };
        // The key equal, the source describes the same address under the
        // same paging registers (see `IoSiteMemo`).
        (m.key == key && s.holds(generation, &m.window)).then_some(m.site)
    }

    /// Decodes the I/O site of `exit` (memo key `key`) when the memo did
    /// not hold it, and keeps it as the memo when the bytes decided it.
    /// (The code registers are read again here: passing them in would make
    /// every exit convert CS's attributes whole, where the key needs two
    /// bits of them.)
    #[inline(never)]
    fn io_site_missed(&mut self, key: IoSiteKey, exit: (u16, u8, bool), generation: u64) -> Result<IoSite> {
        // Dropped first: the window's source is replaced below, and a
        // decode that fails must not leave the memo beside another source.
        self.io_memo = None;
        let code = self.backend.code_regs()?;
        let linear = code.linear_rip();
        let regs = self.paging_of_code(&code);
        let window = self.code_window(linear, regs, generation);
        let (site, by_bytes) = self.locate(&code, exit, &window)?;
        // Kept only with the source its window came from (see `IoSiteMemo`).
        self.io_memo = by_bytes.then_some(IoSiteMemo { key, window, site });
        Ok(site)
    }

    /// The guest bytes around `linear`: read again from where the last
    /// window was found while that still holds, else through the walker
    /// (recording where they came from).
    #[inline(never)]
    fn code_window(&mut self, linear: u64, regs: PagingRegs, generation: u64) -> Window {
        if let Some(w) = self.code_source.as_ref().and_then(|s| s.reread(linear, &regs, generation)) {
            return w;
        }
        // The generation read before the map: if the map changes in
        // between, the record carries the older one and is not used.
        let mem = self.machine.memory();
        let view = GuestView::new(&mem, regs);
        let w = view.around(linear);
        self.code_source = WindowSource::record(&view, linear, &w, generation);
        w
    }

    /// Decodes the I/O instruction the exit `(port, size, is_in)` came
    /// from (registers `code`), at RIP or ending there, in the window `w`
    /// of the bytes around RIP; with whether the bytes decided it
    /// (an `out; out` pair is decided by KVM's pending work instead).
    #[inline(never)]
    fn locate(&mut self, code: &CodeRegs, (port, size, is_in): (u16, u8, bool), w: &Window) -> Result<(IoSite, bool)> {
        let (rip, rcx, dx, mode) = (code.rip, code.rcx, code.rdx as u16, code.mode());
        let matches = |d: &IoInstruction| {
            d.is_in == is_in && d.operand_size == size && d.port_immediate.map_or(dx == port, |p| u16::from(p) == port)
        };
        let at_rip = decode_io(w.after(), mode).ok().filter(|d| matches(d));
        let needs_back = match at_rip {
            None => !is_in,
            Some(d) if d.string => !(is_in || (d.rep && rep_count(rcx, &d) != 0)),
            Some(_) => !is_in && ends_with_out(w.before(), port),
        };
        let ending = if needs_back { ending_at(w.before(), mode, &matches) } else { None };
        Ok(match (at_rip, ending) {
            // KVM stopped before the instruction (an IN, an intercepted
            // OUT, a REP OUTS with elements left).
            (Some(d), None) => {
                let site = IoSite {
                    insn: d,
                    start: rip,
                    npc: mode.advance(rip, d.length.into()),
                    advanced: d.string && !is_in,
                };
                (site, true)
            }
            // KVM executed it: it ends at RIP.
            (None, Some(d)) => {
                let start = mode.advance(rip, u64::from(d.length).wrapping_neg());
                (IoSite { insn: d, start, npc: rip, advanced: true }, true)
            }
            (Some(d), Some(before)) => (self.disambiguate(d, before, rip, mode)?, false),
            (None, None) => return Err(Error::Unsupported { what: "locating the I/O instruction behind the exit" }),
        })
    }

    /// An OUT at RIP and one ending at RIP both match the exit: KVM
    /// finishes the pending one, and RIP moves only if it was the first.
    fn disambiguate(&mut self, at: IoInstruction, before: IoInstruction, rip: u64, mode: CpuMode) -> Result<IoSite> {
        self.finish_inflight("locating the I/O instruction")?;
        let after = self.raw_state(Parts::GPRS)?.gprs[Gpr::Rip];
        Ok(if after != rip {
            IoSite { insn: at, start: rip, npc: after, advanced: true }
        } else {
            IoSite {
                insn: before,
                start: mode.advance(rip, u64::from(before.length).wrapping_neg()),
                npc: rip,
                advanced: true,
            }
        })
    }
}

/// RCX (or ECX, CX by address size) as a REP string instruction counts it.
fn rep_count(rcx: u64, d: &IoInstruction) -> u64 {
    rcx & crate::assist::decode::mask(d.address_size)
}

/// Whether `before` (the bytes before RIP) can end with an OUT to `port`:
/// `EE`/`EF` (port in DX) or `E6`/`E7 port`. A cheap filter before the
/// backwards decode.
fn ends_with_out(before: &[u8], port: u16) -> bool {
    match before {
        [.., a, b] => matches!(b, 0xee | 0xef) || (matches!(a, 0xe6 | 0xe7) && u16::from(*b) == port),
        [b] => matches!(b, 0xee | 0xef),
        [] => false,
    }
}

/// The I/O instruction matching the exit that ends right at the end of
/// `window` (the bytes before RIP).
fn ending_at(window: &[u8], mode: CpuMode, matches: &dyn Fn(&IoInstruction) -> bool) -> Option<IoInstruction> {
    let back = window.len();
    // The opcode is the last byte (port in DX, string forms) or the one
    // before it (port immediate); prefixes may precede it.
    for opcode_at in [back.wrapping_sub(1), back.wrapping_sub(2)] {
        let Some(&op) = window.get(opcode_at) else { continue };
        let fits =
            if opcode_at + 1 == back { matches!(op, 0xec..=0xef | 0x6c..=0x6f) } else { matches!(op, 0xe4..=0xe7) };
        if !fits {
            continue;
        }
        let mut first = opcode_at;
        while first > 0 && is_prefix(window[first - 1], mode) {
            first -= 1;
        }
        let decodes = |start: usize| {
            decode_io(&window[start..back], mode).ok().filter(|d| usize::from(d.length) == back - start && matches(d))
        };
        // Before INS and OUTS prefixes matter (segment, address size, REP)
        // and are taken, the longest run first. Before IN and OUT they
        // are redundant but for 66, which the size check already demands,
        // while a byte there that looks like a prefix is often the end of
        // the previous instruction (`mov al,'e'` is B0 65, and 65 is GS):
        // the shortest match first.
        let found = if matches!(op, 0x6c..=0x6f) {
            (first..=opcode_at).find_map(decodes)
        } else {
            (first..=opcode_at).rev().find_map(decodes)
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Whether `b` can be a prefix of an I/O instruction.
fn is_prefix(b: u8, mode: CpuMode) -> bool {
    matches!(b, 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65)
        || (mode == CpuMode::Bits64 && (0x40..=0x4f).contains(&b))
}

#[cfg(test)]
mod tests;
