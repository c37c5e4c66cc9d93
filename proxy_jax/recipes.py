"""Size presets shared by the experiment files in ``configs/``.

A preset fixes the model size, context, batch, steps and learning rate; the experiment file then says
which proxy and which mixing recipe to use. The paper-scale presets follow the paper: 50k steps of
~2M symbols (128 rows x 16k), AdamW, cosine with 500 warm-up steps, lr 1.2e-3 at 0.5B down to 5e-4 at
7B/14B (1.5B and 4B are interpolated). ``tiny`` and ``small`` are for CPUs and a single GPU.
"""

from __future__ import annotations

import ml_collections

from proxy_jax import config as config_lib

# Model shapes (d_model, d_ff, num_layers, heads, kv heads, head_dim); head_dim is 128 at the paper's sizes.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=128, d_ff=512, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=32),
    "m1_tiny": dict(d_model=128, d_ff=256, num_layers=4, num_heads=2, num_kv_heads=2, head_dim=64),
    "m1_small": dict(d_model=256, d_ff=1024, num_layers=6, num_heads=4, num_kv_heads=4, head_dim=64),
    "m1_40m": dict(d_model=512, d_ff=2048, num_layers=10, num_heads=8, num_kv_heads=8, head_dim=64),
    "small": dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8, num_kv_heads=8, head_dim=64),
    "0.5B": dict(d_model=1024, d_ff=4096, num_layers=28, num_heads=8, num_kv_heads=8, head_dim=128),
    "1.5B": dict(d_model=2048, d_ff=8192, num_layers=20, num_heads=16, num_kv_heads=16, head_dim=128),
    "4B": dict(d_model=3072, d_ff=9216, num_layers=32, num_heads=24, num_kv_heads=24, head_dim=128),
    "7B": dict(d_model=4096, d_ff=12288, num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128),
    "14B": dict(d_model=5120, d_ff=16384, num_layers=40, num_heads=40, num_kv_heads=40, head_dim=128),
}


