/* test_ring.c — br_ring_t: the shared-memory SPSC message ring. */
#include "harness.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>

/* White-box: the layout ring.c puts in the mapping. The header is three
 * cache lines (magic, cap | head, reader_waiting | tail, ...); records are
 * {u32 len, u32 type, u32 flags, u32 reserved, u64 tag} + payload, rounded
 * up to 8. Only the corruption tests look at these. */
#define SHARED_SIZE 192
#define REC 24
#define OFF_MAGIC 0
#define OFF_CAP 8
#define OFF_HEAD 64
#define OFF_TAIL 128
#define OFF_READER_WAITING 72  /* u32 after head */
#define OFF_WRITER_WAITING 144 /* u32 after tail and space_need */
#define FLAG_PAD 0x80000000u

static uint64_t *field(void *mem, size_t off) { return (uint64_t *)((char *)mem + off); }
static uint64_t round8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

/* ------------------------------------------------------------ fixtures
 * A ring in a MAP_SHARED mapping with a writer view and a reader view. */

typedef struct fixture_s {
    void *mem;
    size_t size;
    size_t cap;
    int data_fd, space_fd;
    br_ring_t w, r;
} fixture_t;

static int new_eventfd(void)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CHECK(fd >= 0);
    return fd;
}

static void fx_open(fixture_t *fx, size_t cap)
{
    fx->size = br_ring_mem_size(cap);
    CHECK(fx->size > SHARED_SIZE);
    fx->cap = fx->size - SHARED_SIZE;
    fx->mem = mmap(NULL, fx->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(fx->mem != MAP_FAILED);
    fx->data_fd = new_eventfd();
    fx->space_fd = new_eventfd();
    CHECK_EQ(br_ring_format(fx->mem, fx->size), 0);
    CHECK_EQ(br_ring_attach(&fx->w, fx->mem, fx->size, fx->data_fd, fx->space_fd), 0);
    CHECK_EQ(br_ring_attach(&fx->r, fx->mem, fx->size, fx->data_fd, fx->space_fd), 0);
}

static void fx_close(fixture_t *fx)
{
    CHECK_EQ(munmap(fx->mem, fx->size), 0);
    CHECK_EQ(close(fx->data_fd), 0);
    CHECK_EQ(close(fx->space_fd), 0);
}

static int readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n = poll(&p, 1, 0);
    CHECK(n >= 0);
    return n == 1 && (p.revents & POLLIN);
}

/* Payload byte i of message `seed`: every message has its own pattern, so
 * a fragment from the wrong message or the wrong offset shows up. */
static unsigned char pattern(uint64_t seed, size_t i)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + i;
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    return (unsigned char)(x >> 56);
}

static unsigned char *make_payload(uint64_t seed, size_t len)
{
    unsigned char *p = malloc(len ? len : 1);
    CHECK(p != NULL);
    for (size_t i = 0; i < len; i++)
        p[i] = pattern(seed, i);
    return p;
}

static void check_bytes(const unsigned char *data, size_t len, uint64_t seed, size_t at)
{
    for (size_t i = 0; i < len; i++)
        if (data[i] != pattern(seed, at + i)) {
            fprintf(stderr, "message %llu: byte %zu is %u, expected %u\n", (unsigned long long)seed,
                    at + i, data[i], pattern(seed, at + i));
            CHECK(0);
        }
}

/* A small xorshift generator: the same sizes on every run. */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Sizes skewed towards small, with the odd one over a fragment. */
static size_t random_len(uint64_t *s, size_t max)
{
    uint64_t x = rng_next(s);
    switch (x % 4) {
    case 0: return (size_t)(x >> 8) % 16;
    case 1: return (size_t)(x >> 8) % 200;
    case 2: return (size_t)(x >> 8) % (max / 4);
    default: return (size_t)(x >> 8) % max;
    }
}

/* Sends a whole message, sleeping for space as needed. */
static void send_all(br_ring_t *r, uint32_t type, uint64_t tag, const void *p, size_t len)
{
    br_ring_msg_t m = {.type = type, .tag = tag, .payload = p, .len = len};
    for (;;) {
        int rc = br_ring_send(r, &m);
        if (rc == 0)
            return;
        CHECK_EQ(rc, -EAGAIN);
        CHECK(br_ring_wait_space(r, 10 * 1000000000LL) == 1);
    }
}

/* Receives one whole message (waiting for data as needed), checks its
 * fragments' flags, type and tag, and its bytes against `seed`. Returns its
 * length. */
static size_t recv_check(br_ring_t *r, uint32_t type, uint64_t tag, uint64_t seed)
{
    size_t got = 0;
    for (int first = 1;; first = 0) {
        br_ring_frag_t f;
        int rc;
        while ((rc = br_ring_recv(r, &f)) == -EAGAIN)
            CHECK(br_ring_wait_data(r, 10 * 1000000000LL) == 1);
        CHECK_EQ(rc, 0);
        CHECK_EQ(f.type, type);
        CHECK_EQ(f.tag, tag);
        CHECK_EQ(!!(f.flags & BR_RING_FIRST), first);
        CHECK_EQ(f.flags & ~(BR_RING_FIRST | BR_RING_LAST), 0);
        check_bytes(f.data, f.len, seed, got);
        got += f.len;
        int last = (f.flags & BR_RING_LAST) != 0;
        br_ring_release(r, &f);
        if (last)
            return got;
    }
}

