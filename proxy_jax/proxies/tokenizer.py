"""SentencePiece BPE as a proxy, lossless on any bytes, and its 2-bytes-per-token variant.

Losslessness. SentencePiece works on text, so a document is split into runs of valid UTF-8 and single
bytes that SentencePiece cannot carry: bytes of invalid UTF-8 and the UTF-8 of U+2581 (the character
SentencePiece uses to escape spaces, which its decoder would turn into a space). Text runs are encoded by
SentencePiece with the identity normalizer, no whitespace folding and byte fallback; each other byte
becomes its byte-fallback piece ``<0xXX>``. Decoding maps every piece to its bytes through a table,
so ``decode(encode(x)) == x`` for every ``x`` (the tests check all of the standard library and random
bytes).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from typing import Any, Callable, Iterable

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from proxy_jax import vocab
from proxy_jax.proxies.base import Proxy

SPACE_MARK = "\u2581"
# Lone surrogates stand for the bytes of invalid UTF-8 (errors="surrogateescape"); U+2581 must also
# bypass SentencePiece because its decoder reads it as a space.
_NOT_TEXT = re.compile("[\udc80-\udcff\u2581]+")
_TRAIN_CHUNK_BYTES = 4096
TRAINER_VERSION = 1  # bump when the training recipe changes: it is part of the cache fingerprint


def _lossless_normalizer(proto: sentencepiece_model_pb2.ModelProto) -> bool:
    """Forces the normalizer settings that keep text intact; returns whether anything had to change."""
    ns = proto.normalizer_spec
    want = dict(name="identity", precompiled_charsmap=b"", add_dummy_prefix=False,
                remove_extra_whitespaces=False, escape_whitespaces=True)
    changed = any(getattr(ns, k) != v for k, v in want.items())
    for k, v in want.items():
        setattr(ns, k, v)
    proto.ClearField("denormalizer_spec")
    return changed


class TokenizerProxy(Proxy):
    """BPE token ids as symbols: id = piece id + 320, ``num_symbols`` = number of pieces."""

    name = "tokenizer"
    lossless = True

    def __init__(self, model_proto: bytes, origin: str = ""):
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(model_proto)
        self.normalizer_overridden = _lossless_normalizer(proto)
        if self.normalizer_overridden:
            logging.warning("SentencePiece model %s normalises text; using the identity normaliser "
                            "instead so that encoding stays lossless.", origin or "(in memory)")
        self._proto = proto.SerializeToString()
        self.origin = origin
        self.model_sha256 = hashlib.sha256(model_proto).hexdigest()
        self._setup()

    @classmethod
    def from_file(cls, path: str) -> "TokenizerProxy":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"SentencePiece model {path!r} does not exist; set proxy.model_path to a "
                                    "'.model' file or leave it empty to train one.")
        with open(path, "rb") as f:
            return cls(f.read(), origin=path)

    def _setup(self):
        sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self._sp = sp
        n = sp.get_piece_size()
        self.num_symbols = n
        byte_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
        if any(not sp.is_byte(i) for i in byte_ids):
            raise ValueError(f"SentencePiece model {self.origin or '(in memory)'} has no byte-fallback pieces "
                             "<0x00>..<0xFF>; retrain it with byte_fallback=True.")
        self._byte_ids = np.asarray(byte_ids, dtype=np.int32)
        surfaces = []
        for i in range(n):
            if sp.is_byte(i):
                surfaces.append(bytes([int(sp.id_to_piece(i)[3:5], 16)]))
            elif sp.is_control(i) or sp.is_unknown(i):
                surfaces.append(b"")
            else:
                surfaces.append(sp.id_to_piece(i).replace(SPACE_MARK, " ").encode("utf-8"))
        self.surfaces = surfaces  # piece id -> the bytes it stands for

    def __getstate__(self):
        return {"proto": self._proto, "origin": self.origin, "sha": self.model_sha256,
                "overridden": self.normalizer_overridden}

    def __setstate__(self, state):
        self._proto, self.origin = state["proto"], state["origin"]
        self.model_sha256, self.normalizer_overridden = state["sha"], state["overridden"]
        self._setup()

    @property
    def model_proto(self) -> bytes:
        return self._proto

    # -- piece ids (no vocabulary offset) ------------------------------------------------------
    def _split(self, data: bytes) -> list[str] | str:
        text = bytes(data).decode("utf-8", errors="surrogateescape")
        if _NOT_TEXT.search(text) is None:
            return text
        return [p for p in re.split(f"({_NOT_TEXT.pattern})", text) if p]

    def _join(self, parts: list[str], encoded: list[list[int]]) -> np.ndarray:
        out = []
        j = 0
        for p in parts:
            if _NOT_TEXT.fullmatch(p):
                raw = p.encode("utf-8", errors="surrogateescape")
                out.append(self._byte_ids[np.frombuffer(raw, dtype=np.uint8)])
            else:
                out.append(np.asarray(encoded[j], dtype=np.int32))
                j += 1
        return np.concatenate(out) if out else np.zeros((0,), np.int32)

    def piece_ids_batch(self, docs: list[bytes]) -> list[np.ndarray]:
        splits = [self._split(d) for d in docs]
        texts = []
        for s in splits:
            if isinstance(s, str):
                texts.append(s)
            else:
                texts.extend(p for p in s if not _NOT_TEXT.fullmatch(p))
        encoded = self._sp.encode(texts, out_type="numpy") if texts else []
        out, j = [], 0
        for s in splits:
            if isinstance(s, str):
                out.append(np.array(encoded[j], dtype=np.int32))
                j += 1
            else:
                k = sum(1 for p in s if not _NOT_TEXT.fullmatch(p))
                out.append(self._join(s, encoded[j:j + k]))
                j += k
        return out

    def piece_ids(self, data: bytes) -> np.ndarray:
        return self.piece_ids_batch([data])[0]

    def piece_bytes(self, pieces) -> bytes:
        pieces = np.asarray(pieces)
        if pieces.size and (int(pieces.min()) < 0 or int(pieces.max()) >= self.num_symbols):
            raise ValueError(f"token ids must lie in [0, {self.num_symbols}), got "
                             f"{int(pieces.min())}..{int(pieces.max())}.")
        s = self.surfaces
        return b"".join([s[i] for i in pieces.tolist()])

    # -- Proxy interface --------------------------------------------------------------------------
    def encode(self, data: bytes) -> np.ndarray:
        return self.piece_ids(data) + vocab.COMP_OFFSET

    def encode_batch(self, docs: list[bytes]) -> list[np.ndarray]:
        return [p + vocab.COMP_OFFSET for p in self.piece_ids_batch(docs)]

    def decode(self, ids: np.ndarray) -> bytes:
        return self.piece_bytes(vocab.decode_comp(ids))

    def manifest(self) -> dict[str, Any]:
        return {"name": self.name, "num_symbols": self.num_symbols, "vocab_size": self.num_symbols,
                "model_sha256": self.model_sha256, "normalizer_overridden": self.normalizer_overridden}


def gray(x):
    return x ^ (x >> 1)


def inverse_gray(g):
    g = np.asarray(g, dtype=np.int64)
    x = g.copy()
    shift = g >> 1
    while np.any(shift):
        x ^= shift
        shift >>= 1
    return x


class TokensAsBytesProxy(Proxy):
    """Each token id as 2 big-endian bytes (256 symbols), optionally Gray-coded over byte-sorted pieces."""

    name = "tokens_as_bytes"
    num_symbols = 256
    lossless = True

    def __init__(self, tokenizer: TokenizerProxy, gray_code: bool = False):
        if tokenizer.num_symbols > 65536:
            raise ValueError(f"tokens_as_bytes needs a vocabulary of at most 65536 pieces, the tokenizer has "
                             f"{tokenizer.num_symbols}; lower proxy.vocab_size.")
        self.tokenizer = tokenizer
        self.gray_code = bool(gray_code)
        n = tokenizer.num_symbols
        if self.gray_code:
            # Rank pieces by their bytes (ties by id), so neighbouring surfaces get codes one bit apart.
            order = sorted(range(n), key=lambda i: (tokenizer.surfaces[i], i))
            rank = np.empty(n, np.int64)
            rank[order] = np.arange(n)
            self._to_code = gray(rank)
            self._from_rank = np.asarray(order, np.int64)
        else:
            self._to_code = np.arange(n, dtype=np.int64)
            self._from_rank = self._to_code

    def _codes_to_ids(self, codes: np.ndarray) -> np.ndarray:
        hi_lo = np.stack([codes >> 8, codes & 0xFF], axis=-1).reshape(-1)
        return hi_lo.astype(vocab.ID_DTYPE) + vocab.COMP_OFFSET

    def encode(self, data: bytes) -> np.ndarray:
        return self._codes_to_ids(self._to_code[self.tokenizer.piece_ids(data)])

    def encode_batch(self, docs: list[bytes]) -> list[np.ndarray]:
        return [self._codes_to_ids(self._to_code[p]) for p in self.tokenizer.piece_ids_batch(docs)]

    def decode(self, ids: np.ndarray) -> bytes:
        sym = vocab.decode_comp(ids)
        if sym.size % 2 or (sym.size and int(sym.max()) > 255):
            raise ValueError(f"tokens_as_bytes ids must be pairs of symbols 0..255, got {sym.size} symbols "
                             f"up to {int(sym.max()) if sym.size else 0}.")
        codes = sym[0::2] * 256 + sym[1::2]
        pieces = inverse_gray(codes) if self.gray_code else codes
        if pieces.size and int(pieces.max()) >= self.tokenizer.num_symbols:
            raise ValueError(f"tokens_as_bytes code {int(codes.max())} is not a token of this vocabulary.")
        return self.tokenizer.piece_bytes(self._from_rank[pieces])

    def manifest(self) -> dict[str, Any]:
        m = self.tokenizer.manifest()
        return {"name": self.name, "num_symbols": self.num_symbols, "gray_code": self.gray_code,
                "tokenizer_vocab_size": m["vocab_size"], "model_sha256": m["model_sha256"]}


# ---- training -------------------------------------------------------------------------------------

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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(model.getvalue())
    os.replace(tmp, path)
    return path


def tokenizer_fingerprint(vocab_size: int, max_bytes: int, corpus_fingerprint: str) -> str:
    settings = sorted(trainer_settings(vocab_size).items()) + [("max_bytes", int(max_bytes)),
                                                                 ("version", TRAINER_VERSION)]
    return hashlib.sha256(f"{settings!r}|{corpus_fingerprint}".encode()).hexdigest()


def cached_tokenizer(workdir: str | None, vocab_size: int, max_bytes: int, corpus_fingerprint: str,
                     train_docs: Callable[[], Iterable[bytes]]) -> TokenizerProxy:
    """The tokenizer for these settings and corpus: loaded from ``{workdir}/proxy`` or trained there."""
    fp = tokenizer_fingerprint(vocab_size, max_bytes, corpus_fingerprint)
    if workdir:
        prefix = os.path.join(workdir, "proxy", f"tokenizer-v{vocab_size}-{fp[:12]}")
        if os.path.isfile(prefix + ".model"):
            return TokenizerProxy.from_file(prefix + ".model")
        return TokenizerProxy.from_file(train_tokenizer(train_docs(), vocab_size, prefix, max_bytes))
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = train_tokenizer(train_docs(), vocab_size, os.path.join(tmp, "tokenizer"), max_bytes)
        return TokenizerProxy.from_file(path)
