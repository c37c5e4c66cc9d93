"""Document sources: random-access, picklable collections of documents (bytes), and their readers.

A :class:`DocumentSource` holds an index (key and location of every document, no contents); reading
document ``i`` opens, seeks and reads just that document, so Grain workers can share a source by
pickling it. Each ``scan_*`` function walks one kind of input once and yields
``(key, size, file, position, locator)`` per document; ``proxy_jax.data.corpus`` turns a scan into
the documents of one split. A document's *size* is always its length in bytes (``DocumentSource.size``);
its *locator* is what its reader needs beside the position (a JSONL line's length in bytes, a Parquet
row group; unused by the other readers).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import os
import pathlib
import sysconfig
import threading
from typing import Any, Iterator

import numpy as np

from proxy_jax.data import remote
from proxy_jax.data.fields import DEFAULT_TEXT_FIELDS, check_named_field, jsonl_document, text_fields  # noqa: F401

_SCAN_BATCH = 1024


class DocumentSource:
    """Documents of one split. ``locs`` rows are (file, position, locator, start, length): the reader's own
    ``locator`` (see the module docstring and subclasses) and the piece ``[start, start + length)``."""

    def __init__(self, description: str, keys: list[str], locs: np.ndarray, stats: dict[str, int],
                 files_signature: list[tuple[str, int]] | None = None):
        self.description = description
        self._keys = keys
        self._locs = locs
        self.stats = stats
        # A lazy index (sizes -1) identifies its data by its files' names and sizes as well.
        self._files_signature = files_signature
        self._fingerprint = None
        # Grain reads a source from several threads at once; readers that keep state (open files, a cache)
        # take this lock around it.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def _index(self, i) -> int:
        i = int(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"document index {i} out of range for a split of {n} documents.")
        return i % n

    @property
    def lazy(self) -> bool:
        """Whether the index was read from metadata only: sizes are unknown and documents may be empty."""
        return getattr(self, "_files_signature", None) is not None

    def __getitem__(self, i) -> bytes:
        i = self._index(i)
        f, pos, locator, start, length = (int(v) for v in self._locs[i])
        try:
            doc = self._read(f, pos, locator, start, length)
        except _Malformed as e:
            raise ValueError(f"{self.description}: document {self._keys[i]!r} is malformed: {e}; fix it, or resume "
                             "with --config.data.skip_malformed=True to skip (and count) such lines.") from None
        if length >= 0 and len(doc) != length:
            raise ValueError(f"document {self._keys[i]!r} has {len(doc)} bytes, {length} when the corpus was "
                             "indexed; the source changed on disk, reload it.")
        return doc

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self)):
            yield self[i]

    def key(self, i) -> str:
        return self._keys[self._index(i)]

    def size(self, i) -> int:
        """Length in bytes of document ``i`` (known from the index, nothing is read; -1 for a lazy index)."""
        return int(self._locs[self._index(i), 4])

    def fingerprint(self) -> str:
        """A stable hash of the split's keys and sizes (identifies the data for caches)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for k, n in zip(self._keys, self._locs[:, 4].tolist()):
                h.update(k.encode("utf-8", "surrogatepass") + b"\0" + str(n).encode() + b"\n")
            for name, n in self._files_signature or ():
                h.update(b"file\0" + name.encode("utf-8", "surrogatepass") + b"\0" + str(n).encode() + b"\n")
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in (*self._unpicklable(), "_lock"):
            state[k] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _unpicklable(self) -> tuple[str, ...]:
        return ()

    def _read(self, f: int, pos: int, locator: int, start: int, length: int) -> bytes:
        raise TypeError(f"{type(self).__name__} does not read documents.")

    def __repr__(self):
        return f"{type(self).__name__}({self.description!r}, documents={len(self)})"


class _Malformed(ValueError):
    """A document found malformed when read (a lazily indexed JSONL line)."""


def cut(doc: bytes, start: int, length: int) -> bytes:
    """The piece ``[start, start + length)`` of ``doc``; ``length`` -1 (a lazy index) is the whole document."""
    return doc if length < 0 else doc[start:start + length]


