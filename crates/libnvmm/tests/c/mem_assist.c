/*
 * The memory assist, in the shape of NetBSD's libnvmm regression programs:
 * guest code touches an MMIO page (guest physical 0x1000, not mapped),
 * every MEMORY exit goes through nvmm_assist_mem and a callback backed by
 * a buffer, and each test stops with RDMSR 0xFFFFFFFF, after which the
 * VCPU is reset through getstate/memset/setstate for the next one.
 *
 * Each test runs in 64-bit (paging on), 32-bit protected and real mode,
 * and what it leaves in the MMIO page (values, string pointers, flags) is
 * compared with what the same instructions produce on this CPU
 * (mem_assist_asm.S has both versions).
 */

#include <nvmm.h>

#include <err.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE_SIZE	4096
#define MMIO_GPA	0x1000
#define CODE_GPA	0x2000
#define PT_GPA		0x3000	/* L4, L3, L2, L1 at 0x3000..0x6fff */
#define RESULT_SIZE	64

static uint8_t mmiobuf[PAGE_SIZE];
static uint8_t *instbuf;
static unsigned int mmio_accesses;

static void
mem_callback(struct nvmm_mem *mem)
{
	if (mem->gpa < MMIO_GPA || mem->gpa + mem->size > MMIO_GPA + PAGE_SIZE)
		errx(EXIT_FAILURE, "access outside the MMIO page: gpa 0x%llx size %zu",
		    (unsigned long long)mem->gpa, mem->size);
	if (mem->mach == NULL || mem->vcpu == NULL || mem->data == NULL)
		errx(EXIT_FAILURE, "incomplete nvmm_mem descriptor");
	if (mem->write)
		memcpy(mmiobuf + (mem->gpa - MMIO_GPA), mem->data, mem->size);
	else
		memcpy(mem->data, mmiobuf + (mem->gpa - MMIO_GPA), mem->size);
	mmio_accesses++;
}

static struct nvmm_assist_callbacks callbacks = {
	.io = NULL,
	.mem = mem_callback,
};

/* Runs until the RDMSR that ends a test; 0 on success. */
static int
run_machine(struct nvmm_machine *mach, struct nvmm_vcpu *vcpu)
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
		default:
			printf("unexpected exit 0x%llx\n",
			    (unsigned long long)exit->reason);
			if (nvmm_vcpu_dump(mach, vcpu) == -1)
				err(EXIT_FAILURE, "nvmm_vcpu_dump");
			return -1;
		}
	}
}

/* -------------------------------------------------------------------------- */

#define DECLARE(name)							\
	extern uint8_t guest64_##name##_begin[], guest64_##name##_end[];	\
	extern uint8_t guest32_##name##_begin[], guest32_##name##_end[];	\
	extern uint8_t guest16_##name##_begin[], guest16_##name##_end[];	\
	void native_##name(void *);
#define TESTS(X) X(MOV) X(ALU) X(CMP) X(XCHG) X(MOVZX) X(STOS) X(LODS) X(MOVS) X(CMPS)
TESTS(DECLARE)

struct test {
	const char *name;
	uint8_t *code[3][2];	/* 64, 32, 16-bit: begin, end */
	void (*native)(void *);
};

