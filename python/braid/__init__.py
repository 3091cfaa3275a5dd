"""braid: concurrency for Python with its engine in C.

Public API: ``braid.ThreadPool``, ``braid.ProcessPool`` and its errors
``braid.WorkerCrashed`` and ``braid.TaskTimeout``; ``braid.Loop``,
``braid.install``, ``braid.run`` and ``braid.map`` follow in later releases.
"""

from . import _braid
from ._braid import Future
from ._errors import TaskTimeout, WorkerCrashed
from ._procpool import ProcessPool
from ._shared import shared_array
from ._threadpool import ThreadPool

__version__ = "0.1.0"

__all__ = ["Future", "ProcessPool", "TaskTimeout", "ThreadPool", "WorkerCrashed", "__version__",
           "shared_array"]
