# Type stubs for braid's public API (PEP 561: py.typed sits next to this file).
#
# One file on purpose: the modules behind these names (_threadpool.py, _map.py, ...) keep their
# own code untouched by stubs, and names defined in C (Future, the pools' submit/map/shutdown
# and attributes: src/python/*.c) are described here next to the Python ones. Keep it in step
# with __init__.py's __all__; tests/test_typing.py runs mypy --strict on a script using it all.

import asyncio
import concurrent.futures
import concurrent.futures.process
import multiprocessing.context
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, Literal, Protocol, SupportsIndex, TypeVar, overload, type_check_only

from numpy.typing import DTypeLike, NDArray
from typing_extensions import ParamSpec, TypeAlias

__all__ = [
    "EventLoopPolicy",
    "Future",
    "InterpreterPool",
    "Loop",
    "ProcessPool",
    "TaskTimeout",
    "ThreadPool",
    "WorkerCrashed",
    "__version__",
    "amap",
    "imap",
    "install",
    "map",
    "new_event_loop",
    "run",
    "shared_array",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")
_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)

__version__: str

# ---- futures and errors ---------------------------------------------------------------------

# braid._braid.Future at run time (its __module__ is "braid"): a concurrent.futures.Future whose
# state lives in C; ThreadPool.submit and ProcessPool.submit return it.
class Future(concurrent.futures.Future[_T]): ...

class WorkerCrashed(concurrent.futures.process.BrokenProcessPool):
    pid: int | None
    exitcode: int | None
    signal: int | None
    def __init__(
        self,
        message: str = "a worker process died while running this task",
        pid: int | None = None,
        exitcode: int | None = None,
        signal: int | None = None,
    ) -> None: ...

class TaskTimeout(TimeoutError): ...

# What the pools' map/imap and braid.imap return: an iterator whose close() stops it and, once
# iteration has started (as a generator's), cancels the tasks not yet started (a C MapIterator
# for ThreadPool.map, a generator elsewhere).
@type_check_only
class _ClosingIterator(Iterator[_R_co], Protocol[_R_co]):
    def close(self) -> None: ...

# ---- pools ----------------------------------------------------------------------------------

