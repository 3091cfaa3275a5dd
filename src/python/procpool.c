/*
 * procpool.c — _ProcessPoolCore, the C half of braid.ProcessPool.
 *
 * Workers are fresh interpreters started with posix_spawn (never a fork of
 * this multi-threaded process), each joined to the pool by two shared-
 * memory rings (tasks in, results out; procproto.h) and watched through a
 * pidfd. One collector thread per pool sleeps in epoll on every worker's
 * "results ready", "ring has space" and "process exited" descriptors, and
 * takes the GIL only to hand results to futures and to feed workers.
 *
 * All pool state below changes with the GIL held, from the collector or
 * from a submitting thread; the rings' single producer is whoever holds it.
 *
 * A worker runs its tasks one at a time in the order sent (up to DEPTH of
 * them queued in its ring), so its oldest unanswered task is the one it is
 * running: when it dies, that task alone fails (WorkerCrashed, or is run
 * again while retries remain) and the others go back to the pending queue.
 *
 * Worker slot life cycle:
 *
 *   FREE --spawn--> RUNNING --(max tasks reached / pool closing)--> EXITING
 *                     |                                               |
 *                     +-- dies, killed (crash, task_timeout) ---------+--> reaped
 *                                                                           |
 *                        respawned unless the pool is closing or broken <---+
 *
 * Collector life: started by __init__, which waits until the first workers
 * are spawned (so a bad interpreter path raises there); spawns come from
 * the collector only, because PR_SET_PDEATHSIG is tied to the thread that
 * spawned. It exits once the pool is closing and every task is settled.
 */
#include "braidpy.h"
#include "compat.h"
#include "procproto.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

/* Tasks sent to one worker ahead of its answers. Deep for tiny tasks (the
 * worker never waits for the parent), shallow for long ones (a task queued
 * behind a long one could have run on a worker that is free). Chosen from
 * the pool's running average task time. */
#define DEPTH_TINY 32           /* tasks under 50 us */
#define DEPTH_SHORT 4           /* under 1 ms */
#define DEPTH_LONG 1
#define DEPTH_UNKNOWN 2         /* before any task has finished */
#define EXIT_GRACE_NS 300000000 /* at interpreter exit after Ctrl-C: then SIGKILL */
#define STARTUP_FAILURES_LIMIT 3 /* workers in a row dead before starting: broken */
#define COLLECTOR_SPIN_NS 30000 /* polls result rings this long before epoll */

enum { K_RESULT = 1, K_SPACE = 2, K_EXIT = 3, K_WAKE = 4 };
enum { W_FREE = 0, W_RUNNING, W_EXITING };

typedef struct task_s {
    struct task_s *next;
    struct proc_core_s *core;
    int worker;             /* slot index while sent to a worker, else -1 */
    uint64_t seq;           /* that worker's sequence number (message tag) */
    uint64_t id;
    FutureObject *fut;
    PyObject *payload; /* bytes, kept for a retry */
    PyObject *held;    /* memfds of the payload's out-of-band buffers, or NULL */
    PyObject *keep;    /* (fn, args, kwargs): alive until the task is settled, so
                          what the payload only names (a braid.shared_array's
                          memory) outlives the worker's use of it */
    int retries_left;
} task_t;

typedef struct {
    int state;
    br_proc_t proc;
    void *mem;
    size_t one;             /* bytes of one ring's mapping */
    br_ring_t tx, rx;       /* tasks out, results in */
    int efd[4];             /* task data, task space, result data, result space */
    task_t *head, *tail;    /* sent, not yet answered (oldest = running) */
    unsigned ninflight;
    br_ring_msg_t sending;  /* a message only partly written */
    int sending_active;
    PyObject *sending_ref;
    PyObject *rx_parts;     /* bytearray of a message spanning fragments */
    uint32_t rx_type;
    uint64_t rx_tag;
    unsigned assigned;      /* tasks sent to this process */
    int64_t since;          /* when the oldest unanswered task started */
    uint64_t timed_out;     /* seq of the task it was killed for, or 0 */
    int init_failed;
    int ready;              /* sent MSG_READY: it started up */
    uint64_t next_seq;      /* sequence number of the next task sent */
    uint64_t *slots;        /* the shared task slots (procproto.h) */
} worker_t;

typedef struct proc_core_s proc_core_t;
struct proc_core_s {
    braid_state *st;
    PyInterpreterState *interp;
    pthread_t thread;
    int epfd;
    br_wakeup_t wake;
    worker_t *workers;
    unsigned nworkers;
    task_t *pend_head, *pend_tail;
    uint64_t next_id;
    char **argv, **envp;
    int64_t ring_bytes;
    PyObject *init_payload;
    unsigned max_tasks;
    int64_t timeout_ns;
    int retries;
    PyObject *broken;       /* str: why the pool is broken */
    int closing, kill_on_close, collector_done, orphaned, joined;
    int64_t kill_at;
    unsigned startup_failures; /* workers in a row that died before MSG_READY */
    int64_t avg_task_ns;    /* running average of task times, 0: none yet */
    br_event_t started_ev;
    int start_error;
    unsigned rr;
    proc_core_t *next, *prev; /* in the module's list */
};

typedef struct {
    PyObject_HEAD
    proc_core_t *core;
} ProcPoolObject;

static void worker_cleanup(proc_core_t *c, worker_t *w);

/* --------------------------------------------------------- tasks */

static void task_free(task_t *t)
{
    if (t->fut != NULL) {
        t->fut->cancel_hook = NULL;
        t->fut->hook_ctx = NULL;
    }
    Py_XDECREF(t->fut);
    Py_XDECREF(t->payload);
    Py_XDECREF(t->keep);
    Py_XDECREF(t->held);
    PyMem_Free(t);
}

static void pend_push_back(proc_core_t *c, task_t *t)
{
    t->next = NULL;
    if (c->pend_tail) {
        c->pend_tail->next = t;
    } else {
        c->pend_head = t;
    }
    c->pend_tail = t;
}

