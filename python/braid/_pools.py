"""Interpreter exit and os.fork() for every pool kind, registered once (src/python/pools.c)."""

import os
import sys
import threading

from . import _braid

# Set when a KeyboardInterrupt went through a pool (a with block, a map being consumed): at
# exit, queued work is then cancelled and process workers are killed after a short grace
# instead of everything submitted finishing first.
_interrupted = False
# Set when a second Ctrl-C ended a with block's wait for running tasks: exit then does not wait
# for a thread pool's running tasks again, and interrupts an interpreter pool's (process pools'
# workers are killed anyway; src/python/pools.c).
_insisted = False


def note_interrupt():
    global _interrupted
    _interrupted = True


def shutdown_on_exit(pool, exc_type):
    """A thread or interpreter pool's with block ends: shutdown(wait=True), after Ctrl-C with
    the queued work cancelled. A Ctrl-C during that wait ends it; if it was the second, an
    interpreter pool's running tasks are interrupted (KeyboardInterrupt) and waited for, and
    interpreter exit waits no more for a thread pool's."""
    interrupted = left_by_ctrl_c(exc_type)
    try:
        pool.shutdown(wait=True, cancel_futures=interrupted)
    except KeyboardInterrupt:
        global _insisted
        _insisted = _insisted or interrupted
        note_interrupt()
        if interrupted and hasattr(pool, "_interrupt_running"):
            # sub-interpreters: their running tasks are interrupted and soon over (one
            # stuck in C code is waited for until a third Ctrl-C)
            pool._interrupt_running()
            pool.shutdown(wait=True)
        raise


def left_by_ctrl_c(exc_type):
    """Whether a pool's with block is left by a KeyboardInterrupt; if so, exit treats the
    program as interrupted too (note_interrupt)."""
    interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
    if interrupted:
        note_interrupt()
    return interrupted


def _at_exit():
    last = getattr(sys, "last_value", None)  # a KeyboardInterrupt that ended the program
    by_ctrl_c = isinstance(last, KeyboardInterrupt)
    try:
        _braid._at_exit(_interrupted or by_ctrl_c, not _insisted)
    except KeyboardInterrupt:
        # a Ctrl-C during this wait ends it: queued work is cancelled, process workers are
        # killed, tasks in sub-interpreters interrupted, and running threads are left to the
        # process's end
        by_ctrl_c = True
        _braid._at_exit(True, False)
    if by_ctrl_c:
        _keep_exit_status_of_ctrl_c()


def _keep_exit_status_of_ctrl_c():
    # A program that a KeyboardInterrupt ended exits with SIGINT's status (130 in a shell), by
    # a flag of CPython's that every exec() or eval() of source text clears (pythonrun.c,
    # run_eval_code_obj). Code that ran while exit waited for the pools may have done that
    # (a worker's death makes WorkerCrashed, whose first use imports concurrent.futures.process,
    # whose imports build namedtuples with eval()), and the program would exit with 1. The
    # flag is set again the one way Python code can: a KeyboardInterrupt out of exec'd source.
    # Not in an interactive session, where a Ctrl-C at the prompt earlier is not an exit.
    if sys.flags.interactive or hasattr(sys, "ps1"):
        return
    try:
        exec("raise KeyboardInterrupt")
    except KeyboardInterrupt:
        pass


# Runs before threading joins its own threads at interpreter exit, as the stdlib executors'
# hooks do, so that a worker thread still running Python code is waited for first.
threading._register_atexit(_at_exit)
# A forked child has neither the parent's worker threads nor its worker processes: its pools
# refuse work with a BrokenExecutor instead of queueing tasks nobody will run.
os.register_at_fork(after_in_child=_braid._after_fork_child)
