"""The Flax Linen decoder: embedding, pre-norm blocks (RMSNorm, attention, SwiGLU), output heads.

See the package docstring (``proxy_jax.model``) for the architecture, the heads and the KV cache.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from proxy_jax import vocab
from proxy_jax.model.args import REMAT_POLICIES, ModelArgs
from proxy_jax.model import eva
from proxy_jax.model.attention import apply_rope, attention


def _dtype(name: str):
    return jnp.dtype(name)


def _dense_init(in_axis, out_axis, scale: float = 1.0):
    return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis)


class RMSNorm(nn.Module):
    args: ModelArgs

    @nn.compact
    def __call__(self, x_BxLxD):
        w = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
            (x_BxLxD.shape[-1],),
            _dtype(self.args.param_dtype),
        )
        x = x_BxLxD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.args.norm_eps)
        return (x * (1.0 + w.astype(jnp.float32))).astype(_dtype(self.args.dtype))


class Attention(nn.Module):
    args: ModelArgs
    decode: bool = False

    @nn.compact
    def __call__(self, x_BxLxD, segment_ids_BxL, positions_BxL):
        a = self.args
        dt, pdt = _dtype(a.dtype), _dtype(a.param_dtype)
        out_scale = 1.0 / (2 * a.num_layers)

        def proj(name, heads, heads_axis):
            kernel = self.param(
                name,
                nn.with_logical_partitioning(_dense_init(0, (1, 2)), ("embed", heads_axis, "head_dim")),
                (a.d_model, heads, a.head_dim),
                pdt,
            )
            return jnp.einsum("bld,dhk->blhk", x_BxLxD, kernel.astype(dt))

        q_BxLxHxK = apply_rope(proj("query", a.num_heads, "heads"), positions_BxL, a.rope_theta)
        k_BxLxNxK = apply_rope(proj("key", a.num_kv_heads, "kv_heads"), positions_BxL, a.rope_theta)
        v_BxLxNxK = proj("value", a.num_kv_heads, "kv_heads")
        q_BxLxHxK = nn.with_logical_constraint(q_BxLxHxK, ("batch", "length", "act_heads", None))

        if a.attention == "eva":
            out_BxLxHxK = self._eva(q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL)
        else:
            out_BxLxHxK = self._exact(q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL)
        out_kernel = self.param(
            "out",
            nn.with_logical_partitioning(_dense_init((0, 1), 2, out_scale), ("heads", "head_dim", "embed")),
            (a.num_heads, a.head_dim, a.d_model),
            pdt,
        )
        return jnp.einsum("blhk,hkd->bld", out_BxLxHxK.astype(dt), out_kernel.astype(dt))

    def _exact(self, q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL):
        """Exact attention; decoding keeps every key and value of the generation in the cache."""
        a = self.args
        segment_k_BxS, q_offset = segment_ids_BxL, 0
        if self.decode:
            initialized = self.has_variable("cache", "cached_key")
            cached_k = self.variable("cache", "cached_key", jnp.zeros, k_BxLxNxK.shape, k_BxLxNxK.dtype)
            cached_v = self.variable("cache", "cached_value", jnp.zeros, v_BxLxNxK.shape, v_BxLxNxK.dtype)
            cached_s = self.variable("cache", "cached_segment_ids", jnp.zeros, segment_ids_BxL.shape, jnp.int32)
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if initialized:
                i = index.value
                cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BxLxNxK, (0, i, 0, 0))
                cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BxLxNxK, (0, i, 0, 0))
                cached_s.value = jax.lax.dynamic_update_slice(
                    cached_s.value, segment_ids_BxL.astype(jnp.int32), (0, i)
                )
                index.value = i + q_BxLxHxK.shape[1]
                k_BxLxNxK, v_BxLxNxK, segment_k_BxS, q_offset = cached_k.value, cached_v.value, cached_s.value, i

        return attention(
            q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL, segment_k_BxS, a.attention, q_offset=q_offset
        )

    def _eva(self, q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL):
        """EVA attention with this layer's learned ``mu``, ``phi`` ([kv_heads, head_dim], float32 like
        every parameter); decoding keeps an :class:`~proxy_jax.model.eva.EvaCache` of constant size
        per generation length (one window of keys plus one summary per chunk) as ``eva_*`` variables.

        Decoding protocol: the first call after ``init`` feeds the whole prompt (``L > 1``: prefill),
        every later call one token (``L == 1``); a 1-token prompt is a single decoding step.
        """
        a = self.args
        w, c = a.eva_window, a.eva_chunk
        param = lambda name, pick: self.param(
            name,
            nn.with_logical_partitioning(lambda key, shape, dtype: eva.eva_init(key, *shape, dtype)[pick],
                                         ("kv_heads", "head_dim")),
            (a.num_kv_heads, a.head_dim),
            _dtype(a.param_dtype),
        )
        mu_KxD, phi_KxD = param("eva_mu", 0), param("eva_phi", 1)
        if not self.decode or not self.has_variable("cache", "eva_index"):
            if self.decode:  # init: an empty cache sized by the inputs (the whole generation)
                b, max_len = segment_ids_BxL.shape
                empty = eva.eva_cache_init(b, max_len, a.num_kv_heads, a.head_dim, window=w, chunk=c,
                                           dtype=k_BxLxNxK.dtype)
                for name, value in zip(eva.EvaCache._fields, empty):
                    self.variable("cache", f"eva_{name}", lambda v=value: v)
            return eva.eva_attention(
                q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL, mu_KxD, phi_KxD, window=w, chunk=c
            )
        slots = [self.variable("cache", f"eva_{name}") for name in eva.EvaCache._fields]
        cache = eva.EvaCache(*(slot.value for slot in slots))
        if q_BxLxHxK.shape[1] == 1:
            out_BxLxHxK, cache = eva.eva_decode_step(
                cache, q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL, mu_KxD, phi_KxD, window=w, chunk=c
            )
        else:
            out_BxLxHxK, cache = eva.eva_prefill(
                q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL, mu_KxD, phi_KxD, window=w, chunk=c,
                max_len=cache.first_BxN.shape[1] * c,
            )
        for slot, value in zip(slots, cache):
            slot.value = value
        return out_BxLxHxK


class MLP(nn.Module):
    args: ModelArgs

    @nn.compact
    def __call__(self, x_BxLxD):
        a = self.args
        dt, pdt = _dtype(a.dtype), _dtype(a.param_dtype)

        def kernel(name, shape, names, init):
            return self.param(name, nn.with_logical_partitioning(init, names), shape, pdt).astype(dt)

        gate = kernel("gate", (a.d_model, a.d_ff), ("embed", "mlp"), _dense_init(0, 1))
        up = kernel("up", (a.d_model, a.d_ff), ("embed", "mlp"), _dense_init(0, 1))
        down = kernel("down", (a.d_ff, a.d_model), ("mlp", "embed"), _dense_init(0, 1, 1.0 / (2 * a.num_layers)))
        h_BxLxF = jax.nn.silu(x_BxLxD @ gate) * (x_BxLxD @ up)
        h_BxLxF = nn.with_logical_constraint(h_BxLxF, ("batch", "length", "act_mlp"))
        return h_BxLxF @ down


class Block(nn.Module):
    args: ModelArgs
    decode: bool = False

    @nn.compact
    def __call__(self, x_BxLxD, segment_ids_BxL, positions_BxL):
        x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "act_embed"))
        h = Attention(self.args, self.decode, name="attn")(
            RMSNorm(self.args, name="attn_norm")(x_BxLxD), segment_ids_BxL, positions_BxL
        )
        x_BxLxD = x_BxLxD + h
        x_BxLxD = x_BxLxD + MLP(self.args, name="mlp")(RMSNorm(self.args, name="mlp_norm")(x_BxLxD))
        return x_BxLxD, None


def head_logits(x_BxLxD, w_DxHxV, w_DxRxC, dtype):
    """Float32 logits of the main heads and (if ``w_DxRxC`` is not None) the raw heads from the final
    normed hidden state; the one place the output matmuls are written (the chunked loss reuses it)."""
    if w_DxHxV.shape[1] == 1:
        # One head: a plain [D, V] matmul (a size-1 head axis makes XLA's CPU backend transpose the weight's
        # gradient); the [B, L, 1, V] result is the same array.
        logits_BxLxV = jnp.einsum("bld,dv->blv", x_BxLxD, w_DxHxV[:, 0].astype(dtype), preferred_element_type=jnp.float32)
        logits_BxLxHxV = logits_BxLxV[:, :, None, :]
    else:
        logits_BxLxHxV = jnp.einsum("bld,dhv->blhv", x_BxLxD, w_DxHxV.astype(dtype),
                                    preferred_element_type=jnp.float32)
    raw_logits_BxLxRxC = None
    if w_DxRxC is not None:
        raw_logits_BxLxRxC = jnp.einsum(
            "bld,drc->blrc", x_BxLxD, w_DxRxC.astype(dtype), preferred_element_type=jnp.float32
        )
    return logits_BxLxHxV, raw_logits_BxLxRxC


class Transformer(nn.Module):
    """``__call__(tokens, segment_ids, positions) -> (logits_BxLxHxV, raw_logits_BxLxRx320 or None)``.

    Logits are float32. The embedded inputs pass through ``self.perturb("embeddings", ...)`` so that
    gradients with respect to them can be taken (tests use this for the causality check).
    With ``heads=False`` the output matmuls are skipped and ``(x_BxLxD, w_DxHxV, w_DxRxC or None)`` is
    returned (final normed hidden state and head weights, for :func:`head_logits` applied per chunk of
    positions by a loss that never holds all logits at once); parameters are the same either way.
    """

    args: ModelArgs

    @nn.compact
    def __call__(self, tokens_BxL, segment_ids_BxL, positions_BxL, *, decode: bool = False, heads: bool = True):
        a = self.args
        dt, pdt = _dtype(a.dtype), _dtype(a.param_dtype)
        embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
            (a.padded_vocab_size, a.d_model),
            pdt,
        )
        # Gather the (compute-dtype) table once, as FSDP does for every weight, then look rows up
        # locally; a gather from a table sharded on both axes makes XLA replicate it implicitly.
        table_VxD = nn.with_logical_constraint(embedding.astype(dt), ("act_vocab", "act_embed"))
        x_BxLxD = jnp.take(table_VxD, tokens_BxL, axis=0)
        x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "act_embed"))
        x_BxLxD = self.perturb("embeddings", x_BxLxD)

        block = Block
        policy = REMAT_POLICIES[a.remat_policy]
        if a.remat_policy != "none" and not decode:
            block = nn.remat(Block, policy=policy, prevent_cse=not a.scan_layers)
        if a.scan_layers:
            stack = nn.scan(
                block,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=a.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_BxLxD, _ = stack(a, decode, name="layers")(x_BxLxD, segment_ids_BxL, positions_BxL)
        else:
            for i in range(a.num_layers):
                x_BxLxD, _ = block(a, decode, name=f"layer_{i}")(x_BxLxD, segment_ids_BxL, positions_BxL)

        x_BxLxD = RMSNorm(a, name="final_norm")(x_BxLxD)
        head_init = nn.initializers.normal(0.02)
        w_DxHxV = self.param(
            "head",
            nn.with_logical_partitioning(head_init, ("embed", None, "vocab")),
            (a.d_model, a.num_pred_heads, a.padded_vocab_size),
            pdt,
        )
        w_DxRxC = None
        if a.num_raw_pred_heads:
            w_DxRxC = self.param(
                "raw_head",
                nn.with_logical_partitioning(head_init, ("embed", None, None)),
                (a.d_model, a.num_raw_pred_heads, vocab.RAW_VOCAB_SIZE),
                pdt,
            )
        if not heads:
            return x_BxLxD, w_DxHxV, w_DxRxC
        return head_logits(x_BxLxD, w_DxHxV, w_DxRxC, dt)


def init_cache(model: Transformer, batch_size: int, max_len: int) -> Any:
    """Zeroed KV cache (``"cache"`` collection) for decoding up to ``max_len`` tokens per row."""
    zeros_BxL = jnp.zeros((batch_size, max_len), jnp.int32)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), zeros_BxL, zeros_BxL, zeros_BxL, decode=True)["cache"]
    )
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
