"""M1: the small byte-level LM whose probabilities drive the neural proxy's arithmetic coder.

    python -m proxy_jax.main --config=configs/m1.py:tiny --workdir=/tmp/m1_tiny

Trains on raw stdlib bytes only (proxy "bytes", vanilla mode, rate 0) and prints raw bits per byte on
the held-out files beside gzip and xz, then a sample. ``tiny`` (~0.75M parameters, 256-byte context,
400 steps) is the CPU-sized M1: about 6 minutes on the 2-core CPU (shared with a sweep), and 2.409 raw
bits/byte on the 71 held-out files where gzip -9 gives 1.753 and xz -9e 1.643 (2026-12-06); good enough
for the CPU sweep's neural proxy (which trains it in its setup), not to compress well. ``6m`` (~6.3M,
the paper's compression M1) and ``40m`` (~42M, the paper's entropy scorer) are for an accelerator.
The neural proxy then reads this workdir:

    python -m proxy_jax.main --config=configs/proxy_neural.py:tiny \
        --config.proxy.m1_workdir=/tmp/m1_tiny --workdir=/tmp/proxy_neural
"""

from proxy_jax import recipes


def get_config(preset: str = "tiny"):
    preset = (preset or "tiny").lower()
    if f"m1_{preset}" not in recipes.PRESETS:
        raise ValueError(f"Unknown M1 preset {preset!r}; choose one of tiny, 6m, 40m (configs/m1.py:PRESET).")
    c = recipes.with_preset(f"m1_{preset}")
    c.proxy.name = "bytes"
    recipes.single_view(c, rate=0.0)
    c.train.eval_docs = 200 if preset == "tiny" else 0
    return c
