/*
 * stats.h: what lr-lazyd counts, and its JSON lines.
 *
 * Fault service latency is measured from reading the fault message to the
 * page being placed (or the thread woken), in a log-linear histogram (8 steps
 * per power of two: values within 12.5%).
 */
#ifndef LR_STATS_H
#define LR_STATS_H

#include <stdbool.h>
#include <stdint.h>

#include "clock.h"
#include "lr_error.h"

#define LR_HIST_BUCKETS 320

struct lr_stats {
	uint64_t start_ns;           /* daemon start (CLOCK_MONOTONIC) */
	uint64_t finished_ns;        /* "restore finished" received; 0 before */
	uint64_t done_ns;            /* every page placed; 0 before */
	uint64_t faults;             /* page fault messages served */
	uint64_t data_faults;        /* of those, the first on a page still to be placed: bytes had to be read (remote:
				      * asked of the page server) while a thread waited */
	uint64_t fault_bytes;        /* bytes placed to serve faults (fault-around included) */
	uint64_t zero_pages;         /* pages placed as zero pages (holes, discarded or all-zero pages) */
	uint64_t drain_bytes;        /* bytes placed by the background drain */
	uint64_t near_bytes;         /* of those, placed right after a fault's window (locality) */
	uint64_t prefetch_bytes;     /* bytes of the working set placed before anyone asked (prefetch.h) */
	uint64_t prefetch_planned;   /* bytes the working set covers */
	uint64_t prefetch_fetch_ns;  /* remote: time fetching it ahead */
	uint64_t link_bps;           /* remote: the link's throughput measured while fetching ahead; 0 unknown */
	bool compress;               /* remote: every page frame may come zstd-compressed */
	uint64_t zstd_frames;        /* remote: page frames that came compressed */
	uint64_t wire_bytes;         /* remote: page frame payload bytes as they crossed the link */
	uint32_t prefetch_restores;  /* restores merged into the working set used; 0: none used */
	uint64_t exists;             /* pages found already present */
	uint64_t retries;            /* placements put off because the layout was changing */
	uint64_t forks, remaps, removes, unmaps;
	uint64_t tasks, tasks_gone;
	uint64_t total_bytes;        /* lazy bytes of the restored tasks (forked copies not counted) */
	uint64_t hist[LR_HIST_BUCKETS];
	uint64_t lat_max_ns;
	uint64_t last_emit_ns;
};

void lr_stats_latency(struct lr_stats *s, uint64_t ns);
/* Upper bound (ns) of the bucket holding quantile q (0..1) of the latencies; 0 when none. */
uint64_t lr_stats_quantile(const struct lr_stats *s, double q);
/* One JSON object (no newline) into buf; returns its length. */
int lr_stats_json(const struct lr_stats *s, const char *event, uint64_t left_bytes, bool with_hist, char *buf,
		  size_t size);

#endif /* LR_STATS_H */
