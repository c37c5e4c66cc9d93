"""Mixing and packing in one sequential stage: per-document elements -> batches of packed rows.

Row streams. Each of the B rows of a batch is its own stream of documents: row r of batch k is
``stream_r[k*L : k*L + L + K]`` (L = seq_len, K = num_targets, B = rows per local batch), so consecutive
batches continue each row where it stopped and the K last tokens of a row are the first K of the same
row in the next batch (every token is an input exactly once). The documents are read in one order (the
shard's shuffled order) and each goes to the row whose stream is shortest at that moment (ties: the
lowest row). That assignment is a pure function of the order and the emitted lengths, not of when a
document is read, and a batch holds B different documents at its row starts: a long file fills one row
for many steps instead of whole batches. (A single stream cut into consecutive rows put 41% of batches
of the standard library at 8 x 4096 inside one file; see BENCHMARKS.md.)

The stage knows where each row stream stands, hence which batch (= optimiser step) the first token of
the next document lands in, and draws that document's arrangement with the rate and mode of exactly that
step: a document starting at position s of its row belongs to step ``s // L``. A document that spills
into the next batch keeps the step where it starts.

Positions (``positions``): ``"row"`` restarts them at 0 at the start of every row and after every EOS
(the reference's rule: RoPE angles stay below L + K); ``"document"`` counts from each BOS, continuing
across the batches of the row, so a 1 MB document reaches position ~10^6.

Because this stage runs after any worker processes, batches do not depend on the number of workers.
Its state is small: the step, the flat index (epoch * documents + position) of the next document to
read, and per row the flat indices of its pending documents (those still reaching the next batch) with
where the first of them starts. On restore the pending documents are re-read by index, re-drawn (draws
are pure functions) and the document stage is reopened at the next flat index, with any number of
workers, so a resumed run continues exactly.

``raw_only`` (``config.data.raw_only_of_mix``, the transfer control of a proxy run): each row keeps a
shadow position, where the document would start in the proxy run's row stream; documents are assigned
and drawn by those shadow positions, exactly as the proxy run does, and only the raw stream is emitted
(comp-only documents vanish, pairs keep their raw half as ``1 12 bytes 13 2``, or ``1 bytes 2`` in
vanilla mode). The raw documents thus arrive in the proxy run's rows and order with its draws.
"""

from __future__ import annotations

import collections
import copy
import logging
from typing import Any, Callable

import grain
import ml_collections
import numpy as np

from proxy_jax import vocab
from proxy_jax.data import mixing
from proxy_jax.data import schedule

_STATE_VERSION = 2
_READ_THREADS = 4
_NO_START = np.iinfo(np.int64).min // 2
POSITIONS = ("row", "document")


class _Unit:
    """One source document's emitted ids, placed at ``start`` of its row stream."""

    __slots__ = ("flat", "start", "end", "emission", "shadow", "shadow_end")

    def __init__(self, flat: int, start: int, emission: mixing.Emission, shadow: int, shadow_end: int):
        self.flat = flat
        self.start = start
        self.end = start + len(emission.ids)
        self.emission = emission
        self.shadow = shadow  # where the document starts in the proxy run's row stream (raw_only), else start
        self.shadow_end = shadow_end


