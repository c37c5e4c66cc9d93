"""The unbiased pass@k estimator (Chen et al. 2021, the HumanEval paper).

Given n samples of which c pass, pass@k is the probability that a uniformly random k-subset of the n
samples contains at least one passing sample:

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

The product form never forms the (huge) binomials, so it is exact to float precision for any n. It is 1
when n - c < k (every k-subset holds a pass). A benchmark's pass@k is the mean over its problems.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _check(n: int, c: int, k: int) -> None:
    if not 0 <= c <= n:
        raise ValueError(f"c={c} passing samples must lie in [0, n={n}].")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must lie in [1, n={n}]: pass@k needs at least k samples per problem.")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples, ``c`` of them passing."""
    _check(n, c, k)
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(n_P: Sequence[int] | np.ndarray, c_P: Sequence[int] | np.ndarray, k: int) -> float:
    """Mean of ``pass_at_k`` over problems P (vectorised: one cumulative log-sum per problem, no loop)."""
    n_P, c_P = np.asarray(n_P, dtype=np.int64), np.asarray(c_P, dtype=np.int64)
    if n_P.shape != c_P.shape or n_P.ndim != 1 or n_P.size == 0:
        raise ValueError(f"n and c must be equal-length non-empty 1-d lists, got shapes {n_P.shape} and {c_P.shape}.")
    for n, c in zip(n_P.tolist(), c_P.tolist()):
        _check(n, c, k)
    # log prod_{i=n-c+1}^{n} (1 - k/i) = S(n) - S(n-c) with S(m) = sum_{i=k+1}^{m} log(1 - k/i); terms with
    # i <= k would be log(<=0) but only occur when n - c < k, which is masked to pass@k = 1.
    top = int(n_P.max())
    i_M = np.arange(1, top + 1, dtype=np.float64)
    log_terms_M = np.where(i_M > k, np.log(np.maximum(1.0 - k / i_M, 1e-300)), 0.0)
    S_M1 = np.concatenate([[0.0], np.cumsum(log_terms_M)])  # S_M1[m] = S(m)
    lower_P = np.maximum(n_P - c_P, 0)
    per_P = np.where(n_P - c_P < k, 1.0, 1.0 - np.exp(S_M1[n_P] - S_M1[lower_P]))
    return float(per_P.mean())
