/*
 * The RFLAGS bits NetBSD's <machine/psl.h> gives the libnvmm regression
 * programs (Intel SDM, vol. 1, 3.4.3). Part of nvmm-rs's shim for building
 * those programs on Linux.
 */
#ifndef NVMM_SHIM_MACHINE_PSL_H
#define NVMM_SHIM_MACHINE_PSL_H

#define PSL_C 0x00000001
#define PSL_RESERVED_DEFAULT 0x00000002
/* Must-be-one bit; spelled as DragonFly's name so both spellings agree. */
#define PSL_MBO PSL_RESERVED_DEFAULT
#define PSL_PF 0x00000004
#define PSL_AF 0x00000010
#define PSL_Z 0x00000040
#define PSL_N 0x00000080
#define PSL_T 0x00000100
#define PSL_I 0x00000200
#define PSL_D 0x00000400
#define PSL_V 0x00000800
#define PSL_IOPL 0x00003000
#define PSL_NT 0x00004000
#define PSL_RF 0x00010000
#define PSL_VM 0x00020000
#define PSL_AC 0x00040000
#define PSL_VIF 0x00080000
#define PSL_VIP 0x00100000
#define PSL_ID 0x00200000

#endif
