/*
 * loop.c — _LoopCore, the C scheduling core of braid.Loop: the ready
 * queue, timers, fd watchers and the run-once step, on the engine's reactor
 * (br_loop_t).
 *
 * braid.Loop (python/braid/_loop.py) puts this type first in its bases and
 * asyncio's Unix selector loop after it, so everything not written here yet
 * (transports, servers, subprocesses, signal handlers, run_until_complete,
 * the exception handler) is asyncio's own code, running on these
 * primitives: call_soon / call_at / call_later / call_soon_threadsafe /
 * time / _run_once and the fd watchers _add_reader / _remove_reader /
 * _add_writer / _remove_writer that asyncio's transports go through.
 *
 * One iteration (_run_once), as asyncio's:
 *
 *   timeout = 0 if callbacks are ready or stop was asked, else the time to
 *             the next timer, else none
 *   br_loop_run(ONCE or NOWAIT) polls, the GIL let go only while it may
 *             sleep (the engine's block hook); the engine's I/O callbacks
 *             only note which watchers fired
 *   GIL held:  fired watchers queue their reader/writer handles, due timers
 *             queue theirs, then the callbacks ready at this point run
 *             (those they schedule wait for the next iteration)
 */
#include "braidpy.h"
#include "compat.h"

#include <pthread.h>
#include <structmember.h> /* T_OBJECT_EX: how asyncio's __slots__ are stored */

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef PyObject HandleObject; /* an asyncio.Handle or TimerHandle: see the handles section */

typedef struct watcher_s {
    br_io_t io;
    HandleObject *reader;
    HandleObject *writer;
    PyObject *fileobj;   /* what the watch was first made with, as a selector key's
                            fileobj: a socket closed since is still found by identity */
    unsigned fired;      /* revents noted during the poll */
    int queued;          /* in the fired list */
    uint64_t accepted_in; /* a listening socket's: 1 + the iteration of its last accept; 0: none yet */
} watcher_t;

typedef struct {
    PyObject_HEAD
    br_loop_t *core;     /* heap-allocated: freed after its handles closed */
    br_async_t wake;     /* call_soon_threadsafe */
    br_timer_t poll_timer; /* bounds a poll to the next timer */
    PyObject **ready;    /* our handles, and asyncio.Handle objects (_add_callback) */
    size_t ready_cap, ready_head, ready_len;
    size_t ready_at_poll; /* ready_len as the current poll began; 0 outside polls */
    uint64_t iterations;  /* _run_once calls */
    PyObject **later;     /* call_soon from inside the poll: behind this iteration's timers */
    size_t later_len, later_cap;
    int polling;          /* inside br_loop_run: engine callbacks run from the poll */
    HandleObject **heap;
    size_t heap_len, heap_cap;
    uint64_t seq;
    watcher_t **watchers; /* by fd */
    size_t nwatchers;
    watcher_t **fired;
    size_t fired_len, fired_cap;
    size_t nactive;      /* watchers with a reader or a writer */
    int internal_fd;     /* asyncio's self-pipe: signals and wakeups only, -1 if none */
    unsigned polls_skipped; /* iterations since the last poll */
    PyThreadState *blocked_ts; /* while the poll sleeps without the GIL */
    PyObject *raise_later;  /* KeyboardInterrupt/SystemExit from a stream callback: _run_once raises it */
    size_t nstreams;        /* transports' streams from init to their close callback */
    int closed;
    int init_done;
    int debug;           /* truth of debug_obj, read on every iteration */
    PyObject *debug_obj; /* what asyncio stored as self._debug */
    PyObject *accept_fn; /* _braid._accept_plain: a reader that runs in the poll */
    PyObject *future_type; /* asyncio.Future, asyncio.Task */
    PyObject *task_type;
} LoopObject;

enum { N_TASK_FACTORY, N_CREATE_TASK_SLOW, N_SLOW_CALLBACK_DURATION, N_CURRENT_HANDLE, N_LOOP, N_STOPPING, N_TIME,
       N_COUNT };
_Static_assert(N_COUNT == BRAID_LOOP_NAMES, "braidpy.h sizes the names");
static const char *const name_text[N_COUNT] = {
    [N_TASK_FACTORY] = "_task_factory",
    [N_CREATE_TASK_SLOW] = "_create_task_slow",
    [N_SLOW_CALLBACK_DURATION] = "slow_callback_duration",
    [N_CURRENT_HANDLE] = "_current_handle",
    [N_LOOP] = "loop",
    [N_STOPPING] = "_stopping",
    [N_TIME] = "time",
};

static braid_state *loop_state(PyObject *o)
{
    return braid_state_from_type(Py_TYPE(o));
}

/* --------------------------------------------------------- handles
 *
 * A handle is an asyncio.Handle (call_soon, call_soon_threadsafe, fd
 * watchers) or an asyncio.TimerHandle (call_later, call_at): braid's two
 * handle types are C subtypes of asyncio's classes, made when the first Loop
 * of the interpreter starts (asyncio is imported then, not with braid). Their
 * data lives in asyncio's own __slots__ -- _callback, _args, _cancelled,
 * _loop, _source_traceback, _repr, _context, and TimerHandle's _scheduled and
 * _when -- so asyncio's Python methods, its repr ("at file:line", "created
 * at" in debug mode), its __eq__/__hash__, weak references and every
 * attribute asyncio's code reads behave as on asyncio's own loop. What the C
 * timer heap needs (the deadline in ns, the order among equal deadlines, the
 * heap position) follows asyncio's layout in a tail. The slots' offsets come
 * from asyncio's member descriptors; they are the same in every interpreter
 * of the process (one build of asyncio), so they are statics, written once
 * under a lock by the first interpreter that makes a loop.
 *
 * Only cancel() and _run() are C methods here (the hot ones); the rest is
 * asyncio's.
 */

typedef struct {
    double when;           /* timers: deadline in seconds of the loop's clock (time()),
                              compared as asyncio compares TimerHandle._when */
    uint64_t seq;          /* timers: order among equal deadlines */
    Py_ssize_t heap_index; /* -1 while not in the heap */
    int is_timer;
} handle_tail_t;

static struct {
    Py_ssize_t callback, args, cancelled, loop, source_traceback, repr, context; /* asyncio.Handle */
    Py_ssize_t scheduled, when;                                                  /* asyncio.TimerHandle */
    Py_ssize_t tail;       /* handle_tail_t, after TimerHandle's layout in both types */
} hoff;

static pthread_mutex_t hoff_mu = PTHREAD_MUTEX_INITIALIZER; /* hoff, hoff_set and the two specs */
static int hoff_set;

#define HSLOT(h, name) (*(PyObject **)((char *)(h) + hoff.name))

static inline handle_tail_t *htail(HandleObject *h)
{
    return (handle_tail_t *)((char *)h + hoff.tail);
}

/* Replaces a slot's value (the slot owns a reference; NULL reads as unset). */
static inline void hset(HandleObject *h, Py_ssize_t off, PyObject *value)
{
    PyObject **p = (PyObject **)((char *)h + off);
    PyObject *old = *p;
    *p = value;
    Py_XDECREF(old);
}

static inline int handle_is_cancelled(HandleObject *h)
{
    return HSLOT(h, cancelled) == Py_True;
}

static void heap_remove(LoopObject *L, Py_ssize_t i);

/* asyncio's Handle.cancel and TimerHandle.cancel: the callback and its
 * arguments are dropped at once, so a cancelled callback does not keep what
 * it closes over alive; in debug mode the repr is kept first. */
static PyObject *handle_cancel(HandleObject *h, PyObject *unused)
{
    if (handle_is_cancelled(h)) {
        Py_RETURN_NONE;
    }
    hset(h, hoff.cancelled, Py_NewRef(Py_True));
    LoopObject *L = (LoopObject *)HSLOT(h, loop);
    if (htail(h)->heap_index >= 0 && L != NULL) {
        heap_remove(L, htail(h)->heap_index);
    }
    if (L != NULL && L->debug) {
        PyObject *r = PyObject_Repr(h);
        if (r == NULL) {
            return NULL;
        }
        hset(h, hoff.repr, r);
    }
    hset(h, hoff.callback, Py_NewRef(Py_None));
    hset(h, hoff.args, Py_NewRef(Py_None));
    Py_RETURN_NONE;
}

/* A callback's exception, to the loop's exception handler, with asyncio's
 * words and context keys. */
