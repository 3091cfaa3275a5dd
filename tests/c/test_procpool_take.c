/*
 * test_procpool_take.c — br_procpool_take: a waiting thread takes its
 * task's result off the worker's ring itself, beside the pool's loop
 * thread (run on a thread of its own here, as in the Python binding).
 */
#include "procpool_fixture.h"

/* ------------------------------------------------------------ take */

/* A pool whose loop runs on a thread of its own, warmed so that the
 * average task time is known (a take needs it). */
static pthread_t start_threaded(br_procpool_options_t *o)
{
    find_worker();
    br_event_init(&F.closed_ev);
    CHECK_EQ(br_loop_init(&F.loop), 0);
    CHECK_EQ(br_procpool_init(&F.loop, &F.pool, o), 0);
    pthread_t th = bt_thread(loop_thread, NULL);
    static job_t warm[8];
    for (int i = 0; i < 8; i++) {
        memset(&warm[i], 0, sizeof warm[i]);
        submit(&warm[i], "echo:warm");
    }
    int64_t end = bt_now_ms() + 10000;
    while (__atomic_load_n(&F.ndone, __ATOMIC_ACQUIRE) < 8) {
        CHECK(bt_now_ms() < end);
        bt_sleep_ms(1);
    }
    return th;
}

static void stop_threaded(pthread_t th)
{
    CHECK_EQ(br_procpool_close(&F.pool, BR_PPCLOSE_FINISH, 0), 0);
    CHECK_EQ(br_event_wait(&F.closed_ev, 20000 * MS), 0);
    bt_join(th);
    CHECK_EQ(br_loop_close(&F.loop), 0);
}

/* Takes j's result, or waits for its on_done: 1 if taken. */
static int take_or_wait(job_t *j, int64_t spin, br_pptake_t *tk)
{
    if (br_procpool_take(&F.pool, &j->t, spin, 4096, NULL, NULL, tk) == 1)
        return 1;
    int64_t end = bt_now_ms() + 10000;
    while (!__atomic_load_n(&j->done, __ATOMIC_ACQUIRE)) {
        CHECK(bt_now_ms() < end);
        bt_sleep_ms(1);
    }
    return 0;
}

TEST(take_round_trips_without_the_loop_thread)
{
    br_procpool_options_t o = options(1);
    pthread_t th = start_threaded(&o);
    static job_t j[300];
    int taken = 0;
    for (int i = 0; i < 300; i++) {
        submit(&j[i], i % 10 == 9 ? "error:e%d" : "echo:%d", i);
        br_pptake_t tk;
        if (take_or_wait(&j[i], 50 * 1000000LL, &tk)) {
            char want[32];
            snprintf(want, sizeof want, i % 10 == 9 ? "e%d" : "%d", i);
            CHECK_EQ(tk.status, i % 10 == 9 ? BR_PPTASK_ERROR : BR_PPTASK_OK);
            CHECK_EQ(tk.len, strlen(want));
            CHECK(memcmp(tk.reply, want, tk.len) == 0);
            CHECK_EQ(br_pptask_state(&j[i].t), BR_PPSTATE_DONE);
            br_procpool_take_done(&F.pool, &tk);
            br_procpool_take_done(&F.pool, &tk); /* twice: nothing more */
            free(tk.reply);
            taken++;
        } else {
            CHECK_EQ(j[i].status, i % 10 == 9 ? BR_PPTASK_ERROR : BR_PPTASK_OK);
        }
    }
    /* Tiny tasks, one at a time: most are taken (nearly all on a quiet
     * machine: how many is bench procpool's round trip, not this test's --
     * under a loaded ASan run the loop thread gets to some first), and none
     * is also delivered through on_done. */
    CHECK(taken > 0);
    CHECK_EQ(F.ndone, 8 + 300 - taken);
    for (int i = 0; i < 300; i++)
        CHECK(j[i].done == 0 || j[i].len > 0);
    stop_threaded(th);
    CHECK_EQ(F.ndone, 8 + 300 - taken); /* and none after the close */
}

TEST(take_refuses_what_the_loop_thread_must_handle)
{
    br_procpool_options_t o = options(1);
    pthread_t th = start_threaded(&o);
    br_pptake_t tk;
    job_t a = {0}, b = {0}, slow = {0};
    /* Not the only task its worker holds. */
    submit(&a, "sleep:30");
    submit(&b, "echo:behind");
    CHECK_EQ(br_procpool_take(&F.pool, &b.t, 1000000, 4096, NULL, NULL, &tk), 0);
    CHECK(tk.reply == NULL);
    CHECK_EQ(take_or_wait(&a, 0, &tk), 0); /* spin 0: never */
    CHECK_EQ(take_or_wait(&b, 0, &tk), 0);
    CHECK_EQ(b.status, BR_PPTASK_OK);
    /* Tasks longer than the poll on average (the sleeps above count). */
    for (int i = 0; i < 30; i++) {
        job_t s = {0};
        submit(&s, "sleep:2");
        CHECK_EQ(take_or_wait(&s, 100000, &tk), 0);
    }
    /* A reply larger than max_len. */
    submit(&slow, "big:8000");
    CHECK_EQ(br_procpool_take(&F.pool, &slow.t, 50 * 1000000LL, 4096, NULL, NULL, &tk), 0);
    int64_t end = bt_now_ms() + 10000;
    while (!__atomic_load_n(&slow.done, __ATOMIC_ACQUIRE)) {
        CHECK(bt_now_ms() < end);
        bt_sleep_ms(1);
    }
    CHECK_EQ(slow.status, BR_PPTASK_OK);
    CHECK_EQ(slow.len, 8000);
    stop_threaded(th);
}

