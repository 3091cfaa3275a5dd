"""braid.map, braid.imap and braid.amap.

Each mode on list, range and generator inputs; auto's choice judged by what it did (which
processes and threads ran the items), not by what it printed; every item run exactly once
(side effects counted in files, so process workers count too); results in input order;
progress; the first failure with its index; timeouts; Ctrl-C in a script; imap's laziness
on endless input; amap inside a running loop; Dask on a LocalCluster; bad input.

Task functions live in ``map_tasks.py`` so worker processes can import them. Every wait is
bounded: a bug fails a test, it does not hang the run.
"""

import asyncio
import concurrent.futures as cf
import functools
import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS_DIR)
import map_tasks as tasks  # noqa: E402
import procpool_tasks  # noqa: E402
from pool_helpers import TIMEOUT, GuardedCount, import_braid  # noqa: E402

MODES = ["sequential", "thread", "process", "auto"]


@pytest.fixture
def braid():
    return import_braid()


def inputs(n):
    """The same n items as a list, a range and a generator."""
    return {"list": list(range(n)), "range": range(n), "generator": (x for x in range(n))}


def counts(path):
    """How many times each item was recorded in the file at ``path``."""
    seen = {}
    for line in procpool_tasks.read_lines(path):
        seen[int(line)] = seen.get(int(line), 0) + 1
    return seen


# ---- every mode: results, order, exactly once ----------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["list", "range", "generator"])
def test_results_in_input_order(braid, mode, kind):
    items = inputs(300)[kind]
    assert braid.map(tasks.square, items, mode=mode) == [x * x for x in range(300)]


@pytest.mark.parametrize("mode", MODES)
def test_each_item_runs_exactly_once(braid, mode, tmp_path):
    path = tmp_path / "calls"
    n = 500
    result = braid.map(tasks.Recorder(path), (x for x in range(n)), mode=mode)
    assert result == [x + 1 for x in range(n)]
    assert counts(path) == {x: 1 for x in range(n)}


def test_each_item_runs_once_when_auto_goes_to_processes(braid, tmp_path, caplog):
    # CPU-bound items, enough work that auto hands the rest to processes after calibrating
    # on the first ones: calibration's items must not run again in the pool.
    path = tmp_path / "calls"
    with caplog.at_level(logging.INFO, logger="braid"):
        result = braid.map(tasks.Recorder(path, 0.01, busy=True), list(range(80)))
    assert result == [x + 1 for x in range(80)]
    assert counts(path) == {x: 1 for x in range(80)}
    # processes; on 3.12+ sub-interpreters when the module loads in one (it does on 3.13)
    assert "→ process" in caplog.text or "→ interpreter" in caplog.text


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_order_kept_when_items_finish_out_of_order(braid, mode):
    delays = [0.02 if x % 5 == 0 else 0.0 for x in range(60)]
    fn = functools.partial(_sleep_then_return)
    assert braid.map(fn, list(zip(range(60), delays)), mode=mode, chunksize=1, workers=4) == list(range(60))


def _sleep_then_return(pair):
    x, delay = pair
    time.sleep(delay)
    return x


def test_empty_input(braid):
    for mode in MODES:
        assert braid.map(tasks.square, [], mode=mode) == []
        assert list(braid.imap(tasks.square, iter(()), mode=mode)) == []


def test_fixed_workers_and_chunksize(braid):
    out = braid.map(tasks.where, range(40), mode="thread", workers=3, chunksize=5)
    assert [x for x, _, _ in out] == list(range(40))
    assert len({tid for _, _, tid in out}) <= 3
    out = braid.map(tasks.where, range(40), mode="process", workers=2, chunksize=5)
    assert {pid for _, pid, _ in out} - {os.getpid()}
    assert os.getpid() not in {pid for _, pid, _ in out}


def test_executor_argument(braid):
    with cf.ThreadPoolExecutor(3) as pool:
        assert braid.map(tasks.square, range(100), executor=pool) == [x * x for x in range(100)]
        assert list(braid.imap(tasks.square, iter(range(10)), executor=pool)) == [x * x for x in range(10)]
    with cf.ProcessPoolExecutor(2) as pool:
        out = braid.map(tasks.where, range(20), executor=pool)
        assert [x for x, _, _ in out] == list(range(20))
        assert os.getpid() not in {pid for _, pid, _ in out}


# ---- auto mode: the rule of thumb, by what it did ------------------------------------------


def test_auto_tiny_items_stay_in_the_calling_thread(braid):
    out = braid.map(tasks.where, range(20_000))
    assert {(pid, tid) for _, pid, tid in out} == {(os.getpid(), threading.get_ident())}


