/*
 * proctemplate.c — the process pools' templates: a clean, single-threaded
 * interpreter per configuration that has done the workers' imports and
 * re-run of the main script once, and forks each new worker from there
 * (br_template_t, include/braid.h). A worker then starts in about a
 * millisecond instead of an interpreter start plus imports.
 *
 * One template per parent process and configuration (working directory,
 * interpreter, argv, environment, and so sys.path and the main script,
 * which travel in it), shared by every pool with that configuration,
 * rather than one per pool:
 * a program that makes a pool per job (the tutorial's `with Pool() as
 * pool:` in a function) pays the template's start once, not per pool, and
 * the template's memory is paid once however many pools there are. It
 * stays LINGER_NS after its last pool is done, for the next one, then
 * goes; at interpreter exit it goes at once.
 *
 * Who starts it matters: PR_SET_PDEATHSIG of the template and of every
 * worker forked from it (CLONE_PARENT makes them children of the thread
 * that spawned the template) fires when that THREAD exits. So templates
 * are started and closed by one "keeper" thread of their own, which lives
 * as long as any template does and any pool that has forked from one (its
 * workers may outlive their template); a pool's collector only asks for
 * forks.
 *
 * Template life cycle:
 *
 *   acquire (new config) --> STARTING --(keeper spawns it)--> RUNNING
 *                               |                               |  fork: gone,
 *                               | spawn failed                  |  hung, threads
 *                               v                               v
 *                            RETIRED <--------------------------+
 *                               |   users 0                     | users 0 for LINGER_NS
 *                               +--------> closed and freed by the keeper <--+
 *
 * A RETIRED template is handed to no new pool. A configuration whose
 * template refused to fork because it had threads (the main script or an
 * import started one; OpenBLAS would, and so the template loads it with
 * one, braid/_procworker.py) or died before its first fork is remembered,
 * and its pools spawn workers directly from then on, as they did before
 * templates. That first pool waited for the template's start in vain.
 *
 * The template side, _template_serve(), is in this file too: the loop the
 * template interpreter runs once its imports are done.
 */
#include "braidpy.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LINGER_NS (2 * 1000000000LL)        /* an unused template waits this long for a pool */
#define CLOSE_GRACE_NS (200 * 1000000LL)    /* then it is killed if it has not left */
#define FORK_TIMEOUT_NS (60 * 1000000000LL) /* the first fork waits for the template's imports */
#define MAX_REFUSED 16                      /* configurations remembered as not templatable */
#define MARKER "BRAID_WORKER_TEMPLATE=1"    /* in the template's environment only */
#define OPT_OUT "BRAID_PROCESS_TEMPLATE=0"  /* in the pool's: always spawn directly */

enum { T_STARTING = 0, T_RUNNING, T_RETIRED };

typedef struct tpl_s tpl_t;
struct tpl_s {
    br_template_t t;
    char **argv, **envp; /* copies; envp ends with MARKER */
    char *key;           /* argv and envp, each string NUL-terminated */
    size_t keylen;
    int state;
    int start_err;
    unsigned users;      /* spawners holding it */
    unsigned served;     /* forks that worked */
    int64_t idle_since;  /* when users fell to 0 */
    tpl_t *next;
};

struct braid_spawner_s {
    char *const *argv;   /* the pool's, for spawning directly (borrowed) */
    char *const *envp;
    char *key;
    size_t keylen;
    tpl_t *tpl;          /* NULL: spawn directly */
    int restarted;       /* replaced a template that died once already */
    int counted;         /* in nspawners */
    int tpl_pid;         /* for _template_pid; 0 when none */
};

/* All of this is process-wide (templates are processes), under `mu`. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t keeper_cv;  /* wakes the keeper (monotonic clock) */
static pthread_cond_t changed_cv; /* a start finished, a template was closed */
static pthread_once_t cv_once = PTHREAD_ONCE_INIT;
static int cv_err;
static tpl_t *templates;
static unsigned nspawners;        /* spawners that have forked from a template */
static int keeper_running;
static int closing_all;           /* at exit: close unused templates now */
static char *refused[MAX_REFUSED];
static size_t refused_len[MAX_REFUSED];
static unsigned nrefused;

