/*
 * stream.c — br_stream_t: a byte stream (TCP or Unix socket, pipe, pty) on
 * a br_loop_t, with a write queue and watermarks. See braid.h for the life
 * cycle. A stream is a handle of its own (what br_close and the loop's
 * liveness see) over an internal br_io_t, as a br_signal_t is: one object
 * per connection for the embedder, no second handle to close.
 *
 * Writes: with nothing queued, br_stream_write tries the kernel at once
 * (most writes end there, with no copy and no epoll_ctl); the rest is copied
 * into a chunk at the queue's tail and the fd is watched for writability.
 * The writable callback flushes up to IOV_BATCH chunks per sendmsg/writev,
 * unless the flush callback says not now (an embedder that runs its own
 * ready queue, as asyncio's loop does, puts the flush behind it and calls
 * br_stream_flush_now from there).
 * Sockets are written with MSG_NOSIGNAL, so a reset peer is -EPIPE, never a
 * SIGPIPE that would kill a C program that did not ignore it.
 *
 * Reads: level-triggered, one read per callback into the loop's read
 * buffer, so many streams share the loop fairly, a slow consumer can stop
 * reading (read_stop) without the stream buffering behind its back, and an
 * idle connection costs no buffer (10,000 streams with a 64 KiB buffer
 * each would hold 640 MB for nothing).
 */
#include "internal.h"
#include "loop_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

struct br__chunk_s {
    br__chunk_t *next;
    size_t len;
    size_t off; /* bytes of it already written */
    char bytes[];
};

/* state_ bits */
#define S_SOCKET 0x01u
#define S_READING 0x02u
#define S_PAUSED 0x04u    /* the drain callback was told paused=1 */
#define S_SHUT_WANT 0x08u /* SHUT_WR once the queue is empty */
#define S_SHUT_DONE 0x10u
#define S_FAILED 0x20u    /* a write error was reported */
#define S_CLOSING 0x40u

#define DEFAULT_READ_SIZE (64 * 1024)
#define IOV_BATCH 64

static void on_io(br_io_t *io, unsigned revents);

static int closing(const br_stream_t *s)
{
    return (s->state_ & S_CLOSING) != 0;
}

/* Watches what the stream needs now: reads if reading, writes if queued. */
static int update_watch(br_stream_t *s)
{
    unsigned events = ((s->state_ & S_READING) ? BR_READABLE : 0) | (s->queued_ ? BR_WRITABLE : 0);
    int rc = events ? br_io_start(&s->io_, events, on_io) : br_io_stop(&s->io_);
    if (events && rc == 0)
        br__handle_start(&s->handle);
    else if (!events)
        br__handle_stop(&s->handle);
    return rc;
}

static void free_queue(br_stream_t *s)
{
    while (s->head_ != NULL) {
        br__chunk_t *c = s->head_;
        s->head_ = c->next;
        free(c);
    }
    s->tail_ = NULL;
    s->queued_ = 0;
}

static void init_fields(br_loop_t *loop, br_stream_t *s, int fd, int is_socket)
{
    br__handle_init(loop, &s->handle, BR_HANDLE_STREAM);
    br__io_init_internal(loop, &s->io_, fd);
    s->io_.handle.data = s;
    s->fd = fd;
    s->read_size_ = DEFAULT_READ_SIZE;
    s->high_ = 64 * 1024;
    s->low_ = 16 * 1024;
    s->state_ = is_socket ? S_SOCKET : 0;
}

int br_stream_init(br_loop_t *loop, br_stream_t *s, int fd)
{
    struct stat st;
    memset(s, 0, sizeof *s);
    if (fd < 0) {
        return -EBADF;
    }
    if (fstat(fd, &st) < 0) {
        return -errno;
    }
    int rc = br__set_nonblocking(fd);
    if (rc < 0) {
        return rc;
    }
    init_fields(loop, s, fd, S_ISSOCK(st.st_mode));
    return 0;
}

/* Two system calls fewer per accepted connection (a server accepting a
 * burst spends a few microseconds of CPU on each connection, these
 * included). */
int br_stream_init_socket(br_loop_t *loop, br_stream_t *s, int fd)
{
    memset(s, 0, sizeof *s);
    if (fd < 0) {
        return -EBADF;
    }
    init_fields(loop, s, fd, 1);
    return 0;
}

void br_stream_set_callbacks(br_stream_t *s, br_stream_drain_cb on_drain, br_stream_error_cb on_error)
{
    s->on_drain_ = on_drain;
    s->on_error_ = on_error;
}

void br_stream_set_more_callbacks(br_stream_t *s, br_stream_alloc_cb on_alloc, br_stream_empty_cb on_empty)
{
    s->on_alloc_ = on_alloc;
    s->on_empty_ = on_empty;
}

void br_stream_set_flush_callback(br_stream_t *s, br_stream_flush_cb on_flush)
{
    s->on_flush_ = on_flush;
}

