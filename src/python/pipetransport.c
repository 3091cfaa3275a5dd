/*
 * pipetransport.c — ReadPipeTransport and WritePipeTransport: braid.Loop's
 * transports for pipes (connect_read_pipe, connect_write_pipe, and so a
 * subprocess's stdin, stdout and stderr), C objects over the engine's
 * br_stream_t.
 *
 * The behaviour is asyncio's unix_events._UnixReadPipeTransport and
 * _UnixWritePipeTransport (the same code in 3.11-3.13), method by method:
 * the same order of protocol calls, messages and errors. Two differences:
 * write() of something that is not bytes, bytearray or memoryview raises
 * TypeError (asyncio's is an assert: AssertionError, or nothing under -O),
 * and a second abort() or close after connection_lost was scheduled does
 * not schedule it again.
 *
 * The fd. asyncio's transport closes the pipe object (a file or a socket)
 * after connection_lost, and the caller may hold that object too; the
 * engine's stream closes the fd it owns itself, at once. So the stream
 * gets a duplicate (F_DUPFD_CLOEXEC) and the pipe object keeps its own,
 * closed where asyncio closes it: no fd number is ever closed twice, and a
 * number reused meanwhile is never hit. The two share one open file
 * description, so the non-blocking flag is the same for both (the stream
 * sets it, as asyncio does).
 *
 * The write side's "reader trick" is asyncio's: the write end of a pipe or
 * socket is also watched for reading, and any readiness there (the read end
 * closed: EPOLLERR on a pipe) closes the transport. Here the stream's alloc
 * callback sees that readiness and answers BR_STREAM_NOT_NOW: nothing is
 * read from the fd.
 *
 * Order: as the socket transport's (socktransport.c, on_alloc and
 * on_flush), a read or a flush waits behind the callbacks that were ready
 * when the poll began.
 *
 * Life cycle (one per transport):
 *
 *   __init__ --> OPEN: connection_made, then reading (read side) or the
 *     |   reader trick (write side, pipes and sockets) scheduled
 *     |   read side: EOF -> eof_received and connection_lost(None) scheduled
 *     |   write side: close()/write_eof() -> connection_lost(None) once the
 *     |               queue has drained
 *     |   abort(), an error, the read end closed -> queue dropped,
 *     |               connection_lost(exc) scheduled
 *     v
 *   CLOSING (closing; lost_scheduled) --_call_connection_lost--> the
 *     |   protocol told, the stream closed (its duplicate with it), the pipe
 *     |   object closed
 *     v
 *   CLOSED (pipe NULL) --the stream's close callback--> the object may go
 *
 * References: while the engine may call back (reading, writes queued, or
 * closing) the object holds a reference to itself (self_ref), as asyncio's
 * transport is held by its reader and writer handles.
 */
#include "braidpy.h"
#include "compat.h"

#include <structmember.h> /* T_PYSSIZET: the weak reference list's offset */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_READ (256 * 1024) /* asyncio's max_size */
#define LOG_THRESHOLD_FOR_CONNLOST_WRITES 5

typedef struct {
    br_stream_t stream;      /* first: the stream's address is the pipe_t's */
    PyObject *self;          /* borrowed: the transport */
    PyObject *weakrefs;
    PyObject *dict;          /* made on first assignment: asyncio's pipe transports take
                                attributes (CPython's tests replace methods with mocks) */
    PyObject *loop;          /* NULL after connection_lost, as asyncio's _loop */
    PyObject *stream_loop;   /* the loop the stream is on, held until its close callback */
    PyObject *protocol;
    PyObject *pipe;          /* the pipe object: closed and NULL after connection_lost */
    braid_trctx_t ctx;       /* what the engine's callbacks run the protocol in */
    braid_trctx_t wctx;      /* the write side's: the context of the write() that found the
                                queue empty and left bytes in it (asyncio's writer handle) */
    unsigned conn_lost;      /* writes refused after an error, as asyncio counts them */
    size_t high, low;
    int fd;                  /* the pipe object's (the stream has a duplicate) */
    unsigned writer : 1, closing : 1, paused : 1, stream_open : 1, self_ref : 1, protocol_paused : 1,
        read_later : 1, write_later : 1, lost_scheduled : 1, lost_called : 1, peer_gone : 1,
        peer_gone_queued : 1;
} pipe_t;

/* Written when the first braid.Loop makes the types (braid_transport_make_tail_type). */
static Py_ssize_t read_offset;   /* asyncio.ReadTransport's basicsize */
static Py_ssize_t write_offset;  /* asyncio.transports._FlowControlMixin's */
static Py_ssize_t extra_offset;  /* BaseTransport's _extra slot */

#define RP(o) ((pipe_t *)((char *)(o) + read_offset))
#define WP(o) ((pipe_t *)((char *)(o) + write_offset))
#define EXTRA(o) (*(PyObject **)((char *)(o) + extra_offset))

static PyObject *protocol_or_none(pipe_t *p) { return p->protocol ? p->protocol : Py_None; }

/* --------------------------------------------------------- references and closing */

static void update_self_ref(pipe_t *p)
{
    int want = p->stream_open && (br_is_active(&p->stream.handle) || br_is_closing(&p->stream.handle));
    if (want && !p->self_ref) {
        p->self_ref = 1;
        Py_INCREF(p->self);
    } else if (!want && p->self_ref) {
        p->self_ref = 0;
        Py_DECREF(p->self); /* not the last: the caller has self */
    }
}

static void stream_closed(br_handle_t *h)
{
    pipe_t *p = (pipe_t *)h;
    p->stream_open = 0;
    if (p->stream_loop != NULL) {
        braid_loop_count_stream(p->stream_loop, -1);
        Py_CLEAR(p->stream_loop);
    }
    if (p->self_ref) {
        p->self_ref = 0;
        Py_DECREF(p->self); /* may be the last */
    }
}

/* Closes the stream and its duplicate fd. Idempotent. */
static void close_stream(pipe_t *p)
{
    if (!p->stream_open || br_is_closing(&p->stream.handle)) {
        return;
    }
    if (!p->self_ref) {
        p->self_ref = 1; /* until the close callback */
        Py_INCREF(p->self);
    }
    (void)br_close(&p->stream.handle, stream_closed);
}

