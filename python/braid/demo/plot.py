"""--plot FILE.png: one panel per experiment, a group of bars per size, a bar per variant,
its height the speedup against the sequential run (above 1: faster), its label the wall
time. matplotlib's Agg backend: no display needed."""

import io
import textwrap

from .report import _secs, write_atomically

__all__ = ["plot"]

# by variant: the stdlib's in the light shade of its pillar's colour, braid's in the dark one
COLORS = {"sequential": "#9e9e9e", "thread_per_url": "#9ecae1", "threadpool": "#1f77b4",
          "threads": "#1f77b4", "mp_pool": "#f4a3a3", "procpool": "#d62728",
          "asyncio": "#a1d99b", "braid_loop": "#2ca02c", "map": "#ff7f0e"}
TITLES = {"downloads": "downloads (threads)", "primes": "primes (processes)",
          "fetches": "fetches (asyncio)"}


def plot(path, rows, subtitle):
    """Draws the rows into a PNG at ``path`` (written whole or not at all)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    experiments = [e for e in ("downloads", "primes", "fetches") if any(r.experiment == e for r in rows)]
    fig = Figure(figsize=(5.2 * len(experiments), 5.0), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(experiments), squeeze=False)[0]
    for ax, experiment in zip(axes, experiments):
        mine = [r for r in rows if r.experiment == experiment]
        sizes = sorted({r.size for r in mine})
        keys = list(dict.fromkeys(r.key for r in mine))
        width = 0.8 / len(keys)
        speedups = [r.speedup for r in mine if r.ok and r.speedup] or [1.0]
        # a log scale: a size's 0.2x and another's 70x both stay readable; bars rise from
        # below the lowest, so one below 1 (slower than sequential) ends under the dashed line
        lo = min(min(speedups), 1.0) / 2
        hi = max(max(speedups), 1.0) * 4
        for k, key in enumerate(keys):
            for g, size in enumerate(sizes):
                row = next((r for r in mine if r.key == key and r.size == size), None)
                if row is None:
                    continue
                x = g + (k - (len(keys) - 1) / 2) * width
                top = row.speedup if row.ok and row.speedup else lo
                bar = ax.bar(x, top - lo, width * 0.92, bottom=lo,
                             color=COLORS.get(row.key, "#777777"),
                             label=_legend(row) if g == 0 else None)
                text = (("~" if row.estimated else "") + _secs(row.seconds)) if row.ok else "failed"
                ax.bar_label(bar, [text], rotation=90, padding=2, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        # ticks at 1-2-5 steps, labelled 0.5x, 1x, 20x (not 5 x 10^-1)
        ticks = [m * 10.0 ** e for e in range(-3, 4) for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(sizes)), [_size_label(experiment, s) for s in sizes])
        ax.set_ylabel("speedup against sequential (log scale; higher is faster)")
        ax.set_title(TITLES[experiment])
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("\n".join(textwrap.wrap(subtitle, 60 * len(experiments))), fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_atomically(path, lambda f: f.write(buf.getvalue()))


def _legend(row):
    """The variant's name without what only one size says (sampled, scaled)."""
    return row.variant.split(",")[0] + ")" if row.estimated and "(" in row.variant else row.variant


def _size_label(experiment, n):
    if experiment == "primes":
        return f"1..{n:,}"
    if experiment == "downloads":
        return f"{n:,} file" + ("s" if n != 1 else "")
    return f"{n:,} page" + ("s" if n != 1 else "")
