//! Snapshots: the complete state of VCPUs (and, in `machine.rs` of this
//! module, of whole machines), captured bit-exactly and restored.
//!
//! A [`VcpuSnapshot`] holds what the kernel keeps for the VCPU, component
//! by component as the kernel's own bytes (CPUID, MP state, registers,
//! special registers with the hidden segment parts, XSAVE, XCRs, debug
//! registers, events with pending exceptions, interrupts, NMIs and the
//! interrupt shadow, the TSC frequency, and every MSR the kernel lists that
//! the VCPU can read), plus what NVMM's model adds on top (the window exits
//! armed, TPR exits, the TPR last seen). It is taken between runs: any
//! instruction an I/O or memory exit left half done is finished first.
//!
//! A [`MachineSnapshot`] adds the guest memory map and guest memory,
//! frozen in a sealed memfd: [`Machine::reset_to`](crate::Machine::reset_to)
//! puts a machine back in place, [`Nvmm::fork`](crate::Nvmm::fork) makes
//! new machines that map it copy-on-write.
//!
//! ```no_run
//! use nvmm::{Nvmm, Prot};
//! # fn main() -> nvmm::Result<()> {
//! let nvmm = Nvmm::open()?;
//! let machine = nvmm.create_machine()?;
//! machine.map_anonymous(0, 16 << 20, Prot::ALL)?;
//! let mut vcpu = machine.create_vcpu(0)?;
//! // ... run the guest to a point worth keeping ...
//! let saved = machine.snapshot(&mut [&mut vcpu])?;
//! // Many isolated copies, sharing memory until they write it:
//! let (child, mut child_vcpus) = nvmm.fork(&saved)?;
//! // ... run `child_vcpus`; then back to the snapshot, in place:
//! child.reset_to(&mut [&mut child_vcpus[0]], &saved)?;
//! # Ok(()) }
//! ```

mod cpu;
mod file;
mod machine;
mod pool;

pub(crate) use file::fnv1a;
pub use file::{FORMAT_VERSION, MAGIC};
pub use machine::{AreaImage, MachineSnapshot};
pub use pool::{Fork, ForkPool};

/// One component of a VCPU's kernel state, in the order it is restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Component {
    /// The CPUID table.
    Cpuid,
    /// Running, halted, waiting for SIPI...
    MpState,
    /// General-purpose registers, RIP, RFLAGS.
    Regs,
    /// Segments with their hidden parts, descriptor tables, CR0–4, CR8,
    /// EFER, APIC base, the pending-interrupt bitmap.
    Sregs,
    /// The XSAVE area (x87, SSE, AVX and the rest the host has).
    Xsave,
    /// XCR0.
    Xcrs,
    /// DR0–3, DR6, DR7.
    DebugRegs,
    /// Pending exception, interrupt and NMI, NMI masking, interrupt shadow.
    Events,
    /// The guest TSC frequency in kHz.
    TscKhz,
}

impl Component {
    /// Every component, in restore order.
    pub const ALL: [Component; 9] = [
        Component::Cpuid,
        Component::MpState,
        Component::Regs,
        Component::Sregs,
        Component::Xsave,
        Component::Xcrs,
        Component::DebugRegs,
        Component::Events,
        Component::TscKhz,
    ];
}

/// What the kernel holds for a VCPU: components as the kernel's bytes,
/// and the MSRs as (index, value), the TSC first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KernelState {
    pub(crate) components: Vec<(Component, Vec<u8>)>,
    pub(crate) msrs: Vec<(u32, u64)>,
}

impl KernelState {
    /// The bytes of component `c`.
    pub(crate) fn component(&self, c: Component) -> Option<&[u8]> {
        self.components.iter().find(|(k, _)| *k == c).map(|(_, b)| b.as_slice())
    }
}

/// What NVMM's model keeps for a VCPU beyond the kernel's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct ModelState {
    pub(crate) int_window: bool,
    pub(crate) nmi_window: bool,
    pub(crate) tpr_exit: bool,
    pub(crate) last_tpr: u8,
}

/// A VCPU's complete state ([`Vcpu::snapshot`](crate::Vcpu::snapshot)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuSnapshot {
    pub(crate) id: u32,
    pub(crate) kernel: KernelState,
    pub(crate) model: ModelState,
}

impl VcpuSnapshot {
    /// The VCPU id it was taken from.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The bytes of component `c` as the kernel gave them (`None` when the
    /// kernel has no such state, like the TSC frequency on some hosts).
    pub fn component(&self, c: Component) -> Option<&[u8]> {
        self.kernel.component(c)
    }

    /// Every MSR, as (index, value), in restore order (the TSC first).
    pub fn msrs(&self) -> &[(u32, u64)] {
        &self.kernel.msrs
    }
}
