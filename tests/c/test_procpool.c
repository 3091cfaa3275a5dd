/*
 * test_procpool.c — br_procpool_t against real worker processes
 * (test_procpool_worker, found next to this program through
 * /proc/self/exe), and the worker-side br_ppworker_t they use.
 *
 * Most cases run the loop on the test's own thread (submits are allowed
 * from any thread, this one included) and step it until what they wait
 * for has happened; the thread cases run it on a thread of its own.
 */
#include "procpool_fixture.h"

/* ------------------------------------------------------------ joiner */

TEST(joiner_reassembles_and_rejects)
{
    size_t size = br_ring_mem_size(4096);
    void *mem = aligned_alloc(64, size);
    CHECK(mem != NULL);
    CHECK_EQ(br_ring_format(mem, size), 0);
    int fds[2] = {eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};
    br_ring_t w, r;
    CHECK_EQ(br_ring_attach(&w, mem, size, fds[0], fds[1]), 0);
    CHECK_EQ(br_ring_attach(&r, mem, size, fds[0], fds[1]), 0);
    br_ring_joiner_t j = {0};
    br_ring_frag_t m;

    /* one fragment: in place */
    br_ring_msg_t one = {.type = 7, .tag = 1, .payload = "hello", .len = 5};
    CHECK_EQ(br_ring_send(&w, &one), 0);
    CHECK_EQ(br_ring_recv_whole(&r, &j, &m), 0);
    CHECK(m.type == 7 && m.tag == 1 && m.len == 5 && memcmp(m.data, "hello", 5) == 0);
    br_ring_release_whole(&r, &j, &m);
    CHECK_EQ(br_ring_recv_whole(&r, &j, &m), -EAGAIN);

    /* 3000 bytes through a 4 KiB ring (fragments of at most 1000) */
    char big[3000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)i;
    br_ring_msg_t msg = {.type = 8, .tag = 2, .payload = big, .len = sizeof big};
    int rc;
    while ((rc = br_ring_send(&w, &msg)) == -EAGAIN) {
        int got = br_ring_recv_whole(&r, &j, &m);
        CHECK_EQ(got, -EAGAIN); /* no whole message yet */
    }
    CHECK_EQ(rc, 0);
    CHECK_EQ(br_ring_recv_whole(&r, &j, &m), 0);
    CHECK(m.type == 8 && m.tag == 2 && m.len == sizeof big && memcmp(m.data, big, sizeof big) == 0);
    br_ring_release_whole(&r, &j, &m);

    /* a continuation without its FIRST: out of order */
    br_ring_msg_t a = {.type = 9, .tag = 3, .payload = big, .len = 2500};
    CHECK_EQ(br_ring_send(&w, &a), 0);
    br_ring_frag_t f;
    CHECK_EQ(br_ring_recv(&r, &f), 0); /* drop the FIRST behind the joiner's back */
    CHECK(f.flags == BR_RING_FIRST);
    br_ring_release(&r, &f);
    CHECK_EQ(br_ring_recv_whole(&r, &j, &m), -EPROTO);
    br_ring_joiner_free(&j);
    close(fds[0]);
    close(fds[1]);
    free(mem);
}

/* ------------------------------------------------------------ results */

static void results_in_order_body(void)
{
    br_procpool_options_t o = options(1);
    start(&o);
    static job_t jobs[300];
    for (int i = 0; i < 300; i++)
        submit(&jobs[i], i % 7 == 3 ? "error:e%d" : "echo:r%d", i);
    run_until(&F.ndone, 300, 20000);
    for (int i = 0; i < 300; i++) {
        char want[32];
        snprintf(want, sizeof want, i % 7 == 3 ? "e%d" : "r%d", i);
        CHECK(F.order[i] == &jobs[i]);
        CHECK_EQ(jobs[i].status, i % 7 == 3 ? BR_PPTASK_ERROR : BR_PPTASK_OK);
        CHECK(strcmp(jobs[i].reply, want) == 0);
        CHECK_EQ(jobs[i].starts, 1);
        CHECK_EQ(br_pptask_state(&jobs[i].t), BR_PPSTATE_DONE);
    }
    finish(BR_PPCLOSE_FINISH, 0);
}

