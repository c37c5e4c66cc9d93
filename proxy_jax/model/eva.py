"""EVA attention (the attention of EvaByte): exact keys inside a window, pooled summaries before it.

Notation per KV head: ``d`` = head_dim, ``s = d ** -0.5``, learned vectors ``mu`` and ``phi`` of
size ``d``. Keys are taken after rotary embeddings. Under grouped-query attention (``H`` query heads,
``K`` KV heads, ``H % K == 0``) the summaries are built per KV head, so ``mu`` and ``phi`` have shape
``[K, d]`` and every query head of a group reads the same summaries.

Chunks and windows. Positions are cut into aligned chunks of ``C`` keys and aligned windows of ``W``
positions (``W % C == 0``; windows are fixed blocks, not sliding). Chunk ``c`` holds positions
``[c*C, (c+1)*C)``; query ``i`` lies in window ``w = i // W``.

Chunk summary. The chunk's *rightmost document* is the segment id of its last non-padding token; its
members ``m`` are the tokens of that document (other documents in the chunk do not feed it)::

    kbar_c = sum_m softmax_m(mu . k_m) k_m                          (unscaled logits)
    vbar_c = sum_m softmax_m(s * (phi . k_m - |k_m|^2 / 2)) v_m

A chunk without members (all padding) has zero summaries.

Attention. Query ``i`` (segment ``g_i``) takes ONE softmax with logits ``s * q_i . key`` over

* the exact keys ``j`` with ``j // W == w``, ``j <= i`` and segment ``g_j == g_i``;
* the summaries of every chunk lying in a window ``< w`` whose first or last token has segment
  ``g_i``.

Segment 0 is padding: a padding query sees nothing. A query that sees nothing outputs 0 (only
padding queries, since any other query sees itself; an EOS token is an ordinary member of its
document). Scores and softmax are float32; outputs have the dtype of ``q``.

Cost. :func:`eva_attention` works window by window: ``W x W`` exact logits plus ``T / C`` summary
logits per query (masked to the earlier windows), so memory grows like ``T * (W + T / C)``, never
``T ** 2``. Sequences whose length is not a multiple of ``W`` are padded (segment 0) internally;
a sequence no longer than ``W`` is only padded to a multiple of ``C`` (it is one window).

Decoding. :class:`EvaCache` holds the current window's exact keys/values (slot = position mod ``W``)
and one summary slot per chunk of the whole generation (``ceil(max_len / C)`` slots). Each
:func:`eva_decode_step` writes its key into the window, recomputes the summary of the chunk it falls
in (O(C) work; the last token of a chunk leaves its final summary), and attends over ``W`` exact slots
plus all summary slots, masked. Cost per token is O(W + max_len / C): independent of how many windows
of history there are, apart from the summary slots, which are O(max_len / C) and allocated up front.
The cache stays exact: feeding tokens one by one reproduces :func:`eva_attention` on the whole
sequence. All rows of a batch advance in lockstep (one ``index``).

Model use. ``model.attention = "eva"`` (``model.eva_window``, ``model.eva_chunk``) gives every
attention layer its own ``mu``, ``phi`` parameters (logical axes ``kv_heads``, ``head_dim``) and,
when decoding, an :class:`EvaCache` in place of the full key/value cache (``proxy_jax.model.transformer``).

TPU kernels. Only this XLA path exists. A splash (Pallas) path can be expressed and is not written
yet: append the ``T / C`` summaries to the keys and values (``[k; kbar]``, ``[v; vbar]``), give the
kernel a static ``T x (T + T / C)`` mask (causal blocks of ``W`` on the exact part, "chunk in an
earlier window" on the summary part; splash skips the empty blocks) and segment ids
``[segments; rightmost document of each chunk]``. The two-id rule above ("first or last token in the
query's document") reduces to that single id for complete chunks: a chunk whose first token's document
differs from its rightmost one ends that document, so no later window holds a query of it. The partial
chunk of decoding never goes through the kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Standard deviation of a standard normal truncated to [-2, 2]; dividing by it makes the truncated
# draw have exactly the requested std.
_TRUNC2_STD = 0.87962566103423978


def eva_init(rng, num_kv_heads: int, head_dim: int, dtype=jnp.float32):
    """``(mu_KxD, phi_KxD)``: truncated normal (at two sigma) with std ``head_dim ** -0.5``, one row per KV head."""
    std = head_dim**-0.5
    rng_mu, rng_phi = jax.random.split(rng)
    draw = lambda key: (jax.random.truncated_normal(key, -2.0, 2.0, (num_kv_heads, head_dim)) * (std / _TRUNC2_STD))
    return draw(rng_mu).astype(dtype), draw(rng_phi).astype(dtype)


def _check(window: int, chunk: int, num_heads: int, num_kv_heads: int) -> None:
    if chunk < 1 or window < 1 or window % chunk:
        raise ValueError(
            f"EVA window={window} must be a positive multiple of chunk={chunk}; pick a window divisible by the chunk."
        )
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(
            f"EVA got {num_heads} query heads and {num_kv_heads} key/value heads; the query heads must be a "
            "multiple of the key/value heads."
        )


def _masked_softmax(logits, mask, axis):
    """Softmax over ``axis`` restricted to ``mask``; an all-masked slice gives zeros (and zero gradients)."""
    filled = jnp.where(mask, logits, -jnp.inf)
    top = jax.lax.stop_gradient(jnp.max(filled, axis=axis, keepdims=True))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    # exp(-inf) = 0 with derivative 0, so masked entries never produce inf * 0 in the backward pass.
    e = jnp.exp(filled - top)
    denom = jnp.sum(e, axis=axis, keepdims=True)
    return e / jnp.where(denom > 0, denom, 1.0)


def chunk_summaries(k_BxNxCxKxD, v_BxNxCxKxD, segment_BxNxC, mu_KxD, phi_KxD):
    """Summaries of N chunks of C keys: ``(kbar_BxNxKxD, vbar_BxNxKxD)`` in float32 and the segment ids
    of each chunk's first and last token, ``(first_BxN, last_BxN)``."""
    c, d = k_BxNxCxKxD.shape[2], k_BxNxCxKxD.shape[-1]
    k_f = k_BxNxCxKxD.astype(jnp.float32)
    real_BxNxC = segment_BxNxC != 0
    last_real_BxN = jnp.max(jnp.where(real_BxNxC, jnp.arange(c), -1), axis=-1)
    rightmost_BxN = jnp.take_along_axis(segment_BxNxC, jnp.maximum(last_real_BxN, 0)[..., None], axis=-1)[..., 0]
    member_BxNxCx1 = (real_BxNxC & (segment_BxNxC == rightmost_BxN[..., None]))[..., None]
    key_logits_BxNxCxK = jnp.einsum("bnckd,kd->bnck", k_f, mu_KxD.astype(jnp.float32))
    value_logits_BxNxCxK = (d**-0.5) * (
        jnp.einsum("bnckd,kd->bnck", k_f, phi_KxD.astype(jnp.float32)) - 0.5 * jnp.sum(k_f * k_f, axis=-1)
    )
    key_w = _masked_softmax(key_logits_BxNxCxK, member_BxNxCx1, axis=2)
    value_w = _masked_softmax(value_logits_BxNxCxK, member_BxNxCx1, axis=2)
    kbar_BxNxKxD = jnp.einsum("bnck,bnckd->bnkd", key_w, k_f)
    vbar_BxNxKxD = jnp.einsum("bnck,bnckd->bnkd", value_w, v_BxNxCxKxD.astype(jnp.float32))
    return kbar_BxNxKxD, vbar_BxNxKxD, segment_BxNxC[..., 0], segment_BxNxC[..., -1]


