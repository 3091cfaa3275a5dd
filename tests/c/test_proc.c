/* test_proc.c — br_proc_t: spawning, reaping, killing child processes. */
#include "harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/prctl.h>

#define SEC 1000000000LL
#define MS 1000000LL

/* ------------------------------------------------------------ helpers */

/* Number of open descriptors of this process. */
static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    CHECK(d != NULL);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    CHECK_EQ(closedir(d), 0);
    return n - 1; /* the DIR's own */
}

static int spawn_argv(br_proc_t *p, char *const *argv, const int *fds, int nfds)
{
    br_spawn_options_t o = {.path = argv[0], .argv = argv, .fds = fds, .nfds = nfds};
    return br_proc_spawn(p, &o);
}

static int spawn_sh(br_proc_t *p, const char *script, const int *fds, int nfds)
{
    char *argv[] = {"/bin/sh", "-c", (char *)script, NULL};
    return spawn_argv(p, argv, fds, nfds);
}

static void spawn_sleep(br_proc_t *p)
{
    char *argv[] = {"/bin/sleep", "10", NULL};
    CHECK_EQ(spawn_argv(p, argv, NULL, 0), 0);
}

/* Waits (generously) for the child to end, then closes it. */
static void reap(br_proc_t *p)
{
    CHECK_EQ(br_proc_wait(p, 10 * SEC), 1);
    CHECK_EQ(p->exited, 1);
    br_proc_close(p);
    CHECK_EQ(p->pidfd, -1);
}

static int pipe_cloexec(int fds[2])
{
    return pipe2(fds, O_CLOEXEC);
}

/* Reads until EOF (with a 10 s limit) into buf, NUL-terminated. */
static void read_all(int fd, char *buf, size_t size)
{
    size_t got = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, 10000);
        CHECK(n == 1 || (n < 0 && errno == EINTR));
        ssize_t r = read(fd, buf + got, size - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0);
        if (r == 0)
            break;
        got += (size_t)r;
        CHECK(got < size - 1);
    }
    buf[got] = '\0';
}

/* Moves fd to a number >= 100 so the low numbers stay free. */
static int move_high(int fd)
{
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 100);
    CHECK(high >= 100);
    CHECK_EQ(close(fd), 0);
    return high;
}

/* ------------------------------------------------------------ exit status */

