/*
 * interpworker.c — the worker side of braid.InterpreterPool: engine threads
 * that each own a sub-interpreter with its own GIL (PEP 684).
 *
 * The pool is the engine's br_threadpool_t (no scheduler of its own): its
 * on_thread_start hook makes the thread's sub-interpreter, on_thread_exit
 * ends it. A task is bytes (the pickled call) plus the future it completes.
 *
 * A worker thread has two thread states: one of the sub-interpreter, in
 * which it unpickles and runs tasks and pickles their outcome, and one of
 * the main interpreter, in which it may deliver results (interpdeliver.c
 * says who finishes the futures, and why). It never holds both GILs: it
 * lets the sub-interpreter's go before it takes the main one. A worker that
 * wakes takes its own GIL once and runs every task it finds queued
 * (br_threadpool_try_take) before it lets it go; after a result that woke
 * its waiter, it polls a moment for that waiter's next task without it
 * (braid_iw_done).
 *
 * Worker life cycle (one per engine thread):
 *
 *   on_thread_start: main tstate --Py_NewInterpreterFromConfig--> READY
 *        |                 (fails: the worker fails every task it takes)
 *        +-- initializer raises: the pool is marked broken
 *   READY --task--> RUNNING (sub GIL) --queue empty--> delivers (main GIL)
 *   --> READY ... --pool closed, queue empty--> on_thread_exit:
 *   the watchdog joined, Py_EndInterpreter, main tstate deleted
 *
 * task_timeout: each worker then has a watchdog thread (interpwatch.c),
 * which throws an interrupt into a task past its deadline and replaces a
 * worker stuck in C code.
 */
#include "interppool.h"

#ifdef BRAID_HAVE_INTERPRETERS
#include "compat.h"

#include <marshal.h>

#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>

/* One sub-interpreter made or ended at a time in the process. CPython
 * hands out the version tags of immutable types (its attribute cache's
 * keys) from one counter shared by every interpreter, bumped without an
 * atomic in 3.12 and 3.13.0 (CPython gh-116909): two interpreters that
 * start at once can give two types of one interpreter the same tag, and
 * a lookup on one then finds the other's attribute ("descriptor 'close'
 * for '_io.BufferedReader' objects doesn't apply to a '_io.FileIO'
 * object", seen while two workers of a fresh pool started). A new
 * interpreter tags most of its types while it starts and imports the
 * unpickler, so those steps run under this lock; the user's initializer
 * and tasks do not (README.md says so). A process-wide static: what it
 * guards is process-wide. */
static pthread_mutex_t creation_mu = PTHREAD_MUTEX_INITIALIZER;

static _Thread_local iworker_t *tls_worker;
static _Thread_local int tls_in_sub;   /* this thread holds its sub-interpreter's GIL */
static _Thread_local int tls_looping;  /* inside the loop of braid_iw_done */
static _Thread_local int tls_undelivered; /* a result no waiter was woken for */
static _Thread_local int tls_expecting; /* counted as polling the queue (expect_work) */

int braid_iw_on_worker_of(interp_core_t *core)
{
    return tls_worker != NULL && tls_worker->core == core;
}

/* --------------------------------------------------------- in the sub-interpreter */

/* braid._interpworker's function `name`, importing it on first use. New ref. */
static PyObject *helper_fn(iworker_t *w, const char *name)
{
    if (w->helper == NULL && (w->helper = PyImport_ImportModule("braid._interpworker")) == NULL) {
        return NULL;
    }
    return PyObject_GetAttrString(w->helper, name);
}

static PyObject *call_helper(iworker_t *w, const char *name, PyObject *arg)
{
    PyObject *fn = helper_fn(w, name);
    PyObject *r = fn ? PyObject_CallOneArg(fn, arg) : NULL;
    Py_XDECREF(fn);
    return r;
}

/* Copies a bytes object into raw memory the main interpreter frees. */
static int take_reply(itask_t *t, PyObject *data)
{
    if (data == NULL || !PyBytes_Check(data)) {
        return -1;
    }
    size_t n = (size_t)PyBytes_GET_SIZE(data);
    t->reply = PyMem_RawMalloc(n ? n : 1);
    if (t->reply == NULL) {
        return -1;
    }
    memcpy(t->reply, PyBytes_AS_STRING(data), n);
    t->len = n;
    return 0;
}

