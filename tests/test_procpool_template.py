"""braid.ProcessPool's workers are forked from a template process: what users see of it.

A pool's workers come from a clean, single-threaded template interpreter that has done the
workers' imports and re-run the main script once (src/python/proctemplate.c). These tests check
what that must not change (every worker a fresh process: new pid, module globals as imported,
its own random state; the initializer in each worker; functions of the main script
unpickle) and what it must not leave behind (no template after the pool is done, after the
program ends or after its parent is SIGKILLed). Timing goals are measured by the benchmarks,
not here.

The scripts run as separate programs, because a template re-runs *their* main script (under
pytest, the main module is pytest's own and is not re-run).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procpool_tasks as tasks  # noqa: E402
from pool_helpers import TIMEOUT, import_braid  # noqa: E402

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
LINGER = 2.0  # proctemplate.c's LINGER_NS: an unused template waits this long for a pool


@pytest.fixture
def braid():
    return import_braid()


# Thread-count settings that other libraries loaded by the test session (distributed's, for
# one) leave in os.environ; the scripts here see the environment of a fresh shell instead.
BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def run_script(tmp_path, source, *args, env=None, timeout=60):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    base = {k: v for k, v in os.environ.items() if k not in BLAS_VARIABLES}
    proc = subprocess.run(
        [sys.executable, str(script), TESTS_DIR, *map(str, args)],
        capture_output=True, timeout=timeout, cwd=str(tmp_path),
        env={**base, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return proc


def last_json(proc):
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def template_of(pool):
    """The pool's template pid, once its first worker has been forked."""
    pool.submit(tasks.square, 1).result(TIMEOUT)
    pid = pool._template_pid
    assert pid is not None, "the pool has no template"
    return pid


# ---- a fresh pool, and what its workers are ------------------------------------------------


def test_first_result_of_a_fresh_pool(braid):
    with braid.ProcessPool(2) as pool:
        assert pool.submit(tasks.square, 7).result(TIMEOUT) == 49
        assert list(pool.map(tasks.square, range(10))) == [i * i for i in range(10)]


def test_first_results_of_many_fresh_pools(braid):
    # A forked worker is up within a millisecond: it may write its first message before the
    # pool has even armed the ring it writes to. Every such race must still deliver.
    for i in range(30):
        with braid.ProcessPool(1 + i % 2) as pool:
            assert pool.submit(tasks.square, i).result(TIMEOUT) == i * i


def test_workers_are_children_of_the_pool_not_of_the_template(braid):
    with braid.ProcessPool(2) as pool:
        tpl = template_of(pool)
        pids = pool.pids
        assert len(pids) == 2 and tpl not in pids
        for pid in [tpl, *pids]:
            state, ppid = tasks.proc_state(pid)
            assert ppid == os.getpid(), f"{pid} is a child of {ppid}"
        # the workers are forks of the template: the same command line
        with open(f"/proc/{tpl}/cmdline", "rb") as f:
            cmdline = f.read()
        for pid in pids:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert f.read() == cmdline


def test_pids_lists_every_worker_right_after_init(braid):
    with braid.ProcessPool(3) as pool:
        pids = pool.pids  # the workers start in the background; pids waits for them
        assert len(pids) == 3
        assert all(tasks.proc_state(pid) is not None for pid in pids)


def test_a_respawned_worker_is_a_fresh_process(braid):
    with braid.ProcessPool(1) as pool:
        tpl = template_of(pool)
        pool.submit(tasks.init_global, "set in the old worker").result(TIMEOUT)
        value, old = pool.submit(tasks.get_global).result(TIMEOUT)
        assert value == "set in the old worker"
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + TIMEOUT
        while True:  # until the replacement answers
            value, new = pool.submit(tasks.get_global).result(TIMEOUT)
            if new != old:
                break
            assert time.monotonic() < deadline
        assert value is None, "module globals came back from the dead worker"
        assert pool._template_pid == tpl  # forked from the same template