/* ------------------------------------------------------------ set up */

TEST(mem_size_rounds_to_power_of_two)
{
    size_t base = br_ring_mem_size(0);
    CHECK_EQ(base, SHARED_SIZE + 4096);
    CHECK_EQ(br_ring_mem_size(1), base);
    CHECK_EQ(br_ring_mem_size(4096), base);
    CHECK_EQ(br_ring_mem_size(4097), SHARED_SIZE + 8192);
    CHECK_EQ(br_ring_mem_size(65536), SHARED_SIZE + 65536);
    CHECK_EQ(br_ring_mem_size(100000), SHARED_SIZE + 131072);
    CHECK_EQ(br_ring_mem_size(SIZE_MAX), 0); /* too large */
}

TEST(format_and_attach_validate)
{
    size_t size = br_ring_mem_size(4096);
    size_t big = br_ring_mem_size(8192);
    void *mem = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED);
    int efd = new_eventfd();
    br_ring_t r;

    /* Zeroed memory is not a ring. */
    CHECK_EQ(br_ring_attach(&r, mem, size, efd, efd), -EINVAL);
    /* Sizes that are not header + a power of two >= 4 KiB. */
    CHECK_EQ(br_ring_format(mem, size - 8), -EINVAL);
    CHECK_EQ(br_ring_format(mem, size + 8), -EINVAL);
    CHECK_EQ(br_ring_format(mem, SHARED_SIZE + 2048), -EINVAL);
    CHECK_EQ(br_ring_format(mem, SHARED_SIZE), -EINVAL);
    CHECK_EQ(br_ring_format(mem, 0), -EINVAL);
    CHECK_EQ(br_ring_format(NULL, size), -EINVAL);
    CHECK_EQ(br_ring_format((char *)mem + 4, size), -EINVAL); /* misaligned */

    CHECK_EQ(br_ring_format(mem, size), 0);
    CHECK_EQ(br_ring_attach(&r, mem, size, efd, efd), 0);
    CHECK_EQ(r.cap_, 4096);
    CHECK_EQ(br_ring_attach(&r, mem, size, -1, efd), -EINVAL);
    CHECK_EQ(br_ring_attach(&r, mem, size, efd, -1), -EINVAL);
    CHECK_EQ(br_ring_attach(&r, NULL, size, efd, efd), -EINVAL);
    /* The recorded capacity must match the mapping's size. */
    CHECK_EQ(br_ring_attach(&r, mem, big, efd, efd), -EINVAL);
    *field(mem, OFF_CAP) = 8192;
    CHECK_EQ(br_ring_attach(&r, mem, size, efd, efd), -EINVAL);
    CHECK_EQ(br_ring_attach(&r, mem, big, efd, efd), 0); /* consistent again */
    *field(mem, OFF_CAP) = 4096;
    /* The magic. */
    *field(mem, OFF_MAGIC) ^= 1;
    CHECK_EQ(br_ring_attach(&r, mem, size, efd, efd), -EINVAL);
    /* Formatting over garbage gives an empty ring. */
    memset(mem, 0xA5, big);
    CHECK_EQ(br_ring_format(mem, big), 0);
    CHECK_EQ(br_ring_attach(&r, mem, big, efd, efd), 0);
    br_ring_frag_t f;
    CHECK_EQ(br_ring_recv(&r, &f), -EAGAIN);
    CHECK_EQ(br_ring_arm_space(&r), 1);

    CHECK_EQ(close(efd), 0);
    CHECK_EQ(munmap(mem, big), 0);
}

/* ------------------------------------------------------------ messages */

TEST(round_trip)
{
    fixture_t fx;
    fx_open(&fx, 4096);
    br_ring_msg_t m = {.type = 7, .tag = 0x1122334455667788ull, .payload = "hello", .len = 5};
    br_ring_frag_t f;

    CHECK_EQ(br_ring_recv(&fx.r, &f), -EAGAIN);
    CHECK_EQ(br_ring_send(&fx.w, &m), 0);
    CHECK_EQ(br_ring_send(&fx.w, &m), 0); /* complete: writes nothing more */
    CHECK_EQ(br_ring_recv(&fx.r, &f), 0);
    CHECK_EQ(f.type, 7);
    CHECK_EQ(f.tag, 0x1122334455667788ull);
    CHECK_EQ(f.flags, BR_RING_FIRST | BR_RING_LAST);
    CHECK_EQ(f.len, 5);
    CHECK(memcmp(f.data, "hello", 5) == 0);
    /* recv without release points at the same fragment again */
    br_ring_frag_t g;
    CHECK_EQ(br_ring_recv(&fx.r, &g), 0);
    CHECK(g.data == f.data);
    br_ring_release(&fx.r, &f);
    br_ring_release(&fx.r, &f); /* a second release is ignored */
    CHECK_EQ(br_ring_recv(&fx.r, &f), -EAGAIN);
    /* the stale copy g is too old to release anything now */
    br_ring_release(&fx.r, &g);
    CHECK_EQ(br_ring_recv(&fx.r, &f), -EAGAIN);

    /* every type value is the caller's, the top bit included */
    unsigned char *p = make_payload(3, 10);
    br_ring_msg_t m2 = {.type = 0xFFFFFFFFu, .tag = 1, .payload = p, .len = 10};
    CHECK_EQ(br_ring_send(&fx.w, &m2), 0);
    CHECK_EQ(recv_check(&fx.r, 0xFFFFFFFFu, 1, 3), 10);
    free(p);
    fx_close(&fx);
}

