//! The snapshot file: a small versioned format of nvmm's own.
//!
//! ```text
//! offset 0   magic "NVMMSNAP", format version (u32), metadata length (u32),
//!            metadata FNV-1a 64 (u64), memory offset (u64), memory length (u64)
//!            -- 40 bytes, little-endian
//! offset 40  metadata: CPU vendor (12 bytes), CPUID digest (u64: FNV-1a of the
//!            host's supported CPUID feature words), counts of VCPUs, regions
//!            and areas (u32 each); per VCPU its id (u32), NVMM's model state
//!            (4 bytes), components (count u32; tag u32, length u32, bytes),
//!            MSRs (count u32; index u32, value u64); per region its offset
//!            in memory and size (u64, u64); per area gpa, size (u64, u64),
//!            prot, region (u32, u32), offset in the region (u64)
//! memory     at a page-aligned offset: the regions' bytes, raw, holes kept
//!            (a sparse file), so that loading maps them MAP_PRIVATE whatever
//!            the size
//! ```
//!
//! Loading checks everything before using it: a wrong magic, another
//! version, a metadata checksum that does not match, counts or lengths
//! that run past the metadata, a file shorter than its memory, a CPU of
//! another vendor or without features the snapshot's CPUID offers are
//! errors, never a crash.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use super::machine::{AreaImage, MachineSnapshot, RegionImage};
use super::{Component, KernelState, ModelState, VcpuSnapshot};
use crate::error::{Error, Result};
use crate::memory::{PAGE_SIZE, Prot};
use crate::os::FrozenMemory;

/// The file's magic.
pub const MAGIC: &[u8; 8] = b"NVMMSNAP";
/// The format version this library writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the fixed header.
const HEADER: usize = 40;

/// What a snapshot file says about the CPU it was taken on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CpuTag {
    pub(crate) vendor: [u8; 12],
    pub(crate) digest: u64,
}

/// FNV-1a, 64 bits.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn bad(why: impl Into<String>) -> Error {
    Error::InvalidSnapshot { why: why.into() }
}

fn component_tag(c: Component) -> u32 {
    Component::ALL.iter().position(|&k| k == c).map_or(u32::MAX, |i| i as u32)
}

/// The metadata of `s`, CPU tag first.
fn metadata(s: &MachineSnapshot, cpu: CpuTag) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&cpu.vendor);
    m.extend_from_slice(&cpu.digest.to_le_bytes());
    for n in [s.vcpus.len(), s.regions.len(), s.areas.len()] {
        m.extend_from_slice(&(n as u32).to_le_bytes());
    }
    for v in &s.vcpus {
        m.extend_from_slice(&v.id.to_le_bytes());
        m.extend_from_slice(&[
            u8::from(v.model.int_window),
            u8::from(v.model.nmi_window),
            u8::from(v.model.tpr_exit),
            v.model.last_tpr,
        ]);
        m.extend_from_slice(&(v.kernel.components.len() as u32).to_le_bytes());
        for (c, b) in &v.kernel.components {
            m.extend_from_slice(&component_tag(*c).to_le_bytes());
            m.extend_from_slice(&(b.len() as u32).to_le_bytes());
            m.extend_from_slice(b);
        }
        m.extend_from_slice(&(v.kernel.msrs.len() as u32).to_le_bytes());
        for (i, val) in &v.kernel.msrs {
            m.extend_from_slice(&i.to_le_bytes());
            m.extend_from_slice(&val.to_le_bytes());
        }
    }
    for r in &s.regions {
        m.extend_from_slice(&r.offset.to_le_bytes());
        m.extend_from_slice(&r.size.to_le_bytes());
    }
    for a in &s.areas {
        m.extend_from_slice(&a.gpa.to_le_bytes());
        m.extend_from_slice(&a.size.to_le_bytes());
        m.extend_from_slice(&a.prot.bits().to_le_bytes());
        m.extend_from_slice(&(a.region as u32).to_le_bytes());
        m.extend_from_slice(&a.offset.to_le_bytes());
    }
    m
}

