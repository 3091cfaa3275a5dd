"""braid.InterpreterPool: workers that are sub-interpreters with their own GIL (3.12+).

On 3.11 only the RuntimeError test runs: an interpreter with its own GIL does not exist there.
Task functions live in ``interp_tasks.py`` (importable by the workers, which are given this
process's ``sys.path``). Every wait is bounded (``pool_helpers.TIMEOUT``)."""

import asyncio
import concurrent.futures as cf
import os
import pickle
import sys
import threading
import time
import warnings

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS_DIR)
import interp_tasks as tasks  # noqa: E402
from pool_helpers import TIMEOUT, import_braid  # noqa: E402

braid = import_braid()
from braid import _interppool  # noqa: E402

needs_312 = pytest.mark.skipif(sys.version_info < (3, 12),
                               reason="sub-interpreters with their own GIL need Python 3.12+")


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the 3.11 behaviour")
def test_needs_312_on_311():
    with pytest.raises(RuntimeError, match="needs Python 3.12 or later"):
        braid.InterpreterPool()


@pytest.fixture
def pool():
    p = braid.InterpreterPool(2)
    yield p
    p.shutdown(wait=True, cancel_futures=True)


@needs_312
def test_results_in_sub_interpreters(pool):
    assert pool.submit(tasks.square, 12).result(TIMEOUT) == 144
    assert pool.submit(tasks.add, 1, 2, c=3).result(TIMEOUT) == 6
    in_main, _ = tasks.where()
    assert in_main  # this process imported pytest...
    seen, ident = pool.submit(tasks.where).result(TIMEOUT)
    assert not seen  # ...the worker's interpreter did not
    assert ident != threading.get_ident()
    assert pool.submit(tasks.square, 2 ** 70).result(TIMEOUT) == 2 ** 140
    assert pool.submit(tasks.add, "a", "b", c="c").result(TIMEOUT) == "abc"
    assert pool.submit(dict, a=[1, 2]).result(TIMEOUT) == {"a": [1, 2]}


@needs_312
def test_lambdas_and_closures(pool):
    k = 5
    assert pool.submit(lambda x: x + k, 1).result(TIMEOUT) == 6


@needs_312
def test_exception_with_worker_traceback(pool):
    f = pool.submit(tasks.fail, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        f.result(TIMEOUT)
    cause = info.value.__cause__
    assert cause is not None
    assert "interp_tasks.py" in str(cause) and "in fail" in str(cause)
    assert isinstance(f.exception(), ValueError)


@needs_312
def test_unpicklable_outcomes(pool):
    with pytest.raises((TypeError, pickle.PicklingError)):
        pool.submit(tasks.return_unpicklable).result(TIMEOUT)
    with pytest.raises(RuntimeError, match="local exception") as info:
        pool.submit(tasks.raise_unpicklable).result(TIMEOUT)
    assert "raise_unpicklable" in str(info.value.__cause__)
    assert pool.submit(tasks.square, 3).result(TIMEOUT) == 9


@needs_312
def test_futures_work_with_wait_as_completed_and_asyncio(pool):
    futures = [pool.submit(tasks.square, i) for i in range(20)]
    done, not_done = cf.wait(futures, timeout=TIMEOUT)
    assert not not_done
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=TIMEOUT)) == [i * i for i in range(20)]

    async def main():
        return await asyncio.wrap_future(pool.submit(tasks.square, 9))

    assert asyncio.run(main()) == 81
    assert isinstance(futures[0], cf.Future)


@needs_312
def test_map_order_chunksize_buffersize(pool):
    assert list(pool.map(tasks.square, range(50))) == [i * i for i in range(50)]
    assert list(pool.map(tasks.square, range(50), chunksize=7)) == [i * i for i in range(50)]
    assert list(pool.map(tasks.add, range(10), range(10))) == [2 * i for i in range(10)]
    assert list(pool.map(tasks.square, iter(range(30)), buffersize=3)) == [i * i for i in range(30)]
    with pytest.raises(ValueError, match="boom"):
        list(pool.map(tasks.fail, ["boom"]))
    with pytest.raises(ValueError):
        pool.map(tasks.square, range(3), chunksize=0)


