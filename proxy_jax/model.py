"""The decoder-only Transformer that reads bytes and compressed symbols from one embedding table.

Architecture: the paper's EvaByte decoder with exact attention in place of EVA's pooled summaries of
distant chunks: pre-norm blocks, RMSNorm with a ``(1 + w)`` scale (``w`` starts at 0), SwiGLU MLP, rotary position embeddings driven by the per-document ``positions`` input, optional
grouped-query attention, no biases, untied output heads. Parameters are float32; compute runs in
``config.model.dtype`` (bfloat16 by default); attention logits and softmax are always float32.

Attention stays inside each document: query i may attend to key j only when ``j <= i``, both carry
the same segment id, and that id is not 0 (padding). Three implementations sit behind the single
function :func:`attention`: ``"xla"`` (plain einsums, runs everywhere), ``"cudnn"`` (GPU flash
attention through ``jax.nn.dot_product_attention``) and ``"splash"`` (Pallas splash attention, TPU).

Outputs: ``num_pred_heads`` main heads over the full (padded) vocabulary, head ``h`` predicting the
token ``h + 1`` places ahead, and ``num_raw_pred_heads`` extra 320-way heads that continue the chain
(raw head ``j`` predicts ``num_pred_heads + j + 1`` places ahead) over specials and raw bytes only.

Every parameter carries logical axis names (``embed``, ``vocab``, ``heads``, ``kv_heads``,
``head_dim``, ``mlp``, ``layers``); ``config.mesh.rules`` maps them onto the device mesh.
Activations use ``batch``/``length`` plus ``act_*`` names that are unsharded unless a rule says so.

With ``decode=True`` the attention layers keep a key/value cache in the ``"cache"`` collection
(``cached_key``, ``cached_value``, ``cached_segment_ids``, ``cache_index``): create it by running
``init`` (or ``jax.eval_shape`` of it) on inputs of the full generation length, then feed the prompt
(any length) and afterwards one token per call with ``mutable=["cache"]``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from proxy_jax import vocab

ATTENTION_IMPLS = ("xla", "cudnn", "splash")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}

# (d_model, d_ff, num_layers, num_heads); head_dim is 128 for the paper's sizes.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=128, d_ff=512, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=32),
    "m1_tiny": dict(d_model=128, d_ff=256, num_layers=4, num_heads=2, num_kv_heads=2, head_dim=64),
    "m1_small": dict(d_model=256, d_ff=1024, num_layers=6, num_heads=4, num_kv_heads=4, head_dim=64),
    "m1_40m": dict(d_model=512, d_ff=2048, num_layers=10, num_heads=8, num_kv_heads=8, head_dim=64),
    "small": dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8, num_kv_heads=8, head_dim=64),
    "0.5B": dict(d_model=1024, d_ff=4096, num_layers=28, num_heads=8, num_kv_heads=8, head_dim=128),
    "1.5B": dict(d_model=2048, d_ff=8192, num_layers=20, num_heads=16, num_kv_heads=16, head_dim=128),
    "4B": dict(d_model=3072, d_ff=9216, num_layers=32, num_heads=24, num_kv_heads=24, head_dim=128),
    "7B": dict(d_model=4096, d_ff=12288, num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128),
    "14B": dict(d_model=5120, d_ff=16384, num_layers=40, num_heads=40, num_kv_heads=40, head_dim=128),
}


def apply_size(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Set ``config.model``'s shape fields to the preset ``name`` (a key of ``SIZES``); returns config."""
    if name not in SIZES:
        raise ValueError(f"Unknown model size {name!r}; choose one of {sorted(SIZES)}.")
    for key, value in SIZES[name].items():
        config.model[key] = value
    return config


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    """Static model hyper-parameters (hashable, so they can key jit caches)."""

    vocab_size: int  # logical size: 320 + compressed symbols
    padded_vocab_size: int  # embedding rows: vocab_size rounded up to a multiple of 128
    num_layers: int
    d_model: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    rope_theta: float = 100_000.0
    norm_eps: float = 1e-6
    num_pred_heads: int = 1
    num_raw_pred_heads: int = 0
    attention: str = "xla"
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"

    @classmethod
    def from_config(cls, model_config: ml_collections.ConfigDict, vocab_size: int) -> "ModelArgs":
        """Build from ``config.model``; ``vocab_size`` is used unless ``config.model.vocab_size`` is set."""
        size = int(model_config.get("vocab_size", 0) or vocab_size)
        if size < vocab.RAW_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size {size} is smaller than the {vocab.RAW_VOCAB_SIZE} ids of specials and bytes; "
                "pass 320 + the proxy's symbol count."
            )
        padded = -(-size // vocab.PAD_MULTIPLE) * vocab.PAD_MULTIPLE
        args = cls(
            vocab_size=size,
            padded_vocab_size=padded,
            num_layers=int(model_config.num_layers),
            d_model=int(model_config.d_model),
            num_heads=int(model_config.num_heads),
            num_kv_heads=int(model_config.num_kv_heads),
            head_dim=int(model_config.head_dim),
            d_ff=int(model_config.d_ff),
            rope_theta=float(model_config.rope_theta),
            norm_eps=float(model_config.norm_eps),
            num_pred_heads=int(model_config.num_pred_heads),
            num_raw_pred_heads=int(model_config.num_raw_pred_heads),
            attention=str(model_config.attention),
            dtype=str(model_config.dtype),
            param_dtype=str(model_config.param_dtype),
            scan_layers=bool(model_config.scan_layers),
            remat_policy=str(model_config.remat_policy),
        )
        args.check()
        return args

    def check(self) -> None:
        """Raise one sentence for a hyper-parameter the model cannot be built with."""
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"model.attention={self.attention!r} is unknown; use one of {ATTENTION_IMPLS}.")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"model.remat_policy={self.remat_policy!r} is unknown; use one of {sorted(REMAT_POLICIES)}."
            )
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_heads={self.num_heads} is not a multiple of model.num_kv_heads={self.num_kv_heads}; "
                "pick num_kv_heads dividing num_heads."
            )
        if self.head_dim % 2:
            raise ValueError(f"model.head_dim={self.head_dim} must be even for rotary embeddings.")
        if self.num_pred_heads < 1 or self.num_raw_pred_heads < 0:
            raise ValueError(
                f"model.num_pred_heads={self.num_pred_heads} must be >= 1 and "
                f"model.num_raw_pred_heads={self.num_raw_pred_heads} >= 0."
            )

    @property
    def num_targets(self) -> int:
        return self.num_pred_heads + self.num_raw_pred_heads


