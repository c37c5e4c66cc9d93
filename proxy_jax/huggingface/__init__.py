"""Hugging Face export of a trained run: a ``LlamaForCausalLM`` checkpoint that ``transformers`` loads.

:func:`export_workdir` exports a training workdir (``python -m proxy_jax.export`` calls it);
:func:`export_params` any ``ModelArgs`` + params. Files: ``config.json``, ``model.safetensors``
(float32, the logical vocabulary only: ``llama``), ``generation_config.json`` and the tokenizer files
(from the run's text format: ``tokenizer``), and ``proxy_jax_extra_heads.safetensors`` when the model has
heads beyond head 0. Writing needs ``safetensors`` and ``tokenizers`` (the ``[export]`` extra), and
``transformers`` for a tokenizer-baseline run (its SentencePiece model is converted); never torch.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from proxy_jax import storage, text_format
from proxy_jax.huggingface import llama
from proxy_jax.huggingface import tokenizer as tokenizer_lib
from proxy_jax.model import ModelArgs

EXTRA_HEADS_FILE = llama.EXTRA_HEADS_FILE


def check_extras(fmt: text_format.TextFormat) -> None:
    """One sentence naming the missing packages of the ``[export]`` extra (checked before any restore)."""
    needed = ["safetensors", "tokenizers"] + (["transformers"] if fmt.symbols else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"exporting needs {', '.join(missing)}, which this environment lacks; install them with "
                         "pip install 'proxy_jax[export]'.")


def export_params(args: ModelArgs, params, out_dir: str, *, vocab_size: int | None = None,
                  fmt: str | text_format.TextFormat = text_format.SENTINEL,
                  context: int = llama.DEFAULT_MAX_POSITIONS, model_proto: bytes | None = None,
                  config_extra: dict | None = None) -> None:
    """Write a ``LlamaForCausalLM`` checkpoint of ``params`` (a :class:`Transformer`'s) into ``out_dir``.

    ``vocab_size``: the logical vocabulary (default ``args.vocab_size``); ``fmt``: the run's text format
    (its tokenizer template and generation config); ``context``: the trained context (positions and
    ``model_max_length``); ``model_proto``: the run's SentencePiece model, for ``compressed``. An
    ``out_dir`` on object storage (``gs://``) is written in a local temporary folder and uploaded.
    """
    fmt = text_format.get(fmt)
    vocab_size = int(vocab_size or args.vocab_size)
    llama.check_exportable(args)
    llama.check_vocab_size(args, vocab_size)
    if fmt.symbols and model_proto is None:
        raise ValueError("a compressed-format (tokenizer-baseline) export needs the run's SentencePiece model.")
    out_dir = storage.resolve(out_dir)
    storage.check_usable(out_dir, "--out")
    with storage.staged(out_dir, download=False, keep_partial=False) as folder:  # safetensors writes local files only
        os.makedirs(folder, exist_ok=True)
        llama.write_weights(args, params, vocab_size, folder)
        config = llama.llama_config(args, vocab_size, fmt, int(context), config_extra)
        tokenizer_lib._write_json(os.path.join(folder, "config.json"), config)
        gen = tokenizer_lib.generation_config(fmt, vocab_size, int(context))
        tokenizer_lib._write_json(os.path.join(folder, "generation_config.json"), gen)
        tokenizer_lib.write_tokenizer(folder, fmt, max_length=int(context), model_proto=model_proto)
        extra_heads = os.path.exists(os.path.join(folder, EXTRA_HEADS_FILE))
    if storage.is_remote(out_dir) and not extra_heads:  # an older export's extra heads would not match
        storage.remove(storage.join(out_dir, EXTRA_HEADS_FILE))


def _model_proto(run, fmt: text_format.TextFormat) -> bytes | None:
    """The tokenizer baseline's SentencePiece model (the one its record pins), or one refusing sentence."""
    if not fmt.symbols:
        return None
    name = run.record.proxy_name
    if name != "tokenizer":
        raise ValueError(f"{run.workdir} writes only {name!r} symbols (mix modes 'vanilla', rate 1), which "
                         "no Hugging Face tokenizer produces; export a byte or proxy run instead.")
    return run.proxy.model_proto


def export_workdir(workdir: str, out: str, step: int | None = None,
                   fmt: str | text_format.TextFormat | None = None) -> int:
    """Export the checkpoint ``step`` (newest when None) of a training workdir in its text format ``fmt``
    (default: the run's own); returns the step."""
    from proxy_jax import restore

    workdir, out = storage.resolve(workdir), storage.resolve(out)
    storage.check_usable(workdir)
    storage.check_usable(out, "--out")  # before the run is restored
    if not storage.isdir(workdir):
        raise ValueError(f"--workdir={workdir} is not a directory; pass a training workdir (config.json + "
                         "checkpoints/).")
    fmt = text_format.get(fmt if fmt is not None else restore.read_record(workdir).text_format)
    check_extras(fmt)
    restored = restore.restore(workdir, step)
    llama.check_exportable(restored.args)  # before the tokenizer is looked for
    model_proto = _model_proto(restored, fmt)
    extra: dict[str, Any] = {"proxy_jax_checkpoint_step": restored.step}
    export_params(restored.args, restored.params, out, vocab_size=restored.vocab_size, fmt=fmt,
                  context=int(restored.config.data.seq_len), model_proto=model_proto, config_extra=extra)
    return restored.step
