/*
 * dgramtransport.c — DatagramTransport: braid.Loop's transport for UDP and
 * Unix datagram sockets, a C object over the engine's br_udp_t.
 *
 * asyncio's datagram transport reads with sock.recvfrom() from a reader
 * Handle, so every datagram costs a bound-method call, a bytes object and
 * an address tuple made by the socket module, and a full socket buffer
 * queues (bytes, address) tuples in a deque. Here the engine reads each
 * datagram into the loop's read buffer and the transport makes the bytes
 * and the address itself; sends go out through the engine, which copies a
 * datagram into its own queue only when the kernel pushes back. The
 * behaviour is asyncio's (selector_events._SelectorDatagramTransport),
 * method by method: the same errors, messages and order of protocol calls;
 * the write-buffer size counts 8 bytes per queued datagram on 3.13+, as
 * asyncio's does there.
 *
 * Only sockets of the families whose addresses it converts itself get one
 * (AF_INET, AF_INET6, AF_UNIX); others keep asyncio's transport. A sendto
 * address that is not numeric ("localhost") is resolved as the socket
 * module would (getaddrinfo, blocking, as asyncio's sendto does, on every
 * send); the last numeric address used is kept converted.
 *
 * A subclass of asyncio's _FlowControlMixin and DatagramTransport, as
 * asyncio's is (an asyncio.Transport too, which CPython's tests check).
 *
 * Life cycle:
 *
 *   __init__ --> OPEN: connection_made and the first read scheduled
 *     |  close(): reading stops; once the queue is empty -> connection_lost
 *     |  abort() / a fatal error: the queue dropped -> connection_lost(exc)
 *     v
 *   LOST (conn_lost > 0) --> _call_connection_lost: the protocol told, the
 *     socket object detached, the engine handle closed (its fd with it)
 *     v
 *   the handle's close callback: the object may go
 *
 * References: while the engine may call back (reading, a queue, closing),
 * the object holds a reference to itself, as asyncio's transport is held
 * by its reader and writer handles.
 */
#include "braidpy.h"
#include "compat.h"

#include <structmember.h> /* T_PYSSIZET: the weak reference list's offset */

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#define LOG_THRESHOLD_FOR_CONNLOST_WRITES 5
#define HEADER_BYTES 8 /* what asyncio 3.13+ counts per queued datagram */

typedef struct {
    br_udp_t udp;
    PyObject *weakrefs;
    PyObject *dict;          /* made on first assignment: asyncio's transports take
                                attributes (tests replace methods with mocks) */
    PyObject *loop;          /* NULL once connection_lost has run */
    PyObject *udp_loop;      /* the loop the handle is on, held until its close callback */
    PyObject *protocol;
    PyObject *sock;          /* the socket object; detached once the handle closes its fd */
    PyObject *address;       /* the peer (remote_addr), or NULL */
    PyObject *last_addr;     /* the last sendto address and its sockaddr */
    braid_trctx_t ctx;       /* what the engine's callbacks run the protocol in */
    braid_trctx_t wctx;      /* the send side's: the context of the sendto() that found the
                                queue empty and left datagrams in it (asyncio's writer
                                handle, made by _add_writer inside that sendto()); NULL: ctx */
    struct sockaddr_storage last_sa;
    socklen_t last_salen;
    struct sockaddr_storage named_sa; /* a name's address, for the send it was resolved for */
    size_t high, low;
    unsigned conn_lost;
    int fd;
    int family;
    unsigned closing : 1, paused : 1, protocol_paused : 1, connected : 1, udp_open : 1, self_ref : 1,
        sock_gone : 1, has_peer : 1, write_later : 1;
} dtail_t;

/* Written when the first braid.Loop makes the type (braid_transport_make_tail_type). */
static Py_ssize_t tail_offset;   /* asyncio.transports._FlowControlMixin's basicsize (DatagramTransport adds
                                    no fields): the same in every interpreter */
static Py_ssize_t extra_offset;  /* BaseTransport's _extra slot */

#define TAIL(o) ((dtail_t *)((char *)(o) + tail_offset))
#define EXTRA(o) (*(PyObject **)((char *)(o) + extra_offset))
#define SELF(u) ((PyObject *)((char *)(u) - tail_offset)) /* udp is the tail's first member */

/* --------------------------------------------------------- addresses */

/* A numeric (host, port[, flowinfo[, scope_id]]) or a Unix path into a
 * sockaddr, as the socket module's getsockaddrarg parses them: 1
 * converted, 0 a host name to resolve (the port is checked already), -1
 * with an error. */
