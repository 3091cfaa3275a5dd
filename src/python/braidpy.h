/*
 * braidpy.h — shared declarations of the CPython extension braid._braid.
 *
 * The extension sits on include/braid.h only (never on src/core/internal.h).
 * Module state replaces every static PyObject global so that the module can
 * be loaded in several interpreters.
 */
#ifndef BRAIDPY_H
#define BRAIDPY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "braid.h"
#include <sys/socket.h> /* socklen_t */

typedef struct pool_core_s pool_core_t;
typedef struct proc_core_s proc_core_t;
typedef struct interp_core_s interp_core_t;
typedef struct braid_pool_link_s braid_pool_link_t;

typedef struct {
    /* types */
    PyTypeObject *future_core_type; /* _FutureCore: the C layout */
    PyTypeObject *future_type;      /* Future(_FutureCore, concurrent.futures.Future) */
    PyTypeObject *pool_core_type;   /* _ThreadPoolCore */
    PyTypeObject *mapiter_type;
    PyTypeObject *chunkresults_type;
    PyTypeObject *procpool_core_type;
    PyTypeObject *loop_core_type;   /* _LoopCore */
    PyTypeObject *loop_handle_type; /* LoopHandle, an asyncio.Handle (made by the first Loop) */
    PyTypeObject *loop_timer_type;  /* LoopTimerHandle, an asyncio.TimerHandle */
    PyTypeObject *socket_transport_type; /* SocketTransport (made by the first Loop) */
    PyTypeObject *datagram_transport_type; /* DatagramTransport (made with it) */
    PyTypeObject *read_pipe_transport_type;  /* ReadPipeTransport (made with it) */
    PyTypeObject *write_pipe_transport_type; /* WritePipeTransport (made with it) */
    PyObject *BufferedProtocol;     /* asyncio.BufferedProtocol (with it) */
    PyObject *str_data_received;    /* interned "data_received" */
    PyObject *StreamReaderProtocol; /* asyncio's, for the transport's streams fast path */
    PyObject *StreamReader;
    PyObject *stream_methods[3];    /* asyncio's data_received, feed_data, _wakeup_waiter */
#define BRAID_STREAM_NAMES 18
    PyObject *stream_names[BRAID_STREAM_NAMES]; /* interned attribute names (socktransport.c) */
#define BRAID_LOOP_NAMES 7
    PyObject *loop_names[BRAID_LOOP_NAMES]; /* interned attribute names (loop.c) */
    PyObject *kwnames_loop;         /* ("loop",): create_future's keyword names */
    /* exceptions and helpers borrowed from the stdlib */
    PyObject *CancelledError;
    PyObject *InvalidStateError;
    PyObject *BrokenThreadPool;
    PyObject *Condition;            /* threading.Condition */
    PyObject *logger;               /* logging.getLogger("concurrent.futures") */
    PyObject *state_names[5];       /* "PENDING", ... as concurrent.futures spells them */
    PyObject *worker_started;       /* glue hook: names the worker for threading */
    PyObject *worker_exiting;
    /* process pool hooks from braid._procpool */
    PyObject *proc_dumps;           /* (fn, args, kwargs) -> bytes */
    PyObject *proc_loads;           /* bytes-like -> object */
    PyObject *proc_envelope_type;   /* _procworker._Envelope: out-of-band buffers */
    PyObject *pickle_dumps;
    PyObject *pickle_loads;
    PyObject *str_module;           /* interned "__module__" */
    PyObject *WorkerCrashed;
    PyObject *TaskTimeout;
    PyObject *BrokenProcessPool;
    /* every pool core that interpreter exit may have to close or wait for,
     * of every kind (pools.c) */
    braid_pool_link_t *pools;
    br_event_t *exit_waiter;        /* set when a dropped pool's last worker leaves */
    /* interpreter pools (interppool.c, 3.12+) */
    PyTypeObject *interppool_core_type;
    PyObject *ip_dumps_task;        /* braid._interpworker.dumps_task */
    PyObject *BrokenInterpreterPool;
    unsigned long pool_counter;
} braid_state;

/* Future states, in concurrent.futures' order and spelling. */
enum fut_state {
    FUT_PENDING = 0,
    FUT_RUNNING = 1,
    FUT_CANCELLED = 2,
    FUT_CANCELLED_AND_NOTIFIED = 3,
    FUT_FINISHED = 4
};

