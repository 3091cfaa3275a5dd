"""Experiment 3, asyncio: the tutorial's "Fetching Web Pages with asyncio", from the demo's
server, at a few URLs and at thousands.

The tutorial's program (fetch_url and run_async below: one ClientSession, a coroutine per
URL, asyncio.gather) runs unchanged on asyncio's own event loop (asyncio.run) and on
braid.Loop (braid.run). Its ClientSession() has aiohttp's default connector: at most 100
connections at once, kept alive, every other request waiting for one; its timeout=10 counts
that wait too. The demo keeps that (--connections changes the limit) and gives the thread
pool the same number of threads, so both sides have as many requests in flight. The
variants:

    sequential        one blocking GET after another (a requests.Session); past
                      SEQUENTIAL_SAMPLE URLs, timed on the first ones and scaled
    threads           braid.ThreadPool(connections).map of a blocking GET, a
                      requests.Session per thread (one per thread: a Session is not
                      meant to be shared between threads)
    asyncio           the tutorial's program under asyncio.run
    braid.Loop        the same program under braid.run
    braid.map         braid.map(fetch, urls) of a coroutine function, one ClientSession per
                      event loop: braid.map runs coroutines on a braid.Loop

Every page is compared with the one the server meant to send (server.page_body).
"""

import asyncio
import threading

from .measure import Case, CheckFailed, Variant, why as _why

__all__ = ["cases"]

TIMEOUT = 10            # the tutorial's session.get(url, timeout=10)
SEQUENTIAL_SAMPLE = 50  # URLs a sequential run is timed on when there are more

_clients = None
_limit = 100
_errors = []


# The tutorial's fetch_url and run_async, their prints left out and the error kept for the
# check; the session comes from _clients (aiohttp.ClientSession() when installed).
async def fetch_url(session, url):
    try:
        # session.get() is a non-blocking operation. 'await' pauses this function
        # and lets the event loop run other tasks.
        async with session.get(url, timeout=TIMEOUT) as response:
            # We can also 'await' reading the content
            data = await response.text()
            return data
    except Exception as e:
        _errors.append(f"{url}: {_why(e)}")
        return None


async def run_async(urls):
    # aiohttp.ClientSession is the equivalent of requests.Session for async
    async with _clients.ClientSession(_limit) as session:
        # Create a list of tasks to be run concurrently
        tasks = [fetch_url(session, url) for url in urls]
        # asyncio.gather runs all tasks concurrently and waits for them all to finish
        results = await asyncio.gather(*tasks)
    return results


# ---- blocking GETs, for the sequential and threads variants ------------------------------

_local = threading.local()


def get_page(url):
    """A GET with this thread's session (requests.Session, or urllib's stand-in)."""
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = _clients.Session()
        with _sessions_lock:
            _sessions.append(session)
    try:
        response = session.get(url, timeout=TIMEOUT)
        return response.text
    except _clients.RequestException as e:
        _errors.append(f"{url}: {_why(e)}")
        return None


_sessions = []
_sessions_lock = threading.Lock()


def _close_sessions():
    with _sessions_lock:
        sessions, _sessions[:] = list(_sessions), []
    for session in sessions:
        session.close()


def _sequential(urls):
    try:
        return [get_page(url) for url in urls]
    finally:
        _local.__dict__.pop("session", None)
        _close_sessions()


def _threads(urls):
    import braid

    try:
        with braid.ThreadPool(max_workers=_limit) as pool:
            return list(pool.map(get_page, urls))
    finally:
        _close_sessions()


# ---- braid.map of a coroutine function: a ClientSession per event loop --------------------

_loop_sessions = {}  # event loop -> (session, the async generator that closes it)


async def fetch(url):
    """A GET of a coroutine function, with the ClientSession of the running loop."""
    loop = asyncio.get_running_loop()
    got = _loop_sessions.get(loop)
    if got is None:
        session = _clients.ClientSession(_limit)
        # Closed when the loop shuts down its async generators (braid.map's loop does, as
        # asyncio.run's does): the first step registers the generator with the loop. The
        # generator is kept here: collected early, it would close the session mid-run.
        closer = _close_at_shutdown(loop, session)
        got = _loop_sessions[loop] = (session, closer)  # before the first await
        await closer.asend(None)
    return await fetch_url(got[0], url)


async def _close_at_shutdown(loop, session):
    try:
        yield
    finally:
        _loop_sessions.pop(loop, None)
        await session.close()


def _braid_map(urls):
    import braid

    return braid.map(fetch, urls)


def _on_asyncio(urls):
    return asyncio.run(run_async(urls))


def _on_braid(urls):
    import braid

    return braid.run(run_async(urls))


def cases(opts, server, clients):
    """One case per size in ``opts.fetches``: pages sent ``opts.fetch_latency`` ms after
    their request."""
    global _clients, _limit
    _clients, _limit = clients, opts.connections
    from .server import page_body

    out = []
    for n in opts.fetches:
        urls = [server.url_page(i, opts.fetch_latency) for i in range(n)]
        sample = SEQUENTIAL_SAMPLE if n > SEQUENTIAL_SAMPLE else None

        def setup():
            _errors.clear()

        def check(result, variant, ctx, n=n, sample=sample):
            want = n if variant.sample is None else variant.sample
            if not isinstance(result, list) or len(result) != want:
                raise CheckFailed(f"{len(result) if isinstance(result, list) else result!r} "
                                  f"results for {want:,} URLs")
            failed = sum(r is None for r in result)
            if failed:
                hint = ""
                if variant.pillar == "asyncio" and any("TimeoutError" in e for e in _errors):
                    hint = (f" (the timeout of {TIMEOUT} s counts the wait for one of the "
                            f"{_limit} connections, and gather starts every request at once)")
                raise CheckFailed(f"{failed:,} of {want:,} fetches failed, first: "
                                  f"{_errors[0]}{hint}")
            for i, text in enumerate(result):
                if text != page_body(i):
                    raise CheckFailed(f"page {i} is not the page the server sent")
            of = f" (the first {want:,} of {n:,})" if variant.sample else ""
            return f"{want:,} pages{of}, every one as sent"

        def on(fn, urls=urls):
            return lambda ctx: fn(urls)

        client = "requests" if clients.requests else "urllib"
        seq_label = f"sequential ({client})"
        if sample:
            seq_label = f"sequential ({client}, {sample} timed, scaled)"
            seq_run = (lambda ctx, urls=urls, k=sample: _sequential(urls[:k]))
        else:
            seq_run = on(_sequential)
        client_async = "aiohttp" if clients.aiohttp else "asyncio streams"
        variants = [
            Variant("sequential", seq_label, "sequential", seq_run, baseline=True, sample=sample),
            Variant("threads", f"braid.ThreadPool({_limit}), {client}", "threading", on(_threads)),
            Variant("asyncio", f"asyncio.run + gather ({client_async})", "asyncio",
                    on(_on_asyncio)),
            Variant("braid_loop", f"braid.run + gather ({client_async})", "asyncio",
                    on(_on_braid)),
            Variant("map", "braid.map (auto, async def)", "braid.map", on(_braid_map),
                    is_map=True),
        ]
        title = (f"fetches (asyncio): {n:,} page(s) of 2 KiB, each sent {opts.fetch_latency} ms "
                 f"after its request; at most {_limit} connections at once")
        out.append(Case("fetches", n, title, variants, check, setup))
    return out
