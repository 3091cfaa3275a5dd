#!/usr/bin/env python3
"""Run CPython's own event loop test mixins against any asyncio event loop.

This is the conformance harness of issue 3 ("braid.Loop ... passes CPython's own
loop tests", section "Conformance").  It takes the loop test mixins that CPython
ships in the running interpreter's ``test.test_asyncio`` package and combines
each with ``test_utils.TestCase`` and a ``create_event_loop()`` that returns a
loop from the factory named on the command line -- the same combination CPython
builds for its own loops (``EPollEventLoopTests`` and friends), only with the
loop swapped:

    ===================  =========================================  ==========================
    source module        mixin(s)                                   our class
    ===================  =========================================  ==========================
    test_events          UnixEventLoopTestsMixin (POSIX, when the   EventLoopTests
                         version has it; else EventLoopTestsMixin)
                         + SubprocessTestsMixin
    test_sock_lowlevel   BaseSockTestsMixin                         SockTests
    test_sendfile        SendfileTestsBase                          SendfileTests
    ===================  =========================================  ==========================

Test ids look like ``test_events.EventLoopTests.test_create_server``.

Usage (from the repository root)::

    python tests/conformance/cpython_loop_tests.py --loop asyncio:new_event_loop
    python tests/conformance/cpython_loop_tests.py --loop braid:Loop --jobs 2 --json out.json
    python tests/conformance/cpython_loop_tests.py --loop braid:Loop -k sendfile -k sock_recv
    python tests/conformance/cpython_loop_tests.py --loop braid:Loop --list
    python tests/conformance/cpython_loop_tests.py --scan-private   # tests that read privates

``--loop`` is ``module:callable``; the callable is called with no arguments and
must return a new, not yet running event loop (a class such as ``braid:Loop``
works).  The interpreter that runs this script is the one whose tests and whose
asyncio are used, so run it with the Python you want to measure (e.g.
``~/.pyenv/versions/3.12.1/bin/python ...``).

The harness process itself never imports the loop's module nor creates a
loop: one probe child checks the factory (and reports the loop's type), then
every test runs in its own child process (this script with ``--child``) with a
timeout (default 60 s), at most ``--jobs`` at a time, in a fresh temporary
working directory (the sendfile tests write ``os_helper.TESTFN`` into the
current directory).  Each child is the leader of its own process group, so a
child that hangs is killed together with anything it spawned; Ctrl-C (or
SIGTERM) kills all children and still prints the summary of what finished.

Outcomes: ``pass`` (incl. expected failures), ``fail`` (an assertion or an
unexpected success), ``error`` (any other exception, incl. in setUp, tearDown,
cleanups or class fixtures), ``skip``, ``timeout`` (killed at the deadline),
``crash`` (the child died without reporting, e.g. a segfault).
pass rate = passed / (total - skipped); excluded tests are neither run nor
counted.

Exclusions: ``tests/conformance/excluded.txt`` (or ``--exclude FILE``), one
test id (fnmatch patterns allowed) followed by its reason per line, ``#``
starts a comment.  Issue 3 allows excluding only tests that read private
attributes of asyncio's own loop; ``--scan-private`` lists the candidates.

Harness shim (documented in docs/CONFORMANCE.md): CPython's
``test_utils.TestCase.close_loop`` reads ``loop._default_executor``, a private
attribute of ``BaseEventLoop``, in the cleanup of *every* test.  For a loop
without that attribute the harness closes the loop through the public API
instead (``shutdown_default_executor()`` then ``close()``) and runs the rest of
CPython's ``close_loop`` (waiting for child-watcher threads) unchanged.  Loops
that have the attribute (asyncio's own) go through CPython's code untouched.
``--pristine`` turns the shim off.

Exit status: 0 when the run completed (and the pass rate is at least
``--min-pass-rate`` when given), 1 otherwise, 2 for usage errors, 130 after
Ctrl-C.
"""