/// Writes `s` to `out` (a new file: its memory stays sparse).
pub(crate) fn save(s: &MachineSnapshot, cpu: CpuTag, out: &mut File) -> Result<()> {
    let io = |e| Error::kvm("writing the snapshot file", e);
    let meta = metadata(s, cpu);
    let memory_offset = ((HEADER + meta.len()) as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let memory_len: u64 = s.regions.iter().map(|r| r.offset + r.size).max().unwrap_or(0);
    let mut head = Vec::with_capacity(HEADER);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    head.extend_from_slice(&fnv1a(&meta).to_le_bytes());
    head.extend_from_slice(&memory_offset.to_le_bytes());
    head.extend_from_slice(&memory_len.to_le_bytes());
    out.set_len(0).map_err(io)?;
    out.write_all(&head).map_err(io)?;
    out.write_all(&meta).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    for (start, len) in s.memory.data_runs(memory_len)? {
        let mut at = start;
        while at < start + len {
            let n = ((start + len - at) as usize).min(buf.len());
            s.memory.read_at(at, &mut buf[..n])?;
            out.seek(SeekFrom::Start(memory_offset + at)).map_err(io)?;
            out.write_all(&buf[..n]).map_err(io)?;
            at += n as u64;
        }
    }
    out.set_len(memory_offset + memory_len).map_err(io)?;
    out.flush().map_err(io)
}

/// A bounds-checked reader of the metadata.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end =
            self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| bad("the metadata is truncated"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| bad("u32"))?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| bad("u64"))?))
    }

    /// A count of items at least `min` bytes each that must fit in what
    /// is left.
    fn count(&mut self, min: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.b.len() - self.at {
            return Err(bad(format!("a count of {n} does not fit in the metadata")));
        }
        Ok(n)
    }
}

/// Reads a snapshot file: the metadata parsed and checked, the memory
/// left in the file (mapped copy-on-write by machines made from it).
pub(crate) fn load(path: &Path) -> Result<(MachineSnapshot, CpuTag)> {
    let file = File::open(path).map_err(|e| bad(format!("cannot open {}: {e}", path.display())))?;
    let file_len = file.metadata().map_err(|e| bad(format!("cannot stat {}: {e}", path.display())))?.len();
    let mut head = [0u8; HEADER];
    read_exact_at(&file, &mut head, 0).map_err(|_| bad("the file is shorter than its header"))?;
    if &head[..8] != MAGIC {
        return Err(bad(format!("{} is not an nvmm snapshot (no NVMMSNAP magic)", path.display())));
    }
    let u32_at = |o: usize| u32::from_le_bytes(head[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |o: usize| u64::from_le_bytes(head[o..o + 8].try_into().unwrap_or([0; 8]));
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "format version {version}; this library reads version {FORMAT_VERSION}: take the snapshot again"
        )));
    }
    let (meta_len, digest, memory_offset, memory_len) = (u32_at(12) as usize, u64_at(16), u64_at(24), u64_at(32));
    if (HEADER + meta_len) as u64 > file_len {
        return Err(bad("the file is shorter than its metadata (truncated?)"));
    }
    if memory_offset % PAGE_SIZE != 0 || memory_offset < (HEADER + meta_len) as u64 {
        return Err(bad("the memory offset is not a page boundary past the metadata"));
    }
    if memory_offset.checked_add(memory_len).is_none_or(|end| end > file_len) {
        return Err(bad("the file is shorter than its memory (truncated?)"));
    }
    let mut meta = vec![0u8; meta_len];
    read_exact_at(&file, &mut meta, HEADER as u64).map_err(|_| bad("cannot read the metadata"))?;
    if fnv1a(&meta) != digest {
        return Err(bad("the metadata checksum does not match (corrupt file)"));
    }
    let mut r = Reader { b: &meta, at: 0 };
    let vendor: [u8; 12] = r.take(12)?.try_into().map_err(|_| bad("vendor"))?;
    let cpu = CpuTag { vendor, digest: r.u64()? };
    let nvcpus = r.count(16)?;
    let nregions = r.count(16)?;
    let nareas = r.count(32)?;
    let mut vcpus = Vec::with_capacity(nvcpus);
    for _ in 0..nvcpus {
        let id = r.u32()?;
        let m = r.take(4)?;
        let model = ModelState { int_window: m[0] != 0, nmi_window: m[1] != 0, tpr_exit: m[2] != 0, last_tpr: m[3] };
        let ncomp = r.count(8)?;
        let mut components = Vec::with_capacity(ncomp);
        for _ in 0..ncomp {
            let tag = r.u32()? as usize;
            let c = *Component::ALL.get(tag).ok_or_else(|| bad(format!("unknown component {tag}")))?;
            let len = r.u32()? as usize;
            components.push((c, r.take(len)?.to_vec()));
        }
        let nmsrs = r.count(12)?;
        let mut msrs = Vec::with_capacity(nmsrs);
        for _ in 0..nmsrs {
            msrs.push((r.u32()?, r.u64()?));
        }
        vcpus.push(VcpuSnapshot { id, kernel: KernelState { components, msrs }, model });
    }
    let mut regions = Vec::with_capacity(nregions);
    for _ in 0..nregions {
        let (offset, size) = (r.u64()?, r.u64()?);
        if offset % PAGE_SIZE != 0 || offset.checked_add(size).is_none_or(|e| e > memory_len) {
            return Err(bad("a memory region lies outside the file's memory"));
        }
        regions.push(RegionImage { offset: memory_offset + offset, size });
    }
    let mut areas = Vec::with_capacity(nareas);
    for _ in 0..nareas {
        let (gpa, size) = (r.u64()?, r.u64()?);
        let prot = Prot::from_bits(r.u32()?).map_err(|_| bad("an area's protection is invalid"))?;
        let region = r.u32()? as usize;
        let offset = r.u64()?;
        let fits = regions.get(region).is_some_and(|g| offset.checked_add(size).is_some_and(|e| e <= g.size));
        if !fits || gpa % PAGE_SIZE != 0 || size % PAGE_SIZE != 0 || offset % PAGE_SIZE != 0 {
            return Err(bad("a memory area does not fit its region"));
        }
        areas.push(AreaImage { gpa, size, prot, region, offset });
    }
    if r.at != meta.len() {
        return Err(bad("trailing bytes after the metadata"));
    }
    let memory = Arc::new(FrozenMemory::from_file(file));
    Ok((MachineSnapshot { vcpus, regions, areas, memory, cpu }, cpu))
}

