"""braid's benchmarks, one module per comparison.

Each benchmark runs braid and the standard-library tool it replaces side by
side in one run, so the ratios it prints come from one machine in one state.
Run one with ``python -m braid bench NAME [args]``; ``python -m braid bench``
lists them. Every module here has ``main(argv=None, *, command=None) -> int``
(command: the command line to print in its header; the exit status returned).
"""

import importlib

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
}


def get(name):
    """The benchmark module called ``name``; KeyError if there is none."""
    module, _ = BENCHMARKS[name]
    return importlib.import_module(module)
