"""The idle-connections case of ``python -m braid bench loop`` (``--cases idle``).

A Protocol server runs in a child process on the loop under test, pinned to the server CPU;
a client (C, loop_c/idleclient.c, the same for every loop) pinned to the other CPU opens N
connections one after the other and sends one byte on each. The server reads its own RSS
(/proc/self/statm) before the first connection and again when the N-th byte has been
received, with the garbage collector on, as a user's server runs. Printed per loop:

  KiB/conn   (RSS after - RSS before) / N: what an idle connection costs the server
  accept s   from the server's first connection_made to its N-th data_received
  cpu µs/c   the server's CPU time (all its threads) over that burst, per connection: what
             the loop itself costs, steadier than the wall time on a shared machine
  1st K, last K µs/c wall / cpu
             the wall and the server CPU time per connection over the first K and the last
             K bytes received (K = 1,000, or N/5 when N is small): with the count of open
             connections growing, a loop whose per-connection cost grows shows it here
  in gc s    the time the server spent in the cyclic collector during the burst (gc.callbacks)
  busy s / c the CPU time / wall time of the server and of the client over the burst

The goals: memory per idle connection ≤ uvloop's; the time to
accept the burst ≤ uvloop's, and flat per connection as the count grows (here: the last K's
CPU per connection at most FLAT_MAX times the first K's). The accept-time goal is judged on the
server's CPU per connection, with the wall-time ratio beside it: on loopback the client's
connect() pays the kernel's handshake for both ends, about 25-30 µs per connection on one
CPU, so a server faster than that (uvloop) waits for the client and its wall time is the
client's pace, not its own. The CPU figure is also the one a machine shared with other work
leaves comparable.

The client never has more than WINDOW connections the server has not read from (the server
tells it through a pipe), so the kernel's accept queue never overflows: a dropped SYN
returns only after the one-second retransmission timer, and the figure would measure that
timer. Both processes raise RLIMIT_NOFILE to N plus a margin; a case whose N does not fit
under the hard limit fails with that message in its cell.

Each figure is the median of the repeats (contenders interleaved, forward then reverse).
"""

import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_CONNS = (10_000, 15_000)
QUICK_CONNS = (500,)
MARK = 1_000  # K: the first and last K connections give the per-connection trend
BACKLOG = 4096  # the listen backlog asked for (the kernel caps it at net.core.somaxconn)
WINDOW = 1_000  # connections the client may have open that the server has not read from
STEP = 50  # the server reports progress every STEP bytes received
FD_MARGIN = 64  # descriptors beyond one per connection (std streams, the loop's own, ...)
FLAT_MAX = 1.25  # "flat per connection": the last K's CPU per connection at most this many
#                  times the first K's
START_SLACK_S = 60.0  # seconds beyond a generous 2 ms per connection before a run is killed


