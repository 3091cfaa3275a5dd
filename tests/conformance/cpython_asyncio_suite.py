#!/usr/bin/env python3
"""CPython's whole test_asyncio, on the stdlib and with braid installed as asyncio's loop.

The second conformance suite of the issue "Drop-in fidelity": every test module of
the running interpreter's ``test.test_asyncio`` package runs twice, each module in
its own child process with a per-test watchdog (``_cpython_suite.py`` describes
the machinery):

* ``stdlib``: as CPython ships it -- the baseline;
* ``braid``: with braid installed before the module is imported, the way a user
  installs it (``braid.install()``, i.e. ``asyncio.set_event_loop_policy(
  braid.EventLoopPolicy())``), and kept installed (below).

The gate: every test that passes on the stdlib passes with braid, except those
listed in ``asyncio_suite_excluded.txt`` with a reason.

Keeping braid installed
-----------------------
test_asyncio resets the policy all the time: most modules' ``tearDownModule``
and many tests call ``asyncio.set_event_loop_policy(None)``, after which asyncio
creates a fresh ``DefaultEventLoopPolicy`` the next time one is needed (in
``asyncio.events._init_event_loop_policy``).  In the braid run the child
replaces that function so the policy asyncio falls back to is braid's: "no
policy set" means braid, as if braid were asyncio's default.

Unless ``--policy-only`` is given, the names ``asyncio.SelectorEventLoop`` and
``asyncio.EventLoop`` (3.13), and the stdlib policy's loop factory, are braid's
too: a ``braid.Loop`` subclass whose constructor accepts the ``selector``
argument and does not use it (braid.Loop watches fds in its C reactor).  Tests
that construct ``asyncio.SelectorEventLoop(...)`` themselves (test_events' loop
classes, test_base_events' BaseEventLoopWithSelectorTests, ...) then run on
braid as well.  Loops made from other stdlib classes (``test_utils.TestLoop``,
``BaseEventLoop()``, ``BaseSelectorEventLoop`` subclasses with mock selectors)
stay the stdlib's.

Which tests really ran on braid.Loop
------------------------------------
The child counts the event loops each test creates (a wrapper around
``asyncio.BaseEventLoop.__init__``, which every asyncio loop and braid.Loop
runs) and how many of them were ``braid.Loop`` instances.  The per-module table
gives the number of tests that created at least one braid.Loop.

Usage (from the repository root; the interpreter that runs the script is the one
whose test_asyncio and asyncio are measured)::

    python tests/conformance/cpython_asyncio_suite.py --jobs 2
    python tests/conformance/cpython_asyncio_suite.py -m test_tasks -m test_events
    python tests/conformance/cpython_asyncio_suite.py --modes braid -m test_runners -v
    python tests/conformance/cpython_asyncio_suite.py --json out.json

Exit status: 0 when the gate passes, 1 when a test that passes on the stdlib
does not pass with braid (and is not excluded), 2 for usage errors, 130 after
Ctrl-C.
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _cpython_suite  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class AsyncioSuite(_cpython_suite.Suite):
    name = "asyncio"
    package = "test.test_asyncio"
    exclude_file = os.path.join(HERE, "asyncio_suite_excluded.txt")
    counter_label = "on braid.Loop"
    description = ("Run CPython's test_asyncio on the stdlib and with braid installed as "
                   "asyncio's loop; fail when a test passes on the stdlib only.")

    def add_arguments(self, parser):
        parser.add_argument(
            "--policy-only", action="store_true",
            help="braid run: install braid's policy only; asyncio.SelectorEventLoop and "
                 "asyncio.EventLoop stay the stdlib's classes")

    def configure(self, args):
        if not args.child:
            os.environ["BRAID_SUITE_POLICY_ONLY"] = "1" if args.policy_only else ""

    @property
    def policy_only(self):
        return bool(os.environ.get("BRAID_SUITE_POLICY_ONLY"))

    def setup_child(self, mode):
        import asyncio
        from asyncio import base_events, events, unix_events

        counts = {"loops": 0, "braid": 0}
        braid_loop = None

        if mode == "braid":
            import braid

            braid_loop = braid.Loop
            policy_class = braid.EventLoopPolicy
            if not self.policy_only:
                class SelectorEventLoop(braid.Loop):
                    """What the name asyncio.SelectorEventLoop makes in the braid run:
                    a braid.Loop. The selector argument is accepted and not used
                    (braid.Loop watches file descriptors in its C reactor)."""

                    def __init__(self, selector=None):
                        super().__init__()

                SelectorEventLoop.__module__ = "asyncio.unix_events"
                for ns in (asyncio, unix_events):
                    ns.SelectorEventLoop = SelectorEventLoop
                    if hasattr(ns, "EventLoop"):        # 3.13: asyncio.EventLoop
                        ns.EventLoop = SelectorEventLoop
                # the stdlib policy's class attribute, and braid's, so every loop a
                # policy makes is an instance of the name asyncio.SelectorEventLoop
                unix_events._UnixDefaultEventLoopPolicy._loop_factory = SelectorEventLoop
                policy_class = type("EventLoopPolicy", (braid.EventLoopPolicy,),
                                    {"_loop_factory": SelectorEventLoop,
                                     "__module__": braid.EventLoopPolicy.__module__})

            asyncio.set_event_loop_policy(policy_class())   # what braid.install() does

            def _init_event_loop_policy():
                # asyncio's own, with braid's policy as the default one
                with events._lock:
                    if events._event_loop_policy is None:
                        events._event_loop_policy = policy_class()

            events._init_event_loop_policy = _init_event_loop_policy

        original_init = base_events.BaseEventLoop.__init__

        @functools.wraps(original_init)
        def __init__(self, *args, **kwargs):
            counts["loops"] += 1
            if braid_loop is not None and isinstance(self, braid_loop):
                counts["braid"] += 1
            return original_init(self, *args, **kwargs)

        base_events.BaseEventLoop.__init__ = __init__
        return lambda: dict(counts)

    def notes(self, mode):
        if mode != "braid":
            return []
        notes = ["braid's policy installed (braid.install()); asyncio.events."
                 "_init_event_loop_policy makes it again whenever a test resets the policy "
                 "to None"]
        if self.policy_only:
            notes.append("--policy-only: asyncio.SelectorEventLoop/EventLoop are the stdlib's")
        else:
            notes.append("asyncio.SelectorEventLoop, asyncio.EventLoop and the default "
                         "policy's loop factory are braid.Loop (a selector argument is ignored)")
        return notes


def main(argv=None):
    return _cpython_suite.main(AsyncioSuite(), argv)


if __name__ == "__main__":
    sys.exit(main())