def _joint_probs(local_logits, local_mask, summary_logits, summary_mask):
    """One softmax over two blocks of logits (last axes): unnormalised probabilities of each block and
    ``1 / denominator`` (0 for a row that sees nothing, so its output is 0)."""
    local = jnp.where(local_mask, local_logits, -jnp.inf)
    summary = jnp.where(summary_mask, summary_logits, -jnp.inf)
    # The result does not depend on the shift, so it carries no gradient.
    top = jax.lax.stop_gradient(jnp.maximum(local.max(-1, keepdims=True), summary.max(-1, keepdims=True)))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    p_local, p_summary = jnp.exp(local - top), jnp.exp(summary - top)
    denom = p_local.sum(-1) + p_summary.sum(-1)
    inv = jnp.where(denom > 0, 1.0 / jnp.where(denom > 0, denom, 1.0), 0.0)
    return p_local, p_summary, inv


def _summary_mask(first_BxN, last_BxN, segment_q_BxT, chunk_window_N, query_window_T):
    """Boolean [B, T, N]: chunk in a strictly earlier window, its first or last token in the query's document."""
    seg_BxTx1 = segment_q_BxT[..., None]
    same_doc = (first_BxN[:, None, :] == seg_BxTx1) | (last_BxN[:, None, :] == seg_BxTx1)
    earlier_TxN = chunk_window_N[None, :] < query_window_T[:, None]
    return earlier_TxN[None] & same_doc & (seg_BxTx1 != 0)


