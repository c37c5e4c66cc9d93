"""Writing preprocessed shards: a corpus compressed once into ArrayRecord files plus ``manifest.json``.

The format (and reading it back) is ``proxy_jax.data.shards``'; the command is ``python -m
proxy_jax.preprocess``. One ``records.Record`` per document, in split order; training documents may be
cut into pieces (``data.max_doc_bytes``), held-out ones are kept whole for evaluation.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from typing import Any, Sequence

import ml_collections

from proxy_jax import proxies, storage
from proxy_jax.data import corpus, records
from proxy_jax.data.corpus import SPLITS
from proxy_jax.data.shards import MANIFEST, TOKENIZER, shard_name

FORMAT_VERSION = 1
STATS_DIR = "shard_stats"
CACHE_DIR = "work"  # preprocess's default tokenizer cache inside --output (--cache_dir moves it)
_WRITER_OPTIONS = "group_size:1"  # random access: one record per chunk
_CHUNK_DOCS = 64
_CHUNK_BYTES = 8 << 20


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _data_settings(data_config) -> dict[str, Any]:
    keys = ("source", "path", "glob", "text_field", "skip_malformed", "tfds_split", "tfds_data_dir",
            "val_fraction", "max_doc_bytes")
    return {k: data_config[k] for k in keys}


def _shard_range(n: int, shard: int, num_shards: int) -> tuple[int, int]:
    return shard * n // num_shards, (shard + 1) * n // num_shards


def _stats_path(output: str, split: str, shard: int, num_shards: int) -> str:
    return os.path.join(output, STATS_DIR, shard_name(split, shard, num_shards) + ".json")


def _shard_done(output: str, split: str, shard: int, num_shards: int, identity: str, count: int) -> dict | None:
    """The saved statistics of a finished, matching shard, else None."""
    path = os.path.join(output, shard_name(split, shard, num_shards))
    spath = _stats_path(output, split, shard, num_shards)
    if not (os.path.isfile(path) and os.path.isfile(spath)):
        return None
    with open(spath, encoding="utf-8") as f:
        stats = json.load(f)
    if stats.get("identity") != identity or stats.get("documents") != count:
        return None
    from array_record.python import array_record_module
    reader = array_record_module.ArrayRecordReader(path)
    try:
        ok = reader.num_records() == count
    finally:
        reader.close()
    return stats if ok else None


def write_shard(output, split, shard, num_shards, src, lo, hi, proxy, identity, progress,
                made_with: dict | None = None) -> dict:
    """Writes documents [lo, hi) of ``src`` as one shard (under a temporary name, renamed when complete)
    and then its statistics (with ``made_with``: the proxy and corpus settings); returns them."""
    made_with = made_with or {}
    from array_record.python import array_record_module
    path = os.path.join(output, shard_name(split, shard, num_shards))
    for stale in glob.glob(glob.escape(path) + ".tmp*"):  # left by an interrupted run
        os.remove(stale)
    tmp = f"{path}.tmp{os.getpid()}"
    writer = array_record_module.ArrayRecordWriter(tmp, _WRITER_OPTIONS)
    n_bytes = n_symbols = 0
    try:
        i = lo
        while i < hi:
            idx, docs, size = [], [], 0
            while i < hi and len(docs) < _CHUNK_DOCS and size < _CHUNK_BYTES:
                docs.append(src[i])
                idx.append(i)
                size += len(docs[-1])
                i += 1
            for j, raw, comp in zip(idx, docs, proxy.encode_batch(docs)):
                writer.write(records.encode_record(records.Record(j, src.key(j), raw, comp)))
                n_symbols += int(comp.size)
            n_bytes += size
            progress(len(docs), size)
    finally:
        writer.close()
    os.replace(tmp, path)
    stats = {"identity": identity, "documents": hi - lo, "bytes": n_bytes, "symbols": n_symbols,
             "first_index": lo, **made_with}
    os.makedirs(os.path.join(output, STATS_DIR), exist_ok=True)
    _atomic_write(_stats_path(output, split, shard, num_shards), _json_bytes(stats))
    return stats


def _ratio(n_bytes: int, n_symbols: int) -> float:
    return round(n_bytes / n_symbols, 6) if n_symbols else 0.0


def _made_with(output: str) -> dict[str, Any] | None:
    """``{"proxy_settings", "data"}`` of what ``output`` already holds: its manifest's, else any shard's
    statistics' (an interrupted run), else None."""
    paths = [os.path.join(output, MANIFEST)] + sorted(glob.glob(os.path.join(glob.escape(output), STATS_DIR, "*.json")))
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                made = json.load(f)
        except (OSError, ValueError):
            continue
        if "proxy_settings" in made:
            return {"proxy_settings": made["proxy_settings"], "data": made.get("data")}
    return None