class FileSource(DocumentSource):
    """One document per file (``stdlib``, ``dir``); a piece reads only its own byte range."""

    def __init__(self, files: list[str], **kw):
        super().__init__(**kw)
        self.files = files

    def _read(self, f, pos, locator, start, length):
        with open(self.files[f], "rb") as fh:
            fh.seek(start)
            return fh.read(length)


class JsonlSource(DocumentSource):
    """One document per JSON line; ``position`` and the locator (the line's length in bytes) locate the line,
    found by one scan at load."""

    def __init__(self, files: list[str], fields: tuple[str, ...], skip_malformed: bool = False, **kw):
        super().__init__(**kw)
        self.files = files
        self.fields = fields
        self.skip_malformed = skip_malformed

    def _read(self, f, pos, line_bytes, start, length):
        path = self.files[f]
        if remote.is_remote(path):
            line = remote.read_range(path, pos, line_bytes)
        else:
            with open(path, "rb") as fh:
                fh.seek(pos)
                line = fh.read(line_bytes)
        doc, reason = jsonl_document(line, self.fields)
        if reason and self.lazy:  # a full index only holds lines that parsed
            if not line.strip() or self.skip_malformed:
                return b""  # skipped like an empty document, and counted where it is met
            raise _Malformed(reason)
        return cut(doc, start, length)


class ArrayRecordSource(DocumentSource):
    """One document per ArrayRecord record; ``position`` is the record's global index."""

    def __init__(self, files: list[str], **kw):
        super().__init__(**kw)
        self.files = files
        self._ds = None

    def _unpicklable(self):
        return ("_ds",)

    def _read(self, f, pos, locator, start, length):
        with self._lock:
            if self._ds is None:
                self._ds = array_record_source(self.files)
        return cut(self._ds[pos], start, length)


class TfdsSource(DocumentSource):
    """Documents of a TFDS dataset prepared in ArrayRecord format, read with ``tfds.data_source``."""

    def __init__(self, name: str, tfds_split: str, data_dir: str, **kw):
        super().__init__(**kw)
        self.name, self.tfds_split, self.data_dir = name, tfds_split, data_dir
        self._ds = None

    def _unpicklable(self):
        return ("_ds",)

    def _read(self, f, pos, locator, start, length):
        with self._lock:
            if self._ds is None:
                self._ds = tfds_data_source(self.name, self.tfds_split, self.data_dir)
        return cut(_tfds_document(self._ds[pos], self.name, pos), start, length)


def array_record_source(files: list[str]):
    """Grain's reader of ArrayRecord files (a URL's shards are read from their local copies, see ``remote``)."""
    import grain
    return grain.sources.ArrayRecordDataSource([remote.local_copy(p) for p in files])


def tfds_data_source(name: str, split: str, data_dir: str):
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


def resolve_files(path: str, suffix: str, what: str) -> tuple[list[str], str]:
    """A file, folder (searched recursively for ``suffix``) or glob -> (sorted files, base for keys); a URL's
    objects are listed through fsspec (``remote``)."""
    if not path:
        raise ValueError(f"config.data.path is empty; set it to a {what} file, folder or glob.")
    if remote.is_remote(path):
        return remote.resolve_files(path, suffix, what)
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


def label(path: str, base: str) -> str:
    """``path`` relative to ``base``, with forward slashes (a document key's file part)."""
    prefix = base.rstrip(os.sep) + os.sep if base else ""
    if prefix and path.startswith(prefix) and ".." not in path and os.sep + "." not in path:
        rel = path[len(prefix):]  # the common case (files listed under base), without relpath's normalising
        return rel if os.sep == "/" else rel.replace(os.sep, "/")
    return pathlib.PurePath(os.path.relpath(path, base)).as_posix()


