/*
 * primes.c — the tutorial's second experiment, "CPU-Bound Task", in C on
 * braid.h: the tutorial's is_prime over 1..N, sequentially, then on a
 * process pool run by the engine's supervisor, br_procpool_t. The two
 * results are compared flag by flag with each other and with a sieve of
 * Eratosthenes.
 *
 * The program is its own worker: the pool starts /proc/self/exe --worker,
 * which speaks the pool's protocol through br_ppworker_t (attach, READY,
 * then one RESULT per CALL). A task is a range [lo, hi) of numbers, the
 * tutorial's check_numbers_chunk; its result is one byte per number. The
 * pool runs on a br_loop_t on this thread, and the pool's time counts its
 * start and its close, as a program that runs once pays them (the
 * tutorial's `with multiprocessing.Pool(...)` is inside its timing too).
 *
 * In C the sequential loop is fast already (no interpreter): a pool pays
 * off once the work outweighs starting the workers and shipping the
 * results, from a few hundred thousand numbers on.
 *
 * usage: primes [N [workers [chunk]]]   (defaults 2000000, the CPUs, 50000)
 * Prints a line per variant, then "primes: OK"; exits 1 on any error.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <braid.h>

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct range_s {
    uint64_t lo, hi; /* the numbers lo .. hi - 1 */
} range_t;

/* The tutorial's is_prime. */
static int is_prime(uint64_t n)
{
    if (n <= 1)
        return 0;
    if (n == 2)
        return 1;
    if (n % 2 == 0)
        return 0;
    for (uint64_t i = 3; i * i <= n; i += 2)
        if (n % i == 0)
            return 0;
    return 1;
}

static void check_numbers_chunk(range_t r, unsigned char *out)
{
    for (uint64_t n = r.lo; n < r.hi; n++)
        out[n - r.lo] = (unsigned char)is_prime(n);
}

static void die(const char *what, int err)
{
    fprintf(stderr, "primes: %s: %s\n", what, br_strerror(err));
    exit(1);
}

/* ---- the worker process: argv[1] == "--worker" */

static int worker_main(void)
{
    br_ppworker_t w;
    br_ring_frag_t m;
    int err;
    /* A worker dies with the pool's loop thread (it outlives nothing). */
    if (br_proc_bind_to_parent(SIGKILL, (int)getppid()) != 0 || (err = br_ppworker_attach(&w)) != 0)
        return 2;
    br_ring_msg_t ready = {.type = BR_PP_MSG_READY};
    while ((err = br_ppworker_send(&w, &ready)) == -EINTR)
        ;
    while (err == 0) {
        while ((err = br_ppworker_recv(&w, &m, -1)) == -EINTR)
            ;
        if (err != 0 || m.type == BR_PP_MSG_EXIT)
            break;
        if (m.type != BR_PP_MSG_CALL || m.len != sizeof(range_t))
            continue; /* INIT: this pool has no initializer */
        range_t r;
        uint64_t tag = m.tag;
        memcpy(&r, m.data, sizeof r);
        br_ppworker_release(&w); /* frees its ring space before the work */
        while ((err = br_ppworker_claim(&w, tag)) == -EINTR)
            ;
        if (err <= 0) { /* 0: cancelled, SKIPPED was sent */
            err = err < 0 ? err : 0;
            continue;
        }
        unsigned char *flags = malloc(r.hi - r.lo);
        if (flags == NULL)
            return 3;
        check_numbers_chunk(r, flags);
        br_ring_msg_t res = {.type = BR_PP_MSG_RESULT, .tag = tag, .payload = flags, .len = r.hi - r.lo};
        while ((err = br_ppworker_send(&w, &res)) == -EINTR)
            ;
        free(flags);
    }
    br_ppworker_detach(&w);
    return err == 0 ? 0 : 2;
}

/* ---- the parent: tasks in, results out, on a br_loop_t */

typedef struct run_s {
    br_procpool_t *pool;
    unsigned char *flags; /* flags[n] for n in 1..N */
    size_t remaining;     /* tasks whose on_done has not run */
    size_t failed;
} run_t;

