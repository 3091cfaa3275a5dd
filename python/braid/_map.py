"""braid.map, braid.imap and braid.amap: one call that runs fn over the items on threads,
processes, the event loop or a Dask cluster -- chosen by measurement in auto mode
(_mappolicy.py).

Whatever runs the items, the results come back in input order, and the first exception
stops the map: what has not started is cancelled, the item's own exception is raised with
a note naming its index, and a process pool's workers are killed rather than left running.
Pools made here live for one call.
"""

import collections
import collections.abc
import concurrent.futures
import itertools
import logging
import sys
import threading
import time

from . import _mappolicy as policy
from ._mapchunk import _note, run_chunk  # noqa: F401 (_note: for _mapasync)
from ._progress import make_progress

__all__ = ["map", "imap", "amap"]

MODES = ("auto", "sequential", "thread", "process", "interpreter", "async", "dask")
ASYNC_LIMIT = 1000
SEQUENTIAL_BATCH = 8192  # at most, items between checks of the deadline and progress (and
# cache-friendly: a comprehension over 64 Ki items runs 1.4x slower per item than over 8 Ki)

log = logging.getLogger("braid")
_builtin_map = map


# ---- what runs the items ----------------------------------------------------------------

def _chunks(items, size, start):
    """(start index, chunk) pairs of an iterator's items, the first at index ``start``;
    ``size`` is a number of items, or a callable giving the next chunk's."""
    while True:
        chunk = list(itertools.islice(items, size() if callable(size) else size))
        if not chunk:
            return
        yield start, chunk
        start += len(chunk)


def _gap_chunks(items, gaps, size):
    """(start index, chunk) pairs of a sequence's items in the [start, stop) gaps; a range
    is cut into ranges, which pickle in a few bytes whatever their length."""
    for i, stop in gaps:
        while i < stop:
            n = size() if callable(size) else size
            yield i, items[i:min(i + n, stop)]
            i += n


class Stopper:
    """Lets another thread stop a running map (amap's cancellation): ``stop()`` sets the flag
    and wakes the waiting consumer."""

    def __init__(self):
        self.stopped = False
        self.wake = threading.Event()

    def stop(self):
        self.stopped = True
        self.wake.set()


def _future_failed(future):
    return future.cancelled() or future.exception() is not None


def timeout_error(done, total, timeout):
    of = "" if total is None else f" of {total:,}"
    return TimeoutError(f"braid.map: {done:,}{of} items done when the timeout of {timeout} s "
                        "ran out; the rest were cancelled")


def ordered(submit, chunks, window, *, deadline=None, timeout=None, progress, abort,
            stopper=None, failed=_future_failed, total=None, unwrap=None, done_before=0):
    """The chunks' lists of results, in input order, with at most ``window`` chunks in
    flight.

    ``submit(start, chunk)`` returns a future of the chunk's result list. A failure in any
    chunk ends the iteration at once, in the order failures happened (not the input's).
    Whatever way the iteration ends early -- an exception, the timeout, Ctrl-C, the
    consumer closing it -- the futures still in flight are cancelled and ``abort()`` is
    called (it kills or drops the workers). ``done_before``: items done before these
    chunks (auto's calibration), for the timeout's count."""
    stopper = stopper or Stopper()
    inflight = collections.deque()
    bad = collections.deque()
    where = {}

    def settled(future):
        if failed(future):
            bad.append(future)
        stopper.wake.set()

    def refill():
        while len(inflight) < window:
            nxt = next(chunks, None)
            if nxt is None:
                return
            start, chunk = nxt
            future = submit(start, chunk)
            where[id(future)] = (start, len(chunk))
            inflight.append(future)
            future.add_done_callback(settled)

    done_items = done_before
    finished = False
    try:
        refill()
        while inflight:
            head = inflight[0]
            while not head.done() and not bad:
                if stopper.stopped:
                    raise concurrent.futures.CancelledError("braid.map was cancelled")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise timeout_error(done_items, total, timeout)
                stopper.wake.clear()
                if head.done() or bad:
                    break
                stopper.wake.wait(left)
            failure = bad[0] if bad else None
            if failure is not None:
                _raise_failure(failure, where.get(id(failure)))
            inflight.popleft()
            where.pop(id(head), None)
            results = head.result()
            if unwrap is not None:
                results = unwrap(results)
            refill()
            done_items += len(results)
            progress.update(len(results))
            yield results
        finished = True
    finally:
        if not finished:
            for future in inflight:
                future.cancel()
            abort()


