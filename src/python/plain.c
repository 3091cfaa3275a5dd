/*
 * plain.c — the common case of process-pool pickling, done from C.
 *
 * Most tasks are a module-level function with a few numbers or strings,
 * returning the same kind of thing. For those, the general path in
 * braid/_procworker.py (out-of-band buffers, cloudpickle fallback, the
 * interactive-__main__ check) is pure overhead: a Python frame or two per
 * task on each side. Here such payloads go straight to pickle.dumps and
 * pickle.loads; anything else takes the general path.
 */
#include "braidpy.h"

#define PLAIN_BYTES_MAX (1 << 20) /* larger bytes go out of band */

int braid_is_plain(PyObject *o, int depth)
{
    if (o == Py_None || PyBool_Check(o) || PyLong_CheckExact(o) || PyFloat_CheckExact(o) ||
        PyUnicode_CheckExact(o) || PyComplex_CheckExact(o)) {
        return 1;
    }
    if (PyBytes_CheckExact(o)) {
        return PyBytes_GET_SIZE(o) < PLAIN_BYTES_MAX;
    }
    if (PyTuple_CheckExact(o) && depth < 2 && PyTuple_GET_SIZE(o) <= 16) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(o); i++) {
            if (!braid_is_plain(PyTuple_GET_ITEM(o, i), depth + 1)) {
                return 0;
            }
        }
        return 1;
    }
    return 0;
}

/* fn is pickled by reference, which a worker can follow unless it lives
 * in __main__ (then the general path decides how to send it). */
static int plain_callable(braid_state *st, PyObject *fn)
{
    if (!PyFunction_Check(fn) && !PyCFunction_Check(fn)) {
        return 0;
    }
    PyObject *mod = PyObject_GetAttr(fn, st->str_module);
    if (mod == NULL) {
        PyErr_Clear();
        return 0;
    }
    int ok = PyUnicode_Check(mod) && PyUnicode_CompareWithASCIIString(mod, "__main__") != 0;
    Py_DECREF(mod);
    return ok;
}

int braid_task_is_plain(braid_state *st, PyObject *fn, PyObject *args, PyObject *kwargs)
{
    int plain = plain_callable(st, fn) && braid_is_plain(args, 0);
    if (plain && kwargs != NULL) {
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (plain && PyDict_Next(kwargs, &pos, &key, &value)) {
            plain = braid_is_plain(value, 0);
        }
    }
    return plain;
}

PyObject *braid_dumps_task(braid_state *st, PyObject *fn, PyObject *args, PyObject *kwargs,
                           PyObject *keep)
{
    if (braid_task_is_plain(st, fn, args, kwargs)) {
        PyObject *out = PyObject_CallFunction(st->pickle_dumps, "Oi", keep, 5);
        if (out != NULL) {
            return out;
        }
        PyErr_Clear(); /* e.g. a function pickle cannot find by name: general path */
    }
    return PyObject_Call(st->proc_dumps, keep, NULL);
}

PyObject *braid_loads(braid_state *st, PyObject *data)
{
    PyObject *obj = PyObject_CallOneArg(st->pickle_loads, data);
    if (obj != NULL && (PyObject *)Py_TYPE(obj) == st->proc_envelope_type) {
        Py_DECREF(obj); /* out-of-band buffers: the general path maps them */
        obj = PyObject_CallOneArg(st->proc_loads, data);
    }
    return obj;
}
