"""braid.map against the plain Python a user would write, in one run.

    python -m braid bench map [--quick] [--repeat N] [--cases LIST] [--json]

braid.map(fn, items) picks a pillar for the user (run in this thread, on
threads, on processes, or on an event loop for a coroutine function) by
measuring the first items. This benchmark checks that rule of thumb by
measurement: for each case it runs braid.map with mode="auto", braid.map with
every fixed mode that applies, and the code a user writes without braid, side
by side, and reports whether auto came close to the best fixed mode.

Cases (--quick runs them smaller, once each, in well under a minute):

  primes_small  (a) the tutorial's is_prime (odd trial division, copied
                from the seed) over range(1, 100,000)
  primes_large  (b) the same over range(1, 2,000,000) (--quick 1,000,000: at
                300,000 the whole sequential run takes about as long as a
                process pool's start on a fast core, and (b) would repeat (a))
  sleep         (c) 200 calls of time.sleep(0.01)
  http          (d) 2,000 HTTP GETs (--quick 500) of 1 KiB bodies from a
                loopback server, with requests
  tiny          (e) x * x over 100,000 items
  fetch_async   (f) 10,000 coroutine GETs (--quick 2,000) with aiohttp from
                the same server

Variants of every case:

  auto          braid.map(fn, items): braid measures and chooses. Its choice
                is taken from the line braid.map logs to the "braid" logger
                at INFO (the line explain=True prints).
  fixed modes   braid.map(fn, items, mode=M) for M in sequential, thread and
                process (for the coroutine case: async and sequential), with
                braid's fixed defaults (thread: min(32, CPUs + 4) workers,
                process: one per usable CPU).
  plain Python  what a user writes without braid: the list comprehension
                [fn(x) for x in items] (the sequential baseline of the
                ratios); for primes also the tutorial's multiprocessing.Pool
                code (cpu_count() processes, the list cut into that many
                chunks, check_numbers_chunk, results flattened); for sleep and
                http a ThreadPoolExecutor() map; for fetch_async the
                tutorial's asyncio.gather of every call under asyncio.run,
                and one await after another under asyncio.run (the
                sequential baseline of that case).

The header gives what a new process costs here before its first task (a bare
interpreter's start, and the import of this module, which imports braid), and
says when braid is an editable install or bytecode caching is off: both make
every process-mode figure pay more at its workers' start than an installed
braid would.

Every pooled timing includes the pool's start and shutdown (nothing is warmed:
braid.map and the plain code start their own pools, as a user's would). The
variants of a case are interleaved repeat by repeat (forward, then reverse
order) and the best (smallest) time of the repeats is kept for each. Every
result is compared after the clock stops with a reference computed
independently (primes: a sieve; http: the body the server sends for that
path), so a wrong result is an error in its cell, never a figure. Every run
has a deadline (SIGALRM), so nothing hangs: a variant past it is reported as
timed out.

The HTTP server (cases http and fetch_async) runs in a separate process, so it
does not share this process's GIL: an asyncio Protocol answering HTTP/1.1
GETs with keep-alive, each body 1 KiB derived from the request's path (which
the check recomputes). The blocking client is what a user writes with
requests for many calls to one host: one requests.Session per thread (a
threading.local, since a Session is not meant to be shared between threads),
session.get(url, timeout=10), then .content; without requests installed,
urllib.request.urlopen(url, timeout=10).read(). The coroutine client
uses aiohttp with one ClientSession per event loop, made by the first call on
that loop and closed when the loop shuts down its async generators (as
asyncio.run does).

The goals printed are braid.map's: auto within 10% of the best fixed mode's
time on every case (15% on http); auto never more than 10% slower than the
list comprehension on primes_small and tiny (where starting a pool does not
pay); auto at least 1.7x the list comprehension's speed on primes_large with
the pool's start included. Each is checked against this run and reported as
met or not; --quick runs smaller sizes once, so its verdicts are indicative.
"""

import hashlib
import os
import sys
import threading
import time

import braid.bench as _bench
from braid.bench import BraidMissing

# Only light imports above: braid.map's process workers import this module to
# find the functions, and its import time is part of every process-mode figure.

DEFAULT_REPEAT = 3
QUICK_REPEAT = 1

# (default, --quick)
PRIMES_SMALL_STOP = (100_000, 100_000)  # range(1, stop)
PRIMES_LARGE_STOP = (2_000_000, 1_000_000)
SLEEP_CALLS = (200, 200)
HTTP_GETS = (2_000, 500)
TINY_ITEMS = (100_000, 100_000)
FETCHES = (10_000, 2_000)
RUN_TIMEOUT = (300.0, 20.0)  # seconds one timed run may take before it is stopped

