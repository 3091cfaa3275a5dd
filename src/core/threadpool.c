/*
 * threadpool.c — br_threadpool_t: a FIFO of br_work_t run by lazily
 * started worker threads. Life cycles are drawn in braid.h.
 *
 * One mutex guards the queue and every counter. Workers sleep on work_cv_
 * and count themselves in idle_ while they do, so submit signals only when
 * someone is asleep and starts a thread only when the queue holds more items
 * than there are idle workers on their way to take them. join() sleeps on
 * exit_cv_ until live_ reaches 0.
 *
 * Threads are created with the mutex held. That costs a little latency, but
 * only max_threads times in a pool's life, and it keeps the bookkeeping
 * simple: started_, live_ and threads_[] change together, atomically for
 * everyone who takes the lock (join, detach, a worker looking up its index).
 *
 * Callbacks (work, done, hooks, on_detached) always run without the mutex,
 * so they may call back into the pool.
 */
#include "internal.h"

#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum pool_state { POOL_OPEN = 1, POOL_CLOSED, POOL_DETACHED, POOL_JOINED };

/* Item states. The header does not ask callers to zero the private fields
 * of a br_work_t, so use values that stray bytes are unlikely to spell: an
 * item must never look QUEUED by accident (submit would refuse it). */
enum work_state {
    WORK_NEW = 0,
    WORK_QUEUED = 0x51554555,  /* "QUEU" */
    WORK_RUNNING = 0x52554e4e, /* "RUNN" */
    WORK_DONE = 0x444f4e45     /* "DONE" */
};

/* state_ is read by cancel/submit under the mutex but moved RUNNING -> DONE
 * without it (run_item), so every access is atomic. */
static int work_state(br_work_t *w) { return __atomic_load_n(&w->state_, __ATOMIC_RELAXED); }
static void set_work_state(br_work_t *w, int s) { __atomic_store_n(&w->state_, s, __ATOMIC_RELAXED); }

/* ------------------------------------------------------------ the queue */

static void push_tail(br_threadpool_t *pool, br_work_t *w)
{
    w->next_ = NULL;
    w->prev_ = pool->tail_;
    if (pool->tail_ != NULL)
        pool->tail_->next_ = w;
    else
        pool->head_ = w;
    pool->tail_ = w;
    /* atomic: a spinning worker reads it without the mutex */
    __atomic_store_n(&pool->queued_, pool->queued_ + 1, __ATOMIC_RELEASE);
    set_work_state(w, WORK_QUEUED);
}

static void unlink_item(br_threadpool_t *pool, br_work_t *w)
{
    if (w->prev_ != NULL)
        w->prev_->next_ = w->next_;
    else
        pool->head_ = w->next_;
    if (w->next_ != NULL)
        w->next_->prev_ = w->prev_;
    else
        pool->tail_ = w->prev_;
    w->next_ = w->prev_ = NULL;
    __atomic_store_n(&pool->queued_, pool->queued_ - 1, __ATOMIC_RELAXED);
}

/* Takes the oldest item, marked RUNNING; NULL if none. Mutex held. */
static br_work_t *take_head(br_threadpool_t *pool)
{
    br_work_t *w = pool->head_;
    if (w != NULL) {
        unlink_item(pool, w);
        set_work_state(w, WORK_RUNNING);
    }
    return w;
}

