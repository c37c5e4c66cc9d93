"""The training input pipeline: documents -> per-document views -> mixed, packed batches.

    MapDataset.range(num_docs)[process_index::process_count]     this host's documents
      .shuffle(seed).repeat(num_epochs)                          reshuffled every epoch
      .map_with_index(load)                                      {"index", "epoch", "raw", "comp"}
      PackedBatchDataset                                         mixing + packing, in the main process
        (reads the above via .to_iter_dataset() [.mp_prefetch(workers)]: the per-document stage)

Mixing and packing run after the worker processes, in one sequential stage, so that every document
draws with the rate and mode of the optimiser step whose batch holds its first token, and so that the
batches are the same for any number of workers. Each host packs its own documents into its own
``batch_size // process_count`` rows; host batch k is step k on every host.

Batches (per host, B = local rows, L = seq_len, K = num_targets):
  tokens, segment_ids, positions: int32 [B, L+K]; step, num_docs, num_comp_docs, num_streams,
  num_comp_streams: int32 [B]. ``segment_ids`` number the documents of a row from 1 (never 0) and
  ``positions`` count from 0 at each BOS, continuing across rows.
"""

from __future__ import annotations

from typing import Any, Callable

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from proxy_jax import config as config_lib
from proxy_jax import vocab
from proxy_jax.data import packing
from proxy_jax.data import schedule

# Documents each worker process keeps ready, per batch of config.data.prefetch.
_DOCS_PER_PREFETCH = 16


class LoadDocument:
    """Map of the per-document stage: (flat index, document index) -> element dict (picklable).

    The flat index counts documents over epochs (epoch * documents per epoch + position in the epoch).
    """

    def __init__(self, source: Any, proxy: Any, *, docs_per_epoch: int, compress: bool, from_records: bool):
        self.source = source
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
        return {"flat": flat_index, "index": doc_index, "epoch": flat_index // self.docs_per_epoch, "raw": raw, "comp": comp}


def needs_compression(config: ml_collections.ConfigDict) -> bool:
    """Whether some step can emit a compressed view (a pure byte baseline never makes one)."""
    return config.proxy.name != "bytes" and schedule.max_rate(config.mix) > 0.0


def validate_pipeline_config(config: ml_collections.ConfigDict, process_count: int) -> None:
    """Raises one clear ValueError for data settings the pipeline cannot honour."""
    d = config.data
    if int(d.seq_len) < 1:
        raise ValueError(f"config.data.seq_len={d.seq_len} must be >= 1; set it to the model context length.")
    if int(d.batch_size) < 1:
        raise ValueError(f"config.data.batch_size={d.batch_size} must be >= 1.")
    if int(d.batch_size) % process_count:
        raise ValueError(f"config.data.batch_size={d.batch_size} is not divisible by the {process_count} "
                         f"processes; set it to a multiple of {process_count}.")
    if int(d.num_workers) < 0:
        raise ValueError(f"config.data.num_workers={d.num_workers} must be >= 0 (0 = in-process).")
    if int(d.num_epochs) < 0:
        raise ValueError(f"config.data.num_epochs={d.num_epochs} must be >= 0 (0 = repeat forever).")
    if config_lib.num_targets(config) < 1:
        raise ValueError(f"config.model.num_pred_heads={config.model.num_pred_heads} must be >= 1.")
    schedule.validate_mix(config.mix)


def document_stage(config: ml_collections.ConfigDict, source: Any, proxy: Any, *, process_index: int,
                   process_count: int, compress: bool) -> grain.MapDataset:
    """This host's documents, shuffled per epoch and loaded (with their compressed view when needed)."""
    d = config.data
    num_docs = len(source)
    if num_docs < process_count:
        raise ValueError(f"The split has {num_docs} documents, fewer than the {process_count} processes; "
                         "use a larger corpus or fewer processes.")
    ds = grain.MapDataset.range(num_docs)[process_index::process_count]
    docs_per_epoch = len(ds)
    if d.shuffle:
        ds = ds.shuffle(seed=int(config.seed) % 2**32)
    ds = ds.repeat(int(d.num_epochs) or None)
    from_records = d.source == "preprocessed" and hasattr(source, "record")
    if compress and not from_records and proxy is None:
        raise ValueError("The pipeline needs a proxy to compress documents; pass proxy= or use "
                         "config.data.source='preprocessed'.")
    return ds.map_with_index(LoadDocument(source, proxy, docs_per_epoch=docs_per_epoch, compress=compress,
                                          from_records=from_records))


def make_pipeline(config: ml_collections.ConfigDict, split: str = "train", *, proxy=None, workdir=None,
                  process_index: int | None = None, process_count: int | None = None, source=None,
                  start_step: int = 0, on_document: Callable[..., None] | None = None) -> grain.IterDataset:
    """The batches of ``split`` for this host, as a ``grain.IterDataset`` (see the module docstring).

    Args:
      config: the run config (``data``, ``mix``, ``model`` heads, ``seed``, ``proxy``).
      split: the split given to ``corpus.load_split`` (ignored when ``source`` is given).
      proxy: the compressor; built with ``proxies.make_proxy`` when needed and not given.
      workdir: where a trained proxy (tokenizer) is cached.
      process_index, process_count: this host and the number of hosts (default: from JAX).
      source: a document source to use instead of ``corpus.load_split(config.data, split)``.
      start_step: the first batch is this step's (re-reads earlier documents; prefer restoring state).
      on_document: debug hook, called once per document with its draw (see ``PackedBatchDataset``).
    """
    process_index = jax.process_index() if process_index is None else int(process_index)
    process_count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count}).")
    validate_pipeline_config(config, process_count)
    if source is None:
        from proxy_jax.data import corpus

        source = corpus.load_split(config.data, split, proxy_config=config.proxy)
    compress = needs_compression(config)
    from_records = config.data.source == "preprocessed" and hasattr(source, "record")
    if compress and proxy is None and not from_records:
        from proxy_jax import proxies

        proxy = proxies.make_proxy(config, workdir=workdir)
    if int(config.data.num_workers) > 0 and not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags.
    docs = document_stage(config, source, proxy, process_index=process_index, process_count=process_count,
                          compress=compress)
    return packing.PackedBatchDataset(
        docs,
        seq_len=int(config.data.seq_len),
        num_targets=config_lib.num_targets(config),
        rows=int(config.data.batch_size) // process_count,
        seed=int(config.seed),
        mix=config.mix,
        has_comp=compress,
        start_step=start_step,
        num_workers=int(config.data.num_workers),
        worker_buffer_size=max(1, int(config.data.prefetch)) * _DOCS_PER_PREFETCH,
        on_document=on_document,
    )
