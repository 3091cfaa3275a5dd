/*
 * threadpool.c — _ThreadPoolCore, the C half of braid.ThreadPool.
 *
 * Each pool object owns a pool_core_t: the engine's br_threadpool_t plus the
 * Python objects its worker threads need. Work items are the futures
 * themselves (FutureObject embeds a br_work_t), so a submit allocates one
 * object and takes one mutex.
 *
 * Worker threads are engine threads with a thread state of the importing
 * interpreter. A worker that wakes takes the GIL once and then runs every
 * task it finds queued (br_threadpool_try_take) before it lets the GIL go,
 * instead of one GIL round trip per task.
 *
 * Core life cycle (all flags change with the GIL held):
 *
 *   open --shutdown()/at-exit--> closed --join--> joined --pool object gone--> freed
 *     |                                              ^
 *     |  pool object dropped (dealloc), not joined   | (at-exit or a shutdown(wait=True)
 *     v                                              |  already waiting: joined, then freed)
 *   detached: closed, its queued work still runs; the engine owns the threads
 *     |
 *     +-- last worker leaves Python (on_thread_exit): unlinked from st->pools,
 *     |   its Python objects released, an at-exit waiter woken
 *     +-- last worker thread ends (engine's on_detached): freed
 *
 * A dropped pool so frees itself as soon as its work is done, as a dropped
 * ThreadPoolExecutor does; interpreter exit waits for the detached ones
 * still linked, since their workers run Python code.
 */
#include "braidpy.h"
#include "compat.h"

#include <errno.h>
#include <unistd.h>

#define MAX_WORKERS_LIMIT 65536
/* A worker lets other threads have the GIL after this many tasks in a row,
 * in case the tasks are C functions that never reach the eval breaker. */
#define TASKS_PER_GIL_HOLD 64
/* An idle worker polls the queue this long before it sleeps: a caller
 * doing submit-then-result in a loop then never waits for a thread wakeup.
 * Only one worker of a pool spins at a time, without the GIL. */
#define WORKER_SPIN_NS 50000

struct pool_core_s {
    br_threadpool_t tp;       /* first: FutureObject.pool points here too */
    braid_state *st;
    PyInterpreterState *interp;
    PyObject *initializer;
    PyObject *initargs;
    PyObject *prefix;         /* str: thread names are prefix_N */
    PyObject *broken;         /* str: why the pool is broken, or NULL */
    unsigned thread_no;
    unsigned threads_exited;  /* workers past on_thread_exit (compared with the engine's
                                 count of threads started, which stops growing at close) */
    unsigned joiners;         /* threads inside core_join */
    int closed, joined, orphaned, detached;
    int forked;               /* inherited through os.fork(): no threads here */
    int abandoned;            /* a second Ctrl-C ended the wait for its running tasks:
                                 interpreter exit does not wait for them again */
    braid_pool_link_t link;   /* on st->pools (pools.c) */
};

typedef struct {
    PyObject_HEAD
    pool_core_t *core;
    unsigned max_workers;
} PoolObject;

static void core_release(pool_core_t *core);

static _Thread_local PyThreadState *tls_tstate;
static _Thread_local pool_core_t *tls_core;
static _Thread_local int tls_gil_held;
static _Thread_local br_work_t *tls_batch_head; /* the item that took the GIL */

/* --------------------------------------------------------- worker side */

static void report_unraisable(const char *what)
{
    PyObject *msg = PyUnicode_FromString(what);
    PyErr_WriteUnraisable(msg);
    Py_XDECREF(msg);
}

static void mark_broken(pool_core_t *core, const char *why)
{
    if (core->broken == NULL) {
        core->broken = PyUnicode_FromString(why);
        if (core->broken == NULL) {
            PyErr_Clear();
            core->broken = Py_NewRef(Py_None);
        }
    }
}

static void log_initializer_failure(pool_core_t *core)
{
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *meth = PyObject_GetAttrString(core->st->logger, "critical");
    PyObject *args = Py_BuildValue("(s)", "Exception in initializer:");
    PyObject *kw = Py_BuildValue("{s:O}", "exc_info", exc);
    PyObject *r = (meth && args && kw) ? PyObject_Call(meth, args, kw) : NULL;
    if (r == NULL) {
        PyErr_WriteUnraisable(exc);
    }
    Py_XDECREF(r);
    Py_XDECREF(kw);
    Py_XDECREF(args);
    Py_XDECREF(meth);
    Py_XDECREF(exc);
}

