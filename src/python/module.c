/*
 * module.c — braid._braid: multi-phase init, module state, module functions.
 *
 * All Python objects the extension keeps live in braid_state (no static
 * PyObject globals), so the module can be imported in several interpreters.
 */
#include "braidpy.h"
#include "compat.h"

static struct PyModuleDef braid_module_def;

braid_state *braid_get_state(PyObject *module)
{
    return (braid_state *)PyModule_GetState(module);
}

PyObject *braid_module_from_type(PyTypeObject *tp)
{
    return PyType_GetModuleByDef(tp, &braid_module_def);
}

braid_state *braid_state_from_type(PyTypeObject *tp)
{
    PyObject *m = PyType_GetModuleByDef(tp, &braid_module_def);
    return m ? braid_get_state(m) : NULL;
}

static PyObject *getattr_of(const char *module, const char *name)
{
    PyObject *m = PyImport_ImportModule(module);
    if (m == NULL) {
        return NULL;
    }
    PyObject *v = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    return v;
}

int braid_intern_names(PyObject **names, const char *const *text, int n)
{
    for (int i = 0; i < n; i++) {
        if ((names[i] = PyUnicode_InternFromString(text[i])) == NULL) {
            return -1;
        }
    }
    return 0;
}

int braid_visit_names(PyObject **names, int n, visitproc visit, void *arg)
{
    for (int i = 0; i < n; i++) {
        Py_VISIT(names[i]);
    }
    return 0;
}

void braid_clear_names(PyObject **names, int n)
{
    for (int i = 0; i < n; i++) {
        Py_CLEAR(names[i]);
    }
}

/* What even a process-pool worker needs: pickle's C functions. _pickle
 * rather than pickle: pickle.py loads re, enum and functools, which cost a
 * worker more start-up time than the rest of its imports together. */
static int load_worker_objects(braid_state *st)
{
    PyObject *m = PyImport_ImportModule("_pickle");
    if (m == NULL) {
        PyErr_Clear();
        m = PyImport_ImportModule("pickle");
        if (m == NULL) {
            return -1;
        }
    }
    st->pickle_dumps = PyObject_GetAttrString(m, "dumps");
    st->pickle_loads = st->pickle_dumps ? PyObject_GetAttrString(m, "loads") : NULL;
    Py_DECREF(m);
    st->str_module = PyUnicode_InternFromString("__module__");
    st->str_data_received = PyUnicode_InternFromString("data_received");
    return st->pickle_dumps && st->pickle_loads && st->str_module && st->str_data_received ? 0 : -1;
}

static int load_stdlib_objects(braid_state *st)
{
    static const char *names[] = {"PENDING", "RUNNING", "CANCELLED", "CANCELLED_AND_NOTIFIED",
                                  "FINISHED"};
    for (int i = 0; i < 5; i++) {
        /* the very strings concurrent.futures._base compares against */
        st->state_names[i] = getattr_of("concurrent.futures._base", names[i]);
        if (st->state_names[i] == NULL) {
            return -1;
        }
    }
    st->CancelledError = getattr_of("concurrent.futures", "CancelledError");
    st->InvalidStateError = getattr_of("concurrent.futures", "InvalidStateError");
    st->BrokenThreadPool = getattr_of("concurrent.futures.thread", "BrokenThreadPool");
    st->Condition = getattr_of("threading", "Condition");
    PyObject *get_logger = getattr_of("logging", "getLogger");
    if (get_logger != NULL) {
        st->logger = PyObject_CallFunction(get_logger, "s", "concurrent.futures");
        Py_DECREF(get_logger);
    }
    if (!st->CancelledError || !st->InvalidStateError || !st->BrokenThreadPool || !st->Condition ||
        !st->logger) {
        return -1;
    }
    return 0;
}

/* What braid_load_pools loads. */
static void clear_pool_objects(braid_state *st)
{
    Py_CLEAR(st->CancelledError);
    Py_CLEAR(st->InvalidStateError);
    Py_CLEAR(st->BrokenThreadPool);
    Py_CLEAR(st->Condition);
    Py_CLEAR(st->logger);
    for (int i = 0; i < 5; i++) {
        Py_CLEAR(st->state_names[i]);
    }
    Py_CLEAR(st->future_type);
}

/* The pools and futures stand on concurrent.futures, threading and logging
 * (the Future type has concurrent.futures.Future as a base). They are
 * loaded here, on first use, not when the module is imported: a process-
 * pool worker imports this module for its loop alone and would otherwise
 * spend longer importing them than starting the interpreter. */
int braid_load_pools(PyObject *module)
{
    braid_state *st = braid_get_state(module);
    if (st->future_type != NULL) {
        return 0;
    }
    if (load_stdlib_objects(st) < 0 || braid_future_init_types(module, st) < 0) {
        clear_pool_objects(st); /* as before the call, so that the next one starts over */
        return -1;
    }
    return 0;
}

