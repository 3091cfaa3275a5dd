/*
 * timer.c — br_timer_t on a binary min-heap.
 *
 * The heap is an array of pointers in the loop, ordered by (deadline, seq):
 * seq is a per-loop counter taken at every start, so timers with equal
 * deadlines run in the order they were started. Each timer keeps its index
 * in the array, so stop is O(log n) without a search. An array beats an
 * intrusive pointer heap (libuv's) on cache misses: sifting touches
 * neighbouring slots, not scattered nodes.
 *
 * Timers started from a callback wait for the next iteration. br__timers_run
 * notes the counter when it begins and stops at the first timer whose seq
 * is at or past that mark. That is enough: the heap is ordered by
 * (deadline, seq), and a timer started now has deadline >= the cached time,
 * so every timer behind it is either not due or was also started during
 * this run. Without the mark, a callback that restarts its own timer with
 * timeout 0 would keep the loop in step 2 for ever.
 *
 * Timer life cycle (the handle cycle of braid.h, in heap terms):
 *
 *          start                    due: one-shot
 *   INACTIVE ----> ACTIVE (in heap) -------------> INACTIVE, then cb runs
 *      ^             |  |  due: repeat
 *      |    stop     |  +-----------> ACTIVE again (deadline += repeat),
 *      +-------------+                 then cb runs
 */
#include "loop_internal.h"

#include <stdint.h>
#include <stdlib.h>

#define NOT_IN_HEAP SIZE_MAX

static int before(const br_timer_t *a, const br_timer_t *b)
{
    if (a->deadline_ != b->deadline_)
        return a->deadline_ < b->deadline_;
    return a->seq_ < b->seq_;
}

static void place(br_timer_t **heap, size_t i, br_timer_t *t)
{
    heap[i] = t;
    t->heap_index_ = i;
}

static void sift_up(br_timer_t **heap, size_t i)
{
    br_timer_t *t = heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(t, heap[parent]))
            break;
        place(heap, i, heap[parent]);
        i = parent;
    }
    place(heap, i, t);
}

static void sift_down(br_timer_t **heap, size_t len, size_t i)
{
    br_timer_t *t = heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= len)
            break;
        if (child + 1 < len && before(heap[child + 1], heap[child]))
            child++;
        if (!before(heap[child], t))
            break;
        place(heap, i, heap[child]);
        i = child;
    }
    place(heap, i, t);
}

static int heap_push(br_loop_t *loop, br_timer_t *t)
{
    if (loop->heap_len_ == loop->heap_cap_) {
        size_t cap = loop->heap_cap_ != 0 ? loop->heap_cap_ * 2 : 64;
        br_timer_t **h = realloc(loop->heap_, cap * sizeof *h);
        if (h == NULL)
            return -ENOMEM;
        loop->heap_ = h;
        loop->heap_cap_ = cap;
    }
    place(loop->heap_, loop->heap_len_, t);
    loop->heap_len_++;
    sift_up(loop->heap_, t->heap_index_);
    return 0;
}

static void heap_remove(br_loop_t *loop, br_timer_t *t)
{
    size_t i = t->heap_index_;
    br_timer_t *last = loop->heap_[--loop->heap_len_];
    t->heap_index_ = NOT_IN_HEAP;
    if (last == t)
        return;
    /* The last timer fills the hole and moves whichever way it must. */
    place(loop->heap_, i, last);
    if (i > 0 && before(last, loop->heap_[(i - 1) / 2]))
        sift_up(loop->heap_, i);
    else
        sift_down(loop->heap_, loop->heap_len_, i);
}

/* a + b for a deadline, saturating instead of overflowing (a huge timeout
 * means "never", not "long ago"). */
static int64_t add_sat(int64_t a, int64_t b)
{
    return b > INT64_MAX - a ? INT64_MAX : a + b;
}

/* ------------------------------------------------------------ API */

