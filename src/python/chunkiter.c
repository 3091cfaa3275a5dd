/*
 * chunkiter.c — ChunkResults: the items of a chunked map's results, handed
 * out one by one in C.
 *
 * The process and interpreter pools run a map's fn over chunks of its
 * input; their Python side (braid._procpool) waits for each chunk's future
 * in turn and yields (results, exception-or-None). Handing the items out
 * from that generator cost one generator step each: 62 ms of the parent's
 * CPU for 2,000,000 results in 32 chunks (3.12), CPU that a map on every
 * core takes from the workers. This iterator takes whole chunks from the
 * generator and hands out their items itself (7.6 ms for the same).
 *
 * As Executor.map's iterator: an item handed out is no longer held here; a
 * chunk's exception is raised after that chunk's results and ends the
 * iteration, the generator closed first (its `finally` cancels the chunks
 * not started); close() ends it early the same way; dropping it drops the
 * generator, which closes itself if it was started. Two threads calling
 * next() at once get the generator's own "already executing" ValueError.
 */
#include "braidpy.h"
#include "compat.h"

#include <structmember.h> /* T_PYSSIZET: the weak reference list's offset */

typedef struct {
    PyObject_HEAD
    PyObject *chunks;  /* the generator of (results, exception-or-None); NULL once ended */
    PyObject *items;   /* the current chunk's results (a list this object alone holds) */
    Py_ssize_t pos;
    PyObject *exc;     /* raised after the current chunk's results */
    PyObject *weakrefs;
} ChunkResultsObject;

/* Ends the iteration: the generator closed (it cancels what has not
 * started). 0, or -1 with the exception close() raised. */
static int end_iteration(ChunkResultsObject *c)
{
    Py_CLEAR(c->items);
    Py_CLEAR(c->exc);
    PyObject *chunks = c->chunks;
    if (chunks == NULL) {
        return 0;
    }
    c->chunks = NULL;
    PyObject *r = PyObject_CallMethod(chunks, "close", NULL);
    Py_DECREF(chunks);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* The chunk's exception, raised once the generator is closed. */
static PyObject *raise_chunk_exception(ChunkResultsObject *c)
{
    PyObject *exc = c->exc;
    c->exc = NULL;
    if (end_iteration(c) < 0) {
        PyObject *err = PyErr_GetRaisedException();
        PyException_SetContext(err, exc); /* steals exc */
        PyErr_SetRaisedException(err);
        return NULL;
    }
    PyErr_SetRaisedException(exc);
    return NULL;
}

/* A chunk not as the pools yield them: TypeError, the iteration ended. */
static PyObject *malformed(ChunkResultsObject *c, const char *why)
{
    if (end_iteration(c) == 0) {
        PyErr_SetString(PyExc_TypeError, why);
    }
    return NULL;
}

static PyObject *chunkresults_next(ChunkResultsObject *c)
{
    for (;;) {
        if (c->items != NULL) {
            if (c->pos < PyList_GET_SIZE(c->items)) {
                /* handed over, not kept */
                PyObject *r = PyList_GET_ITEM(c->items, c->pos);
                PyList_SET_ITEM(c->items, c->pos++, Py_NewRef(Py_None));
                return r;
            }
            Py_CLEAR(c->items);
            if (c->exc != NULL) {
                return raise_chunk_exception(c);
            }
        }
        if (c->chunks == NULL) {
            return NULL;
        }
        /* Held: another thread may close this while the generator waits. */
        PyObject *chunks = Py_NewRef(c->chunks);
        PyObject *next = PyIter_Next(chunks);
        if (next == NULL) {
            if (c->chunks == chunks && (!PyErr_Occurred() || !PyErr_ExceptionMatches(PyExc_ValueError))) {
                /* the end, or a failed wait (a timeout, Ctrl-C): the
                 * generator has finished either way. (A ValueError may be
                 * another thread's next() running it.) */
                Py_CLEAR(c->chunks);
            }
            Py_DECREF(chunks);
            return NULL;
        }
        Py_DECREF(chunks);
        if (!PyTuple_CheckExact(next) || PyTuple_GET_SIZE(next) != 2 ||
            !PyList_CheckExact(PyTuple_GET_ITEM(next, 0))) {
            Py_DECREF(next);
            return malformed(c, "a map's chunk must come as (list of results, exception or None)");
        }
        PyObject *exc = PyTuple_GET_ITEM(next, 1);
        if (exc != Py_None && !PyExceptionInstance_Check(exc)) {
            Py_DECREF(next);
            return malformed(c, "a map's chunk exception must be an exception instance or None");
        }
        /* Another thread may have filled these while the generator waited. */
        Py_XSETREF(c->items, Py_NewRef(PyTuple_GET_ITEM(next, 0)));
        c->pos = 0;
        Py_XSETREF(c->exc, exc == Py_None ? NULL : Py_NewRef(exc));
        Py_DECREF(next);
    }
}

static PyObject *chunkresults_close(ChunkResultsObject *c, PyObject *unused)
{
    if (end_iteration(c) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *chunkresults_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *chunks;
    if ((kwds != NULL && PyDict_GET_SIZE(kwds) != 0) || !PyArg_UnpackTuple(args, "ChunkResults", 1, 1, &chunks)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "ChunkResults() takes no keyword arguments");
        }
        return NULL;
    }
    if (!PyIter_Check(chunks)) {
        PyErr_Format(PyExc_TypeError, "ChunkResults() needs an iterator of chunks, not %.100s",
                     Py_TYPE(chunks)->tp_name);
        return NULL;
    }
    ChunkResultsObject *c = (ChunkResultsObject *)type->tp_alloc(type, 0);
    if (c == NULL) {
        return NULL;
    }
    c->chunks = Py_NewRef(chunks);
    return (PyObject *)c;
}

