"""The plumbing of bench procpool's startup, respawn, primes_e2e and floor cases, and of the
roundtrip case's floor: tiny sizes, one repeat; checks that every contender ran, that results
are verified (a wrong one turns into an error cell) and that the tables have their rows.
No timing is asserted: figures on a loaded 2-core machine say nothing.
"""

import json

import pytest

braid = pytest.importorskip("braid")
from braid.bench import _procpool_cold as cold  # noqa: E402
from braid.bench import procpool as pp  # noqa: E402

KEYS = ["braid", "ppe", "pool"]  # loky and mpire may not be installed where the tests run


def run(names, **kw):
    args = dict(quick=True, repeat=1, workers=1, sizes_mib=[], braid_mod=braid,
                contender_keys=KEYS)
    args.update(kw)
    return pp.run_cases(names, **args)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(cold, "RESPAWN_KILLS", (1, 1))
    monkeypatch.setattr(cold, "E2E_STOPS", ((50, 120), (50, 120)))
    monkeypatch.setattr(cold, "FLOOR_TRIPS", (200, 200))
    monkeypatch.setattr(cold, "FLOOR_WARMUP", 10)


def ok_cells(row):
    return {k: c for k, c in row["contenders"].items() if c["status"] == "ok"}


def assert_all_ok(row):
    bad = {k: c["status"] for k, c in row["contenders"].items() if c["status"] != "ok"}
    assert not bad, bad
    for cell in row["contenders"].values():
        assert cell["best_s"] > 0 and cell["per_op"] > 0


def test_cases_are_listed():
    for name in ("startup", "respawn", "primes_e2e", "floor"):
        assert name in pp.CASES


def test_startup_rows(tiny):
    (row,) = run(["startup"])
    assert row["case"] == "startup"
    keys = set(row["contenders"])
    assert {"bare", "worker_imports", "braid", "ppe_spawn", "ppe_fork", "pool",
            "pool_spawn"} <= keys
    assert_all_ok(row)
    for key in ("braid", "ppe_spawn", "pool"):
        cell = row["contenders"][key]
        assert cell["x_bare"] > 0 and cell["child_ms"] > 0 and cell["import_ms"] >= 0
    assert row["goal_met"] in (True, False)
    text = pp.format_rows([row])
    assert "bare interpreter: python -c pass" in text and "x bare" in text


def test_startup_follows_contenders(tiny):
    (row,) = run(["startup"], contender_keys=["pool"])
    assert set(row["contenders"]) == {"bare", "pool", "pool_spawn"}
    assert row["goal_met"] is None  # braid not measured


def test_respawn_rows(tiny):
    (row,) = run(["respawn"])
    assert set(row["contenders"]) == {"bare", "braid", "ppe", "pool"}
    assert_all_ok(row)
    cells = row["contenders"]
    assert cells["braid"]["seen_ms"] is not None  # braid reports the killed task
    assert cells["pool"]["seen_ms"] is None  # Pool never does
    assert "failure ms" in pp.format_rows([row])


def test_respawn_child_rejects_a_task_that_ran_in_the_old_worker(tiny, monkeypatch):
    # a "kill" that kills nothing: the next task runs in the same worker, which must fail
    monkeypatch.setattr(cold, "RESPAWN_CHILD", cold.RESPAWN_CHILD.replace(
        "self.pool.apply_async(os._exit, (1,))", "pass"))
    (row,) = run(["respawn"], contender_keys=["pool"])
    assert row["contenders"]["pool"]["status"].startswith("error")
    assert "not in a new worker" in row["contenders"]["pool"]["status"]


def test_primes_e2e_rows_and_results_checked(tiny):
    rows = run(["primes_e2e"])
    assert [r["part"] for r in rows] == ["primes_e2e_tut_50", "primes_e2e_map_50",
                                         "primes_e2e_tut_120", "primes_e2e_map_120"]
    for row in rows:
        assert set(row["contenders"]) == {"sequential", "braid", "pool", "ppe"}
        assert_all_ok(row)
        assert row["contenders"]["sequential"]["speedup"] == pytest.approx(1.0)
        assert row["goal_met"] in (True, False)


def test_primes_e2e_wrong_result_is_an_error(tiny, monkeypatch):
    monkeypatch.setattr(cold, "_sieve", lambda stop: [False] * (stop - 1))
    rows = run(["primes_e2e"], contender_keys=["pool"])
    for row in rows:
        for cell in row["contenders"].values():
            assert cell["status"].startswith("error: wrong result"), cell["status"]


def test_sieve_matches_is_prime():
    assert cold._sieve(200) == [cold.is_prime(n) for n in range(1, 200)]


def test_tutorial_code_flattens_in_order():
    from multiprocessing.dummy import Pool as ThreadPool

    numbers = list(range(1, 30))
    got = cold.tutorial_code(ThreadPool)(numbers)
    assert got == [(n, cold.is_prime(n)) for n in numbers]


def test_floor_rows(tiny):
    (row,) = run(["floor"])
    cells = row["contenders"]
    assert list(cells) == ["floor", "floor_1cpu", "spin", "python"]
    assert cells["python"]["status"] == "ok"
    try:
        cold.build_floor()
    except cold._cc.NoCompiler:
        assert cells["floor"]["status"].startswith("not measured")
    else:
        assert_all_ok(row)
        assert cells["floor"]["ratio"] == pytest.approx(1.0)
    assert "vs floor" in pp.format_rows([row])


def test_roundtrip_has_the_floor_and_its_goal(tiny, monkeypatch):
    monkeypatch.setattr(pp, "ROUNDTRIP_TASKS", (50, 50))
    (row,) = run(["roundtrip"], contender_keys=["braid"])
    assert list(row["contenders"]) == ["floor", "braid"]
    if row["contenders"]["floor"]["status"] == "ok":
        assert row["goal_met"] in (True, False)
        assert "the floor's" in row["goal_result"]


def test_cli_cases_and_json(tiny, capsys):
    assert pp.main(["--cases", "startup,bogus"]) == 2
    capsys.readouterr()
    assert pp.main(["--quick", "--repeat", "1", "--cases", "floor", "--contenders", "pool",
                    "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["case"] for r in out["results"]] == ["floor"]
