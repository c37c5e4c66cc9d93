"""The tokenizer baseline: BPE token ids only (a conventional tokenizer LM), no sentinels.

    python -m proxy_jax.main --config=configs/tokens.py:tiny --workdir=/tmp/tokens

It never sees raw bytes, so its raw-byte bits per byte and raw-prompt sample are not meaningful and
are switched off; compare runs by loss per byte of text (train/loss x symbols / bytes) instead.
"""

from proxy_jax import recipes


def get_config(preset: str = "tiny"):
    c = recipes.with_preset(preset)
    c.proxy.name = "tokenizer"
    c.proxy.vocab_size = 1024 if preset in ("tiny", "", None) else 32768  # a small head for CPUs
    recipes.single_view(c, rate=1.0)
    c.train.eval_every = 0
    c.train.sample_prompt = ""
    return c