/* Runs a taken item on this thread: work(), then done(w, 0). */
static void run_item(br_work_t *w)
{
    /* Read done before work(): with done == NULL the owner may free the
     * item as soon as work() returns, so we must not touch it after. */
    br_done_cb done = w->done;

    w->work(w);
    if (done == NULL)
        return;
    /* work() may have submitted the item again (QUEUED): leave that be. */
    int running = WORK_RUNNING;
    __atomic_compare_exchange_n(&w->state_, &running, WORK_DONE, 0,
                                __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    done(w, 0);
}

/* ------------------------------------------------------------ workers */

/* Names the calling worker "<prefix>_<n>" (the kernel keeps 15 chars). The
 * prefix is cut, never the number, so that names stay distinct. */
static void name_self(br_threadpool_t *pool)
{
    pthread_t self = pthread_self();
    unsigned n = 0;
    char suffix[16], name[16];

    /* The creator stored our id in threads_[] before it released the mutex. */
    br__mutex_lock(&pool->mu_);
    while (n < pool->started_ && !pthread_equal(pool->threads_[n], self))
        n++;
    br__mutex_unlock(&pool->mu_);

    int slen = snprintf(suffix, sizeof suffix, "_%u", n); /* at most 11 */
    size_t keep = strnlen(pool->name_prefix_, sizeof name - 1 - (size_t)slen);
    memcpy(name, pool->name_prefix_, keep);
    memcpy(name + keep, suffix, (size_t)slen + 1);
    /* A name is only cosmetic (top, gdb): never fail the pool for it. */
    int err = pthread_setname_np(self, name);
    (void)err;
}

/* Polls the queue without the mutex for up to spin_ns, while the pool is
 * open. Called and returns with the mutex held; 1 if work showed up. */
static int spin_for_work(br_threadpool_t *pool)
{
    pool->spinning_++;
    br__mutex_unlock(&pool->mu_);
    int64_t deadline = br_now_ns() + pool->opts_.spin_ns;
    int found = 0;
    for (unsigned i = 1;; i++) {
        if (__atomic_load_n(&pool->queued_, __ATOMIC_ACQUIRE) > 0) {
            found = 1;
            break;
        }
        if (__atomic_load_n(&pool->state_, __ATOMIC_RELAXED) != POOL_OPEN)
            break;
        if (i % 64 == 0 && br_now_ns() >= deadline)
            break;
        br__cpu_relax();
    }
    br__mutex_lock(&pool->mu_);
    pool->spinning_--;
    return found;
}

static void *worker_main(void *arg)
{
    br_threadpool_t *pool = arg;
    int may_spin = 1; /* once per stretch of idleness, not in a loop */

    name_self(pool);
    if (pool->opts_.on_thread_start != NULL)
        pool->opts_.on_thread_start(pool, pool->opts_.hook_arg);

    br__mutex_lock(&pool->mu_);
    for (;;) {
        if (pool->retire_ > 0) { /* one worker too many since a written-off one came back */
            pool->retire_--;
            break;
        }
        br_work_t *w = take_head(pool);
        if (w != NULL) {
            br__mutex_unlock(&pool->mu_);
            run_item(w);
            br__mutex_lock(&pool->mu_);
            may_spin = 1;
            continue;
        }
        /* Queue empty: leave once the pool is closed, else sleep. */
        if (pool->state_ != POOL_OPEN)
            break;
        /* One spinner is enough to catch the next item (a worker polling
         * through br_threadpool_take_expected counts as one). */
        if (may_spin && pool->opts_.spin_ns > 0 && pool->spinning_ == 0) {
            may_spin = 0;
            spin_for_work(pool);
            continue;
        }
        may_spin = 0;
        pool->idle_++;
        br__cond_wait(&pool->work_cv_, &pool->mu_);
        pool->idle_--;
    }
    br__mutex_unlock(&pool->mu_);

    /* Still counted in live_, so the pool cannot be joined or handed to
     * on_detached under the hook's feet. */
    if (pool->opts_.on_thread_exit != NULL)
        pool->opts_.on_thread_exit(pool, pool->opts_.hook_arg);

    br__mutex_lock(&pool->mu_);
    int last = --pool->live_ == 0;
    int detached = pool->state_ == POOL_DETACHED;
    br_pool_cb on_detached = pool->on_detached_;
    if (last) {
        br__cond_broadcast(&pool->exit_cv_);
        /* Under the mutex: a waiter that wakes goes on to join, which
         * takes the mutex, so the pool outlives this call. */
        br_event_set(&pool->exited_);
    }
    br__mutex_unlock(&pool->mu_);

    /* From here the pool may be gone (joined and destroyed, or freed by
     * on_detached): touch nothing of it. */
    if (last && detached && on_detached != NULL)
        on_detached(pool);
    return NULL;
}

/* Workers block asynchronous signals, so that a process-directed signal
 * (SIGINT, SIGTERM, ...) is delivered to a thread that has not blocked it
 * (for Python, the main thread, whose blocking wait then returns EINTR).
 * Synchronous fault signals stay unblocked: the kernel would kill the
 * process silently if one arrived blocked, and crash reporters (ASan,
 * faulthandler) rely on them. */
int br_async_signals(sigset_t *set)
{
    static const int faults[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT};

    if (sigfillset(set) != 0)
        return -errno;
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++)
        if (sigdelset(set, faults[i]) != 0)
            return -errno;
    return 0;
}

