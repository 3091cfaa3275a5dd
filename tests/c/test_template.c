/* test_template.c — br_template_t: a template process that forks workers
 * which are children of the process that asked.
 *
 * The template is this very executable run as `test_template --template`
 * (found through /proc/self/exe); its workers read one command from their
 * fd 3 (a pipe) and answer on fd 4:
 *
 *   exit N        _exit(N)
 *   signal N      kill itself with signal N
 *   check P N i…  its parent is P, fds 3..3+N-1 have inodes i…, are not
 *                 close-on-exec, and 3+N..10 are closed, and its robust
 *                 futex list is registered: answers "ok"
 *   bind P        br_proc_bind_to_parent(SIGKILL, P), answers, then sleeps
 *   pthread_kill  another thread signals the main one (signal 0): answers
 *                 pthread_kill's result
 *
 * Skipped (exit 77) where the kernel has no pidfd_open or refuses
 * CLONE_PARENT. */
#include "harness.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#define SEC 1000000000LL
#define MS 1000000LL

/* ------------------------------------------------------------ the template */

static pthread_t worker_main_thread;

static void *signal_main(void *arg)
{
    *(int *)arg = pthread_kill(worker_main_thread, 0);
    return NULL;
}

static void worker_main(void)
{
    char cmd[512];
    size_t got = 0;
    for (;;) { /* one line from fd 3 */
        ssize_t r = read(3, cmd + got, sizeof cmd - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            _exit(101);
        got += (size_t)r;
        cmd[got] = '\0';
        if (strchr(cmd, '\n') != NULL || got == sizeof cmd - 1)
            break;
    }
    char answer[256] = "ok\n";
    long a = 0, b = 0;
    if (sscanf(cmd, "exit %ld", &a) == 1)
        _exit((int)a);
    if (sscanf(cmd, "signal %ld", &a) == 1) {
        kill(getpid(), (int)a);
        for (;;)
            pause();
    }
    if (sscanf(cmd, "check %ld %ld", &a, &b) == 2) {
        const char *p = cmd;
        for (int skip = 0; skip < 3; skip++) /* past "check P N " */
            p = strchr(p, ' ') + 1;
        if (getppid() != (pid_t)a)
            snprintf(answer, sizeof answer, "bad ppid %d, not %ld\n", (int)getppid(), a);
        for (int i = 0; i < b && answer[0] == 'o'; i++) {
            char *end;
            unsigned long long ino = strtoull(p, &end, 10);
            p = end;
            struct stat st;
            if (fstat(3 + i, &st) != 0 || (unsigned long long)st.st_ino != ino)
                snprintf(answer, sizeof answer, "bad inode of fd %d\n", 3 + i);
            else if (fcntl(3 + i, F_GETFD) & FD_CLOEXEC)
                snprintf(answer, sizeof answer, "fd %d is close-on-exec\n", 3 + i);
        }
        for (int fd = 3 + (int)b; fd < BR_TEMPLATE_FD + BR_TEMPLATE_MAX_FDS && answer[0] == 'o'; fd++)
            if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
                snprintf(answer, sizeof answer, "fd %d is open\n", fd);
        /* glibc's robust futex list is registered again, as after fork() */
        void *head = NULL;
        size_t len = 0;
        if (answer[0] == 'o' && (syscall(SYS_get_robust_list, 0, &head, &len) != 0 || head == NULL))
            snprintf(answer, sizeof answer, "no robust futex list\n");
        ssize_t w = write(4, answer, strlen(answer));
        _exit(w == (ssize_t)strlen(answer) ? 0 : 102);
    }
    if (strncmp(cmd, "pthread_kill", 12) == 0) {
        /* glibc's record of this thread's id must be this process's */
        int r = -1;
        pthread_t t;
        worker_main_thread = pthread_self();
        if (pthread_create(&t, NULL, signal_main, &r) == 0)
            (void)pthread_join(t, NULL);
        snprintf(answer, sizeof answer, "%d\n", r);
        ssize_t w = write(4, answer, strlen(answer));
        _exit(w == (ssize_t)strlen(answer) ? 0 : 102);
    }
    if (sscanf(cmd, "bind %ld", &a) == 1) {
        int r = br_proc_bind_to_parent(SIGKILL, (int)a);
        snprintf(answer, sizeof answer, "%d\n", r);
        ssize_t w = write(4, answer, strlen(answer));
        (void)w;
        for (;;)
            pause();
    }
    _exit(103);
}

static void *sleeper(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

/* test_template --template [--threaded] [--slow MS] */
static int template_main(int argc, char **argv)
{
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--threaded") == 0) {
            pthread_t t;
            if (pthread_create(&t, NULL, sleeper, NULL) != 0 || pthread_detach(t) != 0)
                return 2;
        } else if (strcmp(argv[i], "--slow") == 0 && i + 1 < argc) {
            bt_sleep_ms(atoi(argv[++i]));
        }
    }
    for (;;) {
        br_template_request_t req;
        int r = br_template_accept(BR_TEMPLATE_FD, &req);
        if (r == -EINTR)
            continue;
        if (r == 0)
            return 0; /* the parent has gone */
        if (r < 0)
            return 3;
        if (br_template_fork_child(BR_TEMPLATE_FD, &req) == 0)
            worker_main();
    }
}

