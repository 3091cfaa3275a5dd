/*
 * interppool.c — _InterpreterPoolCore, the C half of braid.InterpreterPool:
 * submit, shutdown, cancellation, the pool's lifetime (on pools.c's list),
 * and settling a finished task's future, in the main interpreter. The
 * workers (one sub-interpreter each) are in interpworker.c, task_timeout in
 * interpwatch.c, who finishes the futures and why in interpdeliver.c, what
 * crosses between the interpreters in interppayload.c: a task is bytes (the
 * call), its outcome bytes or a C value, an exception inside
 * braid._procworker's envelope (the worker's traceback as __cause__).
 *
 * Core life cycle (flags change with the main GIL):
 *
 *   open --shutdown()/at-exit--> closed --join--> joined --object gone--> freed
 *     |
 *     +--object dropped, not joined--> detached: closed, queued work still
 *          runs; the last worker to leave unlinks it and drops its Python
 *          objects (braid_ip_worker_gone), the engine's on_detached frees it
 */
#include "interppool.h"
#include "compat.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#ifdef BRAID_HAVE_INTERPRETERS

#define MAX_WORKERS_LIMIT 4096

typedef struct {
    PyObject_HEAD
    interp_core_t *core;
    unsigned max_workers;
} IPoolObject;

/* --------------------------------------------------------- tasks */

void braid_ip_release_views(Py_buffer *views, int n)
{
    for (int i = 0; i < n; i++) {
        PyBuffer_Release(&views[i]);
    }
    PyMem_RawFree(views);
}

void braid_ip_task_free(itask_t *t)
{
    if (t->fut->hook_ctx == t) {
        t->fut->hook_ctx = NULL; /* the hook stays: it still notifies a cancel */
    }
    if (t->views != NULL) {
        braid_ip_release_views(t->views, t->nviews);
    }
    Py_DECREF(t->fut);
    Py_DECREF(t->payload);
    PyMem_RawFree(t->reply);
    PyMem_RawFree(t);
}

static PyObject *broken_exc(interp_core_t *core)
{
    braid_state *st = core->st;
    PyObject *type = st->BrokenInterpreterPool ? st->BrokenInterpreterPool : st->BrokenThreadPool;
    PyObject *msg = core->broken && core->broken != Py_None
                        ? Py_NewRef(core->broken)
                        : PyUnicode_FromString("the interpreter pool is not usable anymore");
    PyObject *exc = msg ? PyObject_CallOneArg(type, msg) : NULL;
    Py_XDECREF(msg);
    return exc;
}

void braid_ip_settle(itask_t *t)
{
    interp_core_t *core = t->core;
    braid_state *st = core->st;
    FutureObject *f = t->fut;
    PyObject *obj = NULL, *exc = NULL;
    switch (t->status) {
    case IT_OK:
        switch (t->value_kind) {
        case IV_NONE:
            obj = Py_NewRef(Py_None);
            break;
        case IV_BOOL:
            obj = PyBool_FromLong((long)t->value.i);
            break;
        case IV_INT:
            obj = PyLong_FromLongLong(t->value.i);
            break;
        case IV_FLOAT:
            obj = PyFloat_FromDouble(t->value.d);
            break;
        default:
            obj = braid_ip_loads_reply(st, t);
        }
        break;
    case IT_ERROR:
        if (t->reply == NULL) {
            exc = PyObject_CallFunction(PyExc_RuntimeError, "s",
                                        "the task raised an exception that could not be sent back");
        } else {
            exc = braid_ip_loads_reply(st, t);
        }
        break;
    case IT_TIMEOUT:
        exc = PyObject_CallFunction(st->TaskTimeout, "s",
                                    "the task ran past task_timeout and was interrupted");
        break;
    case IT_STUCK:
        exc = PyObject_CallFunction(st->TaskTimeout, "s",
                                    "the task ran past task_timeout and did not return to the interpreter "
                                    "(stuck in C code): it is left to its thread, and the pool goes on without it");
        break;
    case IT_BROKEN:
        exc = broken_exc(core);
        break;
    default: /* IT_CANCELLED */
        if (t->by_future) {
            return; /* Future.cancel() is cancelling it */
        }
        f->cancel_hook = NULL;
        if (f->state == FUT_PENDING && braid_future_cancel(f) < 0) {
            PyErr_WriteUnraisable((PyObject *)f);
        }
        braid_future_notify_cancel(f);
        return;
    }
    if (obj == NULL && exc == NULL) {
        exc = PyErr_GetRaisedException(); /* the reply did not unpickle */
    }
    braid_future_settle(f, obj, exc);
    Py_XDECREF(obj);
    Py_XDECREF(exc);
}