static void task_done(br_pptask_t *t, int status, const void *reply, size_t len)
{
    run_t *run = t->data;
    const range_t *r = t->payload;
    if (status == BR_PPTASK_OK && len == r->hi - r->lo)
        memcpy(run->flags + r->lo, reply, len);
    else
        run->failed++;
    /* The last result closes the pool: its workers are sent EXIT, reaped,
     * and the pool's handles closed, and then br_loop_run returns. */
    if (--run->remaining == 0)
        br_procpool_close(run->pool, BR_PPCLOSE_FINISH, 0);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--worker") == 0)
        return worker_main();
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000000;
    unsigned workers = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : (unsigned)(cpus > 0 ? cpus : 1);
    uint64_t chunk = argc > 3 ? strtoull(argv[3], NULL, 10) : 50000;
    if (n == 0 || workers == 0 || chunk == 0) {
        fprintf(stderr, "usage: primes [N [workers [chunk]]]\n");
        return 2;
    }
    size_t ntasks = (size_t)((n + chunk - 1) / chunk);
    unsigned char *seq = malloc(n + 1), *par = calloc(n + 1, 1), *sieve = malloc(n + 1);
    range_t *ranges = calloc(ntasks, sizeof *ranges);
    br_pptask_t *tasks = calloc(ntasks, sizeof *tasks);
    if (seq == NULL || par == NULL || sieve == NULL || ranges == NULL || tasks == NULL)
        die("setup", -ENOMEM);
    printf("primes: is_prime over 1..%llu\n", (unsigned long long)n);

    /* Sequential: the tutorial's [is_prime(n) for n in numbers]. */
    int64_t t0 = br_now_ns();
    check_numbers_chunk((range_t){1, n + 1}, seq + 1);
    double t_seq = (br_now_ns() - t0) / 1e9;
    printf("  sequential               %7.3f s\n", t_seq);

    /* The pool: its workers are this program, re-executed. */
    char exe[PATH_MAX];
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (el <= 0)
        die("/proc/self/exe", -errno);
    exe[el] = '\0';
    char *wargv[] = {exe, "--worker", NULL};
    br_procpool_t pool;
    run_t run = {.pool = &pool, .flags = par, .remaining = ntasks};
    br_procpool_options_t o = {.workers = workers, .argv = wargv, .on_done = task_done};
    br_loop_t loop;
    t0 = br_now_ns();
    int err = br_loop_init(&loop);
    if (err != 0 || (err = br_procpool_init(&loop, &pool, &o)) != 0)
        die("process pool", err);
    for (size_t i = 0; i < ntasks; i++) {
        uint64_t lo = 1 + i * chunk, hi = lo + chunk < n + 1 ? lo + chunk : n + 1;
        ranges[i] = (range_t){lo, hi};
        tasks[i] = (br_pptask_t){.payload = &ranges[i], .len = sizeof ranges[i], .data = &run};
        if ((err = br_procpool_submit(&pool, &tasks[i])) != 0)
            die("submit", err);
    }
    while ((err = br_loop_run(&loop, BR_RUN_DEFAULT)) > 0)
        ; /* 0: the pool has closed, nothing is left on the loop */
    if (err < 0 || (err = br_loop_close(&loop)) != 0)
        die("loop", err);
    double t_par = (br_now_ns() - t0) / 1e9;
    printf("  br_procpool_t (%2u procs) %7.3f s   %.1fx   %zu tasks of %llu numbers\n", workers, t_par,
           t_seq / t_par, ntasks, (unsigned long long)chunk);

    /* The check: both against a sieve of Eratosthenes, flag by flag. */
    memset(sieve, 1, n + 1);
    sieve[0] = 0, sieve[1] = 0;
    for (uint64_t i = 2; i * i <= n; i++)
        if (sieve[i])
            for (uint64_t j = i * i; j <= n; j += i)
                sieve[j] = 0;
    uint64_t primes = 0, bad_seq = 0, bad_par = 0;
    for (uint64_t i = 1; i <= n; i++) {
        primes += sieve[i];
        bad_seq += seq[i] != sieve[i];
        bad_par += par[i] != sieve[i];
    }
    const char *broken = br_procpool_broken(&pool);
    free(seq), free(par), free(sieve), free(ranges), free(tasks);
    if (run.failed != 0 || bad_seq != 0 || bad_par != 0) {
        printf("primes: FAILED (%zu tasks failed%s%s; %llu sequential and %llu pooled flags wrong)\n",
               run.failed, broken ? ": " : "", broken ? broken : "", (unsigned long long)bad_seq,
               (unsigned long long)bad_par);
        return 1;
    }
    printf("primes: OK (%llu primes up to %llu, both runs agree with a sieve)\n", (unsigned long long)primes,
           (unsigned long long)n);
    return 0;
}
