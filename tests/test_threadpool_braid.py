"""``braid.ThreadPool`` behaviour that the stdlib executor does not share.

The shared behaviour is tested in ``test_threadpool.py`` (run against both executors; its
``MapBuffersizeMixin`` covers 3.14's ``buffersize=`` on braid for every Python).  Here:
callability checked at submit, strict ``max_workers`` type, ``chunksize`` (and the
``buffersize`` window counted in chunks), the lazy ``map(..., buffersize=N)`` over large and
endless inputs, timeouts, cancellation of the unstarted rest when a started iterator is closed
or dropped, exceptions at their position, and an iterator used from two places at once.

Infinite inputs are guarded: ``GuardedCount`` raises once more than ``limit`` items have been
pulled, so a ``map`` that reads past its window fails the test instead of eating memory forever.
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


# ---- map: eager by default, a lazy window with buffersize= ---------------------------------


def test_map_with_buffersize_reads_input_lazily(pools):
    pool = pools(max_workers=4)
    source = GuardedCount(READ_AHEAD_LIMIT * 2)
    it = pool.map(square, source, timeout=TIMEOUT, buffersize=1024)
    assert source.pulled == 1024
    assert iter(it) is it
    first = [next(it) for _ in range(100)]
    assert first == [i * i for i in range(100)]
    assert source.pulled == 1024 + 100
    # More consumption reads more input, in step with the consumer.
    more = [next(it) for _ in range(1000)]
    assert more == [i * i for i in range(100, 1100)]
    assert source.pulled == 1024 + 1100
    it.close()

    # Now the real thing: an unbounded input where only the first N results are taken.
    it = pool.map(square, itertools.count(), buffersize=64)
    assert [next(it) for _ in range(200)] == [i * i for i in range(200)]
    del it
    gc.collect()


def test_map_buffersize_counts_chunks(pools):
    pool = pools(max_workers=4)
    source = GuardedCount(READ_AHEAD_LIMIT * 2)
    it = pool.map(square, source, timeout=TIMEOUT, chunksize=16, buffersize=4)
    assert source.pulled == 4 * 16, "the call submits the first 4 chunks"
    for k in range(1, 501):
        assert next(it) == (k - 1) ** 2
        # one more chunk is read each time a chunk's results start to be handed out
        assert source.pulled == 16 * (4 + (k + 15) // 16)
    it.close()


def test_map_eager_with_chunksize_submits_every_chunk(pools):
    gate = pools.gate()
    pool = pools(max_workers=1)
    blocker = Blocker(gate)
    pool.submit(blocker)
    blocker.wait_started()
    source = GuardedCount(READ_AHEAD_LIMIT * 2)
    it = pool.map(square, itertools.islice(source, 1000), timeout=TIMEOUT, chunksize=16)
    assert source.pulled == 1000
    assert pool.queued == 63  # ceil(1000 / 16) chunks wait for the busy worker
    gate.set()
    assert list(it) == [i * i for i in range(1000)]


def test_map_huge_buffersize_is_no_bound(pools):
    pool = pools(max_workers=2)
    source = GuardedCount(READ_AHEAD_LIMIT * 2)
    it = pool.map(square, itertools.islice(source, 300), buffersize=10**30)
    assert source.pulled == 300
    assert list(it) == [i * i for i in range(300)]
    assert list(pool.map(square, range(5), buffersize=True)) == [0, 1, 4, 9, 16]  # an int, as 1


def test_map_infinite_with_finite_second_iterable(pools):
    pool = pools(max_workers=2)
    # zip stops at the shortest input, so even the eager map ends
    assert list(pool.map(operator.add, itertools.count(), range(5), timeout=TIMEOUT)) == [
        0, 2, 4, 6, 8
    ]
    assert list(pool.map(pow, range(4), itertools.repeat(3), timeout=TIMEOUT)) == [0, 1, 8, 27]
    assert list(pool.map(pow, range(4), itertools.repeat(3), buffersize=2)) == [0, 1, 8, 27]


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

    it = pool.map(record, source, timeout=TIMEOUT, buffersize=8)
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
    assert source.pulled == pulled == 21 + 8, "input read after the map iterator was dropped"
    assert started <= 21 + 8


@pytest.mark.parametrize("chunksize", [1, 2, 3, 7, 64, 1000, 5000])
@pytest.mark.parametrize("buffersize", [None, 1, 3])
def test_map_chunksize_same_results(pools, chunksize, buffersize):
    pool = pools(max_workers=4)
    n = 1000
    kw = dict(chunksize=chunksize, buffersize=buffersize)
    assert list(pool.map(square, range(n), timeout=TIMEOUT, **kw)) == [i * i for i in range(n)]
    assert list(pool.map(pow, range(n), itertools.repeat(2, 600), timeout=TIMEOUT, **kw)) == [
        i * i for i in range(600)
    ]
    assert list(pool.map(square, (i for i in range(37)), **kw)) == [i * i for i in range(37)]
    assert list(pool.map(square, [], **kw)) == []


def test_map_many_items_chunked(pools):
    pool = pools(max_workers=4)
    n = 100_000
    assert sum(pool.map(square, range(n), chunksize=256, timeout=TIMEOUT)) == sum(
        i * i for i in range(n)
    )
    assert sum(pool.map(square, range(n), chunksize=256, buffersize=8, timeout=TIMEOUT)) == sum(
        i * i for i in range(n)
    )


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_exception_at_position_lazy(pools, chunksize):
    pool = pools(max_workers=3)
    it = pool.map(fail_at(10), GuardedCount(READ_AHEAD_LIMIT * 2), timeout=TIMEOUT,
                  chunksize=chunksize, buffersize=16)
    # Items before the failing one (including those in the failing item's chunk) come back.
    assert [next(it) for _ in range(10)] == [i * 10 for i in range(10)]
    with pytest.raises(ValueError) as excinfo:
        next(it)
    assert excinfo.value.args == (10,)
    with pytest.raises(StopIteration):
        next(it)


def test_map_timeout_with_chunksize(pools):
    gate = pools.gate()
    pool = pools(max_workers=2)
    blocker = Blocker(gate)
    it = pool.map(blocker, range(20), timeout=0.05, chunksize=5)
    with pytest.raises(TimeoutError):
        list(it)
    gate.set()


def _closed_or_dropped_before_iterating(pools, close):
    """1 blocked worker; map(buffersize=8) over a guarded infinite input; close or drop the
    iterator without iterating: as the stdlib's never-started generator, it cancels nothing
    (the first window runs) and reads no more input."""
    gate = pools.gate()
    pool = pools(max_workers=1)
    blocker = Blocker(gate)
    blocked = pool.submit(blocker)
    blocker.wait_started()
    calls = []
    source = GuardedCount(READ_AHEAD_LIMIT * 2)
    it = pool.map(calls.append, source, timeout=TIMEOUT, buffersize=8)
    assert source.pulled == 8
    if close:
        it.close()
        with pytest.raises(StopIteration):
            next(it)
    del it
    gc.collect()
    gate.set()
    assert blocked.result(TIMEOUT) == "blocker"
    run_bounded(lambda: pool.shutdown(wait=True), what="shutdown after map close")
    assert calls == list(range(8))
    assert source.pulled == 8, "input was read after the iterator was closed/dropped"


def test_map_close_before_iterating_runs_the_first_window(pools):
    _closed_or_dropped_before_iterating(pools, close=True)


def test_map_drop_before_iterating_runs_the_first_window(pools):
    _closed_or_dropped_before_iterating(pools, close=False)


@pytest.mark.parametrize("buffersize", [None, 4])
def test_map_close_midway_cancels_rest(pools, buffersize):
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

    it = pool.map(fn, range(3000), timeout=TIMEOUT, chunksize=1, buffersize=buffersize)
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
    for buffersize in (None, 2):
        with pytest.raises(RuntimeError):
            pool.map(square, range(3), buffersize=buffersize)


def test_map_refill_after_shutdown_raises(pools):
    pool = pools(max_workers=2)
    it = pool.map(square, itertools.count(), timeout=TIMEOUT, buffersize=2)
    pool.shutdown(wait=True)
    # the refill's submit fails (as Executor.map's does in 3.14); the iteration ends
    with pytest.raises(RuntimeError, match="after shutdown"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_shutdown_cancel_futures_with_live_map(pools):
    gate = pools.gate()
    pool = pools(max_workers=1)
    blocker = Blocker(gate)
    blocked = pool.submit(blocker)
    blocker.wait_started()
    calls = []
    it = pool.map(calls.append, GuardedCount(READ_AHEAD_LIMIT * 2), timeout=TIMEOUT, buffersize=16)
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert blocked.result(TIMEOUT) == "blocker"
    run_bounded(lambda: pool.shutdown(wait=True), what="shutdown")
    with pytest.raises((cf.CancelledError, RuntimeError)):
        next(it)
    assert calls == []


def test_map_iterator_refuses_reentry(pools):
    # next() waits with the GIL released and may run the input's code: a second next() or a
    # close() meanwhile is refused (a generator says "already executing"), never a crash.
    pool = pools(max_workers=2)
    box = {}

    def items():
        yield 1
        yield 2
        for call in (lambda: next(box["it"]), lambda: box["it"].close()):
            with pytest.raises(ValueError, match="already executing"):
                call()
        yield 3

    box["it"] = it = pool.map(square, items(), timeout=TIMEOUT, buffersize=2)
    assert list(it) == [1, 4, 9]


def test_map_iterator_from_two_threads(pools):
    pool = pools(max_workers=2)
    inside = threading.Event()
    gate = pools.gate()

    def items():
        yield 1
        inside.set()  # a thread's next() is reading the input, the GIL released below
        assert gate.wait(TIMEOUT)
        yield 2

    it = pool.map(square, items(), timeout=TIMEOUT, buffersize=1)
    got = []
    t = threading.Thread(target=lambda: got.append(next(it)))
    t.start()
    assert inside.wait(TIMEOUT)
    with pytest.raises(ValueError, match="already executing"):
        next(it)
    with pytest.raises(ValueError, match="already executing"):
        it.close()
    gate.set()
    t.join(TIMEOUT)
    assert got == [1]
    assert list(it) == [4]


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


# ---- Ctrl-C --------------------------------------------------------------------------------

CTRL_C_SCRIPT = """
import os, sys, time
import braid

