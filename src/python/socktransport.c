/*
 * socktransport.c — SocketTransport: braid.Loop's transport for TCP and
 * Unix stream sockets, a C object over the engine's br_stream_t.
 *
 * asyncio's socket transport is a Python object with a __dict__, a deque
 * of buffers, an _extra dict of three entries, a TransportSocket and, while
 * it reads, a reader Handle holding a bound method: half a dozen objects
 * per connection that the cyclic collector walks on every full pass, so
 * the cost of accepting a connection grows with the number already open.
 * This one is a single object: the socket's fd belongs to the engine's
 * stream (its write queue and watermarks are C), the reads arrive through
 * the engine's callbacks into the loop's one read buffer, and _extra is
 * filled only when get_extra_info() is first asked. It subclasses
 * asyncio.Transport, with asyncio's behaviour method by method
 * (selector_events._SelectorSocketTransport): the same messages to the
 * exception handler, the same order of protocol calls, the same errors.
 * The order includes where reads and flushes fall among other callbacks:
 * asyncio runs them from reader and writer handles queued behind the
 * callbacks already ready when the poll began, the engine in the poll; so
 * when callbacks were ready, a read (on_alloc) or a flush (on_flush) waits
 * behind them through call_soon (_read_ready, _write_ready).
 *
 * Life cycle (one per transport):
 *
 *   __init__ --> OPEN: connection_made and the first read are scheduled
 *     |  close(): reading stops; once the queue is empty -> connection_lost
 *     |  abort() / a fatal error: queue dropped -> connection_lost(exc)
 *     v
 *   LOST (conn_lost > 0): connection_lost(exc) is scheduled (call_soon) or,
 *     |  after close() with a queue, runs when the queue empties
 *     v
 *   CLOSED: the protocol has been told; the socket object is detached and
 *     |  the engine closes the fd (br_close, at step 5 of the iteration)
 *     v
 *   the stream's close callback: the object may go
 *
 * References: the engine's callbacks reach the object through
 * stream.handle.data, so while the stream may call back (reading, writes
 * queued, or closing) the object holds a reference to itself (self_ref),
 * as asyncio's transport is held by its reader and writer handles. An idle
 * transport nobody holds is collected: its finalizer warns (ResourceWarning,
 * as asyncio's __del__) and closes the stream, keeping the object alive
 * until the engine's close callback.
 */
#include "braidpy.h"
#include "compat.h"

#include <structmember.h> /* T_PYSSIZET: the weak reference list's offset */

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_READ (256 * 1024) /* asyncio's max_size */
#define LOG_THRESHOLD_FOR_CONNLOST_WRITES 5

typedef struct {
    br_stream_t stream;
    PyObject *weakrefs;
    PyObject *dict;          /* made on first assignment: asyncio's transports take
                                attributes (tests replace methods with mocks) */
    PyObject *loop;
    PyObject *stream_loop;   /* the loop the stream is on, held until its close callback */
    PyObject *protocol;
    PyObject *sock;          /* socket.socket; detached once the stream closes its fd */
    PyObject *server;        /* asyncio.Server, or NULL */
    PyObject *empty_waiter;  /* loop.sendfile(): a future set once the queue is empty */
    braid_trctx_t ctx;       /* what the engine's callbacks run the protocol in */
    braid_trctx_t wctx;      /* the write side's: the context of the write() that found the
                                queue empty and left bytes in it (asyncio's writer handle,
                                made by _add_writer inside that write()); NULL: ctx */
    Py_buffer pbuf;          /* BufferedProtocol: get_buffer()'s buffer during a read */
    unsigned conn_lost;
    size_t high, low;
    int fd;
    int family;              /* for the socket object made on demand (accepted connections) */
    unsigned sock_gone : 1;  /* connection_lost ran: no socket object any more */
    unsigned fd_taken : 1;   /* the stream owns the fd */
    unsigned closing : 1, eof : 1, paused : 1, protocol_paused : 1, buffered : 1, connected : 1,
        stream_open : 1, self_ref : 1, has_pbuf : 1, tcp : 1, read_later : 1, write_later : 1;
} tail_t;

/* Written when the first braid.Loop makes the type (braid_transport_make_tail_type). */
static Py_ssize_t tail_offset;   /* asyncio.transports._FlowControlMixin's basicsize: the same in every interpreter */
static Py_ssize_t extra_offset;  /* BaseTransport's _extra slot */

#define TAIL(o) ((tail_t *)((char *)(o) + tail_offset))
#define EXTRA(o) (*(PyObject **)((char *)(o) + extra_offset))
#define SELF(s) ((PyObject *)((char *)(s) - tail_offset)) /* stream is the tail's first member */

static braid_state *tr_state(PyObject *self) { return braid_state_from_type(Py_TYPE(self)); }


/* The socket object: the caller's, or for a connection accepted in C made
 * on first use (get_extra_info("socket"), _sock) around the stream's fd.
 * Borrowed; NULL once the connection is gone (no exception then). */
static PyObject *get_sock(PyObject *self)
{
    tail_t *t = TAIL(self);
    if (t->sock == NULL && !t->sock_gone && t->stream_open && !br_is_closing(&t->stream.handle)) {
        PyObject *socket_type = braid_import_attr("socket", "socket");
        t->sock = socket_type ? PyObject_CallFunction(socket_type, "iiii", t->family, SOCK_STREAM, 0, t->fd) : NULL;
        Py_XDECREF(socket_type);
        /* as asyncio's accepted sockets: non-blocking, and the object knows */
        PyObject *r = t->sock ? PyObject_CallMethod(t->sock, "setblocking", "O", Py_False) : NULL;
        if (r == NULL && t->sock != NULL) {
            PyObject *exc = PyErr_GetRaisedException();
            PyObject *d = PyObject_CallMethod(t->sock, "detach", NULL); /* the fd stays the stream's */
            Py_XDECREF(d);
            Py_CLEAR(t->sock);
            PyErr_SetRaisedException(exc);
        }
        Py_XDECREF(r);
    }
    return t->sock;
}

/* --------------------------------------------------------- references */

/* Holds a reference to itself while the engine may call back. */
static void update_self_ref(PyObject *self)
{
    tail_t *t = TAIL(self);
    int want = t->stream_open && (br_is_active(&t->stream.handle) || br_is_closing(&t->stream.handle));
    if (want && !t->self_ref) {
        t->self_ref = 1;
        Py_INCREF(self);
    } else if (!want && t->self_ref) {
        t->self_ref = 0;
        Py_DECREF(self); /* not the last: the caller has self */
    }
}

static void stream_closed(br_handle_t *h)
{
    PyObject *self = SELF(h);
    tail_t *t = TAIL(self);
    t->stream_open = 0;
    if (t->stream_loop != NULL) {
        braid_loop_count_stream(t->stream_loop, -1);
        Py_CLEAR(t->stream_loop);
    }
    if (t->self_ref) {
        t->self_ref = 0;
        Py_DECREF(self); /* may be the last */
    }
}

/* asyncio reads a socket's names as it makes the transport, so that
 * get_extra_info("sockname"/"peername") still answers after the close; here
 * they are read on first use (a connection accepted in C makes no socket
 * object), and at the close if no one asked: two system calls, not the
 * socket object a first get_extra_info() makes. Best effort: a name that
 * cannot be read is None, as for asyncio. */
static void keep_names(PyObject *self)
{
    tail_t *t = TAIL(self);
    PyObject *extra = EXTRA(self);
    if (extra != NULL && extra != Py_None && !PyDict_Check(extra)) {
        return; /* the user's own */
    }
    if (extra == NULL || extra == Py_None) {
        Py_XSETREF(EXTRA(self), PyDict_New());
        if ((extra = EXTRA(self)) == NULL) {
            PyErr_Clear();
            return;
        }
    }
    const char *keys[2] = {"sockname", "peername"};
    for (int i = 0; i < 2; i++) {
        if (PyDict_GetItemString(extra, keys[i]) != NULL) {
            continue;
        }
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int rc = i == 0 ? getsockname(t->fd, (struct sockaddr *)&ss, &len)
                        : getpeername(t->fd, (struct sockaddr *)&ss, &len);
        PyObject *v = rc == 0 ? braid_address_object((struct sockaddr *)&ss, len) : Py_NewRef(Py_None);
        if (v == NULL || PyDict_SetItemString(extra, keys[i], v) < 0) {
            PyErr_Clear();
        }
        Py_XDECREF(v);
    }
}