SLEEP_S = 0.01
BODY_BYTES = 1024
HTTP_TIMEOUT = 10.0  # seconds, every client request
SERVER_START_TIMEOUT = 30.0
SETTLE_TIMEOUT = 2.0  # seconds to wait for a run's worker processes to be gone

GOAL_AUTO_VS_BEST = 1.10
GOAL_AUTO_VS_BEST_HTTP = 1.15
GOAL_AUTO_VS_SEQ = 1.10
GOAL_PRIMES_LARGE_SPEEDUP = 1.7

CASES = ("primes_small", "primes_large", "sleep", "http", "tiny", "fetch_async")
LETTERS = dict(zip("abcdef", CASES))
FIXED_SYNC = ("sequential", "thread", "process")
FIXED_ASYNC = ("async", "sequential")


def load_braid():
    """The braid module, with its map; BraidMissing says why not."""
    return _bench.load_braid("map")


# ------------------------------------------------------------------ the work
# Module level, so braid.map's process mode and multiprocessing.Pool pickle
# them by reference as braid.bench.map.<name> and their workers import them;
# the tutorial's primes come from braid.bench._tutorial, a module that imports nothing.

from ._tutorial import is_prime, prime_flags, tutorial_code  # noqa: E402


def nap(i):
    """Stands for blocking I/O: 10 ms of sleep."""
    time.sleep(SLEEP_S)
    return i


def square(x):
    return x * x


def body_for(path):
    """The 1 KiB body the server sends for path (a str); the check recomputes it."""
    digest = hashlib.blake2b(path.encode("latin-1"), digest_size=32).hexdigest().encode()
    return (digest * (BODY_BYTES // len(digest) + 1))[:BODY_BYTES]


_local = threading.local()


def fetch(url):
    """GET url and return the body: a requests.Session per thread (urllib without requests)."""
    session = getattr(_local, "session", None)
    if session is None:
        try:
            import requests
        except ImportError:
            import urllib.request

            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
                return resp.read()
        session = _local.session = requests.Session()
    resp = session.get(url, timeout=HTTP_TIMEOUT)
    resp.raise_for_status()
    return resp.content


# event loop -> (aiohttp.ClientSession, the async generator that closes it)
_ASYNC_SESSIONS = {}


async def fetch_async(url):
    """GET url with aiohttp and return the body; one ClientSession per event loop."""
    session = await _session_of_this_loop()
    async with session.get(url) as resp:
        resp.raise_for_status()
        return await resp.read()


async def _session_of_this_loop():
    import asyncio

    loop = asyncio.get_running_loop()
    got = _ASYNC_SESSIONS.get(loop)
    if got is not None:
        return got[0]
    import aiohttp

    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT))
    closer = _close_at_loop_shutdown(loop, session)
    _ASYNC_SESSIONS[loop] = (session, closer)  # before the first await: one session per loop
    # The first step registers the generator with the loop (its asyncgen hooks), so the
    # loop's shutdown_asyncgens(), which asyncio.run calls, runs the finally below.
    await closer.asend(None)
    return session


async def _close_at_loop_shutdown(loop, session):
    try:
        yield
    finally:
        _ASYNC_SESSIONS.pop(loop, None)
        await session.close()


def _forget_sessions_of_closed_loops():
    """Sessions whose loop closed without shutting down its async generators (so they
    were never closed): drops them and returns how many (aiohttp may warn of them)."""
    stale = [loop for loop in _ASYNC_SESSIONS if loop.is_closed()]
    for loop in stale:
        del _ASYNC_SESSIONS[loop]
    return len(stale)


# ------------------------------------------------------------------ the server (child side)

def _serve():
    """Child process: an HTTP/1.1 server on 127.0.0.1; prints "port N", runs until killed."""
    import asyncio

    class Responder(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.buf = b""

        def data_received(self, data):
            buf = self.buf + data
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head, buf = buf[:end], buf[end + 4:]
                line, _, headers = head.partition(b"\r\n")
                parts = line.split()
                path = parts[1].decode("latin-1") if len(parts) > 1 else "/"
                close = (b"connection: close" in headers.lower()
                         or (len(parts) > 2 and parts[2] == b"HTTP/1.0"))
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: %d\r\n%s\r\n" % (BODY_BYTES, b"Connection: close\r\n"
                                                       if close else b"") + body_for(path))
                if close:
                    self.transport.close()
                    buf = b""
                    break
            self.buf = buf

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Responder, "127.0.0.1", 0, backlog=4096)
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        await loop.create_future()  # until killed

    asyncio.run(main())
    return 0