def count_params(args: ModelArgs, *, include_embedding: bool = True) -> int:
    """Exact parameter count of :class:`Transformer` (the embedding table is optional)."""
    d, h, kv, hd, f = args.d_model, args.num_heads, args.num_kv_heads, args.head_dim, args.d_ff
    per_layer = 2 * d + d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f
    heads = d * args.num_pred_heads * args.padded_vocab_size + d * args.num_raw_pred_heads * vocab.RAW_VOCAB_SIZE
    total = args.num_layers * per_layer + d + heads
    if include_embedding:
        total += args.padded_vocab_size * d
    return total


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Training FLOPs per input token (forward + backward), for MFU.

    ``6 * N + 12 * num_layers * num_heads * head_dim * seq_len`` where N counts every parameter that
    takes part in a matmul (all but the embedding table, which is a lookup; the output heads are
    included). The first term is 2 FLOPs per multiply-add, times 3 for forward + backward; the second
    is the two attention matmuls (QK^T and AV, 2 * 2 * heads * head_dim * seq_len per layer forward),
    times 3, counted over the full square as is conventional (causal masking is not discounted).
    """
    n = count_params(args, include_embedding=False)
    return 6.0 * n + 12.0 * args.num_layers * args.num_heads * args.head_dim * seq_len


def _dtype(name: str):
    return jnp.dtype(name)


# ---- attention ------------------------------------------------------------------------------------


def _segment_mask(segment_q_BxT, segment_k_BxS, q_offset):
    """Boolean [B, T, S]: causal (by absolute slot), same segment, not padding."""
    t = segment_q_BxT.shape[1]
    s = segment_k_BxS.shape[1]
    q_idx = jnp.arange(t)[:, None] + q_offset
    k_idx = jnp.arange(s)[None, :]
    causal_TxS = k_idx <= q_idx
    same_BxTxS = segment_q_BxT[:, :, None] == segment_k_BxS[:, None, :]
    real_BxS = segment_k_BxS[:, None, :] != 0
    return causal_TxS[None] & same_BxTxS & real_BxS


def _attention_xla(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS):
    b, t, h, d = q_BxTxHxD.shape
    kv = k_BxSxKxD.shape[2]
    q_BxTxKxGxD = q_BxTxHxD.reshape(b, t, kv, h // kv, d)
    logits_BxKxGxTxS = jnp.einsum(
        "btkgd,bskd->bkgts", q_BxTxKxGxD, k_BxSxKxD, preferred_element_type=jnp.float32
    ) / np.sqrt(d).astype(np.float32)
    # A finite fill keeps fully masked rows (padding queries) free of NaNs.
    logits_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], logits_BxKxGxTxS, jnp.finfo(jnp.float32).min)
    probs_BxKxGxTxS = jax.nn.softmax(logits_BxKxGxTxS, axis=-1).astype(v_BxSxKxD.dtype)
    out_BxTxKxGxD = jnp.einsum("bkgts,bskd->btkgd", probs_BxKxGxTxS, v_BxSxKxD)
    return out_BxTxKxGxD.reshape(b, t, h, d)


def _attention_cudnn(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_q_BxT, segment_k_BxS, q_offset):
    if jax.default_backend() != "gpu":
        raise ValueError(
            f"model.attention='cudnn' needs a CUDA GPU but the backend is {jax.default_backend()!r}; "
            "use model.attention='xla'."
        )
    square = isinstance(q_offset, int) and q_offset == 0 and q_BxTxHxD.shape[1] == k_BxSxKxD.shape[1]
    if square:
        # cuDNN applies causality itself (and skips the masked blocks); the bias carries documents.
        mask_BxTxS = (segment_q_BxT[:, :, None] == segment_k_BxS[:, None, :]) & (segment_k_BxS[:, None, :] != 0)
    else:
        mask_BxTxS = _segment_mask(segment_q_BxT, segment_k_BxS, q_offset)
    return jax.nn.dot_product_attention(
        q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask=mask_BxTxS[:, None], is_causal=square, implementation="cudnn"
    )


@functools.lru_cache(maxsize=16)
def _splash_kernel(num_heads: int, seq_q: int, seq_k: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    mask = splash.MultiHeadMask([splash.CausalMask((seq_q, seq_k)) for _ in range(num_heads)])
    return splash.make_splash_mha_single_device(mask, interpret=interpret)


def _attention_splash(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_q_BxT, segment_k_BxS, *, interpret=False):
    """Pallas splash attention; under a (data, fsdp, tensor) mesh it runs per shard via shard_map.

    Padding (segment 0) queries attend to other padding here instead of to nothing: their outputs
    differ from the other implementations but are never used. ``interpret=True`` runs the kernel in
    the Pallas interpreter (any backend; for tests).
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    d = q_BxTxHxD.shape[3]
    groups = q_BxTxHxD.shape[2] // k_BxSxKxD.shape[2]

    def per_shard(q, k, v, seg_q, seg_k):
        # The kernel wants [heads, length, head_dim] per example, pre-scaled queries, full KV heads.
        k = jnp.repeat(k, groups, axis=2)
        v = jnp.repeat(v, groups, axis=2)
        kernel = _splash_kernel(q.shape[2], q.shape[1], k.shape[1], interpret)
        q = (q / np.sqrt(d)).astype(q.dtype)

        def one(q_TxHxD, k_SxHxD, v_SxHxD, sq, sk):
            out = kernel(
                q_TxHxD.swapaxes(0, 1),
                k_SxHxD.swapaxes(0, 1),
                v_SxHxD.swapaxes(0, 1),
                segment_ids=splash.SegmentIds(q=sq, kv=sk),
            )
            return out.swapaxes(0, 1)

        return jax.vmap(one)(q, k, v, seg_q, seg_k)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not {"data", "fsdp", "tensor"} <= set(mesh.axis_names):
        return per_shard(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_q_BxT, segment_k_BxS)
    P = jax.sharding.PartitionSpec
    qkv_spec = P(("data", "fsdp"), None, "tensor", None)
    seg_spec = P(("data", "fsdp"), None)
    return jax.shard_map(
        per_shard,
        mesh=mesh,
        in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec, seg_spec),
        out_specs=qkv_spec,
        check_vma=False,
    )(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_q_BxT, segment_k_BxS)


def attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_q_BxT, segment_k_BxS, impl: str, *, q_offset=0):
    """Document-masked causal attention with grouped KV heads; returns [B, T, H, D].

    Query i (absolute slot ``i + q_offset``) sees key j when ``j <= i + q_offset``, the segment ids
    are equal and nonzero. ``q_offset`` is nonzero only when decoding against a KV cache.
    """
    if impl == "xla":
        return _attention_xla(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, _segment_mask(segment_q_BxT, segment_k_BxS, q_offset))
    if impl == "cudnn":
        return _attention_cudnn(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_q_BxT, segment_k_BxS, q_offset)
    if impl == "splash":
        if q_BxTxHxD.shape[1] != k_BxSxKxD.shape[1]:
            # Cached decoding attends a few queries to many keys: the plain path is the right tool.
            return _attention_xla(
                q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, _segment_mask(segment_q_BxT, segment_k_BxS, q_offset)
            )
        if jax.default_backend() != "tpu":
            raise ValueError(
                f"model.attention='splash' needs a TPU but the backend is {jax.default_backend()!r}; "
                "use model.attention='xla' (or 'cudnn' on GPU)."
            )
        return _attention_splash(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_q_BxT, segment_k_BxS)
    raise ValueError(f"Unknown attention implementation {impl!r}; use one of {ATTENTION_IMPLS}.")


