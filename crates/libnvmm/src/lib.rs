//! libnvmm for Linux: the C library of NetBSD's NVMM (`#include <nvmm.h>`,
//! `-lnvmm`), as `extern "C"` shims over the `nvmm` crate.
//!
//! Programs written for NetBSD's libnvmm build unmodified against
//! `include/nvmm.h` and run on KVM. The shims translate C structs and
//! errno; every behaviour is the `nvmm` crate's. The C side keeps NVMM's
//! model: `vcpu->state`, `vcpu->event`, `vcpu->exit` and `vcpu->stop` are
//! memory the caller reads and writes (a per-VCPU "comm page" the library
//! owns), `nvmm_vcpu_setstate` and `nvmm_vcpu_inject` only mark what lands
//! at the next `nvmm_vcpu_run`, and `nvmm_vcpu_getstate` fetches only what
//! is not cached. See `man/libnvmm.3` for what differs from NetBSD.
//!
//! Every entry point validates its arguments and returns -1 with `errno`
//! set rather than crash: null pointers give `EFAULT`, unknown machines
//! `ENOENT`, and a panic (a bug) is caught at the boundary and reported as
//! `EIO`.
// The C ABI is made of raw pointers: unsafe code is confined to this crate
// (and the `nvmm` crate's KVM backend), each block with its justification.
#![allow(unsafe_code)]

mod abi;
mod api_assist;
mod api_machine;
mod api_snapshot;
mod api_system;
mod api_vcpu;
mod errno;
mod handles;
mod remembered;
mod vcpu_lock;