/* Layout of braid's future. The Python-visible type adds concurrent.futures.
 * Future as a second base, so consumers see a real concurrent.futures.Future.
 * The fields past `exc` are the work item when a pool runs the future. */
typedef struct FutureObject_s {
    PyObject_HEAD
    br_event_t done_ev;       /* set once the state is CANCELLED* or FINISHED */
    int state;                /* enum fut_state; changed only with the GIL */
    int chunked;              /* args is a list of argument tuples (map chunks) */
    PyObject *result;
    PyObject *exc;            /* exception instance, traceback attached */
    PyObject *callbacks;      /* list or NULL */
    PyObject *condition;      /* threading.Condition, made on first use */
    PyObject *waiters;        /* list, made on first use (concurrent.futures.wait) */
    /* work item */
    br_work_t work;
    pool_core_t *pool;        /* non-NULL while queued or taken, not yet run */
    PyObject *fn;
    PyObject *args;
    PyObject *kwargs;
    /* Set by a pool whose queued work lives elsewhere (the process pool):
     * phase 0 asks whether the task may still be cancelled (1) or has
     * started (0); phase 1 tells that the future is now CANCELLED; phase 2
     * asks whether a worker has taken the task of a future still PENDING
     * (running(): 1), for a pool that does not mark its futures RUNNING. */
    int (*cancel_hook)(struct FutureObject_s *fut, int phase);
    void *hook_ctx;
    /* Set by a pool that may wake a waiter before the future is finished
     * (the interpreter pool sets done_ev of a future whose result is ready,
     * so that the waiter finishes it rather than a worker that would wait
     * for the GIL): a waiter that finds done_ev set and the future not done
     * calls drain_hook(ctx, 0), with the GIL, to finish what is ready;
     * drain_hook(ctx, 1) says whether a waiter should spin a moment before
     * it sleeps (the result is likely to come within microseconds). */
    int (*drain_hook)(void *ctx, int ask_spin);
    void *drain_ctx;
    int waiting;              /* atomic: a thread is in braid_future_wait on it (hooked futures) */
} FutureObject;

/* module.c */
braid_state *braid_get_state(PyObject *module);
braid_state *braid_state_from_type(PyTypeObject *tp);
/* Imports what the pools and futures stand on (concurrent.futures,
 * threading, logging) and makes the Future type, once; every pool's
 * __init__ calls it first. 0 or -1. */
int braid_load_pools(PyObject *module);
/* concurrent.futures.process.BrokenProcessPool, imported on first use. */
PyObject *braid_broken_process_pool(braid_state *st);
/* Tables of interned attribute names (enum-indexed, in module state):
 * intern n texts (0 or -1), visit them, clear them. */
int braid_intern_names(PyObject **names, const char *const *text, int n);
int braid_visit_names(PyObject **names, int n, visitproc visit, void *arg);
void braid_clear_names(PyObject **names, int n);

/* callargs.c: submit(fn, /, *args, **kwargs) from a vectorcall: fn (borrowed),
 * a new args tuple and a new kwargs dict or NULL. TypeError if fn is not
 * callable. 0 or -1. */
int braid_unpack_submit(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **fn,
                        PyObject **call_args, PyObject **call_kwargs);

/* plain.c: pickling of plain tasks and results straight through pickle */
int braid_is_plain(PyObject *o, int depth);
/* fn(*args, **kwargs) pickles by the plain path: fn a function found by name
 * outside __main__, the arguments plain values (kwargs may be NULL). */
int braid_task_is_plain(braid_state *st, PyObject *fn, PyObject *args, PyObject *kwargs);
/* The payload of a task; bytes, or (bytes, memfds to keep) from the
 * general path. keep is the (fn, args, kwargs) tuple. */
PyObject *braid_dumps_task(braid_state *st, PyObject *fn, PyObject *args, PyObject *kwargs,
                           PyObject *keep);
/* Unpickles a message payload (bytes-like), out-of-band buffers included. */
PyObject *braid_loads(braid_state *st, PyObject *data);

/* errors.c: the one map from an engine -errno to a Python exception:
 * OSError(errno, "what: strerror") as its errno subclass, MemoryError for
 * ENOMEM. Returns NULL. EINVAL, ESHUTDOWN and the like are the call
 * site's to raise (ValueError, RuntimeError) in its own words. what may be
 * NULL: the message is then strerror alone, as the socket module's. */
PyObject *braid_raise_oserror(int err, const char *what);
/* The OSError the socket module raises for -err (ENOMEM too), as an object: a new
 * reference, or NULL with an exception. */