@needs_312
def test_initializer_runs_in_each_worker():
    with braid.InterpreterPool(2, initializer=tasks.init, initargs=("ready",)) as pool:
        assert pool.submit(tasks.initialized).result(TIMEOUT) == ["ready"]
    assert tasks.initialized() == []  # not in this interpreter


@needs_312
def test_failing_initializer_breaks_the_pool():
    pool = braid.InterpreterPool(1, initializer=tasks.init_fail)
    try:
        f = pool.submit(tasks.square, 2)
        with pytest.raises(cf.BrokenExecutor, match="initializer says no"):
            f.result(TIMEOUT)
        with pytest.raises(cf.BrokenExecutor):
            pool.submit(tasks.square, 2)
    finally:
        pool.shutdown()


@needs_312
def test_shutdown_cancel_futures():
    pool = braid.InterpreterPool(1)
    pool.submit(tasks.square, 1).result(TIMEOUT)  # the worker is up
    first = pool.submit(tasks.spin, 0.3)
    queued = [pool.submit(tasks.square, i) for i in range(50)]
    time.sleep(0.1)
    pool.shutdown(wait=True, cancel_futures=True)
    assert first.result(TIMEOUT) > 0
    assert sum(f.cancelled() for f in queued) >= 45
    assert all(f.done() for f in queued)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(tasks.square, 1)


@needs_312
def test_future_running_while_a_worker_runs_its_task():
    # as concurrent.futures': running() once a worker has the task, and a running task
    # cannot be cancelled; a queued one is neither
    with braid.InterpreterPool(1) as pool:
        pool.submit(tasks.square, 1).result(TIMEOUT)
        first = pool.submit(tasks.spin, 1.0)
        queued = pool.submit(tasks.square, 3)
        deadline = time.monotonic() + TIMEOUT
        while not first.running():
            assert time.monotonic() < deadline, "running() never became true"
            time.sleep(0.005)
        assert not queued.running() and not first.done()
        assert not first.cancel() and first.running()
        assert first.result(TIMEOUT) > 0
        assert not first.running() and queued.result(TIMEOUT) == 9 and not queued.running()


@needs_312
def test_future_cancel_before_start():
    with braid.InterpreterPool(1) as pool:
        pool.submit(tasks.square, 1).result(TIMEOUT)
        first = pool.submit(tasks.spin, 0.3)
        queued = pool.submit(tasks.square, 3)
        assert queued.cancel()
        assert queued.cancelled()
        assert first.result(TIMEOUT) > 0


@needs_312
def test_ctrl_c_in_with_block_cancels_queued_work():
    queued = []
    with pytest.raises(KeyboardInterrupt):
        with braid.InterpreterPool(1) as pool:
            pool.submit(tasks.square, 1).result(TIMEOUT)
            pool.submit(tasks.spin, 0.3)
            queued.extend(pool.submit(tasks.square, i) for i in range(20))
            raise KeyboardInterrupt
    assert all(f.done() for f in queued)
    assert sum(f.cancelled() for f in queued) >= 15


@needs_312
def test_many_submitters_at_once(pool):
    results = {}

    def submitter(k):
        futures = [pool.submit(tasks.add, k, i) for i in range(500)]
        results[k] = [f.result(TIMEOUT) for f in futures]

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 3)
    assert sorted(results) == list(range(8))
    for k, values in results.items():
        assert values == [k + i for i in range(500)]


@needs_312
def test_100k_tasks(pool):
    futures = [pool.submit(tasks.square, i) for i in range(100_000)]
    assert [f.result(TIMEOUT) for f in futures] == [i * i for i in range(100_000)]


@needs_312
def test_unimportable_module_fails_clearly_and_the_worker_lives():
    import interp_single

    with braid.InterpreterPool(1) as pool:
        with pytest.raises(ImportError, match="_testsinglephase") as info:
            pool.submit(interp_single.task, 1).result(TIMEOUT)
        assert "ProcessPool" in str(info.value)
        assert "subinterpreters" in str(info.value)
        assert pool.submit(tasks.square, 4).result(TIMEOUT) == 16
        assert pool.threads == 1


@needs_312
def test_a_task_importing_what_cannot_load_there_fails_clearly():
    with braid.InterpreterPool(1) as pool:
        with pytest.raises(ImportError, match="ProcessPool") as info:
            pool.submit(tasks.import_single_phase).result(TIMEOUT)
        assert info.value.name == "_testsinglephase"
        assert "in import_single_phase" in str(info.value.__cause__)  # the worker's traceback
        assert pool.submit(tasks.square, 4).result(TIMEOUT) == 16


