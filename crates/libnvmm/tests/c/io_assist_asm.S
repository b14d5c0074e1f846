/*
 * Guest code for io_assist.c, assembled for 64-bit, 32-bit and 16-bit
 * mode. Every test uses port 123, the data page (RAM) at guest physical
 * 0x1000 through base register \b, writes what it observes there, and
 * stops with RDMSR 0xFFFFFFFF.
 */

	.section .note.GNU-stack,"",@progbits
	.text

/* IN of each size into a preloaded accumulator, and IN from an immediate port. */
.macro T_IN b, si, di, cx
	movw	$123, %dx
	movl	$0x11223344, %eax
	inb	%dx, %al
	movl	%eax, 0(\b)
	movl	$0x55667788, %eax
	inw	%dx, %ax
	movl	%eax, 4(\b)
	inl	%dx, %eax
	movl	%eax, 8(\b)
	inb	$123, %al
	movb	%al, 12(\b)
.endm

/* OUT of each size, and OUT to an immediate port. */
.macro T_OUT b, si, di, cx
	movw	$123, %dx
	movl	$0x44434241, %eax	/* "ABCD" */
	outb	%al, %dx
	outw	%ax, %dx
	outl	%eax, %dx
	outb	%al, $123
.endm

/* REP INS of each size; where RDI and RCX end. */
.macro T_INS b, si, di, cx
	movw	$123, %dx
	lea	16(\b), \di
	mov	$5, \cx
	rep insb
	mov	$3, \cx
	rep insw
	mov	$2, \cx
	rep insl
	movw	%cx, 2(\b)
	sub	\b, \di
	movw	%di, 0(\b)
.endm

/* REP OUTS of each size; where RSI ends. */
.macro T_OUTS b, si, di, cx
	movw	$123, %dx
	lea	32(\b), \si
	mov	$5, \cx
	rep outsb
	mov	$3, \cx
	rep outsw
	mov	$2, \cx
	rep outsl
	sub	\b, \si
	movw	%si, 0(\b)
.endm

/* REP INSB with DF set: stores downwards. */
.macro T_INS_DOWN b, si, di, cx
	movw	$123, %dx
	lea	40(\b), \di
	mov	$4, \cx
	std
	rep insb
	cld
	sub	\b, \di
	movw	%di, 0(\b)
.endm

/* REP OUTSB through an FS override (FS base: the data page). */
.macro T_OUTS_FS b, si, di, cx
	movw	$123, %dx
	mov	$48, \si
	mov	$4, \cx
	rep outsb %fs:(\si), %dx
.endm

#define TESTS(X) X(IN) X(OUT) X(INS) X(OUTS) X(INS_DOWN) X(OUTS_FS)

#define GUEST(bits, name, setup, b, si, di, cx)		\
	.globl	io##bits##_##name##_begin;		\
	.globl	io##bits##_##name##_end;		\
	.align	16;					\
io##bits##_##name##_begin:				\
	setup;						\
	cld;						\
	T_##name b, si, di, cx;				\
	movl	$0xffffffff, %ecx;			\
	rdmsr;						\
io##bits##_##name##_end:

#define COMMA ,
#define GUEST64(name)	GUEST(64, name, movq $0x1000 COMMA %rbx, %rbx, %rsi, %rdi, %rcx)
#define GUEST32(name)	GUEST(32, name, movl $0x1000 COMMA %ebx, %ebx, %esi, %edi, %ecx)
#define GUEST16(name)	GUEST(16, name, movw $0x1000 COMMA %bx, %bx, %si, %di, %cx)

	.code64
TESTS(GUEST64)
	.code32
TESTS(GUEST32)
	.code16
TESTS(GUEST16)
