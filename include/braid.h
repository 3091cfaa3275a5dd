/*
 * braid.h — the public C API of the braid engine.
 *
 * The engine is plain C (no Python): a thread pool, a cross-thread wakeup
 * (eventfd), a one-shot event (futex), shared-memory message rings, child
 * processes, a reactor with timers, streams and datagram sockets, and a
 * process-pool supervisor with its worker side.
 *
 * Conventions (see DESIGN.md):
 *   - every function that can fail returns 0 (or a count) or a negative errno;
 *     br_strerror() names it. errno is never used to carry an error out.
 *   - the caller allocates every handle (br_threadpool_t, br_work_t, ...);
 *     the ownership rule is written next to each declaration.
 *   - names: br_ public, br__ internal, BR_ macros.
 *
 * Installed as libbraid.so.0 with this header and braid.pc (docs/C_API.md).
 * The library exports the functions declared here and nothing else, in the
 * symbol version BRAID_0.1 (src/core/libbraid.map).
 */
#ifndef BRAID_H
#define BRAID_H

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h> /* struct sockaddr, socklen_t */
#include <sys/types.h>  /* ssize_t */

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

/* The signals a helper thread should block: every asynchronous one, so that
 * a process-directed signal (Ctrl-C) reaches a thread that wants it, but
 * not the synchronous faults (SEGV, BUS, FPE, ILL, TRAP, SYS, ABRT), which
 * would otherwise kill the process silently. 0 or -errno. The thread pool's
 * workers use it; so should any thread an embedder starts. */
int br_async_signals(sigset_t *set);

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
/* 1 if unset with a waiter asleep in br_event_wait (or about to sleep), 0
 * otherwise. A hint: a waiter may announce itself just after it answers 0. */
int br_event_has_sleepers(const br_event_t *ev);
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
                                   up to this long before it sleeps (none while
                                   another polls, br_threadpool_expect_work's
                                   included), which saves a wakeup when work
                                   comes in a steady trickle (one submit, one
                                   result, ...) */
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
    unsigned spinning_;          /* threads polling the queue: the idle one
                                    (spin_ns) and any between expect_work and
                                    take_expected */
    unsigned retire_;            /* workers asked to exit (br_threadpool_retire_thread) */
    int state_;
    pthread_t *threads_;
    br_pool_cb on_detached_;
    br_event_t exited_;          /* set once closed and live_ is 0 */
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
/* For a done callback whose result lets its waiter submit the next item at
 * once (one submit, one result, ...): call br_threadpool_expect_work before
 * the waiter can see the result, then br_threadpool_take_expected. Between
 * the two the calling worker counts as one polling the queue, so an item
 * submitted meanwhile does not wake a sleeping worker (a futex wake-up, and a
 * second worker contending for the mutex) when this one is about to take it.
 * take_expected polls for up to spin_ns without the mutex and takes the
 * oldest item as br_threadpool_try_take does (NULL: none came, or the pool
 * closed). Every expect_work must be followed by one take_expected. */
void br_threadpool_expect_work(br_threadpool_t *pool);
br_work_t *br_threadpool_take_expected(br_threadpool_t *pool, int64_t spin_ns);
/* Runs a taken item: work(), then done(work, 0). */
void br_threadpool_run_taken(br_work_t *work);
/* Items queued and not yet taken. */
size_t br_threadpool_queued(br_threadpool_t *pool);
/* Writes off a worker that will not be back for a long while (its work()
 * is stuck): one more thread may start, and starts now if items are queued
 * with no worker free for them. 0, -ESHUTDOWN (closed), -ENOMEM, or -errno
 * from pthread_create. Thread-safe; never from a work callback's own item. */
int br_threadpool_add_thread(br_threadpool_t *pool);
/* Undoes one br_threadpool_add_thread once the written-off worker is back:
 * the next worker to look for an item (an idle one is woken) exits
 * instead, through on_thread_exit as at close. Thread-safe. */
void br_threadpool_retire_thread(br_threadpool_t *pool);
/* Number of worker threads started so far. */
unsigned br_threadpool_threads(br_threadpool_t *pool);
/* Number of worker threads that have not yet exited. After close, 0 means
 * br_threadpool_join will not wait. */
unsigned br_threadpool_live(br_threadpool_t *pool);
/* Refuses further submits; with BR_CLOSE_CANCEL, completes every queued
 * item with -ECANCELED on this thread. Idempotent (a later CANCEL still
 * cancels what is queued). Never blocks on running work. */
int br_threadpool_close(br_threadpool_t *pool, enum br_close_mode mode);
/* Waits, interruptibly, until every worker has exited (after close): 0
 * once they have (br_threadpool_join then returns at once), -ETIMEDOUT,
 * -EINTR when a signal handler ran on this thread (so a caller can react
 * to Ctrl-C and wait again), -EINVAL if the pool is open or detached. */
int br_threadpool_wait_exited(br_threadpool_t *pool, int64_t timeout_ns);
/* Waits until every worker has exited (after close); 0 or -EINVAL if the
 * pool is still open or detached, -EDEADLK from a worker of this pool. */
int br_threadpool_join(br_threadpool_t *pool);
/* Closes (DRAIN) and hands the pool to its workers: the last one to exit
 * calls on_detached(pool), from which the pool may be destroyed and freed.
 * If no worker is live, on_detached runs on this thread before return. */
int br_threadpool_detach(br_threadpool_t *pool, br_pool_cb on_detached);
/* Releases the pool's resources. Only after join, or inside on_detached. */
void br_threadpool_destroy(br_threadpool_t *pool);


/* ---------------------------------------------------------------- shared-memory ring
 * br_ring_t: a single-producer, single-consumer queue of messages in shared
 * memory (a memfd mapped by two processes), used to carry tasks and results
 * between a process pool and its workers without pipes or Python threads.
 *
 * A message is (type, tag, payload bytes). It travels as one or more
 * fragments: a payload larger than what fits is cut into fragments written
 * as the reader frees space, so a message of any size passes through a
 * ring of fixed capacity. Fragments are published whole (the reader never
 * sees half a fragment), in order; flags mark the FIRST and LAST fragment.
 *
 * Wakeups use two eventfds the caller owns: `data_fd` (the reader sleeps on
 * it, the writer signals it) and `space_fd` (the writer sleeps on it when
 * the ring is full). A side signals only when the other asked to be woken,
 * so a busy pair makes no syscalls.
 *
 *   sender:   br_ring_send(msg) -> 0 (all written) | -EAGAIN (partly: wait
 *             for space_fd, e.g. br_ring_wait_space, then call again)
 *   receiver: br_ring_recv(&frag) -> 0 | -EAGAIN (empty: wait for data_fd,
 *             e.g. br_ring_wait_data); read frag.data; br_ring_release(&frag)
 *
 * Ownership: the caller allocates br_ring_t and the mapping; the ring never
 * maps, unmaps or closes anything. Each process attaches its own br_ring_t
 * to its own mapping of the same memory. A peer that dies leaves at worst
 * an unfinished message (a FIRST without its LAST): the survivor drops it.
 */
#define BR_RING_FIRST 1u
#define BR_RING_LAST 2u

typedef struct br_ring_shared_s br_ring_shared_t; /* lives in the mapping */

typedef struct br_ring_s {
    br_ring_shared_t *shared_;
    unsigned char *data_;
    uint64_t cap_;      /* data bytes, a power of two */
    int data_fd;        /* eventfd: "there is data" */
    int space_fd;       /* eventfd: "there is space" */
} br_ring_t;

/* Fill type, tag, payload and len, with sent_ and started_ zero (a
 * designated initializer zeroes them); keep m and the payload unchanged
 * until br_ring_send returns 0. */
typedef struct br_ring_msg_s {
    uint32_t type;
    uint64_t tag;
    const void *payload;
    size_t len;
    size_t sent_;       /* private: payload bytes already written */
    int started_;       /* private: FIRST fragment written */
} br_ring_msg_t;

