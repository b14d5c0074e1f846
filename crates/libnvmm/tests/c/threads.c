/*
 * Other threads, as NetBSD allows them, against a VCPU spinning in the
 * guest (a counter in guest RAM proves it runs):
 *
 * - nvmm_vcpu_inject from another thread returns at once (it only marks
 *   the comm page) and the event lands at the next run;
 * - nvmm_vcpu_destroy and nvmm_machine_destroy stop the VCPU, wait for its
 *   run to end, then destroy it: the runner gets STOPPED, later calls fail
 *   with ENOENT, never a crash; 1000 rounds, no descriptor leaked;
 * - destroying frees the VCPU (its descriptors) at once, while a thread
 *   that ran it last lives on; that thread's next call fails with ENOENT;
 * - a VCPU thread that blocks every signal still stops;
 * - stops landing while a run settles an MSR exit answered QEMU's way
 *   (setstate with RIP = npc) are never lost;
 * - a guest that computes without exits hands control back: each
 *   nvmm_vcpu_run returns NVMM_VCPU_EXIT_NONE after a time slice, as
 *   NetBSD's returns when the scheduler wants the thread's CPU back, in a
 *   thread that blocks every signal too;
 * - children made by fork while a VCPU of the parent computes (the
 *   library's time-slice thread looking at it) create and run VCPUs of
 *   their own.
 *
 * No sleeps as synchronisation: threads wait for the guest's counter or
 * for each other, with bounded waits.
 */

#include <nvmm.h>

#include <dirent.h>
#include <err.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#define PAGE_SIZE	4096
#define CODE		0x1000
#define COUNTER		0x500
#define ROUNDS		1000

static int failures;

#define TRUE(cond) do {							\
	if (!(cond)) {							\
		printf("FAIL %s:%d: %s\n", __func__, __LINE__, #cond);	\
		failures++;						\
	}								\
} while (0)

struct guest {
	struct nvmm_machine mach;
	struct nvmm_vcpu vcpu;
	volatile uint8_t *ram;
};

static double
now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

/*
 * A real-mode guest counting in the word at COUNTER forever:
 * inc word [0x500] ; jmp $-4. A handler for vector 0x40 at 0x800:
 * mov byte [0x600],0x40 ; hlt.
 */
