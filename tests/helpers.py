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
    config = config_lib.base_config()
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"{key!r} names no config key")
        node[leaf] = value
    return config


def mix_config(warmup: int = 40, steady: int = 5, decay: int = 0, rates=(0.05, 0.95, 0.95),
               modes=("translation_random", "sentinel", "sentinel")) -> ml_collections.ConfigDict:
    """A ``config.mix`` with the given phase lengths, rates (r0, rp, rf) and modes (warm-up, steady, final)."""
    mix = config_lib.base_config().mix
    mix.warmup_steps, mix.steady_steps, mix.decay_steps = warmup, steady, decay
    mix.rate_init, mix.rate_peak, mix.rate_final = rates
    mix.mode_warmup, mix.mode_steady, mix.mode_final = modes
    return mix
