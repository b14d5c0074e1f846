//! The assists end to end: instructions KVM cannot emulate on MMIO, at CPL 0
//! and CPL 3, complete through `assist_mem` with the right registers,
//! flags, memory and device-side results; plain MMIO and I/O exits go
//! through the callbacks.

mod common;

use common::*;
use nvmm::assist::flags::rflags;
use nvmm::x86::modes::{self, cr4};
use nvmm::x86::xsave::xfeature;
use nvmm::{AssistOutcome, Cr, Exit, Gpr, Seg, StateMask};

const MMIO: u64 = 0x1000_0000;
const TSS: u64 = 0x3000;
const BP_HANDLER: u64 = 0x1800;

/// A device: 1 KiB of registers and the log of accesses.
struct Device {
    regs: [u8; 1024],
    log: Vec<(bool, u64, usize)>,
}

impl Default for Device {
    fn default() -> Device {
        Device { regs: [0; 1024], log: Vec::new() }
    }
}

impl Device {
    fn access(&mut self, req: &mut nvmm::MemRequest<'_>) {
        let off = (req.gpa - MMIO) as usize;
        self.log.push((req.write, req.gpa, req.data.len()));
        if req.write {
            self.regs[off..off + req.data.len()].copy_from_slice(req.data);
        } else {
            req.data.copy_from_slice(&self.regs[off..off + req.data.len()]);
        }
    }
}

/// Runs to the end marker (HLT at CPL 0, OUT 0x10 at CPL 3), assisting
/// memory exits. Returns the number of emulation failures assisted (KVM
/// versions differ in what they emulate themselves; the results must be
/// the same either way).
fn run(g: &mut Guest, dev: &mut Device) -> usize {
    let n = run_inner(g, dev);
    println!("emulation failures assisted: {n}");
    n
}

fn run_inner(g: &mut Guest, dev: &mut Device) -> usize {
    let mut emulated = 0;
    for _ in 0..100 {
        let exit = g.vcpu.run().unwrap();
        match exit {
            Exit::Halted => return emulated,
            Exit::Io(io) if io.port() == 0x10 => return emulated,
            Exit::EmulationFailure(_) => {
                emulated += 1;
                g.vcpu.assist_mem(|r| dev.access(r)).unwrap();
            }
            Exit::Memory(_) => {
                g.vcpu.assist_mem(|r| dev.access(r)).unwrap();
            }
            Exit::None => {}
            e => panic!("unexpected exit {e:?}"),
        }
    }
    panic!("the guest did not finish");
}

/// A 64-bit guest running `insn` then the end marker, with RSI pointing at
/// the device, at CPL 0 or 3; AVX enabled; a #BP handler that records 3 at
/// 0x2100 and halts.
fn guest(insn: &[u8], user: bool) -> Guest {
    let mut code = insn.to_vec();
    code.extend_from_slice(if user { &[0xe6, 0x10] } else { &[0xf4] });
    let mut g = long_mode(&code);
    // #BP handler: mov BYTE PTR ds:0x2100,0x3 ; hlt
    g.machine.write_gpa(BP_HANDLER, &[0xc6, 0x04, 0x25, 0x00, 0x21, 0x00, 0x00, 0x03, 0xf4]).unwrap();
    let gate: u64 = (BP_HANDLER & 0xffff) | (u64::from(modes::CODE64_SELECTOR) << 16) | (0xee00u64 << 32);
    g.machine.write_gpa(IDT + 16 * 3, &gate.to_le_bytes()).unwrap();
    g.machine.write_gpa(IDT + 16 * 3 + 8, &0u64.to_le_bytes()).unwrap();
    // TSS with RSP0, for the switch from CPL 3.
    g.machine.write_gpa(TSS + 4, &0x9000u64.to_le_bytes()).unwrap();
    let has_avx = nvmm().capability().arch.xcr0_mask & xfeature::AVX != 0;
    g.vcpu
        .update(StateMask::ALL, |s| {
            if user {
                modes::user_mode(s);
            }
            s.segs[Seg::Idt].base = IDT;
            s.segs[Seg::Idt].limit = 16 * 32 - 1;
            s.segs[Seg::Tr].base = TSS;
            s.crs[Cr::Cr4] |= cr4::OSXSAVE;
            s.crs[Cr::Xcr0] = if has_avx { 7 } else { 3 };
            s.gprs[Gpr::Rsi] = MMIO;
        })
        .unwrap();
    g
}

