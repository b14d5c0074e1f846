/*
 * Guest kernel boot code runs through nvmm_vcpu_run as on NetBSD, where
 * it executes natively: x87 control, MXCSR, SSE register moves, XGETBV,
 * XSAVE and CLAC/STAC at CPL 0 in 64-bit and 32-bit mode give the program
 * no exit, even on hosts where KVM's emulator gives up on them (the
 * library completes them), and leave the registers and memory the CPU
 * would. NetBSD regression style: "Test '...' passed" or the failures.
 */

#include "guest.h"

#include <err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static int test_failures;

#define TRUE(cond) do {							\
	if (!(cond)) {							\
		printf("FAIL %s:%d: %s\n", __func__, __LINE__, #cond);	\
		test_failures++;					\
	}								\
} while (0)

/*
 * rbx/ebx = DATA_GPA (guest RAM), no REX, so the bytes mean the same in
 * 64-bit and 32-bit mode:
 *   fninit ; mov word [ebx], 0x27f ; fldcw [ebx] ; fnstcw [ebx+2]
 *   xor ecx, ecx ; xgetbv ; mov esi, eax
 *   pxor xmm1, xmm1 ; movd xmm1, esi ; stmxcsr [ebx+4]
 *   xor edx, edx ; mov eax, 3 ; xsave [ebx+0x40]
 *   stac ; clac ; out 0x10, al
 */
static const uint8_t boot_code[] = {
	0xdb, 0xe3,
	0x66, 0xc7, 0x03, 0x7f, 0x02,
	0xd9, 0x2b,
	0xd9, 0x7b, 0x02,
	0x31, 0xc9,
	0x0f, 0x01, 0xd0,
	0x89, 0xc6,
	0x66, 0x0f, 0xef, 0xc9,
	0x66, 0x0f, 0x6e, 0xce,
	0x0f, 0xae, 0x5b, 0x04,
	0x31, 0xd2,
	0xb8, 0x03, 0x00, 0x00, 0x00,
	0x0f, 0xae, 0x63, 0x40,
	0x0f, 0x01, 0xcb,
	0x0f, 0x01, 0xca,
	0xe6, 0x10,
};

static int
test_mode(enum mode mode)
{
	struct nvmm_machine mach;
	struct nvmm_vcpu vcpu;
	struct nvmm_x64_state *state;
	struct nvmm_vcpu_exit *exit;
	uint8_t *code, *data;
	uint64_t xstate_bv;
	uint32_t xmm1, mxcsr;
	uint16_t fcw, area_fcw;
	int others = 0;

	test_failures = 0;
	if (nvmm_machine_create(&mach) == -1 || nvmm_vcpu_create(&mach, 0, &vcpu) == -1)
		err(EXIT_FAILURE, "machine");
	code = map_code(&mach, mode);
	data = guest_page(&mach, DATA_GPA, PROT_READ | PROT_WRITE);
	memcpy(code, boot_code, sizeof(boot_code));
	reset_vcpu(&mach, &vcpu, mode, 0);
	state = vcpu.state;
	exit = vcpu.exit;
	if (nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_ALL) == -1)
		err(EXIT_FAILURE, "getstate");
	/* OSFXSR, OSXMMEXCPT, OSXSAVE; XCR0 = x87 | SSE. */
	state->crs[NVMM_X64_CR_CR4] |= 0x40600;
	state->crs[NVMM_X64_CR_XCR0] = 3;
	state->gprs[NVMM_X64_GPR_RBX] = DATA_GPA;
	if (nvmm_vcpu_setstate(&mach, &vcpu, NVMM_X64_STATE_ALL) == -1)
		err(EXIT_FAILURE, "setstate");

	for (;;) {
		if (nvmm_vcpu_run(&mach, &vcpu) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_run");
		if (exit->reason == NVMM_VCPU_EXIT_NONE)
			continue;
		if (exit->reason == NVMM_VCPU_EXIT_IO && exit->u.io.port == 0x10)
			break;
		printf("exit 0x%llx\n", (unsigned long long)exit->reason);
		if (++others > 8)
			break;
	}
	TRUE(others == 0);
	if (nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_ALL) == -1)
		err(EXIT_FAILURE, "getstate");
	memcpy(&fcw, data + 2, 2);
	memcpy(&mxcsr, data + 4, 4);
	memcpy(&xmm1, state->fpu.fx_xmm[1].xmm_bytes, 4);
	memcpy(&area_fcw, data + 0x40, 2);
	memcpy(&xstate_bv, data + 0x40 + 512, 8);
	TRUE(fcw == 0x27f);
	TRUE(state->fpu.fx_cw == 0x27f);
	TRUE(state->gprs[NVMM_X64_GPR_RSI] == 3);
	TRUE(xmm1 == 3);
	TRUE(mxcsr == state->fpu.fx_mxcsr);
	TRUE(area_fcw == 0x27f);
	TRUE((xstate_bv & 1) == 1);
	TRUE((xstate_bv & ~3ULL) == 0);
	TRUE((exit->exitstate.rflags & (1 << 18)) == 0);
	/* On the OUT, which is not answered. */
	TRUE(state->gprs[NVMM_X64_GPR_RIP] == CODE_GPA + sizeof(boot_code) - 2);

	nvmm_machine_destroy(&mach);
	if (test_failures == 0)
		printf("Test 'boot code, %s' passed\n", mode_names[mode]);
	return test_failures;
}

int
main(void)
{
	int failures = 0;

	if (nvmm_init() == -1)
		err(EXIT_FAILURE, "nvmm_init");
	failures += test_mode(MODE_64);
	failures += test_mode(MODE_32);
	printf("%d failures\n", failures);
	return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
