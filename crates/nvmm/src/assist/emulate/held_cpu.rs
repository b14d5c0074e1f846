//! A CPU the caller holds as plain data.
#![forbid(unsafe_code)]

use super::{EmuCpu, EmuError};
use crate::x86::state::{State, StateMask};
use crate::x86::xsave::Xsave;

/// The emulator's CPU as a [`State`] and an XSAVE area the caller holds:
/// for running the emulator on a state that is not a live VCPU's (a
/// snapshot, a test, a fuzzer). Every component counts as current;
/// `marked` collects what the emulator changed.
///
/// ```
/// use nvmm::assist::decode::{CpuMode, decode};
/// use nvmm::assist::emulate::{HeldCpu, execute};
/// # use nvmm::assist::emulate::{EmuError, EmuMemory};
/// # use nvmm::assist::mmu::Access;
/// # struct NoMemory;
/// # impl EmuMemory for NoMemory {
/// #     fn read(&mut self, _: u64, _: &mut [u8], _: Access) -> Result<(), EmuError> { Err(EmuError::Memory("none")) }
/// #     fn write(&mut self, _: u64, _: &[u8], _: Access) -> Result<(), EmuError> { Err(EmuError::Memory("none")) }
/// # }
/// use nvmm::x86::modes;
/// use nvmm::Gpr;
///
/// let mut cpu = HeldCpu::default();
/// modes::long_mode(&mut cpu.state, 0x1000, 0x2000);
/// cpu.state.gprs[Gpr::Rip] = 0x1000;
/// // vzeroupper needs no memory: RIP moves past its 3 bytes.
/// let insn = nvmm::assist::decode::decode_control(&[0xc5, 0xf8, 0x77], CpuMode::Bits64).unwrap();
/// cpu.state.crs[nvmm::Cr::Cr4] |= modes::cr4::OSXSAVE;
/// cpu.state.crs[nvmm::Cr::Xcr0] = 7;
/// nvmm::assist::emulate::execute_control(&insn, &mut cpu, &mut NoMemory).unwrap();
/// assert_eq!(cpu.state.gprs[Gpr::Rip], 0x1003);
/// # let _ = (decode, execute::<HeldCpu, NoMemory>);
/// ```
#[derive(Clone, Debug, Default)]
pub struct HeldCpu {
    /// The registers.
    pub state: State,
    /// The XSAVE area beyond the FXSAVE image (AVX and later).
    pub xsave: Xsave,
    /// The components the emulator changed.
    pub marked: StateMask,
}

impl HeldCpu {
    /// A CPU in `state`, with an empty XSAVE area.
    pub fn new(state: State) -> HeldCpu {
        HeldCpu { state, xsave: Xsave::default(), marked: StateMask::NONE }
    }
}

impl EmuCpu for HeldCpu {
    fn state(&mut self, _mask: StateMask) -> Result<&mut State, EmuError> {
        Ok(&mut self.state)
    }

    fn xsave(&mut self) -> &mut Xsave {
        &mut self.xsave
    }

    fn mark(&mut self, mask: StateMask) {
        self.marked |= mask;
    }
}

#[cfg(test)]
mod tests {
    use super::HeldCpu;
    use crate::assist::decode::{CpuMode, decode_control};
    use crate::assist::emulate::{EmuError, EmuMemory, execute_control};
    use crate::assist::mmu::Access;
    use crate::x86::modes;
    use crate::x86::state::{Cr, Gpr, StateMask};

    struct NoMemory;

    impl EmuMemory for NoMemory {
        fn read(&mut self, _: u64, _: &mut [u8], _: Access) -> Result<(), EmuError> {
            Err(EmuError::Memory("none"))
        }
        fn write(&mut self, _: u64, _: &[u8], _: Access) -> Result<(), EmuError> {
            Err(EmuError::Memory("none"))
        }
    }

    /// The emulator works on the held registers and XSAVE area and says
    /// what it changed: VMOVDQA ymm0, ymm1 moves both halves and RIP.
    #[test]
    fn the_emulator_changes_what_is_held_and_marks_it() {
        let mut cpu = HeldCpu::default();
        modes::long_mode(&mut cpu.state, 0x1000, 0x2000);
        cpu.state.gprs[Gpr::Rip] = 0x1000;
        cpu.state.crs[Cr::Cr4] |= modes::cr4::OSXSAVE;
        cpu.state.crs[Cr::Xcr0] = 7;
        cpu.state.fpu.fx_xmm[1] = [0x55; 16];
        cpu.xsave.set_ymm_hi(1, [0xaa; 16]).unwrap();
        let insn = decode_control(&[0xc5, 0xfd, 0x6f, 0xc1], CpuMode::Bits64).unwrap();
        execute_control(&insn, &mut cpu, &mut NoMemory).unwrap();
        assert_eq!(cpu.state.gprs[Gpr::Rip], 0x1004);
        assert_eq!(cpu.state.fpu.fx_xmm[0], [0x55; 16]);
        assert_eq!(cpu.xsave.ymm_hi(0).unwrap(), [0xaa; 16]);
        assert_eq!(cpu.marked, StateMask::FPU | StateMask::GPRS);
    }
}
