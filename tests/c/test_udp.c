/* test_udp.c — br_udp_t over UDP on loopback and Unix datagram pairs. */
#include "harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

static br_loop_t loop;

static void finish(void)
{
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(br_loop_close(&loop), 0);
}

static int udp_socket(struct sockaddr_in *bound)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    CHECK_EQ(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ(getsockname(fd, (struct sockaddr *)bound, &len), 0);
    return fd;
}

/* ------------------------------------------------------------ round trip */

static char last[64];
static ssize_t last_n = -1;
static int received;

static void pong_back(br_udp_t *u, const char *buf, ssize_t n, const struct sockaddr *addr, socklen_t alen)
{
    CHECK(n >= 0);
    received++;
    if (n == 4 && memcmp(buf, "ping", 4) == 0) {
        CHECK_EQ(br_udp_send(u, "pong", 4, addr, alen), 0);
    }
}

static void keep(br_udp_t *u, const char *buf, ssize_t n, const struct sockaddr *addr, socklen_t alen)
{
    CHECK(n >= 0 && n < (ssize_t)sizeof last);
    memcpy(last, buf, (size_t)n);
    last_n = n;
    CHECK_EQ(((const struct sockaddr_in *)addr)->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
}

TEST(ping_pong_and_an_empty_datagram)
{
    struct sockaddr_in aa, ba;
    int a = udp_socket(&aa), b = udp_socket(&ba);
    CHECK_EQ(br_loop_init(&loop), 0);
    br_udp_t ua, ub;
    CHECK_EQ(br_udp_init(&loop, &ua, a), 0);
    CHECK_EQ(br_udp_init(&loop, &ub, b), 0);
    CHECK_EQ(br_udp_recv_start(&ua, keep), 0);
    CHECK_EQ(br_udp_recv_start(&ub, pong_back), 0);
    CHECK_EQ(br_udp_send(&ua, "ping", 4, (struct sockaddr *)&ba, sizeof ba), 0);
    int64_t t0 = bt_now_ms();
    while (last_n != 4) {
        CHECK(bt_now_ms() - t0 < 10000);
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    CHECK(memcmp(last, "pong", 4) == 0);
    CHECK_EQ(br_udp_send(&ua, "", 0, (struct sockaddr *)&ba, sizeof ba), 0);
    while (received < 2) {
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    CHECK_EQ(br_close(&ua.handle, NULL), 0);
    CHECK_EQ(br_close(&ub.handle, NULL), 0);
    finish();
}

/* ------------------------------------------------------------ a full buffer queues, in order */

static int next_seq;
static int out_of_order;

static void check_seq(br_udp_t *u, const char *buf, ssize_t n, const struct sockaddr *addr, socklen_t alen)
{
    CHECK_EQ(n, 1000);
    int seq;
    memcpy(&seq, buf, sizeof seq);
    out_of_order += seq != next_seq;
    next_seq = seq + 1;
}

TEST(full_socket_buffer_queues_and_drains_in_order)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0); /* no loss: it pushes back */
    CHECK_EQ(br_loop_init(&loop), 0);
    br_udp_t w, r;
    CHECK_EQ(br_udp_init(&loop, &w, sv[0]), 0);
    CHECK_EQ(br_udp_init(&loop, &r, sv[1]), 0);
    char msg[1000] = {0};
    int total = 5000;
    for (int i = 0; i < total; i++) {
        memcpy(msg, &i, sizeof i);
        CHECK_EQ(br_udp_send(&w, msg, sizeof msg, NULL, 0), 0);
    }
    CHECK(br_udp_queued(&w) > 0); /* the receiver has not read yet */
    CHECK_EQ(br_udp_recv_start(&r, check_seq), 0);
    int64_t t0 = bt_now_ms();
    while (next_seq < total) {
        CHECK(bt_now_ms() - t0 < 10000);
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    CHECK_EQ(out_of_order, 0);
    CHECK_EQ(br_udp_queued(&w), 0);
    CHECK_EQ(br_close(&w.handle, NULL), 0);
    CHECK_EQ(br_close(&r.handle, NULL), 0);
    finish();
}

static int drains;
static size_t drained_to = (size_t)-1;

static void note_drain(br_udp_t *u)
{
    drains++;
    drained_to = br_udp_queued(u);
    CHECK_EQ(br_udp_queued(u) == 0, br_udp_queued_datagrams(u) == 0);
}

static ssize_t big_n;

static void keep_size(br_udp_t *u, const char *buf, ssize_t n, const struct sockaddr *addr, socklen_t alen)
{
    CHECK(n >= 0);
    if (n == 1000)
        return; /* the second part's small ones */
    for (ssize_t i = 0; i < n; i++)
        CHECK_EQ(buf[i], (char)(i % 251));
    big_n = n;
}

TEST(the_drain_callback_counts_down_and_a_large_unix_datagram_arrives_whole)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
    int sndbuf = 512 * 1024;
    (void)setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    CHECK_EQ(br_loop_init(&loop), 0);
    br_udp_t w, r;
    CHECK_EQ(br_udp_init(&loop, &w, sv[0]), 0);
    CHECK_EQ(br_udp_init(&loop, &r, sv[1]), 0);
    br_udp_set_drain_cb(&w, note_drain);
    /* larger than any IP datagram: asyncio reads up to 256 KiB */
    size_t n = 100 * 1024;
    char *big = malloc(n);
    CHECK(big != NULL);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)(i % 251);
    CHECK_EQ(br_udp_send(&w, big, n, NULL, 0), 0);
    CHECK_EQ(br_udp_recv_start(&r, keep_size), 0);
    int64_t t0 = bt_now_ms();
    while (big_n != (ssize_t)n) {
        CHECK(bt_now_ms() - t0 < 10000);
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    CHECK_EQ(br_udp_recv_stop(&r), 0);
    /* fill the pair until it pushes back, then let the reader drain it */
    char msg[1000] = {0};
    int queued = 0;
    for (int i = 0; i < 5000 && br_udp_queued_datagrams(&w) < 10; i++) {
        CHECK_EQ(br_udp_send(&w, msg, sizeof msg, NULL, 0), 0);
        queued = (int)br_udp_queued_datagrams(&w);
    }
    CHECK(queued >= 10);
    CHECK_EQ(br_udp_queued(&w), (size_t)queued * sizeof msg);
    CHECK_EQ(drains, 0);
    CHECK_EQ(br_udp_recv_start(&r, keep_size), 0);
    t0 = bt_now_ms();
    while (br_udp_queued(&w) != 0) {
        CHECK(bt_now_ms() - t0 < 10000);
        CHECK(br_loop_run(&loop, BR_RUN_ONCE) >= 0);
    }
    CHECK(drains >= 1);
    CHECK_EQ(drained_to, 0);
    free(big);
    CHECK_EQ(br_close(&w.handle, NULL), 0);
    CHECK_EQ(br_close(&r.handle, NULL), 0);
    finish();
}

/* BR_UDP_NOT_NOW from the flush callback leaves the queue queued and the
 * socket watched (each poll asks again); br_udp_flush_now sends it, with the
 * drain callback inside, without asking. */
static int flush_answer, flush_asked;

static int gate_flush(br_udp_t *u)
{
    (void)u;
    flush_asked++;
    return flush_answer;
}

TEST(flushes_wait_for_flush_now_when_the_flush_callback_says_not_now)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
    CHECK_EQ(br_loop_init(&loop), 0);
    br_udp_t w;
    CHECK_EQ(br_udp_init(&loop, &w, sv[0]), 0);
    br_udp_set_drain_cb(&w, note_drain);
    br_udp_set_flush_cb(&w, gate_flush);
    flush_answer = BR_UDP_NOT_NOW;
    drains = 0;
    CHECK_EQ(br_udp_flush_now(&w), 0); /* nothing queued: nothing to do */
    char msg[1000] = {0};
    for (int i = 0; i < 5000 && br_udp_queued_datagrams(&w) < 3; i++) {
        CHECK_EQ(br_udp_send(&w, msg, sizeof msg, NULL, 0), 0);
    }
    CHECK_EQ(br_udp_queued_datagrams(&w), 3);
    char sink[2000];
    while (recv(sv[1], sink, sizeof sink, 0) > 0) { /* room again */
    }
    CHECK(br_loop_run(&loop, BR_RUN_NOWAIT) >= 0);
    CHECK(br_loop_run(&loop, BR_RUN_NOWAIT) >= 0);
    CHECK_EQ(flush_asked, 2);                  /* each poll reported it again */
    CHECK_EQ(br_udp_queued_datagrams(&w), 3); /* and sent nothing */
    CHECK_EQ(drains, 0);
    CHECK_EQ(br_udp_flush_now(&w), 0);
    CHECK_EQ(flush_asked, 2);                  /* not asked */
    CHECK_EQ(br_udp_queued(&w), 0);
    CHECK(drains == 1 && drained_to == 0);
    CHECK(!br_is_active(&w.handle));           /* nothing queued, not receiving */
    CHECK_EQ(br_close(&w.handle, NULL), 0);
    CHECK_EQ(br_udp_flush_now(&w), -EBUSY);
    finish();
    CHECK_EQ(close(sv[1]), 0);
}