import argparse
import datetime
import fnmatch
import importlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the children's environment, log tails, killing a child's group, the exclusion
# files and the private-attribute scan are shared with the whole-package suites
from _cpython_suite import PrivateUses, _child_env, _kill_group, _tail, load_exclusions  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_EXCLUDE = os.path.join(HERE, "excluded.txt")

OUTCOMES = ("pass", "fail", "error", "skip", "timeout", "crash")


# --------------------------------------------------------------------------
# Building the test classes
# --------------------------------------------------------------------------

def resolve_factory(spec):
    """Return the callable named by 'module:callable' (dots allowed after ':')."""
    if ":" not in spec:
        raise ValueError(f"--loop must be 'module:callable', got {spec!r}")
    modname, _, attr = spec.partition(":")
    obj = importlib.import_module(modname)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{spec} is not callable")
    return obj


def _make_close_loop(original):
    """close_loop that avoids loop._default_executor on loops lacking it.

    CPython's TestCase.close_loop (test/test_asyncio/utils.py) starts with
    ``if loop._default_executor is not None: ...``; that is a private attribute
    of asyncio.BaseEventLoop, so any other loop would fail the cleanup of every
    single test.  We do the same thing through the public API and then hand
    the rest of CPython's close_loop (the child-watcher thread join) a stub that
    looks like a loop with no executor.
    """
    class _ClosedLoopStub:
        _default_executor = None

        def close(self):
            pass

    def close_loop(loop):
        if hasattr(loop, "_default_executor"):
            return original(loop)
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        return original(_ClosedLoopStub())

    return staticmethod(close_loop)


def import_sources():
    """Import the CPython test modules; returns {short name: module or SkipTest}."""
    mods = {}
    for short in ("test_events", "test_sock_lowlevel", "test_sendfile"):
        try:
            mods[short] = importlib.import_module("test.test_asyncio." + short)
        except unittest.SkipTest as exc:       # e.g. no working socket
            mods[short] = exc
    return mods


def build_classes(factory, *, child_watcher=True, pristine=False):
    """Return ({short module: {class name: TestCase class}}, notes).

    The mixins are looked up by name and their presence is detected, so the
    same code serves 3.11, 3.12, 3.13 and later versions where, e.g., the
    child watchers (and with them UnixEventLoopTestsMixin) are gone.
    """
    mods = import_sources()
    from test.test_asyncio import utils as test_utils

    base_case = test_utils.TestCase
    notes = []
    if not pristine and hasattr(base_case, "close_loop"):
        base_case = type("TestCase", (test_utils.TestCase,), {
            "close_loop": _make_close_loop(test_utils.TestCase.close_loop),
            "__module__": test_utils.__name__,
        })
        notes.append("close_loop shim installed (used only if the loop lacks _default_executor)")

    def create_event_loop(self):
        return factory()

    plan = []   # (short module, our class name, [mixin names, first found wins per slot])
    events_mixins = []
    if os.name == "posix" and child_watcher:
        events_mixins.append(("UnixEventLoopTestsMixin", "EventLoopTestsMixin"))
    else:
        events_mixins.append(("EventLoopTestsMixin",))
    events_mixins.append(("SubprocessTestsMixin",))
    plan.append(("test_events", "EventLoopTests", events_mixins))
    plan.append(("test_sock_lowlevel", "SockTests", [("BaseSockTestsMixin",)]))
    plan.append(("test_sendfile", "SendfileTests", [("SendfileTestsBase",)]))

    classes = {}
    for short, clsname, slots in plan:
        mod = mods[short]
        if isinstance(mod, unittest.SkipTest):
            classes[short] = mod
            continue
        bases = []
        for alternatives in slots:
            for name in alternatives:
                mixin = getattr(mod, name, None)
                if mixin is not None:
                    bases.append(mixin)
                    break
            else:
                notes.append(f"{short}: none of {alternatives} exists in this Python")
        if not bases:
            continue
        names = "+".join(b.__name__ for b in bases)
        notes.append(f"{short}.{clsname} = {names} + TestCase")
        cls = type(clsname, tuple(bases) + (base_case,), {
            "create_event_loop": create_event_loop,
            # unittest finds setUpModule/tearDownModule through __module__, so
            # CPython's module fixtures run exactly as they do for its classes.
            "__module__": mod.__name__,
            "__qualname__": clsname,
        })
        classes[short] = {clsname: cls}
    return classes, notes


