//! Whole-VM ELF core files of nvmm guests, for unmodified `gdb` and `lldb`.
//!
//! A core holds one thread per VCPU (in VCPU order, thread id = VCPU index
//! plus one) with its general-purpose registers (`NT_PRSTATUS`), its FXSAVE
//! image (`NT_PRFPREG`), its XSAVE image with XCR0 where Linux keeps it
//! (`NT_X86_XSTATE`, so debuggers show `$ymm` registers) and QEMU's
//! CPU-state note (control registers, descriptor tables, segment bases and
//! limits); and guest memory twice addressed without being written twice:
//! `p_paddr` is always the guest physical address, every translation of a
//! VCPU's page tables is a `PT_LOAD` at its guest virtual address, and the
//! physical ranges no translation covers are `PT_LOAD`s at `p_vaddr =
//! p_paddr`. Pages that hold nothing (never touched, or all zeros) are holes,
//! so the core of a large, mostly untouched guest is small on disk. More
//! than 65 534 segments use `PN_XNUM`.
//!
//! The writer is pure Rust over nvmm's state types ([`VcpuImage`]) and a
//! [`GuestMemory`]; [`WriteCore`] captures a stopped machine and writes it.
//!
//! ```no_run
//! use nvmm::{Nvmm, Prot};
//! use nvmm_coredump::WriteCore;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let nvmm = Nvmm::open()?;
//! let machine = nvmm.create_machine()?;
//! machine.map_anonymous(0, 16 << 20, Prot::ALL)?;
//! let mut vcpu = machine.create_vcpu(0)?;
//! // ... run the guest until it stops ...
//! let stats = machine.write_core_file(&mut [&mut vcpu], "guest.core")?;
//! println!("{} VCPU(s), {} bytes of memory", stats.vcpus, stats.data_written);
//! // gdb -c guest.core, lldb --core guest.core, nvmmctl core-info guest.core
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod image;
mod info;
mod layout;
mod memory;
mod notes;
mod write;

use std::fs::File;
use std::io::{Seek, Write};
use std::path::Path;

use nvmm::{Machine, Vcpu};

pub use image::{VcpuImage, capture_all};
pub use info::{CoreInfo, SegmentInfo, VcpuInfo, read_core};
pub use layout::{Layout, Load, plan};
pub use memory::{GuestMemory, MemoryArea, PAGE, VecMemory, populated_pages};
pub use notes::{NT_X86_XSTATE, PRSTATUS_SIZE, XSTATE_XCR0_OFFSET};
pub use write::{CoreStats, write_core};

/// Why a core could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fetching a VCPU's state failed.
    #[error("cannot read the VCPU state for the core: {0}")]
    Nvmm(#[from] nvmm::Error),
    /// The output could not be written or the core could not be read.
    #[error("core file I/O failed: {0} (check the path, the disk space and the permissions)")]
    Io(#[from] std::io::Error),
    /// Two VCPUs with one index were passed.
    #[error("VCPU {index} was passed twice (pass each VCPU of one machine once)")]
    DuplicateVcpu {
        /// The index.
        index: u32,
    },
    /// Guest memory changed under the writer (an area was unmapped).
    #[error("guest memory at {gpa:#x} could not be read (unmapped while the core was written?)")]
    Memory {
        /// The address.
        gpa: u64,
    },
    /// A synthetic memory area that is not whole pages or overlaps another.
    #[error("area of {size:#x} bytes at {gpa:#x}: areas are whole, non-overlapping pages")]
    Area {
        /// Its address.
        gpa: u64,
        /// Its size.
        size: u64,
    },
    /// The ELF structures could not be built.
    #[error("cannot build the ELF headers: {0}")]
    Elf(String),
    /// The file is not a core this crate can read.
    #[error("not an x86-64 ELF core: {why}")]
    NotACore {
        /// What is wrong.
        why: String,
    },
}

/// Writing a core of a [`Machine`].
pub trait WriteCore {
    /// Fetches every state component of `vcpus` (the machine's VCPUs, each
    /// once, stopped: call it from the thread that runs them, e.g. from an
    /// exit handler) and writes a core of them and of the machine's memory
    /// to `out`, which must be empty.
    fn write_core<W: Write + Seek>(&self, vcpus: &mut [&mut Vcpu], out: &mut W) -> Result<CoreStats, Error>;

    /// [`WriteCore::write_core`] to a new file at `path` (replaced if it
    /// exists).
    fn write_core_file(&self, vcpus: &mut [&mut Vcpu], path: impl AsRef<Path>) -> Result<CoreStats, Error> {
        let mut f = File::create(path)?;
        self.write_core(vcpus, &mut f)
    }
}

impl WriteCore for Machine {
    fn write_core<W: Write + Seek>(&self, vcpus: &mut [&mut Vcpu], out: &mut W) -> Result<CoreStats, Error> {
        let images = capture_all(vcpus)?;
        write_core(&images, self, out)
    }
}
