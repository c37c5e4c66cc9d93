"""Per-document mixing: exact arrangements, calibrated compressed-stream fractions, pure draws."""

import numpy as np
import pytest

from proxy_jax import vocab
from proxy_jax.data import mixing

RAW = vocab.encode_raw(b"ab\n")  # 97+64, 98+64, 10+64
COMP = vocab.encode_comp([5, 7])  # 325, 327
R, C = RAW.tolist(), COMP.tolist()
N_DOCS = 20_000


def test_uniforms_are_pure_and_vectorised_form_is_bit_identical():
    idx = np.arange(500) * 7919
    u_c, u_o = mixing.document_uniforms_N(3, idx, 2, 11)
    for i in (0, 1, 250, 499):
        assert mixing.document_uniforms(3, int(idx[i]), 2, 11) == (u_c[i], u_o[i])
    assert mixing.document_uniforms(3, 5, 2, 11) == mixing.document_uniforms(3, 5, 2, 11)
    # Every input changes the draw.
    base = mixing.document_uniforms(3, 5, 2, 11)
    for other in [(4, 5, 2, 11), (3, 6, 2, 11), (3, 5, 3, 11), (3, 5, 2, 12)]:
        assert mixing.document_uniforms(*other) != base


def test_uniforms_are_uniform_and_independent():
    n = 200_000
    u_c, u_o = mixing.document_uniforms_N(0, np.arange(n), 0, np.arange(n) // 64)
    for u in (u_c, u_o):
        assert u.min() >= 0.0 and u.max() < 1.0
        assert abs(u.mean() - 0.5) < 3 * np.sqrt(1 / 12 / n)
        counts = np.histogram(u, bins=20, range=(0, 1))[0]
        chi2 = float(((counts - n / 20) ** 2 / (n / 20)).sum())
        assert chi2 < 43.8  # 99.9th percentile of chi-square with 19 degrees of freedom
    assert abs(np.corrcoef(u_c, u_o)[0, 1]) < 4 / np.sqrt(n)
    # Neighbouring documents are uncorrelated too.
    assert abs(np.corrcoef(u_c[:-1], u_c[1:])[0, 1]) < 4 / np.sqrt(n)


def test_sentinel_arrangements():
    e = mixing.emit_arrangement(RAW, COMP, mode="sentinel", arrangement=mixing.RAW)
    assert e.ids.tolist() == [1, 12, *R, 13, 2] and e.doc_starts == (0,) and e.doc_comp_streams == (0,)
    e = mixing.emit_arrangement(RAW, COMP, mode="sentinel", arrangement=mixing.COMP)
    assert e.ids.tolist() == [1, 14, *C, 15, 2] and e.doc_comp_streams == (1,)
    assert e.ids.dtype == np.int32


def test_translation_arrangements():
    e = mixing.emit_arrangement(RAW, COMP, mode="translation_random", arrangement=mixing.PAIR_RAW_FIRST)
    assert e.ids.tolist() == [1, 12, *R, 13, 14, *C, 15, 2]
    assert (e.doc_starts, e.doc_streams, e.doc_comp_streams) == ((0,), (2,), (1,))
    e = mixing.emit_arrangement(RAW, COMP, mode="translation_comp_first", arrangement=mixing.PAIR_COMP_FIRST)
    assert e.ids.tolist() == [1, 14, *C, 15, 12, *R, 13, 2]


def test_parallel_arrangements():
    e = mixing.emit_arrangement(RAW, COMP, mode="parallel_raw_first", arrangement=mixing.PAIR_RAW_FIRST)
    assert e.ids.tolist() == [1, 12, *R, 13, 2, 1, 14, *C, 15, 2]
    assert e.doc_starts == (0, len(R) + 4) and e.doc_comp_streams == (0, 1)
    e = mixing.emit_arrangement(RAW, COMP, mode="parallel_comp_first", arrangement=mixing.PAIR_COMP_FIRST)
    assert e.ids.tolist() == [1, 14, *C, 15, 2, 1, 12, *R, 13, 2]
    assert e.doc_starts == (0, len(C) + 4) and e.doc_comp_streams == (1, 0)
    for ids, starts in [(e.ids, e.doc_starts)]:
        assert [i for i in range(len(ids)) if ids[i] == vocab.BOS] == list(starts)


def test_vanilla_arrangements():
    assert mixing.emit_arrangement(RAW, COMP, mode="vanilla", arrangement=mixing.RAW).ids.tolist() == [1, *R, 2]
    assert mixing.emit_arrangement(RAW, COMP, mode="vanilla", arrangement=mixing.COMP).ids.tolist() == [1, *C, 2]


def test_empty_document_and_missing_view():
    empty = vocab.encode_raw(b"")
    assert mixing.emit_arrangement(empty, empty, mode="sentinel", arrangement=mixing.RAW).ids.tolist() == [1, 12, 13, 2]
    e = mixing.emit_document(RAW, None, mode="translation_random", rate=1.0, u_choice=0.0, u_order=0.0)
    assert e.ids.tolist() == [1, 12, *R, 13, 2]


def _fraction_and_se(mode, x, seed=0):
    """Compressed-stream fraction over N_DOCS draws and its standard error (ratio estimator)."""
    u_c, u_o = mixing.document_uniforms_N(seed, np.arange(N_DOCS), 0, 17)
    streams = np.empty(N_DOCS)
    comp = np.empty(N_DOCS)
    for i in range(N_DOCS):
        arrangement = mixing.choose_arrangement(mode, x, float(u_c[i]), float(u_o[i]))
        streams[i], comp[i] = mixing.arrangement_streams(arrangement)
    frac = comp.sum() / streams.sum()
    se = np.std(comp - x * streams) / (np.sqrt(N_DOCS) * streams.mean())
    return frac, se


@pytest.mark.parametrize("mode", ["sentinel", "translation_random", "parallel_raw_first"])
@pytest.mark.parametrize("x", [0.3, 0.5, 0.65, 0.9])
def test_compressed_stream_fraction_matches_rate(mode, x):
    frac, se = _fraction_and_se(mode, x)
    assert abs(frac - x) <= 3 * se + 1e-12, (frac, x, se)


def test_pairing_probabilities():
    assert mixing.pair_probability(0.5) == (0.0, 1.0)  # every document is a pair
    p_comp, p_pair = mixing.pair_probability(0.9)
    assert p_comp == pytest.approx(2 - 1 / 0.9) and p_pair == pytest.approx(1 / 0.9 - 1)
    assert mixing.pair_probability(0.0) == (0.0, 0.0)
    assert mixing.pair_probability(1.0) == (1.0, 0.0)
    # Realised pair share at x = 0.3 is x / (1 - x) within 3 standard errors.
    u_c, u_o = mixing.document_uniforms_N(1, np.arange(N_DOCS), 0, 0)
    arrangements = [mixing.choose_arrangement("parallel_random", 0.3, float(a), float(b)) for a, b in zip(u_c, u_o)]
    pairs = np.array([lay.startswith("pair") for lay in arrangements])
    p = 0.3 / 0.7
    assert abs(pairs.mean() - p) < 3 * np.sqrt(p * (1 - p) / N_DOCS)
    assert not any(lay == mixing.COMP for lay in arrangements)  # x <= 0.5 never gives comp-only


def test_random_order_is_fair_and_fixed_orders_are_fixed():
    u_c, u_o = mixing.document_uniforms_N(2, np.arange(N_DOCS), 1, 3)
    arrangements = [mixing.choose_arrangement("translation_random", 0.5, float(a), float(b)) for a, b in zip(u_c, u_o)]
    raw_first = np.mean([lay == mixing.PAIR_RAW_FIRST for lay in arrangements])
    assert abs(raw_first - 0.5) < 3 * np.sqrt(0.25 / N_DOCS)
    for a, b in zip(u_c[:200], u_o[:200]):
        assert mixing.choose_arrangement("parallel_comp_first", 0.5, float(a), float(b)) == mixing.PAIR_COMP_FIRST
        assert mixing.choose_arrangement("translation_raw_first", 0.5, float(a), float(b)) == mixing.PAIR_RAW_FIRST


def test_extreme_rates():
    for mode in ("sentinel", "vanilla", "translation_random", "parallel_random"):
        assert mixing.choose_arrangement(mode, 0.0, 0.0, 0.3) == mixing.RAW
        assert mixing.choose_arrangement(mode, 1.0, 0.999999, 0.3) == mixing.COMP
