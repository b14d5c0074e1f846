/*
 * nvmm_root_init's view: nvmm_ctl(NVMM_CTL_MACH_INFO) describes the
 * machines of other processes using the library, which nvmm_init's view
 * does not show. A child process holds a machine with two VCPUs; this
 * process holds one with one VCPU. Walking every machine id, as NetBSD's
 * nvmmctl list does, finds this process's machine at its own id and the
 * child's exactly once (other processes' machines may be listed too).
 */

#include <nvmm.h>

#include <err.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int
main(void)
{
	struct nvmm_ctl_mach_info info;
	struct nvmm_capability cap;
	struct nvmm_machine mine;
	struct nvmm_vcpu vcpu;
	int ready[2], finish[2], failures = 0, seen_mine = 0, seen_child = 0;
	uint32_t machid;
	pid_t child;
	char c;

	if (pipe(ready) == -1 || pipe(finish) == -1)
		err(EXIT_FAILURE, "pipe");
	child = fork();
	if (child == -1)
		err(EXIT_FAILURE, "fork");
	if (child == 0) {
		struct nvmm_machine mach;
		struct nvmm_vcpu vcpu0, vcpu1;

		if (nvmm_init() == -1 || nvmm_machine_create(&mach) == -1 ||
		    nvmm_vcpu_create(&mach, 0, &vcpu0) == -1 ||
		    nvmm_vcpu_create(&mach, 1, &vcpu1) == -1)
			err(EXIT_FAILURE, "child setup");
		if (mach.machid != 0)
			errx(EXIT_FAILURE, "child machine id %u", mach.machid);
		if (write(ready[1], "r", 1) != 1)
			err(EXIT_FAILURE, "write");
		if (read(finish[0], &c, 1) != 1)
			err(EXIT_FAILURE, "read");
		_exit(EXIT_SUCCESS);
	}
	if (read(ready[0], &c, 1) != 1)
		errx(EXIT_FAILURE, "the child did not start");

	/* The ordinary view: only this process's machines (none). */
	if (nvmm_init() == -1)
		err(EXIT_FAILURE, "nvmm_init");
	memset(&info, 0, sizeof(info));
	info.machid = 0;
	if (nvmm_ctl(NVMM_CTL_MACH_INFO, &info, sizeof(info)) != -1 || errno != ENOENT) {
		printf("FAIL: nvmm_init's view shows another process's machine\n");
		failures++;
	}

	/* The root view sees the child's machine, and ours at its own id. */
	if (nvmm_root_init() == -1)
		err(EXIT_FAILURE, "nvmm_root_init");
	if (nvmm_capability(&cap) == -1)
		err(EXIT_FAILURE, "nvmm_capability");
	if (nvmm_machine_create(&mine) == -1 ||
	    nvmm_vcpu_create(&mine, 0, &vcpu) == -1)
		err(EXIT_FAILURE, "parent setup");
	for (machid = 0; machid < cap.max_machines; machid++) {
		memset(&info, 0, sizeof(info));
		info.machid = machid;
		if (nvmm_ctl(NVMM_CTL_MACH_INFO, &info, sizeof(info)) == -1) {
			if (errno != ENOENT) {
				printf("FAIL: nvmm_ctl(%u): %s\n", machid,
				    strerror(errno));
				failures++;
			}
			continue;
		}
		if (info.pid == getpid()) {
			if (machid != mine.machid || info.nvcpus != 1) {
				printf("FAIL: own machine at %u (not %u), "
				    "nvcpus %u\n", machid, mine.machid,
				    info.nvcpus);
				failures++;
			}
			seen_mine++;
		} else if (info.pid == child) {
			if (info.nvcpus != 2 || info.time <= 0) {
				printf("FAIL: child's machine: nvcpus %u "
				    "time %lld\n", info.nvcpus,
				    (long long)info.time);
				failures++;
			}
			seen_child++;
		}
	}
	if (seen_mine != 1 || seen_child != 1) {
		printf("FAIL: own machine listed %d times, child's %d times\n",
		    seen_mine, seen_child);
		failures++;
	}
	memset(&info, 0, sizeof(info));
	info.machid = cap.max_machines;
	if (nvmm_ctl(NVMM_CTL_MACH_INFO, &info, sizeof(info)) != -1 ||
	    errno != EINVAL) {
		printf("FAIL: machid past max_machines is not EINVAL\n");
		failures++;
	}
	if (nvmm_machine_destroy(&mine) == -1)
		err(EXIT_FAILURE, "nvmm_machine_destroy");

	if (write(finish[1], "f", 1) != 1)
		err(EXIT_FAILURE, "write");
	waitpid(child, NULL, 0);
	printf("%d failures\n", failures);
	return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
