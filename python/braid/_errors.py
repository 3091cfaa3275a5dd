"""braid's exceptions.

``WorkerCrashed`` is a ``concurrent.futures.process.BrokenProcessPool``, and that module
imports multiprocessing (about 12 ms): the class is made on first use (PEP 562), so that
neither ``import braid`` nor a process pool's first result pays for it before a worker dies.
"""

__all__ = ["WorkerCrashed", "TaskTimeout"]


class TaskTimeout(TimeoutError):
    """A task ran longer than the pool's ``task_timeout``; its worker was killed and replaced."""


def _define_worker_crashed():
    from concurrent.futures.process import BrokenProcessPool

    class WorkerCrashed(BrokenProcessPool):
        """A worker process died while it ran this task.

        ``pid`` is the worker's process id; ``exitcode`` its exit status when it
        exited, or None; ``signal`` the number of the signal that killed it, or
        None. The pool has already replaced the worker and stays usable: unlike
        ProcessPoolExecutor's, a braid pool is not broken by one dead worker. It is
        a ``BrokenProcessPool`` all the same, so that code written for
        ``concurrent.futures`` (``except BrokenProcessPool``, ``except
        BrokenExecutor``) sees the task's failure.
        """

        def __init__(self, message="a worker process died while running this task", pid=None,
                     exitcode=None, signal=None):
            super().__init__(message)
            self.pid = pid
            self.exitcode = exitcode
            self.signal = signal

        def __str__(self):
            how = (f"killed by signal {self.signal}" if self.signal is not None
                   else f"exit code {self.exitcode}" if self.exitcode is not None else "cause unknown")
            return f"{self.args[0]} (pid {self.pid}, {how})"

        def __reduce__(self):
            return (type(self), (self.args[0], self.pid, self.exitcode, self.signal))

    WorkerCrashed.__qualname__ = "WorkerCrashed"  # pickled by reference as braid._errors.WorkerCrashed
    WorkerCrashed.__module__ = __name__
    return WorkerCrashed


def __getattr__(name):
    if name == "WorkerCrashed":
        cls = globals()["WorkerCrashed"] = _define_worker_crashed()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def new_worker_crashed(*args, **kwargs):
    """WorkerCrashed(*args, **kwargs): what the process pool's C half calls when a worker dies."""
    from . import _errors

    return _errors.WorkerCrashed(*args, **kwargs)
