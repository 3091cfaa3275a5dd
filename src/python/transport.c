/*
 * transport.c — _StreamTransportFast: the hot paths of braid.Loop's socket
 * transport (TCP and Unix streams) in C.
 *
 * braid.Loop's socket transport (python/braid/_loop.py) is asyncio's own
 * _SelectorSocketTransport with this type first in its bases. The type has
 * no instance layout of its own, so it mixes with asyncio.Transport (whose
 * layout is its `_extra` slot); it replaces the two methods that run for
 * every message:
 *
 *   _read_ready()  recv() into one reusable buffer per interpreter and hand
 *                  the protocol an exact-size bytes object. asyncio reads
 *                  into a new max_size (256 KiB) bytes object each time and
 *                  shrinks it: an mmap, mremap and munmap per message.
 *   write(data)    send() at once when nothing is buffered; anything else
 *                  (a partial or refused send, a write while buffered, after
 *                  write_eof, during sendfile, after the connection was lost,
 *                  a type asyncio rejects) goes to asyncio's write, so the
 *                  state machine of buffering, backpressure, flow control
 *                  and closing stays asyncio's, version by version.
 *
 * Both read the transport's state from the attributes asyncio keeps
 * (_conn_lost, _sock_fd, _protocol, _buffer, ...), so the two halves never
 * disagree. Errors go where asyncio sends them: OSErrors and protocol
 * exceptions to _fatal_error(), KeyboardInterrupt/SystemExit up the loop.
 */
#include "braidpy.h"
#include "compat.h"

#include <errno.h>
#include <sys/socket.h>

/* Reads up to this much per recv(), like asyncio's max_size. */
#define READ_BUF_SIZE (256 * 1024)

enum {
    N_CONN_LOST,
    N_BUFFERED,
    N_SOCK_FD,
    N_PROTOCOL,
    N_DATA_RECEIVED,
    N_FATAL_ERROR,
    N_ON_EOF,
    N_GET_BUFFER_READ,
    N_EOF,
    N_EMPTY_WAITER,
    N_BUFFER,
    N_WRITE_SLOW,
    N_COUNT
};
_Static_assert(N_COUNT == BRAID_TRANSPORT_NAMES, "braidpy.h sizes the names");

static const char *const name_text[N_COUNT] = {
    [N_CONN_LOST] = "_conn_lost",
    [N_BUFFERED] = "_braid_buffered",
    [N_SOCK_FD] = "_sock_fd",
    [N_PROTOCOL] = "_protocol",
    [N_DATA_RECEIVED] = "data_received",
    [N_FATAL_ERROR] = "_fatal_error",
    [N_ON_EOF] = "_read_ready__on_eof",
    [N_GET_BUFFER_READ] = "_read_ready__get_buffer",
    [N_EOF] = "_eof",
    [N_EMPTY_WAITER] = "_empty_waiter",
    [N_BUFFER] = "_buffer",
    [N_WRITE_SLOW] = "_braid_write_slow",
};

/* The attribute as a truth value: 1, 0, -1 on error. */
static int attr_true(PyObject *self, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(self, name);
    if (v == NULL) {
        return -1;
    }
    int t = PyObject_IsTrue(v);
    Py_DECREF(v);
    return t;
}

static int attr_fd(PyObject *self, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(self, name);
    if (v == NULL) {
        return -1;
    }
    long fd = PyLong_AsLong(v);
    Py_DECREF(v);
    if (fd < 0 || fd > INT_MAX) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "the transport has no file descriptor");
        }
        return -1;
    }
    return (int)fd;
}

/* The exception now raised, handed to self._fatal_error(exc, message) as
 * asyncio's transports do; KeyboardInterrupt and SystemExit propagate. */
static PyObject *fatal_error(braid_state *st, PyObject *self, const char *message)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        return NULL;
    }
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *msg = PyUnicode_FromString(message);
    PyObject *r = NULL;
    if (msg != NULL) {
        PyObject *args[] = {self, exc, msg};
        r = PyObject_VectorcallMethod(st->transport_names[N_FATAL_ERROR], args,
                                      3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(msg);
    }
    Py_DECREF(exc);
    return r;
}

