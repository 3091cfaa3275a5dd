/*
 * proctemplate.c — br_template_t: a clean, single-threaded "template"
 * process that forks new workers on request (a fork server).
 *
 * Why: a worker that is a fresh interpreter costs an interpreter start and
 * its imports, tens of milliseconds; a fork of a process that has done them
 * costs about one. The parent cannot fork itself (it has threads: a fork
 * copies locks other threads hold, see proc.c), so it starts one template
 * with br_proc_spawn, the template loads what every worker shares once,
 * then forks each new worker on request.
 *
 *   parent                                   template (fd 3 = its socket)
 *   br_template_start --posix_spawn-------->  loads what workers share
 *   br_template_fork  --{seq, n} + fds---->   br_template_accept
 *                                             br_template_fork_child:
 *                                               clone(CLONE_PARENT)
 *                     <--{seq, pid, err}---     in the template: reply
 *   pidfd_open(pid)                             in the worker: fds to 3..,
 *   (the worker is the parent's child)          return 0 (like fork)
 *
 * The worker is a child of the PARENT, not of the template: the template
 * clones it with CLONE_PARENT. So the parent reaps it, reads its exit code
 * or signal and kills it through a pidfd exactly as a br_proc_spawn child
 * (br_proc_poll, br_proc_wait, br_proc_kill), and a dead template takes no
 * worker with it. The kernel clears PR_SET_PDEATHSIG in the new worker: its
 * code re-arms it (br_proc_bind_to_parent). Note that a CLONE_PARENT child
 * has the template's parent *thread* as its parent, and PR_SET_PDEATHSIG
 * fires when that thread exits: start the template from a thread that
 * outlives every worker it will fork.
 *
 * The clone is a raw system call (glibc's fork() has no way to ask for
 * CLONE_PARENT), so glibc's pthread_atfork handlers do not run around it.
 * That is safe only in a single-threaded process, which is what a template
 * must be anyway: br_template_fork_child counts the template's threads
 * first and refuses with -EDEADLK when there is more than one (a library
 * that started a thread while the template loaded, OpenBLAS for one). What
 * glibc's fork() itself does in the child that a single thread still
 * needs is done here: the thread's id in glibc's record of it
 * (clone_parent) and its robust futex list (br_template_fork_child). With
 * one thread, no lock of glibc's (malloc's, stdio's) can be held by
 * another at the clone, which is what its atfork work is for.
 *
 * Descriptors. A worker gets the request's descriptors as 3, 4, ... like a
 * br_proc_spawn child, and keeps everything else the template had open (a
 * fork keeps descriptors; closing them under the template's code would
 * leave its objects with dead or, worse, reused numbers), except the
 * template's socket. So that nothing the template opens lands on 3..10,
 * the template is started with its socket on 3 and /dev/null on 4..10:
 * the worker's descriptors replace those, and the rest are closed in it.
 *
 * Messages (SOCK_SEQPACKET keeps their boundaries, and the descriptors of
 * a request arrive with it or not at all): a request is {magic, nfds, seq}
 * with nfds descriptors as SCM_RIGHTS; the reply is {seq, pid, err}. A
 * reply whose seq is not the request's is one that came too late for an
 * earlier, timed-out request; br_template_fork marks the template dead on
 * a timeout, so it never reads one.
 *
 * Template life cycle, seen from the parent:
 *
 *   start --> RUNNING --(fork: EOF, EPIPE, timeout)--> DEAD: forks fail
 *                |                                       |  with -EPIPE
 *                +-- br_template_close: close the socket,+--> reaped
 *                    wait `grace`, SIGKILL, reap
 *
 * The template leaves when its socket reaches EOF (br_template_accept
 * returns 0): when the parent closes it or dies, whichever comes first.
 */
#include "internal.h"

#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define REQUEST_MAGIC 0x31706d54u /* "Tmp1" little-endian */