def task(path, i):
    with open(path, "a") as f:
        f.write(f"{i}\\n")
    time.sleep(1.5)

if __name__ == "__main__":
    path, mode = sys.argv[1], sys.argv[2]
    with braid.ThreadPool(2) as pool:
        futures = [pool.submit(task, path, i) for i in range(8)]
        if mode == "result":
            futures[0].result()
        else:
            time.sleep(60)
    print("with block left normally", flush=True)
"""


@pytest.mark.parametrize("mode", ["result", "sleep"])
@pytest.mark.parametrize("target", ["parent", "group"])
def test_ctrl_c_in_with_block_cancels_queued_work(braid, tmp_path, mode, target):
    # The with block ends with KeyboardInterrupt once the two running tasks end (threads cannot
    # be stopped); the six queued ones never start.
    import signal
    import subprocess

    script = tmp_path / "script.py"
    script.write_text(CTRL_C_SCRIPT)
    started = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, str(script), str(started), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not started.exists() or len(started.read_text().split()) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.01)
        (os.killpg if target == "group" else os.kill)(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err, err
    assert b"left normally" not in out
    assert sorted(started.read_text().split()) == ["0", "1"], "queued tasks ran after Ctrl-C"


def test_shutdown_wait_is_interrupted_by_a_signal(pools):
    # A signal handler that raises ends shutdown(wait=True) while a task still runs; the pool
    # stays closed and a later shutdown waits again.
    import signal

    pool = pools(max_workers=1)
    release = threading.Event()
    running = threading.Event()

    def task():
        running.set()
        release.wait(TIMEOUT)
        return "done"

    future = pool.submit(task)
    assert running.wait(TIMEOUT)

    class Interrupted(Exception):
        pass

    def raise_it(signum, frame):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, raise_it)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(Interrupted):
            pool.shutdown(wait=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not future.done()
    with pytest.raises(RuntimeError):
        pool.submit(square, 2)
    release.set()
    pool.shutdown(wait=True)
    assert future.result(0) == "done"
