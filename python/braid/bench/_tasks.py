"""Trivial task functions for the pool benchmarks, in a module that imports nothing: a worker
that unpickles them by reference (a process, or a sub-interpreter of braid.InterpreterPool)
imports no more than braid.bench itself."""


def noop():
    return None


def pause(seconds):
    """Sleeps: ``workers`` of these at once make a lazily growing pool start every worker."""
    import time

    time.sleep(seconds)