def test_recycled_workers_are_fresh_processes(braid):
    with braid.ProcessPool(1, max_tasks_per_worker=1) as pool:
        seen = set()
        for i in range(4):
            pool.submit(tasks.init_global, i).result(TIMEOUT)  # this worker's last task
            value, pid = pool.submit(tasks.get_global).result(TIMEOUT)
            assert value is None and pid not in seen
            seen.add(pid)


def test_initializer_runs_in_each_forked_worker(braid, tmp_path):
    inits = str(tmp_path / "inits")
    with braid.ProcessPool(2, initializer=tasks.record_pid, initargs=(inits,),
                           max_tasks_per_worker=1) as pool:
        tpl = template_of(pool)
        ran = {pool.submit(tasks.getpid).result(TIMEOUT) for _ in range(4)}
    recorded = [int(pid) for pid in tasks.read_lines(inits)]
    assert ran <= set(recorded)
    assert len(recorded) == len(set(recorded)), "the initializer ran twice in a worker"
    assert tpl not in recorded, "the initializer ran in the template"


def test_a_forked_worker_runs_atexit_callbacks_when_it_exits(braid, tmp_path):
    # it skips the rest of interpreter finalization (a teardown would copy every page it
    # shares with the template), not what a program can see of it
    path = str(tmp_path / "exits")
    with braid.ProcessPool(2) as pool:
        template_of(pool)
        for _ in range(4):
            pool.submit(tasks.register_atexit_line, path, "bye").result(TIMEOUT)
        assert tasks.read_lines(path) == []
    assert tasks.read_lines(path) == ["bye"] * 4  # one line per registration


def test_a_forked_worker_can_signal_its_main_thread(braid):
    # glibc keeps its own record of each thread's id, which pthread_kill uses; a fork must
    # give the worker's main thread its new id there too, as glibc's fork() does
    if not tasks.has_tid_address():
        pytest.skip("the kernel does not tell the address of glibc's thread id (PR_GET_TID_ADDRESS)")
    with braid.ProcessPool(1) as pool:
        template_of(pool)
        assert pool.submit(tasks.signal_main_thread_from_another).result(TIMEOUT) is None


RANDOM_SCRIPT = """
import json, os, random, sys
sys.path.insert(0, sys.argv[1])
import braid

def draws(_):
    # random is imported by this script, so in the template too: each forked worker must
    # reseed it, or they would all draw the same numbers
    out = [os.getpid(), random.getrandbits(64)]
    np = sys.modules.get("numpy")
    out.append(int(np.random.randint(1 << 62)) if np is not None else None)
    return out

if __name__ == "__main__":
    if len(sys.argv) > 2:
        import numpy
    with braid.ProcessPool(2, max_tasks_per_worker=1) as pool:
        out = list(pool.map(draws, range(6), chunksize=1))
        tpl = pool._template_pid
    print(json.dumps({"template": tpl, "draws": out, "parent": random.getrandbits(64)}))
"""


def test_random_state_differs_between_workers_and_from_the_parent(tmp_path):
    got = last_json(run_script(tmp_path, RANDOM_SCRIPT))
    assert got["template"] is not None
    pids = [d[0] for d in got["draws"]]
    bits = [d[1] for d in got["draws"]]
    assert len(set(pids)) == 6, "max_tasks_per_worker=1: one worker per task"
    assert len(set(bits)) == 6, f"workers drew the same numbers: {bits}"
    assert got["parent"] not in bits


def test_numpy_random_state_differs_between_workers(tmp_path):
    pytest.importorskip("numpy")
    src = RANDOM_SCRIPT.replace('if len(sys.argv) > 2:\n        import numpy', 'pass').replace(
        "import braid\n", "import braid\nimport numpy.random\n", 1)
    got = last_json(run_script(tmp_path, src))
    assert got["template"] is not None
    values = [d[2] for d in got["draws"]]
    assert len(set(values)) == 6, f"numpy.random drew the same numbers in workers: {values}"