typedef struct br_ring_frag_s {
    uint32_t type;
    uint32_t flags;     /* BR_RING_FIRST | BR_RING_LAST */
    uint64_t tag;
    const unsigned char *data; /* valid until br_ring_release */
    size_t len;
    uint64_t size_;     /* private: bytes the fragment occupies */
} br_ring_frag_t;

/* Bytes of shared memory a ring of `capacity` data bytes needs (capacity is
 * rounded up to a power of two, at least 4 KiB); 0 if over 4 GiB. */
size_t br_ring_mem_size(size_t capacity);
/* Formats `mem` (br_ring_mem_size(capacity) bytes, zeroed or not) as an
 * empty ring. Done once, by one side, before either attaches. */
int br_ring_format(void *mem, size_t mem_size);
/* Attaches a view. -EINVAL if mem does not hold a formatted ring. */
int br_ring_attach(br_ring_t *r, void *mem, size_t mem_size, int data_fd, int space_fd);
/* Writes as much of `m` as fits now. 0 when the whole message is written,
 * -EAGAIN when part remains (call again when there is space), -EINVAL,
 * -EPROTO (the shared memory is corrupt), -errno from writing data_fd. */
int br_ring_send(br_ring_t *r, br_ring_msg_t *m);
/* Points `f` at the oldest fragment. 0, -EAGAIN when the ring is empty, or
 * -EPROTO when the shared memory is corrupt (the peer is broken: give up on
 * the ring). */
int br_ring_recv(br_ring_t *r, br_ring_frag_t *f);
/* Frees the fragment returned by the last br_ring_recv. */
void br_ring_release(br_ring_t *r, br_ring_frag_t *f);
/* Blocks until the ring has data (1), the timeout passes (0; < 0 waits for
 * ever) or a signal handler runs (-EINTR). Consumes data_fd's count. */
int br_ring_wait_data(br_ring_t *r, int64_t timeout_ns);
/* Blocks until a br_ring_send can make progress: 1, 0 timeout, -EINTR. */
int br_ring_wait_space(br_ring_t *r, int64_t timeout_ns);
/* For a reader that waits in epoll: asks to be woken on data_fd. Returns 1
 * if data is already there (do not sleep), 0 if armed. */
int br_ring_arm_data(br_ring_t *r);
/* Takes back a br_ring_arm_data: the writer will not signal data_fd for
 * what it sends next (a reader that polls instead of sleeping). */
void br_ring_disarm_data(br_ring_t *r);
/* Same for a writer waiting for space on space_fd. */
int br_ring_arm_space(br_ring_t *r);

/* br_ring_joiner_t: hands out whole messages instead of fragments, for a
 * reader that wants them whole (both ends of a process pool do). A message
 * of one fragment is handed out in place, without a copy; the fragments of
 * a longer one are copied into a buffer the joiner owns and reuses.
 *
 *   br_ring_recv_whole(r, &j, &m) -> 0: m.type, m.tag, m.data, m.len hold a
 *       whole message (m.flags is FIRST | LAST) until br_ring_release_whole
 *   -> -EAGAIN: no whole message yet (fragments taken so far are kept)
 *   -> -EPROTO: a corrupt ring, or a fragment out of order (no FIRST, or
 *       another type or tag than the message it continues)
 *   -> -ENOMEM: the message could not be buffered (it is dropped)
 *
 * A FIRST fragment while a message is unfinished drops the unfinished one
 * (a writer that died half-way; see br_ring_t).
 *
 * Ownership: caller-allocated; zeroed memory is a valid empty joiner. One
 * joiner per ring, used by the ring's one reader. br_ring_joiner_free
 * releases its buffer. */
typedef struct br_ring_joiner_s {
    unsigned char *buf_;  /* private from here on */
    size_t len_;
    size_t cap_;
    uint32_t type_;
    uint64_t tag_;
    int active_;          /* a message's FIRST fragment was taken */
} br_ring_joiner_t;

int br_ring_recv_whole(br_ring_t *r, br_ring_joiner_t *j, br_ring_frag_t *m);
/* Frees what the last br_ring_recv_whole handed out (its ring space, or
 * the joiner's buffer for the next message). */
void br_ring_release_whole(br_ring_t *r, br_ring_joiner_t *j, br_ring_frag_t *m);
void br_ring_joiner_free(br_ring_joiner_t *j);

/* ---------------------------------------------------------------- child processes
 * br_proc_t: a child process started with posix_spawn (no fork of a
 * multi-threaded parent), watched through a pidfd where the kernel has one
 * (Linux >= 5.3) and through waitid(WNOHANG) polling where it has not.
 *
 *   spawn --> RUNNING --(exits or is killed; poll/wait reaps it)--> EXITED
 *
 * Ownership: caller-allocated. After spawn, the caller must reap the child
 * (br_proc_poll or br_proc_wait returning 1) and then br_proc_close it.
 */
typedef struct br_proc_s {
    int pid;
    int pidfd;          /* -1 without pidfd support */
    int exited;         /* 1 once reaped */
    int exit_code;      /* valid if exited and term_signal == 0 */
    int term_signal;    /* the signal that killed it, or 0 */
} br_proc_t;

typedef struct br_spawn_options_s {
    const char *path;          /* executable (absolute path) */
    char *const *argv;         /* NULL-terminated */
    char *const *envp;         /* NULL: the caller's environment */
    const int *fds;            /* descriptors the child gets, as fds 3, 4, ... */
    int nfds;
} br_spawn_options_t;

/* 0, or -errno (also when exec fails: ENOENT, EACCES, ...). */
int br_proc_spawn(br_proc_t *p, const br_spawn_options_t *o);
/* 1 if the child has exited (and is now reaped; fields filled), 0 if it is
 * running, -errno. */
int br_proc_poll(br_proc_t *p);
/* Waits up to timeout_ns (< 0: for ever): 1 exited and reaped, 0 timeout,
 * -EINTR, -errno. */
int br_proc_wait(br_proc_t *p, int64_t timeout_ns);
/* Sends a signal (via the pidfd when there is one, so a recycled pid is
 * never hit). 0, -ESRCH once reaped, -errno. */
int br_proc_kill(br_proc_t *p, int sig);
/* Closes the pidfd. Does not reap or kill. */
void br_proc_close(br_proc_t *p);
/* In a worker process: ask the kernel to send `sig` when the parent dies
 * and check that the parent is still `expected_ppid`. 0, or -ESRCH if the
 * parent is already gone, or -errno. */
int br_proc_bind_to_parent(int sig, int expected_ppid);

/* ---------------------------------------------------------------- process templates
 * br_template_t: a "fork server". The parent starts one single-threaded
 * template process (with br_proc_spawn); it loads what the workers share
 * and then forks a new worker for each br_template_fork, in about a
 * millisecond. The parent itself is never forked. Each worker is made a
 * child of the PARENT (CLONE_PARENT), so it is reaped, watched and killed
 * through the returned br_proc_t exactly as a br_proc_spawn child.
 *
 *   start --> RUNNING --(fork finds it gone or hung)--> DEAD (forks: -EPIPE)
 *                |                                        |
 *                +---------- br_template_close -----------+--> reaped
 *
 * PR_SET_PDEATHSIG of the template and of every worker it forks follows
 * the parent THREAD that called br_template_start: start it from a thread
 * that outlives them all.
 *
 * Ownership: caller-allocated. br_template_fork may be called from any
 * thread (requests are serialized); br_template_close when no fork is
 * running; it must be called once start has succeeded, and is a no-op
 * after a failed start.
 */
#define BR_TEMPLATE_FD 3       /* the template's end of its socket */
#define BR_TEMPLATE_MAX_FDS 8  /* descriptors per worker (3 .. 10) */
#define BR_TEMPLATE_EXIT_SETUP 120 /* a new worker could not place its fds */

typedef struct br_template_s {
    br_proc_t proc;       /* the template process */
    int sock;             /* the parent's end, -1 once closed */
    int dead;             /* set when a fork found it gone, hung or out of step */
    int64_t timeout_ns;   /* how long a fork waits for the answer (< 0: for
                             ever, the default); the first one waits for
                             the template to load: set it accordingly */
    uint64_t seq;
    pthread_mutex_t lock; /* one request at a time */
} br_template_t;

