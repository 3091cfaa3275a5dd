/*
 * interppayload.c — what crosses between the main interpreter and an
 * InterpreterPool worker, main side: a task's payload and a result's reply.
 *
 * A plain call (a function found by name outside __main__, arguments of
 * None, bool, int, float, complex, str, bytes and small tuples of them:
 * plain.c's rules) crosses as the function's pickle, made once per pool,
 * and marshal's bytes of the arguments; marshal writes and reads such
 * values several times faster than pickle. Anything else is pickled by
 * braid._interpworker.dumps_task (cloudpickle for lambdas and __main__),
 * large out-of-band buffers left out of the pickle: the worker sees them
 * through read-only views of this interpreter's memory, held here (views)
 * until the task is settled. A reply is marshal's bytes (tagged) for a
 * plain result, else a pickle; None, bool, int and float results need
 * neither (interppool.h, enum itask_value).
 */
#include "interppool.h"

#ifdef BRAID_HAVE_INTERPRETERS

#include <marshal.h>

#include <stdint.h>
#include <string.h>

#define FN_CACHE_MAX 256 /* functions whose pickle a pool keeps */

/* Out-of-band buffers (a list of PickleBuffer) held for the worker. */
static int hold_views(itask_t *t, PyObject *list)
{
    Py_ssize_t n = PyList_GET_SIZE(list);
    t->views = PyMem_RawCalloc((size_t)n, sizeof(Py_buffer));
    if (t->views == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(list, i), &t->views[i], PyBUF_C_CONTIGUOUS) < 0) {
            return -1;
        }
        t->nviews = (int)i + 1;
    }
    return 0;
}

/* A plain task's function, pickled once per pool with an id of its own:
 * the payload's head (IP_PLAIN_HEAD bytes, then the pickle), which a
 * payload then starts with. A worker unpickles each function once and
 * finds it by its id after that (interpworker.c). */
static PyObject *fn_head(interp_core_t *core, PyObject *fn)
{
    if (core->fn_cache == NULL && (core->fn_cache = PyDict_New()) == NULL) {
        return NULL;
    }
    PyObject *head = PyDict_GetItemWithError(core->fn_cache, fn);
    if (head != NULL || PyErr_Occurred()) {
        return Py_XNewRef(head);
    }
    PyObject *data = PyObject_CallFunction(core->st->pickle_dumps, "Oi", fn, 5);
    if (data == NULL) {
        return NULL;
    }
    Py_ssize_t fl = PyBytes_GET_SIZE(data);
    head = fl <= UINT32_MAX - IP_PLAIN_HEAD ? PyBytes_FromStringAndSize(NULL, IP_PLAIN_HEAD + fl)
                                             : NULL;
    if (head != NULL) {
        char *p = PyBytes_AS_STRING(head);
        uint64_t id = ++core->fn_ids;
        uint32_t n = (uint32_t)fl;
        p[0] = IP_MARSHAL_TAG;
        memcpy(p + 1, &id, 8);
        memcpy(p + 9, &n, 4);
        memcpy(p + IP_PLAIN_HEAD, PyBytes_AS_STRING(data), (size_t)fl);
    } else if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_OverflowError, "a function's pickle is too large");
    }
    Py_DECREF(data);
    if (head == NULL) {
        return NULL;
    }
    if (PyDict_GET_SIZE(core->fn_cache) >= FN_CACHE_MAX) {
        PyDict_Clear(core->fn_cache);
    }
    if (PyDict_SetItem(core->fn_cache, fn, head) < 0) {
        Py_CLEAR(head);
    }
    return head;
}

/* A plain task's payload: the function's head, then marshal((args, kwargs
 * or None)) -- nothing more for a call without arguments. Plain values are
 * what marshal writes, and it writes and reads them several times faster
 * than pickle. */
static PyObject *plain_payload(PyObject *head, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) == 0 && kwargs == NULL) {
        return Py_NewRef(head);
    }
    PyObject *pair = PyTuple_Pack(2, args, kwargs ? kwargs : Py_None);
    PyObject *m = pair ? PyMarshal_WriteObjectToString(pair, Py_MARSHAL_VERSION) : NULL;
    Py_XDECREF(pair);
    if (m == NULL) {
        return NULL;
    }
    Py_ssize_t hl = PyBytes_GET_SIZE(head), ml = PyBytes_GET_SIZE(m);
    PyObject *out = PyBytes_FromStringAndSize(NULL, hl + ml);
    if (out != NULL) {
        memcpy(PyBytes_AS_STRING(out), PyBytes_AS_STRING(head), (size_t)hl);
        memcpy(PyBytes_AS_STRING(out) + hl, PyBytes_AS_STRING(m), (size_t)ml);
    }
    Py_DECREF(m);
    return out;
}

PyObject *braid_ip_dumps_task(interp_core_t *core, itask_t *t, PyObject *fn, PyObject *args,
                              PyObject *kwargs)
{
    braid_state *st = core->st;
    if (braid_task_is_plain(st, fn, args, kwargs)) {
        PyObject *head = fn_head(core, fn);
        PyObject *out = head ? plain_payload(head, args, kwargs) : NULL;
        Py_XDECREF(head);
        if (out != NULL) {
            return out;
        }
        PyErr_Clear(); /* e.g. a function pickle cannot find by name: the general path */
    }
    PyObject *out = PyObject_CallFunctionObjArgs(st->ip_dumps_task, fn, args,
                                                 kwargs ? kwargs : Py_None, NULL);
    if (out != NULL && PyTuple_CheckExact(out) && PyTuple_GET_SIZE(out) == 2 &&
        PyList_CheckExact(PyTuple_GET_ITEM(out, 1))) {
        PyObject *data = Py_NewRef(PyTuple_GET_ITEM(out, 0));
        int rc = hold_views(t, PyTuple_GET_ITEM(out, 1));
        Py_DECREF(out);
        if (rc < 0) {
            Py_DECREF(data);
            return NULL;
        }
        out = data;
    }
    if (out != NULL && !PyBytes_Check(out)) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_TypeError, "the task serializer did not return bytes");
        return NULL;
    }
    return out;
}

PyObject *braid_ip_loads_reply(braid_state *st, itask_t *t)
{
    if (t->len > 0 && t->reply[0] == IP_MARSHAL_TAG) {
        return PyMarshal_ReadObjectFromString(t->reply + 1, (Py_ssize_t)t->len - 1);
    }
    PyObject *view = PyMemoryView_FromMemory(t->reply, (Py_ssize_t)t->len, PyBUF_READ);
    PyObject *obj = view ? PyObject_CallOneArg(st->pickle_loads, view) : NULL;
    Py_XDECREF(view);
    return obj;
}

#endif /* BRAID_HAVE_INTERPRETERS */
