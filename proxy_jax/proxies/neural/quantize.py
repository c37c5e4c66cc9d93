"""The fixed rule that turns M1's 256-way logits into integer byte frequencies summing to ``2**P``.

Arithmetic coding is lossless only if encoder and decoder use bit-identical frequency tables, so the
rule is integer arithmetic from the first step after reading the logits:

1. ``a_i = rint((max(l) - l_i) * log2(e) * 2**Q)``: each logit's distance below the largest one, in
   log2 units on a grid of ``2**-Q`` (``Q = LOG2_GRID_BITS = 8``), clipped to ``[0, 32 * 2**Q - 1]``;
   NaN logits count as ``-1e30`` and infinities are clipped to ``+-1e30`` first. This is the only
   floating-point step (one subtraction and one multiplication, both correctly rounded in IEEE float32 on every backend).
2. ``e_i = EXP2_TABLE[a_i mod 2**Q] >> (a_i // 2**Q)`` with ``EXP2_TABLE[r] = round(2**16 * 2**(-r / 2**Q))``:
   an integer ``2**16 * 2**(-a_i / 2**Q)``; the most likely byte gets exactly ``2**16``.
3. ``f_i = 1 + (e_i * (2**P - 256)) // sum(e)``: every byte at least 1, products below ``2**32``.
4. The ``2**P - sum(f)`` left over (fewer than 257) goes to the most likely byte (lowest index on ties).

``P = DEFAULT_PRECISION = 16`` by default (9 <= P <= 16): a byte costs at most 16 bits, which fits one
16-bit window. Bit-identical tables across machines still need bit-identical float32 logits from M1:
the ``2**-8`` grid absorbs most last-ulp drift (only a logit within one ulp of a grid midpoint can move),
and the proxy runs M1 in float32 with fixed batch shapes, but a table computed on another backend is not
guaranteed to match. Decode on the backend that encoded.

``quantize_np`` and ``quantize_jnp`` implement the same rule and agree bit for bit (tested).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

DEFAULT_PRECISION = 16
LOG2_GRID_BITS = 8
_GRID = 1 << LOG2_GRID_BITS
_A_MAX = 32 * _GRID - 1
_ONE = 1 << 16
_BIG = np.float32(1e30)
# log2(e) * 2**Q, rounded once to float32 so both implementations multiply by the same constant.
_SCALE = np.float32(np.log2(np.e) * _GRID)
EXP2_TABLE = np.round(_ONE * np.exp2(-np.arange(_GRID, dtype=np.float64) / _GRID)).astype(np.uint32)

RULE_NAME = "log2grid8-exp2table16-floor-plus-one"


def check_precision(precision: int) -> int:
    precision = int(precision)
    if not 9 <= precision <= 16:
        raise ValueError(f"Quantisation precision P={precision} is out of range; use 9 <= P <= 16 bits.")
    return precision


def quantize_np(logits_Nx256: np.ndarray, precision: int = DEFAULT_PRECISION) -> np.ndarray:
    """Logits ``[..., 256]`` -> uint32 frequencies ``[..., 256]``, each >= 1, summing to ``2**precision``."""
    precision = check_precision(precision)
    logits = np.asarray(logits_Nx256, dtype=np.float32)
    if logits.shape[-1] != 256:
        raise ValueError(f"quantize expects 256 logits per position, got shape {logits.shape}.")
    logits = np.clip(np.where(np.isnan(logits), -_BIG, logits), -_BIG, _BIG)
    top = np.max(logits, axis=-1, keepdims=True)
    d = (top - logits) * _SCALE
    a = np.rint(np.clip(d, np.float32(0), np.float32(_A_MAX))).astype(np.uint32)
    e = EXP2_TABLE[a & (_GRID - 1)] >> (a >> LOG2_GRID_BITS)
    total = np.sum(e, axis=-1, keepdims=True, dtype=np.uint32)
    k = np.uint32((1 << precision) - 256)
    f = np.uint32(1) + (e * k) // total
    rest = np.uint32(1 << precision) - np.sum(f, axis=-1, dtype=np.uint32)
    top_idx = np.argmax(e, axis=-1)
    np.put_along_axis(f, top_idx[..., None], np.take_along_axis(f, top_idx[..., None], -1) + rest[..., None], -1)
    return f


def quantize_jnp(logits_Nx256, precision: int = DEFAULT_PRECISION):
    """The jax.numpy twin of :func:`quantize_np` (jit-friendly; ``precision`` is static)."""
    precision = check_precision(precision)
    logits = jnp.asarray(logits_Nx256, dtype=jnp.float32)
    logits = jnp.clip(jnp.where(jnp.isnan(logits), -_BIG, logits), -_BIG, _BIG)
    top = jnp.max(logits, axis=-1, keepdims=True)
    d = (top - logits) * _SCALE
    a = jnp.round(jnp.clip(d, 0.0, float(_A_MAX))).astype(jnp.uint32)
    e = jnp.asarray(EXP2_TABLE)[a & (_GRID - 1)] >> (a >> LOG2_GRID_BITS)
    total = jnp.sum(e, axis=-1, keepdims=True, dtype=jnp.uint32)
    k = jnp.uint32((1 << precision) - 256)
    f = jnp.uint32(1) + (e * k) // total
    rest = jnp.uint32(1 << precision) - jnp.sum(f, axis=-1, dtype=jnp.uint32)
    top_onehot = jnp.arange(256) == jnp.argmax(e, axis=-1)[..., None]
    return f + jnp.where(top_onehot, rest[..., None], jnp.uint32(0))


def cumulative_np(freq_Nx256: np.ndarray) -> np.ndarray:
    """Frequencies -> int64 cumulative table ``[..., 257]`` (``cum[..., 0] = 0``, ``cum[..., 256] = 2**P``)."""
    freq = np.asarray(freq_Nx256, dtype=np.int64)
    zeros = np.zeros(freq.shape[:-1] + (1,), np.int64)
    return np.concatenate([zeros, np.cumsum(freq, axis=-1)], axis=-1)


def byte_intervals_jnp(freq_Nx256, bytes_N):
    """``(cum_start, freq)`` of each actual byte under its table, uint32 (the coder's input).

    ``cum_start`` is a masked sum of the frequencies below the byte: one pass over the table, where a
    cumulative sum lowers to a windowed reduction on CPU (2.3-2.4x slower: launch/bench_intervals.py)."""
    freq = freq_Nx256.astype(jnp.uint32)
    idx = bytes_N.astype(jnp.int32)[..., None]
    below = jnp.arange(256, dtype=jnp.int32) < idx
    cum = jnp.sum(jnp.where(below, freq, jnp.uint32(0)), axis=-1, dtype=jnp.uint32)
    return cum, jnp.take_along_axis(freq, idx, -1)[..., 0]


def ideal_bits_np(freq_Nx256: np.ndarray, bytes_N: np.ndarray, precision: int = DEFAULT_PRECISION) -> np.ndarray:
    """``-log2 q(byte)`` under the quantised table, float64 (for overhead measurements)."""
    f = np.take_along_axis(np.asarray(freq_Nx256, np.float64), np.asarray(bytes_N, np.int64)[..., None], -1)[..., 0]
    return precision - np.log2(f)