/* The pipe object's close(), as asyncio's _call_connection_lost and
 * __del__ do. 0, or -1 with an exception. */
static int close_pipe(pipe_t *p)
{
    PyObject *pipe = p->pipe;
    p->pipe = NULL;
    if (pipe == NULL) {
        return 0;
    }
    PyObject *r = PyObject_CallMethod(pipe, "close", NULL);
    Py_DECREF(pipe);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* loop.call_soon(fn[, arg]); nothing once the transport has let go of its
 * loop (connection_lost has run). */
static int schedule(pipe_t *p, PyObject *fn, PyObject *arg)
{
    if (p->loop == NULL) {
        return 0;
    }
    PyObject *r = arg ? PyObject_CallMethod(p->loop, "call_soon", "OO", fn, arg)
                      : PyObject_CallMethod(p->loop, "call_soon", "O", fn);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* self.<name>() as asyncio's reader handle would run it: this iteration
 * (braid_loop_call_soon_io), even from inside the poll. */
static int schedule_io(pipe_t *p, const char *name)
{
    if (p->loop == NULL) {
        return 0;
    }
    PyObject *fn = PyObject_GetAttrString(p->self, name);
    int rc = fn ? braid_loop_call_soon_io(p->loop, &fn, 1) : -1;
    Py_XDECREF(fn);
    return rc;
}

static int schedule_method(pipe_t *p, const char *name, PyObject *arg)
{
    PyObject *fn = PyObject_GetAttrString(p->self, name);
    int rc = fn ? schedule(p, fn, arg) : -1;
    Py_XDECREF(fn);
    return rc;
}

/* asyncio's _close: closing, the queue dropped, no more reading (nor the
 * reader trick), connection_lost(exc) scheduled -- once. */
static int pipe_close(pipe_t *p, PyObject *exc)
{
    p->closing = 1;
    if (p->stream_open) {
        br_stream_discard(&p->stream);
        (void)br_stream_read_stop(&p->stream);
        update_self_ref(p);
    }
    if (p->lost_scheduled || p->loop == NULL) {
        return 0;
    }
    p->lost_scheduled = 1;
    return schedule_method(p, "_call_connection_lost", exc ? exc : Py_None);
}

/* "%r <message>" to asyncio's logger at `level`, in debug mode only. */
static void debug_log(pipe_t *p, const char *level, const char *message)
{
    if (p->loop == NULL) {
        return;
    }
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *debug = PyObject_CallMethod(p->loop, "get_debug", NULL);
    int on = debug ? PyObject_IsTrue(debug) : 0;
    Py_XDECREF(debug);
    if (on > 0) {
        PyObject *logger = braid_import_attr("asyncio.log", "logger");
        PyObject *r = logger ? PyObject_CallMethod(logger, level, "sO", message, p->self) : NULL;
        Py_XDECREF(r);
        Py_XDECREF(logger);
    }
    PyErr_Clear();
    PyErr_SetRaisedException(exc);
}

/* KeyboardInterrupt and SystemExit out of a callback the engine ran leave
 * run_forever, as asyncio's. Steals exc. */
static void raise_from_loop(pipe_t *p, PyObject *exc)
{
    PyObject *loop = p->loop ? p->loop : p->stream_loop;
    if (loop != NULL) {
        braid_loop_raise_later(loop, exc);
        return;
    }
    PyErr_SetRaisedException(exc);
    PyErr_WriteUnraisable(p->self);
}

/* KeyboardInterrupt or SystemExit out of a protocol callback that a method
 * outside the poll ran (write(): pause_writing; _read_ready): raised from
 * that method, as asyncio's. -1 then. */
static int reraise(pipe_t *p)
{
    PyObject *loop = p->loop ? p->loop : p->stream_loop;
    return loop ? braid_loop_reraise(loop) : 0;
}

/* An exception out of a protocol callback run from the engine: to the
 * exception handler as one out of asyncio's reader handle would go (the
 * transport stays open, as asyncio's). Consumes the exception. */
static void callback_failed(pipe_t *p, const char *what)
{
    PyObject *exc = PyErr_GetRaisedException();
    if (PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt) ||
        PyErr_GivenExceptionMatches(exc, PyExc_SystemExit)) {
        raise_from_loop(p, exc);
        return;
    }
    PyObject *loop = p->loop ? p->loop : p->stream_loop;
    PyObject *msg = PyUnicode_FromFormat("Exception in callback %R.%s", p->self, what);
    PyObject *r = msg && loop ? braid_transport_exception(loop, msg, exc, p->self, protocol_or_none(p)) : NULL;
    if (r == NULL) {
        PyErr_WriteUnraisable(p->self);
    }
    Py_XDECREF(r);
    Py_XDECREF(msg);
    Py_DECREF(exc);
}

/* asyncio's _fatal_error. The read side lets only EIO pass quietly (a pty
 * whose other side is gone); the write side any OSError. Then _close(exc). */
static int fatal_error(pipe_t *p, PyObject *exc, const char *message)
{
    if (p->loop != NULL) {
        int quiet = p->writer ? PyErr_GivenExceptionMatches(exc, PyExc_OSError) : 0;
        if (!p->writer && PyErr_GivenExceptionMatches(exc, PyExc_OSError)) {
            PyObject *no = PyObject_GetAttrString(exc, "errno");
            quiet = no && PyLong_Check(no) && PyLong_AsLong(no) == EIO;
            Py_XDECREF(no);
            PyErr_Clear();
        }
        if (quiet) {
            debug_log(p, "debug", p->writer ? "%r: Fatal write error on pipe transport"
                                            : "%r: Fatal read error on pipe transport");
        } else {
            PyObject *msg = PyUnicode_FromString(message);
            PyObject *r = msg ? braid_transport_exception(p->loop, msg, exc, p->self, protocol_or_none(p)) : NULL;
            Py_XDECREF(msg);
            if (r == NULL) {
                return -1;
            }
            Py_DECREF(r);
        }
    }
    return pipe_close(p, exc);
}

static int os_error_fatal(pipe_t *p, int err, const char *message)
{
    braid_raise_oserror(err, NULL);
    PyObject *exc = PyErr_GetRaisedException();
    int rc = fatal_error(p, exc, message);
    Py_DECREF(exc);
    return rc;
}

/* --------------------------------------------------------- the read side */

/* Before each read: behind the callbacks ready as the poll began, as
 * asyncio's reader handle (socktransport.c, on_alloc, says why). */
static int read_alloc_body(br_stream_t *s, char **buf, size_t *len)
{
    pipe_t *p = (pipe_t *)s;
    if (p->loop != NULL && braid_loop_ready_before_poll(p->loop)) {
        if (!p->read_later) { /* else a _read_ready is on its way */
            p->read_later = braid_transport_later(p->loop, p->self, "_read_ready");
        }
        if (p->read_later) {
            return BR_STREAM_NOT_NOW;
        }
    }
    return BR_STREAM_LOOP_BUFFER;
}

static void on_read_body(br_stream_t *s, const char *buf, ssize_t n)
{
    pipe_t *p = (pipe_t *)s;
    PyObject *self = Py_NewRef(p->self); /* the callbacks below may close it */
    if (n > 0 && p->protocol != NULL) {
        PyObject *data = PyBytes_FromStringAndSize(buf, n);
        PyObject *r = data ? PyObject_CallMethod(p->protocol, "data_received", "O", data) : NULL;
        Py_XDECREF(data);
        if (r == NULL) {
            callback_failed(p, "_read_ready()");
        }
        Py_XDECREF(r);
    } else if (n == 0) {
        debug_log(p, "info", "%r was closed by peer");
        p->closing = 1; /* the engine stopped reading */
        int rc = 0;
        if (p->protocol != NULL) {
            PyObject *eof = PyObject_GetAttrString(p->protocol, "eof_received");
            rc = eof ? schedule(p, eof, NULL) : -1;
            Py_XDECREF(eof);
        }
        if (rc == 0 && !p->lost_scheduled) {
            p->lost_scheduled = 1;
            rc = schedule_method(p, "_call_connection_lost", Py_None);
        }
        if (rc < 0) {
            callback_failed(p, "_read_ready()");
        }
    } else if (n < 0 && os_error_fatal(p, (int)n, "Fatal read error on pipe transport") < 0) {
        callback_failed(p, "_read_ready()");
    }
    update_self_ref(p);
    Py_DECREF(self);
}

static void on_read(br_stream_t *s, const char *buf, ssize_t n);

static int start_reading(pipe_t *p)
{
    if (p->closing || p->paused || !p->stream_open) {
        return 0;
    }
    int err = br_stream_read_start(&p->stream, on_read, MAX_READ);
    update_self_ref(p);
    if (err < 0) {
        braid_raise_oserror(err, "watching the pipe");
        return -1;
    }
    return 0;
}

static PyObject *rp_start_reading(PyObject *self, PyObject *unused)
{
    return start_reading(RP(self)) < 0 ? NULL : Py_NewRef(Py_None);
}

/* The read read_alloc put behind the ready callbacks. */
static PyObject *rp_read_ready(PyObject *self, PyObject *unused)
{
    pipe_t *p = RP(self);
    p->read_later = 0;
    if (!p->closing && !p->paused && p->stream_open) {
        Py_INCREF(self);
        (void)br_stream_read_now(&p->stream); /* -EINVAL: reading stopped (EOF seen) */
        int rc = reraise(p);
        Py_DECREF(self);
        if (rc < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *rp_is_reading(PyObject *self, PyObject *unused)
{
    pipe_t *p = RP(self);
    return PyBool_FromLong(!p->paused && !p->closing);
}

static PyObject *rp_pause_reading(PyObject *self, PyObject *unused)
{
    pipe_t *p = RP(self);
    if (p->paused || p->closing) {
        Py_RETURN_NONE;
    }
    p->paused = 1;
    if (p->stream_open) {
        (void)br_stream_read_stop(&p->stream);
        update_self_ref(p);
    }
    debug_log(p, "debug", "%r pauses reading");
    Py_RETURN_NONE;
}

static PyObject *rp_resume_reading(PyObject *self, PyObject *unused)
{
    pipe_t *p = RP(self);
    if (p->closing || !p->paused) {
        Py_RETURN_NONE;
    }
    p->paused = 0;
    if (braid_trctx_renew(&p->ctx) < 0 || start_reading(p) < 0) {
        return NULL;
    }
    debug_log(p, "debug", "%r resumes reading");
    Py_RETURN_NONE;
}

static PyObject *rp_close(PyObject *self, PyObject *unused)
{
    pipe_t *p = RP(self);
    if (!p->closing && pipe_close(p, NULL) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* --------------------------------------------------------- the write side */

/* The reader trick: readiness for reading on the write end means the read
 * end has gone. Nothing is read; _read_ready closes the transport from the
 * ready queue, where asyncio's reader handle would run. */
static int peer_alloc_body(br_stream_t *s, char **buf, size_t *len)
{
    pipe_t *p = (pipe_t *)s;
    (void)br_stream_read_stop(s);
    if (!p->peer_gone) {
        /* the engine's flush of this same readiness may fail with EPIPE
         * next: that is this close, told by _read_ready (on_write_error) */
        p->peer_gone = 1;
        p->peer_gone_queued = br_stream_queued(s) > 0;
    }
    if (p->loop != NULL && !p->read_later && !p->lost_scheduled) {
        if (schedule_io(p, "_read_ready") == 0) {
            p->read_later = 1;
        } else {
            callback_failed(p, "_read_ready()");
        }
    }
    return BR_STREAM_NOT_NOW;
}

static void peer_read(br_stream_t *s, const char *buf, ssize_t n) { (void)s, (void)buf, (void)n; }

/* Before a flush at writable readiness: as the socket transport's
 * (socktransport.c, on_flush), the flush waits behind the callbacks that
 * were ready when the poll began, where asyncio's writer handle runs. */
static int on_flush(br_stream_t *s)
{
    pipe_t *p = (pipe_t *)s;
    if (!p->write_later) { /* else a _write_ready is on its way */
        p->write_later = braid_transport_later(p->loop, p->self, "_write_ready");
    }
    return p->write_later ? BR_STREAM_NOT_NOW : 0;
}

static PyObject *wp_write_ready(PyObject *self, PyObject *unused)
{
    pipe_t *p = WP(self);
    p->write_later = 0;
    if (p->stream_open) {
        Py_INCREF(self);
        BRAID_IN_CONTEXT(self, p->wctx.ctx ? &p->wctx : &p->ctx, NULL, (void)br_stream_flush_now(&p->stream));
        update_self_ref(p);
        int rc = reraise(p);
        Py_DECREF(self);
        if (rc < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *wp_watch_peer(PyObject *self, PyObject *unused)
{
    pipe_t *p = WP(self);
    if (p->closing || !p->stream_open) {
        Py_RETURN_NONE;
    }
    int err = br_stream_read_start(&p->stream, peer_read, 1);
    update_self_ref(p);
    if (err < 0) {
        return braid_raise_oserror(err, "watching the pipe");
    }
    Py_RETURN_NONE;
}

static PyObject *wp_read_ready(PyObject *self, PyObject *unused)
{
    pipe_t *p = WP(self);
    p->read_later = 0;
    if (p->lost_scheduled || p->loop == NULL) {
        Py_RETURN_NONE;
    }
    debug_log(p, "info", "%r was closed by peer");
    PyObject *exc = NULL;
    if (p->peer_gone_queued && (exc = PyObject_CallNoArgs(PyExc_BrokenPipeError)) == NULL) {
        return NULL;
    }
    int rc = pipe_close(p, exc);
    Py_XDECREF(exc);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

static void on_drain_body(br_stream_t *s, int paused)
{
    pipe_t *p = (pipe_t *)s;
    p->protocol_paused = paused ? 1 : 0;
    if (p->loop == NULL || p->protocol == NULL) {
        return;
    }
    PyObject *self = Py_NewRef(p->self);
    braid_transport_call_flow(p->loop, self, p->protocol, paused ? "pause_writing" : "resume_writing");
    Py_DECREF(self);
}

static void on_write_error_body(br_stream_t *s, int err)
{
    pipe_t *p = (pipe_t *)s;
    if (p->peer_gone) {
        return; /* the read end closed: _read_ready closes the transport, as asyncio's */
    }
    PyObject *self = Py_NewRef(p->self);
    p->conn_lost++;
    if (os_error_fatal(p, err, "Fatal write error on pipe transport") < 0) {
        callback_failed(p, "_write_ready()");
    }
    update_self_ref(p);
    Py_DECREF(self);
}

/* The queue drained: after write_eof() or close(), connection_lost now
 * (asyncio calls it straight from _write_ready). */
static void on_empty_body(br_stream_t *s)
{
    pipe_t *p = (pipe_t *)s;
    if (!p->closing || p->lost_scheduled) {
        return;
    }
    PyObject *self = Py_NewRef(p->self);
    p->lost_scheduled = 1;
    (void)br_stream_read_stop(&p->stream);
    PyObject *r = PyObject_CallMethod(self, "_call_connection_lost", "O", Py_None);
    if (r == NULL) {
        callback_failed(p, "_write_ready()");
    }
    Py_XDECREF(r);
    update_self_ref(p);
    Py_DECREF(self);
}

static PyObject *wp_write(PyObject *self, PyObject *data)
{
    pipe_t *p = WP(self);
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
        return PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not '%.100s'",
                            _PyType_Name(Py_TYPE(data)));
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    int rc = 0;
    if (view.len == 0) {
        goto done;
    }
    if (p->conn_lost || p->closing) {
        if (p->conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES) {
            PyObject *logger = braid_import_attr("asyncio.log", "logger");
            PyObject *r = logger ? PyObject_CallMethod(logger, "warning", "s",
                                                       "pipe closed by peer or os.write(pipe, data) raised exception.")
                                 : NULL;
            Py_XDECREF(logger);
            Py_XDECREF(r);
            rc = r ? 0 : -1;
        }
        p->conn_lost++;
        goto done;
    }
    if (!p->stream_open) {
        goto done;
    }
    Py_INCREF(self); /* the drain callback may drop the last other reference */
    size_t before = br_stream_queued(&p->stream);
    int err = br_stream_write(&p->stream, view.buf, (size_t)view.len);
    if (err == 0 && before == 0 && !p->wctx.entered && br_stream_queued(&p->stream) > 0) {
        PyObject *c = PyContext_CopyCurrent(); /* asyncio's _add_writer copies it */
        if (c == NULL) {
            PyErr_Clear();
        } else {
            Py_XSETREF(p->wctx.ctx, c);
        }
    }
    update_self_ref(p);
    if (err < 0) {
        p->conn_lost++;
        rc = os_error_fatal(p, err, "Fatal write error on pipe transport");
    }
    Py_DECREF(self);
done:
    PyBuffer_Release(&view);
    if (rc < 0 || PyErr_Occurred() || reraise(p) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *wp_writelines(PyObject *self, PyObject *lines)
{
    return braid_transport_writelines(self, lines, wp_write);
}

static PyObject *wp_write_eof(PyObject *self, PyObject *unused)
{
    pipe_t *p = WP(self);
    if (p->closing) {
        Py_RETURN_NONE;
    }
    p->closing = 1;
    if (!p->stream_open || br_stream_queued(&p->stream) == 0) {
        if (p->stream_open) {
            (void)br_stream_read_stop(&p->stream);
            update_self_ref(p);
        }
        if (!p->lost_scheduled && p->loop != NULL) {
            p->lost_scheduled = 1;
            if (schedule_method(p, "_call_connection_lost", Py_None) < 0) {
                return NULL;
            }
        }
    } /* else once the queue has drained: on_empty */
    Py_RETURN_NONE;
}

static PyObject *wp_can_write_eof(PyObject *self, PyObject *unused) { Py_RETURN_TRUE; }

static PyObject *wp_close(PyObject *self, PyObject *unused)
{
    pipe_t *p = WP(self);
    if (p->pipe != NULL && !p->closing) {
        return wp_write_eof(self, NULL); /* all a write pipe needs to close */
    }
    Py_RETURN_NONE;
}

static PyObject *wp_abort(PyObject *self, PyObject *unused)
{
    return pipe_close(WP(self), NULL) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *wp_get_write_buffer_size(PyObject *self, PyObject *unused)
{
    pipe_t *p = WP(self);
    return PyLong_FromSize_t(p->stream_open ? br_stream_queued(&p->stream) : 0);
}

static PyObject *wp_get_write_buffer_limits(PyObject *self, PyObject *unused)
{
    pipe_t *p = WP(self);
    return Py_BuildValue("(nn)", (Py_ssize_t)p->low, (Py_ssize_t)p->high);
}

static PyObject *wp_set_write_buffer_limits(PyObject *self, PyObject *args, PyObject *kwds)
{
    pipe_t *p = WP(self);
    if (braid_parse_write_limits(args, kwds, &p->high, &p->low) < 0) {
        return NULL;
    }
    if (p->stream_open) {
        Py_INCREF(self);
        (void)br_stream_set_limits(&p->stream, p->high, 0); /* may pause the protocol (pipe_init says why 0) */
        Py_DECREF(self);
    }
    return reraise(p) < 0 ? NULL : Py_NewRef(Py_None);
}


/* --------------------------------------------------------- the engine's callbacks, in the transport's context */

static PyObject *ctx_loop(pipe_t *p) { return p->loop ? p->loop : p->stream_loop; }

#define IN_CONTEXT(p, when, call) BRAID_IN_CONTEXT((p)->self, &(p)->ctx, (when), call)
#define WRITE_CTX(p) ((p)->wctx.ctx ? &(p)->wctx : &(p)->ctx)
#define IN_WRITE_CONTEXT(p, when, call) BRAID_IN_CONTEXT((p)->self, WRITE_CTX(p), (when), call)

static int read_alloc(br_stream_t *s, char **buf, size_t *len)
{
    pipe_t *p = (pipe_t *)s;
    if (p->loop == NULL || !braid_loop_ready_before_poll(p->loop)) {
        return BR_STREAM_LOOP_BUFFER; /* the common read: no Python, no context to enter */
    }
    int rc;
    IN_CONTEXT((pipe_t *)s, NULL, rc = read_alloc_body(s, buf, len));
    return rc;
}

static void on_read(br_stream_t *s, const char *buf, ssize_t n)
{
    IN_CONTEXT((pipe_t *)s, NULL, on_read_body(s, buf, n));
}

static int peer_alloc(br_stream_t *s, char **buf, size_t *len)
{
    int rc;
    IN_CONTEXT((pipe_t *)s, NULL, rc = peer_alloc_body(s, buf, len));
    return rc;
}

static void on_drain(br_stream_t *s, int paused)
{
    IN_WRITE_CONTEXT((pipe_t *)s, ctx_loop((pipe_t *)s), on_drain_body(s, paused));
}

static void on_write_error(br_stream_t *s, int err)
{
    IN_WRITE_CONTEXT((pipe_t *)s, ctx_loop((pipe_t *)s), on_write_error_body(s, err));
}

static void on_empty(br_stream_t *s)
{
    IN_WRITE_CONTEXT((pipe_t *)s, ctx_loop((pipe_t *)s), on_empty_body(s));
}

/* --------------------------------------------------------- both sides */

/* asyncio's _call_connection_lost: the protocol hears of it, then the pipe
 * closes (whatever connection_lost did) and the transport forgets the
 * loop's objects. */
static PyObject *call_connection_lost(pipe_t *p, PyObject *exc)
{
    if (p->lost_called || p->self == NULL) { /* done, or __init__ never ran */
        Py_RETURN_NONE;
    }
    p->lost_called = 1;
    p->lost_scheduled = 1;
    p->closing = 1;
    PyObject *self = Py_NewRef(p->self);
    PyObject *r = p->protocol ? PyObject_CallMethod(p->protocol, "connection_lost", "O", exc)
                              : Py_NewRef(Py_None);
    PyObject *raised = r ? NULL : PyErr_GetRaisedException();
    close_stream(p);
    if (close_pipe(p) < 0) {
        if (raised == NULL) {
            raised = PyErr_GetRaisedException();
        } else {
            PyErr_Clear();
        }
    }
    Py_CLEAR(p->protocol);
    Py_CLEAR(p->loop);
    Py_DECREF(self);
    if (raised != NULL) {
        Py_XDECREF(r);
        PyErr_SetRaisedException(raised);
        return NULL;
    }
    return r;
}

static PyObject *rp_call_connection_lost(PyObject *self, PyObject *exc) { return call_connection_lost(RP(self), exc); }
static PyObject *wp_call_connection_lost(PyObject *self, PyObject *exc) { return call_connection_lost(WP(self), exc); }

static PyObject *get_protocol(pipe_t *p) { return Py_NewRef(protocol_or_none(p)); }
static PyObject *rp_get_protocol(PyObject *self, PyObject *unused) { return get_protocol(RP(self)); }
static PyObject *wp_get_protocol(PyObject *self, PyObject *unused) { return get_protocol(WP(self)); }

static PyObject *set_protocol(pipe_t *p, PyObject *protocol)
{
    Py_XSETREF(p->protocol, Py_NewRef(protocol));
    Py_RETURN_NONE;
}
static PyObject *rp_set_protocol(PyObject *self, PyObject *protocol) { return set_protocol(RP(self), protocol); }
static PyObject *wp_set_protocol(PyObject *self, PyObject *protocol) { return set_protocol(WP(self), protocol); }

static PyObject *rp_is_closing(PyObject *self, PyObject *unused) { return PyBool_FromLong(RP(self)->closing); }
static PyObject *wp_is_closing(PyObject *self, PyObject *unused) { return PyBool_FromLong(WP(self)->closing); }

/* As asyncio's: "<Name [closed|closing] fd=N polling|idle[ bufsize=N]>"
 * while its loop is open, "open" once the loop has closed under it,
 * "closed" after connection_lost. */
static PyObject *pipe_repr(PyObject *self, pipe_t *p)
{
    const char *name = Py_TYPE(self)->tp_name;
    const char *state = p->pipe == NULL ? " closed" : p->closing ? " closing" : "";
    int watched = p->stream_open && !br_is_closing(&p->stream.handle);
    if (p->pipe == NULL || !watched) {
        return PyUnicode_FromFormat("<%s%s fd=%d %s>", name, state, p->fd, p->pipe ? "open" : "closed");
    }
    size_t queued = br_stream_queued(&p->stream);
    int polling = p->writer ? queued > 0 : br_is_active(&p->stream.handle) && !p->paused;
    if (!p->writer) {
        return PyUnicode_FromFormat("<%s%s fd=%d %s>", name, state, p->fd, polling ? "polling" : "idle");
    }
    return PyUnicode_FromFormat("<%s%s fd=%d %s bufsize=%zu>", name, state, p->fd, polling ? "polling" : "idle",
                                queued);
}
static PyObject *rp_repr(PyObject *self) { return pipe_repr(self, RP(self)); }
static PyObject *wp_repr(PyObject *self) { return pipe_repr(self, WP(self)); }

/* ReadPipeTransport(loop, pipe, protocol, waiter=None, extra=None), and
 * the same for WritePipeTransport. */
static int pipe_init(PyObject *self, pipe_t *p, int writer, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"loop", "pipe", "protocol", "waiter", "extra", NULL};
    PyObject *loop, *pipe, *protocol, *waiter = Py_None, *extra = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|OO", kwlist, &loop, &pipe, &protocol, &waiter, &extra)) {
        return -1;
    }
    if (p->loop != NULL || p->self != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a pipe transport's __init__ called twice");
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
    if (p->ctx.ctx == NULL && braid_trctx_init(&p->ctx) < 0) {
        return -1;
    }
    PyObject *fdobj = PyObject_CallMethod(pipe, "fileno", NULL);
    long fdl = fdobj ? PyLong_AsLong(fdobj) : -1;
    Py_XDECREF(fdobj);
    if (fdl < 0 || fdl > INT_MAX) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError, "invalid file descriptor: %ld", fdl);
        }
        return -1;
    }
    int fd = (int)fdl;
    struct stat stbuf;
    if (fstat(fd, &stbuf) < 0) {
        braid_raise_oserror(-errno, NULL);
        return -1;
    }
    int fifo = S_ISFIFO(stbuf.st_mode), sock = S_ISSOCK(stbuf.st_mode), chr = S_ISCHR(stbuf.st_mode);
    if (!(fifo || sock || chr)) {
        PyErr_SetString(PyExc_ValueError, writer ? "Pipe transport is only for pipes, sockets and character devices"
                                                 : "Pipe transport is for pipes/sockets only.");
        return -1;
    }
    /* as BaseTransport.__init__: the caller's dict itself, or a new one */
    PyObject *ex = extra == Py_None ? PyDict_New() : Py_NewRef(extra);
    if (ex == NULL || PyDict_SetItemString(ex, "pipe", pipe) < 0) {
        Py_XDECREF(ex);
        return -1;
    }
    Py_XSETREF(EXTRA(self), ex);
    int dupfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dupfd < 0) {
        braid_raise_oserror(-errno, NULL);
        return -1;
    }
    int err = br_stream_init(core, &p->stream, dupfd); /* sets O_NONBLOCK: asyncio's set_blocking(False) */
    if (err < 0) {
        (void)close(dupfd);
        braid_raise_oserror(err, "watching the pipe");
        return -1;
    }
    p->self = self;
    p->stream.handle.data = self;
    p->writer = writer ? 1 : 0;
    p->fd = fd;
    p->high = 64 * 1024;
    p->low = 16 * 1024;
    p->stream_open = 1;
    p->stream_loop = Py_NewRef(loop);
    braid_loop_count_stream(loop, +1);
    p->loop = Py_NewRef(loop);
    p->pipe = Py_NewRef(pipe);
    p->protocol = Py_NewRef(protocol);
    if (writer) {
        /* asyncio's pipe resumes the protocol only once its buffer is empty
         * (its _write_ready resumes after a whole write), and raising the
         * limits never resumes it: the stream's low mark is 0 whatever
         * get_write_buffer_limits reports */
        (void)br_stream_set_limits(&p->stream, p->high, 0);
        br_stream_set_callbacks(&p->stream, on_drain, on_write_error);
        br_stream_set_more_callbacks(&p->stream, peer_alloc, on_empty);
        br_stream_set_flush_callback(&p->stream, on_flush);
    } else {
        br_stream_set_more_callbacks(&p->stream, read_alloc, NULL);
    }
    /* as asyncio: connection_made, then reading (or the reader trick), then the waiter */
    PyObject *made = PyObject_GetAttrString(protocol, "connection_made");
    int rc = made ? schedule(p, made, self) : -1;
    Py_XDECREF(made);
    if (rc == 0 && (!writer || fifo || sock)) {
        rc = schedule_method(p, writer ? "_watch_peer" : "_start_reading", NULL);
    }
    if (rc == 0 && waiter != Py_None) {
        PyObject *set = braid_import_attr("asyncio.futures", "_set_result_unless_cancelled");
        PyObject *r = set ? PyObject_CallMethod(loop, "call_soon", "OOO", set, waiter, Py_None) : NULL;
        Py_XDECREF(set);
        Py_XDECREF(r);
        rc = r ? 0 : -1;
    }
    if (rc < 0) {
        /* made, then refused: the duplicate goes; the pipe object stays the caller's */
        PyObject *exc = PyErr_GetRaisedException();
        p->closing = 1;
        p->lost_called = p->lost_scheduled = 1;
        Py_INCREF(self);
        close_stream(p);
        Py_CLEAR(p->pipe);
        Py_CLEAR(p->protocol);
        Py_CLEAR(p->loop);
        Py_DECREF(self);
        PyErr_SetRaisedException(exc);
        return -1;
    }
    return 0;
}

static int rp_init(PyObject *self, PyObject *args, PyObject *kwds) { return pipe_init(self, RP(self), 0, args, kwds); }
static int wp_init(PyObject *self, PyObject *args, PyObject *kwds) { return pipe_init(self, WP(self), 1, args, kwds); }

/* --------------------------------------------------------- the object's life */

static void pipe_finalize(PyObject *self, pipe_t *p)
{
    if (p->pipe == NULL && !p->stream_open) {
        return;
    }
    PyObject *exc = PyErr_GetRaisedException();
    /* as asyncio's __del__: a warning when the pipe is still set */
    if (p->pipe != NULL && PyErr_WarnFormat(PyExc_ResourceWarning, 1, "unclosed transport %R", self) < 0) {
        PyErr_WriteUnraisable(self);
    }
    p->closing = 1;
    close_stream(p); /* even with _pipe set to None: resurrects it until the engine's close callback */
    if (close_pipe(p) < 0) {
        PyErr_WriteUnraisable(self);
    }
    PyErr_SetRaisedException(exc);
}
static void rp_finalize(PyObject *self) { pipe_finalize(self, RP(self)); }
static void wp_finalize(PyObject *self) { pipe_finalize(self, WP(self)); }

static int pipe_traverse(PyObject *self, pipe_t *p, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(EXTRA(self));
    Py_VISIT(p->loop);
    Py_VISIT(p->stream_loop);
    Py_VISIT(p->protocol);
    Py_VISIT(p->pipe);
    Py_VISIT(p->dict);
    Py_VISIT(p->ctx.ctx);
    Py_VISIT(p->wctx.ctx);
    return 0;
}
static int rp_traverse(PyObject *self, visitproc visit, void *arg) { return pipe_traverse(self, RP(self), visit, arg); }
static int wp_traverse(PyObject *self, visitproc visit, void *arg) { return pipe_traverse(self, WP(self), visit, arg); }

static int pipe_clear(PyObject *self, pipe_t *p)
{
    Py_CLEAR(EXTRA(self));
    Py_CLEAR(p->protocol);
    Py_CLEAR(p->dict);
    Py_CLEAR(p->ctx.ctx);
    Py_CLEAR(p->wctx.ctx);
    /* loop and pipe stay: closing still needs them */
    return 0;
}
static int rp_clear(PyObject *self) { return pipe_clear(self, RP(self)); }
static int wp_clear(PyObject *self) { return pipe_clear(self, WP(self)); }

static void pipe_dealloc(PyObject *self, pipe_t *p)
{
    PyTypeObject *tp = Py_TYPE(self);
    /* the finalizer first, while still tracked: it may resurrect the object */
    if (PyObject_CallFinalizerFromDealloc(self) < 0) {
        return; /* resurrected until its stream has closed */
    }
    PyObject_GC_UnTrack(self);
    if (p->weakrefs != NULL) {
        PyObject_ClearWeakRefs(self);
    }
    Py_CLEAR(EXTRA(self));
    Py_CLEAR(p->loop);
    Py_CLEAR(p->stream_loop);
    Py_CLEAR(p->protocol);
    Py_CLEAR(p->pipe);
    Py_CLEAR(p->dict);
    Py_CLEAR(p->ctx.ctx);
    Py_CLEAR(p->wctx.ctx);
    tp->tp_free(self);
    Py_DECREF(tp);
}
static void rp_dealloc(PyObject *self) { pipe_dealloc(self, RP(self)); }
static void wp_dealloc(PyObject *self) { pipe_dealloc(self, WP(self)); }

/* The loop is closing with this transport's stream still open: the
 * engine's handle must close before the loop can (no protocol call: a
 * closed loop runs nothing more, as with asyncio). */
void braid_pipetransport_loop_closing(br_handle_t *h, void *arg)
{
    braid_state *st = arg;
    PyObject *self = h->data;
    if (h->type != BR_HANDLE_STREAM || br_is_closing(h) || self == NULL ||
        (st->read_pipe_transport_type == NULL ||
         (!PyObject_TypeCheck(self, st->read_pipe_transport_type) &&
          !PyObject_TypeCheck(self, st->write_pipe_transport_type)))) {
        return;
    }
    /* the transport is not told, as asyncio's is not: its pipe stays open */
    Py_INCREF(self);
    close_stream((pipe_t *)h);
    Py_DECREF(self);
}

PyObject *braid_pipetransport_held(braid_state *st, br_handle_t *h)
{
    PyObject *self = h->data;
    if (h->type != BR_HANDLE_STREAM || self == NULL || st->read_pipe_transport_type == NULL ||
        (!PyObject_TypeCheck(self, st->read_pipe_transport_type) &&
         !PyObject_TypeCheck(self, st->write_pipe_transport_type))) {
        return NULL;
    }
    return ((pipe_t *)h)->self_ref ? self : NULL;
}

/* What asyncio's own code reads off a pipe transport. The getters serve
 * both types: a getter's closure is its type's tail offset. */
#define PIPE_AT(o, c) ((pipe_t *)((char *)(o) + *(const Py_ssize_t *)(c)))
static PyObject *get_loop(PyObject *self, void *c) { pipe_t *p = PIPE_AT(self, c); return Py_NewRef(p->loop ? p->loop : Py_None); }
static PyObject *get_pipe(PyObject *self, void *c) { pipe_t *p = PIPE_AT(self, c); return Py_NewRef(p->pipe ? p->pipe : Py_None); }
/* Setting _pipe (to None, say, as CPython's tests do after closing the
 * pipe object themselves) replaces it without closing anything. */
static int set_pipe(PyObject *self, PyObject *value, void *c)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _pipe");
        return -1;
    }
    Py_XSETREF(PIPE_AT(self, c)->pipe, value == Py_None ? NULL : Py_NewRef(value));
    return 0;
}
static PyObject *get_fileno(PyObject *self, void *c) { return PyLong_FromLong(PIPE_AT(self, c)->fd); }
static PyObject *get_closing(PyObject *self, void *c) { return PyBool_FromLong(PIPE_AT(self, c)->closing); }
static PyObject *get_paused(PyObject *self, void *c) { return PyBool_FromLong(PIPE_AT(self, c)->paused); }
static PyObject *get_protocol_paused(PyObject *self, void *c) { return PyBool_FromLong(PIPE_AT(self, c)->protocol_paused); }
static PyObject *get_conn_lost(PyObject *self, void *c) { return PyLong_FromUnsignedLong(PIPE_AT(self, c)->conn_lost); }

static PyGetSetDef rp_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {"_loop", get_loop, NULL, NULL, &read_offset},
    {"_pipe", get_pipe, set_pipe, NULL, &read_offset},
    {"_fileno", get_fileno, NULL, NULL, &read_offset},
    {"_closing", get_closing, NULL, NULL, &read_offset},
    {"_paused", get_paused, NULL, NULL, &read_offset},
    {NULL}};

static PyGetSetDef wp_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {"_loop", get_loop, NULL, NULL, &write_offset},
    {"_pipe", get_pipe, set_pipe, NULL, &write_offset},
    {"_fileno", get_fileno, NULL, NULL, &write_offset},
    {"_closing", get_closing, NULL, NULL, &write_offset},
    {"_protocol_paused", get_protocol_paused, NULL, NULL, &write_offset},
    {"_conn_lost", get_conn_lost, NULL, NULL, &write_offset},
    {NULL}};

static PyMethodDef rp_methods[] = {
    {"is_reading", rp_is_reading, METH_NOARGS, NULL},
    {"pause_reading", rp_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", rp_resume_reading, METH_NOARGS, NULL},
    {"close", rp_close, METH_NOARGS, NULL},
    {"is_closing", rp_is_closing, METH_NOARGS, NULL},
    {"get_protocol", rp_get_protocol, METH_NOARGS, NULL},
    {"set_protocol", rp_set_protocol, METH_O, NULL},
    {"_call_connection_lost", rp_call_connection_lost, METH_O, NULL},
    {"_start_reading", rp_start_reading, METH_NOARGS, NULL},
    {"_read_ready", rp_read_ready, METH_NOARGS, NULL},
    {NULL}};

static PyMethodDef wp_methods[] = {
    {"write", wp_write, METH_O, NULL},
    {"writelines", wp_writelines, METH_O, NULL},
    {"write_eof", wp_write_eof, METH_NOARGS, NULL},
    {"can_write_eof", wp_can_write_eof, METH_NOARGS, NULL},
    {"close", wp_close, METH_NOARGS, NULL},
    {"abort", wp_abort, METH_NOARGS, NULL},
    {"is_closing", wp_is_closing, METH_NOARGS, NULL},
    {"get_write_buffer_size", wp_get_write_buffer_size, METH_NOARGS, NULL},
    {"get_write_buffer_limits", wp_get_write_buffer_limits, METH_NOARGS, NULL},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))wp_set_write_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_protocol", wp_get_protocol, METH_NOARGS, NULL},
    {"set_protocol", wp_set_protocol, METH_O, NULL},
    {"_call_connection_lost", wp_call_connection_lost, METH_O, NULL},
    {"_watch_peer", wp_watch_peer, METH_NOARGS, NULL},
    {"_read_ready", wp_read_ready, METH_NOARGS, NULL},
    {"_write_ready", wp_write_ready, METH_NOARGS, NULL},
    {NULL}};

static PyMemberDef rp_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, 0, READONLY, NULL}, /* offsets set at type creation */
    {"__dictoffset__", T_PYSSIZET, 0, READONLY, NULL},
    {NULL}};