/* The socket object lets go of the fd (the engine closes it), then the
 * stream closes. Idempotent. */
static void close_stream(PyObject *self)
{
    tail_t *t = TAIL(self);
    if (!t->stream_open || br_is_closing(&t->stream.handle)) {
        return;
    }
    PyObject *pending = PyErr_GetRaisedException();
    keep_names(self);
    PyErr_SetRaisedException(pending);
    if (t->sock != NULL) {
        PyObject *r = PyObject_CallMethod(t->sock, "detach", NULL);
        if (r == NULL) {
            PyErr_WriteUnraisable(self);
        }
        Py_XDECREF(r);
    }
    if (t->has_pbuf) {
        PyBuffer_Release(&t->pbuf);
        t->has_pbuf = 0;
    }
    if (!t->self_ref) {
        t->self_ref = 1; /* until the close callback */
        Py_INCREF(self);
    }
    (void)br_close(&t->stream.handle, stream_closed);
}

/* --------------------------------------------------------- asyncio's error paths */


static int force_close(PyObject *self, PyObject *exc);
static void on_empty(br_stream_t *s);
static void on_read(br_stream_t *s, const char *buf, ssize_t n);
static int on_alloc(br_stream_t *s, char **buf, size_t *len);
static int on_flush(br_stream_t *s);
static void on_drain(br_stream_t *s, int paused);
static void on_write_error(br_stream_t *s, int err);

/* KeyboardInterrupt or SystemExit out of a protocol callback the engine
 * ran: the loop raises it from run_forever, as asyncio's does. (After
 * connection_lost the transport has forgotten its loop, but its stream's
 * loop stays until the stream's close callback.) Steals exc. */
static void raise_from_loop(PyObject *self, PyObject *exc)
{
    tail_t *t = TAIL(self);
    PyObject *loop = t->loop ? t->loop : t->stream_loop;
    if (loop != NULL) {
        braid_loop_raise_later(loop, exc);
        return;
    }
    PyErr_SetRaisedException(exc);
    PyErr_WriteUnraisable(self);
}
static void fail_empty_waiter(PyObject *self, PyObject *exc);

/* KeyboardInterrupt or SystemExit out of a protocol callback that a method
 * outside the poll ran (write(): pause_writing; _read_ready: the protocol's
 * reads): raised from that method, as asyncio's. -1 then. */
static int reraise(PyObject *self)
{
    tail_t *t = TAIL(self);
    PyObject *loop = t->loop ? t->loop : t->stream_loop;
    return loop ? braid_loop_reraise(loop) : 0;
}

/* asyncio's _fatal_error: an OSError is only logged in debug mode, anything
 * else goes to the exception handler; then the connection is forced shut. */
static int fatal_error(PyObject *self, PyObject *exc, const char *message)
{
    tail_t *t = TAIL(self);
    /* after connection_lost (t->loop cleared) the stream's loop still reports: an
     * exception out of connection_lost run by on_empty (close() once drained) */
    PyObject *loop = t->loop ? t->loop : t->stream_loop;
    if (loop != NULL &&
        braid_transport_report_fatal(loop, self, t->protocol ? t->protocol : Py_None, exc, message) < 0) {
        return -1;
    }
    return force_close(self, exc);
}

/* An exception out of a protocol callback run by the engine: the loop
 * raises KeyboardInterrupt and SystemExit out of run_forever, as asyncio;
 * anything else is the transport's fatal error. Consumes the exception. */
static void callback_failed(PyObject *self, const char *message)
{
    PyObject *exc = PyErr_GetRaisedException();
    if (PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt) ||
        PyErr_GivenExceptionMatches(exc, PyExc_SystemExit)) {
        raise_from_loop(self, exc);
        return;
    }
    if (fatal_error(self, exc, message) < 0) {
        callback_failed(self, message); /* the handler itself raised */
    }
    Py_DECREF(exc);
}