/* Starts one worker. Mutex held. 0 or -errno. */
static int spawn_locked(br_threadpool_t *pool)
{
    pthread_attr_t attr;
    sigset_t block, old;
    int err = pthread_attr_init(&attr);
    if (err != 0)
        return -err;
    if (pool->opts_.stack_size != 0)
        err = pthread_attr_setstacksize(&attr, pool->opts_.stack_size);
    if (err == 0)
        err = -br_async_signals(&block);
    /* The new thread inherits the creator's mask: block, create, restore. */
    if (err == 0)
        err = pthread_sigmask(SIG_SETMASK, &block, &old);
    if (err == 0) {
        err = pthread_create(&pool->threads_[pool->started_], &attr, worker_main, pool);
        int err2 = pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (err2 != 0) /* the caller's thread would be left deaf to signals */
            br__fatal("pthread_sigmask", err2);
        if (err == 0) {
            pool->started_++;
            pool->live_++;
        }
    }
    int err3 = pthread_attr_destroy(&attr);
    if (err3 != 0)
        br__fatal("pthread_attr_destroy", err3);
    return -err;
}

/* ------------------------------------------------------------ the API */

/* EBUSY from these means a caller broke the rule "destroy only after join,
 * or inside on_detached": someone still uses the pool. */
static void destroy_cond(pthread_cond_t *cv)
{
    int err = pthread_cond_destroy(cv);
    if (err != 0)
        br__fatal("pthread_cond_destroy", err);
}

static void destroy_mutex(pthread_mutex_t *mu)
{
    int err = pthread_mutex_destroy(mu);
    if (err != 0)
        br__fatal("pthread_mutex_destroy", err);
}


int br_threadpool_init(br_threadpool_t *pool, const br_threadpool_options_t *opts)
{
    if (pool == NULL || opts == NULL || opts->max_threads == 0)
        return -EINVAL;
    if (opts->stack_size != 0) {
        /* Let pthread judge the size now rather than at the first submit. */
        pthread_attr_t attr;
        int err = pthread_attr_init(&attr);
        if (err != 0)
            return -err;
        err = pthread_attr_setstacksize(&attr, opts->stack_size);
        int err2 = pthread_attr_destroy(&attr);
        if (err != 0 || err2 != 0)
            return -(err != 0 ? err : err2);
    }

    memset(pool, 0, sizeof *pool);
    pool->threads_ = calloc(opts->max_threads, sizeof *pool->threads_);
    if (pool->threads_ == NULL)
        return -ENOMEM;
    int err = pthread_mutex_init(&pool->mu_, NULL);
    if (err != 0)
        goto fail_threads;
    err = pthread_cond_init(&pool->work_cv_, NULL);
    if (err != 0)
        goto fail_mutex;
    err = pthread_cond_init(&pool->exit_cv_, NULL);
    if (err != 0)
        goto fail_work_cv;

    pool->max_threads_ = opts->max_threads;
    pool->opts_ = *opts;
    /* Keep our own copy: the caller's string may not outlive init. */
    const char *prefix = opts->name_prefix != NULL ? opts->name_prefix : "braid";
    size_t len = strnlen(prefix, sizeof pool->name_prefix_ - 1);
    memcpy(pool->name_prefix_, prefix, len);
    pool->name_prefix_[len] = '\0';
    pool->opts_.name_prefix = pool->name_prefix_;
    pool->state_ = POOL_OPEN;
    br_event_init(&pool->exited_);
    return 0;

fail_work_cv:
    destroy_cond(&pool->work_cv_);
fail_mutex:
    destroy_mutex(&pool->mu_);
fail_threads:
    free(pool->threads_);
    pool->threads_ = NULL;
    return -err;
}

int br_threadpool_submit(br_threadpool_t *pool, br_work_t *work)
{
    int ret = 0;

    if (work == NULL || work->work == NULL)
        return -EINVAL;
    br__mutex_lock(&pool->mu_);
    if (pool->state_ != POOL_OPEN) {
        ret = -ESHUTDOWN;
    } else if (work_state(work) == WORK_QUEUED) {
        ret = -EINVAL;
    } else {
        push_tail(pool, work);
        /* A spinning worker takes one item without being woken. */
        if (pool->idle_ > 0 && pool->queued_ > pool->spinning_)
            br__cond_signal(&pool->work_cv_);
        /* idle_ still counts workers that were signalled but have not yet
         * taken their item, so compare it with the queue length: more items
         * than idle (or spinning) workers means some item has nobody coming
         * for it. */
        if (pool->queued_ > pool->idle_ + pool->spinning_ &&
            pool->started_ < pool->max_threads_) {
            int err = spawn_locked(pool);
            /* With a live worker the item runs later anyway: workers only
             * exit once the pool is closed and the queue empty. */
            if (err != 0 && pool->live_ == 0) {
                unlink_item(pool, work);
                set_work_state(work, WORK_NEW);
                ret = err;
            }
        }
    }
    br__mutex_unlock(&pool->mu_);
    return ret;
}

