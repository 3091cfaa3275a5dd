"""braid.map's dask mode: the same call on a Dask distributed cluster.

Items travel in batches, sized as joblib's Dask backend does: a task per item would spend
more on the scheduler (about a millisecond a task) than on small work, so the first batches
hold one item each and measure the work; later batches hold about BATCH_S of it, never so
many that the cluster's threads run out of batches before the end. Results come back in
input order, identical to a local run; the first failure cancels the batches in flight.
"""

import math
import time

from ._map import _chunks, _count, _report, ordered, run_chunk

__all__ = ["dask_results"]

BATCH_S = 0.5            # wall time aimed at per batch on a worker
BATCHES_PER_THREAD = 4   # with a known number of items: batches enough to share out
CONNECT_TIMEOUT_S = 10.0  # an address that does not answer, when the map has no timeout


def timed_chunk(fn, items, start):
    """run_chunk on a Dask worker, with the seconds it took: (results, seconds)."""
    t0 = time.perf_counter()
    results = run_chunk(fn, items, start)
    return results, time.perf_counter() - t0


def _connect(address, timeout):
    try:
        import distributed
    except ImportError as exc:
        raise ImportError("mode='dask' needs Dask distributed: pip install 'braid[dask]'") from exc
    if address is None:
        return None
    if not isinstance(address, str):
        raise TypeError(f"address must be a string such as 'tcp://host:8786', not {type(address).__name__}")
    wait = CONNECT_TIMEOUT_S if timeout is None else max(timeout, 0.1)
    try:
        return distributed.Client(address, timeout=wait, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(f"braid.map: no Dask scheduler answered at {address} within "
                              f"{wait:g} s ({exc})") from exc


class _Batches:
    """The batch size, learnt from the batches that came back."""

    def __init__(self, call, threads):
        self.size = call.chunksize or 1
        self.fixed = call.chunksize is not None
        self.total = call.total
        self.threads = threads
        self.items = 0
        self.seconds = 0.0

    def learn(self, results, seconds):
        if self.fixed or not results:
            return
        self.items += len(results)
        self.seconds += seconds
        each = self.seconds / self.items
        size = math.ceil(BATCH_S / each) if each > 0 else 1 << 20
        if self.total is not None:
            size = min(size, math.ceil(self.total / (BATCHES_PER_THREAD * self.threads)))
        self.size = max(1, size)

    def chunks(self, items):
        start = 0
        while True:
            got = next(_chunks(items, self.size, start), None)
            if got is None:
                return
            yield got
            start += len(got[1])


def dask_results(call, progress):
    """The results generator of a dask-mode map or imap."""
    own = call.client is None
    client = _connect(call.address, call.timeout) if own else call.client
    if client is None:
        raise ValueError("mode='dask' needs client= (a distributed.Client) or address=")
    try:
        threads = sum(client.nthreads().values()) or 1
        batches = _Batches(call, threads)
        size = f"{batches.size:,} items" if batches.fixed else f"about {BATCH_S:g} s of work"
        _report(call, f"braid.map: {_count(call)} → dask on {client.scheduler.address}, "
                      f"{threads} worker threads, batches of {size}")
        items = call.items

        def submit(start, chunk):
            return client.submit(timed_chunk, call.fn, chunk, start, pure=False)

        def failed(future):
            return future.status in ("error", "cancelled", "lost")

        def unwrap(value):
            results, seconds = value
            batches.learn(results, seconds)
            return results

        yield from ordered(submit, batches.chunks(items), 2 * threads, deadline=call.deadline,
                           timeout=call.timeout, progress=progress, abort=lambda: None,
                           stopper=call.stopper, failed=failed, total=call.total, unwrap=unwrap)
    finally:
        if own:
            client.close()
