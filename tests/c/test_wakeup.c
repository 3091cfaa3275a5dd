/* test_wakeup.c — br_wakeup_t: the coalescing eventfd wakeup. */
#include "harness.h"

#include <poll.h>

static int readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n = poll(&p, 1, 0);
    CHECK(n >= 0);
    return n == 1 && (p.revents & POLLIN);
}

TEST(signals_coalesce)
{
    br_wakeup_t w;
    CHECK_EQ(br_wakeup_init(&w), 0);
    CHECK_EQ(br_wakeup_drain(&w), 0); /* nothing yet */
    for (int i = 0; i < 1000; i++)
        CHECK_EQ(br_wakeup_signal(&w), 0);
    CHECK_EQ(br_wakeup_drain(&w), 1);
    CHECK_EQ(br_wakeup_drain(&w), 0);
    CHECK_EQ(readable(w.fd), 0);
    br_wakeup_close(&w);
    CHECK_EQ(w.fd, -1);
}

TEST(fd_readable_after_signal)
{
    br_wakeup_t w;
    CHECK_EQ(br_wakeup_init(&w), 0);
    CHECK_EQ(readable(w.fd), 0);
    CHECK_EQ(br_wakeup_signal(&w), 0);
    CHECK_EQ(readable(w.fd), 1);
    CHECK_EQ(br_wakeup_drain(&w), 1);
    CHECK_EQ(readable(w.fd), 0);
    br_wakeup_close(&w);
}

TEST(wait_times_out)
{
    br_wakeup_t w;
    CHECK_EQ(br_wakeup_init(&w), 0);
    CHECK_EQ(br_wakeup_wait(&w, 0), 0);
    int64_t t0 = bt_now_ms();
    CHECK_EQ(br_wakeup_wait(&w, 100), 0);
    int64_t ms = bt_now_ms() - t0;
    CHECK(ms >= 99); /* poll() rounds to the ms; the clock too */
    CHECK(ms < 2000);
    br_wakeup_close(&w);
}

TEST(wait_consumes_pending_signal)
{
    br_wakeup_t w;
    CHECK_EQ(br_wakeup_init(&w), 0);
    CHECK_EQ(br_wakeup_signal(&w), 0);
    CHECK_EQ(br_wakeup_wait(&w, 1000), 1);
    CHECK_EQ(br_wakeup_wait(&w, 0), 0);
    br_wakeup_close(&w);
}

static void *signal_later(void *arg)
{
    bt_sleep_ms(50);
    CHECK_EQ(br_wakeup_signal(arg), 0);
    return NULL;
}

TEST(cross_thread_wake)
{
    br_wakeup_t w;
    CHECK_EQ(br_wakeup_init(&w), 0);
    pthread_t t = bt_thread(signal_later, &w);
    int64_t t0 = bt_now_ms();
    CHECK_EQ(br_wakeup_wait(&w, -1), 1);
    CHECK(bt_now_ms() - t0 >= 40);
    bt_join(t);
    CHECK_EQ(br_wakeup_drain(&w), 0);
    br_wakeup_close(&w);
}

/* ------------------------------------------------------------ no lost wakeups
 * Producers bump a counter and signal, as fast as they can; the owner waits,
 * drains, then reads the counter. A lost wakeup leaves the owner asleep
 * while the counter is ahead of what it has seen, so wait() times out.
 * (The race that drain's read-then-clear order avoids needs a whole signal
 * to fit between two instructions of drain, so this cannot catch it every
 * time; it guards against gross breakage.) */

#define PRODUCERS 2
#define BUMPS 200000
static br_wakeup_t stress_w;
static unsigned counter;

static void *producer(void *arg)
{
    for (int i = 0; i < BUMPS; i++) {
        __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
        CHECK_EQ(br_wakeup_signal(&stress_w), 0);
        /* Pace the producers so that the owner drains thousands of times
         * while signals keep coming: each drain is a chance to lose one. */
        for (volatile int spin = 0; spin < 300; spin++)
            ;
    }
    return NULL;
}

TEST(no_lost_wakeups_under_stress)
{
    pthread_t t[PRODUCERS];
    unsigned seen = 0, wakeups = 0;

    CHECK_EQ(br_wakeup_init(&stress_w), 0);
    for (int i = 0; i < PRODUCERS; i++)
        t[i] = bt_thread(producer, NULL);
    while (seen < PRODUCERS * BUMPS) {
        int r = br_wakeup_wait(&stress_w, 5000);
        if (r == 0)
            fprintf(stderr, "lost wakeup: saw %u of %u\n", seen, PRODUCERS * BUMPS);
        CHECK_EQ(r, 1);
        wakeups++;
        seen = __atomic_load_n(&counter, __ATOMIC_RELAXED);
    }
    for (int i = 0; i < PRODUCERS; i++)
        bt_join(t[i]);
    CHECK(wakeups <= PRODUCERS * BUMPS);
    printf("  %u signals, %u wakeups\n", PRODUCERS * BUMPS, wakeups);
    br_wakeup_close(&stress_w);
}

/* ------------------------------------------------------------ signals */

static br_wakeup_t handler_w;
static void signal_in_handler(int sig) { br_wakeup_signal(&handler_w); }
static void on_usr1(int sig) { (void)sig; }

TEST(signal_from_handler_wakes_and_keeps_errno)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = signal_in_handler;
    CHECK_EQ(sigemptyset(&sa.sa_mask), 0);
    CHECK_EQ(sigaction(SIGUSR2, &sa, NULL), 0);
    CHECK_EQ(br_wakeup_init(&handler_w), 0);
    errno = 1234;
    CHECK_EQ(raise(SIGUSR2), 0);
    CHECK_EQ(errno, 1234);
    CHECK_EQ(br_wakeup_wait(&handler_w, 1000), 1);
    br_wakeup_close(&handler_w);
}

static pthread_t target;
static int target_done;

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
    struct sigaction sa;
    br_wakeup_t w;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    CHECK_EQ(sigemptyset(&sa.sa_mask), 0);
    CHECK_EQ(sigaction(SIGUSR1, &sa, NULL), 0);
    CHECK_EQ(br_wakeup_init(&w), 0);
    target = pthread_self();
    pthread_t t = bt_thread(kicker, NULL);
    int r = br_wakeup_wait(&w, 10000);
    __atomic_store_n(&target_done, 1, __ATOMIC_SEQ_CST);
    bt_join(t);
    CHECK_EQ(r, -EINTR);
    br_wakeup_close(&w);
}

BT_MAIN()