static void on_thread_start(br_threadpool_t *tp, void *arg)
{
    pool_core_t *core = arg;
    tls_core = core;
    tls_tstate = PyThreadState_New(core->interp);
    PyEval_RestoreThread(tls_tstate);
    unsigned n = core->thread_no++;
    if (core->st->worker_started != NULL) {
        PyObject *name = PyUnicode_FromFormat("%U_%u", core->prefix, n);
        PyObject *r = name ? PyObject_CallOneArg(core->st->worker_started, name) : NULL;
        if (r == NULL) {
            report_unraisable("braid: naming a worker thread");
        }
        Py_XDECREF(r);
        Py_XDECREF(name);
    }
    if (core->initializer != NULL && core->broken == NULL) {
        PyObject *r = PyObject_Call(core->initializer, core->initargs, NULL);
        if (r == NULL) {
            log_initializer_failure(core);
            mark_broken(core, "A thread initializer failed, the thread pool is not usable anymore");
        }
        Py_XDECREF(r);
    }
    PyEval_SaveThread();
}

static void on_thread_exit(br_threadpool_t *tp, void *arg)
{
    pool_core_t *core = arg;
    PyEval_RestoreThread(tls_tstate);
    if (core->st != NULL && core->st->worker_exiting != NULL) {
        PyObject *r = PyObject_CallNoArgs(core->st->worker_exiting);
        if (r == NULL) {
            report_unraisable("braid: unregistering a worker thread");
        }
        Py_XDECREF(r);
    }
    core->threads_exited++;
    if (core->detached && core->threads_exited == br_threadpool_threads(&core->tp)) {
        core_release(core); /* the engine frees the core when this thread ends */
    }
    PyThreadState_Clear(tls_tstate);
    PyThreadState_DeleteCurrent();
    tls_tstate = NULL;
    tls_core = NULL;
}

/* Runs fn over a list of argument tuples: (results, None) or, when one call
 * raises, (results before it, exception). */
static PyObject *run_chunk(PyObject *fn, PyObject *arglist)
{
    PyObject *results = PyList_New(0);
    if (results == NULL) {
        return NULL;
    }
    PyObject *exc = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(arglist); i++) {
        PyObject *r = PyObject_Call(fn, PyList_GET_ITEM(arglist, i), NULL);
        if (r == NULL) {
            exc = PyErr_GetRaisedException();
            break;
        }
        int rc = PyList_Append(results, r);
        Py_DECREF(r);
        if (rc < 0) {
            Py_DECREF(results);
            return NULL;
        }
    }
    return Py_BuildValue("(NN)", results, exc ? exc : Py_NewRef(Py_None));
}

/* With the GIL: runs one future's call and finishes the future. */
static void run_item(pool_core_t *core, FutureObject *f)
{
    f->pool = NULL;
    if (f->state != FUT_PENDING) {
        /* cancelled after a worker took it */
        braid_future_notify_cancel(f);
    } else if (core->broken != NULL) {
        PyObject *exc = PyObject_CallOneArg(core->st->BrokenThreadPool, core->broken);
        if (exc == NULL || braid_future_finish(f, NULL, exc) < 0) {
            report_unraisable("braid: failing a task of a broken pool");
        }
        Py_XDECREF(exc);
    } else {
        f->state = FUT_RUNNING;
        PyObject *res = f->chunked ? run_chunk(f->fn, f->args) : PyObject_Call(f->fn, f->args, f->kwargs);
        PyObject *exc = res ? NULL : PyErr_GetRaisedException();
        Py_CLEAR(f->fn);
        Py_CLEAR(f->args);
        Py_CLEAR(f->kwargs);
        if (braid_future_finish(f, res, exc) < 0) {
            report_unraisable("braid: a done-callback raised");
        }
        Py_XDECREF(res);
        Py_XDECREF(exc);
    }
    Py_CLEAR(f->fn);
    Py_CLEAR(f->args);
    Py_CLEAR(f->kwargs);
    /* The queue's reference is dropped in pool_work_done: the engine still
     * touches the item after this callback returns. */
}

/* Engine work callback. The first item of a batch takes the GIL; items
 * taken with br_threadpool_try_take run inside the same hold. The GIL is
 * still held when this returns for the first item: pool_work_done drops
 * the item's last reference and only then lets the GIL go. */
