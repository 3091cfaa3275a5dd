"""braid.Loop: an asyncio event loop whose scheduling core is C (src/python/loop.c).

The hot core is C, on braid's reactor (src/core/loop.c): the ready queue, the timers, the
poll and the fd watchers that asyncio's transports use. Transports,
servers, subprocesses, signal handlers and the rest are asyncio's own code running on that
core, through the same internal methods asyncio's selector loop uses (_add_reader, ...).
"""

import asyncio
from asyncio import selector_events, unix_events

from . import _braid

__all__ = ["Loop", "new_event_loop", "install", "run", "EventLoopPolicy"]


class _SocketTransport(_braid._StreamTransportFast, selector_events._SelectorSocketTransport):
    """asyncio's socket transport (TCP and Unix streams) with its per-message paths in C.

    _read_ready and write come from _braid._StreamTransportFast (src/python/transport.c):
    recv() into one reusable buffer and an exact-size bytes object for the protocol, and
    send() at once when nothing is buffered. Everything else -- buffering, backpressure,
    flow control, close/abort, sendfile, BufferedProtocol reads -- is asyncio's code, fed
    by the same attributes.
    """

    _braid_write_slow = selector_events._SelectorSocketTransport.write
    _braid_buffered = False

    def set_protocol(self, protocol):
        super().set_protocol(protocol)
        self._braid_buffered = isinstance(protocol, asyncio.BufferedProtocol)


class Loop(_braid._LoopCore, unix_events._UnixSelectorEventLoop):
    """An ``asyncio`` event loop with braid's C scheduling core."""

    # the C create_task hands what it does not do itself (task factories,
    # debug mode, arguments of newer Pythons) to asyncio's
    _create_task_slow = unix_events._UnixSelectorEventLoop.create_task

    def run_in_executor(self, executor, func, *args):
        if executor is None and self._default_executor is None and not self.is_closed():
            # braid.ThreadPool as the default executor (asyncio would make a
            # ThreadPoolExecutor); set_default_executor() still overrides it
            from ._threadpool import ThreadPool

            self._default_executor = ThreadPool(thread_name_prefix="asyncio")
        return super().run_in_executor(executor, func, *args)

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        return _braid.SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_self_pipe(self):
        super()._make_self_pipe()
        # only signals come through it (call_soon_threadsafe wakes the C core
        # directly), so a busy chain of callbacks need not poll for it each time
        self._set_internal_fd(self._ssock.fileno())

    def _close_self_pipe(self):
        self._set_internal_fd(None)
        super()._close_self_pipe()

    def __init__(self):
        _braid._LoopCore.__init__(self)
        unix_events._UnixSelectorEventLoop.__init__(self)

    def close(self):
        super().close()  # asyncio's part: the self-pipe, signal handlers, the executor
        self._core_close()


def new_event_loop():
    """A new braid.Loop."""
    return Loop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """The default policy, making braid.Loop instances."""

    _loop_factory = Loop


def install():
    """Makes braid.Loop the loop asyncio creates (asyncio.new_event_loop, asyncio.run)."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None):
    """asyncio.run(main) on a braid.Loop."""
    with asyncio.Runner(debug=debug, loop_factory=Loop) as runner:
        return runner.run(main)
