"""Task functions for test_interppool.py: a module the workers' sub-interpreters import by name
(the tests put ``tests/`` on ``sys.path``, which each worker is given at start)."""

import sys
import time

_initialized = []


def square(x):
    return x * x


def add(a, b=0, *, c=0):  # noqa: D103
    return a + b + c


def fail(message):
    raise ValueError(message)


def spin(seconds):
    """Pure Python until ``seconds`` have passed: it comes back to the eval loop all the time."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def sleep_in_c(seconds):
    """Stays in C (time.sleep) for ``seconds``: an interrupt waits until it returns."""
    time.sleep(seconds)
    return "slept"


def where():
    """(whether pytest is imported here, this thread's id): False in a worker's interpreter."""
    import threading

    return "pytest" in sys.modules, threading.get_ident()


def import_single_phase():
    """Imports, as it runs, a module that cannot load in a sub-interpreter (this module can)."""
    import _testsinglephase  # noqa: F401

    return "imported"


def init(value):
    _initialized.append(value)


def init_fail():
    raise RuntimeError("initializer says no")


def initialized():
    return list(_initialized)


def modules():
    return sorted(sys.modules)


def buffer_info(buf):
    view = memoryview(buf)
    return type(buf).__name__, view.readonly, view.nbytes, bytes(view[:4]), bytes(view[-4:])


def use_braid_inside():
    """braid itself inside a worker's sub-interpreter: its extension and a thread pool there."""
    import braid
    import braid._braid

    with braid.ThreadPool(2) as pool:
        squares = list(pool.map(square, range(5)))
    return braid._braid.__name__, squares


def run_braid_loop(n):
    """braid.Loop inside a worker's sub-interpreter: timers, tasks and a socket pair."""
    import asyncio
    import socket

    import braid

    async def main():
        a, b = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=a)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.001)
        await loop.sock_sendall(b, b"x" * n)
        got = await reader.readexactly(n)
        writer.close()
        b.close()
        return type(loop).__name__, len(got)

    return braid.run(main())


class Unpicklable:
    def __reduce__(self):
        raise TypeError("no pickling here")


def return_unpicklable():
    return Unpicklable()


def raise_unpicklable():
    class Local(Exception):
        pass

    err = Local("local exception")
    err.lock = __import__("threading").Lock()
    raise err


def burn(x):
    """About ten milliseconds of pure Python: CPU-bound enough for braid.map to want workers."""
    n = 0
    for i in range(200_000):
        n += i
    return x


def sum_in_c(n):
    """sum(range(n)): a loop in C that holds its interpreter's GIL and never reaches the eval
    loop, so an interrupt cannot land until it returns."""
    return sum(range(n))


def identity(x, key=None):
    return x, key


def _make_plus(n):
    def plus(x):
        return x + n

    plus.__name__ = plus.__qualname__ = f"plus_{n}"
    return plus


# 300 distinct module-level functions, each found by name (more than a pool caches)
for _n in range(300):
    globals()[f"plus_{_n}"] = _make_plus(_n)
del _n


def return_lambda(n):
    """A result _pickle cannot write: it goes back through cloudpickle's Pickler."""
    return lambda: n
