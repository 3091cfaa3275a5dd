/*
 * poll_epoll.c — the epoll readiness backend (the interface is in
 * loop_internal.h; another backend, e.g. io_uring, would be another file
 * implementing the same six functions).
 *
 * Level-triggered, on purpose:
 *   - asyncio's add_reader/add_writer, which this loop will carry, are
 *     level-triggered: a callback that reads part of the data is called
 *     again on the next iteration;
 *   - edge-triggered would force every reader to read until EAGAIN, one
 *     extra read() per message on the common path (a socket that had one
 *     message), which costs more than it saves;
 *   - a watcher the loop skips (stopped in the same batch) loses nothing:
 *     the kernel reports the fd again if it is still ready.
 *
 * The events array has a fixed size. When it fills, the fds left over are
 * reported on the next epoll_wait (level-triggered again), so nothing is
 * lost, only delayed by one iteration.
 *
 * epoll_event.data holds the fd, not a pointer to the watcher: br__io_ready
 * looks the watcher up at dispatch time, so an event that was queued for a
 * watcher that a previous callback of the same batch stopped or closed finds
 * nothing (or the fd's new watcher) instead of stale memory.
 */
#include "loop_internal.h"

#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#define MAX_EVENTS 1024

struct br__poll_s {
    int epfd;
    struct epoll_event events[MAX_EVENTS];
};

int br__poll_init(br_loop_t *loop)
{
    struct br__poll_s *p = malloc(sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0) {
        int err = -errno;
        free(p);
        return err;
    }
    loop->poll_ = p;
    return 0;
}

void br__poll_close(br_loop_t *loop)
{
    struct br__poll_s *p = loop->poll_;
    if (p == NULL)
        return;
    /* Linux releases the fd even when close() fails: nothing to retry. */
    int r = close(p->epfd);
    (void)r;
    free(p);
    loop->poll_ = NULL;
}

static uint32_t to_epoll(unsigned events)
{
    uint32_t e = 0;
    if (events & BR_READABLE)
        e |= EPOLLIN;
    if (events & BR_WRITABLE)
        e |= EPOLLOUT;
    return e;
}

static int ctl(br_loop_t *loop, int op, int fd, unsigned events)
{
    struct epoll_event ev = {.events = to_epoll(events), .data.fd = fd};
    if (epoll_ctl(loop->poll_->epfd, op, fd, &ev) != 0)
        return -errno;
    return 0;
}

int br__poll_add(br_loop_t *loop, int fd, unsigned events)
{
    /* -EBADF for a closed fd, -EPERM for a regular file, -EEXIST if the fd
     * is already registered: all reported as they are. */
    return ctl(loop, EPOLL_CTL_ADD, fd, events);
}

int br__poll_mod(br_loop_t *loop, int fd, unsigned events)
{
    return ctl(loop, EPOLL_CTL_MOD, fd, events);
}

int br__poll_del(br_loop_t *loop, int fd)
{
    int r = ctl(loop, EPOLL_CTL_DEL, fd, 0);
    /* EBADF: the caller closed the fd first, which removed it from the
     * epoll set unless a duplicate keeps the file open. ENOENT: it was not
     * registered. Either way the fd is not watched any more, which is all
     * that stop asks for. */
    if (r == -EBADF || r == -ENOENT)
        return 0;
    return r;
}

static unsigned from_epoll(uint32_t e)
{
    unsigned r = 0;
    if (e & EPOLLIN)
        r |= BR_READABLE;
    if (e & EPOLLOUT)
        r |= BR_WRITABLE;
    if (e & EPOLLERR)
        r |= BR_ERROR;
    if (e & EPOLLHUP)
        r |= BR_HUP;
    return r;
}

int br__poll_wait(br_loop_t *loop, int timeout_ms)
{
    struct br__poll_s *p = loop->poll_;
    int hook = timeout_ms != 0 && loop->block_cb_ != NULL;
    if (hook)
        loop->block_cb_(loop, 1);
    int n = epoll_wait(p->epfd, p->events, MAX_EVENTS, timeout_ms);
    int err = n < 0 ? errno : 0;
    if (hook)
        loop->block_cb_(loop, 0);

    /* After the wait, before any callback: a callback that starts a timer
     * after a long sleep must count from now, not from before the sleep. */
    br_loop_update_time(loop);
    if (n < 0)
        /* A signal handler ran (the embedding program's, e.g. Python's):
         * return so the caller gets control back; nothing is lost, the
         * fds stay ready. */
        return err == EINTR ? 0 : -err;

    for (int i = 0; i < n; i++)
        br__io_ready(loop, p->events[i].data.fd, from_epoll(p->events[i].events));
    return 0;
}
