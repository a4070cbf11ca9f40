/*
 * lr_error.h: errors carried out of a call as a value.
 *
 * Every function that can fail takes `struct lr_error *err` as its last
 * argument, fills it and returns -1 (lr_error_set does both). Only main prints.
 */
#ifndef LR_ERROR_H
#define LR_ERROR_H

struct lr_error {
	int errnum;     /* errno value, or 0 when the failure is not a system error */
	char msg[512];  /* names the file, field or peer, and what was expected */
};

/* Fill err (appending strerror(errnum) when errnum != 0) and return -1. The arguments may include err->msg
 * (an earlier error wrapped in a new one). */
int lr_error_set(struct lr_error *err, int errnum, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Class an error already set by the errno value a caller decides on (e.g. EBADMSG: damaged on the way, ask
 * again), leaving its message as it is; returns -1. */
int lr_error_class(struct lr_error *err, int errnum);

#endif /* LR_ERROR_H */
