/*
 * The NVMM announcement's first program, in the current API: a guest that
 * adds two numbers. The VCPU starts in NVMM's RESET state (real mode,
 * CS.base 0xFFFF0000), so code placed at GPA 0xFFFF0000 runs with RIP 0.
 *
 *   calc_vm 3 5   prints "Result: 8"
 */

#include <nvmm.h>

#include <err.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE_SIZE 4096

int
main(int argc, char *argv[])
{
	/* add %eax,%ebx ; hlt */
	static const uint8_t code[] = { 0x01, 0xc3, 0xf4 };
	struct nvmm_machine mach;
	struct nvmm_vcpu vcpu;
	uintptr_t hva;
	long a, b;

	if (argc != 3)
		errx(EXIT_FAILURE, "usage: %s a b", argv[0]);
	a = strtol(argv[1], NULL, 0);
	b = strtol(argv[2], NULL, 0);

	if (nvmm_init() == -1)
		err(EXIT_FAILURE, "nvmm_init");
	if (nvmm_machine_create(&mach) == -1)
		err(EXIT_FAILURE, "nvmm_machine_create");
	if (nvmm_vcpu_create(&mach, 0, &vcpu) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_create");

	hva = (uintptr_t)mmap(NULL, PAGE_SIZE, PROT_READ | PROT_WRITE,
	    MAP_ANON | MAP_PRIVATE, -1, 0);
	if ((void *)hva == MAP_FAILED)
		err(EXIT_FAILURE, "mmap");
	if (nvmm_hva_map(&mach, hva, PAGE_SIZE) == -1)
		err(EXIT_FAILURE, "nvmm_hva_map");
	if (nvmm_gpa_map(&mach, hva, 0xFFFF0000, PAGE_SIZE,
	    PROT_READ | PROT_EXEC) == -1)
		err(EXIT_FAILURE, "nvmm_gpa_map");
	memcpy((void *)hva, code, sizeof(code));

	if (nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_GPRS) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_getstate");
	vcpu.state->gprs[NVMM_X64_GPR_RIP] = 0;
	vcpu.state->gprs[NVMM_X64_GPR_RAX] = (uint64_t)a;
	vcpu.state->gprs[NVMM_X64_GPR_RBX] = (uint64_t)b;
	if (nvmm_vcpu_setstate(&mach, &vcpu, NVMM_X64_STATE_GPRS) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_setstate");

	for (;;) {
		if (nvmm_vcpu_run(&mach, &vcpu) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_run");
		switch (vcpu.exit->reason) {
		case NVMM_VCPU_EXIT_NONE:
			continue;
		case NVMM_VCPU_EXIT_HALTED:
			if (nvmm_vcpu_getstate(&mach, &vcpu,
			    NVMM_X64_STATE_GPRS) == -1)
				err(EXIT_FAILURE, "nvmm_vcpu_getstate");
			printf("Result: %lld\n",
			    (long long)(uint32_t)vcpu.state->gprs[NVMM_X64_GPR_RBX]);
			return EXIT_SUCCESS;
		default:
			errx(EXIT_FAILURE, "unexpected exit 0x%llx",
			    (unsigned long long)vcpu.exit->reason);
		}
	}
}
