"""Preprocessing with several local processes: ``python -m proxy_jax.preprocess --processes=N``.

Process ``i`` of ``N`` runs :func:`proxy_jax.assemble.preprocess` with ``process_index=i,
process_count=N`` (it writes the shards ``s`` with ``s % N == i``), each in its own interpreter
(``spawn``: no JAX state is shared or forked). Their shards are the ones one process would write, byte
for byte: a document's view depends only on the document and the proxy (the neural proxy's M1 runs in
fixed tiles), never on which process codes it. Whichever process finishes the last shard writes the
manifest. An interrupted pool resumes like one process: finished shards are kept and skipped.

Each process prints its own progress lines (``train 1/2 ...``). The pool returns the manifest, the wall
time and every process's peak resident memory.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import resource
import time
from typing import Any, Sequence

import ml_collections


@dataclasses.dataclass
class PoolResult:
    manifest: dict[str, Any]
    seconds: float
    peak_rss_mb: list[float]  # per process, in process order


def _worker(config_dict: dict, output: str, cache_dir: str | None, num_shards: int, index: int, count: int,
            splits: tuple[str, ...], overwrite: bool) -> tuple[dict[str, Any], float]:
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # Grain and absl read flags outside app.run
    from proxy_jax import assemble

    config = ml_collections.ConfigDict(config_dict)
    manifest = assemble.preprocess(config, output, cache_dir=cache_dir, num_shards=num_shards, process_index=index,
                                   process_count=count, splits=splits, overwrite=overwrite and index == 0)
    return manifest, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def preprocess(config: ml_collections.ConfigDict, output: str, *, processes: int, cache_dir: str | None = None,
               num_shards: int = 8, splits: Sequence[str] = ("train", "validation"),
               overwrite: bool = False) -> PoolResult:
    """Writes every shard of ``config``'s corpus under ``output`` with ``processes`` local processes.

    ``overwrite`` is applied once, by process 0, before the others start (they would otherwise remove
    each other's shards). The proxy's own artifacts (a tokenizer, the neural threshold) are made by each
    process from the same config and corpus, hence identical; a tokenizer that must be trained is trained
    once first, so the others read it from ``cache_dir``.
    """
    processes = int(processes)
    if processes < 1:
        raise ValueError(f"--processes={processes} must be >= 1.")
    if processes > num_shards:
        raise ValueError(f"--processes={processes} exceeds --num_shards={num_shards}: a process writes whole "
                         f"shards; use --num_shards={processes} or more.")
    t0 = time.perf_counter()
    config_dict = config.to_dict()
    ctx = multiprocessing.get_context("spawn")
    splits = tuple(splits)
    if overwrite or _trains_artifacts(config):
        # One process first with nothing to write but the preparation: the overwrite and a trained
        # tokenizer (cached) happen once; the pool then finds both done.
        with ctx.Pool(1) as pool:
            pool.apply(_prepare, (config_dict, output, cache_dir, overwrite))
    with ctx.Pool(processes) as pool:
        jobs = [(config_dict, output, cache_dir, num_shards, i, processes, splits, False) for i in range(processes)]
        results = pool.starmap(_worker, jobs)  # the first failure stops the pool (its shards stay resumable)
    manifests = [m for m, _ in results]
    manifest = next((m for m in manifests if m.get("complete")), manifests[-1])
    return PoolResult(manifest, time.perf_counter() - t0, [rss for _, rss in results])


def _trains_artifacts(config: ml_collections.ConfigDict) -> bool:
    return config.proxy.name in ("tokenizer", "tokens_as_bytes") and not config.proxy.model_path


def _prepare(config_dict: dict, output: str, cache_dir: str | None, overwrite: bool) -> None:
    import os

    from absl import flags

    flags.FLAGS.mark_as_parsed()
    from proxy_jax import assemble, storage
    from proxy_jax.data import shard_writer

    config = ml_collections.ConfigDict(config_dict)
    storage.resolve_config_paths(config)
    os.makedirs(output, exist_ok=True)
    shard_writer.prepare_output(config, output, overwrite=overwrite)
    if _trains_artifacts(config):
        assemble.make_proxy(config, workdir=cache_dir or os.path.join(output, shard_writer.CACHE_DIR),
                            corpus=assemble.Corpus(config))
