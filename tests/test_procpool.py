"""Process-pool behaviour shared by ``braid.ProcessPool`` and ``ProcessPoolExecutor``.

The tests live in ``ProcessExecutorMixin`` and run once against the stdlib executor and once
against braid (DESIGN.md, Conventions), so a difference in behaviour shows up as a failing test
on one side only.  Only behaviour the two are meant to share belongs here; braid-only behaviour
(lambdas, imap/starmap, crashes, retries, timeouts, ...) is in ``test_procpool_braid.py`` and
``test_procpool_chaos.py``.

``map`` is eager, as ``Executor.map`` is (every chunk submitted at the call), and takes 3.14's
``buffersize=`` for a lazy window of chunks: ``ProcessMapBuffersizeMixin`` runs against braid on
every Python and against ``ProcessPoolExecutor`` where the stdlib has ``buffersize`` (3.14 on).

Task functions live in ``procpool_tasks.py`` so worker processes can import them.  Workers
cannot see ``threading.Event`` objects, so gates are files (``procpool_tasks.FileGate``); the
``pools`` fixture opens every gate before it shuts the pools down, and every wait is bounded
(``pool_helpers.TIMEOUT``) so a broken pool fails instead of hanging.
"""

import asyncio
import concurrent.futures as cf
import functools
import gc
import hashlib
import itertools
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS_DIR)
import procpool_tasks as tasks  # noqa: E402
from pool_helpers import (  # noqa: E402
    BAD_BUFFERSIZES,
    STDLIB_MAP_HAS_BUFFERSIZE,
    TIMEOUT,
    GuardedCount,
    PoolFactory,
    import_braid,
    run_bounded,
)


def wait_until(predicate, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout} s")
        time.sleep(0.002)


class ProcPoolFactory(PoolFactory):
    """``PoolFactory`` whose gates are files, so that worker processes can wait on them."""

    def __init__(self, executor_class, tmp_path):
        super().__init__(executor_class)
        self.tmp_path = tmp_path
        self.counter = 0

    def path(self, stem):
        self.counter += 1
        return str(self.tmp_path / f"{stem}-{self.counter}")

    def gate(self):
        gate = tasks.FileGate(self.path("gate"))
        self.gates.append(gate)
        return gate


# The script of the interpreter-exit test: it submits slow-ish work and falls off the end of
# the module without calling shutdown().  Like the stdlib, the pool must run the queued work
# and let the interpreter exit with status 0, without a crash at finalization.
EXIT_SCRIPT = textwrap.dedent(
    """
    import importlib, sys
    tests_dir, executor_path, out_path = sys.argv[1:4]
    sys.path.insert(0, tests_dir)
    import procpool_tasks

    if __name__ == "__main__":
        modname, _, attr = executor_path.partition(":")
        cls = getattr(importlib.import_module(modname), attr)
        pool = cls(max_workers=2)
        futures = [pool.submit(procpool_tasks.sleep_record_pid, out_path, 0.02, i)
                   for i in range(20)]
        print("main exiting", flush=True)
    """
)


class ProcPoolsFixture:
    """``pools``: a factory of executors of the class under test, all closed after the test."""

    executor_class = None

    def resolve_executor_class(self):
        return self.executor_class

    @pytest.fixture
    def pools(self, tmp_path):
        factory = ProcPoolFactory(self.resolve_executor_class(), tmp_path)
        yield factory
        factory.close()


