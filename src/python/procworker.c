/*
 * procworker.c — the loop a braid.ProcessPool worker process runs.
 *
 * The worker maps the memfd it inherited (fd 3), reads task messages from
 * the first ring and writes result messages to the second (procproto.h).
 * Unpickling, the call and pickling the outcome are one Python call to the
 * handler given by braid._procworker; this file only moves bytes and
 * sleeps with the GIL released while there is nothing to do.
 */
#include "braidpy.h"
#include "compat.h"
#include "procproto.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>

#define WORKER_SPIN_NS 50000

/* The slot page of this worker process (one worker loop per process). */
static uint64_t *worker_slots;

/* Sends a whole message, sleeping while the ring is full. 0 or -1. */
static int send_all(br_ring_t *tx, br_ring_msg_t *m)
{
    for (;;) {
        int rc = br_ring_send(tx, m);
        if (rc == 0) {
            return 0;
        }
        if (rc != -EAGAIN) {
            braid_raise_oserror(rc, "sending a result");
            return -1;
        }
        Py_BEGIN_ALLOW_THREADS
        rc = br_ring_wait_space(tx, -1);
        Py_END_ALLOW_THREADS
        if (rc == -EINTR && PyErr_CheckSignals() < 0) {
            return -1;
        }
    }
}

/* Receives one whole message into *payload (bytes). 0, or -1 with an
 * exception. */
static int recv_message(br_ring_t *rx, uint32_t *type, uint64_t *tag, PyObject **payload)
{
    PyObject *parts = NULL; /* bytearray while a message spans fragments */
    for (;;) {
        br_ring_frag_t f;
        int rc = br_ring_recv(rx, &f);
        if (rc == -EAGAIN) {
            Py_BEGIN_ALLOW_THREADS
            /* Tasks that come one at a time arrive soon after the last
             * result: poll a little before sleeping, which saves the
             * parent a wakeup of this process per task. */
            int64_t until = br_now_ns() + WORKER_SPIN_NS;
            while ((rc = br_ring_recv(rx, &f)) == -EAGAIN && br_now_ns() < until) {
            }
            if (rc == -EAGAIN) {
                rc = br_ring_wait_data(rx, -1);
            }
            Py_END_ALLOW_THREADS
            if (rc == 0) {
                goto got_fragment;
            }
            if (rc == -EINTR && PyErr_CheckSignals() < 0) {
                Py_XDECREF(parts);
                return -1;
            }
            continue;
        }
        if (rc < 0) {
            Py_XDECREF(parts);
            braid_raise_oserror(rc, "reading a task");
            return -1;
        }
    got_fragment:
        if (f.flags & BR_RING_FIRST) {
            Py_CLEAR(parts);
            *type = f.type;
            *tag = f.tag;
        }
        int last = (f.flags & BR_RING_LAST) != 0;
        int ok = 1;
        if (last && parts == NULL) {
            *payload = PyBytes_FromStringAndSize((const char *)f.data, (Py_ssize_t)f.len);
            ok = *payload != NULL;
        } else {
            if (parts == NULL) {
                parts = PyByteArray_FromStringAndSize(NULL, 0);
            }
            Py_ssize_t old = parts ? PyByteArray_GET_SIZE(parts) : 0;
            ok = parts != NULL && PyByteArray_Resize(parts, old + (Py_ssize_t)f.len) == 0;
            if (ok) {
                memcpy(PyByteArray_AS_STRING(parts) + old, f.data, f.len);
            }
        }
        br_ring_release(rx, &f);
        if (!ok) {
            Py_XDECREF(parts);
            return -1;
        }
        if (last) {
            if (parts != NULL) {
                *payload = PyBytes_FromObject(parts);
                Py_DECREF(parts);
                if (*payload == NULL) {
                    return -1;
                }
            }
            return 0;
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
static void release_acknowledged(worker_hooks_t *h, uint64_t *slots)
{
    uint64_t ack = __atomic_load_n(&slots[ACK_INDEX], __ATOMIC_ACQUIRE);
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
        return PyObject_CallFunction(h->handler, "IOK", (unsigned)MSG_CALL, payload, (unsigned long long)tag);
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

static PyObject *worker_loop(int64_t ring_bytes, worker_hooks_t *h)
{
    size_t one = br_ring_mem_size((size_t)ring_bytes);
    size_t total = 2 * one + SLOTS_BYTES;
    void *mem = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, WORKER_FD_MEM, 0);
    if (mem == MAP_FAILED) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    br_ring_t rx, tx;
    int rc = br_ring_attach(&rx, mem, one, WORKER_FD_TASK_DATA, WORKER_FD_TASK_SPACE);
    if (rc == 0) {
        rc = br_ring_attach(&tx, (char *)mem + one, one, WORKER_FD_RESULT_DATA, WORKER_FD_RESULT_SPACE);
    }
    if (rc < 0) {
        munmap(mem, total);
        return braid_raise_oserror(rc, "attaching the task rings");
    }
    uint64_t *slots = (uint64_t *)((char *)mem + 2 * one);
    worker_slots = slots;
    PyObject *ret = NULL;
    br_ring_msg_t ready = {.type = MSG_READY};
    if (send_all(&tx, &ready) < 0) {
        munmap(mem, total);
        return NULL;
    }
    for (;;) {
        uint32_t type = 0;
        uint64_t tag = 0;
        PyObject *payload = NULL;
        if (recv_message(&rx, &type, &tag, &payload) < 0) {
            break;
        }
        if (type == MSG_EXIT) {
            Py_DECREF(payload);
            ret = Py_NewRef(Py_None);
            break;
        }
        if (type == MSG_CALL) {
            /* claim the task; the parent may have cancelled it meanwhile */
            uint64_t expect = SLOT_WORD(tag, SLOT_QUEUED);
            if (!__atomic_compare_exchange_n(&slots[tag % SLOTS], &expect, SLOT_WORD(tag, SLOT_RUNNING), 0,
                                             __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                Py_DECREF(payload);
                br_ring_msg_t skipped = {.type = MSG_SKIPPED, .tag = tag};
                if (send_all(&tx, &skipped) < 0) {
                    break;
                }
                continue;
            }
        }
        PyObject *out;
        if (type == MSG_CALL) {
            release_acknowledged(h, slots);
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
        unsigned rtype = MSG_RESULT;
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
        int sent = send_all(&tx, &msg);
        Py_DECREF(out);
        if (sent < 0) {
            break;
        }
        if (rtype == MSG_INIT_FAILED) {
            ret = PyLong_FromLong(1);
            break;
        }
    }
    worker_slots = NULL;
    munmap(mem, total);
    return ret;
}

PyObject *braid_worker_loop(PyObject *module, PyObject *args)
{
    long long ring_bytes;
    worker_hooks_t h = {.st = braid_get_state(module)};
    if (!PyArg_ParseTuple(args, "LOOOO:_worker_loop", &ring_bytes, &h.handler, &h.pack_result, &h.pack_error,
                          &h.release)) {
        return NULL;
    }
    if (ring_bytes <= 0 || !PyCallable_Check(h.handler) || !PyCallable_Check(h.pack_result) ||
        !PyCallable_Check(h.pack_error) || !PyCallable_Check(h.release)) {
        PyErr_SetString(PyExc_ValueError, "_worker_loop(ring_bytes > 0, handler, pack_result, pack_error, release)");
        return NULL;
    }
    return worker_loop(ring_bytes, &h);
}

PyObject *braid_worker_acked(PyObject *module, PyObject *unused)
{
    if (worker_slots == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "not in a worker loop");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&worker_slots[ACK_INDEX], __ATOMIC_ACQUIRE));
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
