/*
 * Shared by the assist test programs: a machine with code at guest
 * physical 0x2000, page 0x1000 for data (MMIO or RAM, as the test wants),
 * and a VCPU reset for each test into 64-bit (identity paging), 32-bit
 * protected or real mode, NetBSD-test style: getstate, rewrite, setstate.
 */

#ifndef GUEST_H
#define GUEST_H

#include <nvmm.h>

#define PAGE_SIZE	4096
#define DATA_GPA	0x1000
#define CODE_GPA	0x2000
#define PT_GPA		0x3000	/* L4, L3, L2, L1 at 0x3000..0x6fff */

enum mode { MODE_64, MODE_32, MODE_16 };
extern const char *const mode_names[3];

/* Maps a fresh zeroed page at `gpa`; returns its host address. */
void *guest_page(struct nvmm_machine *, gpaddr_t, int prot);

/* Maps the code page (returned) and, for 64-bit mode, the page tables. */
uint8_t *map_code(struct nvmm_machine *, enum mode);

/* Resets the VCPU for a test starting at CODE_GPA; FS gets `fs_base`. */
void reset_vcpu(struct nvmm_machine *, struct nvmm_vcpu *, enum mode,
    uint64_t fs_base);

/*
 * Runs until the RDMSR of MSR 0xFFFFFFFF that ends a test, sending MEMORY
 * and IO exits through the assists. 0 on success, -1 on an unexpected exit.
 */
int run_test_code(struct nvmm_machine *, struct nvmm_vcpu *);

/*
 * nvmm_init, then `test_mode` in 64-bit, 32-bit and real mode (each returns
 * its number of failures); the program's exit status.
 */
int run_every_mode(int (*test_mode)(enum mode));

#endif
