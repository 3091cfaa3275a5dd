/*
 * udp.c — br_udp_t: datagram sockets on a br_loop_t (see braid.h).
 *
 * Receives: one recvfrom per readable callback into the loop's read buffer
 * (shared with its streams), at asyncio's max_size (256 KiB: an IP datagram
 * is at most 64 KiB, a Unix one can be larger), so several sockets share
 * the loop fairly.
 * A handle of its own over an internal br_io_t, as br_stream_t. Sends: at once when nothing is queued;
 * EAGAIN (full socket buffer) queues a copy with its address, and the
 * queue drains in order when the socket becomes writable. A datagram the
 * kernel refuses for good (EMSGSIZE, EHOSTUNREACH, ...) is dropped and
 * reported, and the ones behind it still go. A flush callback may put the
 * flush off to br_udp_flush_now (an embedder with its own ready queue).
 */
#include "internal.h"
#include "loop_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_DATAGRAM (256 * 1024) /* asyncio's max_size; a Unix datagram may exceed 64 KiB */

struct br__dgram_s {
    br__dgram_t *next;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    size_t len;
    char bytes[];
};

static void on_io(br_io_t *io, unsigned revents);

static int update_watch(br_udp_t *u)
{
    unsigned events = (u->receiving_ ? BR_READABLE : 0) | (u->head_ ? BR_WRITABLE : 0);
    int rc = events ? br_io_start(&u->io_, events, on_io) : br_io_stop(&u->io_);
    if (events && rc == 0)
        br__handle_start(&u->handle);
    else if (!events)
        br__handle_stop(&u->handle);
    return rc;
}

int br_udp_init(br_loop_t *loop, br_udp_t *u, int fd)
{
    memset(u, 0, sizeof *u);
    if (fd < 0) {
        return -EBADF;
    }
    int type;
    socklen_t tl = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0) {
        return -errno;
    }
    if (type != SOCK_DGRAM) {
        return -EPROTOTYPE;
    }
    int rc = br__set_nonblocking(fd);
    if (rc < 0) {
        return rc;
    }
    br__handle_init(loop, &u->handle, BR_HANDLE_UDP);
    br__io_init_internal(loop, &u->io_, fd);
    u->io_.handle.data = u;
    u->fd = fd;
    return 0;
}

void br_udp_set_error_cb(br_udp_t *u, br_udp_error_cb on_error)
{
    u->on_error_ = on_error;
}

void br_udp_set_drain_cb(br_udp_t *u, br_udp_drain_cb on_drain)
{
    u->on_drain_ = on_drain;
}

void br_udp_set_flush_cb(br_udp_t *u, br_udp_flush_cb on_flush)
{
    u->on_flush_ = on_flush;
}

int br_udp_recv_start(br_udp_t *u, br_udp_recv_cb cb)
{
    if (cb == NULL) {
        return -EINVAL;
    }
    if (u->closing_) {
        return -EBUSY;
    }
    u->on_recv_ = cb;
    int was = u->receiving_;
    u->receiving_ = 1;
    int rc = update_watch(u);
    if (rc < 0) {
        u->receiving_ = was;
    }
    return rc;
}

int br_udp_recv_stop(br_udp_t *u)
{
    if (u->closing_ || !u->receiving_) {
        return 0;
    }
    u->receiving_ = 0;
    return update_watch(u);
}

int br_udp_receiving(const br_udp_t *u)
{
    return u->receiving_;
}

static ssize_t send_one(br_udp_t *u, const void *buf, size_t len, const struct sockaddr *addr, socklen_t addrlen)
{
    ssize_t w;
    do {
        w = sendto(u->fd, buf, len, MSG_NOSIGNAL, addr, addrlen);
    } while (w < 0 && errno == EINTR);
    return w < 0 ? -errno : w;
}