def _attend(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT, mu_KxD, phi_KxD, window, chunk):
    """EVA on a length padded to a multiple of ``window``; returns the padded output and the summaries."""
    b, t, h, d = q_BxTxHxD.shape
    kv = k_BxTxKxD.shape[2]
    _check(window, chunk, h, kv)
    if t <= window:
        # One window holds every query and no summary is visible to any of them: a window cut down to
        # the chunk-rounded length gives the same output without padding short sequences up to W.
        window = -(-t // chunk) * chunk
    pad = (-t) % window
    if pad:
        widths = ((0, 0), (0, pad), (0, 0), (0, 0))
        q_BxTxHxD, k_BxTxKxD, v_BxTxKxD = (jnp.pad(x, widths) for x in (q_BxTxHxD, k_BxTxKxD, v_BxTxKxD))
        segment_ids_BxT = jnp.pad(segment_ids_BxT, ((0, 0), (0, pad)))
    t += pad
    nw, n, g, scale = t // window, t // chunk, h // kv, np.float32(d**-0.5)
    summaries = chunk_summaries(
        k_BxTxKxD.reshape(b, n, chunk, kv, d),
        v_BxTxKxD.reshape(b, n, chunk, kv, d),
        segment_ids_BxT.reshape(b, n, chunk),
        mu_KxD,
        phi_KxD,
    )
    kbar_BxNxKxD, vbar_BxNxKxD, first_BxN, last_BxN = summaries

    q_BxWxLxKxGxD = q_BxTxHxD.reshape(b, nw, window, kv, g, d)
    k_BxWxLxKxD = k_BxTxKxD.reshape(b, nw, window, kv, d)
    v_BxWxLxKxD = v_BxTxKxD.reshape(b, nw, window, kv, d)
    seg_BxWxL = segment_ids_BxT.reshape(b, nw, window)

    local_BxWxKxGxLxL = scale * jnp.einsum(
        "bwikgd,bwjkd->bwkgij", q_BxWxLxKxGxD, k_BxWxLxKxD, preferred_element_type=jnp.float32
    )
    causal_LxL = np.tril(np.ones((window, window), bool))
    local_mask_BxWxLxL = (
        causal_LxL & (seg_BxWxL[..., :, None] == seg_BxWxL[..., None, :]) & (seg_BxWxL != 0)[..., :, None]
    )
    summary_BxWxKxGxLxN = scale * jnp.einsum(
        "bwikgd,bnkd->bwkgin", q_BxWxLxKxGxD, kbar_BxNxKxD.astype(q_BxTxHxD.dtype), preferred_element_type=jnp.float32
    )
    summary_mask_BxTxN = _summary_mask(
        first_BxN, last_BxN, segment_ids_BxT, np.arange(n) // (window // chunk), np.arange(t) // window
    )
    summary_mask_BxWxLxN = summary_mask_BxTxN.reshape(b, nw, window, n)

    p_local, p_summary, inv_BxWxKxGxL = _joint_probs(
        local_BxWxKxGxLxL,
        local_mask_BxWxLxL[:, :, None, None],
        summary_BxWxKxGxLxN,
        summary_mask_BxWxLxN[:, :, None, None],
    )
    out_BxWxKxGxLxD = jnp.einsum(
        "bwkgij,bwjkd->bwkgid", p_local.astype(v_BxTxKxD.dtype), v_BxWxLxKxD, preferred_element_type=jnp.float32
    ) + jnp.einsum(
        "bwkgin,bnkd->bwkgid",
        p_summary.astype(v_BxTxKxD.dtype),
        vbar_BxNxKxD.astype(v_BxTxKxD.dtype),
        preferred_element_type=jnp.float32,
    )
    out_BxWxKxGxLxD = out_BxWxKxGxLxD * inv_BxWxKxGxL[..., None]
    out_BxTxHxD = out_BxWxKxGxLxD.transpose(0, 1, 4, 2, 3, 5).reshape(b, t, h, d)
    return out_BxTxHxD.astype(q_BxTxHxD.dtype), summaries


def eva_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT, mu_KxD, phi_KxD, *, window: int, chunk: int):
    """EVA attention of the module docstring; returns ``out_BxTxHxD`` in the dtype of ``q``.

    ``segment_ids_BxT``: 0 for padding, documents numbered 1, 2, ... along the row. ``mu_KxD`` and
    ``phi_KxD`` are per KV head. Any ``T`` works (padded internally to a multiple of ``window``).
    """
    t = q_BxTxHxD.shape[1]
    out_BxTxHxD, _ = _attend(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT, mu_KxD, phi_KxD, window, chunk)
    return out_BxTxHxD[:, :t]