def apply_size(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Set ``config.model``'s shape fields to the preset ``name`` (a key of ``SIZES``); returns config."""
    if name not in SIZES:
        raise ValueError(f"Unknown model size {name!r}; choose one of {sorted(SIZES)}.")
    for key, value in SIZES[name].items():
        config.model[key] = value
    return config

# preset: (model size, seq_len, global batch, steps, lr, opt warm-up, compute dtype)
PRESETS = {
    "tiny": ("tiny", 256, 16, 800, 3e-3, 50, "float32"),  # 2-core CPU: about 6 minutes
    "small": ("small", 1024, 32, 5_000, 2e-3, 200, "bfloat16"),  # one GPU: under an hour
    "0.5b": ("0.5B", 16_384, 128, 50_000, 1.2e-3, 500, "bfloat16"),
    "1.5b": ("1.5B", 16_384, 128, 50_000, 8e-4, 500, "bfloat16"),
    "4b": ("4B", 16_384, 128, 50_000, 6e-4, 500, "bfloat16"),
    "7b": ("7B", 16_384, 128, 50_000, 5e-4, 500, "bfloat16"),
    "14b": ("14B", 16_384, 128, 50_000, 5e-4, 500, "bfloat16"),
    # M1, the neural proxy's byte model (configs/m1.py): ~0.75M for CPUs, ~6M and ~40M as in the paper.
    "m1_tiny": ("m1_tiny", 256, 16, 400, 3e-3, 40, "float32"),
    "m1_6m": ("m1_small", 2048, 64, 20_000, 1e-3, 500, "bfloat16"),
    "m1_40m": ("m1_40m", 2048, 64, 50_000, 8e-4, 500, "bfloat16"),
}
SMALL_PRESETS = ("tiny", "small", "m1_tiny", "m1_6m", "m1_40m")

# GPU starting points, NOT YET MEASURED on a GPU (chosen from memory arithmetic, to be confirmed with
# launch/bench_mfu.py): ``PRESET_h100`` = PRESET plus these settings for one node of 8 x H100 80 GB,
# bf16, cuDNN flash attention, chunked loss (the 32k-97k vocabulary logits otherwise dominate
# activations). preset: (remat policy, rows of seq_len per GPU per micro-batch). grad_accum_steps is
# set so 8 GPUs reach the preset's global batch; with more nodes divide it by the node count.
GPU_SETTINGS = {
    "small": ("none", 32),
    "0.5b": ("dots_with_no_batch_dims", 2),
    "1.5b": ("dots_with_no_batch_dims", 1),
    "4b": ("full", 1),
    "7b": ("full", 1),
    "14b": ("full", 1),  # parameters + AdamW state are 224 GB: fsdp over all 8 GPUs is required
}
GPU_LOSS_CHUNK = 2048  # positions per chunk of the output heads + cross-entropy (config.model.loss_chunk)

# TPU meshes (data, fsdp, tensor) for the paper-scale presets at seq_len 16,384 and 128 rows per step on
# 64 chips (v5p:4x4x4 or v6e:8x8), splash attention, remat "full": pure FSDP. Compiled ahead of time for
# every size on both topologies (BENCHMARKS.md, "Ahead-of-time compile for TPU"): all fit v5p (at most
# 38.3 GiB of 88.5 per chip); on v6e (29.8 GiB) up to 7B fit, and 14B fits at 64 rows per step (one row
# per chip: 22.0 GiB), so give it a 128-chip slice or gradient accumulation for the paper's 128 rows.
TPU_MESH = {"0.5b": (1, 64, 1), "1.5b": (1, 64, 1), "4b": (1, 64, 1), "7b": (1, 64, 1), "14b": (1, 64, 1)}


# Any preset name followed by this suffix (``0.5b_eva`` .. ``14b_eva``) trains with the paper's EVA
# attention (W=2048, C=8; their 16k context is 8 windows); the same as --config.model.attention=eva.
EVA_SUFFIX = "_eva"


def with_preset(preset: str | None) -> ml_collections.ConfigDict:
    """The base config with a size preset applied (``None`` or '' means ``tiny``; ``NAME_eva``: EVA attention)."""
    preset = (preset or "tiny").lower()
    eva = preset.endswith(EVA_SUFFIX)
    preset = preset.removesuffix(EVA_SUFFIX)
    gpu = preset.endswith("_h100") and preset[: -len("_h100")] in GPU_SETTINGS
    if gpu:
        preset = preset[: -len("_h100")]
    if preset not in PRESETS:
        gpu_names = ", ".join(f"{k}_h100" for k in GPU_SETTINGS)
        raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}, {gpu_names}, each "
                         f"optionally followed by {EVA_SUFFIX!r} (config.py:PRESET).")
    size, seq_len, batch, steps, lr, warmup, dtype = PRESETS[preset]
    c = config_lib.base_config()
    apply_size(c, size)
    c.model.dtype = dtype
    c.data.seq_len = seq_len
    c.data.batch_size = batch
    c.train.steps = steps
    c.opt.lr = lr
    c.opt.warmup_steps = warmup
    # Score with no more context than the model was trained on (the paper: 4096-token windows, 16k training).
    c.train.eval_window = min(4096, seq_len)
    if preset in SMALL_PRESETS:
        c.train.eval_every = steps  # one evaluation, at the end
        c.train.checkpoint_every = max(100, steps // 4)
        c.train.log_every = 10
        c.train.eval_batch_size = 16
        # Small batches are filled from a handful of documents; cutting long files into pieces lets
        # the shuffle put several places of the corpus into every step.
        c.data.max_doc_bytes = 2048
        if preset in ("tiny", "m1_tiny"):
            c.model.scan_layers = False  # the others keep "auto": scanned on a GPU, unrolled on a CPU
    if gpu:
        remat, rows_per_gpu = GPU_SETTINGS[preset]
        c.model.attention, c.model.remat_policy, c.model.loss_chunk = "cudnn", remat, GPU_LOSS_CHUNK
        c.opt.grad_accum_steps = max(1, batch // (8 * rows_per_gpu))
    if eva:
        c.model.attention, c.model.eva_window, c.model.eva_chunk = "eva", 2048, 8
    return c


# What a recipe derives from ``train.steps``: setting ``train.steps`` through :func:`load_config` or the command
# line (``--config.train.steps=N``) rescales those not set alongside it, so they keep their fraction of the
# run (a 60-step ``tiny`` run warms up for 12 steps, not 160, and checkpoints every 15, not 200).
STEP_SCALED = ("mix.warmup_steps", "mix.steady_steps", "mix.decay_steps", "opt.warmup_steps",
               "train.checkpoint_every", "train.eval_every")


def with_steps(c: ml_collections.ConfigDict, steps: int, keep=()) -> ml_collections.ConfigDict:
    """Sets ``train.steps`` to ``steps``; each field of ``STEP_SCALED`` not in ``keep`` is multiplied by
    ``steps / old steps`` (rounded; the optimiser warm-up and the cadences stay >= 1, the warm-up < steps;
    0 stays 0). Returns ``c``."""
    steps, old = int(steps), int(c.train.steps)
    if steps < 1:
        raise ValueError(f"--config.train.steps={steps} must be > 0.")
    for dotted in STEP_SCALED:
        group, key = dotted.split(".")
        value = int(c[group][key])
        if dotted in keep or value <= 0 or steps == old:
            continue
        scaled = int(round(value * steps / old))
        if group != "mix":
            scaled = max(1, scaled)
        if dotted == "opt.warmup_steps":
            scaled = max(1, min(scaled, steps - 1))
        c[group][key] = scaled
    c.train.steps = steps
    return c


def longer_than_run(c: ml_collections.ConfigDict) -> list[str]:
    """The warm-ups and cadences of ``c`` longer than its ``train.steps`` (``"key=value"`` each): what a plain
    assignment ``c.train.steps = 3`` leaves behind, since only ``with_steps`` (``--config.train.steps``,
    ``load_config``) rescales them. The mixing phases count as too long when the run never reaches the
    last one that differs from where it ends (not for a transfer control, ``data.raw_only_of_mix``, which
    keeps its proxy run's schedule over a shorter loop)."""
    steps = int(c.train.steps)
    values = {key: int(c[key.split(".")[0]][key.split(".")[1]])
              for key in ("opt.warmup_steps", "mix.warmup_steps", "train.checkpoint_every", "train.eval_every")}
    if c.data.raw_only_of_mix:  # a transfer control keeps its proxy run's schedule on purpose (scaling.sweep)
        del values["mix.warmup_steps"]
    out = [f"{key}={value}" for key, value in values.items() if value > steps]
    w, t, d = int(c.mix.warmup_steps), int(c.mix.steady_steps), int(c.mix.decay_steps)
    changes_later = d > 0 or c.mix.mode_final != c.mix.mode_steady or c.mix.rate_final != c.mix.rate_peak
    if w <= steps < w + t + d and changes_later and not c.data.raw_only_of_mix:
        out.append(f"mix.warmup_steps+steady_steps+decay_steps={w + t + d}")
    return out


def proxy_schedule(c: ml_collections.ConfigDict) -> None:
    """The paper's mixing recipe scaled to the run: warm-up 20% of steps with translation pairs in random
    order and r ramping 0.4 -> 0.9, then sentinel mode at r = 0.9 (paper: W=10k, T=40k of 50k steps)."""
    c.mix.warmup_steps = c.train.steps // 5
    c.mix.steady_steps = c.train.steps - c.mix.warmup_steps
    c.mix.decay_steps = 0
    c.mix.rate_init, c.mix.rate_peak, c.mix.rate_final = 0.4, 0.9, 0.9
    c.mix.mode_warmup, c.mix.mode_steady, c.mix.mode_final = "translation_random", "sentinel", "sentinel"


def single_view(c: ml_collections.ConfigDict, rate: float) -> None:
    """One representation, no sentinels: rate 0 = bytes only, rate 1 = compressed only."""
    c.mix.warmup_steps = c.mix.decay_steps = 0
    c.mix.steady_steps = c.train.steps
    c.mix.rate_init = c.mix.rate_peak = c.mix.rate_final = rate
    c.mix.mode_warmup = c.mix.mode_steady = c.mix.mode_final = "vanilla"


def config_path(path: str) -> str:
    """The file a ``--config`` path names: the path itself when it exists, else the shipped config of that
    name (``proxy_tokens``, ``proxy_tokens.py``, ``configs/proxy_tokens.py``, ``sweeps/cpu.py``), so the
    commands work from any folder after ``pip install``: the configs are installed with the package
    (``proxy_jax/configs``) and, in a checkout, read from its ``configs/``."""
    import os

    if os.path.exists(path) or "://" in path:
        return path
    name = path[len("configs/"):] if path.startswith("configs/") else path
    name = name if name.endswith(".py") else name + ".py"
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (os.path.join(here, "configs"), os.path.join(os.path.dirname(here), "configs")):
        candidate = os.path.join(root, name)
        if os.path.isfile(candidate):
            return candidate
    return path


def load_config(spec: str, **overrides) -> ml_collections.ConfigDict:
    """Loads ``"configs/proxy_tokens.py:tiny"`` like the command line does, then applies dotted overrides.

    An override of ``train.steps`` rescales the recipe's phases and cadences not overridden with it
    (:func:`with_steps`); an unknown key is refused with a suggestion (``config.override``).

    >>> load_config("configs/bytes.py:tiny", **{"train.steps": 20, "data.seq_len": 128})
    >>> load_config("bytes:tiny")  # the shipped config of that name, from any folder
    """
    import importlib.util
    import os

    path, _, preset = spec.partition(":")
    path = config_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist (expected e.g. configs/proxy_tokens.py:tiny).")
    module_spec = importlib.util.spec_from_file_location(f"_proxy_jax_config_{abs(hash(path))}", path)
    if module_spec is None:
        raise ValueError(f"Config file {path!r} is not a Python file (expected e.g. configs/proxy_tokens.py:tiny).")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ValueError(f"Config file {path!r} does not parse: {e.msg} (line {e.lineno}).") from None
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"Config file {path!r} defines no get_config(); every file in configs/ has one.")
    config = module.get_config(preset) if preset else module.get_config()
    if "train.steps" in overrides:
        with_steps(config, overrides["train.steps"], keep=set(overrides))
    return config_lib.override(config, **overrides)
