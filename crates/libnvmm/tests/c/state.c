/*
 * The comm-page contract and the rest of the VCPU API: NVMM's RESET state,
 * getstate only fetching what is not cached (and leaving cached, unset
 * changes alone), setstate committing at the next run, events injected at
 * the next run, window exits (one the guest opens for two instructions
 * too), exitstate, MSR exits completed NVMM's way
 * (registers and RIP = npc through the state), nvmm_vcpu_dump, machine
 * information, several VCPUs, and the <sys/cdefs.h> helpers NetBSD
 * programs use.
 */

#include <nvmm.h>

#include <err.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE_SIZE	4096
#define RAM_SIZE	(16 * PAGE_SIZE)

static int failures, checks;

#define TRUE(cond) do {							\
	checks++;							\
	if (!(cond)) {							\
		printf("FAIL line %d: %s\n", __LINE__, #cond);		\
		failures++;						\
	}								\
} while (0)

#define OK(call) do {							\
	if ((call) == -1)						\
		err(EXIT_FAILURE, "line %d: %s", __LINE__, #call);	\
} while (0)

static struct nvmm_machine mach;
static uint8_t *ram;

static uint64_t
run(struct nvmm_vcpu *vcpu)
{
	do {
		OK(nvmm_vcpu_run(&mach, vcpu));
	} while (vcpu->exit->reason == NVMM_VCPU_EXIT_NONE);
	return vcpu->exit->reason;
}

/* Real mode, CS=0, code at `ip`. */
static void
start_at(struct nvmm_vcpu *vcpu, uint16_t ip)
{
	OK(nvmm_vcpu_getstate(&mach, vcpu, NVMM_X64_STATE_SEGS | NVMM_X64_STATE_GPRS));
	vcpu->state->segs[NVMM_X64_SEG_CS].base = 0;
	vcpu->state->segs[NVMM_X64_SEG_CS].selector = 0;
	vcpu->state->gprs[NVMM_X64_GPR_RIP] = ip;
	OK(nvmm_vcpu_setstate(&mach, vcpu, NVMM_X64_STATE_SEGS | NVMM_X64_STATE_GPRS));
}

/* IVT entry `vector` (the IVT at 0) = 0000:`ip`. */
static void
set_vector(uint8_t vector, uint16_t ip)
{
	ram[vector * 4 + 0] = ip & 0xFF;
	ram[vector * 4 + 1] = ip >> 8;
	ram[vector * 4 + 2] = 0x00;
	ram[vector * 4 + 3] = 0x00;
}

/* start_at, with the IDT register on the IVT at 0. */
static void
start_with_ivt(struct nvmm_vcpu *vcpu, uint16_t ip)
{
	start_at(vcpu, ip);
	OK(nvmm_vcpu_getstate(&mach, vcpu, NVMM_X64_STATE_SEGS));
	vcpu->state->segs[NVMM_X64_SEG_IDT].base = 0;
	vcpu->state->segs[NVMM_X64_SEG_IDT].limit = 0x3FF;
	OK(nvmm_vcpu_setstate(&mach, vcpu, NVMM_X64_STATE_SEGS));
}

/* Arms the interrupt window, NetBSD-test style: getstate, set, setstate. */
static void
arm_int_window(struct nvmm_vcpu *vcpu)
{
	OK(nvmm_vcpu_getstate(&mach, vcpu, NVMM_X64_STATE_INTR));
	vcpu->state->intr.int_window_exiting = 1;
	OK(nvmm_vcpu_setstate(&mach, vcpu, NVMM_X64_STATE_INTR));
}

static uint32_t
ram32(size_t off)
{
	uint32_t v;

	memcpy(&v, ram + off, 4);
	return v;
}

