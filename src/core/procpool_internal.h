/*
 * procpool_internal.h — what the files of br_procpool_t share:
 * procpool.c (the API, the queue, scheduling, closing) and procpool_worker.c
 * (one worker process: spawn, results, death).
 *
 * Threads. Everything runs on the loop thread except the API calls that
 * braid.h allows from any thread (submit, cancel, close, detach, broken,
 * pids). Those take pool->mu_, and so does the loop thread whenever it
 * changes what they look at: the pending queue, a task's state_, seq_ and
 * worker_, the worker table, a worker's list of sent tasks. A worker's
 * shared memory is unmapped only after every task sent to it has left the
 * SENT state under the mutex, so a cancel that finds a task SENT may touch
 * its slot. Callbacks (on_done, on_start, ...) are never called with the
 * mutex held, so they may call any API function.
 *
 * Reentrancy. API calls never act on the loop's structures synchronously
 * beyond the queue and task states: close, kills and spawns happen in the
 * async callback. So a callback may submit, cancel or close while the pool
 * is in the middle of walking its workers.
 */
#ifndef BRAID_PROCPOOL_INTERNAL_H
#define BRAID_PROCPOOL_INTERNAL_H

#include "internal.h"

/* Workers in a row that die before READY: the pool is broken. */
#define STARTUP_LIMIT 3
/* Reaping without pidfds (kernels before 5.3): exits are found this late. */
#define REAP_POLL_NS (50 * 1000000LL)

/* Pool states (pool->state_). */
enum { PP_RUNNING = 1, PP_CLOSING, PP_KILLING, PP_FINAL, PP_CLOSED_CB, PP_CLOSED };

/* state_ changes under the mutex; the loop thread also reads it without
 * (a stale value there only delays a spin or a timer by one round). */
static inline void br__pp_set_state(br_procpool_t *pool, int state)
{
    __atomic_store_n(&pool->state_, state, __ATOMIC_RELAXED);
}

static inline int br__pp_state(const br_procpool_t *pool)
{
    return __atomic_load_n(&pool->state_, __ATOMIC_RELAXED);
}

/* Task states (task->state_). Values that stray bytes are unlikely to
 * spell, as in threadpool.c: the header does not ask callers to zero a
 * task's private fields. */
enum {
    T_QUEUED = 0x51554555,    /* in the pool's pending queue */
    T_SENT = 0x53454e54,      /* in a worker's ring, not reported running */
    T_RUNNING = 0x52554e4e,   /* reported running */
    T_CANCELLED = 0x43414e43, /* cancel won; on_done(CANCELLED) to come */
    T_DONE = 0x444f4e45
};

/* Task states change under the pool's mutex; br_pptask_state reads them
 * from any thread without it. */
static inline void br__pp_set_tstate(br_pptask_t *t, int state)
{
    __atomic_store_n(&t->state_, state, __ATOMIC_RELAXED);
}

/* Who reads a worker's result ring (w->rx_owner): nobody, the loop thread
 * (br__ppw_drain), or a thread taking its own result (procpool_take.c). A
 * taker holds it for its poll only, never while it sleeps, so the loop
 * thread waits a taker out (drain, teardown) rather than coordinate: the
 * taker disarms the ring while it polls, and before it lets go arms it
 * again and writes the result eventfd itself if more came meanwhile. The
 * worker's memory is unmapped only once no taker holds the ring. */
enum { RX_FREE = 0, RX_LOOP, RX_TAKER };

/* Worker states (w->state). */
enum { W_RUNNING = 1, W_EXITING, W_DEAD };

struct br__ppw_s {
    br_procpool_t *pool;
    unsigned index;           /* its slot in pool->workers_ */
    int state;
    br_proc_t proc;
    void *mem;
    size_t mem_size;
    br_ring_t tx;             /* tasks out */
    br_ring_t rx;             /* results in */
    int efd[4];               /* task data, task space, result data, result space */
    int statm_fd;             /* /proc/<pid>/statm, -1 if it could not be opened */
    uint64_t *slots;
    br_pptask_t *head;        /* sent, not answered, oldest first (next_) */
    br_pptask_t *tail;
    unsigned ninflight;
    br_ring_msg_t sending;    /* a message only partly written */
    int sending_active;
    br_ring_joiner_t join;
    unsigned assigned;        /* tasks sent to this process */
    int64_t since;            /* when its oldest unanswered task started */
    uint64_t announced;       /* seq of the last task reported running */
    uint64_t timed_out;       /* seq it was killed for by the timeout, or 0 */
    uint64_t mem_killed;      /* seq it was killed for by the memory cap, or 0 */
    uint64_t withdrawn;       /* bit seq % 64: taken back, SKIPPED expected */
    uint64_t next_seq;
    int ready;                /* sent READY */
    int init_failed;
    int retiring;             /* takes no more tasks; EXIT once idle */
    int ring_bad;             /* corrupt or out of step: not read again */
    int rx_owner;             /* atomic: who reads the result ring now (RX_*) */
    unsigned handles_open;
    br_io_t io_result;
    br_io_t io_space;
    br_io_t io_exit;          /* the pidfd; not started without one */
    br_timer_t timeout;
};

