/*
 * proc.c — br_proc_t: child processes started with posix_spawn and watched
 * through a pidfd.
 *
 *   spawn --> RUNNING --(exits or is killed; poll/wait reaps it)--> EXITED
 *
 * Why posix_spawn and not fork: the parent is a Python process with threads
 * (the thread pool, the event loop). fork() there copies locks held by
 * other threads and can deadlock the child before exec; posix_spawn (glibc:
 * clone(CLONE_VM | CLONE_VFORK) straight into exec) runs no user code in
 * the child, and since glibc 2.24 reports a failed exec as its return value.
 *
 * The child starts clean: signal mask empty and every signal at its default
 * action (a Python parent ignores SIGPIPE, for one, and ignored signals
 * survive exec), descriptors 0-2 inherited, the caller's `fds` as 3, 4, ...
 * and, where glibc can (2.34+), every other descriptor closed, even one
 * that some library opened without O_CLOEXEC.
 *
 * Why a pidfd: a pid may be reused by an unrelated process once the child
 * is reaped; a pidfd always names our child, so br_proc_kill can never hit
 * a stranger, and it becomes readable when the child exits, so br_proc_wait
 * sleeps in poll() instead of polling. Without one (old kernel, seccomp),
 * waitid(P_PID) polling does the job.
 */
#include "internal.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* waitid's idtype for a pidfd (Linux 5.4); glibc names it from 2.36 on. */
#define IDTYPE_PIDFD ((idtype_t)3)

/* Without a pidfd, br_proc_wait polls: first after 1 ms, then backing off
 * to this. */
#define MAX_NAP_NS (20 * 1000000LL)

static void close_fd(int fd)
{
    /* On Linux the fd is released even when close() reports an error. */
    int r = close(fd);
    (void)r;
}

/* ------------------------------------------------------------ spawn */

/* Builds the file actions: tmp[i] becomes 3 + i, then everything above is
 * closed. Returns 0 or a positive errno (posix_spawn style). */
static int build_file_actions(posix_spawn_file_actions_t *fa, const int *tmp, int nfds)
{
    int err = 0;
    for (int i = 0; i < nfds && err == 0; i++)
        err = posix_spawn_file_actions_adddup2(fa, tmp[i], 3 + i);
#if defined(__GLIBC__) && defined(__GLIBC_PREREQ)
#if __GLIBC_PREREQ(2, 34)
    if (err == 0)
        err = posix_spawn_file_actions_addclosefrom_np(fa, 3 + nfds);
#endif
#endif
    return err;
}

/* The child's signal state: nothing blocked, every signal SIG_DFL. */
static int build_attr(posix_spawnattr_t *attr)
{
    sigset_t none, all;
    if (sigemptyset(&none) != 0 || sigfillset(&all) != 0)
        return errno;
    /* These two cannot be caught or ignored: leave them out of the set. */
    if (sigdelset(&all, SIGKILL) != 0 || sigdelset(&all, SIGSTOP) != 0)
        return errno;
    int err = posix_spawnattr_setsigmask(attr, &none);
    if (err == 0)
        err = posix_spawnattr_setsigdefault(attr, &all);
    if (err == 0)
        err = posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    return err;
}

int br_proc_spawn(br_proc_t *p, const br_spawn_options_t *o)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int fa_ok = 0, attr_ok = 0, ntmp = 0, err = 0;
    int *tmp = NULL;
    pid_t pid = -1;

    /* A failed spawn leaves nothing that poll/kill could act on: pid -1
     * makes them refuse (kill(-1, ...) would signal every process). */
    p->pid = -1;
    p->pidfd = -1;
    p->exited = 0;
    p->exit_code = 0;
    p->term_signal = 0;
    if (o == NULL || o->path == NULL || o->argv == NULL || o->nfds < 0 ||
        o->nfds > INT_MAX - 3 || (o->nfds > 0 && o->fds == NULL))
        return -EINVAL;

    /* Target numbers 3..3+nfds-1 may be source numbers too (fds = {4, 3}):
     * dup2 in order would overwrite a source before it is used. So first
     * copy every source above all the targets, here in the parent, with
     * CLOEXEC so that no other thread's spawn inherits the copies; the
     * child's dup2 clears CLOEXEC on the targets. */
    if (o->nfds > 0) {
        tmp = malloc((size_t)o->nfds * sizeof *tmp);
        if (tmp == NULL)
            return -ENOMEM;
    }
    for (; ntmp < o->nfds; ntmp++) {
        int fd = o->fds[ntmp] < 0 ? -1 : fcntl(o->fds[ntmp], F_DUPFD_CLOEXEC, 3 + o->nfds);
        if (fd < 0) {
            err = o->fds[ntmp] < 0 ? EBADF : errno;
            goto out;
        }
        tmp[ntmp] = fd;
    }

    if ((err = posix_spawn_file_actions_init(&fa)) != 0)
        goto out;
    fa_ok = 1;
    if ((err = build_file_actions(&fa, tmp, o->nfds)) != 0)
        goto out;
    if ((err = posix_spawnattr_init(&attr)) != 0)
        goto out;
    attr_ok = 1;
    if ((err = build_attr(&attr)) != 0)
        goto out;

    /* Returns the exec's errno (ENOENT, EACCES, ...) when exec fails; glibc
     * has then reaped the child already. */
    err = posix_spawn(&pid, o->path, &fa, &attr, o->argv, o->envp != NULL ? o->envp : environ);

