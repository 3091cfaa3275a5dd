/* test_loop.c — br_loop_t, br_io_t, br_close, br_async_t, br_signal_t. */
#include "harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>

#define MS 1000000LL
#define SEQ __ATOMIC_SEQ_CST

static br_loop_t loop;

static void loop_open(void) { CHECK_EQ(br_loop_init(&loop), 0); }

static void loop_finish(void)
{
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(br_loop_close(&loop), 0);
}

static void pair(int sv[2]) { CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0); }

static void put_byte(int fd) { CHECK_EQ(write(fd, "x", 1), 1); }

static void close_fd(int fd) { CHECK_EQ(close(fd), 0); }

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    CHECK(d != NULL);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    CHECK_EQ(closedir(d), 0);
    return n - 1; /* the directory's own fd */
}

/* ------------------------------------------------------------ loop basics */

TEST(run_without_handles_returns_at_once)
{
    loop_open();
    int64_t t0 = bt_now_ms();
    CHECK_EQ(br_loop_alive(&loop), 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_ONCE), 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_NOWAIT), 0);
    CHECK(bt_now_ms() - t0 < 500);
    CHECK_EQ(br_loop_run(&loop, (enum br_run_mode)7), -EINVAL);
    int64_t a = br_loop_now(&loop);
    bt_sleep_ms(2);
    CHECK_EQ(br_loop_now(&loop), a); /* cached */
    br_loop_update_time(&loop);
    CHECK(br_loop_now(&loop) - a >= 2 * MS);
    CHECK_EQ(br_loop_close(&loop), 0);
}

static int timer_runs;
static void timer_count_cb(br_timer_t *t) { timer_runs++; }

TEST(run_once_blocks_then_runs_the_timer)
{
    br_timer_t t;
    loop_open();
    CHECK_EQ(br_timer_init(&loop, &t), 0);
    CHECK_EQ(br_timer_start(&t, timer_count_cb, 50 * MS, 0), 0);
    int64_t t0 = bt_now_ms();
    CHECK_EQ(br_loop_run(&loop, BR_RUN_ONCE), 0);
    CHECK(bt_now_ms() - t0 >= 49);
    CHECK_EQ(timer_runs, 1);

    CHECK_EQ(br_timer_start(&t, timer_count_cb, 20 * MS, 20 * MS), 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_ONCE), 1); /* repeat: still alive */
    CHECK_EQ(timer_runs, 2);
    CHECK_EQ(br_close(&t.handle, NULL), 0);
    loop_finish();
}

TEST(run_nowait_does_not_block)
{
    br_timer_t t;
    loop_open();
    CHECK_EQ(br_timer_init(&loop, &t), 0);
    CHECK_EQ(br_timer_start(&t, timer_count_cb, 300 * MS, 0), 0);
    int64_t t0 = bt_now_ms();
    for (int i = 0; i < 10; i++)
        CHECK_EQ(br_loop_run(&loop, BR_RUN_NOWAIT), 1);
    CHECK(bt_now_ms() - t0 < 250);
    CHECK_EQ(timer_runs, 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(timer_runs, 1);
    CHECK_EQ(br_close(&t.handle, NULL), 0);
    loop_finish();
}

static void stop_on_third_cb(br_timer_t *t)
{
    if (++timer_runs == 3)
        br_loop_stop(t->handle.loop);
}

TEST(stop_from_callback)
{
    br_timer_t t;
    loop_open();
    CHECK_EQ(br_timer_init(&loop, &t), 0);
    CHECK_EQ(br_timer_start(&t, stop_on_third_cb, 1 * MS, 1 * MS), 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 1);
    CHECK_EQ(timer_runs, 3);
    /* The stop was for that run only. */
    CHECK_EQ(br_loop_run(&loop, BR_RUN_ONCE), 1);
    CHECK_EQ(timer_runs, 4);
    CHECK_EQ(br_close(&t.handle, NULL), 0);
    loop_finish();
}

/* ------------------------------------------------------------ close */

static int close_calls;
static int in_iteration; /* set while a callback of the test runs */

static void close_count_cb(br_handle_t *h)
{
    CHECK_EQ(in_iteration, 0);
    close_calls++;
}

TEST(close_callbacks_run_once_after_the_iteration)
{
    br_timer_t t;
    loop_open();
    CHECK_EQ(br_timer_init(&loop, &t), 0);
    CHECK_EQ(br_close(&t.handle, close_count_cb), 0);
    CHECK_EQ(close_calls, 0); /* not from inside br_close */
    CHECK(br_is_closing(&t.handle));
    CHECK_EQ(br_loop_alive(&loop), 1);
    CHECK_EQ(br_loop_close(&loop), -EBUSY);
    int64_t t0 = bt_now_ms();
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0); /* did not block */
    CHECK(bt_now_ms() - t0 < 500);
    CHECK_EQ(close_calls, 1);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_NOWAIT), 0);
    CHECK_EQ(close_calls, 1);
    CHECK(br_is_closing(&t.handle));
    CHECK_EQ(br_close(&t.handle, close_count_cb), -EINVAL);
    CHECK_EQ(br_loop_close(&loop), 0);
}