class ProcessExecutorMixin(ProcPoolsFixture):
    # "module:attribute" of the executor, for tests that run it in a child interpreter.
    executor_path = None

    def one_blocked_worker(self, pools):
        """A one-worker pool whose worker is busy until the returned gate is set."""
        gate = pools.gate()
        pool = pools(max_workers=1)
        started = pools.path("started")
        blocked = pool.submit(tasks.block, started, gate.path)
        assert tasks.wait_for_path(started), "blocking task never started"
        return pool, gate, blocked

    # ---- basics -------------------------------------------------------------------------

    def test_is_executor_and_returns_futures(self, pools):
        pool = pools(max_workers=2)
        assert isinstance(pool, cf.Executor)
        fut = pool.submit(tasks.square, 3)
        assert isinstance(fut, cf.Future)
        assert fut.result(TIMEOUT) == 9

    def test_results(self, pools):
        pool = pools(max_workers=2)
        futures = [pool.submit(tasks.square, i) for i in range(100)]
        assert [f.result(TIMEOUT) for f in futures] == [i * i for i in range(100)]
        assert all(f.done() and not f.cancelled() and not f.running() for f in futures)
        assert all(f.exception(TIMEOUT) is None for f in futures)

    def test_result_none_and_builtins(self, pools):
        pool = pools(max_workers=2)
        assert pool.submit(tasks.return_none).result(TIMEOUT) is None
        assert pool.submit(pow, 2, 10).result(TIMEOUT) == 1024
        assert pool.submit(sorted, [3, 1, 2]).result(TIMEOUT) == [1, 2, 3]
        value = {"a": [1, 2.5, "x", b"y", None, (True,)], "b": frozenset({1})}
        assert pool.submit(tasks.identity, value).result(TIMEOUT) == value

    def test_tasks_run_in_other_processes(self, pools):
        pool = pools(max_workers=2)
        pids = {f.result(TIMEOUT) for f in [pool.submit(tasks.getpid) for _ in range(40)]}
        assert os.getpid() not in pids
        assert 1 <= len(pids) <= 2

    def test_default_max_workers(self, pools):
        pool = pools()
        assert pool.submit(tasks.square, 5).result(TIMEOUT) == 25

    def test_args_and_kwargs(self, pools):
        pool = pools(max_workers=2)
        assert pool.submit(tasks.add3, 1, 2, c=3).result(TIMEOUT) == 6
        assert pool.submit(tasks.add3, c=1, b=2, a=3).result(TIMEOUT) == 6
        # submit(fn, /, *args, **kwargs): names used by submit itself pass through to fn.
        got = pool.submit(dict, fn=1, self=2, args=3, kwargs=4).result(TIMEOUT)
        assert got == {"fn": 1, "self": 2, "args": 3, "kwargs": 4}

    def test_thousand_tiny_tasks(self, pools):
        pool = pools(max_workers=2)
        futures = [pool.submit(tasks.square, i) for i in range(1000)]
        done, not_done = cf.wait(futures, timeout=TIMEOUT * 3)
        assert not not_done
        assert [f.result(0) for f in futures] == [i * i for i in range(1000)]

    def test_big_payloads(self, pools):
        pool = pools(max_workers=2)
        n = 10 * 1024 * 1024
        data = tasks.make_bytes(n, 1234)
        digest = hashlib.sha256(data).hexdigest()
        # argument only, result only, and both ways
        assert pool.submit(tasks.sha256_hex, data).result(TIMEOUT) == digest
        made = pool.submit(tasks.make_bytes, n, 1234).result(TIMEOUT)
        assert len(made) == n and hashlib.sha256(made).hexdigest() == digest
        back = pool.submit(tasks.echo, data).result(TIMEOUT)
        assert len(back) == n and hashlib.sha256(back).hexdigest() == digest
        # several at once, and small tasks still fine afterwards
        futures = [pool.submit(tasks.echo, data) for _ in range(3)]
        assert all(hashlib.sha256(f.result(TIMEOUT)).hexdigest() == digest for f in futures)
        assert pool.submit(tasks.square, 7).result(TIMEOUT) == 49

    # ---- exceptions ---------------------------------------------------------------------

    def test_exception_with_remote_traceback(self, pools):
        pool = pools(max_workers=2)
        fut = pool.submit(tasks.failing_task, "boom")
        with pytest.raises(ValueError, match="boom") as excinfo:
            fut.result(TIMEOUT)
        cause = excinfo.value.__cause__
        assert cause is not None, "no remote traceback attached as __cause__"
        text = str(cause)
        assert "failing_task" in text, text
        assert "ValueError" in text and "boom" in text, text

    def test_exception_method_and_custom_class(self, pools):
        pool = pools(max_workers=2)
        fut = pool.submit(tasks.raise_custom, "xyz", 3)
        exc = fut.exception(TIMEOUT)
        assert type(exc) is tasks.CustomError
        assert exc.args == ("xyz", 3)
        assert fut.done() and not fut.cancelled()
        with pytest.raises(tasks.CustomError) as excinfo:
            fut.result(TIMEOUT)
        assert excinfo.value is exc
        # The worker survived.
        assert pool.submit(tasks.square, 4).result(TIMEOUT) == 16

    def test_system_exit_in_task_is_captured(self, pools):
        pool = pools(max_workers=1)
        f1 = pool.submit(tasks.raise_system_exit, 3)
        f2 = pool.submit(tasks.square, 4)
        exc = f1.exception(TIMEOUT)
        assert isinstance(exc, SystemExit) and exc.code == 3
        assert f2.result(TIMEOUT) == 16
        assert pool.submit(tasks.square, 5).result(TIMEOUT) == 25

    def test_result_timeout_on_blocked_task(self, pools):
        pool, gate, blocked = self.one_blocked_worker(pools)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            blocked.result(timeout=0.05)
        assert 0.04 <= time.monotonic() - t0 < 2.0
        assert not blocked.done() and blocked.running()
        gate.set()
        assert blocked.result(TIMEOUT) == "blocker"

    # ---- unpicklable things -------------------------------------------------------------

    @pytest.mark.parametrize("make_bad", [threading.Lock, lambda: (i for i in range(3))],
                             ids=["lock", "generator"])
    def test_unpicklable_argument_fails_that_task_only(self, pools, make_bad):
        pool = pools(max_workers=2)
        before = pool.submit(tasks.square, 2)
        bad = pool.submit(tasks.identity, make_bad())
        after = pool.submit(tasks.square, 3)
        exc = bad.exception(TIMEOUT)
        assert isinstance(exc, Exception), exc
        assert isinstance(exc, (TypeError, pickle.PicklingError, AttributeError)), repr(exc)
        assert before.result(TIMEOUT) == 4
        assert after.result(TIMEOUT) == 9
        assert [f.result(TIMEOUT) for f in [pool.submit(tasks.square, i) for i in range(20)]] == [
            i * i for i in range(20)
        ]

    @pytest.mark.parametrize("fn", [tasks.return_lock, tasks.return_generator],
                             ids=["lock", "generator"])
    def test_unpicklable_result_fails_that_task_only(self, pools, fn):
        pool = pools(max_workers=2)
        bad = pool.submit(fn)
        exc = bad.exception(TIMEOUT)
        assert isinstance(exc, (TypeError, pickle.PicklingError, AttributeError)), repr(exc)
        assert [f.result(TIMEOUT) for f in [pool.submit(tasks.square, i) for i in range(20)]] == [
            i * i for i in range(20)
        ]

    # ---- cancellation -------------------------------------------------------------------

    def test_cancel_pending(self, pools, tmp_path):
        pool, gate, blocked = self.one_blocked_worker(pools)
        ran_path = str(tmp_path / "ran")
        queued = [pool.submit(tasks.record, ran_path, i) for i in range(20)]
        # The stdlib moves up to max_workers + 1 items onto its call queue early, where they
        # can no longer be cancelled; the tail of the queue can always be.
        tail = queued[10:]
        assert all(f.cancel() for f in tail)
        assert all(f.cancel() for f in tail), "cancel() of a cancelled future returns True"
        assert all(f.cancelled() and f.done() and not f.running() for f in tail)
        for f in tail:
            with pytest.raises(cf.CancelledError):
                f.result(TIMEOUT)
        assert blocked.running() and blocked.cancel() is False and not blocked.cancelled()
        gate.set()
        assert blocked.result(TIMEOUT) == "blocker"
        assert [f.result(TIMEOUT) for f in queued[:10]] == list(range(10))
        assert sorted(map(int, tasks.read_lines(ran_path))) == list(range(10)), (
            "a cancelled task ran"
        )

    # ---- shutdown -----------------------------------------------------------------------

    def test_shutdown_wait_true_waits(self, pools):
        pool = pools(max_workers=2)
        futures = [pool.submit(tasks.sleep_and_return, 0.05, i) for i in range(6)]
        run_bounded(lambda: pool.shutdown(wait=True), what="shutdown(wait=True)")
        assert all(f.done() for f in futures)
        assert [f.result(0) for f in futures] == list(range(6))

    def test_shutdown_wait_false_then_work_completes(self, pools):
        pool, gate, blocked = self.one_blocked_worker(pools)
        queued = [pool.submit(tasks.square, i) for i in range(5)]
        t0 = time.monotonic()
        pool.shutdown(wait=False)
        assert time.monotonic() - t0 < 1.0
        assert not blocked.done()
        with pytest.raises(RuntimeError):
            pool.submit(tasks.square, 1)
        gate.set()
        assert blocked.result(TIMEOUT) == "blocker"
        assert [f.result(TIMEOUT) for f in queued] == [i * i for i in range(5)]

    def test_submit_after_shutdown(self, pools):
        pool = pools(max_workers=2)
        assert pool.submit(tasks.square, 2).result(TIMEOUT) == 4
        pool.shutdown(wait=True)
        with pytest.raises(RuntimeError):
            pool.submit(tasks.square, 2)
        pool.shutdown(wait=True)  # a second shutdown is harmless

    def test_submit_after_shutdown_of_unused_pool(self, pools):
        pool = pools(max_workers=2)
        pool.shutdown()
        with pytest.raises(RuntimeError):
            pool.submit(tasks.square, 2)

    def test_shutdown_cancel_futures(self, pools, tmp_path):
        pool, gate, blocked = self.one_blocked_worker(pools)
        ran_path = str(tmp_path / "ran")
        queued = [pool.submit(tasks.record, ran_path, i) for i in range(10)]
        pool.shutdown(wait=False, cancel_futures=True)
        with pytest.raises(RuntimeError):
            pool.submit(tasks.square, 1)
        gate.set()
        # The running task completes; queued ones are cancelled (the stdlib may already have
        # moved the first max_workers + 1 onto its call queue: those run).  Not cf.wait(): the
        # stdlib never reports a future cancelled by shutdown() to wait(), and a second
        # shutdown(wait=True) after shutdown(wait=False) does not wait in the stdlib.
        assert blocked.result(TIMEOUT) == "blocker"
        wait_until(lambda: all(f.done() for f in queued), what="queued futures done")
        assert all(f.cancelled() for f in queued[5:]), [f.cancelled() for f in queued]
        ran = sorted(map(int, tasks.read_lines(ran_path)))
        for i, f in enumerate(queued):
            if f.cancelled():
                assert i not in ran, f"cancelled task {i} ran"
            else:
                assert f.result(0) == i and i in ran

    def test_shutdown_reaps_workers(self, pools):
        pool = pools(max_workers=2)
        pids = {f.result(TIMEOUT) for f in [pool.submit(tasks.getpid) for _ in range(20)]}
        assert pids
        run_bounded(lambda: pool.shutdown(wait=True), what="shutdown(wait=True)")
        # Gone and reaped: no zombie children of ours left behind.
        alive = tasks.wait_processes_gone(pids, timeout=TIMEOUT, zombie_ok=False)
        assert not alive, f"workers {alive} still exist after shutdown(wait=True)"

    def test_context_manager(self, pools):
        pool = pools(max_workers=2)
        with pool as entered:
            assert entered is pool
            futures = [pool.submit(tasks.sleep_and_return, 0.02, i) for i in range(6)]
        assert all(f.done() for f in futures)
        assert [f.result(0) for f in futures] == list(range(6))
        with pytest.raises(RuntimeError):
            pool.submit(tasks.square, 1)

    def test_context_manager_with_exception(self, pools):
        pool = pools(max_workers=2)
        with pytest.raises(KeyError):
            with pool:
                fut = pool.submit(tasks.sleep_and_return, 0.02, "x")
                raise KeyError("inside")
        assert fut.done() and fut.result(0) == "x"

    # ---- map ----------------------------------------------------------------------------

    def test_map_results_in_order(self, pools):
        pool = pools(max_workers=2)
        assert list(pool.map(tasks.square, range(100), timeout=TIMEOUT)) == [
            i * i for i in range(100)
        ]
        # completion order differs from input order, results do not
        items = [(0.05 if i % 3 == 0 else 0.0, i) for i in range(12)]
        assert list(pool.map(tasks.sleep_then, items, timeout=TIMEOUT)) == list(range(12))
        assert list(pool.map(tasks.square, [], timeout=TIMEOUT)) == []
        assert list(pool.map(tasks.square, (i for i in range(7)))) == [i * i for i in range(7)]

    @pytest.mark.parametrize("chunksize", [1, 3, 50, 1000])
    def test_map_chunksize(self, pools, chunksize):
        pool = pools(max_workers=2)
        assert list(pool.map(tasks.square, range(300), timeout=TIMEOUT, chunksize=chunksize)) == [
            i * i for i in range(300)
        ]

    def test_map_chunksize_not_positive(self, pools):
        pool = pools(max_workers=2)
        for bad in (0, -1):
            with pytest.raises(ValueError):
                # at the call (stdlib) or at the first next()
                list(pool.map(tasks.square, range(3), chunksize=bad))

    def test_map_several_iterables(self, pools):
        pool = pools(max_workers=2)
        assert list(pool.map(pow, [2, 3, 4], [1, 2], timeout=TIMEOUT)) == [2, 9]
        got = list(pool.map(tasks.add3, range(10), range(100), range(5), timeout=TIMEOUT))
        assert got == [3 * i for i in range(5)]
        assert list(pool.map(pow, [2, 3], [], timeout=TIMEOUT)) == []
        assert list(pool.map(tasks.square)) == []  # no iterables at all: nothing to call

    def test_map_non_iterable_is_type_error(self, pools):
        pool = pools(max_workers=2)
        with pytest.raises(TypeError):
            pool.map(tasks.square, 5)
        with pytest.raises(TypeError):
            pool.map(pow, [1, 2], None)
        assert pool.submit(tasks.square, 3).result(TIMEOUT) == 9

    def test_map_timeout(self, pools):
        gate = pools.gate()
        pool = pools(max_workers=1)
        it = pool.map(functools.partial(tasks.wait_gate, gate.path), [1, 2], timeout=0.1)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            next(it)
        assert time.monotonic() - t0 < 2.0
        gate.set()

    def test_map_exception_at_position(self, pools):
        pool = pools(max_workers=2)
        it = pool.map(tasks.fail_at_5, range(10), timeout=TIMEOUT)
        assert [next(it) for _ in range(5)] == [0, 10, 20, 30, 40]
        with pytest.raises(ValueError) as excinfo:
            next(it)
        assert excinfo.value.args == (5,)
        assert excinfo.value.__cause__ is not None and "fail_at_5" in str(excinfo.value.__cause__)
        # Like a generator that raised, the iterator is finished afterwards.
        with pytest.raises(StopIteration):
            next(it)

    @pytest.mark.parametrize("chunksize", [1, 4])
    def test_map_keeps_no_result_it_handed_out(self, pools, chunksize):
        # CPython's test_free_reference: results are fresh objects unpickled in this process
        pool = pools(max_workers=2)
        items = [tasks.CustomError(i) for i in range(10)]
        for obj in pool.map(tasks.identity, items, chunksize=chunksize, timeout=TIMEOUT):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None, "the map iterator kept a result it had handed out"

    # ---- map submits every chunk at the call ----------------------------------------------
    # "the iterables are collected immediately rather than lazily": a map called for its side
    # effects, whose iterator is never consumed, still runs every item.

    def test_map_unconsumed_in_with_block_runs_every_item(self, pools):
        ran_path = pools.path("ran")
        pool = pools(max_workers=2)

        def body():
            with pool:
                pool.map(functools.partial(tasks.record, ran_path), range(40))

        run_bounded(body, timeout=60, what="with-block")
        assert sorted(map(int, tasks.read_lines(ran_path))) == list(range(40))

    def test_map_kept_unconsumed_iterator_runs_every_item(self, pools):
        ran_path = pools.path("ran")
        pool = pools(max_workers=2)
        it = pool.map(functools.partial(tasks.record, ran_path), range(40), chunksize=3)
        run_bounded(lambda: pool.shutdown(wait=True), timeout=60, what="shutdown")
        assert sorted(map(int, tasks.read_lines(ran_path))) == list(range(40))
        assert list(it) == list(range(40))

    def test_map_reads_all_input_at_the_call(self, pools):
        pool, gate, blocked = self.one_blocked_worker(pools)
        source = GuardedCount(10_000)
        it = pool.map(tasks.square, itertools.islice(source, 500), timeout=TIMEOUT)
        assert source.pulled == 500  # read and submitted while the only worker is busy
        gate.set()
        assert list(it) == [i * i for i in range(500)]

    def test_map_input_error_is_raised_by_the_call(self, pools):
        pool = pools(max_workers=2)

        def items():
            yield from range(5)
            raise KeyError("from the input")

        with pytest.raises(KeyError):
            pool.map(tasks.square, items())
        assert pool.submit(tasks.square, 3).result(TIMEOUT) == 9

    def test_map_closed_or_dropped_before_iterating_runs_every_item(self, pools):
        # The iterator is a generator that was never started: close() or dropping it runs no
        # clean-up, so nothing is cancelled.
        ran_path = pools.path("ran")
        pool, gate, blocked = self.one_blocked_worker(pools)
        record = functools.partial(tasks.record, ran_path)
        closed = pool.map(record, range(10), chunksize=1)
        closed.close()
        with pytest.raises(StopIteration):
            next(closed)
        dropped = pool.map(record, range(10, 20), chunksize=1)
        del dropped
        gate.set()
        run_bounded(lambda: pool.shutdown(wait=True), timeout=60, what="shutdown")
        assert sorted(map(int, tasks.read_lines(ran_path))) == list(range(20))

    # ---- waiting and callbacks ----------------------------------------------------------

    def test_wait_first_completed_and_all(self, pools):
        gate = pools.gate()
        pool = pools(max_workers=2)
        started = pools.path("started")
        slow = pool.submit(tasks.block, started, gate.path)
        quick = pool.submit(tasks.square, 3)
        done, not_done = cf.wait([slow, quick], timeout=TIMEOUT, return_when=cf.FIRST_COMPLETED)
        assert done == {quick} and not_done == {slow}
        t0 = time.monotonic()
        done, not_done = cf.wait([slow, quick], timeout=0.1)
        assert time.monotonic() - t0 >= 0.08
        assert done == {quick} and not_done == {slow}
        gate.set()
        futures = [slow, quick] + [pool.submit(tasks.square, i) for i in range(20)]
        done, not_done = cf.wait(futures, timeout=TIMEOUT)
        assert done == set(futures) and not not_done

    def test_wait_first_exception(self, pools):
        gate = pools.gate()
        pool = pools(max_workers=2)
        slow = pool.submit(tasks.block, pools.path("started"), gate.path)
        bad = pool.submit(tasks.failing_task)
        done, not_done = cf.wait([slow, bad], timeout=TIMEOUT, return_when=cf.FIRST_EXCEPTION)
        assert bad in done and slow in not_done
        gate.set()

    def test_as_completed(self, pools):
        pool = pools(max_workers=2)
        futures = [pool.submit(tasks.sleep_and_return, 0.001 * (i % 5), i) for i in range(40)]
        seen = list(cf.as_completed(futures + futures[:5], timeout=TIMEOUT))  # duplicates once
        assert len(seen) == 40 and set(seen) == set(futures)

    def test_as_completed_timeout(self, pools):
        gate = pools.gate()
        pool = pools(max_workers=2)
        slow = pool.submit(tasks.block, pools.path("started"), gate.path)
        quick = pool.submit(tasks.square, 3)
        assert quick.result(TIMEOUT) == 9  # not timed: worker start-up may be slow
        seen = []
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            for fut in cf.as_completed([slow, quick], timeout=0.2):
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

        blocked.add_done_callback(callback)
        assert calls == []
        gate.set()
        assert called.wait(TIMEOUT)
        assert blocked.result(TIMEOUT) == "blocker"
        time.sleep(0.02)
        assert calls == [blocked], "callback not called exactly once with the future"
        # Already done: the callback runs immediately, in the calling thread.
        immediate = []
        blocked.add_done_callback(lambda f: immediate.append((f, threading.get_ident())))
        assert immediate == [(blocked, threading.get_ident())]

    def test_add_done_callback_sees_exception(self, pools):
        pool = pools(max_workers=2)
        got = []
        called = threading.Event()

        def callback(fut):
            got.append(fut.exception(0))
            called.set()

        pool.submit(tasks.failing_task, "cb").add_done_callback(callback)
        assert called.wait(TIMEOUT)
        assert isinstance(got[0], ValueError) and got[0].args == ("cb",)

    # ---- asyncio ------------------------------------------------------------------------

    def test_asyncio_run_in_executor_and_gather(self, pools):
        pool = pools(max_workers=2)

        async def main():
            loop = asyncio.get_running_loop()
            via_loop = await asyncio.wait_for(
                asyncio.gather(*(loop.run_in_executor(pool, tasks.square, i) for i in range(100))),
                TIMEOUT,
            )
            via_wrap = await asyncio.wait_for(
                asyncio.gather(
                    *(asyncio.wrap_future(pool.submit(tasks.square, i)) for i in range(100))
                ),
                TIMEOUT,
            )
            with pytest.raises(ValueError, match="in-loop"):
                await asyncio.wait_for(
                    loop.run_in_executor(pool, tasks.failing_task, "in-loop"), TIMEOUT
                )
            return via_loop, via_wrap

        via_loop, via_wrap = asyncio.run(main())
        assert via_loop == [i * i for i in range(100)]
        assert via_wrap == [i * i for i in range(100)]

    # ---- construction options -----------------------------------------------------------

    def test_initializer_and_initargs(self, pools):
        pool = pools(max_workers=2, initializer=tasks.init_global, initargs=({"k": 42},))
        results = [f.result(TIMEOUT) for f in [pool.submit(tasks.get_global) for _ in range(30)]]
        assert all(value == {"k": 42} for value, _ in results), results
        assert 1 <= len({pid for _, pid in results}) <= 2

    def test_failing_initializer_breaks_pool(self, pools):
        gate = pools.gate()
        pool = pools(max_workers=2, initializer=tasks.failing_initializer, initargs=(gate.path,))
        futures = [pool.submit(tasks.square, i) for i in range(5)]
        time.sleep(0.05)
        assert not any(f.done() for f in futures)
        gate.set()
        for f in futures:
            with pytest.raises(BrokenProcessPool):
                f.result(TIMEOUT)
        with pytest.raises(BrokenProcessPool):
            pool.submit(tasks.square, 99)
        run_bounded(pool.shutdown, what="shutdown of a broken pool")

    @pytest.mark.parametrize("bad", [0, -1, -100])
    def test_max_workers_not_positive(self, bad):
        with pytest.raises(ValueError):
            self.resolve_executor_class()(max_workers=bad)

    def test_max_workers_wrong_type(self):
        with pytest.raises(TypeError):
            self.resolve_executor_class()(max_workers="4")

    # ---- concurrency and resources ------------------------------------------------------

    def test_many_threads_submitting(self, pools):
        pool = pools(max_workers=2)
        n_threads, per_thread = 4, 250
        barrier = threading.Barrier(n_threads, timeout=TIMEOUT)
        out = [None] * n_threads
        errors = []

        def producer(k):
            try:
                barrier.wait()
                out[k] = [pool.submit(tasks.square, k * per_thread + i) for i in range(per_thread)]
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

    def test_no_fd_or_thread_leak(self, pools):
        def cycle():
            pool = self.resolve_executor_class()(max_workers=2)
            try:
                assert pool.submit(tasks.square, 3).result(TIMEOUT) == 9
            finally:
                run_bounded(lambda: pool.shutdown(wait=True), what="shutdown(wait=True)")

        cycle()  # warm up: one-time helpers (the stdlib's forkserver, ...)
        fds = len(os.listdir("/proc/self/fd"))
        threads = threading.active_count()
        for _ in range(8):
            cycle()
        wait_until(lambda: threading.active_count() <= threads, what="pool threads gone")
        assert len(os.listdir("/proc/self/fd")) <= fds, "file descriptors leak per pool"

    # ---- process lifetime ---------------------------------------------------------------

    def test_interpreter_exit_with_queued_work(self, tmp_path):
        self.resolve_executor_class()  # the braid side fails here if braid is not built
        script = tmp_path / "exit_with_queued_work.py"
        script.write_text(EXIT_SCRIPT)
        out_path = tmp_path / "done"
        proc = subprocess.run(
            [sys.executable, str(script), TESTS_DIR, self.executor_path, str(out_path)],
            capture_output=True,
            timeout=30,
            cwd=str(tmp_path),
        )
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr.decode())
        assert proc.stdout.decode().splitlines() == ["main exiting"]
        assert len(tasks.read_lines(out_path)) == 20, "queued tasks did not run before exit"
        assert b"Fatal Python error" not in proc.stderr


