#!/usr/bin/env python3
"""braid.Loop vs asyncio's loop and uvloop, with a plain C echo server as the floor, in one run.

The same as `python -m braid bench loop`; the code lives in the package
(braid/bench/loop.py, with the C load generator and floor server in
braid/bench/loop_c/) so an installed braid can run it too.

    python bench/loop.py [--quick] [--repeat N] [--sizes 1,10,100] [--cases LIST] [--json]
"""

import sys

try:
    from braid.bench.loop import main
except ImportError as exc:
    sys.exit(f"error: braid is not installed ({exc}); run `pip install .` first")

if __name__ == "__main__":
    sys.exit(main())
