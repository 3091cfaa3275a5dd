"""The engine shared by cpython_asyncio_suite.py and cpython_futures_suite.py.

Both run a whole CPython test package (``test.test_asyncio``,
``test.test_concurrent_futures``) twice -- once as CPython ships it (the *stdlib*
run, the baseline) and once with braid put in place of the stdlib (the *braid*
run) -- and compare the two test by test.  The gate: a test that passes in the
stdlib run must pass in the braid run, unless it is listed in the suite's
exclusion file with a reason.

How a run is organised
----------------------
Each test module runs in its own child process (this package's front-end script
with ``--child``), in a fresh temporary directory, as the leader of a new process
group, at most ``--jobs`` children at a time, biggest modules first.  Inside the
child the module's tests run in CPython's order with unittest, so class and
module fixtures behave as under CPython's own runner.  The child appends one JSON
line per event to a progress file:

    {"ev": "plan", "ids": [...]}             the module's tests, in order
    {"ev": "start", "id": ...}               a test begins
    {"ev": "end", "id": ..., "outcome": ...} it ended (with reason, traceback,
                                             duration and the suite's counters,
                                             e.g. braid.Loop instances created)
    {"ev": "fixture", ...}                   a class or module fixture failed/skipped
    {"ev": "done"}                           the module finished

The per-test watchdog lives in the parent, which reads that file: a test still
running after ``--timeout`` seconds (or a fixture silent for as long) gets its
child's whole process group killed; faulthandler, armed in the child at each
test's start, has dumped every thread's stack into the child's log 2 s before,
so the timeout is reported with the line the test hung on.  A child that dies
(crash) or is killed is started again on the same module, skipping every test
that already has an outcome, so one hang costs one test, not the module.

Outcomes: pass (incl. expected failures), fail (assertion or unexpected
success), error (any other exception, incl. setUp/tearDown/cleanups), skip,
timeout, crash (the child died during the test), not-run (the test never
started: a class/module fixture failed, or the module did not import).

After both runs, every test that passed on the stdlib and did not pass with braid
is run again with braid alone in a fresh child (``--rerun`` times, default 1);
one that passes then is reported as *flaky*, not as a regression.  Flaky tests
are printed, but do not fail the gate.

This module has no braid-specific code; a front end supplies a ``Suite``:
the package, how to prepare a child for each mode, which tests to keep, and
counters to record per test.
"""

import argparse
import ast
import datetime
import faulthandler
import fnmatch
import importlib
import inspect
import json
import os
import pkgutil
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import unittest

# Tests of Ctrl-C (uvloop's test_signals, CPython's) send SIGINT to a child and expect CPython's
# own handler there. A harness started in the background by a shell without job control
# (`cmd &` in a script, `nohup`) has SIGINT ignored, exec keeps it ignored, and CPython installs
# no handler then; with a handler here, exec resets it to the default in every child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

MODES = ("stdlib", "braid")
PASSING = ("pass",)
BAD = ("fail", "error", "timeout", "crash", "not-run")
DETAILS_LIMIT = 6000


class Suite:
    """What a front end describes.  Subclasses override the methods."""

    name = "suite"
    package = "test"            # e.g. "test.test_asyncio"
    exclude_file = None
    known_file = None           # known differences: run with braid, reported, not gated
    counter_label = "on braid"  # table column: tests whose braid counter went up
    description = ""

    def modules(self):
        """Short names of the package's test modules, e.g. ['test_tasks', ...]."""
        pkg = importlib.import_module(self.package)
        return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                      if m.name.startswith("test_"))

    def module_weight(self, module):
        """A guess of a module's run time (bigger first); source size by default."""
        pkg = importlib.import_module(self.package)
        path = os.path.join(pkg.__path__[0], module + ".py")
        try:
            return os.path.getsize(path)
        except OSError:
            return 0

    def setup_child(self, mode):
        """Prepare the child process for MODE before the test module is imported.

        Returns a callable returning a dict of counters (ints); the child records,
        per test, how much each counter grew.  Counter "braid" (when present)
        says whether the test really ran on braid's code.
        """
        return dict

    def keep(self, test_id):
        """Whether to run this test (e.g. drop variants braid has no counterpart for)."""
        return True

    def notes(self, mode):
        return []

    def add_arguments(self, parser):
        """Suite-specific options.  configure() must hand them to the children
        (through the environment: children inherit it)."""

    def configure(self, args):
        pass


# --------------------------------------------------------------------------
# Child: run one module's tests, writing progress events
# --------------------------------------------------------------------------

def short_id(suite, full_id):
    prefix = suite.package + "."
    return full_id[len(prefix):] if full_id.startswith(prefix) else full_id


def _flatten(test):
    if isinstance(test, unittest.TestSuite):
        for t in test:
            yield from _flatten(t)
    else:
        yield test


class _Events:
    def __init__(self, path):
        self.fp = open(path, "a", buffering=1, encoding="utf-8")

    def emit(self, **ev):
        self.fp.write(json.dumps(ev) + "\n")
        self.fp.flush()


