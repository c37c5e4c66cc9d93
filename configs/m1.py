"""M1: the small byte-level LM whose probabilities drive the neural proxy's arithmetic coder.

    python -m proxy_jax.main --config=configs/m1.py:tiny --workdir=/tmp/m1_tiny

Trains on raw stdlib bytes only (proxy "bytes", vanilla mode, rate 0) and prints raw bits per byte on
the held-out files beside gzip and xz, then a sample. ``tiny`` (~0.75M parameters, 256-byte context,
400 steps) takes about 12 minutes on a busy 2-core CPU and reaches about 3.4 raw bits/byte on the
held-out files (gzip -9: 1.75); good enough to test the coder, not to compress well. ``6m`` (~6.3M, the paper's compression M1) and ``40m``
(~42M, the paper's entropy scorer) are for an accelerator. The neural proxy then reads this workdir:

    python -m proxy_jax.main --config=configs/proxy_neural.py:tiny \
        --config.proxy.m1_workdir=/tmp/m1_tiny --workdir=/tmp/proxy_neural
"""

from proxy_jax import config as config_lib

# preset: model shape, context, batch, steps, lr, warm-up, compute dtype
PRESETS = {
    "tiny": (dict(d_model=128, d_ff=256, num_layers=4, num_heads=2, num_kv_heads=2, head_dim=64),
             256, 16, 400, 3e-3, 40, "float32"),
    "6m": (dict(d_model=256, d_ff=1024, num_layers=6, num_heads=4, num_kv_heads=4, head_dim=64),
           2048, 64, 20_000, 1e-3, 500, "bfloat16"),
    "40m": (dict(d_model=512, d_ff=2048, num_layers=10, num_heads=8, num_kv_heads=8, head_dim=64),
            2048, 64, 50_000, 8e-4, 500, "bfloat16"),
}


def get_config(preset: str = "tiny"):
    preset = (preset or "tiny").lower()
    if preset not in PRESETS:
        raise ValueError(f"Unknown M1 preset {preset!r}; choose one of {', '.join(PRESETS)} (configs/m1.py:PRESET).")
    shape, seq_len, batch, steps, lr, warmup, dtype = PRESETS[preset]
    c = config_lib.base_config()
    for key, value in shape.items():
        c.model[key] = value
    c.model.dtype = dtype
    c.model.scan_layers = preset != "tiny"
    c.proxy.name = "bytes"
    c.mix.warmup_steps = c.mix.decay_steps = 0
    c.mix.steady_steps = steps
    c.mix.rate_init = c.mix.rate_peak = c.mix.rate_final = 0.0
    c.mix.mode_warmup = c.mix.mode_steady = c.mix.mode_final = "vanilla"
    c.data.seq_len = seq_len
    c.data.batch_size = batch
    c.train.steps = steps
    c.opt.lr = lr
    c.opt.warmup_steps = warmup
    c.train.eval_every = steps
    c.train.checkpoint_every = max(100, steps // 4)
    c.train.eval_window = 1024 if preset == "tiny" else 4096
    c.train.eval_docs = 200 if preset == "tiny" else 0
    c.train.eval_batch_size = 16
    c.train.sample_prompt = "def fibonacci(n):\n"
    return c
