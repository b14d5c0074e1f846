/*
 * What DragonFly's <machine/pmap.h> gives the libnvmm regression programs
 * that pick it when __NetBSD__ is not defined (as on Linux): the page-table
 * bits, PAGE_SIZE, and through the other headers the segment, RFLAGS and
 * control-register constants. Part of nvmm-rs's shim for building those
 * programs on Linux.
 */
#ifndef NVMM_SHIM_MACHINE_PMAP_H
#define NVMM_SHIM_MACHINE_PMAP_H

#include <machine/pte.h>
#include <machine/psl.h>
#include <machine/segments.h>
#include <x86/specialreg.h>

#ifndef PAGE_SIZE
#define PAGE_SIZE 4096
#endif

#endif
