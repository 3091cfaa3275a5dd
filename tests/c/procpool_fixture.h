/*
 * procpool_fixture.h — what the process pool's C tests share: a pool on a
 * loop (stepped by the test's thread, or run by a thread of its own), the
 * worker program next to the test (test_procpool_worker), and jobs that
 * record their completion. One pool per test process (harness.h forks each
 * case).
 */
#ifndef BRAID_TEST_PROCPOOL_FIXTURE_H
#define BRAID_TEST_PROCPOOL_FIXTURE_H

#include "harness.h"

#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define MS 1000000LL
#define MIB ((size_t)1 << 20)

/* ------------------------------------------------------------ fixture */

typedef struct job_s {
    br_pptask_t t;
    char cmd[256];
    char *big;          /* a payload too long for cmd */
    int done;
    int status;
    char reply[256];
    size_t len;
    int starts;         /* on_start(1) calls */
    int unstarts;       /* on_start(0) calls */
    int64_t done_at;
} job_t;

static struct {
    br_loop_t loop;
    br_procpool_t pool;
    int started;
    int start_err;
    int closed;
    int broken_calls;
    char reason[256];
    char detail[64];
    int ndone;
    job_t *order[4096]; /* completions, in order */
    br_event_t closed_ev;
} F;

static char worker_path[PATH_MAX];

static inline void require_memfd(void);

static inline void find_worker(void)
{
    require_memfd();
    ssize_t n = readlink("/proc/self/exe", worker_path, sizeof worker_path - 64);
    CHECK(n > 0);
    worker_path[n] = '\0';
    char *slash = strrchr(worker_path, '/');
    CHECK(slash != NULL);
    strcpy(slash + 1, "test_procpool_worker");
    CHECK(access(worker_path, X_OK) == 0);
}

static inline void on_done(br_pptask_t *t, int status, const void *reply, size_t len)
{
    job_t *j = t->data;
    CHECK(!j->done); /* exactly once */
    CHECK((reply != NULL) == (status == BR_PPTASK_OK || status == BR_PPTASK_ERROR));
    j->done = 1;
    j->status = status;
    j->len = len;
    size_t n = len < sizeof j->reply - 1 ? len : sizeof j->reply - 1;
    if (n > 0)
        memcpy(j->reply, reply, n);
    j->reply[n] = '\0';
    if (status == BR_PPTASK_OK && len > sizeof j->reply - 1) {
        /* big:N replies: check the pattern here, while it is valid */
        const char *p = reply;
        for (size_t i = 0; i < len; i++)
            CHECK(p[i] == (char)('a' + i % 26));
    }
    j->done_at = br_now_ns();
    __atomic_fetch_add(&F.ndone, 1, __ATOMIC_RELAXED);
    if (F.ndone <= 4096)
        F.order[F.ndone - 1] = j;
}

static inline void on_start(br_pptask_t *t, int running)
{
    job_t *j = t->data;
    if (running)
        j->starts++;
    else
        j->unstarts++;
}

static inline void on_started(br_procpool_t *pool, int err)
{
    F.started = 1;
    F.start_err = err;
}

static inline void on_broken(br_procpool_t *pool, const char *reason, const void *detail, size_t len)
{
    F.broken_calls++;
    snprintf(F.reason, sizeof F.reason, "%s", reason);
    snprintf(F.detail, sizeof F.detail, "%.*s", (int)len, detail != NULL ? (const char *)detail : "");
    CHECK(br_procpool_broken(pool) != NULL);
}

static inline void on_closed(br_procpool_t *pool)
{
    F.closed = 1;
    br_event_set(&F.closed_ev);
}

static char *worker_argv[] = {worker_path, NULL};
static int64_t spin_ns; /* the pools' spin_ns: the *_without_spin cases set -1 */

static inline br_procpool_options_t options(unsigned workers)
{
    br_procpool_options_t o = {.workers = workers, .ring_bytes = 64 * 1024, .argv = worker_argv,
                               .on_done = on_done, .on_start = on_start, .on_started = on_started,
                               .on_broken = on_broken, .on_closed = on_closed, .spin_ns = spin_ns};
    return o;
}

/* Steps the loop until *flag is nonzero (or the count reaches n). */
static inline void run_until(const int *flag, int n, int64_t timeout_ms)
{
    int64_t end = bt_now_ms() + timeout_ms;
    while (__atomic_load_n(flag, __ATOMIC_RELAXED) < n) {
        CHECK(bt_now_ms() < end);
        int r = br_loop_run(&F.loop, BR_RUN_ONCE);
        CHECK(r >= 0);
    }
}

/* The pool needs memfd_create (Linux 3.17); without it there is nothing
 * to test. */
static inline void require_memfd(void)
{
    int fd = memfd_create("braid-test", MFD_CLOEXEC);
    if (fd < 0 && errno == ENOSYS)
        BT_SKIP("no memfd_create in this kernel");
    CHECK(fd >= 0);
    close(fd);
}

static inline void start(const br_procpool_options_t *o)
{
    find_worker();
    CHECK_EQ(br_loop_init(&F.loop), 0);
    CHECK_EQ(br_procpool_init(&F.loop, &F.pool, o), 0);
    run_until(&F.started, 1, 10000);
}

/* Closes the pool, runs the loop dry, closes the loop. */
static inline void finish(enum br_ppclose_mode mode, int64_t grace)
{
    CHECK_EQ(br_procpool_close(&F.pool, mode, grace), 0);
    run_until(&F.closed, 1, 15000);
    CHECK_EQ(br_loop_run(&F.loop, BR_RUN_DEFAULT), 0);
    CHECK_EQ(br_loop_close(&F.loop), 0);
}

static inline void submit(job_t *j, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->cmd, sizeof j->cmd, fmt, ap);
    va_end(ap);
    j->t.payload = j->big != NULL ? j->big : j->cmd;
    j->t.len = j->big != NULL ? strlen(j->big) : strlen(j->cmd);
    j->t.data = j;
    int rc = br_procpool_submit(&F.pool, &j->t);
    CHECK(rc == 0 || rc == 1);
    if (rc == 1)
        j->starts++; /* started at once: no on_start for it */
}

static inline void wait_job(job_t *j, int64_t timeout_ms) { run_until(&j->done, 1, timeout_ms); }

static inline void tmp_path(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "/tmp/braid-test-pp-%d-%s", (int)getpid(), name);
    unlink(buf);
}

static inline long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static inline void *loop_thread(void *arg)
{
    int r = br_loop_run(&F.loop, BR_RUN_DEFAULT);
    CHECK_EQ(r, 0);
    return NULL;
}

#endif /* BRAID_TEST_PROCPOOL_FIXTURE_H */
