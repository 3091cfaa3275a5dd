/* The load generator of braid's event-loop benchmark (python -m braid bench loop).
 *
 *     loadgen HOST PORT CONNS SIZE WARMUP_S DURATION_S [CPU]
 *
 * Opens CONNS TCP connections to HOST:PORT and runs request-response on each:
 * send a message of SIZE bytes, wait until all SIZE bytes have come back
 * (compared byte for byte with what was sent), send the next. One thread,
 * epoll, nonblocking sockets, so partial reads and writes are the normal case.
 *
 * It runs WARMUP_S seconds unmeasured, prints {"event": "start"} (the caller
 * reads the server's CPU time then), runs DURATION_S seconds measured, prints
 * one JSON line with the round trips completed in that window, stops sending
 * and waits for its standard input to close before it closes the connections
 * (so the caller can read the server's CPU time again first).
 *
 * Exit status: 0 ok; 1 bad arguments; 2 cannot connect or set up; 3 a wrong
 * echo: a connection closed or reset before its echo was complete, bytes
 * that differ from the ones sent, or a connection that completed no round
 * trip in the whole measured window; 4 a connection that read no echo byte
 * for STALL_S seconds.
 * Errors go to stderr, one line starting with "loadgen:".
 *
 * Pinned to CPU if given; dies with its parent (PR_SET_PDEATHSIG).
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define STALL_S 10.0
#define MAX_CONNS 10000

struct conn {
    int fd;
    int want_out;       /* EPOLLOUT registered: a message is partly written */
    size_t sent;        /* bytes of the current message written */
    size_t rcvd;        /* bytes of its echo read and checked */
    uint64_t seq;       /* messages sent on this connection */
    uint64_t done;      /* round trips completed on it */
    uint64_t done_mark; /* ... when the measured window began */
    double last;        /* when it last read an echo byte */
    unsigned char *msg; /* the current message (its first 8 bytes are seq) */
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static void die(int status, const char *what, int err) {
    if (err)
        fprintf(stderr, "loadgen: %s: %s\n", what, strerror(err));
    else
        fprintf(stderr, "loadgen: %s\n", what);
    exit(status);
}

static void set_events(int ep, struct conn *c, int idx, int want_out) {
    struct epoll_event ev;
    if (c->want_out == want_out)
        return;
    ev.events = EPOLLIN | (want_out ? EPOLLOUT : 0);
    ev.data.u64 = (uint64_t)idx;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die(2, "epoll_ctl", errno);
    c->want_out = want_out;
}

/* Writes what is left of the current message; 0 or a fatal errno. */
static int flush_out(int ep, struct conn *c, int idx, size_t size) {
    while (c->sent < size) {
        ssize_t k = send(c->fd, c->msg + c->sent, size - c->sent, MSG_NOSIGNAL);
        if (k > 0) {
            c->sent += (size_t)k;
        } else if (k < 0 && errno == EINTR) {
            continue;
        } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_events(ep, c, idx, 1);
            return 0;
        } else {
            return k < 0 ? errno : EPIPE;
        }
    }
    set_events(ep, c, idx, 0);
    return 0;
}

static int start_message(int ep, struct conn *c, int idx, size_t size) {
    uint64_t seq = ++c->seq;
    memcpy(c->msg, &seq, size < sizeof seq ? size : sizeof seq);
    c->sent = 0;
    c->rcvd = 0;
    return flush_out(ep, c, idx, size);
}

