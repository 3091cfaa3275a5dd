/*
 * test_proc_child.c — a helper program that test_proc.c spawns (not a test).
 *
 *     test_proc_child bind PPID
 *
 * Calls br_proc_bind_to_parent(SIGKILL, PPID), writes the result to fd 3
 * as a decimal line ("0" or "-3"), closes fd 3, then sleeps for up to 30 s
 * and exits with status 3: only the death signal ends it sooner.
 */
#include "braid.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3 || strcmp(argv[1], "bind") != 0) {
        fprintf(stderr, "usage: %s bind PPID\n", argv[0]);
        return 2;
    }
    int rc = br_proc_bind_to_parent(SIGKILL, atoi(argv[2]));
    char line[32];
    int n = snprintf(line, sizeof line, "%d\n", rc);
    if (write(3, line, (size_t)n) != n || close(3) != 0)
        return 2;
    if (rc != 0)
        return 1;

    int64_t end = br_now_ns() + 30 * 1000000000LL;
    while (br_now_ns() < end) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000000};
        nanosleep(&ts, NULL);
    }
    return 3;
}
