//! The emulator against the CPU: every instruction it supports, in every
//! operand size, with random operands and RFLAGS entering all-zero and
//! all-one, run natively in a 64-bit guest at CPL 3 (native speed here) and
//! emulated from the same state; registers, flags and memory must match.

mod common;

use std::collections::HashMap;

use common::*;
use nvmm::assist::decode::{CpuMode, decode, decode_control};
use nvmm::assist::emulate::{EmuCpu, EmuError, EmuMemory, execute, execute_control};
use nvmm::assist::flags::rflags;
use nvmm::assist::mmu::Access;
use nvmm::x86::modes::cr4;
use nvmm::x86::state::{Fxsave, Intr, SegAttrib, Segment};
use nvmm::x86::xsave::Xsave;
use nvmm::x86::xsave::xfeature;
use nvmm::{Cr, Exit, Gpr, State, StateMask};

const DATA: u64 = 0x2_0000;
const DATA_LEN: usize = 1024;

struct Bench {
    g: Guest,
    rng: Rng,
    cases: usize,
    /// Compare the x87 last-instruction pointers too.
    pointers: bool,
    /// The host has AVX (XCR0 has it).
    avx: bool,
    /// The AVX component in use (or in its initial state) rather than
    /// either at random.
    avx_in_use: Option<bool>,
    /// Bits of data bytes the memory comparison leaves out: (offset, mask).
    ignore: Vec<(usize, u8)>,
    /// The code's mode: 64-bit, or compatibility mode with a 32- or 16-bit
    /// CS (in 16-bit mode DS, ES and SS are 64 KiB segments based at DATA).
    mode: CpuMode,
    /// Bytes of the data area compared.
    data_len: usize,
    /// The guest's XCR0, when the CPU runs CPL 3 code with another one
    /// (see [`Bench::cpl3_xcr0`]): XGETBV is then held to the SDM's value
    /// for the guest's XCR0.
    sdm_xgetbv: Option<u64>,
    /// Leave MXCSR out of the state comparison: the case puts SSE in its
    /// initial state, where this host's KVM reports an older MXCSR than
    /// the one a following XSAVE stores, and stores MXCSR to the data area
    /// instead, where it is compared.
    mxcsr_in_memory: bool,
}

impl Bench {
    fn new() -> Bench {
        let mut g = user_mode64(&[0x90]);
        let has_avx = nvmm().capability().arch.xcr0_mask & xfeature::AVX != 0;
        if !has_avx {
            nvmm_testkit::skip("the host CPU has no AVX: the VEX and YMM cases are left out");
        }
        g.vcpu
            .update(StateMask::CRS, |s| {
                s.crs[Cr::Cr4] |= cr4::OSXSAVE;
                s.crs[Cr::Xcr0] = if has_avx { 7 } else { 3 };
            })
            .unwrap();
        Bench {
            g,
            rng: Rng(0x853c_49e6_748f_ea9b),
            cases: 0,
            pointers: false,
            avx: has_avx,
            avx_in_use: None,
            ignore: Vec::new(),
            mode: CpuMode::Bits64,
            data_len: DATA_LEN,
            sdm_xgetbv: None,
            mxcsr_in_memory: false,
        }
    }

    /// The XCR0 the CPU uses for the guest's CPL 3 code, read by XGETBV
    /// run natively. Hosts that run guest user code with the host's own
    /// XCR0 (this kind of machine does, as it does with CR0.TS and
    /// CR4.OSFXSR) answer their own instead of the guest's.
    fn cpl3_xcr0(&mut self) -> u64 {
        // Probed in 64-bit code, whatever the bench's mode.
        let mode = std::mem::replace(&mut self.mode, CpuMode::Bits64);
        let mut st = self.prepare(&[0x0f, 0x01, 0xd0], 0);
        self.mode = mode;
        st.gprs[Gpr::Rcx] = 0;
        *self.g.vcpu.state_mut() = st;
        self.g.vcpu.set_state(StateMask::ALL).unwrap();
        match self.g.vcpu.run().unwrap() {
            Exit::Io(io) => assert_eq!(io.port(), 0x10, "xgetbv probe"),
            e => panic!("xgetbv probe: native run gave {e:?}"),
        }
        self.g.vcpu.get_state(StateMask::GPRS).unwrap();
        let g = self.g.vcpu.state().gprs;
        self.g.vcpu.complete_pending().unwrap();
        (g[Gpr::Rax] & 0xffff_ffff) | g[Gpr::Rdx] << 32
    }

    /// What the XSAVE family's EDX:EAX are masked with, for a CPU whose
    /// XCR0 at CPL 3 is `cpu_xcr0` ([`Bench::cpl3_xcr0`]). A CPU running
    /// the guest's user code with another XCR0 saves and restores other
    /// components: the instruction masks are then kept within the guest's
    /// XCR0, which makes the requested-feature bitmap the same on both
    /// sides, and XGETBV is held to the SDM.
    fn rfbm_mask(&mut self, cpu_xcr0: u64) -> u64 {
        let guest_xcr0 = if self.avx { 7 } else { 3 };
        if cpu_xcr0 == guest_xcr0 {
            return u64::MAX;
        }
        println!(
            "the CPU runs CPL 3 with XCR0 {cpu_xcr0:#x}, not the guest's {guest_xcr0:#x}: \
             EDX:EAX kept within the guest's XCR0; XGETBV held to the SDM"
        );
        self.sdm_xgetbv = Some(guest_xcr0);
        guest_xcr0
    }

    /// Runs `code` natively from a random state that `setup` adjusts, the
    /// AVX upper halves `ymm_hi`, over `data` (written at DATA); the data
    /// area after it.
    fn native_only(&mut self, code: &[u8], setup: &dyn Fn(&mut State), ymm_hi: [u8; 16], data: &[u8]) -> Vec<u8> {
        let mut st = self.prepare(code, 0);
        st.fpu.fx_cw = 0x37f;
        setup(&mut st);
        self.g.machine.write_gpa(DATA, data).unwrap();
        *self.g.vcpu.state_mut() = st;
        if self.avx {
            let xs = self.g.vcpu.xsave_mut();
            for i in 0..16 {
                xs.set_ymm_hi(i, ymm_hi).unwrap();
            }
        }
        self.g.vcpu.set_state(StateMask::ALL).unwrap();
        match self.g.vcpu.run().unwrap() {
            Exit::Io(io) => assert_eq!(io.port(), 0x10, "{code:02x?}"),
            e => panic!("{code:02x?}: native run gave {e:?}"),
        }
        let mut out = vec![0u8; data.len()];
        self.g.machine.read_gpa(DATA, &mut out).unwrap();
        self.g.vcpu.complete_pending().unwrap();
        out
    }

    /// A bench whose code runs in compatibility mode with a 32- or 16-bit
    /// code segment (at CPL 3, natively here like 64-bit code).
    fn compat(mode: CpuMode) -> Bench {
        Bench { mode, ..Bench::new() }
    }

    /// Where the data area starts for the code: its linear address, or
    /// in 16-bit mode offset 0 of the data segments.
    fn data(&self) -> u64 {
        if self.mode == CpuMode::Bits16 { 0 } else { DATA }
    }

    /// Loads `insn` and the end marker (`out 0x10,al`) at CODE; the
    /// VCPU's state with random GPRs, RSP and RIP at STACK and CODE,
    /// RFLAGS with IOPL 3 and `rflags_in`, and the segments of the mode.
    fn prepare(&mut self, insn: &[u8], rflags_in: u64) -> State {
        let mut code = insn.to_vec();
        code.extend_from_slice(&[0xe6, 0x10]); // out 0x10,al
        self.g.machine.write_gpa(CODE, &code).unwrap();
        self.g.vcpu.get_state(StateMask::ALL).unwrap();
        let mut st = *self.g.vcpu.state();
        for r in 0..16 {
            st.gprs.0[r] = self.rng.next();
        }
        st.gprs[Gpr::Rsp] = STACK;
        st.gprs[Gpr::Rip] = CODE;
        st.gprs[Gpr::Rflags] = 0x2 | (3 << 12) | rflags_in;
        compat_segments(&mut st, self.mode);
        st
    }

    /// Runs `insn` natively and emulated from the same random state.
    fn check(&mut self, insn: &[u8], rflags_in: u64, setup: &dyn Fn(&mut State, &mut Rng)) {
        self.check_data(insn, rflags_in, setup, &|_: &State, _: &mut [u8], _: &mut Rng| {});
    }

    /// [`check`](Self::check), with `data_setup` preparing the data area
    /// for the state `setup` made.
    fn check_data(
        &mut self,
        insn: &[u8],
        rflags_in: u64,
        setup: &dyn Fn(&mut State, &mut Rng),
        data_setup: &dyn Fn(&State, &mut [u8], &mut Rng),
    ) {
        self.check_sequence(&[insn], rflags_in, setup, data_setup);
    }

    /// [`check_data`](Self::check_data) for instructions run one after the
    /// other: natively as one piece of code, emulated one by one (what one
    /// leaves behind in the emulator's CPU, the next one sees).
    fn check_sequence(
        &mut self,
        insns: &[&[u8]],
        rflags_in: u64,
        setup: &dyn Fn(&mut State, &mut Rng),
        data_setup: &dyn Fn(&State, &mut [u8], &mut Rng),
    ) {
        let code = insns.concat();
        let insn = &code[..];
        let data_len = self.data_len;
        let mut data: Vec<u8> = (0..data_len).map(|_| self.rng.next() as u8).collect();
        let mut st = self.prepare(insn, rflags_in);
        st.fpu.fx_cw = 0x37f;
        st.fpu.fx_sw = 0;
        st.fpu.fx_tw = 0;
        for x in st.fpu.fx_xmm.iter_mut() {
            for b in x.iter_mut() {
                *b = self.rng.next() as u8;
            }
        }
        setup(&mut st, &mut self.rng);
        data_setup(&st, &mut data, &mut self.rng);
        self.g.machine.write_gpa(DATA, &data).unwrap();
        *self.g.vcpu.state_mut() = st;
        if self.avx {
            // Half the time the AVX component in use, half in its initial
            // state.
            let in_use = self.avx_in_use.unwrap_or(self.rng.next() % 2 == 0);
            let hi: Vec<[u8; 16]> = (0..16).map(|_| std::array::from_fn(|_| self.rng.next() as u8)).collect();
            let xs = self.g.vcpu.xsave_mut();
            for (i, h) in hi.iter().enumerate() {
                xs.set_ymm_hi(i, if in_use { *h } else { [0; 16] }).unwrap();
            }
            if !in_use {
                xs.set_xstate_bv(xs.xstate_bv() & !xfeature::AVX);
            }
        }
        self.g.vcpu.set_state(StateMask::ALL).unwrap();
        let xs_in = self.g.vcpu.xsave().clone();

        let ctx = format!("{insn:02x?} rflags {rflags_in:#x}");
        match self.g.vcpu.run().unwrap() {
            Exit::Io(io) => assert_eq!(io.port(), 0x10, "{ctx}"),
            e => panic!("{ctx}: native run gave {e:?}"),
        }
        self.g.vcpu.get_state(StateMask::ALL).unwrap();
        let mut native = *self.g.vcpu.state();
        if let Some(xcr0) = self.sdm_xgetbv
            && insn == [0x0f, 0x01, 0xd0]
        {
            // ECX 0: XCR0, the guest's. ECX 1: XCR0 AND XINUSE, where
            // XINUSE is the CPU's own (it ran the guest's registers).
            let cpu = (native.gprs[Gpr::Rax] & 0xffff_ffff) | native.gprs[Gpr::Rdx] << 32;
            let v = if native.gprs[Gpr::Rcx] as u32 == 0 { xcr0 } else { cpu & xcr0 };
            native.gprs[Gpr::Rax] = v & 0xffff_ffff;
            native.gprs[Gpr::Rdx] = v >> 32;
        }
        let native_xs = self.g.vcpu.xsave().clone();
        let mut native_mem = vec![0u8; data_len];
        self.g.machine.read_gpa(DATA, &mut native_mem).unwrap();
        self.g.vcpu.complete_pending().unwrap();

        let mut model = LazyCpu::new(st, xs_in);
        let mut mem: HashMap<u64, u8> = data.iter().enumerate().map(|(i, b)| (DATA + i as u64, *b)).collect();
        // The GDT too (VERR/VERW read descriptors).
        let mut gdt = [0u8; 0x100];
        self.g.machine.read_gpa(GDT, &mut gdt).unwrap();
        mem.extend(gdt.iter().enumerate().map(|(i, b)| (GDT + i as u64, *b)));
        let mode = self.mode;
        let mut at = CODE;
        for one in insns {
            // A REP instruction stops after a batch of iterations with RIP
            // still on it, as the guest would then execute it again.
            for _ in 0..64 {
                let done = match decode(one, mode) {
                    Ok(d) => execute(&d, &mut model, &mut MemView(&mut mem)),
                    Err(_) => {
                        let c = decode_control(one, mode).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                        assert_eq!(usize::from(c.len), one.len(), "{ctx}: length");
                        execute_control(&c, &mut model, &mut MemView(&mut mem))
                    }
                };
                done.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                model.settle();
                if model.state.gprs[Gpr::Rip] != at {
                    break;
                }
            }
            at += one.len() as u64;
            assert_eq!(model.state.gprs[Gpr::Rip], at, "{ctx}: rip after {one:02x?}");
        }
        let emu_mem: Vec<u8> = (0..data_len as u64).map(|i| mem[&(DATA + i)]).collect();
        // Compatibility mode leaves the upper halves of the registers
        // undefined: the low 32 bits are compared there.
        let gpr_mask = if mode == CpuMode::Bits64 { u64::MAX } else { 0xffff_ffff };
        for r in 0..16 {
            assert_eq!(model.state.gprs.0[r] & gpr_mask, native.gprs.0[r] & gpr_mask, "{ctx}: {}", Gpr::NAMES[r]);
        }
        let fl = rflags::ARITH | rflags::DF;
        assert_eq!(model.state.gprs[Gpr::Rflags] & fl, native.gprs[Gpr::Rflags] & fl, "{ctx}: rflags");
        assert_eq!(model.state.gprs[Gpr::Rip], CODE + insn.len() as u64, "{ctx}: rip");
        let mut care = vec![0xffu8; data_len];
        for &(i, m) in &self.ignore {
            care[i] &= !m;
        }
        let diff: Vec<(usize, u8, u8)> = (0..data_len)
            .filter(|&i| (emu_mem[i] ^ native_mem[i]) & care[i] != 0)
            .map(|i| (i, emu_mem[i], native_mem[i]))
            .collect();
        assert!(diff.is_empty(), "{ctx}: memory differs at (offset, emulated, native) {diff:?}");
        let (e, n) = (&model.state.fpu, &native.fpu);
        assert_eq!((e.fx_cw, e.fx_sw, e.fx_tw), (n.fx_cw, n.fx_sw, n.fx_tw), "{ctx}: x87 control, status, tags");
        for i in 0..8 {
            if n.fx_tw & (1 << (((n.fx_sw >> 11) + i as u16) % 8)) != 0 {
                assert_eq!(e.fx_87_ac[i][..10], n.fx_87_ac[i][..10], "{ctx}: ST{i}");
            }
        }
        assert_eq!(e.fx_xmm, n.fx_xmm, "{ctx}: XMM registers");
        if !self.mxcsr_in_memory {
            assert_eq!(e.fx_mxcsr, n.fx_mxcsr, "{ctx}: MXCSR");
        }
        // AMD CPUs restore FOP, FIP and FDP only with an exception
        // pending (ES); Intel CPUs always.
        if self.pointers && n.fx_sw & 0x80 != 0 {
            assert_eq!((e.fx_opcode, e.fx_ip, e.fx_dp), (n.fx_opcode, n.fx_ip, n.fx_dp), "{ctx}: x87 pointers");
        }
        for i in 0..16 {
            assert_eq!(model.xsave.ymm_hi(i).unwrap(), native_xs.ymm_hi(i).unwrap(), "{ctx}: YMM{i} upper half");
        }
        self.cases += 1;
    }
}

/// Where the fault harness's pieces live: a handler per vector (`out
/// 0x20+vector,al`), the 64-bit IDT, the TSS and the kernel stack its RSP0
/// names.
const HANDLERS: u64 = 0x3000;
const TSS: u64 = 0x5000;
const KERNEL_STACK: u64 = 0x9000;

/// Vectors that push an error code.
fn pushes_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17)
}

