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

#include "guest.h"

#include <err.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define MMIO_GPA	DATA_GPA
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
	instbuf = map_code(&mach, mode);

	for (i = 0; i < __arraycount(tests); i++) {
		const struct test *t = &tests[i];
		uint8_t *begin = t->code[mode][0], *end = t->code[mode][1];

		reset_vcpu(&mach, &vcpu, mode, 0);
		memset(mmiobuf, 0, sizeof(mmiobuf));
		pattern(mmiobuf);
		memcpy(instbuf, begin, (size_t)(end - begin));
		mmio_accesses = 0;

		if (run_test_code(&mach, &vcpu) == -1) {
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
	return run_every_mode(test_mode);
}
