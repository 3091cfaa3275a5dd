"""braid is typed (PEP 561): ``py.typed`` and ``__init__.pyi`` describe the whole public API.

A user's script that touches every public name, with annotations that pin the types the stubs
must give (``squares: list[int] = braid.map(square, ...)``), passes ``mypy --strict``; a script
with deliberate mistakes fails on exactly those lines; and the script runs, so it is real code.

mypy runs in a subprocess from a scratch directory, so it finds braid the way a user's mypy
would: in site-packages, installed with its stubs (``pip install '.[test]'``, as CI does). An
editable meson-python install is not there -- it is an import hook (braid-editable.pth, which
mypy cannot follow) -- so in that case MYPYPATH points mypy at the source package instead.
"""

import os
import re
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import braid

# Every public name of braid, used as a user would; the annotations are the assertions.
SCRIPT = '''
"""Every public name of braid, as a user's script uses them."""

import asyncio
import concurrent.futures
import itertools
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

import braid


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


async def fetch(x: int) -> str:
    await asyncio.sleep(0)
    return f"item {x}"


def crash(code: int) -> int:
    os._exit(code)


def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fill(arr: NDArray[np.float64], value: float) -> None:
    arr[:] = value


def init(tag: str) -> None:
    os.environ["TYPING_TAG"] = tag


class Bar:
    """A tqdm-like progress bar of the caller's own."""

    def __init__(self) -> None:
        self.n = 0
        self.total: int | None = None

    def update(self, n: int) -> None:
        self.n += n

    def refresh(self) -> None:
        pass


def report(done: int, total: int | None) -> None:
    assert total is None or done <= total


def on_a_cluster(address: str, client: Any) -> list[int]:
    # type-checked only: running it needs a Dask scheduler
    by_address: list[int] = braid.map(square, range(10), mode="dask", address=address)
    by_client: list[int] = braid.map(square, range(10), client=client, chunksize=5)
    return by_address + by_client


def thread_pool() -> None:
    with braid.ThreadPool(max_workers=4, thread_name_prefix="work", initializer=init,
                          initargs=("thread",)) as pool:
        workers: int = pool.max_workers
        fut: braid.Future[int] = pool.submit(square, 3)
        plain: concurrent.futures.Future[int] = fut
        done, _ = concurrent.futures.wait([plain], timeout=10)
        assert fut.result(timeout=10) == 9 and done == {fut}
        it: Iterator[int] = pool.map(square, range(10), timeout=10, chunksize=2)
        squares: list[int] = list(it)
        sums: list[int] = list(pool.map(add, range(3), range(3)))
        lazy = pool.map(square, range(1000))
        first: int = next(lazy)
        lazy.close()
        assert squares[3] == 9 and sums == [0, 2, 4] and first == 0
        started: int = pool.threads
        assert workers == 4 and 1 <= started <= workers
        pool.shutdown(wait=True, cancel_futures=False)
    made: braid.Future[str] = braid.Future()
    made.set_result("set by hand")
    assert made.result() == "set by hand"


def process_pool() -> None:
    with braid.ProcessPool(2, initializer=init, initargs=("process",), max_tasks_per_worker=100,
                           task_timeout=None, retries=0) as pool:
        workers: int = pool.max_workers
        pids: list[int] = pool.pids
        fut: braid.Future[int] = pool.submit(square, 3)
        assert fut.result(timeout=10) == 9
        mapped: Iterator[int] = pool.map(square, range(10), timeout=10, chunksize=None)
        ordered: list[int] = list(pool.imap(square, range(5), chunksize=2))
        unordered: set[int] = set(pool.imap_unordered(square, range(5)))
        starred: list[int] = pool.starmap(add, [(1, 2), (3, 4)])
        assert list(mapped)[9] == 81 and ordered == [0, 1, 4, 9, 16]
        assert unordered == {0, 1, 4, 9, 16} and starred == [3, 7]
        assert workers == 2 and all(pid > 0 for pid in pids)

        arr = braid.shared_array((4,), "f8")
        pool.submit(fill, arr, 2.5).result(timeout=10)
        total: float = float(arr.sum())
        assert total == 10.0, total
        grid = braid.shared_array(3, dtype=np.int32)
        assert grid.shape == (3,)
        pool.shutdown(wait=True)

    with braid.ProcessPool(max_workers=1, task_timeout=1.0) as pool:
        try:
            pool.submit(crash, 7).result(timeout=10)
        except braid.WorkerCrashed as exc:
            pid: int | None = exc.pid
            exitcode: int | None = exc.exitcode
            signal: int | None = exc.signal
            assert pid is not None and exitcode == 7 and signal is None, (pid, exitcode, signal)
        else:
            raise AssertionError("no WorkerCrashed")
        try:
            pool.submit(sleepy, 30.0).result(timeout=10)
        except braid.TaskTimeout as exc:
            timed_out: TimeoutError = exc
            assert isinstance(timed_out, TimeoutError)
        else:
            raise AssertionError("no TaskTimeout")
        pool.terminate()
    raised: braid.WorkerCrashed = braid.WorkerCrashed("by hand", pid=1, exitcode=None, signal=9)
    assert raised.signal == 9


def maps() -> None:
    squares: list[int] = braid.map(square, range(10))
    names: list[str] = braid.map(fetch, [1, 2])
    threaded: list[int] = braid.map(square, range(10), mode="thread", workers=2, chunksize=3,
                                    timeout=30.0, progress=report)
    processed: list[int] = braid.map(square, range(10), mode="process", workers=2)
    bar = Bar()
    quiet: list[int] = braid.map(square, range(10), mode="sequential", progress=bar,
                                 explain=False)
    limited: list[str] = braid.map(fetch, range(5), mode="async", limit=2, progress=False)
    with braid.ThreadPool(2) as pool:
        given: list[int] = braid.map(square, range(10), executor=pool)
    lazy: Iterator[int] = braid.imap(square, iter(range(10)), mode="thread", workers=2)
    lazy_names: Iterator[str] = braid.imap(fetch, range(3))
    endless = braid.imap(square, itertools.count(), mode="thread", workers=2, progress=None)
    first: int = next(endless)
    endless.close()
    assert squares == threaded == processed == quiet == given == list(lazy) == [x * x for x in range(10)]
    assert names == ["item 1", "item 2"] and list(lazy_names)[2] == "item 2"
    assert limited[4] == "item 4" and bar.n == 10 and first == 0


async def main() -> list[str]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, braid.Loop)
    names: list[str] = await braid.amap(fetch, range(3), limit=10)
    squares: list[int] = await braid.amap(square, range(3), mode="thread", workers=2)
    nine: int = await loop.run_in_executor(None, square, 3)
    assert squares == [0, 1, 4] and nine == 9
    return names


async def loop_kind() -> str:
    return type(asyncio.get_running_loop()).__name__


def loops() -> None:
    names: list[str] = braid.run(main())
    debugged: str = braid.run(loop_kind(), debug=True)
    assert names == ["item 0", "item 1", "item 2"] and debugged == "Loop"

    loop = braid.Loop()
    try:
        seen: list[str] = []
        handle: asyncio.Handle = loop.call_soon(seen.append, "soon")
        task: asyncio.Task[str] = loop.create_task(fetch(5))
        assert loop.run_until_complete(task) == "item 5" and seen == ["soon"]
        assert not handle.cancelled()
    finally:
        loop.close()

    other: asyncio.AbstractEventLoop = braid.new_event_loop()
    other.close()

    policy: braid.EventLoopPolicy = braid.EventLoopPolicy()
    made: braid.Loop = policy.new_event_loop()
    made.close()
    braid.install()
    try:
        assert asyncio.run(loop_kind()) == "Loop"
    finally:
        asyncio.set_event_loop_policy(None)


if __name__ == "__main__":
    version: str = braid.__version__
    thread_pool()
    process_pool()
    maps()
    loops()
    print("ok", version)
'''