def mark_for(n):
    return min(MARK, max(1, n // 5))


def raise_nofile(n):
    """Raises this process's RLIMIT_NOFILE soft limit to n + FD_MARGIN; the limit, or
    OSError whose message says why it cannot."""
    need = n + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise OSError(f"RLIMIT_NOFILE hard limit {hard} is below the {need} descriptors "
                          f"{n:,} connections need (raise it: ulimit -Hn, limits.conf)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return need


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------ the server (child side)

class _Burst:
    """What the server counts: the same plain Python on every loop."""

    def __init__(self, n, progress_fd, done):
        self.n = n
        self.k = mark_for(n)
        self.progress_fd = progress_fd
        self.done = done
        self.received = 0
        self.first = None
        self.cpu_first = None
        self.marks = {}
        self.gc_s = 0.0
        self._gc_t0 = None

    def on_gc(self, phase, info):
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        elif self._gc_t0 is not None:
            self.gc_s += time.perf_counter() - self._gc_t0
            self._gc_t0 = None


class IdleProtocol(asyncio.Protocol):
    """Keeps its transport, as a server's protocol does, and counts the byte it gets."""

    def __init__(self, burst):
        self.burst = burst
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        if self.burst.first is None:
            self.burst.first = time.perf_counter()
            self.burst.cpu_first = time.process_time()

    def data_received(self, data):
        b = self.burst
        b.received += 1
        n = b.received
        if n % STEP == 0:
            os.write(b.progress_fd, b".")
        if n == b.k or n == b.n - b.k or n == b.n:
            b.marks[n] = (time.perf_counter(), time.process_time(), b.gc_s)
            if n == b.n and not b.done.done():
                b.done.set_result(None)


async def _serve_idle(n, progress_fd):
    loop = asyncio.get_running_loop()
    burst = _Burst(n, progress_fd, loop.create_future())
    server = await loop.create_server(lambda: IdleProtocol(burst), "127.0.0.1", 0,
                                      backlog=BACKLOG)
    port = server.sockets[0].getsockname()[1]
    gc.collect()
    gen2_before = gc.get_stats()[2]["collections"]
    rss_before = rss_bytes()
    gc.callbacks.append(burst.on_gc)
    print(f"port {port}", flush=True)
    await burst.done
    cpu_s = time.process_time() - burst.cpu_first
    rss_after = rss_bytes()
    gc.callbacks.remove(burst.on_gc)
    os.close(progress_fd)
    k = burst.k
    print(json.dumps({
        "event": "done", "conns": n, "k": k, "rss_before": rss_before, "rss_after": rss_after,
        "accept_s": burst.marks[n][0] - burst.first,
        "first_k_s": burst.marks[k][0] - burst.first,
        "last_k_s": burst.marks[n][0] - burst.marks[n - k][0],
        "first_k_cpu_s": burst.marks[k][1] - burst.cpu_first,
        "last_k_cpu_s": burst.marks[n][1] - burst.marks[n - k][1],
        "first_k_gc_s": burst.marks[k][2],
        "last_k_gc_s": burst.marks[n][2] - burst.marks[n - k][2],
        "gc_s": burst.gc_s,
        "server_cpu_s": cpu_s,
        "gen2": gc.get_stats()[2]["collections"] - gen2_before,
        "gc_enabled": gc.isenabled(),
    }), flush=True)
    await loop.create_future()  # holds the connections until killed


def serve(loop_key, n, progress_fd):
    """Child process: the idle server on loop_key; prints "port N", then one JSON line."""
    from braid.bench import loop as L

    try:
        raise_nofile(n)
    except OSError as exc:
        print(f"idle server: {exc}", file=sys.stderr)
        return 2
    kind = L.load_loop(loop_key)
    if kind.missing:
        print(f"{kind.label} {kind.why}", file=sys.stderr)
        return 3
    L.run_on(kind.factory, _serve_idle(n, progress_fd))
    return 0


# ------------------------------------------------------------------ one run (parent side)

def idle_once(kind, n, *, cpus, exes):
    """One burst of n connections against a new server on kind: the server's figures."""
    from braid.bench import loop as L

    raise_nofile(n)  # fails clearly here, before any child starts
    rfd, wfd = os.pipe()
    server = client = None
    try:
        argv = [sys.executable, "-m", "braid.bench._loop_idle", "--serve", kind.key, str(n),
                str(wfd)]
        server = L.Server(kind.key, argv, cpus[0], env=L._child_env(), pass_fds=(wfd,))
        os.close(wfd)
        wfd = None
        client = L._spawn([exes["idleclient"], "127.0.0.1", str(server.port), str(n),
                           str(WINDOW), str(rfd), str(STEP)], cpus[1],
                          stdin=subprocess.PIPE, pass_fds=(rfd,))
        os.close(rfd)
        rfd = None
        deadline = time.monotonic() + START_SLACK_S + n * 0.002
        try:
            line = L._read_line(server.proc, deadline)
        except TimeoutError:
            # a client that died first is the likelier cause: say so
            if client.poll() is not None:
                raise L._Failed(L._why_gone(client, "client")) from None
            raise L._Failed(L._why_gone(server.proc, "server timed out;")) from None
        if line is None:
            raise L._Failed(L._why_gone(server.proc, "server"))
        got = json.loads(line)
        if got.get("event") != "done":
            raise L._Failed(f"server said {line!r}")
        try:
            opened = L._read_line(client, deadline)
        except TimeoutError:
            opened = None
        if not opened or json.loads(opened).get("event") != "open":
            raise L._Failed(L._why_gone(client, "client"))
        client_cpu_s = L._proc_cpu_s(client.pid)  # it only waits from now on
        server.check_alive()
    finally:
        for fd in (rfd, wfd):
            if fd is not None:
                os.close(fd)
        if client is not None:
            L._stop(client)
        if server is not None:
            server.close()
    k = got["k"]
    return {
        "kib_per_conn": (got["rss_after"] - got["rss_before"]) / n / 1024,
        "accept_s": got["accept_s"],
        "first_us": got["first_k_s"] / k * 1e6,
        "last_us": got["last_k_s"] / k * 1e6,
        "first_cpu_us": got["first_k_cpu_s"] / k * 1e6,
        "last_cpu_us": got["last_k_cpu_s"] / k * 1e6,
        "first_k_gc_s": got["first_k_gc_s"],
        "last_k_gc_s": got["last_k_gc_s"],
        "gc_s": got["gc_s"],
        "gen2": got["gen2"],
        "cpu_us": got["server_cpu_s"] / n * 1e6,
        "server_busy": got["server_cpu_s"] / got["accept_s"],
        "client_busy": client_cpu_s / json.loads(opened)["seconds"],
        "rss_before": got["rss_before"],
        "rss_after": got["rss_after"],
        "gc_enabled": got["gc_enabled"],
        "k": k,
    }


FIELDS = ("kib_per_conn", "accept_s", "cpu_us", "first_us", "last_us", "first_cpu_us",
          "last_cpu_us", "gc_s", "gen2", "server_busy",
          "client_busy")


def run_idle(loops, conns, *, repeat, cpus, exes):
    from braid.bench import loop as L

    live = [k for k in loops if k.missing is None]
    rows = []
    for n in conns:
        runs, errors = L.interleaved_runs(live, repeat,
                                          lambda kind, n=n: idle_once(kind, n, cpus=cpus, exes=exes))
        cells = {}
        for kind in loops:
            cell = {"label": kind.label, "status": "ok", "runs": runs.get(kind.key, [])}
            cell.update({f: None for f in FIELDS})
            if kind.missing:
                cell["status"] = kind.missing
            elif kind.key in errors:
                cell["status"] = f"error: {errors[kind.key]}"
            elif cell["runs"]:
                for f in FIELDS:
                    cell[f] = statistics.median(v[f] for v in cell["runs"])
                cell["growth"] = (cell["last_cpu_us"] / cell["first_cpu_us"]
                                  if cell["first_cpu_us"] else None)
            else:
                cell["status"] = "no run"
            cells[kind.key] = cell
        _ratios(cells)
        rows.append({"case": "idle", "title": f"idle {n:,} connections", "conns": n,
                     "k": mark_for(n), "repeats": repeat, "goals": _goals(cells),
                     "contenders": cells})
    return rows


def _ratios(cells):
    """braid/uvloop and braid/asyncio (and every loop's against both) of memory and time:
    below 1 is less memory or less time than the reference."""
    for ref in ("uvloop", "asyncio"):
        base = cells.get(ref, {})
        for cell in cells.values():
            for f, short in (("kib_per_conn", "mem"), ("accept_s", "time"), ("cpu_us", "cpu")):
                v, b = cell.get(f), base.get(f)
                cell[f"{short}_vs_{ref}"] = v / b if v and b else None


def _goals(cells):
    from braid.bench import loop as L

    b, u = cells.get("braid"), cells.get("uvloop")
    name = L.BRAID_NAME
    goals = [
        L._goal(f"memory per idle connection: {name} ≤ uvloop's", b, u, "mem_vs_uvloop",
                lambda v: v <= 1.0,
                lambda v: f"{name} at {v:.2f}x uvloop's KiB per connection",
                other="uvloop", name="memory"),
        L._goal(f"time to accept the burst, GC on: {name} ≤ uvloop's (server CPU per "
                f"connection; wall time beside it)", b, u, "cpu_vs_uvloop",
                lambda v: v <= 1.0,
                lambda v: f"{name} at {v:.2f}x uvloop's server CPU per connection (wall time "
                          f"{L._ratio(b.get('time_vs_uvloop'))})",
                other="uvloop", name="accept time"),
    ]
    uv = f" (uvloop {u['growth']:.2f}x)" if u and u.get("growth") else ""
    goals.append(L._goal(f"flat per connection: {name}'s server CPU per connection over the "
                         f"last K at most {FLAT_MAX}x the first K's",
                         b, b, "growth", lambda v: v <= FLAT_MAX,
                         lambda v: f"{name}'s last K at {v:.2f}x its first K's CPU per "
                                   f"connection{uv}",
                         other=name, name="flat"))
    return goals


def format_row(row, out):
    from braid.bench import loop as L

    k = row["k"]
    out.append(f"{row['title']}  [one byte each, a C client, GC on; median of "
               f"{row['repeats']}]")
    L._format_goals(row, out, before=True)
    widths = (12, 8, 8, 8, 13, 13, 7, 4, 11)
    lines = []
    for cell in row["contenders"].values():
        if cell["status"] != "ok":
            lines.append(f"{cell['label'].ljust(widths[0])}  {cell['status']}")
            continue
        lines.append((cell["label"], L._num(cell["kib_per_conn"]), L._num(cell["accept_s"], 3),
                      L._num(cell["cpu_us"], 1),
                      f"{L._num(cell['first_us'], 1)} / {L._num(cell['first_cpu_us'], 1)}",
                      f"{L._num(cell['last_us'], 1)} / {L._num(cell['last_cpu_us'], 1)}",
                      L._num(cell["gc_s"], 3),
                      L._count(cell["gen2"]),
                      f"{L._pct(cell['server_busy'])} / {L._pct(cell['client_busy'])}"
                      + (" !" if (cell["server_busy"] or 0) < L.BUSY_WARN else "")))
    L._table(out, ("loop", "KiB/conn", "accept s", "cpu µs/c", f"1st {_k(k)} µs/c",
                   f"last {_k(k)} µs/c", "in gc s", "gen2", "busy s / c"), widths, lines)
    b = row["contenders"].get("braid", {})
    for ref, name in (("uvloop", "uvloop"), ("asyncio", "asyncio")):
        if b.get("status") == "ok" and row["contenders"].get(ref, {}).get("status") == "ok":
            out.append(f"  {L.BRAID_NAME} / {name}: memory {L._ratio(b[f'mem_vs_{ref}'])}, "
                       f"accept time {L._ratio(b[f'time_vs_{ref}'])}, "
                       f"server CPU {L._ratio(b[f'cpu_vs_{ref}'])}")
    L._format_goals(row, out, before=False)


def _k(k):
    return f"{k // 1000}k" if k % 1000 == 0 else str(k)


FOOTER = ("idle: KiB/conn = server RSS growth / connections; accept s = first connection_made "
          "to the last byte received; cpu µs/c = the server's CPU time over the burst per "
          "connection; 1st/last K µs/c = wall / server CPU time per connection over the first "
          "and the last K; gen2 = full "
          "collections during the burst; braid.Loop / uvloop, / asyncio: the ratio of the "
          "figures (below 1: less); busy s / c = "
          "CPU time / wall time of the server and the client over the burst (! server below "
          "80%: it waited for the client or shared its CPU)")


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 4 and args[0] == "--serve":
        return serve(args[1], int(args[2]), int(args[3]))
    print("usage: python -m braid.bench._loop_idle --serve LOOP CONNS PROGRESS_FD "
          "(run by python -m braid bench loop --cases idle)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