static int schedule(PyObject *self, PyObject *fn, PyObject *arg)
{
    PyObject *r = PyObject_CallMethod(TAIL(self)->loop, "call_soon", "OO", fn, arg);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* asyncio's _force_close: the queue goes, reading stops, connection_lost
 * is scheduled once. */
static int force_close(PyObject *self, PyObject *exc)
{
    tail_t *t = TAIL(self);
    if (t->conn_lost) {
        return 0;
    }
    if (t->stream_open) {
        br_stream_discard(&t->stream);
        (void)br_stream_read_stop(&t->stream);
        update_self_ref(self);
    }
    t->closing = 1;
    t->conn_lost++;
    PyObject *lost = PyObject_GetAttrString(self, "_call_connection_lost");
    int rc = lost ? schedule(self, lost, exc ? exc : Py_None) : -1;
    Py_XDECREF(lost);
    return rc;
}

/* --------------------------------------------------------- reading */

/* asyncio's streams, fed without their Python layer: for a protocol that
 * is exactly asyncio.StreamReaderProtocol and a reader that is exactly a
 * StreamReader, what data_received -> feed_data -> _wakeup_waiter do, on
 * the same attributes: the bytes go straight from the read buffer into the
 * reader's bytearray (no bytes object), the waiter is woken, and reading
 * pauses above twice the reader's limit. Anything else (subclasses, a
 * class whose methods were replaced, a reader at EOF, whose feed_data
 * asserts) takes the Python path. */
enum { S_READER_WR, S_EOF, S_BUFFER, S_WAITER, S_TRANSPORT, S_PAUSED, S_LIMIT, S_CANCELLED, S_SET_RESULT,
       S_PAUSE_READING, S_FEED_DATA, S_WAKEUP_WAITER, S_TRANSPORTS, S_DATA, S_CALL_SOON, S_CONNECTION_MADE,
       S_START_READING, S_MADE_AND_READ, S_COUNT };
_Static_assert(S_COUNT == BRAID_STREAM_NAMES, "braidpy.h sizes the names");
static const char *const stream_name_text[S_COUNT] = {
    [S_READER_WR] = "_stream_reader_wr", [S_EOF] = "_eof", [S_BUFFER] = "_buffer", [S_WAITER] = "_waiter",
    [S_TRANSPORT] = "_transport", [S_PAUSED] = "_paused", [S_LIMIT] = "_limit", [S_CANCELLED] = "cancelled",
    [S_SET_RESULT] = "set_result", [S_PAUSE_READING] = "pause_reading", [S_FEED_DATA] = "feed_data",
    [S_WAKEUP_WAITER] = "_wakeup_waiter", [S_TRANSPORTS] = "_transports", [S_DATA] = "data",
    [S_CALL_SOON] = "call_soon", [S_CONNECTION_MADE] = "connection_made", [S_START_READING] = "_start_reading",
    [S_MADE_AND_READ] = "_connection_made",
};

/* 1 fed, 0 not this protocol (use data_received), -1 with an exception
 * (as feed_data would have raised). */
static int feed_stream_reader(braid_state *st, PyObject *protocol, const char *buf, ssize_t n)
{
    PyObject *const *name = st->stream_names;
    if ((PyObject *)Py_TYPE(protocol) != st->StreamReaderProtocol || st->StreamReader == NULL ||
        _PyType_Lookup(Py_TYPE(protocol), st->str_data_received) != st->stream_methods[0]) {
        return 0;
    }
    PyObject *wr = PyObject_GetAttr(protocol, name[S_READER_WR]);
    if (wr == NULL) {
        return -1;
    }
    if (wr == Py_None || !PyWeakref_CheckRef(wr)) {
        int none = wr == Py_None;
        Py_DECREF(wr);
        return none ? 1 : 0; /* no reader: data_received drops the data too */
    }
    PyObject *reader;
    int alive = PyWeakref_GetRef(wr, &reader);
    Py_DECREF(wr);
    if (alive <= 0) {
        return alive < 0 ? -1 : 1; /* the reader is gone: data_received drops the data too */
    }
    int rc = 0;
    PyObject *eof = NULL, *buffer = NULL, *waiter = NULL, *transport = NULL, *paused = NULL, *limit = NULL;
    if ((PyObject *)Py_TYPE(reader) != st->StreamReader ||
        _PyType_Lookup(Py_TYPE(reader), name[S_FEED_DATA]) != st->stream_methods[1] ||
        _PyType_Lookup(Py_TYPE(reader), name[S_WAKEUP_WAITER]) != st->stream_methods[2] ||
        (eof = PyObject_GetAttr(reader, name[S_EOF])) == NULL ||
        eof != Py_False || (buffer = PyObject_GetAttr(reader, name[S_BUFFER])) == NULL ||
        !PyByteArray_CheckExact(buffer)) {
        rc = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    rc = -1;
    Py_ssize_t old = PyByteArray_GET_SIZE(buffer);
    if (PyByteArray_Resize(buffer, old + n) < 0) { /* BufferError while exported, as extend() */
        goto done;
    }
    memcpy(PyByteArray_AS_STRING(buffer) + old, buf, (size_t)n);
    if ((waiter = PyObject_GetAttr(reader, name[S_WAITER])) == NULL) {
        goto done;
    }
    if (waiter != Py_None) {
        if (PyObject_SetAttr(reader, name[S_WAITER], Py_None) < 0) {
            goto done;
        }
        PyObject *c = PyObject_CallMethodNoArgs(waiter, name[S_CANCELLED]);
        int cancelled = c ? PyObject_IsTrue(c) : -1;
        Py_XDECREF(c);
        PyObject *r = cancelled == 0 ? PyObject_CallMethodOneArg(waiter, name[S_SET_RESULT], Py_None) : NULL;
        Py_XDECREF(r);
        if (cancelled < 0 || (cancelled == 0 && r == NULL)) {
            goto done;
        }
    }
    if ((transport = PyObject_GetAttr(reader, name[S_TRANSPORT])) == NULL ||
        (paused = PyObject_GetAttr(reader, name[S_PAUSED])) == NULL ||
        (limit = PyObject_GetAttr(reader, name[S_LIMIT])) == NULL) {
        goto done;
    }
    int is_paused = PyObject_IsTrue(paused);
    Py_ssize_t lim = PyLong_AsSsize_t(limit);
    if (is_paused < 0 || (lim == -1 && PyErr_Occurred())) {
        goto done;
    }
    if (transport != Py_None && !is_paused && PyByteArray_GET_SIZE(buffer) > 2 * lim) {
        PyObject *r = PyObject_CallMethodNoArgs(transport, name[S_PAUSE_READING]);
        if (r == NULL && PyErr_ExceptionMatches(PyExc_NotImplementedError)) {
            PyErr_Clear();
            if (PyObject_SetAttr(reader, name[S_TRANSPORT], Py_None) < 0) {
                goto done;
            }
        } else if (r == NULL || PyObject_SetAttr(reader, name[S_PAUSED], Py_True) < 0) {
            Py_XDECREF(r);
            goto done;
        } else {
            Py_DECREF(r);
        }
    }
    rc = 1;
done:
    Py_XDECREF(eof);
    Py_XDECREF(buffer);
    Py_XDECREF(waiter);
    Py_XDECREF(transport);
    Py_XDECREF(paused);
    Py_XDECREF(limit);
    Py_DECREF(reader);
    return rc;
}

static void on_eof(PyObject *self)
{
    tail_t *t = TAIL(self);
    PyObject *keep = PyObject_CallMethod(t->protocol, "eof_received", NULL);
    if (keep == NULL) {
        callback_failed(self, "Fatal error: protocol.eof_received() call failed.");
        return;
    }
    int open = PyObject_IsTrue(keep);
    Py_DECREF(keep);
    if (open < 0) {
        callback_failed(self, "Fatal error: protocol.eof_received() call failed.");
    } else if (!open) {
        PyObject *r = PyObject_CallMethod(self, "close", NULL); /* a subclass may have its own */
        if (r == NULL) {
            callback_failed(self, "Fatal error on transport");
        }
        Py_XDECREF(r);
    }
    /* keep_open: reading has stopped already (the engine stops at EOF) */
}

static void on_read_body(br_stream_t *s, const char *buf, ssize_t n)
{
    PyObject *self = SELF(s);
    tail_t *t = TAIL(self);
    Py_INCREF(self); /* the callbacks below may close it */
    if (t->conn_lost) {
        goto out;
    }
    if (n > 0 && t->buffered) {
        if (t->has_pbuf) {
            PyBuffer_Release(&t->pbuf);
            t->has_pbuf = 0;
        }
        PyObject *r = PyObject_CallMethod(t->protocol, "buffer_updated", "n", (Py_ssize_t)n);
        if (r == NULL) {
            callback_failed(self, "Fatal error: protocol.buffer_updated() call failed.");
        }
        Py_XDECREF(r);
    } else if (n > 0) {
        braid_state *st = tr_state(self);
        int fed = feed_stream_reader(st, t->protocol, buf, n);
        PyObject *r = Py_None;
        if (fed == 0) {
            PyObject *data = PyBytes_FromStringAndSize(buf, n);
            r = data ? PyObject_CallMethodOneArg(t->protocol, st->str_data_received, data) : NULL;
            Py_XDECREF(data);
            Py_XDECREF(r);
        }
        if (fed < 0 || r == NULL) {
            callback_failed(self, "Fatal error: protocol.data_received() call failed.");
        }
    } else if (n == 0) {
        if (t->has_pbuf) {
            PyBuffer_Release(&t->pbuf);
            t->has_pbuf = 0;
        }
        on_eof(self);
    } else if (n != -ECANCELED) { /* ECANCELED: get_buffer() failed and said so already */
        if (t->has_pbuf) {
            PyBuffer_Release(&t->pbuf);
            t->has_pbuf = 0;
        }
        braid_raise_oserror((int)n, NULL);
        callback_failed(self, "Fatal read error on socket transport");
    }
out:
    update_self_ref(self);
    Py_DECREF(self);
}

/* Before each read. Order: asyncio reads from a reader handle that the
 * poll puts behind the callbacks already ready, so those run first (a task
 * about to wait on the reader, say, or one that pauses reading); the engine
 * reads in the poll itself. When callbacks were waiting as the poll began
 * (braid_loop_ready_before_poll), this read waits behind them: the bytes
 * stay in the socket and call_soon(_read_ready) reads them, unless the
 * transport was paused or closed meanwhile -- what asyncio's cancelled
 * reader handle does. With nothing ready the read goes on at once.
 * BufferedProtocol: the read goes straight into get_buffer()'s buffer. */
static int on_alloc_body(br_stream_t *s, char **buf, size_t *len)
{
    PyObject *self = SELF(s);
    tail_t *t = TAIL(self);
    if (braid_loop_ready_before_poll(t->loop)) {
        if (!t->read_later) { /* else a _read_ready is on its way */
            t->read_later = braid_transport_later(t->loop, self, "_read_ready");
        }
        if (t->read_later) {
            return BR_STREAM_NOT_NOW;
        }
    }
    if (!t->buffered) {
        return BR_STREAM_LOOP_BUFFER;
    }
    PyObject *b = PyObject_CallMethod(t->protocol, "get_buffer", "i", -1);
    if (b != NULL && PyObject_GetBuffer(b, &t->pbuf, PyBUF_WRITABLE) == 0) {
        t->has_pbuf = 1;
        if (t->pbuf.len == 0) {
            PyBuffer_Release(&t->pbuf);
            t->has_pbuf = 0;
            PyErr_SetString(PyExc_RuntimeError, "get_buffer() returned an empty buffer");
        }
    }
    Py_XDECREF(b);
    if (!t->has_pbuf) {
        Py_INCREF(self);
        callback_failed(self, "Fatal error: protocol.get_buffer() call failed.");
        Py_DECREF(self);
        return -ECANCELED;
    }
    *buf = t->pbuf.buf;
    *len = (size_t)t->pbuf.len;
    return 0;
}

static int start_reading(PyObject *self)
{
    tail_t *t = TAIL(self);
    if (t->closing || t->paused || !t->stream_open) {
        return 0;
    }
    br_stream_set_more_callbacks(&t->stream, on_alloc, on_empty);
    br_stream_set_flush_callback(&t->stream, on_flush);
    int err = br_stream_read_start(&t->stream, on_read, MAX_READ);
    update_self_ref(self);
    if (err < 0) {
        braid_raise_oserror(err, "watching the socket");
        return -1;
    }
    return 0;
}

/* --------------------------------------------------------- writing */

static void flow_call(PyObject *self, const char *method)
{
    tail_t *t = TAIL(self);
    braid_transport_call_flow(t->loop ? t->loop : t->stream_loop, self, t->protocol, method);
}

/* The engine's watermarks, asyncio's pause_writing/resume_writing. */
static void on_drain_body(br_stream_t *s, int paused)
{
    PyObject *self = SELF(s);
    tail_t *t = TAIL(self);
    if (t->protocol == NULL || (int)t->protocol_paused == paused) {
        return;
    }
    t->protocol_paused = paused;
    Py_INCREF(self);
    flow_call(self, paused ? "pause_writing" : "resume_writing");
    Py_DECREF(self);
}

static void on_write_error_body(br_stream_t *s, int err)
{
    PyObject *self = SELF(s);
    Py_INCREF(self);
    braid_raise_oserror(err, NULL);
    PyObject *exc = PyErr_GetRaisedException();
    fail_empty_waiter(self, exc);
    PyErr_SetRaisedException(exc);
    callback_failed(self, "Fatal write error on socket transport");
    update_self_ref(self);
    Py_DECREF(self);
}

/* The queue drained: a sendfile() waiting for it goes on, a close()
 * waiting for it completes (a write_eof() shut the socket already: the
 * engine does). */
static void on_empty_body(br_stream_t *s)
{
    PyObject *self = SELF(s);
    tail_t *t = TAIL(self);
    Py_INCREF(self);
    if (t->empty_waiter != NULL) {
        PyObject *r = PyObject_CallMethod(t->empty_waiter, "done", NULL);
        int done = r ? PyObject_IsTrue(r) : -1;
        Py_XDECREF(r);
        r = done == 0 ? PyObject_CallMethod(t->empty_waiter, "set_result", "O", Py_None) : NULL;
        if (r == NULL && done != 1) {
            PyErr_WriteUnraisable(self);
        }
        Py_XDECREF(r);
    }
    if (t->closing && !t->conn_lost) {
        t->conn_lost++;
        PyObject *r = PyObject_CallMethod(self, "_call_connection_lost", "O", Py_None);
        if (r == NULL) {
            callback_failed(self, "Fatal error on transport");
        }
        Py_XDECREF(r);
    }
    update_self_ref(self);
    Py_DECREF(self);
}

/* A future the empty waiter fails with, if one is set. */
static void fail_empty_waiter(PyObject *self, PyObject *exc)
{
    tail_t *t = TAIL(self);
    if (t->empty_waiter == NULL) {
        return;
    }
    PyObject *r = PyObject_CallMethod(t->empty_waiter, "done", NULL);
    int done = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    r = done == 0 ? PyObject_CallMethod(t->empty_waiter, "set_exception", "O", exc) : NULL;
    if (r == NULL && done != 1) {
        PyErr_WriteUnraisable(self);
    }
    Py_XDECREF(r);
}


/* Before a flush at writable readiness. Order: asyncio writes from a
 * writer handle that the poll puts behind the callbacks already ready, so
 * those run first (a write of theirs joins the same send; resume_writing,
 * or connection_lost once a close has drained, comes after them); the
 * engine flushes in the poll itself. When callbacks were waiting as the
 * poll began, the flush waits behind them as a read does (on_alloc_body):
 * call_soon(_write_ready) flushes. With nothing ready it goes on at once.
 * Nothing here runs the protocol: no context to enter. */
static int on_flush(br_stream_t *s)
{
    tail_t *t = TAIL(SELF(s));
    if (!t->write_later) { /* else a _write_ready is on its way */
        t->write_later = braid_transport_later(t->loop, SELF(s), "_write_ready");
    }
    return t->write_later ? BR_STREAM_NOT_NOW : 0;
}

/* --------------------------------------------------------- the engine's callbacks, in the transport's context */

static PyObject *ctx_loop(tail_t *t) { return t->loop ? t->loop : t->stream_loop; }
static braid_trctx_t *write_ctx(tail_t *t) { return t->wctx.ctx ? &t->wctx : &t->ctx; }

static void on_read(br_stream_t *s, const char *buf, ssize_t n)
{
    BRAID_IN_CONTEXT(SELF(s), &TAIL(SELF(s))->ctx, NULL, on_read_body(s, buf, n));
}

static int on_alloc(br_stream_t *s, char **buf, size_t *len)
{
    tail_t *t = TAIL(SELF(s));
    if (!t->buffered && !(t->loop != NULL && braid_loop_ready_before_poll(t->loop))) {
        return BR_STREAM_LOOP_BUFFER; /* the common read: no Python, no context to enter */
    }
    int rc;
    BRAID_IN_CONTEXT(SELF(s), &t->ctx, NULL, rc = on_alloc_body(s, buf, len));
    return rc;
}

static void on_drain(br_stream_t *s, int paused)
{
    tail_t *t = TAIL(SELF(s));
    BRAID_IN_CONTEXT(SELF(s), write_ctx(t), ctx_loop(t), on_drain_body(s, paused));
}

static void on_write_error(br_stream_t *s, int err)
{
    tail_t *t = TAIL(SELF(s));
    BRAID_IN_CONTEXT(SELF(s), write_ctx(t), ctx_loop(t), on_write_error_body(s, err));
}

static void on_empty(br_stream_t *s)
{
    tail_t *t = TAIL(SELF(s));
    BRAID_IN_CONTEXT(SELF(s), write_ctx(t), ctx_loop(t), on_empty_body(s));
}

/* --------------------------------------------------------- Python methods */

static PyObject *tr_write(PyObject *self, PyObject *data)
{
    tail_t *t = TAIL(self);
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
        return PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not '%.100s'",
                            _PyType_Name(Py_TYPE(data)));
    }
    if (t->eof) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
        return NULL;
    }
    if (t->empty_waiter != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "unable to write; sendfile is in progress");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    int err = 0;
    if (view.len == 0) {
        goto done;
    }
    if (t->conn_lost) {
        if (t->conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES) {
            PyObject *logger = braid_import_attr("asyncio.log", "logger");
            PyObject *r = logger ? PyObject_CallMethod(logger, "warning", "s", "socket.send() raised exception.")
                                 : NULL;
            Py_XDECREF(r);
            Py_XDECREF(logger);
            if (r == NULL) {
                PyBuffer_Release(&view);
                return NULL;
            }
        }
        t->conn_lost++;
        goto done;
    }
    Py_INCREF(self); /* the drain callback may drop the last other reference */
    size_t before = br_stream_queued(&t->stream);
    err = br_stream_write(&t->stream, view.buf, (size_t)view.len);
    if (err == 0 && before == 0 && !t->wctx.entered && br_stream_queued(&t->stream) > 0) {
        /* asyncio's _add_writer: the writer handle copies this write()'s context */
        PyObject *c = PyContext_CopyCurrent();
        if (c == NULL) {
            PyErr_Clear(); /* the transport's context then, rather than fail a write that queued */
        } else {
            Py_XSETREF(t->wctx.ctx, c);
        }
    }
    update_self_ref(self);
    if (err < 0) {
        braid_raise_oserror(err, NULL);
        PyObject *exc = PyErr_GetRaisedException();
        err = fatal_error(self, exc, "Fatal write error on socket transport");
        Py_DECREF(exc);
    }
    Py_DECREF(self);
