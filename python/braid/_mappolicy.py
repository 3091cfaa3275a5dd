"""braid.map's auto mode: the tutorial's rule of thumb, decided by measurement.

The rule of thumb says: waiting on I/O -> threads, heavy calculation -> processes, and
says nothing of how heavy is heavy. Guessing goes wrong both ways (the tutorial's own
primes example is slower on a process pool than on one core at its size), so auto mode
measures instead of guessing:

1. Calibration runs the first items for real, in the caller's thread, in batches that
   grow (1, 1, 4, 16, ...) until they have taken CALIBRATION_S of wall time, or half a
   millisecond once it is clear no pool could pay off. Nothing runs twice: these results
   are the map's own results. The clocks are read around batches, never per item: the
   wall clock against the thread's CPU clock, less the time the thread sat runnable
   without a CPU (a busy machine must not make computing look like waiting). The first
   item is timed alone: its extra cost (imports, connections) is a warm-up, not a cost
   per item. From a sequence (braid.map reads its input into one) the batches are taken
   at 8 places spread over it, since cost often grows along the input; from an iterator,
   from its head.
2. From the CPU time ``c`` and wall time ``w`` per item, and the number of items left, it
   estimates how long each way would take and picks the fastest:

       sequential   n * w
       threads      k * THREAD_START_S + n * max(c, w / k)      (the GIL serialises c)
       processes    PROCESS_START_S + warm-up + n * w / P + n * PROCESS_ITEM_S

   plus a hand-off cost per chunk, and the first item's extra time (imports, connections:
   its warm-up) once per new worker process.

   ``k`` threads follow Little's law: to keep one core busy while each item waits
   ``w - c``, about ``w / c`` items must be in flight (capped at THREAD_CAP). ``P`` is the
   number of usable CPUs. When the GIL is truly off (a free-threaded build that stays so
   once braid's extension is loaded: ``gil_enabled``) threads run ``c`` in parallel too,
   so CPU-bound work goes to threads. A pool must win by PAYOFF to be picked: near the
   crossover, sequential has no start-up to lose.
3. A function or first item that does not pickle cannot go to processes; threads take
   the work instead, and the explanation says so.
4. On Python 3.12+ CPU-bound work planned for processes goes to sub-interpreters
   (braid.InterpreterPool: no process start, no pipe) when the function's module imports
   in one -- tried once per module and remembered; else to processes, and the explanation
   says which module could not be imported and why. Not on CPython 3.12.0-3.12.3, whose
   sub-interpreters can abort the process (braid._interppool.KEYWORD_TUPLE_BUG): processes,
   and the explanation says so.

The start-up costs are constants measured on a 2-core Linux machine (docs/BENCHMARKS.md).
"""

import dataclasses
import itertools
import math
import os
import sys
import time

CALIBRATION_S = 0.005     # wall time of the calibration batches
CALIBRATION_ENOUGH_S = 0.0005  # ... or this much, once no pool can pay off (_too_small)
CALIBRATION_MAX = 1 << 14  # items, whatever their cost
SPREAD_BLOCKS = 8         # places of a sequence where calibration takes its items
PAYOFF = 0.7              # a pool's estimate must be below PAYOFF x sequential
THREAD_START_S = 60e-6    # one more worker thread
THREAD_CHUNK_S = 5e-6     # hand-off of a chunk to a thread and back, in the caller
THREAD_CAP = 128          # threads for waiting-bound work
PROCESS_START_S = 0.06    # a process pool's first task starting (measured 40-66 ms), and its shutdown
PROCESS_ITEM_S = 0.08e-6  # pickling an item and its result (measured: small ints)
PROCESS_CHUNK_S = 20e-6   # a chunk's round trip through the rings, in the caller
CHUNKS_PER_WORKER = 16    # a short tail: the last chunks end close together
CHUNK_S = 0.02            # when the number of items is unknown: about this much per chunk
CHUNK_MAX_S = 0.25        # a chunk's work at most ...
CHUNK_MAX_ITEMS = 10_000  # ... or its items, when their cost is not known
CHUNK_MIN_S = 0.002       # the last chunks' work: a round trip costs ~20 µs