def _raise_failure(future, span):
    try:
        future.result()  # done: it raises at once
    except Exception as exc:
        if span is not None and not getattr(exc, "__notes__", None):
            start, size = span
            try:
                exc.add_note(f"braid.map: raised while running items {start:,} to {start + size - 1:,}")
            except Exception:
                pass
        raise


# ---- arguments ----------------------------------------------------------------------------

def _positive(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


def _seconds(timeout):
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if timeout != timeout or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, not {timeout}")
    return timeout


def is_coroutine_function(fn):
    import inspect

    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(type(fn), "__call__", None))


class _Call:
    """The checked arguments of one braid.map / imap / amap call."""

    def __init__(self, fn, iterable, mode, workers, chunksize, timeout, progress, limit,
                 executor, address, client, explain):
        if not isinstance(mode, str) or mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(_builtin_map(repr, MODES))}; got {mode!r}")
        if not callable(fn):
            raise TypeError(f"braid.map() needs a callable, not {type(fn).__name__}")
        try:
            self.items = iter(iterable)
        except TypeError:
            raise TypeError(f"braid.map() needs an iterable of items, not {type(iterable).__name__}") from None
        self.iterable = iterable
        self.fn = fn
        self.workers = _positive("workers", workers)
        self.chunksize = _positive("chunksize", chunksize)
        self.limit = _positive("limit", limit)
        self.timeout = _seconds(timeout)
        self.deadline = None if self.timeout is None else time.monotonic() + self.timeout
        self.done_before = 0  # items auto's calibration ran, before the plan's
        self.progress = progress
        self.explain = bool(explain)
        self.executor, self.address, self.client = executor, address, client
        coro = is_coroutine_function(fn)
        if executor is not None:
            if not isinstance(executor, concurrent.futures.Executor):
                raise TypeError(f"executor must be a concurrent.futures.Executor, not {type(executor).__name__}")
            if mode != "auto":
                raise ValueError(f"executor= runs the map on that executor; leave mode='auto', not {mode!r}")
            mode = "executor"
        elif mode == "auto" and (client is not None or address is not None):
            mode = "dask"
        if mode == "dask" and client is None and address is None:
            raise ValueError("mode='dask' needs client= (a distributed.Client) or address='tcp://host:port'")
        if mode != "dask" and mode != "auto" and (client is not None or address is not None):
            raise ValueError(f"client= and address= are for mode='dask', not {mode!r}")
        if mode == "async" and not coro:
            raise TypeError(f"mode='async' needs a coroutine function (async def); {_name(fn)} is a "
                            "plain function: make it async def, or use mode='thread'")
        if coro and mode in ("thread", "process", "interpreter", "dask", "executor"):
            raise TypeError(f"{_name(fn)} is a coroutine function: use mode='async' (or 'auto'), "
                            f"not {mode!r}")
        if coro and mode == "sequential":  # one coroutine at a time, each awaited
            limit = self.limit = 1
        self.mode = "async" if coro and mode in ("auto", "sequential") else mode
        self.total = self._length()

    def _length(self):
        try:
            return len(self.iterable)
        except TypeError:  # no len(): an iterator, a generator
            return None

    def materialize(self):
        """map() returns a list anyway: an input of unknown length is read first, so the
        policy knows how many items there are."""
        if self.total is None:
            self.iterable = self.items = list(self.items)
            self.total = len(self.iterable)


def _name(fn):
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _report(call, line):
    log.info(line)
    if call.explain:
        print(line, file=sys.stderr, flush=True)


# ---- the modes ----------------------------------------------------------------------------

class Pace:
    """Sequential mode's batch size: batches of about BATCH_S, so the deadline, progress and
    cancellation are looked at that often, and nothing is timed per item."""

    BATCH_S = 0.005

    def __init__(self, wall_each=0.0):
        self.size = 1 if wall_each <= 0 else self._fit(wall_each)

    def _fit(self, wall_each):
        return max(1, min(SEQUENTIAL_BATCH, int(self.BATCH_S / wall_each)))

    def __call__(self):
        return self.size

    def ran(self, items, seconds):
        if items:
            self.size = self._fit(seconds / items) if seconds > 0 else SEQUENTIAL_BATCH


def _sequential(call, chunks, progress, pace):
    """The chunks run in the calling thread, a list of results each; ``pace`` (cutting
    them) learns from each."""
    done = 0
    for start, chunk in chunks:
        if call.stopper.stopped:
            raise concurrent.futures.CancelledError("braid.map was cancelled")
        if call.deadline is not None and time.monotonic() >= call.deadline:
            raise timeout_error(call.done_before + done, call.total, call.timeout)
        t0 = time.perf_counter()
        results = run_chunk(call.fn, chunk, start)
        pace.ran(len(results), time.perf_counter() - t0)
        done += len(results)
        progress.update(len(results))
        yield results


