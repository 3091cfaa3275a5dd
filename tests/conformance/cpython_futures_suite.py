#!/usr/bin/env python3
"""CPython 3.13's test_concurrent_futures against braid.ThreadPool and braid.ProcessPool.

The third conformance suite of the issue "Drop-in fidelity": every module of the
running interpreter's ``test.test_concurrent_futures`` package (a package since
3.13; older Pythons have one big module and are refused) runs twice, each module
in its own child process with a per-test watchdog (``_cpython_suite.py``):

* ``stdlib``: as CPython ships it -- the baseline;
* ``braid``: with the package's executor mixins pointed at braid's pools, before
  the test modules are imported:

      util.ThreadPoolMixin.executor_type       = braid.ThreadPool
      util.ProcessPoolSpawnMixin.executor_type = braid.ProcessPool

The gate: every test that passes on the stdlib passes with braid, except those
listed in ``futures_suite_excluded.txt`` with a reason.

Which process-pool variant
--------------------------
CPython builds every process-pool test three times, one per multiprocessing
start method (``ProcessPoolForkMixin``, ``...ForkserverMixin``,
``...SpawnMixin``), and passes ``mp_context=`` to the executor.
``braid.ProcessPool`` has one way to start workers: fresh interpreters fed
through shared memory, never a fork of the parent -- spawn's semantics (task
functions are found by import, nothing of the parent's state is inherited).  So
the Spawn variant is the one compared, on both sides, and the Fork and
Forkserver variants are not run on either side.  The fixture (``ExecutorMixin.setUp``)
passes ``mp_context`` only because the stdlib constructor needs it to pick the
variant; in the braid run it makes ``braid.ProcessPool(max_workers=...,
**executor_kwargs)`` without it.  Tests that pass ``mp_context=`` themselves
do so in their own body, and measure what braid does with it.

Per test the child counts the executors created: stdlib ones (counter
``stdlib``) and braid's (counter ``braid``); the table's "on braid" column
is the number of tests that created at least one braid pool.

Usage (from the repository root, with Python 3.13 or later)::

    python tests/conformance/cpython_futures_suite.py --jobs 2
    python tests/conformance/cpython_futures_suite.py -m test_shutdown -k ThreadPool -v
    python tests/conformance/cpython_futures_suite.py --scan-private

Exit status as cpython_asyncio_suite.py: 0 gate passed, 1 regressions, 2 usage
errors (or a Python without the package), 130 after Ctrl-C.
"""

import functools
import importlib
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _cpython_suite  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OTHER_VARIANTS = ("ProcessPoolFork",)   # ProcessPoolFork* and ProcessPoolForkserver*
_FROM_CF = re.compile(r"\bfrom concurrent\.futures import (ThreadPool|ProcessPool)\b(?!Executor)")


