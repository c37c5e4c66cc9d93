"""Time the neural coder's per-byte interval lookup (``quantize.byte_intervals_jnp``) on this host.

    python launch/bench_intervals.py [--lanes 64] [--length 2048]

Compares the masked sum used by the coder with a cumulative-sum lookup (the earlier implementation),
on random 256-way tables, and checks that both give the same intervals.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cumsum_lookup(freq_Nx256, bytes_N):
    import jax.numpy as jnp

    freq = freq_Nx256.astype(jnp.uint32)
    cum = jnp.cumsum(freq, axis=-1, dtype=jnp.uint32) - freq
    idx = bytes_N.astype(jnp.int32)[..., None]
    return jnp.take_along_axis(cum, idx, -1)[..., 0], jnp.take_along_axis(freq, idx, -1)[..., 0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lanes", type=int, default=64)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from proxy_jax.proxies.neural import quantize

    rng = np.random.default_rng(0)
    freq = jnp.asarray(rng.integers(1, 200, (args.lanes, args.length, 256)), jnp.uint32)
    data = jnp.asarray(rng.integers(0, 256, (args.lanes, args.length)), jnp.uint8)
    results = {}
    for name, fn in (("masked sum (coder)", quantize.byte_intervals_jnp), ("cumulative sum", cumsum_lookup)):
        jitted = jax.jit(fn)
        results[name] = jax.block_until_ready(jitted(freq, data))
        start = time.perf_counter()
        for _ in range(args.repeats):
            jax.block_until_ready(jitted(freq, data))
        seconds = (time.perf_counter() - start) / args.repeats
        print(f"{name:20s} {seconds * 1e3:8.1f} ms  {args.lanes * args.length / seconds / 1e6:6.2f} MB/s")
    a, b = results.values()
    same = all(bool(jnp.array_equal(x, y)) for x, y in zip(a, b))
    print("same intervals:", same)
    if not same:
        raise SystemExit("the two lookups disagree")


if __name__ == "__main__":
    main()
