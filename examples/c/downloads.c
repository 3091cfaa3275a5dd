/*
 * downloads.c — the tutorial's first experiment, "Downloading Multiple
 * Files", in C on braid.h: N files fetched over HTTP with blocking sockets,
 * one after another, then on a br_threadpool_t; every file is checked by
 * size and checksum. A download spends nearly all its time waiting, which
 * is why threads help (and why the tutorial picks them).
 *
 * The server stands in for the tutorial's remote hosts: on 127.0.0.1 (a
 * port the kernel picks) it answers GET /file/<i> with <size> bytes that
 * depend only on i, after <latency> ms -- the network's time and the remote
 * host's in one figure. Its accept thread hands each connection to a
 * br_threadpool_t of its own, so responses overlap as a real server's do.
 *
 * usage: downloads [files [size_kib [latency_ms [threads]]]]
 *        (defaults 16 files of 256 KiB, 50 ms, 8 threads)
 * Prints a line per variant, then "downloads: OK"; exits 1 on any error.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <braid.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static unsigned nfiles = 16, size_kib = 256, latency_ms = 50, nthreads = 8;

static void die(const char *what, int err)
{
    fprintf(stderr, "downloads: %s: %s\n", what, br_strerror(err));
    exit(1);
}

static uint64_t fnv1a(uint64_t h, unsigned char byte)
{
    return (h ^ byte) * 0x100000001b3u;
}

/* File i: n bytes of a xorshift stream seeded by i (two files differ),
 * written to out unless it is NULL. Returns their FNV-1a checksum. */
static uint64_t file_bytes(unsigned i, unsigned char *out, size_t n)
{
    uint64_t x = 0x9e3779b97f4a7c15u * (i + 1), h = 0xcbf29ce484222325u;
    for (size_t k = 0; k < n; k++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        if (out != NULL)
            out[k] = (unsigned char)x;
        h = fnv1a(h, (unsigned char)x);
    }
    return h;
}

static int send_all(int fd, const void *buf, size_t len)
{
    for (size_t off = 0; off < len;) {
        ssize_t w = send(fd, (const char *)buf + off, len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        off += (size_t)w;
    }
    return 0;
}

/* ---- the server: an accept thread, a br_threadpool_t for the responses */

typedef struct conn_s {
    br_work_t work;
    int fd;
} conn_t;

static int listen_fd;
static br_threadpool_t server_pool;

static void serve(br_work_t *w)
{
    conn_t *c = w->data;
    char req[1024];
    size_t len = 0;
    unsigned i;
    while (len < sizeof req - 1 && memmem(req, len, "\r\n\r\n", 4) == NULL) {
        ssize_t n = recv(c->fd, req + len, sizeof req - 1 - len, 0);
        if (n <= 0)
            return;
        len += (size_t)n;
    }
    req[len] = '\0';
    if (sscanf(req, "GET /file/%u ", &i) != 1)
        return; /* not ours: the connection just closes */
    struct timespec ts = {latency_ms / 1000, (latency_ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    size_t size = (size_t)size_kib << 10;
    char *resp = malloc(size + 64);
    if (resp == NULL)
        return;
    int hl = snprintf(resp, 64, "HTTP/1.0 200 OK\r\nContent-Length: %zu\r\n\r\n", size);
    file_bytes(i, (unsigned char *)resp + hl, size);
    send_all(c->fd, resp, (size_t)hl + size);
    free(resp);
}

static void served(br_work_t *w, int status)
{
    conn_t *c = w->data;
    close(c->fd);
    free(c);
}

static void *accept_loop(void *arg)
{
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0 && errno == EINTR)
            continue;
        if (fd < 0 && errno != EINVAL)
            die("server: accept", -errno);
        if (fd < 0)
            return NULL; /* EINVAL: the listener was shut down, the run is over */
        conn_t *c = malloc(sizeof *c);
        if (c == NULL)
            die("server", -ENOMEM);
        *c = (conn_t){.work = {.work = serve, .done = served, .data = c}, .fd = fd};
        int err = br_threadpool_submit(&server_pool, &c->work);
        if (err != 0)
            die("server: submit", err);
    }
}

/* ---- the client: one blocking GET per file */

typedef struct download_s {
    br_work_t work;
    unsigned index;
    int ok;
} download_t;

static struct sockaddr_in server_addr;

static void download_file(br_work_t *w)
{
    download_t *d = w->data;
    size_t size = (size_t)size_kib << 10, cap = size + 1024, len = 0, clen = 0;
    char *buf = malloc(cap + 1), *body, req[64];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval limit = {.tv_sec = 10}; /* a server gone wrong fails the run, never hangs it */
    d->ok = 0;
    if (buf == NULL || fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit) != 0 ||
        connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) != 0)
        goto out;
    int rl = snprintf(req, sizeof req, "GET /file/%u HTTP/1.0\r\n\r\n", d->index);
    if (send_all(fd, req, (size_t)rl) != 0)
        goto out;
    while (len < cap) { /* HTTP/1.0: the response ends where the connection does */
        ssize_t n = recv(fd, buf + len, cap - len, 0);
        if (n == 0)
            break;
        if (n < 0 && errno != EINTR)
            goto out;
        len += n > 0 ? (size_t)n : 0;
    }
    buf[len] = '\0';
    body = memmem(buf, len, "\r\n\r\n", 4);
    if (body == NULL || sscanf(buf, "HTTP/1.0 200 OK\r\nContent-Length: %zu", &clen) != 1)
        goto out;
    body += 4;
    uint64_t sum = 0xcbf29ce484222325u;
    for (char *p = body; p < buf + len; p++)
        sum = fnv1a(sum, (unsigned char)*p);
    d->ok = clen == size && (size_t)(buf + len - body) == size && sum == file_bytes(d->index, NULL, size);
