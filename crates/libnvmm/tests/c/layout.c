/*
 * nvmm.h's structs have NetBSD's sizes and field offsets (x86_64, LP64),
 * checked at compile time; the constants have NetBSD's values. A program
 * built against the header and run prints "layout ok".
 */

#include <nvmm.h>

#include <stddef.h>
#include <stdio.h>

#define SIZE(t, n)	_Static_assert(sizeof(t) == (n), "sizeof " #t)
#define OFF(t, f, n)	_Static_assert(offsetof(t, f) == (n), "offsetof " #t " " #f)
#define VALUE(c, v)	_Static_assert((c) == (v), #c)

/* Library structs. */
SIZE(struct nvmm_machine, 24);
SIZE(struct nvmm_assist_callbacks, 16);
SIZE(struct nvmm_vcpu, 56);
OFF(struct nvmm_vcpu, cbs, 8);
OFF(struct nvmm_vcpu, state, 24);
OFF(struct nvmm_vcpu, event, 32);
OFF(struct nvmm_vcpu, exit, 40);
OFF(struct nvmm_vcpu, stop, 48);
SIZE(struct nvmm_io, 40);
OFF(struct nvmm_io, port, 16);
OFF(struct nvmm_io, in, 18);
OFF(struct nvmm_io, size, 24);
OFF(struct nvmm_io, data, 32);
SIZE(struct nvmm_mem, 48);
OFF(struct nvmm_mem, gpa, 16);
OFF(struct nvmm_mem, write, 24);
OFF(struct nvmm_mem, size, 32);
OFF(struct nvmm_mem, data, 40);

/* Capability and configuration. */
SIZE(struct nvmm_capability, 104);
OFF(struct nvmm_capability, max_ram, 16);
OFF(struct nvmm_capability, arch, 24);
SIZE(struct nvmm_cap_md, 80);
OFF(struct nvmm_cap_md, xcr0_mask, 16);
OFF(struct nvmm_cap_md, mxcsr_mask, 24);
OFF(struct nvmm_cap_md, conf_cpuid_maxops, 28);
SIZE(struct nvmm_vcpu_conf_cpuid, 40);
OFF(struct nvmm_vcpu_conf_cpuid, leaf, 4);
OFF(struct nvmm_vcpu_conf_cpuid, u.mask.set, 8);
OFF(struct nvmm_vcpu_conf_cpuid, u.mask.del, 24);
SIZE(struct nvmm_vcpu_conf_tpr, 4);
SIZE(struct nvmm_ctl_mach_info, 32);
OFF(struct nvmm_ctl_mach_info, nram, 8);
OFF(struct nvmm_ctl_mach_info, pid, 16);
OFF(struct nvmm_ctl_mach_info, time, 24);

/* State. */
SIZE(struct nvmm_x64_state_seg, 16);
OFF(struct nvmm_x64_state_seg, limit, 4);
OFF(struct nvmm_x64_state_seg, base, 8);
SIZE(struct nvmm_x64_state_intr, 8);
SIZE(struct fxsave, 512);
OFF(struct fxsave, fx_ip, 8);
OFF(struct fxsave, fx_dp, 16);
OFF(struct fxsave, fx_mxcsr, 24);
OFF(struct fxsave, fx_87_ac, 32);
OFF(struct fxsave, fx_xmm, 160);
SIZE(struct nvmm_x64_state, 1008);
OFF(struct nvmm_x64_state, gprs, 160);
OFF(struct nvmm_x64_state, crs, 304);
OFF(struct nvmm_x64_state, drs, 352);
OFF(struct nvmm_x64_state, msrs, 400);
OFF(struct nvmm_x64_state, intr, 488);
OFF(struct nvmm_x64_state, fpu, 496);
_Static_assert(_Alignof(struct nvmm_x64_state) == 16, "state alignment");
SIZE(struct nvmm_comm_page, 1072);
OFF(struct nvmm_comm_page, state, 32);
OFF(struct nvmm_comm_page, event_commit, 1040);
OFF(struct nvmm_comm_page, event, 1048);
OFF(struct nvmm_comm_page, stop, 1064);

