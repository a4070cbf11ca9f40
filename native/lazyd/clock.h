/* clock.h: lr-lazyd's one clock (CLOCK_MONOTONIC, nanoseconds), a leaf every part may call. */
#ifndef LR_CLOCK_H
#define LR_CLOCK_H

#include <stdint.h>

uint64_t lr_now_ns(void);

#endif /* LR_CLOCK_H */