def test_import_failed_finds_the_module_in_a_long_message():
    # numpy's ImportError in a sub-interpreter is a page of advice, name unset, ending in
    # CPython's own sentence
    from braid._interpworker import import_failed

    exc = ImportError("\n\nIMPORTANT: PLEASE READ THIS ...\n\nOriginal error was: module "
                      "numpy._core._multiarray_umath does not support loading in subinterpreters")
    err = import_failed(exc)
    assert err.name == "numpy._core._multiarray_umath" and err.__cause__ is exc
    assert "braid.ProcessPool" in str(err)
    other = ImportError("No module named 'nothere'", name="nothere")
    assert import_failed(other) is other


@needs_312
def test_task_timeout_interrupts_pure_python():
    with braid.InterpreterPool(1, task_timeout=0.3) as pool:
        t0 = time.monotonic()
        f = pool.submit(tasks.spin, 30)
        with pytest.raises(braid.TaskTimeout):
            f.result(TIMEOUT)
        assert time.monotonic() - t0 < 5
        assert pool.submit(tasks.square, 5).result(TIMEOUT) == 25
        assert pool.submit(tasks.spin, 0.01).result(TIMEOUT) > 0
        assert pool.stuck == 0


@needs_312
def test_task_timeout_reports_a_task_stuck_in_c():
    with braid.InterpreterPool(1, task_timeout=0.2) as pool:
        t0 = time.monotonic()
        f = pool.submit(tasks.sleep_in_c, 3)
        with pytest.raises(braid.TaskTimeout, match="stuck in C"):
            f.result(TIMEOUT)
        assert time.monotonic() - t0 < 2.5
        assert pool.stuck == 1
        # its one worker is written off: a new one runs the next task, long before the
        # stuck call returns
        assert pool.submit(tasks.square, 6).result(TIMEOUT) == 36
        assert time.monotonic() - t0 < 2.8
        assert pool.threads == 2
        deadline = time.monotonic() + TIMEOUT
        while pool.stuck and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.stuck == 0  # the call came back; one of the two workers retires
        assert pool.submit(tasks.square, 8).result(TIMEOUT) == 64


@needs_312
def test_braid_itself_in_a_sub_interpreter(pool):
    assert pool.submit(tasks.use_braid_inside).result(TIMEOUT) == ("braid._braid", [0, 1, 4, 9, 16])


@needs_312
def test_braid_loops_in_two_workers_at_once(pool):
    # each sub-interpreter makes its loop's handle types; the layout they share is the process's
    if _interppool.KEYWORD_TUPLE_BUG:
        tasks.run_braid_loop(10)  # asyncio's keyword calls made here first (gh-119213)
    futures = [pool.submit(tasks.run_braid_loop, 1000 + k) for k in range(6)]
    assert [f.result(TIMEOUT) for f in futures] == [("Loop", 1000 + k) for k in range(6)]


@needs_312
def test_worker_imports_stay_light(pool):
    mods = pool.submit(tasks.modules).result(TIMEOUT)
    for heavy in ("asyncio", "multiprocessing", "concurrent.futures", "logging"):
        assert heavy not in mods


@needs_312
def test_large_buffers_cross_by_reference(pool):
    data = bytearray(b"abcd" + bytes(1 << 20) + b"wxyz")
    kind, readonly, nbytes, head, tail = pool.submit(tasks.buffer_info, pickle.PickleBuffer(data)).result(TIMEOUT)
    assert (kind, readonly, nbytes, head, tail) == ("memoryview", True, len(data), b"abcd", b"wxyz")
    small = pool.submit(tasks.buffer_info, pickle.PickleBuffer(bytearray(b"1234"))).result(TIMEOUT)
    assert small[2] == 4


@needs_312
def test_bad_input():
    with pytest.raises(ValueError):
        braid.InterpreterPool(0)
    with pytest.raises(TypeError):
        braid.InterpreterPool("2")
    with pytest.raises(TypeError):
        braid.InterpreterPool(1, initializer=3)
    with pytest.raises(ValueError):
        braid.InterpreterPool(1, task_timeout=0)
    with braid.InterpreterPool(1) as pool:
        with pytest.raises(TypeError):
            pool.submit(3)
        with pytest.raises(TypeError):
            pool.map(3, [1])
        f = pool.submit(tasks.square, threading.Lock())  # cannot be pickled: this task fails
        with pytest.raises(TypeError):
            f.result(TIMEOUT)


