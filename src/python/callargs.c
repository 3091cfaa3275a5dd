/*
 * callargs.c — unpacking submit(fn, /, *args, **kwargs) from a vectorcall,
 * shared by both pools' submit().
 */
#include "braidpy.h"

int braid_unpack_submit(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **fn,
                        PyObject **call_args, PyObject **call_kwargs)
{
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "submit() missing 1 required positional argument: 'fn'");
        return -1;
    }
    if (!PyCallable_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "submit() needs a callable, not %.100s", Py_TYPE(args[0])->tp_name);
        return -1;
    }
    PyObject *tuple = PyTuple_New(nargs - 1);
    if (tuple == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 1; i < nargs; i++) {
        PyTuple_SET_ITEM(tuple, i - 1, Py_NewRef(args[i]));
    }
    PyObject *kwargs = NULL;
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        kwargs = PyDict_New();
        for (Py_ssize_t i = 0; kwargs && i < PyTuple_GET_SIZE(kwnames); i++) {
            if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
                Py_CLEAR(kwargs);
            }
        }
        if (kwargs == NULL) {
            Py_DECREF(tuple);
            return -1;
        }
    }
    *fn = args[0];
    *call_args = tuple;
    *call_kwargs = kwargs;
    return 0;
}