static int numeric_sockaddr(int family, PyObject *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    if (family == AF_UNIX) {
        struct sockaddr_un *a = (struct sockaddr_un *)ss;
        PyObject *bytes = PyUnicode_Check(addr) ? PyUnicode_EncodeFSDefault(addr) : Py_NewRef(addr);
        Py_buffer path;
        if (bytes == NULL || PyObject_GetBuffer(bytes, &path, PyBUF_SIMPLE) < 0) {
            Py_XDECREF(bytes);
            return -1;
        }
        /* Linux: an empty name (autobind) or an abstract one (a leading NUL)
         * fills sun_path; a path needs room for its terminating NUL */
        int abstract = path.len == 0 || ((const char *)path.buf)[0] == '\0';
        if ((size_t)path.len > sizeof a->sun_path - (abstract ? 0 : 1)) {
            PyBuffer_Release(&path);
            Py_DECREF(bytes);
            PyErr_SetString(PyExc_OSError, "AF_UNIX path too long");
            return -1;
        }
        a->sun_family = AF_UNIX;
        memcpy(a->sun_path, path.buf, (size_t)path.len);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)path.len);
        PyBuffer_Release(&path);
        Py_DECREF(bytes);
        return 1;
    }
    if (!PyTuple_Check(addr)) {
        PyErr_Format(PyExc_TypeError, "%s address must be tuple, not %.100s",
                     family == AF_INET6 ? "AF_INET6" : "AF_INET", Py_TYPE(addr)->tp_name);
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(addr);
    if (n < 2 || n > (family == AF_INET6 ? 4 : 2)) {
        PyErr_Format(PyExc_TypeError, "%s address must be a %s", family == AF_INET6 ? "AF_INET6" : "AF_INET",
                     family == AF_INET6 ? "tuple (host, port[, flowinfo[, scopeid]])" : "pair (host, port)");
        return -1;
    }
    PyObject *port_obj = PyTuple_GET_ITEM(addr, 1);
    if (!PyLong_Check(port_obj)) {
        PyErr_Format(PyExc_TypeError, "'%.100s' object cannot be interpreted as an integer",
                     Py_TYPE(port_obj)->tp_name);
        return -1;
    }
    long port = PyLong_AsLong(port_obj);
    if (port == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_OverflowError, "getsockaddrarg: port must be 0-65535.");
        return -1;
    }
    unsigned long flow = 0, scope = 0;
    if (n > 2 && (flow = PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(addr, 2))) == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (n > 3 && (scope = PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(addr, 3))) == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if ((unsigned int)flow > 0xfffff) {
        PyErr_SetString(PyExc_OverflowError, "getsockaddrarg: flowinfo must be 0-1048575.");
        return -1;
    }
    PyObject *host = PyTuple_GET_ITEM(addr, 0);
    const char *h = PyUnicode_Check(host) ? PyUnicode_AsUTF8(host) : NULL;
    if (h == NULL) {
        PyErr_Clear();
        return 0; /* bytes hosts and the like: the socket module's way */
    }
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        if (h[0] == '\0') {
            a->sin_addr.s_addr = htonl(INADDR_ANY);
        } else if (strcmp(h, "<broadcast>") == 0) {
            a->sin_addr.s_addr = htonl(INADDR_BROADCAST);
        } else if (inet_pton(AF_INET, h, &a->sin_addr) != 1) {
            return 0;
        }
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        *len = sizeof *a;
        return 1;
    }
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    if (h[0] == '\0') {
        a->sin6_addr = in6addr_any;
    } else if (strchr(h, '%') != NULL || inet_pton(AF_INET6, h, &a->sin6_addr) != 1) {
        return 0; /* a name, or a scope by name ("fe80::1%eth0"): resolved */
    }
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    a->sin6_flowinfo = htonl((uint32_t)flow);
    a->sin6_scope_id = (uint32_t)scope;
    *len = sizeof *a;
    return 1;
}

/* The same address as the one converted last: the same object, or equal
 * items of the same exact types (a float port must not pass for an int). */
static int same_address(PyObject *a, PyObject *b)
{
    if (a == b) {
        return 1;
    }
    if (Py_TYPE(a) != Py_TYPE(b)) {
        return 0;
    }
    if (PyUnicode_CheckExact(a) || PyBytes_CheckExact(a)) {
        return PyObject_RichCompareBool(a, b, Py_EQ) == 1;
    }
    if (!PyTuple_CheckExact(a) || PyTuple_GET_SIZE(a) != PyTuple_GET_SIZE(b)) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(a); i++) {
        PyObject *x = PyTuple_GET_ITEM(a, i), *y = PyTuple_GET_ITEM(b, i);
        if (Py_TYPE(x) != Py_TYPE(y) || !(PyUnicode_CheckExact(x) || PyLong_CheckExact(x)) ||
            PyObject_RichCompareBool(x, y, Py_EQ) != 1) {
            return 0;
        }
    }
    return 1;
}

/* addr as a sockaddr for this transport's socket: the last one again, a
 * numeric one converted, or a name resolved as socket.sendto would. */
static int sockaddr_of(PyObject *self, PyObject *addr, const struct sockaddr **sa, socklen_t *len)
{
    dtail_t *t = TAIL(self);
    if (t->last_addr != NULL) {
        PyObject *last = Py_NewRef(t->last_addr); /* a comparison may run code that sends */
        int same = same_address(last, addr);
        Py_DECREF(last);
        PyErr_Clear();
        if (same && t->last_addr != NULL) {
            *sa = (const struct sockaddr *)&t->last_sa;
            *len = t->last_salen;
            return 0;
        }
    }
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    int rc = numeric_sockaddr(t->family, addr, &ss, &sl);
    if (rc < 0) {
        return -1;
    }
    if (rc == 0) {
        /* a name: resolved on every send, as socket.sendto does (not kept) */
        /* getaddrinfo(host, port, family, SOCK_DGRAM)[0][4], numeric */
        PyObject *socket = PyImport_ImportModule("socket");
        PyObject *infos = socket ? PyObject_CallMethod(socket, "getaddrinfo", "OOii", PyTuple_GET_ITEM(addr, 0),
                                                       PyTuple_GET_ITEM(addr, 1), t->family, SOCK_DGRAM)
                                 : NULL;
        Py_XDECREF(socket);
        if (infos == NULL) {
            return -1;
        }
        PyObject *first = PyList_Check(infos) && PyList_GET_SIZE(infos) > 0 ? PyList_GET_ITEM(infos, 0) : NULL;
        PyObject *numeric = first && PyTuple_Check(first) && PyTuple_GET_SIZE(first) == 5 ? PyTuple_GET_ITEM(first, 4)
                                                                                         : NULL;
        rc = numeric ? numeric_sockaddr(t->family, numeric, &ss, &sl) : -1;
        Py_DECREF(infos);
        if (rc <= 0) {
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_OSError, "could not resolve %R", addr);
            }
            return -1;
        }
        if (t->family == AF_INET6) {
            /* the caller's flowinfo and scope, as the socket module's */
            struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
            Py_ssize_t n = PyTuple_GET_SIZE(addr);
            a6->sin6_flowinfo = htonl(n > 2 ? (uint32_t)PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(addr, 2)) : 0);
            a6->sin6_scope_id = n > 3 ? (uint32_t)PyLong_AsUnsignedLongMask(PyTuple_GET_ITEM(addr, 3)) : 0;
        }
        memcpy(&t->named_sa, &ss, sizeof ss);
        *sa = (const struct sockaddr *)&t->named_sa;
        *len = sl;
        return 0;
    }
    Py_XSETREF(t->last_addr, Py_NewRef(addr));
    memcpy(&t->last_sa, &ss, sizeof ss);
    t->last_salen = sl;
    *sa = (const struct sockaddr *)&t->last_sa;
    *len = sl;
    return 0;
}

