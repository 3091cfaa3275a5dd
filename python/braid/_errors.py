"""braid's exceptions."""

from concurrent.futures.process import BrokenProcessPool

__all__ = ["WorkerCrashed", "TaskTimeout"]


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


class TaskTimeout(TimeoutError):
    """A task ran longer than the pool's ``task_timeout``; its worker was killed and replaced."""
