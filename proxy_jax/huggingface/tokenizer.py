"""The tokenizer and generation config of an export, both derived from the run's text format.

Byte formats (``sentinel``, ``plain``): byte ``b`` is token ``<0xBB>`` = id ``b + 64``; ids 0..63 are named
specials (``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<raw>`` 12, ``</raw>`` 13, ``<comp>`` 14, ``</comp>`` 15,
``<specialN>`` for the reserved ones). Text is encoded as its UTF-8 bytes; ``tokenizer(text)`` prepends
the format's prompt prefix (``<bos> <raw>`` for ``sentinel``, ``<bos>`` for ``plain``: exactly how the run
was trained to read a document), ``add_special_tokens=False`` gives the bytes alone. Literal special
names in text stay bytes (``split_special_tokens``). Decoding joins the bytes and reads them as UTF-8
with each invalid sequence replaced by U+FFFD, so the valid bytes around it stay text (a byte-fallback
decoder would turn the whole run of bytes into U+FFFD). Compressed symbols (ids >= 320) have no tokens.

``compressed`` (the tokenizer baseline): the run's own SentencePiece model converted by transformers'
``SpmConverter`` (which follows the model's normaliser and ranks BPE merges by piece score), with every
piece id moved up by 320 as in the run's vocabulary, ``<pad>``/``<bos>``/``<eos>`` at 0/1/2, and
``<bos>`` prepended. The run's proxy sends the bytes of invalid UTF-8 and the character U+2581 to byte
pieces itself; a Python string holds no invalid UTF-8, and U+2581 in a prompt reads as a space there.

``generation_config.json``: the format's stop ids as ``eos_token_id``, every other id the format never
writes in ``suppress_tokens`` (so ``model.generate`` chooses what ``proxy_jax.generate`` chooses),
greedy, ``max_new_tokens`` (512 ids, or the trained context if shorter). ``model_max_length`` is the
trained context. Padding is on the left.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from proxy_jax import text_format, vocab

MAX_NEW_TOKENS = 512  # as long as a code completion of proxy_jax.evaluate


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def _special_names() -> dict[int, str]:
    return {i: vocab.SPECIAL_NAMES.get(i, f"<special{i}>") for i in range(vocab.NUM_SPECIALS)}


def _byte_level_chars() -> list[str]:
    """The character standing for each byte in tokenizers' byte-level alphabet: printable Latin-1 bytes
    stand for themselves, the others for 256, 257, .. in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def byte_tokenizer(fmt: text_format.TextFormat):
    """The ``tokenizers.Tokenizer`` of a byte format (see the module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    names = _special_names()
    token_to_id = {name: i for i, name in names.items()}
    token_to_id.update({f"<0x{b:02X}>": b + vocab.BYTE_OFFSET for b in range(vocab.NUM_BYTES)})
    # No merges and no text tokens: every character falls back to its UTF-8 bytes, one id per byte.
    tok = Tokenizer(models.BPE(vocab=token_to_id, merges=[], byte_fallback=True))
    tok.add_special_tokens([AddedToken(names[i], special=True, normalized=False) for i in range(vocab.NUM_SPECIALS)])
    # Each byte token becomes its byte-level character, and the byte-level decoder reads the joined bytes
    # as UTF-8 with replacement per invalid sequence (specials are ASCII, which stands for itself).
    chars = _byte_level_chars()
    tok.decoder = decoders.Sequence([decoders.Replace(f"<0x{b:02X}>", chars[b]) for b in range(vocab.NUM_BYTES)]
                                    + [decoders.ByteLevel()])
    _set_prefix(tok, fmt)
    return tok


def _set_prefix(tok, fmt: text_format.TextFormat) -> None:
    from tokenizers import processors

    names = _special_names()
    prefix = [names[i] for i in fmt.prefix]
    tok.post_processor = processors.TemplateProcessing(
        single=" ".join([*prefix, "$A"]), pair=" ".join([*prefix, "$A", "$B"]),
        special_tokens=[(names[i], i) for i in fmt.prefix])


def sentencepiece_tokenizer(model_proto: bytes):
    """The ``compressed`` format's tokenizer from the run's SentencePiece model (see the module docstring)."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import SpmConverter

    build = getattr(SpmConverter, "build_tokenizer_from_spm_proto", None)
    if build is None:
        raise ValueError("exporting a tokenizer-baseline run converts its SentencePiece model with "
                         "SpmConverter.build_tokenizer_from_spm_proto, which this transformers lacks; install "
                         "transformers>=5.")
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        raise ValueError("the run's SentencePiece model is not BPE; only BPE models are converted for export.")
    pieces = [p.piece for p in proto.pieces]
    # The converter ranks merges by piece id; convert once with SentencePiece's ids, then rebuild with the
    # same merges and every id moved to where the run's vocabulary has it.
    converted = build(proto, {piece: i for i, piece in enumerate(pieces)}, legacy=False)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in json.loads(converted.to_str())["model"]["merges"]]
    names = {i: vocab.SPECIAL_NAMES[i] for i in (vocab.PAD, vocab.BOS, vocab.EOS)}
    clash = sorted(set(names.values()) & set(pieces))
    if clash:
        raise ValueError(f"the run's SentencePiece model has pieces named {clash}, which the export's specials "
                         "need; it cannot be exported.")
    shifted = {piece: i + vocab.COMP_OFFSET for i, piece in enumerate(pieces)}
    tok = build(proto, {**{n: i for i, n in names.items()}, **shifted}, merges=merges, legacy=False)
    tok.add_special_tokens([AddedToken(names[i], special=True, normalized=False) for i in sorted(names)])
    _set_prefix(tok, text_format.COMPRESSED)
    return tok