fn ymm(g: &mut Guest, i: usize) -> [u8; 32] {
    g.vcpu.get_state(StateMask::FPU).unwrap();
    let mut v = [0u8; 32];
    v[..16].copy_from_slice(&g.vcpu.state().fpu.fx_xmm[i]);
    v[16..].copy_from_slice(&g.vcpu.xsave().ymm_hi(i).unwrap());
    v
}

fn has_avx() -> bool {
    nvmm().capability().arch.xcr0_mask & xfeature::AVX != 0
}

#[test]
fn vmovdqu_loads_from_mmio() {
    nvmm_testkit::kvm_or_skip!();
    if !has_avx() {
        nvmm_testkit::skip("the host CPU has no AVX, so no guest can execute a VEX.256 move");
        return;
    }
    for user in [false, true] {
        let mut g = guest(&[0xc5, 0xfe, 0x6f, 0x06], user); // vmovdqu ymm0,[rsi]
        let mut dev = Device::default();
        for (i, b) in dev.regs.iter_mut().enumerate() {
            *b = (i * 3) as u8;
        }
        run(&mut g, &mut dev);
        assert_eq!(&ymm(&mut g, 0)[..], &dev.regs[..32], "cpl3={user}");
        assert_eq!(dev.log, vec![(false, MMIO, 32)], "one 32-byte device read, cpl3={user}");
    }
}

#[test]
fn vmovdqu_stores_to_mmio() {
    nvmm_testkit::kvm_or_skip!();
    if !has_avx() {
        nvmm_testkit::skip("the host CPU has no AVX, so no guest can execute a VEX.256 move");
        return;
    }
    for user in [false, true] {
        let mut g = guest(&[0xc5, 0xfe, 0x7f, 0x0e], user); // vmovdqu [rsi],ymm1
        g.vcpu
            .update(StateMask::FPU, |s| {
                s.fpu.fx_xmm[1] = [0x5a; 16];
            })
            .unwrap();
        g.vcpu.xsave_mut().set_ymm_hi(1, [0xa5; 16]).unwrap();
        let mut dev = Device::default();
        run(&mut g, &mut dev);
        assert_eq!(&dev.regs[..16], &[0x5a; 16], "cpl3={user}");
        assert_eq!(&dev.regs[16..32], &[0xa5; 16], "cpl3={user}");
        assert_eq!(dev.log, vec![(true, MMIO, 32)], "cpl3={user}");
    }
}

#[test]
fn flds_and_fstpl_use_mmio() {
    nvmm_testkit::kvm_or_skip!();
    for user in [false, true] {
        // flds [rsi] ; fstpl [rsi+8]: load 1.5f from the device, store it back as a double.
        let mut g = guest(&[0xd9, 0x06, 0xdd, 0x5e, 0x08], user);
        g.vcpu.get_state(StateMask::FPU).unwrap();
        let tags_before = g.vcpu.state().fpu.fx_tw;
        let mut dev = Device::default();
        dev.regs[..4].copy_from_slice(&1.5f32.to_le_bytes());
        run(&mut g, &mut dev);
        assert_eq!(f64::from_le_bytes(dev.regs[8..16].try_into().unwrap()), 1.5, "cpl3={user}");
        g.vcpu.get_state(StateMask::FPU).unwrap();
        let fpu = g.vcpu.state().fpu;
        assert_eq!(((fpu.fx_sw >> 11) & 7, fpu.fx_tw), (0, tags_before), "pushed then popped, cpl3={user}");
        assert_eq!(dev.log, vec![(false, MMIO, 4), (true, MMIO + 8, 8)], "cpl3={user}");
    }
}