PyObject *braid_socket_error(int err);

/* future.c: _FutureCore at import; Future (on concurrent.futures.Future)
 * from braid_load_pools. */
int braid_future_init_core_type(PyObject *module, braid_state *st);
int braid_future_init_types(PyObject *module, braid_state *st);
FutureObject *braid_future_new(braid_state *st);
/* Completion paths used by the pool; they run callbacks. 0 or -1. */
int braid_future_finish(FutureObject *fut, PyObject *result, PyObject *exc);
/* A pool's outcome for its future (result, or exc if not NULL): finishes
 * it unless it is done already; a failure of its callbacks is unraisable. */
void braid_future_settle(FutureObject *f, PyObject *result, PyObject *exc);
/* CANCELLED -> CANCELLED_AND_NOTIFIED, telling wait()/as_completed waiters. */
int braid_future_notify_cancel(FutureObject *fut);
/* The engine cancelled the future's queued work item (GIL held): cancel
 * and notify the future, drop the queue's reference. */
void braid_future_work_cancelled(FutureObject *fut);
/* timeout: None or a number of seconds -> a br_now_ns() deadline, -1 for
 * none. TypeError / ValueError (NaN) with a clear message. 0 or -1. */
int braid_parse_timeout(PyObject *timeout, int64_t *deadline);
/* A number of seconds (int or float), TypeError "<what> must be <expected>,
 * not <type>" or ValueError for NaN. 0 or -1. */
int braid_parse_seconds(PyObject *o, const char *what, const char *expected, double *out);
/* Waits with the GIL released until done, `deadline_ns` (< 0: no limit).
 * 0 when done, -1 with TimeoutError or a signal's exception set. */
int braid_future_wait(FutureObject *fut, int64_t deadline_ns);
/* Cancel as Future.cancel(): 1 cancelled, 0 could not, -1 error. */
int braid_future_cancel(FutureObject *fut);
/* The stored result, or raises the stored exception / CancelledError. */
PyObject *braid_future_get_result(FutureObject *fut);

/* threadpool.c */
int braid_threadpool_init_types(PyObject *module, braid_state *st);
/* Queues fn(*args, **kwargs) (or a chunk) on the pool object; new future. */
FutureObject *braid_pool_submit(PyObject *pool, PyObject *fn, PyObject *args,
                                PyObject *kwargs, int chunked);
unsigned braid_pool_max_workers(PyObject *pool);
/* Thread-pool cores on the module's list (not yet released). */
size_t braid_threadpool_cores(braid_state *st);
/* Removes a queued work item of this pool (no-op if a worker has it). */
void braid_pool_cancel_work(pool_core_t *core, br_work_t *work);

/* loop.c */
int braid_loop_init_types(PyObject *module, braid_state *st);
PyObject *braid_module_from_type(PyTypeObject *tp); /* borrowed; NULL with an error if not ours */
/* The engine loop of a braid.Loop (TypeError / closed: RuntimeError). */
br_loop_t *braid_loop_core(PyObject *loop);
/* Steals exc (KeyboardInterrupt, SystemExit from an engine callback): the
 * loop stops the iteration and _run_once raises it. */
void braid_loop_raise_later(PyObject *loop, PyObject *exc);
/* Outside a poll (a transport method the user called, a callback of the
 * ready queue): raises what braid_loop_raise_later stored meanwhile, -1;
 * 0 if nothing was. Inside a poll the loop raises it after the poll. */
int braid_loop_reraise(PyObject *loop);
/* A transport's stream opened (+1) or its close callback ran (-1): the loop
 * then polls on every iteration, as it does for any watched fd. */
void braid_loop_count_stream(PyObject *loop, int delta);
/* For an engine callback running in the poll: 1 if callbacks were waiting
 * in the ready queue when this poll began. asyncio's reader handles go
 * behind those, so such a callback must too (call_soon); callbacks that
 * earlier reads of the same poll scheduled do not count, as asyncio's
 * reader handles of one poll all come before them. 0 outside a poll. */
int braid_loop_ready_before_poll(PyObject *loop);
/* call_soon(args[0], *args[1:]) for what stands in for asyncio's reader
 * handle (a read deferred behind the ready callbacks, a new connection's
 * first callback): into this iteration's ready queue even from inside the
 * poll, where loop.call_soon would wait for the next iteration. 0 or -1. */
