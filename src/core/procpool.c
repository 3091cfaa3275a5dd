/*
 * procpool.c — br_procpool_t: the queue, scheduling and submits of a pool
 * of worker processes. One worker process (spawn, results, death) is
 * procpool_worker.c, the end of a pool procpool_close.c; the threads and
 * the mutex are explained in procpool_internal.h; the life cycles are
 * drawn in braid.h.
 *
 * Depth. A worker runs its tasks one at a time in the order sent, and up to
 * depth() of them wait in its ring. Deep for tiny tasks (the worker never
 * waits for the parent between two of them), shallow for long ones (a task
 * queued behind a long one could have run on a worker that is free). The
 * depth follows the pool's running average task time (1/8 weight per
 * result), measured from when a worker starts a task to its answer.
 *
 * Dispatch order: first one task to each idle worker, starting with the one
 * that answered last (it is awake: its spin on the task ring will see the
 * task without a wakeup), then one at a time round the workers until their
 * queues are full. A submit that finds nothing queued and a worker idle
 * sends the task itself (submit_direct), in the same order.
 *
 * Spin. After a callback that handled results or submits, while workers
 * hold tasks, the loop thread polls their result rings for up to spin_ns
 * before it returns to epoll: a result that comes within the window costs
 * no sleep and wakeup of the loop thread. Only while tasks take less than
 * the window on average (docs/BENCHMARKS.md has the measurements).
 */
#include "procpool_internal.h"

#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEPTH_TINY 32           /* tasks under 50 us */
#define DEPTH_SHORT 4           /* under 1 ms */
#define DEPTH_LONG 1
#define DEPTH_UNKNOWN 2         /* before any task has finished */
#define SPIN_NS 30000           /* the default spin_ns */
#define TAKER_QUIET_NS (10 * 1000000LL) /* no loop-thread poll this long after a take was tried */
#define DEFAULT_RING ((size_t)1 << 20)
/* The memory cap's poll while tasks run. A task that allocates as fast as
 * the kernel can fault pages in (about 2-4 GB/s on one core) overshoots the
 * cap by at most period x rate before it is killed: 40-80 MB at 20 ms. One
 * poll costs a pread of /proc/<pid>/statm per busy worker (about 2 us), so
 * 50 polls a second cost the loop thread 0.01% per worker. */
#define MEM_POLL_NS (20 * 1000000LL)

_Static_assert(DEPTH_TINY <= BR_PP_SLOTS / 2, "sent tasks must not share a slot");

/* ------------------------------------------------------------ the queue */

static void pend_unlink(br_procpool_t *pool, br_pptask_t *t)
{
    if (t->prev_ != NULL)
        t->prev_->next_ = t->next_;
    else
        pool->pend_head_ = t->next_;
    if (t->next_ != NULL)
        t->next_->prev_ = t->prev_;
    else
        pool->pend_tail_ = t->prev_;
    t->next_ = t->prev_ = NULL;
    pool->npending_--;
}

static void pend_push_back(br_procpool_t *pool, br_pptask_t *t)
{
    t->next_ = NULL;
    t->prev_ = pool->pend_tail_;
    if (pool->pend_tail_ != NULL)
        pool->pend_tail_->next_ = t;
    else
        pool->pend_head_ = t;
    pool->pend_tail_ = t;
    pool->npending_++;
}

static br_pptask_t *pend_pop(br_procpool_t *pool)
{
    br_pptask_t *t = pool->pend_head_;
    if (t != NULL)
        pend_unlink(pool, t);
    return t;
}

void br__pp_requeue_locked(br_procpool_t *pool, br_pptask_t *list)
{
    /* Reverse first, then push each at the front: the list keeps its order
     * ahead of what was already queued. */
    br_pptask_t *rev = NULL;
    while (list != NULL) {
        br_pptask_t *t = list;
        list = t->next_;
        t->next_ = rev;
        rev = t;
    }
    while (rev != NULL) {
        br_pptask_t *t = rev;
        rev = t->next_;
        br__pp_set_tstate(t, T_QUEUED);
        t->worker_ = NULL;
        t->prev_ = NULL;
        t->next_ = pool->pend_head_;
        if (pool->pend_head_ != NULL)
            pool->pend_head_->prev_ = t;
        else
            pool->pend_tail_ = t;
        pool->pend_head_ = t;
        pool->npending_++;
    }
}

