"""braid.ThreadPool against concurrent.futures.ThreadPoolExecutor, in one run.

    python -m braid bench threadpool [--quick] [--repeat N] [--tasks N] [--json]

Both executors get the same max_workers and the same work. Within every case
the two are interleaved repeat by repeat (stdlib, braid, braid, stdlib, ...),
so a machine that slows down or speeds up during the run shifts both alike,
and the best (smallest) time of the repeats is kept for each. The ratio is
stdlib time / braid time: above 1 means braid is faster.

Cases (N = --tasks, default 100,000; --quick makes it 10,000):

  no-op bulk        submit N no-op tasks, then .result() each (the headline)
  no-op round trip  pool.submit(noop).result(), one at a time, N/5 times
  map               list(pool.map(f, range(N))); braid also with chunksize=64
                    (ThreadPoolExecutor ignores chunksize, so its figure is
                    the same measurement in both map rows)
  sleep 1 ms        N/50 tasks of time.sleep(0.001) on --io-workers threads
                    (default 32): wall time, ideal is N/50/32 ms
  socket 1 KiB      N/50 tasks that each send one byte on a pre-connected
                    loopback TCP socket and read a 1 KiB reply, which a server
                    thread writes; one connection per worker

Every timed run is checked afterwards (results, byte counts), so a broken pool
cannot show a fast figure. Pools are created and their workers started before
the clock starts, and shut down after it stops.
"""

import argparse
import concurrent.futures
import gc
import json
import os
import queue
import selectors
import socket
import sys
import threading
import time

import braid.bench as _bench
from braid.bench import BraidMissing

DEFAULT_TASKS = 100_000
QUICK_TASKS = 10_000
DEFAULT_REPEAT = 5
QUICK_REPEAT = 3
DEFAULT_IO_WORKERS = 32
MAP_CHUNKSIZE = 64
PAYLOAD = 1024
IO_TIMEOUT = 30.0  # seconds; every blocking socket call and I/O result is bounded

CASES = ("noop_bulk", "noop_roundtrip", "map", "sleep", "socket")

STDLIB_NAME = "concurrent.futures.ThreadPoolExecutor"
BRAID_NAME = "braid.ThreadPool"


def load_braid():
    """(braid.ThreadPool, braid's version); BraidMissing says why not."""
    braid = _bench.load_braid("ThreadPool")
    return braid.ThreadPool, getattr(braid, "__version__", "unknown")


def default_workers():
    """ThreadPoolExecutor's own default, given to both executors explicitly."""
    return min(32, (os.cpu_count() or 1) + 4)


# ------------------------------------------------------------------ the work

def _noop():
    return None


def _ident(x):
    return x


def _sleep_1ms():
    time.sleep(0.001)
    return 1


def _run_noop_bulk(pool, n, ctx, **kw):
    submit = pool.submit
    futures = [submit(_noop) for _ in range(n)]
    for f in futures:
        f.result()
    return len(futures)


def _run_roundtrip(pool, n, ctx, **kw):
    submit = pool.submit
    done = 0
    for _ in range(n):
        submit(_noop).result()
        done += 1
    return done


def _run_map(pool, n, ctx, **kw):
    return list(pool.map(_ident, range(n), **kw))


def _run_sleep(pool, n, ctx, **kw):
    submit = pool.submit
    futures = [submit(_sleep_1ms) for _ in range(n)]
    return sum(f.result(timeout=IO_TIMEOUT) for f in futures)


def _run_socket(pool, n, ctx, **kw):
    submit = pool.submit
    task = ctx.request_1k
    futures = [submit(task) for _ in range(n)]
    return sum(f.result(timeout=IO_TIMEOUT) for f in futures)


