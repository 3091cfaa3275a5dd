/* test_threadpool.c — br_threadpool_t. */
#include "harness.h"

#include <sys/time.h>

#define SEQ __ATOMIC_SEQ_CST

/* ------------------------------------------------------------ fixtures
 * An item_t records what the pool did with it. Items that block wait on
 * `gate` until the test opens it, so a test can hold workers busy. */

typedef struct item_s {
    br_work_t w;
    unsigned index;
    int block;             /* wait for the gate before returning */
    unsigned ran;          /* work() calls */
    unsigned done_calls;   /* done() calls */
    int status;            /* the last done() status */
    pthread_t work_thread;
    pthread_t done_thread;
    long result;
} item_t;

static br_event_t gate;          /* opened by the test */
static unsigned blocked;         /* blocking items that have started */
static br_event_t all_done;      /* set when `remaining` reaches 0 */
static unsigned remaining;
static unsigned order[100000];   /* indexes in the order they ran */
static unsigned order_len;
static br_threadpool_t pool;

static void item_work(br_work_t *w)
{
    item_t *it = w->data;
    it->work_thread = pthread_self();
    it->result = (long)it->index * it->index;
    order[__atomic_fetch_add(&order_len, 1, SEQ)] = it->index;
    if (it->block) {
        __atomic_fetch_add(&blocked, 1, SEQ);
        CHECK_EQ(br_event_wait(&gate, 10 * 1000000000LL), 0);
    }
    __atomic_fetch_add(&it->ran, 1, SEQ);
}

static void item_done(br_work_t *w, int status)
{
    item_t *it = w->data;
    /* done() runs after work(), never instead of it unless cancelled */
    CHECK_EQ(__atomic_load_n(&it->ran, SEQ), status == 0 ? 1 : 0);
    it->status = status;
    it->done_thread = pthread_self();
    __atomic_fetch_add(&it->done_calls, 1, SEQ);
    if (__atomic_sub_fetch(&remaining, 1, SEQ) == 0)
        br_event_set(&all_done);
}

static item_t *make_items(unsigned n)
{
    item_t *items = calloc(n, sizeof *items);
    CHECK(items != NULL);
    for (unsigned i = 0; i < n; i++) {
        items[i].index = i;
        items[i].w.work = item_work;
        items[i].w.done = item_done;
        items[i].w.data = &items[i];
    }
    __atomic_add_fetch(&remaining, n, SEQ);
    return items;
}

static void pool_init(br_threadpool_t *p, unsigned max_threads)
{
    br_threadpool_options_t o = {.max_threads = max_threads, .name_prefix = "tp"};
    CHECK_EQ(br_threadpool_init(p, &o), 0);
}

static void pool_finish(br_threadpool_t *p)
{
    CHECK_EQ(br_threadpool_close(p, BR_CLOSE_DRAIN), 0);
    CHECK_EQ(br_threadpool_join(p), 0);
    br_threadpool_destroy(p);
}

static void wait_all_done(void) { CHECK_EQ(br_event_wait(&all_done, 10 * 1000000000LL), 0); }

static void wait_blocked(unsigned n)
{
    int64_t t0 = bt_now_ms();
    while (__atomic_load_n(&blocked, SEQ) < n) {
        CHECK(bt_now_ms() - t0 < 10000);
        bt_sleep_ms(1);
    }
}

/* Peeks at a private field: how many workers sleep in work_cv_. Tests only. */
static unsigned idle_workers(br_threadpool_t *p)
{
    CHECK_EQ(pthread_mutex_lock(&p->mu_), 0);
    unsigned n = p->idle_;
    CHECK_EQ(pthread_mutex_unlock(&p->mu_), 0);
    return n;
}

static void wait_idle(br_threadpool_t *p, unsigned n)
{
    int64_t t0 = bt_now_ms();
    while (idle_workers(p) < n) {
        CHECK(bt_now_ms() - t0 < 10000);
        bt_sleep_ms(1);
    }
}

/* ------------------------------------------------------------ basics */

TEST(many_items_all_results)
{
    enum { N = 20000 };
    pool_init(&pool, 4);
    item_t *items = make_items(N);
    for (unsigned i = 0; i < N; i++)
        CHECK_EQ(br_threadpool_submit(&pool, &items[i].w), 0);
    wait_all_done();
    for (unsigned i = 0; i < N; i++) {
        CHECK_EQ(items[i].ran, 1);
        CHECK_EQ(items[i].done_calls, 1);
        CHECK_EQ(items[i].status, 0);
        CHECK_EQ(items[i].result, (long)i * i);
    }
    CHECK(br_threadpool_threads(&pool) <= 4);
    pool_finish(&pool);
    free(items);
}

