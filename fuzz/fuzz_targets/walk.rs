//! The MMU walker: on random page tables it never panics; on tables built
//! from random mappings it agrees with the mappings (the reference model).
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use nvmm::assist::mmu::{PagingMode, PagingRegs, PhysMemory, walk};
use nvmm::x86::paging::{PageTables, pte};

struct Ram(HashMap<u64, [u8; 4096]>);

impl PhysMemory for Ram {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> bool {
        for (i, b) in buf.iter_mut().enumerate() {
            let a = gpa.wrapping_add(i as u64);
            let Some(p) = self.0.get(&(a & !0xfff)) else { return false };
            *b = p[(a & 0xfff) as usize];
        }
        true
    }
}

fn word(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, x) in b.iter_mut().enumerate() {
        *x = d.get(at + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let mode = [PagingMode::Bits32, PagingMode::Pae, PagingMode::Level4, PagingMode::Level5][usize::from(data[0] % 4)];
    let (cr4, efer) = match mode {
        PagingMode::Bits32 => (1 << 4, 0),
        PagingMode::Pae => (1 << 5, 1 << 11),
        PagingMode::Level4 => (1 << 5, (1 << 11) | (1 << 10)),
        _ => ((1 << 5) | (1 << 12), (1 << 11) | (1 << 10)),
    };
    let phys_bits = 32 + data[1] % 21;
    if data[2] % 2 == 0 {
        // Raw: the input is the page-table memory.
        let mut ram = Ram(HashMap::new());
        for (i, chunk) in data[3..].chunks(4096).enumerate() {
            let mut p = [0u8; 4096];
            p[..chunk.len()].copy_from_slice(chunk);
            ram.0.insert(i as u64 * 0x1000, p);
        }
        let regs = PagingRegs {
            cr0: 1 << 31 | 1,
            cr3: word(data, 3) & 0x3000,
            cr4,
            efer,
            phys_bits,
            gib_pages: data[1] & 1 == 0,
        };
        for k in 0..8 {
            let _ = walk(&ram, &regs, word(data, 11 + 8 * k));
        }
        return;
    }
    // Model: mappings built with the page-table builder must translate.
    let mut t = PageTables::new(mode, 0x100_0000);
    let sizes: &[u64] = match mode {
        PagingMode::Bits32 => &[4096, 4 << 20],
        PagingMode::Pae => &[4096, 2 << 20],
        _ => &[4096, 2 << 20, 1 << 30],
    };
    let va_bits = match mode {
        PagingMode::Bits32 | PagingMode::Pae => 32,
        PagingMode::Level4 => 48,
        _ => 57,
    };
    let mut mapped = Vec::new();
    for rec in data[3..].chunks_exact(17) {
        let size = sizes[usize::from(rec[0]) % sizes.len()];
        let mut gva = word(rec, 1) & ((1u64 << va_bits) - 1) & !(size - 1);
        if va_bits > 32 && gva >> (va_bits - 1) != 0 {
            gva |= !((1u64 << va_bits) - 1);
        }
        let limit = if mode == PagingMode::Bits32 && size == 4096 { 1u64 << 32 } else { 1u64 << 40 };
        let gpa = (word(rec, 9) % limit) & !(size - 1);
        let flags = u64::from(rec[0] >> 4) & (pte::RW | pte::US);
        if mapped.iter().any(|&(g, s, _)| {
            u128::from(gva) < u128::from(g) + u128::from(s) && u128::from(g) < u128::from(gva) + u128::from(size)
        }) {
            continue;
        }
        if t.map(gva, gpa, size, flags).is_ok() {
            mapped.push((gva, size, gpa));
        }
    }
    let regs = PagingRegs { cr0: 1 << 31 | 1, cr3: t.cr3(), cr4, efer, phys_bits: 52, gib_pages: true };
    for &(gva, size, gpa) in &mapped {
        for off in [0, size / 2 + 5, size - 1] {
            let tr = walk(&t, &regs, gva + off).expect("a mapped address translates");
            assert_eq!(tr.gpa, gpa + off);
            assert_eq!(tr.page_size, size);
        }
    }
});
