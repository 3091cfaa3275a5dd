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