TEST(fifo_with_one_thread)
{
    enum { N = 2000 };
    pool_init(&pool, 1);
    item_t *items = make_items(N);
    items[0].block = 1; /* hold the worker until everything is queued */
    for (unsigned i = 0; i < N; i++)
        CHECK_EQ(br_threadpool_submit(&pool, &items[i].w), 0);
    CHECK(br_threadpool_queued(&pool) >= N - 1);
    br_event_set(&gate);
    wait_all_done();
    CHECK_EQ(order_len, N);
    for (unsigned i = 0; i < N; i++)
        CHECK_EQ(order[i], i);
    pool_finish(&pool);
    free(items);
}

TEST(done_status_and_thread)
{
    pool_init(&pool, 2);
    item_t *items = make_items(10);
    for (unsigned i = 0; i < 10; i++)
        CHECK_EQ(br_threadpool_submit(&pool, &items[i].w), 0);
    wait_all_done();
    for (unsigned i = 0; i < 10; i++) {
        CHECK_EQ(items[i].done_calls, 1);
        CHECK_EQ(items[i].status, 0);
        /* done() runs on the worker, right after work() */
        CHECK(pthread_equal(items[i].done_thread, items[i].work_thread));
        CHECK(!pthread_equal(items[i].done_thread, pthread_self()));
    }
    pool_finish(&pool);
    free(items);
}

TEST(invalid_arguments)
{
    br_threadpool_options_t o = {.max_threads = 0};
    br_work_t w = {0};
    CHECK_EQ(br_threadpool_init(&pool, &o), -EINVAL);
    CHECK_EQ(br_threadpool_init(&pool, NULL), -EINVAL);
    o.max_threads = 1;
    o.stack_size = 1; /* below PTHREAD_STACK_MIN */
    CHECK_EQ(br_threadpool_init(&pool, &o), -EINVAL);

    pool_init(&pool, 1);
    CHECK_EQ(br_threadpool_submit(&pool, &w), -EINVAL); /* no work callback */
    CHECK_EQ(br_threadpool_submit(&pool, NULL), -EINVAL);
    CHECK_EQ(br_threadpool_join(&pool), -EINVAL);       /* still open */
    CHECK_EQ(br_threadpool_close(&pool, (enum br_close_mode)7), -EINVAL);
    CHECK(br_threadpool_try_take(&pool) == NULL);
    CHECK_EQ(br_threadpool_threads(&pool), 0);          /* lazy: none yet */
    pool_finish(&pool);
}

TEST(submit_twice_while_queued_is_einval)
{
    pool_init(&pool, 1);
    item_t *items = make_items(2);
    items[0].block = 1;
    CHECK_EQ(br_threadpool_submit(&pool, &items[0].w), 0);
    CHECK_EQ(br_threadpool_submit(&pool, &items[1].w), 0);
    CHECK_EQ(br_threadpool_submit(&pool, &items[1].w), -EINVAL);
    br_event_set(&gate);
    wait_all_done();
    CHECK_EQ(items[1].ran, 1);
    /* Once done, an item may be submitted again. */
    items[1].ran = 0;
    br_event_init(&all_done);
    remaining = 1;
    CHECK_EQ(br_threadpool_submit(&pool, &items[1].w), 0);
    wait_all_done();
    CHECK_EQ(items[1].done_calls, 2);
    pool_finish(&pool);
    free(items);
}

/* ------------------------------------------------------------ cancel */

TEST(cancel_queued_and_running)
{
    pool_init(&pool, 1);
    item_t *items = make_items(3);
    items[0].block = 1;
    for (unsigned i = 0; i < 3; i++)
        CHECK_EQ(br_threadpool_submit(&pool, &items[i].w), 0);
    wait_blocked(1);

    CHECK_EQ(br_threadpool_cancel(&pool, &items[1].w), 0);
    /* done(-ECANCELED) ran on this thread, before cancel returned */
    CHECK_EQ(items[1].done_calls, 1);
    CHECK_EQ(items[1].status, -ECANCELED);
    CHECK(pthread_equal(items[1].done_thread, pthread_self()));
    CHECK_EQ(br_threadpool_cancel(&pool, &items[1].w), -EBUSY); /* done already */
    CHECK_EQ(br_threadpool_cancel(&pool, &items[0].w), -EBUSY); /* running */
    CHECK_EQ(br_threadpool_queued(&pool), 1);

    br_event_set(&gate);
    wait_all_done();
    CHECK_EQ(items[0].status, 0);
    CHECK_EQ(items[1].ran, 0);
    CHECK_EQ(items[1].done_calls, 1);
    CHECK_EQ(items[2].status, 0);
    CHECK_EQ(br_threadpool_cancel(&pool, &items[2].w), -EBUSY);
    pool_finish(&pool);
    free(items);
}

