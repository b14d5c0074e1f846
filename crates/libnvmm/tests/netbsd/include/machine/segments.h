/*
 * The x86 segment constants NetBSD's <machine/segments.h> gives the libnvmm
 * regression programs (values from the Intel SDM, vol. 3A, 3.4-3.5).
 * Part of nvmm-rs's shim for building those programs on Linux.
 */
#ifndef NVMM_SHIM_MACHINE_SEGMENTS_H
#define NVMM_SHIM_MACHINE_SEGMENTS_H

/* Requested privilege levels. */
#define SEL_KPL 0
#define SEL_UPL 3

/* Selector for GDT slot s at privilege r. */
#define GSEL(s, r) (((s) << 3) | (r))
/* NetBSD/amd64's GDT slots. */
#define GNULL_SEL 0
#define GCODE_SEL 1
#define GDATA_SEL 2
#define GUCODE_SEL 3
#define GUDATA_SEL 4

/* System segment types (S=0). */
#define SDT_SYSNULL 0
#define SDT_SYSLDT 2
#define SDT_SYS386TSS 9
#define SDT_SYSBSY 11
#define SDT_SYS386BSY SDT_SYSBSY
#define SDT_SYS386CGT 12
#define SDT_SYS386IGT 14
#define SDT_SYS386TGT 15

/* Memory segment types (S=1 in bit 4). */
#define SDT_MEMRO 16
#define SDT_MEMROA 17
#define SDT_MEMRW 18
#define SDT_MEMRWA 19
#define SDT_MEMROD 20
#define SDT_MEMRODA 21
#define SDT_MEMRWD 22
#define SDT_MEMRWDA 23
#define SDT_MEME 24
#define SDT_MEMEA 25
#define SDT_MEMER 26
#define SDT_MEMERA 27
#define SDT_MEMEC 28
#define SDT_MEMEAC 29
#define SDT_MEMERC 30
#define SDT_MEMERAC 31

#endif
