"""The weights and ``config.json`` of a Hugging Face ``LlamaForCausalLM`` holding a trained model.

Why the model is a Llama, exactly (derived from ``proxy_jax.model``, checked by tests/test_export.py):
- RMSNorm: ours computes ``x * rsqrt(mean(x^2) + eps) * (1 + w)``; Llama's multiplies by its weight,
  so the exported weight is ``1 + w``. Same eps.
- RoPE: ours rotates halves (``[x1 cos - x2 sin, x2 cos + x1 sin]`` over ``x = [x1 | x2]``) with
  frequencies ``theta^(-2i/d)``, which is Llama's ``rotate_half`` convention: q/k need no permutation.
  Positions count from 0 at BOS in both.
- Attention: ``softmax(q.k / sqrt(head_dim))``, grouped KV heads (query head ``h`` reads KV head
  ``h // (num_heads / num_kv_heads)``, Llama's ``repeat_kv`` order), no biases. Kernels ``[d, heads,
  head_dim]`` flatten head-major to Llama's ``[heads * head_dim, d]`` after a transpose.
- MLP: ``down(silu(gate x) * up x)``, no biases. Embedding is not scaled; head and embedding untied.
- Vocabulary: only the logical ``vocab_size`` rows (320 + the proxy's symbols) are exported. The padded
  rows above it are never targets, and our scores give them no probability; left in ``lm_head`` they
  would take part of every softmax a user computes.

What Llama cannot hold: main heads 1.. (multi-byte drafts) and the 320-way raw heads. They go to
``proxy_jax_extra_heads.safetensors`` beside the checkpoint (tensor ``head.{h}`` is ``[vocab_size, d]``
and predicts ``h + 1`` places ahead; ``raw_head.{j}`` is ``[320, d]`` and predicts ``num_pred_heads + j
+ 1`` places ahead); multiply them with the last entry of ``output_hidden_states`` (the final-norm
output) to get their logits. Only head 0 is ``lm_head``.

EVA attention has no Llama equivalent: such a model is refused.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from proxy_jax import text_format, vocab
from proxy_jax.model import ModelArgs

EXTRA_HEADS_FILE = "proxy_jax_extra_heads.safetensors"
# No position limit is stored in ModelArgs; RoPE extrapolates. Callers that know the training context
# (export_workdir: data.seq_len) pass it instead.
DEFAULT_MAX_POSITIONS = 32768


def check_exportable(args: ModelArgs) -> None:
    """Raise one sentence when ``args`` describes a model a Llama checkpoint cannot reproduce."""
    if getattr(args, "attention", None) == "eva":
        raise ValueError(
            "model.attention='eva' cannot be exported: Hugging Face Llama has no EVA attention, so export "
            "is refused until an equivalent exists there."
        )
    if args.d_model % args.num_heads:
        raise ValueError(
            f"d_model={args.d_model} is not a multiple of num_heads={args.num_heads}, which transformers' "
            "LlamaConfig refuses; export a model whose d_model divides by its head count."
        )


def _unbox(params):
    """Plain nested dicts of numpy float32 arrays (drops Flax partitioning boxes and the params key)."""
    import flax.linen as nn
    import jax

    params = nn.unbox(params)
    if "params" in params and "embedding" not in params:
        params = params["params"]
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x), dtype=np.float32), params)


def _layers(args: ModelArgs, params) -> list[dict[str, Any]]:
    """One params dict per layer, whether the layers were scanned (stacked on axis 0) or unrolled."""
    if args.scan_layers:
        import jax

        stacked = params["layers"]
        return [jax.tree.map(lambda x: x[i], stacked) for i in range(args.num_layers)]
    return [params[f"layer_{i}"] for i in range(args.num_layers)]


def check_vocab_size(args: ModelArgs, vocab_size: int) -> None:
    if not vocab.RAW_VOCAB_SIZE <= vocab_size <= args.padded_vocab_size:
        raise ValueError(f"vocab_size={vocab_size} must lie in [{vocab.RAW_VOCAB_SIZE}, {args.padded_vocab_size}]: "
                         "pass the run's logical vocabulary (320 + its proxy's symbols).")


def llama_state_dict(args: ModelArgs, params, vocab_size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(llama_tensors, extra_head_tensors)``: HF Llama names -> float32 arrays, and the heads Llama lacks;
    the embedding and the main heads keep their first ``vocab_size`` (logical) rows."""
    check_exportable(args)
    check_vocab_size(args, vocab_size)
    p = _unbox(params)
    v = vocab_size
    d = args.d_model

    def linear(kernel_DxO):  # ours: x @ kernel; torch Linear: x @ weight.T
        return np.ascontiguousarray(kernel_DxO.reshape(d, -1).T)

    out = {"model.embed_tokens.weight": p["embedding"][:v], "model.norm.weight": 1.0 + p["final_norm"]["scale"]}
    for i, layer in enumerate(_layers(args, p)):
        pre = f"model.layers.{i}."
        attn, mlp = layer["attn"], layer["mlp"]
        out[pre + "self_attn.q_proj.weight"] = linear(attn["query"])
        out[pre + "self_attn.k_proj.weight"] = linear(attn["key"])
        out[pre + "self_attn.v_proj.weight"] = linear(attn["value"])
        out[pre + "self_attn.o_proj.weight"] = np.ascontiguousarray(attn["out"].reshape(-1, d).T)
        out[pre + "mlp.gate_proj.weight"] = linear(mlp["gate"])
        out[pre + "mlp.up_proj.weight"] = linear(mlp["up"])
        out[pre + "mlp.down_proj.weight"] = np.ascontiguousarray(mlp["down"].T)
        out[pre + "input_layernorm.weight"] = 1.0 + layer["attn_norm"]["scale"]
        out[pre + "post_attention_layernorm.weight"] = 1.0 + layer["mlp_norm"]["scale"]
    head_DxHxV = p["head"][:, :, :v]
    out["lm_head.weight"] = np.ascontiguousarray(head_DxHxV[:, 0].T)
    extra = {f"head.{h}": np.ascontiguousarray(head_DxHxV[:, h].T) for h in range(1, args.num_pred_heads)}
    for j in range(args.num_raw_pred_heads):
        extra[f"raw_head.{j}"] = np.ascontiguousarray(p["raw_head"][:, j].T)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}, extra