TEST(take_with_a_task_timeout_is_refused)
{
    br_procpool_options_t o = options(1);
    o.task_timeout_ns = 5000 * 1000000LL;
    pthread_t th = start_threaded(&o);
    job_t j = {0};
    br_pptake_t tk;
    submit(&j, "echo:x");
    CHECK_EQ(take_or_wait(&j, 50 * 1000000LL, &tk), 0);
    CHECK_EQ(j.status, BR_PPTASK_OK);
    stop_threaded(th);
}

TEST(take_while_the_worker_dies)
{
    br_procpool_options_t o = options(1);
    pthread_t th = start_threaded(&o);
    for (int round = 0; round < 5; round++) {
        job_t crash = {0}, after = {0};
        br_pptake_t tk;
        submit(&crash, "crash:%d", SIGKILL);
        /* Polls while the worker dies and the loop thread tears it down:
         * nothing to take, on_done says how it ended. */
        CHECK_EQ(take_or_wait(&crash, 20 * 1000000LL, &tk), 0);
        CHECK_EQ(crash.status, BR_PPTASK_CRASHED);
        submit(&after, "echo:alive");
        if (take_or_wait(&after, 50 * 1000000LL, &tk)) {
            CHECK(tk.len == 5 && memcmp(tk.reply, "alive", 5) == 0);
            br_procpool_take_done(&F.pool, &tk);
            free(tk.reply);
        } else {
            CHECK_EQ(after.status, BR_PPTASK_OK);
        }
    }
    stop_threaded(th);
}

static int refuse_secrets(void *ctx, const void *reply, size_t len)
{
    (*(int *)ctx)++;
    return !(len >= 6 && memcmp(reply, "secret", 6) == 0);
}

TEST(take_leaves_what_the_filter_refuses)
{
    br_procpool_options_t o = options(1);
    pthread_t th = start_threaded(&o);
    int asked = 0, taken = 0;
    for (int i = 0; i < 40; i++) {
        job_t j = {0};
        br_pptake_t tk;
        submit(&j, i % 2 ? "echo:secret%d" : "echo:plain%d", i);
        int got = br_procpool_take(&F.pool, &j.t, 50 * 1000000LL, 4096, refuse_secrets, &asked, &tk);
        if (got) {
            CHECK(i % 2 == 0); /* never a refused one */
            CHECK(memcmp(tk.reply, "plain", 5) == 0);
            br_procpool_take_done(&F.pool, &tk);
            free(tk.reply);
            taken++;
        } else {
            int64_t end = bt_now_ms() + 10000;
            while (!__atomic_load_n(&j.done, __ATOMIC_ACQUIRE)) {
                CHECK(bt_now_ms() < end);
                bt_sleep_ms(1);
            }
            CHECK_EQ(j.status, BR_PPTASK_OK);
        }
    }
    CHECK(asked > 0 && taken > 0);
    stop_threaded(th);
}

TEST(close_waits_for_an_outstanding_take)
{
    br_procpool_options_t o = options(1);
    pthread_t th = start_threaded(&o);
    job_t j = {0};
    br_pptake_t tk;
    int got = 0;
    for (int tries = 0; tries < 50 && !got; tries++) {
        memset(&j, 0, sizeof j);
        submit(&j, "echo:kept");
        got = take_or_wait(&j, 50 * 1000000LL, &tk);
    }
    CHECK(got);
    CHECK_EQ(br_procpool_close(&F.pool, BR_PPCLOSE_FINISH, 0), 0);
    /* The worker exits and is reaped, but the pool does not finish
     * closing while the taken reply is still in use. */
    bt_sleep_ms(200);
    CHECK(!__atomic_load_n(&F.closed, __ATOMIC_ACQUIRE));
    CHECK(tk.len == 4 && memcmp(tk.reply, "kept", 4) == 0);
    br_procpool_take_done(&F.pool, &tk); /* the worker is gone: no ack, and the pool closes */
    free(tk.reply);
    CHECK_EQ(br_event_wait(&F.closed_ev, 20000 * MS), 0);
    bt_join(th);
    CHECK_EQ(br_loop_close(&F.loop), 0);
}

static job_t race_jobs[2][400];

static void *taker_thread(void *arg)
{
    job_t *jobs = arg;
    for (int i = 0; i < 400; i++) {
        submit(&jobs[i], "echo:%d", i);
        br_pptake_t tk;
        if (take_or_wait(&jobs[i], 1000000, &tk)) {
            char want[16];
            snprintf(want, sizeof want, "%d", i);
            CHECK(tk.len == strlen(want) && memcmp(tk.reply, want, tk.len) == 0);
            jobs[i].status = tk.status;
            br_procpool_take_done(&F.pool, &tk);
            free(tk.reply);
        }
    }
    return NULL;
}

TEST(takers_on_two_threads_and_the_loop_thread_share_the_rings)
{
    br_procpool_options_t o = options(2);
    pthread_t th = start_threaded(&o);
    pthread_t a = bt_thread(taker_thread, race_jobs[0]);
    pthread_t b = bt_thread(taker_thread, race_jobs[1]);
    bt_join(a);
    bt_join(b);
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 400; i++)
            CHECK_EQ(race_jobs[k][i].status, BR_PPTASK_OK);
    stop_threaded(th);
}

BT_MAIN()
