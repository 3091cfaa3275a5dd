/*
 * mapiter.c — the iterator ThreadPool.map returns.
 *
 * It follows Executor.map of Python 3.14 (Lib/concurrent/futures/_base.py),
 * on every Python braid supports:
 *
 * - buffersize=None (`buffersize == 0` here): the call reads all of its
 *   input and submits every task before it returns ("the iterables are
 *   collected immediately"), so a map whose iterator is never consumed still
 *   runs every item;
 * - buffersize=N: the call submits the first N tasks, and each next() reads
 *   and submits one more before it waits for the oldest result, so at most N
 *   tasks are submitted ahead of the results handed out and the input is
 *   read lazily (endless inputs work). With chunksize > 1 the window counts
 *   chunks, as ProcessPoolExecutor.map's does.
 *
 * As there: results come in input order; `timeout` counts from the call; an
 * exception from the input is raised where the input is read (the call, or
 * the next() whose refill read it); the first exception (of a task, of the
 * input, a timeout) ends the iteration; and an iterator that was started
 * (next() called) and ends early — exception, timeout, close(), garbage
 * collection — cancels the tasks not yet started. An iterator never started
 * leaves its tasks to run when it is closed or dropped, as the stdlib's
 * generator does: that is what makes `pool.map(fn, items)` fire and forget.
 *
 * With chunksize > 1 each future runs fn over a list of argument tuples and
 * returns (results, exception-or-None); results before a failing item are
 * still handed out before its exception.
 *
 * The futures never reach Python code, so they are not tracked by the cycle
 * collector: the iterator reports, in its own traverse, what a finished
 * future that it alone holds references. An eager map of 100,000 items
 * would otherwise spend more time in the collector than in the pool.
 */
#include "braidpy.h"
#include "compat.h"

#include <string.h>

typedef struct {
    PyObject_HEAD
    PyObject *pool;        /* NULL once the input is exhausted: nothing more to submit */
    PyObject *fn;
    PyObject *source;      /* zip(*iterables); NULL once exhausted or the iteration ended */
    int64_t deadline;      /* -1: none */
    Py_ssize_t chunksize;
    Py_ssize_t buffersize; /* tasks (chunks) submitted ahead; 0: all of them (eager) */
    FutureObject **ring;   /* the futures not yet handed out, oldest at head; grows */
    Py_ssize_t cap, head, count;
    PyObject *chunk;       /* results of the current chunk */
    Py_ssize_t chunk_pos;
    PyObject *chunk_exc;   /* raised after the current chunk's results */
    char started;          /* next() was called: ending early cancels the rest */
    char running;          /* inside next(): re-entry and use from another thread refused */
} MapIterObject;

/* ---------------------------------------------------------------- the ring */

static int ring_push(MapIterObject *m, FutureObject *f)
{
    if (m->count == m->cap) {
        Py_ssize_t cap = m->cap ? m->cap * 2 : 16;
        FutureObject **ring = cap > 0 ? PyMem_New(FutureObject *, cap) : NULL;
        if (ring == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        if (m->count > 0) {
            Py_ssize_t first = m->cap - m->head < m->count ? m->cap - m->head : m->count;
            memcpy(ring, m->ring + m->head, first * sizeof(*ring));
            memcpy(ring + first, m->ring, (m->count - first) * sizeof(*ring));
        }
        PyMem_Free(m->ring);
        m->ring = ring;
        m->cap = cap;
        m->head = 0;
    }
    Py_ssize_t tail = m->head + m->count;
    m->ring[tail < m->cap ? tail : tail - m->cap] = f;
    m->count++;
    return 0;
}

/* The oldest future; the caller owns the reference. count > 0. */
static FutureObject *ring_pop(MapIterObject *m)
{
    FutureObject *f = m->ring[m->head];
    if (++m->head == m->cap) {
        m->head = 0;
    }
    m->count--;
    return f;
}

/* ---------------------------------------------------------------- input and submit */

/* The next argument tuple, or with chunksize > 1 a list of up to chunksize
 * of them. NULL: the input is exhausted (no error set; source cleared) or
 * it raised (error set). */
static PyObject *read_args(MapIterObject *m)
{
    if (m->source == NULL) {
        return NULL;
    }
    if (m->chunksize == 1) {
        PyObject *args = PyIter_Next(m->source);
        if (args == NULL && !PyErr_Occurred()) {
            Py_CLEAR(m->source);
        }
        return args;
    }
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    while (m->source != NULL && PyList_GET_SIZE(list) < m->chunksize) {
        PyObject *args = PyIter_Next(m->source);
        if (args == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(list);
                return NULL;
            }
            Py_CLEAR(m->source);
            break;
        }
        int rc = PyList_Append(list, args);
        Py_DECREF(args);
        if (rc < 0) {
            Py_DECREF(list);
            return NULL;
        }
    }
    if (PyList_GET_SIZE(list) == 0) {
        Py_DECREF(list);
        return NULL;
    }
    return list;
}

