/*
 * NetBSD's semantics where KVM differs, NetBSD regression style (each
 * test prints "Test '...' passed" or its failures):
 *
 * - a MEMORY exit leaves the instruction undone (RIP on it): mapping
 *   memory at the address and running again executes it against the new
 *   memory, for loads and stores of every size and REP MOVS/STOS, in
 *   64-bit, 32-bit and real mode;
 * - an instruction fetch from unmapped memory is a MEMORY exit with that
 *   GPA and PROT_EXEC;
 * - a store whose address gets read-only memory (a ROM) exits again and
 *   never lands there; a REP STOSB exiting on its last element shows the
 *   instruction not started;
 * - a TPR exit is reported once, first, with CR8 in the state, and the
 *   exit behind it is executed again when the program changed the state
 *   (a HLT behind it too); a run stopped before entering shows in its
 *   exitstate the CR8 the program just set;
 * - GPRS of an I/O exit are fetched at getstate (showing the instruction
 *   not done), not marked cached with the exit as NetBSD's kernel does;
 * - the assist callbacks call back: getstate, setstate, inject, stop,
 *   gpa_to_hva and gpa_map work there, and the assist keeps their changes.
 */

#include "guest.h"

#include <err.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static struct nvmm_machine mach;
static struct nvmm_vcpu vcpu;
static uint8_t *code;
static int failures, test_failures;

#define TRUE(cond) do {							\
	if (!(cond)) {							\
		printf("FAIL %s:%d: %s\n", __func__, __LINE__, #cond);	\
		test_failures++;					\
	}								\
} while (0)

#define OK(call) do {							\
	if ((call) == -1) {						\
		printf("FAIL %s:%d: %s: %s\n", __func__, __LINE__, #call,	\
		    strerror(errno));					\
		test_failures++;					\
	}								\
} while (0)

static void
passed(const char *name)
{
	if (test_failures == 0)
		printf("Test '%s' passed\n", name);
	failures += test_failures;
	test_failures = 0;
}

/* The page at DATA_GPA, when a test mapped it. */
static void *data_page;

static void
unmap_data(void)
{
	if (data_page == NULL)
		return;
	OK(nvmm_gpa_unmap(&mach, (uintptr_t)data_page, DATA_GPA, PAGE_SIZE));
	OK(nvmm_hva_unmap(&mach, (uintptr_t)data_page, PAGE_SIZE));
	munmap(data_page, PAGE_SIZE);
	data_page = NULL;
}

static uint8_t *
map_data(void)
{
	data_page = guest_page(&mach, DATA_GPA, PROT_READ | PROT_WRITE | PROT_EXEC);
	return data_page;
}

/* Runs, skipping NONE exits; the exit reason. */
static uint64_t
run(void)
{
	for (int i = 0; i < 1000; i++) {
		if (nvmm_vcpu_run(&mach, &vcpu) == -1)
			err(EXIT_FAILURE, "nvmm_vcpu_run");
		if (vcpu.exit->reason != NVMM_VCPU_EXIT_NONE)
			return vcpu.exit->reason;
	}
	return NVMM_VCPU_EXIT_NONE;
}

static uint64_t
gpr(int r)
{
	OK(nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_GPRS));
	return vcpu.state->gprs[r];
}

/* Starts a test in `mode` at CODE_GPA running `bytes`, RAX = rax and RBX
 * (or BX) addressing DATA_GPA, DATA_GPA unmapped. */
