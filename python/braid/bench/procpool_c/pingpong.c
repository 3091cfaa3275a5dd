/* The floor of the process-pool round trip (python -m braid bench procpool, cases roundtrip
 * and floor): the least two processes can do to hand a turn to each other and get it back on
 * Linux, so braid's submit(noop).result() can be compared with it.
 *
 *     pingpong TRIPS [WARMUP [MODE [CPU]]]
 *
 * MODE "block" (the default, and the floor the benchmark's goal uses): two eventfds
 * (blocking, no semaphore mode) and a fork; the parent writes 1 to the first and blocks in
 * read(2) on the second, the child blocks in read(2) on the first and writes 1 to the
 * second. One round trip is one write and one blocking read on each side: two wakeups of a
 * sleeping process, as a pool whose waiting sides sleep needs. No payload is copied.
 *
 * MODE "spin": no system call at all; the two processes take turns on one counter in a
 * shared mapping, each spinning until the other has moved it. The cost of moving a cache
 * line between two cores and back: what a pool whose both sides busy-poll could reach.
 *
 * CPU, if given, pins both processes to that one CPU (so "block" measures two context
 * switches on one core instead of waking a process on another core); by default nothing is
 * pinned. WARMUP round trips (default 1000) run first, untimed; then TRIPS are timed with
 * CLOCK_MONOTONIC and the parent prints one line:
 *
 *     trips N seconds S parent_cpu P child_cpu C
 *
 * (the CPU seconds, user + system, that each side used over the timed trips, from
 * getrusage). The parent tells the child to exit at the end; the child also dies with its
 * parent (PR_SET_PDEATHSIG). Exit status 0, or 2 with a message on stderr.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "pingpong: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void put(int fd, uint64_t v) {
    while (write(fd, &v, sizeof v) != (ssize_t)sizeof v)
        if (errno != EINTR) die("write");
}

static uint64_t take(int fd) {
    uint64_t v;
    while (read(fd, &v, sizeof v) != (ssize_t)sizeof v)
        if (errno != EINTR) die("read");
    return v;
}

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

/* spin mode: the parent moves the counter from even to odd, the child from odd to even;
 * STOP tells the child to exit. In both modes the child leaves the CPU it used over the
 * timed trips in child_cpu before it exits. */
#define STOP UINT64_MAX

struct shared {
    uint64_t turn;
    double child_cpu;
};

static uint64_t wait_for(uint64_t *turn, uint64_t want) {
    uint64_t v;
    while ((v = __atomic_load_n(turn, __ATOMIC_ACQUIRE)) != want && v != STOP)
        cpu_relax();
    return v;
}

static double seconds(struct timespec a, struct timespec b) {
    return (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
}

static double cpu_now(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6
         + (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 5) {
        fprintf(stderr, "usage: pingpong TRIPS [WARMUP [block|spin [CPU]]]\n");
        return 2;
    }
    long trips = strtol(argv[1], NULL, 10);
    long warmup = argc > 2 ? strtol(argv[2], NULL, 10) : 1000;
    const char *mode = argc > 3 ? argv[3] : "block";
    int spin = strcmp(mode, "spin") == 0;
    if (trips < 1 || warmup < 0 || (!spin && strcmp(mode, "block") != 0)) {
        fprintf(stderr, "pingpong: TRIPS must be >= 1, WARMUP >= 0, MODE block or spin\n");
        return 2;
    }
    if (argc > 4) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(argv[4]), &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) die("sched_setaffinity");
    }
    int ping = -1, pong = -1;
    struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                             -1, 0);
    if (sh == MAP_FAILED) die("mmap");
    sh->turn = 0;
    sh->child_cpu = -1;
    if (!spin) {
        ping = eventfd(0, EFD_CLOEXEC);
        pong = eventfd(0, EFD_CLOEXEC);
        if (ping < 0 || pong < 0) die("eventfd");
    }
    pid_t parent = getpid();
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(0);
        double c0 = cpu_now();
        for (long i = 0;; i++) {
            if (i == warmup) c0 = cpu_now();
            if (spin) {
                if (wait_for(&sh->turn, 2 * (uint64_t)i + 1) == STOP) break;
                __atomic_store_n(&sh->turn, 2 * (uint64_t)i + 2, __ATOMIC_RELEASE);
            } else {
                if (take(ping) != 1) break;
                put(pong, 1);
            }
        }
        sh->child_cpu = cpu_now() - c0;
        _exit(0);
    }
    struct timespec t0, t1;
    double c0 = 0;
    for (long i = 0; i < warmup + trips; i++) {
        if (i == warmup) {
            clock_gettime(CLOCK_MONOTONIC, &t0);
            c0 = cpu_now();
        }
        if (spin) {
            __atomic_store_n(&sh->turn, 2 * (uint64_t)i + 1, __ATOMIC_RELEASE);
            wait_for(&sh->turn, 2 * (uint64_t)i + 2);
        } else {
            put(ping, 1);
            take(pong);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double parent_cpu = cpu_now() - c0;
    if (spin)
        __atomic_store_n(&sh->turn, STOP, __ATOMIC_RELEASE);
    else
        put(ping, 2);
    int status;
    while (waitpid(child, &status, 0) < 0)
        if (errno != EINTR) die("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || sh->child_cpu < 0) {
        fprintf(stderr, "pingpong: the child did not finish cleanly (status %d)\n", status);
        return 2;
    }
    printf("trips %ld seconds %.9f parent_cpu %.6f child_cpu %.6f\n", trips, seconds(t0, t1),
           parent_cpu, sh->child_cpu);
    return 0;
}
