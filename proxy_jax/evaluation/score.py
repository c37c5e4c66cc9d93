"""Scoring a finished run: raw-byte bits per byte of its held-out split (or of other documents).

``evaluate_workdir`` restores the newest checkpoint of a workdir (``proxy_jax.restore``), scores whole
documents beside gzip -9 and xz -9e, and returns a JSON-able dict; ``python -m proxy_jax.evaluate`` prints it.

Refused with one sentence (``ValueError``): no documents to score, a window whose logits cannot fit in
memory (estimated as batch x (window + heads) x padded vocabulary x 4 bytes x ``LOGITS_COPIES`` against
the device's memory, or the host's on CPU; XLA's own out-of-memory error is turned into the same
sentence), and a checkpoint whose score is not finite.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any

import jax
import ml_collections

from proxy_jax import assemble, storage
from proxy_jax import restore as restore_lib
from proxy_jax.data import remote
from proxy_jax.evaluation import bpb


def documents_config(config: ml_collections.ConfigDict, data: str, data_glob: str = "**/*.py", *,
                     text_field: str = "", skip_malformed: bool = False) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose corpus is every document of ``data``: a .jsonl, an .array_record, a .parquet
    file or glob, a folder of Parquet files, a ``datasets`` save_to_disk folder, or a folder of files;
    ``text_field`` and ``skip_malformed`` set how a JSONL or Parquet file is read (the run's own otherwise)."""
    config = ml_collections.ConfigDict({**config.to_dict(), "data": {**config.data.to_dict(), "mixture": ""}})
    config.data.path, config.data.val_fraction = data, 0.0  # with val_fraction 0 every document lands in "train"
    config.data.text_field = text_field or config.data.text_field
    config.data.skip_malformed = bool(skip_malformed)
    if data.endswith((".jsonl", ".jsonl.gz")):
        config.data.source = "jsonl"
    elif data.endswith(".array_record"):
        config.data.source = "arrayrecord"
    elif data.endswith(".parquet") or _has_parquet(data):
        config.data.source = "parquet"
    elif storage.isfile(storage.join(data, "state.json")):  # a datasets save_to_disk folder
        config.data.source = "hf_disk"
    else:
        config.data.source, config.data.glob = "dir", data_glob
    return config


def _has_parquet(data: str) -> bool:
    """Whether the folder (or bucket prefix) ``data`` holds a ``.parquet`` file anywhere below it."""
    if remote.is_remote(data):
        fs, path = remote.filesystem(data)
        return fs.isdir(path) and any(p.endswith(".parquet") for p in fs.find(path))
    return os.path.isdir(data) and next(pathlib.Path(data).rglob("*.parquet"), None) is not None


LOGITS_COPIES = 4  # logits, their log-softmax, the masked copy and XLA's temporaries, all float32


def memory_limit() -> int:
    """Bytes one device may use: the accelerator's limit, or the host's physical memory on CPU."""
    stats = None
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory statistics
        pass
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_window(window: int, batch_size: int, padded_vocab: int, extra: int = 1) -> None:
    """Raises one sentence when a batch of eval windows cannot fit (``--window``/train.eval_batch_size)."""
    if window <= 0:
        raise ValueError(f"--window={window} must be > 0.")
    need = LOGITS_COPIES * 4 * batch_size * (window + extra) * padded_vocab
    shared = jax.local_devices()[0].platform == "cpu"  # CPU devices share the host's memory
    limit = memory_limit() * (1 if shared else jax.device_count())
    if need > limit:
        most = max(1, limit // (LOGITS_COPIES * 4 * batch_size * padded_vocab) - extra)
        raise ValueError(f"--window={window} needs about {need / 2**30:.1f} GiB for the logits of a batch of "
                         f"{batch_size} windows but {limit / 2**30:.1f} GiB is available; use --window={most} "
                         "or less (or a smaller train.eval_batch_size).")


def _out_of_memory(e: BaseException) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e) or isinstance(e, MemoryError)


def evaluate_workdir(workdir: str, *, data: str = "", data_glob: str = "**/*.py", max_docs: int = 0,
                     window: int = 0, step: int | None = None, eval_batch_size: int = 0, text_field: str = "",
                     skip_malformed: bool = False) -> dict[str, Any]:
    """Restores a run's parameters and scores raw bytes of its held-out split (or every document of ``data``);
    ``window`` and ``eval_batch_size`` default (0) to the run's ``train.eval_window`` and ``train.eval_batch_size``."""
    workdir, data = storage.resolve(workdir), storage.resolve(data)
    run = restore_lib.restore(workdir, step)
    config, split = run.config, "validation"
    if data:
        config, split = documents_config(config, data, data_glob, text_field=text_field,
                                         skip_malformed=skip_malformed), "train"
    docs = assemble.heldout_docs(config, max_docs, split=split)
    if not docs:
        where = f"--data={data}" if data else f"the held-out split of {workdir} (data.val_fraction={config.data.val_fraction})"
        raise ValueError(f"{where} has no documents to score; pass --data=PATH with documents (a .jsonl, an "
                         ".array_record or a folder).")
    window = window or int(config.train.eval_window)
    if eval_batch_size < 0:
        raise ValueError(f"--config.train.eval_batch_size={eval_batch_size} must be >= 1 (or 0 for the run's own).")
    batch_size = eval_batch_size or int(config.train.eval_batch_size)
    run.config.train.eval_batch_size = batch_size  # the restored run scores with this batch (Run.bpb reads it)
    check_window(window, batch_size, run.padded_vocab_size)
    result = {"workdir": workdir, "step": run.step, "data": data or "held-out split"}
    try:
        result.update(run.bpb(docs, window=window))
    except Exception as e:  # noqa: BLE001 - only an out-of-memory error becomes a sentence
        if not _out_of_memory(e):
            raise
        raise ValueError(f"--window={window} with a batch of {batch_size} windows ran out of memory; use a "
                         "smaller --window.") from None
    if not math.isfinite(result["raw_bpb"]):
        raise ValueError(f"Checkpoint step {run.step} of {workdir} scores raw_bpb={result['raw_bpb']}: its "
                         "parameters are not finite; evaluate an older step with --step.")
    result.update(bpb.compressor_bpb(docs))
    return result
