/*
 * test_procpool_worker.c — the worker program test_procpool.c runs in its
 * pools (not a test). It speaks the pool protocol through br_ppworker_t and
 * does what each task's payload, a line of text, says:
 *
 *   echo:TEXT          RESULT TEXT            error:TEXT   ERROR TEXT
 *   sleep:MS           sleeps, RESULT "slept" pid          RESULT its pid
 *   crash:SIG          kill(getpid(), SIG)    exit:N       _exit(N)
 *   alloc:MIB[:MS]     allocates and touches MIB MiB (kept), sleeps MS,
 *                      RESULT "allocated"
 *   rss                RESULT its resident bytes
 *   big:N              RESULT of N bytes ('a' + i % 26)
 *   size               RESULT the payload's length (for long payloads)
 *   touch:PATH         appends one byte to PATH, RESULT "touched"
 *   touchcrash:PATH:SIG  appends one byte to PATH, then crash:SIG
 *   touchsleep:PATH:MS   appends one byte to PATH, then sleep:MS
 *   garbage            scribbles over its result ring and sleeps
 *
 * argv[1], if given, changes its start-up: "die" exits 3 before READY,
 * "slow:MS" sleeps MS before READY. An init payload "fail" answers
 * INIT_FAILED "init failed"; "sleep:MS" sleeps; anything else is fine.
 */
#include "braid.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static br_ppworker_t W;
static char *kept[64]; /* allocations stay reachable: no leak report */
static int nkept;

static void send_or_die(uint32_t type, uint64_t tag, const void *data, size_t len)
{
    br_ring_msg_t m = {.type = type, .tag = tag, .payload = data, .len = len};
    int err;
    while ((err = br_ppworker_send(&W, &m)) == -EINTR)
        ;
    if (err != 0) {
        fprintf(stderr, "test worker: send: %s\n", br_strerror(err));
        _exit(70);
    }
}

static void reply(uint64_t tag, const char *text)
{
    send_or_die(BR_PP_MSG_RESULT, tag, text, strlen(text));
}

static void append_byte(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, "x", 1) != 1)
        _exit(71);
    close(fd);
}