TEST(spawn_true_exits_0)
{
    int before = count_fds();
    br_proc_t p;
    char *argv[] = {"/bin/true", NULL};
    CHECK_EQ(spawn_argv(&p, argv, NULL, 0), 0);
    CHECK(p.pid > 0);
    CHECK_EQ(p.exited, 0);
    CHECK(p.pidfd >= 0); /* Linux >= 5.3 */
    CHECK_EQ(fcntl(p.pidfd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
    reap(&p);
    CHECK_EQ(p.exit_code, 0);
    CHECK_EQ(p.term_signal, 0);
    /* reaped: no more syscalls, the same answer */
    CHECK_EQ(br_proc_poll(&p), 1);
    CHECK_EQ(br_proc_wait(&p, 0), 1);
    CHECK_EQ(br_proc_kill(&p, SIGTERM), -ESRCH);
    br_proc_close(&p); /* idempotent */
    CHECK_EQ(count_fds(), before);
}

TEST(exit_code_7)
{
    br_proc_t p;
    CHECK_EQ(spawn_sh(&p, "exit 7", NULL, 0), 0);
    reap(&p);
    CHECK_EQ(p.exit_code, 7);
    CHECK_EQ(p.term_signal, 0);
}

TEST(kill_gives_term_signal)
{
    br_proc_t p;
    spawn_sleep(&p);
    CHECK_EQ(br_proc_poll(&p), 0); /* running */
    CHECK_EQ(br_proc_poll(&p), 0);
    CHECK_EQ(br_proc_kill(&p, 0), 0); /* signal 0: is it there? */
    CHECK_EQ(br_proc_kill(&p, SIGKILL), 0);
    CHECK_EQ(br_proc_wait(&p, -1), 1);
    CHECK_EQ(p.term_signal, SIGKILL);
    CHECK_EQ(p.exit_code, -SIGKILL);
    CHECK_EQ(br_proc_kill(&p, SIGKILL), -ESRCH);
    CHECK_EQ(br_proc_poll(&p), 1);
    br_proc_close(&p);
}

TEST(wait_times_out_then_reaps_after_kill)
{
    br_proc_t p;
    spawn_sleep(&p);
    CHECK_EQ(br_proc_wait(&p, 0), 0);
    int64_t t0 = bt_now_ms();
    CHECK_EQ(br_proc_wait(&p, 100 * MS), 0);
    int64_t ms = bt_now_ms() - t0;
    CHECK(ms >= 99);
    CHECK(ms < 3000);
    CHECK_EQ(br_proc_kill(&p, SIGTERM), 0);
    t0 = bt_now_ms();
    CHECK_EQ(br_proc_wait(&p, 10 * SEC), 1);
    CHECK(bt_now_ms() - t0 < 5000);
    CHECK_EQ(p.term_signal, SIGTERM);
    br_proc_close(&p);
}

/* Without a pidfd (old kernels), poll and wait fall back to waitid(P_PID)
 * and kill to kill(2). */
TEST(works_without_pidfd)
{
    br_proc_t p;
    spawn_sleep(&p);
    br_proc_close(&p); /* drop the pidfd, keep the child */
    CHECK_EQ(br_proc_poll(&p), 0);
    int64_t t0 = bt_now_ms();
    CHECK_EQ(br_proc_wait(&p, 100 * MS), 0);
    int64_t ms = bt_now_ms() - t0;
    CHECK(ms >= 99);
    CHECK(ms < 3000);
    CHECK_EQ(br_proc_kill(&p, SIGTERM), 0);
    CHECK_EQ(br_proc_wait(&p, 10 * SEC), 1);
    CHECK_EQ(p.term_signal, SIGTERM);
    CHECK_EQ(br_proc_kill(&p, SIGTERM), -ESRCH);

    CHECK_EQ(spawn_sh(&p, "exit 3", NULL, 0), 0);
    br_proc_close(&p);
    CHECK_EQ(br_proc_wait(&p, -1), 1);
    CHECK_EQ(p.exit_code, 3);
}

static void on_usr1(int sig) { (void)sig; }
static pthread_t target;
static int target_done;

static void *kicker(void *arg)
{
    while (!__atomic_load_n(&target_done, __ATOMIC_SEQ_CST)) {
        bt_sleep_ms(20);
        CHECK_EQ(pthread_kill(target, SIGUSR1), 0);
    }
    return NULL;
}

static void wait_eintr(int with_pidfd)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    CHECK_EQ(sigemptyset(&sa.sa_mask), 0);
    CHECK_EQ(sigaction(SIGUSR1, &sa, NULL), 0);
    br_proc_t p;
    spawn_sleep(&p);
    if (!with_pidfd)
        br_proc_close(&p);
    target = pthread_self();
    __atomic_store_n(&target_done, 0, __ATOMIC_SEQ_CST);
    pthread_t t = bt_thread(kicker, NULL);
    int r = br_proc_wait(&p, 10 * SEC);
    __atomic_store_n(&target_done, 1, __ATOMIC_SEQ_CST);
    bt_join(t);
    CHECK_EQ(r, -EINTR);
    CHECK_EQ(br_proc_kill(&p, SIGKILL), 0);
    reap(&p);
}

TEST(wait_returns_eintr) { wait_eintr(1); }
TEST(wait_returns_eintr_without_pidfd) { wait_eintr(0); }

/* ------------------------------------------------------------ failures */

TEST(spawn_failures)
{
    int before = count_fds();
    br_proc_t p;
    char *missing[] = {"/nonexistent/braid-no-such-program", NULL};
    CHECK_EQ(spawn_argv(&p, missing, NULL, 0), -ENOENT);
    CHECK_EQ(p.pid, -1);
    CHECK_EQ(p.pidfd, -1);
    /* a failed spawn leaves nothing to poll or kill */
    CHECK_EQ(br_proc_kill(&p, SIGKILL), -EINVAL);
    CHECK_EQ(br_proc_poll(&p), -EINVAL);
    br_proc_close(&p);

    char *not_exec[] = {"/etc/passwd", NULL};
    CHECK_EQ(spawn_argv(&p, not_exec, NULL, 0), -EACCES);

    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    int fds[2] = {fd, fd};
    CHECK_EQ(spawn_argv(&p, missing, fds, 2), -ENOENT); /* copies closed */
    int bad[2] = {fd, -1};
    char *t[] = {"/bin/true", NULL};
    CHECK_EQ(spawn_argv(&p, t, bad, 2), -EBADF);
    int closed[1] = {INT_MAX - 1};
    CHECK_EQ(spawn_argv(&p, t, closed, 1), -EBADF);
    CHECK_EQ(close(fd), 0);

    br_spawn_options_t o = {.path = NULL, .argv = t};
    CHECK_EQ(br_proc_spawn(&p, &o), -EINVAL);
    o = (br_spawn_options_t){.path = "/bin/true", .argv = NULL};
    CHECK_EQ(br_proc_spawn(&p, &o), -EINVAL);
    o = (br_spawn_options_t){.path = "/bin/true", .argv = t, .nfds = -1};
    CHECK_EQ(br_proc_spawn(&p, &o), -EINVAL);
    o = (br_spawn_options_t){.path = "/bin/true", .argv = t, .nfds = 1, .fds = NULL};
    CHECK_EQ(br_proc_spawn(&p, &o), -EINVAL);
    CHECK_EQ(count_fds(), before);
}

/* ------------------------------------------------------------ descriptors */

TEST(fd_passed_as_3)
{
    int before = count_fds();
    int pfd[2];
    CHECK_EQ(pipe_cloexec(pfd), 0);
    br_proc_t p;
    CHECK_EQ(spawn_sh(&p, "echo hi >&3", &pfd[1], 1), 0);
    CHECK_EQ(close(pfd[1]), 0); /* the child holds the only write end now */
    char buf[64];
    read_all(pfd[0], buf, sizeof buf); /* EOF: no copy of it leaked */
    CHECK(strcmp(buf, "hi\n") == 0);
    CHECK_EQ(close(pfd[0]), 0);
    reap(&p);
    CHECK_EQ(p.exit_code, 0);
    CHECK_EQ(count_fds(), before);
}

/* The sources are 4 and 3, the targets 3 and 4: a plain dup2 in order
 * would overwrite source 3 with 4 before it is used. */
TEST(fd_numbers_swapped)
{
    int a[2], b[2];
    CHECK_EQ(pipe_cloexec(a), 0);
    CHECK_EQ(pipe_cloexec(b), 0);
    a[0] = move_high(a[0]);
    a[1] = move_high(a[1]);
    b[0] = move_high(b[0]);
    b[1] = move_high(b[1]);
    CHECK_EQ(dup3(a[1], 4, O_CLOEXEC), 4);
    CHECK_EQ(dup3(b[1], 3, O_CLOEXEC), 3);
    CHECK_EQ(close(a[1]), 0);
    CHECK_EQ(close(b[1]), 0);

    int fds[2] = {4, 3}; /* child: 3 <- a's write end, 4 <- b's */
    br_proc_t p;
    CHECK_EQ(spawn_sh(&p, "echo A >&3; echo B >&4", fds, 2), 0);
    /* the parent's 3 and 4 are untouched */
    CHECK_EQ(fcntl(3, F_GETFD), FD_CLOEXEC);
    CHECK_EQ(fcntl(4, F_GETFD), FD_CLOEXEC);
    CHECK_EQ(close(3), 0);
    CHECK_EQ(close(4), 0);
    char buf[64];
    read_all(a[0], buf, sizeof buf);
    CHECK(strcmp(buf, "A\n") == 0);
    read_all(b[0], buf, sizeof buf);
    CHECK(strcmp(buf, "B\n") == 0);
    CHECK_EQ(close(a[0]), 0);
    CHECK_EQ(close(b[0]), 0);
    reap(&p);
    CHECK_EQ(p.exit_code, 0);
}

/* The same descriptor twice, and a source that is already a target
 * number: fds = {3, 3} gives the child 3 and 4 on one pipe. */
TEST(fd_repeated_and_in_place)
{
    int a[2];
    CHECK_EQ(pipe_cloexec(a), 0);
    a[0] = move_high(a[0]);
    a[1] = move_high(a[1]);
    CHECK_EQ(dup3(a[1], 3, O_CLOEXEC), 3);
    CHECK_EQ(close(a[1]), 0);
    int fds[2] = {3, 3};
    br_proc_t p;
    CHECK_EQ(spawn_sh(&p, "echo x >&3; echo y >&4", fds, 2), 0);
    CHECK_EQ(close(3), 0);
    char buf[64];
    read_all(a[0], buf, sizeof buf);
    CHECK(strcmp(buf, "x\ny\n") == 0);
    CHECK_EQ(close(a[0]), 0);
    reap(&p);
    CHECK_EQ(p.exit_code, 0);
}

/* A descriptor not in `fds` does not reach the child, even without
 * O_CLOEXEC (glibc >= 2.34 closes the rest in the child). */
TEST(other_fds_not_inherited)
{
    int a[2];
    CHECK_EQ(pipe(a), 0); /* no CLOEXEC */
    CHECK_EQ(dup2(a[1], 50), 50);
    CHECK_EQ(fcntl(50, F_GETFD), 0);
    int pass = a[1];
    br_proc_t p;
#if defined(__GLIBC__) && __GLIBC_PREREQ(2, 34)
    const char *script = "[ -e /proc/$$/fd/3 ] && [ ! -e /proc/$$/fd/50 ] && [ ! -e /proc/$$/fd/4 ]";
#else /* no closefrom in posix_spawn: only O_CLOEXEC keeps fds out */
    const char *script = "[ -e /proc/$$/fd/3 ] && [ ! -e /proc/$$/fd/4 ]";
#endif
    CHECK_EQ(spawn_sh(&p, script, &pass, 1), 0);
    reap(&p);
    CHECK_EQ(p.exit_code, 0);
    CHECK_EQ(close(50), 0);
    CHECK_EQ(close(a[0]), 0);
    CHECK_EQ(close(a[1]), 0);
}

/* ------------------------------------------------------------ environment */

TEST(environment)
{
    br_proc_t p;
    char *env[] = {"BRAID_X=5", NULL};
    char *argv[] = {"/bin/sh", "-c", "exit $BRAID_X", NULL};
    br_spawn_options_t o = {.path = "/bin/sh", .argv = argv, .envp = env};
    CHECK_EQ(br_proc_spawn(&p, &o), 0);
    reap(&p);
    CHECK_EQ(p.exit_code, 5);

    /* envp NULL: the caller's environment */
    CHECK_EQ(setenv("BRAID_X", "6", 1), 0);
    o.envp = NULL;
    CHECK_EQ(br_proc_spawn(&p, &o), 0);
    reap(&p);
    CHECK_EQ(p.exit_code, 6);
}

/* The parent blocks SIGUSR1 and ignores SIGUSR2 (as Python ignores
 * SIGPIPE); the child must start with neither. */
TEST(child_starts_with_default_signals)
{
    sigset_t set;
    CHECK_EQ(sigemptyset(&set), 0);
    CHECK_EQ(sigaddset(&set, SIGUSR1), 0);
    CHECK_EQ(pthread_sigmask(SIG_BLOCK, &set, NULL), 0);
    CHECK(signal(SIGUSR2, SIG_IGN) != SIG_ERR);

    br_proc_t p;
    spawn_sleep(&p);
    CHECK_EQ(br_proc_kill(&p, SIGUSR2), 0);
    reap(&p);
    CHECK_EQ(p.term_signal, SIGUSR2);

    spawn_sleep(&p);
    CHECK_EQ(br_proc_kill(&p, SIGUSR1), 0);
    reap(&p); /* a blocked SIGUSR1 would stay pending: wait would time out */
    CHECK_EQ(p.term_signal, SIGUSR1);
}

/* ------------------------------------------------------------ parent death */

TEST(bind_to_parent_checks_the_parent)
{
    CHECK_EQ(br_proc_bind_to_parent(SIGKILL, (int)getppid()), 0);
    int sig = -1;
    CHECK_EQ(prctl(PR_GET_PDEATHSIG, &sig), 0);
    CHECK_EQ(sig, SIGKILL);
    CHECK_EQ(br_proc_bind_to_parent(SIGKILL, (int)getpid()), -ESRCH); /* not our parent */
    CHECK_EQ(br_proc_bind_to_parent(0, (int)getppid()), -EINVAL);
    CHECK_EQ(br_proc_bind_to_parent(SIGKILL, 0), -EINVAL);
    CHECK_EQ(prctl(PR_SET_PDEATHSIG, 0), 0);
}

/* The path of test_proc_child, built next to this program. */
static void helper_path(char *buf, size_t size)
{
    ssize_t n = readlink("/proc/self/exe", buf, size - 1);
    CHECK(n > 0 && (size_t)n < size - 1);
    buf[n] = '\0';
    char *slash = strrchr(buf, '/');
    CHECK(slash != NULL);
    CHECK((size_t)(slash - buf) + sizeof "/test_proc_child" <= size);
    strcpy(slash, "/test_proc_child");
    CHECK_EQ(access(buf, X_OK), 0);
}

/*   this process (subreaper) -> intermediate (fork) -> helper (spawn)
 *
 * The helper binds to the intermediate and reports; the intermediate
 * exits; the kernel must then kill the helper, which, orphaned, has become
 * our child (we are its subreaper), so we can reap it and look at how it
 * died. */
TEST(bind_to_parent_kills_orphan)
{
    char path[PATH_MAX];
    helper_path(path, sizeof path);
    CHECK_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    int report[2];
    CHECK_EQ(pipe_cloexec(report), 0);

    fflush(stdout);
    fflush(stderr);
    pid_t mid = fork();
    CHECK(mid >= 0);
    if (mid == 0) {
        /* The intermediate: spawn, wait for "bound", pass the pid on, die. */
        CHECK_EQ(close(report[0]), 0);
        int ready[2];
        CHECK_EQ(pipe_cloexec(ready), 0);
        char ppid[32];
        snprintf(ppid, sizeof ppid, "%d", (int)getpid());
        char *argv[] = {path, "bind", ppid, NULL};
        br_proc_t p;
        CHECK_EQ(spawn_argv(&p, argv, &ready[1], 1), 0);
        CHECK_EQ(close(ready[1]), 0);
        char buf[32];
        read_all(ready[0], buf, sizeof buf);
        CHECK(strcmp(buf, "0\n") == 0);
        char line[32];
        int n = snprintf(line, sizeof line, "%d\n", p.pid);
        CHECK_EQ(write(report[1], line, (size_t)n), n);
        _exit(0); /* leaves the helper running, its pidfd closed by exit */
    }
    CHECK_EQ(close(report[1]), 0);
    char buf[32];
    read_all(report[0], buf, sizeof buf);
    CHECK_EQ(close(report[0]), 0);
    pid_t helper = (pid_t)atoi(buf);
    CHECK(helper > 0);
    int status;
    CHECK_EQ(waitpid(mid, &status, 0), mid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* The helper sleeps 30 s unless the death signal came. */
    int64_t t0 = bt_now_ms();
    pid_t r;
    while ((r = waitpid(helper, &status, WNOHANG)) == 0 && bt_now_ms() - t0 < 5000)
        bt_sleep_ms(5);
    if (r == 0)
        CHECK_EQ(kill(helper, SIGKILL), 0); /* do not leave it behind */
    CHECK_EQ(r, helper);
    printf("  helper died %lld ms after its parent\n", (long long)(bt_now_ms() - t0));
    CHECK(WIFSIGNALED(status));
    CHECK_EQ(WTERMSIG(status), SIGKILL);
    CHECK_EQ(kill(helper, 0), -1);
    CHECK_EQ(errno, ESRCH);
}

BT_MAIN()
