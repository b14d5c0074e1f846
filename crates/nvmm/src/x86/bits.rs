//! Architectural bit definitions: control registers, EFER, RFLAGS and
//! page-table entries. One home for each bit, used by the walker, the
//! emulator, the ready-made modes and the VCPU.

/// CR0 bits.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u64 = 1 << 1;
    /// x87 emulation.
    pub const EM: u64 = 1 << 2;
    /// Task switched.
    pub const TS: u64 = 1 << 3;
    /// Extension type (always 1).
    pub const ET: u64 = 1 << 4;
    /// Numeric error.
    pub const NE: u64 = 1 << 5;
    /// Write protect.
    pub const WP: u64 = 1 << 16;
    /// Alignment mask.
    pub const AM: u64 = 1 << 18;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits.
pub mod cr4 {
    /// Page size extensions.
    pub const PSE: u64 = 1 << 4;
    /// Physical address extension.
    pub const PAE: u64 = 1 << 5;
    /// OS supports FXSAVE/FXRSTOR.
    pub const OSFXSR: u64 = 1 << 9;
    /// OS supports unmasked SIMD exceptions.
    pub const OSXMMEXCPT: u64 = 1 << 10;
    /// 5-level paging.
    pub const LA57: u64 = 1 << 12;
    /// XSAVE and XCR0 enabled.
    pub const OSXSAVE: u64 = 1 << 18;
    /// Supervisor-mode execution prevention.
    pub const SMEP: u64 = 1 << 20;
    /// Supervisor-mode access prevention.
    pub const SMAP: u64 = 1 << 21;
}

/// EFER bits.
pub mod efer {
    /// SYSCALL enable.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable.
    pub const NXE: u64 = 1 << 11;
}

/// RFLAGS bits.
pub mod rflags {
    /// Carry.
    pub const CF: u64 = 1 << 0;
    /// Always 1.
    pub const FIXED: u64 = 1 << 1;
    /// Parity of the low byte.
    pub const PF: u64 = 1 << 2;
    /// Auxiliary carry (bit 3 to 4).
    pub const AF: u64 = 1 << 4;
    /// Zero.
    pub const ZF: u64 = 1 << 6;
    /// Sign.
    pub const SF: u64 = 1 << 7;
    /// Trap (single step).
    pub const TF: u64 = 1 << 8;
    /// Interrupts enabled.
    pub const IF: u64 = 1 << 9;
    /// Direction.
    pub const DF: u64 = 1 << 10;
    /// Overflow.
    pub const OF: u64 = 1 << 11;
    /// Resume.
    pub const RF: u64 = 1 << 16;
    /// Virtual-8086 mode.
    pub const VM: u64 = 1 << 17;
    /// Alignment check.
    pub const AC: u64 = 1 << 18;
    /// The six arithmetic flags.
    pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
}

/// Page-table entry bits.
pub mod pte {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// User-accessible.
    pub const US: u64 = 1 << 2;
    /// Large page.
    pub const PS: u64 = 1 << 7;
    /// No-execute (PAE and long mode, with EFER.NXE).
    pub const XD: u64 = 1 << 63;
}