static int braid_exec(PyObject *module)
{
    braid_state *st = braid_get_state(module);
    if (load_worker_objects(st) < 0 || braid_future_init_core_type(module, st) < 0 ||
        braid_threadpool_init_types(module, st) < 0 || braid_mapiter_init_types(module, st) < 0 ||
        braid_chunkiter_init_types(module, st) < 0 ||
        braid_procpool_init_types(module, st) < 0 || braid_loop_init_types(module, st) < 0 ||
        braid_interppool_init_types(module, st) < 0) {
        return -1;
    }
    /* The process-pool protocol's message types (braid.h), for _procworker.py. */
    static const struct {
        const char *name;
        int value;
    } pp_msgs[] = {{"PP_MSG_INIT", BR_PP_MSG_INIT},       {"PP_MSG_CALL", BR_PP_MSG_CALL},
                   {"PP_MSG_EXIT", BR_PP_MSG_EXIT},       {"PP_MSG_RESULT", BR_PP_MSG_RESULT},
                   {"PP_MSG_ERROR", BR_PP_MSG_ERROR},     {"PP_MSG_INIT_FAILED", BR_PP_MSG_INIT_FAILED},
                   {"PP_MSG_READY", BR_PP_MSG_READY},     {"PP_MSG_SKIPPED", BR_PP_MSG_SKIPPED}};
    for (size_t i = 0; i < sizeof pp_msgs / sizeof pp_msgs[0]; i++) {
        if (PyModule_AddIntConstant(module, pp_msgs[i].name, pp_msgs[i].value) < 0) {
            return -1;
        }
    }
    if (PyModule_AddStringConstant(module, "ENGINE_VERSION", BR_VERSION_STRING) < 0) {
        return -1;
    }
    return 0;
}

/* concurrent.futures.process loads multiprocessing, which costs a fresh
 * process pool more than starting its first worker: it is imported when a
 * pool first breaks. A borrowed reference; RuntimeError if it cannot be. */
PyObject *braid_broken_process_pool(braid_state *st)
{
    if (st->BrokenProcessPool == NULL) {
        PyObject *exc = PyErr_GetRaisedException();
        st->BrokenProcessPool = getattr_of("concurrent.futures.process", "BrokenProcessPool");
        if (st->BrokenProcessPool == NULL) {
            PyErr_WriteUnraisable(NULL);
        }
        PyErr_SetRaisedException(exc);
    }
    return st->BrokenProcessPool != NULL ? st->BrokenProcessPool : PyExc_RuntimeError;
}

/* PEP 562: `Future` appears once the pools' imports are done. */
static PyObject *mod_getattr(PyObject *module, PyObject *name)
{
    if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "Future") == 0) {
        if (braid_load_pools(module) < 0) {
            return NULL;
        }
        return Py_NewRef((PyObject *)braid_get_state(module)->future_type);
    }
    PyErr_Format(PyExc_AttributeError, "module 'braid._braid' has no attribute %R", name);
    return NULL;
}

static PyObject *mod_at_exit(PyObject *module, PyObject *args)
{
    int interrupted, wait = 1;
    if (!PyArg_ParseTuple(args, "p|p:_at_exit", &interrupted, &wait)) {
        return NULL;
    }
    return braid_pools_at_exit(braid_get_state(module), interrupted, wait);
}

static PyObject *mod_interppool_workers(PyObject *module, PyObject *unused)
{
    return PyLong_FromUnsignedLong(braid_interppool_workers(braid_get_state(module)));
}

static PyObject *mod_set_interp_hooks(PyObject *module, PyObject *args)
{
    PyObject *dumps, *broken;
    if (!PyArg_ParseTuple(args, "OO:_set_interp_hooks", &dumps, &broken)) {
        return NULL;
    }
    braid_state *st = braid_get_state(module);
    Py_XSETREF(st->ip_dumps_task, Py_NewRef(dumps));
    Py_XSETREF(st->BrokenInterpreterPool, Py_NewRef(broken));
    Py_RETURN_NONE;
}

static PyObject *mod_threadpool_cores(PyObject *module, PyObject *unused)
{
    return PyLong_FromSize_t(braid_threadpool_cores(braid_get_state(module)));
}

static PyObject *mod_after_fork_child(PyObject *module, PyObject *unused)
{
    braid_pools_after_fork_child(braid_get_state(module));
    Py_RETURN_NONE;
}

