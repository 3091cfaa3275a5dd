/*
 * loop.c — br_loop_t: the iteration, the handle list, asynchronous close,
 * and br_io_t (fd watchers). Timers are in timer.c, cross-thread wakeups in
 * async.c, signals in signal.c, the readiness backend in poll_epoll.c. The
 * iteration order and the handle life cycle are drawn in braid.h.
 *
 * Re-entrancy. Any callback may stop, start or close any handle, including
 * itself and handles with events pending in the same poll batch:
 *   - I/O: the backend reports fds, and br__io_ready looks each one up in
 *     watchers_ at dispatch time. A watcher stopped or closed by an earlier
 *     callback of the batch was removed from the table, so its event finds
 *     nothing and is dropped; its memory is never touched (it may even be
 *     freed by then, if its close callback ran in an earlier iteration).
 *     The revents are masked with what the watcher wants *now*.
 *   - close: br_close only queues; the callbacks run in step 5, after every
 *     other callback of the iteration, so a handle is never freed while an
 *     event for it may still be dispatched. The queue is detached before it
 *     is run: a close callback that closes another handle queues it for the
 *     next iteration (whose poll then does not block), so step 5 always
 *     ends.
 *   - timers: see timer.c.
 */
#include "loop_internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------ handles */

void br__handle_init(br_loop_t *loop, br_handle_t *h, int type)
{
    h->data = NULL;
    h->loop = loop;
    h->type = type;
    h->flags_ = BR__REF;
    h->close_cb_ = NULL;
    h->close_next_ = NULL;
    /* Push on the list of open handles (br_loop_close checks it). */
    h->prev_ = NULL;
    h->next_ = loop->handles_;
    if (loop->handles_ != NULL)
        loop->handles_->prev_ = h;
    loop->handles_ = h;
}

void br__handle_start(br_handle_t *h)
{
    if (h->flags_ & BR__ACTIVE)
        return;
    h->flags_ |= BR__ACTIVE;
    if (h->flags_ & BR__REF)
        h->loop->active_++;
}

void br__handle_stop(br_handle_t *h)
{
    if (!(h->flags_ & BR__ACTIVE))
        return;
    h->flags_ &= ~BR__ACTIVE;
    if (h->flags_ & BR__REF)
        h->loop->active_--;
}

void br_ref(br_handle_t *h)
{
    if ((h->flags_ & (BR__REF | BR__INTERNAL)) != 0)
        return;
    h->flags_ |= BR__REF;
    if (h->flags_ & BR__ACTIVE)
        h->loop->active_++;
}

void br_unref(br_handle_t *h)
{
    if (!(h->flags_ & BR__REF))
        return;
    h->flags_ &= ~BR__REF;
    if (h->flags_ & BR__ACTIVE)
        h->loop->active_--;
}

int br_is_active(const br_handle_t *h) { return (h->flags_ & BR__ACTIVE) != 0; }

int br_is_closing(const br_handle_t *h) { return (h->flags_ & (BR__CLOSING | BR__CLOSED)) != 0; }

int br_close(br_handle_t *h, br_close_cb close_cb)
{
    if (h->flags_ & (BR__CLOSING | BR__CLOSED | BR__INTERNAL))
        return -EINVAL;

    switch (h->type) {
    case BR_HANDLE_IO:
        br_io_stop((br_io_t *)h);
        break;
    case BR_HANDLE_TIMER:
        br__timer_close((br_timer_t *)h);
        break;
    case BR_HANDLE_ASYNC:
        br__async_close((br_async_t *)h);
        break;
    case BR_HANDLE_SIGNAL:
        br__signal_close((br_signal_t *)h);
        break;
    case BR_HANDLE_STREAM:
        br__stream_close((br_stream_t *)h);
        break;
    case BR_HANDLE_UDP:
        br__udp_close((br_udp_t *)h);
        break;
    default:
        return -EINVAL;
    }
    br__handle_stop(h);

    h->flags_ |= BR__CLOSING;
    h->close_cb_ = close_cb;
    h->close_next_ = NULL;
    br_loop_t *loop = h->loop;
    if (loop->closing_tail_ != NULL)
        loop->closing_tail_->close_next_ = h;
    else
        loop->closing_head_ = h;
    loop->closing_tail_ = h;
    return 0;
}

