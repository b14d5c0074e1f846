//! The one error type of the library.
//!
//! Every variant knows the `errno` that NetBSD's libnvmm returns for the same
//! failure (spec §1.4), so the C library can translate without logic of its
//! own. Messages say what went wrong and what to do about it.

use std::io;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `errno` that stands in for BSD's `EPROGMISMATCH` (version mismatch at
/// init) on Linux, where that errno does not exist.
pub const EPROGMISMATCH: i32 = libc::EPROTO;

/// Everything that can go wrong in nvmm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `/dev/kvm` could not be opened.
    #[error(
        "cannot open /dev/kvm: {source}; load kvm_intel or kvm_amd, enable \
         virtualization in the firmware, and give this user read-write access \
         to /dev/kvm (usually membership of the 'kvm' group)"
    )]
    OpenKvm {
        /// The underlying error.
        source: io::Error,
    },

    /// The kernel's KVM API version is not the one we speak.
    #[error("KVM API version {found} is not supported: nvmm needs version 12")]
    ApiVersion {
        /// Version reported by `KVM_GET_API_VERSION`.
        found: i32,
    },

    /// A KVM capability the library relies on is missing.
    #[error("KVM lacks {name}, which nvmm needs for {why}; use a newer host kernel")]
    MissingCapability {
        /// KVM's name of the capability.
        name: &'static str,
        /// What nvmm uses it for.
        why: &'static str,
    },

    /// A KVM ioctl or system call failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The operation that failed (e.g. `KVM_CREATE_VM`).
        what: &'static str,
        /// The error the kernel returned.
        source: io::Error,
    },

    /// The process ran out of file descriptors.
    #[error(
        "{what} failed: too many open files; every machine uses one descriptor and \
         every VCPU one more: raise the limit (ulimit -n) or destroy machines"
    )]
    TooManyFiles {
        /// The operation that failed.
        what: &'static str,
    },

    /// The machine limit of this process is reached.
    #[error("machine limit reached ({max} live machines per process); destroy a machine first")]
    TooManyMachines {
        /// The limit (`Capability::max_machines`).
        max: u32,
    },

    /// No machine has this id.
    #[error("no machine with id {id}")]
    NoSuchMachine {
        /// The id asked for.
        id: u32,
    },

    /// The machine id is outside the id space.
    #[error("machine id {id} is out of range (0..{max})")]
    InvalidMachineId {
        /// The id asked for.
        id: u32,
        /// The limit.
        max: u32,
    },

    /// The VCPU id is outside the id space.
    #[error("VCPU id {id} is out of range (0..{max})")]
    InvalidVcpuId {
        /// The id asked for.
        id: u32,
        /// `Capability::max_vcpus`.
        max: u32,
    },

    /// A VCPU with this id already exists in the machine.
    #[error("VCPU {id} already exists in this machine; destroy it first or use another id")]
    VcpuExists {
        /// The id asked for.
        id: u32,
    },

    /// An address or a size is not a multiple of the page size.
    #[error("{what} {value:#x} is not a multiple of the page size (4096)")]
    Misaligned {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: u64,
    },

    /// A range is empty, wraps around, or lies outside what is allowed.
    #[error("{what} range {start:#x}+{size:#x} is invalid: {why}")]
    InvalidRange {
        /// Which range (host or guest).
        what: &'static str,
        /// Start of the range.
        start: u64,
        /// Size of the range.
        size: u64,
        /// Why it is invalid.
        why: &'static str,
    },

    /// A host range partially overlaps an existing host mapping.
    #[error(
        "host range {hva:#x}+{size:#x} overlaps the host mapping {other:#x}+{other_size:#x}; \
         unmap it first or choose another address"
    )]
    HostOverlap {
        /// Start of the new range.
        hva: u64,
        /// Size of the new range.
        size: u64,
        /// Start of the existing mapping.
        other: u64,
        /// Size of the existing mapping.
        other_size: u64,
    },

    /// The host range is not inside one host mapping.
    #[error(
        "host range {hva:#x}+{size:#x} is not inside one host mapping of this machine; \
         register it with hva_map first"
    )]
    HostRangeNotMapped {
        /// Start of the range.
        hva: u64,
        /// Size of the range.
        size: u64,
    },

    /// No host mapping with exactly this address and size.
    #[error("no host mapping {hva:#x}+{size:#x} in this machine (unmap takes the exact range that was mapped)")]
    NoHostMapping {
        /// Start of the range.
        hva: u64,
        /// Size of the range.
        size: u64,
    },

    /// A guest range overlaps an existing guest mapping.
    #[error(
        "guest range {gpa:#x}+{size:#x} overlaps the guest mapping {other:#x}+{other_size:#x}; \
         unmap it first"
    )]
    GpaOverlap {
        /// Start of the new range.
        gpa: u64,
        /// Size of the new range.
        size: u64,
        /// Start of the existing mapping.
        other: u64,
        /// Size of the existing mapping.
        other_size: u64,
    },

    /// No guest mapping with exactly this host address, guest address and size.
    #[error("no guest mapping of {hva:#x} at {gpa:#x}+{size:#x} (unmap takes the exact triple that was mapped)")]
    NoGpaMapping {
        /// Host address given.
        hva: u64,
        /// Guest address given.
        gpa: u64,
        /// Size given.
        size: u64,
    },

    /// A guest physical address is not backed by any guest mapping.
    #[error("guest physical address {gpa:#x} is not mapped")]
    GpaUnmapped {
        /// The address.
        gpa: u64,
    },

    /// Protection bits other than read, write and execute.
    #[error("invalid protection {prot:#x}: use a combination of PROT_READ, PROT_WRITE and PROT_EXEC")]
    InvalidProtection {
        /// The value given.
        prot: u32,
    },

    /// Every KVM memory slot is in use.
    #[error("too many guest mappings: all {max} KVM memory slots are in use; merge or unmap some")]
    TooManyGpaMappings {
        /// Number of slots KVM offers.
        max: u32,
    },

    /// Unknown state component bits.
    #[error("unknown state components {bits:#x}: valid components are 0x7f (NVMM_X64_STATE_ALL)")]
    InvalidStateMask {
        /// The offending bits.
        bits: u64,
    },

    /// An event that cannot be injected.
    #[error("invalid event: {why}")]
    InvalidEvent {
        /// Which rule it breaks.
        why: &'static str,
    },

    /// An invalid configuration request.
    #[error("invalid configuration: {why}")]
    InvalidConfiguration {
        /// What is wrong.
        why: &'static str,
    },

    /// A snapshot that cannot be restored (missing or malformed part, or
    /// state this host's KVM refuses).
    #[error("invalid snapshot: {why}")]
    InvalidSnapshot {
        /// What is wrong.
        why: String,
    },

    /// No software breakpoint at that address.
    #[error("no software breakpoint at guest physical address {gpa:#x}: insert one first")]
    NoBreakpoint {
        /// The address.
        gpa: u64,
    },

    /// The CPUID configuration table is full.
    #[error("CPUID configuration table full ({max} leaves); remove a leaf first")]
    CpuidTableFull {
        /// Table size (`conf_cpuid_maxops`).
        max: u32,
    },

    /// CPUID can no longer change because the VCPU has run.
    #[error(
        "CPUID can only be configured before the VCPU first runs (KVM refuses to change \
         it afterwards); configure it right after creating the VCPU"
    )]
    CpuidLocked,

    /// Something NVMM offers that KVM cannot provide.
    #[error("not supported on KVM: {what}")]
    Unsupported {
        /// What is not supported.
        what: &'static str,
    },

    /// The kick signal used by stop handles is taken by someone else.
    #[error(
        "signal {signal} already has a handler that is not nvmm's; pick a free signal with \
         Options::kick_signal"
    )]
    KickSignalInUse {
        /// The signal number.
        signal: i32,
    },

    /// `Nvmm::open_with` was called with options that differ from the ones
    /// the process opened KVM with.
    #[error("nvmm is already open in this process with other options")]
    AlreadyOpen,

    /// An operation that needs a particular exit was called after another.
    #[error("{what} needs the last exit to be {expected}")]
    WrongExit {
        /// The operation.
        what: &'static str,
        /// The exit it needs.
        expected: &'static str,
    },

    /// The VCPU is busy: the call was made from inside one of its own assist
    /// callbacks (where running it again or starting another assist is
    /// not possible), or it is being destroyed.
    #[error("{what}: the VCPU is busy (inside one of its own assist callbacks, or being destroyed)")]
    Busy {
        /// The operation refused.
        what: &'static str,
    },

    /// The instruction behind an exit could not be settled without running
    /// the guest (KVM kept producing exits while finishing it).
    #[error("{what}: KVM kept producing exits while finishing the instruction behind the last exit")]
    Unsettled {
        /// The operation.
        what: &'static str,
    },

    /// A guest virtual address has no valid translation.
    #[error("guest virtual address {gva:#x} has no valid translation")]
    Translation {
        /// The address.
        gva: u64,
    },

    /// The assists cannot emulate this instruction.
    #[error("cannot emulate the guest instruction: {detail}")]
    UnsupportedInstruction {
        /// What the decoder or emulator said.
        detail: String,
    },

    /// Guest memory the assists need is not accessible.
    #[error("guest memory not accessible: {what}")]
    GuestMemory {
        /// What was being accessed.
        what: &'static str,
    },

    /// A register index out of range.
    #[error("there is no {what} register {index}")]
    InvalidRegister {
        /// Register file.
        what: &'static str,
        /// Index given.
        index: usize,
    },

    /// Memory could not be allocated.
    #[error("out of memory while {what}")]
    NoMemory {
        /// What was being allocated.
        what: &'static str,
    },
}

