"""What runs inside a braid.ProcessPool worker process, and the pickling both sides share.

The parent starts each worker as ``python -c "from braid._procworker import main; main()"``
with the shared-memory rings on fds 3-7 (include/braid.h, the BR_PP_ protocol) and its settings in
``BRAID_WORKER_*`` environment variables.

A worker imports only what it runs: this module loads nothing at import beyond os and sys
(loaded by every interpreter) and the C pickler. pickle.py itself, json, traceback and
collections would bring in re, enum and functools, which together cost a worker more than
starting its interpreter; what needs them imports them when it runs.
"""

import os
import sys

try:
    from _pickle import dumps as _pickle_dumps, loads as _pickle_loads
except ImportError:  # an interpreter without the C pickler
    from pickle import dumps as _pickle_dumps, loads as _pickle_loads

from ._braid import PP_MSG_CALL as MSG_CALL
from ._braid import PP_MSG_ERROR as MSG_ERROR
from ._braid import PP_MSG_INIT as MSG_INIT
from ._braid import PP_MSG_INIT_FAILED as MSG_INIT_FAILED
from ._braid import PP_MSG_RESULT as MSG_RESULT

PROTOCOL = 5
IN_WORKER = False  # True in a ProcessPool worker process


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


# ---- out-of-band buffers ---------------------------------------------------------------
# Large contiguous buffers (NumPy arrays, bytearrays, ...) do not go through the rings: with
# pickle protocol 5 each is handed to a buffer callback, written once into a memfd, and the
# message carries only (pid, fd, inode, size, offset, length). The receiver maps the memfd
# through /proc/<pid>/fd/<fd> and unpickles with those mappings as the buffers: no further
# copy. The sender keeps the memfds open until the receiver has mapped them: the parent until
# the task is settled, a worker until the parent acknowledges the result
# (include/braid.h, BR_PP_ACK_INDEX).
#
# A worker maps its task's buffers shared (the memfd belongs to that message alone), and
# when its result is, or is a view of, a buffer it received for the task it is running, the
# result names the parent's memfd again instead of copying it back: an in-place transform of
# a large array returns without a copy.

OOB_MIN_BYTES = 1 << 20
_received = []  # in a worker: (start, end, pid, fd, ino, size) of this task's mapped buffers


def _address(raw):
    np = sys.modules.get("numpy")
    if np is None:
        return None
    return np.frombuffer(raw, np.uint8).ctypes.data if raw.nbytes else None


class _Held:
    """The sender's memfds of one message; closed when this object goes."""

    __slots__ = ("fds",)

    def __init__(self):
        self.fds = []

    def close(self):
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    __del__ = close


class _Envelope:
    """A pickle whose large buffers are in memfds: (pid, fd, inode, size, offset, length)."""

    __slots__ = ("data", "segments")

    def __init__(self, data, segments):
        self.data, self.segments = data, segments

    def __reduce__(self):
        return _Envelope, (self.data, self.segments)

    def open(self):
        return _pickle_loads(self.data, buffers=[_map(*seg) for seg in self.segments])


def _map(pid, fd, ino, size, offset, length):
    import mmap

    if size == 0:
        return bytearray()
    f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    try:
        if os.fstat(f).st_ino != ino:
            raise RuntimeError(f"an out-of-band buffer of process {pid} was released too early")
        # mapped lazily: the kernel's fault-around fills 16 pages per read fault, which beat
        # MAP_POPULATE even for a full read (7.5 vs 8.5 ms for 64 MiB), and a task that
        # reads part of the buffer pays for that part only
        mm = mmap.mmap(f, size, flags=mmap.MAP_SHARED)
    finally:
        os.close(f)
    if IN_WORKER and pid != os.getpid():
        start = _address(memoryview(mm))
        if start is not None:
            _received.append((start, start + size, pid, fd, ino, size))
    view = memoryview(mm)
    return view if offset == 0 and length == size else view[offset:offset + length]


def _pack(dump, obj):
    """dump(obj) with large buffers out of band: bytes, or (bytes, _Held)."""
    held = _Held()
    segments = []

    def callback(buf):
        try:
            raw = buf.raw()
        except BufferError:  # not contiguous: in band
            return True
        n = raw.nbytes
        if n < OOB_MIN_BYTES:
            return True
        if _received:  # a worker sending back (part of) what it was given: no copy
            start = _address(raw)
            for lo, hi, pid, fd, ino, size in _received:
                if start is not None and lo <= start and start + n <= hi:
                    segments.append((pid, fd, ino, size, start - lo, n))
                    return False
        fd = os.memfd_create("braid.oob", os.MFD_CLOEXEC)
        held.fds.append(fd)
        done = 0
        while done < n:  # write(2) fills shmem faster than faulting in a mapping
            done += os.write(fd, raw[done:])
        segments.append((os.getpid(), fd, os.fstat(fd).st_ino, n, 0, n))
        return False

    data = dump(obj, protocol=PROTOCOL, buffer_callback=callback)
    if not segments:
        return data
    return _pickle_dumps(_Envelope(data, segments), PROTOCOL), held


