"""python -m braid demo: the quick run prints every experiment and variant, its --json has
every row with a passing result check, its --plot is a PNG; the run without the demo extra
(requests, aiohttp, matplotlib hidden) works and says what it left out; bad options exit 2
and write nothing. No timing is asserted: figures on a loaded 2-core machine say nothing.
"""

import asyncio
import importlib.util
import json
import os
import struct
import subprocess
import sys

import pytest

braid = pytest.importorskip("braid")
from braid.demo import cli as demo_cli  # noqa: E402
from braid.demo import primes, server  # noqa: E402
from braid.demo.clients import StreamsSession  # noqa: E402

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
TIMEOUT = 300  # seconds for one demo run in a child process

# (experiment, variant key) of every row a run makes, per size
KEYS = {
    "downloads": ["sequential", "thread_per_url", "threadpool", "map"],
    "primes": ["sequential", "mp_pool", "procpool", "map"],
    "fetches": ["sequential", "threads", "asyncio", "braid_loop", "map"],
}
LABELS = {
    "downloads": ["sequential for loop", "threading.Thread per URL", "braid.ThreadPool().map",
                  "braid.map (auto)"],
    "primes": ["sequential list comprehension", "multiprocessing.Pool (the tutorial's chunks)",
               "braid.ProcessPool().map", "braid.map (auto)"],
    "fetches": ["sequential (", "braid.ThreadPool(100)", "asyncio.run + gather",
                "braid.run + gather", "braid.map (auto, async def)"],
}
HIDE_EXTRA = ("import sys\n"
              "for name in ('requests', 'aiohttp', 'matplotlib'):\n"
              "    sys.modules[name] = None  # import raises ImportError\n"
              "from braid.demo import main\n"
              "sys.exit(main(sys.argv[1:]))\n")