static void report_callback_error(HandleObject *h)
{
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *fh = PyImport_ImportModule("asyncio.format_helpers");
    PyObject *source = fh ? PyObject_CallMethod(fh, "_format_callback_source", "OO", HSLOT(h, callback),
                                                HSLOT(h, args))
                          : NULL;
    PyObject *msg = source ? PyUnicode_FromFormat("Exception in callback %U", source) : NULL;
    PyObject *ctx = msg ? Py_BuildValue("{s:O,s:O,s:O}", "message", msg, "exception", exc, "handle", h) : NULL;
    PyObject *tb = HSLOT(h, source_traceback);
    if (ctx != NULL && tb != NULL && tb != Py_None && PyObject_IsTrue(tb) == 1 &&
        PyDict_SetItemString(ctx, "source_traceback", tb) < 0) {
        Py_CLEAR(ctx);
    }
    PyObject *loop = HSLOT(h, loop);
    PyObject *r = (ctx && loop) ? PyObject_CallMethod(loop, "call_exception_handler", "O", ctx) : NULL;
    if (r == NULL) {
        PyErr_WriteUnraisable(h);
    }
    Py_XDECREF(r);
    Py_XDECREF(ctx);
    Py_XDECREF(msg);
    Py_XDECREF(source);
    Py_XDECREF(fh);
    Py_XDECREF(exc);
}

/* Runs the callback in its context. KeyboardInterrupt and SystemExit
 * propagate (-1), as in asyncio; other exceptions go to the handler. */
static int handle_run(HandleObject *h)
{
    PyObject *cb = HSLOT(h, callback);
    if (handle_is_cancelled(h) || cb == NULL || cb == Py_None) {
        return 0;
    }
    /* Own references for the call: a callback that cancels its own handle
     * (or a timer's) drops the slots' references while it runs. */
    PyObject *context = HSLOT(h, context);
    context = context != NULL && context != Py_None ? Py_NewRef(context) : NULL;
    if (context != NULL && PyContext_Enter(context) < 0) {
        Py_DECREF(context);
        return -1;
    }
    Py_INCREF(cb);
    PyObject *args = Py_NewRef(HSLOT(h, args));
    PyObject *r = PyObject_Call(cb, args, NULL);
    Py_DECREF(args);
    Py_DECREF(cb);
    int exited = context != NULL ? PyContext_Exit(context) : 0;
    Py_XDECREF(context);
    if (exited < 0) {
        Py_XDECREF(r);
        return -1;
    }
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        return -1;
    }
    report_callback_error(h);
    return 0;
}

static PyObject *handle_run_method(HandleObject *h, PyObject *unused)
{
    return handle_run(h) < 0 ? NULL : Py_NewRef(Py_None);
}

/* The slots this file fills; asyncio's own Python code may set no others. */
#define HANDLE_SLOTS(X) X(callback) X(args) X(cancelled) X(loop) X(source_traceback) X(repr) X(context)

static int handle_traverse(HandleObject *h, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(h));
#define VISIT_SLOT(name) Py_VISIT(HSLOT(h, name));
    HANDLE_SLOTS(VISIT_SLOT)
#undef VISIT_SLOT
    if (htail(h)->is_timer) {
        Py_VISIT(HSLOT(h, scheduled));
        Py_VISIT(HSLOT(h, when));
    }
    return 0;
}

static int handle_clear(HandleObject *h)
{
#define CLEAR_SLOT(name) Py_CLEAR(HSLOT(h, name));
    HANDLE_SLOTS(CLEAR_SLOT)
#undef CLEAR_SLOT
    if (htail(h)->is_timer) {
        Py_CLEAR(HSLOT(h, scheduled));
        Py_CLEAR(HSLOT(h, when));
    }
    return 0;
}

/* asyncio's subtype_dealloc would do, generically; this is the short way
 * for a layout known here. */
static void handle_dealloc(HandleObject *h)
{
    PyTypeObject *tp = Py_TYPE(h);
    PyObject_GC_UnTrack(h);
    if (*(PyObject **)((char *)h + tp->tp_weaklistoffset) != NULL) {
        PyObject_ClearWeakRefs(h);
    }
    handle_clear(h);
    tp->tp_free(h);
    Py_DECREF(tp);
}

static PyMethodDef handle_methods[] = {
    {"cancel", (PyCFunction)handle_cancel, METH_NOARGS, "Cancels the callback; idempotent."},
    {"_run", (PyCFunction)handle_run_method, METH_NOARGS, NULL},
    {NULL}};

static PyType_Slot handle_slots[] = {
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_methods, handle_methods},
    {Py_tp_doc, "A callback scheduled on a braid.Loop: an asyncio.Handle."},
    {0, NULL}};

static PyType_Slot timer_handle_slots[] = {
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_methods, handle_methods},
    {Py_tp_doc, "A callback scheduled on a braid.Loop for a time: an asyncio.TimerHandle."},
    {0, NULL}};

static PyType_Spec handle_spec = {
    .name = "braid._braid.Handle", /* asyncio's repr shows the class name */
    /* weak references: asyncio's __weakref__ slot, inherited */
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = handle_slots,
};

static PyType_Spec timer_handle_spec = {
    .name = "braid._braid.TimerHandle",
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = timer_handle_slots,
};

/* The offset of the __slots__ member `name` of `cls`, or -1 with an error. */
static Py_ssize_t slot_offset(PyObject *cls, const char *name)
{
    PyObject *d = PyObject_GetAttrString(cls, name);
    if (d == NULL) {
        return -1;
    }
    Py_ssize_t off = -1;
    if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX) {
            off = m->offset;
        }
    }
    Py_DECREF(d);
    if (off < 0) {
        PyErr_Format(PyExc_RuntimeError, "asyncio's %s has no slot %s: this asyncio is not supported", ((PyTypeObject *)cls)->tp_name, name);
    }
    return off;
}

/* Makes the two handle types of this interpreter on asyncio's classes. */
static int make_handle_types(braid_state *st, PyObject *module)
{
    PyObject *events = PyImport_ImportModule("asyncio.events");
    PyObject *handle = events ? PyObject_GetAttrString(events, "Handle") : NULL;
    PyObject *timer = handle ? PyObject_GetAttrString(events, "TimerHandle") : NULL;
    int rc = -1;
    if (timer == NULL) {
        goto done;
    }
    /* Found into a local copy; the statics are written once per process,
     * under a lock: interpreters with GILs of their own may make their
     * first loops at once, and every interpreter's loops read them. */
    __typeof__(hoff) found;
    const struct { const char *name; PyObject *cls; Py_ssize_t *off; } slots[] = {
        {"_callback", handle, &found.callback}, {"_args", handle, &found.args},
        {"_cancelled", handle, &found.cancelled}, {"_loop", handle, &found.loop},
        {"_source_traceback", handle, &found.source_traceback}, {"_repr", handle, &found.repr},
        {"_context", handle, &found.context}, {"_scheduled", timer, &found.scheduled},
        {"_when", timer, &found.when},
    };
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++) {
        if ((*slots[i].off = slot_offset(slots[i].cls, slots[i].name)) < 0) {
            goto done;
        }
    }
    found.tail = ((PyTypeObject *)timer)->tp_basicsize;
    pthread_mutex_lock(&hoff_mu);
    if (!hoff_set) {
        hoff = found;
        handle_spec.basicsize = timer_handle_spec.basicsize = (int)(hoff.tail + sizeof(handle_tail_t));
        hoff_set = 1;
    } else if (memcmp(&hoff, &found, sizeof found) != 0) {
        pthread_mutex_unlock(&hoff_mu);
        PyErr_SetString(PyExc_RuntimeError, "asyncio's handle layout differs between interpreters of this process");
        goto done;
    }
    st->loop_handle_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &handle_spec, handle);
    st->loop_timer_type = st->loop_handle_type
                              ? (PyTypeObject *)PyType_FromModuleAndSpec(module, &timer_handle_spec, timer)
                              : NULL;
    pthread_mutex_unlock(&hoff_mu);
    rc = st->loop_timer_type ? 0 : -1;
done:
    Py_XDECREF(timer);
    Py_XDECREF(handle);
    Py_XDECREF(events);
    return rc;
}

