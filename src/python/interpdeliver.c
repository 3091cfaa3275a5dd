/*
 * interpdeliver.c — how finished InterpreterPool tasks reach the main
 * interpreter (their futures are the main interpreter's objects).
 *
 * A worker appends each finished task to its pool's done list, which needs
 * no GIL. Then whoever can take the main GIL cheaply finishes the futures:
 *
 *   - a worker whose queue is empty delivers itself: it has nothing else to
 *     do, and a round trip (submit, result) then wakes no thread but the
 *     caller, as in the thread pool;
 *   - while tasks are still queued, a worker must not stall on the main GIL
 *     (the submitting thread may hold it for a whole switch interval): it
 *     wakes the pool's deliverer thread instead, a thread of the main
 *     interpreter that waits for the GIL on the workers' behalf and then
 *     finishes every future on the list in one hold;
 *   - submit() finishes what is on the list too, since it holds the GIL
 *     anyway: a caller submitting a burst delivers while it submits.
 *
 * `delivering` (under dmu) keeps two threads from both queueing on the main
 * GIL for the same list. The deliverer starts with the first burst and
 * ends after the pool's last worker (braid_ipd_stop).
 *
 *   deliverer: idle --woken--> waits for the main GIL --> drains --> idle
 *                ... --stop, list empty--> gone
 */
#include "interppool.h"

#ifdef BRAID_HAVE_INTERPRETERS

#include <string.h>

/* With the main GIL: finishes every task on the list, until it is empty. */
void braid_ipd_drain(interp_core_t *core)
{
    for (;;) {
        pthread_mutex_lock(&core->dmu);
        itask_t *t = core->done_head;
        core->done_head = core->done_tail = NULL;
        pthread_mutex_unlock(&core->dmu);
        if (t == NULL) {
            return;
        }
        while (t != NULL) {
            itask_t *next = t->next;
            braid_ip_complete(t);
            t = next;
        }
    }
}

/* With dmu held. Drains with the GIL of `ts`, then clears `delivering`
 * once the list is seen empty under the lock (a task added meanwhile is
 * drained by this thread, never stranded). */
static void drain_as(interp_core_t *core, PyThreadState *ts)
{
    core->delivering = 1;
    pthread_mutex_unlock(&core->dmu);
    PyEval_RestoreThread(ts);
    for (;;) {
        braid_ipd_drain(core);
        pthread_mutex_lock(&core->dmu);
        if (core->done_head == NULL) {
            core->delivering = 0;
            pthread_mutex_unlock(&core->dmu);
            break;
        }
        pthread_mutex_unlock(&core->dmu);
    }
    PyEval_SaveThread();
    pthread_mutex_lock(&core->dmu);
}

static void *deliverer_main(void *arg)
{
    interp_core_t *core = arg;
    PyThreadState *ts = PyThreadState_New(core->interp);
    pthread_mutex_lock(&core->dmu);
    for (;;) {
        if (core->done_head != NULL && !core->delivering) {
            drain_as(core, ts);
            continue;
        }
        if (core->deliverer_stop && core->done_head == NULL && !core->delivering) {
            break;
        }
        core->deliverer_idle = 1;
        pthread_cond_wait(&core->dcv, &core->dmu);
        core->deliverer_idle = 0;
    }
    pthread_mutex_unlock(&core->dmu);
    PyEval_RestoreThread(ts);
    PyThreadState_Clear(ts);
    PyThreadState_DeleteCurrent();
    return NULL;
}

/* No GIL needed. `busy`: the worker has more tasks to run (it will not
 * deliver itself soon), so the deliverer is woken (started on first need).
 * Returns 1 when a thread waits on the task's future (result()): it has
 * been woken to finish the future itself (FutureObject.drain_hook), with no
 * hand-over of the main GIL on the way; 0 when someone must deliver. */
int braid_ipd_push(interp_core_t *core, itask_t *t, int busy)
{
    t->next = NULL;
    pthread_mutex_lock(&core->dmu);
    if (core->done_tail) {
        core->done_tail->next = t;
    } else {
        core->done_head = t;
    }
    core->done_tail = t;
    if (busy && !core->delivering) {
        if (!core->deliverer_started && !core->deliverer_failed) {
            if (pthread_create(&core->deliverer, NULL, deliverer_main, core) == 0) {
                core->deliverer_started = 1;
            } else {
                core->deliverer_failed = 1; /* the workers deliver, stalling a little */
            }
        } else if (core->deliverer_idle) {
            pthread_cond_signal(&core->dcv);
        }
    }
    /* under dmu, which a drain needs to take the task (and free it with
     * its reference to the future): the future is alive here */
    br_event_t *ev = &t->fut->done_ev;
    int waited = __atomic_load_n(&t->fut->waiting, __ATOMIC_SEQ_CST) || br_event_has_sleepers(ev);
    if (waited) {
        br_event_set(ev);
    }
    pthread_mutex_unlock(&core->dmu);
    return waited;
}

/* With the main GIL: a waiter's drain_hook. Spinning pays when at most the
 * awaited task is queued (a round trip: a spinning worker takes it at once
 * and the result is microseconds away); behind a longer queue the waiter's
 * CPU is better left to the workers. */
int braid_ipd_drain_hook(void *ctx, int ask_spin)
{
    interp_core_t *core = ctx;
    if (ask_spin) {
        return br_threadpool_queued(&core->tp) <= 1;
    }
    braid_ipd_drain(core);
    return 0;
}

/* A worker with nothing queued: delivers itself unless someone is at it.
 * No GIL held on entry or return. */
void braid_ipd_deliver(interp_core_t *core, PyThreadState *main_ts)
{
    pthread_mutex_lock(&core->dmu);
    if (core->done_head != NULL && !core->delivering) {
        drain_as(core, main_ts);
    }
    pthread_mutex_unlock(&core->dmu);
}

/* With the main GIL, by the pool's last worker as it leaves: the deliverer
 * finishes what is left and ends. */
void braid_ipd_stop(interp_core_t *core)
{
    pthread_mutex_lock(&core->dmu);
    int started = core->deliverer_started;
    core->deliverer_stop = 1;
    pthread_cond_signal(&core->dcv);
    pthread_mutex_unlock(&core->dmu);
    if (started) {
        Py_BEGIN_ALLOW_THREADS
        pthread_join(core->deliverer, NULL);
        Py_END_ALLOW_THREADS
        core->deliverer_started = 0;
    }
    braid_ipd_drain(core);
}

int braid_ipd_init(interp_core_t *core)
{
    if (pthread_mutex_init(&core->dmu, NULL) != 0) {
        return -1;
    }
    if (pthread_cond_init(&core->dcv, NULL) != 0) {
        pthread_mutex_destroy(&core->dmu);
        return -1;
    }
    return 0;
}

void braid_ipd_destroy(interp_core_t *core)
{
    pthread_cond_destroy(&core->dcv);
    pthread_mutex_destroy(&core->dmu);
}

#endif /* BRAID_HAVE_INTERPRETERS */
