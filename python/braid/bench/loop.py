"""braid.Loop against asyncio's own loop and uvloop, with a plain C server as the floor, in one run.

    python -m braid bench loop [--quick] [--repeat N] [--sizes 1,10,100] [--cases LIST] [--json]

Contenders: asyncio's loop (SelectorEventLoop, what asyncio.run uses on Linux),
uvloop (from PyPI; "not installed" without it) and braid.Loop (its cells read
"not available" until braid has a Loop). Each is run the way its users run it:
``asyncio.run(main(), loop_factory=...)`` on Python 3.12+, ``factory()`` and
``run_until_complete`` on 3.11.

Cases:

  echo       an echo server and a load generator in separate processes, the
             server pinned to one CPU and the generator to another. The
             generator (C, epoll; loop_c/loadgen.c) keeps 10 connections in
             request-response: each sends a message of 1, 10 or 100 KiB and
             waits for the whole echo, compared byte for byte, before it sends
             the next. After a warm-up it counts the round trips of a fixed
             window (3 s; --quick 1 s), and the server's CPU time (utime+stime
             from /proc/<pid>/stat) is read at both ends of the window.
             Servers: a plain C epoll server (loop_c/echo_floor.c, the floor),
             then on each loop an asyncio.Protocol that writes back what it
             receives and a streams handler (asyncio.start_server; read up to
             256 KiB, write, await drain). Printed: round trips/s, server CPU
             µs per round trip, the ratio of that to the floor's, and of the
             round trips/s to uvloop's with the same API.
  call_soon  a callback that schedules the next with loop.call_soon, 200,000
             times, in this process: ns per callback.
  sleep0     two tasks that each await asyncio.sleep(0) in turn, 100,000 steps
             in all, in this process: ns per step.
  udp        a datagram echo protocol and a client protocol on 127.0.0.1, both
             on the loop in this process, handing one 64-byte datagram back and
             forth 20,000 times: ns per round trip (no goal of its own: the
             datagram transport's speed against asyncio's and uvloop's).
  aiohttp    an aiohttp hello-world server (pinned like the echo servers) under
             ``wrk -t1 -c50 -d3s`` (pinned to the other CPU; --quick -d1s) after
             a 1 s warm-up: requests/s and server CPU µs per request. Needs wrk
             (apt-get install wrk) and aiohttp (pip install aiohttp); without
             them the case says what is missing.
  churn      the same server and wrk with ``-H 'Connection: close'``: every
             request on a new connection, so accept, transport set-up and close
             are paid per request.
  idle       a Protocol server holding 10,000 and 15,000 idle connections
             (--idle-conns; --quick 500) that a C client (loop_c/idleclient.c)
             opened in a burst, one byte each: server RSS per connection, the
             time to accept the burst with the GC on, the time per connection
             over the first and last thousand, the time spent in the collector.
             Median of the repeats. Details in braid.bench._loop_idle.

The C programs are compiled at run time with ``cc -O2`` (or $CC) from the
sources installed next to this module, into a cache directory
(~/.cache/braid/bench-loop, or a temporary one). Within every case the
contenders are interleaved repeat by repeat (forward, then reverse order), the
best figure of the repeats is kept (the most round trips or requests per
second, the least CPU per round trip, the least ns per step; the scheduling
cases run at least 3 repeats). Every child process dies with this one and is
killed on an error or a timeout; every port is an ephemeral one of 127.0.0.1.

The goals printed with each case are braid.Loop's targets from the event-loop
issue: Protocol echo at ≤ 1.1x the C floor's server CPU per round trip (uvloop
~1.2x there), streams echo ≥ 1.3x uvloop's round trips/s, scheduling ≥ 1.5x
uvloop's speed, the aiohttp server ≥ 1.15x uvloop's requests/s (≥ 1.3x with a
new connection per request, churn), the idle case's memory per connection and
accept time ≤ uvloop's. Each is checked against this run and reported as met,
not met, or not checked (braid or uvloop missing).
"""

import argparse
import asyncio
import ctypes
import gc
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import braid.bench as _bench
from braid.bench import _cc
from braid.bench import BraidMissing

DEFAULT_REPEAT = 3
QUICK_REPEAT = 1
SCHED_MIN_REPEAT = 3
# (default, --quick)
DURATION_S = (3.0, 1.0)
WARMUP_S = (1.0, 0.3)
WRK_SECONDS = (3, 1)
WRK_WARMUP_SECONDS = 1
CONNECTIONS = 10
SIZES_KIB = (1, 10, 100)
CALL_SOON_N = 200_000
SLEEP0_N = 100_000
UDP_N = 20_000
WRK_THREADS = 1
WRK_CONNECTIONS = 50
STREAMS_READ = 256 * 1024  # what asyncio's transports read at most at once

SERVER_START_TIMEOUT = 60.0  # seconds for a server to print its port
EXIT_TIMEOUT = 5.0  # seconds for a child to exit after SIGTERM before SIGKILL
SLACK_TIMEOUT = 30.0  # seconds beyond its expected run time before a child is killed

CASES = ("echo", "call_soon", "sleep0", "udp", "aiohttp", "churn", "idle")
LOOPS = ("asyncio", "uvloop", "braid")
APIS = ("protocol", "streams")
API_LABELS = {"protocol": "Protocol", "streams": "streams"}
FLOOR = "floor"
FLOOR_LABEL = "C epoll (floor)"
BRAID_NAME = "braid.Loop"
HELLO = b"Hello, World!"
BUSY_WARN = 0.8  # a server busy less than this share of the window gets a "!"

GOAL_PROTOCOL_FLOOR = 1.1  # braid Protocol echo CPU per round trip / the floor's, at most
GOAL_STREAMS_UVLOOP = 1.3  # braid streams round trips/s / uvloop's, at least
GOAL_SCHED_UVLOOP = 1.5  # braid steps/s / uvloop's, at least
GOAL_AIOHTTP_UVLOOP = 1.15  # braid requests/s / uvloop's, at least
GOAL_CHURN_UVLOOP = 1.3  # the same with a new connection per request