#[test]
fn lock_cmpxchg16b_on_mmio() {
    nvmm_testkit::kvm_or_skip!();
    for user in [false, true] {
        for equal in [true, false] {
            let mut g = guest(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e], user); // lock cmpxchg16b [rsi]
            let mut dev = Device::default();
            dev.regs[..8].copy_from_slice(&0x1111u64.to_le_bytes());
            dev.regs[8..16].copy_from_slice(&0x2222u64.to_le_bytes());
            g.vcpu
                .update(StateMask::GPRS, |s| {
                    s.gprs[Gpr::Rax] = if equal { 0x1111 } else { 0x9999 };
                    s.gprs[Gpr::Rdx] = 0x2222;
                    s.gprs[Gpr::Rbx] = 0x3333;
                    s.gprs[Gpr::Rcx] = 0x4444;
                })
                .unwrap();
            run(&mut g, &mut dev);
            g.vcpu.get_state(StateMask::GPRS).unwrap();
            let s = g.vcpu.state();
            let zf = s.gprs[Gpr::Rflags] & rflags::ZF != 0;
            assert_eq!(zf, equal, "cpl3={user}");
            if equal {
                assert_eq!(u64::from_le_bytes(dev.regs[..8].try_into().unwrap()), 0x3333);
                assert_eq!(u64::from_le_bytes(dev.regs[8..16].try_into().unwrap()), 0x4444);
            } else {
                assert_eq!((s.gprs[Gpr::Rax], s.gprs[Gpr::Rdx]), (0x1111, 0x2222), "old value loaded");
                assert_eq!(u64::from_le_bytes(dev.regs[..8].try_into().unwrap()), 0x1111, "unchanged");
            }
            // The emulated instruction reads 16 bytes, then writes 16 bytes
            // (KVM may read the operand itself before it gives up).
            let n = dev.log.len();
            assert!(n >= 2, "{:?}", dev.log);
            assert_eq!(dev.log[n - 2..], [(false, MMIO, 16), (true, MMIO, 16)], "{:?}", dev.log);
        }
    }
}

#[test]
fn int3_delivers_breakpoint() {
    nvmm_testkit::kvm_or_skip!();
    for user in [false, true] {
        let mut g = guest(&[0xcc], user); // int3
        let mut dev = Device::default();
        run(&mut g, &mut dev);
        let mut marker = [0u8; 1];
        g.machine.read_gpa(0x2100, &mut marker).unwrap();
        assert_eq!(marker[0], 3, "the #BP handler ran, cpl3={user}");
        // The handler's frame holds the return RIP: past the INT3.
        g.vcpu.get_state(StateMask::GPRS).unwrap();
        let rsp = g.vcpu.state().gprs[Gpr::Rsp];
        let mut ret = [0u8; 8];
        g.machine.read_gpa(rsp, &mut ret).unwrap();
        assert_eq!(u64::from_le_bytes(ret), CODE + 1, "cpl3={user}");
    }
}

/// XSAVE to a device, which KVM leaves to the assist: the image goes out
/// through the callback in writes of up to 256 bytes (more than the 64
/// the assist keeps on its stack), laid out as the SDM's XSAVE area says
/// (FCW at 0, MXCSR at 24, XMM0-15 from 160, XSTATE_BV at 512), at the
/// address the registers give at the exit (RSI moved by the instruction
/// before). The assist decodes the bytes the exit carries, as NetBSD's
/// does when `inst_len` is not 0: code rewritten in RAM after the exit
/// does not change what it emulates.
#[test]
fn xsave_to_mmio_writes_the_sdm_image_from_the_exits_bytes() {
    nvmm_testkit::kvm_or_skip!();
    // With the run loop's completion, which looks at the instruction first
    // and leaves it to the program, and without (the assist alone).
    for complete in [true, false] {
        xsave_to_mmio(complete);
    }
}