/* waitid's idtype for a pidfd (Linux 5.4); glibc names it from 2.36 on. */
#define IDTYPE_PIDFD ((idtype_t)3)

typedef struct request_s {
    uint32_t magic;
    uint32_t nfds;
    uint64_t seq;
} request_t;

typedef struct reply_s {
    uint64_t seq;
    int32_t pid; /* > 0 on success */
    int32_t err; /* 0 or -errno */
} reply_t;

_Static_assert(BR_TEMPLATE_MAX_FDS >= 1 && BR_TEMPLATE_MAX_FDS <= 64, "fd range");

static void close_fd(int fd)
{
    /* On Linux the fd is released even when close() reports an error. */
    int r = close(fd);
    (void)r;
}

static void close_all(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close_fd(fds[i]);
}

/* ------------------------------------------------------------ parent side */

int br_template_start(br_template_t *t, const br_spawn_options_t *o)
{
    int sv[2], devnull, err;
    int fds[BR_TEMPLATE_MAX_FDS];

    t->sock = -1;
    t->dead = 1;
    t->seq = 0;
    t->timeout_ns = -1;
    t->proc.pid = -1;
    t->proc.pidfd = -1;
    t->proc.exited = 0;
    if (o == NULL || o->nfds != 0)
        return -EINVAL;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        return -errno;
    devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0) {
        err = -errno;
        close_fd(sv[0]);
        close_fd(sv[1]);
        return err;
    }
    fds[0] = sv[1];
    for (int i = 1; i < BR_TEMPLATE_MAX_FDS; i++)
        fds[i] = devnull;
    br_spawn_options_t so = *o;
    so.fds = fds;
    so.nfds = BR_TEMPLATE_MAX_FDS;
    err = br_proc_spawn(&t->proc, &so);
    close_fd(devnull);
    close_fd(sv[1]);
    if (err != 0) {
        close_fd(sv[0]);
        return err;
    }
    if ((err = pthread_mutex_init(&t->lock, NULL)) != 0) {
        close_fd(sv[0]);
        (void)br_proc_kill(&t->proc, SIGKILL);
        (void)br_proc_wait(&t->proc, -1);
        br_proc_close(&t->proc);
        return -err;
    }
    t->sock = sv[0];
    t->dead = 0;
    return 0;
}

static int send_request(int sock, const request_t *req, const int *fds, int nfds)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * BR_TEMPLATE_MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = (void *)req, .iov_len = sizeof *req};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(&ctl, 0, sizeof ctl);
        msg.msg_control = ctl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    for (;;) {
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n == (ssize_t)sizeof *req)
            return 0;
        if (n >= 0)
            return -EPROTO; /* a datagram is sent whole or not at all */
        if (errno != EINTR)
            return -errno;
    }
}

/* Waits for the reply to request `seq`: 0 with *rep filled, -EPIPE when the
 * template is gone, -ETIMEDOUT, -errno. */
static int recv_reply(int sock, uint64_t seq, int64_t timeout_ns, reply_t *rep)
{
    int64_t deadline = -1;
    if (timeout_ns >= 0) {
        int64_t now = br_now_ns();
        if (timeout_ns <= INT64_MAX - now)
            deadline = now + timeout_ns;
    }
    for (;;) {
        int ms = -1;
        if (deadline >= 0) {
            int64_t left = deadline - br_now_ns();
            if (left <= 0)
                return -ETIMEDOUT;
            ms = left / 1000000 >= INT32_MAX ? INT32_MAX : (int)((left + 999999) / 1000000);
        }
        struct pollfd p = {.fd = sock, .events = POLLIN};
        int r = poll(&p, 1, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            continue; /* the deadline check above decides */
        ssize_t n = recv(sock, rep, sizeof *rep, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0)
            return errno == ECONNRESET ? -EPIPE : -errno;
        if (n == 0)
            return -EPIPE; /* EOF: the template has exited */
        if (n != (ssize_t)sizeof *rep)
            return -EPROTO;
        if (rep->seq == seq)
            return 0;
        /* an answer to another request: not expected (see the header) */
    }
}

/* The new worker must be our child: waitid without reaping says so (ECHILD
 * if not). 0 or -errno. */
static int check_child(int pid, int pidfd)
{
    siginfo_t si;
    int r;
    do {
        if (pidfd >= 0) {
            r = waitid(IDTYPE_PIDFD, (id_t)pidfd, &si, WEXITED | WNOHANG | WNOWAIT);
            if (r < 0 && errno == EINVAL) /* Linux 5.3: no P_PIDFD */
                r = waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT);
        } else {
            r = waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT);
        }
    } while (r < 0 && errno == EINTR);
    return r == 0 ? 0 : -errno;
}

