/*
 * The I/O assist, in the shape of NetBSD's libnvmm regression programs:
 * IN, OUT, REP INS and REP OUTS of every size (forwards, backwards, with a
 * segment override) in 64-bit, 32-bit protected and real mode, each I/O
 * exit through nvmm_assist_io and a callback on port 123. The results (the
 * port streams, guest memory, the accumulator, RDI/RSI/RCX) are compared
 * with what the architecture defines for those instructions.
 */

#include "guest.h"

#include <err.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PORT		123
#define RESULT_SIZE	64

static const char in_stream[] = "0123456789abcdefghijklmnopqrstuvwxyz";
static size_t in_off;
static char out_stream[128];
static size_t out_len;
static uint8_t *data;

static void
io_callback(struct nvmm_io *io)
{
	if (io->port != PORT)
		errx(EXIT_FAILURE, "wrong port %u", io->port);
	if (io->size != 1 && io->size != 2 && io->size != 4)
		errx(EXIT_FAILURE, "wrong size %zu", io->size);
	if (io->in) {
		if (in_off + io->size > sizeof(in_stream) - 1)
			errx(EXIT_FAILURE, "input stream exhausted");
		memcpy(io->data, in_stream + in_off, io->size);
		in_off += io->size;
	} else {
		if (out_len + io->size > sizeof(out_stream))
			errx(EXIT_FAILURE, "output stream full");
		memcpy(out_stream + out_len, io->data, io->size);
		out_len += io->size;
	}
}

static struct nvmm_assist_callbacks callbacks = {
	.io = io_callback,
	.mem = NULL,
};

#define DECLARE(name)							\
	extern uint8_t io64_##name##_begin[], io64_##name##_end[];	\
	extern uint8_t io32_##name##_begin[], io32_##name##_end[];	\
	extern uint8_t io16_##name##_begin[], io16_##name##_end[];
#define TESTS(X) X(IN) X(OUT) X(INS) X(OUTS) X(INS_DOWN) X(OUTS_FS)
TESTS(DECLARE)

static void
pattern(uint8_t *buf)
{
	size_t i;

	for (i = 0; i < RESULT_SIZE; i++)
		buf[i] = (uint8_t)(0xA0 + i);
}

static void
put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

static void
put16(uint8_t *p, uint16_t v)
{
	memcpy(p, &v, 2);
}

static uint32_t
in_bytes(size_t off, size_t n)
{
	uint32_t v = 0;

	memcpy(&v, in_stream + off, n);
	return v;
}

/* What each test must leave: the data page, the output stream, the input consumed. */
struct expect {
	uint8_t data[RESULT_SIZE];
	char out[64];
	size_t out_len;
	size_t in_used;
};

static void
expect_IN(struct expect *e)
{
	put32(e->data + 0, (0x11223344 & ~0xFFu) | in_bytes(0, 1));
	put32(e->data + 4, (0x55667788 & ~0xFFFFu) | in_bytes(1, 2));
	put32(e->data + 8, in_bytes(3, 4));
	e->data[12] = (uint8_t)in_stream[7];
	e->in_used = 8;
}

static void
expect_OUT(struct expect *e)
{
	memcpy(e->out, "AABABCDA", 8);
	e->out_len = 8;
}

static void
expect_INS(struct expect *e)
{
	memcpy(e->data + 16, in_stream, 5 + 6 + 8);
	put16(e->data + 0, 16 + 19);	/* RDI past the last element */
	put16(e->data + 2, 0);		/* RCX counted down */
	e->in_used = 19;
}

static void
expect_OUTS(struct expect *e)
{
	memcpy(e->out, e->data + 32, 19);
	e->out_len = 19;
	put16(e->data + 0, 32 + 19);
}

static void
expect_INS_DOWN(struct expect *e)
{
	int i;

	for (i = 0; i < 4; i++)
		e->data[40 - i] = (uint8_t)in_stream[i];
	put16(e->data + 0, 36);
	e->in_used = 4;
}

static void
expect_OUTS_FS(struct expect *e)
{
	memcpy(e->out, e->data + 48, 4);
	e->out_len = 4;
}

struct test {
	const char *name;
	uint8_t *code[3][2];
	void (*expect)(struct expect *);
};

#define ENTRY(name) { #name, {						\
	{ io64_##name##_begin, io64_##name##_end },			\
	{ io32_##name##_begin, io32_##name##_end },			\
	{ io16_##name##_begin, io16_##name##_end } },			\
	expect_##name },
static const struct test tests[] = { TESTS(ENTRY) };

static int
test_mode(enum mode mode)
{
	struct nvmm_machine mach;
	struct nvmm_vcpu vcpu;
	struct expect want;
	uint8_t *code;
	int failures = 0;
	size_t i;

	if (nvmm_machine_create(&mach) == -1)
		err(EXIT_FAILURE, "nvmm_machine_create");
	if (nvmm_vcpu_create(&mach, 0, &vcpu) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_create");
	if (nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CALLBACKS,
	    &callbacks) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_configure");
	code = map_code(&mach, mode);
	data = guest_page(&mach, DATA_GPA, PROT_READ | PROT_WRITE);

	for (i = 0; i < __arraycount(tests); i++) {
		const struct test *t = &tests[i];
		uint8_t *begin = t->code[mode][0], *end = t->code[mode][1];

		reset_vcpu(&mach, &vcpu, mode, DATA_GPA);
		memcpy(code, begin, (size_t)(end - begin));
		pattern(data);
		in_off = out_len = 0;
		memset(&want, 0, sizeof(want));
		pattern(want.data);
		t->expect(&want);

		if (run_test_code(&mach, &vcpu) == -1) {
			printf("Test '%s %s' failed to run\n", mode_names[mode], t->name);
			failures++;
		} else if (memcmp(data, want.data, RESULT_SIZE) != 0 ||
		    out_len != want.out_len ||
		    memcmp(out_stream, want.out, out_len) != 0 ||
		    in_off != want.in_used) {
			printf("Test '%s %s' failed: out '%.*s' (want '%.*s'), "
			    "%zu bytes in (want %zu)\n", mode_names[mode], t->name,
			    (int)out_len, out_stream, (int)want.out_len, want.out,
			    in_off, want.in_used);
			failures++;
		} else {
			printf("Test '%s %s' passed\n", mode_names[mode], t->name);
		}
	}

	if (nvmm_vcpu_destroy(&mach, &vcpu) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_destroy");
	if (nvmm_machine_destroy(&mach) == -1)
		err(EXIT_FAILURE, "nvmm_machine_destroy");
	return failures;
}

int
main(void)
{
	return run_every_mode(test_mode);
}
