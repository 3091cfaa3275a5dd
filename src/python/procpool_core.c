/*
 * procpool_core.c — the core of braid.ProcessPool: the engine's
 * br_procpool_t (src/core/procpool*.c schedules the tasks and supervises
 * the workers) on a loop thread of its own, and the futures of the tasks
 * in flight. procpool.c is the Python object on top; this file turns the
 * engine's completions into finished futures.
 *
 * The loop thread runs the pool's br_loop_t. The engine spawns workers
 * there (PR_SET_PDEATHSIG follows the spawning thread), through the pool's
 * spawner (proctemplate.c): a fork of the template of the pool's
 * configuration, or a fresh interpreter where there is no template. With a
 * template, the pool's __init__ returns before the first workers have
 * started; without one it waits for them, so that a bad interpreter path
 * raises there. The thread runs without the GIL and takes it only in the
 * engine's callbacks, to finish futures: the first callback of a loop
 * iteration takes it and asks the loop to end that iteration without
 * sleeping (br_loop_stop); between iterations the thread lets it go, then
 * polls busy workers' result rings for a moment (br_procpool_results_soon)
 * before it sleeps. So a batch of results costs one GIL acquisition.
 *
 * Core life cycle (proc_core_t, malloc'd: it may outlive the Python object):
 *
 *   new --> OPEN --shutdown / terminate / at-exit--> closing --engine's
 *             |                                     on_closed--> closed:
 *             |                                     the loop thread ends
 *             +--the object is dropped--> closed (FINISH) as above,
 *                  orphaned: the loop thread frees the core itself
 *
 * Task memory (task_t) belongs to the engine from submit until its
 * on_done, which frees it; the future, the payload and what the payload
 * only names (keep, held) stay alive until then.
 *
 * Hand-off. A thread blocked in result() on a future has let the GIL go;
 * for the loop thread to finish that future it must take the GIL, and the
 * waiter, woken, must take it back: two hand-overs of the GIL and two
 * thread wakeups per round trip. So when a result arrives for a future a
 * thread is waiting on (FutureObject.waiting) and the loop thread does not
 * hold the GIL already, it copies the reply, puts the task on the core's
 * ready list and sets the future's event: the waiter finishes the future
 * itself, in its own thread (drain_hook), and the loop thread never takes
 * the GIL (nor the waiter a second wakeup for it). A waiter that left
 * meanwhile (a timeout, a signal) is covered by the ready timer:
 * READY_GRACE_NS later, the loop thread finishes whatever is still on the
 * list itself.
 */
#include "procpool_core.h"
#include "compat.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define SPIN_NS 30000           /* the loop thread's poll before it sleeps */
#define READY_GRACE_NS 2000000  /* a handed-off result nobody finished: the loop thread does */
/* Larger results are not handed off: the copy off the ring grows with the
 * result while the wakeup it saves does not (a 64 KiB copy already takes a
 * few microseconds, about a wakeup's cost on this machine's floor). */
#define HANDOFF_MAX_BYTES (64 * 1024)
/* How long a waiter polls its worker's result ring before it sleeps (and
 * the engine's bar for trying: tasks shorter than this on average). */
#define TAKE_SPIN_NS 50000

/* --------------------------------------------------------- the loop thread */

/* Called first by every callback that touches Python. */
static void take_gil(proc_core_t *c)
{
    if (c->gil) {
        return;
    }
    PyEval_RestoreThread(c->ts);
    c->gil = 1;
    br_loop_stop(&c->loop); /* end this iteration without sleeping, then let go */
}

static void task_free(task_t *t)
{
    if (t->pins > 0) {
        t->free_pending = 1; /* a waiter in drain_hook still reads it */
        return;
    }
    proc_core_t *c = t->core;
    if (t->prev) {
        t->prev->next = t->next;
    } else {
        c->live = t->next;
    }
    if (t->next) {
        t->next->prev = t->prev;
    }
    t->fut->cancel_hook = NULL;
    t->fut->hook_ctx = NULL;
    t->fut->drain_hook = NULL;
    t->fut->drain_ctx = NULL;
    PyMem_RawFree(t->reply);
    Py_DECREF(t->fut);
    Py_DECREF(t->payload);
    Py_XDECREF(t->keep);
    Py_XDECREF(t->held);
    PyMem_Free(t);
}

