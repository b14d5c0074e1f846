/*
 * Loads libnvmm with dlopen(3) (argv[1]) instead of linking it: the
 * library's initial-exec thread-local data then comes from the static TLS
 * block's reserve. Creates a machine and a VCPU, reads the RESET state
 * twice (each call looks the VCPU up through that data) and prints RIP
 * and CS, NVMM's RESET values.
 */

#include <dlfcn.h>
#include <err.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <nvmm.h>

static void *
sym(void *lib, const char *name)
{
	void *p = dlsym(lib, name);

	if (p == NULL)
		errx(EXIT_FAILURE, "dlsym %s: %s", name, dlerror());
	return p;
}

int
main(int argc, char *argv[])
{
	int (*init)(void);
	int (*machine_create)(struct nvmm_machine *);
	int (*machine_destroy)(struct nvmm_machine *);
	int (*vcpu_create)(struct nvmm_machine *, nvmm_cpuid_t, struct nvmm_vcpu *);
	int (*vcpu_destroy)(struct nvmm_machine *, struct nvmm_vcpu *);
	int (*getstate)(struct nvmm_machine *, struct nvmm_vcpu *, uint64_t);
	struct nvmm_machine mach;
	struct nvmm_vcpu vcpu;
	void *lib;

	if (argc != 2)
		errx(2, "usage: %s LIBNVMM", argv[0]);
	if ((lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL)) == NULL)
		errx(EXIT_FAILURE, "dlopen: %s", dlerror());
	init = sym(lib, "nvmm_init");
	machine_create = sym(lib, "nvmm_machine_create");
	machine_destroy = sym(lib, "nvmm_machine_destroy");
	vcpu_create = sym(lib, "nvmm_vcpu_create");
	vcpu_destroy = sym(lib, "nvmm_vcpu_destroy");
	getstate = sym(lib, "nvmm_vcpu_getstate");
	if (init() == -1)
		err(EXIT_FAILURE, "nvmm_init");
	if (machine_create(&mach) == -1)
		err(EXIT_FAILURE, "nvmm_machine_create");
	if (vcpu_create(&mach, 0, &vcpu) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_create");
	if (getstate(&mach, &vcpu, NVMM_X64_STATE_GPRS) == -1 ||
	    getstate(&mach, &vcpu, NVMM_X64_STATE_SEGS) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_getstate");
	printf("rip=%#" PRIx64 " cs=%#x\n", vcpu.state->gprs[NVMM_X64_GPR_RIP],
	    (unsigned)vcpu.state->segs[NVMM_X64_SEG_CS].selector);
	if (vcpu_destroy(&mach, &vcpu) == -1 || machine_destroy(&mach) == -1)
		err(EXIT_FAILURE, "destroy");
	return 0;
}