/* Starts the template: o->path/argv/envp as for br_proc_spawn, o->nfds
 * must be 0. The template gets its socket as fd BR_TEMPLATE_FD and
 * /dev/null on the rest of 3 .. 3 + BR_TEMPLATE_MAX_FDS - 1, which keeps
 * those numbers free for the workers' descriptors. 0 or -errno (also when
 * exec fails: -ENOENT, -EACCES, ...). Returns without waiting for the
 * template to be ready: the first fork waits for it. */
int br_template_start(br_template_t *t, const br_spawn_options_t *o);
/* Forks a worker with fds[0..nfds) as its 3, 4, ... (nfds <= BR_TEMPLATE_MAX_FDS).
 * `tpl` is a br_template_t *; void * so that this function is a process
 * pool's spawn hook as it is. 0 with *out RUNNING (reap it and
 * br_proc_close it as a br_proc_spawn child), or: -EPIPE the template is
 * gone (start another), -ETIMEDOUT no answer within timeout_ns (it is
 * marked dead: close it), -EDEADLK the template has more than one thread
 * and will not fork, -ECHILD the new process is not our child, -errno from
 * the template's clone (-EAGAIN, -ENOMEM, ...) or from sending. */
int br_template_fork(void *tpl, const int *fds, int nfds, br_proc_t *out);
/* Closes the socket (the template leaves when it sees that), waits up to
 * grace_ns for it to exit, SIGKILLs it if it has not, and reaps it. Its
 * exit status stays in t->proc. 0 if it left by itself, 1 if it had to be
 * killed, -errno. */
int br_template_close(br_template_t *t, int64_t grace_ns);

/* In the template process. */
typedef struct br_template_request_s {
    int fds[BR_TEMPLATE_MAX_FDS];
    int nfds;
    uint64_t seq;
} br_template_request_t;
/* Waits for the next request on `sock` (BR_TEMPLATE_FD): 1 with *req
 * filled (its descriptors are open, close-on-exec, in this process), 0 when
 * the parent has closed its end or died (leave), -EINTR, -errno. Malformed
 * requests are answered -EPROTO and skipped. */
int br_template_accept(int sock, br_template_request_t *req);
/* Forks the worker asked for and answers the parent. Returns, like fork():
 * 0 in the new worker, with the request's descriptors as 3, 4, ... and the
 * template's socket closed (signal dispositions, memory and every other
 * descriptor as the template had them; PR_SET_PDEATHSIG cleared: re-arm it
 * with br_proc_bind_to_parent); the new pid in the template; or -errno in
 * the template (the parent has been told). Either way the template's copies
 * of the request's descriptors are closed. Run any fork hooks of the
 * caller's runtime around it (before, then after in both processes). Only
 * forks a single-threaded process (-EDEADLK otherwise). */
int br_template_fork_child(int sock, br_template_request_t *req);

/* ---------------------------------------------------------------- event loop
 * br_loop_t: a single-threaded reactor (epoll) with a timer heap, file
 * descriptor watchers (br_io_t), cross-thread wakeups (br_async_t) and
 * signal delivery (br_signal_t). Everything except br_async_send runs on the
 * thread that calls br_loop_run.
 *
 * One iteration of br_loop_run, in this order:
 *
 *   1. update the cached time (br_loop_now)
 *   2. run the timers that are due, in (deadline, start order)
 *   3. poll for I/O; the timeout is 0 if close callbacks are pending, a stop
 *      was asked or the mode is BR_RUN_NOWAIT; else the time to the next
 *      timer; else infinite. The cached time is refreshed when poll returns.
 *   4. dispatch I/O callbacks (br_io_t, and br_async_t / br_signal_t, which
 *      ride on the same poll)
 *   5. run the close callbacks of handles closed before this point
 *
 * Handle life cycle (every handle type):
 *
 *          init             start               br_close(h, cb)
 *   (mem) ------> INACTIVE <------> ACTIVE ----------------------> CLOSING
 *                    |      stop                                     |
 *                    +---------------- br_close(h, cb) --------------+
 *                                                                    | step 5 of
 *                                                                    v an iteration
 *                                                      CLOSED: cb(h) has run; the
 *                                                      memory is the caller's again
 *
 * ACTIVE handles that are referenced (the default; see br_unref) keep
 * br_loop_run going. A br_async_t is ACTIVE from init to close.
 *
 * Ownership: the caller allocates the loop and every handle. A handle's
 * memory must stay valid from init until its close callback has run (or,
 * with a NULL close callback, until the iteration that ran it has ended);
 * it may be freed inside the close callback. The loop must outlive its
 * handles: br_loop_close refuses while any handle is not yet CLOSED.
 */
typedef struct br_loop_s br_loop_t;
typedef struct br_handle_s br_handle_t;
typedef struct br_io_s br_io_t;
typedef struct br_timer_s br_timer_t;
typedef struct br_async_s br_async_t;
typedef struct br_signal_s br_signal_t;

typedef void (*br_close_cb)(br_handle_t *handle);
/* revents: BR_READABLE | BR_WRITABLE among the events asked for, plus
 * BR_ERROR / BR_HUP whenever the kernel reports them. */
typedef void (*br_io_cb)(br_io_t *io, unsigned revents);
typedef void (*br_timer_cb)(br_timer_t *timer);
typedef void (*br_async_cb)(br_async_t *async);
typedef void (*br_signal_cb)(br_signal_t *sig, int signum);

enum br_handle_type {
    BR_HANDLE_IO = 1,
    BR_HANDLE_TIMER = 2,
    BR_HANDLE_ASYNC = 3,
    BR_HANDLE_SIGNAL = 4,
    BR_HANDLE_STREAM = 5,
    BR_HANDLE_UDP = 6
};

#define BR_READABLE 0x1u
#define BR_WRITABLE 0x2u
#define BR_ERROR 0x4u /* revents only */
#define BR_HUP 0x8u   /* revents only */

enum br_run_mode {
    BR_RUN_DEFAULT = 0, /* iterate until no active handle is left or stop */
    BR_RUN_ONCE = 1,    /* one iteration that may block; if it blocked for a
                           timer, that timer runs before it returns */
    BR_RUN_NOWAIT = 2   /* one iteration that never blocks */
};

/* The common first member of every handle: br_close and the data pointer
 * work on any handle through it (br_close(&timer.handle, cb)). */
struct br_handle_s {
    void *data;                 /* the caller's; the loop never touches it */
    br_loop_t *loop;            /* read-only */
    int type;                   /* enum br_handle_type, read-only */
    unsigned flags_;            /* private from here on */
    br_close_cb close_cb_;
    br_handle_t *next_;         /* the loop's list of open handles */
    br_handle_t *prev_;
    br_handle_t *close_next_;   /* the queue of pending close callbacks */
};

/* br_io_t: watches one file descriptor for readiness, level-triggered: the
 * callback runs on every iteration while the fd stays ready, so it may read
 * as little as it likes. One br_io_t per fd per loop (-EEXIST otherwise).
 * The fd stays the caller's: stop or close the watcher before closing the
 * fd, or the kernel may keep reporting a file the loop can no longer
 * deregister. */
struct br_io_s {
    br_handle_t handle;
    int fd;                     /* read-only */
    unsigned events_;           /* private: what is registered, 0 if none */
    br_io_cb cb_;
};

/* br_timer_t: fires once after timeout_ns, then every repeat_ns if that is
 * not 0. Deadlines count from br_loop_now(). Timers with equal deadlines run
 * in the order they were started. A timer started from a callback runs on
 * the next iteration at the earliest, even with a timeout of 0. A repeating
 * timer's next deadline is its previous deadline plus repeat_ns (late
 * callbacks do not push later ones back); periods missed entirely while the
 * loop was busy are skipped, not run in a burst. */
