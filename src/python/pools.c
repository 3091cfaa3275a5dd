/*
 * pools.c — what every kind of pool shares about its lifetime: the
 * module's list of live pool cores, interpreter exit and os.fork().
 *
 * A pool core (threadpool.c's pool_core_t, procpool.c's proc_core_t) embeds
 * a braid_pool_link_t and is on the list from its creation until it is
 * freed or has nothing left that interpreter exit must wait for. The kinds
 * differ in how they close and wait; braid_pool_ops_t says how, so exit and
 * fork are written once here, in the order that makes them safe:
 *
 *   interpreter exit (threading's at-exit hooks, before non-daemon threads
 *   are joined; registered once by braid._pools):
 *     1. every pool closes at once (their shutdowns overlap: n pools cost
 *        the slowest one, not the sum); after Ctrl-C queued work is
 *        cancelled, running tasks of process pools get a short grace and
 *        then SIGKILL, those of thread pools end as they will
 *     2. one by one, each pool that still has workers is waited for, with
 *        the GIL released and signal handlers run; a second Ctrl-C raises
 *        here, and braid._pools runs exit again without waiting: process
 *        pools' workers are killed, interpreter pools' tasks interrupted
 *        (KeyboardInterrupt) and waited for, thread pools' left running
 *        to the process's end (as a thread pool a second Ctrl-C left in
 *        its with block is)
 *     3. process-pool templates that no pool uses any more end
 *
 *   os.fork() child (os.register_at_fork): only the forking thread lives
 *   on, so every pool core becomes a husk that raises when used and never
 *   touches the engine's locks (a thread of the parent may hold them)
 *
 * Everything here runs with the GIL held.
 */
#include "braidpy.h"

#include <errno.h>

void braid_pools_link(braid_state *st, braid_pool_link_t *link, const braid_pool_ops_t *ops)
{
    link->ops = ops;
    link->st = st;
    link->prev = NULL;
    link->next = st->pools;
    if (st->pools != NULL) {
        st->pools->prev = link;
    }
    st->pools = link;
}

void braid_pools_unlink(braid_pool_link_t *link)
{
    braid_state *st = link->st;
    if (st == NULL) {
        return; /* not linked, or the module went first */
    }
    if (link->prev != NULL) {
        link->prev->next = link->next;
    } else {
        st->pools = link->next;
    }
    if (link->next != NULL) {
        link->next->prev = link->prev;
    }
    link->next = link->prev = NULL;
    link->st = NULL;
}

/* A dropped pool (nothing holds it; its workers finish and the last one
 * frees it) is waited for at exit until its last worker has left Python:
 * that worker calls braid_pools_release, which takes the pool off the list
 * and wakes the wait. */
void braid_pools_release(braid_state *st, braid_pool_link_t *link)
{
    braid_pools_unlink(link);
    if (st != NULL && st->exit_waiter != NULL) {
        br_event_set(st->exit_waiter);
    }
}

int braid_pools_wait_released(braid_state *st)
{
    br_event_t left;
    br_event_init(&left);
    st->exit_waiter = &left;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = br_event_wait(&left, -1);
    Py_END_ALLOW_THREADS
    st->exit_waiter = NULL;
    return rc == -EINTR && PyErr_CheckSignals() < 0 ? -1 : 0;
}

int braid_pool_check_made(PyObject *pool, const void *core)
{
    if (core != NULL) {
        return 0;
    }
    PyErr_Format(PyExc_RuntimeError, "this %.100s cannot be used: its __init__ was not called or failed",
                 Py_TYPE(pool)->tp_name);
    return -1;
}

size_t braid_pools_count(braid_state *st, const braid_pool_ops_t *ops)
{
    size_t n = 0;
    for (braid_pool_link_t *l = st->pools; l != NULL; l = l->next) {
        n += l->ops == ops;
    }
    return n;
}

PyObject *braid_pools_at_exit(braid_state *st, int interrupted, int wait)
{
    for (braid_pool_link_t *l = st->pools; l != NULL; l = l->next) {
        l->ops->close(l, interrupted);
        if (!wait && l->ops->interrupt != NULL) {
            l->ops->interrupt(l);
        }
    }
    for (;;) {
        /* a wait may free its pool and others may leave meanwhile: start
         * over from the head after each. Not told to wait (a second
         * Ctrl-C): thread pools' running tasks are left to the process's
         * end; process pools are still waited for (their workers are
         * killed after a grace), and interpreter pools, their tasks
         * interrupted above. */
        braid_pool_link_t *l = st->pools;
        while (l != NULL && (!l->ops->busy(l) || (!wait && l->ops->unstoppable))) {
            l = l->next;
        }
        if (l == NULL) {
            break;
        }
        if (l->ops->wait(l) < 0) {
            return NULL;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    braid_templates_close_unused(BRAID_EXIT_GRACE_NS);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

void braid_pools_after_fork_child(braid_state *st)
{
    braid_templates_after_fork_child();
    braid_pool_link_t *next;
    for (braid_pool_link_t *l = st->pools; l != NULL; l = next) {
        next = l->next; /* forked() may unlink it */
        l->ops->forked(l);
    }
}

void braid_pools_clear(braid_state *st)
{
    braid_pool_link_t *next;
    for (braid_pool_link_t *l = st->pools; l != NULL; l = next) {
        next = l->next; /* clear() unlinks it */
        l->ops->clear(l);
    }
}
