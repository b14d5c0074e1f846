/*
 * The exit loop every NVMM program runs, against a bare KVM_RUN loop on the
 * same guest in the same process:
 *
 *   io         nvmm_vcpu_run + nvmm_assist_io on `out 0x10,al ; jmp $-2`
 *   mem-write  nvmm_vcpu_run + nvmm_assist_mem on `mov [0x8000],al ; jmp`
 *   mem-read   nvmm_vcpu_run + nvmm_assist_mem on `mov al,[0x8000] ; jmp`
 *
 * (0x8000 is not guest RAM: every iteration is one MMIO exit.) Each round
 * times a batch of three loops back to back, in a rotating order: the bare
 * loop, the bare loop with KVM copying the registers out at every exit
 * (what libnvmm asks for to fill NetBSD's exit structure) and libnvmm's.
 * Reported are the medians of the rounds' libnvmm / bare (ratio), sync /
 * bare (kernel_sync_ratio, the kernel's share) and libnvmm / sync
 * (library_share, the library's own). One JSON object per line on stdout.
 *
 *   exits [NAME...] [--iterations N] [--rounds N]
 */

#include <nvmm.h>

#include <linux/kvm.h>

#include <err.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RAM_SIZE	0x8000	/* RAM at 0; 0x8000 and above is MMIO */
#define CODE		0x1000

#include "floor_vm.h"

struct guest {
	const char *name;
	const char *what;
	uint8_t code[8];
	size_t len;
	uint64_t reason;	/* the libnvmm exit each iteration */
	uint32_t kvm_reason;	/* the bare loop's */
};

static const struct guest guests[] = {
	{ "io", "nvmm_vcpu_run + nvmm_assist_io of a port OUT",
	  { 0xe6, 0x10, 0xeb, 0xfc }, 4, NVMM_VCPU_EXIT_IO, KVM_EXIT_IO },
	{ "mem-write", "nvmm_vcpu_run + nvmm_assist_mem of an MMIO byte store",
	  { 0xa2, 0x00, 0x80, 0xeb, 0xfb }, 5, NVMM_VCPU_EXIT_MEMORY, KVM_EXIT_MMIO },
	{ "mem-read", "nvmm_vcpu_run + nvmm_assist_mem of an MMIO byte load",
	  { 0xa0, 0x00, 0x80, 0xeb, 0xfb }, 5, NVMM_VCPU_EXIT_MEMORY, KVM_EXIT_MMIO },
};

static double
now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

/* ---- the floor: KVM alone --------------------------------------------- */

struct raw {
	int vcpu;
	struct kvm_run *run;
	uint32_t reason;
	uint64_t sync;		/* register sets KVM copies out at every exit */
};

static void
raw_init(struct raw *r, int kvm, const struct guest *g)
{
	floor_vm(kvm, g->code, g->len, &r->vcpu, &r->run);
	r->reason = g->kvm_reason;
	r->sync = 0;
}

static void
raw_batch(struct raw *r, long n)
{
	r->run->kvm_valid_regs = r->sync;
	for (long i = 0; i < n; i++) {
		if (ioctl(r->vcpu, KVM_RUN, 0) < 0)
			err(EXIT_FAILURE, "KVM_RUN");
		if (r->run->exit_reason != r->reason)
			errx(EXIT_FAILURE, "bare loop: exit %u", r->run->exit_reason);
	}
}

/* ---- libnvmm ------------------------------------------------------------ */

struct ours {
	struct nvmm_machine mach;
	struct nvmm_vcpu vcpu;
	uint64_t reason;
};

static void
io_callback(struct nvmm_io *io)
{
	if (io->in)
		memset(io->data, 0, io->size);
}

static void
mem_callback(struct nvmm_mem *mem)
{
	if (!mem->write)
		memset(mem->data, 0, mem->size);
}