static void
start(enum mode mode, const uint8_t *bytes, size_t len, uint64_t rax)
{
	struct nvmm_assist_callbacks cbs = vcpu.cbs;

	unmap_data();
	/* A fresh VCPU (reset_vcpu leaves real mode's CR0 and CS as found). */
	if (nvmm_vcpu_destroy(&mach, &vcpu) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_destroy");
	if (nvmm_vcpu_create(&mach, 0, &vcpu) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_create");
	if (nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CALLBACKS, &cbs) == -1)
		err(EXIT_FAILURE, "NVMM_VCPU_CONF_CALLBACKS");
	reset_vcpu(&mach, &vcpu, mode, 0);
	memset(code, 0xf4, PAGE_SIZE);
	memcpy(code, bytes, len);
	OK(nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_GPRS));
	/* A stack in the data page (the code page is read-only). */
	vcpu.state->gprs[NVMM_X64_GPR_RSP] = DATA_GPA + 0xf00;
	vcpu.state->gprs[NVMM_X64_GPR_RAX] = rax;
	vcpu.state->gprs[NVMM_X64_GPR_RBX] = DATA_GPA;
	vcpu.state->gprs[NVMM_X64_GPR_RDI] = DATA_GPA;
	OK(nvmm_vcpu_setstate(&mach, &vcpu, NVMM_X64_STATE_GPRS));
}

struct mov {
	int size;
	uint8_t store[4], load[4];
	size_t len;
};

/* mov [rbx],al/ax/eax/rax and mov al/ax/eax/rax,[rbx] ([bx] in real mode). */
static const struct mov movs64[] = {
	{ 1, { 0x88, 0x03 }, { 0x8a, 0x03 }, 2 },
	{ 2, { 0x66, 0x89, 0x03 }, { 0x66, 0x8b, 0x03 }, 3 },
	{ 4, { 0x89, 0x03 }, { 0x8b, 0x03 }, 2 },
	{ 8, { 0x48, 0x89, 0x03 }, { 0x48, 0x8b, 0x03 }, 3 },
};
static const struct mov movs16[] = {
	{ 1, { 0x88, 0x07 }, { 0x8a, 0x07 }, 2 },
	{ 2, { 0x89, 0x07 }, { 0x8b, 0x07 }, 2 },
	{ 4, { 0x66, 0x89, 0x07 }, { 0x66, 0x8b, 0x07 }, 3 },
};

#define VALUE 0x8877665544332211ULL

static void
test_map_and_rerun(enum mode mode)
{
	const struct mov *m = mode == MODE_16 ? movs16 : movs64;
	int n = mode == MODE_16 ? 3 : mode == MODE_32 ? 3 : 4;
	char name[64];

	for (int i = 0; i < n; i++) {
		uint64_t mask = m[i].size == 8 ? ~0ULL : (1ULL << (8 * m[i].size)) - 1;
		uint64_t got = 0;
		uint8_t *page;

		/* A store: RIP on it at the exit, then it lands in new RAM. */
		start(mode, m[i].store, m[i].len, VALUE);
		TRUE(run() == NVMM_VCPU_EXIT_MEMORY);
		TRUE(vcpu.exit->u.mem.gpa == DATA_GPA && vcpu.exit->u.mem.prot == PROT_WRITE);
		TRUE(gpr(NVMM_X64_GPR_RIP) == CODE_GPA);
		page = map_data();
		TRUE(run() == NVMM_VCPU_EXIT_HALTED);
		memcpy(&got, page, 8);
		if (got != (VALUE & mask))
			printf("%s %d-byte store: got 0x%llx\n", mode_names[mode], m[i].size, (unsigned long long)got);
		TRUE(got == (VALUE & mask));

		/* A load: it reads the new RAM. */
		start(mode, m[i].load, m[i].len, 0);
		TRUE(run() == NVMM_VCPU_EXIT_MEMORY);
		TRUE(vcpu.exit->u.mem.gpa == DATA_GPA && vcpu.exit->u.mem.prot == PROT_READ);
		TRUE(gpr(NVMM_X64_GPR_RIP) == CODE_GPA);
		page = map_data();
		memcpy(page, &(uint64_t){ VALUE }, 8);
		TRUE(run() == NVMM_VCPU_EXIT_HALTED);
		if ((gpr(NVMM_X64_GPR_RAX) & mask) != (VALUE & mask))
			printf("%s %d-byte load: got 0x%llx\n", mode_names[mode], m[i].size,
			    (unsigned long long)vcpu.state->gprs[NVMM_X64_GPR_RAX]);
		TRUE((gpr(NVMM_X64_GPR_RAX) & mask) == (VALUE & mask));

		snprintf(name, sizeof(name), "map and rerun %d-byte MOV, %s", m[i].size, mode_names[mode]);
		passed(name);
	}
}