fn read_exact_at(f: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    f.read_exact_at(buf, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden file pins format version 1: a synthetic snapshot (one
    /// VCPU, one region mapped twice, a few bytes of memory) written now
    /// must equal it byte for byte, and reading it must give the snapshot
    /// back.
    const GOLDEN: &[u8] = include_bytes!("../../tests/golden/snapshot-v1.nvmmsnap");

    fn synthetic() -> MachineSnapshot {
        let memory = FrozenMemory::memfd(8192).unwrap();
        memory.write_at(0, b"hello").unwrap();
        memory.write_at(4096 + 100, b"world").unwrap();
        memory.seal().unwrap();
        let vcpu = VcpuSnapshot {
            id: 0,
            kernel: KernelState {
                components: vec![
                    (Component::Regs, (0..144u8).collect()),
                    (Component::TscKhz, 2_000_000u32.to_le_bytes().to_vec()),
                ],
                msrs: vec![(0x10, 5), (0xc000_0080, 0x500)],
            },
            model: ModelState { int_window: true, nmi_window: false, tpr_exit: true, last_tpr: 3 },
        };
        MachineSnapshot {
            vcpus: vec![vcpu],
            regions: vec![RegionImage { offset: 0, size: 8192 }],
            areas: vec![
                AreaImage { gpa: 0, size: 4096, prot: Prot::ALL, region: 0, offset: 0 },
                AreaImage { gpa: 0x10000, size: 4096, prot: Prot::READ, region: 0, offset: 4096 },
            ],
            memory: Arc::new(memory),
            cpu: CpuTag { vendor: *b"GenuineTest\0", digest: 0x1122_3344 },
        }
    }

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("nvmm-snapshot-{}-{name}", std::process::id()))
    }

    #[test]
    fn the_format_is_the_golden_file() {
        let s = synthetic();
        let path = temp("golden");
        save(&s, s.cpu, &mut File::create(&path).unwrap()).unwrap();
        let written = std::fs::read(&path).unwrap();
        if std::env::var_os("NVMM_BLESS").is_some() {
            std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/snapshot-v1.nvmmsnap"), &written)
                .unwrap();
        }
        assert!(written == GOLDEN, "the snapshot format changed: bump FORMAT_VERSION and bless a new golden file");
        let (back, cpu) = load(&path).unwrap();
        assert_eq!(cpu, s.cpu);
        assert_eq!(back.vcpus, s.vcpus);
        assert_eq!(back.areas, s.areas);
        let mut b = [0u8; 5];
        back.read_gpa(0, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        back.read_gpa(0x10000 + 100, &mut b).unwrap();
        assert_eq!(&b, b"world");
        assert_eq!(back.read_gpa(0x20000, &mut b).unwrap_err().errno(), libc::ENOENT);
        let _ = std::fs::remove_file(path);
    }

    /// Every damaged file is an error with a reason, never a crash:
    /// truncated anywhere, any byte of the header or metadata flipped.
    #[test]
    fn damaged_files_are_errors() {
        let path = temp("damaged");
        let golden = GOLDEN.to_vec();
        let meta_end = HEADER + u32::from_le_bytes(golden[12..16].try_into().unwrap()) as usize;
        let expect_error = |bytes: &[u8], what: &str| {
            std::fs::write(&path, bytes).unwrap();
            match load(&path) {
                Err(e) => assert_eq!(e.errno(), libc::EINVAL, "{what}: {e}"),
                Ok(_) => panic!("{what}: loaded"),
            }
        };
        for len in (0..meta_end).chain([meta_end + 1, golden.len() - 1]) {
            expect_error(&golden[..len], &format!("truncated to {len}"));
        }
        for i in 0..meta_end {
            let mut b = golden.clone();
            b[i] ^= 0x40;
            // The memory offset may move within the zero padding and still
            // be valid; everything else must be refused.
            if (24..32).contains(&i) {
                continue;
            }
            expect_error(&b, &format!("byte {i} flipped"));
        }
        let mut b = golden.clone();
        b[8] = 2;
        std::fs::write(&path, &b).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("version 2"));
        let _ = std::fs::remove_file(path);
    }
}
