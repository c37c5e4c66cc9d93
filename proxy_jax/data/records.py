"""One preprocessed document as a compact binary record: a fixed header, the key, the raw bytes, the ids.

Layout (little endian)::

    magic "PXR1" | flags u8 | 3 pad bytes | index i64 | key_len u32 | raw_len u64 | comp_len u64
    key (UTF-8) | raw bytes | comp ids (uint16 if flags & 1, else int32)

Ids below 65536 (every proxy except a huge tokenizer) are stored as uint16, halving the shards.
Decoding is a header unpack plus ``np.frombuffer``: no per-token Python.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np

from proxy_jax import vocab

MAGIC = b"PXR1"
_HEADER = struct.Struct("<4sB3xqIQQ")
HEADER_BYTES = _HEADER.size
_FLAG_UINT16 = 1


@dataclasses.dataclass(frozen=True)
class Record:
    """A document of a split: its position ``index`` in the split, its ``key``, raw bytes and comp ids."""

    index: int
    key: str
    raw: bytes
    comp: np.ndarray  # int32 ids of the compressed view, shared vocabulary

    def __eq__(self, other):
        if not isinstance(other, Record):
            return NotImplemented
        return (self.index, self.key, self.raw) == (other.index, other.key, other.raw) and np.array_equal(
            self.comp, other.comp
        )


def encode_record(rec: Record) -> bytes:
    comp = np.asarray(rec.comp)
    if comp.ndim != 1 or comp.dtype.kind not in "iu":
        raise ValueError(f"Record.comp must be a 1-D integer array, got {comp.dtype} with shape {comp.shape}.")
    if comp.size and int(comp.min()) < 0:
        raise ValueError(f"Record.comp holds a negative id {int(comp.min())} (key {rec.key!r}).")
    small = comp.size == 0 or int(comp.max()) < 65536
    payload = comp.astype("<u2" if small else "<i4").tobytes()
    key = rec.key.encode("utf-8")
    header = _HEADER.pack(MAGIC, _FLAG_UINT16 if small else 0, int(rec.index), len(key), len(rec.raw), comp.size)
    return b"".join((header, key, bytes(rec.raw), payload))


def decode_record(b: bytes) -> Record:
    if len(b) < HEADER_BYTES or b[:4] != MAGIC:
        raise ValueError(f"not a proxy_jax record (got {len(b)} bytes starting {bytes(b[:4])!r}); "
                         "regenerate the shards with `python -m proxy_jax.preprocess`.")
    _, flags, index, key_len, raw_len, comp_len = _HEADER.unpack_from(b)
    o = HEADER_BYTES
    key = bytes(b[o:o + key_len]).decode("utf-8")
    o += key_len
    raw = bytes(b[o:o + raw_len])
    o += raw_len
    dtype = np.dtype("<u2" if flags & _FLAG_UINT16 else "<i4")
    end = o + comp_len * dtype.itemsize
    if end != len(b):
        raise ValueError(f"corrupt record {key!r}: {len(b)} bytes, its header says {end}; "
                         "regenerate the shards with `python -m proxy_jax.preprocess`.")
    comp = np.frombuffer(b, dtype=dtype, count=comp_len, offset=o).astype(vocab.ID_DTYPE)
    return Record(index=index, key=key, raw=raw, comp=comp)


def decode_comp_ids(b: bytes) -> np.ndarray:
    """Only the comp ids of an encoded record (skips copying key and raw bytes)."""
    _, flags, _, key_len, raw_len, comp_len = _HEADER.unpack_from(b)
    dtype = "<u2" if flags & _FLAG_UINT16 else "<i4"
    return np.frombuffer(b, dtype=dtype, count=comp_len, offset=HEADER_BYTES + key_len + raw_len).astype(
        vocab.ID_DTYPE)
