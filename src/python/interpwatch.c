/*
 * interpwatch.c — task_timeout for braid.InterpreterPool: a watchdog thread
 * per worker (started with the worker when the pool has a timeout).
 *
 * Past a task's deadline the watchdog starts an interrupter thread, which
 * takes the worker's sub-interpreter GIL with a thread state of its own and
 * throws an exception into the worker's thread state
 * (PyThreadState_SetAsyncExc): pure-Python code sees it at once, and the
 * worker reports the task as timed out (interpworker.c). The interrupter has
 * a thread of its own because taking that GIL may never succeed: a task in
 * C code that holds it never lets it go.
 *
 * A task still running STUCK_GRACE_NS after the interrupt is in C code that
 * does not come back to the interpreter. The watchdog then fails its future
 * itself (in the main interpreter) and writes the worker off: the engine
 * starts a thread more (br_threadpool_add_thread), with a sub-interpreter of
 * its own, so the pool keeps its size, and retires one when the stuck call
 * comes back. What that leaks until then: the stuck thread, its
 * sub-interpreter and whatever the call holds; shutdown(wait=True) and the
 * program's exit still wait for it (interruptibly), as for a thread-pool task.
 *
 *   watchdog: idle --task starts--> timing --deadline--> interrupting
 *      ^                               |                      | task ends
 *      +------- task ends -------------+<---------------------+
 *                                                              | grace over
 *                                     stuck: future failed, a worker added
 *                                        --task ends--> a worker retired --> idle
 */
#include "interppool.h"

#ifdef BRAID_HAVE_INTERPRETERS

#include <errno.h>
#include <pthread.h>
#include <time.h>

#define STUCK_GRACE_NS 1000000000 /* after the interrupt: then written off */

static void cond_deadline(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t deadline_ns)
{
    struct timespec ts = {.tv_sec = deadline_ns / 1000000000, .tv_nsec = deadline_ns % 1000000000};
    pthread_cond_timedwait(cv, mu, &ts);
}

/* A task stuck past its interrupt: its future fails now, from here. */
static void report_stuck(iworker_t *w, itask_t *t, PyThreadState **main_ts)
{
    if (*main_ts == NULL) {
        *main_ts = PyThreadState_New(w->core->interp);
    }
    PyEval_RestoreThread(*main_ts);
    if (!__atomic_exchange_n(&t->settled, 1, __ATOMIC_ACQ_REL)) {
        t->status = IT_STUCK;
        braid_ip_settle(t);
    }
    __atomic_add_fetch(&w->core->stuck, 1, __ATOMIC_RELAXED);
    PyEval_SaveThread();
}

/* Throws an exception into the worker's interpreter: takes its GIL with a
 * thread state of its own, which waits for the worker to let the GIL go (a
 * switch interval for Python code; never, for C code that holds it). Its
 * own thread, so that the watchdog can report a task stuck in C either way.
 * What it throws is read once it has that GIL: KeyboardInterrupt whatever
 * runs once the pool was stopped by a Ctrl-C (closed, its queue cancelled:
 * no task comes after), else task_timeout's exception, if the task that
 * `interrupting` names still runs. */
static void *interrupter_main(void *arg)
{
    iworker_t *w = arg;
    interp_core_t *core = w->core;
    PyThreadState *ts = PyThreadState_New(w->sub_ts->interp);
    PyEval_RestoreThread(ts);
    pthread_mutex_lock(&core->mu);
    if (w->ctrl_c) {
        PyThreadState_SetAsyncExc(w->ident, PyExc_KeyboardInterrupt);
    } else if (w->current != NULL && w->seq == w->interrupting) {
        PyThreadState_SetAsyncExc(w->ident, w->interrupt);
    }
    pthread_mutex_unlock(&core->mu);
    PyThreadState_Clear(ts);
    PyThreadState_DeleteCurrent();
    return NULL;
}

/* With core->mu: 1 while the interrupter of an earlier task still waits
 * for the sub-interpreter's GIL (a task stuck in C holds it): it will
 * interrupt whichever task `interrupting` names when it gets it; 0 once
 * it has ended and been reaped. Never blocks: joining a thread that waits
 * for a GIL the current task may never let go would keep this watchdog
 * from reporting that task. */
static int interrupter_alive(iworker_t *w)
{
    if (!w->has_interrupter) {
        return 0;
    }
    if (pthread_tryjoin_np(w->interrupter, NULL) == EBUSY) {
        return 1;
    }
    w->has_interrupter = 0;
    return 0;
}

