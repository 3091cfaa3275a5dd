/* test_event.c — br_event_t: the futex one-shot event. */
#include "harness.h"

#include <linux/futex.h>
#include <sys/syscall.h>

TEST(zeroed_is_unset_and_set_before_wait)
{
    br_event_t ev = {0};
    CHECK_EQ(br_event_is_set(&ev), 0);
    br_event_set(&ev);
    br_event_set(&ev); /* idempotent */
    CHECK_EQ(br_event_is_set(&ev), 1);
    CHECK_EQ(br_event_wait(&ev, -1), 0);
    CHECK_EQ(br_event_wait(&ev, 0), 0);

    br_event_init(&ev);
    CHECK_EQ(br_event_is_set(&ev), 0);
}

TEST(wait_timeout)
{
    br_event_t ev;
    br_event_init(&ev);

    CHECK_EQ(br_event_wait(&ev, 0), -ETIMEDOUT); /* a poll, no sleep */

    int64_t t0 = br_now_ns();
    CHECK_EQ(br_event_wait(&ev, 100 * 1000000LL), -ETIMEDOUT);
    int64_t ms = (br_now_ns() - t0) / 1000000;
    CHECK(ms >= 100);  /* never early */
    CHECK(ms < 2000);  /* and not absurdly late, even under sanitizers */
    CHECK_EQ(br_event_is_set(&ev), 0);
}

/* ------------------------------------------------------------ waiters */

#define NWAITERS 16
static br_event_t shared_ev;
static int payload;
static int woken;

static void *waiter(void *arg)
{
    CHECK_EQ(br_event_wait(&shared_ev, 10 * 1000000000LL), 0);
    CHECK_EQ(payload, 42); /* written before set(): visible after wait() */
    __atomic_fetch_add(&woken, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

TEST(many_waiters_all_woken)
{
    pthread_t t[NWAITERS];

    br_event_init(&shared_ev);
    for (int i = 0; i < NWAITERS; i++)
        t[i] = bt_thread(waiter, NULL);
    bt_sleep_ms(100); /* let them reach FUTEX_WAIT */
    CHECK_EQ(__atomic_load_n(&woken, __ATOMIC_SEQ_CST), 0);
    payload = 42;
    br_event_set(&shared_ev);
    for (int i = 0; i < NWAITERS; i++)
        bt_join(t[i]);
    CHECK_EQ(woken, NWAITERS);
}

static void *set_later(void *arg)
{
    bt_sleep_ms(50);
    br_event_set(arg);
    return NULL;
}

TEST(set_from_another_thread_forever_wait)
{
    br_event_t ev;
    br_event_init(&ev);
    pthread_t t = bt_thread(set_later, &ev);
    int64_t t0 = bt_now_ms();
    CHECK_EQ(br_event_wait(&ev, -1), 0);
    CHECK(bt_now_ms() - t0 >= 40);
    bt_join(t);
}

/* ------------------------------------------------------------ spurious wakeups */

static br_event_t spurious_ev;
static int stop_poking;

/* FUTEX_WAKE without setting the event: the waiter wakes with the event
 * still unset and must go back to sleep for the rest of its deadline. */
static void *poker(void *arg)
{
    while (!__atomic_load_n(&stop_poking, __ATOMIC_SEQ_CST)) {
        long r = syscall(SYS_futex, &spurious_ev.word_, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
        CHECK(r >= 0);
        bt_sleep_ms(1);
    }
    return NULL;
}

TEST(deadline_holds_across_spurious_wakeups)
{
    br_event_init(&spurious_ev);
    pthread_t t = bt_thread(poker, NULL);
    int64_t t0 = br_now_ns();
    CHECK_EQ(br_event_wait(&spurious_ev, 200 * 1000000LL), -ETIMEDOUT);
    int64_t ms = (br_now_ns() - t0) / 1000000;
    __atomic_store_n(&stop_poking, 1, __ATOMIC_SEQ_CST);
    bt_join(t);
    CHECK(ms >= 200);
    CHECK(ms < 2000);
}

/* ------------------------------------------------------------ signals */

static void on_usr1(int sig) { (void)sig; }

static void install_usr1_no_restart(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1; /* no SA_RESTART: like Python's handlers */
    CHECK_EQ(sigemptyset(&sa.sa_mask), 0);
    CHECK_EQ(sigaction(SIGUSR1, &sa, NULL), 0);
}

static pthread_t target;
static int target_done;

/* Keep signalling until the target returns: a signal that lands before it
 * is asleep in the futex is simply missed. */
static void *kicker(void *arg)
{
    while (!__atomic_load_n(&target_done, __ATOMIC_SEQ_CST)) {
        bt_sleep_ms(20);
        CHECK_EQ(pthread_kill(target, SIGUSR1), 0);
    }
    return NULL;
}

static void check_eintr(int64_t timeout_ns)
{
    br_event_t ev;
    br_event_init(&ev);
    install_usr1_no_restart();
    target = pthread_self();
    target_done = 0;
    pthread_t t = bt_thread(kicker, NULL);
    int r = br_event_wait(&ev, timeout_ns);
    __atomic_store_n(&target_done, 1, __ATOMIC_SEQ_CST);
    bt_join(t);
    CHECK_EQ(r, -EINTR);
    CHECK_EQ(br_event_is_set(&ev), 0);
}

TEST(signal_handler_gives_eintr_with_timeout) { check_eintr(10 * 1000000000LL); }
TEST(signal_handler_gives_eintr_without_timeout) { check_eintr(-1); }

/* br_event_set is async-signal-safe: set it from a handler. */
static br_event_t handler_ev;
static void set_in_handler(int sig) { br_event_set(&handler_ev); }

static void *wait_handler_ev(void *arg)
{
    CHECK_EQ(br_event_wait(&handler_ev, 10 * 1000000000LL), 0);
    return NULL;
}

TEST(set_from_signal_handler_keeps_errno)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = set_in_handler;
    sa.sa_flags = SA_RESTART;
    CHECK_EQ(sigemptyset(&sa.sa_mask), 0);
    CHECK_EQ(sigaction(SIGUSR2, &sa, NULL), 0);
    br_event_init(&handler_ev);
    pthread_t t = bt_thread(wait_handler_ev, NULL);
    bt_sleep_ms(50); /* the waiter sleeps: set() must make the wake syscall */
    errno = 1234;
    CHECK_EQ(raise(SIGUSR2), 0);
    CHECK_EQ(errno, 1234);
    bt_join(t);
    CHECK_EQ(br_event_is_set(&handler_ev), 1);
}

BT_MAIN()
