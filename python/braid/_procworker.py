"""What runs inside a braid.ProcessPool worker process, and the pickling both sides share.

The parent starts each worker as ``python -c "from braid._procworker import main; main()"``
with the shared-memory rings on fds 3-7 (src/python/procproto.h) and its settings in
``BRAID_WORKER_*`` environment variables.
"""

import json
import os
import pickle
import sys
import traceback

MSG_INIT = 1
MSG_CALL = 2
MSG_RESULT = 11
MSG_ERROR = 12
MSG_INIT_FAILED = 13

PROTOCOL = 5


def _cloudpickle():
    try:
        import cloudpickle
    except ImportError:
        return None
    return cloudpickle


_main_importable = {}


def _main_is_importable_by_workers():
    main = sys.modules.get("__main__")
    known = _main_importable.get(id(main))
    if known is None:
        path = getattr(main, "__file__", None)
        known = _main_importable[id(main)] = bool(path) and os.path.exists(path)
    return known


_pickle_dumps = pickle.dumps


def dumps(obj):
    """Pickle with the standard pickler; fall back to cloudpickle (lambdas, closures,
    functions of an interactive __main__) when it fails."""
    try:
        return _pickle_dumps(obj, PROTOCOL)
    except Exception as exc:
        cloudpickle = _cloudpickle()
        if cloudpickle is None:
            raise TypeError(
                f"cannot pickle {type(obj).__name__!s}: {exc}; lambdas, closures and functions "
                "defined interactively need cloudpickle (pip install cloudpickle)") from exc
        return cloudpickle.dumps(obj, protocol=PROTOCOL)


def dumps_task(fn, args, kwargs):
    """The payload of one task: (fn, args, kwargs)."""
    if getattr(fn, "__module__", None) == "__main__" and not _main_is_importable_by_workers():
        # workers cannot import an interactive __main__: send the function by value
        cloudpickle = _cloudpickle()
        if cloudpickle is not None:
            return cloudpickle.dumps((fn, args, kwargs), protocol=PROTOCOL)
    return dumps((fn, args, kwargs))


loads = pickle.loads


class _RemoteTraceback(Exception):
    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


def _rebuild_exception(exc, tb):
    exc.__cause__ = _RemoteTraceback(tb)
    return exc


class _ExceptionWithTraceback:
    """Carries an exception and its worker-side traceback text across the process boundary;
    unpickles as the exception with ``__cause__`` holding the traceback (as
    ProcessPoolExecutor does)."""

    def __init__(self, exc):
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.exc = exc
        self.tb = f'\n"""\n{text}"""'

    def __reduce__(self):
        return _rebuild_exception, (self.exc, self.tb)


def dump_exception(exc):
    try:
        return dumps(_ExceptionWithTraceback(exc))
    except BaseException as err:  # the exception itself does not pickle
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        stand_in = RuntimeError(f"{type(exc).__name__}: {exc} (the exception could not be sent "
                                f"back: {type(err).__name__}: {err})")
        return pickle.dumps(_rebuild_exception(stand_in, f'\n"""\n{text}"""'), protocol=PROTOCOL)


def run_chunk(fn, chunk, star):
    """fn(*args) for each argument tuple of a map chunk (fn(x) for each item when not star):
    (results, None), or (results so far, the exception) when one call raises."""
    results = []
    try:
        if star:
            for args in chunk:
                results.append(fn(*args))
        else:
            for x in chunk:
                results.append(fn(x))
    except Exception as exc:
        return results, _ExceptionWithTraceback(exc)
    return results, None


def _handle(kind, payload):
    if kind == MSG_CALL:
        try:
            fn, args, kwargs = loads(payload)
            result = fn(*args, **kwargs) if kwargs else fn(*args)
        except BaseException as exc:
            return MSG_ERROR, dump_exception(exc)
        try:
            return MSG_RESULT, dumps(result)
        except BaseException as exc:
            return MSG_ERROR, dump_exception(exc)
    if kind == MSG_INIT:
        try:
            initializer, initargs = loads(payload)
            initializer(*initargs)
        except BaseException as exc:
            return MSG_INIT_FAILED, dump_exception(exc)
        return None
    raise RuntimeError(f"braid worker: unknown message type {kind}")


def _fixup_main(path):
    # As multiprocessing's spawn does: run the parent's main script as __mp_main__ so that
    # functions and classes it defines unpickle here; its `if __name__ == "__main__":` part
    # does not run.
    import runpy
    import types

    main = types.ModuleType("__mp_main__")
    sys.modules["__mp_main__"] = main
    main.__dict__.update(runpy.run_path(path, run_name="__mp_main__"))
    sys.modules["__main__"] = main


def main():
    from . import _braid

    env = os.environ
    ppid = int(env.pop("BRAID_WORKER_PPID"))
    ring_bytes = int(env.pop("BRAID_WORKER_RING"))
    syspath = env.pop("BRAID_WORKER_SYSPATH", "")
    main_path = env.pop("BRAID_WORKER_MAIN", "")
    _braid._worker_bind_parent(ppid)  # die with the parent, even if it is SIGKILLed
    import signal
    # Ctrl-C reaches the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if syspath:
        sys.path[:] = syspath.split(os.pathsep)
    argv = env.pop("BRAID_WORKER_ARGV", "")
    if main_path:
        # the script sees the parent's argv, as under multiprocessing's spawn
        saved_argv = sys.argv
        sys.argv = json.loads(argv) if argv else [main_path]
        os.environ["BRAID_WORKER_BOOTSTRAP"] = "1"
        try:
            _fixup_main(main_path)
        except BaseException as exc:  # tasks from other modules still run
            sys.stderr.write(f"braid worker: importing the main script {main_path} as __mp_main__ "
                             f"failed ({type(exc).__name__}: {exc}); functions defined in it will "
                             "not unpickle here\n")
        finally:
            del os.environ["BRAID_WORKER_BOOTSTRAP"]
            sys.argv = saved_argv
    status = _braid._worker_loop(ring_bytes, _handle)
    sys.exit(status or 0)
