"""The training input pipeline: documents -> per-document views -> mixed, packed batches.

    for each virtual shard v this host owns (proxy_jax.data.elastic):
      MapDataset.range(num_docs)[v::V]                           the shard's documents
        .shuffle(seed).repeat(num_epochs)                        reshuffled every epoch
        .map_with_index(load)                                    {"index", "epoch", "raw", "comp"}
        PackedBatchDataset                                       mixing + packing, in the main process
          (reads the above via .to_iter_dataset() [.mp_prefetch(workers)]: the per-document stage)
    VirtualShardsDataset                                         the shards' rows, in shard order
      [host_prefetch batches packed ahead in a thread]           (the training loop's: data.host_prefetch)

Mixing and packing run after the worker processes, in one sequential stage, so that every document
draws with the rate and mode of the optimiser step whose batch holds its first token, and so that the
batches are the same for any number of workers. Each of the V virtual shards (``data.virtual_shards``,
0 = one per process) packs its own documents into its own ``batch_size // V`` rows; host p owns the
shards ``[p V/P, (p+1) V/P)``, and host batch k is step k on every host. The global batch is the same
for any number of hosts P that divides V, which is what lets a run resume on another P.

Batches (per host, B = local rows, L = seq_len, K = num_targets):
  tokens, segment_ids, positions: int32 [B, L+K]; step, num_docs, num_comp_docs, num_streams,
  num_comp_streams: int32 [B]. ``segment_ids`` number the documents of a row from 1 (never 0) and
  ``positions`` count from 0 at each BOS and at the row's first token (``data.positions="row"``), or
  from each BOS only, continuing across batches (``"document"``). Each row is its own stream of documents
  (``proxy_jax.data.packing``): row r of batch k + 1 continues row r of batch k.
"""

from __future__ import annotations

from typing import Any, Callable

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from proxy_jax import config as config_lib
from proxy_jax import proxies, vocab
from proxy_jax.data import elastic
from proxy_jax.data import mixture_stream
from proxy_jax.data import packing
from proxy_jax.data import schedule

# Documents each worker process keeps ready, per batch of config.data.prefetch.
_DOCS_PER_PREFETCH = 16


class LoadDocument:
    """Map of the per-document stage: (flat index, document index) -> element dict (picklable).

    The flat index counts documents over epochs (epoch * documents per epoch + position in the epoch).
    """

    def __init__(self, source: Any, proxy: Any, *, docs_per_epoch: int, compress: bool, from_records: bool,
                 index_offset: int = 0):
        self.source = source
        self.index_offset = index_offset  # a mixture component's first index among all the mixture's documents
        self.proxy = proxy
        self.docs_per_epoch = docs_per_epoch
        self.compress = compress
        self.from_records = from_records

    def __call__(self, flat_index: int, doc_index) -> dict[str, Any]:
        doc_index = int(doc_index)
        if self.from_records:
            record = self.source.record(doc_index)
            raw = vocab.encode_raw(record.raw)
            comp = np.asarray(record.comp, vocab.ID_DTYPE) if self.compress else np.zeros(0, vocab.ID_DTYPE)
        else:
            data = self.source[doc_index]
            raw = vocab.encode_raw(data)
            comp = np.asarray(self.proxy.encode(data), vocab.ID_DTYPE) if self.compress else np.zeros(
                0, vocab.ID_DTYPE)
        return {"flat": flat_index, "index": doc_index + self.index_offset, "epoch": flat_index // self.docs_per_epoch,
                "raw": raw, "comp": comp}


def needs_compression(config: ml_collections.ConfigDict) -> bool:
    """Whether some step can emit a compressed view (a pure byte baseline never makes one)."""
    return proxies.proxy_class(config.proxy.name).compresses and schedule.max_rate(config.mix) > 0.0


