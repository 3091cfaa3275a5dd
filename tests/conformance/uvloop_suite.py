#!/usr/bin/env python3
"""uvloop's own test suite, on asyncio's loop and on braid.Loop.

uvloop tests itself with mixins: each behaviour is written once (``_TestTCP``,
``_TestUnix``, ``_TestUDP``, ``_TestSockets``, ``_TestSignal``, ...) and run on
uvloop (``Test_UV_*``, ``uvloop._testbase.UVTestCase``) and on asyncio's loop
(``Test_AIO_*``, ``AIOTestCase``). Many behaviours are only in the ``Test_UV_``
classes: tests uvloop wrote for itself, which asyncio's loop passes or not.
This front end of ``_cpython_suite.py`` (which describes the machinery: a
child process per module, a watchdog per test, reruns) runs every test class of
the suite twice:

* ``stdlib``: both kinds of class on asyncio's own loop (``new_loop`` and
  ``new_policy`` of ``UVTestCase`` and ``AIOTestCase``, and
  ``uvloop.new_event_loop``, give asyncio's) -- the baseline;
* ``braid``: both on ``braid.Loop`` and ``braid.EventLoopPolicy``.

The classes keep their ``implementation`` attribute ('uvloop' or 'asyncio'),
so a test expects the same in both runs. The gate: every test that passes on
asyncio's loop passes on braid.Loop, except those listed in
``uvloop_suite_excluded.txt`` with a reason. Tests of uvloop itself (its
libuv handles, its Cython API, its source code's style, behaviours where it
differs from asyncio on purpose) fail on asyncio's loop and are not gated.

Where the tests come from
-------------------------
The test package is not in uvloop's wheel (only ``uvloop._testbase`` is), so
by default the sdist of the installed uvloop's version is fetched from PyPI (``_sdist.py``:
its JSON API, the file checked against PyPI's sha256; ``pip download`` where that fails) into
``~/.cache/braid/uvloop-tests`` (or ``$XDG_CACHE_HOME``) and its ``tests``
package copied there as ``uvloop_tests``. ``--source DIR`` uses an unpacked
sdist (or its ``tests`` directory) instead. The tests need uvloop installed
(for ``uvloop._testbase``), pyOpenSSL (test_tcp), psutil (test_process) and
aiohttp (test_aiohttp).

Usage (from the repository root, in a venv with braid installed, not editable)::

    python tests/conformance/uvloop_suite.py --jobs 2
    python tests/conformance/uvloop_suite.py -m test_tcp -k start_tls --modes braid -v

Exit status: 0 when the gate passes, 1 when a test that passes on asyncio's loop
does not pass on braid.Loop (and is not excluded), 2 for usage errors, 130 after
Ctrl-C.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _cpython_suite  # noqa: E402
from _sdist import fetch_sdist  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "uvloop_tests"
SOURCE_ENV = "BRAID_UVLOOP_TESTS"  # the directory holding PACKAGE, for the children


def _cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "braid", "uvloop-tests")


def _copy_package(tests_dir, dest_root):
    """Copies uvloop's tests directory to dest_root/PACKAGE (atomically) and returns dest_root."""
    if not os.path.isfile(os.path.join(tests_dir, "test_tcp.py")):
        raise SystemExit(f"{tests_dir} is not uvloop's tests directory (no test_tcp.py)")
    target = os.path.join(dest_root, PACKAGE)
    if os.path.isdir(target):
        return dest_root
    os.makedirs(dest_root, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=dest_root)
    shutil.copytree(tests_dir, os.path.join(tmp, PACKAGE))
    try:
        os.rename(os.path.join(tmp, PACKAGE), target)
    except OSError:
        if not os.path.isdir(target):  # not another run's copy that won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest_root


def _from_source(source):
    """The directory to put on sys.path for --source (an unpacked sdist or its tests dir)."""
    source = os.path.abspath(source)
    tests_dir = os.path.join(source, "tests") if os.path.isdir(os.path.join(source, "tests")) \
        else source
    return _copy_package(tests_dir, os.path.join(_cache_dir(), "from-source",
                                                 source.strip(os.sep).replace(os.sep, "_")))


def _downloaded():
    """The directory holding PACKAGE for the installed uvloop's version, fetched once."""
    try:
        from importlib.metadata import version
        ver = version("uvloop")
    except Exception as exc:
        raise SystemExit(f"uvloop is not installed ({exc}); pip install uvloop pyOpenSSL "
                         "psutil aiohttp") from None
    root = os.path.join(_cache_dir(), f"uvloop-{ver}")
    if os.path.isdir(os.path.join(root, PACKAGE)):
        return root
    with tempfile.TemporaryDirectory() as tmp:
        sdist = os.path.basename(fetch_sdist("uvloop", ver, tmp))
        with tarfile.open(os.path.join(tmp, sdist)) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.split("/")[1:2] == ["tests"] and (m.isfile() or m.isdir())]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **safe)
        top = sdist[:-len(".tar.gz")]
        return _copy_package(os.path.join(tmp, top, "tests"), root)


class UvloopSuite(_cpython_suite.Suite):
    name = "uvloop"
    package = PACKAGE
    exclude_file = os.path.join(HERE, "uvloop_suite_excluded.txt")
    counter_label = "on braid.Loop"
    description = ("Run uvloop's own test suite (its Test_UV_ and Test_AIO_ classes) on "
                   "asyncio's loop and on braid.Loop; fail when a test passes on asyncio's only.")

    def add_arguments(self, parser):
        parser.add_argument(
            "--source", metavar="DIR",
            help="an unpacked uvloop sdist (or its tests directory) instead of fetching the "
                 "installed version's sdist from PyPI")

    def configure(self, args):
        root = os.environ.get(SOURCE_ENV)
        if not args.child and not root:
            root = _from_source(args.source) if args.source else _downloaded()
            os.environ[SOURCE_ENV] = root
        if root and root not in sys.path:
            sys.path.insert(0, root)

    def keep(self, test_id):
        # uvloop's source-code checks read a checkout of uvloop, not a loop
        return not test_id.startswith("test_sourcecode.")

    def setup_child(self, mode):
        import asyncio

        import uvloop
        from uvloop import _testbase as tb

        counts = {"loops": 0, "braid": 0}
        if mode == "braid":
            import braid

            def new_loop(self=None):
                counts["loops"] += 1
                counts["braid"] += 1
                return braid.Loop()

            policy = braid.EventLoopPolicy
        else:
            def new_loop(self=None):
                counts["loops"] += 1
                # the class asyncio's default policy makes, not through the policy: with
                # uvloop's policy set, that would call the uvloop.new_event_loop set below
                return asyncio.SelectorEventLoop()

            policy = asyncio.DefaultEventLoopPolicy
        for case in (tb.UVTestCase, tb.AIOTestCase):
            case.new_loop = new_loop
            case.new_policy = lambda self: policy()
        uvloop.new_event_loop = new_loop
        return lambda: dict(counts)

    def notes(self, mode):
        where = "braid.Loop and braid.EventLoopPolicy" if mode == "braid" else \
            "asyncio's loop and DefaultEventLoopPolicy"
        return [f"UVTestCase, AIOTestCase and uvloop.new_event_loop make {where}; "
                f"tests from {os.environ.get(SOURCE_ENV)}/{PACKAGE}"]


def main(argv=None):
    return _cpython_suite.main(UvloopSuite(), argv)


if __name__ == "__main__":
    sys.exit(main())
