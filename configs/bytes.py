"""The byte baseline: raw UTF-8 bytes only, no sentinels, no compressor.

    python -m proxy_jax.main --config=configs/bytes.py:tiny --workdir=/tmp/bytes

Prints raw-byte bits per byte on the held-out stdlib files beside gzip and xz, and a sample.
"""

from proxy_jax import recipes


def get_config(preset: str = "tiny"):
    c = recipes.with_preset(preset)
    c.proxy.name = "bytes"
    recipes.single_view(c, rate=0.0)
    return c
