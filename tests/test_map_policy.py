"""braid.map's auto-mode policy (braid._mappolicy) on measured shapes given directly.

test_map.py judges auto by what it did with real items; here the decision itself is checked
on profiles that cannot be produced on demand on a 2-core machine with the GIL: a
free-threaded build, thousands of waiting items, a function that does not pickle.
"""

import sys

import pytest

from pool_helpers import import_braid


@pytest.fixture
def policy():
    return import_braid("braid._mappolicy")


def profile(policy, items, cpu_each, wall_each):
    return policy.Profile(items=items, cpu=items * cpu_each, wall=items * wall_each)


def test_cpu_bound_with_the_gil_goes_to_processes(policy, monkeypatch):
    monkeypatch.setattr(policy, "gil_enabled", lambda: True)
    monkeypatch.setattr(policy, "usable_cpus", lambda: 4)
    plan = policy.choose(profile(policy, 1000, 1e-5, 1e-5), 1_000_000)
    assert (plan.mode, plan.workers) == ("process", 4)
    assert plan.chunksize == 1_000_000 // (policy.CHUNKS_PER_WORKER * 4)


def test_cpu_bound_without_the_gil_goes_to_threads(policy, monkeypatch):
    monkeypatch.setattr(policy, "gil_enabled", lambda: False)
    monkeypatch.setattr(policy, "usable_cpus", lambda: 4)
    plan = policy.choose(profile(policy, 1000, 1e-5, 1e-5), 1_000_000)
    assert plan.mode == "thread" and plan.workers >= 4


class FreeThreadedBuild:
    """sys._is_gil_enabled of a free-threaded build whose GIL is off until ``load()`` runs
    and, with ``reenables``, on after it: what importing an extension module that does not
    declare Py_mod_gil does (with PYTHON_GIL=0, or once braid declares it, it stays off)."""

    def __init__(self, reenables):
        self.gil = False
        self.reenables = reenables
        self.loads = 0

    def is_gil_enabled(self):
        return self.gil

    def load(self):
        self.loads += 1
        self.gil = self.gil or self.reenables


@pytest.fixture
def free_threaded(policy, monkeypatch):
    def install(reenables):
        build = FreeThreadedBuild(reenables)
        monkeypatch.setattr(sys, "_is_gil_enabled", build.is_gil_enabled, raising=False)
        monkeypatch.setattr(policy, "_load_extension", build.load)
        return build
    return install


def test_the_gil_is_judged_after_braids_extension_is_loaded(policy, free_threaded):
    # braid._braid declares no Py_mod_gil slot: on a free-threaded build its import turns the
    # GIL on, so a plan made before it would put CPU-bound work on threads that then take turns
    build = free_threaded(reenables=True)
    assert policy.gil_enabled() is True
    assert build.loads == 1
    plan = policy.choose(profile(policy, 1000, 1e-5, 1e-5), 1_000_000)
    assert plan.mode == "process"


def test_a_gil_that_stays_off_sends_cpu_bound_work_to_threads(policy, free_threaded, monkeypatch):
    build = free_threaded(reenables=False)  # PYTHON_GIL=0, or an extension that declares it
    monkeypatch.setattr(policy, "usable_cpus", lambda: 4)
    assert policy.gil_enabled() is False
    assert build.loads == 1
    plan = policy.choose(profile(policy, 1000, 1e-5, 1e-5), 1_000_000)
    assert plan.mode == "thread" and plan.workers >= 4


def test_with_the_gil_on_nothing_is_loaded(policy, monkeypatch):
    def refuse():
        raise AssertionError("the extension was loaded to answer a question the GIL answers")

    monkeypatch.setattr(policy, "_load_extension", refuse)
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True, raising=False)
    assert policy.gil_enabled() is True
    monkeypatch.delattr(sys, "_is_gil_enabled", raising=False)  # 3.11 and 3.12 have none
    assert policy.gil_enabled() is True


def test_waiting_items_get_threads_by_littles_law(policy):
    # 10 ms of waiting per 100 µs of CPU: about 100 items in flight keep one core busy
    plan = policy.choose(profile(policy, 1, 1e-4, 1e-2), 5000)
    assert plan.mode == "thread"
    assert plan.workers == 100
    # capped, and the cap is the caller's workers= when given
    assert policy.choose(profile(policy, 1, 1e-6, 1e-2), 5000).workers == policy.THREAD_CAP
    assert policy.choose(profile(policy, 1, 1e-6, 1e-2), 5000, workers=7).workers == 7


def test_too_little_work_stays_sequential(policy):
    # 1,000 items of 10 µs: 10 ms of work, less than a process pool's start
    plan = policy.choose(profile(policy, 100, 1e-5, 1e-5), 1000)
    assert plan.mode == "sequential"


def test_unpicklable_work_goes_to_threads_and_says_why(policy, monkeypatch):
    monkeypatch.setattr(policy, "gil_enabled", lambda: True)
    plan = policy.choose(profile(policy, 100, 1e-3, 1.2e-3), 10_000,
                         picklable=lambda: "fn does not pickle (TypeError: no)")
    assert plan.mode == "thread"
    assert "fn does not pickle (TypeError: no), so threads instead of processes" in plan.why


def test_unknown_number_of_items_decides_by_rate(policy):
    plan = policy.choose(profile(policy, 1000, 1e-4, 1e-4), None)
    assert plan.mode == "process"
    assert plan.chunksize == round(policy.CHUNK_S / 1e-4)


def test_the_first_items_warm_up_is_kept_out_of_the_cost(policy):
    p = profile(policy, 10, 1e-3, 1e-3)
    p.first_wall = p.first_cpu = 1e-3 + 0.05  # the first item also imported a module
    p.wall += 0.05
    p.cpu += 0.05
    assert p.wall_each == pytest.approx(1e-3)
    assert p.warmup == pytest.approx(0.05)


def test_guided_chunks_shrink_to_the_smallest(policy):
    guided = policy.Guided(remaining=10_000, workers=2, first=1000, smallest=10)
    sizes = []
    while guided.left:
        sizes.append(guided())
    assert sum(sizes) >= 10_000
    assert sizes[0] == 1000 and sizes[-1] == 10
    assert sizes == sorted(sizes, reverse=True)


def test_explain_line(policy):
    plan = policy.Plan("process", 2, 62_500, "CPU-bound")
    line = policy.explain_line(1_999_999, profile(policy, 512, 1.8e-6, 1.8e-6), plan)
    assert line == ("braid.map: 1,999,999 items; first 512 took 1.8 µs CPU / 1.8 µs wall each "
                    "(CPU-bound) → process, 2 workers, chunks of 62,500")
