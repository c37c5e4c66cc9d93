"""Export a trained model as a Hugging Face ``LlamaForCausalLM`` checkpoint (``transformers`` loads it).

Command: ``python -m proxy_jax.export --workdir=DIR --out=DIR [--step=N]`` (newest checkpoint by
default). Library: :func:`export_params` (any ``ModelArgs`` + params) and :func:`export_workdir`.
Writing needs ``safetensors`` and ``tokenizers`` (``pip install -e '.[export]'``), never torch.

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
- Vocabulary: ``vocab_size`` is the padded embedding size; the padded rows are never targets.

What Llama cannot hold: main heads 1.. (multi-byte drafts) and the 320-way raw heads. They go to
``proxy_jax_extra_heads.safetensors`` beside the checkpoint (tensor ``head.{h}`` is ``[padded_vocab,
d]`` and predicts ``h + 1`` places ahead; ``raw_head.{j}`` is ``[320, d]`` and predicts
``num_pred_heads + j + 1`` places ahead); multiply them with the last entry of
``output_hidden_states`` (the final-norm output) to get their logits. Only head 0 is ``lm_head``.

Tokenizer (``tokenizer.json``, loads with ``AutoTokenizer``): byte ``b`` is token ``<0xBB>`` = id
``b + 64``; ids 0..63 are named specials (``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<raw>`` 12,
``</raw>`` 13, ``<comp>`` 14, ``</comp>`` 15, ``<specialN>`` for the reserved ones). Text is encoded
as its UTF-8 bytes; ``tokenizer(text)`` prepends ``<bos> <raw>`` (our generation prompt ``1 12 bytes``),
``add_special_tokens=False`` gives the bytes alone. Literal special names in text stay bytes
(``split_special_tokens``). Padding is on the left. Compressed symbols (ids >= 320) have no tokens.

``generation_config.json`` stops at EOS or ``</raw>`` and suppresses every other id outside the bytes
(``suppress_tokens``), so ``model.generate`` writes raw bytes only, as ``proxy_jax.generate`` does.

EVA attention has no Llama equivalent: such a model is refused.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from proxy_jax import vocab
from proxy_jax.model import ModelArgs

EXTRA_HEADS_FILE = "proxy_jax_extra_heads.safetensors"
# No position limit is stored in ModelArgs; RoPE extrapolates. Callers that know the training context
# (export_workdir) override this through config_extra.
DEFAULT_MAX_POSITIONS = 32768
STOP_IDS = (vocab.EOS, vocab.RAW_CLOSE)


def byte_only_suppressed_ids(padded_vocab_size: int) -> list[int]:
    """Ids a byte-level generation must never emit: all but raw bytes 64..319, EOS and ``</raw>``."""
    ids = np.arange(padded_vocab_size)
    allowed = vocab.is_raw_byte(ids)
    allowed[list(STOP_IDS)] = True
    return ids[~allowed].tolist()


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


def llama_state_dict(args: ModelArgs, params) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(llama_tensors, extra_head_tensors)``: HF Llama names -> float32 arrays, and the heads Llama lacks."""
    check_exportable(args)
    p = _unbox(params)
    d = args.d_model

    def linear(kernel_DxO):  # ours: x @ kernel; torch Linear: x @ weight.T
        return np.ascontiguousarray(kernel_DxO.reshape(d, -1).T)

    out = {"model.embed_tokens.weight": p["embedding"], "model.norm.weight": 1.0 + p["final_norm"]["scale"]}
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
    head_DxHxV = p["head"]
    out["lm_head.weight"] = np.ascontiguousarray(head_DxHxV[:, 0].T)
    extra = {f"head.{h}": np.ascontiguousarray(head_DxHxV[:, h].T) for h in range(1, args.num_pred_heads)}
    for j in range(args.num_raw_pred_heads):
        extra[f"raw_head.{j}"] = np.ascontiguousarray(p["raw_head"][:, j].T)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}, extra


