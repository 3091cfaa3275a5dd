/*
 * sockaccept.c — _accept_plain: braid.Loop's accept loop for plain (not
 * TLS) stream servers, in C.
 *
 * asyncio's _accept_connection accepts through socket.accept() (a
 * socket.socket made by its Python __init__ per connection), then makes a
 * task per connection whose coroutine calls the protocol factory and makes
 * the transport one iteration later, with a waiter future. Here a batch of
 * accept4() calls (SOCK_NONBLOCK | SOCK_CLOEXEC: no setblocking) each get
 * their protocol and their SocketTransport at once; the transport makes the
 * socket object only if get_extra_info("socket") asks. Python's side
 * (Loop._accept_connection) keeps asyncio's way for TLS, debug mode (its
 * log lines) and a loop whose subclass makes its own transports, and hands
 * an accept error (EMFILE and the like) to asyncio's handling, which
 * reports it, pauses accepting and tries again. Loop._start_serving makes
 * this function itself the listening socket's reader, with its arguments
 * worked out once: no Python frame per readiness.
 */
#include "braidpy.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

/* Connections taken at one readiness while the accept queue is short: at
 * least this many, or an eighth of the queue. */
#define ACCEPT_BATCH 4

/* How many connections to take at this readiness.
 *
 * asyncio drains the queue (up to backlog) at every readiness. That costs
 * a failed accept4 per readiness when connections trickle in (measured:
 * 0.85 per connection in a 15,000-connection burst the server outpaced;
 * uvloop made one accept4 per connection in the same burst), so a lone
 * readiness takes one connection and the level-triggered poll reports the
 * next. Under steady churn a whole batch at once has a second cost: the
 * objects of every connection in it come into being together (aiohttp: 7
 * the collector tracks per connection; batches of 20-45 connections under
 * wrk -c50 with a new connection per request), and the collector's
 * young-generation count, which a free only lowers while it is above zero,
 * reaches its threshold about once per batch: 1,366-1,563 young and 11-13
 * full collections (~15 ms each) in an 8-second run, against uvloop's 44-51
 * and none. One per readiness gave uvloop's counts but one request per
 * iteration (epoll_wait 0.99 per request against 0.19) and 0.83x the
 * requests/s; ACCEPT_BATCH gave 141-172 young collections and 1 full one at
 * 0.98x the requests/s of whole batches (2: 0.93x; 8: 180-204 young).
 * Once the listening socket accepted in the previous iteration too, TCP_INFO
 * gives the accept queue's length and limit (tcpi_unacked, tcpi_sacked on a
 * listening socket): an eighth of the queue is taken, so a long one (a large
 * backlog after a pause) empties in a few iterations, and past half the
 * limit all of it, as asyncio does, before the kernel starts dropping what
 * does not fit (the client then waits a second to try again). A Unix
 * socket's queue length is not to be had, and a non-blocking connect to a
 * full one fails at once (a proxy answers 502): there the queue is drained,
 * as asyncio drains it, once a readiness follows an accepting iteration. */
static long accept_batch(PyObject *loop, int lfd, int family, long backlog)
{
    if (!braid_loop_accept_burst(loop, lfd)) {
        return 1;
    }
    if (family != AF_INET && family != AF_INET6) {
        return backlog;
    }
    struct tcp_info info;
    socklen_t len = sizeof info;
    if (getsockopt(lfd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0 ||
        len < offsetof(struct tcp_info, tcpi_sacked) + sizeof info.tcpi_sacked ||
        (uint64_t)info.tcpi_unacked * 2 > info.tcpi_sacked) {
        return backlog;
    }
    long n = (long)(info.tcpi_unacked / 8);
    n = n > ACCEPT_BATCH ? n : ACCEPT_BATCH;
    return backlog < n ? backlog : n;
}

PyObject *braid_accept_plain(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 && nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "_accept_plain(loop, fd, family, protocol_factory, server, backlog[, fallback])");
        return NULL;
    }
    /* fallback: asyncio's _accept_connection for this server, which the
     * loop's reader calls when this cannot do its work: in debug mode (its
     * log lines) and on an accept error (it reports EMFILE and the like,
     * pauses accepting and tries again) */
    if (braid_loop_core(args[0]) == NULL) {
        return NULL; /* not a braid.Loop (TypeError), or a closed one (RuntimeError) */
    }
    PyObject *fallback = nargs == 7 ? args[6] : NULL;
    if (fallback != NULL && braid_loop_debug(args[0])) {
        return PyObject_CallNoArgs(fallback);
    }
    PyObject *loop = args[0], *factory = args[3], *server = args[4];
    long lfd = PyLong_AsLong(args[1]), family = PyLong_AsLong(args[2]), backlog = PyLong_AsLong(args[5]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (lfd < 0 || lfd > INT_MAX || family < 0 || family > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "_accept_plain: a listening socket's fd and family are needed");
        return NULL;
    }
    braid_state *st = braid_get_state(module);
    if (st->socket_transport_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_accept_plain: no braid.Loop has started yet");
        return NULL;
    }
    /* at least one: asyncio's loop over range(backlog) never accepts for 0 */
    backlog = accept_batch((PyObject *)loop, (int)lfd, (int)family, backlog > 0 ? backlog : 1);
    for (long i = 0; i < backlog; i++) {
        int fd = accept4((int)lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) {
                i--;
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED) {
                break; /* as asyncio: an empty queue or an aborted connection ends the batch */
            }
            if (fallback != NULL) {
                return PyObject_CallNoArgs(fallback); /* it meets the same error and handles it */
            }
            return braid_raise_oserror(-errno, NULL);
        }
        PyObject *protocol = PyObject_CallNoArgs(factory);
        PyObject *transport = protocol ? braid_socktransport_accepted(st, loop, fd, (int)family, protocol, server)
                                       : NULL;
        if (protocol == NULL) {
            (void)close(fd);
        }
        Py_XDECREF(protocol);
        if (transport == NULL) {
            /* as asyncio outside debug mode: the connection is dropped
             * unreported; KeyboardInterrupt and SystemExit go up */
            if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt) || PyErr_ExceptionMatches(PyExc_SystemExit)) {
                return NULL;
            }
            PyErr_Clear();
            continue;
        }
        Py_DECREF(transport); /* the loop's ready queue holds it until it reads */
    }
    Py_RETURN_NONE;
}