class ReplyServer:
    """Loopback TCP connections whose server side answers each byte it
    receives with PAYLOAD bytes, from one thread.

    The client ends wait in a queue; a task takes one, sends one byte, reads
    exactly PAYLOAD bytes and puts it back, so a connection never has two
    readers and at most PAYLOAD bytes are in flight on it (the server never
    blocks on a full buffer). Everything has a timeout, and close() stops the
    thread and closes every socket.
    """

    def __init__(self, nconn):
        self.clients = queue.SimpleQueue()
        self._socks = []
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._reply = b"x" * PAYLOAD
        self.error = None
        listener = socket.create_server(("127.0.0.1", 0), backlog=nconn)
        try:
            listener.settimeout(IO_TIMEOUT)
            addr = listener.getsockname()
            for _ in range(nconn):
                c = socket.create_connection(addr, timeout=IO_TIMEOUT)
                s, _ = listener.accept()
                for sock in (c, s):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.settimeout(IO_TIMEOUT)
                    self._socks.append(sock)
                self._sel.register(s, selectors.EVENT_READ)
                self.clients.put(c)
        except BaseException:
            self.close()
            raise
        finally:
            listener.close()
        self._thread = threading.Thread(target=self._serve, name="bench-reply-server", daemon=True)
        self._thread.start()

    def _serve(self):
        try:
            while not self._stop.is_set():
                for key, _ in self._sel.select(timeout=0.05):
                    s = key.fileobj
                    data = s.recv(4096)
                    if not data:
                        self._sel.unregister(s)
                        continue
                    s.sendall(self._reply * len(data))
        except Exception as exc:  # reported by request_1k and by close()
            self.error = exc

    def request_1k(self):
        c = self.clients.get(timeout=IO_TIMEOUT)
        try:
            c.sendall(b"?")
            buf = bytearray(PAYLOAD)
            view = memoryview(buf)
            got = 0
            while got < PAYLOAD:
                k = c.recv_into(view[got:])
                if k == 0:
                    raise ConnectionError(f"reply server closed the connection ({self.error!r})")
                got += k
            return got
        finally:
            self.clients.put(c)

    def close(self):
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(timeout=IO_TIMEOUT)
        self._sel.close()
        for sock in self._socks:
            sock.close()
        self._socks = []


# ------------------------------------------------------------------ measuring

def _warm_up(pool, workers):
    """Starts every worker thread before the clock starts: `workers` tasks
    that wait on one barrier force a lazily-growing pool to its maximum."""
    barrier = threading.Barrier(workers + 1, timeout=10)

    def wait():
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass

    futures = [pool.submit(wait) for _ in range(workers)]
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass  # the pool did not start all its workers; measure it anyway
    for f in futures:
        f.result(timeout=IO_TIMEOUT)


def _measure(factory, workers, run, n, ctx, kw, check):
    """One timed run on a fresh, warmed-up pool: (wall seconds, CPU seconds).

    CPU time is the whole process's (every thread), so a pool that spins
    while it waits pays for it here."""
    pool = factory(max_workers=workers)
    try:
        _warm_up(pool, workers)
        gc.collect()
        c0 = time.process_time()
        t0 = time.perf_counter()
        result = run(pool, n, ctx, **kw)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
    finally:
        pool.shutdown(wait=True)
    problem = check(result, n)
    if problem:
        raise AssertionError(f"{getattr(factory, '__qualname__', factory)}: wrong result: {problem}")
    return elapsed, cpu


def _check_count(result, n):
    return None if result == n else f"expected {n}, got {result!r}"


def _check_map(result, n):
    if result == list(range(n)):
        return None
    return f"map results differ from range({n}) (length {len(result)})"


def _check_bytes(result, n):
    return None if result == n * PAYLOAD else f"expected {n * PAYLOAD} bytes, got {result!r}"


