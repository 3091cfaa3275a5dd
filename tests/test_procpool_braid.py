"""``braid.ProcessPool`` behaviour that ``ProcessPoolExecutor`` does not share.

The shared behaviour is tested in ``test_procpool.py`` (run against both executors).  Here:
lambdas, closures and ``__main__`` functions as tasks; the multiprocessing.Pool-style verbs
(``imap``, ``imap_unordered``, ``starmap``) checked against ``multiprocessing.Pool``; chunked
and automatically chunked ``map``; workers that die mid-task (``WorkerCrashed``), ``retries``,
``task_timeout`` (``TaskTimeout``), ``max_tasks_per_worker``; argument checking; and the
process-lifetime guarantees: Ctrl-C in the parent leaves no worker behind, and neither does a
parent that is SIGKILLed (PR_SET_PDEATHSIG). ``map`` is eager as ``Executor.map`` is; its
``buffersize=`` window counts chunks, automatic ones too.

Task functions live in ``procpool_tasks.py`` so the workers can import them.  Every wait is
bounded (``pool_helpers.TIMEOUT``); child scripts run with a timeout and are killed, with any
worker they left, when a test fails.
"""

import concurrent.futures as cf
import functools
import itertools
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS_DIR)
import procpool_tasks as tasks  # noqa: E402
from pool_helpers import TIMEOUT, GuardedCount, PoolFactory, import_braid, run_bounded  # noqa: E402


@pytest.fixture
def braid():
    return import_braid()


@pytest.fixture
def pools(braid):
    factory = PoolFactory(braid.ProcessPool)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def mp_pool():
    """A multiprocessing.Pool to compare imap/imap_unordered/starmap results with."""
    pool = multiprocessing.get_context("forkserver").Pool(2)  # no fork of a threaded process
    yield pool
    pool.close()
    run_bounded(pool.join, what="multiprocessing.Pool.join")


def run_script(tmp_path, source, *args, timeout=60):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script), TESTS_DIR, *map(str, args)],
        capture_output=True,
        timeout=timeout,
        cwd=str(tmp_path),
    )


# ---- types -------------------------------------------------------------------------------


def test_types(braid):
    assert issubclass(braid.ProcessPool, cf.Executor)
    assert issubclass(braid.TaskTimeout, TimeoutError)
    assert issubclass(braid.WorkerCrashed, Exception)


def test_futures_are_concurrent_futures(pools):
    pool = pools(max_workers=2)
    fut = pool.submit(tasks.square, 4)
    assert isinstance(fut, cf.Future)
    assert fut.result(TIMEOUT) == 16


# ---- argument checking ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_workers": 0},
        {"max_workers": -1},
        {"task_timeout": 0},
        {"task_timeout": -1.5},
        {"retries": -1},
        {"max_tasks_per_worker": 0},
        {"max_tasks_per_worker": -3},
    ],
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()),
)
def test_bad_constructor_values(braid, kwargs):
    with pytest.raises(ValueError):
        braid.ProcessPool(**kwargs)


@pytest.mark.parametrize("bad", [5, None, "not callable", object()])
def test_submit_non_callable_is_type_error_at_submit(pools, bad):
    pool = pools(max_workers=2)
    with pytest.raises(TypeError):
        pool.submit(bad)
    assert pool.submit(tasks.square, 3).result(TIMEOUT) == 9


def test_verbs_non_iterable_is_type_error(pools):
    pool = pools(max_workers=2)
    with pytest.raises(TypeError):
        pool.map(tasks.square, 5)
    # Either at the call or at the first next(): a TypeError, not a hang or another error.
    with pytest.raises(TypeError):
        list(pool.imap(tasks.square, 5))
    with pytest.raises(TypeError):
        list(pool.imap_unordered(tasks.square, 5))
    with pytest.raises(TypeError):
        pool.starmap(tasks.add3, 5)
    assert pool.submit(tasks.square, 3).result(TIMEOUT) == 9


def test_valid_options_accepted(pools):
    pool = pools(max_workers=1, task_timeout=5.0, retries=2, max_tasks_per_worker=100)
    assert pool.submit(tasks.square, 3).result(TIMEOUT) == 9


# ---- lambdas, closures, __main__ -----------------------------------------------------------


def test_lambdas_and_closures(pools):
    pool = pools(max_workers=2)
    assert pool.submit(lambda x: x + 1, 41).result(TIMEOUT) == 42
    offset = 100

    def add_offset(x):
        return x + offset

    assert pool.submit(add_offset, 1).result(TIMEOUT) == 101
    assert list(pool.map(lambda x, y: x * y, range(5), range(5), timeout=TIMEOUT)) == [
        0, 1, 4, 9, 16
    ]
    assert list(pool.imap(add_offset, range(3))) == [100, 101, 102]
    # A lambda as an argument, and a lambda that raises.
    assert pool.submit(tasks.identity, lambda: 7).result(TIMEOUT)() == 7
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(TIMEOUT)


def test_function_defined_in_test_module(pools):
    # Pickled by reference as test_procpool_braid.local_double: the worker imports this
    # module from the sys.path it was given.
    pool = pools(max_workers=2)
    assert pool.submit(local_double, 21).result(TIMEOUT) == 42


def local_double(x):
    return 2 * x


MAIN_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import braid

def triple(x):
    return 3 * x

def fails(x):
    raise KeyError(x)

