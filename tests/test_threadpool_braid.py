"""``braid.ThreadPool`` behaviour that the stdlib executor does not share.

The shared behaviour is tested in ``test_threadpool.py`` (run against both executors).  Here:
callability checked at submit, strict ``max_workers`` type, and the lazy ``map``: bounded
read-ahead of its input (so an infinite input works), ``chunksize``, timeouts, cancellation of
the unstarted rest when the iterator is closed or dropped, and exceptions at their position.

Infinite inputs are guarded: ``GuardedCount`` raises once more than ``limit`` items have been
pulled, so an eager ``map`` fails the test instead of eating memory forever.
"""

import concurrent.futures as cf
import gc
import itertools
import operator
import os
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pool_helpers import TIMEOUT, Blocker, GuardedCount, PoolFactory, import_braid, run_bounded  # noqa: E402

# How far ahead of the consumer map may read its input in these tests (pools of <= 4 workers,
# chunksize <= 16).  Far above any sensible read-ahead, far below "read everything".
READ_AHEAD_LIMIT = 5000


def square(x):
    return x * x


def fail_at(bad):
    def fn(x):
        if x == bad:
            raise ValueError(x)
        return x * 10

    return fn


@pytest.fixture
def braid():
    return import_braid()


@pytest.fixture
def pools(braid):
    factory = PoolFactory(braid.ThreadPool)
    yield factory
    factory.close()


def wait_stable(read, settle=0.05, timeout=TIMEOUT):
    """Wait until ``read()`` stops changing for ``settle`` seconds; return its value."""
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = read()
        if now == last:
            return now
        last = now
    pytest.fail("value never settled")


# ---- types and argument checking -----------------------------------------------------------


def test_thread_pool_is_an_executor(braid):
    assert issubclass(braid.ThreadPool, cf.Executor)


def test_futures_are_braid_futures(braid, pools):
    from braid import _braid

    pool = pools(max_workers=2)
    fut = pool.submit(square, 4)
    assert isinstance(fut, _braid.Future)
    assert isinstance(fut, cf.Future)
    assert issubclass(_braid.Future, cf.Future) and _braid.Future is not cf.Future
    assert fut.result(TIMEOUT) == 16


@pytest.mark.parametrize("bad", [5, None, "not callable", object()])
def test_submit_non_callable_is_type_error_at_submit(pools, bad):
    pool = pools(max_workers=2)
    with pytest.raises(TypeError):
        pool.submit(bad)
    # The pool is unaffected.
    assert pool.submit(square, 3).result(TIMEOUT) == 9


@pytest.mark.parametrize("bad", [1.5, "4", [2], object()])
def test_max_workers_must_be_int(braid, bad):
    with pytest.raises(TypeError):
        braid.ThreadPool(max_workers=bad)


def test_max_workers_none_and_int(braid, pools):
    for kw in ({}, {"max_workers": None}, {"max_workers": 1}, {"max_workers": 3}):
        assert pools(**kw).submit(square, 6).result(TIMEOUT) == 36


# ---- lazy map ------------------------------------------------------------------------------


def test_map_reads_input_lazily(pools):
    pool = pools(max_workers=4)
    source = GuardedCount(READ_AHEAD_LIMIT * 2)
    it = pool.map(square, source, timeout=TIMEOUT)
    assert source.pulled <= READ_AHEAD_LIMIT, "map() call consumed its input eagerly"
    assert iter(it) is it
    first = [next(it) for _ in range(100)]
    assert first == [i * i for i in range(100)]
    assert source.pulled <= 100 + READ_AHEAD_LIMIT
    # More consumption reads more input, still in step with the consumer.
    more = [next(it) for _ in range(1000)]
    assert more == [i * i for i in range(100, 1100)]
    assert 1100 <= source.pulled <= 1100 + READ_AHEAD_LIMIT
    it.close()

    # Now the real thing: an unbounded input where only the first N results are taken.
    it = pool.map(square, itertools.count())
    assert [next(it) for _ in range(200)] == [i * i for i in range(200)]
    del it
    gc.collect()


