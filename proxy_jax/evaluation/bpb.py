"""Raw-byte evaluation and the classical compressors beside it.

Bits per byte on RAW bytes only: each held-out document is ``1 12 bytes 13 2``; the documents are
concatenated and cut into windows of ``window`` tokens with stride ``window`` (attention stays inside each
document); only targets that are raw bytes (ids 64..319) count, scored by the first head:

    BPB = (sum of their cross-entropies in nats) / (ln 2 x number of raw bytes).

For scale the same documents are compressed one by one with gzip -9 and xz -9e (raw DEFLATE / LZMA2
streams, so no container header is charged), and their sizes reported in bits per byte.

These are pure functions of an ``eval_step`` callable; ``proxy_jax.assemble.Run.bpb`` feeds them a run's
jitted step, ``proxy_jax.evaluation.score`` a restored workdir's.
"""

from __future__ import annotations

import lzma
import math
import zlib
from typing import Callable, Iterable, Iterator

import numpy as np

from proxy_jax import vocab


def raw_document_ids(doc: bytes) -> np.ndarray:
    """``1 12 bytes 13 2`` for one held-out document."""
    body = vocab.encode_raw(doc)
    out = np.empty(body.size + 4, dtype=vocab.ID_DTYPE)
    out[:2] = (vocab.BOS, vocab.RAW_OPEN)
    out[2:-2] = body
    out[-2:] = (vocab.RAW_CLOSE, vocab.EOS)
    return out


def eval_rows(docs: Iterable[bytes], window: int, extra: int) -> Iterator[dict[str, np.ndarray]]:
    """Rows of ``window + extra`` tokens, stride ``window``, over the concatenated raw documents.

    Yields dicts with "tokens", "segment_ids" and "positions" (int32 [window + extra]). The tail is padded
    with id 0 / segment 0, which is never a target. ``extra`` is the number of future tokens the model
    predicts, so the row also carries the targets of its last position.
    """
    stream, segs, pos = [], [], []
    for doc in docs:
        ids = raw_document_ids(doc)
        stream.append(ids)
        pos.append(np.arange(ids.size, dtype=np.int32))
        segs.append(np.full(ids.size, len(segs) + 1, dtype=np.int64))
    if not stream:
        return
    tokens = np.concatenate(stream)
    positions = np.concatenate(pos)
    doc_of = np.concatenate(segs)
    n_rows = -(-(tokens.size - 1) // window)
    length = window + extra
    for r in range(n_rows):
        lo, hi = r * window, min(r * window + length, tokens.size)
        row_tokens = np.zeros(length, dtype=np.int32)
        row_pos = np.zeros(length, dtype=np.int32)
        row_seg = np.zeros(length, dtype=np.int32)
        row_tokens[: hi - lo] = tokens[lo:hi]
        row_pos[: hi - lo] = positions[lo:hi]
        # Renumber documents 1, 2, ... within the row.
        row_seg[: hi - lo] = (doc_of[lo:hi] - doc_of[lo] + 1).astype(np.int32)
        yield {"tokens": row_tokens, "segment_ids": row_seg, "positions": row_pos}


def batched(rows: Iterator[dict[str, np.ndarray]], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Stacks rows into batches of exactly ``batch_size``, padding the last with empty rows."""
    buf: list[dict[str, np.ndarray]] = []
    for row in rows:
        buf.append(row)
        if len(buf) == batch_size:
            yield {k: np.stack([r[k] for r in buf]) for k in buf[0]}
            buf = []
    if buf:
        empty = {k: np.zeros_like(v) for k, v in buf[0].items()}
        buf += [empty] * (batch_size - len(buf))
        yield {k: np.stack([r[k] for r in buf]) for k in buf[0]}


def raw_bpb(
    eval_step: Callable[[dict[str, np.ndarray]], dict[str, float]],
    docs: list[bytes],
    *,
    window: int,
    extra: int,
    batch_size: int,
    progress: bool = False,
) -> dict[str, float]:
    """Raw-byte bits per byte of ``docs``; ``eval_step(batch) -> {"sum_nll_raw", "raw_count"}`` (host floats)."""
    if not docs:
        raise ValueError("There are no documents to score: bits per byte of zero bytes is undefined.")
    total_nll, total_count = 0.0, 0.0
    batches = batched(eval_rows(docs, window, extra), batch_size)
    if progress:
        from tqdm.auto import tqdm

        tokens = sum(len(d) + 4 for d in docs)
        batches = tqdm(batches, total=-(-max(tokens - 1, 0) // (window * batch_size)), desc="eval", unit="batch",
                       leave=False, dynamic_ncols=True)
    for batch in batches:
        out = eval_step(batch)
        total_nll += float(out["sum_nll_raw"])
        total_count += float(out["raw_count"])
    expected = sum(len(d) for d in docs)
    if int(round(total_count)) != expected:
        raise RuntimeError(f"Evaluation scored {total_count:.0f} raw bytes but the documents hold {expected}.")
    bpb = total_nll / (math.log(2) * max(total_count, 1.0))
    return {"raw_bpb": bpb, "raw_bytes": float(total_count), "docs": float(len(docs))}


def compressor_bpb(docs: list[bytes]) -> dict[str, float]:
    """gzip -9 (raw DEFLATE) and xz -9e (raw LZMA2) bits per byte, each document compressed alone."""
    n = sum(len(d) for d in docs)
    gz = xz = 0
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
    for d in docs:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        gz += len(c.compress(d) + c.flush())
        xz += len(lzma.compress(d, format=lzma.FORMAT_RAW, filters=filters))
    return {"gzip_bpb": 8.0 * gz / max(n, 1), "xz_bpb": 8.0 * xz / max(n, 1)}
