"""AdamW with global-norm clipping and a linear warm-up + cosine schedule.

Gradient accumulation is not done here: ``train_step`` scans over ``config.opt.grad_accum_steps``
micro-batches inside one jitted step and applies this optimiser once to the averaged gradient, so
one call of the step is always one optimiser update on the whole global batch.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

WEIGHT_DECAY_MASKS = ("matrices", "all", "none")


def make_schedule(opt_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """0 -> lr linearly over ``warmup_steps``, then cosine down to ``min_lr_ratio * lr`` at ``total_steps``."""
    lr = float(opt_config.lr)
    warmup = int(opt_config.warmup_steps)
    if lr <= 0:
        raise ValueError(f"opt.lr={lr} must be positive.")
    if warmup < 0:
        raise ValueError(f"opt.warmup_steps={warmup} must be >= 0.")
    if not 0.0 <= float(opt_config.min_lr_ratio) <= 1.0:
        raise ValueError(f"opt.min_lr_ratio={opt_config.min_lr_ratio} must lie in [0, 1].")
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1; set train.steps.")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=lr,
        warmup_steps=warmup,
        decay_steps=max(int(total_steps), warmup + 1),
        end_value=lr * float(opt_config.min_lr_ratio),
    )


def decay_mask(params, which: str):
    """Which parameters get weight decay: ``matrices`` = every array with ndim >= 2 (not norms)."""
    return jax.tree.map(lambda p: which == "all" or (which == "matrices" and p.ndim >= 2), params)


def make_optimizer(opt_config: ml_collections.ConfigDict, total_steps: int):
    """Returns ``(tx, lr_schedule)`` for ``config.opt`` over a run of ``total_steps`` updates."""
    schedule = make_schedule(opt_config, total_steps)
    which = str(opt_config.weight_decay_mask)
    if which not in WEIGHT_DECAY_MASKS:
        raise ValueError(f"opt.weight_decay_mask={which!r} is unknown; use one of {WEIGHT_DECAY_MASKS}.")
    parts = []
    if float(opt_config.clip_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(opt_config.clip_norm)))
    parts.append(
        optax.adamw(
            schedule,
            b1=float(opt_config.b1),
            b2=float(opt_config.b2),
            eps=float(opt_config.eps),
            weight_decay=float(opt_config.weight_decay),
            mask=lambda params: decay_mask(params, which),
        )
    )
    return optax.chain(*parts), schedule
