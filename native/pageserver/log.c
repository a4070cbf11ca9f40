/*
 * log.c: what lr-pageserver says: its log lines (stderr, or -o FILE) and its JSON events (--events-fd), and
 * the escaping of text put into an event. A leaf: it calls nothing else of the server.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "server.h"

void ps_log(const struct ps_server *s, int level, const char *fmt, ...)
{
	va_list ap;
	char line[768];

	if (level > s->cfg.verbose)
		return;
	int len = snprintf(line, sizeof(line), "lr-pageserver[%d] %.6f: ", getpid(),
			   (double)(lr_net_now_ns() - s->start_ns) / 1e9);
	va_start(ap, fmt);
	vsnprintf(line + len, sizeof(line) - (size_t)len, fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s\n", line);
}

const char *ps_json_text(const char *in, char *out, size_t size)
{
	size_t o = 0;
	for (const char *p = in; *p && o + 7 < size; p++) {
		if (*p == '"' || *p == '\\') {
			out[o++] = '\\';
			out[o++] = *p;
		} else {
			out[o++] = (*p >= 0 && *p < 0x20) ? ' ' : *p;
		}
	}
	out[o] = 0;
	return out;
}

void ps_event(const struct ps_server *s, const char *fmt, ...)
{
	va_list ap;
	char line[1024];

	if (s->cfg.events_fd < 0)
		return;
	va_start(ap, fmt);
	int len = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (len <= 0 || len >= (int)sizeof(line) - 1)
		return;
	line[len++] = '\n';
	if (write(s->cfg.events_fd, line, (size_t)len) != len)
		return; /* the reader went away: keep serving */
}