out:
    if (fd >= 0)
        close(fd);
    free(buf);
}

int main(int argc, char **argv)
{
    unsigned *opts[] = {&nfiles, &size_kib, &latency_ms, &nthreads};
    for (int a = 1; a < argc && a <= 4; a++)
        *opts[a - 1] = (unsigned)strtoul(argv[a], NULL, 10);
    if (nfiles == 0 || size_kib == 0 || nthreads == 0) {
        fprintf(stderr, "usage: downloads [files [size_kib [latency_ms [threads]]]]\n");
        return 2;
    }
    download_t *seq = calloc(nfiles, sizeof *seq), *par = calloc(nfiles, sizeof *par);
    if (seq == NULL || par == NULL)
        die("setup", -ENOMEM);

    /* The server on 127.0.0.1, port 0: the kernel picks a free one. */
    socklen_t alen = sizeof server_addr;
    server_addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&server_addr, sizeof server_addr) != 0 ||
        listen(listen_fd, 128) != 0 || getsockname(listen_fd, (struct sockaddr *)&server_addr, &alen) != 0)
        die("server: listen", -errno);
    br_threadpool_options_t so = {.max_threads = 64, .name_prefix = "server"};
    int err = br_threadpool_init(&server_pool, &so);
    if (err != 0)
        die("server: pool", err);
    pthread_t acceptor;
    if ((err = pthread_create(&acceptor, NULL, accept_loop, NULL)) != 0)
        die("server: thread", -err);
    printf("downloads: %u files of %u KiB from 127.0.0.1:%u, %u ms latency each\n", nfiles, size_kib,
           ntohs(server_addr.sin_port), latency_ms);

    /* Sequential: the tutorial's run_sequential. */
    int64_t t0 = br_now_ns();
    for (unsigned i = 0; i < nfiles; i++) {
        seq[i] = (download_t){.work = {.data = &seq[i]}, .index = i};
        download_file(&seq[i].work);
    }
    double t_seq = (br_now_ns() - t0) / 1e9;
    printf("  sequential              %7.3f s\n", t_seq);

    /* Concurrent: the tutorial's run_concurrent, a work item per file on a
     * pool of nthreads threads. Closing with DRAIN lets the queued items
     * run; join then returns when they all have (the tutorial joins its
     * threads). A pool that lives on would wait on a done callback instead. */
    br_threadpool_t pool;
    br_threadpool_options_t po = {.max_threads = nthreads, .name_prefix = "download"};
    t0 = br_now_ns();
    if ((err = br_threadpool_init(&pool, &po)) != 0)
        die("thread pool", err);
    for (unsigned i = 0; i < nfiles; i++) {
        par[i] = (download_t){.work = {.work = download_file, .data = &par[i]}, .index = i};
        if ((err = br_threadpool_submit(&pool, &par[i].work)) != 0)
            die("submit", err);
    }
    br_threadpool_close(&pool, BR_CLOSE_DRAIN);
    br_threadpool_join(&pool);
    br_threadpool_destroy(&pool);
    double t_par = (br_now_ns() - t0) / 1e9;
    printf("  br_threadpool_t (%3u)   %7.3f s   %.1fx\n", nthreads, t_par, t_seq / t_par);

    /* The server stops: shutdown() ends the blocking accept. */
    shutdown(listen_fd, SHUT_RDWR);
    pthread_join(acceptor, NULL);
    close(listen_fd);
    br_threadpool_close(&server_pool, BR_CLOSE_DRAIN);
    br_threadpool_join(&server_pool);
    br_threadpool_destroy(&server_pool);

    unsigned ok_seq = 0, ok_par = 0;
    for (unsigned i = 0; i < nfiles; i++)
        ok_seq += seq[i].ok, ok_par += par[i].ok;
    free(seq), free(par);
    if (ok_seq != nfiles || ok_par != nfiles) {
        printf("downloads: FAILED (%u/%u sequential and %u/%u pooled files checked out)\n", ok_seq, nfiles,
               ok_par, nfiles);
        return 1;
    }
    printf("downloads: OK (%u downloads, every size and checksum as sent)\n", 2 * nfiles);
    return 0;
}
