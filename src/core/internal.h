/*
 * internal.h — private helpers of the engine (never included by the binding).
 *
 * Names here are br__ (non-static, internal) or static inline.
 */
#ifndef BRAID_INTERNAL_H
#define BRAID_INTERNAL_H

#include "braid.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>

/* Writes "braid: fatal: <what>: <ERRNAME>" to stderr and aborts.
 *
 * Only for failures that cannot happen unless memory is corrupt or a caller
 * broke a documented rule (a mutex that cannot be locked, a futex wake that
 * fails): carrying on would hang or corrupt silently. It uses nothing but
 * write(2) and abort(), so it is async-signal-safe. `err` is a positive
 * errno value. */
_Noreturn void br__fatal(const char *what, int err);

/* pthread wrappers that abort on failure (as libuv's uv_mutex_lock does):
 * with default attributes these fail only on a corrupt or destroyed object,
 * and a caller that ignored the failure would race or deadlock. */
static inline void br__mutex_lock(pthread_mutex_t *mu)
{
    int err = pthread_mutex_lock(mu);
    if (err != 0)
        br__fatal("pthread_mutex_lock", err);
}

static inline void br__mutex_unlock(pthread_mutex_t *mu)
{
    int err = pthread_mutex_unlock(mu);
    if (err != 0)
        br__fatal("pthread_mutex_unlock", err);
}

static inline void br__cond_wait(pthread_cond_t *cv, pthread_mutex_t *mu)
{
    int err = pthread_cond_wait(cv, mu);
    if (err != 0)
        br__fatal("pthread_cond_wait", err);
}

static inline void br__cond_signal(pthread_cond_t *cv)
{
    int err = pthread_cond_signal(cv);
    if (err != 0)
        br__fatal("pthread_cond_signal", err);
}

static inline void br__cond_broadcast(pthread_cond_t *cv)
{
    int err = pthread_cond_broadcast(cv);
    if (err != 0)
        br__fatal("pthread_cond_broadcast", err);
}

/* Sets O_NONBLOCK on fd (the streams and datagram sockets take fds that
 * may be blocking). 0 or -errno. */
static inline int br__set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0))
        return -errno;
    return 0;
}

/* One step of a spin-wait: tells the CPU (and a hyperthread sibling) that
 * this is a busy loop. */
static inline void br__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif /* BRAID_INTERNAL_H */