void braid_ip_complete(itask_t *t)
{
    if (!__atomic_exchange_n(&t->settled, 1, __ATOMIC_ACQ_REL)) {
        braid_ip_settle(t);
    }
    braid_ip_task_free(t);
}

void braid_ip_mark_broken(interp_core_t *core, PyObject *why)
{
    if (core->broken == NULL) {
        core->broken = why;
        __atomic_store_n(&core->broken_flag, 1, __ATOMIC_RELEASE);
    } else {
        Py_DECREF(why);
    }
}

/* Future.cancel(): phase 0 takes the task off the queue if no worker has
 * it (1) or says it started (0); phase 1 tells waiters it is cancelled. */
static int cancel_hook(FutureObject *f, int phase)
{
    itask_t *t = f->hook_ctx;
    if (phase == 1) {
        braid_future_notify_cancel(f);
        return 1;
    }
    if (phase == 2) {
        /* running(): the future stays PENDING while a worker runs the task
         * (finishing it is the main interpreter's), t alive until then */
        return t != NULL && __atomic_load_n(&t->started, __ATOMIC_ACQUIRE);
    }
    if (t == NULL) {
        return 1;
    }
    t->by_future = 1;
    /* 0: done(-ECANCELED) ran here and freed t */
    if (br_threadpool_cancel(&t->core->tp, &t->work) == 0) {
        return 1;
    }
    t->by_future = 0;
    return 0;
}

/* --------------------------------------------------------- core life cycle */

static const braid_pool_ops_t interp_pool_ops;

#define LINKED_CORE(l) ((interp_core_t *)((char *)(l) - offsetof(interp_core_t, link)))

static void core_release(interp_core_t *core)
{
    braid_state *st = core->st;
    Py_CLEAR(core->setup);
    Py_CLEAR(core->broken);
    Py_CLEAR(core->fn_cache);
    braid_pools_release(st, &core->link);
}

void braid_ip_worker_gone(interp_core_t *core)
{
    core->threads_exited++;
    if (core->detached && core->threads_exited == br_threadpool_threads(&core->tp)) {
        core_release(core); /* the engine frees the core when this thread ends */
    }
}

static void core_destroy(interp_core_t *core)
{
    br_threadpool_destroy(&core->tp);
    braid_ipd_destroy(core);
    pthread_mutex_destroy(&core->mu);
    PyMem_RawFree(core);
}

static void core_detached(br_threadpool_t *tp)
{
    core_destroy((interp_core_t *)tp);
}

static void core_free(interp_core_t *core)
{
    braid_pools_unlink(&core->link);
    Py_CLEAR(core->setup);
    Py_CLEAR(core->broken);
    Py_CLEAR(core->fn_cache);
    core_destroy(core);
}

static void core_close(interp_core_t *core, int cancel)
{
    core->closed = 1;
    (void)br_threadpool_close(&core->tp, cancel ? BR_CLOSE_CANCEL : BR_CLOSE_DRAIN);
}

/* With the GIL; waits without it, interruptibly. 0 or -1. */
static int core_join(interp_core_t *core)
{
    if (core->joined) {
        return 0;
    }
    if (braid_iw_on_worker_of(core)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "shutdown(wait=True) called from a completion callback of the same pool would "
                        "wait for itself");
        return -1;
    }
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
        Py_BEGIN_ALLOW_THREADS
        rc = br_threadpool_join(&core->tp);
        Py_END_ALLOW_THREADS
        if (rc == 0) {
            core->joined = 1;
        }
    }
    core->joiners--;
    if (rc == -EINTR) {
        return -1;
    }
    if (rc < 0) {
        braid_raise_oserror(rc, "waiting for the interpreter pool's workers");
        return -1;
    }
    if (core->orphaned && core->joiners == 0) {
        core_free(core);
    }
    return 0;
}

