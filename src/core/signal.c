/*
 * signal.c — br_signal_t: signal delivery through a signalfd.
 *
 * A signalfd reports only signals that are blocked, so start blocks the
 * signal in the calling thread's mask and stop restores it. The mask is per
 * thread, while a process-directed signal (kill, Ctrl-C) goes to any thread
 * that does not block it: the embedding program has to block the signal in
 * its other threads, as braid.h says. Signals raised in the loop's own
 * thread (raise, pthread_kill) always arrive here.
 *
 *                start(signum)                stop / br_close
 *   INACTIVE ---------------------> ACTIVE -------------------> INACTIVE
 *   signum 0    block in mask,      signalfd    drain, unblock   signum 0
 *               open signalfd,      readable    (see below),
 *               watch it            -> cb       close signalfd
 *
 * Two handles of one loop may watch the same signal (each gets its own
 * signalfd; whichever reads first takes an instance). Only the first start
 * finds the signal unblocked, so only it is charged with unblocking it. If
 * it stops first, it hands that charge to another handle still watching the
 * signal; the last one to stop unblocks it.
 *
 * Before unblocking, stop reads and drops the instances that arrived and
 * were not delivered yet: unblocked, they would take the default action,
 * which for most signals kills the process. An instance that arrives in the
 * instant between that read and the unblock still can; there is no way to
 * close that window without installing a handler of our own.
 */
#include "loop_internal.h"

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

static void signal_io_cb(br_io_t *io, unsigned revents)
{
    br_signal_t *sig = br__container_of(io, br_signal_t, io_);
    struct signalfd_siginfo si;

    /* One instance per callback: level-triggered polling brings us back for
     * the next, and the callback may stop or restart the handle meanwhile
     * (standard signals coalesce in the kernel anyway). */
    for (;;) {
        ssize_t n = read(io->fd, &si, sizeof si);
        if (n == (ssize_t)sizeof si)
            break;
        if (n < 0 && errno == EINTR)
            continue;
        return; /* EAGAIN: another watcher of the signal took it */
    }
    sig->cb_(sig, (int)si.ssi_signo);
}

int br_signal_init(br_loop_t *loop, br_signal_t *sig)
{
    br__handle_init(loop, &sig->handle, BR_HANDLE_SIGNAL);
    sig->signum = 0;
    sig->cb_ = NULL;
    sig->unblock_on_stop_ = 0;
    br__io_init_internal(loop, &sig->io_, -1);
    return 0;
}

static int pthread_mask(int how, int signum, sigset_t *old)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signum);
    int err = pthread_sigmask(how, &set, old);
    return -err;
}

int br_signal_start(br_signal_t *sig, br_signal_cb cb, int signum)
{
    if (cb == NULL || signum <= 0 || signum >= _NSIG || signum == SIGKILL || signum == SIGSTOP)
        return -EINVAL;
    if (sig->handle.flags_ & (BR__CLOSING | BR__CLOSED))
        return -EBUSY;
    if (sig->signum == signum) {
        sig->cb_ = cb;
        return 0;
    }
    br_signal_stop(sig);

    sigset_t old;
    int r = pthread_mask(SIG_BLOCK, signum, &old);
    if (r != 0)
        return r;
    int unblock = !sigismember(&old, signum);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signum);
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0) {
        r = -errno;
        goto fail;
    }
    br__io_init_internal(sig->handle.loop, &sig->io_, fd);
    r = br_io_start(&sig->io_, BR_READABLE, signal_io_cb);
    if (r != 0) {
        int c = close(fd);
        (void)c;
        sig->io_.fd = -1;
        goto fail;
    }
    sig->signum = signum;
    sig->cb_ = cb;
    sig->unblock_on_stop_ = unblock;
    br__handle_start(&sig->handle);
    return 0;

fail:
    if (unblock)
        (void)pthread_mask(SIG_UNBLOCK, signum, NULL);
    return r;
}

/* Another active handle of this loop watching the same signal, or NULL. */
static br_signal_t *other_watcher(br_signal_t *sig)
{
    for (br_handle_t *h = sig->handle.loop->handles_; h != NULL; h = h->next_) {
        if (h->type != BR_HANDLE_SIGNAL || h == &sig->handle)
            continue;
        br_signal_t *o = (br_signal_t *)h;
        if (o->signum == sig->signum)
            return o;
    }
    return NULL;
}

int br_signal_stop(br_signal_t *sig)
{
    if (sig->signum == 0)
        return 0;

    br_io_stop(&sig->io_);
    br_signal_t *other = other_watcher(sig);
    if (other != NULL) {
        /* It keeps the signal blocked and unblocks it in its turn. */
        other->unblock_on_stop_ |= sig->unblock_on_stop_;
    } else if (sig->unblock_on_stop_) {
        struct signalfd_siginfo si;
        while (read(sig->io_.fd, &si, sizeof si) == (ssize_t)sizeof si)
            ;
        (void)pthread_mask(SIG_UNBLOCK, sig->signum, NULL);
    }
    int c = close(sig->io_.fd);
    (void)c;
    sig->io_.fd = -1;
    sig->signum = 0;
    sig->unblock_on_stop_ = 0;
    br__handle_stop(&sig->handle);
    return 0;
}

void br__signal_close(br_signal_t *sig) { br_signal_stop(sig); }
