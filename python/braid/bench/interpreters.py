"""braid.InterpreterPool against braid.ThreadPool and braid.ProcessPool, in one run.

    python -m braid bench interpreters [--quick] [--repeat N] [--json]

Every pool has the same number of workers. Within each case the contenders are interleaved
repeat by repeat (the order rotates), so a machine that slows down during the run shifts them
alike, and the best (smallest) figure of the repeats is kept. The figures worth reading are
the ratios, each printed with the goal it is held to:

  roundtrip   pool.submit(noop).result(), one at a time (µs per trip, warm pools):
              interpreters <= 2x the thread pool's, and >= 5x faster than the process pool's;
              beside it the machine's floor for a hand-off between two cores (a C ping-pong of
              one cache line, both sides spinning)
  inflight    10,000 no-op tasks submitted, then .result() each (µs per task): <= 1.5 µs
  primes      the tutorial's is_prime over 1..2,000,000 (pool.map in chunks of ranges, about
              64 per worker), the pool's start and shutdown included, against a list
              comprehension in this thread: >= 1.85x faster on 2 workers (the process pool,
              same chunks, alongside). A bool per number comes back: the tutorial's own
              check_numbers_chunk returns a (number, bool) tuple each, and unpickling 2,000,000
              tuples costs the caller ~0.35 s of CPU, which no pool can run in parallel. The
              machine's floor runs alongside: 2 processes computing a share each from a
              common go, no pool: the most a pool of 2 could reach here at that moment
  first       InterpreterPool(2) created to its first result (ms): <= 30 ms
  rss         resident memory each worker adds: a sub-interpreter (growth of this process's
              RSS per worker) against a worker process (its RSS, and PSS, which counts pages
              it shares with the template it was forked from once among them)

--quick (CI's smoke run) makes the counts small and the primes 1..200,000; its goals are
printed but a quick run is no measurement.
"""

import argparse
import json
import math
import os
import sys
import time

import braid.bench as _bench
from braid.bench import BraidMissing
from braid.bench._tasks import noop, pause
from braid.bench._tutorial import is_prime

FULL = dict(roundtrip=2000, inflight=10_000, primes=2_000_000, first=5, repeat=3)
QUICK = dict(roundtrip=300, inflight=2000, primes=200_000, first=2, repeat=2)
WORKERS = 2
# is_prime costs more as the numbers grow, so the last chunk is the longest, and while it runs
# the other worker may have nothing left: at 16 chunks a worker that tail idled ~3% of the run
# (2,000,000 numbers on 3.12: 1.90-1.93x at 16, 1.94-2.04x at 64, three runs interleaved).
CHUNKS_PER_WORKER = 64

KINDS = ("ThreadPool", "InterpreterPool", "ProcessPool")


