/* test_timer.c — br_timer_t and the loop's timer phase. */
#include "harness.h"

#define MS 1000000LL

static br_loop_t loop;

static void loop_open(void) { CHECK_EQ(br_loop_init(&loop), 0); }

static void loop_finish(void)
{
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(br_loop_close(&loop), 0);
}

/* ------------------------------------------------------------ one shot */

static int fired;
static int64_t fired_at_ms;

static void count_cb(br_timer_t *t)
{
    fired++;
    fired_at_ms = bt_now_ms();
}

TEST(fires_once_on_time)
{
    br_timer_t t;
    loop_open();
    CHECK_EQ(br_timer_init(&loop, &t), 0);
    int64_t t0 = bt_now_ms();
    CHECK_EQ(br_timer_start(&t, count_cb, 100 * MS, 0), 0);
    CHECK(br_is_active(&t.handle));
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0); /* nothing left */
    CHECK_EQ(fired, 1);
    CHECK(fired_at_ms - t0 >= 100);
    CHECK(fired_at_ms - t0 < 2000);
    CHECK(!br_is_active(&t.handle));
    CHECK_EQ(br_close(&t.handle, NULL), 0);
    loop_finish();
}

TEST(bad_arguments)
{
    br_timer_t t;
    loop_open();
    CHECK_EQ(br_timer_init(&loop, &t), 0);
    CHECK_EQ(br_timer_start(&t, NULL, 0, 0), -EINVAL);
    CHECK_EQ(br_timer_start(&t, count_cb, -1, 0), -EINVAL);
    CHECK_EQ(br_timer_start(&t, count_cb, 0, -1), -EINVAL);
    CHECK_EQ(br_timer_again(&t), -EINVAL); /* never started */
    CHECK_EQ(br_close(&t.handle, NULL), 0);
    CHECK_EQ(br_close(&t.handle, NULL), -EINVAL); /* twice */
    CHECK_EQ(br_timer_start(&t, count_cb, 0, 0), -EBUSY);
    loop_finish();
}

/* ------------------------------------------------------------ repeat */

static int ticks;
static int64_t last_tick_ms;

static void busy_tick_cb(br_timer_t *t)
{
    /* 15 ms of work per tick: a timer that re-armed from "now" would drift
     * by that much on every period. */
    int64_t t0 = bt_now_ms();
    while (bt_now_ms() - t0 < 15)
        ;
    last_tick_ms = bt_now_ms();
    if (++ticks == 25)
        CHECK_EQ(br_timer_stop(t), 0);
}

TEST(repeat_does_not_drift)
{
    br_timer_t t;
    loop_open();
    CHECK_EQ(br_timer_init(&loop, &t), 0);
    int64_t t0 = bt_now_ms();
    CHECK_EQ(br_timer_start(&t, busy_tick_cb, 20 * MS, 20 * MS), 0);
    CHECK_EQ(br_timer_get_repeat(&t), 20 * MS);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(ticks, 25);
    /* The 25th tick is due at 500 ms and ends 15 ms later. With drift every
     * period would be at least 35 ms: the last tick would end at 20 + 24 *
     * 35 + 15 = 875 ms or later. The gap between is slack for a loaded
     * machine (a stall there skips periods, each adding 20 ms). */
    int64_t elapsed = last_tick_ms - t0;
    fprintf(stderr, "25 ticks of 20 ms with 15 ms of work each: %lld ms\n", (long long)elapsed);
    CHECK(elapsed >= 515);
    CHECK(elapsed < 800);
    CHECK_EQ(br_close(&t.handle, NULL), 0);
    loop_finish();
}

/* ------------------------------------------------------------ order */

enum { NORDER = 100 };
static int order[20000];
static int norder;

typedef struct tagged_s {
    br_timer_t t;
    int tag;
    int64_t deadline_ms;
} tagged_t;

static void record_cb(br_timer_t *t)
{
    tagged_t *x = t->handle.data;
    order[norder++] = x->tag;
}

