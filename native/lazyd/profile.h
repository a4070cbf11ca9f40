/*
 * profile.h: recording the working set of this restore (lr_wset.h): which pages the tree faulted on, in
 * which order and when. Bounded: the first --profile-faults faults within --profile-seconds of the start.
 * Once every page is placed it is written to --profile, and stored beside the checkpoint (merged into its
 * lazyrestore/workingset: here for local images, by the page server for a remote one).
 */
#ifndef LR_PROFILE_H
#define LR_PROFILE_H

#include <stdint.h>

#include "lr_error.h"
#include "lr_wset.h"

struct lr_profile {
	struct lr_wset w;          /* one restore: restores 1, every entry hits 1, last 1 */
	uint32_t max_faults, max_ms;
};

/* Note a fault at checkpoint address addr of record rec, t_ns after the daemon started. Never fails: past
 * the bounds, or out of memory, the fault is only counted. */
void lr_profile_add(struct lr_profile *p, uint64_t t_ns, uint32_t rec, uint64_t addr);
/* Set the checkpoint and bounds into the header once the index is open. */
void lr_profile_start(struct lr_profile *p, const struct lr_index *idx);

#endif /* LR_PROFILE_H */
