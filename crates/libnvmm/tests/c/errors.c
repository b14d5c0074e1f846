/*
 * Bad input gets -1 and the errno NVMM's documentation gives, never a
 * crash: calls before nvmm_init, null pointers, unknown machines and
 * VCPUs, double creation, bad flags and operations, misaligned and
 * overlapping mappings, assists after the wrong exit or without
 * callbacks, invalid events.
 */

#include <nvmm.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE_SIZE 4096

static int failures, checks;

#define EXPECT(call, e) do {						\
	int r_;								\
	errno = 0;							\
	r_ = (call);							\
	checks++;							\
	if (r_ != -1 || errno != (e)) {					\
		printf("FAIL line %d: %s returned %d errno %d (%s), "	\
		    "want -1 errno %d (%s)\n", __LINE__, #call, r_,	\
		    errno, strerror(errno), (e), strerror(e));		\
		failures++;						\
	}								\
} while (0)

#define OK(call) do {							\
	checks++;							\
	if ((call) == -1) {						\
		printf("FAIL line %d: %s: %s\n", __LINE__, #call,	\
		    strerror(errno));					\
		failures++;						\
	}								\
} while (0)

#define TRUE(cond) do {							\
	checks++;							\
	if (!(cond)) {							\
		printf("FAIL line %d: %s\n", __LINE__, #cond);		\
		failures++;						\
	}								\
} while (0)

static void
io_callback(struct nvmm_io *io)
{
	(void)io;
}

static uint64_t
run_once(struct nvmm_machine *mach, struct nvmm_vcpu *vcpu)
{
	do {
		if (nvmm_vcpu_run(mach, vcpu) == -1)
			return ~0ULL;
	} while (vcpu->exit->reason == NVMM_VCPU_EXIT_NONE);
	return vcpu->exit->reason;
}