if __name__ == "__main__":
    with braid.ProcessPool(max_workers=2) as pool:
        assert pool.submit(triple, 5).result(10) == 15
        assert list(pool.map(triple, range(50), timeout=10)) == [3 * i for i in range(50)]
        assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
        assert list(pool.imap(triple, range(5))) == [0, 3, 6, 9, 12]
        assert pool.submit(lambda: triple(2)).result(10) == 6
        try:
            pool.submit(fails, "k").result(10)
        except KeyError as exc:
            assert "fails" in str(exc.__cause__)
        else:
            raise AssertionError("no KeyError")
    print("main ok")
"""


@pytest.mark.parametrize("how", ["file", "-c", "stdin"])
def test_functions_defined_in_main(braid, tmp_path, how):
    # "file": workers can import the script (as spawn does); "-c" and "stdin": there is no
    # file, so __main__ functions must travel by value.
    source = textwrap.dedent(MAIN_SCRIPT)
    if how == "file":
        proc = run_script(tmp_path, MAIN_SCRIPT)
    elif how == "-c":
        proc = subprocess.run([sys.executable, "-c", source, TESTS_DIR], capture_output=True,
                              timeout=60, cwd=str(tmp_path))
    else:
        proc = subprocess.run([sys.executable, "-", TESTS_DIR], input=source.encode(),
                              capture_output=True, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 0, (proc.stdout, proc.stderr.decode())
    assert proc.stdout.decode().split() == ["main", "ok"]


MAIN_CLASSES_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import braid

class Point:
    def __init__(self, x):
        self.x = x

class MyError(Exception):
    pass

def make_point(x):
    return Point(x)

def fails():
    raise MyError("mine")

if __name__ == "__main__":
    # the worker runs this script as __mp_main__, and pickles these classes under that name
    with braid.ProcessPool(max_workers=1) as pool:
        p = pool.submit(make_point, 3).result(10)
        assert type(p) is Point and p.x == 3, type(p)
        try:
            pool.submit(fails).result(10)
        except MyError as exc:
            assert str(exc) == "mine"
    print("main ok", "multiprocessing" in sys.modules)
"""


def test_results_and_exceptions_of_classes_defined_in_main(braid, tmp_path):
    proc = run_script(tmp_path, MAIN_CLASSES_SCRIPT)
    assert proc.returncode == 0, (proc.stdout, proc.stderr.decode())
    # without multiprocessing imported, which is what made __mp_main__ resolve here
    assert proc.stdout.decode().split() == ["main", "ok", "False"]


# ---- payloads that fail on the other side --------------------------------------------------
# The stdlib breaks the whole pool on these (an unpickling error in a worker kills it; one in
# the parent's result reader breaks the pool); braid fails just the task.


@pytest.mark.parametrize(
    "submit",
    [
        lambda pool: pool.submit(tasks.identity, tasks.UnpicklesBadly()),  # in the worker
        lambda pool: pool.submit(tasks.return_unpickles_badly),  # result, in the parent
        lambda pool: pool.submit(tasks.raise_needs_two_args),  # exception, in the parent
    ],
    ids=["argument", "result", "exception"],
)
def test_unpickling_error_fails_that_task_only(pools, submit):
    pool = pools(max_workers=2)
    before = [pool.submit(tasks.square, i) for i in range(5)]
    bad = submit(pool)
    after = [pool.submit(tasks.square, i) for i in range(5, 10)]
    exc = bad.exception(TIMEOUT)
    assert isinstance(exc, Exception), repr(exc)
    assert [f.result(TIMEOUT) for f in before + after] == [i * i for i in range(10)]
    assert pool.submit(tasks.square, 11).result(TIMEOUT) == 121


# ---- imap / imap_unordered / starmap -------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 7, 100])
def test_imap_matches_multiprocessing(pools, mp_pool, chunksize):
    pool = pools(max_workers=2)
    kw = {} if chunksize is None else {"chunksize": chunksize}
    expected = list(mp_pool.imap(tasks.square, range(500), **kw))
    it = pool.imap(tasks.square, range(500), **kw)
    assert iter(it) is it
    assert list(it) == expected == [i * i for i in range(500)]
    assert list(pool.imap(tasks.square, [], **kw)) == []


def test_imap_is_lazy(pools):
    pool = pools(max_workers=2)
    limit = 50_000
    source = GuardedCount(limit)
    it = pool.imap(tasks.square, source)
    assert [next(it) for _ in range(200)] == [i * i for i in range(200)]
    assert source.pulled < limit
    close = getattr(it, "close", None)
    if close is not None:
        close()


def test_imap_exception_at_position(pools):
    pool = pools(max_workers=2)
    it = pool.imap(tasks.fail_at_5, range(10), chunksize=1)
    assert [next(it) for _ in range(5)] == [0, 10, 20, 30, 40]
    with pytest.raises(ValueError) as excinfo:
        next(it)
    assert excinfo.value.args == (5,)
    assert "fail_at_5" in str(excinfo.value.__cause__)


@pytest.mark.parametrize("chunksize", [None, 1, 9])
def test_imap_unordered_matches_multiprocessing(pools, mp_pool, chunksize):
    pool = pools(max_workers=2)
    kw = {} if chunksize is None else {"chunksize": chunksize}
    expected = sorted(mp_pool.imap_unordered(tasks.square, range(500), **kw))
    got = list(pool.imap_unordered(tasks.square, range(500), **kw))
    assert sorted(got) == expected
    assert len(got) == 500


def test_imap_unordered_is_completion_order(pools):
    pool = pools(max_workers=2)
    items = [(1.0, "slow")] + [(0.0, i) for i in range(10)]
    it = pool.imap_unordered(tasks.sleep_then, items, chunksize=1)
    first = next(it)
    assert first != "slow", "imap_unordered waited for the slow first item"
    rest = list(it)
    assert sorted([first] + rest, key=str) == sorted(["slow", *range(10)], key=str)


