"""Columnar sources read with ``pyarrow``: Parquet files (``parquet``) and ``datasets`` folders (``hf_disk``).

One document per row, from the text column (``config.data.text_field``, then ``content``; a string or
binary column). Keys are ``<file>:<row>``, so the held-out split and the shuffled order do not depend
on how a file is cut into row groups.

- ``parquet``: a ``.parquet`` file, a folder (searched recursively) or a glob. Reading document ``i``
  decodes only the text column of the row group holding it; the last ``_CACHED_GROUPS`` decoded are kept
  (per source, shared by Grain's reader threads). A shuffled read decodes about one row group per
  document, so small row groups (1-10 MB, as most writers make them) keep it cheap; for huge row groups,
  convert once with ``proxy_jax.preprocess``. A file in object storage (``gs://``, see ``remote``) is read in
  ranged reads: its footer once per process, then one read per row group decoded.
- ``hf_disk``: a folder written by ``datasets.Dataset.save_to_disk`` (its ``*.arrow`` files are Arrow
  IPC streams). They are memory-mapped: reading a row touches only its bytes (a bucket's are downloaded once).
  A ``DatasetDict`` folder brings its own splits (:func:`hf_disk_files`).

A full index (``data.index``) reads only the text column, and only its offsets and validity (lengths
and nulls are computed by Arrow, not per row in Python); null rows are skipped and counted
(``skipped_null``), like empty documents. A lazy index reads the footers (Parquet) or row counts (Arrow)
only: null and empty rows are then read as empty documents, which the packer skips and counts. A file
that cannot be opened, lacks the column, or holds a column that is not text stops the load with one
sentence naming the file.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from typing import Iterator

import numpy as np

from proxy_jax import storage
from proxy_jax.data import remote, sources

_CACHED_GROUPS = 8
_OPEN_FILES = 16  # per reader thread


def _pa():
    import pyarrow
    return pyarrow


def _reason(e: BaseException) -> str:
    """The first sentence of a library's error, to quote inside ours."""
    return str(e).strip().split(". ")[0].rstrip(".")


def _column_name(schema, fields: tuple[str, ...], path: str) -> str:
    pa = _pa()
    for field in fields:
        if field in schema.names:
            kind = schema.field(field).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
                    or pa.types.is_large_binary(kind)):
                raise ValueError(f"{path}: column {field!r} is {kind}, not text; set --config.data.text_field to "
                                 "a string column.")
            return field
    if len(fields) == 1:  # a column the user named
        raise ValueError(f"{path} has no column {fields[0]!r} (its columns are {schema.names}); set "
                         "--config.data.text_field to its text column.")
    raise ValueError(f"{path} has none of the columns {list(fields)} (it has {schema.names}); set "
                     "--config.data.text_field to its text column.")


def open_parquet(path: str, metadata=None):
    """A ``ParquetFile`` of a local file or of a URL (through ``remote``: exact ranged reads); with ``metadata``
    (a footer read before) the footer is not read again."""
    import pyarrow.parquet as pq
    try:
        if remote.is_remote(path):
            return pq.ParquetFile(remote.open_random(path), metadata=metadata)
        return pq.ParquetFile(path, metadata=metadata)
    except (OSError, _pa().ArrowException) as e:
        if remote.is_remote(path) and not isinstance(e, _pa().ArrowException):
            raise remote.failed(path, e) from e
        raise ValueError(f"{path} is not a readable Parquet file ({_reason(e)}); remove or replace it.") from e


def open_arrow(path: str):
    """An Arrow IPC stream file (``datasets``' format), memory-mapped, as one table."""
    pa = _pa()
    try:  # the table's buffers keep the mapping open
        return pa.ipc.open_stream(pa.memory_map(remote.local_copy(path))).read_all()
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path} is not a readable Arrow stream file ({_reason(e)}); point --config.data.path at a "
                         "folder written by datasets' save_to_disk.") from e


