"""The reference's on-disk neural view: JSONL field ``m1_ac_ow16``.

The field is base64 of a little-endian 9-bit packing of values 0..511: value ``i`` occupies bits
``9i .. 9i+8`` of the stream, least significant bit first, and stream bit ``k`` is bit ``k % 8`` of byte
``k // 8`` (the last byte is zero-padded). Values 0..255 are raw passthrough bytes, 256..511 are
compressed bytes (+256). Each run of compressed bytes is read big-endian in pairs, one 16-bit window
symbol per pair. In our vocabulary: passthrough byte ``b`` is id ``64 + b``, symbol ``s`` is id ``320 + s``.

A run of odd length cannot be split into symbols. The reference drops its trailing byte without a
word; here ``odd="error"`` (the default) stops with the file and line, and ``odd="drop"`` drops the
byte and counts it in :class:`ReadStats` so the loss is visible.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Iterator

import numpy as np

from proxy_jax import vocab

FIELD = "m1_ac_ow16"


def pack9(values) -> bytes:
    """Values 0..511 -> little-endian 9-bit packed bytes."""
    values = np.asarray(values, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > 511):
        raise ValueError(f"9-bit packing needs values in 0..511, got {int(values.min())}..{int(values.max())}.")
    bits = ((values[:, None] >> np.arange(9)) & 1).astype(np.uint8).reshape(-1)
    bits = np.concatenate([bits, np.zeros(-len(bits) % 8, np.uint8)])
    return np.packbits(bits, bitorder="little").tobytes()


def unpack9(data: bytes) -> np.ndarray:
    """Inverse of :func:`pack9` (the padding is always shorter than one value)."""
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    n = len(bits) // 9
    return (bits[: 9 * n].reshape(n, 9).astype(np.int64) << np.arange(9)).sum(axis=1)


def values_to_ids(values, *, odd: str = "error", where: str = "input") -> tuple[np.ndarray, int]:
    """9-bit values -> our ids; returns ``(ids, dropped_bytes)``.

    ``odd`` says what to do with the trailing byte of an odd-length compressed run: "error" raises a
    ``ValueError`` naming ``where``; "drop" drops it and counts it.
    """
    if odd not in ("error", "drop"):
        raise ValueError(f"odd={odd!r} is unknown; use 'error' or 'drop'.")
    values = np.asarray(values, dtype=np.int64).tolist()
    ids: list[int] = []
    dropped = 0
    i = 0
    while i < len(values):
        if values[i] < 256:
            ids.append(vocab.BYTE_OFFSET + values[i])
            i += 1
            continue
        j = i
        while j < len(values) and values[j] >= 256:
            j += 1
        run = values[i:j]
        if len(run) % 2:
            if odd == "error":
                raise ValueError(
                    f"{where}: a compressed run of {len(run)} bytes (odd) at value {i} cannot form 16-bit symbols; "
                    "fix the data or read with odd='drop' to drop and count the trailing byte."
                )
            dropped += 1
        for k in range(0, len(run) - 1, 2):
            ids.append(vocab.COMP_OFFSET + ((run[k] - 256) << 8 | (run[k + 1] - 256)))
        i = j
    return np.asarray(ids, dtype=vocab.ID_DTYPE), dropped


def ids_to_values(ids) -> np.ndarray:
    """Our ids (bytes 64..319, 16-bit symbols 320..65855) -> 9-bit values."""
    out: list[int] = []
    for t in np.asarray(ids, dtype=np.int64).tolist():
        if vocab.BYTE_OFFSET <= t < vocab.COMP_OFFSET:
            out.append(t - vocab.BYTE_OFFSET)
        elif vocab.COMP_OFFSET <= t < vocab.COMP_OFFSET + (1 << 16):
            s = t - vocab.COMP_OFFSET
            out.extend((256 + (s >> 8), 256 + (s & 0xFF)))
        else:
            raise ValueError(f"Id {t} is neither a raw byte nor a 16-bit symbol; only those can be written as {FIELD}.")
    return np.asarray(out, dtype=np.int64)


def encode_field(ids) -> str:
    """Ids -> the base64 string stored in ``m1_ac_ow16``."""
    return base64.b64encode(pack9(ids_to_values(ids))).decode("ascii")


def decode_field(text: str, *, odd: str = "error", where: str = "input") -> tuple[np.ndarray, int]:
    """The base64 string of ``m1_ac_ow16`` -> ``(ids, dropped_bytes)``."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as e:
        raise ValueError(f"{where}: field {FIELD} is not valid base64 ({e}).") from None
    return values_to_ids(unpack9(raw), odd=odd, where=where)


@dataclasses.dataclass
class ReadStats:
    documents: int = 0
    dropped_odd_bytes: int = 0  # trailing bytes of odd compressed runs (odd="drop")
    documents_with_dropped: int = 0


def read_jsonl(path: str, *, field: str = FIELD, odd: str = "error", stats: ReadStats | None = None) -> Iterator[np.ndarray]:
    """Yield the ids of every line's ``field``; errors name the file and line."""
    stats = stats if stats is not None else ReadStats()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg}).") from None
            if field not in record:
                raise ValueError(f"{where}: field {field!r} is missing; pass field= the name your files use.")
            ids, dropped = decode_field(record[field], odd=odd, where=where)
            stats.documents += 1
            stats.dropped_odd_bytes += dropped
            stats.documents_with_dropped += bool(dropped)
            yield ids


def write_jsonl(path: str, id_lists, *, field: str = FIELD, extra: list[dict] | None = None) -> None:
    """Write one JSON object per document with ``field`` (plus the keys of ``extra[i]``)."""
    with open(path, "w", encoding="utf-8") as fh:
        for i, ids in enumerate(id_lists):
            record = dict(extra[i]) if extra else {}
            record[field] = encode_field(ids)
            fh.write(json.dumps(record) + "\n")
