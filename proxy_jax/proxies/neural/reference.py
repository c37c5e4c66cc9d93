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
from proxy_jax.proxies.neural import quantize

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


class LaneDecoder:
    """Inverts :func:`encode_lane` one byte at a time: call :meth:`step` with the table for each position.

    Driving it byte by byte lets a caller decode many lanes in lockstep (one M1 call per position for
    all of them). ``step`` raises ``ValueError`` when the ids cannot come from the encoder under these
    tables (a symbol outside its interval, or a passthrough byte that would have fitted a window).
    """

    def __init__(self, ids: Sequence[int], nbytes: Sequence[int], *, window_bits: int = 16, precision: int = 16):
        if len(ids) != len(nbytes):
            raise ValueError(f"{len(ids)} ids but {len(nbytes)} byte counts; they must pair up.")
        self.ids = [int(t) for t in ids]
        self.nbytes = [int(n) for n in nbytes]
        self.window_bits, self.precision = window_bits, precision
        self.shift = STATE_BITS - window_bits
        self.total = sum(self.nbytes)
        self.out = bytearray()
        self._item, self._left = 0, 0
        self._lo, self._rng, self._point = 0, 1 << STATE_BITS, 0

    @property
    def done(self) -> bool:
        return len(self.out) >= self.total

    def step(self, freq_256) -> int:
        """Decode the next byte given its frequency table; returns the byte."""
        if self.done:
            raise ValueError("step() called after the last byte was decoded.")
        freq = np.asarray(freq_256, np.int64)
        if self._left == 0:  # start the next id
            i, t, n = self._item, self.ids[self._item], self.nbytes[self._item]
            self._item += 1
            if vocab.BYTE_OFFSET <= t < vocab.COMP_OFFSET:
                if n != 1:
                    raise ValueError(f"Passthrough id {t} at position {i} covers {n} bytes; it must cover 1.")
                b = t - vocab.BYTE_OFFSET
                c, f = int(freq[:b].sum()), int(freq[b])
                p = self.precision
                if _fits(c << (STATE_BITS - p), (c + f) << (STATE_BITS - p), self.shift):
                    raise ValueError(f"Passthrough byte {b} at position {i} fits a window; the encoder would have coded it.")
                self.out.append(b)
                return b
            if not vocab.COMP_OFFSET <= t < vocab.COMP_OFFSET + (1 << self.window_bits) or n < 1:
                raise ValueError(f"Id {t} at position {i} is neither a byte nor a {self.window_bits}-bit window symbol.")
            self._point = (t - vocab.COMP_OFFSET) << self.shift
            self._lo, self._rng, self._left = 0, 1 << STATE_BITS, n
        cum = np.concatenate([[0], np.cumsum(freq)])
        bounds = self._lo + (self._rng * cum >> self.precision)
        b = int(np.searchsorted(bounds, self._point, side="right")) - 1
        if not 0 <= b < 256 or not bounds[b] <= self._point < bounds[b + 1]:
            raise ValueError(f"Window symbol at position {self._item - 1} lies outside its interval.")
        self._lo, self._rng = int(bounds[b]), int(bounds[b + 1] - bounds[b])
        self._left -= 1
        self.out.append(b)
        return b


def decode_lane(
    ids: Sequence[int],
    nbytes: Sequence[int],
    table_fn: Callable[[bytes], np.ndarray],
    *,
    window_bits: int = 16,
    precision: int = 16,
) -> bytes:
    """Invert :func:`encode_lane`. ``table_fn(prefix)`` returns the 256 frequencies for the next byte."""
    dec = LaneDecoder(ids, nbytes, window_bits=window_bits, precision=precision)
    while not dec.done:
        dec.step(table_fn(bytes(dec.out)))
    return bytes(dec.out)


def decode_with_tables(ids, nbytes, freq_Nx256: np.ndarray, *, window_bits: int = 16, precision: int = 16) -> bytes:
    """Decode a lane whose tables do not depend on the data (synthetic distributions)."""
    return decode_lane(ids, nbytes, lambda prefix: freq_Nx256[len(prefix)], window_bits=window_bits, precision=precision)


def exact_window_count(data, freq_Lx256, window_bits: int = 16, precision: int = 16) -> tuple[int, int]:
    """``(windows, passthrough bytes)`` of the same window rule in exact (unbounded) arithmetic.

    The interval is the exact product of the quantised probabilities and the code points are the exact
    multiples of ``2**-W``: what an ideal coder with these tables emits, W bits per window. Comparing it
    with :func:`encode_lane` isolates the cost of the 31-bit state.
    """
    cum_table = quantize.cumulative_np(freq_Lx256)
    windows, passthrough = 0, 0
    lo, width, denom_bits, count = 0, 1, 0, 0  # interval [lo, lo + width) / 2**denom_bits

    def fits(lo, hi, denom_bits):
        # is there k with lo <= k * 2**(denom_bits - W) < hi ?
        s = denom_bits - window_bits
        if s <= 0:
            return hi > lo  # every integer grid point is a code point
        first = -(-lo >> s) << s
        return first < hi

    for t, b in enumerate(data):
        c, f = int(cum_table[t, b]), int(cum_table[t, b + 1] - cum_table[t, b])
        n_lo, n_w, n_bits = (lo << precision) + width * c, width * f, denom_bits + precision
        if fits(n_lo, n_lo + n_w, n_bits):
            lo, width, denom_bits, count = n_lo, n_w, n_bits, count + 1
            continue
        windows += count > 0
        if fits(c, c + f, precision):
            lo, width, denom_bits, count = c, f, precision, 1
        else:
            passthrough += 1
            lo, width, denom_bits, count = 0, 1, 0, 0
    return windows + (count > 0), passthrough
