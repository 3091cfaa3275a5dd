#!/usr/bin/env python3
"""braid.map (auto and each fixed mode) against the plain Python a user writes, in one run.

The same as `python -m braid bench map`; the code lives in the package
(braid/bench/map.py) so an installed braid can run it too, and so the
process workers can import the task functions from it.

    python bench/map.py [--quick] [--repeat N] [--cases LIST] [--json]
"""

import sys

try:
    from braid.bench.map import main
except ImportError as exc:
    sys.exit(f"error: braid is not installed ({exc}); run `pip install .` first")

if __name__ == "__main__":
    sys.exit(main())