static void init_cvs(void)
{
    pthread_condattr_t a;
    if ((cv_err = pthread_condattr_init(&a)) != 0) {
        return;
    }
    if ((cv_err = pthread_condattr_setclock(&a, CLOCK_MONOTONIC)) == 0 &&
        (cv_err = pthread_cond_init(&keeper_cv, &a)) == 0) {
        cv_err = pthread_cond_init(&changed_cv, NULL);
    }
    (void)pthread_condattr_destroy(&a);
}

/* With default attributes these fail only on a corrupt object. */
static void lock(void)
{
    if (pthread_mutex_lock(&mu) != 0) {
        abort();
    }
}

static void unlock(void)
{
    if (pthread_mutex_unlock(&mu) != 0) {
        abort();
    }
}

/* ------------------------------------------------------------ configurations */

static void free_strv(char **v)
{
    for (char **p = v; p && *p; p++) {
        free(*p);
    }
    free(v);
}

/* A copy of v, with `extra` appended when not NULL. */
static char **copy_strv(char *const *v, const char *extra)
{
    size_t n = 0;
    while (v[n] != NULL) {
        n++;
    }
    char **c = calloc(n + 2, sizeof *c);
    if (c == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if ((c[i] = strdup(v[i])) == NULL) {
            free_strv(c);
            return NULL;
        }
    }
    if (extra != NULL && (c[n] = strdup(extra)) == NULL) {
        free_strv(c);
        return NULL;
    }
    return c;
}

/* The working directory, argv, then envp, each string with its NUL, and
 * an empty string between the lists: equal keys, equal configurations.
 * The directory is part of it because the template has the one it was
 * started in, and so would its workers (and '' in sys.path means it). */
static char *make_key(const char *cwd, char *const *argv, char *const *envp, size_t *len)
{
    size_t n = strlen(cwd) + 2;
    for (char *const *p = argv; *p; p++) {
        n += strlen(*p) + 1;
    }
    for (char *const *p = envp; *p; p++) {
        n += strlen(*p) + 1;
    }
    char *key = malloc(n), *q = key;
    if (key == NULL) {
        return NULL;
    }
    q = stpcpy(q, cwd) + 1;
    for (char *const *p = argv; *p; p++) {
        q = stpcpy(q, *p) + 1;
    }
    *q++ = '\0';
    for (char *const *p = envp; *p; p++) {
        q = stpcpy(q, *p) + 1;
    }
    *len = n;
    return key;
}

static int same_key(const char *a, size_t alen, const char *b, size_t blen)
{
    return alen == blen && memcmp(a, b, alen) == 0;
}

/* Locked. */
static int is_refused(const char *key, size_t len)
{
    for (unsigned i = 0; i < nrefused; i++) {
        if (same_key(refused[i], refused_len[i], key, len)) {
            return 1;
        }
    }
    return 0;
}

/* Locked. Remembers that this configuration cannot have a template. */
static void refuse(const char *key, size_t len)
{
    if (is_refused(key, len) || nrefused == MAX_REFUSED) {
        return;
    }
    char *copy = malloc(len);
    if (copy != NULL) {
        memcpy(copy, key, len);
        refused[nrefused] = copy;
        refused_len[nrefused++] = len;
    }
}

static void tpl_free(tpl_t *t)
{
    free_strv(t->argv);
    free_strv(t->envp);
    free(t->key);
    free(t);
}

/* ------------------------------------------------------------ the keeper */

/* Locked. The first unused template whose time has come (unlinked), or
 * NULL and the time of the next one in *next (-1: none). */
static tpl_t *take_due(int64_t now, int64_t *next)
{
    *next = -1;
    for (tpl_t **pp = &templates; *pp != NULL; pp = &(*pp)->next) {
        tpl_t *t = *pp;
        if (t->users > 0 || t->state == T_STARTING) {
            continue;
        }
        int64_t due = t->state == T_RETIRED || closing_all ? now : t->idle_since + LINGER_NS;
        if (due <= now) {
            *pp = t->next;
            return t;
        }
        if (*next < 0 || due < *next) {
            *next = due;
        }
    }
    return NULL;
}

