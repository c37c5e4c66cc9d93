"""Metrics at the edge: ``metrics.jsonl`` and the run's trackers (``proxy_jax.tracking``: TensorBoard, W&B),
written by process 0 only.

MFU = achieved model FLOP/s / (peak FLOP/s per chip x chips). Model FLOPs per step come from
``proxy_jax.model.flops_per_token`` (its docstring states the formula) times the symbols in the step.
Peak numbers are dense bf16 from the vendors' data sheets; on CPU there is no peak and ``perf/mfu`` is
left out rather than made up.

One row per step and key, across resumes: a run resumed from checkpoint s re-trains every step from s on,
so :class:`MetricsWriter` first moves the rows it will write again (train rows of steps >= s, eval rows of
steps > s) from ``metrics.jsonl`` to ``metrics.superseded.jsonl`` (kept, not deleted) and tells TensorBoard
to drop its events from step s on (``purge_step``; the kept evaluation of step s is written back); a key
already written for a step is not written again (a finished run rerun does not add a second evaluation).
W&B cannot drop steps: it is sent only the steps after the newest one ``metrics.jsonl`` held (``tracking``).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import jax
import numpy as np

from proxy_jax import storage
from proxy_jax import tracking as tracking_lib

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


METRICS = "metrics.jsonl"
REMOTE_FLUSH_S = 30.0  # object storage: seconds between rewrites of metrics.jsonl
SUPERSEDED = "metrics.superseded.jsonl"


def _is_eval(row: dict) -> bool:
    return any(k.startswith("eval/") for k in row)


def _supersede(workdir: str, start_step: int | None) -> tuple[list[dict], int]:
    """Moves the rows a run resumed at ``start_step`` writes again to ``SUPERSEDED`` (None: none); returns the
    rows kept at ``start_step`` (the evaluation of the restored state, which the run does not repeat) and the
    newest step ``metrics.jsonl`` held (-1: none)."""
    path = storage.join(workdir, METRICS)
    if not storage.exists(path):
        return [], -1
    lines = [line for line in storage.read_text(path).splitlines(keepends=True) if line.strip()]
    keep, drop, at_start, newest = [], [], [], -1
    for line in lines:
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (ValueError, KeyError, TypeError):
            keep.append(line)  # not ours to judge: left where it is
            continue
        newest = max(newest, step)
        if start_step is None:
            continue
        kept = step < start_step or (step == start_step and _is_eval(row))
        (keep if kept else drop).append(line)
        if kept and step == start_step:
            at_start.append(row)
    if drop:
        storage.append_text(storage.join(workdir, SUPERSEDED), "".join(drop))
        storage.write_text(path, "".join(keep))
    return at_start, newest


class MetricsWriter:
    """Appends one JSON object per call to ``workdir/metrics.jsonl`` and hands the row to the run's trackers.

    ``start_step``: the step the run starts from (0 for a new run); rows the run will write again are
    superseded first (module docstring). ``None`` appends to what is there. ``tracking``: the trackers
    (``tracking.setup`` of the run's config); without it, TensorBoard alone when ``tensorboard``.
    """

    def __init__(self, workdir: str, *, tensorboard: bool = True, start_step: int | None = None,
                 tracking: tracking_lib.Setup | None = None):
        self.enabled = jax.process_index() == 0
        self._trackers: list = []
        self._written: set[tuple[int, str]] = set()  # (step, key) kept at start_step: not written again
        if not self.enabled:
            return
        storage.makedirs(workdir)
        kept, newest = _supersede(workdir, start_step)
        self._written = {(int(row["step"]), k) for row in kept for k in row if k not in ("step", "time")}
        self._path = storage.join(workdir, METRICS)
        # Object storage has no appends: rows are kept and the object rewritten at most every
        # REMOTE_FLUSH_S seconds (and on close); a local file is appended to and flushed per row.
        self._remote = storage.is_remote(workdir)
        self._rows: list[str] = []
        self._flushed = time.time()
        if self._remote:
            self._rows = storage.read_text(self._path).splitlines(keepends=True) if storage.exists(self._path) else []
            self._file = None
        else:
            self._file = storage.open_append(self._path)
        if tracking is None:
            tracking = tracking_lib.Setup(("tensorboard",) if tensorboard else ())
        self._trackers = tracking_lib.open_trackers(workdir, tracking, start_step=start_step, kept=kept,
                                                    last_step=newest)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: v for k, v in scalars.items() if (int(step), k) not in self._written}
        if not scalars:
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
        for tracker in self._trackers:
            tracker.write(step, {k: float(v) for k, v in scalars.items()})

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
        for tracker in self._trackers:
            tracker.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All rows of ``workdir/metrics.jsonl`` (for notebooks and tests)."""
    text = storage.read_text(storage.join(workdir, METRICS))
    return [json.loads(line) for line in text.splitlines() if line.strip()]
