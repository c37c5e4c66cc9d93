"""Mixing and packing in one sequential stage: per-document elements -> batches of packed rows.

The stage knows how many tokens it has emitted, hence which batch (= optimiser step) the first token
of the next document lands in, and draws that document's arrangement with the rate and mode of exactly that
step. A document that spills into the next batch keeps the step where it starts.

Stream geometry, with L = seq_len, K = num_targets, B = rows per (local) batch:
row r covers stream[r*L : r*L + L + K]; consecutive rows overlap by K tokens (the targets of the last
positions), so every token is an input exactly once. Batch k holds rows kB .. kB+B-1, i.e. the tokens
stream[k*B*L : (k+1)*B*L + K]; a document belongs to the step whose batch holds its first token as an
input.

Because this stage runs after any worker processes, batches do not depend on the number of workers.
Its state is a handful of integers: the flat index (epoch * documents + position) of the first pending
document, where that document starts in the stream, and the step. On restore the document stage is
reopened at that flat index (with any number of workers) and the pending documents are re-read and
re-drawn (draws are pure functions), so a resumed run continues exactly.

``raw_only`` (``config.data.raw_only_of_mix``, the transfer control of a proxy run): the stage keeps a
shadow position, where each document would start in the proxy run's stream, and draws every document
with the step of that position, exactly as the proxy run does; then it emits only the raw stream
(comp-only documents vanish, pairs keep their raw half as ``1 12 bytes 13 2``, or ``1 bytes 2`` in
vanilla mode). The raw documents thus arrive in the proxy run's order with its draws.
"""

from __future__ import annotations

import collections
import copy
from typing import Any, Callable

import grain
import ml_collections
import numpy as np

from proxy_jax import vocab
from proxy_jax.data import mixing
from proxy_jax.data import schedule

_STATE_VERSION = 1
_READ_THREADS = 4
_NO_START = np.iinfo(np.int64).min // 2


class _Unit:
    """One source document's emitted ids, placed at ``start`` in the stream."""

    __slots__ = ("flat", "start", "end", "emission", "shadow")

    def __init__(self, flat: int, start: int, emission: mixing.Emission, shadow: int):
        self.flat = flat
        self.start = start
        self.shadow = shadow  # where the document starts in the proxy run's stream (raw_only), else start
        self.end = start + len(emission.ids)
        self.emission = emission


def open_documents(documents: grain.MapDataset, flat: int, num_workers: int,
                   worker_buffer_size: int) -> grain.DatasetIterator:
    """An iterator over ``documents`` from flat index ``flat`` on, in worker processes if asked."""
    ds = documents[flat:] if flat else documents
    # A short read-ahead: documents are large, and Grain scans its whole buffer on every element.
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=worker_buffer_size))
    if num_workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                               per_worker_buffer_size=worker_buffer_size))
    return iter(it_ds)


class PackedBatchDataset(grain.IterDataset):
    """Packs per-document elements into batches of rows.

    Args:
      documents: a MapDataset whose element ``i`` is a dict with ``flat`` = i, the global document
        ``index``, its ``epoch``, int32 ``raw`` ids and int32 ``comp`` ids (ignored when ``has_comp`` is
        False). It is read in order, in ``num_workers`` worker processes when > 0.
      seq_len, num_targets, rows: L, K and B of the module docstring.
      seed: seeds the per-document draws.
      mix: ``config.mix`` (the schedule of rate and mode).
      has_comp: whether documents carry a compressed view; without one every document is emitted raw.
      raw_only: draw as the proxy run does, emit only raw streams (the transfer control; module docstring).
      start_step: the first batch produced is this step's (fast-forwards by re-reading and re-drawing
        the documents of earlier steps; restoring a saved state is the cheap way to resume).
      num_workers, worker_buffer_size: Grain worker processes for the document stage and the
        documents each keeps ready.
      on_document: debug hook called with (index, epoch, step, rate, mode, arrangement, start) per document.

    With a finite ``documents`` (a set number of epochs) iteration stops before the first batch the
    remaining documents cannot fill: the partial tail is dropped, never padded.
    """

    def __init__(self, documents: grain.MapDataset, *, seq_len: int, num_targets: int, rows: int, seed: int,
                 mix: ml_collections.ConfigDict, has_comp: bool = True, raw_only: bool = False,
                 start_step: int = 0,
                 num_workers: int = 0, worker_buffer_size: int = 16,
                 on_document: Callable[..., None] | None = None):
        super().__init__(documents)
        if rows < 1:
            raise ValueError(f"rows={rows} must be >= 1; the local batch needs at least one row.")
        if num_targets < 0:
            raise ValueError(f"num_targets={num_targets} must be >= 0.")
        if start_step < 0:
            raise ValueError(f"start_step={start_step} is negative; steps count from 0.")
        schedule.validate_mix(mix)
        if raw_only and not has_comp:
            raise ValueError("raw_only=True (data.raw_only_of_mix) needs documents with a compressed view: the "
                             "draws depend on the compressed lengths; use a compressing proxy and a rate > 0.")
        self._documents = documents
        self._kwargs = dict(seq_len=int(seq_len), num_targets=int(num_targets), rows=int(rows), seed=int(seed),
                            mix=copy.deepcopy(mix), has_comp=bool(has_comp), raw_only=bool(raw_only),
                            start_step=int(start_step),
                            num_workers=int(num_workers), worker_buffer_size=max(1, int(worker_buffer_size)),
                            on_document=on_document)

    def __iter__(self) -> "PackedBatchIterator":
        return PackedBatchIterator(self._documents, **self._kwargs)

    def __str__(self) -> str:
        k = self._kwargs
        return f"PackedBatchDataset(seq_len={k['seq_len']}, num_targets={k['num_targets']}, rows={k['rows']})"