TEST(loop_close_is_busy_while_handles_are_open)
{
    br_timer_t t;
    br_io_t io;
    int sv[2];
    pair(sv);
    loop_open();
    CHECK_EQ(br_timer_init(&loop, &t), 0);
    CHECK_EQ(br_io_init(&loop, &io, sv[0]), 0);
    CHECK_EQ(br_loop_close(&loop), -EBUSY); /* inactive handles count too */
    CHECK_EQ(br_close(&t.handle, NULL), 0);
    CHECK_EQ(br_loop_close(&loop), -EBUSY);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_NOWAIT), 0);
    CHECK_EQ(br_loop_close(&loop), -EBUSY); /* io still open */
    CHECK_EQ(br_close(&io.handle, NULL), 0);
    loop_finish();
    close_fd(sv[0]);
    close_fd(sv[1]);
}

/* ------------------------------------------------------------ io */

static unsigned seen_revents;
static int io_calls;

static void read_and_stop_cb(br_io_t *io, unsigned revents)
{
    char c;
    io_calls++;
    seen_revents |= revents;
    if (revents & BR_READABLE)
        CHECK_EQ(read(io->fd, &c, 1), 1);
    CHECK_EQ(br_io_stop(io), 0);
    CHECK_EQ(br_io_stop(io), 0); /* idempotent */
}

TEST(io_readable_on_a_pipe)
{
    int p[2];
    br_io_t io;
    CHECK_EQ(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    loop_open();
    CHECK_EQ(br_io_init(&loop, &io, p[0]), 0);
    CHECK_EQ(br_io_start(&io, BR_READABLE, read_and_stop_cb), 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_NOWAIT), 1); /* nothing to read yet */
    CHECK_EQ(io_calls, 0);
    put_byte(p[1]);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(io_calls, 1);
    CHECK_EQ(seen_revents, BR_READABLE);
    CHECK_EQ(br_close(&io.handle, NULL), 0);
    loop_finish();
    close_fd(p[0]);
    close_fd(p[1]);
}