/* --------------------------------------------------------- references */

static void update_self_ref(PyObject *self)
{
    dtail_t *t = TAIL(self);
    int want = t->udp_open && (br_is_active(&t->udp.handle) || br_is_closing(&t->udp.handle));
    if (want && !t->self_ref) {
        t->self_ref = 1;
        Py_INCREF(self);
    } else if (!want && t->self_ref) {
        t->self_ref = 0;
        Py_DECREF(self); /* not the last: the caller has self */
    }
}

static void udp_closed(br_handle_t *h)
{
    PyObject *self = SELF(h);
    dtail_t *t = TAIL(self);
    t->udp_open = 0;
    if (t->udp_loop != NULL) {
        braid_loop_count_stream(t->udp_loop, -1);
        Py_CLEAR(t->udp_loop);
    }
    if (t->self_ref) {
        t->self_ref = 0;
        Py_DECREF(self); /* may be the last */
    }
}

/* The socket object lets go of the fd (the engine closes it), then the
 * handle closes. Idempotent. */
static void close_udp(PyObject *self)
{
    dtail_t *t = TAIL(self);
    if (!t->udp_open || br_is_closing(&t->udp.handle)) {
        return;
    }
    if (t->sock != NULL) {
        PyObject *r = PyObject_CallMethod(t->sock, "detach", NULL);
        if (r == NULL) {
            PyErr_WriteUnraisable(self);
        }
        Py_XDECREF(r);
    }
    if (!t->self_ref) {
        t->self_ref = 1; /* until the close callback */
        Py_INCREF(self);
    }
    (void)br_close(&t->udp.handle, udp_closed);
}

/* --------------------------------------------------------- asyncio's error paths */

static int force_close(PyObject *self, PyObject *exc);

static PyObject *protocol_or_none(PyObject *self)
{
    PyObject *p = TAIL(self)->protocol;
    return p ? p : Py_None;
}

/* An exception out of a protocol callback the engine ran: KeyboardInterrupt
 * and SystemExit leave run_forever, as asyncio's; anything else goes to the
 * exception handler as an exception in the reader's callback would (the
 * transport stays open, as asyncio's). Consumes the exception. */
static void callback_failed(PyObject *self, const char *what)
{
    dtail_t *t = TAIL(self);
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *loop = t->loop ? t->loop : t->udp_loop;
    if (PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt) ||
        PyErr_GivenExceptionMatches(exc, PyExc_SystemExit)) {
        if (loop != NULL) {
            braid_loop_raise_later(loop, exc);
            return;
        }
        PyErr_SetRaisedException(exc);
        PyErr_WriteUnraisable(self);
        return;
    }
    PyObject *msg = PyUnicode_FromFormat("Exception in callback %R.%s", self, what);
    PyObject *r = NULL;
    if (msg != NULL && loop != NULL) {
        r = braid_transport_exception(loop, msg, exc, self, protocol_or_none(self));
    }
    if (r == NULL) {
        PyErr_WriteUnraisable(self);
    }
    Py_XDECREF(r);
    Py_XDECREF(msg);
    Py_DECREF(exc);
}

/* asyncio's _fatal_error: an OSError is only logged in debug mode, anything
 * else goes to the exception handler; then the transport is forced shut. */
static int fatal_error(PyObject *self, PyObject *exc, const char *message)
{
    dtail_t *t = TAIL(self);
    if (t->loop != NULL && braid_transport_report_fatal(t->loop, self, protocol_or_none(self), exc, message) < 0) {
        return -1;
    }
    return force_close(self, exc);
}

