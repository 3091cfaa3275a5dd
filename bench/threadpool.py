#!/usr/bin/env python3
"""braid.ThreadPool vs concurrent.futures.ThreadPoolExecutor, in one run.

The same as `python -m braid bench threadpool`; the code lives in the package
(braid/bench/threadpool.py) so an installed braid can run it too.

    python bench/threadpool.py [--quick] [--repeat N] [--tasks N] [--json]
"""

import sys

try:
    from braid.bench.threadpool import main
except ImportError as exc:
    sys.exit(f"error: braid is not installed ({exc}); run `pip install .` first")

if __name__ == "__main__":
    sys.exit(main())