def dumps(obj):
    """Pickle with the standard pickler, large buffers out of band; fall back to cloudpickle
    (lambdas, closures, functions of an interactive __main__) when it fails. Returns bytes,
    or (bytes, what must stay alive until the receiver has the message)."""
    try:
        return _pack(_pickle_dumps, obj)
    except Exception as exc:
        cloudpickle = _cloudpickle()
        if cloudpickle is None:
            raise TypeError(
                f"cannot pickle {type(obj).__name__!s}: {exc}; lambdas, closures and functions "
                "defined interactively need cloudpickle (pip install cloudpickle)") from exc
        return _pack(cloudpickle.dumps, obj)


def dumps_task(fn, args, kwargs):
    """The payload of one task: (fn, args, kwargs), as dumps() returns it."""
    out = dumps((fn, args, kwargs))
    data = out[0] if type(out) is tuple else out
    if b"__main__" in data and not _main_is_importable_by_workers():
        # It names something of an interactive __main__ (python -c, a REPL), which workers
        # cannot import: send it by value instead.
        cloudpickle = _cloudpickle()
        if cloudpickle is not None:
            return _pack(cloudpickle.dumps, (fn, args, kwargs))
    return out


def loads(data):
    obj = _pickle_loads(data)
    if type(obj) is _Envelope:
        return obj.open()
    return obj


class _RemoteTraceback(Exception):
    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


def _format_traceback(exc):
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f'\n"""\n{text}"""'


