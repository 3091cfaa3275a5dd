#!/usr/bin/env python3
"""aiohttp's own test suite, on asyncio's loop and on braid.Loop.

aiohttp tests itself with pytest and its own pytest plugin
(``aiohttp.pytest_plugin``): the ``loop`` fixture that nearly every test of a
client, a server or a websocket uses makes its loop with
``asyncio.new_event_loop()`` (``--aiohttp-loop=pyloop``), which asks the event
loop policy. This script runs the whole suite twice with pytest-xdist:

* ``stdlib``: as aiohttp runs it, on asyncio's loop -- the baseline;
* ``braid``: with ``braid.install()`` called when pytest configures (in every
  xdist worker), so every loop made through the policy is a ``braid.Loop``.

Both runs load a small pytest plugin that this script writes into a temporary
directory (``braid_plug``, on ``PYTHONPATH``, loaded with ``-p braid_plug``).
In the braid run it installs braid; in both runs it counts the loops that
``asyncio.new_event_loop()`` makes during each test and of which class, and
writes the counts into the JUnit XML as properties of the test. A run whose
first loop is not of the class its mode wants stops before any test, and the
summary says how many tests ran on braid.Loop, and whether any made another
loop through the policy.

The gate: every test that passes on asyncio's loop passes on braid.Loop,
except those listed in ``aiohttp_suite_excluded.txt`` with a reason. After
both runs, each test that passed on asyncio's loop only is run again alone
with braid (``--rerun`` times, default 1); one that passes then is reported
as *flaky*, not as a regression, and does not fail the gate.

Where the tests come from
-------------------------
The tests are not in aiohttp's wheel: by default the sdist of the installed
aiohttp's version is fetched from PyPI (``_sdist.py``: its JSON API, checked
against PyPI's sha256; ``pip download`` where that fails) into ``~/.cache/braid/aiohttp-tests`` (or
``$XDG_CACHE_HOME``) and unpacked there *without* its ``aiohttp`` package
(and egg-info): the tests must import the installed aiohttp, with its compiled
HTTP parser and websocket reader, not the sdist's pure-Python source, which
would shadow it from the working directory. The plugin checks where
``aiohttp`` came from and stops the run if it is the test tree. ``--source
DIR`` uses an unpacked sdist or a checkout (copied the same way) instead.

aiohttp's ``pytest.ini`` is used as it is (``filterwarnings = error``,
``xfail_strict``, its markers, a 120 s per-test timeout) except ``addopts``,
which turns on coverage and ``--numprocesses=auto``: it is replaced by the
parts that select tests (the same ``-m`` expression, ``--doctest-modules``,
``--strict-markers``). What the tests import, at the versions aiohttp's CI
pins (``requirements/test.txt`` of the sdist, as a constraints file)::

    pip install -c requirements/test.txt pytest pytest-xdist pytest-mock \\
        pytest-timeout pytest-codspeed coverage freezegun blockbuster trustme \\
        proxy.py isal zlib-ng aiodns brotli backports.zstd gunicorn

uvloop need not be installed: ``--aiohttp-loop=pyloop`` does not use it. If it
is, the few tests that ask for it by name (a ``uvloop_loop`` fixture, gunicorn's
``UvloopWorker``) run on uvloop in both runs.

Usage (from the repository root, in a venv with braid installed, not editable)::

    python tests/conformance/aiohttp_suite.py --jobs 2
    python tests/conformance/aiohttp_suite.py -m test_web_functional -k keepalive
    python tests/conformance/aiohttp_suite.py --modes braid \\
        'tests/test_helpers.py::test_when_timeout_smaller_second_with_low_threshold'

Test ids are pytest node ids, relative to the sdist's root (``tests/...``).

Exit status: 0 when the gate passes, 1 when a test that passes on asyncio's loop
does not pass on braid.Loop (and is not excluded), or a run could not finish,
2 for usage errors, 130 after Ctrl-C.
"""

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cpython_suite import excluded_reason, load_exclusions  # noqa: E402
from _sdist import fetch_sdist  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EXCLUDE_FILE = os.path.join(HERE, "aiohttp_suite_excluded.txt")
MODES = ("stdlib", "braid")
PASSING = ("pass", "xfail")
BAD = ("fail", "error", "timeout", "crash", "not-run")
# the tests aiohttp's pytest.ini addopts selects by default
MARKERS = "not dev_mode and not autobahn and not internal"
# a run that is not done after this long is interrupted (its JUnit file keeps what finished)
DEFAULT_RUN_LIMIT = 3 * 3600
# what pytest needs to start on aiohttp's tests at all; the others only add tests
REQUIRED = {"pytest": "pytest", "xdist": "pytest-xdist", "pytest_mock": "pytest-mock",
            "pytest_timeout": "pytest-timeout", "freezegun": "freezegun",
            "coverage": "coverage"}  # pytest.ini's filterwarnings names a coverage warning
