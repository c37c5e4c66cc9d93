"""Metrics at the edge: ``metrics.jsonl`` + TensorBoard event files, written by process 0 only.

MFU = achieved model FLOP/s / (peak FLOP/s per chip x chips). Model FLOPs per step come from
``proxy_jax.model.flops_per_token`` (its docstring states the formula) times the symbols in the step.
Peak numbers are dense bf16 from the vendors' data sheets; on CPU there is no peak and ``perf/mfu`` is
left out rather than made up.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import jax
import numpy as np

from proxy_jax import storage

# Dense bf16 peak FLOP/s per chip, keyed by a substring of ``jax.devices()[0].device_kind`` (lower case).
PEAK_FLOPS = {
    "h200": 989e12,
    "h100": 989e12,
    "a100": 312e12,
    "v6 lite": 918e12,  # Trillium (v6e)
    "v6e": 918e12,
    "v5p": 459e12,
    "v5 lite": 197e12,  # v5e
    "v5e": 197e12,
    "v4": 275e12,
}


def peak_flops_per_device(device=None) -> float | None:
    """Peak bf16 FLOP/s of one device, or None where unknown (CPU, unlisted chips)."""
    device = device or jax.devices()[0]
    if getattr(device, "platform", "cpu") == "cpu":
        return None
    kind = str(device.device_kind).lower()
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):  # most specific name first
        if key in kind:
            return PEAK_FLOPS[key]
    return None


def to_python(metrics: dict[str, Any]) -> dict[str, float]:
    """Device scalars -> Python floats (one host transfer for the whole dict)."""
    host = jax.device_get(metrics)
    return {k: float(np.asarray(v)) for k, v in host.items()}


REMOTE_FLUSH_S = 30.0  # object storage: seconds between rewrites of metrics.jsonl


class MetricsWriter:
    """Appends one JSON object per call to ``workdir/metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self._tb = None
        if not self.enabled:
            return
        self._path = storage.join(workdir, "metrics.jsonl")
        # Object storage has no appends: rows are kept and the object rewritten at most every
        # REMOTE_FLUSH_S seconds (and on close); a local file is appended to and flushed per row.
        self._remote = storage.is_remote(workdir)
        self._rows: list[str] = []
        self._flushed = time.time()
        if self._remote:
            self._rows = storage.read_text(self._path).splitlines(keepends=True) if storage.exists(self._path) else []
            self._file = None
        else:
            storage.makedirs(workdir)
            self._file = open(self._path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(storage.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in scalars.items()}
        line = json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n"
        if self._remote:
            self._rows.append(line)
            if time.time() - self._flushed >= REMOTE_FLUSH_S:
                self._flush_remote()
        else:
            self._file.write(line)
            self._file.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                if math.isfinite(float(v)):
                    self._tb.add_scalar(k, float(v), int(step))

    def _flush_remote(self) -> None:
        storage.write_text(self._path, "".join(self._rows))
        self._flushed = time.time()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._remote:
            self._flush_remote()
        else:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All rows of ``workdir/metrics.jsonl`` (for notebooks and tests)."""
    text = storage.read_text(storage.join(workdir, "metrics.jsonl"))
    return [json.loads(line) for line in text.splitlines() if line.strip()]