def stdlib_files() -> tuple[list[str], str]:
    """Every ``*.py`` of this Python's standard library (no site-packages, no __pycache__), sorted."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")]
        files.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
    files.sort(key=lambda p: label(p, root))
    return files, root


def dir_files(path: str, pattern: str) -> tuple[list[str], str]:
    if not path or not os.path.isdir(path):
        raise ValueError(f"config.data.path={path!r} is not a folder; the 'dir' source needs one.")
    files = [str(p) for p in pathlib.Path(path).glob(pattern) if p.is_file()]
    if not files:
        raise ValueError(f"no file under {path!r} matches config.data.glob={pattern!r}; fix the glob.")
    files.sort(key=lambda p: label(p, path))
    return files, path


def getsize(path: str) -> int:
    """Bytes in a file or object (a listed object's size is known without a request)."""
    return remote.getsize(path) if remote.is_remote(path) else os.path.getsize(path)


def _open_scan(path: str):
    """A file to read from start to end: a local file with a 1 MiB buffer, or an object in large reads."""
    return remote.open_sequential(path) if remote.is_remote(path) else open(path, "rb", buffering=1 << 20)


# Each scanner yields (key, size, file, position, locator) for every document, in order (size: the
# document's length in bytes, -1 when not known; locator: see the module docstring), and may count
# malformed entries in ``counts``.

def scan_files(files, base, counts):
    for f, p in enumerate(files):
        size = os.path.getsize(p)
        yield label(p, base), size, f, 0, size


def scan_jsonl(files, base, fields, skip_malformed, counts):
    for f, p in enumerate(files):
        if p.endswith(".gz"):
            raise ValueError(f"{p} is gzipped; random access needs plain JSONL: decompress it with gunzip.")
        name = label(p, base)
        offset, first = 0, True
        with _open_scan(p) as fh:
            for lineno, line in enumerate(fh, start=1):
                n = len(line)
                if not line.strip():
                    counts["skipped_blank_lines"] += 1
                    offset += n
                    continue
                if first:
                    check_named_field(p, lineno, line, fields)
                    first = False
                doc, reason = jsonl_document(line, fields)
                if reason:
                    if not skip_malformed:
                        raise ValueError(f"{p}:{lineno}: malformed JSONL line: {reason}; fix it or pass "
                                         "--config.data.skip_malformed=True to skip (and count) such lines.")
                    counts["skipped_malformed"] += 1
                    counts.setdefault("first_malformed", f"{p}:{lineno}: {reason}")  # for the load's report
                else:
                    yield f"{name}:{lineno}", len(doc), f, offset, n
                offset += n


def scan_jsonl_lines(files, base, counts, fields=DEFAULT_TEXT_FIELDS):
    """The lazy JSONL index: each line's offset and length, nothing parsed (but a file's first line, for a field
    the user named). Blank lines are skipped and counted here; any other line is a document of unknown size,
    and one that does not parse is met when read."""
    for f, p in enumerate(files):
        if p.endswith(".gz"):
            raise ValueError(f"{p} is gzipped; random access needs plain JSONL: decompress it with gunzip.")
        name = label(p, base)
        offset, first = 0, True
        with _open_scan(p) as fh:
            for lineno, line in enumerate(fh, start=1):
                n = len(line)
                if n <= 2 and not line.strip():
                    counts["skipped_blank_lines"] += 1
                else:
                    if first:
                        check_named_field(p, lineno, line, fields)
                        first = False
                    yield f"{name}:{lineno}", -1, f, offset, n
                offset += n


def scan_array_record(files, base, counts, lazy: bool = False):
    """Every record (its size read) or, ``lazy``, the record counts of the files' footers only."""
    from array_record.python import array_record_module
    position = 0
    for f, p in enumerate(files):
        # Riegeli reports a file that is not ArrayRecord lazily (as 0 records, then an error on close).
        reader = array_record_module.ArrayRecordReader(remote.local_copy(p))
        try:
            n = reader.num_records()
            name = label(p, base)
            if lazy:
                for j in range(n):
                    yield f"{name}:{j}", -1, f, position + j, 0
            else:
                for lo in range(0, n, _SCAN_BATCH):
                    for j, rec in enumerate(reader.read(list(range(lo, min(n, lo + _SCAN_BATCH))))):
                        yield f"{name}:{lo + j}", len(rec), f, position + lo + j, 0
            reader.close()
        except RuntimeError as e:
            raise ValueError(f"{p} is not an ArrayRecord file; point --config.data.path at .array_record files "
                             "(JSONL goes with --config.data.source=jsonl, Parquet with parquet).") from e
        position += n


def scan_tfds(ds, name, split, counts):
    for i in range(len(ds)):
        yield f"{name}/{split}/{i}", len(_tfds_document(ds[i], name, i)), 0, i, 0