int
main(void)
{
	struct nvmm_capability cap;
	struct nvmm_machine mach, bogus;
	struct nvmm_vcpu vcpu, other;
	struct nvmm_ctl_mach_info info;
	struct nvmm_vcpu_conf_cpuid cpuid;
	struct nvmm_vcpu_conf_tpr tpr;
	struct nvmm_assist_callbacks cbs = { .io = NULL, .mem = NULL };
	static struct { int stop; char pad[64]; } fake_stop;
	uintptr_t hva, h;
	gpaddr_t gpa;
	nvmm_prot_t prot;
	uint8_t *mem;

	/* Before nvmm_init: NetBSD's calls fail on the unopened device. */
	EXPECT(nvmm_capability(&cap), EBADF);
	EXPECT(nvmm_machine_create(&mach), EBADF);
	memset(&info, 0, sizeof(info));
	EXPECT(nvmm_ctl(NVMM_CTL_MACH_INFO, &info, sizeof(info)), EBADF);

	OK(nvmm_init());
	OK(nvmm_init());	/* idempotent */

	/* Capability. */
	EXPECT(nvmm_capability(NULL), EFAULT);
	OK(nvmm_capability(&cap));
	TRUE(cap.version == NVMM_KERN_VERSION);
	TRUE(cap.state_size == sizeof(struct nvmm_x64_state));
	TRUE(cap.max_machines >= 128 && cap.max_vcpus >= 1);
	TRUE(cap.arch.conf_cpuid_maxops == 32);
	TRUE(cap.arch.vcpu_conf_support & NVMM_CAP_ARCH_VCPU_CONF_CPUID);
	TRUE(cap.arch.xcr0_mask & 0x3);

	/* Machines. */
	EXPECT(nvmm_machine_create(NULL), EFAULT);
	OK(nvmm_machine_create(&mach));
	bogus = mach;
	bogus.machid = 0x7fffffff;
	EXPECT(nvmm_machine_destroy(&bogus), ENOENT);
	EXPECT(nvmm_vcpu_create(&bogus, 0, &vcpu), ENOENT);
	bogus = mach;
	bogus.pages = NULL;	/* not the struct nvmm_machine_create filled */
	EXPECT(nvmm_hva_map(&bogus, 0x10000, PAGE_SIZE), ENOENT);
	EXPECT(nvmm_machine_destroy(NULL), EFAULT);
	EXPECT(nvmm_machine_configure(&mach, 0, NULL), EINVAL);
	EXPECT(nvmm_machine_configure(&mach, NVMM_MACH_CONF_MD_BEGIN, &cap), EINVAL);
	EXPECT(nvmm_machine_configure(NULL, 0, NULL), EFAULT);

	/* VCPUs. */
	EXPECT(nvmm_vcpu_create(NULL, 0, &vcpu), EFAULT);
	EXPECT(nvmm_vcpu_create(&mach, 0, NULL), EFAULT);
	EXPECT(nvmm_vcpu_create(&mach, cap.max_vcpus, &vcpu), EINVAL);
	OK(nvmm_vcpu_create(&mach, 0, &vcpu));
	TRUE(vcpu.cpuid == 0 && vcpu.state && vcpu.event && vcpu.exit && vcpu.stop);
	TRUE(vcpu.cbs.io == NULL && vcpu.cbs.mem == NULL);
	EXPECT(nvmm_vcpu_create(&mach, 0, &other), EBUSY);
	other = vcpu;
	other.cpuid = 5;
	EXPECT(nvmm_vcpu_run(&mach, &other), ENOENT);
	EXPECT(nvmm_vcpu_getstate(&mach, &other, NVMM_X64_STATE_GPRS), ENOENT);
	EXPECT(nvmm_vcpu_destroy(&mach, &other), ENOENT);
	EXPECT(nvmm_vcpu_run(&mach, NULL), EFAULT);
	EXPECT(nvmm_vcpu_getstate(&mach, NULL, NVMM_X64_STATE_GPRS), EFAULT);
	EXPECT(nvmm_vcpu_setstate(&mach, NULL, NVMM_X64_STATE_GPRS), EFAULT);
	EXPECT(nvmm_vcpu_inject(&mach, NULL), EFAULT);
	EXPECT(nvmm_vcpu_dump(&mach, NULL), EFAULT);
	EXPECT(nvmm_vcpu_getstate(&mach, &vcpu, 0x80), EINVAL);
	EXPECT(nvmm_vcpu_setstate(&mach, &vcpu, 1ULL << 40), EINVAL);

	/* Configuration. */
	EXPECT(nvmm_vcpu_configure(&mach, &vcpu, 5, &cbs), EINVAL);
	EXPECT(nvmm_vcpu_configure(&mach, &vcpu, 300, &cbs), EINVAL);
	EXPECT(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CALLBACKS, NULL), EFAULT);
	EXPECT(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CPUID, NULL), EFAULT);
	memset(&cpuid, 0, sizeof(cpuid));
	cpuid.mask = 1;
	cpuid.exit = 1;
	cpuid.leaf = 1;
	EXPECT(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CPUID, &cpuid), EINVAL);
	cpuid.exit = 0;
	cpuid.u.mask.set.ecx = 1;
	cpuid.u.mask.del.ecx = 1;
	EXPECT(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CPUID, &cpuid), EINVAL);
	cpuid.u.mask.del.ecx = 0;
	OK(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CPUID, &cpuid));
	cpuid.mask = 0;
	cpuid.exit = 1;
	EXPECT(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CPUID, &cpuid), ENOTSUP);
	memset(&tpr, 0, sizeof(tpr));
	tpr.exit_changed = 1;
	OK(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_TPR, &tpr));
	tpr.exit_changed = 0;
	OK(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_TPR, &tpr));

	/* Host mappings. */
	mem = mmap(NULL, 4 * PAGE_SIZE, PROT_READ | PROT_WRITE,
	    MAP_ANON | MAP_PRIVATE, -1, 0);
	if (mem == MAP_FAILED)
		return EXIT_FAILURE;
	hva = (uintptr_t)mem;
	EXPECT(nvmm_hva_map(&mach, 0, PAGE_SIZE), EINVAL);
	EXPECT(nvmm_hva_map(&mach, hva + 1, PAGE_SIZE), EINVAL);
	EXPECT(nvmm_hva_map(&mach, hva, 0), EINVAL);
	EXPECT(nvmm_hva_map(&mach, hva, PAGE_SIZE + 1), EINVAL);
	OK(nvmm_hva_map(&mach, hva, 2 * PAGE_SIZE));
	EXPECT(nvmm_hva_map(&mach, hva + PAGE_SIZE, 2 * PAGE_SIZE), EEXIST);
	OK(nvmm_hva_map(&mach, hva, PAGE_SIZE));	/* inside: accepted */
	EXPECT(nvmm_hva_unmap(&mach, hva + 3 * PAGE_SIZE, PAGE_SIZE), ENOENT);

	/* Guest mappings. */
	EXPECT(nvmm_gpa_map(&mach, hva, 0x1001, PAGE_SIZE, PROT_READ), EINVAL);
	EXPECT(nvmm_gpa_map(&mach, hva, 0x1000, PAGE_SIZE, 0x10), EINVAL);
	EXPECT(nvmm_gpa_map(&mach, hva + 2 * PAGE_SIZE, 0x1000, PAGE_SIZE, PROT_READ), EINVAL);
	EXPECT(nvmm_gpa_map(&mach, hva, cap.max_ram, PAGE_SIZE, PROT_READ), EINVAL);
	EXPECT(nvmm_gpa_map(&mach, hva, 0, 3 * PAGE_SIZE, PROT_READ), EINVAL);
	OK(nvmm_gpa_map(&mach, hva, 0, 2 * PAGE_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC));
	EXPECT(nvmm_gpa_map(&mach, hva, PAGE_SIZE, PAGE_SIZE, PROT_READ), EINVAL);
	EXPECT(nvmm_gpa_unmap(&mach, hva, 0, PAGE_SIZE), ENOENT);
	EXPECT(nvmm_gpa_to_hva(&mach, 0x100000, &h, &prot), ENOENT);
	EXPECT(nvmm_gpa_to_hva(&mach, 0, NULL, &prot), EFAULT);
	OK(nvmm_gpa_to_hva(&mach, 0x1234, &h, &prot));
	TRUE(h == hva + 0x1234 && prot == (NVMM_PROT_READ | NVMM_PROT_WRITE | NVMM_PROT_EXEC));
	EXPECT(nvmm_gva_to_gpa(&mach, &vcpu, 0x1234, NULL, &prot), EFAULT);
	OK(nvmm_gva_to_gpa(&mach, &vcpu, 0x1234, &gpa, &prot));
	TRUE(gpa == 0x1234 && prot == NVMM_PROT_ALL);	/* no paging at RESET */

	/* Assists after the wrong exit, and without callbacks. */
	EXPECT(nvmm_assist_io(&mach, &vcpu), EINVAL);
	EXPECT(nvmm_assist_mem(&mach, &vcpu), EINVAL);
	/* Real mode at 0:0: out %al,$0x80 ; hlt */
	mem[0] = 0xe6;
	mem[1] = 0x80;
	mem[2] = 0xf4;
	OK(nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_SEGS | NVMM_X64_STATE_GPRS));
	vcpu.state->segs[NVMM_X64_SEG_CS].base = 0;
	vcpu.state->segs[NVMM_X64_SEG_CS].selector = 0;
	vcpu.state->gprs[NVMM_X64_GPR_RIP] = 0;
	OK(nvmm_vcpu_setstate(&mach, &vcpu, NVMM_X64_STATE_SEGS | NVMM_X64_STATE_GPRS));
	TRUE(run_once(&mach, &vcpu) == NVMM_VCPU_EXIT_IO);
	TRUE(vcpu.exit->u.io.port == 0x80 && !vcpu.exit->u.io.in &&
	    vcpu.exit->u.io.operand_size == 1 && !vcpu.exit->u.io.str &&
	    vcpu.exit->u.io.npc == 2);
	EXPECT(nvmm_assist_mem(&mach, &vcpu), EINVAL);
	EXPECT(nvmm_assist_io(&mach, &vcpu), EINVAL);	/* no callback */
	cbs.io = io_callback;
	OK(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CALLBACKS, &cbs));
	TRUE(vcpu.cbs.io == io_callback);
	OK(nvmm_assist_io(&mach, &vcpu));
	TRUE(run_once(&mach, &vcpu) == NVMM_VCPU_EXIT_HALTED);
	EXPECT(nvmm_assist_io(&mach, &vcpu), EINVAL);

	/* Invalid events: injection succeeds, the next run fails. */
	vcpu.event->type = 7;
	vcpu.event->vector = 32;
	OK(nvmm_vcpu_inject(&mach, &vcpu));
	EXPECT(nvmm_vcpu_run(&mach, &vcpu), EINVAL);
	vcpu.event->type = NVMM_VCPU_EVENT_EXCP;
	vcpu.event->vector = 3;		/* #BP cannot be injected */
	OK(nvmm_vcpu_inject(&mach, &vcpu));
	EXPECT(nvmm_vcpu_run(&mach, &vcpu), EINVAL);
	vcpu.event->vector = 2;		/* an NMI is an INTR */
	OK(nvmm_vcpu_inject(&mach, &vcpu));
	EXPECT(nvmm_vcpu_run(&mach, &vcpu), EINVAL);
	vcpu.event->vector = 32;
	OK(nvmm_vcpu_inject(&mach, &vcpu));
	EXPECT(nvmm_vcpu_run(&mach, &vcpu), EINVAL);

	/* Stop. */
	EXPECT(nvmm_vcpu_stop(NULL), EFAULT);
	other = vcpu;
	other.stop = &fake_stop.stop;	/* not a VCPU's */
	EXPECT(nvmm_vcpu_stop(&other), EINVAL);

	/* Control. */
	memset(&info, 0, sizeof(info));
	info.machid = mach.machid;
	EXPECT(nvmm_ctl(1, &info, sizeof(info)), EINVAL);
	EXPECT(nvmm_ctl(NVMM_CTL_MACH_INFO, &info, sizeof(info) - 1), EINVAL);
	EXPECT(nvmm_ctl(NVMM_CTL_MACH_INFO, NULL, sizeof(info)), EFAULT);
	OK(nvmm_ctl(NVMM_CTL_MACH_INFO, &info, sizeof(info)));
	TRUE(info.nvcpus == 1 && info.pid == getpid() && info.nram == 2 * PAGE_SIZE);
	TRUE(info.time > 0);
	info.machid = 0x7fff;
	EXPECT(nvmm_ctl(NVMM_CTL_MACH_INFO, &info, sizeof(info)), EINVAL);

	/* Unmapping, and what is left after destruction. */
	OK(nvmm_gpa_unmap(&mach, hva, 0, 2 * PAGE_SIZE));
	EXPECT(nvmm_gpa_unmap(&mach, hva, 0, 2 * PAGE_SIZE), ENOENT);
	OK(nvmm_hva_unmap(&mach, hva, 2 * PAGE_SIZE));
	EXPECT(nvmm_hva_unmap(&mach, hva, 2 * PAGE_SIZE), ENOENT);
	OK(nvmm_vcpu_destroy(&mach, &vcpu));
	EXPECT(nvmm_vcpu_destroy(&mach, &vcpu), ENOENT);
	EXPECT(nvmm_vcpu_run(&mach, &vcpu), ENOENT);
	OK(nvmm_machine_destroy(&mach));
	EXPECT(nvmm_machine_destroy(&mach), ENOENT);
	EXPECT(nvmm_vcpu_create(&mach, 0, &vcpu), ENOENT);
	EXPECT(nvmm_hva_map(&mach, hva, PAGE_SIZE), ENOENT);

	printf("%d checks, %d failures\n", checks, failures);
	return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
