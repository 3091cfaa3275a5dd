"""Chaos test for ``braid.ProcessPool``: workers SIGKILLed at random while tasks run.

Each round submits a batch of short tasks while a killer thread SIGKILLs one worker: mostly
one running a task of that round, sometimes one still starting up.  Every future must end either with its own value or with
``braid.WorkerCrashed`` (never hang, never a wrong value, never another error), one kill fails
at most one task, and after all rounds the pool still runs a batch without a single failure.

The CI run is short (20 rounds).  The long run is::

    BRAID_CHAOS_ROUNDS=200 python -m pytest tests/test_procpool_chaos.py

``BRAID_CHAOS_SEED`` replays a run (the seed is printed on failure).

Workers are found without psutil: tasks append "<round> <pid>" to a file when they start, and
the killer only kills a pid that is still a live descendant of this process (read from /proc),
so it never signals a reused pid.
"""

import collections
import os
import random
import signal
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procpool_tasks as tasks  # noqa: E402
from pool_helpers import TIMEOUT, import_braid, run_bounded  # noqa: E402

ROUNDS = int(os.environ.get("BRAID_CHAOS_ROUNDS", "20"))
SEED = int(os.environ.get("BRAID_CHAOS_SEED", str(random.randrange(1 << 30))))
WORKERS = 4
BATCH = 24


def round_pids(pidfile, round_no):
    pids = []
    for line in tasks.read_lines(pidfile):
        r, pid = line.split()
        if int(r) == round_no:
            pids.append(int(pid))
    return pids


def all_reported(pidfile):
    return {int(line.split()[1]) for line in tasks.read_lines(pidfile)}


def kill(victim, killed, kind):
    # Only a live descendant: never signal a pid that was reaped and reused meanwhile.
    if victim not in tasks.descendants():
        return False
    try:
        os.kill(victim, signal.SIGKILL)
    except ProcessLookupError:
        return False
    killed.append(victim)
    kind.append(victim)
    return True


def killer(pidfile, round_no, rng, baseline, killed, stats, stop):
    """SIGKILL one worker during this round.

    Mostly (3 in 4) a worker running a task of this round; otherwise, when there is one, a
    worker still starting up (a new process of the pool that has not run a task yet, such as
    the replacement of the previous round's victim).
    """
    if rng.random() < 0.25:
        fresh = tasks.descendants() - baseline - all_reported(pidfile)
        if fresh:
            time.sleep(rng.uniform(0, 0.01))
            if kill(rng.choice(sorted(fresh)), killed, stats["starting"]):
                return
    deadline = time.monotonic() + TIMEOUT
    while not stop.is_set() and time.monotonic() < deadline:
        candidates = set(round_pids(pidfile, round_no)) & tasks.descendants()
        if candidates:
            time.sleep(rng.uniform(0, 0.004))
            if kill(rng.choice(sorted(candidates)), killed, stats["busy"]):
                return
        time.sleep(0.001)


def describe(crashed):
    """Summary of the WorkerCrashed errors for a failure message."""
    counts = collections.Counter((exc.pid, exc.signal, exc.exitcode) for _, _, exc in crashed)
    first = ", ".join(f"round {r} task {i}: {exc}" for r, i, exc in crashed[:3])
    return f"(pid, signal, exitcode) counts {dict(counts)}; first: {first}"


def test_chaos_random_worker_kills(tmp_path):
    braid = import_braid()
    rng = random.Random(SEED)
    pidfile = str(tmp_path / "pids")
    baseline = tasks.descendants()  # processes that are not this pool's workers
    pool = braid.ProcessPool(max_workers=WORKERS)
    killed, crashed = [], []
    stats = {"busy": [], "starting": []}
    ok = 0
    try:
        # Warm up: all workers started before the first round.
        assert [f.result(TIMEOUT) for f in [pool.submit(tasks.square, i) for i in range(8)]] \
            == [i * i for i in range(8)]
        # The template the workers are forked from is not a worker: the killer leaves it alone
        # (tests/test_procpool_template.py kills templates).
        not_workers = baseline | ({pool._template_pid} - {None})
        for round_no in range(ROUNDS):
            stop = threading.Event()
            killer_thread = threading.Thread(
                target=killer,
                args=(pidfile, round_no, random.Random(rng.random()), not_workers, killed, stats,
                      stop),
                daemon=True,
            )
            killer_thread.start()
            futures = [
                pool.submit(tasks.chaos_task, pidfile, round_no, rng.uniform(0.001, 0.008),
                            (round_no, i))
                for i in range(BATCH)
            ]
            for i, fut in enumerate(futures):
                try:
                    value = fut.result(timeout=TIMEOUT)
                except braid.WorkerCrashed as exc:
                    crashed.append((round_no, i, exc))
                except Exception as exc:  # noqa: BLE001 - anything else is a failure
                    pytest.fail(f"seed {SEED} round {round_no} task {i}: unexpected {exc!r}")
                else:
                    assert value == (round_no, i), f"seed {SEED}: wrong value {value!r}"
                    ok += 1
            stop.set()
            killer_thread.join(TIMEOUT)
            assert not killer_thread.is_alive()

        assert killed, f"seed {SEED}: the killer never found a worker to kill"
        assert ok + len(crashed) == ROUNDS * BATCH
        # One SIGKILL fails at most the one task its worker was running.
        assert len(crashed) <= len(killed), (
            f"seed {SEED}: {len(killed)} kills {killed} failed {len(crashed)} tasks: "
            + describe(crashed)
        )
        for round_no, i, exc in crashed:
            assert exc.pid in killed, (
                f"seed {SEED}: crash of a worker we did not kill: {exc}; " + describe(crashed))
            assert exc.signal == signal.SIGKILL, f"seed {SEED}: {exc}"

        # The pool is whole again: a final batch runs without a single failure.
        final = [pool.submit(tasks.pid_and_value, i) for i in range(200)]
        results = [f.result(TIMEOUT) for f in final]
        assert [v for _, v in results] == list(range(200))
        assert not set(killed) & {pid for pid, _ in results}
    finally:
        run_bounded(lambda: pool.shutdown(wait=True), what="shutdown after chaos")

    # Every worker, killed or not, is gone and reaped.
    alive = tasks.wait_processes_gone(all_reported(pidfile), TIMEOUT, zombie_ok=False)
    assert not alive, f"seed {SEED}: workers {alive} outlived shutdown"
    # Nothing else of the pool stays either: the template it forked its workers from (if it
    # started one) lingers a moment for a next pool, then goes too.
    deadline = time.monotonic() + TIMEOUT
    while (left := tasks.descendants() - baseline) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"seed {SEED}: processes {left} of the pool outlived shutdown"
    print(f"chaos: seed {SEED}, {ROUNDS} rounds, {len(killed)} kills "
          f"({len(stats['busy'])} busy, {len(stats['starting'])} starting workers), "
          f"{len(crashed)} crashed tasks, {ok} ok")
