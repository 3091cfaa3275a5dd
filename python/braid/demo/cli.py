"""The demo's options and its run: python -m braid demo --help.

Every option is checked before anything runs, so a bad one costs nothing and leaves
nothing behind: it is named on stderr with what is wrong, and the exit status is 2. The
--json and --plot files are written at the end, each whole or not at all. The exit status
is 1 when a variant's result was wrong or it failed, else 0.
"""

import argparse
import os
import platform
import shlex
import sys
import time

EXPERIMENTS = ("downloads", "primes", "fetches")
DEFAULTS = {"downloads": 3, "file_size": 1 << 20, "latency": 200,
            "primes": [100_000, 2_000_000], "fetches": [3, 10_000], "fetch_latency": 20,
            "connections": 100}
QUICK = {"primes": [100_000, 500_000], "fetches": [3, 2_000]}

DESCRIPTION = """\
The tutorial's three experiments, replayed on this machine with every result checked:
downloads (threads), primes (processes) and fetches (asyncio), each the tutorial's own
code next to braid's; then the tutorial's comparison table with measured columns and its
rule of thumb as measured here. Nothing leaves the machine: the files and pages come from
an HTTP server on 127.0.0.1 run by a braid.Loop in a thread of this process.

The default run takes well under a minute on 2 cores; --quick about 15 seconds."""

EPILOG = """\
sizes: --downloads, --file-size, --primes, --fetches and --connections take positive
whole numbers (--primes and --fetches a comma-separated list); the latencies take
milliseconds, 0 or more. Explicit sizes win over --quick's.

Without the demo extra (pip install 'braid[demo]': requests, aiohttp, matplotlib) the
demo still runs: urllib in place of requests, asyncio streams in place of aiohttp, and no
--plot."""


class _Error(Exception):
    """A bad option, found after argparse: exit status 2."""


def _positive(text):
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _positive_list(text):
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers")
    return sorted(set(_positive(p) for p in parts))


def _millis(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of milliseconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a latency is 0 ms or more")
    return value


def _only(text):
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown experiment{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown)) or repr(text)}; choose from {', '.join(EXPERIMENTS)}")
    return [e for e in EXPERIMENTS if e in names]


def build_parser(prog="python -m braid demo"):
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smaller sizes (primes 1..100,000 and 1..500,000; fetches 3 and 2,000): "
                        "about 15 s in all")
    p.add_argument("--only", type=_only, metavar="LIST", default=list(EXPERIMENTS),
                   help="the experiments to run, comma-separated: downloads,primes,fetches")
    p.add_argument("--repeat", type=_positive, metavar="N", default=1,
                   help="run each variant N times in a row and keep its fastest run (1); "
                        "on a busy machine the fastest is the least disturbed")
    p.add_argument("--json", metavar="FILE", help="write every row (experiment, variant, size, "
                   "seconds, speedup, result check) to FILE as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw a panel per experiment, a bar per "
                   "variant, into a PNG (needs matplotlib)")
    g = p.add_argument_group("sizes")
    g.add_argument("--downloads", type=_positive, metavar="N", help="files to download (3)")
    g.add_argument("--file-size", type=_positive, metavar="BYTES",
                   help="bytes per file (1048576: 1 MiB)")
    g.add_argument("--latency", type=_millis, metavar="MS",
                   help="the server's delay before each file (200 ms)")
    g.add_argument("--primes", type=_positive_list, metavar="N[,N...]",
                   help="is_prime over 1..N for each N (100000,2000000)")
    g.add_argument("--fetches", type=_positive_list, metavar="N[,N...]",
                   help="pages to fetch, a run per N (3,10000)")
    g.add_argument("--fetch-latency", type=_millis, metavar="MS",
                   help="the server's delay before each page (20 ms)")
    g.add_argument("--connections", type=_positive, metavar="N",
                   help="aiohttp's connection limit, and the threads fetching pages (100: "
                        "aiohttp's default, which the tutorial's code uses)")
    return p


def _writable_file(option, path):
    """Checks, before anything runs, that ``path`` can be written: its directory exists and
    is writable, and it is not a directory itself."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise _Error(f"{option} {path}: is a directory")
    if not os.path.isdir(folder):
        raise _Error(f"{option} {path}: the directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _Error(f"{option} {path}: the directory {folder} is not writable")


def parse(argv, clients=None):
    """The options, checked; raises SystemExit(2) (argparse) or _Error for a bad one."""
    args = build_parser().parse_args(argv)
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK.get(name, value) if args.quick else value)
    if args.json:
        _writable_file("--json", args.json)
    if args.plot:
        _writable_file("--plot", args.plot)
        if clients is not None and not clients.matplotlib:
            raise _Error("--plot needs matplotlib, which is not installed: "
                         "pip install 'braid[demo]' (or pip install matplotlib)")
    if args.json and args.plot and os.path.abspath(args.json) == os.path.abspath(args.plot):
        raise _Error("--json and --plot name the same file")
    return args


# ---- the run ---------------------------------------------------------------------------------

def _raise_fd_limit():
    """The soft limit of open files raised to the hard one: thousands of connections (two
    descriptors each here, client and server in one process) must not meet a soft limit of
    1,024. Returns a sentence saying what it is."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or (want != resource.RLIM_INFINITY and soft >= want):
        return f"open files: soft limit {_lim(soft)} (already the hard limit)"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError) as exc:
        return f"open files: soft limit {_lim(soft)} (raising it to {_lim(want)} failed: {exc})"
    return f"open files: soft limit raised from {_lim(soft)} to {_lim(want)} (the hard limit)"


def _lim(n):
    import resource

    return "unlimited" if n == resource.RLIM_INFINITY else f"{n:,}"


