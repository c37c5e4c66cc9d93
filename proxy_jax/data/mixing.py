"""Per-document mixing of raw bytes and the compressed view.

Each document draws once, from uniforms that are a pure function of (seed, document index, epoch, step):
no generator state is carried anywhere, so draws survive restarts, resharding and worker counts.

Emitted ids per document (B = BOS 1, E = EOS 2, <raw> 12, </raw> 13, <comp> 14, </comp> 15):

| mode            | raw                     | comp                     | pair                              |
|-----------------|-------------------------|--------------------------|-----------------------------------|
| sentinel        | B 12 bytes 13 E         | B 14 symbols 15 E        | (never)                           |
| translation_*   | as sentinel             | as sentinel              | B 12 bytes 13 14 symbols 15 E     |
| parallel_*      | as sentinel             | as sentinel              | B 12 bytes 13 E B 14 symbols 15 E |
| vanilla         | B bytes E               | B symbols E              | (never)                           |

``*_comp_first`` puts the compressed stream first in a pair; ``*_random`` picks the order per document.
Pairing keeps the expected fraction of compressed streams among all streams equal to the rate x: for
x > 0.5 a document is comp-only with probability 2 - 1/x, else a pair; for x <= 0.5 it is a pair with
probability x / (1 - x), else raw-only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from proxy_jax import vocab

MODES = (
    "sentinel",  # raw: 1 12 bytes 13 2   comp: 1 14 symbols 15 2
    "translation_raw_first",  # 1 12 bytes 13 14 symbols 15 2 (one document)
    "translation_comp_first",
    "translation_random",
    "parallel_raw_first",  # 1 12 bytes 13 2 1 14 symbols 15 2 (two documents)
    "parallel_comp_first",
    "parallel_random",
    "vanilla",  # one representation, no sentinels: 1 bytes 2 or 1 symbols 2
)

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_TO_UNIT = 2.0**-53

# Which uniform decides what; keeps the two draws of a document independent.
_PURPOSE_CHOICE = 1
_PURPOSE_ORDER = 2


def _mix64(z: int) -> int:
    """The splitmix64 finaliser: a bijection on 64-bit ints with full avalanche."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _hash(*values: int) -> int:
    h = 0
    for v in values:
        h = _mix64((h + _GOLDEN + (v & _MASK64)) & _MASK64)
    return h


def document_uniforms(seed: int, index: int, epoch: int, step: int) -> tuple[float, float]:
    """Two independent uniforms in [0, 1) for one document: (choice, order)."""
    base = _hash(seed, index, epoch, step)
    u_choice = (_mix64((base + _PURPOSE_CHOICE * _GOLDEN) & _MASK64) >> 11) * _TO_UNIT
    u_order = (_mix64((base + _PURPOSE_ORDER * _GOLDEN) & _MASK64) >> 11) * _TO_UNIT
    return u_choice, u_order


