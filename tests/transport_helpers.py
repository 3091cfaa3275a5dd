"""Shared pieces of the transport tests (test_loop_transports*.py): a loop fixture mixin, a
protocol that records what its transport tells it, and connected pairs of a transport and a
plain socket for the other end.

Waits are bounded by TIMEOUT and wait for a condition, never for a time: a slow machine makes
these tests slower, not wrong.
"""

import asyncio
import os
import socket

import pytest

from pool_helpers import TIMEOUT, import_braid

# SO_LINGER on, 0 seconds: close() sends RST and drops what is queued.
LINGER_0 = b"\x01\x00\x00\x00\x00\x00\x00\x00"


def open_fds():
    return len(os.listdir("/proc/self/fd"))


class LoopFixture:
    """Mixed into each test class; new_loop() says which loop the class runs on."""

    def new_loop(self):
        raise NotImplementedError

    @pytest.fixture
    def loop(self):
        loop = self.new_loop()
        errors = []
        # An exception that reaches the handler fails the test unless the test set its own.
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        yield loop
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        assert not errors, f"unexpected calls to the exception handler: {errors}"

    def run(self, loop, coro):
        return loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))


def asyncio_loop():
    return asyncio.new_event_loop()


def braid_loop():
    return import_braid().Loop()


class Recorder(asyncio.Protocol):
    """Records every callback in order, with the write buffer size where it matters.

    eof_result is what eof_received returns (None/False: the transport closes itself).
    """

    def __init__(self, eof_result=None):
        loop = asyncio.get_running_loop()
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.eof_result = eof_result
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")
        self.made.set_result(transport)

    def data_received(self, data):
        assert type(data) is bytes
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        return self.eof_result

    def pause_writing(self):
        self.events.append(("pause", self.transport.get_write_buffer_size()))

    def resume_writing(self):
        self.events.append(("resume", self.transport.get_write_buffer_size()))

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


async def until(predicate, what="condition"):
    """Lets the loop run until predicate() is true (at most TIMEOUT seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def ticks(n=10):
    """Lets the loop run n iterations (each polls for I/O once)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def tcp_pair(loop, protocol_factory, *, peer_rcvbuf=None, sndbuf=None):
    """(transport, protocol, peer): a client transport of protocol_factory() connected to a
    plain non-blocking socket. peer_rcvbuf and sndbuf shrink the kernel buffers on either
    side, so writes back up into the transport's own buffer sooner."""
    listener = socket.socket()
    if peer_rcvbuf:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, peer_rcvbuf)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    try:
        sock = socket.socket()
        if sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, listener.getsockname())
        peer, _ = await loop.sock_accept(listener)
    finally:
        listener.close()
    transport, protocol = await loop.create_connection(protocol_factory, sock=sock)
    return transport, protocol, peer


async def read_exactly(loop, sock, n):
    got = bytearray()
    while len(got) < n:
        chunk = await loop.sock_recv(sock, min(n - len(got), 1 << 20))
        assert chunk, f"peer closed after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


async def read_to_eof(loop, sock):
    """Everything until EOF, and the error that ended it instead (None at a clean EOF)."""
    got = bytearray()
    while True:
        try:
            chunk = await loop.sock_recv(sock, 1 << 20)
        except OSError as exc:
            return bytes(got), exc
        if not chunk:
            return bytes(got), None
        got += chunk


async def make_room_with_a_callback_ready(make_room, ready):
    """Calls make_room() in one callback and ready() in the next, so the poll between them
    finds the room (a writable fd) with a callback already ready; returns after the callback
    that follows ready() has run."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def first():
        make_room()
        loop.call_soon(second)

    def second():
        ready()
        loop.call_soon(done.set_result, None)

    loop.call_soon(first)
    await done


def read_what_is_there(sock, into):
    """Reads from a non-blocking socket or pipe fd until it would block; the bytes go to into."""
    try:
        while True:
            chunk = sock.recv(1 << 20) if hasattr(sock, "recv") else os.read(sock, 1 << 20)
            if not chunk:
                return
            into.extend(chunk)
    except BlockingIOError:
        pass


def fill_kernel(transport, chunk=4096):
    """Writes chunk bytes at a time until the transport starts buffering (at most chunk
    bytes then): the kernel's buffers are full and every further write is counted in
    get_write_buffer_size(). Returns the bytes written."""
    total = 0
    while transport.get_write_buffer_size() == 0:
        transport.write(b"k" * chunk)
        total += chunk
    return total
