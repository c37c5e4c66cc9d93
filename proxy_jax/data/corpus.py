"""Corpus sources: random-access, picklable collections of documents (bytes) for one split.

``load_split(config.data, "train" | "validation")`` indexes the source once (names and sizes, no
contents), holds out whole documents by a hash of their key, drops empty ones (counted in ``stats``),
optionally cuts long documents into pieces, and returns a :class:`DocumentSource`. Reading document
``i`` opens, seeks and reads just that document, so Grain workers can share the source by pickling it.

Sources (``config.data.source``): ``stdlib`` (this Python's own standard library, the default corpus),
``dir``, ``jsonl``, ``arrayrecord``, ``tfds`` and ``preprocessed`` (shards of ``proxy_jax.preprocess``).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import logging
import os
import pathlib
import sysconfig
from typing import Any, Iterator

import numpy as np

from proxy_jax.data import records

SPLITS = ("train", "validation")
_SCAN_BATCH = 1024


def hash_fraction(key: str) -> float:
    """A key's position in [0, 1): the first 32 bits of its SHA-1."""
    return int(hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) / 2**32


def is_held_out(key: str, val_fraction: float) -> bool:
    return hash_fraction(key) < val_fraction


class DocumentSource:
    """Documents of one split. ``locs`` rows are (file, position, size, start, length), see subclasses."""

    def __init__(self, description: str, keys: list[str], locs: np.ndarray, stats: dict[str, int]):
        self.description = description
        self._keys = keys
        self._locs = locs
        self.stats = stats
        self._fingerprint = None

    def __len__(self) -> int:
        return len(self._keys)

    def _index(self, i) -> int:
        i = int(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"document index {i} out of range for a split of {n} documents.")
        return i % n

    def __getitem__(self, i) -> bytes:
        i = self._index(i)
        f, pos, size, start, length = (int(v) for v in self._locs[i])
        doc = self._read(f, pos, size, start, length)
        if len(doc) != length:
            raise ValueError(f"document {self._keys[i]!r} has {len(doc)} bytes, {length} when the corpus was "
                             "indexed; the source changed on disk, reload it.")
        return doc

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self)):
            yield self[i]

    def key(self, i) -> str:
        return self._keys[self._index(i)]

    def size(self, i) -> int:
        """Length in bytes of document ``i`` (known from the index, nothing is read)."""
        return int(self._locs[self._index(i), 4])

    def fingerprint(self) -> str:
        """A stable hash of the split's keys and sizes (identifies the data for caches)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for k, n in zip(self._keys, self._locs[:, 4].tolist()):
                h.update(k.encode("utf-8", "surrogatepass") + b"\0" + str(n).encode() + b"\n")
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in self._unpicklable():
            state[k] = None
        return state

    def _unpicklable(self) -> tuple[str, ...]:
        return ()

    def _read(self, f: int, pos: int, size: int, start: int, length: int) -> bytes:
        raise TypeError(f"{type(self).__name__} does not read documents.")

    def __repr__(self):
        return f"{type(self).__name__}({self.description!r}, documents={len(self)})"


class FileSource(DocumentSource):
    """One document per file (``stdlib``, ``dir``); a piece reads only its own byte range."""

    def __init__(self, files: list[str], **kw):
        super().__init__(**kw)
        self.files = files

    def _read(self, f, pos, size, start, length):
        with open(self.files[f], "rb") as fh:
            fh.seek(start)
            return fh.read(length)


class JsonlSource(DocumentSource):
    """One document per JSON line; ``position``/``size`` locate the line, found by one scan at load."""

    def __init__(self, files: list[str], fields: tuple[str, ...], **kw):
        super().__init__(**kw)
        self.files = files
        self.fields = fields

    def _read(self, f, pos, size, start, length):
        with open(self.files[f], "rb") as fh:
            fh.seek(pos)
            line = fh.read(size)
        doc, _ = _jsonl_document(line, self.fields)
        return doc[start:start + length]


class ArrayRecordSource(DocumentSource):
    """One document per ArrayRecord record; ``position`` is the record's global index."""

    def __init__(self, files: list[str], **kw):
        super().__init__(**kw)
        self.files = files
        self._ds = None

    def _unpicklable(self):
        return ("_ds",)

    def _read(self, f, pos, size, start, length):
        if self._ds is None:
            self._ds = _array_record_source(self.files)
        return self._ds[pos][start:start + length]


