/*
 * ring.c — br_ring_t, a single-producer single-consumer message ring in
 * shared memory.
 *
 * Layout of the mapping:
 *
 *   +-- br_ring_shared_t (3 cache lines) --+-- data: cap bytes ---------------+
 *   | magic cap | head rwait | tail wwait  | rec rec PAD | ... rec rec        |
 *   +--------------------------------------+----------------------------------+
 *
 * head and tail are byte counters that only grow (64 bits: they never wrap
 * in practice); a position in the data area is counter & (cap - 1), and
 * tail - head is the number of bytes in use. The reader owns head and
 * reader_waiting, the writer owns tail, writer_waiting and space_need; each
 * group has a cache line to itself so that the two sides do not bounce one
 * line between their cores.
 *
 * A record is a 24-byte header {len, type, flags, reserved, tag} and `len`
 * payload bytes, its total rounded up to 8. A record never wraps: when the
 * space left before the end of the data area is too small for the next
 * record, the writer fills it with a PAD record (or, when even a header
 * would not fit, leaves it blank: both sides skip a tail shorter than a
 * header without looking at it) and goes on at offset 0. PAD is a bit in
 * `flags`, not a reserved `type`, so every type value stays free for the
 * caller. A fragment carries at most cap/4 - 24 payload bytes, so its
 * record takes at most cap/4 and a pad before it less than that: the
 * writer never needs more than half the ring free to make progress.
 *
 * Publication: the writer copies a record (pad included) into the data
 * area and only then stores tail with release ordering; the reader loads
 * tail with acquire ordering, so it sees whole records or nothing. The
 * reader frees space by storing head with release ordering after it is
 * done with the bytes (br_ring_release); the writer loads head with acquire
 * ordering before it overwrites them.
 *
 * Wakeups. The reader asks to be woken by setting reader_waiting and then
 * looking at tail again; the writer publishes tail and then looks at
 * reader_waiting, and if it is set, clears it (an exchange, so only one
 * signal per sleep) and writes data_fd. Each side puts a seq_cst fence
 * between its store and its load. Without the fences this is the classic
 * store-buffer race: both loads could return the old values, the writer
 * would not signal and the reader would sleep over a non-empty ring. With
 * them, at least one side sees the other's store. The writer reads
 * reader_waiting with a plain load first so that a busy pair (nobody
 * asleep) never writes to the other side's cache line. Space works the same
 * way with writer_waiting and space_fd, except that the reader signals only
 * once the free space reaches `space_need`, the amount the writer's last
 * failed br_ring_send needed: a writer stuck on a large fragment is not
 * woken for every small release.
 *
 * Trust. The other side may crash half-way or scribble on the mapping.
 * Nothing read from shared memory is trusted: cap comes from the local
 * br_ring_t, head and tail are checked to be aligned and at most cap apart,
 * and a record header is copied out once and checked (flags, reserved bits,
 * length against the published bytes and the end of the data area) before
 * any payload pointer is formed. A bad value gives -EPROTO; it can never
 * make this side read or write outside the mapping. A writer killed mid
 * message leaves fragments without a LAST; a record it was copying when it
 * died was never published, so the reader never sees it.
 */
#include "internal.h"

#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LINE 64
#define RING_MAGIC UINT64_C(0x3130676e69527262) /* "brRing01" little-endian */
#define MIN_CAP ((uint64_t)4096)
#define MAX_CAP ((uint64_t)1 << 32) /* keeps a fragment's len in 32 bits */

#define FLAG_PAD 0x80000000u

struct br_ring_shared_s {
    /* Written by br_ring_format, read-only afterwards. */
    uint64_t magic;
    uint64_t cap;
    /* The reader's line. */
    _Alignas(LINE) uint64_t head;
    uint32_t reader_waiting; /* set by the reader, cleared by either */
    /* The writer's line. */
    _Alignas(LINE) uint64_t tail;
    uint64_t space_need;     /* free bytes the blocked writer waits for */
    uint32_t writer_waiting; /* set by the writer, cleared by either */
};

