"""The pickling both sides of a braid.InterpreterPool share, and what its workers run.

The main interpreter calls ``dumps_task`` and ``dumps_setup``; a worker's sub-interpreter
(src/python/interpworker.c) imports this module only when it needs more than the C pickler:
a result that is not a plain value, an exception, an initializer. It loads nothing else at
import: a sub-interpreter pays for every module it imports, once per worker.
"""

try:
    from _pickle import dumps as _pickle_dumps
except ImportError:  # an interpreter without the C pickler
    from pickle import dumps as _pickle_dumps

PROTOCOL = 5
# Buffers from this size on cross by reference: the worker reads the caller's memory through
# a read-only view instead of a copy inside the pickle.
OOB_MIN_BYTES = 1 << 16


def _cloudpickle():
    try:
        import cloudpickle
    except ImportError:
        return None
    return cloudpickle


def _by_value(obj, cause):
    cloudpickle = _cloudpickle()
    if cloudpickle is None:
        raise TypeError(
            f"cannot pickle {type(obj).__name__!s}: {cause}; lambdas, closures and functions "
            "defined in __main__ need cloudpickle to reach a sub-interpreter "
            "(pip install cloudpickle)") from (cause if isinstance(cause, BaseException) else None)
    import sys

    mp_main = sys.modules.get("__mp_main__")
    if mp_main is not None and mp_main.__name__ == "__mp_main__":
        # in a process-pool worker (braid's or multiprocessing's), the parent's script runs
        # as __mp_main__; cloudpickle sends only __main__ by value, and a sub-interpreter
        # has no __mp_main__ to import
        cloudpickle.register_pickle_by_value(mp_main)
    return cloudpickle


def dumps_task(fn, args, kwargs):
    """The payload of a task: bytes, or (bytes, [PickleBuffer]) when large buffers go out of
    band (the pool holds them until the task is settled). Functions and classes of __main__
    go by value: a sub-interpreter's __main__ is empty."""
    buffers = []

    def callback(buf):
        try:
            raw = buf.raw()
        except BufferError:  # not contiguous: in band
            return True
        if raw.nbytes < OOB_MIN_BYTES:
            return True
        buffers.append(buf)
        return False

    obj = (fn, args, kwargs)
    try:
        data = _pickle_dumps(obj, PROTOCOL, buffer_callback=callback)
        cause = "it names __main__" if b"__main__" in data or b"__mp_main__" in data else None
    except Exception as exc:
        cause = exc
    if cause is not None:
        buffers.clear()
        data = _by_value(obj, cause).dumps(obj, PROTOCOL, buffer_callback=callback)
    return (data, buffers) if buffers else data


def dumps_setup(path, initializer, initargs):
    """What every worker runs first: (sys.path, the pickled initializer call or None)."""
    init = None
    if initializer is not None:
        call = (initializer, tuple(initargs))
        try:
            init = _pickle_dumps(call, PROTOCOL)
            if b"__main__" in init or b"__mp_main__" in init:
                raise TypeError("it names __main__")
        except Exception as exc:
            init = _by_value(call, exc).dumps(call, PROTOCOL)
    return _pickle_dumps((list(path), init), PROTOCOL)


# ---- in a worker's sub-interpreter ------------------------------------------------------

def run_initializer(data):
    from _pickle import loads

    initializer, initargs = loads(data)
    initializer(*initargs)


def dumps_result(result):
    """A result that is not a plain value: the C pickler, else cloudpickle. An exception
    from both reaches the caller as the task's exception."""
    try:
        return _pickle_dumps(result, PROTOCOL)
    except Exception as exc:
        cloudpickle = _cloudpickle()
        if cloudpickle is None:
            raise
        try:
            return cloudpickle.dumps(result, PROTOCOL)
        except Exception:
            raise exc from None


def dump_exception(exc):
    from ._procworker import dump_exception

    return dump_exception(exc)


def describe(exc):
    from ._procworker import _describe

    return _describe(exc)


def import_failed(exc):
    """The ImportError of a task (unpickling it, or an import it runs) because a module it
    needs cannot load in a sub-interpreter: it names the module and says where the task can
    run instead. Other import errors (a module that does not exist) are left as they are."""
    text = str(exc)
    if "subinterpreter" not in text:
        return exc
    name = getattr(exc, "name", None)
    if not name:  # "module X does not support loading in subinterpreters", maybe quoted
        import re  # (numpy's own ImportError ends with it, its name attribute unset)

        found = re.search(r"module (\S+) does not support loading in subinterpreters", text)
        name = found.group(1) if found else "?"
    err = ImportError(
        f"{exc} -- the task needs the module {name!r}, which cannot be imported in a "
        "sub-interpreter (an extension module without multi-phase init or per-interpreter GIL "
        "support); run this task with braid.ProcessPool instead", name=name)
    err.__cause__ = exc
    return err


def probe_load(payload, name):
    """In a worker: None if the pickled (fn, args, kwargs) ``payload`` loads here, else why
    not, naming the module ``name`` it comes from (braid.map's auto mode asks before it sends
    CPU-bound work to sub-interpreters)."""
    from _pickle import loads

    try:
        loads(payload)
    except ImportError as exc:
        return f"module {name} cannot be imported in a sub-interpreter ({exc})"
    except Exception as exc:  # noqa: BLE001 -- loading it raised something else here
        return f"module {name} does not load in a sub-interpreter ({type(exc).__name__}: {exc})"
    return None