def test_map_infinite_input_with_chunksize(pools):
    pool = pools(max_workers=4)
    source = GuardedCount(READ_AHEAD_LIMIT * 2)
    it = pool.map(square, source, timeout=TIMEOUT, chunksize=16)
    assert [next(it) for _ in range(500)] == [i * i for i in range(500)]
    assert source.pulled <= 500 + READ_AHEAD_LIMIT
    it.close()


def test_map_infinite_with_finite_second_iterable(pools):
    pool = pools(max_workers=2)
    assert list(pool.map(operator.add, itertools.count(), range(5), timeout=TIMEOUT)) == [
        0, 2, 4, 6, 8
    ]
    assert list(pool.map(pow, range(4), itertools.repeat(3), timeout=TIMEOUT)) == [0, 1, 8, 27]


def test_map_early_break_stops_reading_and_running(pools):
    pool = pools(max_workers=2)
    source = GuardedCount(READ_AHEAD_LIMIT * 2)
    calls = []
    lock = threading.Lock()

    def record(x):
        with lock:
            calls.append(x)
        time.sleep(0.001)
        return x

    it = pool.map(record, source, timeout=TIMEOUT)
    for i, value in enumerate(it):
        assert value == i
        if i == 20:
            break
    del it
    gc.collect()
    pulled = source.pulled
    started = wait_stable(lambda: len(calls))
    time.sleep(0.05)
    assert len(calls) == started, "tasks kept starting after the map iterator was dropped"
    assert source.pulled == pulled, "input kept being read after the map iterator was dropped"
    assert started <= 21 + READ_AHEAD_LIMIT


@pytest.mark.parametrize("chunksize", [1, 2, 3, 7, 64, 1000, 5000])
def test_map_chunksize_same_results(pools, chunksize):
    pool = pools(max_workers=4)
    n = 1000
    assert list(pool.map(square, range(n), chunksize=chunksize, timeout=TIMEOUT)) == [
        i * i for i in range(n)
    ]
    assert list(
        pool.map(pow, range(n), itertools.repeat(2, 600), chunksize=chunksize, timeout=TIMEOUT)
    ) == [i * i for i in range(600)]
    assert list(pool.map(square, (i for i in range(37)), chunksize=chunksize)) == [
        i * i for i in range(37)
    ]
    assert list(pool.map(square, [], chunksize=chunksize)) == []


def test_map_many_items_chunked(pools):
    pool = pools(max_workers=4)
    n = 100_000
    assert sum(pool.map(square, range(n), chunksize=256, timeout=TIMEOUT)) == sum(
        i * i for i in range(n)
    )


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_exception_at_position_lazy(pools, chunksize):
    pool = pools(max_workers=3)
    it = pool.map(fail_at(10), GuardedCount(READ_AHEAD_LIMIT * 2), timeout=TIMEOUT, chunksize=chunksize)
    # Items before the failing one (including those in the failing item's chunk) come back.
    assert [next(it) for _ in range(10)] == [i * 10 for i in range(10)]
    with pytest.raises(ValueError) as excinfo:
        next(it)
    assert excinfo.value.args == (10,)


def test_map_timeout_lazy(pools):
    gate = pools.gate()
    pool = pools(max_workers=1)
    blocker = Blocker(gate)
    it = pool.map(blocker, GuardedCount(READ_AHEAD_LIMIT * 2), timeout=0.05)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        next(it)
    assert time.monotonic() - t0 < 2.0
    blocker.wait_started()
    gate.set()


def test_map_timeout_with_chunksize(pools):
    gate = pools.gate()
    pool = pools(max_workers=2)
    blocker = Blocker(gate)
    it = pool.map(blocker, range(20), timeout=0.05, chunksize=5)
    with pytest.raises(TimeoutError):
        list(it)
    gate.set()


