"""The demo's results: the tutorial's comparison with measured columns, the rule of thumb
as measured here, what braid.map chose, and the --json document."""

import json
import os
import tempfile

__all__ = ["table", "rule_of_thumb", "map_choices", "write_json", "write_atomically"]

# Two times are called a tie when within 15% of each other, or 10 ms: every variant runs
# once, and a few milliseconds are what one run's noise (a connection's set-up) is worth.
TIE = 0.15
TIE_S = 0.010

PILLARS = {"sequential": "sequential", "threading": "threading",
           "multiprocessing": "multiprocessing", "asyncio": "asyncio"}


def _secs(s):
    if s >= 0.1:
        return f"{s:.2f} s"
    return f"{s * 1000:.0f} ms" if s >= 0.01 else f"{s * 1000:.1f} ms"


def speedup(x):
    """2.87x, 0.49x, 0.0046x: two decimals, or two significant digits below 0.1."""
    return f"{x:.2f}x" if x >= 0.1 else f"{x:.2g}x"


def choice_of(line):
    """"braid.map: ... → process, 2 workers, chunks of 62,500" -> the part after the arrow."""
    if not line:
        return None
    return line.rsplit("→", 1)[1].strip() if "→" in line else line


def _pillar(row):
    if row.is_map and row.chose:
        mode = choice_of(row.chose).split(",")[0].split()[0]
        return {"thread": "threading", "process": "multiprocessing", "async": "asyncio",
                "sequential": "sequential"}.get(mode, mode)
    return row.pillar


def table(cases, rows, repeat=1):
    """The comparison table: a block per case (its title, then a row per variant)."""
    head = ("variant", "pillar", "wall", "speedup", "CPU", "result")
    runs = "one run each" if repeat == 1 else f"the fastest of {repeat} runs each"
    lines = [f"the tutorial's comparison, measured here ({runs}; speedup: against the "
             "sequential row; CPU: cores busy on average, the demo server's thread left out; "
             "~ : timed on a sample and scaled)"]
    width = max([len(r.variant) for r in rows] + [len(head[0])])
    fmt = "  {:<%d}  {:<17}  {:>9}  {:>7}  {:>4}  {}" % width
    for case in cases:
        mine = [r for r in rows if r.experiment == case.experiment and r.size == case.size]
        if not mine:
            continue
        lines += ["", case.title, fmt.format(*head)]
        for r in mine:
            if r.ok:
                wall = ("~" if r.estimated else "") + _secs(r.seconds)
                speed = speedup(r.speedup) if r.speedup else "-"
                pillar = _pillar(r) + (" *" if r.is_map else "")
                lines.append(fmt.format(r.variant, pillar, wall, speed, f"{r.cpu:.2f}", "ok"))
            else:
                lines.append(fmt.format(r.variant, r.pillar, "-", "-", "-", "FAILED: " + r.check))
    if any(r.is_map for r in rows):
        lines += ["", "  * braid.map's pillar is the one it chose (below)"]
    return "\n".join(lines)


def _rows(rows, experiment, size=None, keys=None, pillar=None):
    return [r for r in rows if r.experiment == experiment and r.ok
            and (size is None or r.size == size) and (keys is None or r.key in keys)
            and (pillar is None or r.pillar == pillar)]


def _best(rows):
    return min(rows, key=lambda r: r.seconds) if rows else None


def _compare(a_name, a, b_name, b):
    """'a 2.0x b (x s vs y s)' or 'tie' when within TIE."""
    close = abs(a.seconds - b.seconds) <= TIE_S
    if close or (a.seconds <= b.seconds * (1 + TIE) and b.seconds <= a.seconds * (1 + TIE)):
        return f"{a_name} and {b_name} tie ({_secs(a.seconds)} vs {_secs(b.seconds)})"
    if a.seconds < b.seconds:
        return f"{a_name} {b.seconds / a.seconds:.1f}x faster than {b_name} ({_secs(a.seconds)} vs {_secs(b.seconds)})"
    return f"{b_name} {a.seconds / b.seconds:.1f}x faster than {a_name} ({_secs(b.seconds)} vs {_secs(a.seconds)})"


def _sizes(rows, experiment):
    return sorted({r.size for r in rows if r.experiment == experiment})


