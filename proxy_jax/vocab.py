"""The shared vocabulary: one embedding table for specials, raw bytes and compressed symbols.

| ids       | meaning                                                     |
|-----------|-------------------------------------------------------------|
| 0         | pad                                                         |
| 1, 2      | BOS, EOS (EOS is the only document boundary)                |
| 12, 13    | ``<raw>``, ``</raw>``                                       |
| 14, 15    | ``<comp>``, ``</comp>``                                     |
| 3..11, 16..63 | reserved                                                |
| 64..319   | raw byte b is id ``b + 64``                                 |
| 320..     | compressed symbol s is id ``s + 320``                       |

The embedding is padded up to a multiple of 128; padded rows are never targets.
"""

from __future__ import annotations

import numpy as np

PAD = 0
BOS = 1
EOS = 2
RAW_OPEN = 12
RAW_CLOSE = 13
COMP_OPEN = 14
COMP_CLOSE = 15

NUM_SPECIALS = 64
BYTE_OFFSET = 64
NUM_BYTES = 256
COMP_OFFSET = BYTE_OFFSET + NUM_BYTES  # 320
RAW_VOCAB_SIZE = COMP_OFFSET  # a model that only ever sees bytes and specials
PAD_MULTIPLE = 128

SPECIAL_NAMES = {
    PAD: "<pad>",
    BOS: "<bos>",
    EOS: "<eos>",
    RAW_OPEN: "<raw>",
    RAW_CLOSE: "</raw>",
    COMP_OPEN: "<comp>",
    COMP_CLOSE: "</comp>",
}

# Token ids are stored as int32 everywhere (host and device).
ID_DTYPE = np.int32


def vocab_size(num_comp_symbols: int) -> int:
    """Logical vocabulary size: specials + 256 bytes + the proxy's symbols."""
    if num_comp_symbols < 0:
        raise ValueError(f"num_comp_symbols must be >= 0, got {num_comp_symbols}.")
    return COMP_OFFSET + num_comp_symbols


def padded_vocab_size(num_comp_symbols: int, multiple: int = PAD_MULTIPLE) -> int:
    """Embedding rows: ``vocab_size`` rounded up to ``multiple`` (extra rows are never targets)."""
    size = vocab_size(num_comp_symbols)
    return -(-size // multiple) * multiple


def encode_raw(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """UTF-8 (or any) bytes -> raw ids 64..319, int32."""
    arr = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_raw expects bytes or a uint8 array, got dtype {arr.dtype}.")
    return arr.astype(ID_DTYPE) + BYTE_OFFSET


def decode_raw(ids, *, strict: bool = True) -> bytes:
    """Raw ids -> bytes. With ``strict=False`` every id outside 64..319 is dropped."""
    ids = np.asarray(ids)
    is_byte = (ids >= BYTE_OFFSET) & (ids < COMP_OFFSET)
    if strict and not bool(np.all(is_byte)):
        bad = ids[~is_byte][:5].tolist()
        raise ValueError(f"decode_raw got non-byte ids {bad}; pass strict=False to drop them.")
    return (ids[is_byte] - BYTE_OFFSET).astype(np.uint8).tobytes()


def encode_comp(symbols) -> np.ndarray:
    """Compressed symbols 0..n-1 -> ids ``s + 320``, int32."""
    return np.asarray(symbols, dtype=np.int64).astype(ID_DTYPE) + COMP_OFFSET


def decode_comp(ids) -> np.ndarray:
    """Ids of a compressed view -> symbols (ids below 320 are not compressed symbols)."""
    ids = np.asarray(ids)
    if ids.size and int(ids.min()) < COMP_OFFSET:
        raise ValueError(f"decode_comp got id {int(ids.min())} < {COMP_OFFSET}: not a compressed symbol.")
    return (ids - COMP_OFFSET).astype(np.int64)


def is_raw_byte(ids):
    """Mask of ids that are raw bytes (works on numpy and jax arrays)."""
    return (ids >= BYTE_OFFSET) & (ids < COMP_OFFSET)


def is_comp(ids):
    """Mask of ids that are compressed symbols."""
    return ids >= COMP_OFFSET


def describe(ids) -> str:
    """Human-readable rendering of an id sequence, for debugging and docs."""
    out = []
    for i in np.asarray(ids).tolist():
        if i in SPECIAL_NAMES:
            out.append(SPECIAL_NAMES[i])
        elif i < NUM_SPECIALS:
            out.append(f"<special{i}>")
        elif i < COMP_OFFSET:
            out.append(repr(bytes([i - BYTE_OFFSET]))[2:-1])
        else:
            out.append(f"[{i - COMP_OFFSET}]")
    return "".join(out)
