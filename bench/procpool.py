#!/usr/bin/env python3
"""braid.ProcessPool vs ProcessPoolExecutor, multiprocessing.Pool, loky and mpire, in one run.

The same as `python -m braid bench procpool`; the code lives in the package
(braid/bench/procpool.py) so an installed braid can run it too, and so the
pools' workers can import the task functions from it.

    python bench/procpool.py [--quick] [--repeat N] [--cases LIST] [--json]
"""

import sys

try:
    from braid.bench.procpool import main
except ImportError as exc:
    sys.exit(f"error: braid is not installed ({exc}); run `pip install .` first")

if __name__ == "__main__":
    sys.exit(main())