NUMPY_SCRIPT = """
import json, os, sys
import numpy  # OpenBLAS starts its threads on import
sys.path.insert(0, sys.argv[1])
import braid

def blas(_=None):
    import threading
    return {"threads": len(os.listdir("/proc/self/task")), "python_threads": threading.active_count(),
            "env": os.environ.get("OPENBLAS_NUM_THREADS"),
            "dot": float(numpy.arange(4.0) @ numpy.arange(4.0))}

if __name__ == "__main__":
    with braid.ProcessPool(1) as pool:
        print(json.dumps({"template": pool._template_pid, "worker": pool.submit(blas).result(10)}))
"""


def test_a_main_script_that_imports_numpy_still_gets_a_template(tmp_path):
    # the template loads OpenBLAS with one thread (a template with threads may not fork) and
    # each worker then gets the threads a spawned worker would have had
    pytest.importorskip("numpy")
    forked = last_json(run_script(tmp_path, NUMPY_SCRIPT))
    spawned = last_json(run_script(tmp_path, NUMPY_SCRIPT, env={"BRAID_PROCESS_TEMPLATE": "0"}))
    assert forked["template"] is not None and spawned["template"] is None
    assert forked["worker"] == spawned["worker"]
    assert forked["worker"]["env"] is None and forked["worker"]["dot"] == 14.0


MAIN_SCRIPT = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import braid
import procpool_tasks

print("imported as", __name__, flush=True)
FACTOR = 3

def triple(x):
    return FACTOR * x

class Box:
    def __init__(self, v):
        self.v = v

def unbox(b):
    return b.v + 1

if __name__ == "__main__":
    with braid.ProcessPool(2, max_tasks_per_worker=1) as pool:
        tripled = list(pool.map(triple, range(8), chunksize=1))
        unboxed = pool.submit(unbox, Box(41)).result(10)
        tpl = pool._template_pid
    print(json.dumps({"tripled": tripled, "unboxed": unboxed, "template": tpl}))
"""


def test_functions_of_the_main_script_unpickle(tmp_path):
    proc = run_script(tmp_path, MAIN_SCRIPT)
    got = last_json(proc)
    assert got["tripled"] == [3 * i for i in range(8)]
    assert got["unboxed"] == 42
    assert got["template"] is not None
    lines = proc.stdout.decode().splitlines()
    # the main script ran once as __main__ here, and once in the template for all 9 workers
    assert lines.count("imported as __main__") == 1
    assert lines.count("imported as __mp_main__") == 1, lines


# ---- nothing left behind -------------------------------------------------------------------


def test_the_template_goes_after_its_last_pool(braid):
    pool = braid.ProcessPool(2)
    tpl = template_of(pool)
    workers = pool.pids
    pool.shutdown()
    assert tasks.proc_state(tpl) is not None, "it waits a little for the next pool"
    # reaped too (it is our child): no zombie either
    alive = tasks.wait_processes_gone([tpl, *workers], timeout=LINGER + TIMEOUT, zombie_ok=False)
    assert not alive, f"{alive} still there {LINGER + TIMEOUT} s after shutdown"


def test_the_next_pool_reuses_the_template(braid):
    with braid.ProcessPool(2) as pool:
        tpl = template_of(pool)
    with braid.ProcessPool(2) as pool:
        assert template_of(pool) == tpl
    braid._braid._close_unused_templates()
    assert tasks.process_gone(tpl, zombie_ok=False)


def test_close_unused_templates_spares_those_in_use(braid):
    with braid.ProcessPool(1) as pool:
        tpl = template_of(pool)
        braid._braid._close_unused_templates()
        assert tasks.proc_state(tpl) is not None
        old = pool.pids[0]
        os.kill(old, signal.SIGKILL)  # respawned from the same template
        deadline = time.monotonic() + TIMEOUT
        while pool.submit(tasks.getpid).result(TIMEOUT) == old:
            assert time.monotonic() < deadline
    braid._braid._close_unused_templates()
    assert tasks.process_gone(tpl, zombie_ok=False)


EXIT_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import braid, procpool_tasks

if __name__ == "__main__":
    pool = braid.ProcessPool(2)
    pool.submit(procpool_tasks.square, 2).result(10)
    print(json.dumps({"template": pool._template_pid, "workers": pool.pids}), flush=True)
    if sys.argv[2] == "shutdown":
        pool.shutdown()
"""


