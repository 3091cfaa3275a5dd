/*
 * procpool_close.c — how a br_procpool_t ends: broken, closed in one of
 * its modes, its workers killed, its handles closed, and the last
 * callback (on_closed, or on_detached). The life cycle is drawn in
 * braid.h; procpool_internal.h explains the threads and the mutex.
 */
#include "procpool_internal.h"

#include <stdio.h>
#include <string.h>

static void handle_closed(br_handle_t *h);

/* ------------------------------------------------------------ broken */

void br__pp_mark_broken(br_procpool_t *pool, const char *reason, const void *detail, size_t len)
{
    br__mutex_lock(&pool->mu_);
    if (pool->broken_) {
        br__mutex_unlock(&pool->mu_);
        return;
    }
    strncpy(pool->reason_, reason, sizeof pool->reason_ - 1);
    pool->reason_[sizeof pool->reason_ - 1] = '\0';
    /* Release: br_procpool_broken reads reason_ once it sees the flag. */
    __atomic_store_n(&pool->broken_, 1, __ATOMIC_RELEASE);
    if (pool->state_ == PP_RUNNING)
        br__pp_set_state(pool, PP_CLOSING);
    br_pptask_t *list = pool->pend_head_; /* next_-linked, oldest first */
    pool->pend_head_ = pool->pend_tail_ = NULL;
    pool->npending_ = 0;
    br__mutex_unlock(&pool->mu_);
    if (pool->opts_.on_broken != NULL)
        pool->opts_.on_broken(pool, pool->reason_, detail, len);
    br__pp_complete_list(pool, list, BR_PPTASK_BROKEN);
}

void br__pp_fail(br_procpool_t *pool, const char *what, int err)
{
    char why[200];
    snprintf(why, sizeof why, "the process pool's loop failed (%s: %s)", what, br_strerror(err));
    br__pp_mark_broken(pool, why, NULL, 0);
    (void)br_procpool_close(pool, BR_PPCLOSE_KILL, 0);
}

/* ------------------------------------------------------------ killing */

static void kill_all(br_procpool_t *pool)
{
    br__mutex_lock(&pool->mu_);
    if (pool->state_ < PP_KILLING)
        br__pp_set_state(pool, PP_KILLING);
    br__mutex_unlock(&pool->mu_);
    for (unsigned i = 0; i < pool->opts_.workers; i++)
        if (pool->workers_[i] != NULL)
            br__ppw_kill(pool->workers_[i]);
}

static void on_kill_timer(br_timer_t *timer)
{
    br_procpool_t *pool = timer->handle.data;
    kill_all(pool);
}

/* Kills what is left now (kill_now), or at kill_at on the loop's clock
 * (0: no kill planned). */
void br__pp_kill_when(br_procpool_t *pool, int kill_now, int64_t kill_at)
{
    if (kill_now) {
        kill_all(pool);
    } else if (kill_at != 0) {
        int64_t left = kill_at - br_loop_now(pool->loop);
        if (left <= 0)
            kill_all(pool);
        else if ((!br_is_active(&pool->kill_timer_.handle) || br_timer_get_due_in(&pool->kill_timer_) > left) &&
                 br_timer_start(&pool->kill_timer_, on_kill_timer, left, 0) != 0)
            kill_all(pool); /* no timer for the grace: no grace */
    }
}

/* ------------------------------------------------------------ the end */

void br__pp_maybe_final(br_procpool_t *pool)
{
    br__mutex_lock(&pool->mu_);
    int final = (pool->state_ == PP_CLOSING || pool->state_ == PP_KILLING) && pool->pend_head_ == NULL &&
                pool->cancelled_ == NULL && pool->nprocs_ == 0 && pool->takes_out_ == 0;
    if (final)
        br__pp_set_state(pool, PP_FINAL); /* from here on nobody sends to async_ */
    br__mutex_unlock(&pool->mu_);
    if (!final)
        return;
    pool->handles_open_ = 4;
    br_close(&pool->async_.handle, handle_closed);
    br_close(&pool->kill_timer_.handle, handle_closed);
    br_close(&pool->mem_timer_.handle, handle_closed);
    br_close(&pool->poll_timer_.handle, handle_closed);
}