class TfdsSource(DocumentSource):
    """Documents of a TFDS dataset prepared in ArrayRecord format, read with ``tfds.data_source``."""

    def __init__(self, name: str, tfds_split: str, data_dir: str, **kw):
        super().__init__(**kw)
        self.name, self.tfds_split, self.data_dir = name, tfds_split, data_dir
        self._ds = None

    def _unpicklable(self):
        return ("_ds",)

    def _read(self, f, pos, size, start, length):
        if self._ds is None:
            self._ds = _tfds_data_source(self.name, self.tfds_split, self.data_dir)
        return _tfds_document(self._ds[pos], self.name, pos)[start:start + length]


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
            self._ds = _array_record_source(self.files)
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


# ---- helpers ------------------------------------------------------------------------------------

def _array_record_source(files: list[str]):
    import grain
    return grain.sources.ArrayRecordDataSource(files)


def _tfds_data_source(name: str, split: str, data_dir: str):
    import tensorflow_datasets as tfds
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None)
    except Exception as e:  # TFDS raises many types for a missing or unprepared dataset
        raise ValueError(f"cannot open TFDS dataset {name!r} split {split!r} (data_dir {data_dir or 'default'}): "
                         f"{e}; prepare it with file_format='array_record' or fix config.data.path.") from e


_TFDS_FIELDS = ("text", "content", "code")


def _tfds_document(example: Any, name: str, i: int) -> bytes:
    if isinstance(example, dict):
        for field in _TFDS_FIELDS:
            if field in example:
                value = example[field]
                if isinstance(value, np.ndarray) and value.shape == ():
                    value = value.item()
                if isinstance(value, str):
                    return value.encode("utf-8", "surrogatepass")
                if isinstance(value, (bytes, bytearray)):
                    return bytes(value)
                raise ValueError(f"TFDS {name} example {i}: field {field!r} is {type(value).__name__}, "
                                 "expected text or bytes.")
        fields = sorted(example)
    else:
        fields = type(example).__name__
    raise ValueError(f"TFDS {name} example {i} has none of the fields {_TFDS_FIELDS} (it has {fields}); "
                     "use a dataset with a text field.")


def _jsonl_document(line: bytes, fields: tuple[str, ...]) -> tuple[bytes, str]:
    """A JSONL line -> (document bytes, '') or (b'', reason it is malformed)."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        return b"", f"bad JSON ({e})"
    if not isinstance(obj, dict):
        return b"", f"expected a JSON object, got {type(obj).__name__}"
    for field in fields:
        if field in obj:
            value = obj[field]
            if not isinstance(value, str):
                return b"", f"field {field!r} is {type(value).__name__}, not a string"
            return value.encode("utf-8", "surrogatepass"), ""
    return b"", f"none of the fields {list(fields)} is present"


def _resolve_files(path: str, suffix: str, what: str) -> tuple[list[str], str]:
    """A file, folder (searched recursively for ``suffix``) or glob -> (sorted files, base for keys)."""
    if not path:
        raise ValueError(f"config.data.path is empty; set it to a {what} file, folder or glob.")
    if os.path.isfile(path):
        return [path], os.path.dirname(path)
    if os.path.isdir(path):
        files = sorted(str(p) for p in pathlib.Path(path).rglob(f"*{suffix}") if p.is_file())
        base = path
    else:
        files = sorted(p for p in globlib.glob(path, recursive=True) if os.path.isfile(p))
        base = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in files]) if files else ""
        files = [os.path.abspath(p) for p in files]
    if not files:
        raise ValueError(f"config.data.path={path!r} matches no {what} file ({suffix}); fix the path.")
    files.sort(key=lambda p: os.path.relpath(p, base))
    return files, base


def _label(path: str, base: str) -> str:
    return pathlib.PurePath(os.path.relpath(path, base)).as_posix()


def stdlib_files() -> tuple[list[str], str]:
    """Every ``*.py`` of this Python's standard library (no site-packages, no __pycache__), sorted."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")]
        files.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
    files.sort(key=lambda p: _label(p, root))
    return files, root