C_SOURCES = {"loadgen": "loadgen.c", "echo_floor": "echo_floor.c", "idleclient": "idleclient.c"}
C_CASES = ("echo", "idle")  # the cases that need the C programs


class _Failed(Exception):
    """One measurement failed; its message goes into the contender's cell."""


# What a failed measurement raises (a dead child, a bad line from it, ...): reported in its cell.
_MEASURE_ERRORS = (_Failed, OSError, subprocess.SubprocessError, ValueError, KeyError)


# No C compiler, or the C programs do not build; the echo case cannot run.
_NoCompiler = _cc.NoCompiler


# ------------------------------------------------------------------ loops

class LoopKind:
    """One event loop under test: key (asyncio, uvloop, braid), its label, the
    loop factory and version, or why it cannot be measured: missing is what its
    cells say ("not installed", "not available"), why the whole reason."""

    def __init__(self, key, label, factory=None, version=None, missing=None, why=None):
        self.key = key
        self.label = label
        self.factory = factory
        self.version = version
        self.missing = missing
        self.why = why or missing


def load_loop(key):
    """The LoopKind for key; missing says why when it cannot be had here."""
    if key == "asyncio":
        return LoopKind(key, "asyncio", asyncio.SelectorEventLoop, platform.python_version())
    if key == "uvloop":
        try:
            import uvloop
        except ImportError:
            return LoopKind(key, "uvloop", missing="not installed",
                            why="not installed (pip install uvloop)")
        return LoopKind(key, "uvloop", uvloop.Loop, getattr(uvloop, "__version__", "unknown"))
    if key == "braid":
        try:
            braid = _bench.load_braid("Loop")
        except BraidMissing as exc:
            return LoopKind(key, BRAID_NAME, missing="not available", why=f"not available: {exc}")
        return LoopKind(key, BRAID_NAME, braid.Loop, getattr(braid, "__version__", "unknown"))
    raise ValueError(f"unknown loop {key!r}")


def run_on(factory, coro):
    """Runs coro to completion on a new loop from factory, as users do."""
    if sys.version_info >= (3, 12):
        return asyncio.run(coro, loop_factory=factory)
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


# ------------------------------------------------------------------ servers (child side)

class EchoProtocol(asyncio.Protocol):
    """Writes back whatever it receives."""

    def connection_made(self, transport):
        self.transport = transport
        _nodelay(transport)

    def data_received(self, data):
        self.transport.write(data)