static void work_cb(br_work_t *w)
{
    FutureObject *f = (FutureObject *)w->data;
    pool_core_t *core = tls_core;
    if (tls_gil_held) {
        run_item(core, f);
        return;
    }
    PyEval_RestoreThread(tls_tstate);
    tls_gil_held = 1;
    tls_batch_head = w;
    run_item(core, f);
    unsigned n = 1;
    br_work_t *next;
    while ((next = br_threadpool_try_take(&core->tp)) != NULL) {
        br_threadpool_run_taken(next);
        if (++n % TASKS_PER_GIL_HOLD == 0) {
            PyEval_SaveThread();
            PyEval_RestoreThread(tls_tstate);
        }
    }
}

/* Engine completion callback, always on a thread holding the GIL: after a
 * work callback (status 0), or from br_threadpool_cancel / close(CANCEL) on
 * the thread that called them (-ECANCELED). Drops the queue's reference. */
static void pool_work_done(br_work_t *w, int status)
{
    FutureObject *f = (FutureObject *)w->data;
    if (status != 0) {
        braid_future_work_cancelled(f);
        return;
    }
    Py_DECREF(f);
    if (w == tls_batch_head) {
        tls_batch_head = NULL;
        tls_gil_held = 0;
        PyEval_SaveThread();
    }
}

/* --------------------------------------------------------- core life cycle */

/* With the GIL: a detached core's last worker has left Python. Takes it off
 * the module's list and drops its Python objects (no thread starts in a
 * closed pool, and none of its work is left); wakes an at-exit wait. */
static void core_release(pool_core_t *core)
{
    braid_state *st = core->st;
    Py_CLEAR(core->initializer);
    Py_CLEAR(core->initargs);
    Py_CLEAR(core->prefix);
    Py_CLEAR(core->broken);
    braid_pools_release(st, &core->link);
}

/* The engine's on_detached: the last worker thread of a dropped pool is
 * ending (or none was live at detach). No Python here. */
static void core_detached(br_threadpool_t *tp)
{
    pool_core_t *core = (pool_core_t *)tp; /* tp is the first member */
    br_threadpool_destroy(tp);
    PyMem_RawFree(core);
}

static void core_free(pool_core_t *core)
{
    braid_pools_unlink(&core->link);
    if (!core->forked) {
        /* after a fork the engine's mutex may be held by a thread that
         * exists only in the parent: leave the engine memory alone */
        br_threadpool_destroy(&core->tp);
    }
    Py_CLEAR(core->initializer);
    Py_CLEAR(core->initargs);
    Py_CLEAR(core->prefix);
    Py_CLEAR(core->broken);
    PyMem_RawFree(core);
}

/* With the GIL; releases it while waiting. 0, or -1 with an exception. */
static int core_join(pool_core_t *core)
{
    if (core->joined) {
        return 0;
    }
    if (tls_core == core) {
        PyErr_SetString(PyExc_RuntimeError,
                        "shutdown(wait=True) called from a task of the same pool would wait for itself");
        return -1;
    }
    /* Wait for the workers with the GIL released, waking for signal
     * handlers: Ctrl-C raises KeyboardInterrupt here, the pool stays
     * closed, and a later shutdown() or the at-exit hook waits again.
     * While anyone waits here (joiners > 0) a dealloc of the pool object
     * leaves the core to the last joiner instead of detaching it. */
    core->joiners++;
    int rc;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = br_threadpool_wait_exited(&core->tp, -1);
        Py_END_ALLOW_THREADS
        if (rc != -EINTR || PyErr_CheckSignals() < 0) {
            break;
        }
    }
    if (rc == 0 && !core->joined) {
        /* every worker has exited: the join reaps their threads at once
         * (a second joiner's join returns at once too) */
        Py_BEGIN_ALLOW_THREADS
        rc = br_threadpool_join(&core->tp);
        Py_END_ALLOW_THREADS
        if (rc == 0) {
            core->joined = 1;
        }
    }
    core->joiners--;
    if (rc == -EINTR) {
        return -1; /* the signal handler's exception */
    }
    if (rc < 0) {
        braid_raise_oserror(rc, "waiting for the thread pool's workers");
        return -1;
    }
    if (core->orphaned && core->joiners == 0) {
        core_free(core);
    }
    return 0;
}