int braid_loop_call_soon_io(PyObject *loop, PyObject *const *args, Py_ssize_t nargs);
/* For a listening socket's reader: 1 if connections come in a burst (it
 * accepted in this iteration or the one before: drain the queue), 0 if
 * they trickle in (take one; the level-triggered poll reports the next).
 * Notes this call as an accept. */
int braid_loop_accept_burst(PyObject *loop, int fd);
/* 1 while the loop polls (engine callbacks run from the poll). */
int braid_loop_polling(PyObject *loop);
/* The loop's debug mode (asyncio's self._debug), 1 or 0. */
int braid_loop_debug(PyObject *loop);
int braid_loop_traverse(braid_state *st, visitproc visit, void *arg);
void braid_loop_clear(braid_state *st);

/* socktransport.c */
int braid_socktransport_make_type(braid_state *st, PyObject *module);
/* br_loop_walk's callback when a braid.Loop closes (arg: the module
 * state): closes the streams of socket transports still open. */
void braid_socktransport_loop_closing(br_handle_t *h, void *arg);
/* The transport (borrowed) if h is a socket transport's stream and the
 * transport holds a reference to itself for the engine (its self_ref);
 * else NULL. The loop's tp_traverse visits these references: they belong
 * to the engine's loop, which asyncio's selector is in its own loop, so a
 * loop dropped with transports open is collected as asyncio's is. */
PyObject *braid_socktransport_held(braid_state *st, br_handle_t *h);
/* A transport for a connection accepted in C (fd non-blocking, family its
 * socket's): a new reference, or NULL with an exception and fd closed. */
PyObject *braid_socktransport_accepted(braid_state *st, PyObject *loop, int fd, int family, PyObject *protocol,
                                       PyObject *server);
/* dgramtransport.c */
int braid_dgramtransport_make_type(braid_state *st, PyObject *module);
/* br_loop_walk's callback when a braid.Loop closes: closes the handles of
 * datagram transports still open. */
void braid_dgramtransport_loop_closing(br_handle_t *h, void *unused);
/* As braid_socktransport_held, for a datagram transport's handle. */
PyObject *braid_dgramtransport_held(br_handle_t *h);

/* pipetransport.c */
int braid_pipetransport_make_types(braid_state *st, PyObject *module);
/* br_loop_walk's callback when a braid.Loop closes (arg: the module
 * state): closes the streams of pipe transports still open. */
void braid_pipetransport_loop_closing(br_handle_t *h, void *arg);
/* As braid_socktransport_held, for a pipe transport's stream. */
PyObject *braid_pipetransport_held(braid_state *st, br_handle_t *h);

/* trcommon.c: what the C transports do alike */
/* The socket module's form of a sockaddr (makesockaddr): (host, port),
 * (host, port, flowinfo, scope_id), a path, an abstract name as bytes; None
 * for len 0. New reference, or NULL with an exception. */
PyObject *braid_address_object(const struct sockaddr *sa, socklen_t len);
/* The context a transport's protocol callbacks run in when the engine calls
 * them: a copy of the one the transport was made in (after resume_reading(),
 * of its caller's), as asyncio's reader and writer handles carry one
 * (contextvars set before start_server reach data_received). */
typedef struct {
    PyObject *ctx;   /* strong */
    int entered;
} braid_trctx_t;
int braid_trctx_init(braid_trctx_t *c); /* copies the current context; -1 with an exception */
/* A fresh copy of the current context instead of the one held, as
 * resume_reading() makes asyncio's new reader handle in its caller's
 * context. 0, or -1 with an exception. */
int braid_trctx_renew(braid_trctx_t *c);
/* Enters it unless entered already (a callback inside another); with a
 * loop, only while that loop polls (a flush's callbacks; the same ones from
 * a write() the user made run in the caller's context, as asyncio's). 1 if
 * entered: pass that to braid_trctx_leave. */
int braid_trctx_enter(braid_trctx_t *c, PyObject *only_while_polling);
void braid_trctx_leave(braid_trctx_t *c, int entered);
/* `call` (an engine callback's body) in the context c, self (its
 * transport) held across it: the body may drop the last other reference. */
#define BRAID_IN_CONTEXT(self, c, only_while_polling, call)            \
    do {                                                               \
        PyObject *self_ = Py_NewRef(self);                             \
        int entered_ = braid_trctx_enter((c), (only_while_polling));   \
        call;                                                          \
        braid_trctx_leave((c), entered_);                              \
        Py_DECREF(self_);                                              \
    } while (0)