class _ChildResult(unittest.TestResult):
    """Reports each test's outcome as it ends; the worst event of a test wins."""

    RANK = {"pass": 0, "skip": 1, "fail": 2, "error": 3}

    def __init__(self, suite, events, counters, timeout):
        super().__init__()
        self.suite = suite
        self.events = events
        self.counters = counters
        self.timeout = timeout
        self.cur = None

    # -- per test
    def startTest(self, test):
        super().startTest(test)
        tid = short_id(self.suite, test.id())
        self.cur = {"id": tid, "outcome": None, "reason": "", "details": "",
                    "t0": time.monotonic(), "c0": self.counters()}
        if self.timeout > 5:
            faulthandler.dump_traceback_later(self.timeout - 2, exit=False)
        self.events.emit(ev="start", id=tid)

    def stopTest(self, test):
        super().stopTest(test)
        # re-armed, not cancelled: a hang in the fixtures that follow (tearDownClass,
        # module cleanups) is reported with its stack too
        if self.timeout > 5:
            faulthandler.dump_traceback_later(self.timeout - 2, exit=False)
        cur, self.cur = self.cur, None
        if cur is None:
            return
        if cur["outcome"] is None:
            cur["outcome"], cur["reason"] = "error", "harness: the test reported no outcome"
        c1 = self.counters()
        grew = {k: c1.get(k, 0) - cur["c0"].get(k, 0) for k in c1}
        self.events.emit(ev="end", id=cur["id"], outcome=cur["outcome"],
                         reason=cur["reason"][:300], details=cur["details"][-DETAILS_LIMIT:],
                         duration=round(time.monotonic() - cur["t0"], 3),
                         counters={k: v for k, v in grew.items() if v})

    def _note(self, test, outcome, reason, details=""):
        if self.cur is None and isinstance(test, unittest.TestCase):
            # 3.12.1 reports a test of a skipped class without startTest
            self.events.emit(ev="end", id=short_id(self.suite, test.id()), outcome=outcome,
                             reason=reason[:300], details=details[-DETAILS_LIMIT:],
                             duration=0.0, counters={})
            return
        if self.cur is None or not isinstance(test, unittest.TestCase):
            # a class or module fixture (an _ErrorHolder): "setUpClass (mod.Cls)"
            desc = str(test)
            self.events.emit(ev="fixture", id=desc, outcome=outcome,
                             reason=reason[:300], details=details[-DETAILS_LIMIT:])
            return
        cur = self.cur
        if cur["outcome"] is None or self.RANK[outcome] > self.RANK[cur["outcome"]]:
            cur["outcome"], cur["reason"], cur["details"] = outcome, reason, details
        elif self.RANK[outcome] == self.RANK[cur["outcome"]] and details:
            cur["details"] += "\n" + details

    def _exc(self, test, err, outcome):
        try:
            text = self._exc_info_to_string(err, test)
        except Exception:
            text = "".join(traceback.format_exception(*err))
        etype, value = err[0], err[1]
        line = f"{etype.__name__}: {value}".strip().splitlines()
        self._note(test, outcome, line[0] if line else etype.__name__, text)

    def addSuccess(self, test):
        self._note(test, "pass", "")

    def addFailure(self, test, err):
        self._exc(test, err, "fail")

    def addError(self, test, err):
        self._exc(test, err, "error")

    def addSkip(self, test, reason):
        self._note(test, "skip", str(reason))

    def addExpectedFailure(self, test, err):
        self._note(test, "pass", "expected failure")

    def addUnexpectedSuccess(self, test):
        self._note(test, "fail", "unexpected success")

    def addSubTest(self, test, subtest, err):
        if err is not None:
            outcome = "fail" if issubclass(err[0], test.failureException) else "error"
            self._exc(test, err, outcome)
            if self.cur is not None:
                self.cur["reason"] = f"{subtest._subDescription()} {self.cur['reason']}"


def child_main(suite, args):
    faulthandler.enable()
    events = _Events(args.progress)
    try:
        counters = suite.setup_child(args.mode)
        skip = set()
        if args.skip_file:
            with open(args.skip_file) as fp:
                skip = set(json.load(fp))
        only = None
        if args.only_file:
            with open(args.only_file) as fp:
                only = set(json.load(fp))
        not_run = []
        if args.not_run_file:
            with open(args.not_run_file) as fp:
                not_run = json.load(fp)
        modname = f"{suite.package}.{args.child}"
        try:
            loaded = unittest.defaultTestLoader.loadTestsFromName(modname)
        except unittest.SkipTest as exc:
            events.emit(ev="plan", ids=[])
            events.emit(ev="fixture", id=f"import ({modname})", outcome="skip",
                        reason=f"module skipped at import: {exc}", details="")
            events.emit(ev="done")
            os._exit(0)
        tests = [t for t in _flatten(loaded)]
        kept, plan, excluded = [], [], []
        for t in tests:
            if type(t).__name__ == "_FailedTest":
                # unittest's stand-in for a module that did not import: its
                # tests are missing from the plan and come out as not-run
                exc = getattr(t, "_exception", None)
                events.emit(ev="fixture", id=f"import ({modname})", outcome="error",
                            reason=f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                            details=str(exc)[-DETAILS_LIMIT:])
                continue
            tid = short_id(suite, t.id())
            if not suite.keep(tid):
                continue
            if not _matches(tid, args.patterns):
                continue
            plan.append(tid)
            if tid in skip or (only is not None and tid not in only):
                continue
            if any(tid == pat or fnmatch.fnmatchcase(tid, pat) for pat in not_run):
                excluded.append(tid)
                continue
            kept.append(t)
        events.emit(ev="plan", ids=plan)
        for tid in excluded:
            events.emit(ev="end", id=tid, outcome="excluded", duration=0.0, counters={},
                        reason="in the exclusion file: not run", details="")
        result = _ChildResult(suite, events, counters, args.timeout)
        unittest.TestSuite(kept).run(result)
    except BaseException:
        events.emit(ev="fixture", id=f"harness ({args.child})", outcome="error",
                    reason="harness: " + traceback.format_exc().strip().splitlines()[-1],
                    details=traceback.format_exc()[-DETAILS_LIMIT:])
    events.emit(ev="done")
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: threads or pools left behind must not turn a
    # finished module into a hang at exit.
    os._exit(0)