static void cancel_quietly(FutureObject *f)
{
    PyObject *exc = PyErr_GetRaisedException();
    if (braid_future_cancel(f) < 0) {
        PyErr_WriteUnraisable((PyObject *)f);
    }
    PyErr_SetRaisedException(exc);
}

/* Reads one task's (chunk's) arguments and submits it: 1, 0 at the end of
 * the input, -1 with an exception (from the input or the submit). */
static int submit_next(MapIterObject *m)
{
    PyObject *args = read_args(m);
    int rc = 0;
    if (args != NULL) {
        FutureObject *f = braid_pool_submit(m->pool, m->fn, args, NULL, m->chunksize > 1);
        Py_DECREF(args);
        if (f == NULL) {
            return -1;
        }
        if (ring_push(m, f) < 0) {
            cancel_quietly(f);
            Py_DECREF(f);
            return -1;
        }
        PyObject_GC_UnTrack(f); /* see mapiter_traverse */
        rc = 1;
    } else if (PyErr_Occurred()) {
        return -1;
    }
    if (m->source == NULL) {
        /* nothing more to submit: the pool may go, as the stdlib's
         * iterator holds its executor only weakly */
        Py_CLEAR(m->pool);
    }
    return rc;
}

/* Ends the iteration: drops the input and the futures not handed out,
 * cancelling them if next() was ever called. Keeps a pending exception. */
static void end_iteration(MapIterObject *m)
{
    PyObject *exc = PyErr_GetRaisedException();
    Py_CLEAR(m->source);
    Py_CLEAR(m->pool);
    while (m->count > 0) {
        FutureObject *f = ring_pop(m);
        if (m->started) {
            cancel_quietly(f);
        }
        Py_DECREF(f); /* an uncancelled task keeps running: the queue holds its own reference */
    }
    Py_CLEAR(m->chunk);
    Py_CLEAR(m->chunk_exc);
    PyErr_SetRaisedException(exc);
}

/* ---------------------------------------------------------------- iteration */

static PyObject *from_chunk(MapIterObject *m)
{
    if (m->chunk_pos < PyList_GET_SIZE(m->chunk)) {
        /* handed over, not kept: the list is this iterator's alone */
        PyObject *r = PyList_GET_ITEM(m->chunk, m->chunk_pos);
        PyList_SET_ITEM(m->chunk, m->chunk_pos++, Py_NewRef(Py_None));
        return r;
    }
    Py_CLEAR(m->chunk);
    if (m->chunk_exc != NULL) {
        PyObject *exc = m->chunk_exc;
        m->chunk_exc = NULL;
        PyErr_SetRaisedException(exc);
        end_iteration(m);
    }
    return NULL;
}

static PyObject *next_result(MapIterObject *m)
{
    for (;;) {
        if (m->chunk != NULL) {
            PyObject *r = from_chunk(m);
            if (r != NULL || PyErr_Occurred()) {
                return r;
            }
        }
        /* 3.14: with a buffersize, one more task is submitted before the
         * oldest result is waited for */
        if (m->buffersize > 0 && m->source != NULL && submit_next(m) < 0) {
            end_iteration(m);
            return NULL;
        }
        if (m->count == 0) {
            end_iteration(m);
            return NULL; /* StopIteration */
        }
        FutureObject *f = ring_pop(m);
        if (braid_future_wait(f, m->deadline) < 0) {
            cancel_quietly(f); /* as _result_or_cancel */
            Py_DECREF(f);
            end_iteration(m);
            return NULL;
        }
        PyObject *r = braid_future_get_result(f);
        Py_DECREF(f);
        if (r == NULL) {
            end_iteration(m);
            return NULL;
        }
        if (m->chunksize == 1) {
            return r;
        }
        /* (results, exception-or-None) */
        m->chunk = Py_NewRef(PyTuple_GET_ITEM(r, 0));
        m->chunk_pos = 0;
        PyObject *exc = PyTuple_GET_ITEM(r, 1);
        m->chunk_exc = exc == Py_None ? NULL : Py_NewRef(exc);
        Py_DECREF(r);
    }
}

static int refuse_if_running(MapIterObject *m)
{
    if (m->running) {
        PyErr_SetString(PyExc_ValueError, "ThreadPool.map iterator already executing");
        return -1;
    }
    return 0;
}