def _describe(exc):
    """'module.QualName: message' of an exception (builtins without the module)."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    try:
        return f"{name}: {exc}"
    except BaseException as err:  # noqa: BLE001 -- a broken __str__ must not lose the rest
        return f"{name}: <str() failed: {type(err).__name__}>"


def _rebuild_exception(data, tb, described, notes):
    """The receiving side of _ExceptionWithTraceback: the exception, or a RuntimeError standing
    in for it when its pickle does not load here (an ``__init__`` that needs other arguments
    than ``args``, a class this process cannot import), with the traceback as __cause__."""
    try:
        exc = _pickle_loads(data)
    except Exception as err:
        exc = RuntimeError(f"{described} (the exception could not be received: {type(err).__name__}: {err})")
        exc.__notes__ = notes
    exc.__cause__ = _RemoteTraceback(tb)
    return exc


class _ExceptionWithTraceback:
    """Carries an exception and its worker-side traceback text across the process boundary;
    unpickles as the exception with ``__cause__`` holding the traceback (as
    ProcessPoolExecutor does).

    The traceback text travels beside the exception, never on it (pickling an exception
    drops ``__cause__``), and the exception as a pickle of its own, so that whichever side
    cannot handle it -- the worker cannot pickle it (it holds a lock, a socket, a generator;
    its ``__reduce__`` raises; it is too deep or too large for the pickler), or the parent
    cannot load it -- puts a RuntimeError naming the original's type and message in its
    place, and the traceback still arrives."""

    def __init__(self, exc):
        self.tb = _format_traceback(exc)
        self.described = _describe(exc)
        self.notes = [str(note) for note in getattr(exc, "__notes__", None) or ()]
        try:
            self.data = _pickle_dumps(exc, PROTOCOL)
        except BaseException as err:  # noqa: BLE001 -- whatever stops the pickler
            stand_in = RuntimeError(f"{self.described} (the exception could not be sent back: "
                                    f"{type(err).__name__}: {err})")
            stand_in.__notes__ = self.notes
            self.data = _pickle_dumps(stand_in, PROTOCOL)

    def __reduce__(self):
        return _rebuild_exception, (self.data, self.tb, self.described, self.notes)


def dump_exception(exc):
    return _pickle_dumps(_ExceptionWithTraceback(exc), PROTOCOL)


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


_held_results = []  # (task seq, _Held) of results not yet acknowledged, oldest first


def release_acknowledged():
    """Closes the memfds of results the parent has unpickled; how many sets are still held."""
    from . import _braid

    acked = _braid._worker_acked()
    while _held_results and _held_results[0][0] <= acked:
        _held_results.pop(0)[1].close()
    return len(_held_results)


def pack_result(result, seq, mapped_for_this_task):
    """(MSG_RESULT, payload), or (MSG_ERROR, payload) when the result does not pickle. The
    worker loop (procworker.c) calls it for results that are not plain."""
    if not mapped_for_this_task:
        _received.clear()  # left over from an earlier task: those buffers are released
    try:
        out = dumps(result)
    except BaseException as exc:
        return MSG_ERROR, dump_exception(exc)
    if type(out) is tuple:
        out, held = out
        _held_results.append((seq, held))
    return MSG_RESULT, out


def pack_error(exc):
    return MSG_ERROR, dump_exception(exc)


def _handle(kind, payload, seq):
    """The general path of a message (the worker loop takes plain calls itself)."""
    if kind == MSG_CALL:
        _received.clear()  # the parent releases a task's buffers once it is settled
        if _held_results:
            release_acknowledged()
        try:
            fn, args, kwargs = loads(payload)
            result = fn(*args, **kwargs) if kwargs else fn(*args)
        except BaseException as exc:
            return pack_error(exc)
        return pack_result(result, seq, True)
    if kind == MSG_INIT:
        try:
            initializer, initargs = loads(payload)
            initializer(*initargs)
        except BaseException as exc:
            return MSG_INIT_FAILED, dump_exception(exc)
        return None
    raise RuntimeError(f"braid worker: unknown message type {kind}")


def encode_argv(argv):
    """sys.argv for BRAID_WORKER_ARGV (any strings, no NUL): pickle in hex, which the worker
    reads without importing json."""
    return _pickle_dumps(list(argv), PROTOCOL).hex()


def decode_argv(text):
    return _pickle_loads(bytes.fromhex(text))


class _AuthkeyOnImport:
    """Gives multiprocessing a chosen authkey when (if ever) it is first imported here: in a
    worker the parent's, as a spawned child of multiprocessing gets it, so that Manager
    proxies and Listener/Client connections passed to a task authenticate (they are
    unpickled through an import of multiprocessing); in a parent that had not imported
    multiprocessing at its first pool, the key its workers were given. Not before: a
    process imports only what it runs."""

    def __init__(self, key):
        self.key = key

    def find_spec(self, name, path=None, target=None):
        if name != "multiprocessing.process":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _KeyingLoader(spec.loader, self.key)
        return spec


class _KeyingLoader:
    def __init__(self, loader, key):
        self.loader, self.key = loader, key

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        module.current_process().authkey = self.key


_authkey = None  # this process's multiprocessing authkey, once authkey() has fixed it


def authkey():
    """This process's multiprocessing authkey, which workers adopt. When multiprocessing is
    not imported yet, a key is made now and becomes the one multiprocessing will have here
    once imported (until then no one can have seen one): the parent does not pay for the
    import at its first pool, and a Manager() made later still shares the workers' key."""
    global _authkey
    process = sys.modules.get("multiprocessing.process")
    if process is not None:
        return bytes(process.current_process().authkey)
    if _authkey is None:
        _authkey = os.urandom(32)
        _adopt_authkey(_authkey)
    return _authkey


def _adopt_authkey(key):
    process = sys.modules.get("multiprocessing.process")
    if process is not None:
        process.current_process().authkey = key
    else:
        sys.meta_path.insert(0, _AuthkeyOnImport(key))


def _fixup_main(path):
    # As multiprocessing's spawn does: run the parent's main script as __mp_main__ so that
    # functions and classes it defines unpickle here; its `if __name__ == "__main__":` part
    # does not run. Executed straight into the module's namespace (runpy.run_path runs a
    # copy and costs its imports): the functions' globals are the module's.
    main = type(sys)("__mp_main__")
    main.__file__ = path
    main.__cached__ = None
    main.__package__ = ""
    sys.modules["__mp_main__"] = main
    sys.modules["__main__"] = main
    if path.endswith((".pyc", ".pyo")):  # compiled: runpy knows how to read it
        import runpy

        main.__dict__.update(runpy.run_path(path, run_name="__mp_main__"))
        return
    import io

    with io.open_code(path) as f:
        source = f.read()
    exec(compile(source, path, "exec"), main.__dict__)


def _reseed_after_fork():
    # random reseeds itself in a forked child (os.register_at_fork); NumPy's legacy global
    # generator does not, and every worker forked from the template would draw the same
    # numbers. A spawned worker seeds it from the OS: so does this one.
    nprandom = sys.modules.get("numpy.random")
    if nprandom is not None:
        try:
            nprandom.seed()
        except Exception:
            pass