def rule_of_thumb(rows, opts):
    """The tutorial's rule of thumb, as this run measured it: a list of sentences."""
    out = []
    for n in _sizes(rows, "downloads"):
        seq = _best(_rows(rows, "downloads", n, keys={"sequential"}))
        thr = _best(_rows(rows, "downloads", n, pillar="threading"))
        if seq and thr:
            out.append(f"I/O, {n:,} download(s): threads {seq.seconds / thr.seconds:.1f}x the "
                       f"for loop ({_secs(thr.seconds)} vs {_secs(seq.seconds)}): waiting "
                       "overlaps, as the tutorial says")
    for n in _sizes(rows, "fetches"):
        thr = _best(_rows(rows, "fetches", n, keys={"threads"}))
        asy = _best(_rows(rows, "fetches", n, keys={"asyncio", "braid_loop"}))
        if thr and asy:
            cpu = f"; CPU {asy.cpu:.2f} vs {thr.cpu:.2f} cores"
            out.append(f"I/O, {n:,} fetch(es), {opts.connections} at a time: "
                       + _compare("asyncio", asy, "threads", thr) + cpu)
        std = _best(_rows(rows, "fetches", n, keys={"asyncio"}))
        brd = _best(_rows(rows, "fetches", n, keys={"braid_loop"}))
        if std and brd and n == max(_sizes(rows, "fetches")):
            out.append(f"  the same program at {n:,}: "
                       + _compare("braid.Loop", brd, "asyncio's loop", std))
    primes = _sizes(rows, "primes")
    points = []
    for n in primes:
        seq = _best(_rows(rows, "primes", n, keys={"sequential"}))
        proc = _best(_rows(rows, "primes", n, pillar="multiprocessing"))
        if not (seq and proc):
            continue
        points.append((n, seq.seconds, proc.seconds))
        if seq.seconds <= proc.seconds:
            out.append(f"CPU, primes 1..{n:,}: sequential wins ({_secs(seq.seconds)}; the best "
                       f"process pool {_secs(proc.seconds)}, its start-up included)")
        else:
            out.append(f"CPU, primes 1..{n:,}: processes {seq.seconds / proc.seconds:.1f}x "
                       f"sequential ({proc.variant}: {_secs(proc.seconds)} vs "
                       f"{_secs(seq.seconds)}, start-up included)")
    payoff = _payoff(points)
    if payoff:
        out.append("  " + payoff)
    return out


def _payoff(points):
    """Where processes start to pay off, interpolated between the sizes measured."""
    if len(points) < 2:
        return None
    for (n1, s1, p1), (n2, s2, p2) in zip(points, points[1:]):
        d1, d2 = p1 - s1, p2 - s2
        if d1 > 0 >= d2:
            n = n1 + d1 / (d1 - d2) * (n2 - n1)
            return (f"processes pay off here from about {_round(n):,} numbers (interpolated "
                    f"between 1..{n1:,} and 1..{n2:,})")
    if all(p < s for _, s, p in points):
        return "processes won at every size measured"
    if all(p >= s for _, s, p in points):
        return "sequential won at every size measured: processes need more work to pay off"
    return None


def _round(n):
    """Two significant digits."""
    n = int(n)
    digits = len(str(n))
    if digits <= 2:
        return n
    scale = 10 ** (digits - 2)
    return round(n / scale) * scale


def map_choices(rows):
    """What braid.map chose in each case, with how it did against the best fixed variant."""
    out = []
    for r in rows:
        if not r.is_map:
            continue
        where = f"{r.experiment} {r.size:,}"
        if not r.ok:
            out.append(f"{where}: failed ({r.check})")
            continue
        others = [o for o in rows if o.experiment == r.experiment and o.size == r.size
                  and o.ok and not o.is_map]
        best = _best(others)
        vs = f"; the best other variant: {best.variant}, {_secs(best.seconds)}" if best else ""
        out.append(f"{where}: {choice_of(r.chose) or 'no explanation logged'} "
                   f"({_secs(r.seconds)}{vs})")
        if r.chose:
            out.append(f"    {r.chose}")
    return out


def write_atomically(path, write):
    """write(file_object) into a temporary file beside ``path``, then renamed over it: a
    failure leaves no half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".braid-demo-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have made
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path, document):
    data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
    write_atomically(path, lambda f: f.write(data))