@needs_312
def test_dropped_pool_finishes_its_work():
    pool = braid.InterpreterPool(2)
    futures = [pool.submit(tasks.square, i) for i in range(100)]
    del pool
    assert [f.result(TIMEOUT) for f in futures] == [i * i for i in range(100)]


@needs_312
def test_parallel_speedup_is_real():
    # two spins of 0.4 s on two workers take well under 0.8 s when the GILs are separate
    with braid.InterpreterPool(2) as pool:
        pool.submit(tasks.square, 1).result(TIMEOUT)
        pool.submit(tasks.square, 1).result(TIMEOUT)
        list(pool.map(tasks.square, range(4)))
        t0 = time.monotonic()
        futures = [pool.submit(tasks.spin, 0.4) for _ in range(2)]
        [f.result(TIMEOUT) for f in futures]
        elapsed = time.monotonic() - t0
    if os.cpu_count() and os.cpu_count() >= 2:
        assert elapsed < 0.75


@needs_312
def test_map_mode_interpreter(capsys):
    assert braid.map(tasks.square, range(100), mode="interpreter", explain=True) == [i * i for i in range(100)]
    assert "mode 'interpreter' as given" in capsys.readouterr().err


@needs_312
def test_map_auto_prefers_interpreters_when_the_module_imports_there(capsys):
    assert braid.map(tasks.burn, range(100), explain=True) == list(range(100))
    out = capsys.readouterr().err
    if _interppool.KEYWORD_TUPLE_BUG:  # 3.12.0-3.12.3: sub-interpreters can abort the process
        assert "→ process" in out and "gh-119213" in out, out
    else:
        assert "→ interpreter" in out and "imports in a sub-interpreter" in out, out


@needs_312
def test_pool_on_a_cpython_with_the_keyword_tuple_bug_says_so_once():
    if not _interppool.KEYWORD_TUPLE_BUG:
        pytest.skip("this CPython has no keyword-tuple bug (3.12.4+, 3.13)")
    _interppool._warned_keyword_tuple_bug = False
    with pytest.warns(RuntimeWarning, match="gh-119213"):
        braid.InterpreterPool(1).shutdown()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        braid.InterpreterPool(1).shutdown()  # once per process


_KEYWORD_CALL_FIRST_IN_A_WORKER = """
    import pickle, warnings
    warnings.simplefilter("ignore")
    import braid, interp_tasks as t
    p = braid.InterpreterPool(2)
    fs = [p.submit(%s) for k in range(2)]
    print([%s for f in fs])
    p.shutdown()
"""
# the first out-of-band unpickling (_pickle.loads(..., buffers=)) is a worker's
_OOB_FIRST_IN_A_WORKER = _KEYWORD_CALL_FIRST_IN_A_WORKER % (
    "t.buffer_info, pickle.PickleBuffer(bytearray(1 << 20))", "f.result(60)[2]")
# the first cloudpickle Pickler (protocol=, buffer_callback=) is a worker's: a lambda result
_PICKLER_FIRST_IN_A_WORKER = _KEYWORD_CALL_FIRST_IN_A_WORKER % ("t.return_lambda, k", "f.result(60)()")


@needs_312
def test_out_of_band_unpickling_first_in_workers_leaves_the_process_whole():
    # on 3.12.0-3.12.3 a first keyword call made in a worker aborted the process (gh-119213)
    # unless the pool had made it in the main interpreter
    rc, out, err = _script(_OOB_FIRST_IN_A_WORKER)
    assert rc == 0, (rc, err[-2000:])
    assert out.strip() == str([1 << 20] * 2)


@needs_312
def test_cloudpickled_results_first_in_workers_leave_the_process_whole():
    pytest.importorskip("cloudpickle")
    rc, out, err = _script(_PICKLER_FIRST_IN_A_WORKER)
    assert rc == 0, (rc, err[-2000:])
    assert out.strip() == "[0, 1]"