int br_threadpool_cancel(br_threadpool_t *pool, br_work_t *work)
{
    if (work == NULL)
        return -EINVAL;
    br__mutex_lock(&pool->mu_);
    if (work_state(work) != WORK_QUEUED) {
        br__mutex_unlock(&pool->mu_);
        return -EBUSY;
    }
    unlink_item(pool, work);
    set_work_state(work, WORK_DONE);
    br_done_cb done = work->done;
    br__mutex_unlock(&pool->mu_);

    if (done != NULL)
        done(work, -ECANCELED);
    return 0;
}

int br_threadpool_add_thread(br_threadpool_t *pool)
{
    int err = 0;
    br__mutex_lock(&pool->mu_);
    if (pool->state_ != POOL_OPEN) {
        err = -ESHUTDOWN;
    } else {
        pthread_t *grown = realloc(pool->threads_, (pool->max_threads_ + 1) * sizeof *grown);
        if (grown == NULL) {
            err = -ENOMEM;
        } else {
            pool->threads_ = grown;
            pool->max_threads_++;
            if (pool->queued_ > pool->idle_ + pool->spinning_)
                err = spawn_locked(pool);
        }
    }
    br__mutex_unlock(&pool->mu_);
    return err;
}

void br_threadpool_retire_thread(br_threadpool_t *pool)
{
    br__mutex_lock(&pool->mu_);
    pool->retire_++;
    br__cond_signal(&pool->work_cv_);
    br__mutex_unlock(&pool->mu_);
}

br_work_t *br_threadpool_try_take(br_threadpool_t *pool)
{
    /* An empty queue needs no mutex: an item submitted a moment from now is
     * the submitter's to hand out (it counts idle and polling workers). */
    if (__atomic_load_n(&pool->queued_, __ATOMIC_ACQUIRE) == 0)
        return NULL;
    br__mutex_lock(&pool->mu_);
    br_work_t *w = take_head(pool);
    br__mutex_unlock(&pool->mu_);
    return w;
}

void br_threadpool_expect_work(br_threadpool_t *pool)
{
    br__mutex_lock(&pool->mu_);
    pool->spinning_++;
    br__mutex_unlock(&pool->mu_);
}

br_work_t *br_threadpool_take_expected(br_threadpool_t *pool, int64_t spin_ns)
{
    int64_t deadline = br_now_ns() + spin_ns;
    for (unsigned i = 1; __atomic_load_n(&pool->queued_, __ATOMIC_ACQUIRE) == 0; i++) {
        if (__atomic_load_n(&pool->state_, __ATOMIC_RELAXED) != POOL_OPEN)
            break;
        if (i % 64 == 0) {
            if (br_now_ns() >= deadline)
                break;
            sched_yield(); /* on a busy machine the submitter may need this core */
        }
        br__cpu_relax();
    }
    br__mutex_lock(&pool->mu_);
    pool->spinning_--;
    br_work_t *w = take_head(pool);
    br__mutex_unlock(&pool->mu_);
    return w;
}

void br_threadpool_run_taken(br_work_t *work)
{
    if (work != NULL)
        run_item(work);
}

size_t br_threadpool_queued(br_threadpool_t *pool)
{
    /* A snapshot either way; without the mutex it costs no contention with
     * a submitter or a worker taking an item. */
    return __atomic_load_n(&pool->queued_, __ATOMIC_ACQUIRE);
}

unsigned br_threadpool_threads(br_threadpool_t *pool)
{
    br__mutex_lock(&pool->mu_);
    unsigned n = pool->started_;
    br__mutex_unlock(&pool->mu_);
    return n;
}

unsigned br_threadpool_live(br_threadpool_t *pool)
{
    br__mutex_lock(&pool->mu_);
    unsigned n = pool->live_;
    br__mutex_unlock(&pool->mu_);
    return n;
}

