/*
 * future.c — braid's Future: a concurrent.futures.Future whose state lives
 * in C.
 *
 * The stdlib future pays for a threading.Condition (a lock and a list) on
 * every construction and takes that lock on every state query. Here the
 * state is an int guarded by the GIL and blocking waits sleep on a futex
 * (br_event_t) with the GIL released. The Python-visible class has
 * concurrent.futures.Future as a second base, so isinstance checks, wait(),
 * as_completed(), asyncio.wrap_future() and run_in_executor() accept it.
 *
 * wait() and as_completed() reach into private attributes (_condition,
 * _state, _waiters). They are provided as getters; _condition is made on
 * first use, and from then on every state change of that future takes it,
 * exactly as the stdlib does, so a waiter installed under the condition
 * never misses a completion.
 *
 *   PENDING --run--> RUNNING --finish--> FINISHED
 *      |
 *      +--cancel--> CANCELLED --notify_cancel--> CANCELLED_AND_NOTIFIED
 */
#include "braidpy.h"
#include "compat.h"

#include <errno.h>
#include <sched.h>
#include <unistd.h>

#define IS_DONE(s) ((s) >= FUT_CANCELLED)
#define IS_CANCELLED(s) ((s) == FUT_CANCELLED || (s) == FUT_CANCELLED_AND_NOTIFIED)

static braid_state *fut_state_of(FutureObject *f)
{
    return braid_state_from_type(Py_TYPE(f));
}

/* --------------------------------------------------------- condition */

/* Takes f->condition if it exists: 1 held, 0 no condition. An error taking
 * it is reported as unraisable: a completion must not be lost over it. */
static int cond_acquire(FutureObject *f)
{
    if (f->condition == NULL) {
        return 0;
    }
    PyObject *r = PyObject_CallMethod(f->condition, "acquire", NULL);
    if (r == NULL) {
        PyErr_WriteUnraisable((PyObject *)f);
        return 0;
    }
    Py_DECREF(r);
    return 1;
}

static void cond_release(FutureObject *f, int held, int notify)
{
    if (!held) {
        return;
    }
    PyObject *exc = PyErr_GetRaisedException();
    if (notify) {
        PyObject *r = PyObject_CallMethod(f->condition, "notify_all", NULL);
        if (r == NULL) {
            PyErr_WriteUnraisable((PyObject *)f);
        }
        Py_XDECREF(r);
    }
    PyObject *r = PyObject_CallMethod(f->condition, "release", NULL);
    if (r == NULL) {
        PyErr_WriteUnraisable((PyObject *)f);
    }
    Py_XDECREF(r);
    PyErr_SetRaisedException(exc);
}

/* Tells each concurrent.futures waiter (installed by wait/as_completed). */
static void tell_waiters(FutureObject *f, const char *method)
{
    if (f->waiters == NULL || PyList_GET_SIZE(f->waiters) == 0) {
        return;
    }
    PyObject *snapshot = PyList_GetSlice(f->waiters, 0, PY_SSIZE_T_MAX);
    if (snapshot == NULL) {
        PyErr_WriteUnraisable((PyObject *)f);
        return;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(snapshot); i++) {
        PyObject *r = PyObject_CallMethod(PyList_GET_ITEM(snapshot, i), method, "O", f);
        if (r == NULL) {
            PyErr_WriteUnraisable((PyObject *)f);
        }
        Py_XDECREF(r);
    }
    Py_DECREF(snapshot);
}

/* --------------------------------------------------------- callbacks */

/* Calls fn(f); an Exception is logged as the stdlib does, anything else
 * (KeyboardInterrupt, SystemExit) propagates: -1. */
static int call_callback(FutureObject *f, PyObject *fn)
{
    PyObject *r = PyObject_CallOneArg(fn, (PyObject *)f);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *exc = PyErr_GetRaisedException();
    braid_state *st = fut_state_of(f);
    PyObject *kw = Py_BuildValue("{s:O}", "exc_info", exc);
    PyObject *args = Py_BuildValue("(sO)", "exception calling callback for %r", f);
    PyObject *meth = PyObject_GetAttrString(st->logger, "error");
    r = (kw && args && meth) ? PyObject_Call(meth, args, kw) : NULL;
    if (r == NULL) {
        PyErr_WriteUnraisable((PyObject *)f);
    }
    Py_XDECREF(r);
    Py_XDECREF(meth);
    Py_XDECREF(args);
    Py_XDECREF(kw);
    Py_DECREF(exc);
    return 0;
}