impl Error {
    /// The `errno` NetBSD's libnvmm sets for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            Error::OpenKvm { source } => source.raw_os_error().unwrap_or(libc::ENXIO),
            Error::ApiVersion { .. } => EPROGMISMATCH,
            Error::MissingCapability { .. } => libc::ENXIO,
            Error::Kvm { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::TooManyFiles { .. } => libc::EMFILE,
            Error::TooManyMachines { .. } => libc::ENOBUFS,
            Error::NoSuchMachine { .. } => libc::ENOENT,
            Error::InvalidMachineId { .. } => libc::EINVAL,
            Error::InvalidVcpuId { .. } => libc::EINVAL,
            Error::VcpuExists { .. } => libc::EBUSY,
            Error::Misaligned { .. } => libc::EINVAL,
            Error::InvalidRange { .. } => libc::EINVAL,
            Error::HostOverlap { .. } => libc::EEXIST,
            Error::HostRangeNotMapped { .. } => libc::EINVAL,
            Error::NoHostMapping { .. } => libc::ENOENT,
            Error::GpaOverlap { .. } => libc::EINVAL,
            Error::NoGpaMapping { .. } => libc::ENOENT,
            Error::GpaUnmapped { .. } => libc::ENOENT,
            Error::InvalidProtection { .. } => libc::EINVAL,
            Error::TooManyGpaMappings { .. } => libc::ENOBUFS,
            Error::InvalidStateMask { .. } => libc::EINVAL,
            Error::InvalidEvent { .. } => libc::EINVAL,
            Error::InvalidConfiguration { .. } => libc::EINVAL,
            Error::NoBreakpoint { .. } => libc::ENOENT,
            Error::InvalidSnapshot { .. } => libc::EINVAL,
            Error::CpuidTableFull { .. } => libc::ENOBUFS,
            Error::CpuidLocked => libc::EBUSY,
            Error::Unsupported { .. } => libc::ENOTSUP,
            Error::KickSignalInUse { .. } => libc::EBUSY,
            Error::AlreadyOpen => libc::EBUSY,
            Error::WrongExit { .. } => libc::EINVAL,
            Error::Busy { .. } => libc::EBUSY,
            Error::Unsettled { .. } => libc::EIO,
            Error::Translation { .. } => libc::EFAULT,
            Error::InvalidRegister { .. } => libc::EINVAL,
            Error::UnsupportedInstruction { .. } => libc::ENODEV,
            Error::GuestMemory { .. } => libc::EFAULT,
            Error::NoMemory { .. } => libc::ENOMEM,
        }
    }

    /// Builds the error for a failed KVM call, recognising descriptor
    /// exhaustion so that the message says what to do.
    pub(crate) fn kvm(what: &'static str, source: io::Error) -> Error {
        match source.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) => Error::TooManyFiles { what },
            Some(libc::ENOMEM) => Error::NoMemory { what },
            _ => Error::Kvm { what, source },
        }
    }

    /// Same as [`Error::kvm`] for the `errno` type of `kvm-ioctls`.
    pub(crate) fn kvm_errno(what: &'static str, e: kvm_ioctls::Error) -> Error {
        Error::kvm(what, io::Error::from_raw_os_error(e.errno()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_follows_the_spec() {
        assert_eq!(Error::TooManyMachines { max: 1 }.errno(), libc::ENOBUFS);
        assert_eq!(Error::VcpuExists { id: 0 }.errno(), libc::EBUSY);
        assert_eq!(Error::HostOverlap { hva: 0, size: 0, other: 0, other_size: 0 }.errno(), libc::EEXIST);
        assert_eq!(Error::GpaOverlap { gpa: 0, size: 0, other: 0, other_size: 0 }.errno(), libc::EINVAL);
        assert_eq!(Error::NoGpaMapping { hva: 0, gpa: 0, size: 0 }.errno(), libc::ENOENT);
        assert_eq!(Error::ApiVersion { found: 11 }.errno(), EPROGMISMATCH);
        assert_eq!(Error::kvm("x", io::Error::from_raw_os_error(libc::EMFILE)).errno(), libc::EMFILE);
        assert_eq!(Error::kvm("x", io::Error::from_raw_os_error(libc::EINVAL)).errno(), libc::EINVAL);
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = Error::TooManyFiles { what: "KVM_CREATE_VM" };
        assert!(e.to_string().contains("ulimit -n"));
        let e = Error::Misaligned { what: "guest address", value: 0x1001 };
        assert!(e.to_string().contains("0x1001"));
    }
}
