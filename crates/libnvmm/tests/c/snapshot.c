/*
 * Snapshots from C: a real-mode guest sums a loop into memory and AX,
 * with an OUT per round. Snapshotted mid-way, it must finish with the
 * uninterrupted run's result after nvmm_machine_reset, after a fork, and
 * after a save and load; a damaged file and a machine of another shape are
 * EINVAL.
 */

#include <nvmm.h>

#include <err.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE_SIZE	4096
#define RAM		(64 * 1024)
#define CODE		0x1000
#define ARRAY		0x4000
#define ROUNDS		200

/*
 * mov cx, ROUNDS ; mov di, ARRAY ; xor ax, ax
 * l: add ax, cx ; imul ax, ax, 3 ; mov [di], ax ; add di, 2 ; out 0x10, al
 *    loop l ; out 0x11, al
 */
static const uint8_t code[] = {
	0xb9, ROUNDS, 0x00,		/* mov cx, ROUNDS */
	0xbf, 0x00, 0x40,		/* mov di, 0x4000 */
	0x31, 0xc0,			/* xor ax, ax */
	0x01, 0xc8,			/* l: add ax, cx */
	0x6b, 0xc0, 0x03,		/* imul ax, ax, 3 */
	0x89, 0x05,			/* mov [di], ax */
	0x83, 0xc7, 0x02,		/* add di, 2 */
	0xe6, 0x10,			/* out 0x10, al */
	0xe2, 0xf2,			/* loop l */
	0xe6, 0x11,			/* out 0x11, al */
};

struct result {
	uint64_t ax;
	uint8_t array[2 * ROUNDS];
};

static int failures;

/* The OUTs go nowhere. */
static void
io_cb(struct nvmm_io *io)
{
	(void)io;
}

static void
callbacks(struct nvmm_machine *mach, struct nvmm_vcpu *vcpu)
{
	struct nvmm_assist_callbacks cbs = { .io = io_cb, .mem = NULL };

	if (nvmm_vcpu_configure(mach, vcpu, NVMM_VCPU_CONF_CALLBACKS, &cbs) == -1)
		err(EXIT_FAILURE, "NVMM_VCPU_CONF_CALLBACKS");
}