static void
test_string_rerun(enum mode mode)
{
	static const uint8_t stos[] = { 0xf3, 0xaa };	/* rep stosb */
	static const uint8_t movsb[] = { 0xf3, 0xa4 };	/* rep movsb */
	char name[64];

	for (int k = 0; k < 2; k++) {
		uint8_t *page;

		start(mode, k == 0 ? stos : movsb, 2, 0x5a);
		/* Source of MOVS: CODE_GPA + 0x100 (DS:SI). */
		memcpy(code + 0x100, "\x01\x02\x03\x04", 4);
		OK(nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_GPRS));
		vcpu.state->gprs[NVMM_X64_GPR_RCX] = 4;
		vcpu.state->gprs[NVMM_X64_GPR_RSI] = CODE_GPA + 0x100;
		OK(nvmm_vcpu_setstate(&mach, &vcpu, NVMM_X64_STATE_GPRS));
		TRUE(run() == NVMM_VCPU_EXIT_MEMORY);
		TRUE(vcpu.exit->u.mem.gpa == DATA_GPA && vcpu.exit->u.mem.prot == PROT_WRITE);
		TRUE(gpr(NVMM_X64_GPR_RIP) == CODE_GPA);
		TRUE((vcpu.state->gprs[NVMM_X64_GPR_RCX] & 0xffff) == 4);
		page = map_data();
		TRUE(run() == NVMM_VCPU_EXIT_HALTED);
		if (k == 0)
			TRUE(memcmp(page, "\x5a\x5a\x5a\x5a\x00", 5) == 0);
		else
			TRUE(memcmp(page, "\x01\x02\x03\x04\x00", 5) == 0);
		snprintf(name, sizeof(name), "map and rerun %s, %s", k == 0 ? "REP STOSB" : "REP MOVSB",
		    mode_names[mode]);
		passed(name);
	}
}

static void
test_fetch(enum mode mode)
{
	char name[64];
	uint8_t *page;

	start(mode, (const uint8_t *)"\xf4", 1, 0);
	OK(nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_GPRS | NVMM_X64_STATE_SEGS));
	if (mode == MODE_16) {
		vcpu.state->segs[NVMM_X64_SEG_CS].base = DATA_GPA;
		vcpu.state->gprs[NVMM_X64_GPR_RIP] = 0;
	} else
		vcpu.state->gprs[NVMM_X64_GPR_RIP] = DATA_GPA;
	OK(nvmm_vcpu_setstate(&mach, &vcpu, NVMM_X64_STATE_GPRS | NVMM_X64_STATE_SEGS));
	TRUE(run() == NVMM_VCPU_EXIT_MEMORY);
	TRUE(vcpu.exit->u.mem.gpa == DATA_GPA && vcpu.exit->u.mem.prot == PROT_EXEC);
	/* Left alone, the fetch faults again the same way. */
	TRUE(run() == NVMM_VCPU_EXIT_MEMORY && vcpu.exit->u.mem.prot == PROT_EXEC);
	page = map_data();
	page[0] = 0x90;	/* nop */
	page[1] = 0xf4;	/* hlt */
	TRUE(run() == NVMM_VCPU_EXIT_HALTED);
	TRUE(gpr(NVMM_X64_GPR_RIP) == (mode == MODE_16 ? 2 : DATA_GPA + 2));
	snprintf(name, sizeof(name), "instruction fetch from unmapped memory, %s", mode_names[mode]);
	passed(name);
}