static void *keeper_main(void *arg)
{
    /* process-directed signals (Ctrl-C) are for the main thread */
    sigset_t block;
    if (br_async_signals(&block) == 0) {
        (void)pthread_sigmask(SIG_BLOCK, &block, NULL);
    }
    lock();
    for (;;) {
        tpl_t *t = templates;
        while (t != NULL && t->state != T_STARTING) {
            t = t->next;
        }
        if (t != NULL) {
            unlock();
            br_spawn_options_t o = {.path = t->argv[0], .argv = t->argv, .envp = t->envp};
            int err = br_template_start(&t->t, &o);
            if (err == 0) {
                t->t.timeout_ns = FORK_TIMEOUT_NS;
            }
            lock();
            t->start_err = err;
            t->state = err == 0 ? T_RUNNING : T_RETIRED;
            (void)pthread_cond_broadcast(&changed_cv);
            continue;
        }
        int64_t next;
        t = take_due(br_now_ns(), &next);
        if (t != NULL) {
            unlock();
            (void)br_template_close(&t->t, CLOSE_GRACE_NS);
            tpl_free(t);
            lock();
            (void)pthread_cond_broadcast(&changed_cv);
            continue;
        }
        if (templates == NULL && nspawners == 0) {
            /* nothing left that this thread's exit could kill: no
             * template, and no pool that may still have workers forked
             * from one (they are children of this thread too) */
            keeper_running = 0;
            break;
        }
        if (next < 0) {
            (void)pthread_cond_wait(&keeper_cv, &mu);
        } else {
            struct timespec ts = {.tv_sec = (time_t)(next / 1000000000), .tv_nsec = (long)(next % 1000000000)};
            (void)pthread_cond_timedwait(&keeper_cv, &mu, &ts);
        }
    }
    unlock();
    return NULL;
}

/* Locked. */
static int ensure_keeper(void)
{
    if (keeper_running) {
        return 0;
    }
    pthread_attr_t a;
    pthread_t th;
    int err = pthread_attr_init(&a);
    if (err != 0) {
        return -err;
    }
    if ((err = pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED)) == 0) {
        err = pthread_create(&th, &a, keeper_main, NULL);
    }
    (void)pthread_attr_destroy(&a);
    if (err != 0) {
        return -err;
    }
    keeper_running = 1;
    return 0;
}

/* ------------------------------------------------------------ acquire, release */

/* Without the GIL. The running template of this configuration (started
 * now if there is none; waits for the spawn, not for its imports), or NULL
 * to spawn directly: *err is then 0, or the -errno that starting it gave. */
static tpl_t *acquire(char *const *argv, char *const *envp, const char *key, size_t keylen, int *err)
{
    *err = 0;
    if (pthread_once(&cv_once, init_cvs) != 0 || cv_err != 0) {
        return NULL;
    }
    lock();
    if (is_refused(key, keylen)) {
        unlock();
        return NULL;
    }
    tpl_t *t = templates;
    while (t != NULL && !(t->state != T_RETIRED && same_key(t->key, t->keylen, key, keylen))) {
        t = t->next;
    }
    if (t == NULL) {
        t = calloc(1, sizeof *t);
        if (t == NULL || (t->argv = copy_strv(argv, NULL)) == NULL ||
            (t->envp = copy_strv(envp, MARKER)) == NULL || (t->key = malloc(keylen)) == NULL) {
            if (t != NULL) {
                tpl_free(t);
            }
            unlock();
            return NULL;
        }
        memcpy(t->key, key, keylen);
        t->keylen = keylen;
        t->state = T_STARTING;
        if (ensure_keeper() != 0) {
            tpl_free(t);
            unlock();
            return NULL;
        }
        t->next = templates;
        templates = t;
        (void)pthread_cond_signal(&keeper_cv);
    }
    t->users++;
    while (t->state == T_STARTING) {
        (void)pthread_cond_wait(&changed_cv, &mu);
    }
    if (t->state != T_RUNNING) {
        *err = t->start_err;
        if (--t->users == 0) {
            (void)pthread_cond_signal(&keeper_cv);
        }
        t = NULL;
    }
    unlock();
    return t;
}