static int schedule(PyObject *self, PyObject *fn, PyObject *arg)
{
    PyObject *r = PyObject_CallMethod(TAIL(self)->loop, "call_soon", "OO", fn, arg);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

static int schedule_lost(PyObject *self, PyObject *exc)
{
    PyObject *lost = PyObject_GetAttrString(self, "_call_connection_lost");
    int rc = lost ? schedule(self, lost, exc ? exc : Py_None) : -1;
    Py_XDECREF(lost);
    return rc;
}

/* asyncio's _force_close: the queue goes, reading stops, connection_lost
 * is scheduled once. */
static int force_close(PyObject *self, PyObject *exc)
{
    dtail_t *t = TAIL(self);
    if (t->conn_lost) {
        return 0;
    }
    t->closing = 1;
    t->conn_lost++;
    if (t->udp_open && !br_is_closing(&t->udp.handle)) {
        (void)br_udp_recv_stop(&t->udp);
        br_udp_discard(&t->udp);
        update_self_ref(self);
    }
    return schedule_lost(self, exc);
}

/* --------------------------------------------------------- flow control */

static size_t buffer_size(PyObject *self)
{
    dtail_t *t = TAIL(self);
    if (!t->udp_open || br_is_closing(&t->udp.handle)) {
        return 0;
    }
#if PY_VERSION_HEX >= 0x030D0000
    return br_udp_queued(&t->udp) + HEADER_BYTES * br_udp_queued_datagrams(&t->udp);
#else
    return br_udp_queued(&t->udp);
#endif
}

/* _maybe_pause_protocol / _maybe_resume_protocol of _FlowControlMixin. */
/* KeyboardInterrupt or SystemExit out of pause_writing() in a method the
 * user called: raised from that method, as asyncio's. -1 then. */
static int reraise(PyObject *self)
{
    dtail_t *t = TAIL(self);
    PyObject *loop = t->loop ? t->loop : t->udp_loop;
    return loop ? braid_loop_reraise(loop) : 0;
}

static void flow(PyObject *self, int pause)
{
    dtail_t *t = TAIL(self);
    size_t size = buffer_size(self);
    if (pause ? (size <= t->high || t->protocol_paused) : (!t->protocol_paused || size > t->low)) {
        return;
    }
    t->protocol_paused = pause;
    PyObject *loop = t->loop ? t->loop : t->udp_loop;
    if (t->protocol != NULL && loop != NULL) {
        braid_transport_call_flow(loop, self, t->protocol, pause ? "pause_writing" : "resume_writing");
    }
}

/* --------------------------------------------------------- the engine's callbacks */

/* Order. asyncio reads a datagram from a reader handle that the poll puts
 * behind the callbacks already ready, so those run first (a task that is
 * about to create the future datagram_received will set, say). The engine
 * reads in the poll itself: when callbacks were waiting in the ready queue
 * as the poll began, the datagram goes behind them through
 * call_soon(_deliver) (braid_loop_ready_before_poll), which checks the
 * transport is still open as asyncio's _read_ready does; with nothing
 * ready it goes to the protocol at once. */
static void on_recv_body(br_udp_t *u, const char *buf, ssize_t n, const struct sockaddr *addr, socklen_t addrlen)
{
    PyObject *self = SELF(u);
    dtail_t *t = TAIL(self);
    if (t->conn_lost || t->protocol == NULL || t->loop == NULL) {
        return;
    }
    Py_INCREF(self);
    PyObject *r = NULL;
    if (n >= 0) {
        PyObject *data = PyBytes_FromStringAndSize(buf, n);
        PyObject *from = data ? braid_address_object(addr, addrlen) : NULL;
        PyObject *deliver = from && braid_loop_ready_before_poll(t->loop) ? PyObject_GetAttrString(self, "_deliver") : NULL;
        if (deliver != NULL) {
            PyObject *argv[3] = {deliver, data, from};
            r = braid_loop_call_soon_io(t->loop, argv, 3) == 0 ? Py_NewRef(Py_None) : NULL;
        } else if (from != NULL && !PyErr_Occurred()) {
            r = PyObject_CallMethod(t->protocol, "datagram_received", "OO", data, from);
        }
        Py_XDECREF(deliver);
        Py_XDECREF(data);
        Py_XDECREF(from);
    } else {
        PyObject *exc = braid_socket_error((int)n);
        PyObject *deliver = exc && braid_loop_ready_before_poll(t->loop)
                                ? PyObject_GetAttrString(self, "_deliver_error") : NULL;
        if (deliver != NULL) {
            PyObject *argv[2] = {deliver, exc};
            r = braid_loop_call_soon_io(t->loop, argv, 2) == 0 ? Py_NewRef(Py_None) : NULL;
        } else if (exc != NULL && !PyErr_Occurred()) {
            r = PyObject_CallMethod(t->protocol, "error_received", "O", exc);
        }
        Py_XDECREF(deliver);
        Py_XDECREF(exc);
    }
    if (r == NULL) {
        callback_failed(self, n >= 0 ? "datagram_received()" : "error_received()");
    }
    Py_XDECREF(r);
    Py_DECREF(self);
}

/* A datagram queued behind the ready callbacks (on_recv): to the protocol
 * unless the transport has been closed meanwhile. An exception goes to the
 * loop's handler through the handle, as one from asyncio's _read_ready. */
static PyObject *dt_deliver(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    dtail_t *t = TAIL(self);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_deliver(data, addr)");
        return NULL;
    }
    if (t->conn_lost || t->protocol == NULL) {
        Py_RETURN_NONE;
    }
    return PyObject_CallMethod(t->protocol, "datagram_received", "OO", args[0], args[1]);
}

static PyObject *dt_deliver_error(PyObject *self, PyObject *exc)
{
    dtail_t *t = TAIL(self);
    if (t->conn_lost || t->protocol == NULL) {
        Py_RETURN_NONE;
    }
    return PyObject_CallMethod(t->protocol, "error_received", "O", exc);
}

/* A queued datagram the kernel refused: the protocol hears of it and the
 * rest still go, as asyncio's _sendto_ready. */
static void on_send_error_body(br_udp_t *u, int err)
{
    PyObject *self = SELF(u);
    dtail_t *t = TAIL(self);
    if (t->protocol == NULL) {
        return;
    }
    Py_INCREF(self);
    PyObject *exc = braid_socket_error(err);
    PyObject *r = exc ? PyObject_CallMethod(t->protocol, "error_received", "O", exc) : NULL;
    Py_XDECREF(exc);
    if (r == NULL) {
        callback_failed(self, "error_received()");
    }
    Py_XDECREF(r);
    Py_DECREF(self);
}

static void on_drain_body(br_udp_t *u)
{
    PyObject *self = SELF(u);
    dtail_t *t = TAIL(self);
    Py_INCREF(self);
    if (!t->conn_lost) {
        flow(self, 0); /* may send again; an aborted transport is not resumed (asyncio's _force_close) */
    }
    if (br_udp_queued_datagrams(&t->udp) == 0) {
        update_self_ref(self);
        if (t->closing && !t->conn_lost) {
            /* close() with a queue: asyncio calls connection_lost right here */
            t->conn_lost++;
            PyObject *r = PyObject_CallMethod(self, "_call_connection_lost", "O", Py_None);
            if (r == NULL) {
                callback_failed(self, "_call_connection_lost()");
            }
            Py_XDECREF(r);
        }
    }
    Py_DECREF(self);
}

/* Before a flush at writable readiness: as a socket transport's
 * (socktransport.c, on_flush), the flush waits behind the callbacks that
 * were ready when the poll began, where asyncio's writer handle
 * (_sendto_ready) runs: call_soon(_write_ready) sends. */
static int on_flush(br_udp_t *u)
{
    dtail_t *t = TAIL(SELF(u));
    if (!t->write_later) { /* else a _write_ready is on its way */
        t->write_later = braid_transport_later(t->loop, SELF(u), "_write_ready");
    }
    return t->write_later ? BR_UDP_NOT_NOW : 0;
}

static braid_trctx_t *write_ctx(dtail_t *t) { return t->wctx.ctx ? &t->wctx : &t->ctx; }