def prepare_output(config, output: str, *, overwrite: bool = False) -> None:
    """Stops (one sentence) when ``output`` holds shards made with other proxy or corpus settings, unless
    ``overwrite``: then that output (shards, their statistics, manifest.json, tokenizer.model and the
    default tokenizer cache ``work/``) is removed first, so no file of the old one (a stale tokenizer) is
    left beside the new manifest. Output made with the same settings is kept: a rerun resumes it."""
    made = _made_with(output)
    now = {"proxy_settings": proxies.proxy_settings(config.proxy), "data": _data_settings(config.data)}
    now = json.loads(json.dumps(now))  # as the files hold it (tuples become lists)
    was = ((made or {}).get("data") or {}).get("path")
    if isinstance(was, str) and was and storage.resolve(was) == now["data"]["path"]:
        made["data"]["path"] = now["data"]["path"]  # recorded relative before paths were made absolute
    if made is None or made == now:
        return
    if not overwrite:
        differ = [f"proxy {made['proxy_settings']} (now {now['proxy_settings']})"] if \
            made["proxy_settings"] != now["proxy_settings"] else []
        differ += [f"data {made['data']} (now {now['data']})"] if made["data"] not in (None, now["data"]) else []
        raise ValueError(f"{output} already holds shards made with other settings: {'; '.join(differ)}; pass "
                         "--overwrite (overwrite=True) to replace them, or choose another --output.")
    for name in (MANIFEST, TOKENIZER):
        if os.path.exists(os.path.join(output, name)):
            os.remove(os.path.join(output, name))
    for path in glob.glob(os.path.join(glob.escape(output), "*.array_record*")):
        os.remove(path)
    shutil.rmtree(os.path.join(output, STATS_DIR), ignore_errors=True)
    shutil.rmtree(os.path.join(output, CACHE_DIR), ignore_errors=True)


