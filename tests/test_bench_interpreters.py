"""python -m braid bench interpreters: the report's lines and goals, and (3.12+) a tiny run
whose every figure is a number."""

import io
import math
import sys

import pytest

from braid.bench import interpreters as bench


def _fake():
    return {
        "roundtrip": {"ThreadPool": 10.0, "InterpreterPool": 2.0, "ProcessPool": 20.0,
                      "spin_floor": 0.25},
        "inflight": {"ThreadPool": 0.3, "InterpreterPool": 1.0, "ProcessPool": 5.0},
        "primes": {"sequential": 4.0, "InterpreterPool": 2.0, "ProcessPool": 2.2, "floor": 1.6,
                   "cpu": {"sequential": 4.0, "InterpreterPool": 4.1}},
        "first": {"ThreadPool": 0.2, "InterpreterPool": 12.0, "ProcessPool": 4.0},
        "rss": (2048.0, 8192.0, 3072.0),
    }


def test_report_states_each_goal():
    lines = []
    bench.report(_fake(), dict(bench.FULL), "cmd", print_=lines.append)
    text = "\n".join(lines)
    assert "interp/thread 0.20x (goal <= 2: met)" in text
    assert "process/interp 10.00x (goal >= 5: met)" in text
    assert "1.00 µs/task (goal <= 1.5: met)" in text
    assert "speed-up 2.00x" in text and "goal >= 1.85 on 2 workers: met" in text
    assert "goal <= 30 ms: met" in text
    assert "sub-interpreter 2.0 MiB" in text
    assert "1.600 s = 2.50x; the interpreter pool reaches 0.80 of it" in text
    assert "spinning, C): 0.25 µs; the interpreter pool's round trip is 8.0x it" in text


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_primes_floor_shares_cover_every_number_once_and_alike(workers):
    n = 1001
    shares = [[k for r in bench._floor_share(n, workers, i) for k in r] for i in range(workers)]
    assert sorted(k for share in shares for k in share) == list(range(1, n + 1))
    odd = [sum(k % 2 for k in share) for share in shares]
    assert max(odd) - min(odd) <= 1, odd  # the dear numbers (odd ones) spread evenly


def test_report_says_not_met():
    out = _fake()
    out["roundtrip"]["InterpreterPool"] = 30.0
    lines = []
    bench.report(out, dict(bench.FULL), "cmd", print_=lines.append)
    assert "goal <= 2: NOT met" in "\n".join(lines)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="InterpreterPool needs 3.12+")
def test_tiny_run_measures_everything():
    import braid

    counts = dict(roundtrip=20, inflight=50, primes=3000, first=1, repeat=1)
    out = bench.run(braid, counts)
    for case in ("roundtrip", "inflight", "first"):
        assert all(math.isfinite(out[case][k]) and out[case][k] > 0 for k in bench.KINDS), out[case]
    spin = out["roundtrip"]["spin_floor"]
    assert spin is None or spin > 0  # None: no C compiler, or its runs failed
    assert out["primes"]["InterpreterPool"] > 0 and out["primes"]["sequential"] > 0
    assert out["primes"]["floor"] > 0
    assert out["rss"][1] > 0
    buf = io.StringIO()
    bench.report(out, counts, "cmd", print_=lambda s: buf.write(s + "\n"))
    assert "memory per worker" in buf.getvalue()


def test_listed_in_bench_index():
    from braid.bench import BENCHMARKS

    assert BENCHMARKS["interpreters"][0] == "braid.bench.interpreters"