/* Drops a spawner's hold; `why` < 0 also retires the template (a fork
 * found it unusable for that reason). */
static void release(tpl_t *t, int why)
{
    lock();
    if (why < 0 && t->state == T_RUNNING) {
        t->state = T_RETIRED;
        /* Threads will not go away, and a template that dies before its
         * first fork will die again: those configurations spawn directly. */
        if (why == -EDEADLK || t->served == 0) {
            refuse(t->key, t->keylen);
        }
    }
    if (--t->users == 0) {
        t->idle_since = br_now_ns();
    }
    (void)pthread_cond_signal(&keeper_cv);
    unlock();
}

static int has(char *const *v, const char *s)
{
    for (; *v != NULL; v++) {
        if (strcmp(*v, s) == 0) {
            return 1;
        }
    }
    return 0;
}

/* An exec that failed because of the path or file: the interpreter cannot
 * run at all, as opposed to a shortage a direct spawn may not meet. */
static int bad_executable(int err)
{
    return err == -ENOENT || err == -EACCES || err == -ENOEXEC || err == -ENOTDIR || err == -ELOOP ||
           err == -ENAMETOOLONG || err == -EISDIR || err == -EPERM;
}

int braid_spawner_new(char *const *argv, char *const *envp, braid_spawner_t **out)
{
    *out = NULL;
    braid_spawner_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return -ENOMEM;
    }
    s->argv = argv;
    s->envp = envp;
    if (has(envp, OPT_OUT)) {
        *out = s;
        return 0;
    }
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) != NULL) { /* else (it was removed): spawn directly */
        s->key = make_key(cwd, argv, envp, &s->keylen);
    }
    if (s->key != NULL) {
        int err;
        s->tpl = acquire(argv, envp, s->key, s->keylen, &err);
        if (s->tpl == NULL && bad_executable(err)) {
            braid_spawner_free(s);
            return err;
        }
    }
    if (s->tpl != NULL) {
        lock();
        nspawners++;
        s->counted = 1;
        unlock();
        s->tpl_pid = s->tpl->t.proc.pid;
    }
    *out = s;
    return 0;
}

int braid_spawner_has_template(braid_spawner_t *s)
{
    return s != NULL && s->tpl != NULL;
}

int braid_spawner_template_pid(braid_spawner_t *s)
{
    return s != NULL ? __atomic_load_n(&s->tpl_pid, __ATOMIC_RELAXED) : 0;
}

void braid_spawner_free(braid_spawner_t *s)
{
    if (s == NULL) {
        return;
    }
    if (s->tpl != NULL) {
        release(s->tpl, 0);
    }
    if (s->counted) {
        lock();
        nspawners--;
        (void)pthread_cond_signal(&keeper_cv);
        unlock();
    }
    free(s->key);
    free(s);
}

/* The template cannot be used again after this error. */
static int fatal_for_template(int err)
{
    return err == -EPIPE || err == -ETIMEDOUT || err == -EDEADLK || err == -ECHILD || err == -EPROTO;
}

static void drop_template(braid_spawner_t *s, int why)
{
    release(s->tpl, why);
    s->tpl = NULL;
    __atomic_store_n(&s->tpl_pid, 0, __ATOMIC_RELAXED);
}

int braid_spawner_spawn(void *ctx, const int *fds, int nfds, br_proc_t *out)
{
    braid_spawner_t *s = ctx;
    while (s->tpl != NULL) {
        int err = br_template_fork(&s->tpl->t, fds, nfds, out);
        if (err == 0) {
            lock();
            s->tpl->served++;
            unlock();
            return 0;
        }
        if (!fatal_for_template(err)) {
            break; /* a shortage in the template (EAGAIN, ENOMEM): this once, directly */
        }
        lock();
        unsigned served = s->tpl->served;
        unlock();
        drop_template(s, err);
        if (err == -EPIPE && served > 0 && !s->restarted) {
            /* it worked, then died (killed, out of memory): one more, once */
            s->restarted = 1;
            int ignored;
            s->tpl = acquire(s->argv, s->envp, s->key, s->keylen, &ignored);
            __atomic_store_n(&s->tpl_pid, s->tpl != NULL ? s->tpl->t.proc.pid : 0, __ATOMIC_RELAXED);
        }
    }
    br_spawn_options_t o = {.path = s->argv[0], .argv = s->argv, .envp = s->envp, .fds = fds, .nfds = nfds};
    return br_proc_spawn(out, &o);
}