def test_auto_waiting_items_go_to_many_threads(braid, caplog):
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="braid"):
        out = braid.map(functools.partial(tasks.sleepy_where, seconds=0.02), range(100))
    elapsed = time.monotonic() - t0
    assert [x for x, _, _ in out] == list(range(100))
    assert {pid for _, pid, _ in out} == {os.getpid()}
    # Little's law: items that wait ~100x longer than they compute need many threads
    assert len({tid for _, _, tid in out}) >= 16
    assert elapsed < 100 * 0.02 / 4, f"{elapsed:.2f} s: not concurrent enough"
    assert "waiting-bound" in caplog.text and "→ thread" in caplog.text


def test_auto_cpu_bound_items_go_to_processes(braid):
    # to worker processes; on 3.12+ to sub-interpreters (worker threads of this process)
    # instead when the function's module loads in one, as map_tasks does on 3.13
    out = braid.map(functools.partial(tasks.busy_where, seconds=0.01), range(100))
    assert [x for x, _, _ in out] == list(range(100))
    here = (os.getpid(), threading.get_ident())
    assert any((pid, tid) != here for _, pid, tid in out)
    # calibration ran the first items here, the rest ran in workers
    assert sum((pid, tid) == here for _, pid, tid in out) < 20


def test_auto_coroutine_function_runs_on_a_braid_loop(braid):
    assert braid.map(tasks.async_where, range(10)) == [(x, "Loop") for x in range(10)]


def test_auto_unpicklable_function_falls_back_to_threads_and_says_so(braid, capsys):
    lock = threading.Lock()

    def busy(x):  # a closure over a lock: neither pickle nor cloudpickle can send it
        with lock:
            pass
        return tasks.busy_where(x, 0.01)

    out = braid.map(busy, range(60), explain=True)
    assert [x for x, _, _ in out] == list(range(60))
    assert {pid for _, pid, _ in out} == {os.getpid()}
    err = capsys.readouterr().err
    assert "does not pickle" in err and "threads instead of processes" in err