@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_starmap_matches_multiprocessing(pools, mp_pool, chunksize):
    pool = pools(max_workers=2)
    kw = {} if chunksize is None else {"chunksize": chunksize}
    args = [(i, i + 1, i + 2) for i in range(300)]
    expected = mp_pool.starmap(tasks.add3, args, **kw)
    got = pool.starmap(tasks.add3, args, **kw)
    assert isinstance(got, list)
    assert got == expected == list(itertools.starmap(tasks.add3, args))
    assert pool.starmap(pow, iter([(2, 5), (10, 2)]), **kw) == [32, 100]
    assert pool.starmap(tasks.add3, [], **kw) == []


def test_starmap_exception(pools):
    pool = pools(max_workers=2)
    with pytest.raises(ValueError):
        pool.starmap(tasks.fail_at_5, [(i,) for i in range(10)])
    assert pool.starmap(tasks.square, [(3,)]) == [9]


# ---- chunked map ---------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1000])
def test_map_many_items(pools, chunksize):
    # With automatic chunking (None) 100k tiny items must not be sent one by one; the bound
    # here is loose, the point is correctness and that it does not take ages.
    pool = pools(max_workers=2)
    n = 100_000
    t0 = time.monotonic()
    got = list(pool.map(tasks.square, range(n), chunksize=chunksize, timeout=30))
    assert got == [i * i for i in range(n)]
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("chunksize", [1, 2, 7, 64, 5000])
def test_map_chunksize_results(pools, chunksize):
    pool = pools(max_workers=2)
    assert list(pool.map(tasks.square, range(1000), chunksize=chunksize, timeout=TIMEOUT)) == [
        i * i for i in range(1000)
    ]
    assert list(pool.map(pow, range(50), itertools.repeat(2, 30), chunksize=chunksize)) == [
        i * i for i in range(30)
    ]


def test_map_chunksize_exception_at_position(pools):
    pool = pools(max_workers=2)
    it = pool.map(tasks.fail_at_5, range(20), chunksize=4, timeout=TIMEOUT)
    assert [next(it) for _ in range(5)] == [0, 10, 20, 30, 40]
    with pytest.raises(ValueError):
        next(it)


# ---- map: eager by default, a window of chunks with buffersize= -----------------------------
# The behaviour shared with ProcessPoolExecutor is in test_procpool.py (ProcessMapBuffersizeMixin
# runs on braid for every Python). Here: automatic chunks, and cancelling the window.


def test_map_buffersize_with_automatic_chunks(pools):
    pool = pools(max_workers=2)
    # range(3200) on 2 workers: chunks of 100 (about sixteen per worker); the window counts them
    it = pool.map(tasks.square, range(3200), timeout=TIMEOUT, buffersize=2)
    assert [next(it) for _ in range(150)] == [i * i for i in range(150)]
    assert list(it) == [i * i for i in range(150, 3200)]
    # an input without a length: one item per task, as imap
    source = GuardedCount(1000)
    it = pool.map(tasks.square, source, timeout=TIMEOUT, buffersize=2)
    assert source.pulled == 2
    assert next(it) == 0 and source.pulled == 3
    it.close()


def test_map_eager_submits_every_chunk_at_the_call(pools, tmp_path):
    pool = pools(max_workers=1)
    gate = tasks.FileGate(tmp_path / "gate")
    pools.gates.append(gate)
    started = str(tmp_path / "started")
    pool.submit(tasks.block, started, gate.path)
    assert tasks.wait_for_path(started)
    source = GuardedCount(10_000)
    it = pool.map(tasks.square, itertools.islice(source, 1000), chunksize=10, timeout=TIMEOUT)
    assert source.pulled == 1000
    gate.set()
    assert list(it) == [i * i for i in range(1000)]


def blocked_worker_pool(pools, tmp_path):
    """A one-worker pool whose worker runs a task until the gate is set: (pool, gate, task)."""
    pool = pools(max_workers=1)
    gate = tasks.FileGate(tmp_path / "gate")
    pools.gates.append(gate)
    started = str(tmp_path / "started")
    blocked = pool.submit(tasks.block, started, gate.path)
    assert tasks.wait_for_path(started)
    return pool, gate, blocked


def test_map_buffersize_timeout_cancels_the_window(pools, tmp_path):
    # Every queued task of braid's pool can be cancelled (the stdlib's call queue holds
    # max_workers + 1 that cannot): a map that ends early leaves nothing of its window to run.
    pool, gate, blocked = blocked_worker_pool(pools, tmp_path)
    ran_path = str(tmp_path / "ran")
    source = GuardedCount(1000)
    it = pool.map(functools.partial(tasks.record, ran_path), source, timeout=0.2, chunksize=1,
                  buffersize=3)
    with pytest.raises(TimeoutError):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    assert source.pulled == 4  # the first window, and one more read by next()
    gate.set()
    assert blocked.result(TIMEOUT) == "blocker"
    run_bounded(lambda: pool.shutdown(wait=True), timeout=60, what="shutdown")
    assert tasks.read_lines(ran_path) == [], "a task of the ended map's window ran"


# ---- crashes -------------------------------------------------------------------------------


CRASHES = {
    "sigkill": {"signal": signal.SIGKILL, "exitcode": None},
    "segfault": {"signal": signal.SIGSEGV, "exitcode": None},
    "exit": {"signal": None, "exitcode": 3},
}


