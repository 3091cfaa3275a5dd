"""The plain ``concurrent.futures.Future`` API, used directly (no executor).

``FutureMixin`` runs against ``concurrent.futures.Future`` and against braid's C subclass
``braid._braid.Future``, which must be a drop-in: ``wait()``, ``as_completed()`` and
``asyncio.wrap_future()`` from the stdlib are used on it unchanged.  Every wait is bounded.
"""

import asyncio
import concurrent.futures as cf
import gc
import logging
import os
import sys
import threading
import time
import traceback
import weakref

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pool_helpers import TIMEOUT, import_braid  # noqa: E402


def raise_value_error(msg):
    raise ValueError(msg)


def start_thread(fn, *args):
    """Run fn(*args) in a daemon thread; returns (thread, box) with box['result'/'error']."""
    box = {}
    started = threading.Event()

    def target():
        started.set()
        try:
            box["result"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    assert started.wait(TIMEOUT)
    return t, box


def join(t):
    t.join(TIMEOUT)
    assert not t.is_alive(), "waiting thread was not woken"


class FutureMixin:
    future_class = None

    def resolve_future_class(self):
        return self.future_class

    @pytest.fixture
    def Future(self):
        return self.resolve_future_class()

    def finished(self, Future, value):
        f = Future()
        assert f.set_running_or_notify_cancel()
        f.set_result(value)
        return f

    def failed(self, Future, exc):
        f = Future()
        assert f.set_running_or_notify_cancel()
        f.set_exception(exc)
        return f

    def cancelled(self, Future):
        # As an executor does it: cancel() then set_running_or_notify_cancel() -> False.
        f = Future()
        assert f.cancel()
        assert f.set_running_or_notify_cancel() is False
        return f

    # ---- states -------------------------------------------------------------------------

    def test_new_future_is_pending(self, Future):
        f = Future()
        assert isinstance(f, cf.Future)
        assert not f.done() and not f.running() and not f.cancelled()
        assert "pending" in repr(f)

    def test_set_running(self, Future):
        f = Future()
        assert f.set_running_or_notify_cancel() is True
        assert f.running() and not f.done() and not f.cancelled()
        assert "running" in repr(f)
        with pytest.raises(RuntimeError):
            f.set_running_or_notify_cancel()

    def test_set_result(self, Future):
        f = Future()
        f.set_running_or_notify_cancel()
        f.set_result(42)
        assert f.done() and not f.running() and not f.cancelled()
        assert f.result() == 42 and f.result(0) == 42
        assert f.exception() is None
        assert "finished" in repr(f)
        with pytest.raises(RuntimeError):
            f.set_running_or_notify_cancel()

    def test_set_result_from_pending_and_none(self, Future):
        f = Future()
        f.set_result(None)  # allowed without set_running_or_notify_cancel()
        assert f.done() and f.result(0) is None and f.exception(0) is None

    def test_set_exception(self, Future):
        f = Future()
        f.set_running_or_notify_cancel()
        exc = ValueError("bad")
        f.set_exception(exc)
        assert f.done() and not f.cancelled()
        assert f.exception() is exc and f.exception(0) is exc
        with pytest.raises(ValueError) as excinfo:
            f.result()
        assert excinfo.value is exc
        assert "finished" in repr(f)

    def test_set_exception_keeps_traceback(self, Future):
        try:
            raise_value_error("tb")
        except ValueError as exc:
            caught = exc
        f = Future()
        f.set_exception(caught)
        with pytest.raises(ValueError) as excinfo:
            f.result(0)
        codes = [frame.f_code for frame, _ in traceback.walk_tb(excinfo.value.__traceback__)]
        assert raise_value_error.__code__ in codes

    def test_invalid_state_on_double_set(self, Future):
        f = Future()
        f.set_result(1)
        with pytest.raises(cf.InvalidStateError):
            f.set_result(2)
        with pytest.raises(cf.InvalidStateError):
            f.set_exception(ValueError())
        assert f.result(0) == 1

        g = Future()
        g.set_exception(KeyError("k"))
        with pytest.raises(cf.InvalidStateError):
            g.set_exception(ValueError())
        with pytest.raises(cf.InvalidStateError):
            g.set_result(1)
        assert isinstance(g.exception(0), KeyError)

    def test_invalid_state_after_cancel(self, Future):
        f = Future()
        assert f.cancel()
        with pytest.raises(cf.InvalidStateError):
            f.set_result(1)
        with pytest.raises(cf.InvalidStateError):
            f.set_exception(ValueError())
        assert f.cancelled()

    # ---- cancel -------------------------------------------------------------------------

    def test_cancel_pending(self, Future):
        f = Future()
        assert f.cancel() is True
        assert f.cancel() is True  # cancelling again still reports cancelled
        assert f.cancelled() and f.done() and not f.running()
        assert "cancelled" in repr(f)
        with pytest.raises(cf.CancelledError):
            f.result(0)
        with pytest.raises(cf.CancelledError):
            f.exception(0)
        assert f.set_running_or_notify_cancel() is False
        assert f.cancel() is True and f.cancelled()

    def test_cancel_running_or_finished_fails(self, Future):
        f = Future()
        f.set_running_or_notify_cancel()
        assert f.cancel() is False
        assert not f.cancelled() and f.running()
        f.set_result(3)
        assert f.cancel() is False
        assert not f.cancelled() and f.result(0) == 3

        g = Future()
        g.set_exception(ValueError())
        assert g.cancel() is False and not g.cancelled()

    def test_cancelled_error_class(self, Future):
        f = self.cancelled(Future)
        with pytest.raises(cf.CancelledError):
            f.result(TIMEOUT)

    # ---- callbacks ----------------------------------------------------------------------

    def test_done_callbacks_order_and_argument(self, Future):
        f = Future()
        calls = []
        for i in range(5):
            f.add_done_callback(lambda fut, i=i: calls.append((i, fut)))
        assert calls == []
        f.set_running_or_notify_cancel()
        assert calls == []
        f.set_result("v")
        assert calls == [(i, f) for i in range(5)]

    def test_done_callback_immediate_when_done(self, Future):
        f = self.finished(Future, 1)
        calls = []
        f.add_done_callback(lambda fut: calls.append((fut, threading.get_ident())))
        assert calls == [(f, threading.get_ident())]

    def test_done_callbacks_called_once(self, Future):
        f = Future()
        calls = []
        f.add_done_callback(calls.append)
        f.set_result(1)
        with pytest.raises(cf.InvalidStateError):
            f.set_result(2)
        assert calls == [f]

    def test_done_callback_on_cancel(self, Future):
        f = Future()
        calls = []
        f.add_done_callback(calls.append)
        assert f.cancel()
        assert calls == [f]
        assert f.cancel()
        f.set_running_or_notify_cancel()
        assert calls == [f]

    def test_done_callback_on_exception(self, Future):
        f = Future()
        calls = []
        f.add_done_callback(lambda fut: calls.append(fut.exception(0)))
        exc = OSError("x")
        f.set_exception(exc)
        assert calls == [exc]

    def test_callback_exception_is_logged_not_raised(self, Future, caplog):
        boom = ZeroDivisionError("in callback")

        def bad(fut):
            raise boom

        f = Future()
        later = []
        f.add_done_callback(bad)
        f.add_done_callback(later.append)
        with caplog.at_level(logging.DEBUG):
            f.set_result(1)  # must not raise
            assert later == [f], "a raising callback stopped the following ones"
            records = [r for r in caplog.records if r.exc_info and r.exc_info[1] is boom]
            assert records and records[0].levelno >= logging.ERROR

            caplog.clear()
            f.add_done_callback(bad)  # immediate call: logged too, not raised
            records = [r for r in caplog.records if r.exc_info and r.exc_info[1] is boom]
            assert records and records[0].levelno >= logging.ERROR

    def test_reentrant_callback(self, Future):
        f = Future()
        got = []

        def callback(fut):
            got.append(fut.result(0))
            got.append((fut.done(), fut.running(), fut.cancelled()))
            fut.add_done_callback(lambda g: got.append("nested"))  # done: runs at once
            got.append(repr(fut))

        f.add_done_callback(callback)
        t, box = start_thread(f.set_result, "r")  # a deadlock here fails instead of hanging
        join(t)
        assert "error" not in box, box
        assert got[:3] == ["r", (True, False, False), "nested"]
        assert "finished" in got[3]

    def test_result_and_callbacks_released_with_future(self, Future):
        class Payload:
            pass

        class Callback:
            def __call__(self, fut):
                pass

        f = Future()
        value, exc_holder = Payload(), Payload()
        callback = Callback()
        f.add_done_callback(callback)
        f.set_result(value)
        g = Future()
        err = ValueError(exc_holder)
        g.set_exception(err)
        refs = [weakref.ref(value), weakref.ref(callback), weakref.ref(exc_holder)]
        del f, g, value, callback, exc_holder, err
        gc.collect()
        assert all(r() is None for r in refs), "a future leaked its result/callback/exception"

    def test_future_in_reference_cycle_is_collected(self, Future):
        f = Future()
        f.set_result(f)  # the future holds itself
        ref = weakref.ref(f)
        del f
        gc.collect()
        assert ref() is None

    def test_cancel_races_with_set_running(self, Future):
        # Exactly one of cancel() / set_running_or_notify_cancel() wins.
        for _ in range(200):
            f = Future()
            barrier = threading.Barrier(2, timeout=TIMEOUT)
            box = {}

            def canceller():
                barrier.wait()
                box["cancel"] = f.cancel()

            def runner():
                barrier.wait()
                box["run"] = f.set_running_or_notify_cancel()

            threads = [start_thread(canceller)[0], start_thread(runner)[0]]
            for t in threads:
                join(t)
            assert box["cancel"] != box["run"], box
            assert f.cancelled() == box["cancel"]
            if box["run"]:
                f.set_result(1)
                assert f.result(0) == 1

    # ---- timeouts and cross-thread wake-ups ---------------------------------------------

    def test_result_timeout(self, Future):
        f = Future()
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            f.result(timeout=0.05)
        assert 0.04 <= time.monotonic() - t0 < 2.0
        with pytest.raises(TimeoutError):
            f.result(timeout=0)
        with pytest.raises(TimeoutError):
            f.exception(timeout=0.01)
        f.set_running_or_notify_cancel()
        with pytest.raises(TimeoutError):
            f.result(timeout=0.01)
        assert not f.done()

    def test_result_woken_by_set_result_from_other_thread(self, Future):
        f = Future()
        t, box = start_thread(f.result, TIMEOUT)
        time.sleep(0.05)  # let it block
        t0 = time.monotonic()
        f.set_running_or_notify_cancel()
        f.set_result("hello")
        join(t)
        assert box == {"result": "hello"}
        assert time.monotonic() - t0 < TIMEOUT / 2

    def test_result_woken_by_set_exception(self, Future):
        f = Future()
        t, box = start_thread(f.result, TIMEOUT)
        t2, box2 = start_thread(f.exception, TIMEOUT)
        time.sleep(0.05)
        exc = KeyError("k")
        f.set_exception(exc)
        join(t)
        join(t2)
        assert box == {"error": exc}
        assert box2 == {"result": exc}

    def test_result_woken_by_cancel(self, Future):
        f = Future()
        t, box = start_thread(f.result, TIMEOUT)
        time.sleep(0.05)
        assert f.cancel()
        join(t)
        assert isinstance(box.get("error"), cf.CancelledError)

    def test_many_waiters_all_woken(self, Future):
        f = Future()
        threads = [start_thread(f.result, TIMEOUT) for _ in range(8)]
        time.sleep(0.05)
        f.set_result(7)
        for t, box in threads:
            join(t)
            assert box == {"result": 7}

    def test_set_result_racing_threads(self, Future):
        # Exactly one of many concurrent set_result() calls wins; the rest get
        # InvalidStateError, and the waiter sees the winner's value.
        for _ in range(20):
            f = Future()
            barrier = threading.Barrier(4, timeout=TIMEOUT)
            outcomes = []

            def setter(v):
                barrier.wait()
                try:
                    f.set_result(v)
                    outcomes.append(("ok", v))
                except cf.InvalidStateError:
                    outcomes.append(("invalid", v))

            threads = [start_thread(setter, v)[0] for v in range(4)]
            for t in threads:
                join(t)
            winners = [v for kind, v in outcomes if kind == "ok"]
            assert len(winners) == 1 and len(outcomes) == 4
            assert f.result(0) == winners[0]

    # ---- wait() / as_completed() --------------------------------------------------------

    def other_future_classes(self, Future):
        """Future classes to mix with the one under test (stdlib futures always included)."""
        return [Future, cf.Future]

    def test_wait_mix_of_states(self, Future):
        done_ok = self.finished(Future, 1)
        done_err = self.failed(Future, ValueError())
        cancelled = self.cancelled(Future)
        pending = Future()
        running = Future()
        running.set_running_or_notify_cancel()
        fs = [done_ok, done_err, cancelled, pending, running]

        done, not_done = cf.wait(fs, timeout=0.05)
        assert done == {done_ok, done_err, cancelled}
        assert not_done == {pending, running}

        done, not_done = cf.wait(fs, timeout=TIMEOUT, return_when=cf.FIRST_COMPLETED)
        assert done == {done_ok, done_err, cancelled}
        done, not_done = cf.wait(fs, timeout=TIMEOUT, return_when=cf.FIRST_EXCEPTION)
        assert done_err in done and pending in not_done

    def test_wait_woken_from_other_thread(self, Future):
        for return_when in (cf.FIRST_COMPLETED, cf.ALL_COMPLETED, cf.FIRST_EXCEPTION):
            a = Future()
            b = cf.Future() if Future is not cf.Future else Future()
            t, box = start_thread(
                lambda: cf.wait([a, b], timeout=TIMEOUT, return_when=return_when)
            )
            time.sleep(0.03)
            a.set_running_or_notify_cancel()
            if return_when == cf.FIRST_EXCEPTION:
                a.set_exception(RuntimeError())
            else:
                a.set_result(1)
            if return_when == cf.ALL_COMPLETED:
                time.sleep(0.02)
                b.set_result(2)
            join(t)
            done, not_done = box["result"]
            assert a in done
            if return_when == cf.ALL_COMPLETED:
                assert done == {a, b} and not not_done
            else:
                assert not_done == {b}
            if not b.done():
                b.set_result(0)

    def test_wait_woken_by_notified_cancel(self, Future):
        f = Future()
        t, box = start_thread(
            lambda: cf.wait([f], timeout=TIMEOUT, return_when=cf.FIRST_COMPLETED)
        )
        time.sleep(0.03)
        assert f.cancel()
        assert f.set_running_or_notify_cancel() is False
        join(t)
        done, not_done = box["result"]
        assert done == {f} and not not_done

    def test_as_completed_mix(self, Future):
        classes = self.other_future_classes(Future)
        already = [self.finished(cls, i) for i, cls in enumerate(classes)]
        later = [cls() for cls in classes for _ in range(3)]
        seen = []

        def consume():
            for fut in cf.as_completed(already + later + already, timeout=TIMEOUT):
                seen.append(fut)

        t, box = start_thread(consume)
        time.sleep(0.03)
        for i, fut in enumerate(reversed(later)):
            fut.set_running_or_notify_cancel()
            fut.set_result(i)
            time.sleep(0.002)
        join(t)
        assert "error" not in box, box
        assert set(seen[: len(already)]) == set(already), "finished futures come first"
        assert len(seen) == len(already) + len(later)
        assert set(seen) == set(already + later)

    def test_as_completed_timeout(self, Future):
        done_f = self.finished(Future, 1)
        pending = Future()
        seen = []
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            for fut in cf.as_completed([pending, done_f], timeout=0.05):
                seen.append(fut)
        assert seen == [done_f]
        assert time.monotonic() - t0 < 2.0

    def test_wait_mixed_classes(self, Future):
        classes = self.other_future_classes(Future)
        fs = [cls() for cls in classes]
        t, box = start_thread(lambda: cf.wait(fs, timeout=TIMEOUT))
        time.sleep(0.02)
        for i, f in enumerate(fs):
            f.set_result(i)
        join(t)
        done, not_done = box["result"]
        assert done == set(fs) and not not_done

    # ---- asyncio and typing -------------------------------------------------------------

    def test_asyncio_wrap_future(self, Future):
        f = Future()
        g = Future()

        async def main():
            wrapped = asyncio.wrap_future(f)
            wrapped_err = asyncio.wrap_future(g)
            timer = threading.Timer(0.02, f.set_result, args=("async",))
            timer.start()
            try:
                value = await asyncio.wait_for(wrapped, TIMEOUT)
            finally:
                timer.cancel()
            threading.Timer(0.01, g.set_exception, args=(KeyError("e"),)).start()
            with pytest.raises(KeyError):
                await asyncio.wait_for(wrapped_err, TIMEOUT)
            return value

        assert asyncio.run(main()) == "async"

    def test_asyncio_cancel_wrapper_cancels_future(self, Future):
        f = Future()

        async def main():
            wrapped = asyncio.wrap_future(f)
            wrapped.cancel()
            for _ in range(100):
                await asyncio.sleep(0)
                if f.cancelled():
                    break

        asyncio.run(main())
        assert f.cancelled()

    def test_class_getitem(self, Future):
        alias = Future[int]
        assert alias.__origin__ is Future


class TestStdlibFuture(FutureMixin):
    future_class = cf.Future


class TestBraidFuture(FutureMixin):
    def resolve_future_class(self):
        return import_braid("braid._braid").Future

    def test_is_c_subclass_of_concurrent_future(self, Future):
        assert issubclass(Future, cf.Future) and Future is not cf.Future
