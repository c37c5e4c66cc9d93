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


def validate(opt_config: ml_collections.ConfigDict, total_steps: int) -> None:
    """Every check of ``config.opt`` (run by ``assemble.validate`` before anything costly); one sentence each."""
    def bad(key: str, rule: str):
        raise ValueError(f"--config.opt.{key}={opt_config[key]} {rule}.")

    if not float(opt_config.lr) > 0:
        bad("lr", "must be > 0 (e.g. 1e-3)")
    if int(opt_config.warmup_steps) < 0:
        bad("warmup_steps", "must be >= 0")
    if not 0.0 <= float(opt_config.min_lr_ratio) <= 1.0:
        bad("min_lr_ratio", "must lie in [0, 1]")
    for key in ("b1", "b2"):
        if not 0.0 <= float(opt_config[key]) < 1.0:
            bad(key, "must lie in [0, 1)")
    for key in ("eps", "weight_decay", "clip_norm"):
        if not float(opt_config[key]) >= 0:
            bad(key, "must be >= 0 (clip_norm 0 turns clipping off)" if key == "clip_norm" else "must be >= 0")
    if str(opt_config.weight_decay_mask) not in WEIGHT_DECAY_MASKS:
        bad("weight_decay_mask", f"is unknown; use one of {', '.join(WEIGHT_DECAY_MASKS)}")
    if total_steps < 1:
        raise ValueError(f"--config.train.steps={total_steps} must be >= 1.")


def make_schedule(opt_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """0 -> lr linearly over ``warmup_steps``, then cosine down to ``min_lr_ratio * lr`` at ``total_steps``."""
    validate(opt_config, total_steps)
    lr = float(opt_config.lr)
    warmup = int(opt_config.warmup_steps)
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