/* --------------------------------------------------------- ready queue and timer heap
 *
 * Why a heap of its own, beside the engine's timers (br_timer_t, timer.c):
 * asyncio's ordering is not the engine's. A due TimerHandle does not run
 * when it is due: it joins the ready queue behind the callbacks already
 * there, in (when, creation) order among the timers due at the same
 * iteration, "due" as asyncio's (the deadline, a double of the loop's clock
 * as asyncio compares TimerHandle._when, at or before now), and
 * TimerHandle.when() and the debug-mode repr read the float of the
 * deadline. Engine timers fire from inside the poll, one callback each, in
 * the engine's own order: to keep asyncio's, every one would have to queue
 * its handle, which is this heap with a callback per timer added. So the
 * engine's heap bounds the poll (one br_timer_t, poll_timer) and this one
 * orders asyncio's handles.
 */

static int ready_push(LoopObject *L, PyObject *h)
{
    if (L->ready_len == L->ready_cap) {
        size_t cap = L->ready_cap ? L->ready_cap * 2 : 256;
        PyObject **q = PyMem_Malloc(cap * sizeof *q);
        if (q == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t i = 0; i < L->ready_len; i++) {
            q[i] = L->ready[(L->ready_head + i) % L->ready_cap];
        }
        PyMem_Free(L->ready);
        L->ready = q;
        L->ready_cap = cap;
        L->ready_head = 0;
    }
    L->ready[(L->ready_head + L->ready_len) % L->ready_cap] = Py_NewRef(h);
    L->ready_len++;
    return 0;
}

/* A callback scheduled from inside the poll (a protocol's data_received
 * calling call_soon, say): asyncio runs the reader handle in the ready
 * phase, after the poll, and what it schedules goes behind the timers that
 * phase queued. The engine's reads run in the poll itself, so their
 * call_soon waits here until the timers due in this iteration are queued
 * (later_flush). */
static int later_push(LoopObject *L, PyObject *h)
{
    if (L->later_len == L->later_cap) {
        size_t cap = L->later_cap ? 2 * L->later_cap : 64;
        PyObject **q = PyMem_Realloc(L->later, cap * sizeof *q);
        if (q == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        L->later = q;
        L->later_cap = cap;
    }
    L->later[L->later_len++] = Py_NewRef(h);
    return 0;
}

/* Into the ready queue, in order. -1 (MemoryError) leaves the rest for the
 * next try. */
static int later_flush(LoopObject *L)
{
    if (L->later_len == 0) {
        return 0; /* the common case, and memmove with a NULL array is undefined */
    }
    size_t i = 0;
    int rc = 0;
    for (; i < L->later_len; i++) {
        if ((rc = ready_push(L, L->later[i])) < 0) {
            break;
        }
        Py_DECREF(L->later[i]);
    }
    memmove(L->later, L->later + i, (L->later_len - i) * sizeof *L->later);
    L->later_len -= i;
    return rc;
}

static PyObject *ready_pop(LoopObject *L)
{
    PyObject *h = L->ready[L->ready_head];
    L->ready_head = (L->ready_head + 1) % L->ready_cap;
    L->ready_len--;
    return h; /* the queue's reference */
}

static int before(HandleObject *a, HandleObject *b)
{
    handle_tail_t *x = htail(a), *y = htail(b);
    return x->when < y->when || (x->when == y->when && x->seq < y->seq);
}

static void heap_set(LoopObject *L, size_t i, HandleObject *h)
{
    L->heap[i] = h;
    htail(h)->heap_index = (Py_ssize_t)i;
}

static void sift_up(LoopObject *L, size_t i)
{
    HandleObject *h = L->heap[i];
    while (i > 0 && before(h, L->heap[(i - 1) / 2])) {
        heap_set(L, i, L->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_set(L, i, h);
}

static void sift_down(LoopObject *L, size_t i)
{
    HandleObject *h = L->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= L->heap_len) {
            break;
        }
        if (c + 1 < L->heap_len && before(L->heap[c + 1], L->heap[c])) {
            c++;
        }
        if (!before(L->heap[c], h)) {
            break;
        }
        heap_set(L, i, L->heap[c]);
        i = c;
    }
    heap_set(L, i, h);
}

static int heap_push(LoopObject *L, HandleObject *h)
{
    if (L->heap_len == L->heap_cap) {
        size_t cap = L->heap_cap ? L->heap_cap * 2 : 64;
        HandleObject **n = PyMem_Realloc(L->heap, cap * sizeof *n);
        if (n == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        L->heap = n;
        L->heap_cap = cap;
    }
    Py_INCREF(h);
    L->heap_len++;
    heap_set(L, L->heap_len - 1, h);
    sift_up(L, L->heap_len - 1);
    hset(h, hoff.scheduled, Py_NewRef(Py_True));
    return 0;
}

/* Removes heap[i] and drops the heap's reference. */
static void heap_remove(LoopObject *L, Py_ssize_t i)
{
    HandleObject *h = L->heap[i];
    L->heap_len--;
    if ((size_t)i != L->heap_len) {
        heap_set(L, (size_t)i, L->heap[L->heap_len]);
        sift_down(L, (size_t)i);
        sift_up(L, (size_t)htail(L->heap[i])->heap_index);
    }
    htail(h)->heap_index = -1;
    hset(h, hoff.scheduled, Py_NewRef(Py_False));
    Py_DECREF(h);
}

/* --------------------------------------------------------- scheduling */

br_loop_t *braid_loop_core(PyObject *loop)
{
    braid_state *st = braid_state_from_type(Py_TYPE(loop));
    if (st == NULL || !PyObject_TypeCheck(loop, st->loop_core_type)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "a braid.Loop was expected, got %R", loop);
        return NULL;
    }
    LoopObject *L = (LoopObject *)loop;
    if (L->closed || !L->init_done) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return NULL;
    }
    return L->core;
}

void braid_loop_count_stream(PyObject *loop, int delta)
{
    LoopObject *L = (LoopObject *)loop;
    L->nstreams += (size_t)(ssize_t)delta;
}

int braid_loop_accept_burst(PyObject *loop, int fd)
{
    LoopObject *L = (LoopObject *)loop;
    watcher_t *w = fd >= 0 && (size_t)fd < L->nwatchers ? L->watchers[fd] : NULL;
    if (w == NULL) {
        return 1;
    }
    int burst = w->accepted_in != 0 && w->accepted_in >= L->iterations; /* this one or the one before */
    w->accepted_in = L->iterations + 1;
    return burst;
}

int braid_loop_polling(PyObject *loop)
{
    return ((LoopObject *)loop)->polling;
}

int braid_loop_debug(PyObject *loop)
{
    return ((LoopObject *)loop)->debug;
}

int braid_loop_ready_before_poll(PyObject *loop)
{
    return ((LoopObject *)loop)->ready_at_poll > 0;
}

void braid_loop_raise_later(PyObject *loop, PyObject *exc)
{
    LoopObject *L = (LoopObject *)loop;
    if (L->raise_later == NULL) {
        L->raise_later = exc;
        if (L->polling) {
            br_loop_stop(L->core); /* no further callback of this iteration */
        }
    } else {
        Py_DECREF(exc);
    }
}

int braid_loop_reraise(PyObject *loop)
{
    LoopObject *L = (LoopObject *)loop;
    if (L->raise_later == NULL || L->polling) {
        return 0;
    }
    PyErr_SetRaisedException(L->raise_later);
    L->raise_later = NULL;
    return -1;
}

static int check_open(LoopObject *L)
{
    if (L->closed || !L->init_done) {
        PyErr_SetString(PyExc_RuntimeError, L->init_done ? "Event loop is closed" : "Loop.__init__ was not called");
        return -1;
    }
    return 0;
}

/* Debug mode, as asyncio's _check_thread: the scheduling methods that are
 * not thread-safe refuse a call from another thread than the running loop's. */
static int check_thread(LoopObject *L)
{
    PyObject *tid = PyObject_GetAttrString((PyObject *)L, "_thread_id");
    if (tid == NULL) {
        return -1;
    }
    int other = tid != Py_None && PyLong_AsUnsignedLong(tid) != PyThread_get_thread_ident();
    Py_DECREF(tid);
    if (PyErr_Occurred()) {
        return -1;
    }
    if (other) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Non-thread-safe operation invoked on an event loop other than the current one");
        return -1;
    }
    return 0;
}

/* Debug mode, as asyncio's Handle: where the handle was made, up to the
 * caller's frame (asyncio.format_helpers.extract_stack). */
