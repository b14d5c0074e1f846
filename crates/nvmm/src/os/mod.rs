//! The operating-system layer: memory mappings, signals, memfds, limits
//! and the memory the library shares with C programs.
//!
//! Together with [`crate::backend::kvm`] this is the only code of the crate
//! that uses `unsafe`; every block says why it is sound. Nothing here knows
//! about KVM.
#![allow(unsafe_code)]

mod comm_page;
mod host_memory;
mod kick;
mod publish;
mod rlimit;
mod signals;
mod snapshot_file;
mod thread_clock;

pub(crate) use comm_page::CommBox;
pub use comm_page::stop_by_flag;
pub(crate) use host_memory::HostRegion;
#[cfg(test)]
pub(crate) use kick::this_thread_id;
pub(crate) use kick::{ThreadMemo, install_kick_handler, kick_thread};
pub(crate) use publish::Publisher;
pub(crate) use rlimit::raise_fd_limit;
pub(crate) use signals::{SignalMask, consume_pending};
pub(crate) use snapshot_file::FrozenMemory;
pub use snapshot_file::populated_pages;
pub(crate) use thread_clock::thread_cpu_time;