TEST(close_with_a_queue_frees_it)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
    CHECK_EQ(br_loop_init(&loop), 0);
    br_udp_t w;
    CHECK_EQ(br_udp_init(&loop, &w, sv[0]), 0);
    char msg[4000] = {0};
    while (br_udp_queued(&w) == 0) {
        CHECK_EQ(br_udp_send(&w, msg, sizeof msg, NULL, 0), 0);
    }
    CHECK_EQ(br_udp_send(&w, msg, sizeof msg, NULL, 0), 0);
    CHECK_EQ(br_close(&w.handle, NULL), 0);
    CHECK_EQ(br_udp_send(&w, msg, 1, NULL, 0), -EBUSY);
    finish(); /* LeakSanitizer checks the queue went */
    CHECK(fcntl(sv[0], F_GETFD) < 0);
    CHECK_EQ(close(sv[1]), 0);
}

/* ------------------------------------------------------------ errors */

static int refused;

static void note_refused(br_udp_t *u, const char *buf, ssize_t n, const struct sockaddr *addr, socklen_t alen)
{
    if (n == -ECONNREFUSED) {
        refused = 1;
    }
}

TEST(port_unreachable_reaches_a_connected_socket)
{
    struct sockaddr_in gone;
    int g = udp_socket(&gone);
    CHECK_EQ(close(g), 0); /* nobody listens there now */
    struct sockaddr_in mine;
    int fd = udp_socket(&mine);
    CHECK_EQ(connect(fd, (struct sockaddr *)&gone, sizeof gone), 0);
    CHECK_EQ(br_loop_init(&loop), 0);
    br_udp_t u;
    CHECK_EQ(br_udp_init(&loop, &u, fd), 0);
    CHECK_EQ(br_udp_recv_start(&u, note_refused), 0);
    int64_t t0 = bt_now_ms();
    while (!refused) {
        CHECK(bt_now_ms() - t0 < 10000);
        int rc = br_udp_send(&u, "hello?", 6, NULL, 0);
        CHECK(rc == 0 || rc == -ECONNREFUSED);
        refused |= rc == -ECONNREFUSED;
        CHECK(br_loop_run(&loop, BR_RUN_NOWAIT) >= 0);
        bt_sleep_ms(1);
    }
    CHECK_EQ(br_close(&u.handle, NULL), 0);
    finish();
}

