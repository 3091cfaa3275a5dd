"""braid.InterpreterPool: CPU-bound Python in parallel inside one process, one sub-interpreter
with its own GIL per worker thread (Python 3.12+; src/python/interppool.c, interpworker.c)."""

import concurrent.futures
import concurrent.futures.thread
import os
import sys

# braid._pools' hooks (registered on its import) handle interpreter exit: queued work finishes
# (after Ctrl-C it is cancelled), then every worker ends its sub-interpreter, before the main one.
from . import _braid, _interpworker, _pools, _procworker
from ._errors import TaskTimeout

__all__ = ["InterpreterPool", "BrokenInterpreterPool"]

SUPPORTED = sys.version_info >= (3, 12) and hasattr(_braid, "_InterpreterPoolCore")

# CPython 3.12.0-3.12.3 (gh-119213, fixed in 3.12.4): the first call with keyword arguments to
# an Argument Clinic function of a standard-library extension module that is a shared library
# (_pickle, _asyncio, _hashlib, _ssl, ...) keeps a tuple of keyword names for the whole process,
# allocated by whichever interpreter made that call. Made first in a sub-interpreter with its
# own allocator, the tuple is freed by the wrong one, and the process aborts ("free(): invalid
# pointer") at exit or earlier; measured on 3.12.1 with CPython's own _xxsubinterpreters and no
# braid: `_pickle.loads(b"...", buffers=[])`, `asyncio.run(asyncio.sleep(0.001))` or
# `import hashlib` run first in a sub-interpreter abort the process, run first in the main
# interpreter they do not. 3.13.0 is not affected.
KEYWORD_TUPLE_BUG = (3, 12) <= sys.version_info[:3] < (3, 12, 4)
_warned_keyword_tuple_bug = False


def _in_main_interpreter():
    try:
        import _xxsubinterpreters as interpreters  # 3.12's name
    except ImportError:
        return True
    return interpreters.get_current() == interpreters.get_main()


def _before_keyword_tuple_bug():
    """On the affected versions: the keyword calls braid's own workers make (pickles with
    out-of-band buffers; results and exceptions that cloudpickle's Pickler, a _pickle.Pickler,
    writes) are made first in the main interpreter, whose tuples they then are; and the user
    is told once what else can crash. In a sub-interpreter (a pool made inside a task) the
    calls would be the bug itself: only the warning."""
    global _warned_keyword_tuple_bug
    if _in_main_interpreter():
        import _pickle
        import io

        _pickle.loads(_pickle.dumps(None, protocol=5, buffer_callback=None), buffers=())
        _pickle.Pickler(io.BytesIO(), protocol=5, buffer_callback=None)
        _pickle.Unpickler(io.BytesIO(), buffers=())
        _pickle.load(io.BytesIO(_pickle.dumps(None)), buffers=())
        _pickle.dump(None, io.BytesIO(), protocol=5, buffer_callback=None)
    if not _warned_keyword_tuple_bug:
        _warned_keyword_tuple_bug = True
        import warnings

        version = ".".join(map(str, sys.version_info[:3]))
        warnings.warn(
            f"Python {version} has a CPython bug (gh-119213, fixed in 3.12.4): a task in a "
            "braid.InterpreterPool that is the process's first to call a standard-library C "
            "function with keyword arguments (asyncio, hashlib, ssl and others do) can make the "
            "process abort, at exit or before. Tasks that call no such function are not affected; "
            "for the others use Python 3.12.4+ or braid.ProcessPool.", RuntimeWarning, stacklevel=3)


class BrokenInterpreterPool(concurrent.futures.thread.BrokenThreadPool):
    """A worker's initializer failed: the pool runs no more tasks (as 3.14's
    ``concurrent.futures.interpreter.BrokenInterpreterPool``)."""


def _default_workers():
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check_timeout(task_timeout):
    if task_timeout is None:
        return 0.0
    if isinstance(task_timeout, bool) or not isinstance(task_timeout, (int, float)):
        raise TypeError(f"task_timeout must be a number, not {type(task_timeout).__name__}")
    if not task_timeout > 0:
        raise ValueError("task_timeout must be greater than 0")
    return float(task_timeout)


class _Unsupported:
    pass


_Core = _braid._InterpreterPoolCore if SUPPORTED else _Unsupported