# --------------------------------------------------------------------------
# Parent: run units (mode, module) in children, with the watchdog
# --------------------------------------------------------------------------

def _child_env():
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) if p else os.getcwd()
            for p in env["PYTHONPATH"].split(os.pathsep))
    env.setdefault("PYTHONFAULTHANDLER", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _tail(path, limit=6000):
    try:
        with open(path, "rb") as fp:
            fp.seek(0, os.SEEK_END)
            size = fp.tell()
            fp.seek(max(0, size - limit))
            return fp.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _frame_short(frame):
    try:
        path, rest = frame.split('", line ', 1)
        lineno, _, func = rest.partition(" in ")
        name = os.path.basename(path.split('"', 1)[-1])
        return f"{name}:{lineno.strip()} {func.strip()}"
    except ValueError:
        return frame


class PrivateUses:
    """What a test's source does with private attributes, for the --scan-private listings.

    ``uses(cls, tree, seen)`` reports ``<expr>._name`` (a read; ``self``/``cls``/``super``
    do not count, so a test's own helpers do not), ``<expr>._name = ...`` (an assignment:
    a C type without __dict__ refuses it alone), and, with ``patches``,
    ``patch.object(X, '_name')``, ``patch('a.b._name')`` and ``patch('<patched_package>...')``.
    Helpers called as ``self.helper(...)`` are followed. Code of ``own_file`` (the harness's
    shims) is not CPython's and is skipped."""

    def __init__(self, own_file, patches=False, patched_package="asyncio."):
        self.own_file = os.path.abspath(own_file)
        self.patches = patches
        self.patched_package = patched_package
        self.cache = {}

    def func_ast(self, func):
        func = inspect.unwrap(getattr(func, "__func__", func))
        code = getattr(func, "__code__", None)
        if code is None or code.co_filename == self.own_file:
            return None
        if code not in self.cache:
            try:
                self.cache[code] = ast.parse(textwrap.dedent(inspect.getsource(func)))
            except (OSError, TypeError, SyntaxError):
                self.cache[code] = None
        return self.cache[code]

    @staticmethod
    def lookup(cls, name):
        for klass in cls.__mro__:
            if name in vars(klass):
                return vars(klass)[name]
        return None

    def uses(self, cls, tree, seen):
        found = set()
        if tree is None:
            return found
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                if (node.attr.startswith("_") and not node.attr.startswith("__")
                        and not (isinstance(node.value, ast.Name)
                                 and node.value.id in ("self", "cls", "super"))):
                    use = f"{ast.unparse(node.value)}.{node.attr}"
                    if isinstance(node.ctx, ast.Store):
                        use += " = ..."
                    found.add(use)
                if (isinstance(node.value, ast.Name) and node.value.id == "self"
                        and isinstance(node.ctx, ast.Load) and node.attr not in seen):
                    seen.add(node.attr)
                    helper = self.lookup(cls, node.attr)
                    if inspect.isfunction(getattr(helper, "__func__", helper)):
                        found |= self.uses(cls, self.func_ast(helper), seen)
            elif self.patches and isinstance(node, ast.Call):
                fn = ast.unparse(node.func)
                if fn.endswith("patch.object") and len(node.args) >= 2:
                    a = node.args[1]
                    if isinstance(a, ast.Constant) and str(a.value).startswith("_"):
                        found.add(f"patch.object({ast.unparse(node.args[0])}, {a.value!r})")
                elif fn.endswith("patch") and node.args:
                    a = node.args[0]
                    if isinstance(a, ast.Constant) and isinstance(a.value, str) and (
                            a.value.rsplit(".", 1)[-1].startswith("_")
                            or a.value.startswith(self.patched_package)):
                        found.add(f"patch({a.value!r})")
        return found


def hang_site(text, package_dir):
    """From faulthandler's dump: ' in <innermost test-package frame> (innermost: ...)'."""
    lines = text.splitlines()
    # only the last dump
    starts = [i for i, l in enumerate(lines) if l.startswith("Timeout (")]
    if starts:
        lines = lines[starts[-1]:]
    threads = []
    for i, line in enumerate(lines):
        if "most recent call first" not in line:
            continue
        frames = []
        for frame in lines[i + 1:]:
            frame = frame.strip()
            if not frame.startswith("File "):
                break
            frames.append(frame)
        if frames:
            threads.append((line, frames))
    # the main thread runs unittest: prefer it
    threads.sort(key=lambda tf: not any("unittest" in f for f in tf[1]))
    for _, frames in threads:
        tests = [f for f in frames if package_dir in f]
        if tests:
            site = " in " + _frame_short(tests[0])
            if frames[0] != tests[0]:
                site += f" (innermost: {_frame_short(frames[0])})"
            return site
    if threads:     # no frame of the test package: where the main thread was
        return f" in {_frame_short(threads[0][1][0])}"
    return ""


class _Unit:
    """One child process run of (mode, module)."""

    def __init__(self, mode, module, attempt, only=None):
        self.mode, self.module, self.attempt, self.only = mode, module, attempt, only
        self.proc = None
        self.offset = 0
        self.partial = b""
        self.current = None      # id of the running test
        self.last_event = 0.0
        self.done = False


class ModuleRecord:
    """All we learned about one (mode, module) across the child's restarts."""

    def __init__(self):
        self.plan = None
        self.results = {}        # id -> result dict
        self.fixtures = []       # fixture events
        self.restarts = 0
        self.wall = 0.0
        self.log_tails = []


def run_units(suite, args, jobs, units, progress_cb, package_dir, tmproot, not_run=(),
              records=None):
    """Run the given (mode, module, only) units; returns {(mode, module): ModuleRecord}.

    Tests matching a pattern of not_run are not run in the braid run (the exclusions)."""
    env = _child_env()
    not_run_file = None
    if not_run:
        not_run_file = os.path.join(tmproot, f"not-run-{time.monotonic_ns()}.json")
        with open(not_run_file, "w") as fp:
            json.dump(list(not_run), fp)
    script = os.path.abspath(sys.argv[0])
    records = {} if records is None else records    # filled in place: kept on Ctrl-C
    pending = [_Unit(m, mod, 0, only) for m, mod, only in units]
    running = []

    def start(unit):
        rec = records.setdefault((unit.mode, unit.module), ModuleRecord())
        wd = tempfile.mkdtemp(prefix=f"{unit.mode}-{unit.module}-", dir=tmproot)
        unit.workdir = wd
        unit.progress = os.path.join(wd, "progress.jsonl")
        unit.log = os.path.join(tmproot, os.path.basename(wd) + ".log")
        cmd = [sys.executable, script, "--child", unit.module, "--mode", unit.mode,
               "--progress", unit.progress, "--timeout", str(args.timeout)]
        for pat in args.patterns:
            cmd += ["-k", pat]
        skip = sorted(rec.results) if unit.attempt else []
        if skip:
            path = os.path.join(wd, "skip.json")
            with open(path, "w") as fp:
                json.dump(skip, fp)
            cmd += ["--skip-file", path]
        if unit.mode == "braid" and not_run_file:
            cmd += ["--not-run-file", not_run_file]
        if unit.only is not None:
            path = os.path.join(wd, "only.json")
            with open(path, "w") as fp:
                json.dump(sorted(unit.only), fp)
            cmd += ["--only-file", path]
        with open(unit.log, "wb") as log:
            unit.proc = subprocess.Popen(cmd, cwd=wd, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        unit.t0 = unit.last_event = time.monotonic()
        running.append(unit)

    def read_events(unit):
        rec = records[(unit.mode, unit.module)]
        try:
            with open(unit.progress, "rb") as fp:
                fp.seek(unit.offset)
                data = fp.read()
        except OSError:
            return
        if not data:
            return
        unit.offset += len(data)
        data = unit.partial + data
        lines = data.split(b"\n")
        unit.partial = lines.pop()
        for raw in lines:
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            unit.last_event = time.monotonic()
            kind = ev.pop("ev")
            if kind == "plan":
                if rec.plan is None:
                    rec.plan = ev["ids"]
            elif kind == "start":
                unit.current = ev["id"]
            elif kind == "end":
                unit.current = None
                tid = ev.pop("id")
                rec.results[tid] = ev
                progress_cb(unit.mode, unit.module, tid, ev)
            elif kind == "fixture":
                rec.fixtures.append(ev)
            elif kind == "done":
                unit.done = True

    def finish(unit, killed_reason=None):
        read_events(unit)
        rec = records[(unit.mode, unit.module)]
        rec.wall += time.monotonic() - unit.t0
        log = _tail(unit.log, 40000)
        restart = False
        if unit.current is not None:
            tid = unit.current
            if killed_reason:
                res = {"outcome": "timeout", "reason": killed_reason + hang_site(log, package_dir)}
            else:
                rc = unit.proc.returncode
                why = (f"child killed by {signal.Signals(-rc).name}" if rc is not None and rc < 0
                       else f"child exited with status {rc}")
                fatal = [l.strip() for l in log.splitlines() if l.startswith("Fatal Python error")]
                if fatal:
                    why += f" ({fatal[-1][:150]})"
                res = {"outcome": "crash", "reason": why + hang_site(log, package_dir)}
            res.update(details=log[-DETAILS_LIMIT:], counters={},
                       duration=round(time.monotonic() - unit.last_event, 3))
            rec.results[tid] = res
            progress_cb(unit.mode, unit.module, tid, res)
            restart = True
        elif not unit.done:
            # died or hung outside a test: in a fixture, or at import
            what = killed_reason or f"child ended (status {unit.proc.returncode}) outside a test"
            rec.fixtures.append({"id": f"outside any test ({unit.module})", "outcome": "error",
                                 "reason": what + hang_site(log, package_dir),
                                 "details": log[-DETAILS_LIMIT:]})
            if rec.plan and any(t not in rec.results for t in rec.plan) and unit.attempt < 3 \
                    and unit.only is None:
                # a fixture hung between tests: try the rest once more
                restart = True
        if not unit.done or unit.current is not None:
            rec.log_tails.append(log[-2000:])
        shutil.rmtree(unit.workdir, ignore_errors=True)
        try:
            os.unlink(unit.log)
        except OSError:
            pass
        if restart and rec.plan is not None:
            remaining = [t for t in rec.plan if t not in rec.results
                         and (unit.only is None or t in unit.only)]
            if remaining:
                rec.restarts += 1
                nxt = _Unit(unit.mode, unit.module, unit.attempt + 1, unit.only)
                pending.insert(0, nxt)

    try:
        while pending or running:
            while pending and len(running) < jobs:
                start(pending.pop(0))
            time.sleep(0.05)
            now = time.monotonic()
            for unit in list(running):
                read_events(unit)
                rec = records[(unit.mode, unit.module)]
                if (unit.only is not None and rec.plan is not None and unit.current is None
                        and all(t in rec.results for t in rec.plan if t in unit.only)):
                    # a re-run: its tests have their outcomes; the module's fixtures
                    # were judged in the main run
                    unit.done = True
                    _kill_group(unit.proc)
                    running.remove(unit)
                    finish(unit)
                    continue
                if unit.proc.poll() is not None:
                    _kill_group(unit.proc)   # anything it left in its group
                    running.remove(unit)
                    finish(unit)
                    continue
                idle = now - unit.last_event
                if idle > args.timeout:
                    _kill_group(unit.proc)
                    running.remove(unit)
                    finish(unit, f"killed after {args.timeout:g} s"
                           + ("" if unit.current else " (outside any test)"))
    except KeyboardInterrupt:
        for unit in running:
            _kill_group(unit.proc)
        raise
    return records


# --------------------------------------------------------------------------
# Turning records into per-test outcomes
# --------------------------------------------------------------------------

def resolve_outcomes(rec, package):
    """{test id: result} for every planned test, 'not-run' ones included."""
    out = dict(rec.results)
    plan = rec.plan or []
    for tid in plan:
        if tid in out:
            continue
        # a fixture that covers this test: "setUpClass (test.pkg.mod.Cls)"
        reason, outcome = "never started", "not-run"
        for fx in rec.fixtures:
            scope = fx["id"].rpartition("(")[2].rstrip(")")
            if scope.startswith(package + "."):
                scope = scope[len(package) + 1:]
            if tid.startswith(scope + "."):
                reason = f"{fx['id']}: {fx['reason']}"
                outcome = "skip" if fx["outcome"] == "skip" else "not-run"
                break
        out[tid] = {"outcome": outcome, "reason": reason, "details": "", "counters": {}}
    return out


def fixture_entries(rec, module):
    """Fixture errors as pseudo-tests (skips are not entries)."""
    out = {}
    for fx in rec.fixtures:
        if fx["outcome"] == "skip":
            continue
        out[f"{module}.<fixture> {fx['id']}"] = {
            "outcome": fx["outcome"], "reason": fx["reason"], "details": fx.get("details", ""),
            "counters": {}}
    return out


def load_exclusions(path):
    entries = []
    if not path or not os.path.exists(path):
        return entries
    with open(path) as fp:
        for lineno, raw in enumerate(fp, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 1)
            reason = parts[1].strip() if len(parts) > 1 else ""
            if not reason:
                sys.exit(f"{path}:{lineno}: an exclusion needs a reason: {raw.strip()!r}")
            entries.append((parts[0], reason))
    return entries


def excluded_reason(tid, exclusions):
    for pat, reason in exclusions:
        if tid == pat or fnmatch.fnmatchcase(tid, pat):
            return pat, reason
    return None, None


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def parse_args(suite, argv):
    p = argparse.ArgumentParser(
        description=suite.description
        or f"Run {suite.package} on the stdlib and on braid, compare.",
        epilog="docs/CONFORMANCE.md describes the suites, their exclusions and figures.")
    p.add_argument("--jobs", "-j", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                   help="child processes at once (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds a test may run (or a fixture stay silent) before its "
                        "child is killed (default: %(default)s)")
    p.add_argument("--modes", default="stdlib,braid",
                   help="runs to make: stdlib,braid (default) or one of them")
    p.add_argument("--module", "-m", dest="modules", action="append", default=[],
                   help="only this test module (e.g. test_tasks); repeatable")
    p.add_argument("-k", dest="patterns", action="append", default=[],
                   help="only tests whose id contains this text or matches this fnmatch "
                        "pattern (the whole module still starts); repeatable")
    p.add_argument("--rerun", type=int, default=1,
                   help="times a regression is run again alone before it counts "
                        "(default: %(default)s; 0: never)")
    p.add_argument("--exclude", default=suite.exclude_file,
                   help="exclusion file (default: %(default)s)")
    p.add_argument("--no-exclude", action="store_true", help="ignore the exclusion file")
    p.add_argument("--run-excluded", action="store_true",
                   help="run the excluded tests too in the braid run (to see which still fail); "
                        "by default they are not run")
    p.add_argument("--json", metavar="FILE", help="write the full results as JSON")
    p.add_argument("--markdown", metavar="FILE",
                   help="write the per-module table as Markdown (for docs/CONFORMANCE.md)")
    p.add_argument("--list", action="store_true", help="list the modules and exit")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-test progress lines")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="print every test as it ends (default: only the non-passing ones)")
    suite.add_arguments(p)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--progress", help=argparse.SUPPRESS)
    p.add_argument("--skip-file", help=argparse.SUPPRESS)
    p.add_argument("--only-file", help=argparse.SUPPRESS)
    p.add_argument("--not-run-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}")
    return args


def _matches(tid, patterns):
    if not patterns:
        return True
    for pat in patterns:
        if any(c in pat for c in "*?["):
            if fnmatch.fnmatchcase(tid, "*" + pat + "*"):
                return True
        elif pat in tid:
            return True
    return False


def main(suite, argv=None):
    args = parse_args(suite, sys.argv[1:] if argv is None else argv)
    suite.configure(args)
    if args.child:
        child_main(suite, args)
        return 0

    modules = suite.modules()
    if args.modules:
        unknown = [m for m in args.modules if m not in modules]
        if unknown:
            print(f"unknown module(s) {unknown}; modules: {' '.join(modules)}", file=sys.stderr)
            return 2
        modules = [m for m in modules if m in args.modules]
    if args.list:
        for m in modules:
            print(m)
        return 0
    modules.sort(key=suite.module_weight, reverse=True)
    package_dir = os.path.dirname(importlib.import_module(suite.package).__file__)
    exclusions = [] if args.no_exclude else load_exclusions(args.exclude)
    # Known differences (open work, each with its reason) still run with braid, so a fix shows
    # up as "not failing with braid"; a failure among them does not fail the gate.
    not_run_patterns = [pat for pat, _ in exclusions]
    if not args.no_exclude:
        exclusions += [(pat, f"known difference, run and not gated: {why}")
                       for pat, why in load_exclusions(suite.known_file)]

    print(f"python   {sys.version.split()[0]} ({sys.executable})")
    print(f"suite    {suite.package}: {len(modules)} modules, runs: {', '.join(args.modes)}, "
          f"jobs {args.jobs}, per-test timeout {args.timeout:g} s")
    for mode in args.modes:
        for n in suite.notes(mode):
            print(f"note     [{mode}] {n}")
    sys.stdout.flush()

    def progress(mode, module, tid, res):
        if args.quiet:
            return
        if res["outcome"] in ("pass", "skip", "excluded") and not args.verbose:
            return
        extra = f"  {res.get('reason', '')[:140]}" if res["outcome"] != "pass" else ""
        print(f"[{mode:6}] {res['outcome']:7} {res.get('duration', 0):6.1f}s {tid}{extra}",
              flush=True)

    tmproot = tempfile.mkdtemp(prefix=f"braid-{suite.name}-suite-")
    t0 = time.monotonic()
    interrupted = False
    old_term = signal.signal(signal.SIGTERM, _on_term)
    records, reruns = {}, {}
    try:
        units = [(mode, mod, None) for mod in modules for mode in args.modes]
        not_run = [] if args.run_excluded else not_run_patterns
        run_units(suite, args, args.jobs, units, progress, package_dir, tmproot, not_run,
                  records)
        wall_runs = time.monotonic() - t0
        # re-run the regressions alone
        if "stdlib" in args.modes and "braid" in args.modes and args.rerun > 0:
            for attempt in range(args.rerun):
                todo = {}
                for mod in modules:
                    base = _module_outcomes(records, "stdlib", mod, suite.package)
                    mine = _module_outcomes(records, "braid", mod, suite.package)
                    for tid, res in mine.items():
                        if "<fixture>" in tid:
                            continue
                        b = base.get(tid)
                        if (b and b["outcome"] in PASSING and res["outcome"] in BAD
                                and reruns.get(tid, {}).get("outcome") != "pass"):
                            todo.setdefault(mod, set()).add(tid)
                if not todo:
                    break
                if not args.quiet:
                    n = sum(len(v) for v in todo.values())
                    print(f"re-running {n} regression(s) alone with braid "
                          f"(attempt {attempt + 1} of {args.rerun})", flush=True)
                rr = run_units(suite, args, args.jobs,
                               [("braid", mod, ids) for mod, ids in todo.items()],
                               progress, package_dir, tmproot)
                for (mode, mod), rec in rr.items():
                    for tid, res in resolve_outcomes(rec, suite.package).items():
                        if tid in todo.get(mod, ()):
                            reruns.setdefault(tid, {"outcome": None, "attempts": []})
                            reruns[tid]["attempts"].append(res["outcome"])
                            if res["outcome"] == "pass":
                                reruns[tid]["outcome"] = "pass"
    except KeyboardInterrupt:
        interrupted = True
        wall_runs = time.monotonic() - t0
    finally:
        signal.signal(signal.SIGTERM, old_term)
        shutil.rmtree(tmproot, ignore_errors=True)
    wall = time.monotonic() - t0

    report = build_report(suite, args, modules, records, reruns, exclusions)
    report["wall_time_s"] = round(wall, 1)
    report["wall_time_runs_s"] = round(wall_runs, 1)
    report["interrupted"] = interrupted
    if interrupted:
        report["gate"]["failed"] = True
    print_report(suite, args, report)

    if args.json:
        with open(args.json, "w") as fp:
            json.dump(report, fp, indent=1)
        print(f"\njson written to {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as fp:
            fp.write(markdown_table(report))
        print(f"markdown table written to {args.markdown}")
    if interrupted:
        return 130
    if report["gate"]["failed"]:
        return 1
    return 0


def _on_term(signum, frame):
    raise KeyboardInterrupt


def _module_outcomes(records, mode, module, package):
    rec = records.get((mode, module))
    if rec is None:
        return {}
    out = resolve_outcomes(rec, package)
    out.update(fixture_entries(rec, module))
    return out


def build_report(suite, args, modules, records, reruns, exclusions):
    both = "stdlib" in args.modes and "braid" in args.modes
    table, tests = [], {}
    regressions, flaky, excluded_hits, only_braid_skips = [], [], [], []
    used_patterns = set()
    totals = {k: 0 for k in ("tests", "pass_stdlib", "pass_braid", "on_braid", "regressions",
                             "excluded", "flaky", "skip_stdlib", "skip_braid", "fail_both")}
    for mod in sorted(modules):
        base = _module_outcomes(records, "stdlib", mod, suite.package)
        mine = _module_outcomes(records, "braid", mod, suite.package)
        ids = list(dict.fromkeys(list(base) + list(mine)))
        row = {"module": mod, "tests": 0, "pass_stdlib": 0, "pass_braid": 0, "on_braid": 0,
               "skip_stdlib": 0, "skip_braid": 0, "regressions": 0, "excluded": 0,
               "flaky": 0, "fail_both": 0,
               "wall_stdlib_s": round(getattr(records.get(("stdlib", mod)), "wall", 0.0), 1),
               "wall_braid_s": round(getattr(records.get(("braid", mod)), "wall", 0.0), 1),
               "restarts": sum(getattr(records.get((m, mod)), "restarts", 0) for m in MODES)}
        skips = [f for m in MODES for f in getattr(records.get((m, mod)), "fixtures", [])
                 if f["id"].startswith("import (")]
        if skips:
            row["note"] = skips[0]["reason"]
        for tid in ids:
            b, r = base.get(tid), mine.get(tid)
            fixture = "<fixture>" in tid
            if not fixture:
                row["tests"] += 1
            entry = {}
            if b is not None:
                entry["stdlib"] = _slim(b)
                if b["outcome"] == "pass":
                    row["pass_stdlib"] += 1
                elif b["outcome"] == "skip":
                    row["skip_stdlib"] += 1
            if r is not None:
                entry["braid"] = _slim(r)
                if r["outcome"] == "pass":
                    row["pass_braid"] += 1
                elif r["outcome"] == "skip":
                    row["skip_braid"] += 1
                if r.get("counters", {}).get("braid"):
                    row["on_braid"] += 1
            if tid in reruns:
                entry["rerun"] = reruns[tid]
            if both:
                # a fixture error that only braid has counts as a regression too
                b_ok = (b["outcome"] in PASSING) if b is not None else (fixture and r is not None)
                r_out = r["outcome"] if r is not None else "not-run"
                pat, why = excluded_reason(tid, exclusions)
                if pat:
                    used_patterns.add(pat)
                if r_out == "excluded" or (pat and b_ok and r_out in BAD):
                    row["excluded"] += 1
                    excluded_hits.append({"id": tid, "reason": why,
                                          "braid": _slim(r) if r_out != "excluded"
                                          else {"outcome": "not run"}})
                    entry["verdict"] = "excluded"
                elif b_ok and r_out in BAD:
                    if reruns.get(tid, {}).get("outcome") == "pass":
                        row["flaky"] += 1
                        flaky.append({"id": tid, "braid": _slim(r), "rerun": reruns[tid]})
                        entry["verdict"] = "flaky"
                    else:
                        row["regressions"] += 1
                        missing = "no result"
                        fx = [f for f in getattr(records.get(("braid", mod)), "fixtures", [])
                              if f["outcome"] != "skip"]
                        if r is None and fx:
                            missing = f"not in the braid run: {fx[0]['id']}: {fx[0]['reason']}"
                        regressions.append({"id": tid, "outcome": r_out,
                                            "reason": (r or {}).get("reason", missing),
                                            "details": (r or {}).get("details", "")[-3000:],
                                            "rerun": reruns.get(tid)})
                        entry["verdict"] = "regression"
                elif b is not None and b["outcome"] in BAD and r_out in BAD:
                    row["fail_both"] += 1
                    entry["verdict"] = "fails on both"
                elif b_ok and r_out == "skip":
                    only_braid_skips.append({"id": tid, "reason": r.get("reason", "")})
                    entry["verdict"] = "skipped with braid only"
                if pat and entry.get("verdict") != "excluded":
                    entry["excluded_but"] = "passes with braid" if r_out == "pass" else r_out
            tests[tid] = entry
        table.append(row)
        for k in totals:
            totals[k] += row[k]
    stale = [] if (args.modules or args.patterns) else [
        pat for pat, _ in exclusions if pat not in used_patterns
        and not any(fnmatch.fnmatchcase(t, pat) or t == pat for t in tests)]
    excluded_passing = [{"id": t, "now": e["excluded_but"]} for t, e in tests.items()
                        if "excluded_but" in e]
    return {
        "suite": suite.package,
        "python": sys.version,
        "executable": sys.executable,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "options": {"jobs": args.jobs, "timeout": args.timeout, "modes": args.modes,
                    "modules": args.modules, "patterns": args.patterns, "rerun": args.rerun,
                    "exclude_file": None if args.no_exclude else args.exclude},
        "notes": {m: suite.notes(m) for m in args.modes},
        "counter_label": suite.counter_label,
        "modules": table,
        "totals": totals,
        "regressions": regressions,
        "flaky": flaky,
        "excluded": excluded_hits,
        "excluded_not_failing": excluded_passing,
        "skipped_with_braid_only": only_braid_skips,
        "stale_exclusions": stale,
        "gate": {"checked": both, "failed": bool(both and regressions)},
        "tests": tests,
    }


def _slim(res):
    out = {k: res[k] for k in ("outcome", "reason", "duration", "counters") if k in res}
    if res.get("outcome") in BAD and res.get("details"):
        out["details"] = res["details"][-DETAILS_LIMIT:]
    return out


def markdown_table(rep):
    """The per-module table of a report, in Markdown."""
    label = rep["counter_label"]
    lines = [f"| module | tests | passed, stdlib | passed, braid | {label} | regressions | "
             "excluded | flaky | s stdlib | s braid |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rep["modules"] + [dict(rep["totals"], module="**total**")]:
        note = f" ({row['note']})" if row.get("note") else ""
        lines.append(
            f"| `{row['module']}`{note} | {row['tests']} | {row['pass_stdlib']} | "
            f"{row['pass_braid']} | {row['on_braid']} | {row['regressions']} | "
            f"{row['excluded']} | {row['flaky']} | {row.get('wall_stdlib_s', '')} | "
            f"{row.get('wall_braid_s', '')} |".replace("`**total**`", "**total**"))
    return "\n".join(lines) + "\n"


def print_report(suite, args, rep):
    print()
    print("=" * 100)
    if rep.get("interrupted"):
        print("INTERRUPTED: the figures below cover what finished")
    print(f"{suite.package} on Python {sys.version.split()[0]}: stdlib vs braid "
          f"({rep['wall_time_s']:.0f} s wall, {args.jobs} jobs)")
    hdr = (f"{'module':28} {'tests':>6} {'pass stdlib':>11} {'pass braid':>10} "
           f"{suite.counter_label:>14} {'regress.':>8} {'excl.':>5} {'flaky':>5} "
           f"{'s stdlib':>8} {'s braid':>8}")
    print(hdr)
    print("-" * len(hdr))
    for row in rep["modules"] + [dict(rep["totals"], module="total")]:
        print(f"{row['module']:28} {row['tests']:6} {row['pass_stdlib']:11} {row['pass_braid']:10} "
              f"{row['on_braid']:14} {row['regressions']:8} {row['excluded']:5} {row['flaky']:5} "
              f"{row.get('wall_stdlib_s', ''):>8} {row.get('wall_braid_s', ''):>8}"
              + (f"  ({row['note']})" if row.get("note") else ""))
    if rep["flaky"]:
        print(f"\nflaky with braid: failed in the run, passed alone ({len(rep['flaky'])}):")
        for f in rep["flaky"]:
            print(f"  {f['id']}: {f['braid'].get('outcome')}: {f['braid'].get('reason', '')[:150]}")
    if rep["excluded"]:
        print(f"\nexcluded ({len(rep['excluded'])}; braid outcome, reason):")
        for e in rep["excluded"]:
            print(f"  {e['id']}: {e['braid'].get('outcome')}  [{e['reason'][:120]}]")
    if rep["excluded_not_failing"]:
        print(f"\nexcluded but not failing with braid ({len(rep['excluded_not_failing'])}):")
        for e in rep["excluded_not_failing"]:
            print(f"  {e['id']}: {e['now']}")
    if rep["skipped_with_braid_only"]:
        n = len(rep["skipped_with_braid_only"])
        print(f"\npassed on the stdlib, skipped with braid ({n}):")
        for e in rep["skipped_with_braid_only"]:
            print(f"  {e['id']}: {e['reason'][:150]}")
    for pat in rep["stale_exclusions"]:
        print(f"warning: exclusion {pat!r} matches no test in this Python")
    if rep["regressions"]:
        print(f"\nREGRESSIONS: passed on the stdlib, not with braid ({len(rep['regressions'])}):")
        for r in rep["regressions"]:
            print(f"  {r['outcome']:7} {r['id']}: {r['reason'][:160]}")
    if rep.get("interrupted"):
        print("\ngate: not decided (interrupted)")
    elif rep["gate"]["checked"]:
        print(f"\ngate: {'FAILED' if rep['gate']['failed'] else 'passed'} "
              f"({len(rep['regressions'])} regressions, {len(rep['excluded'])} excluded, "
              f"{len(rep['flaky'])} flaky)")