void br_loop_walk(br_loop_t *loop, void (*cb)(br_handle_t *handle, void *arg), void *arg)
{
    br_handle_t *h = loop->handles_;
    while (h != NULL) {
        br_handle_t *next = h->next_; /* read first: closing h leaves it on the list, but be safe */
        cb(h, arg);
        h = next;
    }
}

static void run_closing(br_loop_t *loop)
{
    br_handle_t *h = loop->closing_head_;
    loop->closing_head_ = loop->closing_tail_ = NULL;

    while (h != NULL) {
        /* Read the link first: the callback may free h. */
        br_handle_t *next = h->close_next_;
        if (h->prev_ != NULL)
            h->prev_->next_ = h->next_;
        else
            loop->handles_ = h->next_;
        if (h->next_ != NULL)
            h->next_->prev_ = h->prev_;
        h->next_ = h->prev_ = h->close_next_ = NULL;
        h->flags_ = (h->flags_ & ~BR__CLOSING) | BR__CLOSED;
        if (h->close_cb_ != NULL)
            h->close_cb_(h);
        h = next;
    }
}

void br__close_fd(int *fd)
{
    if (*fd >= 0)
        (void)close(*fd); /* even on EINTR the fd is gone on Linux: no retry */
    *fd = -1;
}

char *br__loop_read_buf(br_loop_t *loop, size_t size)
{
    /* Grown only here, just before a read: never while a callback still
     * looks at what the last read put in it. */
    if (loop->read_buf_size_ < size) {
        char *b = realloc(loop->read_buf_, size);
        if (b == NULL)
            return NULL;
        loop->read_buf_ = b;
        loop->read_buf_size_ = size;
    }
    return loop->read_buf_;
}

/* ------------------------------------------------------------ loop */

int br_loop_init(br_loop_t *loop)
{
    memset(loop, 0, sizeof *loop);
    loop->wakeup_.fd = -1;
    loop->time_ = br_now_ns();

    int r = br__poll_init(loop);
    if (r != 0)
        return r;
    r = br__async_loop_init(loop);
    if (r != 0) {
        br__poll_close(loop);
        return r;
    }
    return 0;
}

int br_loop_close(br_loop_t *loop)
{
    if (loop->running_ || loop->handles_ != NULL || loop->closing_head_ != NULL)
        return -EBUSY;
    br__async_loop_close(loop);
    br__poll_close(loop);
    br__timers_free(loop);
    free(loop->read_buf_);
    loop->read_buf_ = NULL;
    loop->read_buf_size_ = 0;
    free(loop->watchers_);
    loop->watchers_ = NULL;
    loop->nwatchers_ = 0;
    return 0;
}

int64_t br_loop_now(const br_loop_t *loop) { return loop->time_; }

void br_loop_set_block_cb(br_loop_t *loop, void (*cb)(br_loop_t *loop, int blocking)) { loop->block_cb_ = cb; }

void br_loop_update_time(br_loop_t *loop) { loop->time_ = br_now_ns(); }

void br_loop_stop(br_loop_t *loop) { loop->stop_ = 1; }

int br_loop_alive(const br_loop_t *loop)
{
    return loop->active_ > 0 || loop->closing_head_ != NULL;
}

static int poll_timeout(const br_loop_t *loop, enum br_run_mode mode)
{
    if (mode == BR_RUN_NOWAIT || loop->stop_ || loop->closing_head_ != NULL)
        return 0;
    /* Nothing can ever wake us: do not sleep for ever (br_loop_run checks
     * alive before polling, but a callback may have stopped the last
     * handle since). */
    if (loop->active_ == 0)
        return 0;
    return br__timers_timeout(loop);
}

int br_loop_run(br_loop_t *loop, enum br_run_mode mode)
{
    if (loop->running_)
        return -EBUSY;
    if (mode != BR_RUN_DEFAULT && mode != BR_RUN_ONCE && mode != BR_RUN_NOWAIT)
        return -EINVAL;
    loop->running_ = 1;

    int alive = br_loop_alive(loop);
    if (!alive)
        br_loop_update_time(loop);
    int ret = 0;
    while (alive && !loop->stop_) {
        br_loop_update_time(loop);
        br__timers_run(loop);

        int timeout = poll_timeout(loop, mode);
        int r = br__poll_wait(loop, timeout);
        if (r != 0) {
            ret = r;
            break;
        }

        /* ONCE promises progress: if it slept until a timer was due, run
         * that timer now rather than return having done nothing. */
        if (mode == BR_RUN_ONCE)
            br__timers_run(loop);

        run_closing(loop);
        alive = br_loop_alive(loop);
        if (mode != BR_RUN_DEFAULT)
            break;
    }

    /* A stop applies to the run it interrupted, not to the next one. */
    loop->stop_ = 0;
    loop->running_ = 0;
    return ret != 0 ? ret : br_loop_alive(loop);
}

