"""EVA attention against a dense implementation written here with Python-loop masks.

The naive version builds, per row, a [T, T + T/C] visibility matrix and a chunk-membership matrix
by looping over queries, keys and chunks, computes every summary as a softmax over the whole row
restricted to the chunk's members, and takes one dense softmax per query. The library computes
window by window; both must agree in values and gradients (float32: 2e-5 / 1e-4 absolute).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxy_jax.model import eva

B, H, KV, D = 2, 4, 2, 8


# ---- naive reference ------------------------------------------------------------------------------


def _rightmost_members(seg_row, start, chunk):
    """Positions of the chunk's rightmost document (segment of its last non-padding token)."""
    real = [m for m in range(start, start + chunk) if seg_row[m] != 0]
    if not real:
        return []
    doc = seg_row[real[-1]]
    return [m for m in real if seg_row[m] == doc]


def naive_masks(seg_BxT, window, chunk):
    """Per row: exact-key mask [T, T], summary mask [T, N], and chunk membership [N, T]."""
    seg = np.asarray(seg_BxT)
    b, t = seg.shape
    n = t // chunk
    exact = np.zeros((b, t, t), bool)
    summ = np.zeros((b, t, n), bool)
    member = np.zeros((b, n, t), bool)
    for r in range(b):
        row = [int(x) for x in seg[r]]
        for c in range(n):
            member[r, c, _rightmost_members(row, c * chunk, chunk)] = True
        for i in range(t):
            if row[i] == 0:
                continue
            for j in range(t):
                exact[r, i, j] = j // window == i // window and j <= i and row[j] == row[i]
            for c in range(n):
                first, last = c * chunk, c * chunk + chunk - 1
                earlier = last // window < i // window
                summ[r, i, c] = earlier and (row[first] == row[i] or row[last] == row[i])
    return exact, summ, member


def _softmax_over_members(logits_BxTxK, member_BxNxT):
    """Weights [B, N, T, K]: softmax over the member positions of each chunk, 0 elsewhere."""
    m = member_BxNxT[..., None]
    w = jax.nn.softmax(jnp.where(m, logits_BxTxK[:, None], -1e30), axis=2) * m
    return w


