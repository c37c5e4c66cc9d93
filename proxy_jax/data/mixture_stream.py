"""A mixture's documents and batches: its components' splits as one source, and its packing stage.

:class:`MixtureSource` holds each component's split (``corpus.load_split`` of the component's source) and
reads like one source whose keys are ``NAME/KEY`` (the run record, the neural proxy's sample).

:class:`MixturePackedBatchIterator` is the packing stage of ``proxy_jax.data.packing`` with one document
stage per component (each shuffled and repeated on its own, reading the shard's ``documents[v::V]`` of
that component): before each read it knows the row, hence the step, the next document starts in, takes
the component of the slot from ``mixture.components_of`` with that step's weights, and reads that
component's next document. Its state adds each component's next flat index (= documents drawn from it
by the shard) to the packing state, and pending documents are saved as ``[component, flat]``, so a
restore continues exactly, on any number of processes. Each batch carries ``mixture_docs`` int32
[rows, C]: every shard's first row holds the documents the shard has drawn from each component so far
(the other rows 0), so the sum over a global batch's rows is the run's count (``data/NAME/docs``).

A component's own ``rate_peak`` scales the run's rate schedule for its documents by
``rate_peak / mix.rate_peak`` (capped at 1): the same phases, that peak.
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

import grain
import ml_collections
import numpy as np

from proxy_jax.data import corpus
from proxy_jax.data import mixture as mixture_lib
from proxy_jax.data import packing

log = logging.getLogger(__name__)
_EPOCHS_LOGGED: set[str] = set()  # components whose first new epoch this process has logged


class MixtureSource:
    """The splits of a mixture's components, read as one source (keys ``NAME/KEY``)."""

    def __init__(self, mix: dict[str, Any], sources: list, configs: list[ml_collections.ConfigDict]):
        self.mix = mix
        self.names = mixture_lib.names(mix)
        self.components = list(sources)
        self.configs = configs
        self._starts = np.cumsum([0] + [len(s) for s in sources]).tolist()
        self.description = "mixture(" + ", ".join(
            f"{n}@{c['weight']:.4g}: {s.description}" for n, c, s in zip(self.names, mix["components"], sources)) + ")"
        self.stats = {n: s.stats for n, s in zip(self.names, sources)}
        self._fingerprint = None

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, i) -> tuple[int, int]:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"document index {i} out of range for a mixture of {len(self)} documents.")
        c = bisect.bisect_right(self._starts, i) - 1
        return c, i - self._starts[c]

    def __getitem__(self, i) -> bytes:
        c, j = self._locate(i)
        return self.components[c][j]

    def key(self, i) -> str:
        c, j = self._locate(i)
        return f"{self.names[c]}/{self.components[c].key(j)}"

    def size(self, i) -> int:
        c, j = self._locate(i)
        return self.components[c].size(j)

    @property
    def lazy(self) -> bool:
        return any(getattr(s, "lazy", False) for s in self.components)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = mixture_lib.fingerprint(self.mix, self.components)
        return self._fingerprint

    def __repr__(self):
        return f"MixtureSource({self.description!r}, documents={len(self)})"


def load_split(data: ml_collections.ConfigDict, split: str, *, proxy_config=None):
    """``corpus.load_split``, and for a mixture the ``split`` of every component of ``data.mixture``."""
    if not data.get("mixture"):
        return corpus.load_split(data, split, proxy_config=proxy_config)
    mix = mixture_lib.resolve(data.mixture)
    configs = [mixture_lib.data_config(data, c) for c in mix["components"]]
    sources = [corpus.load_split(d, split, proxy_config=proxy_config) for d in configs]
    return MixtureSource(mix, sources, configs)


def component_configs(config: ml_collections.ConfigDict, source: MixtureSource) -> list[tuple[Any, int]]:
    """The run config of each component read alone (its ``data``), and where its documents start among the
    mixture's: ``[(config, offset)]``, for the pipeline's document stages."""
    out, offset = [], 0
    for data, comp in zip(source.configs, source.components):
        cfg = ml_collections.ConfigDict({**config.to_dict(), "data": data.to_dict()})
        out.append((cfg, offset))
        offset += len(comp)
    return out