static PyObject *loads(braid_state *st, const void *data, size_t len)
{
    PyObject *view = PyMemoryView_FromMemory((char *)data, (Py_ssize_t)len, PyBUF_READ);
    if (view == NULL) {
        return NULL;
    }
    PyObject *obj = braid_loads(st, view);
    Py_DECREF(view);
    return obj;
}

/* WorkerCrashed(message, pid=, exitcode=, signal=) for the task's worker. */
static PyObject *crashed(proc_core_t *c, task_t *t, PyObject *message)
{
    PyObject *exitcode = t->t.term_signal ? Py_NewRef(Py_None) : PyLong_FromLong(t->t.exit_code);
    PyObject *sig = t->t.term_signal ? PyLong_FromLong(t->t.term_signal) : Py_NewRef(Py_None);
    PyObject *args = message ? PyTuple_Pack(1, message) : NULL;
    PyObject *kw = Py_BuildValue("{s:i,s:N,s:N}", "pid", t->t.pid, "exitcode", exitcode, "signal", sig);
    PyObject *exc = args && kw ? PyObject_Call(c->st->WorkerCrashed, args, kw) : NULL;
    Py_XDECREF(args);
    Py_XDECREF(kw);
    return exc;
}

static PyObject *new_exc(PyObject *type, PyObject *message)
{
    return message ? PyObject_CallOneArg(type, message) : NULL;
}

static void finish(proc_core_t *c, task_t *t, int status, const void *reply, size_t len);
static int plain_reply(void *ctx, const void *reply, size_t len);
static void core_unlink_free(proc_core_t *c);

/* With the GIL: finishes every handed-off result still on the list. */
static void drain_ready(proc_core_t *c)
{
    pthread_mutex_lock(&c->ready_mu);
    task_t *t = c->ready_head;
    c->ready_head = c->ready_tail = NULL;
    pthread_mutex_unlock(&c->ready_mu);
    while (t != NULL) {
        task_t *next = t->ready_next;
        finish(c, t, t->reply_status, t->reply, t->reply_len);
        t = next;
    }
}

/* A waiter's hook (FutureObject.drain_hook), with the GIL; ctx is the
 * task. ask_spin 0: finish what the loop thread handed off. ask_spin 1,
 * before the waiter sleeps: it polls the worker's result ring itself for
 * a moment (br_procpool_take), so a short task's result reaches it with
 * no loop-thread wakeup and no hand-over, and the loop thread sleeps
 * through it; the engine takes only while tasks are that short on
 * average. (Spinning on the future's event instead, while the loop thread
 * still read the ring and handed over, was measured slower on this 2-CPU
 * machine: a third spinner beside the worker and the loop thread.) The
 * answer is always 0: the waiter itself never spins on the event. */
static int drain_hook(void *ctx, int ask_spin)
{
    task_t *t = ctx;
    proc_core_t *c = t->core;
    if (!ask_spin) {
        drain_ready(c);
        return 0;
    }
    if (c->forked || pthread_equal(pthread_self(), c->thread)) {
        return 0; /* a fork's child (the rings are the parent's), or a callback of the loop thread */
    }
    br_pptake_t taken;
    int got;
    /* Pinned while the GIL is away, the task and the core: the loop thread
     * may finish the task meanwhile (its on_done was waiting for the GIL),
     * the pool may then close and a dropped pool's core be freed, and the
     * engine still reads the task's fields under its mutex. */
    t->pins++;
    c->takers++;
    Py_BEGIN_ALLOW_THREADS
    got = br_procpool_take(&c->pool, &t->t, TAKE_SPIN_NS, HANDOFF_MAX_BYTES, plain_reply, NULL, &taken);
    Py_END_ALLOW_THREADS
    t->pins--;
    if (got) {
        /* the engine let go of the task: it is this thread's to finish;
         * the pool does not finish closing before take_done */
        finish(c, t, taken.status, taken.reply, taken.len);
        br_procpool_take_done(&c->pool, &taken);
        free(taken.reply);
    } else if (t->pins == 0 && t->free_pending) {
        task_free(t);
    }
    if (--c->takers == 0 && c->free_pending) {
        core_unlink_free(c);
    }
    return 0;
}

