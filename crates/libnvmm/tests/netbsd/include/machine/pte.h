/*
 * The page-table entry type and bits NetBSD's <machine/pte.h> gives the
 * libnvmm regression programs (Intel SDM, vol. 3A, 4.5). Part of nvmm-rs's
 * shim for building those programs on Linux.
 */
#ifndef NVMM_SHIM_MACHINE_PTE_H
#define NVMM_SHIM_MACHINE_PTE_H

#include <stdint.h>
#include <x86/specialreg.h>

#ifndef NVMM_SHIM_PT_ENTRY_T
#define NVMM_SHIM_PT_ENTRY_T
typedef uint64_t pt_entry_t;
#endif

/* DragonFly's names, which the NetBSD names below are spelled as. */
#define X86_PG_V 0x0000000000000001ULL
#define X86_PG_RW 0x0000000000000002ULL
#define X86_PG_U 0x0000000000000004ULL
#define X86_PG_PS 0x0000000000000080ULL
#define X86_PG_NX 0x8000000000000000ULL

#define PTE_P X86_PG_V
#define PTE_W X86_PG_RW
#define PTE_U X86_PG_U
#define PTE_PWT 0x0000000000000008ULL
#define PTE_PCD 0x0000000000000010ULL
#define PTE_A 0x0000000000000020ULL
#define PTE_D 0x0000000000000040ULL
#define PTE_PS X86_PG_PS
#define PTE_G 0x0000000000000100ULL
#define PTE_NX X86_PG_NX

/* The names of NetBSD 8 and older. */
#define PG_V PTE_P
#define PG_RW PTE_W
#define PG_u PTE_U
#define PG_PS PTE_PS
#define PG_NX PTE_NX

#endif