done:
    PyBuffer_Release(&view);
    if (err < 0 || PyErr_Occurred() || reraise(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *tr_writelines(PyObject *self, PyObject *lines)
{
    return braid_transport_writelines(self, lines, tr_write);
}

static PyObject *tr_write_eof(PyObject *self, PyObject *unused)
{
    tail_t *t = TAIL(self);
    if (t->closing || t->eof) {
        Py_RETURN_NONE;
    }
    t->eof = 1;
    int err = t->stream_open ? br_stream_shutdown(&t->stream) : 0;
    if (err < 0) {
        return braid_raise_oserror(err, "shutting down the socket for writing");
    }
    Py_RETURN_NONE;
}

static PyObject *tr_can_write_eof(PyObject *self, PyObject *unused) { Py_RETURN_TRUE; }

static PyObject *tr_close(PyObject *self, PyObject *unused)
{
    tail_t *t = TAIL(self);
    if (t->closing) {
        Py_RETURN_NONE;
    }
    t->closing = 1;
    if (t->stream_open) {
        (void)br_stream_read_stop(&t->stream);
    }
    if (!t->stream_open || br_stream_queued(&t->stream) == 0) {
        t->conn_lost++;
        PyObject *lost = PyObject_GetAttrString(self, "_call_connection_lost");
        int rc = lost ? schedule(self, lost, Py_None) : -1;
        Py_XDECREF(lost);
        if (rc < 0) {
            return NULL;
        }
    } /* else connection_lost once the queue has drained: on_empty */
    update_self_ref(self);
    Py_RETURN_NONE;
}

static PyObject *tr_abort(PyObject *self, PyObject *unused)
{
    return force_close(self, NULL) < 0 ? NULL : Py_NewRef(Py_None);
}

/* asyncio's SSLProtocol calls this on the transport under it (a fatal error
 * in TLS, a shutdown that timed out; on 3.13 the TLS transport's abort()):
 * part of what asyncio's own classes expect of a loop's socket transport. */
static PyObject *tr_force_close(PyObject *self, PyObject *exc)
{
    return force_close(self, exc == Py_None ? NULL : exc) < 0 ? NULL : Py_NewRef(Py_None);
}

/* asyncio's _call_connection_lost: the protocol hears of it, then the
 * socket goes and the transport forgets the loop's objects. */
static PyObject *tr_call_connection_lost(PyObject *self, PyObject *exc)
{
    tail_t *t = TAIL(self);
    PyObject *r = Py_NewRef(Py_None);
    if (t->connected && t->protocol != NULL) {
        Py_DECREF(r);
        r = PyObject_CallMethod(t->protocol, "connection_lost", "O", exc);
    }
    PyObject *raised = r ? NULL : PyErr_GetRaisedException();
    if (t->empty_waiter != NULL) {
        PyObject *err = PyObject_CallFunction(PyExc_ConnectionError, "s", "Connection is closed by peer");
        if (err != NULL) {
            fail_empty_waiter(self, err);
            Py_DECREF(err);
        }
        PyErr_Clear();
    }
    Py_INCREF(self);
    close_stream(self);
    Py_CLEAR(t->sock);
    t->sock_gone = 1;
    Py_CLEAR(t->protocol);
    PyObject *server = t->server;
    t->server = NULL;
    if (server != NULL) {
#if PY_VERSION_HEX >= 0x030D0000
        PyObject *d = PyObject_CallMethod(server, "_detach", "O", self);
#else
        PyObject *d = PyObject_CallMethod(server, "_detach", NULL);
#endif
        if (d == NULL && raised == NULL) {
            raised = PyErr_GetRaisedException();
        }
        PyErr_Clear();
        Py_XDECREF(d);
        Py_DECREF(server);
    }
    Py_CLEAR(t->loop);
    Py_DECREF(self);
    if (raised != NULL) {
        Py_XDECREF(r);
        PyErr_SetRaisedException(raised);
        return NULL;
    }
    return r;
}

static PyObject *tr_is_closing(PyObject *self, PyObject *unused) { return PyBool_FromLong(TAIL(self)->closing); }

static PyObject *tr_is_reading(PyObject *self, PyObject *unused)
{
    tail_t *t = TAIL(self);
    return PyBool_FromLong(!t->closing && !t->paused);
}

static PyObject *tr_pause_reading(PyObject *self, PyObject *unused)
{
    tail_t *t = TAIL(self);
    if (t->closing || t->paused) {
        Py_RETURN_NONE;
    }
    t->paused = 1;
    if (t->stream_open) {
        (void)br_stream_read_stop(&t->stream);
        update_self_ref(self);
    }
    Py_RETURN_NONE;
}

static PyObject *tr_resume_reading(PyObject *self, PyObject *unused)
{
    tail_t *t = TAIL(self);
    if (t->closing || !t->paused) {
        Py_RETURN_NONE;
    }
    t->paused = 0;
    if (braid_trctx_renew(&t->ctx) < 0) {
        return NULL;
    }
    return start_reading(self) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *tr_start_reading(PyObject *self, PyObject *unused)
{
    return start_reading(self) < 0 ? NULL : Py_NewRef(Py_None);
}

/* A connection accepted in C: connection_made, then reading, in one
 * callback. Reading starts even if connection_made raised (asyncio's
 * reader handle runs after the failed one); the exception then goes to the
 * exception handler through this callback's handle. */
static PyObject *tr_connection_made(PyObject *self, PyObject *unused)
{
    tail_t *t = TAIL(self);
    PyObject *r = t->protocol ? PyObject_CallMethodOneArg(t->protocol, tr_state(self)->stream_names[S_CONNECTION_MADE],
                                                          self)
                              : Py_NewRef(Py_None);
    PyObject *exc = r ? NULL : PyErr_GetRaisedException();
    Py_XDECREF(r);
    if (start_reading(self) < 0) {
        if (exc == NULL) {
            return NULL;
        }
        PyErr_Clear(); /* the protocol's exception is the one to report */
    }
    if (exc != NULL) {
        PyErr_SetRaisedException(exc);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The flush on_flush put behind the ready callbacks. */
static PyObject *tr_write_ready(PyObject *self, PyObject *unused)
{
    tail_t *t = TAIL(self);
    t->write_later = 0;
    if (t->stream_open) {
        Py_INCREF(self);
        /* the protocol calls run where the poll's flush runs them: the transport's context */
        BRAID_IN_CONTEXT(self, write_ctx(t), NULL, (void)br_stream_flush_now(&t->stream));
        update_self_ref(self);
        int rc = reraise(self);
        Py_DECREF(self);
        if (rc < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* The read on_alloc put behind the ready callbacks. */
static PyObject *tr_read_ready(PyObject *self, PyObject *unused)
{
    tail_t *t = TAIL(self);
    t->read_later = 0;
    if (!t->conn_lost && !t->closing && !t->paused && t->stream_open) {
        Py_INCREF(self);
        (void)br_stream_read_now(&t->stream); /* -EINVAL: reading stopped (EOF seen) */
        int rc = reraise(self);
        Py_DECREF(self);
        if (rc < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *tr_get_write_buffer_size(PyObject *self, PyObject *unused)
{
    tail_t *t = TAIL(self);
    return PyLong_FromSize_t(t->stream_open ? br_stream_queued(&t->stream) : 0);
}

static PyObject *tr_get_write_buffer_limits(PyObject *self, PyObject *unused)
{
    tail_t *t = TAIL(self);
    return Py_BuildValue("(nn)", (Py_ssize_t)t->low, (Py_ssize_t)t->high);
}

static PyObject *tr_set_write_buffer_limits(PyObject *self, PyObject *args, PyObject *kwds)
{
    tail_t *t = TAIL(self);
    if (braid_parse_write_limits(args, kwds, &t->high, &t->low) < 0) {
        return NULL;
    }
    if (t->stream_open) {
        Py_INCREF(self);
        (void)br_stream_set_limits(&t->stream, t->high, t->low); /* may pause the protocol */
        Py_DECREF(self);
    }
    return reraise(self) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *tr_get_protocol(PyObject *self, PyObject *unused)
{
    PyObject *p = TAIL(self)->protocol;
    return Py_NewRef(p ? p : Py_None);
}

static PyObject *tr_set_protocol(PyObject *self, PyObject *protocol)
{
    tail_t *t = TAIL(self);
    braid_state *st = tr_state(self);
    int buffered = st->BufferedProtocol ? PyObject_IsInstance(protocol, st->BufferedProtocol) : 0;
    if (buffered < 0) {
        return NULL;
    }
    Py_XSETREF(t->protocol, Py_NewRef(protocol));
    t->connected = 1;
    t->buffered = buffered; /* on_alloc reads it before each read */
    Py_RETURN_NONE;
}

/* _extra, made on first use: an idle connection holds no dict, no
 * tuples. get_extra_info() is asyncio's own (BaseTransport's, reading
 * self._extra), so a patch or an override of it applies here too. */
static PyObject *tr_get_extra(PyObject *self, void *c)
{
    PyObject *extra = EXTRA(self);
    if (extra == NULL || extra == Py_None) {
        Py_XSETREF(EXTRA(self), PyDict_New());
        extra = EXTRA(self);
        if (extra == NULL) {
            return NULL;
        }
    }
    if (!PyDict_Check(extra)) {
        return Py_NewRef(extra); /* what was assigned, as asyncio's slot gives it */
    }
    PyObject *sock = PyDict_GetItemString(extra, "socket") == NULL ? get_sock(self) : NULL;
    if (sock == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if (sock != NULL) {
        PyObject *trsock = braid_import_attr("asyncio.trsock", "TransportSocket");
        PyObject *ts = trsock ? PyObject_CallOneArg(trsock, sock) : NULL;
        Py_XDECREF(trsock);
        if (ts == NULL || PyDict_SetItemString(extra, "socket", ts) < 0) {
            Py_XDECREF(ts);
            return NULL;
        }
        Py_DECREF(ts);
        const char *keys[2] = {"sockname", "peername"}, *meth[2] = {"getsockname", "getpeername"};
        for (int i = 0; i < 2; i++) {
            if (PyDict_GetItemString(extra, keys[i]) != NULL) {
                continue;
            }
            PyObject *v = PyObject_CallMethod(sock, meth[i], NULL);
            if (v == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_OSError)) {
                    return NULL;
                }
                PyErr_Clear();
                v = Py_NewRef(Py_None);
            }
            int rc = PyDict_SetItemString(extra, keys[i], v);
            Py_DECREF(v);
            if (rc < 0) {
                return NULL;
            }
        }
    }
    return Py_NewRef(extra);
}

static int tr_set_extra(PyObject *self, PyObject *value, void *c)
{
    Py_XSETREF(EXTRA(self), Py_XNewRef(value));
    return 0;
}

static PyObject *tr_repr(PyObject *self)
{
    tail_t *t = TAIL(self);
    const char *name = Py_TYPE(self)->tp_name;
    if (t->sock_gone) {
        return PyUnicode_FromFormat("<%s closed>", name);
    }
    const char *state = t->closing ? " closing" : "";
    const char *reading = t->stream_open && br_is_active(&t->stream.handle) && !t->paused && !t->closing
                              ? "polling" : "idle";
    size_t queued = t->stream_open ? br_stream_queued(&t->stream) : 0;
    return PyUnicode_FromFormat("<%s%s fd=%d read=%s write=<%s, bufsize=%zu>>", name, state, t->fd, reading,
                                queued ? "polling" : "idle", queued);
}

/* asyncio's _set_nodelay for TCP sockets (a stream socket: checked). */
static int set_nodelay(int fd, int family)
{
    int one = 1;
    socklen_t len = sizeof family;
    if (family < 0 && getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &len) < 0) {
        return 0;
    }
    if (family != AF_INET && family != AF_INET6) {
        return 0;
    }
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as asyncio: best effort */
    return 1;
}

static int setup(PyObject *self, PyObject *loop, br_loop_t *core, int fd, int family, PyObject *sock,
                 PyObject *protocol, PyObject *waiter, PyObject *extra, PyObject *server);

/* SocketTransport(loop, sock, protocol, waiter=None, extra=None, server=None) */
static int tr_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"loop", "sock", "protocol", "waiter", "extra", "server", NULL};
    PyObject *loop, *sock, *protocol, *waiter = Py_None, *extra = Py_None, *server = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|OOO:SocketTransport", kwlist, &loop, &sock, &protocol,
                                     &waiter, &extra, &server)) {
        return -1;
    }
    tail_t *t = TAIL(self);
    if (t->loop != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SocketTransport.__init__ called twice");
        return -1;
    }
    br_loop_t *core = braid_loop_core(loop);
    if (core == NULL) {
        return -1;
    }
    if (extra != Py_None && !PyDict_Check(extra)) {
        PyErr_SetString(PyExc_TypeError, "extra must be a dict or None");
        return -1;
    }
    PyObject *fdobj = PyObject_CallMethod(sock, "fileno", NULL);
    long fdl = fdobj ? PyLong_AsLong(fdobj) : -1;
    int fd = fdl >= 0 && fdl <= INT_MAX ? (int)fdl : -1;
    Py_XDECREF(fdobj);
    if (fd < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "the socket is closed");
        }
        return -1;
    }
    int type = 0;
    socklen_t tlen = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != SOCK_STREAM) {
        PyErr_Format(PyExc_ValueError, "SocketTransport needs a stream socket, fd %d is not one", fd);
        return -1;
    }
    return setup(self, loop, core, fd, -1, sock, protocol, waiter, extra, server);
}

/* The transport's set-up, for __init__ (a socket object) and for a
 * connection accepted in C (sock NULL, family known). 0, or -1 with an
 * exception; t->fd_taken says whether the stream took the fd (then it is
 * closed on failure; else it is still the caller's). */
static int setup(PyObject *self, PyObject *loop, br_loop_t *core, int fd, int family, PyObject *sock,
                 PyObject *protocol, PyObject *waiter, PyObject *extra, PyObject *server)
{
    tail_t *t = TAIL(self);
    if (braid_trctx_init(&t->ctx) < 0) {
        return -1;
    }
    t->loop = Py_NewRef(loop);
    t->sock = Py_XNewRef(sock);
    t->fd = fd;
    t->family = family;
    t->high = 64 * 1024;
    t->low = 16 * 1024;
    if (extra != Py_None) {
        Py_XSETREF(EXTRA(self), PyDict_Copy(extra));
        if (EXTRA(self) == NULL) {
            return -1;
        }
    }
    PyObject *r = tr_set_protocol(self, protocol);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    /* accepted in C with SOCK_NONBLOCK: known to be a non-blocking socket */
    int err = sock == NULL ? br_stream_init_socket(core, &t->stream, fd) : br_stream_init(core, &t->stream, fd);
    if (err < 0) {
        braid_raise_oserror(err, "watching the socket");
        return -1;
    }
    t->stream.handle.data = self; /* borrowed: SELF() finds it from the stream anyway */
    t->stream_open = 1;
    t->fd_taken = 1;
    t->stream_loop = Py_NewRef(loop);
    braid_loop_count_stream(loop, +1);
    br_stream_set_callbacks(&t->stream, on_drain, on_write_error);
    br_stream_set_more_callbacks(&t->stream, on_alloc, on_empty);
    br_stream_set_flush_callback(&t->stream, on_flush);
    t->tcp = set_nodelay(fd, family);
    if (server != Py_None) {
#if PY_VERSION_HEX >= 0x030D0000
        r = PyObject_CallMethod(server, "_attach", "O", self);
#else
        r = PyObject_CallMethod(server, "_attach", NULL);
#endif
        if (r == NULL) {
            goto fail;
        }
        Py_DECREF(r);
        t->server = Py_NewRef(server); /* attached: connection_lost detaches it */
    }
    /* loop._transports[fd] = self: add_reader() on its fd then says the fd
     * is a transport's, as with asyncio's transports. The entry goes into
     * the WeakValueDictionary's own dict as a plain weak reference: every
     * read of it (get, [], del, iteration) calls the reference and treats a
     * dead one as absent, and the next transport on the same fd number
     * replaces it, so without the dictionary's removal callback (and its
     * Python __setitem__, a KeyedRef per connection) nothing changes but
     * the cost. Anything else than a WeakValueDictionary gets a plain
     * assignment. */
    PyObject *const *name = tr_state(self)->stream_names;
    PyObject *transports = PyObject_GetAttr(loop, name[S_TRANSPORTS]);
    PyObject *key = transports ? PyLong_FromLong(fd) : NULL;
    PyObject *data = key ? PyObject_GetAttr(transports, name[S_DATA]) : NULL;
    if (data != NULL && PyDict_CheckExact(data)) {
        PyObject *wr = PyWeakref_NewRef(self, NULL);
        err = wr ? PyDict_SetItem(data, key, wr) : -1;
        Py_XDECREF(wr);
    } else {
        PyErr_Clear();
        err = key ? PyObject_SetItem(transports, key, self) : -1;
    }
    Py_XDECREF(data);
    Py_XDECREF(key);
    Py_XDECREF(transports);
    if (err < 0) {
        goto fail;
    }
    /* as asyncio: connection_made, then reading, then the waiter. A
     * connection accepted in C has no waiter and nobody else can reach it
     * before these run: one callback does both (_connection_made), a handle,
     * a bound method and a context fewer per connection. */
    PyObject *rr;
    if (sock == NULL && waiter == Py_None) {
        PyObject *both = PyObject_GetAttr(self, name[S_MADE_AND_READ]);
        rr = both && braid_loop_call_soon_io(loop, &both, 1) == 0 ? Py_None : NULL;
        Py_XDECREF(both);
    } else {
        PyObject *made = PyObject_GetAttr(protocol, name[S_CONNECTION_MADE]);
        PyObject *start = made ? PyObject_GetAttr(self, name[S_START_READING]) : NULL;
        rr = start ? PyObject_CallMethodObjArgs(loop, name[S_CALL_SOON], made, self, NULL) : NULL;
        Py_XDECREF(rr);
        rr = rr ? PyObject_CallMethodObjArgs(loop, name[S_CALL_SOON], start, NULL) : NULL;
        Py_XDECREF(rr);
        Py_XDECREF(made);
        Py_XDECREF(start);
    }
    if (rr == NULL) {
        goto fail;
    }
    if (waiter != Py_None) {
        PyObject *set = braid_import_attr("asyncio.futures", "_set_result_unless_cancelled");
        rr = set ? PyObject_CallMethod(loop, "call_soon", "OOO", set, waiter, Py_None) : NULL;
        Py_XDECREF(set);
        Py_XDECREF(rr);
        if (rr == NULL) {
            goto fail;
        }
    }
    return 0;

fail:
    /* made, then refused: the engine lets go of the fd (the socket object
     * is detached from it; its owner's close() is then a no-op) without the
     * finalizer's warning about an unclosed transport */
    PyObject *exc = PyErr_GetRaisedException();
    Py_INCREF(self);
    close_stream(self);
    Py_CLEAR(t->sock);
    t->sock_gone = 1;
    if (t->server != NULL) {
#if PY_VERSION_HEX >= 0x030D0000
        PyObject *d = PyObject_CallMethod(t->server, "_detach", "O", self);
#else
        PyObject *d = PyObject_CallMethod(t->server, "_detach", NULL);
#endif
        Py_XDECREF(d);
        PyErr_Clear();
        Py_CLEAR(t->server);
    }
    Py_DECREF(self);
    PyErr_SetRaisedException(exc);
    return -1;
}

PyObject *braid_socktransport_accepted(braid_state *st, PyObject *loop, int fd, int family, PyObject *protocol,
                                       PyObject *server)
{
    br_loop_t *core = braid_loop_core(loop);
    PyObject *self = core ? st->socket_transport_type->tp_alloc(st->socket_transport_type, 0) : NULL;
    if (self == NULL || setup(self, loop, core, fd, family, NULL, protocol, Py_None, Py_None, server) < 0) {
        if (self == NULL || !TAIL(self)->fd_taken) {
            (void)close(fd); /* still ours: the stream never took it */
        }
        Py_XDECREF(self);
        return NULL;
    }
    return self;
}

/* --------------------------------------------------------- the object's life */

static void tr_finalize(PyObject *self)
{
    tail_t *t = TAIL(self);
    if (t->sock_gone || !t->stream_open) {
        return;
    }
    PyObject *exc = PyErr_GetRaisedException();
    /* as asyncio's __del__ */
    if (PyErr_WarnFormat(PyExc_ResourceWarning, 1, "unclosed transport %R", self) < 0) {
        PyErr_WriteUnraisable(self);
    }
    close_stream(self); /* resurrects it until the engine's close callback */
    Py_CLEAR(t->sock);
    t->sock_gone = 1;
    PyErr_SetRaisedException(exc);
}

static int tr_traverse(PyObject *self, visitproc visit, void *arg)
{
    tail_t *t = TAIL(self);
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(EXTRA(self));
    Py_VISIT(t->loop);
    Py_VISIT(t->stream_loop);
    Py_VISIT(t->protocol);
    Py_VISIT(t->sock);
    Py_VISIT(t->server);
    Py_VISIT(t->empty_waiter);
    Py_VISIT(t->dict);
    Py_VISIT(t->ctx.ctx);
    Py_VISIT(t->wctx.ctx);
    return 0;
}

static int tr_clear(PyObject *self)
{
    tail_t *t = TAIL(self);
    Py_CLEAR(EXTRA(self));
    Py_CLEAR(t->protocol);
    Py_CLEAR(t->server);
    Py_CLEAR(t->empty_waiter);
    Py_CLEAR(t->dict);
    Py_CLEAR(t->ctx.ctx);
    Py_CLEAR(t->wctx.ctx);
    /* loop and sock stay: the stream's close still needs them */
    return 0;
}

static void tr_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    /* the finalizer first, while still tracked: it may resurrect the object */
    if (PyObject_CallFinalizerFromDealloc(self) < 0) {
        return; /* resurrected until its stream has closed */
    }
    PyObject_GC_UnTrack(self);
    tail_t *t = TAIL(self);
    if (t->weakrefs != NULL) {
        PyObject_ClearWeakRefs(self);
    }
    if (t->has_pbuf) {
        PyBuffer_Release(&t->pbuf);
    }
    Py_CLEAR(EXTRA(self));
    Py_CLEAR(t->loop);
    Py_CLEAR(t->stream_loop);
    Py_CLEAR(t->protocol);
    Py_CLEAR(t->sock);
    Py_CLEAR(t->server);
    Py_CLEAR(t->empty_waiter);
    Py_CLEAR(t->dict);
    Py_CLEAR(t->ctx.ctx);
    Py_CLEAR(t->wctx.ctx);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* The loop is closing with this transport's stream still open: the
 * engine's handle must close before the loop can (no protocol call: a
 * closed loop runs nothing more, as with asyncio). */
void braid_socktransport_loop_closing(br_handle_t *h, void *arg)
{
    braid_state *st = arg;
    PyObject *self = h->data; /* the transport, or a pipe transport's */
    if (h->type != BR_HANDLE_STREAM || br_is_closing(h) || self == NULL ||
        st->socket_transport_type == NULL || !PyObject_TypeCheck(self, st->socket_transport_type)) {
        return;
    }
    tail_t *t = TAIL(self);
    t->closing = 1;
    if (!t->conn_lost) {
        t->conn_lost++;
    }
    Py_INCREF(self);
    close_stream(self);
    Py_DECREF(self);
}

PyObject *braid_socktransport_held(braid_state *st, br_handle_t *h)
{
    PyObject *self = h->data;
    if (h->type != BR_HANDLE_STREAM || self == NULL || st->socket_transport_type == NULL ||
        !PyObject_TypeCheck(self, st->socket_transport_type)) {
        return NULL;
    }
    return TAIL(self)->self_ref ? self : NULL;
}

/* loop.sendfile()'s native path (selector_events._sendfile_native): a
 * future done once everything written before has gone; write() refuses
 * meanwhile. */
static PyObject *tr_make_empty_waiter(PyObject *self, PyObject *unused)
{
    tail_t *t = TAIL(self);
    if (t->empty_waiter != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Empty waiter is already set");
        return NULL;
    }
    if (t->loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Transport is closed");
        return NULL;
    }
    t->empty_waiter = PyObject_CallMethod(t->loop, "create_future", NULL);
    if (t->empty_waiter == NULL) {
        return NULL;
    }
    if (!t->stream_open || br_stream_queued(&t->stream) == 0) {
        PyObject *r = PyObject_CallMethod(t->empty_waiter, "set_result", "O", Py_None);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    return Py_NewRef(t->empty_waiter);
}

static PyObject *tr_reset_empty_waiter(PyObject *self, PyObject *unused)
{
    Py_CLEAR(TAIL(self)->empty_waiter);
    Py_RETURN_NONE;
}

static PyObject *tr_get_sock_fd(PyObject *self, void *c) { return PyLong_FromLong(TAIL(self)->fd); }

/* What asyncio's helpers read off a transport (sendfile's fallback
 * protocol: _loop and _protocol_paused). */
static PyObject *tr_get_loop(PyObject *self, void *c) { return Py_NewRef(TAIL(self)->loop ? TAIL(self)->loop : Py_None); }
static PyObject *tr_get_protocol_paused(PyObject *self, void *c) { return PyBool_FromLong(TAIL(self)->protocol_paused); }
static PyObject *tr_get_sock(PyObject *self, void *c)
{
    PyObject *sock = get_sock(self);
    return sock ? Py_NewRef(sock) : PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
}
static PyObject *tr_get_closing(PyObject *self, void *c) { return PyBool_FromLong(TAIL(self)->closing); }
static PyObject *tr_get_paused(PyObject *self, void *c) { return PyBool_FromLong(TAIL(self)->paused); }
static PyObject *tr_get_conn_lost(PyObject *self, void *c) { return PyLong_FromUnsignedLong(TAIL(self)->conn_lost); }

static PyGetSetDef tr_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {"_loop", tr_get_loop, NULL, NULL, NULL},
    {"_protocol_paused", tr_get_protocol_paused, NULL, NULL, NULL},
    {"_sock", tr_get_sock, NULL, NULL, NULL},
    {"_closing", tr_get_closing, NULL, NULL, NULL},
    {"_paused", tr_get_paused, NULL, NULL, NULL},
    {"_conn_lost", tr_get_conn_lost, NULL, NULL, NULL},
    {"_sock_fd", tr_get_sock_fd, NULL, NULL, NULL},
    {"_extra", tr_get_extra, tr_set_extra, NULL, NULL},
    {NULL}};

static PyMethodDef tr_methods[] = {
    {"write", tr_write, METH_O, NULL},
    {"writelines", tr_writelines, METH_O, NULL},
    {"write_eof", tr_write_eof, METH_NOARGS, NULL},
    {"can_write_eof", tr_can_write_eof, METH_NOARGS, NULL},
    {"close", tr_close, METH_NOARGS, NULL},
    {"abort", tr_abort, METH_NOARGS, NULL},
    {"_force_close", tr_force_close, METH_O, NULL},
    {"is_closing", tr_is_closing, METH_NOARGS, NULL},
    {"is_reading", tr_is_reading, METH_NOARGS, NULL},
    {"pause_reading", tr_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", tr_resume_reading, METH_NOARGS, NULL},
    {"get_write_buffer_size", tr_get_write_buffer_size, METH_NOARGS, NULL},
    {"get_write_buffer_limits", tr_get_write_buffer_limits, METH_NOARGS, NULL},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))tr_set_write_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_protocol", tr_get_protocol, METH_NOARGS, NULL},
    {"set_protocol", tr_set_protocol, METH_O, NULL},
    {"_call_connection_lost", tr_call_connection_lost, METH_O, NULL},
    {"_start_reading", tr_start_reading, METH_NOARGS, NULL},
    {"_read_ready", tr_read_ready, METH_NOARGS, NULL},
    {"_write_ready", tr_write_ready, METH_NOARGS, NULL},
    {"_connection_made", tr_connection_made, METH_NOARGS, NULL},
    {"_make_empty_waiter", tr_make_empty_waiter, METH_NOARGS, NULL},
    {"_reset_empty_waiter", tr_reset_empty_waiter, METH_NOARGS, NULL},
    {NULL}};

static PyMemberDef tr_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, 0, READONLY, NULL}, /* offsets set at type creation */
    {"__dictoffset__", T_PYSSIZET, 0, READONLY, NULL},
    {NULL}};