static void ready_timer_cb(br_timer_t *timer)
{
    proc_core_t *c = timer->handle.data;
    pthread_mutex_lock(&c->ready_mu);
    int any = c->ready_head != NULL;
    pthread_mutex_unlock(&c->ready_mu);
    if (any) {
        take_gil(c);
        drain_ready(c);
    }
}

/* A reply that names the worker's out-of-band buffers (an _Envelope: the
 * worker keeps their memfds open until the reply is acknowledged) must be
 * unpickled before the engine acknowledges it, and the engine does so right
 * after on_done, or, for a taken one, when it acknowledges a later result
 * of the same worker: such replies are neither handed off nor taken. */
static int plain_reply(void *ctx, const void *reply, size_t len)
{
    static const char marker[] = "_Envelope";
    return memmem(reply, len, marker, sizeof marker - 1) == NULL;
}

/* Loop thread, GIL not held: hands the result to the thread waiting on the
 * future. 1 if it did. */
static int hand_off(proc_core_t *c, task_t *t, int status, const void *reply, size_t len)
{
    if (c->gil || (status != BR_PPTASK_OK && status != BR_PPTASK_ERROR) || len > HANDOFF_MAX_BYTES ||
        !__atomic_load_n(&t->fut->waiting, __ATOMIC_SEQ_CST) || !plain_reply(NULL, reply, len)) {
        return 0;
    }
    char *copy = PyMem_RawMalloc(len > 0 ? len : 1);
    if (copy == NULL) {
        return 0;
    }
    memcpy(copy, reply, len);
    t->reply = copy;
    t->reply_len = len;
    t->reply_status = status;
    t->ready_next = NULL;
    pthread_mutex_lock(&c->ready_mu);
    if (c->ready_tail != NULL) {
        c->ready_tail->ready_next = t;
    } else {
        c->ready_head = t;
    }
    c->ready_tail = t;
    pthread_mutex_unlock(&c->ready_mu);
    br_event_set(&t->fut->done_ev);
    if (!br_is_active(&c->ready_timer.handle)) {
        (void)br_timer_start(&c->ready_timer, ready_timer_cb, READY_GRACE_NS, 0);
    }
    return 1;
}

static void on_done(br_pptask_t *bt, int status, const void *reply, size_t len)
{
    task_t *t = bt->data;
    proc_core_t *c = t->core;
    if (hand_off(c, t, status, reply, len)) {
        return;
    }
    take_gil(c);
    finish(c, t, status, reply, len);
}

/* With the GIL: the future gets the task's outcome; the task is freed. */
static void finish(proc_core_t *c, task_t *t, int status, const void *reply, size_t len)
{
    FutureObject *f = t->fut;
    PyObject *obj = NULL, *exc = NULL, *msg = NULL;
    switch (status) {
    case BR_PPTASK_OK:
    case BR_PPTASK_ERROR:
        obj = loads(c->st, reply, len);
        break;
    case BR_PPTASK_CRASHED:
        msg = PyUnicode_FromString("a worker process died while running this task");
        exc = crashed(c, t, msg);
        break;
    case BR_PPTASK_MEMORY:
        msg = PyUnicode_FromFormat("a worker process went over max_worker_memory (%zu bytes) while "
                                   "running this task and was killed", c->max_memory);
        exc = crashed(c, t, msg);
        break;
    case BR_PPTASK_TIMEOUT:
        msg = PyUnicode_FromString("the task ran past task_timeout; its worker was killed");
        exc = new_exc(c->st->TaskTimeout, msg);
        break;
    case BR_PPTASK_BROKEN:
        msg = c->broken ? Py_NewRef(c->broken) : PyUnicode_FromString(br_procpool_broken(&c->pool));
        exc = new_exc(braid_broken_process_pool(c->st), msg);
        break;
    default: /* CANCELLED: before it started, by the future or by the pool */
        if (c->start_err < 0 && c->broken != NULL && !c->closing &&
            (f->state == FUT_PENDING || f->state == FUT_RUNNING)) {
            /* the pool closed itself: its workers could not start */
            exc = new_exc(braid_broken_process_pool(c->st), c->broken);
            break;
        }
        f->cancel_hook = NULL;
        if (f->state == FUT_RUNNING) {
            f->state = FUT_PENDING;
        }
        if (f->state == FUT_PENDING && braid_future_cancel(f) < 0) {
            PyErr_WriteUnraisable((PyObject *)f);
        }
        braid_future_notify_cancel(f);
        task_free(t);
        return;
    }
    Py_XDECREF(msg);
    if (status == BR_PPTASK_OK || status == BR_PPTASK_ERROR) {
        if (obj == NULL) {
            exc = PyErr_GetRaisedException(); /* it did not unpickle */
        } else if (status == BR_PPTASK_ERROR) {
            exc = obj;
            obj = NULL;
        }
    } else if (exc == NULL) {
        exc = PyErr_GetRaisedException();
    }
    braid_future_settle(f, obj, exc);
    Py_XDECREF(obj);
    Py_XDECREF(exc);
    task_free(t);
}

