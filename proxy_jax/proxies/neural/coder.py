"""Arithmetic coding with equal-information windows, in JAX: integer-only, many lanes at once.

The rule (the pure-Python :mod:`reference` implements the same rule and must agree bit for bit):

* A window's state is an interval ``[lo, lo + rng)`` of 31-bit integers (units of ``2**-31``); a fresh
  window is ``[0, 2**31)``. Coding a byte with cumulative start ``c`` and frequency ``f`` (out of
  ``2**P``) narrows it to ``[lo + (rng*c >> P), lo + (rng*(c+f) >> P))``: the sub-intervals of the 256
  bytes tile the interval exactly, so no code space is lost to rounding.
* The window's code points are the multiples of ``2**(31-W)`` (the ``2**W`` values of a W-bit symbol).
  A byte *fits* if its sub-interval still contains a code point. Bytes are coded while they fit; the
  first byte that does not fit closes the window, which is emitted as ONE symbol: the smallest code
  point in its interval, ``ceil(lo / 2**(31-W))`` (the window's bits, zero-padded to W). The coder then
  restarts from a fresh interval with that byte.
* A byte that does not fit even a fresh window (only possible when ``P > W``) is a raw passthrough.
* At the end of a lane the open window is closed the same way.

There are no carries, pending bits or renormalisation: a window holds at most W <= 16 bits of
information, and the 31-bit interval keeps ``31 - W`` bits of precision below it.

Output per lane, in order: window symbols as ids ``320 + symbol`` and passthrough bytes as ids
``64 + byte``, with ``nbytes`` = how many input bytes each id covers (a passthrough covers 1). The view is
not self-delimiting (the decoder cannot tell where a window stops from its symbol alone), so decoding
needs ``nbytes``; training never decodes.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from proxy_jax import vocab

STATE_BITS = 31
MAX_WINDOW_BITS = 16


def check_window_bits(window_bits: int) -> int:
    window_bits = int(window_bits)
    if not 1 <= window_bits <= MAX_WINDOW_BITS:
        raise ValueError(
            f"proxy.window_bits={window_bits} is out of range; use 1..{MAX_WINDOW_BITS} (symbols are < 2**W)."
        )
    return window_bits


class CoderOutput(NamedTuple):
    ids_BxL: jax.Array  # int32 ids in the shared vocabulary, 0-padded after ``lengths_B``
    nbytes_BxL: jax.Array  # int32 input bytes covered by each id (0 in the padding)
    lengths_B: jax.Array  # int32 number of ids per lane


def mulshift(rng, c, precision: int):
    """``floor(rng * c / 2**precision)`` in uint32 for ``rng <= 2**31``, ``c <= 2**precision <= 2**16``."""
    hi, lo = rng >> 16, rng & 0xFFFF
    return ((hi * c) << (16 - precision)) + ((lo * c) >> precision)


def _first_code_point(lo, shift: int):
    return ((lo + jnp.uint32((1 << shift) - 1)) >> shift) << shift


@functools.partial(jax.jit, static_argnames=("window_bits", "precision"))
def encode_lanes(bytes_BxL, cum_BxL, freq_BxL, valid_BxL, *, window_bits: int = 16, precision: int = 16) -> CoderOutput:
    """Code each lane (row) independently; ``valid_BxL`` marks real bytes (a prefix of each row).

    ``cum_BxL``/``freq_BxL`` are the quantised interval of the actual byte at each position (from
    :func:`quantize.byte_intervals_jnp`). Integer-only; one ``lax.scan`` over positions, vectorised
    over lanes.
    """
    shift = STATE_BITS - window_bits
    fresh_rng = jnp.uint32(1 << STATE_BITS)
    B, L = bytes_BxL.shape
    cum = cum_BxL.astype(jnp.uint32).T
    freq = freq_BxL.astype(jnp.uint32).T
    byte = bytes_BxL.astype(jnp.int32).T
    valid = valid_BxL.astype(bool).T

    def fits(s_lo, s_hi):
        return (s_hi > s_lo) & (_first_code_point(s_lo, shift) < s_hi)

    def step(state, x):
        lo, rng, count = state
        b, c, f, ok = x
        s_lo = lo + mulshift(rng, c, precision)
        s_hi = lo + mulshift(rng, c + f, precision)
        here = fits(s_lo, s_hi)
        f_lo = c << (STATE_BITS - precision)
        f_hi = (c + f) << (STATE_BITS - precision)
        fresh = fits(f_lo, f_hi)
        win_emit = ok & ~here & (count > 0)
        win_sym = (_first_code_point(lo, shift) >> shift).astype(jnp.int32)
        pass_emit = ok & ~here & ~fresh
        new_lo = jnp.where(here, s_lo, jnp.where(fresh, f_lo, jnp.uint32(0)))
        new_rng = jnp.where(here, s_hi - s_lo, jnp.where(fresh, f_hi - f_lo, fresh_rng))
        new_count = jnp.where(here, count + 1, jnp.where(fresh, 1, 0))
        state = (
            jnp.where(ok, new_lo, lo),
            jnp.where(ok, new_rng, rng),
            jnp.where(ok, new_count, count),
        )
        return state, (win_emit, win_sym, count, pass_emit, b)

    init = (jnp.zeros((B,), jnp.uint32), jnp.full((B,), fresh_rng), jnp.zeros((B,), jnp.int32))
    (lo, _, count), (w_emit, w_sym, w_cnt, p_emit, p_byte) = jax.lax.scan(step, init, (byte, cum, freq, valid))

    # Per position: the window it closes (if any), then its passthrough byte (if any); then the last window.
    emit_BxM = jnp.concatenate([jnp.stack([w_emit.T, p_emit.T], -1).reshape(B, 2 * L), (count > 0)[:, None]], 1)
    last_sym = (_first_code_point(lo, shift) >> shift).astype(jnp.int32)
    ids_BxM = jnp.concatenate(
        [
            jnp.stack([w_sym.T + vocab.COMP_OFFSET, p_byte.T + vocab.BYTE_OFFSET], -1).reshape(B, 2 * L),
            (last_sym + vocab.COMP_OFFSET)[:, None],
        ],
        1,
    )
    nbytes_BxM = jnp.concatenate(
        [jnp.stack([w_cnt.T, jnp.ones_like(w_cnt.T)], -1).reshape(B, 2 * L), count[:, None]], 1
    )
    # Compact: each lane has at most L outputs (every window covers >= 1 byte).
    dest_BxM = jnp.where(emit_BxM, jnp.cumsum(emit_BxM, axis=1) - 1, L)
    rows_BxM = jnp.broadcast_to(jnp.arange(B)[:, None], dest_BxM.shape)
    ids = jnp.zeros((B, L), jnp.int32).at[rows_BxM, dest_BxM].set(ids_BxM, mode="drop")
    nbytes = jnp.zeros((B, L), jnp.int32).at[rows_BxM, dest_BxM].set(nbytes_BxM, mode="drop")
    return CoderOutput(ids, nbytes, jnp.sum(emit_BxM, axis=1, dtype=jnp.int32))