# ------------------------------------------------------------------ the server (parent side)

def _die_with_parent():
    """preexec_fn: the child gets SIGKILL when this process dies."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PDEATHSIG
    except (OSError, AttributeError):
        pass


class Server:
    """The loopback HTTP server, in its own process."""

    def __init__(self):
        import select
        import subprocess
        import tempfile

        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "braid.bench.map", "--serve"], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=self.err, close_fds=True, preexec_fn=_die_with_parent)
        try:
            out = b""
            deadline = time.monotonic() + SERVER_START_TIMEOUT
            while b"\n" not in out:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"the HTTP server said nothing in {SERVER_START_TIMEOUT:.0f} s")
                ready, _, _ = select.select([self.proc.stdout], [], [], left)
                if ready:
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    if not chunk:
                        self.err.seek(0)
                        tail = self.err.read().decode(errors="replace").strip().splitlines()[-1:]
                        raise RuntimeError("the HTTP server did not start: "
                                           + (tail[0] if tail else "no output"))
                    out += chunk
            line = out.split(b"\n")[0].decode()
            if not line.startswith("port "):
                raise RuntimeError(f"the HTTP server said {line!r}")
            self.port = int(line.split()[1])
        except BaseException:
            self.close()
            raise

    @property
    def pid(self):
        return self.proc.pid

    def url(self, i):
        return f"http://127.0.0.1:{self.port}/item/{i}"

    def check(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"the HTTP server exited with status {self.proc.returncode}")

    def close(self):
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.err.close()


# ------------------------------------------------------------------ references

_sieve_flags = prime_flags


def _path_of(url):
    return "/" + url.split("/", 3)[3]


def _first_difference(got, want):
    if not isinstance(got, list):
        return f"a {type(got).__name__}, not a list"
    if len(got) != len(want):
        return f"{len(got):,} results for {len(want):,} items"
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return f"item {i:,}: got {_short(g)}, want {_short(w)}"
    return None


def _short(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _tutorial_flags(result, items):
    """The tutorial's Pool code returns (n, is_prime(n)) pairs; checks the n's and
    returns the flags."""
    if not isinstance(result, list) or [n for n, _ in result] != items:
        raise AssertionError("the (number, flag) pairs are not in the numbers' order")
    return [flag for _, flag in result]


# ------------------------------------------------------------------ the variants

class Variant:
    """One way of running a case. kind: "auto", "fixed" (a braid.map mode) or "plain"."""

    def __init__(self, key, label, kind, run, adapt=None):
        self.key = key
        self.label = label
        self.kind = kind
        self.run = run  # run(fn, items) -> results
        self.adapt = adapt  # adapt(results, items) -> the list compared with the reference


def _braid_variant(braid_mod, mode, call):
    if mode == "auto":
        return Variant("auto", f"braid.map({call}) (auto)", "auto",
                       lambda fn, items: braid_mod.map(fn, items))
    return Variant(mode, f'braid.map({call}, mode="{mode}")', "fixed",
                   lambda fn, items: braid_mod.map(fn, items, mode=mode))


def _listcomp(fn, items):
    return [fn(x) for x in items]


def _tutorial_pool(fn, numbers):
    """The tutorial's multiprocessing code, from cutting the list in chunks to the flat result."""
    return tutorial_code()(numbers)


def _executor_map(fn, items):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor() as executor:
        return list(executor.map(fn, items))


def _gather(fn, items):
    import asyncio

    async def run_async():
        tasks = [fn(x) for x in items]
        return await asyncio.gather(*tasks)

    return asyncio.run(run_async())


def _await_each(fn, items):
    import asyncio

    async def run_one_by_one():
        return [await fn(x) for x in items]

    return asyncio.run(run_one_by_one())


def _fmt_int(n):
    return f"{n:,}"