impl Bench {
    /// Gives the guest 64-bit interrupt gates for vectors 0–31, each
    /// handler reporting its vector as an OUT to port 0x20 + vector, and a
    /// TSS whose RSP0 is the kernel stack (faults come from CPL 3).
    fn with_handlers(mut self) -> Bench {
        let mut idt = vec![0u8; 32 * 16];
        for v in 0..32u64 {
            let h = HANDLERS + v * 4;
            self.g.machine.write_gpa(h, &[0xe6, 0x20 + v as u8, 0xf4, 0x90]).unwrap();
            let gate = &mut idt[(v * 16) as usize..][..16];
            gate[0..2].copy_from_slice(&(h as u16).to_le_bytes());
            gate[2..4].copy_from_slice(&nvmm::x86::modes::CODE64_SELECTOR.to_le_bytes());
            gate[5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
            gate[6..8].copy_from_slice(&((h >> 16) as u16).to_le_bytes());
        }
        self.g.machine.write_gpa(IDT, &idt).unwrap();
        self.g.machine.write_gpa(TSS + 4, &KERNEL_STACK.to_le_bytes()).unwrap();
        self.g
            .vcpu
            .update(StateMask::SEGS, |s| {
                use nvmm::Seg;
                (s.segs[Seg::Idt].base, s.segs[Seg::Idt].limit) = (IDT, 32 * 16 - 1);
                let tr = &mut s.segs[Seg::Tr];
                (tr.base, tr.limit, tr.selector) = (TSS, 0x67, 0x38);
                tr.attrib = nvmm::x86::state::SegAttrib::new(11, false, 0, true, false, false, false, false);
            })
            .unwrap();
        self
    }

    /// Runs `insn` natively from a random state that `setup` makes fault,
    /// and emulated from the same state: both raise `vector`, with the
    /// same error code.
    fn check_fault(&mut self, insn: &[u8], vector: u8, setup: &dyn Fn(&mut State, &mut Rng)) {
        self.check_fault_or_sdm(insn, vector, setup, None);
    }

    /// [`check_fault`](Self::check_fault) for a fault that a control
    /// register bit `control` (register, bit, value) causes: a host that
    /// runs the instruction anyway (this one does at CPL 3 for CR0.TS,
    /// CR4.OSFXSR and CR4.OSXSAVE: the guest's bits do not reach the
    /// hardware there) is told apart by reading the register back, and the
    /// emulator is then held to the SDM's vector.
    fn check_fault_or_sdm(
        &mut self,
        insn: &[u8],
        vector: u8,
        setup: &dyn Fn(&mut State, &mut Rng),
        control: Option<(Cr, u64, bool)>,
    ) {
        self.check_fault_with(insn, vector, setup, &|_: &State, _: &mut [u8], _: &mut Rng| {}, control);
    }

    /// [`check_fault`](Self::check_fault) with `data_setup` preparing the
    /// data area (an XSAVE area that is wrong, say) for the state `setup`
    /// made.
    fn check_fault_data(
        &mut self,
        insn: &[u8],
        vector: u8,
        setup: &dyn Fn(&mut State, &mut Rng),
        data_setup: &dyn Fn(&State, &mut [u8], &mut Rng),
    ) {
        self.check_fault_with(insn, vector, setup, data_setup, None);
    }

    fn check_fault_with(
        &mut self,
        insn: &[u8],
        vector: u8,
        setup: &dyn Fn(&mut State, &mut Rng),
        data_setup: &dyn Fn(&State, &mut [u8], &mut Rng),
        control: Option<(Cr, u64, bool)>,
    ) {
        let mut data: Vec<u8> = (0..DATA_LEN).map(|_| self.rng.next() as u8).collect();
        let mut st = self.prepare(insn, 0);
        // Back at CPL 3 after a previous case's fault handler.
        nvmm::x86::modes::user_mode(&mut st);
        compat_segments(&mut st, self.mode);
        // The control bits a previous case changed: AM, TS and EM off,
        // FXSR and XSAVE enabled.
        st.crs[Cr::Cr0] &= !((1 << 18) | 8 | 4);
        st.crs[Cr::Cr4] |= 1 << 9 | if self.avx { cr4::OSXSAVE } else { 0 };
        st.fpu.fx_cw = 0x37f;
        setup(&mut st, &mut self.rng);
        data_setup(&st, &mut data, &mut self.rng);
        self.g.machine.write_gpa(DATA, &data).unwrap();
        *self.g.vcpu.state_mut() = st;
        self.g.vcpu.set_state(StateMask::ALL).unwrap();
        let xs_in = self.g.vcpu.xsave().clone();
        let ctx = format!("{insn:02x?} ({:?})", self.mode);
        let native = match self.g.vcpu.run().unwrap() {
            Exit::Io(io) if io.port() >= 0x20 && io.port() < 0x40 => (io.port() - 0x20) as u8,
            Exit::Io(io) if io.port() == 0x10 && control.is_some() => {
                let (cr, bit, set) = control.unwrap_or((Cr::Cr0, 0, false));
                self.g.vcpu.get_state(StateMask::CRS).unwrap();
                let now = self.g.vcpu.state().crs[cr] & bit != 0;
                assert_eq!(now, set, "{ctx}: {cr:?} bit {bit:#x} did not stay as set");
                println!(
                    "{ctx}: the host ran it with {cr:?} bit {bit:#x} = {set}: the SDM's vector {vector} is the oracle"
                );
                self.g.vcpu.complete_pending().unwrap();
                let mut model = LazyCpu::new(st, xs_in);
                let mut mem: HashMap<u64, u8> = data.iter().enumerate().map(|(i, b)| (DATA + i as u64, *b)).collect();
                let r = emulate(insn, self.mode, &mut model, &mut mem, &ctx);
                match r {
                    Err(EmuError::Exception { vector: v, error_code: None, .. }) if v == vector => {}
                    other => panic!("{ctx}: the SDM's vector {vector}, the emulator gave {other:?}"),
                }
                self.cases += 1;
                return;
            }
            e => panic!("{ctx}: native run gave {e:?}, not a fault"),
        };
        self.g.vcpu.get_state(StateMask::GPRS).unwrap();
        let frame = self.g.vcpu.state().gprs[Gpr::Rsp];
        let native_code = pushes_error_code(native).then(|| {
            let mut b = [0u8; 8];
            self.g.machine.read_gpa(frame, &mut b).unwrap();
            u64::from_le_bytes(b) as u32
        });
        let mut at = [0u8; 8];
        self.g.machine.read_gpa(frame + if native_code.is_some() { 8 } else { 0 }, &mut at).unwrap();
        assert_eq!(u64::from_le_bytes(at), CODE, "{ctx}: the fault's RIP");
        self.g.vcpu.complete_pending().unwrap();

        let mut model = LazyCpu::new(st, xs_in);
        let mut mem: HashMap<u64, u8> = data.iter().enumerate().map(|(i, b)| (DATA + i as u64, *b)).collect();
        let r = emulate(insn, self.mode, &mut model, &mut mem, &ctx);
        match r {
            Err(EmuError::Exception { vector: v, error_code, .. }) => {
                assert_eq!((v, error_code), (native, native_code), "{ctx}: (vector, error code), emulated vs CPU");
            }
            other => panic!("{ctx}: the CPU raised {native} ({native_code:?}), the emulator gave {other:?}"),
        }
        assert_eq!(native, vector, "{ctx}: the CPU raised another vector than the case expects");
        model.settle();
        assert_eq!(model.state.gprs[Gpr::Rip], CODE, "{ctx}: a fault leaves RIP on the instruction");
        self.cases += 1;
    }
}

/// The code segment of `mode` at CPL 3 (a compatibility-mode one unless
/// 64-bit), and flat data segments, except in 16-bit mode DS, ES and SS:
/// 64 KiB segments at DATA (SS with a 16-bit stack pointer).
fn compat_segments(st: &mut State, mode: CpuMode) {
    use nvmm::Seg;
    use nvmm::x86::state::SegAttrib;
    let bits32 = match mode {
        CpuMode::Bits64 => return,
        CpuMode::Bits32 => true,
        CpuMode::Bits16 => false,
    };
    let cs = &mut st.segs[Seg::Cs];
    cs.selector = nvmm::x86::modes::USER_CODE32_SELECTOR;
    cs.attrib = SegAttrib::new(11, true, 3, true, false, false, bits32, bits32);
    cs.limit = if bits32 { u32::MAX } else { 0xffff };
    // Every case starts from the same segments (a case's setup may move
    // a base).
    for seg in [Seg::Ds, Seg::Es, Seg::Ss, Seg::Fs, Seg::Gs] {
        let s = &mut st.segs[seg];
        s.selector = nvmm::x86::modes::USER_DATA_SELECTOR;
        if bits32 || seg == Seg::Fs || seg == Seg::Gs {
            (s.base, s.limit) = (0, u32::MAX);
            s.attrib = SegAttrib::new(3, true, 3, true, false, false, true, true);
        } else {
            (s.base, s.limit) = (DATA, 0xffff);
            s.attrib = SegAttrib::new(3, true, 3, true, false, false, false, false);
        }
        if seg == Seg::Ss {
            // Apart from DS, so that a wrong default segment shows.
            s.base = s.base.wrapping_sub(SS_SHIFT) & 0xffff_ffff;
        }
    }
}

/// How far below DS's base SS's is in compatibility-mode cases.
const SS_SHIFT: u64 = 0x1000;

/// The emulator's CPU in the comparisons: it hands out only the state
/// components the emulator asks for ([`EmuCpu::state`]'s mask, the FPU
/// with the XSAVE area); the others hold a poison pattern until then, so
/// that a component read without being asked for (which a VMM's CPU that
/// fetches by mask would not have current) shows as a difference from the
/// CPU. [`LazyCpu::settle`] then puts the true values in what was never
/// asked for; anything the emulator wrote there without asking is lost,
/// and shows too.
struct LazyCpu {
    truth: State,
    truth_xsave: Xsave,
    state: State,
    xsave: Xsave,
    fetched: StateMask,
}

impl LazyCpu {
    fn new(truth: State, xsave: Xsave) -> LazyCpu {
        let mut state = State::default();
        let seg =
            Segment { selector: 0x5a5a, attrib: SegAttrib(0x5a5a), limit: 0x5a5a_5a5a, base: 0x5a5a_5a5a_5a5a_5a5a };
        state.segs.0 = [seg; 10];
        state.gprs.0 = [0x5a5a_5a5a_5a5a_5a5a; 18];
        state.crs.0 = [0x5a5a_5a5a; 6];
        state.drs.0 = [0x5a5a_5a5a; 6];
        state.msrs.0 = [0x5a5a_5a5a; 11];
        state.intr = Intr(0x5a);
        state.fpu = Fxsave::from_bytes(&[0x5a; 512]);
        let mut poisoned = Xsave::default();
        poisoned.as_bytes_mut().fill(0x5a);
        LazyCpu { truth, truth_xsave: xsave, state, xsave: poisoned, fetched: StateMask::NONE }
    }

    fn fetch(&mut self, mask: StateMask) {
        type Copy = fn(&mut State, &State);
        let parts: [(StateMask, Copy); 7] = [
            (StateMask::SEGS, |s, t| s.segs = t.segs),
            (StateMask::GPRS, |s, t| s.gprs = t.gprs),
            (StateMask::CRS, |s, t| s.crs = t.crs),
            (StateMask::DRS, |s, t| s.drs = t.drs),
            (StateMask::MSRS, |s, t| s.msrs = t.msrs),
            (StateMask::INTR, |s, t| s.intr = t.intr),
            (StateMask::FPU, |s, t| s.fpu = t.fpu),
        ];
        for (part, copy) in parts {
            if mask.contains(part) && !self.fetched.contains(part) {
                copy(&mut self.state, &self.truth);
                if part == StateMask::FPU {
                    self.xsave = self.truth_xsave.clone();
                }
            }
        }
        self.fetched |= mask;
    }

    /// What the emulator never asked for takes its true value.
    fn settle(&mut self) {
        self.fetch(StateMask::ALL);
    }
}

impl EmuCpu for LazyCpu {
    fn state(&mut self, mask: StateMask) -> Result<&mut State, EmuError> {
        self.fetch(mask);
        Ok(&mut self.state)
    }

    fn xsave(&mut self) -> &mut Xsave {
        &mut self.xsave
    }

    fn mark(&mut self, _mask: StateMask) {}
}

/// Decodes `insn` with the general decoder, else with the control one,
/// and runs it on `model`.
fn emulate(
    insn: &[u8],
    mode: CpuMode,
    model: &mut LazyCpu,
    mem: &mut HashMap<u64, u8>,
    ctx: &str,
) -> Result<(), EmuError> {
    match decode(insn, mode) {
        Ok(d) => execute(&d, model, &mut MemView(mem)),
        Err(_) => {
            let c = decode_control(insn, mode).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            execute_control(&c, model, &mut MemView(mem))
        }
    }
}

struct MemView<'a>(&'a mut HashMap<u64, u8>);

impl EmuMemory for MemView<'_> {
    fn read(&mut self, linear: u64, buf: &mut [u8], _a: Access) -> Result<(), EmuError> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = *self.0.get(&(linear + i as u64)).ok_or(EmuError::Memory("outside the test data"))?;
        }
        Ok(())
    }
    fn write(&mut self, linear: u64, buf: &[u8], _a: Access) -> Result<(), EmuError> {
        for (i, b) in buf.iter().enumerate() {
            *self.0.get_mut(&(linear + i as u64)).ok_or(EmuError::Memory("outside the test data"))? = *b;
        }
        Ok(())
    }
}

/// RBX points into the data area (32-byte aligned, room on both sides).
fn rbx_at_data(st: &mut State, rng: &mut Rng) {
    st.gprs[Gpr::Rbx] = DATA + 64 + (rng.next() % 2) * 32;
}

const SIZES: [&[u8]; 4] = [&[], &[0x66], &[], &[0x48]];

/// The ModRM forms of ADD OR ADC SBB AND SUB XOR CMP (both directions),
/// TEST, XCHG and MOV, each with every operand-size prefix of `sizes`
/// (byte forms with the first only).
fn modrm_alu_forms<'a>(sizes: &'a [&'a [u8]]) -> impl Iterator<Item = (u8, &'a [u8])> + 'a {
    let opcodes = (0..8u8).flat_map(|i| (0..4).map(move |k| i * 8 + k)).chain(0x84..=0x8b);
    opcodes.flat_map(move |op| {
        sizes.iter().enumerate().filter(move |(si, _)| op & 1 == 1 || *si == 0).map(move |(_, p)| (op, *p))
    })
}
const FLAG_CASES: [u64; 2] = [0, rflags::ARITH];

#[test]
fn integer_instructions_match_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    for rounds in 0..4 {
        // op [rbx], reg / op reg, [rbx] for ADD OR ADC SBB AND SUB XOR CMP,
        // TEST, XCHG, MOV (byte forms and 16/32/64-bit).
        for (op, prefix) in modrm_alu_forms(&SIZES) {
            for &f in &FLAG_CASES {
                let reg = [0u8, 1, 2, 6, 7][rounds % 5];
                let mut insn = prefix.to_vec();
                insn.extend([op, (reg << 3) | 3]); // [rbx]
                b.check(&insn, f, &rbx_at_data);
            }
        }
        // Group 1 with imm8 / imm32 / sign-extended imm8, group 11 MOV,
        // group 3 TEST.
        for (op, imm_len) in [(0x80u8, 1usize), (0x81, 4), (0x83, 1), (0xc6, 1), (0xc7, 4), (0xf6, 1), (0xf7, 4)] {
            let regs: &[u8] = match op {
                0xc6 | 0xc7 => &[0],
                0xf6 | 0xf7 => &[0, 1],
                _ => &[0, 1, 2, 3, 4, 5, 6, 7],
            };
            for &r in regs {
                for (si, prefix) in SIZES.iter().enumerate() {
                    if op & 1 == 0 && si != 0 {
                        continue;
                    }
                    for &f in &FLAG_CASES {
                        let mut insn = prefix.to_vec();
                        insn.extend([op, (r << 3) | 3]);
                        let imm_len = if op != 0x83 && prefix == &[0x66] && imm_len == 4 { 2 } else { imm_len };
                        for _ in 0..imm_len {
                            insn.push(b.rng.next() as u8);
                        }
                        b.check(&insn, f, &rbx_at_data);
                    }
                }
            }
        }
        // MOVZX, XADD, CMPXCHG (equal and different accumulator).
        for (op, sizes) in [
            (0xb6u8, &SIZES[..]),
            (0xb7, &SIZES[..]),
            (0xc0, &SIZES[..1]),
            (0xc1, &SIZES[1..]),
            (0xb0, &SIZES[..1]),
            (0xb1, &SIZES[1..]),
        ] {
            for prefix in sizes {
                for &f in &FLAG_CASES {
                    for equal in [false, true] {
                        let mut insn = prefix.to_vec();
                        insn.extend([0x0f, op, (1 << 3) | 3]);
                        b.check(&insn, f, &move |st: &mut State, rng: &mut Rng| {
                            rbx_at_data(st, rng);
                            if equal {
                                st.gprs[Gpr::Rax] = 0; // the data area is set below
                            }
                        });
                    }
                }
            }
        }
        // MOV moffs (64-bit absolute address).
        for op in [0xa0u8, 0xa1, 0xa2, 0xa3] {
            for prefix in [&[][..], &[0x48]] {
                let mut insn = prefix.to_vec();
                insn.push(op);
                insn.extend_from_slice(&(DATA + 40).to_le_bytes());
                b.check(&insn, 0, &|_: &mut State, _: &mut Rng| {});
            }
        }
    }
    println!("{} cases", b.cases);
}

#[test]
fn cmpxchg8b_and_16b_match_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    for prefix in [&[][..], &[0x48]] {
        for equal in [false, true] {
            for &f in &FLAG_CASES {
                let mut insn = prefix.to_vec();
                insn.extend([0x0f, 0xc7, (1 << 3) | 3]); // cmpxchg8b/16b [rbx]
                // Equal: the memory operand holds EDX:EAX (RDX:RAX), so
                // that ZF is set (and was, entering with the flags set).
                let half = if prefix.is_empty() { 4 } else { 8 };
                b.check_data(&insn, f, &rbx_at_data, &move |st: &State, data: &mut [u8], _: &mut Rng| {
                    if equal {
                        let at = (st.gprs[Gpr::Rbx] - DATA) as usize;
                        data[at..at + half].copy_from_slice(&st.gprs[Gpr::Rax].to_le_bytes()[..half]);
                        data[at + half..at + 2 * half].copy_from_slice(&st.gprs[Gpr::Rdx].to_le_bytes()[..half]);
                    }
                });
            }
        }
    }
}

#[test]
fn string_instructions_match_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    for op in [0xa4u8, 0xa5, 0xa6, 0xa7, 0xaa, 0xab, 0xac, 0xad] {
        for rep in [&[][..], &[0xf3], &[0xf2]] {
            for (si, size) in [&[][..], &[0x66], &[0x48]].iter().enumerate() {
                if op & 1 == 0 && si != 0 {
                    continue;
                }
                for df in [0, rflags::DF] {
                    for &f in &FLAG_CASES {
                        let mut insn = rep.to_vec();
                        insn.extend_from_slice(size);
                        insn.push(op);
                        b.check(&insn, f | df, &|st: &mut State, rng: &mut Rng| {
                            st.gprs[Gpr::Rsi] = DATA + 96 + rng.next() % 8;
                            st.gprs[Gpr::Rdi] = DATA + 160 + rng.next() % 8;
                            st.gprs[Gpr::Rcx] = rng.next() % 6;
                        });
                    }
                }
            }
        }
    }
}

/// `v` as an 80-bit register (double denormals as zero).
fn f64_to_f80(v: f64) -> [u8; 10] {
    let m = v.to_bits();
    let exp = ((m >> 52) & 0x7ff) as i32;
    let man = m & ((1 << 52) - 1);
    let (e80, m80) = match exp {
        0 => (0u16, 0u64),
        0x7ff => (0x7fff, (1 << 63) | (man << 11)),
        _ => ((exp - 1023 + 16383) as u16, (1 << 63) | (man << 11)),
    };
    f80(m >> 63 == 1, e80, m80)
}

/// An 80-bit register from its sign, biased exponent and significand.
fn f80(sign: bool, exp: u16, man: u64) -> [u8; 10] {
    let mut r = [0u8; 10];
    r[..8].copy_from_slice(&man.to_le_bytes());
    r[8..].copy_from_slice(&(u16::from(sign) << 15 | exp).to_le_bytes());
    r
}