def _dir_files(path: str, pattern: str) -> tuple[list[str], str]:
    if not path or not os.path.isdir(path):
        raise ValueError(f"config.data.path={path!r} is not a folder; the 'dir' source needs one.")
    files = [str(p) for p in pathlib.Path(path).glob(pattern) if p.is_file()]
    if not files:
        raise ValueError(f"no file under {path!r} matches config.data.glob={pattern!r}; fix the glob.")
    files.sort(key=lambda p: _label(p, path))
    return files, path


# Each scanner yields (key, size, file, position, line_size) for every document, in order, and may
# count malformed entries in ``counts``.

def _scan_files(files, base, counts):
    for f, p in enumerate(files):
        size = os.path.getsize(p)
        yield _label(p, base), size, f, 0, size


def _scan_jsonl(files, base, fields, skip_malformed, counts):
    for f, p in enumerate(files):
        if p.endswith(".gz"):
            raise ValueError(f"{p} is gzipped; random access needs plain JSONL: decompress it with gunzip.")
        label = _label(p, base)
        offset = 0
        with open(p, "rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                n = len(line)
                if not line.strip():
                    counts["skipped_blank_lines"] += 1
                    offset += n
                    continue
                doc, reason = _jsonl_document(line, fields)
                if reason:
                    if not skip_malformed:
                        raise ValueError(f"{p}:{lineno}: malformed JSONL line: {reason}; fix it or pass "
                                         "--config.data.skip_malformed=True to skip (and count) such lines.")
                    counts["skipped_malformed"] += 1
                    if counts["skipped_malformed"] == 1:
                        logging.warning("Skipping malformed JSONL line %s:%d (%s); more are only counted.",
                                        p, lineno, reason)
                else:
                    yield f"{label}:{lineno}", len(doc), f, offset, n
                offset += n


def _scan_array_record(files, base, counts):
    from array_record.python import array_record_module
    position = 0
    for f, p in enumerate(files):
        reader = array_record_module.ArrayRecordReader(p)
        try:
            n = reader.num_records()
            label = _label(p, base)
            for lo in range(0, n, _SCAN_BATCH):
                for j, rec in enumerate(reader.read(list(range(lo, min(n, lo + _SCAN_BATCH))))):
                    yield f"{label}:{lo + j}", len(rec), f, position + lo + j, 0
        finally:
            reader.close()
        position += n


def _scan_tfds(ds, name, split, counts):
    for i in range(len(ds)):
        yield f"{name}/{split}/{i}", len(_tfds_document(ds[i], name, i)), 0, i, 0


def _select(scan, split: str, data_config, counts) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """Keeps this split's documents of a scan, drops empty ones, cuts long ones into pieces."""
    val_fraction = float(data_config.val_fraction)
    max_bytes = int(data_config.max_doc_bytes)
    want_val = split == "validation"
    keys, locs = [], []
    stats = dict(documents=0, bytes=0, source_documents=0, cut_documents=0, skipped_empty=0, other_split=0)
    for key, size, f, pos, line_size in scan:
        if size == 0:
            stats["skipped_empty"] += 1
            continue
        if is_held_out(key, val_fraction) != want_val:
            stats["other_split"] += 1
            continue
        stats["source_documents"] += 1
        stats["bytes"] += size
        if max_bytes > 0 and size > max_bytes:
            stats["cut_documents"] += 1
            for k, start in enumerate(range(0, size, max_bytes)):
                keys.append(f"{key}#{k}")
                locs.append((f, pos, line_size, start, min(max_bytes, size - start)))
        else:
            keys.append(key)
            locs.append((f, pos, line_size, 0, size))
    stats["documents"] = len(keys)
    stats.update(counts)
    if stats["skipped_empty"]:
        logging.info("Skipped %d empty documents.", stats["skipped_empty"])
    arr = np.asarray(locs, dtype=np.int64).reshape(-1, 5)
    return keys, arr, stats


def _check_data_config(data_config, split: str):
    from proxy_jax.config import SOURCES
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if data_config.source not in SOURCES:
        raise ValueError(f"config.data.source={data_config.source!r} is not one of {SOURCES}.")
    if not 0.0 <= float(data_config.val_fraction) < 1.0:
        raise ValueError(f"config.data.val_fraction must be in [0, 1), got {data_config.val_fraction}.")
    if int(data_config.max_doc_bytes) < 0:
        raise ValueError(f"config.data.max_doc_bytes must be >= 0 (0 = never cut), got {data_config.max_doc_bytes}.")


def load_split(data_config, split: str, *, proxy_config=None):
    """The documents of ``split`` ("train" or "validation") of the corpus described by ``config.data``.

    For the ``preprocessed`` source, pass ``proxy_config`` (``config.proxy``) to check that the shards
    were made with the same proxy settings.
    """
    _check_data_config(data_config, split)
    source = data_config.source
    counts = {"skipped_malformed": 0, "skipped_blank_lines": 0} if source == "jsonl" else {}
    if source == "preprocessed":
        return load_preprocessed(data_config.path, split, proxy_config=proxy_config)
    if source in ("stdlib", "dir"):
        files, base = stdlib_files() if source == "stdlib" else _dir_files(data_config.path, data_config.glob)
        scan = _scan_files(files, base, counts)
        desc = f"{source}:{base}" + (f":{data_config.glob}" if source == "dir" else "")
        make = lambda **kw: FileSource(files, **kw)  # noqa: E731
    elif source == "jsonl":
        files, base = _resolve_files(data_config.path, ".jsonl", "JSONL")
        fields = tuple(dict.fromkeys((data_config.text_field, "content")))
        scan = _scan_jsonl(files, base, fields, bool(data_config.skip_malformed), counts)
        desc = f"jsonl:{data_config.path}:{'|'.join(fields)}"
        make = lambda **kw: JsonlSource(files, fields, **kw)  # noqa: E731
    elif source == "arrayrecord":
        files, base = _resolve_files(data_config.path, ".array_record", "ArrayRecord")
        scan = _scan_array_record(files, base, counts)
        desc = f"arrayrecord:{data_config.path}"
        make = lambda **kw: ArrayRecordSource(files, **kw)  # noqa: E731
    else:  # tfds
        name, tsplit, data_dir = data_config.path, data_config.tfds_split, data_config.tfds_data_dir
        if not name:
            raise ValueError("config.data.path is empty; for the 'tfds' source set it to the dataset name.")
        ds = _tfds_data_source(name, tsplit, data_dir)
        scan = _scan_tfds(ds, name, tsplit, counts)
        desc = f"tfds:{name}:{tsplit}"
        make = lambda **kw: TfdsSource(name, tsplit, data_dir, **kw)  # noqa: E731
    keys, locs, stats = _select(scan, split, data_config, counts)
    return make(description=f"{desc}:{split}", keys=keys, locs=locs, stats=stats)


# ---- preprocessed shards -----------------------------------------------------------------------

MANIFEST = "manifest.json"


def read_manifest(path: str) -> dict[str, Any]:
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        raise ValueError(f"{path!r} has no {MANIFEST}: point config.data.path at a finished "
                         "`python -m proxy_jax.preprocess --output=...` folder (or finish that run).")
    with open(mpath, encoding="utf-8") as f:
        return json.load(f)


def check_proxy_settings(manifest: dict[str, Any], proxy_config, where: str = "") -> None:
    """Stops unless ``proxy_config`` has the proxy settings the shards were made with."""
    from proxy_jax.proxies import proxy_settings
    made = manifest["proxy_settings"]
    now = proxy_settings(proxy_config)
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
    files = [os.path.join(path, shard_name(split, s, n)) for s in range(n)]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise ValueError(f"{len(missing)} shard(s) of {path!r} are missing, e.g. {missing[0]}; rerun preprocess "
                         "with the same --output to finish them.")
    return PreprocessedSource(path, split, manifest, files)


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.array_record"
