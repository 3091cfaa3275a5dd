/*
 * procpool.c — _ProcessPoolCore, the C half of braid.ProcessPool: the
 * Python object over a proc_core_t (procpool_core.c: the engine's
 * br_procpool_t on a loop thread of its own, and the futures of the tasks
 * in flight). This file pickles the calls, makes the futures and raises.
 */
#include "procpool_core.h"
#include "compat.h"

#include <errno.h>

typedef struct {
    PyObject_HEAD
    proc_core_t *core;
} ProcPoolObject;

static PyObject *pp_submit(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    if (braid_pool_check_made(self, c) < 0) {
        return NULL;
    }
    braid_state *st = c->st;
    PyObject *fn, *tuple, *kwargs;
    if (braid_unpack_submit(args, nargs, kwnames, &fn, &tuple, &kwargs) < 0) {
        return NULL;
    }
    if (c->broken != NULL || c->closing) {
        Py_DECREF(tuple);
        Py_XDECREF(kwargs);
        if (c->broken != NULL) {
            PyErr_SetObject(braid_broken_process_pool(st), c->broken);
        } else {
            PyErr_SetString(PyExc_RuntimeError, "cannot schedule new futures after shutdown");
        }
        return NULL;
    }
    FutureObject *fut = braid_future_new(st);
    PyObject *keep = fut ? Py_BuildValue("(ONN)", fn, tuple, kwargs ? kwargs : Py_NewRef(Py_None)) : NULL;
    if (keep == NULL) {
        if (fut == NULL) {
            Py_DECREF(tuple);
            Py_XDECREF(kwargs);
        }
        Py_XDECREF(fut);
        return NULL;
    }
    PyObject *payload = braid_dumps_task(st, fn, PyTuple_GET_ITEM(keep, 1),
                                         kwargs ? PyTuple_GET_ITEM(keep, 2) : NULL, keep);
    PyObject *held = NULL;
    if (payload != NULL && PyTuple_Check(payload) && PyTuple_GET_SIZE(payload) == 2) {
        /* (bytes, memfds of out-of-band buffers to keep until settled) */
        PyObject *pair = payload;
        payload = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
        held = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
        Py_DECREF(pair);
    }
    if (payload == NULL || !PyBytes_Check(payload)) {
        /* an argument that cannot be pickled fails this task alone */
        Py_XDECREF(held);
        Py_DECREF(keep);
        PyObject *exc = payload ? NULL : PyErr_GetRaisedException();
        if (exc == NULL) {
            Py_XDECREF(payload);
            PyErr_SetString(PyExc_TypeError, "the task serializer did not return bytes");
            exc = PyErr_GetRaisedException();
        }
        fut->state = FUT_RUNNING;
        (void)braid_future_finish(fut, NULL, exc);
        Py_DECREF(exc);
        return (PyObject *)fut;
    }
    return braid_proc_core_submit(c, fut, payload, held, keep);
}

