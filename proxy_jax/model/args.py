"""Static hyper-parameters of the decoder (``ModelArgs``), its exact parameter count and FLOP formula.

``ModelArgs`` is built from ``config.model`` and the vocabulary the run's proxy needs; it is hashable, so
it keys jit caches. Size presets (the paper's 0.5B..14B shapes) live in ``proxy_jax.recipes``.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from proxy_jax import config as config_lib
from proxy_jax import vocab
from proxy_jax.model.eva import eva_flops_per_token

ATTENTION_IMPLS = ("xla", "cudnn", "splash", "eva")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}

# ``model.scan_layers = "auto"`` scans the layers on TPUs and GPUs (compile time stays flat in depth, as
# large models and pods need) and on a CPU only from this many layers: below it XLA's CPU backend runs the
# unrolled stack faster (launch/bench_step.py, BENCHMARKS.md) and compiles it in seconds.
SCAN_MIN_LAYERS_CPU = 16


def resolve_scan_layers(value, num_layers: int, platform: str | None = None) -> bool:
    """``model.scan_layers`` as a bool: True/False as given, ``"auto"`` by ``platform`` (default: the
    backend this process computes on) and depth (:data:`SCAN_MIN_LAYERS_CPU`)."""
    if isinstance(value, (bool, int)) and not isinstance(value, str):
        return bool(value)
    spelled = str(value).strip().lower()
    if spelled in ("true", "false"):
        return spelled == "true"
    if spelled != "auto":
        raise ValueError(f"--config.model.scan_layers={value!r} is not a switch; use True, False or 'auto'.")
    platform = platform or jax.default_backend()
    return platform != "cpu" or int(num_layers) >= SCAN_MIN_LAYERS_CPU


# Floating-point types a model computes or stores parameters in, and the spellings accepted for each.
DTYPES = {"float32": ("float32", "fp32", "f32", "single"), "bfloat16": ("bfloat16", "bf16"),
          "float16": ("float16", "fp16", "f16", "half")}


def dtype_name(value, key: str) -> str:
    """The canonical name of a dtype written as ``value`` (``fp16`` -> ``float16``); one sentence otherwise."""
    spelled = str(value).strip().lower()
    for name, spellings in DTYPES.items():
        if spelled in spellings:
            return name
    accepted = "; ".join(f"{name} ({', '.join(s for s in spellings if s != name)})"
                         for name, spellings in DTYPES.items())
    raise ValueError(f"--config.{key}={value!r} is not a floating-point type; use one of {accepted}.")


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    """Static model hyper-parameters (hashable, so they can key jit caches)."""

    vocab_size: int  # logical vocabulary: 320 + compressed symbols, the ids the model may score or emit
    padded_vocab_size: int  # embedding and head rows (>= vocab_size; the rows above it are never targets)
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
    eva_window: int = 2048  # EVA only: exact-attention window W (aligned blocks)
    eva_chunk: int = 8  # EVA only: keys pooled into one summary C

    @classmethod
    def from_config(cls, model_config: ml_collections.ConfigDict, vocab_size: int,
                    platform: str | None = None, *, padded_vocab_size: int | None = None) -> "ModelArgs":
        """Build from ``config.model`` for a logical vocabulary of ``vocab_size`` ids (320 + the proxy's
        symbols: the ids the model may score or emit). The embedding and head rows are
        ``padded_vocab_size``, else ``config.model.padded_vocab_size``, else ``vocab_size`` rounded up to a
        multiple of 128.

        ``scan_layers = "auto"`` is resolved for ``platform`` (default: this process's backend); a run
        resolves it once, when first built, and keeps the result (``assemble.build``)."""
        size = int(vocab_size)
        if size < vocab.RAW_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size {size} is smaller than the {vocab.RAW_VOCAB_SIZE} ids of specials and bytes; "
                "pass 320 + the proxy's symbol count."
            )
        key = "padded_vocab_size" if padded_vocab_size else "--config.model.padded_vocab_size"
        padded = int(padded_vocab_size or model_config.get("padded_vocab_size", 0) or 0)
        padded = padded or -(-size // vocab.PAD_MULTIPLE) * vocab.PAD_MULTIPLE
        if padded < size:
            raise ValueError(f"{key}={padded} is smaller than the vocabulary of {size} ids; set it to 0 to derive it.")
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
            dtype=dtype_name(model_config.dtype, "model.dtype"),
            param_dtype=dtype_name(model_config.param_dtype, "model.param_dtype"),
            scan_layers=resolve_scan_layers(model_config.scan_layers, model_config.num_layers, platform),
            remat_policy=str(model_config.remat_policy),
            # Configs saved before EVA existed lack the keys; they do not use EVA.
            eva_window=int(model_config.eva_window),
            eva_chunk=int(model_config.eva_chunk),
        )
        args.check()
        return args

    @property
    def num_targets(self) -> int:
        """K: tokens each position predicts (``config.num_targets``)."""
        return config_lib.num_targets(self)

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
        w, c = self.eva_window, self.eva_chunk
        if self.attention == "eva" and (c < 1 or w < 1 or w % c):
            raise ValueError(
                f"model.eva_window={w} must be a positive multiple of model.eva_chunk={c}; "
                "pick a window divisible by the chunk (the paper: 2048 and 8)."
            )


def count_params(args: ModelArgs, *, include_embedding: bool = True) -> int:
    """Exact parameter count of :class:`Transformer` (the embedding table is optional)."""
    d, h, kv, hd, f = args.d_model, args.num_heads, args.num_kv_heads, args.head_dim, args.d_ff
    per_layer = 2 * d + d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f
    if args.attention == "eva":
        per_layer += 2 * kv * hd  # mu and phi
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

    EVA models replace the second term by ``num_layers * eva_flops_per_token(...)`` (see
    ``proxy_jax.model.eva``): the keys a query really sees, exact ones inside its window (counted at
    half, the causal triangle) plus one summary per chunk of the earlier windows, and the summaries'
    construction. It is the lower count, so EVA's MFU is never flattered; at ``seq_len <= eva_window``
    it is half the full-square term.
    """
    n = count_params(args, include_embedding=False)
    if args.attention == "eva":
        per_layer = eva_flops_per_token(
            seq_len, args.num_heads, args.head_dim, args.eva_window, args.eva_chunk, num_kv_heads=args.num_kv_heads
        )
        return 6.0 * n + args.num_layers * per_layer
    return 6.0 * n + 12.0 * args.num_layers * args.num_heads * args.head_dim * seq_len
