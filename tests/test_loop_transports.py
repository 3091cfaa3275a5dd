"""The socket transport's contract, written once and run on asyncio's own loop and on braid.Loop.

What asyncio's selector loop does is the contract: flow control with its byte counts, reading
paused and resumed, half-close both ways, extra info, abort and close, bad input, a peer reset
in the middle of a write, protocol callbacks that raise, BufferedProtocol. Unix sockets,
pipes, datagrams, sendfile, TLS and the limits (fd exhaustion, many connections) are in
test_loop_transports_more.py.
"""

import asyncio
import logging
import os
import socket
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from transport_helpers import (LINGER_0, LoopFixture, Recorder, asyncio_loop,  # noqa: E402
                               braid_loop, fill_kernel, make_room_with_a_callback_ready,
                               read_exactly, read_to_eof, read_what_is_there, tcp_pair, ticks,
                               until)

HIGH, LOW = 64 * 1024, 16 * 1024  # asyncio's default watermarks


class TransportMixin(LoopFixture):

    # ---- flow control ----------------------------------------------------------------------

    def test_write_buffer_limits_defaults_and_derivation(self, loop):
        async def main():
            transport, _, peer = await tcp_pair(loop, Recorder)
            assert transport.get_write_buffer_limits() == (LOW, HIGH)
            transport.set_write_buffer_limits(high=1000)
            assert transport.get_write_buffer_limits() == (250, 1000)  # low = high // 4
            transport.set_write_buffer_limits(low=100)
            assert transport.get_write_buffer_limits() == (100, 400)  # high = 4 * low
            transport.set_write_buffer_limits(high=0)
            assert transport.get_write_buffer_limits() == (0, 0)
            with pytest.raises(ValueError, match="must be >="):
                transport.set_write_buffer_limits(high=10, low=20)
            with pytest.raises(ValueError):
                transport.set_write_buffer_limits(high=-1)
            assert transport.get_write_buffer_limits() == (0, 0)  # unchanged by the failures
            transport.close()
            peer.close()

        self.run(loop, main())

    def test_write_buffer_size_counts_every_byte_not_yet_sent(self, loop):
        async def main():
            transport, proto, peer = await tcp_pair(loop, Recorder, peer_rcvbuf=4096,
                                                    sndbuf=4096)
            transport.set_write_buffer_limits(high=10 * 1024 * 1024)
            sent_to_kernel = fill_kernel(transport) - transport.get_write_buffer_size()
            size = transport.get_write_buffer_size()
            # while the buffer is not empty, a write goes to it whole, byte for byte
            for chunk in (b"a" * 1000, bytearray(b"b" * 333), memoryview(b"c" * 4096)[:7]):
                transport.write(chunk)
                size += len(chunk)
                assert transport.get_write_buffer_size() == size
            transport.writelines([b"d" * 10, b"e" * 20])
            size += 30
            assert transport.get_write_buffer_size() == size
            transport.write(b"")
            assert transport.get_write_buffer_size() == size
            got = await read_exactly(loop, peer, sent_to_kernel + size)
            assert got.endswith(b"a" * 1000 + b"b" * 333 + b"c" * 7 + b"d" * 10 + b"e" * 20)
            await until(lambda: transport.get_write_buffer_size() == 0, "the buffer to drain")
            assert proto.events == ["made"]  # 10 MiB high water: never paused
            transport.close()
            await proto.lost
            peer.close()

        self.run(loop, main())

    def test_pause_above_high_water_and_resume_at_low_water(self, loop):
        async def main():
            transport, proto, peer = await tcp_pair(loop, Recorder, peer_rcvbuf=4096,
                                                    sndbuf=4096)
            transport.set_write_buffer_limits(high=40_000, low=10_000)
            fill_kernel(transport)
            assert proto.events == ["made"]
            # below or at the high-water mark: no pause
            transport.write(b"x" * (40_000 - transport.get_write_buffer_size()))
            assert transport.get_write_buffer_size() == 40_000
            assert proto.events == ["made"]
            transport.write(b"y")  # one byte over: paused, at once, with 40,001 buffered
            assert proto.events == ["made", ("pause", 40_001)]
            transport.write(b"z" * 5000)  # paused writes are still taken
            assert transport.get_write_buffer_size() == 45_001
            assert proto.events == ["made", ("pause", 40_001)]  # paused once
            # the peer reads: resumed once, when at most 10,000 bytes are left
            await read_to_low(loop, peer, lambda: len(proto.events) > 2)
            assert proto.events[:2] == ["made", ("pause", 40_001)]
            kind, size = proto.events[2]
            assert kind == "resume" and size <= 10_000
            assert len(proto.events) == 3
            transport.close()
            rest, _ = await read_to_eof(loop, peer)
            assert rest.endswith(b"x" * 100 + b"y" + b"z" * 5000)
            await proto.lost
            peer.close()

        async def read_to_low(loop, peer, done):
            while not done():
                assert await loop.sock_recv(peer, 1024)

        self.run(loop, main())

    def test_lowering_the_high_water_mark_pauses_at_once(self, loop):
        async def main():
            transport, proto, peer = await tcp_pair(loop, Recorder, peer_rcvbuf=4096,
                                                    sndbuf=4096)
            fill_kernel(transport)
            transport.write(b"x" * 20_000)
            size = transport.get_write_buffer_size()
            assert proto.events == ["made"] and 20_000 <= size <= HIGH
            transport.set_write_buffer_limits(high=size - 1)
            assert proto.events == ["made", ("pause", size)]
            transport.abort()
            await proto.lost
            peer.close()

        self.run(loop, main())

    def test_high_water_zero_pauses_whenever_anything_is_buffered(self, loop):
        async def main():
            transport, proto, peer = await tcp_pair(loop, Recorder, peer_rcvbuf=4096,
                                                    sndbuf=4096)
            transport.set_write_buffer_limits(high=0)
            transport.write(b"fits")  # the kernel takes it all: nothing buffered, no pause
            assert proto.events == ["made"]
            fill_kernel(transport)
            assert proto.events[1][0] == "pause"
            await read_to_eof_after(loop, transport, peer)
            # low water 0: resumed only once the buffer is empty
            assert proto.events[2] == ("resume", 0)

        async def read_to_eof_after(loop, transport, peer):
            transport.close()
            await read_to_eof(loop, peer)
            peer.close()

        self.run(loop, main())

    def test_pause_writing_that_raises_goes_to_the_handler_and_the_transport_lives(self, loop):
        errors = []

        class Proto(Recorder):
            def pause_writing(self):
                raise ZeroDivisionError("pause")

        async def main():
            loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
            transport, proto, peer = await tcp_pair(loop, Proto, peer_rcvbuf=4096, sndbuf=4096)
            fill_kernel(transport)
            transport.write(b"x" * (HIGH + 1))
            assert [c["message"] for c in errors] == ["protocol.pause_writing() failed"]
            assert isinstance(errors[0]["exception"], ZeroDivisionError)
            assert errors[0]["transport"] is transport and errors[0]["protocol"] is proto
            assert not transport.is_closing()
            transport.write(b"still writable")
            transport.close()
            got, _ = await read_to_eof(loop, peer)
            assert got.endswith(b"still writable")
            peer.close()

        self.run(loop, main())

    # ---- reading ----------------------------------------------------------------------------

    def test_pause_reading_holds_data_and_eof_until_resume_reading(self, loop):
        async def main():
            transport, proto, peer = await tcp_pair(loop, Recorder)
            assert transport.is_reading()
            transport.pause_reading()
            transport.pause_reading()  # twice is harmless
            assert not transport.is_reading()
            assert transport._paused  # private, but read by code written against asyncio's
            peer.sendall(b"held back")
            peer.shutdown(socket.SHUT_WR)
            await ticks(20)
            assert proto.data == b"" and proto.events == ["made"]
            transport.resume_reading()
            transport.resume_reading()
            assert transport.is_reading() and not transport._paused
            await proto.lost
            assert proto.data == b"held back"
            assert proto.events == ["made", "eof", "lost"]
            assert not transport.is_reading()  # a closed transport does not read
            transport.pause_reading()  # harmless after close
            transport.resume_reading()
            peer.close()

        self.run(loop, main())

    def test_data_received_gets_every_byte_in_order(self, loop):
        async def main():
            transport, proto, peer = await tcp_pair(loop, Recorder)
            payload = bytes(range(256)) * 4096  # 1 MiB: many reads
            await loop.sock_sendall(peer, payload)
            await until(lambda: len(proto.data) == len(payload), "all the data")
            assert proto.data == payload
            transport.close()
            peer.close()

        self.run(loop, main())

    def test_data_comes_after_the_callbacks_already_ready(self, loop):
        # asyncio reads from a reader handle that the poll puts behind the callbacks already
        # ready: those run first, and one that pauses reading or closes holds the data back
        order = []

        class Noting(Recorder):
            def data_received(self, data):
                super().data_received(data)
                order.append(data)

        class NotingBuffered(asyncio.BufferedProtocol):
            def connection_made(self, transport):
                self.buf = bytearray(64)

            def get_buffer(self, sizehint):
                order.append("get_buffer")
                return self.buf

            def buffer_updated(self, nbytes):
                order.append(bytes(self.buf[:nbytes]))

            def connection_lost(self, exc):
                pass

        async def main():
            transport, proto, peer = await tcp_pair(loop, Noting)
            peer.send(b"first")
            time.sleep(0.05)  # in the socket buffer before the next poll
            loop.call_soon(order.append, "ready before the poll")
            await until(lambda: len(order) == 2, "the data")
            assert order == ["ready before the poll", b"first"]

            del order[:]
            peer.send(b"held")
            time.sleep(0.05)
            loop.call_soon(transport.pause_reading)  # runs before the read
            await ticks(5)
            assert order == [] and not transport.is_reading()
            transport.resume_reading()
            await until(lambda: order == [b"held"], "the held data")

            del order[:]
            peer.send(b"dropped")
            time.sleep(0.05)
            loop.call_soon(transport.close)
            await ticks(5)
            assert order == []
            peer.close()

            btransport, _, bpeer = await tcp_pair(loop, NotingBuffered)
            del order[:]
            bpeer.send(b"buffered")
            time.sleep(0.05)
            loop.call_soon(order.append, "ready before the poll")
            await until(lambda: len(order) == 3, "the buffered data")
            assert order == ["ready before the poll", "get_buffer", b"buffered"]
            btransport.close()
            bpeer.close()

        self.run(loop, main())

    def test_a_flush_comes_after_the_callbacks_already_ready(self, loop):
        # asyncio writes from a writer handle that the poll puts behind the callbacks already
        # ready: those run first (what they write joins the flush), then resume_writing, and
        # connection_lost once a closed transport's buffer has gone
        def kinds(events):
            return [e if isinstance(e, str) else e[0] for e in events]

        async def main():
            a, peer = socket.socketpair()  # Unix: room for the writer the moment the peer reads
            peer.setblocking(False)
            transport, proto = await loop.create_unix_connection(Recorder, sock=a)
            received = bytearray()
            sent = 0
            while "pause" not in kinds(proto.events):
                transport.write(b"x" * 65536)
                sent += 65536

            def ready():
                proto.events.append("ready before the poll")
                transport.write(b"joins")

            await make_room_with_a_callback_ready(lambda: read_what_is_there(peer, received),
                                                  ready)
            assert kinds(proto.events) == ["made", "pause", "ready before the poll", "resume"]
            assert proto.events[-1] == ("resume", 0)  # "joins" went with the flush

            del proto.events[:]
            while transport.get_write_buffer_size() == 0:
                transport.write(b"y" * 65536)
                sent += 65536
            transport.close()
            await make_room_with_a_callback_ready(lambda: read_what_is_there(peer, received),
                                                  lambda: proto.events.append("ready"))
            await until(lambda: "lost" in proto.events, "connection_lost")
            assert proto.events.index("ready") < proto.events.index("lost")
            read_what_is_there(peer, received)
            assert len(received) == sent + len(b"joins")  # nothing lost, nothing left queued
            peer.close()

        self.run(loop, main())

    def test_pause_reading_inside_data_received_stops_the_next_call(self, loop):
        calls = []

        class Proto(Recorder):
            def data_received(self, data):
                super().data_received(data)
                calls.append(len(data))
                self.transport.pause_reading()

        async def main():
            transport, proto, peer = await tcp_pair(loop, Proto)
            await loop.sock_sendall(peer, b"x" * 1_000_000)  # more than one read's worth
            await until(lambda: calls, "the first read")
            await ticks(20)
            assert len(calls) == 1  # one read per readiness, and reading is paused now
            while len(proto.data) < 1_000_000:
                transport.resume_reading()
                await until(lambda: not transport.is_reading(), "the next read")
            assert proto.data == b"x" * 1_000_000 and sum(calls) == 1_000_000
            transport.close()
            peer.close()

        self.run(loop, main())

    @pytest.mark.skipif(sys.version_info >= (3, 12),
                        reason="from 3.12 asyncio buffers the caller's object itself (no copy): "
                               "changing it after write() changes what is sent")
    def test_a_buffered_bytearray_is_copied_at_write(self, loop):
        async def main():
            transport, proto, peer = await tcp_pair(loop, Recorder, peer_rcvbuf=4096,
                                                    sndbuf=4096)
            total = fill_kernel(transport)
            data = bytearray(b"original")
            transport.write(data)
            view = memoryview(bytearray(b"viewed"))
            transport.write(view)
            data[:] = b"MUTATED!"  # the caller may reuse its buffer once write returns
            view[:] = b"CHANGE"
            transport.close()
            got, _ = await read_to_eof(loop, peer)
            assert len(got) == total + 14 and got.endswith(b"originalviewed")
            peer.close()

        self.run(loop, main())

    # ---- half-close ---------------------------------------------------------------------

    def test_eof_received_returning_false_closes_the_transport(self, loop):
        async def main():
            for result in (None, False):
                transport, proto, peer = await tcp_pair(loop, lambda: Recorder(result))
                peer.sendall(b"last words")
                peer.shutdown(socket.SHUT_WR)
                assert await proto.lost is None
                assert proto.events == ["made", "eof", "lost"]
                assert proto.data == b"last words"
                assert transport.is_closing()
                assert await read_to_eof(loop, peer) == (b"", None)
                peer.close()

        self.run(loop, main())

    def test_eof_received_returning_true_keeps_the_write_side_open(self, loop):
        async def main():
            transport, proto, peer = await tcp_pair(loop, lambda: Recorder(True))
            peer.shutdown(socket.SHUT_WR)
            await proto.eof
            await ticks()
            assert not transport.is_closing() and proto.events == ["made", "eof"]
            transport.write(b"answer after your EOF")
            assert await read_exactly(loop, peer, 21) == b"answer after your EOF"
            transport.close()
            assert await read_to_eof(loop, peer) == (b"", None)
            assert await proto.lost is None
            peer.close()

        self.run(loop, main())

    def test_write_eof_flushes_then_shuts_down_and_still_reads(self, loop):
        async def main():
            transport, proto, peer = await tcp_pair(loop, lambda: Recorder(True),
                                                    peer_rcvbuf=4096, sndbuf=4096)
            assert transport.can_write_eof()
            total = fill_kernel(transport)
            transport.write(b"tail")
            transport.write_eof()
            transport.write_eof()  # twice is harmless
            with pytest.raises(RuntimeError, match="write_eof"):
                transport.write(b"more")
            assert not transport.is_closing()
            got, err = await read_to_eof(loop, peer)
            assert err is None and len(got) == total + 4 and got.endswith(b"tail")
            await loop.sock_sendall(peer, b"the peer still talks")
            await until(lambda: proto.data == b"the peer still talks", "the peer's data")
            peer.shutdown(socket.SHUT_WR)
            await proto.eof
            transport.close()
            assert await proto.lost is None
            peer.close()

        self.run(loop, main())

    # ---- extra info, close, abort ----------------------------------------------------------

    def test_get_extra_info_keys(self, loop):
        async def main():
            transport, _, peer = await tcp_pair(loop, Recorder)
            sock = transport.get_extra_info("socket")
            assert type(sock).__name__ == "TransportSocket"  # asyncio's guarded view
            assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
            assert transport.get_extra_info("sockname") == sock.getsockname()
            assert transport.get_extra_info("sockname") == peer.getpeername()
            assert transport.get_extra_info("peername") == peer.getsockname()
            assert transport.get_extra_info("no such key") is None
            assert transport.get_extra_info("no such key", "default") == "default"
            transport.close()
            await ticks()
            # still answered after close, from what the transport kept
            assert transport.get_extra_info("peername") == peer.getsockname()
            peer.close()

        self.run(loop, main())

    def test_extra_info_first_asked_after_close(self, loop):
        async def main():
            names = {}

            class Server(Recorder):
                def connection_lost(self, exc):
                    super().connection_lost(exc)
                    t = self.transport  # no one asked for its names while it was open
                    names.update(peername=t.get_extra_info("peername"),
                                 sockname=t.get_extra_info("sockname"))

            server = await loop.create_server(Server, "127.0.0.1", 0)
            addr = server.sockets[0].getsockname()
            client = socket.create_connection(addr)
            client.close()  # the server's transport closes at the EOF
            await until(lambda: names, "connection_lost")
            assert names["sockname"] == addr and names["peername"][0] == "127.0.0.1"
            # a client's transport, closed by its owner
            transport, proto = await loop.create_connection(Recorder, *addr)
            transport.close()
            await proto.lost
            assert transport.get_extra_info("peername") == addr
            assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
            server.close()
            await server.wait_closed()

        self.run(loop, main())

    def test_server_side_transport_extra_info_and_protocol(self, loop):
        async def main():
            made = loop.create_future()

            class Server(Recorder):
                def connection_made(self, transport):
                    super().connection_made(transport)
                    made.set_result(self)

            server = await loop.create_server(Server, "127.0.0.1", 0)
            addr = server.sockets[0].getsockname()
            client = socket.create_connection(addr)
            proto = await made
            transport = proto.transport
            assert transport.get_protocol() is proto
            assert transport.get_extra_info("sockname") == addr
            assert transport.get_extra_info("peername") == client.getsockname()
            other = Recorder()
            transport.set_protocol(other)
            assert transport.get_protocol() is other
            client.sendall(b"to the new protocol")
            await until(lambda: other.data == b"to the new protocol", "the data")
            assert proto.data == b""
            client.close()
            await other.lost
            server.close()
            await server.wait_closed()

        self.run(loop, main())

    def test_close_flushes_the_buffer_then_connection_lost(self, loop):
        async def main():
            transport, proto, peer = await tcp_pair(loop, Recorder, peer_rcvbuf=4096,
                                                    sndbuf=4096)
            total = fill_kernel(transport)
            transport.close()
            transport.close()  # twice is harmless
            assert transport.is_closing()
            await ticks()
            assert not proto.lost.done()  # not lost while bytes are still buffered
            got, err = await read_to_eof(loop, peer)
            assert err is None and len(got) == total
            assert await proto.lost is None
            assert proto.events == ["made", "lost"]
            peer.close()

        self.run(loop, main())

    def test_abort_drops_the_buffer_and_reports_connection_lost_none(self, loop):
        async def main():
            transport, proto, peer = await tcp_pair(loop, Recorder, peer_rcvbuf=4096,
                                                    sndbuf=4096)
            total = fill_kernel(transport)
            transport.write(b"x" * 100_000)
            transport.abort()
            assert transport.is_closing()
            assert transport.get_write_buffer_size() == 0
            assert not proto.lost.done()  # connection_lost comes in a later callback
            assert await proto.lost is None
            got, _ = await read_to_eof(loop, peer)
            assert len(got) < total + 100_000
            transport.abort()  # again: harmless
            transport.close()
            await ticks()
            assert proto.events == ["made", ("pause", proto.events[1][1]), "lost"]
            peer.close()

        self.run(loop, main())

    # ---- bad input and faults ---------------------------------------------------------------

    def test_write_of_non_bytes_raises_type_error_and_sends_nothing(self, loop):
        async def main():
            transport, _, peer = await tcp_pair(loop, Recorder)
            for bad in ("text", 42, None, [b"x"]):
                with pytest.raises(TypeError) as info:
                    transport.write(bad)
                assert str(info.value) == ("data argument must be a bytes-like object, not "
                                           f"{type(bad).__name__!r}")
            with pytest.raises(TypeError):
                transport.writelines(["text"])
            transport.write(b"only this")
            assert await read_exactly(loop, peer, 9) == b"only this"
            transport.close()
            with pytest.raises(TypeError):  # the type is checked even after close
                transport.write("text")
            peer.close()

        self.run(loop, main())

    def test_writes_after_close_are_dropped_and_warned_from_the_fifth(self, loop, caplog):
        async def main():
            transport, proto, peer = await tcp_pair(loop, Recorder)
            transport.close()
            await proto.lost
            with caplog.at_level(logging.WARNING, logger="asyncio"):
                for _ in range(7):
                    transport.write(b"into the void")
                transport.write(b"")  # empty: not even counted
            warnings = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
            # the first four are silent; from the fifth on each logs (asyncio's threshold 5)
            assert warnings == ["socket.send() raised exception."] * 3
            assert await read_to_eof(loop, peer) == (b"", None)
            peer.close()

        self.run(loop, main())

    def test_peer_reset_during_a_large_write_reaches_connection_lost(self, loop):
        async def main():
            transport, proto, peer = await tcp_pair(loop, Recorder, peer_rcvbuf=4096,
                                                    sndbuf=4096)
            fill_kernel(transport)
            transport.write(b"x" * (8 << 20))  # 8 MiB waiting in the transport
            assert await loop.sock_recv(peer, 1000)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
            peer.close()  # RST
            exc = await proto.lost
            # what asyncio reports: the OSError of the send (or recv) that met the reset,
            # straight to connection_lost, not to the exception handler
            assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), exc
            assert exc.args == (exc.errno, os.strerror(exc.errno)), exc.args  # as send()'s
            assert transport.is_closing()
            assert transport.get_write_buffer_size() == 0
            transport.write(b"after the reset")  # dropped, no exception
            assert proto.events[-1] == "lost" and proto.events.count("lost") == 1

        self.run(loop, main())

    def test_eof_received_that_raises_reaches_the_handler_and_closes(self, loop):
        errors = []

        class Proto(Recorder):
            def eof_received(self):
                raise ValueError("bad eof")

        async def main():
            loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
            transport, proto, peer = await tcp_pair(loop, Proto)
            peer.shutdown(socket.SHUT_WR)
            exc = await proto.lost
            assert isinstance(exc, ValueError) and str(exc) == "bad eof"
            assert transport.is_closing()
            peer.close()

        self.run(loop, main())
        assert len(errors) == 1 and errors[0]["exception"].args == ("bad eof",)
        assert "eof_received" in errors[0]["message"]

    def test_data_received_that_raises_reaches_the_handler_and_closes(self, loop):
        errors = []

        class Proto(Recorder):
            def data_received(self, data):
                raise ValueError(data)

        async def main():
            loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
            transport, proto, peer = await tcp_pair(loop, Proto)
            peer.sendall(b"poison")
            exc = await proto.lost
            assert isinstance(exc, ValueError) and exc.args == (b"poison",)
            assert await read_to_eof(loop, peer) == (b"", None)
            peer.close()
            return exc

        exc = self.run(loop, main())
        assert len(errors) == 1 and errors[0]["exception"] is exc
        assert errors[0]["message"] == "Fatal error: protocol.data_received() call failed."

    def test_connection_lost_that_raises_reaches_the_handler_and_the_socket_closes(self, loop):
        errors = []

        class Proto(Recorder):
            def connection_lost(self, exc):
                super().connection_lost(exc)
                raise KeyError("lost")

        async def main():
            loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
            transport, proto, peer = await tcp_pair(loop, Proto)
            sock = transport.get_extra_info("socket")
            transport.close()
            assert await proto.lost is None
            await ticks()
            assert sock.fileno() == -1  # closed even though the callback raised
            assert await read_to_eof(loop, peer) == (b"", None)
            peer.close()

        self.run(loop, main())
        assert [type(c["exception"]) for c in errors] == [KeyError]

    def test_connection_made_that_raises_reaches_the_handler_and_the_server_serves_on(self, loop):
        errors = []
        made = []

        class Proto(Recorder):
            def connection_made(self, transport):
                super().connection_made(transport)
                made.append(self)
                if len(made) == 1:
                    raise ZeroDivisionError("first")

        async def main():
            loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
            server = await loop.create_server(Proto, "127.0.0.1", 0)
            addr = server.sockets[0].getsockname()
            first = socket.create_connection(addr)
            await until(lambda: errors, "the error")
            second = socket.create_connection(addr)
            second.sendall(b"served")
            await until(lambda: len(made) == 2 and made[1].data == b"served", "the second")
            for s in (first, second):
                s.close()
            for p in made:
                p.transport.close()
            server.close()
            await server.wait_closed()

        self.run(loop, main())
        assert [type(c["exception"]) for c in errors] == [ZeroDivisionError]

    # ---- BufferedProtocol --------------------------------------------------------------------

    def test_buffered_protocol_size_hints_and_byte_counts(self, loop):
        class Proto(asyncio.BufferedProtocol):
            def __init__(self):
                self.buf = bytearray(1000)
                self.got = bytearray()
                self.hints = []
                self.lost = asyncio.get_running_loop().create_future()

            def get_buffer(self, sizehint):
                self.hints.append(sizehint)
                return memoryview(self.buf)[:333]

            def buffer_updated(self, nbytes):
                assert 0 < nbytes <= 333
                self.got += self.buf[:nbytes]

            def eof_received(self):
                return None

            def connection_lost(self, exc):
                self.lost.set_result(exc)

        async def main():
            transport, proto, peer = await tcp_pair(loop, Proto)
            payload = bytes(range(256)) * 100
            await loop.sock_sendall(peer, payload)
            peer.shutdown(socket.SHUT_WR)
            assert await proto.lost is None
            assert bytes(proto.got) == payload
            # asyncio passes -1 as the size hint: "any size"
            assert set(proto.hints) == {-1}
            peer.close()

        self.run(loop, main())

    def test_set_protocol_switches_between_plain_and_buffered(self, loop):
        class Buffered(asyncio.BufferedProtocol):
            def __init__(self):
                self.buf = bytearray(64)
                self.got = bytearray()

            def get_buffer(self, sizehint):
                return self.buf

            def buffer_updated(self, nbytes):
                self.got += self.buf[:nbytes]

        async def main():
            transport, plain, peer = await tcp_pair(loop, Recorder)
            peer.sendall(b"one")
            await until(lambda: plain.data == b"one", "plain data")
            buffered = Buffered()
            transport.set_protocol(buffered)
            peer.sendall(b"two")
            await until(lambda: buffered.got == b"two", "buffered data")
            again = Recorder()
            transport.set_protocol(again)
            peer.sendall(b"three")
            await until(lambda: again.data == b"three", "plain data again")
            assert plain.data == b"one" and buffered.got == b"two"
            transport.close()
            peer.close()

        self.run(loop, main())

    @pytest.mark.parametrize("fault", ["get_buffer raises", "empty buffer",
                                       "buffer_updated raises"])
    def test_buffered_protocol_faults_reach_the_handler_and_close(self, loop, fault):
        errors = []

        class Proto(asyncio.BufferedProtocol):
            def __init__(self):
                self.lost = asyncio.get_running_loop().create_future()

            def get_buffer(self, sizehint):
                if fault == "get_buffer raises":
                    raise KeyError("no buffer")
                return bytearray(0 if fault == "empty buffer" else 16)

            def buffer_updated(self, nbytes):
                raise KeyError("no update")

            def connection_lost(self, exc):
                self.lost.set_result(exc)

        async def main():
            loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
            transport, proto, peer = await tcp_pair(loop, Proto)
            peer.sendall(b"data")
            exc = await proto.lost
            assert transport.is_closing()
            peer.close()
            return exc

        exc = self.run(loop, main())
        want = {"get_buffer raises": (KeyError, "get_buffer"),
                "empty buffer": (RuntimeError, "get_buffer"),
                "buffer_updated raises": (KeyError, "buffer_updated")}[fault]
        assert isinstance(exc, want[0])
        assert len(errors) == 1 and errors[0]["exception"] is exc
        assert want[1] in errors[0]["message"]


class TestAsyncioTransports(TransportMixin):
    new_loop = staticmethod(asyncio_loop)


class TestBraidTransports(TransportMixin):
    new_loop = staticmethod(braid_loop)
