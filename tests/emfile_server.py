"""Child process of the EMFILE test (test_loop_transports_more.py): a server whose process has
almost no file descriptors left.

    python emfile_server.py asyncio|braid N SLACK

Prints its port, waits for a line on stdin (the parent has N connections waiting in the
backlog by then, each with one byte sent), lowers RLIMIT_NOFILE to SLACK descriptors above the
highest one open, and starts serving: accept() fails with EMFILE after SLACK connections.
Each connection gets b"ok" and is closed, which frees its descriptor. Prints one JSON line
when all N are served: {"served": N, "handled": [[message, errno], ...]} (what reached the
loop's exception handler).
"""

import asyncio
import json
import os
import resource
import socket
import sys


def main(kind, n, slack):
    if kind == "braid":
        import braid

        loop = braid.Loop()
    else:
        loop = asyncio.new_event_loop()
    handled = []
    loop.set_exception_handler(lambda lp, ctx: handled.append(
        [ctx.get("message"), getattr(ctx.get("exception"), "errno", None)]))
    done = loop.create_future()
    served = 0

    class Reply(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            nonlocal served
            self.transport.write(b"ok")
            self.transport.close()
            served += 1
            if served == n:
                done.set_result(None)

    async def run():
        # listening already (create_server would listen only once it starts serving), so
        # the parent's connections wait in the backlog
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(n)
        server = await loop.create_server(Reply, sock=sock, backlog=n, start_serving=False)
        print(sock.getsockname()[1], flush=True)
        sys.stdin.readline()  # blocks the loop on purpose: nothing else is due yet
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + slack, hard))
        await server.start_serving()
        await done
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    print(json.dumps({"served": served, "handled": handled}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