def apply_rope(x_BxLxHxD, positions_BxL, theta: float):
    """Rotary embedding (rotate-half layout) at the given per-token positions, computed in float32."""
    d = x_BxLxHxD.shape[-1]
    freqs = theta ** (-np.arange(0, d, 2, dtype=np.float32) / d)
    angles_BxLxF = positions_BxL.astype(jnp.float32)[..., None] * freqs
    sin = jnp.sin(angles_BxLxF)[:, :, None, :]
    cos = jnp.cos(angles_BxLxF)[:, :, None, :]
    x = x_BxLxHxD.astype(jnp.float32)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxHxD.dtype)


# ---- modules --------------------------------------------------------------------------------------


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
                index.value = i + x_BxLxD.shape[1]
                k_BxLxNxK, v_BxLxNxK, segment_k_BxS, q_offset = cached_k.value, cached_v.value, cached_s.value, i

        out_BxLxHxK = attention(
            q_BxLxHxK, k_BxLxNxK, v_BxLxNxK, segment_ids_BxL, segment_k_BxS, a.attention, q_offset=q_offset
        )
        out_kernel = self.param(
            "out",
            nn.with_logical_partitioning(_dense_init((0, 1), 2, out_scale), ("heads", "head_dim", "embed")),
            (a.num_heads, a.head_dim, a.d_model),
            pdt,
        )
        return jnp.einsum("blhk,hkd->bld", out_BxLxHxK.astype(dt), out_kernel.astype(dt))


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


class Transformer(nn.Module):
    """``__call__(tokens, segment_ids, positions) -> (logits_BxLxHxV, raw_logits_BxLxRx320 or None)``.

    Logits are float32. The embedded inputs pass through ``self.perturb("embeddings", ...)`` so that
    gradients with respect to them can be taken (tests use this for the causality check).
    """

    args: ModelArgs

    @nn.compact
    def __call__(self, tokens_BxL, segment_ids_BxL, positions_BxL, *, decode: bool = False):
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
        logits_BxLxHxV = jnp.einsum(
            "bld,dhv->blhv", x_BxLxD, w_DxHxV.astype(dt), preferred_element_type=jnp.float32
        )
        raw_logits_BxLxRxC = None
        if a.num_raw_pred_heads:
            w_DxRxC = self.param(
                "raw_head",
                nn.with_logical_partitioning(head_init, ("embed", None, None)),
                (a.d_model, a.num_raw_pred_heads, vocab.RAW_VOCAB_SIZE),
                pdt,
            )
            raw_logits_BxLxRxC = jnp.einsum(
                "bld,drc->blrc", x_BxLxD, w_DxRxC.astype(dt), preferred_element_type=jnp.float32
            )
        return logits_BxLxHxV, raw_logits_BxLxRxC


def init_cache(model: Transformer, batch_size: int, max_len: int) -> Any:
    """Zeroed KV cache (``"cache"`` collection) for decoding up to ``max_len`` tokens per row."""
    zeros_BxL = jnp.zeros((batch_size, max_len), jnp.int32)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), zeros_BxL, zeros_BxL, zeros_BxL, decode=True)["cache"]
    )
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