static void
setup(struct nvmm_machine *mach, struct nvmm_vcpu *vcpu, uint8_t **ram)
{
	struct nvmm_x64_state *s;

	if (nvmm_machine_create(mach) == -1)
		err(EXIT_FAILURE, "nvmm_machine_create");
	if (nvmm_vcpu_create(mach, 0, vcpu) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_create");
	callbacks(mach, vcpu);
	*ram = mmap(NULL, RAM, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE, -1, 0);
	if (*ram == MAP_FAILED)
		err(EXIT_FAILURE, "mmap");
	memcpy(*ram + CODE, code, sizeof(code));
	if (nvmm_hva_map(mach, (uintptr_t)*ram, RAM) == -1 ||
	    nvmm_gpa_map(mach, (uintptr_t)*ram, 0, RAM, PROT_READ | PROT_WRITE | PROT_EXEC) == -1)
		err(EXIT_FAILURE, "map");
	if (nvmm_vcpu_getstate(mach, vcpu, NVMM_X64_STATE_ALL) == -1)
		err(EXIT_FAILURE, "getstate");
	s = vcpu->state;
	s->segs[NVMM_X64_SEG_CS].selector = 0;
	s->segs[NVMM_X64_SEG_CS].base = 0;
	s->segs[NVMM_X64_SEG_DS].selector = 0;
	s->segs[NVMM_X64_SEG_DS].base = 0;
	s->gprs[NVMM_X64_GPR_RIP] = CODE;
	if (nvmm_vcpu_setstate(mach, vcpu, NVMM_X64_STATE_ALL) == -1)
		err(EXIT_FAILURE, "setstate");
}

/* Runs `n` rounds (OUT 0x10 exits). */
static void
rounds(struct nvmm_machine *mach, struct nvmm_vcpu *vcpu, int n)
{
	while (n > 0) {
		if (nvmm_vcpu_run(mach, vcpu) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_run");
		if (vcpu->exit->reason == NVMM_VCPU_EXIT_IO) {
			if (nvmm_assist_io(mach, vcpu) == -1)
				err(EXIT_FAILURE, "nvmm_assist_io");
			n--;
		} else if (vcpu->exit->reason != NVMM_VCPU_EXIT_NONE) {
			errx(EXIT_FAILURE, "exit 0x%llx", (unsigned long long)vcpu->exit->reason);
		}
	}
}

/* Runs to the OUT 0x11 and reads the result. */
static struct result
finish(struct nvmm_machine *mach, struct nvmm_vcpu *vcpu)
{
	struct result r;

	for (;;) {
		if (nvmm_vcpu_run(mach, vcpu) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_run");
		if (vcpu->exit->reason == NVMM_VCPU_EXIT_IO) {
			int last = vcpu->exit->u.io.port == 0x11;
			if (nvmm_assist_io(mach, vcpu) == -1)
				err(EXIT_FAILURE, "nvmm_assist_io");
			if (last)
				break;
		} else if (vcpu->exit->reason != NVMM_VCPU_EXIT_NONE) {
			errx(EXIT_FAILURE, "exit 0x%llx", (unsigned long long)vcpu->exit->reason);
		}
	}
	if (nvmm_vcpu_getstate(mach, vcpu, NVMM_X64_STATE_GPRS) == -1)
		err(EXIT_FAILURE, "getstate");
	r.ax = vcpu->state->gprs[NVMM_X64_GPR_RAX] & 0xffff;
	for (size_t i = 0; i < sizeof(r.array); i++) {
		uintptr_t hva;
		nvmm_prot_t prot;
		if (nvmm_gpa_to_hva(mach, ARRAY + i, &hva, &prot) == -1)
			err(EXIT_FAILURE, "nvmm_gpa_to_hva");
		r.array[i] = *(uint8_t *)hva;
	}
	return r;
}

static void
expect(const char *what, struct result got, struct result want)
{
	if (got.ax != want.ax || memcmp(got.array, want.array, sizeof(got.array)) != 0) {
		printf("FAIL: %s: ax 0x%llx, want 0x%llx\n", what,
		    (unsigned long long)got.ax, (unsigned long long)want.ax);
		failures++;
	}
}

int
main(int argc, char **argv)
{
	struct nvmm_machine mach, fork, loaded_fork, other;
	struct nvmm_vcpu vcpu, fvcpu, lvcpu, ovcpu;
	struct nvmm_snapshot *snap, *loaded, *bad;
	struct result want;
	uint8_t *ram, *oram;
	const char *file = argc > 1 ? argv[1] : "snapshot-test.nvmmsnap";
	FILE *f;

	if (nvmm_init() == -1)
		err(EXIT_FAILURE, "nvmm_init");
	setup(&mach, &vcpu, &ram);
	rounds(&mach, &vcpu, 77);
	if (nvmm_machine_snapshot(&mach, &snap) == -1)
		err(EXIT_FAILURE, "nvmm_machine_snapshot");
	want = finish(&mach, &vcpu);

	/* In place, twice. */
	for (int i = 0; i < 2; i++) {
		if (nvmm_machine_reset(&mach, snap) == -1)
			err(EXIT_FAILURE, "nvmm_machine_reset");
		expect("reset", finish(&mach, &vcpu), want);
	}

	/* A fork: its VCPU comes restored from nvmm_vcpu_create. */
	if (nvmm_machine_fork(snap, &fork) == -1)
		err(EXIT_FAILURE, "nvmm_machine_fork");
	if (nvmm_vcpu_create(&fork, 0, &fvcpu) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_create on the fork");
	callbacks(&fork, &fvcpu);
	expect("fork", finish(&fork, &fvcpu), want);

	/* Saved and loaded; forked from a VM made ahead of time. */
	if (nvmm_keep_vms_ready((size_t)-1) != -1 || errno != EINVAL) {
		printf("FAIL: an absurd number of VMs made ahead (errno %d)\n", errno);
		failures++;
	}
	if (nvmm_keep_vms_ready(2) == -1)
		err(EXIT_FAILURE, "nvmm_keep_vms_ready");
	if (nvmm_snapshot_save(snap, file) == -1)
		err(EXIT_FAILURE, "nvmm_snapshot_save");
	if (nvmm_snapshot_load(file, &loaded) == -1)
		err(EXIT_FAILURE, "nvmm_snapshot_load");
	if (nvmm_machine_fork(loaded, &loaded_fork) == -1 ||
	    nvmm_vcpu_create(&loaded_fork, 0, &lvcpu) == -1)
		err(EXIT_FAILURE, "fork of the loaded snapshot");
	callbacks(&loaded_fork, &lvcpu);
	expect("loaded", finish(&loaded_fork, &lvcpu), want);
	if (nvmm_keep_vms_ready(0) == -1)
		err(EXIT_FAILURE, "nvmm_keep_vms_ready(0)");

	/* A damaged file. */
	if ((f = fopen(file, "w")) == NULL)
		err(EXIT_FAILURE, "fopen");
	fputs("NVMMSNAP, but not really", f);
	fclose(f);
	if (nvmm_snapshot_load(file, &bad) != -1 || errno != EINVAL) {
		printf("FAIL: a damaged file loaded (errno %d)\n", errno);
		failures++;
	}
	remove(file);

	/* A machine of another shape (no memory) cannot be reset to it. */
	if (nvmm_machine_create(&other) == -1 || nvmm_vcpu_create(&other, 0, &ovcpu) == -1)
		err(EXIT_FAILURE, "other machine");
	if (nvmm_machine_reset(&other, snap) != -1 || errno != EINVAL) {
		printf("FAIL: reset of another machine (errno %d)\n", errno);
		failures++;
	}
	if (nvmm_machine_snapshot(&other, NULL) != -1 || errno != EFAULT) {
		printf("FAIL: NULL snapshot pointer (errno %d)\n", errno);
		failures++;
	}
	(void)oram;

	nvmm_snapshot_free(loaded);
	nvmm_snapshot_free(snap);
	nvmm_snapshot_free(NULL);
	nvmm_machine_destroy(&loaded_fork);
	nvmm_machine_destroy(&fork);
	nvmm_machine_destroy(&other);
	nvmm_machine_destroy(&mach);
	printf("%d failures\n", failures);
	return failures != 0;
}