/* ------------------------------------------------------------ close, join */

TEST(close_drain_runs_everything)
{
    enum { N = 200 };
    pool_init(&pool, 2);
    item_t *items = make_items(N);
    items[0].block = items[1].block = 1;
    for (unsigned i = 0; i < N; i++)
        CHECK_EQ(br_threadpool_submit(&pool, &items[i].w), 0);
    wait_blocked(2);
    CHECK_EQ(br_threadpool_close(&pool, BR_CLOSE_DRAIN), 0);
    CHECK_EQ(br_threadpool_close(&pool, BR_CLOSE_DRAIN), 0); /* idempotent */
    item_t extra = {.w = {.work = item_work, .data = &extra}};
    CHECK_EQ(br_threadpool_submit(&pool, &extra.w), -ESHUTDOWN);
    br_event_set(&gate);
    CHECK_EQ(br_threadpool_join(&pool), 0);
    CHECK_EQ(br_threadpool_join(&pool), 0); /* again: nothing to do */
    for (unsigned i = 0; i < N; i++) {
        CHECK_EQ(items[i].ran, 1);
        CHECK_EQ(items[i].status, 0);
    }
    CHECK_EQ(br_threadpool_submit(&pool, &extra.w), -ESHUTDOWN);
    CHECK_EQ(extra.ran, 0);
    br_threadpool_destroy(&pool);
    free(items);
}

static void on_alarm(int sig) { (void)sig; }

TEST(wait_exited_times_out_is_interrupted_then_succeeds)
{
    pool_init(&pool, 2);
    CHECK_EQ(br_threadpool_wait_exited(&pool, 0), -EINVAL); /* still open */
    item_t *items = make_items(2);
    items[0].block = items[1].block = 1;
    for (unsigned i = 0; i < 2; i++)
        CHECK_EQ(br_threadpool_submit(&pool, &items[i].w), 0);
    wait_blocked(2);
    CHECK_EQ(br_threadpool_close(&pool, BR_CLOSE_DRAIN), 0);
    CHECK_EQ(br_threadpool_wait_exited(&pool, 20 * 1000000LL), -ETIMEDOUT);
    /* a signal handler running on the waiting thread ends the wait: the
     * caller (Python's Ctrl-C, say) gets its turn */
    struct sigaction sa = {.sa_handler = on_alarm};
    CHECK_EQ(sigemptyset(&sa.sa_mask), 0);
    CHECK_EQ(sigaction(SIGALRM, &sa, NULL), 0);
    struct itimerval it = {.it_value = {.tv_usec = 20000}};
    CHECK_EQ(setitimer(ITIMER_REAL, &it, NULL), 0);
    CHECK_EQ(br_threadpool_wait_exited(&pool, 10 * 1000000000LL), -EINTR);
    br_event_set(&gate);
    CHECK_EQ(br_threadpool_wait_exited(&pool, 10 * 1000000000LL), 0);
    CHECK_EQ(br_threadpool_live(&pool), 0);
    CHECK_EQ(br_threadpool_join(&pool), 0);
    br_threadpool_destroy(&pool);
    free(items);
}

TEST(wait_exited_of_a_pool_that_never_started_a_thread)
{
    pool_init(&pool, 2);
    CHECK_EQ(br_threadpool_close(&pool, BR_CLOSE_DRAIN), 0);
    CHECK_EQ(br_threadpool_wait_exited(&pool, 0), 0);
    CHECK_EQ(br_threadpool_join(&pool), 0);
    br_threadpool_destroy(&pool);
}