fn xsave_to_mmio(complete: bool) {
    // add rsi,64 ; xsave [rsi] ; hlt
    let mut g = guest(&[0x48, 0x83, 0xc6, 0x40, 0x0f, 0xae, 0x26], false);
    g.vcpu.set_complete_emulation_failures(complete);
    let xmm: [[u8; 16]; 16] = std::array::from_fn(|i| std::array::from_fn(|j| (i * 16 + j) as u8 ^ 0x5c));
    g.vcpu
        .update(StateMask::FPU | StateMask::GPRS | StateMask::CRS, |s| {
            s.crs[Cr::Cr4] |= cr4::OSFXSR;
            s.fpu.fx_cw = 0x0372;
            s.fpu.fx_mxcsr = 0x1fa0;
            s.fpu.fx_xmm = xmm;
            // x87 and SSE.
            (s.gprs[Gpr::Rax], s.gprs[Gpr::Rdx]) = (3, 0);
        })
        .unwrap();
    let exit = g.vcpu.run().unwrap();
    if !matches!(exit, Exit::EmulationFailure(_)) {
        nvmm_testkit::skip(&format!("KVM runs XSAVE to MMIO itself here ({exit:?}): no assist to test"));
        return;
    }
    // xrstor [rsi] where the XSAVE was.
    g.machine.write_gpa(CODE + 4, &[0x0f, 0xae, 0x2e]).unwrap();
    let mut dev = Device::default();
    dev.regs[64 + 512..64 + 520].copy_from_slice(&0x4u64.to_le_bytes());
    g.vcpu.assist_mem(|r| dev.access(r)).unwrap();
    assert!(dev.log.iter().any(|&(w, _, n)| w && n > 64), "{:?}", dev.log);
    assert!(dev.log.iter().all(|&(_, gpa, n)| gpa >= MMIO + 64 && gpa + n as u64 <= MMIO + 64 + 520), "{:?}", dev.log);
    let image = &dev.regs[64..64 + 520];
    assert_eq!(&image[0..2], &0x0372u16.to_le_bytes(), "FCW");
    assert_eq!(&image[24..28], &0x1fa0u32.to_le_bytes(), "MXCSR");
    assert_eq!(&image[160..416], xmm.as_flattened(), "XMM0-15");
    assert_eq!(&image[512..520], &7u64.to_le_bytes(), "XSTATE_BV: x87 and SSE in use, AVX's bit kept");
    assert_eq!(run(&mut g, &mut dev), 0, "then the HLT");
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), CODE + 8, "past the XSAVE's 3 bytes and the HLT");
}

