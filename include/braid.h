/*
 * braid.h — the public C API of the braid engine.
 *
 * The engine is plain C (no Python): a thread pool, a cross-thread wakeup
 * (eventfd) and a one-shot event (futex). Later parts add the reactor,
 * sockets, the process supervisor and shared memory.
 *
 * Conventions (see DESIGN.md):
 *   - every function that can fail returns 0 (or a count) or a negative errno;
 *     br_strerror() names it. errno is never used to carry an error out.
 *   - the caller allocates every handle (br_threadpool_t, br_work_t, ...);
 *     the ownership rule is written next to each declaration.
 *   - names: br_ public, br__ internal, BR_ macros.
 */
#ifndef BRAID_H
#define BRAID_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BR_VERSION_MAJOR 0
#define BR_VERSION_MINOR 1
#define BR_VERSION_PATCH 0
#define BR_VERSION_STRING "0.1.0"

/* ---------------------------------------------------------------- errors */

/* Name of a negative errno (or of 0), never NULL. Thread-safe. */
const char *br_strerror(int err);

/* Monotonic clock in nanoseconds (CLOCK_MONOTONIC). */
int64_t br_now_ns(void);

/* ---------------------------------------------------------------- event
 * br_event_t: a one-shot event any number of threads can wait on, built on a
 * futex. Four bytes, no allocation, no teardown: it can live inside any
 * object (braid's Python futures embed one).
 *
 *   UNSET --br_event_set--> SET     (SET is final; waiters are woken)
 *
 * Ownership: caller-allocated; zeroed memory or br_event_init() makes it
 * UNSET. A waiter must keep the memory alive until br_event_wait returns;
 * a setter must keep it alive until br_event_set returns.
 */
typedef struct br_event_s {
    uint32_t word_; /* private: 0 unset, 1 set, 2 unset with sleepers */
} br_event_t;

void br_event_init(br_event_t *ev);
/* Sets the event and wakes every waiter. Idempotent. Async-signal-safe. */
void br_event_set(br_event_t *ev);
/* 1 if set, 0 if not. Acquire ordering: data written before set is visible. */
int br_event_is_set(const br_event_t *ev);
/* Waits until set. timeout_ns < 0 waits forever. Returns 0 once set,
 * -ETIMEDOUT when the time ran out, -EINTR when a signal handler ran (the
 * caller decides whether to wait again; the event may still be unset). */
int br_event_wait(br_event_t *ev, int64_t timeout_ns);

/* ---------------------------------------------------------------- wakeup
 * br_wakeup_t: a cross-thread (and async-signal-safe) wakeup on an eventfd.
 * Any thread signals; one owner waits or polls its fd (the event loop will
 * register the fd with epoll). Signals coalesce: many signals before a drain
 * are one wakeup, and a signal that finds one already pending makes no
 * syscall.
 *
 * Ownership: caller-allocated. br_wakeup_init opens the fd; br_wakeup_close
 * closes it and must not race with br_wakeup_signal.
 */
typedef struct br_wakeup_s {
    int fd;            /* the eventfd, readable while a signal is pending */
    uint32_t pending_; /* private: 1 between a signal and the next drain */
} br_wakeup_t;

int br_wakeup_init(br_wakeup_t *w);
/* 0 or -errno (write failure other than a full counter). */
int br_wakeup_signal(br_wakeup_t *w);
/* Consumes a pending signal: 1 if there was one, 0 if not, or -errno. */
int br_wakeup_drain(br_wakeup_t *w);
/* Waits up to timeout_ms (< 0: forever) for a signal and consumes it:
 * 1 woken, 0 timed out, -EINTR on a signal handler, other -errno. */
int br_wakeup_wait(br_wakeup_t *w, int timeout_ms);
void br_wakeup_close(br_wakeup_t *w);

/* ---------------------------------------------------------------- thread pool
 * br_threadpool_t runs br_work_t items on up to `max_threads` worker threads.
 * Threads start lazily: a submit that finds no idle worker starts one, until
 * the maximum is reached.
 *
 * Work item life cycle:
 *
 *            submit            a worker takes it          work() returns
 *   (new) ---------> QUEUED ----------------------> RUNNING --------------> DONE
 *                      |                                            done(w, 0)
 *                      | br_threadpool_cancel / close(CANCEL)
 *                      +-------------------------------------------> DONE
 *                                                       done(w, -ECANCELED)
 *
 * Pool life cycle:
 *
 *   init --> OPEN --close()--> CLOSED --join()--> JOINED --destroy()--> (gone)
 *             |  submit ok      submit = -ESHUTDOWN; queued work still runs
 *             |                 unless closed with BR_CLOSE_CANCEL
 *             +--detach()--> like CLOSED, but nobody joins: the last worker
 *                             to exit calls on_detached(pool) and touches the
 *                             pool no more; that callback may free it.
 */
typedef struct br_work_s br_work_t;
typedef struct br_threadpool_s br_threadpool_t;

/* Runs on a worker thread (or on a thread that took the item with
 * br_threadpool_try_take). */
