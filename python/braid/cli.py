"""The braid command line: ``python -m braid``.

    python -m braid                     version, then a quick thread-pool comparison
    python -m braid --version           the version
    python -m braid demo [ARGS]         the tutorial's three experiments, measured here
    python -m braid bench               the list of benchmarks
    python -m braid bench NAME [ARGS]   run one (python -m braid bench NAME --help)

The bare command is the headline of the thread-pool benchmark, small enough to
take a second or two; the demo (braid.demo) is the longer story.
"""

import shlex
import sys

USAGE = """\
usage: python -m braid [--version | --help]
       python -m braid demo [ARGS...]
       python -m braid bench [NAME [ARGS...]]

  (no arguments)         print the version and a quick thread-pool comparison
  demo [ARGS...]         the tutorial's three experiments replayed on this machine
                         (demo --help for its options)
  bench                  list the benchmarks
  bench NAME [ARGS...]   run benchmark NAME (bench NAME --help for its options)
  --version              print the version
"""

# The quick comparison: big enough that thread start-up is noise, small
# enough for about a second on a 2-core machine.
DEMO_TASKS = 20_000
DEMO_REPEAT = 3


def _version():
    braid = sys.modules.get("braid")
    return getattr(braid, "__version__", "unknown")


def _list_benchmarks(out):
    from braid.bench import BENCHMARKS

    print("benchmarks (run one with: python -m braid bench NAME [--help]):", file=out)
    width = max(len(name) for name in BENCHMARKS)
    for name, (_, about) in BENCHMARKS.items():
        print(f"  {name.ljust(width)}  {about}", file=out)


def _bench(args, command):
    from braid.bench import BENCHMARKS, get

    if not args:
        _list_benchmarks(sys.stdout)
        return 0
    name, rest = args[0], args[1:]
    if name in ("-h", "--help"):
        _list_benchmarks(sys.stdout)
        return 0
    if name not in BENCHMARKS:
        print(f"error: unknown benchmark {name!r}", file=sys.stderr)
        _list_benchmarks(sys.stderr)
        return 2
    return get(name).main(rest, command=command)


def _demo():
    from braid.bench import threadpool as tp

    print(f"braid {_version()}")
    try:
        braid_pool, _ = tp.load_braid()
    except tp.BraidMissing as exc:
        print(f"error: {tp.BRAID_NAME} is not available: {exc}", file=sys.stderr)
        return 1
    workers = tp.default_workers()
    print(f"\nthread pool: {DEMO_TASKS} no-op tasks submitted, then each .result() "
          f"(best of {DEMO_REPEAT}, max_workers={workers} for both)", flush=True)
    (row,) = tp.run_cases(["noop_bulk"], tasks=DEMO_TASKS, repeat=DEMO_REPEAT,
                          workers=workers, io_workers=tp.DEFAULT_IO_WORKERS,
                          braid_pool=braid_pool)
    width = max(len(tp.STDLIB_NAME), len(tp.BRAID_NAME))
    print(f"  {tp.STDLIB_NAME.ljust(width)}  {row['stdlib_us_per_task']:7.2f} µs/task")
    ratio = row["ratio"]
    if 0.95 <= ratio <= 1.05:
        verdict = "about the same"
    elif ratio > 1:
        verdict = f"{ratio:.1f}x faster"
    else:
        verdict = f"{1 / ratio:.1f}x slower"
    print(f"  {tp.BRAID_NAME.ljust(width)}  {row['braid_us_per_task']:7.2f} µs/task  ({verdict})")
    print("\nthe full comparison (map, round trips, sleep and socket I/O):"
          "\n  python -m braid bench threadpool"
          "\nthe tutorial's three experiments (downloads, primes, fetches) on this machine:"
          "\n  python -m braid demo")
    return 0


def main(argv=None):
    """Entry point of ``python -m braid``; returns the exit status."""
    if argv is None:
        argv = sys.argv[1:]
        command = shlex.join(getattr(sys, "orig_argv", ["python", "-m", "braid", *argv]))
    else:
        command = shlex.join(["python", "-m", "braid", *argv])
    if not argv:
        return _demo()
    cmd, rest = argv[0], argv[1:]
    if cmd in ("-V", "--version"):
        print(f"braid {_version()}")
        return 0
    if cmd in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if cmd == "bench":
        return _bench(rest, command)
    if cmd == "demo":
        from braid.demo import main as demo_main

        return demo_main(rest, command=command)
    print(f"error: unknown command {cmd!r}\n", file=sys.stderr)
    print(USAGE, end="", file=sys.stderr)
    return 2
