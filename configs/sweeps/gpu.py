"""GPU sweep: 3 sizes (25M, 50M, 100M matmul parameters) x 3 budgets for bytes / tokens / proxy_tokens /
proxy_gzip (and proxy_neural given an M1), plus the transfer control, the pairing and the peak-rate
ablations at the middle size and budget.

    python launch/sweep.py run --sweep=configs/sweeps/gpu.py --root=/tmp/sweep_gpu
    PROXY_JAX_M1=/tmp/m1_6m python launch/sweep.py run --sweep=configs/sweeps/gpu.py --root=/tmp/sweep_gpu
    python launch/sweep.py report /tmp/sweep_gpu

Runtime: planned for about 30 minutes of one H100 (~1.8e17 training FLOPs in all at ~1e14 FLOP/s, plus
compilation); not measured yet. Split it over n GPUs with --shard=i/n (launch/sweep.py shows the lines).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("_sweep_methods", os.path.join(os.path.dirname(__file__), "methods.py"))
_methods = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_methods)

SIZES = {  # head_dim 64; 16 d^2 matmul parameters per layer with d_ff = 4d
    "25m": dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8, num_kv_heads=8, head_dim=64),
    "50m": dict(d_model=640, d_ff=2560, num_layers=8, num_heads=10, num_kv_heads=10, head_dim=64),
    "100m": dict(d_model=1024, d_ff=4096, num_layers=6, num_heads=16, num_kv_heads=16, head_dim=64),
}
BUDGETS = (2e15, 4e15, 8e15)  # training FLOPs: ~250-1000 steps of 32 x 1024 symbols


def get_config(preset: str = ""):
    del preset
    methods, skip = _methods.methods(os.environ.get("PROXY_JAX_M1", ""))
    return {
        "preset": "small",  # seq_len 1024, batch 32, bfloat16
        "overrides": {"train.eval_docs": 64},
        "sizes": SIZES,
        "methods": methods,
        "skip": skip,
        "evals": 4,
        "grids": [
            {"methods": ["bytes", "tokens", "proxy_tokens", "proxy_gzip", "proxy_neural"], "sizes": list(SIZES),
             "budgets": BUDGETS, "seeds": [0]},
            {"methods": ["control_tokens", "proxy_tokens_pair_always", "proxy_tokens_no_pairing",
                         "proxy_tokens_peak05"], "sizes": ["50m"], "budgets": BUDGETS[1:2], "seeds": [0]},
        ],
    }