@needs_312
def test_map_auto_falls_back_to_processes_for_a_module_that_cannot(capsys):
    import interp_single

    assert braid.map(interp_single.slow, range(100), explain=True) == list(range(100))
    out = capsys.readouterr().err
    why = "gh-119213" if _interppool.KEYWORD_TUPLE_BUG else "_testsinglephase"  # no probe there
    assert "→ process" in out and why in out, out


@needs_312
def test_task_timeout_reports_a_task_stuck_in_c_holding_the_gil():
    t0 = time.perf_counter()
    tasks.sum_in_c(2_000_000)
    per_item = (time.perf_counter() - t0) / 2_000_000
    n = int(2.5 / max(per_item, 1e-9))  # about 2.5 s in C, GIL held throughout
    with braid.InterpreterPool(2, task_timeout=0.2) as pool:
        pool.submit(tasks.square, 1).result(TIMEOUT)
        t0 = time.monotonic()
        f = pool.submit(tasks.sum_in_c, n)
        with pytest.raises(braid.TaskTimeout, match="stuck in C"):
            f.result(TIMEOUT)
        assert time.monotonic() - t0 < 2.0
        assert pool.submit(tasks.square, 7).result(TIMEOUT) == 49


@needs_312
def test_task_stuck_in_c_right_after_an_overdue_one_is_still_reported():
    # the first task overruns its deadline by a little, in C (a builtin called straight from
    # the worker: no Python frame that could take the interrupt): its interrupter waits for
    # the GIL, which the worker keeps straight into the second task, stuck in C for good; the
    # watchdog must not wait for that interrupter (it would wait as long as the task runs)
    t0 = time.perf_counter()
    sum(range(2_000_000))
    per_item = (time.perf_counter() - t0) / 2_000_000
    with braid.InterpreterPool(1, task_timeout=0.1) as pool:
        pool.submit(tasks.square, 1).result(TIMEOUT)
        first = pool.submit(sum, range(int(0.3 / max(per_item, 1e-9))))
        second = pool.submit(sum, range(int(5.0 / max(per_item, 1e-9))))
        try:
            first.result(TIMEOUT)  # back before its grace is over (on a slow run: written off)
        except braid.TaskTimeout:
            pass
        t0 = time.monotonic()
        with pytest.raises(braid.TaskTimeout, match="stuck in C"):
            second.result(TIMEOUT)
        assert time.monotonic() - t0 < 3.5  # not when the 5 s call comes back
        assert pool.submit(tasks.square, 7).result(TIMEOUT) == 49


@needs_312
def test_plain_values_cross_exactly(pool):
    # plain arguments and results cross in marshal's format, the rest as pickles: both ways
    # must give back equal values of the same types
    values = [None, True, False, 0, -1, 2 ** 63 - 1, -2 ** 63, 2 ** 64, 1.5, float("inf"), 1 + 2j,
              "", "é中", b"", b"\x00\xff", (), (1, "a", (2.0, None)), ("x",) * 16,
              [1, 2], {"a": 1}, {1, 2}, frozenset({3}), bytearray(b"ab"), range(3)]
    for v in values:
        got = pool.submit(tasks.identity, v, key=v).result(TIMEOUT)
        assert got == (v, v) and type(got[0]) is type(v) and type(got[1]) is type(v), (v, got)



@needs_312
def test_plain_calls_reach_their_own_functions(pool):
    # a plain call names its function by an id the worker caches (the last one without a
    # lookup): calls that alternate functions, with and without arguments, each reach
    # their own -- also past the 256 functions a pool and a worker keep
    for i in range(5):
        assert pool.submit(tasks.where).result(TIMEOUT)[0] is False
        assert pool.submit(tasks.square, i).result(TIMEOUT) == i * i
        assert pool.submit(tasks.add, i, b=1, c=2).result(TIMEOUT) == i + 3
        assert pool.submit(tasks.identity, i).result(TIMEOUT) == (i, None)
    for rounds in range(2):  # 300 distinct functions: the caches are cleared and refilled
        futures = [pool.submit(getattr(tasks, f"plus_{n}"), 1000) for n in range(300)]
        assert [f.result(TIMEOUT) for f in futures] == [1000 + n for n in range(300)]
        assert pool.submit(tasks.square, 9).result(TIMEOUT) == 81