TEST(results_in_order) { results_in_order_body(); }

/* Without the spin every result must come through the eventfds: a lost
 * wakeup hangs here instead of being hidden by the polling. */
TEST(results_in_order_without_spin)
{
    spin_ns = -1;
    results_in_order_body();
}

TEST(messages_larger_than_the_ring)
{
    br_procpool_options_t o = options(2);
    start(&o);
    job_t up = {0}, down = {0};
    /* 1 MiB up and 3 MiB down through 64 KiB rings */
    up.big = malloc(MIB + 1);
    CHECK(up.big != NULL);
    memset(up.big, 'q', MIB);
    memcpy(up.big, "size", 4);
    up.big[MIB] = '\0';
    submit(&up, "size");
    submit(&down, "big:%zu", 3 * MIB);
    wait_job(&up, 10000);
    wait_job(&down, 10000);
    CHECK_EQ(up.status, BR_PPTASK_OK);
    CHECK(strcmp(up.reply, "1048576") == 0);
    CHECK_EQ(down.status, BR_PPTASK_OK);
    CHECK_EQ(down.len, 3 * MIB);
    finish(BR_PPCLOSE_FINISH, 0);
    free(up.big);
}

/* Before any task has finished, two tasks go to each worker: the third of
 * four waits behind the long first one. Once tasks are known to be long,
 * one at a time: every short task runs on the other worker, before the long
 * one ends. */
TEST(depth_follows_task_time)
{
    br_procpool_options_t o = options(2);
    start(&o);
    job_t a[4] = {0};
    submit(&a[0], "sleep:400");
    for (int i = 1; i < 4; i++)
        submit(&a[i], "echo:%d", i);
    run_until(&F.ndone, 4, 10000);
    CHECK(a[2].done_at > a[0].done_at); /* queued behind the long one */
    CHECK(a[1].done_at < a[0].done_at);

    job_t warm[4] = {0};
    for (int i = 0; i < 4; i++)
        submit(&warm[i], "sleep:5");
    run_until(&F.ndone, 8, 10000);
    job_t b[4] = {0};
    submit(&b[0], "sleep:400");
    for (int i = 1; i < 4; i++)
        submit(&b[i], "echo:%d", i);
    run_until(&F.ndone, 12, 10000);
    for (int i = 1; i < 4; i++)
        CHECK(b[i].done_at < b[0].done_at);
    finish(BR_PPCLOSE_FINISH, 0);
}

TEST(max_tasks_per_worker_recycles)
{
    br_procpool_options_t o = options(1);
    o.max_tasks_per_worker = 3;
    start(&o);
    job_t j[7] = {0};
    for (int i = 0; i < 7; i++)
        submit(&j[i], "pid");
    run_until(&F.ndone, 7, 10000);
    for (int i = 0; i < 7; i++)
        CHECK_EQ(j[i].status, BR_PPTASK_OK);
    CHECK(strcmp(j[0].reply, j[2].reply) == 0);
    CHECK(strcmp(j[2].reply, j[3].reply) != 0);
    CHECK(strcmp(j[3].reply, j[5].reply) == 0);
    CHECK(strcmp(j[5].reply, j[6].reply) != 0);
    finish(BR_PPCLOSE_FINISH, 0);
}

/* ------------------------------------------------------------ crashes */

