/*
 * interppool.h — what the two halves of braid.InterpreterPool share:
 * interppool.c (the Python type, submit, shutdown, completions in the main
 * interpreter) and interpworker.c (the worker threads and their
 * sub-interpreters). Python 3.12+ only (PEP 684: an interpreter with its
 * own GIL).
 */
#ifndef BRAID_INTERPPOOL_H
#define BRAID_INTERPPOOL_H

#include "braidpy.h"

#if PY_VERSION_HEX >= 0x030C0000
#define BRAID_HAVE_INTERPRETERS 1

#include <pthread.h>

typedef struct iworker_s iworker_t;

/* How a task ended, as the worker reports it to the main interpreter. */
enum itask_status {
    IT_OK = 0,      /* reply: the pickled result */
    IT_ERROR,       /* reply: the pickled exception envelope (_procworker) */
    IT_TIMEOUT,     /* task_timeout interrupted it */
    IT_STUCK,       /* task_timeout passed and it did not return: abandoned */
    IT_BROKEN,      /* the pool is broken (an initializer failed) */
    IT_CANCELLED    /* taken off the queue before it started */
};

/* First byte of a payload or reply in marshal's format (plain values) rather
 * than pickle's (which starts with 0x80). */
#define IP_MARSHAL_TAG 'M'
/* A plain payload's head: the tag, the function's id in its pool (8
 * bytes: never reused), the length of its pickle (4 bytes), native order
 * (one process). */
#define IP_PLAIN_HEAD 13

/* The common results cross without pickle. */
enum itask_value { IV_PICKLE = 0, IV_NONE, IV_BOOL, IV_INT, IV_FLOAT };

/* One task: allocated by submit (raw memory: both interpreters' threads
 * touch it), freed by the completion in the main interpreter. The payload
 * is self-contained (what it does not carry, out-of-band buffers, `views`
 * holds). The Python objects are the main interpreter's; a worker reads only the bytes of
 * `payload` and the memory of `views`, which cannot change or go away
 * before the task is settled. */
typedef struct itask_s {
    br_work_t work;            /* the engine's item; work.data is this task */
    interp_core_t *core;
    FutureObject *fut;         /* strong */
    PyObject *payload;         /* bytes: the pickled (fn, args, kwargs), or a plain call's
                                  (interppayload.c; maybe its function's cached head) */
    Py_buffer *views;          /* out-of-band buffers, held until settled */
    int nviews;
    int by_future;             /* being cancelled by Future.cancel() */
    int started;               /* atomic: a worker has taken it (Future.running()) */
    int settled;               /* atomic: who sets it first finishes the future */
    int status;                /* enum itask_status, written by the worker */
    char *reply;               /* raw malloc, written by the worker */
    size_t len;
    int value_kind;            /* IT_OK without a pickle: enum itask_value */
    union {
        long long i;
        double d;
    } value;
    struct itask_s *next;      /* on the pool's list of finished tasks */
} itask_t;

struct interp_core_s {
    br_threadpool_t tp;        /* first: a pool pointer is a core pointer */
    braid_state *st;           /* the main interpreter's module state */
    PyInterpreterState *interp; /* the main interpreter */
    PyObject *setup;           /* bytes: pickled (sys.path, initializer, initargs) */
    PyObject *broken;          /* str: why the pool is broken (main GIL) */
    PyObject *fn_cache;        /* dict: plain task function -> its payload head (main GIL) */
    uint64_t fn_ids;           /* ids handed out to functions in fn_cache */
    int broken_flag;           /* atomic copy of broken != NULL, read by workers */
    int64_t timeout_ns;        /* task_timeout, 0: none */
    unsigned threads_exited;   /* workers past on_thread_exit (main GIL) */
    unsigned joiners;
    unsigned stuck;            /* workers abandoned to a task stuck in C */
    int closed, joined, orphaned, detached;
    pthread_mutex_t mu;        /* the worker list; a worker's current task */
    /* finished tasks on their way to the main interpreter (interpdeliver.c) */
    pthread_mutex_t dmu;
    pthread_cond_t dcv;        /* wakes the deliverer */
    itask_t *done_head, *done_tail;
    int delivering;            /* a thread is draining the list, or waiting for the GIL to */
    int deliverer_started, deliverer_failed, deliverer_idle, deliverer_stop;
    pthread_t deliverer;
    iworker_t *workers;
    braid_pool_link_t link;    /* on st->pools (pools.c), main GIL */
};