/* A store whose address gets read-only memory (a ROM) before the next
 * run exits again and never lands there. */
static void
test_rom_write(enum mode mode)
{
	const struct mov *m = mode == MODE_16 ? movs16 : movs64;
	char name[64];
	uint8_t *page;

	start(mode, m[0].store, m[0].len, VALUE);
	TRUE(run() == NVMM_VCPU_EXIT_MEMORY);
	data_page = page = guest_page(&mach, DATA_GPA, PROT_READ | PROT_EXEC);
	TRUE(run() == NVMM_VCPU_EXIT_MEMORY);
	TRUE(vcpu.exit->u.mem.gpa == DATA_GPA && vcpu.exit->u.mem.prot == PROT_WRITE);
	TRUE(gpr(NVMM_X64_GPR_RIP) == CODE_GPA);
	TRUE(page[0] == 0);
	snprintf(name, sizeof(name), "store to memory mapped read-only, %s", mode_names[mode]);
	passed(name);
}

/* REP STOSB with CX = 1: at the exit the instruction is not started. */
static void
test_string_last_element(enum mode mode)
{
	static const uint8_t stos[] = { 0xf3, 0xaa };
	char name[64];

	start(mode, stos, 2, 0x5a);
	OK(nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_GPRS));
	vcpu.state->gprs[NVMM_X64_GPR_RCX] = 1;
	OK(nvmm_vcpu_setstate(&mach, &vcpu, NVMM_X64_STATE_GPRS));
	TRUE(run() == NVMM_VCPU_EXIT_MEMORY);
	TRUE(gpr(NVMM_X64_GPR_RIP) == CODE_GPA);
	TRUE(vcpu.state->gprs[NVMM_X64_GPR_RCX] == 1);
	TRUE(vcpu.state->gprs[NVMM_X64_GPR_RDI] == DATA_GPA);
	snprintf(name, sizeof(name), "REP STOSB's last element undone at its exit, %s", mode_names[mode]);
	passed(name);
}

static int
test_mode(enum mode mode)
{
	test_map_and_rerun(mode);
	test_string_rerun(mode);
	test_fetch(mode);
	test_rom_write(mode);
	test_string_last_element(mode);
	return 0;
}

/* ---- TPR ----------------------------------------------------------------- */

static uint8_t last_out;

static void
io_record(struct nvmm_io *io)
{
	if (!io->in)
		last_out = io->data[0];
}

static void
mem_none(struct nvmm_mem *mem)
{
	(void)mem;
}

/* Starts a 64-bit test running `bytes` with CR8 = 0 and TPR exits on. */
static void
start_tpr(const uint8_t *bytes, size_t len)
{
	struct nvmm_vcpu_conf_tpr tpr = { .exit_changed = 1 };

	start(MODE_64, bytes, len, 0);
	OK(nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_CRS));
	vcpu.state->crs[NVMM_X64_CR_CR8] = 0;
	OK(nvmm_vcpu_setstate(&mach, &vcpu, NVMM_X64_STATE_CRS));
	OK(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_TPR, &tpr));
}

