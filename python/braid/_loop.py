"""braid.Loop: an asyncio event loop whose scheduling core is C (src/python/loop.c).

The hot core is C, on braid's reactor (src/core/loop.c): the ready queue, the timers, the
poll and the fd watchers, and the transports: TCP and Unix sockets (src/python/socktransport.c)
and pipes (pipetransport.c) on the engine's streams, datagrams (dgramtransport.c) on its UDP
handles, with plain connections accepted without a task each. Servers' set-up, TLS,
subprocesses, signal handlers and the rest are asyncio's own code running on that core,
through the internal methods asyncio's selector loop uses (_add_reader,
_make_socket_transport, _make_read_pipe_transport, ...).
"""

import asyncio
import functools
import socket
from asyncio import selector_events, unix_events

from . import _braid

__all__ = ["Loop", "new_event_loop", "install", "run", "EventLoopPolicy"]


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
        if not _syscalls_are_socket_s(sock, _STREAM_IO):
            # a socket-like object (a test's mock, a wrapper) or a subclass with I/O methods
            # of its own: only asyncio's transport drives it through its methods; the C
            # transport does the syscalls on the descriptor itself
            return selector_events._SelectorSocketTransport(self, sock, protocol, waiter, extra, server)
        return _braid.SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        if not _syscalls_are_socket_s(sock, _DATAGRAM_IO) or sock.family not in _DATAGRAM_FAMILIES:
            # socket-likes, subclasses with I/O methods of their own, and families whose
            # addresses the C transport does not convert
            return super()._make_datagram_transport(sock, protocol, address, waiter, extra)
        self._ensure_fd_no_transport(sock)
        return _braid.DatagramTransport(self, sock, protocol, address, waiter, extra)

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return _braid.ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return _braid.WritePipeTransport(self, pipe, protocol, waiter, extra)

    def _start_serving(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100, *args):
        # for a plain server, the listening socket's reader is the C accept loop itself, its
        # arguments worked out here once (asyncio's reader is _accept_connection, a Python
        # method that would look at the socket's family, an enum, on every readiness); it
        # hands debug mode and accept errors to asyncio's _accept_connection (`fallback`)
        if (sslcontext is None and not self._debug and _syscalls_are_socket_s(sock, _ACCEPT_IO)
                and type(self)._make_socket_transport is Loop._make_socket_transport
                and type(self)._accept_connection is Loop._accept_connection
                and "_accept_connection" not in vars(self)):
            fallback = functools.partial(selector_events.BaseSelectorEventLoop._accept_connection, self,
                                         protocol_factory, sock, sslcontext, server, backlog, *args)
            fd = sock.fileno()
            self._add_reader(fd, _braid._accept_plain, self, fd, int(sock.family), protocol_factory,
                             server, backlog, fallback)
            return
        super()._start_serving(protocol_factory, sock, sslcontext, server, backlog, *args)

    def _accept_connection(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100, *args):
        # asyncio accepts through socket.accept() and makes a task (a coroutine and a waiter
        # future) per connection, to call the protocol factory and make the transport one
        # iteration later; for a plain connection braid does both in C, in the batch of
        # accepts (src/python/sockaccept.c). TLS, debug mode (asyncio's log lines), a
        # socket-like object that is not a socket, and a subclass with transports of its own
        # take asyncio's way, and so does an accept error
        # (out of descriptors: asyncio reports it, pauses accepting and tries again).
        if (sslcontext is not None or self._debug or not _syscalls_are_socket_s(sock, _ACCEPT_IO)
                or type(self)._make_socket_transport is not Loop._make_socket_transport):
            return super()._accept_connection(protocol_factory, sock, sslcontext, server, backlog, *args)
        try:
            return _braid._accept_plain(self, sock.fileno(), sock.family, protocol_factory, server, backlog)
        except OSError:
            return super()._accept_connection(protocol_factory, sock, sslcontext, server, backlog, *args)

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


_DATAGRAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)

# The socket methods asyncio's transports and accept loop call, which braid's C code replaces
# with its own syscalls on the descriptor: a subclass that overrides one of them is driven
# through its methods, by asyncio's code, as on asyncio's loop
_STREAM_IO = ("recv", "recv_into", "send", "sendmsg", "shutdown", "close", "detach")
_DATAGRAM_IO = ("recvfrom", "recvfrom_into", "sendto", "send", "close", "detach")
_ACCEPT_IO = ("accept", "_accept")


def _syscalls_are_socket_s(sock, names):
    """Whether sock is a socket.socket whose methods `names` are socket.socket's own."""
    cls = type(sock)
    if cls is socket.socket:
        return True
    if not issubclass(cls, socket.socket):
        return False
    return all(getattr(cls, name) is getattr(socket.socket, name) for name in names)


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