TEST(zero_length_message)
{
    fixture_t fx;
    fx_open(&fx, 4096);
    br_ring_msg_t m = {.type = 1, .tag = 42, .payload = NULL, .len = 0};
    br_ring_frag_t f;

    CHECK_EQ(br_ring_send(&fx.w, &m), 0);
    CHECK_EQ(m.started_, 1);
    CHECK_EQ(br_ring_send(&fx.w, &m), 0); /* done: no second fragment */
    CHECK_EQ(br_ring_recv(&fx.r, &f), 0);
    CHECK_EQ(f.flags, BR_RING_FIRST | BR_RING_LAST);
    CHECK_EQ(f.len, 0);
    CHECK_EQ(f.tag, 42);
    br_ring_release(&fx.r, &f);
    CHECK_EQ(br_ring_recv(&fx.r, &f), -EAGAIN);
    fx_close(&fx);
}

TEST(send_rejects_bad_messages)
{
    fixture_t fx;
    fx_open(&fx, 4096);
    br_ring_msg_t m = {.type = 1, .payload = NULL, .len = 3};
    CHECK_EQ(br_ring_send(&fx.w, &m), -EINVAL);
    br_ring_msg_t m2 = {.type = 1, .payload = "abc", .len = 3, .sent_ = 4};
    CHECK_EQ(br_ring_send(&fx.w, &m2), -EINVAL);
    br_ring_msg_t m3 = {.type = 1, .payload = "abc", .len = 3, .started_ = 2};
    CHECK_EQ(br_ring_send(&fx.w, &m3), -EINVAL);
    br_ring_frag_t f;
    CHECK_EQ(br_ring_recv(&fx.r, &f), -EAGAIN);
    fx_close(&fx);
}

TEST(many_messages_in_order)
{
    fixture_t fx;
    fx_open(&fx, 8192);
    unsigned char buf[300];
    unsigned next_recv = 0;

    for (unsigned i = 0; i < 20000; i++) {
        size_t len = i % 300;
        for (size_t k = 0; k < len; k++)
            buf[k] = pattern(i, k);
        br_ring_msg_t m = {.type = i % 5, .tag = i, .payload = buf, .len = len};
        int rc;
        while ((rc = br_ring_send(&fx.w, &m)) == -EAGAIN) {
            /* Full: read everything there is, then carry on. */
            br_ring_frag_t f;
            CHECK(m.started_ == 0); /* small messages go in whole or not at all */
            while (br_ring_recv(&fx.r, &f) == 0) {
                CHECK_EQ(f.tag, next_recv);
                CHECK_EQ(f.type, next_recv % 5);
                CHECK_EQ(f.flags, BR_RING_FIRST | BR_RING_LAST);
                CHECK_EQ(f.len, next_recv % 300);
                check_bytes(f.data, f.len, next_recv, 0);
                br_ring_release(&fx.r, &f);
                next_recv++;
            }
        }
        CHECK_EQ(rc, 0);
    }
    while (next_recv < 20000) {
        CHECK_EQ(recv_check(&fx.r, next_recv % 5, next_recv, next_recv), next_recv % 300);
        next_recv++;
    }
    br_ring_frag_t f;
    CHECK_EQ(br_ring_recv(&fx.r, &f), -EAGAIN);
    fx_close(&fx);
}

/* A 4 KiB ring carries at most 1000 payload bytes a fragment (cap/4 minus
 * the header). One call writes every fragment that fits. */
