/*
 * procpool_take.c — br_procpool_take: a thread that waits for one task
 * takes its result off the worker's ring itself (braid.h).
 *
 * Why. Without it a result travels worker -> result eventfd -> the loop
 * thread's epoll -> on_done -> the waiting thread's wakeup: two sleeps and
 * two wakeups in a row on the way back, where two processes handing a turn
 * back and forth through eventfds pay one per direction. A waiter that
 * polls the ring while the worker runs a short task meets the result the
 * moment it is written, and the loop thread sleeps through it.
 *
 * How. The waiter claims the worker's result ring (rx_owner, see
 * procpool_internal.h) only when the task is the one its worker holds, and
 * disarms the ring, so the worker does not signal the loop thread for
 * this result. It peeks: a single-fragment RESULT or ERROR with the task's
 * tag is taken (copied out, released, and the task completed under the
 * mutex as handle_message would); anything else (READY, SKIPPED, another
 * tag, a message in fragments, a cancelled task) is left in the ring for
 * the loop thread. Before it lets go of the ring it arms it again and, if
 * more has come, writes the result eventfd as the worker would have; if
 * the pool has more to do because of this result (queued tasks, a retiring
 * worker, a task behind this one, a pool closing) it wakes the loop thread
 * through the pool's async. The ack (the worker may let go of what the
 * reply only names) comes after the caller has used the reply, through
 * br_procpool_take_done, which finds the worker again under the mutex;
 * until then the pool does not finish closing (takes_out_). The ack is
 * cumulative (the worker lets go of everything up to it), so a caller
 * whose reply names what the worker holds (out-of-band buffers) refuses
 * it through the accept filter: the loop thread could ack a later result
 * first. A task whose on_start is being called (announcing_) is not
 * taken: the caller's on_start may still be using it.
 *
 * Only while tasks take less than the poll on average (the waiter would
 * spin for nothing), and not with a task timeout or a memory cap: those
 * act on each result in the loop thread.
 */
#include "procpool_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Mutex held: the worker whose ring may be claimed for t, or NULL. */
static br__ppw_t *takeable_locked(br_procpool_t *pool, br_pptask_t *t, int64_t spin_ns)
{
    br__ppw_t *w = t->worker_;
    if (pool->state_ != PP_RUNNING || pool->opts_.task_timeout_ns > 0 || pool->opts_.max_worker_memory != 0)
        return NULL;
    if (pool->avg_task_ns_ <= 0 || pool->avg_task_ns_ > spin_ns)
        return NULL;
    if ((t->state_ != T_SENT && t->state_ != T_RUNNING) || t->announcing_ || w == NULL || w->head != t ||
        t->next_ != NULL)
        return NULL;
    if (w->state != W_RUNNING || !w->ready || w->ring_bad)
        return NULL;
    return w;
}

/* Lets go of the ring: armed again for the loop thread, woken if more came
 * (or if the pool has work because of this result). */
static void let_go(br_procpool_t *pool, br__ppw_t *w, int poke)
{
    if (br_ring_arm_data(&w->rx) == 1) {
        uint64_t one = 1;
        ssize_t n;
        do {
            n = write(w->efd[2], &one, sizeof one);
        } while (n < 0 && errno == EINTR);
        /* An eventfd write fails only at its counter's limit, which a
         * drained-on-every-wakeup fd cannot reach. */
    }
    if (poke)
        (void)br_async_send(&pool->async_);
    __atomic_store_n(&w->rx_owner, RX_FREE, __ATOMIC_RELEASE);
}