def build_cases(quick, braid_mod):
    """name -> case: its title, function, items (made by items(server)), reference
    (expected(items)), variants, the key of its sequential baseline, and goals."""
    q = 1 if quick else 0

    def sync_variants(call, plain):
        return ([_braid_variant(braid_mod, "auto", call)]
                + [_braid_variant(braid_mod, m, call) for m in FIXED_SYNC] + plain)

    listcomp = lambda text: Variant("listcomp", text, "plain", _listcomp)  # noqa: E731
    pool = Variant("mp_pool", "multiprocessing.Pool, the tutorial's code", "plain",
                   _tutorial_pool, adapt=_tutorial_flags)
    tpe = Variant("executor", "ThreadPoolExecutor().map(fn, items)", "plain", _executor_map)

    cases = {}
    for name, stop in (("primes_small", PRIMES_SMALL_STOP[q]), ("primes_large", PRIMES_LARGE_STOP[q])):
        cases[name] = dict(
            title=f"the tutorial's is_prime over range(1, {_fmt_int(stop)})",
            fn=is_prime, items=lambda server, stop=stop: list(range(1, stop)),
            expected=lambda items, stop=stop: _sieve_flags(stop),
            variants=sync_variants("is_prime, numbers",
                                   [listcomp("[is_prime(n) for n in numbers]"), pool]))
    n_sleep = SLEEP_CALLS[q]
    cases["sleep"] = dict(
        title=f"{_fmt_int(n_sleep)} calls of time.sleep({SLEEP_S})",
        fn=nap, items=lambda server: list(range(n_sleep)), expected=lambda items: list(items),
        variants=sync_variants("nap, range", [listcomp("[nap(i) for i in range(n)]"), tpe]))
    n_http = HTTP_GETS[q]
    cases["http"] = dict(
        title=f"{_fmt_int(n_http)} HTTP GETs of {BODY_BYTES} bytes from a loopback server "
              f"(another process)",
        fn=fetch, server=True, items=lambda server: [server.url(i) for i in range(n_http)],
        expected=lambda items: [body_for(_path_of(u)) for u in items],
        variants=sync_variants("fetch, urls", [listcomp("[fetch(url) for url in urls]"), tpe]))
    n_tiny = TINY_ITEMS[q]
    cases["tiny"] = dict(
        title=f"x * x over {_fmt_int(n_tiny)} items",
        fn=square, items=lambda server: list(range(n_tiny)),
        expected=lambda items: [x * x for x in items],
        variants=sync_variants("square, xs", [listcomp("[square(x) for x in xs]")]))
    n_fetch = FETCHES[q]
    cases["fetch_async"] = dict(
        title=f"{_fmt_int(n_fetch)} aiohttp GETs (async def fetch_async(url)) from the same server",
        fn=fetch_async, server=True, coroutine=True,
        items=lambda server: [server.url(i) for i in range(n_fetch)],
        expected=lambda items: [body_for(_path_of(u)) for u in items],
        variants=([_braid_variant(braid_mod, "auto", "fetch_async, urls")]
                  + [_braid_variant(braid_mod, m, "fetch_async, urls") for m in FIXED_ASYNC]
                  + [Variant("gather", "asyncio.run(gather(*[fetch_async(u) for u in urls]))",
                             "plain", _gather),
                     Variant("await_each", "asyncio.run(...), [await fetch_async(u) for u in urls]",
                             "plain", _await_each)]))
    for name, case in cases.items():
        case["name"] = name
        case["letter"] = "abcdef"[CASES.index(name)]
        # The sequential baseline: the list comprehension; for the coroutine case, its
        # equivalent: one await after another under asyncio.run.
        case["baseline"] = "await_each" if case.get("coroutine") else "listcomp"
        case["auto_limit"] = GOAL_AUTO_VS_BEST_HTTP if name == "http" else GOAL_AUTO_VS_BEST
    return cases


# ------------------------------------------------------------------ timing

class _TimedOut(BaseException):
    """A run went past its deadline (a BaseException, so no `except Exception` eats it)."""


class _Deadline:
    """SIGALRM after `seconds`, raising _TimedOut in this (the main) thread."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __enter__(self):
        import signal

        self.armed = threading.current_thread() is threading.main_thread()
        if self.armed:
            def on_alarm(signum, frame):
                raise _TimedOut

            self.old = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        import signal

        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        return False


class _Capture:
    """Collects what braid logs to the "braid" logger at INFO while it is entered."""

    def __enter__(self):
        import logging

        self.lines = []
        capture = self

        class Handler(logging.Handler):
            def emit(self, record):
                try:
                    capture.lines.append(record.getMessage())
                except Exception:
                    pass

        self.logger = logging.getLogger("braid")
        self.handler = Handler(logging.INFO)
        self.level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        return False

    def explain(self):
        """The line braid.map logged about its choice, or None."""
        lines = [line for line in self.lines if line.startswith("braid.map")]
        return lines[-1] if lines else (self.lines[-1] if self.lines else None)


def _children(exclude=()):
    """pids of this process's live (not zombie) children, from /proc."""
    me = os.getpid()
    out = set()
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[0] != "Z" and int(fields[1]) == me:
            out.add(int(name))
    return out