/* The offset of asyncio.BaseTransport's _extra slot, or -1 with an exception. */
Py_ssize_t braid_transport_extra_offset(void);
/* How a transport type is made: its C fields, a struct of tail_size bytes
 * (the tail), follow the fields of the asyncio classes it derives from,
 * whose sizes are known only once asyncio is imported. */
#define BRAID_TAIL_BASES 2
#define BRAID_TAIL_MEMBERS 2
typedef struct {
    PyType_Spec *spec;        /* its basicsize is written */
    /* asyncio.transports' classes, NULL-ended: the tail follows the first
     * one's fields (the others add none) */
    const char *bases[BRAID_TAIL_BASES + 1];
    size_t tail_size;
    PyMemberDef *members;     /* the spec's __weaklistoffset__ (and __dictoffset__), written as ... */
    Py_ssize_t member_at[BRAID_TAIL_MEMBERS]; /* ... the tail's offset plus these */
    Py_ssize_t *tail_offset;  /* written: where the tail starts in an object */
    Py_ssize_t *extra_offset; /* written: asyncio.BaseTransport's _extra slot */
} braid_tail_type_t;
/* The type, made as `how` says with `module` as its module; the offsets
 * and the spec are written under a process-wide lock. A new reference, or
 * NULL with an exception. */
PyTypeObject *braid_transport_make_tail_type(PyObject *module, const braid_tail_type_t *how);
/* writelines(lines): write(b"".join(lines)), as asyncio's transports. */
PyObject *braid_transport_writelines(PyObject *self, PyObject *lines, PyObject *(*write)(PyObject *, PyObject *));
PyObject *braid_import_attr(const char *module, const char *name); /* new reference */
/* loop.call_exception_handler({message, exception, transport, protocol}): its result, or NULL */
PyObject *braid_transport_exception(PyObject *loop, PyObject *message, PyObject *exc, PyObject *transport,
                                    PyObject *protocol);
/* _fatal_error's report: an OSError logged in debug mode, anything else to
 * the exception handler. 0, or -1 if the handler raised. */
int braid_transport_report_fatal(PyObject *loop, PyObject *transport, PyObject *protocol, PyObject *exc,
                                 const char *message);
/* set_write_buffer_limits(high=None, low=None)'s arguments, as asyncio's. */
int braid_parse_write_limits(PyObject *args, PyObject *kwds, size_t *high, size_t *low);
/* protocol.pause_writing() / resume_writing(): a failure to the exception
 * handler ("protocol.X() failed"), KeyboardInterrupt/SystemExit out of the loop. */
void braid_transport_call_flow(PyObject *loop, PyObject *transport, PyObject *protocol, const char *method);
/* For an engine callback about to read or flush in the poll: when callbacks
 * were ready as the poll began (braid_loop_ready_before_poll), asyncio's
 * reader or writer handle would run behind them, so call_soon(
 * transport.<method>) is queued to do the work there and 1 is returned; 0:
 * do it now (nothing was ready, no loop, or no memory for a handle -- out of
 * order rather than not at all). */
int braid_transport_later(PyObject *loop, PyObject *transport, const char *method);

/* sockaccept.c: _accept_plain(loop, fd, family, protocol_factory, server, backlog) */
PyObject *braid_accept_plain(PyObject *module, PyObject *const *args, Py_ssize_t nargs);


/* procpool.c, procworker.c */
int braid_procpool_init_types(PyObject *module, braid_state *st);
PyObject *braid_worker_loop(PyObject *module, PyObject *args);
PyObject *braid_worker_bind_parent(PyObject *module, PyObject *arg);
PyObject *braid_worker_acked(PyObject *module, PyObject *unused);

/* proctemplate.c: how a process pool starts its workers. A spawner forks
 * them from the template of the pool's configuration (shared by the pools
 * of this process that have the same argv and environment), or spawns them
 * directly where there is no template. */
typedef struct braid_spawner_s braid_spawner_t;
/* GIL released (it may wait for the template's posix_spawn). 0 with *out,
 * or -errno when the interpreter cannot be executed at all (-ENOENT, ...).
 * argv and envp are borrowed: they must outlive the spawner. */
int braid_spawner_new(char *const *argv, char *const *envp, braid_spawner_t **out);
/* The spawn hook: a new worker with fds as its 3, 4, ...; falls back to
 * br_proc_spawn when the template cannot serve. Without the GIL, on the
 * thread that reaps the workers (direct spawns bind them to it). */
