"""Thread-pool behaviour shared by ``braid.ThreadPool`` and ``ThreadPoolExecutor``.

The tests live in ``ExecutorMixin`` and run once against the stdlib executor and once against
braid (DESIGN.md, Conventions), so a difference in behaviour shows up as a failing test on one
side only.  Only behaviour the two are meant to share belongs here; braid-only behaviour
(``chunksize``, callability checked at submit, ...) is in ``test_threadpool_braid.py``.

``map`` is eager, as ``Executor.map`` is (every task submitted at the call), and takes 3.14's
``buffersize=`` for a lazy window: ``MapBuffersizeMixin`` runs against braid on every Python and
against ``ThreadPoolExecutor`` where the stdlib has ``buffersize`` (3.14 on).

Every wait is bounded (see ``pool_helpers.TIMEOUT``) so a broken pool fails instead of hanging.
"""

import asyncio
import concurrent.futures as cf
import gc
import itertools
import logging
import operator
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import weakref
from concurrent.futures.thread import BrokenThreadPool

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pool_helpers import (  # noqa: E402
    BAD_BUFFERSIZES,
    STDLIB_MAP_HAS_BUFFERSIZE,
    TIMEOUT,
    Blocker,
    Counter,
    GuardedCount,
    PoolFactory,
    import_braid,
    run_bounded,
)


def square(x):
    return x * x


def failing_task(msg="boom"):
    raise ValueError(msg)


def sleep_and_return(delay, value):
    time.sleep(delay)
    return value


def add3(a, b, c):
    return a + b + c


def wait_until(predicate, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout} s")
        time.sleep(0.002)


class CustomBaseException(BaseException):
    pass


# The script of the interpreter-exit test: it submits slow-ish work and falls off the end of
# the module without calling shutdown().  Like the stdlib, the pool must run the queued work,
# let the interpreter exit with status 0, and not crash at finalization.
EXIT_SCRIPT = textwrap.dedent(
    """
    import importlib, os, sys, time
    modname, _, attr = sys.argv[1].partition(":")
    cls = getattr(importlib.import_module(modname), attr)
    pool = cls(max_workers=2)

    def task(i):
        time.sleep(0.02)
        os.write(1, b"done %d\\n" % i)
        return i

    futures = [pool.submit(task, i) for i in range(20)]
    os.write(1, b"main exiting\\n")
    """
)


# A pool is running when the process forks; the child must be able to make and use a new
# pool (multiprocessing's "fork" start method does exactly this), and the parent's pool keeps
# working.  The stdlib does not promise anything about the parent's pool *in the child*.
FORK_SCRIPT = textwrap.dedent(
    """
    import importlib, os, sys, warnings
    warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() with threads
    modname, _, attr = sys.argv[1].partition(":")
    cls = getattr(importlib.import_module(modname), attr)
    pool = cls(max_workers=4)
    assert [f.result(10) for f in [pool.submit(pow, i, 2) for i in range(100)]] == [
        i * i for i in range(100)]
    pid = os.fork()
    if pid == 0:
        try:
            child_pool = cls(max_workers=2)
            ok = [f.result(10) for f in [child_pool.submit(pow, i, 3) for i in range(50)]] == [
                i ** 3 for i in range(50)]
            child_pool.shutdown(wait=True)
            os.write(1, b"child ok\\n" if ok else b"child wrong\\n")
        except BaseException:
            import traceback
            traceback.print_exc()  # the test shows it: os._exit skips the usual report
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert [f.result(10) for f in [pool.submit(pow, i, 2) for i in range(100)]] == [
        i * i for i in range(100)]
    pool.shutdown(wait=True)
    os.write(1, b"parent ok status=%d\\n" % status)
    """
)


# Worker threads need a C stack deep enough for Python's default recursion limit, also when the
# recursion goes through C code (here: map/sum), and a RecursionError must be captured.
RECURSION_SCRIPT = textwrap.dedent(
    """
    import importlib, sys
    modname, _, attr = sys.argv[1].partition(":")
    cls = getattr(importlib.import_module(modname), attr)

    def rec(n):
        return 0 if n == 0 else 1 + sum(map(rec, [n - 1]))

    pool = cls(max_workers=1)
    assert pool.submit(rec, 450).result(10) == 450
    assert isinstance(pool.submit(rec, 10 ** 6).exception(10), RecursionError)
    assert pool.submit(rec, 10).result(10) == 10
    pool.shutdown(wait=True)
    print("recursion ok")
    """
)


class _Box:
    pass


def _fresh_box(_):
    return _Box()


def _abandoned_map_in_a_cycle(pool, started, **map_kw):
    box = _Box()

    def fn(x):
        return box

    box.it = pool.map(fn, range(50), **map_kw)
    if started:
        assert next(box.it) is box
    return weakref.ref(box)


class PoolsFixture:
    """``pools``: a factory of executors of the class under test, all closed after the test."""

    executor_class = None

    def resolve_executor_class(self):
        return self.executor_class

    @pytest.fixture
    def pools(self):
        factory = PoolFactory(self.resolve_executor_class())
        yield factory
        factory.close()


