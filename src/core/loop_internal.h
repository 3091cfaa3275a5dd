/*
 * loop_internal.h — what the files of the event loop share (loop.c,
 * timer.c, async.c, signal.c and the readiness backend poll_*.c).
 *
 * The backend interface is six functions, in the manner of redis ae_*.c:
 * a backend knows fds and event masks, never handles. It reports readiness
 * by calling br__io_ready(), which finds the watcher through the loop's fd
 * table; that lookup is what makes a batch safe against callbacks that stop
 * or close other watchers (see loop.c).
 */
#ifndef BRAID_LOOP_INTERNAL_H
#define BRAID_LOOP_INTERNAL_H

#include "internal.h"

#include <stddef.h>

/* Handle flags (br_handle_t.flags_). */
#define BR__ACTIVE 0x01u   /* started */
#define BR__REF 0x02u      /* counts in loop->active_ while ACTIVE */
#define BR__CLOSING 0x04u  /* br_close called */
#define BR__CLOSED 0x08u   /* close callback ran */
#define BR__INTERNAL 0x10u /* the loop's own: not in the handle list */

#define br__container_of(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* ------------------------------------------------------------ backend
 * Events and revents are BR_READABLE | BR_WRITABLE (| BR_ERROR | BR_HUP).
 * All return 0 or -errno. */
int br__poll_init(br_loop_t *loop);
void br__poll_close(br_loop_t *loop);
int br__poll_add(br_loop_t *loop, int fd, unsigned events);
int br__poll_mod(br_loop_t *loop, int fd, unsigned events);
/* Ignores fds the kernel has already forgotten (closed: -EBADF, -ENOENT). */
int br__poll_del(br_loop_t *loop, int fd);
/* Waits up to timeout_ms (-1: forever), refreshes the loop's time, then
 * calls br__io_ready for each ready fd. 0 (also when interrupted by a
 * signal handler) or -errno. */
int br__poll_wait(br_loop_t *loop, int timeout_ms);

/* ------------------------------------------------------------ loop.c */
void br__io_ready(br_loop_t *loop, int fd, unsigned revents);
void br__handle_init(br_loop_t *loop, br_handle_t *h, int type);
void br__handle_start(br_handle_t *h);
void br__handle_stop(br_handle_t *h);
/* A watcher the loop uses itself (the async wakeup, a signalfd): not in
 * the handle list, never counted as keeping the loop alive. */
void br__io_init_internal(br_loop_t *loop, br_io_t *io, int fd);
/* The loop's read buffer, at least size bytes (NULL: no memory). Shared by
 * every stream and datagram socket of the loop: valid until the next call. */
char *br__loop_read_buf(br_loop_t *loop, size_t size);
/* close(*fd) once; *fd becomes -1. */
void br__close_fd(int *fd);

/* ------------------------------------------------------------ stream.c, udp.c */
/* br_close's part: stop, drop the queue, close the fd. */
void br__stream_close(br_stream_t *s);
void br__udp_close(br_udp_t *u);

/* ------------------------------------------------------------ timer.c */
void br__timers_run(br_loop_t *loop);
/* Poll timeout in ms to the earliest timer (rounded up, so the loop never
 * wakes just before a deadline and spins), or -1 if there is none. */
int br__timers_timeout(const br_loop_t *loop);
void br__timer_close(br_timer_t *timer);
void br__timers_free(br_loop_t *loop);

/* ------------------------------------------------------------ async.c */
int br__async_loop_init(br_loop_t *loop);
void br__async_loop_close(br_loop_t *loop);
void br__async_close(br_async_t *async);

/* ------------------------------------------------------------ signal.c */
void br__signal_close(br_signal_t *sig);

#endif /* BRAID_LOOP_INTERNAL_H */