static int run_callbacks(FutureObject *f)
{
    PyObject *cbs = f->callbacks;
    if (cbs == NULL) {
        return 0;
    }
    f->callbacks = NULL; /* done: later add_done_callback calls at once */
    int rc = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(cbs); i++) {
        if (call_callback(f, PyList_GET_ITEM(cbs, i)) < 0) {
            rc = -1;
            break;
        }
    }
    Py_DECREF(cbs);
    return rc;
}

/* --------------------------------------------------------- transitions */

static PyObject *invalid_state(FutureObject *f)
{
    braid_state *st = fut_state_of(f);
    PyErr_Format(st->InvalidStateError, "%U: %R", st->state_names[f->state], (PyObject *)f);
    return NULL;
}

int braid_future_finish(FutureObject *f, PyObject *result, PyObject *exc)
{
    int held = cond_acquire(f);
    if (IS_DONE(f->state)) {
        cond_release(f, held, 0);
        invalid_state(f);
        return -1;
    }
    Py_XSETREF(f->result, Py_XNewRef(result));
    Py_XSETREF(f->exc, Py_XNewRef(exc));
    f->state = FUT_FINISHED;
    tell_waiters(f, exc ? "add_exception" : "add_result");
    cond_release(f, held, 1);
    br_event_set(&f->done_ev);
    return run_callbacks(f);
}

void braid_future_settle(FutureObject *f, PyObject *result, PyObject *exc)
{
    /* a future cancelled or finished meanwhile keeps what it has */
    if (f->state == FUT_PENDING || f->state == FUT_RUNNING) {
        f->state = FUT_RUNNING;
        if (braid_future_finish(f, result, exc) < 0) {
            PyErr_WriteUnraisable((PyObject *)f);
        }
    }
}

/* PENDING -> CANCELLED: 1 done now, 2 was already cancelled, 0 cannot
 * (running or finished). Wakes result() waiters; runs no callback. */
static int mark_cancelled(FutureObject *f)
{
    if (f->state == FUT_RUNNING || f->state == FUT_FINISHED) {
        return 0;
    }
    if (IS_CANCELLED(f->state)) {
        return 2;
    }
    int held = cond_acquire(f);
    int rc = 1;
    if (f->state == FUT_PENDING) {
        f->state = FUT_CANCELLED;
    } else {
        rc = IS_CANCELLED(f->state) ? 2 : 0; /* changed while we took the lock */
    }
    cond_release(f, held, rc == 1);
    if (rc == 1) {
        br_event_set(&f->done_ev);
    }
    return rc;
}

int braid_future_notify_cancel(FutureObject *f)
{
    int held = cond_acquire(f);
    if (f->state == FUT_CANCELLED) {
        f->state = FUT_CANCELLED_AND_NOTIFIED;
        tell_waiters(f, "add_cancelled");
    }
    cond_release(f, held, 0);
    return 0;
}

/* Drops what the work item holds: the callable and its arguments. */
static void clear_work(FutureObject *f)
{
    Py_CLEAR(f->fn);
    Py_CLEAR(f->args);
    Py_CLEAR(f->kwargs);
}

void braid_future_work_cancelled(FutureObject *f)
{
    f->pool = NULL;
    int newly = mark_cancelled(f) == 1;
    braid_future_notify_cancel(f);
    clear_work(f);
    if (newly && run_callbacks(f) < 0) {
        PyErr_WriteUnraisable((PyObject *)f);
    }
    Py_DECREF(f);
}

int braid_future_cancel(FutureObject *f)
{
    if (f->cancel_hook != NULL && f->state == FUT_PENDING && !f->cancel_hook(f, 0)) {
        f->state = FUT_RUNNING; /* it started before we could stop it */
        return 0;
    }
    int rc = mark_cancelled(f);
    if (rc != 1) {
        return rc != 0;
    }
    if (f->pool != NULL) {
        braid_pool_cancel_work(f->pool, &f->work);
    } else if (f->cancel_hook != NULL) {
        f->cancel_hook(f, 1);
    }
    return run_callbacks(f) < 0 ? -1 : 1;
}

