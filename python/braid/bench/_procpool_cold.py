"""The cases of bench procpool that start processes inside the clock, and the round-trip floor.

    startup     a fresh pool's first result, pool creation included, each contender in a
                fresh child Python process, against a bare interpreter start measured in
                the same run
    respawn     a warm one-worker pool whose worker a task kills: the time until a
                replacement worker gives its next result, again in fresh child processes
    primes_e2e  the tutorial's primes code with the pool created inside the clock, in this
                process, at range(1, 100,000) and range(1, 1,000,000)
    floor       two processes handing a turn back and forth through eventfds with blocking
                reads (a small C program), the floor of a pool's round trip; the roundtrip
                case measures it too, interleaved with the pools, for its goal

The rows these cases make have the shape of the other cases' rows (procpool.format_rows and
--json take them as they are), with a few more columns each.
"""

import gc
import multiprocessing
import os
import subprocess
import sys
import time

from braid.bench import _cc
from braid.bench import procpool as _pp
from braid.bench._tutorial import is_prime, prime_flags, tutorial_code

COLD_CASES = ("startup", "respawn", "primes_e2e", "floor")

# (default, --quick)
RESPAWN_KILLS = (3, 2)  # kills timed in each respawn child
E2E_STOPS = ((100_000, 1_000_000), (100_000, 300_000))  # numbers = list(range(1, stop))
FLOOR_TRIPS = (100_000, 20_000)

FLOOR_WARMUP = 1_000  # untimed round trips before a floor's timed ones
CHILD_TIMEOUT = 120.0  # seconds for one child process (startup, respawn, a floor run)
TASK_TIMEOUT = 60.0  # seconds a child waits for one task's result

STARTUP_GOAL = 2.0  # braid's first result / a bare interpreter start, at most
RESPAWN_GOAL = 0.5  # braid's respawn / a bare interpreter start, at most
FLOOR_GOAL = 1.5  # braid's round trip / the eventfd floor's, at most

PINGPONG_SOURCE = {"pingpong": "pingpong.c"}
FLOOR_LABEL = "floor: eventfd ping-pong, blocking reads (C)"


class _Failed(Exception):
    """One measurement failed; the message goes into the contender's cell."""


# ------------------------------------------------------------------ child processes