def llama_config(args: ModelArgs, config_extra: dict | None = None) -> dict[str, Any]:
    """The ``config.json`` of the exported ``LlamaForCausalLM`` (``config_extra`` keys win)."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": args.padded_vocab_size,
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
        "max_position_embeddings": DEFAULT_MAX_POSITIONS,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": vocab.BOS,
        "eos_token_id": list(STOP_IDS),
        "pad_token_id": vocab.PAD,
        "torch_dtype": "float32",
        "proxy_jax": {
            "logical_vocab_size": args.vocab_size,
            "num_pred_heads": args.num_pred_heads,
            "num_raw_pred_heads": args.num_raw_pred_heads,
            "extra_heads_file": EXTRA_HEADS_FILE if args.num_pred_heads + args.num_raw_pred_heads > 1 else None,
        },
    }
    config.update(config_extra or {})
    return config


def generation_config() -> dict[str, Any]:
    """Greedy byte generation that stops at EOS or ``</raw>`` (suppressed ids are added by the caller)."""
    return {
        "bos_token_id": vocab.BOS,
        "eos_token_id": list(STOP_IDS),
        "pad_token_id": vocab.PAD,
        "do_sample": False,
    }


def write_tokenizer(out_dir: str, *, max_length: int = DEFAULT_MAX_POSITIONS) -> None:
    """``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json`` for the byte vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    names = {i: vocab.SPECIAL_NAMES.get(i, f"<special{i}>") for i in range(vocab.NUM_SPECIALS)}
    token_to_id = {name: i for i, name in names.items()}
    token_to_id.update({f"<0x{b:02X}>": b + vocab.BYTE_OFFSET for b in range(vocab.NUM_BYTES)})
    # No merges and no text tokens: every character falls back to its UTF-8 bytes, one id per byte.
    tok = Tokenizer(models.BPE(vocab=token_to_id, merges=[], byte_fallback=True))
    tok.add_special_tokens([AddedToken(names[i], special=True, normalized=False) for i in range(vocab.NUM_SPECIALS)])
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    bos, raw = names[vocab.BOS], names[vocab.RAW_OPEN]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} {raw} $A",
        pair=f"{bos} {raw} $A $B",
        special_tokens=[(bos, vocab.BOS), (raw, vocab.RAW_OPEN)],
    )
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    specials = {"bos_token": bos, "eos_token": names[vocab.EOS], "pad_token": names[vocab.PAD]}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "additional_special_tokens": [names[i] for i in (vocab.RAW_OPEN, vocab.RAW_CLOSE, vocab.COMP_OPEN, vocab.COMP_CLOSE)],
        "padding_side": "left",
        # Llama takes no token_type_ids; without this, transformers 4.x returns them and generate fails.
        "model_input_names": ["input_ids", "attention_mask"],
        # Source code may contain "<eos>" literally: it must stay five bytes, not become id 2.
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
    }
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), tokenizer_config)
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), specials)


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def export_params(args: ModelArgs, params, out_dir: str, *, config_extra: dict | None = None) -> None:
    """Write a ``LlamaForCausalLM`` checkpoint of ``params`` (a :class:`Transformer`'s) into ``out_dir``.

    Files: ``config.json``, ``model.safetensors`` (float32), ``generation_config.json``, the tokenizer
    files, and ``proxy_jax_extra_heads.safetensors`` when the model has heads beyond head 0.
    """
    from safetensors.numpy import save_file

    tensors, extra = llama_state_dict(args, params)
    config = llama_config(args, config_extra)
    os.makedirs(out_dir, exist_ok=True)
    # transformers loads only safetensors files whose metadata names a framework it knows.
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    extra_path = os.path.join(out_dir, EXTRA_HEADS_FILE)
    if extra:
        meta = {name: f"predicts the token {_ahead(args, name)} places ahead" for name in extra}
        save_file(extra, extra_path, metadata={"format": "pt", **meta})
    elif os.path.exists(extra_path):
        os.remove(extra_path)  # a stale file from an earlier export would describe another model
    _write_json(os.path.join(out_dir, "config.json"), config)
    gen = generation_config()
    gen["suppress_tokens"] = byte_only_suppressed_ids(args.padded_vocab_size)
    _write_json(os.path.join(out_dir, "generation_config.json"), gen)
    write_tokenizer(out_dir, max_length=int(config["max_position_embeddings"]))


def _ahead(args: ModelArgs, name: str) -> int:
    kind, index = name.split(".")
    return int(index) + 1 if kind == "head" else args.num_pred_heads + int(index) + 1


def export_workdir(workdir: str, out: str, step: int | None = None) -> int:
    """Export the checkpoint ``step`` (newest when None) of a training workdir; returns the step."""
    from proxy_jax import workdir as workdir_lib

    restored = workdir_lib.restore(workdir, step)
    extra: dict[str, Any] = {"proxy_jax_checkpoint_step": restored.step,
                             "max_position_embeddings": int(restored.config.data.seq_len)}
    export_params(restored.args, restored.params, out, config_extra=extra)
    return restored.step


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m proxy_jax.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a training workdir (config.json + checkpoints/)")
    p.add_argument("--out", required=True, help="folder to write the Hugging Face checkpoint into")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    a = p.parse_args(argv)
    try:
        step = export_workdir(a.workdir, a.out, step=a.step)
    except ValueError as e:  # our one-sentence refusals, without a traceback
        sys.exit(f"error: {e}")
    print(f"exported step {step} of {a.workdir} to {a.out}")


if __name__ == "__main__":
    main()