@pytest.mark.parametrize("how", list(CRASHES))
def test_worker_crash_fails_only_that_task(braid, pools, tmp_path, how):
    pool = pools(max_workers=2)
    pidfile = str(tmp_path / "crash-pid")
    before = [pool.submit(tasks.sleep_and_return, 0.005, i) for i in range(10)]
    bad = pool.submit(tasks.crash, how, pidfile)
    after = [pool.submit(tasks.sleep_and_return, 0.005, i) for i in range(10, 30)]

    exc = bad.exception(TIMEOUT)
    assert isinstance(exc, braid.WorkerCrashed), repr(exc)
    crashed_pid = int(tasks.read_lines(pidfile)[0])
    assert exc.pid == crashed_pid
    expected = CRASHES[how]
    if expected["signal"] is not None:
        assert exc.signal == expected["signal"], (exc.signal, exc.exitcode)
        assert exc.exitcode is None or exc.exitcode == -expected["signal"]
    else:
        assert exc.exitcode == expected["exitcode"] and exc.signal is None
    with pytest.raises(braid.WorkerCrashed):
        bad.result(0)

    # Queued and later tasks are unaffected.
    assert [f.result(TIMEOUT) for f in before + after] == list(range(30))
    # The pool keeps working with a replacement worker; the dead one is reaped.
    pids = {f.result(TIMEOUT) for f in [pool.submit(tasks.getpid) for _ in range(20)]}
    assert crashed_pid not in pids
    assert not tasks.wait_processes_gone([crashed_pid], TIMEOUT, zombie_ok=False)
    assert list(pool.map(tasks.square, range(100), timeout=TIMEOUT)) == [
        i * i for i in range(100)
    ]


def test_worker_crashed_pickles(braid, pools):
    pool = pools(max_workers=1)
    exc = pool.submit(tasks.crash, "exit").exception(TIMEOUT)
    assert isinstance(exc, braid.WorkerCrashed)
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is braid.WorkerCrashed
    assert (copy.pid, copy.exitcode, copy.signal) == (exc.pid, exc.exitcode, exc.signal)
    assert str(copy) == str(exc)


def test_replacement_worker_runs_initializer(braid, pools):
    pool = pools(max_workers=2, initializer=tasks.init_global, initargs=("set",))
    crashes = [pool.submit(tasks.crash, "sigkill") for _ in range(4)]
    for f in crashes:
        assert isinstance(f.exception(TIMEOUT), braid.WorkerCrashed)
    results = [f.result(TIMEOUT) for f in [pool.submit(tasks.get_global) for _ in range(20)]]
    assert all(value == "set" for value, _ in results), "a replacement worker skipped init"


def test_every_worker_crashing_still_recovers(braid, pools):
    pool = pools(max_workers=2)
    bad = [pool.submit(tasks.crash, "sigkill") for _ in range(6)]
    good = [pool.submit(tasks.square, i) for i in range(10)]
    for f in bad:
        assert isinstance(f.exception(TIMEOUT), braid.WorkerCrashed)
    assert [f.result(TIMEOUT) for f in good] == [i * i for i in range(10)]


def test_crash_inside_map(braid, pools):
    pool = pools(max_workers=2)
    it = pool.map(functools.partial(tasks.crash_at, 3), range(8), chunksize=1, timeout=TIMEOUT)
    assert [next(it) for _ in range(3)] == [0, 10, 20]
    with pytest.raises(braid.WorkerCrashed):
        next(it)
    assert pool.submit(tasks.square, 3).result(TIMEOUT) == 9


def test_retries_rerun_a_crashed_task(pools, tmp_path):
    pool = pools(max_workers=2, retries=1)
    marker = str(tmp_path / "attempted")
    fut = pool.submit(tasks.crash_once, marker, "second time lucky")
    assert fut.result(TIMEOUT) == "second time lucky"
    assert os.path.exists(marker)


def test_retries_exhausted(braid, pools, tmp_path):
    pool = pools(max_workers=2, retries=2)
    attempts = str(tmp_path / "attempts")
    fut = pool.submit(tasks.crash_always, attempts)
    assert isinstance(fut.exception(TIMEOUT), braid.WorkerCrashed)
    pids = tasks.read_lines(attempts)
    assert len(pids) == 3, f"expected 1 run + 2 retries, got {len(pids)} runs"
    assert len(set(pids)) == 3  # each attempt in a fresh worker
    assert pool.submit(tasks.square, 5).result(TIMEOUT) == 25


def test_no_retries_by_default(braid, pools, tmp_path):
    pool = pools(max_workers=2)
    marker = str(tmp_path / "attempted")
    fut = pool.submit(tasks.crash_once, marker, "lucky")
    assert isinstance(fut.exception(TIMEOUT), braid.WorkerCrashed)
    # The same task resubmitted now succeeds (the marker exists).
    assert pool.submit(tasks.crash_once, marker, "lucky").result(TIMEOUT) == "lucky"


def test_retries_do_not_rerun_ordinary_exceptions(pools, tmp_path):
    pool = pools(max_workers=1, retries=3)
    path = str(tmp_path / "ran")

    with pytest.raises(ValueError):
        pool.submit(tasks.record_and_fail, path, "once").result(TIMEOUT)
    assert pool.submit(tasks.square, 2).result(TIMEOUT) == 4
    assert tasks.read_lines(path) == ["once"], "a task that raised was run again"


# ---- task timeout --------------------------------------------------------------------------