static void pend_push_front(proc_core_t *c, task_t *t)
{
    t->next = c->pend_head;
    c->pend_head = t;
    if (c->pend_tail == NULL) {
        c->pend_tail = t;
    }
}

static task_t *pend_pop(proc_core_t *c)
{
    task_t *t = c->pend_head;
    if (t) {
        c->pend_head = t->next;
        if (c->pend_head == NULL) {
            c->pend_tail = NULL;
        }
        t->next = NULL;
    }
    return t;
}

static task_t *inflight_pop(worker_t *w)
{
    task_t *t = w->head;
    if (t) {
        w->head = t->next;
        if (w->head == NULL) {
            w->tail = NULL;
        }
        t->next = NULL;
        w->ninflight--;
    }
    return t;
}

/* Finishes a task's future with a result or an exception and frees it. */
static void task_finish(task_t *t, PyObject *result, PyObject *exc)
{
    if (braid_future_finish(t->fut, result, exc) < 0) {
        PyErr_WriteUnraisable((PyObject *)t->fut);
    }
    task_free(t);
}

static void task_fail_new(task_t *t, PyObject *type, PyObject *args)
{
    PyObject *exc = args ? PyObject_CallObject(type, args) : NULL;
    if (exc == NULL) {
        exc = PyErr_GetRaisedException();
    }
    task_finish(t, NULL, exc);
    Py_XDECREF(exc);
}

static void fail_broken(proc_core_t *c, task_t *t)
{
    PyObject *args = PyTuple_Pack(1, c->broken);
    task_fail_new(t, c->st->BrokenProcessPool, args);
    Py_XDECREF(args);
}

/* The pool is unusable: pending tasks fail with BrokenProcessPool, workers
 * finish what they hold and exit, later submits raise. */
static void mark_broken(proc_core_t *c, PyObject *why)
{
    if (c->broken == NULL) {
        c->broken = Py_NewRef(why);
    }
    c->closing = 1;
    task_t *t;
    while ((t = pend_pop(c)) != NULL) {
        if (t->fut->state == FUT_PENDING) {
            fail_broken(c, t);
        } else {
            braid_future_notify_cancel(t->fut);
            task_free(t);
        }
    }
}

static void mark_broken_str(proc_core_t *c, const char *why)
{
    PyObject *s = PyUnicode_FromString(why);
    if (s == NULL) {
        PyErr_Clear();
        s = Py_NewRef(Py_None);
    }
    mark_broken(c, s);
    Py_DECREF(s);
}

/* --------------------------------------------------------- sending */

/* Writes (more of) the worker's current message. 1 done, 0 waiting for
 * space (armed), -1 the worker is unusable. */
static int continue_send(worker_t *w)
{
    for (;;) {
        int rc = br_ring_send(&w->tx, &w->sending);
        if (rc == 0) {
            w->sending_active = 0;
            Py_CLEAR(w->sending_ref);
            return 1;
        }
        if (rc != -EAGAIN) {
            return -1;
        }
        if (br_ring_arm_space(&w->tx) == 0) {
            return 0;
        }
    }
}

static int send_message(worker_t *w, uint32_t type, uint64_t tag, PyObject *payload)
{
    w->sending = (br_ring_msg_t){.type = type, .tag = tag};
    if (payload != NULL) {
        w->sending.payload = PyBytes_AS_STRING(payload);
        w->sending.len = (size_t)PyBytes_GET_SIZE(payload);
    }
    w->sending_ref = Py_XNewRef(payload);
    w->sending_active = 1;
    return continue_send(w);
}

static unsigned depth(proc_core_t *c)
{
    if (c->avg_task_ns == 0) {
        return DEPTH_UNKNOWN;
    }
    return c->avg_task_ns < 50000 ? DEPTH_TINY : c->avg_task_ns < 1000000 ? DEPTH_SHORT : DEPTH_LONG;
}

static int worker_available(proc_core_t *c, worker_t *w)
{
    return w->state == W_RUNNING && !w->sending_active && w->ninflight < depth(c) &&
           (c->max_tasks == 0 || w->assigned < c->max_tasks);
}

static uint64_t *slot_of(worker_t *w, uint64_t seq)
{
    return &w->slots[seq % SLOTS];
}