# Each line marked "# E" must be reported by mypy, and no other.
BAD_SCRIPT = '''
import asyncio

import braid


def square(x: int) -> int:
    return x * x


async def fetch(x: int) -> str:
    return str(x)


def wrong() -> None:
    as_text: list[str] = braid.map(square, range(3))  # E list[int] is not list[str]
    as_ints: list[int] = braid.map(fetch, [1])  # E an async fn maps to what it returns: str
    braid.map(square, ["a", "b"])  # E the items must be what fn takes
    braid.imap(square, range(3), mode="threads")  # E no such mode
    braid.map(square, range(3), workers="4")  # E workers is an int
    with braid.ThreadPool() as pool:
        fut: braid.Future[str] = pool.submit(square, 1)  # E submit keeps fn's return type
        pool.submit(square, "1")  # E and checks its arguments
        pool.max_workers = 3  # E read-only
    with braid.ProcessPool(task_timeout="1s") as procs:  # E a number of seconds
        procs.starmap(square, [(1,)]).append("x")  # E list[int]
    try:
        pass
    except braid.WorkerCrashed as exc:
        exc.pid + 1  # E pid may be None
    length: int = braid.run(fetch(1))  # E run returns the coroutine's result: str
    braid.run(square(2))  # E run needs a coroutine
    loop: braid.Loop = asyncio.new_event_loop()  # E not every loop is a braid.Loop


async def wrong_async() -> None:
    names: list[int] = await braid.amap(fetch, [1])  # E list[str]
'''


