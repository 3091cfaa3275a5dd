/* compat.h — the few CPython APIs braid uses that are newer than 3.11. */
#ifndef BRAID_COMPAT_H
#define BRAID_COMPAT_H

#include <Python.h>

#if PY_VERSION_HEX < 0x030C0000
/* 3.12's PyErr_GetRaisedException: the current exception, normalized, with
 * its traceback attached; clears the indicator. */
static inline PyObject *PyErr_GetRaisedException(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
        Py_DECREF(tb);
    }
    Py_DECREF(type);
    return value;
}

/* Steals `exc` (may be NULL, which clears the indicator). */
static inline void PyErr_SetRaisedException(PyObject *exc)
{
    if (exc == NULL) {
        PyErr_Clear();
        return;
    }
    PyErr_Restore(Py_NewRef(Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
}
#endif

#if PY_VERSION_HEX < 0x030D0000
/* 3.13's PyWeakref_GetRef: 1 and a new reference, 0 (dead, *obj NULL), or
 * -1 with an exception. */
static inline int PyWeakref_GetRef(PyObject *ref, PyObject **obj)
{
    PyObject *o = PyWeakref_GetObject(ref);
    *obj = o == NULL || o == Py_None ? NULL : Py_NewRef(o);
    return o == NULL ? -1 : o != Py_None;
}
#endif

#endif /* BRAID_COMPAT_H */