/* pools.c's hooks. At interpreter exit, before the main interpreter goes:
 * every pool closes (after Ctrl-C its queued work is cancelled), then each
 * is waited for, so that every sub-interpreter has ended first. */
static void ops_close(braid_pool_link_t *l, int interrupted)
{
    interp_core_t *core = LINKED_CORE(l);
    if (!core->closed || interrupted) {
        core_close(core, interrupted);
    }
}

static void ops_interrupt(braid_pool_link_t *l)
{
    interp_core_t *core = LINKED_CORE(l);
    if (core->closed) { /* a dropped pool's too: linked, so not freed meanwhile */
        braid_iw_interrupt_all(core);
    }
}

static int ops_busy(braid_pool_link_t *l)
{
    interp_core_t *core = LINKED_CORE(l);
    return core->detached || (!core->joined && core->joiners == 0);
}

static int ops_wait(braid_pool_link_t *l)
{
    interp_core_t *core = LINKED_CORE(l);
    if (!core->detached) {
        return core_join(core);
    }
    return braid_pools_wait_released(core->st); /* a dropped pool: core_release wakes it */
}

static void ops_forked(braid_pool_link_t *l)
{
    /* no worker thread exists in the child and the engine's lock may be
     * held for ever: the pool is left a husk, its memory untouched */
    interp_core_t *core = LINKED_CORE(l);
    braid_pools_unlink(l);
    core->st = NULL;
}

static void ops_clear(braid_pool_link_t *l)
{
    /* the module is going away: its workers (at-exit was interrupted)
     * outlive it */
    interp_core_t *core = LINKED_CORE(l);
    braid_pools_unlink(l);
    core->st = NULL;
}

static const braid_pool_ops_t interp_pool_ops = {
    .close = ops_close, .busy = ops_busy, .wait = ops_wait, .forked = ops_forked, .clear = ops_clear,
    .interrupt = ops_interrupt};

unsigned braid_interppool_workers(braid_state *st)
{
    unsigned n = 0;
    for (braid_pool_link_t *l = st->pools; l != NULL; l = l->next) {
        if (l->ops == &interp_pool_ops) {
            interp_core_t *core = LINKED_CORE(l);
            n += br_threadpool_threads(&core->tp) - core->threads_exited;
        }
    }
    return n;
}

int braid_interppool_traverse(braid_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->interppool_core_type);
    Py_VISIT(st->ip_dumps_task);
    Py_VISIT(st->BrokenInterpreterPool);
    return 0;
}

void braid_interppool_clear(braid_state *st)
{
    Py_CLEAR(st->interppool_core_type);
    Py_CLEAR(st->ip_dumps_task);
    Py_CLEAR(st->BrokenInterpreterPool);
}

/* --------------------------------------------------------- submit */

static PyObject *ip_submit(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    interp_core_t *core = ((IPoolObject *)self)->core;
    if (braid_pool_check_made(self, core) < 0) {
        return NULL;
    }
    braid_state *st = core->st;
    if (core->broken != NULL) {
        PyObject *exc = broken_exc(core);
        if (exc != NULL) {
            PyErr_SetRaisedException(exc);
        }
        return NULL;
    }
    if (core->closed) {
        PyErr_SetString(PyExc_RuntimeError, "cannot schedule new futures after shutdown");
        return NULL;
    }
    if (__atomic_load_n(&core->done_head, __ATOMIC_RELAXED) != NULL) {
        braid_ipd_drain(core); /* we hold the GIL the workers' results wait for */
    }
    PyObject *fn, *tuple, *kwargs;
    if (braid_unpack_submit(args, nargs, kwnames, &fn, &tuple, &kwargs) < 0) {
        return NULL;
    }
    FutureObject *fut = braid_future_new(st);
    itask_t *t = fut ? PyMem_RawCalloc(1, sizeof *t) : NULL;
    if (t == NULL) {
        Py_DECREF(tuple);
        Py_XDECREF(kwargs);
        Py_XDECREF(fut);
        return fut ? PyErr_NoMemory() : NULL;
    }
    t->core = core;
    t->fut = (FutureObject *)Py_NewRef(fut);
    t->payload = braid_ip_dumps_task(core, t, fn, tuple, kwargs);
    Py_DECREF(tuple);
    Py_XDECREF(kwargs);
    if (t->payload == NULL) {
        /* an argument that cannot be pickled fails this task alone */
        PyObject *exc = PyErr_GetRaisedException();
        t->payload = Py_NewRef(Py_None);
        braid_ip_task_free(t);
        fut->state = FUT_RUNNING;
        (void)braid_future_finish(fut, NULL, exc);
        Py_XDECREF(exc);
        return (PyObject *)fut;
    }
    t->work.work = braid_iw_work;
    t->work.done = braid_iw_done;
    t->work.data = t;
    fut->cancel_hook = cancel_hook;
    fut->hook_ctx = t;
    fut->drain_hook = braid_ipd_drain_hook;
    fut->drain_ctx = core;
    int rc = br_threadpool_submit(&core->tp, &t->work);
    if (rc < 0) {
        braid_ip_task_free(t);
        fut->cancel_hook = NULL;
        fut->drain_hook = NULL;
        Py_DECREF(fut);
        if (rc == -ESHUTDOWN) {
            PyErr_SetString(PyExc_RuntimeError, "cannot schedule new futures after shutdown");
        } else {
            braid_raise_oserror(rc, "submitting to the interpreter pool");
        }
        return NULL;
    }
    return (PyObject *)fut;
}