int br_timer_init(br_loop_t *loop, br_timer_t *timer)
{
    br__handle_init(loop, &timer->handle, BR_HANDLE_TIMER);
    timer->cb_ = NULL;
    timer->deadline_ = 0;
    timer->repeat_ = 0;
    timer->seq_ = 0;
    timer->heap_index_ = NOT_IN_HEAP;
    return 0;
}

int br_timer_start(br_timer_t *timer, br_timer_cb cb, int64_t timeout_ns, int64_t repeat_ns)
{
    br_loop_t *loop = timer->handle.loop;

    if (cb == NULL || timeout_ns < 0 || repeat_ns < 0)
        return -EINVAL;
    if (timer->handle.flags_ & (BR__CLOSING | BR__CLOSED))
        return -EBUSY;

    br_timer_stop(timer);
    timer->cb_ = cb;
    timer->deadline_ = add_sat(loop->time_, timeout_ns);
    timer->repeat_ = repeat_ns;
    timer->seq_ = loop->timer_seq_++;
    int r = heap_push(loop, timer);
    if (r != 0)
        return r;
    br__handle_start(&timer->handle);
    return 0;
}

int br_timer_stop(br_timer_t *timer)
{
    if (timer->heap_index_ == NOT_IN_HEAP)
        return 0;
    heap_remove(timer->handle.loop, timer);
    br__handle_stop(&timer->handle);
    return 0;
}

int br_timer_again(br_timer_t *timer)
{
    if (timer->cb_ == NULL)
        return -EINVAL;
    if (timer->repeat_ == 0)
        return 0;
    return br_timer_start(timer, timer->cb_, timer->repeat_, timer->repeat_);
}

void br_timer_set_repeat(br_timer_t *timer, int64_t repeat_ns)
{
    timer->repeat_ = repeat_ns > 0 ? repeat_ns : 0;
}

int64_t br_timer_get_repeat(const br_timer_t *timer) { return timer->repeat_; }

int64_t br_timer_get_due_in(const br_timer_t *timer)
{
    if (timer->heap_index_ == NOT_IN_HEAP)
        return 0;
    int64_t left = timer->deadline_ - timer->handle.loop->time_;
    return left > 0 ? left : 0;
}

/* ------------------------------------------------------------ loop side */

void br__timer_close(br_timer_t *timer) { br_timer_stop(timer); }

void br__timers_free(br_loop_t *loop)
{
    free(loop->heap_);
    loop->heap_ = NULL;
    loop->heap_len_ = loop->heap_cap_ = 0;
}

int br__timers_timeout(const br_loop_t *loop)
{
    if (loop->heap_len_ == 0)
        return -1;
    int64_t left = loop->heap_[0]->deadline_ - loop->time_;
    if (left <= 0)
        return 0;
    int64_t ms = (left + 999999) / 1000000;
    return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

void br__timers_run(br_loop_t *loop)
{
    uint64_t mark = loop->timer_seq_;
    int64_t now = loop->time_;

    while (loop->heap_len_ > 0) {
        br_timer_t *t = loop->heap_[0];
        if (t->deadline_ > now || t->seq_ >= mark)
            break;

        heap_remove(loop, t);
        if (t->repeat_ != 0) {
            /* From the old deadline, not from now, so lateness does not
             * accumulate; skip whole periods that are already over. */
            int64_t next = add_sat(t->deadline_, t->repeat_);
            if (next <= now) {
                int64_t missed = (now - t->deadline_) / t->repeat_;
                next = add_sat(t->deadline_, add_sat(t->repeat_, missed * t->repeat_));
            }
            t->deadline_ = next;
            t->seq_ = loop->timer_seq_++;
            /* Cannot fail: the array held this timer a moment ago. */
            if (heap_push(loop, t) != 0)
                br__fatal("timer heap", ENOMEM);
        } else {
            br__handle_stop(&t->handle);
        }
        t->cb_(t);
    }
}
