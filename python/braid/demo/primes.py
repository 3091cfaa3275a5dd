"""Experiment 2, processes: the tutorial's "CPU-Bound Task", is_prime over 1..N.

The functions are the tutorial's, unchanged (braid.bench._tutorial, a module that imports
nothing, so a worker process loads no more than the tutorial's own would). Every timing
includes starting and stopping the pool, as a script that runs once pays them. The
variants:

    sequential            [is_prime(n) for n in numbers], the tutorial's sequential version
    multiprocessing.Pool  the tutorial's concurrent version: cpu_count() processes, the
                          list cut into that many chunks, check_numbers_chunk, flattened
    braid.ProcessPool     pool.map(is_prime, numbers) (chunked by the pool)
    braid.map             braid.map(is_prime, numbers): braid measures and chooses

Every result is compared, flag by flag, with a sieve of Eratosthenes computed beforehand.
"""

from braid.bench._tutorial import is_prime, prime_flags, tutorial_code

from .measure import Case, CheckFailed, Variant

__all__ = ["cases"]


def sieve(stop):
    """[is n prime for n in range(1, stop + 1)], independently of is_prime."""
    return prime_flags(stop + 1)


def _sequential(numbers):
    sequential_results = [is_prime(n) for n in numbers]
    return sequential_results


def _ignore_ctrl_c():
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool_that_ctrl_c_does_not_hang(processes):
    # Ctrl-C reaches the pool's workers too (the terminal signals the whole process group): a
    # worker interrupted while it holds the task queue's lock dies with it, and the parent's
    # terminate() then waits for that lock for ever. The workers ignore it instead; the parent
    # gets the KeyboardInterrupt and terminate() stops them. The code timed is the tutorial's.
    import multiprocessing

    return multiprocessing.Pool(processes=processes, initializer=_ignore_ctrl_c)


def _tutorial_pool(numbers):
    """The tutorial's multiprocessing code, from cutting the list in chunks to the flat result."""
    return tutorial_code(_pool_that_ctrl_c_does_not_hang)(numbers)


def _process_pool(numbers):
    import braid

    with braid.ProcessPool() as pool:
        return list(pool.map(is_prime, numbers))


def _braid_map(numbers):
    import braid

    return braid.map(is_prime, numbers)


def cases(opts, server=None, clients=None):
    """One case per size in ``opts.primes``: numbers 1..N."""
    out = []
    for n in opts.primes:
        numbers = list(range(1, n + 1))
        want = sieve(n)
        count = sum(want)

        def check(result, variant, ctx, numbers=numbers, want=want, count=count):
            if variant.key == "mp_pool":  # (number, flag) pairs
                if not isinstance(result, list) or [p[0] for p in result] != numbers:
                    raise CheckFailed("the (number, flag) pairs are not the numbers in order")
                result = [p[1] for p in result]
            if not isinstance(result, list) or len(result) != len(want):
                raise CheckFailed(f"{len(result):,} results for {len(want):,} numbers")
            if result != want:
                i = next(i for i, (g, w) in enumerate(zip(result, want)) if g != w)
                raise CheckFailed(f"is_prime({numbers[i]:,}) came back {result[i]}")
            return f"{count:,} primes, every flag as the sieve says"

        def on(fn, numbers=numbers):
            return lambda ctx: fn(numbers)

        variants = [
            Variant("sequential", "sequential list comprehension", "sequential", on(_sequential),
                    baseline=True),
            Variant("mp_pool", "multiprocessing.Pool (the tutorial's chunks)", "multiprocessing",
                    on(_tutorial_pool)),
            Variant("procpool", "braid.ProcessPool().map", "multiprocessing", on(_process_pool)),
            Variant("map", "braid.map (auto)", "braid.map", on(_braid_map), is_map=True),
        ]
        title = f"primes (processes): is_prime over 1..{n:,}, pool start-up included"
        out.append(Case("primes", n, title, variants, check))
    return out