TEST(bad_input)
{
    CHECK_EQ(br_loop_init(&loop), 0);
    br_udp_t u;
    CHECK_EQ(br_udp_init(&loop, &u, -1), -EBADF);
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    CHECK_EQ(br_udp_init(&loop, &u, p[0]), -ENOTSOCK);
    CHECK_EQ(close(p[0]), 0);
    CHECK_EQ(close(p[1]), 0);
    int tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK_EQ(br_udp_init(&loop, &u, tcp), -EPROTOTYPE);
    CHECK_EQ(close(tcp), 0);
    struct sockaddr_in a;
    CHECK_EQ(br_udp_init(&loop, &u, udp_socket(&a)), 0);
    CHECK_EQ(br_udp_recv_start(&u, NULL), -EINVAL);
    static char big[70000];
    CHECK_EQ(br_udp_send(&u, big, sizeof big, (struct sockaddr *)&a, sizeof a), -EMSGSIZE);
    CHECK_EQ(br_udp_send(&u, big, 1, (struct sockaddr *)&a, 0), -EINVAL);
    CHECK_EQ(u.handle.type, BR_HANDLE_UDP);
    CHECK(!br_is_active(&u.handle));
    int fd = u.fd;
    CHECK_EQ(br_close(&u.handle, NULL), 0);
    CHECK_EQ(br_close(&u.handle, NULL), -EINVAL);
    CHECK(fcntl(fd, F_GETFD) < 0 && u.fd == -1); /* closed by br_close itself */
    CHECK_EQ(br_udp_send(&u, big, 1, (struct sockaddr *)&a, sizeof a), -EBUSY);
    finish();
}

BT_MAIN()
