"""Attention-score error of RoPE at large positions: why rows restart their positions (data.positions).

    python launch/bench_positions.py [--head_dim 128] [--theta 1e5] [--pairs 4096]

For random unit-variance q, k (head_dim 128, the paper's heads) and a query at position p with keys at
p - delta (delta < 4096, inside one row), the scaled score s q.k after ``proxy_jax.model.attention.apply_rope``
(float32, as in training) is compared with the exact score, which depends only on delta (float64
rotation by delta). Prints one JSON line per p: the mean and max absolute score error, the spread
(standard deviation) of the exact scores, and, for scale, the error of rounding q and k to bfloat16.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rotate64(x, pos, theta):
    d = x.shape[-1]
    freqs = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None].astype(np.float64) * freqs
    x1, x2 = x[:, : d // 2], x[:, d // 2:]
    return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head_dim", type=int, default=128)
    parser.add_argument("--theta", type=float, default=1e5)
    parser.add_argument("--pairs", type=int, default=4096)
    args = parser.parse_args()
    import jax.numpy as jnp
    import ml_dtypes

    from proxy_jax.model.attention import apply_rope

    rng = np.random.default_rng(0)
    n, d = args.pairs, args.head_dim
    q, k = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    delta = rng.integers(0, 4096, n)
    scale = d ** -0.5
    exact = scale * np.sum(q * _rotate64(k, -delta, args.theta), -1)  # rotation invariance: only delta counts
    bf = lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float64)
    bf16_noise = np.abs(scale * np.sum(bf(q) * _rotate64(bf(k), -delta, args.theta), -1) - exact).mean()

    def rope32(x, pos):
        return np.asarray(apply_rope(jnp.asarray(x, jnp.float32)[None, :, None, :],
                                     jnp.asarray(pos, jnp.int32)[None, :], args.theta))[0, :, 0, :].astype(np.float64)

    for p in (4096, 65_536, 1_000_000, 10_000_000, 100_000_000):
        pq = np.full(n, p)
        score = scale * np.sum(rope32(q, pq) * rope32(k, pq - delta), -1)
        err = np.abs(score - exact)
        print(json.dumps({"position": p, "mean_abs_error": round(float(err.mean()), 4),
                          "max_abs_error": round(float(err.max()), 4), "score_std": round(float(exact.std()), 3),
                          "bf16_input_error": round(float(bf16_noise), 4)}))


if __name__ == "__main__":
    main()
