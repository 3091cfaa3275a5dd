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
#include "compat.h"

#include <errno.h>
#include <string.h>

PyObject *braid_socket_error(int err)
{
    /* strerror's words decoded as CPython decodes them (not PyErr_SetFromErrno,
     * which runs signal handlers for EINTR and reads the global errno) */
    PyObject *message = PyUnicode_DecodeLocale(strerror(-err), "surrogateescape");
    PyObject *args = message ? Py_BuildValue("(iN)", -err, message) : NULL;
    PyObject *exc = args ? PyObject_Call(PyExc_OSError, args, NULL) : NULL;
    Py_XDECREF(args);
    return exc;
}

PyObject *braid_raise_oserror(int err, const char *what)
{
    if (err == -ENOMEM) {
        return PyErr_NoMemory();
    }
    if (what == NULL) {
        PyObject *exc = braid_socket_error(err);
        if (exc != NULL) {
            PyErr_SetRaisedException(exc);
        }
        return NULL;
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
