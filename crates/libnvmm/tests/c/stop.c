/*
 * nvmm_vcpu_stop from other threads and from a signal handler: VCPUs spin
 * in the guest, and every request makes nvmm_vcpu_run return
 * NVMM_VCPU_EXIT_STOPPED exactly once, wherever it lands (before the run,
 * during it), with *vcpu->stop cleared when it is reported. No sleeps:
 * the order of events does not matter, only that none is lost.
 */

#include <nvmm.h>

#include <err.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE_SIZE	4096
#define NVCPUS		2
#define ROUNDS		100

static struct nvmm_machine mach;
static struct nvmm_vcpu vcpus[NVCPUS];
static sem_t ready[NVCPUS], done[NVCPUS];
static int failures;

/* sem_wait, resumed when a signal handler interrupts it. */
static void
wait_sem(sem_t *s)
{
	while (sem_wait(s) == -1)
		if (errno != EINTR)
			err(EXIT_FAILURE, "sem_wait");
}

/* Runs until STOPPED; returns how many other exits came first. */
static int
run_until_stopped(struct nvmm_vcpu *vcpu)
{
	int others = 0;

	for (;;) {
		if (nvmm_vcpu_run(&mach, vcpu) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_run");
		if (vcpu->exit->reason == NVMM_VCPU_EXIT_STOPPED)
			return others;
		if (vcpu->exit->reason != NVMM_VCPU_EXIT_NONE) {
			printf("FAIL: exit 0x%llx while spinning\n",
			    (unsigned long long)vcpu->exit->reason);
			failures++;
			return others;
		}
		others++;
	}
}

static void *
vcpu_thread(void *arg)
{
	struct nvmm_vcpu *vcpu = arg;
	int id = (int)vcpu->cpuid, round;

	for (round = 0; round < ROUNDS; round++) {
		sem_post(&ready[id]);
		run_until_stopped(vcpu);
		if (*vcpu->stop != 0) {
			printf("FAIL: stop flag still set after STOPPED\n");
			failures++;
		}
		wait_sem(&done[id]);
	}
	return NULL;
}

static void
on_signal(int sig)
{
	int saved = errno;

	(void)sig;
	if (nvmm_vcpu_stop(&vcpus[0]) == -1)
		_exit(3);
	errno = saved;
}

static pthread_t main_thread;

static void *
signaller(void *arg)
{
	int round;

	(void)arg;
	for (round = 0; round < ROUNDS; round++) {
		wait_sem(&ready[0]);
		if (pthread_kill(main_thread, SIGUSR1) != 0)
			errx(EXIT_FAILURE, "pthread_kill");
		sem_post(&done[0]);
	}
	return NULL;
}

int
main(void)
{
	/* Real mode at 0:0: jmp . */
	static const uint8_t spin[] = { 0xeb, 0xfe };
	pthread_t threads[NVCPUS];
	uint8_t *mem;
	int i, round;

	if (nvmm_init() == -1)
		err(EXIT_FAILURE, "nvmm_init");
	if (nvmm_machine_create(&mach) == -1)
		err(EXIT_FAILURE, "nvmm_machine_create");
	mem = mmap(NULL, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE,
	    -1, 0);
	if (mem == MAP_FAILED)
		err(EXIT_FAILURE, "mmap");
	memcpy(mem, spin, sizeof(spin));
	if (nvmm_hva_map(&mach, (uintptr_t)mem, PAGE_SIZE) == -1 ||
	    nvmm_gpa_map(&mach, (uintptr_t)mem, 0, PAGE_SIZE, PROT_READ | PROT_EXEC) == -1)
		err(EXIT_FAILURE, "mapping");

	for (i = 0; i < NVCPUS; i++) {
		struct nvmm_vcpu *v = &vcpus[i];

		if (nvmm_vcpu_create(&mach, (nvmm_cpuid_t)i, v) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_create");
		if (nvmm_vcpu_getstate(&mach, v, NVMM_X64_STATE_SEGS | NVMM_X64_STATE_GPRS) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_getstate");
		v->state->segs[NVMM_X64_SEG_CS].base = 0;
		v->state->segs[NVMM_X64_SEG_CS].selector = 0;
		v->state->gprs[NVMM_X64_GPR_RIP] = 0;
		if (nvmm_vcpu_setstate(&mach, v, NVMM_X64_STATE_SEGS | NVMM_X64_STATE_GPRS) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_setstate");
	}

	/* Before a run: the flag alone, and a request. */
	*vcpus[0].stop = 1;
	if (run_until_stopped(&vcpus[0]) != 0 || *vcpus[0].stop != 0) {
		printf("FAIL: a stop flag set before the run\n");
		failures++;
	}
	if (nvmm_vcpu_stop(&vcpus[0]) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_stop");
	if (run_until_stopped(&vcpus[0]) != 0) {
		printf("FAIL: a stop requested before the run\n");
		failures++;
	}

	/* From another thread, each VCPU on its own thread. */
	for (i = 0; i < NVCPUS; i++) {
		sem_init(&ready[i], 0, 0);
		sem_init(&done[i], 0, 0);
		if (pthread_create(&threads[i], NULL, vcpu_thread, &vcpus[i]) != 0)
			errx(EXIT_FAILURE, "pthread_create");
	}
	for (round = 0; round < ROUNDS; round++) {
		for (i = 0; i < NVCPUS; i++) {
			wait_sem(&ready[i]);
			if (nvmm_vcpu_stop(&vcpus[i]) == -1)
				err(EXIT_FAILURE, "nvmm_vcpu_stop");
		}
		for (i = 0; i < NVCPUS; i++)
			sem_post(&done[i]);
	}
	for (i = 0; i < NVCPUS; i++)
		pthread_join(threads[i], NULL);

	/* From a signal handler, interrupting the VCPU's thread. */
	if (signal(SIGUSR1, on_signal) == SIG_ERR)
		err(EXIT_FAILURE, "signal");
	main_thread = pthread_self();
	if (pthread_create(&threads[0], NULL, signaller, NULL) != 0)
		errx(EXIT_FAILURE, "pthread_create");
	for (round = 0; round < ROUNDS; round++) {
		sem_post(&ready[0]);
		run_until_stopped(&vcpus[0]);
		wait_sem(&done[0]);
	}
	pthread_join(threads[0], NULL);

	for (i = 0; i < NVCPUS; i++)
		if (nvmm_vcpu_destroy(&mach, &vcpus[i]) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_destroy");
	if (nvmm_machine_destroy(&mach) == -1)
		err(EXIT_FAILURE, "nvmm_machine_destroy");
	printf("%d failures\n", failures);
	return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
