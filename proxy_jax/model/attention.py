"""Attention back-ends behind one function, and rotary position embeddings.

Attention stays inside each document: query i may attend to key j only when ``j <= i`` (absolute slot,
``q_offset`` added for decoding), both carry the same segment id, and that id is not 0 (padding).
``"xla"`` is plain einsums and runs everywhere; ``"cudnn"`` is GPU flash attention through
``jax.nn.dot_product_attention``; ``"splash"`` is Pallas splash attention on TPU, run per shard.
Logits and softmax are float32 in every back-end.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax.model.args import ATTENTION_IMPLS

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
    scale = np.sqrt(d).astype(np.float32)
    # A finite fill keeps fully masked rows (padding queries) free of NaNs.
    fill = jnp.finfo(jnp.float32).min
    if kv == h:
        # One query head per KV head: no group axis, whose size-1 dimension costs XLA's CPU backend
        # attention-sized copies (the same products and sums as the grouped form below).
        logits_BxHxTxS = jnp.einsum(
            "bthd,bshd->bhts", q_BxTxHxD, k_BxSxKxD, preferred_element_type=jnp.float32
        ) / scale
        logits_BxHxTxS = jnp.where(mask_BxTxS[:, None], logits_BxHxTxS, fill)
        probs_BxHxTxS = jax.nn.softmax(logits_BxHxTxS, axis=-1).astype(v_BxSxKxD.dtype)
        return jnp.einsum("bhts,bshd->bthd", probs_BxHxTxS, v_BxSxKxD)
    q_BxTxKxGxD = q_BxTxHxD.reshape(b, t, kv, h // kv, d)
    logits_BxKxGxTxS = jnp.einsum(
        "btkgd,bskd->bkgts", q_BxTxKxGxD, k_BxSxKxD, preferred_element_type=jnp.float32
    ) / scale
    logits_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], logits_BxKxGxTxS, fill)
    probs_BxKxGxTxS = jax.nn.softmax(logits_BxKxGxTxS, axis=-1).astype(v_BxSxKxD.dtype)
    out_BxTxKxGxD = jnp.einsum("bkgts,bskd->btkgd", probs_BxKxGxTxS, v_BxSxKxD)
    return out_BxTxKxGxD.reshape(b, t, h, d)


def _attention_cudnn(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_q_BxT, segment_k_BxS, q_offset):
    if error := kernel_error("cudnn"):
        raise ValueError(error)
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


def splash_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_q_BxT, segment_k_BxS, *, interpret=False):
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
        if q_BxTxHxD.shape[1] != k_BxSxKxD.shape[1] or q_BxTxHxD.shape[1] % 128:
            # Cached decoding attends a few queries to many keys, and parameter init traces one token
            # (shorter than a kernel block): the plain path is the right tool for both.
            return _attention_xla(
                q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, _segment_mask(segment_q_BxT, segment_k_BxS, q_offset)
            )
        if error := kernel_error("splash", _target_platform()):
            raise ValueError(error)
        return splash_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_q_BxT, segment_k_BxS)
    raise ValueError(f"Unknown attention implementation {impl!r}; use one of {ATTENTION_IMPLS}.")


# "xla", "cudnn" and "splash" compute the same attention (only where each runs differs): which one a run
# uses is a choice of the machine it runs on, not a property of its parameters. "eva" is other maths.
KERNELS_BY_PLATFORM = {"cudnn": ("gpu",), "splash": ("tpu",)}


def kernel_error(impl: str, platform: str | None = None) -> str | None:
    """The sentence refusing ``model.attention=impl`` on ``platform`` (default: this process's backend), or
    None when it runs there. Checked before a run writes anything (``assemble.validate``)."""
    platform = platform or jax.default_backend()
    needs = KERNELS_BY_PLATFORM.get(impl)
    if needs is None or platform in needs:
        return None
    device = {"gpu": "a CUDA GPU", "tpu": "a TPU"}[needs[0]]
    return (f"model.attention={impl!r} needs {device} but the backend is {platform!r}; use "
            "--config.model.attention=xla (the same attention, on every backend).")


def runtime_kernel(impl: str, platform: str | None = None) -> str:
    """The kernel a restored run uses on ``platform``: ``impl`` where it runs, else ``"xla"``, which computes the
    same attention (a run trained with cuDNN is evaluated, sampled and exported on a CPU host)."""
    return "xla" if kernel_error(impl, platform) else impl


def _target_platform() -> str:
    """The platform the step is compiled for: the devices of the mesh set with ``jax.set_mesh`` (a TPU
    topology when compiling ahead of time on a CPU host), else the default backend."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    return getattr(device, "platform", None) or jax.default_backend()


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