static PyType_Slot tr_slots[] = {
    {Py_tp_init, tr_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_repr, tr_repr},
    {Py_tp_methods, tr_methods},
    {Py_tp_members, tr_members},
    {Py_tp_getset, tr_getset},
    {Py_tp_traverse, tr_traverse},
    {Py_tp_clear, tr_clear},
    {Py_tp_dealloc, tr_dealloc},
    {Py_tp_finalize, tr_finalize},
    {Py_tp_doc, "braid.Loop's transport for TCP and Unix stream sockets: an asyncio.Transport in C."},
    {0, NULL}};

static PyType_Spec tr_spec = {
    .name = "braid._braid.SocketTransport",
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = tr_slots,
};

static const braid_tail_type_t tr_tail = {
    .spec = &tr_spec,
    /* _FlowControlMixin: what sendfile's fallback insists on (an isinstance
     * check); its four slots go unused, the C fields hold the same */
    .bases = {"_FlowControlMixin"},
    .tail_size = sizeof(tail_t),
    .members = tr_members,
    .member_at = {offsetof(tail_t, weakrefs), offsetof(tail_t, dict)},
    .tail_offset = &tail_offset,
    .extra_offset = &extra_offset,
};

/* Made with the loop's handle types, when the first braid.Loop starts
 * (asyncio is imported then, not with braid). */