/* Tells the drain callback when the queue crossed a watermark. */
static void check_marks(br_stream_t *s)
{
    if (!(s->state_ & S_PAUSED) && s->queued_ > s->high_) {
        s->state_ |= S_PAUSED;
        if (s->on_drain_ != NULL) {
            s->on_drain_(s, 1);
        }
    } else if ((s->state_ & S_PAUSED) && s->queued_ <= s->low_) {
        s->state_ &= ~S_PAUSED;
        if (s->on_drain_ != NULL) {
            s->on_drain_(s, 0);
        }
    }
}

int br_stream_set_limits(br_stream_t *s, size_t high, size_t low)
{
    if (low > high) {
        return -EINVAL;
    }
    s->high_ = high;
    s->low_ = low;
    if (!closing(s)) {
        check_marks(s);
    }
    return 0;
}

int br_stream_read_start(br_stream_t *s, br_stream_read_cb cb, size_t read_size)
{
    if (cb == NULL) {
        return -EINVAL;
    }
    if (closing(s)) {
        return -EBUSY;
    }
    s->read_size_ = read_size != 0 ? read_size : DEFAULT_READ_SIZE;
    s->on_read_ = cb;
    unsigned before = s->state_;
    s->state_ |= S_READING;
    int rc = update_watch(s);
    if (rc < 0) {
        s->state_ = before;
    }
    return rc;
}

int br_stream_read_stop(br_stream_t *s)
{
    if (closing(s) || !(s->state_ & S_READING)) {
        return 0;
    }
    s->state_ &= ~S_READING;
    return update_watch(s);
}