int braid_spawner_spawn(void *spawner, const int *fds, int nfds, br_proc_t *out);
int braid_spawner_has_template(braid_spawner_t *s);
int braid_spawner_template_pid(braid_spawner_t *s); /* 0: none */
/* Drops the template (it lingers for the next pool). Once its workers are reaped. */
void braid_spawner_free(braid_spawner_t *s);
/* Closes every template no pool uses now, waiting up to timeout_ns. */
void braid_templates_close_unused(int64_t timeout_ns);
void braid_templates_after_fork_child(void);
PyObject *braid_template_serve(PyObject *module, PyObject *unused);
PyObject *braid_close_unused_templates(PyObject *module, PyObject *unused);

/* pools.c: the lifetimes all pool kinds share. A pool core embeds a link
 * and is on st->pools while interpreter exit may have to close it or wait
 * for it. The ops run with the GIL held. */
typedef struct braid_pool_ops_s {
    /* At exit, for every pool first: stop taking work; `interrupted`
     * (Ctrl-C ended the program) also cancels queued work. */
    void (*close)(braid_pool_link_t *link, int interrupted);
    /* Then: whether the pool still has workers to wait for ... */
    int (*busy)(braid_pool_link_t *link);
    /* ... and the wait, signal handlers run: 0, or -1 with an exception.
     * It may unlink and free the pool. */
    int (*wait)(braid_pool_link_t *link);
    /* In a fork's child: the pool is the parent's. It may unlink it. */
    void (*forked)(braid_pool_link_t *link);
    /* The module is being freed (after at-exit): unlinks it, and frees
     * what nothing else will. */
    void (*clear)(braid_pool_link_t *link);
    /* At-exit told not to wait (a second Ctrl-C), after close: stops the
     * running tasks where it can (KeyboardInterrupt into sub-interpreters),
     * and the wait follows. NULL: nothing to do. */
    void (*interrupt)(braid_pool_link_t *link);
    /* 1: its running tasks cannot be stopped (threads), so its wait has
     * no bound; at-exit told not to wait skips it. Not an interpreter
     * pool's (interrupted instead): a sub-interpreter still running as the
     * main one finalizes aborts the process on 3.12. */
    int unstoppable;
} braid_pool_ops_t;

struct braid_pool_link_s {
    const braid_pool_ops_t *ops;
    braid_state *st;               /* NULL when not on a list */
    braid_pool_link_t *next, *prev;
};

/* After Ctrl-C, at exit: running tasks of process pools get this long. */
#define BRAID_EXIT_GRACE_NS 300000000
void braid_pools_link(braid_state *st, braid_pool_link_t *link, const braid_pool_ops_t *ops);
void braid_pools_unlink(braid_pool_link_t *link); /* no-op when not linked */
size_t braid_pools_count(braid_state *st, const braid_pool_ops_t *ops);
/* 0 if the pool's core exists; else -1 with RuntimeError: its __init__ was
 * never called (a subclass's forgot super().__init__) or failed. */
int braid_pool_check_made(PyObject *pool, const void *core);
void braid_pools_release(braid_state *st, braid_pool_link_t *link); /* unlinks, wakes the wait below */
int braid_pools_wait_released(braid_state *st); /* until a dropped pool's last worker releases it */
PyObject *braid_pools_at_exit(braid_state *st, int interrupted, int wait);
void braid_pools_after_fork_child(braid_state *st);
void braid_pools_clear(braid_state *st);

/* interppool.c: the type exists on 3.12+ only (0 on 3.11). Its cores are
 * on st->pools (pools.c) like the other pools'. */
int braid_interppool_init_types(PyObject *module, braid_state *st);
unsigned braid_interppool_workers(braid_state *st); /* started and not yet ended */
int braid_interppool_traverse(braid_state *st, visitproc visit, void *arg);
void braid_interppool_clear(braid_state *st);

/* chunkiter.c */
int braid_chunkiter_init_types(PyObject *module, braid_state *st);

/* mapiter.c */
int braid_mapiter_init_types(PyObject *module, braid_state *st);
/* buffersize: tasks (chunks) submitted ahead of the results handed out;
 * 0 submits them all at the call (Executor.map's buffersize=None). */
PyObject *braid_mapiter_new(braid_state *st, PyObject *pool, PyObject *fn,
                            PyObject *iterables, int64_t deadline, Py_ssize_t chunksize,
                            Py_ssize_t buffersize);

#endif /* BRAIDPY_H */