TEST(crash_mid_task)
{
    br_procpool_options_t o = options(2);
    start(&o);
    job_t crash = {0}, others[6] = {0};
    submit(&crash, "crash:%d", SIGKILL);
    for (int i = 0; i < 6; i++)
        submit(&others[i], "echo:%d", i);
    run_until(&F.ndone, 7, 10000);
    CHECK_EQ(crash.status, BR_PPTASK_CRASHED);
    CHECK_EQ(crash.t.term_signal, SIGKILL);
    CHECK(crash.t.pid > 0);
    for (int i = 0; i < 6; i++)
        CHECK_EQ(others[i].status, BR_PPTASK_OK);
    job_t exit7 = {0};
    submit(&exit7, "exit:7");
    wait_job(&exit7, 10000);
    CHECK_EQ(exit7.status, BR_PPTASK_CRASHED);
    CHECK_EQ(exit7.t.exit_code, 7);
    CHECK_EQ(exit7.t.term_signal, 0);
    job_t after = {0};
    submit(&after, "echo:alive");
    wait_job(&after, 10000);
    CHECK_EQ(after.status, BR_PPTASK_OK);
    CHECK(br_procpool_broken(&F.pool) == NULL);
    finish(BR_PPCLOSE_FINISH, 0);
}

/* The spawn hook: the first `die_first` workers die before READY. */
static int spawned;
static int die_first;

static int spawn_hook(void *ctx, const int *fds, int nfds, br_proc_t *out)
{
    char *argv_die[] = {worker_path, "die", NULL};
    CHECK(ctx == &spawned);
    spawned++;
    br_spawn_options_t o = {.path = worker_path, .argv = spawned <= die_first ? argv_die : worker_argv,
                            .fds = fds, .nfds = nfds};
    return br_proc_spawn(out, &o);
}

TEST(crash_during_startup_respawns)
{
    br_procpool_options_t o = options(1);
    o.spawn = spawn_hook;
    o.spawn_ctx = &spawned;
    o.argv = NULL;
    die_first = 2;
    start(&o);
    job_t j = {0};
    submit(&j, "echo:survived");
    wait_job(&j, 10000);
    CHECK_EQ(j.status, BR_PPTASK_OK);
    /* sent to each worker as it was spawned, back to the queue at each death */
    CHECK_EQ(j.unstarts, 2);
    CHECK_EQ(j.starts, 3);
    CHECK_EQ(spawned, 3);
    CHECK(br_procpool_broken(&F.pool) == NULL);
    finish(BR_PPCLOSE_FINISH, 0);
}

TEST(workers_that_keep_dying_break_the_pool)
{
    br_procpool_options_t o = options(2);
    o.spawn = spawn_hook;
    o.spawn_ctx = &spawned;
    die_first = 1000;
    start(&o);
    job_t j[3] = {0};
    for (int i = 0; i < 3; i++)
        submit(&j[i], "echo:%d", i);
    run_until(&F.ndone, 3, 10000);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(j[i].status, BR_PPTASK_BROKEN);
    CHECK_EQ(F.broken_calls, 1);
    CHECK(strstr(F.reason, "keep exiting while they start") != NULL);
    CHECK(strstr(F.reason, "exit code 3") != NULL);
    job_t late = {0};
    late.t.payload = "echo:x";
    late.t.len = 6;
    CHECK_EQ(br_procpool_submit(&F.pool, &late.t), -EPIPE);
    run_until(&F.closed, 1, 10000); /* a broken pool closes by itself */
    finish(BR_PPCLOSE_FINISH, 0);
}

TEST(initializer_failure_breaks_the_pool)
{
    br_procpool_options_t o = options(2);
    o.init_payload = "fail";
    o.init_len = 4;
    start(&o);
    job_t j = {0};
    submit(&j, "echo:x");
    wait_job(&j, 10000);
    CHECK_EQ(j.status, BR_PPTASK_BROKEN);
    CHECK_EQ(F.broken_calls, 1);
    CHECK(strstr(F.reason, "initializer failed") != NULL);
    CHECK(strcmp(F.detail, "init failed") == 0);
    finish(BR_PPCLOSE_FINISH, 0);
}