TEST(send_writes_every_fragment_that_fits)
{
    fixture_t fx;
    fx_open(&fx, 4096);
    unsigned char *p = make_payload(5, 10000);
    br_ring_msg_t m = {.type = 2, .tag = 5, .payload = p, .len = 2500};
    br_ring_frag_t f;
    size_t lens[3] = {1000, 1000, 500};

    CHECK_EQ(br_ring_send(&fx.w, &m), 0); /* 3 fragments, 2576 bytes */
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(br_ring_recv(&fx.r, &f), 0);
        CHECK_EQ(f.len, lens[i]);
        CHECK_EQ(f.flags, (i == 0 ? BR_RING_FIRST : 0) | (i == 2 ? BR_RING_LAST : 0));
        check_bytes(f.data, f.len, 5, (size_t)i * 1000);
        br_ring_release(&fx.r, &f);
    }
    CHECK_EQ(br_ring_recv(&fx.r, &f), -EAGAIN);

    /* 10000 bytes: 4 fragments fit (4 x 1024 = the whole ring), the rest
     * waits; each call goes on where the last stopped. */
    br_ring_msg_t big = {.type = 3, .tag = 6, .payload = p, .len = 10000};
    size_t got = 0;
    int calls = 0;
    for (;;) {
        int rc = br_ring_send(&fx.w, &big);
        calls++;
        if (rc == 0)
            break;
        CHECK_EQ(rc, -EAGAIN);
        CHECK_EQ(big.started_, 1);
        CHECK(big.sent_ > got);
        while (br_ring_recv(&fx.r, &f) == 0) {
            CHECK_EQ(!!(f.flags & BR_RING_FIRST), got == 0);
            CHECK_EQ(f.flags & BR_RING_LAST, 0);
            check_bytes(f.data, f.len, 5, got);
            got += f.len;
            br_ring_release(&fx.r, &f);
        }
    }
    CHECK(calls >= 3);
    while (got < 10000) {
        CHECK_EQ(br_ring_recv(&fx.r, &f), 0);
        check_bytes(f.data, f.len, 5, got);
        got += f.len;
        CHECK_EQ(!!(f.flags & BR_RING_LAST), got == 10000);
        br_ring_release(&fx.r, &f);
    }
    CHECK_EQ(br_ring_recv(&fx.r, &f), -EAGAIN);
    free(p);
    fx_close(&fx);
}

/* Random sizes through a small ring, one thread taking turns: the end of
 * the data area comes up at every possible offset, so PAD records (and
 * ends too short for a header) are written and skipped all the time. */
TEST(wraparound_with_pads_random_sizes)
{
    fixture_t fx;
    fx_open(&fx, 4096);
    enum { N = 100000, MAXLEN = 3000 };
    unsigned char *p = make_payload(0, 0);
    uint64_t rng_send = 88172645463325252ull, rng_recv = rng_send;
    unsigned sent = 0, received = 0;
    size_t pads = 0, recv_len = 0, recv_got = 0;
    br_ring_msg_t m;
    int in_flight = 0;

    while (received < N) {
        /* Write while it fits. */
        while (sent < N) {
            if (!in_flight) {
                size_t len = random_len(&rng_send, MAXLEN);
                free(p);
                p = make_payload(sent, len);
                m = (br_ring_msg_t){.type = sent & 0xff, .tag = sent * 3ull, .payload = p, .len = len};
                in_flight = 1;
            }
            int rc = br_ring_send(&fx.w, &m);
            if (rc == -EAGAIN)
                break;
            CHECK_EQ(rc, 0);
            in_flight = 0;
            sent++;
        }
        /* Read everything there is. */
        br_ring_frag_t f;
        int rc;
        while ((rc = br_ring_recv(&fx.r, &f)) == 0) {
            if (recv_got == 0) {
                recv_len = random_len(&rng_recv, MAXLEN);
                CHECK(f.flags & BR_RING_FIRST);
            } else {
                CHECK_EQ(f.flags & BR_RING_FIRST, 0);
            }
            CHECK_EQ(f.tag, received * 3ull);
            CHECK_EQ(f.type, received & 0xff);
            check_bytes(f.data, f.len, received, recv_got);
            recv_got += f.len;
            CHECK(recv_got <= recv_len);
            CHECK_EQ(!!(f.flags & BR_RING_LAST), recv_got == recv_len);
            if (f.size_ > round8(REC + f.len))
                pads++; /* this fragment came after a pad or a blank end */
            br_ring_release(&fx.r, &f);
            if (recv_got == recv_len) {
                received++;
                recv_got = 0;
            }
        }
        CHECK_EQ(rc, -EAGAIN);
    }
    CHECK(pads > 1000);
    printf("  %u messages, %zu wraps past a pad\n", received, pads);
    free(p);
    fx_close(&fx);
}

/* ------------------------------------------------------------ two threads */

typedef struct stream_s {
    br_ring_t *ring;
    unsigned count;
    size_t fixed_len;   /* 0: random sizes up to max_len */
    size_t max_len;
    uint64_t seed;
} stream_t;

static size_t stream_len(stream_t *s, uint64_t *rng)
{
    return s->fixed_len ? s->fixed_len : random_len(rng, s->max_len);
}

static void *producer(void *arg)
{
    stream_t *s = arg;
    uint64_t rng = s->seed;
    for (unsigned i = 0; i < s->count; i++) {
        size_t len = stream_len(s, &rng);
        unsigned char *p = make_payload(i, len);
        send_all(s->ring, i % 7, i, p, len);
        free(p);
    }
    return NULL;
}

static void consume(stream_t *s)
{
    uint64_t rng = s->seed;
    for (unsigned i = 0; i < s->count; i++) {
        size_t len = stream_len(s, &rng);
        CHECK_EQ(recv_check(s->ring, i % 7, i, i), len);
    }
    br_ring_frag_t f;
    CHECK_EQ(br_ring_recv(s->ring, &f), -EAGAIN);
}

static void *consumer(void *arg)
{
    consume(arg);
    return NULL;
}