TEST(io_hangup_is_reported)
{
    int p[2];
    br_io_t io;
    CHECK_EQ(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    loop_open();
    CHECK_EQ(br_io_init(&loop, &io, p[0]), 0);
    CHECK_EQ(br_io_start(&io, BR_READABLE, read_and_stop_cb), 0);
    put_byte(p[1]);
    close_fd(p[1]);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(io_calls, 1);
    CHECK_EQ(seen_revents, BR_READABLE | BR_HUP);
    CHECK_EQ(br_close(&io.handle, NULL), 0);
    loop_finish();
    close_fd(p[0]);
}

static void writable_cb(br_io_t *io, unsigned revents)
{
    io_calls++;
    seen_revents |= revents;
    put_byte(io->fd);
    /* Switch to readable on the same watcher (a MOD, not a new ADD). */
    CHECK_EQ(br_io_start(io, BR_READABLE, read_and_stop_cb), 0);
}

TEST(io_writable_then_readable)
{
    int sv[2];
    br_io_t io;
    pair(sv);
    loop_open();
    CHECK_EQ(br_io_init(&loop, &io, sv[0]), 0);
    CHECK_EQ(br_io_start(&io, BR_WRITABLE, writable_cb), 0);
    /* The peer echoes once the byte arrives. */
    CHECK_EQ(br_loop_run(&loop, BR_RUN_ONCE), 1);
    CHECK_EQ(io_calls, 1);
    CHECK_EQ(seen_revents, BR_WRITABLE);
    char c;
    CHECK_EQ(read(sv[1], &c, 1), 1);
    put_byte(sv[1]);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(io_calls, 2);
    CHECK_EQ(seen_revents, BR_WRITABLE | BR_READABLE);
    CHECK_EQ(br_close(&io.handle, NULL), 0);
    loop_finish();
    close_fd(sv[0]);
    close_fd(sv[1]);
}

TEST(io_bad_fds)
{
    br_io_t io, io2, io3;
    loop_open();
    CHECK_EQ(br_io_init(&loop, &io, -1), -EBADF);

    /* A closed fd: a clear -EBADF from start, nothing registered. */
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    close_fd(p[0]);
    close_fd(p[1]);
    CHECK_EQ(br_io_init(&loop, &io, p[0]), 0);
    CHECK_EQ(br_io_start(&io, BR_READABLE, read_and_stop_cb), -EBADF);
    CHECK(!br_is_active(&io.handle));
    CHECK_EQ(br_io_stop(&io), 0);
    CHECK_EQ(br_io_start(&io, 0, read_and_stop_cb), -EINVAL);
    CHECK_EQ(br_io_start(&io, BR_READABLE, NULL), -EINVAL);
    CHECK_EQ(br_io_start(&io, BR_ERROR, read_and_stop_cb), -EINVAL);
    CHECK_EQ(br_close(&io.handle, NULL), 0);

    /* A regular file: epoll refuses it. */
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    CHECK_EQ(br_io_init(&loop, &io2, fd), 0);
    CHECK_EQ(br_io_start(&io2, BR_READABLE, read_and_stop_cb), -EPERM);
    CHECK_EQ(br_close(&io2.handle, NULL), 0);
    close_fd(fd);

    /* Two watchers on one fd. */
    int sv[2];
    pair(sv);
    CHECK_EQ(br_io_init(&loop, &io2, sv[0]), 0);
    CHECK_EQ(br_io_init(&loop, &io3, sv[0]), 0);
    CHECK_EQ(br_io_start(&io2, BR_READABLE, read_and_stop_cb), 0);
    CHECK_EQ(br_io_start(&io3, BR_READABLE, read_and_stop_cb), -EEXIST);
    CHECK_EQ(br_close(&io2.handle, NULL), 0);
    CHECK_EQ(br_io_start(&io2, BR_READABLE, read_and_stop_cb), -EBUSY);
    CHECK_EQ(br_io_start(&io3, BR_READABLE, read_and_stop_cb), 0); /* free now */
    CHECK_EQ(br_close(&io3.handle, NULL), 0);
    loop_finish();
    close_fd(sv[0]);
    close_fd(sv[1]);
}

TEST(io_stop_after_the_fd_was_closed)
{
    int sv[2];
    br_io_t io;
    pair(sv);
    loop_open();
    CHECK_EQ(br_io_init(&loop, &io, sv[0]), 0);
    CHECK_EQ(br_io_start(&io, BR_READABLE, read_and_stop_cb), 0);
    close_fd(sv[0]); /* against the rules, but must not break stop */
    CHECK_EQ(br_io_stop(&io), 0);
    CHECK_EQ(br_close(&io.handle, NULL), 0);
    loop_finish();
    close_fd(sv[1]);
}

/* Two readable watchers in one batch; whichever runs first stops (or
 * closes and frees) the other, whose pending event must be dropped. */
typedef struct peer_s {
    br_io_t io;
    struct peer_s *other;
    int calls;
    int close_other;
} peer_t;

static void peer_freed_cb(br_handle_t *h)
{
    close_calls++;
    free(h);
}

static peer_t *first_peer;

static void peer_cb(br_io_t *io, unsigned revents)
{
    peer_t *me = (peer_t *)io;
    me->calls++;
    CHECK(first_peer == NULL); /* the other's event was dropped */
    first_peer = me;
    in_iteration = 1;
    if (me->other != NULL) {
        if (me->close_other) {
            CHECK_EQ(br_close(&me->other->io.handle, peer_freed_cb), 0);
        } else {
            CHECK_EQ(br_io_stop(&me->other->io), 0);
        }
        me->other->other = NULL;
    }
    CHECK_EQ(br_close(&io->handle, peer_freed_cb), 0);
    in_iteration = 0;
}

static void run_batch_case(int close_other)
{
    int a[2], b[2];
    pair(a);
    pair(b);
    loop_open();
    peer_t *x = calloc(1, sizeof *x), *y = calloc(1, sizeof *y);
    CHECK(x != NULL && y != NULL);
    x->other = y;
    y->other = x;
    x->close_other = y->close_other = close_other;
    CHECK_EQ(br_io_init(&loop, &x->io, a[0]), 0);
    CHECK_EQ(br_io_init(&loop, &y->io, b[0]), 0);
    CHECK_EQ(br_io_start(&x->io, BR_READABLE, peer_cb), 0);
    CHECK_EQ(br_io_start(&y->io, BR_READABLE, peer_cb), 0);
    put_byte(a[1]);
    put_byte(b[1]);
    bt_sleep_ms(5); /* both ready before the one poll */
    /* One iteration: the first callback closes its own watcher and stops
     * or closes the other, so nothing is left active either way. */
    CHECK_EQ(br_loop_run(&loop, BR_RUN_NOWAIT), 0);
    CHECK(first_peer == x || first_peer == y);
    if (close_other) {
        CHECK_EQ(close_calls, 2);
    } else {
        /* The stopped one is neither run nor closed. The one that ran was
         * freed by its close callback: touch only the other. */
        CHECK_EQ(close_calls, 1);
        peer_t *left = first_peer == x ? y : x;
        CHECK_EQ(left->calls, 0);
        CHECK(!br_is_active(&left->io.handle));
        CHECK(!br_is_closing(&left->io.handle));
        CHECK_EQ(br_close(&left->io.handle, peer_freed_cb), 0);
    }
    loop_finish();
    for (int i = 0; i < 2; i++) {
        close_fd(a[i]);
        close_fd(b[i]);
    }
}

TEST(io_stopping_another_watcher_in_the_same_batch)
{
    run_batch_case(0);
    CHECK_EQ(close_calls, 2);
}

TEST(io_closing_another_watcher_in_the_same_batch)
{
    run_batch_case(1);
}

static void close_self_cb(br_io_t *io, unsigned revents)
{
    io_calls++;
    in_iteration = 1;
    CHECK_EQ(br_close(&io->handle, close_count_cb), 0);
    CHECK_EQ(close_calls, 0);
    /* Still valid until the close callback: start refuses, stop is a no-op. */
    CHECK_EQ(br_io_start(io, BR_READABLE, close_self_cb), -EBUSY);
    CHECK_EQ(br_io_stop(io), 0);
    in_iteration = 0;
}

TEST(io_closed_from_its_own_callback)
{
    int sv[2];
    br_io_t io;
    pair(sv);
    loop_open();
    CHECK_EQ(br_io_init(&loop, &io, sv[0]), 0);
    CHECK_EQ(br_io_start(&io, BR_READABLE, close_self_cb), 0);
    put_byte(sv[1]);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_ONCE), 0);
    CHECK_EQ(io_calls, 1);
    CHECK_EQ(close_calls, 1);
    CHECK_EQ(br_loop_close(&loop), 0);
    close_fd(sv[0]);
    close_fd(sv[1]);
}

