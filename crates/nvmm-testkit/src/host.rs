//! What the host's KVM can run, probed with bare `kvm-ioctls` calls and
//! nothing of nvmm: tests that compare against KVM ask here first, so that
//! a host limitation is told apart from a library bug.

use crate::floor::{FloorError, RawExitKind, RawKvm, kvm_err};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

/// Where the probe's boot page tables live.
const TABLES: u64 = 0x2000;

/// A flat 4 GiB segment of `typ` with `selector` and `dpl`; `long` makes
/// a 64-bit code segment (L set, D clear), else D is set.
fn flat(seg: &mut kvm_bindings::kvm_segment, typ: u8, selector: u16, dpl: u8, long: bool) {
    seg.base = 0;
    seg.limit = 0xffff_ffff;
    seg.g = 1;
    seg.s = 1;
    seg.present = 1;
    seg.dpl = dpl;
    seg.type_ = typ;
    seg.selector = selector;
    seg.db = u8::from(!long);
    seg.l = u8::from(long);
}

/// Whether a guest in 32-bit protected mode can turn on 32-bit paging
/// (`pae == false`, 4 MiB pages) or PAE paging (`pae == true`, 2 MiB pages)
/// with `mov %cr0` and go on executing: identity-mapping tables, then
/// `mov eax, cr0; or eax, 0x80000000; mov cr0, eax; hlt`.
///
/// Some nested hosts cannot: the `mov %cr0` shuts the guest down, and
/// `KVM_SET_SREGS` drops CR0.PG outside long mode.
pub fn runs_legacy_paging(pae: bool) -> Result<bool, FloorError> {
    let code = [
        0x0f, 0x20, 0xc0, //             mov eax, cr0
        0x0d, 0x00, 0x00, 0x00, 0x80, // or eax, 0x80000000
        0x0f, 0x22, 0xc0, //             mov cr0, eax
        0xf4, //                         hlt
    ];
    let mut vm = RawKvm::open()?.vm(&code, 0x1000, 1 << 20)?;
    if pae {
        vm.write(TABLES, &((TABLES + 0x1000) | 1).to_le_bytes());
        vm.write(TABLES + 0x1000, &0x83u64.to_le_bytes());
    } else {
        vm.write(TABLES, &0x83u32.to_le_bytes());
    }
    let vcpu = vm.vcpu();
    let mut s = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    for (seg, ty, sel) in [
        (&mut s.cs, 0xb, 8),
        (&mut s.ds, 3, 16),
        (&mut s.es, 3, 16),
        (&mut s.ss, 3, 16),
        (&mut s.fs, 3, 16),
        (&mut s.gs, 3, 16),
    ] {
        flat(seg, ty, sel, 0, false);
    }
    s.cr0 = 0x11; // PE, ET
    s.cr3 = TABLES;
    s.cr4 = if pae { 1 << 5 } else { 1 << 4 };
    vcpu.set_sregs(&s).map_err(kvm_err("KVM_SET_SREGS"))?;
    Ok(vm.run()? == RawExitKind::Hlt)
}

/// Whether the CPUID a guest kernel executes returns what `KVM_SET_CPUID2`
/// set: the probe hides MCE, MTRR and MCA (leaf 1 EDX bits 7, 12, 14) from a
/// real-mode guest and runs `cpuid; hlt`.
///
/// Some nested hosts answer leaf 1 ECX/EDX and leaf 7 from their own
/// table whatever the VCPU's is; a guest's CPUID there says nothing about
/// the table a library built.
pub fn honours_cpuid_table() -> Result<bool, FloorError> {
    const HIDDEN: u32 = (1 << 7) | (1 << 12) | (1 << 14);
    let raw = RawKvm::open()?;
    let mut cpuid = raw.kvm().get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let mut expected = None;
    for e in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 1) {
        e.edx &= !HIDDEN;
        expected = Some(e.edx);
    }
    let Some(expected) = expected else { return Ok(false) };
    let mut vm = raw.vm(&[0x0f, 0xa2, 0xf4], 0x1000, 1 << 16)?; // cpuid; hlt
    let vcpu = vm.vcpu();
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    regs.rax = 1;
    regs.rcx = 0;
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    if vm.run()? != RawExitKind::Hlt {
        return Ok(false);
    }
    let regs = vm.vcpu().get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    Ok(regs.rdx as u32 == expected)
}

