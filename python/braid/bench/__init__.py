"""braid's benchmarks, one module per comparison.

Each benchmark runs braid and the standard-library tool it replaces side by
side in one run, so the ratios it prints come from one machine in one state.
Run one with ``python -m braid bench NAME [args]``; ``python -m braid bench``
lists them. Every module here has ``main(argv=None, *, command=None) -> int``
(command: the command line to print in its header; the exit status returned).
"""

import importlib
import os
import sys

# platform and shlex are imported where they are used: a pool worker that unpickles a task
# function from braid.bench._tutorial imports this package, and should not pay for them.

# name -> (module, one-line description). Kept by hand: a benchmark is listed
# only once it exists, and the list is what `python -m braid bench` prints.
BENCHMARKS = {
    "threadpool": (
        "braid.bench.threadpool",
        "braid.ThreadPool vs concurrent.futures.ThreadPoolExecutor "
        "(no-op bulk, round trip, map, sleep and socket I/O)",
    ),
    "procpool": (
        "braid.bench.procpool",
        "braid.ProcessPool vs ProcessPoolExecutor, multiprocessing.Pool, loky and mpire "
        "(round trip, bulk, map, primes, numpy arrays)",
    ),
    "loop": (
        "braid.bench.loop",
        "braid.Loop vs asyncio's loop and uvloop (echo servers against a C floor, "
        "call_soon and sleep(0) scheduling, aiohttp under wrk with and without keep-alive, "
        "10k+ idle connections)",
    ),
    "interpreters": (
        "braid.bench.interpreters",
        "braid.InterpreterPool vs braid.ThreadPool and braid.ProcessPool (round trip, 10,000 in "
        "flight, primes with the pool's start, start to first result, memory per worker)",
    ),
    "map": (
        "braid.bench.map",
        "braid.map (auto and each fixed mode) vs the plain Python a user writes "
        "(primes, sleep, HTTP, tiny items, aiohttp coroutines)",
    ),
}


class BraidMissing(RuntimeError):
    """braid, or the part of it a benchmark measures, cannot be imported (not built or not
    installed)."""


def load_braid(attribute):
    """Imports braid lazily and returns the module, which must have ``attribute``.

    Raises BraidMissing with the reason, so a benchmark can say clearly what is missing
    instead of showing a traceback from deep inside an import.
    """
    try:
        import braid
    except Exception as exc:  # ImportError, or an error raised by the extension
        raise BraidMissing(f"import braid failed: {type(exc).__name__}: {exc}") from exc
    if getattr(braid, attribute, None) is None:
        raise BraidMissing(f"braid (from {getattr(braid, '__file__', '?')}) has no {attribute} yet")
    return braid


def command_line(name, argv):
    """The command to print in a benchmark's header: the real one when run from the shell."""
    import shlex

    if argv is None:
        return shlex.join(getattr(sys, "orig_argv", sys.argv))
    return shlex.join(["python", "-m", "braid", "bench", name, *argv])


def run_main(main_impl, argv, command):
    """main_impl(argv, command) -> exit status, with argparse's exits (--help: 0, a usage
    error: 2) turned into a status too."""
    try:
        return main_impl(argv, command)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2


def machine():
    """What every benchmark's header says of the interpreter and the machine."""
    import platform

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    gil = getattr(sys, "_is_gil_enabled", None)
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "gil": True if gil is None else bool(gil()),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
    }


def get(name):
    """The benchmark module called ``name``; KeyError if there is none."""
    module, _ = BENCHMARKS[name]
    return importlib.import_module(module)