static void core_close(pool_core_t *core, int cancel)
{
    core->closed = 1;
    /* with BR_CLOSE_CANCEL the engine calls work_done(-ECANCELED) for each
     * queued future, here, with the GIL held */
    (void)br_threadpool_close(&core->tp, cancel ? BR_CLOSE_CANCEL : BR_CLOSE_DRAIN);
}

static const braid_pool_ops_t thread_pool_ops;

size_t braid_threadpool_cores(braid_state *st)
{
    return braid_pools_count(st, &thread_pool_ops);
}

#define LINKED_CORE(l) ((pool_core_t *)((char *)(l) - offsetof(pool_core_t, link)))

/* At interpreter exit, as ThreadPoolExecutor's hook: queued work of every
 * pool finishes and the workers leave, dropped pools' too; after Ctrl-C
 * queued work is cancelled instead (running tasks still end as they will:
 * a thread cannot be killed). */
static void ops_close(braid_pool_link_t *l, int interrupted)
{
    pool_core_t *core = LINKED_CORE(l);
    if (!core->closed) {
        core_close(core, interrupted);
    }
}

static int ops_busy(braid_pool_link_t *l)
{
    pool_core_t *core = LINKED_CORE(l);
    if (core->abandoned) {
        return 0; /* a second Ctrl-C left its running tasks to the process's end */
    }
    /* a pool some other thread is joining is that thread's to wait for */
    return core->detached || (!core->joined && core->joiners == 0);
}

static int ops_wait(braid_pool_link_t *l)
{
    pool_core_t *core = LINKED_CORE(l);
    if (!core->detached) {
        return core_join(core);
    }
    return braid_pools_wait_released(core->st); /* a dropped pool: core_release wakes it */
}

static void ops_forked(braid_pool_link_t *l)
{
    /* Only the forking thread lives on in the child: every pool is without
     * workers, and its engine lock may be held for ever. Mark each pool
     * broken and joined so no code path touches the engine again. Tasks
     * still queued belonged to the parent and do not run here. */
    pool_core_t *core = LINKED_CORE(l);
    core->forked = 1;
    core->closed = 1;
    core->joined = 1;
    core->joiners = 0;
    if (core->detached) {
        /* dropped in the parent: no pool object here will free it, and
         * its engine memory is not ours to touch; left as it is */
        braid_pools_unlink(l);
        return;
    }
    Py_CLEAR(core->broken);
    mark_broken(core, "the thread pool was created before os.fork() and has no threads in "
                      "this process; create a new pool in the child");
}

static void ops_clear(braid_pool_link_t *l)
{
    /* The module is going away: at-exit has joined every pool that ran
     * Python code. A core whose workers are still alive (at-exit never ran)
     * is left to the process exit rather than waited for without end. */
    pool_core_t *core = LINKED_CORE(l);
    if (core->detached) {
        /* its workers outlived an interrupted at-exit wait: they free
         * the core themselves, without the module */
        braid_pools_unlink(l);
        core->st = NULL;
        return;
    }
    if (!core->closed) {
        (void)br_threadpool_close(&core->tp, BR_CLOSE_DRAIN);
    }
    if (!core->joined && br_threadpool_live(&core->tp) == 0 && br_threadpool_join(&core->tp) == 0) {
        core->joined = 1;
    }
    if (core->joined) {
        core_free(core);
    } else {
        braid_pools_unlink(l);
    }
}

static const braid_pool_ops_t thread_pool_ops = {
    .close = ops_close, .busy = ops_busy, .wait = ops_wait, .forked = ops_forked, .clear = ops_clear,
    .unstoppable = 1};

void braid_pool_cancel_work(pool_core_t *core, br_work_t *work)
{
    if (!core->forked) {
        /* -EBUSY: a worker took it and will notify when it sees CANCELLED */
        (void)br_threadpool_cancel(&core->tp, work);
    }
}

/* --------------------------------------------------------- submit */

