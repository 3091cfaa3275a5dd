/*
 * errors.c — the one place that turns an engine -errno into a Python
 * exception. Everything in the extension that gets a negative errno from
 * braid.h and reports it as a failure of the system raises through here.
 *
 * The exception is what the OS error is: OSError(errno, "what: strerror"),
 * or without a "what" exactly the socket module's OSError(errno, strerror),
 * whose constructor picks the subclass (ConnectionResetError,
 * BrokenPipeError, InterruptedError, TimeoutError, ...) exactly as for the
 * stdlib's own calls, with ENOMEM as MemoryError. An errno that means the
 * caller's mistake or a closed object (EINVAL, ESHUTDOWN) is not mapped
 * here: the call site knows what it means and raises ValueError or
 * RuntimeError with its own words.
 */
#include "braidpy.h"

#include <errno.h>

PyObject *braid_raise_oserror(int err, const char *what)
{
    if (err == -ENOMEM) {
        return PyErr_NoMemory();
    }
    if (what == NULL) {
        /* the exception the socket and os modules raise for this errno,
         * word for word: OSError(errno, strerror(errno)) */
        errno = -err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *message = PyUnicode_FromFormat("%s: %s", what, br_strerror(err));
    if (message == NULL) {
        return NULL;
    }
    PyObject *args = Py_BuildValue("(iN)", -err, message);
    if (args != NULL) {
        PyErr_SetObject(PyExc_OSError, args);
        Py_DECREF(args);
    }
    return NULL;
}
