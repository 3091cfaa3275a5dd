"""Real clients on braid.Loop (issue 3): an aiohttp application served and fetched on the same
loop, asyncio streams over TLS, and start_tls -- each run on asyncio's loop too, so a difference
in behaviour fails on one side only."""

import asyncio
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from pool_helpers import TIMEOUT, import_braid  # noqa: E402

aiohttp = pytest.importorskip("aiohttp")  # in the test extra; skipped only outside it
from aiohttp import web  # noqa: E402
from test.test_asyncio import utils as cpython_test_utils  # noqa: E402  (CPython's test certificates)


def loop_factories():
    return [pytest.param(asyncio.new_event_loop, id="asyncio"),
            pytest.param(lambda: import_braid().Loop(), id="braid")]


@pytest.fixture(params=loop_factories())
def loop(request):
    loop = request.param()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))


def test_aiohttp_app_served_and_fetched_1000_times(loop):
    async def item(request):
        n = int(request.match_info["n"])
        return web.Response(body=b"item %d " % n * (1 + n % 50), content_type="text/plain")

    async def echo(request):
        return web.Response(body=await request.read())

    async def main():
        app = web.Application(client_max_size=8 << 20)
        app.router.add_get("/item/{n}", item)
        app.router.add_post("/echo", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                async def get(n):
                    async with session.get(f"http://127.0.0.1:{port}/item/{n}") as resp:
                        assert resp.status == 200
                        return n, await resp.read()

                for start in range(0, 1000, 100):
                    for n, body in await asyncio.gather(*(get(n) for n in range(start, start + 100))):
                        assert body == b"item %d " % n * (1 + n % 50)
                big = os.urandom(3 << 20)  # a body far past the socket buffers: backpressure both ways
                async with session.post(f"http://127.0.0.1:{port}/echo", data=big) as resp:
                    assert await resp.read() == big
        finally:
            await runner.cleanup()

    run(loop, main())


def test_tls_streams_round_trip_and_start_tls(loop):
    server_ctx = cpython_test_utils.simple_server_sslcontext()
    client_ctx = cpython_test_utils.simple_client_sslcontext()

    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        assert writer.get_extra_info("sslcontext") is client_ctx
        payload = b"x" * 50_000 + b"\n"  # under the 64 KiB line limit, many TLS records
        for msg in (b"hello tls\n", payload):
            writer.write(msg)
            assert await reader.readline() == msg.upper()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

        # start_tls: plain text first, then the same connection upgraded
        upgraded = asyncio.get_running_loop().create_future()

        async def handle_plain(reader, writer):
            assert await reader.readline() == b"STARTTLS\n"
            writer.write(b"GO\n")
            await writer.drain()
            await writer.start_tls(server_ctx)
            line = await reader.readline()
            upgraded.set_result(line)
            writer.write(b"secret received\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle_plain, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"GO\n"
        await writer.start_tls(client_ctx)
        writer.write(b"secret\n")
        assert await reader.readline() == b"secret received\n"
        assert await upgraded == b"secret\n"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())