FutureObject *braid_pool_submit(PyObject *self, PyObject *fn, PyObject *args, PyObject *kwargs,
                                int chunked)
{
    pool_core_t *core = ((PoolObject *)self)->core;
    if (braid_pool_check_made(self, core) < 0) {
        return NULL;
    }
    braid_state *st = core->st;
    if (core->broken != NULL) {
        PyErr_SetObject(st->BrokenThreadPool, core->broken);
        return NULL;
    }
    if (core->closed) {
        PyErr_SetString(PyExc_RuntimeError, "cannot schedule new futures after shutdown");
        return NULL;
    }
    FutureObject *f = braid_future_new(st);
    if (f == NULL) {
        return NULL;
    }
    f->fn = Py_NewRef(fn);
    f->args = Py_NewRef(args);
    f->kwargs = Py_XNewRef(kwargs);
    f->chunked = chunked;
    f->work.work = work_cb;
    f->work.done = pool_work_done;
    f->pool = core;
    Py_INCREF(f); /* the queue's reference, dropped once it ran or was cancelled */
    int rc = br_threadpool_submit(&core->tp, &f->work);
    if (rc < 0) {
        f->pool = NULL;
        Py_DECREF(f);
        Py_DECREF(f);
        if (rc == -ESHUTDOWN) {
            PyErr_SetString(PyExc_RuntimeError, "cannot schedule new futures after shutdown");
        } else {
            braid_raise_oserror(rc, "submitting to the thread pool");
        }
        return NULL;
    }
    return f;
}

unsigned braid_pool_max_workers(PyObject *self)
{
    return ((PoolObject *)self)->max_workers;
}

static PyObject *pool_submit(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    PyObject *fn, *tuple, *kwargs;
    if (braid_unpack_submit(args, nargs, kwnames, &fn, &tuple, &kwargs) < 0) {
        return NULL;
    }
    FutureObject *f = braid_pool_submit(self, fn, tuple, kwargs, 0);
    Py_DECREF(tuple);
    Py_XDECREF(kwargs);
    return (PyObject *)f;
}

/* buffersize=: None (0 here) or an int >= 1, checked as 3.14's Executor.map
 * does (isinstance(buffersize, int), then > 0); larger than a Py_ssize_t
 * means no bound in practice. */
static int parse_buffersize(PyObject *obj, Py_ssize_t *out)
{
    *out = 0;
    if (obj == Py_None) {
        return 0;
    }
    if (!PyLong_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "buffersize must be an integer or None");
        return -1;
    }
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow < 0 || (overflow == 0 && n < 1)) {
        PyErr_SetString(PyExc_ValueError, "buffersize must be None or > 0");
        return -1;
    }
    *out = (overflow > 0 || n > PY_SSIZE_T_MAX / 2) ? PY_SSIZE_T_MAX / 2 : (Py_ssize_t)n;
    return 0;
}

static PyObject *pool_map(PyObject *self, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) < 1) {
        PyErr_SetString(PyExc_TypeError, "map() missing 1 required positional argument: 'fn'");
        return NULL;
    }
    PyObject *fn = PyTuple_GET_ITEM(args, 0);
    PyObject *timeout = Py_None, *buffer_obj = Py_None;
    Py_ssize_t chunksize = 1, buffersize = 0;
    if (kwds != NULL) {
        static char *kwlist[] = {"timeout", "chunksize", "buffersize", NULL};
        PyObject *empty = PyTuple_New(0);
        int ok = empty && PyArg_ParseTupleAndKeywords(empty, kwds, "|$OnO:map", kwlist, &timeout,
                                                      &chunksize, &buffer_obj);
        Py_XDECREF(empty);
        if (!ok) {
            return NULL;
        }
    }
    /* first, as in 3.14's Executor.map */
    if (parse_buffersize(buffer_obj, &buffersize) < 0) {
        return NULL;
    }
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "map() needs a callable, not %.100s", Py_TYPE(fn)->tp_name);
        return NULL;
    }
    if (chunksize < 1) {
        PyErr_SetString(PyExc_ValueError, "chunksize must be >= 1");
        return NULL;
    }
    int64_t deadline; /* counted from the call, as Executor.map does */
    if (braid_parse_timeout(timeout, &deadline) < 0) {
        return NULL;
    }
    if (braid_pool_check_made(self, ((PoolObject *)self)->core) < 0) {
        return NULL;
    }
    PyObject *iterables = PyTuple_GetSlice(args, 1, PyTuple_GET_SIZE(args));
    if (iterables == NULL) {
        return NULL;
    }
    PyObject *it = braid_mapiter_new(((PoolObject *)self)->core->st, self, fn, iterables, deadline,
                                     chunksize, buffersize);
    Py_DECREF(iterables);
    return it;
}