/* ------------------------------------------------------------ helpers */

static char self_path[PATH_MAX];

static int start(br_template_t *t, const char *a1, const char *a2, const char *a3)
{
    char *argv[] = {self_path, "--template", (char *)a1, (char *)a2, (char *)a3, NULL};
    br_spawn_options_t o = {.path = self_path, .argv = argv};
    int r = br_template_start(t, &o);
    if (r == 0)
        t->timeout_ns = 20 * SEC;
    return r;
}

static int count_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 1024; fd++)
        n += fcntl(fd, F_GETFD) >= 0;
    return n;
}

/* A worker with a command pipe as 3 and an answer pipe as 4 (plus
 * `extra`); the command is written before the fork. Returns the read end
 * of the answer pipe, or -1 if the fork failed (*err says why). */
static int fork_with(br_template_t *t, br_proc_t *w, const char *cmd, const int *extra, int nextra, int *err)
{
    int cp[2], ap[2];
    CHECK_EQ(pipe2(cp, O_CLOEXEC), 0);
    CHECK_EQ(pipe2(ap, O_CLOEXEC), 0);
    CHECK_EQ(write(cp[1], cmd, strlen(cmd)), (long long)strlen(cmd));
    int fds[BR_TEMPLATE_MAX_FDS] = {cp[0], ap[1]};
    for (int i = 0; i < nextra; i++)
        fds[2 + i] = extra[i];
    *err = br_template_fork(t, fds, 2 + nextra, w);
    CHECK_EQ(close(cp[0]), 0);
    CHECK_EQ(close(cp[1]), 0);
    CHECK_EQ(close(ap[1]), 0);
    if (*err != 0) {
        CHECK_EQ(close(ap[0]), 0);
        return -1;
    }
    return ap[0];
}

static void fork_cmd(br_template_t *t, br_proc_t *w, const char *cmd)
{
    int err;
    int fd = fork_with(t, w, cmd, NULL, 0, &err);
    CHECK_EQ(err, 0);
    CHECK_EQ(close(fd), 0);
}

/* Reads the worker's answer (until EOF or a newline, 10 s at most). */
static void read_answer(int fd, char *buf, size_t size)
{
    size_t got = 0;
    buf[0] = '\0';
    while (got < size - 1 && strchr(buf, '\n') == NULL) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        CHECK_EQ(poll(&p, 1, 10000), 1);
        ssize_t r = read(fd, buf + got, size - 1 - got);
        CHECK(r >= 0);
        if (r == 0)
            break;
        got += (size_t)r;
        buf[got] = '\0';
    }
}