def shard_dataset(config: ml_collections.ConfigDict, source: MixtureSource, stages: list[grain.MapDataset], *,
                  shard: int, **packing_kwargs) -> "MixturePackedBatchDataset":
    """Virtual shard ``shard`` of the mixture: its components' document ``stages``, packed."""
    workers = int(packing_kwargs.pop("num_workers"))
    per_component = -(-workers // len(stages)) if workers > 0 else 0
    return MixturePackedBatchDataset(
        stages, names=source.names, plan=mixture_lib.weight_plan(source.mix), shard=shard,
        scales=mixture_lib.rate_scales(source.mix, config.mix), num_workers=per_component, **packing_kwargs)


class MixturePackedBatchDataset(packing.PackedBatchDataset):
    """:class:`~proxy_jax.data.packing.PackedBatchDataset` over one document stage per component."""

    def __init__(self, components: list[grain.MapDataset], *, names: list[str], plan, shard: int,
                 scales: list[float], **kwargs):
        super().__init__(components[0], **kwargs)
        self._components = components
        self._mixture = dict(names=list(names), plan=plan, shard=int(shard), scales=list(scales))

    def __iter__(self) -> "MixturePackedBatchIterator":
        return MixturePackedBatchIterator(self._components, **self._mixture, **self._kwargs)


class MixturePackedBatchIterator(packing.PackedBatchIterator):
    """The packing iterator reading one document stage per component (module docstring)."""

    def __init__(self, components: list[grain.MapDataset], *, names: list[str], plan, shard: int,
                 scales: list[float], **kwargs):
        workers = kwargs.pop("num_workers")
        super().__init__(components[0], num_workers=0, **kwargs)  # its one in-process reader is replaced below
        self._parent.close()
        self._num_workers = workers
        self._components = components
        self._names, self._plan, self._shard, self._scales = names, plan, shard, scales
        self._open([0] * len(components))
        self._scale = 1.0

    def _open(self, flats: list[int]) -> None:
        self._next_flats = list(flats)
        its = [packing.open_documents(ds, f, self._num_workers, self._worker_buffer_size)
               for ds, f in zip(self._components, flats)]
        grain.DatasetIterator.__init__(self, its)
        self._its = its

    def _schedule(self, step: int) -> tuple[float, str]:
        rate, mode = super()._schedule(step)
        return min(1.0, rate * self._scale), mode

    def _pull(self) -> None:
        ends = [row.shadow_end for row in self._rows] if self._raw_only else [row.end for row in self._rows]
        r = int(np.argmin(ends))
        slot = self._next_flat  # documents this shard has read: the slot's number
        cum = mixture_lib.weights_at(self._plan, ends[r] // self._L)
        c = mixture_lib.component_of(self._seed, self._shard, slot, cum)
        element = next(self._its[c])
        flat = int(element["flat"])
        if flat != self._next_flats[c]:
            raise ValueError(f"The document stage of mixture component {self._names[c]!r} skipped from flat index "
                             f"{self._next_flats[c]} to {flat}; it must yield every document in order.")
        self._next_flats[c], self._next_flat = flat + 1, slot + 1
        if int(element["epoch"]) > 0 and self._names[c] not in _EPOCHS_LOGGED:
            _EPOCHS_LOGGED.add(self._names[c])
            log.info("Mixture component %r has given every document of its split and starts its next epoch (in a "
                     "new shuffled order); later epochs are not logged.", self._names[c])
        if not len(element["raw"]):
            self._skip_empty(element)
            return
        self._place_from(c, element, self._rows[r], r)

    def _place_from(self, c: int, element: dict[str, Any], row, r: int | None) -> None:
        self._scale = self._scales[c]
        index, epoch, step, rate, mode, arrangement, start = self._place(element, row)
        row.pending[-1].flat = (c, int(element["flat"]))
        if r is not None and self._on_document is not None:
            self._on_document(index=index, epoch=epoch, step=step, rate=rate, mode=mode, arrangement=arrangement,
                              row=r, start=start, component=self._names[c])

    def __next__(self) -> dict[str, np.ndarray]:
        batch = super().__next__()
        docs = np.zeros((self._B, len(self._names)), np.int32)
        docs[0] = self._next_flats
        batch["mixture_docs"] = docs
        return batch

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["rows"] = [{**row, "flats": [list(f) for f in row["flats"]]} for row in state["rows"]]
        return {**state, "components": list(self._names), "component_flats": list(self._next_flats)}

    def set_state(self, state: dict[str, Any]) -> None:
        version = packing._STATE_VERSION  # pylint: disable=protected-access
        if state.get("version") != version:
            raise ValueError(f"Packing state version {state.get('version')!r} is not {version}; restore with the "
                             "code version that saved it.")
        if state.get("components") != self._names:
            raise ValueError(f"The checkpoint's data stream reads the mixture components {state.get('components')}, "
                             f"this run {self._names}; resume with the mixture that saved it.")
        if len(state["rows"]) != self._B:
            raise ValueError(f"The packing state has {len(state['rows'])} rows but this shard packs {self._B}; "
                             "restore with the data.batch_size and data.virtual_shards that saved it.")
        self._skip_to = 0
        self._step, self._next_flat = int(state["step"]), int(state["next_flat"])
        for it in self._its:
            it.close()
        self._open([int(f) for f in state["component_flats"]])
        self._rows = []
        for saved in state["rows"]:
            row = packing._Row(int(saved["start"]), int(saved["shadow"]))  # pylint: disable=protected-access
            for c, flat in saved["flats"]:  # the pending documents, re-read and re-drawn in their order
                self._place_from(int(c), self._components[int(c)][int(flat)], row, None)
            self._rows.append(row)

    def __str__(self) -> str:
        return f"MixturePackedBatchIterator(step={self._step}, components={self._names})"