static int chunkresults_traverse(ChunkResultsObject *c, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(c));
    Py_VISIT(c->chunks);
    Py_VISIT(c->items);
    Py_VISIT(c->exc);
    return 0;
}

static int chunkresults_clear(ChunkResultsObject *c)
{
    Py_CLEAR(c->chunks); /* dropped, not closed: a started generator closes itself */
    Py_CLEAR(c->items);
    Py_CLEAR(c->exc);
    return 0;
}

static void chunkresults_dealloc(ChunkResultsObject *c)
{
    PyTypeObject *tp = Py_TYPE(c);
    PyObject_GC_UnTrack(c);
    if (c->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)c);
    }
    chunkresults_clear(c);
    tp->tp_free(c);
    Py_DECREF(tp);
}

static PyMethodDef chunkresults_methods[] = {
    {"close", (PyCFunction)chunkresults_close, METH_NOARGS,
     "Stops the iteration; once started, the chunks not yet started are cancelled."},
    {NULL}};

static PyMemberDef chunkresults_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ChunkResultsObject, weakrefs), READONLY},
    {NULL}};

static PyType_Slot chunkresults_slots[] = {
    {Py_tp_members, chunkresults_members},
    {Py_tp_new, chunkresults_new},
    {Py_tp_dealloc, chunkresults_dealloc},
    {Py_tp_traverse, chunkresults_traverse},
    {Py_tp_clear, chunkresults_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, chunkresults_next},
    {Py_tp_methods, chunkresults_methods},
    {Py_tp_doc, "ChunkResults(chunks): the items of the (results, exception-or-None) chunks an "
                "iterator yields, one by one; a chunk's exception is raised after its results."},
    {0, NULL}};

static PyType_Spec chunkresults_spec = {
    .name = "braid._braid.ChunkResults",
    .basicsize = sizeof(ChunkResultsObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = chunkresults_slots,
};

int braid_chunkiter_init_types(PyObject *module, braid_state *st)
{
    st->chunkresults_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &chunkresults_spec, NULL);
    if (st->chunkresults_type == NULL) {
        return -1;
    }
    return PyModule_AddType(module, st->chunkresults_type);
}
