"""EVA attention vs full causal attention: training step time, compiled memory, decode speed.

    python launch/bench_eva.py --lengths 4096,8192,16384,32768 --window 2048 --chunk 8

For each length T (batch 1, ``--heads`` heads of ``--head_dim``, one document per row) it jits the
forward + backward of the attention alone (gradients w.r.t. q, k, v; EVA also w.r.t. mu, phi) and
reports the median of ``--repeats`` timed runs after one untimed run, and the temporary bytes XLA
plans for it (``compile().memory_analysis().temp_size_in_bytes``; compiling allocates nothing, so
the memory column is filled even for lengths too slow to run). Full attention is
``jax.nn.dot_product_attention(is_causal=True)`` with XLA's implementation, which materialises the
T x T scores; it is only run up to ``--max_full_run`` tokens. Then it times ``eva_decode_step``
(jitted) with a cache for ``--decode_max_len`` tokens and reports tokens per second.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _timed(fn, args, repeats):
    import jax
    import numpy as np

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="4096,8192,16384,32768")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head_dim", type=int, default=32)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max_full_run", type=int, default=8192, help="longest T at which full attention is run")
    p.add_argument("--max_eva_run", type=int, default=32768, help="longest T at which EVA is run")
    p.add_argument("--decode_max_len", default="8192,32768")
    p.add_argument("--decode_steps", type=int, default=256)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from proxy_jax.model import eva

    h, d, w, c = args.heads, args.head_dim, args.window, args.chunk
    mu, phi = eva.eva_init(jax.random.key(0), h, d)
    device = jax.devices()[0].device_kind
    results = []
    for t in (int(x) for x in args.lengths.split(",")):
        rng = np.random.default_rng(t)
        q, k, v = (jnp.asarray(rng.standard_normal((1, t, h, d)), jnp.float32) for _ in range(3))
        seg = jnp.ones((1, t), jnp.int32)

        def eva_loss(q, k, v, mu, phi):
            return jnp.sum(eva.eva_attention(q, k, v, seg, mu, phi, window=w, chunk=c) ** 2)

        def full_loss(q, k, v, mu, phi):
            return jnp.sum(jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla") ** 2)

        for name, loss, limit in (("eva", eva_loss, args.max_eva_run), ("full", full_loss, args.max_full_run)):
            step = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
            compiled = step.lower(q, k, v, mu, phi).compile()
            temp = compiled.memory_analysis().temp_size_in_bytes
            seconds = _timed(compiled, (q, k, v, mu, phi), args.repeats) if t <= limit else None
            r = {"attention": name, "T": t, "seconds": seconds, "temp_bytes": temp, "device": device}
            results.append(r)
            shown = f"{seconds:.3f} s" if seconds is not None else "not run"
            print(f"{name:4s} T={t:6d} fwd+bwd {shown:>9s}  temp {temp / 2**20:9.1f} MiB  on {device}", flush=True)

    for max_len in (int(x) for x in args.decode_max_len.split(",")):
        cache = eva.eva_cache_init(1, max_len, h, d, window=w, chunk=c, dtype=jnp.float32)
        step = jax.jit(lambda cache, x, s: eva.eva_decode_step(cache, x, x, x, s, mu, phi, window=w, chunk=c))
        x = jnp.ones((1, 1, h, d), jnp.float32)
        s = jnp.ones((1, 1), jnp.int32)
        _, cache = step(cache, x, s)
        jax.block_until_ready(cache)
        t0 = time.perf_counter()
        for _ in range(args.decode_steps):
            out, cache = step(cache, x, s)
        jax.block_until_ready(out)
        rate = args.decode_steps / (time.perf_counter() - t0)
        results.append({"attention": "eva_decode", "max_len": max_len, "tokens_per_s": rate, "device": device})
        print(f"eva decode max_len={max_len}: {rate:,.0f} tokens/s (batch 1) on {device}", flush=True)
    return results


if __name__ == "__main__":
    main()