def write(config, output: str, proxy: proxies.Proxy, *, num_shards: int = 8, process_index: int = 0,
          process_count: int = 1, splits: Sequence[str] = ("train", "validation"),
          progress_bar: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Writes this process's shards of every split of ``config.data``, compressed by ``proxy`` (made from
    ``config.proxy``); returns the manifest (``complete`` once every shard is done).

    Shard s of N holds documents [s*n/N, (s+1)*n/N) of its split; process i of P writes the shards with
    s % P == i; whoever completes the last shard writes the manifest. Each shard is written under a
    temporary name, renamed when complete, then its statistics are saved under ``shard_stats/``; a rerun
    skips shards whose statistics match, so an interrupted run resumes. An output made with other settings
    is refused unless ``overwrite`` (:func:`prepare_output`).
    """
    from proxy_jax import progress as progress_lib

    if config.data.source == "preprocessed":
        raise ValueError("config.data.source='preprocessed' is already preprocessed; preprocess the original "
                         "corpus source instead.")
    if int(num_shards) < 1:
        raise ValueError(f"--num_shards must be >= 1, got {num_shards}.")
    if not 0 <= int(process_index) < int(process_count):
        raise ValueError(f"--process_index={process_index} must be in [0, --process_count={process_count}).")
    splits = tuple(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ValueError(f"--splits={','.join(splits)!r} must name some of {SPLITS}.")
    num_shards = int(num_shards)
    os.makedirs(output, exist_ok=True)
    prepare_output(config, output, overwrite=overwrite)

    tokenizer = proxy if isinstance(proxy, proxies.TokenizerProxy) else getattr(proxy, "tokenizer", None)
    if isinstance(proxy, (proxies.TokenizerProxy, proxies.TokensAsBytesProxy)):
        _atomic_write(os.path.join(output, TOKENIZER), tokenizer.model_proto)
    settings = proxies.proxy_settings(config.proxy)
    proxy_manifest = proxy.manifest()

    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "proxy_name": proxy.name, "num_symbols": int(proxy.num_symbols),
        "proxy": proxy_manifest, "proxy_settings": settings, "num_shards": num_shards,
        "data": _data_settings(config.data), "splits": {},
    }
    if tokenizer is not None:
        manifest["tokenizer_model"] = TOKENIZER
    written = []
    for split in splits:
        data_config = config.data
        if split != "train":  # evaluation scores whole documents: only training documents are cut
            data_config = ml_collections.ConfigDict(config.data.to_dict())
            data_config.max_doc_bytes = 0
        src = corpus.load_split(data_config, split)
        n = len(src)
        identity = hashlib.sha256(_json_bytes([FORMAT_VERSION, proxy_manifest, settings, src.fingerprint(),
                                               split, num_shards])).hexdigest()
        mine = [s for s in range(num_shards) if s % process_count == process_index]
        todo = [s for s in mine if _shard_done(output, split, s, num_shards, identity,
                                               _shard_range(n, s, num_shards)[1] - _shard_range(n, s, num_shards)[0]) is None]
        total = sum(_shard_range(n, s, num_shards)[1] - _shard_range(n, s, num_shards)[0] for s in todo)
        if int(process_count) > 1:  # processes of one pool share a terminal: plain lines, each its own
            bar = (progress_lib.Lines(total, desc=f"{split} {int(process_index) + 1}/{process_count}", unit="doc",
                                      every_s=15.0) if progress_bar and total else progress_lib.Off())
        else:
            bar = progress_lib.bar(total, desc=split, unit="doc", disable=not progress_bar or not total)
        start, done_bytes = time.perf_counter(), 0

        def progress(docs, size):
            nonlocal done_bytes
            done_bytes += size
            bar.update(docs)
            rate = done_bytes / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(refresh=False, read=f"{rate / 1e6:.2f} MB/s" if rate >= 1e6 else f"{rate / 1e3:.1f} kB/s")

        for s in todo:
            lo, hi = _shard_range(n, s, num_shards)
            write_shard(output, split, s, num_shards, src, lo, hi, proxy, identity, progress,
                        {"proxy_settings": settings, "data": manifest["data"]})
        bar.close()
        written.append((split, src, n, identity))

    # Every split is checked only once this process has written all of its shards: the process that
    # finishes last then sees every other process's shards (checking each split right after writing it
    # could leave each process seeing one split unfinished, and no manifest).
    complete = True
    for split, src, n, identity in written:
        shards = []
        for s in range(num_shards):
            lo, hi = _shard_range(n, s, num_shards)
            shards.append(_shard_done(output, split, s, num_shards, identity, hi - lo))
        if any(st is None for st in shards):
            complete = False
            continue
        n_bytes = sum(st["bytes"] for st in shards)
        n_symbols = sum(st["symbols"] for st in shards)
        manifest["splits"][split] = {
            **{k: v for k, v in src.stats.items() if k not in ("documents", "bytes")},
            "documents": n, "bytes": n_bytes, "symbols": n_symbols, "ratio": _ratio(n_bytes, n_symbols),
            "fingerprint": src.fingerprint(), "source": src.description,
            "shards": [{k: st[k] for k in ("documents", "bytes", "symbols")} for st in shards],
        }
    manifest["complete"] = complete
    if complete:
        total_bytes = sum(v["bytes"] for v in manifest["splits"].values())
        total_symbols = sum(v["symbols"] for v in manifest["splits"].values())
        manifest["ratio"] = _ratio(total_bytes, total_symbols)
        _atomic_write(os.path.join(output, MANIFEST), _json_bytes(manifest))
    return manifest