int br_udp_send(br_udp_t *u, const void *buf, size_t len, const struct sockaddr *addr, socklen_t addrlen)
{
    if (u->closing_) {
        return -EBUSY;
    }
    if (addr != NULL && (addrlen == 0 || addrlen > sizeof(struct sockaddr_storage))) {
        return -EINVAL;
    }
    if (u->head_ == NULL) {
        ssize_t w = send_one(u, buf, len, addr, addrlen);
        if (w >= 0) {
            return 0; /* a datagram goes whole or not at all */
        }
        if (w != -EAGAIN && w != -EWOULDBLOCK && w != -ENOBUFS) {
            return (int)w;
        }
    }
    br__dgram_t *d = malloc(sizeof *d + len);
    if (d == NULL) {
        return -ENOMEM;
    }
    memcpy(d->bytes, buf, len);
    d->len = len;
    d->addrlen = addr ? addrlen : 0;
    if (addr != NULL) {
        memcpy(&d->addr, addr, addrlen);
    }
    d->next = NULL;
    int was_empty = u->head_ == NULL;
    if (u->tail_ != NULL) {
        u->tail_->next = d;
    } else {
        u->head_ = d;
    }
    u->tail_ = d;
    u->queued_ += len;
    u->nqueued_++;
    if (was_empty) {
        int rc = update_watch(u);
        if (rc < 0) {
            /* unqueue it again: the caller hears of it now */
            u->head_ = u->tail_ = NULL;
            u->queued_ = 0;
            u->nqueued_ = 0;
            free(d);
            return rc;
        }
    }
    return 0;
}

static void free_queue(br_udp_t *u)
{
    while (u->head_ != NULL) {
        br__dgram_t *d = u->head_;
        u->head_ = d->next;
        free(d);
    }
    u->tail_ = NULL;
    u->queued_ = 0;
    u->nqueued_ = 0;
}

void br_udp_discard(br_udp_t *u)
{
    if (u->closing_ || u->head_ == NULL) {
        return;
    }
    free_queue(u);
    (void)update_watch(u); /* only ever narrows the watch here */
}

size_t br_udp_queued(const br_udp_t *u)
{
    return u->queued_;
}

size_t br_udp_queued_datagrams(const br_udp_t *u)
{
    return u->nqueued_;
}

static void flush(br_udp_t *u)
{
    int sent = 0;
    while (u->head_ != NULL && !u->closing_) {
        br__dgram_t *d = u->head_;
        ssize_t w = send_one(u, d->bytes, d->len, d->addrlen ? (struct sockaddr *)&d->addr : NULL, d->addrlen);
        if (w == -EAGAIN || w == -EWOULDBLOCK || w == -ENOBUFS) {
            break;
        }
        u->head_ = d->next;
        if (u->head_ == NULL) {
            u->tail_ = NULL;
        }
        u->queued_ -= d->len;
        u->nqueued_--;
        free(d);
        sent = 1;
        if (w < 0 && u->on_error_ != NULL) {
            u->on_error_(u, (int)w); /* may close u: the loop condition checks */
        }
    }
    if (u->closing_) {
        return;
    }
    (void)update_watch(u); /* only ever narrows the watch here */
    if (sent && u->on_drain_ != NULL) {
        u->on_drain_(u); /* may send (the queue grows again) or close u */
    }
}

int br_udp_flush_now(br_udp_t *u)
{
    if (u->closing_) {
        return -EBUSY;
    }
    if (u->head_ != NULL) {
        flush(u);
    }
    return 0;
}

static void on_io(br_io_t *io, unsigned revents)
{
    br_udp_t *u = io->handle.data;
    if ((revents & (BR_READABLE | BR_ERROR)) && u->receiving_) {
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        char *buf = br__loop_read_buf(u->handle.loop, MAX_DATAGRAM);
        ssize_t n = -1;
        errno = ENOMEM;
        while (buf != NULL && (n = recvfrom(u->fd, buf, MAX_DATAGRAM, 0, (struct sockaddr *)&from, &fl)) < 0 &&
               errno == EINTR) {
        }
        if (n >= 0) {
            u->on_recv_(u, buf, n, (struct sockaddr *)&from, fl);
        } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
            u->on_recv_(u, NULL, -errno, NULL, 0);
        }
    }
    if ((revents & (BR_WRITABLE | BR_ERROR)) && !u->closing_ && u->head_ != NULL) {
        /* asked after the receive, whose callback may have closed u */
        if (u->on_flush_ == NULL || u->on_flush_(u) != BR_UDP_NOT_NOW) {
            if (!u->closing_ && u->head_ != NULL) {
                flush(u);
            }
        }
    }
}

void br__udp_close(br_udp_t *u)
{
    u->closing_ = 1;
    u->receiving_ = 0;
    free_queue(u);
    (void)br_io_stop(&u->io_); /* the table entry goes whatever the kernel says */
    /* The fd closes now, as libuv's uv_close does and as a program closing
     * a socket expects (the peer sees it at once, not at the loop's next
     * iteration). An event the current poll already returned for its
     * number finds no watcher (the table entry is gone) or, if a new fd
     * took the number meanwhile, a spurious readiness its handler meets
     * with EAGAIN, as readiness is only ever a hint. */
    br__close_fd(&u->fd);
}
