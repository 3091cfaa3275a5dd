"""braid: concurrency for Python with its engine in C.

Public API: ``braid.ThreadPool`` (now); ``braid.Loop``, ``braid.install``,
``braid.run``, ``braid.ProcessPool``, ``braid.map``, ``braid.WorkerCrashed``
and ``braid.TaskTimeout`` follow in later releases.
"""

from . import _braid
from ._braid import Future
from ._threadpool import ThreadPool

__version__ = "0.1.0"

__all__ = ["Future", "ThreadPool", "__version__"]
