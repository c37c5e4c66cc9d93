"""Checkpoint health: was the training loss in its normal range around a saved step?

Finite is not healthy: a learning rate of 1e30 turns the parameters to ~1e29 in one update, the model then
predicts the uniform distribution (loss ln 320 = 5.77, every step) with a NaN gradient, and the state may
still be finite. So every checkpoint records the loss and gradient norm around its step and a verdict.

The rule, exactly:

* A step is *normal* when its loss and its gradient norm are finite and at most ``loss_ratio`` (resp.
  ``grad_ratio``) times the median of the last ``window`` normal values before it; with no history (the
  first step of a run) finite is normal. A median follows the loss down as training goes and is not
  moved by one outlier; only normal values enter the window, so a divergence never becomes the new normal
  (a gradual change of level, e.g. the mixing rate ramping, passes step by step).
* Checkpoint s (the state after s steps) is *healthy* when step s-1 (its last update) and step s (the
  first loss computed with exactly its parameters) are both normal. Step s is needed because an update can
  wreck the parameters while its own loss, measured before the update, looks normal. Its verdict is
  therefore known one step after the save; until then it is pending (``None``). A save after which no
  step is taken (the end of training, SIGTERM) is judged on step s-1 alone, and marked again on step s by
  the run that resumes from it.

The loop reads every step's loss and gradient norm anyway (one step late, see ``proxy_jax.train``), so the
check adds no device synchronisation; the verdict is written beside the checkpoint (``checkpoint.Checkpointer
.write_health``) and read back by :func:`proxy_jax.workdir.checkpoint_health`.
"""

from __future__ import annotations

import collections
import math
import statistics
from typing import Any


class LossWatch:
    """Running normal range of the loss and gradient norm (see the module docstring)."""

    def __init__(self, window: int, loss_ratio: float, grad_ratio: float, *, recent: dict | None = None):
        self.loss_ratio, self.grad_ratio = float(loss_ratio), float(grad_ratio)
        recent = recent or {}
        self.losses = collections.deque(recent.get("loss", [])[-window:], maxlen=window)
        self.grad_norms = collections.deque(recent.get("grad_norm", [])[-window:], maxlen=window)
        self.last: dict[str, Any] | None = None  # the newest observed step: {"step", "loss", "grad_norm", "normal"}
        self.abnormal_run = 0  # consecutive steps out of range, up to the newest

    def limits(self) -> dict[str, float | None]:
        """The current upper bounds of the normal range (``None`` before any history)."""
        return {"loss": self.loss_ratio * statistics.median(self.losses) if self.losses else None,
                "grad_norm": self.grad_ratio * statistics.median(self.grad_norms) if self.grad_norms else None}

    def observe(self, step: int, loss: float, grad_norm: float) -> dict[str, Any]:
        """Judges ``step`` against the range of the steps before it, then lets a normal step into the window."""
        limits = self.limits()
        normal = all(math.isfinite(v) and (limit is None or v <= limit)
                     for v, limit in ((loss, limits["loss"]), (grad_norm, limits["grad_norm"])))
        self.last = {"step": int(step), "loss": float(loss), "grad_norm": float(grad_norm), "normal": normal,
                     "limits": limits}
        if normal:
            self.losses.append(float(loss))
            self.grad_norms.append(float(grad_norm))
            self.abnormal_run = 0
        else:
            self.abnormal_run += 1
        return self.last

    def recent(self) -> dict[str, list[float]]:
        """The window, saved with each checkpoint so a resumed run continues the same range."""
        return {"loss": list(self.losses), "grad_norm": list(self.grad_norms)}


def _json_floats(obs: dict | None) -> dict | None:
    """Non-finite floats as strings (JSON has no NaN)."""
    if obs is None:
        return None
    out = {}
    for k, v in obs.items():
        if isinstance(v, dict):
            out[k] = _json_floats(v)
        elif isinstance(v, float) and not math.isfinite(v):
            out[k] = str(v)
        else:
            out[k] = v
    return out


def save_record(step: int, watch: LossWatch, rollback: int | None, *, final: bool) -> dict[str, Any]:
    """The record written with checkpoint ``step``: step s-1 (if this run read it), the window, the lineage
    (``rollback``: the step a ``train.resume_step`` rolled this run's line back to), and the verdict: pending
    unless ``final`` (no step will be taken from it), then judged on step s-1 alone."""
    before = watch.last if watch.last is not None and watch.last["step"] == step - 1 else None
    healthy = None
    if final:
        healthy = bool(before["normal"]) if before is not None else None
    return {"step": int(step), "before": _json_floats(before), "after": None, "healthy": healthy,
            "recent": watch.recent(), "rollback": rollback}


def mark(record: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``record`` with step s observed (``after``, from :meth:`LossWatch.observe`) and its verdict."""
    before = record.get("before")
    before_ok = True if before is None else bool(before.get("normal"))  # unknown before a resume: step s decides
    return {**record, "after": _json_floats(after), "healthy": bool(after["normal"]) and before_ok}


def describe(record: dict[str, Any] | None) -> str:
    """Why a checkpoint is not healthy, in a few words (for warnings)."""
    if record is None:
        return "it has no health record (written by an older version, or set aside)"
    if record.get("healthy") is None:
        return "its health is not known yet (no step was read after it)"
    for key in ("after", "before"):
        obs = record.get(key)
        if obs and not obs.get("normal"):
            limits = obs.get("limits") or {}
            return (f"step {obs['step']} had loss {obs['loss']} (normal <= {limits.get('loss')}) and gradient "
                    f"norm {obs['grad_norm']} (normal <= {limits.get('grad_norm')})")
    return "its loss left the normal range"
