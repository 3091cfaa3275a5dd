/* The client of the idle-connections case of braid's event-loop benchmark
 * (python -m braid bench loop --cases idle).
 *
 *     idleclient HOST PORT CONNS WINDOW PROGRESS_FD STEP
 *
 * Opens CONNS TCP connections to HOST:PORT, one after the other, and sends one
 * byte ("x") on each as soon as it is connected; then holds them all open,
 * idle, until its standard input closes, and exits (the kernel closes them).
 *
 * The server writes one byte to PROGRESS_FD (a pipe) for every STEP bytes it
 * has received. The client never has more than WINDOW connections that the
 * server has not yet read from: a burst larger than the listen backlog would
 * overflow the kernel's accept queue, whose dropped SYNs come back only after
 * the one-second retransmission timer -- the figure would then measure the
 * timer, not the server. With WINDOW well under the backlog the server always
 * has connections waiting and never waits for the client.
 *
 * Blocking sockets on purpose: on loopback connect() returns once the
 * handshake is done (the accept queue has room, by the window), so a
 * connection costs a few system calls and the client stays far faster than
 * any server it measures.
 *
 * Every PER_SOURCE connections come from another loopback address
 * (127.0.0.2, 127.0.0.3, ...; bound with IP_BIND_ADDRESS_NO_PORT so the port
 * is still picked at connect()). With one source address the kernel hands
 * connect() the even ports of ip_local_port_range first (about 14,000 of the
 * default range); past them every connect() scans them all before it tries
 * an odd one, and the client, not the server, would set the pace of the last
 * thousands.
 *
 * Prints one JSON line when all are open: {"event": "open", "conns": N,
 * "seconds": S} (S: from the first connect() to the last send()).
 *
 * Exit status: 0 ok; 1 bad arguments; 2 cannot raise RLIMIT_NOFILE to CONNS
 * plus a margin; 3 a socket, connect or send failed; 4 the progress pipe
 * closed (the server went away). Errors go to stderr, one line starting with
 * "idleclient:". Dies with its parent (PR_SET_PDEATHSIG).
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FD_MARGIN 64
#define PER_SOURCE 5000

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long arg_long(const char *s, long min)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < min) {
        fprintf(stderr, "idleclient: bad number %s\n", s);
        exit(1);
    }
    return v;
}

/* Reads what the server has said so far: each byte is STEP more bytes received.
 * Blocks until at least one byte has come. */
static long read_progress(int fd)
{
    char buf[256];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0) {
            return n;
        }
        if (n == 0) {
            fprintf(stderr, "idleclient: the server's progress pipe closed\n");
            exit(4);
        }
        if (errno != EINTR) {
            fprintf(stderr, "idleclient: read progress: %s\n", strerror(errno));
            exit(4);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: idleclient HOST PORT CONNS WINDOW PROGRESS_FD STEP\n");
        return 1;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "idleclient: bad IPv4 address %s\n", argv[1]);
        return 1;
    }
    addr.sin_port = htons((unsigned short)arg_long(argv[2], 1));
    long conns = arg_long(argv[3], 1);
    long window = arg_long(argv[4], 1);
    int progress = (int)arg_long(argv[5], 0);
    long step = arg_long(argv[6], 1);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        fprintf(stderr, "idleclient: getrlimit: %s\n", strerror(errno));
        return 2;
    }
    rlim_t need = (rlim_t)conns + FD_MARGIN;
    if (rl.rlim_cur < need) {
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
            fprintf(stderr, "idleclient: RLIMIT_NOFILE hard limit %llu is below the %llu "
                    "descriptors %ld connections need\n", (unsigned long long)rl.rlim_max,
                    (unsigned long long)need, conns);
            return 2;
        }
        rl.rlim_cur = need;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            fprintf(stderr, "idleclient: setrlimit(RLIMIT_NOFILE, %llu): %s\n",
                    (unsigned long long)need, strerror(errno));
            return 2;
        }
    }

    int *fds = calloc((size_t)conns, sizeof *fds);
    if (fds == NULL) {
        fprintf(stderr, "idleclient: out of memory\n");
        return 2;
    }
    long acked = 0;
    double t0 = now();
    for (long i = 0; i < conns; i++) {
        while (i - acked >= window) {
            acked += read_progress(progress) * step;
        }
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            fprintf(stderr, "idleclient: socket (connection %ld): %s\n", i, strerror(errno));
            return 3;
        }
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(i / PER_SOURCE));
        int one = 1;
        if (setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) != 0
            || bind(fd, (struct sockaddr *)&src, sizeof src) != 0) {
            fprintf(stderr, "idleclient: bind to a source address (connection %ld): %s\n", i,
                    strerror(errno));
            return 3;
        }
        int rc;
        do {
            rc = connect(fd, (struct sockaddr *)&addr, sizeof addr);
        } while (rc != 0 && errno == EINTR);
        if (rc != 0) {
            fprintf(stderr, "idleclient: connect (connection %ld): %s\n", i, strerror(errno));
            return 3;
        }
        ssize_t n;
        do {
            n = send(fd, "x", 1, 0);
        } while (n < 0 && errno == EINTR);
        if (n != 1) {
            fprintf(stderr, "idleclient: send (connection %ld): %s\n", i,
                    n < 0 ? strerror(errno) : "nothing sent");
            return 3;
        }
        fds[i] = fd;
    }
    double t1 = now();
    printf("{\"event\": \"open\", \"conns\": %ld, \"seconds\": %.6f}\n", conns, t1 - t0);
    fflush(stdout);

    /* Hold the connections until the caller closes our stdin. */
    char c;
    for (;;) {
        ssize_t n = read(STDIN_FILENO, &c, 1);
        if (n == 0 || (n < 0 && errno != EINTR)) {
            break;
        }
    }
    free(fds);
    return 0;
}