TEST(message_larger_than_ring_across_threads)
{
    fixture_t fx;
    fx_open(&fx, 65536);
    stream_t ws = {.ring = &fx.w, .count = 8, .fixed_len = 1 << 20};
    stream_t rs = ws;
    rs.ring = &fx.r;
    pthread_t c = bt_thread(consumer, &rs);
    pthread_t p = bt_thread(producer, &ws);
    bt_join(p);
    bt_join(c);
    fx_close(&fx);
}

TEST(random_sizes_across_threads)
{
    fixture_t fx;
    fx_open(&fx, 8192);
    stream_t ws = {.ring = &fx.w, .count = 100000, .max_len = 5000, .seed = 2463534242ull};
    stream_t rs = ws;
    rs.ring = &fx.r;
    pthread_t c = bt_thread(consumer, &rs);
    pthread_t p = bt_thread(producer, &ws);
    bt_join(p);
    bt_join(c);
    fx_close(&fx);
}

/* ------------------------------------------------------------ wakeups */

/* `sent` is set just before the main thread writes (or releases): a
 * waiter that returns must see it set, whenever the scheduler ran it. */
typedef struct waiter_s {
    br_ring_t *ring;
    int result;
    int sent_before;
    int64_t ms;
} waiter_t;

static int sent;

/* Waits until the other thread has armed (is about to sleep or asleep). */
static void until_armed(fixture_t *fx, size_t off)
{
    uint32_t *flag = (uint32_t *)((char *)fx->mem + off);
    int64_t t0 = bt_now_ms();
    while (__atomic_load_n(flag, __ATOMIC_SEQ_CST) == 0) {
        CHECK(bt_now_ms() - t0 < 10000);
        bt_sleep_ms(1);
    }
    bt_sleep_ms(20); /* and, most likely, asleep in poll() */
}

static void *wait_data_thread(void *arg)
{
    waiter_t *w = arg;
    int64_t t0 = bt_now_ms();
    w->result = br_ring_wait_data(w->ring, 10 * 1000000000LL);
    w->sent_before = __atomic_load_n(&sent, __ATOMIC_SEQ_CST);
    w->ms = bt_now_ms() - t0;
    return NULL;
}

static void *wait_space_thread(void *arg)
{
    waiter_t *w = arg;
    int64_t t0 = bt_now_ms();
    w->result = br_ring_wait_space(w->ring, 10 * 1000000000LL);
    w->sent_before = __atomic_load_n(&sent, __ATOMIC_SEQ_CST);
    w->ms = bt_now_ms() - t0;
    return NULL;
}

TEST(blocked_reader_woken_by_write)
{
    fixture_t fx;
    fx_open(&fx, 4096);
    waiter_t w = {.ring = &fx.r};
    pthread_t t = bt_thread(wait_data_thread, &w);
    until_armed(&fx, OFF_READER_WAITING);
    unsigned char *p = make_payload(2, 100);
    br_ring_msg_t m = {.type = 1, .tag = 2, .payload = p, .len = 100};
    __atomic_store_n(&sent, 1, __ATOMIC_SEQ_CST);
    CHECK_EQ(br_ring_send(&fx.w, &m), 0);
    bt_join(t);
    CHECK_EQ(w.result, 1);
    CHECK_EQ(w.sent_before, 1);
    CHECK(w.ms < 5000);
    CHECK_EQ(recv_check(&fx.r, 1, 2, 2), 100);
    free(p);
    fx_close(&fx);
}

/* Fills the ring with a message it cannot hold; returns with m partly
 * sent (-EAGAIN). */
static void fill(fixture_t *fx, br_ring_msg_t *m)
{
    CHECK_EQ(br_ring_send(&fx->w, m), -EAGAIN);
    CHECK_EQ(br_ring_arm_space(&fx->w), 0);
    CHECK_EQ(br_ring_wait_space(&fx->w, 0), 0);
}

TEST(blocked_writer_woken_by_release)
{
    fixture_t fx;
    fx_open(&fx, 4096);
    unsigned char *p = make_payload(9, 20000);
    br_ring_msg_t m = {.type = 1, .tag = 9, .payload = p, .len = 20000};
    fill(&fx, &m);

    waiter_t w = {.ring = &fx.w};
    pthread_t t = bt_thread(wait_space_thread, &w);
    until_armed(&fx, OFF_WRITER_WAITING);
    br_ring_frag_t f;
    CHECK_EQ(br_ring_recv(&fx.r, &f), 0);
    __atomic_store_n(&sent, 1, __ATOMIC_SEQ_CST);
    br_ring_release(&fx.r, &f); /* 1024 bytes: one full fragment's room */
    bt_join(t);
    CHECK_EQ(w.result, 1);
    CHECK_EQ(w.sent_before, 1);
    CHECK(w.ms < 5000);
    size_t before = m.sent_;
    CHECK_EQ(br_ring_send(&fx.w, &m), -EAGAIN);
    CHECK(m.sent_ > before);
    free(p);
    fx_close(&fx);
}

/* The writer asked for room for a large fragment: a release that frees
 * less does not wake it, so a writer is not woken for nothing. */