static PyMemberDef wp_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, 0, READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, 0, READONLY, NULL},
    {NULL}};

static PyType_Slot rp_slots[] = {
    {Py_tp_init, rp_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_repr, rp_repr},
    {Py_tp_methods, rp_methods},
    {Py_tp_members, rp_members},
    {Py_tp_getset, rp_getset},
    {Py_tp_traverse, rp_traverse},
    {Py_tp_clear, rp_clear},
    {Py_tp_dealloc, rp_dealloc},
    {Py_tp_finalize, rp_finalize},
    {Py_tp_doc, "braid.Loop's transport for the read end of a pipe: an asyncio.ReadTransport in C."},
    {0, NULL}};

static PyType_Slot wp_slots[] = {
    {Py_tp_init, wp_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_repr, wp_repr},
    {Py_tp_methods, wp_methods},
    {Py_tp_members, wp_members},
    {Py_tp_getset, wp_getset},
    {Py_tp_traverse, wp_traverse},
    {Py_tp_clear, wp_clear},
    {Py_tp_dealloc, wp_dealloc},
    {Py_tp_finalize, wp_finalize},
    {Py_tp_doc, "braid.Loop's transport for the write end of a pipe: an asyncio.WriteTransport in C."},
    {0, NULL}};

static PyType_Spec rp_spec = {
    .name = "braid._braid.ReadPipeTransport",
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = rp_slots,
};