def list_tests(classes):
    """Return (test ids, {id: skip reason} for modules that skip at import)."""
    loader = unittest.TestLoader()
    ids, module_skips = [], {}
    for short, entry in classes.items():
        if isinstance(entry, unittest.SkipTest):
            module_skips[f"{short}.*"] = f"module skipped at import: {entry}"
            continue
        for clsname, cls in entry.items():
            for meth in loader.getTestCaseNames(cls):
                ids.append(f"{short}.{clsname}.{meth}")
    return ids, module_skips


def matches_k(test_id, patterns):
    if not patterns:
        return True
    for pat in patterns:
        if any(c in pat for c in "*?["):
            if fnmatch.fnmatchcase(test_id, "*" + pat + "*"):
                return True
        elif pat in test_id:
            return True
    return False


# --------------------------------------------------------------------------
# Child: run one test, write the outcome as JSON
# --------------------------------------------------------------------------

class _OneResult(unittest.TestResult):
    """Collects what happened to one test; the worst event wins."""

    RANK = {"pass": 0, "skip": 1, "fail": 2, "error": 3}

    def __init__(self):
        super().__init__()
        self.outcome = None
        self.reason = ""
        self.details = ""

    def _note(self, outcome, reason, details=""):
        if self.outcome is None or self.RANK[outcome] > self.RANK[self.outcome]:
            self.outcome, self.reason, self.details = outcome, reason, details
        elif self.RANK[outcome] == self.RANK[self.outcome] and details:
            self.details += "\n" + details

    def _exc(self, test, err, outcome):
        text = self._exc_info_to_string(err, test)
        where = "" if isinstance(test, unittest.TestCase) else f"[{test}] "
        etype, value = err[0], err[1]
        line = f"{etype.__name__}: {value}".strip().splitlines()
        self._note(outcome, where + (line[0] if line else etype.__name__), text)

    def addSuccess(self, test):
        self._note("pass", "")

    def addFailure(self, test, err):
        self._exc(test, err, "fail")

    def addError(self, test, err):
        # setUpClass/tearDownModule errors arrive with an _ErrorHolder; a
        # SkipTest raised there arrives through addSkip instead.
        self._exc(test, err, "error")

    def addSkip(self, test, reason):
        self._note("skip", str(reason))

    def addExpectedFailure(self, test, err):
        self._note("pass", "expected failure")

    def addUnexpectedSuccess(self, test):
        self._note("fail", "unexpected success")

    def addSubTest(self, test, subtest, err):
        if err is not None:
            outcome = "fail" if issubclass(err[0], test.failureException) else "error"
            self._exc(subtest, err, outcome)


def child_main(args):
    import faulthandler
    # Dump every thread's stack shortly before the parent's deadline so a
    # timeout comes with the place where the test hung (in the stderr tail).
    faulthandler.enable()
    if args.timeout and args.timeout > 5:
        faulthandler.dump_traceback_later(args.timeout - 2, exit=False)
    t0 = time.monotonic()
    result = _OneResult()
    try:
        factory = resolve_factory(args.loop)
        classes, _ = build_classes(factory, child_watcher=not args.no_child_watcher,
                                   pristine=args.pristine)
        short, clsname, meth = args.child.split(".", 2)
        entry = classes[short]
        if isinstance(entry, unittest.SkipTest):
            result.addSkip(None, f"module skipped at import: {entry}")
        else:
            suite = unittest.TestSuite([entry[clsname](meth)])
            suite.run(result)
            # TestSuite.run leaves the last module's tearDownModule to the
            # caller (unittest.main does it via _handleModuleTearDown).
            suite._tearDownPreviousClass(None, result)
            suite._handleModuleTearDown(result)
    except BaseException:   # harness-level failure: report, don't crash
        result._note("error", "harness: " + traceback.format_exc().strip().splitlines()[-1],
                     traceback.format_exc())
    if result.outcome is None:
        result._note("error", "harness: the test produced no result")
    out = {"outcome": result.outcome, "reason": result.reason,
           "details": result.details, "duration": time.monotonic() - t0}
    tmp = args.result + ".tmp"
    with open(tmp, "w") as fp:
        json.dump(out, fp)
    os.replace(tmp, args.result)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a loop that leaves threads or handles behind
    # must not turn a reported outcome into a hang at exit.
    os._exit(0)