TEST(writer_woken_only_when_its_fragment_fits)
{
    fixture_t fx;
    fx_open(&fx, 4096);
    unsigned char buf[1000];
    memset(buf, 7, sizeof buf);
    /* 32 messages of 104 bytes (128 a record) fill the ring. */
    for (int i = 0; i < 32; i++) {
        br_ring_msg_t m = {.type = 1, .tag = (uint64_t)i, .payload = buf, .len = 104};
        CHECK_EQ(br_ring_send(&fx.w, &m), 0);
    }
    br_ring_msg_t big = {.type = 2, .tag = 99, .payload = buf, .len = 1000}; /* 1024 */
    fill(&fx, &big);
    CHECK_EQ(big.sent_, 0);
    CHECK_EQ(br_ring_arm_space(&fx.w), 0); /* fill's wait disarmed: arm again */
    br_ring_frag_t f;
    for (int i = 0; i < 7; i++) { /* 896 bytes free: not enough */
        CHECK_EQ(br_ring_recv(&fx.r, &f), 0);
        br_ring_release(&fx.r, &f);
        CHECK_EQ(readable(fx.space_fd), 0);
    }
    CHECK_EQ(br_ring_recv(&fx.r, &f), 0);
    br_ring_release(&fx.r, &f); /* 1024: now it fits */
    CHECK_EQ(readable(fx.space_fd), 1);
    CHECK_EQ(br_ring_wait_space(&fx.w, 0), 1);
    CHECK_EQ(br_ring_send(&fx.w, &big), 0);
    fx_close(&fx);
}

TEST(no_signal_when_nobody_waits)
{
    fixture_t fx;
    fx_open(&fx, 4096);
    br_ring_frag_t f;
    br_ring_msg_t m = {.type = 1, .payload = "abc", .len = 3};
    CHECK_EQ(br_ring_send(&fx.w, &m), 0);
    CHECK_EQ(readable(fx.data_fd), 0);
    CHECK_EQ(br_ring_recv(&fx.r, &f), 0);
    br_ring_release(&fx.r, &f);
    CHECK_EQ(readable(fx.space_fd), 0);

    /* armed: the next write signals once */
    CHECK_EQ(br_ring_arm_data(&fx.r), 0);
    m = (br_ring_msg_t){.type = 1, .payload = "abc", .len = 3};
    CHECK_EQ(br_ring_send(&fx.w, &m), 0);
    CHECK_EQ(readable(fx.data_fd), 1);
    m = (br_ring_msg_t){.type = 1, .payload = "abc", .len = 3};
    CHECK_EQ(br_ring_send(&fx.w, &m), 0);
    CHECK_EQ(br_ring_arm_data(&fx.r), 1); /* data there: do not sleep */
    CHECK_EQ(br_ring_wait_data(&fx.r, 0), 1);
    CHECK_EQ(br_ring_wait_data(&fx.r, 1000000000LL), 1); /* returns at once */
    fx_close(&fx);
}

TEST(waits_time_out)
{
    fixture_t fx;
    fx_open(&fx, 4096);
    CHECK_EQ(br_ring_wait_data(&fx.r, 0), 0);
    int64_t t0 = bt_now_ms();
    CHECK_EQ(br_ring_wait_data(&fx.r, 100 * 1000000LL), 0);
    int64_t ms = bt_now_ms() - t0;
    CHECK(ms >= 99);
    CHECK(ms < 3000);

    unsigned char *p = make_payload(1, 10000);
    br_ring_msg_t m = {.type = 1, .payload = p, .len = 10000};
    fill(&fx, &m);
    t0 = bt_now_ms();
    CHECK_EQ(br_ring_wait_space(&fx.w, 100 * 1000000LL), 0);
    ms = bt_now_ms() - t0;
    CHECK(ms >= 99);
    CHECK(ms < 3000);
    /* a timed-out waiter is disarmed: a release does not signal */
    br_ring_frag_t f;
    CHECK_EQ(br_ring_recv(&fx.r, &f), 0);
    br_ring_release(&fx.r, &f);
    CHECK_EQ(readable(fx.space_fd), 0);
    free(p);
    fx_close(&fx);
}

static pthread_t target;
static int target_done;
static void on_usr1(int sig) { (void)sig; }

static void *kicker(void *arg)
{
    while (!__atomic_load_n(&target_done, __ATOMIC_SEQ_CST)) {
        bt_sleep_ms(20);
        CHECK_EQ(pthread_kill(target, SIGUSR1), 0);
    }
    return NULL;
}

TEST(wait_returns_eintr)
{
    fixture_t fx;
    fx_open(&fx, 4096);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1; /* no SA_RESTART (poll never restarts anyway) */
    CHECK_EQ(sigemptyset(&sa.sa_mask), 0);
    CHECK_EQ(sigaction(SIGUSR1, &sa, NULL), 0);
    target = pthread_self();
    pthread_t t = bt_thread(kicker, NULL);
    int r = br_ring_wait_data(&fx.r, 10 * 1000000000LL);
    __atomic_store_n(&target_done, 1, __ATOMIC_SEQ_CST);
    bt_join(t);
    CHECK_EQ(r, -EINTR);
    fx_close(&fx);
}

