"""CPU sweep: 3 tiny sizes x 3 budgets for bytes / tokens / proxy_tokens / proxy_gzip / proxy_neural_w8 (and
d64 at two more budgets), 3 seeds at the two largest budgets (1e12 and 2e12 FLOPs) and one elsewhere, plus
the transfer controls of both proxies and the pairing and peak-rate ablations at the smallest size.
``proxy_neural_w8`` is the neural proxy with 8-bit windows (256 symbols): the paper's 16-bit windows
(``proxy_neural``, 65,856 symbols) put almost all of a run's FLOPs into the embedding and output head at
these widths, so it is run only at the smaller budgets, to show that.

The setup runs first, once (``python launch/sweep.py setup``, or the first ``run``): M1 for the neural
proxy (``configs/m1.py:tiny``, trained in ROOT/_shared/m1 unless ``PROXY_JAX_M1=DIR`` names one), then the
whole corpus compressed by the neural proxy (16-bit and 8-bit windows) with two processes into
ROOT/_shared/shards-METHOD, which that method's runs and its control read.

    python launch/sweep.py run --sweep=configs/sweeps/cpu.py --root=/tmp/sweep_cpu
    python launch/sweep.py run --sweep=configs/sweeps/cpu.py:quick --root=/tmp/sweep_cpu_quick
    python launch/sweep.py report /tmp/sweep_cpu

Runtime (2-core CPU VM, 2026-12-07): the setup 6 minutes for M1 and 16-32 minutes per neural corpus; the
108 runs' own wall times add up to 130 minutes, two shards at a time (the tokenizer is trained once and
shared by every run). Result: results/sweep_cpu/ (findings: its README.md).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("_sweep_methods", os.path.join(os.path.dirname(__file__), "methods.py"))
_methods = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_methods)

SIZES = {  # 2 layers each; ~0.1M, 0.25M, 0.5M matmul parameters without the output head
    "d64": dict(d_model=64, d_ff=256, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=32),
    "d96": dict(d_model=96, d_ff=384, num_layers=2, num_heads=3, num_kv_heads=3, head_dim=32),
    "d128": dict(d_model=128, d_ff=512, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=32),
}
BUDGETS = (2.5e11, 5e11, 1e12)  # training FLOPs: 110-430 steps of d64, 30-130 of d128
EXTRA_BUDGETS = (1.25e11, 2e12)  # d64 only (the best size at every budget of the first record)
SEEDS = [0, 1, 2]  # at the two largest budgets (1e12 for every size, 2e12 for d64): the seed spread


def get_config(preset: str = ""):
    """'' = the full grid; 'quick' = budgets halved, sizes d64 and d128, no tokens baseline, and only the
    control and the no-pairing ablation, at the smallest budget (for a loaded machine)."""
    quick = preset == "quick"
    budgets = tuple(b / 2 for b in BUDGETS) if quick else BUDGETS
    sizes = ["d64", "d128"] if quick else list(SIZES)
    main = ["bytes", "proxy_tokens", "proxy_gzip"] + ([] if quick else ["tokens", "proxy_neural_w8"])
    ablations = ["control_tokens", "proxy_tokens_no_pairing"] + (
        [] if quick else ["control_neural_w8", "proxy_tokens_pair_always", "proxy_tokens_peak05",
                          "control_neural"])
    methods, skip = _methods.methods(os.environ.get("PROXY_JAX_M1", ""))
    skip.pop("proxy_neural", None)  # without PROXY_JAX_M1 the setup trains one (the "m1" entry)
    seeds = [0] if quick else SEEDS
    return {
        "preset": "tiny",
        "overrides": {"data.seq_len": 128, "data.batch_size": 16, "train.eval_docs": 6,
                      "train.eval_batch_size": 32},
        "sizes": SIZES,
        "methods": methods,
        "skip": skip,
        "evals": 2,
        "m1": {"config": "configs/m1.py:tiny"},
        "preprocess": {"methods": ["proxy_neural", "proxy_neural_w8"], "processes": 2, "num_shards": 16},
        "grids": [
            {"methods": main, "sizes": sizes, "budgets": budgets[:2], "seeds": [0]},
            {"methods": main, "sizes": sizes, "budgets": budgets[2:], "seeds": seeds},
            # the smallest size at two more budgets, so that each L(C) fit has 5 points, not 3
            *([] if quick else [{"methods": main, "sizes": sizes[:1], "budgets": EXTRA_BUDGETS[:1], "seeds": [0]},
                                {"methods": main, "sizes": sizes[:1], "budgets": EXTRA_BUDGETS[1:], "seeds": seeds}]),
            # the paper's 16-bit windows: a 65,856-symbol vocabulary leaves d64 2-9 steps at these budgets
            *([] if quick else [{"methods": ["proxy_neural"], "sizes": sizes, "budgets": budgets[:2], "seeds": [0]},
                                {"methods": ["proxy_neural"], "sizes": sizes[:1], "budgets": EXTRA_BUDGETS[:1],
                                 "seeds": [0]}]),
            # quick: at the smallest budget, so that they come right after the main grid's first budget
            {"methods": ablations, "sizes": sizes[:1], "budgets": budgets[:1] if quick else budgets[1:2],
             "seeds": [0]},
        ],
    }
