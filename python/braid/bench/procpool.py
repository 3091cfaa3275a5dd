"""braid.ProcessPool against the process pools people use today, in one run.

    python -m braid bench procpool [--quick] [--repeat N] [--cases LIST] [--json]

Contenders, side by side: braid.ProcessPool, concurrent.futures.ProcessPoolExecutor,
multiprocessing.Pool, loky (loky.ProcessPoolExecutor) and mpire (WorkerPool).
loky, mpire and numpy come from braid's "bench" extra (pip install braid[bench]);
a peer that is not installed shows "not installed" in its cells and the rest
runs. Every pool gets the same number of workers and the same work, with its
library's defaults otherwise (start method, pickler, chunking), except where a
row says so.

Within every case the contenders are interleaved repeat by repeat (braid,
ProcessPoolExecutor, ..., then the reverse order), so a machine that slows
down or speeds up during the run shifts all alike, and the best (smallest)
time of the repeats is kept for each. Each timed run gets a fresh pool whose
workers have all been started and have run a few tasks (numpy imported too,
where the case needs it) before the clock starts; it is shut down after the
clock stops, and its results are checked then, so a broken pool cannot show a
fast figure. CPU time is given for this process (all its threads) and for the
pool's worker processes (from /proc, 10 ms ticks), per task or item.

Cases (--quick, for CI, runs in about a minute: 1,000 round trips,
2,000 tasks, 100,000 items, primes to 300,000, arrays of 1 and 64 MiB,
primes_e2e to 300,000, 20,000 floor trips and 3 repeats; a full run takes
several minutes, most of it in the 1 GiB row):

  roundtrip  pool.submit(noop).result() one at a time, 2,000 times
             (Pool and mpire: apply_async(noop).get()), next to the
             round-trip floor (the floor case's first row, same trips),
             interleaved with the pools; the goal is against that floor
  bulk       submit 10,000 no-op tasks, then collect every result
             (Pool and mpire: apply_async)
  map        list(pool.map(inc, range(1,000,000))) with each pool's default
             chunking; ProcessPoolExecutor and loky default to chunksize=1,
             which is very slow, so they get multiprocessing.Pool's choice
  primes     the seed's is_prime (trial division up to sqrt) over
             1..2,000,000 with 2 workers, pool.map with default chunking
             (ProcessPoolExecutor and loky again get Pool's chunksize),
             against the same loop run sequentially in this process
  arrays     a numpy array of 1 MiB, 64 MiB and 1 GiB sent to a task that
             returns it (there and back); 1 GiB only with at least 8 GiB of
             MemAvailable, and best of 3 at most (each trip takes seconds)
  shared     the same with braid.shared_array (braid only; run only when
             braid has shared_array)

The cases below time what the warm-pool cases leave out (_procpool_cold.py
has the details). Their contenders are braid, ProcessPoolExecutor,
multiprocessing.Pool and loky (not mpire):

  startup    a fresh pool's first result (task os.getpid), pool creation
             included, each contender in a FRESH child Python process (no
             warm template, no import cached by an earlier contender):
             braid, ProcessPoolExecutor with mp_context spawn, forkserver
             and fork, multiprocessing.Pool with its default context and
             with spawn, loky; against a bare interpreter start
             (python -c pass, a child too) in the same run; also the
             child's import of the pool class, its shutdown and its whole
             wall time
  respawn    a warm pool of one worker, in a fresh child process; a task
             calls os._exit(1); the time until a replacement worker gives
             the next task's result (3 kills per child, best kept);
             ProcessPoolExecutor breaks, so its row times a new executor
  primes_e2e the tutorial's own primes code (chunks of len // cpu_count,
             pool.map(check_numbers_chunk, chunks)) with the pool created
             inside the clock, over range(1, 100,000) and
             range(1, 1,000,000): multiprocessing.Pool as written, braid
             and ProcessPoolExecutor in its place, and each pool's own
             map(is_prime, numbers); against the sequential loop
  floor      two processes handing a turn back and forth through eventfds
             with blocking reads (procpool_c/pingpong.c, compiled with cc
             on first use and cached), 100,000 round trips; with, for
             comparison, the same on one CPU, two processes spinning on a
             shared counter, and the same ping-pong in Python

The ratio printed is contender time / braid time: above 1 means braid is
faster. The goals printed with each case are braid's targets from the
process-pool issue, with the figures the issue quotes for the others; each
is checked against this run and reported as met or not.
"""

import argparse
import concurrent.futures
import gc
import json
import multiprocessing
import os
import platform
import sys
import time

import braid.bench as _bench
from braid.bench import BraidMissing

DEFAULT_REPEAT = 5
QUICK_REPEAT = 3

# (default, --quick)
ROUNDTRIP_TASKS = (2_000, 1_000)
BULK_TASKS = (10_000, 2_000)
MAP_ITEMS = (1_000_000, 100_000)
PRIME_LIMIT = (2_000_000, 300_000)
ARRAY_MIB = ((1, 64, 1024), (1, 64))