OPTIONAL = {"trustme": "trustme", "proxy": "proxy.py", "pytest_codspeed": "pytest-codspeed",
            "blockbuster": "blockbuster", "isal": "isal", "zlib_ng": "zlib-ng",
            "aiodns": "aiodns", "brotli": "brotli", "gunicorn": "gunicorn"}


# --------------------------------------------------------------------------
# The pytest plugin, written into a temporary directory for both runs
# --------------------------------------------------------------------------

PLUGIN = r'''
"""Written by tests/conformance/aiohttp_suite.py; loaded with -p braid_plug."""

import asyncio
import fnmatch
import json
import os

import pytest

MODE = os.environ["BRAID_AIOHTTP_MODE"]
_counts = {"loops": 0, "braid": 0}


def _is_braid(loop):
    # by module, so that the stdlib run does not import braid at all
    return type(loop).__module__.split(".")[0] == "braid"


def _count_loops(policy):
    """Counts the loops policy.new_event_loop() makes, which is what
    asyncio.new_event_loop() and the aiohttp plugin's loop fixture call."""
    make = policy.new_event_loop

    def new_event_loop():
        loop = make()
        _counts["loops"] += 1
        _counts["braid"] += _is_braid(loop)
        return loop

    policy.new_event_loop = new_event_loop


def pytest_configure(config):
    if MODE == "braid":
        import braid

        braid.install()
    _count_loops(asyncio.get_event_loop_policy())
    probe = asyncio.new_event_loop()
    kind = f"{type(probe).__module__}.{type(probe).__qualname__}"
    probe.close()
    _counts.update(loops=0, braid=0)

    import aiohttp
    import aiohttp.http_parser

    info = {"worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "pid": os.getpid(),
            "mode": MODE, "loop": kind, "aiohttp": os.path.dirname(aiohttp.__file__),
            "aiohttp_version": aiohttp.__version__,
            "parser": aiohttp.http_parser.HttpRequestParser.__module__,
            "policy": type(asyncio.get_event_loop_policy()).__module__}
    with open(os.environ["BRAID_AIOHTTP_INFO"], "a") as fp:
        fp.write(json.dumps(info) + "\n")
    if _is_braid(probe) != (MODE == "braid"):
        raise pytest.UsageError(f"{MODE} run: asyncio.new_event_loop() made a {kind}")
    root = str(config.rootpath)
    if os.path.commonpath([root, os.path.abspath(aiohttp.__file__)]) == root:
        raise pytest.UsageError(f"aiohttp imported from the test tree ({aiohttp.__file__}), "
                                "not the installed package")


def pytest_collection_modifyitems(config, items):
    path = os.environ.get("BRAID_AIOHTTP_DESELECT")
    patterns = []
    if path:
        with open(path) as fp:
            patterns = [line.strip() for line in fp if line.strip()]
    keep, drop = [], []
    for item in items:
        if any(item.nodeid == p or fnmatch.fnmatchcase(item.nodeid, p) for p in patterns):
            drop.append(item)
        else:
            # the JUnit XML mangles the node id into classname and name; keep it whole
            item.user_properties.append(("nodeid", item.nodeid))
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _counts.update(loops=0, braid=0)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # the teardown report is the last one of a test, made once its fixtures are gone:
    # the counts cover setup, call and teardown
    if call.when == "teardown":
        item.user_properties.append(("loops", _counts["loops"]))
        item.user_properties.append(("braid_loops", _counts["braid"]))
    yield
'''


# --------------------------------------------------------------------------
# The tests: aiohttp's sdist without its aiohttp package
# --------------------------------------------------------------------------

def _cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "braid", "aiohttp-tests")


# top-level entries of an sdist or checkout that the tests do not need; the aiohttp
# package itself must not be there (see the module docstring)
_SKIP_TOP = {"aiohttp", ".git", "build", "dist", "vendor", "docs", ".tox", ".venv", "venv",
             ".mypy_cache", ".pytest_cache"}


def _skip_top(name):
    return name in _SKIP_TOP or name.endswith(".egg-info")


