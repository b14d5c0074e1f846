#include "guest.h"

#include <err.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

const char *const mode_names[3] = { "64bit", "32bit", "16bit" };

void *
guest_page(struct nvmm_machine *mach, gpaddr_t gpa, int prot)
{
	void *p;

	p = mmap(NULL, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE,
	    -1, 0);
	if (p == MAP_FAILED)
		err(EXIT_FAILURE, "mmap");
	if (nvmm_hva_map(mach, (uintptr_t)p, PAGE_SIZE) == -1)
		err(EXIT_FAILURE, "nvmm_hva_map");
	if (nvmm_gpa_map(mach, (uintptr_t)p, gpa, PAGE_SIZE, prot) == -1)
		err(EXIT_FAILURE, "nvmm_gpa_map");
	memset(p, 0, PAGE_SIZE);
	return p;
}

uint8_t *
map_code(struct nvmm_machine *mach, enum mode mode)
{
	uint64_t *l4, *l3, *l2, *l1;
	uint8_t *code;

	code = guest_page(mach, CODE_GPA, PROT_READ | PROT_EXEC);
	if (mode != MODE_64)
		return code;
	l4 = guest_page(mach, PT_GPA, PROT_READ | PROT_WRITE);
	l3 = guest_page(mach, PT_GPA + 0x1000, PROT_READ | PROT_WRITE);
	l2 = guest_page(mach, PT_GPA + 0x2000, PROT_READ | PROT_WRITE);
	l1 = guest_page(mach, PT_GPA + 0x3000, PROT_READ | PROT_WRITE);
	l4[0] = (PT_GPA + 0x1000) | 0x3;
	l3[0] = (PT_GPA + 0x2000) | 0x3;
	l2[0] = (PT_GPA + 0x3000) | 0x3;
	l1[DATA_GPA / PAGE_SIZE] = DATA_GPA | 0x3;
	l1[CODE_GPA / PAGE_SIZE] = CODE_GPA | 0x3;
	return code;
}

static void
set_seg(struct nvmm_x64_state_seg *seg, int type, int s, int l, int def,
    int g, uint32_t limit)
{
	seg->selector = 0;
	seg->attrib.type = type;
	seg->attrib.s = s;
	seg->attrib.dpl = 0;
	seg->attrib.p = 1;
	seg->attrib.avl = 0;
	seg->attrib.l = l;
	seg->attrib.def = def;
	seg->attrib.g = g;
	seg->limit = limit;
	seg->base = 0;
}

void
reset_vcpu(struct nvmm_machine *mach, struct nvmm_vcpu *vcpu, enum mode mode,
    uint64_t fs_base)
{
	struct nvmm_x64_state *state = vcpu->state;
	int i;

	if (nvmm_vcpu_getstate(mach, vcpu, NVMM_X64_STATE_ALL) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_getstate");

	if (mode == MODE_16) {
		/* From the RESET state: real mode, code at 0:0x2000. */
		state->segs[NVMM_X64_SEG_CS].base = 0;
		state->segs[NVMM_X64_SEG_CS].selector = 0;
		state->segs[NVMM_X64_SEG_FS].base = fs_base;
		state->segs[NVMM_X64_SEG_FS].selector = (uint16_t)(fs_base >> 4);
		state->gprs[NVMM_X64_GPR_RIP] = CODE_GPA;
		state->gprs[NVMM_X64_GPR_RFLAGS] = 0x2;
		if (nvmm_vcpu_setstate(mach, vcpu, NVMM_X64_STATE_ALL) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_setstate");
		return;
	}

	memset(state, 0, sizeof(*state));
	state->gprs[NVMM_X64_GPR_RFLAGS] = 0x2;
	state->gprs[NVMM_X64_GPR_RIP] = CODE_GPA;
	if (mode == MODE_64) {
		set_seg(&state->segs[NVMM_X64_SEG_CS], 0xB, 1, 1, 0, 1, 0xFFFFF);
		for (i = 0; i < 6; i++)
			if (i != NVMM_X64_SEG_CS)
				set_seg(&state->segs[i], 0x3, 1, 0, 0, 1, 0xFFFFF);
		/* PG PE NE ET WP, PAE, LME LMA, the tables. */
		state->crs[NVMM_X64_CR_CR0] = 0x80010031;
		state->crs[NVMM_X64_CR_CR4] = 0x20;
		state->crs[NVMM_X64_CR_CR3] = PT_GPA;
		state->msrs[NVMM_X64_MSR_EFER] = 0x500;
	} else {
		set_seg(&state->segs[NVMM_X64_SEG_CS], 0xB, 1, 0, 1, 1, 0xFFFFF);
		for (i = 0; i < 6; i++)
			if (i != NVMM_X64_SEG_CS)
				set_seg(&state->segs[i], 0x3, 1, 0, 1, 1, 0xFFFFF);
		state->crs[NVMM_X64_CR_CR0] = 0x00000031;	/* PE NE ET */
	}
	state->segs[NVMM_X64_SEG_FS].base = fs_base;
	set_seg(&state->segs[NVMM_X64_SEG_GDT], 0, 0, 0, 0, 0, 0xFFFF);
	set_seg(&state->segs[NVMM_X64_SEG_IDT], 0, 0, 0, 0, 0, 0xFFFF);
	set_seg(&state->segs[NVMM_X64_SEG_LDT], 0x2, 0, 0, 0, 0, 0xFFFF);
	set_seg(&state->segs[NVMM_X64_SEG_TR], 0xB, 0, 0, 0, 0, 0xFFFF);
	state->msrs[NVMM_X64_MSR_PAT] = 0x0007040600070406ULL;
	state->fpu.fx_cw = 0x37F;
	state->fpu.fx_mxcsr = 0x1F80;

	if (nvmm_vcpu_setstate(mach, vcpu, NVMM_X64_STATE_ALL) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_setstate");
}

int
run_test_code(struct nvmm_machine *mach, struct nvmm_vcpu *vcpu)
{
	struct nvmm_vcpu_exit *exit = vcpu->exit;

	for (;;) {
		if (nvmm_vcpu_run(mach, vcpu) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_run");
		switch (exit->reason) {
		case NVMM_VCPU_EXIT_NONE:
			break;
		case NVMM_VCPU_EXIT_RDMSR:
			if (exit->u.rdmsr.msr != 0xFFFFFFFF) {
				printf("RDMSR of MSR 0x%x\n", exit->u.rdmsr.msr);
				return -1;
			}
			return 0;
		case NVMM_VCPU_EXIT_MEMORY:
			if (nvmm_assist_mem(mach, vcpu) == -1)
				err(EXIT_FAILURE, "nvmm_assist_mem");
			break;
		case NVMM_VCPU_EXIT_IO:
			if (nvmm_assist_io(mach, vcpu) == -1)
				err(EXIT_FAILURE, "nvmm_assist_io");
			break;
		default:
			printf("unexpected exit 0x%llx\n",
			    (unsigned long long)exit->reason);
			if (nvmm_vcpu_dump(mach, vcpu) == -1)
				err(EXIT_FAILURE, "nvmm_vcpu_dump");
			return -1;
		}
	}
}

int
run_every_mode(int (*test_mode)(enum mode))
{
	int failures = 0;

	if (nvmm_init() == -1)
		err(EXIT_FAILURE, "nvmm_init");
	failures += test_mode(MODE_64);
	failures += test_mode(MODE_32);
	failures += test_mode(MODE_16);
	if (failures)
		printf("%d failures\n", failures);
	return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