def hf_disk_files(path: str, split: str = "train") -> tuple[list[str], str, bool]:
    """(sorted ``.arrow`` files, base for keys, whether they are ``split``'s own) of a ``save_to_disk`` folder.

    A ``Dataset`` folder is one corpus, split by hash like any other. A ``DatasetDict`` folder (with
    ``dataset_dict.json``) brings its splits: training reads its ``train`` split, the held-out documents are
    its ``validation`` split, else its ``test`` split (a dict with neither splits ``train`` by hash)."""
    if not path or not storage.isdir(path):
        raise ValueError(f"config.data.path={path!r} is not a folder; the 'hf_disk' source needs the folder "
                         "datasets' save_to_disk wrote.")
    dict_file = storage.join(path, "dataset_dict.json")
    if not storage.isfile(dict_file):
        return (*sources.resolve_files(path, ".arrow", "Arrow (datasets save_to_disk)"), False)
    try:
        splits = [str(s) for s in json.loads(storage.read_text(dict_file))["splits"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{dict_file} is not a datasets DatasetDict description ({e}); save the dataset again "
                         "with save_to_disk.") from e
    if "train" not in splits:
        raise ValueError(f"{path} holds a datasets DatasetDict with the splits {splits} and no 'train'; point "
                         f"--config.data.path at one split's folder, such as {storage.join(path, splits[0])}.")
    held_out = next((s for s in ("validation", "test") if s in splits), "")
    folder = storage.join(path, held_out if split == "validation" and held_out else "train")
    files = sources.resolve_files(folder, ".arrow", "Arrow (datasets save_to_disk)")[0]
    key = (path, held_out)
    if key not in _REPORTED:
        _REPORTED.add(key)
        logging.getLogger(__name__).info(
            f"{path} is a datasets DatasetDict: training on its 'train' split, " +
            (f"holding out its {held_out!r} split (config.data.val_fraction is not used)." if held_out else
             "holding out a hash-chosen config.data.val_fraction of it (it has no 'validation' or 'test' split)."))
    return files, path, bool(held_out)


_REPORTED: set = set()


def _lengths(column) -> tuple[np.ndarray, np.ndarray]:
    """Byte lengths and validity of a text column (chunked array), without touching its bytes."""
    import pyarrow.compute as pc
    lengths = pc.binary_length(column).fill_null(0).to_numpy(zero_copy_only=False)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return lengths.astype(np.int64), valid.astype(bool)


def _read_group(pf, g: int, name: str, path: str):
    """The text column of row group ``g``; a damaged group stops with one sentence naming the file.

    A file in object storage is read through a Python file object: then Arrow's own thread pool is not used
    (one column gains nothing from it, and after reads through Python file objects Arrow's pool can hang the
    interpreter's exit)."""
    try:
        return pf.read_row_group(g, columns=[name], use_threads=not remote.is_remote(path)).column(0)
    except (OSError, _pa().ArrowException) as e:
        if remote.is_remote(path) and not isinstance(e, _pa().ArrowException):  # the network, not the file
            raise remote.failed(path, e) from e
        raise ValueError(f"{path}: row group {g} cannot be read ({_reason(e)}); the file is damaged, replace it.") from e


def scan_parquet(files, base, fields, counts) -> Iterator[tuple]:
    """(key, size, file, row in file, row group as the locator) per row; nulls are counted and skipped."""
    for f, p in enumerate(files):
        pf = open_parquet(p)
        name = _column_name(pf.schema_arrow, fields, p)
        label, row = sources.label(p, base), 0
        for g in range(pf.num_row_groups):
            lengths, valid = _lengths(_read_group(pf, g, name, p))
            yield from _rows(label, f, row, g, lengths, valid, counts)
            row += len(lengths)


def scan_parquet_footers(files, base, fields, counts) -> Iterator[tuple]:
    """The lazy index: (key, -1, file, row in file, row group) per row, from the files' footers only (row
    counts per row group, the schema for the column check); null rows are met, skipped and counted when read."""
    for f, p in enumerate(files):
        pf = open_parquet(p)
        _column_name(pf.schema_arrow, fields, p)
        label, row = sources.label(p, base), 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            for j in range(row, row + n):
                yield f"{label}:{j}", -1, f, j, g
            row += n


def scan_arrow_rows(files, base, fields, counts) -> Iterator[tuple]:
    """The lazy index of Arrow stream files: their row counts (the mapped file's text is not touched)."""
    for f, p in enumerate(files):
        table = open_arrow(p)
        _column_name(table.schema, fields, p)
        label = sources.label(p, base)
        for j in range(table.num_rows):
            yield f"{label}:{j}", -1, f, j, 0


def scan_arrow(files, base, fields, counts) -> Iterator[tuple]:
    for f, p in enumerate(files):
        table = open_arrow(p)
        name = _column_name(table.schema, fields, p)
        lengths, valid = _lengths(table.column(name))
        yield from _rows(sources.label(p, base), f, 0, 0, lengths, valid, counts)


def _rows(label, f, row0, group, lengths, valid, counts):
    counts["skipped_null"] += int((~valid).sum())
    for j in np.flatnonzero(valid).tolist():
        yield f"{label}:{row0 + j}", int(lengths[j]), f, row0 + j, group


class ParquetSource(sources.DocumentSource):
    """Rows of Parquet files; ``position`` is the row in its file, the locator its row group."""

    def __init__(self, files: list[str], fields: tuple[str, ...], **kw):
        super().__init__(**kw)
        self.files, self.fields = files, fields
        self._open = None

    def _unpicklable(self):
        return ("_open",)

    def _group(self, f: int, g: int):
        """(first row, text column) of row group ``g`` of file ``f``, decoded once while cached.

        Grain's reader threads share the cache; each opens its own ``ParquetFile``s, because two threads
        reading one ``ParquetFile`` at once corrupt the heap. Decoding runs outside the lock, in parallel."""
        with self._lock:
            if self._open is None:
                self._open = {"groups": collections.OrderedDict(), "thread": threading.local(), "footers": {}}
            groups, footers = self._open["groups"], self._open["footers"]
            if (f, g) in groups:
                groups.move_to_end((f, g))
                return groups[(f, g)]
            mine = self._open["thread"]
        if remote.is_remote(self.files[f]):
            # Opened for this read only, from the footer read once: it costs no request, and no reader
            # holding a Python file object is kept between reads.
            pf = open_parquet(self.files[f], footers.get(f))
            footers[f] = pf.metadata
        else:
            pf = self._local_file(mine, f)
        first = sum(pf.metadata.row_group(i).num_rows for i in range(g))
        name = _column_name(pf.schema_arrow, self.fields, self.files[f])
        got = first, _read_group(pf, g, name, self.files[f])
        with self._lock:
            groups[(f, g)] = got
            if len(groups) > _CACHED_GROUPS:
                groups.popitem(last=False)
        return got

    def _local_file(self, mine, f: int):
        """This thread's open ``ParquetFile`` of local file ``f`` (at most ``_OPEN_FILES`` kept per thread)."""
        if not hasattr(mine, "files"):
            mine.files = collections.OrderedDict()  # this thread's open ParquetFiles, least recent first
        files = mine.files
        pf = files.get(f)
        if pf is None:
            pf = files[f] = open_parquet(self.files[f])
            if len(files) > _OPEN_FILES:  # a shuffled corpus of thousands of files: bounded open handles
                files.popitem(last=False)
        else:
            files.move_to_end(f)
        return pf

    def _read(self, f, pos, group, start, length):
        first, column = self._group(f, group)
        return sources.cut(_as_bytes(column[pos - first]), start, length)


class ArrowSource(sources.DocumentSource):
    """Rows of memory-mapped Arrow stream files (``hf_disk``); ``position`` is the row in its file."""

    def __init__(self, files: list[str], fields: tuple[str, ...], **kw):
        super().__init__(**kw)
        self.files, self.fields = files, fields
        self._columns = None

    def _unpicklable(self):
        return ("_columns",)

    def _read(self, f, pos, locator, start, length):
        with self._lock:  # the map of open files is shared by Grain's reader threads
            if self._columns is None:
                self._columns = {}
            if f not in self._columns:
                table = open_arrow(self.files[f])
                self._columns[f] = table.column(_column_name(table.schema, self.fields, self.files[f]))
        return sources.cut(_as_bytes(self._columns[f][pos]), start, length)


def _as_bytes(scalar) -> bytes:
    """A string or binary scalar's bytes as stored (UTF-8 for strings), never decoded; a null is empty (a
    lazy index holds null rows; readers skip empty documents)."""
    if not scalar.is_valid:
        return b""
    return scalar.as_buffer().to_pybytes()