def _install_tree(src_root, dest):
    """Copies src_root (an unpacked sdist or checkout) to dest, atomically, without the
    entries _skip_top names. Returns dest."""
    if not os.path.isfile(os.path.join(src_root, "tests", "test_web_functional.py")):
        raise SystemExit(f"{src_root} is not an aiohttp sdist or checkout "
                         "(no tests/test_web_functional.py)")
    if os.path.isfile(os.path.join(dest, "pytest.ini")):
        return dest
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent)
    try:
        staged = os.path.join(tmp, "tree")
        os.makedirs(staged)
        for name in os.listdir(src_root):
            if _skip_top(name):
                continue
            path = os.path.join(src_root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.copytree(path, os.path.join(staged, name), symlinks=True)
            else:
                shutil.copy2(path, os.path.join(staged, name), follow_symlinks=False)
        try:
            os.rename(staged, dest)
        except OSError:
            if not os.path.isfile(os.path.join(dest, "pytest.ini")):  # lost no race: a failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _installed_version():
    try:
        from importlib.metadata import version
        return version("aiohttp")
    except Exception as exc:
        raise SystemExit(f"aiohttp is not installed ({exc}); pip install aiohttp") from None


def _downloaded(ver):
    """The test tree for aiohttp VER, fetched and unpacked once."""
    dest = os.path.join(_cache_dir(), f"aiohttp-{ver}")
    if os.path.isfile(os.path.join(dest, "pytest.ini")):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        sdist = os.path.basename(fetch_sdist("aiohttp", ver, tmp))
        with tarfile.open(os.path.join(tmp, sdist)) as tar:
            members = [m for m in tar.getmembers()
                       if not _skip_top((m.name.split("/") + [""])[1])]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **safe)
        return _install_tree(os.path.join(tmp, sdist[:-len(".tar.gz")]), dest)


def _from_source(source):
    source = os.path.abspath(source)
    return _install_tree(source, os.path.join(_cache_dir(), "from-source",
                                              source.strip(os.sep).replace(os.sep, "_")))


def _tree_version(root):
    try:
        with open(os.path.join(root, "PKG-INFO")) as fp:
            for line in fp:
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------
# One pytest run
# --------------------------------------------------------------------------

class Run:
    """One pytest run of a mode: its command, JUnit file, log and what the plugin saw."""

    def __init__(self, mode, outdir, label):
        self.mode = mode
        self.label = label
        self.xml = os.path.join(outdir, f"junit-{label}.xml")
        self.log = os.path.join(outdir, f"pytest-{label}.log")
        self.info_file = os.path.join(outdir, f"plugin-{label}.jsonl")
        self.returncode = None
        self.wall = 0.0
        self.interrupted = False
        self.timed_out = False
        self.broken = False  # pytest stopped before the tests (internal or usage error)

    def info(self):
        try:
            with open(self.info_file) as fp:
                return [json.loads(line) for line in fp if line.strip()]
        except OSError:
            return []


def _pytest_cmd(args, run, jobs, targets):
    cmd = [sys.executable, "-m", "pytest", "-p", "braid_plug", "-p", "no:cacheprovider",
           "-o", "addopts=", "-m", args.markers, "--strict-markers", "--doctest-modules",
           "--aiohttp-loop=pyloop", "-n", str(jobs), f"--junitxml={run.xml}",
           "-o", "junit_log_passing_tests=false", "-rfE", "--no-header", "-q"]
    if args.timeout:
        cmd += ["--timeout", f"{args.timeout:g}"]
    if args.patterns:
        cmd += ["-k", " or ".join(f"({p})" for p in args.patterns)]
    return cmd + list(targets)


def _stop(proc):
    """Interrupts a pytest run like Ctrl-C (pytest then still writes its JUnit file for
    the tests that ended), and kills it if it does not stop."""
    for sig, wait in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_pytest(args, run, jobs, targets, plugdir, tree, deselect_file=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([plugdir] + [p for p in
                                                     [env.get("PYTHONPATH")] if p])
    env["BRAID_AIOHTTP_MODE"] = run.mode
    env["BRAID_AIOHTTP_INFO"] = run.info_file
    env.pop("BRAID_AIOHTTP_DESELECT", None)
    if deselect_file:
        env["BRAID_AIOHTTP_DESELECT"] = deselect_file
    cmd = _pytest_cmd(args, run, jobs, targets)
    for stale in (run.xml, run.info_file):  # from an earlier run into the same --out
        if os.path.exists(stale):
            os.remove(stale)
    with open(run.log, "w") as log:
        log.write(f"$ (cd {tree} && {' '.join(cmd)})\n")
        log.flush()

        def pump():
            for line in proc.stdout:
                log.write(line)
                if not args.quiet:
                    sys.stdout.write(f"[{run.label}] {line}")
                    sys.stdout.flush()

        t0 = time.monotonic()
        # its own process group: Ctrl-C reaches the harness alone, which then stops pytest
        # the way Ctrl-C would, so that pytest still writes its JUnit file
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                start_new_session=True)
        # a thread drains the output, so that the wait below can time out while pytest is
        # silent, and pytest never blocks on a full pipe while it is being stopped
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(args.run_limit or None)
        except subprocess.TimeoutExpired:
            run.timed_out = True
            print(f"\n[{run.label}] still running after {args.run_limit:g} s: stopping pytest",
                  flush=True)
            _stop(proc)
        except KeyboardInterrupt:
            run.interrupted = True
            print(f"\n[{run.label}] interrupted: stopping pytest", flush=True)
            _stop(proc)
        finally:
            reader.join(30)
            run.wall = time.monotonic() - t0
            run.returncode = proc.poll()
    return run


