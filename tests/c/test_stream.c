/* test_stream.c — br_stream_t over socket pairs, TCP, pipes and a pty. */
#include "harness.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

static br_loop_t loop;

static void pair(int sv[2]) { CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0); }

static int fd_is_open(int fd) { return fcntl(fd, F_GETFD) >= 0; }

/* Runs the loop until *flag is set (or fails the case after 10 s). */
static void run_until(const int *flag)
{
    int64_t t0 = bt_now_ms();
    while (!*flag) {
        CHECK(bt_now_ms() - t0 < 10000);
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
}

static void finish(void)
{
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(br_loop_close(&loop), 0);
}

/* A reader that collects what arrives and notes the end. */
typedef struct {
    br_stream_t s;
    char *got;
    size_t len, cap;
    ssize_t end; /* 1 while open; 0 EOF; -errno */
    int ended;
    int closed;
} sink_t;

static void sink_read(br_stream_t *s, const char *buf, ssize_t n)
{
    sink_t *k = s->handle.data;
    if (n <= 0) {
        k->end = n;
        k->ended = 1;
        return;
    }
    if (k->len + (size_t)n > k->cap) {
        k->cap = (k->len + (size_t)n) * 2;
        k->got = realloc(k->got, k->cap);
        CHECK(k->got != NULL);
    }
    memcpy(k->got + k->len, buf, (size_t)n);
    k->len += (size_t)n;
}

static void sink_closed(br_handle_t *h)
{
    sink_t *k = h->data;
    k->closed = 1;
    free(k->got);
    k->got = NULL;
}

static void sink_open(sink_t *k, int fd)
{
    memset(k, 0, sizeof *k);
    k->end = 1;
    CHECK_EQ(br_stream_init(&loop, &k->s, fd), 0);
    k->s.handle.data = k;
    CHECK_EQ(br_stream_read_start(&k->s, sink_read, 4096), 0);
}

static char pattern(size_t i) { return (char)(i % 251); }

static char *patterned(size_t n)
{
    char *b = malloc(n);
    CHECK(b != NULL);
    for (size_t i = 0; i < n; i++) {
        b[i] = pattern(i);
    }
    return b;
}

/* ------------------------------------------------------------ echo */

static void echo_read(br_stream_t *s, const char *buf, ssize_t n)
{
    if (n > 0) {
        CHECK_EQ(br_stream_write(s, buf, (size_t)n), 0);
    } else {
        CHECK_EQ(br_close(&s->handle, NULL), 0);
    }
}

TEST(echo_over_a_socket_pair)
{
    int sv[2];
    pair(sv);
    CHECK_EQ(br_loop_init(&loop), 0);
    br_stream_t echo;
    sink_t client;
    CHECK_EQ(br_stream_init(&loop, &echo, sv[0]), 0);
    CHECK_EQ(br_stream_read_start(&echo, echo_read, 0), 0);
    sink_open(&client, sv[1]);
    CHECK_EQ(br_stream_write(&client.s, "hello, ", 7), 0);
    CHECK_EQ(br_stream_write(&client.s, "stream", 6), 0);
    while (client.len < 13) {
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    CHECK(memcmp(client.got, "hello, stream", 13) == 0);
    CHECK_EQ(br_stream_shutdown(&client.s), 0);
    run_until(&client.ended); /* the echo side saw EOF and closed */
    CHECK_EQ(client.end, 0);
    CHECK_EQ(br_close(&client.s.handle, sink_closed), 0);
    finish();
    CHECK(client.closed);
    CHECK(!fd_is_open(sv[0]) && !fd_is_open(sv[1]));
}

TEST(an_accepted_socket_needs_no_checks)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    CHECK_EQ(br_loop_init(&loop), 0);
    br_stream_t s;
    CHECK_EQ(br_stream_init_socket(&loop, &s, -1), -EBADF);
    br_stream_t echo;
    sink_t client;
    CHECK_EQ(br_stream_init_socket(&loop, &echo, sv[0]), 0);
    CHECK_EQ(br_stream_read_start(&echo, echo_read, 0), 0);
    sink_open(&client, sv[1]);
    CHECK_EQ(br_stream_write(&client.s, "accepted", 8), 0);
    while (client.len < 8) {
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    CHECK(memcmp(client.got, "accepted", 8) == 0);
    /* known to be a socket: its half-close works (a pipe's is -ENOTSOCK) */
    CHECK_EQ(br_stream_shutdown(&echo), 0);
    run_until(&client.ended);
    CHECK_EQ(client.end, 0);
    CHECK_EQ(br_close(&client.s.handle, sink_closed), 0); /* the echo side reads EOF and closes */
    finish();
    CHECK(!fd_is_open(sv[0]) && !fd_is_open(sv[1]));
}

/* ------------------------------------------------------------ backpressure */

static int drain_calls[2];
static void note_drain(br_stream_t *s, int paused) { drain_calls[paused]++; }
static int empty_calls;
static void note_empty(br_stream_t *s) { empty_calls++; }

TEST(big_write_pauses_then_resumes_and_delivers_every_byte)
{
    int sv[2];
    pair(sv);
    int small = 8192;
    CHECK_EQ(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
    CHECK_EQ(br_loop_init(&loop), 0);
    br_stream_t w;
    CHECK_EQ(br_stream_init(&loop, &w, sv[0]), 0);
    br_stream_set_callbacks(&w, note_drain, NULL);
    br_stream_set_more_callbacks(&w, NULL, note_empty);
    size_t total = 4u << 20;
    char *src = patterned(total);
    for (size_t off = 0; off < total; off += 65536) {
        CHECK_EQ(br_stream_write(&w, src + off, 65536), 0);
    }
    CHECK_EQ(drain_calls[1], 1); /* paused once, at the first crossing */
    CHECK(br_stream_queued(&w) > 64 * 1024);
    memset(src, 0, total); /* the stream queued copies */
    free(src);
    sink_t r;
    sink_open(&r, sv[1]);
    while (r.len < total) {
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    CHECK_EQ(br_stream_queued(&w), 0);
    CHECK_EQ(drain_calls[0], 1);
    CHECK_EQ(empty_calls, 1); /* once, when the last queued byte went */
    for (size_t i = 0; i < total; i++) {
        if (r.got[i] != pattern(i)) {
            CHECK(!"byte out of place");
        }
    }
    CHECK_EQ(br_close(&w.handle, NULL), 0);
    run_until(&r.ended);
    CHECK_EQ(r.end, 0);
    CHECK_EQ(br_close(&r.s.handle, sink_closed), 0);
    finish();
}

TEST(shutdown_waits_for_the_queue_and_then_gives_eof)
{
    int sv[2];
    pair(sv);
    CHECK_EQ(br_loop_init(&loop), 0);
    br_stream_t w;
    CHECK_EQ(br_stream_init(&loop, &w, sv[0]), 0);
    size_t total = 2u << 20;
    char *src = patterned(total);
    CHECK_EQ(br_stream_write(&w, src, total), 0);
    free(src);
    CHECK(br_stream_queued(&w) > 0);
    CHECK_EQ(br_stream_shutdown(&w), 0);
    CHECK_EQ(br_stream_shutdown(&w), 0); /* idempotent */
    CHECK_EQ(br_stream_write(&w, "late", 4), -EPIPE);
    sink_t r;
    sink_open(&r, sv[1]);
    run_until(&r.ended);
    CHECK_EQ(r.end, 0);
    CHECK_EQ(r.len, total);
    CHECK_EQ(br_close(&w.handle, NULL), 0);
    CHECK_EQ(br_close(&r.s.handle, sink_closed), 0);
    finish();
}

/* ------------------------------------------------------------ faults */

static int error_seen;
static void note_error(br_stream_t *s, int err) { error_seen = err; }

TEST(peer_gone_is_an_error_not_a_signal)
{
    /* SIGPIPE at its default action: a send without MSG_NOSIGNAL would kill us */
    signal(SIGPIPE, SIG_DFL);
    int sv[2];
    pair(sv);
    CHECK_EQ(br_loop_init(&loop), 0);
    br_stream_t w;
    CHECK_EQ(br_stream_init(&loop, &w, sv[0]), 0);
    br_stream_set_callbacks(&w, NULL, note_error);
    char *src = patterned(1u << 20);
    CHECK_EQ(br_stream_write(&w, src, 1u << 20), 0); /* most of it queued */
    CHECK(br_stream_queued(&w) > 0);
    CHECK_EQ(close(sv[1]), 0);
    int64_t t0 = bt_now_ms();
    while (error_seen == 0) {
        CHECK(bt_now_ms() - t0 < 10000);
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    CHECK(error_seen == -EPIPE || error_seen == -ECONNRESET);
    CHECK_EQ(br_stream_queued(&w), 0);
    CHECK_EQ(br_stream_write(&w, src, 10), -EPIPE);
    free(src);
    CHECK_EQ(br_close(&w.handle, NULL), 0);
    CHECK_EQ(br_close(&w.handle, NULL), -EINVAL); /* twice */
    CHECK_EQ(br_stream_write(&w, "x", 1), -EBUSY);
    finish();
}

TEST(tcp_reset_reaches_the_reader)
{
    int lst = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(lst >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    CHECK_EQ(bind(lst, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ(listen(lst, 1), 0);
    CHECK_EQ(getsockname(lst, (struct sockaddr *)&a, &alen), 0);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK_EQ(connect(c, (struct sockaddr *)&a, sizeof a), 0);
    int p = accept(lst, NULL, NULL);
    CHECK(p >= 0);
    CHECK_EQ(close(lst), 0);
    CHECK_EQ(br_loop_init(&loop), 0);
    sink_t r;
    sink_open(&r, c);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    CHECK_EQ(setsockopt(p, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    CHECK_EQ(close(p), 0); /* RST */
    run_until(&r.ended);
    CHECK_EQ(r.end, -ECONNRESET);
    CHECK_EQ(br_close(&r.s.handle, sink_closed), 0);
    finish();
}

TEST(close_with_a_queue_frees_it_and_closes_the_fd)
{
    int sv[2];
    pair(sv);
    CHECK_EQ(br_loop_init(&loop), 0);
    sink_t w; /* also reading, so that close has both to stop */
    sink_open(&w, sv[0]);
    char *src = patterned(1u << 20);
    CHECK_EQ(br_stream_write(&w.s, src, 1u << 20), 0);
    free(src);
    CHECK(br_stream_queued(&w.s) > 0);
    CHECK_EQ(br_close(&w.s.handle, sink_closed), 0);
    CHECK(!fd_is_open(sv[0])); /* closed at once; the callback comes from a later step */
    CHECK_EQ(w.closed, 0);
    finish();
    CHECK_EQ(w.closed, 1);
    CHECK(!fd_is_open(sv[0]));
    CHECK_EQ(close(sv[1]), 0);
}

TEST(bad_input)
{
    CHECK_EQ(br_loop_init(&loop), 0);
    br_stream_t s;
    CHECK_EQ(br_stream_init(&loop, &s, -1), -EBADF);
    int sv[2];
    pair(sv);
    CHECK_EQ(close(sv[1]), 0);
    CHECK_EQ(br_stream_init(&loop, &s, sv[1]), -EBADF); /* closed fd */
    CHECK_EQ(br_stream_init(&loop, &s, sv[0]), 0);
    CHECK_EQ(br_stream_read_start(&s, NULL, 0), -EINVAL);
    CHECK_EQ(br_stream_set_limits(&s, 10, 20), -EINVAL);
    CHECK_EQ(br_stream_write(&s, "", 0), 0);
    CHECK_EQ(br_stream_read_stop(&s), 0); /* not reading: fine */
    CHECK_EQ(br_close(&s.handle, NULL), 0);
    CHECK_EQ(br_stream_read_start(&s, sink_read, 0), -EBUSY);
    CHECK_EQ(br_stream_shutdown(&s), -EBUSY);
    finish();
}

/* ------------------------------------------------------------ pipes and ptys */

TEST(pipe_carries_bytes_and_eof)
{
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    CHECK_EQ(br_loop_init(&loop), 0);
    br_stream_t w;
    CHECK_EQ(br_stream_init(&loop, &w, p[1]), 0);
    CHECK_EQ(br_stream_shutdown(&w), -ENOTSOCK); /* a pipe's EOF is its close */
    sink_t r;
    sink_open(&r, p[0]);
    size_t total = 1u << 20; /* well past the pipe's 64 KiB */
    char *src = patterned(total);
    CHECK_EQ(br_stream_write(&w, src, total), 0);
    free(src);
    while (r.len < total) {
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    for (size_t i = 0; i < total; i += 4093) {
        CHECK_EQ(r.got[i], pattern(i));
    }
    CHECK_EQ(br_close(&w.handle, NULL), 0);
    run_until(&r.ended);
    CHECK_EQ(r.end, 0);
    CHECK_EQ(br_close(&r.s.handle, sink_closed), 0);
    finish();
}

TEST(pty_master_reads_what_the_slave_writes)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    CHECK(m >= 0);
    CHECK_EQ(grantpt(m), 0);
    CHECK_EQ(unlockpt(m), 0);
    int sl = open(ptsname(m), O_RDWR | O_NOCTTY | O_CLOEXEC);
    CHECK(sl >= 0);
    CHECK_EQ(br_loop_init(&loop), 0);
    sink_t r;
    sink_open(&r, m);
    CHECK_EQ(write(sl, "tty\n", 4), 4);
    while (r.len < 4) {
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    CHECK(memcmp(r.got, "tty", 3) == 0); /* the line discipline may make \n \r\n */
    CHECK_EQ(close(sl), 0);
    run_until(&r.ended);
    CHECK(r.end == -EIO || r.end == 0); /* Linux says EIO once the slave is gone */
    CHECK_EQ(br_close(&r.s.handle, sink_closed), 0);
    finish();
}

/* ------------------------------------------------------------ the handle */

TEST(a_stream_is_a_handle_active_while_it_reads_or_writes)
{
    int sv[2];
    pair(sv);
    CHECK_EQ(br_loop_init(&loop), 0);
    br_stream_t s;
    CHECK_EQ(br_stream_init(&loop, &s, sv[0]), 0);
    CHECK_EQ(s.handle.type, BR_HANDLE_STREAM);
    CHECK(!br_is_active(&s.handle) && !br_loop_alive(&loop)); /* idle: nothing keeps the loop */
    CHECK_EQ(br_stream_read_start(&s, echo_read, 0), 0);
    CHECK(br_is_active(&s.handle) && br_loop_alive(&loop));
    CHECK_EQ(br_stream_read_stop(&s), 0);
    CHECK(!br_is_active(&s.handle) && !br_loop_alive(&loop));
    br_unref(&s.handle);
    CHECK_EQ(br_stream_read_start(&s, echo_read, 0), 0);
    CHECK(br_is_active(&s.handle) && !br_loop_alive(&loop)); /* unreferenced */
    br_ref(&s.handle);
    CHECK_EQ(br_loop_close(&loop), -EBUSY); /* an open handle */
    CHECK_EQ(br_close(&s.handle, NULL), 0);
    CHECK(!fd_is_open(sv[0]));             /* closed by br_close itself, as a socket's close() */
    CHECK_EQ(br_close(&s.handle, NULL), -EINVAL);
    CHECK_EQ(br_stream_write(&s, "x", 1), -EBUSY);
    CHECK_EQ(br_loop_close(&loop), -EBUSY); /* its close callback has not run */
    finish();
    CHECK(!fd_is_open(sv[0]));
    CHECK_EQ(close(sv[1]), 0);
}

/* Every stream of a loop reads into the one buffer of the loop: an idle
 * connection holds none. A stream asking for a bigger read from inside
 * another's read callback grows it only before the next read. */
typedef struct {
    br_stream_t s;
    br_stream_t *other;
    const char *seen;
    char first;
    int reads;
} shared_t;

static void shared_read(br_stream_t *s, const char *buf, ssize_t n)
{
    shared_t *k = s->handle.data;
    CHECK(n > 0);
    k->seen = buf;
    k->first = buf[0];
    k->reads++;
    if (k->other != NULL) {
        CHECK_EQ(br_stream_read_start(k->other, shared_read, 1 << 20), 0);
        CHECK_EQ(buf[0], k->first); /* still readable: nothing was reallocated under it */
    }
    CHECK_EQ(br_stream_read_stop(s), 0);
}

TEST(streams_share_the_loops_read_buffer)
{
    int a[2], b[2];
    pair(a);
    pair(b);
    CHECK_EQ(br_loop_init(&loop), 0);
    shared_t ka = {0}, kb = {0};
    CHECK_EQ(br_stream_init(&loop, &ka.s, a[0]), 0);
    CHECK_EQ(br_stream_init(&loop, &kb.s, b[0]), 0);
    ka.s.handle.data = &ka;
    kb.s.handle.data = &kb;
    ka.other = &kb.s;
    CHECK_EQ(br_stream_read_start(&ka.s, shared_read, 4096), 0);
    CHECK_EQ(write(a[1], "a", 1), 1);
    CHECK_EQ(write(b[1], "b", 1), 1);
    while (ka.reads == 0 || kb.reads == 0) {
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    CHECK_EQ(ka.first, 'a');
    CHECK_EQ(kb.first, 'b');
    CHECK(ka.seen != NULL && kb.seen != NULL);
    CHECK(loop.read_buf_ == kb.seen && loop.read_buf_size_ >= (1u << 20));
    CHECK_EQ(br_close(&ka.s.handle, NULL), 0);
    CHECK_EQ(br_close(&kb.s.handle, NULL), 0);
    finish();
    CHECK(loop.read_buf_ == NULL);
    CHECK_EQ(close(a[1]), 0);
    CHECK_EQ(close(b[1]), 0);
}

/* ------------------------------------------------------------ caller's buffers */

typedef struct {
    br_stream_t s;
    char mine[5];
    int refuse;
    ssize_t last;
    const char *at;
    int reads;
} into_t;

static int into_alloc(br_stream_t *s, char **buf, size_t *len)
{
    into_t *k = s->handle.data;
    if (k->refuse) {
        return -ENOBUFS;
    }
    *buf = k->mine;
    *len = sizeof k->mine;
    return 0;
}

static void into_read(br_stream_t *s, const char *buf, ssize_t n)
{
    into_t *k = s->handle.data;
    k->last = n;
    k->at = buf;
    k->reads++;
}

TEST(reads_go_where_the_alloc_callback_says)
{
    int sv[2];
    pair(sv);
    CHECK_EQ(br_loop_init(&loop), 0);
    into_t k = {0};
    CHECK_EQ(br_stream_init(&loop, &k.s, sv[0]), 0);
    k.s.handle.data = &k;
    br_stream_set_more_callbacks(&k.s, into_alloc, NULL);
    CHECK_EQ(br_stream_read_start(&k.s, into_read, 0), 0);
    CHECK_EQ(write(sv[1], "0123456789", 10), 10);
    while (k.reads < 1) {
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    CHECK(k.at == k.mine && k.last == 5 && memcmp(k.mine, "01234", 5) == 0); /* no more than it offered */
    while (k.reads < 2) {
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    CHECK(k.last == 5 && memcmp(k.mine, "56789", 5) == 0);
    CHECK(loop.read_buf_ == NULL); /* the loop's buffer was never needed */
    k.refuse = 1;
    CHECK_EQ(write(sv[1], "x", 1), 1);
    while (k.reads < 3) {
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    CHECK(k.last == -ENOBUFS && k.at == NULL && !br_is_active(&k.s.handle)); /* reading stopped */
    CHECK_EQ(br_close(&k.s.handle, NULL), 0);
    finish();
    CHECK_EQ(close(sv[1]), 0);
}

/* BR_STREAM_NOT_NOW leaves the bytes in the socket and the fd watched (the
 * next poll reports it again); br_stream_read_now reads them when the caller
 * says; BR_STREAM_LOOP_BUFFER reads into the loop's buffer. */
typedef struct {
    br_stream_t s;
    int answer;      /* what the alloc callback returns */
    int asked;       /* alloc calls */
    ssize_t last;
    char got[16];
    int reads;
} later_t;

static int later_alloc(br_stream_t *s, char **buf, size_t *len)
{
    later_t *k = s->handle.data;
    (void)buf;
    (void)len;
    k->asked++;
    return k->answer;
}

static void later_read(br_stream_t *s, const char *buf, ssize_t n)
{
    later_t *k = s->handle.data;
    k->last = n;
    if (n > 0) {
        memcpy(k->got, buf, (size_t)n < sizeof k->got ? (size_t)n : sizeof k->got);
    }
    k->reads++;
}

TEST(reads_wait_for_read_now_when_the_alloc_callback_says_not_now)
{
    int sv[2];
    pair(sv);
    CHECK_EQ(br_loop_init(&loop), 0);
    later_t k = {.answer = BR_STREAM_NOT_NOW};
    CHECK_EQ(br_stream_init(&loop, &k.s, sv[0]), 0);
    k.s.handle.data = &k;
    br_stream_set_more_callbacks(&k.s, later_alloc, NULL);
    CHECK_EQ(br_stream_read_now(&k.s), -EINVAL); /* not reading yet */
    CHECK_EQ(br_stream_read_start(&k.s, later_read, 0), 0);
    CHECK_EQ(br_stream_read_now(&k.s), 0);        /* asks, reads nothing */
    CHECK_EQ(k.asked, 1);
    CHECK_EQ(write(sv[1], "abc", 3), 3);
    CHECK(br_loop_run(&loop, BR_RUN_NOWAIT) >= 0);
    CHECK(br_loop_run(&loop, BR_RUN_NOWAIT) >= 0);
    CHECK_EQ(k.asked, 3);                          /* each poll reported it again */
    CHECK_EQ(k.reads, 0);                          /* and nothing was read */
    k.answer = BR_STREAM_LOOP_BUFFER;
    CHECK_EQ(br_stream_read_now(&k.s), 0);
    CHECK(k.reads == 1 && k.last == 3 && memcmp(k.got, "abc", 3) == 0);
    CHECK(loop.read_buf_ != NULL);                 /* the loop's buffer */
    CHECK_EQ(br_stream_read_now(&k.s), 0);        /* nothing there now: no callback */
    CHECK_EQ(k.reads, 1);
    CHECK_EQ(close(sv[1]), 0);                     /* EOF through read_now as through a poll */
    CHECK_EQ(br_stream_read_now(&k.s), 0);
    CHECK(k.reads == 2 && k.last == 0 && !br_is_active(&k.s.handle));
    CHECK_EQ(br_close(&k.s.handle, NULL), 0);
    CHECK_EQ(br_stream_read_now(&k.s), -EBUSY);
    finish();
}

/* BR_STREAM_NOT_NOW from the flush callback leaves the queue queued and the
 * fd watched (each poll asks again); br_stream_flush_now writes it, with the
 * drain and empty callbacks inside, without asking. */
typedef struct {
    br_stream_t s;
    int answer; /* what the flush callback returns */
    int asked;  /* flush callback calls */
    int empty;  /* empty callback calls */
} gate_t;

static int gate_flush(br_stream_t *s)
{
    gate_t *k = s->handle.data;
    k->asked++;
    return k->answer;
}

static void gate_empty(br_stream_t *s)
{
    gate_t *k = s->handle.data;
    k->empty++;
}

TEST(flushes_wait_for_flush_now_when_the_flush_callback_says_not_now)
{
    int sv[2];
    pair(sv);
    CHECK_EQ(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
    CHECK_EQ(br_loop_init(&loop), 0);
    gate_t k = {.answer = BR_STREAM_NOT_NOW};
    CHECK_EQ(br_stream_init(&loop, &k.s, sv[0]), 0);
    k.s.handle.data = &k;
    br_stream_set_more_callbacks(&k.s, NULL, gate_empty);
    br_stream_set_flush_callback(&k.s, gate_flush);
    CHECK_EQ(br_stream_flush_now(&k.s), 0); /* nothing queued: nothing to do */
    static char chunk[65536];
    while (br_stream_queued(&k.s) == 0) { /* until the kernel's buffer is full */
        CHECK_EQ(br_stream_write(&k.s, chunk, sizeof chunk), 0);
    }
    size_t queued = br_stream_queued(&k.s);
    char sink[1 << 16];
    while (read(sv[1], sink, sizeof sink) > 0) { /* room in the kernel again */
    }
    CHECK(br_loop_run(&loop, BR_RUN_NOWAIT) >= 0);
    CHECK(br_loop_run(&loop, BR_RUN_NOWAIT) >= 0);
    CHECK_EQ(k.asked, 2);                      /* each poll reported it again */
    CHECK_EQ(br_stream_queued(&k.s), queued); /* and wrote nothing */
    CHECK(br_is_active(&k.s.handle));
    CHECK_EQ(br_stream_flush_now(&k.s), 0);
    CHECK_EQ(k.asked, 2);                      /* not asked */
    CHECK(br_stream_queued(&k.s) < queued);
    while (br_stream_queued(&k.s) > 0) {       /* answered 0: flushed at readiness */
        k.answer = 0;
        while (read(sv[1], sink, sizeof sink) > 0) {
        }
        CHECK(br_loop_run(&loop, BR_RUN_NOWAIT) >= 0);
    }
    CHECK_EQ(k.empty, 1);
    CHECK(!br_is_active(&k.s.handle));         /* nothing queued, not reading */
    CHECK_EQ(br_close(&k.s.handle, NULL), 0);
    CHECK_EQ(br_stream_flush_now(&k.s), -EBUSY);
    finish();
    CHECK_EQ(close(sv[1]), 0);
}

/* ------------------------------------------------------------ the block hook */

static int blocks[2];
static void note_block(br_loop_t *l, int blocking)
{
    CHECK(l == &loop);
    blocks[blocking]++;
    CHECK(blocks[1] - blocks[0] == (blocking ? 1 : 0)); /* paired, in order */
}

TEST(the_block_hook_brackets_only_polls_that_may_sleep)
{
    int sv[2];
    pair(sv);
    CHECK_EQ(br_loop_init(&loop), 0);
    br_loop_set_block_cb(&loop, note_block);
    sink_t r;
    sink_open(&r, sv[0]);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_NOWAIT), 1);
    CHECK(blocks[0] == 0 && blocks[1] == 0);
    CHECK_EQ(write(sv[1], "z", 1), 1);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_ONCE), 1);
    CHECK(blocks[0] == 1 && blocks[1] == 1 && r.len == 1); /* the read ran after the hook said awake */
    CHECK_EQ(br_close(&r.s.handle, sink_closed), 0);
    br_loop_set_block_cb(&loop, NULL);
    finish();
    CHECK_EQ(close(sv[1]), 0);
}

BT_MAIN()