def _loopback_only():
    """requests and urllib take proxies from the environment: 127.0.0.1 must never go to
    one (aiohttp ignores the environment unless asked)."""
    for var in ("no_proxy", "NO_PROXY"):
        have = [h for h in os.environ.get(var, "").split(",") if h.strip()]
        os.environ[var] = ",".join(have + [h for h in ("127.0.0.1", "localhost") if h not in have])


def _machine():
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "platform": f"{platform.system()} {platform.machine()}", "cpu_count": os.cpu_count(),
            "cpus_usable": usable, "load_average_1min": load,
            "editable_install": any(n.endswith("_editable_loader") for n in sys.modules)}


def main(argv=None, *, command=None):
    if argv is None:
        argv = sys.argv[1:]
    if command is None:
        command = shlex.join(["python", "-m", "braid", "demo", *argv])
    from .clients import Clients

    clients = Clients()
    try:
        opts = parse(argv, clients)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, message printed)
        return exc.code if isinstance(exc.code, int) else 2
    except _Error as exc:
        print(f"python -m braid demo: error: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(opts, clients, command)
    except KeyboardInterrupt:
        print("\ninterrupted: nothing written", file=sys.stderr)
        return 130


def _experiment(name, make, opts, clients, progress, cases, rows):
    """Runs one experiment's cases, adding to ``cases`` and ``rows``; an exit status on an
    error that stops the demo, else None.

    The HTTP server runs only while an experiment that needs it does: the primes run with
    no other thread in this process, since the tutorial's multiprocessing.Pool forks it."""
    from .measure import run_case

    server = None
    if name in ("downloads", "fetches"):
        from .server import Server

        try:
            server = Server()
        except RuntimeError as exc:
            print(f"python -m braid demo: error: {exc}", file=sys.stderr)
            return 1
    try:
        mine = make(opts, server, clients)
        for case in mine:
            progress.say("")
            progress.say(case.title)
            if server is not None:
                rows += run_case(case, progress, server.cpu_seconds, opts.repeat)
            else:
                with progress.single_threaded():
                    rows += run_case(case, progress, lambda: 0.0, opts.repeat)
        cases += mine
    finally:
        if server is not None:
            server.close()
    return None


def _run(opts, clients, command):
    import braid

    from . import report
    from .measure import Progress

    machine = _machine()
    limits = _raise_fd_limit()
    _loopback_only()
    out = sys.stdout
    print(f"braid {braid.__version__} demo: the tutorial's three experiments, replayed on this "
          "machine", file=out)
    load = machine["load_average_1min"]
    print(f"  Python {machine['python']} ({machine['implementation']}), {machine['platform']}, "
          f"{machine['cpus_usable']} CPU(s) usable" + (f", load average {load:.1f}" if load is not None else ""),
          file=out)
    print(f"  clients: {clients.blocking_name} for blocking calls, {clients.async_name} for "
          f"coroutines; {limits}", file=out)
    if machine["editable_install"]:
        print("  braid is an editable install: each new worker process pays a rebuild check "
              "(~50 ms); quote figures from a regular install", file=out)
    if "downloads" in opts.only or "fetches" in opts.only:
        print("  server: HTTP on 127.0.0.1 (a port the kernel picks), a braid.Loop in a background "
              "thread of this process, while the downloads and fetches run", file=out)
    for line in clients.left_out:
        print(f"  note: {line}", file=out)

    from . import downloads, fetches, primes

    makers = {"downloads": downloads.cases, "primes": primes.cases, "fetches": fetches.cases}
    runs = {"downloads": 4, "primes": 4 * len(opts.primes), "fetches": 5 * len(opts.fetches)}
    rows, cases = [], []
    progress = Progress(sum(runs[name] for name in opts.only) * opts.repeat, out)
    try:
        for name in opts.only:
            status = _experiment(name, makers[name], opts, clients, progress, cases, rows)
            if status:
                return status
    finally:
        progress.close()

    print("", file=out)
    print(report.table(cases, rows, opts.repeat), file=out)
    rule = report.rule_of_thumb(rows, opts)
    if rule:
        print("\nthe rule of thumb, as measured here:", file=out)
        for line in rule:
            print(f"  {line}", file=out)
    chose = report.map_choices(rows)
    if chose:
        print("\nwhat braid.map chose (auto mode; its explain=True line below each):", file=out)
        for line in chose:
            print(f"  {line}", file=out)
    if clients.left_out:
        print("\nleft out:", file=out)
        for line in clients.left_out:
            print(f"  {line}", file=out)
    failed = [r for r in rows if not r.ok]

    if opts.json:
        document = {
            "braid": braid.__version__, "command": command, "machine": machine,
            "clients": {"blocking": clients.blocking_name, "async": clients.async_name},
            "options": {k: getattr(opts, k) for k in ("quick", "only", "repeat", *DEFAULTS)},
            "rows": [r.as_json() for r in rows],
            "rule_of_thumb": rule, "braid_map": chose, "left_out": clients.left_out,
            "ok": not failed,
        }
        report.write_json(opts.json, document)
        print(f"\nrows written to {opts.json}", file=out)
    if opts.plot:
        from .plot import plot

        runs = "one run each" if opts.repeat == 1 else f"the fastest of {opts.repeat} runs each"
        subtitle = (f"{command} on {machine['cpus_usable']} CPU(s), Python {machine['python']}, "
                    f"braid {braid.__version__} ({runs}; bars: speedup against sequential, "
                    "labels: wall time)")
        plot(opts.plot, rows, subtitle)
        print(f"plot written to {opts.plot}", file=out)
    if failed:
        print(f"\n{len(failed)} variant(s) failed or gave a wrong result: see the table",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