/// Where the assist reads the instruction itself (a memory exit whose
/// registers the program changed, so KVM's decoding no longer holds):
/// from supervisor-only code pages at CPL 0, across a page boundary into a
/// page mapped at a distant frame, and up to the end of the last mapped
/// page (NVMM bug #16 fixed: the instruction there still decodes); an
/// instruction cut short by an unmapped page is EFAULT, as NetBSD's fetch
/// fails. Oracle: the instruction's own meaning (the device's value in
/// EAX, RIP past it) and the guest's HLT.
#[test]
fn the_assist_fetches_instructions_across_pages_and_to_the_last_byte() {
    nvmm_testkit::kvm_or_skip!();
    const TEXT: u64 = 0x5000_0000;
    let setup = || {
        let mut g = long_mode(&[]);
        let mut t = nvmm::x86::paging::PageTables::new(nvmm::x86::PagingMode::Level4, 0x20_0000);
        t.map(0, 0, 2 << 20, nvmm::x86::bits::pte::RW).unwrap();
        t.map(MMIO, MMIO, 0x1000, nvmm::x86::bits::pte::RW).unwrap();
        // Supervisor-only, read-only text: two pages at distant frames,
        // nothing after them.
        t.map(TEXT, 0x30_0000, 0x1000, 0).unwrap();
        t.map(TEXT + 0x1000, 0x30_5000, 0x1000, 0).unwrap();
        for (gpa, page) in t.pages() {
            g.machine.write_gpa(gpa, page).unwrap();
        }
        // mov eax,[rsi+0] across the boundary, then hlt.
        g.machine.write_gpa(0x30_0ffd, &[0x8b, 0x86, 0x00]).unwrap();
        g.machine.write_gpa(0x30_5000, &[0x00, 0x00, 0x00, 0xf4]).unwrap();
        // At the end of the second page: 8b (cut short: mov ecx,[rbx+disp32]
        // as 8b 8b 06), then mov eax,[rsi] in its last two bytes.
        g.machine.write_gpa(0x30_5ffd, &[0x8b, 0x8b, 0x06]).unwrap();
        g.vcpu
            .update(StateMask::GPRS | StateMask::CRS, |s| {
                s.crs[nvmm::Cr::Cr3] = t.cr3();
                s.gprs[Gpr::Rsi] = MMIO;
            })
            .unwrap();
        g
    };
    let assist_from = |g: &mut Guest, rip: u64| -> Result<u64, nvmm::Error> {
        g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rip] = rip).unwrap();
        let exit = g.vcpu.run().unwrap();
        assert!(matches!(exit, Exit::Memory(_)), "{exit:?}");
        // The program changes a register: the assist decodes the code.
        g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rbx] = 0x77).unwrap();
        let mut dev = Device::default();
        dev.regs[..4].copy_from_slice(&0xfeed_f00du32.to_le_bytes());
        g.vcpu.assist_mem(|r| dev.access(r))?;
        assert_eq!(dev.log, vec![(false, MMIO, 4)]);
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rax) & 0xffff_ffff, 0xfeed_f00d, "EAX from the device");
        assert_eq!(gpr(&mut g.vcpu, Gpr::Rbx), 0x77, "the program's change kept");
        Ok(gpr(&mut g.vcpu, Gpr::Rip))
    };
    let mut g = setup();
    assert_eq!(assist_from(&mut g, TEXT + 0xffd).unwrap(), TEXT + 0x1003, "past the 6 bytes across the pages");
    assert_eq!(next_reason(&mut g.vcpu), nvmm::exit::reason::HALTED);
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), TEXT + 0x1004);
    assert_eq!(assist_from(&mut g, TEXT + 0x1ffe).unwrap(), TEXT + 0x2000, "the last two bytes of the text");
    // Cut short: the exit of the last instruction, then RIP moved one byte back.
    let mut g = setup();
    g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rip] = TEXT + 0x1ffe).unwrap();
    assert!(matches!(g.vcpu.run().unwrap(), Exit::Memory(_)));
    g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rip] = TEXT + 0x1ffd).unwrap();
    let e = g.vcpu.assist_mem(|_| panic!("no access for an instruction cut short")).unwrap_err();
    assert_eq!(e.errno(), libc::EFAULT, "{e}");
    assert_eq!(gpr(&mut g.vcpu, Gpr::Rip), TEXT + 0x1ffd, "nothing done");
}

#[test]
fn plain_mmio_exits_go_through_the_callback() {
    nvmm_testkit::kvm_or_skip!();
    // mov eax,[rsi] ; mov [rsi+4],eax
    let mut g = guest(&[0x8b, 0x06, 0x89, 0x46, 0x04], false);
    let mut dev = Device::default();
    dev.regs[..4].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    run(&mut g, &mut dev);
    assert_eq!(&dev.regs[4..8], &0xdead_beefu32.to_le_bytes());
    assert_eq!(dev.log, vec![(false, MMIO, 4), (true, MMIO + 4, 4)]);
    assert_eq!(g.vcpu.assist_mem(|_| {}).unwrap_err().errno(), 22, "no memory exit to assist");
}