# ---- OpenBLAS in the template -------------------------------------------------------------
# OpenBLAS starts its thread pool when it is loaded (import numpy), and a template with threads
# must not fork. So the template loads it with one thread (unless the user chose a number
# with OPENBLAS_NUM_THREADS: then it is theirs, and a template with threads spawns its workers
# instead), and each forked worker sets the count a spawned worker would have started with.

_SET_THREADS = ("openblas_set_num_threads", "openblas_set_num_threads64_",
                "scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_")


def _quiet_blas():
    """In the template, before the main script: the thread count to give forked workers back
    ("" for OpenBLAS's default), or None when the user set OPENBLAS_NUM_THREADS."""
    if "OPENBLAS_NUM_THREADS" in os.environ:
        return None
    want = os.environ.get("GOTO_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or ""
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    return want


def _restore_blas(want):
    """In a forked worker: OpenBLAS's threads as a spawned worker would have them."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f
                    if "openblas" in line.rsplit("/", 1)[-1].lower() and ".so" in line}
        if not libs:
            return  # not loaded: it will read the (restored) environment when it is
        n = int(want.split(",")[0]) if want else len(os.sched_getaffinity(0))
        if n <= 1:
            return
        import ctypes

        for path in libs:
            lib = ctypes.CDLL(path)
            for name in _SET_THREADS:
                fn = getattr(lib, name, None)
                if fn is not None:
                    fn(ctypes.c_int(n))
                    break
    except Exception:  # noqa: BLE001 - a worker with one BLAS thread still works
        pass


def _exit_forked(status):
    """A forked worker's exit: what finalization does that a program can see (non-daemon
    threads joined, atexit callbacks, weakref.finalize ones among them, standard streams
    flushed), without the rest. Tearing down every module and object writes to every page
    this process still shares with the template, and copying them took a worker 10-15 ms to
    exit, longer than it took to start. multiprocessing's forked workers leave the same way."""
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
        import atexit

        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                try:
                    stream.flush()
                except Exception:
                    pass
        os._exit(status)


def main():
    """A worker, or a template that forks workers: the parent starts a template with
    BRAID_WORKER_TEMPLATE=1; it does everything a worker does before its loop (bind to the
    parent, sys.path, the main script) once, then each worker forked from it goes on from
    there (src/python/proctemplate.c)."""
    from . import _braid

    global IN_WORKER
    IN_WORKER = True
    env = os.environ
    template = env.pop("BRAID_WORKER_TEMPLATE", "") == "1"
    ppid = int(env.pop("BRAID_WORKER_PPID"))
    syspath = env.pop("BRAID_WORKER_SYSPATH", "")
    main_path = env.pop("BRAID_WORKER_MAIN", "")
    _braid._worker_bind_parent(ppid)  # die with the parent, even if it is SIGKILLed
    authkey = env.pop("BRAID_WORKER_AUTHKEY", "")
    if authkey:
        _adopt_authkey(bytes.fromhex(authkey))
    import _signal  # signal.py would load enum
    # Ctrl-C reaches the whole process group; the parent decides what stops.
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    if syspath:
        sys.path[:] = syspath.split(os.pathsep)
    argv = env.pop("BRAID_WORKER_ARGV", "")
    blas = _quiet_blas() if template else None
    if main_path:
        # the script sees the parent's argv, as under multiprocessing's spawn
        saved_argv = sys.argv
        sys.argv = decode_argv(argv) if argv else [main_path]
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
    if template:
        if blas is not None:
            del os.environ["OPENBLAS_NUM_THREADS"]  # the workers' environment is the user's
        for stream in (sys.stdout, sys.stderr):  # or every worker would write it again
            if stream is not None:
                try:
                    stream.flush()
                except Exception:
                    pass
        # What the template holds is shared with every worker until written to; the cyclic
        # collector's passes write to each object they visit. Frozen, they visit none of it.
        import gc

        gc.freeze()
        if not _braid._template_serve():
            os._exit(0)  # the parent has gone; leave without running its atexit hooks
        # a new worker, forked from the template
        _braid._worker_bind_parent(ppid)
        _reseed_after_fork()
        if blas is not None:
            _restore_blas(blas)
    status = _braid._worker_loop(_handle, pack_result, pack_error, release_acknowledged)
    if template:
        _exit_forked(status or 0)
    sys.exit(status or 0)
