/*
 * check.h: the C unit tests' one assertion. No framework: CHECK counts and reports a failure with its file and
 * line, and the test goes on; each test's main prints "N passed, M failed" last (tests/unit/test_native.py reads
 * it) and exits non-zero when anything failed. Included by one test file each: the counts are that test's.
 */
#ifndef LR_TESTS_CHECK_H
#define LR_TESTS_CHECK_H

#include <stdio.h>

static unsigned long passed, failed;

#define CHECK(e)                                                                            \
	do {                                                                                \
		if (e) {                                                                    \
			passed++;                                                           \
		} else {                                                                    \
			failed++;                                                           \
			printf("%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #e);        \
		}                                                                           \
	} while (0)

#endif /* LR_TESTS_CHECK_H */
