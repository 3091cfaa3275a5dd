"""Interpreter exit and os.fork() for every pool kind, registered once (src/python/pools.c)."""

import os
import sys
import threading

from . import _braid

# Set when a KeyboardInterrupt went through a pool (a with block, a map being consumed): at
# exit, queued work is then cancelled and process workers are killed after a short grace
# instead of everything submitted finishing first.
_interrupted = False


def note_interrupt():
    global _interrupted
    _interrupted = True


def left_by_ctrl_c(exc_type):
    """Whether a pool's with block is left by a KeyboardInterrupt; if so, exit treats the
    program as interrupted too (note_interrupt)."""
    interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
    if interrupted:
        note_interrupt()
    return interrupted


def _at_exit():
    last = getattr(sys, "last_value", None)  # a KeyboardInterrupt that ended the program
    _braid._at_exit(_interrupted or isinstance(last, KeyboardInterrupt))


# Runs before threading joins its own threads at interpreter exit, as the stdlib executors'
# hooks do, so that a worker thread still running Python code is waited for first.
threading._register_atexit(_at_exit)
# A forked child has neither the parent's worker threads nor its worker processes: its pools
# refuse work with a BrokenExecutor instead of queueing tasks nobody will run.
os.register_at_fork(after_in_child=_braid._after_fork_child)