/// x87 stores of ST(0) at the limits, against the CPU, in every rounding
/// mode with every exception masked and with every one unmasked: ties
/// and round-ups at half the smallest single and double denormals, the
/// smallest normals, significands that carry into the exponent, the
/// integer stores' ranges on either side (2^15, 2^31, 2^63, half a unit
/// off), values no integer holds, and a signalling NaN.
#[test]
fn x87_stores_at_their_limits_match_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    let one = 1u64 << 63;
    let mut values = vec![
        f80(false, 16383 - 150, one),
        f80(true, 16383 - 150, 3 << 62),
        f80(false, 16383 - 1075, one),
        f80(false, 16383 - 1075, 3 << 62),
        f80(false, 16383 - 126, one),
        f80(true, 16383 - 1022, one),
        f80(false, 16383, 0xffff_fffc_0000_0000),
        f80(false, 16383, u64::MAX),
        f80(false, 0x7fff, one | 1),
    ];
    for v in
        [32768.0, -32768.0, 32767.5, -32768.5, 2147483648.0, -2147483648.0, 2147483647.5, 1.8446744073709552e19, -1e20]
    {
        values.push(f64_to_f80(v));
    }
    for k in [62, 63] {
        values.push(f80(false, 16383 + k, one));
        values.push(f80(true, 16383 + k, one));
    }
    values.push(f80(true, 16383 + 63, one | 1 << 52));
    // FST/FSTP m32 and m64, FSTP m80, FISTP m16/m32/m64.
    let forms = [(0xd9u8, 2u8), (0xd9, 3), (0xdd, 2), (0xdd, 3), (0xdb, 7), (0xdf, 3), (0xdb, 3), (0xdf, 7)];
    for v in &values {
        for &(op, reg) in &forms {
            for rc in 0..4u16 {
                for masks in [0x3fu16, 0] {
                    let v = *v;
                    b.check(&[op, (reg << 3) | 3], 0, &move |st: &mut State, rng: &mut Rng| {
                        rbx_at_data(st, rng);
                        st.fpu.fx_cw = 0x340 | masks | rc << 10;
                        st.fpu.fx_sw = 7 << 11;
                        st.fpu.fx_tw = 1 << 7;
                        st.fpu.fx_87_ac[0] = [0; 16];
                        st.fpu.fx_87_ac[0][..10].copy_from_slice(&v);
                    });
                }
            }
        }
    }
}

/// REPE and REPNE CMPS stop where their condition ends, as on the CPU:
/// REPE over operands equal for the first `k` elements, REPNE over
/// operands that differ until element `k`.
#[test]
fn repeated_compares_stop_where_the_cpu_stops() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    for (op, size) in [(0xa6u8, 1usize), (0xa7, 4)] {
        for (rep, equal_run) in [(0xf3u8, true), (0xf2, false)] {
            for k in 0..5usize {
                let setup = |st: &mut State, _: &mut Rng| {
                    st.gprs[Gpr::Rsi] = DATA + 96;
                    st.gprs[Gpr::Rdi] = DATA + 160;
                    st.gprs[Gpr::Rcx] = 4;
                };
                b.check_data(&[rep, op], 0, &setup, &move |st: &State, data: &mut [u8], rng: &mut Rng| {
                    let (src, dst) = ((st.gprs[Gpr::Rsi] - DATA) as usize, (st.gprs[Gpr::Rdi] - DATA) as usize);
                    for e in 0..5 {
                        let same = if equal_run { e < k } else { e == k };
                        for i in 0..size {
                            let x = rng.next() as u8;
                            data[src + e * size + i] = x;
                            data[dst + e * size + i] = if same || i > 0 { x } else { x ^ 0x80 };
                        }
                    }
                });
            }
        }
    }
}

#[test]
fn x87_loads_and_stores_match_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    // (opcode, ModRM.reg) of every form.
    let forms = [
        (0xd9u8, 0u8),
        (0xd9, 2),
        (0xd9, 3),
        (0xdd, 0),
        (0xdd, 2),
        (0xdd, 3),
        (0xdb, 5),
        (0xdb, 7),
        (0xdf, 0),
        (0xdb, 0),
        (0xdf, 5),
        (0xdf, 3),
        (0xdb, 3),
        (0xdf, 7),
    ];
    for round in 0..40 {
        for &(op, reg) in &forms {
            let rc = (round % 4) as u16;
            let stack_depth = round % 3;
            // Every fifth round some exceptions unmasked: the CPU then
            // pushes or stores nothing for them and sets ES and B.
            let unmasked = if round % 5 == 4 { (round as u16 * 0x25) & 0x3f } else { 0 };
            // Every other round the memory operand of a floating-point load
            // is a special value: a denormal, a NaN (signalling or quiet)
            // or, for m80, any class (pseudo-denormals and unnormals too).
            let special_operand = round % 2 == 1;
            let setup = move |st: &mut State, rng: &mut Rng| {
                rbx_at_data(st, rng);
                st.fpu.fx_cw = (0x37f & !unmasked) | (rc << 10);
                // A few values on the stack: random doubles and special ones.
                let specials =
                    [0.0f64, -0.0, 1.5, -3.25e300, 1e-310, f64::INFINITY, f64::NAN, 7.0e-45, 3.4e38, 65536.5];
                let mut top = 0u16;
                for k in 0..stack_depth {
                    let v = if rng.next() % 2 == 0 {
                        specials[(rng.next() % specials.len() as u64) as usize]
                    } else {
                        f64::from_bits(rng.next())
                    };
                    top = top.wrapping_sub(1) & 7;
                    st.fpu.fx_tw |= 1 << top;
                    st.fpu.fx_87_ac[k] = [0; 16];
                    // A third of them any 80-bit value (every exponent, so
                    // that stores round far below the smallest denormal
                    // too, and unsupported encodings).
                    if rng.next() % 3 == 0 {
                        st.fpu.fx_87_ac[k][..10].copy_from_slice(&x87_value(rng));
                        continue;
                    }
                    st.fpu.fx_87_ac[k][..10].copy_from_slice(&f64_to_f80(v));
                }
                // FXSAVE keeps ST(i) in stack order; the registers above were
                // pushed last-first, so reverse them.
                st.fpu.fx_87_ac[..stack_depth].reverse();
                st.fpu.fx_sw = top << 11;
            };
            let data_setup = move |st: &State, data: &mut [u8], rng: &mut Rng| {
                if !special_operand {
                    return;
                }
                let at = (st.gprs[Gpr::Rbx] - DATA) as usize;
                let sign = rng.next() & 1;
                match (op, reg) {
                    (0xd9, 0) => {
                        let bits = match rng.next() % 3 {
                            0 => (rng.next() as u32 & 0x007f_ffff) | 1,
                            1 => 0x7f80_0001 | (rng.next() as u32 & 0x003f_ffff),
                            _ => 0x7fc0_0000 | (rng.next() as u32 & 0x003f_ffff),
                        } | (sign as u32) << 31;
                        data[at..at + 4].copy_from_slice(&bits.to_le_bytes());
                    }
                    (0xdd, 0) => {
                        let bits = match rng.next() % 3 {
                            0 => (rng.next() & 0x000f_ffff_ffff_ffff) | 1,
                            1 => 0x7ff0_0000_0000_0001 | (rng.next() & 0x0007_ffff_ffff_ffff),
                            _ => 0x7ff8_0000_0000_0000 | (rng.next() & 0x0007_ffff_ffff_ffff),
                        } | sign << 63;
                        data[at..at + 8].copy_from_slice(&bits.to_le_bytes());
                    }
                    (0xdb, 5) => data[at..at + 10].copy_from_slice(&x87_value(rng)),
                    _ => {}
                }
            };
            b.check_data(&[op, (reg << 3) | 3], 0, &setup, &data_setup);
        }
    }
    println!("{} cases", b.cases);
}

#[test]
fn vector_moves_match_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    let avx = nvmm().capability().arch.xcr0_mask & xfeature::AVX != 0;
    let legacy: [&[u8]; 13] = [
        &[0x0f, 0x10],
        &[0x0f, 0x11],
        &[0x0f, 0x28],
        &[0x0f, 0x29],
        &[0x66, 0x0f, 0x6f],
        &[0x66, 0x0f, 0x7f],
        &[0xf3, 0x0f, 0x6f],
        &[0xf3, 0x0f, 0x7f],
        &[0x66, 0x0f, 0xe7],
        &[0x66, 0x0f, 0x6e],
        &[0x66, 0x0f, 0x7e],
        &[0xf3, 0x0f, 0x7e],
        &[0x66, 0x0f, 0xd6],
    ];
    // The forms without an alignment rule also at addresses no vector
    // size divides (MOVAPS, MOVDQA and MOVNTDQ fault there: see
    // `faults_match_the_cpu`).
    let unaligned = |st: &mut State, rng: &mut Rng| st.gprs[Gpr::Rbx] = DATA + 64 + 1 + rng.next() % 15;
    let any_alignment = |form: &[u8]| !matches!(form, [0x0f, 0x28 | 0x29] | [0x66, 0x0f, 0x6f | 0x7f | 0xe7]);
    for round in 0..8 {
        for form in legacy {
            let reg = (round % 8) as u8;
            let mut insn = form.to_vec();
            insn.push((reg << 3) | 3);
            b.check(&insn, 0, &rbx_at_data);
            if any_alignment(form) {
                b.check(&insn, 0, &unaligned);
            }
            if avx {
                // The VEX forms: map the mandatory prefix to VEX.pp.
                let (pp, rest) = match form[0] {
                    0x66 => (1u8, &form[1..]),
                    0xf3 => (2, &form[1..]),
                    _ => (0, form),
                };
                for l in [0u8, 4] {
                    if l == 4 && matches!(rest[1], 0x6e | 0x7e | 0xd6) {
                        continue;
                    }
                    let insn = [0xc5, 0xf8 | l | pp, rest[1], (reg << 3) | 3];
                    b.check(&insn, 0, &rbx_at_data);
                    if any_alignment(form) {
                        b.check(&insn, 0, &unaligned);
                    }
                }
            }
        }
    }
}

/// A random x87 register value: a random 80-bit pattern, or one of the
/// classes the full tag word tells apart (zero, denormal, infinity, NaN,
/// unnormal, normal).
fn x87_value(rng: &mut Rng) -> [u8; 10] {
    let sign = (rng.next() as u16) & 0x8000;
    let (man, exp) = match rng.next() % 8 {
        0 => (0, 0),
        1 => (rng.next() >> 1, 0),
        // Pseudo-denormal: exponent 0, integer bit set.
        6 => ((1 << 63) | rng.next(), 0),
        2 => (1 << 63, 0x7fff),
        3 => ((3 << 62) | (rng.next() >> 2), 0x7fff),
        4 => (rng.next() >> 1, (rng.next() as u16 % 0x7ffe) + 1),
        5 => ((1 << 63) | rng.next(), (rng.next() as u16 % 0x7ffe) + 1),
        _ => (rng.next(), rng.next() as u16),
    };
    let mut r = [0u8; 10];
    r[..8].copy_from_slice(&man.to_le_bytes());
    r[8..].copy_from_slice(&((exp & 0x7fff) | sign).to_le_bytes());
    r
}

/// FNSTENV, FLDENV, FNSAVE and FRSTOR in both formats (16- and 32-bit
/// operand size, the first with 66) in 64-bit code, against the CPU (this
/// host raises #UD for them at CPL 3 in compatibility mode, which is why
/// 32- and 16-bit code are not compared here): the image stored
/// (control, status and full tag words computed from the registers,
/// pointers, opcode, ST0-ST7, the reserved halves) and the state loaded
/// from random images. Stacks of any depth and TOP hold normal, zero,
/// denormal, pseudo-denormal, infinite, NaN and unnormal values. What a register tagged
/// empty holds is not part of the state a VMM sets (this host keeps other
/// contents there): FNSAVE's image of such a register is not compared,
/// and FLDENV's images leave such registers empty.
#[test]
fn x87_environment_matches_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    b.pointers = true;
    let base = b.data() + 64;
    let rm = 3; // [rbx]
    for round in 0..16u64 {
        let top = (round % 8) as u16;
        let tags = (round.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
        for (op, reg) in [(0xd9u8, 6u8), (0xd9, 4), (0xdd, 6), (0xdd, 4)] {
            for p66 in [false, true] {
                let mut insn = if p66 { vec![0x66] } else { vec![] };
                insn.extend([op, reg << 3 | rm]);
                let load = reg == 4;
                let full = op == 0xdd;
                let env = if p66 { 14 } else { 28 };
                b.ignore = Vec::new();
                if full && !load {
                    for k in 0..8u16 {
                        if tags & (1 << ((k + top) & 7)) == 0 {
                            let at = 64 + env + 10 * usize::from(k);
                            b.ignore.extend((at..at + 10).map(|i| (i, 0xff)));
                        }
                    }
                }
                let setup = move |st: &mut State, rng: &mut Rng| {
                    st.gprs[Gpr::Rbx] = base;
                    // Every exception masked, any rounding and precision.
                    st.fpu.fx_cw = 0x7f | (rng.next() as u16 & 0xf00);
                    st.fpu.fx_sw = (rng.next() as u16 & 0x3f) | top << 11;
                    st.fpu.fx_tw = tags;
                    for r in st.fpu.fx_87_ac.iter_mut() {
                        r[..10].copy_from_slice(&x87_value(rng));
                    }
                    st.fpu.fx_opcode = rng.next() as u16 & 0x7ff;
                    st.fpu.fx_ip = rng.next() & 0xffff_ffff;
                    st.fpu.fx_dp = rng.next() & 0xffff_ffff;
                };
                let image = move |_: &State, data: &mut [u8], rng: &mut Rng| {
                    if !load {
                        return;
                    }
                    let img = &mut data[64..64 + env + if full { 80 } else { 0 }];
                    for byte in img.iter_mut() {
                        *byte = rng.next() as u8;
                    }
                    // A control word with every exception masked, and
                    // a status word without ES and B; every other round
                    // an invalid operation pending instead (IE unmasked
                    // and set, ES and B), which makes the CPU's pointers
                    // (FOP, FIP, FDP) part of the comparison.
                    let pending = round % 2 == 1;
                    let cw = if pending { 0x7e } else { 0x7f } | (rng.next() as u16 & 0xf00);
                    let sw = (rng.next() as u16 & 0x787f & !0x80) | if pending { 0x8081 } else { 0 };
                    let (sw_at, tw_at) = if env == 28 { (4, 8) } else { (2, 4) };
                    img[0..2].copy_from_slice(&cw.to_le_bytes());
                    img[sw_at..sw_at + 2].copy_from_slice(&sw.to_le_bytes());
                    if !full {
                        // Registers empty now stay empty.
                        let mut tw = u16::from_le_bytes([img[tw_at], img[tw_at + 1]]);
                        for p in 0..8 {
                            if tags & (1 << p) == 0 {
                                tw |= 3 << (2 * p);
                            }
                        }
                        img[tw_at..tw_at + 2].copy_from_slice(&tw.to_le_bytes());
                    } else {
                        for k in 0..8 {
                            img[env + 10 * k..env + 10 * k + 10].copy_from_slice(&x87_value(rng));
                        }
                    }
                };
                b.check_data(&insn, 0, &setup, &image);
            }
        }
    }
    println!("{} cases", b.cases);
}

/// RBX at a 64-byte aligned place in the data area, for the XSAVE family.
fn rbx_at_area(st: &mut State, _rng: &mut Rng) {
    st.gprs[Gpr::Rbx] = DATA + 64;
}

#[test]
fn x87_control_instructions_match_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    let forms: [&[u8]; 7] = [
        &[0xdb, 0xe3], // fninit
        &[0xdb, 0xe2], // fnclex
        &[0x9b],       // fwait
        &[0xdf, 0xe0], // fnstsw ax
        &[0xdd, 0x3b], // fnstsw [rbx]
        &[0xd9, 0x3b], // fnstcw [rbx]
        &[0xd9, 0x2b], // fldcw [rbx]
    ];
    for round in 0..24u16 {
        for form in forms {
            // FWAIT and FLDCW raise #MF for a pending exception: not here.
            let masked = round % 3 != 0 || form == [0x9b] || form == [0xd9, 0x2b];
            b.check(form, 0, &move |st: &mut State, rng: &mut Rng| {
                rbx_at_data(st, rng);
                // Some exception flags, masked or not (then ES and B), a
                // stack top and a control word of any rounding/precision.
                let flags = (rng.next() & 0x7f) as u16;
                let cw = 0x40 | if masked { 0x3f } else { (rng.next() & 0x3f) as u16 } | (rng.next() as u16 & 0xf00);
                let pending = flags & 0x3f & !cw != 0;
                st.fpu.fx_cw = cw;
                st.fpu.fx_sw = flags | (round & 7) << 11 | if pending { 0x8080 } else { 0 };
                st.fpu.fx_tw = rng.next() as u8;
            });
        }
    }
    // What does not fault: x87 control with CR4.OSFXSR off (it governs
    // SSE only), FWAIT with CR0.TS set but MP clear (SDM: #NM needs both).
    for _ in 0..4 {
        for form in forms {
            b.check(form, 0, &|st: &mut State, rng: &mut Rng| {
                rbx_at_data(st, rng);
                st.crs[Cr::Cr4] &= !cr4::OSFXSR;
                // Without the CR0.TS the FWAIT case leaves behind.
                st.crs[Cr::Cr0] &= !8;
            });
        }
        b.check(&[0x9b], 0, &|st: &mut State, _: &mut Rng| {
            st.crs[Cr::Cr0] = (st.crs[Cr::Cr0] | 8) & !2;
        });
    }
    println!("{} cases", b.cases);
}

/// The x87 environment instructions in real and virtual-8086 mode, whose
/// formats hold 20-bit linear pointers, are left to the VMM: the emulator
/// says so instead of storing the protected-mode format.
#[test]
fn x87_environments_in_real_and_virtual_8086_mode_are_left_to_the_vmm() {
    for (insn, vm86) in [([0xd9, 0x37], false), ([0xdd, 0x27], false), ([0xd9, 0x37], true)] {
        let mut st = State::default();
        nvmm::x86::modes::real_mode_entry(&mut st, 0x1000);
        if vm86 {
            st.crs[Cr::Cr0] |= 1;
            st.gprs[Gpr::Rflags] |= 1 << 17;
        }
        let c = decode_control(&insn, CpuMode::Bits16).unwrap();
        let mut mem = HashMap::new();
        let r = execute_control(&c, &mut LazyCpu::new(st, Xsave::default()), &mut MemView(&mut mem));
        assert!(matches!(r, Err(EmuError::Unsupported(_))), "{insn:02x?} vm86={vm86}: {r:?}");
        assert!(mem.is_empty(), "nothing stored");
    }
}