class InterpreterPool(_Core, concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` running calls in sub-interpreters of this process.

    Each worker is a thread of braid's engine owning one sub-interpreter with its own GIL
    (PEP 684), so CPU-bound Python runs in parallel without starting processes. Calls and
    their results cross as pickles (cloudpickle for lambdas, closures and functions of
    ``__main__``); an exception comes back with the worker's traceback as ``__cause__``.
    Large out-of-band buffers (``pickle.PickleBuffer``, objects whose protocol-5 pickle
    exports them) cross by reference: the task reads the caller's memory through a read-only
    view.

    A worker imports only extension modules that support sub-interpreters (multi-phase init):
    a task whose function or arguments need one that does not fails with ImportError naming
    it (use ``braid.ProcessPool`` for it), and the worker lives on.

    ``task_timeout`` (seconds): a task still running then is interrupted (an exception thrown
    into its interpreter) and fails with ``braid.TaskTimeout``; a task stuck in C code that
    does not return to the interpreter within a second more fails the same way, and its
    worker is replaced by a new one (the stuck thread finishes its call, then a worker retires).

    Python 3.12 or later: on 3.11 creating one raises RuntimeError.
    """

    def __init__(self, max_workers=None, *, initializer=None, initargs=(), task_timeout=None):
        if not SUPPORTED:
            raise RuntimeError(
                "braid.InterpreterPool needs Python 3.12 or later (sub-interpreters with their own "
                f"GIL, PEP 684); this is Python {sys.version_info.major}.{sys.version_info.minor}. "
                "Use braid.ProcessPool for CPU-bound work here.")
        if max_workers is None:
            max_workers = _default_workers()
        elif isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(f"max_workers must be an int or None, not {type(max_workers).__name__}")
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        timeout = _check_timeout(task_timeout)
        if KEYWORD_TUPLE_BUG:
            _before_keyword_tuple_bug()
        setup = _interpworker.dumps_setup(sys.path, initializer, initargs)
        super().__init__(max_workers, setup, timeout)

    def __repr__(self):
        return f"<braid.InterpreterPool max_workers={self.max_workers} threads={self.threads}>"

    def __exit__(self, exc_type, exc_val, exc_tb):
        # Ctrl-C in the with block: queued work is cancelled and the wait is only for the
        # tasks already running; a second Ctrl-C ends that wait. Otherwise, as the stdlib's
        # executors: everything submitted finishes.
        _pools.shutdown_on_exit(self, exc_type)
        return False

    def map(self, fn, *iterables, timeout=None, chunksize=1, buffersize=None):
        """Like Executor.map: results in input order. ``chunksize`` items go to a worker per
        task (one pickle each way per chunk). As 3.14's, every chunk is submitted at the
        call; with ``buffersize=N`` at most N chunks are submitted ahead of the results
        handed out, and the input is read as they are."""
        from . import _procpool

        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError("chunksize must be an int")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        buffersize = _procpool._buffersize(buffersize)
        if len(iterables) == 1:
            chunks, star = _procpool._chunks(iterables[0], chunksize), False
        else:
            chunks, star = _procpool._chunks(zip(*iterables), chunksize), True
        futures, refill, deadline = _procpool.ProcessPool._submit_chunks(
            self, fn, chunks, timeout, star, buffersize)
        return _procpool._ordered(futures, refill, deadline)


def _before_fork():
    # CPython cannot fork a process with own-GIL sub-interpreters: 3.12's child hangs in
    # PyOS_AfterFork_Child, 3.13's aborts ("PyThreadState_Get: ... the GIL is released").
    # A before-fork hook cannot stop the fork; it can say why the child is about to fail.
    workers = _braid._interppool_workers()
    if workers:
        import warnings

        warnings.warn(
            f"os.fork() while {workers} braid.InterpreterPool worker(s) (each a sub-interpreter "
            "with its own GIL) are alive: CPython cannot fork such a process (3.12 hangs the "
            "child, 3.13 aborts it). Shut the pools down first, or start processes without "
            "fork (braid.ProcessPool, multiprocessing's 'spawn' or 'forkserver').",
            RuntimeWarning, stacklevel=2)


if SUPPORTED:
    _braid._set_interp_hooks(_interpworker.dumps_task, BrokenInterpreterPool)
    os.register_at_fork(before=_before_fork)
    # TaskTimeout reaches the C half through the process pool's hooks
    from . import _procpool  # noqa: E402,F401  (sets them)

del TaskTimeout, _procworker
