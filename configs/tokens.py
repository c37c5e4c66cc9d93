"""The tokenizer baseline: BPE token ids only (a conventional tokenizer LM), no sentinels.

    python -m proxy_jax.main --config=configs/tokens.py:tiny --workdir=/tmp/tokens

It never sees raw bytes: its evaluation (``eval/raw_bpb``) is the bits its token predictions spend per
byte of the held-out text (documents written ``1 tokens 2``, as it was trained), which compares
directly with the byte and proxy runs' raw bits per byte. The raw-prompt sample is switched off.
"""

from proxy_jax import recipes


def get_config(preset: str = "tiny"):
    c = recipes.with_preset(preset)
    c.proxy.name = "tokenizer"
    c.proxy.vocab_size = 1024 if preset in ("tiny", "", None) else 32768  # a small head for CPUs
    recipes.single_view(c, rate=1.0)
    c.train.sample_prompt = ""
    return c
