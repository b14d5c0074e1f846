//! The x86 architecture model: VCPU state, XSAVE area, CPUID, events, the
//! RESET state, architectural bits, execution and paging modes, and
//! ready-made CPU modes. Pure data and logic, no KVM.

pub mod bits;
pub mod cpuid;
pub mod event;
pub mod mode;
pub mod modes;
pub mod paging;
pub mod reset;
pub mod state;
pub mod xsave;

pub use cpuid::{CpuidAction, CpuidConf, CpuidRegs};
pub use event::{Event, EventKind};
pub use mode::{CpuMode, PagingMode};
pub use state::{
    Cr, Crs, Dr, Drs, Fxsave, Gpr, Gprs, Intr, Msr, Msrs, STATE_SIZE, Seg, SegAttrib, Segment, Segs, State, StateMask,
};
pub use xsave::Xsave;
