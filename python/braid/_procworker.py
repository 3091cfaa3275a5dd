"""What runs inside a braid.ProcessPool worker process, and the pickling both sides share.

The parent starts each worker as ``python -c "from braid._procworker import main; main()"``
with the shared-memory rings on fds 3-7 (include/braid.h, the BR_PP_ protocol) and its settings in
``BRAID_WORKER_*`` environment variables.
"""

import collections
import json
import os
import pickle
import sys
import traceback

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


_pickle_dumps = pickle.dumps


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
        return pickle.loads(self.data, buffers=[_map(*seg) for seg in self.segments])


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
        return _pack(pickle.dumps, obj)
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
    obj = pickle.loads(data)
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
        exc = pickle.loads(data)
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


_held_results = collections.deque()  # (task seq, _Held) of results not yet acknowledged


def release_acknowledged():
    """Closes the memfds of results the parent has unpickled; how many sets are still held."""
    from . import _braid

    acked = _braid._worker_acked()
    while _held_results and _held_results[0][0] <= acked:
        _held_results.popleft()[1].close()
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


class _AuthkeyOnImport:
    """Gives this worker's multiprocessing the parent's authkey, as a spawned child of
    multiprocessing gets it, so that Manager proxies and Listener/Client connections passed to
    a task authenticate. Set when multiprocessing is first imported here (by the unpickling of
    a proxy, say), not before: a worker imports only what it runs."""

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


def _adopt_authkey(key):
    process = sys.modules.get("multiprocessing.process")
    if process is not None:
        process.current_process().authkey = key
    else:
        sys.meta_path.insert(0, _AuthkeyOnImport(key))


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

    global IN_WORKER
    IN_WORKER = True
    env = os.environ
    ppid = int(env.pop("BRAID_WORKER_PPID"))
    ring_bytes = int(env.pop("BRAID_WORKER_RING"))
    syspath = env.pop("BRAID_WORKER_SYSPATH", "")
    main_path = env.pop("BRAID_WORKER_MAIN", "")
    _braid._worker_bind_parent(ppid)  # die with the parent, even if it is SIGKILLed
    authkey = env.pop("BRAID_WORKER_AUTHKEY", "")
    if authkey:
        _adopt_authkey(bytes.fromhex(authkey))
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
    status = _braid._worker_loop(ring_bytes, _handle, pack_result, pack_error, release_acknowledged)
    sys.exit(status or 0)