def test_task_timeout(braid, pools):
    pool = pools(max_workers=2, task_timeout=0.5)
    t0 = time.monotonic()
    slow = pool.submit(tasks.sleep_record_pid, os.devnull, 30, "never")
    quick = [pool.submit(tasks.sleep_and_return, 0.01, i) for i in range(20)]
    exc = slow.exception(TIMEOUT)
    elapsed = time.monotonic() - t0
    assert isinstance(exc, braid.TaskTimeout), repr(exc)
    assert isinstance(exc, TimeoutError)
    assert 0.4 <= elapsed < 5.0, elapsed
    assert [f.result(TIMEOUT) for f in quick] == list(range(20))
    # The pool still works (the killed worker was replaced).
    assert [f.result(TIMEOUT) for f in [pool.submit(tasks.square, i) for i in range(20)]] == [
        i * i for i in range(20)
    ]


def test_task_timeout_kills_the_worker(braid, pools, tmp_path):
    pool = pools(max_workers=1, task_timeout=0.3)
    pidfile = str(tmp_path / "pid")
    slow = pool.submit(tasks.sleep_record_pid, pidfile, 30, "never")
    assert isinstance(slow.exception(TIMEOUT), braid.TaskTimeout)
    pid = int(tasks.read_lines(pidfile)[0])
    assert not tasks.wait_processes_gone([pid], TIMEOUT, zombie_ok=False), "worker not killed"
    assert pool.submit(tasks.getpid).result(TIMEOUT) != pid


def test_task_timeout_counts_from_start_not_submit(pools):
    # One worker, three 0.25 s tasks, timeout 0.6 s: the last one starts 0.5 s after its
    # submit, and must not be charged for its time in the queue.
    pool = pools(max_workers=1, task_timeout=0.6)
    futures = [pool.submit(tasks.sleep_and_return, 0.25, i) for i in range(3)]
    assert [f.result(TIMEOUT) for f in futures] == [0, 1, 2]


# ---- max_tasks_per_worker ------------------------------------------------------------------


def test_max_tasks_per_worker(pools):
    pool = pools(max_workers=2, max_tasks_per_worker=3)
    results = [f.result(TIMEOUT) for f in [pool.submit(tasks.pid_and_value, i) for i in range(30)]]
    assert [v for _, v in results] == list(range(30))
    pids = [pid for pid, _ in results]
    assert len(set(pids)) >= 10, f"30 tasks at 3 per worker ran in only {len(set(pids))} workers"
    for pid in set(pids):
        assert pids.count(pid) <= 3


def test_max_tasks_per_worker_one(pools):
    pool = pools(max_workers=2, max_tasks_per_worker=1)
    got = list(pool.map(tasks.pid_and_value, range(12), chunksize=1, timeout=TIMEOUT))
    assert [v for _, v in got] == list(range(12))
    assert len({pid for pid, _ in got}) == 12


def test_max_tasks_per_worker_with_initializer(pools):
    pool = pools(max_workers=2, max_tasks_per_worker=2, initializer=tasks.init_global,
                 initargs=("set",))
    results = [f.result(TIMEOUT) for f in [pool.submit(tasks.get_global) for _ in range(12)]]
    assert all(value == "set" for value, _ in results), "a replacement worker skipped init"
    assert len({pid for _, pid in results}) >= 6


def test_max_tasks_per_child_is_the_stdlib_name(pools, braid):
    pool = pools(max_workers=1, max_tasks_per_child=2)
    pids = [f.result(TIMEOUT) for f in [pool.submit(tasks.getpid) for _ in range(6)]]
    assert [pids.count(pid) for pid in dict.fromkeys(pids)] == [2, 2, 2], pids
    with pytest.raises(TypeError, match="not both"):
        braid.ProcessPool(1, max_tasks_per_worker=2, max_tasks_per_child=2)
    with pytest.raises(ValueError):
        braid.ProcessPool(1, max_tasks_per_child=0)


# ---- the stdlib's contract ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_mp_context_accepted_positionally_as_the_stdlib_does(pools, method):
    # ProcessPoolExecutor(max_workers, mp_context, initializer, initargs): braid's workers are
    # fresh interpreters whatever the context says
    pool = pools(1, multiprocessing.get_context(method), tasks.init_global, ("set",))
    value, pid = pool.submit(tasks.get_global).result(TIMEOUT)
    assert value == "set" and pid != os.getpid()


def test_mp_context_of_the_wrong_type(braid):
    with pytest.raises(TypeError, match="mp_context"):
        braid.ProcessPool(1, "spawn")


def test_worker_crashed_is_a_broken_process_pool(braid, pools):
    # existing `except BrokenProcessPool` / `except BrokenExecutor` handlers see it; the pool
    # itself lives on
    assert issubclass(braid.WorkerCrashed, cf.process.BrokenProcessPool)
    pool = pools(max_workers=1)
    with pytest.raises(cf.BrokenExecutor):
        pool.submit(tasks.crash, "exit").result(TIMEOUT)
    assert pool.submit(tasks.square, 4).result(TIMEOUT) == 16


def test_manager_proxies_work_in_tasks(pools):
    # workers carry this process's multiprocessing authkey, as spawned children do
    with multiprocessing.get_context("spawn").Manager() as manager:
        shared = manager.list()
        queue = manager.Queue()
        pool = pools(max_workers=2)
        futures = [pool.submit(tasks.append_to, shared, i) for i in range(6)]
        assert [f.result(TIMEOUT) for f in futures] == [None] * 6
        assert sorted(shared) == list(range(6))
        pool.submit(tasks.put_on, queue, "hello").result(TIMEOUT)
        assert queue.get(timeout=TIMEOUT) == "hello"


# ---- cancellation --------------------------------------------------------------------------