/* --------------------------------------------------------- waiting */

/* done_ev set early by the pool (drain_hook's comment): finish what is
 * ready. 1 if the future was in that state. */
static int drain_early(FutureObject *f)
{
    if (f->drain_hook == NULL || IS_DONE(f->state) || !br_event_is_set(&f->done_ev)) {
        return 0;
    }
    (void)f->drain_hook(f->drain_ctx, 0);
    if (!IS_DONE(f->state)) {
        /* not on the pool's list yet after all: let its thread get there */
        Py_BEGIN_ALLOW_THREADS
        usleep(50);
        Py_END_ALLOW_THREADS
    }
    return 1;
}

#define HOOKED_SPIN_NS 20000

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Without the GIL: polls the event for up to HOOKED_SPIN_NS (or `left`). */
static void spin_for(br_event_t *ev, int64_t left)
{
    int64_t span = left >= 0 && left < HOOKED_SPIN_NS ? left : HOOKED_SPIN_NS;
    int64_t end = br_now_ns() + span;
    for (unsigned i = 1; !br_event_is_set(ev); i++) {
        if (i % 64 == 0) {
            if (br_now_ns() >= end) {
                return;
            }
            /* on a busy machine the thread we wait for may need this core */
            sched_yield();
        }
        cpu_relax();
    }
}

/* With the GIL: polls the event for a moment before the GIL is let go. A
 * round trip through an idle worker that does not need this GIL takes
 * about a microsecond, and releasing and taking back the GIL is a good
 * part of that; no other thread waits long for the GIL meanwhile. 1 if
 * the event was set. */
#define HELD_SPIN_ROUNDS 64

static int held_spin(br_event_t *ev)
{
    for (unsigned i = 0; i < HELD_SPIN_ROUNDS; i++) {
        if (br_event_is_set(ev)) {
            return 1;
        }
        cpu_relax();
    }
    return 0;
}

int braid_future_wait(FutureObject *f, int64_t deadline_ns)
{
    while (!IS_DONE(f->state)) {
        if (drain_early(f)) {
            continue;
        }
        int64_t left = -1;
        if (deadline_ns >= 0) {
            left = deadline_ns - br_now_ns();
            if (left <= 0) {
                PyErr_SetNone(PyExc_TimeoutError);
                return -1;
            }
        }
        int rc;
        int spin = f->drain_hook != NULL && f->drain_hook(f->drain_ctx, 1);
        if (f->drain_hook != NULL) {
            /* the pool's worker sees this and wakes us rather than finishing
             * the future itself (it would wait for the GIL we are about to
             * take back); when the pool says so we spin a moment first: a
             * lone task's result comes within microseconds, and a futex
             * sleep and wakeup cost more than that */
            __atomic_store_n(&f->waiting, 1, __ATOMIC_SEQ_CST);
        }
        if (spin && held_spin(&f->done_ev)) {
            rc = 0;
        } else {
            Py_BEGIN_ALLOW_THREADS
            if (spin) {
                spin_for(&f->done_ev, left);
            }
            rc = br_event_wait(&f->done_ev, left);
            Py_END_ALLOW_THREADS
        }
        if (f->drain_hook != NULL) {
            __atomic_store_n(&f->waiting, 0, __ATOMIC_SEQ_CST);
        }
        if (rc == -EINTR && PyErr_CheckSignals() < 0) {
            PyObject *exc = PyErr_GetRaisedException();
            drain_early(f); /* a result made ready meanwhile is not left behind */
            PyErr_SetRaisedException(exc);
            return -1;
        }
        /* -ETIMEDOUT is judged by the deadline at the top of the loop. */
    }
    return 0;
}

PyObject *braid_future_get_result(FutureObject *f)
{
    if (IS_CANCELLED(f->state)) {
        PyErr_SetNone(fut_state_of(f)->CancelledError);
        return NULL;
    }
    if (f->exc != NULL) {
        PyErr_SetRaisedException(Py_NewRef(f->exc));
        return NULL;
    }
    return Py_NewRef(f->result ? f->result : Py_None);
}