static void on_start(br_pptask_t *bt, int running)
{
    task_t *t = bt->data;
    take_gil(t->core);
    FutureObject *f = t->fut;
    if (running && f->state == FUT_PENDING) {
        f->state = FUT_RUNNING;
    } else if (!running && f->state == FUT_RUNNING) {
        f->state = FUT_PENDING; /* its worker died first: back in the queue */
    }
}

static void on_broken(br_procpool_t *pool, const char *reason, const void *detail, size_t len)
{
    proc_core_t *c = pool->data;
    take_gil(c);
    PyObject *why = NULL;
    if (detail != NULL) { /* an initializer's exception */
        PyObject *exc = loads(c->st, detail, len);
        if (exc != NULL) {
            why = PyUnicode_FromFormat("A worker's initializer failed (%R); the process pool is not usable "
                                       "anymore", exc);
            Py_DECREF(exc);
        }
        PyErr_Clear();
    }
    if (why == NULL) {
        why = PyUnicode_FromString(reason);
    }
    if (why == NULL) {
        PyErr_WriteUnraisable(NULL);
        return;
    }
    Py_XSETREF(c->broken, why);
}

static void on_started(br_procpool_t *pool, int err)
{
    proc_core_t *c = pool->data;
    c->start_err = err;
    if (err < 0 && c->background) {
        /* __init__ did not wait to raise it: the pool is broken instead */
        take_gil(c);
        PyObject *why = PyUnicode_FromFormat("could not start a worker process: %s", br_strerror(err));
        if (why == NULL) {
            PyErr_WriteUnraisable(NULL);
        } else {
            Py_XSETREF(c->broken, why);
        }
    }
    br_event_set(&c->started_ev);
}

static void on_closed(br_procpool_t *pool)
{
    proc_core_t *c = pool->data;
    (void)br_close(&c->ready_timer.handle, NULL); /* the loop can end now */
    br_event_set(&c->closed_ev);
}

/* With the GIL: frees the core now, or when the last waiter inside
 * drain_hook (GIL released, about to use the pool) is back. */
static void core_free_when_unused(proc_core_t *c)
{
    if (c->takers > 0) {
        c->free_pending = 1;
        return;
    }
    core_unlink_free(c);
}

static void *loop_main(void *arg)
{
    proc_core_t *c = arg;
    sigset_t block; /* process-directed signals (Ctrl-C) are for the main thread */
    if (br_async_signals(&block) == 0) {
        (void)pthread_sigmask(SIG_BLOCK, &block, NULL);
    }
    enum br_run_mode mode = BR_RUN_ONCE;
    for (;;) {
        int r = br_loop_run(&c->loop, mode);
        if (c->gil) {
            c->gil = 0;
            (void)PyEval_SaveThread();
        }
        if (r <= 0) {
            break; /* 0: the pool has closed; < 0 cannot happen with epoll alive */
        }
        mode = br_procpool_results_soon(&c->pool, SPIN_NS) ? BR_RUN_NOWAIT : BR_RUN_ONCE;
    }
    (void)br_loop_close(&c->loop);
    braid_spawner_free(c->spawner); /* every worker is reaped */
    c->spawner = NULL;
    PyThreadState *ts = c->ts;
    PyEval_RestoreThread(ts);
    drain_ready(c); /* handed off, never finished: the futures outlive the core */
    c->thread_done = 1;
    if (c->orphaned) {
        /* Dropped while it ran: nobody will join this thread. */
        (void)pthread_detach(pthread_self());
        core_free_when_unused(c);
    }
    PyThreadState_Clear(ts);
    PyThreadState_DeleteCurrent();
    return NULL;
}