#[test]
fn string_io_goes_through_the_io_callback() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = real_mode(&[
        0xfc, //             cld
        0xbe, 0x00, 0x30, // mov si,0x3000
        0xb9, 0x05, 0x00, // mov cx,0x5
        0xba, 0xe9, 0x00, // mov dx,0xe9
        0xf3, 0x6e, //       rep outs dx,BYTE PTR ds:[si]
        0xbf, 0x00, 0x40, // mov di,0x4000
        0xb9, 0x04, 0x00, // mov cx,0x4
        0xf3, 0x6c, //       rep ins BYTE PTR es:[di],dx
        0xf4, //             hlt
    ]);
    g.machine.write_gpa(0x3000, b"hello").unwrap();
    let mut out = Vec::new();
    let mut next_in = b'A';
    loop {
        match g.vcpu.run().unwrap() {
            Exit::Io(_) => {
                let r = g
                    .vcpu
                    .assist_io(|io| {
                        assert_eq!(io.port, 0xe9);
                        if io.is_in {
                            io.data[0] = next_in;
                            next_in += 1;
                        } else {
                            out.push(io.data[0]);
                        }
                    })
                    .unwrap();
                assert_eq!(r, AssistOutcome::Completed);
            }
            Exit::Halted => break,
            Exit::None => {}
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(out, b"hello");
    let mut back = [0u8; 4];
    g.machine.read_gpa(0x4000, &mut back).unwrap();
    assert_eq!(&back, b"ABCD");
    assert_eq!(g.vcpu.assist_io(|_| {}).unwrap_err().errno(), 22, "no I/O exit to assist");
}

/// Runs an I/O guest to HLT with `assist_io`: OUT bytes are collected, IN
/// returns 'a', 'b', 'c'... Also checks `io_instruction` on every exit.
fn io_guest(g: &mut Guest) -> Vec<u8> {
    let mut out = Vec::new();
    let mut next_in = b'a';
    for _ in 0..200 {
        match g.vcpu.run().unwrap() {
            Exit::Io(_) => {
                let (insn, _) = g.vcpu.io_instruction().unwrap();
                assert!(insn.string && insn.rep, "{insn:?}");
                g.vcpu
                    .assist_io(|io| {
                        if io.is_in {
                            for b in io.data.iter_mut() {
                                *b = next_in;
                                next_in += 1;
                            }
                        } else {
                            out.extend_from_slice(io.data);
                        }
                    })
                    .unwrap();
            }
            Exit::Halted => return out,
            Exit::None => {}
            e => panic!("{e:?}"),
        }
    }
    panic!("did not halt");
}

#[test]
fn string_io_backwards_with_64_bit_addresses_and_a_segment_override() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = long_mode(&[
        0xfd, //                                     std
        0x48, 0xc7, 0xc6, 0x04, 0x30, 0x00, 0x00, // mov rsi,0x3004
        0x48, 0xc7, 0xc1, 0x03, 0x00, 0x00, 0x00, // mov rcx,0x3
        0x66, 0xba, 0xe9, 0x00, //                   mov dx,0xe9
        0x66, 0xf3, 0x6f, //                         rep outs dx,WORD PTR ds:[rsi]
        0xfc, //                                     cld
        0x48, 0xc7, 0xc7, 0x00, 0x40, 0x00, 0x00, // mov rdi,0x4000
        0x48, 0xc7, 0xc1, 0x03, 0x00, 0x00, 0x00, // mov rcx,0x3
        0x66, 0xf3, 0x6d, //                         rep ins WORD PTR es:[rdi],dx
        0xb9, 0x02, 0x00, 0x00, 0x00, //             mov ecx,0x2
        0xbe, 0x10, 0x00, 0x00, 0x00, //             mov esi,0x10
        0x64, 0xf3, 0x6e, //                         rep outs dx,BYTE PTR fs:[rsi]
        0xf4, //                                     hlt
    ]);
    g.machine.write_gpa(0x3000, b"AABBCC").unwrap();
    g.machine.write_gpa(0x5010, b"fs").unwrap();
    g.vcpu.update(StateMask::SEGS, |s| s.segs[Seg::Fs].base = 0x5000).unwrap();
    let out = io_guest(&mut g);
    // Backwards from 0x3004: CC, BB, AA; then the FS-relative bytes.
    assert_eq!(out, b"CCBBAAfs");
    let mut back = [0u8; 6];
    g.machine.read_gpa(0x4000, &mut back).unwrap();
    assert_eq!(&back, b"abcdef");
    g.vcpu.get_state(StateMask::GPRS).unwrap();
    assert_eq!(g.vcpu.state().gprs[Gpr::Rsi], 0x12);
}