/// A 64-bit guest at CPL 3 (IOPL 3, EFER.SCE set, identity-mapped with one
/// 2 MiB user page) executing `code` at 0x1000.
fn user_mode_vm(code: &[u8]) -> Result<crate::floor::RawVm, FloorError> {
    let vm = RawKvm::open()?.vm(code, 0x1000, 1 << 21)?;
    // PML4 -> PDPT -> PD with one 2 MiB page: present, writable, user.
    vm.write(TABLES, &((TABLES + 0x1000) | 7).to_le_bytes());
    vm.write(TABLES + 0x1000, &((TABLES + 0x2000) | 7).to_le_bytes());
    vm.write(TABLES + 0x2000, &0x87u64.to_le_bytes());
    let vcpu = vm.vcpu();
    let mut s = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    for (seg, ty, sel) in [(&mut s.cs, 0xb, 0x2b), (&mut s.ds, 3, 0x23), (&mut s.es, 3, 0x23), (&mut s.ss, 3, 0x23)] {
        flat(seg, ty, sel, 3, ty == 0xb);
    }
    s.cr0 = 0x8000_0011; // PG, ET, PE
    s.cr3 = TABLES;
    s.cr4 = 1 << 5; // PAE
    s.efer = 1 | (1 << 8) | (1 << 10); // SCE, LME, LMA
    vcpu.set_sregs(&s).map_err(kvm_err("KVM_SET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    regs.rflags = 2 | (3 << 12);
    regs.rsp = 0x8000;
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    Ok(vm)
}

/// Whether `KVM_SET_GUEST_DEBUG` single-steps guest user code: a 64-bit
/// guest at CPL 3 runs `nop; nop; out 0x10, al` with
/// `KVM_GUESTDBG_SINGLESTEP`; the answer is whether the first exit is
/// `KVM_EXIT_DEBUG`.
///
/// Some nested hosts run guest user code natively without the kernel's
/// exception intercepts: no single step, no `#BP`/`#DB` exit, no debug
/// register reaches it there.
pub fn debugs_user_code() -> Result<bool, FloorError> {
    let mut vm = user_mode_vm(&[0x90, 0x90, 0xe6, 0x10])?;
    vm.single_step()?;
    Ok(vm.run()? == RawExitKind::Debug)
}

/// The kernel code selector a SYSCALL loads in [`syscall_code_selector`]
/// (`STAR[47:32]`).
pub const SYSCALL_KERNEL_CS: u16 = 0x10;

/// The code selector a guest's SYSCALL from CPL 3 leaves in CS, as the
/// guest itself reads it: a 64-bit guest at CPL 3 executes `syscall` with
/// STAR's kernel selector [`SYSCALL_KERNEL_CS`] and LSTAR at
/// `mov eax, cs; out 0x10, al`; the answer is AX at the OUT's exit
/// (`None` when the guest does not get there).
///
/// The CPU loads the kernel selector (and CPL 0). Some nested hosts, which
/// run guest user code natively and emulate guest kernel code, jump to
/// LSTAR and leave CS (and CPL) as they were: a guest kernel's system call
/// entry then faults on its own first instruction.
pub fn syscall_code_selector() -> Result<Option<u16>, FloorError> {
    let mut vm = user_mode_vm(&[0x0f, 0x05])?; // syscall
    vm.write(0x1100, &[0x8c, 0xc8, 0xe6, 0x10]); // mov eax, cs; out 0x10, al
    let msrs = kvm_bindings::Msrs::from_entries(&[
        // STAR, then LSTAR.
        kvm_bindings::kvm_msr_entry {
            index: 0xc000_0081,
            data: u64::from(SYSCALL_KERNEL_CS) << 32,
            ..Default::default()
        },
        kvm_bindings::kvm_msr_entry { index: 0xc000_0082, data: 0x1100, ..Default::default() },
    ])
    .map_err(|_| FloorError { what: "kvm_msrs", source: std::io::ErrorKind::InvalidInput.into() })?;
    let set = vm.vcpu().set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if set != 2 || vm.run()? != RawExitKind::Io {
        return Ok(None);
    }
    let regs = vm.vcpu().get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    Ok(Some(regs.rax as u16))
}

/// A present 64-bit interrupt gate to `selector:handler` that code at
/// privilege `dpl` or better may use with `int`: an IDT entry.
pub fn interrupt_gate64(handler: u64, selector: u16, dpl: u8) -> [u8; 16] {
    let low = (handler & 0xffff)
        | u64::from(selector) << 16
        | u64::from(0x8e | dpl << 5) << 40
        | (handler >> 16 & 0xffff) << 48;
    let mut gate = [0; 16];
    gate[..8].copy_from_slice(&low.to_le_bytes());
    gate[8..].copy_from_slice(&(handler >> 32).to_le_bytes());
    gate
}

/// The vector a guest's `int 0x80` from CPL 3 is delivered as: a 64-bit
/// guest at CPL 3 executes `int 0x80` with an IDT whose gate 0x80 has
/// DPL 3 and whose gates 6 (`#UD`) and 13 (`#GP`) exist too, each gate's
/// handler `mov al, vector; out 0x10, al`; the answer is AL at the OUT's
/// exit (`None` when the guest does not get there).
///
/// The CPU delivers vector 0x80. Some nested hosts, which run guest user
/// code natively and emulate guest kernel code, raise `#UD` instead: a
/// guest's user space there cannot enter its kernel through `int 0x80`
/// either.
pub fn int80_vector() -> Result<Option<u8>, FloorError> {
    const GDT: u64 = 0x5000;
    const IDT: u64 = 0x6000;
    const TSS: u64 = 0x7000;
    const HANDLERS: u64 = 0x1100;
    let mut vm = user_mode_vm(&[0xcd, 0x80])?; // int 0x80
    // Null, then a 64-bit kernel code segment (selector 8).
    vm.write(GDT + 8, &0x00af_9b00_0000_ffffu64.to_le_bytes());
    for (i, (vector, dpl)) in [(6u8, 0u8), (13, 0), (0x80, 3)].into_iter().enumerate() {
        let handler = HANDLERS + 8 * i as u64;
        vm.write(handler, &[0xb0, vector, 0xe6, 0x10]); // mov al, vector; out 0x10, al
        vm.write(IDT + 16 * u64::from(vector), &interrupt_gate64(handler, 8, dpl));
    }
    vm.write(TSS + 4, &0x9000u64.to_le_bytes()); // RSP0
    let vcpu = vm.vcpu();
    let mut s = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    s.gdt.base = GDT;
    s.gdt.limit = 15;
    s.idt.base = IDT;
    s.idt.limit = 0xfff;
    s.tr.base = TSS;
    s.tr.limit = 0x67;
    s.tr.type_ = 11;
    s.tr.present = 1;
    s.tr.s = 0;
    vcpu.set_sregs(&s).map_err(kvm_err("KVM_SET_SREGS"))?;
    if vm.run()? != RawExitKind::Io {
        return Ok(None);
    }
    let regs = vm.vcpu().get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    Ok(Some(regs.rax as u8))
}

/// Whether KVM exits for an armed interrupt window at the instruction
/// where the guest opens it: real-mode `cli; sti; nop; cli; out 0x80,al`
/// with the window requested exits before the OUT on every try (three:
/// where KVM checks the window only at other exits, a host interrupt can
/// still land in it once).
///
/// Some nested hosts, whose KVM emulates guest kernel code, check the
/// window only when the guest exits for something else.
pub fn exits_at_interrupt_windows() -> Result<bool, FloorError> {
    let code = [0xfa, 0xfb, 0x90, 0xfa, 0xe6, 0x80, 0xf4];
    let kvm = RawKvm::open()?;
    for _ in 0..3 {
        let mut vm = kvm.vm(&code, 0x1000, 1 << 16)?;
        vm.request_interrupt_window();
        if vm.run()? == RawExitKind::Io {
            return Ok(false);
        }
    }
    Ok(true)
}