/* --------------------------------------------------------- core life cycle */

static void free_strv(char **v)
{
    for (char **p = v; p != NULL && *p != NULL; p++) {
        PyMem_RawFree(*p);
    }
    PyMem_RawFree(v);
}

/* A NULL-terminated copy of a list of str (UTF-8), or NULL with an
 * exception. Raw memory: the loop thread frees it without the GIL. */
static char **strv_from_list(PyObject *list)
{
    Py_ssize_t n = PyList_GET_SIZE(list);
    char **v = PyMem_RawCalloc((size_t)n + 1, sizeof *v);
    for (Py_ssize_t i = 0; v != NULL && i < n; i++) {
        Py_ssize_t len;
        const char *text = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(list, i), &len);
        if (text == NULL || (v[i] = PyMem_RawMalloc((size_t)len + 1)) == NULL) {
            free_strv(v);
            if (text != NULL) {
                PyErr_NoMemory();
            }
            return NULL;
        }
        memcpy(v[i], text, (size_t)len + 1);
    }
    if (v == NULL) {
        PyErr_NoMemory();
    }
    return v;
}

static void core_unlink_free(proc_core_t *c)
{
    braid_pools_unlink(&c->link);
    pthread_mutex_destroy(&c->ready_mu);
    Py_CLEAR(c->broken);
    free_strv(c->argv);
    free_strv(c->envp);
    PyMem_RawFree(c);
}

/* With the GIL: cancels the futures of tasks that have not started (the
 * engine's slot swap decides for those in a worker's ring). */
static void cancel_futures(proc_core_t *c)
{
    PyObject *list = PyList_New(0);
    for (task_t *t = c->live; list != NULL && t != NULL; t = t->next) {
        if (t->fut->state == FUT_PENDING && PyList_Append(list, (PyObject *)t->fut) < 0) {
            Py_CLEAR(list);
        }
    }
    for (Py_ssize_t k = 0; list != NULL && k < PyList_GET_SIZE(list); k++) {
        if (braid_future_cancel((FutureObject *)PyList_GET_ITEM(list, k)) < 0) {
            PyErr_WriteUnraisable(PyList_GET_ITEM(list, k));
        }
    }
    if (list == NULL) {
        PyErr_WriteUnraisable(NULL);
    }
    Py_XDECREF(list);
}

void braid_proc_core_close(proc_core_t *c, enum br_ppclose_mode mode, int64_t grace)
{
    if (c->forked) {
        return;
    }
    c->closing = 1;
    if (mode != BR_PPCLOSE_FINISH) {
        cancel_futures(c);
    }
    int err = br_procpool_close(&c->pool, mode, grace);
    if (err < 0) {
        braid_raise_oserror(err, "closing the process pool");
        PyErr_WriteUnraisable(NULL);
    }
}

/* With the GIL: waits, interruptibly, for the pool to close, and joins the
 * loop thread. 0 or -1 with an exception. */
int braid_proc_core_join(proc_core_t *c)
{
    if (c->forked || c->joined) {
        return 0;
    }
    if (pthread_equal(pthread_self(), c->thread)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "shutdown(wait=True) from a done-callback of the same pool would wait for itself");
        return -1;
    }
    int rc;
    do {
        Py_BEGIN_ALLOW_THREADS
        rc = br_event_wait(&c->closed_ev, -1);
        Py_END_ALLOW_THREADS
        if (rc == -EINTR && PyErr_CheckSignals() < 0) {
            return -1;
        }
    } while (rc != 0);
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = pthread_join(c->thread, NULL);
    Py_END_ALLOW_THREADS
    c->joined = 1;
    if (err != 0) {
        braid_raise_oserror(-err, "joining the process pool's loop thread");
        return -1;
    }
    return 0;
}

#define LINKED_CORE(l) ((proc_core_t *)((char *)(l) - offsetof(proc_core_t, link)))

