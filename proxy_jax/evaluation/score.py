"""Scoring a finished run: raw-byte bits per byte of its held-out split (or of other documents).

``evaluate_workdir`` restores the newest checkpoint of a workdir (``proxy_jax.workdir``), scores whole
documents beside gzip -9 and xz -9e, and returns a JSON-able dict; ``python -m proxy_jax.evaluate`` prints it.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from proxy_jax import assemble
from proxy_jax.evaluation import bpb


def documents_config(config: ml_collections.ConfigDict, data: str, data_glob: str = "**/*.py") -> ml_collections.ConfigDict:
    """A copy of ``config`` whose corpus is every document of ``data`` (a .jsonl, an .array_record or a folder)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.path, config.data.val_fraction = data, 0.0  # with val_fraction 0 every document lands in "train"
    if data.endswith((".jsonl", ".jsonl.gz")):
        config.data.source = "jsonl"
    elif data.endswith(".array_record"):
        config.data.source = "arrayrecord"
    else:
        config.data.source, config.data.glob = "dir", data_glob
    return config


def evaluate_workdir(workdir: str, *, data: str = "", data_glob: str = "**/*.py", max_docs: int = 0,
                     window: int = 0, step: int | None = None) -> dict[str, Any]:
    """Restores a run's parameters and scores raw bytes of its held-out split (or every document of ``data``)."""
    run = assemble.restore(workdir, step)
    config, split = run.config, "validation"
    if data:
        config, split = documents_config(config, data, data_glob), "train"
    docs = assemble.heldout_docs(config, max_docs, split=split)
    result = {"workdir": workdir, "step": run.step, "data": data or "held-out split"}
    result.update(run.bpb(docs, window=window or None))
    result.update(bpb.compressor_bpb(docs))
    return result