def run_demo(args, *, hide_extra=False, cwd=None):
    cmd = [sys.executable, "-c", HIDE_EXTRA, *args] if hide_extra else \
        [sys.executable, "-m", "braid", "demo", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `demo --quick` run, shared: its output, JSON document and plot path."""
    folder = tmp_path_factory.mktemp("demo")
    out_json = folder / "rows.json"
    out_png = folder / "demo.png"
    args = ["--quick", "--json", str(out_json)]
    if HAVE_MPL:
        args += ["--plot", str(out_png)]
    proc = run_demo(args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out_json.read_text()), out_png


def test_quick_prints_every_experiment_and_variant(quick):
    proc, _, _ = quick
    out = proc.stdout
    for title in ("downloads (threads): 3 file(s) of 1 MiB",
                  "primes (processes): is_prime over 1..100,000",
                  "primes (processes): is_prime over 1..500,000",
                  "fetches (asyncio): 3 page(s)", "fetches (asyncio): 2,000 page(s)"):
        assert title in out
    for labels in LABELS.values():
        for label in labels:
            assert label in out, label
    assert "the tutorial's comparison, measured here" in out
    assert "the rule of thumb, as measured here:" in out
    assert "what braid.map chose" in out
    assert out.count("braid.map: ") == 5  # its explanation, once per case
    assert "FAILED" not in out


def test_quick_json_has_every_row_checked(quick):
    _, doc, _ = quick
    assert doc["ok"] is True
    assert doc["options"]["quick"] is True
    sizes = {"downloads": [3], "primes": [100_000, 500_000], "fetches": [3, 2_000]}
    want = {(e, n, k) for e, ns in sizes.items() for n in ns for k in KEYS[e]}
    got = {(r["experiment"], r["size"], r["key"]) for r in doc["rows"]}
    assert got == want
    for row in doc["rows"]:
        assert row["result_check"]["ok"] is True, row
        assert row["result_check"]["detail"]
        assert row["seconds"] > 0 and row["speedup"] > 0 and row["cpu_cores"] >= 0
        assert row["variant"] and row["pillar"]
        if row["key"] == "map":
            assert row["braid_map_chose"].startswith("braid.map: ")
        if row["key"] == "sequential":
            assert row["speedup"] == 1.0
    sampled = [r for r in doc["rows"] if r["estimated"]]
    assert [(r["experiment"], r["size"]) for r in sampled] == [("fetches", 2_000)]
    assert doc["rule_of_thumb"] and doc["braid_map"]


@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib is not installed")
def test_quick_plot_is_a_png(quick):
    _, _, png = quick
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1560, 500)  # three panels of 5.2 x 5.0 inches at 100 dpi
    assert data[-8:-4] == b"IEND"


def test_without_the_extra(tmp_path):
    """requests, aiohttp and matplotlib hidden: urllib and asyncio streams stand in, every
    result is still checked, and the run says what it left out and how to get it."""
    out_json = tmp_path / "rows.json"
    proc = run_demo(["--quick", "--primes", "2000,30000", "--fetches", "3,300",
                     "--json", str(out_json)], hide_extra=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "urllib.request (requests not installed)" in out
    assert "asyncio streams (aiohttp not installed)" in out
    assert "matplotlib is not installed: no --plot" in out
    assert "pip install 'braid[demo]'" in out
    assert "sequential for loop (urllib)" in out and "asyncio.run + gather (asyncio streams)" in out
    doc = json.loads(out_json.read_text())
    assert doc["ok"] and all(r["result_check"]["ok"] for r in doc["rows"])
    assert len(doc["rows"]) == 4 + 2 * 4 + 2 * 5
    assert len(doc["left_out"]) == 4


def test_plot_without_matplotlib_exits_2(tmp_path):
    proc = run_demo(["--quick", "--plot", str(tmp_path / "x.png")], hide_extra=True)
    assert proc.returncode == 2
    assert "--plot needs matplotlib" in proc.stderr
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, words", [
    (["--only", "downloads,nope"], "unknown experiment 'nope'"),
    (["--only", ","], "unknown experiment"),
    (["--primes", "0"], "not a positive number"),
    (["--primes", "100,abc"], "not a whole number"),
    (["--fetches", "3,-1"], "not a positive number"),
    (["--downloads", "1.5"], "not a whole number"),
    (["--file-size", "0"], "not a positive number"),
    (["--connections", "x"], "not a whole number"),
    (["--repeat", "0"], "not a positive number"),
    (["--latency", "-1"], "0 ms or more"),
    (["--plot", "/nonexistent-braid-dir/x.png"], "does not exist"),
    (["--json", "/nonexistent-braid-dir/x.json"], "does not exist"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_input_exits_2_and_writes_nothing(args, words, tmp_path, capsys):
    keep = tmp_path / "rows.json"
    keep.write_text("keep")
    status = demo_cli.main(args + ["--json", str(keep)] if "--json" not in args else args)
    out, err = capsys.readouterr()
    assert status == 2
    assert words in err
    assert out == ""
    assert keep.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.json"]


def test_plot_into_a_directory_exits_2(tmp_path, capsys):
    assert demo_cli.main(["--plot", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_bad_input_through_the_command_line():
    proc = run_demo(["--only", "nope"])
    assert proc.returncode == 2
    assert "unknown experiment 'nope'" in proc.stderr and "usage:" in proc.stderr
    assert proc.stdout == ""


def test_help():
    proc = run_demo(["--help"])
    assert proc.returncode == 0
    for option in ("--quick", "--only", "--json", "--plot", "--primes", "--fetches"):
        assert option in proc.stdout


def test_sieve_agrees_with_is_prime():
    from braid.bench._tutorial import is_prime

    for stop in (1, 2, 3, 10, 997, 5000):
        assert primes.sieve(stop) == [is_prime(n) for n in range(1, stop + 1)]


def test_server_and_streams_client():
    """The stand-in for aiohttp against the demo's server: pages as sent, connections kept
    alive and reused, a 404 read as one, the limit respected."""
    with server.Server() as srv:
        async def main():
            async with StreamsSession(limit=2) as session:
                async def get(url):
                    async with session.get(url, timeout=10) as resp:
                        return resp.status, await resp.text()

                pages = await asyncio.gather(*(get(srv.url_page(i, 5)) for i in range(20)))
                missing = await get(srv.base + "/nope")
                conns = sum(len(v) for v in session._idle.values())
                return pages, missing, conns

        pages, missing, conns = asyncio.run(main())
        assert pages == [(200, server.page_body(i)) for i in range(20)]
        assert missing[0] == 404
        assert conns <= 2
        assert srv.requests == 21


def test_file_body_is_stamped_and_stable():
    a, b = server.file_body(0, 4096), server.file_body(1, 4096)
    assert len(a) == len(b) == 4096 and a != b and a[18:] == b[18:]
    assert server.file_body(1, 4096) == b
    assert server.file_body(7, 5) == b"braid"


def test_fd_limit_is_raised_to_the_hard_limit():
    import resource

    code = ("import resource; from braid.demo.cli import _raise_fd_limit; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit("
            "resource.RLIMIT_NOFILE)[1])); print(_raise_fd_limit()); "
            "print(resource.getrlimit(resource.RLIMIT_NOFILE) == "
            "(resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("hard limit too low to test raising the soft one")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "raised from 256" in lines[0]
    if hard != resource.RLIM_INFINITY:
        assert lines[1] == "True"


def test_a_wrong_result_fails_its_row_and_the_run(tmp_path, monkeypatch, capsys):
    """The checks check: files that are not the ones meant, and fetches that time out, are
    FAILED rows (the JSON says so too) and the exit status is 1."""
    from braid.demo import downloads, fetches

    monkeypatch.setattr(downloads, "server_file", lambda i, size: b"not this" * (size // 8 + 1))
    monkeypatch.setattr(fetches, "TIMEOUT", 0.05)
    out_json = tmp_path / "rows.json"
    status = demo_cli.main(["--only", "downloads,fetches", "--downloads", "2", "--file-size",
                            "4096", "--latency", "0", "--fetches", "3", "--fetch-latency", "300",
                            "--json", str(out_json)])
    out, err = capsys.readouterr()
    assert status == 1
    assert "failed or gave a wrong result" in err
    doc = json.loads(out_json.read_text())
    assert doc["ok"] is False
    checks = {(r["experiment"], r["key"]): r["result_check"] for r in doc["rows"]}
    for key in KEYS["downloads"]:
        assert not checks["downloads", key]["ok"]
        assert "SHA-256 differs" in checks["downloads", key]["detail"]
    for key in KEYS["fetches"]:
        assert not checks["fetches", key]["ok"]
        assert "3 of 3 fetches failed" in checks["fetches", key]["detail"]
    assert "counts the wait for one of the 100 connections" in checks["fetches", "asyncio"]["detail"]
    assert out.count("FAILED") >= 2 * (len(KEYS["downloads"]) + len(KEYS["fetches"]))


CTRL_C_IN_THE_TUTORIAL_POOL = """
import sys
from braid.demo import primes

print("READY", flush=True)
primes._tutorial_pool(list(range(1, 4_000_001)))
print("finished", flush=True)
"""


def _children_ignoring_sigint(pid):
    """The pids of pid's children whose SIGINT is ignored (/proc's SigIgn mask)."""
    import signal

    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":\t", 1) for line in f if ":\t" in line)
        except (OSError, ValueError):
            continue
        if int(fields.get("PPid", "0")) == pid and int(fields["SigIgn"], 16) >> (signal.SIGINT - 1) & 1:
            found.append(int(entry))
    return found


def test_ctrl_c_during_the_tutorial_s_pool_ends_the_demo():
    # Ctrl-C signals the whole process group: the tutorial's multiprocessing.Pool workers get it
    # too, and one that dies holding the task queue's lock hangs the parent's terminate() (the
    # stdlib's own hang). The demo's pool leaves Ctrl-C to the parent.
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_IN_THE_TUTORIAL_POOL],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        deadline = time.monotonic() + 30
        while len(_children_ignoring_sigint(proc.pid)) < os.cpu_count():  # the pool is up
            assert time.monotonic() < deadline and proc.poll() is None, "no pool"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "finished" not in out
    assert "KeyboardInterrupt" in err
    assert err.count("Traceback") == 1, err  # the parent's alone: no worker dies of it
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # nothing of the group left
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("processes of the demo's group are still running")