# --------------------------------------------------------------------------
# Reading the JUnit XML
# --------------------------------------------------------------------------

def _node_id(case, tree):
    """The pytest node id of a <testcase>: from the plugin's property, else rebuilt from
    classname and name (collection errors have no item, so no property)."""
    for prop in case.iter("property"):
        if prop.get("name") == "nodeid":
            return prop.get("value")
    parts = (case.get("classname") or "").split(".")
    name = case.get("name") or ""
    if parts == [""] and case.get("file"):  # a module that skipped or failed as a whole
        return case.get("file")
    for i in range(len(parts), 0, -1):
        path = "/".join(parts[:i]) + ".py"
        if os.path.isfile(os.path.join(tree, path)):
            return "::".join([path] + parts[i:] + ([name] if name else []))
    return "::".join(p for p in (case.get("classname"), name) if p)


def _first_error_line(elem):
    """The line that says what went wrong: pytest's first 'E   ...' line, else the message."""
    text = elem.text or ""
    lines = [line[4:].strip() for line in text.splitlines() if line.startswith("E   ")]
    if lines:
        # an assertion's next line says what its operands were: "+  where False = ..."
        if len(lines) > 1 and lines[1].startswith("+"):
            return f"{lines[0]} ({lines[1].lstrip('+ ')})"
        return lines[0]
    msg = (elem.get("message") or "").strip()
    return msg.splitlines()[0] if msg else (text.strip().splitlines() or [""])[-1]


def read_junit(path, tree):
    """{node id: result} of a JUnit file; result: outcome, reason, details, duration, loop
    counts. Outcomes: pass, xfail, skip, fail, error, timeout, crash."""
    results = {}
    if not os.path.isfile(path):
        return results
    for case in ET.parse(path).getroot().iter("testcase"):
        tid = _node_id(case, tree)
        res = {"outcome": "pass", "reason": "", "duration": float(case.get("time") or 0)}
        props = {}
        for prop in case.iter("property"):
            props.setdefault(prop.get("name"), prop.get("value"))
        for key in ("loops", "braid_loops"):
            if key in props:
                res[key] = int(props[key])
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        bad = failure if failure is not None else error
        if bad is not None:
            res["outcome"] = "fail" if failure is not None else "error"
            res["reason"] = _first_error_line(bad)
            res["details"] = (bad.text or "")[-6000:]
            msg = bad.get("message") or ""
            if "Timeout" in res["reason"] and "Failed: Timeout" in (bad.text or msg):
                res["outcome"] = "timeout"
            elif "crashed while running" in (bad.text or msg):
                res["outcome"] = "crash"
            if error is not None and failure is not None:
                res["reason"] += f" (and {_first_error_line(error)})"
        elif skipped is not None:
            res["outcome"] = "xfail" if skipped.get("type") == "pytest.xfail" else "skip"
            res["reason"] = (skipped.get("message") or "").strip()
        prev = results.get(tid)
        if prev is None or prev["outcome"] in PASSING + ("skip",):
            results[tid] = res
    return results


# --------------------------------------------------------------------------
# Comparing the runs
# --------------------------------------------------------------------------

def _module(tid):
    return tid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")


