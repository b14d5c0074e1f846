//! Writing the ELF file: the headers and notes through `object`'s ELF
//! writer, then guest memory page by page, leaving pages that hold
//! nothing as holes.

use std::io::{Seek, SeekFrom, Write};

use object::Endianness;
use object::elf;
use object::write::WritableBuffer;
use object::write::elf::{FileHeader, ProgramHeader, Writer};

use crate::Error;
use crate::image::VcpuImage;
use crate::layout::{Layout, plan};
use crate::memory::{GuestMemory, PAGE};
use crate::notes;

/// What a written core holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// VCPUs (threads).
    pub vcpus: usize,
    /// `PT_LOAD` program headers.
    pub loads: usize,
    /// Guest memory bytes written (pages holding data).
    pub data_written: u64,
    /// The file's length (holes included).
    pub file_len: u64,
}

/// The header part of the file, built in memory (`object`'s writer
/// reserves the whole file's length first; the memory after the headers is
/// written separately, so that reservation is ignored).
#[derive(Default)]
struct HeaderBuffer(Vec<u8>);

impl WritableBuffer for HeaderBuffer {
    fn reserve(&mut self, _size: u64) -> Result<(), ()> {
        Ok(())
    }
    fn write_bytes(&mut self, val: &[u8]) {
        self.0.extend_from_slice(val);
    }
}

/// The name the core gives its "process".
const PROCESS_NAME: &str = "nvmm-guest";

/// ELF header, program headers (with the section header `PN_XNUM`
/// needs), and notes; the offset where memory data starts.
fn headers(layout: &Layout, notes: &[u8]) -> Result<(Vec<u8>, u64), Error> {
    let elf_err = |e: object::write::Error| Error::Elf(e.to_string());
    let phnum = u32::try_from(layout.loads.len() + 1).map_err(|_| Error::Elf("too many program headers".into()))?;
    let mut buf = HeaderBuffer::default();
    let mut w = Writer::new(Endianness::Little, true, &mut buf);
    w.reserve_file_header();
    w.reserve_program_headers(phnum);
    let xnum = phnum >= u32::from(elf::PN_XNUM);
    if xnum {
        w.reserve_null_section_index();
        w.reserve_section_headers();
    }
    let note_offset = w.reserve(notes.len() as u64, 4);
    let data_start = w.reserved_len().next_multiple_of(PAGE);
    w.reserve_until(data_start + layout.data_len);
    w.write_file_header(&FileHeader {
        os_abi: elf::ELFOSABI_NONE,
        abi_version: 0,
        e_type: elf::ET_CORE,
        e_machine: elf::EM_X86_64,
        e_entry: 0,
        e_flags: elf::FileFlags(0),
    })
    .map_err(elf_err)?;
    w.write_align_program_headers();
    w.write_program_header(&ProgramHeader {
        p_type: elf::PT_NOTE,
        p_flags: elf::PF_R,
        p_offset: note_offset,
        p_vaddr: 0,
        p_paddr: 0,
        p_filesz: notes.len() as u64,
        p_memsz: 0,
        p_align: 4,
    });
    for l in &layout.loads {
        w.write_program_header(&ProgramHeader {
            p_type: elf::PT_LOAD,
            p_flags: elf::ProgramFlags(l.flags),
            p_offset: data_start + l.data_offset,
            p_vaddr: l.vaddr,
            p_paddr: l.paddr,
            p_filesz: l.size,
            p_memsz: l.size,
            p_align: PAGE,
        });
    }
    if xnum {
        w.write_null_section_header();
    }
    w.write_align(4);
    debug_assert_eq!(w.len(), note_offset);
    w.write(notes);
    drop(w);
    Ok((buf.0, data_start))
}

/// Writes an ELF core of `vcpus` and `mem` to `out`, which must be empty
/// (a new file): pages that hold no data are skipped with a seek, so on a
/// file they are holes that take no disk space and read as zeros.
pub fn write_core<W: Write + Seek>(
    vcpus: &[VcpuImage],
    mem: &dyn GuestMemory,
    out: &mut W,
) -> Result<CoreStats, Error> {
    let areas = mem.areas();
    let layout = plan(&areas, vcpus);
    let notes = notes::all(vcpus, PROCESS_NAME);
    let (head, data_start) = headers(&layout, &notes)?;
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&head)?;
    let mut data_written = 0;
    let mut last_end = head.len() as u64;
    let mut chunk = vec![0u8; 1 << 20];
    for &(area, base) in &layout.areas {
        for (gpa, len) in mem.populated(&area) {
            let mut at = gpa;
            while at < gpa + len {
                let n = (gpa + len - at).min(chunk.len() as u64) as usize;
                let buf = &mut chunk[..n];
                if !mem.read(at, buf) {
                    return Err(Error::Memory { gpa: at });
                }
                let file_at = data_start + base + (at - area.gpa);
                for (s, e) in data_runs(buf) {
                    out.seek(SeekFrom::Start(file_at + s as u64))?;
                    out.write_all(&buf[s..e])?;
                    data_written += (e - s) as u64;
                    last_end = last_end.max(file_at + e as u64);
                }
                at += n as u64;
            }
        }
    }
    let file_len = data_start + layout.data_len;
    if last_end < file_len {
        // The file must reach its last segment even when that ends in a hole.
        out.seek(SeekFrom::Start(file_len - 1))?;
        out.write_all(&[0])?;
    }
    out.flush()?;
    Ok(CoreStats { vcpus: vcpus.len(), loads: layout.loads.len(), data_written, file_len })
}

/// Runs of pages of `buf` that are not all zeros, as byte ranges.
fn data_runs(buf: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, page) in buf.chunks(PAGE as usize).enumerate() {
        if page.iter().all(|&b| b == 0) {
            continue;
        }
        let (s, e) = (i * PAGE as usize, i * PAGE as usize + page.len());
        match runs.last_mut() {
            Some(r) if r.1 == s => r.1 = e,
            _ => runs.push((s, e)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages_are_holes() {
        let mut b = vec![0u8; 5 * PAGE as usize];
        b[PAGE as usize + 7] = 1;
        b[2 * PAGE as usize] = 1;
        b[4 * PAGE as usize + 4095] = 1;
        assert_eq!(data_runs(&b), vec![(4096, 3 * 4096), (4 * 4096, 5 * 4096)]);
    }
}
