"""Compute matching: turn a training-FLOP budget into a step count, and back.

Training compute of a run = ``flops_per_token(args, seq_len) * seq_len * batch_size * steps``, with
``flops_per_token`` the model's own count (6 x matmul parameters + the attention term, forward and
backward). Tokens per step are the positions the model processes (``seq_len * batch_size`` symbols:
raw bytes, compressed symbols, sentinels alike), whatever the method, so a byte run and a proxy run
with the same budget spend the same training compute even though they see different numbers of raw
bytes. Different model shapes (and different vocabularies, whose output heads cost FLOPs) get
different step counts for one budget; rounding to a whole step moves the spent compute by at most half
a step's FLOPs.
"""

from __future__ import annotations

from proxy_jax.model import ModelArgs, flops_per_token


def _check_shape(seq_len: int, batch_size: int) -> None:
    if int(seq_len) != seq_len or seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be a positive integer (tokens per row).")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be a positive integer (rows per step).")


def flops_per_step(args: ModelArgs, seq_len: int, batch_size: int) -> float:
    """Training FLOPs of one optimiser step: FLOPs per token times ``seq_len * batch_size`` tokens."""
    _check_shape(seq_len, batch_size)
    return flops_per_token(args, seq_len) * seq_len * batch_size


def steps_for_budget(flops_budget: float, args: ModelArgs, seq_len: int, batch_size: int) -> int:
    """Steps whose training FLOPs are closest to ``flops_budget`` (rounded to the nearest step)."""
    if not flops_budget > 0 or flops_budget == float("inf"):
        raise ValueError(f"flops_budget={flops_budget} must be a positive, finite number of training FLOPs.")
    per_step = flops_per_step(args, seq_len, batch_size)
    steps = round(flops_budget / per_step)
    if steps < 1:
        raise ValueError(
            f"flops_budget={flops_budget:.3g} is less than one step ({per_step:.3g} FLOPs) of this model at "
            f"seq_len={seq_len}, batch_size={batch_size}; raise the budget or shrink the model or batch."
        )
    return steps


def training_flops(args: ModelArgs, seq_len: int, batch_size: int, steps: int) -> float:
    """Training FLOPs of ``steps`` optimiser steps."""
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps={steps} must be a non-negative integer.")
    return flops_per_step(args, seq_len, batch_size) * steps
