/*
 * procpool_worker.c — one worker process of a br_procpool_t: its spawn,
 * its messages, its death.
 *
 * Each worker process gets a br__ppw_t of its own, allocated at spawn and
 * freed once the four loop handles it owns (result eventfd, space eventfd,
 * pidfd, timeout timer) have run their close callbacks; a respawn in the
 * same slot gets a new one, so no handle is ever reused while closing.
 *
 * Worker life cycle:
 *
 *   spawn --> RUNNING --(max tasks, retired for memory, pool closing: EXIT
 *               |         sent once it holds no task)--> EXITING
 *               |                                          |
 *               +-- dies or is killed (crash, garbage, ----+--> reaped: its
 *                   task timeout, memory cap, close(KILL))      tasks settled,
 *                                                               DEAD, handles
 *                                                               closing
 *
 * At its death the worker's unanswered tasks are settled oldest first; the
 * shared slots tell which it was running (RUNNING), which it never started
 * (QUEUED: back to the queue) and which were cancelled. Results it wrote
 * before it died are read first and count.
 */
#include "procpool_internal.h"

#include <sched.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

static void close_fd(int fd)
{
    /* On Linux the fd is released even when close() reports an error. */
    int r = close(fd);
    (void)r;
}

/* Empties an eventfd whose readiness brought us here: the ring state is
 * what counts, the count only wakes epoll. EAGAIN: a drain before took it. */
static void drain_eventfd(int fd)
{
    uint64_t n;
    ssize_t r;
    do
        r = read(fd, &n, sizeof n);
    while (r < 0 && errno == EINTR);
}

/* ------------------------------------------------------------ sending */

static int continue_send(br__ppw_t *w)
{
    for (;;) {
        int err = br_ring_send(&w->tx, &w->sending);
        if (err == 0) {
            w->sending_active = 0;
            return 1;
        }
        if (err != -EAGAIN) {
            w->sending_active = 0;
            br__ppw_kill(w);
            return err;
        }
        if (br_ring_arm_space(&w->tx) == 0)
            return 0; /* io_space fires when the worker frees room */
    }
}

int br__ppw_send(br__ppw_t *w, uint32_t type, uint64_t tag, const void *payload, size_t len)
{
    w->sending = (br_ring_msg_t){.type = type, .tag = tag, .payload = payload, .len = len};
    w->sending_active = 1;
    return continue_send(w);
}

void br__ppw_kill(br__ppw_t *w)
{
    /* -ESRCH once reaped, which cannot be here (a reaped worker is gone
     * from the table); anything else would be a pidfd we broke. */
    (void)br_proc_kill(&w->proc, SIGKILL);
}

/* ------------------------------------------------------------ memory */

int64_t br__ppw_rss(br__ppw_t *w)
{
    static long page;
    char buf[128];

    if (w->statm_fd < 0)
        return -EBADF;
    if (page == 0)
        page = sysconf(_SC_PAGESIZE);
    /* statm is regenerated on every read at offset 0; of a process that
     * has exited it says ESRCH, never another process's numbers. */
    ssize_t n = pread(w->statm_fd, buf, sizeof buf - 1, 0);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    unsigned long long size, resident;
    if (sscanf(buf, "%llu %llu", &size, &resident) != 2 || page <= 0)
        return -EPROTO;
    return (int64_t)(resident * (unsigned long long)page);
}

/* ------------------------------------------------------------ results */

static void on_timeout(br_timer_t *timer)
{
    br__ppw_t *w = timer->handle.data;
    br__mutex_lock(&w->pool->mu_); /* a submit may be setting head */
    int kill = w->head != NULL && w->timed_out == 0 && w->state != W_DEAD;
    if (kill)
        w->timed_out = w->head->seq_;
    br__mutex_unlock(&w->pool->mu_);
    if (kill)
        br__ppw_kill(w);
}

