/*
 * Guest code for mem_assist.c: every test body exists four times, as
 * 64-bit, 32-bit and 16-bit guest code (accessing the MMIO page at guest
 * physical address 0x1000, then stopping with RDMSR 0xFFFFFFFF) and as a
 * native host function (accessing a host buffer), so that the result the
 * emulation leaves in the MMIO page can be compared with what the CPU
 * this program runs on produces.
 *
 * Bodies use a base register \b holding the buffer address, the string
 * registers \si, \di, \cx, and scratch registers %eax/%ecx/%edx (and their
 * 8/16-bit parts), with explicit operand sizes. They record what they
 * observe (loaded values, flags through LAHF/SETO) in the buffer itself.
 */

	.section .note.GNU-stack,"",@progbits
	.text

/* Flags after an operation into byte \off(\b): SF ZF AF PF CF, then OF. */
.macro FLAGS b, off
	lahf
	movb	%ah, \off(\b)
	seto	%ah
	movb	%ah, \off+1(\b)
.endm

.macro T_MOV b, si, di, cx
	movl	$0x11223344, (\b)
	movw	$0x5566, 4(\b)
	movb	$0x77, 6(\b)
	movl	$0xcafe, %ecx
	movw	%cx, 8(\b)
	movb	%ch, 10(\b)
	movl	(\b), %edx
	movl	%edx, 12(\b)
	movw	4(\b), %dx
	movw	%dx, 16(\b)
	movb	6(\b), %dl
	movb	%dl, 18(\b)
	movb	20(\b), %dh
	movb	%dh, 21(\b)
.endm

.macro T_ALU b, si, di, cx
	movl	$0x0f0f80ff, (\b)
	movl	$0x12345678, %ecx
	orl	%ecx, (\b)
	FLAGS	\b, 40
	andw	$0x00f0, 2(\b)
	FLAGS	\b, 42
	xorb	$0xff, 4(\b)
	FLAGS	\b, 44
	subl	$0x7fffffff, 8(\b)
	FLAGS	\b, 46
	movl	12(\b), %edx
	subl	(\b), %edx
	movl	%edx, 16(\b)
	FLAGS	\b, 48
	orw	20(\b), %dx
	movw	%dx, 22(\b)
	FLAGS	\b, 50
	xorl	24(\b), %edx
	movl	%edx, 28(\b)
	FLAGS	\b, 52
	andb	%dl, 32(\b)
	FLAGS	\b, 54
	addl	$0x7fffffff, 36(\b)
	FLAGS	\b, 56
.endm

.macro T_CMP b, si, di, cx
	movl	$0x80000000, (\b)
	cmpl	$1, (\b)
	FLAGS	\b, 8
	cmpb	$0x80, 3(\b)
	FLAGS	\b, 10
	movl	$0x7fff, %ecx
	cmpw	%cx, 2(\b)
	FLAGS	\b, 12
	cmpl	(\b), %ecx
	FLAGS	\b, 14
	testl	$0x80000000, (\b)
	FLAGS	\b, 16
	testb	$0x01, 4(\b)
	FLAGS	\b, 18
	movl	$0xffff, %edx
	testw	%dx, 6(\b)
	FLAGS	\b, 20
.endm

.macro T_XCHG b, si, di, cx
	movl	$0xaabbccdd, (\b)
	movl	$0x11223344, %ecx
	xchgl	%ecx, (\b)
	movl	%ecx, 4(\b)
	movw	$0x5566, %dx
	xchgw	8(\b), %dx
	movw	%dx, 12(\b)
	movb	$0x77, %dl
	xchgb	%dl, 14(\b)
	movb	%dl, 15(\b)
.endm

.macro T_MOVZX b, si, di, cx
	movl	$0xfedcba98, (\b)
	movl	$0xffffffff, %ecx
	movzbl	1(\b), %ecx
	movl	%ecx, 4(\b)
	movl	$0xffffffff, %edx
	movzwl	2(\b), %edx
	movl	%edx, 8(\b)
	movzbw	3(\b), %cx
	movw	%cx, 12(\b)