/* The future's cancel hook (see FutureObject.cancel_hook). */
static int task_cancel_hook(FutureObject *f, int phase)
{
    task_t *t = f->hook_ctx;
    if (phase == 1) {
        braid_future_notify_cancel(f); /* wait()/as_completed() hear at once */
        return 1;
    }
    if (t == NULL || t->worker < 0) {
        return 1; /* still in the parent's queue */
    }
    worker_t *w = &t->core->workers[t->worker];
    uint64_t expect = SLOT_WORD(t->seq, SLOT_QUEUED);
    return __atomic_compare_exchange_n(slot_of(w, t->seq), &expect, SLOT_WORD(t->seq, SLOT_CANCELLED), 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* Hands pending tasks to workers with room. */
/* Takes the next pending task that is still wanted, or NULL. */
static task_t *next_pending(proc_core_t *c)
{
    task_t *t;
    while ((t = pend_pop(c)) != NULL && t->fut->state != FUT_PENDING) {
        braid_future_notify_cancel(t->fut); /* cancelled while queued */
        task_free(t);
    }
    return t;
}

static void send_task(proc_core_t *c, worker_t *w, task_t *t)
{
    t->worker = (int)(w - c->workers);
    t->seq = w->next_seq++;
    __atomic_store_n(slot_of(w, t->seq), SLOT_WORD(t->seq, SLOT_QUEUED), __ATOMIC_RELEASE);
    if (w->tail) {
        w->tail->next = t;
    } else {
        /* an idle worker starts it at once: report it running (it can no
         * longer be cancelled, as with ProcessPoolExecutor's call queue);
         * tasks queued behind stay cancellable */
        w->head = t;
        w->since = br_now_ns();
        t->fut->state = FUT_RUNNING;
    }
    w->tail = t;
    w->ninflight++;
    w->assigned++;
    if (send_message(w, MSG_CALL, t->seq, t->payload) < 0) {
        (void)br_proc_kill(&w->proc, SIGKILL); /* the exit handler requeues */
    }
}

/* Hands pending tasks to workers: first one to each idle worker (starting
 * with the one that answered last, which is still awake), then one at a
 * time round the workers until their queues are full. */
static void dispatch(proc_core_t *c)
{
    for (unsigned k = 0; k < c->nworkers && c->pend_head != NULL; k++) {
        worker_t *w = &c->workers[(c->rr + k) % c->nworkers];
        if (w->ninflight == 0 && worker_available(c, w)) {
            task_t *t = next_pending(c);
            if (t != NULL) {
                send_task(c, w, t);
            }
        }
    }
    int progress = 1;
    while (progress && c->pend_head != NULL) {
        progress = 0;
        for (unsigned k = 0; k < c->nworkers && c->pend_head != NULL; k++) {
            worker_t *w = &c->workers[(c->rr + k) % c->nworkers];
            if (worker_available(c, w)) {
                task_t *t = next_pending(c);
                if (t != NULL) {
                    send_task(c, w, t);
                    progress = 1;
                }
            }
        }
    }
    /* Recycle workers that reached max_tasks_per_worker, and let all go
     * once the pool is closing and nothing is left for them. */
    for (unsigned i = 0; i < c->nworkers; i++) {
        worker_t *w = &c->workers[i];
        int spent = c->max_tasks != 0 && w->assigned >= c->max_tasks;
        int done = c->closing && c->pend_head == NULL;
        if (w->state == W_RUNNING && w->ninflight == 0 && !w->sending_active && (spent || done)) {
            w->state = W_EXITING;
            if (send_message(w, MSG_EXIT, 0, NULL) < 0) {
                (void)br_proc_kill(&w->proc, SIGKILL);
            }
        }
    }
}

/* --------------------------------------------------------- workers */

static int epoll_add(proc_core_t *c, int fd, int kind, unsigned index)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ((uint64_t)kind << 32) | index};
    return epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

/* Starts a worker in slot i. Called on the collector thread, GIL held
 * (released around the spawn itself). 0 or -errno. */
static int worker_spawn(proc_core_t *c, unsigned i)
{
    worker_t *w = &c->workers[i];
    memset(w, 0, sizeof *w);
    for (int k = 0; k < 4; k++) {
        w->efd[k] = -1;
    }
    w->proc.pidfd = -1;
    w->next_seq = 1;
    w->one = br_ring_mem_size((size_t)c->ring_bytes);
    int err = 0;
    int memfd = memfd_create("braid-worker", MFD_CLOEXEC);
    if (memfd < 0) {
        return -errno;
    }
    if (ftruncate(memfd, (off_t)(2 * w->one + SLOTS_BYTES)) < 0) {
        err = -errno;
        goto fail;
    }
    w->mem = mmap(NULL, 2 * w->one + SLOTS_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (w->mem == MAP_FAILED) {
        w->mem = NULL;
        err = -errno;
        goto fail;
    }
    w->slots = (uint64_t *)((char *)w->mem + 2 * w->one);
    for (int k = 0; k < 4; k++) {
        if ((w->efd[k] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
            err = -errno;
            goto fail;
        }
    }
    if ((err = br_ring_format(w->mem, w->one)) < 0 ||
        (err = br_ring_format((char *)w->mem + w->one, w->one)) < 0 ||
        (err = br_ring_attach(&w->tx, w->mem, w->one, w->efd[0], w->efd[1])) < 0 ||
        (err = br_ring_attach(&w->rx, (char *)w->mem + w->one, w->one, w->efd[2], w->efd[3])) < 0) {
        goto fail;
    }
    int fds[5] = {memfd, w->efd[0], w->efd[1], w->efd[2], w->efd[3]};
    br_spawn_options_t o = {.path = c->argv[0], .argv = c->argv, .envp = c->envp, .fds = fds, .nfds = 5};
    Py_BEGIN_ALLOW_THREADS
    err = br_proc_spawn(&w->proc, &o);
    Py_END_ALLOW_THREADS
    if (err < 0) {
        goto fail;
    }
    close(memfd);
    memfd = -1;
    w->state = W_RUNNING;
    (void)br_ring_arm_data(&w->rx);
    if ((err = epoll_add(c, w->efd[2], K_RESULT, i)) < 0 || (err = epoll_add(c, w->efd[1], K_SPACE, i)) < 0 ||
        (w->proc.pidfd >= 0 && (err = epoll_add(c, w->proc.pidfd, K_EXIT, i)) < 0)) {
        (void)br_proc_kill(&w->proc, SIGKILL);
        (void)br_proc_wait(&w->proc, -1);
        worker_cleanup(c, w);
        return err;
    }
    if (c->init_payload != NULL && send_message(w, MSG_INIT, 0, c->init_payload) < 0) {
        (void)br_proc_kill(&w->proc, SIGKILL);
    }
    return 0;
fail:
    if (memfd >= 0) {
        close(memfd);
    }
    worker_cleanup(c, w);
    return err;
}

static void worker_cleanup(proc_core_t *c, worker_t *w)
{
    for (int k = 0; k < 4; k++) {
        if (w->efd[k] >= 0) {
            (void)epoll_ctl(c->epfd, EPOLL_CTL_DEL, w->efd[k], NULL);
            close(w->efd[k]);
            w->efd[k] = -1;
        }
    }
    if (w->proc.pidfd >= 0) {
        (void)epoll_ctl(c->epfd, EPOLL_CTL_DEL, w->proc.pidfd, NULL);
        br_proc_close(&w->proc);
        w->proc.pidfd = -1;
    }
    if (w->mem != NULL) {
        munmap(w->mem, 2 * w->one + SLOTS_BYTES);
        w->mem = NULL;
        w->slots = NULL;
    }
    Py_CLEAR(w->sending_ref);
    Py_CLEAR(w->rx_parts);
    w->sending_active = 0;
    w->state = W_FREE;
}

/* --------------------------------------------------------- results */

static PyObject *loads(proc_core_t *c, const unsigned char *data, size_t len)
{
    PyObject *view = PyMemoryView_FromMemory((char *)data, (Py_ssize_t)len, PyBUF_READ);
    if (view == NULL) {
        return NULL;
    }
    PyObject *obj = braid_loads(c->st, view);
    Py_DECREF(view);
    return obj;
}

static void handle_message(proc_core_t *c, worker_t *w, uint32_t type, uint64_t tag,
                           const unsigned char *data, size_t len)
{
    if (type == MSG_READY) {
        w->ready = 1;
        c->startup_failures = 0;
        return;
    }
    if (type == MSG_INIT_FAILED) {
        w->init_failed = 1;
        PyObject *exc = loads(c, data, len);
        PyObject *why = exc ? PyUnicode_FromFormat("A worker's initializer failed (%R); "
                                                   "the process pool is not usable anymore", exc)
                            : NULL;
        if (why == NULL) {
            PyErr_Clear();
            mark_broken_str(c, "A worker's initializer failed; the process pool is not usable anymore");
        } else {
            mark_broken(c, why);
        }
        Py_XDECREF(why);
        Py_XDECREF(exc);
        return;
    }
    task_t *t = w->head;
    if (t == NULL || t->seq != tag || (type != MSG_RESULT && type != MSG_ERROR && type != MSG_SKIPPED)) {
        (void)br_proc_kill(&w->proc, SIGKILL); /* out of step: treat as a crash */
        return;
    }
    inflight_pop(w);
    int64_t now = br_now_ns();
    if (type == MSG_SKIPPED || t->fut->state == FUT_CANCELLED ||
        t->fut->state == FUT_CANCELLED_AND_NOTIFIED) {
        /* cancelled before it started (the worker saw the slot) */
        braid_future_notify_cancel(t->fut);
        task_free(t);
        return;
    }
    int64_t took = now - w->since;
    c->avg_task_ns = c->avg_task_ns == 0 ? took : c->avg_task_ns - c->avg_task_ns / 8 + took / 8;
    w->since = now;
    c->rr = (unsigned)(w - c->workers); /* it is awake: feed it first */
    t->fut->state = FUT_RUNNING;
    if (w->head != NULL && w->head->fut->state == FUT_PENDING) {
        w->head->fut->state = FUT_RUNNING; /* the next one starts now */
    }
    PyObject *obj = loads(c, data, len);
    /* its out-of-band buffers are mapped now: the worker may close them */
    __atomic_store_n(&w->slots[ACK_INDEX], tag, __ATOMIC_RELEASE);
    if (obj == NULL) {
        PyObject *exc = PyErr_GetRaisedException();
        task_finish(t, NULL, exc);
        Py_XDECREF(exc);
    } else if (type == MSG_RESULT) {
        task_finish(t, obj, NULL);
    } else {
        task_finish(t, NULL, obj);
    }
    Py_XDECREF(obj);
}

/* Reads every complete message the worker has written. */
static void drain_results(proc_core_t *c, worker_t *w)
{
    for (;;) {
        br_ring_frag_t f;
        int rc = br_ring_recv(&w->rx, &f);
        if (rc == -EAGAIN) {
            if (br_ring_arm_data(&w->rx) == 0) {
                return;
            }
            continue;
        }
        if (rc < 0) {
            (void)br_proc_kill(&w->proc, SIGKILL);
            return;
        }
        if (f.flags & BR_RING_FIRST) {
            Py_CLEAR(w->rx_parts);
            w->rx_type = f.type;
            w->rx_tag = f.tag;
        }
        if ((f.flags & BR_RING_LAST) && w->rx_parts == NULL) {
            handle_message(c, w, f.type, f.tag, f.data, f.len);
            br_ring_release(&w->rx, &f);
            continue;
        }
        if (w->rx_parts == NULL && (w->rx_parts = PyByteArray_FromStringAndSize(NULL, 0)) == NULL) {
            PyErr_WriteUnraisable(NULL);
            br_ring_release(&w->rx, &f);
            (void)br_proc_kill(&w->proc, SIGKILL);
            return;
        }
        Py_ssize_t old = PyByteArray_GET_SIZE(w->rx_parts);
        if (PyByteArray_Resize(w->rx_parts, old + (Py_ssize_t)f.len) < 0) {
            PyErr_WriteUnraisable(NULL);
            br_ring_release(&w->rx, &f);
            (void)br_proc_kill(&w->proc, SIGKILL);
            return;
        }
        memcpy(PyByteArray_AS_STRING(w->rx_parts) + old, f.data, f.len);
        br_ring_release(&w->rx, &f);
        if (f.flags & BR_RING_LAST) {
            PyObject *parts = w->rx_parts;
            w->rx_parts = NULL;
            handle_message(c, w, w->rx_type, w->rx_tag, (unsigned char *)PyByteArray_AS_STRING(parts),
                           (size_t)PyByteArray_GET_SIZE(parts));
            Py_DECREF(parts);
        }
    }
}

static void drain_fd(int fd)
{
    uint64_t n;
    ssize_t r = read(fd, &n, sizeof n);
    (void)r; /* EAGAIN: nothing to drain; the ring state is what counts */
}

/* The task a dead worker was running: TaskTimeout if it was killed for
 * running too long, another go while retries remain, else WorkerCrashed. */
static void settle_crashed(proc_core_t *c, worker_t *w, task_t *t)
{
    if (w->timed_out == t->seq) {
        PyObject *args = Py_BuildValue("(s)", "the task ran past task_timeout; its worker was killed");
        task_fail_new(t, c->st->TaskTimeout, args);
        Py_XDECREF(args);
        return;
    }
    if (t->retries_left > 0 && c->kill_at == 0) { /* no second go once the pool kills its workers */
        t->retries_left--;
        t->worker = -1;
        t->fut->state = FUT_PENDING;
        pend_push_front(c, t);
        return;
    }
    PyObject *args = Py_BuildValue("(s)", "a worker process died while running this task");
    PyObject *exitcode = w->proc.term_signal ? Py_NewRef(Py_None) : PyLong_FromLong(w->proc.exit_code);
    PyObject *sig = w->proc.term_signal ? PyLong_FromLong(w->proc.term_signal) : Py_NewRef(Py_None);
    PyObject *kw = Py_BuildValue("{s:i,s:N,s:N}", "pid", w->proc.pid, "exitcode", exitcode, "signal", sig);
    PyObject *exc = (args && kw) ? PyObject_Call(c->st->WorkerCrashed, args, kw) : NULL;
    if (exc == NULL) {
        exc = PyErr_GetRaisedException();
    }
    task_finish(t, NULL, exc);
    Py_XDECREF(exc);
    Py_XDECREF(args);
    Py_XDECREF(kw);
}

/* The worker's process has exited: settle its tasks and replace it. */
static void handle_exit(proc_core_t *c, unsigned i)
{
    worker_t *w = &c->workers[i];
    if (w->state == W_FREE) {
        return;
    }
    int rc = br_proc_poll(&w->proc);
    if (rc == 0) {
        return; /* spurious */
    }
    drain_results(c, w); /* results written before it died still count */
    int clean = w->state == W_EXITING && rc == 1 && w->proc.exit_code == 0 && w->proc.term_signal == 0;
    if (!w->ready && c->broken == NULL) {
        /* it died starting up (an import failing, say): its tasks never ran;
         * a pool whose workers keep dying this way is broken */
        if (++c->startup_failures >= STARTUP_FAILURES_LIMIT) {
            PyObject *why = PyUnicode_FromFormat(
                "worker processes keep exiting while they start (the last one: %s %d); "
                "see their standard error", w->proc.term_signal ? "signal" : "exit code",
                w->proc.term_signal ? w->proc.term_signal : w->proc.exit_code);
            if (why != NULL) {
                mark_broken(c, why);
                Py_DECREF(why);
            } else {
                PyErr_Clear();
                mark_broken_str(c, "worker processes keep exiting while they start");
            }
        }
    }
    /* Settle what it held, oldest first. The shared slots tell which task
     * it was running (RUNNING), which it never started (QUEUED: back to the
     * queue) and which were cancelled. A worker that never started ran
     * none of them. */
    task_t *requeue = NULL, *t;
    while ((t = inflight_pop(w)) != NULL) {
        uint64_t word = __atomic_load_n(slot_of(w, t->seq), __ATOMIC_ACQUIRE);
        unsigned slot = (word >> 2) == t->seq ? (unsigned)(word & 3u) : SLOT_QUEUED;
        int cancelled = t->fut->state == FUT_CANCELLED || t->fut->state == FUT_CANCELLED_AND_NOTIFIED;
        if (c->broken != NULL) {
            fail_broken(c, t);
        } else if (cancelled || slot == SLOT_CANCELLED) {
            braid_future_notify_cancel(t->fut);
            task_free(t);
        } else if (slot == SLOT_RUNNING && w->ready) {
            settle_crashed(c, w, t);
        } else {
            t->next = requeue; /* reversed here, put back in order below */
            requeue = t;
        }
    }
    while (requeue != NULL) {
        t = requeue;
        requeue = t->next;
        t->worker = -1;
        t->fut->state = FUT_PENDING;
        pend_push_front(c, t);
    }
    int init_failed = w->init_failed;
    worker_cleanup(c, w);
    if (!clean && init_failed && c->broken == NULL) {
        mark_broken_str(c, "A worker's initializer failed; the process pool is not usable anymore");
    }
    if (c->broken != NULL) {
        mark_broken(c, c->broken);
        return;
    }
    if (!c->closing || c->pend_head != NULL) {
        int err = worker_spawn(c, i);
        if (err < 0) {
            PyObject *why = PyUnicode_FromFormat("could not start a worker process: %s", br_strerror(err));
            if (why) {
                mark_broken(c, why);
                Py_DECREF(why);
            } else {
                PyErr_Clear();
                mark_broken_str(c, "could not start a worker process");
            }
        }
    }
}

static void poll_exits(proc_core_t *c)
{
    /* without pidfd support, exits are found by polling */
    for (unsigned i = 0; i < c->nworkers; i++) {
        if (c->workers[i].state != W_FREE && c->workers[i].proc.pidfd < 0) {
            handle_exit(c, i);
        }
    }
}

static int64_t next_deadline(proc_core_t *c)
{
    int64_t d = -1;
    for (unsigned i = 0; c->timeout_ns > 0 && i < c->nworkers; i++) {
        worker_t *w = &c->workers[i];
        if (w->state != W_FREE && w->ninflight > 0 && w->timed_out == 0) {
            int64_t t = w->since + c->timeout_ns;
            if (d < 0 || t < d) {
                d = t;
            }
        }
    }
    if (c->kill_at > 0 && (d < 0 || c->kill_at < d)) {
        d = c->kill_at;
    }
    return d;
}

static void check_timeouts(proc_core_t *c)
{
    int64_t now = br_now_ns();
    for (unsigned i = 0; i < c->nworkers; i++) {
        worker_t *w = &c->workers[i];
        if (w->state == W_FREE) {
            continue;
        }
        if (c->timeout_ns > 0 && w->ninflight > 0 && w->timed_out == 0 && now >= w->since + c->timeout_ns) {
            w->timed_out = w->head->seq;
            (void)br_proc_kill(&w->proc, SIGKILL);
        }
        if (c->kill_at > 0 && now >= c->kill_at) {
            (void)br_proc_kill(&w->proc, SIGKILL);
        }
    }
}

static int all_settled(proc_core_t *c)
{
    if (!c->closing || c->pend_head != NULL) {
        return 0;
    }
    for (unsigned i = 0; i < c->nworkers; i++) {
        if (c->workers[i].state != W_FREE) {
            return 0;
        }
    }
    return 1;
}

/* --------------------------------------------------------- collector thread */

/* Without the GIL: polls, for a short while, the result rings of workers
 * that hold tasks. A result that comes within the window is taken without
 * an epoll wakeup. Only the collector reads result rings, so peeking with
 * br_ring_recv (which consumes nothing) is safe here. */
static int results_soon(proc_core_t *c)
{
    int busy = 0;
    for (unsigned i = 0; i < c->nworkers; i++) {
        busy |= c->workers[i].state != W_FREE && c->workers[i].ninflight > 0;
    }
    if (!busy) {
        return 0;
    }
    int64_t until = br_now_ns() + COLLECTOR_SPIN_NS;
    do {
        for (unsigned i = 0; i < c->nworkers; i++) {
            worker_t *w = &c->workers[i];
            br_ring_frag_t f;
            if (w->state != W_FREE && w->ninflight > 0 && br_ring_recv(&w->rx, &f) == 0) {
                return 1;
            }
        }
    } while (br_now_ns() < until);
    return 0;
}

static void *collector_main(void *arg)
{
    proc_core_t *c = arg;
    /* process-directed signals (Ctrl-C) are for the main thread */
    sigset_t block;
    if (br_async_signals(&block) == 0) {
        (void)pthread_sigmask(SIG_BLOCK, &block, NULL);
    }
    PyThreadState *ts = PyThreadState_New(c->interp);
    PyEval_RestoreThread(ts);
    int err = 0;
    for (unsigned i = 0; i < c->nworkers && err == 0; i++) {
        err = worker_spawn(c, i);
    }
    c->start_error = err;
    br_event_set(&c->started_ev);
    if (err < 0) {
        c->closing = 1;
        c->kill_at = br_now_ns();
    }
    struct epoll_event evs[64];
    while (!all_settled(c)) {
        dispatch(c);
        if (all_settled(c)) {
            break;
        }
        int64_t deadline = next_deadline(c);
        int timeout_ms = -1;
        if (deadline >= 0) {
            int64_t left = deadline - br_now_ns();
            timeout_ms = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
        }
        for (unsigned i = 0; i < c->nworkers; i++) {
            if (c->workers[i].state != W_FREE && c->workers[i].proc.pidfd < 0) {
                timeout_ms = timeout_ms < 0 || timeout_ms > 50 ? 50 : timeout_ms;
            }
        }
        int n;
        Py_BEGIN_ALLOW_THREADS
        n = results_soon(c) ? 0 : epoll_wait(c->epfd, evs, 64, timeout_ms);
        Py_END_ALLOW_THREADS
        if (n == 0) {
            for (unsigned i = 0; i < c->nworkers; i++) {
                if (c->workers[i].state != W_FREE && c->workers[i].ninflight > 0) {
                    drain_results(c, &c->workers[i]);
                }
            }
        }
        if (n < 0 && errno != EINTR) {
            mark_broken_str(c, "the process pool's collector failed (epoll_wait)");
            c->closing = 1;
            c->kill_at = br_now_ns();
            n = 0;
        }
        for (int k = 0; k < n; k++) {
            int kind = (int)(evs[k].data.u64 >> 32);
            unsigned i = (unsigned)(evs[k].data.u64 & 0xffffffffu);
            if (kind == K_WAKE) {
                (void)br_wakeup_drain(&c->wake);
                continue;
            }
            worker_t *w = &c->workers[i];
            if (w->state == W_FREE) {
                continue;
            }
            if (kind == K_RESULT) {
                drain_fd(w->efd[2]);
                drain_results(c, w);
            } else if (kind == K_SPACE) {
                drain_fd(w->efd[1]);
                if (w->sending_active && continue_send(w) < 0) {
                    (void)br_proc_kill(&w->proc, SIGKILL);
                }
            } else if (kind == K_EXIT) {
                handle_exit(c, i);
            }
        }
        poll_exits(c);
        check_timeouts(c);
    }
    /* every worker has been reaped; fail whatever could not run */
    task_t *t;
    while ((t = pend_pop(c)) != NULL) {
        if (t->fut->state == FUT_PENDING) {
            if (c->broken == NULL) {
                mark_broken_str(c, "the process pool stopped before this task ran");
            }
            fail_broken(c, t);
        } else {
            braid_future_notify_cancel(t->fut);
            task_free(t);
        }
    }
    c->collector_done = 1;
    PyThreadState_Clear(ts);
    PyThreadState_DeleteCurrent();
    return NULL;
}

/* --------------------------------------------------------- core life cycle */

static void free_strv(char **v)
{
    for (char **p = v; p && *p; p++) {
        free(*p);
    }
    free(v);
}

static char **strv_from_list(PyObject *list)
{
    Py_ssize_t n = PyList_GET_SIZE(list);
    char **v = calloc((size_t)n + 1, sizeof *v);
    if (v == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *s = PyUnicode_AsUTF8(PyList_GET_ITEM(list, i));
        if (s == NULL || (v[i] = strdup(s)) == NULL) {
            if (s != NULL) {
                PyErr_NoMemory();
            }
            free_strv(v);
            return NULL;
        }
    }
    return v;
}

static void core_free(proc_core_t *c)
{
    braid_state *st = c->st;
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        st->proc_cores = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    if (c->epfd >= 0) {
        close(c->epfd);
    }
    br_wakeup_close(&c->wake);
    free_strv(c->argv);
    free_strv(c->envp);
    Py_CLEAR(c->init_payload);
    Py_CLEAR(c->broken);
    PyMem_Free(c->workers);
    PyMem_Free(c);
}

/* With the GIL: waits for the collector to finish and joins it. */
static int core_join(proc_core_t *c)
{
    if (!c->collector_done && pthread_equal(pthread_self(), c->thread)) {
        /* a done-callback (they run on the collector) waiting for the pool */
        PyErr_SetString(PyExc_RuntimeError,
                        "shutdown(wait=True) from a done-callback of the same pool would wait for itself");
        return -1;
    }
    while (!c->collector_done) {
        Py_BEGIN_ALLOW_THREADS
        usleep(1000);
        Py_END_ALLOW_THREADS
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
    }
    if (!c->joined) {
        c->joined = 1;
        int err;
        Py_BEGIN_ALLOW_THREADS
        err = pthread_join(c->thread, NULL);
        Py_END_ALLOW_THREADS
        if (err != 0) {
            braid_raise_oserror(-err, "joining the process pool's collector");
            return -1;
        }
    }
    return 0;
}

static void core_close(proc_core_t *c, int cancel)
{
    c->closing = 1;
    if (cancel) {
        task_t *keep = NULL, *t;
        while ((t = pend_pop(c)) != NULL) {
            if (braid_future_cancel(t->fut) < 0) {
                PyErr_WriteUnraisable((PyObject *)t->fut);
            }
            braid_future_notify_cancel(t->fut);
            t->next = keep;
            keep = t;
        }
        while (keep != NULL) {
            t = keep;
            keep = t->next;
            task_free(t);
        }
        /* tasks sent to workers but not started: the slot swap decides */
        PyObject *sent = PyList_New(0);
        for (unsigned i = 0; sent != NULL && i < c->nworkers; i++) {
            for (t = c->workers[i].head; t != NULL; t = t->next) {
                if (PyList_Append(sent, (PyObject *)t->fut) < 0) {
                    Py_CLEAR(sent);
                    break;
                }
            }
        }
        for (Py_ssize_t k = 0; sent != NULL && k < PyList_GET_SIZE(sent); k++) {
            if (braid_future_cancel((FutureObject *)PyList_GET_ITEM(sent, k)) < 0) {
                PyErr_WriteUnraisable(PyList_GET_ITEM(sent, k));
            }
        }
        if (sent == NULL) {
            PyErr_WriteUnraisable(NULL);
        }
        Py_XDECREF(sent);
    }
    (void)br_wakeup_signal(&c->wake);
}

PyObject *braid_procpool_at_exit(braid_state *st, int interrupted)
{
    for (proc_core_t *c = st->proc_cores; c != NULL; c = c->next) {
        if (!c->collector_done) {
            core_close(c, interrupted);
            if (interrupted) {
                c->kill_at = br_now_ns() + EXIT_GRACE_NS;
            }
        }
    }
    for (;;) {
        proc_core_t *c = st->proc_cores;
        while (c != NULL && c->joined) {
            c = c->next;
        }
        if (c == NULL) {
            break;
        }
        if (core_join(c) < 0) {
            return NULL;
        }
        if (c->orphaned) {
            core_free(c);
        }
    }
    Py_RETURN_NONE;
}

static void reap_orphans(braid_state *st)
{
    proc_core_t *c = st->proc_cores;
    while (c != NULL) {
        proc_core_t *next = c->next;
        if (c->orphaned && c->collector_done) {
            if (!c->joined) {
                c->joined = 1;
                (void)pthread_join(c->thread, NULL);
            }
            core_free(c);
        }
        c = next;
    }
}

/* --------------------------------------------------------- Python methods */

static PyObject *pp_submit(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    braid_state *st = c->st;
    PyObject *fn, *tuple, *kwargs;
    if (braid_unpack_submit(args, nargs, kwnames, &fn, &tuple, &kwargs) < 0) {
        return NULL;
    }
    if (c->broken != NULL || c->closing) {
        Py_DECREF(tuple);
        Py_XDECREF(kwargs);
        if (c->broken != NULL) {
            PyErr_SetObject(st->BrokenProcessPool, c->broken);
        } else {
            PyErr_SetString(PyExc_RuntimeError, "cannot schedule new futures after shutdown");
        }
        return NULL;
    }
    FutureObject *fut = braid_future_new(st);
    if (fut == NULL) {
        Py_DECREF(tuple);
        Py_XDECREF(kwargs);
        return NULL;
    }
    PyObject *keep = Py_BuildValue("(ONN)", fn, tuple, kwargs ? kwargs : Py_NewRef(Py_None));
    if (keep == NULL) {
        Py_DECREF(fut);
        return NULL;
    }
    PyObject *payload = braid_dumps_task(st, fn, tuple, kwargs, keep);
    PyObject *held = NULL;
    if (payload != NULL && PyTuple_Check(payload) && PyTuple_GET_SIZE(payload) == 2) {
        /* (bytes, memfds of out-of-band buffers to keep until settled) */
        PyObject *pair = payload;
        payload = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
        held = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
        Py_DECREF(pair);
    }
    if (payload == NULL || !PyBytes_Check(payload)) {
        Py_XDECREF(held);
        Py_DECREF(keep);
        /* an argument that cannot be pickled fails this task alone */
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
    task_t *t = PyMem_Calloc(1, sizeof *t);
    if (t == NULL) {
        Py_XDECREF(held);
        Py_DECREF(keep);
        Py_DECREF(payload);
        Py_DECREF(fut);
        return PyErr_NoMemory();
    }
    t->keep = keep;
    t->held = held;
    t->id = ++c->next_id;
    t->core = c;
    t->worker = -1;
    t->fut = (FutureObject *)Py_NewRef(fut);
    t->payload = payload;
    t->retries_left = c->retries;
    fut->cancel_hook = task_cancel_hook;
    fut->hook_ctx = t;
    pend_push_back(c, t);
    dispatch(c);
    return (PyObject *)fut;
}

static PyObject *pp_shutdown(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wait", "cancel_futures", NULL};
    int wait = 1, cancel = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p$p:shutdown", kwlist, &wait, &cancel)) {
        return NULL;
    }
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    if (!c->collector_done) {
        core_close(c, cancel);
    }
    if (wait && core_join(c) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* terminate(): what multiprocessing.Pool.terminate does -- queued work is
 * cancelled, the workers are killed at once (their running tasks fail with
 * WorkerCrashed), and the call returns once the collector has settled all. */
static PyObject *pp_terminate(PyObject *self, PyObject *unused)
{
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    if (!c->collector_done) {
        core_close(c, 1);
        c->kill_at = br_now_ns();
    }
    if (core_join(c) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *pp_get_max_workers(PyObject *self, void *x)
{
    return PyLong_FromUnsignedLong(((ProcPoolObject *)self)->core->nworkers);
}

static PyObject *pp_get_pids(PyObject *self, void *x)
{
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    PyObject *list = PyList_New(0);
    for (unsigned i = 0; list && i < c->nworkers; i++) {
        if (c->workers && c->workers[i].state != W_FREE) {
            PyObject *pid = PyLong_FromLong(c->workers[i].proc.pid);
            if (pid == NULL || PyList_Append(list, pid) < 0) {
                Py_CLEAR(list);
            }
            Py_XDECREF(pid);
        }
    }
    return list;
}

static int pp_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_workers", "argv", "envp", "ring_bytes", "init_payload",
                             "max_tasks_per_worker", "task_timeout", "retries", NULL};
    unsigned max_workers, max_tasks;
    PyObject *argv, *envp, *init_payload;
    long long ring_bytes;
    double timeout;
    int retries;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "IO!O!LOIdi:_ProcessPoolCore", kwlist, &max_workers,
                                     &PyList_Type, &argv, &PyList_Type, &envp, &ring_bytes, &init_payload,
                                     &max_tasks, &timeout, &retries)) {
        return -1;
    }
    ProcPoolObject *p = (ProcPoolObject *)self;
    if (p->core != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "__init__ called twice");
        return -1;
    }
    if (max_workers == 0 || PyList_GET_SIZE(argv) < 1 || ring_bytes <= 0 || retries < 0 ||
        (init_payload != Py_None && !PyBytes_Check(init_payload))) {
        PyErr_SetString(PyExc_ValueError, "invalid _ProcessPoolCore arguments");
        return -1;
    }
    braid_state *st = braid_state_from_type(Py_TYPE(self));
    if (st->proc_dumps == NULL || st->proc_loads == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "braid._procpool did not register its hooks");
        return -1;
    }
    reap_orphans(st);
    proc_core_t *c = PyMem_Calloc(1, sizeof *c);
    if (c == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    c->st = st;
    c->epfd = -1;
    c->wake.fd = -1;
    c->interp = PyInterpreterState_Get();
    c->nworkers = max_workers;
    c->ring_bytes = ring_bytes;
    c->max_tasks = max_tasks;
    c->timeout_ns = timeout > 0 ? (int64_t)(timeout * 1e9) : 0;
    c->retries = retries;
    c->init_payload = init_payload == Py_None ? NULL : Py_NewRef(init_payload);
    c->workers = PyMem_Calloc(max_workers, sizeof(worker_t));
    c->argv = strv_from_list(argv);
    c->envp = c->argv ? strv_from_list(envp) : NULL;
    br_event_init(&c->started_ev);
    int err = 0;
    if (c->workers == NULL || c->argv == NULL || c->envp == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        goto fail;
    }
    if ((c->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0 || (err = br_wakeup_init(&c->wake)) < 0 ||
        (err = epoll_add(c, c->wake.fd, K_WAKE, 0)) < 0) {
        braid_raise_oserror(err ? err : -errno, "creating the process pool");
        goto fail;
    }
    /* link before the thread starts, so at-exit sees it */
    c->next = st->proc_cores;
    if (st->proc_cores) {
        st->proc_cores->prev = c;
    }
    st->proc_cores = c;
    p->core = c;
    if ((err = pthread_create(&c->thread, NULL, collector_main, c)) != 0) {
        c->collector_done = 1;
        c->joined = 1;
        braid_raise_oserror(-err, "starting the process pool's collector");
        return -1;
    }
    Py_BEGIN_ALLOW_THREADS
    (void)br_event_wait(&c->started_ev, -1);
    Py_END_ALLOW_THREADS
    if (c->start_error < 0) {
        PyErr_Format(PyExc_OSError, "could not start worker process %s: %s", c->argv[0],
                     br_strerror(c->start_error));
        return -1;
    }
    return 0;
fail:
    if (c->epfd >= 0) {
        close(c->epfd);
    }
    br_wakeup_close(&c->wake);
    free_strv(c->argv);
    free_strv(c->envp);
    Py_XDECREF(c->init_payload);
    PyMem_Free(c->workers);
    PyMem_Free(c);
    return -1;
}

static void pp_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    proc_core_t *c = ((ProcPoolObject *)self)->core;
    if (c != NULL) {
        c->orphaned = 1;
        if (c->collector_done) {
            if (!c->joined) {
                c->joined = 1;
                (void)pthread_join(c->thread, NULL);
            }
            core_free(c);
        } else {
            core_close(c, 0); /* queued work finishes; reaped later */
        }
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

void braid_procpool_after_fork_child(braid_state *st)
{
    /* the collector and the workers belong to the parent */
    for (proc_core_t *c = st->proc_cores; c != NULL; c = c->next) {
        c->collector_done = 1;
        c->joined = 1;
        c->closing = 1;
        if (c->broken == NULL) {
            c->broken = PyUnicode_FromString("the process pool was created before os.fork() and has "
                                             "no workers in this process");
        }
        c->pend_head = c->pend_tail = NULL; /* the parent's tasks: not ours to run */
        c->nworkers = 0;
    }
}