def _settle(exclude):
    """Waits (up to SETTLE_TIMEOUT) for the worker processes of the run just timed to
    be gone, so they do not compete with the next run; returns how many stayed."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        left = _children(exclude)
        if not left or time.monotonic() >= deadline:
            return len(left)
        time.sleep(0.01)


def run_case(case, *, repeat, timeout, server, exclude=(), on_progress=None):
    """Runs one case; returns its result dict. exclude: pids of this process's children
    that are not a run's workers (the HTTP server)."""
    import gc

    fn = case["fn"]
    items = case["items"](server)
    expected = case["expected"](items)
    variants = case["variants"]
    times = {v.key: [] for v in variants}
    explains = {v.key: [] for v in variants}  # per timed run, what braid logged
    errors = {}
    lingering = {}
    for r in range(repeat):
        # Alternate who goes first, so none always runs on a cooler (or warmer) machine.
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            if v.key in errors:
                continue
            if on_progress is not None:
                on_progress(f"{case['name']}: {v.label}, repeat {r + 1}/{repeat}")
            gc.collect()
            result = got = None
            try:
                if server is not None:
                    server.check()
                with _Capture() as cap, _Deadline(timeout):
                    t0 = time.perf_counter()
                    result = v.run(fn, items)
                    wall = time.perf_counter() - t0
            except _TimedOut:
                errors[v.key] = f"timed out after {timeout:g} s"
            except Exception as exc:
                errors[v.key] = f"{type(exc).__name__}: {exc}"
            else:
                try:
                    got = v.adapt(result, items) if v.adapt else result
                    problem = _first_difference(got, expected)
                except AssertionError as exc:
                    problem = str(exc)
                if problem:
                    errors[v.key] = f"wrong result: {problem}"
                else:
                    times[v.key].append(wall)
                    explains[v.key].append(cap.explain())
            result = got = None
            stale = _forget_sessions_of_closed_loops() if case.get("coroutine") else 0
            if stale:
                lingering.setdefault("unclosed_sessions", {})[v.key] = stale
            stayed = _settle(exclude)
            if stayed:
                lingering.setdefault("processes", {})[v.key] = stayed
    return _make_result(case, items, variants, times, explains, errors, lingering, repeat)


def _choice_of(line):
    """"... → process, 2 workers, chunks of 62,500" -> "process, 2 workers, chunks of 62,500"."""
    if not line:
        return None
    for arrow in ("→", "->"):
        if arrow in line:
            return line.rsplit(arrow, 1)[1].strip()
    return line