static PyObject *source_traceback(void)
{
    PyObject *fh = PyImport_ImportModule("asyncio.format_helpers");
    PyFrameObject *frame = PyEval_GetFrame();
    PyObject *tb = fh ? PyObject_CallMethod(fh, "extract_stack", "O", frame ? (PyObject *)frame : Py_None) : NULL;
    Py_XDECREF(fh);
    return tb;
}

static HandleObject *make_handle(LoopObject *L, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                                 const char *what, Py_ssize_t skip, int timer)
{
    braid_state *st = loop_state((PyObject *)L);
    if (check_open(L) < 0) {
        return NULL;
    }
    if (nargs < skip + 1) {
        PyErr_Format(PyExc_TypeError, "%s() missing the callback argument", what);
        return NULL;
    }
    PyObject *context = NULL;
    for (Py_ssize_t i = 0; kwnames && i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(k, "context") != 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", what, k);
            return NULL;
        }
        context = args[nargs + i] == Py_None ? NULL : args[nargs + i];
    }
    PyObject *cb = args[skip];
    if (!PyCallable_Check(cb)) {
        PyErr_Format(PyExc_TypeError, "a callable object was expected by %s(), got %R", what, cb);
        return NULL;
    }
    if (PyFunction_Check(cb) && (PyFunction_GET_CODE(cb) != NULL) &&
        (((PyCodeObject *)PyFunction_GET_CODE(cb))->co_flags & CO_COROUTINE)) {
        /* asyncio checks this in debug mode only; it is cheap enough to always do */
        PyErr_Format(PyExc_TypeError, "coroutines cannot be used with %s()", what);
        return NULL;
    }
    PyTypeObject *tp = timer ? st->loop_timer_type : st->loop_handle_type;
    HandleObject *h = PyObject_GC_New(PyObject, tp); /* not zeroed: every field is set below */
    if (h == NULL) {
        return NULL;
    }
    *(PyObject **)((char *)h + tp->tp_weaklistoffset) = NULL;
    handle_tail_t *t = htail(h);
    t->heap_index = -1;
    t->is_timer = timer;
    PyObject *hargs = PyTuple_New(nargs - skip - 1);
    for (Py_ssize_t i = skip + 1; hargs && i < nargs; i++) {
        PyTuple_SET_ITEM(hargs, i - skip - 1, Py_NewRef(args[i]));
    }
    HSLOT(h, callback) = Py_NewRef(cb);
    HSLOT(h, args) = hargs;
    HSLOT(h, context) = context ? Py_NewRef(context) : PyContext_CopyCurrent();
    HSLOT(h, loop) = Py_NewRef((PyObject *)L);
    HSLOT(h, cancelled) = Py_NewRef(Py_False);
    HSLOT(h, repr) = Py_NewRef(Py_None);
    HSLOT(h, source_traceback) = L->debug ? source_traceback() : Py_NewRef(Py_None);
    if (timer) {
        HSLOT(h, scheduled) = Py_NewRef(Py_False);
        HSLOT(h, when) = NULL; /* schedule_at sets it */
    }
    PyObject_GC_Track(h);
    if (hargs == NULL || HSLOT(h, context) == NULL || HSLOT(h, source_traceback) == NULL) {
        Py_DECREF(h);
        return NULL;
    }
    return h;
}

static PyObject *loop_call_soon(LoopObject *L, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (L->debug && L->init_done && check_thread(L) < 0) {
        return NULL;
    }
    HandleObject *h = make_handle(L, args, nargs, kwnames, "call_soon", 0, 0);
    if (h == NULL || (L->polling ? later_push(L, (PyObject *)h) : ready_push(L, (PyObject *)h)) < 0) {
        Py_XDECREF(h);
        return NULL;
    }
    return (PyObject *)h;
}

int braid_loop_call_soon_io(PyObject *loop, PyObject *const *args, Py_ssize_t nargs)
{
    LoopObject *L = (LoopObject *)loop;
    HandleObject *h = make_handle(L, args, nargs, NULL, "call_soon", 0, 0);
    int rc = h ? ready_push(L, (PyObject *)h) : -1;
    Py_XDECREF(h);
    return rc;
}

static PyObject *loop_call_soon_threadsafe(LoopObject *L, PyObject *const *args, Py_ssize_t nargs,
                                           PyObject *kwnames)
{
    HandleObject *h = make_handle(L, args, nargs, kwnames, "call_soon_threadsafe", 0, 0);
    /* Asked again: making the handle can run Python code (a collection's
     * finalizers, or another thread taking the GIL meanwhile) that closes
     * the loop, and a closed loop's wakeup is gone. */
    if (h == NULL || check_open(L) < 0 || ready_push(L, (PyObject *)h) < 0) {
        Py_XDECREF(h);
        return NULL;
    }
    /* the loop may be asleep in its poll, with the GIL released */
    (void)br_async_send(&L->wake);
    return (PyObject *)h;
}

/* asyncio's loop reads its clock through self.time(): a subclass or a test
 * that replaces time() (a mock, a virtual clock) moves the timers with it.
 * The deadlines in the heap are then that clock's seconds, as asyncio's
 * heap holds whatever time() returned. */
static int clock_replaced(LoopObject *L)
{
    braid_state *st = loop_state((PyObject *)L);
    PyObject *name = st->loop_names[N_TIME];
    if (_PyType_Lookup(Py_TYPE(L), name) != _PyType_Lookup(st->loop_core_type, name)) {
        return 1;
    }
    /* an instance attribute (mock.patch.object(loop, "time"), vars(loop)["time"] = f):
     * read from the instance dict, so that no tp_setattro is needed (one would make
     * object.__setattr__(loop, ...) raise "can't apply this __setattr__" on 3.11/3.12) */
    if (Py_TYPE(L)->tp_dictoffset == 0) {
        return 0;
    }
    PyObject *d = PyObject_GenericGetDict((PyObject *)L, NULL);
    if (d == NULL) {
        PyErr_Clear();
        return 0;
    }
    int in = PyDict_Contains(d, name);
    Py_DECREF(d);
    if (in < 0) {
        PyErr_Clear();
        return 0;
    }
    return in;
}

/* The loop's now in seconds: loop.time()'s float, or what a replaced time() says. */
static int loop_now(LoopObject *L, double *now)
{
    if (!clock_replaced(L)) {
        *now = (double)br_now_ns() / 1e9;
        return 0;
    }
    PyObject *t = PyObject_CallMethodNoArgs((PyObject *)L, loop_state((PyObject *)L)->loop_names[N_TIME]);
    double s;
    int rc = t ? braid_parse_seconds(t, "time()", "a number", &s) : -1;
    Py_XDECREF(t);
    if (rc < 0) {
        return -1;
    }
    *now = s;
    return 0;
}

/* when_obj is what TimerHandle.when() returns (asyncio keeps call_at's
 * argument as given, an int stays an int); NULL: a float made from when */
static PyObject *schedule_at(LoopObject *L, double when, PyObject *when_obj, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *kwnames, const char *what)
{
    if (L->debug && L->init_done && check_thread(L) < 0) {
        return NULL;
    }
    HandleObject *h = make_handle(L, args, nargs, kwnames, what, 1, 1);
    if (h == NULL) {
        return NULL;
    }
    htail(h)->when = when;
    htail(h)->seq = L->seq++;
    HSLOT(h, when) = when_obj ? Py_NewRef(when_obj) : PyFloat_FromDouble(when);
    if (HSLOT(h, when) == NULL) {
        Py_DECREF(h);
        return NULL;
    }
    if (heap_push(L, h) < 0) {
        Py_DECREF(h);
        return NULL;
    }
    return (PyObject *)h;
}

static PyObject *loop_call_later(LoopObject *L, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    double delay;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "call_later() missing the delay argument");
        return NULL;
    }
    if (braid_parse_seconds(args[0], "delay", "a number", &delay) < 0) {
        return NULL;
    }
    if (clock_replaced(L)) { /* asyncio: self.call_at(self.time() + delay, ...) */
        PyObject *now = PyObject_CallMethodNoArgs((PyObject *)L, loop_state((PyObject *)L)->loop_names[N_TIME]);
        PyObject *when_obj = now ? PyNumber_Add(now, args[0]) : NULL;
        Py_XDECREF(now);
        double when;
        if (when_obj == NULL || braid_parse_seconds(when_obj, "time() + delay", "a number", &when) < 0) {
            Py_XDECREF(when_obj);
            return NULL;
        }
        PyObject *h = schedule_at(L, when, when_obj, args, nargs, kwnames, "call_later");
        Py_DECREF(when_obj);
        return h;
    }
    /* asyncio: self.time() + delay, a float sum */
    return schedule_at(L, (double)br_now_ns() / 1e9 + delay, NULL, args, nargs, kwnames, "call_later");
}

