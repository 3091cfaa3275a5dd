/*
 * procworker.c — the loop a braid.ProcessPool worker process runs.
 *
 * The pool protocol (the shared memory on fds 3..7, whole messages, the
 * task slots, the ACK word) is the engine's br_ppworker_t; this file only
 * turns messages into Python calls. Unpickling, the call and pickling the
 * outcome are one Python call to the handler given by braid._procworker,
 * and every wait runs with the GIL released.
 */
#include "braidpy.h"
#include "compat.h"

#include <errno.h>
#include <signal.h>
#include <string.h>

/* This process's end of its pool (one worker loop per process). */
static br_ppworker_t worker;
static int attached;

/* Sends a whole message, sleeping while the result ring is full. 0 or -1. */
static int send_all(br_ring_msg_t *m)
{
    for (;;) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = br_ppworker_send(&worker, m);
        Py_END_ALLOW_THREADS
        if (rc == 0) {
            return 0;
        }
        if (rc != -EINTR) {
            braid_raise_oserror(rc, "sending a result");
            return -1;
        }
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
    }
}

/* Receives one whole message into *payload (bytes). 0, or -1 with an
 * exception. */
static int recv_message(uint32_t *type, uint64_t *tag, PyObject **payload)
{
    for (;;) {
        br_ring_frag_t m;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = br_ppworker_recv(&worker, &m, -1);
        Py_END_ALLOW_THREADS
        if (rc == 0) {
            *type = m.type;
            *tag = m.tag;
            *payload = PyBytes_FromStringAndSize((const char *)m.data, (Py_ssize_t)m.len);
            br_ppworker_release(&worker);
            return *payload != NULL ? 0 : -1;
        }
        if (rc != -EINTR) {
            braid_raise_oserror(rc, "reading a task");
            return -1;
        }
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
    }
}

/* Claims a task before it runs: 1 run it, 0 it was cancelled (SKIPPED is
 * sent), -1 with an exception. */
static int claim(uint64_t tag)
{
    for (;;) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = br_ppworker_claim(&worker, tag);
        Py_END_ALLOW_THREADS
        if (rc >= 0) {
            return rc;
        }
        if (rc != -EINTR) {
            braid_raise_oserror(rc, "claiming a task");
            return -1;
        }
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
    }
}

typedef struct {
    braid_state *st;
    PyObject *handler;      /* _procworker._handle: the general path */
    PyObject *pack_result;  /* (result, seq, mapped) -> (type, bytes) */
    PyObject *pack_error;   /* (exc) -> (type, bytes) */
    PyObject *release;      /* () -> result memfd sets still held */
    int may_hold;           /* a result may still hold out-of-band memfds */
    uint64_t ack_seen;
} worker_hooks_t;

/* Lets go of result memfds the parent has acknowledged, when it has. */
static void release_acknowledged(worker_hooks_t *h)
{
    uint64_t ack = br_ppworker_acked(&worker);
    if (!h->may_hold || ack == h->ack_seen) {
        return;
    }
    h->ack_seen = ack;
    PyObject *n = PyObject_CallNoArgs(h->release);
    if (n == NULL) {
        PyErr_WriteUnraisable(h->release);
        return;
    }
    h->may_hold = PyObject_IsTrue(n) == 1;
    Py_DECREF(n);
}

/* Runs a task. The common case (a 3-tuple of a callable, an args tuple and
 * None or a kwargs dict, returning a plain value) never enters Python-level
 * code of braid; every other case goes through the hooks. Returns a new
 * (type, bytes) pair, or a new bytes object for a plain MSG_RESULT, or
 * NULL with an exception (fatal for the worker). */
static PyObject *run_call(worker_hooks_t *h, PyObject *payload, uint64_t tag)
{
    PyObject *call = PyObject_CallOneArg(h->st->pickle_loads, payload);
    if (call == NULL) {
        PyObject *exc = PyErr_GetRaisedException();
        PyObject *out = PyObject_CallOneArg(h->pack_error, exc);
        Py_DECREF(exc);
        return out;
    }
    PyObject *kw = PyTuple_CheckExact(call) && PyTuple_GET_SIZE(call) == 3 ? PyTuple_GET_ITEM(call, 2) : NULL;
    if (kw == NULL || !PyTuple_CheckExact(PyTuple_GET_ITEM(call, 1)) || (kw != Py_None && !PyDict_CheckExact(kw))) {
        Py_DECREF(call); /* out-of-band buffers, or not ours: the general path */
        h->may_hold = 1;
        return PyObject_CallFunction(h->handler, "IOK", (unsigned)BR_PP_MSG_CALL, payload, (unsigned long long)tag);
    }
    PyObject *res = PyObject_Call(PyTuple_GET_ITEM(call, 0), PyTuple_GET_ITEM(call, 1), kw == Py_None ? NULL : kw);
    Py_DECREF(call);
    if (res == NULL) {
        PyObject *exc = PyErr_GetRaisedException();
        PyObject *out = PyObject_CallOneArg(h->pack_error, exc);
        Py_DECREF(exc);
        return out;
    }
    if (braid_is_plain(res, 0)) {
        PyObject *bytes = PyObject_CallFunction(h->st->pickle_dumps, "Oi", res, 5);
        if (bytes != NULL) {
            Py_DECREF(res);
            return bytes;
        }
        PyErr_Clear(); /* the general path reports why */
    }
    h->may_hold = 1;
    PyObject *out = PyObject_CallFunction(h->pack_result, "OKO", res, (unsigned long long)tag, Py_False);
    Py_DECREF(res);
    return out;
}