/* ------------------------------------------------------------ process events */

void braid_templates_close_unused(int64_t timeout_ns)
{
    if (pthread_once(&cv_once, init_cvs) != 0 || cv_err != 0) {
        return;
    }
    int64_t deadline = br_now_ns() + timeout_ns;
    lock();
    closing_all++;
    (void)pthread_cond_signal(&keeper_cv);
    for (;;) {
        int left = 0;
        for (tpl_t *t = templates; t != NULL; t = t->next) {
            left |= t->users == 0;
        }
        int64_t now = br_now_ns();
        if (!left || !keeper_running || now >= deadline) {
            break;
        }
        /* changed_cv runs on the realtime clock: wait in short steps */
        struct timespec ts;
        (void)clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        (void)pthread_cond_timedwait(&changed_cv, &mu, &ts);
    }
    closing_all--;
    unlock();
}

void braid_templates_after_fork_child(void)
{
    /* The keeper and the templates are the parent's: forget them (the
     * parent still holds its own descriptors; closing our copies does not
     * disturb its templates), and never fork through them from here, which
     * would make children of the parent. The lock may have been held by a
     * thread that does not exist here, and the keeper may have been
     * waiting on a condition variable. */
    (void)pthread_mutex_init(&mu, NULL);
    if (pthread_once(&cv_once, init_cvs) == 0 && cv_err == 0) {
        init_cvs();
    }
    for (tpl_t *t = templates; t != NULL; t = t->next) {
        if (t->state != T_STARTING) {
            if (t->t.sock >= 0) {
                (void)close(t->t.sock);
                t->t.sock = -1;
            }
            if (t->t.proc.pidfd >= 0) {
                (void)close(t->t.proc.pidfd);
                t->t.proc.pidfd = -1;
            }
        }
        t->state = T_RETIRED; /* spawners that still point here spawn directly */
        t->t.dead = 1;
    }
    templates = NULL; /* leaked on purpose: dead pools may still point into them */
    nspawners = 0;
    keeper_running = 0;
    closing_all = 0;
}

/* ------------------------------------------------------------ the template side */

/* _template_serve(): run by the template interpreter once it has loaded
 * what the workers share. Returns True in each new worker (forked, with its
 * rings as fds 3-7), False when the parent has gone (the template then
 * exits). CPython's fork hooks run around every fork: os.register_at_fork
 * callbacks, random's reseeding in the child, the runtime's lock resets. */
PyObject *braid_template_serve(PyObject *module, PyObject *unused)
{
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        PyErr_SetString(PyExc_RuntimeError, "a process-pool template runs in the main interpreter only");
        return NULL;
    }
    for (;;) {
        br_template_request_t req;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = br_template_accept(BR_TEMPLATE_FD, &req);
        Py_END_ALLOW_THREADS
        if (rc == -EINTR) {
            if (PyErr_CheckSignals() < 0) {
                return NULL;
            }
            continue;
        }
        if (rc == 0) {
            Py_RETURN_FALSE;
        }
        if (rc < 0) {
            return braid_raise_oserror(rc, "waiting for the process pool's requests");
        }
        PyOS_BeforeFork();
        int pid = br_template_fork_child(BR_TEMPLATE_FD, &req);
        if (pid == 0) {
            PyOS_AfterFork_Child();
            Py_RETURN_TRUE;
        }
        PyOS_AfterFork_Parent(); /* pid < 0: the parent has been told */
    }
}

PyObject *braid_close_unused_templates(PyObject *module, PyObject *unused)
{
    Py_BEGIN_ALLOW_THREADS
    braid_templates_close_unused(5 * 1000000000LL);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}
