"""braid.map's async mode: a coroutine function over the items on an event loop, at most
``limit`` coroutines in flight, results in input order.

One task per item, started in input order as earlier ones finish, so a slow item holds up
nothing but the results after it (and at most ``limit`` items are started past it). The
first task to fail cancels all the others, which are awaited before its exception is raised;
the same for the timeout and for the awaiting task being cancelled.
"""

import asyncio
import collections
import itertools
import time

from ._map import ASYNC_LIMIT, _note, timeout_error

__all__ = ["async_results", "run_all", "sync_results"]


class _Window:
    """Tasks of the items in flight, in input order, and the first failure among them."""

    def __init__(self, call, progress):
        self.call = call
        self.progress = progress
        self.limit = call.limit or ASYNC_LIMIT
        self.items = enumerate(call.items)
        self.inflight = collections.deque()  # (index, item, task)
        self.failed = None
        self.waiter = None
        self.loop = asyncio.get_running_loop()
        self.done = 0

    def _settled(self, task):
        if self.failed is None and not task.cancelled() and task.exception() is not None:
            self.failed = task
        head = self.inflight[0][2] if self.inflight else None
        if (task is head or task is self.failed) and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def fill(self):
        for index, item in itertools.islice(self.items, self.limit - len(self.inflight)):
            try:
                task = asyncio.ensure_future(self.call.fn(item), loop=self.loop)
            except Exception as exc:  # fn(item) raised before making a coroutine
                _note(exc, index, item)
                raise
            self.inflight.append((index, item, task))
            task.add_done_callback(self._settled)

    async def next(self, default):
        """The next result in input order, or ``default`` when all are done."""
        if not self.inflight:
            self.fill()
            if not self.inflight:
                return default
        index, item, head = self.inflight[0]
        deadline = self.call.deadline
        while not head.done() and self.failed is None:
            self.waiter = self.loop.create_future()
            timer = None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.waiter = None
                    raise timeout_error(self.done, self.call.total, self.call.timeout)
                timer = self.loop.call_later(left, _wake, self.waiter)
            try:
                await self.waiter
            finally:
                self.waiter = None
                if timer is not None:
                    timer.cancel()
        if self.failed is not None:
            failed = next(entry for entry in self.inflight if entry[2] is self.failed)
            exc = self.failed.exception()
            _note(exc, failed[0], failed[1])
            raise exc
        self.inflight.popleft()
        self.fill()
        self.done += 1
        self.progress.update(1)
        return head.result()

    async def take(self):
        """The next result and those after it that are already done, as a list (empty at
        the end): what a synchronous caller gets per turn of the loop."""
        first = await self.next(_END)
        if first is _END:
            return []
        taken = [first]
        while self.inflight and self.inflight[0][2].done() and self.failed is None:
            taken.append(await self.next(_END))
        return taken

    async def cancel_all(self):
        tasks = [task for _, _, task in self.inflight]
        self.inflight.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


def _wake(waiter):
    if not waiter.done():
        waiter.set_result(None)


_END = object()


def run_all(call, progress):
    """map of a coroutine function from synchronous code: all of it in one run of a
    braid.Loop."""
    _not_in_a_loop()
    from ._loop import run

    return run(async_results(call, progress))


def _not_in_a_loop():
    if _running_loop() is not None:
        raise RuntimeError("braid.map() and braid.imap() cannot run coroutines from inside a running "
                           "event loop; use `await braid.amap(...)` there")


async def async_results(call, progress):
    """All the results, as a list in input order (amap, and map from sync code)."""
    window = _Window(call, progress)
    results = []
    try:
        while (result := await window.next(_END)) is not _END:
            results.append(result)
    except BaseException:
        await window.cancel_all()
        raise
    return results


def sync_results(call, progress):
    """imap of a coroutine function from synchronous code: on a braid.Loop of its own, run
    a turn at a time (lists of the results ready), so imap stays lazy."""
    _not_in_a_loop()
    from ._loop import Loop

    loop = Loop()
    try:
        window = loop.run_until_complete(_make_window(call, progress))
        try:
            while taken := loop.run_until_complete(window.take()):
                yield taken
        except BaseException:
            loop.run_until_complete(window.cancel_all())
            raise
        finally:
            # the generator closed early: the rest is cancelled
            if window.inflight:
                loop.run_until_complete(window.cancel_all())
    finally:
        _shutdown(loop)


async def _make_window(call, progress):
    return _Window(call, progress)


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _shutdown(loop):
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
