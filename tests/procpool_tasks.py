"""Task functions and helpers for the process-pool tests.

Worker processes must be able to import the functions they run, so the tasks of
``test_procpool.py``, ``test_procpool_braid.py`` and ``test_procpool_chaos.py`` live here, in a
module next to the tests: the tests put ``tests/`` on ``sys.path`` and the workers inherit it
(``ProcessPoolExecutor`` by fork or its preparation data, ``braid.ProcessPool`` by passing the
parent's ``sys.path`` on).  Functions are pickled by reference (``procpool_tasks.square``), so
these tests do not depend on cloudpickle; the braid-only tests of lambdas, closures and
``__main__`` functions do.

Processes cannot share ``threading.Event`` objects, so the tests synchronise with workers
through files in ``tmp_path``: a task "signals" by creating a file and "waits" by polling for
one, always with a bound (``TIMEOUT``) so a broken pool fails a test instead of hanging it.

The second half of the module holds parent-side helpers (gates, process inspection via
/proc); they are here so the three test files share them.
"""

import ctypes
import hashlib
import os
import random
import signal
import threading
import time

# Same bound as pool_helpers.TIMEOUT (not imported from there: workers need not import pytest).
TIMEOUT = 10.0
POLL = 0.002

# ---- task functions (run in the workers) ---------------------------------------------------

GLOBAL = None  # set by init_global() in a worker


def square(x):
    return x * x


def add3(a, b, c):
    return a + b + c


def identity(x):
    return x


def return_none():
    return None


def getpid(_=None):
    return os.getpid()


def pid_and_value(x):
    return os.getpid(), x


def failing_task(msg="boom"):
    raise ValueError(msg)


class CustomError(Exception):
    """An exception class of our own: it must come back as itself, not as a generic error."""


def raise_custom(*args):
    raise CustomError(*args)


def raise_system_exit(code):
    raise SystemExit(code)


def fail_at_5(x):
    if x == 5:
        raise ValueError(x)
    return x * 10


def sleep_and_return(delay, value):
    time.sleep(delay)
    return value


def sleep_then(item):
    """imap-friendly: item is (delay, value)."""
    delay, value = item
    time.sleep(delay)
    return value


def init_global(value):
    global GLOBAL
    GLOBAL = value


def get_global(_=None):
    return GLOBAL, os.getpid()


def wait_for_path(path, timeout=TIMEOUT):
    """Poll until ``path`` exists; False if it did not appear within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


def touch(path):
    with open(path, "a"):
        pass


def sleep_then_append(path, text, seconds):
    time.sleep(seconds)
    append_line(path, text)


def append_line(path, text):
    """Append one line atomically (O_APPEND, one write), safe from several processes."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def record_pid(path, _=None):
    """Append this process's pid to ``path``; returns it (an initializer or a task)."""
    append_line(path, str(os.getpid()))
    return os.getpid()


def register_atexit_line(path, text):
    """Have this worker append ``text`` to ``path`` when it exits (atexit)."""
    import atexit

    atexit.register(append_line, path, text)
    return os.getpid()


def signal_main_thread_from_another(_=None):
    """signal.pthread_kill(main thread, 0) from a second thread: None, or the error's repr."""
    main = threading.main_thread().ident
    out = []

    def other():
        try:
            signal.pthread_kill(main, 0)
            out.append(None)
        except OSError as exc:
            out.append(repr(exc))

    t = threading.Thread(target=other)
    t.start()
    t.join(TIMEOUT)
    return out[0] if out else "timed out"


def has_tid_address():
    """Whether the kernel tells a thread's glibc record address (prctl PR_GET_TID_ADDRESS)."""
    libc = ctypes.CDLL(None, use_errno=True)
    addr = ctypes.c_void_p()
    return libc.prctl(40, ctypes.byref(addr), 0, 0, 0) == 0


def random_draw(_=None):
    """(pid, 64 random bits from the random module's global generator)."""
    return os.getpid(), random.getrandbits(64)


def read_lines(path):
    try:
        with open(path) as f:
            return [line for line in f.read().splitlines() if line]
    except FileNotFoundError:
        return []


def failing_initializer(gate_path):
    # Waits for the gate so the test's submits are certainly made before the pool breaks.
    wait_for_path(gate_path)
    raise RuntimeError("initializer failed")


def block(started_path, gate_path, result="blocker"):
    """Signal start by creating ``started_path``, then wait until ``gate_path`` exists."""
    touch(started_path)
    if not wait_for_path(gate_path):
        raise AssertionError("gate never opened")
    return result


def wait_gate(gate_path, x):
    """map-friendly blocker: partial(wait_gate, gate_path)."""
    if not wait_for_path(gate_path):
        raise AssertionError("gate never opened")
    return x


def record(path, i):
    append_line(path, str(i))
    return i


def record_and_fail(path, text):
    append_line(path, text)
    raise ValueError(text)


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def make_bytes(n, seed):
    return random.Random(seed).randbytes(n)


def echo(data):
    return data


def return_lock():
    return threading.Lock()


def return_generator():
    return (i for i in range(3))


def _refuse_to_unpickle(what):
    raise ValueError(f"refusing to unpickle {what}")