static PyObject *mod_set_process_hooks(PyObject *module, PyObject *args)
{
    PyObject *dumps, *loads, *crashed, *timeout, *envelope;
    if (!PyArg_ParseTuple(args, "OOOOO:_set_process_hooks", &dumps, &loads, &crashed, &timeout, &envelope)) {
        return NULL;
    }
    braid_state *st = braid_get_state(module);
    Py_XSETREF(st->proc_envelope_type, Py_NewRef(envelope));
    Py_XSETREF(st->proc_dumps, Py_NewRef(dumps));
    Py_XSETREF(st->proc_loads, Py_NewRef(loads));
    Py_XSETREF(st->WorkerCrashed, Py_NewRef(crashed));
    Py_XSETREF(st->TaskTimeout, Py_NewRef(timeout));
    Py_RETURN_NONE;
}

static PyObject *mod_set_worker_hooks(PyObject *module, PyObject *args)
{
    PyObject *started, *exiting;
    if (!PyArg_ParseTuple(args, "OO:_set_worker_hooks", &started, &exiting)) {
        return NULL;
    }
    if (!PyCallable_Check(started) || !PyCallable_Check(exiting)) {
        PyErr_SetString(PyExc_TypeError, "_set_worker_hooks needs two callables");
        return NULL;
    }
    braid_state *st = braid_get_state(module);
    Py_XSETREF(st->worker_started, Py_NewRef(started));
    Py_XSETREF(st->worker_exiting, Py_NewRef(exiting));
    Py_RETURN_NONE;
}