def _make_result(case, items, variants, times, explains, errors, lingering, repeat):
    n = len(items)
    cells = {}
    for v in variants:
        runs = times[v.key]
        cell = {"label": v.label, "kind": v.kind, "status": "ok", "best_s": None,
                "all_s": runs, "us_per_item": None, "speedup": None}
        if v.key in errors:
            cell["status"] = f"error: {errors[v.key]}"
        elif runs:
            best = min(runs)
            cell["best_s"] = best
            cell["us_per_item"] = best / n * 1e6 if n else None
            cell["best_run"] = runs.index(best)
        else:
            cell["status"] = "no run"
        cells[v.key] = cell
    seq = cells.get(case["baseline"], {}).get("best_s")
    for cell in cells.values():
        if cell["best_s"] and seq:
            cell["speedup"] = seq / cell["best_s"]

    auto = cells.get("auto", {})
    auto_lines = explains.get("auto", [])
    best_line = auto_lines[auto["best_run"]] if auto.get("best_s") else None
    choices = [_choice_of(line) for line in auto_lines]
    picked = [c.split(",")[0].strip() if c else "?" for c in choices]
    fixed = {k: c["best_s"] for k, c in cells.items() if c["kind"] == "fixed" and c["best_s"]}
    best_fixed = min(fixed, key=fixed.get) if fixed else None
    auto_vs_best = (auto["best_s"] / fixed[best_fixed]
                    if auto.get("best_s") and best_fixed else None)

    goals = []
    limit = case["auto_limit"]
    goals.append(_goal(
        f"auto within {round((limit - 1) * 100)}% of the best fixed mode's time",
        None if auto_vs_best is None else auto_vs_best <= limit,
        None if auto_vs_best is None else
        f"auto {auto_vs_best:.2f}x the time of {best_fixed} (limit {limit:.2f}x)",
        "auto or every fixed mode failed"))
    auto_t = auto.get("best_s")
    if case["name"] in ("primes_small", "tiny"):
        ratio = auto_t / seq if (auto_t and seq) else None
        goals.append(_goal(
            f"auto at most {round((GOAL_AUTO_VS_SEQ - 1) * 100)}% slower than the list comprehension",
            None if ratio is None else ratio <= GOAL_AUTO_VS_SEQ,
            None if ratio is None else
            f"auto {ratio:.2f}x the list comprehension's time (limit {GOAL_AUTO_VS_SEQ:.2f}x)",
            "auto or the list comprehension failed"))
    if case["name"] == "primes_large":
        speedup = seq / auto_t if (auto_t and seq) else None
        goals.append(_goal(
            f"auto at least {GOAL_PRIMES_LARGE_SPEEDUP}x the list comprehension's speed, "
            f"pool start included",
            None if speedup is None else speedup >= GOAL_PRIMES_LARGE_SPEEDUP,
            None if speedup is None else
            f"auto {speedup:.2f}x the list comprehension's speed (target ≥ {GOAL_PRIMES_LARGE_SPEEDUP}x)",
            "auto or the list comprehension failed"))

    notes = []
    if len(set(picked)) > 1:
        notes.append("auto's choice differed between repeats: " + ", ".join(picked))
    if auto_t is not None and not any(auto_lines):
        notes.append('braid.map logged no explain line to the "braid" logger at INFO')
    for key, count in lingering.get("processes", {}).items():
        notes.append(f"{cells[key]['label']}: {count} child process(es) still running "
                     f"{SETTLE_TIMEOUT:.0f} s after it returned")
    for key, count in lingering.get("unclosed_sessions", {}).items():
        notes.append(f"{cells[key]['label']}: its event loop closed without shutting down "
                     f"async generators, leaving {count} aiohttp session(s) unclosed")
    return {
        "case": case["name"],
        "letter": case["letter"],
        "title": case["title"],
        "n": n,
        "repeats": repeat,
        "baseline": case["baseline"],
        "variants": cells,
        "auto": {"explain": best_line, "choice": _choice_of(best_line),
                 "explain_all": auto_lines, "picked": picked},
        "best_fixed": best_fixed,
        "auto_vs_best_fixed": auto_vs_best,
        "goals": goals,
        "notes": notes,
    }


def _goal(text, met, result, why_unchecked):
    return {"goal": text, "met": met, "result": result if met is not None else why_unchecked}


def run_cases(names, *, quick, repeat, braid_mod, timeout=None, on_case=None, on_progress=None):
    """Runs the named cases (starting the HTTP server if one needs it); returns their results."""
    cases = build_cases(quick, braid_mod)
    timeout = timeout or RUN_TIMEOUT[1 if quick else 0]
    server = None
    out = []
    try:
        for name in names:
            case = cases[name]
            missing = _missing(case)
            if case.get("server") and server is None and not missing:
                try:
                    server = Server()
                except (OSError, RuntimeError) as exc:
                    missing = f"error: {exc}"
            if missing:
                result = {"case": name, "letter": case["letter"], "title": case["title"],
                          "skipped": missing, "variants": {}, "goals": [], "notes": []}
            else:
                _prepare(case, braid_mod)
                result = run_case(case, repeat=repeat, timeout=timeout,
                                  server=server if case.get("server") else None,
                                  exclude={server.pid} if server is not None else set(),
                                  on_progress=on_progress)
            out.append(result)
            if on_case is not None:
                on_case(result)
    finally:
        if server is not None:
            server.close()
    return out


def _prepare(case, braid_mod):
    """Outside the clock, what a user's program has done before its map: the imports at
    the top of its file (the client libraries), and braid.map's own first-call imports."""
    import asyncio  # noqa: F401
    import concurrent.futures  # noqa: F401
    import multiprocessing  # noqa: F401

    if case["name"] == "http":
        try:
            import requests  # noqa: F401
        except ImportError:
            import urllib.request  # noqa: F401
    if case["name"] == "fetch_async":
        import aiohttp  # noqa: F401
    braid_mod.map(square, [1, 2, 3], mode="sequential")


def _missing(case):
    if case["name"] == "fetch_async":
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            return "aiohttp not installed (pip install aiohttp)"
    return None


# ------------------------------------------------------------------ output

