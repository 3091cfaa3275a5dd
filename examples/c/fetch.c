/*
 * fetch.c — the tutorial's third experiment, "Fetching Web Pages with
 * asyncio", in C on braid.h: N HTTP GETs in flight at once on one thread,
 * a br_loop_t whose connections are br_stream_t; every page is checked.
 *
 * The server runs on the same loop: on 127.0.0.1 (a port the kernel picks)
 * it answers GET /page/<i> with a page naming i, after <latency> ms (a
 * br_timer_t per request: the network's time and the remote host's). So
 * one thread holds both ends of every connection, 2N sockets, and waits
 * out N latencies at once; a sequential client would wait N times over.
 * Two fds per connection: N in flight is capped at what RLIMIT_NOFILE
 * allows, and the GETs past the cap wait for a free slot (as aiohttp's
 * connection limit makes the tutorial's requests wait).
 *
 * usage: fetch [N [latency_ms]]   (defaults 1000 GETs, 20 ms)
 * Prints what it ran, then "fetch: OK"; exits 1 on any error.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <braid.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define PAGE_BYTES 2048
#define RESP_MAX 4096

static unsigned npages = 1000, latency_ms = 20;
static struct sockaddr_in addr;
static br_loop_t loop;
static br_io_t listener;

static void die(const char *what, int err)
{
    fprintf(stderr, "fetch: %s: %s\n", what, br_strerror(err));
    exit(1);
}

/* The server's response for page i, a header and PAGE_BYTES of HTML naming
 * it, into out (RESP_MAX bytes); its length. A client compares what it got
 * with it, byte for byte. */
