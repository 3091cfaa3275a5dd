"""How the demo runs and measures a variant: its wall time, the CPU it used, the check of
its result, and what braid.map said it chose (one run, or the fastest of --repeat runs).

CPU use is the process's user + system time (threads, and worker processes once reaped)
less the demo server's thread, over the wall time: 1.0 is one core busy throughout. The
server answers from a thread of this process, so without that subtraction every client's
figure would carry the server's work too.
"""

import contextlib
import dataclasses
import gc
import logging
import resource
import sys
import threading
import time

__all__ = ["Case", "Row", "Variant", "run_case", "Progress", "why"]


def why(exc):
    """'TimeoutError' or 'ConnectionResetError: [Errno 104] ...': an exception in a line."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclasses.dataclass
class Variant:
    """One way of running a case: ``run(ctx)`` returns what ``Case.check`` verifies.

    ``pillar`` is the tutorial's name for it (sequential, threading, multiprocessing,
    asyncio); ``sample``: run on the first ``sample`` items only and the time scaled to the
    case's size (a sequential run too long to wait for)."""

    key: str
    label: str
    pillar: str
    run: object
    baseline: bool = False
    sample: int | None = None
    is_map: bool = False


@dataclasses.dataclass
class Case:
    """One experiment at one size: its variants, and how a result is checked.

    ``check(result, variant)`` returns a sentence saying what was verified, or raises
    CheckFailed; ``setup()`` makes what each run gets (``ctx``, e.g. a temporary
    directory) before the clock starts, ``teardown(ctx)`` removes it after the check."""

    experiment: str
    size: int
    title: str
    variants: list
    check: object
    setup: object = None
    teardown: object = None


class CheckFailed(Exception):
    """A variant's result is not what the server sent or the sieve says."""


@dataclasses.dataclass
class Row:
    """One measured variant: a line of the table and of --json."""

    experiment: str
    size: int
    variant: str
    pillar: str
    seconds: float | None
    speedup: float | None
    cpu: float | None
    ok: bool
    check: str
    estimated: bool = False
    measured_items: int | None = None
    chose: str | None = None
    is_map: bool = False
    baseline: bool = False
    key: str = ""

    def as_json(self):
        return {
            "experiment": self.experiment, "variant": self.variant, "key": self.key,
            "pillar": self.pillar, "size": self.size, "seconds": self.seconds,
            "speedup": self.speedup, "cpu_cores": self.cpu,
            "result_check": {"ok": self.ok, "detail": self.check},
            "estimated": self.estimated, "measured_items": self.measured_items,
            "braid_map_chose": self.chose,
        }


def _cpu_seconds():
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class _Capture(logging.Handler):
    """The lines braid logs to the "braid" logger at INFO while a variant runs: braid.map's
    explanation of its choice is one (the line explain=True prints)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        try:
            self.lines.append(record.getMessage())
        except Exception:
            pass

    def __enter__(self):
        self.logger = logging.getLogger("braid")
        self.level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)
        return False

    def explain(self):
        lines = [line for line in self.lines if line.startswith("braid.map")]
        return lines[-1] if lines else None


def run_variant(case, variant, server_cpu):
    """Runs one variant once: its Row (speedup not filled in yet)."""
    ctx = case.setup() if case.setup else None
    try:
        gc.collect()
        result = None
        with _Capture() as cap:
            srv0, cpu0, t0 = server_cpu(), _cpu_seconds(), time.perf_counter()
            try:
                result = variant.run(ctx)
                error = None
            except Exception as exc:
                error = why(exc)
            wall = time.perf_counter() - t0
            cpu = max(0.0, _cpu_seconds() - cpu0 - (server_cpu() - srv0))
        if error is None:
            try:
                detail, ok = case.check(result, variant, ctx), True
            except CheckFailed as exc:
                detail, ok = f"wrong result: {exc}", False
        else:
            detail, ok = error, False
        result = None
    finally:
        if case.teardown:
            case.teardown(ctx)
    scale = case.size / variant.sample if variant.sample else 1.0
    return Row(experiment=case.experiment, size=case.size, variant=variant.label,
               pillar=variant.pillar, seconds=wall * scale if ok else None, speedup=None,
               cpu=cpu / wall if ok and wall > 0 else None, ok=ok, check=detail,
               estimated=bool(variant.sample), measured_items=variant.sample,
               chose=cap.explain(), is_map=variant.is_map, baseline=variant.baseline,
               key=variant.key)


def run_case(case, progress, server_cpu, repeat=1):
    """Every variant of a case, in order; the rows, with speedups against the baseline.
    With ``repeat`` > 1 each variant runs that many times in a row and its fastest run is
    kept (a run that fails is what the row shows)."""
    rows = []
    base = None
    for variant in case.variants:  # the baseline first: the speedups are printed live
        row = None
        for r in range(repeat):
            of = f" (run {r + 1}/{repeat})" if repeat > 1 else ""
            progress.start(f"{case.experiment} {case.size:,}: {variant.label}{of}")
            got = run_variant(case, variant, server_cpu)
            if not got.ok:
                row = got
                break
            if row is None or got.seconds < row.seconds:
                row = got
        if row.baseline and row.ok:
            base = row
        if base is not None and row.seconds:
            row.speedup = base.seconds / row.seconds
        rows.append(row)
        progress.finish(row)
    return rows


class Progress:
    """What the user sees while the demo runs: a line per variant as it ends (stdout), and
    while one runs, a tqdm bar on stderr naming it with its time so far (when stderr is a
    terminal). A small thread redraws the bar twice a second so the clock moves.

    ``single_threaded()`` stops that thread for a while (tqdm's own monitor thread is never
    started): the tutorial's multiprocessing.Pool forks this process, and a fork taken
    while another thread holds a lock (tqdm's, stderr's) can leave the child stuck on it."""

    def __init__(self, total, out=None):
        from tqdm import tqdm

        class Bar(tqdm):
            monitor_interval = 0  # no monitor thread

        self.out = out or sys.stdout
        self.bar = Bar(total=total, file=sys.stderr, disable=None, leave=False, unit="run",
                       bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} runs, {elapsed}")
        self._stop = threading.Event()
        self._ticker = None
        self._tick_start()

    def _tick_start(self):
        if self.bar.disable or self._ticker is not None:
            return
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="braid-demo-progress", daemon=True)
        self._ticker.start()

    def _tick_stop(self):
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None

    def _tick(self):
        while not self._stop.wait(0.5):
            self.bar.refresh()

    @contextlib.contextmanager
    def single_threaded(self):
        self._tick_stop()
        try:
            yield
        finally:
            self._tick_start()

    def start(self, what):
        self.bar.set_description_str(what, refresh=True)

    def say(self, line=""):
        self.bar.write(line, file=self.out)

    def finish(self, row):
        self.bar.update(1)
        self.say(format_live(row))

    def close(self):
        self._tick_stop()
        self.bar.close()


def format_live(row):
    """The line printed as a variant ends."""
    from .report import _secs, speedup

    if not row.ok:
        return f"  {row.variant:<44} FAILED: {row.check}"
    wall = ("~" if row.estimated else "") + _secs(row.seconds)
    speed = speedup(row.speedup) if row.speedup else ""
    return f"  {row.variant:<44} {wall:>9} {speed:>8}  CPU {row.cpu:4.2f}  {row.check}"
