"""More of the transport contract, on asyncio's own loop and on braid.Loop: Unix sockets, read
and write pipes, datagrams, sendfile and its fallback, start_tls on an open connection, EMFILE
on accept, and many connections opened and closed with nothing left behind.

The socket transport's flow control, half-close and faults are in test_loop_transports.py.
"""

import asyncio
import contextvars
import errno
import fcntl
import gc
import io
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import weakref

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from pool_helpers import TIMEOUT  # noqa: E402
from transport_helpers import (LoopFixture, Recorder, asyncio_loop, braid_loop,  # noqa: E402
                               fill_kernel, make_room_with_a_callback_ready, open_fds,
                               read_exactly, read_to_eof, read_what_is_there, tcp_pair, ticks,
                               until)


class DatagramRecorder(asyncio.DatagramProtocol):
    def __init__(self):
        loop = asyncio.get_running_loop()
        self.datagrams = asyncio.Queue()
        self.errors = asyncio.Queue()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.datagrams.put_nowait((data, addr))

    def error_received(self, exc):
        self.errors.put_nowait(exc)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def small_pipe():
    """(read fd, write fd) of a pipe that holds 4 KiB, so a write pipe backs up quickly."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    return r, w


class MoreTransportsMixin(LoopFixture):

    # ---- Unix sockets ---------------------------------------------------------------------

    def test_unix_socket_echo_extra_info_and_half_close(self, loop):
        async def main(path):
            accepted = loop.create_future()

            class Server(Recorder):
                def __init__(self):
                    super().__init__(eof_result=True)
                    accepted.set_result(self)

            server = await loop.create_unix_server(Server, path)
            transport, proto = await loop.create_unix_connection(
                lambda: Recorder(eof_result=True), path)
            srv = await accepted
            await srv.made
            sock = transport.get_extra_info("socket")
            assert sock.family == socket.AF_UNIX
            assert transport.get_extra_info("peername") == path
            assert transport.get_extra_info("sockname") == ""
            assert srv.transport.get_extra_info("sockname") == path
            assert transport.can_write_eof()
            transport.write(b"over unix")
            transport.write_eof()
            await srv.eof
            assert srv.data == b"over unix"
            srv.transport.write(b"answer")  # the other direction is still open
            await until(lambda: proto.data == b"answer", "the answer")
            srv.transport.close()
            await proto.eof
            transport.close()
            assert await proto.lost is None and await srv.lost is None
            server.close()
            await server.wait_closed()

        with tempfile.TemporaryDirectory() as d:
            self.run(loop, main(os.path.join(d, "sock")))

    # ---- pipes ------------------------------------------------------------------------------

    def test_read_pipe_data_pause_and_eof(self, loop):
        async def main():
            r, w = os.pipe()
            pipe = open(r, "rb", buffering=0)
            transport, proto = await loop.connect_read_pipe(Recorder, pipe)
            assert transport.get_extra_info("pipe") is pipe
            os.write(w, b"first")
            await until(lambda: proto.data == b"first", "the first bytes")
            transport.pause_reading()
            assert not transport.is_reading()
            os.write(w, b" second")
            os.close(w)
            await ticks(20)
            assert proto.data == b"first" and proto.events == ["made"]
            transport.resume_reading()
            assert await proto.lost is None
            assert proto.data == b"first second"
            assert proto.events == ["made", "eof", "lost"]
            assert pipe.closed

        self.run(loop, main())

    def test_write_pipe_byte_counts_watermarks_and_flush_on_close(self, loop):
        async def main():
            r, w = small_pipe()
            pipe = open(w, "wb", buffering=0)
            transport, proto = await loop.connect_write_pipe(Recorder, pipe)
            assert transport.get_extra_info("pipe") is pipe and transport.can_write_eof()
            transport.set_write_buffer_limits(high=20_000, low=5_000)
            total = fill_kernel(transport, chunk=1024)
            size = transport.get_write_buffer_size()
            for chunk in (b"a" * 1000, bytearray(b"b" * 10), memoryview(b"c" * 5)):
                transport.write(chunk)
                size += len(chunk)
                total += len(chunk)
                assert transport.get_write_buffer_size() == size
            extra = 20_001 - size
            transport.write(b"d" * extra)  # one byte over the high-water mark
            total += extra
            assert proto.events == ["made", ("pause", 20_001)]
            transport.close()  # flushes what is buffered first
            assert transport.is_closing()
            got = bytearray()
            while True:
                chunk = await loop.run_in_executor(None, os.read, r, 65536)
                if not chunk:
                    break
                got += chunk
            os.close(r)
            assert len(got) == total
            assert got.endswith(b"a" * 1000 + b"b" * 10 + b"c" * 5 + b"d" * extra)
            assert await proto.lost is None
            kind, at = proto.events[2]
            assert kind == "resume" and at <= 5_000
            assert proto.events[3:] == ["lost"]

        self.run(loop, main())

    @pytest.mark.parametrize("buffered", [False, True])
    def test_write_pipe_reader_gone(self, loop, buffered):
        async def main():
            r, w = small_pipe()
            transport, proto = await loop.connect_write_pipe(Recorder, open(w, "wb", 0))
            transport.write(b"read by nobody")
            if buffered:
                fill_kernel(transport, chunk=1024)
            os.close(r)
            exc = await proto.lost
            # asyncio: the reader's end closed with bytes still buffered is a BrokenPipeError
            # for connection_lost, with nothing buffered a clean end; never the handler's
            if buffered:
                assert isinstance(exc, BrokenPipeError)
                assert exc.args == (), exc.args  # the reader trick's own, not a write's EPIPE
            else:
                assert exc is None
            assert transport.is_closing()

        self.run(loop, main())

    def test_write_pipe_write_into_a_closed_reader_is_os_writes_error(self, loop):
        async def main():
            r, w = os.pipe()
            transport, proto = await loop.connect_write_pipe(Recorder, open(w, "wb", 0))
            os.close(r)
            transport.write(b"read by nobody")  # written at once: the write meets EPIPE
            exc = await proto.lost
            assert isinstance(exc, BrokenPipeError)
            assert exc.args == (errno.EPIPE, os.strerror(errno.EPIPE)), exc.args  # os.write's
            assert transport.is_closing()

        self.run(loop, main())

    def test_write_pipe_writes_after_close_warn_from_the_sixth(self, loop, caplog):
        async def main():
            r, w = os.pipe()
            transport, proto = await loop.connect_write_pipe(Recorder, open(w, "wb", 0))
            transport.close()
            await proto.lost
            with caplog.at_level(logging.WARNING, logger="asyncio"):
                for _ in range(7):
                    transport.write(b"late")
            os.close(r)
            return [rec.getMessage() for rec in caplog.records if rec.name == "asyncio"]

        warnings = self.run(loop, main())
        assert warnings == ["pipe closed by peer or os.write(pipe, data) raised exception."] * 2

    def test_write_pipe_abort_drops_the_buffer(self, loop):
        async def main():
            r, w = small_pipe()
            transport, proto = await loop.connect_write_pipe(Recorder, open(w, "wb", 0))
            fill_kernel(transport, chunk=1024)
            transport.abort()
            assert transport.get_write_buffer_size() == 0
            assert await proto.lost is None
            assert len(os.read(r, 65536)) <= 4096  # what the pipe held, no more
            assert os.read(r, 10) == b""
            os.close(r)

        self.run(loop, main())

    def test_pipe_transports_refuse_regular_files(self, loop):
        async def main():
            with tempfile.TemporaryFile() as f:
                with pytest.raises(ValueError, match="Pipe transport is for pipes/sockets only"):
                    await loop.connect_read_pipe(Recorder, f)
                with pytest.raises(ValueError, match="only for pipes, sockets and character devices"):
                    await loop.connect_write_pipe(Recorder, f)
                os.fstat(f.fileno())  # still open: the caller's

        self.run(loop, main())

    def test_pipe_fds_closed_once_each_and_nothing_left_open(self, loop):
        async def main():
            before = open_fds()
            for _ in range(20):
                r, w = os.pipe()
                rpipe, wpipe = open(r, "rb", 0), open(w, "wb", 0)
                rt, rp = await loop.connect_read_pipe(Recorder, rpipe)
                wt, wp = await loop.connect_write_pipe(Recorder, wpipe)
                wt.write(b"through the pipe")
                wt.close()
                assert await wp.lost is None and await rp.lost is None
                assert rp.data == b"through the pipe" and rp.events == ["made", "eof", "lost"]
                assert rpipe.closed and wpipe.closed  # asyncio closes the pipe objects
                assert rt.get_extra_info("pipe") is rpipe
            await ticks(5)
            assert open_fds() == before

        self.run(loop, main())

    def test_write_pipe_on_a_socket_closes_when_the_peer_sends_or_closes(self, loop):
        # asyncio's reader trick: any readiness to read on a write pipe's socket ends it
        async def main():
            a, b = socket.socketpair()
            transport, proto = await loop.connect_write_pipe(Recorder, a)
            transport.write(b"to b")
            assert b.recv(10) == b"to b"
            b.send(b"unexpected")
            assert await proto.lost is None
            assert transport.is_closing()
            b.close()

        self.run(loop, main())

    def test_read_pipe_data_comes_after_the_callbacks_already_ready(self, loop):
        order = []

        class Noting(Recorder):
            def data_received(self, data):
                super().data_received(data)
                order.append(data)

        async def main():
            r, w = os.pipe()
            transport, proto = await loop.connect_read_pipe(Noting, open(r, "rb", 0))
            os.write(w, b"first")
            time.sleep(0.05)
            loop.call_soon(order.append, "ready before the poll")
            await until(lambda: len(order) == 2, "the data")
            assert order == ["ready before the poll", b"first"]
            os.write(w, b"held")
            time.sleep(0.05)
            loop.call_soon(transport.pause_reading)
            await ticks(5)
            assert order == ["ready before the poll", b"first"]
            transport.resume_reading()
            await until(lambda: len(order) == 3, "the held data")
            os.close(w)
            assert await proto.lost is None

        self.run(loop, main())

    def test_read_pipe_data_received_that_raises_is_reported_and_reading_goes_on(self, loop):
        class Raising(Recorder):
            def data_received(self, data):
                if data == b"boom":
                    raise ValueError("in data_received")
                super().data_received(data)

        async def main():
            r, w = os.pipe()
            transport, proto = await loop.connect_read_pipe(Raising, open(r, "rb", 0))
            os.write(w, b"boom")
            await until(lambda: contexts, "the report")
            os.write(w, b"after")
            await until(lambda: proto.data == b"after", "the next read")
            assert not transport.is_closing()
            os.close(w)
            assert await proto.lost is None

        contexts = []
        loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
        self.run(loop, main())
        assert len(contexts) == 1
        assert isinstance(contexts[0]["exception"], ValueError)
        assert contexts[0]["message"].startswith("Exception in callback")

    def test_subprocess_pipes_carry_a_megabyte_each_way(self, loop):
        async def main():
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c",
                "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1]); "
                "sys.stderr.write(str(len(d)))",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            data = bytes(range(256)) * 4096
            out, err = await proc.communicate(data)
            assert out == data[::-1] and err == str(len(data)).encode() and proc.returncode == 0

        self.run(loop, main())

    def test_write_pipe_resumes_writing_only_once_its_buffer_is_empty(self, loop):
        # asyncio's pipe resumes the protocol after a whole write, not at the low mark
        async def main():
            r, w = small_pipe()
            transport, proto = await loop.connect_write_pipe(Recorder, open(w, "wb", 0))
            transport.write(b"a" * 200_000)
            got = 0
            while got < 200_000:
                await asyncio.sleep(0)
                got += len(await loop.run_in_executor(None, os.read, r, 4096))
            await until(lambda: len(proto.events) >= 3, "the resume")
            assert proto.events[1][0] == "pause" and proto.events[2] == ("resume", 0)
            transport.set_write_buffer_limits(high=1)  # raising or lowering: no resume
            transport.close()
            assert await proto.lost is None
            os.close(r)

        self.run(loop, main())

    def test_write_pipe_flush_comes_after_the_callbacks_already_ready(self, loop):
        # as a socket's: the writer handle runs behind the callbacks ready before the poll
        async def main():
            r, w = os.pipe()  # 64 KiB: the first write fits whole, the second is queued
            os.set_blocking(r, False)
            transport, proto = await loop.connect_write_pipe(Recorder, open(w, "wb", 0))
            transport.set_write_buffer_limits(high=1000)
            transport.write(b"a" * 65536)
            transport.write(b"b" * 2000)
            assert proto.events[-1] == ("pause", 2000)
            received = bytearray()

            def ready():
                proto.events.append("ready before the poll")
                transport.write(b"joins")

            await make_room_with_a_callback_ready(lambda: read_what_is_there(r, received),
                                                  ready)
            assert proto.events[1:] == [("pause", 2000), "ready before the poll", ("resume", 0)]

            del proto.events[:]
            read_what_is_there(r, received)
            transport.write(b"c" * 65536)
            transport.write(b"d" * 2000)
            transport.close()
            await make_room_with_a_callback_ready(lambda: read_what_is_there(r, received),
                                                  lambda: proto.events.append("ready"))
            assert await proto.lost is None
            assert proto.events.index("ready") < proto.events.index("lost")
            read_what_is_there(r, received)
            assert received == b"a" * 65536 + b"b" * 2000 + b"joins" + b"c" * 65536 + b"d" * 2000
            os.close(r)

        self.run(loop, main())

    def test_keyboard_interrupt_from_a_read_that_waited_behind_ready_callbacks(self, loop):
        # the read runs from the ready queue (a callback was ready before the poll): the
        # interrupt leaves this run_forever, not a later one
        events = []

        class Interrupting(asyncio.Protocol):
            def data_received(self, data):
                events.append(data)
                raise KeyboardInterrupt

        a, b = socket.socketpair()

        async def connect():
            transport, _ = await loop.create_connection(Interrupting, sock=a)
            return transport

        transport = loop.run_until_complete(connect())

        def first():
            b.send(b"x")
            loop.call_soon(stop)

        def stop():
            events.append("stop")
            loop.stop()

        loop.call_soon(first)
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        assert events == ["stop", b"x"]
        loop.run_until_complete(asyncio.sleep(0.01))  # a later run is not interrupted
        transport.close()
        loop.run_until_complete(asyncio.sleep(0))
        b.close()

    def test_what_a_read_schedules_runs_after_the_timers_due_with_it(self, loop):
        # asyncio: the reader handle runs in the ready phase with the timers due in that
        # iteration queued behind it; what data_received (or EOF) schedules comes after them
        events = []

        class Scheduling(Recorder):
            def data_received(self, data):
                events.append(data)
                loop.call_soon(events.append, "scheduled by data_received")

            def eof_received(self):
                events.append("eof")

        async def main():
            r, w = os.pipe()
            transport, proto = await loop.connect_read_pipe(Scheduling, open(r, "rb", 0))
            await asyncio.sleep(0.01)

            def due_and_readable(what):
                loop.call_later(0.01, events.append, "timer")
                what()
                time.sleep(0.03)  # the timer is due and the pipe readable at the next poll

            loop.call_soon(due_and_readable, lambda: os.write(w, b"x"))
            await until(lambda: len(events) == 3, "the read, the timer and the callback")
            assert events == [b"x", "timer", "scheduled by data_received"]
            loop.call_soon(due_and_readable, lambda: os.close(w))
            assert await proto.lost is None
            assert events[3:] == ["timer", "eof"]

        self.run(loop, main())

    def test_protocol_callbacks_see_the_context_their_transport_was_made_in(self, loop):
        # asyncio's reader handles carry a copy of the context current when the transport was
        # made: a ContextVar set before create_server / connect_read_pipe /
        # create_datagram_endpoint is what data_received & co. see, and what tasks they
        # create copy
        var = contextvars.ContextVar("var", default="unset")
        seen = []

        class Seeing(Recorder):
            def data_received(self, data):
                super().data_received(data)
                seen.append(("data", var.get()))
                var.set("changed in data_received")  # in the transport's own copy

        class SeeingDatagrams(DatagramRecorder):
            def datagram_received(self, data, addr):
                seen.append(("datagram", var.get()))
                super().datagram_received(data, addr)

        async def main():
            var.set("set before")
            server = await loop.create_server(Seeing, "127.0.0.1", 0)
            r, w = os.pipe()
            ptransport, pproto = await loop.connect_read_pipe(Seeing, open(r, "rb", 0))
            dtransport, dproto = await loop.create_datagram_endpoint(
                SeeingDatagrams, local_addr=("127.0.0.1", 0))
            var.set("changed after")
            client = socket.create_connection(server.sockets[0].getsockname())
            client.sendall(b"over tcp")
            os.write(w, b"over a pipe")
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.sendto(b"datagram", dtransport.get_extra_info("sockname"))
            await until(lambda: len(seen) == 3, "the three callbacks")
            assert sorted(seen) == [("data", "set before"), ("data", "set before"),
                                    ("datagram", "set before")]
            assert var.get() == "changed after"
            client.close()
            sender.close()
            os.close(w)
            await pproto.lost
            dtransport.close()
            server.close()
            await server.wait_closed()

        self.run(loop, main())

    def test_after_resume_reading_reads_run_in_the_resumer_s_context(self, loop):
        # resume_reading() makes asyncio's new reader handle, which copies the context of
        # the code that resumed: a StreamReader resumed by its handler's read() then feeds
        # data_received in the handler's context, not the transport's first one
        var = contextvars.ContextVar("var", default="unset")
        seen = []

        class Seeing(Recorder):
            def data_received(self, data):
                super().data_received(data)
                seen.append(var.get())

        async def main():
            var.set("made")
            a, peer = socket.socketpair()
            stransport, _ = await loop.create_unix_connection(Seeing, sock=a)
            r, w = os.pipe()
            ptransport, pproto = await loop.connect_read_pipe(Seeing, open(r, "rb", 0))
            peer.send(b"1")
            os.write(w, b"1")
            await until(lambda: len(seen) == 2, "the first reads")

            async def resumer():
                var.set("resumer")
                stransport.pause_reading()
                ptransport.pause_reading()
                await ticks(2)
                stransport.resume_reading()
                ptransport.resume_reading()
                var.set("after resuming")  # the reader's context is a copy: not seen

            await loop.create_task(resumer())
            peer.send(b"2")
            os.write(w, b"2")
            await until(lambda: len(seen) == 4, "the reads after resuming")
            assert seen == ["made", "made", "resumer", "resumer"]
            stransport.close()
            peer.close()
            os.close(w)
            await pproto.lost

        self.run(loop, main())

    def test_a_socket_subclass_s_own_io_methods_are_called(self, loop):
        # asyncio's transports read and write through the socket object's methods: a
        # subclass that overrides them (websockets' tests count calls this way) sees them
        # called; one that overrides none of them changes nothing
        calls = []

        class Tracked(socket.socket):
            def recv(self, *args):
                calls.append("recv")
                return super().recv(*args)

            def recv_into(self, *args):
                calls.append("recv_into")
                return super().recv_into(*args)

            def send(self, *args):
                calls.append("send")
                return super().send(*args)

            def recvfrom(self, *args):
                calls.append("recvfrom")
                return super().recvfrom(*args)

            def sendto(self, *args):
                calls.append("sendto")
                return super().sendto(*args)

        class Named(socket.socket):
            pass  # no I/O method of its own

        async def main():
            a, peer = socket.socketpair()
            tracked = Tracked(a.family, a.type, fileno=a.detach())
            transport, proto = await loop.create_unix_connection(Recorder, sock=tracked)
            transport.write(b"out")
            assert await loop.sock_recv(peer, 10) == b"out"
            peer.send(b"in")
            await until(lambda: proto.data == b"in", "the data")

            d = Tracked(socket.AF_INET, socket.SOCK_DGRAM)
            d.bind(("127.0.0.1", 0))
            dgram, dproto = await loop.create_datagram_endpoint(DatagramRecorder, sock=d)
            receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receiver.bind(("127.0.0.1", 0))
            dgram.sendto(b"datagram", receiver.getsockname())
            assert receiver.recv(100) == b"datagram"
            receiver.sendto(b"back", d.getsockname())
            assert (await dproto.datagrams.get())[0] == b"back"
            assert {"send", "sendto", "recvfrom"} <= set(calls)
            assert calls.count("recv") + calls.count("recv_into") >= 1

            b, peer2 = socket.socketpair()
            named = Named(b.family, b.type, fileno=b.detach())
            t2, p2 = await loop.create_unix_connection(Recorder, sock=named)
            peer2.send(b"plain")
            await until(lambda: p2.data == b"plain", "the data")
            if self.loop_name == "braid":
                assert type(t2).__module__ == "braid._braid"  # still the C transport
                assert type(transport).__module__ != "braid._braid"
            for t in (transport, dgram, t2):
                t.close()
            for s in (peer, peer2, receiver):
                s.close()
            await ticks()

        self.run(loop, main())

    def test_get_extra_info_is_asyncio_s_and_can_be_patched(self, loop):
        # every transport's get_extra_info is BaseTransport's, reading _extra: a patch of it
        # (websockets' tests patch it to fake addresses) reaches socket, datagram and pipe
        # transports alike, and _extra holds what asyncio's does
        from unittest import mock

        async def main():
            a, peer = socket.socketpair()
            stream, _ = await loop.create_unix_connection(Recorder, sock=a)
            dgram, _ = await loop.create_datagram_endpoint(DatagramRecorder,
                                                           local_addr=("127.0.0.1", 0))
            r, w = os.pipe()
            rpipe, _ = await loop.connect_read_pipe(Recorder, open(r, "rb", 0))
            transports = (stream, dgram, rpipe)
            for t in transports:
                assert type(t).get_extra_info is asyncio.BaseTransport.get_extra_info
            assert stream.get_extra_info("peername") == a.getpeername()
            assert set(stream._extra) >= {"socket", "sockname", "peername"}
            assert dgram.get_extra_info("sockname")[0] == "127.0.0.1"
            with mock.patch.object(asyncio.BaseTransport, "get_extra_info",
                                   return_value=("fake", 1)):
                assert [t.get_extra_info("sockname") for t in transports] == [("fake", 1)] * 3
            assert stream.get_extra_info("nothing", "default") == "default"
            for t in transports:
                t.close()
            peer.close()
            os.close(w)
            await ticks()

        self.run(loop, main())

    def test_transports_take_attributes_as_asyncio_s_do(self, loop):
        # aiohttp's and CPython's tests replace a transport's methods with mocks; a cycle
        # through such an attribute is still collected
        from unittest import mock

        async def main():
            a, peer = socket.socketpair()
            stream, sproto = await loop.create_unix_connection(Recorder, sock=a)
            dgram, dproto = await loop.create_datagram_endpoint(DatagramRecorder,
                                                                local_addr=("127.0.0.1", 0))
            with mock.patch.object(stream, "write") as write, \
                    mock.patch.object(dgram, "sendto") as sendto:
                stream.write(b"to the mock")
                dgram.sendto(b"to the mock", ("127.0.0.1", 9))
            write.assert_called_once_with(b"to the mock")
            sendto.assert_called_once_with(b"to the mock", ("127.0.0.1", 9))
            assert "write" not in vars(stream) and "sendto" not in vars(dgram)
            stream.write(b"real")
            assert await loop.sock_recv(peer, 100) == b"real"  # the mock's writes went nowhere

            refs = []
            for transport in (stream, dgram):
                transport.itself = transport
                refs.append(weakref.ref(transport))
                transport.close()
            del transport, stream, dgram, sproto, dproto
            await ticks(5)
            gc.collect()
            assert [r() for r in refs] == [None, None]
            peer.close()

        self.run(loop, main())

    def test_a_flush_behind_ready_callbacks_runs_in_the_transport_context(self, loop):
        # asyncio's writer handle carries the context of the write() that queued (its
        # _add_writer copies it), not the one the transport was made in: resume_writing and
        # connection_lost see it, even when the poll put the flush behind other callbacks
        var = contextvars.ContextVar("var", default="unset")

        class Seeing(Recorder):
            def resume_writing(self):
                super().resume_writing()
                self.events.append(("resume sees", var.get()))

            def connection_lost(self, exc):
                self.events.append(("lost sees", var.get()))
                super().connection_lost(exc)

        async def drain_behind_a_ready_callback(transport, proto, fd_or_sock):
            received = bytearray()
            var.set("writer")
            while "pause" not in [e if isinstance(e, str) else e[0] for e in proto.events]:
                transport.write(b"x" * 65536)
            while not any(type(e) is tuple and e[0] == "resume sees" for e in proto.events):
                await make_room_with_a_callback_ready(
                    lambda: read_what_is_there(fd_or_sock, received), lambda: None)
            transport.write(b"y" * 65536 * 4)
            transport.close()
            await make_room_with_a_callback_ready(
                lambda: read_what_is_there(fd_or_sock, received), lambda: None)
            while not proto.lost.done():
                read_what_is_there(fd_or_sock, received)
                await asyncio.sleep(0)
            seen = [e for e in proto.events if type(e) is tuple and e[0].endswith("sees")]
            return {kind for kind, _ in seen}, {value for _, value in seen}

        async def main():
            var.set("creator")
            a, peer = socket.socketpair()
            peer.setblocking(False)
            transport, proto = await loop.create_unix_connection(Seeing, sock=a)
            assert await drain_behind_a_ready_callback(transport, proto, peer) == (
                {"resume sees", "lost sees"}, {"writer"})
            peer.close()

            r, w = os.pipe()
            os.set_blocking(r, False)
            transport, proto = await loop.connect_write_pipe(Seeing, open(w, "wb", 0))
            assert await drain_behind_a_ready_callback(transport, proto, r) == (
                {"resume sees", "lost sees"}, {"writer"})
            os.close(r)

        self.run(loop, main())

    def test_an_exception_from_connection_lost_after_a_drained_close_is_reported(self, loop):
        # close() with a queue: connection_lost comes once it has gone, from the flush; what it
        # raises reaches the loop's exception handler on both loops
        errors = []

        class Raising(Recorder):
            def connection_lost(self, exc):
                super().connection_lost(exc)
                raise ValueError("boom in connection_lost")

        async def main():
            loop.set_exception_handler(lambda _, context: errors.append(context.get("exception")))
            a, peer = socket.socketpair()
            peer.setblocking(False)
            transport, proto = await loop.create_unix_connection(Raising, sock=a)
            fill_kernel(transport)
            transport.close()
            received = bytearray()
            while not proto.lost.done():
                read_what_is_there(peer, received)
                await asyncio.sleep(0)
            await until(lambda: errors, "the exception handler")
            assert [type(e) for e in errors] == [ValueError]
            assert str(errors[0]) == "boom in connection_lost"
            peer.close()

        self.run(loop, main())

    # ---- datagrams -------------------------------------------------------------------------

    def test_datagram_round_trip_extra_info_and_boundaries(self, loop):
        async def main():
            server, sproto = await loop.create_datagram_endpoint(
                DatagramRecorder, local_addr=("127.0.0.1", 0))
            saddr = server.get_extra_info("sockname")
            client, cproto = await loop.create_datagram_endpoint(
                DatagramRecorder, remote_addr=saddr)
            caddr = client.get_extra_info("sockname")
            assert client.get_extra_info("peername") == saddr
            assert server.get_extra_info("peername") is None
            sock = client.get_extra_info("socket")
            assert sock.family == socket.AF_INET and sock.type == socket.SOCK_DGRAM
            for msg in (b"a", b"bb" * 1000, bytearray(b"ccc"), memoryview(b"x" * 60_000)):
                client.sendto(msg)
            for want in (b"a", b"bb" * 1000, b"ccc", b"x" * 60_000):
                assert await sproto.datagrams.get() == (want, caddr)
            server.sendto(b"pong", caddr)
            assert await cproto.datagrams.get() == (b"pong", saddr)
            client.sendto(b"to the same address", saddr)  # allowed: it is the peer
            assert (await sproto.datagrams.get())[0] == b"to the same address"
            with pytest.raises(ValueError):
                client.sendto(b"elsewhere", ("127.0.0.1", 9))
            with pytest.raises(TypeError) as info:
                client.sendto("text")
            assert str(info.value) == "data argument must be a bytes-like object, not 'str'"
            assert client.get_write_buffer_size() == 0
            client.close()
            server.abort()
            assert await cproto.lost is None and await sproto.lost is None
            assert client.is_closing() and server.is_closing()

        self.run(loop, main())

    def test_datagram_error_received_and_the_transport_lives(self, loop):
        async def main():
            closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            closed.bind(("127.0.0.1", 0))
            nobody = closed.getsockname()
            closed.close()  # nothing listens there now: the kernel answers ICMP unreachable
            transport, proto = await loop.create_datagram_endpoint(
                DatagramRecorder, remote_addr=nobody)
            transport.sendto(b"anyone?")
            exc = await proto.errors.get()
            assert isinstance(exc, ConnectionRefusedError)
            assert not transport.is_closing() and not proto.lost.done()
            transport.sendto(b"again?")  # still usable; the error comes again
            assert isinstance(await proto.errors.get(), ConnectionRefusedError)
            transport.close()
            assert await proto.lost is None

        self.run(loop, main())

    def test_datagram_writes_after_close_warn_from_the_fifth(self, loop, caplog):
        async def main():
            server, _ = await loop.create_datagram_endpoint(
                DatagramRecorder, local_addr=("127.0.0.1", 0))
            client, cproto = await loop.create_datagram_endpoint(
                DatagramRecorder, remote_addr=server.get_extra_info("sockname"))
            client.close()
            await cproto.lost
            with caplog.at_level(logging.WARNING, logger="asyncio"):
                for _ in range(7):
                    client.sendto(b"late")
            server.close()
            return [rec.getMessage() for rec in caplog.records if rec.name == "asyncio"]

        assert self.run(loop, main()) == ["socket.send() raised exception."] * 3

    # ---- sendfile ---------------------------------------------------------------------------

    def test_sendfile_native_offset_count_and_no_writes_meanwhile(self, loop):
        data = bytes(range(256)) * 4096  # 1 MiB

        async def main(f):
            transport, proto, peer = await tcp_pair(loop, Recorder, peer_rcvbuf=4096,
                                                    sndbuf=4096)
            head = fill_kernel(transport)
            task = loop.create_task(loop.sendfile(transport, f, offset=10, count=500_000))
            await ticks()
            assert not task.done()
            with pytest.raises(RuntimeError, match="sendfile is in progress"):
                transport.write(b"in the middle")
            got = await read_exactly(loop, peer, head + 500_000)
            assert await task == 500_000
            assert got[head:] == data[10:500_010]
            assert transport.is_reading()  # sendfile paused reading and resumed it
            transport.write(b"after")  # writable again
            assert await read_exactly(loop, peer, 5) == b"after"
            assert f.tell() == 500_010  # the file position ends after what was sent
            transport.close()
            peer.close()

        with tempfile.TemporaryFile() as f:
            f.write(data)
            f.seek(0)
            self.run(loop, main(f))

    def test_sendfile_fallback_for_what_is_not_a_regular_file(self, loop):
        async def main():
            transport, proto, peer = await tcp_pair(loop, Recorder)
            buf = io.BytesIO(b"not a file" * 1000)
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await loop.sendfile(transport, buf, fallback=False)
            assert await loop.sendfile(transport, buf, offset=4) == 9996
            assert await read_exactly(loop, peer, 9996) == (b"not a file" * 1000)[4:]
            with tempfile.TemporaryFile("w+") as text:
                with pytest.raises(ValueError, match="binary mode"):
                    await loop.sendfile(transport, text)
            transport.close()
            peer.close()

        self.run(loop, main())

    # ---- TLS on an open connection -------------------------------------------------------------

    async def start_tls_pair(self, loop, server_cls=Recorder):
        """Both ends of a plain connection upgraded with start_tls, the server's on a
        protocol of server_cls: (server, plain, client TLS transport, client protocol, server
        TLS transport)."""
        from test.test_asyncio import utils as cpython_test_utils

        server_ctx = cpython_test_utils.simple_server_sslcontext()
        client_ctx = cpython_test_utils.simple_client_sslcontext()
        upgraded = loop.create_future()

        class Server(server_cls):
            def data_received(self, data):
                if self.transport.get_extra_info("ssl_object") is not None:
                    return super().data_received(data)
                self.data += data
                if self.data == b"STARTTLS\n":
                    self.data.clear()
                    loop.create_task(self.upgrade())

            async def upgrade(self):
                plain = self.transport
                plain.write(b"GO\n")  # start_tls stops reading before the peer can answer
                tls = await loop.start_tls(plain, self, server_ctx, server_side=True)
                self.transport = tls
                upgraded.set_result(tls)

        server = await loop.create_server(Server, "127.0.0.1", 0)
        plain, proto = await loop.create_connection(Recorder, *server.sockets[0].getsockname())
        plain.write(b"STARTTLS\n")
        await until(lambda: proto.data == b"GO\n", "GO")
        proto.data.clear()
        tls = await loop.start_tls(plain, proto, client_ctx)
        assert tls.get_extra_info("sslcontext") is client_ctx
        return server, plain, tls, proto, await upgraded

    def test_start_tls_upgrades_a_protocol_connection(self, loop):
        async def main():
            server, plain, tls, proto, srv_tls = await self.start_tls_pair(loop)
            assert plain.get_protocol() is not proto  # TLS sits between them now
            assert tls.get_extra_info("ssl_object") is not None
            assert tls.get_extra_info("cipher") is not None
            assert tls.get_extra_info("peername") == plain.get_extra_info("peername")
            tls.write(b"secret " * 10_000)
            srv = srv_tls.get_protocol()
            await until(lambda: len(srv.data) == 70_000, "the secret")
            srv_tls.write(b"received")
            await until(lambda: proto.data == b"received", "the answer")
            tls.close()
            assert await proto.lost is None
            await srv.lost
            server.close()
            await server.wait_closed()

        self.run(loop, main())

    def test_start_tls_abort_closes_the_connection_under_it(self, loop):
        # asyncio 3.13's TLS transport aborts through the plain transport's _force_close
        async def main():
            server, plain, tls, proto, srv_tls = await self.start_tls_pair(loop)
            tls.write(b"never flushed " * 100_000)
            tls.abort()
            assert tls.is_closing()
            assert await proto.lost is None
            assert plain.is_closing()
            await srv_tls.get_protocol().lost  # the server sees the connection go
            server.close()
            await server.wait_closed()

        self.run(loop, main())

    def test_a_failing_protocol_under_tls_is_reported_and_its_connection_closed(self, loop):
        # asyncio's TLS layer reports the error and forces the plain transport shut
        # (_force_close) on every version
        reported = []
        loop.set_exception_handler(lambda lp, ctx: reported.append(ctx))

        class Failing(Recorder):
            def data_received(self, data):
                if self.transport.get_extra_info("ssl_object") is not None:
                    raise ZeroDivisionError("in data_received")
                return super().data_received(data)

        async def main():
            server, plain, tls, proto, srv_tls = await self.start_tls_pair(loop, Failing)
            tls.write(b"boom")
            srv = srv_tls.get_protocol()
            exc = await srv.lost
            assert isinstance(exc, ZeroDivisionError), exc
            assert await proto.lost is None or isinstance(await proto.lost, ConnectionError)
            server.close()
            await server.wait_closed()

        self.run(loop, main())
        assert [type(ctx.get("exception")) for ctx in reported] == [ZeroDivisionError], reported

    # ---- limits ----------------------------------------------------------------------------

    def test_emfile_on_accept_and_the_server_keeps_serving(self, loop):
        def read_all(sock):
            got = b""
            while chunk := sock.recv(10):
                got += chunk
            return got

        n, slack = 12, 5
        child = subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(__file__), "emfile_server.py"),
             self.loop_name, str(n), str(slack)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        conns = []
        try:
            port = int(child.stdout.readline())
            for _ in range(n):
                c = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
                c.sendall(b"x")
                conns.append(c)
            child.stdin.write("go\n")
            child.stdin.flush()
            # every connection is served, those past the limit after asyncio's retry delay
            replies = [read_all(c) for c in conns]
            out = json.loads(child.stdout.readline())
            assert child.wait(timeout=TIMEOUT) == 0
        finally:
            for c in conns:
                c.close()
            if child.poll() is None:
                child.kill()
                child.wait()
        assert replies == [b"ok"] * n
        assert out["served"] == n
        assert out["handled"], "accept() never ran out of descriptors"
        assert all(h == ["socket.accept() out of system resource", errno.EMFILE]
                   for h in out["handled"]), out["handled"]

    def test_a_loop_dropped_unclosed_with_its_transports_open_is_collected(self, loop):
        # asyncio's selector holds its transports' reader and writer handles: a loop dropped
        # without close() while transports read, hold queued writes or wait to flush before
        # closing is one garbage cycle; its __del__ closes it, and the fds go with it
        import warnings

        def drop_one():
            dropped = self.new_loop()
            a, peer = socket.socketpair()
            b, peer2 = socket.socketpair()
            c, peer3 = socket.socketpair()
            r, w = small_pipe()

            async def main():
                reading, _ = await dropped.create_unix_connection(Recorder, sock=a)
                queued, _ = await dropped.create_unix_connection(Recorder, sock=b)
                closing, _ = await dropped.create_unix_connection(Recorder, sock=c)
                queued.write(b"q" * 4_000_000)
                closing.write(b"c" * 1_000_000)
                closing.close()
                dgram, _ = await dropped.create_datagram_endpoint(DatagramRecorder,
                                                                  local_addr=("127.0.0.1", 0))
                rpipe, _ = await dropped.connect_read_pipe(Recorder, open(r, "rb", 0))
                wpipe, _ = await dropped.connect_write_pipe(Recorder, open(w, "wb", 0))
                wpipe.write(b"p" * 100_000)
                assert queued.get_write_buffer_size() > 0 and wpipe.get_write_buffer_size() > 0
                return [weakref.ref(t) for t in (reading, queued, closing, dgram, rpipe, wpipe)]

            refs = dropped.run_until_complete(main())
            return weakref.ref(dropped), refs, (peer, peer2, peer3)

        gc.collect()
        before = open_fds()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            loop_ref, refs, peers = drop_one()
            gc.collect()
            gc.collect()
        assert loop_ref() is None, "the dropped loop was not collected"
        assert [r() for r in refs] == [None] * len(refs)
        for peer in peers:
            peer.close()
        assert open_fds() == before

    def test_10k_connections_leave_no_fd_task_transport_or_memory(self, loop):
        live = weakref.WeakSet()

        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
                live.add(self)
                live.add(transport)

            def data_received(self, data):
                self.transport.write(data)

        async def batch(port, k):
            conns = await asyncio.gather(*(loop.create_connection(
                lambda: Recorder(), "127.0.0.1", port) for _ in range(k)))
            for transport, proto in conns:
                live.add(transport)
                transport.write(b"!")
            for transport, proto in conns:
                await until(lambda: proto.data == b"!", "the echo")
                transport.close()
            for transport, proto in conns:
                assert await proto.lost is None

        async def main(n):
            server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=512)
            port = server.sockets[0].getsockname()[1]
            for start in range(0, n, 250):
                await batch(port, min(250, n - start))
            server.close()
            await server.wait_closed()
            await until(lambda: not any(isinstance(x, Echo) and not x.transport.is_closing()
                                        for x in list(live)), "the server side to close")
            await ticks()

        self.run(loop, main(500))  # warm-up: what the loop creates once (executor, caches)
        gc.collect()
        fds, tasks, blocks = open_fds(), len(asyncio.all_tasks(loop)), sys.getallocatedblocks()
        self.run(loop, main(10_000))
        gc.collect()
        assert open_fds() == fds
        assert len(asyncio.all_tasks(loop)) == tasks
        assert len(live) == 0, f"{len(live)} transports or protocols still alive"
        # 10,000 connections that each left one object behind would be 10,000 blocks
        assert sys.getallocatedblocks() - blocks < 2_000


class TestAsyncioMoreTransports(MoreTransportsMixin):
    new_loop = staticmethod(asyncio_loop)
    loop_name = "asyncio"


class TestBraidMoreTransports(MoreTransportsMixin):
    new_loop = staticmethod(braid_loop)
    loop_name = "braid"


def test_braid_pipe_transports_are_c_objects_with_asyncio_bases():
    async def main():
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        rt, _ = await loop.connect_read_pipe(Recorder, open(r, "rb", 0))
        wt, _ = await loop.connect_write_pipe(Recorder, open(w, "wb", 0))
        assert type(rt).__module__ == "braid._braid" and type(wt).__module__ == "braid._braid"
        assert isinstance(rt, asyncio.ReadTransport) and not isinstance(rt, asyncio.WriteTransport)
        assert isinstance(wt, asyncio.WriteTransport)
        assert weakref.ref(rt)() is rt
        rt.pause_reading = lambda: None  # attributes, as on asyncio's (its tests set mocks)
        assert rt.__dict__ == {"pause_reading": rt.pause_reading}
        del rt.pause_reading
        with pytest.raises(TypeError, match="bytes-like"):
            wt.write("text")
        wt.close()
        rt.close()
        await ticks(3)

    loop = braid_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_braid_pipe_transport_dropped_with_its_pipe_unset_closes_its_stream():
    # _pipe = None (CPython's tests do it) on a paused transport, then dropped: its stream
    # still closes (no engine handle left pointing at freed memory, no fd left open)
    loop = braid_loop()
    try:
        before = open_fds()
        r, w = os.pipe()
        pipe = open(r, "rb", 0)

        async def connect():
            transport, _ = await loop.connect_read_pipe(asyncio.Protocol, pipe)
            return transport

        transport = loop.run_until_complete(connect())
        transport.pause_reading()
        transport._pipe = None
        del transport
        gc.collect()
        junk = [bytearray(300) for _ in range(2000)]  # reuses the freed memory, if any
        loop.run_until_complete(asyncio.sleep(0.01))
        pipe.close()
        os.close(w)
        assert open_fds() == before
        del junk
    finally:
        loop.close()


def test_braid_c_accept_refuses_what_is_not_an_open_braid_loop():
    from braid import _braid

    with pytest.raises(TypeError, match="braid.Loop"):
        _braid._accept_plain(object(), 3, socket.AF_INET, asyncio.Protocol, None, 1)
    loop = braid_loop()
    loop.close()
    with pytest.raises(RuntimeError):
        _braid._accept_plain(loop, 3, socket.AF_INET, asyncio.Protocol, None, 1)


def _accept_queue_length(sock):
    # TCP_INFO of a listening socket: tcpi_unacked (offset 24) is its accept queue's length
    return struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), 24)[0]


def _connections_made_per_iteration(backlog, queued, unix_path=None):
    """A braid.Loop server's listening socket with `queued` connections waiting in the
    kernel's accept queue before the loop runs: how many connection_made calls each loop
    iteration saw, in order (iterations counted by a callback that reschedules itself)."""
    loop = braid_loop()
    made = []
    iteration = [0]

    class Counted(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(iteration[0])

    def tick():
        iteration[0] += 1
        if len(made) < queued:
            loop.call_soon(tick)

    clients = []
    try:
        if unix_path is None:
            server = loop.run_until_complete(loop.create_server(Counted, "127.0.0.1", 0, backlog=backlog))
        else:
            server = loop.run_until_complete(loop.create_unix_server(Counted, unix_path, backlog=backlog))
        listening = server.sockets[0]
        for _ in range(queued):
            if unix_path is None:
                clients.append(socket.create_connection(listening.getsockname(), timeout=TIMEOUT))
            else:
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.settimeout(TIMEOUT)
                c.connect(unix_path)
                clients.append(c)
        deadline = time.monotonic() + TIMEOUT
        if unix_path is None:  # every handshake in the queue before the loop looks (the
            while _accept_queue_length(listening) < queued:  # last ACKs may lag under load)
                assert time.monotonic() < deadline, "the connections never reached the queue"
                time.sleep(0.001)
        loop.call_soon(tick)
        while len(made) < queued and time.monotonic() < deadline:
            loop.run_until_complete(asyncio.sleep(0.001))
        server.close()
    finally:
        for c in clients:
            c.close()
        if not loop.is_closed():
            loop.run_until_complete(asyncio.sleep(0.01))  # the transports see the EOFs
            loop.close()
    assert len(made) == queued, f"{len(made)} of {queued} queued connections accepted"
    per = {}
    for i in made:
        per[i] = per.get(i, 0) + 1
    return [per[i] for i in sorted(per)]


def test_braid_accepts_a_short_queue_a_few_connections_per_iteration():
    # a whole batch at once makes every connection's objects together, and the collector's
    # young generation fills once per batch under churn; a short queue goes a few at a time
    counts = _connections_made_per_iteration(backlog=100, queued=12)
    assert max(counts) <= 4, counts
    assert len(counts) >= 3, counts


def test_braid_drains_an_accept_queue_past_half_its_limit_at_once():
    # the batch is for a queue that would overflow: past half the listen backlog, drained
    counts = _connections_made_per_iteration(backlog=8, queued=8)
    assert counts == [1, 7], counts


def test_braid_takes_a_long_accept_queue_an_eighth_at_a_time():
    # a long queue (a large backlog after a pause) empties in a few iterations, not 4 by 4
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            limit = int(f.read())  # the kernel caps a listen backlog at it
    except (OSError, ValueError):
        limit = 0
    if limit < 2 * 80:
        pytest.skip(f"net.core.somaxconn is {limit}: 80 queued would be past half the limit")
    counts = _connections_made_per_iteration(backlog=1024, queued=80)
    assert counts[0] == 1 and counts[1] == 79 // 8, counts
    assert len(counts) - 1 < 79 / 4, counts  # fewer iterations than four at a time would take


def test_braid_drains_a_unix_servers_accept_queue():
    # no queue length to go by on a Unix socket, and a full one refuses a non-blocking connect
    where = tempfile.mkdtemp(dir="/tmp")  # short: AF_UNIX paths end at 108 bytes
    try:
        counts = _connections_made_per_iteration(backlog=100, queued=12, unix_path=os.path.join(where, "s"))
    finally:
        shutil.rmtree(where, ignore_errors=True)
    assert counts == [1, 11], counts
