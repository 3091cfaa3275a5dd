"""``python -m braid``: see braid.cli."""

import sys

from braid.cli import main

if __name__ == "__main__":
    sys.exit(main())