int braid_parse_seconds(PyObject *o, const char *what, const char *expected, double *out)
{
    *out = PyFloat_AsDouble(o);
    if (*out == -1.0 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "%s must be %s, not %.100s", what, expected, Py_TYPE(o)->tp_name);
        return -1;
    }
    if (*out != *out) {
        PyErr_Format(PyExc_ValueError, "%s must not be NaN", what);
        return -1;
    }
    return 0;
}

int braid_parse_timeout(PyObject *timeout, int64_t *deadline)
{
    *deadline = -1;
    if (timeout == NULL || timeout == Py_None) {
        return 0;
    }
    double t;
    if (braid_parse_seconds(timeout, "timeout", "a number or None", &t) < 0) {
        return -1;
    }
    if (t < 0) {
        t = 0;
    }
    if (t > 1e9) {
        return 0; /* longer than any process lives: no limit */
    }
    *deadline = br_now_ns() + (int64_t)(t * 1e9);
    return 0;
}

/* --------------------------------------------------------- Python methods */

static PyObject *fut_result(FutureObject *f, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    if ((PyTuple_GET_SIZE(args) != 0 || kwds != NULL) &&
        !PyArg_ParseTupleAndKeywords(args, kwds, "|O:result", kwlist, &timeout)) {
        return NULL;
    }
    if (!IS_DONE(f->state)) {
        int64_t deadline;
        if (braid_parse_timeout(timeout, &deadline) < 0 || braid_future_wait(f, deadline) < 0) {
            return NULL;
        }
    }
    return braid_future_get_result(f);
}

static PyObject *fut_exception(FutureObject *f, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:exception", kwlist, &timeout)) {
        return NULL;
    }
    if (!IS_DONE(f->state)) {
        int64_t deadline;
        if (braid_parse_timeout(timeout, &deadline) < 0 || braid_future_wait(f, deadline) < 0) {
            return NULL;
        }
    }
    if (IS_CANCELLED(f->state)) {
        PyErr_SetNone(fut_state_of(f)->CancelledError);
        return NULL;
    }
    return Py_NewRef(f->exc ? f->exc : Py_None);
}

static PyObject *fut_cancel(FutureObject *f, PyObject *unused)
{
    int rc = braid_future_cancel(f);
    return rc < 0 ? NULL : PyBool_FromLong(rc);
}

static PyObject *fut_cancelled(FutureObject *f, PyObject *unused)
{
    return PyBool_FromLong(IS_CANCELLED(f->state));
}

static PyObject *fut_running(FutureObject *f, PyObject *unused)
{
    if (f->state == FUT_PENDING && f->cancel_hook != NULL) {
        return PyBool_FromLong(f->cancel_hook(f, 2) == 1);
    }
    return PyBool_FromLong(f->state == FUT_RUNNING);
}

static PyObject *fut_done(FutureObject *f, PyObject *unused)
{
    return PyBool_FromLong(IS_DONE(f->state));
}