/* With core->mu, as the watchdog leaves (no task runs any more, so its GIL
 * comes free): reaps the last interrupter. */
static void reap_interrupter(iworker_t *w, pthread_mutex_t *mu)
{
    if (w->has_interrupter) {
        pthread_t thread = w->interrupter; /* the field may name a new one once unlocked */
        w->has_interrupter = 0;
        pthread_mutex_unlock(mu);
        pthread_join(thread, NULL);
        pthread_mutex_lock(mu);
    }
}

static void *watchdog_main(void *arg)
{
    iworker_t *w = arg;
    interp_core_t *core = w->core;
    PyThreadState *main_ts = NULL;
    pthread_mutex_lock(&core->mu);
    while (!w->exiting) {
        itask_t *t = w->current;
        if (t == NULL || w->interrupted) {
            pthread_cond_wait(&w->cv, &core->mu);
            continue;
        }
        if (br_now_ns() < w->deadline) {
            cond_deadline(&w->cv, &core->mu, w->deadline);
            continue;
        }
        w->interrupted = 1;
        w->interrupting = w->seq;
        if (!interrupter_alive(w) && pthread_create(&w->interrupter, NULL, interrupter_main, w) == 0) {
            w->has_interrupter = 1;
        }
        int64_t give_up = br_now_ns() + STUCK_GRACE_NS;
        while (!w->exiting && w->current == t && br_now_ns() < give_up) {
            cond_deadline(&w->cv, &core->mu, give_up);
        }
        if (!w->exiting && w->current == t) {
            pthread_mutex_unlock(&core->mu);
            report_stuck(w, t, &main_ts);
            /* a worker more meanwhile, so the pool keeps its size */
            int replaced = br_threadpool_add_thread(&core->tp) == 0;
            pthread_mutex_lock(&core->mu);
            while (!w->exiting && w->current == t) {
                pthread_cond_wait(&w->cv, &core->mu);
            }
            __atomic_sub_fetch(&core->stuck, 1, __ATOMIC_RELAXED);
            if (replaced) {
                br_threadpool_retire_thread(&core->tp); /* back: one worker too many */
            }
        }
    }
    reap_interrupter(w, &core->mu);
    pthread_mutex_unlock(&core->mu);
    if (main_ts != NULL) {
        PyEval_RestoreThread(main_ts);
        PyThreadState_Clear(main_ts);
        PyThreadState_DeleteCurrent();
    }
    return NULL;
}

int braid_iw_start_watchdog(iworker_t *w)
{
    pthread_condattr_t a;
    if (pthread_condattr_init(&a) != 0) {
        return -1;
    }
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int err = pthread_cond_init(&w->cv, &a);
    pthread_condattr_destroy(&a);
    if (err != 0) {
        return -1;
    }
    if (pthread_create(&w->watchdog, NULL, watchdog_main, w) != 0) {
        pthread_cond_destroy(&w->cv);
        return -1;
    }
    w->has_watchdog = 1;
    return 0;
}

void braid_iw_interrupt_all(interp_core_t *core)
{
    pthread_mutex_lock(&core->mu);
    for (iworker_t *w = core->workers; w != NULL; w = w->next) {
        if (w->sub_ts == NULL || w->leaving) {
            continue;
        }
        w->ctrl_c = 1;
        /* one still alive (task_timeout's, waiting for the GIL that a task in C
         * code holds) throws KeyboardInterrupt instead when it gets that GIL */
        if (!interrupter_alive(w) && pthread_create(&w->interrupter, NULL, interrupter_main, w) == 0) {
            w->has_interrupter = 1;
        }
    }
    pthread_mutex_unlock(&core->mu);
}

void braid_iw_reap_interrupter(iworker_t *w)
{
    interp_core_t *core = w->core;
    pthread_mutex_lock(&core->mu);
    w->leaving = 1;
    reap_interrupter(w, &core->mu);
    pthread_mutex_unlock(&core->mu);
}

/* In the worker, as it leaves (no task runs): ends its watchdog. */
void braid_iw_stop_watchdog(iworker_t *w)
{
    if (!w->has_watchdog) {
        return;
    }
    interp_core_t *core = w->core;
    pthread_mutex_lock(&core->mu);
    w->exiting = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&core->mu);
    pthread_join(w->watchdog, NULL);
    pthread_cond_destroy(&w->cv);
    w->has_watchdog = 0;
}

#endif /* BRAID_HAVE_INTERPRETERS */