/* The envelope of `exc` (steals it) as the task's reply; status IT_ERROR.
 * When even that fails the reply stays empty and the main interpreter
 * raises a RuntimeError in its place. */
static void reply_error(iworker_t *w, itask_t *t, PyObject *exc)
{
    t->status = IT_ERROR;
    PyObject *data = call_helper(w, "dump_exception", exc);
    if (take_reply(t, data) < 0) {
        PyErr_Clear();
        t->reply = NULL;
        t->len = 0;
    }
    Py_XDECREF(data);
    Py_DECREF(exc);
}

/* Views of the task's out-of-band buffers, read-only, over the main
 * interpreter's memory. */
static PyObject *make_views(itask_t *t)
{
    PyObject *list = PyList_New(t->nviews);
    for (int i = 0; list != NULL && i < t->nviews; i++) {
        PyObject *v = PyMemoryView_FromMemory(t->views[i].buf, t->views[i].len, PyBUF_READ);
        if (v == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

/* After the task: its views must not outlive it. One the task kept (stored
 * away, or exported to a further view) cannot be released: then the main
 * buffers stay held until this worker's interpreter ends. */
static void release_views(iworker_t *w, itask_t *t, PyObject *views)
{
    int kept = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(views); i++) {
        PyObject *v = PyList_GET_ITEM(views, i);
        if (Py_REFCNT(v) > 1) {
            kept = 1;
        }
        PyObject *r = PyObject_CallMethod(v, "release", NULL);
        if (r == NULL) {
            PyErr_Clear();
            kept = 1;
        }
        Py_XDECREF(r);
    }
    if (!kept) {
        return;
    }
    struct pinned_s *grown = PyMem_RawRealloc(w->pinned, (w->npinned + 1) * sizeof *grown);
    if (grown == NULL) {
        return; /* left with the task: released at completion, the risk taken */
    }
    w->pinned = grown;
    w->pinned[w->npinned].views = t->views;
    w->pinned[w->npinned++].n = t->nviews;
    t->views = NULL;
    t->nviews = 0;
}

/* None, a bool, an int of 64 bits or a float: stored in the task as it is
 * (1), or 0 to pickle the result. */
static int reply_value(itask_t *t, PyObject *res)
{
    if (res == Py_None) {
        t->value_kind = IV_NONE;
    } else if (PyBool_Check(res)) {
        t->value_kind = IV_BOOL;
        t->value.i = res == Py_True;
    } else if (PyLong_CheckExact(res)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(res, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        t->value_kind = IV_INT;
        t->value.i = v;
    } else if (PyFloat_CheckExact(res)) {
        t->value_kind = IV_FLOAT;
        t->value.d = PyFloat_AS_DOUBLE(res);
    } else {
        return 0;
    }
    return 1;
}

/* A plain task's function, by its id in the pool: unpickled from the
 * payload the first time, then found in w->fns (the last one without a
 * lookup). New ref. */
static PyObject *function_by_id(iworker_t *w, uint64_t id, const char *pickle, Py_ssize_t len)
{
    if (w->last_fn != NULL && w->last_fn_id == id) {
        return Py_NewRef(w->last_fn);
    }
    if (w->fns == NULL && (w->fns = PyDict_New()) == NULL) {
        return NULL;
    }
    PyObject *key = PyLong_FromUnsignedLongLong(id);
    if (key == NULL) {
        return NULL;
    }
    PyObject *f = PyDict_GetItemWithError(w->fns, key);
    if (f != NULL) {
        Py_INCREF(f);
    } else if (!PyErr_Occurred()) {
        PyObject *view = PyMemoryView_FromMemory((char *)pickle, len, PyBUF_READ);
        f = view ? PyObject_CallOneArg(w->loads, view) : NULL;
        Py_XDECREF(view);
        if (f != NULL && PyDict_GET_SIZE(w->fns) >= 256) {
            PyDict_Clear(w->fns);
        }
        if (f != NULL && PyDict_SetItem(w->fns, key, f) < 0) {
            Py_CLEAR(f);
        }
    }
    Py_DECREF(key);
    if (f != NULL) {
        Py_XSETREF(w->last_fn, Py_NewRef(f));
        w->last_fn_id = id;
    }
    return f;
}

/* A plain payload (interppayload.c, plain_payload): the function, its
 * arguments (new refs; *kwargs NULL for none). 0, or -1 with an exception. */
static int load_plain(iworker_t *w, const char *p, Py_ssize_t len, PyObject **fn,
                      PyObject **args, PyObject **kwargs)
{
    uint64_t id;
    uint32_t fl;
    memcpy(&id, p + 1, 8);
    memcpy(&fl, p + 9, 4);
    if ((Py_ssize_t)fl > len - IP_PLAIN_HEAD) {
        PyErr_SetString(PyExc_ValueError, "braid: a truncated task payload");
        return -1;
    }
    Py_ssize_t rest = len - IP_PLAIN_HEAD - (Py_ssize_t)fl;
    PyObject *pair = NULL;
    if (rest > 0) {
        pair = PyMarshal_ReadObjectFromString(p + IP_PLAIN_HEAD + fl, rest);
        if (pair == NULL) {
            return -1;
        }
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyTuple_Check(PyTuple_GET_ITEM(pair, 0)) ||
            (PyTuple_GET_ITEM(pair, 1) != Py_None && !PyDict_Check(PyTuple_GET_ITEM(pair, 1)))) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_ValueError, "braid: a malformed task payload");
            return -1;
        }
    }
    if ((*fn = function_by_id(w, id, p + IP_PLAIN_HEAD, fl)) == NULL) {
        Py_XDECREF(pair);
        return -1;
    }
    if (pair == NULL) {
        *args = PyTuple_New(0);
        *kwargs = NULL;
    } else {
        *args = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
        PyObject *kw = PyTuple_GET_ITEM(pair, 1);
        *kwargs = kw == Py_None ? NULL : Py_NewRef(kw);
        Py_DECREF(pair);
    }
    return 0;
}

