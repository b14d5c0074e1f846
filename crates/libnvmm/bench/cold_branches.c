/*
 * What an indirect branch costs right after KVM_RUN on this host, against
 * a direct one: a bare KVM_RUN loop on `out 0x10,al ; jmp $-2`, then the
 * same loop calling 25 distinct functions (each in its own cache lines)
 * after every exit, through a table of pointers (indirect calls) and by
 * name (direct calls). Hosts whose KVM issues a branch-predictor barrier
 * (IBPB) at VM exits make every indirect branch after KVM_RUN mispredict:
 * this is why the library's exit path avoids them (see the README).
 *
 * Paired rounds as in exits.c: each round times a batch of the bare loop
 * and a batch of the loop with calls, alternating which goes first; the
 * ratio is the median of the rounds'. One JSON object per line.
 *
 *   cold_branches [--iterations N] [--rounds N]
 */

#include <linux/kvm.h>

#include <err.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RAM_SIZE	0x8000
#define CODE		0x1000
#define CALLS		25

#include "floor_vm.h"

static __attribute__((noinline, aligned(256))) long f0(long x) { return x * 3 + 0; }
static __attribute__((noinline, aligned(256))) long f1(long x) { return x * 3 + 1; }
static __attribute__((noinline, aligned(256))) long f2(long x) { return x * 3 + 2; }
static __attribute__((noinline, aligned(256))) long f3(long x) { return x * 3 + 3; }
static __attribute__((noinline, aligned(256))) long f4(long x) { return x * 3 + 4; }
static __attribute__((noinline, aligned(256))) long f5(long x) { return x * 3 + 5; }
static __attribute__((noinline, aligned(256))) long f6(long x) { return x * 3 + 6; }
static __attribute__((noinline, aligned(256))) long f7(long x) { return x * 3 + 7; }
static __attribute__((noinline, aligned(256))) long f8(long x) { return x * 3 + 8; }
static __attribute__((noinline, aligned(256))) long f9(long x) { return x * 3 + 9; }
static __attribute__((noinline, aligned(256))) long f10(long x) { return x * 3 + 10; }
static __attribute__((noinline, aligned(256))) long f11(long x) { return x * 3 + 11; }
static __attribute__((noinline, aligned(256))) long f12(long x) { return x * 3 + 12; }
static __attribute__((noinline, aligned(256))) long f13(long x) { return x * 3 + 13; }
static __attribute__((noinline, aligned(256))) long f14(long x) { return x * 3 + 14; }
static __attribute__((noinline, aligned(256))) long f15(long x) { return x * 3 + 15; }
static __attribute__((noinline, aligned(256))) long f16(long x) { return x * 3 + 16; }
static __attribute__((noinline, aligned(256))) long f17(long x) { return x * 3 + 17; }
static __attribute__((noinline, aligned(256))) long f18(long x) { return x * 3 + 18; }
static __attribute__((noinline, aligned(256))) long f19(long x) { return x * 3 + 19; }
static __attribute__((noinline, aligned(256))) long f20(long x) { return x * 3 + 20; }
static __attribute__((noinline, aligned(256))) long f21(long x) { return x * 3 + 21; }
static __attribute__((noinline, aligned(256))) long f22(long x) { return x * 3 + 22; }
static __attribute__((noinline, aligned(256))) long f23(long x) { return x * 3 + 23; }
static __attribute__((noinline, aligned(256))) long f24(long x) { return x * 3 + 24; }

static long (*volatile const table[CALLS])(long) = { f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24 };

/* Keeps the calls' results alive. */
volatile long sink;

static void
indirect_calls(long x)
{
	for (int i = 0; i < CALLS; i++)
		x = table[i](x);
	sink = x;
}

static void
direct_calls(long x)
{
	x = f0(x);
	x = f1(x);
	x = f2(x);
	x = f3(x);
	x = f4(x);
	x = f5(x);
	x = f6(x);
	x = f7(x);
	x = f8(x);
	x = f9(x);
	x = f10(x);
	x = f11(x);
	x = f12(x);
	x = f13(x);
	x = f14(x);
	x = f15(x);
	x = f16(x);
	x = f17(x);
	x = f18(x);
	x = f19(x);
	x = f20(x);
	x = f21(x);
	x = f22(x);
	x = f23(x);
	x = f24(x);
	sink = x;
}