static PyObject *ip_shutdown(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wait", "cancel_futures", NULL};
    int wait = 1, cancel = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p$p:shutdown", kwlist, &wait, &cancel)) {
        return NULL;
    }
    interp_core_t *core = ((IPoolObject *)self)->core;
    if (braid_pool_check_made(self, core) < 0) {
        return NULL;
    }
    if (core->st == NULL) {
        Py_RETURN_NONE; /* a fork's child: nothing here to wait for */
    }
    if (!core->closed || cancel) {
        core_close(core, cancel);
    }
    if (wait && core_join(core) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* After shutdown(): KeyboardInterrupt into every worker (a second Ctrl-C;
 * braid._pools.shutdown_on_exit), so that tasks running Python code end. */
static PyObject *ip_interrupt_running(PyObject *self, PyObject *unused)
{
    interp_core_t *core = ((IPoolObject *)self)->core;
    if (core == NULL || core->st == NULL || !core->closed) {
        PyErr_SetString(PyExc_RuntimeError, "only a pool that was shut down can be interrupted");
        return NULL;
    }
    braid_iw_interrupt_all(core);
    Py_RETURN_NONE;
}

static PyObject *ip_get_max_workers(PyObject *self, void *c)
{
    return PyLong_FromUnsignedLong(((IPoolObject *)self)->max_workers);
}

static PyObject *ip_get_threads(PyObject *self, void *c)
{
    interp_core_t *core = ((IPoolObject *)self)->core;
    return PyLong_FromUnsignedLong(core != NULL && core->st ? br_threadpool_threads(&core->tp) : 0);
}

static PyObject *ip_get_stuck(PyObject *self, void *c)
{
    interp_core_t *core = ((IPoolObject *)self)->core;
    return PyLong_FromUnsignedLong(core != NULL ? __atomic_load_n(&core->stuck, __ATOMIC_RELAXED) : 0);
}

/* --------------------------------------------------------- object life cycle */

static int ip_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_workers", "setup", "task_timeout", NULL};
    unsigned max_workers;
    PyObject *setup;
    double timeout = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "IO!|d:_InterpreterPoolCore", kwlist, &max_workers,
                                     &PyBytes_Type, &setup, &timeout)) {
        return -1;
    }
    IPoolObject *p = (IPoolObject *)self;
    if (p->core != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "InterpreterPool.__init__ called twice");
        return -1;
    }
    if (max_workers < 1 || max_workers > MAX_WORKERS_LIMIT) {
        PyErr_Format(PyExc_ValueError, "max_workers must be between 1 and %d", MAX_WORKERS_LIMIT);
        return -1;
    }
    PyObject *module = braid_module_from_type(Py_TYPE(self));
    if (module == NULL || braid_load_pools(module) < 0) {
        return -1;
    }
    braid_state *st = braid_get_state(module);
    if (st->ip_dumps_task == NULL || st->TaskTimeout == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "braid._interppool must be imported first");
        return -1;
    }
    interp_core_t *core = PyMem_RawCalloc(1, sizeof *core);
    if (core == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (pthread_mutex_init(&core->mu, NULL) != 0) {
        PyMem_RawFree(core);
        PyErr_NoMemory();
        return -1;
    }
    if (braid_ipd_init(core) < 0) {
        pthread_mutex_destroy(&core->mu);
        PyMem_RawFree(core);
        PyErr_NoMemory();
        return -1;
    }
    core->st = st;
    core->interp = PyInterpreterState_Get();
    core->setup = Py_NewRef(setup);
    core->timeout_ns = timeout > 0 ? (int64_t)(timeout * 1e9) : 0;
    br_threadpool_options_t opts = {
        .max_threads = max_workers,
        .name_prefix = "braid-interp",
        .spin_ns = 50000,
        .on_thread_start = braid_iw_thread_start,
        .on_thread_exit = braid_iw_thread_exit,
        .hook_arg = core,
    };
    int rc = br_threadpool_init(&core->tp, &opts);
    if (rc < 0) {
        Py_DECREF(core->setup);
        braid_ipd_destroy(core);
        pthread_mutex_destroy(&core->mu);
        PyMem_RawFree(core);
        braid_raise_oserror(rc, "creating the interpreter pool");
        return -1;
    }
    braid_pools_link(st, &core->link, &interp_pool_ops);
    p->core = core;
    p->max_workers = max_workers;
    return 0;
}

