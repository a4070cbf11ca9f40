/*
 * test_uffd_place.c: lr_uffd_place (native/lazyd/uffd.c) maps all-zero pages as zero pages, allocating nothing,
 * and copies the others, on a userfaultfd of this process: the bytes read back equal the source and the
 * mapping's Rss (/proc/self/smaps) counts only the copied pages.
 */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "check.h"
#include "uffd.h"

#define NPAGES 8
static const char kinds[NPAGES + 1] = "DDZZZDZD"; /* D: data, Z: all zero */

static int open_uffd(char *area, uint64_t len)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -1;
	struct uffdio_api api = {.api = UFFD_API};
	struct uffdio_register reg = {.range = {(uint64_t)(uintptr_t)area, len}, .mode = UFFDIO_REGISTER_MODE_MISSING};
	if (ioctl(fd, UFFDIO_API, &api) || ioctl(fd, UFFDIO_REGISTER, &reg)) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Rss in kB of the mapping starting at area, or -1. */
static long rss_kb(const char *area)
{
	char want[32], line[256];
	snprintf(want, sizeof(want), "%lx-", (unsigned long)(uintptr_t)area);
	FILE *f = fopen("/proc/self/smaps", "r");
	long kb = -1;
	bool in = false;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f) && kb < 0) {
		if (strchr(line, '-') && strchr(line, ' ') > strchr(line, '-'))
			in = !strncmp(line, want, strlen(want));
		else if (in && !strncmp(line, "Rss:", 4))
			kb = strtol(line + 4, NULL, 10);
	}
	fclose(f);
	return kb;
}

static void fill(char *src, uint64_t ps)
{
	memset(src, 0, NPAGES * ps);
	for (int i = 0; i < NPAGES; i++)
		if (kinds[i] == 'D')
			src[i * ps + (i % 2 ? ps - 1 : 0)] = (char)(i + 1); /* first or last byte: both are looked at */
}

int main(void)
{
	const uint64_t ps = (uint64_t)sysconf(_SC_PAGESIZE), len = NPAGES * ps;
	char *src = malloc(len);
	char *area = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int uffd = area == MAP_FAILED ? -1 : open_uffd(area, len);
	struct lr_error err;
	CHECK(src && uffd >= 0);
	if (!src || uffd < 0) {
		printf("%lu passed, %lu failed\n", passed, failed);
		return 1;
	}
	fill(src, ps);
	uint64_t at = 0, zero_pages = 0;
	int calls = 0;
	while (at < len) {
		uint64_t done;
		bool zero;
		CHECK(lr_uffd_place(uffd, (uint64_t)(uintptr_t)area + at, src + at, len - at, ps, &done, &zero, &err) ==
		      LR_UFFD_OK);
		CHECK(done > 0 && zero == (kinds[at / ps] == 'Z'));
		zero_pages += zero ? done / ps : 0;
		at += done ? done : len;
		calls++;
	}
	CHECK(calls == 5); /* DD ZZZ D Z D */
	CHECK(zero_pages == 4);
	CHECK(!memcmp(area, src, len));
	CHECK(rss_kb(area) == (long)(4 * ps / 1024));
	uint64_t done;
	bool zero;
	CHECK(lr_uffd_place(uffd, (uint64_t)(uintptr_t)area + 2 * ps, src + 2 * ps, ps, ps, &done, &zero, &err) ==
	      LR_UFFD_EXISTS);
	CHECK(done == 0 && zero);
	close(uffd);
	munmap(area, len);
	free(src);
	printf("%lu passed, %lu failed\n", passed, failed);
	return failed ? 1 : 0;
}
