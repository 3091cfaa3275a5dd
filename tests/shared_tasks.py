"""Task functions for test_procpool_shared.py (workers import them from here)."""


def add_one_in_place(a):
    a += 1
    return a


def total(a):
    return float(a.sum())


def sum_of(a):
    return a.sum()


def same(x):
    return x


def doubled(a):
    return a * 2


def fill(a, value):
    a[...] = value