def _rss_kib(pid="self", field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# ------------------------------------------------------------------ cases

def _roundtrip(pool, n):
    submit = pool.submit
    t0 = time.perf_counter()
    for _ in range(n):
        submit(noop).result()
    return (time.perf_counter() - t0) / n * 1e6


def _inflight(pool, n):
    submit = pool.submit
    t0 = time.perf_counter()
    futures = [submit(noop) for _ in range(n)]
    for f in futures:
        f.result()
    return (time.perf_counter() - t0) / n * 1e6


def _prime_chunksize(n, workers):
    return max(1, math.ceil(n / (CHUNKS_PER_WORKER * workers)))


def _primes_pool(braid, n, workers, kind="InterpreterPool"):
    t0, c0 = time.perf_counter(), time.process_time()
    with getattr(braid, kind)(workers) as pool:
        results = list(pool.map(is_prime, range(1, n + 1), chunksize=_prime_chunksize(n, workers)))
    return time.perf_counter() - t0, time.process_time() - c0, results


def _primes_sequential(n):
    t0, c0 = time.perf_counter(), time.process_time()
    results = [is_prime(k) for k in range(1, n + 1)]
    return time.perf_counter() - t0, time.process_time() - c0, results


def _floor_share(n, workers, i):
    """Worker i's numbers of 1..n for the floor: the pairs (1, 2), (3, 4), ... dealt round."""
    return [range(first, n + 1, 2 * workers) for first in (1 + 2 * i, 2 + 2 * i)]


_FLOOR_CHILD = """
import sys, time
from braid.bench._tutorial import is_prime
from braid.bench.interpreters import _floor_share
n, workers, i = map(int, sys.argv[1:4])
print("ready", flush=True)
if not sys.stdin.buffer.read(1):  # the go, once every child is ready; EOF: the parent is gone
    sys.exit(1)
for numbers in _floor_share(n, workers, i):
    for k in numbers:
        is_prime(k)
print(time.monotonic())
"""


def _primes_floor(n, workers, timeout=600):
    """The machine's own parallel ceiling for the primes, no pool: `workers` fresh
    processes, each computing is_prime over its share of 1..n (pairs of numbers dealt round,
    so each gets as many odd numbers, and as dear ones, as the others), results thrown away.
    Timed from the go they all wait for (after their start-up) to the last one's end. A
    pool's speed-up can only approach it: two busy cores run slower than one (shared
    caches, the host's other work)."""
    import select
    import subprocess

    deadline = time.monotonic() + timeout
    children = []
    try:
        for i in range(workers):
            children.append(subprocess.Popen(
                [sys.executable, "-c", _FLOOR_CHILD, str(n), str(workers), str(i)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        for child in children:  # their start-up (an import each) is not timed
            ready, _, _ = select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready or child.stdout.readline() != b"ready\n":
                raise RuntimeError("a process of the primes' floor did not start")
        t0 = time.monotonic()
        for child in children:
            child.stdin.write(b"g")
            child.stdin.flush()
        ends = []
        for child in children:
            out, _ = child.communicate(timeout=max(0.0, deadline - time.monotonic()))
            if child.returncode != 0:
                raise RuntimeError(f"a process of the primes' floor exited with status {child.returncode}")
            ends.append(float(out))
        return max(ends) - t0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
            for pipe in (child.stdin, child.stdout):
                if not pipe.closed:
                    pipe.close()


def _spin_floor(trips):
    """µs per round trip of two processes taking turns on one counter in shared memory,
    spinning, no system call (bench procpool's C ping-pong, mode "spin"): a cache line moved
    to the other core and back, what a hand-off whose both sides poll cannot go below. How
    far apart this machine's two CPUs are moves it (and every pool's round trip with it).
    None without a C compiler."""
    from braid.bench import _cc, _procpool_cold

    try:
        exe = _procpool_cold.build_floor()
        wall, _, _ = _procpool_cold.run_floor([exe, str(trips), str(_procpool_cold.FLOOR_WARMUP), "spin"])
    except (_cc.NoCompiler, _procpool_cold._Failed):  # no compiler; a run that failed or
        return None  # timed out (both sides on one busy CPU take ms per trip)
    return wall / trips * 1e6


def _first(braid, kind):
    t0 = time.perf_counter()
    pool = getattr(braid, kind)(WORKERS)
    try:
        pool.submit(noop).result()
        return (time.perf_counter() - t0) * 1e3
    finally:
        pool.shutdown(wait=True)


def _rss(braid):
    """(KiB per sub-interpreter, KiB RSS per worker process, KiB PSS per worker process)."""
    import gc

    gc.collect()
    before = _rss_kib()
    pool = braid.InterpreterPool(WORKERS)
    try:
        for f in [pool.submit(noop) for _ in range(WORKERS)]:
            f.result()
        workers = pool.threads
        interp = (_rss_kib() - before) / max(1, workers)
    finally:
        pool.shutdown(wait=True)
    with braid.ProcessPool(WORKERS) as pp:
        for f in [pp.submit(noop) for _ in range(4 * WORKERS)]:
            f.result()
        pids = list(pp.pids)
        rss = [_rss_kib(p) for p in pids]
        pss = [_pss_kib(p) for p in pids]
    proc_rss = sum(rss) / max(1, len(rss))
    proc_pss = sum(p for p in pss if p is not None) / max(1, len(pss)) if all(p is not None for p in pss) else None
    return interp, proc_rss, proc_pss


def _warm_pool(braid, kind):
    pool = getattr(braid, kind)(WORKERS)
    # every worker started (one pause each, at once) and warm, before any clock starts
    for f in [pool.submit(pause, 0.05) for _ in range(WORKERS)]:
        f.result()
    for f in [pool.submit(noop) for _ in range(4 * WORKERS)]:
        f.result()
    return pool


def run(braid, counts, on_line=print):
    out = {}
    repeat = counts["repeat"]
    # One pool alive at a time: a process pool's idle workers poll their rings for a while,
    # and would take CPU from the pool being measured on a small machine.
    for case, fn in (("roundtrip", _roundtrip), ("inflight", _inflight)):
        best = {kind: math.inf for kind in KINDS}
        spin = [] if case == "roundtrip" else None
        for r in range(repeat):
            for kind in KINDS[r % 3:] + KINDS[:r % 3]:
                pool = _warm_pool(braid, kind)
                try:
                    fn(pool, max(1, counts[case] // 10))  # warm the path itself
                    best[kind] = min(best[kind], fn(pool, counts[case]))
                finally:
                    pool.shutdown(wait=True)
            if spin is not None:
                spin.append(_spin_floor(counts[case]))
        if spin is not None:
            runs = [v for v in spin if v is not None]
            best["spin_floor"] = min(runs) if runs else None
        out[case] = best

    n = counts["primes"]
    best = dict(sequential=math.inf, InterpreterPool=math.inf, ProcessPool=math.inf, floor=math.inf)
    cpu = {}  # CPU seconds of this process (every thread) in the best run: sub-interpreters'
    want = None  # work is in it, worker processes' is not
    order = list(best)
    for r in range(repeat):
        for which in order[r % 4:] + order[:r % 4]:
            if which == "floor":
                best["floor"] = min(best["floor"], _primes_floor(n, WORKERS))
                continue
            if which == "sequential":
                t, c, res = _primes_sequential(n)
            else:
                t, c, res = _primes_pool(braid, n, WORKERS, which)
            if t < best[which]:
                best[which], cpu[which] = t, c
            if want is None:
                want = res
            elif res != want:
                raise AssertionError(f"{which}'s primes differ from the others'")
    best["cpu"] = cpu
    out["primes"] = best

    best = {kind: math.inf for kind in KINDS}
    for r in range(counts["first"]):
        for kind in KINDS[r % 3:] + KINDS[:r % 3]:
            best[kind] = min(best[kind], _first(braid, kind))
    out["first"] = best
    out["rss"] = _rss(braid)
    return out


# ------------------------------------------------------------------ report

def _verdict(ok):
    return "met" if ok else "NOT met"


def report(out, counts, command, print_=print):
    rt, inf = out["roundtrip"], out["inflight"]
    t, i, p = rt["ThreadPool"], rt["InterpreterPool"], rt["ProcessPool"]
    print_(f"{'case':<34}{'ThreadPool':>12}{'Interpreter':>13}{'ProcessPool':>13}   ratio / goal")
    print_(f"{'no-op round trip (µs)':<34}{t:>12.1f}{i:>13.1f}{p:>13.1f}   "
           f"interp/thread {i / t:.2f}x (goal <= 2: {_verdict(i / t <= 2)}); "
           f"process/interp {p / i:.2f}x (goal >= 5: {_verdict(p / i >= 5)})")
    if rt.get("spin_floor"):
        f = rt["spin_floor"]
        print_(f"{'':<34}   the machine's floor (a cache line to the other core and back, two "
               f"processes spinning, C): {f:.2f} µs; the interpreter pool's round trip is "
               f"{i / f:.1f}x it")
    t, i, p = inf["ThreadPool"], inf["InterpreterPool"], inf["ProcessPool"]
    label = f"{counts['inflight']:,} in flight (µs/task)"
    print_(f"{label:<34}"
           f"{t:>12.2f}{i:>13.2f}{p:>13.2f}   interp {i:.2f} µs/task (goal <= 1.5: {_verdict(i <= 1.5)})")
    pr = out["primes"]
    speedup = pr["sequential"] / pr["InterpreterPool"]
    label = f"primes 1..{counts['primes']:,} (s)"
    print_(f"{label:<34}{'':>12}"
           f"{pr['InterpreterPool']:>13.3f}{pr['ProcessPool']:>13.3f}   sequential {pr['sequential']:.3f} s: "
           f"speed-up {speedup:.2f}x with the pool's start (goal >= 1.85 on {WORKERS} workers: "
           f"{_verdict(speedup >= 1.85)}); processes {pr['sequential'] / pr['ProcessPool']:.2f}x")
    if pr.get("floor"):
        floor = pr["sequential"] / pr["floor"]
        print_(f"{'':<34}   the machine's floor ({WORKERS} processes, a share of the numbers "
               f"each, no pool): {pr['floor']:.3f} s = {floor:.2f}x; the interpreter pool reaches "
               f"{speedup / floor:.2f} of it")
    c = pr["cpu"]
    cores = c["InterpreterPool"] / pr["InterpreterPool"]
    bound = WORKERS * c["sequential"] / c["InterpreterPool"]
    print_(f"{'':<34}   the interpreter pool's run used {c['InterpreterPool']:.2f} CPU-s in "
           f"{pr['InterpreterPool']:.2f} s ({cores:.2f} cores busy), sequential {c['sequential']:.2f}: "
           f"with {WORKERS} idle cores its speed-up would be up to {bound:.2f}x")
    f = out["first"]
    print_(f"{'start to first result (ms)':<34}{f['ThreadPool']:>12.1f}{f['InterpreterPool']:>13.1f}"
           f"{f['ProcessPool']:>13.1f}   interp (goal <= 30 ms: {_verdict(f['InterpreterPool'] <= 30)})")
    interp, prss, ppss = out["rss"]
    pss = f", PSS {ppss / 1024:.1f}" if ppss is not None else ""
    print_(f"{'memory per worker (MiB)':<34}{'':>12}{interp / 1024:>13.1f}{prss / 1024:>13.1f}   "
           f"process worker RSS {prss / 1024:.1f}{pss} MiB; sub-interpreter {interp / 1024:.1f} MiB "
           f"(ratio process RSS / interp {prss / max(interp, 1):.1f}x)")


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m braid bench interpreters",
        description="braid.InterpreterPool vs braid.ThreadPool and braid.ProcessPool, side by side.")
    p.add_argument("--quick", action="store_true", help="small counts, for CI's smoke run")
    p.add_argument("--repeat", type=int, metavar="N", help="repeats per case, best kept")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p


def main(argv=None, *, command=None):
    return _bench.run_main(_main, argv, command)


def _main(argv, command):
    args = build_parser().parse_args(argv)
    counts = dict(QUICK if args.quick else FULL)
    if args.repeat is not None:
        if args.repeat < 1:
            build_parser().error("--repeat must be at least 1")
        counts["repeat"] = args.repeat
    if command is None:
        command = _bench.command_line("interpreters", argv)
    try:
        braid = _bench.load_braid("ProcessPool")
    except BraidMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if sys.version_info < (3, 12):
        print(f"braid.InterpreterPool needs Python 3.12+ (this is {sys.version.split()[0]}): "
              "nothing to measure")
        return 0
    if not args.json:
        print(f"# {command}")
        print(f"# Python {sys.version.split()[0]}, braid {braid.__version__}, {os.cpu_count()} CPUs, "
              f"{WORKERS} workers per pool, best of {counts['repeat']} interleaved repeats")
        print()
    load0 = os.getloadavg()[0]
    out = run(braid, counts)
    out["load"] = (load0, os.getloadavg()[0])
    if args.json:
        json.dump({"benchmark": "interpreters", "counts": counts, "results": out}, sys.stdout, indent=2,
                  default=str)
        print()
    else:
        report(out, counts, command)
        print()
        print(f"load average (1 min) at the start and the end: {out['load'][0]:.2f}, {out['load'][1]:.2f} "
              f"on {os.cpu_count()} CPUs: other processes' load takes the workers' cores too")
    return 0


if __name__ == "__main__":
    sys.exit(main())