static PyObject *pool_shutdown(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wait", "cancel_futures", NULL};
    int wait = 1, cancel = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p$p:shutdown", kwlist, &wait, &cancel)) {
        return NULL;
    }
    pool_core_t *core = ((PoolObject *)self)->core;
    if (braid_pool_check_made(self, core) < 0) {
        return NULL;
    }
    if (core->forked) {
        Py_RETURN_NONE; /* no worker in this process to wait for */
    }
    if (!core->closed || cancel) {
        core_close(core, cancel);
    }
    if (wait && core_join(core) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* After shutdown(): the running tasks are left to the process's end
 * (braid._pools.shutdown_on_exit, on a second Ctrl-C). */
static PyObject *pool_abandon_running(PyObject *self, PyObject *unused)
{
    pool_core_t *core = ((PoolObject *)self)->core;
    if (core == NULL || !core->closed) {
        PyErr_SetString(PyExc_RuntimeError, "only a pool that was shut down can be abandoned");
        return NULL;
    }
    core->abandoned = 1;
    Py_RETURN_NONE;
}

static PyObject *pool_get_max_workers(PyObject *self, void *c)
{
    return PyLong_FromUnsignedLong(((PoolObject *)self)->max_workers);
}

static PyObject *pool_get_threads(PyObject *self, void *c)
{
    pool_core_t *core = ((PoolObject *)self)->core;
    return PyLong_FromUnsignedLong(core == NULL || core->forked ? 0 : br_threadpool_threads(&core->tp));
}

static PyObject *pool_get_queued(PyObject *self, void *c)
{
    pool_core_t *core = ((PoolObject *)self)->core;
    return PyLong_FromSize_t(core == NULL || core->forked ? 0 : br_threadpool_queued(&core->tp));
}

/* --------------------------------------------------------- object life cycle */

static unsigned default_max_workers(void)
{
    /* as concurrent.futures.ThreadPoolExecutor: min(32, cpus + 4) */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus < 1) {
        cpus = 1;
    }
    return cpus + 4 < 32 ? (unsigned)(cpus + 4) : 32;
}

static int pool_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_workers", "thread_name_prefix", "initializer", "initargs", NULL};
    PyObject *max_obj = Py_None, *prefix = NULL, *initializer = Py_None, *initargs = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OUOO:ThreadPool", kwlist, &max_obj, &prefix,
                                     &initializer, &initargs)) {
        return -1;
    }
    PoolObject *p = (PoolObject *)self;
    if (p->core != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ThreadPool.__init__ called twice");
        return -1;
    }
    PyObject *module = braid_module_from_type(Py_TYPE(self));
    if (module == NULL || braid_load_pools(module) < 0) {
        return -1;
    }
    braid_state *st = braid_state_from_type(Py_TYPE(self));
    unsigned max_workers = default_max_workers();
    if (max_obj != Py_None) {
        if (!PyLong_Check(max_obj)) {
            PyErr_Format(PyExc_TypeError, "max_workers must be an int or None, not %.100s",
                         Py_TYPE(max_obj)->tp_name);
            return -1;
        }
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(max_obj, &overflow);
        if (n == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow < 0 || (overflow == 0 && n <= 0)) {
            PyErr_SetString(PyExc_ValueError, "max_workers must be greater than 0");
            return -1;
        }
        if (overflow > 0 || n > MAX_WORKERS_LIMIT) {
            PyErr_Format(PyExc_ValueError, "max_workers must be at most %d", MAX_WORKERS_LIMIT);
            return -1;
        }
        max_workers = (unsigned)n;
    }
    if (initializer != Py_None && !PyCallable_Check(initializer)) {
        PyErr_SetString(PyExc_TypeError, "initializer must be a callable");
        return -1;
    }
    PyObject *argtuple = initargs ? PySequence_Tuple(initargs) : PyTuple_New(0);
    if (argtuple == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_SetString(PyExc_TypeError, "initargs must be a tuple or other sequence");
        }
        return -1;
    }
    pool_core_t *core = PyMem_RawCalloc(1, sizeof(*core));
    if (core == NULL) {
        Py_DECREF(argtuple);
        PyErr_NoMemory();
        return -1;
    }
    core->st = st;
    core->interp = PyInterpreterState_Get();
    core->initializer = initializer == Py_None ? NULL : Py_NewRef(initializer);
    core->initargs = argtuple;
    if (prefix != NULL && PyUnicode_GET_LENGTH(prefix) > 0) {
        core->prefix = Py_NewRef(prefix);
    } else {
        core->prefix = PyUnicode_FromFormat("ThreadPool-%lu", st->pool_counter++);
    }
    const char *cprefix = core->prefix ? PyUnicode_AsUTF8(core->prefix) : NULL;
    if (cprefix == NULL) {
        Py_XDECREF(core->initializer);
        Py_DECREF(core->initargs);
        Py_XDECREF(core->prefix);
        PyMem_RawFree(core);
        return -1;
    }
    br_threadpool_options_t opts = {
        .max_threads = max_workers,
        .name_prefix = cprefix,
        .spin_ns = WORKER_SPIN_NS,
        .on_thread_start = on_thread_start,
        .on_thread_exit = on_thread_exit,
        .hook_arg = core,
    };
    int rc = br_threadpool_init(&core->tp, &opts);
    if (rc < 0) {
        Py_XDECREF(core->initializer);
        Py_DECREF(core->initargs);
        Py_DECREF(core->prefix);
        PyMem_RawFree(core);
        braid_raise_oserror(rc, "creating the thread pool");
        return -1;
    }
    braid_pools_link(st, &core->link, &thread_pool_ops);
    p->core = core;
    p->max_workers = max_workers;
    return 0;
}