def _in_site_packages(path):
    dirs = site.getsitepackages() + [site.getusersitepackages()]
    return any(path.is_relative_to(Path(d).resolve()) for d in dirs)


@pytest.fixture(scope="module")
def mypy_setup(tmp_path_factory):
    """(cwd, env, base command) for running mypy on a script as a user would."""
    import mypy  # noqa: F401 -- a test dependency: missing, the tests fail rather than skip

    pkg = Path(braid.__file__).resolve().parent
    env = dict(os.environ)
    if _in_site_packages(pkg):
        # a regular install: mypy finds braid in site-packages by itself, through py.typed
        for name in ("py.typed", "__init__.pyi"):
            assert (pkg / name).is_file(), f"{name} is not installed next to {pkg / '__init__.py'}"
        env["MYPYPATH"] = ""
    else:
        # an editable install (a meson-python import hook) or a source tree: mypy reads the
        # stubs from the source package; a local mypy run counts them as user code, so the
        # stubs themselves are held to --strict too
        assert (pkg / "__init__.pyi").is_file() and (pkg / "py.typed").is_file()
        env["MYPYPATH"] = str(pkg.parent)
    work = tmp_path_factory.mktemp("typing")
    (work / "mypy.ini").write_text("[mypy]\n")  # no user or repository config
    cmd = [sys.executable, "-m", "mypy", "--strict", "--config-file", str(work / "mypy.ini"),
           "--cache-dir", str(work / ".mypy_cache"), "--show-error-codes", "--no-color-output",
           "--no-error-summary"]
    return work, env, cmd


def _mypy(setup, name, text):
    work, env, cmd = setup
    script = work / name
    script.write_text(textwrap.dedent(text).lstrip())
    proc = subprocess.run(cmd + [name], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    return script, proc


def test_user_script_passes_mypy_strict(mypy_setup):
    _, proc = _mypy(mypy_setup, "user_script.py", SCRIPT)
    assert proc.returncode == 0, f"mypy --strict failed:\n{proc.stdout}{proc.stderr}"


def test_stubs_catch_type_errors(mypy_setup):
    script, proc = _mypy(mypy_setup, "bad_script.py", BAD_SCRIPT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"mypy should have failed:\n{out}"
    lines = script.read_text().splitlines()
    expected = {i for i, line in enumerate(lines, 1) if "# E" in line}
    reported = {int(n) for n in re.findall(r"^bad_script\.py:(\d+): error:", out, re.M)}
    missed = sorted(expected - reported)
    extra = sorted(reported - expected)
    assert not missed and not extra, (
        "mypy missed:\n" + "".join(f"  {n}: {lines[n - 1].strip()}\n" for n in missed)
        + "mypy reported unexpected lines:\n" + "".join(f"  {n}: {lines[n - 1].strip()}\n" for n in extra)
        + "\nmypy output:\n" + out)


def test_user_script_runs(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(SCRIPT).lstrip())
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the script failed:\n{proc.stdout}{proc.stderr}"
    assert proc.stdout.splitlines()[-1] == f"ok {braid.__version__}", proc.stdout
