/*
 * nvmm_gva_to_gpa with 4-level paging on: the tables are written here
 * (guest.c's identity pages for DATA and CODE, plus a read-only alias
 * of DATA at 0x10000 and a no-execute alias at 0x11000); the translation
 * and the rights must be what those entries say (NetBSD: READ always,
 * WRITE with R/W, EXEC without XD when EFER.NXE is on; XD without NXE is a
 * reserved bit), and an unmapped address is EFAULT.
 */

#include "guest.h"

#include <err.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static int failures;

static void
expect(struct nvmm_machine *mach, struct nvmm_vcpu *vcpu, gvaddr_t gva,
    gpaddr_t want_gpa, nvmm_prot_t want_prot)
{
	gpaddr_t gpa = 0;
	nvmm_prot_t prot = 0;

	if (nvmm_gva_to_gpa(mach, vcpu, gva, &gpa, &prot) == -1) {
		printf("FAIL: 0x%llx: %s\n", (unsigned long long)gva, strerror(errno));
		failures++;
	} else if (gpa != want_gpa || prot != want_prot) {
		printf("FAIL: 0x%llx -> 0x%llx prot %lu, want 0x%llx prot %lu\n",
		    (unsigned long long)gva, (unsigned long long)gpa, (unsigned long)prot,
		    (unsigned long long)want_gpa, (unsigned long)want_prot);
		failures++;
	}
}

int
main(void)
{
	struct nvmm_machine mach;
	struct nvmm_vcpu vcpu;
	uintptr_t hva;
	nvmm_prot_t prot;
	gpaddr_t gpa;
	uint64_t *l1;

	if (nvmm_init() == -1 || nvmm_machine_create(&mach) == -1 ||
	    nvmm_vcpu_create(&mach, 0, &vcpu) == -1)
		err(EXIT_FAILURE, "setup");
	guest_page(&mach, DATA_GPA, PROT_READ | PROT_WRITE);
	map_code(&mach, MODE_64);
	reset_vcpu(&mach, &vcpu, MODE_64, 0);
	if (nvmm_gpa_to_hva(&mach, PT_GPA + 0x3000, &hva, &prot) == -1)
		err(EXIT_FAILURE, "the L1 table");
	l1 = (uint64_t *)hva;
	l1[0x10] = DATA_GPA | 0x1;				/* present, read-only */
	l1[0x11] = DATA_GPA | 0x3 | (1ULL << 63);		/* writable, XD */

	expect(&mach, &vcpu, 0x1234, 0x1234, NVMM_PROT_READ | NVMM_PROT_WRITE | NVMM_PROT_EXEC);
	expect(&mach, &vcpu, CODE_GPA + 0xfff, CODE_GPA + 0xfff, NVMM_PROT_READ | NVMM_PROT_WRITE | NVMM_PROT_EXEC);
	expect(&mach, &vcpu, 0x10123, DATA_GPA + 0x123, NVMM_PROT_READ | NVMM_PROT_EXEC);
	/*
	 * Without EFER.NXE (reset_vcpu leaves it clear) bit 63 is reserved
	 * (SDM vol. 3, 4.5.4): no translation. With it, the page is not
	 * executable.
	 */
	if (nvmm_gva_to_gpa(&mach, &vcpu, 0x11008, &gpa, &prot) != -1 || errno != EFAULT) {
		printf("FAIL: XD without NXE gave 0x%llx\n", (unsigned long long)gpa);
		failures++;
	}
	if (nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_MSRS) == -1)
		err(EXIT_FAILURE, "getstate");
	vcpu.state->msrs[NVMM_X64_MSR_EFER] |= 1 << 11;
	if (nvmm_vcpu_setstate(&mach, &vcpu, NVMM_X64_STATE_MSRS) == -1)
		err(EXIT_FAILURE, "setstate");
	expect(&mach, &vcpu, 0x11008, DATA_GPA + 0x8, NVMM_PROT_READ | NVMM_PROT_WRITE);
	if (nvmm_gva_to_gpa(&mach, &vcpu, 0x20000, &gpa, &prot) != -1 || errno != EFAULT) {
		printf("FAIL: unmapped 0x20000 gave 0x%llx\n", (unsigned long long)gpa);
		failures++;
	}
	printf("%d failures\n", failures);
	return failures != 0;
}
