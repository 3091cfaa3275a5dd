"""A task module that cannot load in a sub-interpreter: it imports a single-phase-init
extension module (CPython's own test module for that, built with every pyenv CPython)."""

import _testsinglephase  # noqa: F401


def task(x):
    return x + 1


def slow(x):
    """About ten milliseconds of pure Python: CPU-bound enough for braid.map to want workers."""
    n = 0
    for i in range(200_000):
        n += i
    return x
