/*
 * procpool_core.h — proc_core_t, what braid.ProcessPool's Python object
 * (procpool.c) drives: the engine's br_procpool_t on a loop thread of its
 * own, and the futures of the tasks in flight (procpool_core.c).
 */
#ifndef BRAID_PROCPOOL_CORE_H
#define BRAID_PROCPOOL_CORE_H

#include "braidpy.h"

#include <pthread.h>

typedef struct task_s {
    br_pptask_t t;
    struct proc_core_s *core;
    struct task_s *next, *prev; /* the core's live tasks (GIL) */
    FutureObject *fut;
    PyObject *payload;          /* bytes: the engine sends it (again on a retry) */
    PyObject *held;             /* memfds of the payload's out-of-band buffers, or NULL */
    PyObject *keep;             /* (fn, args, kwargs): what the payload only names */
    char *reply;                /* a result handed to the waiting thread: a copy */
    size_t reply_len;
    int reply_status;
    int pins;                   /* waiters inside a take (GIL released): the memory stays */
    int free_pending;           /* finished while pinned: the last unpin frees it */
    struct task_s *ready_next;  /* on the core's hand-off list */
} task_t;

struct proc_core_s {
    br_loop_t loop;
    br_procpool_t pool;
    braid_state *st;
    PyInterpreterState *interp;
    PyThreadState *ts;          /* the loop thread's */
    pthread_t thread;
    int gil;                    /* the loop thread holds the GIL */
    unsigned nworkers;
    size_t max_memory;
    task_t *live;               /* submitted, not yet done (GIL) */
    PyObject *broken;           /* str: why the pool is broken (GIL) */
    int closing;                /* shutdown/terminate called (GIL) */
    int dropped;                /* the object is gone (GIL) */
    int orphaned;               /* dropped: the loop thread frees the core (GIL) */
    int takers;                 /* waiters in drain_hook with the GIL released (GIL) */
    int free_pending;           /* to be freed when the last of them is back (GIL) */
    int forked;                 /* this is a fork's child: the pool is the parent's */
    int thread_done;            /* the loop thread is past its last GIL use (GIL) */
    int joined;
    int start_err;
    int background;             /* workers start after __init__ returns (a template) */
    braid_spawner_t *spawner;   /* freed by the loop thread once every worker is reaped */
    char **argv, **envp;        /* the spawner's (it borrows them): freed with the core */
    br_event_t started_ev;
    br_event_t closed_ev;       /* set by on_closed */
    braid_pool_link_t link;     /* on st->pools (pools.c) */
    /* results handed to the threads waiting on their futures (see
     * procpool_core.c, "hand-off"): the loop thread appends without the
     * GIL, a waiter or the loop thread's timer finishes them with it */
    pthread_mutex_t ready_mu;
    task_t *ready_head, *ready_tail;
    br_timer_t ready_timer;
};

/* What a pool is made with; argv and envp are Python lists of str. */
typedef struct {
    unsigned workers;
    PyObject *argv, *envp;
    size_t ring_bytes;
    PyObject *init_payload;     /* bytes, or None */
    unsigned max_tasks_per_worker;
    double task_timeout;        /* seconds; <= 0: none */
    unsigned retries;
    size_t max_worker_memory;   /* 0: no cap */
} proc_config_t;

/* A new core with its loop thread running and its first workers starting
 * (or, without a template, started: start_err says how). NULL with an
 * exception. */
proc_core_t *braid_proc_core_new(braid_state *st, const proc_config_t *cfg);
/* Sends the task; the core takes the references to payload, held and keep.
 * The future, or NULL with an exception (the task was not sent). */
PyObject *braid_proc_core_submit(proc_core_t *c, FutureObject *fut, PyObject *payload, PyObject *held,
                                 PyObject *keep);
/* Ends the pool in the engine's mode; modes other than FINISH cancel the
 * futures of tasks not yet started. */
void braid_proc_core_close(proc_core_t *c, enum br_ppclose_mode mode, int64_t grace_ns);
/* Waits, interruptibly, for the pool to close and joins the loop thread:
 * 0, or -1 with an exception. */
int braid_proc_core_join(proc_core_t *c);
/* The Python object is gone: queued work finishes and whoever is last (the
 * loop thread, or this call) frees the core. */
void braid_proc_core_drop(proc_core_t *c);

#endif /* BRAID_PROCPOOL_CORE_H */