TEST(close_cancel_cancels_queued_running_finish)
{
    enum { N = 100 };
    pool_init(&pool, 2);
    item_t *items = make_items(N);
    items[0].block = items[1].block = 1;
    for (unsigned i = 0; i < N; i++)
        CHECK_EQ(br_threadpool_submit(&pool, &items[i].w), 0);
    wait_blocked(2);
    CHECK_EQ(br_threadpool_close(&pool, BR_CLOSE_CANCEL), 0);
    /* Every queued item is done with -ECANCELED, here, before close returns. */
    for (unsigned i = 2; i < N; i++) {
        CHECK_EQ(items[i].done_calls, 1);
        CHECK_EQ(items[i].status, -ECANCELED);
        CHECK(pthread_equal(items[i].done_thread, pthread_self()));
    }
    CHECK_EQ(br_threadpool_queued(&pool), 0);
    CHECK_EQ(items[0].done_calls, 0); /* the running ones are untouched */
    br_event_set(&gate);
    CHECK_EQ(br_threadpool_join(&pool), 0);
    for (unsigned i = 0; i < 2; i++) {
        CHECK_EQ(items[i].ran, 1);
        CHECK_EQ(items[i].status, 0);
    }
    for (unsigned i = 2; i < N; i++)
        CHECK_EQ(items[i].ran, 0);
    br_threadpool_destroy(&pool);
    free(items);
}

TEST(cancel_after_drain_still_cancels)
{
    pool_init(&pool, 1);
    item_t *items = make_items(5);
    items[0].block = 1;
    for (unsigned i = 0; i < 5; i++)
        CHECK_EQ(br_threadpool_submit(&pool, &items[i].w), 0);
    wait_blocked(1);
    CHECK_EQ(br_threadpool_close(&pool, BR_CLOSE_DRAIN), 0);
    CHECK_EQ(br_threadpool_close(&pool, BR_CLOSE_CANCEL), 0);
    for (unsigned i = 1; i < 5; i++)
        CHECK_EQ(items[i].status, -ECANCELED);
    br_event_set(&gate);
    CHECK_EQ(br_threadpool_join(&pool), 0);
    CHECK_EQ(items[0].status, 0);
    br_threadpool_destroy(&pool);
    free(items);
}

static int join_result_open = 1, join_result_closed = 1;
static br_event_t closed_ev;

static void join_self_work(br_work_t *w)
{
    join_result_open = br_threadpool_join(&pool);
    CHECK_EQ(br_event_wait(&closed_ev, 10 * 1000000000LL), 0);
    join_result_closed = br_threadpool_join(&pool);
}

TEST(join_from_worker_is_edeadlk)
{
    br_work_t w = {.work = join_self_work};
    pool_init(&pool, 2);
    CHECK_EQ(br_threadpool_submit(&pool, &w), 0);
    CHECK_EQ(br_threadpool_close(&pool, BR_CLOSE_DRAIN), 0);
    br_event_set(&closed_ev);
    CHECK_EQ(br_threadpool_join(&pool), 0);
    CHECK_EQ(join_result_open, -EDEADLK);
    CHECK_EQ(join_result_closed, -EDEADLK);
    br_threadpool_destroy(&pool);
}

TEST(destroy_unused_pool)
{
    /* Never submitted to: no thread, nothing to join. */
    pool_init(&pool, 3);
    br_threadpool_destroy(&pool);
}

/* ------------------------------------------------------------ detach */

static br_event_t detached_ev;
static unsigned detached_calls;
static unsigned ran_at_detach;
static pthread_t detached_thread;
static unsigned ran_total;

static void count_work(br_work_t *w)
{
    if (__atomic_add_fetch(&ran_total, 1, SEQ) % 16 == 0)
        bt_sleep_ms(1); /* keep workers busy long enough to detach under them */
}

static void on_detached(br_threadpool_t *p)
{
    __atomic_fetch_add(&detached_calls, 1, SEQ);
    ran_at_detach = __atomic_load_n(&ran_total, SEQ);
    detached_thread = pthread_self();
    /* The pool is ours again: free it from here, as the header allows. */
    br_threadpool_destroy(p);
    free(p);
    br_event_set(&detached_ev);
}