class TestStdlibProcessPool(ProcessExecutorMixin):
    # forkserver (the default from 3.14 on), not fork: forking this multi-threaded test process
    # may deadlock the child (and warns from 3.12 on).  Its workers are fresh processes like
    # braid's, forked from a single-threaded server that imported this sys.path.
    executor_class = staticmethod(functools.partial(
        cf.ProcessPoolExecutor, mp_context=multiprocessing.get_context("forkserver")
    ))
    executor_path = "concurrent.futures:ProcessPoolExecutor"


class TestBraidProcessPool(ProcessExecutorMixin):
    executor_path = "braid:ProcessPool"

    def resolve_executor_class(self):
        return import_braid().ProcessPool


class ProcessMapBuffersizeMixin(ProcPoolsFixture):
    """``map(..., buffersize=N)`` as in Python 3.14: the call submits the first N chunks, each
    chunk whose results start to be handed out reads and submits one more, so the input is read
    lazily, at most N chunks ahead of the consumer."""

    def test_results(self, pools):
        pool = pools(max_workers=2)
        ref = list(map(pow, range(10), range(10)))
        for buffersize in (1, 2, 9, 10, 11):
            for chunksize in (1, 2, 9, 10, 11):
                kw = dict(chunksize=chunksize, buffersize=buffersize)
                assert list(pool.map(pow, range(10), range(10), **kw)) == ref, kw
        assert list(pool.map(tasks.square, [], buffersize=2)) == []

    @pytest.mark.parametrize("buffersize", [1, 3])
    def test_window_bound(self, pools, buffersize):
        pool = pools(max_workers=2)
        source = GuardedCount(1000)
        it = pool.map(tasks.square, source, timeout=TIMEOUT, chunksize=1, buffersize=buffersize)
        assert source.pulled == buffersize, "the call submits the first window"
        for k in range(1, 30):
            assert next(it) == (k - 1) ** 2
            assert source.pulled == buffersize + k, "one more read per result handed out"
        it.close()

    def test_window_counts_chunks(self, pools):
        pool = pools(max_workers=2)
        source = GuardedCount(1000)
        it = pool.map(tasks.square, source, timeout=TIMEOUT, chunksize=3, buffersize=2)
        assert source.pulled == 6, "the call submits the first 2 chunks of 3"
        for k in range(1, 30):
            assert next(it) == (k - 1) ** 2
            # the chunk of the k-th result started: one more chunk read when each starts
            assert source.pulled == 3 * (2 + (k + 2) // 3)
        it.close()

    def test_endless_input(self, pools):
        pool = pools(max_workers=2)
        it = pool.map(tasks.square, itertools.count(), chunksize=1, buffersize=2)
        assert [next(it) for _ in range(3)] == [0, 1, 4]
        it.close()

    @pytest.mark.parametrize("bad, exc_type, message", BAD_BUFFERSIZES)
    def test_bad_buffersize(self, pools, bad, exc_type, message):
        pool = pools(max_workers=1)
        source = GuardedCount(10)
        with pytest.raises(exc_type, match=message):
            pool.map(tasks.square, source, chunksize=1, buffersize=bad)
        assert source.pulled == 0

    def test_input_error_is_raised_by_the_next_that_reads_it(self, pools):
        pool = pools(max_workers=2)

        def items():
            yield from range(5)
            raise KeyError("from the input")

        it = pool.map(tasks.square, items(), timeout=TIMEOUT, chunksize=1, buffersize=2)
        # the call read 0, 1; each next() reads one more before it waits: the 4th reads the error
        assert [next(it) for _ in range(3)] == [0, 1, 4]
        with pytest.raises(KeyError):
            next(it)
        with pytest.raises(StopIteration):
            next(it)

    def test_unconsumed_reads_only_the_first_window(self, pools):
        ran_path = pools.path("ran")
        pool = pools(max_workers=2)
        ints = iter(range(10))
        pool.map(functools.partial(tasks.record, ran_path), ints, chunksize=1, buffersize=2)
        run_bounded(lambda: pool.shutdown(wait=True), timeout=60, what="shutdown")
        assert next(ints) == 2
        assert sorted(map(int, tasks.read_lines(ran_path))) == [0, 1]


class TestBraidProcessPoolBuffersize(ProcessMapBuffersizeMixin):
    def resolve_executor_class(self):
        return import_braid().ProcessPool


# Only where the stdlib has buffersize (3.14 on); braid's side runs on every Python.
if STDLIB_MAP_HAS_BUFFERSIZE:

    class TestStdlibProcessPoolBuffersize(ProcessMapBuffersizeMixin):
        executor_class = staticmethod(TestStdlibProcessPool.executor_class)