def test_cancel_every_queued_task(pools, tmp_path):
    # Unlike the stdlib (whose call queue holds max_workers + 1 uncancellable items), every
    # task that has not started can be cancelled, also one already handed to a busy worker.
    pool, gate, blocked = blocked_worker_pool(pools, tmp_path)
    ran_path = str(tmp_path / "ran")
    queued = [pool.submit(tasks.record, ran_path, i) for i in range(10)]
    time.sleep(0.05)
    assert not any(f.running() or f.done() for f in queued)
    assert all(f.cancel() for f in queued)
    done, not_done = cf.wait(queued, timeout=TIMEOUT)
    assert not not_done
    tail = pool.submit(tasks.record, ran_path, 99)
    gate.set()
    assert blocked.result(TIMEOUT) == "blocker"
    assert tail.result(TIMEOUT) == 99
    assert tasks.read_lines(ran_path) == ["99"], "a cancelled task ran"


# ---- shutdown details ----------------------------------------------------------------------


def test_shutdown_cancel_futures_reported_to_wait(pools, tmp_path):
    # braid reports futures cancelled by shutdown(cancel_futures=True) to wait() (the stdlib
    # does not, see test_procpool.py).
    pool, gate, blocked = blocked_worker_pool(pools, tmp_path)
    queued = [pool.submit(tasks.square, i) for i in range(10)]
    pool.shutdown(wait=False, cancel_futures=True)
    # The first one or two may already sit in the busy worker's ring (running, like the
    # stdlib's call queue); the rest are cancelled and wait() sees that at once.
    tail = queued[5:]
    t0 = time.monotonic()
    done, not_done = cf.wait(tail, timeout=TIMEOUT)
    assert not not_done and time.monotonic() - t0 < 1.0
    assert all(f.cancelled() for f in tail)
    gate.set()
    assert blocked.result(TIMEOUT) == "blocker"
    for i, f in enumerate(queued):
        assert f.cancelled() or f.result(TIMEOUT) == i * i


# ---- Ctrl-C and orphans --------------------------------------------------------------------

KEYBOARD_INTERRUPT_SCRIPT = """
import itertools, sys
sys.path.insert(0, sys.argv[1])
import braid
import procpool_tasks

if __name__ == "__main__":
    pidfile, mode = sys.argv[2], sys.argv[3]
    args = (itertools.repeat(pidfile, 400), itertools.repeat(0.2, 400), range(400))
    if mode == "with":
        with braid.ProcessPool(max_workers=2) as pool:
            print("map starting", flush=True)
            results = list(pool.map(procpool_tasks.sleep_record_pid, *args))
    elif mode.endswith("result"):  # long tasks, a queue behind them, waited for in result()
        pool = braid.ProcessPool(max_workers=2)
        if mode == "with-result":
            pool.__enter__()
        futures = [pool.submit(procpool_tasks.sleep_record_pid, pidfile, 60, i) for i in range(4)]
        futures[0].result()
    else:
        pool = braid.ProcessPool(max_workers=2)
        print("map starting", flush=True)
        results = list(pool.map(procpool_tasks.sleep_record_pid, *args))
    print("map finished", flush=True)
"""


def start_script(tmp_path, source, *args):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    out = open(tmp_path / "stdout", "wb")
    err = open(tmp_path / "stderr", "wb")
    try:
        return subprocess.Popen(
            [sys.executable, str(script), TESTS_DIR, *map(str, args)],
            stdout=out,
            stderr=err,
            cwd=str(tmp_path),
            start_new_session=True,  # our signals go to the script alone, by pid
        )
    finally:
        out.close()
        err.close()


def wait_for_pids(pidfile, n, proc, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        pids = {int(p) for p in tasks.read_lines(pidfile)}
        if len(pids) >= n:
            return pids
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"script did not start {n} workers (exit status {proc.poll()}, "
                        f"stderr: {(pidfile.parent / 'stderr').read_text()[-2000:]})")
        time.sleep(0.01)


def test_terminate_kills_running_tasks_and_cancels_queued_ones(braid, pools, tmp_path):
    pidfile = tmp_path / "pids"
    pool = pools(max_workers=2)
    running = [pool.submit(tasks.sleep_record_pid, str(pidfile), 30, i) for i in range(2)]
    queued = [pool.submit(tasks.square, i) for i in range(5)]
    deadline = time.monotonic() + TIMEOUT
    while len(pids := {int(p) for p in tasks.read_lines(pidfile)}) < 2:
        assert time.monotonic() < deadline, "the two tasks did not start"
        time.sleep(0.01)
    t0 = time.monotonic()
    pool.terminate()
    assert time.monotonic() - t0 < 5, "terminate waited for the running tasks"
    for fut in running:
        assert isinstance(fut.exception(TIMEOUT), braid.WorkerCrashed)
    assert all(fut.cancelled() for fut in queued)
    assert all(tasks.process_gone(pid, zombie_ok=False) for pid in pids)
    with pytest.raises(RuntimeError):
        pool.submit(tasks.square, 1)


@pytest.mark.parametrize("target", ["parent", "group"])
@pytest.mark.parametrize("mode", ["with", "plain", "with-result", "plain-result"])
def test_keyboard_interrupt_in_parent(braid, tmp_path, mode, target):
    # Ctrl-C as a terminal sends it (to the whole process group) or to the parent alone: the
    # KeyboardInterrupt ends the script, running 60 s tasks included, and no worker is left.
    pidfile = tmp_path / "pids"
    proc = start_script(tmp_path, KEYBOARD_INTERRUPT_SCRIPT, pidfile, mode)
    pids = set()
    try:
        pids = wait_for_pids(pidfile, 2, proc)
        if target == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail("the script did not exit within 5 s of SIGINT; stderr: "
                        + (tmp_path / "stderr").read_text()[-2000:])
        assert time.monotonic() - t0 < 5
        assert b"map finished" not in (tmp_path / "stdout").read_bytes()
        assert b"KeyboardInterrupt" in (tmp_path / "stderr").read_bytes()
        time.sleep(1.0)
        pids |= {int(p) for p in tasks.read_lines(pidfile)}
        alive = [pid for pid in pids if not tasks.process_gone(pid)]
        assert not alive, f"workers {alive} survived the interrupted script"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        tasks.kill_quietly(pids | {int(p) for p in tasks.read_lines(pidfile)})