def naive_eva(q, k, v, seg, mu, phi, window, chunk):
    """Dense EVA: T x (T + T/C) logits per head; the sequence length must be a multiple of chunk."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    s = d**-0.5
    exact, summ, member = naive_masks(seg, window, chunk)
    member = jnp.asarray(member)
    # Summaries as weighted sums over the whole row, the weights nonzero only on chunk members.
    wk = _softmax_over_members(jnp.einsum("btkd,kd->btk", k, mu), member)
    phi_logits = jnp.einsum("btkd,kd->btk", k, phi) - 0.5 * jnp.sum(k * k, -1)
    wv = _softmax_over_members(s * phi_logits, member)
    kbar = jnp.einsum("bntk,btkd->bnkd", wk, k)
    vbar = jnp.einsum("bntk,btkd->bnkd", wv, v)
    keys = jnp.concatenate([k, kbar], axis=1)
    values = jnp.concatenate([v, vbar], axis=1)
    mask = jnp.asarray(np.concatenate([exact, summ], axis=2))  # [B, T, T+N]
    group = h // kv
    keys_h, values_h = jnp.repeat(keys, group, axis=2), jnp.repeat(values, group, axis=2)
    logits = s * jnp.einsum("bthd,bshd->bhts", q, keys_h)
    logits = jnp.where(mask[:, None], logits, -1e30)
    probs = jax.nn.softmax(logits, axis=-1) * mask[:, None]
    return jnp.einsum("bhts,bshd->bthd", probs, values_h)


def exact_causal(q, k, v, seg):
    """Document-masked causal softmax attention (what EVA must equal when one window covers all)."""
    t = seg.shape[1]
    mask = jnp.tril(jnp.ones((t, t), bool))[None] & (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] != 0)
    group = q.shape[2] // k.shape[2]
    kh, vh = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    logits = q.shape[-1] ** -0.5 * jnp.einsum("bthd,bshd->bhts", q, kh)
    probs = jax.nn.softmax(jnp.where(mask[:, None], logits, -1e30), -1) * mask[:, None]
    return jnp.einsum("bhts,bshd->bthd", probs, vh)


# ---- data ----------------------------------------------------------------------------------------


def packed_segments(t, doc_lengths):
    """Row of documents 1, 2, ... with the given lengths, padded with 0 to t."""
    row = np.concatenate([np.full(n, i + 1) for i, n in enumerate(doc_lengths)] + [np.zeros(t - sum(doc_lengths))])
    return row.astype(np.int32)


def make_inputs(t, seed=0, seg=None):
    # NumPy draws: no per-shape compilation before the code under test runs.
    rng = np.random.default_rng(seed)
    draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    q, k, v = draw(B, t, H, D), draw(B, t, KV, D), draw(B, t, KV, D)
    # Larger than eva_init's scale so that mu and phi visibly shape the summaries.
    mu, phi = draw(KV, D), draw(KV, D)
    if seg is None:
        # Row 0: several documents (one of length 1: a lone EOS), boundaries inside chunks, padding.
        # Row 1: one document across every window.
        lengths = [5, 1, 2 * t // 5 + 1, t // 4]
        seg = np.stack([packed_segments(t, lengths), packed_segments(t, [t])])
    return q, k, v, jnp.asarray(seg), mu, phi


def shared_chunk_seen_later(seg_row, chunk, window):
    """Whether some chunk holds several documents and its rightmost one has a query in a later window
    (so the rule "summarise only the rightmost document" is visible in the outputs)."""
    for start in range(0, len(seg_row), chunk):
        docs = [x for x in seg_row[start : start + chunk] if x != 0]
        later = [i for i, x in enumerate(seg_row) if x == docs[-1] and i // window > start // window] if docs else []
        if len(set(docs)) > 1 and later:
            return True
    return False


# ---- tests ---------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=0)
def _value_and_vjp(f, args, cot):
    """``f(*args)`` and its gradients against the cotangent ``cot``, in one compiled call."""
    out, vjp = jax.vjp(f, *args)
    return out, vjp(cot)


CASES = [(32, 8, 4), (48, 16, 4), (64, 16, 8), (40, 8, 2), (36, 16, 4)]  # (T, W, C); 36, 40: T % W != 0


@pytest.mark.parametrize("t,window,chunk", CASES)
def test_matches_naive_values_and_gradients(t, window, chunk):
    q, k, v, seg, mu, phi = make_inputs(t, seed=t)
    assert shared_chunk_seen_later([int(x) for x in seg[0]], chunk, window)
    fast = lambda q, k, v, mu, phi: eva.eva_attention(q, k, v, seg, mu, phi, window=window, chunk=chunk)
    slow = lambda q, k, v, mu, phi: naive_eva(q, k, v, seg, mu, phi, window, chunk)
    args = (q, k, v, mu, phi)
    cot = jnp.asarray(np.random.default_rng(99).standard_normal(q.shape), jnp.float32)

    out_fast, g_fast = _value_and_vjp(fast, args, cot)
    out_slow, g_slow = _value_and_vjp(slow, args, cot)
    np.testing.assert_allclose(out_fast, out_slow, atol=2e-5, rtol=1e-4)
    for name, a, b in zip(("q", "k", "v", "mu", "phi"), g_fast, g_slow):
        assert np.all(np.isfinite(a)), name
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=name)
    # With several windows the summaries are used, so mu and phi receive gradient.
    assert np.abs(g_fast[3]).max() > 1e-3 and np.abs(g_fast[4]).max() > 1e-3


def test_padding_outputs_zero_and_lone_token_outputs_its_value():
    t, window, chunk = 32, 8, 4
    q, k, v, seg, mu, phi = make_inputs(t)
    out = jax.jit(lambda *a: eva.eva_attention(*a, window=window, chunk=chunk))(q, k, v, seg, mu, phi)
    pad = np.asarray(seg) == 0
    assert pad.any()
    np.testing.assert_array_equal(np.asarray(out)[pad], 0.0)
    # Position 5 is a one-token document (a lone EOS): it sees only itself, so it returns its value.
    assert list(np.asarray(seg[0, 4:7])) == [1, 2, 3]
    np.testing.assert_allclose(out[0, 5], jnp.repeat(v[0, 5], H // KV, axis=0), rtol=1e-6)


def test_causality_and_document_isolation_through_gradients():
    t, window, chunk = 32, 8, 4
    q, k, v, seg, mu, phi = make_inputs(t, seed=3)
    seg_np = np.asarray(seg)

    @jax.jit
    def grads_of_output(i, q, k, v):
        out_at = lambda q, k, v: eva.eva_attention(q, k, v, seg, mu, phi, window=window, chunk=chunk)[:, i]
        return jax.grad(lambda q, k, v: jnp.sum(out_at(q, k, v) ** 2), argnums=(0, 1, 2))(q, k, v)

    for i in (3, 9, 17, 26, 31):
        grads = grads_of_output(i, q, k, v)
        for g in grads:
            g = np.abs(np.asarray(g)).sum(axis=(2, 3))  # [B, T]
            assert np.all(g[:, i + 1 :] == 0), f"output {i} depends on a later position"
            other_doc = seg_np != seg_np[:, i : i + 1]
            assert np.all(g[other_doc] == 0), f"output {i} depends on another document"
        # Sanity: the gradient is not trivially zero where it should not be.
        assert np.abs(np.asarray(grads[1])).sum(axis=(2, 3))[1, : i + 1].max() > 0


@pytest.mark.parametrize("window", [32, 48])  # T = 32: one window exactly, and one padded window
def test_one_window_equals_exact_causal_attention(window):
    t, chunk = 32, 4
    q, k, v, seg, mu, phi = make_inputs(t, seed=5)
    f = lambda mu: eva.eva_attention(q, k, v, seg, mu, phi, window=window, chunk=chunk)
    out, grad_mu = _value_and_vjp(f, (mu,), jnp.ones(q.shape))
    np.testing.assert_allclose(out, jax.jit(exact_causal)(q, k, v, seg), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(grad_mu[0], 0.0)  # no summary is visible


def test_gradients_agree_with_and_without_checkpoint():
    t, window, chunk = 32, 8, 4
    q, k, v, seg, mu, phi = make_inputs(t, seed=7)
    f = lambda q, k, v, mu, phi: jnp.sum(eva.eva_attention(q, k, v, seg, mu, phi, window=window, chunk=chunk) ** 2)
    plain = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3, 4)))(q, k, v, mu, phi)
    remat = jax.jit(jax.grad(jax.checkpoint(f), argnums=(0, 1, 2, 3, 4)))(q, k, v, mu, phi)
    for a, b in zip(plain, remat):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prompt", [0, 11, 16])
def test_decode_matches_full_recomputation(prompt):
    t, window, chunk = 40, 8, 4  # five windows: decoding crosses several boundaries
    q, k, v, seg, mu, phi = make_inputs(t, seed=11)
    full = jax.jit(lambda *a: eva.eva_attention(*a, window=window, chunk=chunk))(q, k, v, seg, mu, phi)
    if prompt:
        prefill = jax.jit(lambda *a: eva.eva_prefill(*a, mu, phi, window=window, chunk=chunk, max_len=t))
        out_p, cache = prefill(q[:, :prompt], k[:, :prompt], v[:, :prompt], seg[:, :prompt])
        np.testing.assert_allclose(out_p, full[:, :prompt], atol=1e-5, rtol=1e-5)
    else:
        cache = eva.eva_cache_init(B, t, KV, D, window=window, chunk=chunk, dtype=k.dtype)
    step = jax.jit(lambda c, *x: eva.eva_decode_step(c, *x, mu, phi, window=window, chunk=chunk))
    outs = []
    for i in range(prompt, t):
        sl = slice(i, i + 1)
        o, cache = step(cache, q[:, sl], k[:, sl], v[:, sl], seg[:, sl])
        outs.append(o)
    assert int(cache.index) == t
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full[:, prompt:], atol=1e-5, rtol=1e-5)


def test_bfloat16_runs_and_is_close_to_float32():
    t, window, chunk = 64, 16, 4
    q, k, v, seg, mu, phi = make_inputs(t, seed=13)
    bf = lambda x: x.astype(jnp.bfloat16)
    f = lambda q, k, v: eva.eva_attention(q, k, v, seg, mu, phi, window=window, chunk=chunk)
    ref = jax.jit(f)(q, k, v)
    out, (g_q, _, _) = _value_and_vjp(f, (bf(q), bf(k), bf(v)), jnp.ones(q.shape, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16 and g_q.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=5e-2, rtol=5e-2)
    assert np.all(np.isfinite(np.asarray(g_q, np.float32)))


def test_flops_match_counted_visible_keys():
    t, window, chunk, heads, dim = 64, 16, 4, 3, 8
    seg = np.ones((1, t), np.int32)
    exact, summ, _ = naive_masks(seg, window, chunk)
    mean_keys = exact.sum() / t + summ.sum() / t
    counted = 3 * 4 * heads * dim * mean_keys + 3 * 10 * heads * dim
    formula = eva.eva_flops_per_token(t, heads, dim, window, chunk)
    # The formula counts the causal window as W/2 keys; the exact count is (W + 1)/2.
    assert abs(formula - counted) / counted < 1.0 / window
    assert eva.eva_flops_per_token(t, heads, dim, t, chunk) == 3 * (4 * heads * dim * t / 2 + 10 * heads * dim)


def test_init_shape_and_std():
    mu, phi = eva.eva_init(jax.random.key(0), 64, 128)
    assert mu.shape == phi.shape == (64, 128)
    for x in (mu, phi):
        assert abs(float(jnp.std(x)) - 128**-0.5) < 0.03 * 128**-0.5
        assert float(jnp.abs(x).max()) <= 2 * 128**-0.5 / 0.8796 + 1e-6
    assert not np.allclose(mu, phi)


def test_bad_settings_raise_one_sentence():
    q, k, v, seg, mu, phi = make_inputs(32)
    with pytest.raises(ValueError, match="window=12 must be a positive multiple of chunk=8"):
        eva.eva_attention(q, k, v, seg, mu, phi, window=12, chunk=8)
    with pytest.raises(ValueError, match="multiple of the key/value heads"):
        eva.eva_attention(q[:, :, :3], k, v, seg, mu, phi, window=8, chunk=4)
    with pytest.raises(ValueError, match="exceeds max_len=16"):
        eva.eva_prefill(q, k, v, seg, mu, phi, window=8, chunk=4, max_len=16)