def test_explain_prints_one_line_and_logs_it(braid, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="braid"):
        braid.map(tasks.square, range(1000), explain=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    line = err[0]
    assert line.startswith("braid.map: 1,000 items; first ")
    unit = r"[\d.]+ (ns|µs)"
    first = rf"( after the first \({unit}\))?"
    # tiny items stay sequential; whether they read as CPU-bound or mixed depends on what else
    # the machine ran during those 0.5 ms (a CI run measured 385 ns CPU in 502 ns wall: mixed)
    shape = r"\((CPU-bound|mixed)\)"
    assert re.search(rf"took {unit} CPU / {unit} wall each{first} {shape} → sequential", line), line
    assert [r.getMessage() for r in caplog.records if r.name == "braid"] == [line]
    braid.map(tasks.square, range(10))  # explain=False: nothing on stderr
    assert capsys.readouterr().err == ""


# ---- progress ------------------------------------------------------------------------------


def test_progress_bar_on_stderr(braid, capsys):
    braid.map(tasks.square, range(50), mode="thread", progress=True)
    err = capsys.readouterr().err
    assert "50/50" in err and "100%" in err


def test_progress_callable_gets_done_and_total(braid):
    seen = []
    braid.map(tasks.square, range(200), mode="process", chunksize=10, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (200, 200)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    seen.clear()
    list(braid.imap(tasks.square, (x for x in range(30)), mode="sequential", progress=lambda d, t: seen.append((d, t))))
    assert seen[-1] == (30, None)


def test_progress_tqdm_instance_is_updated_not_closed(braid):
    from tqdm import tqdm

    bar = tqdm(total=None, disable=False, file=open(os.devnull, "w"))
    braid.map(tasks.square, range(120), mode="thread", progress=bar)
    assert bar.n == 120 and bar.total == 120
    bar.update(1)  # still open
    bar.close()


def test_bad_progress_argument(braid):
    with pytest.raises(TypeError, match="progress"):
        braid.map(tasks.square, range(3), progress=3)


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_first_exception_names_the_item(braid, mode):
    with pytest.raises(ValueError, match="item 37 is bad") as info:
        braid.map(tasks.fail_at, range(100), mode=mode, chunksize=8 if mode != "sequential" else None)
    notes = getattr(info.value, "__notes__", [])
    assert any("item 37 of the input: 37" in note for note in notes), notes


def test_process_failure_keeps_the_worker_traceback(braid):
    with pytest.raises(ValueError) as info:
        braid.map(tasks.fail_at, range(100), mode="process")
    assert "fail_at" in str(info.value.__cause__)


def test_async_failure_names_the_item_and_cancels_the_rest(braid):
    with pytest.raises(KeyError) as info:
        braid.map(tasks.async_fail_at, range(50))
    assert any("item 5 of the input" in n for n in info.value.__notes__)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_failure_cancels_what_has_not_started(braid, mode, tmp_path):
    path = tmp_path / "calls"
    fn = tasks.Recorder(path, 0.02)

    def items():
        yield "boom"  # Recorder fails on a str: "boom" + 1
        yield from range(1, 400)

    t0 = time.monotonic()
    with pytest.raises(TypeError) as info:
        braid.map(fn, list(items()), mode=mode, workers=2, chunksize=1)
    assert time.monotonic() - t0 < 400 * 0.02 / 2 / 2
    assert any("item 0 of the input: 'boom'" in n for n in info.value.__notes__)
    assert len(counts(path)) < 100, "the map went on after its first failure"


def test_an_abandoned_thread_map_s_running_chunks_start_no_more_items(braid, tmp_path):
    # threads cannot be killed, but a chunk running on one skips its items not started once
    # the map is abandoned (here by a failure; Ctrl-C and a closed imap take the same path):
    # chunks of 100 slow items no longer run on for their whole length
    path = tmp_path / "calls"
    fn = tasks.Recorder(path, 0.02)
    items = ["boom"] + list(range(1, 200))  # the first chunk fails at once; the second runs
    with pytest.raises(TypeError):
        braid.map(fn, items, mode="thread", workers=2, chunksize=100)
    time.sleep(100 * 0.02 + 0.5)  # the second chunk's length, had it gone on
    assert len(counts(path)) < 50, "a running chunk went on after the map was abandoned"


@pytest.mark.parametrize("mode", ["sequential", "thread", "process", "auto"])
def test_timeout(braid, mode):
    fn = functools.partial(tasks.sleepy_where, seconds=0.05)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="timeout of 0.3 s"):
        braid.map(fn, range(200), mode=mode, timeout=0.3, workers=2, chunksize=1)
    assert time.monotonic() - t0 < 0.3 + 2.0


def test_thread_timeout_does_not_wait_for_running_items(braid):
    fn = functools.partial(tasks.sleepy_where, seconds=3)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        braid.map(fn, range(4), mode="thread", workers=4, timeout=0.2)
    assert time.monotonic() - t0 < 2, "the 3 s items were waited for"


def test_auto_timeout_during_calibration_counts_the_item_it_ran(braid):
    # auto measures the first item in the calling thread; it cannot be stopped mid-call, and
    # once it ends past the deadline the map stops there, counting it, with no pool started
    fn = functools.partial(tasks.sleepy_where, seconds=0.8)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="1 of 4 items done when the timeout of 0.2 s"):
        braid.map(fn, range(4), timeout=0.2)
    assert time.monotonic() - t0 < 2 * 0.8  # a second item (or a pool's) would take this long


def test_timeout_async(braid):
    async def slow(x):
        await asyncio.sleep(10)

    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        braid.map(slow, range(100), timeout=0.2)
    assert time.monotonic() - t0 < 2


def test_process_mode_leaves_no_worker_after_a_failure(braid, tmp_path):
    pidfile = tmp_path / "pids"
    fn = functools.partial(tasks.record_pid_and_sleep, str(pidfile))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        braid.map(fn, range(10), mode="process", workers=2, chunksize=1, timeout=1.0)
    assert time.monotonic() - t0 < 5, "the workers' 60 s sleeps were waited for"
    pids = {int(p) for p in procpool_tasks.read_lines(pidfile)}
    assert len(pids) == 2
    deadline = time.monotonic() + TIMEOUT
    while not all(procpool_tasks.process_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(procpool_tasks.process_gone(pid) for pid in pids)


CTRL_C_SCRIPT = """
import functools, sys
sys.path.insert(0, sys.argv[1])
import braid, map_tasks

if __name__ == "__main__":
    mode = sys.argv[3]
    record = map_tasks.async_record_pid_and_sleep if mode == "async" else map_tasks.record_pid_and_sleep
    fn = functools.partial(record, sys.argv[2])
    braid.map(fn, range(20), mode=mode, workers=2, chunksize=None if mode == "async" else 1)
    print("map finished", flush=True)
"""


@pytest.mark.parametrize("mode", ["process", "auto", "async"])
def test_ctrl_c_cancels_everything_and_leaves_no_worker(braid, tmp_path, mode):
    pidfile = tmp_path / "pids"
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(CTRL_C_SCRIPT))
    proc = subprocess.Popen([sys.executable, str(script), TESTS_DIR, str(pidfile), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path),
                            start_new_session=True)
    pids = set()
    try:
        deadline = time.monotonic() + TIMEOUT * 2
        # auto: calibration runs the first item here (60 s), so the script's own pid shows
        want = {"process": 2, "auto": 1, "async": 20}[mode]
        while len(procpool_tasks.read_lines(pidfile)) < want:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        pids = {int(p) for p in procpool_tasks.read_lines(pidfile)}
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=5)
        assert time.monotonic() - t0 < 5
        assert b"map finished" not in out
        assert b"KeyboardInterrupt" in err
        time.sleep(0.5)
        pids |= {int(p) for p in procpool_tasks.read_lines(pidfile)}
        alive = [pid for pid in pids if not procpool_tasks.process_gone(pid)]
        assert not alive, f"workers {alive} survived Ctrl-C"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        procpool_tasks.kill_quietly(pids - {os.getpid()})