#[test]
fn string_io_with_32_bit_addresses_and_a_segment_override() {
    nvmm_testkit::kvm_or_skip!();
    let mut g = protected_mode(&[
        0xbe, 0x10, 0x00, 0x00, 0x00, // mov esi,0x10
        0xb9, 0x03, 0x00, 0x00, 0x00, // mov ecx,0x3
        0x66, 0xba, 0xe9, 0x00, //       mov dx,0xe9
        0x64, 0xf3, 0x6e, //             rep outs dx,BYTE PTR fs:[esi]
        0xf4, //                         hlt
    ]);
    g.machine.write_gpa(0x6010, b"xyz").unwrap();
    g.vcpu.update(StateMask::SEGS, |s| s.segs[Seg::Fs].base = 0x6000).unwrap();
    assert_eq!(io_guest(&mut g), b"xyz");
}

/// Runs `insn` at CPL 3 with RSI at `rsi` in a 2 MiB area of 4 KiB pages
/// whose second page is absent, the first page being RAM (the CPU runs it)
/// or MMIO (an access to it exits; KVM's emulator gives up on the
/// instruction and the assist emulates it, walking the page tables).
/// Returns, for each, the #PF's error code, CR2 and how many times the
/// assist ran. With `mmio_rsi`, the MMIO run starts with RSI there and the
/// program moves it to `rsi` at the exit, before assisting (the assist
/// then decodes and emulates the instruction with the changed state).
fn page_fault_of(insn: &[u8], rsi: u64, mmio_rsi: Option<u64>) -> Vec<(u64, u64, usize)> {
    const PT: u64 = 0x4_0000;
    const PF_HANDLER: u64 = 0x1900;
    const RAM_PAGE: u64 = 0x30_0000;
    let mut seen = Vec::new();
    for first in [RAM_PAGE, MMIO] {
        let mut g = guest(insn, true);
        // #PF handler: out 0x2e,al (its frame holds the error code).
        g.machine.write_gpa(PF_HANDLER, &[0xe6, 0x2e, 0xf4]).unwrap();
        let gate: u64 = (PF_HANDLER & 0xffff) | (u64::from(modes::CODE64_SELECTOR) << 16) | (0x8e00u64 << 32);
        g.machine.write_gpa(IDT + 16 * 14, &gate.to_le_bytes()).unwrap();
        g.machine.write_gpa(IDT + 16 * 14 + 8, &0u64.to_le_bytes()).unwrap();
        let mut pt = vec![0u8; 4096];
        pt[..8].copy_from_slice(&(first | 7).to_le_bytes());
        for e in 2..512u64 {
            pt[(e * 8) as usize..][..8].copy_from_slice(&((RAM_PAGE + e * 4096) | 7).to_le_bytes());
        }
        g.machine.write_gpa(PT, &pt).unwrap();
        g.machine.write_gpa(PML4 + 0x2000 + 8 * (FAULT_AREA >> 21), &(PT | 7).to_le_bytes()).unwrap();
        g.vcpu
            .update(StateMask::GPRS, |s| {
                s.gprs[Gpr::Rsi] = if first == MMIO { mmio_rsi.unwrap_or(rsi) } else { rsi };
                (s.gprs[Gpr::Rax], s.gprs[Gpr::Rdx]) = (7, 0);
            })
            .unwrap();
        let mut assisted = 0;
        let fault = loop {
            match g.vcpu.run().unwrap() {
                Exit::Io(io) if io.port() == 0x2e => break true,
                Exit::Io(io) if io.port() == 0x10 => break false,
                Exit::EmulationFailure(_) | Exit::Memory(_) => {
                    assisted += 1;
                    if mmio_rsi.is_some() {
                        g.vcpu.update(StateMask::GPRS, |s| s.gprs[Gpr::Rsi] = rsi).unwrap();
                    }
                    let outcome = g.vcpu.assist_mem(|r| {
                        let off = r.gpa - MMIO;
                        assert!(off < 4096, "{:#x}", r.gpa);
                        r.data.fill(0);
                    });
                    assert_eq!(outcome.unwrap(), AssistOutcome::Exception { vector: 14 });
                }
                Exit::None => {}
                e => panic!("unexpected exit {e:?}"),
            }
            assert!(assisted < 5, "the assist did not raise the fault");
        };
        assert!(fault, "{insn:02x?}: no #PF (first page {first:#x})");
        g.vcpu.get_state(StateMask::GPRS | StateMask::CRS).unwrap();
        let s = *g.vcpu.state();
        let mut frame = [0u8; 16];
        g.machine.read_gpa(s.gprs[Gpr::Rsp], &mut frame).unwrap();
        let code = u64::from_le_bytes(frame[..8].try_into().unwrap());
        let rip = u64::from_le_bytes(frame[8..].try_into().unwrap());
        assert_eq!(rip, CODE, "{insn:02x?}: the fault leaves RIP on the instruction (first page {first:#x})");
        println!(
            "{insn:02x?} first page {first:#x}: error code {code:#x}, CR2 {:#x}, {assisted} assisted",
            s.crs[Cr::Cr2]
        );
        seen.push((code, s.crs[Cr::Cr2], assisted));
    }
    seen
}

