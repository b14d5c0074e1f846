//! MSR exits with NVMM's convention.
//!
//! KVM finishes an RDMSR or WRMSR that exited to user space itself, at the
//! next `KVM_RUN`: with the value the VMM gave, or with a #GP. NVMM leaves
//! the instruction to the VMM instead: RIP stays on it, and the VMM either
//! emulates it (writes RAX/RDX, sets RIP to `npc`) or lets the guest
//! execute it again. So an exit the VMM answered through
//! [`RdmsrExit`](crate::RdmsrExit) / [`WrmsrExit`](crate::WrmsrExit) goes
//! to KVM as usual, and an unanswered one is settled before the next
//! entry: KVM finishes it without entering the guest, and the registers
//! the VMM wants (its own, or those of the exit) are loaded over KVM's.

use super::Vcpu;
use crate::backend::kvm::MSR_UNANSWERED;
use crate::backend::{Parts, VcpuBackend};
use crate::error::Result;
use crate::vmem::GuestView;
use crate::x86::mode::{CpuMode, linear_rip};
use crate::x86::state::Gpr;

impl Vcpu {
    /// Settles the last exit, an MSR access, before the next run.
    pub(super) fn settle_msr_exit(&mut self) -> Result<()> {
        let answered = *self.backend.msr_answer().error != MSR_UNANSWERED;
        if answered {
            return Ok(());
        }
        // The registers the guest must resume with: the VMM's if it set
        // them, else the ones of the exit (RIP on the instruction).
        // They are loaded over KVM's once it finished the access, so the
        // value KVM puts in EDX:EAX for an RDMSR is never seen.
        self.fetch(Parts::GPRS.minus(self.cache.have))?;
        let a = self.backend.msr_answer();
        *a.data = 0;
        *a.error = 0;
        self.forget_raw();
        if let Some(next) = self.finish_pending_instruction()? {
            // Finishing an MSR access produces no exit; should KVM produce
            // one, report it next.
            self.queued = Some(self.noted(next));
        }
        self.cache.dirty |= Parts::GPRS;
        self.backend.want(Parts::GPRS);
        Ok(())
    }

    /// The address past the RDMSR or WRMSR at RIP (normally RIP + 2; more
    /// with prefixes, which the instruction allows and ignores).
    pub(super) fn msr_npc(&mut self) -> Result<u64> {
        self.raw_state(Parts::CODE)?;
        let raw = &self.raw;
        let mode = CpuMode::of(raw);
        let mut bytes = [0u8; 15];
        let n = {
            let mem = self.machine.memory();
            GuestView::new(&mem, self.paging_of(raw)).read(linear_rip(raw), &mut bytes).done
        };
        let long = mode == CpuMode::Bits64;
        let prefixes = bytes[..n]
            .iter()
            .take_while(|&&b| {
                matches!(b, 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65)
                    || (long && (0x40..=0x4f).contains(&b))
            })
            .count();
        let is_msr = matches!(bytes.get(prefixes..prefixes + 2), Some([0x0f, 0x30 | 0x32]));
        let len = if is_msr { prefixes as u64 + 2 } else { 2 };
        Ok(mode.advance(raw.gprs[Gpr::Rip], len))
    }
}