def build_report(args, runs, results, reruns, exclusions, tree):
    base, mine = results.get("stdlib", {}), results.get("braid", {})
    both = "stdlib" in args.modes and "braid" in args.modes
    modules, tests = {}, {}
    regressions, flaky, excluded_hits, braid_only_skips, other_loops = [], [], [], [], []
    # a braid run that was stopped has no result for the tests it did not reach: not counted
    partial = any(run.interrupted or run.timed_out or run.broken
                  for run in runs if run.label == "braid")
    not_reached = 0
    used = set()
    keys = ("tests", "pass_stdlib", "pass_braid", "on_braid", "regressions", "excluded",
            "flaky", "fail_both", "skip_stdlib", "skip_braid")
    for tid in dict.fromkeys(list(base) + list(mine)):
        row = modules.setdefault(_module(tid), dict.fromkeys(keys, 0))
        b, r = base.get(tid), mine.get(tid)
        row["tests"] += 1
        entry = {}
        if b is not None:
            entry["stdlib"] = b
            row["pass_stdlib"] += b["outcome"] in PASSING
            row["skip_stdlib"] += b["outcome"] == "skip"
        if r is not None:
            entry["braid"] = r
            row["pass_braid"] += r["outcome"] in PASSING
            row["skip_braid"] += r["outcome"] == "skip"
            row["on_braid"] += bool(r.get("braid_loops"))
            if r.get("loops", 0) > r.get("braid_loops", 0):
                other_loops.append(tid)
        pat, why = excluded_reason(tid, exclusions)
        if pat:
            used.add(pat)
        if both:
            b_ok = b is not None and b["outcome"] in PASSING
            r_out = r["outcome"] if r is not None else "not-run"
            if r is None and partial:
                not_reached += 1
                entry["verdict"] = "not reached"
            elif pat and b_ok and (r is None or r_out in BAD):
                row["excluded"] += 1
                excluded_hits.append({"id": tid, "reason": why,
                                      "braid": r_out if r is not None else "not run"})
                entry["verdict"] = "excluded"
            elif b_ok and r_out in BAD:
                rr = reruns.get(tid)
                if rr and rr["outcome"] in PASSING:
                    row["flaky"] += 1
                    flaky.append({"id": tid, "outcome": r_out, "reason": r["reason"],
                                  "rerun": rr["outcome"]})
                    entry["verdict"] = "flaky"
                else:
                    row["regressions"] += 1
                    regressions.append({
                        "id": tid, "outcome": r_out,
                        "reason": (r or {}).get("reason", "no result in the braid run"),
                        "details": (r or {}).get("details", ""),
                        "rerun": rr and {"outcome": rr["outcome"], "reason": rr.get("reason")}})
                    entry["verdict"] = "regression"
            elif b is not None and b["outcome"] in BAD and r_out in BAD:
                row["fail_both"] += 1
                entry["verdict"] = "fails on both"
            elif b_ok and r_out == "skip":
                braid_only_skips.append({"id": tid, "reason": r["reason"]})
                entry["verdict"] = "skipped with braid only"
            if pat and entry.get("verdict") != "excluded" and r is not None:
                entry["excluded_but"] = r_out
        tests[tid] = entry
    totals = {k: sum(row[k] for row in modules.values()) for k in keys}
    whole = not (args.patterns or args.modules or args.tests or args.markers != MARKERS)
    stale = [pat for pat, _ in exclusions if pat not in used] if whole else []
    counts = {}
    for mode, res in results.items():
        c = counts.setdefault(mode, {"collected": len(res)})
        for r in res.values():
            c[r["outcome"]] = c.get(r["outcome"], 0) + 1
    return {
        "suite": "aiohttp",
        "aiohttp": _installed_version(),
        "tests_from": tree,
        "python": sys.version,
        "executable": sys.executable,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "options": {"jobs": args.jobs, "timeout": args.timeout, "modes": args.modes,
                    "markers": args.markers,
                    "patterns": args.patterns, "modules": args.modules, "tests": args.tests,
                    "rerun": args.rerun,
                    "exclude_file": None if args.no_exclude else args.exclude},
        "runs": {run.label: {"mode": run.mode, "wall_s": round(run.wall, 1),
                             "pytest_exit": run.returncode, "interrupted": run.interrupted,
                             "run_limit_hit": run.timed_out, "broken": run.broken,
                             "junit": run.xml, "log": run.log,
                             "plugin": run.info()} for run in runs},
        "counts": counts,
        "modules": [dict(row, module=m) for m, row in sorted(modules.items())],
        "totals": totals,
        "regressions": regressions,
        "flaky": flaky,
        "excluded": excluded_hits,
        "excluded_not_failing": [{"id": t, "now": e["excluded_but"]} for t, e in tests.items()
                                 if "excluded_but" in e],
        "skipped_with_braid_only": braid_only_skips,
        "made_other_loops_with_braid": other_loops,
        "stale_exclusions": stale,
        "not_reached_with_braid": not_reached,
        "gate": {"checked": both, "failed": bool(both and regressions)},
        "tests": tests,
    }