/* A plain result in marshal's format, tagged. New bytes, or NULL. */
static PyObject *dump_plain(PyObject *res)
{
    PyObject *m = PyMarshal_WriteObjectToString(res, Py_MARSHAL_VERSION);
    if (m == NULL) {
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(m) + 1);
    if (out != NULL) {
        PyBytes_AS_STRING(out)[0] = IP_MARSHAL_TAG;
        memcpy(PyBytes_AS_STRING(out) + 1, PyBytes_AS_STRING(m), (size_t)PyBytes_GET_SIZE(m));
    }
    Py_DECREF(m);
    return out;
}

/* With the sub-interpreter's GIL: unpickle, call, pickle the outcome. */
static void run_task(iworker_t *w, itask_t *t)
{
    interp_core_t *core = w->core;
    if (__atomic_load_n(&core->broken_flag, __ATOMIC_ACQUIRE)) {
        t->status = IT_BROKEN;
        return;
    }
    if (core->timeout_ns > 0) {
        pthread_mutex_lock(&core->mu);
        w->current = t;
        w->seq++;
        w->interrupted = 0;
        w->deadline = br_now_ns() + core->timeout_ns;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&core->mu);
    }
    PyObject *views = t->nviews > 0 ? make_views(t) : NULL;
    const char *p = PyBytes_AS_STRING(t->payload);
    Py_ssize_t len = PyBytes_GET_SIZE(t->payload);
    PyObject *data = NULL, *call = NULL, *res = NULL, *exc = NULL;
    PyObject *fn = NULL, *args = NULL, *kwargs = NULL;
    if (len >= IP_PLAIN_HEAD && p[0] == IP_MARSHAL_TAG) {
        (void)load_plain(w, p, len, &fn, &args, &kwargs);
    } else if ((data = PyMemoryView_FromMemory((char *)p, len, PyBUF_READ)) != NULL &&
               (t->nviews == 0 || views != NULL)) {
        if (views != NULL) {
            PyObject *a = PyTuple_Pack(1, data);
            PyObject *kw = a ? Py_BuildValue("{s:O}", "buffers", views) : NULL;
            call = kw ? PyObject_Call(w->loads, a, kw) : NULL;
            Py_XDECREF(a);
            Py_XDECREF(kw);
        } else {
            call = PyObject_CallOneArg(w->loads, data);
        }
        /* PyObject_Call takes a dict or NULL for the keywords and does not check */
        if (call != NULL && PyTuple_Check(call) && PyTuple_GET_SIZE(call) == 3 &&
            PyTuple_Check(PyTuple_GET_ITEM(call, 1)) &&
            (PyTuple_GET_ITEM(call, 2) == Py_None || PyDict_Check(PyTuple_GET_ITEM(call, 2)))) {
            fn = Py_NewRef(PyTuple_GET_ITEM(call, 0));
            args = Py_NewRef(PyTuple_GET_ITEM(call, 1));
            PyObject *kw = PyTuple_GET_ITEM(call, 2);
            kwargs = kw == Py_None ? NULL : Py_NewRef(kw);
        } else if (call != NULL) {
            PyErr_SetString(PyExc_TypeError, "braid: a task payload is not (fn, args, kwargs)");
        }
    }
    if (fn != NULL && args != NULL) {
        res = PyObject_Call(fn, args, kwargs);
    }
    Py_XDECREF(fn);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    if (res == NULL) {
        exc = PyErr_GetRaisedException();
    }
    int interrupted = 0;
    if (core->timeout_ns > 0) {
        pthread_mutex_lock(&core->mu);
        interrupted = w->interrupted;
        w->current = NULL;
        if (interrupted) {
            pthread_cond_signal(&w->cv); /* the watchdog may wait for this task's end */
        }
        pthread_mutex_unlock(&core->mu);
        /* an interrupt thrown in just as the task returned must not hit the next one */
        PyThreadState_SetAsyncExc(w->ident, NULL);
    }
    Py_XDECREF(call);
    Py_XDECREF(data);
    if (interrupted && res == NULL) {
        t->status = IT_TIMEOUT;
        Py_XDECREF(exc);
    } else if (res != NULL && reply_value(t, res)) {
        t->status = IT_OK;
        Py_DECREF(res);
    } else if (res != NULL) {
        PyObject *out = braid_is_plain(res, 0) ? dump_plain(res) : call_helper(w, "dumps_result", res);
        Py_DECREF(res);
        t->status = IT_OK;
        if (take_reply(t, out) < 0) {
            Py_XDECREF(out);
            reply_error(w, t, PyErr_Occurred() ? PyErr_GetRaisedException()
                                               : PyObject_CallNoArgs(PyExc_MemoryError));
        } else {
            Py_DECREF(out);
        }
    } else {
        if (exc != NULL && PyErr_GivenExceptionMatches(exc, PyExc_ImportError)) {
            /* the function's module (or an argument's, or one the task imports)
             * cannot load here */
            PyObject *wrapped = call_helper(w, "import_failed", exc);
            if (wrapped != NULL) {
                Py_SETREF(exc, wrapped);
            } else {
                PyErr_Clear();
            }
        }
        if (exc == NULL) {
            PyErr_SetString(PyExc_SystemError, "braid: a task failed without an exception");
            exc = PyErr_GetRaisedException();
        }
        reply_error(w, t, exc);
    }
    if (views != NULL) {
        release_views(w, t, views);
        Py_DECREF(views);
    }
    if (PyErr_Occurred()) {
        PyErr_WriteUnraisable(NULL);
    }
}