class _Row:
    """One row stream: its pending documents and where the next one starts."""

    __slots__ = ("end", "shadow_end", "pending")

    def __init__(self, end: int, shadow_end: int):
        self.end = end  # position where the next document starts
        self.shadow_end = shadow_end  # the same in the proxy run's row stream (raw_only)
        self.pending: collections.deque[_Unit] = collections.deque()


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
    """Packs per-document elements into batches of rows, one row stream per row.

    Args:
      documents: a MapDataset whose element ``i`` is a dict with ``flat`` = i, the global document
        ``index``, its ``epoch``, int32 ``raw`` ids and int32 ``comp`` ids (ignored when ``has_comp`` is
        False). It is read in order, in ``num_workers`` worker processes when > 0; a restore also reads
        the few pending elements by index in this process.
      seq_len, num_targets, rows: L, K and B of the module docstring.
      seed: seeds the per-document draws.
      mix: ``config.mix`` (the schedule of rate and mode).
      has_comp: whether documents carry a compressed view; without one every document is emitted raw.
      raw_only: draw as the proxy run does, emit only raw streams (the transfer control; module docstring).
      positions: ``"row"`` or ``"document"`` (module docstring; ``config.data.positions``).
      start_step: the first batch produced is this step's (fast-forwards by re-reading and re-drawing
        the documents of earlier steps; restoring a saved state is the cheap way to resume).
      num_workers, worker_buffer_size: Grain worker processes for the document stage and the
        documents each keeps ready.
      on_document: debug hook called with (index, epoch, step, rate, mode, arrangement, row, start) per document.

    With a finite ``documents`` (a set number of epochs) iteration stops before the first batch the
    remaining documents cannot fill: the partial tail is dropped, never padded.
    """

    def __init__(self, documents: grain.MapDataset, *, seq_len: int, num_targets: int, rows: int, seed: int,
                 mix: ml_collections.ConfigDict, has_comp: bool = True, raw_only: bool = False,
                 positions: str = "row", start_step: int = 0,
                 num_workers: int = 0, worker_buffer_size: int = 16,
                 on_document: Callable[..., None] | None = None):
        super().__init__(documents)
        if rows < 1:
            raise ValueError(f"rows={rows} must be >= 1; the local batch needs at least one row.")
        if num_targets < 0:
            raise ValueError(f"num_targets={num_targets} must be >= 0.")
        if start_step < 0:
            raise ValueError(f"start_step={start_step} is negative; steps count from 0.")
        if positions not in POSITIONS:
            raise ValueError(f"positions={positions!r} (data.positions) must be one of {POSITIONS}.")
        schedule.validate_mix(mix)
        if raw_only and not has_comp:
            raise ValueError("raw_only=True (data.raw_only_of_mix) needs documents with a compressed view: the "
                             "draws depend on the compressed lengths; use a compressing proxy and a rate > 0.")
        self._documents = documents
        self._kwargs = dict(seq_len=int(seq_len), num_targets=int(num_targets), rows=int(rows), seed=int(seed),
                            mix=copy.deepcopy(mix), has_comp=bool(has_comp), raw_only=bool(raw_only),
                            positions=positions, start_step=int(start_step),
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
                 mix: ml_collections.ConfigDict, has_comp: bool, raw_only: bool, positions: str, start_step: int,
                 num_workers: int, worker_buffer_size: int, on_document: Callable[..., None] | None):
        self._documents = documents
        self._num_workers, self._worker_buffer_size = num_workers, worker_buffer_size
        super().__init__(open_documents(documents, 0, num_workers, worker_buffer_size))
        self._L, self._K, self._B = seq_len, num_targets, rows
        self._seed, self._mix, self._has_comp, self._raw_only = seed, mix, has_comp, raw_only
        self._restart_rows = positions == "row"
        self._on_document = on_document
        self._cached_step, self._cached_schedule = -1, (0.0, "")
        self._step, self._next_flat = 0, 0  # the next batch to produce, the next document to read
        self._rows = [_Row(0, 0) for _ in range(rows)]
        self._skip_to = start_step
        self.skipped_empty = 0  # empty documents met by this iterator (see _skip_empty)

    # ---- row streams --------------------------------------------------------------------------
    def _schedule(self, step: int) -> tuple[float, str]:
        if step != self._cached_step:
            self._cached_step, self._cached_schedule = step, schedule.schedule_at(step, self._mix)
        return self._cached_schedule

    def _place(self, element: dict[str, Any], row: _Row) -> tuple:
        """Draws ``element``'s arrangement for the step it starts in and queues it at the end of ``row``."""
        start = row.end
        shadow = row.shadow_end if self._raw_only else start
        step = shadow // self._L
        rate, mode = self._schedule(step)
        index, epoch = int(element["index"]), int(element["epoch"])
        u_choice, u_order = mixing.document_uniforms(self._seed, index, epoch, step)
        comp = np.asarray(element["comp"], vocab.ID_DTYPE) if self._has_comp else None
        arrangement = mixing.choose_arrangement(mode, rate, u_choice, u_order, has_comp=comp is not None)
        raw = np.asarray(element["raw"], vocab.ID_DTYPE)
        emission = mixing.emit_arrangement(raw, comp, mode=mode, arrangement=arrangement)
        shadow_end = shadow + len(emission.ids)
        if self._raw_only:
            if arrangement == mixing.COMP:
                emission = mixing.Emission(np.zeros(0, vocab.ID_DTYPE), (), (), ())
            else:
                emission = mixing.emit_arrangement(raw, None, mode=mode, arrangement=mixing.RAW)
        unit = _Unit(int(element["flat"]), start, emission, shadow, shadow_end)
        row.pending.append(unit)
        row.end, row.shadow_end = unit.end, shadow_end
        return index, epoch, step, rate, mode, arrangement, start  # for the debug hook

    def _pull(self) -> None:
        """Reads the next document and gives it to the shortest row stream (by shadow under raw_only)."""
        element = next(self._parent)
        flat = int(element["flat"])
        if flat != self._next_flat:
            raise ValueError(f"The document stage skipped from flat index {self._next_flat} to {flat}; "
                             "it must yield every document in order (no filtering).")
        self._next_flat = flat + 1
        if not len(element["raw"]):
            self._skip_empty(element)
            return
        ends = [row.shadow_end for row in self._rows] if self._raw_only else [row.end for row in self._rows]
        r = int(np.argmin(ends))
        index, epoch, step, rate, mode, arrangement, start = self._place(element, self._rows[r])
        if self._on_document is not None:
            self._on_document(index=index, epoch=epoch, step=step, rate=rate, mode=mode, arrangement=arrangement, row=r,
                              start=start)

    def _skip_empty(self, element: dict[str, Any]) -> None:
        """An empty document (a null row, an empty text or a skipped malformed line of a lazily indexed
        corpus; a full index holds none) takes no place and no draw: the others keep theirs."""
        self.skipped_empty += 1
        n = self.skipped_empty
        if n & (n - 1) == 0:  # 1, 2, 4, ...: a count that stays visible without one line per document
            logging.getLogger(__name__).warning(
                "Skipped %d empty documents so far (document %d the latest: null rows, empty texts or skipped "
                "malformed lines of a lazily indexed corpus, data.index).", n, int(element["index"]))

    def _advance(self) -> tuple[int, int]:
        """Makes sure batch ``self._step`` is available in every row; returns its (lo, hi) row span."""
        lo = self._step * self._L
        hi = lo + self._L + self._K
        while min(row.end for row in self._rows) < hi:
            self._pull()
        return lo, hi

    def _finish_batch(self, lo: int) -> None:
        """Drops documents that ended before the next batch and moves to the next step."""
        next_lo = lo + self._L
        for row in self._rows:
            while row.pending and row.pending[0].end <= next_lo:
                row.pending.popleft()
        self._step += 1

    def _skip(self) -> None:
        while self._step < self._skip_to:
            lo, _ = self._advance()
            self._finish_batch(lo)
        self._skip_to = 0

    def _row_tokens(self, row: _Row, lo: int, hi: int) -> tuple[np.ndarray, int, list[tuple[int, int, int]]]:
        """Tokens [lo, hi) of ``row``, the offset of ``lo`` inside its document, and the documents starting
        in [lo, lo + L) as (offset, streams, compressed streams)."""
        pieces, offset0, starts = [], 0, []
        for unit in row.pending:
            if unit.start >= hi:
                break
            if unit.end > lo:
                pieces.append(unit.emission.ids[max(0, lo - unit.start): hi - unit.start])
            e = unit.emission
            for off, n_streams, n_comp in zip(e.doc_starts, e.doc_streams, e.doc_comp_streams):
                p = unit.start + off
                if p <= lo:
                    offset0 = lo - p
                if lo <= p < lo + self._L:
                    starts.append((p - lo, n_streams, n_comp))
        return np.concatenate(pieces), offset0, starts

    # ---- the DatasetIterator API --------------------------------------------------------------
    def __next__(self) -> dict[str, np.ndarray]:
        if self._skip_to:
            self._skip()
        L, K, B = self._L, self._K, self._B
        lo, hi = self._advance()
        tokens_BxLK = np.empty((B, L + K), np.int32)
        offsets_B = np.zeros(B, np.int64)
        counts_4xB = np.zeros((4, B), np.int32)
        for r, row in enumerate(self._rows):
            tokens_BxLK[r], offset0, starts = self._row_tokens(row, lo, hi)
            offsets_B[r] = 0 if self._restart_rows else offset0
            # Documents are counted in the row holding their BOS as an input token.
            for _, n_streams, n_comp in starts:
                counts_4xB[:, r] += (1, n_comp > 0, n_streams, n_comp)
        # Positions restart right after every EOS; the row's first document may have started earlier.
        t_LK = np.arange(L + K, dtype=np.int64)
        marker_BxLK = np.full((B, L + K), _NO_START, np.int64)
        marker_BxLK[:, 1:] = np.where(tokens_BxLK[:, :-1] == vocab.EOS, t_LK[None, 1:], _NO_START)
        marker_BxLK[:, 0] = -offsets_B
        positions_BxLK = (t_LK[None, :] - np.maximum.accumulate(marker_BxLK, axis=1)).astype(np.int32)
        segment_ids_BxLK = np.ones((B, L + K), np.int32)
        np.cumsum(tokens_BxLK[:, :-1] == vocab.EOS, axis=1, out=segment_ids_BxLK[:, 1:])
        segment_ids_BxLK[:, 1:] += 1
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
        self._finish_batch(lo)
        return batch

    def get_state(self) -> dict[str, Any]:
        if self._skip_to:
            self._skip()
        rows = []
        for row in self._rows:
            first = row.pending[0] if row.pending else None
            rows.append({"flats": [u.flat for u in row.pending],
                         "start": first.start if first else row.end,
                         "shadow": first.shadow if first else row.shadow_end})
        return {"version": _STATE_VERSION, "step": self._step, "next_flat": self._next_flat, "rows": rows}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"Packing state version {state.get('version')!r} is not {_STATE_VERSION}; "
                             "restore with the code version that saved it.")
        if len(state["rows"]) != self._B:
            raise ValueError(f"The packing state has {len(state['rows'])} rows but this shard packs {self._B}; "
                             "restore with the data.batch_size and data.virtual_shards that saved it.")
        self._skip_to = 0
        self._step, self._next_flat = int(state["step"]), int(state["next_flat"])
        self._parent.close()
        parent = open_documents(self._documents, self._next_flat, self._num_workers, self._worker_buffer_size)
        self._parents = (parent,)
        self._ctx = parent._ctx  # pylint: disable=protected-access
        self._rows = []
        for saved in state["rows"]:
            row = _Row(int(saved["start"]), int(saved["shadow"]))
            for flat in saved["flats"]:  # the pending documents, re-read and re-drawn in their order
                self._place(self._documents[int(flat)], row)
            self._rows.append(row)

    def __str__(self) -> str:
        return f"PackedBatchIterator(step={self._step})"