@pytest.mark.parametrize("how", ["shutdown", "exit"])
def test_nothing_is_left_when_the_program_ends(tmp_path, how):
    t0 = time.monotonic()
    got = last_json(run_script(tmp_path, EXIT_SCRIPT, how))
    assert time.monotonic() - t0 < LINGER + 30, "the program waited for its template to linger"
    pids = [got["template"], *got["workers"]]
    assert got["template"] is not None
    alive = tasks.wait_processes_gone(pids, timeout=2.0)
    assert not alive, f"{alive} outlived their program"


ORPHAN_SCRIPT = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import braid, procpool_tasks

if __name__ == "__main__":
    pool = braid.ProcessPool(2)
    futures = [pool.submit(procpool_tasks.sleep_and_return, 30, i) for i in range(4)]
    time.sleep(0.2)
    procpool_tasks.append_line(sys.argv[2], json.dumps([pool._template_pid, *pool.pids]))
    time.sleep(60)
"""


def test_nothing_is_left_when_the_parent_is_killed(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(ORPHAN_SCRIPT))
    out = tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, str(script), TESTS_DIR, str(out)],
                            cwd=str(tmp_path), start_new_session=True)
    pids = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while not tasks.read_lines(out):
            assert proc.poll() is None and time.monotonic() < deadline, "no pool started"
            time.sleep(0.01)
        pids = json.loads(tasks.read_lines(out)[0])
        assert pids[0] is not None and len(pids) == 3
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(TIMEOUT)
        alive = tasks.wait_processes_gone(pids, timeout=2.0)
        assert not alive, f"{alive} outlived their SIGKILLed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        tasks.kill_quietly(pids[1:])


# ---- when the template cannot serve ------------------------------------------------------


def test_a_killed_template_is_replaced(braid):
    with braid.ProcessPool(2) as pool:
        tpl = template_of(pool)
        os.kill(tpl, signal.SIGKILL)
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)  # its replacement needs a template
        deadline = time.monotonic() + TIMEOUT
        while victim in pool.pids:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert list(pool.map(tasks.square, range(20))) == [i * i for i in range(20)]
        assert pool._template_pid not in (None, tpl)
    assert tasks.wait_processes_gone([tpl], timeout=TIMEOUT, zombie_ok=False) == []


THREADED_SCRIPT = """
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
import braid, procpool_tasks

# a thread started on import: the template has it too and must not fork
threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()

if __name__ == "__main__":
    out = []
    for _ in range(2):
        with braid.ProcessPool(2) as pool:
            out.append(list(pool.map(procpool_tasks.square, range(6))))
            out.append(pool._template_pid)
    print(json.dumps(out))
"""


def test_a_template_with_threads_falls_back_to_spawning(tmp_path):
    got = last_json(run_script(tmp_path, THREADED_SCRIPT))
    squares = [i * i for i in range(6)]
    assert got == [squares, None, squares, None]


def test_the_template_can_be_turned_off(braid, monkeypatch):
    monkeypatch.setenv("BRAID_PROCESS_TEMPLATE", "0")
    with braid.ProcessPool(2) as pool:
        assert pool.submit(tasks.square, 5).result(TIMEOUT) == 25
        assert pool._template_pid is None


def test_a_bad_interpreter_still_raises_in_init(braid, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/braid/python")
    with pytest.raises(OSError, match="could not start worker process"):
        braid.ProcessPool(2)