static PyObject *dt_write_ready(PyObject *self, PyObject *unused)
{
    dtail_t *t = TAIL(self);
    t->write_later = 0;
    if (t->udp_open) {
        Py_INCREF(self);
        BRAID_IN_CONTEXT(self, write_ctx(t), NULL, (void)br_udp_flush_now(&t->udp));
        update_self_ref(self);
        int rc = reraise(self);
        Py_DECREF(self);
        if (rc < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* The engine's callbacks, in the transport's context (braid_trctx_t). */
static PyObject *ctx_loop(dtail_t *t) { return t->loop ? t->loop : t->udp_loop; }

static void on_recv(br_udp_t *u, const char *buf, ssize_t n, const struct sockaddr *addr, socklen_t addrlen)
{
    BRAID_IN_CONTEXT(SELF(u), &TAIL(SELF(u))->ctx, NULL, on_recv_body(u, buf, n, addr, addrlen));
}

static void on_send_error(br_udp_t *u, int err)
{
    dtail_t *t = TAIL(SELF(u));
    BRAID_IN_CONTEXT(SELF(u), write_ctx(t), ctx_loop(t), on_send_error_body(u, err));
}

static void on_drain(br_udp_t *u)
{
    dtail_t *t = TAIL(SELF(u));
    BRAID_IN_CONTEXT(SELF(u), write_ctx(t), ctx_loop(t), on_drain_body(u));
}

static int start_reading(PyObject *self)
{
    dtail_t *t = TAIL(self);
    if (t->closing || t->paused || !t->udp_open || br_is_closing(&t->udp.handle)) {
        return 0;
    }
    int err = br_udp_recv_start(&t->udp, on_recv);
    if (err < 0) {
        braid_raise_oserror(err, "watching the socket");
        return -1;
    }
    update_self_ref(self);
    return 0;
}

/* --------------------------------------------------------- methods */

static PyObject *dt_sendto(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data", "addr", NULL};
    PyObject *data, *addr = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:sendto", kwlist, &data, &addr)) {
        return NULL;
    }
    dtail_t *t = TAIL(self);
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
        return PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not '%.100s'",
                            Py_TYPE(data)->tp_name);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        /* a non-contiguous memoryview: socket.sendto refuses it, and asyncio
         * makes that a fatal write error */
        PyObject *exc = PyErr_GetRaisedException();
        int rc = fatal_error(self, exc, "Fatal write error on datagram transport");
        Py_DECREF(exc);
        return rc < 0 ? NULL : Py_NewRef(Py_None);
    }
#if PY_VERSION_HEX < 0x030D0000
    if (view.len == 0) { /* asyncio before 3.13 sends no empty datagram */
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
#endif
    if (t->address != NULL) {
        int same = addr == Py_None ? 1 : PyObject_RichCompareBool(addr, t->address, Py_EQ);
        if (same <= 0) {
            PyBuffer_Release(&view);
            return same < 0 ? NULL : PyErr_Format(PyExc_ValueError, "Invalid address: must be None or %S", t->address);
        }
        addr = t->address;
    }
    if (t->conn_lost && (t->address != NULL || !t->udp_open || br_is_closing(&t->udp.handle))) {
        PyBuffer_Release(&view);
        if (t->conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES) {
            PyObject *log = braid_import_attr("asyncio.log", "logger");
            PyObject *r = log ? PyObject_CallMethod(log, "warning", "s", "socket.send() raised exception.") : NULL;
            Py_XDECREF(log);
            if (r == NULL) {
                return NULL;
            }
            Py_DECREF(r);
        }
        t->conn_lost++;
        Py_RETURN_NONE;
    }
    const struct sockaddr *sa = NULL;
    socklen_t salen = 0;
    if (!t->has_peer && addr != Py_None && sockaddr_of(self, addr, &sa, &salen) < 0) {
        PyBuffer_Release(&view);
        /* as asyncio, where socket.sendto meets the address: an OSError
         * (a name that does not resolve) goes to error_received, anything
         * else (a malformed address) is a fatal write error */
        PyObject *exc = PyErr_GetRaisedException();
        PyObject *r;
        if (PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt) ||
            PyErr_GivenExceptionMatches(exc, PyExc_SystemExit)) {
            PyErr_SetRaisedException(exc);
            return NULL;
        }
        if (PyErr_GivenExceptionMatches(exc, PyExc_OSError)) {
            r = t->protocol ? PyObject_CallMethod(t->protocol, "error_received", "O", exc) : Py_NewRef(Py_None);
        } else {
            r = fatal_error(self, exc, "Fatal write error on datagram transport") < 0 ? NULL : Py_NewRef(Py_None);
        }
        Py_DECREF(exc);
        return r;
    }
    size_t before = br_udp_queued_datagrams(&t->udp);
    int err = br_udp_send(&t->udp, view.buf, (size_t)view.len, sa, salen);
    PyBuffer_Release(&view);
    if (err == 0 && before == 0 && !t->wctx.entered && br_udp_queued_datagrams(&t->udp) > 0) {
        PyObject *c = PyContext_CopyCurrent();
        if (c == NULL) {
            PyErr_Clear(); /* the transport's context then, rather than fail a send that queued */
        } else {
            Py_XSETREF(t->wctx.ctx, c);
        }
    }
    if (err == -ENOMEM) {
        return PyErr_NoMemory();
    }
    if (err < 0) {
        /* refused now (EMSGSIZE, ECONNREFUSED, ...): the protocol hears of it */
        PyObject *exc = braid_socket_error(err);
        PyObject *r = exc && t->protocol ? PyObject_CallMethod(t->protocol, "error_received", "O", exc) : NULL;
        Py_XDECREF(exc);
        if (r == NULL && PyErr_Occurred()) {
            return NULL;
        }
        Py_XDECREF(r);
        Py_RETURN_NONE;
    }
    if (br_udp_queued_datagrams(&t->udp) > 0) {
        update_self_ref(self);
        flow(self, 1);
    }
    return reraise(self) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *dt_close(PyObject *self, PyObject *unused)
{
    dtail_t *t = TAIL(self);
    if (t->closing) {
        Py_RETURN_NONE;
    }
    t->closing = 1;
    if (t->udp_open && !br_is_closing(&t->udp.handle)) {
        (void)br_udp_recv_stop(&t->udp);
    }
    /* connection_lost now if nothing is queued, else once it has gone
     * (on_drain), as asyncio's */
    if (!t->udp_open || br_is_closing(&t->udp.handle) || br_udp_queued_datagrams(&t->udp) == 0) {
        t->conn_lost++;
        if (schedule_lost(self, Py_None) < 0) {
            return NULL;
        }
    }
    update_self_ref(self);
    Py_RETURN_NONE;
}

static PyObject *dt_abort(PyObject *self, PyObject *unused)
{
    return force_close(self, NULL) < 0 ? NULL : Py_NewRef(Py_None);
}

/* asyncio's _call_connection_lost: the protocol hears of it, then the
 * socket goes and the transport forgets the loop's objects. */
static PyObject *dt_call_connection_lost(PyObject *self, PyObject *exc)
{
    dtail_t *t = TAIL(self);
    if (t->sock_gone) {
        Py_RETURN_NONE; /* ran already (close() with a queue, then a drain) */
    }
    PyObject *r = Py_NewRef(Py_None);
    if (t->connected && t->protocol != NULL) {
        Py_DECREF(r);
        r = PyObject_CallMethod(t->protocol, "connection_lost", "O", exc);
    }
    Py_INCREF(self);
    PyObject *raised = r ? NULL : PyErr_GetRaisedException();
    close_udp(self);
    Py_CLEAR(t->sock);
    t->sock_gone = 1;
    Py_CLEAR(t->protocol);
    Py_CLEAR(t->loop);
    Py_DECREF(self);
    if (raised != NULL) {
        PyErr_SetRaisedException(raised);
        return NULL;
    }
    return r;
}

static PyObject *dt_is_closing(PyObject *self, PyObject *unused) { return PyBool_FromLong(TAIL(self)->closing); }

static PyObject *dt_is_reading(PyObject *self, PyObject *unused)
{
    dtail_t *t = TAIL(self);
    return PyBool_FromLong(!t->closing && !t->paused);
}

static PyObject *dt_pause_reading(PyObject *self, PyObject *unused)
{
    dtail_t *t = TAIL(self);
    if (t->closing || t->paused) {
        Py_RETURN_NONE;
    }
    t->paused = 1;
    if (t->udp_open && !br_is_closing(&t->udp.handle)) {
        (void)br_udp_recv_stop(&t->udp);
        update_self_ref(self);
    }
    Py_RETURN_NONE;
}

static PyObject *dt_resume_reading(PyObject *self, PyObject *unused)
{
    dtail_t *t = TAIL(self);
    if (t->closing || !t->paused) {
        Py_RETURN_NONE;
    }
    t->paused = 0;
    return start_reading(self) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *dt_start_reading(PyObject *self, PyObject *unused)
{
    return start_reading(self) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *dt_get_write_buffer_size(PyObject *self, PyObject *unused)
{
    return PyLong_FromSize_t(buffer_size(self));
}

static PyObject *dt_get_write_buffer_limits(PyObject *self, PyObject *unused)
{
    dtail_t *t = TAIL(self);
    return Py_BuildValue("(nn)", (Py_ssize_t)t->low, (Py_ssize_t)t->high);
}

static PyObject *dt_set_write_buffer_limits(PyObject *self, PyObject *args, PyObject *kwds)
{
    dtail_t *t = TAIL(self);
    if (braid_parse_write_limits(args, kwds, &t->high, &t->low) < 0) {
        return NULL;
    }
    flow(self, 1);
    return reraise(self) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *dt_get_protocol(PyObject *self, PyObject *unused) { return Py_NewRef(protocol_or_none(self)); }

static PyObject *dt_set_protocol(PyObject *self, PyObject *protocol)
{
    dtail_t *t = TAIL(self);
    Py_XSETREF(t->protocol, Py_NewRef(protocol));
    t->connected = 1;
    Py_RETURN_NONE;
}

static PyObject *dt_repr(PyObject *self)
{
    dtail_t *t = TAIL(self);
    PyObject *name = PyType_GetName(Py_TYPE(self)); /* the class's __name__, as asyncio's */
    if (name == NULL) {
        return NULL;
    }
    PyObject *r;
    if (t->sock_gone || t->loop == NULL) {
        r = PyUnicode_FromFormat("<%U %sfd=%d>", name, t->sock_gone ? "closed " : t->closing ? "closing " : "", t->fd);
    } else {
        int open = t->udp_open && !br_is_closing(&t->udp.handle);
        const char *reading = open && br_udp_receiving(&t->udp) && !t->paused && !t->closing ? "polling" : "idle";
        size_t size = buffer_size(self);
        r = PyUnicode_FromFormat("<%U%s fd=%d read=%s write=<%s, bufsize=%zu>>", name, t->closing ? " closing" : "",
                                 t->fd, reading, size ? "polling" : "idle", size);
    }
    Py_DECREF(name);
    return r;
}

/* --------------------------------------------------------- set-up */

/* DatagramTransport(loop, sock, protocol, address=None, waiter=None, extra=None) */
static int dt_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"loop", "sock", "protocol", "address", "waiter", "extra", NULL};
    PyObject *loop, *sock, *protocol, *address = Py_None, *waiter = Py_None, *extra = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|OOO:DatagramTransport", kwlist, &loop, &sock, &protocol,
                                     &address, &waiter, &extra)) {
        return -1;
    }
    dtail_t *t = TAIL(self);
    if (t->loop != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "DatagramTransport.__init__ called twice");
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
    Py_XDECREF(fdobj);
    if (fdl < 0 || fdl > INT_MAX) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "the socket is closed");
        }
        return -1;
    }
    int fd = (int)fdl, family = 0;
    socklen_t flen = sizeof family;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &flen) < 0 ||
        (family != AF_INET && family != AF_INET6 && family != AF_UNIX)) {
        PyErr_Format(PyExc_ValueError, "DatagramTransport needs an AF_INET, AF_INET6 or AF_UNIX socket; fd %d is not one", fd);
        return -1;
    }
    if (braid_trctx_init(&t->ctx) < 0) {
        return -1;
    }
    t->loop = Py_NewRef(loop);
    t->sock = Py_NewRef(sock);
    t->fd = fd;
    t->family = family;
    t->high = 64 * 1024;
    t->low = 16 * 1024;
    t->address = address == Py_None ? NULL : Py_NewRef(address);
    Py_XSETREF(EXTRA(self), extra == Py_None ? PyDict_New() : PyDict_Copy(extra));
    if (EXTRA(self) == NULL) {
        return -1;
    }
    /* what _SelectorTransport puts in _extra: socket, sockname, peername */
    PyObject *d = EXTRA(self);
    PyObject *trsock = braid_import_attr("asyncio.trsock", "TransportSocket");
    PyObject *ts = trsock ? PyObject_CallOneArg(trsock, sock) : NULL;
    Py_XDECREF(trsock);
    if (ts == NULL || PyDict_SetItemString(d, "socket", ts) < 0) {
        Py_XDECREF(ts);
        return -1;
    }
    Py_DECREF(ts);
    const char *keys[2] = {"sockname", "peername"}, *meth[2] = {"getsockname", "getpeername"};
    for (int i = 0; i < 2; i++) {
        if (i == 1 && PyDict_GetItemString(d, "peername") != NULL) {
            break;
        }
        PyObject *v = PyObject_CallMethod(sock, meth[i], NULL);
        if (v == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_OSError)) {
                return -1;
            }
            PyErr_Clear();
            v = Py_NewRef(Py_None);
        }
        int rc = PyDict_SetItemString(d, keys[i], v);
        Py_DECREF(v);
        if (rc < 0) {
            return -1;
        }
    }
    PyObject *peer = PyDict_GetItemString(d, "peername");
    int truthy = peer ? PyObject_IsTrue(peer) : 0;
    if (truthy < 0) {
        return -1;
    }
    t->has_peer = truthy; /* asyncio: send() to the peer, whatever the address says */
    PyObject *r = dt_set_protocol(self, protocol);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    int err = br_udp_init(core, &t->udp, fd);
    if (err < 0) {
        braid_raise_oserror(err, "watching the socket");
        return -1;
    }
    t->udp.handle.data = self;
    t->udp_open = 1;
    t->udp_loop = Py_NewRef(loop);
    braid_loop_count_stream(loop, +1);
    br_udp_set_error_cb(&t->udp, on_send_error);
    br_udp_set_drain_cb(&t->udp, on_drain);
    br_udp_set_flush_cb(&t->udp, on_flush);
    /* loop._transports[fd] = self, as _SelectorTransport's __init__ */
    PyObject *transports = PyObject_GetAttrString(loop, "_transports");
    PyObject *key = transports ? PyLong_FromLong(fd) : NULL;
    err = key ? PyObject_SetItem(transports, key, self) : -1;
    Py_XDECREF(key);
    Py_XDECREF(transports);
    /* as asyncio: connection_made, then reading, then the waiter */
    PyObject *made = err == 0 ? PyObject_GetAttrString(protocol, "connection_made") : NULL;
    PyObject *start = made ? PyObject_GetAttrString(self, "_start_reading") : NULL;
    PyObject *rr = start ? PyObject_CallMethod(loop, "call_soon", "OO", made, self) : NULL;
    Py_XDECREF(rr);
    rr = rr ? PyObject_CallMethod(loop, "call_soon", "O", start) : NULL;
    Py_XDECREF(rr);
    Py_XDECREF(made);
    Py_XDECREF(start);
    if (rr != NULL && waiter != Py_None) {
        PyObject *set = braid_import_attr("asyncio.futures", "_set_result_unless_cancelled");
        rr = set ? PyObject_CallMethod(loop, "call_soon", "OOO", set, waiter, Py_None) : NULL;
        Py_XDECREF(set);
        Py_XDECREF(rr);
    }
    if (rr == NULL) {
        /* made, then refused: the engine lets go of the fd (detached from
         * the socket object, whose owner's close() is then a no-op) */
        PyObject *exc = PyErr_GetRaisedException();
        Py_INCREF(self);
        close_udp(self);
        Py_CLEAR(t->sock);
        t->sock_gone = 1;
        Py_DECREF(self);
        PyErr_SetRaisedException(exc);
        return -1;
    }
    return 0;
}