/// VEX-encoded instructions are #UD in real mode, and where XCR0 does not
/// enable both SSE and AVX (SDM vol. 2, 2.8), whatever CR4 says.
#[test]
fn vex_is_ud_in_real_mode_and_without_avx_in_xcr0() {
    let vmovdqa = [0xc5, 0xfd, 0x6f, 0xc1];
    let mut real = State::default();
    nvmm::x86::modes::real_mode_entry(&mut real, 0x1000);
    let mut no_avx = State::default();
    nvmm::x86::modes::long_mode(&mut no_avx, 0x1000, 0x2000);
    for (st, mode, xcr0) in [(real, CpuMode::Bits16, 7), (no_avx, CpuMode::Bits64, 3), (no_avx, CpuMode::Bits64, 7)] {
        let mut st = st;
        st.crs[Cr::Cr4] |= cr4::OSXSAVE | cr4::OSFXSR;
        st.crs[Cr::Xcr0] = xcr0;
        let c = decode_control(&vmovdqa, mode).unwrap();
        let mut mem = HashMap::new();
        let r = execute_control(&c, &mut LazyCpu::new(st, Xsave::default()), &mut MemView(&mut mem));
        let ud = matches!(r, Err(EmuError::Exception { vector: 6, .. }));
        assert_eq!(ud, mode == CpuMode::Bits16 || xcr0 == 3, "{mode:?} XCR0 {xcr0}: {r:?}");
    }
}

/// VERR and VERW are #UD in real mode (SDM), whatever else the state
/// allows; the emulator runs them from any state a caller holds.
#[test]
fn verr_and_verw_are_ud_in_real_mode() {
    for insn in [[0x0f, 0x00, 0x20], [0x0f, 0x00, 0x28]] {
        let c = decode_control(&insn, CpuMode::Bits16).unwrap();
        let mut st = State::default();
        nvmm::x86::modes::real_mode_entry(&mut st, 0x1000);
        st.crs[Cr::Cr4] |= cr4::OSFXSR;
        let mut cpu = LazyCpu::new(st, Xsave::default());
        let mut mem = HashMap::new();
        match execute_control(&c, &mut cpu, &mut MemView(&mut mem)) {
            Err(EmuError::Exception { vector: 6, error_code: None, .. }) => {}
            other => panic!("{insn:02x?}: {other:?}"),
        }
    }
}

#[test]
fn mxcsr_and_vector_register_instructions_match_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    let avx = b.avx;
    let valid_mxcsr = |st: &State, data: &mut [u8], rng: &mut Rng| {
        let mask = if st.fpu.fx_mxcsr_mask == 0 { 0xffbf } else { st.fpu.fx_mxcsr_mask };
        let off = (st.gprs[Gpr::Rbx] - DATA) as usize;
        data[off..off + 4].copy_from_slice(&((rng.next() as u32) & mask).to_le_bytes());
    };
    let random_mxcsr = |st: &mut State, rng: &mut Rng| {
        rbx_at_data(st, rng);
        st.fpu.fx_mxcsr = 0x1f80 ^ (rng.next() as u32 & 0x7fff);
    };
    let mut forms: Vec<Vec<u8>> = vec![vec![0x0f, 0xae, 0x13], vec![0x0f, 0xae, 0x1b]]; // ldmxcsr, stmxcsr [rbx]
    if avx {
        forms.extend([vec![0xc5, 0xf8, 0xae, 0x13], vec![0xc5, 0xf8, 0xae, 0x1b]]);
    }
    for _ in 0..16 {
        for f in &forms {
            b.check_data(f, 0, &random_mxcsr, &valid_mxcsr);
        }
    }
    // Register forms: REX.R/REX.B (VEX.R/VEX.B) reach XMM8-15 and R8-R15.
    let mut insns: Vec<Vec<u8>> = Vec::new();
    for round in 0..6u8 {
        let modrm = 0xc0 | (round.wrapping_mul(5) & 7) << 3 | (round.wrapping_mul(3) + 1) & 7;
        let rex = 0x40 | (round & 1) << 2 | (round >> 1) & 1;
        for (prefix, op) in [
            (&[][..], 0x10u8),
            (&[], 0x11),
            (&[], 0x28),
            (&[], 0x29),
            (&[0x66], 0x10),
            (&[0x66], 0x28),
            (&[0x66], 0x6f),
            (&[0x66], 0x7f),
            (&[0xf3], 0x6f),
            (&[0xf3], 0x7f),
            (&[0xf3], 0x7e),
            (&[0x66], 0xd6),
            (&[0x66], 0x6e),
            (&[0x66], 0x7e),
            (&[], 0x57),
            (&[0x66], 0x57),
            (&[0x66], 0xef),
        ] {
            let mut i = prefix.to_vec();
            i.extend([rex, 0x0f, op, modrm]);
            insns.push(i);
            if matches!(op, 0x6e | 0x7e) && prefix == [0x66] {
                let mut w = prefix.to_vec();
                w.extend([rex | 8, 0x0f, op, modrm]);
                insns.push(w);
            }
            if matches!(op, 0x57 | 0xef) {
                // With memory: [rbx], 16-byte aligned.
                let mut m = prefix.to_vec();
                m.extend([0x0f, op, 0x03 | (modrm & 0x38)]);
                insns.push(m);
            }
            if avx {
                let pp = match prefix {
                    [0x66] => 1u8,
                    [0xf3] => 2,
                    _ => 0,
                };
                let narrow = matches!(op, 0x6e | 0x7e | 0xd6);
                let three = matches!(op, 0x57 | 0xef);
                for l in [0u8, 4] {
                    if l == 4 && narrow {
                        continue;
                    }
                    let vvvv = if three { !(round * 3) & 0xf } else { 0xf };
                    let r_bar = if rex & 4 != 0 { 0 } else { 0x80 };
                    let b_bar = if rex & 1 != 0 { 0 } else { 0x20 };
                    // Three-byte VEX, to reach XMM8-15 in both fields.
                    for w in [0u8, 0x80] {
                        if w != 0 && !narrow {
                            continue;
                        }
                        insns.push(vec![0xc4, r_bar | 0x40 | b_bar | 1, w | vvvv << 3 | l | pp, op, modrm]);
                    }
                    if three {
                        insns.push(vec![0xc5, 0x80 | vvvv << 3 | l | pp, op, 0x03 | (modrm & 0x38)]);
                    }
                }
            }
        }
    }
    if avx {
        insns.extend([vec![0xc5, 0xf8, 0x77], vec![0xc5, 0xfc, 0x77]]);
    }
    for i in &insns {
        b.check(i, 0, &rbx_at_data);
    }
    println!("{} cases", b.cases);
}

/// A valid XSAVE area at RBX for XRSTOR: random registers, a valid MXCSR,
/// a header with random XSTATE_BV (and XCOMP_BV for the compacted form).
fn xsave_image(st: &State, data: &mut [u8], rng: &mut Rng, compacted: bool) {
    let off = (st.gprs[Gpr::Rbx] - DATA) as usize;
    let area = &mut data[off..off + 832];
    let mask = if st.fpu.fx_mxcsr_mask == 0 { 0xffbf } else { st.fpu.fx_mxcsr_mask };
    area[24..28].copy_from_slice(&((rng.next() as u32) & mask).to_le_bytes());
    // FCW of any rounding and precision, half the time with invalid
    // operations unmasked: with FSW's random IE an exception is then
    // pending, which makes the CPU's ES, and so the pointer comparison,
    // come into play.
    area[0..2].copy_from_slice(&(0x37f ^ (rng.next() as u16 & 0xc01)).to_le_bytes());
    // FIP and FDP canonical (this host's CPU keeps 56 bits of FIP).
    for at in [8, 16] {
        let v = u64::from_le_bytes(area[at..at + 8].try_into().unwrap()) & 0x7fff_ffff_ffff;
        area[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    area[512..576].fill(0);
    let xcr0 = st.crs[Cr::Xcr0];
    let mut bv = rng.next() & xcr0;
    if compacted {
        // The compacted form with SSE not in use sets MXCSR to 1F80H on
        // Intel CPUs and leaves it on some AMD ones: not compared.
        bv |= xfeature::SSE;
    }
    area[512..520].copy_from_slice(&bv.to_le_bytes());
    if compacted {
        let comp = (bv | (rng.next() & xcr0)) | 1 << 63;
        area[520..528].copy_from_slice(&comp.to_le_bytes());
    }
}

/// Which components XSAVE and XSAVEC find in use (XINUSE): the x87 when
/// any one of its fields leaves its initial state (FCW, FSW, FTW, FOP,
/// FIP, FDP, a register), SSE when MXCSR or one XMM register does, the
/// other fields of both initial. The CPU's XSTATE_BV and compacted layout
/// are the oracle.
#[test]
fn xsave_finds_a_component_in_use_by_any_one_field_as_the_cpu_does() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    b.pointers = true;
    type Field = fn(&mut State);
    let fields: [(u64, Field); 9] = [
        (1, |st| st.fpu.fx_cw = 0x27f),
        (1, |st| st.fpu.fx_sw = 0x20),
        (1, |st| st.fpu.fx_tw = 0x01),
        (1, |st| st.fpu.fx_opcode = 0x123),
        (1, |st| st.fpu.fx_ip = 0x1234),
        (1, |st| st.fpu.fx_dp = 0x5678),
        (1, |st| st.fpu.fx_87_ac[3][..10].copy_from_slice(&[1; 10])),
        (2, |st| st.fpu.fx_mxcsr = 0x1fa0),
        (2, |st| st.fpu.fx_xmm[5][7] = 0x40),
    ];
    for (rfbm, field) in fields {
        for form in [[0x0f, 0xae, 0x23], [0x0f, 0xc7, 0x23]] {
            b.check(&form, 0, &move |st: &mut State, rng: &mut Rng| {
                rbx_at_area(st, rng);
                (st.gprs[Gpr::Rax], st.gprs[Gpr::Rdx]) = (rfbm, 0);
                let f = &mut st.fpu;
                (f.fx_cw, f.fx_sw, f.fx_tw, f.fx_opcode, f.fx_ip, f.fx_dp) = (0x37f, 0, 0, 0, 0, 0);
                f.fx_87_ac = [[0; 16]; 8];
                (f.fx_mxcsr, f.fx_xmm) = (0x1f80, [[0; 16]; 16]);
                field(st);
            });
        }
    }
    println!("{} cases", b.cases);
}

#[test]
fn xsave_family_matches_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    xsave_family(Bench::new(), 48);
}

/// The data area for the emulator alone: `byte(i)` at DATA + i.
fn data_area(byte: impl Fn(u64) -> u8) -> HashMap<u64, u8> {
    (0..DATA_LEN as u64).map(|i| (DATA + i, byte(i))).collect()
}

/// A state for the emulator alone (no VCPU): long mode at CPL 0, in
/// 64-bit code or, with `compat`, 32-bit compatibility-mode code; SSE and
/// XSAVE enabled, XCR0 x87|SSE|AVX, EDX:EAX asking for all three, RBX at a
/// 64-byte aligned area in the data, MXCSR 1F80H.
fn emulator_state(compat: bool) -> State {
    let mut st = State::default();
    nvmm::x86::modes::long_mode(&mut st, 0x800, 0x10000);
    if compat {
        st.segs[nvmm::Seg::Cs].attrib = SegAttrib::new(11, true, 0, true, false, false, true, true);
    }
    st.crs[Cr::Cr4] |= cr4::OSXSAVE | cr4::OSFXSR;
    st.crs[Cr::Xcr0] = 7;
    (st.gprs[Gpr::Rax], st.gprs[Gpr::Rdx], st.gprs[Gpr::Rbx]) = (7, 0, DATA + 64);
    st.fpu.fx_mxcsr = 0x1f80;
    st
}

/// The XSAVE family in 32-bit code, where this host's CPU cannot serve
/// (it raises #UD for XSAVE in compatibility-mode guest code), held to
/// the SDM instead (13.5.1, 13.5.2): outside 64-bit mode only XMM0-7 and
/// YMM0-7 are saved and restored (the bytes of the others are left alone,
/// the registers too), FIP and FDP are 32-bit offsets with FCS and FDS
/// stored as zero, and the area must lie within DS: XSAVE's (x87, SSE, AVX
/// at 576) and XSAVEC's (AVX right after the header) end at 832, one byte
/// short of that is #GP(0).
#[test]
fn xsave_family_in_32_bit_code_follows_the_sdm() {
    let mut st = emulator_state(true);
    st.fpu.fx_ip = 0x1234_5678_9abc_def0;
    st.fpu.fx_dp = 0x0fed_cba9_8765_4321;
    let mut xs = Xsave::default();
    for i in 0..16 {
        st.fpu.fx_xmm[i] = [0x10 + i as u8; 16];
        xs.set_ymm_hi(i, [0x30 + i as u8; 16]).unwrap();
    }
    let fresh = || data_area(|_| 0xee);
    let byte = |mem: &HashMap<u64, u8>, off: usize| mem[&(DATA + 64 + off as u64)];
    // XSAVE: XMM0-7 and YMM0-7 only, 32-bit pointers.
    let mut mem = fresh();
    let mut cpu = LazyCpu::new(st, xs.clone());
    emulate(&[0x0f, 0xae, 0x23], CpuMode::Bits32, &mut cpu, &mut mem, "xsave").unwrap();
    for r in 0..16 {
        let (xmm, ymm) = (byte(&mem, 160 + 16 * r), byte(&mem, 576 + 16 * r));
        let saved = r < 8;
        assert_eq!(xmm, if saved { 0x10 + r as u8 } else { 0xee }, "XMM{r}");
        assert_eq!(ymm, if saved { 0x30 + r as u8 } else { 0xee }, "YMM{r}'s upper half");
    }
    let bytes = |mem: &HashMap<u64, u8>, off: usize| (0..8).map(|i| byte(mem, off + i)).collect::<Vec<u8>>();
    assert_eq!(bytes(&mem, 8), [0xf0, 0xde, 0xbc, 0x9a, 0, 0, 0, 0], "FIP, FCS zero");
    assert_eq!(bytes(&mem, 16), [0x21, 0x43, 0x65, 0x87, 0, 0, 0, 0], "FDP, FDS zero");
    // XRSTOR of an area with other registers: XMM8-15 and YMM8-15 keep
    // their values; the pointers are 32 bits of the area's.
    let mut image: Vec<u8> = (0..832).map(|i| byte(&mem, i)).collect();
    for r in 0..16 {
        image[160 + 16 * r..176 + 16 * r].fill(0x80 | r as u8);
        image[576 + 16 * r..592 + 16 * r].fill(0xc0 | r as u8);
    }
    image[8..24].copy_from_slice(&[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0, 0, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0, 0]);
    // XSAVE kept the header's other bits as they were: XRSTOR wants them
    // zero.
    image[512..576].fill(0);
    image[512] = 7;
    let mut mem: HashMap<u64, u8> = image.iter().enumerate().map(|(i, b)| (DATA + 64 + i as u64, *b)).collect();
    let mut cpu = LazyCpu::new(st, xs.clone());
    emulate(&XRSTOR, CpuMode::Bits32, &mut cpu, &mut mem, "xrstor").unwrap();
    cpu.settle();
    for r in 0..16 {
        let (xmm, ymm) = (cpu.state.fpu.fx_xmm[r][0], cpu.xsave.ymm_hi(r).unwrap()[0]);
        let loaded = r < 8;
        assert_eq!(xmm, if loaded { 0x80 | r as u8 } else { 0x10 + r as u8 }, "XMM{r} restored");
        assert_eq!(ymm, if loaded { 0xc0 | r as u8 } else { 0x30 + r as u8 }, "YMM{r}'s upper half restored");
    }
    let (fip, fdp) = (cpu.state.fpu.fx_ip, cpu.state.fpu.fx_dp);
    assert_eq!((fip, fdp), (0x4433_2211, 0xaa99_8877), "FIP and FDP without FCS and FDS");
    // The area within DS's limit, byte-granular (G clear).
    for (form, name) in [([0x0f, 0xae, 0x23], "xsave"), ([0x0f, 0xc7, 0x23], "xsavec")] {
        for (short, fault) in [(0, false), (1, true)] {
            let mut s = st;
            s.segs[nvmm::Seg::Ds].limit = (DATA + 64 + 832 - 1 - short) as u32;
            s.segs[nvmm::Seg::Ds].attrib = SegAttrib::new(3, true, 0, true, false, false, true, false);
            let mut cpu = LazyCpu::new(s, xs.clone());
            let r = emulate(&form, CpuMode::Bits32, &mut cpu, &mut fresh(), name);
            let gp = matches!(r, Err(EmuError::Exception { vector: 13, error_code: Some(0), .. }));
            assert_eq!(gp, fault, "{name}: DS's limit {short} byte(s) short of the area's end: {r:?}");
        }
    }
}

