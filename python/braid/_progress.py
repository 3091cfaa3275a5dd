"""Progress reporting for braid.map: a tqdm bar, a given tqdm instance, or a callable."""

import sys

__all__ = ["make_progress"]


class _Callback:
    """progress=callable: called as callback(done, total) after every batch of results."""

    def __init__(self, callback, total):
        self._callback = callback
        self._total = total
        self._done = 0

    def update(self, n):
        self._done += n
        self._callback(self._done, self._total)

    def close(self):
        pass


class _Bar:
    """A tqdm bar (tqdm.auto: a widget in notebooks, text on stderr elsewhere); ``owned``
    bars are closed when the map ends, a caller's own bar is left open for them."""

    def __init__(self, bar, owned):
        self._bar = bar
        self._owned = owned

    def update(self, n):
        self._bar.update(n)

    def close(self):
        if self._owned:
            self._bar.close()
        else:
            self._bar.refresh()


class _Silent:
    def update(self, n):
        pass

    def close(self):
        pass


def make_progress(progress, total):
    """What braid.map reports its progress to: ``progress`` is False/None (nothing), True (a
    new tqdm bar on stderr), a tqdm instance (updated, not closed) or a callable
    ``(done, total)``; ``total`` is the number of items, or None when unknown."""
    if progress is None or progress is False:
        return _Silent()
    if progress is True:
        from tqdm.auto import tqdm

        return _Bar(tqdm(total=total, file=sys.stderr, unit="item", desc="braid.map"), owned=True)
    if hasattr(progress, "update") and hasattr(progress, "refresh"):
        if total is not None and getattr(progress, "total", None) is None:
            progress.total = total
        return _Bar(progress, owned=False)
    if callable(progress):
        return _Callback(progress, total)
    raise TypeError("progress must be a bool, a tqdm instance or a callable (done, total), "
                    f"not {type(progress).__name__}")
