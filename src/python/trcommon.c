/*
 * trcommon.c — what braid.Loop's C transports (socktransport.c,
 * dgramtransport.c, pipetransport.c) do alike, as asyncio's
 * _SelectorTransport does it: the exception handler's context,
 * _fatal_error's report, the write-buffer limits' arguments, the
 * contextvars context of engine-run callbacks; and how their types are
 * made, a C tail after the fields of asyncio's classes.
 */
#include "braidpy.h"
#include "compat.h"

#include <structmember.h> /* PyMemberDescrObject */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

PyObject *braid_import_attr(const char *module, const char *name)
{
    PyObject *m = PyImport_ImportModule(module);
    PyObject *v = m ? PyObject_GetAttrString(m, name) : NULL;
    Py_XDECREF(m);
    return v;
}

/* The socket module's form of a sockaddr (makesockaddr): (host, port),
 * (host, port, flowinfo, scope_id), a path, an abstract name as bytes. */
PyObject *braid_address_object(const struct sockaddr *sa, socklen_t len)
{
    char host[INET6_ADDRSTRLEN];
    if (len == 0) {
        Py_RETURN_NONE;
    }
    switch (sa->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        return Py_BuildValue("(si)", host, ntohs(a->sin_port));
    }
    case AF_INET6: {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        return Py_BuildValue("(siII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo), a->sin6_scope_id);
    }
    case AF_UNIX: {
        const struct sockaddr_un *a = (const struct sockaddr_un *)sa;
        size_t n = len > offsetof(struct sockaddr_un, sun_path) ? len - offsetof(struct sockaddr_un, sun_path) : 0;
        if (n > 0 && a->sun_path[0] == '\0') {
            return PyBytes_FromStringAndSize(a->sun_path, (Py_ssize_t)n); /* Linux's abstract namespace */
        }
        return PyUnicode_DecodeFSDefaultAndSize(a->sun_path, (Py_ssize_t)strnlen(a->sun_path, n));
    }
    default:
        return PyErr_Format(PyExc_OSError, "address family %d is not supported", sa->sa_family);
    }
}

PyObject *braid_transport_exception(PyObject *loop, PyObject *message, PyObject *exc, PyObject *transport,
                                    PyObject *protocol)
{
    PyObject *ctx = Py_BuildValue("{s:O,s:O,s:O,s:O}", "message", message, "exception", exc, "transport", transport,
                                  "protocol", protocol);
    PyObject *r = ctx ? PyObject_CallMethod(loop, "call_exception_handler", "O", ctx) : NULL;
    Py_XDECREF(ctx);
    return r;
}

