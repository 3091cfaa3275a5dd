"""The HTTP clients the demo's experiments use: the tutorial's own (requests for blocking
calls, aiohttp for coroutines) when installed, else stand-ins from the standard library with
the same few calls, so that the tutorial's code runs unchanged on either.

    pip install 'braid[demo]'    # requests, aiohttp (and matplotlib for --plot)

Without requests, blocking calls use urllib.request (a new connection per request: urllib
has no keep-alive). Without aiohttp, coroutines use StreamsSession below, on asyncio
streams: a pool of keep-alive connections with aiohttp's default limit of 100.
"""

import asyncio
import collections
import urllib.parse

__all__ = ["Clients", "StreamsSession", "AIOHTTP_DEFAULT_LIMIT"]

AIOHTTP_DEFAULT_LIMIT = 100  # aiohttp.TCPConnector's default limit (connections at once)


def _importable(name):
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def _version(name):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


class _UrllibResponse:
    def __init__(self, status, content, charset):
        self.status_code = status
        self.content = content
        self._charset = charset

    @property
    def text(self):
        return self.content.decode(self._charset or "utf-8", errors="replace")


class _UrllibSession:
    """requests.Session's get() and close(), on urllib (which keeps no connection open)."""

    def get(self, url, timeout=None):
        return _urllib_get(url, timeout=timeout)

    def close(self):
        pass


def _urllib_get(url, timeout=None):
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return _UrllibResponse(resp.status, resp.read(), resp.headers.get_content_charset())


class Clients:
    """Which clients this run uses, and the calls the experiments make through it.

    ``get(url, timeout=)`` and ``Session()`` are requests' or urllib's; ``RequestException``
    is what they raise for a failed request. ``ClientSession(limit)`` is an
    aiohttp.ClientSession (the tutorial's, with aiohttp's own default connector when limit
    is its default) or a StreamsSession. ``left_out`` says what a missing extra costs.
    """

    def __init__(self):
        self.requests = _importable("requests")
        self.aiohttp = _importable("aiohttp")
        self.matplotlib = _importable("matplotlib")
        if self.requests:
            import requests

            self.get = requests.get
            self.Session = requests.Session
            self.RequestException = requests.RequestException
            self.blocking_name = f"requests {_version('requests')}"
        else:
            self.get = _urllib_get
            self.Session = _UrllibSession
            self.RequestException = OSError  # urllib.error.URLError and socket errors
            self.blocking_name = "urllib.request (requests not installed)"
        if self.aiohttp:
            self.async_name = f"aiohttp {_version('aiohttp')}"
        else:
            self.async_name = "asyncio streams (aiohttp not installed)"

    def ClientSession(self, limit=AIOHTTP_DEFAULT_LIMIT):
        if not self.aiohttp:
            return StreamsSession(limit)
        import aiohttp

        if limit == AIOHTTP_DEFAULT_LIMIT:
            return aiohttp.ClientSession()  # the tutorial's call
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))

    @property
    def left_out(self):
        """Sentences on what this run does without the demo extra, and how to get it."""
        out = []
        if not self.requests:
            out.append("requests is not installed: the blocking variants use urllib.request, "
                       "which opens a new connection for every request")
        if not self.aiohttp:
            out.append("aiohttp is not installed: the coroutines use asyncio streams "
                       "(braid.demo.clients.StreamsSession) in its place")
        if not self.matplotlib:
            out.append("matplotlib is not installed: no --plot")
        if out:
            out.append("for the tutorial's own clients and the plot: pip install 'braid[demo]' "
                       "(from a clone: pip install '.[demo]')")
        return out


# ---- the asyncio streams stand-in for aiohttp -------------------------------------------

class HttpError(Exception):
    """A response that could not be read as HTTP/1.1."""


class StreamsSession:
    """The part of aiohttp.ClientSession the tutorial uses, on asyncio streams:

        async with StreamsSession() as session:
            async with session.get(url, timeout=10) as response:
                text = await response.text()

    At most ``limit`` connections at once (0: no limit), kept alive and reused as
    aiohttp's connector does; ``timeout`` (seconds) covers the wait for a connection too, as
    aiohttp's total timeout does. Plain http:// only."""

    def __init__(self, limit=AIOHTTP_DEFAULT_LIMIT):
        self._slots = asyncio.Semaphore(limit) if limit else None
        self._idle = collections.defaultdict(list)  # (host, port) -> [(reader, writer)]
        self.closed = False

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def get(self, url, timeout=None):
        return _StreamsRequest(self, url, timeout)

    async def close(self):
        self.closed = True
        writers = [w for conns in self._idle.values() for _, w in conns]
        self._idle.clear()
        for writer in writers:
            writer.close()
        for writer in writers:
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def _fetch(self, url):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"StreamsSession speaks http:// only, not {url!r}")
        key = (parts.hostname, parts.port or 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        request = (f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                   "Accept: */*\r\n\r\n").encode("latin-1")
        if self._slots is not None:
            await self._slots.acquire()
        try:
            # a kept-alive connection the server has closed fails before any response
            # byte: the request is sent once more, on a new connection
            while self._idle[key]:
                reader, writer = self._idle[key].pop()
                try:
                    return await self._exchange(key, reader, writer, request)
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    writer.close()
                    if getattr(exc, "partial", b""):
                        raise
            reader, writer = await asyncio.open_connection(*key)
            return await self._exchange(key, reader, writer, request)
        finally:
            if self._slots is not None:
                self._slots.release()

    async def _exchange(self, key, reader, writer, request):
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            fields = status_line.split(" ", 2)
            if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
                raise HttpError(f"not an HTTP/1.x response: {status_line!r}")
            headers = {}
            for line in lines:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            if "content-length" not in headers:
                raise HttpError("a response without Content-Length (not supported here)")
            body = await reader.readexactly(int(headers["content-length"]))
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close" or self.closed:
            writer.close()
        else:
            self._idle[key].append((reader, writer))
        return _StreamsResponse(int(fields[1]), headers, body)


class _StreamsRequest:
    """``session.get(...)``: an async context manager giving the response, read whole."""

    def __init__(self, session, url, timeout):
        self._session = session
        self._url = url
        self._timeout = timeout

    async def __aenter__(self):
        if self._timeout is None:
            return await self._session._fetch(self._url)
        async with asyncio.timeout(self._timeout):
            return await self._session._fetch(self._url)

    async def __aexit__(self, *exc):
        return False


class _StreamsResponse:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self._body = body

    async def read(self):
        return self._body

    async def text(self):
        charset = "utf-8"
        ctype = self.headers.get("content-type", "")
        for param in ctype.split(";")[1:]:
            name, _, value = param.strip().partition("=")
            if name.lower() == "charset" and value:
                charset = value.strip('"')
        return self._body.decode(charset, errors="replace")