TEST(initializer_runs_before_tasks)
{
    br_procpool_options_t o = options(1);
    o.init_payload = "sleep:50";
    o.init_len = 8;
    start(&o);
    job_t j = {0};
    submit(&j, "echo:x");
    wait_job(&j, 10000);
    CHECK_EQ(j.status, BR_PPTASK_OK);
    finish(BR_PPCLOSE_FINISH, 0);
}

TEST(spawn_failure_is_reported)
{
    static char *bad[] = {"/nonexistent/braid-worker", NULL};
    br_procpool_options_t o = options(2);
    o.argv = bad;
    find_worker();
    CHECK_EQ(br_loop_init(&F.loop), 0);
    CHECK_EQ(br_procpool_init(&F.loop, &F.pool, &o), 0);
    run_until(&F.started, 1, 10000);
    CHECK_EQ(F.start_err, -ENOENT);
    CHECK(br_procpool_broken(&F.pool) != NULL);
    CHECK(strstr(F.reason, "/nonexistent/braid-worker") != NULL);
    run_until(&F.closed, 1, 10000);
    CHECK_EQ(br_loop_run(&F.loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(br_loop_close(&F.loop), 0);
}

TEST(timeout_kills_the_task_pool_lives)
{
    br_procpool_options_t o = options(1);
    o.task_timeout_ns = 300 * MS;
    start(&o);
    job_t slow = {0}, after = {0};
    int64_t t0 = bt_now_ms();
    submit(&slow, "sleep:10000");
    wait_job(&slow, 10000);
    CHECK_EQ(slow.status, BR_PPTASK_TIMEOUT);
    CHECK_EQ(slow.t.term_signal, SIGKILL);
    CHECK(bt_now_ms() - t0 < 5000);
    submit(&after, "echo:ok");
    wait_job(&after, 10000);
    CHECK_EQ(after.status, BR_PPTASK_OK);
    finish(BR_PPCLOSE_FINISH, 0);
}

TEST(retries_then_crashed)
{
    char path[128];
    tmp_path(path, sizeof path, "retries");
    br_procpool_options_t o = options(2);
    o.retries = 2;
    start(&o);
    job_t j = {0};
    submit(&j, "touchcrash:%s:%d", path, SIGTERM);
    wait_job(&j, 20000);
    CHECK_EQ(j.status, BR_PPTASK_CRASHED);
    CHECK_EQ(j.t.term_signal, SIGTERM);
    CHECK_EQ(file_size(path), 3); /* the first run and two retries */
    CHECK_EQ(j.unstarts, 2);      /* back to QUEUED before each retry */
    unlink(path);
    finish(BR_PPCLOSE_FINISH, 0);
}

TEST(respawn_storm)
{
    char path[128];
    tmp_path(path, sizeof path, "storm");
    br_procpool_options_t o = options(1);
    start(&o);
    for (int i = 0; i < 100; i++) {
        job_t j = {0};
        submit(&j, "touchsleep:%s:20000", path);
        /* Until the worker has really started it (on_start comes when the
         * task is sent, maybe before the worker is up). */
        int64_t end = bt_now_ms() + 10000;
        while (file_size(path) != i + 1) {
            CHECK(bt_now_ms() < end);
            CHECK(br_loop_run(&F.loop, BR_RUN_NOWAIT) >= 0);
            bt_sleep_ms(1);
        }
        int pid;
        CHECK_EQ(br_procpool_pids(&F.pool, &pid, 1), 1);
        CHECK_EQ(kill(pid, SIGKILL), 0);
        wait_job(&j, 10000);
        CHECK_EQ(j.status, BR_PPTASK_CRASHED);
        CHECK_EQ(j.t.pid, pid);
        CHECK_EQ(j.t.term_signal, SIGKILL);
    }
    job_t last = {0};
    submit(&last, "echo:still here");
    wait_job(&last, 10000);
    CHECK_EQ(last.status, BR_PPTASK_OK);
    CHECK(br_procpool_broken(&F.pool) == NULL);
    unlink(path);
    finish(BR_PPCLOSE_FINISH, 0);
}

/* A task whose worker misbehaves (cmd) fails CRASHED: the pool killed
 * that worker; the next task runs on its replacement. */
static void killed_by_the_pool_then_recovers(const char *cmd)
{
    br_procpool_options_t o = options(1);
    start(&o);
    job_t bad = {0}, after = {0};
    submit(&bad, cmd);
    wait_job(&bad, 10000);
    CHECK_EQ(bad.status, BR_PPTASK_CRASHED);
    CHECK_EQ(bad.t.term_signal, SIGKILL); /* killed by the pool */
    submit(&after, "echo:ok");
    wait_job(&after, 10000);
    CHECK_EQ(after.status, BR_PPTASK_OK);
    finish(BR_PPCLOSE_FINISH, 0);
}

TEST(garbage_in_the_result_ring) { killed_by_the_pool_then_recovers("garbage"); }

TEST(out_of_step_answer_kills_the_worker) { killed_by_the_pool_then_recovers("wrongtag"); }

TEST(result_written_before_death_counts)
{
    br_procpool_options_t o = options(1);
    start(&o);
    for (int i = 0; i < 20; i++) {
        job_t j = {0};
        submit(&j, "replyexit:5");
        wait_job(&j, 10000);
        CHECK_EQ(j.status, BR_PPTASK_OK);
        CHECK(strcmp(j.reply, "bye") == 0);
    }
    job_t after = {0};
    submit(&after, "echo:ok");
    wait_job(&after, 10000);
    CHECK_EQ(after.status, BR_PPTASK_OK);
    CHECK(br_procpool_broken(&F.pool) == NULL);
    finish(BR_PPCLOSE_FINISH, 0);
}

/* An embedder whose callbacks take a lock keeps the spin out of them: the
 * pool's own spin off, br_procpool_results_soon between iterations. */
TEST(spin_outside_the_callbacks)
{
    spin_ns = -1;
    br_procpool_options_t o = options(2);
    start(&o);
    static job_t jobs[200];
    for (int i = 0; i < 200; i++)
        submit(&jobs[i], "echo:%d", i);
    int64_t end = bt_now_ms() + 20000;
    enum br_run_mode mode = BR_RUN_ONCE;
    while (F.ndone < 200) {
        CHECK(bt_now_ms() < end);
        CHECK(br_loop_run(&F.loop, mode) >= 0);
        mode = br_procpool_results_soon(&F.pool, 30000) ? BR_RUN_NOWAIT : BR_RUN_ONCE;
    }
    for (int i = 0; i < 200; i++)
        CHECK_EQ(jobs[i].status, BR_PPTASK_OK);
    CHECK_EQ(br_procpool_results_soon(&F.pool, 30000), 0); /* nothing in flight */
    finish(BR_PPCLOSE_FINISH, 0);
}

/* ------------------------------------------------------------ memory cap */

/* The memory cap reads /proc/<pid>/statm. */
static void require_statm(void)
{
    if (access("/proc/self/statm", R_OK) != 0)
        BT_SKIP("no /proc/<pid>/statm");
}

static long worker_rss(void)
{
    job_t j = {0};
    submit(&j, "rss");
    wait_job(&j, 10000);
    CHECK_EQ(j.status, BR_PPTASK_OK);
    return atol(j.reply);
}

TEST(memory_cap_recycles_after_a_task)
{
    br_procpool_options_t o = options(1);
    o.max_worker_memory = 96 * MIB;
    o.mem_poll_ns = 60000 * MS; /* only the check after each result */
    require_statm();
    start(&o);
    CHECK(worker_rss() < 64 * (long)MIB);
    job_t pid0 = {0}, big = {0}, next = {0}, behind[3] = {0};
    submit(&pid0, "pid");
    wait_job(&pid0, 10000);
    submit(&big, "alloc:128");
    /* The worker may claim this one before the pool has read the result
     * (then it runs here); the ones behind it it cannot have. */
    submit(&next, "sleep:300");
    for (int i = 0; i < 3; i++)
        submit(&behind[i], "pid");
    run_until(&F.ndone, 7, 20000);
    CHECK_EQ(big.status, BR_PPTASK_OK);
    CHECK_EQ(next.status, BR_PPTASK_OK);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(behind[i].status, BR_PPTASK_OK);
        CHECK(strcmp(behind[i].reply, pid0.reply) != 0); /* a fresh worker ran them */
    }
    CHECK(br_procpool_broken(&F.pool) == NULL);
    finish(BR_PPCLOSE_FINISH, 0);
}

TEST(memory_cap_kills_a_task_over_it)
{
    br_procpool_options_t o = options(2);
    o.max_worker_memory = 96 * MIB;
    require_statm();
    start(&o);
    job_t hog = {0}, small = {0}, after = {0};
    submit(&hog, "alloc:256:10000");
    submit(&small, "sleep:100");
    wait_job(&hog, 10000);
    CHECK_EQ(hog.status, BR_PPTASK_MEMORY);
    CHECK_EQ(hog.t.term_signal, SIGKILL);
    CHECK(hog.t.pid > 0);
    wait_job(&small, 10000);
    CHECK_EQ(small.status, BR_PPTASK_OK);
    submit(&after, "echo:ok");
    wait_job(&after, 10000);
    CHECK_EQ(after.status, BR_PPTASK_OK);
    finish(BR_PPCLOSE_FINISH, 0);
}

/* ------------------------------------------------------------ cancel */

TEST(cancel_queued_in_the_pool)
{
    br_procpool_options_t o = options(1);
    start(&o);
    job_t busy = {0}, j = {0};
    submit(&busy, "sleep:100"); /* the idle worker takes it at once */
    CHECK_EQ(br_pptask_state(&busy.t), BR_PPSTATE_RUNNING);
    CHECK_EQ(busy.starts, 1);
    submit(&j, "echo:never"); /* no idle worker, and the loop has not run */
    CHECK_EQ(br_pptask_state(&j.t), BR_PPSTATE_QUEUED);
    CHECK_EQ(br_procpool_cancel(&F.pool, &j.t), 0);
    CHECK_EQ(br_pptask_state(&j.t), BR_PPSTATE_CANCELLED);
    CHECK_EQ(br_procpool_cancel(&F.pool, &j.t), 0); /* again: still cancelled */
    wait_job(&j, 10000);
    CHECK_EQ(j.status, BR_PPTASK_CANCELLED);
    CHECK_EQ(j.starts, 0);
    CHECK_EQ(br_procpool_cancel(&F.pool, &j.t), -EBUSY); /* done */
    wait_job(&busy, 10000);
    CHECK_EQ(busy.status, BR_PPTASK_OK);
    finish(BR_PPCLOSE_FINISH, 0);
}

TEST(cancel_queued_in_a_worker_ring_not_running)
{
    char path[128];
    tmp_path(path, sizeof path, "cancel");
    br_procpool_options_t o = options(1);
    start(&o);
    job_t longj = {0}, behind = {0};
    submit(&longj, "sleep:300");
    submit(&behind, "touch:%s", path);
    run_until(&longj.starts, 1, 10000); /* both went to the worker (depth 2) */
    CHECK_EQ(br_pptask_state(&longj.t), BR_PPSTATE_RUNNING);
    CHECK_EQ(br_pptask_state(&behind.t), BR_PPSTATE_QUEUED);
    CHECK_EQ(br_procpool_cancel(&F.pool, &longj.t), -EBUSY);
    CHECK_EQ(br_procpool_cancel(&F.pool, &behind.t), 0);
    run_until(&F.ndone, 2, 10000);
    CHECK_EQ(longj.status, BR_PPTASK_OK);
    CHECK_EQ(behind.status, BR_PPTASK_CANCELLED);
    CHECK_EQ(file_size(path), -1); /* never ran */
    job_t after = {0};
    submit(&after, "echo:ok"); /* the worker is still in step */
    wait_job(&after, 10000);
    CHECK_EQ(after.status, BR_PPTASK_OK);
    finish(BR_PPCLOSE_FINISH, 0);
}

/* ------------------------------------------------------------ close */

/* One worker, a long task running, one queued behind it in the worker's
 * ring and two in the pool's queue; then close(mode). */
static void close_with_work(enum br_ppclose_mode mode, int64_t grace, const char *first, int want_first,
                            int want_rest)
{
    br_procpool_options_t o = options(1);
    start(&o);
    job_t j[4] = {0};
    submit(&j[0], "%s", first);
    for (int i = 1; i < 4; i++)
        submit(&j[i], "echo:%d", i);
    run_until(&j[0].starts, 1, 10000);
    finish(mode, grace);
    CHECK_EQ(F.ndone, 4);
    CHECK_EQ(j[0].status, want_first);
    for (int i = 1; i < 4; i++)
        CHECK_EQ(j[i].status, want_rest);
    job_t late = {0};
    late.t.payload = "echo:x";
    late.t.len = 6;
    CHECK_EQ(br_procpool_submit(&F.pool, &late.t), -ESHUTDOWN);
}

TEST(close_finish_runs_queued_work)
{
    close_with_work(BR_PPCLOSE_FINISH, 0, "sleep:200", BR_PPTASK_OK, BR_PPTASK_OK);
}

TEST(close_cancel_cancels_queued_work)
{
    close_with_work(BR_PPCLOSE_CANCEL, 0, "sleep:200", BR_PPTASK_OK, BR_PPTASK_CANCELLED);
}

TEST(close_kill_crashes_running_work)
{
    int64_t t0 = bt_now_ms();
    close_with_work(BR_PPCLOSE_KILL, 0, "sleep:20000", BR_PPTASK_CRASHED, BR_PPTASK_CANCELLED);
    CHECK(bt_now_ms() - t0 < 10000);
}

TEST(close_kill_after_grace)
{
    int64_t t0 = bt_now_ms();
    close_with_work(BR_PPCLOSE_KILL_AFTER, 200 * MS, "sleep:20000", BR_PPTASK_CRASHED, BR_PPTASK_CANCELLED);
    CHECK(bt_now_ms() - t0 >= 200);
    CHECK(bt_now_ms() - t0 < 10000);
}

TEST(close_kill_after_grace_not_needed)
{
    close_with_work(BR_PPCLOSE_KILL_AFTER, 20000 * MS, "sleep:100", BR_PPTASK_OK, BR_PPTASK_CANCELLED);
}

TEST(close_escalates)
{
    br_procpool_options_t o = options(1);
    start(&o);
    job_t j = {0}, q = {0};
    submit(&j, "sleep:20000");
    submit(&q, "echo:q");
    run_until(&j.starts, 1, 10000);
    CHECK_EQ(br_procpool_close(&F.pool, BR_PPCLOSE_FINISH, 0), 0);
    for (int i = 0; i < 5; i++)
        CHECK(br_loop_run(&F.loop, BR_RUN_NOWAIT) >= 0);
    CHECK(!j.done);
    finish(BR_PPCLOSE_KILL, 0);
    CHECK_EQ(j.status, BR_PPTASK_CRASHED);
    CHECK_EQ(q.status, BR_PPTASK_CANCELLED);
}

/* ------------------------------------------------------------ threads */

TEST(close_from_another_thread_while_tasks_run)
{
    br_procpool_options_t o = options(2);
    find_worker();
    br_event_init(&F.closed_ev);
    CHECK_EQ(br_loop_init(&F.loop), 0);
    CHECK_EQ(br_procpool_init(&F.loop, &F.pool, &o), 0);
    pthread_t th = bt_thread(loop_thread, NULL);
    static job_t j[20];
    for (int i = 0; i < 20; i++)
        submit(&j[i], "sleep:20");
    bt_sleep_ms(50);
    CHECK_EQ(br_procpool_close(&F.pool, BR_PPCLOSE_FINISH, 0), 0);
    CHECK_EQ(br_event_wait(&F.closed_ev, 20000 * MS), 0);
    bt_join(th);
    CHECK_EQ(F.ndone, 20);
    for (int i = 0; i < 20; i++)
        CHECK_EQ(j[i].status, BR_PPTASK_OK);
    CHECK_EQ(br_loop_close(&F.loop), 0);
}

#define SUBMITTERS 4
#define PER_THREAD 500

static job_t thread_jobs[SUBMITTERS][PER_THREAD];

static void *submitter(void *arg)
{
    job_t *jobs = arg;
    for (int i = 0; i < PER_THREAD; i++)
        submit(&jobs[i], "echo:%d", i);
    return NULL;
}

static void submits_from_several_threads_body(void)
{
    br_procpool_options_t o = options(2);
    find_worker();
    br_event_init(&F.closed_ev);
    CHECK_EQ(br_loop_init(&F.loop), 0);
    CHECK_EQ(br_procpool_init(&F.loop, &F.pool, &o), 0);
    pthread_t th = bt_thread(loop_thread, NULL);
    pthread_t subs[SUBMITTERS];
    for (int k = 0; k < SUBMITTERS; k++)
        subs[k] = bt_thread(submitter, thread_jobs[k]);
    for (int k = 0; k < SUBMITTERS; k++)
        bt_join(subs[k]);
    int64_t end = bt_now_ms() + 30000;
    while (__atomic_load_n(&F.ndone, __ATOMIC_RELAXED) < SUBMITTERS * PER_THREAD) {
        CHECK(bt_now_ms() < end);
        bt_sleep_ms(5);
    }
    CHECK_EQ(br_procpool_close(&F.pool, BR_PPCLOSE_FINISH, 0), 0);
    CHECK_EQ(br_event_wait(&F.closed_ev, 20000 * MS), 0);
    bt_join(th);
    for (int k = 0; k < SUBMITTERS; k++)
        for (int i = 0; i < PER_THREAD; i++) {
            char want[16];
            snprintf(want, sizeof want, "%d", i);
            CHECK_EQ(thread_jobs[k][i].status, BR_PPTASK_OK);
            CHECK(strcmp(thread_jobs[k][i].reply, want) == 0);
        }
    CHECK_EQ(br_loop_close(&F.loop), 0);
}

TEST(submits_from_several_threads) { submits_from_several_threads_body(); }

TEST(submits_from_several_threads_without_spin)
{
    spin_ns = -1;
    submits_from_several_threads_body();
}

/* ------------------------------------------------------------ detach */

static int detached_calls;

static void free_detached(br_procpool_t *pool)
{
    detached_calls++;
    free(pool);
}

TEST(detached_pool_frees_itself)
{
    br_procpool_options_t o = options(1);
    o.on_closed = NULL;
    find_worker();
    CHECK_EQ(br_loop_init(&F.loop), 0);
    br_procpool_t *pool = calloc(1, sizeof *pool);
    CHECK(pool != NULL);
    CHECK_EQ(br_procpool_init(&F.loop, pool, &o), 0);
    job_t j = {0};
    j.t.payload = "sleep:100";
    j.t.len = 9;
    j.t.data = &j;
    CHECK(br_procpool_submit(pool, &j.t) >= 0);
    CHECK_EQ(br_procpool_detach(pool, free_detached), 0);
    /* The loop runs until the pool has finished its work and closed. */
    CHECK_EQ(br_loop_run(&F.loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(detached_calls, 1);
    CHECK_EQ(j.status, BR_PPTASK_OK);
    CHECK_EQ(br_loop_close(&F.loop), 0);
}

BT_MAIN()
