"""asyncio's streams over each loop's transport: the same behaviour on asyncio's loop and on
braid.Loop, whose transport feeds a StreamReaderProtocol's reader directly (no data_received /
feed_data calls in Python) -- and must do exactly what those calls do: the bytes, the waiter,
the pause above twice the limit, and every other protocol still through data_received."""

import asyncio
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from transport_helpers import LoopFixture, asyncio_loop, braid_loop, ticks, until  # noqa: E402


async def echo_server(loop, handler=None):
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler or echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


class StreamsMixin(LoopFixture):
    def test_echo_of_many_sizes_every_byte_in_order(self, loop):
        async def main():
            server, port = await echo_server(loop)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for size in (1, 7, 1024, 65536, 300_000):
                data = bytes(i % 251 for i in range(size))
                writer.write(data)
                assert await reader.readexactly(size) == data
            writer.write(b"line one\nline two\n")
            assert await reader.readline() == b"line one\n"
            assert await reader.readuntil(b"two\n") == b"line two\n"
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()

        self.run(loop, main())

    def test_reading_pauses_above_twice_the_limit_and_resumes_once_read(self, loop):
        got = {}

        async def handler(reader, writer):
            await asyncio.sleep(0)  # let the client fill our buffer
            await until(lambda: len(reader._buffer) > 2 * reader._limit, "the buffer to pass 2 x limit")
            got["paused"] = reader._paused and not writer.transport.is_reading()
            data = await reader.readexactly(len(reader._buffer))  # all that is buffered
            got["resumed"] = not reader._paused and writer.transport.is_reading()
            got["data"] = data + await reader.read()
            writer.close()

        async def main():
            server, port = await echo_server(loop, handler)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            payload = bytes(i % 253 for i in range(200_000))
            writer.write(payload)
            writer.write_eof()
            await until(lambda: "data" in got, "the handler to read everything")
            assert got["paused"] and got["resumed"] and got["data"] == payload
            writer.close()
            server.close()
            await server.wait_closed()

        # a small limit: 2 x 10 KiB is passed at once
        orig = asyncio.streams._DEFAULT_LIMIT
        asyncio.streams._DEFAULT_LIMIT = 10_240
        try:
            self.run(loop, main())
        finally:
            asyncio.streams._DEFAULT_LIMIT = orig

    def test_a_waiting_read_is_woken_by_the_data_and_by_eof(self, loop):
        async def main():
            server, port = await echo_server(loop)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            pending = asyncio.ensure_future(reader.read(100))
            await ticks()
            assert not pending.done()  # it waits on the reader's waiter
            writer.write(b"wake")
            assert await pending == b"wake"
            pending = asyncio.ensure_future(reader.read(100))
            await ticks()
            writer.write_eof()  # the server echoes EOF by closing
            assert await pending == b""
            assert reader.at_eof()
            writer.close()
            server.close()
            await server.wait_closed()

        self.run(loop, main())

    def test_a_cancelled_waiting_read_loses_no_data(self, loop):
        async def main():
            server, port = await echo_server(loop)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            pending = asyncio.ensure_future(reader.read(100))
            await ticks()
            pending.cancel()
            writer.write(b"kept")
            await until(lambda: bytes(reader._buffer) == b"kept", "the data in the reader's buffer")
            assert await reader.read(100) == b"kept"
            writer.close()
            server.close()
            await server.wait_closed()

        self.run(loop, main())

    def test_a_reader_protocol_subclass_still_gets_data_received(self, loop):
        seen = []

        class Counting(asyncio.StreamReaderProtocol):
            def data_received(self, data):
                seen.append(len(data))
                super().data_received(data)

        async def main():
            server, port = await echo_server(loop)
            reader = asyncio.StreamReader()
            transport, _ = await loop.create_connection(lambda: Counting(reader), "127.0.0.1", port)
            transport.write(b"x" * 1000)
            assert await reader.readexactly(1000) == b"x" * 1000
            assert sum(seen) == 1000
            transport.close()
            server.close()
            await server.wait_closed()

        self.run(loop, main())

    def test_data_after_the_reader_saw_eof_fails_as_feed_data_asserts(self, loop):
        # feed_data asserts that no data follows feed_eof; the transport reports it as a
        # data_received failure and closes, on both loops.
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        errors = []

        async def main():
            server, port = await echo_server(loop)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            reader.feed_eof()
            writer.write(b"late")
            await until(lambda: errors, "the handler to hear of it")
            assert errors[0]["message"] == "Fatal error: protocol.data_received() call failed."
            assert isinstance(errors[0]["exception"], AssertionError)
            await until(lambda: writer.transport.is_closing(), "the transport to close")
            server.close()
            await server.wait_closed()

        self.run(loop, main())


class TestAsyncioStreams(StreamsMixin):
    new_loop = staticmethod(asyncio_loop)


class TestBraidStreams(StreamsMixin):
    new_loop = staticmethod(braid_loop)


def python_calls_while(loop, coro):
    """Names of the Python functions called while the loop runs coro."""
    names = []

    def profile(frame, event, arg):
        if event == "call":
            names.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        loop.run_until_complete(coro)
    finally:
        sys.setprofile(None)
    return names


async def echo_abc():
    server, port = await echo_server(None)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"abc")
    assert await reader.readexactly(3) == b"abc"
    writer.close()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("make, chain", [(asyncio_loop, True), (braid_loop, False)])
def test_braid_feeds_the_reader_without_the_python_chain(make, chain):
    # The Python data_received -> feed_data -> _wakeup_waiter chain runs on asyncio's loop for
    # every read, and never on braid.Loop for an exact StreamReaderProtocol and StreamReader.
    loop = make()
    try:
        names = python_calls_while(loop, echo_abc())
    finally:
        loop.close()
    assert ("feed_data" in names and "data_received" in names) is chain
    assert ("feed_data" in names or "data_received" in names) is chain


def test_a_replaced_data_received_is_called_on_braid_too():
    calls = []
    orig = asyncio.StreamReaderProtocol.data_received
    loop = braid_loop()
    try:
        asyncio.StreamReaderProtocol.data_received = lambda self, data: (calls.append(data), orig(self, data))
        loop.run_until_complete(echo_abc())
    finally:
        asyncio.StreamReaderProtocol.data_received = orig
        loop.close()
    assert b"".join(calls) == b"abcabc"  # the server side read it, then the client


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