static void
test_reset_state(struct nvmm_vcpu *vcpu)
{
	struct nvmm_x64_state *s = vcpu->state;

	/* Cached from creation: no fetch needed, and all of it is there. */
	OK(nvmm_vcpu_getstate(&mach, vcpu, NVMM_X64_STATE_ALL));
	TRUE(s->segs[NVMM_X64_SEG_CS].selector == 0xF000);
	TRUE(s->segs[NVMM_X64_SEG_CS].base == 0xFFFF0000);
	TRUE(s->segs[NVMM_X64_SEG_CS].limit == 0xFFFF);
	TRUE(s->segs[NVMM_X64_SEG_CS].attrib.type == 3 && s->segs[NVMM_X64_SEG_CS].attrib.s == 1 &&
	    s->segs[NVMM_X64_SEG_CS].attrib.p == 1);
	TRUE(s->segs[NVMM_X64_SEG_TR].attrib.type == 3 && s->segs[NVMM_X64_SEG_TR].attrib.s == 0);
	TRUE(s->segs[NVMM_X64_SEG_LDT].attrib.type == 2);
	TRUE(s->gprs[NVMM_X64_GPR_RIP] == 0xFFF0 && s->gprs[NVMM_X64_GPR_RDX] == 0x600);
	TRUE(s->gprs[NVMM_X64_GPR_RFLAGS] == 0x2 && s->gprs[NVMM_X64_GPR_RAX] == 0);
	TRUE(s->crs[NVMM_X64_CR_CR0] == 0x60000010 && s->crs[NVMM_X64_CR_XCR0] == 1);
	TRUE(s->drs[NVMM_X64_DR_DR6] == 0xFFFF0FF0 && s->drs[NVMM_X64_DR_DR7] == 0x400);
	TRUE(s->msrs[NVMM_X64_MSR_PAT] == 0x0007040600070406ULL);
	TRUE(s->msrs[NVMM_X64_MSR_EFER] == 0);
	TRUE(s->fpu.fx_cw == 0x40 && s->fpu.fx_tw == 0x55 && s->fpu.fx_mxcsr == 0x1F80);
	TRUE(!s->intr.int_shadow && !s->intr.int_window_exiting);
}

static void
test_caching(struct nvmm_vcpu *vcpu)
{
	/* mov [0x800],eax ; mov [0x804],ebx ; hlt */
	static const uint8_t code[] = {
		0x66, 0xa3, 0x00, 0x08,
		0x66, 0x89, 0x1e, 0x04, 0x08,
		0xf4,
	};

	memcpy(ram + 0x100, code, sizeof(code));
	start_at(vcpu, 0x100);
	OK(nvmm_vcpu_getstate(&mach, vcpu, NVMM_X64_STATE_GPRS));
	vcpu->state->gprs[NVMM_X64_GPR_RAX] = 0x11111111;
	vcpu->state->gprs[NVMM_X64_GPR_RBX] = 0x22222222;
	OK(nvmm_vcpu_setstate(&mach, vcpu, NVMM_X64_STATE_GPRS));
	/* A change made after setstate survives a getstate (cached)... */
	vcpu->state->gprs[NVMM_X64_GPR_RBX] = 0x33333333;
	OK(nvmm_vcpu_getstate(&mach, vcpu, NVMM_X64_STATE_GPRS));
	TRUE(vcpu->state->gprs[NVMM_X64_GPR_RBX] == 0x33333333);
	/*
	 * ...and lands too: vcpu->state is the comm page's state, which the
	 * run commits (NetBSD's libnvmm, NVMM_USER_VERSION 2).
	 */
	TRUE(run(vcpu) == NVMM_VCPU_EXIT_HALTED);
	TRUE(ram32(0x800) == 0x11111111 && ram32(0x804) == 0x33333333);
	/* After a run the state is fetched again. */
	OK(nvmm_vcpu_getstate(&mach, vcpu, NVMM_X64_STATE_GPRS));
	TRUE(vcpu->state->gprs[NVMM_X64_GPR_RBX] == 0x33333333);
	TRUE(vcpu->state->gprs[NVMM_X64_GPR_RIP] == 0x100 + sizeof(code));
}