TEST(detach_with_pending_work)
{
    enum { N = 500 };
    br_threadpool_t *p = malloc(sizeof *p);
    br_work_t *items = calloc(N, sizeof *items);
    CHECK(p != NULL && items != NULL);
    pool_init(p, 3);
    for (unsigned i = 0; i < N; i++) {
        items[i].work = count_work;
        CHECK_EQ(br_threadpool_submit(p, &items[i]), 0);
    }
    CHECK_EQ(br_threadpool_detach(p, on_detached), 0);
    /* p may be gone from here on. */
    CHECK_EQ(br_event_wait(&detached_ev, 10 * 1000000000LL), 0);
    CHECK_EQ(ran_at_detach, N);
    CHECK(!pthread_equal(detached_thread, pthread_self()));
    bt_sleep_ms(100); /* a second call would come now, and threads finish */
    CHECK_EQ(detached_calls, 1);
    free(items);
}

TEST(detach_idle_pool_calls_inline)
{
    br_threadpool_t *p = malloc(sizeof *p);
    CHECK(p != NULL);
    pool_init(p, 2);
    CHECK_EQ(br_threadpool_detach(p, on_detached), 0);
    CHECK_EQ(detached_calls, 1); /* before detach returned */
    CHECK(pthread_equal(detached_thread, pthread_self()));
}

TEST(detach_after_workers_exited_calls_inline)
{
    br_threadpool_t *p = malloc(sizeof *p);
    br_work_t w = {.work = count_work};
    CHECK(p != NULL);
    pool_init(p, 2);
    CHECK_EQ(br_threadpool_submit(p, &w), 0);
    CHECK_EQ(br_threadpool_close(p, BR_CLOSE_DRAIN), 0);
    int64_t t0 = bt_now_ms();
    for (;;) { /* wait for the worker to leave */
        if (br_threadpool_live(p) == 0)
            break;
        CHECK(bt_now_ms() - t0 < 10000);
        bt_sleep_ms(1);
    }
    CHECK_EQ(br_threadpool_detach(p, on_detached), 0);
    CHECK_EQ(detached_calls, 1);
    CHECK(pthread_equal(detached_thread, pthread_self()));
}

/* ------------------------------------------------------------ concurrency */

#define PRODUCERS 8
#define PER_PRODUCER 100000
static br_work_t *many;
static unsigned char *hits;

static void hit_work(br_work_t *w) { hits[w - many]++; } /* one writer per item */

static void hit_done(br_work_t *w, int status)
{
    CHECK_EQ(status, 0);
    if (__atomic_sub_fetch(&remaining, 1, SEQ) == 0)
        br_event_set(&all_done);
}

static void *producer(void *arg)
{
    size_t first = (size_t)arg * PER_PRODUCER;
    for (size_t i = first; i < first + PER_PRODUCER; i++) {
        many[i].work = hit_work;
        many[i].done = hit_done;
        CHECK_EQ(br_threadpool_submit(&pool, &many[i]), 0);
    }
    return NULL;
}

TEST(eight_producers_each_item_once)
{
    enum { N = PRODUCERS * PER_PRODUCER };
    pthread_t t[PRODUCERS];
    many = calloc(N, sizeof *many);
    hits = calloc(N, 1);
    CHECK(many != NULL && hits != NULL);
    remaining = N;
    pool_init(&pool, 4);
    for (size_t i = 0; i < PRODUCERS; i++)
        t[i] = bt_thread(producer, (void *)i);
    for (size_t i = 0; i < PRODUCERS; i++)
        bt_join(t[i]);
    wait_all_done();
    pool_finish(&pool); /* join: every hits[] write is visible now */
    for (size_t i = 0; i < N; i++)
        CHECK_EQ(hits[i], 1);
    free(many);
    free(hits);
}

/* A work item that submits itself again, 1000 times; done == NULL, so the
 * pool must not touch it after work() returns. */
static unsigned chain_runs;
static void chain_work(br_work_t *w)
{
    if (__atomic_add_fetch(&chain_runs, 1, SEQ) < 1000)
        CHECK_EQ(br_threadpool_submit(&pool, w), 0);
    else
        br_event_set(&all_done);
}

TEST(resubmit_from_own_work)
{
    br_work_t w = {.work = chain_work};
    pool_init(&pool, 3);
    CHECK_EQ(br_threadpool_submit(&pool, &w), 0);
    wait_all_done();
    pool_finish(&pool);
    CHECK_EQ(chain_runs, 1000);
}

/* ------------------------------------------------------------ threads */

