/*
 * errors.c — the one place that turns an engine -errno into a Python
 * exception. Everything in the extension that gets a negative errno from
 * braid.h raises through here.
 */
#include "braidpy.h"

#include <errno.h>

PyObject *braid_raise_errno(int err, const char *what)
{
    PyObject *type;
    switch (-err) {
    case ENOMEM:
        return PyErr_NoMemory();
    case EINVAL:
        type = PyExc_ValueError;
        break;
    case ESHUTDOWN:
        type = PyExc_RuntimeError;
        break;
    case ETIMEDOUT:
        type = PyExc_TimeoutError;
        break;
    case EINTR:
        type = PyExc_InterruptedError;
        break;
    case ECONNRESET:
        type = PyExc_ConnectionResetError;
        break;
    case EPIPE:
        type = PyExc_BrokenPipeError;
        break;
    case ECONNREFUSED:
        type = PyExc_ConnectionRefusedError;
        break;
    case ECONNABORTED:
        type = PyExc_ConnectionAbortedError;
        break;
    case EAGAIN:
        type = PyExc_BlockingIOError;
        break;
    default:
        type = PyExc_OSError;
        break;
    }
    if (type == PyExc_OSError || PyType_IsSubtype((PyTypeObject *)type, (PyTypeObject *)PyExc_OSError)) {
        PyObject *args = Py_BuildValue("(is)", -err, br_strerror(err));
        if (args != NULL) {
            PyErr_SetObject(type, args);
            Py_DECREF(args);
        }
        return NULL;
    }
    PyErr_Format(type, "%s: %s", what, br_strerror(err));
    return NULL;
}
