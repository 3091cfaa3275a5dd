/*
 * wakeup.c — br_wakeup_t, a coalescing cross-thread wakeup on an eventfd.
 *
 * pending_ is 1 from a signal until the next drain. Only the signal that
 * moves it 0 -> 1 writes the eventfd, so a burst of signals costs one
 * syscall. Protocol for the owner: drain first, then look at whatever
 * shared state the signals announce.
 *
 * Order inside drain: read the eventfd FIRST, clear pending_ SECOND.
 * The other order loses wakeups: if drain cleared pending_ and a signal
 * then ran in full (0 -> 1, write) before drain's read, that read would
 * swallow the signal's count and leave pending_ == 1 over an empty eventfd;
 * every later signal would see 1, skip the write, and the owner would sleep
 * in poll() for ever. With read-then-clear, a signal that lands between the
 * two steps finds pending_ == 1 and skips its write, which is fine: the
 * clear that follows (an acquire exchange) makes its data visible to the
 * owner, who looks at the shared state after the drain returns.
 *
 * The price of read-then-clear is an occasional spurious readability: a
 * signal that set pending_ 0 -> 1 before a drain but wrote after it. The
 * next drain then reads that count, finds pending_ == 0 and returns 0;
 * br_wakeup_wait goes back to sleep in that case.
 */
#include "internal.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

int br_wakeup_init(br_wakeup_t *w)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0)
        return -errno;
    w->fd = fd;
    __atomic_store_n(&w->pending_, 0, __ATOMIC_RELAXED);
    return 0;
}

int br_wakeup_signal(br_wakeup_t *w)
{
    /* An exchange, not a plain load: it must both publish the caller's
     * writes (release) and be ordered against the owner's clear, or a
     * signal could see a stale 1 and be lost. */
    if (__atomic_exchange_n(&w->pending_, 1, __ATOMIC_ACQ_REL) != 0)
        return 0; /* one is pending already: it will wake the owner */

    int saved_errno = errno; /* async-signal-safe: restore errno */
    uint64_t one = 1;
    int ret = 0;
    for (;;) {
        ssize_t n = write(w->fd, &one, sizeof one);
        if (n == (ssize_t)sizeof one)
            break;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break; /* counter full: the fd is readable, which is all we need */
        ret = n < 0 ? -errno : -EIO;
        /* Let the next signal try again instead of trusting a wakeup that
         * never reached the fd. */
        __atomic_store_n(&w->pending_, 0, __ATOMIC_RELEASE);
        break;
    }
    errno = saved_errno;
    return ret;
}

int br_wakeup_drain(br_wakeup_t *w)
{
    uint64_t count;

    /* Always read, even if pending_ is 0: a late write (see the top) leaves
     * the fd readable, and an epoll owner would otherwise spin on it. */
    for (;;) {
        ssize_t n = read(w->fd, &count, sizeof count);
        if (n == (ssize_t)sizeof count || (n < 0 && errno == EAGAIN))
            break;
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 ? -errno : -EIO;
    }
    /* Acquire: the writes of every signal up to now become visible. */
    return __atomic_exchange_n(&w->pending_, 0, __ATOMIC_ACQ_REL) != 0;
}

int br_wakeup_wait(br_wakeup_t *w, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : br_now_ns() + (int64_t)timeout_ms * 1000000;

    for (;;) {
        int ms = -1;
        if (deadline >= 0) {
            int64_t left = deadline - br_now_ns();
            /* Round up so poll() never returns before the deadline. */
            ms = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
        }

        struct pollfd p = {.fd = w->fd, .events = POLLIN};
        int n = poll(&p, 1, ms);
        if (n < 0)
            return -errno; /* -EINTR included: the caller runs its handlers */
        if (n == 0)
            return 0;
        if (p.revents & POLLNVAL)
            return -EBADF;

        int r = br_wakeup_drain(w);
        if (r != 0)
            return r;
        /* Readable with nothing pending: a late write, see the top. */
    }
}

void br_wakeup_close(br_wakeup_t *w)
{
    if (w->fd < 0)
        return;
    /* On Linux the fd is released even when close() reports an error (and
     * must not be closed again), so there is nothing to retry or report. */
    int r = close(w->fd);
    (void)r;
    w->fd = -1;
}