def markdown_table(rep):
    lines = ["| module | tests | passed, asyncio's loop | passed, braid.Loop | on braid.Loop | "
             "regressions | excluded | flaky |", "|---|---|---|---|---|---|---|---|"]
    for row in rep["modules"] + [dict(rep["totals"], module="**total**")]:
        name = row["module"] if row["module"] == "**total**" else f"`{row['module']}`"
        lines.append(f"| {name} | {row['tests']} | {row['pass_stdlib']} | {row['pass_braid']} | "
                     f"{row['on_braid']} | {row['regressions']} | {row['excluded']} | "
                     f"{row['flaky']} |")
    return "\n".join(lines) + "\n"


def print_report(args, rep):
    print()
    print("=" * 100)
    print(f"aiohttp {rep['aiohttp']}'s tests on Python {sys.version.split()[0]}: "
          f"asyncio's loop vs braid.Loop ({rep['wall_time_s']:.0f} s wall, {args.jobs} jobs)")
    for label, run in rep["runs"].items():
        loops = sorted({i["loop"] for i in run["plugin"]})
        where = sorted({i["aiohttp"] for i in run["plugin"]})
        parsers = sorted({i["parser"] for i in run["plugin"]})
        state = " INTERRUPTED" if run["interrupted"] else \
            " STOPPED (--run-limit)" if run["run_limit_hit"] else \
            f" STOPPED BEFORE THE TESTS (see {run['log']})" if run["broken"] else ""
        print(f"run      {label}: {run['wall_s']:.0f} s, pytest exit {run['pytest_exit']}{state}; "
              f"new_event_loop() -> {', '.join(loops) or '?'}; aiohttp from "
              f"{', '.join(where) or '?'} (parser {', '.join(parsers) or '?'})")
    for mode, c in rep["counts"].items():
        rest = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k != "collected")
        print(f"counts   {mode}: {c['collected']} tests: {rest}")
    if args.verbose or len(rep["modules"]) <= 40:
        hdr = (f"{'module':36} {'tests':>6} {'pass stdlib':>11} {'pass braid':>10} "
               f"{'on braid.Loop':>13} {'regress.':>8} {'excl.':>5} {'flaky':>5}")
        print(hdr)
        print("-" * len(hdr))
        for row in rep["modules"]:
            print(f"{row['module']:36} {row['tests']:6} {row['pass_stdlib']:11} "
                  f"{row['pass_braid']:10} {row['on_braid']:13} {row['regressions']:8} "
                  f"{row['excluded']:5} {row['flaky']:5}")
    t = rep["totals"]
    print(f"total: {t['tests']} tests, {t['pass_stdlib']} pass on asyncio's loop, "
          f"{t['pass_braid']} on braid.Loop ({t['on_braid']} of them made a braid.Loop), "
          f"{t['fail_both']} fail on both")
    if rep["made_other_loops_with_braid"]:
        n = len(rep["made_other_loops_with_braid"])
        print(f"\nwarning: {n} test(s) of the braid run got a loop that is not braid.Loop "
              f"from asyncio.new_event_loop(), e.g. {rep['made_other_loops_with_braid'][0]}")
    if rep["flaky"]:
        print(f"\nflaky with braid: failed in the run, passed alone ({len(rep['flaky'])}):")
        for f in rep["flaky"]:
            print(f"  {f['id']}: {f['outcome']}: {f['reason'][:150]}")
    if rep["excluded"]:
        print(f"\nexcluded ({len(rep['excluded'])}; braid outcome, reason):")
        for e in rep["excluded"]:
            print(f"  {e['id']}: {e['braid']}  [{e['reason'][:120]}]")
    if rep["excluded_not_failing"]:
        print(f"\nexcluded but not failing with braid ({len(rep['excluded_not_failing'])}):")
        for e in rep["excluded_not_failing"]:
            print(f"  {e['id']}: {e['now']}")
    if rep["skipped_with_braid_only"]:
        print(f"\npassed on asyncio's loop, skipped with braid "
              f"({len(rep['skipped_with_braid_only'])}):")
        for e in rep["skipped_with_braid_only"]:
            print(f"  {e['id']}: {e['reason'][:150]}")
    for pat in rep["stale_exclusions"]:
        print(f"warning: exclusion {pat!r} matches no test")
    if rep["regressions"]:
        print(f"\nREGRESSIONS: pass on asyncio's loop, not on braid.Loop "
              f"({len(rep['regressions'])}):")
        for r in rep["regressions"]:
            again = f"  [alone: {r['rerun']['outcome']}]" if r["rerun"] else ""
            print(f"  {r['outcome']:7} {r['id']}: {r['reason'][:160]}{again}")
    if rep["not_reached_with_braid"]:
        print(f"\nnot reached by the braid run before it stopped: "
              f"{rep['not_reached_with_braid']} tests")
    if rep["interrupted"]:
        print("\ngate: not decided (a run did not finish)")
    elif rep["gate"]["checked"]:
        print(f"\ngate: {'FAILED' if rep['gate']['failed'] else 'passed'} "
              f"({len(rep['regressions'])} regressions, {len(rep['excluded'])} excluded, "
              f"{len(rep['flaky'])} flaky)")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Run aiohttp's own test suite on asyncio's loop and on braid.Loop; fail "
                    "when a test passes on asyncio's loop only.",
        epilog="docs/CONFORMANCE.md describes the suites, their exclusions and figures.")
    p.add_argument("tests", nargs="*", metavar="NODEID",
                   help="only these pytest node ids or paths, relative to the sdist's root "
                        "(e.g. tests/test_helpers.py::test_timer_context_not_cancelled)")
    p.add_argument("--jobs", "-j", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                   help="pytest-xdist workers (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds a test may run before pytest-timeout fails it "
                        "(default: aiohttp's pytest.ini, 120)")
    p.add_argument("--run-limit", type=float, default=DEFAULT_RUN_LIMIT,
                   help="seconds a whole pytest run may take before it is interrupted "
                        "(default: %(default)s; 0: no limit)")
    p.add_argument("--modes", default="stdlib,braid",
                   help="runs to make: stdlib,braid (default) or one of them")
    p.add_argument("--module", "-m", dest="modules", action="append", default=[],
                   help="only this test module (e.g. test_web_functional); repeatable")
    p.add_argument("-k", dest="patterns", action="append", default=[],
                   help="a pytest -k expression; repeatable (joined with 'or')")
    p.add_argument("--markers", default=MARKERS, metavar="EXPR",
                   help="pytest -m expression choosing the tests by marker (default: aiohttp's, "
                        "%(default)r; the autobahn tests need docker)")
    p.add_argument("--rerun", type=int, default=1,
                   help="times the regressions are run again alone with braid before they "
                        "count (default: %(default)s; 0: never)")
    p.add_argument("--exclude", default=EXCLUDE_FILE, help="exclusion file (default: %(default)s)")
    p.add_argument("--no-exclude", action="store_true", help="ignore the exclusion file")
    p.add_argument("--run-excluded", action="store_true",
                   help="run the excluded tests too in the braid run (to see which still fail)")
    p.add_argument("--source", metavar="DIR",
                   help="an unpacked aiohttp sdist or checkout instead of fetching the "
                        "installed version's sdist from PyPI")
    p.add_argument("--out", metavar="DIR",
                   help="keep the JUnit XML files and pytest logs here (default: a temporary "
                        "directory, removed at the end)")
    p.add_argument("--json", metavar="FILE", help="write the full results as JSON")
    p.add_argument("--markdown", metavar="FILE",
                   help="write the per-module table as Markdown (for docs/CONFORMANCE.md)")
    p.add_argument("--quiet", "-q", action="store_true", help="do not echo pytest's output")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="print the per-module table even when it is long")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}")
    args.modes = [m for m in MODES if m in args.modes]  # the baseline first
    return args


