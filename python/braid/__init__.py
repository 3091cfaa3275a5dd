"""braid: concurrency for Python with its engine in C.

Public API: ``braid.ThreadPool``, ``braid.ProcessPool`` and its errors
``braid.WorkerCrashed`` and ``braid.TaskTimeout``, ``braid.InterpreterPool`` (3.12+),
``braid.shared_array``;
``braid.Loop`` with ``braid.install``, ``braid.run`` and
``braid.new_event_loop`` (its scheduling core is C; its transports are still
asyncio's); ``braid.map``, ``braid.imap`` and ``braid.amap``, which run a function over
items on whichever of these suits the work, measured.
"""

import importlib

__version__ = "0.1.0"

# Everything else is imported on first use (PEP 562): `import braid` stays cheap, and a
# process-pool worker, which imports braid to run its tasks, does not load asyncio and the
# pools it never uses.
_LAZY = {
    "Future": "._braid",
    "ThreadPool": "._threadpool",
    "ProcessPool": "._procpool",
    "InterpreterPool": "._interppool",
    "shared_array": "._shared",
    "EventLoopPolicy": "._loop", "Loop": "._loop", "install": "._loop",
    "new_event_loop": "._loop", "run": "._loop",
    "map": "._map", "imap": "._map", "amap": "._map",
    "TaskTimeout": "._errors", "WorkerCrashed": "._errors",  # WorkerCrashed is a BrokenProcessPool
}

__all__ = ["EventLoopPolicy", "Future", "InterpreterPool", "Loop", "ProcessPool", "TaskTimeout", "ThreadPool",
           "WorkerCrashed", "__version__", "amap", "imap", "install", "map", "new_event_loop", "run",
           "shared_array"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'braid' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