/* --------------------------------------------------------- the object's life */

static void dt_finalize(PyObject *self)
{
    dtail_t *t = TAIL(self);
    if (t->sock_gone || !t->udp_open) {
        return;
    }
    PyObject *exc = PyErr_GetRaisedException();
    if (PyErr_WarnFormat(PyExc_ResourceWarning, 1, "unclosed transport %R", self) < 0) {
        PyErr_WriteUnraisable(self);
    }
    close_udp(self); /* resurrects it until the engine's close callback */
    Py_CLEAR(t->sock);
    t->sock_gone = 1;
    PyErr_SetRaisedException(exc);
}

static int dt_traverse(PyObject *self, visitproc visit, void *arg)
{
    dtail_t *t = TAIL(self);
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(EXTRA(self));
    Py_VISIT(t->loop);
    Py_VISIT(t->udp_loop);
    Py_VISIT(t->protocol);
    Py_VISIT(t->sock);
    Py_VISIT(t->address);
    Py_VISIT(t->last_addr);
    Py_VISIT(t->dict);
    Py_VISIT(t->ctx.ctx);
    Py_VISIT(t->wctx.ctx);
    return 0;
}

static int dt_clear(PyObject *self)
{
    dtail_t *t = TAIL(self);
    Py_CLEAR(EXTRA(self));
    Py_CLEAR(t->protocol);
    Py_CLEAR(t->address);
    Py_CLEAR(t->last_addr);
    Py_CLEAR(t->dict);
    Py_CLEAR(t->ctx.ctx);
    Py_CLEAR(t->wctx.ctx);
    /* loop and sock stay: the handle's close still needs them */
    return 0;
}