/* --------------------------------------------------------- the engine's callbacks */

void braid_iw_work(br_work_t *wk)
{
    iworker_t *w = tls_worker;
    itask_t *t = wk->data;
    __atomic_store_n(&t->started, 1, __ATOMIC_RELEASE);
    if (w->sub_ts == NULL) {
        t->status = IT_BROKEN;
        return;
    }
    if (!tls_in_sub) {
        PyEval_RestoreThread(w->sub_ts);
        tls_in_sub = 1;
    }
    run_task(w, t);
}

/* Nothing else to run: gives the submitter a moment to reach result(), so
 * that the result wakes it (braid_ipd_push) rather than this thread taking
 * the main GIL the submitter holds until then, and the submitter then
 * waiting for it back. No one else sees the task yet: its future is alive. */
#define AWAIT_WAITER_NS 10000

/* How long a worker that woke a waiter polls for that waiter's next task
 * (its sub-interpreter's GIL let go meanwhile when another thread of that
 * interpreter may want it, kept otherwise: taking it back costs more than
 * the rest of a round trip). A round trip from Python is under 1 us. */
#define EXPECT_NEXT_NS 10000

/* 1 if a thread other than this worker has a thread state in its
 * sub-interpreter (a thread the task started, the watchdog's interrupter):
 * one that may be waiting for the GIL this worker holds. The list is read
 * without its lock: a thread state made just after this look waits at most
 * for the next one (every expected poll looks again). */