/* ------------------------------------------------------------ io */

static void io_init(br_loop_t *loop, br_io_t *io, int fd)
{
    io->fd = fd;
    io->events_ = 0;
    io->cb_ = NULL;
}

int br_io_init(br_loop_t *loop, br_io_t *io, int fd)
{
    if (fd < 0)
        return -EBADF;
    br__handle_init(loop, &io->handle, BR_HANDLE_IO);
    io_init(loop, io, fd);
    return 0;
}

void br__io_init_internal(br_loop_t *loop, br_io_t *io, int fd)
{
    io->handle.data = NULL;
    io->handle.loop = loop;
    io->handle.type = BR_HANDLE_IO;
    io->handle.flags_ = BR__INTERNAL; /* no BR__REF: never keeps the loop alive */
    io->handle.close_cb_ = NULL;
    io->handle.next_ = io->handle.prev_ = io->handle.close_next_ = NULL;
    io_init(loop, io, fd);
}

/* Makes watchers_[fd] addressable. */
static int grow_watchers(br_loop_t *loop, int fd)
{
    if ((unsigned)fd < loop->nwatchers_)
        return 0;
    /* Doubling, from a size that covers the usual low fds at once. */
    size_t n = loop->nwatchers_ != 0 ? loop->nwatchers_ : 64;
    while (n <= (size_t)fd)
        n *= 2;
    if (n > UINT_MAX)
        return -ENOMEM;
    br_io_t **w = realloc(loop->watchers_, n * sizeof *w);
    if (w == NULL)
        return -ENOMEM;
    memset(w + loop->nwatchers_, 0, (n - loop->nwatchers_) * sizeof *w);
    loop->watchers_ = w;
    loop->nwatchers_ = (unsigned)n;
    return 0;
}

int br_io_start(br_io_t *io, unsigned events, br_io_cb cb)
{
    br_loop_t *loop = io->handle.loop;

    if (cb == NULL || events == 0 || (events & ~(BR_READABLE | BR_WRITABLE)) != 0)
        return -EINVAL;
    if (io->handle.flags_ & (BR__CLOSING | BR__CLOSED))
        return -EBUSY;

    if (io->events_ == 0) {
        int r = grow_watchers(loop, io->fd);
        if (r != 0)
            return r;
        /* Another watcher of this loop has the fd: epoll would say EEXIST
         * too, but only after the table entry had been overwritten. */
        if (loop->watchers_[io->fd] != NULL)
            return -EEXIST;
        r = br__poll_add(loop, io->fd, events);
        if (r != 0)
            return r;
        loop->watchers_[io->fd] = io;
    } else if (events != io->events_) {
        int r = br__poll_mod(loop, io->fd, events);
        if (r != 0)
            return r;
    }
    io->events_ = events;
    io->cb_ = cb;
    br__handle_start(&io->handle);
    return 0;
}

int br_io_stop(br_io_t *io)
{
    br_loop_t *loop = io->handle.loop;

    if (io->events_ == 0)
        return 0;
    /* The table entry goes first and unconditionally: whatever the kernel
     * says, no event may reach this watcher any more. */
    loop->watchers_[io->fd] = NULL;
    io->events_ = 0;
    br__handle_stop(&io->handle);
    return br__poll_del(loop, io->fd);
}

void br__io_ready(br_loop_t *loop, int fd, unsigned revents)
{
    if (fd < 0 || (unsigned)fd >= loop->nwatchers_)
        return;
    br_io_t *io = loop->watchers_[fd];
    if (io == NULL)
        return; /* stopped or closed by an earlier callback of this batch */
    revents &= io->events_ | BR_ERROR | BR_HUP;
    if (revents != 0)
        io->cb_(io, revents);
}