/* A worker: one engine thread and its sub-interpreter (interpworker.c);
 * raw memory, freed by the thread as it leaves. */
struct iworker_s {
    interp_core_t *core;
    PyThreadState *main_ts;
    PyThreadState *sub_ts;     /* NULL: the interpreter could not be made */
    unsigned long ident;       /* this thread, as PyThreadState_SetAsyncExc knows it */
    PyObject *loads;           /* the sub-interpreter's _pickle.loads */
    PyObject *helper;          /* braid._interpworker there, on first need */
    PyObject *fns;             /* dict: a function's id (int) -> the function */
    PyObject *last_fn;         /* the function of the last plain task, and its id */
    uint64_t last_fn_id;
    PyObject *interrupt;       /* the exception task_timeout throws in */
    struct pinned_s {          /* main buffers still viewed from the sub-interpreter */
        Py_buffer *views;
        int n;
    } *pinned;
    size_t npinned;
    /* under core->mu */
    itask_t *current;
    int64_t deadline;
    int interrupted;           /* the watchdog threw into current */
    unsigned long seq;         /* tasks started: names the current one */
    unsigned long interrupting; /* the seq of the task the interrupter is after */
    int ctrl_c;                /* stopped by a Ctrl-C: interrupters throw KeyboardInterrupt */
    int has_interrupter;
    pthread_t interrupter;
    int exiting;
    int leaving;               /* in on_thread_exit: no interrupter may start any more */
    int has_watchdog;
    pthread_cond_t cv;         /* wakes the watchdog (CLOCK_MONOTONIC) */
    pthread_t watchdog;
    iworker_t *next, *prev;
};


/* interpwatch.c: task_timeout's watchdog of a worker. */
int braid_iw_start_watchdog(iworker_t *w); /* 0 or -1 */
void braid_iw_stop_watchdog(iworker_t *w);
/* A closed pool stopped for good (a second Ctrl-C): KeyboardInterrupt is
 * thrown into every worker's thread, so that a task running Python code
 * raises it now (its future fails with it) and an idle worker leaves
 * without taking any. A task in C code sees it when it comes back. */
void braid_iw_interrupt_all(interp_core_t *core);
/* In the worker, as it leaves, after its watchdog: the last interrupter
 * joined, and an interrupt thrown too late for any task dropped (the
 * sub-interpreter's GIL held). */
void braid_iw_reap_interrupter(iworker_t *w);

/* interpworker.c: the engine's hooks and work callbacks. */
void braid_iw_thread_start(br_threadpool_t *tp, void *arg);
void braid_iw_thread_exit(br_threadpool_t *tp, void *arg);
void braid_iw_work(br_work_t *w);
void braid_iw_done(br_work_t *w, int status);
/* The worker thread running a task of `core` now, or NULL (a task calling
 * shutdown(wait=True) on its own pool would wait for itself). */
int braid_iw_on_worker_of(interp_core_t *core);

/* interpdeliver.c */
int braid_ipd_init(interp_core_t *core);
void braid_ipd_destroy(interp_core_t *core);
int braid_ipd_push(interp_core_t *core, itask_t *t, int busy); /* no GIL needed */
int braid_ipd_drain_hook(void *core, int ask_spin); /* FutureObject.drain_hook */
void braid_ipd_deliver(interp_core_t *core, PyThreadState *main_ts); /* no GIL held */
void braid_ipd_drain(interp_core_t *core);  /* main GIL */
void braid_ipd_stop(interp_core_t *core);   /* main GIL: the last worker leaves */

/* interppayload.c, main GIL: a task's payload (bytes; views filled in),
 * and a reply's object. New references, or NULL with an exception. */
PyObject *braid_ip_dumps_task(interp_core_t *core, itask_t *t, PyObject *fn, PyObject *args,
                              PyObject *kwargs);
PyObject *braid_ip_loads_reply(braid_state *st, itask_t *t);

/* interppool.c: with the main interpreter's GIL held. */
void braid_ip_complete(itask_t *t);      /* settles the task (once) and frees it */
void braid_ip_settle(itask_t *t);        /* finishes the future from the task's outcome */
void braid_ip_release_views(Py_buffer *views, int n); /* and frees the array */
void braid_ip_mark_broken(interp_core_t *core, PyObject *why); /* steals why */
void braid_ip_worker_gone(interp_core_t *core); /* a worker left (on_thread_exit) */
void braid_ip_task_free(itask_t *t);

#endif /* PY_VERSION_HEX >= 0x030C0000 */
#endif /* BRAID_INTERPPOOL_H */
