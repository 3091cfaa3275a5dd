"""braid: concurrency for Python with its engine in C.

Public API: ``braid.ThreadPool``, ``braid.ProcessPool`` and its errors
``braid.WorkerCrashed`` and ``braid.TaskTimeout``, ``braid.shared_array``;
``braid.Loop`` with ``braid.install``, ``braid.run`` and
``braid.new_event_loop`` (its scheduling core is C; its transports are still
asyncio's); ``braid.map``, ``braid.imap`` and ``braid.amap``, which run a function over
items on whichever of these suits the work, measured.
"""

from . import _braid
from ._braid import Future
from ._errors import TaskTimeout, WorkerCrashed
from ._loop import EventLoopPolicy, Loop, install, new_event_loop, run
from ._map import amap, imap, map
from ._procpool import ProcessPool
from ._shared import shared_array
from ._threadpool import ThreadPool

__version__ = "0.1.0"

__all__ = ["EventLoopPolicy", "Future", "Loop", "ProcessPool", "TaskTimeout", "ThreadPool",
           "WorkerCrashed", "__version__", "amap", "imap", "install", "map", "new_event_loop", "run",
           "shared_array"]