class PackedBatchIterator(grain.DatasetIterator):
    """Iterator of :class:`PackedBatchDataset`; ``get_state``/``set_state`` give exact continuation."""

    def __init__(self, documents: grain.MapDataset, *, seq_len: int, num_targets: int, rows: int, seed: int,
                 mix: ml_collections.ConfigDict, has_comp: bool, raw_only: bool, start_step: int, num_workers: int,
                 worker_buffer_size: int, on_document: Callable[..., None] | None):
        self._documents = documents
        self._num_workers, self._worker_buffer_size = num_workers, worker_buffer_size
        super().__init__(open_documents(documents, 0, num_workers, worker_buffer_size))
        self._L, self._K, self._B = seq_len, num_targets, rows
        self._seed, self._mix, self._has_comp, self._raw_only = seed, mix, has_comp, raw_only
        self._on_document = on_document
        self._cached_step, self._cached_schedule = -1, (0.0, "")
        self._reset(step=0, stream_end=0, doc_start=0, next_flat=0, shadow_end=0)
        self._skip_to = start_step

    # ---- stream bookkeeping -------------------------------------------------------------------
    def _reset(self, *, step: int, stream_end: int, doc_start: int, next_flat: int, shadow_end: int) -> None:
        self._step = step  # the next batch to produce
        self._next_flat = next_flat  # flat index of the next document to read
        self._stream_end = stream_end  # stream position where the next document starts
        self._shadow_end = shadow_end  # the same in the proxy run's stream (raw_only)
        self._doc_start = doc_start  # start of the document holding this batch's first token
        self._pending: collections.deque[_Unit] = collections.deque()

    def _schedule(self, step: int) -> tuple[float, str]:
        if step != self._cached_step:
            self._cached_step, self._cached_schedule = step, schedule.schedule_at(step, self._mix)
        return self._cached_schedule

    def _pull(self) -> None:
        """Reads one document from the parent, draws its arrangement for the step it starts in, queues it."""
        element = next(self._parent)
        flat = int(element["flat"])
        if flat != self._next_flat:
            raise ValueError(f"The document stage skipped from flat index {self._next_flat} to {flat}; "
                             "it must yield every document in order (no filtering).")
        self._next_flat = flat + 1
        start = self._stream_end
        shadow = self._shadow_end if self._raw_only else start
        step = shadow // (self._B * self._L)
        rate, mode = self._schedule(step)
        index, epoch = int(element["index"]), int(element["epoch"])
        u_choice, u_order = mixing.document_uniforms(self._seed, index, epoch, step)
        comp = np.asarray(element["comp"], vocab.ID_DTYPE) if self._has_comp else None
        arrangement = mixing.choose_arrangement(mode, rate, u_choice, u_order, has_comp=comp is not None)
        raw = np.asarray(element["raw"], vocab.ID_DTYPE)
        emission = mixing.emit_arrangement(raw, comp, mode=mode, arrangement=arrangement)
        if self._raw_only:
            self._shadow_end = shadow + len(emission.ids)
            if arrangement == mixing.COMP:
                emission = mixing.Emission(np.zeros(0, vocab.ID_DTYPE), (), (), ())
            else:
                emission = mixing.emit_arrangement(raw, None, mode=mode, arrangement=mixing.RAW)
        if self._on_document is not None:
            self._on_document(index=index, epoch=epoch, step=step, rate=rate, mode=mode, arrangement=arrangement,
                              start=start)
        self._pending.append(_Unit(flat, start, emission, shadow))
        self._stream_end = start + len(emission.ids)

    def _fill(self, end: int) -> None:
        while self._stream_end < end:
            self._pull()

    def _advance(self) -> tuple[int, int, int]:
        """Makes sure batch ``self._step`` is available; returns (lo, hi, offset0) of its stream span."""
        span = self._B * self._L
        lo = self._step * span
        hi = lo + span + self._K
        self._fill(hi)
        return lo, hi, lo - self._doc_start

    def _finish_batch(self, lo: int, next_doc_offset: int) -> None:
        """Drops documents that ended before the next batch and moves to the next step."""
        span = self._B * self._L
        next_lo = lo + span
        self._doc_start = next_lo - next_doc_offset
        while self._pending and self._pending[0].end <= next_lo:
            self._pending.popleft()
        self._step += 1

    def _next_doc_offset(self, lo: int) -> int:
        """Offset, inside its document, of the first token of the next batch."""
        next_lo = lo + self._B * self._L
        for unit in self._pending:
            if unit.start <= next_lo < unit.end:
                return next_lo - max(unit.start + s for s in unit.emission.doc_starts if unit.start + s <= next_lo)
        return 0

    def _skip(self) -> None:
        while self._step < self._skip_to:
            lo, _, _ = self._advance()
            self._finish_batch(lo, self._next_doc_offset(lo))
        self._skip_to = 0

    # ---- the DatasetIterator API --------------------------------------------------------------
    def __next__(self) -> dict[str, np.ndarray]:
        if self._skip_to:
            self._skip()
        L, K, B = self._L, self._K, self._B
        lo, hi, offset0 = self._advance()
        pieces = []
        for unit in self._pending:
            if unit.start >= hi:
                break
            if unit.end > lo:
                pieces.append(unit.emission.ids[max(0, lo - unit.start): hi - unit.start])
        chunk_N = np.concatenate(pieces)
        n = len(chunk_N)
        t_N = np.arange(n, dtype=np.int64)
        # Positions restart right after every EOS; the first document may have started earlier.
        marker_N = np.full(n, _NO_START, np.int64)
        marker_N[1:] = np.where(chunk_N[:-1] == vocab.EOS, t_N[1:], _NO_START)
        marker_N[0] = -offset0
        positions_N = t_N - np.maximum.accumulate(marker_N)
        rows_BxLK = np.arange(B)[:, None] * L + np.arange(L + K)[None, :]
        tokens_BxLK = chunk_N[rows_BxLK]
        positions_BxLK = positions_N[rows_BxLK].astype(np.int32)
        segment_ids_BxLK = np.ones((B, L + K), np.int32)
        np.cumsum(tokens_BxLK[:, :-1] == vocab.EOS, axis=1, out=segment_ids_BxLK[:, 1:])
        segment_ids_BxLK[:, 1:] += 1
        # Documents are counted in the row holding their BOS as an input token.
        counts_4xB = np.zeros((4, B), np.int32)
        span_end = lo + B * L
        for unit in self._pending:
            if unit.start >= span_end:
                break
            e = unit.emission
            for off, n_streams, n_comp in zip(e.doc_starts, e.doc_streams, e.doc_comp_streams):
                p = unit.start + off
                if lo <= p < span_end:
                    r = (p - lo) // L
                    counts_4xB[:, r] += (1, n_comp > 0, n_streams, n_comp)
        next_doc_offset = self._next_doc_offset(lo)
        batch = {
            "tokens": tokens_BxLK,
            "segment_ids": segment_ids_BxLK,
            "positions": positions_BxLK,
            "step": np.full(B, self._step, np.int32),
            "num_docs": counts_4xB[0],
            "num_comp_docs": counts_4xB[1],
            "num_streams": counts_4xB[2],
            "num_comp_streams": counts_4xB[3],
        }
        self._finish_batch(lo, next_doc_offset)
        return batch

    def get_state(self) -> dict[str, Any]:
        if self._skip_to:
            self._skip()
        if self._pending:
            next_flat, unit_start, shadow = self._pending[0].flat, self._pending[0].start, self._pending[0].shadow
        else:
            next_flat, unit_start = self._next_flat, self._stream_end
            shadow = self._shadow_end if self._raw_only else unit_start
        return {
            "version": _STATE_VERSION,
            "step": self._step,
            "next_flat": next_flat,
            "unit_start": unit_start,
            "doc_start": self._doc_start,
            "shadow_start": shadow,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"Packing state version {state.get('version')!r} is not {_STATE_VERSION}; "
                             "restore with the code version that saved it.")
        self._skip_to = 0
        next_flat = int(state["next_flat"])
        self._parent.close()
        parent = open_documents(self._documents, next_flat, self._num_workers, self._worker_buffer_size)
        self._parents = (parent,)
        self._ctx = parent._ctx  # pylint: disable=protected-access
        self._reset(step=int(state["step"]), stream_end=int(state["unit_start"]), doc_start=int(state["doc_start"]),
                    next_flat=next_flat, shadow_end=int(state.get("shadow_start", state["unit_start"])))

    def __str__(self) -> str:
        return f"PackedBatchIterator(step={self._step})"