static void
test_tpr(void)
{
	/* mov rax,5 ; mov cr8,rax ; out 0x10,al ; hlt */
	static const uint8_t tpr_code[] = {
		0x48, 0xc7, 0xc0, 0x05, 0x00, 0x00, 0x00,
		0x44, 0x0f, 0x22, 0xc0,
		0xe6, 0x10,
		0xf4,
	};
	struct nvmm_vcpu_conf_tpr off = { .exit_changed = 0 };

	for (int change = 0; change < 2; change++) {
		start_tpr(tpr_code, sizeof(tpr_code));
		TRUE(run() == NVMM_VCPU_EXIT_TPR_CHANGED);
		TRUE(vcpu.exit->exitstate.cr8 == 5);
		OK(nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_CRS));
		TRUE(vcpu.state->crs[NVMM_X64_CR_CR8] == 5);
		TRUE(gpr(NVMM_X64_GPR_RIP) == CODE_GPA + 11);
		if (change) {
			vcpu.state->gprs[NVMM_X64_GPR_RAX] = 0x42;
			OK(nvmm_vcpu_setstate(&mach, &vcpu, NVMM_X64_STATE_GPRS));
		}
		TRUE(run() == NVMM_VCPU_EXIT_IO);
		last_out = 0;
		OK(nvmm_assist_io(&mach, &vcpu));
		/* The OUT ran with the state of the time: no stale exit. */
		TRUE(last_out == (change ? 0x42 : 5));
		TRUE(run() == NVMM_VCPU_EXIT_HALTED);
		passed(change ? "exit after a TPR exit follows a changed state" : "TPR exit first, once, CR8 in the state");
	}

	/* mov rax,5 ; mov cr8,rax ; hlt ; out 0x11,al ; hlt: the HLT behind
	 * the TPR exit is shown not executed, then reported. */
	static const uint8_t tpr_hlt[] = {
		0x48, 0xc7, 0xc0, 0x05, 0x00, 0x00, 0x00,
		0x44, 0x0f, 0x22, 0xc0,
		0xf4,
		0xe6, 0x11,
		0xf4,
	};
	start_tpr(tpr_hlt, sizeof(tpr_hlt));
	TRUE(run() == NVMM_VCPU_EXIT_TPR_CHANGED);
	TRUE(gpr(NVMM_X64_GPR_RIP) == CODE_GPA + 11);
	TRUE(run() == NVMM_VCPU_EXIT_HALTED);
	TRUE(gpr(NVMM_X64_GPR_RIP) == CODE_GPA + 12);
	passed("HLT behind a TPR exit");

	/* QEMU before a run: CR8 through setstate, then a stop. The STOPPED
	 * exit's exitstate shows the CR8 just set. */
	start_tpr(tpr_code, sizeof(tpr_code));
	TRUE(run() == NVMM_VCPU_EXIT_TPR_CHANGED);
	OK(nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_CRS));
	vcpu.state->crs[NVMM_X64_CR_CR8] = 9;
	OK(nvmm_vcpu_setstate(&mach, &vcpu, NVMM_X64_STATE_CRS));
	OK(nvmm_vcpu_stop(&vcpu));
	TRUE(run() == NVMM_VCPU_EXIT_STOPPED);
	TRUE(vcpu.exit->exitstate.cr8 == 9);
	passed("exitstate of a stopped run shows the CR8 just set");

	OK(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_TPR, &off));
}

/* ---- state with an exit ------------------------------------------------------ */

static void
test_state_fetched_at_getstate(void)
{
	/* mov al,0x11 ; out 0x10,al ; hlt */
	static const uint8_t c[] = { 0xb0, 0x11, 0xe6, 0x10, 0xf4 };
	struct nvmm_comm_page *comm;

	/* start() makes a new VCPU 0: its comm page, read after it. */
	start(MODE_16, c, sizeof(c), 0);
	comm = mach.pages[0];
	TRUE(run() == NVMM_VCPU_EXIT_IO);
	/* NetBSD's kernel would mark GPRS (SEGS, CRS, MSRS) cached here;
	 * this library fetches them when asked. */
	TRUE((comm->state_cached & NVMM_X64_STATE_GPRS) == 0);
	/* So a register written without setstate is fetched again... */
	vcpu.state->gprs[NVMM_X64_GPR_RBX] = 0xdead;
	OK(nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_GPRS));
	TRUE(vcpu.state->gprs[NVMM_X64_GPR_RBX] == DATA_GPA);
	/* ...showing the OUT not done, as NetBSD does. */
	TRUE(vcpu.state->gprs[NVMM_X64_GPR_RIP] == CODE_GPA + 2);
	TRUE((vcpu.state->gprs[NVMM_X64_GPR_RAX] & 0xff) == 0x11);
	TRUE((comm->state_cached & NVMM_X64_STATE_GPRS) != 0);
	/* Cached from then on: a write without setstate now stays. */
	vcpu.state->gprs[NVMM_X64_GPR_RBX] = 0xbeef;
	OK(nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_GPRS));
	TRUE(vcpu.state->gprs[NVMM_X64_GPR_RBX] == 0xbeef);
	OK(nvmm_assist_io(&mach, &vcpu));
	passed("GPRS of an I/O exit are fetched at getstate, not provided with it");
}