def llama_config(args: ModelArgs, vocab_size: int, fmt: text_format.TextFormat, max_positions: int,
                 config_extra: dict | None = None) -> dict[str, Any]:
    """The ``config.json`` of the exported ``LlamaForCausalLM`` (``config_extra`` keys win)."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": args.d_model,
        "intermediate_size": args.d_ff,
        "num_hidden_layers": args.num_layers,
        "num_attention_heads": args.num_heads,
        "num_key_value_heads": args.num_kv_heads,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": args.norm_eps,
        # transformers >= 5 reads rope_parameters; older releases read rope_theta.
        "rope_theta": args.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},
        "max_position_embeddings": max_positions,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": vocab.BOS,
        "eos_token_id": list(fmt.stop_ids),
        "pad_token_id": vocab.PAD,
        "torch_dtype": "float32",
        "proxy_jax": {
            "text_format": fmt.name,
            "logical_vocab_size": vocab_size,
            "padded_vocab_size": args.padded_vocab_size,
            "num_pred_heads": args.num_pred_heads,
            "num_raw_pred_heads": args.num_raw_pred_heads,
            "extra_heads_file": EXTRA_HEADS_FILE if args.num_pred_heads + args.num_raw_pred_heads > 1 else None,
        },
    }
    config.update(config_extra or {})
    return config


def _ahead(args: ModelArgs, name: str) -> int:
    kind, index = name.split(".")
    return int(index) + 1 if kind == "head" else args.num_pred_heads + int(index) + 1


def write_weights(args: ModelArgs, params, vocab_size: int, out_dir: str) -> None:
    """``model.safetensors`` (float32) and, when the model has heads beyond head 0, the side file."""
    from safetensors.numpy import save_file

    tensors, extra = llama_state_dict(args, params, vocab_size)
    # transformers loads only safetensors files whose metadata names a framework it knows.
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    extra_path = os.path.join(out_dir, EXTRA_HEADS_FILE)
    if extra:
        meta = {name: f"predicts the token {_ahead(args, name)} places ahead" for name in extra}
        save_file(extra, extra_path, metadata={"format": "pt", **meta})
    elif os.path.exists(extra_path):
        os.remove(extra_path)  # a stale file from an earlier export would describe another model
