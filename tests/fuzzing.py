"""Shared by the property-based tests of the loaders (hypothesis): settings and mutations of parsed JSON.

Every property test runs at least 200 examples, derandomized (the same examples on every run, so CI is
repeatable), with no example database and no deadline.
"""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def mutations():
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=20), st.just("../" * 8 + "etc/passwd"), st.just("/etc/passwd"),
                     st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
    return st.lists(st.tuples(st.sampled_from(["delete", "set", "nest"]), st.integers(0, 10_000), leaf),
                    min_size=1, max_size=4)


def paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            yield from paths(v, prefix + (i,))


def mutate(obj, changes):
    obj = copy.deepcopy(obj)
    for kind, pick, value in changes:
        found = [p for p in paths(obj) if p]
        if not found:
            break
        path = found[pick % len(found)]
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        if kind == "delete":
            del parent[path[-1]]
        elif kind == "set":
            parent[path[-1]] = value
        else:
            parent[path[-1]] = [[[value]]]
    return obj


VALUES = [None, True, -1, 0, 2**70, 1e308, float("nan"), "", "x", "../../etc/passwd", "/etc/passwd", [], {}, [[[1]]]]


def sample_mutations(n: int, seed: int = 0) -> list[list[tuple]]:
    """`n` fixed mutation lists (for the end-to-end samples run through the command line)."""
    import random

    rng = random.Random(seed)
    return [[(rng.choice(["delete", "set", "nest"]), rng.randrange(10_000), rng.choice(VALUES))
             for _ in range(rng.randint(1, 3))] for _ in range(n)]