def _nodelay(transport):
    # asyncio and uvloop set TCP_NODELAY on TCP transports already; set it
    # here too so every loop serves the same kind of socket.
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def _echo_streams(reader, writer):
    _nodelay(writer.transport)
    try:
        while True:
            data = await reader.read(STREAMS_READ)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _serve_forever(api):
    loop = asyncio.get_running_loop()
    if api == "protocol":
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
    elif api == "streams":
        server = await asyncio.start_server(_echo_streams, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
    elif api == "aiohttp":
        from aiohttp import web

        async def hello(request):
            return web.Response(body=HELLO, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = runner.addresses[0][1]
    else:
        raise ValueError(f"unknown server api {api!r}")
    print(f"port {port}", flush=True)
    await loop.create_future()  # until killed


def serve(spec):
    """Child process: serves spec ("LOOP:API") on an ephemeral port of 127.0.0.1,
    prints "port N" and runs until killed. Returns an exit status on failure."""
    loop_key, _, api = spec.partition(":")
    kind = load_loop(loop_key)
    if kind.missing:
        print(f"{kind.label} {kind.why}", file=sys.stderr)
        return 3
    run_on(kind.factory, _serve_forever(api))
    return 0


# ------------------------------------------------------------------ child processes (parent side)

_CHILDREN = []
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _LIBC = False
    return _LIBC or None


def _child_setup(cpu):
    """preexec_fn: pin the child to cpu and have it killed when this process dies."""
    libc = _libc()

    def setup():
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if libc is not None:
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG

    return setup


def _spawn(argv, cpu, *, stdin=subprocess.DEVNULL, env=None, pass_fds=()):
    err = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=err, env=env,
                                bufsize=0, close_fds=True, pass_fds=pass_fds,
                                preexec_fn=_child_setup(cpu))
    except BaseException:
        err.close()
        raise
    proc.err_file = err
    proc.out_buf = b""
    _CHILDREN.append(proc)
    return proc


def _stderr_tail(proc, lines=1):
    try:
        proc.err_file.seek(0)
        text = proc.err_file.read().decode(errors="replace").strip()
    except (OSError, ValueError):
        return ""
    return " | ".join(text.splitlines()[-lines:])


def _why_gone(proc, what):
    """The message for a child that ended or said nothing in time."""
    try:
        code = proc.wait(timeout=1.0)  # its output ended: give it a moment to exit
    except subprocess.TimeoutExpired:
        code = None
    tail = _stderr_tail(proc)
    state = "is still running" if code is None else f"exited with status {code}"
    return f"{what} {state}" + (f": {tail}" if tail else "")


def _read_line(proc, deadline):
    """The next line of proc's stdout; None at EOF; TimeoutError past deadline."""
    fd = proc.stdout.fileno()
    while b"\n" not in proc.out_buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        proc.out_buf += chunk
    line, _, proc.out_buf = proc.out_buf.partition(b"\n")
    return line.decode(errors="replace")


def _stop(proc):
    """Ends a child (SIGTERM, then SIGKILL) and releases its pipes and files."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        for f in (proc.stdin, proc.stdout, proc.err_file):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        if proc in _CHILDREN:
            _CHILDREN.remove(proc)


def _stop_all():
    for proc in list(_CHILDREN):
        _stop(proc)


def _proc_cpu_s(pid):
    """utime+stime of process pid (all its threads), in seconds, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError as exc:
        raise _Failed(f"cannot read /proc/{pid}/stat: {exc}") from exc
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child_env():
    """The environment of a Python server: this braid found first on sys.path."""
    import braid

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(braid.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


class Server:
    """A server process pinned to cpu, listening on 127.0.0.1:port."""

    def __init__(self, label, argv, cpu, env=None, pass_fds=()):
        self.label = label
        self.proc = _spawn(argv, cpu, env=env, pass_fds=pass_fds)
        try:
            try:
                line = _read_line(self.proc, time.monotonic() + SERVER_START_TIMEOUT)
            except TimeoutError:
                line = None
            if not line or not line.startswith("port "):
                raise _Failed(_why_gone(self.proc, f"server did not start ({line!r});"
                                        if line else "server did not start:"))
            self.port = int(line.split()[1])
        except BaseException:
            _stop(self.proc)
            raise

    @property
    def pid(self):
        return self.proc.pid

    def check_alive(self):
        if self.proc.poll() is not None:
            raise _Failed(_why_gone(self.proc, "server"))

    def close(self):
        _stop(self.proc)


def start_server(key, cpu, exes):
    """key: "floor", or "LOOP:API" for a Python server on that loop."""
    if key == FLOOR:
        return Server(FLOOR_LABEL, [exes["echo_floor"]], cpu)
    argv = [sys.executable, "-m", "braid.bench.loop", "--serve", key]
    return Server(key, argv, cpu, env=_child_env())


# ------------------------------------------------------------------ compiling the C programs

def source_dir():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "loop_c")


def compiler():
    """The C compiler command (a list), from $CC or `cc`; _NoCompiler if there is none."""
    return _cc.compiler("the echo case (its load generator)")


compiler_version = _cc.compiler_version


def build_programs(cc):
    """{name: path of the executable}, compiled with cc -O2 from loop_c/, cached by source
    and compiler; _NoCompiler says why not."""
    return _cc.build(cc, source_dir(), C_SOURCES, "bench-loop")


def _no_programs(name, why):
    return [{"case": name, "title": name, "skipped": why, "goals": [], "contenders": {}}]


# ------------------------------------------------------------------ echo

def echo_once(exes, server, size, *, connections, warmup, duration, client_cpu):
    """One load-generator run against server: a dict of the measured window."""
    argv = [exes["loadgen"], "127.0.0.1", str(server.port), str(connections), str(size),
            repr(warmup), repr(duration)]
    gen = _spawn(argv, client_cpu, stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + warmup + duration + SLACK_TIMEOUT
        try:
            line = _read_line(gen, deadline)
            if line is None or json.loads(line).get("event") != "start":
                raise _Failed(_why_gone(gen, "load generator"))
            cpu0 = _proc_cpu_s(server.pid)
            line = _read_line(gen, deadline)
            cpu1 = _proc_cpu_s(server.pid)
        except TimeoutError:
            raise _Failed(_why_gone(gen, "load generator timed out;")) from None
        if line is None:
            raise _Failed(_why_gone(gen, "load generator"))
        got = json.loads(line)
        if got.get("event") != "done":
            raise _Failed(f"load generator said {line!r}")
        server.check_alive()
        gen.stdin.close()
        try:
            code = gen.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        if code not in (0, None):
            raise _Failed(_why_gone(gen, "load generator"))
    finally:
        _stop(gen)
    trips = got["round_trips"]
    if trips < 1:
        raise _Failed("no round trip completed in the measured window")
    seconds = got["seconds"]
    server_cpu = cpu1 - cpu0
    return {
        "round_trips": trips,
        "seconds": seconds,
        "rt_per_s": trips / seconds,
        "server_cpu_s": server_cpu,
        "cpu_us_per_rt": server_cpu / trips * 1e6,
        "server_busy": server_cpu / seconds,
        "client_busy": got["client_cpu_s"] / seconds,
    }


def echo_servers(loops):
    """[(key, label, missing)] in table order: the floor, then each loop's Protocol and streams."""
    out = [(FLOOR, FLOOR_LABEL, None)]
    for kind in loops:
        for api in APIS:
            out.append((f"{kind.key}:{api}", f"{kind.label} {API_LABELS[api]}", kind.missing))
    return out


def run_echo(loops, sizes, *, repeat, connections, warmup, duration, cpus, exes):
    servers = echo_servers(loops)
    live = [s for s in servers if s[2] is None]
    runs = {(key, size): [] for key, _, _ in live for size in sizes}
    errors = {}
    for r in range(repeat):
        order = live if r % 2 == 0 else live[::-1]
        for key, label, _ in order:
            todo = [size for size in sizes if (key, size) not in errors]
            server = None
            try:
                for size in todo:
                    try:
                        if server is None:
                            server = start_server(key, cpus[0], exes)
                        runs[(key, size)].append(echo_once(
                            exes, server, size, connections=connections, warmup=warmup,
                            duration=duration, client_cpu=cpus[1]))
                    except _MEASURE_ERRORS as exc:
                        errors[(key, size)] = _describe(exc)
                        if server is not None:
                            server.close()
                            server = None
            finally:
                if server is not None:
                    server.close()
    rows = []
    for size in sizes:
        cells = {}
        for key, label, missing in servers:
            cell = {"label": label, "status": "ok", "rt_per_s": None, "cpu_us_per_rt": None,
                    "server_busy": None, "client_busy": None, "runs": []}
            if missing:
                cell["status"] = missing
            elif (key, size) in errors:
                cell["status"] = f"error: {errors[(key, size)]}"
                cell["runs"] = runs[(key, size)]
            elif runs[(key, size)]:
                rs = runs[(key, size)]
                best = max(rs, key=lambda v: v["rt_per_s"])
                cell.update(rt_per_s=best["rt_per_s"],
                            cpu_us_per_rt=min(v["cpu_us_per_rt"] for v in rs),
                            server_busy=best["server_busy"], client_busy=best["client_busy"],
                            runs=rs)
            else:
                cell["status"] = "no run"
            cells[key] = cell
        _echo_ratios(cells)
        rows.append(_echo_row(size, cells, connections=connections, duration=duration,
                              warmup=warmup, repeat=repeat))
    return rows


def interleaved_runs(live, repeat, measure):
    """Each loop's measurements over `repeat` rounds, the order reversed every other round (no
    loop always runs first, on a fresh or on a warmed-up machine): ({key: [results]},
    {key: why}); a loop whose measurement fails is described once and left out after."""
    runs = {k.key: [] for k in live}
    errors = {}
    for r in range(repeat):
        for kind in live if r % 2 == 0 else live[::-1]:
            if kind.key in errors:
                continue
            try:
                runs[kind.key].append(measure(kind))
            except _MEASURE_ERRORS as exc:
                errors[kind.key] = _describe(exc)
    return runs, errors


def _describe(exc):
    if isinstance(exc, _Failed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _echo_ratios(cells):
    floor = cells[FLOOR]["cpu_us_per_rt"]
    for key, cell in cells.items():
        api = key.partition(":")[2] or "protocol"
        uv = cells.get(f"uvloop:{api}", {}).get("rt_per_s")
        cell["vs_floor_cpu"] = (cell["cpu_us_per_rt"] / floor
                                if cell["cpu_us_per_rt"] and floor else None)
        cell["vs_uvloop_rt"] = cell["rt_per_s"] / uv if cell["rt_per_s"] and uv else None


def _echo_row(size, cells, *, connections, duration, warmup, repeat):
    goals = []
    b, u, f = cells.get("braid:protocol"), cells.get("uvloop:protocol"), cells[FLOOR]
    uv_note = (f"uvloop {u['vs_floor_cpu']:.2f}x" if u and u.get("vs_floor_cpu")
               else "issue: uvloop ~1.2x")
    text = (f"Protocol: {BRAID_NAME} ≤ {GOAL_PROTOCOL_FLOOR}x the C floor's server CPU per "
            f"round trip (issue: uvloop ~1.2x)")
    goals.append(_goal(text, b, f, "vs_floor_cpu", lambda v: v <= GOAL_PROTOCOL_FLOOR,
                       lambda v: f"{BRAID_NAME} Protocol at {v:.2f}x the floor's CPU per round "
                                 f"trip ({uv_note})",
                       other="the C floor", name="Protocol"))
    b, u = cells.get("braid:streams"), cells.get("uvloop:streams")
    text = f"streams: {BRAID_NAME} ≥ {GOAL_STREAMS_UVLOOP}x uvloop's round trips/s"
    goals.append(_goal(text, b, u, "vs_uvloop_rt", lambda v: v >= GOAL_STREAMS_UVLOOP,
                       lambda v: f"{BRAID_NAME} streams at {v:.2f}x uvloop's round trips/s",
                       other="uvloop streams", name="streams"))
    return {
        "case": "echo",
        "size": size,
        "title": f"echo {_fmt_size(size)}",
        "connections": connections,
        "duration_s": duration,
        "warmup_s": warmup,
        "repeats": repeat,
        "goals": goals,
        "contenders": cells,
    }


def _goal(text, braid_cell, other_cell, field, test, describe, *, other, name=None):
    """{name, goal, met, result, value}: met is None when braid or the reference has no
    figure."""
    out = {"name": name, "goal": text, "met": None, "result": None, "value": None}
    if braid_cell is None or braid_cell["status"] != "ok":
        why = braid_cell["status"] if braid_cell else "not measured (--loops)"
        if why.startswith("error"):
            why = "failed (its error is in the table)"
        return dict(out, result=f"not checked: {BRAID_NAME} {why}")
    if other_cell is None or other_cell["status"] != "ok":
        why = other_cell["status"] if other_cell else "not measured (--loops)"
        return dict(out, result=f"not checked: {other} {why}")
    value = braid_cell.get(field)
    if value is None:
        return dict(out, result="not checked: no figure")
    return dict(out, met=bool(test(value)), result=describe(value), value=value)


# ------------------------------------------------------------------ scheduling

async def _call_soon_chain(n):
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = n

    def step():
        nonlocal left
        left -= 1
        if left:
            loop.call_soon(step)
        else:
            done.set_result(None)

    t0 = time.perf_counter()
    loop.call_soon(step)
    await done
    elapsed = time.perf_counter() - t0
    if left != 0:
        raise AssertionError(f"call_soon chain stopped with {left} steps left")
    return elapsed


async def _sleep0_pingpong(n):
    half = n // 2
    count = [0, 0]

    async def player(i):
        for _ in range(half):
            await asyncio.sleep(0)
            count[i] += 1

    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    await asyncio.gather(loop.create_task(player(0)), loop.create_task(player(1)))
    elapsed = time.perf_counter() - t0
    if count != [half, half]:
        raise AssertionError(f"sleep(0) ping-pong counted {count}, expected {half} each")
    return elapsed


async def _udp_pingpong(n):
    """One datagram handed back and forth n times between two endpoints of this loop."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    count = [0]

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)

    class Client(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            count[0] += 1
            if count[0] == n:
                done.set_result(None)
            else:
                self.transport.sendto(data)

        def error_received(self, exc):
            if not done.done():
                done.set_exception(exc)

    server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    client, _ = await loop.create_datagram_endpoint(Client, remote_addr=server.get_extra_info("sockname"))
    try:
        t0 = time.perf_counter()
        client.sendto(b"x" * 64)
        await asyncio.wait_for(done, 120)
        return time.perf_counter() - t0
    finally:
        client.close()
        server.close()


SCHED_CASES = {
    "call_soon": dict(title="call_soon chain", n=CALL_SOON_N, run=_call_soon_chain,
                      about="a callback that schedules the next"),
    "sleep0": dict(title="sleep(0) ping-pong", n=SLEEP0_N, run=_sleep0_pingpong,
                   about="two tasks awaiting asyncio.sleep(0) in turn; steps in all"),
    "udp": dict(title="UDP ping-pong", n=UDP_N, run=_udp_pingpong, goal=False,
                about="a 64-byte datagram between two endpoints on 127.0.0.1; a step is a round trip"),
}


def run_sched(name, loops, *, repeat, cpu):
    case = SCHED_CASES[name]
    n = case["n"] if name != "sleep0" else case["n"] // 2 * 2
    live = [k for k in loops if k.missing is None]
    times = {k.key: [] for k in live}
    errors = {}
    try:
        old_affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        old_affinity = None
    try:
        for r in range(max(repeat, SCHED_MIN_REPEAT)):
            order = live if r % 2 == 0 else live[::-1]
            for kind in order:
                if kind.key in errors:
                    continue
                gc.collect()
                try:
                    times[kind.key].append(run_on(kind.factory, case["run"](n)))
                except Exception as exc:  # a broken loop: reported in its cell
                    errors[kind.key] = f"{type(exc).__name__}: {exc}"
    finally:
        if old_affinity is not None:
            os.sched_setaffinity(0, old_affinity)
    cells = {}
    for kind in loops:
        cell = {"label": kind.label, "status": "ok", "ns_per_step": None, "all_s": []}
        if kind.missing:
            cell["status"] = kind.missing
        elif kind.key in errors:
            cell["status"] = f"error: {errors[kind.key]}"
        elif times[kind.key]:
            cell.update(ns_per_step=min(times[kind.key]) / n * 1e9, all_s=times[kind.key])
        else:
            cell["status"] = "no run"
        cells[kind.key] = cell
    _speed_ratios(cells, "ns_per_step", lower_is_better=True)
    goals = []
    if case.get("goal", True):
        text = f"{BRAID_NAME} ≥ {GOAL_SCHED_UVLOOP}x uvloop's speed"
        goals.append(_goal(text, cells.get("braid"), cells.get("uvloop"), "vs_uvloop",
                           lambda v: v >= GOAL_SCHED_UVLOOP,
                           lambda v: f"{BRAID_NAME} at {v:.2f}x uvloop's speed", other="uvloop"))
    return [{"case": name, "title": case["title"], "n": n, "about": case["about"],
             "repeats": max(repeat, SCHED_MIN_REPEAT), "goals": goals, "contenders": cells}]


def _speed_ratios(cells, field, *, lower_is_better):
    """vs_uvloop and vs_asyncio: how many times faster than uvloop / asyncio (above 1: faster)."""
    for ref in ("uvloop", "asyncio"):
        base = cells.get(ref, {}).get(field)
        for cell in cells.values():
            v = cell.get(field)
            if not (v and base):
                cell[f"vs_{ref}"] = None
            else:
                cell[f"vs_{ref}"] = base / v if lower_is_better else v / base


# ------------------------------------------------------------------ aiohttp under wrk

def _version_of(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return None


def wrk_version():
    path = shutil.which("wrk")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    m = re.search(r"wrk\s+(\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


def aiohttp_missing():
    """Why the aiohttp case cannot run here (what to install), or None."""
    missing = []
    if shutil.which("wrk") is None:
        missing.append("wrk not found (Debian/Ubuntu: apt-get install wrk)")
    if _version_of("aiohttp") is None:
        missing.append("aiohttp not installed (pip install aiohttp)")
    return "; ".join(missing) or None


def _run_wrk(port, seconds, cpu, close=False):
    argv = [shutil.which("wrk"), f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s",
            *(["-H", "Connection: close"] if close else []), f"http://127.0.0.1:{port}/"]
    proc = _spawn(argv, cpu)
    try:
        deadline = time.monotonic() + seconds + SLACK_TIMEOUT
        out = b""
        while True:
            try:
                chunk = _read_chunk(proc, deadline)
            except TimeoutError:
                raise _Failed(_why_gone(proc, "wrk timed out;")) from None
            if not chunk:
                break
            out += chunk
        code = proc.wait(timeout=EXIT_TIMEOUT)
    finally:
        _stop(proc)
    text = out.decode(errors="replace")
    if code != 0:
        raise _Failed(f"wrk exited with status {code}: {text.strip()[-300:]}")
    return _parse_wrk(text)


def _read_chunk(proc, deadline):
    fd = proc.stdout.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            return os.read(fd, 65536)


def _parse_wrk(text):
    m = re.search(r"Requests/sec:\s*([\d.]+)", text)
    n = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", text)
    if not m or not n:
        raise _Failed(f"cannot read wrk's output: {text.strip()[-300:]}")
    seconds = float(n.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[n.group(3)]
    result = {"requests": int(n.group(1)), "seconds": seconds, "req_per_s": float(m.group(1))}
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if bad and int(bad.group(1)):
        raise _Failed(f"{bad.group(1)} responses were not 2xx or 3xx")
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if errs:
        connect, read, write, timeout = map(int, errs.groups())
        if connect or read or write:
            raise _Failed(f"wrk socket errors: connect {connect}, read {read}, write {write}")
        result["timeouts"] = timeout
    if result["requests"] < 1:
        raise _Failed("no request completed")
    return result


def _check_hello(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=SLACK_TIMEOUT) as resp:
        body = resp.read()
    if resp.status != 200 or body != HELLO:
        raise _Failed(f"GET / answered {resp.status} {body[:60]!r}, expected 200 {HELLO!r}")


def aiohttp_once(kind, *, seconds, cpus, warm, close=False):
    server = Server(kind.key, [sys.executable, "-m", "braid.bench.loop", "--serve",
                               f"{kind.key}:aiohttp"], cpus[0], env=_child_env())
    try:
        _check_hello(server.port)
        if warm:
            _run_wrk(server.port, WRK_WARMUP_SECONDS, cpus[1], close)
        cpu0 = _proc_cpu_s(server.pid)
        got = _run_wrk(server.port, seconds, cpus[1], close)
        cpu1 = _proc_cpu_s(server.pid)
        server.check_alive()
    finally:
        server.close()
    got["server_cpu_s"] = cpu1 - cpu0
    got["cpu_us_per_req"] = (cpu1 - cpu0) / got["requests"] * 1e6
    got["server_busy"] = (cpu1 - cpu0) / got["seconds"]
    return got


def run_aiohttp(loops, *, repeat, seconds, cpus, close=False):
    """The aiohttp case; close: the churn case (wrk sends Connection: close)."""
    case = "churn" if close else "aiohttp"
    title = f"aiohttp hello world under wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{seconds}s"
    if close:
        title += " -H 'Connection: close' (a new connection per request)"
    want = GOAL_CHURN_UVLOOP if close else GOAL_AIOHTTP_UVLOOP
    text = f"{BRAID_NAME} ≥ {want}x uvloop's requests/s"
    missing = aiohttp_missing()
    if missing:
        return [{"case": case, "title": title, "skipped": missing,
                 "goals": [{"goal": text, "met": None, "result": f"not checked: {missing}"}],
                 "contenders": {}}]
    live = [k for k in loops if k.missing is None]
    runs, errors = interleaved_runs(
        live, repeat, lambda kind: aiohttp_once(kind, seconds=seconds, cpus=cpus, warm=True, close=close))
    cells = {}
    for kind in loops:
        cell = {"label": kind.label, "status": "ok", "req_per_s": None, "cpu_us_per_req": None,
                "server_busy": None, "runs": []}
        if kind.missing:
            cell["status"] = kind.missing
        elif kind.key in errors:
            cell["status"] = f"error: {errors[kind.key]}"
            cell["runs"] = runs[kind.key]
        elif runs[kind.key]:
            rs = runs[kind.key]
            best = max(rs, key=lambda v: v["req_per_s"])
            cell.update(req_per_s=best["req_per_s"],
                        cpu_us_per_req=min(v["cpu_us_per_req"] for v in rs),
                        server_busy=best["server_busy"], runs=rs)
        else:
            cell["status"] = "no run"
        cells[kind.key] = cell
    _speed_ratios(cells, "req_per_s", lower_is_better=False)
    goal = _goal(text, cells.get("braid"), cells.get("uvloop"), "vs_uvloop",
                 lambda v: v >= want,
                 lambda v: f"{BRAID_NAME} at {v:.2f}x uvloop's requests/s", other="uvloop")
    return [{"case": case, "title": title, "repeats": repeat, "goals": [goal],
             "contenders": cells}]


# ------------------------------------------------------------------ the run

def pick_cpus(server_cpu=None, client_cpu=None):
    """(server CPU, client CPU): CPU 0 and 1 when this process may use them, else the
    first two it may use; both the same when it has only one."""
    try:
        usable = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = [0]
    if server_cpu is None:
        server_cpu = usable[0]
    if client_cpu is None:
        rest = [c for c in usable if c != server_cpu]
        client_cpu = rest[0] if rest else server_cpu
    return server_cpu, client_cpu


def run_cases(names, *, loops, sizes, repeat, connections, warmup, duration, wrk_seconds, cpus,
              exes, no_echo=None, on_case=None, idle_conns=None):
    rows = []
    for name in names:
        if name in C_CASES and exes is None:
            got = _no_programs(name, no_echo)
        elif name == "echo":
            got = run_echo(loops, sizes, repeat=repeat, connections=connections,
                           warmup=warmup, duration=duration, cpus=cpus, exes=exes)
        elif name == "idle":
            from braid.bench import _loop_idle

            got = _loop_idle.run_idle(loops, idle_conns or _loop_idle.DEFAULT_CONNS,
                                      repeat=repeat, cpus=cpus, exes=exes)
        elif name in SCHED_CASES:
            got = run_sched(name, loops, repeat=repeat, cpu=cpus[0])
        else:
            got = run_aiohttp(loops, repeat=repeat, seconds=wrk_seconds, cpus=cpus,
                              close=name == "churn")
        rows.extend(got)
        if on_case is not None:
            on_case(got)
    return rows


def environment(command, loops, *, repeat, quick, sizes, connections, warmup, duration,
                wrk_seconds, cpus, cc_version, exes, idle_conns=None):
    return {
        **_bench.machine(),
        "kernel": platform.release(),
        "server_cpu": cpus[0],
        "client_cpu": cpus[1],
        "command": command,
        "repeat": repeat,
        "quick": quick,
        "sizes": list(sizes),
        "connections": connections,
        "warmup_s": warmup,
        "duration_s": duration,
        "wrk_seconds": wrk_seconds,
        "idle_conns": list(idle_conns or []),
        "cc": cc_version,
        "c_programs": None if exes is None else exes["cache"],
        "aiohttp": _version_of("aiohttp"),
        "wrk": wrk_version(),
        "loops": {k.key: {"label": k.label, "version": k.version, "missing": k.missing,
                          "why": k.why}
                  for k in loops},
    }


def format_header(env):
    cpus = f"{env['cpu_count']} CPUs"
    if env["cpus_usable"] is not None and env["cpus_usable"] != env["cpu_count"]:
        cpus += f" ({env['cpus_usable']} usable)"
    gil = "" if env["gil"] else ", free-threaded"
    loops = []
    for key, v in env["loops"].items():
        if v["missing"]:
            loops.append(f"{v['label']} {v['why']}")
        elif key == "asyncio":
            loops.append(f"asyncio (Python {v['version']})")
        else:
            loops.append(f"{v['label']} {v['version']}")
    shared = " (the same CPU: only one usable)" if env["server_cpu"] == env["client_cpu"] else ""
    return "\n".join([
        "event loops side by side: " + "; ".join(loops),
        f"python {env['python']} ({env['implementation']}{gil}), {env['platform']} "
        f"{env['kernel']}, {cpus}; cc: {env['cc'] or 'none'}; "
        f"aiohttp {env['aiohttp'] or 'not installed'}; wrk {env['wrk'] or 'not installed'}",
        f"command: {env['command']}",
        f"servers pinned to CPU {env['server_cpu']}, load generators to CPU "
        f"{env['client_cpu']}{shared}; server CPU = utime+stime from /proc/<pid>/stat "
        f"(clock ticks) over the measured window",
        f"best of {env['repeat']} repeat(s) (scheduling: at least {SCHED_MIN_REPEAT}), "
        f"contenders interleaved" + ("; --quick: short windows, goals indicative"
                                     if env["quick"] else ""),
    ])


def _fmt_size(size):
    if size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def _num(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def _count(value):
    return "-" if value is None else f"{value:,.0f}"


def _pct(value):
    return "-" if value is None else f"{value * 100:.0f}%"


def _format_goals(row, out, *, before):
    for goal in row.get("goals", []):
        if before:
            out.append(f"  goal: {goal['goal']}")
        else:
            verdict = {True: "goal met", False: "goal NOT met",
                       None: "goal not checked"}[goal["met"]]
            result = goal["result"]
            if goal["met"] is None and result.startswith("not checked: "):
                result = result[len("not checked: "):]
            name = f"{goal['name']} " if goal.get("name") else ""
            out.append(f"  -> {name}{verdict}: {result}")


def _table(out, head, widths, lines):
    out.append("  " + "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                                for i, (h, w) in enumerate(zip(head, widths))).rstrip())
    for cells in lines:
        if isinstance(cells, str):
            out.append("  " + cells)
            continue
        out.append("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                    for i, (c, w) in enumerate(zip(cells, widths))).rstrip())


def format_rows(rows):
    out = []
    for row in rows:
        if row.get("skipped"):
            out.append(row["title"])
            out.append(f"  skipped: {row['skipped']}")
            _format_goals(row, out, before=False)
            out.append("")
            continue
        case = row["case"]
        if case == "idle":
            from braid.bench import _loop_idle

            _loop_idle.format_row(row, out)
            out.append("")
            continue
        if case == "echo":
            out.append(f"{row['title']}  [{row['connections']} connections, request-response, "
                       f"{row['duration_s']:g} s after {row['warmup_s']:g} s warm-up, "
                       f"best of {row['repeats']}]")
            _format_goals(row, out, before=True)
            widths = (22, 13, 9, 10, 8, 14)
            lines = []
            for cell in row["contenders"].values():
                if cell["status"] != "ok":
                    lines.append(f"{cell['label'].ljust(widths[0])}  {cell['status']}")
                    continue
                flag = " !" if (cell["server_busy"] or 0) < BUSY_WARN else ""
                lines.append((cell["label"], _count(cell["rt_per_s"]),
                              _ratio(cell["vs_uvloop_rt"]), _num(cell["cpu_us_per_rt"]),
                              _ratio(cell["vs_floor_cpu"]),
                              f"{_pct(cell['server_busy'])} / {_pct(cell['client_busy'])}{flag}"))
            _table(out, ("server", "round trips/s", "vs uvloop", "cpu µs/rt", "vs floor",
                         "busy srv / gen"), widths, lines)
        elif case in SCHED_CASES:
            out.append(f"{row['title']}  [{row['n']:,} steps: {row['about']}; "
                       f"best of {row['repeats']}]")
            _format_goals(row, out, before=True)
            widths = (22, 10, 10, 10)
            lines = []
            for cell in row["contenders"].values():
                if cell["status"] != "ok":
                    lines.append(f"{cell['label'].ljust(widths[0])}  {cell['status']}")
                    continue
                lines.append((cell["label"], _num(cell["ns_per_step"], 1),
                              _ratio(cell["vs_asyncio"]), _ratio(cell["vs_uvloop"])))
            _table(out, ("loop", "ns/step", "vs asyncio", "vs uvloop"), widths, lines)
        else:
            out.append(f"{row['title']}  [best of {row['repeats']}, 1 s warm-up each]")
            _format_goals(row, out, before=True)
            widths = (22, 10, 10, 10, 10, 8)
            lines = []
            for cell in row["contenders"].values():
                if cell["status"] != "ok":
                    lines.append(f"{cell['label'].ljust(widths[0])}  {cell['status']}")
                    continue
                flag = " !" if (cell["server_busy"] or 0) < BUSY_WARN else ""
                lines.append((cell["label"], _count(cell["req_per_s"]),
                              _ratio(cell["vs_asyncio"]), _ratio(cell["vs_uvloop"]),
                              _num(cell["cpu_us_per_req"]), _pct(cell["server_busy"]) + flag))
            _table(out, ("server loop", "requests/s", "vs asyncio", "vs uvloop", "cpu µs/req",
                         "busy srv"), widths, lines)
        _format_goals(row, out, before=False)
        out.append("")
    return "\n".join(out)


FOOTER = ("vs uvloop / vs asyncio: how many times the speed of that loop (the same API for echo; "
          "the floor against uvloop Protocol); vs floor: server CPU per round trip / the C "
          "floor's; busy: CPU time / wall time of the server and the load generator; "
          f"! the server was busy less than {BUSY_WARN:.0%} of the window (its CPU was shared, "
          "or the generator could not keep up): its rate is understated; rerun, or raise "
          "--repeat")


# ------------------------------------------------------------------ entry

def build_parser(prog=None):
    p = argparse.ArgumentParser(
        prog=prog or "python -m braid bench loop",
        description="braid.Loop vs asyncio's loop and uvloop (echo servers against a plain C "
                    "floor, scheduling, aiohttp under wrk with and without keep-alive, idle "
                    "connections), side by side in one run.")
    p.add_argument("--quick", action="store_true",
                   help=f"short run for CI and smoke tests ({DURATION_S[1]:g} s windows after "
                        f"{WARMUP_S[1]:g} s warm-up, wrk -d{WRK_SECONDS[1]}s, {QUICK_REPEAT} "
                        f"repeat unless given); under a minute")
    p.add_argument("--repeat", type=int, metavar="N",
                   help=f"repeats per case, best kept (default {DEFAULT_REPEAT}; the scheduling "
                        f"cases run at least {SCHED_MIN_REPEAT})")
    p.add_argument("--sizes", metavar="KIB", default=",".join(map(str, SIZES_KIB)),
                   help="echo message sizes in KiB, comma-separated (default 1,10,100)")
    p.add_argument("--cases", metavar="LIST", default=",".join(CASES),
                   help=f"comma-separated subset of: {', '.join(CASES)} (default: all)")
    p.add_argument("--loops", metavar="LIST", default=",".join(LOOPS),
                   help=f"comma-separated subset of: {', '.join(LOOPS)} (default: all; the "
                        f"echo case always has the C floor too)")
    p.add_argument("--connections", type=int, metavar="N", default=CONNECTIONS,
                   help=f"echo connections (default {CONNECTIONS})")
    p.add_argument("--idle-conns", metavar="LIST",
                   help="idle case: comma-separated connection counts (default 10000,15000; "
                        "--quick 500)")
    p.add_argument("--duration", type=float, metavar="S",
                   help=f"measured seconds per echo run (default {DURATION_S[0]:g}; "
                        f"--quick {DURATION_S[1]:g})")
    p.add_argument("--warmup", type=float, metavar="S",
                   help=f"unmeasured seconds before each echo window (default {WARMUP_S[0]:g}; "
                        f"--quick {WARMUP_S[1]:g})")
    p.add_argument("--server-cpu", type=int, metavar="CPU",
                   help="the CPU servers are pinned to (default: CPU 0, or the first usable)")
    p.add_argument("--client-cpu", type=int, metavar="CPU",
                   help="the CPU load generators are pinned to (default: the next usable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    p.add_argument("--serve", metavar="LOOP:API", help=argparse.SUPPRESS)
    return p


def _csv(text):
    return [c.strip() for c in text.split(",") if c.strip()]


def main(argv=None, *, command=None):
    """Runs the benchmark; returns the exit status (0 ok, 1 a contender failed or the
    echo case could not be built, 2 bad arguments)."""
    return _bench.run_main(_main, argv, command)


def _main(argv, command):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve)
    quick = 1 if args.quick else 0
    repeat = args.repeat if args.repeat is not None else (QUICK_REPEAT if args.quick
                                                          else DEFAULT_REPEAT)
    duration = args.duration if args.duration is not None else DURATION_S[quick]
    warmup = args.warmup if args.warmup is not None else WARMUP_S[quick]
    wrk_seconds = WRK_SECONDS[quick]
    names = _csv(args.cases)
    unknown = [c for c in names if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    keys = _csv(args.loops)
    unknown = [k for k in keys if k not in LOOPS]
    if unknown:
        parser.error(f"unknown loop(s) {', '.join(unknown)}; choose from {', '.join(LOOPS)}")
    try:
        sizes = [int(s) * 1024 for s in _csv(args.sizes)]
    except ValueError:
        parser.error("--sizes takes whole KiB, e.g. 1,10,100")
    if not sizes or any(s < 1024 for s in sizes):
        parser.error("--sizes must be at least 1 KiB each")
    from braid.bench import _loop_idle

    try:
        idle_conns = ([int(n) for n in _csv(args.idle_conns)] if args.idle_conns
                      else list(_loop_idle.QUICK_CONNS if args.quick
                                else _loop_idle.DEFAULT_CONNS))
    except ValueError:
        parser.error("--idle-conns takes whole numbers, e.g. 10000,15000")
    if not idle_conns or any(n < 5 for n in idle_conns):
        parser.error("--idle-conns must be at least 5 each")
    if repeat < 1 or args.connections < 1 or duration <= 0 or warmup < 0:
        parser.error("--repeat and --connections must be at least 1, --duration above 0, "
                     "--warmup not negative")
    try:
        usable = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        usable = None
    for cpu in (args.server_cpu, args.client_cpu):
        if cpu is not None and usable is not None and cpu not in usable:
            parser.error(f"CPU {cpu} is not usable here (usable: {sorted(usable)})")
    cpus = pick_cpus(args.server_cpu, args.client_cpu)

    if command is None:
        command = _bench.command_line("loop", argv)

    loops = [load_loop(k) for k in LOOPS if k in keys]
    exes, no_echo, cc_version = None, None, None
    try:
        cc = compiler()
        cc_version = compiler_version(cc)
        if any(c in names for c in C_CASES):
            exes = build_programs(cc)
    except _NoCompiler as exc:
        no_echo = str(exc)
        if any(c in names for c in C_CASES):
            print(f"error: {exc}", file=sys.stderr)

    env = environment(command, loops, repeat=repeat, quick=bool(args.quick), sizes=sizes,
                      connections=args.connections, warmup=warmup, duration=duration,
                      wrk_seconds=wrk_seconds, cpus=cpus, cc_version=cc_version, exes=exes,
                      idle_conns=idle_conns)
    run = dict(loops=loops, sizes=sizes, repeat=repeat, connections=args.connections,
               warmup=warmup, duration=duration, wrk_seconds=wrk_seconds, cpus=cpus, exes=exes,
               no_echo=no_echo, idle_conns=idle_conns)
    try:
        if args.json:
            rows = run_cases(names, **run)
            json.dump({"benchmark": "loop", "environment": env, "results": rows},
                      sys.stdout, indent=2)
            print()
        else:
            print(format_header(env))
            print(FOOTER)
            if "idle" in names:
                print(_loop_idle.FOOTER)
            print(flush=True)
            rows = run_cases(names, on_case=lambda rs: print(format_rows(rs), flush=True), **run)
            failed = _failed(rows)
            if failed:
                print("failed: " + "; ".join(failed))
    finally:
        _stop_all()
        if exes is not None and exes.get("temporary"):
            shutil.rmtree(exes["cache"], ignore_errors=True)
    return 1 if (_failed(rows) or (any(c in names for c in C_CASES) and exes is None)) else 0


def _failed(rows):
    out = []
    for row in rows:
        for cell in row.get("contenders", {}).values():
            if cell["status"].startswith("error"):
                where = row["title"]
                out.append(f"{where} {cell['label']}: {cell['status']}")
    return out


if __name__ == "__main__":
    sys.exit(main())