struct br_timer_s {
    br_handle_t handle;
    br_timer_cb cb_;            /* private from here on */
    int64_t deadline_;
    int64_t repeat_;
    uint64_t seq_;
    size_t heap_index_;
};

/* br_async_t: wakes the loop from any thread. Sends coalesce: the callback
 * runs at least once after any br_async_send, on the loop thread, and once
 * for many sends that arrive before it runs. A send never blocks and is
 * async-signal-safe. */
struct br_async_s {
    br_handle_t handle;
    br_async_cb cb_;            /* private from here on */
    uint32_t pending_;
    br_async_t *next_;
    br_async_t *prev_;
};

/* br_signal_t: delivers one signal number through a signalfd. Start blocks
 * the signal in the calling thread's mask (the signalfd only sees blocked
 * signals) and stop restores it. A process-directed signal goes to any
 * thread that does not block it, so an embedding program with other threads
 * must block the signal in them too (e.g. before creating them), or the
 * signal may be delivered there instead of to the loop. */
struct br_signal_s {
    br_handle_t handle;
    int signum;                 /* read-only, 0 while stopped */
    br_signal_cb cb_;           /* private from here on */
    int unblock_on_stop_;
    br_io_t io_;
};

/* All fields private except data. */
struct br_loop_s {
    void *data;
    int64_t time_;
    struct br__poll_s *poll_;   /* the readiness backend's state */
    br_io_t **watchers_;        /* fd -> the br_io_t watching it */
    unsigned nwatchers_;
    unsigned active_;           /* ACTIVE and referenced handles */
    br_handle_t *handles_;      /* every handle not yet CLOSED */
    br_handle_t *closing_head_;
    br_handle_t *closing_tail_;
    br_timer_t **heap_;
    size_t heap_len_;
    size_t heap_cap_;
    uint64_t timer_seq_;
    br_async_t *asyncs_;
    br_async_t *async_cursor_;  /* the next one a wakeup scan visits */
    br_wakeup_t wakeup_;        /* what br_async_send signals */
    br_io_t wakeup_io_;
    void (*block_cb_)(br_loop_t *loop, int blocking);
    char *read_buf_;            /* what streams and datagram sockets read into */
    size_t read_buf_size_;
    int stop_;
    int running_;
};

/* 0 or -errno (epoll_create1, eventfd, -ENOMEM). */
int br_loop_init(br_loop_t *loop);
/* Runs iterations as `mode` says. Returns 1 if the loop is still alive
 * (br_loop_alive), 0 if not, -EBUSY if the loop is already running, or
 * -errno if polling failed. A stop request ends it after the current
 * iteration and is then forgotten. */
int br_loop_run(br_loop_t *loop, enum br_run_mode mode);
/* Asks br_loop_run to return after the current iteration (whose poll will
 * then not block). Loop thread only; from elsewhere, use a br_async_t. */
void br_loop_stop(br_loop_t *loop);
/* 1 if there are active referenced handles or pending close callbacks. */
int br_loop_alive(const br_loop_t *loop);
/* Releases the loop's fds and memory. -EBUSY while running or while any
 * handle is not yet CLOSED (its close callback has not run). */
int br_loop_close(br_loop_t *loop);
/* The monotonic time in ns cached by the current iteration. */
int64_t br_loop_now(const br_loop_t *loop);
/* cb(loop, 1) right before a poll that may block, cb(loop, 0) as soon as it
 * returns, before any callback: an embedder that runs the loop holding a
 * lock its callbacks need (the Python binding: the GIL) lets it go only
 * while the loop sleeps. NULL: none. Not while the loop runs. */
void br_loop_set_block_cb(br_loop_t *loop, void (*cb)(br_loop_t *loop, int blocking));
/* Refreshes the cached time (e.g. before starting timers after a long
 * computation outside the loop). */
void br_loop_update_time(br_loop_t *loop);

/* Closes any handle: stops it, and runs close_cb (may be NULL) from step 5
 * of the current or next iteration, never from inside br_close. Returns 0,
 * or -EINVAL if the handle is already closing or closed. */
int br_close(br_handle_t *handle, br_close_cb close_cb);
/* Calls cb for every handle of the loop not yet CLOSED (the closing ones
 * too); cb must not close handles other than the one it is given. */
void br_loop_walk(br_loop_t *loop, void (*cb)(br_handle_t *handle, void *arg), void *arg);
/* 1 from br_close until the close callback has run, and after. */
int br_is_closing(const br_handle_t *handle);
/* 1 if the handle is ACTIVE (started, not stopped or closed). */
int br_is_active(const br_handle_t *handle);
/* An unreferenced handle does not keep br_loop_run alive by itself (e.g. a
 * housekeeping timer, or a br_async_t that should not). Idempotent. */
void br_unref(br_handle_t *handle);
void br_ref(br_handle_t *handle);

/* Binds io to fd (no syscall). 0, or -EBADF for a negative fd. */
int br_io_init(br_loop_t *loop, br_io_t *io, int fd);
/* Watches for `events` (BR_READABLE | BR_WRITABLE, not 0), replacing what
 * was watched; cb replaces the callback. 0, -EINVAL, -EBADF (fd not open),
 * -EEXIST (another watcher has the fd), -EPERM (fd that epoll cannot watch,
 * e.g. a regular file), -ENOMEM, -EBUSY (closing). */
int br_io_start(br_io_t *io, unsigned events, br_io_cb cb);
/* Stops watching; a callback pending in the current batch is dropped.
 * Idempotent; 0 also if the fd was closed meanwhile. */
int br_io_stop(br_io_t *io);

int br_timer_init(br_loop_t *loop, br_timer_t *timer);
/* (Re)starts the timer: first call at br_loop_now() + timeout_ns, then
 * every repeat_ns (0: once). 0, -EINVAL (NULL cb, negative times), -ENOMEM,
 * -EBUSY (closing). */
int br_timer_start(br_timer_t *timer, br_timer_cb cb, int64_t timeout_ns, int64_t repeat_ns);
/* Idempotent; 0. */
int br_timer_stop(br_timer_t *timer);
/* Restarts a repeating timer at now + repeat; does nothing to a one-shot
 * one. -EINVAL if it was never started. */
int br_timer_again(br_timer_t *timer);
void br_timer_set_repeat(br_timer_t *timer, int64_t repeat_ns);
int64_t br_timer_get_repeat(const br_timer_t *timer);
/* Nanoseconds until the timer is due (0 if overdue or stopped). */
int64_t br_timer_get_due_in(const br_timer_t *timer);

/* Active at once (it keeps the loop alive unless br_unref'd). 0, -EINVAL. */
int br_async_init(br_loop_t *loop, br_async_t *async, br_async_cb cb);
/* Any thread, async-signal-safe. 0 or -errno (a failing eventfd write). The
 * caller must make sure no send is in progress or starts once br_close has
 * been called on the handle. */
int br_async_send(br_async_t *async);

int br_signal_init(br_loop_t *loop, br_signal_t *sig);
/* Watches signum (restarting with another number is allowed). Call it on
 * the thread that runs the loop: the signal is blocked in this thread's
 * mask until stop. 0, -EINVAL (bad number, SIGKILL, SIGSTOP), -EBUSY, or
 * -errno from signalfd. */
int br_signal_start(br_signal_t *sig, br_signal_cb cb, int signum);
/* Stops, closes the signalfd, drops instances that arrived but were not
 * yet delivered (so they cannot take the default action once unblocked),
 * and unblocks the signal if start blocked it and no other br_signal_t of
 * this loop still watches it. Idempotent; 0. */
int br_signal_stop(br_signal_t *sig);


