//! Random state, instruction bytes and memory: decoding then emulating
//! never panics, and a completed instruction leaves RIP right after itself
//! and RFLAGS bit 1 set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvmm::assist::decode::{Op, Rep, decode, decode_control};
use nvmm::assist::emulate::{EmuError, EmuMemory, HeldCpu, cpu_mode, execute, execute_control};
use nvmm::assist::mmu::Access;
use nvmm::x86::{SegAttrib, State};
use nvmm::{Cr, Gpr, Msr, Seg};

/// Memory whose bytes come from the input; accesses past it fault.
struct Mem<'a> {
    bytes: &'a [u8],
    accesses: usize,
}

impl EmuMemory for Mem<'_> {
    fn read(&mut self, linear: u64, buf: &mut [u8], _a: Access) -> Result<(), EmuError> {
        self.accesses += 1;
        if self.bytes.is_empty() || linear % 7 == 3 {
            return Err(EmuError::Exception { vector: 14, error_code: Some(0), cr2: Some(linear) });
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.bytes[(linear as usize).wrapping_add(i) % self.bytes.len()];
        }
        Ok(())
    }
    fn write(&mut self, _linear: u64, _buf: &[u8], _a: Access) -> Result<(), EmuError> {
        self.accesses += 1;
        Ok(())
    }
}

fn word(d: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, x) in b.iter_mut().enumerate() {
        *x = d.get(i * 8 + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 200 {
        return;
    }
    let (regs, rest) = data.split_at(200);
    let (insn, memory) = rest.split_at(rest.len().min(15));
    let mut st = State::default();
    for r in 0..18 {
        st.gprs.0[r] = word(regs, r);
    }
    for (i, s) in Seg::ALL.iter().enumerate() {
        let w = word(regs, 18 + i);
        st.segs[*s].attrib = SegAttrib(w as u16);
        st.segs[*s].limit = (w >> 16) as u32;
        st.segs[*s].base = w >> 48 << 12;
    }
    st.crs[Cr::Cr0] = word(regs, 23) & 0xe005_003f;
    st.crs[Cr::Cr4] = word(regs, 24) & 0x0034_0620;
    st.crs[Cr::Xcr0] = 3 | (word(regs, 24) >> 60 & 4);
    st.msrs[Msr::Efer] = word(regs, 22) & 0xd01;
    st.fpu.fx_cw = word(regs, 21) as u16;
    st.fpu.fx_sw = (word(regs, 21) >> 16) as u16;
    st.fpu.fx_tw = (word(regs, 21) >> 32) as u8;
    let mode = cpu_mode(&st);
    let mask = match mode {
        nvmm::assist::decode::CpuMode::Bits16 => 0xffff,
        nvmm::assist::decode::CpuMode::Bits32 => 0xffff_ffff,
        nvmm::assist::decode::CpuMode::Bits64 => u64::MAX,
    };
    let Ok(d) = decode(insn, mode) else {
        // The control instructions (x87 control, MXCSR, vector registers,
        // XSAVE family).
        let Ok(c) = decode_control(insn, mode) else { return };
        let rip = st.gprs[Gpr::Rip];
        let mut cpu = HeldCpu::new(st);
        let mut mem = Mem { bytes: memory, accesses: 0 };
        if execute_control(&c, &mut cpu, &mut mem).is_ok() {
            assert_eq!(cpu.state.gprs[Gpr::Rip], rip.wrapping_add(u64::from(c.len)) & mask);
        }
        return;
    };
    let rip = st.gprs[Gpr::Rip];
    let mut cpu = HeldCpu::new(st);
    let mut mem = Mem { bytes: memory, accesses: 0 };
    if execute(&d, &mut cpu, &mut mem).is_ok() {
        let string = matches!(d.op(), Op::Movs | Op::Cmps | Op::Stos | Op::Lods) && d.rep() != Rep::None;
        if !string {
            assert_eq!(cpu.state.gprs[Gpr::Rip], rip.wrapping_add(u64::from(d.len())) & mask);
        }
        assert!(mem.accesses <= 2 * nvmm::assist::emulate::REP_BATCH as usize + 4);
    }
});
