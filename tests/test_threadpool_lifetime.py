"""Object lifetimes across the C boundary of braid.ThreadPool.

These fail loudly (crash, or an AddressSanitizer report in CI's sanitized
run) when the engine touches a work item whose future is already freed.
"""

import gc
import threading
import time
import weakref

import braid


def noop():
    return None


def test_futures_dropped_while_workers_finish_their_batch():
    # The caller drops every future as soon as it has its result, while a
    # worker may still be completing the last item of its batch.
    for _ in range(5):
        pool = braid.ThreadPool(max_workers=6)
        futures = [pool.submit(noop) for _ in range(50_000)]
        assert all(f.result(timeout=60) is None for f in futures)
        del futures
        pool.shutdown(wait=True)


def test_fire_and_forget_futures_are_freed():
    pool = braid.ThreadPool(max_workers=2)
    refs = []
    for _ in range(1_000):
        refs.append(weakref.ref(pool.submit(noop)))
    pool.shutdown(wait=True)
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_task_arguments_are_released_after_the_call():
    class Payload:
        pass

    pool = braid.ThreadPool(max_workers=2)
    payload = Payload()
    ref = weakref.ref(payload)
    future = pool.submit(id, payload)
    del payload
    future.result(timeout=10)
    pool.shutdown(wait=True)
    gc.collect()
    # the future outlives the call but must not keep its arguments alive
    assert ref() is None
    assert future.done()


def test_cancelled_future_releases_its_callable():
    import threading

    gate = threading.Event()
    pool = braid.ThreadPool(max_workers=1)
    blocker = pool.submit(gate.wait, 10)

    class Task:
        def __call__(self):
            return 1

    task = Task()
    ref = weakref.ref(task)
    queued = pool.submit(task)
    del task
    assert queued.cancel()
    gc.collect()
    assert ref() is None
    gate.set()
    assert blocker.result(timeout=10) is True
    pool.shutdown(wait=True)


def test_pool_dropped_without_shutdown_still_runs_its_work():
    import threading

    done = threading.Event()
    pool = braid.ThreadPool(max_workers=1)
    pool.submit(done.set)
    del pool
    gc.collect()
    assert done.wait(10)


def test_dropped_pool_frees_itself_when_its_work_is_done():
    # A pool dropped without shutdown() finishes its queued work, then its core is released by
    # its last worker -- not at the next pool's creation, and without anyone joining it.
    from braid import _braid

    # a pool dropped by an earlier test may still be releasing itself: its last worker
    # leaves on its own time, so the baseline is taken once the count holds still
    baseline = _braid._threadpool_cores()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _braid._threadpool_cores()
        if now == baseline:
            break
        baseline = now
    release = threading.Event()
    pool = braid.ThreadPool(max_workers=3)
    futures = [pool.submit(release.wait, 60) for _ in range(3)]
    futures += [pool.submit(noop) for _ in range(20)]
    del pool
    gc.collect()
    assert _braid._threadpool_cores() == baseline + 1  # its workers still run Python code
    release.set()
    assert all(f.result(timeout=60) in (True, None) for f in futures)
    deadline = time.monotonic() + 60
    while _braid._threadpool_cores() != baseline:
        assert time.monotonic() < deadline, "the dropped pool was never released"
        time.sleep(0.01)


def test_dropped_idle_pool_is_released_at_once():
    from braid import _braid

    baseline = _braid._threadpool_cores()
    pool = braid.ThreadPool(max_workers=2)
    del pool
    gc.collect()
    assert _braid._threadpool_cores() == baseline
    pool = braid.ThreadPool(max_workers=2)
    pool.submit(noop).result(timeout=60)
    pool.shutdown(wait=True)
    del pool
    gc.collect()
    assert _braid._threadpool_cores() == baseline


DROPPED_AT_EXIT = """
import sys, time
import braid

def task(path, i):
    time.sleep(0.05)
    with open(path, "a") as f:
        f.write(f"{i}\\n")

pool = braid.ThreadPool(max_workers=2)
for i in range(10):
    pool.submit(task, sys.argv[1], i)
del pool
print("main done", flush=True)
"""


def test_dropped_pool_work_finishes_before_interpreter_exit(tmp_path):
    # As ThreadPoolExecutor: interpreter exit waits for the queued work of every pool, the
    # dropped ones too.
    import subprocess
    import sys

    out = tmp_path / "ran"
    proc = subprocess.run([sys.executable, "-c", DROPPED_AT_EXIT, str(out)], capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(int(x) for x in out.read_text().split()) == list(range(10))


FORK_WITH_DROPPED_POOL = """
import os, sys, threading, warnings
import braid

warnings.simplefilter("ignore", DeprecationWarning)  # fork of a process with threads: on purpose
release = threading.Event()
pool = braid.ThreadPool(max_workers=1)
pool.submit(release.wait, 60)
del pool
pid = os.fork()
if pid == 0:
    sys.exit(0)  # the child's exit must not wait for the parent's dropped pool
_, status = os.waitpid(pid, 0)
release.set()
print("child status", os.waitstatus_to_exitcode(status), flush=True)
"""


def test_fork_child_does_not_wait_for_the_parents_dropped_pool():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FORK_WITH_DROPPED_POOL], capture_output=True,
                          timeout=60, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "child status 0" in proc.stdout
