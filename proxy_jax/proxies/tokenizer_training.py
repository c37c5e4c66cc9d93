"""Training the tokenizer proxy's BPE model: lossless SentencePiece settings, a fixed input order, and a
cache keyed by the settings and the corpus fingerprint (``{workdir}/proxy/tokenizer-v{V}-{key}.model``)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from typing import Any, Callable, Iterable

import sentencepiece as spm

from proxy_jax import storage

SPACE_MARK = "\u2581"  # SentencePiece's escaped space
_TRAIN_CHUNK_BYTES = 4096
TRAINER_VERSION = 1  # bump when the training recipe changes: it is part of the cache fingerprint



def _training_sentences(docs: Iterable[bytes], max_bytes: int) -> list[str]:
    """Documents -> text chunks of at most ~4 KiB cut at line ends, until ``max_bytes`` are taken."""
    out, total = [], 0
    for doc in docs:
        if total >= max_bytes:
            break
        text = bytes(doc[:max_bytes - total]).decode("utf-8", errors="ignore").replace(SPACE_MARK, " ")
        total += min(len(doc), max_bytes - total)
        chunk, size = [], 0
        for line in text.splitlines(keepends=True):
            n = len(line.encode("utf-8"))
            if chunk and size + n > _TRAIN_CHUNK_BYTES:
                out.append("".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += n
        if chunk:
            out.append("".join(chunk))
    return out


def trainer_settings(vocab_size: int) -> dict[str, Any]:
    return dict(
        model_type="bpe", vocab_size=int(vocab_size), character_coverage=0.9995,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, split_digits=True, byte_fallback=True,
        max_sentence_length=4 * _TRAIN_CHUNK_BYTES + 64, input_sentence_size=0, shuffle_input_sentence=False,
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, num_threads=2, max_sentencepiece_length=16,
    )


def train_tokenizer(docs: Iterable[bytes], vocab_size: int, out_prefix: str, max_bytes: int) -> str:
    """Trains a lossless BPE model on ``docs`` (first ``max_bytes`` bytes, in order) -> ``out_prefix.model``.

    The result depends only on the input and the settings (no sampling, fixed order), and is written
    atomically, so concurrent trainers of the same model are harmless.
    """
    if vocab_size < 260:
        raise ValueError(f"proxy.vocab_size must be at least 260 (256 byte pieces + unk + merges), "
                         f"got {vocab_size}.")
    sentences = _training_sentences(docs, max_bytes)
    if not sentences:
        raise ValueError("the tokenizer got no training text; check config.data (the training split is empty).")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model,
                                       minloglevel=2, **trainer_settings(vocab_size))
    except RuntimeError as e:
        m = re.search(r"required_chars\. (\d+) vs (\d+)", str(e))
        if m is None:
            raise
        raise ValueError(f"proxy.vocab_size={vocab_size} cannot hold the 257 byte and unknown pieces plus the "
                         f"corpus's common characters; raise it to at least {int(m.group(2)) + 64}.") from e
    path = out_prefix + ".model"
    storage.makedirs(os.path.dirname(os.path.abspath(path)))
    storage.write_bytes(path, model.getvalue())  # written whole, then renamed over the name
    return path


def fingerprint_docs(docs: Iterable[bytes], max_bytes: int) -> str:
    h, total = hashlib.sha256(), 0
    for d in docs:
        if total >= max_bytes:
            break
        d = bytes(d[:max_bytes - total])
        h.update(len(d).to_bytes(8, "little") + d)
        total += len(d)
    return h.hexdigest()


def tokenizer_fingerprint(vocab_size: int, max_bytes: int, corpus_fingerprint: str) -> str:
    settings = sorted(trainer_settings(vocab_size).items()) + [("max_bytes", int(max_bytes)),
                                                                 ("version", TRAINER_VERSION)]
    return hashlib.sha256(f"{settings!r}|{corpus_fingerprint}".encode()).hexdigest()


def cached_tokenizer(workdir: str | None, vocab_size: int, max_bytes: int, corpus_fingerprint: str,
                     train_docs: Callable[[], Iterable[bytes]]) -> bytes | str:
    """The tokenizer for these settings and corpus: the path of the one cached in ``{workdir}/proxy``
    (trained there first if missing), or, with no workdir, the bytes of a freshly trained model."""
    fp = tokenizer_fingerprint(vocab_size, max_bytes, corpus_fingerprint)
    import tempfile

    if workdir:
        prefix = storage.join(workdir, "proxy", f"tokenizer-v{vocab_size}-{fp[:12]}")
        if storage.isfile(prefix + ".model"):
            return prefix + ".model"
        logging.getLogger(__name__).info("Training a %d-piece BPE tokenizer on up to %d bytes of the training "
                                         "split (cached in %s).", vocab_size, max_bytes, prefix + ".model")
        if not storage.is_remote(workdir):
            return train_tokenizer(train_docs(), vocab_size, storage.local(prefix), max_bytes)
        with tempfile.TemporaryDirectory() as tmp:  # trained locally, then copied to object storage
            storage.copy(train_tokenizer(train_docs(), vocab_size, os.path.join(tmp, "tokenizer"), max_bytes),
                         prefix + ".model")
        return prefix + ".model"
    with tempfile.TemporaryDirectory() as tmp:
        path = train_tokenizer(train_docs(), vocab_size, os.path.join(tmp, "tokenizer"), max_bytes)
        with open(path, "rb") as f:
            return f.read()
