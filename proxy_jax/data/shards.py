"""The preprocessed-shard format: ``{split}-NNNNN-of-NNNNN.array_record`` files and ``manifest.json``.

Written by ``proxy_jax.preprocess``; each record holds a document's raw bytes and its compressed view
(``proxy_jax.data.records``). The manifest records the proxy settings the shards were made with, so a
run with other settings is refused instead of silently mixing views.
"""

from __future__ import annotations

import json
import os
from typing import Any

from proxy_jax import proxies, storage
from proxy_jax.data import records, remote
from proxy_jax.data.sources import DocumentSource, array_record_source

# A preprocessed folder carries the tokenizer its shards were made with, under this name.
TOKENIZER = "tokenizer.model"


class PreprocessedSource(DocumentSource):
    """Shards written by ``proxy_jax.preprocess``: raw bytes and the compressed view of each document.

    The split and any cutting of documents were fixed when the shards were written; ``record(i)``
    returns everything stored for document ``i``.
    """

    def __init__(self, path: str, split: str, manifest: dict[str, Any], files: list[str]):
        self.path, self.split, self.manifest, self.files = path, split, manifest, files
        self.description = f"preprocessed:{path}:{split}"
        info = manifest["splits"][split]
        self.stats = {k: int(v) for k, v in info.items() if isinstance(v, int)}
        self._len = int(info["documents"])
        self._ds = None

    def _unpicklable(self):
        return ("_ds",)

    def _source(self):
        if self._ds is None:
            self._ds = array_record_source(self.files)
            if len(self._ds) != self._len:
                raise ValueError(f"{self.path} holds {len(self._ds)} {self.split} records, its manifest says "
                                 f"{self._len}; rerun preprocess into an empty folder.")
        return self._ds

    def __len__(self) -> int:
        return self._len

    def encoded(self, i) -> bytes:
        """The stored bytes of record ``i`` (decode with ``records.decode_record``)."""
        return self._source()[self._index(i)]

    def record(self, i) -> records.Record:
        return records.decode_record(self.encoded(i))

    def __getitem__(self, i) -> bytes:
        return self.record(i).raw

    def key(self, i) -> str:
        return self.record(i).key

    def size(self, i) -> int:
        return len(self[i])

    @property
    def num_symbols(self) -> int:
        return int(self.manifest["num_symbols"])

    def fingerprint(self) -> str:
        return self.manifest["splits"][self.split]["fingerprint"]

    def __repr__(self):
        return f"PreprocessedSource({self.path!r}, {self.split!r}, documents={self._len})"


MANIFEST = "manifest.json"


def read_manifest(path: str) -> dict[str, Any]:
    mpath = storage.join(path, MANIFEST)
    if remote.is_remote(path):
        remote.filesystem(path)  # one sentence when this installation cannot read such URLs
    if not storage.isfile(mpath):
        raise ValueError(f"{path!r} has no {MANIFEST}: point config.data.path at a finished "
                         "`python -m proxy_jax.preprocess --output=...` folder (or finish that run).")
    return json.loads(storage.read_text(mpath))


def tokenizer_file(path: str) -> str:
    """A local path of the tokenizer stored beside the shards of ``path`` (a URL's is downloaded once); shards
    of a proxy without a tokenizer have none, and get the path where it would be."""
    file = storage.join(path, TOKENIZER)
    return remote.local_copy(file) if remote.is_remote(file) and storage.isfile(file) else file


def check_proxy_settings(manifest: dict[str, Any], proxy_config, where: str = "") -> None:
    """Stops unless ``proxy_config`` has the proxy settings the shards were made with."""
    made = manifest["proxy_settings"]
    now = proxies.proxy_settings(proxy_config)
    if made != now:
        raise ValueError(f"preprocessed shards {where or ''} were made with proxy settings {made}, but "
                         f"config.proxy gives {now}; use matching config.proxy values or preprocess again.")


def load_preprocessed(path: str, split: str, *, proxy_config=None) -> PreprocessedSource:
    manifest = read_manifest(path)
    if proxy_config is not None:
        check_proxy_settings(manifest, proxy_config, path)
    if split not in manifest["splits"]:
        raise ValueError(f"{path!r} has no {split!r} split (it has {sorted(manifest['splits'])}); "
                         "preprocess it with --splits=train,validation.")
    n = int(manifest["num_shards"])
    files = [storage.join(path, shard_name(split, s, n)) for s in range(n)]
    if remote.is_remote(path):
        listed = set(remote.resolve_files(path, ".array_record", "ArrayRecord")[0])
        missing = [f for f in files if f not in listed]
    else:
        missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise ValueError(f"{len(missing)} shard(s) of {path!r} are missing, e.g. {missing[0]}; rerun preprocess "
                         "with the same --output to finish them.")
    return PreprocessedSource(path, split, manifest, files)


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.array_record"