/* Exits and events. */
SIZE(struct nvmm_x86_exit_memory, 32);
OFF(struct nvmm_x86_exit_memory, gpa, 8);
OFF(struct nvmm_x86_exit_memory, inst_len, 16);
OFF(struct nvmm_x86_exit_memory, inst_bytes, 17);
SIZE(struct nvmm_x86_exit_io, 24);
OFF(struct nvmm_x86_exit_io, port, 2);
OFF(struct nvmm_x86_exit_io, seg, 4);
OFF(struct nvmm_x86_exit_io, address_size, 5);
OFF(struct nvmm_x86_exit_io, operand_size, 6);
OFF(struct nvmm_x86_exit_io, rep, 7);
OFF(struct nvmm_x86_exit_io, str, 8);
OFF(struct nvmm_x86_exit_io, npc, 16);
SIZE(struct nvmm_x86_exit_rdmsr, 16);
SIZE(struct nvmm_x86_exit_wrmsr, 24);
SIZE(struct nvmm_x86_exit_insn, 8);
SIZE(struct nvmm_x86_exit_invalid, 8);
SIZE(struct nvmm_x86_exit, 64);
OFF(struct nvmm_x86_exit, u, 8);
OFF(struct nvmm_x86_exit, exitstate, 40);
SIZE(struct nvmm_x86_event, 16);
OFF(struct nvmm_x86_event, vector, 4);
OFF(struct nvmm_x86_event, u.excp.error, 8);

/* Constants. */
VALUE(NVMM_KERN_VERSION, 2);
VALUE(NVMM_USER_VERSION, 2);
VALUE(NVMM_PROT_ALL, 0x0F);
VALUE(NVMM_X64_NSEG, 10);
VALUE(NVMM_X64_NGPR, 18);
VALUE(NVMM_X64_GPR_RFLAGS, 17);
VALUE(NVMM_X64_NCR, 6);
VALUE(NVMM_X64_CR_XCR0, 5);
VALUE(NVMM_X64_NDR, 6);
VALUE(NVMM_X64_NMSR, 11);
VALUE(NVMM_X64_MSR_TSC, 10);
VALUE(NVMM_X64_STATE_ALL, 0x7F);
VALUE(NVMM_VCPU_EXIT_NONE, 0);
VALUE(NVMM_VCPU_EXIT_STOPPED, 0xFFFFFFFFFFFFFFFEULL);
VALUE(NVMM_VCPU_EXIT_INVALID, 0xFFFFFFFFFFFFFFFFULL);
VALUE(NVMM_VCPU_EXIT_MEMORY, 1);
VALUE(NVMM_VCPU_EXIT_IO, 2);
VALUE(NVMM_VCPU_EXIT_SHUTDOWN, 0x1000);
VALUE(NVMM_VCPU_EXIT_TPR_CHANGED, 0x1004);
VALUE(NVMM_VCPU_EXIT_RDMSR, 0x2000);
VALUE(NVMM_VCPU_EXIT_CPUID, 0x2004);
VALUE(NVMM_VCPU_EVENT_EXCP, 0);
VALUE(NVMM_VCPU_EVENT_INTR, 1);
VALUE(NVMM_VCPU_CONF_CALLBACKS, 0);
VALUE(NVMM_VCPU_CONF_CPUID, 200);
VALUE(NVMM_VCPU_CONF_TPR, 201);
VALUE(NVMM_VCPU_CONF_MD(NVMM_VCPU_CONF_TPR), 1);
VALUE(NVMM_MACH_CONF_MD_BEGIN, 200);
VALUE(NVMM_CTL_MACH_INFO, 0);
VALUE(NVMM_COMM_OFF(3, 5), 0x305000);
VALUE(NVMM_COMM_MACHID(0x305000), 3);
VALUE(NVMM_COMM_CPUID(0x305000), 5);

int
main(void)
{
	struct nvmm_x64_state_seg seg = { 0 };
	uint16_t raw;

	/* The hidden attributes use NetBSD's bit positions. */
	seg.attrib.type = 0xB;
	seg.attrib.s = 1;
	seg.attrib.dpl = 3;
	seg.attrib.p = 1;
	seg.attrib.l = 1;
	seg.attrib.g = 1;
	__builtin_memcpy(&raw, &seg.attrib, sizeof(raw));
	if (raw != (0xB | 1 << 4 | 3 << 5 | 1 << 7 | 1 << 9 | 1 << 11)) {
		printf("attrib bits 0x%x\n", raw);
		return 1;
	}
	printf("layout ok\n");
	return 0;
}