int br_template_fork(void *tpl, const int *fds, int nfds, br_proc_t *out)
{
    br_template_t *t = tpl;
    reply_t rep;
    int err;

    out->pid = -1;
    out->pidfd = -1;
    out->exited = 0;
    out->exit_code = 0;
    out->term_signal = 0;
    if (t == NULL || nfds < 0 || nfds > BR_TEMPLATE_MAX_FDS || (nfds > 0 && fds == NULL))
        return -EINVAL;
    for (int i = 0; i < nfds; i++)
        if (fds[i] < 0)
            return -EBADF;

    br__mutex_lock(&t->lock);
    if (t->dead || t->sock < 0) {
        br__mutex_unlock(&t->lock);
        return -EPIPE;
    }
    request_t req = {.magic = REQUEST_MAGIC, .nfds = (uint32_t)nfds, .seq = ++t->seq};
    err = send_request(t->sock, &req, fds, nfds);
    if (err == -ECONNRESET || err == -ECONNREFUSED)
        err = -EPIPE;
    if (err == 0)
        err = recv_reply(t->sock, req.seq, t->timeout_ns, &rep);
    if (err == -EPIPE || err == -ETIMEDOUT || err == -EPROTO) {
        /* gone, or no longer trusted to answer in step: a late answer
         * would be read as the next request's */
        t->dead = 1;
    }
    br__mutex_unlock(&t->lock);
    if (err != 0)
        return err;
    if (rep.err != 0)
        return rep.err < 0 && rep.err > -4096 ? rep.err : -EPROTO;
    if (rep.pid <= 0)
        return -EPROTO;

    /* The worker exists (at worst as a zombie only we may reap), so its pid
     * cannot have been reused yet; see br_proc_spawn for the fallback. */
    int pidfd = -1;
#ifdef SYS_pidfd_open
    long fd = syscall(SYS_pidfd_open, (pid_t)rep.pid, 0);
    pidfd = fd >= 0 ? (int)fd : -1;
#endif
    if ((err = check_child(rep.pid, pidfd)) != 0) {
        /* Not ours (CLONE_PARENT did not do what it should): we could
         * neither reap nor watch it. */
        if (pidfd >= 0)
            close_fd(pidfd);
        return err == -ECHILD ? -ECHILD : err;
    }
    out->pid = rep.pid;
    out->pidfd = pidfd;
    return 0;
}

int br_template_close(br_template_t *t, int64_t grace_ns)
{
    if (t->sock < 0 && t->proc.pid <= 0)
        return 0; /* never started, or closed already */
    if (t->sock >= 0) {
        close_fd(t->sock);
        t->sock = -1;
        (void)pthread_mutex_destroy(&t->lock);
    }
    t->dead = 1;
    int killed = 0, r = 0;
    if (t->proc.pid > 0) {
        r = br_proc_wait(&t->proc, grace_ns < 0 ? 0 : grace_ns);
        while (r == -EINTR)
            r = br_proc_wait(&t->proc, 0);
        if (r == 0) {
            killed = 1;
            (void)br_proc_kill(&t->proc, SIGKILL);
            do
                r = br_proc_wait(&t->proc, -1);
            while (r == -EINTR);
        }
        br_proc_close(&t->proc);
    }
    if (r < 0)
        return r;
    return killed;
}

