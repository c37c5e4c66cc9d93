"""The split of a corpus: which documents are training and which are held out, and their pieces.

``load_split(config.data, "train" | "validation")`` indexes the source once (names and sizes, no
contents, through the readers of ``proxy_jax.data.sources``), holds out whole documents by a hash of
their key, drops empty ones (counted in ``stats``), optionally cuts long documents into pieces, and
returns a ``sources.DocumentSource``. A lazy index (``data.index``, :func:`resolve_index`) reads metadata
only: it holds no sizes and keeps empty documents, which readers skip where they meet them. Preprocessed
shards (``proxy_jax.data.shards``) carry their split.
Whatever a load skips (empty documents, malformed or blank JSONL lines) is reported in one warning line
with its counts, once per source and process (the train and validation loads of a run skip the same).

Sources (``config.data.source``): ``stdlib`` (this Python's own standard library, the default corpus),
``dir``, ``jsonl``, ``parquet`` and ``hf_disk`` (``proxy_jax.data.parquet``), ``arrayrecord``, ``tfds`` and
``preprocessed`` (shards of ``proxy_jax.preprocess``).
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from proxy_jax.data import shards, sources

SPLITS = ("train", "validation")
SOURCES = ("stdlib", "dir", "jsonl", "parquet", "hf_disk", "arrayrecord", "tfds", "preprocessed")


def hash_fraction(key: str) -> float:
    """A key's position in [0, 1): the first 32 bits of its SHA-1."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogatepass")).digest()[:4], "big") / 2**32


def is_held_out(key: str, val_fraction: float) -> bool:
    return hash_fraction(key) < val_fraction


def _select(scan, split: str, data_config, counts, own: bool = False) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """Keeps this split's documents of a scan (all of them when the files are the split's ``own``), drops
    empty ones, cuts long ones into pieces."""
    val_fraction = 0.0 if own else float(data_config.val_fraction)
    max_bytes = int(data_config.max_doc_bytes)
    want_val = split == "validation" and not own
    keys, locs = [], []
    stats = dict(documents=0, bytes=0, source_documents=0, cut_documents=0, skipped_empty=0, other_split=0)
    for key, size, f, pos, locator in scan:  # size -1: not known (a lazy index)
        if size == 0:
            stats["skipped_empty"] += 1
            continue
        if is_held_out(key, val_fraction) != want_val:
            stats["other_split"] += 1
            continue
        stats["source_documents"] += 1
        if size < 0:
            stats["unsized"] = stats.get("unsized", 0) + 1
        else:
            stats["bytes"] += size
        if max_bytes > 0 and size > max_bytes:
            stats["cut_documents"] += 1
            for k, start in enumerate(range(0, size, max_bytes)):
                keys.append(f"{key}#{k}")
                locs.append((f, pos, locator, start, min(max_bytes, size - start)))
        else:
            keys.append(key)
            locs.append((f, pos, locator, 0, size))
    stats["documents"] = len(keys)
    stats.update({k: v for k, v in counts.items() if isinstance(v, int)})
    arr = np.asarray(locs, dtype=np.int64).reshape(-1, 5)
    return keys, arr, stats


_REPORTED: set = set()  # (source description, counts) already reported by this process


def skip_report(description: str, stats: dict[str, int], first_malformed: str = "") -> str:
    """One line naming every count of skipped input, or '' when nothing was skipped."""
    parts = []
    for key, what in (("skipped_empty", "empty documents"), ("skipped_malformed", "malformed lines"),
                      ("skipped_blank_lines", "blank lines"), ("skipped_null", "null rows")):
        if stats.get(key):
            parts.append(f"{stats[key]} {what}")
    if not parts:
        return ""
    first = f" (first malformed: {first_malformed})" if first_malformed else ""
    return f"Skipped {', '.join(parts)} in {description}{first}."


def _report_skips(description: str, stats: dict[str, int], first_malformed: str) -> None:
    line = skip_report(description, stats, first_malformed)
    key = (description, line)
    if line and key not in _REPORTED:
        _REPORTED.add(key)
        logging.getLogger(__name__).warning(line)