static size_t response(unsigned i, char *out)
{
    int hl = snprintf(out, 128, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", PAGE_BYTES);
    char *body = out + hl;
    int n = snprintf(body, PAGE_BYTES, "<!doctype html><title>page %u</title><p>page %u</p><p>", i, i);
    for (int k = n; k < PAGE_BYTES - 5; k++)
        body[k] = "lorem ipsum "[(k - n) % 12];
    memcpy(body + PAGE_BYTES - 5, "</p>\n", 5);
    return (size_t)hl + PAGE_BYTES;
}

/* ---- the server side of each connection */

typedef struct sconn_s {
    br_stream_t s;
    br_timer_t delay;
    char req[512];
    size_t len;
    unsigned page;
    int open; /* handles whose close callback has not run */
} sconn_t;

static void sconn_closed(sconn_t *c) { if (--c->open == 0) free(c); }
static void stream_closed(br_handle_t *h) { sconn_closed(h->data); }
static void timer_closed(br_handle_t *h) { sconn_closed(h->data); }

static void sconn_close(sconn_t *c)
{
    if (br_close(&c->s.handle, stream_closed) == 0)
        br_close(&c->delay.handle, timer_closed);
}

static void on_delay(br_timer_t *t)
{
    sconn_t *c = t->handle.data;
    char resp[RESP_MAX];
    size_t len = response(c->page, resp);
    /* Queued if the socket is full; the FIN follows the last byte. The
     * connection closes once the client has read it and closed its end. */
    if (br_stream_write(&c->s, resp, len) != 0 || br_stream_shutdown(&c->s) != 0)
        sconn_close(c);
}

static void on_request(br_stream_t *s, const char *buf, ssize_t n)
{
    sconn_t *c = s->handle.data;
    if (n <= 0 || c->len + (size_t)n >= sizeof c->req) { /* end, error, or not a request of ours */
        sconn_close(c);
        return;
    }
    int had = memmem(c->req, c->len, "\r\n\r\n", 4) != NULL;
    memcpy(c->req + c->len, buf, (size_t)n);
    c->len += (size_t)n;
    c->req[c->len] = '\0';
    if (!had && memmem(c->req, c->len, "\r\n\r\n", 4) != NULL &&
        (sscanf(c->req, "GET /page/%u ", &c->page) != 1 ||
         br_timer_start(&c->delay, on_delay, (int64_t)latency_ms * 1000000, 0) != 0))
        sconn_close(c);
}

static void on_accept(br_io_t *io, unsigned revents)
{
    int fd;
    while ((fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        sconn_t *c = calloc(1, sizeof *c);
        int err = c == NULL ? -ENOMEM : br_stream_init(&loop, &c->s, fd);
        if (err != 0)
            die("server", err);
        br_timer_init(&loop, &c->delay);
        c->s.handle.data = c->delay.handle.data = c;
        c->open = 2;
        if (br_stream_read_start(&c->s, on_request, 1024) != 0)
            sconn_close(c);
    }
}

static void listener_closed(br_handle_t *h) { close(listener.fd); }

/* ---- the client side: a connect watcher, then a stream, per page */

typedef struct client_s {
    br_io_t connecting;
    br_stream_t s;
    unsigned index;
    size_t len;
    int ok;
    char resp[RESP_MAX];
} client_t;

static client_t *clients;
static unsigned next_page, in_flight, done, max_in_flight;
static int64_t t_end;

static void start_next(void);

static void finished(void)
{
    in_flight--;
    if (++done == npages) { /* the server closes: the loop ends with its last connection */
        t_end = br_now_ns();
        br_close(&listener.handle, listener_closed);
    }
    start_next();
}

static void client_closed(br_handle_t *h) { finished(); }

static void on_response(br_stream_t *s, const char *buf, ssize_t n)
{
    client_t *c = s->handle.data;
    char want[RESP_MAX];
    if (n > 0 && c->len + (size_t)n <= RESP_MAX) {
        memcpy(c->resp + c->len, buf, (size_t)n);
        c->len += (size_t)n;
        return;
    }
    /* n == 0: the server closed its end, the response is all in. */
    c->ok = n == 0 && c->len == response(c->index, want) && memcmp(c->resp, want, c->len) == 0;
    br_close(&s->handle, client_closed);
}

static void connected(client_t *c, int fd)
{
    char req[128];
    int rl = snprintf(req, sizeof req, "GET /page/%u HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                      c->index);
    int err = br_stream_init(&loop, &c->s, fd);
    if (err != 0)
        die("client", err);
    c->s.handle.data = c;
    if (br_stream_read_start(&c->s, on_response, 4096) != 0 || br_stream_write(&c->s, req, (size_t)rl) != 0)
        br_close(&c->s.handle, client_closed);
}

/* A non-blocking connect is done when the socket turns writable; SO_ERROR
 * says how it went. */
static void on_connect(br_io_t *io, unsigned revents)
{
    client_t *c = io->handle.data;
    int fd = io->fd, soerr = 0;
    socklen_t sl = sizeof soerr;
    br_close(&io->handle, NULL); /* stops watching now: the stream takes the fd over */
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) {
        close(fd);
        finished();
    } else {
        connected(c, fd);
    }
}

static void start_next(void)
{
    while (next_page < npages && in_flight < max_in_flight) {
        client_t *c = &clients[next_page];
        c->index = next_page++;
        in_flight++;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
            connected(c, fd);
        } else if (fd >= 0 && errno == EINPROGRESS) {
            br_io_init(&loop, &c->connecting, fd);
            c->connecting.handle.data = c;
            if (br_io_start(&c->connecting, BR_WRITABLE, on_connect) != 0)
                on_connect(&c->connecting, 0);
        } else {
            if (fd >= 0)
                close(fd);
            finished();
        }
    }
}

int main(int argc, char **argv)
{
    npages = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : npages;
    latency_ms = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : latency_ms;
    /* As many fds as allowed: two per connection, and a few to spare. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    clients = calloc(npages, sizeof *clients);
    if (npages == 0 || getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < 128 || clients == NULL) {
        fprintf(stderr, "usage: fetch [N [latency_ms]] (N > 0; 128 fds or more)\n");
        return 2;
    }
    max_in_flight = rl.rlim_cur / 2 - 32 < npages ? (unsigned)(rl.rlim_cur / 2 - 32) : npages;

    socklen_t alen = sizeof addr;
    addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), err;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 4096) != 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &alen) != 0)
        die("server: listen", -errno);
    if ((err = br_loop_init(&loop)) != 0 || (err = br_io_init(&loop, &listener, lfd)) != 0 ||
        (err = br_io_start(&listener, BR_READABLE, on_accept)) != 0)
        die("server", err);
    printf("fetch: %u GETs of %d-byte pages from 127.0.0.1:%u, %u ms latency each\n", npages, PAGE_BYTES,
           ntohs(addr.sin_port), latency_ms);

    int64_t t0 = br_now_ns();
    start_next();
    if ((err = br_loop_run(&loop, BR_RUN_DEFAULT)) < 0 || (err = br_loop_close(&loop)) != 0)
        die("loop", err);
    double t_loop = (t_end - t0) / 1e9, t_seq = npages * latency_ms / 1e3;
    printf("  sequential               at least %.3f s (%u x %u ms of latency)\n", t_seq, npages, latency_ms);
    printf("  br_loop_t (%u at once)   %.3f s   %.0fx\n", max_in_flight, t_loop, t_seq / t_loop);

    unsigned ok = 0;
    for (unsigned i = 0; i < npages; i++)
        ok += (unsigned)clients[i].ok;
    free(clients);
    if (ok != npages) {
        printf("fetch: FAILED (%u of %u pages as sent)\n", ok, npages);
        return 1;
    }
    printf("fetch: OK (%u responses, every page as sent)\n", npages);
    return 0;
}
