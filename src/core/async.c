/*
 * async.c — br_async_t: wakes the loop from other threads.
 *
 * One br_wakeup_t (an eventfd) per loop serves every br_async_t of that
 * loop, as in libuv: a send sets the handle's pending_ flag and signals the
 * wakeup only on the 0 -> 1 edge, so a burst of sends to one handle costs
 * one atomic exchange each and a single eventfd write; br_wakeup_t then
 * coalesces across handles as well. On wakeup the loop drains the eventfd
 * FIRST and clears each handle's flag SECOND (the order wakeup.c explains),
 * so a send racing with the scan either finds the flag still set (and its
 * data is covered by the callback about to run) or sets it afresh and
 * writes the eventfd again.
 *
 * The scan walks every async handle of the loop: O(handles) per wakeup,
 * fine for the handful a loop has (the Python binding uses one).
 */
#include "loop_internal.h"

static void wakeup_cb(br_io_t *io, unsigned revents)
{
    br_loop_t *loop = br__container_of(io, br_loop_t, wakeup_io_);

    /* An error here means the eventfd is broken; the handles' flags are
     * still scanned so no send is lost, and a persistent error shows up as
     * a busy loop rather than a silent hang. */
    (void)br_wakeup_drain(&loop->wakeup_);

    /* The cursor lives in the loop so that br__async_close can move it on
     * when a callback closes the handle it points to (the next one to
     * visit); a plain local would then point into a closed handle whose
     * links are gone, and the rest of the list would be skipped. */
    loop->async_cursor_ = loop->asyncs_;
    while (loop->async_cursor_ != NULL) {
        br_async_t *a = loop->async_cursor_;
        loop->async_cursor_ = a->next_;
        if (__atomic_exchange_n(&a->pending_, 0, __ATOMIC_ACQ_REL) != 0)
            a->cb_(a);
    }
}

int br__async_loop_init(br_loop_t *loop)
{
    int r = br_wakeup_init(&loop->wakeup_);
    if (r != 0)
        return r;
    br__io_init_internal(loop, &loop->wakeup_io_, loop->wakeup_.fd);
    r = br_io_start(&loop->wakeup_io_, BR_READABLE, wakeup_cb);
    if (r != 0) {
        br_wakeup_close(&loop->wakeup_);
        return r;
    }
    return 0;
}

void br__async_loop_close(br_loop_t *loop)
{
    if (loop->wakeup_.fd < 0)
        return;
    br_io_stop(&loop->wakeup_io_);
    br_wakeup_close(&loop->wakeup_);
}

int br_async_init(br_loop_t *loop, br_async_t *async, br_async_cb cb)
{
    if (cb == NULL)
        return -EINVAL;
    br__handle_init(loop, &async->handle, BR_HANDLE_ASYNC);
    async->cb_ = cb;
    __atomic_store_n(&async->pending_, 0, __ATOMIC_RELAXED);
    async->prev_ = NULL;
    async->next_ = loop->asyncs_;
    if (loop->asyncs_ != NULL)
        loop->asyncs_->prev_ = async;
    loop->asyncs_ = async;
    br__handle_start(&async->handle);
    return 0;
}

int br_async_send(br_async_t *async)
{
    /* Release: what the sender wrote before is visible to the callback,
     * which runs after the loop's acquire exchange of pending_. */
    if (__atomic_exchange_n(&async->pending_, 1, __ATOMIC_ACQ_REL) != 0)
        return 0; /* already pending: the callback has yet to run */
    return br_wakeup_signal(&async->handle.loop->wakeup_);
}

void br__async_close(br_async_t *async)
{
    br_loop_t *loop = async->handle.loop;
    if (loop->async_cursor_ == async)
        loop->async_cursor_ = async->next_;
    if (async->prev_ != NULL)
        async->prev_->next_ = async->next_;
    else
        loop->asyncs_ = async->next_;
    if (async->next_ != NULL)
        async->next_->prev_ = async->prev_;
    async->next_ = async->prev_ = NULL;
}