static void
test_msr_through_state(struct nvmm_vcpu *vcpu)
{
	/*
	 * mov ecx,0xdead0001 ; rdmsr ; mov [0x810],eax ; mov [0x814],edx ;
	 * mov eax,0x33 ; mov edx,0x44 ; wrmsr ; hlt
	 */
	static const uint8_t code[] = {
		0x66, 0xb9, 0x01, 0x00, 0xad, 0xde,
		0x0f, 0x32,
		0x66, 0xa3, 0x10, 0x08,
		0x66, 0x89, 0x16, 0x14, 0x08,
		0x66, 0xb8, 0x33, 0x00, 0x00, 0x00,
		0x66, 0xba, 0x44, 0x00, 0x00, 0x00,
		0x0f, 0x30,
		0xf4,
	};
	uint64_t npc;

	memcpy(ram + 0x200, code, sizeof(code));
	start_at(vcpu, 0x200);
	TRUE(run(vcpu) == NVMM_VCPU_EXIT_RDMSR);
	TRUE(vcpu->exit->u.rdmsr.msr == 0xdead0001);
	npc = vcpu->exit->u.rdmsr.npc;
	TRUE(npc == 0x208);
	/* Left alone, the guest executes the RDMSR again. */
	TRUE(run(vcpu) == NVMM_VCPU_EXIT_RDMSR && vcpu->exit->u.rdmsr.npc == npc);
	/* Emulated NVMM's way. */
	OK(nvmm_vcpu_getstate(&mach, vcpu, NVMM_X64_STATE_GPRS));
	TRUE(vcpu->state->gprs[NVMM_X64_GPR_RIP] == npc - 2);
	vcpu->state->gprs[NVMM_X64_GPR_RAX] = 0xAABBCCDD;
	vcpu->state->gprs[NVMM_X64_GPR_RDX] = 0x11223344;
	vcpu->state->gprs[NVMM_X64_GPR_RIP] = npc;
	OK(nvmm_vcpu_setstate(&mach, vcpu, NVMM_X64_STATE_GPRS));
	TRUE(run(vcpu) == NVMM_VCPU_EXIT_WRMSR);
	TRUE(vcpu->exit->u.wrmsr.msr == 0xdead0001);
	TRUE(vcpu->exit->u.wrmsr.val == 0x0000004400000033ULL);
	OK(nvmm_vcpu_getstate(&mach, vcpu, NVMM_X64_STATE_GPRS));
	vcpu->state->gprs[NVMM_X64_GPR_RIP] = vcpu->exit->u.wrmsr.npc;
	OK(nvmm_vcpu_setstate(&mach, vcpu, NVMM_X64_STATE_GPRS));
	TRUE(run(vcpu) == NVMM_VCPU_EXIT_HALTED);
	TRUE(ram32(0x810) == 0xAABBCCDD && ram32(0x814) == 0x11223344);
}

static void
test_events(struct nvmm_vcpu *vcpu)
{
	/* Handler for vector 0x40 at 0:0x300: mov byte [0x820],0x5a ; hlt */
	static const uint8_t handler[] = { 0xc6, 0x06, 0x20, 0x08, 0x5a, 0xf4 };
	/* sti ; mov dx,0x3f8 ; out dx,al ; jmp . */
	static const uint8_t code[] = { 0xfb, 0xba, 0xf8, 0x03, 0xee, 0xeb, 0xfe };

	memcpy(ram + 0x300, handler, sizeof(handler));
	memcpy(ram + 0x400, code, sizeof(code));
	set_vector(0x40, 0x300);
	start_with_ivt(vcpu, 0x400);

	TRUE(run(vcpu) == NVMM_VCPU_EXIT_IO);
	TRUE(vcpu->exit->exitstate.rflags & 0x200);	/* IF, after the STI */
	TRUE(!vcpu->exit->exitstate.int_window_exiting && !vcpu->exit->exitstate.evt_pending);

	/* Ask for the interrupt window, then inject when it opens. */
	arm_int_window(vcpu);
	TRUE(run(vcpu) == NVMM_VCPU_EXIT_INT_READY);
	TRUE(!vcpu->exit->exitstate.int_window_exiting);
	vcpu->event->type = NVMM_VCPU_EVENT_INTR;
	vcpu->event->vector = 0x40;
	OK(nvmm_vcpu_inject(&mach, vcpu));
	/* The event is read at the run, not at inject. */
	vcpu->event->vector = 0x40;
	TRUE(run(vcpu) == NVMM_VCPU_EXIT_HALTED);
	TRUE(ram[0x820] == 0x5a);
}

static void
zero_in(struct nvmm_io *io)
{
	if (io->in)
		memset(io->data, 0, io->size);
}

/*
 * QEMU's pattern with SeaBIOS's wait for an interrupt: the window is armed
 * while the guest has interrupts off, and the guest opens it for two
 * instructions between reads of a timer port. The window exit comes there
 * (RIP on the PAUSE), before any further I/O exit, and the interrupt
 * injected then is taken.
 */
