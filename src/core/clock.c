/* clock.c — the engine's one clock. */
#include "internal.h"

#include <time.h>

int64_t br_now_ns(void)
{
    struct timespec ts;

    /* CLOCK_MONOTONIC cannot fail on Linux; if it did, every deadline in the
     * engine would be wrong, so stop rather than return garbage. */
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        br__fatal("clock_gettime(CLOCK_MONOTONIC)", errno);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
