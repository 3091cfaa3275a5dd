"""braid.ProcessPool with large buffers: braid.shared_array and out-of-band pickling.

braid-only: the stdlib pools copy every array through a pipe.
"""

import concurrent.futures
import gc
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import shared_tasks  # noqa: E402
from pool_helpers import TIMEOUT, import_braid  # noqa: E402

MiB = 1 << 20


@pytest.fixture(scope="module")
def braid():
    return import_braid()


@pytest.fixture(scope="module")
def pool(braid):
    with braid.ProcessPool(max_workers=2) as pool:
        yield pool


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_shared_array_is_zeroed_and_typed(braid):
    a = braid.shared_array((3, 4), np.int32)
    assert a.shape == (3, 4) and a.dtype == np.int32 and not a.any()
    assert isinstance(a, np.ndarray)


def test_shared_array_bad_shape(braid):
    with pytest.raises(ValueError):
        braid.shared_array((2, -1))


def test_shared_array_refuses_python_objects(braid):
    # pointers into this process's memory, read by a worker, would crash it
    with pytest.raises(TypeError, match="cannot hold Python objects"):
        braid.shared_array(3, object)
    with pytest.raises(TypeError, match="cannot hold Python objects"):
        braid.shared_array(3, [("n", "i8"), ("o", "O")])


def test_reductions_give_numpy_scalars_as_on_a_plain_array(braid, pool):
    a = braid.shared_array(6)
    a[:] = np.arange(6)
    assert type(a.sum()) is np.float64 and a.sum() == 15.0 and type(a.max()) is np.float64
    assert pool.submit(shared_tasks.sum_of, a).result(TIMEOUT) == 15.0  # a scalar comes back
    out = braid.shared_array(())
    np.add(a[1], a[2], out=out)  # a 0-d result written into shared memory stays shared
    assert float(out) == 3.0
    assert pool.submit(shared_tasks.same, out).result(TIMEOUT) is not out
    assert np.shares_memory(pool.submit(shared_tasks.same, out).result(TIMEOUT), out)


def test_new_arrays_made_from_a_shared_one_cross_by_value(braid, pool):
    a = braid.shared_array(5)
    a[:] = np.arange(5)
    b = a + 10  # new memory: its pickle carries the values, not a reference to a's
    assert pool.submit(shared_tasks.same, b).result(TIMEOUT).tolist() == [10, 11, 12, 13, 14]
    r = a[::-2]  # a view (negative stride) is still the shared memory
    back = pool.submit(shared_tasks.same, r).result(TIMEOUT)
    assert back.tolist() == [4, 2, 0] and np.shares_memory(back, a)
    a += 1  # in place: still shared
    assert np.shares_memory(pool.submit(shared_tasks.same, a).result(TIMEOUT), a)


def test_worker_writes_are_seen_by_the_parent(braid, pool):
    a = braid.shared_array(1000, np.float64)
    pool.submit(shared_tasks.fill, a, 7.0).result(TIMEOUT)
    assert (a == 7.0).all()


def test_returned_shared_array_is_the_same_memory(braid, pool):
    a = braid.shared_array(4 * MiB // 8)
    a[:] = 1.0
    b = pool.submit(shared_tasks.add_one_in_place, a).result(TIMEOUT)
    assert np.shares_memory(a, b)
    assert (a == 2.0).all() and (b == 2.0).all()


def test_views_and_strides_cross(braid, pool):
    a = braid.shared_array((100, 100))
    a[:] = np.arange(10_000).reshape(100, 100)
    assert pool.submit(shared_tasks.total, a[10:20, ::3]).result(TIMEOUT) == float(a[10:20, ::3].sum())


def test_array_dropped_right_after_submit_still_reaches_the_worker(braid, pool):
    a = braid.shared_array(MiB // 8)
    a[:] = 2.0
    future = pool.submit(shared_tasks.total, a)
    del a
    gc.collect()
    assert future.result(TIMEOUT) == 2.0 * (MiB // 8)


@pytest.mark.parametrize("size", [MiB - 8, MiB, 8 * MiB + 8])
def test_plain_arrays_round_trip_equal(pool, size):
    a = np.arange(size // 8, dtype=np.float64)
    b = pool.submit(shared_tasks.same, a).result(TIMEOUT)
    assert b.dtype == a.dtype and np.array_equal(a, b)
    c = pool.submit(shared_tasks.doubled, a).result(TIMEOUT)
    assert np.array_equal(c, a * 2)


def test_in_place_work_on_a_plain_array_leaves_the_parents_copy_alone(pool):
    a = np.zeros(2 * MiB // 8)
    b = pool.submit(shared_tasks.add_one_in_place, a).result(TIMEOUT)
    assert (b == 1.0).all() and (a == 0.0).all()
    b += 1  # the result is ours to write
    assert (b == 2.0).all()


def test_large_bytes_like_objects(pool):
    data = bytearray(os.urandom(3 * MiB))
    assert pool.submit(shared_tasks.same, data).result(TIMEOUT) == data


def test_out_of_band_memfds_do_not_leak(pool):
    a = np.ones(2 * MiB // 8)
    for _ in range(5):
        pool.submit(shared_tasks.same, a).result(TIMEOUT)
    gc.collect()
    before = open_fds()
    for _ in range(30):
        assert pool.submit(shared_tasks.doubled, a).result(TIMEOUT)[0] == 2.0
    gc.collect()
    assert open_fds() <= before + 2


def test_shutdown_wait_from_a_done_callback_raises(braid, tmp_path):
    import procpool_tasks

    pool = braid.ProcessPool(max_workers=1)
    seen = []

    def callback(future):
        try:
            pool.shutdown(wait=True)
        except RuntimeError as exc:
            seen.append(str(exc))

    gate = tmp_path / "gate"
    future = pool.submit(procpool_tasks.block, str(tmp_path / "started"), str(gate))
    future.add_done_callback(callback)  # the task waits for the gate: not done yet
    procpool_tasks.touch(str(gate))
    # concurrent.futures.wait, not result(): a thread blocked in result() is handed the
    # result and runs the callbacks itself (where shutdown(wait=True) may wait); here the
    # pool's loop thread finishes the future and runs the callback
    done, _ = concurrent.futures.wait([future], TIMEOUT)
    assert done and future.result() == "blocker"
    pool.shutdown(wait=True)
    assert seen and "wait for itself" in seen[0]