class ExecutorMixin(PoolsFixture):
    # "module:attribute" of the executor, for tests that run it in a child interpreter.
    executor_path = None

    def one_blocked_worker(self, pools):
        """A one-worker pool whose worker is busy until the returned gate is set."""
        gate = pools.gate()
        pool = pools(max_workers=1)
        blocker = Blocker(gate)
        blocked = pool.submit(blocker)
        blocker.wait_started()
        return pool, gate, blocked

    # ---- basics -------------------------------------------------------------------------

    def test_is_executor_and_returns_futures(self, pools):
        pool = pools(max_workers=2)
        assert isinstance(pool, cf.Executor)
        fut = pool.submit(square, 3)
        assert isinstance(fut, cf.Future)
        assert fut.result(TIMEOUT) == 9

    def test_results(self, pools):
        pool = pools(max_workers=4)
        futures = [pool.submit(square, i) for i in range(200)]
        assert [f.result(TIMEOUT) for f in futures] == [i * i for i in range(200)]
        assert all(f.done() and not f.cancelled() and not f.running() for f in futures)
        assert all(f.exception(TIMEOUT) is None for f in futures)

    def test_result_none_and_objects_pass_through(self, pools):
        pool = pools(max_workers=2)
        obj = object()
        assert pool.submit(lambda: None).result(TIMEOUT) is None
        assert pool.submit(lambda x: x, obj).result(TIMEOUT) is obj

    def test_default_max_workers(self, pools):
        pool = pools()
        assert pool.submit(square, 5).result(TIMEOUT) == 25

    def test_args_and_kwargs(self, pools):
        pool = pools(max_workers=2)
        assert pool.submit(add3, 1, 2, c=3).result(TIMEOUT) == 6
        assert pool.submit(add3, c=1, b=2, a=3).result(TIMEOUT) == 6
        # submit(fn, /, *args, **kwargs): names used by submit itself pass through to fn.
        got = pool.submit(dict, fn=1, self=2, args=3, kwargs=4).result(TIMEOUT)
        assert got == {"fn": 1, "self": 2, "args": 3, "kwargs": 4}

    def test_fifo_order_with_one_worker(self, pools):
        pool = pools(max_workers=1)
        ran = []
        futures = [pool.submit(ran.append, i) for i in range(100)]
        cf.wait(futures, timeout=TIMEOUT)
        assert ran == list(range(100))

    # ---- exceptions ---------------------------------------------------------------------

    def test_exception_with_traceback(self, pools):
        pool = pools(max_workers=2)
        fut = pool.submit(failing_task, "boom")
        with pytest.raises(ValueError, match="boom") as excinfo:
            fut.result(TIMEOUT)
        codes = [frame.f_code for frame, _ in traceback.walk_tb(excinfo.value.__traceback__)]
        assert failing_task.__code__ in codes, "traceback lacks the task function's frame"
        assert "failing_task" in "".join(traceback.format_exception(excinfo.value))

    def test_exception_method_returns_exception(self, pools):
        pool = pools(max_workers=2)
        fut = pool.submit(failing_task, "xyz")
        exc = fut.exception(TIMEOUT)
        assert isinstance(exc, ValueError)
        assert exc.args == ("xyz",)
        assert fut.done() and not fut.cancelled()
        # result() re-raises the very same object.
        with pytest.raises(ValueError) as excinfo:
            fut.result(TIMEOUT)
        assert excinfo.value is exc

    def test_base_exception_in_task_is_captured(self, pools):
        # The stdlib catches BaseException in the worker and stores it on the future; the
        # worker thread survives and keeps serving the queue.
        pool = pools(max_workers=1)

        def raise_system_exit():
            raise SystemExit(3)

        def raise_custom():
            raise CustomBaseException("custom")

        f1 = pool.submit(raise_system_exit)
        f2 = pool.submit(raise_custom)
        f3 = pool.submit(square, 4)
        exc = f1.exception(TIMEOUT)
        assert isinstance(exc, SystemExit) and exc.code == 3
        with pytest.raises(SystemExit):
            f1.result(TIMEOUT)
        assert isinstance(f2.exception(TIMEOUT), CustomBaseException)
        assert f3.result(TIMEOUT) == 16
        assert pool.submit(square, 5).result(TIMEOUT) == 25

    def test_result_timeout_on_blocked_task(self, pools):
        pool, gate, blocked = self.one_blocked_worker(pools)
        assert cf.TimeoutError is TimeoutError or issubclass(cf.TimeoutError, TimeoutError)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            blocked.result(timeout=0.05)
        elapsed = time.monotonic() - t0
        assert 0.04 <= elapsed < 2.0
        with pytest.raises(TimeoutError):
            blocked.exception(timeout=0.05)
        assert not blocked.done() and blocked.running()
        gate.set()
        assert blocked.result(TIMEOUT) == "blocker"

    # ---- cancellation -------------------------------------------------------------------

    def test_cancel_pending(self, pools):
        pool, gate, blocked = self.one_blocked_worker(pools)
        ran = []

        def record(i):
            ran.append(i)
            return i

        queued = [pool.submit(record, i) for i in range(5)]
        assert not any(f.running() or f.done() for f in queued)
        assert all(f.cancel() for f in queued)
        assert all(f.cancel() for f in queued), "cancel() of a cancelled future returns True"
        assert all(f.cancelled() and f.done() and not f.running() for f in queued)
        for f in queued:
            with pytest.raises(cf.CancelledError):
                f.result(TIMEOUT)
            with pytest.raises(cf.CancelledError):
                f.exception(TIMEOUT)

        # The running task cannot be cancelled.
        assert blocked.running()
        assert blocked.cancel() is False
        assert not blocked.cancelled()

        tail = pool.submit(record, 99)
        gate.set()
        assert blocked.result(TIMEOUT) == "blocker"
        assert tail.result(TIMEOUT) == 99
        assert ran == [99], "a cancelled task ran"
        # A finished future cannot be cancelled either.
        assert tail.cancel() is False and not tail.cancelled()

    # ---- shutdown -----------------------------------------------------------------------

    def test_shutdown_wait_true_waits(self, pools):
        pool = pools(max_workers=2)
        futures = [pool.submit(sleep_and_return, 0.05, i) for i in range(6)]
        run_bounded(lambda: pool.shutdown(wait=True), what="shutdown(wait=True)")
        assert all(f.done() for f in futures)
        assert [f.result(0) for f in futures] == list(range(6))

    def test_shutdown_wait_false_returns_quickly_and_work_completes(self, pools):
        pool, gate, blocked = self.one_blocked_worker(pools)
        queued = [pool.submit(square, i) for i in range(5)]
        t0 = time.monotonic()
        pool.shutdown(wait=False)
        assert time.monotonic() - t0 < 1.0
        assert not blocked.done()
        assert not any(f.cancelled() for f in queued)
        with pytest.raises(RuntimeError):
            pool.submit(square, 1)
        gate.set()
        assert blocked.result(TIMEOUT) == "blocker"
        assert [f.result(TIMEOUT) for f in queued] == [i * i for i in range(5)]

    def test_shutdown_cancel_futures(self, pools):
        pool, gate, blocked = self.one_blocked_worker(pools)
        ran = []
        queued = [pool.submit(ran.append, i) for i in range(10)]
        pool.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in queued)
        assert not blocked.cancelled()
        gate.set()
        assert blocked.result(TIMEOUT) == "blocker"
        for f in queued:
            with pytest.raises(cf.CancelledError):
                f.result(TIMEOUT)
        run_bounded(lambda: pool.shutdown(wait=True), what="second shutdown")
        assert ran == []

    def test_shutdown_cancel_futures_and_wait(self, pools):
        pool, gate, blocked = self.one_blocked_worker(pools)
        ran = []
        queued = [pool.submit(ran.append, i) for i in range(10)]
        shutter = threading.Thread(
            target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True
        )
        shutter.start()
        # The queued work is cancelled at once, while the running task still holds the worker.
        wait_until(lambda: all(f.cancelled() for f in queued), what="queued futures cancelled")
        assert not blocked.done()
        gate.set()
        shutter.join(TIMEOUT)
        assert not shutter.is_alive(), "shutdown(wait=True, cancel_futures=True) hung"
        assert blocked.done() and blocked.result(0) == "blocker"
        assert ran == []

    def test_submit_after_shutdown(self, pools):
        pool = pools(max_workers=2)
        assert pool.submit(square, 2).result(TIMEOUT) == 4
        run_bounded(pool.shutdown, what="shutdown()")
        with pytest.raises(RuntimeError):
            pool.submit(square, 3)
        run_bounded(pool.shutdown, what="repeated shutdown()")  # idempotent
        with pytest.raises(RuntimeError):
            pool.submit(square, 3)

    def test_context_manager(self, pools):
        pool = pools(max_workers=2)

        def body():
            with pool as entered:
                assert entered is pool
                return [pool.submit(sleep_and_return, 0.02, i) for i in range(6)]

        futures = run_bounded(body, what="with-block")
        assert all(f.done() for f in futures), "leaving the with-block did not wait"
        assert [f.result(0) for f in futures] == list(range(6))
        with pytest.raises(RuntimeError):
            pool.submit(square, 1)

    def test_context_manager_does_not_swallow_exceptions(self, pools):
        pool = pools(max_workers=2)

        def body():
            with pool:
                pool.submit(square, 1)
                raise KeyError("inside")

        with pytest.raises(KeyError):
            run_bounded(body, what="with-block")
        with pytest.raises(RuntimeError):
            pool.submit(square, 1)

    def test_dropped_pool_still_completes_work(self):
        # Dropping the last reference to a pool without shutdown() must not lose queued work.
        pool = self.resolve_executor_class()(max_workers=2)
        futures = [pool.submit(sleep_and_return, 0.005, i) for i in range(40)]
        del pool
        gc.collect()
        done, not_done = cf.wait(futures, timeout=TIMEOUT)
        assert not not_done
        assert [f.result(0) for f in futures] == list(range(40))

    # ---- map ----------------------------------------------------------------------------

    def test_map_order(self, pools):
        pool = pools(max_workers=4)
        # Later items finish first, results still come back in input order.
        delays = [0.001 * ((7 * i) % 10) for i in range(50)]
        results = list(pool.map(sleep_and_return, delays, range(50), timeout=TIMEOUT))
        assert results == list(range(50))
        assert list(pool.map(square, range(1000), timeout=TIMEOUT)) == [i * i for i in range(1000)]
        assert list(pool.map(square, (i for i in range(10)))) == [i * i for i in range(10)]
        assert list(pool.map(square, [])) == []

    def test_map_several_iterables_shortest_wins(self, pools):
        pool = pools(max_workers=3)
        assert list(pool.map(pow, [2, 3, 4], [1, 2], timeout=TIMEOUT)) == [2, 9]
        got = list(pool.map(add3, range(10), range(100), range(5), timeout=TIMEOUT))
        assert got == [3 * i for i in range(5)]
        assert list(pool.map(pow, [2, 3], [], timeout=TIMEOUT)) == []

    def test_map_non_iterable_is_type_error_at_call(self, pools):
        pool = pools(max_workers=2)
        with pytest.raises(TypeError):
            pool.map(square, 5)
        with pytest.raises(TypeError):
            pool.map(pow, [1, 2], None)

    def test_map_timeout(self, pools):
        gate = pools.gate()
        pool = pools(max_workers=1)
        blocker = Blocker(gate)
        it = pool.map(blocker, [1, 2], timeout=0.05)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            next(it)
        assert time.monotonic() - t0 < 2.0
        blocker.wait_started()
        gate.set()

    def test_map_exception_at_position(self, pools):
        pool = pools(max_workers=3)

        def fail_at_5(x):
            if x == 5:
                raise ValueError(x)
            return x * 10

        it = pool.map(fail_at_5, range(10), timeout=TIMEOUT)
        assert [next(it) for _ in range(5)] == [0, 10, 20, 30, 40]
        with pytest.raises(ValueError) as excinfo:
            next(it)
        assert excinfo.value.args == (5,)
        codes = [frame.f_code for frame, _ in traceback.walk_tb(excinfo.value.__traceback__)]
        assert fail_at_5.__code__ in codes
        # Like a generator that raised, the iterator is finished afterwards.
        with pytest.raises(StopIteration):
            next(it)

    def _map_with_stuck_second_item(self, pools):
        gate = pools.gate()
        pool = pools(max_workers=1)
        second_started = threading.Event()
        calls = []

        def fn(x):
            calls.append(x)
            if x == 1:
                second_started.set()
                gate.wait(TIMEOUT)
            return x

        it = pool.map(fn, range(50), timeout=TIMEOUT)
        assert next(it) == 0
        assert second_started.wait(TIMEOUT)
        return pool, gate, it, calls

    def test_map_close_cancels_rest(self, pools):
        pool, gate, it, calls = self._map_with_stuck_second_item(pools)
        it.close()
        gate.set()
        run_bounded(lambda: pool.shutdown(wait=True), what="shutdown after map close")
        assert calls == [0, 1], "closing the map iterator did not cancel the unstarted items"

    def test_map_drop_cancels_rest(self, pools):
        pool, gate, it, calls = self._map_with_stuck_second_item(pools)
        del it
        gc.collect()
        gate.set()
        run_bounded(lambda: pool.shutdown(wait=True), what="shutdown after map drop")
        assert calls == [0, 1], "dropping the map iterator did not cancel the unstarted items"

    # ---- map submits every task at the call ---------------------------------------------
    # "the iterables are collected immediately rather than lazily": a map called for its side
    # effects, whose iterator is never consumed, still runs every item.

    def test_map_unconsumed_in_with_block_runs_every_item(self, pools):
        counter = Counter()
        pool = pools(max_workers=4)

        def body():
            with pool:
                pool.map(counter, range(3000))  # the iterator is dropped at once

        run_bounded(body, what="with-block")
        assert counter.calls == 3000

    def test_map_kept_unconsumed_iterator_runs_every_item(self, pools):
        counter = Counter()
        pool = pools(max_workers=4)
        it = pool.map(counter, range(3000))  # more items than any read-ahead window
        run_bounded(lambda: pool.shutdown(wait=True), what="shutdown")
        assert counter.calls == 3000
        assert list(it) == list(range(3000))

    def test_map_reads_all_input_at_the_call(self, pools):
        pool, gate, blocked = self.one_blocked_worker(pools)
        source = GuardedCount(10_000)
        it = pool.map(square, itertools.islice(source, 5000), timeout=TIMEOUT)
        assert source.pulled == 5000  # read and submitted while the only worker is busy
        gate.set()
        assert list(it) == [i * i for i in range(5000)]

    def test_map_input_error_is_raised_by_the_call(self, pools):
        counter = Counter()
        pool = pools(max_workers=2)

        def items():
            yield from range(5)
            raise KeyError("from the input")

        with pytest.raises(KeyError):
            pool.map(counter, items())
        # the tasks submitted before it still run, as a list comprehension of submits would
        run_bounded(lambda: pool.shutdown(wait=True), what="shutdown")
        assert counter.calls == 5

    def test_map_closed_or_dropped_before_iterating_runs_every_item(self, pools):
        # The iterator is a generator that was never started: close() or dropping it runs no
        # clean-up, so nothing is cancelled.
        counter = Counter()
        pool, gate, blocked = self.one_blocked_worker(pools)
        closed = pool.map(counter, range(50))
        closed.close()
        with pytest.raises(StopIteration):
            next(closed)
        dropped = pool.map(counter, range(50, 100))
        del dropped
        gc.collect()
        gate.set()
        run_bounded(lambda: pool.shutdown(wait=True), what="shutdown")
        assert counter.calls == 100

    @pytest.mark.parametrize("chunksize", [1, 4])
    def test_map_keeps_no_result_it_handed_out(self, pools, chunksize):
        # CPython's test_free_reference (the stdlib ignores chunksize)
        pool = pools(max_workers=2)
        for obj in pool.map(_fresh_box, range(10), chunksize=chunksize, timeout=TIMEOUT):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None, "the map iterator kept a result it had handed out"

    @pytest.mark.parametrize("started", [False, True])
    def test_map_iterator_in_a_reference_cycle_is_collected(self, pools, started):
        # The results the iterator holds hold a box that holds the iterator: only the cycle
        # collector frees it (braid's iterator reports what its finished futures hold).
        pool = pools(max_workers=2)
        ref = _abandoned_map_in_a_cycle(pool, started)
        run_bounded(lambda: pool.shutdown(wait=True), what="shutdown")
        gc.collect()
        assert ref() is None, "a map iterator in a reference cycle was not collected"

    # ---- concurrency and load -----------------------------------------------------------

    def test_many_threads_submitting(self, pools):
        pool = pools(max_workers=4)
        n_threads, per_thread = 8, 5000
        barrier = threading.Barrier(n_threads, timeout=TIMEOUT)
        out = [None] * n_threads
        errors = []

        def producer(k):
            try:
                barrier.wait()
                out[k] = [pool.submit(square, k * per_thread + i) for i in range(per_thread)]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=producer, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert not any(t.is_alive() for t in threads), "a submitting thread hung"
        assert errors == []
        for k, futures in enumerate(out):
            assert [f.result(TIMEOUT) for f in futures] == [
                (k * per_thread + i) ** 2 for i in range(per_thread)
            ]

    def test_task_submits_to_own_pool(self, pools):
        pool = pools(max_workers=2)

        def outer(x):
            inner = pool.submit(square, x)
            return inner.result(TIMEOUT) + 1

        # One outer task at a time: it holds one worker, its inner task needs the other.
        assert [pool.submit(outer, i).result(TIMEOUT) for i in range(20)] == [
            i * i + 1 for i in range(20)
        ]

    def test_hundred_thousand_tasks(self, pools):
        pool = pools(max_workers=4)
        n = 100_000
        futures = [pool.submit(square, i) for i in range(n)]
        results = [f.result(TIMEOUT) for f in futures]
        assert results == [i * i for i in range(n)]

    # ---- interoperability ---------------------------------------------------------------

    def test_asyncio_run_in_executor_and_wrap_future(self, pools):
        pool = pools(max_workers=4)

        async def main():
            loop = asyncio.get_running_loop()
            via_loop = await asyncio.wait_for(
                asyncio.gather(*(loop.run_in_executor(pool, square, i) for i in range(300))),
                TIMEOUT,
            )
            via_wrap = await asyncio.wait_for(
                asyncio.gather(*(asyncio.wrap_future(pool.submit(square, i)) for i in range(300))),
                TIMEOUT,
            )
            with pytest.raises(ValueError, match="in-loop"):
                await asyncio.wait_for(loop.run_in_executor(pool, failing_task, "in-loop"), TIMEOUT)
            with pytest.raises(ValueError, match="wrapped"):
                wrapped = asyncio.wrap_future(pool.submit(failing_task, "wrapped"))
                await asyncio.wait_for(wrapped, TIMEOUT)
            return via_loop, via_wrap

        via_loop, via_wrap = asyncio.run(main())
        assert via_loop == [i * i for i in range(300)]
        assert via_wrap == [i * i for i in range(300)]

    def test_asyncio_cancel_propagates_to_queued_future(self, pools):
        pool, gate, blocked = self.one_blocked_worker(pools)
        queued = pool.submit(square, 3)

        async def main():
            wrapped = asyncio.wrap_future(queued)
            wrapped.cancel()
            deadline = time.monotonic() + TIMEOUT
            while not queued.cancelled() and time.monotonic() < deadline:
                await asyncio.sleep(0.001)

        asyncio.run(main())
        assert queued.cancelled()
        gate.set()
        assert blocked.result(TIMEOUT) == "blocker"

    def test_wait_first_completed(self, pools):
        gate = pools.gate()
        pool = pools(max_workers=2)
        blocker = Blocker(gate)
        slow = pool.submit(blocker)
        quick = pool.submit(square, 3)
        done, not_done = cf.wait([slow, quick], timeout=TIMEOUT, return_when=cf.FIRST_COMPLETED)
        assert done == {quick} and not_done == {slow}
        gate.set()
        done, not_done = cf.wait([slow, quick], timeout=TIMEOUT, return_when=cf.FIRST_COMPLETED)
        assert quick in done

    def test_wait_all_completed(self, pools):
        gate = pools.gate()
        pool = pools(max_workers=2)
        blocker = Blocker(gate)
        slow = pool.submit(blocker)
        quick = pool.submit(square, 3)
        blocker.wait_started()
        t0 = time.monotonic()
        done, not_done = cf.wait([slow, quick], timeout=0.1, return_when=cf.ALL_COMPLETED)
        assert time.monotonic() - t0 >= 0.08
        assert done == {quick} and not_done == {slow}
        gate.set()
        futures = [slow, quick] + [pool.submit(square, i) for i in range(50)]
        done, not_done = cf.wait(futures, timeout=TIMEOUT)  # ALL_COMPLETED is the default
        assert done == set(futures) and not not_done

    def test_wait_first_exception(self, pools):
        gate = pools.gate()
        pool = pools(max_workers=3)
        blocker = Blocker(gate)
        slow = pool.submit(blocker)
        bad = pool.submit(failing_task)
        done, not_done = cf.wait([slow, bad], timeout=TIMEOUT, return_when=cf.FIRST_EXCEPTION)
        assert bad in done and slow in not_done
        gate.set()
        # Without any exception FIRST_EXCEPTION waits for all of them.
        good = [pool.submit(sleep_and_return, 0.01, i) for i in range(6)]
        done, not_done = cf.wait(good, timeout=TIMEOUT, return_when=cf.FIRST_EXCEPTION)
        assert done == set(good) and not not_done

    def test_as_completed(self, pools):
        pool = pools(max_workers=4)
        futures = [pool.submit(sleep_and_return, 0.001 * (i % 5), i) for i in range(40)]
        seen = list(cf.as_completed(futures + futures[:5], timeout=TIMEOUT))  # duplicates once
        assert len(seen) == 40 and set(seen) == set(futures)

    def test_as_completed_timeout(self, pools):
        gate = pools.gate()
        pool = pools(max_workers=2)
        blocker = Blocker(gate)
        slow = pool.submit(blocker)
        quick = pool.submit(square, 3)
        seen = []
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            for fut in cf.as_completed([slow, quick], timeout=0.1):
                seen.append(fut)
        assert seen == [quick]
        assert time.monotonic() - t0 < 2.0
        gate.set()

    def test_add_done_callback(self, pools):
        pool, gate, blocked = self.one_blocked_worker(pools)
        calls = []
        called = threading.Event()

        def callback(fut):
            calls.append(fut)
            called.set()

        order = []
        blocked.add_done_callback(callback)
        blocked.add_done_callback(lambda f: order.append(1))
        blocked.add_done_callback(lambda f: order.append(2))
        assert calls == []
        gate.set()
        assert called.wait(TIMEOUT)
        assert blocked.result(TIMEOUT) == "blocker"
        wait_until(lambda: order == [1, 2], what="later callbacks")
        time.sleep(0.02)
        assert calls == [blocked], "callback not called exactly once with the future"
        assert order == [1, 2]

        # Already done: the callback runs immediately, in the calling thread.
        immediate = []
        blocked.add_done_callback(lambda f: immediate.append((f, threading.get_ident())))
        assert immediate == [(blocked, threading.get_ident())]

    def test_add_done_callback_on_cancel(self, pools):
        pool, gate, blocked = self.one_blocked_worker(pools)
        queued = pool.submit(square, 2)
        calls = []
        queued.add_done_callback(calls.append)
        assert queued.cancel()
        assert calls == [queued] and queued.cancelled()
        gate.set()
        assert blocked.result(TIMEOUT) == "blocker"
        time.sleep(0.02)
        assert calls == [queued]

    def test_done_callback_exception_in_worker_is_logged(self, pools, caplog):
        pool, gate, blocked = self.one_blocked_worker(pools)
        boom = ZeroDivisionError("callback failed")

        def bad(fut):
            raise boom

        later = threading.Event()
        blocked.add_done_callback(bad)
        blocked.add_done_callback(lambda f: later.set())
        with caplog.at_level(logging.DEBUG):
            gate.set()
            assert blocked.result(TIMEOUT) == "blocker"
            assert later.wait(TIMEOUT), "a raising callback stopped the following ones"
            # The worker survived the raising callback.
            assert pool.submit(square, 6).result(TIMEOUT) == 36
            records = [r for r in caplog.records if r.exc_info and r.exc_info[1] is boom]
            assert records and records[0].levelno >= logging.ERROR

    def test_reentrant_done_callback(self, pools):
        # A callback running in a worker may use the future, add callbacks, and submit.
        pool, gate, blocked = self.one_blocked_worker(pools)
        got = []
        finished = threading.Event()

        def callback(fut):
            got.append(fut.result(0))
            got.append(fut.done())
            fut.add_done_callback(lambda f: got.append("nested"))  # done: runs at once
            got.append(pool.submit(square, 3))
            finished.set()

        blocked.add_done_callback(callback)
        gate.set()
        assert finished.wait(TIMEOUT)
        assert got[:4] == ["blocker", True, "nested", got[3]]
        assert got[3].result(TIMEOUT) == 9

    # ---- races --------------------------------------------------------------------------

    def test_cancel_races_with_start(self, pools):
        # cancel() racing a worker picking the task up: either it was cancelled and never ran,
        # or it ran and cancel() returned False -- never both, never neither.
        pool = pools(max_workers=2)
        ran = set()
        entries = []
        for i in range(3000):
            fut = pool.submit(ran.add, i)
            entries.append((fut, fut.cancel() if i % 2 else False))
        run_bounded(lambda: pool.shutdown(wait=True), what="shutdown(wait=True)")
        for i, (fut, cancelled) in enumerate(entries):
            assert fut.done()
            assert fut.cancelled() == cancelled, i
            if cancelled:
                assert i not in ran, f"cancelled task {i} ran"
            else:
                assert fut.result(0) is None and i in ran

    def test_add_done_callback_races_with_completion(self, pools):
        pool = pools(max_workers=4)
        n = 3000
        futures = [pool.submit(square, i) for i in range(n)]
        hits = []
        barrier = threading.Barrier(2, timeout=TIMEOUT)

        def adder():
            barrier.wait()
            for f in futures:
                f.add_done_callback(hits.append)

        threads = [threading.Thread(target=adder) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert not any(t.is_alive() for t in threads)
        cf.wait(futures, timeout=TIMEOUT)
        wait_until(lambda: len(hits) >= 2 * n, what="all callbacks")
        time.sleep(0.02)
        counts = {}
        for f in hits:
            counts[id(f)] = counts.get(id(f), 0) + 1
        assert len(hits) == 2 * n and set(counts.values()) == {2}
        assert {id(f) for f in futures} == set(counts)

    def test_wait_and_as_completed_race_with_completion(self, pools):
        # Completions happening while wait()/as_completed() install their waiters must not be
        # lost: no false "not done", no waiting for the timeout.
        pool = pools(max_workers=4)
        for _ in range(5):
            futures = [pool.submit(square, i) for i in range(500)]
            t0 = time.monotonic()
            done, not_done = cf.wait(futures, timeout=TIMEOUT)
            assert not not_done and len(done) == 500
            futures = [pool.submit(square, i) for i in range(500)]
            assert len(set(cf.as_completed(futures, timeout=TIMEOUT))) == 500
            futures = [pool.submit(square, i) for i in range(500)]
            done, _ = cf.wait(futures, timeout=TIMEOUT, return_when=cf.FIRST_COMPLETED)
            assert done
            assert time.monotonic() - t0 < TIMEOUT / 2

    def test_submit_races_with_shutdown(self, pools):
        # Submits racing shutdown() are either rejected with RuntimeError or accepted and run;
        # no accepted future is left pending.
        for _ in range(5):
            pool = pools(max_workers=2)
            barrier = threading.Barrier(5, timeout=TIMEOUT)
            accepted, rejected = [], []

            def producer():
                barrier.wait()
                for i in range(500):
                    try:
                        accepted.append(pool.submit(square, i))
                    except RuntimeError:
                        rejected.append(i)

            threads = [threading.Thread(target=producer) for _ in range(4)]
            for t in threads:
                t.start()
            barrier.wait()
            time.sleep(0.001)
            run_bounded(lambda: pool.shutdown(wait=True), what="shutdown racing submits")
            for t in threads:
                t.join(TIMEOUT)
            assert not any(t.is_alive() for t in threads)
            assert len(accepted) + len(rejected) == 2000
            done, not_done = cf.wait(accepted, timeout=TIMEOUT)
            assert not not_done, "an accepted future was never run"
            assert all(not f.cancelled() and f.result(0) is not None for f in accepted)

    # ---- object lifetime ----------------------------------------------------------------

    def test_arguments_and_results_are_released(self, pools):
        pool = pools(max_workers=2)

        class Payload:
            pass

        arg, kwarg = Payload(), Payload()
        fut = pool.submit(lambda a, k=None: Payload(), arg, k=kwarg)
        result = fut.result(TIMEOUT)
        refs = [weakref.ref(arg), weakref.ref(kwarg), weakref.ref(result)]

        bad_arg = Payload()

        def failing(a):
            raise ValueError("keeps a frame referencing its argument")

        bad = pool.submit(failing, bad_arg)
        assert isinstance(bad.exception(TIMEOUT), ValueError)
        refs.append(weakref.ref(bad_arg))

        del arg, kwarg, result, fut, bad_arg, bad

        def all_released():
            gc.collect()
            return all(r() is None for r in refs)

        wait_until(all_released, what="task arguments/results released")

    def test_shutdown_from_inside_a_task(self, pools):
        pool = pools(max_workers=2)

        def shut():
            pool.shutdown(wait=False)
            try:
                pool.submit(square, 1)
            except RuntimeError:
                return "rejected"
            return "accepted"

        queued = [pool.submit(sleep_and_return, 0.01, i) for i in range(4)]
        assert pool.submit(shut).result(TIMEOUT) == "rejected"
        assert [f.result(TIMEOUT) for f in queued] == list(range(4))
        with pytest.raises(RuntimeError):
            pool.submit(square, 1)

    # ---- construction options -----------------------------------------------------------

    def test_initializer_runs_in_each_worker(self, pools):
        inits = []
        tls = threading.local()

        def init(a, b):
            inits.append((threading.get_ident(), a, b))
            tls.args = (a, b)

        n = 3
        barrier = threading.Barrier(n, timeout=TIMEOUT)

        def task():
            barrier.wait()  # forces n distinct worker threads to exist at once
            return threading.get_ident(), getattr(tls, "args", None)

        pool = pools(max_workers=n, initializer=init, initargs=("x", 2))
        results = [f.result(TIMEOUT) for f in [pool.submit(task) for _ in range(n)]]
        results += [
            f.result(TIMEOUT)
            for f in [pool.submit(lambda: (threading.get_ident(), getattr(tls, "args", None)))
                      for _ in range(30)]
        ]
        assert all(args == ("x", 2) for _, args in results), "a task ran before the initializer"
        init_idents = [ident for ident, _, _ in inits]
        assert all((a, b) == ("x", 2) for _, a, b in inits)
        assert len(init_idents) == len(set(init_idents)), "initializer ran twice in one thread"
        assert len(init_idents) <= n
        task_idents = {ident for ident, _ in results}
        assert len(task_idents) >= n
        assert task_idents <= set(init_idents)

    def test_failing_initializer_breaks_pool(self, pools):
        # The initializer waits for the gate before failing, so the submits below are
        # certainly made (and pending) before the pool breaks.
        gate = pools.gate()

        def bad_init():
            gate.wait(TIMEOUT)
            raise RuntimeError("initializer failed")

        pool = pools(max_workers=2, initializer=bad_init)
        ran = []
        futures = [pool.submit(ran.append, i) for i in range(5)]
        time.sleep(0.02)
        assert not any(f.done() for f in futures)
        gate.set()
        for f in futures:
            with pytest.raises(BrokenThreadPool):
                f.result(TIMEOUT)
        with pytest.raises(BrokenThreadPool):
            pool.submit(ran.append, 99)
        assert ran == []
        run_bounded(pool.shutdown, what="shutdown of a broken pool")

    def test_thread_name_prefix(self, pools):
        pool = pools(max_workers=2, thread_name_prefix="braidtestpfx")
        names = [f.result(TIMEOUT) for f in
                 [pool.submit(lambda: threading.current_thread().name) for _ in range(10)]]
        assert all(name.startswith("braidtestpfx") for name in names), names

    def test_thread_name_prefix_none_is_the_default(self, pools):
        def name_of_a_worker(**kwargs):
            pool = pools(max_workers=1, **kwargs)
            return pool.submit(lambda: threading.current_thread().name).result(TIMEOUT)

        assert (name_of_a_worker(thread_name_prefix=None).rstrip("0123456789_-")
                == name_of_a_worker().rstrip("0123456789_-"))

    @pytest.mark.parametrize("bad", [0, -1, -100])
    def test_max_workers_not_positive(self, bad):
        with pytest.raises(ValueError):
            self.resolve_executor_class()(max_workers=bad)

    def test_max_workers_wrong_type(self):
        with pytest.raises(TypeError):
            self.resolve_executor_class()(max_workers="4")

    # ---- process lifetime ---------------------------------------------------------------

    def run_script(self, tmp_path, name, source):
        """Runs source as a script in a fresh interpreter, given this executor's path."""
        script = tmp_path / name
        script.write_text(source)
        return subprocess.run(
            [sys.executable, str(script), self.executor_path],
            capture_output=True,
            timeout=30,
            cwd=str(tmp_path),
        )

    def test_interpreter_exit_with_queued_work(self, tmp_path):
        self.resolve_executor_class()  # the braid side fails here if braid is not built
        proc = self.run_script(tmp_path, "exit_with_queued_work.py", EXIT_SCRIPT)
        out = proc.stdout.decode()
        assert proc.returncode == 0, (proc.returncode, out, proc.stderr.decode())
        lines = out.splitlines()
        assert "main exiting" in lines
        assert sorted(line for line in lines if line.startswith("done ")) == sorted(
            f"done {i}" for i in range(20)
        ), "queued tasks did not run before exit"
        assert b"Fatal Python error" not in proc.stderr

    def test_deep_recursion_in_task(self, tmp_path):
        self.resolve_executor_class()
        proc = self.run_script(tmp_path, "deep_recursion.py", RECURSION_SCRIPT)
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr.decode())
        assert proc.stdout.decode().split() == ["recursion", "ok"]

    def test_fork_with_running_pool(self, tmp_path):
        self.resolve_executor_class()
        proc = self.run_script(tmp_path, "fork_with_running_pool.py", FORK_SCRIPT)
        out = proc.stdout.decode()
        assert proc.returncode == 0, (proc.returncode, out, proc.stderr.decode())
        assert "child ok" in out.splitlines(), (out, proc.stderr.decode())
        assert "parent ok status=0" in out.splitlines()


