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

Raw-only, comp-only or a pair (in one order) is a document's *arrangement*, drawn per document; every
emitted document is written by ``proxy_jax.text_format.write_document``, and the text format a finished
run reads (``text_format.of_mix``) follows from the modes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from proxy_jax import text_format

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


# Arrangements: which streams a document emits, in which order, and whether they share one BOS/EOS.
RAW, COMP, PAIR_RAW_FIRST, PAIR_COMP_FIRST = "raw", "comp", "pair_raw_first", "pair_comp_first"


def pair_probability(rate: float) -> tuple[float, float]:
    """(P(comp-only), P(pair)) of the pairing calibration at target compressed fraction ``rate``."""
    if rate > 0.5:
        p_comp = 2.0 - 1.0 / rate
        return p_comp, 1.0 - p_comp
    return 0.0, rate / (1.0 - rate)


def choose_arrangement(mode: str, rate: float, u_choice: float, u_order: float, *, has_comp: bool = True) -> str:
    """The arrangement a document takes, from its two uniforms. Without a compressed view it is raw."""
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


def arrangement_streams(arrangement: str) -> tuple[int, int]:
    """(number of streams, number of compressed streams) of an arrangement."""
    return {RAW: (1, 0), COMP: (1, 1), PAIR_RAW_FIRST: (2, 1), PAIR_COMP_FIRST: (2, 1)}[arrangement]


class Emission(NamedTuple):
    """What one source document contributes to the stream.

    ``doc_starts`` are the offsets of the BOS of each emitted document (two for a parallel pair);
    ``doc_streams`` / ``doc_comp_streams`` count the streams of each emitted document.
    """

    ids: np.ndarray
    doc_starts: tuple[int, ...]
    doc_streams: tuple[int, ...]
    doc_comp_streams: tuple[int, ...]


def emit_arrangement(raw_ids: np.ndarray, comp_ids: np.ndarray | None, *, mode: str, arrangement: str) -> Emission:
    """Ids of one document in ``arrangement`` under ``mode`` (see the module table), each emitted document
    written by ``text_format.write_document``."""
    write = text_format.write_document
    if mode == "vanilla":
        is_comp = arrangement == COMP
        ids = write([(text_format.COMP, comp_ids) if is_comp else (text_format.RAW, raw_ids)], sentinels=False)
        return Emission(ids, (0,), (1,), (int(is_comp),))
    raw, comp = (text_format.RAW, raw_ids), (text_format.COMP, comp_ids)
    if arrangement == RAW:
        return Emission(write([raw], sentinels=True), (0,), (1,), (0,))
    if arrangement == COMP:
        return Emission(write([comp], sentinels=True), (0,), (1,), (1,))
    first, second = (raw, comp) if arrangement == PAIR_RAW_FIRST else (comp, raw)
    if mode.startswith("translation"):
        return Emission(write([first, second], sentinels=True), (0,), (2,), (1,))
    if mode.startswith("parallel"):
        head = write([first], sentinels=True)
        ids = np.concatenate([head, write([second], sentinels=True)])
        comp_flags = (0, 1) if first is raw else (1, 0)
        return Emission(ids, (0, head.size), (1, 1), comp_flags)
    raise ValueError(f"Mode {mode!r} has no pair arrangement; use a translation_* or parallel_* mode.")


def emit_document(raw_ids: np.ndarray, comp_ids: np.ndarray | None, *, mode: str, rate: float,
                  u_choice: float, u_order: float) -> Emission:
    """Draws the arrangement of one document from its uniforms and returns its emitted ids.

    ``comp_ids=None`` means the document has no compressed view (byte-only runs): it is emitted raw.
    """
    arrangement = choose_arrangement(mode, rate, u_choice, u_order, has_comp=comp_ids is not None)
    return emit_arrangement(raw_ids, comp_ids, mode=mode, arrangement=arrangement)