TEST(threads_start_lazily)
{
    pool_init(&pool, 8);
    CHECK_EQ(br_threadpool_threads(&pool), 0);
    item_t *items = make_items(20);
    remaining = 0;
    for (unsigned i = 0; i < 20; i++) {
        br_event_init(&all_done);
        remaining = 1;
        CHECK_EQ(br_threadpool_submit(&pool, &items[i].w), 0);
        wait_all_done();
        /* The wait between: the worker is back asleep, so the next submit
         * finds it idle and must not start another thread. */
        wait_idle(&pool, 1);
    }
    CHECK_EQ(br_threadpool_threads(&pool), 1);

    /* Busy workers do make room for new ones, up to the maximum. */
    br_event_init(&all_done);
    remaining = 0;
    item_t *blockers = make_items(3);
    for (unsigned i = 0; i < 3; i++) {
        blockers[i].block = 1;
        CHECK_EQ(br_threadpool_submit(&pool, &blockers[i].w), 0);
    }
    wait_blocked(3);
    CHECK_EQ(br_threadpool_threads(&pool), 3);
    item_t *more = make_items(100);
    for (unsigned i = 0; i < 100; i++)
        CHECK_EQ(br_threadpool_submit(&pool, &more[i].w), 0);
    br_event_set(&gate);
    wait_all_done();
    CHECK(br_threadpool_threads(&pool) <= 8);
    pool_finish(&pool);
    free(items);
    free(blockers);
    free(more);
}

/* Items trickle in one at a time, each well inside the spin window. (A
 * submit can still start another thread when it lands while the worker is
 * between items, as with ThreadPoolExecutor's idle semaphore, so only the
 * maximum is checked.) */
TEST(spinning_worker_takes_trickle)
{
    br_threadpool_options_t o = {.max_threads = 4, .name_prefix = "spin",
                                 .spin_ns = 200 * 1000 * 1000}; /* 200 ms */
    CHECK_EQ(br_threadpool_init(&pool, &o), 0);
    item_t *items = make_items(200);
    remaining = 0;
    for (unsigned i = 0; i < 200; i++) {
        br_event_init(&all_done);
        remaining = 1;
        CHECK_EQ(br_threadpool_submit(&pool, &items[i].w), 0);
        wait_all_done();
    }
    CHECK(br_threadpool_threads(&pool) <= 4);
    for (unsigned i = 0; i < 200; i++) {
        CHECK_EQ(items[i].ran, 1u);
        CHECK_EQ(items[i].status, 0);
        CHECK_EQ(items[i].result, (long)i * i);
    }
    /* A worker in the middle of its spin sees the close at once: join does
     * not wait out the 200 ms window (allow a loaded machine 150 ms). */
    int64_t t0 = bt_now_ms();
    pool_finish(&pool);
    CHECK(bt_now_ms() - t0 < 150);
    free(items);
}

/* Many items at once with a spinner present: every item runs exactly once
 * and sleeping workers are still woken for the ones the spinner leaves. */
TEST(spinning_worker_with_bursts)
{
    br_threadpool_options_t o = {.max_threads = 4, .name_prefix = "spin",
                                 .spin_ns = 50 * 1000};
    CHECK_EQ(br_threadpool_init(&pool, &o), 0);
    for (unsigned round = 0; round < 50; round++) {
        br_event_init(&all_done);
        remaining = 0;
        item_t *items = make_items(500);
        for (unsigned i = 0; i < 500; i++)
            CHECK_EQ(br_threadpool_submit(&pool, &items[i].w), 0);
        wait_all_done();
        for (unsigned i = 0; i < 500; i++)
            CHECK_EQ(items[i].done_calls, 1u);
        free(items);
        bt_sleep_ms(round % 3); /* sometimes inside the spin window, sometimes not */
    }
    CHECK(br_threadpool_threads(&pool) <= 4);
    pool_finish(&pool);
}

/* A done callback that expects its waiter's next item (expect_work before
 * the waiter can see the result, then take_expected): the submits in
 * between wake no sleeping worker, so one thread runs the whole trickle;
 * and a close ends the poll at once. */
#define PP_ITEMS 100
static br_work_t pp_items[PP_ITEMS];
static pthread_t pp_thread[PP_ITEMS];
static br_event_t pp_ready[PP_ITEMS];
static _Thread_local int pp_looping, pp_expecting;

static void pp_work(br_work_t *w) { pp_thread[w - pp_items] = pthread_self(); }