int br_threadpool_close(br_threadpool_t *pool, enum br_close_mode mode)
{
    br_work_t *cancelled = NULL;

    if (mode != BR_CLOSE_DRAIN && mode != BR_CLOSE_CANCEL)
        return -EINVAL;
    br__mutex_lock(&pool->mu_);
    if (pool->state_ == POOL_OPEN)
        __atomic_store_n(&pool->state_, POOL_CLOSED, __ATOMIC_RELAXED);
    if (mode == BR_CLOSE_CANCEL) {
        /* Take the whole queue at once; the items keep their next_ links
         * so that we can walk them after unlocking. */
        cancelled = pool->head_;
        for (br_work_t *w = cancelled; w != NULL; w = w->next_)
            set_work_state(w, WORK_DONE);
        pool->head_ = pool->tail_ = NULL;
        __atomic_store_n(&pool->queued_, 0, __ATOMIC_RELAXED);
    }
    /* Wake idle workers so they see CLOSED (and leave once the queue is
     * empty). Done here, under the mutex, and not after the callbacks:
     * once the callbacks start, a joiner may already have destroyed the
     * pool, so this function must not touch it afterwards. */
    br__cond_broadcast(&pool->work_cv_);
    if (pool->live_ == 0)
        br_event_set(&pool->exited_);
    br__mutex_unlock(&pool->mu_);

    while (cancelled != NULL) {
        br_work_t *w = cancelled;
        cancelled = w->next_; /* read first: done() may free w */
        w->next_ = w->prev_ = NULL;
        if (w->done != NULL)
            w->done(w, -ECANCELED);
    }
    return 0;
}

int br_threadpool_wait_exited(br_threadpool_t *pool, int64_t timeout_ns)
{
    br__mutex_lock(&pool->mu_);
    int open = pool->state_ == POOL_OPEN || pool->state_ == POOL_DETACHED;
    br__mutex_unlock(&pool->mu_);
    if (open)
        return -EINVAL;
    return br_event_wait(&pool->exited_, timeout_ns);
}

int br_threadpool_join(br_threadpool_t *pool)
{
    pthread_t self = pthread_self();

    br__mutex_lock(&pool->mu_);
    /* A worker joining its own pool would wait for itself for ever. */
    for (unsigned i = 0; i < pool->started_; i++) {
        if (pthread_equal(pool->threads_[i], self)) {
            br__mutex_unlock(&pool->mu_);
            return -EDEADLK;
        }
    }
    if (pool->state_ == POOL_OPEN || pool->state_ == POOL_DETACHED) {
        br__mutex_unlock(&pool->mu_);
        return -EINVAL;
    }
    /* Only the first joiner reaps the threads (pthread_join twice is
     * undefined); a later one just waits for the workers to be gone. */
    int reap = pool->state_ == POOL_CLOSED;
    __atomic_store_n(&pool->state_, POOL_JOINED, __ATOMIC_RELAXED);
    while (pool->live_ > 0)
        br__cond_wait(&pool->exit_cv_, &pool->mu_);
    unsigned n = pool->started_;
    br__mutex_unlock(&pool->mu_);

    for (unsigned i = 0; reap && i < n; i++) {
        int err = pthread_join(pool->threads_[i], NULL);
        if (err != 0) /* our own joinable thread: only corruption does this */
            br__fatal("pthread_join", err);
    }
    return 0;
}

int br_threadpool_detach(br_threadpool_t *pool, br_pool_cb on_detached)
{
    br__mutex_lock(&pool->mu_);
    if (pool->state_ == POOL_JOINED || pool->state_ == POOL_DETACHED) {
        br__mutex_unlock(&pool->mu_);
        return -EINVAL;
    }
    /* closed, queued work still drains */
    __atomic_store_n(&pool->state_, POOL_DETACHED, __ATOMIC_RELAXED);
    pool->on_detached_ = on_detached;
    /* Under the mutex, so the last worker cannot run on_detached (which may
     * free threads_) while we are still reading threads_. */
    for (unsigned i = 0; i < pool->started_; i++) {
        int err = pthread_detach(pool->threads_[i]);
        if (err != 0)
            br__fatal("pthread_detach", err);
    }
    br__cond_broadcast(&pool->work_cv_);
    int none_live = pool->live_ == 0;
    br__mutex_unlock(&pool->mu_);

    /* No worker will ever run it: do it here. */
    if (none_live && on_detached != NULL)
        on_detached(pool);
    return 0;
}

void br_threadpool_destroy(br_threadpool_t *pool)
{
    /* Destroying under live workers would be a use-after-free in each of
     * them later; say so now instead. */
    br__mutex_lock(&pool->mu_);
    unsigned live = pool->live_;
    br__mutex_unlock(&pool->mu_);
    if (live != 0)
        br__fatal("br_threadpool_destroy: workers still running (join first)", EBUSY);

    destroy_cond(&pool->work_cv_);
    destroy_cond(&pool->exit_cv_);
    destroy_mutex(&pool->mu_);
    free(pool->threads_);
    pool->threads_ = NULL;
}