static PyType_Spec wp_spec = {
    .name = "braid._braid.WritePipeTransport",
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = wp_slots,
};

/* Bases as asyncio's: ReadTransport; _FlowControlMixin and WriteTransport. */
static const braid_tail_type_t rp_tail = {
    .spec = &rp_spec,
    .bases = {"ReadTransport"},
    .tail_size = sizeof(pipe_t),
    .members = rp_members,
    .member_at = {offsetof(pipe_t, weakrefs), offsetof(pipe_t, dict)},
    .tail_offset = &read_offset,
    .extra_offset = &extra_offset,
};

static const braid_tail_type_t wp_tail = {
    .spec = &wp_spec,
    .bases = {"_FlowControlMixin", "WriteTransport"},
    .tail_size = sizeof(pipe_t),
    .members = wp_members,
    .member_at = {offsetof(pipe_t, weakrefs), offsetof(pipe_t, dict)},
    .tail_offset = &write_offset,
    .extra_offset = &extra_offset,
};

/* Made with the loop's other transport types, when the first braid.Loop
 * starts (asyncio is imported then, not with braid). */
int braid_pipetransport_make_types(braid_state *st, PyObject *module)
{
    if (st->read_pipe_transport_type != NULL) {
        return 0;
    }
    st->read_pipe_transport_type = braid_transport_make_tail_type(module, &rp_tail);
    st->write_pipe_transport_type =
        st->read_pipe_transport_type ? braid_transport_make_tail_type(module, &wp_tail) : NULL;
    if (st->write_pipe_transport_type == NULL) {
        Py_CLEAR(st->read_pipe_transport_type);
        return -1;
    }
    int rc = PyModule_AddObjectRef(module, "ReadPipeTransport", (PyObject *)st->read_pipe_transport_type);
    if (rc == 0) {
        rc = PyModule_AddObjectRef(module, "WritePipeTransport", (PyObject *)st->write_pipe_transport_type);
    }
    return rc;
}