/* ------------------------------------------------------------ template side */

static int send_reply(int sock, uint64_t seq, int pid, int err)
{
    reply_t rep = {.seq = seq, .pid = pid, .err = err};
    for (;;) {
        ssize_t n = send(sock, &rep, sizeof rep, MSG_NOSIGNAL);
        if (n == (ssize_t)sizeof rep)
            return 0;
        if (n >= 0)
            return -EPROTO;
        if (errno != EINTR)
            return -errno;
    }
}

int br_template_accept(int sock, br_template_request_t *req)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * BR_TEMPLATE_MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    for (;;) {
        request_t hdr;
        struct iovec iov = {.iov_base = &hdr, .iov_len = sizeof hdr};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                             .msg_controllen = sizeof ctl.buf};
        ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0)
            return -errno; /* -EINTR too: the caller may have signals to run */
        if (n == 0)
            return 0; /* the parent closed its end, or died */

        /* Take every descriptor that came, whatever else is wrong. */
        req->nfds = 0;
        int extra = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                if (req->nfds < BR_TEMPLATE_MAX_FDS)
                    req->fds[req->nfds++] = fd;
                else {
                    close_fd(fd);
                    extra = 1;
                }
            }
        }
        req->seq = n >= (ssize_t)sizeof hdr ? hdr.seq : 0;
        if (n != (ssize_t)sizeof hdr || hdr.magic != REQUEST_MAGIC || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ||
            extra || hdr.nfds != (uint32_t)req->nfds) {
            close_all(req->fds, req->nfds);
            req->nfds = 0;
            int err = send_reply(sock, req->seq, 0, -EPROTO);
            if (err != 0)
                return err == -EPIPE || err == -ECONNRESET ? 0 : err;
            continue;
        }
        return 1;
    }
}

/* Threads of this process, from /proc/self/stat (field 20); 1 when /proc
 * cannot tell. */
static int count_threads(void)
{
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 1;
    ssize_t n;
    do
        n = read(fd, buf, sizeof buf - 1);
    while (n < 0 && errno == EINTR);
    close_fd(fd);
    if (n <= 0)
        return 1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold anything */
    if (p == NULL)
        return 1;
    /* ") S ppid ...": field 3 starts two characters on; skip to field 20 */
    p += 2;
    for (int field = 3; field < 20 && *p != '\0'; p++)
        if (*p == ' ')
            field++;
    long k = strtol(p, NULL, 10);
    return k >= 1 ? (int)k : 1;
}

/* fork() as a raw clone with CLONE_PARENT: the child's parent is ours.
 *
 * glibc's fork() also has the kernel write the child's thread id into the
 * C library's record of the thread (CLONE_CHILD_SETTID), which
 * pthread_kill() aimed at that thread uses. So does this, where the kernel
 * tells that record's address (PR_GET_TID_ADDRESS, the address glibc gave
 * set_tid_address at start-up; it needs CONFIG_CHECKPOINT_RESTORE). Where
 * it does not, the worker's record keeps the template's id, and signalling
 * the worker's main thread from another of its threads with pthread_kill()
 * fails with ESRCH; nothing else in glibc reads it. */
