"""Shared test helpers: the standard-library corpus, configs with dotted overrides, mixing schedules.

Fixtures in ``conftest.py`` wrap these; modules that need them at import time (parametrisation,
module-level constants) import them directly.
"""

from __future__ import annotations

import os
import pathlib
import sysconfig

import ml_collections

from proxy_jax import config as config_lib
from proxy_jax import recipes

ROOT = pathlib.Path(__file__).resolve().parent.parent
STDLIB = sysconfig.get_paths()["stdlib"]


def stdlib_paths(limit: int | None = None, pattern: str = "*.py") -> list[pathlib.Path]:
    """The standard library's top-level files matching ``pattern``, sorted (the first ``limit``)."""
    return sorted(pathlib.Path(STDLIB).glob(pattern))[:limit]


def stdlib_docs(limit: int | None = 64, max_bytes: int = 4000) -> list[bytes]:
    """The first ``max_bytes`` of each of the first ``limit`` standard-library files."""
    return [p.read_bytes()[:max_bytes] for p in stdlib_paths(limit)]


def config_with(spec: str | None = None, **dotted) -> ml_collections.ConfigDict:
    """``base_config()`` (or a config file ``configs/NAME.py:PRESET``) with dotted overrides applied:
    ``config_with(**{"data.seq_len": 64, "proxy.name": "gzip"})``."""
    if spec:
        return recipes.load_config(os.path.join(ROOT, spec), **dotted)
    return config_lib.override(config_lib.base_config(), **dotted)


# The one shrink of a preset to a seconds-long CPU run (one layer of width 64, rows of 64, 8 steps,
# checkpoints every 4, no evaluation, TensorBoard or sample): tests override what they exercise on top.
TINY = {
    "train.steps": 8,
    "train.checkpoint_every": 4,
    "train.log_every": 1,
    "train.eval_every": 0,
    "train.tensorboard": False,
    "train.sample_prompt": "",
    "data.seq_len": 64,
    "data.batch_size": 8,
    "model.num_layers": 1,
    "model.d_model": 64,
    "model.num_heads": 2,
    "model.num_kv_heads": 2,
    "model.head_dim": 32,
    "model.d_ff": 128,
}
# A tokenizer small enough to train in seconds on a few hundred kB.
TINY_TOKENIZER = {"proxy.vocab_size": 512, "proxy.train_max_bytes": 200_000}


def tiny_run_config(spec: str = "configs/proxy_gzip.py:tiny", **overrides) -> ml_collections.ConfigDict:
    """``spec`` shrunk by :data:`TINY` (plus ``overrides``); proxy presets get their schedule rescaled to the
    steps (``recipes.proxy_schedule``: a warm-up of pairs, then sentinel mode, so both paths run)."""
    config = recipes.load_config(os.path.join(ROOT, spec), **{**TINY, **overrides})
    if config.mix.mode_steady != "vanilla":
        recipes.proxy_schedule(config)
    return config


# A run trained for 3 steps on a small folder corpus: enough for every consumer of a finished run.
TINY_RUN = {**TINY, "train.steps": 3, "train.checkpoint_every": 3, "data.batch_size": 4, "data.source": "dir",
            "data.val_fraction": 0.2}


def train_tiny(workdir: str, corpus: str, spec: str, **overrides) -> str:
    """Trains ``configs/NAME.py:PRESET`` with ``TINY_RUN`` on the folder ``corpus`` into ``workdir``."""
    from proxy_jax import train

    config = recipes.load_config(os.path.join(ROOT, spec), **{**TINY_RUN, "data.path": corpus, **overrides})
    train.train(config, workdir, progress=False)
    return workdir


def packed_attention_inputs(b: int = 4, length: int = 128, heads: int = 4, kv_heads: int = 2, d: int = 32):
    """Random float32 q [b, length, heads, d], k and v [b, length, kv_heads, d], and segment ids of packed rows:
    three documents per row (the third cut short by padding in row 1)."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(b, length, heads, d)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, length, kv_heads, d)), jnp.float32) for _ in range(2))
    segments = np.ones((b, length), np.int32)
    segments[:, 50:], segments[:, 100:], segments[1, 110:] = 2, 3, 0
    return q, k, v, segments


def mix_config(warmup: int = 40, steady: int = 5, decay: int = 0, rates=(0.05, 0.95, 0.95),
               modes=("translation_random", "sentinel", "sentinel")) -> ml_collections.ConfigDict:
    """A ``config.mix`` with the given phase lengths, rates (r0, rp, rf) and modes (warm-up, steady, final)."""
    mix = config_lib.base_config().mix
    mix.warmup_steps, mix.steady_steps, mix.decay_steps = warmup, steady, decay
    mix.rate_init, mix.rate_peak, mix.rate_final = rates
    mix.mode_warmup, mix.mode_steady, mix.mode_final = modes
    return mix


def write_corpus(folder: str, files: int = 40, max_bytes: int = 3000) -> str:
    """A folder of the first ``max_bytes`` of the first ``files`` standard-library files."""
    os.makedirs(folder, exist_ok=True)
    for path in stdlib_paths(files):
        with open(os.path.join(folder, path.name), "wb") as f:
            f.write(path.read_bytes()[:max_bytes])
    return folder


def shared_folder(name: str, build) -> str:
    """The folder ``name`` of this test session's shared folder (``conftest.SHARED``), made by
    ``build(folder)`` in the first process that asks for it (an xdist worker, a subprocess's pytest);
    the others wait for it and reuse it. Read-only to its users: copy it (:func:`copy_run`) to change it."""
    import fcntl
    import shutil

    root = os.environ["PROXY_JAX_TEST_SHARED"]
    folder = os.path.join(root, name)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with open(folder + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if build fails
        if not os.path.exists(folder + ".done"):
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            build(folder)
            open(folder + ".done", "w").close()
    return folder


def copy_run(workdir: str, dest) -> str:
    """A copy of the finished run ``workdir`` at ``dest`` (a test that damages, resumes or trains on a
    shared run works on its own copy)."""
    import shutil

    return shutil.copytree(workdir, str(dest), symlinks=True)