def probe_main(args):
    """Child mode --probe: import the factory, make and close one loop, report."""
    try:
        loop = resolve_factory(args.loop)()
        out = {"type": f"{type(loop).__module__}.{type(loop).__qualname__}",
               "has_default_executor": hasattr(loop, "_default_executor")}
        loop.close()
    except BaseException as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
    os._exit(0)


def run_probe(args, timeout=60):
    cmd = [sys.executable, os.path.abspath(__file__), "--loop", args.loop, "--probe"]
    try:
        proc = subprocess.run(cmd, env=_child_env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"creating one loop took more than {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    tail = (proc.stderr.strip().splitlines() or [""])[-1]
    return {"error": f"probe child exited with status {proc.returncode} {tail}".strip()}


# --------------------------------------------------------------------------
# Parent: schedule children, enforce timeouts, summarise
# --------------------------------------------------------------------------

class _Running:
    __slots__ = ("test_id", "proc", "workdir", "result", "log", "start")


def run_tests(ids, args, progress):
    """Run every id in its own child; returns {id: result dict}."""
    env = _child_env()
    script = os.path.abspath(__file__)
    base_cmd = [sys.executable, script, "--loop", args.loop, "--timeout", str(args.timeout)]
    if args.no_child_watcher:
        base_cmd.append("--no-child-watcher")
    if args.pristine:
        base_cmd.append("--pristine")
    pending = list(ids)
    running = []
    results = {}
    total = len(ids)
    tmproot = tempfile.mkdtemp(prefix="braid-conformance-")

    def finish(r, outcome=None, reason=""):
        elapsed = time.monotonic() - r.start
        stderr_tail = _tail(r.log)
        if outcome is None:
            try:
                with open(r.result) as fp:
                    res = json.load(fp)
            except (OSError, ValueError):
                rc = r.proc.returncode
                if rc is not None and rc < 0:
                    try:
                        sig = signal.Signals(-rc).name
                    except ValueError:
                        sig = str(-rc)
                    why = f"child killed by {sig}"
                else:
                    why = f"child exited with status {rc} without a result"
                detail = _crash_reason(stderr_tail)
                if not detail:
                    last = [l for l in stderr_tail.strip().splitlines() if l.strip()]
                    detail = f" ({last[-1].strip()[:160]})" if last else ""
                why += detail
                res = {"outcome": "crash", "reason": why, "details": ""}
        else:
            res = {"outcome": outcome, "reason": reason, "details": ""}
        res["duration"] = round(elapsed, 3)
        if res["outcome"] not in ("pass", "skip"):
            res["stderr_tail"] = stderr_tail
        results[r.test_id] = res
        shutil.rmtree(r.workdir, ignore_errors=True)
        progress(len(results), total, r.test_id, res)

    try:
        while pending or running:
            while pending and len(running) < args.jobs:
                test_id = pending.pop(0)
                r = _Running()
                r.test_id = test_id
                r.workdir = tempfile.mkdtemp(prefix="t-", dir=tmproot)
                r.result = os.path.join(r.workdir, "result.json")
                r.log = os.path.join(tmproot, os.path.basename(r.workdir) + ".log")
                cmd = base_cmd + ["--result", r.result, "--child", test_id]
                with open(r.log, "wb") as log:
                    r.proc = subprocess.Popen(
                        cmd, cwd=r.workdir, env=env, stdin=subprocess.DEVNULL,
                        stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True)   # own group: killpg reaches grandchildren
                r.start = time.monotonic()
                running.append(r)
            time.sleep(0.02)
            now = time.monotonic()
            for r in list(running):
                if r.proc.poll() is not None:
                    # Anything the test left behind in its group goes too.
                    _kill_group(r.proc)
                    running.remove(r)
                    finish(r)
                elif now - r.start > args.timeout:
                    _kill_group(r.proc)
                    running.remove(r)
                    finish(r, "timeout", f"killed after {args.timeout:g} s"
                           + _hang_site(_tail(r.log, 20000)))
    except KeyboardInterrupt:
        for r in running:
            _kill_group(r.proc)
        for r in running:
            results[r.test_id] = {"outcome": "interrupted", "reason": "Ctrl-C",
                                  "duration": round(time.monotonic() - r.start, 3)}
        raise _Interrupted(results)
    finally:
        shutil.rmtree(tmproot, ignore_errors=True)
    return results


class _Interrupted(Exception):
    def __init__(self, results):
        super().__init__("interrupted")
        self.results = results


def _frame_short(frame):
    """'File "/x/y/test_events.py", line 299 in test_x' -> 'test_events.py:299 test_x'."""
    try:
        path, rest = frame.split('", line ', 1)
        lineno, _, func = rest.partition(" in ")
        name = os.path.basename(path.split('"', 1)[-1])
        return f"{name}:{lineno.strip()} {func.strip()}"
    except ValueError:
        return frame


def _hang_site(text):
    """Where a child was, from faulthandler's dump: ' in <test frame> (innermost: ...)'.

    faulthandler prints each thread as 'Thread 0x... (most recent call first):'
    followed by 'File "...", line N in func' lines.  We report the innermost
    frame in a test_asyncio file, plus the innermost frame of that thread.
    """
    lines = text.splitlines()
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
            threads.append(frames)
    # The main thread is the one running this script's child_main; tests'
    # helper threads (servers, executors) come second.
    me = os.path.basename(__file__)
    threads.sort(key=lambda frames: not any(me in f for f in frames))
    for frames in threads:
        tests = [f for f in frames if "test_asyncio" in f]
        if tests:
            site = " in " + _frame_short(tests[0])
            if frames[0] != tests[0]:
                site += f" (innermost: {_frame_short(frames[0])})"
            return site
    return ""


def _crash_reason(text):
    """A short description of a dead child's last words."""
    fatal = [l.strip() for l in text.splitlines() if l.startswith("Fatal Python error")]
    why = f" ({fatal[-1][:120]})" if fatal else ""
    return why + _hang_site(text)


# --------------------------------------------------------------------------
# Static scan: which tests read private attributes?
# --------------------------------------------------------------------------

def scan_private(classes):
    """Map test id -> sorted private-attribute uses found in its source.

    Reported uses:
      ``<expr>._name``          read of a private attribute (<expr> not ``self``/
                                ``cls``, so the test's own helpers do not count)
      ``<expr>._name = ...``    assignment to one (a C type without __dict__
                                raises AttributeError on that alone)
      ``patch.object(X, '_name')``, ``patch('a.b._name')``
      ``patch('asyncio....')``  any patch of asyncio's internals (a loop that
                                does not use the patched module ignores it)
    Helpers called as ``self.helper(...)`` are followed.  The fixture
    (setUp/tearDown/close_loop of every class in the MRO, CPython's only)
    is reported once per class as ``<fixture>``.
    """
    scan = PrivateUses(__file__, patches=True)  # __file__: the close_loop shim is ours
    func_ast, lookup, uses = scan.func_ast, scan.lookup, scan.uses

    fixture_names = ("setUp", "tearDown", "set_event_loop", "close_loop")
    out = {}
    for short, entry in classes.items():
        if isinstance(entry, unittest.SkipTest):
            continue
        for clsname, cls in entry.items():
            fixture = set()
            for klass in cls.__mro__:
                for fx in fixture_names:
                    if fx in vars(klass):
                        fixture |= uses(klass, func_ast(vars(klass)[fx]), set(fixture_names))
            for meth in unittest.TestLoader().getTestCaseNames(cls):
                found = uses(cls, func_ast(lookup(cls, meth)), {meth}) - fixture
                if found:
                    out[f"{short}.{clsname}.{meth}"] = sorted(found)
            if fixture:
                out[f"{short}.{clsname}.<fixture>"] = sorted(fixture)
    return out


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Run CPython's test_asyncio loop mixins against a loop factory.",
        epilog="See the module docstring / docs/CONFORMANCE.md for details.")
    p.add_argument("--loop", default="asyncio:new_event_loop",
                   help="loop factory as module:callable (default: %(default)s)")
    p.add_argument("--jobs", "-j", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                   help="children run at once (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds per test before its child is killed (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="write the full results as JSON")
    p.add_argument("-k", dest="patterns", action="append", default=[],
                   help="only tests whose id contains this substring (or matches this "
                        "fnmatch pattern); repeatable, OR-ed")
    p.add_argument("--exclude", default=DEFAULT_EXCLUDE,
                   help="exclusion file (default: %(default)s)")
    p.add_argument("--no-exclude", action="store_true", help="ignore the exclusion file")
    p.add_argument("--list", action="store_true", help="list the selected test ids and exit")
    p.add_argument("--scan-private", action="store_true",
                   help="list tests whose source reads private attributes and exit")
    p.add_argument("--no-child-watcher", action="store_true",
                   help="use EventLoopTestsMixin instead of UnixEventLoopTestsMixin "
                        "(which installs asyncio.SafeChildWatcher on the loop)")
    p.add_argument("--pristine", action="store_true",
                   help="no close_loop shim: CPython's fixture exactly as shipped")
    p.add_argument("--min-pass-rate", type=float, default=None, metavar="PCT",
                   help="exit 1 if the pass rate (percent) is below this")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-test progress lines")
    # internal: the child entry point
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    return args


def _fmt_rate(passed, denom):
    return f"{100.0 * passed / denom:.1f}%" if denom else "n/a"


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        child_main(args)
        return 0    # not reached

    if args.probe:
        return probe_main(args)

    # The parent never imports the loop's module or creates a loop itself (a
    # broken extension must not crash or hang the harness); it lists the tests
    # with a factory that is never called and probes the factory in a child.
    def not_in_parent():
        raise RuntimeError("the harness parent does not create loops")

    classes, notes = build_classes(not_in_parent, child_watcher=not args.no_child_watcher,
                                   pristine=args.pristine)

    if args.scan_private:
        for test_id, attrs in sorted(scan_private(classes).items()):
            print(f"{test_id}\n    " + "\n    ".join(attrs))
        return 0

    all_ids, module_skips = list_tests(classes)
    selected = [t for t in all_ids if matches_k(t, args.patterns)]
    exclusions = [] if args.no_exclude else load_exclusions(args.exclude)
    excluded, to_run = {}, []
    used = set()
    for t in selected:
        for pat, reason in exclusions:
            if t == pat or fnmatch.fnmatchcase(t, pat):
                excluded[t] = reason
                used.add(pat)
                break
        else:
            to_run.append(t)
    stale = [pat for pat, _ in exclusions
             if pat not in used and not any(fnmatch.fnmatchcase(t, pat) for t in all_ids)]

    if args.list:
        for t in to_run:
            print(t)
        for t, reason in excluded.items():
            print(f"{t}  [excluded: {reason}]")
        return 0

    probe = run_probe(args)
    if "error" in probe:
        print(f"cannot use loop factory {args.loop!r}: {probe['error']}", file=sys.stderr)
        return 2
    loop_type = probe["type"]
    if not args.pristine and not probe["has_default_executor"]:
        notes.append("close_loop shim ACTIVE: this loop has no _default_executor")

    print(f"python   {sys.version.split()[0]} ({sys.executable})")
    print(f"loop     {args.loop} -> {loop_type}")
    for n in notes:
        print(f"note     {n}")
    print(f"tests    {len(to_run)} to run, {len(excluded)} excluded, "
          f"jobs {args.jobs}, timeout {args.timeout:g} s")
    for pat in stale:
        print(f"warning  exclusion {pat!r} matches no test in this Python")
    sys.stdout.flush()

    width = len(str(len(to_run)))

    def progress(done, total, test_id, res):
        if args.quiet:
            return
        extra = f"  {res['reason'][:100]}" if res["outcome"] not in ("pass",) else ""
        print(f"[{done:{width}}/{total}] {res['outcome']:7} {res['duration']:6.1f}s "
              f"{test_id}{extra}", flush=True)

    # SIGTERM stops the run like Ctrl-C does.
    def on_term(signum, frame):
        raise KeyboardInterrupt
    old_term = signal.signal(signal.SIGTERM, on_term)

    t0 = time.monotonic()
    interrupted = False
    try:
        results = run_tests(to_run, args, progress)
    except _Interrupted as exc:
        results = exc.results
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, old_term)
    wall = time.monotonic() - t0

    for mid, reason in module_skips.items():
        results[mid] = {"outcome": "skip", "reason": reason, "duration": 0.0}

    counts = {o: 0 for o in OUTCOMES}
    for res in results.values():
        if res["outcome"] in counts:
            counts[res["outcome"]] += 1
    total = sum(counts.values())
    denom = total - counts["skip"]
    rate = _fmt_rate(counts["pass"], denom)

    print()
    print("=" * 72)
    if interrupted:
        cut = sum(1 for r in results.values() if r["outcome"] == "interrupted")
        print(f"INTERRUPTED: {len(results) - cut} of {len(to_run)} tests finished, "
              f"{cut} killed, {len(to_run) - len(results)} not started")
    print(f"python {sys.version.split()[0]}  loop {args.loop} ({loop_type})")
    print(f"total {total}  passed {counts['pass']}  failed {counts['fail']}  "
          f"errors {counts['error']}  skipped {counts['skip']}  "
          f"timeouts {counts['timeout']}  crashes {counts['crash']}  "
          f"excluded {len(excluded)}")
    print(f"pass rate {rate} = {counts['pass']} / ({total} - {counts['skip']} skipped)")
    print(f"wall time {wall:.1f} s with {args.jobs} jobs")
    bad = [(t, r) for t, r in sorted(results.items())
           if r["outcome"] not in ("pass", "skip")]
    if bad:
        print(f"\nnot passing ({len(bad)}):")
        for t, r in bad:
            print(f"  {r['outcome']:7} {t}: {r['reason'][:160]}")
    skipped = [(t, r) for t, r in sorted(results.items()) if r["outcome"] == "skip"]
    if skipped:
        print(f"\nskipped ({len(skipped)}):")
        for t, r in skipped:
            print(f"  {t}: {r['reason'][:160]}")
    if excluded:
        print(f"\nexcluded ({len(excluded)}, not counted):")
        for t, reason in sorted(excluded.items()):
            print(f"  {t}: {reason}")

    if args.json:
        doc = {
            "python": sys.version,
            "executable": sys.executable,
            "platform": platform.platform(),
            "loop": args.loop,
            "loop_type": loop_type,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "options": {"jobs": args.jobs, "timeout": args.timeout,
                        "patterns": args.patterns, "child_watcher": not args.no_child_watcher,
                        "pristine": args.pristine,
                        "exclude_file": None if args.no_exclude else args.exclude},
            "notes": notes,
            "interrupted": interrupted,
            "wall_time_s": round(wall, 2),
            "counts": dict(counts, total=total, excluded=len(excluded)),
            "pass_rate": (counts["pass"] / denom) if denom else None,
            "results": dict(sorted(results.items())),
            "excluded": dict(sorted(excluded.items())),
            "stale_exclusions": stale,
        }
        with open(args.json, "w") as fp:
            json.dump(doc, fp, indent=1)
        print(f"\njson written to {args.json}")

    if interrupted:
        return 130
    if args.min_pass_rate is not None:
        if not denom or 100.0 * counts["pass"] / denom < args.min_pass_rate:
            print(f"FAIL: pass rate {rate} below {args.min_pass_rate:g}%")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