static void reap(br_proc_t *p)
{
    CHECK_EQ(br_proc_wait(p, 10 * SEC), 1);
    br_proc_close(p);
}

/* ------------------------------------------------------------ cases */

TEST(forks_workers_and_reads_their_exit_codes)
{
    int before = count_fds();
    br_template_t t;
    CHECK_EQ(start(&t, NULL, NULL, NULL), 0);
    CHECK(t.proc.pid > 0);
    br_proc_t w[6];
    for (int i = 0; i < 6; i++) {
        char cmd[32];
        snprintf(cmd, sizeof cmd, "exit %d\n", 10 + i);
        fork_cmd(&t, &w[i], cmd);
        CHECK(w[i].pid > 0);
        CHECK(w[i].pid != t.proc.pid);
        CHECK(w[i].pidfd >= 0);
        CHECK_EQ(fcntl(w[i].pidfd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
    }
    for (int i = 0; i < 6; i++) {
        reap(&w[i]); /* waitid works: they are our children */
        CHECK_EQ(w[i].exit_code, 10 + i);
        CHECK_EQ(w[i].term_signal, 0);
    }
    CHECK_EQ(br_template_close(&t, 5 * SEC), 0);
    CHECK_EQ(t.proc.exit_code, 0);
    CHECK_EQ(count_fds(), before);
}

TEST(descriptors_arrive_as_3_and_up)
{
    br_template_t t;
    CHECK_EQ(start(&t, NULL, NULL, NULL), 0);
    for (int nextra = 0; nextra <= BR_TEMPLATE_MAX_FDS - 2; nextra += 3) {
        int extra[BR_TEMPLATE_MAX_FDS];
        for (int i = 0; i < nextra; i++) {
            extra[i] = i % 2 ? eventfd(0, EFD_CLOEXEC) : memfd_create("t", MFD_CLOEXEC);
            CHECK(extra[i] >= 0);
        }
        int cp[2], ap[2];
        CHECK_EQ(pipe2(cp, O_CLOEXEC), 0);
        CHECK_EQ(pipe2(ap, O_CLOEXEC), 0);
        int fds[BR_TEMPLATE_MAX_FDS] = {cp[0], ap[1]};
        for (int i = 0; i < nextra; i++)
            fds[2 + i] = extra[i];
        char full[600];
        int n = snprintf(full, sizeof full, "check %d %d", (int)getpid(), 2 + nextra);
        for (int i = 0; i < 2 + nextra; i++) {
            struct stat st;
            CHECK_EQ(fstat(fds[i], &st), 0);
            n += snprintf(full + n, sizeof full - (size_t)n, " %llu", (unsigned long long)st.st_ino);
        }
        snprintf(full + n, sizeof full - (size_t)n, "\n");
        CHECK_EQ(write(cp[1], full, strlen(full)), (long long)strlen(full));
        br_proc_t w;
        CHECK_EQ(br_template_fork(&t, fds, 2 + nextra, &w), 0);
        CHECK_EQ(close(cp[0]), 0);
        CHECK_EQ(close(cp[1]), 0);
        CHECK_EQ(close(ap[1]), 0);
        for (int i = 0; i < nextra; i++)
            CHECK_EQ(close(extra[i]), 0);
        char answer[256];
        read_answer(ap[0], answer, sizeof answer);
        CHECK_EQ(close(ap[0]), 0);
        if (strcmp(answer, "ok\n") != 0)
            fprintf(stderr, "worker with %d extra fds: %s", nextra, answer);
        CHECK(strcmp(answer, "ok\n") == 0);
        reap(&w);
        CHECK_EQ(w.exit_code, 0);
    }
    CHECK_EQ(br_template_close(&t, 5 * SEC), 0);
}

TEST(a_worker_killed_by_a_signal_is_seen_by_the_parent)
{
    br_template_t t;
    CHECK_EQ(start(&t, NULL, NULL, NULL), 0);
    br_proc_t a, b;
    fork_cmd(&t, &a, "signal 10\n"); /* SIGUSR1: terminates */
    reap(&a);
    CHECK_EQ(a.term_signal, SIGUSR1);
    CHECK_EQ(a.exit_code, -SIGUSR1);
    /* killed from here, through its pidfd */
    int err, fd = fork_with(&t, &b, "bind 0\n", NULL, 0, &err); /* sleeps */
    CHECK_EQ(err, 0);
    CHECK_EQ(br_proc_poll(&b), 0);
    CHECK_EQ(br_proc_kill(&b, SIGTERM), 0);
    reap(&b);
    CHECK_EQ(b.term_signal, SIGTERM);
    CHECK_EQ(close(fd), 0);
    CHECK_EQ(br_template_close(&t, 5 * SEC), 0);
}

TEST(a_worker_can_signal_its_own_main_thread)
{
    int *tidp = NULL;
    if (prctl(PR_GET_TID_ADDRESS, (unsigned long)&tidp, 0UL, 0UL, 0UL) != 0) {
        printf("(no PR_GET_TID_ADDRESS here: not checked) ");
        return;
    }
    br_template_t t;
    CHECK_EQ(start(&t, NULL, NULL, NULL), 0);
    br_proc_t w;
    int err, fd = fork_with(&t, &w, "pthread_kill\n", NULL, 0, &err);
    CHECK_EQ(err, 0);
    char answer[64];
    read_answer(fd, answer, sizeof answer);
    CHECK_EQ(close(fd), 0);
    if (strcmp(answer, "0\n") != 0)
        fprintf(stderr, "pthread_kill in the worker: %s", answer);
    CHECK(strcmp(answer, "0\n") == 0);
    reap(&w);
    CHECK_EQ(w.exit_code, 0);
    CHECK_EQ(br_template_close(&t, 5 * SEC), 0);
}

TEST(a_killed_template_fails_the_next_fork_and_can_be_replaced)
{
    br_template_t t;
    CHECK_EQ(start(&t, NULL, NULL, NULL), 0);
    br_proc_t w;
    fork_cmd(&t, &w, "exit 0\n");
    reap(&w);
    CHECK_EQ(br_proc_kill(&t.proc, SIGKILL), 0);
    CHECK_EQ(br_proc_wait(&t.proc, 10 * SEC), 1);
    int64_t t0 = bt_now_ms();
    int err;
    CHECK_EQ(fork_with(&t, &w, "exit 0\n", NULL, 0, &err), -1);
    CHECK_EQ(err, -EPIPE);
    CHECK(bt_now_ms() - t0 < 2000); /* at once, not after the timeout */
    CHECK_EQ(w.pid, -1);
    CHECK_EQ(fork_with(&t, &w, "exit 0\n", NULL, 0, &err), -1);
    CHECK_EQ(err, -EPIPE);
    CHECK_EQ(br_template_close(&t, 0), 0);
    CHECK_EQ(t.proc.term_signal, SIGKILL);
    CHECK_EQ(br_template_close(&t, 0), 0); /* twice: nothing left to do */

    CHECK_EQ(start(&t, NULL, NULL, NULL), 0);
    fork_cmd(&t, &w, "exit 4\n");
    reap(&w);
    CHECK_EQ(w.exit_code, 4);
    CHECK_EQ(br_template_close(&t, 5 * SEC), 0);
}

TEST(closing_the_socket_makes_the_template_leave)
{
    br_template_t t;
    CHECK_EQ(start(&t, NULL, NULL, NULL), 0);
    br_proc_t w;
    fork_cmd(&t, &w, "exit 0\n"); /* it is serving */
    reap(&w);
    int64_t t0 = bt_now_ms();
    CHECK_EQ(br_template_close(&t, 10 * SEC), 0); /* left by itself */
    CHECK(bt_now_ms() - t0 < 5000);
    CHECK_EQ(t.proc.exited, 1);
    CHECK_EQ(t.proc.term_signal, 0);
    CHECK_EQ(t.proc.exit_code, 0);
    CHECK_EQ(t.proc.pidfd, -1);
}

/* The parent process dies: the template leaves (EOF on its socket) and a
 * worker that bound itself to the parent is killed. This process is made a
 * subreaper so that both come back to it and their ends can be read. */
TEST(when_the_parent_dies_template_and_workers_go)
{
    CHECK_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1UL, 0UL, 0UL, 0UL), 0);
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    pid_t mid = fork();
    CHECK(mid >= 0);
    if (mid == 0) {
        br_template_t t;
        br_proc_t w;
        CHECK_EQ(start(&t, NULL, NULL, NULL), 0);
        char cmd[32];
        snprintf(cmd, sizeof cmd, "bind %d\n", (int)getpid());
        int err, fd = fork_with(&t, &w, cmd, NULL, 0, &err);
        CHECK_EQ(err, 0);
        char answer[64];
        read_answer(fd, answer, sizeof answer);
        CHECK(strcmp(answer, "0\n") == 0); /* armed, parent checked */
        int pids[2] = {t.proc.pid, w.pid};
        CHECK_EQ(write(p[1], pids, sizeof pids), (long long)sizeof pids);
        _exit(0); /* without closing anything */
    }
    CHECK_EQ(close(p[1]), 0);
    int pids[2];
    CHECK_EQ(read(p[0], pids, sizeof pids), (long long)sizeof pids);
    CHECK_EQ(close(p[0]), 0);
    int status;
    CHECK_EQ(waitpid(mid, &status, 0), mid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* both were reparented to us: wait for them (10 s at most) */
    int tpl_status = -1, w_status = -1;
    for (int i = 0; i < 1000 && (tpl_status == -1 || w_status == -1); i++) {
        pid_t r = waitpid(-1, &status, WNOHANG);
        if (r == pids[0])
            tpl_status = status;
        else if (r == pids[1])
            w_status = status;
        else
            bt_sleep_ms(10);
    }
    CHECK(tpl_status != -1);
    CHECK(WIFEXITED(tpl_status) && WEXITSTATUS(tpl_status) == 0);
    CHECK(w_status != -1);
    CHECK(WIFSIGNALED(w_status) && WTERMSIG(w_status) == SIGKILL);
}

TEST(a_multithreaded_template_refuses_to_fork)
{
    br_template_t t;
    CHECK_EQ(start(&t, "--threaded", NULL, NULL), 0);
    br_proc_t w;
    int err;
    CHECK_EQ(fork_with(&t, &w, "exit 0\n", NULL, 0, &err), -1);
    CHECK_EQ(err, -EDEADLK);
    CHECK_EQ(fork_with(&t, &w, "exit 0\n", NULL, 0, &err), -1);
    CHECK_EQ(err, -EDEADLK); /* still there, still refusing */
    CHECK_EQ(t.dead, 0);
    CHECK_EQ(br_template_close(&t, 10 * SEC), 0);
}

TEST(a_template_that_does_not_answer_times_out)
{
    br_template_t t;
    CHECK_EQ(start(&t, "--slow", "3000", NULL), 0);
    t.timeout_ns = 100 * MS;
    br_proc_t w;
    int err;
    int64_t t0 = bt_now_ms();
    CHECK_EQ(fork_with(&t, &w, "exit 0\n", NULL, 0, &err), -1);
    CHECK_EQ(err, -ETIMEDOUT);
    CHECK(bt_now_ms() - t0 < 2000);
    CHECK_EQ(t.dead, 1);
    CHECK_EQ(fork_with(&t, &w, "exit 0\n", NULL, 0, &err), -1);
    CHECK_EQ(err, -EPIPE);
    CHECK_EQ(br_template_close(&t, 0), 1); /* killed: it was asleep */
    CHECK_EQ(t.proc.term_signal, SIGKILL);
}

TEST(bad_arguments)
{
    br_template_t t;
    char *argv[] = {"/nonexistent/braid-template", NULL};
    br_spawn_options_t o = {.path = argv[0], .argv = argv};
    CHECK_EQ(br_template_start(&t, &o), -ENOENT);
    CHECK_EQ(br_template_close(&t, 0), 0); /* no-op after a failed start */
    int one = 0;
    o.fds = &one;
    o.nfds = 1;
    CHECK_EQ(br_template_start(&t, &o), -EINVAL);
    CHECK_EQ(br_template_start(&t, NULL), -EINVAL);

    CHECK_EQ(start(&t, NULL, NULL, NULL), 0);
    br_proc_t w;
    int fds[BR_TEMPLATE_MAX_FDS + 1] = {0};
    CHECK_EQ(br_template_fork(&t, fds, BR_TEMPLATE_MAX_FDS + 1, &w), -EINVAL);
    CHECK_EQ(w.pid, -1);
    CHECK_EQ(br_template_fork(&t, fds, -1, &w), -EINVAL);
    CHECK_EQ(br_template_fork(&t, NULL, 1, &w), -EINVAL);
    fds[0] = -1;
    CHECK_EQ(br_template_fork(&t, fds, 1, &w), -EBADF);
    /* a worker with no descriptors at all */
    CHECK_EQ(br_template_fork(&t, NULL, 0, &w), 0);
    reap(&w);
    CHECK_EQ(w.exit_code, 101); /* no fd 3 to read a command from */
    CHECK_EQ(br_template_close(&t, 5 * SEC), 0);
}

static br_template_t shared;

static void *forker(void *arg)
{
    (void)arg;
    for (int i = 0; i < 5; i++) {
        br_proc_t w;
        fork_cmd(&shared, &w, "exit 7\n");
        reap(&w);
        CHECK_EQ(w.exit_code, 7);
    }
    return NULL;
}

TEST(forks_from_several_threads)
{
    CHECK_EQ(start(&shared, NULL, NULL, NULL), 0);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        th[i] = bt_thread(forker, NULL);
    for (int i = 0; i < 4; i++)
        bt_join(th[i]);
    CHECK_EQ(br_template_close(&shared, 5 * SEC), 0);
}

/* ------------------------------------------------------------ main */

/* pidfd_open, and a raw clone with CLONE_PARENT making a child of ours. */
static int supported(void)
{
#if !defined(SYS_pidfd_open)
    return 0;
#else
    long fd = syscall(SYS_pidfd_open, getpid(), 0);
    if (fd < 0)
        return 0;
    close((int)fd);
    int p[2];
    if (pipe(p) != 0)
        return 0;
    pid_t mid = fork();
    if (mid < 0)
        return 0;
    if (mid == 0) {
#if defined(__s390__) || defined(__CRIS__)
        long r = syscall(SYS_clone, 0L, (unsigned long)CLONE_PARENT, NULL, NULL, 0L);
#else
        long r = syscall(SYS_clone, (unsigned long)CLONE_PARENT, 0L, NULL, NULL, 0L);
#endif
        if (r == 0)
            _exit(0);
        int pid = (int)r;
        ssize_t w = write(p[1], &pid, sizeof pid);
        _exit(r > 0 && w == (ssize_t)sizeof pid ? 0 : 1);
    }
    close(p[1]);
    int status, pid = -1;
    ssize_t n = read(p[0], &pid, sizeof pid);
    close(p[0]);
    if (waitpid(mid, &status, 0) != mid || !WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
        n != (ssize_t)sizeof pid)
        return 0;
    return waitpid(pid, &status, 0) == pid; /* ours to reap */
#endif
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--template") == 0)
        return template_main(argc, argv);
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
    if (n <= 0)
        return 77;
    self_path[n] = '\0';
    if (!supported()) {
        printf("skipped: no pidfd_open or no CLONE_PARENT here\n");
        return 77;
    }
    return bt_main(argc, argv);
}