/* At interpreter exit queued work finishes first, as with
 * ProcessPoolExecutor; after Ctrl-C it is cancelled and running tasks get
 * a short grace before their workers are killed. */
static void ops_close(braid_pool_link_t *l, int interrupted)
{
    proc_core_t *c = LINKED_CORE(l);
    braid_proc_core_close(c, interrupted ? BR_PPCLOSE_KILL_AFTER : BR_PPCLOSE_FINISH, BRAID_EXIT_GRACE_NS);
    c->orphaned = 0; /* joined at exit instead: its thread must not free it under us */
}

static int ops_busy(braid_pool_link_t *l)
{
    proc_core_t *c = LINKED_CORE(l);
    return !c->joined && !c->forked;
}

static int ops_wait(braid_pool_link_t *l)
{
    proc_core_t *c = LINKED_CORE(l);
    if (braid_proc_core_join(c) < 0) {
        return -1;
    }
    if (c->dropped) {
        core_unlink_free(c);
    }
    return 0;
}

static void ops_forked(braid_pool_link_t *l)
{
    /* The loop thread and the workers belong to the parent. */
    proc_core_t *c = LINKED_CORE(l);
    c->forked = 1;
    c->closing = 1;
    if (c->broken == NULL) {
        c->broken = PyUnicode_FromString("the process pool was created before os.fork() and has "
                                         "no workers in this process");
    }
}

static void ops_clear(braid_pool_link_t *l)
{
    /* After at-exit every loop thread has ended; a dropped pool's core
     * that no object will free is freed here. */
    proc_core_t *c = LINKED_CORE(l);
    if (c->dropped && c->joined) {
        core_unlink_free(c);
    } else {
        braid_pools_unlink(l);
    }
}

static const braid_pool_ops_t process_pool_ops = {
    .close = ops_close, .busy = ops_busy, .wait = ops_wait, .forked = ops_forked, .clear = ops_clear};