static void pool_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PoolObject *p = (PoolObject *)self;
    pool_core_t *core = p->core;
    if (core != NULL) {
        p->core = NULL;
        core->orphaned = 1;
        if (core->joined) {
            core_free(core);
        } else if (core->joiners == 0) { /* else the last joiner frees it */
            /* like the stdlib: a dropped pool lets its queued work finish
             * and its workers exit, never waited for here; the engine hands
             * the core to its last worker (see the life cycle above) */
            if (!core->closed) {
                core_close(core, 0);
            }
            core->detached = 1;
            if (core->threads_exited == br_threadpool_threads(&core->tp)) {
                core_release(core); /* no worker will run Python code again */
            }
            int rc = br_threadpool_detach(&core->tp, core_detached);
            if (rc < 0) { /* only a joined or detached pool refuses: not this one */
                PyErr_SetString(PyExc_SystemError, "braid: detaching a dropped thread pool failed");
                PyErr_WriteUnraisable(NULL);
            }
        }
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef pool_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))pool_submit, METH_FASTCALL | METH_KEYWORDS,
     "submit(fn, /, *args, **kwargs) -> Future: schedules fn(*args, **kwargs)."},
    {"map", (PyCFunction)(void (*)(void))pool_map, METH_VARARGS | METH_KEYWORDS,
     "map(fn, *iterables, timeout=None, chunksize=1, buffersize=None): results in order.\n\n"
     "As Executor.map (3.14): every task is submitted at the call; with buffersize=N,\n"
     "at most N tasks (chunks) ahead of the results handed out, the input read lazily.\n"
     "timeout counts from the call."},
    {"shutdown", (PyCFunction)(void (*)(void))pool_shutdown, METH_VARARGS | METH_KEYWORDS,
     "shutdown(wait=True, *, cancel_futures=False)"},
    {"_abandon_running", pool_abandon_running, METH_NOARGS,
     "_abandon_running(): after shutdown, interpreter exit does not wait for the tasks still running"},
    {NULL}};

static PyGetSetDef pool_getset[] = {
    {"max_workers", pool_get_max_workers, NULL, "the most worker threads this pool starts", NULL},
    {"_max_workers", pool_get_max_workers, NULL, "as ThreadPoolExecutor._max_workers", NULL},
    {"threads", pool_get_threads, NULL, "worker threads started so far", NULL},
    {"queued", pool_get_queued, NULL, "tasks waiting for a worker", NULL},
    {NULL}};

static PyType_Slot pool_slots[] = {
    {Py_tp_dealloc, pool_dealloc},
    {Py_tp_init, pool_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_methods, pool_methods},
    {Py_tp_getset, pool_getset},
    {Py_tp_doc, "The C half of braid.ThreadPool."},
    {0, NULL}};

static PyType_Spec pool_spec = {
    .name = "braid._braid._ThreadPoolCore",
    .basicsize = sizeof(PoolObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = pool_slots,
};

int braid_threadpool_init_types(PyObject *module, braid_state *st)
{
    st->pool_core_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &pool_spec, NULL);
    if (st->pool_core_type == NULL) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "_ThreadPoolCore", (PyObject *)st->pool_core_type);
}
