/*
 * bench_procpool.c — what the loop thread's spin on result rings buys
 * (br_procpool_options_t.spin_ns). Not a test: `meson test --benchmark`
 * runs it, or run it by hand:
 *
 *     bench_procpool [PAIRS]
 *
 * Each pair runs one configuration and then the other back to back, so
 * that both see about the same load from the rest of the machine, and the
 * ratio of each pair is reported (median and quartiles): on a shared
 * machine, absolute times drift more than the spin changes them.
 *
 *   ping-pong: one worker, one echo task at a time, submitted from a thread
 *              other than the loop's and waited for on a br_event_t (the
 *              shape of a Python caller's submit + result()).
 *   batch:     two workers, 20,000 echo tasks submitted at once.
 */
#include "braid.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct job_s {
    br_pptask_t t;
    br_event_t ev;
} job_t;

static char worker[PATH_MAX];
static char *worker_argv[] = {worker, NULL};

static void on_done(br_pptask_t *t, int status, const void *reply, size_t len)
{
    if (status != BR_PPTASK_OK)
        abort();
    br_event_set(&((job_t *)t->data)->ev);
}

static void *loop_main(void *loop)
{
    if (br_loop_run(loop, BR_RUN_DEFAULT) < 0)
        abort();
    return NULL;
}

static void run_one(br_procpool_t *pool, job_t *j)
{
    memset(j, 0, sizeof *j);
    j->t.payload = "echo:x";
    j->t.len = 6;
    j->t.data = j;
    if (br_procpool_submit(pool, &j->t) != 0)
        abort();
}

/* Microseconds per task. */
static double measure(int64_t spin, int batch, int n)
{
    br_loop_t loop;
    br_procpool_t pool;
    br_procpool_options_t o = {.workers = batch ? 2 : 1, .argv = worker_argv, .on_done = on_done,
                               .spin_ns = spin};
    pthread_t th;
    job_t *jobs = calloc((size_t)n, sizeof *jobs);
    if (jobs == NULL || br_loop_init(&loop) != 0 || br_procpool_init(&loop, &pool, &o) != 0 ||
        pthread_create(&th, NULL, loop_main, &loop) != 0)
        abort();
    for (int i = 0; i < 50; i++) { /* the workers start, the average settles */
        run_one(&pool, &jobs[0]);
        br_event_wait(&jobs[0].ev, -1);
    }
    int64_t t0 = br_now_ns();
    for (int i = 0; i < n; i++) {
        run_one(&pool, &jobs[i]);
        if (!batch)
            br_event_wait(&jobs[i].ev, -1);
    }
    for (int i = 0; batch && i < n; i++)
        br_event_wait(&jobs[i].ev, -1);
    double us = (double)(br_now_ns() - t0) / 1e3 / n;
    if (br_procpool_close(&pool, BR_PPCLOSE_FINISH, 0) != 0 || pthread_join(th, NULL) != 0 ||
        br_loop_close(&loop) != 0)
        abort();
    free(jobs);
    return us;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, double *spin, double *none, int pairs)
{
    double *r = malloc((size_t)pairs * sizeof *r);
    if (r == NULL)
        abort();
    for (int i = 0; i < pairs; i++)
        r[i] = spin[i] / none[i];
    qsort(r, (size_t)pairs, sizeof *r, cmp);
    qsort(spin, (size_t)pairs, sizeof *spin, cmp);
    qsort(none, (size_t)pairs, sizeof *none, cmp);
    printf("%-10s spin 30 us: median %7.2f us/task (best %6.2f)   no spin: median %7.2f (best %6.2f)   "
           "spin/no-spin per pair: median %.2f, quartiles %.2f-%.2f\n",
           what, spin[pairs / 2], spin[0], none[pairs / 2], none[0], r[pairs / 2], r[pairs / 4],
           r[3 * pairs / 4]);
    free(r);
}

int main(int argc, char **argv)
{
    int pairs = argc > 1 ? atoi(argv[1]) : 15;
    ssize_t n = readlink("/proc/self/exe", worker, sizeof worker - 32);
    if (n <= 0 || pairs < 1)
        return 2;
    worker[n] = '\0';
    strcpy(strrchr(worker, '/') + 1, "test_procpool_worker");
    double *a = calloc((size_t)pairs * 4, sizeof *a);
    if (a == NULL)
        return 2;
    for (int i = 0; i < pairs; i++) {
        a[i] = measure(0, 0, 2000);
        a[pairs + i] = measure(-1, 0, 2000);
        a[2 * pairs + i] = measure(0, 1, 20000);
        a[3 * pairs + i] = measure(-1, 1, 20000);
    }
    report("ping-pong", a, a + pairs, pairs);
    report("batch", a + 2 * pairs, a + 3 * pairs, pairs);
    free(a);
    return 0;
}
