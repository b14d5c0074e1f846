//! The last exit, decoded once into an owned record.
//!
//! The backend turns what the kernel reported into an [`ExitRecord`] right
//! after the run; the VCPU keeps it as its last exit, the assists, the I/O
//! instruction decoder, the exit state and NetBSD's C exit structure all
//! read it, and [`Exit`](super::Exit) is the zero-copy view built from it
//! (its data slices borrow the kernel's buffers). A new kind of exit is
//! added here, in the backend's decoder, and in the view.

/// One exit, without borrows. `Copy`: 64 bytes at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitRecord {
    /// Nothing for the VMM (a host signal, an exit handled inside).
    None,
    /// A stop request was honoured.
    Stopped,
    /// A guest access to unmapped or read-only guest physical memory,
    /// decoded by the kernel: `len` bytes at `gpa`; the data lives in the
    /// backend's exit buffer.
    Memory {
        /// Guest physical address.
        gpa: u64,
        /// Bytes accessed (1 to 8).
        len: u8,
        /// A write (else a read).
        write: bool,
    },
    /// An instruction fetch from guest physical memory nothing is mapped
    /// at (found by the library: the kernel reports an emulation failure).
    Fetch {
        /// Guest physical address of the first byte that could not be
        /// fetched.
        gpa: u64,
    },
    /// Port I/O; the data (`count * size` bytes) lives in the backend's
    /// exit buffer.
    Io {
        /// The port.
        port: u16,
        /// Element size: 1, 2 or 4.
        size: u8,
        /// Elements (more than one only for string I/O).
        count: u32,
        /// IN or INS.
        is_in: bool,
    },
    /// RDMSR of an MSR left to the VMM.
    Rdmsr {
        /// ECX.
        msr: u32,
    },
    /// WRMSR of an MSR left to the VMM.
    Wrmsr {
        /// ECX.
        msr: u32,
        /// EDX:EAX.
        value: u64,
    },
    /// HLT (RIP past it).
    Halted,
    /// Triple fault.
    Shutdown,
    /// The guest can take an interrupt (kernel: interrupt window open).
    IntReady,
    /// The guest can take an NMI (found by the library).
    NmiReady,
    /// The guest changed its TPR (kernel: TPR lowered; library: raised).
    TprChanged,
    /// The kernel could not emulate an instruction; the bytes it fetched
    /// (`len` of them, 0 when it could not fetch any). Its exit information
    /// is kept beside the record (which is copied at every exit and stays
    /// small without it): [`VcpuBackend::failure_info`](crate::backend::VcpuBackend::failure_info).
    EmulationFailure {
        /// The instruction bytes.
        insn: InsnBytes,
    },
    /// An exception the kernel intercepted for the debugger (`#DB` or
    /// `#BP`), before the front end decides whose it is.
    Trap {
        /// 1 or 3.
        vector: u8,
        /// Linear address of the instruction (after it, for traps).
        pc: u64,
        /// DR6 (`#DB`).
        dr6: u64,
    },
    /// What the debugger caught.
    Debug,
    /// An exit NVMM does not model.
    Invalid {
        /// The kernel's exit reason.
        hwcode: u64,
        /// Sub-reason where the kernel gives one.
        detail: u64,
    },
}

/// Up to 15 instruction bytes and how many are valid, 8-byte aligned: the
/// record's largest payload then sits at offset 8 instead of 1 (the run
/// loop measured about 15 instructions fewer per exit; the compiler still
/// copies some other variants' byte fields one by one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(8))]
pub(crate) struct InsnBytes {
    /// Instruction bytes.
    pub(crate) bytes: [u8; 15],
    /// How many of `bytes` are valid.
    pub(crate) len: u8,
}

impl InsnBytes {
    /// The valid bytes.
    pub(crate) fn valid(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(15)]
    }
}

impl ExitRecord {
    /// NVMM's reason code (`NVMM_VCPU_EXIT_*`).
    pub(crate) fn reason(&self) -> u64 {
        use super::reason;
        match self {
            ExitRecord::None | ExitRecord::Trap { .. } => reason::NONE,
            ExitRecord::Debug => reason::DEBUG,
            ExitRecord::Stopped => reason::STOPPED,
            ExitRecord::Memory { .. } | ExitRecord::Fetch { .. } | ExitRecord::EmulationFailure { .. } => {
                reason::MEMORY
            }
            ExitRecord::Io { .. } => reason::IO,
            ExitRecord::Rdmsr { .. } => reason::RDMSR,
            ExitRecord::Wrmsr { .. } => reason::WRMSR,
            ExitRecord::Halted => reason::HALTED,
            ExitRecord::Shutdown => reason::SHUTDOWN,
            ExitRecord::IntReady => reason::INT_READY,
            ExitRecord::NmiReady => reason::NMI_READY,
            ExitRecord::TprChanged => reason::TPR_CHANGED,
            ExitRecord::Invalid { .. } => reason::INVALID,
        }
    }
}
