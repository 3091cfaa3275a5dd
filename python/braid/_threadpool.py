"""braid.ThreadPool: the Python face of the C thread pool (src/python/threadpool.c)."""

import concurrent.futures
import threading

from . import _braid, _pools

__all__ = ["ThreadPool"]


class ThreadPool(_braid._ThreadPoolCore, concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` running calls on a pool of threads.

    A drop-in for ``ThreadPoolExecutor(max_workers, thread_name_prefix,
    initializer, initargs)``. Its futures are ``concurrent.futures.Future``
    instances (``braid.Future``, kept in C), so ``wait``, ``as_completed``,
    ``asyncio.wrap_future`` and ``loop.run_in_executor`` accept them.

    ``map`` is 3.14's on every Python: every task is submitted at the call,
    and ``buffersize=N`` keeps at most N tasks submitted ahead of the results
    handed out, reading the input lazily (endless iterables work).

    Differences from the stdlib, all on the side of safety:

    * ``submit`` checks that ``fn`` is callable (TypeError at once);
    * ``map`` takes ``chunksize`` (items per task; the stdlib ignores it);
    * a cancelled or shut-down future is reported to ``wait`` and
      ``as_completed`` at once.
    """

    def __init__(self, max_workers=None, thread_name_prefix="", initializer=None, initargs=()):
        if thread_name_prefix is None:  # ThreadPoolExecutor's default too
            thread_name_prefix = ""
        super().__init__(max_workers, thread_name_prefix, initializer, initargs)

    def __repr__(self):
        return f"<braid.ThreadPool max_workers={self.max_workers} threads={self.threads}>"

    def __exit__(self, exc_type, exc_val, exc_tb):
        # Ctrl-C in the with block: queued work is cancelled and the wait is only for the
        # tasks already running (threads cannot be stopped); a second Ctrl-C ends that wait.
        # Otherwise, as ThreadPoolExecutor: everything submitted finishes.
        _pools.shutdown_on_exit(self, exc_type)
        return False


def _worker_started(name):
    # Registers the engine thread with `threading` under the pool's name, as
    # ThreadPoolExecutor's threads are, so current_thread().name is right.
    thread = threading._DummyThread()
    thread.name = name
    return thread


def _worker_exiting():
    with threading._active_limbo_lock:
        threading._active.pop(threading.get_ident(), None)


_braid._set_worker_hooks(_worker_started, _worker_exiting)
