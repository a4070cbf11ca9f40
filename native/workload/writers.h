/*
 * writers.h: lr-workload's --writers: threads that keep rewriting a region of their own, so that a soak
 * migrates memory that changes all the time. Each page is self-describing: its first two words are its
 * index and its generation (how often it has been rewritten), the rest a stream derived from both and the
 * seed. A page that is lost, zero, torn or stale in content fails its own check, whatever its generation.
 */
#ifndef LR_WRITERS_H
#define LR_WRITERS_H

#include <stdint.h>

struct writers;

/* The workload's pseudo-random stream (xorshift64): page contents are derived from seeds with it. */
static inline uint64_t lr_xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* Map mib MiB, write every page once (generation 1) and start n threads that keep rewriting their share. */
struct writers *writers_start(unsigned long n, unsigned long mib, uint64_t seed);
/* Check every page (each writer paused while its share is checked); print one line:
 *   writes role=ROLE ok pages=N generations=G
 *   writes role=ROLE BAD page=INDEX pages=N generations=G */
void writers_verify(struct writers *w, const char *role);

#endif /* LR_WRITERS_H */