class EvaCache(NamedTuple):
    """Constant-size decoding state (a pytree). Window slot ``j`` holds position ``(index // W) * W + j``
    once written; summary slot ``c`` holds chunk ``c`` (final once its last token was fed)."""

    k_BxLxKxD: jax.Array  # current window's exact keys (L = window)
    v_BxLxKxD: jax.Array
    segment_BxL: jax.Array  # int32 segment ids of the window slots
    kbar_BxNxKxD: jax.Array  # float32 chunk summaries (N = ceil(max_len / chunk))
    vbar_BxNxKxD: jax.Array
    first_BxN: jax.Array  # segment id of each chunk's first token
    last_BxN: jax.Array  # segment id of each chunk's last token
    index: jax.Array  # int32 scalar: absolute position of the next token


def eva_cache_init(batch: int, max_len: int, num_kv_heads: int, head_dim: int, *, window: int, chunk: int, dtype):
    """An empty :class:`EvaCache` for up to ``max_len`` tokens (keys/values stored in ``dtype``)."""
    _check(window, chunk, num_kv_heads, num_kv_heads)
    n = -(-max_len // chunk)
    z = lambda shape, dt: jnp.zeros(shape, dt)
    return EvaCache(
        k_BxLxKxD=z((batch, window, num_kv_heads, head_dim), dtype),
        v_BxLxKxD=z((batch, window, num_kv_heads, head_dim), dtype),
        segment_BxL=z((batch, window), jnp.int32),
        kbar_BxNxKxD=z((batch, n, num_kv_heads, head_dim), jnp.float32),
        vbar_BxNxKxD=z((batch, n, num_kv_heads, head_dim), jnp.float32),
        first_BxN=z((batch, n), jnp.int32),
        last_BxN=z((batch, n), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )


def eva_prefill(
    q_BxPxHxD, k_BxPxKxD, v_BxPxKxD, segment_BxP, mu_KxD, phi_KxD, *, window: int, chunk: int, max_len: int
):
    """Attend over a prompt of P tokens and build the cache for generating up to ``max_len`` tokens in all.

    Returns ``(out_BxPxHxD, cache)``; ``out`` equals :func:`eva_attention` on the prompt.
    """
    b, p, _, d = q_BxPxHxD.shape
    kv = k_BxPxKxD.shape[2]
    if p > max_len:
        raise ValueError(f"EVA prompt length {p} exceeds max_len={max_len}; raise max_len to at least {p}.")
    out_BxTxHxD, (kbar, vbar, first, last) = _attend(
        q_BxPxHxD, k_BxPxKxD, v_BxPxKxD, segment_BxP, mu_KxD, phi_KxD, window, chunk
    )
    cache = eva_cache_init(b, max_len, kv, d, window=window, chunk=chunk, dtype=k_BxPxKxD.dtype)
    # Summaries of the prompt's chunks (the last one may be partial; decoding rewrites it).
    used = min(-(-p // chunk), cache.first_BxN.shape[1])
    start = (p // window) * window  # first position of the window the next token falls in
    tail = p - start
    pad_to_window = lambda x: jnp.pad(x[:, start:], ((0, 0), (0, window - tail)) + ((0, 0),) * (x.ndim - 2))
    cache = cache._replace(
        k_BxLxKxD=pad_to_window(k_BxPxKxD),
        v_BxLxKxD=pad_to_window(v_BxPxKxD),
        segment_BxL=pad_to_window(segment_BxP.astype(jnp.int32)),
        kbar_BxNxKxD=cache.kbar_BxNxKxD.at[:, :used].set(kbar[:, :used]),
        vbar_BxNxKxD=cache.vbar_BxNxKxD.at[:, :used].set(vbar[:, :used]),
        first_BxN=cache.first_BxN.at[:, :used].set(first[:, :used]),
        last_BxN=cache.last_BxN.at[:, :used].set(last[:, :used]),
        index=jnp.asarray(p, jnp.int32),
    )
    return out_BxTxHxD[:, :p], cache


def eva_decode_step(
    cache: EvaCache, q_Bx1xHxD, k_Bx1xKxD, v_Bx1xKxD, segment_Bx1, mu_KxD, phi_KxD, *, window: int, chunk: int
):
    """Feed one token at position ``cache.index``; returns ``(out_Bx1xHxD, cache)``.

    Positions past the ``max_len`` the cache was made for are not supported (summary writes would clamp).
    """
    b, _, h, d = q_Bx1xHxD.shape
    kv = k_Bx1xKxD.shape[2]
    _check(window, chunk, h, kv)
    g, n, scale = h // kv, cache.first_BxN.shape[1], np.float32(d**-0.5)
    pos = cache.index
    slot, win = pos % window, pos // window
    seg_B = segment_Bx1[:, 0].astype(jnp.int32)
    put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x.astype(buf.dtype), slot, axis=1)
    k_win, v_win = put(cache.k_BxLxKxD, k_Bx1xKxD), put(cache.v_BxLxKxD, v_Bx1xKxD)
    seg_win = put(cache.segment_BxL, segment_Bx1)

    # Summary of the chunk this token falls in, over its tokens so far (later slots are stale).
    chunk_start = (slot // chunk) * chunk
    take = lambda buf: jax.lax.dynamic_slice_in_dim(buf, chunk_start, chunk, axis=1)[:, None]
    chunk_seg = jnp.where(chunk_start + jnp.arange(chunk) <= slot, take(seg_win), 0)
    kbar_c, vbar_c, first_c, last_c = chunk_summaries(take(k_win), take(v_win), chunk_seg, mu_KxD, phi_KxD)
    at = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x.astype(buf.dtype), pos // chunk, axis=1)
    cache = EvaCache(
        k_BxLxKxD=k_win,
        v_BxLxKxD=v_win,
        segment_BxL=seg_win,
        kbar_BxNxKxD=at(cache.kbar_BxNxKxD, kbar_c),
        vbar_BxNxKxD=at(cache.vbar_BxNxKxD, vbar_c),
        first_BxN=at(cache.first_BxN, first_c),
        last_BxN=at(cache.last_BxN, last_c),
        index=pos + 1,
    )

    q_BxKxGxD = q_Bx1xHxD[:, 0].reshape(b, kv, g, d)
    local_BxKxGxL = scale * jnp.einsum("bkgd,bjkd->bkgj", q_BxKxGxD, k_win, preferred_element_type=jnp.float32)
    local_mask_BxL = (jnp.arange(window) <= slot) & (seg_win == seg_B[:, None]) & (seg_B != 0)[:, None]
    summary_BxKxGxN = scale * jnp.einsum(
        "bkgd,bnkd->bkgn", q_BxKxGxD, cache.kbar_BxNxKxD.astype(q_Bx1xHxD.dtype), preferred_element_type=jnp.float32
    )
    summary_mask_BxN = _summary_mask(
        cache.first_BxN, cache.last_BxN, seg_B[:, None], jnp.arange(n) // (window // chunk), win[None]
    )[:, 0]
    p_local, p_summary, inv_BxKxG = _joint_probs(
        local_BxKxGxL, local_mask_BxL[:, None, None], summary_BxKxGxN, summary_mask_BxN[:, None, None]
    )
    dt = v_Bx1xKxD.dtype
    out_BxKxGxD = jnp.einsum(
        "bkgj,bjkd->bkgd", p_local.astype(dt), v_win.astype(dt), preferred_element_type=jnp.float32
    ) + jnp.einsum(
        "bkgn,bnkd->bkgd", p_summary.astype(dt), cache.vbar_BxNxKxD.astype(dt), preferred_element_type=jnp.float32
    )
    out_Bx1xHxD = (out_BxKxGxD * inv_BxKxG[..., None]).reshape(b, 1, h, d)
    return out_Bx1xHxD.astype(q_Bx1xHxD.dtype), cache


def eva_flops_per_token(
    seq_len: int, num_heads: int, head_dim: int, window: int, chunk: int, *, num_kv_heads: int | None = None
) -> float:
    """Training FLOPs per token of one EVA layer's attention (forward + backward = 3 x forward).

    Forward per query head: the two matmuls (q.key and p.value, 2 FLOPs per multiply-add) over the
    keys a query sees on average: ``min(W, T) / 2`` exact keys (the causal window counted at half)
    plus ``max(T - W, 0) / (2 C)`` summaries (window w sees ``w * W / C`` of them; the mean over the
    windows). Building the summaries adds about ``10 * head_dim`` FLOPs per token and KV head (the
    mu and phi products, |k|^2, and the two weighted sums).
    """
    kv = num_heads if num_kv_heads is None else num_kv_heads
    exact = min(window, seq_len) / 2.0
    summaries = max(seq_len - window, 0) / (2.0 * chunk)
    forward = 4.0 * num_heads * head_dim * (exact + summaries) + 10.0 * kv * head_dim
    return 3.0 * forward


__all__ = [
    "EvaCache",
    "chunk_summaries",
    "eva_attention",
    "eva_cache_init",
    "eva_decode_step",
    "eva_flops_per_token",
    "eva_init",
    "eva_prefill",
]