/* ---------------------------------------------------------------- process pool: shared layout
 * What a br_procpool_t and each of its worker processes share. A worker
 * gets five inherited descriptors:
 *
 *   3 a memfd:  +-- task ring --+-- result ring --+-- slot page (4 KiB) --+
 *               |  parent->wkr  |  worker->parent |  slots, ACK word      |
 *               +---------------+-----------------+-----------------------+
 *               each ring br_ring_mem_size(ring_bytes) bytes; the worker
 *               finds ring_bytes from the memfd's size (br_ppworker_attach)
 *   4 task ring data   5 task ring space   6 result ring data   7 result ring space
 *
 * Messages are (type, tag, payload). The tag of a BR_PP_MSG_CALL is the
 * task's sequence number on that worker (1, 2, ...); its answer carries
 * the same tag. A worker answers its tasks one at a time, in the order
 * sent, so the oldest unanswered task is the one it is running.
 *
 * Start-up: the worker sends READY once it reads tasks. If the pool has an
 * init payload, the first message it reads is INIT; it answers nothing if
 * the initializer worked, or INIT_FAILED (payload: the error) and exits.
 *
 * Slots: the state of each task sent and not yet answered, at index
 * seq % BR_PP_SLOTS of the slot page, as BR_PP_SLOT_WORD(seq, state). The
 * parent writes QUEUED before it sends; the worker moves QUEUED -> RUNNING
 * with a compare-and-swap before it runs the task (br_ppworker_claim); the
 * parent moves QUEUED -> CANCELLED the same way to cancel it. Whichever
 * swap wins decides: a cancelled task never runs (the worker answers
 * SKIPPED), a started one is never reported cancelled.
 *
 * ACK: the word after the slots holds the seq of the last result the
 * parent has finished with (its completion callback returned). Until then
 * a worker keeps alive whatever that result's payload only names (braid's
 * Python workers: the memfds of out-of-band buffers). */
#define BR_PP_FD_MEM 3
#define BR_PP_FD_TASK_DATA 4
#define BR_PP_FD_TASK_SPACE 5
#define BR_PP_FD_RESULT_DATA 6
#define BR_PP_FD_RESULT_SPACE 7
#define BR_PP_NFDS 5

/* parent -> worker */
#define BR_PP_MSG_INIT 1        /* payload: the pool's init payload */
#define BR_PP_MSG_CALL 2        /* payload: the task's */
#define BR_PP_MSG_EXIT 3        /* no payload: exit 0 once this is read */
/* worker -> parent */
#define BR_PP_MSG_RESULT 11     /* payload: the task's result */
#define BR_PP_MSG_ERROR 12      /* payload: the error the task raised */
#define BR_PP_MSG_INIT_FAILED 13 /* payload: the initializer's error */
#define BR_PP_MSG_READY 14      /* no payload: started, reading tasks */
#define BR_PP_MSG_SKIPPED 15    /* no payload: cancelled before it started */

#define BR_PP_SLOTS 64
#define BR_PP_SLOTS_BYTES 4096
#define BR_PP_SLOT_QUEUED 1u
#define BR_PP_SLOT_RUNNING 2u
#define BR_PP_SLOT_CANCELLED 3u
#define BR_PP_SLOT_WORD(seq, state) (((uint64_t)(seq) << 2) | (uint64_t)(state))
#define BR_PP_ACK_INDEX BR_PP_SLOTS

/* Bytes of the shared memfd for rings of ring_bytes each; 0 if too big. */
size_t br_pp_mem_size(size_t ring_bytes);

/* ---------------------------------------------------------------- process pool: worker side
 * br_ppworker_t: what a worker process uses to talk to its pool.
 *
 *   attach -> send READY -> loop { recv; CALL: claim, run, send RESULT or
 *   ERROR; INIT: run the initializer; EXIT: leave } -> detach -> exit(0)
 *
 * Ownership: caller-allocated, one per worker process, used by one thread.
 * The descriptors 3..7 stay the process's; detach unmaps the memory.
 */
typedef struct br_ppworker_s {
    br_ring_t tasks;        /* read-only: parent -> worker */
    br_ring_t results;      /* read-only: worker -> parent */
    int64_t spin_ns;        /* an empty task ring is polled this long before
                               the worker sleeps (attach sets 50 us): tasks
                               that come one at a time arrive soon after the
                               last result, and the poll saves the parent a
                               wakeup of this process per task */
    void *mem_;             /* private from here on */
    size_t mem_size_;
    uint64_t *slots_;
    br_ring_joiner_t join_;
    br_ring_frag_t msg_;    /* the message handed out, until released */
    int holding_;
} br_ppworker_t;

/* Maps fd 3 and attaches the rings on fds 4..7. 0, -EBADF (not started by
 * a process pool), -EINVAL (the memfd does not hold a pool's layout),
 * -errno from fstat or mmap. */
int br_ppworker_attach(br_ppworker_t *w);
/* Waits up to timeout_ns (< 0: for ever) for the next whole message and
 * points m at it (type, tag, data, len; valid until the next recv or
 * br_ppworker_release). 0, -ETIMEDOUT, -EINTR (a signal handler ran: call
 * again, nothing is lost), -EPROTO (the shared memory is corrupt: exit),
 * -ENOMEM. */
int br_ppworker_recv(br_ppworker_t *w, br_ring_frag_t *m, int64_t timeout_ns);
/* Frees the message handed out by the last recv (recv does it too). Call
 * it before running a long task: a message of one fragment holds its space
 * in the task ring until released. */
void br_ppworker_release(br_ppworker_t *w);
/* Claims task `seq` before running it: 1 run it; 0 it was cancelled and
 * SKIPPED has been sent (do not run it); -EINTR (call again), -errno. */
int br_ppworker_claim(br_ppworker_t *w, uint64_t seq);
/* Sends a whole message, sleeping while the result ring is full. 0,
 * -EINTR (call again with the same m: what was written stays written),
 * -EPROTO, -errno. */
int br_ppworker_send(br_ppworker_t *w, br_ring_msg_t *m);
/* The ACK word: seq of the last result the parent is done with. */
uint64_t br_ppworker_acked(const br_ppworker_t *w);
/* Unmaps the shared memory. Idempotent. */
void br_ppworker_detach(br_ppworker_t *w);

/* ---------------------------------------------------------------- process pool
 * br_procpool_t: a supervisor of worker processes that run tasks. A task
 * is bytes in and bytes out: the pool sends the payload to a worker, which
 * answers RESULT or ERROR with bytes of its own; what the bytes mean is
 * the caller's business (braid's Python binding: pickles). The pool runs on
 * a caller-owned br_loop_t: pidfds and the result rings' eventfds are
 * br_io_t, submits/cancels/close from other threads arrive through a
 * br_async_t, and timers drive task timeouts, the memory cap and the kill
 * grace. Workers are spawned on the loop thread (PR_SET_PDEATHSIG follows
 * the spawning thread: run the loop on a thread that lives as long as the
 * pool).
 *
 * Task life cycle (br_pptask_state):
 *
 *    submit           sent to an idle worker, or
 *   -------> QUEUED --the worker ahead answered--> RUNNING --answer--> DONE
 *              |  ^                                  |    on_done(OK | ERROR)
 *              |  +--- its worker died, retry -------+
 *              |  cancel (in the pool's queue, or in a worker's ring before
 *              v  the worker claimed it: the slot swap decides)
 *          CANCELLED --------------------------------------------> DONE
 *                                          on_done(CANCELLED), loop thread
 *
 * A task sent to an idle worker counts as RUNNING at once and can no longer
 * be cancelled; tasks queued behind it in the worker's ring stay QUEUED
 * (cancellable) until the one ahead is answered. on_done is called exactly
 * once per submitted task, on the loop thread.
 *
 * Pool life cycle:
 *
 *   init --> RUNNING --close(FINISH)--> CLOSING ----------------------+
 *              |  |  --close(CANCEL)--> CLOSING, queued work CANCELLED |
 *              |  |  --close(KILL_AFTER, grace)--> CLOSING as CANCEL,  |
 *              |  |        SIGKILL to what is left when grace is over  |
 *              |  +--broken (see below)--> CLOSING, queued work BROKEN |
 *              |                                                       |
 *              +--close(KILL)--> KILLING <--grace over, close(KILL)----+
 *                  SIGKILL now; running tasks CRASHED                  |
 *                                  |                                   |
 *                                  +--every worker reaped, every task--+
 *                                     settled
 *                                          v
 *                                       CLOSED: the pool's handles close;
 *                                       then on_closed(pool), or
 *                                       on_detached(pool) if detached
 *
 * In CLOSING, idle workers are sent EXIT once nothing is queued. A pool is
 * broken when its workers cannot start (a spawn fails; three workers
 * in a row die before READY) or an initializer fails: queued
 * tasks complete BROKEN, later submits fail with -EPIPE, and
 * br_procpool_broken() says why.
 *
 * Ownership: caller-allocated pool and tasks. The pool's memory must stay
 * valid until on_closed (or on_detached) has been called; it may be freed
 * from inside that callback, and the loop may then be closed. A task must
 * stay valid, and its payload unchanged, from submit until its on_done
 * returns (a retry sends the payload again).
 */