static void dt_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    /* the finalizer first, while still tracked: it may resurrect the object */
    if (PyObject_CallFinalizerFromDealloc(self) < 0) {
        return; /* resurrected until its handle has closed */
    }
    PyObject_GC_UnTrack(self);
    dtail_t *t = TAIL(self);
    if (t->weakrefs != NULL) {
        PyObject_ClearWeakRefs(self);
    }
    Py_CLEAR(EXTRA(self));
    Py_CLEAR(t->loop);
    Py_CLEAR(t->udp_loop);
    Py_CLEAR(t->protocol);
    Py_CLEAR(t->sock);
    Py_CLEAR(t->address);
    Py_CLEAR(t->last_addr);
    Py_CLEAR(t->dict);
    Py_CLEAR(t->ctx.ctx);
    Py_CLEAR(t->wctx.ctx);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* The loop is closing with this transport's handle open (see
 * braid_socktransport_loop_closing). */
void braid_dgramtransport_loop_closing(br_handle_t *h, void *unused)
{
    if (h->type != BR_HANDLE_UDP || br_is_closing(h)) {
        return;
    }
    PyObject *self = SELF(h);
    dtail_t *t = TAIL(self);
    t->closing = 1;
    if (!t->conn_lost) {
        t->conn_lost++;
    }
    Py_INCREF(self);
    close_udp(self);
    Py_DECREF(self);
}

