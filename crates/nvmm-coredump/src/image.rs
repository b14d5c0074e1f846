//! What a core holds of each VCPU, and capturing it from a stopped machine.

use nvmm::assist::mmu::{Mapping, PagingRegs, mappings};
use nvmm::x86::bits::cr0;
use nvmm::x86::xsave::Xsave;
use nvmm::{Cr, Msr, State, StateMask, Vcpu};

use crate::Error;
use crate::memory::{GuestMemory, Phys};

/// One VCPU as a core records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuImage {
    /// The VCPU's index (its id): the core's thread `index + 1`.
    pub index: u32,
    /// Every state component.
    pub state: State,
    /// The XSAVE area (AVX and the other extended components).
    pub xsave: Xsave,
    /// The translations of its page tables (empty without paging): the
    /// core's virtual segments.
    pub mappings: Vec<Mapping>,
}

impl VcpuImage {
    /// A VCPU image from a state alone (synthetic guests, states saved
    /// elsewhere): the virtual mappings are found by walking the page tables
    /// `state` selects in `mem`, for a guest with `phys_bits` physical
    /// address bits and 1 GiB pages.
    pub fn from_state(index: u32, state: State, xsave: Xsave, mem: &dyn GuestMemory, phys_bits: u8) -> VcpuImage {
        let mappings = if state.crs[Cr::Cr0] & cr0::PG != 0 {
            let regs = PagingRegs {
                cr0: state.crs[Cr::Cr0],
                cr3: state.crs[Cr::Cr3],
                cr4: state.crs[Cr::Cr4],
                efer: state.msrs[Msr::Efer],
                phys_bits,
                gib_pages: true,
            };
            mappings(&Phys(mem), &regs)
        } else {
            Vec::new()
        };
        VcpuImage { index, state, xsave, mappings }
    }

    /// Fetches every state component of `vcpu`, its XSAVE area and, when
    /// paging is on, its page tables' translations.
    pub fn capture(vcpu: &mut Vcpu) -> Result<VcpuImage, Error> {
        vcpu.get_state(StateMask::ALL)?;
        let state = *vcpu.state();
        let xsave = vcpu.xsave().clone();
        let mappings = if state.crs[Cr::Cr0] & cr0::PG != 0 { vcpu.virtual_mappings()? } else { Vec::new() };
        Ok(VcpuImage { index: vcpu.id(), state, xsave, mappings })
    }
}

/// Captures `vcpus` (each once; any order): the VCPU images in index order.
pub fn capture_all(vcpus: &mut [&mut Vcpu]) -> Result<Vec<VcpuImage>, Error> {
    let mut images = Vec::with_capacity(vcpus.len());
    for v in vcpus.iter_mut() {
        images.push(VcpuImage::capture(v)?);
    }
    images.sort_by_key(|v| v.index);
    if let Some(w) = images.windows(2).find(|w| w[0].index == w[1].index) {
        return Err(Error::DuplicateVcpu { index: w[0].index });
    }
    Ok(images)
}