/* ------------------------------------------------------------ processes */

/* A ring in a memfd; the child maps it again at an address of its own. */
typedef struct shm_s {
    int memfd;
    size_t size;
    void *mem;
    int data_fd, space_fd;
} shm_t;

static void shm_open_ring(shm_t *s, size_t cap)
{
    s->size = br_ring_mem_size(cap);
    s->memfd = memfd_create("braid-ring-test", MFD_CLOEXEC);
    CHECK(s->memfd >= 0);
    CHECK_EQ(ftruncate(s->memfd, (off_t)s->size), 0);
    s->mem = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_SHARED, s->memfd, 0);
    CHECK(s->mem != MAP_FAILED);
    CHECK_EQ(br_ring_format(s->mem, s->size), 0);
    s->data_fd = new_eventfd();
    s->space_fd = new_eventfd();
}

static void shm_close(shm_t *s)
{
    CHECK_EQ(munmap(s->mem, s->size), 0);
    CHECK_EQ(close(s->memfd), 0);
    CHECK_EQ(close(s->data_fd), 0);
    CHECK_EQ(close(s->space_fd), 0);
}

/* Forks a writer that maps the ring itself and runs `stream`. */
static pid_t fork_writer(shm_t *s, stream_t stream)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid != 0)
        return pid;
    /* The child: its own mapping of the memfd, its own view. */
    void *mem = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_SHARED, s->memfd, 0);
    CHECK(mem != MAP_FAILED);
    CHECK_EQ(munmap(s->mem, s->size), 0); /* no help from the parent's mapping */
    br_ring_t w;
    CHECK_EQ(br_ring_attach(&w, mem, s->size, s->data_fd, s->space_fd), 0);
    stream.ring = &w;
    producer(&stream);
    CHECK_EQ(munmap(mem, s->size), 0);
    exit(0); /* not _exit: LeakSanitizer checks this process too */
}

