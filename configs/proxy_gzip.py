"""The negative control: proxy compression with gzip -9 as the compressor.

    python -m proxy_jax.main --config=configs/proxy_gzip.py:tiny --workdir=/tmp/proxy_gzip

Same recipe as configs/proxy_tokens.py with gzip bytes as the compressed view (vocab 576). gzip output
changes completely when the input changes a little, so nothing transfers: expect raw bits per byte no
better than the byte baseline's at the same raw-byte budget.
"""

from proxy_jax import recipes


def get_config(preset: str = "tiny"):
    c = recipes.with_preset(preset)
    c.proxy.name = "gzip"
    c.model.num_pred_heads = 1
    c.model.num_raw_pred_heads = 1
    recipes.proxy_schedule(c)
    return c
