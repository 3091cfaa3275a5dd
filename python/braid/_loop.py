"""braid.Loop: an asyncio event loop whose scheduling core is C (src/python/loop.c).

This first part moves the hot core into C on braid's reactor (src/core/loop.c): the ready
queue, the timers, the poll and the fd watchers that asyncio's transports use. Transports,
servers, subprocesses, signal handlers and the rest are asyncio's own code running on that
core, through the same internal methods asyncio's selector loop uses (_add_reader, ...).
"""

import asyncio
from asyncio import unix_events

from . import _braid

__all__ = ["Loop", "new_event_loop", "install", "run", "EventLoopPolicy"]


class Loop(_braid._LoopCore, unix_events._UnixSelectorEventLoop):
    """An ``asyncio`` event loop with braid's C scheduling core."""

    def __init__(self):
        _braid._LoopCore.__init__(self)
        unix_events._UnixSelectorEventLoop.__init__(self)

    def close(self):
        super().close()  # asyncio's part: the self-pipe, signal handlers, the executor
        self._core_close()


def new_event_loop():
    """A new braid.Loop."""
    return Loop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """The default policy, making braid.Loop instances."""

    _loop_factory = Loop


def install():
    """Makes braid.Loop the loop asyncio creates (asyncio.new_event_loop, asyncio.run)."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None):
    """asyncio.run(main) on a braid.Loop."""
    with asyncio.Runner(debug=debug, loop_factory=Loop) as runner:
        return runner.run(main)