typedef struct br_procpool_s br_procpool_t;
typedef struct br_pptask_s br_pptask_t;
typedef struct br__ppw_s br__ppw_t; /* a worker process, private */

/* on_done statuses */
enum br_pptask_status {
    BR_PPTASK_OK = 0,        /* reply: the worker's RESULT payload */
    BR_PPTASK_ERROR = 1,     /* reply: the worker's ERROR payload */
    BR_PPTASK_CRASHED = 2,   /* its worker died running it (pid, exit_code,
                                term_signal say how), and no retry is left */
    BR_PPTASK_TIMEOUT = 3,   /* ran past task_timeout_ns: its worker was killed */
    BR_PPTASK_MEMORY = 4,    /* its worker went over max_worker_memory while
                                running it and was killed (pid, ... set) */
    BR_PPTASK_CANCELLED = 5, /* cancelled before it started */
    BR_PPTASK_BROKEN = 6     /* the pool broke before it could run */
};

/* br_pptask_state values */
enum br_pptask_state {
    BR_PPSTATE_NEW = 0,      /* not submitted */
    BR_PPSTATE_QUEUED = 1,
    BR_PPSTATE_RUNNING = 2,
    BR_PPSTATE_CANCELLED = 3, /* cancel won; on_done(CANCELLED) to come */
    BR_PPSTATE_DONE = 4      /* on_done called or being called */
};

enum br_ppclose_mode {
    BR_PPCLOSE_FINISH = 0,     /* queued tasks still run */
    BR_PPCLOSE_CANCEL = 1,     /* queued tasks complete CANCELLED; running ones finish */
    BR_PPCLOSE_KILL_AFTER = 2, /* CANCEL, then SIGKILL after grace_ns */
    BR_PPCLOSE_KILL = 3        /* CANCEL and SIGKILL now: running tasks CRASHED */
};

/* Loop thread. reply/len: the payload for OK and ERROR (NULL, 0 for the
 * others), valid during the call only. */
typedef void (*br_pptask_done_cb)(br_pptask_t *task, int status, const void *reply, size_t len);
/* Loop thread: running = 1 when the task starts RUNNING (except when
 * br_procpool_submit started it and said so by returning 1), 0 when a task
 * that had been reported running goes back to QUEUED (its worker died
 * before it started it, or it is retried). */
typedef void (*br_pptask_start_cb)(br_pptask_t *task, int running);
typedef void (*br_procpool_cb)(br_procpool_t *pool);
/* Loop thread, once, after the first workers were spawned: 0, or the
 * -errno of the spawn that failed (the pool is then broken and closing). */
typedef void (*br_procpool_started_cb)(br_procpool_t *pool, int err);
/* Loop thread, once, when the pool breaks, before any task completes
 * BROKEN. detail/len: an initializer's INIT_FAILED payload, else NULL, 0;
 * valid during the call only. */
typedef void (*br_procpool_broken_cb)(br_procpool_t *pool, const char *reason, const void *detail,
                                      size_t len);
/* Starts one worker with fds[0..nfds-1] as its descriptors 3, 4, ...:
 * fills *out as br_proc_spawn does. 0 or -errno. Loop thread. */
typedef int (*br_procpool_spawn_fn)(void *ctx, const int *fds, int nfds, br_proc_t *out);

/* Ownership: see br_procpool_t. Fill payload, len, data; pid, exit_code and
 * term_signal are set before on_done(CRASHED | TIMEOUT | MEMORY). The rest
 * is private. */
struct br_pptask_s {
    const void *payload;
    size_t len;
    void *data;             /* the caller's */
    int pid;                /* the worker that ran it */
    int exit_code;          /* as br_proc_t's */
    int term_signal;
    br_pptask_t *next_;     /* private from here on */
    br_pptask_t *prev_;
    br__ppw_t *worker_;
    uint64_t seq_;
    unsigned retries_left_;
    int state_;
    int status_;
    int announcing_;        /* on_start is being called for it: not to be taken */
};

/* Copied by br_procpool_init: the strings, argv, envp and init payload
 * may be freed once it returns. */
typedef struct br_procpool_options_s {
    unsigned workers;              /* >= 1 */
    size_t ring_bytes;             /* each ring's capacity; 0: 1 MiB */
    const void *init_payload;      /* sent as INIT to every worker; NULL: none */
    size_t init_len;
    unsigned max_tasks_per_worker; /* then the worker is replaced; 0: no limit */
    int64_t task_timeout_ns;       /* 0: none */
    unsigned retries;              /* runs again of a task whose worker died */
    size_t max_worker_memory;      /* bytes of resident memory; 0: no cap.
                                      Checked after each result (over: the
                                      worker is retired, its unstarted tasks
                                      go back to the queue) and every
                                      mem_poll_ns while tasks run (over: the
                                      worker is killed, its task MEMORY) */
    int64_t mem_poll_ns;           /* 0: 20 ms */
    int64_t spin_ns;               /* the loop thread polls busy workers' result
                                      rings up to this long before it sleeps,
                                      while tasks take less on average; 0: the
                                      default (30 us), < 0: never */
    char *const *argv;             /* the default spawn: br_proc_spawn(argv[0], argv, envp) */
    char *const *envp;             /* NULL: the caller's environment */
    br_procpool_spawn_fn spawn;    /* NULL: the default; else argv may be NULL */
    void *spawn_ctx;
    br_pptask_done_cb on_done;     /* required */
    br_pptask_start_cb on_start;   /* may be NULL */
    br_procpool_started_cb on_started; /* may be NULL */
    br_procpool_broken_cb on_broken;   /* may be NULL */
    br_procpool_cb on_closed;      /* may be NULL */
} br_procpool_options_t;

/* All fields private except data and loop. */
struct br_procpool_s {
    void *data;                 /* the caller's */
    br_loop_t *loop;            /* read-only */
    pthread_mutex_t mu_;        /* the queue, task states, close requests */
    int state_;
    int close_mode_;
    int64_t kill_at_;           /* loop time to SIGKILL what is left, 0: none */
    int started_;
    int detached_;
    int broken_;                /* set once, with reason_ */
    char reason_[256];
    br_procpool_cb on_detached_;
    br_procpool_options_t opts_;
    char **argv_;
    char **envp_;
    void *init_payload_;
    br__ppw_t **workers_;       /* one per slot, NULL while none runs */
    int *pids_;
    unsigned nprocs_;           /* worker processes not yet freed */
    unsigned takes_out_;        /* results taken (br_procpool_take) not yet done with */
    int64_t taker_seen_;        /* when a thread last came to take a result */
    br_pptask_t *pend_head_;    /* QUEUED in the pool */
    br_pptask_t *pend_tail_;
    br_pptask_t *cancelled_;    /* CANCELLED in the pool: on_done to call */
    size_t npending_;
    int64_t avg_task_ns_;
    unsigned rr_;
    unsigned startup_failures_;
    unsigned handles_open_;
    unsigned ncpus_;            /* CPUs this process may run on */
    br_async_t async_;
    br_timer_t kill_timer_;
    br_timer_t mem_timer_;
    br_timer_t poll_timer_;     /* reaping without pidfds */
};