int main(int argc, char **argv) {
    if (argc != 7 && argc != 8) {
        fprintf(stderr, "usage: loadgen HOST PORT CONNS SIZE WARMUP_S DURATION_S [CPU]\n");
        return 1;
    }
    const char *host = argv[1], *port = argv[2];
    long nconn = strtol(argv[3], NULL, 10);
    long lsize = strtol(argv[4], NULL, 10);
    double warmup = strtod(argv[5], NULL), duration = strtod(argv[6], NULL);
    if (nconn < 1 || nconn > MAX_CONNS || lsize < 1 || warmup < 0 || duration <= 0) {
        fprintf(stderr, "loadgen: bad arguments\n");
        return 1;
    }
    size_t size = (size_t)lsize;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    if (argc == 8) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(argv[7]), &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0)
            die(2, "sched_setaffinity", errno);
    }

    struct addrinfo hints, *ai;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "loadgen: getaddrinfo %s:%s: %s\n", host, port, gai_strerror(gai));
        return 2;
    }

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die(2, "epoll_create1", errno);
    struct conn *conns = calloc((size_t)nconn, sizeof *conns);
    size_t rsize = size < 262144 ? size : 262144;
    unsigned char *rbuf = malloc(rsize);
    if (!conns || !rbuf)
        die(2, "out of memory", 0);

    for (long i = 0; i < nconn; i++) {
        struct conn *c = &conns[i];
        c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
            die(2, "socket", errno);
        /* A blocking connect, one at a time, keeps this simple; it is not timed. */
        if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0)
            die(2, "connect", errno);
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int fl = fcntl(c->fd, F_GETFL);
        if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) < 0)
            die(2, "fcntl O_NONBLOCK", errno);
        c->msg = malloc(size);
        if (!c->msg)
            die(2, "out of memory", 0);
        for (size_t j = 0; j < size; j++)
            c->msg[j] = (unsigned char)((j * 131 + (size_t)i * 7 + 1) & 0xff);
        struct epoll_event ev;
        ev.events = EPOLLIN;
        ev.data.u64 = (uint64_t)i;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die(2, "epoll_ctl", errno);
    }
    freeaddrinfo(ai);

    double t0 = now(), t_mark = t0 + warmup, t_end = 0, last_check = t0, cpu_mark = 0;
    uint64_t done = 0, done_mark = 0;
    int measuring = 0;
    char msg[256];

    for (long i = 0; i < nconn; i++) {
        conns[i].last = t0;
        int err = start_message(ep, &conns[i], (int)i, size);
        if (err)
            die(3, "send", err);
    }

    for (;;) {
        double t = now();
        if (!measuring && t >= t_mark) {
            measuring = 1;
            done_mark = done;
            for (long i = 0; i < nconn; i++)
                conns[i].done_mark = conns[i].done;
            cpu_mark = cpu_seconds();
            t_mark = t;
            t_end = t + duration;
            printf("{\"event\": \"start\"}\n");
            fflush(stdout);
        } else if (measuring && t >= t_end) {
            double cpu = cpu_seconds() - cpu_mark;
            for (long i = 0; i < nconn; i++) {
                if (conns[i].done == conns[i].done_mark) {
                    snprintf(msg, sizeof msg,
                             "connection %ld completed no round trip in the measured window "
                             "(%llu in all, %llu done in all)", i,
                             (unsigned long long)conns[i].done, (unsigned long long)done);
                    die(3, msg, 0);
                }
            }
            printf("{\"event\": \"done\", \"round_trips\": %llu, \"seconds\": %.6f, "
                   "\"client_cpu_s\": %.6f, \"warmup_round_trips\": %llu, "
                   "\"connections\": %ld, \"size\": %zu}\n",
                   (unsigned long long)(done - done_mark), t - t_mark, cpu,
                   (unsigned long long)done_mark, nconn, size);
            fflush(stdout);
            break;
        }
        if (t - last_check > 0.1) {
            last_check = t;
            for (long i = 0; i < nconn; i++) {
                if (t - conns[i].last > STALL_S) {
                    snprintf(msg, sizeof msg,
                             "connection %ld read no echo byte for %.0f s (%zu of %zu bytes of "
                             "message %llu; %llu round trips done in all)",
                             i, STALL_S, conns[i].rcvd, size, (unsigned long long)conns[i].seq,
                             (unsigned long long)done);
                    die(4, msg, 0);
                }
            }
        }
        double next = measuring ? t_end : t_mark;
        int timeout_ms = (int)((next - t) * 1000.0) + 1;
        if (timeout_ms > 1000)
            timeout_ms = 1000;

        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die(2, "epoll_wait", errno);
        }
        for (int e = 0; e < n; e++) {
            int idx = (int)evs[e].data.u64;
            struct conn *c = &conns[idx];
            uint32_t what = evs[e].events;
            if (what & EPOLLOUT) {
                int err = flush_out(ep, c, idx, size);
                if (err)
                    die(3, "send", err);
            }
            if (!(what & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                continue;
            if (c->rcvd == c->sent) {
                /* Readable with no echo outstanding: extra bytes, a close or an error. */
                ssize_t k = recv(c->fd, rbuf, 1, 0);
                if (k > 0) {
                    snprintf(msg, sizeof msg, "connection %d: more bytes than were sent", idx);
                    die(3, msg, 0);
                }
                if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                    continue;
                snprintf(msg, sizeof msg, "connection %d %s after %zu of %zu echo bytes", idx,
                         k == 0 ? "closed by the server" : "failed", c->rcvd, size);
                die(3, msg, k == 0 ? 0 : errno);
            }
            while (c->rcvd < c->sent) {
                size_t want = c->sent - c->rcvd;
                if (want > rsize)
                    want = rsize;
                ssize_t k = recv(c->fd, rbuf, want, 0);
                if (k > 0) {
                    if (memcmp(rbuf, c->msg + c->rcvd, (size_t)k) != 0) {
                        snprintf(msg, sizeof msg,
                                 "connection %d: echo differs from what was sent "
                                 "(message %llu, bytes %zu..%zu)",
                                 idx, (unsigned long long)c->seq, c->rcvd, c->rcvd + (size_t)k);
                        die(3, msg, 0);
                    }
                    c->rcvd += (size_t)k;
                    c->last = t;
                } else if (k < 0 && errno == EINTR) {
                    continue;
                } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                    break;
                } else {
                    snprintf(msg, sizeof msg, "connection %d %s after %zu of %zu echo bytes",
                             idx, k == 0 ? "closed by the server" : "failed", c->rcvd, size);
                    die(3, msg, k == 0 ? 0 : errno);
                }
            }
            if (c->rcvd == size) {
                done++;
                c->done++;
                int err = start_message(ep, c, idx, size);
                if (err)
                    die(3, "send", err);
            }
        }
    }

    /* Measured: send nothing more, keep the connections open until the caller
     * has read the server's CPU time and closes our standard input. */
    char b[256];
    for (;;) {
        ssize_t k = read(0, b, sizeof b);
        if (k > 0 || (k < 0 && errno == EINTR))
            continue;
        break;
    }
    return 0;
}
