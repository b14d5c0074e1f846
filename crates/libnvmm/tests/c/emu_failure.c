/*
 * Instructions KVM does not emulate on MMIO (x87 loads and stores, SSE
 * moves) still complete through nvmm_assist_mem: the library decodes and
 * emulates them, reaching the device through the memory callback and the
 * FPU through the VCPU state. One neither emulates (AESENC, where KVM
 * emulates real-mode code) makes nvmm_assist_mem fail with ENODEV and
 * leaves RIP on it.
 */

#include <nvmm.h>

#include <err.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE_SIZE	4096
#define MMIO_GPA	0x10000

static uint8_t device[64];
static unsigned int reads, writes;

static void
mem_callback(struct nvmm_mem *mem)
{
	if (mem->gpa < MMIO_GPA || mem->gpa + mem->size > MMIO_GPA + sizeof(device))
		errx(EXIT_FAILURE, "access at 0x%llx", (unsigned long long)mem->gpa);
	if (mem->write) {
		memcpy(device + (mem->gpa - MMIO_GPA), mem->data, mem->size);
		writes++;
	} else {
		memcpy(mem->data, device + (mem->gpa - MMIO_GPA), mem->size);
		reads++;
	}
}

int
main(void)
{
	/*
	 * Real mode, DS = 0x1000 (the device at DS:0):
	 *   flds [0] ; fstpl [8] ; movups xmm1,[16] ; movups [32],xmm1 ; hlt
	 */
	static const uint8_t code[] = {
		0xd9, 0x06, 0x00, 0x00,
		0xdd, 0x1e, 0x08, 0x00,
		0x0f, 0x10, 0x0e, 0x10, 0x00,
		0x0f, 0x11, 0x0e, 0x20, 0x00,
		0xf4,
	};
	struct nvmm_assist_callbacks cbs = { .io = NULL, .mem = mem_callback };
	struct nvmm_machine mach;
	struct nvmm_vcpu vcpu;
	float in = 1.5f;
	double out;
	uint8_t *ram;
	int failures = 0, emulated = 0;

	if (nvmm_init() == -1 || nvmm_machine_create(&mach) == -1 ||
	    nvmm_vcpu_create(&mach, 0, &vcpu) == -1 ||
	    nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CALLBACKS, &cbs) == -1)
		err(EXIT_FAILURE, "setup");
	ram = mmap(NULL, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE, -1, 0);
	if (ram == MAP_FAILED)
		err(EXIT_FAILURE, "mmap");
	memcpy(ram, code, sizeof(code));
	if (nvmm_hva_map(&mach, (uintptr_t)ram, PAGE_SIZE) == -1 ||
	    nvmm_gpa_map(&mach, (uintptr_t)ram, 0, PAGE_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC) == -1)
		err(EXIT_FAILURE, "mapping");

	memcpy(device, &in, sizeof(in));
	for (int i = 0; i < 16; i++)
		device[16 + i] = (uint8_t)(0xC0 + i);

	if (nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_ALL) == -1)
		err(EXIT_FAILURE, "getstate");
	vcpu.state->segs[NVMM_X64_SEG_CS].base = 0;
	vcpu.state->segs[NVMM_X64_SEG_CS].selector = 0;
	vcpu.state->segs[NVMM_X64_SEG_DS].base = MMIO_GPA;
	vcpu.state->segs[NVMM_X64_SEG_DS].selector = MMIO_GPA >> 4;
	vcpu.state->gprs[NVMM_X64_GPR_RIP] = 0;
	vcpu.state->crs[NVMM_X64_CR_CR0] &= ~0x4ULL;	/* EM off */
	vcpu.state->crs[NVMM_X64_CR_CR4] |= 0x600;	/* OSFXSR OSXMMEXCPT */
	vcpu.state->fpu.fx_cw = 0x37F;
	if (nvmm_vcpu_setstate(&mach, &vcpu, NVMM_X64_STATE_ALL) == -1)
		err(EXIT_FAILURE, "setstate");

	for (;;) {
		if (nvmm_vcpu_run(&mach, &vcpu) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_run");
		if (vcpu.exit->reason == NVMM_VCPU_EXIT_NONE)
			continue;
		if (vcpu.exit->reason == NVMM_VCPU_EXIT_HALTED)
			break;
		if (vcpu.exit->reason != NVMM_VCPU_EXIT_MEMORY)
			errx(EXIT_FAILURE, "exit 0x%llx", (unsigned long long)vcpu.exit->reason);
		if (vcpu.exit->u.mem.inst_len > 0)
			emulated++;
		if (nvmm_assist_mem(&mach, &vcpu) == -1)
			err(EXIT_FAILURE, "nvmm_assist_mem");
	}

	memcpy(&out, device + 8, sizeof(out));
	if (out != 1.5) {
		printf("FAIL: fstpl wrote %g\n", out);
		failures++;
	}
	if (memcmp(device + 32, device + 16, 16) != 0) {
		printf("FAIL: movups round trip\n");
		failures++;
	}
	if (nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_FPU) == -1)
		err(EXIT_FAILURE, "getstate");
	if (memcmp(vcpu.state->fpu.fx_xmm[1].xmm_bytes, device + 16, 16) != 0) {
		printf("FAIL: XMM1 in the state\n");
		failures++;
	}
	if (reads < 2 || writes < 2) {
		printf("FAIL: %u reads, %u writes\n", reads, writes);
		failures++;
	}
	/* aesenc xmm0, xmm1 ; hlt, at 0x40. */
	static const uint8_t aes[] = { 0x66, 0x0f, 0x38, 0xdc, 0xc1, 0xf4 };
	memcpy(ram + 0x40, aes, sizeof(aes));
	if (nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_GPRS) == -1)
		err(EXIT_FAILURE, "getstate");
	vcpu.state->gprs[NVMM_X64_GPR_RIP] = 0x40;
	if (nvmm_vcpu_setstate(&mach, &vcpu, NVMM_X64_STATE_GPRS) == -1)
		err(EXIT_FAILURE, "setstate");
	do {
		if (nvmm_vcpu_run(&mach, &vcpu) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_run");
	} while (vcpu.exit->reason == NVMM_VCPU_EXIT_NONE);
	if (vcpu.exit->reason == NVMM_VCPU_EXIT_MEMORY) {
		errno = 0;
		if (nvmm_assist_mem(&mach, &vcpu) != -1 || errno != ENODEV) {
			printf("FAIL: assist_mem on AESENC: errno %d, want ENODEV\n", errno);
			failures++;
		}
		if (nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_GPRS) == -1)
			err(EXIT_FAILURE, "getstate");
		if (vcpu.state->gprs[NVMM_X64_GPR_RIP] != 0x40) {
			printf("FAIL: RIP moved to 0x%llx\n", (unsigned long long)vcpu.state->gprs[NVMM_X64_GPR_RIP]);
			failures++;
		}
	} else if (vcpu.exit->reason != NVMM_VCPU_EXIT_HALTED) {
		/* HALTED: a host that runs real-mode code natively. */
		printf("FAIL: AESENC gave exit 0x%llx\n", (unsigned long long)vcpu.exit->reason);
		failures++;
	}
	printf("%d emulated here, %d failures\n", emulated, failures);
	return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