#define SHARED_SIZE ((sizeof(br_ring_shared_t) + LINE - 1) & ~(size_t)(LINE - 1))
_Static_assert(sizeof(br_ring_shared_t) == 3 * LINE, "one line per owner");

/* A record's header, as it sits in the data area (copied in and out with
 * memcpy: the data area is shared, so never read a field twice). */
typedef struct rec_s {
    uint32_t len;      /* payload bytes that follow */
    uint32_t type;
    uint32_t flags;    /* BR_RING_FIRST | BR_RING_LAST, or FLAG_PAD alone */
    uint32_t reserved; /* 0 */
    uint64_t tag;
} rec_t;

#define REC ((uint64_t)sizeof(rec_t))
_Static_assert(sizeof(rec_t) == 24, "record header layout");

static uint64_t round8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }
static uint64_t max_payload(uint64_t cap) { return cap / 4 - REC; }
static int is_pow2(uint64_t n) { return n != 0 && (n & (n - 1)) == 0; }

/* ------------------------------------------------------------ eventfds */

/* Adds 1 to an eventfd. A full counter (EAGAIN) still leaves the fd
 * readable, which is all a sleeper needs. 0 or -errno. */
static int signal_fd(int fd)
{
    uint64_t one = 1;
    for (;;) {
        ssize_t n = write(fd, &one, sizeof one);
        if (n == (ssize_t)sizeof one || (n < 0 && errno == EAGAIN))
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 ? -errno : -EIO;
    }
}

/* Resets an eventfd's counter. Nothing to read (EAGAIN) is fine: the
 * wakeup was consumed by an earlier drain. 0 or -errno. */
static int drain_fd(int fd)
{
    uint64_t count;
    for (;;) {
        ssize_t n = read(fd, &count, sizeof count);
        if (n == (ssize_t)sizeof count || (n < 0 && errno == EAGAIN))
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 ? -errno : -EIO;
    }
}

/* Waits until fd is readable or the deadline (-1: none) passes. 1 readable,
 * 0 timed out, -EINTR, -errno. */
