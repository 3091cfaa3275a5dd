/*
 * procpool.c — _ProcessPoolCore, the C half of braid.ProcessPool, on the
 * engine's br_procpool_t (src/core/procpool*.c schedules the tasks and
 * supervises the workers). This file pickles, makes futures and raises.
 *
 * Each pool runs a br_loop_t on a thread of its own, the loop thread: the
 * engine spawns workers there (PR_SET_PDEATHSIG follows the spawning
 * thread), through the pool's spawner (proctemplate.c): a fork of the
 * template of the pool's configuration, or a fresh interpreter where there
 * is no template. With a template, __init__ returns before the first
 * workers have started; without one it waits for them, so that a bad
 * interpreter path raises there. The loop thread runs without the GIL and takes it only in the
 * engine's callbacks, to finish futures: the first callback of a loop
 * iteration takes it and asks the loop to end that iteration without
 * sleeping (br_loop_stop); between iterations the thread lets it go, then
 * polls busy workers' result rings for a moment (br_procpool_results_soon)
 * before it sleeps. So a batch of results costs one GIL acquisition.
 *
 * Core life cycle (proc_core_t, malloc'd: it may outlive the Python object):
 *
 *   __init__ --> OPEN --shutdown / terminate / at-exit--> closing --engine's
 *                  |                                     on_closed--> closed:
 *                  |                                     the loop thread ends
 *                  +--the object is dropped--> closed (FINISH) as above,
 *                       orphaned: the loop thread frees the core itself
 *
 * Task memory (task_t) belongs to the engine from submit until its
 * on_done, which frees it; the future, the payload and what the payload
 * only names (keep, held) stay alive until then.
 */
#include "braidpy.h"
#include "compat.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define SPIN_NS 30000           /* the loop thread's poll before it sleeps */

typedef struct task_s {
    br_pptask_t t;
    struct proc_core_s *core;
    struct task_s *next, *prev; /* the core's live tasks (GIL) */
    FutureObject *fut;
    PyObject *payload;          /* bytes: the engine sends it (again on a retry) */
    PyObject *held;             /* memfds of the payload's out-of-band buffers, or NULL */
    PyObject *keep;             /* (fn, args, kwargs): what the payload only names */
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
};

typedef struct {
    PyObject_HEAD
    proc_core_t *core;
} ProcPoolObject;

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

static void on_done(br_pptask_t *bt, int status, const void *reply, size_t len)
{
    task_t *t = bt->data;
    proc_core_t *c = t->core;
    take_gil(c);
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
    if (f->state == FUT_PENDING || f->state == FUT_RUNNING) {
        f->state = FUT_RUNNING;
        if (braid_future_finish(f, obj, exc) < 0) {
            PyErr_WriteUnraisable((PyObject *)f);
        }
    }
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
    br_event_set(&((proc_core_t *)pool->data)->closed_ev);
}