/* ------------------------------------------------------------ procpool.c */
/* Completes a task (state_ DONE) and calls on_done. No mutex held. */
void br__pp_complete(br_procpool_t *pool, br_pptask_t *t, int status, const void *reply, size_t len);
/* Puts tasks (a next_-linked list, oldest first) back at the front of the
 * pending queue. Mutex held. */
void br__pp_requeue_locked(br_procpool_t *pool, br_pptask_t *list);
/* The pool is unusable (see braid.h). Loop thread, no mutex. */
void br__pp_mark_broken(br_procpool_t *pool, const char *reason, const void *detail, size_t len);
/* The loop failed the pool (a timer that could not start, ...): broken,
 * and its workers are killed. */
void br__pp_fail(br_procpool_t *pool, const char *what, int err);
/* Spawns workers into empty slots while the pool needs them. 0 or the
 * -errno of a spawn that failed (the pool is then broken). */
int br__pp_fill(br_procpool_t *pool);
/* Hands pending tasks to workers, retires workers that are done. */
void br__pp_dispatch(br_procpool_t *pool);
/* Calls on_start for tasks that became RUNNING. */
void br__pp_announce(br_procpool_t *pool);
/* Closes the pool's handles once nothing is left to do. */
void br__pp_maybe_final(br_procpool_t *pool);
/* Starts the memory-cap timer if it is needed and not running. */
void br__pp_mem_watch(br_procpool_t *pool);
/* Starts the reaping poll for workers without a pidfd. */
void br__pp_reap_watch(br_procpool_t *pool);
/* Polls the result rings of busy workers for up to the spin time. */
void br__pp_spin(br_procpool_t *pool);
/* 1 if the pool kills its workers (no retries, no respawns). Mutex held. */
int br__pp_killing_locked(br_procpool_t *pool);

/* Completes a next_-linked list of tasks with one status. */
void br__pp_complete_list(br_procpool_t *pool, br_pptask_t *list, int status);
/* Cancels everything that has not started. Mutex held. */
void br__pp_cancel_all_locked(br_procpool_t *pool);
/* Frees the pool's own allocations (workers table, argv, ...). */
void br__pp_free_internals(br_procpool_t *pool);

/* ------------------------------------------------------------ procpool_close.c */
/* SIGKILLs the workers now (kill_now) or at kill_at (0: none planned). */
void br__pp_kill_when(br_procpool_t *pool, int kill_now, int64_t kill_at);

/* ------------------------------------------------------------ procpool_worker.c */
/* Starts a worker in slot i. 0 or -errno (the slot stays empty). */
int br__ppw_spawn(br_procpool_t *pool, unsigned i);
/* Writes a message (or the rest of one) to the worker's task ring:
 * 1 written, 0 waiting for space, < 0 the worker is unusable (killed). */
int br__ppw_send(br__ppw_t *w, uint32_t type, uint64_t tag, const void *payload, size_t len);
/* SIGKILL, remembering that the pool did it. */
void br__ppw_kill(br__ppw_t *w);
/* Reads every whole message the worker has written (none while a taker
 * holds the ring: it asks for another drain when it is done). */
void br__ppw_drain(br__ppw_t *w);
/* Resident bytes of the worker, or -errno. */
int64_t br__ppw_rss(br__ppw_t *w);
/* Reaps the worker if it has exited: 1 if it had (it is then gone). */
int br__ppw_reap(br__ppw_t *w);
/* (Re)starts or stops the task timeout for the worker's head task. Takes
 * the mutex: never call it with the mutex held. */
void br__ppw_time_head(br__ppw_t *w);

#endif /* BRAID_PROCPOOL_INTERNAL_H */