ORPHAN_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[1])
import braid
import procpool_tasks

if __name__ == "__main__":
    pidfile = sys.argv[2]
    pool = braid.ProcessPool(max_workers=2)
    futures = [pool.submit(procpool_tasks.sleep_record_pid, pidfile, 20, i) for i in range(4)]
    time.sleep(60)
"""


def test_workers_die_with_a_killed_parent(braid, tmp_path):
    pidfile = tmp_path / "pids"
    proc = start_script(tmp_path, ORPHAN_SCRIPT, pidfile)
    pids = set()
    try:
        pids = wait_for_pids(pidfile, 2, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(TIMEOUT)
        alive = tasks.wait_processes_gone(pids, timeout=2.0)
        assert not alive, f"workers {alive} outlived their SIGKILLed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        tasks.kill_quietly(pids | {int(p) for p in tasks.read_lines(pidfile)})


# ---- exceptions that cannot be sent back as they are ----------------------------------

UNSENDABLE_MESSAGES = {
    "lock": "procpool_tasks.HoldsALock: holds a lock (the exception could not be sent back: TypeError",
    "reduce": "procpool_tasks.ReduceRaises:  (the exception could not be sent back: ValueError: no reduce",
    "recursion": "procpool_tasks.TooDeep: too deep (the exception could not be sent back: RecursionError",
    "two-arguments": "procpool_tasks.NeedsTwoArguments: 1 and 2 (the exception could not be received: "
                     "TypeError",
}


@pytest.mark.parametrize("kind", list(UNSENDABLE_MESSAGES))
def test_unsendable_exception_keeps_the_worker_traceback(pools, kind):
    # A stand-in RuntimeError names the original type and message, and carries the worker's
    # traceback as __cause__ like any other task exception; the worker lives on.
    pool = pools(max_workers=1)
    pid = pool.submit(tasks.getpid).result(TIMEOUT)
    exc = pool.submit(tasks.raise_unsendable, kind).exception(TIMEOUT)
    assert type(exc) is RuntimeError, repr(exc)
    assert str(exc).startswith(UNSENDABLE_MESSAGES[kind]), str(exc)
    cause = str(exc.__cause__)
    assert "raise_unsendable" in cause and "Traceback" in cause, cause
    assert pool.submit(tasks.getpid).result(TIMEOUT) == pid


@pytest.mark.parametrize("kind", ["lock", "two-arguments"])
def test_unsendable_exception_in_map_keeps_position_and_traceback(pools, kind):
    pool = pools(max_workers=2)
    results = pool.map(functools.partial(tasks.raise_unsendable_at, kind, 37), range(100), chunksize=10)
    got = []
    with pytest.raises(RuntimeError) as info:
        for value in results:
            got.append(value)
    assert got == list(range(37))
    assert str(info.value).startswith(UNSENDABLE_MESSAGES[kind]), str(info.value)
    assert "raise_unsendable" in str(info.value.__cause__)


def test_unsendable_initializer_exception_breaks_the_pool_with_its_name(braid, pools):
    pool = pools(max_workers=1, initializer=tasks.raise_unsendable, initargs=("lock",))
    exc = pool.submit(tasks.getpid).exception(TIMEOUT)
    assert isinstance(exc, cf.process.BrokenProcessPool), repr(exc)
    assert "HoldsALock" in str(exc), str(exc)


LATE_MANAGER_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import braid
import procpool_tasks

if __name__ == "__main__":
    assert "multiprocessing" not in sys.modules
    with braid.ProcessPool(max_workers=2) as pool:
        assert pool.submit(pow, 2, 5).result(60) == 32
        # neither the pool nor its first result needed multiprocessing in this process
        assert "multiprocessing" not in sys.modules, sorted(m for m in sys.modules if "multi" in m)
        import multiprocessing
        with multiprocessing.Manager() as manager:
            queue = manager.Queue()
            pool.submit(procpool_tasks.put_on, queue, "late").result(60)
            print("got", queue.get(timeout=60), flush=True)
"""


def test_manager_made_after_the_pool_shares_the_workers_authkey(braid, tmp_path):
    # The first pool of a process that has not imported multiprocessing gives its workers a
    # key that multiprocessing adopts here once imported, so a later Manager() still works.
    proc = run_script(tmp_path, LATE_MANAGER_SCRIPT)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert b"got late" in proc.stdout

# ---- max_worker_memory ---------------------------------------------------------------------

def _statm_fds():
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}").endswith("/statm")
        except OSError:  # the listing's own fd, closed since
            pass
    return found