static PyObject *mapiter_next(MapIterObject *m)
{
    /* next() waits with the GIL released and may run the input's Python
     * code: the flag keeps another thread (or the input itself) out */
    if (refuse_if_running(m) < 0) {
        return NULL;
    }
    m->running = 1;
    m->started = 1;
    PyObject *r = next_result(m);
    m->running = 0;
    return r;
}

static PyObject *mapiter_close(MapIterObject *m, PyObject *unused)
{
    if (refuse_if_running(m) < 0) {
        return NULL;
    }
    end_iteration(m);
    Py_RETURN_NONE;
}

static int mapiter_traverse(MapIterObject *m, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(m));
    Py_VISIT(m->pool);
    Py_VISIT(m->fn);
    Py_VISIT(m->source);
    Py_VISIT(m->chunk);
    Py_VISIT(m->chunk_exc);
    for (Py_ssize_t i = 0; i < m->count; i++) {
        Py_ssize_t at = m->head + i;
        FutureObject *f = m->ring[at < m->cap ? at : at - m->cap];
        /* The futures are untracked (submit_next). One that only this
         * iterator holds (done: the queue dropped its reference) belongs to
         * it alone, so what the future references is this iterator's to
         * report, and a cycle through it (a result that holds the
         * iterator, ...) is still found. A future the pool still holds
         * keeps its references alive whatever becomes of the iterator. */
        if (Py_REFCNT(f) == 1) {
            int rc = Py_TYPE(f)->tp_traverse((PyObject *)f, visit, arg);
            if (rc) {
                return rc;
            }
        } else {
            Py_VISIT(f);
        }
    }
    return 0;
}

static int mapiter_clear(MapIterObject *m)
{
    end_iteration(m);
    Py_CLEAR(m->fn);
    return 0;
}

static void mapiter_dealloc(MapIterObject *m)
{
    PyTypeObject *tp = Py_TYPE(m);
    PyObject_GC_UnTrack(m);
    mapiter_clear(m);
    PyMem_Free(m->ring);
    tp->tp_free(m);
    Py_DECREF(tp);
}

static PyMethodDef mapiter_methods[] = {
    {"close", (PyCFunction)mapiter_close, METH_NOARGS,
     "Stops the iteration; once started, it cancels the tasks not yet started."},
    {NULL}};

static PyType_Slot mapiter_slots[] = {
    {Py_tp_dealloc, mapiter_dealloc},
    {Py_tp_traverse, mapiter_traverse},
    {Py_tp_clear, mapiter_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, mapiter_next},
    {Py_tp_methods, mapiter_methods},
    {Py_tp_doc, "Results of ThreadPool.map, in input order."},
    {0, NULL}};

static PyType_Spec mapiter_spec = {
    .name = "braid._braid.MapIterator",
    .basicsize = sizeof(MapIterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = mapiter_slots,
};

int braid_mapiter_init_types(PyObject *module, braid_state *st)
{
    st->mapiter_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &mapiter_spec, NULL);
    return st->mapiter_type ? 0 : -1;
}

PyObject *braid_mapiter_new(braid_state *st, PyObject *pool, PyObject *fn, PyObject *iterables,
                            int64_t deadline, Py_ssize_t chunksize, Py_ssize_t buffersize)
{
    PyObject *source = PyObject_Call((PyObject *)&PyZip_Type, iterables, NULL);
    if (source == NULL) {
        return NULL;
    }
    MapIterObject *m = PyObject_GC_New(MapIterObject, st->mapiter_type);
    if (m == NULL) {
        Py_DECREF(source);
        return NULL;
    }
    m->pool = Py_NewRef(pool);
    m->fn = Py_NewRef(fn);
    m->source = source;
    m->deadline = deadline;
    m->chunksize = chunksize;
    m->buffersize = buffersize;
    m->ring = NULL;
    m->cap = m->head = m->count = 0;
    m->chunk = NULL;
    m->chunk_pos = 0;
    m->chunk_exc = NULL;
    m->started = 0;
    m->running = 0;
    PyObject_GC_Track(m);
    /* Everything (eager), or the first window. An error here is raised by
     * the call; as with the stdlib, the tasks already submitted still run
     * (the iterator was never started, so dropping it cancels nothing). */
    while (buffersize == 0 || m->count < buffersize) {
        int rc = submit_next(m);
        if (rc < 0) {
            Py_DECREF(m);
            return NULL;
        }
        if (rc == 0) {
            break;
        }
    }
    return (PyObject *)m;
}