static void core_unlink_free(proc_core_t *c);
static void free_strv(char **v);

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
    c->thread_done = 1;
    if (c->orphaned) {
        /* Dropped while it ran: nobody will join this thread. */
        (void)pthread_detach(pthread_self());
        core_unlink_free(c);
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

/* A deep copy of a NULL-terminated array of strings, or NULL (no memory). */
static char **strv_dup(char **v)
{
    size_t n = 0;
    while (v[n] != NULL) {
        n++;
    }
    char **copy = PyMem_RawCalloc(n + 1, sizeof *copy);
    for (size_t i = 0; copy != NULL && i < n; i++) {
        size_t len = strlen(v[i]) + 1;
        if ((copy[i] = PyMem_RawMalloc(len)) == NULL) {
            free_strv(copy);
            return NULL;
        }
        memcpy(copy[i], v[i], len);
    }
    return copy;
}

static void core_unlink_free(proc_core_t *c)
{
    braid_pools_unlink(&c->link);
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

static void core_close(proc_core_t *c, enum br_ppclose_mode mode, int64_t grace)
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
static int core_join(proc_core_t *c)
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
    core_close(c, interrupted ? BR_PPCLOSE_KILL_AFTER : BR_PPCLOSE_FINISH, BRAID_EXIT_GRACE_NS);
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
    if (core_join(c) < 0) {
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

/* --------------------------------------------------------- Python methods */

static int task_cancel_hook(FutureObject *f, int phase)
{
    task_t *t = f->hook_ctx;
    if (phase == 1) {
        braid_future_notify_cancel(f); /* wait()/as_completed() hear at once */
        return 1;
    }
    return t == NULL || br_procpool_cancel(&t->core->pool, &t->t) == 0;
}

static PyObject *pp_submit(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    braid_state *st = c->st;
    PyObject *fn, *tuple, *kwargs;
    if (braid_unpack_submit(args, nargs, kwnames, &fn, &tuple, &kwargs) < 0) {
        return NULL;
    }
    if (c->broken != NULL || c->closing) {
        Py_DECREF(tuple);
        Py_XDECREF(kwargs);
        if (c->broken != NULL) {
            PyErr_SetObject(braid_broken_process_pool(st), c->broken);
        } else {
            PyErr_SetString(PyExc_RuntimeError, "cannot schedule new futures after shutdown");
        }
        return NULL;
    }
    FutureObject *fut = braid_future_new(st);
    PyObject *keep = fut ? Py_BuildValue("(ONN)", fn, tuple, kwargs ? kwargs : Py_NewRef(Py_None)) : NULL;
    if (keep == NULL) {
        if (fut == NULL) {
            Py_DECREF(tuple);
            Py_XDECREF(kwargs);
        }
        Py_XDECREF(fut);
        return NULL;
    }
    PyObject *payload = braid_dumps_task(st, fn, PyTuple_GET_ITEM(keep, 1),
                                         kwargs ? PyTuple_GET_ITEM(keep, 2) : NULL, keep);
    PyObject *held = NULL;
    if (payload != NULL && PyTuple_Check(payload) && PyTuple_GET_SIZE(payload) == 2) {
        /* (bytes, memfds of out-of-band buffers to keep until settled) */
        PyObject *pair = payload;
        payload = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
        held = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
        Py_DECREF(pair);
    }
    if (payload == NULL || !PyBytes_Check(payload)) {
        /* an argument that cannot be pickled fails this task alone */
        Py_XDECREF(held);
        Py_DECREF(keep);
        PyObject *exc = payload ? NULL : PyErr_GetRaisedException();
        if (exc == NULL) {
            Py_XDECREF(payload);
            PyErr_SetString(PyExc_TypeError, "the task serializer did not return bytes");
            exc = PyErr_GetRaisedException();
        }
        fut->state = FUT_RUNNING;
        (void)braid_future_finish(fut, NULL, exc);
        Py_DECREF(exc);
        return (PyObject *)fut;
    }
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
    int err = br_procpool_submit(&c->pool, &t->t);
    if (err < 0) {
        task_free(t);
        Py_DECREF(fut);
        if (err == -EPIPE) {
            const char *why = br_procpool_broken(&c->pool);
            PyErr_SetString(braid_broken_process_pool(st), why ? why : "the process pool is broken");
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

static PyObject *pp_shutdown(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wait", "cancel_futures", NULL};
    int wait = 1, cancel = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p$p:shutdown", kwlist, &wait, &cancel)) {
        return NULL;
    }
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    core_close(c, cancel ? BR_PPCLOSE_CANCEL : BR_PPCLOSE_FINISH, 0);
    if (wait && core_join(c) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* terminate(): what multiprocessing.Pool.terminate does -- queued work is
 * cancelled, the workers are killed at once (their running tasks fail with
 * WorkerCrashed), and the call returns once the pool has settled all. */
static PyObject *pp_terminate(PyObject *self, PyObject *unused)
{
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    core_close(c, BR_PPCLOSE_KILL, 0);
    if (core_join(c) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *pp_get_max_workers(PyObject *self, void *x)
{
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    return PyLong_FromUnsignedLong(c != NULL ? c->nworkers : 0);
}

static PyObject *pp_get_template_pid(PyObject *self, void *x)
{
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    int pid = c != NULL && c->spawner != NULL ? braid_spawner_template_pid(c->spawner) : 0;
    return pid > 0 ? PyLong_FromLong(pid) : Py_NewRef(Py_None);
}

static PyObject *pp_get_pids(PyObject *self, void *x)
{
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    if (c == NULL) {
        return PyList_New(0);
    }
    /* workers start in the background: answer once the first ones have */
    while (!c->forked && !br_event_is_set(&c->started_ev)) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = br_event_wait(&c->started_ev, -1);
        Py_END_ALLOW_THREADS
        if (rc == -EINTR && PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
    int *pids = c->forked ? NULL : PyMem_Calloc(c->nworkers, sizeof *pids);
    int n = pids != NULL ? br_procpool_pids(&c->pool, pids, (int)c->nworkers) : 0;
    PyObject *list = PyList_New(n);
    for (int i = 0; list != NULL && i < n; i++) {
        PyObject *pid = PyLong_FromLong(pids[i]);
        if (pid == NULL) {
            Py_CLEAR(list);
        } else {
            PyList_SET_ITEM(list, i, pid);
        }
    }
    PyMem_Free(pids);
    return list;
}

/* A NULL-terminated array of str's UTF-8, borrowed from the list, for
 * br_procpool_init (which copies it): freed by the caller with PyMem_Free. */
static char **strv_from_list(PyObject *list)
{
    Py_ssize_t n = PyList_GET_SIZE(list);
    char **v = PyMem_Calloc((size_t)n + 1, sizeof *v);
    if (v == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        /* borrowed: valid while the list holds the str */
        if ((v[i] = (char *)PyUnicode_AsUTF8(PyList_GET_ITEM(list, i))) == NULL) {
            PyMem_Free(v);
            return NULL;
        }
    }
    return v;
}

static int pp_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_workers", "argv", "envp", "ring_bytes", "init_payload",
                             "max_tasks_per_worker", "task_timeout", "retries", "max_worker_memory", NULL};
    unsigned max_workers, max_tasks;
    PyObject *argv, *envp, *init_payload;
    long long ring_bytes, max_memory = 0;
    double timeout;
    int retries;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "IO!O!LOIdi|L:_ProcessPoolCore", kwlist, &max_workers,
                                     &PyList_Type, &argv, &PyList_Type, &envp, &ring_bytes, &init_payload,
                                     &max_tasks, &timeout, &retries, &max_memory)) {
        return -1;
    }
    ProcPoolObject *p = (ProcPoolObject *)self;
    if (p->core != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "__init__ called twice");
        return -1;
    }
    if (max_workers == 0 || PyList_GET_SIZE(argv) < 1 || ring_bytes <= 0 || retries < 0 || max_memory < 0 ||
        (init_payload != Py_None && !PyBytes_Check(init_payload))) {
        PyErr_SetString(PyExc_ValueError, "invalid _ProcessPoolCore arguments");
        return -1;
    }
    PyObject *module = braid_module_from_type(Py_TYPE(self));
    if (module == NULL || braid_load_pools(module) < 0) {
        return -1;
    }
    braid_state *st = braid_state_from_type(Py_TYPE(self));
    if (st->proc_dumps == NULL || st->proc_loads == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "braid._procpool did not register its hooks");
        return -1;
    }
    char **av = strv_from_list(argv);
    char **ev = av ? strv_from_list(envp) : NULL;
    proc_core_t *c = ev ? PyMem_RawCalloc(1, sizeof *c) : NULL;
    if (c == NULL) {
        PyMem_Free(av);
        PyMem_Free(ev);
        return ev ? (PyErr_NoMemory(), -1) : -1;
    }
    c->st = st;
    c->argv = strv_dup(av);
    c->envp = c->argv ? strv_dup(ev) : NULL;
    if (c->envp == NULL) {
        free_strv(c->argv);
        PyMem_RawFree(c);
        PyMem_Free(av);
        PyMem_Free(ev);
        PyErr_NoMemory();
        return -1;
    }
    /* The template of this configuration (started here if there is none
     * yet, its imports not waited for) lets workers start in the
     * background; a bad interpreter path raises here all the same. */
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = braid_spawner_new(c->argv, c->envp, &c->spawner);
    Py_END_ALLOW_THREADS
    if (err < 0) {
        PyErr_Format(PyExc_OSError, "could not start worker process %s: %s", c->argv[0], br_strerror(err));
        free_strv(c->argv);
        free_strv(c->envp);
        PyMem_RawFree(c);
        PyMem_Free(av);
        PyMem_Free(ev);
        return -1;
    }
    c->background = braid_spawner_has_template(c->spawner);
    c->interp = PyInterpreterState_Get();
    c->nworkers = max_workers;
    c->max_memory = (size_t)max_memory;
    br_event_init(&c->started_ev);
    br_event_init(&c->closed_ev);
    br_procpool_options_t o = {
        .workers = max_workers, .ring_bytes = (size_t)ring_bytes, .max_tasks_per_worker = max_tasks,
        .task_timeout_ns = timeout > 0 ? (int64_t)(timeout * 1e9) : 0, .retries = (unsigned)retries,
        .max_worker_memory = (size_t)max_memory, .spin_ns = -1, /* spun in loop_main, without the GIL */
        .argv = av, .envp = ev, .spawn = braid_spawner_spawn, .spawn_ctx = c->spawner, .on_done = on_done, .on_start = on_start, .on_started = on_started,
        .on_broken = on_broken, .on_closed = on_closed};
    if (init_payload != Py_None) {
        o.init_payload = PyBytes_AS_STRING(init_payload);
        o.init_len = (size_t)PyBytes_GET_SIZE(init_payload);
    }
    c->pool.data = c;
    err = br_loop_init(&c->loop);
    if (err == 0 && (err = br_procpool_init(&c->loop, &c->pool, &o)) < 0) {
        (void)br_loop_close(&c->loop);
    }
    PyMem_Free(av); /* the engine has its own copies */
    PyMem_Free(ev);
    if (err < 0) {
        braid_spawner_free(c->spawner);
        free_strv(c->argv);
        free_strv(c->envp);
        PyMem_RawFree(c);
        braid_raise_oserror(err, "creating the process pool");
        return -1;
    }
    c->ts = PyThreadState_New(c->interp);
    if (c->ts == NULL || (err = pthread_create(&c->thread, NULL, loop_main, c)) != 0) {
        /* Nothing runs the loop: close the pool on this thread. */
        (void)br_procpool_close(&c->pool, BR_PPCLOSE_KILL, 0);
        (void)br_loop_run(&c->loop, BR_RUN_DEFAULT);
        (void)br_loop_close(&c->loop);
        err = c->ts != NULL ? -err : -ENOMEM;
        if (c->ts != NULL) {
            PyThreadState_Clear(c->ts);
            PyThreadState_Delete(c->ts);
        }
        braid_spawner_free(c->spawner);
        free_strv(c->argv);
        free_strv(c->envp);
        PyMem_RawFree(c);
        braid_raise_oserror(err, "starting the process pool's loop thread");
        return -1;
    }
    braid_pools_link(st, &c->link, &process_pool_ops); /* at-exit sees it from here on */
    p->core = c;
    if (c->background) {
        return 0;
    }
    /* Without a template: waits for the first workers, so that a bad
     * interpreter path raises here; the loop thread may need the GIL. */
    Py_BEGIN_ALLOW_THREADS
    (void)br_event_wait(&c->started_ev, -1);
    Py_END_ALLOW_THREADS
    if (c->start_err < 0) {
        PyErr_Format(PyExc_OSError, "could not start worker process %U: %s", PyList_GET_ITEM(argv, 0),
                     br_strerror(c->start_err));
        return -1;
    }
    return 0;
}

static void pp_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    if (c != NULL) {
        if (c->forked) {
            /* the parent's: not ours to close or free */
        } else if (c->thread_done) {
            if (!c->joined) {
                (void)pthread_join(c->thread, NULL);
            }
            core_unlink_free(c);
        } else {
            /* Queued work finishes; the loop thread frees the core. */
            core_close(c, BR_PPCLOSE_FINISH, 0);
            c->dropped = c->orphaned = 1;
        }
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}
static PyMethodDef pp_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))pp_submit, METH_FASTCALL | METH_KEYWORDS,
     "submit(fn, /, *args, **kwargs) -> Future: runs fn(*args, **kwargs) in a worker process."},
    {"shutdown", (PyCFunction)(void (*)(void))pp_shutdown, METH_VARARGS | METH_KEYWORDS,
     "shutdown(wait=True, *, cancel_futures=False)"},
    {"terminate", pp_terminate, METH_NOARGS,
     "terminate(): cancels queued work, kills the workers now (running tasks fail with "
     "WorkerCrashed) and waits until they are gone."},
    {NULL}};

static PyGetSetDef pp_getset[] = {
    {"max_workers", pp_get_max_workers, NULL, "number of worker processes", NULL},
    {"_max_workers", pp_get_max_workers, NULL, NULL, NULL},
    {"pids", pp_get_pids, NULL, "process ids of the live workers", NULL},
    {"_template_pid", pp_get_template_pid, NULL, "pid of the template the workers are forked from, or None", NULL},
    {NULL}};

static PyType_Slot pp_slots[] = {
    {Py_tp_dealloc, pp_dealloc},
    {Py_tp_init, pp_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_methods, pp_methods},
    {Py_tp_getset, pp_getset},
    {Py_tp_doc, "The C half of braid.ProcessPool."},
    {0, NULL}};

static PyType_Spec pp_spec = {
    .name = "braid._braid._ProcessPoolCore",
    .basicsize = sizeof(ProcPoolObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = pp_slots,
};

int braid_procpool_init_types(PyObject *module, braid_state *st)
{
    st->procpool_core_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &pp_spec, NULL);
    if (st->procpool_core_type == NULL) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "_ProcessPoolCore", (PyObject *)st->procpool_core_type);
}