class FuturesSuite(_cpython_suite.Suite):
    name = "futures"
    package = "test.test_concurrent_futures"
    exclude_file = os.path.join(HERE, "futures_suite_excluded.txt")
    known_file = os.path.join(HERE, "futures_suite_known.txt")
    counter_label = "on braid"
    description = ("Run CPython 3.13's test_concurrent_futures on the stdlib executors and on "
                   "braid.ThreadPool / braid.ProcessPool; fail when a test passes on the "
                   "stdlib only.")

    def add_arguments(self, parser):
        parser.add_argument(
            "--adapt-process-pool", action="store_true",
            help="diagnostic: in the braid run, a braid.ProcessPool subclass that takes "
                 "ProcessPoolExecutor's mp_context= (spawn only) and max_tasks_per_child=, "
                 "to see what fails besides those names")

    def configure(self, args):
        if not args.child:
            os.environ["BRAID_SUITE_ADAPT"] = "1" if args.adapt_process_pool else ""

    @property
    def adapt(self):
        return bool(os.environ.get("BRAID_SUITE_ADAPT"))

    def keep(self, test_id):
        cls = test_id.split(".")[1] if test_id.count(".") >= 2 else ""
        return not cls.startswith(OTHER_VARIANTS)

    def setup_child(self, mode):
        from concurrent import futures
        from test.test_concurrent_futures import util

        counts = {"stdlib": 0, "braid": 0}

        def counting(cls, key):
            original = cls.__init__

            @functools.wraps(original)
            def __init__(self, *args, **kwargs):
                counts[key] += 1
                return original(self, *args, **kwargs)

            cls.__init__ = __init__

        counting(futures.ThreadPoolExecutor, "stdlib")
        counting(futures.ProcessPoolExecutor, "stdlib")

        if mode == "braid":
            import braid

            counting(braid.ThreadPool, "braid")
            counting(braid.ProcessPool, "braid")
            util.ThreadPoolMixin.executor_type = braid.ThreadPool
            util.ProcessPoolSpawnMixin.executor_type = braid.ProcessPool

            def setUp(self):
                # util.ExecutorMixin.setUp, without mp_context for braid.ProcessPool
                super(util.ExecutorMixin, self).setUp()
                self.t1 = time.monotonic()
                kwargs = dict(self.executor_kwargs)
                if hasattr(self, "ctx") and self.executor_type is not braid.ProcessPool:
                    kwargs["mp_context"] = self.get_context()
                self.executor = self.executor_type(max_workers=self.worker_count, **kwargs)

            util.ExecutorMixin.setUp = setUp

            if self.adapt:
                class ProcessPool(braid.ProcessPool):
                    """--adapt-process-pool: ProcessPoolExecutor's argument names."""

                    def __init__(self, max_workers=None, mp_context=None, initializer=None,
                                 initargs=(), *, max_tasks_per_child=None):
                        if mp_context is not None and \
                                mp_context.get_start_method(allow_none=False) != "spawn":
                            raise ValueError("braid.ProcessPool starts workers as spawn does")
                        super().__init__(max_workers, initializer=initializer,
                                         initargs=initargs,
                                         max_tasks_per_worker=max_tasks_per_child)

                util.ProcessPoolSpawnMixin.executor_type = ProcessPool

            # Tests that run a script in a new interpreter (test_shutdown's
            # interpreter-exit tests) write `from concurrent.futures import
            # {executor_type.__name__}`; braid's pools are imported from braid.
            from test.support import script_helper
            original = script_helper.assert_python_ok

            @functools.wraps(original)
            def assert_python_ok(*args, **env_vars):
                args = tuple(_FROM_CF.sub(r"from braid import \1", a) if isinstance(a, str)
                             else a for a in args)
                return original(*args, **env_vars)

            script_helper.assert_python_ok = assert_python_ok
        return lambda: dict(counts)

    def notes(self, mode):
        if mode == "braid":
            return ["ThreadPoolMixin.executor_type = braid.ThreadPool, "
                    "ProcessPoolSpawnMixin.executor_type = braid.ProcessPool "
                    "(no mp_context= from the fixture); scripts run by assert_python_ok "
                    "import them from braid"] + (
                ["--adapt-process-pool: ProcessPool takes mp_context= (spawn) and "
                 "max_tasks_per_child= (diagnostic, not the gate)"] if self.adapt else [])
        return ["process-pool tests: the Spawn variant only (braid.ProcessPool starts "
                "fresh interpreters, as spawn does)"]


# --------------------------------------------------------------------------
# Static scan: tests that touch private attributes of the executors
# --------------------------------------------------------------------------

def scan_private(suite):
    """{test id: sorted private-attribute uses in the test and its self.helpers}."""
    import unittest

    found = {}
    scan = _cpython_suite.PrivateUses(__file__)
    loader = unittest.TestLoader()
    for module in suite.modules():
        try:
            mod = importlib.import_module(f"{suite.package}.{module}")
        except unittest.SkipTest:
            continue
        for tcase in _cpython_suite._flatten(loader.loadTestsFromModule(mod)):
            tid = _cpython_suite.short_id(suite, tcase.id())
            if not suite.keep(tid) or not hasattr(tcase, "_testMethodName"):
                continue
            cls = type(tcase)
            meth = tcase._testMethodName
            got = scan.uses(cls, scan.func_ast(scan.lookup(cls, meth)), {meth})
            if got:
                found[tid] = sorted(got)
    return found


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    suite = FuturesSuite()
    try:
        importlib.import_module(suite.package + ".util")
    except ImportError:
        print(f"{suite.package} is not a package in Python {sys.version.split()[0]} "
              "(it is from 3.13 on): nothing to run", file=sys.stderr)
        return 2
    if "--scan-private" in argv:
        for tid, attrs in sorted(scan_private(suite).items()):
            print(f"{tid}\n    " + "\n    ".join(attrs))
        return 0
    return _cpython_suite.main(suite, argv)


if __name__ == "__main__":
    sys.exit(main())