class ThreadPool(concurrent.futures.Executor):
    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str | None = "",
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
    ) -> None: ...
    @property
    def max_workers(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def queued(self) -> int: ...
    def submit(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_R]: ...
    def map(
        self,
        fn: Callable[..., _R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> _ClosingIterator[_R]: ...
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...

class ProcessPool(concurrent.futures.Executor):
    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: multiprocessing.context.BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_worker: int | None = None,
        max_tasks_per_child: int | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
        max_worker_memory: int | str | None = None,
    ) -> None: ...
    @property
    def max_workers(self) -> int: ...
    @property
    def pids(self) -> list[int]: ...
    def submit(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_R]: ...
    def map(
        self,
        fn: Callable[..., _R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
    ) -> _ClosingIterator[_R]: ...
    def imap(
        self, fn: Callable[[_T], _R], iterable: Iterable[_T], chunksize: int | None = None
    ) -> _ClosingIterator[_R]: ...
    def imap_unordered(
        self, fn: Callable[[_T], _R], iterable: Iterable[_T], chunksize: int | None = None
    ) -> _ClosingIterator[_R]: ...
    def starmap(
        self, fn: Callable[..., _R], iterable: Iterable[Iterable[Any]], chunksize: int | None = None
    ) -> list[_R]: ...
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...
    def terminate(self) -> None: ...

class InterpreterPool(concurrent.futures.Executor):
    def __init__(
        self,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        task_timeout: float | None = None,
    ) -> None: ...
    @property
    def max_workers(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def stuck(self) -> int: ...
    def submit(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_R]: ...
    def map(
        self,
        fn: Callable[..., _R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> _ClosingIterator[_R]: ...
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...

def shared_array(shape: int | Iterable[SupportsIndex], dtype: DTypeLike = ...) -> NDArray[Any]: ...

# ---- the event loop -------------------------------------------------------------------------

class Loop(asyncio.SelectorEventLoop):
    def __init__(self) -> None: ...

class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> Loop: ...

def new_event_loop() -> Loop: ...
def install() -> None: ...
def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T: ...

# ---- braid.map, imap, amap ------------------------------------------------------------------

_Mode: TypeAlias = Literal["auto", "sequential", "thread", "process", "interpreter", "async", "dask"]

# progress= may be a tqdm bar of the caller's: braid.map calls update(n) as results come and
# refresh() at the end, and sets its total when that is None.
@type_check_only
class _ProgressBar(Protocol):
    def update(self, n: int, /) -> object: ...
    def refresh(self) -> object: ...

# False/None: none; True: a new tqdm bar on stderr; a bar; or a callable progress(done, total),
# total None when the input has no len().
_Progress: TypeAlias = bool | None | _ProgressBar | Callable[[int, int | None], object]

# Two overloads each, the coroutine function first, so that braid.map(an async def, items) is
# the list of what the coroutines return. mode="auto" sends coroutine functions to the loop.
@overload
def map(
    fn: Callable[[_T], Coroutine[Any, Any, _R]],
    iterable: Iterable[_T],
    *,
    mode: _Mode = "auto",
    workers: int | None = None,
    chunksize: int | None = None,
    timeout: float | None = None,
    progress: _Progress = False,
    limit: int | None = None,
    executor: concurrent.futures.Executor | None = None,
    address: str | None = None,
    client: Any = None,
    explain: bool = False,
) -> list[_R]: ...
@overload
def map(
    fn: Callable[[_T], _R],
    iterable: Iterable[_T],
    *,
    mode: _Mode = "auto",
    workers: int | None = None,
    chunksize: int | None = None,
    timeout: float | None = None,
    progress: _Progress = False,
    limit: int | None = None,
    executor: concurrent.futures.Executor | None = None,
    address: str | None = None,
    client: Any = None,
    explain: bool = False,
) -> list[_R]: ...
@overload
def imap(
    fn: Callable[[_T], Coroutine[Any, Any, _R]],
    iterable: Iterable[_T],
    *,
    mode: _Mode = "auto",
    workers: int | None = None,
    chunksize: int | None = None,
    timeout: float | None = None,
    progress: _Progress = False,
    limit: int | None = None,
    executor: concurrent.futures.Executor | None = None,
    address: str | None = None,
    client: Any = None,
    explain: bool = False,
) -> _ClosingIterator[_R]: ...
@overload
def imap(
    fn: Callable[[_T], _R],
    iterable: Iterable[_T],
    *,
    mode: _Mode = "auto",
    workers: int | None = None,
    chunksize: int | None = None,
    timeout: float | None = None,
    progress: _Progress = False,
    limit: int | None = None,
    executor: concurrent.futures.Executor | None = None,
    address: str | None = None,
    client: Any = None,
    explain: bool = False,
) -> _ClosingIterator[_R]: ...
@overload
async def amap(
    fn: Callable[[_T], Coroutine[Any, Any, _R]],
    iterable: Iterable[_T],
    *,
    mode: _Mode = "auto",
    workers: int | None = None,
    chunksize: int | None = None,
    timeout: float | None = None,
    progress: _Progress = False,
    limit: int | None = None,
    executor: concurrent.futures.Executor | None = None,
    address: str | None = None,
    client: Any = None,
    explain: bool = False,
) -> list[_R]: ...
@overload
async def amap(
    fn: Callable[[_T], _R],
    iterable: Iterable[_T],
    *,
    mode: _Mode = "auto",
    workers: int | None = None,
    chunksize: int | None = None,
    timeout: float | None = None,
    progress: _Progress = False,
    limit: int | None = None,
    executor: concurrent.futures.Executor | None = None,
    address: str | None = None,
    client: Any = None,
    explain: bool = False,
) -> list[_R]: ...
