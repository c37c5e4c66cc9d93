"""pass@k: closed forms, a brute-force enumeration of k-subsets, and the vectorised mean."""

import itertools
import math

import numpy as np
import pytest

from proxy_jax.codeeval import passk


def brute_force(n, c, k):
    """Fraction of k-subsets of n samples (the first c passing) that hold at least one pass."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_matches_subset_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert passk.pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12)


def test_closed_forms():
    for n, c in [(10, 3), (200, 17), (1, 1), (5, 0)]:
        assert passk.pass_at_k(n, c, 1) == pytest.approx(c / n)
    assert passk.pass_at_k(200, 0, 100) == 0.0
    assert passk.pass_at_k(10, 8, 3) == 1.0  # n - c = 2 < k
    # Large n, where the binomials themselves overflow a float.
    n, c, k = 2000, 30, 100
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert passk.pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-10)


def test_mean_is_mean_of_per_problem():
    rng = np.random.default_rng(0)
    n_P = rng.integers(10, 60, size=50)
    c_P = rng.integers(0, n_P + 1)
    for k in (1, 5, 10):
        want = np.mean([passk.pass_at_k(int(n), int(c), k) for n, c in zip(n_P, c_P)])
        assert passk.mean_pass_at_k(n_P, c_P, k) == pytest.approx(want, abs=1e-10)


def test_bad_counts_name_the_value():
    with pytest.raises(ValueError, match="c=5"):
        passk.pass_at_k(3, 5, 1)
    with pytest.raises(ValueError, match="k=4"):
        passk.mean_pass_at_k([3, 10], [1, 2], 4)
