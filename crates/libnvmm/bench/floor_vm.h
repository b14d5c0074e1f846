/*
 * The bare floor's VM, shared by the C benchmarks: a VM with RAM_SIZE
 * bytes of RAM at GPA 0 (above it nothing: MMIO), `code` copied to CODE,
 * and one VCPU in real mode with CS base 0 and RIP at CODE. The includer
 * defines RAM_SIZE and CODE.
 */

#ifndef FLOOR_VM_H
#define FLOOR_VM_H

#include <linux/kvm.h>

#include <err.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

static void
floor_vm(int kvm, const uint8_t *code, size_t len, int *vcpu, struct kvm_run **run)
{
	struct kvm_userspace_memory_region region;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	uint8_t *ram;
	int vm, size;

	if ((vm = ioctl(kvm, KVM_CREATE_VM, 0)) < 0)
		err(EXIT_FAILURE, "KVM_CREATE_VM");
	ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE, -1, 0);
	if (ram == MAP_FAILED)
		err(EXIT_FAILURE, "mmap");
	memcpy(ram + CODE, code, len);
	memset(&region, 0, sizeof(region));
	region.memory_size = RAM_SIZE;
	region.userspace_addr = (uintptr_t)ram;
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		err(EXIT_FAILURE, "KVM_SET_USER_MEMORY_REGION");
	if ((*vcpu = ioctl(vm, KVM_CREATE_VCPU, 0)) < 0)
		err(EXIT_FAILURE, "KVM_CREATE_VCPU");
	if ((size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)) < 0)
		err(EXIT_FAILURE, "KVM_GET_VCPU_MMAP_SIZE");
	*run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, *vcpu, 0);
	if (*run == MAP_FAILED)
		err(EXIT_FAILURE, "mmap kvm_run");
	if (ioctl(*vcpu, KVM_GET_SREGS, &sregs) < 0)
		err(EXIT_FAILURE, "KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (ioctl(*vcpu, KVM_SET_SREGS, &sregs) < 0)
		err(EXIT_FAILURE, "KVM_SET_SREGS");
	memset(&regs, 0, sizeof(regs));
	regs.rip = CODE;
	regs.rflags = 2;
	if (ioctl(*vcpu, KVM_SET_REGS, &regs) < 0)
		err(EXIT_FAILURE, "KVM_SET_REGS");
}

#endif
