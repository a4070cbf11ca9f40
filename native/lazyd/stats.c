/* stats.c: counters, the latency histogram and their JSON form. */
#include <inttypes.h>
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>

#include "stats.h"

static unsigned bucket_of(uint64_t v)
{
	if (v < 16)
		return (unsigned)v;
	unsigned e = 63u - (unsigned)__builtin_clzll(v); /* >= 4 */
	unsigned idx = 16 + (e - 4) * 8 + (unsigned)((v >> (e - 3)) & 7);
	return idx < LR_HIST_BUCKETS ? idx : LR_HIST_BUCKETS - 1;
}

static uint64_t bucket_upper(unsigned idx)
{
	if (idx < 16)
		return idx + 1;
	unsigned e = (idx - 16) / 8 + 4, m = (idx - 16) % 8;
	return ((8ULL + m + 1) << (e - 3));
}

void lr_stats_latency(struct lr_stats *s, uint64_t ns)
{
	s->hist[bucket_of(ns)]++;
	if (ns > s->lat_max_ns)
		s->lat_max_ns = ns;
}

uint64_t lr_stats_quantile(const struct lr_stats *s, double q)
{
	uint64_t total = 0, seen = 0;
	for (unsigned i = 0; i < LR_HIST_BUCKETS; i++)
		total += s->hist[i];
	if (!total)
		return 0;
	uint64_t want = (uint64_t)(q * (double)total);
	if (want >= total)
		want = total - 1;
	for (unsigned i = 0; i < LR_HIST_BUCKETS; i++) {
		seen += s->hist[i];
		if (seen > want)
			return bucket_upper(i) < s->lat_max_ns ? bucket_upper(i) : s->lat_max_ns;
	}
	return s->lat_max_ns;
}

static double seconds(uint64_t from, uint64_t to)
{
	return from && to >= from ? (double)(to - from) / 1e9 : 0.0;
}

static int hist_json(const struct lr_stats *s, char *buf, size_t size)
{
	int len = snprintf(buf, size, ",\"hist_us\":[");
	int first = 1;
	for (unsigned i = 0; i < LR_HIST_BUCKETS && len > 0 && (size_t)len < size; i++) {
		if (!s->hist[i])
			continue;
		len += snprintf(buf + len, size - (size_t)len, "%s[%.3f,%" PRIu64 "]", first ? "" : ",",
				(double)bucket_upper(i) / 1000.0, s->hist[i]);
		first = 0;
	}
	if (len > 0 && (size_t)len < size)
		len += snprintf(buf + len, size - (size_t)len, "]");
	return len;
}

int lr_stats_json(const struct lr_stats *s, const char *event, uint64_t left_bytes, bool with_hist, char *buf,
		  size_t size)
{
	struct rusage ru;
	uint64_t now = lr_now_ns();
	getrusage(RUSAGE_SELF, &ru);
	int len = snprintf(buf, size,
		"{\"event\":\"%s\",\"daemon_pid\":%d,\"t\":%.6f,\"restore_finished\":%s,\"tasks\":%" PRIu64
		",\"tasks_gone\":%" PRIu64 ",\"faults\":%" PRIu64 ",\"data_faults\":%" PRIu64 ",\"fault_bytes\":%" PRIu64 ",\"zero_pages\":%" PRIu64
		",\"drain_bytes\":%" PRIu64 ",\"near_bytes\":%" PRIu64 ",\"left_bytes\":%" PRIu64 ",\"total_bytes\":%" PRIu64 ",\"exists\":%" PRIu64
		",\"retries\":%" PRIu64 ",\"forks\":%" PRIu64 ",\"remaps\":%" PRIu64 ",\"removes\":%" PRIu64
		",\"unmaps\":%" PRIu64 ",\"lat_p50_us\":%.3f,\"lat_p99_us\":%.3f,\"lat_max_us\":%.3f"
		",\"resident_s\":%.6f,\"cpu_user_s\":%.6f,\"cpu_sys_s\":%.6f,\"started_mono_s\":%.6f"
		",\"finished_t\":%.6f,\"prefetch_bytes\":%" PRIu64 ",\"prefetch_planned_bytes\":%" PRIu64
		",\"prefetch_fetch_s\":%.6f,\"prefetch_restores\":%u,\"link_bps\":%" PRIu64 ",\"compress\":%s,\"zstd_frames\":%" PRIu64 ",\"wire_bytes\":%" PRIu64,
		event, getpid(), seconds(s->start_ns, now), s->finished_ns ? "true" : "false", s->tasks, s->tasks_gone,
		s->faults, s->data_faults, s->fault_bytes, s->zero_pages, s->drain_bytes, s->near_bytes, left_bytes, s->total_bytes, s->exists,
		s->retries, s->forks, s->remaps, s->removes, s->unmaps, (double)lr_stats_quantile(s, 0.5) / 1000.0,
		(double)lr_stats_quantile(s, 0.99) / 1000.0, (double)s->lat_max_ns / 1000.0,
		seconds(s->finished_ns, s->done_ns), (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
		(double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6, (double)s->start_ns / 1e9,
		seconds(s->start_ns, s->finished_ns), s->prefetch_bytes, s->prefetch_planned,
		(double)s->prefetch_fetch_ns / 1e9, s->prefetch_restores, s->link_bps, s->compress ? "true" : "false",
		s->zstd_frames, s->wire_bytes);
	if (with_hist && len > 0 && (size_t)len < size)
		len += hist_json(s, buf + len, size - (size_t)len);
	if (len > 0 && (size_t)len < size)
		len += snprintf(buf + len, size - (size_t)len, "}");
	return len;
}
