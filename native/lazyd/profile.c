/* profile.c: recording the working set of a lazy restore (see profile.h). */
#include "profile.h"

void lr_profile_start(struct lr_profile *p, const struct lr_index *idx)
{
	struct lr_wset_entry *v = p->w.v;
	size_t n = p->w.n, cap = p->w.cap;
	uint64_t seen = p->w.hdr.faults_seen;

	lr_wset_init(&p->w, idx);
	p->w.v = v;
	p->w.n = n;
	p->w.cap = cap;
	p->w.hdr.count = n;
	p->w.hdr.faults_seen = seen;
	p->w.hdr.restores = 1;
	p->w.hdr.max_faults = p->max_faults;
	p->w.hdr.max_ms = p->max_ms;
}

void lr_profile_add(struct lr_profile *p, uint64_t t_ns, uint32_t rec, uint64_t addr)
{
	struct lr_error err;
	struct lr_wset_entry e = {(uint32_t)(t_ns / 1000ULL), rec, addr, 1, 1};

	p->w.hdr.faults_seen++;
	if (p->w.n >= p->max_faults || t_ns / 1000000ULL >= p->max_ms)
		return;
	(void)lr_wset_push(&p->w, &e, &err); /* out of memory: the profile is a hint, a shorter one is still right */
}