def _check_imports():
    missing = [pkg for mod, pkg in REQUIRED.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise SystemExit(f"missing test requirements: pip install {' '.join(missing)} "
                         "(see this script's docstring for the full list)")
    return [pkg for mod, pkg in OPTIONAL.items() if importlib.util.find_spec(mod) is None]


def _targets(args, tree):
    targets = list(args.tests)
    for mod in args.modules:
        path = os.path.join("tests", mod if mod.endswith(".py") else mod + ".py")
        if not os.path.isfile(os.path.join(tree, path)):
            names = sorted(f[:-3] for f in os.listdir(os.path.join(tree, "tests"))
                           if f.startswith("test_") and f.endswith(".py"))
            print(f"unknown module {mod!r}; modules: {' '.join(names)}", file=sys.stderr)
            return None
        targets.append(path)
    return targets or ["tests"]


def _on_term(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # what the runs need, checked before the first one: the test requirements, braid, the tests
    try:
        missing = _check_imports()
        importlib.import_module("braid")  # the braid run's plugin imports it
        ver = _installed_version()
        tree = _from_source(args.source) if args.source else _downloaded(ver)
        exclusions = [] if args.no_exclude else load_exclusions(args.exclude)
    except ImportError as exc:
        print(f"braid is not importable: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    tree_ver = _tree_version(tree)
    targets = _targets(args, tree)
    if targets is None:
        return 2

    print(f"python   {sys.version.split()[0]} ({sys.executable})")
    print(f"suite    aiohttp {ver}'s tests from {tree}, runs: {', '.join(args.modes)}, "
          f"jobs {args.jobs}, per-test timeout "
          f"{f'{args.timeout:g} s' if args.timeout else 'from pytest.ini'}")
    if tree_ver and tree_ver != ver:
        print(f"warning  the tests are aiohttp {tree_ver}'s, the installed aiohttp is {ver}")
    if missing:
        print(f"warning  not installed, their tests are skipped: {' '.join(missing)}")
    sys.stdout.flush()

    outdir = os.path.abspath(args.out) if args.out else \
        tempfile.mkdtemp(prefix="braid-aiohttp-suite-")
    os.makedirs(outdir, exist_ok=True)
    plugdir = os.path.join(outdir, "plugin")
    os.makedirs(plugdir, exist_ok=True)
    with open(os.path.join(plugdir, "braid_plug.py"), "w") as fp:
        fp.write(PLUGIN)
    deselect_file = None
    if exclusions and not args.run_excluded:
        deselect_file = os.path.join(outdir, "deselect.txt")
        with open(deselect_file, "w") as fp:
            fp.write("".join(pat + "\n" for pat, _ in exclusions))

    t0 = time.monotonic()
    runs, results, reruns = [], {}, {}
    old_term = signal.signal(signal.SIGTERM, _on_term)
    broken = None  # the status of a pytest run that stopped before its tests
    try:
        for mode in args.modes:
            run = run_pytest(args, Run(mode, outdir, mode), args.jobs, targets, plugdir, tree,
                             deselect_file if mode == "braid" else None)
            runs.append(run)
            results[mode] = read_junit(run.xml, tree)
            if run.interrupted:
                raise KeyboardInterrupt
            if not run.timed_out and (run.returncode in (3, 4) or not os.path.isfile(run.xml)):
                # an internal or usage error: a bad -k (an internal error under xdist), the
                # plugin's checks, a test requirement missing
                print(f"[{run.label}] pytest stopped with status {run.returncode} before the "
                      f"tests; see {run.log}", file=sys.stderr)
                run.broken = True
                broken = run.returncode
                break
        if len(results) == 2 and args.rerun > 0:
            base = results["stdlib"]
            for attempt in range(args.rerun):
                todo = [tid for tid, r in results["braid"].items()
                        if tid in base and base[tid]["outcome"] in PASSING
                        and r["outcome"] in BAD
                        and reruns.get(tid, {}).get("outcome") not in PASSING
                        and not excluded_reason(tid, exclusions)[0]]
                if not todo:
                    break
                print(f"\nre-running {len(todo)} regression(s) alone with braid "
                      f"(attempt {attempt + 1} of {args.rerun})", flush=True)
                run = run_pytest(args, Run("braid", outdir, f"braid-rerun{attempt + 1}"),
                                 min(args.jobs, len(todo)) if len(todo) > 1 else 0, todo,
                                 plugdir, tree)
                runs.append(run)
                for tid, res in read_junit(run.xml, tree).items():
                    if tid in todo:
                        reruns[tid] = res
                if run.interrupted:
                    raise KeyboardInterrupt
        interrupted = any(r.interrupted or r.timed_out for r in runs)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, old_term)

    report = build_report(args, runs, results, reruns, exclusions, tree)
    report["wall_time_s"] = round(time.monotonic() - t0, 1)
    report["interrupted"] = interrupted or broken is not None
    print_report(args, report)
    if args.json:
        with open(args.json, "w") as fp:
            json.dump(report, fp, indent=1)
        print(f"\njson written to {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as fp:
            fp.write(markdown_table(report))
        print(f"markdown table written to {args.markdown}")
    if args.out or report["interrupted"]:  # the logs say why a run did not finish
        print(f"JUnit files and pytest logs in {outdir}")
    else:
        shutil.rmtree(outdir, ignore_errors=True)

    if any(r.interrupted for r in runs) or (interrupted and not any(r.timed_out for r in runs)):
        return 130
    if broken is not None:
        return 2 if broken == 4 else 1
    if interrupted or report["gate"]["failed"] or len(results) < len(args.modes):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
