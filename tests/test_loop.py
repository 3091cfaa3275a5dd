"""Event-loop behaviour, written once and run against asyncio's own loop and braid.Loop.

CPython's own loop test mixins run against braid.Loop too (tests/conformance/); these cover
what issue 3 names as bad input and faults, and the core that braid.Loop implements in C.
"""

import asyncio
import contextvars
import functools
import gc
import os
import signal
import socket
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from pool_helpers import TIMEOUT, import_braid  # noqa: E402


def open_fds():
    return len(os.listdir("/proc/self/fd"))


class LoopMixin:
    def new_loop(self):
        raise NotImplementedError

    @pytest.fixture
    def loop(self):
        loop = self.new_loop()
        yield loop
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def run(self, loop, coro):
        return loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))

    # ---- scheduling -------------------------------------------------------------------

    def test_a_transports_fd_refuses_add_reader_until_it_closes(self, loop):
        async def main():
            server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            fd = transport.get_extra_info("socket").fileno()
            with pytest.raises(RuntimeError, match="is used by transport"):
                loop.add_reader(fd, lambda: None)
            transport.close()  # closing: asyncio lets the fd be watched again
            loop.add_reader(fd, lambda: None)
            loop.remove_reader(fd)
            server.close()
            await server.wait_closed()

        self.run(loop, main())

    def test_keyboard_interrupt_from_connection_lost_after_a_flush_leaves_the_loop(self, loop):
        # close() with data still queued: connection_lost runs once the queue has drained, from
        # the write path; a KeyboardInterrupt there leaves run_until_complete, as any callback's.
        class Raising(asyncio.Protocol):
            def connection_lost(self, exc):
                raise KeyboardInterrupt

        async def main():
            a, b = socket.socketpair()
            a.setblocking(False)
            transport, _ = await loop.create_connection(Raising, sock=a)
            transport.write(b"x" * (4 << 20))  # more than the socket buffers take at once
            transport.close()
            while True:  # the peer reads; the queue drains; connection_lost raises
                await asyncio.sleep(0)
                try:
                    b.setblocking(False)
                    b.recv(1 << 20)
                except BlockingIOError:
                    pass

        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(main())

    def test_call_soon_runs_in_order_with_args(self, loop):
        seen = []
        for i in range(5):
            loop.call_soon(seen.append, i)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == [0, 1, 2, 3, 4]

    def test_a_callback_may_cancel_its_own_handle_while_it_runs(self, loop):
        # reduce() is C code that goes on using its arguments after calling back into Python;
        # the callback cancels the handle running it, which drops the handle's references to
        # the callable and the arguments mid-call. asyncio holds them for the call; so must we.
        box, seen = {}, []

        def step(a, b):
            box["handle"].cancel()
            return a + b

        box["handle"] = loop.call_soon(lambda *a: seen.append(functools.reduce(*a)),
                                       step, [1, 2, 3, 4], 0)
        timer = loop.call_later(0, functools.reduce, lambda a, b: (box["timer"].cancel(), a * b)[1],
                                [1, 2, 3, 4], 1)
        box["timer"] = timer
        loop.call_later(0.01, loop.stop)
        loop.run_forever()
        assert seen == [10] and box["handle"].cancelled() and timer.cancelled()

    def test_callbacks_scheduled_by_callbacks_wait_an_iteration(self, loop):
        seen = []

        def first():
            seen.append("first")
            loop.call_soon(seen.append, "later")

        loop.call_soon(first)
        loop.call_soon(seen.append, "second")
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen[:2] == ["first", "second"]

    def test_timers_fire_in_deadline_order_and_equal_deadlines_in_call_order(self, loop):
        seen = []
        now = loop.time()
        loop.call_at(now + 0.03, seen.append, "c")
        loop.call_at(now + 0.01, seen.append, "a1")
        loop.call_at(now + 0.01, seen.append, "a2")
        loop.call_later(0.02, seen.append, "b")
        loop.call_later(0.05, loop.stop)
        loop.run_forever()
        assert seen == ["a1", "a2", "b", "c"]

    def test_timer_waits_about_its_delay(self, loop):
        t0 = time.monotonic()
        self.run(loop, asyncio.sleep(0.05))
        assert 0.045 <= time.monotonic() - t0 < 2.0

    def test_tiny_timeouts_do_not_stall_the_poll(self, loop):
        # A timer due in a few microseconds used to be able to leave braid.Loop's poll
        # without a bound. A watchdog thread stops the loop if that happens again.
        done = []

        async def tiny_sleeps():
            for delay in [1e-2, 1e-4, 1e-6, 1e-8, 1e-10] * 40:
                await asyncio.sleep(delay)
            done.append(True)

        task = loop.create_task(tiny_sleeps())
        task.add_done_callback(lambda _: loop.stop())
        watchdog = threading.Timer(TIMEOUT, loop.call_soon_threadsafe, (loop.stop,))
        watchdog.start()
        try:
            loop.run_forever()
        finally:
            watchdog.cancel()
        assert done == [True]

    def test_cancelled_handles_do_not_run(self, loop):
        seen = []
        h1 = loop.call_soon(seen.append, 1)
        h2 = loop.call_later(0.01, seen.append, 2)
        h1.cancel()
        h2.cancel()
        h2.cancel()  # idempotent
        assert h1.cancelled() and h2.cancelled()
        loop.call_later(0.03, loop.stop)
        loop.run_forever()
        assert seen == []

    def test_timer_handle_when_is_on_the_loop_clock(self, loop):
        h = loop.call_later(10, lambda: None)
        assert abs(h.when() - (loop.time() + 10)) < 0.5
        h.cancel()

    def test_call_at_keeps_its_when_as_given(self, loop):
        # asyncio's TimerHandle keeps call_at's argument: an int stays an int
        h = loop.call_at(10, lambda: None)
        assert h.when() == 10 and type(h.when()) is int
        h.cancel()

    def test_a_replaced_time_drives_the_timers(self, loop):
        # asyncio reads its clock through self.time(): a mock or a virtual clock put in its
        # place decides when call_later's timers are due, on the instance or in a subclass
        from unittest import mock
        fake = [loop.time() + 1e6]  # far from the real clock, so that neither can pass
        fired = []

        async def main():
            with mock.patch.object(loop, "time", side_effect=lambda: fake[0]):
                start = fake[0]
                h = loop.call_later(5, fired.append, "due in 5 s")
                assert h.when() == start + 5
                for _ in range(10):
                    await asyncio.sleep(0)
                assert fired == []  # not due: the real clock is 1e6 s behind
                fake[0] = start + 4
                await asyncio.sleep(0)
                assert fired == []
                fake[0] = start + 5
                for _ in range(3):
                    await asyncio.sleep(0)
                assert fired == ["due in 5 s"]
            await asyncio.sleep(0.01)  # the real clock again: a real sleep ends

        loop.run_until_complete(main())

        class Virtual(type(loop)):
            def time(self):
                return 42.0

        virtual = Virtual()
        try:
            seen = []
            virtual.call_at(42, seen.append, "due now")
            virtual.call_at(42.001, seen.append, "due in 1 ms: never")
            virtual.call_soon(virtual.call_soon, virtual.stop)
            virtual.run_forever()
            assert seen == ["due now"]
        finally:
            virtual.close()

    def test_a_watch_is_removed_by_its_socket_after_the_socket_closed(self, loop):
        # as selectors find a closed object's key by identity: anyio removes its reader with
        # the socket it closed; the old fd number must not keep a watch a new socket inherits
        for add, remove in ((loop.add_reader, loop.remove_reader),
                            (loop.add_writer, loop.remove_writer)):
            a, b = socket.socketpair()
            old_fd = a.fileno()
            add(a, lambda: None)
            a.close()
            assert remove(a) is True
            assert remove(old_fd) is False
            with pytest.raises(ValueError):
                remove(a)  # no watch left made with it: the closed object's error
            b.close()

        c, d = socket.socketpair()
        fired = []
        try:
            loop.add_reader(c, lambda: (fired.append(c.recv(10)), loop.stop()))
            d.send(b"new")
            loop.call_later(TIMEOUT, loop.stop)
            loop.run_forever()
            assert fired == [b"new"]
            assert loop.remove_reader(c) is True
        finally:
            c.close()
            d.close()

    def test_a_clock_far_from_zero_keeps_timers_apart(self, loop):
        # a replaced clock in the billions (ms since the epoch, say) still tells 50 ms apart
        class Far(type(loop)):
            def time(self):
                return time.monotonic() + 1.8e12

        far = Far()
        try:
            t0 = time.monotonic()
            far.run_until_complete(asyncio.sleep(0.05))
            assert time.monotonic() - t0 >= 0.045
        finally:
            far.close()

    def test_a_subclass_may_set_attributes_through_object_setattr(self, loop):
        # a common __setattr__ override delegates to object.__setattr__
        class Watched(type(loop)):
            def __setattr__(self, name, value):
                object.__setattr__(self, name, value)

        watched = Watched()
        try:
            assert watched.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
            object.__setattr__(loop, "extra", 1)
            object.__delattr__(loop, "extra")
        finally:
            watched.close()

    def test_a_time_that_raises_or_is_not_a_number_fails_the_call(self, loop):
        from unittest import mock
        with mock.patch.object(loop, "time", return_value="soon"):
            with pytest.raises(TypeError):
                loop.call_later(1, print)
        with mock.patch.object(loop, "time", side_effect=ZeroDivisionError):
            with pytest.raises(ZeroDivisionError):
                loop.call_later(1, print)

    def test_call_soon_threadsafe_wakes_a_sleeping_loop(self, loop):
        seen = []

        def from_thread():
            time.sleep(0.05)
            loop.call_soon_threadsafe(seen.append, "woken")
            loop.call_soon_threadsafe(loop.stop)

        t = threading.Thread(target=from_thread)
        t.start()
        t0 = time.monotonic()
        loop.call_later(30, loop.stop)  # the bound: the wakeup must come long before
        loop.run_forever()
        t.join(TIMEOUT)
        assert seen == ["woken"] and time.monotonic() - t0 < 5

    def test_callbacks_run_in_their_context(self, loop):
        var = contextvars.ContextVar("var", default="default")
        ctx = contextvars.copy_context()
        ctx.run(var.set, "in ctx")
        seen = []
        loop.call_soon(lambda: seen.append(var.get()), context=ctx)
        loop.call_soon(lambda: seen.append(var.get()))
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == ["in ctx", "default"]

    def test_debug_mode_warns_of_slow_callbacks(self, loop, caplog):
        assert loop.get_debug() is False
        loop.set_debug(True)
        assert loop.get_debug() is True
        loop.slow_callback_duration = 0.02

        def slow_one():
            time.sleep(0.05)

        loop.call_soon(slow_one)
        loop.call_soon(lambda: None)
        with caplog.at_level("WARNING", logger="asyncio"):
            self.run(loop, asyncio.sleep(0.01))
        slow = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
        assert len(slow) == 1 and "slow_one" in slow[0], slow
        loop.set_debug(False)
        assert loop.get_debug() is False

    def test_create_task_name_context_and_factory(self, loop):
        var = contextvars.ContextVar("var", default="outer")

        async def read_var():
            return var.get()

        async def main():
            ctx = contextvars.copy_context()
            ctx.run(var.set, "inner")
            task = loop.create_task(read_var(), name="reader", context=ctx)
            assert isinstance(task, asyncio.Task) and task.get_name() == "reader"
            assert await task == "inner"
            made = []

            def factory(lp, coro, **kwargs):
                made.append(kwargs)
                return asyncio.Task(coro, loop=lp, **kwargs)

            loop.set_task_factory(factory)
            try:
                assert await loop.create_task(read_var(), name="via-factory") == "outer"
                assert await loop.create_task(read_var(), context=ctx) == "inner"
            finally:
                loop.set_task_factory(None)
            assert made == [{}, {"context": ctx}]
            fut = loop.create_future()
            assert isinstance(fut, asyncio.Future) and fut.get_loop() is loop
            coro = read_var()
            with pytest.raises(TypeError):
                loop.create_task(coro, bogus=1)
            coro.close()

        self.run(loop, main())
        loop.close()
        coro = read_var()
        with pytest.raises(RuntimeError, match="closed"):
            loop.create_task(coro)
        coro.close()

    @pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"), reason="eager tasks are new in 3.12")
    def test_eager_task_factory_runs_the_first_step_at_once(self, loop):
        steps = []

        async def child():
            steps.append("child ran")
            return 7

        async def main():
            loop.set_task_factory(asyncio.eager_task_factory)
            task = loop.create_task(child())
            steps.append("after create_task")
            assert task.done() and await task == 7

        self.run(loop, main())
        assert steps == ["child ran", "after create_task"]

    # ---- handles and debug mode, as asyncio's --------------------------------------------

    def test_handles_are_asyncio_handles_hashable_and_weakrefable(self, loop):
        import weakref

        h = loop.call_soon(print)
        t = loop.call_later(10, print)
        assert isinstance(h, asyncio.Handle) and not isinstance(h, asyncio.TimerHandle)
        assert isinstance(t, asyncio.TimerHandle)
        assert len({h, t, loop.call_later(10, print)}) == 3
        assert weakref.ref(h)() is h and weakref.ref(t)() is t
        assert t.when() == t._when and h.cancelled() is False
        assert repr(h) == "<Handle print()>"
        assert repr(t).startswith(f"<TimerHandle when={t.when()!r} print()")
        t.cancel()
        assert t.cancelled() and repr(t).startswith("<TimerHandle cancelled when=")
        h.cancel()
        assert h._callback is None and h._args is None

    def test_debug_mode_shows_the_callbacks_own_exception(self, loop):
        seen = []
        loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
        loop.set_debug(True)

        def boom():
            1 / 0

        handle = loop.call_soon(boom)
        loop.call_later(0.001, boom)
        self.run(loop, asyncio.sleep(0.05))
        assert len(seen) == 2
        for ctx in seen:
            assert isinstance(ctx["exception"], ZeroDivisionError)
            assert ctx["message"].startswith("Exception in callback ")
            assert "boom()" in ctx["message"]
            # where the callback was scheduled: this test function, as asyncio records it
            assert ctx["source_traceback"][-1].name == "test_debug_mode_shows_the_callbacks_own_exception"
        assert seen[0]["handle"] is handle
        assert "created at " in repr(handle) and " at " in repr(handle).split("created at")[0]

    def test_debug_mode_default_handler_logs_the_error(self, loop, caplog):
        loop.set_debug(True)
        loop.call_soon(lambda: 1 / 0)
        with caplog.at_level("ERROR", logger="asyncio"):
            self.run(loop, asyncio.sleep(0.02))
        assert "ZeroDivisionError" in caplog.text
        assert "Exception in default exception handler" not in caplog.text

    def test_debug_mode_refuses_calls_from_another_thread(self, loop):
        loop.set_debug(True)
        errors = []

        def other_thread():
            for call in (lambda: loop.call_soon(print), lambda: loop.call_later(1, print),
                         lambda: loop.call_at(loop.time() + 1, print)):
                try:
                    call()
                except RuntimeError as exc:
                    errors.append(str(exc))
            loop.call_soon_threadsafe(print)  # the thread-safe one is fine

        async def main():
            t = threading.Thread(target=other_thread)
            t.start()
            await asyncio.sleep(0.01)
            t.join(TIMEOUT)

        self.run(loop, main())
        assert errors == ["Non-thread-safe operation invoked on an event loop other than the current one"] * 3

    def test_add_reader_converts_fileno_with_int(self, loop):
        a, b = socket.socketpair()

        class FileLike:
            def __init__(self, fd):
                self.fd = fd

            def fileno(self):
                return self  # not an int: int() of it is

            def __index__(self):
                return self.fd

            __int__ = __index__

        try:
            got = loop.create_future()
            loop.add_reader(FileLike(a.fileno()), lambda: got.done() or got.set_result(a.recv(1)))
            b.send(b"x")
            assert self.run(loop, got) == b"x"
            assert loop.remove_reader(FileLike(a.fileno())) is True
            for bad, message in ((object(), "Invalid file object"), (-1, "Invalid file descriptor: -1"),
                                 ("x", "Invalid file object: 'x'")):
                with pytest.raises(ValueError, match=message):
                    loop.add_reader(bad, print)
        finally:
            a.close()
            b.close()

    def test_time_is_monotonic_seconds(self, loop):
        assert abs(loop.time() - time.monotonic()) < 1.0

    def test_tasks_and_gather(self, loop):
        async def work(i):
            await asyncio.sleep(0)
            return i * 2

        async def main():
            return await asyncio.gather(*(work(i) for i in range(1000)))

        assert self.run(loop, main()) == [i * 2 for i in range(1000)]

    # ---- bad input and faults -----------------------------------------------------------

    def test_callback_that_raises_goes_to_the_exception_handler(self, loop):
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        seen = []

        def boom():
            raise ZeroDivisionError("boom")

        loop.call_soon(boom)
        loop.call_soon(seen.append, "after")
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == ["after"]
        assert isinstance(errors[0]["exception"], ZeroDivisionError)
        assert "Exception in callback" in errors[0]["message"]

    def test_keyboard_interrupt_in_a_callback_propagates(self, loop):
        def interrupt():
            raise KeyboardInterrupt

        loop.call_soon(interrupt)
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()

    def test_run_until_complete_on_a_running_loop(self, loop):
        async def nested():
            coro = asyncio.sleep(0)
            try:
                loop.run_until_complete(coro)
            finally:
                coro.close()

        with pytest.raises(RuntimeError):
            self.run(loop, nested())

    def test_invalid_signal(self, loop):
        with pytest.raises((ValueError, RuntimeError)):
            loop.add_signal_handler(signal.NSIG + 1, lambda: None)
        with pytest.raises(RuntimeError):
            loop.add_signal_handler(signal.SIGKILL, lambda: None)

    def test_signal_handler_runs_during_a_busy_chain_of_callbacks(self, loop):
        # braid.Loop skips polls while only the self-pipe is watched and callbacks are
        # ready; a signal must still get through within a bounded number of steps
        got = []
        steps = [0]
        loop.add_signal_handler(signal.SIGUSR1, got.append, "usr1")

        def step():
            steps[0] += 1
            if steps[0] == 10:
                os.kill(os.getpid(), signal.SIGUSR1)
            if got or steps[0] > 100_000:
                loop.stop()
            else:
                loop.call_soon(step)

        loop.call_soon(step)
        try:
            loop.run_forever()
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        assert got == ["usr1"]
        assert steps[0] < 10 + 200, steps[0]

    def test_closed_fd_passed_to_add_reader(self, loop):
        a, b = socket.socketpair()
        fd = a.fileno()
        a.close()
        b.close()
        with pytest.raises((OSError, ValueError)):
            loop.add_reader(fd, lambda: None)

    def test_coroutine_passed_to_call_soon(self, loop):
        async def coro_fn():
            pass

        coro = coro_fn()
        loop.set_debug(True)  # asyncio checks only in debug mode; braid.Loop always does
        with pytest.raises(TypeError):
            loop.call_soon(coro)
        with pytest.raises(TypeError):
            loop.call_soon(coro_fn)
        loop.set_debug(False)
        coro.close()

    def test_closed_loop_refuses_callbacks(self, loop):
        loop.close()
        with pytest.raises(RuntimeError):
            loop.call_soon(lambda: None)
        with pytest.raises(RuntimeError):
            loop.call_later(1, lambda: None)

    def test_add_reader_and_remove_reader(self, loop):
        a, b = socket.socketpair()
        seen = []
        try:
            def readable():
                seen.append(a.recv(100))
                assert loop.remove_reader(a.fileno())
                loop.stop()

            loop.add_reader(a.fileno(), readable)
            loop.call_later(0.01, b.send, b"ping")
            loop.call_later(TIMEOUT, loop.stop)
            loop.run_forever()
            assert seen == [b"ping"]
            assert not loop.remove_reader(a.fileno())
        finally:
            a.close()
            b.close()

    def test_stream_echo_and_transport_faults(self, loop):
        async def handle(reader, writer):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
            writer.close()

        async def main():
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for i in range(50):
                writer.write(b"x" * i + b"\n")
                assert await reader.readline() == b"x" * i + b"\n"
            writer.close()
            writer.close()  # closing twice is harmless
            await writer.wait_closed()
            writer.write(b"after close")  # ignored, as asyncio does (a warning at most)
            server.close()
            await server.wait_closed()

        self.run(loop, main())

    def test_peer_reset_reaches_the_protocol_and_the_loop_lives(self, loop):
        lost = []

        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def connection_lost(self, exc):
                lost.append(exc)

        async def main():
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            listener.setblocking(False)
            port = listener.getsockname()[1]
            connect = asyncio.ensure_future(loop.create_connection(Proto, "127.0.0.1", port))
            peer, _ = await loop.sock_accept(listener)
            transport, proto = await connect
            # SO_LINGER 0: close sends RST
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            peer.close()
            for _ in range(200):
                transport.write(b"y" * 65536)
                await asyncio.sleep(0.001)
                if lost:
                    break
            listener.close()
            await asyncio.sleep(0.01)

        self.run(loop, main())
        assert lost and (lost[0] is None or isinstance(lost[0], OSError))
        assert self.run(loop, asyncio.sleep(0, result="alive")) == "alive"

    async def connected_pair(self, loop, protocol_factory):
        """A transport of protocol_factory() and the peer's plain non-blocking socket."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        connect = asyncio.ensure_future(
            loop.create_connection(protocol_factory, "127.0.0.1", listener.getsockname()[1]))
        peer, _ = await loop.sock_accept(listener)
        listener.close()
        transport, proto = await connect
        return transport, proto, peer

    async def read_exactly(self, loop, sock, n):
        got = bytearray()
        while len(got) < n:
            chunk = await loop.sock_recv(sock, n - len(got))
            assert chunk, f"peer closed after {len(got)} of {n} bytes"
            got += chunk
        return bytes(got)

    def test_backpressure_pauses_and_resumes_writing_and_loses_nothing(self, loop):
        events = []

        class Proto(asyncio.Protocol):
            def pause_writing(self):
                events.append("pause")

            def resume_writing(self):
                events.append("resume")

        async def main():
            transport, _, peer = await self.connected_pair(loop, Proto)
            transport.set_write_buffer_limits(high=64 * 1024)
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            payload = bytes(range(256)) * 4096 * 4  # 4 MiB, more than the socket buffers take
            transport.write(payload)
            assert events == ["pause"] and transport.get_write_buffer_size() > 0
            transport.write(b"tail")
            got = await self.read_exactly(loop, peer, len(payload) + 4)
            assert got == payload + b"tail"
            for _ in range(100):
                if transport.get_write_buffer_size() == 0:
                    break
                await asyncio.sleep(0.001)
            assert events == ["pause", "resume"]
            transport.close()
            peer.close()

        self.run(loop, main())

    def test_write_rejects_bad_input(self, loop):
        async def main():
            transport, _, peer = await self.connected_pair(loop, asyncio.Protocol)
            with pytest.raises(TypeError, match="bytes-like"):
                transport.write("text")
            transport.write(b"")  # nothing to do
            transport.write(memoryview(b"xacex")[1:4])
            transport.write_eof()
            with pytest.raises(RuntimeError, match="write_eof"):
                transport.write(b"more")
            assert await self.read_exactly(loop, peer, 3) == b"ace"
            assert await loop.sock_recv(peer, 10) == b""  # the EOF
            transport.close()
            transport.close()  # twice is harmless
            peer.close()

        self.run(loop, main())

    def test_data_received_that_raises_reaches_the_handler_and_closes(self, loop):
        errors, lost = [], []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

        class Proto(asyncio.Protocol):
            def data_received(self, data):
                raise ValueError("bad data " + data.decode())

            def connection_lost(self, exc):
                lost.append(exc)

        async def main():
            transport, _, peer = await self.connected_pair(loop, Proto)
            peer.send(b"x")
            assert await loop.sock_recv(peer, 10) == b""  # closed by the transport
            await asyncio.sleep(0)
            peer.close()

        self.run(loop, main())
        assert [str(c["exception"]) for c in errors] == ["bad data x"]
        assert "data_received" in errors[0]["message"]
        assert len(lost) == 1 and isinstance(lost[0], ValueError)

    def test_buffered_protocol_reads_into_its_own_buffer(self, loop):
        class Proto(asyncio.BufferedProtocol):
            def __init__(self):
                self.buf = bytearray(7)
                self.got = bytearray()
                self.eof = loop.create_future()

            def get_buffer(self, sizehint):
                return self.buf

            def buffer_updated(self, nbytes):
                self.got += self.buf[:nbytes]

            def eof_received(self):
                self.eof.set_result(None)

        async def main():
            transport, proto, peer = await self.connected_pair(loop, Proto)
            peer.sendall(b"0123456789" * 100)
            peer.shutdown(socket.SHUT_WR)
            await proto.eof
            assert bytes(proto.got) == b"0123456789" * 100
            transport.close()
            peer.close()

        self.run(loop, main())

    def test_many_connections_leave_no_fds_behind(self, loop):
        async def handle(reader, writer):
            writer.close()

        async def main(n):
            server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
            port = server.sockets[0].getsockname()[1]
            for start in range(0, n, 250):
                conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port)
                                               for _ in range(min(250, n - start))))
                for reader, writer in conns:
                    writer.close()
                await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)
            server.close()
            await server.wait_closed()

        self.run(loop, main(250))  # warm-up: lazily created fds (executor, ...)
        gc.collect()
        before = open_fds()
        self.run(loop, main(10_000))
        gc.collect()
        assert open_fds() <= before + 4


class TestAsyncioLoop(LoopMixin):
    def new_loop(self):
        return asyncio.new_event_loop()


class TestBraidLoop(LoopMixin):
    def new_loop(self):
        return import_braid().Loop()


def test_braid_run_and_install():
    braid = import_braid()

    async def main():
        return type(asyncio.get_running_loop())

    assert braid.run(main()) is braid.Loop
    old = asyncio.get_event_loop_policy()
    try:
        braid.install()
        loop = asyncio.new_event_loop()
        assert isinstance(loop, braid.Loop)
        loop.close()
        assert asyncio.run(main()) is braid.Loop
    finally:
        asyncio.set_event_loop_policy(old)
    loop = braid.new_event_loop()
    assert isinstance(loop, braid.Loop) and isinstance(loop, asyncio.AbstractEventLoop)
    loop.close()


def test_braid_loop_default_executor_is_a_braid_thread_pool():
    braid = import_braid()

    async def main():
        loop = asyncio.get_running_loop()
        name = await loop.run_in_executor(None, lambda: threading.current_thread().name)
        return name, type(loop._default_executor)

    name, executor_type = braid.run(main())
    assert executor_type is braid.ThreadPool
    assert name.startswith("asyncio")


def dicts_made_by(action, obj):
    def dicts():
        return sum(isinstance(r, dict) for r in gc.get_referents(obj))
    before = dicts()
    action()
    return dicts() - before


def test_braid_transports_are_asyncio_transports_in_c():
    # One C object per connection (no per-connection buffers or handles, a __dict__ only once
    # an attribute is set), still an asyncio.Transport for isinstance checks and asyncio's own
    # helpers.
    braid = import_braid()
    from braid import _braid

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        try:
            return (isinstance(transport, asyncio.Transport),
                    type(transport) is _braid.SocketTransport,
                    dicts_made_by(lambda: setattr(transport, "mock", 1), transport) == 1,
                    transport.get_extra_info("peername")[1] == port)
        finally:
            transport.close()
            server.close()
            await server.wait_closed()

    assert braid.run(main()) == (True, True, True, True)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="loop_factory= is new in asyncio.run 3.12")
def test_asyncio_run_with_loop_factory():
    braid = import_braid()

    async def main():
        return type(asyncio.get_running_loop())

    assert asyncio.run(main(), loop_factory=braid.Loop) is braid.Loop


def test_socket_transport_refuses_bad_input_clearly():
    braid = import_braid()
    from braid import _braid

    loop = braid.Loop()
    try:
        loop.run_until_complete(asyncio.sleep(0))  # makes the transport type
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a, b = socket.socketpair()
        try:
            with pytest.raises(ValueError, match="stream socket"):
                _braid.SocketTransport(loop, udp, asyncio.Protocol())
            other = asyncio.new_event_loop()
            try:
                with pytest.raises(TypeError, match="braid.Loop"):
                    _braid.SocketTransport(other, a, asyncio.Protocol())
            finally:
                other.close()
            with pytest.raises(TypeError, match="extra"):
                _braid.SocketTransport(loop, a, asyncio.Protocol(), None, [("peername", 1)])
            assert a.fileno() >= 0  # refused before it took the descriptor
        finally:
            udp.close()
            a.close()
            b.close()
    finally:
        loop.close()


def test_socket_transport_made_then_refused_lets_go_of_its_descriptor_quietly():
    # A failure after the engine took the fd (here: a server without _attach) closes it, with
    # no ResourceWarning for an "unclosed transport" that never existed for the caller.
    import warnings

    braid = import_braid()
    from braid import _braid

    loop = braid.Loop()
    try:
        loop.run_until_complete(asyncio.sleep(0))
        a, b = socket.socketpair()
        fd = a.fileno()
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            with pytest.raises(AttributeError, match="_attach"):
                _braid.SocketTransport(loop, a, asyncio.Protocol(), None, None, object())
            gc.collect()
            loop.run_until_complete(asyncio.sleep(0))  # the engine closes it in its next iteration
        assert a.fileno() == -1
        with pytest.raises(OSError):
            os.fstat(fd)
        b.close()
    finally:
        loop.close()


def test_an_accepted_connection_gets_its_socket_object_on_demand():
    # Accepted in C, a connection has no socket.socket until asked for; then it is the
    # connection's, non-blocking like asyncio's accepted sockets, and it is detached (fileno
    # -1) once the transport has closed.
    braid = import_braid()
    got = {}

    class Server(asyncio.Protocol):
        def connection_made(self, transport):
            got["transport"] = transport
            sock = transport.get_extra_info("socket")
            got["same"] = transport.get_extra_info("socket") is sock
            got["timeout"] = sock.gettimeout()
            got["peer"] = transport.get_extra_info("peername")
            got["raw"] = transport._sock

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.wait_for(_until(lambda: "raw" in got), 10)
        local = writer.get_extra_info("sockname")
        got["transport"].close()
        assert await reader.read() == b""  # the server side closed: the client sees EOF
        writer.close()
        server.close()
        await server.wait_closed()
        return local

    local = braid.run(main())
    assert got["same"] and got["timeout"] == 0.0 and got["peer"] == local
    assert got["raw"].fileno() == -1  # detached: the engine closed the descriptor


async def _until(predicate):
    while not predicate():
        await asyncio.sleep(0.01)
