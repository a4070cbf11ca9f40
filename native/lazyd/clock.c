/* clock.c: lr-lazyd's one clock (see clock.h); calls nothing of lr-lazyd, so it drags no caller into a circle. */
#include <time.h>

#include "clock.h"

uint64_t lr_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}