int braid_socktransport_make_type(braid_state *st, PyObject *module)
{
    if (st->socket_transport_type != NULL) {
        return 0;
    }
    st->socket_transport_type = braid_transport_make_tail_type(module, &tr_tail);
    int rc = st->socket_transport_type ? 0 : -1;
    if (rc == 0) {
        /* loop.sendfile() tries os.sendfile first, as on asyncio's own
         * socket transport; start_tls() wraps it as it does those */
        PyObject *modes = braid_import_attr("asyncio.constants", "_SendfileMode");
        PyObject *fallback = modes ? PyObject_GetAttrString(modes, "TRY_NATIVE") : NULL;
        Py_XDECREF(modes);
        rc = fallback ? PyObject_SetAttrString((PyObject *)st->socket_transport_type, "_sendfile_compatible",
                                               fallback) : -1;
        Py_XDECREF(fallback);
        if (rc == 0) {
            rc = PyObject_SetAttrString((PyObject *)st->socket_transport_type, "_start_tls_compatible", Py_True);
        }
    }
    for (int i = 0; rc == 0 && i < S_COUNT; i++) {
        if (st->stream_names[i] == NULL && (st->stream_names[i] = PyUnicode_InternFromString(stream_name_text[i])) == NULL) {
            rc = -1;
        }
    }
    if (rc == 0) {
        Py_XSETREF(st->StreamReaderProtocol, braid_import_attr("asyncio.streams", "StreamReaderProtocol"));
        Py_XSETREF(st->StreamReader, braid_import_attr("asyncio.streams", "StreamReader"));
        rc = st->StreamReaderProtocol && st->StreamReader ? 0 : -1;
        /* the functions the fast path stands in for, as asyncio defines them */
        PyObject *owner[3] = {st->StreamReaderProtocol, st->StreamReader, st->StreamReader};
        PyObject *names[3] = {st->str_data_received, st->stream_names[S_FEED_DATA], st->stream_names[S_WAKEUP_WAITER]};
        for (int i = 0; rc == 0 && i < 3; i++) {
            PyObject *f = _PyType_Lookup((PyTypeObject *)owner[i], names[i]);
            if (f == NULL) {
                PyErr_Format(PyExc_RuntimeError, "asyncio's streams have no %U", names[i]);
                rc = -1;
            } else {
                Py_XSETREF(st->stream_methods[i], Py_NewRef(f));
            }
        }
    }
    if (rc == 0) {
        PyObject *bp = braid_import_attr("asyncio.protocols", "BufferedProtocol");
        Py_XSETREF(st->BufferedProtocol, bp);
        rc = bp ? PyModule_AddObjectRef(module, "SocketTransport", (PyObject *)st->socket_transport_type) : -1;
    }
    return rc;
}