fn xsave_family(mut b: Bench, rounds: u64) {
    b.pointers = true;
    let none = |_: &State, _: &mut [u8], _: &mut Rng| {};
    let cpu_xcr0 = b.cpl3_xcr0();
    let rfbm_mask = b.rfbm_mask(cpu_xcr0);
    // REX.W (64-bit FIP and FDP) exists in 64-bit code only.
    let rexes: &[&[u8]] = if b.mode == CpuMode::Bits64 { &[&[], &[0x48]] } else { &[&[]] };
    for round in 0..rounds {
        // Every third round SSE, every other AVX in its initial state.
        // Whether the CPU then reports the component in use (XSTATE_BV)
        // and whether XSAVEOPT and XSAVEC skip it is its choice (SDM
        // 13.6): those rounds leave the bits out and run XSAVE and XRSTOR
        // only.
        let sse_init = round % 3 == 0;
        let avx_init = round % 2 == 0;
        b.avx_in_use = Some(!avx_init);
        b.ignore = vec![(64 + 512, if sse_init { 2 } else { 0 } | if avx_init { 4 } else { 0 })];
        let state = move |st: &mut State, rng: &mut Rng| {
            rbx_at_area(st, rng);
            st.gprs[Gpr::Rax] = (if round % 4 == 1 { u64::MAX } else { rng.next() }) & rfbm_mask;
            st.gprs[Gpr::Rdx] = rng.next() & (rfbm_mask >> 32);
            // x87 always in use: a control word other than FNINIT's.
            st.fpu.fx_cw = 0x27f ^ (rng.next() as u16 & 0xc00);
            st.fpu.fx_mxcsr = 0x1f80 ^ (rng.next() as u32 & 0x3f);
            if sse_init {
                st.fpu.fx_xmm = [[0; 16]; 16];
                st.fpu.fx_mxcsr = 0x1f80;
            }
        };
        for rex in rexes {
            let mut forms = vec![(0xaeu8, 4u8)];
            if !sse_init && !avx_init {
                forms.extend([(0xae, 6), (0xc7, 4)]);
            }
            for (op, reg) in forms {
                let mut i = rex.to_vec();
                i.extend([0x0f, op, reg << 3 | 3]);
                b.check_data(&i, 0, &state, &none);
            }
            let mut i = rex.to_vec();
            i.extend([0x0f, 0xae, 5 << 3 | 3]);
            b.check_data(&i, 0, &state, &|st: &State, d: &mut [u8], r: &mut Rng| xsave_image(st, d, r, false));
            b.check_data(&i, 0, &state, &|st: &State, d: &mut [u8], r: &mut Rng| xsave_image(st, d, r, true));
        }
        // XGETBV 0; XGETBV 1 when the components are in use.
        // (x87 in use too, by a control word other than FNINIT's: for a
        // component in its initial state XINUSE is the CPU's choice.)
        let ecx = if sse_init || avx_init { 0 } else { round % 2 };
        b.check(&[0x0f, 0x01, 0xd0], 0, &move |st: &mut State, _: &mut Rng| {
            st.gprs[Gpr::Rcx] = ecx;
            st.fpu.fx_cw = 0x27f;
        });
    }
    println!("{} cases", b.cases);
}

/// ORs `bits` into the 8-byte word at `at` of `a`.
fn or_word(a: &mut [u8], at: usize, bits: u64) {
    let w = u64::from_le_bytes(a[at..at + 8].try_into().unwrap()) | bits;
    a[at..at + 8].copy_from_slice(&w.to_le_bytes());
}

/// Where the sequences below save to: 832 bytes (x87, SSE and AVX in
/// the standard format) past the first area, 64-byte aligned.
const SECOND_AREA: usize = 0x340;

/// XSAVE [rbx+0x340] and XSAVEC [rbx+0x340].
const XSAVE_SECOND: [u8; 7] = [0x0f, 0xae, 0xa3, 0x40, 0x03, 0x00, 0x00];
const XSAVEC_SECOND: [u8; 7] = [0x0f, 0xc7, 0xa3, 0x40, 0x03, 0x00, 0x00];

/// XRSTOR [rbx] and VZEROUPPER.
const XRSTOR: [u8; 3] = [0x0f, 0xae, 0x2b];
const VZEROUPPER: [u8; 3] = [0xc5, 0xf8, 0x77];

/// What XRSTOR and VZEROUPPER leave for a later XSAVE or XSAVEC to find
/// in use (the header's XSTATE_BV, and which components XSAVEC writes),
/// against the CPU running the same two instructions. For a component
/// XRSTOR or VZEROUPPER put back in its initial state the SDM leaves
/// XINUSE to the CPU (13.6): a native run finds what this one does first.
/// Where it reports the component not in use (as the emulator does), the
/// emulator is held to that; where it does not, that bit is left out and
/// XSAVEC, which would then write the component, is not run.
#[test]
fn xinuse_after_xrstor_and_vzeroupper_matches_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    b.pointers = true;
    b.data_len = 2048;
    b.avx_in_use = Some(true);
    let cpu_xcr0 = b.cpl3_xcr0();
    let rfbm_mask = b.rfbm_mask(cpu_xcr0);
    let xcr0: u64 = if b.avx { 7 } else { 3 };
    let header_b = 64 + SECOND_AREA + 512;
    let bv_at = |data: &[u8]| u64::from_le_bytes(data[header_b..header_b + 8].try_into().unwrap());
    // The probes: every component initialized by XRSTOR (an all-zero
    // header, MXCSR 1F80H), or the upper halves zeroed by VZEROUPPER; then
    // XSAVE of all of them.
    let mut init_image = vec![0u8; 2048];
    init_image[64..66].copy_from_slice(&0x37fu16.to_le_bytes());
    init_image[64 + 24..64 + 28].copy_from_slice(&0x1f80u32.to_le_bytes());
    let all = move |st: &mut State| {
        st.gprs[Gpr::Rbx] = DATA + 64;
        (st.gprs[Gpr::Rax], st.gprs[Gpr::Rdx]) = (xcr0, 0);
    };
    let after = b.native_only(&[&XRSTOR[..], &XSAVE_SECOND].concat(), &all, [0x55; 16], &init_image);
    let kept_by_xrstor = bv_at(&after) & xcr0;
    let kept_by_vzeroupper = if b.avx {
        let after = b.native_only(&[&VZEROUPPER[..], &XSAVE_SECOND].concat(), &all, [0x55; 16], &init_image);
        bv_at(&after) & xfeature::AVX
    } else {
        0
    };
    println!(
        "this CPU reports in use after XRSTOR initialized them: {kept_by_xrstor:#x}; \
         AVX after VZEROUPPER: {}",
        kept_by_vzeroupper != 0
    );
    let none = |_: &State, _: &mut [u8], _: &mut Rng| {};
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    let mut held = 0;
    for round in 0..40u64 {
        let compacted = round % 2 == 1;
        // The requested-feature bitmap, every component every fourth
        // round; the components the image holds (the compacted one always
        // SSE, see `xsave_image`).
        let rfbm = (r.next() | if round % 4 == 0 { xcr0 } else { 0 }) & xcr0 & rfbm_mask;
        let bv = (r.next() & xcr0) | if compacted { xfeature::SSE } else { 0 };
        let uncertain = rfbm & !bv & kept_by_xrstor;
        held |= rfbm & !bv & !kept_by_xrstor & !xfeature::SSE;
        b.ignore = vec![(header_b, uncertain as u8)];
        // SSE initialized (MXCSR 1F80H from the area): compared in the
        // second area, where XSAVE stores MXCSR for SSE or AVX.
        b.mxcsr_in_memory = rfbm & xfeature::SSE != 0 && bv & xfeature::SSE == 0;
        let setup = move |st: &mut State, rng: &mut Rng| {
            rbx_at_area(st, rng);
            (st.gprs[Gpr::Rax], st.gprs[Gpr::Rdx]) = (rfbm, 0);
            // x87 in use before, by a control word other than FNINIT's
            // (SSE is: random XMM registers; AVX is: `avx_in_use`).
            st.fpu.fx_cw = 0x27f ^ (rng.next() as u16 & 0xc00);
        };
        let image = move |st: &State, data: &mut [u8], rng: &mut Rng| {
            xsave_image(st, data, rng, compacted);
            let area = &mut data[64..64 + 832];
            area[512..520].copy_from_slice(&bv.to_le_bytes());
            if compacted {
                let comp = bv | (rng.next() & xcr0) | 1 << 63;
                area[520..528].copy_from_slice(&comp.to_le_bytes());
            }
            if bv & xfeature::SSE == 0 {
                // SSE initialized wholly (the standard form loads MXCSR
                // from the area still).
                area[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
            }
        };
        b.check_sequence(&[&XRSTOR, &XSAVE_SECOND], 0, &setup, &image);
        if uncertain == 0 {
            b.check_sequence(&[&XRSTOR, &XSAVEC_SECOND], 0, &setup, &image);
        }
    }
    b.mxcsr_in_memory = false;
    if b.avx {
        for round in 0..8u64 {
            let rfbm = (r.next() | xfeature::AVX) & xcr0 & rfbm_mask;
            b.ignore = vec![(header_b, kept_by_vzeroupper as u8)];
            let setup = move |st: &mut State, rng: &mut Rng| {
                rbx_at_area(st, rng);
                (st.gprs[Gpr::Rax], st.gprs[Gpr::Rdx]) = (rfbm, 0);
                st.fpu.fx_cw = 0x27f ^ (rng.next() as u16 & 0xc00);
            };
            b.check_sequence(&[&VZEROUPPER, &XSAVE_SECOND], 0, &setup, &none);
            if kept_by_vzeroupper == 0 && round % 2 == 0 {
                b.check_sequence(&[&VZEROUPPER, &XSAVEC_SECOND], 0, &setup, &none);
                held |= xfeature::AVX;
            }
        }
    }
    println!("{} cases; components held to \"not in use\" after initialization: {held:#x}", b.cases);
}

/// The XSAVE family's faults against the CPU. XRSTOR's #GP for a header
/// the SDM forbids (13.8.1, standard form: XSTATE_BV outside XCR0, bytes
/// 8-23 not zero; 13.8.2, compacted form: XCOMP_BV outside XCR0,
/// XSTATE_BV outside XCOMP_BV, bytes 16-63 not zero) and for a reserved
/// MXCSR bit where MXCSR is loaded; XGETBV with CR4.OSXSAVE off #UD. What
/// is no fault: bytes 24-63 of a standard header (the SDM checks 8-23
/// only), a reserved MXCSR bit in a compacted area whose SSE is not in use
/// (MXCSR is then 1F80H, not loaded; compared as a following XSAVE stores
/// it).
#[test]
fn xsave_family_faults_match_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    let cpu_xcr0 = b.cpl3_xcr0();
    let rfbm_mask = b.rfbm_mask(cpu_xcr0);
    let xcr0: u64 = if b.avx { 7 } else { 3 };
    let rfbm = xcr0 & rfbm_mask;
    // A component bit neither the guest's XCR0 nor the CPU's has.
    let outside = (2..63).map(|i| 1u64 << i).find(|bit| (cpu_xcr0 | xcr0) & bit == 0).unwrap();
    let setup = move |st: &mut State, rng: &mut Rng| {
        rbx_at_area(st, rng);
        (st.gprs[Gpr::Rax], st.gprs[Gpr::Rdx]) = (rfbm, 0);
    };
    type Edit = fn(&mut [u8], u64, u64);
    const BIT31: [u8; 4] = 0x8000_1f80u32.to_le_bytes();
    // (compacted, what is changed in a valid area, #GP): the edit gets the
    // area, the `outside` bit and the guest's XCR0.
    let cases: [(bool, Edit, bool); 9] = [
        (false, |a, out, _| or_word(a, 512, out), true),
        (false, |a, _, _| a[512 + 8] = 1, true),
        (false, |a, _, _| a[512 + 20] = 1, true),
        (false, |a, _, _| a[512 + 40] = 1, false),
        (false, |a, _, _| a[24..28].copy_from_slice(&BIT31), true),
        (true, |a, out, _| or_word(a, 520, out), true),
        (
            true,
            |a, _, x| {
                a[512..528].copy_from_slice(
                    &[(x & !xfeature::SSE).to_le_bytes(), (xfeature::SSE | 1 << 63).to_le_bytes()].concat(),
                )
            },
            true,
        ),
        (true, |a, _, _| a[512 + 40] = 1, true),
        (true, |a, _, _| a[24..28].copy_from_slice(&BIT31), true),
    ];
    // Whether the CPU sets MXCSR to 1F80H for a compacted area without SSE
    // (the SDM, and Intel CPUs) or leaves it (some AMD CPUs), as a
    // following XSAVE stores it.
    b.data_len = 2048;
    let mut image = vec![0u8; 2048];
    image[64..66].copy_from_slice(&0x37fu16.to_le_bytes());
    let header = [xfeature::X87.to_le_bytes(), (xcr0 | 1 << 63).to_le_bytes()].concat();
    image[64 + 512..64 + 528].copy_from_slice(&header);
    let probe = move |st: &mut State| {
        st.gprs[Gpr::Rbx] = DATA + 64;
        (st.gprs[Gpr::Rax], st.gprs[Gpr::Rdx]) = (rfbm, 0);
        st.fpu.fx_mxcsr = 0x1fa0;
    };
    let after = b.native_only(&[&XRSTOR[..], &XSAVE_SECOND].concat(), &probe, [0; 16], &image);
    let at = 64 + SECOND_AREA + 24;
    let sdm_mxcsr = after[at..at + 4] == 0x1f80u32.to_le_bytes();
    println!("a compacted XRSTOR without SSE sets MXCSR to 1F80H here: {sdm_mxcsr}");
    let mut faults = Bench::new().with_handlers();
    for round in 0..4 {
        for &(compacted, edit, gp) in &cases {
            let image = move |st: &State, data: &mut [u8], rng: &mut Rng| {
                xsave_image(st, data, rng, compacted);
                edit(&mut data[64..64 + 832], outside, xcr0);
            };
            if gp {
                faults.check_fault_data(&XRSTOR, 13, &setup, &image);
            } else {
                b.check_data(&XRSTOR, 0, &setup, &image);
            }
        }
        if sdm_mxcsr {
            let image = move |st: &State, data: &mut [u8], rng: &mut Rng| {
                xsave_image(st, data, rng, true);
                let a = &mut data[64..64 + 832];
                a[512..528]
                    .copy_from_slice(&[(xcr0 & !xfeature::SSE).to_le_bytes(), (xcr0 | 1 << 63).to_le_bytes()].concat());
                a[24..28].copy_from_slice(&BIT31);
            };
            b.mxcsr_in_memory = true;
            b.check_sequence(&[&XRSTOR, &XSAVE_SECOND], 0, &setup, &image);
            b.mxcsr_in_memory = false;
        }
        // XGETBV with CR4.OSXSAVE off.
        let no_osxsave = |st: &mut State, _: &mut Rng| {
            st.gprs[Gpr::Rcx] = round & 1;
            st.crs[Cr::Cr4] &= !cr4::OSXSAVE;
        };
        faults.check_fault_or_sdm(&[0x0f, 0x01, 0xd0], 6, &no_osxsave, Some((Cr::Cr4, cr4::OSXSAVE, false)));
    }
    println!("{} + {} cases", b.cases, faults.cases);
}

/// Each `prefix` + `opcode` + ModRM with a register operand and with
/// `[rbx]`, the ModRM reg and rm fields varied over eight rounds (REX.B
/// forms only with registers: it would make the base R11); with the round.
fn reg_and_mem_forms<'a>(prefixes: &'a [&'a [u8]], opcode: &'a [u8]) -> impl Iterator<Item = (u8, Vec<u8>)> + 'a {
    (0..8u8).flat_map(move |round| {
        let modrm_reg = 0xc0 | round << 3 | ((round * 3 + 1) % 8);
        let modrm_mem = round << 3 | 3;
        prefixes.iter().flat_map(move |prefix| {
            [modrm_reg, modrm_mem].into_iter().filter(move |&m| m == modrm_reg || !prefix.contains(&0x4d)).map(
                move |modrm| {
                    let mut i = prefix.to_vec();
                    i.extend_from_slice(opcode);
                    i.push(modrm);
                    (round, i)
                },
            )
        })
    })
}

#[test]
fn popcnt_verr_verw_match_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    // POPCNT r, r/m in three sizes, registers and [rbx], REX.R/B.
    let prefixes: [&[u8]; 5] = [&[0xf3], &[0x66, 0xf3], &[0xf3, 0x48], &[0xf3, 0x4d], &[0xf3, 0x44]];
    for (round, insn) in reg_and_mem_forms(&prefixes, &[0x0f, 0xb8]) {
        b.check(&insn, rflags::ARITH * u64::from(round % 2), &move |st: &mut State, rng: &mut Rng| {
            rbx_at_data(st, rng);
            if round == 3 {
                // A zero source: ZF.
                for r in 0..16 {
                    if r != 3 {
                        st.gprs.0[r] = 0;
                    }
                }
            }
        });
    }
    // VERR (/4) and VERW (/5) from a register and from memory: null
    // selectors with every RPL, the user data and 64-bit code descriptors
    // (entries 5 and 6) with every RPL, in the LDT (there is none), at and
    // past the GDT's limit. (This host's nested CPU answers ZF=0 for GDT
    // entries 1 to 4 whatever descriptor they hold, even one it accepts in
    // entry 5: those are left out.)
    let selectors: Vec<u16> = (0..4).chain(0x28..0x38).chain([0x38, 0x3b, 0x44, 0x1000, 0xfff8]).collect();
    for &sel in &selectors {
        for reg in [4u8, 5] {
            b.check(&[0x0f, 0x00, 0xc0 | reg << 3 | 1], 0, &move |st: &mut State, _: &mut Rng| {
                st.gprs[Gpr::Rcx] = u64::from(sel) | 0xabcd_0000;
            });
            b.check_data(
                &[0x0f, 0x00, reg << 3 | 3],
                rflags::ZF,
                &rbx_at_data,
                &move |st: &State, d: &mut [u8], _: &mut Rng| {
                    let off = (st.gprs[Gpr::Rbx] - DATA) as usize;
                    d[off..off + 2].copy_from_slice(&sel.to_le_bytes());
                },
            );
        }
    }
    println!("{} cases", b.cases);
}

#[test]
fn crc32_matches_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    // CRC32 r, r/m8 (F0) and r, r/m16/32/64 (F1), registers and [rbx],
    // REX.R/B/W, byte registers with and without REX (AH-BH, SPL-DIL).
    let prefixes: [&[u8]; 6] = [&[0xf2], &[0x66, 0xf2], &[0xf2, 0x48], &[0xf2, 0x4d], &[0xf2, 0x44], &[0xf2, 0x40]];
    for op in [0xf0u8, 0xf1] {
        for (round, insn) in reg_and_mem_forms(&prefixes, &[0x0f, 0x38, op]) {
            b.check(&insn, rflags::ARITH * u64::from(round % 2), &rbx_at_data);
        }
    }
    println!("{} cases", b.cases);
}