class TestStdlibThreadPool(ExecutorMixin):
    executor_class = cf.ThreadPoolExecutor
    executor_path = "concurrent.futures:ThreadPoolExecutor"


class TestBraidThreadPool(ExecutorMixin):
    executor_path = "braid:ThreadPool"

    def resolve_executor_class(self):
        return import_braid().ThreadPool


class MapBuffersizeMixin(PoolsFixture):
    """``map(..., buffersize=N)`` as in Python 3.14: the call submits the first N tasks, each
    result handed out reads and submits one more, so the input is read lazily (endless inputs
    work) at most N ahead of the consumer."""

    @pytest.mark.parametrize("buffersize", [1, 2, 4, 8])
    def test_results(self, pools, buffersize):
        pool = pools(max_workers=2)
        assert list(pool.map(str, range(4), buffersize=buffersize)) == ["0", "1", "2", "3"]
        got = pool.map(operator.add, range(4), range(4), buffersize=buffersize)
        assert list(got) == [0, 2, 4, 6]
        assert list(pool.map(pow, range(10), [2] * 3, buffersize=buffersize)) == [0, 1, 4]
        assert list(pool.map(str, [], buffersize=buffersize)) == []
        assert list(pool.map(str, buffersize=buffersize)) == []

    @pytest.mark.parametrize("buffersize", [1, 3, 10])
    def test_window_bound(self, pools, buffersize):
        pool = pools(max_workers=4)
        source = GuardedCount(1000)
        it = pool.map(square, source, timeout=TIMEOUT, buffersize=buffersize)
        assert source.pulled == buffersize, "the call submits the first window"
        for k in range(1, 60):
            assert next(it) == (k - 1) ** 2
            assert source.pulled == buffersize + k, "one more read per result handed out"
        it.close()

    def test_endless_input(self, pools):
        pool = pools(max_workers=2)
        it = pool.map(str, itertools.count(), buffersize=2)
        assert [next(it) for _ in range(3)] == ["0", "1", "2"]
        it = pool.map(operator.add, itertools.count(), itertools.count(), buffersize=2)
        assert [next(it) for _ in range(3)] == [0, 2, 4]
        it.close()

    def test_unconsumed_reads_only_the_first_window(self, pools):
        counter = Counter()
        pool = pools(max_workers=2)
        ints = iter(range(10))
        pool.map(counter, ints, buffersize=2)
        run_bounded(lambda: pool.shutdown(wait=True), what="shutdown")
        assert next(ints) == 2
        assert counter.calls == 2  # the first window ran: dropping the unstarted iterator

    @pytest.mark.parametrize("bad, exc_type, message", BAD_BUFFERSIZES)
    def test_bad_buffersize(self, pools, bad, exc_type, message):
        pool = pools(max_workers=1)
        source = GuardedCount(10)
        with pytest.raises(exc_type, match=message):
            pool.map(square, source, buffersize=bad)
        assert source.pulled == 0

    def test_input_error_in_first_window_is_raised_by_the_call(self, pools):
        pool = pools(max_workers=2)

        def items():
            yield 1
            raise KeyError("from the input")

        with pytest.raises(KeyError):
            pool.map(square, items(), buffersize=3)

    def test_input_error_is_raised_by_the_next_that_reads_it(self, pools):
        pool = pools(max_workers=2)

        def items():
            yield from range(5)
            raise KeyError("from the input")

        it = pool.map(square, items(), timeout=TIMEOUT, buffersize=2)
        # the call read 0, 1; each next() reads one more before it waits: the 4th reads the error
        assert [next(it) for _ in range(3)] == [0, 1, 4]
        with pytest.raises(KeyError):
            next(it)
        with pytest.raises(StopIteration):
            next(it)

    def test_task_exception_at_position(self, pools):
        pool = pools(max_workers=3)

        def fail_at_5(x):
            if x == 5:
                raise ValueError(x)
            return x * 10

        it = pool.map(fail_at_5, GuardedCount(1000), timeout=TIMEOUT, buffersize=4)
        assert [next(it) for _ in range(5)] == [0, 10, 20, 30, 40]
        with pytest.raises(ValueError) as excinfo:
            next(it)
        assert excinfo.value.args == (5,)
        with pytest.raises(StopIteration):
            next(it)

    def test_timeout(self, pools):
        gate = pools.gate()
        pool = pools(max_workers=1)
        blocker = Blocker(gate)
        it = pool.map(blocker, GuardedCount(1000), timeout=0.05, buffersize=2)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            next(it)
        assert time.monotonic() - t0 < 2.0
        with pytest.raises(StopIteration):
            next(it)
        blocker.wait_started()
        gate.set()

    @pytest.mark.parametrize("how", ["close", "drop"])
    def test_ending_a_started_iterator_cancels_the_window(self, pools, how):
        gate = pools.gate()
        pool = pools(max_workers=1)
        second_started = threading.Event()
        calls = []
        source = GuardedCount(1000)

        def fn(x):
            calls.append(x)
            if x == 1:
                second_started.set()
                gate.wait(TIMEOUT)
            return x

        it = pool.map(fn, source, timeout=TIMEOUT, buffersize=4)
        assert next(it) == 0
        assert second_started.wait(TIMEOUT)
        if how == "close":
            it.close()
            with pytest.raises(StopIteration):
                next(it)
        else:
            del it
            gc.collect()
        gate.set()
        run_bounded(lambda: pool.shutdown(wait=True), what="shutdown after the map ended")
        assert calls == [0, 1], "the window's unstarted tasks ran after the iterator ended"
        assert source.pulled == 5, "the input was read after the iterator ended"

    @pytest.mark.parametrize("started", [False, True])
    def test_iterator_in_a_reference_cycle_is_collected(self, pools, started):
        pool = pools(max_workers=2)
        ref = _abandoned_map_in_a_cycle(pool, started, buffersize=5)
        run_bounded(lambda: pool.shutdown(wait=True), what="shutdown")
        gc.collect()
        assert ref() is None, "a map iterator in a reference cycle was not collected"


class TestBraidThreadPoolBuffersize(MapBuffersizeMixin):
    def resolve_executor_class(self):
        return import_braid().ThreadPool


# Only where the stdlib has buffersize (3.14 on); braid's side runs on every Python.
if STDLIB_MAP_HAS_BUFFERSIZE:

    class TestStdlibThreadPoolBuffersize(MapBuffersizeMixin):
        executor_class = cf.ThreadPoolExecutor