def check_source(data_config, split: str = "train") -> None:
    """Raises one sentence for an unknown source or split (the ranges of the other values are config.validate's)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if data_config.source not in SOURCES:
        raise ValueError(f"--config.data.source={data_config.source!r} is not one of {', '.join(SOURCES)}.")


LAZY_SOURCES = ("jsonl", "parquet", "hf_disk", "arrayrecord")
# data.index="auto" reads metadata only from this size of corpus on (a full read would delay the first batch).
LAZY_FROM_FILES = 1000
LAZY_FROM_BYTES = 2**30


def _files(data_config, split: str = "train") -> tuple[list[str], str, bool]:
    """(sorted files, base for keys, whether they are ``split``'s own) of a file-based source."""
    source = data_config.source
    if source == "jsonl":
        return (*sources.resolve_files(data_config.path, ".jsonl", "JSONL"), False)
    if source == "parquet":
        return (*sources.resolve_files(data_config.path, ".parquet", "Parquet"), False)
    if source == "hf_disk":
        from proxy_jax.data import parquet
        return parquet.hf_disk_files(data_config.path, split)
    if source == "arrayrecord":
        return (*sources.resolve_files(data_config.path, ".array_record", "ArrayRecord"), False)
    raise ValueError(f"source {source!r} has no files of its own.")


def resolve_index(data_config, files: list[str] | None = None) -> str:
    """"full" or "lazy": what ``config.data.index`` (see its comment in ``proxy_jax.config``) means for this
    corpus. Sources outside ``LAZY_SOURCES`` never read documents to index them, and count as "full"."""
    index = str(data_config.get("index", "full"))
    if data_config.source not in LAZY_SOURCES:
        return "full"
    if index != "auto":
        return index
    if int(data_config.max_doc_bytes) > 0:
        return "full"
    files = _files(data_config)[0] if files is None else files
    large = len(files) >= LAZY_FROM_FILES or sum(sources.getsize(p) for p in files) >= LAZY_FROM_BYTES
    return "lazy" if large else "full"


def load_split(data_config, split: str, *, proxy_config=None):
    """The documents of ``split`` ("train" or "validation") of the corpus described by ``config.data``.

    For the ``preprocessed`` source, pass ``proxy_config`` (``config.proxy``) to check that the shards
    were made with the same proxy settings. With ``data.index`` resolving to "lazy" the index holds no
    sizes (``size(i)`` is -1) and may hold empty documents: readers skip them (the packer, ``heldout``).
    """
    if data_config.get("mixture"):  # several sources: proxy_jax.data.mixture_stream.load_split reads them
        raise ValueError("This reads one source, but --config.data.mixture is set; run it on each component's own "
                         "source (--config.data.source, --config.data.path) and mix the results as components.")
    check_source(data_config, split)
    source = data_config.source
    counts = {"skipped_malformed": 0, "skipped_blank_lines": 0} if source == "jsonl" else {"skipped_null": 0}
    if source == "preprocessed":
        return shards.load_preprocessed(data_config.path, split, proxy_config=proxy_config)
    lazy = own = False
    if source in LAZY_SOURCES:
        files, base, own = _files(data_config, split)
        lazy = resolve_index(data_config, files) == "lazy"
    if source in ("stdlib", "dir"):
        files, base = sources.stdlib_files() if source == "stdlib" else sources.dir_files(data_config.path, data_config.glob)
        scan = sources.scan_files(files, base, counts)
        desc = f"{source}:{base}" + (f":{data_config.glob}" if source == "dir" else "")
        make = lambda **kw: sources.FileSource(files, **kw)  # noqa: E731
    elif source == "jsonl":
        fields = sources.text_fields(data_config)
        skip = bool(data_config.skip_malformed)
        scan = (sources.scan_jsonl_lines(files, base, counts, fields) if lazy
                else sources.scan_jsonl(files, base, fields, skip, counts))
        desc = f"jsonl:{data_config.path}:{'|'.join(fields)}"
        make = lambda **kw: sources.JsonlSource(files, fields, skip_malformed=skip, **kw)  # noqa: E731
    elif source in ("parquet", "hf_disk"):
        from proxy_jax.data import parquet

        fields = sources.text_fields(data_config)
        if source == "parquet":
            scan = (parquet.scan_parquet_footers if lazy else parquet.scan_parquet)(files, base, fields, counts)
            make_source = parquet.ParquetSource
        else:
            scan = (parquet.scan_arrow_rows if lazy else parquet.scan_arrow)(files, base, fields, counts)
            make_source = parquet.ArrowSource
        desc = f"{source}:{data_config.path}:{'|'.join(fields)}"
        make = lambda **kw: make_source(files, fields, **kw)  # noqa: E731
    elif source == "arrayrecord":
        scan = sources.scan_array_record(files, base, counts, lazy=lazy)
        desc = f"arrayrecord:{data_config.path}"
        make = lambda **kw: sources.ArrayRecordSource(files, **kw)  # noqa: E731
    else:  # tfds
        name, tsplit, data_dir = data_config.path, data_config.tfds_split, data_config.tfds_data_dir
        if not name:
            raise ValueError("config.data.path is empty; for the 'tfds' source set it to the dataset name.")
        ds = sources.tfds_data_source(name, tsplit, data_dir)
        scan = sources.scan_tfds(ds, name, tsplit, counts)
        desc = f"tfds:{name}:{tsplit}"
        make = lambda **kw: sources.TfdsSource(name, tsplit, data_dir, **kw)  # noqa: E731
    keys, locs, stats = _select(scan, split, data_config, counts, own)
    _report_skips(desc, stats, str(counts.get("first_malformed", "")))
    files_signature = [(sources.label(p, base), sources.getsize(p)) for p in files] if lazy else None
    return make(description=f"{desc}:{split}", keys=keys, locs=locs, stats=stats, files_signature=files_signature)