static ssize_t write_some(br_stream_t *s, const struct iovec *iov, int n)
{
    ssize_t w;
    do {
        if ((s->state_ & S_SOCKET) && n == 1) {
            /* send(): no msghdr nor iovec for the kernel to copy in */
            w = send(s->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
        } else if (s->state_ & S_SOCKET) {
            struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
            w = sendmsg(s->fd, &m, MSG_NOSIGNAL);
        } else {
            w = writev(s->fd, iov, n);
        }
    } while (w < 0 && errno == EINTR);
    return w < 0 ? -errno : w;
}

static void do_shutdown(br_stream_t *s)
{
    if ((s->state_ & (S_SHUT_WANT | S_SHUT_DONE)) == S_SHUT_WANT && s->queued_ == 0) {
        s->state_ |= S_SHUT_DONE;
        /* a peer already gone makes this ENOTCONN: nothing left to tell */
        (void)shutdown(s->fd, SHUT_WR);
    }
}

/* A write failed for good: drop the queue, refuse later writes, report. */
static void write_failed(br_stream_t *s, int err)
{
    free_queue(s);
    s->state_ |= S_FAILED;
    s->state_ &= ~S_PAUSED;
    (void)update_watch(s);
    if (s->on_error_ != NULL) {
        s->on_error_(s, err);
    }
}

int br_stream_write(br_stream_t *s, const void *buf, size_t len)
{
    if (closing(s)) {
        return -EBUSY;
    }
    if (s->state_ & (S_FAILED | S_SHUT_WANT)) {
        return -EPIPE;
    }
    if (len == 0) {
        return 0;
    }
    size_t done = 0;
    if (s->queued_ == 0) {
        struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
        ssize_t w = write_some(s, &iov, 1);
        if (w < 0 && w != -EAGAIN && w != -EWOULDBLOCK) {
            return (int)w;
        }
        done = w < 0 ? 0 : (size_t)w;
        if (done == len) {
            return 0;
        }
    }
    br__chunk_t *c = malloc(sizeof *c + (len - done));
    if (c == NULL) {
        if (done > 0) {
            s->state_ |= S_FAILED; /* part of buf went out: later bytes would be out of order */
        }
        return -ENOMEM;
    }
    memcpy(c->bytes, (const char *)buf + done, len - done);
    c->len = len - done;
    c->off = 0;
    c->next = NULL;
    if (s->tail_ != NULL) {
        s->tail_->next = c;
    } else {
        s->head_ = c;
    }
    s->tail_ = c;
    int was_empty = s->queued_ == 0;
    s->queued_ += c->len;
    if (was_empty) {
        int rc = update_watch(s);
        if (rc < 0) {
            write_failed(s, rc);
            return 0; /* reported through on_error, as any queued failure */
        }
    }
    check_marks(s);
    return 0;
}

size_t br_stream_queued(const br_stream_t *s)
{
    return s->queued_;
}

void br_stream_discard(br_stream_t *s)
{
    if (closing(s) || s->queued_ == 0) {
        return;
    }
    free_queue(s);
    s->state_ &= ~S_PAUSED;
    (void)update_watch(s); /* only narrows the watch */
}

int br_stream_shutdown(br_stream_t *s)
{
    if (closing(s)) {
        return -EBUSY;
    }
    if (!(s->state_ & S_SOCKET)) {
        return -ENOTSOCK;
    }
    s->state_ |= S_SHUT_WANT;
    do_shutdown(s);
    return 0;
}

static void flush(br_stream_t *s)
{
    while (s->queued_ > 0) {
        struct iovec iov[IOV_BATCH];
        int n = 0;
        for (br__chunk_t *c = s->head_; c != NULL && n < IOV_BATCH; c = c->next, n++) {
            iov[n].iov_base = c->bytes + c->off;
            iov[n].iov_len = c->len - c->off;
        }
        ssize_t w = write_some(s, iov, n);
        if (w == -EAGAIN || w == -EWOULDBLOCK) {
            break;
        }
        if (w < 0) {
            write_failed(s, (int)w);
            return;
        }
        s->queued_ -= (size_t)w;
        while (w > 0) {
            br__chunk_t *c = s->head_;
            size_t left = c->len - c->off;
            if ((size_t)w < left) {
                c->off += (size_t)w;
                break;
            }
            w -= (ssize_t)left;
            s->head_ = c->next;
            free(c);
        }
        if (s->head_ == NULL) {
            s->tail_ = NULL;
        }
    }
    if (s->queued_ == 0) {
        int rc = update_watch(s);
        if (rc < 0) {
            write_failed(s, rc);
            return;
        }
        do_shutdown(s);
    }
    check_marks(s);
    if (s->queued_ == 0 && !closing(s) && s->on_empty_ != NULL) {
        s->on_empty_(s);
    }
}

static void read_once(br_stream_t *s)
{
    char *buf = NULL;
    size_t size = s->read_size_;
    ssize_t n;
    int rc = BR_STREAM_LOOP_BUFFER;
    if (s->on_alloc_ != NULL) {
        rc = s->on_alloc_(s, &buf, &size);
        if (closing(s) || !(s->state_ & S_READING) || rc == BR_STREAM_NOT_NOW) {
            return; /* the callback closed the stream, stopped reading, or reads later */
        }
        if (rc < 0 || (rc == 0 && (buf == NULL || size == 0)) || rc > BR_STREAM_NOT_NOW) {
            n = rc < 0 ? rc : -EINVAL;
            buf = NULL;
            goto stop;
        }
    }
    if (rc == BR_STREAM_LOOP_BUFFER) {
        size = s->read_size_;
        if ((buf = br__loop_read_buf(s->handle.loop, size)) == NULL) {
            n = -ENOMEM;
            goto stop;
        }
    }
    do {
        n = read(s->fd, buf, size);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return;
    }
    if (n > 0) {
        s->on_read_(s, buf, n);
        return;
    }
    if (n < 0) {
        n = -errno;
    }
stop:
    s->state_ &= ~S_READING;
    (void)update_watch(s); /* stopping never fails in a way worth more than the report below */
    s->on_read_(s, buf, n);
}

int br_stream_read_now(br_stream_t *s)
{
    if (closing(s)) {
        return -EBUSY;
    }
    if (!(s->state_ & S_READING)) {
        return -EINVAL;
    }
    read_once(s);
    return 0;
}

int br_stream_flush_now(br_stream_t *s)
{
    if (closing(s)) {
        return -EBUSY;
    }
    if (s->queued_ > 0) {
        flush(s);
    }
    return 0;
}

static void on_io(br_io_t *io, unsigned revents)
{
    br_stream_t *s = io->handle.data;
    /* an error or hangup shows itself in the read or the write it wakes */
    if ((revents & (BR_READABLE | BR_ERROR | BR_HUP)) && (s->state_ & S_READING)) {
        read_once(s);
    }
    if ((revents & (BR_WRITABLE | BR_ERROR | BR_HUP)) && !closing(s) && s->queued_ > 0) {
        /* asked after the read: the read callback may have closed or
         * aborted the stream; NOT_NOW keeps the queue and the watch */
        if (s->on_flush_ == NULL || s->on_flush_(s) != BR_STREAM_NOT_NOW) {
            if (!closing(s) && s->queued_ > 0) {
                flush(s);
            }
        }
    }
}

void br__stream_close(br_stream_t *s)
{
    s->state_ |= S_CLOSING;
    s->state_ &= ~S_READING;
    free_queue(s);
    (void)br_io_stop(&s->io_); /* the table entry goes whatever the kernel says */
    /* The fd closes now, as libuv's uv_close does and as a program closing
     * a socket expects (the peer sees it at once, not at the loop's next
     * iteration). An event the current poll already returned for its
     * number finds no watcher (the table entry is gone) or, if a new fd
     * took the number meanwhile, a spurious readiness its handler meets
     * with EAGAIN, as readiness is only ever a hint. */
    br__close_fd(&s->fd);
}