PRIME_WORKERS = 2
BIG_ARRAY_MIN_AVAILABLE = 8 << 30  # bytes of MemAvailable needed for arrays of 1 GiB
BIG_ARRAY_REPEAT = 3  # at most this many repeats for arrays of 1 GiB or more (seconds each)
WARM_TIMEOUT = 60.0  # seconds for a pool to start all its workers

CASES = ("roundtrip", "bulk", "map", "primes", "arrays", "shared",
         "startup", "respawn", "primes_e2e", "floor")
COLD_CASES = ("startup", "respawn", "primes_e2e", "floor")  # in braid/bench/_procpool_cold.py
CONTENDERS = ("braid", "ppe", "pool", "loky", "mpire")

BRAID_NAME = "braid.ProcessPool"


def load_braid():
    """The braid module, with its ProcessPool; BraidMissing says why not."""
    return _bench.load_braid("ProcessPool")


def default_workers():
    """braid.ProcessPool's own default (the CPUs this process may use), given to every pool."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def mem_available():
    """MemAvailable from /proc/meminfo in bytes, or None where there is none."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# ------------------------------------------------------------------ the work
# Module-level functions, so every pool pickles them by reference as
# braid.bench.procpool.<name> and its workers import this module.

def _noop():
    return None


def _inc(x):
    return x + 1


def _ident(x):
    return x


from ._tutorial import is_prime  # noqa: E402 -- the seed's CPU-bound task, unchanged


def _warm(delay, want_numpy):
    """Warm-up task: imports numpy if asked, holds its worker a moment (so the
    next warm-up task goes to another one) and says which worker it ran on."""
    if want_numpy:
        try:
            import numpy  # noqa: F401
        except ImportError:
            pass
    time.sleep(delay)
    return os.getpid()


# ------------------------------------------------------------------ contenders

class Contender:
    """One pool library behind a small common face.

    style "executor": submit(fn, *args) -> future with .result();
    style "apply": apply_async(fn, args) -> result with .get();
    style "inline": no pool, the work runs in this process (the sequential
    baseline of the primes case).
    """

    def __init__(self, key, label, style, make=None, close=None, version=None,
                 start_method=None, missing=None):
        self.key = key
        self.label = label
        self.style = style
        self.make = make
        self.close = close
        self.version = version
        self.start_method = start_method
        self.missing = missing  # None, or why it cannot be measured ("not installed")


