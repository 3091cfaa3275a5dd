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


def shutdown_on_exit(pool, exc_type):
    """A thread or interpreter pool's with block ends: shutdown(wait=True), after Ctrl-C with
    the queued work cancelled. A Ctrl-C during that wait ends it; if it was the second, an
    interpreter pool's running tasks are interrupted (KeyboardInterrupt) and waited for, and
    interpreter exit waits no more for a thread pool's."""
    interrupted = left_by_ctrl_c(exc_type)
    try:
        pool.shutdown(wait=True, cancel_futures=interrupted)
    except KeyboardInterrupt:
        note_interrupt()
        if interrupted and hasattr(pool, "_interrupt_running"):
            # sub-interpreters: their running tasks are interrupted and soon over (one
            # stuck in C code is waited for until a third Ctrl-C)
            pool._interrupt_running()
            pool.shutdown(wait=True)
        elif interrupted:
            pool._abandon_running()  # threads: exit does not wait for this pool's again
        raise


def left_by_ctrl_c(exc_type):
    """Whether a pool's with block is left by a KeyboardInterrupt; if so, exit treats the
    program as interrupted too (note_interrupt)."""
    interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
    if interrupted:
        note_interrupt()
    return interrupted


def _ended_by_ctrl_c():
    """Whether a KeyboardInterrupt out of the main module ended the program: the exception
    CPython printed last (sys.last_value) is one, and its traceback starts in __main__'s code
    (a script, -c) or in runpy's (-m) -- not one an interactive shell printed and went on."""
    last, tb = getattr(sys, "last_value", None), getattr(sys, "last_traceback", None)
    if type(last) is not KeyboardInterrupt or tb is None:  # CPython's exit status: this type only
        return False
    frame = tb.tb_frame
    return frame.f_globals.get("__name__") == "__main__" or frame.f_code.co_name == "_run_module_as_main"


def _at_exit():
    by_ctrl_c = _ended_by_ctrl_c()
    try:
        _braid._at_exit(_interrupted or by_ctrl_c)
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
