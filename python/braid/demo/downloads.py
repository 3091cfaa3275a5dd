"""Experiment 1, threads: the tutorial's "Downloading Multiple Files", from the demo's
server instead of example.com.

Each file is really written to a temporary directory, then its size and SHA-256 are
compared with the file the server meant to send (server.file_body), and the directory is
removed. The variants:

    sequential                the tutorial's run_sequential: a for loop of download_file
    threading.Thread per URL  the tutorial's run_concurrent: a thread per URL, then join
    braid.ThreadPool          pool.map(download_file, urls, filenames) on the default pool
    braid.map                 braid.map(download, jobs): braid measures and chooses
"""

import hashlib
import os
import shutil
import tempfile
import threading

from .measure import Case, CheckFailed, Variant, why as _why

__all__ = ["cases"]

TIMEOUT = 10  # the tutorial's requests.get(url, timeout=10)

_clients = None  # set by cases(): the module-level functions below call through it
_errors = []     # what download_file caught (the tutorial prints it)


# The tutorial's download_file, its prints left out (they would interleave with the
# progress display) and its error kept for the check instead.
def download_file(url, filename):
    try:
        response = _clients.get(url, timeout=TIMEOUT)
        with open(filename, 'wb') as f:
            f.write(response.content)
    except _clients.RequestException as e:
        _errors.append(f"{url}: {_why(e)}")


def download(job):
    """braid.map calls a function of one item: a (url, filename) pair."""
    url, filename = job
    download_file(url, filename)


def _sequential(urls, names):
    for url, name in zip(urls, names):
        download_file(url, name)


def _thread_per_url(urls, names):
    threads = []
    for url, name in zip(urls, names):
        thread = threading.Thread(target=download_file, args=(url, name))
        threads.append(thread)
        thread.start()  # Start the thread
    # Wait for all threads to complete
    for thread in threads:
        thread.join()


def _thread_pool(urls, names):
    import braid

    with braid.ThreadPool() as pool:
        list(pool.map(download_file, urls, names))


def _braid_map(urls, names):
    import braid

    braid.map(download, list(zip(urls, names)))


def cases(opts, server, clients):
    """The downloads case: ``opts.downloads`` files of ``opts.file_size`` bytes, each sent
    ``opts.latency`` ms after its request."""
    global _clients
    _clients = clients
    n, size, latency = opts.downloads, opts.file_size, opts.latency
    urls = [server.url_file(i, size, latency) for i in range(n)]
    want = [hashlib.sha256(server_file(i, size)).hexdigest() for i in range(n)]

    def setup():
        _errors.clear()
        folder = tempfile.mkdtemp(prefix="braid-demo-")
        return folder, [os.path.join(folder, f"file_{i}.zip") for i in range(n)]

    def teardown(ctx):
        shutil.rmtree(ctx[0], ignore_errors=True)

    def check(result, variant, ctx):
        folder, names = ctx
        if _errors:
            raise CheckFailed(f"{len(_errors)} download(s) failed, first: {_errors[0]}")
        for i, name in enumerate(names):
            if not os.path.exists(name):
                raise CheckFailed(f"{os.path.basename(name)} was not written")
            got = os.path.getsize(name)
            if got != size:
                raise CheckFailed(f"{os.path.basename(name)} has {got:,} bytes, not {size:,}")
            digest = hashlib.sha256()
            with open(name, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
            if digest.hexdigest() != want[i]:
                raise CheckFailed(f"{os.path.basename(name)}: SHA-256 differs from the file sent")
        return f"{n:,} files written, sizes and SHA-256 right"

    def on(fn):
        return lambda ctx: fn(urls, ctx[1])

    get = "requests.get" if clients.requests else "urllib"
    variants = [
        Variant("sequential", f"sequential for loop ({get})", "sequential", on(_sequential),
                baseline=True),
        Variant("thread_per_url", "threading.Thread per URL", "threading", on(_thread_per_url)),
        Variant("threadpool", "braid.ThreadPool().map", "threading", on(_thread_pool)),
        Variant("map", "braid.map (auto)", "braid.map", on(_braid_map), is_map=True),
    ]
    title = (f"downloads (threads): {n:,} file(s) of {_bytes(size)}, each sent {latency} ms after "
             f"its request, written to a temporary directory")
    return [Case("downloads", n, title, variants, check, setup, teardown)]


def server_file(i, size):
    from .server import file_body

    return file_body(i, size)


def _bytes(n):
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n:,} bytes"