PyObject *braid_dgramtransport_held(br_handle_t *h)
{
    if (h->type != BR_HANDLE_UDP) {
        return NULL;
    }
    PyObject *self = SELF(h);
    return TAIL(self)->self_ref ? self : NULL;
}

static PyObject *dt_get_loop(PyObject *self, void *c) { return Py_NewRef(TAIL(self)->loop ? TAIL(self)->loop : Py_None); }
static PyObject *dt_get_sock(PyObject *self, void *c) { return Py_NewRef(TAIL(self)->sock ? TAIL(self)->sock : Py_None); }
static PyObject *dt_get_sock_fd(PyObject *self, void *c) { return PyLong_FromLong(TAIL(self)->fd); }
static PyObject *dt_get_closing(PyObject *self, void *c) { return PyBool_FromLong(TAIL(self)->closing); }
static PyObject *dt_get_conn_lost(PyObject *self, void *c) { return PyLong_FromUnsignedLong(TAIL(self)->conn_lost); }
static PyObject *dt_get_address(PyObject *self, void *c) { return Py_NewRef(TAIL(self)->address ? TAIL(self)->address : Py_None); }
static PyObject *dt_get_protocol_paused(PyObject *self, void *c) { return PyBool_FromLong(TAIL(self)->protocol_paused); }
static PyObject *dt_get_buffer_size(PyObject *self, void *c) { return PyLong_FromSize_t(buffer_size(self)); }

static PyGetSetDef dt_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {"_loop", dt_get_loop, NULL, NULL, NULL},
    {"_sock", dt_get_sock, NULL, NULL, NULL},
    {"_sock_fd", dt_get_sock_fd, NULL, NULL, NULL},
    {"_closing", dt_get_closing, NULL, NULL, NULL},
    {"_conn_lost", dt_get_conn_lost, NULL, NULL, NULL},
    {"_address", dt_get_address, NULL, NULL, NULL},
    {"_protocol_paused", dt_get_protocol_paused, NULL, NULL, NULL},
    {"_buffer_size", dt_get_buffer_size, NULL, NULL, NULL},
    {NULL}};

static PyMethodDef dt_methods[] = {
    {"sendto", (PyCFunction)(void (*)(void))dt_sendto, METH_VARARGS | METH_KEYWORDS, NULL},
    {"close", dt_close, METH_NOARGS, NULL},
    {"abort", dt_abort, METH_NOARGS, NULL},
    {"is_closing", dt_is_closing, METH_NOARGS, NULL},
    {"is_reading", dt_is_reading, METH_NOARGS, NULL},
    {"pause_reading", dt_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", dt_resume_reading, METH_NOARGS, NULL},
    {"get_write_buffer_size", dt_get_write_buffer_size, METH_NOARGS, NULL},
    {"get_write_buffer_limits", dt_get_write_buffer_limits, METH_NOARGS, NULL},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))dt_set_write_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_protocol", dt_get_protocol, METH_NOARGS, NULL},
    {"set_protocol", dt_set_protocol, METH_O, NULL},
    {"_call_connection_lost", dt_call_connection_lost, METH_O, NULL},
    {"_deliver", (PyCFunction)(void (*)(void))dt_deliver, METH_FASTCALL, NULL},
    {"_deliver_error", dt_deliver_error, METH_O, NULL},
    {"_start_reading", dt_start_reading, METH_NOARGS, NULL},
    {"_write_ready", dt_write_ready, METH_NOARGS, NULL},
    {NULL}};

static PyMemberDef dt_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, 0, READONLY, NULL}, /* offsets set at type creation */
    {"__dictoffset__", T_PYSSIZET, 0, READONLY, NULL},
    {NULL}};

static PyType_Slot dt_slots[] = {
    {Py_tp_init, dt_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_repr, dt_repr},
    {Py_tp_methods, dt_methods},
    {Py_tp_members, dt_members},
    {Py_tp_getset, dt_getset},
    {Py_tp_traverse, dt_traverse},
    {Py_tp_clear, dt_clear},
    {Py_tp_dealloc, dt_dealloc},
    {Py_tp_finalize, dt_finalize},
    {Py_tp_doc, "braid.Loop's transport for UDP and Unix datagram sockets: an asyncio.DatagramTransport in C."},
    {0, NULL}};

static PyType_Spec dt_spec = {
    .name = "braid._braid.DatagramTransport",
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = dt_slots,
};

static const braid_tail_type_t dt_tail = {
    .spec = &dt_spec,
    /* as asyncio's (_SelectorTransport, DatagramTransport): CPython's tests
     * check that a datagram transport is an asyncio.Transport too; the
     * mixin's four slots go unused, the C fields hold the same */
    .bases = {"_FlowControlMixin", "DatagramTransport"},
    .tail_size = sizeof(dtail_t),
    .members = dt_members,
    .member_at = {offsetof(dtail_t, weakrefs), offsetof(dtail_t, dict)},
    .tail_offset = &tail_offset,
    .extra_offset = &extra_offset,
};

/* Made with the socket transport's type, when the first braid.Loop starts. */
int braid_dgramtransport_make_type(braid_state *st, PyObject *module)
{
    if (st->datagram_transport_type != NULL) {
        return 0;
    }
    st->datagram_transport_type = braid_transport_make_tail_type(module, &dt_tail);
    if (st->datagram_transport_type == NULL) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "DatagramTransport", (PyObject *)st->datagram_transport_type);
}