static void ip_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    IPoolObject *p = (IPoolObject *)self;
    interp_core_t *core = p->core;
    if (core != NULL) {
        p->core = NULL;
        core->orphaned = 1;
        if (core->st == NULL) {
            /* a fork's child (or the module went first): its memory is not ours */
        } else if (core->joined) {
            core_free(core);
        } else if (core->joiners == 0) {
            if (!core->closed) {
                core_close(core, 0);
            }
            core->detached = 1;
            if (core->threads_exited == br_threadpool_threads(&core->tp)) {
                core_release(core);
            }
            if (br_threadpool_detach(&core->tp, core_detached) < 0) {
                PyErr_SetString(PyExc_SystemError, "braid: detaching a dropped interpreter pool failed");
                PyErr_WriteUnraisable(NULL);
            }
        }
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef ip_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))ip_submit, METH_FASTCALL | METH_KEYWORDS,
     "submit(fn, /, *args, **kwargs) -> Future: runs fn(*args, **kwargs) in a sub-interpreter."},
    {"shutdown", (PyCFunction)(void (*)(void))ip_shutdown, METH_VARARGS | METH_KEYWORDS,
     "shutdown(wait=True, *, cancel_futures=False)"},
    {"_interrupt_running", ip_interrupt_running, METH_NOARGS,
     "_interrupt_running(): after shutdown, KeyboardInterrupt into the tasks still running"},
    {NULL}};

static PyGetSetDef ip_getset[] = {
    {"max_workers", ip_get_max_workers, NULL, "the most workers (sub-interpreters) this pool starts", NULL},
    {"_max_workers", ip_get_max_workers, NULL, "as ThreadPoolExecutor._max_workers", NULL},
    {"threads", ip_get_threads, NULL, "worker threads started so far", NULL},
    {"stuck", ip_get_stuck, NULL, "workers written off to a task stuck in C past task_timeout", NULL},
    {NULL}};

static PyType_Slot ip_slots[] = {
    {Py_tp_dealloc, ip_dealloc},
    {Py_tp_init, ip_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_methods, ip_methods},
    {Py_tp_getset, ip_getset},
    {Py_tp_doc, "The C half of braid.InterpreterPool."},
    {0, NULL}};

static PyType_Spec ip_spec = {
    .name = "braid._braid._InterpreterPoolCore",
    .basicsize = sizeof(IPoolObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = ip_slots,
};

int braid_interppool_init_types(PyObject *module, braid_state *st)
{
    st->interppool_core_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &ip_spec, NULL);
    if (st->interppool_core_type == NULL) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "_InterpreterPoolCore", (PyObject *)st->interppool_core_type);
}

#else /* Python 3.11: no interpreter with its own GIL */

unsigned braid_interppool_workers(braid_state *st) { return 0; }
int braid_interppool_init_types(PyObject *module, braid_state *st) { return 0; }
int braid_interppool_traverse(braid_state *st, visitproc visit, void *arg) { return 0; }
void braid_interppool_clear(braid_state *st) {}

#endif