/* On the loop thread, or before the loop runs. Spawns nothing yet: the
 * first workers start on the loop's next iteration (on_started then
 * reports how it went). 0, -EINVAL (bad options), -ENOMEM, or -errno from
 * the loop's handles. */
int br_procpool_init(br_loop_t *loop, br_procpool_t *pool, const br_procpool_options_t *opts);
/* Any thread. Queues the task: 0. When nothing else is queued, the task is
 * sent from this thread at once to the least loaded worker with room (a
 * lone submit takes no detour through the loop thread, and workers stay
 * fed while the loop thread is held up): if that worker was idle, 1, and
 * the task is RUNNING already -- on_start is not called for this start;
 * else 0 (it waits in the worker's ring, QUEUED). Or
 * -EINVAL (NULL payload with a length, or the task is in a pool already),
 * -EPIPE (broken), -ESHUTDOWN (closing), -errno from waking the loop. */
int br_procpool_submit(br_procpool_t *pool, br_pptask_t *task);
/* Any thread. 0: the task will complete CANCELLED (also if it had been
 * cancelled already); -EBUSY: it is running or done. */
int br_procpool_cancel(br_procpool_t *pool, br_pptask_t *task);
/* Any thread: a br_pptask_state value. */
int br_pptask_state(const br_pptask_t *task);
/* Any thread. Closes as `mode` says (grace_ns for KILL_AFTER); a later call
 * may escalate (FINISH < CANCEL < KILL_AFTER < KILL, an earlier kill time
 * wins), never relax. Queued tasks are CANCELLED before it returns (for
 * CANCEL and up). 0, -EINVAL, or -errno from waking the loop (the close
 * then takes effect at the loop's next wakeup). */
int br_procpool_close(br_procpool_t *pool, enum br_ppclose_mode mode, int64_t grace_ns);
/* Any thread. Closes (FINISH, unless already closing otherwise) and hands
 * the pool over: once CLOSED it calls on_detached(pool) instead of
 * on_closed, from which the pool may be freed. If the pool is CLOSED
 * already, on_detached runs on this thread before return. 0, or -EINVAL
 * (detached already). */
int br_procpool_detach(br_procpool_t *pool, br_procpool_cb on_detached);
/* Any thread: why the pool is broken, or NULL. */
const char *br_procpool_broken(br_procpool_t *pool);
/* Loop thread, outside the pool's callbacks: polls busy workers' result
 * rings for up to spin_ns, on the same conditions as the built-in spin
 * (spin_ns in the options). 1 if a result is waiting (run the loop with
 * BR_RUN_NOWAIT), 0 if not. For an embedder whose callbacks take a lock
 * (the Python binding: the GIL) and so turns the built-in spin off, to
 * spin without holding it. */
int br_procpool_results_soon(br_procpool_t *pool, int64_t spin_ns);

/* Taking a result. A thread that waits for one task may take its result
 * off the worker's ring itself: no loop-thread wakeup and hand-over on the
 * way (two sleeps and wakes per round trip). Any thread but the loop's,
 * for a task submitted to this pool and not completed:
 *
 * br_procpool_take polls for up to spin_ns. It tries only while tasks take
 * less than that on average, the task is the only one its worker holds
 * and the pool has no task timeout and no memory cap (those act on each
 * result in the loop thread); the result must be one ring fragment of at
 * most max_len bytes, and accept (if not NULL) must say yes to it (1)
 * before anything is consumed. 1: taken -- the task is DONE, on_done will not be
 * called for it, out->status is BR_PPTASK_OK or BR_PPTASK_ERROR and
 * out->reply a malloc'd copy of out->len bytes (the caller frees it); call
 * br_procpool_take_done once done with the reply (the worker may then let
 * go of what the reply only names; the pool does not finish closing
 * before every take is done). 0: not taken -- on_done comes as usual.
 * Never blocks beyond the poll. */
typedef struct {
    int status;
    void *reply;
    size_t len;
    void *w_;           /* private: the worker it came from, and its pid */
    int pid_;
    unsigned index_;
    uint64_t tag_;
} br_pptake_t;
typedef int (*br_pptake_filter_fn)(void *ctx, const void *reply, size_t len);
int br_procpool_take(br_procpool_t *pool, br_pptask_t *task, int64_t spin_ns, size_t max_len,
                     br_pptake_filter_fn accept, void *ctx, br_pptake_t *out);
void br_procpool_take_done(br_procpool_t *pool, br_pptake_t *out);
/* Any thread: the pids of the live workers, up to n of them; how many. */
int br_procpool_pids(br_procpool_t *pool, int *pids, int n);

/* ---------------------------------------------------------------- streams
 * br_stream_t: a byte stream over a non-blocking fd on a br_loop_t -- a TCP
 * or Unix socket, a pipe end, a pty master. Reads go to a callback from the
 * loop's read buffer (one for all its streams: an idle stream holds no
 * buffer); writes are tried at once and what the kernel does not take is
 * copied into a write queue that drains as the fd becomes writable. The
 * queue has a high and a low watermark: crossing high calls the drain
 * callback with paused=1 (from inside br_stream_write), falling back to low
 * calls it with paused=0 -- asyncio's pause_writing and resume_writing.
 *
 * A stream is a handle (its life cycle is every handle's, above): ACTIVE
 * while it reads or has writes queued; br_close(&s->handle, cb) drops the
 * queue and closes the fd at once; cb runs from a later step of the loop.
 *
 *   init --> OPEN --read_start/stop, write, set_limits--> OPEN
 *              |  shutdown: SHUT_WR once the queue is empty (sockets)
 *              |  a write error: on_error(-errno), queue dropped,
 *              |                 later writes refused (-EPIPE)
 *              +--br_close(&s->handle, cb): fd closed--> CLOSING --(step 5)-->
 *                  cb(&s->handle): the memory is the caller's
 *
 * Ownership: the caller allocates the stream; it must stay valid until the
 * close callback has run. From br_stream_init on, the fd is the stream's:
 * closing the stream closes it. Callbacks run on the loop thread; each may
 * call any br_stream_* function on its stream, and br_close.
 */
typedef struct br_stream_s br_stream_t;
typedef struct br__chunk_s br__chunk_t;

/* nread > 0: that many bytes at buf, valid during the call only. 0: end of
 * stream. < 0: -errno (a pty master reports -EIO when the other side is
 * gone). After 0 or an error, reading has stopped. */
typedef void (*br_stream_read_cb)(br_stream_t *s, const char *buf, ssize_t nread);
/* The write queue went above the high watermark (paused=1) or back down to
 * the low one (paused=0). */
typedef void (*br_stream_drain_cb)(br_stream_t *s, int paused);
/* A queued write failed (-EPIPE, -ECONNRESET, ...): the queue was dropped. */
typedef void (*br_stream_error_cb)(br_stream_t *s, int err);
/* Called before each read. Where the read goes: *buf and *len (> 0) set,
 * 0 (the read callback then gets that same buf); BR_STREAM_LOOP_BUFFER,
 * the loop's buffer as without the callback; BR_STREAM_NOT_NOW, no read at
 * this readiness -- the fd stays watched (level-triggered: the next poll
 * reports it again) and the caller reads with br_stream_read_now when it is
 * ready to; or -errno, which stops reading and reaches the read callback as
 * nread. */
typedef int (*br_stream_alloc_cb)(br_stream_t *s, char **buf, size_t *len);
#define BR_STREAM_LOOP_BUFFER 1
#define BR_STREAM_NOT_NOW 2
/* The write queue has just become empty (all queued bytes are written). */
typedef void (*br_stream_empty_cb)(br_stream_t *s);
/* Called before the write queue is flushed at a writable readiness: 0,
 * flush now; BR_STREAM_NOT_NOW, nothing written at this readiness -- the fd
 * stays watched (the next poll reports it again) and the caller flushes
 * with br_stream_flush_now when it is ready to. The watch is level-
 * triggered: flush before the loop's next poll, or that poll returns at
 * once with the same readiness (and asks again). */
