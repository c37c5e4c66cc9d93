"""Raw-byte evaluation and the classical compressors beside it.

Bits per byte of held-out text, each document written in the run's text format (``proxy_jax.text_format``):
``1 12 bytes 13 2`` (``sentinel``), ``1 bytes 2`` (``plain``, the byte baseline) or ``1 symbols 2``
(``compressed``, the tokenizer baseline, ``encode`` = its proxy). The documents are concatenated
and cut into windows of ``window`` tokens with stride ``window`` (attention stays inside each
document); the targets that carry the text count (``TextFormat.scored``), scored by the first head: raw
bytes (ids 64..319), or for the tokenizer baseline its symbols (ids >= 320; sentinels and EOS never count):

    BPB = (sum of their cross-entropies in nats) / (ln 2 x number of raw bytes of the documents).

For the tokenizer baseline this is the usual cross-tokenizer comparison: the bits its token
predictions spend per byte of the same text.

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

from proxy_jax import text_format


def eval_rows(docs: Iterable[bytes], window: int, extra: int, fmt: str | text_format.TextFormat = "sentinel",
              encode: Callable[[bytes], np.ndarray] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Rows of ``window + extra`` tokens, stride ``window``, over the concatenated documents (text format
    ``fmt``).

    Yields dicts with "tokens", "segment_ids" and "positions" (int32 [window + extra]). The tail is padded
    with id 0 / segment 0, which is never a target. ``extra`` is the number of future tokens the model
    predicts, so the row also carries the targets of its last position.
    """
    fmt = text_format.get(fmt)
    return _rows((fmt.document_ids(doc, encode) for doc in docs), window, extra)


def _rows(docs_ids: Iterable[np.ndarray], window: int, extra: int) -> Iterator[dict[str, np.ndarray]]:
    """``eval_rows`` over documents already written as ids."""
    stream, segs, pos = [], [], []
    for ids in docs_ids:
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
    fmt: str | text_format.TextFormat = "sentinel",
    encode: Callable[[bytes], np.ndarray] | None = None,
) -> dict[str, float]:
    """Bits per raw byte of ``docs`` (see the module docstring); ``eval_step(batch)`` returns host floats
    ``sum_nll_raw``/``raw_count`` (and ``sum_nll_comp``/``comp_count`` for the ``compressed`` format)."""
    if not docs:
        raise ValueError("There are no documents to score: bits per byte of zero bytes is undefined.")
    fmt = text_format.get(fmt)
    docs_ids = [fmt.document_ids(d, encode) for d in docs]
    expected = sum(int(np.sum(fmt.scored(ids))) for ids in docs_ids)
    nll_key, count_key = ("sum_nll_comp", "comp_count") if fmt.symbols else ("sum_nll_raw", "raw_count")
    total_nll, total_count = 0.0, 0.0
    batches = batched(_rows(docs_ids, window, extra), batch_size)
    if progress:
        from proxy_jax import progress as progress_lib

        tokens = sum(ids.size for ids in docs_ids)
        batches = progress_lib.iterate(batches, -(-max(tokens - 1, 0) // (window * batch_size)), desc="eval",
                                       unit="batch", leave=False)
    for batch in batches:
        out = eval_step(batch)
        total_nll += float(out[nll_key])
        total_count += float(out[count_key])
    if int(round(total_count)) != expected:
        what = "symbols" if fmt.symbols else "raw bytes"
        raise RuntimeError(f"Evaluation scored {total_count:.0f} {what} but the documents hold {expected}.")
    raw_bytes = float(sum(len(d) for d in docs))
    bpb = total_nll / (math.log(2) * max(raw_bytes, 1.0))
    result = {"raw_bpb": bpb, "raw_bytes": raw_bytes, "docs": float(len(docs))}
    if fmt.symbols:
        result["symbols"] = float(total_count)
    return result


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


def host_eval(eval_step: Callable, params, mesh) -> Callable[[dict[str, np.ndarray]], dict[str, float]]:
    """``batch -> host floats`` for :func:`raw_bpb`: every process passes the same global batch and feeds its
    own slice of rows to the jitted ``eval_step(params, batch)`` (``train_step.make_eval_step``)."""
    import jax

    from proxy_jax import sharding

    def run(batch: dict[str, np.ndarray]) -> dict[str, float]:
        count, index = jax.process_count(), jax.process_index()
        rows = batch["tokens"].shape[0] // count
        local = {k: v[index * rows : (index + 1) * rows] for k, v in batch.items()}
        out = jax.device_get(eval_step(params, sharding.host_to_global(local, mesh)))
        return {k: float(v) for k, v in out.items()}

    return run


def model_bpb(eval_step: Callable, params, mesh, docs: list[bytes], *, config, fmt: str | text_format.TextFormat,
              proxy=None, window: int | None = None, progress: bool = True) -> dict[str, float]:
    """Bits per raw byte of ``docs`` under ``params``, each document written in the run's text format ``fmt``
    (the tokenizer baseline, ``compressed``, scores its symbols per byte of text through ``proxy``); head 0
    only, so rows carry one token beyond the window."""
    import jax

    fmt = text_format.get(fmt)
    encode = proxy.encode if fmt.symbols else None
    return raw_bpb(host_eval(eval_step, params, mesh), docs, window=int(window or config.train.eval_window),
                   extra=1, batch_size=int(config.train.eval_batch_size),
                   progress=progress and jax.process_index() == 0, fmt=fmt, encode=encode)
