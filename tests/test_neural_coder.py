"""Quantisation and the equal-information-window coder on synthetic distributions (no M1 needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxy_jax import vocab
from proxy_jax.proxies.neural import coder, quantize, reference


def _random_logits(rng, shape, concentration):
    p = rng.dirichlet(np.full(256, concentration), size=shape)
    return np.log(np.maximum(p, 1e-38)).astype(np.float32)


def _sample_bytes(rng, freq_BxLx256, precision=16):
    p = freq_BxLx256.astype(np.float64) / (1 << precision)
    u = rng.random(p.shape[:-1])
    return np.minimum((np.cumsum(p, -1) < u[..., None]).sum(-1), 255).astype(np.int32)


def _encode(data_BxL, freq_BxLx256, lengths_B, window_bits, precision=16):
    valid = np.arange(data_BxL.shape[1])[None] < np.asarray(lengths_B)[:, None]
    cum, fr = quantize.byte_intervals_jnp(jnp.asarray(freq_BxLx256), jnp.asarray(data_BxL))
    out = coder.encode_lanes(
        jnp.asarray(data_BxL), cum, fr, jnp.asarray(valid), window_bits=window_bits, precision=precision
    )
    return jax.tree.map(np.asarray, out), np.asarray(cum), np.asarray(fr)


def test_quantize_numpy_and_jax_agree_bit_for_bit_and_sum_to_2p():
    rng = np.random.default_rng(0)
    logits = np.concatenate(
        [
            _random_logits(rng, (64,), 0.05),
            _random_logits(rng, (64,), 1.0),
            rng.normal(0, 30, (64, 256)).astype(np.float32),  # very peaked
            np.zeros((2, 256), np.float32),  # all ties
        ]
    )
    logits[0, :10] = -np.inf
    logits[1, 3] = np.nan
    for precision in (16, 12, 9):
        f_np = quantize.quantize_np(logits, precision)
        f_jnp = np.asarray(jax.jit(quantize.quantize_jnp, static_argnums=1)(logits, precision))
        np.testing.assert_array_equal(f_np, f_jnp)
        assert f_np.dtype == np.uint32
        assert (f_np.sum(-1) == 1 << precision).all()
        assert f_np.min() >= 1
    f = quantize.quantize_np(logits)
    # Ties give equal frequencies except the remainder on the first (lowest index) byte.
    assert len(set(f[-1, 1:].tolist())) == 1 and f[-1, 0] >= f[-1, 1]
    # A larger logit never gets a smaller frequency.
    order = np.argsort(logits[150], kind="stable")
    assert (np.diff(f[150][order].astype(np.int64)) >= 0).all()


def test_quantize_is_close_to_the_distribution():
    rng = np.random.default_rng(1)
    logits = _random_logits(rng, (200,), 0.3)
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(-1, keepdims=True)
    q = quantize.quantize_np(logits).astype(np.float64) / 65536
    kl = (p * (np.log2(np.maximum(p, 1e-300)) - np.log2(q))).sum(-1)
    assert kl.mean() < 0.01, kl.mean()  # bits per byte lost to quantisation


def test_quantize_rejects_bad_precision_and_shape():
    with pytest.raises(ValueError, match="P=17"):
        quantize.quantize_np(np.zeros((1, 256), np.float32), 17)
    with pytest.raises(ValueError, match="256 logits"):
        quantize.quantize_np(np.zeros((1, 255), np.float32))


@pytest.mark.parametrize("window_bits", [16, 12, 8])
def test_jax_coder_matches_reference_and_round_trips(window_bits):
    rng = np.random.default_rng(window_bits)
    B, L = 24, 96
    conc = rng.choice([0.02, 0.2, 2.0], size=B)
    logits = np.stack([_random_logits(rng, (L,), c) for c in conc])
    freq = quantize.quantize_np(logits)
    data = _sample_bytes(rng, freq)
    lengths = rng.integers(0, L + 1, size=B)
    lengths[:3] = (1, 2, L)  # windows that end exactly at the end of a document
    out, cum, fr = _encode(data, freq, lengths, window_bits)
    passthrough = 0
    for b in range(B):
        n, m = lengths[b], out.lengths_B[b]
        ids, nbytes = reference.encode_lane(data[b, :n], cum[b, :n], fr[b, :n], window_bits=window_bits)
        assert out.ids_BxL[b, :m].tolist() == ids
        assert out.nbytes_BxL[b, :m].tolist() == nbytes
        assert (out.ids_BxL[b, m:] == 0).all() and (out.nbytes_BxL[b, m:] == 0).all()
        assert sum(nbytes) == n and min(nbytes, default=1) >= 1
        ids = np.asarray(ids)
        symbols = ids[ids >= vocab.COMP_OFFSET] - vocab.COMP_OFFSET
        assert ((symbols >= 0) & (symbols < 1 << window_bits)).all()
        passthrough += int(((ids >= vocab.BYTE_OFFSET) & (ids < vocab.COMP_OFFSET)).sum())
        decoded = reference.decode_with_tables(ids, nbytes, freq[b], window_bits=window_bits)
        assert decoded == data[b, :n].astype(np.uint8).tobytes()
    if window_bits < 16:
        assert passthrough > 0  # P=16 > W: bytes costing more than W bits stay raw
    else:
        assert passthrough == 0  # with P <= W every byte fits an empty window


def test_tiny_probability_bytes_pass_through_or_take_a_window_alone():
    # Every position gives the actual byte frequency 1 (16 bits): more than a 12-bit window holds.
    L = 12
    freq = np.full((1, L, 256), 1, np.uint32)
    freq[..., 0] = 65536 - 255
    data = np.full((1, L), 7, np.int32)
    data[0, ::3] = 0  # a few likely bytes in between
    out12, _, _ = _encode(data, freq, [L], 12)
    ids = out12.ids_BxL[0, : out12.lengths_B[0]]
    assert (ids == vocab.BYTE_OFFSET + 7).sum() == (data[0] == 7).sum()
    assert reference.decode_with_tables(ids, out12.nbytes_BxL[0, : len(ids)], freq[0], window_bits=12) == data[0].astype(
        np.uint8
    ).tobytes()
    out16, _, _ = _encode(data, freq, [L], 16)
    ids16 = out16.ids_BxL[0, : out16.lengths_B[0]]
    assert (ids16 >= vocab.COMP_OFFSET).all()  # 16 bits fit a 16-bit window exactly
    assert reference.decode_with_tables(ids16, out16.nbytes_BxL[0, : len(ids16)], freq[0]) == data[0].astype(
        np.uint8
    ).tobytes()


def test_corrupted_symbol_does_not_decode_to_the_original():
    rng = np.random.default_rng(5)
    freq = quantize.quantize_np(_random_logits(rng, (1, 64), 0.1))
    data = _sample_bytes(rng, freq)
    out, _, _ = _encode(data, freq, [64], 16)
    m = out.lengths_B[0]
    ids, nbytes = out.ids_BxL[0, :m].copy(), out.nbytes_BxL[0, :m]
    ids[0] = vocab.COMP_OFFSET + ((int(ids[0]) - vocab.COMP_OFFSET + 1234) % 65536)
    try:
        decoded = reference.decode_with_tables(ids, nbytes, freq[0])
    except ValueError:
        return
    assert decoded != data[0].astype(np.uint8).tobytes()


@pytest.mark.parametrize("concentration", [0.03, 0.3])
def test_code_length_is_within_2_percent_of_ideal_plus_padding(concentration):
    """The 31-bit coder versus the same window rule in exact arithmetic.

    "Ideal plus padding" = W bits for every window that an exact-arithmetic coder (interval widths are
    exact products of the quantised probabilities, code points at multiples of 2**-W) emits, plus the
    passthrough bytes. Our window count must be within 2% of it. The exact coder is itself compared with
    the plain ideal sum of -log2 q, to show where the padding goes.
    """
    rng = np.random.default_rng(11)
    B, L = 16, 256
    freq = quantize.quantize_np(_random_logits(rng, (B, L), concentration))
    data = _sample_bytes(rng, freq)
    out, _, _ = _encode(data, freq, [L] * B, 16)
    ours = int((out.ids_BxL >= vocab.COMP_OFFSET).sum())
    exact = sum(reference.exact_window_count(data[b], freq[b], 16)[0] for b in range(B))
    assert abs(ours - exact) <= 0.02 * exact, (ours, exact)
    ideal_bits = quantize.ideal_bits_np(freq, data).sum()
    assert 16 * exact >= 0.85 * ideal_bits  # padding can only cost, minus lucky alignment
    assert 16 * exact <= 1.25 * ideal_bits


def test_byte_intervals_match_the_cumulative_table():
    """The coder's (start, width) of each byte equals the numpy cumulative table's, bytes 0 and 255 included."""
    rng = np.random.default_rng(7)
    freq = rng.integers(1, 1 << 9, (3, 50, 256)).astype(np.uint32)
    data = rng.integers(0, 256, (3, 50)).astype(np.uint8)
    data[0, :2], data[1, :2] = 0, 255
    cum, fr = quantize.byte_intervals_jnp(jnp.asarray(freq), jnp.asarray(data))
    table = quantize.cumulative_np(freq)
    idx = data.astype(np.int64)[..., None]
    np.testing.assert_array_equal(np.asarray(cum), np.take_along_axis(table, idx, -1)[..., 0])
    np.testing.assert_array_equal(np.asarray(fr), np.take_along_axis(freq, idx, -1)[..., 0])
