"""_braid.ChunkResults: the items of a chunked map, handed out in C (the process and
interpreter pools' map, imap and imap_unordered)."""
import gc
import threading
import weakref

import pytest

from braid import _braid


class Item:
    pass


def chunks_of(*chunks, log=None):
    try:
        for chunk in chunks:
            yield chunk
    finally:
        if log is not None:
            log.append("closed")


def test_items_in_order_across_chunks():
    it = _braid.ChunkResults(chunks_of(([1, 2], None), ([], None), ([3], None)))
    assert iter(it) is it
    assert list(it) == [1, 2, 3]
    assert list(it) == []


def test_an_item_handed_out_is_no_longer_held():
    first, second = Item(), Item()
    it = _braid.ChunkResults(chunks_of(([first, second], None)))
    ref = weakref.ref(first)
    del first
    got = next(it)
    assert ref() is got
    del got
    gc.collect()
    assert ref() is None  # the iterator and its chunk let it go
    assert next(it) is second


def test_a_chunk_exception_comes_after_its_results_and_ends_the_iteration():
    log = []
    boom = ValueError("item 3")
    it = _braid.ChunkResults(chunks_of(([1, 2], boom), ([4], None), log=log))
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(ValueError, match="item 3") as info:
        next(it)
    assert info.value is boom
    assert log == ["closed"]  # the generator's finally ran (the pools cancel there)
    with pytest.raises(StopIteration):
        next(it)


def test_close_closes_the_generator():
    log = []
    it = _braid.ChunkResults(chunks_of(([1, 2], None), ([3], None), log=log))
    assert next(it) == 1
    it.close()
    assert log == ["closed"]
    assert list(it) == []
    it.close()  # again: nothing left to do


def test_an_exception_from_the_generator_propagates():
    def failing():
        yield ([1], None)
        raise TimeoutError("chunk 2")

    it = _braid.ChunkResults(failing())
    assert next(it) == 1
    with pytest.raises(TimeoutError, match="chunk 2"):
        next(it)
    assert list(it) == []


@pytest.mark.parametrize("chunk, message", [
    ("not a tuple", "must come as"),
    (((1, 2), None), "must come as"),
    (([1], None, None), "must come as"),
    (([1], "not an exception"), "exception instance or None"),
])
def test_a_malformed_chunk_is_a_type_error(chunk, message):
    log = []
    it = _braid.ChunkResults(chunks_of(chunk, log=log))
    with pytest.raises(TypeError, match=message):
        next(it)
    assert log == ["closed"]


def test_bad_arguments():
    with pytest.raises(TypeError, match="iterator of chunks"):
        _braid.ChunkResults([([1], None)])
    with pytest.raises(TypeError):
        _braid.ChunkResults()
    with pytest.raises(TypeError, match="keyword"):
        _braid.ChunkResults(chunks=iter(()))


def test_a_second_thread_meets_the_generator_running():
    entered, release = threading.Event(), threading.Event()

    def slow():
        entered.set()
        release.wait(10)
        yield ([1], None)

    it = _braid.ChunkResults(slow())
    out = []
    t = threading.Thread(target=lambda: out.append(next(it)))
    t.start()
    assert entered.wait(10)
    with pytest.raises(ValueError, match="already executing"):
        next(it)
    with pytest.raises(ValueError, match="already executing"):
        it.close()  # closing a running generator is refused; the iterator is not freed under it
    release.set()
    t.join(10)
    assert out == [1]


def test_a_cycle_through_the_iterator_is_collected():
    box = []
    it = _braid.ChunkResults(chunks_of(([box], None)))
    box.append(it)
    ref = weakref.ref(it)
    del it, box
    gc.collect()
    assert ref() is None
