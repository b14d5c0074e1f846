//! NetBSD's NVMM virtualization API on Linux KVM.
//!
//! NVMM's model in a few types: [`Nvmm`] (the connection to the kernel and
//! its [`Capability`]), [`Machine`] (a VM and its guest memory), [`Vcpu`]
//! (state by components, the run loop with typed [`Exit`]s, event
//! injection, configuration) and [`StopHandle`] (stop a running VCPU from
//! anywhere). Guest memory comes in NVMM's two steps: a host mapping
//! ([`Machine::hva_map_anonymous`]) then a guest physical mapping with a
//! protection ([`Machine::gpa_map`]).
//!
//! # Example: the calculator VM
//!
//! NVMM's first example: a real-mode guest adds two numbers.
//!
//! ```
//! # fn main() -> Result<(), nvmm::Error> {
//! # if !nvmm_testkit::kvm_available() { return Ok(()); }
//! use nvmm::{Exit, Gpr, Nvmm, Prot, StateMask};
//!
//! let nvmm = Nvmm::open()?;
//! let machine = nvmm.create_machine()?;
//! let mut vcpu = machine.create_vcpu(0)?;
//!
//! // One page of guest memory at 0xFFFF0000, where CS points in the RESET
//! // state, holding `add %eax,%ebx; hlt`.
//! let hva = machine.hva_map_anonymous(4096)?;
//! machine.gpa_map(hva, 0xFFFF_0000, 4096, Prot::READ | Prot::EXEC)?;
//! machine.write_gpa(0xFFFF_0000, &[0x01, 0xc3, 0xf4])?;
//!
//! vcpu.update(StateMask::GPRS, |s| {
//!     s.gprs[Gpr::Rip] = 0;
//!     s.gprs[Gpr::Rax] = 3;
//!     s.gprs[Gpr::Rbx] = 5;
//! })?;
//! loop {
//!     match vcpu.run()? {
//!         Exit::None => continue,
//!         Exit::Halted => break,
//!         other => panic!("unexpected exit: {other:?}"),
//!     }
//! }
//! vcpu.get_state(StateMask::GPRS)?;
//! assert_eq!(vcpu.state().gprs[Gpr::Rbx], 8);
//! # Ok(()) }
//! ```
//!
//! # Errors
//!
//! Every function validates its input and returns an [`Error`] whose
//! [`Error::errno`] is the errno NetBSD's libnvmm uses for the same failure.
//! Guest misbehaviour is an exit, never a panic.

pub mod assist;
mod backend;
mod breakpoints;
pub mod debug;
pub mod error;
pub mod exit;
mod hint;
mod machine;
pub mod memory;
pub mod netbsd;
mod os;
mod ready_vms;
pub mod registry;
pub mod snapshot;
mod system;
mod vcpu;
mod vmem;
pub mod x86;

pub use backend::BackendFacts;
pub use breakpoints::INT3;
pub use debug::{DebugEvent, DebugExit, GuestDebug, HwBreakpoint, WatchKind};
pub use error::{Error, Result};
pub use exit::{
    EmulationFailure, Exit, ExitState, InvalidExit, IoDirection, IoExit, MemAccess, MemoryExit, RdmsrExit, WrmsrExit,
};
pub use machine::Machine;
pub use memory::Prot;
pub use registry::MachineInfo;
pub use snapshot::{Component, ForkPool, MachineSnapshot, VcpuSnapshot};
pub use system::{
    CAP_ARCH_VCPU_CONF_CPUID, CAP_ARCH_VCPU_CONF_TPR, Capability, CapabilityArch, MAX_MACHINES, NVMM_KERN_VERSION,
    NVMM_USER_VERSION, Nvmm, Options,
};
pub use vcpu::{AssistOutcome, IoRequest, MemRequest, StopHandle, Unanswered, Vcpu, VcpuConf, VcpuHandle};
pub use vmem::{Transfer, WriteRights};
pub use x86::{Cr, Dr, Event, EventKind, Gpr, Msr, Seg, State, StateMask};
