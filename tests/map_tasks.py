"""Functions the braid.map tests run, at module level so worker processes can import them."""

import asyncio
import os
import threading
import time

from procpool_tasks import append_line


def square(x):
    return x * x


def where(x):
    """(x, pid, thread id): which process and thread ran item x."""
    return x, os.getpid(), threading.get_ident()


def busy_where(x, seconds=0.01):
    """CPU-bound for ``seconds``, then where()."""
    end = time.thread_time() + seconds
    n = 0
    while time.thread_time() < end:
        n += 1
    return where(x)


def sleepy_where(x, seconds=0.01):
    time.sleep(seconds)
    return where(x)


def fail_at(x, bad=37):
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x * 2


def record(path, x):
    """Appends x to the file at ``path`` (one line per call, atomic with O_APPEND)."""
    append_line(path, str(x))
    return x


class Recorder:
    """A picklable callable: records every call to its file, returns x + 1."""

    def __init__(self, path, seconds=0.0, busy=False):
        self.path = str(path)
        self.seconds = seconds
        self.busy = busy

    def __call__(self, x):
        if self.busy:
            busy_where(x, self.seconds)
        elif self.seconds:
            time.sleep(self.seconds)
        result = x + 1  # a TypeError for a str item, before anything is recorded
        append_line(self.path, str(x))
        return result


def record_pid_and_sleep(path, x):
    append_line(path, str(os.getpid()))
    time.sleep(60)
    return x


async def async_record_pid_and_sleep(path, x):
    append_line(path, str(os.getpid()))
    await asyncio.sleep(60)
    return x


async def async_double(x):
    await asyncio.sleep(0.001 * (x % 3))
    return 2 * x


async def async_where(x):
    await asyncio.sleep(0)
    return x, type(asyncio.get_running_loop()).__name__


async def async_fail_at(x, bad=5):
    await asyncio.sleep(0.001)
    if x == bad:
        raise KeyError(x)
    return x