/// VERR and VERW on random descriptors (every type, S, DPL and P, every
/// RPL, at CPL 0 and 3, in the GDT and in an LDT whose own presence and
/// selector vary, at and past the tables' limits), against the SDM's
/// pseudo-code written out here. Not against the CPU: this host runs
/// guest user code with its own GDT, so a native VERR reads the host's
/// descriptors (`popcnt_verr_verw_match_the_cpu` compares the entries
/// where both agree).
#[test]
fn verr_verw_follow_the_sdm_on_random_descriptors() {
    // Above 4 GiB: IA-32e mode (64-bit and compatibility mode code) does
    // not wrap table addresses. In legacy protected mode a GDT just
    // below 4 GiB, which wraps to 0 there (the tables are 128 bytes long),
    // and the LDT below it.
    const GDT_AT: u64 = 0x1_0001_0000;
    const LDT_AT: u64 = 0x1_0001_1000;
    const GDT_WRAPS: u64 = 0xffff_ffc0;
    const LDT_BELOW: u64 = 0xffff_ff40;
    /// SDM vol. 2, VERR/VERW, "Operation".
    fn sdm(table: &[u8], limit: u64, selector: u16, cpl: u8, write: bool) -> bool {
        let index = u64::from(selector & !7);
        if selector & !3 == 0 || index + 7 > limit {
            return false;
        }
        let access = table[index as usize + 5];
        let (s, dpl, typ) = (access & 0x10 != 0, (access >> 5) & 3, access & 0xf);
        let (code, conforming, rw) = (typ & 8 != 0, typ & 0xc == 0xc, typ & 2 != 0);
        let rpl = (selector & 3) as u8;
        if !s || (!conforming && (cpl > dpl || rpl > dpl)) {
            return false;
        }
        if write { !code && rw } else { !code || rw }
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut checked = [0usize; 2];
    for _ in 0..4000 {
        let gdt: Vec<u8> =
            (0..16).flat_map(|_| (0x00cf_0000_0000_ffffu64 | (rng.next() & 0xff) << 40).to_le_bytes()).collect();
        let ldt: Vec<u8> =
            (0..16).flat_map(|_| (0x00cf_0000_0000_ffffu64 | (rng.next() & 0xff) << 40).to_le_bytes()).collect();
        let user = rng.next() % 2 == 0;
        // Mostly the whole table, sometimes a limit anywhere.
        let mut limit = || if rng.next() % 4 == 0 { rng.next() % 0x90 } else { 0x7f };
        let (gdt_limit, ldt_limit) = (limit(), limit());
        let ldt_usable = rng.next() % 4 != 0;
        let ldt_selector = if rng.next() % 8 == 0 { 0 } else { 0x48 };
        let selector = rng.next() as u16 & 0x7f;
        let write = rng.next() % 2 == 0;
        // 64-bit code, compatibility mode, legacy protected mode.
        let kind = rng.next() % 3;
        let (gdt_at, ldt_at) = if kind == 2 { (GDT_WRAPS, LDT_BELOW) } else { (GDT_AT, LDT_AT) };
        let mut st = State::default();
        if kind == 2 {
            nvmm::x86::modes::protected_mode(&mut st, gdt_at);
        } else {
            nvmm::x86::modes::long_mode(&mut st, gdt_at, 0x2000);
        }
        if user {
            nvmm::x86::modes::user_mode(&mut st);
        }
        if kind == 1 {
            let cs = &mut st.segs[nvmm::Seg::Cs].attrib;
            *cs = SegAttrib::new(11, true, cs.dpl(), true, false, false, true, true);
        }
        let mode = if kind == 0 { CpuMode::Bits64 } else { CpuMode::Bits32 };
        assert_eq!(nvmm::assist::emulate::cpu_mode(&st), mode);
        st.segs[nvmm::Seg::Gdt].limit = gdt_limit as u32;
        let l = &mut st.segs[nvmm::Seg::Ldt];
        (l.selector, l.base, l.limit) = (ldt_selector, ldt_at, ldt_limit as u32);
        l.attrib = nvmm::x86::state::SegAttrib::new(2, false, 0, ldt_usable, false, false, false, false);
        st.gprs[Gpr::Rip] = CODE;
        st.gprs[Gpr::Rcx] = u64::from(selector);
        let linear = |base: u64, i: usize| {
            let a = base + i as u64;
            if kind == 2 { a & 0xffff_ffff } else { a }
        };
        let mut mem: HashMap<u64, u8> = HashMap::new();
        mem.extend(gdt.iter().enumerate().map(|(i, b)| (linear(gdt_at, i), *b)));
        mem.extend(ldt.iter().enumerate().map(|(i, b)| (linear(ldt_at, i), *b)));
        let insn = [0x0f, 0x00, 0xc0 | if write { 5 } else { 4 } << 3 | 1];
        let c = decode_control(&insn, mode).unwrap();
        let mut cpu = LazyCpu::new(st, Xsave::default());
        execute_control(&c, &mut cpu, &mut MemView(&mut mem)).unwrap();
        cpu.settle();
        let in_ldt = selector & 4 != 0;
        let want = if in_ldt {
            ldt_usable && ldt_selector & !3 != 0 && sdm(&ldt, ldt_limit, selector, 3 * u8::from(user), write)
        } else {
            sdm(&gdt, gdt_limit, selector, 3 * u8::from(user), write)
        };
        let zf = cpu.state.gprs[Gpr::Rflags] & rflags::ZF != 0;
        assert_eq!(
            zf, want,
            "selector {selector:#x} write {write} user {user} limits {gdt_limit:#x}/{ldt_limit:#x} ldt {ldt_usable}/{ldt_selector:#x}"
        );
        checked[usize::from(want)] += 1;
    }
    println!("{} accessible, {} not", checked[1], checked[0]);
    assert!(checked[0] > 300 && checked[1] > 300, "{checked:?}: both answers reached often");
}

/// Every addressing form against the CPU: REX.B bases (r8-r15), REX.R
/// registers, SIB with every scale and REX.X/REX.B index and base, 8- and
/// 32-bit displacements, RIP-relative, FS and GS overrides with a segment
/// base, and 0x67 (32-bit addresses in 64-bit code, upper register bits
/// dropped). The registers the form uses are set so that the address lands
/// in the data area; everything else is random.
#[test]
fn addressing_forms_match_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let mut b = Bench::new();
    let target = DATA + 256;
    let modrm = |md: u8, reg: u8, rm: u8| md << 6 | (reg & 7) << 3 | (rm & 7);
    for round in 0..4u8 {
        for op in [0x89u8, 0x8b, 0x01, 0x31, 0x85] {
            let reg = round * 2 + 1; // rcx, rbx, rbp, rdi: never RSP
            // REX.B bases r8-r15 (r12 needs a SIB, r13 without a
            // displacement is RIP-relative).
            for base in [8u8, 9, 10, 11, 14, 15] {
                let insn = [0x41, op, modrm(0, reg, base)];
                b.check(&insn, 0, &|st, _| st.gprs.0[usize::from(base)] = target);
            }
            // REX.R registers r8-r15 with [rbx].
            for r in 8..16u8 {
                let insn = [0x44, op, modrm(0, r, 3)];
                b.check(&insn, 0, &rbx_at_data);
            }
            // SIB with disp8: every scale, REX.X/REX.B index and base.
            for scale in 0..4u8 {
                for rex in [0x40u8, 0x41, 0x42, 0x43] {
                    let index = ((round * 3 + scale) % 8) | ((rex & 2) << 2);
                    let base = ((round * 5 + scale + 1) % 8) | ((rex & 1) << 3);
                    if index == 4 || index == base || base & 7 == 4 || (index == 12 && rex & 2 == 0) {
                        continue;
                    }
                    let r = if reg == base || reg == index { 2 } else { reg };
                    if r == base || r == index {
                        continue;
                    }
                    let disp = (b.rng.next() % 128) as u8;
                    let insn = [rex, op, modrm(1, r, 4), scale << 6 | (index & 7) << 3 | (base & 7), disp];
                    b.check(&insn, 0, &|st, rng| {
                        let k = rng.next() % 4;
                        st.gprs.0[usize::from(index)] = k;
                        st.gprs.0[usize::from(base)] =
                            target.wrapping_sub(k << scale).wrapping_sub(i64::from(disp as i8) as u64);
                    });
                }
            }
            // disp32 from RBX.
            let disp = (b.rng.next() % 0x2000) as i32 - 0x1000;
            let mut insn = vec![op, modrm(2, reg, 3)];
            insn.extend(disp.to_le_bytes());
            b.check(&insn, 0, &|st, _| st.gprs[Gpr::Rbx] = target.wrapping_sub(disp as i64 as u64));
            // RIP-relative.
            let rel = (target as i64 - (CODE as i64 + 6)) as i32;
            let mut insn = vec![op, modrm(0, reg, 5)];
            insn.extend(rel.to_le_bytes());
            b.check(&insn, 0, &|_, _| {});
            // FS and GS overrides: the segment base carries the address.
            for (prefix, seg) in [(0x64u8, nvmm::Seg::Fs), (0x65, nvmm::Seg::Gs)] {
                let insn = [prefix, op, modrm(0, reg, 6)];
                b.check(&insn, 0, &|st, rng| {
                    st.segs[seg].base = DATA;
                    st.gprs[Gpr::Rsi] = 256 + rng.next() % 64;
                });
            }
            // 0x67: a 32-bit address; RSI's upper half is not part of it.
            let insn = [0x67, op, modrm(0, reg, 6)];
            b.check(&insn, 0, &|st, rng| st.gprs[Gpr::Rsi] = rng.next() << 32 | target);
            // ES, CS, SS and DS (and no override): 64-bit code ignores
            // their bases and limits, whatever the descriptor cache holds.
            for prefix in [None, Some(0x26u8), Some(0x2e), Some(0x36), Some(0x3e)] {
                let insn: Vec<u8> = prefix.into_iter().chain([op, modrm(0, reg, 6)]).collect();
                b.check(&insn, 0, &|st, rng| {
                    for seg in [nvmm::Seg::Es, nvmm::Seg::Ds, nvmm::Seg::Ss] {
                        st.segs[seg].base = 0x1000 + (rng.next() % 16) * 0x100;
                        st.segs[seg].limit = (rng.next() % 0x100) as u32;
                    }
                    st.gprs[Gpr::Rsi] = target + rng.next() % 64;
                });
            }
        }
    }
    assert!(b.cases > 500, "{} cases", b.cases);
}

/// 32- and 16-bit code (compatibility mode at CPL 3, natively here): the
/// integer instructions with both operand sizes, immediates of the mode's
/// width, MOV moffs with the mode's address size, every 16-bit addressing
/// form, SIB and absolute disp32 forms, 0x67 switching the address size
/// both ways, segment overrides with a base, and the string instructions
/// with SI/DI/CX of the address size.
#[test]
fn compat_mode_code_matches_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let modrm = |md: u8, reg: u8, rm: u8| md << 6 | (reg & 7) << 3 | (rm & 7);
    let mut total = 0;
    for mode in [CpuMode::Bits32, CpuMode::Bits16] {
        let mut b = Bench::compat(mode);
        let d = b.data();
        let bits16 = mode == CpuMode::Bits16;
        // [ebx] in 32-bit addressing, [bx] in 16-bit.
        let rm_bx = if bits16 { 7 } else { 3 };
        let bx_at_data = move |st: &mut State, rng: &mut Rng| st.gprs[Gpr::Rbx] = d + 64 + (rng.next() % 2) * 32;
        // The other operand size than the mode's.
        let sizes: [&[u8]; 2] = [&[], &[0x66]];
        let wide = |prefix: &[u8]| (prefix.is_empty()) != bits16; // 32-bit operands
        for round in 0..2 {
            for (op, prefix) in modrm_alu_forms(&sizes) {
                for &f in &FLAG_CASES {
                    let reg = [0u8, 1, 2, 6, 7][(round * 3 + usize::from(op)) % 5];
                    let mut insn = prefix.to_vec();
                    insn.extend([op, modrm(0, reg, rm_bx)]);
                    b.check(&insn, f, &bx_at_data);
                }
            }
            for (op, full_imm) in [(0x80u8, false), (0x81, true), (0x83, false), (0xc7, true), (0xf7, true)] {
                for (si, prefix) in sizes.iter().enumerate() {
                    if op & 1 == 0 && si != 0 {
                        continue;
                    }
                    let r = match op {
                        0xc7 => 0,
                        0xf7 => 0,
                        _ => (b.rng.next() % 8) as u8,
                    };
                    let mut insn = prefix.to_vec();
                    insn.extend([op, modrm(0, r, rm_bx)]);
                    let imm = if !full_imm {
                        1
                    } else if wide(prefix) {
                        4
                    } else {
                        2
                    };
                    for _ in 0..imm {
                        insn.push(b.rng.next() as u8);
                    }
                    b.check(&insn, FLAG_CASES[round % 2], &bx_at_data);
                }
            }
            for (op, sized) in [(0xb6u8, true), (0xb7, true), (0xc1, true), (0xb1, true), (0xc0, false), (0xb0, false)]
            {
                for prefix in if sized { &sizes[..] } else { &sizes[..1] } {
                    let mut insn = prefix.to_vec();
                    insn.extend([0x0f, op, modrm(0, 1, rm_bx)]);
                    b.check(&insn, FLAG_CASES[round % 2], &bx_at_data);
                }
            }
            // MOV moffs: the address has the mode's address size.
            for op in [0xa0u8, 0xa1, 0xa2, 0xa3] {
                for prefix in sizes {
                    let mut insn = prefix.to_vec();
                    insn.push(op);
                    let at = d + 40;
                    if bits16 {
                        insn.extend_from_slice(&(at as u16).to_le_bytes());
                    } else {
                        insn.extend_from_slice(&(at as u32).to_le_bytes());
                    }
                    b.check(&insn, 0, &|_: &mut State, _: &mut Rng| {});
                }
            }
        }
        let target = d + 256;
        for op in [0x89u8, 0x8b, 0x01, 0x31] {
            if bits16 {
                // Every 16-bit form: [bx+si] [bx+di] [bp+si] [bp+di] [si]
                // [di] [bp+disp8] [bx], with disp8 and disp16, and [disp16].
                let pair: [(Gpr, Option<Gpr>); 8] = [
                    (Gpr::Rbx, Some(Gpr::Rsi)),
                    (Gpr::Rbx, Some(Gpr::Rdi)),
                    (Gpr::Rbp, Some(Gpr::Rsi)),
                    (Gpr::Rbp, Some(Gpr::Rdi)),
                    (Gpr::Rsi, None),
                    (Gpr::Rdi, None),
                    (Gpr::Rbp, None),
                    (Gpr::Rbx, None),
                ];
                for (rm, &(base, index)) in pair.iter().enumerate() {
                    for md in 0..3u8 {
                        if md == 0 && rm == 6 {
                            continue; // [disp16], below
                        }
                        let disp: i64 = match md {
                            0 => 0,
                            1 => (b.rng.next() % 256) as i8 as i64,
                            _ => (b.rng.next() % 0x400) as i64 - 0x200,
                        };
                        // The register operand: one no address register uses.
                        let mut insn = vec![op, modrm(md, 0, rm as u8)];
                        match md {
                            1 => insn.push(disp as u8),
                            2 => insn.extend((disp as i16).to_le_bytes()),
                            _ => {}
                        }
                        // BP's forms address the stack segment.
                        let ss = base == Gpr::Rbp;
                        b.check(&insn, 0, &move |st: &mut State, rng: &mut Rng| {
                            let k = rng.next() % 16;
                            let want = target.wrapping_sub(disp as u64).wrapping_add(if ss { SS_SHIFT } else { 0 });
                            // Upper halves that 16-bit addressing ignores.
                            let junk = rng.next() << 16;
                            match index {
                                Some(i) => {
                                    st.gprs[i] = junk | k;
                                    st.gprs[base] = junk | (want.wrapping_sub(k) & 0xffff);
                                }
                                None => st.gprs[base] = junk | (want & 0xffff),
                            }
                        });
                    }
                }
                let mut insn = vec![op, modrm(0, 0, 6)];
                insn.extend((target as u16).to_le_bytes());
                b.check(&insn, 0, &|_: &mut State, _: &mut Rng| {});
                // 0x67: 32-bit addressing, SIB with a scaled index.
                let insn = [0x67, op, modrm(1, 0, 4), 2 << 6 | 6 << 3 | 3, 8];
                b.check(&insn, 0, &move |st: &mut State, rng: &mut Rng| {
                    let k = rng.next() % 8;
                    st.gprs[Gpr::Rsi] = k;
                    st.gprs[Gpr::Rbx] = target - 8 - 4 * k;
                });
            } else {
                // SIB with disp8 and every scale, [disp32], [ebp+disp8].
                for scale in 0..4u8 {
                    let insn = [op, modrm(1, 0, 4), scale << 6 | 6 << 3 | 3, 0x10];
                    b.check(&insn, 0, &move |st: &mut State, rng: &mut Rng| {
                        let k = rng.next() % 8;
                        st.gprs[Gpr::Rsi] = k;
                        st.gprs[Gpr::Rbx] = target - 0x10 - (k << scale);
                    });
                }
                let mut insn = vec![op, modrm(0, 0, 5)];
                insn.extend((target as u32).to_le_bytes());
                b.check(&insn, 0, &|_: &mut State, _: &mut Rng| {});
                let insn = [op, modrm(1, 0, 5), 0xf0];
                b.check(&insn, 0, &move |st: &mut State, _: &mut Rng| st.gprs[Gpr::Rbp] = target + 0x10 + SS_SHIFT);
                // 0x67: 16-bit addressing, through FS based at DATA.
                let insn = [0x64, 0x67, op, modrm(0, 0, 0)];
                b.check(&insn, 0, &|st: &mut State, rng: &mut Rng| {
                    st.segs[nvmm::Seg::Fs].base = DATA;
                    let k = rng.next() % 64;
                    st.gprs[Gpr::Rsi] = k;
                    st.gprs[Gpr::Rbx] = rng.next() << 16 | (256 - k);
                });
            }
        }
        // Strings, with SI/DI/CX of the address size (0x67 the other one).
        for op in [0xa4u8, 0xa5, 0xa6, 0xa7, 0xaa, 0xab, 0xac, 0xad] {
            for rep in [&[][..], &[0xf3], &[0xf2]] {
                for addr in [&[][..], &[0x67]] {
                    for df in [0, rflags::DF] {
                        let mut insn = rep.to_vec();
                        insn.extend_from_slice(addr);
                        if op & 1 == 1 && b.rng.next() % 2 == 0 {
                            insn.push(0x66);
                        }
                        insn.push(op);
                        // The address size in use: the mode's unless 0x67.
                        let a16 = bits16 == addr.is_empty();
                        b.check(&insn, df, &move |st: &mut State, rng: &mut Rng| {
                            let junk = if a16 { rng.next() << 16 } else { 0 };
                            // 16-bit addresses in 32-bit code: DS and ES
                            // based at DATA carry them there.
                            let d = if a16 && !bits16 {
                                st.segs[nvmm::Seg::Ds].base = DATA;
                                st.segs[nvmm::Seg::Es].base = DATA;
                                0
                            } else {
                                d
                            };
                            st.gprs[Gpr::Rsi] = junk | (d + 96 + rng.next() % 8);
                            st.gprs[Gpr::Rdi] = junk | (d + 160 + rng.next() % 8);
                            st.gprs[Gpr::Rcx] = junk | (rng.next() % 6);
                        });
                    }
                }
            }
        }
        total += b.cases;
    }
    assert!(total > 600, "{total} cases");
}

