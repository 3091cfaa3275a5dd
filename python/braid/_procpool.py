"""braid.ProcessPool: the Python face of the process pool (src/python/procpool.c)."""

import collections
import concurrent.futures
import itertools
import math
import os
import sys
import time

from . import _braid, _pools, _procworker
from . import _errors
from ._errors import TaskTimeout

__all__ = ["ProcessPool"]

# Bytes of each shared-memory ring (tasks in, results out) per worker. Messages of any size
# pass; larger ones stream through in fragments.
RING_BYTES = 1 << 20
CHUNKS_PER_WORKER = 16


def _default_workers():
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _buffersize(buffersize):
    """None, or an int >= 1: checked as 3.14's Executor.map checks it (same exceptions)."""
    if buffersize is not None and not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")
    return buffersize


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0")
    return value


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1 << 10, "mib": 1 << 20,
          "gib": 1 << 30, "tib": 1 << 40}


def _memory_size(value):
    """max_worker_memory: bytes as an int, or a string such as "2GiB", "1.5 GB" or "800MiB"
    (KB, MB, GB: powers of 1000; KiB, MiB, GiB: powers of 1024, as Dask reads them)."""
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):]
        try:
            size = float(number) * _UNITS[unit]
        except (ValueError, KeyError):
            raise ValueError(f"max_worker_memory: cannot read {value!r} as a size (examples: "
                             "2147483648, '2GiB', '1.5 GB', '800MiB')") from None
        if not size >= 1:
            raise ValueError(f"max_worker_memory must be at least 1 byte, not {value!r}")
        return int(size)
    return _positive_int("max_worker_memory", value)


def _check_context(mp_context):
    """ProcessPoolExecutor's mp_context=, accepted for its signature's sake: whatever the start
    method, braid's workers import the main module as under "spawn" (once, in the template they
    are forked from) and are never forks of this process."""
    if mp_context is not None and not callable(getattr(mp_context, "get_start_method", None)):
        raise TypeError(f"mp_context must be a multiprocessing context, not {type(mp_context).__name__}")