out:
    /* These only free memory (and cannot fail on an initialized object). */
    if (attr_ok)
        (void)posix_spawnattr_destroy(&attr);
    if (fa_ok)
        (void)posix_spawn_file_actions_destroy(&fa);
    for (int i = 0; i < ntmp; i++)
        close_fd(tmp[i]);
    free(tmp);
    if (err != 0)
        return -err;

    p->pid = pid;
#ifdef SYS_pidfd_open
    /* The child exists (at worst as a zombie, which we alone may reap), so
     * the pid cannot have been reused yet. Any failure (ENOSYS before 5.3,
     * EPERM under some seccomp filters, EMFILE) falls back to pid polling
     * rather than fail a spawn that happened: the child must still be
     * reaped. The pidfd is close-on-exec without asking. */
    long fd = syscall(SYS_pidfd_open, pid, 0);
    p->pidfd = fd >= 0 ? (int)fd : -1;
#endif
    return 0;
}

/* ------------------------------------------------------------ reaping */

int br_proc_poll(br_proc_t *p)
{
    if (p->exited)
        return 1; /* reaped already: the pid may belong to someone else now */
    if (p->pid <= 0)
        return -EINVAL;

    siginfo_t si;
    int r;
    memset(&si, 0, sizeof si); /* si_pid stays 0 if nothing has exited */
    do {
        if (p->pidfd >= 0) {
            r = waitid(IDTYPE_PIDFD, (id_t)p->pidfd, &si, WEXITED | WNOHANG);
            /* Linux 5.3 has pidfds but not P_PIDFD: go by pid. */
            if (r < 0 && errno == EINVAL)
                r = waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG);
        } else {
            r = waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG);
        }
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return -errno; /* ECHILD: someone else reaped it (or SIGCHLD is SIG_IGN) */
    if (si.si_pid == 0)
        return 0;

    if (si.si_code == CLD_EXITED) {
        p->exit_code = si.si_status;
        p->term_signal = 0;
    } else { /* CLD_KILLED or CLD_DUMPED: WEXITED reports nothing else */
        p->term_signal = si.si_status;
        p->exit_code = -si.si_status; /* as Python's Popen.returncode */
    }
    p->exited = 1;
    return 1;
}

static int nap(int64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000), .tv_nsec = (long)(ns % 1000000000)};
    return nanosleep(&ts, NULL) == 0 ? 0 : -errno;
}

int br_proc_wait(br_proc_t *p, int64_t timeout_ns)
{
    int64_t deadline = -1;
    int64_t step = 1000000; /* the polling interval without a pidfd */
    int woken = 0;

    if (timeout_ns >= 0) {
        int64_t now = br_now_ns();
        if (timeout_ns <= INT64_MAX - now) /* else: as good as forever */
            deadline = now + timeout_ns;
    }
    for (;;) {
        int r = br_proc_poll(p);
        if (r != 0)
            return r;
        int64_t left = -1;
        if (deadline >= 0) {
            left = deadline - br_now_ns();
            if (left <= 0)
                return 0;
        }

        if (p->pidfd < 0 || woken) {
            /* No pidfd, or it said "exited" and waitid disagreed (not
             * expected; do not spin on it): sleep a little and look again. */
            int64_t ns = left >= 0 && left < step ? left : step;
            if ((r = nap(ns)) != 0)
                return r; /* -EINTR: the caller runs its handlers */
            step = step * 2 < MAX_NAP_NS ? step * 2 : MAX_NAP_NS;
            woken = 0;
            continue;
        }

        struct timespec ts, *tsp = NULL;
        if (left >= 0) {
            ts.tv_sec = (time_t)(left / 1000000000);
            ts.tv_nsec = (long)(left % 1000000000);
            tsp = &ts;
        }
        struct pollfd pfd = {.fd = p->pidfd, .events = POLLIN};
        int n = ppoll(&pfd, 1, tsp, NULL);
        if (n < 0)
            return -errno;
        if (n > 0 && (pfd.revents & POLLNVAL))
            return -EBADF;
        woken = n > 0;
    }
}

int br_proc_kill(br_proc_t *p, int sig)
{
    if (p->exited)
        return -ESRCH; /* the pid may be someone else's by now */
    if (p->pid <= 0)
        return -EINVAL; /* kill(0 or -1, ...) would signal a whole group */
#ifdef SYS_pidfd_send_signal
    if (p->pidfd >= 0) {
        if (syscall(SYS_pidfd_send_signal, p->pidfd, sig, NULL, 0) == 0)
            return 0;
        if (errno != ENOSYS)
            return -errno;
    }
#endif
    /* Safe enough without a pidfd: until we reap it, the pid stays ours. */
    return kill(p->pid, sig) == 0 ? 0 : -errno;
}

void br_proc_close(br_proc_t *p)
{
    if (p->pidfd >= 0)
        close_fd(p->pidfd);
    p->pidfd = -1;
}

/* ------------------------------------------------------------ in the child */

/* Note for callers: the kernel sends the death signal when the *thread*
 * that created the child exits, not the whole parent process. Spawn
 * workers from a thread that lives as long as the pool does. */
int br_proc_bind_to_parent(int sig, int expected_ppid)
{
    if (sig <= 0 || sig >= NSIG || expected_ppid <= 0)
        return -EINVAL;
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0UL, 0UL, 0UL) != 0)
        return -errno;
    /* The parent may have died before the prctl: then we were reparented
     * and no signal will ever come. */
    if (getppid() != (pid_t)expected_ppid)
        return -ESRCH;
    return 0;
}