int braid_transport_report_fatal(PyObject *loop, PyObject *transport, PyObject *protocol, PyObject *exc,
                                 const char *message)
{
    if (PyErr_GivenExceptionMatches(exc, PyExc_OSError)) {
        /* asyncio logs an OSError only in debug mode, with the traceback */
        PyObject *debug = PyObject_CallMethod(loop, "get_debug", NULL);
        int on = debug ? PyObject_IsTrue(debug) : 0;
        Py_XDECREF(debug);
        PyErr_Clear();
        if (on > 0) {
            PyObject *logger = braid_import_attr("asyncio.log", "logger");
            PyObject *r = logger ? PyObject_CallMethod(logger, "debug", "sOs", "%r: %s", transport, message) : NULL;
            Py_XDECREF(r);
            Py_XDECREF(logger);
            PyErr_Clear();
        }
        return 0;
    }
    PyObject *msg = PyUnicode_FromString(message);
    PyObject *r = msg ? braid_transport_exception(loop, msg, exc, transport, protocol) : NULL;
    Py_XDECREF(msg);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

int braid_parse_write_limits(PyObject *args, PyObject *kwds, size_t *high_out, size_t *low_out)
{
    static char *kwlist[] = {"high", "low", NULL};
    PyObject *high_obj = Py_None, *low_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:set_write_buffer_limits", kwlist, &high_obj, &low_obj)) {
        return -1;
    }
    Py_ssize_t high, low;
    if (high_obj == Py_None) {
        if (low_obj == Py_None) {
            high = 64 * 1024;
        } else {
            if ((low = PyNumber_AsSsize_t(low_obj, PyExc_OverflowError)) == -1 && PyErr_Occurred()) {
                return -1;
            }
            high = 4 * low;
        }
    } else if ((high = PyNumber_AsSsize_t(high_obj, PyExc_OverflowError)) == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (low_obj == Py_None) {
        low = high / 4;
    } else if ((low = PyNumber_AsSsize_t(low_obj, PyExc_OverflowError)) == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (!(high >= low && low >= 0)) {
        PyErr_Format(PyExc_ValueError, "high (%zd) must be >= low (%zd) must be >= 0", high, low);
        return -1;
    }
    *high_out = (size_t)high;
    *low_out = (size_t)low;
    return 0;
}

int braid_transport_later(PyObject *loop, PyObject *transport, const char *method)
{
    if (loop == NULL || !braid_loop_ready_before_poll(loop)) {
        return 0;
    }
    PyObject *fn = PyObject_GetAttrString(transport, method);
    int rc = fn ? braid_loop_call_soon_io(loop, &fn, 1) : -1;
    Py_XDECREF(fn);
    if (rc < 0) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

void braid_transport_call_flow(PyObject *loop, PyObject *transport, PyObject *protocol, const char *method)
{
    Py_INCREF(protocol); /* the call may set another protocol on the transport */
    Py_INCREF(loop);
    PyObject *r = PyObject_CallMethod(protocol, method, NULL);
    if (r != NULL) {
        Py_DECREF(r);
        Py_DECREF(protocol);
        Py_DECREF(loop);
        return;
    }
    PyObject *exc = PyErr_GetRaisedException();
    if (PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt) ||
        PyErr_GivenExceptionMatches(exc, PyExc_SystemExit)) {
        braid_loop_raise_later(loop, exc); /* out of run_forever, as asyncio's */
        Py_DECREF(protocol);
        Py_DECREF(loop);
        return;
    }
    PyObject *msg = PyUnicode_FromFormat("protocol.%s() failed", method);
    PyObject *h = msg ? braid_transport_exception(loop, msg, exc, transport, protocol) : NULL;
    if (h == NULL) {
        PyErr_WriteUnraisable(transport);
    }
    Py_XDECREF(h);
    Py_XDECREF(msg);
    Py_DECREF(exc);
    Py_DECREF(protocol);
    Py_DECREF(loop);
}

int braid_trctx_init(braid_trctx_t *c)
{
    c->entered = 0;
    c->ctx = PyContext_CopyCurrent();
    return c->ctx ? 0 : -1;
}

int braid_trctx_renew(braid_trctx_t *c)
{
    if (c->entered) {
        return 0; /* the current context is this one: the same values */
    }
    PyObject *ctx = PyContext_CopyCurrent();
    if (ctx == NULL) {
        return -1;
    }
    Py_XSETREF(c->ctx, ctx);
    return 0;
}

int braid_trctx_enter(braid_trctx_t *c, PyObject *only_while_polling)
{
    if (c->ctx == NULL || c->entered || (only_while_polling != NULL && !braid_loop_polling(only_while_polling))) {
        return 0;
    }
    if (PyContext_Enter(c->ctx) < 0) {
        PyErr_Clear(); /* current elsewhere already: the callback runs where it is */
        return 0;
    }
    c->entered = 1;
    return 1;
}

void braid_trctx_leave(braid_trctx_t *c, int entered)
{
    if (!entered) {
        return;
    }
    c->entered = 0;
    PyObject *exc = PyErr_GetRaisedException();
    if (PyContext_Exit(c->ctx) < 0) {
        PyErr_WriteUnraisable(c->ctx);
    }
    PyErr_SetRaisedException(exc);
}

Py_ssize_t braid_transport_extra_offset(void)
{
    PyObject *base = braid_import_attr("asyncio.transports", "BaseTransport");
    PyObject *descr = base ? PyObject_GetAttrString(base, "_extra") : NULL;
    Py_ssize_t offset = -1;
    if (descr != NULL && PyObject_TypeCheck(descr, &PyMemberDescr_Type)) {
        offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    } else if (descr != NULL) {
        PyErr_SetString(PyExc_TypeError, "asyncio.BaseTransport._extra is not a slot");
    }
    Py_XDECREF(descr);
    Py_XDECREF(base);
    return offset;
}

PyObject *braid_transport_writelines(PyObject *self, PyObject *lines, PyObject *(*write)(PyObject *, PyObject *))
{
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    PyObject *data = empty ? PyObject_CallMethod(empty, "join", "O", lines) : NULL;
    Py_XDECREF(empty);
    if (data == NULL) {
        return NULL;
    }
    PyObject *r = write(self, data);
    Py_DECREF(data);
    return r;
}

/* The transports' specs, member tables and offsets are process-wide (the
 * same values in every interpreter: one asyncio source), and two
 * interpreters with GILs of their own may make their first loop at once:
 * they are written, and the types made from them, under this lock. */
static pthread_mutex_t tail_type_mu = PTHREAD_MUTEX_INITIALIZER;

PyTypeObject *braid_transport_make_tail_type(PyObject *module, const braid_tail_type_t *how)
{
    Py_ssize_t nbases = 0;
    while (nbases < BRAID_TAIL_BASES && how->bases[nbases] != NULL) {
        nbases++;
    }
    PyTypeObject *tp = NULL;
    PyObject *bases = PyTuple_New(nbases);
    if (bases == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nbases; i++) {
        PyObject *base = braid_import_attr("asyncio.transports", how->bases[i]);
        if (base == NULL) {
            goto done;
        }
        PyTuple_SET_ITEM(bases, i, base);
    }
    Py_ssize_t extra = braid_transport_extra_offset();
    if (extra < 0) {
        goto done;
    }
    Py_ssize_t tail = ((PyTypeObject *)PyTuple_GET_ITEM(bases, 0))->tp_basicsize;
    /* waited for without this interpreter's GIL: making the type may run
     * Python code (a collection's finalizers) that lets the GIL go to a
     * thread of this interpreter that is waiting here */
    if (pthread_mutex_trylock(&tail_type_mu) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&tail_type_mu);
        Py_END_ALLOW_THREADS
    }
    *how->extra_offset = extra;
    *how->tail_offset = tail;
    how->spec->basicsize = (int)(tail + (Py_ssize_t)how->tail_size);
    for (int i = 0; i < BRAID_TAIL_MEMBERS && how->members[i].name != NULL; i++) {
        how->members[i].offset = tail + how->member_at[i];
    }
    tp = (PyTypeObject *)PyType_FromModuleAndSpec(module, how->spec, bases);
    pthread_mutex_unlock(&tail_type_mu);
done:
    Py_DECREF(bases); /* a tuple not filled to the end lets go of what it holds */
    return tp;
}