static pid_t clone_parent(void)
{
    uint64_t flags = CLONE_PARENT;
    int *tidp = NULL;
#ifdef PR_GET_TID_ADDRESS
    if (prctl(PR_GET_TID_ADDRESS, (unsigned long)&tidp, 0UL, 0UL, 0UL) != 0)
        tidp = NULL;
#endif
    if (tidp != NULL)
        flags |= CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID;
#ifdef SYS_clone3
    struct {
        uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
    } args;
    memset(&args, 0, sizeof args);
    /* With CLONE_PARENT the child reports its exit with our own exit
     * signal; clone3 insists that exit_signal be 0. */
    args.flags = flags;
    args.child_tid = (uint64_t)(uintptr_t)tidp;
    long r = syscall(SYS_clone3, &args, sizeof args);
    if (r >= 0 || errno != ENOSYS)
        return (pid_t)r;
#endif
    /* No clone3 (before 5.3, or a seccomp filter that hides it). With no
     * stack, clone behaves as fork. The order of its other arguments
     * depends on the architecture: the thread id is asked for only where
     * it is known (flags, stack, parent_tid, child_tid, tls). */
#if defined(__x86_64__) || defined(__aarch64__)
    return (pid_t)syscall(SYS_clone, (unsigned long)flags, 0L, NULL, tidp, 0L);
#elif defined(__s390__) || defined(__CRIS__)
    return (pid_t)syscall(SYS_clone, 0L, (unsigned long)CLONE_PARENT, NULL, NULL, 0L);
#else
    return (pid_t)syscall(SYS_clone, (unsigned long)CLONE_PARENT, 0L, NULL, NULL, 0L);
#endif
}

/* In the new worker: the request's descriptors to 3, 4, ..., the rest of
 * the reserved range (the template's socket, the /dev/null placeholders)
 * closed. 0 or -errno. */
static int place_fds(int sock, br_template_request_t *req)
{
    int top = BR_TEMPLATE_FD + BR_TEMPLATE_MAX_FDS;
    if (sock >= top)
        close_fd(sock); /* a caller that moved it; normally it is 3, below */
    /* Received descriptors sit above the reserved range unless 0-2 were
     * free; move them all above it first so no dup2 below overwrites a
     * source not yet placed. */
    for (int i = 0; i < req->nfds; i++) {
        if (req->fds[i] >= top)
            continue;
        int fd = fcntl(req->fds[i], F_DUPFD_CLOEXEC, top);
        if (fd < 0)
            return -errno;
        close_fd(req->fds[i]);
        req->fds[i] = fd;
    }
    for (int i = 0; i < req->nfds; i++) {
        /* dup2 leaves the new number without FD_CLOEXEC */
        if (dup2(req->fds[i], BR_TEMPLATE_FD + i) < 0)
            return -errno;
        close_fd(req->fds[i]);
        req->fds[i] = BR_TEMPLATE_FD + i;
    }
    for (int fd = BR_TEMPLATE_FD + req->nfds; fd < top; fd++)
        close_fd(fd);
    return 0;
}

int br_template_fork_child(int sock, br_template_request_t *req)
{
    int err = 0;
    pid_t pid = -1;
    /* The kernel does not pass the robust futex list on to a child; glibc's
     * fork() registers it again there, and so does this. */
    void *robust = NULL;
    size_t robust_len = 0;
#ifdef SYS_get_robust_list
    if (syscall(SYS_get_robust_list, 0, &robust, &robust_len) != 0)
        robust = NULL;
#endif

    if (count_threads() > 1)
        err = -EDEADLK; /* see the header: a raw clone is for one thread */
    else if ((pid = clone_parent()) < 0)
        err = -errno;
    if (pid == 0) {
        /* the new worker */
#ifdef SYS_set_robust_list
        if (robust != NULL)
            (void)syscall(SYS_set_robust_list, robust, robust_len);
#endif
        if (place_fds(sock, req) != 0)
            _exit(BR_TEMPLATE_EXIT_SETUP);
        return 0;
    }
    close_all(req->fds, req->nfds);
    req->nfds = 0;
    int sent = send_reply(sock, req->seq, err == 0 ? pid : 0, err);
    if (sent != 0 && err == 0) {
        /* The parent will never hear of this worker: it must not live. */
        (void)kill(pid, SIGKILL);
        err = sent;
    }
    return err != 0 ? err : pid;
}