/// The 2 MiB area of [`page_fault_of`].
const FAULT_AREA: u64 = 0x1000_0000;

/// A #PF the assist raises against the CPU's: instructions KVM's emulator
/// gives up on, at CPL 3, whose stores start on the first page of
/// [`page_fault_of`]'s area and end on the next, absent, page. With the
/// first page RAM the CPU faults natively; with it MMIO the store exits
/// and the assist emulates it. Both must be #PF with the same error code
/// (not present, write — XSTATE_BV is read and written back, a write for
/// the CPU —, user), CR2 on the same page, RIP on the instruction. Which
/// of an instruction's accesses a CPU makes first is its own: one that
/// faults on the absent page before touching the MMIO page never reaches
/// the assist (its MMIO run is the CPU's fault again, and must match too);
/// at least one must reach it. A plain store that KVM emulates reaches the
/// assist when the program changes the state at its MMIO exit: there RSI
/// is moved onto the absent page, and the CPU runs the same store with
/// that RSI (CR2 is then compared exactly).
#[test]
fn page_faults_through_the_assist_match_the_cpu() {
    nvmm_testkit::kvm_or_skip!();
    let end = FAULT_AREA + 0x1000;
    let cases: [(&str, &[u8], u64); 3] = [
        // Legacy region on the first page, header and AVX on the next.
        ("xsave [rsi], legacy region first", &[0x0f, 0xae, 0x26], end - 512),
        // Legacy region and header first, AVX on the next.
        ("xsave [rsi], header first", &[0x0f, 0xae, 0x26], end - 576),
        // A 32-byte store split 16/16 across the pages.
        ("vmovdqu [rsi], ymm0", &[0xc5, 0xfe, 0x7f, 0x06], end - 16),
    ];
    // The CPU's fault: not present, write, user; CR2 by page (the order
    // of XSAVE's accesses is the implementation's: a CPU may fault on the
    // last byte of the AVX component).
    let page = |a: u64| a & !0xfff;
    let mut through_assist = 0;
    for (name, insn, rsi) in cases {
        let seen = page_fault_of(insn, rsi, None);
        assert_eq!(
            (seen[0].0, page(seen[0].1), seen[0].2),
            (0b110, end, 0),
            "{name}: the CPU: not present, write, user"
        );
        assert_eq!(
            (seen[1].0, page(seen[1].1)),
            (seen[0].0, page(seen[0].1)),
            "{name}: (error code, CR2's page): the assist vs the CPU"
        );
        if seen[1].2 > 0 {
            through_assist += 1;
        } else {
            println!("{name}: this CPU faults on the absent page before it touches the MMIO page");
        }
    }
    // mov [rsi],eax: KVM emulates it; at its MMIO exit RSI moves 8 bytes
    // into the absent page.
    let seen = page_fault_of(&[0x89, 0x06], end + 8, Some(FAULT_AREA + 8));
    assert_eq!((seen[0].0, seen[0].1, seen[0].2), (0b110, end + 8, 0), "mov: the CPU: not present, write, user");
    assert_eq!((seen[1].0, seen[1].1), (seen[0].0, seen[0].1), "mov: (error code, CR2): the assist vs the CPU");
    assert_eq!(seen[1].2, 1, "mov: the MMIO case went through the assist");
    println!("{{\"xsave_or_vmovdqu_through_the_assist\":{through_assist},\"mov_after_a_state_change\":1}}");
}
