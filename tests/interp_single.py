"""A task module that cannot load in a sub-interpreter: it imports a single-phase-init
extension module (CPython's own test module for that, built with every pyenv CPython)."""

import _testsinglephase  # noqa: F401


def task(x):
    return x + 1