# ---- imap ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES + ["async"])
def test_imap_is_lazy_on_an_endless_iterator(braid, mode):
    source = GuardedCount(limit=200_000)
    fn = tasks.async_double if mode == "async" else tasks.square
    it = braid.imap(fn, source, mode=mode, workers=2)
    first = list(itertools.islice(it, 50))
    assert first == [fn_result(mode, x) for x in range(50)]
    assert source.pulled < 200_000
    it.close()


def fn_result(mode, x):
    return 2 * x if mode == "async" else x * x


def test_imap_reads_nothing_before_the_first_next(braid):
    source = GuardedCount(limit=1 << 17)  # calibration reads at most 65,536 items
    it = braid.imap(tasks.square, source)
    assert source.pulled == 0
    assert next(it) == 0
    it.close()


def test_imap_close_cancels_the_rest(braid, tmp_path):
    path = tmp_path / "calls"
    it = braid.imap(tasks.Recorder(path, 0.01), range(1000), mode="thread", workers=4, chunksize=1)
    assert next(it) == 1
    it.close()
    time.sleep(0.2)
    done = len(counts(path))
    time.sleep(0.2)
    assert len(counts(path)) == done < 50


# ---- async and amap ------------------------------------------------------------------------


class InFlight:
    """A coroutine function (x -> 2x) that counts how many of its calls run at once."""

    def __init__(self, delay=0.0):
        self.delay = delay
        self.running = 0
        self.peak = 0

    async def __call__(self, x):
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(self.delay)
        self.running -= 1
        return 2 * x


def test_async_mode_limits_the_coroutines_in_flight(braid):
    fn = InFlight(0.001)
    assert braid.map(fn, range(500), mode="async", limit=20) == [2 * x for x in range(500)]
    assert fn.peak == 20
    assert braid.map(fn, range(3000)) == [2 * x for x in range(3000)]
    assert fn.peak == 1000  # the default limit


def test_amap_inside_a_running_loop(braid):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        tick = asyncio.ensure_future(ticker())
        coro = await braid.amap(tasks.async_double, range(100))
        blocking = await braid.amap(functools.partial(tasks.sleepy_where, seconds=0.01), range(40))
        tick.cancel()
        return coro, [x for x, _, _ in blocking], ticks

    coro, blocking, ticks = asyncio.run(main())
    assert coro == [2 * x for x in range(100)]
    assert blocking == list(range(40))
    assert ticks >= 3, "the loop was blocked while amap ran plain functions"


def test_amap_cancelled_cancels_the_map(braid, tmp_path, caplog):
    import gc

    path = tmp_path / "calls"

    async def main():
        task = asyncio.ensure_future(braid.amap(tasks.Recorder(path, 0.01), range(2000),
                                                mode="thread", workers=2, chunksize=1))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        braid.run(main())
        gc.collect()
    done = len(counts(path))
    time.sleep(0.2)
    assert len(counts(path)) <= done + 2 < 200
    assert "never retrieved" not in caplog.text  # the map's own future, cancelled by it


def test_sync_map_of_coroutines_inside_a_loop_is_an_error(braid):
    async def main():
        with pytest.raises(RuntimeError, match="braid.amap"):
            braid.map(tasks.async_double, range(3))

    asyncio.run(main())


def test_sequential_mode_for_coroutines_awaits_one_at_a_time(braid, caplog):
    fn = InFlight()
    with caplog.at_level(logging.INFO, logger="braid"):
        assert braid.map(fn, range(20), mode="sequential") == [2 * x for x in range(20)]
        assert list(braid.imap(fn, range(5), mode="sequential")) == [0, 2, 4, 6, 8]
    assert fn.peak == 1
    assert "coroutine function → async on the event loop, at most 1 in flight" in caplog.text