static int others_in_interpreter(iworker_t *w)
{
    PyThreadState *ts = PyInterpreterState_ThreadHead(PyThreadState_GetInterpreter(w->sub_ts));
    return ts != NULL && (ts != w->sub_ts || PyThreadState_Next(ts) != NULL);
}

/* 1 once the waiter waits, 0 if it did not come in time. */
static int await_waiter(itask_t *t)
{
    int64_t end = br_now_ns() + AWAIT_WAITER_NS;
    for (unsigned i = 1; !__atomic_load_n(&t->fut->waiting, __ATOMIC_ACQUIRE); i++) {
        if (i % 32 == 0) {
            if (br_now_ns() >= end) {
                return 0;
            }
            sched_yield(); /* the submitter may need this core to get there */
        }
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    return 1;
}

/* The engine's done callback. status 0: on the worker, after braid_iw_work;
 * the outermost call keeps taking queued tasks while it holds the
 * sub-interpreter's GIL, then delivers. When the result woke a waiter and
 * nothing is queued, the waiter is likely to submit its next task at once:
 * this worker then counts as polling for it (br_threadpool_expect_work,
 * before the waiter can see the result, so that submit wakes no other
 * worker) and polls a moment, its GIL let go. -ECANCELED: on the thread
 * that cancelled, with the main GIL. */
void braid_iw_done(br_work_t *wk, int status)
{
    itask_t *t = wk->data;
    if (status != 0) {
        t->status = IT_CANCELLED;
        braid_ip_complete(t);
        return;
    }
    iworker_t *w = tls_worker;
    interp_core_t *core = w->core;
    int busy = br_threadpool_queued(&core->tp) > 0;
    if (!busy && await_waiter(t) && !tls_expecting) {
        br_threadpool_expect_work(&core->tp);
        tls_expecting = 1;
    }
    if (!braid_ipd_push(core, t, busy)) {
        tls_undelivered = 1; /* nobody was woken to finish it */
    }
    if (tls_looping) {
        return;
    }
    tls_looping = 1;
    for (;;) {
        br_work_t *next;
        if (tls_expecting) {
            tls_expecting = 0;
            if (tls_in_sub && others_in_interpreter(w)) {
                PyEval_SaveThread();
                tls_in_sub = 0;
            }
            next = br_threadpool_take_expected(&core->tp, tls_undelivered ? 0 : EXPECT_NEXT_NS);
        } else {
            next = br_threadpool_try_take(&core->tp);
        }
        if (next == NULL) {
            break;
        }
        br_threadpool_run_taken(next);
    }
    tls_looping = 0;
    if (tls_in_sub) {
        PyEval_SaveThread();
        tls_in_sub = 0;
    }
    if (tls_undelivered) {
        tls_undelivered = 0;
        braid_ipd_deliver(core, w->main_ts);
    }
}

/* --------------------------------------------------------- worker life cycle */

/* In the new sub-interpreter: sys.path and the pickler, then the
 * initializer. NULL, or a message (raw memory) saying why the pool cannot
 * be used. */
/* What a worker needs before any task: the C unpickler and sys.path as
 * the pool's creator saw it. Returns the initializer (or None), new ref;
 * NULL with an exception set. */
static PyObject *setup_runtime(iworker_t *w)
{
    PyObject *m = PyImport_ImportModule("_pickle");
    if (m != NULL) {
        w->loads = PyObject_GetAttrString(m, "loads");
        Py_DECREF(m);
    }
    if (w->loads == NULL) {
        return NULL;
    }
    PyObject *setup = w->core->setup;
    PyObject *data = PyMemoryView_FromMemory(PyBytes_AS_STRING(setup), PyBytes_GET_SIZE(setup),
                                             PyBUF_READ);
    /* the path first: the initializer's module may need it */
    PyObject *path_and_rest = data ? PyObject_CallOneArg(w->loads, data) : NULL;
    Py_XDECREF(data);
    if (path_and_rest == NULL || !PyTuple_Check(path_and_rest) || PyTuple_GET_SIZE(path_and_rest) != 2 ||
        PySys_SetObject("path", PyTuple_GET_ITEM(path_and_rest, 0)) < 0) {
        if (path_and_rest != NULL && !PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "the pool's set-up data is not (path, initializer)");
        }
        Py_XDECREF(path_and_rest);
        return NULL;
    }
    PyObject *init = Py_NewRef(PyTuple_GET_ITEM(path_and_rest, 1));
    Py_DECREF(path_and_rest);
    return init;
}