def suppressed_ids(fmt: text_format.TextFormat, vocab_size: int) -> list[int]:
    """Every id below ``vocab_size`` that generation in ``fmt`` must never choose."""
    return np.flatnonzero(~fmt.allowed_mask(vocab_size, vocab_size)).tolist()


def generation_config(fmt: text_format.TextFormat, vocab_size: int, context: int) -> dict[str, Any]:
    """Greedy generation in ``fmt``: its stop ids end it, every other id it never writes is suppressed."""
    return {
        "bos_token_id": vocab.BOS,
        "eos_token_id": list(fmt.stop_ids),
        "pad_token_id": vocab.PAD,
        "do_sample": False,
        "max_new_tokens": min(MAX_NEW_TOKENS, int(context)),
        "suppress_tokens": suppressed_ids(fmt, vocab_size),
    }


def write_tokenizer(out_dir: str, fmt: text_format.TextFormat, *, max_length: int,
                    model_proto: bytes | None = None) -> None:
    """``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json`` for ``fmt``
    (``model_proto``: the run's SentencePiece model, for ``compressed``)."""
    names = _special_names()
    if fmt.symbols:
        if model_proto is None:
            raise ValueError("the compressed text format needs the run's SentencePiece model to write a tokenizer.")
        tok = sentencepiece_tokenizer(model_proto)
        additional = []
    else:
        tok = byte_tokenizer(fmt)
        additional = [names[i] for i in (vocab.RAW_OPEN, vocab.RAW_CLOSE, vocab.COMP_OPEN, vocab.COMP_CLOSE)]
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    specials = {"bos_token": names[vocab.BOS], "eos_token": names[vocab.EOS], "pad_token": names[vocab.PAD]}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "additional_special_tokens": additional,
        "padding_side": "left",
        # Llama takes no token_type_ids; without this, transformers 4.x returns them and generate fails.
        "model_input_names": ["input_ids", "attention_mask"],
        # Source code may contain "<eos>" literally: it must stay five bytes, not become id 2.
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(max_length),
    }
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), tokenizer_config)
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), specials)