TEST(equal_deadlines_run_in_start_order)
{
    static tagged_t ts[NORDER];
    loop_open();
    for (int i = 0; i < NORDER; i++) {
        CHECK_EQ(br_timer_init(&loop, &ts[i].t), 0);
        ts[i].t.handle.data = &ts[i];
        ts[i].tag = i;
    }
    /* Start in reverse, then restart the even ones: start order is odd
     * ones high to low, then even ones low to high. */
    for (int i = NORDER - 1; i >= 0; i--)
        CHECK_EQ(br_timer_start(&ts[i].t, record_cb, 10 * MS, 0), 0);
    for (int i = 0; i < NORDER; i += 2)
        CHECK_EQ(br_timer_start(&ts[i].t, record_cb, 10 * MS, 0), 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(norder, NORDER);
    int k = 0;
    for (int i = NORDER - 1; i >= 0; i -= 2)
        CHECK_EQ(order[k++], i);
    for (int i = 0; i < NORDER; i += 2)
        CHECK_EQ(order[k++], i);
    for (int i = 0; i < NORDER; i++)
        CHECK_EQ(br_close(&ts[i].t.handle, NULL), 0);
    loop_finish();
}

static unsigned rng_state = 12345;
static unsigned rng(void)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return rng_state >> 8;
}

static tagged_t *many;

static void deadline_cb(br_timer_t *t)
{
    tagged_t *x = t->handle.data;
    order[norder++] = x->tag;
}

TEST(ten_thousand_timers_fire_in_deadline_order)
{
    enum { N = 10000 };
    many = calloc(N, sizeof *many);
    CHECK(many != NULL);
    loop_open();
    /* Deadlines 0..199 ms in random order, many equal: the order must be
     * by deadline, then by start order. */
    int64_t start_rank[N];
    for (int i = 0; i < N; i++) {
        CHECK_EQ(br_timer_init(&loop, &many[i].t), 0);
        many[i].t.handle.data = &many[i];
        many[i].tag = i;
        many[i].deadline_ms = rng() % 200;
        start_rank[i] = i;
    }
    /* Stop and restart a random third, which changes their start rank. */
    int64_t rank = 0;
    for (int i = 0; i < N; i++) {
        CHECK_EQ(br_timer_start(&many[i].t, deadline_cb, many[i].deadline_ms * MS, 0), 0);
        start_rank[i] = rank++;
    }
    for (int i = 0; i < N; i++) {
        if (rng() % 3 != 0)
            continue;
        CHECK_EQ(br_timer_stop(&many[i].t), 0);
        CHECK_EQ(br_timer_start(&many[i].t, deadline_cb, many[i].deadline_ms * MS, 0), 0);
        start_rank[i] = rank++;
    }
    /* And drop some altogether. */
    int stopped = 0;
    for (int i = 0; i < N; i += 97) {
        CHECK_EQ(br_timer_stop(&many[i].t), 0);
        stopped++;
    }
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(norder, N - stopped);
    for (int k = 1; k < norder; k++) {
        tagged_t *a = &many[order[k - 1]], *b = &many[order[k]];
        CHECK(a->deadline_ms <= b->deadline_ms);
        if (a->deadline_ms == b->deadline_ms)
            CHECK(start_rank[a->tag] < start_rank[b->tag]);
    }
    for (int k = 0; k < norder; k++)
        CHECK(order[k] % 97 != 0);
    for (int i = 0; i < N; i++)
        CHECK_EQ(br_close(&many[i].t.handle, NULL), 0);
    loop_finish();
    free(many);
}

/* ------------------------------------------------------------ stop, again */