def _script(body, timeout=60, send_sigint_after=None):
    """Runs ``body`` in a fresh interpreter with tests/ on sys.path: (returncode, stdout, stderr)."""
    import signal
    import subprocess
    import textwrap

    code = "import sys; sys.path.insert(0, %r)\n" % TESTS_DIR + textwrap.dedent(body)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        if send_sigint_after is not None:
            ready = proc.stdout.readline()  # the script prints a line when it is waiting
            assert ready.strip() == "waiting", ready
            time.sleep(send_sigint_after)
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out, err


@needs_312
def test_exit_with_a_pool_never_shut_down():
    # at exit the pool's queued work finishes and every sub-interpreter ends before the main one
    rc, out, err = _script("""
        import braid, interp_tasks
        pool = braid.InterpreterPool(2)
        futures = [pool.submit(interp_tasks.spin, 0.05) for _ in range(6)]
        print("submitted", flush=True)
    """)
    assert rc == 0, err
    assert "submitted" in out and "Fatal" not in err and "Traceback" not in err, err


@needs_312
def test_ctrl_c_while_waiting_for_a_result():
    rc, out, err = _script("""
        import braid, interp_tasks
        with braid.InterpreterPool(1) as pool:
            f = pool.submit(interp_tasks.spin, 0.5)
            print("waiting", flush=True)
            try:
                f.result()
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                raise
    """, send_sigint_after=0.1)
    assert "interrupted" in out, (out, err)
    assert rc != 0 and "KeyboardInterrupt" in err and "Fatal" not in err, err


@needs_312
def test_many_pools_come_and_go():
    # each pool makes and ends its sub-interpreters; nothing piles up
    for i in range(15):
        with braid.InterpreterPool(2) as pool:
            assert pool.submit(tasks.square, i).result(TIMEOUT) == i * i
    dropped = [braid.InterpreterPool(1) for _ in range(3)]
    futures = [p.submit(tasks.square, 3) for p in dropped]
    del dropped
    assert [f.result(TIMEOUT) for f in futures] == [9, 9, 9]


@needs_312
def test_fork_with_live_workers_warns():
    # CPython cannot fork a process that has own-GIL sub-interpreters (3.12 hangs the child,
    # 3.13 aborts it): the before-fork hook says so, naming the pools' workers
    from braid import _interppool

    with braid.InterpreterPool(1) as pool:
        pool.submit(tasks.square, 2).result(TIMEOUT)
        with pytest.warns(RuntimeWarning, match="sub-interpreter"):
            _interppool._before_fork()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _interppool._before_fork()  # every worker has ended: nothing to say


_NESTED_IN_A_PROCESS_WORKER = """
import sys
sys.path.insert(0, sys.argv[1])
import braid

def square(x):
    return x * x

def squares_in_an_interpreter_pool(n):
    with braid.InterpreterPool(2) as pool:
        return sum(pool.map(square, range(n)))

if __name__ == "__main__":
    # the process-pool worker runs this script as __mp_main__, which a sub-interpreter
    # cannot import: its functions must go there by value, as __main__'s do
    with braid.ProcessPool(1) as outer:
        print(outer.submit(squares_in_an_interpreter_pool, 10).result(60))
"""


@needs_312
def test_an_interpreter_pool_inside_a_process_pool_task_runs_main_script_functions(tmp_path):
    import subprocess

    script = tmp_path / "script.py"
    script.write_text(_NESTED_IN_A_PROCESS_WORKER)
    proc = subprocess.run([sys.executable, str(script), TESTS_DIR], capture_output=True,
                          text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0 and proc.stdout.split() == ["285"], (proc.stdout, proc.stderr)


@needs_312
def test_a_task_asking_for_its_thread_leaves_no_error_at_the_pool_s_end():
    # threading.current_thread() in a worker (asyncio.run and logging ask too) makes a dummy
    # Thread there; 3.13 dropped it only as the sub-interpreter's modules were gone, with an
    # "Exception ignored ... TypeError" on stderr
    rc, out, err = _script("""
        import braid

        def thread_name():  # of __main__: it goes by value, and imports threading there
            import threading
            return threading.current_thread().name

        with braid.InterpreterPool(2) as pool:
            names = [pool.submit(thread_name).result(60) for _ in range(4)]
        print(len(names) == 4 and all(isinstance(name, str) and name for name in names))
    """)
    assert rc == 0 and out.split() == ["True"], (out, err)
    assert "Exception ignored" not in err, err
