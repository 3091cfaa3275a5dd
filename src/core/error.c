/*
 * error.c — names for negative errno values, and the fatal-error exit.
 *
 * br_strerror returns "ENAME: description" (e.g. "ECANCELED: operation
 * canceled"). The strings are built once, under pthread_once, into static
 * storage: nothing is allocated (so nothing leaks at exit) and every pointer
 * returned stays valid for the life of the program, on any thread.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Linux errnos stop at 133 (EHWPOISON); leave room for new ones. */
#define MAX_ERRNO 256
#define NAME_LEN 80

static char names[MAX_ERRNO][NAME_LEN];
static pthread_once_t names_once = PTHREAD_ONCE_INIT;

static int is_upper(char c) { return c >= 'A' && c <= 'Z'; }
static int is_lower(char c) { return c >= 'a' && c <= 'z'; }

static void build_names(void)
{
    for (int e = 1; e < MAX_ERRNO; e++) {
        /* glibc 2.32+: static strings, NULL for an unknown value. */
        const char *name = strerrorname_np(e);
        const char *desc = strerrordesc_np(e);
        if (name == NULL || desc == NULL)
            continue;
        snprintf(names[e], NAME_LEN, "%s: %s", name, desc);
        /* Lower-case the description like libuv ("operation canceled") but
         * leave acronyms alone ("I/O error", "RFS specific error"). */
        char *d = names[e] + strlen(name) + 2;
        if (d < names[e] + NAME_LEN - 1 && is_upper(d[0]) && is_lower(d[1]))
            d[0] = (char)(d[0] - 'A' + 'a');
    }
}

const char *br_strerror(int err)
{
    if (err == 0)
        return "OK: success";
    if (pthread_once(&names_once, build_names) != 0)
        return "unknown error";
    /* The API uses negative values; accept a positive errno too rather
     * than call it unknown. long: -INT_MIN does not fit in an int. */
    long e = err < 0 ? -(long)err : (long)err;
    if (e < MAX_ERRNO && names[e][0] != '\0')
        return names[e];
    return "unknown error";
}

static void write_str(const char *s)
{
    /* Nothing useful to do if stderr is gone: we are about to abort. */
    ssize_t n = write(STDERR_FILENO, s, strlen(s));
    (void)n;
}

void br__fatal(const char *what, int err)
{
    /* strerrorname_np returns a static string: safe in a signal handler,
     * unlike br_strerror's first call (pthread_once). */
    const char *name = err > 0 ? strerrorname_np(err) : NULL;

    write_str("braid: fatal: ");
    write_str(what);
    write_str(": ");
    write_str(name != NULL ? name : "unknown error");
    write_str("\n");
    abort();
}