typedef int (*br_stream_flush_cb)(br_stream_t *s);

struct br_stream_s {
    br_handle_t handle;         /* handle.data is the caller's */
    int fd;                     /* read-only */
    br_stream_read_cb on_read_; /* private from here on */
    br_stream_drain_cb on_drain_;
    br_stream_error_cb on_error_;
    br_stream_alloc_cb on_alloc_;
    br_stream_empty_cb on_empty_;
    br_stream_flush_cb on_flush_;
    br__chunk_t *head_;
    br__chunk_t *tail_;
    size_t queued_;
    size_t high_;
    size_t low_;
    size_t read_size_;
    unsigned state_;
    br_io_t io_;
};

/* Takes fd (sets O_NONBLOCK). Watermarks 64 KiB / 16 KiB as asyncio's. 0,
 * -EBADF, or -errno from fcntl/fstat. */
int br_stream_init(br_loop_t *loop, br_stream_t *s, int fd);
/* The same for an fd the caller knows to be a non-blocking stream socket
 * (accept4 with SOCK_NONBLOCK): no fstat, no fcntl. 0 or -EBADF. */
int br_stream_init_socket(br_loop_t *loop, br_stream_t *s, int fd);
/* Both callbacks may be NULL. */
void br_stream_set_callbacks(br_stream_t *s, br_stream_drain_cb on_drain, br_stream_error_cb on_error);
/* Either may be NULL (the default: reads go to the loop's buffer; nothing
 * said when the queue empties). */
void br_stream_set_more_callbacks(br_stream_t *s, br_stream_alloc_cb on_alloc, br_stream_empty_cb on_empty);
/* May be NULL (the default: the queue is flushed at every writable
 * readiness). */
void br_stream_set_flush_callback(br_stream_t *s, br_stream_flush_cb on_flush);
/* high >= low; 0 or -EINVAL. The drain callback may run from here. */
int br_stream_set_limits(br_stream_t *s, size_t high, size_t low);
/* Reads up to read_size bytes per callback (0: 64 KiB). 0, -EINVAL, -EBUSY
 * (closing), or -errno from watching the fd. */
int br_stream_read_start(br_stream_t *s, br_stream_read_cb cb, size_t read_size);
/* Idempotent; 0. */
int br_stream_read_stop(br_stream_t *s);
/* Reads once now, as a readiness event does (the alloc and read callbacks
 * run inside): for a caller that answered one with BR_STREAM_NOT_NOW. 0,
 * also when there was nothing to read; -EBUSY closing; -EINVAL not
 * reading. */
int br_stream_read_now(br_stream_t *s);
/* Writes what the queue holds, as a writable readiness does (the drain,
 * error and empty callbacks run inside), without asking the flush
 * callback: for a caller that answered it with BR_STREAM_NOT_NOW. 0, also
 * when nothing was queued or the kernel took nothing; -EBUSY closing. */
int br_stream_flush_now(br_stream_t *s);
/* Writes or queues a copy of buf. 0; -EPIPE after shutdown or a write
 * error; -EBUSY closing; -ENOMEM; or -errno of the kernel's write (nothing
 * queued then). */
int br_stream_write(br_stream_t *s, const void *buf, size_t len);
/* Bytes in the write queue. */
size_t br_stream_queued(const br_stream_t *s);
/* Drops the write queue unwritten (an abort), without a drain callback;
 * later writes are tried again. */
void br_stream_discard(br_stream_t *s);
/* Half-close once the queue has drained: SHUT_WR. 0, -ENOTSOCK (not a
 * socket: close the stream instead), -EBUSY closing; idempotent. */
int br_stream_shutdown(br_stream_t *s);


/* ---------------------------------------------------------------- datagrams
 * br_udp_t: a datagram socket (UDP, or a Unix SOCK_DGRAM) on a br_loop_t.
 * Each datagram (up to 256 KiB, asyncio's max_size: a Unix datagram may
 * be larger than an IP one) reaches the receive callback whole with its
 * sender's address (from the loop's read buffer); a send goes out at once, or, when
 * the socket buffer is full, is copied into a queue sent in order as the
 * socket becomes writable. A handle, like br_stream_t: the fd is the
 * handle's from init, br_close(&u->handle, cb) closes it and the memory is
 * the caller's after the close callback.
 */
typedef struct br_udp_s br_udp_t;
typedef struct br__dgram_s br__dgram_t;

/* n >= 0: a datagram of n bytes (0 is a valid empty datagram) from addr;
 * both valid during the call only. n < 0: -errno of the receive (e.g.
 * -ECONNREFUSED after an ICMP port unreachable on a connected socket);
 * receiving goes on. */
typedef void (*br_udp_recv_cb)(br_udp_t *u, const char *buf, ssize_t n, const struct sockaddr *addr,
                               socklen_t addrlen);
/* A queued datagram could not be sent: -errno; the others stay queued. */
typedef void (*br_udp_error_cb)(br_udp_t *u, int err);
/* Queued datagrams went out (or were dropped, after the error callback):
 * the queue is shorter, br_udp_queued says by how much. */
typedef void (*br_udp_drain_cb)(br_udp_t *u);
/* Called before the send queue is flushed at a writable readiness: 0,
 * flush now; BR_UDP_NOT_NOW, nothing sent at this readiness -- the socket
 * stays watched and the caller flushes with br_udp_flush_now when it is
 * ready to, before the loop's next poll (as a stream's flush callback). */
typedef int (*br_udp_flush_cb)(br_udp_t *u);
#define BR_UDP_NOT_NOW 2

struct br_udp_s {
    br_handle_t handle;         /* handle.data is the caller's */
    int fd;                     /* read-only */
    br_udp_recv_cb on_recv_;    /* private from here on */
    br_udp_error_cb on_error_;
    br_udp_drain_cb on_drain_;
    br_udp_flush_cb on_flush_;
    br__dgram_t *head_;
    br__dgram_t *tail_;
    size_t queued_;             /* bytes */
    size_t nqueued_;            /* datagrams */
    int receiving_;
    int closing_;
    br_io_t io_;
};

/* Takes fd, a SOCK_DGRAM socket (sets O_NONBLOCK). 0, -EBADF, -ENOTSOCK,
 * -EPROTOTYPE (not a datagram socket), -errno. */
int br_udp_init(br_loop_t *loop, br_udp_t *u, int fd);
void br_udp_set_error_cb(br_udp_t *u, br_udp_error_cb on_error);
void br_udp_set_drain_cb(br_udp_t *u, br_udp_drain_cb on_drain);
/* May be NULL (the default: the queue is flushed at every writable
 * readiness). */
void br_udp_set_flush_cb(br_udp_t *u, br_udp_flush_cb on_flush);
/* 0, -EINVAL (NULL cb), -EBUSY (closing), -errno from watching. */
int br_udp_recv_start(br_udp_t *u, br_udp_recv_cb cb);
int br_udp_recv_stop(br_udp_t *u);
/* 1 while it receives (between recv_start and recv_stop or close). */
int br_udp_receiving(const br_udp_t *u);
/* Sends buf to addr (NULL on a connected socket). 0 sent or queued;
 * -EMSGSIZE and other immediate refusals as the kernel's -errno; -EBUSY
 * closing; -ENOMEM. */
int br_udp_send(br_udp_t *u, const void *buf, size_t len, const struct sockaddr *addr, socklen_t addrlen);
/* Sends what the queue holds, as a writable readiness does (the error and
 * drain callbacks run inside), without asking the flush callback. 0, also
 * when nothing was queued or the kernel took nothing; -EBUSY closing. */
int br_udp_flush_now(br_udp_t *u);
/* Drops what the send queue holds (an abort): nothing more goes out. */
void br_udp_discard(br_udp_t *u);
/* Bytes waiting in the send queue, and how many datagrams they are. */
size_t br_udp_queued(const br_udp_t *u);
size_t br_udp_queued_datagrams(const br_udp_t *u);

#ifdef __cplusplus
}
#endif
#endif /* BRAID_H */