.endm

.macro T_STOS b, si, di, cx
	lea	8(\b), \di
	movl	$0x5a, %eax
	mov	$5, \cx
	rep stosb
	movl	$0x1234, %eax
	stosw
	movl	$0xdeadbeef, %eax
	mov	$2, \cx
	rep stosl
	/* Where the string pointer and the count ended. */
	movw	%cx, 2(\b)
	sub	\b, \di
	movw	%di, (\b)
.endm

.macro T_LODS b, si, di, cx
	movl	$0x87654321, 8(\b)
	movl	$0x0fedcba9, 12(\b)
	lea	8(\b), \si
	movl	$0xffffffff, %eax
	lodsb
	movl	%eax, 16(\b)
	lodsw
	movl	%eax, 20(\b)
	lodsl
	movl	%eax, 24(\b)
	sub	\b, \si
	movw	%si, (\b)
.endm

.macro T_MOVS b, si, di, cx
	movl	$0x44332211, 32(\b)
	movl	$0x88776655, 36(\b)
	lea	32(\b), \si
	lea	8(\b), \di
	mov	$3, \cx
	rep movsb
	mov	$2, \cx
	rep movsw
	movsb
	movw	%cx, 4(\b)
	sub	\b, \di
	movw	%di, (\b)
	sub	\b, \si
	movw	%si, 2(\b)
.endm

.macro T_CMPS b, si, di, cx
	movl	$0x04030201, 16(\b)
	movl	$0x08070605, 20(\b)
	movl	$0x04030201, 32(\b)
	movl	$0x08070f05, 36(\b)
	lea	16(\b), \si
	lea	32(\b), \di
	mov	$8, \cx
	repe cmpsb
	FLAGS	\b, 8
	movw	%cx, 10(\b)
	mov	\si, \di
	sub	\b, \di
	movw	%di, 12(\b)
	lea	16(\b), \si
	lea	32(\b), \di
	cmpsl
	FLAGS	\b, 4
	cmpsw
	FLAGS	\b, 6
.endm

/* The tests, in the order of mem_assist.c's table. */
#define TESTS(X) X(MOV) X(ALU) X(CMP) X(XCHG) X(MOVZX) X(STOS) X(LODS) X(MOVS) X(CMPS)

/* Guest code ends with RDMSR of MSR 0xFFFFFFFF, which exits. */
#define GUEST(bits, name, setup, b, si, di, cx)		\
	.globl	guest##bits##_##name##_begin;		\
	.globl	guest##bits##_##name##_end;		\
	.align	16;					\
guest##bits##_##name##_begin:				\
	setup;						\
	cld;						\
	T_##name b, si, di, cx;				\
	movl	$0xffffffff, %ecx;			\
	rdmsr;						\
guest##bits##_##name##_end:

#define GUEST64(name)	GUEST(64, name, movq $0x1000 COMMA %rbx, %rbx, %rsi, %rdi, %rcx)
#define GUEST32(name)	GUEST(32, name, movl $0x1000 COMMA %ebx, %ebx, %esi, %edi, %ecx)
#define GUEST16(name)	GUEST(16, name, movw $0x1000 COMMA %bx, %bx, %si, %di, %cx)
#define COMMA ,

	.code64
TESTS(GUEST64)

	.code32
TESTS(GUEST32)

	.code16
TESTS(GUEST16)

/* Native versions: void native_<name>(void *buffer). */
#define NATIVE(name)					\
	.globl	native_##name;				\
	.type	native_##name, @function;		\
native_##name:						\
	pushq	%rbx;					\
	movq	%rdi, %rbx;				\
	cld;						\
	T_##name %rbx, %rsi, %rdi, %rcx;		\
	popq	%rbx;					\
	ret;

	.code64
TESTS(NATIVE)