static void
ours_init(struct ours *o, const struct guest *g)
{
	struct nvmm_assist_callbacks cbs = { io_callback, mem_callback };
	struct nvmm_x64_state *s;
	uint8_t *ram;

	if (nvmm_machine_create(&o->mach) == -1)
		err(EXIT_FAILURE, "nvmm_machine_create");
	if (nvmm_vcpu_create(&o->mach, 0, &o->vcpu) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_create");
	if (nvmm_vcpu_configure(&o->mach, &o->vcpu, NVMM_VCPU_CONF_CALLBACKS, &cbs) == -1)
		err(EXIT_FAILURE, "NVMM_VCPU_CONF_CALLBACKS");
	ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE, -1, 0);
	if (ram == MAP_FAILED)
		err(EXIT_FAILURE, "mmap");
	if (nvmm_hva_map(&o->mach, (uintptr_t)ram, RAM_SIZE) == -1)
		err(EXIT_FAILURE, "nvmm_hva_map");
	if (nvmm_gpa_map(&o->mach, (uintptr_t)ram, 0, RAM_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC) == -1)
		err(EXIT_FAILURE, "nvmm_gpa_map");
	memcpy(ram + CODE, g->code, g->len);
	if (nvmm_vcpu_getstate(&o->mach, &o->vcpu, NVMM_X64_STATE_GPRS | NVMM_X64_STATE_SEGS) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_getstate");
	s = o->vcpu.state;
	s->segs[NVMM_X64_SEG_CS].base = 0;
	s->segs[NVMM_X64_SEG_CS].selector = 0;
	s->gprs[NVMM_X64_GPR_RIP] = CODE;
	if (nvmm_vcpu_setstate(&o->mach, &o->vcpu, NVMM_X64_STATE_GPRS | NVMM_X64_STATE_SEGS) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_setstate");
	o->reason = g->reason;
}

static void
ours_batch(struct ours *o, long n)
{
	for (long i = 0; i < n; i++) {
		if (nvmm_vcpu_run(&o->mach, &o->vcpu) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_run");
		switch (o->vcpu.exit->reason) {
		case NVMM_VCPU_EXIT_IO:
			if (nvmm_assist_io(&o->mach, &o->vcpu) == -1)
				err(EXIT_FAILURE, "nvmm_assist_io");
			break;
		case NVMM_VCPU_EXIT_MEMORY:
			if (nvmm_assist_mem(&o->mach, &o->vcpu) == -1)
				err(EXIT_FAILURE, "nvmm_assist_mem");
			break;
		case NVMM_VCPU_EXIT_NONE:
			i--;
			break;
		default:
			errx(EXIT_FAILURE, "libnvmm: exit %#llx", (unsigned long long)o->vcpu.exit->reason);
		}
	}
}

/* ---- measurement ---------------------------------------------------------- */

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double
median(double *v, int n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return v[n / 2];
}

/* One batch of side `side` (0: the bare loop, 1: the bare loop with KVM's
 * register copies, 2: libnvmm), in nanoseconds per iteration. */
static double
batch(int side, struct raw *raw, struct raw *synced, struct ours *ours, long iterations)
{
	double t0 = now();

	if (side == 0)
		raw_batch(raw, iterations);
	else if (side == 1)
		raw_batch(synced, iterations);
	else
		ours_batch(ours, iterations);
	return (now() - t0) / iterations * 1e9;
}

static void
bench(int kvm, const struct guest *g, long iterations, int rounds)
{
	double *floor_ns = calloc(rounds, sizeof(double));
	double *nvmm_ns = calloc(rounds, sizeof(double));
	double *ratio = calloc(rounds, sizeof(double));
	double *sync_ratio = calloc(rounds, sizeof(double));
	double *library = calloc(rounds, sizeof(double));
	struct raw raw, synced;
	struct ours ours;

	if (floor_ns == NULL || nvmm_ns == NULL || ratio == NULL || sync_ratio == NULL ||
	    library == NULL)
		err(EXIT_FAILURE, "calloc");
	raw_init(&raw, kvm, g);
	raw_init(&synced, kvm, g);
	/* The kernel's share: the same bare loop with KVM copying the
	 * registers, special registers and events out at every exit, as it
	 * does for libnvmm's exits. */
	synced.sync = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;
	ours_init(&ours, g);
	/* Warm up all three. */
	for (int side = 0; side < 3; side++)
		batch(side, &raw, &synced, &ours, iterations / 10 + 1);
	/* Each round times a batch of each, in a rotating order. */
	for (int r = 0; r < rounds; r++) {
		double ns[3];

		for (int k = 0; k < 3; k++) {
			int side = (r + k) % 3;

			ns[side] = batch(side, &raw, &synced, &ours, iterations);
		}
		floor_ns[r] = ns[0];
		nvmm_ns[r] = ns[2];
		ratio[r] = ns[2] / ns[0];
		sync_ratio[r] = ns[1] / ns[0];
		library[r] = ns[2] / ns[1];
	}
	printf("{\"bench\":\"c-%s\",\"what\":\"%s, against a bare KVM_RUN loop\","
	    "\"iterations\":%ld,\"rounds\":%d,\"floor_ns\":%.1f,\"nvmm_ns\":%.1f,"
	    "\"ratio\":%.4f,\"target\":1.05,\"kernel_sync_ratio\":%.4f,"
	    "\"library_share\":%.4f}\n",
	    g->name, g->what, iterations, rounds, median(floor_ns, rounds),
	    median(nvmm_ns, rounds), median(ratio, rounds), median(sync_ratio, rounds),
	    median(library, rounds));
	fflush(stdout);
	free(floor_ns);
	free(nvmm_ns);
	free(ratio);
	free(sync_ratio);
	free(library);
}

int
main(int argc, char *argv[])
{
	long iterations = 2000;
	int rounds = 41;
	const char *names[8];
	int nnames = 0;
	int kvm;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc)
			iterations = atol(argv[++i]);
		else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
			rounds = atoi(argv[++i]);
		else if (nnames < 8)
			names[nnames++] = argv[i];
	}
	if (iterations < 1 || rounds < 1)
		errx(2, "usage: %s [NAME...] [--iterations N] [--rounds N]", argv[0]);
	if (nvmm_init() == -1)
		err(EXIT_FAILURE, "nvmm_init");
	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		err(EXIT_FAILURE, "/dev/kvm");
	for (size_t i = 0; i < sizeof(guests) / sizeof(guests[0]); i++) {
		int want = nnames == 0;

		for (int j = 0; j < nnames; j++)
			want |= strcmp(names[j], guests[i].name) == 0;
		if (want)
			bench(kvm, &guests[i], iterations, rounds);
	}
	return 0;
}
