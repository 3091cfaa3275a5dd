"""Interpreter exit and os.fork() with both pool kinds in one program (src/python/pools.c)."""

import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest


ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(code, *args, timeout=60):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


# Both kinds, neither shut down, one of each dropped: exit runs everything submitted first.
BOTH_AT_EXIT = """
import sys, time
import braid
from tests.procpool_tasks import sleep_then_append

out = sys.argv[1]
threads = braid.ThreadPool(1)
procs = braid.ProcessPool(1)
for i in range(5):
    threads.submit(sleep_then_append, out, f"t{i}", 0.05)
    procs.submit(sleep_then_append, out, f"p{i}", 0.05)
dropped_t, dropped_p = braid.ThreadPool(1), braid.ProcessPool(1)
dropped_t.submit(sleep_then_append, out, "dt", 0.2)
dropped_p.submit(sleep_then_append, out, "dp", 0.2)
del dropped_t, dropped_p
"""


def test_exit_runs_the_queued_work_of_every_pool(tmp_path):
    out = tmp_path / "ran"
    proc = run(BOTH_AT_EXIT, out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(out.read_text().split()) == sorted(
        [f"t{i}" for i in range(5)] + [f"p{i}" for i in range(5)] + ["dt", "dp"])


# A KeyboardInterrupt ends the program with a minute of work queued in each pool: exit
# cancels the queued work instead of running it (the running task of the thread pool ends on
# its own, the process pool's worker is killed after a short grace).
INTERRUPTED_EXIT = """
import sys, time
import braid
from tests.procpool_tasks import sleep_then_append

out = sys.argv[1]
threads = braid.ThreadPool(1)
procs = braid.ProcessPool(1)
for i in range(30):
    threads.submit(sleep_then_append, out, f"t{i}", 2.0)
    procs.submit(sleep_then_append, out, f"p{i}", 2.0)
time.sleep(0.5)
raise KeyboardInterrupt
"""


def test_exit_after_ctrl_c_cancels_queued_work_of_every_pool(tmp_path):
    out = tmp_path / "ran"
    proc = run(INTERRUPTED_EXIT, out, timeout=30)  # draining would take 60 s per pool
    assert "KeyboardInterrupt" in proc.stderr
    ran = out.read_text().split() if out.exists() else []
    assert [x for x in ran if x.startswith("t")] in ([], ["t0"])  # only the task that was running
    assert [x for x in ran if x.startswith("p")] == []  # killed before its 2 s were up


FORK_BOTH = """
import os, sys, warnings
import concurrent.futures
import braid

warnings.simplefilter("ignore", DeprecationWarning)  # fork of a process with threads: on purpose
threads = braid.ThreadPool(1)
procs = braid.ProcessPool(1)
assert threads.submit(pow, 2, 3).result() == 8 and procs.submit(pow, 2, 4).result() == 16
pid = os.fork()
if pid == 0:
    for pool in (threads, procs):
        try:
            pool.submit(pow, 2, 5)
        except concurrent.futures.BrokenExecutor as exc:
            print(type(pool).__name__, "broken:", "fork" in str(exc), flush=True)
        else:
            print(type(pool).__name__, "accepted work", flush=True)
    sys.exit(0)  # exit must not wait for the parent's workers
_, status = os.waitpid(pid, 0)
print("child status", os.waitstatus_to_exitcode(status), flush=True)
print("parent still works", threads.submit(pow, 3, 2).result(), procs.submit(pow, 3, 3).result())
"""


def test_fork_child_finds_every_pool_broken_and_exits():
    proc = run(FORK_BOTH)
    assert proc.returncode == 0, proc.stderr
    assert "ThreadPool broken: True" in proc.stdout
    assert "ProcessPool broken: True" in proc.stdout
    assert "child status 0" in proc.stdout
    assert "parent still works 9 27" in proc.stdout


def test_at_exit_hook_raises_when_its_flag_has_no_truth():
    # _at_exit(interrupted) takes the object's truth; one whose truth raises makes it raise
    # rather than guess.
    from braid import _braid

    class Bad:
        def __bool__(self):
            raise ValueError("no truth")

    with pytest.raises(ValueError, match="no truth"):
        _braid._at_exit(Bad())


# A KeyboardInterrupt ends the program while a process pool's task runs; its worker is killed
# at exit and the task fails. Code that runs then may evaluate source text, which clears
# CPython's note of the unhandled KeyboardInterrupt: WorkerCrashed's first use imports
# concurrent.futures.process, whose imports make namedtuples with eval() (when the program has
# not imported them yet); here a done callback does it, whatever was imported before. The
# program still ends as interrupted programs do, by SIGINT (130 in a shell), not with status 1.
INTERRUPTED_WITH_A_TASK_RUNNING = """
import sys, time
import braid
from tests.procpool_tasks import sleep_then_append

pool = braid.ProcessPool(1)
future = pool.submit(sleep_then_append, sys.argv[1], "p", 30.0)
future.add_done_callback(lambda f: eval("f.exception()", {"f": f}))
time.sleep(0.5)
raise KeyboardInterrupt
"""


def test_exit_after_ctrl_c_has_the_status_of_sigint(tmp_path):
    proc = run(INTERRUPTED_WITH_A_TASK_RUNNING, tmp_path / "ran", timeout=30)
    assert "KeyboardInterrupt" in proc.stderr, proc.stderr
    assert proc.returncode == -signal.SIGINT, (proc.returncode, proc.stderr)


# Ctrl-C in a with block, then a second one while __exit__ waits for the running tasks: the
# second ends that wait, and interpreter exit does not wait for those tasks again (a minute).
SECOND_CTRL_C = """
import os, signal, sys, threading, time
import braid
from tests.procpool_tasks import sleep_and_return

with braid.ThreadPool(2) as pool:
    futures = [pool.submit(sleep_and_return, 60, 1) for _ in range(4)]
    time.sleep(0.2)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()  # the second Ctrl-C
    raise KeyboardInterrupt  # the first
"""


def test_a_second_ctrl_c_ends_a_with_blocks_wait_and_exit_s():
    start = time.monotonic()
    proc = run(SECOND_CTRL_C, timeout=45)  # the tasks sleep a minute: waiting for them would time out
    assert proc.stderr.count("KeyboardInterrupt") >= 2, proc.stderr
    assert proc.returncode == -signal.SIGINT, (proc.returncode, proc.stderr)
    assert "Exception ignored" not in proc.stderr, proc.stderr
    assert time.monotonic() - start < 40


# The same with an interpreter pool: the second Ctrl-C throws KeyboardInterrupt into the tasks
# running in sub-interpreters (pure Python here), which end; their futures fail with it, the
# queued ones were cancelled by the first, and nothing is left for exit to wait for.
SECOND_CTRL_C_INTERPRETERS = """
import os, signal, sys, threading, time
import braid
from tests.interp_tasks import spin

try:
    with braid.InterpreterPool(2) as pool:
        futures = [pool.submit(spin, 60) for _ in range(4)]
        deadline = time.monotonic() + 30
        while not (futures[0].running() and futures[1].running()):  # both workers spinning
            assert time.monotonic() < deadline
            time.sleep(0.01)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()  # the second
        raise KeyboardInterrupt  # the first
finally:
    print([f.cancelled() or type(f.exception()).__name__ for f in futures], flush=True)
"""


def test_a_second_ctrl_c_interrupts_an_interpreter_pool_s_running_tasks():
    if sys.version_info < (3, 12):
        pytest.skip("InterpreterPool needs Python 3.12+ (its RuntimeError on 3.11 is tested in "
                    "test_interppool.py)")
    start = time.monotonic()
    proc = run(SECOND_CTRL_C_INTERPRETERS, timeout=45)  # the tasks spin a minute
    assert proc.stdout.strip() == "['KeyboardInterrupt', 'KeyboardInterrupt', True, True]", \
        (proc.stdout, proc.stderr)
    assert proc.returncode == -signal.SIGINT, (proc.returncode, proc.stderr)
    assert "Exception ignored" not in proc.stderr and "Fatal" not in proc.stderr, proc.stderr
    assert time.monotonic() - start < 40


# After a second Ctrl-C the program catches the KeyboardInterrupt and goes on: a thread pool it
# makes later is waited for at exit as any (what the second Ctrl-C gave up was the first pool's
# running tasks, nothing after).
CAUGHT_THEN_LATER_POOL = """
import os, signal, sys, threading, time
import braid
from tests.procpool_tasks import sleep_and_return, sleep_then_append

try:
    with braid.ThreadPool(2) as pool:
        futures = [pool.submit(sleep_and_return, 60, 1) for _ in range(2)]
        time.sleep(0.2)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        raise KeyboardInterrupt
except KeyboardInterrupt:
    pass
later = braid.ThreadPool(1)
later.submit(sleep_then_append, sys.argv[1], "later", 1.0)
time.sleep(0.2)  # it runs; the program ends normally, and exit waits for it
"""


def test_a_pool_made_after_a_caught_second_ctrl_c_is_waited_for_at_exit(tmp_path):
    out = tmp_path / "ran"
    proc = run(CAUGHT_THEN_LATER_POOL, out, timeout=45)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().split() == ["later"]


# Exit's status is SIGINT's only when a KeyboardInterrupt out of the main module ended the
# program: not for one an interactive interpreter printed earlier (sys.last_value is left
# set), nor for a subclass of it (CPython exits with 1 for that).
NOT_ENDED_BY_CTRL_C = """
import code, sys
import braid
braid.ThreadPool(1).submit(pow, 2, 2).result()
if sys.argv[1] == "shell":
    code.InteractiveInterpreter().runsource("raise KeyboardInterrupt")  # printed, and over
    assert type(sys.last_value) is KeyboardInterrupt
else:
    class Interrupt(KeyboardInterrupt):
        pass
    raise Interrupt
"""


@pytest.mark.parametrize("how, status", [("shell", 0), ("subclass", 1)])
def test_exit_status_is_sigint_s_only_after_a_ctrl_c_that_ended_the_program(how, status):
    proc = run(NOT_ENDED_BY_CTRL_C, how, timeout=30)
    assert proc.returncode == status, (proc.returncode, proc.stderr)


# braid.map in interpreter mode, interrupted: its running chunks are interrupted in their
# sub-interpreters at once (as process mode's workers are killed), not left to run to their end.
MAP_ON_INTERPRETERS_INTERRUPTED = """
import os, signal, sys, threading, time
import braid
from tests.interp_tasks import spin

threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT)).start()
start = time.monotonic()
try:
    braid.map(spin, [30] * 4, mode="interpreter", workers=2, chunksize=1)
except KeyboardInterrupt:
    print("interrupted after", round(time.monotonic() - start), "s", flush=True)
sys.exit(3)
"""


def test_ctrl_c_interrupts_a_map_s_chunks_in_sub_interpreters():
    if sys.version_info < (3, 12):
        pytest.skip("mode='interpreter' needs Python 3.12+")
    start = time.monotonic()
    proc = run(MAP_ON_INTERPRETERS_INTERRUPTED, timeout=45)  # the chunks spin 30 s each
    assert "interrupted after" in proc.stdout, (proc.stdout, proc.stderr)
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert "Fatal" not in proc.stderr, proc.stderr
    assert time.monotonic() - start < 25


# A pool whose __init__ never ran (a subclass that forgot super().__init__) or failed (a bad
# argument, with the half-made object kept by a traceback's repr): using it is a RuntimeError,
# its repr still works, and nothing crashes.
NOT_MADE = """
import sys
import braid

kinds = [braid.ThreadPool, braid.ProcessPool]
if sys.version_info >= (3, 12):
    kinds.append(braid.InterpreterPool)
calls = {
    "submit": lambda p: p.submit(print),
    "map": lambda p: list(p.map(print, [1])),
    "shutdown": lambda p: p.shutdown(),
    "exit": lambda p: p.__exit__(None, None, None),
}
for kind in kinds:
    class Forgetful(kind):
        def __init__(self):
            pass

    for pool in (Forgetful(), kind.__new__(kind)):
        assert "max_workers=0" in repr(pool), repr(pool)
        for name, call in calls.items():
            try:
                call(pool)
            except RuntimeError as exc:
                assert "__init__ was not called or failed" in str(exc), (kind, name, exc)
            else:
                raise AssertionError(f"{kind.__name__}.{name} on a pool never made did not raise")
print("ok")
"""


def test_a_pool_whose_init_never_ran_raises_instead_of_crashing():
    proc = run(NOT_MADE)
    assert proc.returncode == 0 and proc.stdout.split() == ["ok"], (proc.returncode, proc.stderr)