class UnpicklesBadly:
    """Pickles fine; unpickling it raises ValueError (wherever that happens)."""

    def __reduce__(self):
        return (_refuse_to_unpickle, ("UnpicklesBadly",))


def return_unpickles_badly():
    return UnpicklesBadly()


class NeedsTwoArgs(Exception):
    """An exception that pickles but does not unpickle (BaseException.__reduce__ passes only
    self.args, one item, to an __init__ that needs two)."""

    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


def raise_needs_two_args():
    raise NeedsTwoArgs("a", "b")


def sleep_record_pid(pidfile, delay, value):
    append_line(pidfile, str(os.getpid()))
    time.sleep(delay)
    return value


def crash(how, pidfile=None):
    """Kill the worker running this task, in one of several ways."""
    if pidfile is not None:
        append_line(pidfile, str(os.getpid()))
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segfault":
        ctypes.string_at(0)
    elif how == "exit":
        os._exit(3)
    else:
        raise ValueError(how)
    time.sleep(TIMEOUT)  # a signal is delivered at once, but never fall through to a result
    return "survived"


def crash_at(bad, x):
    """map-friendly: partial(crash_at, bad) kills the worker on item ``bad``."""
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(TIMEOUT)
    return x * 10


def crash_once(marker_path, value):
    """Crash on the first attempt (no marker yet), succeed on a retry."""
    if not os.path.exists(marker_path):
        touch(marker_path)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(TIMEOUT)
    return value


def crash_always(attempts_path):
    append_line(attempts_path, str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(TIMEOUT)


def chaos_task(pidfile, round_no, delay, value):
    append_line(pidfile, f"{round_no} {os.getpid()}")
    time.sleep(delay)
    return value


# ---- parent-side helpers -------------------------------------------------------------------


class FileGate:
    """A one-shot gate that worker processes can wait on: it is open once its file exists.

    Has ``set()`` like ``threading.Event`` so ``pool_helpers.PoolFactory`` opens it at teardown.
    """

    def __init__(self, path):
        self.path = str(path)

    def set(self):
        touch(self.path)

    def is_set(self):
        return os.path.exists(self.path)


def proc_state(pid):
    """(state letter, ppid) from /proc/<pid>/stat, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def process_gone(pid, zombie_ok=True):
    """True if ``pid`` no longer runs.

    A zombie counts as gone when ``zombie_ok`` (a dead worker of a dead script is reparented
    and reaped by init, or whichever subreaper there is, in its own time).  A zombie that is
    *our own* child never counts as gone: reaping it is our (the pool's) job.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    st = proc_state(pid)
    if st is None:
        return True
    state, ppid = st
    if state in ("Z", "X"):
        return zombie_ok and ppid != os.getpid()
    return False


def children_map():
    """{ppid: [pid, ...]} for every process visible in /proc."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_state(int(name))
        if st is not None:
            out.setdefault(st[1], []).append(int(name))
    return out


def descendants(root=None):
    """Set of live (non-zombie) descendants of ``root`` (default: this process)."""
    root = os.getpid() if root is None else root
    kids = children_map()
    found, todo = set(), [root]
    while todo:
        for child in kids.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {pid for pid in found if (proc_state(pid) or ("Z",))[0] not in ("Z", "X")}


def wait_processes_gone(pids, timeout, zombie_ok=True):
    """Wait until every pid is gone; return the ones still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if not process_gone(pid, zombie_ok)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.01)


def kill_quietly(pids):
    """Cleanup after a failed test: SIGKILL leftover workers (only Python processes, in case a
    pid was reused by something else)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"python" not in f.read():
                    continue
        except OSError:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ---- exceptions that cannot make the trip back as they are ------------------------------


class HoldsALock(Exception):
    def __init__(self):
        super().__init__("holds a lock")
        self.lock = threading.Lock()


class ReduceRaises(Exception):
    def __reduce__(self):
        raise ValueError("no reduce for you")


class TooDeep(Exception):
    def __init__(self):
        super().__init__("too deep")
        nested = []
        for _ in range(100_000):
            nested = [nested]
        self.nested = nested


class NeedsTwoArguments(Exception):
    # pickles as NeedsTwoArguments(message), which __init__ refuses when it is loaded again
    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


UNSENDABLE = {
    "lock": HoldsALock,
    "reduce": ReduceRaises,
    "recursion": TooDeep,
    "two-arguments": lambda: NeedsTwoArguments(1, 2),
}


def raise_unsendable(kind):
    raise UNSENDABLE[kind]()


def raise_unsendable_at(kind, at, x):
    if x == at:
        raise_unsendable(kind)
    return x


def append_to(seq, value):
    seq.append(value)


def put_on(queue, value):
    queue.put(value)


_hoard = []


def hold_memory(mib, then_sleep=0.0):
    """Allocates and touches mib MiB that the worker keeps, then sleeps; returns the pid."""
    block = bytearray(mib << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    _hoard.append(block)
    time.sleep(then_sleep)
    return os.getpid()


def hold_memory_later(mib, delay):
    """Returns the pid at once; a thread of the worker allocates mib MiB ``delay`` s later,
    while the worker is idle."""
    import threading

    def grow():
        time.sleep(delay)
        hold_memory(mib)

    threading.Thread(target=grow, daemon=True).start()
    return os.getpid()
