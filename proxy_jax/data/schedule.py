"""The schedule of the compression rate r and of the mixing mode over optimiser steps.

Phases by step c, with W = warmup_steps, T = steady_steps, D = decay_steps:

| steps               | rate r                         | mode          |
|---------------------|--------------------------------|---------------|
| c < W               | r0 + (rp - r0) * c / W         | mode_warmup   |
| W <= c < W+T        | rp                             | mode_steady   |
| W+T <= c < W+T+D    | rp + (rf - rp) * (c - W - T)/D | mode_steady   |
| c >= W+T+D          | rf                             | mode_final    |
"""

from __future__ import annotations

import ml_collections
import numpy as np

from proxy_jax.data.mixing import MODES


def validate_mix(mix: ml_collections.ConfigDict) -> None:
    """Raises one clear ValueError for a malformed ``config.mix``."""
    for key in ("rate_init", "rate_peak", "rate_final"):
        value = float(mix[key])
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"config.mix.{key}={value} is not a probability; set it within [0, 1].")
    for key in ("warmup_steps", "steady_steps", "decay_steps"):
        value = mix[key]
        if int(value) != value or int(value) < 0:
            raise ValueError(f"config.mix.{key}={value!r} must be a non-negative integer number of steps.")
    for key in ("mode_warmup", "mode_steady", "mode_final"):
        if mix[key] not in MODES:
            raise ValueError(f"config.mix.{key}={mix[key]!r} is not a mode; use one of {', '.join(MODES)}.")


def schedule_at(step: int, mix: ml_collections.ConfigDict) -> tuple[float, str]:
    """Rate and mode that every document landing in the batch of optimiser step ``step`` uses."""
    if step < 0:
        raise ValueError(f"step={step} is negative; steps count from 0.")
    w, t, d = int(mix.warmup_steps), int(mix.steady_steps), int(mix.decay_steps)
    r0, rp, rf = float(mix.rate_init), float(mix.rate_peak), float(mix.rate_final)
    if step < w:
        return r0 + (rp - r0) * step / w, mix.mode_warmup
    if step < w + t:
        return rp, mix.mode_steady
    if step < w + t + d:
        return rp + (rf - rp) * (step - w - t) / d, mix.mode_steady
    return rf, mix.mode_final


def rates_at(steps_N: np.ndarray, mix: ml_collections.ConfigDict) -> np.ndarray:
    """Vectorised rate part of :func:`schedule_at` (float64 [N]), e.g. for plots and logging."""
    c_N = np.asarray(steps_N, dtype=np.float64)
    w, t, d = int(mix.warmup_steps), int(mix.steady_steps), int(mix.decay_steps)
    r0, rp, rf = float(mix.rate_init), float(mix.rate_peak), float(mix.rate_final)
    warm_N = r0 + (rp - r0) * c_N / max(w, 1)
    decay_N = rp + (rf - rp) * (c_N - w - t) / max(d, 1)
    return np.select([c_N < w, c_N < w + t, c_N < w + t + d], [warm_N, np.full_like(c_N, rp), decay_N], rf)


def max_rate(mix: ml_collections.ConfigDict) -> float:
    """The largest rate any step can see (0 means no document is ever compressed)."""
    w, t, d = int(mix.warmup_steps), int(mix.steady_steps), int(mix.decay_steps)
    rates = [float(mix.rate_final)]
    if w > 0:
        rates += [float(mix.rate_init), float(mix.rate_peak)]
    if t > 0 or d > 0:
        rates.append(float(mix.rate_peak))
    return max(rates)


def modes_used(mix: ml_collections.ConfigDict) -> set[str]:
    """The modes some step of this schedule uses."""
    w, t, d = int(mix.warmup_steps), int(mix.steady_steps), int(mix.decay_steps)
    modes = {mix.mode_final}
    if w > 0:
        modes.add(mix.mode_warmup)
    if t + d > 0:
        modes.add(mix.mode_steady)
    return modes