static PyObject *worker_loop(worker_hooks_t *h)
{
    int rc = br_ppworker_attach(&worker);
    if (rc < 0) {
        return braid_raise_oserror(rc, "attaching the task rings");
    }
    attached = 1;
    PyObject *ret = NULL;
    br_ring_msg_t ready = {.type = BR_PP_MSG_READY};
    if (send_all(&ready) < 0) {
        goto out;
    }
    for (;;) {
        uint32_t type = 0;
        uint64_t tag = 0;
        PyObject *payload = NULL;
        if (recv_message(&type, &tag, &payload) < 0) {
            break;
        }
        if (type == BR_PP_MSG_EXIT) {
            Py_DECREF(payload);
            ret = Py_NewRef(Py_None);
            break;
        }
        if (type == BR_PP_MSG_CALL) {
            /* the parent may have cancelled it meanwhile */
            int run = claim(tag);
            if (run <= 0) {
                Py_DECREF(payload);
                if (run < 0) {
                    break;
                }
                continue;
            }
        }
        PyObject *out;
        if (type == BR_PP_MSG_CALL) {
            release_acknowledged(h);
            out = run_call(h, payload, tag);
        } else {
            out = PyObject_CallFunction(h->handler, "IOK", (unsigned)type, payload, (unsigned long long)tag);
        }
        Py_DECREF(payload);
        if (out == NULL) {
            break;
        }
        if (out == Py_None) { /* nothing to answer (an initializer that ran) */
            Py_DECREF(out);
            continue;
        }
        unsigned rtype = BR_PP_MSG_RESULT;
        const char *data;
        Py_ssize_t len;
        if (PyBytes_Check(out)) { /* a plain result */
            data = PyBytes_AS_STRING(out);
            len = PyBytes_GET_SIZE(out);
        } else if (!PyArg_ParseTuple(out, "Iy#:worker handler result", &rtype, &data, &len)) {
            Py_DECREF(out);
            break;
        }
        br_ring_msg_t msg = {.type = rtype, .tag = tag, .payload = data, .len = (size_t)len};
        int sent = send_all(&msg);
        Py_DECREF(out);
        if (sent < 0) {
            break;
        }
        if (rtype == BR_PP_MSG_INIT_FAILED) {
            ret = PyLong_FromLong(1);
            break;
        }
    }
out:
    attached = 0;
    br_ppworker_detach(&worker);
    return ret;
}

PyObject *braid_worker_loop(PyObject *module, PyObject *args)
{
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        /* `worker` above is the process's one end of its pool */
        PyErr_SetString(PyExc_RuntimeError, "a process-pool worker loop runs in the main interpreter only");
        return NULL;
    }
    worker_hooks_t h = {.st = braid_get_state(module)};
    if (!PyArg_ParseTuple(args, "OOOO:_worker_loop", &h.handler, &h.pack_result, &h.pack_error, &h.release)) {
        return NULL;
    }
    if (!PyCallable_Check(h.handler) || !PyCallable_Check(h.pack_result) || !PyCallable_Check(h.pack_error) ||
        !PyCallable_Check(h.release)) {
        PyErr_SetString(PyExc_TypeError, "_worker_loop(handler, pack_result, pack_error, release) takes callables");
        return NULL;
    }
    return worker_loop(&h); /* the rings' sizes come with their memfds */
}

PyObject *braid_worker_acked(PyObject *module, PyObject *unused)
{
    if (!attached) {
        PyErr_SetString(PyExc_RuntimeError, "not in a worker loop");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(br_ppworker_acked(&worker));
}

PyObject *braid_worker_bind_parent(PyObject *module, PyObject *arg)
{
    long ppid = PyLong_AsLong(arg);
    if (ppid == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int rc = br_proc_bind_to_parent(SIGKILL, (int)ppid);
    if (rc < 0) {
        return braid_raise_oserror(rc, "binding the worker to its parent");
    }
    Py_RETURN_NONE;
}