def _closed_or_dropped_before_iterating(pools, close):
    """1 blocked worker; map over a guarded infinite input; close/drop without iterating."""
    gate = pools.gate()
    pool = pools(max_workers=1)
    blocker = Blocker(gate)
    blocked = pool.submit(blocker)
    blocker.wait_started()
    calls = []
    source = GuardedCount(READ_AHEAD_LIMIT * 2)
    it = pool.map(calls.append, source, timeout=TIMEOUT)
    pulled = wait_stable(lambda: source.pulled)
    assert pulled <= READ_AHEAD_LIMIT
    if close:
        it.close()
    del it
    gc.collect()
    gate.set()
    assert blocked.result(TIMEOUT) == "blocker"
    run_bounded(lambda: pool.shutdown(wait=True), what="shutdown after map close")
    assert calls == [], "unstarted map items ran after the iterator was closed/dropped"
    assert source.pulled == pulled, "input was read after the iterator was closed/dropped"


def test_map_close_before_iterating_cancels_everything(pools):
    _closed_or_dropped_before_iterating(pools, close=True)


def test_map_drop_before_iterating_cancels_everything(pools):
    _closed_or_dropped_before_iterating(pools, close=False)


def test_map_close_midway_cancels_rest(pools):
    gate = pools.gate()
    pool = pools(max_workers=1)
    calls = []
    second_started = threading.Event()

    def fn(x):
        calls.append(x)
        if x == 1:
            second_started.set()
            gate.wait(TIMEOUT)
        return x

    it = pool.map(fn, GuardedCount(READ_AHEAD_LIMIT * 2), timeout=TIMEOUT, chunksize=1)
    assert next(it) == 0
    assert second_started.wait(TIMEOUT)
    it.close()
    with pytest.raises(StopIteration):
        next(it)
    gate.set()
    run_bounded(lambda: pool.shutdown(wait=True), what="shutdown after map close")
    assert calls == [0, 1]


def test_map_after_shutdown(pools):
    pool = pools(max_workers=1)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        # Either the call or the first next() reports the closed pool.
        next(pool.map(square, range(3)))


def test_shutdown_cancel_futures_with_live_map(pools):
    gate = pools.gate()
    pool = pools(max_workers=1)
    blocker = Blocker(gate)
    blocked = pool.submit(blocker)
    blocker.wait_started()
    calls = []
    it = pool.map(calls.append, GuardedCount(READ_AHEAD_LIMIT * 2), timeout=TIMEOUT)
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert blocked.result(TIMEOUT) == "blocker"
    run_bounded(lambda: pool.shutdown(wait=True), what="shutdown")
    with pytest.raises((cf.CancelledError, RuntimeError)):
        next(it)
    assert calls == []


# ---- cancellation seen by wait() at once ---------------------------------------------------
# Documented braid difference: the stdlib reports a cancelled pool future to wait() and
# as_completed() only when a worker dequeues it (so wait() on it blocks while the workers are
# busy, and forever after shutdown(cancel_futures=True)); braid reports it at once.


def test_cancelled_pool_future_reported_to_wait_at_once(pools):
    gate = pools.gate()
    pool = pools(max_workers=1)
    blocker = Blocker(gate)
    blocked = pool.submit(blocker)
    blocker.wait_started()
    queued = [pool.submit(square, i) for i in range(5)]
    assert all(f.cancel() for f in queued)
    t0 = time.monotonic()
    done, not_done = cf.wait(queued + [blocked], timeout=TIMEOUT, return_when=cf.FIRST_COMPLETED)
    assert done == set(queued) and not_done == {blocked}
    assert set(cf.as_completed(queued, timeout=TIMEOUT)) == set(queued)
    assert time.monotonic() - t0 < 1.0
    assert not blocked.done()
    gate.set()
    assert blocked.result(TIMEOUT) == "blocker"


def test_shutdown_cancel_futures_reported_to_wait_at_once(pools):
    gate = pools.gate()
    pool = pools(max_workers=1)
    blocker = Blocker(gate)
    blocked = pool.submit(blocker)
    blocker.wait_started()
    queued = [pool.submit(square, i) for i in range(5)]
    pool.shutdown(wait=False, cancel_futures=True)
    t0 = time.monotonic()
    done, not_done = cf.wait(queued, timeout=TIMEOUT)
    assert done == set(queued) and not not_done
    assert all(f.cancelled() for f in queued)
    assert time.monotonic() - t0 < 1.0
    gate.set()
    assert blocked.result(TIMEOUT) == "blocker"