/* ---- callbacks that call back ---------------------------------------------- */

static int callback_checks;
static struct nvmm_snapshot *callback_snap;

static void
io_reentrant(struct nvmm_io *io)
{
	struct nvmm_vcpu *v = io->vcpu;
	uintptr_t hva;
	nvmm_prot_t prot;

	/* As NVMM's assist shows it: the OUT not done yet. */
	if (nvmm_vcpu_getstate(io->mach, v, NVMM_X64_STATE_ALL) == 0 &&
	    v->state->gprs[NVMM_X64_GPR_RIP] == CODE_GPA + 2)
		callback_checks++;
	v->state->gprs[NVMM_X64_GPR_RBX] = 0x1234;
	if (nvmm_vcpu_setstate(io->mach, v, NVMM_X64_STATE_GPRS) == 0)
		callback_checks++;
	v->event->type = NVMM_VCPU_EVENT_INTR;
	v->event->vector = 0x40;
	if (nvmm_vcpu_inject(io->mach, v) == 0)
		callback_checks++;
	if (nvmm_gpa_to_hva(io->mach, CODE_GPA, &hva, &prot) == 0 && hva == (uintptr_t)code)
		callback_checks++;
	if (map_data() != NULL)
		callback_checks++;
	/* Running it from here is refused, and so is destroying it or its
	 * machine, or snapshotting the machine (the assist holds the VCPU). */
	if (nvmm_vcpu_run(io->mach, v) == -1 && errno == EBUSY)
		callback_checks++;
	if (nvmm_vcpu_destroy(io->mach, v) == -1 && errno == EBUSY)
		callback_checks++;
	if (nvmm_machine_destroy(io->mach) == -1 && errno == EBUSY)
		callback_checks++;
	if (nvmm_machine_snapshot(io->mach, &callback_snap) == -1 && errno == EBUSY)
		callback_checks++;
}

static void
test_reentrant_io(void)
{
	/* mov al,0x11 ; out 0x10,al ; hlt ; handler for 0x40 at 0x300:
	 * mov byte [0x1000],0x40 ; hlt */
	static const uint8_t c[] = { 0xb0, 0x11, 0xe6, 0x10, 0xf4 };
	struct nvmm_assist_callbacks cbs = { io_reentrant, mem_none };
	struct nvmm_assist_callbacks plain = { io_record, mem_none };

	start(MODE_16, c, sizeof(c), 0);
	memcpy(code + 0x300, "\xc6\x06\x00\x10\x40\xf4", 6);
	memset(code + 0x400, 0, 4);
	/* IVT entry 0x40 -> 0x200:0x300 (CODE_GPA = 0x2000). */
	OK(nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_SEGS));
	vcpu.state->segs[NVMM_X64_SEG_IDT].base = CODE_GPA + 0x400 - 0x40 * 4;
	vcpu.state->segs[NVMM_X64_SEG_IDT].limit = 0x3ff;
	OK(nvmm_vcpu_setstate(&mach, &vcpu, NVMM_X64_STATE_SEGS));
	code[0x400] = 0x00;
	code[0x401] = 0x03;
	code[0x402] = 0x00;
	code[0x403] = 0x02;
	OK(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CALLBACKS, &cbs));
	callback_checks = 0;
	TRUE(run() == NVMM_VCPU_EXIT_IO);
	OK(nvmm_assist_io(&mach, &vcpu));
	TRUE(callback_checks == 9);
	TRUE(callback_snap == NULL);
	/* The assist kept the callback's change and finished the OUT. */
	TRUE(gpr(NVMM_X64_GPR_RBX) == 0x1234);
	TRUE(vcpu.state->gprs[NVMM_X64_GPR_RIP] == CODE_GPA + 4);
	/* The event injected from the callback is delivered. */
	TRUE(run() == NVMM_VCPU_EXIT_HALTED);
	TRUE(data_page != NULL && ((uint8_t *)data_page)[0] == 0x40);
	OK(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CALLBACKS, &plain));
	passed("I/O callback calls back");
}