static void pp_done(br_work_t *w, int status)
{
    CHECK_EQ(status, 0);
    if (!pp_expecting) {
        br_threadpool_expect_work(&pool);
        pp_expecting = 1;
    }
    br_event_set(&pp_ready[w - pp_items]);
    if (pp_looping)
        return;
    pp_looping = 1;
    for (;;) {
        br_work_t *next;
        if (pp_expecting) {
            pp_expecting = 0;
            next = br_threadpool_take_expected(&pool, 5 * 1000000000LL);
        } else {
            next = br_threadpool_try_take(&pool);
        }
        if (next == NULL)
            break;
        br_threadpool_run_taken(next);
    }
    pp_looping = 0;
}

TEST(expected_work_wakes_no_other_worker)
{
    pool_init(&pool, 2); /* spin_ns 0: an idle worker sleeps at once */
    br_event_init(&gate);
    br_event_init(&all_done);
    blocked = 0;
    item_t *items = make_items(2); /* start both workers, then let them sleep */
    items[0].block = items[1].block = 1;
    CHECK_EQ(br_threadpool_submit(&pool, &items[0].w), 0);
    CHECK_EQ(br_threadpool_submit(&pool, &items[1].w), 0);
    wait_blocked(2);
    br_event_set(&gate);
    wait_all_done();
    wait_idle(&pool, 2);

    for (unsigned i = 0; i < PP_ITEMS; i++) {
        pp_items[i] = (br_work_t){.work = pp_work, .done = pp_done};
        br_event_init(&pp_ready[i]);
        CHECK_EQ(br_threadpool_submit(&pool, &pp_items[i]), 0);
        CHECK_EQ(br_event_wait(&pp_ready[i], 10 * 1000000000LL), 0);
    }
    for (unsigned i = 1; i < PP_ITEMS; i++)
        CHECK(pthread_equal(pp_thread[i], pp_thread[0]));
    CHECK_EQ(br_threadpool_threads(&pool), 2u);
    CHECK_EQ(br_threadpool_queued(&pool), 0u);
    /* the last done() polls for 5 s: closing ends that at once */
    int64_t t0 = bt_now_ms();
    pool_finish(&pool);
    CHECK(bt_now_ms() - t0 < 1000);
    free(items);
}

static unsigned starts, exits;
static pthread_t started_threads[8];
static int hook_arg_ok = 1;
static char names[8][16];

static void on_start(br_threadpool_t *p, void *arg)
{
    unsigned i = __atomic_fetch_add(&starts, 1, SEQ);
    CHECK(i < 8);
    started_threads[i] = pthread_self();
    if (arg != &starts)
        hook_arg_ok = 0;
    CHECK_EQ(pthread_getname_np(pthread_self(), names[i], sizeof names[i]), 0);
}

static void on_exit_hook(br_threadpool_t *p, void *arg)
{
    __atomic_fetch_add(&exits, 1, SEQ);
    if (arg != &starts)
        hook_arg_ok = 0;
}

static void hooks_pool(const char *prefix, unsigned nthreads)
{
    br_threadpool_options_t o = {
        .max_threads = nthreads, .name_prefix = prefix,
        .on_thread_start = on_start, .on_thread_exit = on_exit_hook, .hook_arg = &starts,
    };
    CHECK_EQ(br_threadpool_init(&pool, &o), 0);
    item_t *items = make_items(nthreads);
    for (unsigned i = 0; i < nthreads; i++) {
        items[i].block = 1; /* all busy at once: one thread each */
        CHECK_EQ(br_threadpool_submit(&pool, &items[i].w), 0);
    }
    wait_blocked(nthreads);
    br_event_set(&gate);
    pool_finish(&pool);
    free(items);
    CHECK_EQ(starts, nthreads);
    CHECK_EQ(exits, nthreads);
    CHECK(hook_arg_ok);
}

static int has_name(const char *want, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (strcmp(names[i], want) == 0)
            return 1;
    return 0;
}

TEST(thread_hooks_once_per_thread_and_names)
{
    hooks_pool("hk", 4);
    for (unsigned i = 0; i < 4; i++) {
        CHECK(!pthread_equal(started_threads[i], pthread_self()));
        for (unsigned j = 0; j < i; j++)
            CHECK(!pthread_equal(started_threads[i], started_threads[j]));
    }
    CHECK(has_name("hk_0", 4) && has_name("hk_1", 4) && has_name("hk_2", 4) && has_name("hk_3", 4));
}

TEST(long_prefix_keeps_the_number)
{
    hooks_pool("a_very_long_thread_prefix", 2);
    CHECK(has_name("a_very_long_t_0", 2));
    CHECK(has_name("a_very_long_t_1", 2));
}