# ---- bad input -----------------------------------------------------------------------------


def test_unknown_mode_lists_the_modes(braid):
    with pytest.raises(ValueError, match="'auto', 'sequential', 'thread', 'process', 'interpreter', 'async', 'dask'"):
        braid.map(tasks.square, [1], mode="threads")


@pytest.mark.parametrize("call", ["map", "imap"])
def test_bad_arguments_fail_at_the_call(braid, call):
    fn = getattr(braid, call)
    with pytest.raises(TypeError, match="callable"):
        fn(5, [1])
    with pytest.raises(TypeError, match="iterable"):
        fn(tasks.square, 5)
    with pytest.raises(TypeError, match="coroutine function"):
        fn(tasks.square, [1], mode="async")
    with pytest.raises(TypeError, match="mode='async'"):
        fn(tasks.async_double, [1], mode="thread")
    with pytest.raises(ValueError, match="workers"):
        fn(tasks.square, [1], workers=0)
    with pytest.raises(TypeError, match="chunksize"):
        fn(tasks.square, [1], chunksize="4")
    with pytest.raises(ValueError, match="timeout"):
        fn(tasks.square, [1], timeout=-1)
    with pytest.raises(TypeError, match="limit"):
        fn(tasks.square, [1], limit=2.5)
    with pytest.raises(TypeError, match="executor"):
        fn(tasks.square, [1], executor=object())
    with pytest.raises(ValueError, match="client= .* or address="):
        fn(tasks.square, [1], mode="dask")
    with pytest.raises(ValueError, match="mode='dask'"):
        fn(tasks.square, [1], mode="thread", address="tcp://127.0.0.1:1")


def test_dask_mode_without_distributed_names_the_extra(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import sys\nsys.modules['distributed'] = None\nimport braid\n"
                      "braid.map(abs, [1], mode='dask', address='tcp://127.0.0.1:1')\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60)
    assert proc.returncode == 1
    assert b"ImportError: mode='dask' needs Dask distributed: pip install 'braid[dask]'" in proc.stderr


# ---- dask ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_cluster():
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        yield cluster


def test_dask_same_results_as_local(braid, dask_cluster):
    import distributed

    items = list(range(2000))
    local = braid.map(tasks.square, items)
    with distributed.Client(dask_cluster) as client:
        assert braid.map(tasks.square, items, client=client) == local
        assert braid.map(tasks.square, items, mode="dask", client=client) == local
        assert list(braid.imap(tasks.square, iter(items), mode="dask", client=client)) == local
        out = braid.map(tasks.where, range(30), client=client)
        assert os.getpid() not in {pid for _, pid, _ in out}
    assert braid.map(tasks.square, items, address=dask_cluster.scheduler_address) == local


def test_dask_batches_small_items(braid, dask_cluster):
    import distributed

    with distributed.Client(dask_cluster) as client:
        submitted = []
        submit = client.submit
        client.submit = lambda fn, *args, **kw: submitted.append(len(args[1])) or submit(fn, *args, **kw)
        items = list(range(50_000))
        assert braid.map(tasks.square, items, client=client) == [x * x for x in items]
    # the first batches hold one item and time it; then batches are as large as the
    # cluster's threads allow (a quarter of the items per thread at most)
    assert submitted[:2] == [1, 1]
    assert max(submitted) == 50_000 // (4 * 2) + (50_000 % 8 > 0)
    assert len(submitted) < 100


def test_dask_failure_names_the_item(braid, dask_cluster):
    import distributed

    with distributed.Client(dask_cluster) as client:
        with pytest.raises(ValueError, match="item 37 is bad") as info:
            braid.map(tasks.fail_at, range(100), client=client)
    assert any("item 37 of the input" in n for n in info.value.__notes__)


def test_dask_dead_address_is_a_connection_error_within_the_timeout(braid):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"tcp://127.0.0.1:{port}"):
        braid.map(tasks.square, range(3), address=f"tcp://127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - t0 < 2 + 3


def test_process_mode_unsendable_exception_keeps_index_and_traceback(braid):
    # The stand-in for an exception that cannot travel keeps braid.map's note (which item)
    # and the worker's traceback.
    with pytest.raises(RuntimeError) as info:
        braid.map(functools.partial(procpool_tasks.raise_unsendable_at, "lock", 37), range(100),
                  mode="process", workers=2)
    assert "HoldsALock" in str(info.value)
    assert any("item 37" in note for note in info.value.__notes__), info.value.__notes__
    assert "raise_unsendable" in str(info.value.__cause__)