def usable_cpus():
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def interpreters_available():
    """Sub-interpreters with their own GIL (3.12+), with the GIL on: then CPU-bound work
    that auto mode would send to processes goes to braid.InterpreterPool when it can."""
    if sys.version_info < (3, 12) or not gil_enabled():
        return False
    from . import _interppool

    return _interppool.SUPPORTED and not _interppool.KEYWORD_TUPLE_BUG


def keyword_tuple_bug():
    """Whether this CPython has the sub-interpreter bug that keeps auto mode off
    InterpreterPool (braid._interppool.KEYWORD_TUPLE_BUG)."""
    if sys.version_info[:2] != (3, 12):
        return False
    from . import _interppool

    return _interppool.SUPPORTED and _interppool.KEYWORD_TUPLE_BUG


def gil_enabled():
    """Whether this process's threads run Python code one at a time, as braid's pools will
    see it. On a free-threaded build the answer can change: importing an extension module
    that does not declare ``Py_mod_gil`` turns the GIL on (with a RuntimeWarning), and
    braid's pools stand on braid._braid, which declares nothing of the kind yet
    (docs/FREE_THREADING.md). So while the GIL is off the extension is loaded first and the
    question asked again: the plan is made for the GIL the pool will run under, not for the
    one before its import. With the GIL on, or before 3.13, nothing is loaded."""
    check = getattr(sys, "_is_gil_enabled", None)
    if check is None or check():
        return True
    _load_extension()
    return bool(check())


def _load_extension():
    from . import _braid  # noqa: F401  (its import is what may turn the GIL on)


def _runnable_seconds():
    """Seconds this thread has spent runnable but waiting for a CPU (Linux schedstat), or 0
    where the kernel does not say."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclasses.dataclass
class Profile:
    """What calibration measured: ``items`` run, their CPU and wall seconds in total. The
    wall time leaves out the time the thread was runnable but had no CPU: on a busy machine
    CPU-bound work would otherwise look as if it waited on I/O."""

    items: int = 0
    cpu: float = 0.0
    wall: float = 0.0
    first_cpu: float = 0.0   # the first item alone: imports, connections and caches warm up
    first_wall: float = 0.0  # in it, so the cost per item is taken from the others

    @property
    def cpu_each(self):
        if self.items > 1:
            return max(0.0, self.cpu - self.first_cpu) / (self.items - 1)
        return self.cpu / self.items if self.items else 0.0

    @property
    def wall_each(self):
        if self.items > 1:
            return max(0.0, self.wall - self.first_wall) / (self.items - 1)
        return self.wall / self.items if self.items else 0.0

    @property
    def warmup(self):
        """What the first item took beyond the others' cost: paid again by each new worker."""
        return max(0.0, self.first_wall - self.wall_each) if self.items > 1 else 0.0


@dataclasses.dataclass
class Plan:
    """How the rest of the items run: ``mode`` with ``workers`` and ``chunksize``; ``why``
    is the explanation's tail (the measured shape, and any fallback)."""

    mode: str
    workers: int = 1
    chunksize: int = 1
    why: str = ""
    pool: object = None  # made while planning (the interpreter pool that probed the module)