static PyObject *pp_shutdown(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wait", "cancel_futures", NULL};
    int wait = 1, cancel = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p$p:shutdown", kwlist, &wait, &cancel)) {
        return NULL;
    }
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    if (braid_pool_check_made(self, c) < 0) {
        return NULL;
    }
    braid_proc_core_close(c, cancel ? BR_PPCLOSE_CANCEL : BR_PPCLOSE_FINISH, 0);
    if (wait && braid_proc_core_join(c) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* terminate(): what multiprocessing.Pool.terminate does -- queued work is
 * cancelled, the workers are killed at once (their running tasks fail with
 * WorkerCrashed), and the call returns once the pool has settled all. */
static PyObject *pp_terminate(PyObject *self, PyObject *unused)
{
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    if (braid_pool_check_made(self, c) < 0) {
        return NULL;
    }
    braid_proc_core_close(c, BR_PPCLOSE_KILL, 0);
    if (braid_proc_core_join(c) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *pp_get_max_workers(PyObject *self, void *x)
{
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    return PyLong_FromUnsignedLong(c != NULL ? c->nworkers : 0);
}

static PyObject *pp_get_template_pid(PyObject *self, void *x)
{
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    int pid = c != NULL && c->spawner != NULL ? braid_spawner_template_pid(c->spawner) : 0;
    return pid > 0 ? PyLong_FromLong(pid) : Py_NewRef(Py_None);
}

static PyObject *pp_get_pids(PyObject *self, void *x)
{
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    if (c == NULL) {
        return PyList_New(0);
    }
    /* workers start in the background: answer once the first ones have */
    while (!c->forked && !br_event_is_set(&c->started_ev)) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = br_event_wait(&c->started_ev, -1);
        Py_END_ALLOW_THREADS
        if (rc == -EINTR && PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
    int *pids = c->forked ? NULL : PyMem_Calloc(c->nworkers, sizeof *pids);
    int n = pids != NULL ? br_procpool_pids(&c->pool, pids, (int)c->nworkers) : 0;
    PyObject *list = PyList_New(n);
    for (int i = 0; list != NULL && i < n; i++) {
        PyObject *pid = PyLong_FromLong(pids[i]);
        if (pid == NULL) {
            Py_CLEAR(list);
        } else {
            PyList_SET_ITEM(list, i, pid);
        }
    }
    PyMem_Free(pids);
    return list;
}

static int pp_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_workers", "argv", "envp", "ring_bytes", "init_payload",
                             "max_tasks_per_worker", "task_timeout", "retries", "max_worker_memory", NULL};
    proc_config_t cfg = {0};
    long long ring_bytes, max_memory = 0;
    int retries;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "IO!O!LOIdi|L:_ProcessPoolCore", kwlist, &cfg.workers,
                                     &PyList_Type, &cfg.argv, &PyList_Type, &cfg.envp, &ring_bytes,
                                     &cfg.init_payload, &cfg.max_tasks_per_worker, &cfg.task_timeout,
                                     &retries, &max_memory)) {
        return -1;
    }
    ProcPoolObject *p = (ProcPoolObject *)self;
    if (p->core != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "__init__ called twice");
        return -1;
    }
    if (cfg.workers == 0 || PyList_GET_SIZE(cfg.argv) < 1 || ring_bytes <= 0 || retries < 0 || max_memory < 0 ||
        (cfg.init_payload != Py_None && !PyBytes_Check(cfg.init_payload))) {
        PyErr_SetString(PyExc_ValueError, "invalid _ProcessPoolCore arguments");
        return -1;
    }
    cfg.ring_bytes = (size_t)ring_bytes;
    cfg.retries = (unsigned)retries;
    cfg.max_worker_memory = (size_t)max_memory;
    PyObject *module = braid_module_from_type(Py_TYPE(self));
    if (module == NULL || braid_load_pools(module) < 0) {
        return -1;
    }
    braid_state *st = braid_state_from_type(Py_TYPE(self));
    if (st->proc_dumps == NULL || st->proc_loads == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "braid._procpool did not register its hooks");
        return -1;
    }
    proc_core_t *c = braid_proc_core_new(st, &cfg);
    if (c == NULL) {
        return -1;
    }
    p->core = c;
    if (c->background) {
        return 0;
    }
    /* Without a template: waits for the first workers, so that a bad
     * interpreter path raises here; the loop thread may need the GIL. */
    Py_BEGIN_ALLOW_THREADS
    (void)br_event_wait(&c->started_ev, -1);
    Py_END_ALLOW_THREADS
    if (c->start_err < 0) {
        PyErr_Format(PyExc_OSError, "could not start worker process %U: %s", PyList_GET_ITEM(cfg.argv, 0),
                     br_strerror(c->start_err));
        return -1;
    }
    return 0;
}

static void pp_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    if (c != NULL) {
        braid_proc_core_drop(c);
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef pp_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))pp_submit, METH_FASTCALL | METH_KEYWORDS,
     "submit(fn, /, *args, **kwargs) -> Future: runs fn(*args, **kwargs) in a worker process."},
    {"shutdown", (PyCFunction)(void (*)(void))pp_shutdown, METH_VARARGS | METH_KEYWORDS,
     "shutdown(wait=True, *, cancel_futures=False)"},
    {"terminate", pp_terminate, METH_NOARGS,
     "terminate(): cancels queued work, kills the workers now (running tasks fail with "
     "WorkerCrashed) and waits until they are gone."},
    {NULL}};

static PyGetSetDef pp_getset[] = {
    {"max_workers", pp_get_max_workers, NULL, "number of worker processes", NULL},
    {"_max_workers", pp_get_max_workers, NULL, NULL, NULL},
    {"pids", pp_get_pids, NULL, "process ids of the live workers", NULL},
    {"_template_pid", pp_get_template_pid, NULL, "pid of the template the workers are forked from, or None", NULL},
    {NULL}};

static PyType_Slot pp_slots[] = {
    {Py_tp_dealloc, pp_dealloc},
    {Py_tp_init, pp_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_methods, pp_methods},
    {Py_tp_getset, pp_getset},
    {Py_tp_doc, "The C half of braid.ProcessPool."},
    {0, NULL}};

static PyType_Spec pp_spec = {
    .name = "braid._braid._ProcessPoolCore",
    .basicsize = sizeof(ProcPoolObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = pp_slots,
};

int braid_procpool_init_types(PyObject *module, braid_state *st)
{
    st->procpool_core_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &pp_spec, NULL);
    if (st->procpool_core_type == NULL) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "_ProcessPoolCore", (PyObject *)st->procpool_core_type);
}

