"""Proxy compression with the tokenizer proxy: the paper's main recipe.

    python -m proxy_jax.main --config=configs/proxy_tokens.py:tiny --workdir=/tmp/proxy_tokens

Trains a SentencePiece BPE (1024 pieces; 32768 for the larger presets) on the training split of the
default corpus (the Python standard library's .py files), then a tiny model on a mix of raw bytes and
token ids: warm-up with translation pairs in random order while r ramps 0.4 -> 0.9, then sentinel mode
at r = 0.9, plus one extra 320-way raw head. It ends by printing raw-byte bits per byte on the held-out files beside gzip and xz,
and a sample from a raw prompt. Presets: tiny (2-core CPU, minutes), small (one GPU), 0.5b .. 14b (pods).
"""

from proxy_jax import recipes


def get_config(preset: str = "tiny"):
    c = recipes.with_preset(preset)
    c.proxy.name = "tokenizer"
    c.proxy.vocab_size = 1024 if preset in ("tiny", "", None) else 32768  # a small head for CPUs
    c.model.num_pred_heads = 1
    c.model.num_raw_pred_heads = 1
    recipes.proxy_schedule(c)
    return c