def _pool_run(call, plan, chunks, progress):
    """The chunks on a pool made for this call."""
    if plan.mode in ("thread", "interpreter"):
        if plan.pool is not None:  # the interpreter pool auto mode probed the module with
            pool = plan.pool
        elif plan.mode == "interpreter":
            from ._interppool import InterpreterPool

            pool = InterpreterPool(plan.workers)
        else:
            from ._threadpool import ThreadPool

            pool = ThreadPool(plan.workers, thread_name_prefix="braid.map")
        # a thread's chunk skips its items not started once the map is abandoned; a
        # sub-interpreter's is interrupted (KeyboardInterrupt), as processes are killed
        stop = [] if plan.mode == "thread" else None

        def abort():
            if stop is not None:
                stop.append(True)
            pool.shutdown(wait=False, cancel_futures=True)
            if plan.mode == "interpreter":
                pool._interrupt_running()
    else:
        from ._procpool import ProcessPool

        pool = ProcessPool(plan.workers)
        abort = pool.terminate
        stop = None
    window = 2 * plan.workers
    if call.limit is not None:
        window = max(1, min(window, call.limit // plan.chunksize))

    def submit(start, chunk):
        return pool.submit(run_chunk, call.fn, chunk, start, stop)

    finished = False
    try:
        yield from ordered(submit, chunks, window, deadline=call.deadline, timeout=call.timeout,
                           progress=progress, abort=abort, stopper=call.stopper, total=call.total,
                           done_before=call.done_before)
        finished = True
    finally:
        # After a failure, a timeout or Ctrl-C, abort() has cancelled the queue and killed
        # the processes or interrupted the sub-interpreters; threads cannot be killed, so
        # their running chunks skip what they have not started, in the background, instead
        # of holding up the exception.
        pool.shutdown(wait=finished)


def _executor_run(call, items, progress):
    executor = call.executor
    workers = getattr(executor, "_max_workers", None) or policy.usable_cpus()
    size = call.chunksize or policy.chunk_size(call.total, workers, 0.0)
    window = 2 * workers if call.limit is None else max(1, call.limit // size)

    def submit(start, chunk):
        return executor.submit(run_chunk, call.fn, chunk, start)

    return ordered(submit, _input_chunks(items, call.total, size), window, deadline=call.deadline,
                   timeout=call.timeout, progress=progress, abort=lambda: None,
                   stopper=call.stopper, total=call.total), f"executor {type(executor).__name__}, chunks of {size:,}"


def _fixed_plan(call):
    mode = call.mode
    if mode == "thread":
        workers = call.workers or min(32, policy.usable_cpus() + 4)
    elif mode in ("process", "interpreter"):
        workers = call.workers or policy.usable_cpus()
    else:
        return policy.Plan("sequential")
    if call.total is not None:
        workers = max(1, min(workers, call.total))
    chunksize = call.chunksize or policy.chunk_size(call.total, workers, 0.0)
    return policy.Plan(mode, workers, chunksize)


def _input_chunks(items, total, size):
    """Chunks of the whole input: cut by index from a sequence, read from an iterator."""
    if _is_sequence(items, total):
        return _gap_chunks(items, [(0, total)], size)
    return _chunks(iter(items), size, 0)


def _is_sequence(items, total):
    return total is not None and isinstance(items, collections.abc.Sequence)



def _picklable(fn, sample):
    def check():
        from ._procworker import dumps

        for what, obj in (("fn", fn), ("an item", sample)):
            try:
                dumps(obj)
            except Exception as exc:
                return f"{what} does not pickle ({type(exc).__name__}: {exc})"
        return None
    return check


_interp_modules = {}  # module name -> None (imports in a sub-interpreter) or why not


def _probe_module(fn):
    """The module a callable comes from, through partials and bound methods."""
    for _ in range(8):
        inner = getattr(fn, "func", None) or getattr(fn, "__func__", None)
        if inner is None:
            break
        fn = inner
    name = getattr(fn, "__module__", None)
    return name if isinstance(name, str) else type(fn).__module__


def _prefer_interpreters(fn, plan):
    """CPU-bound work planned for processes goes to sub-interpreters instead when the
    function's module imports in one: tried once per module (a worker loads the pickled
    function, which imports what it needs), on the pool that then runs the map; the answer
    is kept for the process's lifetime."""
    from . import _interpworker
    from ._interppool import InterpreterPool

    name = _probe_module(fn)
    known = _interp_modules.get(name, "")
    if known:
        plan.why += f"; {known}, so processes"
        return
    try:
        payload = _interpworker.dumps_task(fn, (), None)
    except Exception:
        return  # it does not pickle: the process pool's own check says so
    if type(payload) is tuple:
        payload = payload[0]
    pool = InterpreterPool(plan.workers)
    why = None
    if known is None:
        pass
    else:
        try:
            why = pool.submit(_interpworker.probe_load, payload, name).result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        _interp_modules[name] = why
    if why is not None:
        pool.shutdown(wait=False)
        plan.why += f"; {why}, so processes"
        return
    plan.mode, plan.pool = "interpreter", pool
    plan.why += f"; module {name} imports in a sub-interpreter, so interpreters rather than processes"


def _results(call, progress):
    """The generator behind map and imap (not async, not dask): lists of results, in
    input order."""
    items = call.items if call.total is None else call.iterable
    if call.mode == "executor":
        gen, what = _executor_run(call, items, progress)
        _report(call, f"braid.map: {_count(call)}; on the given {what}")
        yield from gen
        return
    if call.mode != "auto":
        plan = _fixed_plan(call)
        _report(call, policy.explain_line(call.total, None, plan, given=True))
        yield from _run_plan(call, plan, lambda size: _input_chunks(items, call.total, size), progress,
                             remaining=call.total)
        return
    sample = []

    def run_block(fn, batch, out, start):
        sample[:] = batch[-1:]
        out += run_chunk(fn, batch, start)

    random_access = _is_sequence(items, call.total)
    source = items if random_access else iter(items)
    profile, blocks, exhausted = policy.calibrate(call.fn, source, call.total, run_block, call.deadline)
    progress.update(profile.items)
    call.done_before = profile.items
    if not exhausted and call.deadline is not None and time.monotonic() >= call.deadline:
        # the calibration's items run in this thread, and the one running when the time
        # ran out had to finish: no pool is started only to be cancelled
        raise timeout_error(profile.items, call.total, call.timeout)
    remaining = None if call.total is None else call.total - profile.items
    if exhausted:
        plan = policy.Plan("sequential", why=policy.shape(profile))
    else:
        plan = policy.choose(profile, remaining, workers=call.workers,
                             picklable=_picklable(call.fn, sample[0] if sample else None))
        if call.chunksize is not None:
            plan.chunksize = call.chunksize
        if plan.mode == "process" and policy.interpreters_available():
            _prefer_interpreters(call.fn, plan)
        elif plan.mode == "process" and policy.keyword_tuple_bug():
            plan.why += (f"; not sub-interpreters: Python {sys.version.split()[0]} can abort in them "
                         "(CPython gh-119213, fixed in 3.12.4)")
    _report(call, policy.explain_line(call.total, profile, plan))
    if exhausted:
        for _, results in blocks:
            yield results
        return
    if not random_access:  # one block, the head; the rest is the iterator's
        yield blocks[0][1]
        yield from _run_plan(call, plan, lambda size: _chunks(source, size, profile.items), progress,
                             profile.wall_each)
        return
    # a sequence: calibrated blocks, and the gaps between them for the plan
    gaps, cursor = [], 0
    for start, results in blocks:
        if start > cursor:
            gaps.append((cursor, start))
        cursor = start + len(results)
    if cursor < call.total:
        gaps.append((cursor, call.total))
    runner = _run_plan(call, plan, lambda size: _gap_chunks(items, gaps, size), progress,
                       profile.wall_each, remaining)
    cursor = 0
    for start, results in blocks:
        while cursor < start:  # the gap's chunks, which never cross into a block
            batch = next(runner)
            cursor += len(batch)
            yield batch
        yield results
        cursor = start + len(results)
    yield from runner  # the last gap, and the runner's own end (its pool shut down)


def _run_plan(call, plan, cut, progress, wall_each=0.0, remaining=None):
    """Runs the chunks ``cut(size)`` makes as ``plan`` says; ``size`` a number of items, or
    a callable giving the next chunk's (shrinking chunks for a pool and a known number of
    items, unless the caller fixed chunksize)."""
    if plan.mode == "sequential":
        pace = Pace(wall_each)
        return _sequential(call, cut(pace), progress, pace)
    size = plan.chunksize
    if remaining is not None and call.chunksize is None:
        size = policy.Guided(remaining, plan.workers, plan.chunksize, policy.smallest_chunk(wall_each))
    return _pool_run(call, plan, cut(size), progress)


def _count(call):
    return "an unknown number of items" if call.total is None else f"{call.total:,} items"


# ---- the public calls -----------------------------------------------------------------------

def _call(fn, iterable, mode, workers, chunksize, timeout, progress, limit, executor, address,
          client, explain):
    call = _Call(fn, iterable, mode, workers, chunksize, timeout, progress, limit, executor,
                 address, client, explain)
    call.stopper = Stopper()
    return call


def _report_async(call):
    limit = call.limit or ASYNC_LIMIT
    _report(call, f"braid.map: {_count(call)}; {_name(call.fn)} is a coroutine function → async on "
                  f"the event loop, at most {limit:,} in flight")


def _batches(call):
    """Lists of results in input order, for map and imap, whatever the mode (a list a
    chunk: items pass the generators here in bulk, not one by one); progress is closed
    when the generator ends."""
    progress = make_progress(call.progress, call.total)
    try:
        if call.mode == "async":
            from ._mapasync import sync_results

            _report_async(call)
            yield from sync_results(call, progress)
        elif call.mode == "dask":
            from ._mapdask import dask_results

            yield from dask_results(call, progress)
        else:
            yield from _results(call, progress)
    finally:
        progress.close()


def map(fn, iterable, *, mode="auto", workers=None, chunksize=None, timeout=None, progress=False,
        limit=None, executor=None, address=None, client=None, explain=False):
    """[fn(x) for x in iterable], run the way that suits the work; a list in input order.

    ``mode`` is "auto" (the default: coroutine functions go to the event loop; otherwise the
    first items run here, timed, and the rest go where they finish soonest -- this thread,
    threads sized by how much the items wait, or processes -- on Python 3.12+ sub-interpreters
    instead of processes when the function's module imports in one), "sequential", "thread",
    "process", "interpreter" (braid.InterpreterPool, 3.12+), "async" (at most ``limit``
    coroutines in flight, 1,000 by default) or "dask" (on a Dask distributed cluster:
    ``client=`` or ``address=``). ``executor=`` runs it on
    any concurrent.futures.Executor. ``workers`` caps the pool; ``chunksize`` fixes the
    items per task. ``timeout`` (seconds, for the whole map) raises TimeoutError and
    cancels the rest (an item running in the calling thread -- sequential mode, auto's
    first items -- ends first). ``progress=True`` draws a tqdm bar; a tqdm instance or a callable
    (done, total) is updated instead. ``explain=True`` prints what auto measured and chose
    (the "braid" logger always gets it at INFO).

    The first exception stops the map, cancels what has not started and is raised with a
    note naming the item's index.
    """
    call = _call(fn, iterable, mode, workers, chunksize, timeout, progress, limit, executor,
                 address, client, explain)
    call.materialize()
    if call.mode == "async":
        from ._mapasync import run_all

        _report_async(call)
        progress = make_progress(call.progress, call.total)
        try:
            return run_all(call, progress)
        finally:
            progress.close()
    return _joined(_batches(call))


def imap(fn, iterable, *, mode="auto", workers=None, chunksize=None, timeout=None,
         progress=False, limit=None, executor=None, address=None, client=None, explain=False):
    """Like braid.map, as a lazy iterator in input order: the input is read a bounded window
    ahead, so endless iterables work. Closing the iterator cancels what has not started."""
    call = _call(fn, iterable, mode, workers, chunksize, timeout, progress, limit, executor,
                 address, client, explain)
    return _items(_batches(call))


def _joined(batches):
    """The batches as one list (the first one, extended: no copy when there is one)."""
    joined = next(batches, None)
    if joined is None:
        return []
    for batch in batches:
        joined += batch
    return joined


def _items(batches):
    """imap's iterator; closing it closes the map's generators, which cancels the rest."""
    try:
        for batch in batches:
            yield from batch
    finally:
        batches.close()


async def amap(fn, iterable, *, mode="auto", workers=None, chunksize=None, timeout=None,
               progress=False, limit=None, executor=None, address=None, client=None,
               explain=False):
    """``await braid.amap(...)``: braid.map from inside a running event loop. Coroutine
    functions run on this loop; other work runs off it (the loop stays responsive), and
    cancelling the awaiting task cancels the map."""
    call = _call(fn, iterable, mode, workers, chunksize, timeout, progress, limit, executor,
                 address, client, explain)
    if call.mode == "async":
        from ._mapasync import async_results

        _report_async(call)
        progress = make_progress(call.progress, call.total)
        try:
            return await async_results(call, progress)
        finally:
            progress.close()
    import asyncio

    call.materialize()
    loop = asyncio.get_running_loop()
    done = loop.run_in_executor(None, lambda: _joined(_batches(call)))
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        call.stopper.stop()  # the map raises in its thread and takes its pool down
        await asyncio.wait([done])
        if not done.cancelled():
            done.exception()  # its CancelledError is this one's doing: not "never retrieved"
        raise