/* The initializer and the timeout's exception, after setup_runtime. NULL
 * if all went well, else why (raw memory, "" if even that failed). */
static char *setup_sub(iworker_t *w, PyObject *init)
{
    char *why = NULL;
    if (init == NULL) {
        goto fail;
    }
    if (init != Py_None) {
        PyObject *r = call_helper(w, "run_initializer", init);
        if (r == NULL) {
            goto fail;
        }
        Py_DECREF(r);
    }
    if (w->core->timeout_ns > 0) {
        w->interrupt = PyErr_NewExceptionWithDoc(
            "braid._interpworker.TaskInterrupted",
            "Thrown into a task that ran past the pool's task_timeout.", PyExc_BaseException, NULL);
        if (w->interrupt == NULL) {
            goto fail;
        }
    }
    return NULL;
fail:;
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *text = exc ? call_helper(w, "describe", exc) : NULL;
    const char *s = text && PyUnicode_Check(text) ? PyUnicode_AsUTF8(text) : NULL;
    if (s == NULL) {
        PyErr_Clear();
        s = "a worker's set-up failed";
    }
    why = PyMem_RawMalloc(strlen(s) + 1);
    if (why != NULL) {
        strcpy(why, s);
    }
    Py_XDECREF(text);
    Py_XDECREF(exc);
    return why ? why : (char *)"";
}

void braid_iw_thread_start(br_threadpool_t *tp, void *arg)
{
    interp_core_t *core = arg;
    iworker_t *w = PyMem_RawCalloc(1, sizeof *w);
    if (w == NULL) {
        abort(); /* the engine gives a hook no way to fail */
    }
    w->core = core;
    tls_worker = w;
    /* Before the main GIL: a thread holding that never waits for this. */
    pthread_mutex_lock(&creation_mu);
    w->main_ts = PyThreadState_New(core->interp);
    PyEval_RestoreThread(w->main_ts);
    pthread_mutex_lock(&core->mu);
    w->next = core->workers;
    if (core->workers) {
        core->workers->prev = w;
    }
    core->workers = w;
    pthread_mutex_unlock(&core->mu);

    const PyInterpreterConfig config = {
        .use_main_obmalloc = 0,
        .allow_fork = 0,
        .allow_exec = 0,
        .allow_threads = 1,
        .allow_daemon_threads = 0,
        .check_multi_interp_extensions = 1,
        .gil = PyInterpreterConfig_OWN_GIL,
    };
    PyThreadState *sub = NULL;
    /* with the main GIL held; returns with the new interpreter's held and
     * the main one released */
    PyStatus status = Py_NewInterpreterFromConfig(&sub, &config);
    char *why = NULL;
    if (PyStatus_Exception(status) || sub == NULL) {
        /* back in the main interpreter, its GIL held */
        PyObject *msg = PyUnicode_FromFormat("could not create a sub-interpreter: %s",
                                             status.err_msg ? status.err_msg : "unknown error");
        if (msg == NULL) {
            PyErr_Clear();
            msg = Py_NewRef(Py_None);
        }
        braid_ip_mark_broken(core, msg);
        PyEval_SaveThread();
        pthread_mutex_unlock(&creation_mu);
        return;
    }
    w->sub_ts = sub;
    w->ident = PyThread_get_thread_ident();
    PyObject *init = setup_runtime(w);
    pthread_mutex_unlock(&creation_mu);
    why = setup_sub(w, init);
    Py_XDECREF(init);
    if (why == NULL && core->timeout_ns > 0 && braid_iw_start_watchdog(w) < 0) {
        why = PyMem_RawMalloc(64);
        if (why != NULL) {
            strcpy(why, "could not start a worker's watchdog thread");
        }
    }
    PyEval_SaveThread();
    if (why != NULL) {
        PyEval_RestoreThread(w->main_ts);
        PyObject *msg = PyUnicode_FromFormat("A worker's initializer failed (%s); the interpreter pool "
                                             "is not usable anymore", why);
        if (msg == NULL) {
            PyErr_Clear();
            msg = Py_NewRef(Py_None);
        }
        braid_ip_mark_broken(core, msg);
        PyEval_SaveThread();
        if (*why) {
            PyMem_RawFree(why);
        }
    }
}