def _cases(tasks, workers, io_workers):
    """The case table. Each case measures some contenders per repeat and
    reports rows that pair a stdlib contender with a braid one."""
    io_tasks = max(1, tasks // 50)
    ideal_ms = io_tasks / io_workers * 1.0  # 1 ms per task, io_workers at once
    return {
        "noop_bulk": dict(
            n=tasks, workers=workers, run=_run_noop_bulk, check=_check_count,
            contenders=[("stdlib", {}), ("braid", {})],
            rows=[("no-op bulk", "stdlib", "braid", "")]),
        "noop_roundtrip": dict(
            n=max(1, tasks // 5), workers=workers, run=_run_roundtrip, check=_check_count,
            contenders=[("stdlib", {}), ("braid", {})],
            rows=[("no-op round trip", "stdlib", "braid", "")]),
        "map": dict(
            n=tasks, workers=workers, run=_run_map, check=_check_map,
            contenders=[("stdlib", {}), ("braid", {}),
                        ("braid chunked", {"chunksize": MAP_CHUNKSIZE})],
            rows=[("map", "stdlib", "braid", ""),
                  (f"map chunksize={MAP_CHUNKSIZE}", "stdlib", "braid chunked",
                   "stdlib ignores chunksize")]),
        "sleep": dict(
            n=io_tasks, workers=io_workers, run=_run_sleep, check=_check_count,
            contenders=[("stdlib", {}), ("braid", {})],
            rows=[("sleep 1 ms", "stdlib", "braid", f"ideal {ideal_ms:.1f}")]),
        "socket": dict(
            n=io_tasks, workers=io_workers, run=_run_socket, check=_check_bytes,
            contenders=[("stdlib", {}), ("braid", {})],
            rows=[("socket 1 KiB", "stdlib", "braid", "loopback TCP")]),
    }


def run_cases(names, *, tasks, repeat, workers, io_workers, braid_pool, on_row=None):
    """Runs the named cases and returns one dict per row of the table.

    braid_pool is braid.ThreadPool, or None to measure the stdlib alone.
    on_row(row) is called as each row is finished (to print progressively).
    """
    stdlib_pool = concurrent.futures.ThreadPoolExecutor
    table = _cases(tasks, workers, io_workers)
    rows = []
    server = None
    try:
        for name in names:
            case = table[name]
            ctx = None
            if name == "socket":
                if server is None:
                    server = ReplyServer(io_workers)
                ctx = server
            contenders = [(label, kw) for label, kw in case["contenders"]
                          if braid_pool is not None or not label.startswith("braid")]
            times = {label: [] for label, _ in contenders}
            cpus = {label: [] for label, _ in contenders}
            for r in range(repeat):
                # Alternate who goes first, so neither always runs on a
                # cooler (or warmer) machine.
                order = contenders if r % 2 == 0 else contenders[::-1]
                for label, kw in order:
                    factory = braid_pool if label.startswith("braid") else stdlib_pool
                    wall, cpu = _measure(factory, case["workers"], case["run"],
                                         case["n"], ctx, kw, case["check"])
                    times[label].append(wall)
                    cpus[label].append(cpu)
            for title, s_label, b_label, note in case["rows"]:
                row = _make_row(name, title, case["n"], case["workers"],
                                times.get(s_label), times.get(b_label), note,
                                cpus.get(s_label), cpus.get(b_label))
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    finally:
        if server is not None:
            server.close()
    return rows


def _cpu_of_best(times, cpus):
    """CPU seconds of the run with the best wall time."""
    if not times:
        return None
    return cpus[times.index(min(times))]


def _make_row(case, title, n, workers, s_times, b_times, note, s_cpus=None, b_cpus=None):
    s_best = min(s_times) if s_times else None
    b_best = min(b_times) if b_times else None
    s_cpu = _cpu_of_best(s_times, s_cpus) if s_cpus else None
    b_cpu = _cpu_of_best(b_times, b_cpus) if b_cpus else None
    return {
        "case": case,
        "title": title,
        "tasks": n,
        "workers": workers,
        "stdlib_best_s": s_best,
        "braid_best_s": b_best,
        "stdlib_us_per_task": None if s_best is None else s_best / n * 1e6,
        "braid_us_per_task": None if b_best is None else b_best / n * 1e6,
        "ratio": None if not (s_best and b_best) else s_best / b_best,
        "stdlib_cpu_us_per_task": None if s_cpu is None else s_cpu / n * 1e6,
        "braid_cpu_us_per_task": None if b_cpu is None else b_cpu / n * 1e6,
        "stdlib_all_s": s_times or [],
        "braid_all_s": b_times or [],
        "note": note,
    }


# ------------------------------------------------------------------ output

def environment(command, braid_version, *, workers, io_workers, repeat, tasks):
    return {
        **_bench.machine(),
        "braid_version": braid_version,
        "command": command,
        "workers": workers,
        "io_workers": io_workers,
        "repeat": repeat,
        "tasks": tasks,
    }


def format_header(env):
    cpus = f"{env['cpu_count']} CPUs"
    if env["cpus_usable"] is not None and env["cpus_usable"] != env["cpu_count"]:
        cpus += f" ({env['cpus_usable']} usable)"
    gil = "" if env["gil"] else ", free-threaded"
    braid = env["braid_version"] or "not measured (--stdlib-only)"
    return "\n".join([
        f"{BRAID_NAME} vs {STDLIB_NAME}",
        f"python {env['python']} ({env['implementation']}{gil}), {env['platform']}, {cpus}",
        f"braid {braid}",
        f"command: {env['command']}",
        f"best of {env['repeat']} repeat(s), executors interleaved; same max_workers for both "
        f"({env['workers']} for the no-op cases, {env['io_workers']} for I/O)",
    ])


COLUMNS = ("case", "tasks", "workers", "stdlib µs/task", "braid µs/task", "ratio", "")
_WIDTHS = (18, 7, 7, 15, 14, 7, 0)


def _cell(value, fmt):
    return "-" if value is None else format(value, fmt)


def format_row(row):
    cells = (row["title"], str(row["tasks"]), str(row["workers"]),
             _cell(row["stdlib_us_per_task"], ".2f"), _cell(row["braid_us_per_task"], ".2f"),
             "-" if row["ratio"] is None else f"{row['ratio']:.2f}x")
    note = row["note"]
    cpu = [f"{label} {v:.2f}" for label, v in
           (("stdlib", row.get("stdlib_cpu_us_per_task")), ("braid", row.get("braid_cpu_us_per_task")))
           if v is not None]
    if cpu:
        note = f"cpu µs/task: {', '.join(cpu)}" + (f"; {note}" if note else "")
    if row["case"] in ("sleep", "socket"):
        walls = [f"{label} {t * 1e3:.1f}" for label, t in
                 (("stdlib", row["stdlib_best_s"]), ("braid", row["braid_best_s"])) if t is not None]
        note = f"wall ms: {', '.join(walls)}; {note}"
    return _join(cells + (note,))


def format_columns():
    header = _join(COLUMNS)
    return header + "\n" + "-" * len(header)


def _join(cells):
    out = [cells[0].ljust(_WIDTHS[0])]
    out += [c.rjust(w) for c, w in zip(cells[1:-1], _WIDTHS[1:-1])]
    if cells[-1]:
        out.append(cells[-1])
    return "  ".join(out).rstrip()


FOOTER = "ratio = stdlib time / braid time (above 1: braid is faster)"


# ------------------------------------------------------------------ entry

def build_parser(prog=None):
    p = argparse.ArgumentParser(
        prog=prog or "python -m braid bench threadpool",
        description="braid.ThreadPool vs concurrent.futures.ThreadPoolExecutor, "
                    "side by side in one run.")
    p.add_argument("--quick", action="store_true",
                   help=f"short run for CI and smoke tests ({QUICK_TASKS} tasks, "
                        f"{QUICK_REPEAT} repeats unless given)")
    p.add_argument("--repeat", type=int, metavar="N",
                   help=f"repeats per case, best kept (default {DEFAULT_REPEAT})")
    p.add_argument("--tasks", type=int, metavar="N",
                   help=f"tasks in the no-op bulk and map cases (default {DEFAULT_TASKS}); "
                        "the round trip runs N/5, the I/O cases N/50")
    p.add_argument("--workers", type=int, metavar="N",
                   help=f"max_workers for the no-op and map cases (default "
                        f"{default_workers()}, ThreadPoolExecutor's own default here)")
    p.add_argument("--io-workers", type=int, metavar="N", default=DEFAULT_IO_WORKERS,
                   help=f"max_workers for the sleep and socket cases (default {DEFAULT_IO_WORKERS})")
    p.add_argument("--cases", metavar="LIST", default=",".join(CASES),
                   help=f"comma-separated subset of: {', '.join(CASES)} (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--stdlib-only", action="store_true",
                   help="measure ThreadPoolExecutor alone (when braid is not built)")
    return p


def main(argv=None, *, command=None):
    """Runs the benchmark; returns the exit status (0 ok, 1 braid missing,
    2 bad arguments)."""
    return _bench.run_main(_main, argv, command)


def _main(argv, command):
    parser = build_parser()
    args = parser.parse_args(argv)
    tasks = args.tasks if args.tasks is not None else (QUICK_TASKS if args.quick else DEFAULT_TASKS)
    repeat = args.repeat if args.repeat is not None else (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    workers = args.workers if args.workers is not None else default_workers()
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if tasks < 1 or repeat < 1 or workers < 1 or args.io_workers < 1:
        parser.error("--tasks, --repeat, --workers and --io-workers must be at least 1")

    if command is None:
        command = _bench.command_line("threadpool", argv)

    braid_pool, braid_version = None, None
    if not args.stdlib_only:
        try:
            braid_pool, braid_version = load_braid()
        except BraidMissing as exc:
            print(f"error: {BRAID_NAME} is not available: {exc}\n"
                  f"Build and install braid first (pip install .), or pass --stdlib-only "
                  f"to measure {STDLIB_NAME} alone.", file=sys.stderr)
            return 1

    env = environment(command, braid_version, workers=workers, io_workers=args.io_workers,
                      repeat=repeat, tasks=tasks)
    if args.json:
        rows = run_cases(names, tasks=tasks, repeat=repeat, workers=workers,
                         io_workers=args.io_workers, braid_pool=braid_pool)
        json.dump({"benchmark": "threadpool", "environment": env, "results": rows},
                  sys.stdout, indent=2)
        print()
        return 0

    print(format_header(env))
    print()
    print(format_columns(), flush=True)
    run_cases(names, tasks=tasks, repeat=repeat, workers=workers, io_workers=args.io_workers,
              braid_pool=braid_pool, on_row=lambda row: print(format_row(row), flush=True))
    print()
    print(FOOTER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