/// REP MOVS and STOS with counts beyond one batch of the emulator
/// (`REP_BATCH`): the instruction stops with RIP on it and is executed
/// again, as the guest would; the end state is the CPU's.
#[test]
fn large_rep_counts_match_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let batch = nvmm::assist::emulate::REP_BATCH;
    for mode in [CpuMode::Bits64, CpuMode::Bits32] {
        let mut b = Bench::compat(mode);
        b.data_len = 3 * batch as usize + 64;
        let d = b.data();
        for (op, size) in [(0xa4u8, 1u64), (0xaa, 1), (0xab, 4)] {
            for count in [batch - 1, batch, batch + 1, 2 * batch + 7] {
                if count * size > 3 * batch {
                    continue;
                }
                let insn = [0xf3, op];
                b.check(&insn, 0, &move |st: &mut State, _: &mut Rng| {
                    st.gprs[Gpr::Rcx] = count;
                    st.gprs[Gpr::Rsi] = d;
                    st.gprs[Gpr::Rdi] = d + 32;
                });
            }
        }
    }
}

/// The faults the emulator raises against the ones the CPU raises for the
/// same instruction and state (natively at CPL 3, through the guest's own
/// IDT): #GP for a non-canonical address, a misaligned MOVAPS or
/// CMPXCHG16B, a segment limit (expand-down ones too), a write through a
/// read-only or code segment, a read through an execute-only one and a
/// null DS; #SS for the stack segment's; #AC with CR0.AM and RFLAGS.AC
/// (and none for an aligned access or CR0.AM alone); #NM with CR0.TS for
/// x87 and SSE; #UD for SSE without CR4.OSFXSR and VEX without
/// CR4.OSXSAVE. Vector and error code must match, and RIP stays on the
/// instruction.
#[test]
fn faults_match_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    const NONCANONICAL: u64 = 0x8000_0000_0000_0000;
    let mut b = Bench::new().with_handlers();
    let at = |off: u64| move |st: &mut State, _: &mut Rng| st.gprs[Gpr::Rbx] = DATA + off;
    for _ in 0..2 {
        // mov rax,[rbx] / mov [rbx],eax non-canonical: #GP(0).
        for insn in [&[0x48, 0x8b, 0x03][..], &[0x89, 0x03]] {
            b.check_fault(insn, 13, &|st, rng| st.gprs[Gpr::Rbx] = NONCANONICAL | (rng.next() >> 20));
        }
        // mov rax,[rbp+8] / [rsp+8] non-canonical: #SS(0).
        b.check_fault(&[0x48, 0x8b, 0x45, 0x08], 12, &|st, rng| st.gprs[Gpr::Rbp] = NONCANONICAL | (rng.next() >> 20));
        // Just above the lower canonical half (bit 47 set, 4-level
        // paging): #GP(0), at [rbp] #SS(0). (A quadword starting below 2^47
        // and ending above is not compared: this host's CPU raises #PF for
        // its second page, although mapped, where the emulator follows
        // KVM's own emulator with #GP; see
        // `canonical_addresses_follow_la57_as_the_sdm_says`.)
        b.check_fault(&[0x48, 0x8b, 0x03], 13, &|st, rng| st.gprs[Gpr::Rbx] = (1 << 47) + (rng.next() >> 24));
        b.check_fault(&[0x48, 0x8b, 0x45, 0x00], 12, &|st, rng| st.gprs[Gpr::Rbp] = (1 << 47) + (rng.next() >> 24));
        // Alignment check: CR0.AM, RFLAGS.AC, CPL 3.
        for (insn, off) in [(&[0x8b, 0x03][..], 66u64), (&[0x66, 0x89, 0x03], 65), (&[0x48, 0x8b, 0x03], 68)] {
            b.check_fault(insn, 17, &move |st, _| {
                st.gprs[Gpr::Rbx] = DATA + off;
                st.crs[Cr::Cr0] |= 1 << 18;
                st.gprs[Gpr::Rflags] |= rflags::AC;
            });
        }
        // No #AC: an aligned access with CR0.AM and RFLAGS.AC, a misaligned
        // one with CR0.AM alone. (RFLAGS.AC alone is held to the SDM in
        // `alignment_checks_need_cr0_am_rflags_ac_and_cpl_3`: this host
        // runs guest user code with its own CR0.AM, which is set.)
        for (am, ac, off) in [(true, true, 64u64), (true, false, 66)] {
            b.check(&[0x8b, 0x03], 0, &move |st, _| {
                nvmm::x86::modes::user_mode(st);
                st.gprs[Gpr::Rbx] = DATA + off;
                st.crs[Cr::Cr0] = (st.crs[Cr::Cr0] & !(1 << 18)) | if am { 1 << 18 } else { 0 };
                st.crs[Cr::Cr0] &= !(8 | 4);
                if ac {
                    st.gprs[Gpr::Rflags] |= rflags::AC;
                }
            });
        }
        // CR0.TS: #NM for fld dword [rbx] and movaps xmm0,[rbx].
        for insn in [&[0xd9, 0x03][..], &[0x0f, 0x28, 0x03], &[0x66, 0x0f, 0x6f, 0x03]] {
            let ts = |st: &mut State, rng: &mut Rng| {
                at(64)(st, rng);
                st.crs[Cr::Cr0] |= 8;
            };
            b.check_fault_or_sdm(insn, 7, &ts, Some((Cr::Cr0, 8, true)));
        }
        // CR0.EM: #NM for the x87 control instructions (#UD for SSE).
        for insn in [&[0xdb, 0xe2][..], &[0xd9, 0x3b], &[0xd9, 0x33]] {
            let em = |st: &mut State, rng: &mut Rng| {
                at(64)(st, rng);
                st.crs[Cr::Cr0] |= 4;
            };
            b.check_fault_or_sdm(insn, 7, &em, Some((Cr::Cr0, 4, true)));
        }
        // FWAIT with CR0.MP and TS: #NM; with an unmasked exception
        // pending (FSW.ES; CR0.NE is always set under VMX): #MF.
        b.check_fault_or_sdm(
            &[0x9b],
            7,
            &|st: &mut State, rng: &mut Rng| {
                at(64)(st, rng);
                st.crs[Cr::Cr0] |= 8 | 2;
            },
            Some((Cr::Cr0, 8, true)),
        );
        b.check_fault(&[0x9b], 16, &|st: &mut State, rng: &mut Rng| {
            at(64)(st, rng);
            st.fpu.fx_cw = 0x37e;
            st.fpu.fx_sw = 0x8081;
        });
        // XSAVE with CR4.OSXSAVE off: #UD.
        let no_osxsave = |st: &mut State, rng: &mut Rng| {
            at(64)(st, rng);
            st.crs[Cr::Cr4] &= !cr4::OSXSAVE;
        };
        b.check_fault_or_sdm(&[0x0f, 0xae, 0x23], 6, &no_osxsave, Some((Cr::Cr4, cr4::OSXSAVE, false)));
        // Register-to-register SSE and AVX moves (the control path): CR0.TS
        // #NM, CR0.EM and CR4.OSFXSR off #UD; VEX with CR4.OSXSAVE off #UD.
        let rr_ts = |st: &mut State, _: &mut Rng| st.crs[Cr::Cr0] |= 8;
        b.check_fault_or_sdm(&[0x0f, 0x28, 0xc1], 7, &rr_ts, Some((Cr::Cr0, 8, true)));
        let rr_em = |st: &mut State, _: &mut Rng| st.crs[Cr::Cr0] |= 4;
        b.check_fault_or_sdm(&[0x0f, 0x28, 0xc1], 6, &rr_em, Some((Cr::Cr0, 4, true)));
        let rr_no_fxsr = |st: &mut State, _: &mut Rng| st.crs[Cr::Cr4] &= !(1 << 9);
        b.check_fault_or_sdm(&[0x0f, 0x28, 0xc1], 6, &rr_no_fxsr, Some((Cr::Cr4, 1 << 9, false)));
        if b.avx {
            let rr_no_xsave = |st: &mut State, _: &mut Rng| st.crs[Cr::Cr4] &= !cr4::OSXSAVE;
            b.check_fault_or_sdm(&[0xc5, 0xf8, 0x28, 0xc1], 6, &rr_no_xsave, Some((Cr::Cr4, cr4::OSXSAVE, false)));
        }
        // CLAC and STAC at CPL 3: #UD.
        for insn in [&[0x0f, 0x01, 0xca][..], &[0x0f, 0x01, 0xcb]] {
            b.check_fault(insn, 6, &at(64));
        }
        // CR4.OSFXSR off: SSE moves are #UD; CR4.OSXSAVE off: VEX is.
        let no_osfxsr = |st: &mut State, rng: &mut Rng| {
            at(64)(st, rng);
            st.crs[Cr::Cr4] &= !(1 << 9);
        };
        b.check_fault_or_sdm(&[0x0f, 0x10, 0x03], 6, &no_osfxsr, Some((Cr::Cr4, 1 << 9, false)));
        if b.avx {
            let no_osxsave = |st: &mut State, rng: &mut Rng| {
                at(64)(st, rng);
                st.crs[Cr::Cr4] &= !cr4::OSXSAVE;
            };
            b.check_fault_or_sdm(&[0xc5, 0xf8, 0x28, 0x03], 6, &no_osxsave, Some((Cr::Cr4, cr4::OSXSAVE, false)));
        }
        // Misaligned MOVAPS / MOVDQA / CMPXCHG16B: #GP(0).
        for insn in [&[0x0f, 0x28, 0x03][..], &[0x66, 0x0f, 0x7f, 0x03], &[0x48, 0x0f, 0xc7, 0x0b]] {
            b.check_fault(insn, 13, &at(72));
        }
    }
    // Segment limits in 16-bit code: a word at DS:0xffff is #GP(0), at
    // SS:0xffff (BP's forms) #SS(0); in 32-bit code a DS whose limit ends
    // before the access.
    let mut b16 = Bench::compat(CpuMode::Bits16).with_handlers();
    b16.check_fault(&[0x8b, 0x00], 13, &|st, _| (st.gprs[Gpr::Rbx], st.gprs[Gpr::Rsi]) = (0xfff0, 0xf));
    b16.check_fault(&[0x8b, 0x02], 12, &|st, _| (st.gprs[Gpr::Rbp], st.gprs[Gpr::Rsi]) = (0xfff0, 0xf));
    b16.check_fault(&[0x66, 0x89, 0x07], 13, &|st, _| st.gprs[Gpr::Rbx] = 0xfffd);
    let mut b32 = Bench::compat(CpuMode::Bits32).with_handlers();
    // A byte-granular limit (with G set it would end in 0xfff).
    let limit = |st: &mut State, seg: nvmm::Seg| {
        st.segs[seg].limit = (DATA + 0xff) as u32;
        st.segs[seg].attrib = nvmm::x86::state::SegAttrib::new(3, true, 3, true, false, false, true, false);
    };
    b32.check_fault(&[0x8b, 0x03], 13, &|st, _| {
        limit(st, nvmm::Seg::Ds);
        st.gprs[Gpr::Rbx] = DATA + 0xfe;
    });
    b32.check_fault(&[0x8b, 0x45, 0x00], 12, &|st, _| {
        limit(st, nvmm::Seg::Ss);
        st.gprs[Gpr::Rbp] = (DATA + 0xfe + SS_SHIFT) & 0xffff_ffff;
    });
    // In protected mode the descriptor's type and presence: a write
    // through a read-only data segment or a readable code segment, and
    // any access through a segment not present (null), are #GP(0).
    for (typ, present, insn) in [(1u8, true, &[0x89u8, 0x03][..]), (11, true, &[0x89, 0x03]), (3, false, &[0x8b, 0x03])]
    {
        b32.check_fault(insn, 13, &move |st, _| {
            st.segs[nvmm::Seg::Ds].attrib = SegAttrib::new(typ, true, 3, present, false, false, true, true);
            st.gprs[Gpr::Rbx] = DATA + 64;
        });
    }
    // A read through an execute-only code segment (CS override) is
    // #GP(0); through a readable one or a read-only data segment it is
    // no fault.
    b32.check_fault(&[0x2e, 0x8b, 0x03], 13, &|st, _| {
        st.segs[nvmm::Seg::Cs].attrib = SegAttrib::new(9, true, 3, true, false, false, true, true);
        st.gprs[Gpr::Rbx] = DATA + 64;
    });
    b32.check(&[0x2e, 0x8b, 0x03], 0, &|st, _| st.gprs[Gpr::Rbx] = DATA + 64);
    // (A data segment that is read-only.)
    let read_only = |st: &mut State, _: &mut Rng| {
        st.segs[nvmm::Seg::Ds].attrib = SegAttrib::new(1, true, 3, true, false, false, true, true);
        st.gprs[Gpr::Rbx] = DATA + 64;
    };
    b32.check(&[0x8b, 0x03], 0, &read_only);
    // An expand-down data segment: offsets above the limit up to 4 GiB
    // (B set) or 64 KiB (B clear) are valid, the limit itself and below
    // are #GP(0), and so is an access running past 64 KiB with B clear.
    // (With B clear, DS is based so that the offsets land in the data.)
    let expand_down = |big: bool, limit: u64, ebx: u64| {
        move |st: &mut State, _: &mut Rng| {
            let ds = &mut st.segs[nvmm::Seg::Ds];
            ds.attrib = SegAttrib::new(7, true, 3, true, false, false, big, false);
            ds.limit = limit as u32;
            ds.base = if big { 0 } else { DATA + 0x40 - 0xff00 };
            st.gprs[Gpr::Rbx] = ebx;
        }
    };
    b32.check_fault(&[0x8b, 0x03], 13, &expand_down(true, DATA + 0x40, DATA + 0x40));
    b32.check_fault(&[0x8b, 0x03], 13, &expand_down(true, DATA + 0x40, DATA + 0x20));
    b32.check(&[0x8b, 0x03], 0, &expand_down(true, DATA + 0x40, DATA + 0x80));
    b32.check(&[0x8b, 0x03], 0, &expand_down(true, DATA + 0x40, DATA + 0x41));
    b32.check_fault(&[0x8b, 0x03], 13, &expand_down(false, 0x100, 0xfffe));
    b32.check(&[0x8b, 0x03], 0, &expand_down(false, 0x100, 0xff40));
    // SSE moves check the segment for their direction: a load through a
    // read-only data segment is no fault, a store is #GP(0).
    b32.check(&[0x0f, 0x10, 0x03], 0, &read_only);
    b32.check_fault(&[0x0f, 0x11, 0x03], 13, &read_only);
    assert_eq!(b.cases + b16.cases + b32.cases, 2 * (28 + 2 * usize::from(b.avx)) + 19);
}

/// 5-level paging widens the canonical range (SDM vol. 3, 4.5: bits 63:57
/// copy bit 56), which this host's CPU cannot show (no LA57): a quadword
/// at an address with bit 55 set is accessed under CR4.LA57 and #GP(0)
/// without it; one above bit 56 is #GP(0) either way; FS's base counts
/// towards the address. An access whose first byte is canonical and whose
/// last is not is #GP(0) too, as KVM's emulator and the AMD APM have it
/// (`__linearize` in KVM checks the whole access): this host's Intel CPU
/// checks the first byte only and faults on the page past the boundary
/// (#PF, even with a page mapped below it), which a VMM's MMIO cannot meet
/// (the access would have to straddle the boundary).
#[test]
fn canonical_addresses_follow_la57_as_the_sdm_says() {
    let high = 0x00ff_ffff_ffff_fff0u64;
    for la57 in [false, true] {
        let cases = [
            (high, 0u64, la57),
            (high + 8, 0, la57),
            (high + 12, 0, false),
            ((1 << 47) - 4, 0, la57),
            ((1 << 47) - 8, 0, true),
            (0x0100_0000_0000_0000, 0, false),
            (0xfe00_0000_0000_0010, 0, false),
            (0xff00_0000_0000_0010, 0, la57),
            (0x8, high, la57),
        ];
        for (rbx, fs_base, accessible) in cases {
            let mut st = emulator_state(false);
            if la57 {
                st.crs[Cr::Cr4] |= 1 << 12;
            }
            st.gprs[Gpr::Rbx] = rbx;
            st.segs[nvmm::Seg::Fs].base = fs_base;
            let lin = rbx.wrapping_add(fs_base);
            let mut mem: HashMap<u64, u8> = (0..8).map(|i| (lin.wrapping_add(i), 0x11 * i as u8)).collect();
            let insn: &[u8] = if fs_base != 0 { &[0x64, 0x48, 0x8b, 0x03] } else { &[0x48, 0x8b, 0x03] };
            let mut model = LazyCpu::new(st, Xsave::default());
            let r = emulate(insn, CpuMode::Bits64, &mut model, &mut mem, "la57");
            let ctx = format!("CR4.LA57 {la57}, RBX {rbx:#x}, FS base {fs_base:#x}");
            if accessible {
                r.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(model.state(StateMask::GPRS).unwrap().gprs[Gpr::Rax], 0x7766_5544_3322_1100, "{ctx}");
            } else {
                assert!(
                    matches!(r, Err(EmuError::Exception { vector: 13, error_code: Some(0), .. })),
                    "{ctx}: {r:?}, not #GP(0)"
                );
            }
        }
    }
}

/// XSAVE stores a component that the XSAVE header of its CPU marks not in
/// use as its initial configuration (AVX: zeros), whatever bytes the area
/// holds for it: the SDM's XRSTOR semantics of a header bit that is clear
/// (KVM hands the area over that way already, so only an `EmuCpu` of a
/// program's own can hold other bytes there).
#[test]
fn xsave_stores_a_component_not_in_use_as_its_initial_state() {
    let st = emulator_state(false);
    let mut xs = Xsave::default();
    for i in 0..16 {
        xs.set_ymm_hi(i, [0xa5; 16]).unwrap();
    }
    xs.set_xstate_bv(xs.xstate_bv() & !xfeature::AVX);
    for form in [&[0x0f, 0xae, 0x23][..], &[0x48, 0x0f, 0xae, 0x23]] {
        let mut model = LazyCpu::new(st, xs.clone());
        let mut mem = data_area(|_| 0xee);
        emulate(form, CpuMode::Bits64, &mut model, &mut mem, "xsave").unwrap();
        let avx: Vec<u8> = (576..832).map(|i| mem[&(DATA + 64 + i)]).collect();
        assert_eq!(avx, vec![0; 256], "{form:02x?}: the AVX component as stored");
        assert_eq!(mem[&(DATA + 64 + 512)] & 4, 0, "{form:02x?}: XSTATE_BV's AVX bit");
    }
}

