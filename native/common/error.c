/* error.c: filling struct lr_error. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "lr_error.h"

int lr_error_set(struct lr_error *err, int errnum, const char *fmt, ...)
{
	va_list ap;
	size_t len;

	if (!err)
		return -1;
	char msg[sizeof(err->msg)]; /* the arguments may quote err->msg itself (wrapping an earlier error) */
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	len = strlen(msg);
	if (errnum && len < sizeof(msg))
		snprintf(msg + len, sizeof(msg) - len, ": %s", strerror(errnum));
	memcpy(err->msg, msg, sizeof(msg));
	err->errnum = errnum;
	return -1;
}

int lr_error_class(struct lr_error *err, int errnum)
{
	if (err)
		err->errnum = errnum;
	return -1;
}
