"""Entropy segmentation: cut documents into independently coded segments where M1 is most unsure.

1. One parallel M1 pass over each document cut into chunks of ``chunk_bytes`` gives every byte's
   entropy (in bits) given the bytes before it in its chunk.
2. The threshold is a global quantile (``entropy_quantile``, ~0.9) of those entropies over a fixed
   sample of the training corpus, computed once when the proxy is built and recorded in its manifest
   (never per batch: a document's view must not depend on what it is batched with).
3. A segment starts at every chunk start and before every byte whose entropy exceeds the threshold,
   unless the current segment is still shorter than ``min_segment_bytes``.

Each segment is then coded on its own: M1's context restarts at the segment start and the coder
starts a fresh window, so all segments of a batch of documents are independent coding jobs, and an
edit to a document changes only the segments around it.
"""

from __future__ import annotations

import numpy as np

from proxy_jax.proxies.neural import m1 as m1_lib


def chunks(doc: bytes, chunk_bytes: int) -> list[bytes]:
    return [doc[i : i + chunk_bytes] for i in range(0, len(doc), chunk_bytes)]


def doc_entropies(model: m1_lib.M1, docs: list[bytes], *, chunk_bytes: int, tile_positions: int,
                  tiles_per_call: int = 1, device_params=None) -> list[np.ndarray]:
    """Per-byte entropies (float32 bits) of every document, from M1 over its chunks in fixed tiles
    (:func:`m1.tiled_batches`), so a document's entropies do not depend on the other documents."""
    rows, owner = [], []
    for d, doc in enumerate(docs):
        for c in chunks(doc, chunk_bytes):
            rows.append(c)
            owner.append(d)
    per_row: list[np.ndarray] = [np.zeros(0, np.float32)] * len(rows)
    params = model.params if device_params is None else device_params
    pending = [(idx, m1_lib.tile_entropies(model.args, params, tokens))  # dispatched before any is read
               for idx, _, tokens, _, _ in m1_lib.tiled_batches(rows, tile_positions, chunk_bytes, tiles_per_call)]
    for idx, ent in pending:
        ent = np.asarray(ent)
        ent = ent.reshape(-1, ent.shape[-1])
        for j, i in enumerate(idx):
            per_row[i] = ent[j, : len(rows[i])]
    out: list[list[np.ndarray]] = [[] for _ in docs]
    for i, d in enumerate(owner):
        out[d].append(per_row[i])
    return [np.concatenate(parts) if parts else np.zeros(0, np.float32) for parts in out]


def entropy_threshold(entropies: list[np.ndarray], quantile: float) -> float:
    """The global ``quantile`` of all entropies (numpy's default linear interpolation)."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"proxy.entropy_quantile={quantile} must lie in (0, 1].")
    values = np.concatenate([np.asarray(e, np.float64) for e in entropies]) if entropies else np.zeros(0)
    if values.size == 0:
        raise ValueError("The entropy sample is empty; the corpus has no bytes to set the threshold from.")
    return float(np.quantile(values, quantile))


def segment_starts(entropy_N: np.ndarray, threshold: float, chunk_bytes: int, min_segment_bytes: int = 1) -> list[int]:
    """Start offsets of a document's segments (the first is 0; none for an empty document)."""
    high = np.asarray(entropy_N) > threshold
    high[::chunk_bytes] = True
    if min_segment_bytes <= 1:
        return np.flatnonzero(high).tolist()
    starts: list[int] = []
    last = -chunk_bytes
    for i in np.flatnonzero(high).tolist():
        if i % chunk_bytes == 0 or i - last >= min_segment_bytes:
            starts.append(i)
            last = i
    return starts


def split(doc: bytes, starts: list[int]) -> list[bytes]:
    ends = starts[1:] + [len(doc)]
    return [doc[s:e] for s, e in zip(starts, ends)]