proc_core_t *braid_proc_core_new(braid_state *st, const proc_config_t *cfg)
{
    proc_core_t *c = PyMem_RawCalloc(1, sizeof *c);
    if (c == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    int err = 0;
    const char *what = NULL;
    if ((c->argv = strv_from_list(cfg->argv)) == NULL || (c->envp = strv_from_list(cfg->envp)) == NULL) {
        goto fail;
    }
    /* The template of this configuration (started here if there is none
     * yet, its imports not waited for) lets workers start in the
     * background; a bad interpreter path raises here all the same. */
    Py_BEGIN_ALLOW_THREADS
    err = braid_spawner_new(c->argv, c->envp, &c->spawner);
    Py_END_ALLOW_THREADS
    if (err < 0) {
        PyErr_Format(PyExc_OSError, "could not start worker process %s: %s", c->argv[0], br_strerror(err));
        goto fail;
    }
    c->st = st;
    c->background = braid_spawner_has_template(c->spawner);
    c->interp = PyInterpreterState_Get();
    c->nworkers = cfg->workers;
    c->max_memory = cfg->max_worker_memory;
    br_event_init(&c->started_ev);
    br_event_init(&c->closed_ev);
    br_procpool_options_t o = {
        .workers = cfg->workers, .ring_bytes = cfg->ring_bytes, .max_tasks_per_worker = cfg->max_tasks_per_worker,
        .task_timeout_ns = cfg->task_timeout > 0 ? (int64_t)(cfg->task_timeout * 1e9) : 0,
        .retries = cfg->retries, .max_worker_memory = cfg->max_worker_memory,
        .spin_ns = -1, /* spun in loop_main, without the GIL */
        .argv = c->argv, .envp = c->envp, .spawn = braid_spawner_spawn, .spawn_ctx = c->spawner,
        .on_done = on_done, .on_start = on_start, .on_started = on_started, .on_broken = on_broken,
        .on_closed = on_closed};
    if (cfg->init_payload != Py_None) {
        o.init_payload = PyBytes_AS_STRING(cfg->init_payload);
        o.init_len = (size_t)PyBytes_GET_SIZE(cfg->init_payload);
    }
    c->pool.data = c;
    what = "creating the process pool";
    if ((err = br_loop_init(&c->loop)) < 0) {
        goto fail;
    }
    if ((err = br_procpool_init(&c->loop, &c->pool, &o)) < 0) {
        (void)br_loop_close(&c->loop);
        goto fail;
    }
    /* closed by on_closed, which ends the loop */
    (void)br_timer_init(&c->loop, &c->ready_timer);
    c->ready_timer.handle.data = c;
    pthread_mutex_init(&c->ready_mu, NULL);
    what = "starting the process pool's loop thread";
    c->ts = PyThreadState_New(c->interp);
    if (c->ts == NULL || (err = -pthread_create(&c->thread, NULL, loop_main, c)) < 0) {
        /* Nothing runs the loop: close the pool on this thread. */
        (void)br_procpool_close(&c->pool, BR_PPCLOSE_KILL, 0);
        (void)br_loop_run(&c->loop, BR_RUN_DEFAULT);
        (void)br_loop_close(&c->loop);
        if (c->ts == NULL) {
            err = -ENOMEM;
        } else {
            PyThreadState_Clear(c->ts);
            PyThreadState_Delete(c->ts);
        }
        goto fail;
    }
    braid_pools_link(st, &c->link, &process_pool_ops); /* at-exit sees it from here on */
    return c;

fail:
    if (err < 0 && what != NULL) {
        braid_raise_oserror(err, what);
    }
    braid_spawner_free(c->spawner);
    free_strv(c->argv);
    free_strv(c->envp);
    PyMem_RawFree(c);
    return NULL;
}

void braid_proc_core_drop(proc_core_t *c)
{
    if (c->forked) {
        return; /* the parent's: not ours to close or free */
    }
    if (c->thread_done) {
        if (!c->joined) {
            (void)pthread_join(c->thread, NULL);
        }
        core_free_when_unused(c);
    } else {
        /* Queued work finishes; the loop thread frees the core. */
        braid_proc_core_close(c, BR_PPCLOSE_FINISH, 0);
        c->dropped = c->orphaned = 1;
    }
}

/* --------------------------------------------------------- tasks */

static int task_cancel_hook(FutureObject *f, int phase)
{
    task_t *t = f->hook_ctx;
    if (phase == 1) {
        braid_future_notify_cancel(f); /* wait()/as_completed() hear at once */
        return 1;
    }
    if (phase == 2) {
        return 0; /* its futures turn RUNNING themselves */
    }
    return t == NULL || br_procpool_cancel(&t->core->pool, &t->t) == 0;
}

PyObject *braid_proc_core_submit(proc_core_t *c, FutureObject *fut, PyObject *payload, PyObject *held,
                                 PyObject *keep)
{
    task_t *t = PyMem_Calloc(1, sizeof *t);
    if (t == NULL) {
        Py_XDECREF(held);
        Py_DECREF(keep);
        Py_DECREF(payload);
        Py_DECREF(fut);
        return PyErr_NoMemory();
    }
    t->core = c;
    t->fut = (FutureObject *)Py_NewRef(fut);
    t->payload = payload;
    t->held = held;
    t->keep = keep;
    t->t.payload = PyBytes_AS_STRING(payload);
    t->t.len = (size_t)PyBytes_GET_SIZE(payload);
    t->t.data = t;
    t->next = c->live;
    if (c->live) {
        c->live->prev = t;
    }
    c->live = t;
    fut->cancel_hook = task_cancel_hook;
    fut->hook_ctx = t;
    fut->drain_hook = drain_hook;
    fut->drain_ctx = t;
    int err = br_procpool_submit(&c->pool, &t->t);
    if (err < 0) {
        task_free(t);
        Py_DECREF(fut);
        if (err == -EPIPE) {
            const char *why = br_procpool_broken(&c->pool);
            PyErr_SetString(braid_broken_process_pool(c->st), why ? why : "the process pool is broken");
        } else if (err == -ESHUTDOWN) {
            PyErr_SetString(PyExc_RuntimeError, "cannot schedule new futures after shutdown");
        } else {
            braid_raise_oserror(err, "submitting to the process pool");
        }
        return NULL;
    }
    if (err == 1) {
        fut->state = FUT_RUNNING; /* sent to an idle worker from here: no on_start */
    }
    return (PyObject *)fut;
}