static int wait_readable(int fd, int64_t deadline)
{
    struct timespec ts, *tsp = NULL;
    if (deadline >= 0) {
        int64_t left = deadline - br_now_ns();
        if (left < 0)
            left = 0;
        ts.tv_sec = (time_t)(left / 1000000000);
        ts.tv_nsec = (long)(left % 1000000000);
        tsp = &ts;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n = ppoll(&p, 1, tsp, NULL);
    if (n < 0)
        return -errno;
    if (n == 0)
        return 0;
    if (p.revents & POLLNVAL)
        return -EBADF;
    return 1;
}

static int64_t deadline_after(int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return -1;
    int64_t now = br_now_ns();
    /* A timeout too large to add is as good as forever. */
    return timeout_ns <= INT64_MAX - now ? now + timeout_ns : -1;
}

/* ------------------------------------------------------------ set up */

size_t br_ring_mem_size(size_t capacity)
{
    uint64_t cap = MIN_CAP;
    if ((uint64_t)capacity > MAX_CAP)
        return 0;
    while (cap < capacity)
        cap <<= 1;
    if (cap > SIZE_MAX - SHARED_SIZE)
        return 0;
    return SHARED_SIZE + (size_t)cap;
}

/* The data capacity a mapping of mem_size bytes holds, or 0 if none. */
static uint64_t cap_for(const void *mem, size_t mem_size)
{
    /* 8 is what the 64-bit atomics and the records need; a mapping is
     * page-aligned anyway. */
    if (mem == NULL || (uintptr_t)mem % 8 != 0 || mem_size <= SHARED_SIZE)
        return 0;
    uint64_t cap = (uint64_t)(mem_size - SHARED_SIZE);
    if (!is_pow2(cap) || cap < MIN_CAP || cap > MAX_CAP)
        return 0;
    return cap;
}

int br_ring_format(void *mem, size_t mem_size)
{
    uint64_t cap = cap_for(mem, mem_size);
    if (cap == 0)
        return -EINVAL;
    br_ring_shared_t *s = mem;
    /* The magic goes last, with release: a side that sees it (through
     * whatever channel told it the ring exists) sees a clean header. */
    __atomic_store_n(&s->magic, 0, __ATOMIC_RELAXED);
    s->cap = cap;
    s->head = 0;
    s->reader_waiting = 0;
    s->tail = 0;
    s->space_need = 0;
    s->writer_waiting = 0;
    __atomic_store_n(&s->magic, RING_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

int br_ring_attach(br_ring_t *r, void *mem, size_t mem_size, int data_fd, int space_fd)
{
    uint64_t cap = cap_for(mem, mem_size);
    if (cap == 0 || data_fd < 0 || space_fd < 0)
        return -EINVAL;
    br_ring_shared_t *s = mem;
    if (__atomic_load_n(&s->magic, __ATOMIC_ACQUIRE) != RING_MAGIC ||
        __atomic_load_n(&s->cap, __ATOMIC_RELAXED) != cap)
        return -EINVAL;
    r->shared_ = s;
    r->data_ = (unsigned char *)mem + SHARED_SIZE;
    r->cap_ = cap; /* from here on, the shared copy is never read again */
    r->data_fd = data_fd;
    r->space_fd = space_fd;
    return 0;
}

/* ------------------------------------------------------------ writer */

/* Bytes in use, or -1 if head and tail are impossible (a corrupt peer). */
static int64_t used_bytes(const br_ring_t *r, uint64_t head, uint64_t tail)
{
    uint64_t used = tail - head;
    if (used > r->cap_ || ((head | tail) & 7) != 0)
        return -1;
    return (int64_t)used;
}

/* Called by the writer after a store to tail: wakes the reader if it
 * asked. 0 or -errno. */
static int notify_reader(br_ring_t *r)
{
    br_ring_shared_t *s = r->shared_;
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* see the top: store-buffer race */
    if (__atomic_load_n(&s->reader_waiting, __ATOMIC_RELAXED) == 0)
        return 0;
    if (__atomic_exchange_n(&s->reader_waiting, 0, __ATOMIC_ACQ_REL) == 0)
        return 0;
    return signal_fd(r->data_fd);
}

static void put_rec(br_ring_t *r, uint64_t off, uint32_t len, uint32_t type, uint32_t flags,
                    uint64_t tag)
{
    rec_t h = {.len = len, .type = type, .flags = flags, .reserved = 0, .tag = tag};
    memcpy(r->data_ + off, &h, sizeof h);
}

int br_ring_send(br_ring_t *r, br_ring_msg_t *m)
{
    br_ring_shared_t *s = r->shared_;
    uint64_t cap = r->cap_;

    if ((m->payload == NULL && m->len != 0) || m->sent_ > m->len ||
        (m->started_ != 0 && m->started_ != 1))
        return -EINVAL;
    if (m->started_ && m->sent_ == m->len)
        return 0; /* written in full by an earlier call */

    uint64_t tail = __atomic_load_n(&s->tail, __ATOMIC_RELAXED);
    uint64_t head = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE);
    if (used_bytes(r, head, tail) < 0)
        return -EPROTO;

    for (;;) {
        size_t left = m->len - m->sent_;
        uint64_t p = left < max_payload(cap) ? left : max_payload(cap);
        uint64_t size = round8(REC + p);
        uint64_t off = tail & (cap - 1);
        uint64_t skip = cap - off < size ? cap - off : 0; /* the pad, if any */

        if (cap - (tail - head) < skip + size) {
            /* Look again: the reader may have freed space since. */
            head = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE);
            if (used_bytes(r, head, tail) < 0)
                return -EPROTO;
            if (cap - (tail - head) < skip + size) {
                /* For br_ring_release: wake us when this much is free. */
                __atomic_store_n(&s->space_need, skip + size, __ATOMIC_RELAXED);
                return -EAGAIN;
            }
        }

        if (skip >= REC)
            put_rec(r, off, (uint32_t)(skip - REC), 0, FLAG_PAD, 0);
        if (skip != 0)
            off = 0;
        uint32_t flags = (m->started_ ? 0 : BR_RING_FIRST) | (p == left ? BR_RING_LAST : 0);
        put_rec(r, off, (uint32_t)p, m->type, flags, m->tag);
        if (p != 0)
            memcpy(r->data_ + off + REC, (const unsigned char *)m->payload + m->sent_, (size_t)p);
        tail += skip + size;
        __atomic_store_n(&s->tail, tail, __ATOMIC_RELEASE);
        m->sent_ += (size_t)p;
        m->started_ = 1;

        /* One fragment at a time, so the reader can start on a message
         * larger than the ring while we copy the rest. */
        int err = notify_reader(r);
        if (err != 0)
            return err;
        if (m->sent_ == m->len)
            return 0;
    }
}

/* ------------------------------------------------------------ reader */

/* Copies the record header at `off` out of the shared area (once: the
 * peer could change it under us) and checks what can be checked alone. */
static int get_rec(const br_ring_t *r, uint64_t off, rec_t *h)
{
    memcpy(h, r->data_ + off, sizeof *h);
    if (h->reserved != 0)
        return -EPROTO;
    if (h->flags & FLAG_PAD)
        return h->flags == FLAG_PAD && h->len == r->cap_ - off - REC ? 0 : -EPROTO;
    if ((h->flags & ~(BR_RING_FIRST | BR_RING_LAST)) != 0 || h->len > max_payload(r->cap_))
        return -EPROTO;
    return 0;
}

int br_ring_recv(br_ring_t *r, br_ring_frag_t *f)
{
    br_ring_shared_t *s = r->shared_;
    uint64_t cap = r->cap_;
    uint64_t head = __atomic_load_n(&s->head, __ATOMIC_RELAXED);
    uint64_t tail = __atomic_load_n(&s->tail, __ATOMIC_ACQUIRE);
    int64_t used = used_bytes(r, head, tail);
    rec_t h = {0};
    int err;

    if (used < 0)
        return -EPROTO;
    if (used == 0)
        return -EAGAIN;

    /* Skip the pad (or the blank end too short for a header) in front of
     * the record. It is freed together with the record by release. */
    uint64_t off = head & (cap - 1), skip = 0;
    if (cap - off < REC) {
        skip = cap - off;
    } else {
        if ((uint64_t)used < REC)
            return -EPROTO; /* the writer publishes whole records only */
        if ((err = get_rec(r, off, &h)) != 0)
            return err;
        if (h.flags == FLAG_PAD)
            skip = cap - off;
    }
    if (skip != 0) {
        if ((uint64_t)used < skip + REC) /* a pad alone: its record is not out yet */
            return (uint64_t)used == skip ? -EAGAIN : -EPROTO;
        off = 0;
        if ((err = get_rec(r, 0, &h)) != 0)
            return err;
        if (h.flags == FLAG_PAD)
            return -EPROTO; /* a record always fits at offset 0 */
    }

    /* The record must end within the published bytes (and so within the
     * data area, since it cannot wrap). */
    uint64_t size = round8(REC + h.len);
    if (size > (uint64_t)used - skip || off + size > cap)
        return -EPROTO;

    f->type = h.type;
    f->flags = h.flags;
    f->tag = h.tag;
    f->data = r->data_ + off + REC;
    f->len = h.len;
    f->size_ = skip + size;
    return 0;
}

/* Called by the reader after a store to head: wakes the writer if it asked
 * and what it needs is now free. 0 or -errno. */
static int notify_writer(br_ring_t *r, uint64_t head)
{
    br_ring_shared_t *s = r->shared_;
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* see the top: store-buffer race */
    /* Acquire, paired with the release in br_ring_arm_space: the writer
     * stored space_need before it set writer_waiting. A writer that is
     * waiting does not move tail, so this free count can only grow. */
    if (__atomic_load_n(&s->writer_waiting, __ATOMIC_ACQUIRE) == 0)
        return 0;
    uint64_t tail = __atomic_load_n(&s->tail, __ATOMIC_ACQUIRE);
    uint64_t need = __atomic_load_n(&s->space_need, __ATOMIC_RELAXED);
    if (used_bytes(r, head, tail) >= 0 && r->cap_ - (tail - head) < need)
        return 0;
    if (__atomic_exchange_n(&s->writer_waiting, 0, __ATOMIC_ACQ_REL) == 0)
        return 0;
    return signal_fd(r->space_fd);
}

void br_ring_release(br_ring_t *r, br_ring_frag_t *f)
{
    br_ring_shared_t *s = r->shared_;
    uint64_t head = __atomic_load_n(&s->head, __ATOMIC_RELAXED);
    uint64_t tail = __atomic_load_n(&s->tail, __ATOMIC_ACQUIRE);

    /* A fragment not from the last recv (or released twice) is ignored
     * rather than allowed to push head past tail. */
    if (f->size_ == 0 || f->size_ > tail - head || ((head | f->size_) & 7) != 0)
        return;
    head += f->size_;
    f->size_ = 0;
    f->data = NULL;
    __atomic_store_n(&s->head, head, __ATOMIC_RELEASE);

    /* release has no way to report an error. A write to a valid eventfd
     * cannot fail, so a failure means the caller closed space_fd under us
     * (or the number now names another file): carrying on would leave the
     * writer asleep, or write into someone else's file. */
    int err = notify_writer(r, head);
    if (err != 0)
        br__fatal("br_ring_release: write(space_fd)", -err);
}

/* ------------------------------------------------------------ waiting */

static int has_data(br_ring_t *r)
{
    br_ring_shared_t *s = r->shared_;
    return __atomic_load_n(&s->tail, __ATOMIC_ACQUIRE) !=
           __atomic_load_n(&s->head, __ATOMIC_RELAXED);
}

/* 1 if br_ring_send can write its next fragment (or would report a corrupt
 * ring: either way it should be called). */
static int has_space(br_ring_t *r)
{
    br_ring_shared_t *s = r->shared_;
    uint64_t tail = __atomic_load_n(&s->tail, __ATOMIC_RELAXED);
    uint64_t head = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE);
    uint64_t need = __atomic_load_n(&s->space_need, __ATOMIC_RELAXED);
    return used_bytes(r, head, tail) < 0 || r->cap_ - (tail - head) >= need;
}