static void
mem_reentrant(struct nvmm_mem *mem)
{
	struct nvmm_vcpu *v = mem->vcpu;

	if (!mem->write)
		memset(mem->data, 0x66, mem->size);
	if (nvmm_vcpu_getstate(mem->mach, v, NVMM_X64_STATE_GPRS) == 0 &&
	    v->state->gprs[NVMM_X64_GPR_RIP] == CODE_GPA)
		callback_checks++;
	v->state->gprs[NVMM_X64_GPR_RDX] = 0xdd;
	if (nvmm_vcpu_setstate(mem->mach, v, NVMM_X64_STATE_GPRS) == 0)
		callback_checks++;
	if (nvmm_vcpu_stop(v) == 0)
		callback_checks++;
}

static void
test_reentrant_mem(void)
{
	/* mov al,[bx] ; hlt with BX at unmapped DATA_GPA */
	static const uint8_t c[] = { 0x8a, 0x07, 0xf4 };
	struct nvmm_assist_callbacks cbs = { io_record, mem_reentrant };
	struct nvmm_assist_callbacks plain = { io_record, mem_none };

	start(MODE_16, c, sizeof(c), 0);
	OK(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CALLBACKS, &cbs));
	callback_checks = 0;
	TRUE(run() == NVMM_VCPU_EXIT_MEMORY);
	OK(nvmm_assist_mem(&mach, &vcpu));
	TRUE(callback_checks == 3);
	OK(nvmm_vcpu_getstate(&mach, &vcpu, NVMM_X64_STATE_GPRS));
	TRUE(vcpu.state->gprs[NVMM_X64_GPR_RDX] == 0xdd);
	TRUE((vcpu.state->gprs[NVMM_X64_GPR_RAX] & 0xff) == 0x66);
	TRUE(vcpu.state->gprs[NVMM_X64_GPR_RIP] == CODE_GPA + 2);
	/* The stop requested from the callback. */
	TRUE(run() == NVMM_VCPU_EXIT_STOPPED);
	TRUE(run() == NVMM_VCPU_EXIT_HALTED);
	OK(nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CALLBACKS, &plain));
	passed("memory callback calls back");
}

int
main(void)
{
	struct nvmm_assist_callbacks cbs = { io_record, mem_none };

	if (nvmm_init() == -1)
		err(EXIT_FAILURE, "nvmm_init");
	if (nvmm_machine_create(&mach) == -1)
		err(EXIT_FAILURE, "nvmm_machine_create");
	if (nvmm_vcpu_create(&mach, 0, &vcpu) == -1)
		err(EXIT_FAILURE, "nvmm_vcpu_create");
	if (nvmm_vcpu_configure(&mach, &vcpu, NVMM_VCPU_CONF_CALLBACKS, &cbs) == -1)
		err(EXIT_FAILURE, "NVMM_VCPU_CONF_CALLBACKS");
	code = map_code(&mach, MODE_64);
	test_mode(MODE_64);
	test_mode(MODE_32);
	test_mode(MODE_16);
	test_tpr();
	test_state_fetched_at_getstate();
	test_reentrant_io();
	test_reentrant_mem();
	printf("%d failures\n", failures);
	return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
