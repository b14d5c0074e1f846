//! MSR exits with NVMM's convention.
//!
//! KVM finishes an RDMSR or WRMSR that exited to user space itself, at
//! the next `KVM_RUN`: with the value the VMM gave, or with a #GP. NVMM
//! leaves the instruction to the VMM instead: RIP stays on it, and the
//! VMM either emulates it (writes RAX/RDX, sets RIP to `npc`) or lets the
//! guest execute it again. So an exit the VMM answered through
//! [`RdmsrExit`](crate::RdmsrExit) / [`WrmsrExit`](crate::WrmsrExit) goes
//! to KVM as usual, and an unanswered one is settled here before the next
//! entry: KVM finishes it without entering the guest, and the registers
//! the VMM wants (its own, or those of the exit) are loaded over KVM's.

use super::{Vcpu, part, sync};
use crate::backend::kvm::RunOutcome;
use crate::error::{Error, Result};
use crate::x86::state::Gpr;

impl Vcpu {
    /// Settles the last exit if it is an unanswered MSR access.
    pub(super) fn settle_msr_exit(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.msr_pending) || !self.kvm.msr_unanswered() {
            return Ok(());
        }
        // The registers the guest must resume with: the VMM's if it set
        // them, else the ones of the exit (RIP on the instruction).
        self.fetch(part::GPRS & !self.have)?;
        let (rax, rdx) = (self.state.gprs[Gpr::Rax], self.state.gprs[Gpr::Rdx]);
        self.kvm.answer_msr((rdx << 32) | (rax & 0xffff_ffff));
        // Nothing else may change in this run: no register sets in or out.
        self.kvm.set_valid_regs(0);
        self.kvm.set_immediate_exit();
        let outcome = self.kvm.run();
        self.kvm.clear_immediate_exit();
        self.synced = 0;
        self.valid_regs = 0;
        self.used |= sync::REGS;
        self.dirty |= part::GPRS;
        match outcome? {
            RunOutcome::Interrupted => Ok(()),
            RunOutcome::Exited => Err(Error::Unsupported { what: "settling an MSR exit without running the guest" }),
        }
    }

    /// The address past the RDMSR or WRMSR at RIP (normally RIP + 2; more
    /// with prefixes, which the instruction allows and ignores).
    pub(super) fn msr_npc(&mut self) -> Result<u64> {
        let (mode, rip, linear) = self.code_position()?;
        let mut bytes = [0u8; 15];
        let n = self.read_linear(linear, &mut bytes).unwrap_or(0);
        let long = mode == crate::assist::io_insn::CpuMode::Bits64;
        let prefixes = bytes[..n]
            .iter()
            .take_while(|&&b| {
                matches!(b, 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65)
                    || (long && (0x40..=0x4f).contains(&b))
            })
            .count();
        let is_msr = matches!(bytes.get(prefixes..prefixes + 2), Some([0x0f, 0x30 | 0x32]));
        let len = if is_msr { prefixes as u64 + 2 } else { 2 };
        let width = match mode {
            crate::assist::io_insn::CpuMode::Bits16 => 0xffff,
            crate::assist::io_insn::CpuMode::Bits32 => 0xffff_ffff,
            crate::assist::io_insn::CpuMode::Bits64 => u64::MAX,
        };
        Ok(rip.wrapping_add(len) & width)
    }
}
