/*
 * ppworker.c — br_ppworker_t, the worker's end of a process pool, and the
 * shared layout both ends compute (br_pp_mem_size).
 *
 * A worker process inherits fds 3..7 (braid.h, "process pool: shared
 * layout"). It maps the memfd, attaches a reader to the task ring and a
 * writer to the result ring, and from then on only moves whole messages:
 * fragment reassembly is br_ring_joiner_t's, the slot compare-and-swap is
 * br_ppworker_claim's, so a worker written in another language (braid's
 * Python workers, the C test worker) is a loop of recv / claim / send.
 *
 * The ring size is not passed to the worker: it follows from the memfd's
 * size (two rings and the slot page), and br_ring_attach checks the rest.
 *
 * Every wait returns -EINTR when a signal handler ran, with all progress
 * kept (in the joiner for a message being received, in the caller's
 * br_ring_msg_t for one being sent), so an embedding interpreter can run
 * its handlers and call again.
 */
#include "internal.h"

#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_SPIN_NS 50000

size_t br_pp_mem_size(size_t ring_bytes)
{
    size_t one = br_ring_mem_size(ring_bytes);
    if (one == 0 || one > (SIZE_MAX - BR_PP_SLOTS_BYTES) / 2)
        return 0;
    return 2 * one + BR_PP_SLOTS_BYTES;
}

int br_ppworker_attach(br_ppworker_t *w)
{
    struct stat st;

    memset(w, 0, sizeof *w);
    w->spin_ns = DEFAULT_SPIN_NS;
    if (fstat(BR_PP_FD_MEM, &st) != 0)
        return -errno;
    if (st.st_size <= BR_PP_SLOTS_BYTES || (st.st_size - BR_PP_SLOTS_BYTES) % 2 != 0)
        return -EINVAL;
    size_t total = (size_t)st.st_size;
    size_t one = (total - BR_PP_SLOTS_BYTES) / 2;
    void *mem = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, BR_PP_FD_MEM, 0);
    if (mem == MAP_FAILED)
        return -errno;
    /* br_ring_attach checks that each half holds a formatted ring whose
     * capacity matches `one`: a memfd of any other shape is refused. */
    int err = br_ring_attach(&w->tasks, mem, one, BR_PP_FD_TASK_DATA, BR_PP_FD_TASK_SPACE);
    if (err == 0)
        err = br_ring_attach(&w->results, (char *)mem + one, one, BR_PP_FD_RESULT_DATA,
                             BR_PP_FD_RESULT_SPACE);
    if (err != 0) {
        (void)munmap(mem, total);
        return err;
    }
    w->mem_ = mem;
    w->mem_size_ = total;
    w->slots_ = (uint64_t *)(void *)((char *)mem + 2 * one);
    return 0;
}

void br_ppworker_release(br_ppworker_t *w)
{
    if (!w->holding_)
        return;
    br_ring_release_whole(&w->tasks, &w->join_, &w->msg_);
    w->holding_ = 0;
}

int br_ppworker_recv(br_ppworker_t *w, br_ring_frag_t *m, int64_t timeout_ns)
{
    int64_t deadline = -1;
    int spun = 0;

    br_ppworker_release(w);
    if (timeout_ns >= 0) {
        int64_t now = br_now_ns();
        deadline = timeout_ns <= INT64_MAX - now ? now + timeout_ns : -1;
    }
    for (;;) {
        int err = br_ring_recv_whole(&w->tasks, &w->join_, &w->msg_);
        if (err == 0) {
            w->holding_ = 1;
            *m = w->msg_;
            return 0;
        }
        if (err != -EAGAIN)
            return err;
        if (!spun && w->spin_ns > 0) {
            /* Peek only: br_ring_recv consumes nothing until released. */
            int64_t until = br_now_ns() + w->spin_ns;
            br_ring_frag_t f;
            while ((err = br_ring_recv(&w->tasks, &f)) == -EAGAIN && br_now_ns() < until) {
            }
            spun = 1;
            if (err != -EAGAIN)
                continue;
        }
        int64_t left = -1;
        if (deadline >= 0) {
            left = deadline - br_now_ns();
            if (left <= 0)
                return -ETIMEDOUT;
        }
        err = br_ring_wait_data(&w->tasks, left);
        if (err < 0)
            return err;
        if (err == 0 && deadline >= 0 && br_now_ns() >= deadline)
            return -ETIMEDOUT;
    }
}

int br_ppworker_send(br_ppworker_t *w, br_ring_msg_t *m)
{
    for (;;) {
        int err = br_ring_send(&w->results, m);
        if (err != -EAGAIN)
            return err;
        err = br_ring_wait_space(&w->results, -1);
        if (err < 0)
            return err;
    }
}

int br_ppworker_claim(br_ppworker_t *w, uint64_t seq)
{
    uint64_t *slot = &w->slots_[seq % BR_PP_SLOTS];
    uint64_t expect = BR_PP_SLOT_WORD(seq, BR_PP_SLOT_QUEUED);
    if (__atomic_compare_exchange_n(slot, &expect, BR_PP_SLOT_WORD(seq, BR_PP_SLOT_RUNNING), 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return 1;
    /* Cancelled (or a slot that does not name this task: not ours to run
     * either). SKIPPED has no payload, so it goes out in one fragment or
     * not at all, and a call again after -EINTR sends it once. */
    br_ring_msg_t skipped = {.type = BR_PP_MSG_SKIPPED, .tag = seq};
    int err = br_ppworker_send(w, &skipped);
    return err != 0 ? err : 0;
}

uint64_t br_ppworker_acked(const br_ppworker_t *w)
{
    if (w->slots_ == NULL)
        return 0;
    return __atomic_load_n(&w->slots_[BR_PP_ACK_INDEX], __ATOMIC_ACQUIRE);
}

void br_ppworker_detach(br_ppworker_t *w)
{
    if (w->mem_ == NULL)
        return;
    br_ppworker_release(w);
    br_ring_joiner_free(&w->join_);
    (void)munmap(w->mem_, w->mem_size_);
    w->mem_ = NULL;
    w->slots_ = NULL;
}