static void run(uint64_t tag, const char *cmd, size_t len)
{
    char out[64];
    if (strncmp(cmd, "echo:", 5) == 0) {
        send_or_die(BR_PP_MSG_RESULT, tag, cmd + 5, len - 5);
    } else if (strncmp(cmd, "error:", 6) == 0) {
        send_or_die(BR_PP_MSG_ERROR, tag, cmd + 6, len - 6);
    } else if (strncmp(cmd, "sleep:", 6) == 0) {
        sleep_ms(atol(cmd + 6));
        reply(tag, "slept");
    } else if (strcmp(cmd, "pid") == 0) {
        snprintf(out, sizeof out, "%d", (int)getpid());
        reply(tag, out);
    } else if (strncmp(cmd, "crash:", 6) == 0) {
        kill(getpid(), atoi(cmd + 6));
        sleep_ms(10000);
        _exit(72);
    } else if (strncmp(cmd, "exit:", 5) == 0) {
        _exit(atoi(cmd + 5));
    } else if (strncmp(cmd, "alloc:", 6) == 0) {
        char *colon = strchr(cmd + 6, ':');
        size_t bytes = (size_t)atol(cmd + 6) << 20;
        char *p = malloc(bytes);
        if (p == NULL || nkept == 64)
            _exit(73);
        for (size_t i = 0; i < bytes; i += 4096)
            p[i] = 1;
        kept[nkept++] = p;
        if (colon != NULL)
            sleep_ms(atol(colon + 1));
        reply(tag, "allocated");
    } else if (strcmp(cmd, "rss") == 0) {
        long pages = 0, size = 0;
        FILE *f = fopen("/proc/self/statm", "r");
        if (f == NULL || fscanf(f, "%ld %ld", &size, &pages) != 2)
            _exit(74);
        fclose(f);
        snprintf(out, sizeof out, "%ld", pages * sysconf(_SC_PAGESIZE));
        reply(tag, out);
    } else if (strncmp(cmd, "big:", 4) == 0) {
        size_t n = (size_t)atol(cmd + 4);
        char *p = malloc(n ? n : 1);
        if (p == NULL)
            _exit(75);
        for (size_t i = 0; i < n; i++)
            p[i] = (char)('a' + i % 26);
        send_or_die(BR_PP_MSG_RESULT, tag, p, n);
        free(p);
    } else if (strncmp(cmd, "size", 4) == 0) {
        snprintf(out, sizeof out, "%zu", len);
        reply(tag, out);
    } else if (strncmp(cmd, "touchcrash:", 11) == 0) {
        char path[256];
        const char *colon = strrchr(cmd, ':');
        snprintf(path, sizeof path, "%.*s", (int)(colon - (cmd + 11)), cmd + 11);
        append_byte(path);
        kill(getpid(), atoi(colon + 1));
        sleep_ms(10000);
        _exit(72);
    } else if (strncmp(cmd, "touchsleep:", 11) == 0) {
        char path[256];
        const char *colon = strrchr(cmd, ':');
        snprintf(path, sizeof path, "%.*s", (int)(colon - (cmd + 11)), cmd + 11);
        append_byte(path);
        sleep_ms(atol(colon + 1));
        reply(tag, "slept");
    } else if (strncmp(cmd, "touch:", 6) == 0) {
        append_byte(cmd + 6);
        reply(tag, "touched");
    } else if (strcmp(cmd, "garbage") == 0) {
        /* Over the whole result ring, header included, then wake the
         * parent so it looks. */
        memset(W.results.data_ - 192, 0x5a, 192 + 4096);
        uint64_t one = 1;
        if (write(BR_PP_FD_RESULT_DATA, &one, sizeof one) != sizeof one)
            _exit(76);
        sleep_ms(10000);
        _exit(77);
    } else {
        reply(tag, "unknown command");
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "die") == 0)
        return 3;
    if (argc > 1 && strncmp(argv[1], "slow:", 5) == 0)
        sleep_ms(atol(argv[1] + 5));
    /* A test that fails leaves no worker behind. */
    if (br_proc_bind_to_parent(SIGKILL, (int)getppid()) != 0)
        return 2;
    int err = br_ppworker_attach(&W);
    if (err != 0) {
        fprintf(stderr, "test worker: attach: %s\n", br_strerror(err));
        return 2;
    }
    send_or_die(BR_PP_MSG_READY, 0, NULL, 0);
    char cmd[4096];
    for (;;) {
        br_ring_frag_t m;
        while ((err = br_ppworker_recv(&W, &m, -1)) == -EINTR)
            ;
        if (err != 0) {
            fprintf(stderr, "test worker: recv: %s\n", br_strerror(err));
            return 2;
        }
        if (m.type == BR_PP_MSG_EXIT)
            break;
        size_t len = m.len < sizeof cmd - 1 ? m.len : sizeof cmd - 1;
        memcpy(cmd, m.data, len);
        cmd[len] = '\0';
        uint64_t tag = m.tag;
        uint32_t type = m.type;
        size_t full = m.len;
        br_ppworker_release(&W);
        if (type == BR_PP_MSG_INIT) {
            if (strcmp(cmd, "fail") == 0) {
                send_or_die(BR_PP_MSG_INIT_FAILED, 0, "init failed", 11);
                return 1;
            }
            if (strncmp(cmd, "sleep:", 6) == 0)
                sleep_ms(atol(cmd + 6));
            continue;
        }
        if (type != BR_PP_MSG_CALL)
            return 2;
        while ((err = br_ppworker_claim(&W, tag)) == -EINTR)
            ;
        if (err < 0)
            return 2;
        if (err == 0)
            continue; /* cancelled: SKIPPED was sent */
        run(tag, cmd, strncmp(cmd, "size", 4) == 0 ? full : len);
    }
    br_ppworker_detach(&W);
    for (int i = 0; i < nkept; i++)
        free(kept[i]);
    return 0;
}
