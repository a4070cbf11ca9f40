/*
 * profile.h: the working set of a lazy restore, as lr-lazyd saw it: which pages the tree faulted on, in
 * which order and when (issue 7: a later restore fetches them first). Bounded: the first
 * --profile-faults faults within --profile-seconds of the start.
 *
 * File (little-endian, written at the end of a restore in which every page was placed):
 *   struct lr_profile_hdr, then `count` struct lr_profile_entry, in fault order.
 * Addresses are the checkpoint's (the index's address space), so a profile applies to any restore of the
 * checkpoint whatever the restored layout. lazyrestore/workingset.py reads it.
 */
#ifndef LR_PROFILE_H
#define LR_PROFILE_H

#include <stddef.h>
#include <stdint.h>

#include "lr_error.h"

#define LR_PROFILE_MAGIC "LRWSET1"
#define LR_PROFILE_VERSION 1u

struct lr_profile_hdr {
	char magic[8];            /* LR_PROFILE_MAGIC, NUL-padded */
	uint32_t version;         /* LR_PROFILE_VERSION */
	uint32_t page_size;
	uint8_t checkpoint_id[16];
	uint64_t count;           /* entries that follow */
	uint64_t faults_seen;     /* faults on lazy pages in the whole restore (may exceed count) */
	uint32_t max_faults;      /* the bounds the recording had */
	uint32_t max_ms;
};

struct lr_profile_entry {
	uint32_t t_us;            /* microseconds since lr-lazyd started */
	uint32_t record;          /* index record holding the page */
	uint64_t addr;            /* the faulting page's checkpoint address */
};

_Static_assert(sizeof(struct lr_profile_hdr) == 56, "lr_profile_hdr is 56 bytes");
_Static_assert(sizeof(struct lr_profile_entry) == 16, "lr_profile_entry is 16 bytes");

struct lr_profile {
	struct lr_profile_entry *v;
	size_t n, cap;
	uint64_t faults_seen;
	uint32_t max_faults, max_ms;
};

/* Note a fault at checkpoint address addr of record rec, t_ns after the daemon started. Never fails: past
 * the bounds, or out of memory, the fault is only counted. */
void lr_profile_add(struct lr_profile *p, uint64_t t_ns, uint32_t rec, uint64_t addr);
/* Write the profile to path (through a temporary file, renamed). */
int lr_profile_write(const struct lr_profile *p, const char *path, uint32_t page_size, const uint8_t cid[16],
		     struct lr_error *err);
void lr_profile_fini(struct lr_profile *p);

#endif /* LR_PROFILE_H */