static PyObject *mod_strerror(PyObject *module, PyObject *arg)
{
    long err = PyLong_AsLong(arg);
    if (err == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (err < -4095 || err > 0) {
        PyErr_SetString(PyExc_ValueError, "strerror() takes a negative errno or 0");
        return NULL;
    }
    return PyUnicode_FromString(br_strerror((int)err));
}

static PyMethodDef braid_methods[] = {
    {"_at_exit", mod_at_exit, METH_VARARGS,
     "_at_exit(interrupted, wait=True): closes every pool and waits for its workers; after Ctrl-C "
     "(interrupted) queued work is cancelled and process workers are killed soon. Not wait (a second "
     "Ctrl-C): thread pools' running tasks are left to the process's end, interpreter pools' are "
     "interrupted (KeyboardInterrupt) and waited for."},
    {"_interppool_workers", mod_interppool_workers, METH_NOARGS,
     "_interppool_workers(): interpreter-pool workers (sub-interpreters) not yet ended."},
    {"_set_interp_hooks", mod_set_interp_hooks, METH_VARARGS,
     "_set_interp_hooks(dumps_task, BrokenInterpreterPool)"},
    {"_threadpool_cores", mod_threadpool_cores, METH_NOARGS,
     "_threadpool_cores(): thread-pool cores not yet freed (for tests of pool lifetimes)."},
    {"_after_fork_child", mod_after_fork_child, METH_NOARGS,
     "Makes every pool unusable in a forked child and forgets the parent's templates."},
    {"_set_process_hooks", mod_set_process_hooks, METH_VARARGS,
     "_set_process_hooks(dumps, loads, WorkerCrashed, TaskTimeout, envelope_type)"},
    {"_worker_loop", braid_worker_loop, METH_VARARGS, "_worker_loop(handler, pack_result, pack_error, release): a worker's main loop."},
    {"_worker_acked", braid_worker_acked, METH_NOARGS,
     "_worker_acked(): seq of the last result the parent has unpickled."},
    {"_worker_bind_parent", braid_worker_bind_parent, METH_O,
     "_worker_bind_parent(ppid): die with the parent (PR_SET_PDEATHSIG)."},
    {"_template_serve", braid_template_serve, METH_NOARGS,
     "_template_serve(): in a process pool's template, forks workers on request; True in a worker, "
     "False once the parent has gone."},
    {"_close_unused_templates", braid_close_unused_templates, METH_NOARGS,
     "_close_unused_templates(): ends the process-pool templates no pool uses now."},
    {"_set_worker_hooks", mod_set_worker_hooks, METH_VARARGS,
     "_set_worker_hooks(started, exiting): called on each worker thread as it starts and exits."},
    {"strerror", mod_strerror, METH_O, "strerror(-errno): the engine's name for an error code."},
    {"_accept_plain", (PyCFunction)(void (*)(void))braid_accept_plain, METH_FASTCALL,
     "_accept_plain(loop, fd, family, protocol_factory, server, backlog): braid.Loop's accept batch."},
    {"__getattr__", mod_getattr, METH_O, NULL},
    {NULL}};

static int braid_traverse(PyObject *module, visitproc visit, void *arg)
{
    braid_state *st = braid_get_state(module);
    Py_VISIT(st->future_core_type);
    Py_VISIT(st->future_type);
    Py_VISIT(st->pool_core_type);
    Py_VISIT(st->mapiter_type);
    Py_VISIT(st->chunkresults_type);
    Py_VISIT(st->CancelledError);
    Py_VISIT(st->InvalidStateError);
    Py_VISIT(st->BrokenThreadPool);
    Py_VISIT(st->Condition);
    Py_VISIT(st->logger);
    for (int i = 0; i < 5; i++) {
        Py_VISIT(st->state_names[i]);
    }
    Py_VISIT(st->worker_started);
    Py_VISIT(st->worker_exiting);
    Py_VISIT(st->procpool_core_type);
    Py_VISIT(st->loop_core_type);
    Py_VISIT(st->loop_handle_type);
    Py_VISIT(st->loop_timer_type);
    Py_VISIT(st->proc_dumps);
    Py_VISIT(st->proc_loads);
    Py_VISIT(st->proc_envelope_type);
    Py_VISIT(st->pickle_dumps);
    Py_VISIT(st->pickle_loads);
    Py_VISIT(st->str_module);
    Py_VISIT(st->socket_transport_type);
    Py_VISIT(st->datagram_transport_type);
    Py_VISIT(st->read_pipe_transport_type);
    Py_VISIT(st->write_pipe_transport_type);
    Py_VISIT(st->BufferedProtocol);
    Py_VISIT(st->str_data_received);
    Py_VISIT(st->StreamReaderProtocol);
    Py_VISIT(st->StreamReader);
    for (int i = 0; i < BRAID_STREAM_NAMES; i++) {
        Py_VISIT(st->stream_names[i]);
    }
    for (int i = 0; i < 3; i++) {
        Py_VISIT(st->stream_methods[i]);
    }
    Py_VISIT(st->WorkerCrashed);
    Py_VISIT(st->TaskTimeout);
    Py_VISIT(st->BrokenProcessPool);
    int r = braid_loop_traverse(st, visit, arg);
    return r ? r : braid_interppool_traverse(st, visit, arg);
}

static int braid_clear(PyObject *module)
{
    braid_state *st = braid_get_state(module);
    Py_CLEAR(st->future_core_type);
    clear_pool_objects(st);
    Py_CLEAR(st->pool_core_type);
    Py_CLEAR(st->mapiter_type);
    Py_CLEAR(st->chunkresults_type);
    Py_CLEAR(st->worker_started);
    Py_CLEAR(st->worker_exiting);
    Py_CLEAR(st->procpool_core_type);
    Py_CLEAR(st->loop_core_type);
    Py_CLEAR(st->loop_handle_type);
    Py_CLEAR(st->loop_timer_type);
    Py_CLEAR(st->proc_dumps);
    Py_CLEAR(st->proc_loads);
    Py_CLEAR(st->proc_envelope_type);
    Py_CLEAR(st->pickle_dumps);
    Py_CLEAR(st->pickle_loads);
    Py_CLEAR(st->str_module);
    Py_CLEAR(st->socket_transport_type);
    Py_CLEAR(st->datagram_transport_type);
    Py_CLEAR(st->read_pipe_transport_type);
    Py_CLEAR(st->write_pipe_transport_type);
    Py_CLEAR(st->BufferedProtocol);
    Py_CLEAR(st->str_data_received);
    Py_CLEAR(st->StreamReaderProtocol);
    Py_CLEAR(st->StreamReader);
    for (int i = 0; i < BRAID_STREAM_NAMES; i++) {
        Py_CLEAR(st->stream_names[i]);
    }
    for (int i = 0; i < 3; i++) {
        Py_CLEAR(st->stream_methods[i]);
    }
    Py_CLEAR(st->WorkerCrashed);
    Py_CLEAR(st->TaskTimeout);
    Py_CLEAR(st->BrokenProcessPool);
    braid_loop_clear(st);
    braid_interppool_clear(st);
    return 0;
}

static void braid_free(void *module)
{
    braid_state *st = braid_get_state((PyObject *)module);
    braid_pools_clear(st);
    braid_clear((PyObject *)module);
}

static PyModuleDef_Slot braid_slots[] = {
    {Py_mod_exec, braid_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* Every Python object is in the module state or on a pool of one
     * interpreter; what is process-wide is plain C under its own lock (the
     * process-pool templates) or per process by nature (a process-pool
     * worker's loop, refused outside the main interpreter). So the module
     * loads in interpreters with their own GIL: InterpreterPool's workers
     * import it there. */
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL}};

static struct PyModuleDef braid_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "braid._braid",
    .m_doc = "braid's CPython extension: C futures and the thread pool on the braid engine.",
    .m_size = sizeof(braid_state),
    .m_methods = braid_methods,
    .m_slots = braid_slots,
    .m_traverse = braid_traverse,
    .m_clear = braid_clear,
    .m_free = braid_free,
};

PyMODINIT_FUNC PyInit__braid(void)
{
    return PyModuleDef_Init(&braid_module_def);
}