static void
test_short_window(struct nvmm_vcpu *vcpu)
{
	/* Handler for vector 0x41 at 0:0x340: mov byte [0x821],0x5b ; hlt */
	static const uint8_t handler[] = { 0xc6, 0x06, 0x21, 0x08, 0x5b, 0xf4 };
	/* cli ; 1: in al,0x80 ; sti ; nop ; pause ; cli ; jmp 1b */
	static const uint8_t code[] = { 0xfa, 0xe4, 0x80, 0xfb, 0x90, 0xf3, 0x90, 0xfa, 0xeb, 0xf7 };
	struct nvmm_assist_callbacks cbs = { .io = zero_in, .mem = NULL };
	int ios = 0;

	memcpy(ram + 0x340, handler, sizeof(handler));
	memcpy(ram + 0x500, code, sizeof(code));
	set_vector(0x41, 0x340);
	OK(nvmm_vcpu_configure(&mach, vcpu, NVMM_VCPU_CONF_CALLBACKS, &cbs));
	start_with_ivt(vcpu, 0x500);

	TRUE(run(vcpu) == NVMM_VCPU_EXIT_IO);
	TRUE(!(vcpu->exit->exitstate.rflags & 0x200));
	OK(nvmm_assist_io(&mach, vcpu));
	arm_int_window(vcpu);
	while (run(vcpu) == NVMM_VCPU_EXIT_IO && ++ios < 100)
		OK(nvmm_assist_io(&mach, vcpu));
	TRUE(ios == 0);
	TRUE(vcpu->exit->reason == NVMM_VCPU_EXIT_INT_READY);
	TRUE(vcpu->exit->exitstate.rflags & 0x200);
	TRUE(!vcpu->exit->exitstate.int_window_exiting && !vcpu->exit->exitstate.int_shadow);
	OK(nvmm_vcpu_getstate(&mach, vcpu, NVMM_X64_STATE_GPRS));
	TRUE(vcpu->state->gprs[NVMM_X64_GPR_RIP] == 0x505);
	vcpu->event->type = NVMM_VCPU_EVENT_INTR;
	vcpu->event->vector = 0x41;
	OK(nvmm_vcpu_inject(&mach, vcpu));
	TRUE(run(vcpu) == NVMM_VCPU_EXIT_HALTED);
	TRUE(ram[0x821] == 0x5b);
}

static void
test_dump_and_info(struct nvmm_vcpu *vcpu)
{
	struct nvmm_ctl_mach_info info;
	char buf[8192];
	FILE *f;
	size_t n;
	int saved;

	/* nvmm_vcpu_dump writes to stdout: capture it. */
	fflush(stdout);
	f = tmpfile();
	if (f == NULL)
		err(EXIT_FAILURE, "tmpfile");
	saved = dup(STDOUT_FILENO);
	dup2(fileno(f), STDOUT_FILENO);
	OK(nvmm_vcpu_dump(&mach, vcpu));
	fflush(stdout);
	dup2(saved, STDOUT_FILENO);
	close(saved);
	rewind(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	TRUE(strstr(buf, "+ VCPU id=1") != NULL);
	TRUE(strstr(buf, "-> CS:") != NULL && strstr(buf, "-> TR:") != NULL);

	memset(&info, 0, sizeof(info));
	info.machid = mach.machid;
	OK(nvmm_ctl(NVMM_CTL_MACH_INFO, &info, sizeof(info)));
	TRUE(info.nvcpus == 2 && info.nram == RAM_SIZE && info.pid == getpid());
}

static void
test_cdefs(void)
{
	static const int arr[7] = { 0 };

	TRUE(__BIT(0) == 1 && __BIT(63) == 0x8000000000000000ULL && __BIT(64) == 0);
	TRUE(__BITS(7, 4) == 0xF0 && __BITS(4, 7) == 0xF0 && __BITS(63, 0) == ~0ULL);
	TRUE(__SHIFTOUT(0x1230, __BITS(11, 4)) == 0x23);
	TRUE(__SHIFTIN(0x23, __BITS(11, 4)) == 0x230);
	TRUE(__arraycount(arr) == 7);
	TRUE(NVMM_X64_STATE_ALL == 0x7F && EPROGMISMATCH != 0);
	TRUE(NVMM_CAP_ARCH_VCPU_CONF_TPR == 2);
}

int
main(void)
{
	struct nvmm_vcpu vcpu0, vcpu1;

	if (nvmm_init() == -1)
		err(EXIT_FAILURE, "nvmm_init");
	OK(nvmm_machine_create(&mach));
	ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE, -1, 0);
	if (ram == MAP_FAILED)
		err(EXIT_FAILURE, "mmap");
	OK(nvmm_hva_map(&mach, (uintptr_t)ram, RAM_SIZE));
	OK(nvmm_gpa_map(&mach, (uintptr_t)ram, 0, RAM_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC));
	OK(nvmm_vcpu_create(&mach, 0, &vcpu0));
	OK(nvmm_vcpu_create(&mach, 1, &vcpu1));

	test_reset_state(&vcpu0);
	test_caching(&vcpu0);
	test_msr_through_state(&vcpu1);
	test_events(&vcpu0);
	test_short_window(&vcpu0);
	test_dump_and_info(&vcpu1);
	test_cdefs();

	OK(nvmm_vcpu_destroy(&mach, &vcpu0));
	OK(nvmm_vcpu_destroy(&mach, &vcpu1));
	OK(nvmm_machine_destroy(&mach));
	printf("%d checks, %d failures\n", checks, failures);
	return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
