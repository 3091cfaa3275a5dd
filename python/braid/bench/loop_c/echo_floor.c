/* The floor of braid's event-loop benchmark (python -m braid bench loop): the
 * least a server can do per echoed message on Linux, so the event loops'
 * server CPU per round trip can be compared with it.
 *
 *     echo_floor [CPU]
 *
 * Listens on an ephemeral port of 127.0.0.1 and prints "port N" on stdout.
 * One thread, epoll, level-triggered, nonblocking sockets with TCP_NODELAY:
 * a readable connection is read into its own buffer (256 KiB, what asyncio
 * reads at most at once) and the bytes are written straight back. If the
 * write is partial (EAGAIN), the rest stays in the buffer, the connection
 * waits for EPOLLOUT instead of EPOLLIN until it is all written, then reads
 * again. A connection that ends or fails is closed; the server runs until it
 * is killed, and dies with its parent (PR_SET_PDEATHSIG). Pinned to CPU if
 * given.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
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
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (256 * 1024)

struct conn {
    int fd;
    size_t len; /* bytes in buf */
    size_t off; /* bytes of buf already written back */
    unsigned char buf[BUF_SIZE];
};

static void die(const char *what) {
    fprintf(stderr, "echo_floor: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

static int watch(int ep, int op, struct conn *c, uint32_t events) {
    struct epoll_event ev;
    ev.events = events;
    ev.data.ptr = c;
    return epoll_ctl(ep, op, c->fd, &ev);
}

/* Writes the rest of c's buffer: 1 all written, 0 EAGAIN, -1 the connection failed. */
static int write_back(struct conn *c) {
    while (c->off < c->len) {
        ssize_t k = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (k > 0)
            c->off += (size_t)k;
        else if (k < 0 && errno == EINTR)
            continue;
        else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        else
            return -1;
    }
    c->off = c->len = 0;
    return 1;
}

static void on_conn(int ep, struct conn *c, uint32_t events) {
    if (c->len) { /* waiting to write the rest */
        int r = write_back(c);
        if (r < 0)
            drop(ep, c);
        else if (r > 0 && watch(ep, EPOLL_CTL_MOD, c, EPOLLIN) < 0)
            die("epoll_ctl");
        return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    ssize_t k = recv(c->fd, c->buf, BUF_SIZE, 0);
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (k <= 0) {
        drop(ep, c);
        return;
    }
    c->len = (size_t)k;
    c->off = 0;
    int r = write_back(c);
    if (r < 0)
        drop(ep, c);
    else if (r == 0 && watch(ep, EPOLL_CTL_MOD, c, EPOLLOUT) < 0)
        die("epoll_ctl");
}

int main(int argc, char **argv) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    if (argc > 1) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(argv[1]), &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0)
            die("sched_setaffinity");
    }

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(lfd, 1024) < 0)
        die("listen");
    socklen_t alen = sizeof addr;
    if (getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0)
        die("getsockname");

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event lev;
    lev.events = EPOLLIN;
    lev.data.ptr = NULL; /* NULL: the listening socket */
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0)
        die("epoll_ctl");

    printf("port %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c) {
                on_conn(ep, c, evs[i].events);
                continue;
            }
            for (;;) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) {
                    if (errno == EINTR || errno == ECONNABORTED)
                        continue;
                    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EMFILE ||
                        errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                        break;
                    die("accept4");
                }
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                c = malloc(sizeof *c);
                if (!c) {
                    close(fd);
                    break;
                }
                c->fd = fd;
                c->len = c->off = 0;
                if (watch(ep, EPOLL_CTL_ADD, c, EPOLLIN) < 0)
                    die("epoll_ctl");
            }
        }
    }
}