def document_stage(config: ml_collections.ConfigDict, source: Any, proxy: Any, *, process_index: int,
                   process_count: int, compress: bool, index_offset: int = 0) -> grain.MapDataset:
    """Shard ``process_index`` of ``process_count`` (virtual shards): its documents, shuffled per epoch and
    loaded (with their compressed view when needed); ``index_offset`` is added to the documents' ``index``
    (a mixture component's, so that its documents draw apart from the other components')."""
    d = config.data
    num_docs = len(source)
    if num_docs < process_count:
        raise ValueError(f"The split has {num_docs} documents, fewer than the {process_count} virtual data shards "
                         "(data.virtual_shards, 0 = one per process); use a larger corpus or fewer shards.")
    ds = grain.MapDataset.range(num_docs)[process_index::process_count]
    docs_per_epoch = len(ds)
    if d.shuffle:
        ds = ds.shuffle(seed=int(config.seed) % 2**32)
    ds = ds.repeat(int(d.num_epochs) or None)
    from_records = d.source == "preprocessed" and hasattr(source, "record")
    if compress and not from_records and proxy is None:
        raise ValueError(f"config.proxy.name={config.proxy.name!r} compresses documents, so the pipeline needs "
                         "proxy= (proxy_jax.assemble.make_proxy(config, workdir)) or preprocessed shards.")
    return ds.map_with_index(LoadDocument(source, proxy, docs_per_epoch=docs_per_epoch, compress=compress,
                                          from_records=from_records, index_offset=index_offset))


def make_pipeline(config: ml_collections.ConfigDict, split: str = "train", *, proxy=None,
                  process_index: int | None = None, process_count: int | None = None, source=None,
                  start_step: int = 0, on_document: Callable[..., None] | None = None,
                  host_prefetch: int = 0) -> grain.IterDataset:
    """The batches of ``split`` for this host, as a ``grain.IterDataset`` (see the module docstring).

    Args:
      config: the run config (``data``, ``mix``, ``model`` heads, ``seed``, ``proxy``).
      split: the split given to ``corpus.load_split`` (ignored when ``source`` is given).
      proxy: the compressor (``proxy_jax.assemble.make_proxy(config, workdir)``); not needed for the byte
        baseline or preprocessed shards, which carry their compressed views.
      process_index, process_count: this host and the number of hosts (default: from JAX).
      source: a document source to use instead of ``mixture_stream.load_split(config.data, split)`` (a
        ``corpus.load_split``, or a mixture's ``MixtureSource``).
      start_step: the first batch is this step's (re-reads earlier documents; prefer restoring state).
      on_document: debug hook, called once per document with its draw (see ``PackedBatchDataset``); with
        ``host_prefetch`` it is called from the packing thread, ahead of the batches returned.
      host_prefetch: batches packed ahead in a background thread (``elastic.VirtualShardsIterator``; the
        training loop passes ``config.data.host_prefetch``); 0 packs inside ``next``. Batches and iterator
        states are the same for every value; close the iterator to stop the thread.
    """
    process_index = jax.process_index() if process_index is None else int(process_index)
    process_count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count}).")
    if source is None:
        source = mixture_stream.load_split(config.data, split, proxy_config=config.proxy)
    compress = needs_compression(config)
    if int(config.data.num_workers) > 0 and not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags.
    num_shards = elastic.resolve_shards(config.data.virtual_shards, process_count)
    owned = elastic.owned_shards(num_shards, process_index, process_count)
    rows = int(config.data.batch_size) // num_shards
    workers = int(config.data.num_workers)
    # The workers are shared out over this process's shards (batches do not depend on their number).
    shard_workers = -(-workers // len(owned)) if workers > 0 else 0
    kwargs = dict(seq_len=int(config.data.seq_len), num_targets=config_lib.num_targets(config.model), rows=rows,
                  seed=int(config.seed), mix=config.mix, has_comp=compress, raw_only=bool(config.data.raw_only_of_mix),
                  positions=str(config.data.get("positions", "row")), start_step=start_step,
                  num_workers=shard_workers, worker_buffer_size=max(1, int(config.data.prefetch)) * _DOCS_PER_PREFETCH,
                  on_document=on_document)
    shards = {}
    for v in owned:
        if hasattr(source, "mix"):  # a mixture of sources: one document stage per component
            parts = zip(mixture_stream.component_configs(config, source), source.components)
            stages = [document_stage(cfg, comp, proxy, process_index=v, process_count=num_shards, compress=compress,
                                     index_offset=offset) for (cfg, offset), comp in parts]
            shards[v] = mixture_stream.shard_dataset(config, source, stages, shard=v, **kwargs)
            continue
        docs = document_stage(config, source, proxy, process_index=v, process_count=num_shards, compress=compress)
        shards[v] = packing.PackedBatchDataset(docs, **kwargs)
    return elastic.VirtualShardsDataset(shards, num_shards, host_prefetch=host_prefetch)