def _version_of(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return None


def _shutdown(pool):
    pool.shutdown(wait=True)


def _close_mp_pool(pool):
    pool.close()
    pool.join()


def _close_mpire(pool):
    pool.stop_and_join()
    pool.terminate()


def make_contenders(braid_mod, keys=CONTENDERS):
    """The contenders named in keys, in that order; braid_mod None leaves braid out."""
    out = []
    for key in keys:
        if key == "braid":
            if braid_mod is None:
                continue
            out.append(Contender(
                "braid", BRAID_NAME, "executor",
                make=lambda w: braid_mod.ProcessPool(max_workers=w), close=_shutdown,
                version=getattr(braid_mod, "__version__", "unknown"),
                start_method="forked from a template"))
        elif key == "ppe":
            out.append(Contender(
                "ppe", "ProcessPoolExecutor", "executor",
                make=lambda w: concurrent.futures.ProcessPoolExecutor(max_workers=w),
                close=_shutdown, version=platform.python_version(),
                start_method=multiprocessing.get_start_method()))
        elif key == "pool":
            out.append(Contender(
                "pool", "multiprocessing.Pool", "apply",
                make=lambda w: multiprocessing.Pool(processes=w), close=_close_mp_pool,
                version=platform.python_version(),
                start_method=multiprocessing.get_start_method()))
        elif key == "loky":
            try:
                import loky
            except ImportError:
                out.append(Contender("loky", "loky", "executor", missing="not installed"))
                continue
            out.append(Contender(
                "loky", "loky", "executor",
                make=lambda w: loky.ProcessPoolExecutor(max_workers=w), close=_shutdown,
                version=getattr(loky, "__version__", None) or _version_of("loky"),
                start_method="loky"))
        elif key == "mpire":
            try:
                import mpire
            except ImportError:
                out.append(Contender("mpire", "mpire", "apply", missing="not installed"))
                continue
            try:
                from mpire.context import DEFAULT_START_METHOD as mpire_start
            except ImportError:
                mpire_start = "default"
            # keep_alive: without it mpire stops its workers at the end of every map().
            out.append(Contender(
                "mpire", "mpire", "apply",
                make=lambda w: mpire.WorkerPool(n_jobs=w, keep_alive=True), close=_close_mpire,
                version=_version_of("mpire"), start_method=mpire_start))
        else:
            raise ValueError(f"unknown contender {key!r}")
    return out


SEQUENTIAL = Contender("sequential", "sequential (this process)", "inline")


# ------------------------------------------------------------------ the timed runs
# run(contender, pool, part) does the timed work and returns what check()
# looks at after the clock has stopped.

def _run_roundtrip(c, pool, part):
    n = part["n"]
    if c.style == "executor":
        submit = pool.submit
        for _ in range(n):
            submit(_noop).result()
    else:
        apply = pool.apply_async
        for _ in range(n):
            apply(_noop).get()
    return n


def _run_bulk(c, pool, part):
    n = part["n"]
    if c.style == "executor":
        submit = pool.submit
        futures = [submit(_noop) for _ in range(n)]
        return [f.result() for f in futures]
    apply = pool.apply_async
    handles = [apply(_noop) for _ in range(n)]
    return [h.get() for h in handles]


def _check_roundtrip(result, part):
    return None if result == part["n"] else f"expected {part['n']} round trips, got {result!r}"


def _check_bulk(result, part):
    n = part["n"]
    if len(result) == n and all(r is None for r in result):
        return None
    return f"expected {n} results of None, got {len(result)} (or other values)"


def _run_map(c, pool, part):
    n = part["n"]
    chunksize = part["chunksize"].get(c.key)
    if chunksize is not None:
        return list(pool.map(_inc, range(n), chunksize=chunksize))
    return list(pool.map(_inc, range(n)))


def _check_map(result, part):
    n = part["n"]
    if result == list(range(1, n + 1)):
        return None
    return f"map results differ from range(1, {n + 1}) (length {len(result)})"


def _run_primes(c, pool, part):
    n = part["n"]
    if c.style == "inline":
        return [is_prime(k) for k in range(1, n + 1)]
    chunksize = part["chunksize"].get(c.key)
    if chunksize is not None:
        return list(pool.map(is_prime, range(1, n + 1), chunksize=chunksize))
    return list(pool.map(is_prime, range(1, n + 1)))


def _check_primes(result, part):
    want = part["ctx"].get("primes")
    if want is None:  # computed once per case, here in this process, after the clock
        want = part["ctx"]["primes"] = [is_prime(k) for k in range(1, part["n"] + 1)]
    if result == want:
        return None
    return f"is_prime results differ from the sequential ones (length {len(result)})"


def _run_array(c, pool, part):
    arr = part["ctx"]["arrays"][part["size"]]
    k = part["n"]
    res = None
    if c.style == "executor":
        for _ in range(k):
            res = None  # let go of the last result first: 1 GiB counts
            res = pool.submit(_ident, arr).result()
    else:
        for _ in range(k):
            res = None
            res = pool.apply_async(_ident, (arr,)).get()
    return res


def _check_array(result, part):
    import numpy as np

    arr = part["ctx"]["arrays"][part["size"]]
    if result is arr:
        return "the task's result is the very object sent (nothing crossed)"
    if result is None or getattr(result, "shape", None) != arr.shape or result.dtype != arr.dtype:
        return f"expected an array {arr.shape} {arr.dtype}, got {type(result).__name__}"
    if not np.array_equal(result, arr):
        return "the array came back with different contents"
    return None


# ------------------------------------------------------------------ measuring

def _proc_cpu(pids):
    """CPU seconds (user + system) used so far by the processes pids, from
    /proc; None where that cannot be read."""
    if not pids:
        return None
    try:
        tick = os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return None
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / tick


def _warm_up(c, pool, workers, want_numpy):
    """Runs tasks until every one of the pool's `workers` processes has run one
    (each warm-up task holds its worker 10 ms, so they spread), then a few
    no-op tasks more. Returns the workers' pids."""
    pids = set()
    deadline = time.monotonic() + WARM_TIMEOUT
    delay = 0.01
    while len(pids) < workers and time.monotonic() < deadline:
        if c.style == "executor":
            handles = [pool.submit(_warm, delay, want_numpy) for _ in range(2 * workers)]
            pids.update(h.result(timeout=WARM_TIMEOUT) for h in handles)
        else:
            handles = [pool.apply_async(_warm, (delay, want_numpy)) for _ in range(2 * workers)]
            pids.update(h.get(timeout=WARM_TIMEOUT) for h in handles)
        delay = min(delay * 2, 0.2)
    for _ in range(4):
        if c.style == "executor":
            for h in [pool.submit(_noop) for _ in range(workers)]:
                h.result(timeout=WARM_TIMEOUT)
        else:
            for h in [pool.apply_async(_noop) for _ in range(workers)]:
                h.get(timeout=WARM_TIMEOUT)
    return pids


def _measure(c, case):
    """One timed run of every part of case on a fresh, warmed-up pool of c
    (no pool at all when case has no parts left).

    Returns {part key: (wall s, CPU s of this process, CPU s of the workers or
    None)}; raises AssertionError when a result is wrong. An "external" contender (the
    round-trip floor, a program of its own) measures itself."""
    if not case["parts"]:
        return {}
    if c.style == "external":
        return {part["key"]: c.measure(part) for part in case["parts"]}
    pool = None if c.style == "inline" else c.make(case["workers"])
    out = {}
    try:
        pids = set()
        if pool is not None:
            pids = _warm_up(c, pool, case["workers"], case.get("numpy", False))
        for part in case["parts"]:
            gc.collect()
            w0 = _proc_cpu(pids)
            c0 = time.process_time()
            t0 = time.perf_counter()
            result = part["run"](c, pool, part)
            wall = time.perf_counter() - t0
            cpu = time.process_time() - c0
            w1 = _proc_cpu(pids)
            problem = part["check"](result, part)
            result = None
            if problem:
                raise AssertionError(f"wrong result: {problem}")
            wcpu = None if (w0 is None or w1 is None) else w1 - w0
            out[part["key"]] = (wall, cpu, wcpu)
    finally:
        if pool is not None:
            c.close(pool)
    return out


# ------------------------------------------------------------------ the cases

def _pool_chunksize(n, workers):
    """The chunksize multiprocessing.Pool.map picks for n items on `workers` processes."""
    chunksize, extra = divmod(n, workers * 4)
    return chunksize + 1 if extra else chunksize


def _fmt_int(n):
    return f"{n:,}"


def _fmt_size(mib):
    return f"{mib // 1024} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"


def _goal_at_most(limit_us, what):
    def goal(best):
        b = best.get("braid")
        if b is None:
            return None, "braid not measured"
        return b <= limit_us, f"braid {b:.2f} µs {'≤' if b <= limit_us else '>'} {limit_us} µs {what}"
    return goal


def _goal_map(best):
    b, p = best.get("braid"), best.get("pool")
    if b is None or p is None:
        return None, "braid or multiprocessing.Pool not measured"
    return b <= p, f"braid {b:.3f} µs/item vs Pool.map {p:.3f} µs/item ({p / b:.2f}x)"


def _goal_speedup(seq_key, target):
    def goal(best):
        b, s = best.get("braid"), best.get(seq_key)
        if b is None or s is None:
            return None, "braid or the sequential run not measured"
        speedup = s / b
        return speedup >= target, f"braid {speedup:.2f}x the sequential speed (target ≥ {target}x)"
    return goal


def _goal_vs_ppe(factor):
    def goal(best):
        b, p = best.get("braid"), best.get("ppe")
        if b is None or p is None:
            return None, "braid or ProcessPoolExecutor not measured"
        return p / b >= factor, (f"ProcessPoolExecutor time / braid time = {p / b:.2f}x "
                                 f"(target ≥ {factor}x)")
    return goal


def _goal_flat_ms(limit_ms):
    def goal(best):
        b = best.get("braid")
        if b is None:
            return None, "braid not measured"
        return b <= limit_ms, f"braid {b:.3f} ms per round trip (target ≤ {limit_ms} ms)"
    return goal


def _goal_vs_floor(best):
    from braid.bench import _procpool_cold

    return _procpool_cold.goal_vs_floor(best)


def build_cases(quick, workers, sizes_mib, ctx):
    """The case table: each case has the workers its pools get, the contender
    keys it runs (plus "sequential" for primes) and its parts (rows), timed
    one after another on the same pool."""
    q = 1 if quick else 0
    n_rt, n_bulk, n_map, n_primes = ROUNDTRIP_TASKS[q], BULK_TASKS[q], MAP_ITEMS[q], PRIME_LIMIT[q]
    map_chunk = _pool_chunksize(n_map, workers)
    prime_chunk = _pool_chunksize(n_primes, PRIME_WORKERS)
    cases = {
        "roundtrip": dict(workers=workers, floor=ctx.get("floor"), parts=[dict(
            key="roundtrip", title="no-op round trip: submit(noop).result(), one at a time",
            n=n_rt, unit="µs/task", scale=1e6, run=_run_roundtrip, check=_check_roundtrip,
            goal_text="braid ≤ 1.5x the eventfd ping-pong floor measured in this run "
                      "(was ≤ 20 µs; issue: ProcessPoolExecutor ~370 µs)",
            goal=_goal_vs_floor,
            labels={"pool": "multiprocessing.Pool (apply_async().get())",
                    "mpire": "mpire (apply_async().get())"})]),
        "bulk": dict(workers=workers, parts=[dict(
            key="bulk", title=f"no-op tasks in flight: submit {_fmt_int(n_bulk)}, then collect all",
            n=n_bulk, unit="µs/task", scale=1e6, run=_run_bulk, check=_check_bulk,
            goal_text="braid ≤ 5 µs per task (issue: ProcessPoolExecutor ~91 µs, "
                      "Pool chunksize=1 ~36 µs)",
            goal=_goal_at_most(5, "per task"),
            labels={"pool": "multiprocessing.Pool (apply_async)",
                    "mpire": "mpire (apply_async)"})]),
        "map": dict(workers=workers, parts=[dict(
            key="map", title=f"map(inc, range({_fmt_int(n_map)})), default chunking",
            n=n_map, unit="µs/item", scale=1e6, run=_run_map, check=_check_map,
            chunksize={"ppe": map_chunk, "loky": map_chunk},
            goal_text="braid not slower than multiprocessing.Pool.map",
            goal=_goal_map,
            note=f"ProcessPoolExecutor and loky default to chunksize=1; they get "
                 f"chunksize={map_chunk}, Pool.map's choice",
            labels={"ppe": f"ProcessPoolExecutor (chunksize={map_chunk})",
                    "loky": f"loky (chunksize={map_chunk})"})]),
        "primes": dict(workers=PRIME_WORKERS, sequential=True, parts=[dict(
            key="primes", title=f"the seed's is_prime over 1..{_fmt_int(n_primes)}, "
                                f"pool.map with default chunking",
            n=n_primes, unit="µs/item", scale=1e6, run=_run_primes, check=_check_primes,
            ctx=ctx, speedup=True, chunksize={"ppe": prime_chunk, "loky": prime_chunk},
            goal_text="braid ≥ 1.85x the sequential speed (issue: multiprocessing.Pool 1.15-1.39x)",
            goal=_goal_speedup("sequential", 1.85),
            note=f"ProcessPoolExecutor and loky get chunksize={prime_chunk}, Pool.map's choice "
                 f"(their default of 1 takes ~60 µs per item)",
            labels={"ppe": f"ProcessPoolExecutor (chunksize={prime_chunk})",
                    "loky": f"loky (chunksize={prime_chunk})"})]),
    }
    parts = []
    for mib in sizes_mib:
        k = 16 if mib <= 1 else (2 if mib <= 64 else 1)
        goal = _goal_vs_ppe(10) if mib >= 64 else None
        parts.append(dict(
            max_repeat=BIG_ARRAY_REPEAT if mib >= 1024 else None,
            key=f"array_{mib}", title=f"numpy array of {_fmt_size(mib)} there and back "
                                      f"(submit(identity, arr).result())",
            n=k, unit="ms/trip", scale=1e3, run=_run_array, check=_check_array,
            size=mib, ctx=ctx, goal=goal,
            goal_text=("braid ≥ 10x faster than ProcessPoolExecutor" if goal else None)))
    cases["arrays"] = dict(workers=workers, numpy=True, parts=parts)
    shared_parts = []
    for mib in sizes_mib:
        shared_parts.append(dict(
            max_repeat=BIG_ARRAY_REPEAT if mib >= 1024 else None,
            key=f"shared_{mib}", title=f"braid.shared_array of {_fmt_size(mib)} there and back",
            n=16 if mib <= 64 else 2, unit="ms/trip", scale=1e3, run=_run_array, check=_check_array,
            size=mib, ctx=ctx, goal=_goal_flat_ms(1), goal_text="braid ≤ 1 ms, flat in size"))
    cases["shared"] = dict(workers=workers, numpy=True, only=("braid",), parts=shared_parts)
    return cases


def _make_arrays(sizes_mib, shared_with=None):
    """{MiB: array of that many bytes (int64, distinct values)}; in braid's
    shared memory when shared_with is the braid module."""
    import numpy as np

    arrays = {}
    for mib in sizes_mib:
        n = (mib << 20) // 8
        if shared_with is None:
            arrays[mib] = np.arange(n, dtype=np.int64)
        else:
            a = shared_with.shared_array((n,), np.int64)
            a[:] = np.arange(n, dtype=np.int64)
            arrays[mib] = a
    return arrays


def run_cases(names, *, quick, repeat, workers, sizes_mib, braid_mod, contender_keys=CONTENDERS,
              on_case=None, on_progress=None):
    """Runs the named cases; returns one dict per row (part) of the table.

    braid_mod is the braid module, or None to measure the others alone.
    on_case(rows) is called as each case is finished (to print progressively).
    """
    contenders = make_contenders(braid_mod, contender_keys)
    ctx = {}
    if "roundtrip" in names:
        from braid.bench import _procpool_cold

        ctx["floor"] = _procpool_cold.floor_contender()  # compiles it (once, then cached)
    cases = build_cases(quick, workers, sizes_mib, ctx)
    all_rows = []
    for name in names:
        if name in COLD_CASES:
            from braid.bench import _procpool_cold

            rows = _procpool_cold.run_case(
                name, quick=quick, repeat=repeat, workers=workers, braid_mod=braid_mod,
                contender_keys=list(contender_keys), on_progress=on_progress)
            all_rows.extend(rows)
            if on_case is not None:
                on_case(rows)
            continue
        case = cases[name]
        skip = _skip_reason(name, case, braid_mod, sizes_mib)
        if skip is not None:
            rows = [_skipped_row(name, part, case["workers"], skip) for part in case["parts"]]
        else:
            try:
                _prepare(name, case, ctx, braid_mod, sizes_mib)
                rows = _run_case(name, case, contenders, repeat, on_progress)
            finally:
                ctx.pop("arrays", None)
                ctx.pop("primes", None)
                gc.collect()
        all_rows.extend(rows)
        if on_case is not None:
            on_case(rows)
    return all_rows


def _skip_reason(name, case, braid_mod, sizes_mib):
    if name in ("arrays", "shared"):
        try:
            import numpy  # noqa: F401
        except ImportError:
            return "numpy not installed"
        if not sizes_mib:
            return "no array sizes"
    if name == "shared":
        if braid_mod is None:
            return "braid not measured"
        if not hasattr(braid_mod, "shared_array"):
            return "this braid has no shared_array"
    return None


def _prepare(name, case, ctx, braid_mod, sizes_mib):
    """Allocates the arrays of an array case (before any pool of it exists) and
    drops the sizes that would not fit in memory."""
    if name not in ("arrays", "shared"):
        return
    avail = mem_available()
    big = [m for m in sizes_mib if (m << 20) >= (1 << 30)]
    if big and avail is not None and avail < BIG_ARRAY_MIN_AVAILABLE:
        for part in case["parts"]:
            if part["size"] in big:
                part["skip"] = (f"MemAvailable {avail / (1 << 30):.1f} GiB "
                                f"< {BIG_ARRAY_MIN_AVAILABLE >> 30} GiB")
    sizes = [p["size"] for p in case["parts"] if not p.get("skip")]
    ctx["arrays"] = _make_arrays(sizes, braid_mod if name == "shared" else None)


def _run_case(name, case, contenders, repeat, on_progress):
    only = case.get("only")
    todo = [c for c in contenders if only is None or c.key in only]
    if case.get("sequential"):
        todo = [SEQUENTIAL] + todo
    if case.get("floor") is not None:
        todo = [case["floor"]] + todo
    live = [c for c in todo if c.missing is None]
    parts = [p for p in case["parts"] if not p.get("skip")]
    times = {c.key: {p["key"]: [] for p in parts} for c in live}
    errors = {}
    for r in range(repeat):
        # Alternate who goes first, so none always runs on a cooler (or warmer) machine.
        order = live if r % 2 == 0 else live[::-1]
        for c in order:
            now = [p for p in parts if not p.get("max_repeat") or r < p["max_repeat"]]
            if c.key in errors or not now:
                continue
            if on_progress is not None:
                on_progress(f"{name}: {c.label}, repeat {r + 1}/{repeat}")
            try:
                got = _measure(c, dict(case, parts=now))
            except AssertionError as exc:  # a wrong result: reported in its cells
                errors[c.key] = str(exc)
            except Exception as exc:  # a crash: reported in its cells, the others go on
                errors[c.key] = f"{type(exc).__name__}: {exc}"
            else:
                for key, value in got.items():
                    times[c.key][key].append(value)
    rows = []
    for part in case["parts"]:
        if part.get("skip"):
            rows.append(_skipped_row(name, part, case["workers"], part["skip"]))
            continue
        cells = {}
        for c in todo:
            if c.missing is not None:
                cells[c.key] = _cell(c, part, status=c.missing)
            elif c.key in errors:
                cells[c.key] = _cell(c, part, status=f"error: {errors[c.key]}")
            else:
                cells[c.key] = _cell(c, part, runs=times[c.key][part["key"]])
        repeats = min(repeat, part.get("max_repeat") or repeat)
        rows.append(_make_row(name, part, case["workers"], cells, repeats))
    return rows


def _cell(c, part, status=None, runs=None):
    label = part.get("labels", {}).get(c.key, c.label)
    cell = {"label": label, "status": status or "ok", "best_s": None, "per_op": None,
            "cpu_per_op": None, "worker_cpu_per_op": None, "all_s": []}
    if runs:
        best = min(runs, key=lambda v: v[0])
        n, scale = part["n"], part["scale"]
        cell.update(
            best_s=best[0], per_op=best[0] / n * scale, cpu_per_op=best[1] / n * scale,
            worker_cpu_per_op=None if best[2] is None else best[2] / n * scale,
            all_s=[v[0] for v in runs])
    elif status is None:
        cell["status"] = "no run"
    return cell


def _make_row(name, part, workers, cells, repeats):
    braid = cells.get("braid", {}).get("best_s")
    seq = cells.get("sequential", {}).get("best_s")
    for cell in cells.values():
        t = cell["best_s"]
        cell["ratio"] = t / braid if (t and braid) else None
        if part.get("speedup"):
            cell["speedup"] = seq / t if (t and seq) else None
    best = {k: c["per_op"] for k, c in cells.items() if c["per_op"] is not None}
    if part.get("goal") is not None:
        met, text = part["goal"](best)
    else:
        met, text = None, None
    return {
        "case": name,
        "part": part["key"],
        "title": part["title"],
        "n": part["n"],
        "unit": part["unit"],
        "workers": workers,
        "repeats": repeats,
        "capped": bool(part.get("max_repeat")) and repeats == part["max_repeat"],
        "goal": part.get("goal_text"),
        "goal_met": met,
        "goal_result": text,
        "note": part.get("note"),
        "contenders": cells,
    }


def _skipped_row(name, part, workers, reason):
    return {"case": name, "part": part["key"], "title": part["title"], "n": part["n"],
            "unit": part["unit"], "workers": workers, "goal": part.get("goal_text"),
            "goal_met": None, "goal_result": None, "note": None, "skipped": reason,
            "contenders": {}}


# ------------------------------------------------------------------ output

def environment(command, contenders, *, workers, repeat, quick, sizes_mib):
    avail = mem_available()
    return {
        **_bench.machine(),
        "mem_available": avail,
        "command": command,
        "workers": workers,
        "prime_workers": PRIME_WORKERS,
        "repeat": repeat,
        "quick": quick,
        "array_mib": list(sizes_mib),
        "numpy": _version_of("numpy"),
        "contenders": {c.key: {"label": c.label, "version": c.version,
                               "start_method": c.start_method, "missing": c.missing}
                       for c in contenders},
    }


def format_header(env):
    cpus = f"{env['cpu_count']} CPUs"
    if env["cpus_usable"] is not None and env["cpus_usable"] != env["cpu_count"]:
        cpus += f" ({env['cpus_usable']} usable)"
    gil = "" if env["gil"] else ", free-threaded"
    mem = "" if env["mem_available"] is None else f", {env['mem_available'] / (1 << 30):.1f} GiB available"
    cs = env["contenders"]
    names = ", ".join(v["label"] for v in cs.values())
    versions = []
    for key, v in cs.items():
        if v["missing"]:
            versions.append(f"{v['label']} {v['missing']}")
        elif key in ("ppe", "pool"):
            versions.append(f"{v['label']} ({v['start_method']})")
        else:
            versions.append(f"{v['label']} {v['version']} ({v['start_method']})")
    if "braid" not in cs:
        versions.insert(0, f"{BRAID_NAME} not measured (--stdlib-only)")
    versions.append(f"numpy {env['numpy'] or 'not installed'}")
    return "\n".join([
        f"process pools side by side: {names}",
        f"python {env['python']} ({env['implementation']}{gil}), {env['platform']}, {cpus}{mem}",
        "; ".join(versions),
        f"command: {env['command']}",
        f"best of {env['repeat']} repeat(s), contenders interleaved; each timed run on a fresh pool "
        f"of {env['workers']} workers (primes: {env['prime_workers']}), started and warmed first, "
        f"results checked after" + ("; --quick: smaller N, goals indicative" if env["quick"] else ""),
    ])


_W = (44, 11, 9, 9, 10, 10)


def _num(value):
    if value is None:
        return "-"
    if value < 9.9995:
        return f"{value:.3f}"
    return f"{value:.2f}" if value < 999.995 else f"{value:.1f}"


def format_rows(rows):
    """A block of text for the rows of one case."""
    out = []
    for row in rows:
        if row.get("header"):
            out.append(f"{row['title']}  [{row['header']}]")
        else:
            what = {"ms/trip": "trip", "µs/task": "task"}.get(row["unit"], "item")
            what += "" if row["n"] == 1 else "s"
            best_of = f", best of {row['repeats']}" if row.get("capped") else ""
            out.append(f"{row['title']}  [{_fmt_int(row['n'])} {what}, {row['workers']} "
                       f"workers{best_of}]")
        if row.get("skipped"):
            out.append(f"  skipped: {row['skipped']}")
            out.append("")
            continue
        if row["goal"]:
            out.append(f"  goal: {row['goal']}")
        if row["note"]:
            out.append(f"  note: {row['note']}")
        cells = row["contenders"]
        speed = any("speedup" in c for c in cells.values())
        columns = row.get("columns") or []
        has_cpu = any(c.get("cpu_per_op") is not None for c in cells.values())
        cpu_unit = row["unit"].split("/")[0]
        width = max([_W[0]] + [len(c["label"]) for c in cells.values()])
        head = ["  " + "contender".ljust(width), row["unit"].rjust(_W[1]),
                row.get("vs", "vs braid").rjust(_W[2])]
        if speed:
            head.append("speedup".rjust(_W[3]))
        head += [col["head"].rjust(_W[4]) for col in columns]
        if has_cpu or not columns:
            head.append(f"cpu {cpu_unit}: this process / workers")
        out.append("  ".join(head).rstrip())
        for cell in cells.values():
            label = cell["label"].ljust(width)
            if cell["status"] != "ok":
                out.append(f"  {label}  {cell['status']}")
                continue
            line = ["  " + label, _num(cell["per_op"]).rjust(_W[1]),
                    ("-" if cell["ratio"] is None else f"{cell['ratio']:.2f}x").rjust(_W[2])]
            if speed:
                line.append(("-" if cell.get("speedup") is None else f"{cell['speedup']:.2f}x").rjust(_W[3]))
            for col in columns:
                value = cell.get(col["key"])
                if value is None:
                    text = "-"
                elif col["fmt"] == "x":
                    text = f"{value:.2f}x"
                else:
                    text = _num(value)
                line.append(text.rjust(_W[4]))
            if cell["cpu_per_op"] is not None:
                w = cell["worker_cpu_per_op"]
                line.append(f"{_num(cell['cpu_per_op'])} / "
                            f"{'-' if w is None else _num(w)}")
            out.append("  ".join(line).rstrip())
        if row["goal_result"]:
            verdict = {True: "goal met", False: "goal NOT met", None: "goal not checked"}[row["goal_met"]]
            out.append(f"  -> {verdict}: {row['goal_result']}")
        out.append("")
    return "\n".join(out)


FOOTER = ("vs braid = contender time / braid time (above 1: braid is faster); "
          "speedup = sequential time / pool time")


# ------------------------------------------------------------------ entry

def build_parser(prog=None):
    p = argparse.ArgumentParser(
        prog=prog or "python -m braid bench procpool",
        description="braid.ProcessPool vs ProcessPoolExecutor, multiprocessing.Pool, loky "
                    "and mpire, side by side in one run.")
    p.add_argument("--quick", action="store_true",
                   help=f"short run for CI and smoke tests (smaller N, arrays up to 64 MiB, "
                        f"{QUICK_REPEAT} repeats unless given); under a minute")
    p.add_argument("--repeat", type=int, metavar="N",
                   help=f"repeats per case, best kept (default {DEFAULT_REPEAT})")
    p.add_argument("--workers", type=int, metavar="N",
                   help=f"max_workers of every pool, except the primes case which always "
                        f"uses {PRIME_WORKERS}, respawn (1) and primes_e2e (the tutorial's "
                        f"cpu_count()) (default {default_workers()}: the usable CPUs)")
    p.add_argument("--cases", metavar="LIST", default=",".join(CASES),
                   help=f"comma-separated subset of: {', '.join(CASES)} (default: all)")
    p.add_argument("--contenders", metavar="LIST", default=",".join(CONTENDERS),
                   help=f"comma-separated subset of: {', '.join(CONTENDERS)} "
                        f"(ppe = ProcessPoolExecutor, pool = multiprocessing.Pool; default: all)")
    p.add_argument("--sizes", metavar="MIB",
                   help="array sizes in MiB, comma-separated (default 1,64,1024; --quick 1,64)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    p.add_argument("--stdlib-only", action="store_true",
                   help="leave braid out (when braid is not built); peers still run")
    return p


def _csv(text):
    return [c.strip() for c in text.split(",") if c.strip()]


def main(argv=None, *, command=None):
    """Runs the benchmark; returns the exit status (0 ok, 1 braid missing or a
    contender failed, 2 bad arguments)."""
    return _bench.run_main(_main, argv, command)


def _main(argv, command):
    parser = build_parser()
    args = parser.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    workers = args.workers if args.workers is not None else default_workers()
    names = _csv(args.cases)
    unknown = [c for c in names if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    keys = _csv(args.contenders)
    unknown = [c for c in keys if c not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    if args.sizes is not None:
        try:
            sizes = [int(s) for s in _csv(args.sizes)]
        except ValueError:
            parser.error("--sizes takes whole MiB, e.g. 1,64,1024")
        if any(s < 1 for s in sizes):
            parser.error("--sizes must be at least 1 MiB each")
    else:
        sizes = list(ARRAY_MIB[1 if args.quick else 0])
    if repeat < 1 or workers < 1:
        parser.error("--repeat and --workers must be at least 1")

    if command is None:
        command = _bench.command_line("procpool", argv)

    braid_mod = None
    if args.stdlib_only or "braid" not in keys:
        keys = [k for k in keys if k != "braid"]
    else:
        try:
            braid_mod = load_braid()
        except BraidMissing as exc:
            print(f"error: {BRAID_NAME} is not available: {exc}\n"
                  f"Build and install braid first (pip install .), or pass --stdlib-only "
                  f"to measure the other pools alone.", file=sys.stderr)
            return 1

    contenders = make_contenders(braid_mod, keys)
    env = environment(command, contenders, workers=workers, repeat=repeat, quick=args.quick,
                      sizes_mib=sizes)
    run = dict(quick=args.quick, repeat=repeat, workers=workers, sizes_mib=sizes,
               braid_mod=braid_mod, contender_keys=keys)
    if args.json:
        rows = run_cases(names, **run)
        json.dump({"benchmark": "procpool", "environment": env, "results": rows},
                  sys.stdout, indent=2)
        print()
        return 1 if _failed(rows) else 0

    print(format_header(env))
    print(FOOTER)
    print(flush=True)
    rows = run_cases(names, on_case=lambda rs: print(format_rows(rs), flush=True), **run)
    failed = _failed(rows)
    if failed:
        print("failed: " + "; ".join(failed))
    return 1 if failed else 0


def _failed(rows):
    out = []
    for row in rows:
        for cell in row["contenders"].values():
            if cell["status"].startswith("error"):
                out.append(f"{row['part']} {cell['label']}: {cell['status']}")
    return out


if __name__ == "__main__":
    # Run as a script: use the importable module's functions, so workers that
    # unpickle braid.bench.procpool.<fn> find the same code.
    from braid.bench.procpool import main as _main_entry

    sys.exit(_main_entry())