int br_ring_arm_data(br_ring_t *r)
{
    br_ring_shared_t *s = r->shared_;
    __atomic_store_n(&s->reader_waiting, 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* see the top: store-buffer race */
    if (!has_data(r))
        return 0;
    /* Not going to sleep: spare the writer a signal. If it took the flag
     * already, its signal leaves a stale count, which waiters tolerate. */
    __atomic_store_n(&s->reader_waiting, 0, __ATOMIC_RELAXED);
    return 1;
}

void br_ring_disarm_data(br_ring_t *r)
{
    /* A signal the writer decided on already leaves a stale count, which
     * waiters tolerate (as in br_ring_arm_data). */
    __atomic_store_n(&r->shared_->reader_waiting, 0, __ATOMIC_RELAXED);
}

int br_ring_arm_space(br_ring_t *r)
{
    br_ring_shared_t *s = r->shared_;
    /* Release: publishes space_need (stored by the failed send) to the
     * reader, who reads it once it sees the flag. */
    __atomic_store_n(&s->writer_waiting, 1, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!has_space(r))
        return 0;
    __atomic_store_n(&s->writer_waiting, 0, __ATOMIC_RELAXED);
    return 1;
}

/* The body of both waits: arm, sleep on fd, drain it, look again. A
 * readable fd with nothing to show for it is a stale signal (see arm);
 * go back to sleep. A wait that finds data (or space) at once returns
 * without a syscall and leaves the fd alone: a stale count there costs the
 * next wait that sleeps one extra round, which is cheaper than a read()
 * on every call. */
static int wait_for(br_ring_t *r, int64_t timeout_ns, int (*arm)(br_ring_t *),
                    int (*ready)(br_ring_t *), uint32_t *waiting, int fd)
{
    int64_t deadline = deadline_after(timeout_ns);

    for (;;) {
        if (arm(r))
            return 1;
        if (timeout_ns == 0)
            break;
        int n = wait_readable(fd, deadline);
        if (n == 0)
            break;
        if (n < 0) {
            __atomic_store_n(waiting, 0, __ATOMIC_RELAXED);
            return n;
        }
        int err = drain_fd(fd);
        if (err != 0) {
            __atomic_store_n(waiting, 0, __ATOMIC_RELAXED);
            return err;
        }
    }
    /* Timed out. Disarm, and report what arrived at the last moment. */
    __atomic_store_n(waiting, 0, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return ready(r);
}

int br_ring_wait_data(br_ring_t *r, int64_t timeout_ns)
{
    return wait_for(r, timeout_ns, br_ring_arm_data, has_data, &r->shared_->reader_waiting,
                    r->data_fd);
}

int br_ring_wait_space(br_ring_t *r, int64_t timeout_ns)
{
    return wait_for(r, timeout_ns, br_ring_arm_space, has_space, &r->shared_->writer_waiting,
                    r->space_fd);
}

/* ------------------------------------------------------------ whole messages */

/* Messages past this size give their buffer back after use, so that one
 * large message does not pin its memory for the ring's lifetime. */
#define JOIN_KEEP ((size_t)4 << 20)

static int join_append(br_ring_joiner_t *j, const unsigned char *data, size_t len)
{
    if (len > SIZE_MAX - j->len_)
        return -ENOMEM;
    if (j->len_ + len > j->cap_) {
        size_t cap = j->cap_ != 0 ? j->cap_ : 4096;
        while (cap < j->len_ + len)
            cap = cap <= SIZE_MAX / 2 ? cap * 2 : j->len_ + len;
        unsigned char *buf = realloc(j->buf_, cap);
        if (buf == NULL)
            return -ENOMEM;
        j->buf_ = buf;
        j->cap_ = cap;
    }
    if (len != 0)
        memcpy(j->buf_ + j->len_, data, len);
    j->len_ += len;
    return 0;
}

int br_ring_recv_whole(br_ring_t *r, br_ring_joiner_t *j, br_ring_frag_t *m)
{
    for (;;) {
        br_ring_frag_t f;
        int err = br_ring_recv(r, &f);
        if (err != 0)
            return err;
        if (f.flags & BR_RING_FIRST) {
            if (f.flags & BR_RING_LAST) {
                /* The common case: one fragment, handed out in place. */
                j->active_ = 0;
                *m = f;
                return 0;
            }
            j->active_ = 1;
            j->len_ = 0;
            j->type_ = f.type;
            j->tag_ = f.tag;
        } else if (!j->active_ || f.type != j->type_ || f.tag != j->tag_) {
            br_ring_release(r, &f);
            j->active_ = 0;
            return -EPROTO;
        }
        err = join_append(j, f.data, f.len);
        int last = (f.flags & BR_RING_LAST) != 0;
        br_ring_release(r, &f);
        if (err != 0) {
            /* The rest of the message is dropped as out of order. */
            j->active_ = 0;
            return err;
        }
        if (last) {
            j->active_ = 0;
            m->type = j->type_;
            m->flags = BR_RING_FIRST | BR_RING_LAST;
            m->tag = j->tag_;
            m->data = j->buf_;
            m->len = j->len_;
            m->size_ = 0; /* nothing of the ring to release */
            return 0;
        }
    }
}

void br_ring_release_whole(br_ring_t *r, br_ring_joiner_t *j, br_ring_frag_t *m)
{
    if (m->size_ != 0) {
        br_ring_release(r, m);
        return;
    }
    m->data = NULL;
    if (j->cap_ > JOIN_KEEP && !j->active_) {
        free(j->buf_);
        j->buf_ = NULL;
        j->cap_ = j->len_ = 0;
    }
}

void br_ring_joiner_free(br_ring_joiner_t *j)
{
    free(j->buf_);
    j->buf_ = NULL;
    j->cap_ = j->len_ = 0;
    j->active_ = 0;
}
