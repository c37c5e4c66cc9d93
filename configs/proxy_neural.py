"""Proxy compression with the neural proxy (M1 + arithmetic coding with 16-bit equal-information windows).

Two commands: train M1 on raw bytes, then the proxy run that reads it.

    python -m proxy_jax.main --config=configs/m1.py:tiny --workdir=/tmp/m1_tiny
    python -m proxy_jax.main --config=configs/proxy_neural.py:tiny \
        --config.proxy.m1_workdir=/tmp/m1_tiny --workdir=/tmp/proxy_neural

The proxy run loads M1 (its parameter hash goes into the proxy manifest), sets the segmentation
threshold to the 0.9 entropy quantile over a fixed sample of the training split, and then trains the
paper's recipe: warm-up with translation pairs in random order while r ramps 0.4 -> 0.9, then sentinel
mode at r = 0.9, with one extra 320-way raw head. The vocabulary is 320 + 65536 symbols. Every
compressed document runs M1 twice on the host's device, so on a CPU the input pipeline, not the model,
sets the pace; preprocess once (``python -m proxy_jax.preprocess``) for longer runs. It ends by printing
raw-byte bits per byte on the held-out files beside gzip and xz, and a sample from a raw prompt.
"""

from proxy_jax import recipes

# M1 context per preset: segments never exceed it (configs/m1.py trains tiny on 256 bytes, 6m/40m on 2048).
_CHUNK = {"tiny": 256}


def get_config(preset: str = "tiny"):
    c = recipes.with_preset(preset)
    c.proxy.name = "neural"
    c.proxy.window_bits = 16
    c.proxy.entropy_quantile = 0.9
    c.proxy.chunk_bytes = _CHUNK.get((preset or "tiny").lower(), 2048)
    # 1 keeps segment starts local to high-entropy bytes (stabler view; BENCHMARKS.md has the trade-off).
    c.proxy.min_segment_bytes = 1
    c.model.num_pred_heads = 1
    c.model.num_raw_pred_heads = 1
    recipes.proxy_schedule(c)
    return c