static PyObject *loop_call_at(LoopObject *L, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    double when;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "call_at() missing the when argument");
        return NULL;
    }
    if (braid_parse_seconds(args[0], "when", "a number", &when) < 0) {
        return NULL;
    }
    return schedule_at(L, when, args[0], args, nargs, kwnames, "call_at");
}

static PyObject *loop_time(LoopObject *L, PyObject *unused)
{
    return PyFloat_FromDouble((double)br_now_ns() / 1e9);
}

/* --------------------------------------------------------- fd watchers */

static void watcher_fired(br_io_t *io, unsigned revents)
{
    /* only noted: _run_once queues the handles after the poll, as asyncio
     * does -- but a plain server's listening socket, whose reader is
     * braid's accept loop itself (Loop._start_serving), accepts now, in the
     * poll, as the transports read in it (and as uvloop accepts): the new
     * connections' first callbacks then run in this iteration, one poll
     * fewer per connection. Not when callbacks were ready before the poll
     * (the accept waits behind them, as asyncio's reader handle would), nor
     * in debug mode, nor for an fd that also has a writer. */
    watcher_t *w = (watcher_t *)io;
    LoopObject *L = io->handle.data;
    if (w->reader != NULL && w->writer == NULL && L->accept_fn != NULL && L->ready_at_poll == 0 && !L->debug &&
        HSLOT(w->reader, callback) == L->accept_fn) {
        HandleObject *h = (HandleObject *)Py_NewRef(w->reader);
        if (handle_run(h) < 0) { /* KeyboardInterrupt, SystemExit: out of run_forever after the poll */
            braid_loop_raise_later((PyObject *)L, PyErr_GetRaisedException());
        }
        Py_DECREF(h);
        return;
    }
    w->fired |= revents;
    if (!w->queued && L->fired_len < L->fired_cap) {
        w->queued = 1;
        L->fired[L->fired_len++] = w;
    }
}

static void watcher_closed(br_handle_t *h)
{
    PyMem_RawFree(h);
}

/* The fd of an int or of an object with fileno(), converted with int() as
 * selectors._fileobj_to_fd does, with its errors. */
static int fd_of(PyObject *fileobj)
{
    PyObject *n;
    if (PyLong_Check(fileobj)) {
        n = Py_NewRef(fileobj);
    } else {
        PyObject *r = PyObject_CallMethod(fileobj, "fileno", NULL);
        n = r ? PyNumber_Long(r) : NULL;
        Py_XDECREF(r);
        if (n == NULL) {
            if (PyErr_ExceptionMatches(PyExc_AttributeError) || PyErr_ExceptionMatches(PyExc_TypeError) ||
                PyErr_ExceptionMatches(PyExc_ValueError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "Invalid file object: %R", fileobj);
            }
            return -1;
        }
    }
    int overflow;
    long fd = PyLong_AsLongAndOverflow(n, &overflow);
    Py_DECREF(n);
    if (fd == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow != 0 || fd < 0 || fd > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %R", fileobj);
        return -1;
    }
    return (int)fd;
}

/* (Re)registers w for what it has handles for; closes it when nothing. */
static int watcher_update(LoopObject *L, int fd)
{
    watcher_t *w = L->watchers[fd];
    unsigned events = (w->reader ? BR_READABLE : 0) | (w->writer ? BR_WRITABLE : 0);
    if (events == 0) {
        L->watchers[fd] = NULL;
        L->nactive--;
        Py_CLEAR(w->fileobj);
        if (w->queued) {
            w->fired = 0; /* dispatch skips it; memory stays until the close callback */
        }
        return br_close(&w->io.handle, watcher_closed);
    }
    int rc = br_io_start(&w->io, events, watcher_fired);
    if (rc < 0) {
        braid_raise_oserror(rc, "watching the file descriptor");
        return -1;
    }
    return 0;
}

static PyObject *add_watch(LoopObject *L, PyObject *const *args, Py_ssize_t nargs, int writer)
{
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError, "expected (fd, callback, *args)");
        return NULL;
    }
    int fd = fd_of(args[0]);
    if (fd < 0) {
        return NULL;
    }
    HandleObject *h = make_handle(L, args, nargs, NULL, writer ? "add_writer" : "add_reader", 1, 0);
    if (h == NULL) {
        return NULL;
    }
    if ((size_t)fd >= L->nwatchers) {
        size_t n = L->nwatchers ? L->nwatchers : 64;
        while (n <= (size_t)fd) {
            n *= 2;
        }
        watcher_t **ws = PyMem_Realloc(L->watchers, n * sizeof *ws);
        if (ws == NULL) {
            Py_DECREF(h);
            return PyErr_NoMemory();
        }
        memset(ws + L->nwatchers, 0, (n - L->nwatchers) * sizeof *ws);
        L->watchers = ws;
        L->nwatchers = n;
    }
    watcher_t *w = L->watchers[fd];
    int created = 0;
    if (w == NULL) {
        w = PyMem_RawCalloc(1, sizeof *w);
        if (w == NULL) {
            Py_DECREF(h);
            return PyErr_NoMemory();
        }
        int rc = br_io_init(L->core, &w->io, fd);
        if (rc < 0) {
            PyMem_RawFree(w);
            Py_DECREF(h);
            return braid_raise_oserror(rc, "watching the file descriptor");
        }
        w->io.handle.data = L;
        w->fileobj = Py_NewRef(args[0]);
        L->watchers[fd] = w;
        L->nactive++;
        created = 1;
    }
    HandleObject **slot = writer ? &w->writer : &w->reader;
    HandleObject *old = *slot;
    *slot = (HandleObject *)Py_NewRef(h);
    if (watcher_update(L, fd) < 0) {
        *slot = old;
        Py_DECREF(h);
        if (created || (w->reader == NULL && w->writer == NULL)) {
            L->watchers[fd] = NULL;
            L->nactive--;
            Py_CLEAR(w->fileobj);
            (void)br_close(&w->io.handle, watcher_closed);
        }
        Py_DECREF(h);
        return NULL;
    }
    if (old != NULL) {
        handle_cancel(old, NULL);
        Py_DECREF(old);
    }
    return (PyObject *)h;
}

static PyObject *remove_watch(LoopObject *L, PyObject *fileobj, int writer)
{
    if (L->closed) {
        Py_RETURN_FALSE;
    }
    int fd = fd_of(fileobj);
    if (fd < 0 && PyErr_ExceptionMatches(PyExc_ValueError)) {
        /* closed since (fileno() is -1): as selectors' _fileobj_lookup, the
         * watch made with this very object is found by identity */
        for (size_t i = 0; i < L->nwatchers; i++) {
            if (L->watchers[i] != NULL && L->watchers[i]->fileobj == fileobj) {
                PyErr_Clear();
                fd = (int)i;
                break;
            }
        }
    }
    if (fd < 0) {
        return NULL;
    }
    watcher_t *w = (size_t)fd < L->nwatchers ? L->watchers[fd] : NULL;
    HandleObject **slot = w ? (writer ? &w->writer : &w->reader) : NULL;
    if (slot == NULL || *slot == NULL) {
        Py_RETURN_FALSE;
    }
    HandleObject *old = *slot;
    *slot = NULL;
    handle_cancel(old, NULL);
    Py_DECREF(old);
    if (watcher_update(L, fd) < 0) {
        PyErr_Clear(); /* the fd may be closed already: it is unwatched either way */
    }
    Py_RETURN_TRUE;
}

static PyObject *loop_add_reader(LoopObject *L, PyObject *const *args, Py_ssize_t nargs)
{
    return add_watch(L, args, nargs, 0);
}

static PyObject *loop_add_writer(LoopObject *L, PyObject *const *args, Py_ssize_t nargs)
{
    return add_watch(L, args, nargs, 1);
}

static PyObject *loop_remove_reader(LoopObject *L, PyObject *fd)
{
    return remove_watch(L, fd, 0);
}

static PyObject *loop_remove_writer(LoopObject *L, PyObject *fd)
{
    return remove_watch(L, fd, 1);
}

/* _add_callback(handle): asyncio's own code (signal handlers, for one)
 * queues asyncio.Handle objects this way. */