def _mix64_N(z_N: np.ndarray) -> np.ndarray:
    z_N = (z_N ^ (z_N >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z_N = (z_N ^ (z_N >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z_N ^ (z_N >> np.uint64(31))


def document_uniforms_N(seed: int, index_N, epoch_N, step_N) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`document_uniforms` (bit-identical), for statistics and analysis."""
    index_N, epoch_N, step_N = np.broadcast_arrays(
        np.asarray(index_N, np.int64), np.asarray(epoch_N, np.int64), np.asarray(step_N, np.int64))
    golden = np.uint64(_GOLDEN)
    h_N = np.zeros(index_N.shape, np.uint64)
    for v_N in (np.full(index_N.shape, seed, np.int64), index_N, epoch_N, step_N):
        h_N = _mix64_N(h_N + golden + v_N.astype(np.uint64))
    u_choice_N = (_mix64_N(h_N + np.uint64(_PURPOSE_CHOICE * _GOLDEN & _MASK64)) >> np.uint64(11)) * _TO_UNIT
    u_order_N = (_mix64_N(h_N + np.uint64(_PURPOSE_ORDER * _GOLDEN & _MASK64)) >> np.uint64(11)) * _TO_UNIT
    return u_choice_N.astype(np.float64), u_order_N.astype(np.float64)


# Layouts: which streams a document emits, in which order, and whether they share one BOS/EOS.
RAW, COMP, PAIR_RAW_FIRST, PAIR_COMP_FIRST = "raw", "comp", "pair_raw_first", "pair_comp_first"


def pair_probability(rate: float) -> tuple[float, float]:
    """(P(comp-only), P(pair)) of the pairing calibration at target compressed fraction ``rate``."""
    if rate > 0.5:
        p_comp = 2.0 - 1.0 / rate
        return p_comp, 1.0 - p_comp
    return 0.0, rate / (1.0 - rate)


def choose_layout(mode: str, rate: float, u_choice: float, u_order: float, *, has_comp: bool = True) -> str:
    """The layout a document takes, from its two uniforms. Without a compressed view it is raw."""
    if not has_comp:
        return RAW
    if mode == "sentinel" or mode == "vanilla":
        return COMP if u_choice < rate else RAW
    p_comp, p_pair = pair_probability(rate)
    if u_choice < p_comp:
        return COMP
    if u_choice >= p_comp + p_pair:
        return RAW
    if mode.endswith("_raw_first"):
        return PAIR_RAW_FIRST
    if mode.endswith("_comp_first"):
        return PAIR_COMP_FIRST
    return PAIR_RAW_FIRST if u_order < 0.5 else PAIR_COMP_FIRST


def layout_streams(layout: str) -> tuple[int, int]:
    """(number of streams, number of compressed streams) of a layout."""
    return {RAW: (1, 0), COMP: (1, 1), PAIR_RAW_FIRST: (2, 1), PAIR_COMP_FIRST: (2, 1)}[layout]


_I = vocab.ID_DTYPE
_B, _E = vocab.BOS, vocab.EOS
_RO, _RC, _CO, _CC = vocab.RAW_OPEN, vocab.RAW_CLOSE, vocab.COMP_OPEN, vocab.COMP_CLOSE
_HEAD_RAW = np.array([_B, _RO], _I)
_HEAD_COMP = np.array([_B, _CO], _I)
_TAIL_RAW = np.array([_RC, _E], _I)
_TAIL_COMP = np.array([_CC, _E], _I)
_RAW_TO_COMP = np.array([_RC, _CO], _I)
_COMP_TO_RAW = np.array([_CC, _RO], _I)
_BOS = np.array([_B], _I)
_EOS = np.array([_E], _I)


class Emission(NamedTuple):
    """What one source document contributes to the stream.

    ``doc_starts`` are the offsets of the BOS of each emitted document (two for a parallel pair);
    ``doc_streams`` / ``doc_comp_streams`` count the streams of each emitted document.
    """

    ids: np.ndarray
    doc_starts: tuple[int, ...]
    doc_streams: tuple[int, ...]
    doc_comp_streams: tuple[int, ...]


def emit_layout(raw_ids: np.ndarray, comp_ids: np.ndarray | None, *, mode: str, layout: str) -> Emission:
    """Ids of one document in ``layout`` under ``mode`` (see the module table)."""
    if mode == "vanilla":
        body = comp_ids if layout == COMP else raw_ids
        return Emission(np.concatenate([_BOS, body, _EOS]), (0,), (1,), (int(layout == COMP),))
    if layout == RAW:
        return Emission(np.concatenate([_HEAD_RAW, raw_ids, _TAIL_RAW]), (0,), (1,), (0,))
    if layout == COMP:
        return Emission(np.concatenate([_HEAD_COMP, comp_ids, _TAIL_COMP]), (0,), (1,), (1,))
    raw_first = layout == PAIR_RAW_FIRST
    if mode.startswith("translation"):
        if raw_first:
            parts = [_HEAD_RAW, raw_ids, _RAW_TO_COMP, comp_ids, _TAIL_COMP]
        else:
            parts = [_HEAD_COMP, comp_ids, _COMP_TO_RAW, raw_ids, _TAIL_RAW]
        return Emission(np.concatenate(parts), (0,), (2,), (1,))
    if mode.startswith("parallel"):
        if raw_first:
            parts = [_HEAD_RAW, raw_ids, _TAIL_RAW, _HEAD_COMP, comp_ids, _TAIL_COMP]
            first = len(raw_ids) + 4
            comp_flags = (0, 1)
        else:
            parts = [_HEAD_COMP, comp_ids, _TAIL_COMP, _HEAD_RAW, raw_ids, _TAIL_RAW]
            first = len(comp_ids) + 4
            comp_flags = (1, 0)
        return Emission(np.concatenate(parts), (0, first), (1, 1), comp_flags)
    raise ValueError(f"Mode {mode!r} has no pair layout; use a translation_* or parallel_* mode.")


def emit_document(raw_ids: np.ndarray, comp_ids: np.ndarray | None, *, mode: str, rate: float,
                  u_choice: float, u_order: float) -> Emission:
    """Draws the layout of one document from its uniforms and returns its emitted ids.

    ``comp_ids=None`` means the document has no compressed view (byte-only runs): it is emitted raw.
    """
    layout = choose_layout(mode, rate, u_choice, u_order, has_comp=comp_ids is not None)
    return emit_layout(raw_ids, comp_ids, mode=mode, layout=layout)
