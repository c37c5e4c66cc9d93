"""The methods a sweep compares (shared by the sweep files beside this one; not a sweep itself).

Each entry: an experiment file, dotted overrides, and for a transfer control the proxy method it mirrors.
The ablations follow SPEC section 5: pairing (translation pairs, random order) during warm-up only
is the paper's recipe; "pairing always on" keeps translation pairs all run long; "no pairing" uses
sentinel mode from the start; the peak rate 0.5 ablation lowers r_peak = r_final from 0.9.
"""

METHODS = {
    "bytes": {"config": "configs/bytes.py"},
    "tokens": {"config": "configs/tokens.py"},
    "proxy_tokens": {"config": "configs/proxy_tokens.py"},
    "proxy_gzip": {"config": "configs/proxy_gzip.py"},
    "proxy_neural": {"config": "configs/proxy_neural.py"},
    # Transfer control: the raw bytes proxy_tokens sees, in its order, and nothing else (byte vocabulary).
    "control_tokens": {"config": "configs/proxy_tokens.py", "control_of": "proxy_tokens"},
    "control_neural": {"config": "configs/proxy_neural.py", "control_of": "proxy_neural"},
    # The neural proxy with 8-bit windows (256 symbols, vocabulary 576 like gzip's): at the CPU sweep's sizes
    # the paper's 16-bit windows put almost all of a run's FLOPs in the 65,856-row embedding and head.
    "proxy_neural_w8": {"config": "configs/proxy_neural.py", "overrides": {"proxy.window_bits": 8}},
    "control_neural_w8": {"config": "configs/proxy_neural.py", "overrides": {"proxy.window_bits": 8},
                          "control_of": "proxy_neural_w8"},
    "proxy_tokens_pair_always": {"config": "configs/proxy_tokens.py",
                                 "overrides": {"mix.mode_steady": "translation_random",
                                               "mix.mode_final": "translation_random"}},
    "proxy_tokens_no_pairing": {"config": "configs/proxy_tokens.py", "overrides": {"mix.mode_warmup": "sentinel"}},
    "proxy_tokens_peak05": {"config": "configs/proxy_tokens.py",
                            "overrides": {"mix.rate_peak": 0.5, "mix.rate_final": 0.5}},
}


def methods(m1_workdir: str = ""):
    """METHODS, with the neural proxy pointed at ``m1_workdir``; (methods, skip) where skip says why not."""
    out = {k: dict(v) for k, v in METHODS.items()}
    skip = {}
    if m1_workdir:
        out["proxy_neural"]["overrides"] = {"proxy.m1_workdir": m1_workdir}
    else:
        skip["proxy_neural"] = ("no M1 workdir given (train one with configs/m1.py and pass its workdir: "
                                "PROXY_JAX_M1=/path/to/m1 python launch/sweep.py run ...)")
    return out, skip