TEST(default_prefix)
{
    br_threadpool_options_t o = {.max_threads = 1, .on_thread_start = on_start};
    CHECK_EQ(br_threadpool_init(&pool, &o), 0);
    item_t *items = make_items(1);
    CHECK_EQ(br_threadpool_submit(&pool, &items[0].w), 0);
    wait_all_done();
    pool_finish(&pool);
    CHECK_EQ(strcmp(names[0], "braid_0"), 0);
    free(items);
}

/* ------------------------------------------------------------ batching */

enum { BATCH = 10 };
static item_t *batch;
static unsigned taken;
static br_event_t batch_queued;

static void batch_leader(br_work_t *w)
{
    br_work_t *t;
    item_work(w);
    /* Wait until the test queued the rest, then run them all right here. */
    CHECK_EQ(br_event_wait(&batch_queued, 10 * 1000000000LL), 0);
    while ((t = br_threadpool_try_take(&pool)) != NULL) {
        CHECK_EQ(br_threadpool_cancel(&pool, t), -EBUSY); /* taken = running */
        br_threadpool_run_taken(t);
        taken++;
    }
}

TEST(try_take_batching)
{
    pool_init(&pool, 1);
    batch = make_items(BATCH + 1);
    batch[0].w.work = batch_leader;
    for (unsigned i = 0; i <= BATCH; i++)
        CHECK_EQ(br_threadpool_submit(&pool, &batch[i].w), 0);
    CHECK(br_threadpool_queued(&pool) >= BATCH);
    br_event_set(&batch_queued);
    wait_all_done();
    CHECK_EQ(br_threadpool_queued(&pool), 0);
    pool_finish(&pool);
    CHECK_EQ(taken, BATCH);
    for (unsigned i = 1; i <= BATCH; i++) {
        CHECK_EQ(batch[i].ran, 1);
        CHECK_EQ(batch[i].status, 0);
        CHECK_EQ(batch[i].done_calls, 1);
        CHECK(pthread_equal(batch[i].work_thread, batch[0].work_thread));
    }
    for (unsigned i = 0; i <= BATCH; i++)
        CHECK_EQ(order[i], i); /* taken in FIFO order */
    free(batch);
}

/* A worker stuck in an item is written off: another thread takes the
 * queue meanwhile, and once the stuck one is back one worker retires, so
 * the pool has its size again. */
TEST(add_thread_replaces_a_stuck_worker_and_retire_undoes_it)
{
    pool_init(&pool, 1);
    item_t *stuck = make_items(1);
    stuck[0].block = 1;
    CHECK_EQ(br_threadpool_submit(&pool, &stuck[0].w), 0);
    wait_blocked(1);
    item_t *more = make_items(50);
    for (unsigned i = 0; i < 50; i++)
        CHECK_EQ(br_threadpool_submit(&pool, &more[i].w), 0);
    CHECK_EQ(br_threadpool_add_thread(&pool), 0);
    int64_t t0 = bt_now_ms();
    while (__atomic_load_n(&remaining, SEQ) > 1) { /* all but the stuck item */
        CHECK(bt_now_ms() - t0 < 10000);
        bt_sleep_ms(1);
    }
    CHECK_EQ(br_threadpool_threads(&pool), 2);
    br_event_set(&gate);
    wait_all_done();
    br_threadpool_retire_thread(&pool);
    t0 = bt_now_ms();
    while (br_threadpool_live(&pool) > 1) {
        CHECK(bt_now_ms() - t0 < 10000);
        bt_sleep_ms(1);
    }
    /* the one left still works */
    br_event_init(&all_done);
    item_t *last = make_items(5);
    for (unsigned i = 0; i < 5; i++)
        CHECK_EQ(br_threadpool_submit(&pool, &last[i].w), 0);
    wait_all_done();
    CHECK_EQ(br_threadpool_live(&pool), 1);
    pool_finish(&pool);
    free(stuck);
    free(more);
    free(last);
}

TEST(add_thread_after_close_is_eshutdown)
{
    pool_init(&pool, 1);
    CHECK_EQ(br_threadpool_close(&pool, BR_CLOSE_DRAIN), 0);
    CHECK_EQ(br_threadpool_add_thread(&pool), -ESHUTDOWN);
    CHECK_EQ(br_threadpool_join(&pool), 0);
    br_threadpool_destroy(&pool);
}

BT_MAIN()