static int wait_status(pid_t pid)
{
    int status;
    pid_t r;
    while ((r = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
        ;
    CHECK_EQ(r, pid);
    return status;
}

TEST(across_processes)
{
    shm_t s;
    shm_open_ring(&s, 16384);
    stream_t st = {.count = 10000, .max_len = 6000, .seed = 977};
    pid_t pid = fork_writer(&s, st);

    br_ring_t r;
    CHECK_EQ(br_ring_attach(&r, s.mem, s.size, s.data_fd, s.space_fd), 0);
    st.ring = &r;
    consume(&st);
    int status = wait_status(pid);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
    shm_close(&s);
}

/* The writer dies (SIGKILL) half-way through a message larger than the
 * ring. The reader gets every fragment that was published, each intact,
 * then -EAGAIN: a FIRST without a LAST, and nothing else. */
TEST(writer_killed_mid_message)
{
    shm_t s;
    shm_open_ring(&s, 65536);
    stream_t st = {.count = 1, .fixed_len = 4 << 20, .seed = 1};
    pid_t pid = fork_writer(&s, st);

    br_ring_t r;
    br_ring_frag_t f;
    CHECK_EQ(br_ring_attach(&r, s.mem, s.size, s.data_fd, s.space_fd), 0);
    size_t got = 0;
    int rc;
    while (got < 256 * 1024) {
        while ((rc = br_ring_recv(&r, &f)) == -EAGAIN)
            CHECK_EQ(br_ring_wait_data(&r, 10 * 1000000000LL), 1);
        CHECK_EQ(rc, 0);
        CHECK_EQ(!!(f.flags & BR_RING_FIRST), got == 0);
        CHECK_EQ(f.flags & BR_RING_LAST, 0);
        check_bytes(f.data, f.len, 0, got);
        got += f.len;
        br_ring_release(&r, &f);
    }
    CHECK_EQ(kill(pid, SIGKILL), 0);
    int status = wait_status(pid);
    CHECK(WIFSIGNALED(status));
    CHECK_EQ(WTERMSIG(status), SIGKILL);

    /* What it published before it died is still there, and whole. */
    while ((rc = br_ring_recv(&r, &f)) == 0) {
        CHECK_EQ(f.flags, 0);
        check_bytes(f.data, f.len, 0, got);
        got += f.len;
        br_ring_release(&r, &f);
    }
    CHECK_EQ(rc, -EAGAIN);
    CHECK(got < (size_t)4 << 20);
    CHECK_EQ(br_ring_wait_data(&r, 50 * 1000000LL), 0);
    CHECK_EQ(br_ring_recv(&r, &f), -EAGAIN);
    shm_close(&s);
}

/* ------------------------------------------------------------ corruption
 * A crashed or broken peer can leave anything in the mapping. The reader
 * must say -EPROTO, never read outside the ring. */

static uint32_t *rec_word(fixture_t *fx, size_t off, int word)
{
    return (uint32_t *)((char *)fx->mem + SHARED_SIZE + off) + word;
}

static void expect_eproto(fixture_t *fx)
{
    br_ring_frag_t f;
    CHECK_EQ(br_ring_recv(&fx->r, &f), -EPROTO);
}

TEST(corrupt_records_give_eproto)
{
    fixture_t fx;
    fx_open(&fx, 4096);
    uint32_t *len = rec_word(&fx, 0, 0), *flags = rec_word(&fx, 0, 2), *rsv = rec_word(&fx, 0, 3);
    br_ring_msg_t m = {.type = 1, .tag = 1, .payload = "hello", .len = 5};
    CHECK_EQ(br_ring_send(&fx.w, &m), 0);
    br_ring_frag_t f;
    CHECK_EQ(br_ring_recv(&fx.r, &f), 0);

    *len = 0xFFFFFFFFu; /* far past the ring */
    expect_eproto(&fx);
    *len = 4096; /* more than a fragment may hold */
    expect_eproto(&fx);
    *len = 100; /* fits the ring but runs past what was published */
    expect_eproto(&fx);
    *len = 5;
    *flags = 0x10; /* unknown flag */
    expect_eproto(&fx);
    *flags = FLAG_PAD; /* a pad at offset 0 with the wrong length */
    expect_eproto(&fx);
    *flags = BR_RING_FIRST | BR_RING_LAST;
    *rsv = 1;
    expect_eproto(&fx);
    *rsv = 0;
    CHECK_EQ(br_ring_recv(&fx.r, &f), 0); /* repaired */

    uint64_t *tail = field(fx.mem, OFF_TAIL), *head = field(fx.mem, OFF_HEAD);
    uint64_t good_tail = *tail;
    *tail = *head + 4096 + 8; /* more in use than the ring holds */
    expect_eproto(&fx);
    m = (br_ring_msg_t){.type = 1, .tag = 1, .payload = "hello", .len = 5};
    CHECK_EQ(br_ring_send(&fx.w, &m), -EPROTO);
    CHECK_EQ(m.started_, 0);
    *tail = good_tail + 3; /* misaligned */
    expect_eproto(&fx);
    *tail = *head + 8; /* less than a record header published */
    expect_eproto(&fx);
    *tail = good_tail;
    *head = good_tail - 4096 - 8; /* the reader's own counter, trashed */
    CHECK_EQ(br_ring_send(&fx.w, &m), -EPROTO);
    expect_eproto(&fx);
    *head = 0;
    CHECK_EQ(br_ring_recv(&fx.r, &f), 0);
    CHECK_EQ(f.len, 5);
    /* a release of a fragment larger than what is in use is ignored */
    br_ring_frag_t bogus = f;
    bogus.size_ = 4096;
    br_ring_release(&fx.r, &bogus);
    CHECK_EQ(*head, 0);
    br_ring_release(&fx.r, &f);
    CHECK_EQ(br_ring_recv(&fx.r, &f), -EAGAIN);
    fx_close(&fx);
}

/* A pad is only valid when it runs exactly to the end of the data area,
 * and the record after it must be sound too. */
TEST(corrupt_pad_gives_eproto)
{
    fixture_t fx;
    fx_open(&fx, 4096);
    unsigned char buf[1000];
    memset(buf, 1, sizeof buf);
    br_ring_frag_t f;
    /* 3 x 1024 + 512: the next 1024-byte record needs a pad at 3584. */
    for (int i = 0; i < 3; i++) {
        br_ring_msg_t m = {.type = 1, .payload = buf, .len = 1000};
        CHECK_EQ(br_ring_send(&fx.w, &m), 0);
    }
    br_ring_msg_t m = {.type = 1, .payload = buf, .len = 488}; /* 512 */
    CHECK_EQ(br_ring_send(&fx.w, &m), 0);
    for (int i = 0; i < 4; i++) {
        CHECK_EQ(br_ring_recv(&fx.r, &f), 0);
        br_ring_release(&fx.r, &f);
    }
    br_ring_msg_t m2 = {.type = 2, .tag = 5, .payload = buf, .len = 1000};
    CHECK_EQ(br_ring_send(&fx.w, &m2), 0);
    uint32_t *pad_len = rec_word(&fx, 3584, 0), *pad_flags = rec_word(&fx, 3584, 2);
    CHECK_EQ(*pad_flags, FLAG_PAD);
    CHECK_EQ(*pad_len, 512 - REC);

    *pad_len = 100;
    expect_eproto(&fx);
    *pad_len = 512 - REC;
    *pad_flags = FLAG_PAD | BR_RING_FIRST;
    expect_eproto(&fx);
    *pad_flags = FLAG_PAD;
    *rec_word(&fx, 0, 0) = 2000; /* the record after the pad */
    expect_eproto(&fx);
    *rec_word(&fx, 0, 0) = 1000;

    CHECK_EQ(br_ring_recv(&fx.r, &f), 0);
    CHECK_EQ(f.tag, 5);
    CHECK_EQ(f.size_, 512 + 1024); /* the pad is freed with the record */
    br_ring_release(&fx.r, &f);
    CHECK_EQ(br_ring_recv(&fx.r, &f), -EAGAIN);
    fx_close(&fx);
}

BT_MAIN()
