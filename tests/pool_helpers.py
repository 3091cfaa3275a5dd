"""Shared helpers for the thread-pool and future tests.

Every blocking call in these tests is bounded by ``TIMEOUT`` so that a bug in a pool shows up
as a failing test, never as a hung test run.  The helpers here are imported by
``test_threadpool.py``, ``test_threadpool_braid.py``, ``test_procpool_braid.py`` and ``test_future.py``.
"""

import concurrent.futures
import importlib
import inspect
import threading

import pytest

# Upper bound for any single wait in the tests (result(), join(), Event.wait(), ...).
# Generous, because it only matters when something is broken.
TIMEOUT = 10.0

# Executor.map(..., buffersize=) is new in Python 3.14. braid's pools have it on every Python;
# the buffersize mixins run against the stdlib executors only where the stdlib has it.
STDLIB_MAP_HAS_BUFFERSIZE = (
    "buffersize" in inspect.signature(concurrent.futures.Executor.map).parameters
)

# The exceptions and messages of 3.14's Executor.map for a bad buffersize.
BAD_BUFFERSIZES = [
    (0, ValueError, "buffersize must be None or > 0"),
    (-1, ValueError, "buffersize must be None or > 0"),
    (1.5, TypeError, "buffersize must be an integer or None"),
    ("2", TypeError, "buffersize must be an integer or None"),
]


class Counter:
    """A task that counts its calls (thread-safe) and returns its first argument."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, *args):
        with self.lock:
            self.calls += 1
        return args[0] if args else None


class GuardedCount:
    """itertools.count() that records how far it was read and refuses to go past ``limit``
    (an eager reader of a lazy map's input fails)."""

    def __init__(self, limit):
        self.limit = limit
        self.pulled = 0
        self.lock = threading.Lock()

    def __iter__(self):
        return self

    def __next__(self):
        with self.lock:
            if self.pulled >= self.limit:
                raise AssertionError(f"read {self.pulled} items ahead: it is not lazy")
            value = self.pulled
            self.pulled += 1
            return value


def import_braid(name="braid"):
    """Import braid (or one of its submodules) lazily.

    Imported inside the braid-side tests rather than at module level, so that
    a broken build fails those tests with the import error while the stdlib
    side of each mixin still runs and shows which behaviour is expected.
    """
    return importlib.import_module(name)


def run_bounded(fn, timeout=TIMEOUT, what=None):
    """Call ``fn()`` in a helper thread and fail if it does not return within ``timeout``.

    Used for calls that have no timeout parameter of their own (``shutdown(wait=True)``,
    leaving a ``with`` block, ...).  Returns fn's result or re-raises its exception.
    """
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True, name="run_bounded")
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"{what or fn!r} did not return within {timeout} s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


class PoolFactory:
    """Creates pools for one test and always tears them down, gates first.

    ``gate()`` hands out ``threading.Event`` objects that tasks block on; at teardown every
    gate is opened *before* the pools are shut down, so a test that failed half-way does not
    leave a worker blocked forever and hang ``shutdown(wait=True)``.
    """

    def __init__(self, executor_class):
        self.executor_class = executor_class
        self.pools = []
        self.gates = []

    def __call__(self, *args, **kwargs):
        pool = self.executor_class(*args, **kwargs)
        self.pools.append(pool)
        return pool

    def gate(self):
        ev = threading.Event()
        self.gates.append(ev)
        return ev

    def close(self):
        for ev in self.gates:
            ev.set()
        for pool in self.pools:
            run_bounded(lambda: pool.shutdown(wait=True), what=f"teardown shutdown of {pool!r}")


class Blocker:
    """A task that signals when it starts and then blocks until its gate opens.

    ``pool.submit(blocker)`` on a one-worker pool occupies the worker so that everything
    submitted afterwards stays queued (pending) until ``gate.set()``.
    """

    def __init__(self, gate, result="blocker"):
        self.gate = gate
        self.started = threading.Event()
        self.result = result

    def __call__(self, *args):
        self.started.set()
        if not self.gate.wait(TIMEOUT):
            raise AssertionError("gate never opened")
        return self.result

    def wait_started(self):
        assert self.started.wait(TIMEOUT), "blocking task never started"