#define ENTRY(name) { #name, {						\
	{ guest64_##name##_begin, guest64_##name##_end },		\
	{ guest32_##name##_begin, guest32_##name##_end },		\
	{ guest16_##name##_begin, guest16_##name##_end } },		\
	native_##name },
static const struct test tests[] = { TESTS(ENTRY) };

enum mode { MODE_64, MODE_32, MODE_16 };
static const char *const mode_names[] = { "64bit", "32bit", "16bit" };

static void
pattern(uint8_t *buf)
{
	size_t i;

	for (i = 0; i < RESULT_SIZE; i++)
		buf[i] = (uint8_t)(i * 37 + 11);
}

static void
dump_bytes(const char *what, const uint8_t *b)
{
	size_t i;

	printf("  %-6s", what);
	for (i = 0; i < RESULT_SIZE; i++)
		printf("%s%02x", i % 16 == 0 && i ? "\n        " : " ", b[i]);
	printf("\n");
}

/* -------------------------------------------------------------------------- */

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

static void
reset_machine(struct nvmm_machine *mach, struct nvmm_vcpu *vcpu, enum mode mode)
{
	struct nvmm_x64_state *state = vcpu->state;
	int i;

	if (nvmm_vcpu_getstate(mach, vcpu, NVMM_X64_STATE_ALL) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_getstate");

	if (mode == MODE_16) {
		/* From the RESET state: real mode, code at 0:0x2000. */
		state->segs[NVMM_X64_SEG_CS].base = 0;
		state->segs[NVMM_X64_SEG_CS].selector = 0;
		state->gprs[NVMM_X64_GPR_RIP] = CODE_GPA;
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

static void *
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

static void
map_pages(struct nvmm_machine *mach, enum mode mode)
{
	uint64_t *l4, *l3, *l2, *l1;

	instbuf = guest_page(mach, CODE_GPA, PROT_READ | PROT_EXEC);
	if (mode != MODE_64)
		return;
	l4 = guest_page(mach, PT_GPA, PROT_READ | PROT_WRITE);
	l3 = guest_page(mach, PT_GPA + 0x1000, PROT_READ | PROT_WRITE);
	l2 = guest_page(mach, PT_GPA + 0x2000, PROT_READ | PROT_WRITE);
	l1 = guest_page(mach, PT_GPA + 0x3000, PROT_READ | PROT_WRITE);
	l4[0] = (PT_GPA + 0x1000) | 0x3;
	l3[0] = (PT_GPA + 0x2000) | 0x3;
	l2[0] = (PT_GPA + 0x3000) | 0x3;
	l1[MMIO_GPA / PAGE_SIZE] = MMIO_GPA | 0x3;
	l1[CODE_GPA / PAGE_SIZE] = CODE_GPA | 0x3;
}

/* Runs every test in one mode; returns the number of failures. */
static int
test_mode(enum mode mode)
{
	uint8_t want[RESULT_SIZE];
	struct nvmm_machine mach;
	struct nvmm_vcpu vcpu;
	int failures = 0;
	size_t i;

	if (nvmm_machine_create(&mach) == -1)
		err(EXIT_FAILURE, "nvmm_machine_create");
	if (nvmm_vcpu_create(&mach, 0, &vcpu) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_create");
	if (nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CALLBACKS,
	    &callbacks) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_configure");
	map_pages(&mach, mode);

	for (i = 0; i < __arraycount(tests); i++) {
		const struct test *t = &tests[i];
		uint8_t *begin = t->code[mode][0], *end = t->code[mode][1];

		reset_machine(&mach, &vcpu, mode);
		memset(mmiobuf, 0, sizeof(mmiobuf));
		pattern(mmiobuf);
		memcpy(instbuf, begin, (size_t)(end - begin));
		mmio_accesses = 0;

		if (run_machine(&mach, &vcpu) == -1) {
			printf("Test '%s %s' failed to run\n", mode_names[mode], t->name);
			failures++;
			continue;
		}

		pattern(want);
		t->native(want);
		if (memcmp(mmiobuf, want, RESULT_SIZE) != 0 || mmio_accesses == 0) {
			printf("Test '%s %s' failed (%u MMIO accesses)\n",
			    mode_names[mode], t->name, mmio_accesses);
			dump_bytes("guest", mmiobuf);
			dump_bytes("cpu", want);
			failures++;
		} else {
			printf("Test '%s %s' passed\n", mode_names[mode], t->name);
		}
	}

	if (nvmm_vcpu_destroy(&mach, &vcpu) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_destroy");
	if (nvmm_machine_destroy(&mach) == -1)
		err(EXIT_FAILURE, "nvmm_machine_destroy");
	return failures;
}

int
main(void)
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