static PyObject *loop_add_callback(LoopObject *L, PyObject *handle)
{
    if (ready_push(L, handle) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *loop_add_callback_signalsafe(LoopObject *L, PyObject *handle)
{
    if (ready_push(L, handle) < 0) {
        return NULL;
    }
    (void)br_async_send(&L->wake);
    Py_RETURN_NONE;
}

/* _set_internal_fd(fd): the fd of asyncio's self-pipe, which only wakes
 * the loop for signals (call_soon_threadsafe uses the engine's wakeup). */
static PyObject *loop_set_internal_fd(LoopObject *L, PyObject *fileobj)
{
    int fd = -1;
    if (fileobj != Py_None && (fd = fd_of(fileobj)) < 0) {
        return NULL;
    }
    L->internal_fd = fd;
    Py_RETURN_NONE;
}

/* An asyncio.Handle: skipped when cancelled, else its _run(), which
 * reports exceptions itself. */
static int run_foreign(PyObject *h)
{
    PyObject *c = PyObject_GetAttrString(h, "_cancelled");
    int cancelled = c ? PyObject_IsTrue(c) : -1;
    Py_XDECREF(c);
    if (cancelled != 0) {
        return cancelled < 0 ? -1 : 0;
    }
    PyObject *r = PyObject_CallMethod(h, "_run", NULL);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* --------------------------------------------------------- one iteration */

static void nothing(br_timer_t *t)
{
}

static void woken(br_async_t *a)
{
}

/* Iterations that may pass without a poll when only the self-pipe is
 * watched: bounds how late a signal handler runs behind a busy chain of
 * callbacks (a callback costs well under 10 us, so this is under 1 ms). */
#define MAX_POLLS_SKIPPED 64

static int only_internal_watchers(LoopObject *L)
{
    int internal = L->internal_fd >= 0 && (size_t)L->internal_fd < L->nwatchers && L->watchers[L->internal_fd];
    /* a transport's stream is a watcher too, open or closing (its close
     * callback runs in the engine's iteration) */
    return L->nactive == (size_t)internal && L->nstreams == 0;
}

/* asyncio's warning for a callback that held the loop too long, in its
 * words ('Executing <Handle ...> took 0.250 seconds'). */
static int warn_slow(PyObject *h, double dt)
{
    PyObject *be = PyImport_ImportModule("asyncio.base_events");
    PyObject *fmt = be ? PyObject_GetAttrString(be, "_format_handle") : NULL;
    PyObject *logger = be ? PyObject_GetAttrString(be, "logger") : NULL;
    PyObject *text = fmt ? PyObject_CallOneArg(fmt, h) : NULL;
    PyObject *r = (text && logger) ? PyObject_CallMethod(logger, "warning", "sOd", "Executing %s took %.3f seconds",
                                                         text, dt)
                                   : NULL;
    Py_XDECREF(r);
    Py_XDECREF(text);
    Py_XDECREF(logger);
    Py_XDECREF(fmt);
    Py_XDECREF(be);
    return r ? 0 : -1;
}

/* Runs one ready entry: our handle, or an asyncio.Handle. 0 or -1. */
static int run_ready_one(braid_state *st, PyObject *h)
{
    return Py_IS_TYPE(h, st->loop_handle_type) || Py_IS_TYPE(h, st->loop_timer_type) ? handle_run(h)
                                                                                     : run_foreign(h);
}

/* Debug mode, as asyncio's _run_once: each callback is timed, the slow are
 * logged, and _current_handle names the running one (for the exception
 * handler's 'handle created at' traceback). */
static PyObject *run_ready_debug(LoopObject *L, size_t n)
{
    braid_state *st = loop_state((PyObject *)L);
    PyObject *limit_obj = PyObject_GetAttr((PyObject *)L, st->loop_names[N_SLOW_CALLBACK_DURATION]);
    double limit = limit_obj ? PyFloat_AsDouble(limit_obj) : -1.0;
    Py_XDECREF(limit_obj);
    if (limit == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *h = ready_pop(L);
        if (PyObject_SetAttr((PyObject *)L, st->loop_names[N_CURRENT_HANDLE], h) < 0) {
            Py_DECREF(h);
            return NULL;
        }
        int64_t t0 = br_now_ns();
        int err = run_ready_one(st, h);
        double dt = (double)(br_now_ns() - t0) / 1e9;
        if (PyObject_SetAttr((PyObject *)L, st->loop_names[N_CURRENT_HANDLE], Py_None) < 0) {
            err = -1;
        }
        if (err == 0 && dt >= limit) {
            err = warn_slow(h, dt);
        }
        Py_DECREF(h);
        if (err < 0 || braid_loop_reraise((PyObject *)L) < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *loop_run_once(LoopObject *L, PyObject *unused)
{
    if (check_open(L) < 0 || later_flush(L) < 0) { /* left by an iteration that raised */
        return NULL;
    }
    L->iterations++;
    int64_t timeout = -1;
    if (L->ready_len > 0) {
        timeout = 0;
    } else {
        PyObject *stopping = PyObject_GetAttr((PyObject *)L, loop_state((PyObject *)L)->loop_names[N_STOPPING]);
        int stop = stopping ? PyObject_IsTrue(stopping) : 0;
        Py_XDECREF(stopping);
        if (stopping == NULL) {
            PyErr_Clear();
        }
        if (stop == 1) {
            timeout = 0;
        } else if (L->heap_len > 0) {
            double now;
            if (loop_now(L, &now) < 0) {
                return NULL;
            }
            double left = htail(L->heap[0])->when - now; /* seconds; NaN-safe below */
            if (!(left > 0)) {
                timeout = 0;
            } else if (left >= 9e9) {
                timeout = INT64_MAX / 2; /* the engine saturates its deadline */
            } else {
                timeout = (int64_t)ceil(left * 1e9);
            }
        }
    }
    /* room to note every watcher that can fire */
    if (L->fired_cap < L->nwatchers) {
        watcher_t **f = PyMem_Realloc(L->fired, L->nwatchers * sizeof *f);
        if (f == NULL) {
            return PyErr_NoMemory();
        }
        L->fired = f;
        L->fired_cap = L->nwatchers;
    }
    int rc = 0;
    if (timeout == 0 && L->ready_len > 0 && only_internal_watchers(L) && L->polls_skipped < MAX_POLLS_SKIPPED) {
        /* Nothing but the self-pipe to look at: skip the poll while
         * callbacks are ready. A signal or a wakeup through the self-pipe
         * waits at most MAX_POLLS_SKIPPED iterations; nothing's order
         * changes, as no transport or user fd is watched. */
        L->polls_skipped++;
    } else if (timeout == 0) {
        L->polls_skipped = 0;
        /* a poll that cannot block: no need to let the GIL go. With a
         * transport or user fd watched it is not skipped while callbacks
         * are ready: asyncio looks at I/O every iteration, and CPython's
         * own tests rely on that ordering (a
         * peer's reset seen in the same iteration as the callbacks that
         * follow it; measured: skipping polls for 50 us made
         * test_sendfile_close_peer_in_the_middle_of_receiving fail 5 in 10). */
        L->ready_at_poll = L->ready_len;
        L->polling = 1;
        rc = br_loop_run(L->core, BR_RUN_NOWAIT);
        L->polling = 0;
        L->ready_at_poll = 0;
    } else {
        if (timeout > 0) {
            /* The engine caches its clock: refresh it, or the deadline lies in
             * the past. And repeat: a deadline that passes before the poll
             * (a timeout of a few us) fires in the timers phase, and without
             * another due time the poll would then wait for ever. */
            br_loop_update_time(L->core);
            (void)br_timer_start(&L->poll_timer, nothing, timeout, timeout);
        }
        L->polls_skipped = 0;
        L->polling = 1;
        rc = br_loop_run(L->core, BR_RUN_ONCE); /* the GIL goes while it sleeps: gil_while_blocked */
        L->polling = 0;
        L->ready_at_poll = 0;
        (void)br_timer_stop(&L->poll_timer);
    }
    if (L->raise_later != NULL) {
        PyErr_SetRaisedException(L->raise_later); /* as asyncio: it leaves run_forever */
        L->raise_later = NULL;
        return NULL;
    }
    if (rc < 0 && rc != -EINTR) {
        return braid_raise_oserror(rc, "polling");
    }
    /* I/O first, then timers, as asyncio's _run_once */
    for (size_t i = 0; i < L->fired_len; i++) {
        watcher_t *w = L->fired[i];
        unsigned ev = w->fired;
        w->fired = 0;
        w->queued = 0;
        if ((ev & (BR_READABLE | BR_ERROR | BR_HUP)) && w->reader && ready_push(L, (PyObject *)w->reader) < 0) {
            return NULL;
        }
        if ((ev & (BR_WRITABLE | BR_ERROR | BR_HUP)) && w->writer && ready_push(L, (PyObject *)w->writer) < 0) {
            return NULL;
        }
    }
    L->fired_len = 0;
    double end;
    if (loop_now(L, &end) < 0) {
        return NULL;
    }
    /* due: at or before now (asyncio's when < now + the monotonic clock's
     * resolution, 1 ns on Linux). The engine's poll rounds its timeout up to
     * the next ms, so a poll bounded by a deadline wakes at or after it. */
    while (L->heap_len > 0 && htail(L->heap[0])->when <= end) {
        HandleObject *h = (HandleObject *)Py_NewRef(L->heap[0]);
        heap_remove(L, 0);
        int err = ready_push(L, (PyObject *)h);
        Py_DECREF(h);
        if (err < 0) {
            return NULL;
        }
    }
    /* what the poll's reads scheduled goes behind the timers (asyncio runs
     * it one poll later, but that poll's I/O would queue behind it anyway:
     * the same order, a poll less); what is scheduled from here on waits
     * for next time */
    if (later_flush(L) < 0) {
        return NULL;
    }
    size_t n = L->ready_len;
    if (L->debug) {
        return run_ready_debug(L, n);
    }
    braid_state *st = loop_state((PyObject *)L);
    for (size_t i = 0; i < n; i++) {
        PyObject *h = ready_pop(L);
        int err = run_ready_one(st, h);
        Py_DECREF(h);
        if (err < 0 || braid_loop_reraise((PyObject *)L) < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* --------------------------------------------------------- futures, tasks, debug */

/* self._debug is kept here, so that asyncio's own code (set_debug, the
 * many `if self._debug:`) and the C core read the same flag. */
static PyObject *loop_get_debug_attr(LoopObject *L, void *unused)
{
    return Py_NewRef(L->debug_obj ? L->debug_obj : Py_False);
}

static int loop_set_debug_attr(LoopObject *L, PyObject *value, void *unused)
{
    int t = value ? PyObject_IsTrue(value) : 0;
    if (t < 0) {
        return -1;
    }
    Py_XSETREF(L->debug_obj, Py_XNewRef(value));
    L->debug = t;
    return 0;
}

/* get_debug() is called by every asyncio.Future and Task constructor */
static PyObject *loop_get_debug(LoopObject *L, PyObject *unused)
{
    return loop_get_debug_attr(L, NULL);
}

static PyObject *loop_create_future(LoopObject *L, PyObject *unused)
{
    if (L->future_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Loop.__init__ was not called");
        return NULL;
    }
    PyObject *args[] = {NULL, (PyObject *)L};
    return PyObject_Vectorcall(L->future_type, args + 1, 0 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                               loop_state((PyObject *)L)->kwnames_loop);
}

/* create_task(coro, *, name=None, context=None): asyncio.Task(coro,
 * loop=self, ...) when no task factory is set and debug mode is off;
 * anything else (a factory, debug's traceback trimming, arguments a newer
 * Python added) is asyncio's own create_task. */
static PyObject *loop_create_task(LoopObject *L, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    braid_state *st = loop_state((PyObject *)L);
    int fast = nargs == 1 && !L->debug && L->task_type != NULL;
    for (Py_ssize_t i = 0; fast && kwnames && i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        fast = PyUnicode_CompareWithASCIIString(k, "name") == 0 || PyUnicode_CompareWithASCIIString(k, "context") == 0;
    }
    if (fast) {
        if (check_open(L) < 0) {
            return NULL;
        }
        PyObject *factory = PyObject_GetAttr((PyObject *)L, st->loop_names[N_TASK_FACTORY]);
        if (factory == NULL) {
            return NULL;
        }
        fast = factory == Py_None;
        Py_DECREF(factory);
    }
    if (!fast) {
        PyObject *slow = PyObject_GetAttr((PyObject *)L, st->loop_names[N_CREATE_TASK_SLOW]);
        PyObject *r = slow ? PyObject_Vectorcall(slow, args, (size_t)nargs, kwnames) : NULL;
        Py_XDECREF(slow);
        return r;
    }
    /* Task(coro, loop=self, <name=, context=>) */
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *stack[1 + 1 + 1 + 2];
    stack[0] = NULL;
    stack[1] = args[0];
    stack[2] = (PyObject *)L;
    PyObject *names = PyTuple_New(1 + nkw);
    if (names == NULL) {
        return NULL;
    }
    PyTuple_SET_ITEM(names, 0, Py_NewRef(st->loop_names[N_LOOP]));
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyTuple_SET_ITEM(names, 1 + i, Py_NewRef(PyTuple_GET_ITEM(kwnames, i)));
        stack[3 + i] = args[1 + i];
    }
    PyObject *task = PyObject_Vectorcall(L->task_type, stack + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, names);
    Py_DECREF(names);
    return task;
}

/* --------------------------------------------------------- life cycle */

static void core_closed(br_handle_t *h)
{
}

/* Closes every engine handle and then the engine loop (idempotent). */
static void loop_release(LoopObject *L)
{
    if (L->core == NULL) {
        return;
    }
    for (size_t fd = 0; fd < L->nwatchers; fd++) {
        watcher_t *w = L->watchers[fd];
        if (w != NULL) {
            L->watchers[fd] = NULL;
            Py_CLEAR(w->reader);
            Py_CLEAR(w->writer);
            Py_CLEAR(w->fileobj);
            (void)br_close(&w->io.handle, watcher_closed);
        }
    }
    br_loop_walk(L->core, braid_socktransport_loop_closing, loop_state((PyObject *)L));
    br_loop_walk(L->core, braid_pipetransport_loop_closing, loop_state((PyObject *)L));
    br_loop_walk(L->core, braid_dgramtransport_loop_closing, NULL);
    (void)br_close(&L->wake.handle, core_closed);
    (void)br_close(&L->poll_timer.handle, core_closed);
    while (br_loop_close(L->core) == -EBUSY) {
        (void)br_loop_run(L->core, BR_RUN_NOWAIT);
    }
    PyMem_RawFree(L->core);
    L->core = NULL;
}

static void loop_drop_queues(LoopObject *L)
{
    while (L->ready_len > 0) {
        Py_DECREF(ready_pop(L));
    }
    while (L->later_len > 0) {
        Py_DECREF(L->later[--L->later_len]);
    }
    while (L->heap_len > 0) {
        heap_remove(L, (Py_ssize_t)L->heap_len - 1);
    }
}

static PyObject *loop_core_close(LoopObject *L, PyObject *unused)
{
    if (!L->closed) {
        L->closed = 1;
        loop_drop_queues(L);
        loop_release(L);
    }
    Py_RETURN_NONE;
}

/* The engine's block hook: the loop runs holding the GIL (its stream
 * callbacks are Python's), and lets it go only while it sleeps in the poll. */
static void gil_while_blocked(br_loop_t *core, int blocking)
{
    LoopObject *L = core->data;
    if (blocking) {
        L->blocked_ts = PyEval_SaveThread();
    } else {
        PyEval_RestoreThread(L->blocked_ts);
        L->blocked_ts = NULL;
        /* what other threads queued while the poll slept (call_soon_threadsafe)
         * comes before this poll's reads, as before asyncio's reader handles */
        L->ready_at_poll = L->ready_len;
    }
}

static int loop_init(LoopObject *L, PyObject *args, PyObject *kwds)
{
    if (L->init_done) {
        return 0;
    }
    L->core = PyMem_RawCalloc(1, sizeof *L->core);
    if (L->core == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = br_loop_init(L->core);
    if (rc == 0) {
        L->core->data = L;
        br_loop_set_block_cb(L->core, gil_while_blocked);
    }
    if (rc == 0 && (rc = br_async_init(L->core, &L->wake, woken)) == 0) {
        rc = br_timer_init(L->core, &L->poll_timer);
    }
    if (rc < 0) {
        PyMem_RawFree(L->core);
        L->core = NULL;
        braid_raise_oserror(rc, "creating the event loop");
        return -1;
    }
    braid_state *st = loop_state((PyObject *)L);
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio != NULL && st->loop_timer_type == NULL &&
        make_handle_types(st, braid_module_from_type(Py_TYPE(L))) < 0) {
        Py_CLEAR(asyncio);
    }
    if (asyncio != NULL && (braid_socktransport_make_type(st, braid_module_from_type(Py_TYPE(L))) < 0 ||
                            braid_dgramtransport_make_type(st, braid_module_from_type(Py_TYPE(L))) < 0 ||
                            braid_pipetransport_make_types(st, braid_module_from_type(Py_TYPE(L))) < 0)) {
        Py_CLEAR(asyncio);
    }
    if (asyncio != NULL) {
        L->accept_fn = PyObject_GetAttrString(braid_module_from_type(Py_TYPE(L)), "_accept_plain");
        if (L->accept_fn == NULL) {
            PyErr_Clear(); /* accepts then run as other readers do */
        }
        L->future_type = PyObject_GetAttrString(asyncio, "Future");
        L->task_type = L->future_type ? PyObject_GetAttrString(asyncio, "Task") : NULL;
        Py_DECREF(asyncio);
    }
    if (L->task_type == NULL) {
        Py_CLEAR(L->future_type);
        loop_release(L);
        return -1;
    }
    L->internal_fd = -1;
    L->init_done = 1;
    return 0;
}

/* The transports' references to themselves, held while the engine may
 * call them back: the engine's loop owns them (asyncio's selector holds
 * its transports' reader and writer handles), so the loop visits them and
 * a loop dropped unclosed with its transports is one garbage cycle. Its
 * finalizer (asyncio's __del__) closes it, which closes their streams and
 * drops the references; loop_clear leaves them, since a stream still in
 * the engine must keep its object. */
typedef struct {
    braid_state *st;
    visitproc visit;
    void *arg;
    int rc;
} held_visit_t;

static void visit_held(br_handle_t *h, void *arg)
{
    held_visit_t *v = arg;
    if (v->rc != 0) {
        return;
    }
    PyObject *held = braid_socktransport_held(v->st, h);
    if (held == NULL) {
        held = braid_pipetransport_held(v->st, h);
    }
    if (held == NULL) {
        held = braid_dgramtransport_held(h);
    }
    if (held != NULL) {
        v->rc = v->visit(held, v->arg);
    }
}

static int loop_traverse(LoopObject *L, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(L));
    Py_VISIT(L->debug_obj);
    Py_VISIT(L->accept_fn);
    Py_VISIT(L->future_type);
    Py_VISIT(L->task_type);
    Py_VISIT(L->raise_later);
    for (size_t i = 0; i < L->ready_len; i++) {
        Py_VISIT(L->ready[(L->ready_head + i) % L->ready_cap]);
    }
    for (size_t i = 0; i < L->later_len; i++) {
        Py_VISIT(L->later[i]);
    }
    for (size_t i = 0; i < L->heap_len; i++) {
        Py_VISIT(L->heap[i]);
    }
    for (size_t fd = 0; fd < L->nwatchers; fd++) {
        if (L->watchers[fd]) {
            Py_VISIT(L->watchers[fd]->reader);
            Py_VISIT(L->watchers[fd]->writer);
            Py_VISIT(L->watchers[fd]->fileobj);
        }
    }
    if (L->core != NULL) {
        held_visit_t v = {loop_state((PyObject *)L), visit, arg, 0};
        br_loop_walk(L->core, visit_held, &v);
        if (v.rc != 0) {
            return v.rc;
        }
    }
    return 0;
}

static int loop_clear(LoopObject *L)
{
    loop_drop_queues(L);
    Py_CLEAR(L->debug_obj);
    Py_CLEAR(L->accept_fn);
    Py_CLEAR(L->future_type);
    Py_CLEAR(L->task_type);
    Py_CLEAR(L->raise_later);
    for (size_t fd = 0; fd < L->nwatchers; fd++) {
        if (L->watchers[fd]) {
            Py_CLEAR(L->watchers[fd]->reader);
            Py_CLEAR(L->watchers[fd]->writer);
            Py_CLEAR(L->watchers[fd]->fileobj);
        }
    }
    return 0;
}

static void loop_dealloc(LoopObject *L)
{
    PyTypeObject *tp = Py_TYPE(L);
    PyObject_GC_UnTrack(L);
    loop_clear(L);
    loop_release(L);
    PyMem_Free(L->ready);
    PyMem_Free(L->later);
    PyMem_Free(L->heap);
    PyMem_Free(L->watchers);
    PyMem_Free(L->fired);
    tp->tp_free(L);
    Py_DECREF(tp);
}

static PyMethodDef loop_methods[] = {
    {"call_soon", (PyCFunction)(void (*)(void))loop_call_soon, METH_FASTCALL | METH_KEYWORDS,
     "call_soon(callback, *args, context=None) -> Handle"},
    {"call_soon_threadsafe", (PyCFunction)(void (*)(void))loop_call_soon_threadsafe,
     METH_FASTCALL | METH_KEYWORDS, "call_soon from any thread; wakes the loop."},
    {"call_later", (PyCFunction)(void (*)(void))loop_call_later, METH_FASTCALL | METH_KEYWORDS,
     "call_later(delay, callback, *args, context=None) -> TimerHandle"},
    {"call_at", (PyCFunction)(void (*)(void))loop_call_at, METH_FASTCALL | METH_KEYWORDS,
     "call_at(when, callback, *args, context=None) -> TimerHandle"},
    {"time", (PyCFunction)loop_time, METH_NOARGS, "The loop's clock (time.monotonic)."},
    {"_run_once", (PyCFunction)loop_run_once, METH_NOARGS, "One iteration of the loop."},
    {"_add_reader", (PyCFunction)(void (*)(void))loop_add_reader, METH_FASTCALL, NULL},
    {"_add_writer", (PyCFunction)(void (*)(void))loop_add_writer, METH_FASTCALL, NULL},
    {"_remove_reader", (PyCFunction)loop_remove_reader, METH_O, NULL},
    {"_remove_writer", (PyCFunction)loop_remove_writer, METH_O, NULL},
    {"_core_close", (PyCFunction)loop_core_close, METH_NOARGS, "Releases the C state (close())."},
    {"_add_callback", (PyCFunction)loop_add_callback, METH_O, NULL},
    {"_set_internal_fd", (PyCFunction)loop_set_internal_fd, METH_O, NULL},
    {"get_debug", (PyCFunction)loop_get_debug, METH_NOARGS, "Whether debug mode is on."},
    {"create_future", (PyCFunction)loop_create_future, METH_NOARGS, "A new asyncio.Future on this loop."},
    {"create_task", (PyCFunction)(void (*)(void))loop_create_task, METH_FASTCALL | METH_KEYWORDS,
     "create_task(coro, *, name=None, context=None) -> asyncio.Task"},
    {"_add_callback_signalsafe", (PyCFunction)loop_add_callback_signalsafe, METH_O, NULL},
    {NULL}};

static PyGetSetDef loop_getset[] = {
    {"_debug", (getter)loop_get_debug_attr, (setter)loop_set_debug_attr, "debug mode (asyncio's attribute)", NULL},
    {NULL}};

static PyType_Slot loop_slots[] = {
    {Py_tp_getset, loop_getset},
    {Py_tp_dealloc, loop_dealloc},
    {Py_tp_traverse, loop_traverse},
    {Py_tp_clear, loop_clear},
    {Py_tp_init, loop_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_methods, loop_methods},
    {Py_tp_doc, "The C scheduling core of braid.Loop."},
    {0, NULL}};

static PyType_Spec loop_spec = {
    .name = "braid._braid._LoopCore",
    .basicsize = sizeof(LoopObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = loop_slots,
};

int braid_loop_traverse(braid_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->kwnames_loop);
    return braid_visit_names(st->loop_names, N_COUNT, visit, arg);
}

void braid_loop_clear(braid_state *st)
{
    Py_CLEAR(st->kwnames_loop);
    braid_clear_names(st->loop_names, N_COUNT);
}

int braid_loop_init_types(PyObject *module, braid_state *st)
{
    if (braid_intern_names(st->loop_names, name_text, N_COUNT) < 0 ||
        (st->kwnames_loop = PyTuple_Pack(1, st->loop_names[N_LOOP])) == NULL) {
        return -1;
    }
    st->loop_core_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &loop_spec, NULL);
    if (st->loop_core_type == NULL) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "_LoopCore", (PyObject *)st->loop_core_type);
}