def child_env():
    """The environment of every child: this braid first on sys.path, the rest as here.
    The bare interpreter gets the same, so the comparison is like for like."""
    env = dict(os.environ)
    try:
        import braid
    except Exception:  # --stdlib-only without a built braid: the children do not need it
        return env
    root = os.path.dirname(os.path.dirname(os.path.abspath(braid.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_child(argv, env, tag=None):
    """Runs argv to its end: (wall seconds from start to exit, seen from here, the words of
    its last stdout line starting with tag, or None without a tag). _Failed on a bad exit."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise _Failed(f"no answer in {CHILD_TIMEOUT:.0f} s") from None
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise _Failed(f"exit status {proc.returncode}: {tail}")
    if tag is None:
        return wall, None
    lines = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith(tag + " ")]
    if not lines:
        raise _Failed(f"no {tag!r} line in its output: {proc.stdout.strip()[-200:]!r}")
    return wall, lines[-1][1:]


# The start-up child: imports the pool class's module (timed apart: braid.ProcessPool,
# concurrent.futures.ProcessPoolExecutor and multiprocessing.Pool are imported lazily on
# first use, so the import is forced here, not left inside the constructor), then times from
# just before the pool's constructor to the first result, then the shutdown. os.getpid is
# the task: a builtin, pickled by reference, so no worker imports a module for it.
STARTUP_CHILD = r"""
import os, sys, time
key, workers, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
clock = time.perf_counter
t0 = clock()
if key == "braid":
    from braid import ProcessPool
elif key == "loky":
    from loky import ProcessPoolExecutor
elif key.startswith("ppe_"):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
else:
    import multiprocessing
    import multiprocessing.pool
t1 = clock()
if key == "braid":
    pool = ProcessPool(max_workers=workers)
    pid = pool.submit(os.getpid).result(timeout=timeout)
elif key == "loky":
    pool = ProcessPoolExecutor(max_workers=workers)
    pid = pool.submit(os.getpid).result(timeout=timeout)
elif key.startswith("ppe_"):
    pool = ProcessPoolExecutor(max_workers=workers,
                               mp_context=multiprocessing.get_context(key[4:]))
    pid = pool.submit(os.getpid).result(timeout=timeout)
elif key == "pool":
    pool = multiprocessing.Pool(processes=workers)
    pid = pool.apply_async(os.getpid).get(timeout)
else:
    pool = multiprocessing.get_context(key[5:]).Pool(processes=workers)
    pid = pool.apply_async(os.getpid).get(timeout)
t2 = clock()
if key.startswith("pool"):
    pool.close()
    pool.join()
else:
    pool.shutdown(wait=True)
t3 = clock()
print("startup", repr(t1 - t0), repr(t2 - t1), repr(t3 - t2), os.getpid(), pid)
"""

# The respawn child: a warm pool of one worker; each kill is a task calling os._exit(1) (a
# builtin, pickled by reference), timed from its submit to the first result of the worker
# that replaced the dead one. A kill from outside (SIGKILL) would hang multiprocessing.Pool:
# its idle worker holds the task queue's lock while it waits, and a dead process never
# releases it; a task that exits has let go of it. Where the library reports the killed
# task's failure (braid: WorkerCrashed; ProcessPoolExecutor and loky: BrokenProcessPool),
# the next task is submitted after that report; multiprocessing.Pool never reports it (the
# task's result stays pending), so there the next task follows at once.
RESPAWN_CHILD = r"""
import os, sys, time
key, kills, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
clock = time.perf_counter

class Executor:
    def __init__(self, make, broken):
        self.make, self.broken, self.old = make, broken, []
        self.pool = make()
    def call(self, fn, *args):
        return self.pool.submit(fn, *args).result(timeout=timeout)
    def kill(self):
        try:
            self.call(os._exit, 1)
        except self.broken:
            return clock()
        raise SystemExit("the task that calls os._exit did not fail")
    def close(self):
        for pool in self.old + [self.pool]:
            pool.shutdown(wait=True)

class Replaced(Executor):
    # ProcessPoolExecutor: a dead worker breaks the executor; a new one takes its place.
    def kill(self):
        seen = Executor.kill(self)
        self.old.append(self.pool)
        self.pool = self.make()
        return seen

class Reusable(Executor):
    # loky: the dead worker breaks the executor; get_reusable_executor() makes a new one.
    def kill(self):
        seen = Executor.kill(self)
        self.pool = self.make()
        return seen
    def close(self):
        self.pool.shutdown(wait=True)

class MpPool:
    def __init__(self):
        import multiprocessing
        self.pool = multiprocessing.Pool(processes=1)
    def call(self, fn, *args):
        return self.pool.apply_async(fn, args).get(timeout)
    def kill(self):
        self.pool.apply_async(os._exit, (1,))
        return None
    def close(self):
        self.pool.terminate()  # close() + join() would wait forever for the killed task
        self.pool.join()

if key == "braid":
    import braid
    pool = Executor(lambda: braid.ProcessPool(max_workers=1), braid.WorkerCrashed)
elif key == "ppe":
    import concurrent.futures
    from concurrent.futures.process import BrokenProcessPool
    pool = Replaced(lambda: concurrent.futures.ProcessPoolExecutor(max_workers=1),
                    BrokenProcessPool)
elif key == "loky":
    import loky
    from loky.process_executor import BrokenProcessPool
    pool = Reusable(lambda: loky.get_reusable_executor(max_workers=1), BrokenProcessPool)
else:
    pool = MpPool()
for _ in range(3):
    before = pool.call(os.getpid)
seen, total = [], []
for _ in range(kills):
    t0 = clock()
    at = pool.kill()
    pid = pool.call(os.getpid)
    t1 = clock()
    if pid in (before, os.getpid()):
        raise SystemExit(f"the task after the kill ran in pid {pid}, not in a new worker")
    seen.append(-1.0 if at is None else at - t0)
    total.append(t1 - t0)
    before = pid
pool.close()
print("respawn", ",".join(map(repr, total)), ",".join(map(repr, seen)))
"""

# A Python floor next to the C one: the same ping-pong with os.eventfd and os.fork.
PY_FLOOR_CHILD = r"""
import os, signal, sys, time
trips, warmup = int(sys.argv[1]), int(sys.argv[2])
ping, pong = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)
read, write = os.eventfd_read, os.eventfd_write
pid = os.fork()
if pid == 0:
    signal.alarm(600)  # no PR_SET_PDEATHSIG from Python: bound the child's life instead
    try:
        while read(ping) == 1:
            write(pong, 1)
    finally:
        os._exit(0)
for _ in range(warmup):
    write(ping, 1)
    read(pong)
c0, t0 = time.process_time(), time.perf_counter()
for _ in range(trips):
    write(ping, 1)
    read(pong)
t1, c1 = time.perf_counter(), time.process_time()
write(ping, 2)
os.waitpid(pid, 0)
print("trips", trips, "seconds", repr(t1 - t0), "parent_cpu", repr(c1 - c0), "child_cpu", "-1")
"""


# ------------------------------------------------------------------ the floor programs

def floor_source_dir():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "procpool_c")


def build_floor():
    """The path of the compiled C floor; _cc.NoCompiler says why there is none."""
    cc = _cc.compiler("the round-trip floor")
    return _cc.build(cc, floor_source_dir(), PINGPONG_SOURCE, "bench-procpool")["pingpong"]


def run_floor(argv):
    """(wall s, parent CPU s, child CPU s or None) of the timed trips of one floor run."""
    _, words = run_child(argv, None, tag="trips")
    got = dict(zip(words[1::2], words[2::2]))
    try:
        child = float(got["child_cpu"])
        return float(got["seconds"]), float(got["parent_cpu"]), (None if child < 0 else child)
    except (KeyError, ValueError):
        raise _Failed(f"unexpected output {' '.join(words)!r}") from None


class FloorContender(_pp.Contender):
    """The C floor as a contender of the roundtrip case: measure(part) runs part["n"] round
    trips (after FLOOR_WARMUP untimed) and returns (wall, CPU here, CPU of the other side)."""

    def __init__(self, exe=None, missing=None):
        super().__init__("floor", FLOOR_LABEL, "external", version=None,
                         start_method=None, missing=missing)
        self.exe = exe

    def measure(self, part):
        try:
            return run_floor([self.exe, str(part["n"]), str(FLOOR_WARMUP), "block"])
        except _Failed as exc:
            raise RuntimeError(f"the floor program failed: {exc}") from None


def floor_contender():
    try:
        return FloorContender(build_floor())
    except _cc.NoCompiler as exc:
        return FloorContender(missing=f"not measured: {exc}")


def goal_vs_floor(best):
    b, f = best.get("braid"), best.get("floor")
    if b is None or f is None:
        return None, "braid or the floor not measured"
    return b <= FLOOR_GOAL * f, (f"braid {b:.2f} µs = {b / f:.2f}x the floor's {f:.2f} µs "
                                 f"(target ≤ {FLOOR_GOAL}x)")


# ------------------------------------------------------------------ rows

def _cell(label, runs=None, status=None, *, primary=0, scale=1e3, n=1, cpu=None, extra=None):
    """A cell of the common row shape. runs: a list of measurement tuples; the best is the
    one with the smallest runs[i][primary]; cpu(best) -> (CPU here, CPU of workers) seconds;
    extra(best) -> {column key: value}."""
    cell = {"label": label, "status": status or "ok", "best_s": None, "per_op": None,
            "cpu_per_op": None, "worker_cpu_per_op": None, "all_s": [], "ratio": None}
    if runs:
        best = min(runs, key=lambda r: r[primary])
        cell.update(best_s=best[primary], per_op=best[primary] / n * scale,
                    all_s=[r[primary] for r in runs])
        if cpu is not None:
            here, workers = cpu(best)
            cell["cpu_per_op"] = None if here is None else here / n * scale
            cell["worker_cpu_per_op"] = None if workers is None else workers / n * scale
        if extra is not None:
            cell.update(extra(best))
    elif status is None:
        cell["status"] = "no run"
    return cell


def _row(case, part, title, *, n, unit, workers, repeats, cells, header=None, goal_text=None,
         goal=None, note=None, base="braid", vs="vs braid", columns=(), speedup_of=None):
    """A row; ratio = cell time / the base cell's time; goal(best per_op) -> (met, text)."""
    ref = cells.get(base, {}).get("best_s")
    seq = cells.get(speedup_of, {}).get("best_s") if speedup_of else None
    for cell in cells.values():
        t = cell["best_s"]
        cell["ratio"] = t / ref if (t and ref) else None
        if speedup_of:
            cell["speedup"] = seq / t if (t and seq) else None
    best = {k: c["per_op"] for k, c in cells.items() if c["per_op"] is not None}
    met, text = goal(best) if goal is not None else (None, None)
    return {"case": case, "part": part, "title": title, "n": n, "unit": unit,
            "workers": workers, "repeats": repeats, "capped": False, "goal": goal_text,
            "goal_met": met, "goal_result": text, "note": note, "header": header, "vs": vs,
            "columns": list(columns), "contenders": cells}


def _interleave(entries, repeat, on_progress, name):
    """entries: [(key, label, measure())]; runs each measure once per repeat, the order
    reversed every other repeat. Returns ({key: [results]}, {key: error text}); a
    contender whose measure fails is not run again."""
    runs = {key: [] for key, _, _ in entries}
    errors = {}
    for r in range(repeat):
        order = entries if r % 2 == 0 else entries[::-1]
        for key, label, measure in order:
            if key in errors:
                continue
            if on_progress is not None:
                on_progress(f"{name}: {label}, repeat {r + 1}/{repeat}")
            try:
                runs[key].append(measure())
            except AssertionError as exc:
                errors[key] = f"wrong result: {exc}"
            except Exception as exc:
                errors[key] = f"{type(exc).__name__}: {exc}"
    return runs, errors


def _status(key, errors):
    return f"error: {errors[key]}" if key in errors else None


def _bare_entries(env, with_worker_imports):
    """The bare-interpreter floor (and, with braid, its worker's imports) as entries."""
    def bare():
        return run_child([sys.executable, "-c", "pass"], env)[0], None

    def worker_imports():
        code = "from braid._procworker import main; from braid import _braid; import signal"
        return run_child([sys.executable, "-c", code], env)[0], None

    out = [("bare", "python -c pass", bare)]
    if with_worker_imports:
        out.append(("worker_imports", "python -c 'a braid worker's imports'", worker_imports))
    return out


BARE_LABEL = "bare interpreter: python -c pass"
WORKER_IMPORTS_LABEL = "python -c '<a braid worker's imports>'"


# ------------------------------------------------------------------ startup

def _startup_contenders(keys):
    """[(key, label)] of the start-up contenders that --contenders allows."""
    methods = multiprocessing.get_all_start_methods()
    default = multiprocessing.get_start_method()
    out = []
    if "braid" in keys:
        out.append(("braid", _pp.BRAID_NAME))
    if "ppe" in keys:
        for method in ("spawn", "forkserver", "fork"):
            if method in methods:
                out.append((f"ppe_{method}", f"ProcessPoolExecutor (mp_context {method})"))
    if "pool" in keys:
        out.append(("pool", f"multiprocessing.Pool (default: {default})"))
        if "spawn" in methods and default != "spawn":
            out.append(("pool_spawn", "multiprocessing.Pool (spawn context)"))
    if "loky" in keys:
        try:
            import loky  # noqa: F401
        except ImportError:
            out.append(("loky", None))
        else:
            out.append(("loky", "loky.ProcessPoolExecutor"))
    return out


def run_startup(*, quick, repeat, workers, braid_mod, contender_keys, on_progress=None):
    env = child_env()
    keys = [k for k in contender_keys if k != "braid" or braid_mod is not None]
    pools = _startup_contenders(keys)
    entries = _bare_entries(env, "braid" in keys)

    def starter(key):
        def measure():
            wall, words = run_child([sys.executable, "-c", STARTUP_CHILD, key, str(workers),
                                     str(TASK_TIMEOUT)], env, tag="startup")
            imp, first, shut = (float(w) for w in words[:3])
            pid, worker_pid = int(words[3]), int(words[4])
            if worker_pid == pid or worker_pid <= 0:
                raise AssertionError(f"the first task ran in pid {worker_pid}, the child's own")
            return first, wall, imp, shut
        return measure

    entries += [(key, label, starter(key)) for key, label in pools if label is not None]
    runs, errors = _interleave(entries, repeat, on_progress, "startup")

    bare = min((r[0] for r in runs.get("bare", [])), default=None)

    def extra(best):
        first, wall = best[0], best[1]
        return {"x_bare": first / bare if bare else None, "import_ms": best[2] * 1e3,
                "shutdown_ms": best[3] * 1e3, "child_ms": wall * 1e3}

    def extra_bare(best):
        return {"x_bare": best[0] / bare if bare else None, "import_ms": None,
                "shutdown_ms": None, "child_ms": best[0] * 1e3}

    cells = {"bare": _cell(BARE_LABEL, runs["bare"], _status("bare", errors), extra=extra_bare)}
    if "worker_imports" in runs:
        cells["worker_imports"] = _cell(WORKER_IMPORTS_LABEL, runs["worker_imports"],
                                        _status("worker_imports", errors), extra=extra_bare)
    for key, label in pools:
        if label is None:
            cells[key] = _cell("loky", status="not installed")
        else:
            cells[key] = _cell(label, runs[key], _status(key, errors), extra=extra)

    def goal(best):
        b, f = best.get("braid"), best.get("bare")
        if b is None or f is None:
            return None, "braid or the bare interpreter not measured"
        return b <= STARTUP_GOAL * f, (f"braid {b:.1f} ms to its first result = {b / f:.2f}x "
                                       f"a bare interpreter start ({f:.1f} ms; target ≤ "
                                       f"{STARTUP_GOAL}x)")

    return [_row(
        "startup", "startup",
        "start-up: a fresh pool's first result, pool creation included, each in a fresh "
        "child process",
        n=1, unit="ms", workers=workers, repeats=repeat, cells=cells,
        header=f"{workers} workers, task os.getpid, best of {repeat}",
        goal_text=f"braid ≤ {STARTUP_GOAL}x a bare interpreter start (python -c pass, "
                  f"measured in this run)",
        goal=goal,
        note="ms = in the child, from just before the pool's constructor to its first result; "
             "import = importing the pool class before that (braid.ProcessPool, "
             "ProcessPoolExecutor and Pool load their modules lazily: forced here); child = "
             "the child's whole life seen from here, interpreter start to exit; the bare rows "
             "are whole processes (a braid worker's imports: from braid._procworker import "
             "main; from braid import _braid)",
        columns=[{"key": "x_bare", "head": "x bare", "fmt": "x"},
                 {"key": "import_ms", "head": "import ms", "fmt": "num"},
                 {"key": "shutdown_ms", "head": "shutdown ms", "fmt": "num"},
                 {"key": "child_ms", "head": "child ms", "fmt": "num"}])]


# ------------------------------------------------------------------ respawn

def _respawn_contenders(keys):
    default = multiprocessing.get_start_method()
    out = []
    if "braid" in keys:
        out.append(("braid", _pp.BRAID_NAME))
    if "ppe" in keys:
        out.append(("ppe", f"ProcessPoolExecutor: broken; NEW executor ({default})"))
    if "pool" in keys:
        out.append(("pool", f"multiprocessing.Pool ({default})"))
    if "loky" in keys:
        try:
            import loky  # noqa: F401
        except ImportError:
            out.append(("loky", None))
        else:
            out.append(("loky", "loky reusable executor (broken; a new one)"))
    return out


def run_respawn(*, quick, repeat, workers, braid_mod, contender_keys, on_progress=None):
    env = child_env()
    kills = RESPAWN_KILLS[1 if quick else 0]
    keys = [k for k in contender_keys if k != "braid" or braid_mod is not None]
    pools = _respawn_contenders(keys)
    entries = _bare_entries(env, False)

    def respawner(key):
        def measure():
            wall, words = run_child([sys.executable, "-c", RESPAWN_CHILD, key, str(kills),
                                     str(TASK_TIMEOUT)], env, tag="respawn")
            total = [float(w) for w in words[0].split(",")]
            seen = [float(w) for w in words[1].split(",")]
            if len(total) != kills:
                raise AssertionError(f"{len(total)} respawns timed, {kills} asked")
            return [(t, None if s < 0 else s) for t, s in zip(total, seen)]
        return measure

    entries += [(key, label, respawner(key)) for key, label in pools if label is not None]
    runs, errors = _interleave(entries, repeat, on_progress, "respawn")
    # each respawn child timed `kills` respawns: every one counts towards the best
    for key, _ in pools:
        runs[key] = [one for child in runs.get(key, []) for one in child]
    bare = min((r[0] for r in runs.get("bare", [])), default=None)

    def extra(best):
        return {"x_bare": best[0] / bare if bare else None,
                "seen_ms": None if best[1] is None else best[1] * 1e3}

    cells = {"bare": _cell(BARE_LABEL, runs["bare"], _status("bare", errors), extra=extra)}
    for key, label in pools:
        if label is None:
            cells[key] = _cell("loky", status="not installed")
        else:
            cells[key] = _cell(label, runs[key], _status(key, errors), extra=extra)

    def goal(best):
        b, f = best.get("braid"), best.get("bare")
        if b is None or f is None:
            return None, "braid or the bare interpreter not measured"
        return b <= RESPAWN_GOAL * f, (f"braid {b:.1f} ms = {b / f:.2f}x a bare interpreter "
                                       f"start ({f:.1f} ms; target ≤ {RESPAWN_GOAL}x)")

    return [_row(
        "respawn", "respawn",
        "respawn: a task kills its worker (os._exit(1)) in a warm pool; time until a "
        "replacement gives its next result",
        n=1, unit="ms", workers=1, repeats=repeat, cells=cells,
        header=f"1 worker, {kills} kills in each of {repeat} fresh child processes, best kept",
        goal_text=f"braid ≤ {RESPAWN_GOAL}x a bare interpreter start (python -c pass, "
                  f"measured in this run)",
        goal=goal,
        note="ms = from submitting the killing task to the next task's result (os.getpid, "
             "checked to be a new process); failure ms = until the library reported the "
             "killed task (Pool never does; its next task is submitted at once). "
             "ProcessPoolExecutor cannot survive a dead worker: its row times the failure "
             "plus a new executor's first result",
        columns=[{"key": "x_bare", "head": "x bare", "fmt": "x"},
                 {"key": "seen_ms", "head": "failure ms", "fmt": "num"}])]


# ------------------------------------------------------------------ primes, end to end

_sieve = prime_flags


def map_is_prime(make_pool, chunksize=None):
    """pool.map(is_prime, numbers) on a pool made inside, with the pool's default chunking
    unless chunksize is given."""
    def run(numbers):
        with make_pool(multiprocessing.cpu_count()) as pool:
            if chunksize is None:
                return list(pool.map(is_prime, numbers))
            return list(pool.map(is_prime, numbers, chunksize=chunksize))
    return run


def _sequential(numbers):
    return [is_prime(n) for n in numbers]


def _e2e_pools(braid_mod, keys):
    """[(key, label, make_pool(processes))] in the order of the rows."""
    import concurrent.futures

    out = []
    if braid_mod is not None and "braid" in keys:
        out.append(("braid", _pp.BRAID_NAME, lambda n: braid_mod.ProcessPool(max_workers=n)))
    if "pool" in keys:
        out.append(("pool", f"multiprocessing.Pool ({multiprocessing.get_start_method()})",
                    lambda n: multiprocessing.Pool(processes=n)))
    if "ppe" in keys:
        out.append(("ppe", f"ProcessPoolExecutor ({multiprocessing.get_start_method()})",
                    lambda n: concurrent.futures.ProcessPoolExecutor(max_workers=n)))
    return out


def run_primes_e2e(*, quick, repeat, workers, braid_mod, contender_keys, on_progress=None):
    stops = E2E_STOPS[1 if quick else 0]
    processes = multiprocessing.cpu_count()
    pools = _e2e_pools(braid_mod, contender_keys)
    rows = []
    for stop in stops:
        numbers = list(range(1, stop))
        want = None
        chunk = _pp._pool_chunksize(len(numbers), processes)

        def timed(run, adapt=None):
            def measure():
                nonlocal want
                gc.collect()
                c0 = time.process_time()
                t0 = time.perf_counter()
                got = run(numbers)
                wall = time.perf_counter() - t0
                cpu = time.process_time() - c0
                if want is None:
                    want = _sieve(stop)
                flags = adapt(got) if adapt is not None else got
                if flags != want:
                    raise AssertionError(f"results differ from a sieve's (length {len(flags)})")
                return wall, cpu
            return measure

        def pairs(got):
            if [n for n, _ in got] != numbers:
                raise AssertionError("the (number, flag) pairs are not in the numbers' order")
            return [flag for _, flag in got]

        entries = [("sequential", "sequential", timed(_sequential))]
        for key, label, make in pools:
            entries.append((f"tut_{key}", f"{label}, the tutorial's code",
                            timed(tutorial_code(make), pairs)))
        for key, label, make in pools:
            size = chunk if key == "ppe" else None
            entries.append((f"map_{key}", f"{label}.map(is_prime)", timed(map_is_prime(make, size))))
        runs, errors = _interleave(entries, repeat, on_progress, f"primes_e2e {stop:,}")

        def cpu(best):
            return best[1], None

        seq = _cell("sequential: [is_prime(n) for n in numbers]", runs["sequential"],
                    _status("sequential", errors), cpu=cpu)
        n_chunks = len(range(0, len(numbers), max(1, len(numbers) // processes)))
        for style in ("tut", "map"):
            cells = {"sequential": dict(seq)}
            for key, label, _ in pools:
                name = f"{style}_{key}"
                if style == "tut":
                    text = label
                elif key == "ppe":
                    text = f"{label}, chunksize={chunk}"
                else:
                    text = f"{label}, default chunking"
                cells[key] = _cell(text, runs[name], _status(name, errors), cpu=cpu)
            if style == "tut":
                title = (f"the tutorial's primes code over range(1, {stop:,}), pool created "
                         f"inside the clock")
                note = (f"cpu_count() = {processes} processes; chunks of len // cpu_count: "
                        f"{n_chunks} lists, pool.map(check_numbers_chunk, number_chunks), then "
                        f"flattened; braid and ProcessPoolExecutor replace multiprocessing.Pool "
                        f"in the same code")
            else:
                title = (f"pool.map(is_prime, numbers) over range(1, {stop:,}), pool created "
                         f"inside the clock")
                note = ("each pool's own map with its default chunking; ProcessPoolExecutor's "
                        f"default of 1 takes ~60 µs per item, so it gets Pool.map's {chunk}")
            rows.append(_row(
                "primes_e2e", f"primes_e2e_{style}_{stop}", title, n=1, unit="ms",
                workers=processes, repeats=repeat, cells=cells,
                header=f"{len(numbers):,} numbers, {processes} processes, best of {repeat}",
                goal_text="braid not slower than multiprocessing.Pool",
                goal=_goal_not_slower_than_pool, note=note, speedup_of="sequential"))
    return rows


def _goal_not_slower_than_pool(best):
    b, p = best.get("braid"), best.get("pool")
    if b is None or p is None:
        return None, "braid or multiprocessing.Pool not measured"
    return b <= p, f"braid {b:.1f} ms vs multiprocessing.Pool {p:.1f} ms ({p / b:.2f}x)"


# ------------------------------------------------------------------ floor

def run_floor_case(*, quick, repeat, workers, braid_mod, contender_keys, on_progress=None):
    trips = FLOOR_TRIPS[1 if quick else 0]
    entries = []
    problems = {}
    try:
        exe = build_floor()
    except _cc.NoCompiler as exc:
        exe = None
        problems["floor"] = problems["floor_1cpu"] = problems["spin"] = f"not measured: {exc}"
    cpu = _one_cpu()
    variants = [
        ("floor", FLOOR_LABEL, [str(trips), str(FLOOR_WARMUP), "block"]),
        ("floor_1cpu", f"the same, both pinned to CPU {cpu}",
         [str(trips), str(FLOOR_WARMUP), "block", str(cpu)]),
        ("spin", "spinning on a shared counter, no syscall (C)",
         [str(trips), str(FLOOR_WARMUP), "spin"]),
    ]
    if exe is not None:
        for key, label, args in variants:
            entries.append((key, label, lambda args=args: run_floor([exe] + args)))
    entries.append(("python", "the same in Python (os.eventfd, os.fork)",
                    lambda: run_floor([sys.executable, "-c", PY_FLOOR_CHILD, str(trips),
                                       str(FLOOR_WARMUP)])))
    runs, errors = _interleave(entries, repeat, on_progress, "floor")

    def cpu_of(best):
        return best[1], best[2]

    cells = {}
    for key, label, _ in variants + [("python", entries[-1][1], None)]:
        if key in problems:
            cells[key] = _cell(label, status=problems[key])
        else:
            cells[key] = _cell(label, runs[key], _status(key, errors), scale=1e6, n=trips,
                               cpu=cpu_of)
    return [_row(
        "floor", "floor", "round-trip floor: two processes hand a turn back and forth",
        n=trips, unit="µs/trip", workers=1, repeats=repeat, cells=cells, base="floor",
        vs="vs floor",
        header=f"{trips:,} round trips after {FLOOR_WARMUP:,} untimed, best of {repeat}",
        note="the first row is the floor of the roundtrip case's goal: each side blocks in "
             "read(2), so every trip wakes two sleeping processes; where the scheduler puts "
             "the woken one on the other core (an idle CPU to wake) a trip costs several "
             "times what it costs on one core, so this floor moves with the machine's load")]


def _one_cpu():
    try:
        return min(os.sched_getaffinity(0))
    except (AttributeError, OSError, ValueError):
        return 0


RUNNERS = {"startup": run_startup, "respawn": run_respawn, "primes_e2e": run_primes_e2e,
           "floor": run_floor_case}


def run_case(name, **kwargs):
    return RUNNERS[name](**kwargs)