class ProcessPool(_braid._ProcessPoolCore, concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` running calls in worker processes.

    Workers are fed through shared memory. This process is never forked: a
    single-threaded template interpreter that has done the workers' imports and
    re-run the main script forks each worker, in the background. A worker that
    dies fails only the task it was running, with ``braid.WorkerCrashed`` (or
    runs it again, ``retries`` times), and is replaced;
    ``task_timeout`` kills a task's worker and raises ``braid.TaskTimeout``;
    ``max_tasks_per_worker`` recycles workers; ``max_worker_memory`` (bytes of
    resident memory) recycles a worker that is over it after a task, and kills one
    that goes over it while running a task (``braid.WorkerCrashed``). Besides ``submit``/``map``/
    ``shutdown`` it has ``imap``, ``imap_unordered`` and ``starmap`` of
    ``multiprocessing.Pool``.
    """

    def __init__(self, max_workers=None, mp_context=None, initializer=None, initargs=(), *,
                 max_tasks_per_worker=None, max_tasks_per_child=None, task_timeout=None, retries=0,
                 max_worker_memory=None):
        if os.environ.get("BRAID_WORKER_BOOTSTRAP"):
            raise RuntimeError(
                "a ProcessPool was created while a worker imported the main script; "
                "guard the pool with `if __name__ == '__main__':`")
        workers = _default_workers() if max_workers is None else _positive_int("max_workers", max_workers)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        _check_context(mp_context)
        if max_tasks_per_child is not None:  # ProcessPoolExecutor's name for it
            if max_tasks_per_worker is not None:
                raise TypeError("give max_tasks_per_worker or max_tasks_per_child, not both")
            max_tasks_per_worker = max_tasks_per_child
        max_tasks = 0 if max_tasks_per_worker is None else _positive_int(
            "max_tasks_per_worker", max_tasks_per_worker)
        if task_timeout is None:
            timeout = 0.0
        else:
            if isinstance(task_timeout, bool) or not isinstance(task_timeout, (int, float)):
                raise TypeError(f"task_timeout must be a number, not {type(task_timeout).__name__}")
            if not task_timeout > 0:
                raise ValueError("task_timeout must be greater than 0")
            timeout = float(task_timeout)
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise TypeError(f"retries must be an int, not {type(retries).__name__}")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        max_memory = 0 if max_worker_memory is None else _memory_size(max_worker_memory)
        init_payload = None
        if initializer is not None:
            init_payload = _procworker.dumps((initializer, tuple(initargs)))
            if type(init_payload) is tuple:  # large buffers: alive as long as the pool
                init_payload, self._init_held = init_payload
        main = sys.modules.get("__main__")
        if main is not None:
            # as multiprocessing does on import: what a worker pickles from the script it runs
            # as __mp_main__ (a result's class, an exception's) unpickles here as __main__'s
            sys.modules.setdefault("__mp_main__", main)
        main_path = getattr(main, "__file__", None) or ""
        spec_name = getattr(getattr(main, "__spec__", None), "name", "")
        if main_path and not os.path.exists(main_path) or spec_name.endswith(".__main__"):
            # as multiprocessing's spawn: a package's __main__ (python -m pytest, ...) is a
            # launcher, not a home for task functions; workers do not re-run it
            main_path = ""
        env = dict(os.environ)
        env.update(BRAID_WORKER_PPID=str(os.getpid()),
                   # Manager proxies and multiprocessing connections passed to a task
                   # authenticate with this process's key, as spawn's children do
                   BRAID_WORKER_AUTHKEY=_procworker.authkey().hex(),
                   BRAID_WORKER_SYSPATH=os.pathsep.join(sys.path),
                   BRAID_WORKER_MAIN=os.path.abspath(main_path) if main_path else "",
                   BRAID_WORKER_ARGV=_procworker.encode_argv(sys.argv))
        argv = [sys.executable, "-c", "from braid._procworker import main; main()"]
        super().__init__(workers, argv, [f"{k}={v}" for k, v in env.items()], RING_BYTES,
                         init_payload, max_tasks, timeout, retries, max_memory)

    def __repr__(self):
        return f"<braid.ProcessPool max_workers={self.max_workers}>"

    def __exit__(self, exc_type, exc_val, exc_tb):
        # Ctrl-C in the with block: queued work is cancelled and the workers are killed at
        # once (terminate), so the KeyboardInterrupt reaches the caller within a second
        # whatever the tasks were doing. Otherwise, as ProcessPoolExecutor: everything
        # submitted finishes.
        if _pools.left_by_ctrl_c(exc_type):
            self.terminate()
        else:
            self.shutdown(wait=True)
        return False

    # ---- map and friends: chunks of calls, results handed out in order or as they come ----

    def _chunksize(self, chunksize, iterables):
        if chunksize is not None:
            if isinstance(chunksize, bool) or not isinstance(chunksize, int):
                raise TypeError("chunksize must be an int or None")
            if chunksize < 1:
                raise ValueError("chunksize must be >= 1")
            return chunksize
        try:
            n = min((len(it) for it in iterables), default=0)
        except TypeError:  # an iterable of unknown length: one item per task, as Pool.imap
            return 1
        # About sixteen chunks per worker (multiprocessing.Pool.map makes four): chunks
        # stay large enough that their overhead vanishes, and small enough that when work
        # per item is uneven (the primes of 1..N get dearer) no worker is left with a
        # long last chunk while the others idle.
        # (max_workers is 0 only for a pool never made; its submit says so)
        return max(1, math.ceil(n / (CHUNKS_PER_WORKER * max(self.max_workers, 1))))

    def _submit_chunks(self, fn, chunks, timeout, star, window):
        """Submits the first ``window`` chunks now (all of them for None), so work starts and
        errors show at the call; returns (futures deque, refill function, deadline).
        ``refill(extra)`` tops the deque up to window + extra chunks."""
        if not callable(fn):
            raise TypeError(f"map() needs a callable, not {type(fn).__name__}")
        deadline = None if timeout is None else time.monotonic() + timeout
        futures = collections.deque()
        source = [chunks]  # emptied at the end of the input

        def refill(extra=0):
            while source and (window is None or len(futures) < window + extra):
                chunk = next(source[0], None)
                if chunk is None:
                    source.clear()
                    return
                futures.append(self.submit(_procworker.run_chunk, fn, chunk, star))

        refill()
        return futures, refill, deadline

    def map(self, fn, *iterables, timeout=None, chunksize=None, buffersize=None):
        """Like Executor.map: results in input order. ``chunksize=None`` picks about sixteen
        chunks per worker when the input has a length, else one item per task. As 3.14's,
        every chunk is submitted at the call; with ``buffersize=N`` at most N chunks are
        submitted ahead of the results handed out, and the input is read as they are."""
        chunksize = self._chunksize(chunksize, iterables)
        buffersize = _buffersize(buffersize)
        if len(iterables) == 1:  # plain items pickle faster than 1-tuples
            chunks, star = _chunks(iterables[0], chunksize), False
        else:
            chunks, star = _chunks(zip(*iterables), chunksize), True
        futures, refill, deadline = self._submit_chunks(fn, chunks, timeout, star, buffersize)
        return _ordered(futures, refill, deadline)

    def _imap_window(self):
        # imap and imap_unordered read lazily, as multiprocessing.Pool's do not: a bounded
        # window of chunks in flight, so an endless input works
        return max(2 * self.max_workers, 4)

    def imap(self, fn, iterable, chunksize=None):
        """Like multiprocessing.Pool.imap: a lazy iterator of fn(x), in order."""
        chunksize = self._chunksize(1 if chunksize is None else chunksize, ())
        futures, refill, deadline = self._submit_chunks(fn, _chunks(iterable, chunksize), None, False,
                                                        self._imap_window())
        return _ordered(futures, refill, deadline)

    def imap_unordered(self, fn, iterable, chunksize=None):
        """Like multiprocessing.Pool.imap_unordered: fn(x) in completion order."""
        chunksize = self._chunksize(1 if chunksize is None else chunksize, ())
        futures, refill, _ = self._submit_chunks(fn, _chunks(iterable, chunksize), None, False,
                                                 self._imap_window())
        return _unordered(futures, refill)

    def starmap(self, fn, iterable, chunksize=None):
        """Like multiprocessing.Pool.starmap: [fn(*args) for args in iterable], as a list."""
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        chunksize = self._chunksize(chunksize, (items,))
        futures, refill, deadline = self._submit_chunks(fn, _chunks(items, chunksize), None, True,
                                                        self._imap_window())
        return list(_ordered(futures, refill, deadline))


def _chunks(iterable, size):
    """Lists of ``size`` items; a range is cut into ranges, which pickle in a few bytes
    whatever their length (the seed's map over range(1, N) sends no list of numbers)."""
    if type(iterable) is range:
        return (iterable[i:i + size] for i in range(0, len(iterable), size))
    items = iter(iterable)  # TypeError for a non-iterable, at the call
    return iter(lambda: list(itertools.islice(items, size)), [])


def _chunk(future, timeout):
    """The chunk's (results, exception-or-None)."""
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()  # as the stdlib's _result_or_cancel: a failed wait (timeout, Ctrl-C)
        raise            # leaves nothing of this chunk to run


def _ordered(futures, refill, deadline):
    """The results of the chunks' futures, in input order. _braid.ChunkResults hands the items
    out (as the stdlib's _chain_from_iterable_of_lists: one handed out is no longer held);
    this generator waits for the chunks and cancels the rest when it ends early."""
    return _braid.ChunkResults(_ordered_chunks(futures, refill, deadline))


def _ordered_chunks(futures, refill, deadline):
    try:
        while futures:
            refill(1)  # 3.14: one more chunk submitted before the oldest one is waited for
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            yield _chunk(futures.popleft(), timeout)
    except KeyboardInterrupt:
        _pools.note_interrupt()
        raise
    finally:
        for future in futures:
            future.cancel()


def _unordered(futures, refill):
    """The results of the chunks' futures, chunk by chunk as they finish."""
    return _braid.ChunkResults(_unordered_chunks(futures, refill))


def _unordered_chunks(futures, refill):
    pending = set(futures)
    futures.clear()
    try:
        while pending:
            done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                yield _chunk(future, None)
            refill()
            pending |= set(futures)
            futures.clear()
    except KeyboardInterrupt:
        _pools.note_interrupt()
        raise
    finally:
        for future in pending:
            future.cancel()


_braid._set_process_hooks(_procworker.dumps_task, _procworker.loads, _errors.new_worker_crashed, TaskTimeout,
                          _procworker._Envelope)