/* Mutex held. Cancels a task that has not started: 0 if it will complete
 * CANCELLED, -EBUSY if it is running or done. */
static int cancel_locked(br_procpool_t *pool, br_pptask_t *t)
{
    switch (t->state_) {
    case T_CANCELLED:
        return 0;
    case T_QUEUED:
        pend_unlink(pool, t);
        br__pp_set_tstate(t, T_CANCELLED);
        t->next_ = pool->cancelled_;
        pool->cancelled_ = t;
        return 0;
    case T_SENT: {
        /* In a worker's ring: the slot swap decides (braid.h). */
        uint64_t *slot = &t->worker_->slots[t->seq_ % BR_PP_SLOTS];
        uint64_t expect = BR_PP_SLOT_WORD(t->seq_, BR_PP_SLOT_QUEUED);
        if (!__atomic_compare_exchange_n(slot, &expect, BR_PP_SLOT_WORD(t->seq_, BR_PP_SLOT_CANCELLED), 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return -EBUSY;
        br__pp_set_tstate(t, T_CANCELLED); /* the worker answers SKIPPED */
        return 0;
    }
    default:
        return -EBUSY;
    }
}

/* Mutex held: cancels everything that has not started. */
void br__pp_cancel_all_locked(br_procpool_t *pool)
{
    while (pool->pend_head_ != NULL)
        (void)cancel_locked(pool, pool->pend_head_);
    for (unsigned i = 0; i < pool->opts_.workers; i++) {
        br__ppw_t *w = pool->workers_[i];
        for (br_pptask_t *t = w != NULL ? w->head : NULL; t != NULL; t = t->next_)
            if (t->state_ == T_SENT)
                (void)cancel_locked(pool, t);
    }
}

void br__pp_complete(br_procpool_t *pool, br_pptask_t *t, int status, const void *reply, size_t len)
{
    br__mutex_lock(&pool->mu_);
    br__pp_set_tstate(t, T_DONE);
    t->worker_ = NULL;
    t->next_ = t->prev_ = NULL;
    br__mutex_unlock(&pool->mu_);
    pool->opts_.on_done(t, status, reply, len);
}

/* Completes a next_-linked list of tasks with one status. */
void br__pp_complete_list(br_procpool_t *pool, br_pptask_t *list, int status)
{
    while (list != NULL) {
        br_pptask_t *t = list;
        list = t->next_;
        br__pp_complete(pool, t, status, NULL, 0);
    }
}

int br__pp_killing_locked(br_procpool_t *pool)
{
    return pool->state_ >= PP_KILLING || pool->kill_at_ != 0;
}

/* ------------------------------------------------------------ scheduling */

static unsigned depth(const br_procpool_t *pool)
{
    int64_t avg = pool->avg_task_ns_;
    if (avg == 0)
        return DEPTH_UNKNOWN;
    return avg < 50000 ? DEPTH_TINY : avg < 1000000 ? DEPTH_SHORT : DEPTH_LONG;
}

static int available(const br_procpool_t *pool, const br__ppw_t *w, unsigned d)
{
    unsigned max = pool->opts_.max_tasks_per_worker;
    return w != NULL && w->state == W_RUNNING && !w->retiring && !w->ring_bad && !w->sending_active &&
           w->ninflight < d && (max == 0 || w->assigned < max);
}

/* Mutex held: sends the next pending task to w. 1 sent, 0 nothing to send.
 * From the loop thread, or from a submit (on_loop 0): then the loop thread
 * starts the task's timeout timer when it next runs. */
static int send_next(br_procpool_t *pool, br__ppw_t *w, int on_loop)
{
    br_pptask_t *t = pend_pop(pool);
    if (t == NULL)
        return 0;
    t->worker_ = w;
    t->seq_ = w->next_seq++;
    t->next_ = NULL;
    __atomic_store_n(&w->slots[t->seq_ % BR_PP_SLOTS], BR_PP_SLOT_WORD(t->seq_, BR_PP_SLOT_QUEUED),
                     __ATOMIC_RELEASE);
    if (w->tail != NULL) {
        w->tail->next_ = t;
        br__pp_set_tstate(t, T_SENT);
    } else {
        /* An idle worker starts it at once: it counts as running (and can
         * no longer be cancelled, as with ProcessPoolExecutor's call
         * queue); tasks queued behind it stay cancellable. */
        w->head = t;
        br__pp_set_tstate(t, T_RUNNING);
        /* Its timeout timer is started once the mutex is let go. */
        w->since = on_loop ? br_loop_now(pool->loop) : br_now_ns();
    }
    w->tail = t;
    w->ninflight++;
    w->assigned++;
    /* A failed send kills the worker; its exit puts the task back. */
    (void)br__ppw_send(w, BR_PP_MSG_CALL, t->seq_, t->payload, t->len);
    return 1;
}

void br__pp_dispatch(br_procpool_t *pool)
{
    unsigned n = pool->opts_.workers, d = depth(pool);
    int sent = 0;

    br__mutex_lock(&pool->mu_);
    for (unsigned k = 0; k < n && pool->pend_head_ != NULL; k++) {
        br__ppw_t *w = pool->workers_[(pool->rr_ + k) % n];
        if (w != NULL && w->ninflight == 0 && available(pool, w, d))
            sent |= send_next(pool, w, 1);
    }
    int progress = 1;
    while (progress && pool->pend_head_ != NULL) {
        progress = 0;
        for (unsigned k = 0; k < n && pool->pend_head_ != NULL; k++) {
            br__ppw_t *w = pool->workers_[(pool->rr_ + k) % n];
            if (available(pool, w, d))
                progress |= send_next(pool, w, 1);
        }
        sent |= progress;
    }
    /* Workers that reached max_tasks_per_worker, that were retired, or
     * that have nothing left to do in a closing pool: EXIT once idle. */
    int done = pool->state_ != PP_RUNNING && pool->pend_head_ == NULL;
    unsigned max = pool->opts_.max_tasks_per_worker;
    for (unsigned i = 0; i < n; i++) {
        br__ppw_t *w = pool->workers_[i];
        if (w == NULL || w->state != W_RUNNING || w->ninflight != 0 || w->sending_active)
            continue;
        if (done || w->retiring || (max != 0 && w->assigned >= max)) {
            w->state = W_EXITING;
            (void)br__ppw_send(w, BR_PP_MSG_EXIT, 0, NULL, 0);
        }
    }
    br__mutex_unlock(&pool->mu_);
    if (sent) {
        for (unsigned i = 0; i < n; i++)
            if (pool->workers_[i] != NULL)
                br__ppw_time_head(pool->workers_[i]);
        br__pp_mem_watch(pool);
        br__pp_announce(pool);
    }
}

void br__pp_announce(br_procpool_t *pool)
{
    unsigned n = pool->opts_.workers;
    if (pool->opts_.on_start == NULL)
        return;
    /* One pass under the mutex per 64 workers; the calls after it. */
    for (unsigned base = 0; base < n; base += 64) {
        br_pptask_t *started[64];
        unsigned k = 0;
        br__mutex_lock(&pool->mu_);
        for (unsigned i = base; i < n && i < base + 64; i++) {
            br__ppw_t *w = pool->workers_[i];
            if (w != NULL && w->head != NULL && w->head->state_ == T_RUNNING && w->announced != w->head->seq_) {
                w->announced = w->head->seq_;
                w->head->announcing_ = 1; /* no taker completes it under on_start */
                started[k++] = w->head;
            }
        }
        br__mutex_unlock(&pool->mu_);
        for (unsigned j = 0; j < k; j++) {
            pool->opts_.on_start(started[j], 1);
            br__mutex_lock(&pool->mu_);
            started[j]->announcing_ = 0;
            br__mutex_unlock(&pool->mu_);
        }
    }
}

int br__pp_fill(br_procpool_t *pool)
{
    for (unsigned i = 0; i < pool->opts_.workers; i++) {
        br__mutex_lock(&pool->mu_);
        int need = pool->workers_[i] == NULL && !pool->broken_ && !br__pp_killing_locked(pool) &&
                   (pool->state_ == PP_RUNNING || (pool->state_ == PP_CLOSING && pool->pend_head_ != NULL));
        br__mutex_unlock(&pool->mu_);
        if (!need)
            continue;
        int err = br__ppw_spawn(pool, i);
        if (err < 0) {
            char why[200];
            const char *path = pool->argv_ != NULL ? pool->argv_[0] : "(spawn hook)";
            snprintf(why, sizeof why, "could not start a worker process %s: %s", path, br_strerror(err));
            br__pp_mark_broken(pool, why, NULL, 0);
            return err;
        }
    }
    return 0;
}

int br_procpool_results_soon(br_procpool_t *pool, int64_t spin)
{
    unsigned n = pool->opts_.workers, busy = 0;

    /* Worth it only when a result is expected within the window. (Also
     * gating it on a CPU being free for the spinning thread was measured
     * and dropped: with every core running a worker, the spin still won
     * on a stream of tiny tasks, docs/BENCHMARKS.md.) */
    if (spin <= 0 || br__pp_state(pool) >= PP_FINAL)
        return 0;
    /* Which workers are busy, under the mutex (submits change it); the
     * worker table itself only changes on this thread. */
    br__ppw_t *busy_w[64];
    br__mutex_lock(&pool->mu_);
    int64_t avg = pool->avg_task_ns_;
    /* Threads that take their own results poll the rings themselves: the
     * loop thread's poll would race them for each result and, once it wins
     * one, keep winning (it polls again after every result it handles). */
    if (pool->taker_seen_ != 0 && br_now_ns() - pool->taker_seen_ < TAKER_QUIET_NS)
        avg = 0;
    for (unsigned i = 0; i < n && busy < 64; i++) {
        br__ppw_t *w = pool->workers_[i];
        if (w != NULL && w->ninflight > 0 && !w->ring_bad)
            busy_w[busy++] = w;
    }
    br__mutex_unlock(&pool->mu_);
    if (avg == 0 || avg > spin || busy == 0)
        return 0;
    int64_t until = br_now_ns() + spin;
    do {
        for (unsigned i = 0; i < busy; i++) {
            br_ring_frag_t f;
            /* A peek: only this thread reads result rings, and br_ring_recv
             * consumes nothing until released. */
            if (br_ring_recv(&busy_w[i]->rx, &f) == 0)
                return 1;
        }
    } while (br_now_ns() < until);
    return 0;
}

void br__pp_spin(br_procpool_t *pool)
{
    if (!br_procpool_results_soon(pool, pool->opts_.spin_ns))
        return;
    /* Draining an idle worker's ring finds nothing and re-arms it. */
    for (unsigned i = 0; i < pool->opts_.workers; i++)
        if (pool->workers_[i] != NULL)
            br__ppw_drain(pool->workers_[i]);
    br__pp_dispatch(pool);
}

/* ------------------------------------------------------------ timers */

static void on_mem_timer(br_timer_t *timer)
{
    br_procpool_t *pool = timer->handle.data;
    int busy = 0;
    for (unsigned i = 0; i < pool->opts_.workers; i++) {
        br__ppw_t *w = pool->workers_[i];
        if (w == NULL || w->state == W_DEAD)
            continue;
        br__mutex_lock(&pool->mu_); /* a submit may be setting head */
        uint64_t seq = w->head != NULL ? w->head->seq_ : 0;
        br__mutex_unlock(&pool->mu_);
        if (seq == 0)
            continue;
        busy = 1;
        int64_t rss = br__ppw_rss(w);
        if (rss > 0 && (uint64_t)rss > pool->opts_.max_worker_memory && w->mem_killed == 0) {
            w->mem_killed = seq;
            br__ppw_kill(w);
        }
    }
    if (!busy)
        br_timer_stop(timer);
}

void br__pp_mem_watch(br_procpool_t *pool)
{
    if (pool->opts_.max_worker_memory == 0 || br_is_active(&pool->mem_timer_.handle) ||
        br__pp_state(pool) >= PP_FINAL)
        return;
    int64_t period = pool->opts_.mem_poll_ns;
    int err = br_timer_start(&pool->mem_timer_, on_mem_timer, period, period);
    if (err != 0)
        br__pp_fail(pool, "starting the memory cap's timer", err);
}

static void on_poll_timer(br_timer_t *timer)
{
    br_procpool_t *pool = timer->handle.data;
    int left = 0;
    for (unsigned i = 0; i < pool->opts_.workers; i++) {
        br__ppw_t *w = pool->workers_[i];
        if (w != NULL && w->proc.pidfd < 0)
            left |= !br__ppw_reap(w);
    }
    if (!left)
        br_timer_stop(timer);
    br__pp_fill(pool);
    br__pp_dispatch(pool);
    br__pp_maybe_final(pool);
}

void br__pp_reap_watch(br_procpool_t *pool)
{
    if (br_is_active(&pool->poll_timer_.handle))
        return;
    int err = br_timer_start(&pool->poll_timer_, on_poll_timer, REAP_POLL_NS, REAP_POLL_NS);
    if (err != 0)
        br__pp_fail(pool, "starting the reaping timer", err);
}

/* ------------------------------------------------------------ the loop side */

static void on_async(br_async_t *async)
{
    br_procpool_t *pool = async->handle.data;

    br__mutex_lock(&pool->mu_);
    br_pptask_t *cancelled = pool->cancelled_;
    pool->cancelled_ = NULL;
    int64_t kill_at = pool->kill_at_;
    int kill_now = pool->state_ == PP_KILLING;
    int started = pool->started_;
    pool->started_ = 1;
    br__mutex_unlock(&pool->mu_);

    br__pp_complete_list(pool, cancelled, BR_PPTASK_CANCELLED);
    if (!started) {
        int err = br__pp_fill(pool);
        if (err < 0)
            br_procpool_close(pool, BR_PPCLOSE_KILL, 0);
        if (pool->opts_.on_started != NULL)
            pool->opts_.on_started(pool, err);
        if (err < 0)
            br__pp_kill_when(pool, 1, 0);
    }
    br__pp_kill_when(pool, kill_now, kill_at);
    br__pp_fill(pool);
    /* Timers for tasks that submits sent straight to idle workers. */
    for (unsigned i = 0; i < pool->opts_.workers; i++)
        if (pool->workers_[i] != NULL)
            br__ppw_time_head(pool->workers_[i]);
    br__pp_mem_watch(pool);
    br__pp_dispatch(pool);
    br__pp_announce(pool); /* a task a taker's result left at its worker's head */
    br__pp_maybe_final(pool);
    br__pp_spin(pool);
}

/* ------------------------------------------------------------ API */

static void free_strv(char **v)
{
    for (char **p = v; p != NULL && *p != NULL; p++)
        free(*p);
    free(v);
}

void br__pp_free_internals(br_procpool_t *pool)
{
    free_strv(pool->argv_);
    free_strv(pool->envp_);
    free(pool->init_payload_);
    free(pool->workers_);
    free(pool->pids_);
    pool->argv_ = pool->envp_ = NULL;
    pool->init_payload_ = NULL;
    pool->workers_ = NULL;
    pool->pids_ = NULL;
}


static char **strv_dup(char *const *v)
{
    size_t n = 0;
    while (v[n] != NULL)
        n++;
    char **out = calloc(n + 1, sizeof *out);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if ((out[i] = strdup(v[i])) == NULL) {
            free_strv(out);
            return NULL;
        }
    }
    return out;
}

int br_procpool_init(br_loop_t *loop, br_procpool_t *pool, const br_procpool_options_t *opts)
{
    if (opts == NULL || opts->workers == 0 || opts->on_done == NULL ||
        (opts->spawn == NULL && (opts->argv == NULL || opts->argv[0] == NULL)) ||
        (opts->init_payload == NULL && opts->init_len != 0) || opts->task_timeout_ns < 0)
        return -EINVAL;
    size_t ring = opts->ring_bytes != 0 ? opts->ring_bytes : DEFAULT_RING;
    if (br_pp_mem_size(ring) == 0)
        return -EINVAL;

    void *data = pool->data;
    memset(pool, 0, sizeof *pool);
    pool->data = data;
    pool->loop = loop;
    pool->opts_ = *opts;
    pool->opts_.ring_bytes = ring;
    if (opts->spin_ns == 0)
        pool->opts_.spin_ns = SPIN_NS;
    if (opts->mem_poll_ns <= 0)
        pool->opts_.mem_poll_ns = MEM_POLL_NS;
    cpu_set_t cpus;
    pool->ncpus_ = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? (unsigned)CPU_COUNT(&cpus) : 1;
    br__pp_set_state(pool, PP_RUNNING);

    int err = -ENOMEM;
    pool->workers_ = calloc(opts->workers, sizeof *pool->workers_);
    pool->pids_ = calloc(opts->workers, sizeof *pool->pids_);
    if (pool->workers_ == NULL || pool->pids_ == NULL)
        goto fail;
    if (opts->argv != NULL && (pool->argv_ = strv_dup(opts->argv)) == NULL)
        goto fail;
    if (opts->envp != NULL && (pool->envp_ = strv_dup(opts->envp)) == NULL)
        goto fail;
    if (opts->init_payload != NULL) {
        if ((pool->init_payload_ = malloc(opts->init_len != 0 ? opts->init_len : 1)) == NULL)
            goto fail;
        memcpy(pool->init_payload_, opts->init_payload, opts->init_len);
    }
    pool->opts_.argv = pool->argv_;
    pool->opts_.envp = pool->envp_;
    pool->opts_.init_payload = pool->init_payload_;
    if ((err = -pthread_mutex_init(&pool->mu_, NULL)) != 0)
        goto fail;
    if ((err = br_async_init(loop, &pool->async_, on_async)) != 0) {
        (void)pthread_mutex_destroy(&pool->mu_);
        goto fail;
    }
    /* Cannot fail: they only link the handles into the loop. */
    (void)br_timer_init(loop, &pool->kill_timer_);
    (void)br_timer_init(loop, &pool->mem_timer_);
    (void)br_timer_init(loop, &pool->poll_timer_);
    pool->async_.handle.data = pool->kill_timer_.handle.data = pool;
    pool->mem_timer_.handle.data = pool->poll_timer_.handle.data = pool;
    /* The first iteration spawns the workers, on the loop thread. The
     * send writes the loop's eventfd, which fails only if the loop is
     * broken or closed: a rule of br_loop_t broken by the caller. The
     * handles cannot be taken back synchronously to report it. */
    if ((err = br_async_send(&pool->async_)) != 0)
        br__fatal("br_procpool_init: waking the loop", -err);
    return 0;
fail:
    br__pp_free_internals(pool);
    return err;
}

/* Mutex held, the task alone in the queue: sends it from this thread,
 * without a round through the loop thread (the latency of a lone submit;
 * and workers stay fed while the loop thread waits for a caller's lock,
 * the GIL). 2 if sent to
 * an idle worker (RUNNING, counted as announced: the caller learns it from
 * the return value), 1 if queued in a ring behind another task, 0 if not
 * sent. */
static int submit_direct(br_procpool_t *pool)
{
    unsigned n = pool->opts_.workers, d = depth(pool);
    br__ppw_t *best = NULL;
    if (pool->state_ != PP_RUNNING || !pool->started_)
        return 0;
    /* The least loaded worker with room, ties to the one that answered
     * last: an idle one first, and a stream of submits spread round. */
    for (unsigned k = 0; k < n; k++) {
        br__ppw_t *w = pool->workers_[(pool->rr_ + k) % n];
        if (available(pool, w, d) && (best == NULL || w->ninflight < best->ninflight))
            best = w;
    }
    if (best == NULL)
        return 0;
    int idle = best->ninflight == 0;
    if (!send_next(pool, best, 0))
        return 0;
    if (!idle)
        return 1;
    best->announced = best->head->seq_;
    return 2;
}

int br_procpool_submit(br_procpool_t *pool, br_pptask_t *t)
{
    if (t == NULL || (t->payload == NULL && t->len != 0))
        return -EINVAL;
    int err = 0, started = 0;
    br__mutex_lock(&pool->mu_);
    int s = t->state_;
    if (s == T_QUEUED || s == T_SENT || s == T_RUNNING || s == T_CANCELLED)
        err = -EINVAL;
    else if (pool->broken_)
        err = -EPIPE;
    else if (pool->state_ != PP_RUNNING)
        err = -ESHUTDOWN;
    if (err == 0) {
        t->pid = 0;
        t->exit_code = 0;
        t->term_signal = 0;
        t->worker_ = NULL;
        t->seq_ = 0;
        t->retries_left_ = pool->opts_.retries;
        br__pp_set_tstate(t, T_QUEUED);
        pend_push_back(pool, t);
        int alone = pool->pend_head_ == t;
        int sent = alone ? submit_direct(pool) : 0;
        started = sent == 2;
        if (sent == 1)
            alone = 0; /* behind a task of that worker: its answer dispatches */
        /* The loop thread starts what a direct send leaves to it (the
         * timeout, the memory poll), and dispatches what is queued. Only a
         * task queued alone needs a wakeup: behind others, something is
         * already due to dispatch again (the wakeup they had, a busy
         * worker's next answer, a half-sent message's space, a worker's
         * exit and respawn), which is what left them queued. */
        if ((!started && alone) || (started && (pool->opts_.task_timeout_ns > 0 || pool->opts_.max_worker_memory != 0))) {
            err = br_async_send(&pool->async_);
            if (err != 0 && !started) {
                pend_unlink(pool, t);
                br__pp_set_tstate(t, T_DONE);
            }
            if (started)
                err = 0; /* it runs; its timers wait for the loop's next wakeup */
        }
    }
    br__mutex_unlock(&pool->mu_);
    return err != 0 ? err : started;
}

int br_procpool_cancel(br_procpool_t *pool, br_pptask_t *t)
{
    br__mutex_lock(&pool->mu_);
    int was = t->state_;
    int err = cancel_locked(pool, t);
    /* The loop completes tasks cancelled in the queue; in a ring, the
     * worker's SKIPPED does. A failed wakeup (a broken eventfd) delays
     * on_done to the loop's next iteration; the cancel itself stands. */
    if (err == 0 && was == T_QUEUED && pool->state_ < PP_FINAL)
        (void)br_async_send(&pool->async_);
    br__mutex_unlock(&pool->mu_);
    return err;
}

int br_pptask_state(const br_pptask_t *t)
{
    switch (__atomic_load_n(&t->state_, __ATOMIC_RELAXED)) {
    case T_QUEUED:
    case T_SENT:
        return BR_PPSTATE_QUEUED;
    case T_RUNNING:
        return BR_PPSTATE_RUNNING;
    case T_CANCELLED:
        return BR_PPSTATE_CANCELLED;
    case T_DONE:
        return BR_PPSTATE_DONE;
    default:
        return BR_PPSTATE_NEW;
    }
}

int br_procpool_pids(br_procpool_t *pool, int *pids, int n)
{
    int k = 0;
    br__mutex_lock(&pool->mu_);
    for (unsigned i = 0; pool->pids_ != NULL && i < pool->opts_.workers && k < n; i++)
        if (pool->pids_[i] > 0)
            pids[k++] = pool->pids_[i];
    br__mutex_unlock(&pool->mu_);
    return k;
}
