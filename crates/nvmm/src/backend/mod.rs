//! The one seam between the library and a kernel.
//!
//! Everything above this module speaks NVMM's model (state components,
//! exits, events); everything below it speaks KVM (ioctls, `kvm_run`, sync
//! registers). The front end uses the KVM types directly; a second kernel
//! would provide the same operations under the same names.

pub(crate) mod kvm;

pub use kvm::BackendFacts;
