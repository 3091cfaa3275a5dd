"""Object lifetimes across the C boundary of braid.ThreadPool.

These fail loudly (crash, or an AddressSanitizer report in CI's sanitized
run) when the engine touches a work item whose future is already freed.
"""

import gc
import weakref

import braid


def noop():
    return None


def test_futures_dropped_while_workers_finish_their_batch():
    # The caller drops every future as soon as it has its result, while a
    # worker may still be completing the last item of its batch.
    for _ in range(5):
        pool = braid.ThreadPool(max_workers=6)
        futures = [pool.submit(noop) for _ in range(50_000)]
        assert all(f.result(timeout=60) is None for f in futures)
        del futures
        pool.shutdown(wait=True)


def test_fire_and_forget_futures_are_freed():
    pool = braid.ThreadPool(max_workers=2)
    refs = []
    for _ in range(1_000):
        refs.append(weakref.ref(pool.submit(noop)))
    pool.shutdown(wait=True)
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_task_arguments_are_released_after_the_call():
    class Payload:
        pass

    pool = braid.ThreadPool(max_workers=2)
    payload = Payload()
    ref = weakref.ref(payload)
    future = pool.submit(id, payload)
    del payload
    future.result(timeout=10)
    pool.shutdown(wait=True)
    gc.collect()
    # the future outlives the call but must not keep its arguments alive
    assert ref() is None
    assert future.done()


def test_cancelled_future_releases_its_callable():
    import threading

    gate = threading.Event()
    pool = braid.ThreadPool(max_workers=1)
    blocker = pool.submit(gate.wait, 10)

    class Task:
        def __call__(self):
            return 1

    task = Task()
    ref = weakref.ref(task)
    queued = pool.submit(task)
    del task
    assert queued.cancel()
    gc.collect()
    assert ref() is None
    gate.set()
    assert blocker.result(timeout=10) is True
    pool.shutdown(wait=True)


def test_pool_dropped_without_shutdown_still_runs_its_work():
    import threading

    done = threading.Event()
    pool = braid.ThreadPool(max_workers=1)
    pool.submit(done.set)
    del pool
    gc.collect()
    assert done.wait(10)