TEST(stop_prevents_firing)
{
    br_timer_t t;
    loop_open();
    CHECK_EQ(br_timer_init(&loop, &t), 0);
    CHECK_EQ(br_timer_start(&t, count_cb, 10 * MS, 0), 0);
    CHECK_EQ(br_timer_stop(&t), 0);
    CHECK_EQ(br_timer_stop(&t), 0); /* idempotent */
    CHECK(!br_is_active(&t.handle));
    CHECK_EQ(br_loop_alive(&loop), 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(fired, 0);
    CHECK_EQ(br_close(&t.handle, NULL), 0);
    loop_finish();
}

static void again_cb(br_timer_t *t)
{
    fired++;
    CHECK_EQ(br_timer_stop(t), 0);
}

TEST(again_restarts_with_repeat)
{
    br_timer_t t;
    loop_open();
    CHECK_EQ(br_timer_init(&loop, &t), 0);
    CHECK_EQ(br_timer_start(&t, again_cb, 10000 * MS, 50 * MS), 0);
    CHECK(br_timer_get_due_in(&t) > 9000 * MS);
    int64_t t0 = bt_now_ms();
    CHECK_EQ(br_timer_again(&t), 0);
    CHECK(br_timer_get_due_in(&t) <= 50 * MS);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    int64_t ms = bt_now_ms() - t0;
    CHECK_EQ(fired, 1);
    CHECK(ms >= 49);
    CHECK(ms < 2000);

    /* again on a one-shot timer does nothing. */
    br_timer_set_repeat(&t, 0);
    CHECK_EQ(br_timer_again(&t), 0);
    CHECK(!br_is_active(&t.handle));
    CHECK_EQ(br_close(&t.handle, NULL), 0);
    loop_finish();
}

/* ------------------------------------------------------------ from callbacks */

static br_timer_t ta, tb;
static int a_runs, b_runs;

static void b_cb(br_timer_t *t) { b_runs++; }

static void a_cb(br_timer_t *t)
{
    a_runs++;
    CHECK_EQ(br_timer_start(&tb, b_cb, 0, 0), 0);
    /* A timer restarting itself with 0 must not spin in one iteration. */
    if (a_runs < 5)
        CHECK_EQ(br_timer_start(&ta, a_cb, 0, 0), 0);
}

TEST(timer_started_in_callback_waits_for_next_iteration)
{
    loop_open();
    CHECK_EQ(br_timer_init(&loop, &ta), 0);
    CHECK_EQ(br_timer_init(&loop, &tb), 0);
    CHECK_EQ(br_timer_start(&ta, a_cb, 0, 0), 0);
    for (int i = 1; i <= 5; i++) {
        CHECK_EQ(br_loop_run(&loop, BR_RUN_NOWAIT), 1);
        CHECK_EQ(a_runs, i);
        CHECK_EQ(b_runs, i - 1);
    }
    CHECK_EQ(br_loop_run(&loop, BR_RUN_NOWAIT), 0);
    CHECK_EQ(b_runs, 5);
    CHECK_EQ(br_close(&ta.handle, NULL), 0);
    CHECK_EQ(br_close(&tb.handle, NULL), 0);
    loop_finish();
}

static int closed;
static void closed_cb(br_handle_t *h)
{
    closed++;
    free(h);
}

static void close_self_cb(br_timer_t *t)
{
    fired++;
    CHECK_EQ(br_close(&t->handle, closed_cb), 0);
    CHECK_EQ(closed, 0); /* never from inside br_close */
}

TEST(repeating_timer_closed_from_its_callback)
{
    loop_open();
    br_timer_t *t = malloc(sizeof *t);
    CHECK(t != NULL);
    CHECK_EQ(br_timer_init(&loop, t), 0);
    CHECK_EQ(br_timer_start(t, close_self_cb, 1 * MS, 1 * MS), 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(fired, 1);
    CHECK_EQ(closed, 1);
    loop_finish();
}

TEST(unreferenced_timer_does_not_keep_loop_alive)
{
    br_timer_t t;
    loop_open();
    CHECK_EQ(br_timer_init(&loop, &t), 0);
    CHECK_EQ(br_timer_start(&t, count_cb, 10000 * MS, 0), 0);
    br_unref(&t.handle);
    br_unref(&t.handle);
    int64_t t0 = bt_now_ms();
    CHECK_EQ(br_loop_run(&loop, BR_RUN_DEFAULT), 0);
    CHECK(bt_now_ms() - t0 < 1000);
    CHECK_EQ(fired, 0);
    br_ref(&t.handle);
    CHECK_EQ(br_loop_alive(&loop), 1);
    CHECK_EQ(br_close(&t.handle, NULL), 0);
    loop_finish();
}

TEST(huge_timeout_saturates)
{
    br_timer_t t;
    loop_open();
    CHECK_EQ(br_timer_init(&loop, &t), 0);
    CHECK_EQ(br_timer_start(&t, count_cb, INT64_MAX, INT64_MAX), 0);
    CHECK(br_timer_get_due_in(&t) > 0);
    CHECK_EQ(br_loop_run(&loop, BR_RUN_NOWAIT), 1);
    CHECK_EQ(fired, 0);
    CHECK_EQ(br_close(&t.handle, NULL), 0);
    loop_finish();
}

BT_MAIN()
