"""The tutorial's CPU-bound task functions, copied unchanged from the seed (its multiprocessing
example): what bench procpool's primes_e2e case sends to the pools.

They live alone in this module, which imports nothing, so a worker that unpickles them by
reference (braid.bench._tutorial.is_prime) imports no more than a tutorial reader's worker
would: the tutorial's own script imports only multiprocessing and time.
"""


# A CPU-bound task: checking if a number is prime
def is_prime(n):
    if n <= 1:
        return False
    if n == 2:
        return True
    if n % 2 == 0:
        return False
    for i in range(3, int(n**0.5) + 1, 2):
        if n % i == 0:
            return False
    return True


def check_numbers_chunk(numbers_chunk):
    results = []
    for num in numbers_chunk:
        results.append((num, is_prime(num)))
    return results


def tutorial_code(make_pool=None):
    """The tutorial's multiprocessing code, from cutting the list in chunks to the flat result,
    as a function of the numbers; make_pool(processes) stands in for multiprocessing.Pool
    (None: multiprocessing.Pool itself)."""
    def run(numbers):
        import multiprocessing

        num_processes = multiprocessing.cpu_count()
        chunk_size = len(numbers) // num_processes
        number_chunks = [numbers[i:i + chunk_size] for i in range(0, len(numbers), chunk_size)]
        pool_class = make_pool or (lambda processes: multiprocessing.Pool(processes=processes))
        with pool_class(num_processes) as pool:
            process_results = pool.map(check_numbers_chunk, number_chunks)
        # Flatten the results from all processes
        final_results = [item for sublist in process_results for item in sublist]
        return final_results
    return run


def prime_flags(stop):
    """[is n prime for n in range(1, stop)], by a sieve: the reference is_prime is checked
    against, independent of it."""
    if stop <= 1:
        return []
    flags = bytearray([1]) * stop
    flags[0:2] = b"\0\0"
    for p in range(2, int((stop - 1) ** 0.5) + 1):
        if flags[p]:
            flags[p * p::p] = bytes(len(range(p * p, stop, p)))
    return [bool(f) for f in flags[1:]]
