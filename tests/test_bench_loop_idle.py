"""The plumbing of bench loop's idle case: a small burst on asyncio's loop and braid.Loop (uvloop
too where it is installed), one repeat; checks that every contender ran, that the server saw
every connection with the garbage collector on, that the goals are checked against uvloop or
say why not, and that the table and --json carry the case. No timing is asserted: figures on
a loaded 2-core machine say nothing.
"""

import json

import pytest

pytest.importorskip("braid")
from braid.bench import _loop_idle as idle  # noqa: E402
from braid.bench import loop as L  # noqa: E402

N = 60


@pytest.fixture(scope="module")
def exes():
    try:
        return L.build_programs(L.compiler())
    except L._NoCompiler as exc:
        pytest.skip(str(exc))


def test_idle_is_a_case():
    assert "idle" in L.CASES and "idleclient" in L.C_SOURCES


def test_idle_rows(exes):
    loops = [L.load_loop(k) for k in L.LOOPS]
    (row,) = L.run_cases(["idle"], loops=loops, sizes=[1024], repeat=1, connections=1,
                         warmup=0, duration=1, wrk_seconds=1, cpus=L.pick_cpus(), exes=exes,
                         idle_conns=[N])
    assert row["case"] == "idle" and row["conns"] == N and row["k"] == idle.mark_for(N)
    for key, cell in row["contenders"].items():
        if cell["status"] in ("not installed", "not available"):
            continue
        assert cell["status"] == "ok", (key, cell["status"])
        (run,) = cell["runs"]
        assert run["gc_enabled"] is True
        assert run["rss_after"] > 0 and run["accept_s"] > 0
        assert 0 < run["first_us"] and 0 < run["last_us"]
        assert cell["mem_vs_asyncio"] is not None or cell["kib_per_conn"] <= 0
    assert row["contenders"]["braid"]["status"] == "ok"
    names = [g["name"] for g in row["goals"]]
    assert names == ["memory", "accept time", "flat"]
    uv = row["contenders"]["uvloop"]["status"]
    for goal in row["goals"][:2]:
        assert (goal["met"] is None) == (uv != "ok")
    text = L.format_rows([row])
    assert "idle 60 connections" in text and "KiB/conn" in text and "braid.Loop" in text
    json.dumps(row)  # what --json prints


def test_too_many_connections_for_the_fd_limit_fails_clearly(exes, monkeypatch):
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on descriptors here")
    loops = [L.load_loop("asyncio")]
    (row,) = idle.run_idle(loops, [hard + 1], repeat=1, cpus=L.pick_cpus(), exes=exes)
    status = row["contenders"]["asyncio"]["status"]
    assert status.startswith("error:") and "RLIMIT_NOFILE hard limit" in status


def test_cli_rejects_bad_idle_counts(capsys):
    assert L.main(["--cases", "idle", "--idle-conns", "x"]) == 2
    assert L.main(["--cases", "idle", "--idle-conns", "3"]) == 2
