/*
 * harness.h — a tiny C test harness for braid's engine.
 *
 *     #include "harness.h"
 *     TEST(adds_up) { CHECK_EQ(1 + 1, 2); }
 *     BT_MAIN()
 *
 * Each case runs in its own forked child, so a crash, a hang or a leak in
 * one case cannot hide or spoil another. The parent polls the child with
 * waitpid(WNOHANG) and kills it with SIGKILL after a timeout (20 s, or
 * $BT_TIMEOUT seconds). A passing child leaves through exit(0), not
 * _exit(), so LeakSanitizer runs in the child and a leak turns its exit
 * status nonzero, which the parent reports as a failure.
 *
 *     ./test_x          runs every case
 *     ./test_x a b      runs the cases named a and b
 *
 * A case that cannot run here (a kernel feature missing) calls
 * BT_SKIP("why"): its child exits 77 and the case counts as skipped.
 *
 * Exit status: 0 if every case passed or skipped, 1 if one failed, 2 on a
 * bad name, 77 (meson's "skipped") if every case that ran skipped.
 */
#ifndef BRAID_TEST_HARNESS_H
#define BRAID_TEST_HARNESS_H

#include "braid.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct bt_case_s {
    const char *name;
    void (*fn)(void);
} bt_case_t;

#define BT_MAX_CASES 256
static bt_case_t bt_cases[BT_MAX_CASES];
static int bt_ncases;

static inline void bt_register(const char *name, void (*fn)(void))
{
    if (bt_ncases == BT_MAX_CASES) {
        fprintf(stderr, "harness: more than %d cases\n", BT_MAX_CASES);
        exit(2);
    }
    bt_cases[bt_ncases].name = name;
    bt_cases[bt_ncases].fn = fn;
    bt_ncases++;
}

/* Constructors register the cases in file order before main runs. */
#define TEST(name)                                                          \
    static void name(void);                                                 \
    __attribute__((constructor)) static void bt_register_##name(void)       \
    {                                                                       \
        bt_register(#name, name);                                           \
    }                                                                       \
    static void name(void)

/* ------------------------------------------------------------ checks
 * A failed check prints where and why, then exit(1)s the child (from any
 * thread). */

static inline void bt_fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what);
    fflush(stderr);
    exit(1);
}

static inline void bt_fail_eq(const char *file, int line, const char *a, const char *b,
                       long long va, long long vb)
{
    fprintf(stderr, "%s:%d: check failed: %s == %s (%lld vs %lld", file, line, a, b, va, vb);
    /* Most values compared are 0-or-negative-errno: name them. */
    if (va < 0 && va > -4096)
        fprintf(stderr, "; %lld is %s", va, br_strerror((int)va));
    if (vb < 0 && vb > -4096)
        fprintf(stderr, "; %lld is %s", vb, br_strerror((int)vb));
    fprintf(stderr, ")\n");
    fflush(stderr);
    exit(1);
}

#define CHECK(cond)                                                         \
    do {                                                                    \
        if (!(cond))                                                        \
            bt_fail(__FILE__, __LINE__, #cond);                             \
    } while (0)

#define CHECK_EQ(a, b)                                                      \
    do {                                                                    \
        long long bt_a_ = (long long)(a), bt_b_ = (long long)(b);           \
        if (bt_a_ != bt_b_)                                                 \
            bt_fail_eq(__FILE__, __LINE__, #a, #b, bt_a_, bt_b_);           \
    } while (0)

#define BT_SKIP_STATUS 77

/* Ends the case as skipped (from the case's own thread). */
#define BT_SKIP(why)                                                        \
    do {                                                                    \
        fprintf(stderr, "skipped: %s\n", (why));                            \
        fflush(stderr);                                                     \
        exit(BT_SKIP_STATUS);                                               \
    } while (0)

/* ------------------------------------------------------------ helpers */

static inline int64_t bt_now_ms(void) { return br_now_ns() / 1000000; }

static inline void bt_sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Starts a thread or fails the case. */
static inline pthread_t bt_thread(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    int err = pthread_create(&t, NULL, fn, arg);
    CHECK_EQ(err, 0);
    return t;
}

static inline void bt_join(pthread_t t) { CHECK_EQ(pthread_join(t, NULL), 0); }

/* ------------------------------------------------------------ runner */

/* Runs one case in a child; returns 1 if it passed, 0 if it failed,
 * BT_SKIP_STATUS if it skipped. */
static inline int bt_run(const bt_case_t *c, int timeout_s)
{
    int status;
    int64_t start = bt_now_ms();

    /* Flush so the child does not print our buffered output again. */
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        printf("FAIL %s: fork: %s\n", c->name, strerror(errno));
        return 0;
    }
    if (pid == 0) {
        c->fn();
        exit(0); /* not _exit: let LeakSanitizer check the child */
    }

    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR) {
            printf("FAIL %s: waitpid: %s\n", c->name, strerror(errno));
            return 0;
        }
        if (bt_now_ms() - start > (int64_t)timeout_s * 1000) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
            printf("FAIL %s: timed out after %d s\n", c->name, timeout_s);
            return 0;
        }
        bt_sleep_ms(2);
    }

    int64_t ms = bt_now_ms() - start;
    if (WIFEXITED(status) && WEXITSTATUS(status) == BT_SKIP_STATUS) {
        printf("SKIP %s\n", c->name);
        return BT_SKIP_STATUS;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        printf("PASS %s (%lld ms)\n", c->name, (long long)ms);
        return 1;
    }
    if (WIFEXITED(status))
        printf("FAIL %s: exit status %d (%lld ms)\n", c->name, WEXITSTATUS(status), (long long)ms);
    else if (WIFSIGNALED(status))
        printf("FAIL %s: killed by signal %d (%s)\n", c->name, WTERMSIG(status),
               strsignal(WTERMSIG(status)));
    else
        printf("FAIL %s: wait status %#x\n", c->name, (unsigned)status);
    return 0;
}

static inline int bt_main(int argc, char **argv)
{
    const char *env = getenv("BT_TIMEOUT");
    int timeout_s = env != NULL && atoi(env) > 0 ? atoi(env) : 20;
    int failed = 0, ran = 0, skipped = 0;

    /* Line-buffer so PASS/FAIL lines interleave sanely with child stderr. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int a = 1; a < argc; a++) {
        int found = 0;
        for (int i = 0; i < bt_ncases; i++)
            found |= strcmp(bt_cases[i].name, argv[a]) == 0;
        if (!found) {
            fprintf(stderr, "no case named %s; cases are:\n", argv[a]);
            for (int i = 0; i < bt_ncases; i++)
                fprintf(stderr, "  %s\n", bt_cases[i].name);
            return 2;
        }
    }
    for (int i = 0; i < bt_ncases; i++) {
        int wanted = argc < 2;
        for (int a = 1; a < argc; a++)
            wanted |= strcmp(bt_cases[i].name, argv[a]) == 0;
        if (!wanted)
            continue;
        ran++;
        int r = bt_run(&bt_cases[i], timeout_s);
        skipped += r == BT_SKIP_STATUS;
        failed += r == 0;
    }
    if (skipped != 0)
        printf("%d passed, %d failed, %d skipped\n", ran - failed - skipped, failed, skipped);
    else
        printf("%d passed, %d failed\n", ran - failed, failed);
    if (failed != 0)
        return 1;
    return ran > 0 && skipped == ran ? BT_SKIP_STATUS : 0;
}

#define BT_MAIN()                                                           \
    int main(int argc, char **argv) { return bt_main(argc, argv); }

#endif /* BRAID_TEST_HARNESS_H */
