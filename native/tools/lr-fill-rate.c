/*
 * lr-fill-rate: how fast this machine fills fresh anonymous memory, the
 * ceiling for any restore (eager or lazy) that must write every page once.
 *
 * Copies --mib MiB from a small, already resident source buffer into newly
 * mapped anonymous memory (never touched before, as a restored process's is)
 * with --threads threads, and prints one JSON line. With --uffd the region is
 * registered with userfaultfd and filled with UFFDIO_COPY, 1 MiB per call, as
 * a lazy-pages daemon fills it (no verification, no file reads: the fastest
 * any daemon could place pages here). The bench runs it beside the restores
 * so drain rates can be read against what the VM allows.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define SRC_BYTES (64UL << 20)
#define STEP (1UL << 20)

struct job {
	char *dst;
	const char *src;
	size_t len;
	int uffd; /* -1: memcpy */
	int err;  /* errno of a failed UFFDIO_COPY */
};

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int uffd_copy(int uffd, char *dst, const char *src, size_t len)
{
	struct uffdio_copy c = {.dst = (unsigned long)dst, .src = (unsigned long)src, .len = len};
	while (ioctl(uffd, UFFDIO_COPY, &c)) {
		if (errno != EAGAIN)
			return errno;
		size_t done = c.copy > 0 ? (size_t)c.copy : 0;
		c = (struct uffdio_copy){.dst = c.dst + done, .src = c.src + done, .len = c.len - done};
	}
	return 0;
}

static void *fill(void *arg)
{
	struct job *j = arg;
	for (size_t off = 0; off < j->len && !j->err; off += STEP) {
		size_t n = j->len - off < STEP ? j->len - off : STEP;
		if (j->uffd < 0)
			memcpy(j->dst + off, j->src + off % SRC_BYTES, n);
		else
			j->err = uffd_copy(j->uffd, j->dst + off, j->src + off % SRC_BYTES, n);
	}
	return NULL;
}

/* A userfaultfd with the region registered for missing-page faults, or -1 with errno set. */
static int register_region(char *dst, size_t len)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	struct uffdio_api api = {.api = UFFD_API};
	struct uffdio_register reg = {.range = {(unsigned long)dst, len}, .mode = UFFDIO_REGISTER_MODE_MISSING};
	if (fd < 0)
		return -1;
	if (ioctl(fd, UFFDIO_API, &api) || ioctl(fd, UFFDIO_REGISTER, &reg)) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static int parse(const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	long mib = 0, threads = 1;
	int uffd = -1, use_uffd = argc > 1 && !strcmp(argv[argc - 1], "--uffd");
	if (use_uffd)
		argc--;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--mib") && !parse(argv[i + 1], 1, 1L << 20, &mib))
			continue;
		if (!strcmp(argv[i], "--threads") && !parse(argv[i + 1], 1, 64, &threads))
			continue;
		fprintf(stderr, "lr-fill-rate: bad option %s %s (expected --mib 1..1048576, --threads 1..64)\n", argv[i],
			argv[i + 1]);
		return 2;
	}
	if (!mib || argc % 2 == 0) {
		fprintf(stderr, "usage: lr-fill-rate --mib N [--threads T] [--uffd]\n");
		return 2;
	}
	size_t len = (size_t)mib << 20, part = (len / (size_t)threads + STEP - 1) / STEP * STEP;
	char *src = malloc(SRC_BYTES);
	char *dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	struct job jobs[64];
	pthread_t tids[64];
	if (!src || dst == MAP_FAILED) {
		fprintf(stderr, "lr-fill-rate: cannot allocate %ld MiB: %s\n", mib, strerror(errno));
		return 1;
	}
	if (use_uffd && (uffd = register_region(dst, len)) < 0) {
		fprintf(stderr, "lr-fill-rate: userfaultfd: %s\n", strerror(errno));
		return 1;
	}
	for (size_t i = 0; i < SRC_BYTES; i++)
		src[i] = (char)(i * 131 + 7);
	double t0 = now_s();
	long started = 0;
	for (long t = 0; t < threads && (size_t)t * part < len; t++, started++) {
		size_t off = (size_t)t * part;
		jobs[t] = (struct job){dst + off, src, len - off < part ? len - off : part, uffd, 0};
		if ((errno = pthread_create(&tids[t], NULL, fill, &jobs[t]))) {
			fprintf(stderr, "lr-fill-rate: pthread_create: %s\n", strerror(errno));
			return 1;
		}
	}
	for (long t = 0; t < started; t++)
		pthread_join(tids[t], NULL);
	double secs = now_s() - t0;
	for (long t = 0; t < started; t++)
		if (jobs[t].err) {
			fprintf(stderr, "lr-fill-rate: UFFDIO_COPY: %s\n", strerror(jobs[t].err));
			return 1;
		}
	printf("{\"bytes\": %zu, \"threads\": %ld, \"mode\": \"%s\", \"seconds\": %.6f, \"gbps\": %.3f}\n", len,
	       threads, use_uffd ? "uffdio_copy" : "memcpy", secs, (double)len / secs / 1e9);
	if (uffd >= 0)
		close(uffd);
	munmap(dst, len);
	free(src);
	return 0;
}