static void
guest_create(struct guest *g)
{
	static const uint8_t code[] = { 0xff, 0x06, 0x00, 0x05, 0xeb, 0xfa };
	static const uint8_t handler[] = { 0xc6, 0x06, 0x00, 0x06, 0x40, 0xf4 };
	struct nvmm_x64_state *s;
	uint8_t *ram;

	if (nvmm_machine_create(&g->mach) == -1)
		err(EXIT_FAILURE, "nvmm_machine_create");
	if (nvmm_vcpu_create(&g->mach, 0, &g->vcpu) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_create");
	ram = mmap(NULL, 4 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE, -1, 0);
	if (ram == MAP_FAILED)
		err(EXIT_FAILURE, "mmap");
	if (nvmm_hva_map(&g->mach, (uintptr_t)ram, 4 * PAGE_SIZE) == -1)
		err(EXIT_FAILURE, "nvmm_hva_map");
	if (nvmm_gpa_map(&g->mach, (uintptr_t)ram, 0, 4 * PAGE_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC) == -1)
		err(EXIT_FAILURE, "nvmm_gpa_map");
	memcpy(ram + CODE, code, sizeof(code));
	memcpy(ram + 0x800, handler, sizeof(handler));
	/* IVT[0x40] = 0000:0800 */
	ram[0x40 * 4 + 0] = 0x00;
	ram[0x40 * 4 + 1] = 0x08;
	if (nvmm_vcpu_getstate(&g->mach, &g->vcpu, NVMM_X64_STATE_GPRS | NVMM_X64_STATE_SEGS) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_getstate");
	s = g->vcpu.state;
	s->segs[NVMM_X64_SEG_CS].base = 0;
	s->segs[NVMM_X64_SEG_CS].selector = 0;
	s->segs[NVMM_X64_SEG_IDT].base = 0;
	s->segs[NVMM_X64_SEG_IDT].limit = 0x3ff;
	s->gprs[NVMM_X64_GPR_RIP] = CODE;
	s->gprs[NVMM_X64_GPR_RSP] = 0x3000;
	if (nvmm_vcpu_setstate(&g->mach, &g->vcpu, NVMM_X64_STATE_GPRS | NVMM_X64_STATE_SEGS) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_setstate");
	g->ram = ram;
}

static uint16_t
counter(struct guest *g)
{
	return *(volatile uint16_t *)(g->ram + COUNTER);
}

/* Waits (at most 20 s) until the guest has counted: it is in a run. */
static int
wait_counting(struct guest *g)
{
	uint16_t first = counter(g);
	double deadline = now() + 20;

	while (counter(g) == first) {
		if (now() > deadline)
			return -1;
		sched_yield();
	}
	return 0;
}

/* Runs until an exit other than NONE: its reason, or ~0 when a call
 * fails (errno then says why). */
static uint64_t
run(struct guest *g)
{
	for (;;) {
		if (nvmm_vcpu_run(&g->mach, &g->vcpu) == -1)
			return ~0ULL;
		if (g->vcpu.exit->reason != NVMM_VCPU_EXIT_NONE)
			return g->vcpu.exit->reason;
	}
}

struct runner {
	struct guest *g;
	uint64_t reasons[2];
	int nreasons;
	int last_errno;
	int block_signals;
	atomic_int exits;	/* exits seen so far, for the other thread */
};

static void *
runner_main(void *arg)
{
	struct runner *r = arg;

	if (r->block_signals) {
		sigset_t all;

		sigfillset(&all);
		pthread_sigmask(SIG_BLOCK, &all, NULL);
	}
	for (r->nreasons = 0; r->nreasons < 2; r->nreasons++) {
		uint64_t reason = run(r->g);

		r->reasons[r->nreasons] = reason;
		atomic_fetch_add(&r->exits, 1);
		if (reason == ~0ULL) {
			r->last_errno = errno;
			break;
		}
		if (reason == NVMM_VCPU_EXIT_HALTED)
			break;
	}
	return NULL;
}

static void
test_inject_from_another_thread(void)
{
	struct guest g;
	struct runner r = { .g = &g };
	pthread_t t;
	double t0;

	guest_create(&g);
	if (pthread_create(&t, NULL, runner_main, &r) != 0)
		err(EXIT_FAILURE, "pthread_create");
	TRUE(wait_counting(&g) == 0);
	/* Neither waits for the VCPU to leave the guest. */
	t0 = now();
	g.vcpu.event->type = NVMM_VCPU_EVENT_INTR;
	g.vcpu.event->vector = 0x40;
	TRUE(nvmm_vcpu_inject(&g.mach, &g.vcpu) == 0);
	TRUE(nvmm_vcpu_stop(&g.vcpu) == 0);
	TRUE(now() - t0 < 5);
	pthread_join(t, NULL);
	TRUE(r.nreasons == 1 && r.reasons[0] == NVMM_VCPU_EXIT_STOPPED);
	TRUE(r.reasons[1] == NVMM_VCPU_EXIT_HALTED);
	TRUE(g.ram[0x600] == 0x40);
	TRUE(nvmm_machine_destroy(&g.mach) == 0);
	if (failures == 0)
		printf("Test 'inject and stop from another thread' passed\n");
}

static int
open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	if (d == NULL)
		err(EXIT_FAILURE, "/proc/self/fd");
	while (readdir(d) != NULL)
		n++;
	closedir(d);
	return n;
}

static void
test_destroy_while_running(void)
{
	int before = -1, f0 = failures;

	for (int i = 0; i < ROUNDS; i++) {
		struct guest g;
		struct runner r = { .g = &g };
		pthread_t t;

		if (i == 1)
			before = open_fds();
		guest_create(&g);
		if (pthread_create(&t, NULL, runner_main, &r) != 0)
			err(EXIT_FAILURE, "pthread_create");
		if (wait_counting(&g) != 0) {
			TRUE(!"the guest never ran");
			break;
		}
		if (i % 2 == 0)
			TRUE(nvmm_vcpu_destroy(&g.mach, &g.vcpu) == 0);
		else
			TRUE(nvmm_machine_destroy(&g.mach) == 0);
		pthread_join(t, NULL);
		/* The run in progress ended STOPPED; the next call failed. */
		TRUE(r.reasons[0] == NVMM_VCPU_EXIT_STOPPED);
		TRUE(r.nreasons == 1 && r.reasons[1] == ~0ULL && r.last_errno == ENOENT);
		if (i % 2 == 0)
			TRUE(nvmm_machine_destroy(&g.mach) == 0);
		munmap((void *)g.ram, 4 * PAGE_SIZE);
		if (failures > f0 + 5)
			break;
	}
	TRUE(open_fds() == before);
	if (failures == f0)
		printf("Test 'destroy while running, %d rounds' passed\n", ROUNDS);
}

/*
 * A thread that ran a VCPU last remembers it for its next call: destroying
 * the VCPU must free it (its descriptors) all the same, while that thread
 * lives on; its next call then fails with ENOENT.
 */
struct parked {
	struct guest *g;
	atomic_int stage;	/* 1: ran, 2: may go on, 3: done */
	uint64_t first;
	int second_errno;
};

static void *
parked_main(void *arg)
{
	struct parked *p = arg;
	double deadline;

	p->first = run(p->g);
	atomic_store(&p->stage, 1);
	deadline = now() + 20;
	while (atomic_load(&p->stage) != 2 && now() < deadline)
		sched_yield();
	p->second_errno = nvmm_vcpu_run(&p->g->mach, &p->g->vcpu) == -1 ? errno : 0;
	atomic_store(&p->stage, 3);
	return NULL;
}

static void
test_destroy_frees_what_a_live_thread_ran_last(void)
{
	int before, during, f0 = failures;

	/* Counted before any VCPU of this test exists: the other tests'
	 * threads are gone, and this one's last calls were on destroyed
	 * machines. */
	before = open_fds();
	for (int i = 0; i < 4; i++) {
		struct guest g;
		struct parked p = { .g = &g };
		pthread_t t;
		double deadline;

		guest_create(&g);
		/* This thread runs it too (stopped before entering). */
		TRUE(nvmm_vcpu_stop(&g.vcpu) == 0);
		TRUE(run(&g) == NVMM_VCPU_EXIT_STOPPED);
		TRUE(nvmm_vcpu_stop(&g.vcpu) == 0);
		if (pthread_create(&t, NULL, parked_main, &p) != 0)
			err(EXIT_FAILURE, "pthread_create");
		deadline = now() + 20;
		while (atomic_load(&p.stage) != 1 && now() < deadline)
			sched_yield();
		TRUE(p.first == NVMM_VCPU_EXIT_STOPPED);
		during = open_fds();
		TRUE(during > before);
		if (i % 2 == 0)
			TRUE(nvmm_vcpu_destroy(&g.mach, &g.vcpu) == 0);
		TRUE(nvmm_machine_destroy(&g.mach) == 0);
		munmap((void *)g.ram, 4 * PAGE_SIZE);
		/* Both threads remember the VCPU; one of them still lives. Its
		 * descriptors (and the VM's) are closed all the same. */
		TRUE(open_fds() < during);
		TRUE(open_fds() == before);
		atomic_store(&p.stage, 2);
		pthread_join(t, NULL);
		TRUE(p.second_errno == ENOENT);
		TRUE(nvmm_vcpu_run(&g.mach, &g.vcpu) == -1 && errno == ENOENT);
	}
	if (failures == f0)
		printf("Test 'destroy frees what a live thread ran last' passed\n");
}

static void
test_stop_with_every_signal_blocked(void)
{
	int f0 = failures;

	for (int i = 0; i < 20; i++) {
		struct guest g;
		struct runner r = { .g = &g, .block_signals = 1 };
		pthread_t t;

		guest_create(&g);
		if (pthread_create(&t, NULL, runner_main, &r) != 0)
			err(EXIT_FAILURE, "pthread_create");
		TRUE(wait_counting(&g) == 0);
		TRUE(nvmm_vcpu_stop(&g.vcpu) == 0);
		/* The stop alone ends the run; destroy ends the next one. */
		double deadline = now() + 20;
		while (atomic_load(&r.exits) == 0 && now() < deadline)
			sched_yield();
		TRUE(atomic_load(&r.exits) >= 1);
		TRUE(nvmm_machine_destroy(&g.mach) == 0);
		pthread_join(t, NULL);
		TRUE(r.reasons[0] == NVMM_VCPU_EXIT_STOPPED);
		munmap((void *)g.ram, 4 * PAGE_SIZE);
	}
	if (failures == f0)
		printf("Test 'stop with every signal blocked' passed\n");
}

/*
 * QEMU answers an MSR exit by setting RAX, RDX and RIP = npc through
 * setstate; the next run then has the library let KVM finish the RDMSR
 * before entering the guest, which spins (mov ecx,-1 ; rdmsr ; jmp $).
 * Stops from another thread land while that run settles, enters or
 * spins: each ends the run, none is lost.
 */
#define MSR_ROUNDS	1000

struct msr_runner {
	struct guest *g;
	atomic_int ready;	/* rounds whose RDMSR was answered */
	atomic_int stopped;	/* rounds that ended in STOPPED */
	atomic_int bad;		/* an unexpected exit or error */
};

static void *
msr_runner_main(void *arg)
{
	struct msr_runner *r = arg;
	struct nvmm_vcpu *v = &r->g->vcpu;

	for (int i = 1; i <= MSR_ROUNDS; i++) {
		uint64_t reason;

		if (nvmm_vcpu_getstate(&r->g->mach, v, NVMM_X64_STATE_GPRS) == -1)
			break;
		v->state->gprs[NVMM_X64_GPR_RIP] = CODE;
		if (nvmm_vcpu_setstate(&r->g->mach, v, NVMM_X64_STATE_GPRS) == -1 ||
		    run(r->g) != NVMM_VCPU_EXIT_RDMSR)
			break;
		if (nvmm_vcpu_getstate(&r->g->mach, v, NVMM_X64_STATE_GPRS) == -1)
			break;
		v->state->gprs[NVMM_X64_GPR_RAX] = 0;
		v->state->gprs[NVMM_X64_GPR_RDX] = 0;
		v->state->gprs[NVMM_X64_GPR_RIP] = v->exit->u.rdmsr.npc;
		if (nvmm_vcpu_setstate(&r->g->mach, v, NVMM_X64_STATE_GPRS) == -1)
			break;
		atomic_store(&r->ready, i);
		reason = run(r->g);
		if (reason != NVMM_VCPU_EXIT_STOPPED)
			break;
		atomic_store(&r->stopped, i);
	}
	if (atomic_load(&r->stopped) != MSR_ROUNDS)
		atomic_store(&r->bad, 1);
	return NULL;
}

/* Waits (at most 30 s) until *v reaches `want` or the runner gave up. */
static int
wait_for(atomic_int *v, int want, struct msr_runner *r)
{
	double deadline = now() + 30;

	while (atomic_load(v) < want) {
		if (now() > deadline || atomic_load(&r->bad))
			return -1;
		sched_yield();
	}
	return 0;
}

static void
test_stop_while_a_run_settles_an_msr_exit(void)
{
	static const uint8_t code[] = { 0x66, 0xb9, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x32, 0xeb, 0xfe };
	struct guest g;
	struct msr_runner r = { .g = &g };
	uint32_t spin = 0x2545f491;
	pthread_t t;

	guest_create(&g);
	memcpy((uint8_t *)g.ram + CODE, code, sizeof(code));
	if (pthread_create(&t, NULL, msr_runner_main, &r) != 0)
		err(EXIT_FAILURE, "pthread_create");
	for (int i = 1; i <= MSR_ROUNDS; i++) {
		if (wait_for(&r.ready, i, &r) == -1) {
			printf("FAIL %s: round %d: the runner did not reach its RDMSR\n", __func__, i);
			exit(EXIT_FAILURE);
		}
		spin ^= spin << 13;
		spin ^= spin >> 17;
		spin ^= spin << 5;
		for (volatile uint32_t k = 0; k < spin % 30000; k++)
			;
		TRUE(nvmm_vcpu_stop(&g.vcpu) == 0);
		if (wait_for(&r.stopped, i, &r) == -1) {
			/* The runner spins in the guest for good: nothing to join. */
			printf("FAIL %s: stop %d was lost\n", __func__, i);
			exit(EXIT_FAILURE);
		}
	}
	pthread_join(t, NULL);
	TRUE(!atomic_load(&r.bad));
	TRUE(nvmm_machine_destroy(&g.mach) == 0);
	munmap((void *)g.ram, 4 * PAGE_SIZE);
	printf("Test 'stop while a run settles an MSR exit' passed\n");
}

/*
 * Time slices: three runs of the counting guest, each ends with
 * NVMM_VCPU_EXIT_NONE after at least a slice (100 ms) with RIP inside the
 * loop, the counter having moved. The main thread stops the VCPU should
 * no slice come within 20 s (the run then ends STOPPED: a failure).
 */
struct slice_runner {
	struct guest *g;
	int block_signals;
	atomic_int nones;	/* runs that ended NONE as they should */
	atomic_int bad;		/* a run that did not */
	double shortest;	/* the shortest of those runs, in seconds */
};

static void *
slice_runner_main(void *arg)
{
	struct slice_runner *r = arg;
	struct nvmm_vcpu *v = &r->g->vcpu;

	if (r->block_signals) {
		sigset_t all;

		sigfillset(&all);
		pthread_sigmask(SIG_BLOCK, &all, NULL);
	}
	r->shortest = 1e9;
	for (int i = 0; i < 3; i++) {
		uint16_t before = counter(r->g);
		double t0 = now(), took;
		uint64_t rip;

		if (nvmm_vcpu_run(&r->g->mach, v) == -1 || v->exit->reason != NVMM_VCPU_EXIT_NONE) {
			printf("FAIL %s: run %d: reason %#llx\n", __func__, i,
			    (unsigned long long)v->exit->reason);
			atomic_store(&r->bad, 1);
			break;
		}
		took = now() - t0;
		if (took < r->shortest)
			r->shortest = took;
		if (nvmm_vcpu_getstate(&r->g->mach, v, NVMM_X64_STATE_GPRS) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_getstate");
		rip = v->state->gprs[NVMM_X64_GPR_RIP];
		if (rip < CODE || rip >= CODE + 6 || counter(r->g) == before) {
			printf("FAIL %s: run %d: RIP %#llx, counter %u then %u\n", __func__, i,
			    (unsigned long long)rip, before, counter(r->g));
			atomic_store(&r->bad, 1);
			break;
		}
		atomic_fetch_add(&r->nones, 1);
	}
	return NULL;
}

static void
test_time_slices(int block_signals)
{
	struct guest g;
	struct slice_runner r = { .g = &g, .block_signals = block_signals };
	int f0 = failures;
	double deadline;
	pthread_t t;

	guest_create(&g);
	if (pthread_create(&t, NULL, slice_runner_main, &r) != 0)
		err(EXIT_FAILURE, "pthread_create");
	deadline = now() + 20;
	while (atomic_load(&r.nones) < 3 && !atomic_load(&r.bad) && now() < deadline)
		sched_yield();
	if (atomic_load(&r.nones) < 3 && !atomic_load(&r.bad)) {
		printf("FAIL %s: no time slice ended a run in 20 s\n", __func__);
		failures++;
		TRUE(nvmm_vcpu_stop(&g.vcpu) == 0);
	}
	pthread_join(t, NULL);
	TRUE(!atomic_load(&r.bad));
	TRUE(atomic_load(&r.nones) == 3);
	TRUE(r.shortest >= 0.1);
	TRUE(nvmm_machine_destroy(&g.mach) == 0);
	munmap((void *)g.ram, 4 * PAGE_SIZE);
	if (failures == f0)
		printf("Test 'time slices%s' passed\n", block_signals ? " with every signal blocked" : "");
}

/*
 * 200 children made by fork while a thread of the parent runs the counting
 * guest: each creates a machine, runs a HLT to its exit and exits 0. The
 * parent waits for each at most 20 s (a child that hangs is killed and
 * counted). A child cannot use its parent's VMs (KVM ties a VM to the
 * process that made it, as NetBSD does), only its own.
 */
#define FORKS	200

static int
child_halts(void)
{
	struct guest c;

	guest_create(&c);
	c.ram[CODE] = 0xf4;
	return run(&c) == NVMM_VCPU_EXIT_HALTED ? 0 : 1;
}

static void
test_fork_while_a_vcpu_computes(void)
{
	struct guest g;
	struct runner r = { .g = &g };
	int f0 = failures;
	pthread_t t;

	guest_create(&g);
	if (pthread_create(&t, NULL, runner_main, &r) != 0)
		err(EXIT_FAILURE, "pthread_create");
	TRUE(wait_counting(&g) == 0);
	for (int i = 0; i < FORKS && failures < f0 + 5; i++) {
		double deadline = now() + 20;
		int status = 0;
		pid_t p;

		/* Nothing buffered for a failing child's exit() to print again. */
		fflush(stdout);
		p = fork();

		if (p == -1)
			err(EXIT_FAILURE, "fork");
		if (p == 0)
			_exit(child_halts());
		while (waitpid(p, &status, WNOHANG) == 0) {
			if (now() > deadline) {
				printf("FAIL %s: child %d hung\n", __func__, i);
				failures++;
				kill(p, SIGKILL);
				waitpid(p, &status, 0);
				break;
			}
			sched_yield();
		}
		TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	/* The parent's VCPU computed throughout: stop it, then destroy. */
	TRUE(nvmm_vcpu_stop(&g.vcpu) == 0);
	TRUE(nvmm_machine_destroy(&g.mach) == 0);
	pthread_join(t, NULL);
	TRUE(r.reasons[0] == NVMM_VCPU_EXIT_STOPPED);
	munmap((void *)g.ram, 4 * PAGE_SIZE);
	if (failures == f0)
		printf("Test 'children made by fork run VCPUs of their own' passed\n");
}

int
main(void)
{
	if (nvmm_init() == -1)
		err(EXIT_FAILURE, "nvmm_init");
	test_inject_from_another_thread();
	test_destroy_while_running();
	test_destroy_frees_what_a_live_thread_ran_last();
	test_stop_with_every_signal_blocked();
	test_stop_while_a_run_settles_an_msr_exit();
	test_time_slices(0);
	test_time_slices(1);
	test_fork_while_a_vcpu_computes();
	printf("%d failures\n", failures);
	return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