def calibrate(fn, items, total, run_block, deadline=None):
    """Runs the first calibration items: from ``items``, an iterator, or a sequence of
    ``total`` items (then SPREAD_BLOCKS blocks spread over it, not just its head: work that
    grows along the input, as the primes of 1..N do, is timed at its average, not at its
    cheap start). ``run_block(fn, batch, out, start)`` runs a batch whose first item is at
    index ``start`` into the list ``out``.

    Returns (Profile, blocks, exhausted): blocks is a list of [start, results] in input
    order; exhausted says every item has run."""
    profile = Profile()
    spread = total is not None and total >= 4 * SPREAD_BLOCKS and hasattr(items, "__getitem__")
    if spread:
        starts = [i * total // SPREAD_BLOCKS for i in range(SPREAD_BLOCKS)]
        ends = starts[1:] + [total]
    else:
        starts, ends = [0], [total]
        items = iter(items)  # a short sequence: its head, read once
    blocks = [[start, []] for start in starts]
    # The clocks are read around the whole calibration (the wall clock after each batch
    # too, for the budget): the batches' own overhead is a few µs in all.
    queued = _runnable_seconds()
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    size, rounds, enough = 1, 0, False
    while not enough and profile.items < CALIBRATION_MAX:
        todo = blocks[:1] if rounds == 0 else blocks  # the first item alone warms caches up
        ran = 0
        for (start, out), end in zip(todo, ends):
            at = start + len(out)
            if spread:
                batch = items[at:min(at + size, end)]
            else:
                batch = list(itertools.islice(items, size))
            if not batch:
                continue
            run_block(fn, batch, out, at)
            profile.wall = time.perf_counter() - wall0
            profile.items += len(batch)
            ran += len(batch)
            enough = profile.wall >= CALIBRATION_S or deadline is not None and time.monotonic() >= deadline
            if not enough and profile.wall >= CALIBRATION_ENOUGH_S:
                profile.cpu = time.thread_time() - cpu0
                enough = _too_small(profile, total)
            if enough:
                break
        if rounds == 0:
            profile.first_wall, profile.first_cpu = profile.wall, time.thread_time() - cpu0
        if ran == 0 or total is not None and profile.items >= total:
            return _finish(profile, cpu0, queued), [b for b in blocks if b[1]], True
        rounds += 1
        if rounds > 1:
            size *= 4  # few rounds: each costs a few µs per block, more than tiny items do
    return _finish(profile, cpu0, queued), [b for b in blocks if b[1]], False


def _too_small(profile, total):
    """CPU-bound items too few for a process pool's start to pay off, with the GIL on (so
    threads cannot help either): more calibration would not change the answer."""
    if total is None or not gil_enabled():
        return False
    return shape(profile) == "CPU-bound" and (total - profile.items) * profile.wall_each < PROCESS_START_S


def _finish(profile, cpu_before, queued_before):
    """The profile's CPU time, and its wall time without the time the thread spent runnable
    without a CPU."""
    profile.cpu = time.thread_time() - cpu_before
    queued = _runnable_seconds() - queued_before
    profile.wall = max(profile.cpu, profile.wall - queued)
    return profile


def shape(profile):
    """'CPU-bound', 'waiting-bound' or 'mixed', from the CPU share of the wall time."""
    share = profile.cpu / profile.wall if profile.wall > 0 else 1.0
    if share >= 0.8:
        return "CPU-bound"
    if share <= 0.2:
        return "waiting-bound"
    return "mixed"


def thread_workers(profile, cap):
    """Little's law: items in flight to keep one core busy while each waits."""
    c, w = max(profile.cpu_each, 1e-7), profile.wall_each
    return max(1, min(cap, math.ceil(w / c)))


def chunk_size(n, workers, wall_each):
    """Items per chunk: a short tail for a known number of items; else about CHUNK_S of
    work, or one item when the cost is not known (``wall_each`` 0). Never more than
    CHUNK_MAX_S of work, or CHUNK_MAX_ITEMS when the cost is not known, so that the first
    results of a huge input come soon."""
    if n is None:
        return max(1, math.ceil(CHUNK_S / wall_each)) if wall_each > 0 else 1
    cap = math.ceil(CHUNK_MAX_S / wall_each) if wall_each > 0 else CHUNK_MAX_ITEMS
    return max(1, min(cap, math.ceil(n / (CHUNKS_PER_WORKER * workers))))


class Guided:
    """Chunk sizes that shrink as the items run out (guided self-scheduling): a chunk takes
    at most a 1/(2 x workers) share of the items left, from ``first`` down to ``smallest``.
    Equal chunks leave the last ones running alone while other workers idle -- half a
    chunk on average, and the dearest chunk when cost grows along the input; shrinking
    chunks end close together, and the many chunks before them stay large."""

    def __init__(self, remaining, workers, first, smallest=1):
        self.left = remaining
        self.share = 2 * workers
        self.first = first
        self.smallest = max(1, min(smallest, first))

    def __call__(self):
        n = max(self.smallest, min(self.first, math.ceil(self.left / self.share)))
        self.left = max(0, self.left - n)
        return n


def smallest_chunk(wall_each):
    """Items in a chunk of about CHUNK_MIN_S of work (1 when the cost is not known)."""
    return max(1, math.ceil(CHUNK_MIN_S / wall_each)) if wall_each > 0 else 1


def choose(profile, remaining, *, workers=None, picklable=lambda: None):
    """The plan for ``remaining`` items (None: unknown, maybe endless) after calibration.
    ``workers`` caps the pool; ``picklable()`` returns None or why processes cannot be used."""
    cpus = usable_cpus()
    gil = gil_enabled()
    c, w = profile.cpu_each, profile.wall_each
    kind = shape(profile)
    n = remaining if remaining is not None else 1e12  # a per-item rate decides then

    estimates = {"sequential": n * w}
    k_thread = thread_workers(profile, workers or THREAD_CAP)
    if not gil:
        k_thread = min(workers or THREAD_CAP, max(cpus, k_thread * cpus))
    k_thread = min(k_thread, max(1, int(n)))
    serial = c if gil else c / min(cpus, k_thread)
    chunk_thread = chunk_size(remaining, 4 * k_thread, w)
    estimates["thread"] = (k_thread * THREAD_START_S + n * max(serial, w / k_thread)
                           + n / chunk_thread * THREAD_CHUNK_S)
    k_proc = min(workers or cpus, cpus, max(1, int(n)))
    chunk_proc = chunk_size(remaining, k_proc, w)
    estimates["process"] = (PROCESS_START_S + profile.warmup + n * (w / k_proc + PROCESS_ITEM_S)
                            + n / chunk_proc * PROCESS_CHUNK_S)

    best = min(estimates, key=estimates.get)
    if best != "sequential" and estimates[best] > PAYOFF * estimates["sequential"]:
        best = "sequential"
    why = kind
    if best == "process" and (why_not := picklable()) is not None:
        best, why = "thread", f"{kind}; {why_not}, so threads instead of processes"
        k_thread = max(k_thread, min(cpus, max(1, int(n))))
        chunk_thread = chunk_size(remaining, 4 * k_thread, w)
    if best == "thread":
        return Plan("thread", k_thread, chunk_thread, why)
    if best == "process":
        return Plan("process", k_proc, chunk_proc, why)
    return Plan("sequential", 1, 1, why)


def explain_line(total, profile, plan, given=False):
    """The one line explain=True prints, e.g. 'braid.map: 1,999,999 items; first 512 took
    1.8 µs CPU / 1.8 µs wall each (CPU-bound) → process, 2 workers, chunks of 62,500'."""
    count = "an unknown number of items" if total is None else f"{total:,} items"
    if given:
        head = f"braid.map: {count}; mode {plan.mode!r} as given"
    else:
        warm = ""
        if profile.items > 1 and profile.first_wall > 2 * profile.wall_each:
            warm = f" after the first ({_us(profile.first_wall)})"
        head = (f"braid.map: {count}; first {profile.items:,} took {_us(profile.cpu_each)} CPU / "
                f"{_us(profile.wall_each)} wall each{warm} ({plan.why})")
    if plan.mode == "sequential":
        tail = "sequential, in the calling thread"
    elif plan.mode in ("thread", "process", "interpreter"):
        tail = f"{plan.mode}, {plan.workers} workers, chunks of {plan.chunksize:,}"
    else:
        tail = plan.mode + (f", {plan.why}" if given and plan.why else "")
    return f"{head} → {tail}"


def _us(seconds):
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e9:.0f} ns"
