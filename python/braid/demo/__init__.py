"""``python -m braid demo``: the tutorial's three experiments, replayed on this machine.

    downloads  (threads)    the tutorial's file downloads, from a server on 127.0.0.1
    primes     (processes)  the tutorial's is_prime over 1..100,000 and 1..2,000,000
    fetches    (asyncio)    the tutorial's aiohttp + asyncio.gather, at 3 URLs and 10,000

Each variant's result is checked; then the tutorial's comparison table with measured
columns, the rule of thumb as measured here and what braid.map chose. Nothing leaves the
machine: the server (server.py) runs on a braid.Loop in a thread of this process. One module
per experiment; cli.py holds the options and the run.
"""

__all__ = ["main"]


def main(argv=None, *, command=None):
    """Runs the demo with ``argv`` (the arguments after ``demo``); returns the exit status."""
    from .cli import main as _main

    return _main(argv, command=command)