static PyObject *call_method0(braid_state *st, PyObject *self, int name)
{
    return PyObject_VectorcallMethod(st->transport_names[name], &self, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

static PyObject *fast_read_ready(PyObject *self, PyTypeObject *cls, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    braid_state *st = PyType_GetModuleState(cls);
    int t = attr_true(self, st->transport_names[N_CONN_LOST]);
    if (t != 0) {
        return t < 0 ? NULL : Py_NewRef(Py_None);
    }
    if ((t = attr_true(self, st->transport_names[N_BUFFERED])) != 0) {
        /* a BufferedProtocol reads into its own buffer: asyncio's path */
        return t < 0 ? NULL : call_method0(st, self, N_GET_BUFFER_READ);
    }
    int fd = attr_fd(self, st->transport_names[N_SOCK_FD]);
    if (fd < 0) {
        return NULL;
    }
    if (st->read_buf == NULL && (st->read_buf = PyMem_Malloc(READ_BUF_SIZE)) == NULL) {
        return PyErr_NoMemory();
    }
    ssize_t n = recv(fd, st->read_buf, READ_BUF_SIZE, 0);
    if (n < 0) {
        int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) {
            Py_RETURN_NONE;
        }
        braid_raise_oserror(-err, "reading from the socket");
        return fatal_error(st, self, "Fatal read error on socket transport");
    }
    if (n == 0) {
        return call_method0(st, self, N_ON_EOF);
    }
    PyObject *data = PyBytes_FromStringAndSize(st->read_buf, n);
    if (data == NULL) {
        return NULL;
    }
    PyObject *protocol = PyObject_GetAttr(self, st->transport_names[N_PROTOCOL]);
    if (protocol == NULL) {
        Py_DECREF(data);
        return NULL;
    }
    PyObject *cargs[] = {protocol, data};
    PyObject *r = PyObject_VectorcallMethod(st->transport_names[N_DATA_RECEIVED], cargs,
                                            2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(protocol);
    Py_DECREF(data);
    if (r == NULL) {
        return fatal_error(st, self, "Fatal error: protocol.data_received() call failed.");
    }
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* 1 when a send may be tried now: nothing buffered, no write_eof, no
 * sendfile, connection not lost. 0 sends asyncio's way; -1 error. */
static int may_send_now(braid_state *st, PyObject *self)
{
    static const int must_be_false[] = {N_EOF, N_CONN_LOST, N_BUFFER};
    for (size_t i = 0; i < sizeof must_be_false / sizeof must_be_false[0]; i++) {
        int t = attr_true(self, st->transport_names[must_be_false[i]]);
        if (t != 0) {
            return t < 0 ? -1 : 0;
        }
    }
    PyObject *w = PyObject_GetAttr(self, st->transport_names[N_EMPTY_WAITER]);
    if (w == NULL) {
        return -1;
    }
    int none = w == Py_None;
    Py_DECREF(w);
    return none;
}

static PyObject *write_slow(braid_state *st, PyObject *self, PyObject *data)
{
    PyObject *args[] = {self, data};
    return PyObject_VectorcallMethod(st->transport_names[N_WRITE_SLOW], args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

static PyObject *fast_write(PyObject *self, PyTypeObject *cls, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    braid_state *st = PyType_GetModuleState(cls);
    if (nargs != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "write() takes exactly one argument (data)");
        return NULL;
    }
    PyObject *data = args[0];
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
        return write_slow(st, self, data); /* asyncio's TypeError */
    }
    int ok = may_send_now(st, self);
    if (ok <= 0) {
        return ok < 0 ? NULL : write_slow(st, self, data);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear(); /* a non-contiguous memoryview: asyncio's way */
        return write_slow(st, self, data);
    }
    if (view.len == 0) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    int fd = attr_fd(self, st->transport_names[N_SOCK_FD]);
    if (fd < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    ssize_t n = send(fd, view.buf, (size_t)view.len, MSG_NOSIGNAL);
    int err = n < 0 ? errno : 0;
    PyObject *r;
    if (n == view.len) {
        r = Py_NewRef(Py_None);
    } else if (n < 0 && err != EAGAIN && err != EWOULDBLOCK && err != EINTR) {
        braid_raise_oserror(-err, "writing to the socket");
        r = fatal_error(st, self, "Fatal write error on socket transport");
    } else {
        /* the kernel took part or none of it: asyncio buffers the rest
         * (its own send of it will most likely say EAGAIN and register
         * the writer) */
        if (n < 0) {
            n = 0;
        }
        PyObject *rest = PyBytes_FromStringAndSize((const char *)view.buf + n, view.len - n);
        r = rest ? write_slow(st, self, rest) : NULL;
        Py_XDECREF(rest);
    }
    PyBuffer_Release(&view);
    return r;
}

static PyMethodDef fast_methods[] = {
    {"_read_ready", (PyCFunction)(void (*)(void))fast_read_ready, METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "The socket is readable: recv() into the reusable buffer, data_received(bytes)."},
    {"write", (PyCFunction)(void (*)(void))fast_write, METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "write(data): sent at once when nothing is buffered, else buffered as asyncio does."},
    {NULL}};

static PyType_Slot fast_slots[] = {
    {Py_tp_methods, fast_methods},
    {Py_tp_doc, "C hot paths of braid.Loop's socket transport; a mixin without instance layout."},
    {0, NULL}};

static PyType_Spec fast_spec = {
    .name = "braid._braid._StreamTransportFast",
    .basicsize = 0, /* the base's (object): no layout of its own, so it mixes with asyncio.Transport */
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = fast_slots,
};

int braid_transport_init_types(PyObject *module, braid_state *st)
{
    if (braid_intern_names(st->transport_names, name_text, N_COUNT) < 0) {
        return -1;
    }
    st->stream_fast_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &fast_spec, NULL);
    if (st->stream_fast_type == NULL) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "_StreamTransportFast", (PyObject *)st->stream_fast_type);
}

int braid_transport_traverse(braid_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->stream_fast_type);
    return braid_visit_names(st->transport_names, N_COUNT, visit, arg);
}

void braid_transport_clear(braid_state *st)
{
    Py_CLEAR(st->stream_fast_type);
    braid_clear_names(st->transport_names, N_COUNT);
    PyMem_Free(st->read_buf);
    st->read_buf = NULL;
}