void br__ppw_time_head(br__ppw_t *w)
{
    br_procpool_t *pool = w->pool;
    if (pool->opts_.task_timeout_ns <= 0)
        return;
    br__mutex_lock(&pool->mu_);
    int run = w->head != NULL && w->timed_out == 0;
    /* From when the head task started (a submit may have sent it a moment
     * before the loop thread got here). */
    int64_t left = w->since + pool->opts_.task_timeout_ns - br_loop_now(pool->loop);
    br__mutex_unlock(&pool->mu_);
    if (!run) {
        br_timer_stop(&w->timeout);
        return;
    }
    int err = br_timer_start(&w->timeout, on_timeout, left > 0 ? left : 0, 0);
    if (err != 0)
        br__pp_fail(pool, "starting a task timeout", err);
}

/* The worker is broken: stop listening to it and kill it. */
static void out_of_step(br__ppw_t *w)
{
    br__mutex_lock(&w->pool->mu_); /* submits look at it */
    w->ring_bad = 1;
    br__mutex_unlock(&w->pool->mu_);
    (void)br_io_stop(&w->io_result);
    br__ppw_kill(w);
}

/* Takes back the tasks queued in a retiring worker's ring that it has not
 * started; they go to the front of the pool's queue. */
static void withdraw(br__ppw_t *w)
{
    br_procpool_t *pool = w->pool;
    br_pptask_t *back = NULL, **back_tail = &back;

    br__mutex_lock(&pool->mu_);
    w->retiring = 1;
    br_pptask_t **link = &w->head, *prev = NULL;
    while (*link != NULL) {
        br_pptask_t *t = *link;
        uint64_t expect = BR_PP_SLOT_WORD(t->seq_, BR_PP_SLOT_QUEUED);
        if (t->state_ == T_SENT &&
            __atomic_compare_exchange_n(&w->slots[t->seq_ % BR_PP_SLOTS], &expect,
                                        BR_PP_SLOT_WORD(t->seq_, BR_PP_SLOT_CANCELLED), 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            *link = t->next_;
            w->ninflight--;
            w->withdrawn |= UINT64_C(1) << (t->seq_ % BR_PP_SLOTS);
            t->next_ = NULL;
            *back_tail = t;
            back_tail = &t->next_;
            continue;
        }
        prev = t;
        link = &t->next_;
    }
    w->tail = prev;
    br__pp_requeue_locked(pool, back);
    br__mutex_unlock(&pool->mu_);
}

static void handle_message(br__ppw_t *w, const br_ring_frag_t *m)
{
    br_procpool_t *pool = w->pool;

    if (m->type == BR_PP_MSG_READY) {
        w->ready = 1;
        pool->startup_failures_ = 0;
        return;
    }
    if (m->type == BR_PP_MSG_INIT_FAILED) {
        w->init_failed = 1;
        br__pp_mark_broken(pool, "a worker's initializer failed; the process pool is not usable anymore",
                           m->data, m->len);
        return;
    }

    br__mutex_lock(&pool->mu_);
    br_pptask_t *t = w->head;
    uint64_t bit = UINT64_C(1) << (m->tag % BR_PP_SLOTS);
    if (m->type == BR_PP_MSG_SKIPPED && (w->withdrawn & bit) && m->tag < w->next_seq &&
        (t == NULL || m->tag > t->seq_)) {
        w->withdrawn &= ~bit; /* a task taken back by withdraw() */
        br__mutex_unlock(&pool->mu_);
        return;
    }
    int known = m->type == BR_PP_MSG_RESULT || m->type == BR_PP_MSG_ERROR || m->type == BR_PP_MSG_SKIPPED;
    if (t == NULL || t->seq_ != m->tag || !known ||
        (m->type == BR_PP_MSG_SKIPPED && t->state_ != T_CANCELLED)) {
        br__mutex_unlock(&pool->mu_);
        out_of_step(w); /* settled as a crash when it is reaped */
        return;
    }
    w->head = t->next_;
    if (w->head == NULL)
        w->tail = NULL;
    w->ninflight--;
    int status = m->type == BR_PP_MSG_RESULT ? BR_PPTASK_OK : BR_PPTASK_ERROR;
    if (m->type == BR_PP_MSG_SKIPPED || t->state_ == T_CANCELLED)
        status = BR_PPTASK_CANCELLED;
    br__pp_set_tstate(t, T_DONE);
    int64_t now = br_loop_now(pool->loop);
    if (status != BR_PPTASK_CANCELLED) {
        int64_t took = now > w->since ? now - w->since : 0; /* since may be a submit's clock */
        int64_t avg = pool->avg_task_ns_;
        pool->avg_task_ns_ = avg == 0 ? (took > 0 ? took : 1) : avg - avg / 8 + took / 8;
        pool->rr_ = w->index; /* it is awake: feed it first */
    }
    w->since = now;
    /* Over the memory cap after a task: it runs nothing more. That check
     * comes before the next task is reported running, so that one goes
     * back to the queue too unless the worker has claimed it already. */
    size_t cap = pool->opts_.max_worker_memory;
    if (cap != 0 && !w->retiring && status != BR_PPTASK_CANCELLED) {
        br__mutex_unlock(&pool->mu_);
        int64_t rss = br__ppw_rss(w);
        if (rss > 0 && (uint64_t)rss > cap)
            withdraw(w); /* a new process in its place once it exits */
        br__mutex_lock(&pool->mu_);
    }
    if (w->head != NULL && w->head->state_ == T_SENT)
        br__pp_set_tstate(w->head, T_RUNNING); /* the next one starts now */
    br__mutex_unlock(&pool->mu_);

    br__ppw_time_head(w);
    br__pp_announce(pool);
    pool->opts_.on_done(t, status, status == BR_PPTASK_CANCELLED ? NULL : m->data,
                        status == BR_PPTASK_CANCELLED ? 0 : m->len);
    /* The caller is done with the reply: the worker may let go of what it
     * only named. */
    if (status != BR_PPTASK_CANCELLED)
        __atomic_store_n(&w->slots[BR_PP_ACK_INDEX], m->tag, __ATOMIC_RELEASE);
}

void br__ppw_drain(br__ppw_t *w)
{
    /* A taker holds the ring for at most its poll (it never sleeps with
     * it): wait it out, then read what it left. */
    for (;;) {
        int expect = RX_FREE;
        if (__atomic_compare_exchange_n(&w->rx_owner, &expect, RX_LOOP, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            break;
        sched_yield();
    }
    while (!w->ring_bad) {
        br_ring_frag_t m;
        int err = br_ring_recv_whole(&w->rx, &w->join, &m);
        if (err == -EAGAIN) {
            if (br_ring_arm_data(&w->rx) == 0)
                break;
            continue;
        }
        if (err < 0) {
            out_of_step(w); /* garbage in its ring, or a message we cannot hold */
            break;
        }
        /* Its callbacks may submit, cancel or close, never drain this
         * worker again (this is the loop thread, inside the drain). */
        handle_message(w, &m);
        br_ring_release_whole(&w->rx, &w->join, &m);
    }
    __atomic_store_n(&w->rx_owner, RX_FREE, __ATOMIC_RELEASE);
}

static void on_result(br_io_t *io, unsigned revents)
{
    br__ppw_t *w = io->handle.data;
    br_procpool_t *pool = w->pool;
    drain_eventfd(io->fd);
    br__ppw_drain(w);
    br__pp_dispatch(pool);
    br__pp_maybe_final(pool);
    br__pp_spin(pool);
}

static void on_space(br_io_t *io, unsigned revents)
{
    br__ppw_t *w = io->handle.data;
    drain_eventfd(io->fd);
    /* Under the mutex: a submit may write to this ring too (never while
     * a message is half-written: the worker is not available then). */
    br__mutex_lock(&w->pool->mu_);
    int done = w->sending_active && continue_send(w) == 1;
    br__mutex_unlock(&w->pool->mu_);
    if (done)
        br__pp_dispatch(w->pool);
}

/* ------------------------------------------------------------ death */

static void handle_closed(br_handle_t *h)
{
    br__ppw_t *w = h->data;
    if (--w->handles_open != 0)
        return;
    br_procpool_t *pool = w->pool;
    free(w);
    br__mutex_lock(&pool->mu_);
    pool->nprocs_--;
    br__mutex_unlock(&pool->mu_);
    br__pp_maybe_final(pool);
}

/* Releases what the worker holds; its memory goes with its handles. */
static void teardown(br__ppw_t *w)
{
    /* A taker reading the result ring lets go within its poll (it never
     * sleeps holding it): the mapping must outlive that. */
    while (__atomic_load_n(&w->rx_owner, __ATOMIC_ACQUIRE) == RX_TAKER)
        sched_yield();
    w->state = W_DEAD;
    w->handles_open = 4;
    br_close(&w->io_result.handle, handle_closed);
    br_close(&w->io_space.handle, handle_closed);
    br_close(&w->io_exit.handle, handle_closed);
    br_close(&w->timeout.handle, handle_closed);
    for (int k = 0; k < 4; k++)
        if (w->efd[k] >= 0)
            close_fd(w->efd[k]);
    if (w->statm_fd >= 0)
        close_fd(w->statm_fd);
    br_proc_close(&w->proc);
    br_ring_joiner_free(&w->join);
    if (w->mem != NULL)
        (void)munmap(w->mem, w->mem_size);
    w->mem = NULL;
    w->slots = NULL;
}

/* Fills in how the worker ended, for on_done. */
static void crash_info(br_pptask_t *t, const br__ppw_t *w)
{
    t->pid = w->proc.pid;
    t->exit_code = w->proc.exit_code;
    t->term_signal = w->proc.term_signal;
}

/* The worker has been reaped: settles what it held, frees its slot. */
static void settle(br__ppw_t *w)
{
    br_procpool_t *pool = w->pool;
    br_pptask_t *done = NULL, **done_tail = &done; /* status_ set */
    br_pptask_t *back = NULL, **back_tail = &back;
    br_pptask_t *unstarted[BR_PP_SLOTS];            /* reported running, now queued */
    int nunstarted = 0;
    char why[200] = "";

    br__mutex_lock(&pool->mu_);
    int killing = br__pp_killing_locked(pool);
    /* A worker that claimed a task was up, READY read or not (a worker
     * that scribbled over its ring may have wiped it). */
    for (br_pptask_t *t = w->head; t != NULL && !w->ready; t = t->next_)
        w->ready = __atomic_load_n(&w->slots[t->seq_ % BR_PP_SLOTS], __ATOMIC_ACQUIRE) ==
                   BR_PP_SLOT_WORD(t->seq_, BR_PP_SLOT_RUNNING);
    if (!w->ready && !pool->broken_ && !killing && ++pool->startup_failures_ >= STARTUP_LIMIT)
        snprintf(why, sizeof why,
                 "worker processes keep exiting while they start (the last one: %s %d); see their "
                 "standard error",
                 w->proc.term_signal ? "signal" : "exit code",
                 w->proc.term_signal ? w->proc.term_signal : w->proc.exit_code);
    br_pptask_t *t;
    while ((t = w->head) != NULL) {
        w->head = t->next_;
        t->next_ = NULL;
        uint64_t word = __atomic_load_n(&w->slots[t->seq_ % BR_PP_SLOTS], __ATOMIC_ACQUIRE);
        unsigned slot = (word >> 2) == t->seq_ ? (unsigned)(word & 3u) : BR_PP_SLOT_QUEUED;
        int started = slot == BR_PP_SLOT_RUNNING && w->ready;
        int status = -1;
        if (pool->broken_) {
            status = BR_PPTASK_BROKEN;
        } else if (t->state_ == T_CANCELLED || slot == BR_PP_SLOT_CANCELLED) {
            status = BR_PPTASK_CANCELLED;
        } else if (started) {
            if (w->timed_out == t->seq_)
                status = BR_PPTASK_TIMEOUT;
            else if (w->mem_killed == t->seq_)
                status = BR_PPTASK_MEMORY;
            else if (t->retries_left_ > 0 && !killing)
                t->retries_left_--; /* another go */
            else
                status = BR_PPTASK_CRASHED;
        } else if (killing) {
            /* Never started, and nobody will run it now. */
            status = t->state_ == T_RUNNING ? BR_PPTASK_CRASHED : BR_PPTASK_CANCELLED;
        }
        if (status == BR_PPTASK_CRASHED || status == BR_PPTASK_TIMEOUT || status == BR_PPTASK_MEMORY)
            crash_info(t, w);
        if (status >= 0) {
            t->status_ = status;
            *done_tail = t;
            done_tail = &t->next_;
        } else {
            if (t->state_ == T_RUNNING && w->announced == t->seq_ && nunstarted < BR_PP_SLOTS)
                unstarted[nunstarted++] = t;
            *back_tail = t;
            back_tail = &t->next_;
        }
    }
    w->tail = NULL;
    w->ninflight = 0;
    br__pp_requeue_locked(pool, back);
    pool->workers_[w->index] = NULL;
    pool->pids_[w->index] = 0;
    br__mutex_unlock(&pool->mu_);

    int init_failed = w->init_failed;
    int clean = w->state == W_EXITING && w->proc.exit_code == 0 && w->proc.term_signal == 0;
    teardown(w);

    for (int k = 0; k < nunstarted && pool->opts_.on_start != NULL; k++)
        pool->opts_.on_start(unstarted[k], 0);
    while (done != NULL) {
        t = done;
        done = t->next_;
        br__pp_complete(pool, t, t->status_, NULL, 0);
    }
    if (why[0] != '\0')
        br__pp_mark_broken(pool, why, NULL, 0);
    else if (init_failed && !clean)
        br__pp_mark_broken(pool, "a worker's initializer failed; the process pool is not usable anymore", NULL,
                           0);
}

int br__ppw_reap(br__ppw_t *w)
{
    int r = br_proc_poll(&w->proc);
    if (r == 0)
        return 0;
    if (r < 0) {
        /* Reaped by someone else (a waitpid(-1) elsewhere in the process,
         * or SIGCHLD ignored): it is gone, how is unknown. */
        w->proc.exited = 1;
        w->proc.exit_code = -1;
        w->proc.term_signal = 0;
    }
    br__ppw_drain(w); /* results written before it died still count */
    settle(w);
    return 1;
}

static void on_exit_ready(br_io_t *io, unsigned revents)
{
    br__ppw_t *w = io->handle.data;
    br_procpool_t *pool = w->pool;
    if (!br__ppw_reap(w))
        return;
    br__pp_fill(pool);
    br__pp_dispatch(pool);
    br__pp_maybe_final(pool);
}

/* ------------------------------------------------------------ spawn */

static int default_spawn(br_procpool_t *pool, const int *fds, int nfds, br_proc_t *out)
{
    br_spawn_options_t o = {.path = pool->argv_[0], .argv = pool->argv_, .envp = pool->envp_, .fds = fds,
                            .nfds = nfds};
    return br_proc_spawn(out, &o);
}

int br__ppw_spawn(br_procpool_t *pool, unsigned i)
{
    br__ppw_t *w = calloc(1, sizeof *w);
    if (w == NULL)
        return -ENOMEM;
    w->pool = pool;
    w->index = i;
    w->statm_fd = -1;
    w->proc.pid = -1;
    w->proc.pidfd = -1;
    w->next_seq = 1;
    for (int k = 0; k < 4; k++)
        w->efd[k] = -1;
    size_t one = br_ring_mem_size(pool->opts_.ring_bytes);
    w->mem_size = br_pp_mem_size(pool->opts_.ring_bytes);

    int err = 0, memfd = memfd_create("braid-worker", MFD_CLOEXEC);
    if (memfd < 0) {
        err = -errno;
        goto fail;
    }
    if (ftruncate(memfd, (off_t)w->mem_size) != 0) {
        err = -errno;
        goto fail;
    }
    w->mem = mmap(NULL, w->mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (w->mem == MAP_FAILED) {
        w->mem = NULL;
        err = -errno;
        goto fail;
    }
    w->slots = (uint64_t *)(void *)((char *)w->mem + 2 * one);
    for (int k = 0; k < 4; k++) {
        if ((w->efd[k] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
            err = -errno;
            goto fail;
        }
    }
    if ((err = br_ring_format(w->mem, one)) < 0 || (err = br_ring_format((char *)w->mem + one, one)) < 0 ||
        (err = br_ring_attach(&w->tx, w->mem, one, w->efd[0], w->efd[1])) < 0 ||
        (err = br_ring_attach(&w->rx, (char *)w->mem + one, one, w->efd[2], w->efd[3])) < 0)
        goto fail;

    int fds[BR_PP_NFDS] = {memfd, w->efd[0], w->efd[1], w->efd[2], w->efd[3]};
    err = pool->opts_.spawn != NULL ? pool->opts_.spawn(pool->opts_.spawn_ctx, fds, BR_PP_NFDS, &w->proc)
                                    : default_spawn(pool, fds, BR_PP_NFDS, &w->proc);
    if (err < 0)
        goto fail;
    close_fd(memfd);
    memfd = -1;

    /* From here on the process exists: every failure kills it, and the
     * handles are there for its death to be seen. */
    if (pool->opts_.max_worker_memory != 0) {
        /* an fd per worker only when there is a cap to check: each worker
         * holds about five more in this process, so a 1024-fd limit already
         * stops near 180 workers */
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/statm", w->proc.pid);
        w->statm_fd = open(path, O_RDONLY | O_CLOEXEC); /* -1: no memory cap for it */
    }
    w->state = W_RUNNING;
    /* These cannot fail: the fds are open, and init only links the
     * handles into the loop. Without a pidfd, io_exit stays unstarted
     * (bound to the result fd, which it never watches) and the pool's poll
     * timer reaps. */
    (void)br_io_init(pool->loop, &w->io_result, w->efd[2]);
    (void)br_io_init(pool->loop, &w->io_space, w->efd[1]);
    (void)br_io_init(pool->loop, &w->io_exit, w->proc.pidfd >= 0 ? w->proc.pidfd : w->efd[2]);
    (void)br_timer_init(pool->loop, &w->timeout);
    w->io_result.handle.data = w->io_space.handle.data = w;
    w->io_exit.handle.data = w->timeout.handle.data = w;
    if ((err = br_io_start(&w->io_result, BR_READABLE, on_result)) < 0 ||
        (err = br_io_start(&w->io_space, BR_READABLE, on_space)) < 0 ||
        (w->proc.pidfd >= 0 && (err = br_io_start(&w->io_exit, BR_READABLE, on_exit_ready)) < 0)) {
        (void)br_proc_kill(&w->proc, SIGKILL);
        (void)br_proc_wait(&w->proc, -1);
        teardown(w); /* frees w once its handles have closed */
        br__mutex_lock(&pool->mu_);
        pool->nprocs_++;
        br__mutex_unlock(&pool->mu_);
        return err;
    }
    if (w->proc.pidfd < 0)
        br__pp_reap_watch(pool);

    /* INIT first, before a submit can see the worker and send it a task. */
    if (pool->init_payload_ != NULL)
        (void)br__ppw_send(w, BR_PP_MSG_INIT, 0, pool->init_payload_, pool->opts_.init_len);
    br__mutex_lock(&pool->mu_);
    pool->workers_[i] = w;
    pool->pids_[i] = w->proc.pid;
    pool->nprocs_++;
    br__mutex_unlock(&pool->mu_);
    /* Reads what the worker may have written already (its READY) and arms
     * the ring: a worker writes its eventfd only once armed. */
    br__ppw_drain(w);
    return 0;
fail:
    if (memfd >= 0)
        close_fd(memfd);
    for (int k = 0; k < 4; k++)
        if (w->efd[k] >= 0)
            close_fd(w->efd[k]);
    if (w->mem != NULL)
        (void)munmap(w->mem, w->mem_size);
    free(w);
    return err;
}
