"""The equal-information-window coder in plain Python integers: the slow twin of :mod:`coder`.

It states the rule of :mod:`coder` directly (exact big-integer products, no bit tricks) and holds the
decoder. Tests check that the JAX encoder and this one agree bit for bit, and that this decoder inverts
both. ``decode_lane`` asks a callback for each position's frequency table given the bytes decoded so
far, so it works for fixed tables and for M1 (which must then see only the decoded prefix).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from proxy_jax import vocab

STATE_BITS = 31


def _fits(s_lo: int, s_hi: int, shift: int) -> bool:
    first = -(-s_lo >> shift) << shift  # smallest code point >= s_lo
    return s_hi > s_lo and first < s_hi


def encode_lane(
    data: Sequence[int], cums: Sequence[int], freqs: Sequence[int], *, window_bits: int = 16, precision: int = 16
) -> tuple[list[int], list[int]]:
    """One lane: bytes and their ``(cum_start, freq)`` -> ``(ids, nbytes)`` exactly as ``coder.encode_lanes``."""
    shift = STATE_BITS - window_bits
    lo, rng, count = 0, 1 << STATE_BITS, 0
    ids: list[int] = []
    nbytes: list[int] = []
    for b, c, f in zip(data, cums, freqs):
        c, f = int(c), int(f)
        s_lo, s_hi = lo + (rng * c >> precision), lo + (rng * (c + f) >> precision)
        if _fits(s_lo, s_hi, shift):
            lo, rng, count = s_lo, s_hi - s_lo, count + 1
            continue
        if count:
            ids.append(vocab.COMP_OFFSET + (-(-lo >> shift)))
            nbytes.append(count)
        f_lo, f_hi = c << (STATE_BITS - precision), (c + f) << (STATE_BITS - precision)
        if _fits(f_lo, f_hi, shift):
            lo, rng, count = f_lo, f_hi - f_lo, 1
        else:
            ids.append(vocab.BYTE_OFFSET + int(b))
            nbytes.append(1)
            lo, rng, count = 0, 1 << STATE_BITS, 0
    if count:
        ids.append(vocab.COMP_OFFSET + (-(-lo >> shift)))
        nbytes.append(count)
    return ids, nbytes


def decode_lane(
    ids: Sequence[int],
    nbytes: Sequence[int],
    table_fn: Callable[[bytes], np.ndarray],
    *,
    window_bits: int = 16,
    precision: int = 16,
) -> bytes:
    """Invert :func:`encode_lane`. ``table_fn(prefix)`` returns the 256 frequencies for the next byte.

    Raises ``ValueError`` when the ids cannot come from the encoder under these tables (a symbol that
    lands outside the interval, or a passthrough byte that would have fitted a window).
    """
    shift = STATE_BITS - window_bits
    out = bytearray()
    for i, (t, n) in enumerate(zip(ids, nbytes)):
        t, n = int(t), int(n)
        if vocab.BYTE_OFFSET <= t < vocab.COMP_OFFSET:
            if n != 1:
                raise ValueError(f"Passthrough id {t} at position {i} covers {n} bytes; it must cover 1.")
            b = t - vocab.BYTE_OFFSET
            freq = np.asarray(table_fn(bytes(out)), np.int64)
            c = int(freq[:b].sum())
            if _fits(c << (STATE_BITS - precision), (c + int(freq[b])) << (STATE_BITS - precision), shift):
                raise ValueError(f"Passthrough byte {b} at position {i} fits a window; the encoder would have coded it.")
            out.append(b)
            continue
        if not vocab.COMP_OFFSET <= t < vocab.COMP_OFFSET + (1 << window_bits):
            raise ValueError(f"Id {t} at position {i} is neither a byte nor a {window_bits}-bit window symbol.")
        point = (t - vocab.COMP_OFFSET) << shift
        lo, rng = 0, 1 << STATE_BITS
        for _ in range(n):
            cum = np.concatenate([[0], np.cumsum(np.asarray(table_fn(bytes(out)), np.int64))])
            bounds = lo + (rng * cum >> precision)
            b = int(np.searchsorted(bounds, point, side="right")) - 1
            if not 0 <= b < 256 or not bounds[b] <= point < bounds[b + 1]:
                raise ValueError(f"Window symbol {t - vocab.COMP_OFFSET} at position {i} lies outside its interval.")
            lo, rng = int(bounds[b]), int(bounds[b + 1] - bounds[b])
            out.append(b)
    return bytes(out)


def decode_with_tables(ids, nbytes, freq_Nx256: np.ndarray, *, window_bits: int = 16, precision: int = 16) -> bytes:
    """Decode a lane whose tables do not depend on the data (synthetic distributions)."""
    return decode_lane(ids, nbytes, lambda prefix: freq_Nx256[len(prefix)], window_bits=window_bits, precision=precision)