/// A component whose registers are not in their initial state is in use
/// (SDM 13.6: XINUSE[i] = 0 only in the initial configuration), whatever
/// the XSAVE header of the emulator's CPU says: SSE with one XMM register
/// not zero, MXCSR 1F80H and SSE clear in the header is saved as in use
/// and reported by XGETBV 1.
#[test]
fn registers_not_in_their_initial_state_are_in_use_whatever_the_header_says() {
    let mut st = emulator_state(false);
    st.gprs[Gpr::Rcx] = 1;
    st.fpu.fx_xmm[3][5] = 1;
    let mut xs = Xsave::default();
    xs.set_xstate_bv(xfeature::X87);
    let mut model = LazyCpu::new(st, xs.clone());
    let mut mem = data_area(|_| 0);
    emulate(&[0x0f, 0xae, 0x23], CpuMode::Bits64, &mut model, &mut mem, "xsave").unwrap();
    assert_eq!(mem[&(DATA + 64 + 512)] & 2, 2, "XSAVE: SSE in use");
    let mut model = LazyCpu::new(st, xs);
    emulate(&[0x0f, 0x01, 0xd0], CpuMode::Bits64, &mut model, &mut mem, "xgetbv").unwrap();
    assert_eq!(model.state.gprs[Gpr::Rax] & 2, 2, "XGETBV 1: SSE in use");
}

/// The legacy SSE form of PXOR with a memory operand not on a 16-byte
/// boundary is #GP(0); its VEX form is not (SDM vol. 2, PXOR, and 14.9).
/// Held to the SDM: this host raises #UD, not #GP, for the misaligned
/// legacy form in guest user code, so its CPU is no oracle here.
#[test]
fn pxor_memory_operands_are_aligned_in_the_legacy_form_only() {
    let mut st = emulator_state(false);
    for (insn, vex) in [(&[0x66, 0x0f, 0xef, 0x03][..], false), (&[0xc5, 0xf9, 0xef, 0x03], true)] {
        for off in [0u64, 8] {
            st.gprs[Gpr::Rbx] = DATA + 64 + off;
            let mut model = LazyCpu::new(st, Xsave::default());
            let mut mem = data_area(|i| i as u8);
            let r = emulate(insn, CpuMode::Bits64, &mut model, &mut mem, "pxor");
            let gp = matches!(r, Err(EmuError::Exception { vector: 13, error_code: Some(0), .. }));
            assert_eq!(gp, off != 0 && !vex, "{insn:02x?} at offset {off}: {r:?}");
            if !gp {
                model.settle();
                let want: [u8; 16] = std::array::from_fn(|i| (64 + off as usize + i) as u8);
                assert_eq!(model.state.fpu.fx_xmm[0], want, "{insn:02x?} at offset {off}: XMM0 = 0 ^ memory");
            }
        }
    }
}

/// XSAVE, XSAVEC and XRSTOR in 32-bit code wrap their area's addresses
/// at 4 GiB, as every linear address outside 64-bit mode does: with DS
/// based just below 4 GiB and an area starting 64 bytes below it, the
/// bytes stored are those stored to an area that does not wrap (which the
/// CPU comparisons hold to the CPU), and restoring them gives the same
/// state.
#[test]
fn xsave_areas_wrap_at_4_gib_in_32_bit_code() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut st = emulator_state(true);
    let mut xs = Xsave::default();
    let randomize = |st: &mut State, xs: &mut Xsave, rng: &mut Rng| {
        st.fpu.fx_cw = 0x27f ^ (rng.next() as u16 & 0xc00);
        st.fpu.fx_mxcsr = 0x1f80 ^ (rng.next() as u32 & 0x3f);
        for x in st.fpu.fx_xmm.iter_mut() {
            *x = rng.next().to_le_bytes().repeat(2).try_into().unwrap();
        }
        for i in 0..16 {
            xs.set_ymm_hi(i, rng.next().to_le_bytes().repeat(2).try_into().unwrap()).unwrap();
        }
    };
    randomize(&mut st, &mut xs, &mut rng);
    let area = |ds_base: u64, ebx: u64, fill: &[u8]| {
        let start = (ds_base + ebx) & 0xffff_ffff;
        let mem: HashMap<u64, u8> =
            fill.iter().enumerate().map(|(i, b)| ((start + i as u64) & 0xffff_ffff, *b)).collect();
        (start, mem)
    };
    let image = |start: u64, mem: &HashMap<u64, u8>| -> Vec<u8> {
        (0..832).map(|i| mem[&((start + i) & 0xffff_ffff)]).collect()
    };
    // (DS base, EBX): an area at DATA + 64, and one at 0xffff_ffc0.
    let places = [(0, DATA + 64), (0xffff_ff00, 0xc0)];
    for (store, name) in [([0x0f, 0xae, 0x23], "xsave"), ([0x0f, 0xc7, 0x23], "xsavec")] {
        let mut stored = Vec::new();
        for (ds_base, ebx) in places {
            let mut s = st;
            (s.segs[nvmm::Seg::Ds].base, s.gprs[Gpr::Rbx]) = (ds_base, ebx);
            // XSAVE keeps the header's other bits, XRSTOR wants them zero.
            let mut fill = [0xee; 832];
            fill[512..576].fill(0);
            let (start, mut mem) = area(ds_base, ebx, &fill);
            let mut cpu = LazyCpu::new(s, xs.clone());
            emulate(&store, CpuMode::Bits32, &mut cpu, &mut mem, name).unwrap();
            stored.push(image(start, &mem));
        }
        assert_eq!(stored[0], stored[1], "{name}: the area stored across 4 GiB");
        // Restored over another state: the same state from both places.
        let (mut other, mut other_xs) = (st, xs.clone());
        randomize(&mut other, &mut other_xs, &mut rng);
        let mut restored = Vec::new();
        for (ds_base, ebx) in places {
            let mut s = other;
            (s.segs[nvmm::Seg::Ds].base, s.gprs[Gpr::Rbx]) = (ds_base, ebx);
            let (_, mut mem) = area(ds_base, ebx, &stored[0]);
            let mut cpu = LazyCpu::new(s, other_xs.clone());
            emulate(&XRSTOR, CpuMode::Bits32, &mut cpu, &mut mem, name).unwrap();
            cpu.settle();
            restored.push((cpu.state.fpu, cpu.xsave.clone()));
        }
        assert_eq!(restored[0].0, restored[1].0, "{name}: the x87 and SSE state restored across 4 GiB");
        assert_eq!(restored[0].1.as_bytes(), restored[1].1.as_bytes(), "{name}: the XSAVE area restored");
        assert_eq!(restored[0].0.fx_xmm[..8], st.fpu.fx_xmm[..8], "{name}: XMM0-7 as stored");
    }
}

/// Memory that records each access's kind and faults on every one, like a
/// page that is not present would (the #PF's W bit is the access's kind).
struct AbsentPage(Vec<nvmm::assist::mmu::AccessKind>);

impl EmuMemory for AbsentPage {
    fn read(&mut self, linear: u64, _buf: &mut [u8], a: Access) -> Result<(), EmuError> {
        self.fault(linear, a)
    }
    fn write(&mut self, linear: u64, _buf: &[u8], a: Access) -> Result<(), EmuError> {
        self.fault(linear, a)
    }
}

impl AbsentPage {
    fn fault(&mut self, linear: u64, a: Access) -> Result<(), EmuError> {
        self.0.push(a.kind);
        let w = u32::from(a.kind == nvmm::assist::mmu::AccessKind::Write);
        Err(EmuError::Exception { vector: 14, error_code: Some(w << 1), cr2: Some(linear) })
    }
}

/// Read-modify-write instructions fault on a page that is not present as
/// writes (the SDM: the CPU checks write rights at the read), as the CPU
/// did for XSAVE's header in `assists::page_faults_through_the_assist_match_the_cpu`;
/// CMP and TEST, which only read, as reads.
#[test]
fn read_modify_write_faults_are_writes() {
    use nvmm::assist::mmu::AccessKind;
    let mut st = State::default();
    nvmm::x86::modes::long_mode(&mut st, 0x800, 0x10000);
    st.gprs[Gpr::Rbx] = 0x1000;
    for (insn, kind) in [
        (&[0x01, 0x03][..], AccessKind::Write),         // add [rbx],eax
        (&[0x80, 0x0b, 0x01], AccessKind::Write),       // or byte [rbx],1
        (&[0x87, 0x03], AccessKind::Write),             // xchg [rbx],eax
        (&[0x0f, 0xc1, 0x03], AccessKind::Write),       // xadd [rbx],eax
        (&[0x0f, 0xb1, 0x0b], AccessKind::Write),       // cmpxchg [rbx],ecx
        (&[0x48, 0x0f, 0xc7, 0x0b], AccessKind::Write), // cmpxchg16b [rbx]
        (&[0x39, 0x03], AccessKind::Read),              // cmp [rbx],eax
        (&[0x85, 0x03], AccessKind::Read),              // test [rbx],eax
        (&[0x8b, 0x03], AccessKind::Read),              // mov eax,[rbx]
    ] {
        let d = decode(insn, CpuMode::Bits64).unwrap();
        let mut model = LazyCpu::new(st, Xsave::default());
        let mut mem = AbsentPage(Vec::new());
        let e = execute(&d, &mut model, &mut mem).unwrap_err();
        let w = u32::from(kind == AccessKind::Write) << 1;
        assert!(
            matches!(e, EmuError::Exception { vector: 14, error_code: Some(c), .. } if c == w),
            "{insn:02x?}: {e:?}"
        );
        assert_eq!(mem.0, vec![kind], "{insn:02x?}: one access, faulting");
    }
}

/// The emulator's errors say what happened, in words a VMM can log.
#[test]
fn emulator_errors_say_what_happened() {
    let cases = [
        (EmuError::Exception { vector: 13, error_code: Some(0x18), cr2: None }, "exception 13 (error code 0x18)"),
        (EmuError::Exception { vector: 6, error_code: None, cr2: None }, "exception 6"),
        (EmuError::Unsupported("LOCK on a register"), "cannot emulate: LOCK on a register"),
        (EmuError::Memory("a page table in MMIO"), "not accessible: a page table in MMIO"),
    ];
    for (e, want) in cases {
        let text = e.to_string();
        assert!(text.ends_with(want), "{text:?} does not end with {want:?}");
    }
}

/// One access made: linear address, length, access.
type Made = (u64, usize, Access);

/// Guest memory that serves reads with 0x5a and keeps every access made.
#[derive(Default)]
struct Recording(Vec<Made>);

impl EmuMemory for Recording {
    fn read(&mut self, linear: u64, buf: &mut [u8], a: Access) -> Result<(), EmuError> {
        buf.fill(0x5a);
        self.0.push((linear, buf.len(), a));
        Ok(())
    }
    fn write(&mut self, linear: u64, buf: &[u8], a: Access) -> Result<(), EmuError> {
        self.0.push((linear, buf.len(), a));
        Ok(())
    }
}

/// Emulates `insn` in `mode` from `st` on a [`Recording`] memory.
fn recorded(insn: &[u8], mode: CpuMode, st: State) -> (Result<(), EmuError>, Vec<Made>) {
    let d = decode(insn, mode).unwrap();
    let mut model = LazyCpu::new(st, Xsave::default());
    let mut mem = Recording::default();
    let r = execute(&d, &mut model, &mut mem);
    (r, mem.0)
}

/// Each access the emulator makes tells the guest's memory the CPL it is
/// made at and RFLAGS.AC, which the page walk needs (SDM vol. 3, 4.6:
/// SMAP lets supervisor data accesses reach user pages when AC is set;
/// user accesses are checked against the U/S bit).
#[test]
fn accesses_carry_the_cpl_and_rflags_ac() {
    use nvmm::assist::mmu::AccessKind;
    for user in [false, true] {
        for ac in [false, true] {
            let mut st = emulator_state(false);
            if user {
                nvmm::x86::modes::user_mode(&mut st);
            }
            st.gprs[Gpr::Rflags] = 2 | if ac { rflags::AC } else { 0 };
            for (insn, kind) in [(&[0x8b, 0x03][..], AccessKind::Read), (&[0x89, 0x03], AccessKind::Write)] {
                let (r, calls) = recorded(insn, CpuMode::Bits64, st);
                r.unwrap();
                assert_eq!(calls.len(), 1, "{insn:02x?}");
                let a = calls[0].2;
                assert_eq!((a.kind, a.user, a.ac), (kind, user, ac), "{insn:02x?}, user {user}, AC {ac}");
            }
        }
    }
}

/// Outside 64-bit mode an access that ends right at 4 GiB is one access;
/// one that crosses it is two, the second at 0 (SDM vol. 3, 5.3: linear
/// addresses wrap at 4 GiB there). A device behind the top of the
/// address space (firmware, APICs) sees one access per access.
#[test]
fn accesses_ending_at_4_gib_are_not_split() {
    // DS based at 4 KiB, so that the offsets stay within its limit.
    let mut st = emulator_state(true);
    st.segs[nvmm::Seg::Ds].base = 0x1000;
    for (lin, want) in [
        (0xffff_fffcu64, vec![(0xffff_fffcu64, 4usize)]),
        (0xffff_fffe, vec![(0xffff_fffe, 2), (0, 2)]),
        (0xffff_fff8, vec![(0xffff_fff8, 4)]),
    ] {
        let ebx = lin - 0x1000;
        st.gprs[Gpr::Rbx] = ebx;
        let (r, calls) = recorded(&[0x8b, 0x03], CpuMode::Bits32, st);
        r.unwrap();
        let got: Vec<(u64, usize)> = calls.iter().map(|&(l, n, _)| (l, n)).collect();
        assert_eq!(got, want, "mov eax,[{ebx:#x}]");
    }
}

/// Real mode and virtual-8086 mode check no descriptor types (SDM vol. 3,
/// 20.1 and 20.2: segments there are a base and a 64 KiB limit): a write
/// through CS, whatever type its cache holds, and through a DS whose
/// cache says read-only, lands, as does a read through an execute-only
/// CS; beyond the 64 KiB limit it is #GP(0).
#[test]
fn real_and_virtual_8086_mode_check_no_descriptor_types() {
    use nvmm::Seg;
    use nvmm::assist::mmu::AccessKind;
    for vm86 in [false, true] {
        let mut st = nvmm::x86::reset::reset_state();
        nvmm::x86::modes::real_mode_entry(&mut st, 0x1000);
        if vm86 {
            st.crs[Cr::Cr0] |= 1;
            st.gprs[Gpr::Rflags] |= 1 << 17;
        }
        st.segs[Seg::Cs].base = 0x1_0000;
        st.segs[Seg::Ds].base = 0x2_0000;
        st.gprs[Gpr::Rbx] = 0x100;
        for (cs_type, ds_type) in [(11u8, 1u8), (9, 1), (3, 3)] {
            st.segs[Seg::Cs].attrib = SegAttrib::new(cs_type, true, 0, true, false, false, false, false);
            st.segs[Seg::Ds].attrib = SegAttrib::new(ds_type, true, 0, true, false, false, false, false);
            let ctx = format!("VM86 {vm86}, CS type {cs_type}, DS type {ds_type}");
            for (insn, at, kind) in [
                (&[0x2e, 0x89, 0x07][..], 0x1_0100u64, AccessKind::Write), // mov cs:[bx],ax
                (&[0x2e, 0x8b, 0x07], 0x1_0100, AccessKind::Read),         // mov ax,cs:[bx]
                (&[0x89, 0x07], 0x2_0100, AccessKind::Write),              // mov [bx],ax
            ] {
                let (r, calls) = recorded(insn, CpuMode::Bits16, st);
                r.unwrap_or_else(|e| panic!("{ctx}, {insn:02x?}: {e}"));
                let got: Vec<(u64, usize, AccessKind)> = calls.iter().map(|&(l, n, a)| (l, n, a.kind)).collect();
                assert_eq!(got, vec![(at, 2, kind)], "{ctx}, {insn:02x?}");
            }
            let mut beyond = st;
            beyond.gprs[Gpr::Rbx] = 0xffff;
            let (r, _) = recorded(&[0x89, 0x07], CpuMode::Bits16, beyond);
            assert!(matches!(r, Err(EmuError::Exception { vector: 13, error_code: Some(0), .. })), "{ctx}: {r:?}");
        }
    }
}

/// #AC needs CR0.AM, RFLAGS.AC and CPL 3 together, and a misaligned
/// access (SDM vol. 3, 6.15, interrupt 17): every combination, against
/// that rule (this host runs guest user code with its own CR0.AM, so the
/// CPU shows only the cases with CR0.AM set; `faults_match_the_cpu`
/// compares those).
#[test]
fn alignment_checks_need_cr0_am_rflags_ac_and_cpl_3() {
    for bits in 0..16u8 {
        let (am, ac, user, misaligned) = (bits & 1 != 0, bits & 2 != 0, bits & 4 != 0, bits & 8 != 0);
        let mut st = emulator_state(false);
        if user {
            nvmm::x86::modes::user_mode(&mut st);
        }
        if am {
            st.crs[Cr::Cr0] |= 1 << 18;
        }
        st.gprs[Gpr::Rflags] = 2 | if ac { rflags::AC } else { 0 };
        st.gprs[Gpr::Rbx] = DATA + 64 + u64::from(misaligned) * 2;
        let (r, _) = recorded(&[0x8b, 0x03], CpuMode::Bits64, st);
        let ctx = format!("CR0.AM {am}, RFLAGS.AC {ac}, CPL 3 {user}, misaligned {misaligned}");
        if am && ac && user && misaligned {
            assert!(matches!(r, Err(EmuError::Exception { vector: 17, error_code: Some(0), .. })), "{ctx}: {r:?}");
        } else {
            r.unwrap_or_else(|e| panic!("{ctx}: {e}"));
        }
    }
}
