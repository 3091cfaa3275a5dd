/*
 * event.c — br_event_t, a one-shot event on a futex.
 *
 * The word moves only forward:
 *
 *     UNSET(0) --a waiter is about to sleep--> SLEEPERS(2)
 *        |                                        |
 *        +------------- br_event_set -------------+--> SET(1)  (final)
 *
 * SLEEPERS tells br_event_set that someone may be asleep in FUTEX_WAIT, so
 * only then does it pay for the FUTEX_WAKE syscall; setting an event nobody
 * waits on is a single atomic exchange.
 */
#include "internal.h"

#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { UNSET = 0, SET = 1, SLEEPERS = 2 };

static long futex(uint32_t *word, int op, uint32_t val, const struct timespec *timeout)
{
    return syscall(SYS_futex, word, op, val, timeout, NULL, 0);
}

void br_event_init(br_event_t *ev)
{
    /* Relaxed: the event is not shared yet; publishing it orders this. */
    __atomic_store_n(&ev->word_, UNSET, __ATOMIC_RELAXED);
}

void br_event_set(br_event_t *ev)
{
    /* Release: what the setter wrote before set() is visible to any thread
     * that then sees SET with an acquire load. */
    if (__atomic_exchange_n(&ev->word_, SET, __ATOMIC_RELEASE) != SLEEPERS)
        return;

    /* A signal handler may call us: leave errno as we found it. */
    int saved_errno = errno;
    if (futex(&ev->word_, FUTEX_WAKE_PRIVATE, INT_MAX, NULL) < 0)
        br__fatal("futex(FUTEX_WAKE_PRIVATE)", errno); /* sleepers would hang */
    errno = saved_errno;
}

int br_event_is_set(const br_event_t *ev)
{
    return __atomic_load_n(&ev->word_, __ATOMIC_ACQUIRE) == SET;
}

int br_event_has_sleepers(const br_event_t *ev)
{
    return __atomic_load_n(&ev->word_, __ATOMIC_ACQUIRE) == SLEEPERS;
}

int br_event_wait(br_event_t *ev, int64_t timeout_ns)
{
    int64_t deadline = -1; /* -1: no deadline */

    if (br_event_is_set(ev))
        return 0;
    if (timeout_ns == 0)
        return -ETIMEDOUT;
    if (timeout_ns > 0) {
        int64_t now = br_now_ns();
        /* A timeout too large to add is as good as forever. */
        if (timeout_ns <= INT64_MAX - now)
            deadline = now + timeout_ns;
    }

    for (;;) {
        /* Announce a sleeper (UNSET -> SLEEPERS) unless it is set already. */
        uint32_t word = UNSET;
        if (!__atomic_compare_exchange_n(&ev->word_, &word, SLEEPERS, 0,
                                         __ATOMIC_ACQUIRE, __ATOMIC_ACQUIRE) &&
            word == SET)
            return 0;

        /* FUTEX_WAIT takes a relative timeout, so recompute what is left
         * of the deadline on every round: wakeups can be spurious. */
        struct timespec ts, *tsp = NULL;
        if (deadline >= 0) {
            int64_t left = deadline - br_now_ns();
            if (left <= 0)
                return -ETIMEDOUT;
            ts.tv_sec = (time_t)(left / 1000000000);
            ts.tv_nsec = (long)(left % 1000000000);
            tsp = &ts;
        }

        /* Sleeps only while the word is still SLEEPERS. */
        if (futex(&ev->word_, FUTEX_WAIT_PRIVATE, SLEEPERS, tsp) == 0)
            continue; /* woken, maybe spuriously: look again */
        switch (errno) {
        case EAGAIN:    /* the word was no longer SLEEPERS: it is SET */
        case ETIMEDOUT: /* the top of the loop returns SET or -ETIMEDOUT */
            continue;
        case EINTR:
            /* Report the signal so the caller can run its handlers, unless
             * the event got set meanwhile: success wins. */
            return br_event_is_set(ev) ? 0 : -EINTR;
        default:
            return -errno;
        }
    }
}