static void handle_closed(br_handle_t *h)
{
    br_procpool_t *pool = h->data;
    if (--pool->handles_open_ != 0)
        return;

    /* The last steps race with br_procpool_detach on another thread:
     * CLOSED_CB tells it that on_closed is running, so it leaves
     * on_detached for this thread to call afterwards. The mutex of a pool
     * that is not detached is never destroyed (a detach may still come;
     * with default attributes it holds no resource). */
    br__mutex_lock(&pool->mu_);
    br__pp_free_internals(pool); /* under the mutex: br_procpool_pids reads pids_ */
    br_procpool_cb cb = pool->detached_ ? pool->on_detached_ : pool->opts_.on_closed;
    int detached = pool->detached_;
    br__pp_set_state(pool, detached ? PP_CLOSED : PP_CLOSED_CB);
    br__mutex_unlock(&pool->mu_);
    if (detached) {
        /* Nobody else may touch the pool now. */
        (void)pthread_mutex_destroy(&pool->mu_);
        if (cb != NULL)
            cb(pool);
        return;
    }
    if (cb != NULL)
        cb(pool);
    br__mutex_lock(&pool->mu_);
    br__pp_set_state(pool, PP_CLOSED);
    cb = pool->detached_ ? pool->on_detached_ : NULL;
    br__mutex_unlock(&pool->mu_);
    if (cb != NULL)
        cb(pool);
}

/* ------------------------------------------------------------ API */

/* Mutex held. 0 or -errno from waking the loop. */
static int close_locked(br_procpool_t *pool, int mode, int64_t grace_ns)
{
    if (pool->state_ >= PP_FINAL)
        return 0;
    if (mode >= BR_PPCLOSE_CANCEL)
        br__pp_cancel_all_locked(pool);
    if (mode > pool->close_mode_)
        pool->close_mode_ = mode;
    if (pool->state_ == PP_RUNNING)
        br__pp_set_state(pool, PP_CLOSING);
    if (mode == BR_PPCLOSE_KILL) {
        br__pp_set_state(pool, PP_KILLING);
    } else if (mode == BR_PPCLOSE_KILL_AFTER) {
        int64_t now = br_now_ns();
        int64_t at = grace_ns <= INT64_MAX - now ? now + grace_ns : INT64_MAX;
        /* The loop's clock is CLOCK_MONOTONIC too (br_loop_now). */
        if (pool->kill_at_ == 0 || at < pool->kill_at_)
            pool->kill_at_ = at;
    }
    return br_async_send(&pool->async_);
}

int br_procpool_close(br_procpool_t *pool, enum br_ppclose_mode mode, int64_t grace_ns)
{
    if ((int)mode < BR_PPCLOSE_FINISH || mode > BR_PPCLOSE_KILL || (mode == BR_PPCLOSE_KILL_AFTER && grace_ns < 0))
        return -EINVAL;
    br__mutex_lock(&pool->mu_);
    int err = close_locked(pool, mode, grace_ns);
    br__mutex_unlock(&pool->mu_);
    return err;
}

int br_procpool_detach(br_procpool_t *pool, br_procpool_cb on_detached)
{
    br__mutex_lock(&pool->mu_);
    if (pool->detached_) {
        br__mutex_unlock(&pool->mu_);
        return -EINVAL;
    }
    pool->detached_ = 1;
    pool->on_detached_ = on_detached;
    int closed = pool->state_ == PP_CLOSED;
    /* A loop that cannot be woken (a broken eventfd) still closes the
     * pool at its next iteration: nothing to report to the caller here. */
    (void)close_locked(pool, BR_PPCLOSE_FINISH, 0);
    br__mutex_unlock(&pool->mu_);
    if (closed) {
        (void)pthread_mutex_destroy(&pool->mu_);
        if (on_detached != NULL)
            on_detached(pool);
    }
    return 0;
}

const char *br_procpool_broken(br_procpool_t *pool)
{
    return __atomic_load_n(&pool->broken_, __ATOMIC_ACQUIRE) ? pool->reason_ : NULL;
}