/* 10,000 socketpairs watched and closed, in rounds that fit the fd limit;
 * the fd count must come back to where it was. */
typedef struct conn_s {
    br_io_t io;
    int peer;
} conn_t;

static int conns_done;

static void conn_closed_cb(br_handle_t *h)
{
    conn_t *c = (conn_t *)h;
    close_fd(c->io.fd);
    close_fd(c->peer);
    conns_done++;
    free(c);
}

static void conn_cb(br_io_t *io, unsigned revents)
{
    char buf[8];
    CHECK_EQ(read(io->fd, buf, sizeof buf), 1);
    CHECK_EQ(br_close(&io->handle, conn_closed_cb), 0);
}

TEST(ten_thousand_socketpairs_leave_no_fd_behind)
{
    enum { TOTAL = 10000, ROUND = 2500 };
    struct rlimit rl;
    CHECK_EQ(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        CHECK_EQ(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    CHECK(rl.rlim_cur >= 2 * ROUND + 100);

    loop_open();
    int baseline = count_fds();
    for (int round = 0; round < TOTAL / ROUND; round++) {
        for (int i = 0; i < ROUND; i++) {
            conn_t *c = malloc(sizeof *c);
            CHECK(c != NULL);
            int sv[2];
            pair(sv);
            c->peer = sv[1];
            CHECK_EQ(br_io_init(&loop, &c->io, sv[0]), 0);
            CHECK_EQ(br_io_start(&c->io, BR_READABLE, conn_cb), 0);
            put_byte(sv[1]);
        }
        CHECK_EQ(count_fds(), baseline + 2 * ROUND);
        CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
        CHECK_EQ(conns_done, (round + 1) * ROUND);
        CHECK_EQ(count_fds(), baseline);
    }
    CHECK_EQ(br_loop_close(&loop), 0);
}

/* ------------------------------------------------------------ async */

enum { SENDERS = 8, SENDS = 10000 };
static br_async_t async;
static unsigned async_calls;
static int phase;        /* 0 sending, 1 burst over, 2 the final send */
static int phase1_seen;
static int final_seen;
static unsigned sent;

static void async_cb(br_async_t *a)
{
    __atomic_fetch_add(&async_calls, 1, SEQ);
    int p = __atomic_load_n(&phase, SEQ);
    if (p >= 1)
        __atomic_store_n(&phase1_seen, 1, SEQ);
    if (p == 2) {
        __atomic_store_n(&final_seen, 1, SEQ);
        CHECK_EQ(br_close(&a->handle, NULL), 0);
    }
}

static void *sender(void *arg)
{
    for (int i = 0; i < SENDS; i++) {
        CHECK_EQ(br_async_send(&async), 0);
        __atomic_fetch_add(&sent, 1, SEQ);
    }
    return NULL;
}

static void *coordinator(void *arg)
{
    pthread_t t[SENDERS];
    for (int i = 0; i < SENDERS; i++)
        t[i] = bt_thread(sender, NULL);
    for (int i = 0; i < SENDERS; i++)
        bt_join(t[i]);
    __atomic_store_n(&phase, 1, SEQ);
    CHECK_EQ(br_async_send(&async), 0);
    int64_t t0 = bt_now_ms();
    while (!__atomic_load_n(&phase1_seen, SEQ)) {
        CHECK(bt_now_ms() - t0 < 10000);
        bt_sleep_ms(1);
    }
    /* The loop has handled everything and is (about to be) asleep in
     * epoll: this last send must still wake it. */
    bt_sleep_ms(20);
    __atomic_store_n(&phase, 2, SEQ);
    CHECK_EQ(br_async_send(&async), 0);
    return NULL;
}

TEST(async_from_eight_threads_coalesces_and_loses_nothing)
{
    loop_open();
    CHECK_EQ(br_async_init(&loop, &async, async_cb), 0);
    CHECK(br_is_active(&async.handle));
    pthread_t c = bt_thread(coordinator, NULL);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    bt_join(c);
    CHECK_EQ(final_seen, 1);
    CHECK_EQ(sent, SENDERS * SENDS);
    fprintf(stderr, "%u sends, %u callbacks\n", sent + 2, async_calls);
    CHECK(async_calls >= 2);
    CHECK(async_calls <= SENDERS * SENDS + 2);
    CHECK_EQ(br_loop_close(&loop), 0);
}

static void async_count_cb(br_async_t *a) { async_calls++; }

TEST(async_send_before_run_and_unref)
{
    br_async_t a, b;
    loop_open();
    CHECK_EQ(br_async_init(&loop, &a, NULL), -EINVAL);
    CHECK_EQ(br_async_init(&loop, &a, async_count_cb), 0);
    CHECK_EQ(br_async_init(&loop, &b, async_count_cb), 0);
    br_unref(&a.handle);
    br_unref(&b.handle);
    CHECK_EQ(br_loop_alive(&loop), 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0); /* unreferenced */
    br_ref(&a.handle);
    CHECK_EQ(br_async_send(&a), 0);
    CHECK_EQ(br_async_send(&a), 0);
    CHECK_EQ(br_async_send(&b), 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_ONCE), 1);
    CHECK_EQ(async_calls, 2); /* once per handle */
    CHECK_EQ(br_loop_run(&loop, BR_RUN_NOWAIT), 1);
    CHECK_EQ(async_calls, 2);
    CHECK_EQ(br_close(&a.handle, NULL), 0);
    CHECK_EQ(br_close(&b.handle, NULL), 0);
    loop_finish();
}

/* A callback closing the async handle the scan visits next. */
static br_async_t ring3[3];

static void close_others_cb(br_async_t *a)
{
    async_calls++;
    for (int i = 0; i < 3; i++)
        if (&ring3[i] != a && !br_is_closing(&ring3[i].handle))
            CHECK_EQ(br_close(&ring3[i].handle, NULL), 0);
    CHECK_EQ(br_close(&a->handle, NULL), 0);
}

TEST(async_closing_others_from_a_callback)
{
    loop_open();
    for (int i = 0; i < 3; i++)
        CHECK_EQ(br_async_init(&loop, &ring3[i], close_others_cb), 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(br_async_send(&ring3[i]), 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(async_calls, 1);
    CHECK_EQ(br_loop_close(&loop), 0);
}

/* ------------------------------------------------------------ signals */

static int sig_calls;
static int sig_last;

static void sig_close_cb(br_signal_t *s, int signum)
{
    sig_calls++;
    sig_last = signum;
    CHECK_EQ(br_close(&s->handle, NULL), 0);
}

static int blocked_here(int signum)
{
    sigset_t cur;
    CHECK_EQ(pthread_sigmask(SIG_BLOCK, NULL, &cur), 0);
    return sigismember(&cur, signum);
}

TEST(signal_delivered_through_signalfd)
{
    br_signal_t s;
    loop_open();
    CHECK_EQ(br_signal_init(&loop, &s), 0);
    CHECK_EQ(br_signal_start(&s, sig_close_cb, SIGKILL), -EINVAL);
    CHECK_EQ(br_signal_start(&s, sig_close_cb, 0), -EINVAL);
    CHECK_EQ(br_signal_start(&s, sig_close_cb, _NSIG), -EINVAL);
    CHECK_EQ(blocked_here(SIGUSR1), 0);
    CHECK_EQ(br_signal_start(&s, sig_close_cb, SIGUSR1), 0);
    CHECK_EQ(s.signum, SIGUSR1);
    CHECK_EQ(blocked_here(SIGUSR1), 1);
    CHECK_EQ(raise(SIGUSR1), 0); /* blocked: pending, not fatal */
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(sig_calls, 1);
    CHECK_EQ(sig_last, SIGUSR1);
    CHECK_EQ(blocked_here(SIGUSR1), 0); /* restored by the close */
    CHECK_EQ(br_loop_close(&loop), 0);
}

static void sig_count_cb(br_signal_t *s, int signum)
{
    sig_calls++;
    sig_last = signum;
    br_loop_stop(s->handle.loop);
}

TEST(signal_mask_is_restored_as_it_was)
{
    br_signal_t a, b;
    loop_open();
    CHECK_EQ(br_signal_init(&loop, &a), 0);
    CHECK_EQ(br_signal_init(&loop, &b), 0);

    /* Two watchers: the signal stays blocked until the last one stops,
     * whichever order they stop in. */
    CHECK_EQ(br_signal_start(&a, sig_count_cb, SIGUSR2), 0);
    CHECK_EQ(br_signal_start(&b, sig_count_cb, SIGUSR2), 0);
    CHECK_EQ(br_signal_stop(&a), 0);
    CHECK_EQ(blocked_here(SIGUSR2), 1);
    CHECK_EQ(raise(SIGUSR2), 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 1);
    CHECK_EQ(sig_calls, 1);
    CHECK_EQ(sig_last, SIGUSR2);
    /* An undelivered instance is dropped at stop, not fatal on unblock. */
    CHECK_EQ(raise(SIGUSR2), 0);
    CHECK_EQ(br_signal_stop(&b), 0);
    CHECK_EQ(br_signal_stop(&b), 0);
    CHECK_EQ(blocked_here(SIGUSR2), 0);

    /* Blocked by the program before: still blocked after. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    CHECK_EQ(pthread_sigmask(SIG_BLOCK, &set, NULL), 0);
    CHECK_EQ(br_signal_start(&a, sig_count_cb, SIGUSR1), 0);
    /* Restart on another number moves the mask along. */
    CHECK_EQ(br_signal_start(&b, sig_count_cb, SIGUSR2), 0);
    CHECK_EQ(br_signal_start(&b, sig_count_cb, SIGHUP), 0);
    CHECK_EQ(blocked_here(SIGUSR2), 0);
    CHECK_EQ(blocked_here(SIGHUP), 1);
    CHECK_EQ(br_close(&a.handle, NULL), 0);
    CHECK_EQ(br_close(&b.handle, NULL), 0);
    CHECK_EQ(blocked_here(SIGUSR1), 1);
    CHECK_EQ(blocked_here(SIGHUP), 0);
    loop_finish();
}

BT_MAIN()