/* 3.13's threading keeps the dummy Thread that current_thread() makes for
 * a thread it did not start (this worker's, once a task asked) in a
 * threading.local, with an object whose __del__ takes threading's lock;
 * Py_EndInterpreter clears the thread state only after the module's globals
 * are None ("Exception ignored ... TypeError" on stderr). Dropped here, with
 * the sub-interpreter's GIL, while the module is whole. */
static void forget_dummy_thread(void)
{
    PyObject *name = PyUnicode_FromString("threading");
    PyObject *threading = name ? PyImport_GetModule(name) : NULL;
    Py_XDECREF(name);
    PyObject *info = threading ? PyObject_GetAttrString(threading, "_thread_local_info") : NULL;
    PyObject *values = info ? PyObject_GetAttrString(info, "__dict__") : NULL;
    if (values != NULL && PyDict_Check(values)) {
        PyDict_Clear(values);
    }
    Py_XDECREF(values);
    Py_XDECREF(info);
    Py_XDECREF(threading);
    PyErr_Clear(); /* before 3.13 there is no such local; not imported: nothing to drop */
}

void braid_iw_thread_exit(br_threadpool_t *tp, void *arg)
{
    interp_core_t *core = arg;
    iworker_t *w = tls_worker;
    braid_iw_stop_watchdog(w);
    braid_iw_reap_interrupter(w);
    if (w->sub_ts != NULL) {
        pthread_mutex_lock(&creation_mu);
        PyEval_RestoreThread(w->sub_ts);
        PyThreadState_SetAsyncExc(w->ident, NULL); /* a Ctrl-C's, thrown after the last task */
        forget_dummy_thread();
        Py_CLEAR(w->loads);
        Py_CLEAR(w->helper);
        Py_CLEAR(w->fns);
        Py_CLEAR(w->last_fn);
        Py_CLEAR(w->interrupt);
        Py_EndInterpreter(w->sub_ts); /* returns with no thread state and no GIL */
        w->sub_ts = NULL;
        pthread_mutex_unlock(&creation_mu);
    }
    PyEval_RestoreThread(w->main_ts);
    for (size_t i = 0; i < w->npinned; i++) {
        braid_ip_release_views(w->pinned[i].views, w->pinned[i].n);
    }
    PyMem_RawFree(w->pinned);
    pthread_mutex_lock(&core->mu);
    if (w->prev) {
        w->prev->next = w->next;
    } else {
        core->workers = w->next;
    }
    if (w->next) {
        w->next->prev = w->prev;
    }
    pthread_mutex_unlock(&core->mu);
    if (core->closed && core->threads_exited + 1 == br_threadpool_threads(&core->tp)) {
        braid_ipd_stop(core); /* the last worker: no result comes after this */
    }
    braid_ip_worker_gone(core);
    PyThreadState_Clear(w->main_ts);
    PyThreadState_DeleteCurrent();
    tls_worker = NULL;
    PyMem_RawFree(w);
}

#endif /* BRAID_HAVE_INTERPRETERS */
