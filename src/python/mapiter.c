/*
 * mapiter.c — the iterator ThreadPool.map returns.
 *
 * Unlike Executor.map, which submits every item before returning, this
 * reads its input lazily: it keeps at most `window` futures (about 1,024
 * items, at least 4 tasks per worker) in flight and
 * submits one more each time it hands out a result, so map over an endless
 * or huge iterable runs in bounded memory. What stays as in the stdlib:
 * results come in input order, the first window is submitted at the call
 * (so work starts at once and a shut-down pool raises there), `timeout`
 * counts from the call, an exception is raised at its item's position, and
 * ending early (exception, timeout, close(), garbage collection) cancels the
 * futures not yet started.
 *
 * With chunksize > 1 each future runs fn over a list of argument tuples and
 * returns (results, exception-or-None); results before a failing item are
 * still handed out before its exception.
 */
#include "braidpy.h"
#include "compat.h"

#define READ_AHEAD_ITEMS 1024

typedef struct {
    PyObject_HEAD
    PyObject *pool;
    PyObject *fn;
    PyObject *source;      /* zip(*iterables); NULL once exhausted */
    PyObject *input_error; /* raised by the input; reported at its position */
    int64_t deadline;      /* -1: none */
    Py_ssize_t chunksize;
    Py_ssize_t window;     /* futures in flight at most */
    FutureObject **ring;
    Py_ssize_t head, count;
    PyObject *chunk;       /* results of the current chunk */
    Py_ssize_t chunk_pos;
    PyObject *chunk_exc;   /* raised after the current chunk's results */
} MapIterObject;

/* Reads up to chunksize argument tuples; NULL at the end of the input or
 * on an input error (kept in input_error, not raised now). */
static PyObject *read_args(MapIterObject *m)
{
    if (m->chunksize == 1) {
        PyObject *args = PyIter_Next(m->source);
        if (args == NULL) {
            if (PyErr_Occurred()) {
                m->input_error = PyErr_GetRaisedException();
            }
            Py_CLEAR(m->source);
        }
        return args;
    }
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        m->input_error = PyErr_GetRaisedException();
        Py_CLEAR(m->source);
        return NULL;
    }
    while (m->source != NULL && PyList_GET_SIZE(list) < m->chunksize) {
        PyObject *args = PyIter_Next(m->source);
        if (args == NULL) {
            if (PyErr_Occurred()) {
                m->input_error = PyErr_GetRaisedException();
            }
            Py_CLEAR(m->source);
            break;
        }
        int rc = PyList_Append(list, args);
        Py_DECREF(args);
        if (rc < 0) {
            m->input_error = PyErr_GetRaisedException();
            Py_CLEAR(m->source);
        }
    }
    if (PyList_GET_SIZE(list) == 0) {
        Py_DECREF(list);
        return NULL;
    }
    return list;
}

/* Tops the window up. -1 if a submit failed (the error is set). */
static int refill(MapIterObject *m)
{
    while (m->source != NULL && m->count < m->window) {
        PyObject *args = read_args(m);
        if (args == NULL) {
            break;
        }
        FutureObject *f = braid_pool_submit(m->pool, m->fn, args, NULL, m->chunksize > 1);
        Py_DECREF(args);
        if (f == NULL) {
            return -1;
        }
        m->ring[(m->head + m->count) % m->window] = f;
        m->count++;
    }
    return 0;
}

/* Ends the iteration: cancels what has not started, drops the input. */
static void finish(MapIterObject *m)
{
    PyObject *exc = PyErr_GetRaisedException();
    while (m->count > 0) {
        FutureObject *f = m->ring[m->head];
        m->head = (m->head + 1) % m->window;
        m->count--;
        if (braid_future_cancel(f) < 0) {
            PyErr_WriteUnraisable((PyObject *)f);
        }
        Py_DECREF(f);
    }
    Py_CLEAR(m->source);
    Py_CLEAR(m->chunk);
    Py_CLEAR(m->chunk_exc);
    PyErr_SetRaisedException(exc);
}

static PyObject *from_chunk(MapIterObject *m)
{
    if (m->chunk_pos < PyList_GET_SIZE(m->chunk)) {
        return Py_NewRef(PyList_GET_ITEM(m->chunk, m->chunk_pos++));
    }
    Py_CLEAR(m->chunk);
    if (m->chunk_exc != NULL) {
        PyObject *exc = m->chunk_exc;
        m->chunk_exc = NULL;
        PyErr_SetRaisedException(exc);
        finish(m);
    }
    return NULL;
}

static PyObject *mapiter_next(MapIterObject *m)
{
    for (;;) {
        if (m->chunk != NULL) {
            PyObject *r = from_chunk(m);
            if (r != NULL || PyErr_Occurred()) {
                return r;
            }
        }
        if (refill(m) < 0) {
            finish(m);
            return NULL;
        }
        if (m->count == 0) {
            if (m->input_error != NULL) {
                PyObject *exc = m->input_error;
                m->input_error = NULL;
                PyErr_SetRaisedException(exc);
            }
            return NULL; /* StopIteration */
        }
        FutureObject *f = m->ring[m->head];
        if (braid_future_wait(f, m->deadline) < 0) {
            finish(m);
            return NULL;
        }
        m->head = (m->head + 1) % m->window;
        m->count--;
        PyObject *r = braid_future_get_result(f);
        Py_DECREF(f);
        if (r == NULL) {
            finish(m);
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

static PyObject *mapiter_close(MapIterObject *m, PyObject *unused)
{
    finish(m);
    Py_CLEAR(m->input_error);
    Py_RETURN_NONE;
}

static int mapiter_traverse(MapIterObject *m, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(m));
    Py_VISIT(m->pool);
    Py_VISIT(m->fn);
    Py_VISIT(m->source);
    Py_VISIT(m->input_error);
    Py_VISIT(m->chunk);
    Py_VISIT(m->chunk_exc);
    for (Py_ssize_t i = 0; i < m->count; i++) {
        Py_VISIT(m->ring[(m->head + i) % m->window]);
    }
    return 0;
}

static int mapiter_clear(MapIterObject *m)
{
    if (m->ring != NULL) {
        finish(m);
    }
    Py_CLEAR(m->pool);
    Py_CLEAR(m->fn);
    Py_CLEAR(m->source);
    Py_CLEAR(m->input_error);
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
     "Stops the iteration and cancels the tasks not yet started."},
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
                            int64_t deadline, Py_ssize_t chunksize)
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
    unsigned workers = braid_pool_max_workers(pool);
    m->pool = Py_NewRef(pool);
    m->fn = Py_NewRef(fn);
    m->source = source;
    m->input_error = NULL;
    m->deadline = deadline;
    m->chunksize = chunksize;
    /* Read-ahead: about READ_AHEAD_ITEMS items, and at least 4 tasks per
     * worker. Fewer in flight and the consumer keeps waiting on workers
     * (a GIL handoff each time); more only costs memory. */
    Py_ssize_t by_items = (READ_AHEAD_ITEMS + chunksize - 1) / chunksize;
    m->window = by_items > (Py_ssize_t)workers * 4 ? by_items : (Py_ssize_t)workers * 4;
    m->head = m->count = 0;
    m->chunk = NULL;
    m->chunk_pos = 0;
    m->chunk_exc = NULL;
    m->ring = PyMem_Calloc(m->window, sizeof(FutureObject *));
    PyObject_GC_Track(m);
    if (m->ring == NULL) {
        Py_DECREF(m);
        return PyErr_NoMemory();
    }
    if (refill(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return (PyObject *)m;
}