int br_procpool_take(br_procpool_t *pool, br_pptask_t *t, int64_t spin_ns, size_t max_len,
                     br_pptake_filter_fn accept, void *ctx, br_pptake_t *out)
{
    memset(out, 0, sizeof *out);
    if (spin_ns <= 0)
        return 0;
    br__mutex_lock(&pool->mu_);
    br__ppw_t *w = takeable_locked(pool, t, spin_ns);
    if (w != NULL)
        pool->taker_seen_ = br_now_ns(); /* the loop thread's own poll stands aside (results_soon) */
    int expect = RX_FREE;
    if (w != NULL &&
        !__atomic_compare_exchange_n(&w->rx_owner, &expect, RX_TAKER, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        w = NULL; /* the loop thread is reading it: it will deliver */
    br__mutex_unlock(&pool->mu_);
    if (w == NULL)
        return 0;
    /* From here the worker's memory stays mapped until let_go. */
    br_ring_disarm_data(&w->rx);

    br_ring_frag_t f;
    int err;
    int64_t until = br_now_ns() + spin_ns;
    for (unsigned i = 1;; i++) {
        err = br_ring_recv(&w->rx, &f);
        if (err != -EAGAIN)
            break;
        if (i % 64 == 0 && br_now_ns() >= until)
            break;
        br__cpu_relax();
    }
    int ours = err == 0 && (f.flags & (BR_RING_FIRST | BR_RING_LAST)) == (BR_RING_FIRST | BR_RING_LAST) &&
               (f.type == BR_PP_MSG_RESULT || f.type == BR_PP_MSG_ERROR) && f.len <= max_len &&
               (accept == NULL || accept(ctx, f.data, f.len) == 1);
    void *copy = ours ? malloc(f.len ? f.len : 1) : NULL;
    if (copy == NULL) {
        let_go(pool, w, 0); /* nothing, or not for us: the loop thread's */
        return 0;
    }
    memcpy(copy, f.data, f.len); /* stable: unreleased bytes are not overwritten */

    br__mutex_lock(&pool->mu_);
    if (t->worker_ != w || w->head != t || f.tag != t->seq_ || (t->state_ != T_SENT && t->state_ != T_RUNNING) ||
        t->announcing_) {
        br__mutex_unlock(&pool->mu_); /* cancelled, or no longer ours: as the loop thread decides */
        free(copy);
        let_go(pool, w, 0);
        return 0;
    }
    /* What handle_message does with a result, under the same mutex. */
    w->head = t->next_;
    if (w->head == NULL)
        w->tail = NULL;
    w->ninflight--;
    br__pp_set_tstate(t, T_DONE);
    int64_t now = br_now_ns();
    int64_t took = now > w->since ? now - w->since : 0;
    int64_t avg = pool->avg_task_ns_;
    pool->avg_task_ns_ = avg == 0 ? (took > 0 ? took : 1) : avg - avg / 8 + took / 8;
    pool->rr_ = w->index;
    w->since = now;
    if (w->head != NULL && w->head->state_ == T_SENT)
        br__pp_set_tstate(w->head, T_RUNNING);
    unsigned max = pool->opts_.max_tasks_per_worker;
    int poke = w->head != NULL || w->retiring || (max != 0 && w->assigned >= max) || pool->pend_head_ != NULL ||
               pool->state_ != PP_RUNNING;
    out->w_ = w;
    out->pid_ = w->proc.pid;
    out->index_ = w->index;
    pool->takes_out_++; /* the pool does not finish closing before take_done */
    br__mutex_unlock(&pool->mu_);

    out->status = f.type == BR_PP_MSG_RESULT ? BR_PPTASK_OK : BR_PPTASK_ERROR;
    out->reply = copy;
    out->len = f.len;
    out->tag_ = f.tag;
    br_ring_release(&w->rx, &f);
    let_go(pool, w, poke);
    return 1;
}

void br_procpool_take_done(br_procpool_t *pool, br_pptake_t *out)
{
    if (out->w_ == NULL)
        return;
    /* The same worker still (its memory is mapped while it is in the table
     * under the mutex): the reply's tag acknowledged. */
    br__mutex_lock(&pool->mu_);
    br__ppw_t *w = out->index_ < pool->opts_.workers ? pool->workers_[out->index_] : NULL;
    if (w == out->w_ && w->proc.pid == out->pid_ && w->slots != NULL &&
        __atomic_load_n(&w->slots[BR_PP_ACK_INDEX], __ATOMIC_RELAXED) < out->tag_)
        __atomic_store_n(&w->slots[BR_PP_ACK_INDEX], out->tag_, __ATOMIC_RELEASE);
    /* A closing pool may finish now: told under the mutex, before the loop
     * thread can decide it is final and close the async. */
    if (--pool->takes_out_ == 0 && pool->state_ != PP_RUNNING)
        (void)br_async_send(&pool->async_);
    br__mutex_unlock(&pool->mu_);
    out->w_ = NULL;
}