struct vm {
	int vcpu;
	struct kvm_run *run;
};

static void
vm_init(struct vm *v, int kvm)
{
	static const uint8_t code[] = { 0xe6, 0x10, 0xeb, 0xfc };

	floor_vm(kvm, code, sizeof(code), &v->vcpu, &v->run);
}

/* `n` exits, each followed by `after` (or nothing). */
static void
batch(struct vm *v, long n, void (*after)(long))
{
	for (long i = 0; i < n; i++) {
		if (ioctl(v->vcpu, KVM_RUN, 0) < 0)
			err(EXIT_FAILURE, "KVM_RUN");
		if (v->run->exit_reason != KVM_EXIT_IO)
			errx(EXIT_FAILURE, "exit %u", v->run->exit_reason);
		if (after != NULL)
			after((long)v->run->io.port);
	}
}

static double
now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* The median over `rounds` of (loop with `after`) / (bare loop). */
static double
paired(struct vm *bare, struct vm *with, void (*after)(long), long iterations, int rounds, double *bare_ns)
{
	double *ratio = calloc(rounds, sizeof(double)), *floor_ns = calloc(rounds, sizeof(double)), r;

	if (ratio == NULL || floor_ns == NULL)
		err(EXIT_FAILURE, "calloc");
	for (int i = 0; i < rounds; i++) {
		double t0, t1, t2, b, w;

		t0 = now();
		if (i % 2 == 0)
			batch(bare, iterations, NULL);
		else
			batch(with, iterations, after);
		t1 = now();
		if (i % 2 == 0)
			batch(with, iterations, after);
		else
			batch(bare, iterations, NULL);
		t2 = now();
		b = i % 2 == 0 ? t1 - t0 : t2 - t1;
		w = i % 2 == 0 ? t2 - t1 : t1 - t0;
		ratio[i] = w / b;
		floor_ns[i] = b / iterations * 1e9;
	}
	qsort(ratio, rounds, sizeof(double), cmp_double);
	qsort(floor_ns, rounds, sizeof(double), cmp_double);
	r = ratio[rounds / 2];
	*bare_ns = floor_ns[rounds / 2];
	free(ratio);
	free(floor_ns);
	return r;
}

int
main(int argc, char *argv[])
{
	long iterations = 2000;
	int rounds = 41, kvm;
	struct vm bare, with;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc)
			iterations = atol(argv[++i]);
		else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
			rounds = atoi(argv[++i]);
		else
			errx(2, "usage: %s [--iterations N] [--rounds N]", argv[0]);
	}
	if (iterations < 1 || rounds < 1)
		errx(2, "usage: %s [--iterations N] [--rounds N]", argv[0]);
	if ((kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0)
		err(EXIT_FAILURE, "/dev/kvm");
	vm_init(&bare, kvm);
	vm_init(&with, kvm);
	batch(&bare, iterations / 10 + 1, NULL);
	batch(&with, iterations / 10 + 1, indirect_calls);
	for (int k = 0; k < 2; k++) {
		const char *kind = k == 0 ? "indirect" : "direct";
		double floor_ns, r = paired(&bare, &with, k == 0 ? indirect_calls : direct_calls, iterations, rounds, &floor_ns);

		printf("{\"bench\":\"cold-%s-calls\",\"what\":\"%d %s calls to distinct functions after each KVM_RUN, against the bare loop\","
		    "\"calls\":%d,\"iterations\":%ld,\"rounds\":%d,\"floor_ns\":%.1f,\"ratio\":%.4f,\"ns_per_call\":%.1f}\n",
		    kind, CALLS, kind, CALLS, iterations, rounds, floor_ns, r, (r - 1) * floor_ns / CALLS);
		fflush(stdout);
	}
	return 0;
}
