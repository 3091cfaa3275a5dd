#!/usr/bin/env python3
"""braid.ProcessPool vs ProcessPoolExecutor, multiprocessing.Pool, loky and mpire, in one run.

The same as `python -m braid bench procpool`; the code lives in the package
(braid/bench/procpool.py) so an installed braid can run it too, and so the
pools' workers can import the task functions from it.

    python bench/procpool.py [--quick] [--repeat N] [--cases LIST] [--json]

Quote figures from `python -m braid bench procpool`: run as this script, the pools whose
workers are fresh interpreters (braid, spawn, forkserver) import the script as __mp_main__ in
every worker, and with it braid.bench.procpool, which adds to the primes_e2e case's times.
"""

import sys

try:
    from braid.bench.procpool import main
except ImportError as exc:
    sys.exit(f"error: braid is not installed ({exc}); run `pip install .` first")

if __name__ == "__main__":
    sys.exit(main())