static PyObject *fut_add_done_callback(FutureObject *f, PyObject *fn)
{
    if (!IS_DONE(f->state)) {
        if (f->callbacks == NULL && (f->callbacks = PyList_New(0)) == NULL) {
            return NULL;
        }
        if (PyList_Append(f->callbacks, fn) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (call_callback(f, fn) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *fut_set_running_or_notify_cancel(FutureObject *f, PyObject *unused)
{
    if (f->state == FUT_CANCELLED) {
        braid_future_notify_cancel(f);
        Py_RETURN_FALSE;
    }
    if (f->state == FUT_PENDING) {
        f->state = FUT_RUNNING;
        Py_RETURN_TRUE;
    }
    PyErr_SetString(PyExc_RuntimeError, "Future in unexpected state");
    return NULL;
}

static PyObject *fut_set_result(FutureObject *f, PyObject *result)
{
    return braid_future_finish(f, result, NULL) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *fut_set_exception(FutureObject *f, PyObject *exc)
{
    if (PyExceptionClass_Check(exc)) {
        /* the stdlib stores what it is given; an instance is more useful */
        PyObject *inst = PyObject_CallNoArgs(exc);
        if (inst == NULL) {
            return NULL;
        }
        int rc = braid_future_finish(f, NULL, inst);
        Py_DECREF(inst);
        return rc < 0 ? NULL : Py_NewRef(Py_None);
    }
    if (!PyExceptionInstance_Check(exc)) {
        PyErr_Format(PyExc_TypeError, "set_exception() needs an exception, not %.100s",
                     Py_TYPE(exc)->tp_name);
        return NULL;
    }
    return braid_future_finish(f, NULL, exc) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *fut_repr(FutureObject *f)
{
    static const char *desc[] = {"pending", "running", "cancelled", "cancelled", "finished"};
    const char *name = Py_TYPE(f)->tp_name;
    if (f->state == FUT_FINISHED) {
        PyObject *what = f->exc ? f->exc : (f->result ? f->result : Py_None);
        return PyUnicode_FromFormat("<%s at %p state=%s %s %s>", name, f, desc[f->state],
                                    f->exc ? "raised" : "returned", Py_TYPE(what)->tp_name);
    }
    return PyUnicode_FromFormat("<%s at %p state=%s>", name, f, desc[f->state]);
}

/* --------------------------------------------------------- stdlib-private view */

static PyObject *get_state(FutureObject *f, void *c)
{
    return Py_NewRef(fut_state_of(f)->state_names[f->state]);
}

static PyObject *get_condition(FutureObject *f, void *c)
{
    if (f->condition == NULL) {
        /* threading.Condition() runs Python code: another thread may make
         * one meanwhile, and every waiter must share the first one */
        PyObject *cond = PyObject_CallNoArgs(fut_state_of(f)->Condition);
        if (cond == NULL) {
            return NULL;
        }
        if (f->condition == NULL) {
            f->condition = cond;
        } else {
            Py_DECREF(cond);
        }
    }
    return Py_NewRef(f->condition);
}

static PyObject *get_waiters(FutureObject *f, void *c)
{
    if (f->waiters == NULL) {
        f->waiters = PyList_New(0);
    }
    return Py_XNewRef(f->waiters);
}

static PyObject *get_result_attr(FutureObject *f, void *c)
{
    return Py_NewRef(f->result ? f->result : Py_None);
}

static PyObject *get_exception_attr(FutureObject *f, void *c)
{
    return Py_NewRef(f->exc ? f->exc : Py_None);
}

static PyObject *get_done_callbacks(FutureObject *f, void *c)
{
    if (f->callbacks == NULL) {
        return PyList_New(0);
    }
    return Py_NewRef(f->callbacks);
}

static PyGetSetDef fut_getset[] = {
    {"_state", (getter)get_state, NULL, "state, spelled as concurrent.futures does", NULL},
    {"_condition", (getter)get_condition, NULL, "made on first use, for wait()/as_completed()", NULL},
    {"_waiters", (getter)get_waiters, NULL, NULL, NULL},
    {"_result", (getter)get_result_attr, NULL, NULL, NULL},
    {"_exception", (getter)get_exception_attr, NULL, NULL, NULL},
    {"_done_callbacks", (getter)get_done_callbacks, NULL, NULL, NULL},
    {NULL}};

static PyMethodDef fut_methods[] = {
    {"result", (PyCFunction)(void (*)(void))fut_result, METH_VARARGS | METH_KEYWORDS,
     "result(timeout=None): the call's return value; raises its exception, CancelledError or TimeoutError."},
    {"exception", (PyCFunction)(void (*)(void))fut_exception, METH_VARARGS | METH_KEYWORDS,
     "exception(timeout=None): the call's exception or None."},
    {"cancel", (PyCFunction)fut_cancel, METH_NOARGS, "Cancels if not yet running; True if cancelled."},
    {"cancelled", (PyCFunction)fut_cancelled, METH_NOARGS, NULL},
    {"running", (PyCFunction)fut_running, METH_NOARGS, NULL},
    {"done", (PyCFunction)fut_done, METH_NOARGS, NULL},
    {"add_done_callback", (PyCFunction)fut_add_done_callback, METH_O, NULL},
    {"set_running_or_notify_cancel", (PyCFunction)fut_set_running_or_notify_cancel, METH_NOARGS, NULL},
    {"set_result", (PyCFunction)fut_set_result, METH_O, NULL},
    {"set_exception", (PyCFunction)fut_set_exception, METH_O, NULL},
    {NULL}};

/* --------------------------------------------------------- life cycle */

static void fut_setup(FutureObject *f)
{
    br_event_init(&f->done_ev);
    f->state = FUT_PENDING;
    f->work.work = NULL; /* both set by the pool */
    f->work.done = NULL;
    f->work.data = f;
}

FutureObject *braid_future_new(braid_state *st)
{
    if (st->future_type == NULL) { /* a pool's __init__ loads it first */
        PyErr_SetString(PyExc_RuntimeError, "braid: futures used before braid_load_pools");
        return NULL;
    }
    FutureObject *f = (FutureObject *)st->future_type->tp_alloc(st->future_type, 0);
    if (f != NULL) {
        fut_setup(f);
    }
    return f;
}

static int fut_init(FutureObject *f, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Future() takes no arguments");
        return -1;
    }
    if (f->state != FUT_PENDING || f->pool != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Future.__init__ called twice");
        return -1;
    }
    PyObject *module = braid_module_from_type(Py_TYPE(f));
    if (module == NULL || braid_load_pools(module) < 0) { /* _FutureCore() made directly */
        return -1;
    }
    fut_setup(f);
    return 0;
}

static int fut_traverse(FutureObject *f, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(f));
    Py_VISIT(f->result);
    Py_VISIT(f->exc);
    Py_VISIT(f->callbacks);
    Py_VISIT(f->condition);
    Py_VISIT(f->waiters);
    Py_VISIT(f->fn);
    Py_VISIT(f->args);
    Py_VISIT(f->kwargs);
    return 0;
}

static int fut_clear(FutureObject *f)
{
    Py_CLEAR(f->result);
    Py_CLEAR(f->exc);
    Py_CLEAR(f->callbacks);
    Py_CLEAR(f->condition);
    Py_CLEAR(f->waiters);
    clear_work(f);
    return 0;
}

static void fut_dealloc(FutureObject *f)
{
    PyTypeObject *tp = Py_TYPE(f);
    PyObject_GC_UnTrack(f);
    fut_clear(f);
    tp->tp_free(f);
    Py_DECREF(tp);
}

static PyType_Slot fut_slots[] = {
    {Py_tp_dealloc, fut_dealloc},
    {Py_tp_traverse, fut_traverse},
    {Py_tp_clear, fut_clear},
    {Py_tp_init, fut_init},
    {Py_tp_repr, fut_repr},
    {Py_tp_methods, fut_methods},
    {Py_tp_getset, fut_getset},
    {Py_tp_doc, "The C layout of braid.Future; use Future."},
    {0, NULL}};

static PyType_Spec fut_spec = {
    .name = "braid._braid._FutureCore",
    .basicsize = sizeof(FutureObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = fut_slots,
};

int braid_future_init_core_type(PyObject *module, braid_state *st)
{
    st->future_core_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &fut_spec, NULL);
    return st->future_core_type != NULL ? 0 : -1;
}

/* Called by braid_load_pools, once concurrent.futures may be imported. */
int braid_future_init_types(PyObject *module, braid_state *st)
{
    /* Future = type("Future", (_FutureCore, concurrent.futures.Future), ns) */
    PyObject *cf = PyImport_ImportModule("concurrent.futures");
    if (cf == NULL) {
        return -1;
    }
    PyObject *cf_future = PyObject_GetAttrString(cf, "Future");
    Py_DECREF(cf);
    if (cf_future == NULL) {
        return -1;
    }
    PyObject *ns = Py_BuildValue(
        "{s:s,s:s,s:()}", "__module__", "braid",
        "__doc__",
        "A concurrent.futures.Future whose state and waits are in C. "
        "Returned by braid.ThreadPool.submit; may also be made directly.",
        "__slots__");
    PyObject *bases = PyTuple_Pack(2, (PyObject *)st->future_core_type, cf_future);
    Py_DECREF(cf_future);
    PyObject *tp = NULL;
    if (ns != NULL && bases != NULL) {
        tp = PyObject_CallFunction((PyObject *)&PyType_Type, "sOO", "Future", bases, ns);
    }
    Py_XDECREF(ns);
    Py_XDECREF(bases);
    if (tp == NULL) {
        return -1;
    }
    st->future_type = (PyTypeObject *)tp;
    return PyModule_AddObjectRef(module, "Future", tp);
}
