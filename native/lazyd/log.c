/* log.c: lr-lazyd's log lines (lr_log, lazyd.h); it calls only the clock, so it drags no caller into a circle. */
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "lazyd.h"

void lr_log(const struct lr_lazyd *d, int level, const char *fmt, ...)
{
	va_list ap;
	char line[768];

	if (level > d->cfg.verbose)
		return;
	int len = snprintf(line, sizeof(line), "lr-lazyd[%d] %.6f: ", getpid(),
			   (double)(lr_now_ns() - d->stats.start_ns) / 1e9);
	va_start(ap, fmt);
	vsnprintf(line + len, sizeof(line) - (size_t)len, fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s\n", line);
}
