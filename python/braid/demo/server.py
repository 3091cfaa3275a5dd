"""The demo's HTTP server: 127.0.0.1 only, on a braid.Loop in a background thread.

It stands in for the tutorial's remote hosts, so every byte stays on this machine and each
response's content is known in advance. Two kinds of path:

    /file/<i>?size=<bytes>&delay=<ms>    a binary file of <bytes>, the same every time for i
    /page/<i>?delay=<ms>                 a small HTML page, the same every time for i

Each response is sent <ms> milliseconds after its request arrived (the network and the
remote host's own time, in one figure). The content comes from file_body() and
page_body(), which the experiments call too, to check what the clients received against
what was meant, byte for byte or by SHA-256.

The server shares this process, and so the GIL, with the clients being measured: its
thread's CPU time is read separately (cpu_seconds) so that the figures can leave it out.
"""

import asyncio
import collections
import functools
import random
import threading
import time
import urllib.parse

__all__ = ["Server", "file_body", "page_body"]

PAGE_BYTES = 2048
SEED = 20240917
START_TIMEOUT = 10.0


@functools.lru_cache(maxsize=4)
def _random_block(size):
    """``size`` pseudo-random bytes, the same in every process: the bulk of every file."""
    return random.Random(SEED + size).randbytes(size)


def file_body(i, size):
    """The file /file/<i>?size=<size>: a stamp naming it, then the shared random bytes, so
    that two files differ and a file sent for another is caught by its checksum."""
    stamp = f"braid demo file {i}\n".encode()[:size]
    return stamp + _random_block(size)[len(stamp):]


def page_body(i):
    """The page /page/<i>, as text: PAGE_BYTES of ASCII HTML naming the page."""
    head = f"<!doctype html><html><head><title>page {i}</title></head><body><p>page {i}</p><p>"
    tail = "</p></body></html>\n"
    fill = PAGE_BYTES - len(head) - len(tail)
    return head + ("lorem ipsum " * (fill // 12 + 1))[:fill] + tail


def _response(status, body, content_type, close):
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n")
    if close:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + body


def _answer(target):
    """(status line, body, content type) for a request target."""
    url = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(url.query)
    parts = url.path.strip("/").split("/")
    try:
        delay = int(query.get("delay", ["0"])[0]) / 1000
        if len(parts) == 2 and parts[0] == "file" and parts[1].isdigit():
            size = int(query["size"][0])
            return "200 OK", file_body(int(parts[1]), size), "application/octet-stream", delay
        if len(parts) == 2 and parts[0] == "page" and parts[1].isdigit():
            return ("200 OK", page_body(int(parts[1])).encode("ascii"), "text/html; charset=utf-8",
                    delay)
    except (KeyError, ValueError):
        return "400 Bad Request", b"bad query\n", "text/plain", 0.0
    return "404 Not Found", b"no such path\n", "text/plain", 0.0


class _Http(asyncio.Protocol):
    """HTTP/1.1 GETs with keep-alive. Responses leave in the order of their requests
    (a client that pipelines gets them in order), each no sooner than its delay."""

    def __init__(self, server):
        self.server = server
        self.transport = None
        self.buf = b""
        self.queue = collections.deque()  # [response, close] in request order; None: not ready
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.closed = True

    def data_received(self, data):
        buf = self.buf + data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head, buf = buf[:end], buf[end + 4:]
            self._request(head)
        if len(buf) > 65536:  # no request head is this long: not HTTP
            self.transport.close()
            buf = b""
        self.buf = buf

    def _request(self, head):
        line, _, headers = head.partition(b"\r\n")
        parts = line.decode("latin-1").split()
        lowered = headers.lower()
        close = (b"connection: close" in lowered
                 or (len(parts) > 2 and parts[2] == "HTTP/1.0" and b"keep-alive" not in lowered))
        if len(parts) < 2 or parts[0] != "GET":
            status, body, ctype, delay = "400 Bad Request", b"GET only\n", "text/plain", 0.0
        else:
            status, body, ctype, delay = _answer(parts[1])
        self.server.requests += 1
        entry = [None, close]
        self.queue.append(entry)
        ready = _response(status, body, ctype, close)
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._ready, entry, ready)
        else:
            self._ready(entry, ready)

    def _ready(self, entry, response):
        entry[0] = response
        while self.queue and self.queue[0][0] is not None:
            response, close = self.queue.popleft()
            if self.closed:
                continue
            self.transport.write(response)
            if close:
                self.transport.close()
                self.closed = True


class Server:
    """The server, started by the constructor; ``close()`` stops it (or use ``with``).

    ``url_file(i, size, delay_ms)`` and ``url_page(i, delay_ms)`` are the addresses to
    fetch; ``cpu_seconds()`` is the CPU time its thread has used so far."""

    def __init__(self):
        import braid

        self.requests = 0
        self.port = None
        self._loop = braid.Loop()
        self._server = None
        self._error = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="braid-demo-server", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT):
            raise RuntimeError(f"the demo's HTTP server did not start in {START_TIMEOUT:.0f} s")
        if self._error is not None:
            self._thread.join()
            self._loop.close()
            raise RuntimeError(f"the demo's HTTP server did not start: {self._error}")
        self._clock = time.pthread_getcpuclockid(self._thread.ident)

    def _run(self):
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                loop.create_server(lambda: _Http(self), "127.0.0.1", 0, backlog=4096))
            self.port = self._server.sockets[0].getsockname()[1]
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            asyncio.set_event_loop(None)

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def url_file(self, i, size, delay_ms):
        return f"{self.base}/file/{i}?size={size}&delay={delay_ms}"

    def url_page(self, i, delay_ms):
        return f"{self.base}/page/{i}?delay={delay_ms}"

    def cpu_seconds(self):
        return time.clock_gettime(self._clock)

    def close(self):
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        if not self._loop.is_closed():
            self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