typedef void (*br_work_cb)(br_work_t *work);
/* Called once per submitted item: on the worker right after work() with
 * status 0, or with -ECANCELED on the thread that cancelled it. May be NULL. */
typedef void (*br_done_cb)(br_work_t *work, int status);
/* Thread hooks: run on each worker thread as it starts / as it exits. */
typedef void (*br_thread_cb)(br_threadpool_t *pool, void *arg);
typedef void (*br_pool_cb)(br_threadpool_t *pool);

/* Ownership: caller-allocated; must stay alive from submit until done() has
 * been called (or, with done == NULL, until work() has returned). The pool
 * never frees it. Fill `work`, `done`, `data`; the rest is private. */
struct br_work_s {
    br_work_cb work;
    br_done_cb done;
    void *data;
    br_work_t *next_;
    br_work_t *prev_;
    int state_;
};

enum br_close_mode {
    BR_CLOSE_DRAIN = 0,  /* queued items still run */
    BR_CLOSE_CANCEL = 1  /* queued items complete with -ECANCELED at once */
};

typedef struct br_threadpool_options_s {
    unsigned max_threads;       /* >= 1 */
    size_t stack_size;          /* 0: the system default */
    const char *name_prefix;    /* thread names "<prefix>_<n>" (15 chars max
                                   shown by the kernel); NULL: "braid" */
    unsigned spin_ns;           /* 0: an idle worker sleeps at once. Else one
                                   idle worker at a time polls the queue for
                                   up to this long before it sleeps, which
                                   saves a wakeup when work comes in a steady
                                   trickle (one submit, one result, ...) */
    br_thread_cb on_thread_start; /* may be NULL */
    br_thread_cb on_thread_exit;  /* may be NULL */
    void *hook_arg;
} br_threadpool_options_t;

/* Ownership: caller-allocated; valid from br_threadpool_init until
 * br_threadpool_destroy returns (or until on_detached runs). All fields are
 * private. */
struct br_threadpool_s {
    pthread_mutex_t mu_;
    pthread_cond_t work_cv_;     /* idle workers sleep here */
    pthread_cond_t exit_cv_;     /* join() waits here for workers to exit */
    br_work_t *head_;
    br_work_t *tail_;
    size_t queued_;
    unsigned max_threads_;
    unsigned started_;           /* threads created (never decreases) */
    unsigned live_;              /* threads not yet exited */
    unsigned idle_;              /* threads waiting for work */
    unsigned spinning_;          /* threads polling the queue (spin_ns) */
    int state_;
    pthread_t *threads_;
    br_pool_cb on_detached_;
    br_threadpool_options_t opts_;
    char name_prefix_[16];
};

/* 0, -EINVAL (max_threads == 0), -ENOMEM. Starts no thread yet. */
int br_threadpool_init(br_threadpool_t *pool, const br_threadpool_options_t *opts);
/* Queues `work` (FIFO). 0, -EINVAL (no work callback, or item already
 * queued), -ESHUTDOWN (pool closed), or -errno from pthread_create when no
 * worker exists and none could be started. Thread-safe. */
int br_threadpool_submit(br_threadpool_t *pool, br_work_t *work);
/* Removes a queued item and calls done(work, -ECANCELED) on this thread
 * before returning 0. -EBUSY if it is running or done (nothing happens). */
int br_threadpool_cancel(br_threadpool_t *pool, br_work_t *work);
/* For batching from inside a work callback: takes the oldest queued item,
 * if any, and marks it RUNNING. The caller must run it with
 * br_threadpool_run_taken(). NULL when the queue is empty. */
br_work_t *br_threadpool_try_take(br_threadpool_t *pool);
/* Runs a taken item: work(), then done(work, 0). */
void br_threadpool_run_taken(br_work_t *work);
/* Items queued and not yet taken. */
size_t br_threadpool_queued(br_threadpool_t *pool);
/* Number of worker threads started so far. */
unsigned br_threadpool_threads(br_threadpool_t *pool);
/* Number of worker threads that have not yet exited. After close, 0 means
 * br_threadpool_join will not wait. */
unsigned br_threadpool_live(br_threadpool_t *pool);
/* Refuses further submits; with BR_CLOSE_CANCEL, completes every queued
 * item with -ECANCELED on this thread. Idempotent (a later CANCEL still
 * cancels what is queued). Never blocks on running work. */
int br_threadpool_close(br_threadpool_t *pool, enum br_close_mode mode);
/* Waits until every worker has exited (after close); 0 or -EINVAL if the
 * pool is still open or detached, -EDEADLK from a worker of this pool. */
int br_threadpool_join(br_threadpool_t *pool);
/* Closes (DRAIN) and hands the pool to its workers: the last one to exit
 * calls on_detached(pool), from which the pool may be destroyed and freed.
 * If no worker is live, on_detached runs on this thread before return. */
int br_threadpool_detach(br_threadpool_t *pool, br_pool_cb on_detached);
/* Releases the pool's resources. Only after join, or inside on_detached. */
void br_threadpool_destroy(br_threadpool_t *pool);

#ifdef __cplusplus
}
#endif
#endif /* BRAID_H */