def _version_of(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return None


def environment(command, braid_mod, *, repeat, quick, timeout):
    requests_version = _version_of("requests")
    return {
        **_bench.machine(),
        "command": command,
        "braid": getattr(braid_mod, "__version__", "unknown"),
        "repeat": repeat,
        "quick": quick,
        "run_timeout_s": timeout,
        "http_client": (f"requests {requests_version}, a requests.Session per thread"
                        if requests_version else "urllib.request.urlopen (requests not installed)"),
        "aiohttp": _version_of("aiohttp"),
        "thread_workers": min(32, (_usable_cpus() + 4)),
        "process_workers": _usable_cpus(),
        "editable_install": any(name.endswith("_editable_loader") for name in sys.modules),
        "bytecode_cache_off": bool(sys.dont_write_bytecode),
        "interpreter_start_s": _start_time(["-c", "pass"]),
        "worker_import_s": _start_time(["-c", "import braid.bench.map"]),
    }


def _start_time(args, runs=3):
    """Best wall time of `python ARGS` in a fresh interpreter (what a new worker process
    pays before its first task), or None if it fails."""
    import subprocess

    best = None
    for _ in range(runs):
        t0 = time.perf_counter()
        try:
            subprocess.run([sys.executable, *args], check=True, timeout=60,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            return None
        took = time.perf_counter() - t0
        best = took if best is None else min(best, took)
    return best


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def format_header(env):
    cpus = f"{env['cpu_count']} CPUs"
    if env["cpus_usable"] is not None and env["cpus_usable"] != env["cpu_count"]:
        cpus += f" ({env['cpus_usable']} usable)"
    gil = "" if env["gil"] else ", free-threaded"
    start = []
    if env["worker_import_s"] is not None and env["interpreter_start_s"] is not None:
        start.append(f"a fresh interpreter starts in {env['interpreter_start_s']:.3f} s and "
                     f"imports braid.bench.map (what a braid worker runs) in "
                     f"{env['worker_import_s']:.3f} s")
    if env["editable_install"]:
        start.append("braid is an editable install (meson-python runs a rebuild check "
                     "at each process's import of braid)")
    if env["bytecode_cache_off"]:
        start.append("bytecode caching is off (PYTHONDONTWRITEBYTECODE): modules "
                     "without a .pyc are compiled in every process")
    return "\n".join([
        "braid.map (auto and each fixed mode) against the plain Python a user writes",
        f"python {env['python']} ({env['implementation']}{gil}), {env['platform']}, {cpus}; "
        f"braid {env['braid']}",
        f"command: {env['command']}",
        f"http client: {env['http_client']}; async client: aiohttp "
        f"{env['aiohttp'] or 'not installed'}, a ClientSession per event loop; server: an asyncio "
        f"Protocol HTTP/1.1 responder in its own process",
        f"best of {env['repeat']} repeat(s), variants interleaved; every pooled timing includes "
        f"the pool's start; results checked against an independent reference; each run stopped "
        f"after {env['run_timeout_s']:.0f} s"
        + ("; --quick: smaller N, goals indicative" if env["quick"] else ""),
        *(["process start: " + "; ".join(start)] if start else []),
    ])


FOOTER = ("speedup = the sequential baseline's time / this variant's time (above 1: faster); "
          "auto/best = auto's time / the fastest fixed mode's")

_W = (58, 9, 10, 8)


def _num(value):
    if value is None:
        return "-"
    if value < 9.9995:
        return f"{value:.3f}"
    return f"{value:.2f}" if value < 999.995 else f"{value:.1f}"


def format_case(res):
    """A block of text for one case."""
    head = f"({res['letter']}) {res['case']}: {res['title']}"
    if res.get("skipped"):
        return f"{head}\n  skipped: {res['skipped']}\n"
    out = [f"{head}  [{_fmt_int(res['n'])} items, best of {res['repeats']}]"]
    base = res["variants"].get(res["baseline"], {}).get("label", res["baseline"])
    out.append(f"  sequential baseline: {base}")
    out.append("  " + "  ".join(["variant".ljust(_W[0]), "seconds".rjust(_W[1]),
                                 "µs/item".rjust(_W[2]), "speedup".rjust(_W[3])]))
    for key, cell in res["variants"].items():
        label = cell["label"].ljust(_W[0])
        if cell["status"] != "ok":
            out.append(f"  {label}  {cell['status']}")
            continue
        speed = "-" if cell["speedup"] is None else f"{cell['speedup']:.2f}x"
        out.append("  " + "  ".join([label, f"{cell['best_s']:.4f}".rjust(_W[1]),
                                     _num(cell["us_per_item"]).rjust(_W[2]), speed.rjust(_W[3])]))
    auto = res["auto"]
    if auto["explain"]:
        out.append(f"  auto chose: {auto['choice']}")
        out.append(f"    {auto['explain']}")
    elif res["variants"].get("auto", {}).get("best_s"):
        out.append("  auto chose: (not logged)")
    if res["auto_vs_best_fixed"] is not None:
        out.append(f"  auto/best: {res['auto_vs_best_fixed']:.2f}x (best fixed mode: "
                   f"{res['best_fixed']})")
    for note in res["notes"]:
        out.append(f"  note: {note}")
    for g in res["goals"]:
        verdict = {True: "goal met", False: "goal NOT met", None: "goal not checked"}[g["met"]]
        out.append(f"  -> {verdict}: {g['goal']}: {g['result']}")
    out.append("")
    return "\n".join(out)


def format_summary(results):
    out = ["goals:"]
    met = missed = unchecked = 0
    for res in results:
        for g in res.get("goals", []):
            mark = {True: "met    ", False: "NOT met", None: "unchecked"}[g["met"]]
            met += g["met"] is True
            missed += g["met"] is False
            unchecked += g["met"] is None
            out.append(f"  {mark}  ({res['letter']}) {res['case']}: {g['goal']} — {g['result']}")
    out.append(f"  {met} met, {missed} not met" + (f", {unchecked} not checked" if unchecked else ""))
    return "\n".join(out)


# ------------------------------------------------------------------ entry

def build_parser(prog=None):
    import argparse

    p = argparse.ArgumentParser(
        prog=prog or "python -m braid bench map",
        description="braid.map (auto and each fixed mode) against the plain Python a user "
                    "writes, side by side in one run.")
    p.add_argument("--quick", action="store_true",
                   help=f"short run for CI and smoke tests (smaller N, {QUICK_REPEAT} repeat "
                        f"unless given); under a minute")
    p.add_argument("--repeat", type=int, metavar="N",
                   help=f"repeats per case, best kept (default {DEFAULT_REPEAT})")
    p.add_argument("--cases", metavar="LIST", default=",".join(CASES),
                   help=f"comma-separated subset of: {', '.join(CASES)}, or their letters "
                        f"a-f (default: all)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help=f"seconds one timed run may take (default {RUN_TIMEOUT[0]:.0f}; "
                        f"--quick {RUN_TIMEOUT[1]:.0f})")
    p.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server's process
    return p


def _case_names(text):
    out = []
    for item in (c.strip() for c in text.split(",")):
        if not item:
            continue
        name = LETTERS.get(item.lower(), item)
        if name not in CASES:
            raise ValueError(item)
        if name not in out:
            out.append(name)
    return out


def main(argv=None, *, command=None):
    """Runs the benchmark; returns the exit status (0 ok, 1 braid.map missing or a
    variant failed, 2 bad arguments)."""
    return _bench.run_main(_main, argv, command)


def _main(argv, command):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.serve:
        return _serve()
    repeat = args.repeat if args.repeat is not None else (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be positive")
    try:
        names = _case_names(args.cases)
    except ValueError as exc:
        parser.error(f"unknown case {exc}; choose from {', '.join(CASES)} (or a-f)")
    if command is None:
        command = _bench.command_line("map", argv)
    try:
        braid_mod = load_braid()
    except BraidMissing as exc:
        print(f"error: braid.map is not available: {exc}\n"
              f"Build and install braid first (pip install .).", file=sys.stderr)
        return 1

    timeout = args.timeout or RUN_TIMEOUT[1 if args.quick else 0]
    env = environment(command, braid_mod, repeat=repeat, quick=args.quick, timeout=timeout)
    run = dict(quick=args.quick, repeat=repeat, braid_mod=braid_mod, timeout=timeout)
    if args.json:
        import json

        results = run_cases(names, **run)
        json.dump({"benchmark": "map", "environment": env, "results": results},
                  sys.stdout, indent=2, ensure_ascii=False)
        print()
        return 1 if _failed(results) else 0

    print(format_header(env))
    print(FOOTER)
    print(flush=True)
    results = run_cases(names, on_case=lambda res: print(format_case(res), flush=True), **run)
    print(format_summary(results))
    failed = _failed(results)
    if failed:
        print("failed: " + "; ".join(failed))
    return 1 if failed else 0


def _failed(results):
    out = []
    for res in results:
        if str(res.get("skipped", "")).startswith("error"):
            out.append(f"{res['case']}: {res['skipped']}")
        for cell in res["variants"].values():
            if cell["status"].startswith("error"):
                out.append(f"{res['case']} {cell['label']}: {cell['status']}")
    return out


if __name__ == "__main__":
    # Run as a script (or as the HTTP server's process): use the importable module's
    # functions, so workers that unpickle braid.bench.map.<fn> find the same code.
    from braid.bench.map import main as _main_entry

    sys.exit(_main_entry())
