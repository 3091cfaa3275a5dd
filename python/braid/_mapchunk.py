"""What a braid.map chunk runs, wherever it runs: in the caller, on a thread, in a worker
process or in a sub-interpreter. A module of its own that imports only what it uses, so that
a worker that unpickles ``run_chunk`` by reference does not import braid.map's machinery
(concurrent.futures, logging, threading)."""

import operator
import reprlib


def _note(exc, index, item):
    """Names the failing item on its exception, once."""
    if not any(str(n).startswith("braid.map:") for n in getattr(exc, "__notes__", ())):
        try:
            exc.add_note(f"braid.map: raised by item {index:,} of the input: {reprlib.repr(item)}")
        except Exception:  # an exception type that refuses attributes keeps its own words
            pass


def run_chunk(fn, batch, start, stop=None):
    """[fn(x) for x in batch], the batch being the input's items from index ``start``; the
    first exception is noted with the index of its item. A list comprehension, which calls
    a Python function faster than map() does (3.11+), and the iterator's length hint says
    how far it got. Runs in pool workers too, so it lives at module level.

    ``stop``, on a thread: a list the map appends to when it is abandoned (Ctrl-C, a failure,
    the consumer gone); the items not started by then are skipped (a thread cannot be killed,
    and a chunk of slow items would otherwise run on for its whole length)."""
    it = iter(batch)
    try:
        if stop is not None:
            return [fn(x) for x in it if not stop]
        return [fn(x) for x in it]
    except Exception as exc:
        index = len(batch) - operator.length_hint(it) - 1
        _note(exc, start + index, batch[index])
        raise