def test_a_worker_s_memory_is_watched_only_under_a_cap(braid, pools):
    # each watched worker costs the parent an fd (its /proc/<pid>/statm): not spent without a
    # cap, where a 1024-fd limit already runs out at about 160 workers
    before = _statm_fds()
    plain = pools(max_workers=3)
    assert [plain.submit(tasks.getpid).result(TIMEOUT) for _ in range(3)]
    assert _statm_fds() == before
    capped = pools(max_workers=2, max_worker_memory=200 << 20)
    assert capped.submit(tasks.getpid).result(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while len(capped.pids) < 2:  # both workers started
        assert time.monotonic() < deadline, capped.pids
        time.sleep(0.01)
    assert _statm_fds() == before + 2


def test_max_worker_memory_recycles_after_a_task(braid, pools):
    # The worker goes over the cap while idle (not polled then); the next task's result is
    # checked: that task succeeds, and the worker is replaced after it.
    pool = pools(max_workers=1, max_worker_memory=200 << 20)
    # late enough that the pool has checked the first result before the worker grows, even
    # under the sanitizers on a loaded machine (at 50 ms it once grew first: replaced early)
    pid = pool.submit(tasks.hold_memory_later, 240, 0.3).result(TIMEOUT)
    time.sleep(1.5)
    assert pool.submit(tasks.getpid).result(TIMEOUT) == pid
    deadline = time.monotonic() + TIMEOUT
    while pool.submit(tasks.getpid).result(TIMEOUT) == pid:
        assert time.monotonic() < deadline, "the worker over the cap was not replaced"


def test_max_worker_memory_kills_a_task_over_it(braid, pools):
    pool = pools(max_workers=1, max_worker_memory=200 << 20)
    exc = pool.submit(tasks.hold_memory, 400, 30).exception(TIMEOUT)
    assert isinstance(exc, braid.WorkerCrashed), repr(exc)
    assert "max_worker_memory" in str(exc) and str(200 << 20) in str(exc)
    assert exc.signal == signal.SIGKILL
    assert pool.submit(tasks.square, 7).result(TIMEOUT) == 49  # the pool lives on


def test_max_worker_memory_checks_its_argument(braid):
    with pytest.raises(ValueError):
        braid.ProcessPool(1, max_worker_memory=0)
    with pytest.raises(TypeError):
        braid.ProcessPool(1, max_worker_memory=1.5)
    for bad in ("lots", "2 GiBs", "", "-1GB", "0 MiB", "GiB"):
        with pytest.raises(ValueError, match="max_worker_memory"):
            braid.ProcessPool(1, max_worker_memory=bad)


@pytest.mark.parametrize("text, size", [("2GiB", 2 << 30), ("1.5 GB", 1_500_000_000), ("800MiB", 800 << 20),
                                        ("4096", 4096), ("64 kib", 64 << 10)])
def test_max_worker_memory_reads_sizes(text, size):
    from braid import _procpool

    assert _procpool._memory_size(text) == size


def test_max_worker_memory_as_a_string_names_the_cap(braid, pools):
    pool = pools(max_workers=1, max_worker_memory="200MiB")
    exc = pool.submit(tasks.hold_memory, 400, 30).exception(TIMEOUT)
    assert isinstance(exc, braid.WorkerCrashed) and str(200 << 20) in str(exc), repr(exc)
    assert pool.submit(tasks.square, 7).result(TIMEOUT) == 49


def test_a_waiting_thread_finishes_its_own_future(braid):
    # A result for a future some thread waits on is handed to that thread (it finishes the
    # future itself; the loop thread does not take the GIL for it): done callbacks run there.
    import threading

    with braid.ProcessPool(1) as pool:
        for _ in range(50):
            pool.submit(pow, 2, 2).result()
        main = threading.get_ident()
        where = []
        for i in range(100):
            f = pool.submit(pow, 2, i)
            f.add_done_callback(lambda f: where.append(threading.get_ident() == main))
            assert f.result() == 2 ** i
        assert len(where) == 100
        assert sum(where) > 0  # at least some were (a busy machine may let the loop thread win)


def test_a_result_handed_to_a_waiter_that_left_is_not_lost(braid):
    # The waiter gives up (timeout) just as its result arrives: the result reaches the future
    # anyway, without anyone calling result() again.
    import concurrent.futures
    import time

    with braid.ProcessPool(1) as pool:
        for delay in (0.02, 0.03, 0.05) * 5:
            f = pool.submit(time.sleep, delay)
            try:
                f.result(timeout=delay * 0.99)
            except concurrent.futures.TimeoutError:
                pass
            deadline = time.monotonic() + 10
            while not f.done():
                assert time.monotonic() < deadline, "a finished task's future never became done"
                time.sleep(0.001)
            assert f.result() is None


def test_one_at_a_time_results_with_out_of_band_buffers(braid):
    # A waiter may take a short task's result off the ring itself; a result whose large buffers
    # live in the worker's memfds is not taken (the worker keeps them until the result is
    # acknowledged, and acknowledgements are cumulative): every one must still arrive whole.
    with braid.ProcessPool(1) as pool:
        for _ in range(50):
            pool.submit(pow, 2, 2).result()  # tasks known to be short: waiters take
        for i in range(40):
            if i % 2:
                data = pool.submit(tasks.echo, bytearray(b"%d" % i) * (1 << 20)).result(TIMEOUT)
                assert len(data) == len(b"%d" % i) << 20 and data[:len(b"%d" % i)] == b"%d" % i
            else:
                assert pool.submit(pow, 3, i).result(TIMEOUT) == 3 ** i


def test_a_dropped_pools_futures_still_finish(braid):
    # The pool object goes at once; the waiter takes or is handed its result while the pool
    # closes and frees itself.
    for i in range(200):
        assert braid.ProcessPool(1).submit(pow, 2, i).result(TIMEOUT) == 2 ** i


def test_waiters_on_several_threads_each_get_their_own_results(braid):
    import threading

    with braid.ProcessPool(2) as pool:
        errors = []

        def waiter(k):
            try:
                for i in range(300):
                    assert pool.submit(pow, k, i).result(TIMEOUT) == k ** i
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=waiter, args=(k,)) for k in (2, 3, 5, 7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT * 3)
        assert not errors
