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
import logging
import os
import re
from typing import Any

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from proxy_jax import storage, vocab
from proxy_jax.proxies import tokenizer_training as training
from proxy_jax.proxies.base import Inputs, Proxy, file_sha256, pinned_file, register

SPACE_MARK = training.SPACE_MARK
# Lone surrogates stand for the bytes of invalid UTF-8 (errors="surrogateescape"); U+2581 must also
# bypass SentencePiece because its decoder reads it as a space.
_NOT_TEXT = re.compile("[\udc80-\udcff\u2581]+")


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


@register
class TokenizerProxy(Proxy):
    """BPE token ids as symbols: id = piece id + 320, ``num_symbols`` = number of pieces.

    Its artifact is the SentencePiece ``.model`` file: :meth:`pin` keeps it under ``{workdir}/proxy/`` and
    the manifest names it with its sha256, so a run keeps its tokenizer whatever happens to the corpus.
    """

    name = "tokenizer"
    lossless = True
    settings = ("vocab_size", "train_max_bytes", "model_path")
    artifact: dict[str, str] | None = None  # {"file": path relative to the workdir, "sha256"} once pinned

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
        self._model_bytes = bytes(model_proto)
        self._setup()

    @classmethod
    def from_file(cls, path: str) -> "TokenizerProxy":
        if not storage.isfile(path):
            raise FileNotFoundError(f"SentencePiece model {path!r} does not exist; set proxy.model_path to a "
                                    "'.model' file or leave it empty to train one.")
        return cls(storage.read_bytes(path), origin=str(path))

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
                "overridden": self.normalizer_overridden, "artifact": self.artifact}

    def __setstate__(self, state):
        self._proto, self.origin = state["proto"], state["origin"]
        self.model_sha256, self.normalizer_overridden = state["sha"], state["overridden"]
        self.artifact, self._model_bytes = state.get("artifact"), None
        self._setup()

    # ---- registry ------------------------------------------------------------------------------------
    @classmethod
    def settings_of(cls, proxy_config) -> dict[str, Any]:
        # A user model is named by its file name (folders differ between machines); a trained one by its
        # training settings.
        settings = {"name": cls.name, **{k: proxy_config[k] for k in cls.settings}}
        path = settings.pop("model_path")
        if path:
            del settings["vocab_size"], settings["train_max_bytes"]
            settings["model_file"] = os.path.basename(path)
        return settings

    @classmethod
    def symbols_of(cls, proxy_config) -> int:
        if proxy_config.model_path and storage.isfile(proxy_config.model_path):
            proto = sentencepiece_model_pb2.ModelProto()
            proto.ParseFromString(storage.read_bytes(proxy_config.model_path))
            return len(proto.pieces)
        return int(proxy_config.vocab_size)

    @classmethod
    def build(cls, proxy_config, inputs: Inputs) -> "TokenizerProxy":
        """``proxy.model_path``, else the tokenizer that came with the data, else one trained on
        ``inputs.train_docs()`` and cached under ``{workdir}/proxy`` (keyed by the corpus fingerprint)."""
        if proxy_config.model_path:
            return cls.from_file(proxy_config.model_path)
        if inputs.tokenizer_file:
            return cls.from_file(inputs.tokenizer_file)
        vocab_size, max_bytes = int(proxy_config.vocab_size), int(proxy_config.train_max_bytes)
        if max_bytes <= 0:
            raise ValueError(f"config.proxy.train_max_bytes must be > 0, got {max_bytes}.")
        if inputs.train_docs is None:
            raise ValueError(f"config.proxy.name={proxy_config.name!r} with no proxy.model_path trains a tokenizer "
                             "and needs the training documents (proxy_jax.assemble.make_proxy passes them).")
        fingerprint = inputs.corpus_fingerprint or "docs:" + training.fingerprint_docs(inputs.train_docs(), max_bytes)
        model = training.cached_tokenizer(inputs.workdir, vocab_size, max_bytes, fingerprint, inputs.train_docs)
        return cls.from_file(model) if isinstance(model, str) else cls(model)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], inputs: Inputs) -> "TokenizerProxy":
        proxy = cls.from_file(pinned_file(manifest, inputs.workdir or ""))
        proxy.artifact = dict(manifest["artifact"])
        return proxy

    def pin(self, workdir: str | None) -> None:
        """Keeps the model file under ``{workdir}/proxy/`` (a trained one is already there)."""
        if not workdir:
            return
        root = storage.local(workdir) if storage.is_remote(workdir) else os.path.abspath(storage.local(workdir))
        folder = storage.join(root, "proxy")
        src = "" if not self.origin else self.origin if storage.is_remote(self.origin) else os.path.abspath(self.origin)
        if src and src.startswith(folder.rstrip("/") + ("/" if storage.is_remote(root) else os.sep)) \
                and storage.isfile(src):
            name = src[len(folder):].lstrip("/" + os.sep)
        else:
            name = f"tokenizer-{self.model_sha256[:12]}.model"
            path = storage.join(folder, name)
            if not storage.isfile(path):
                storage.makedirs(folder)
                if src and storage.isfile(src):
                    storage.copy(src, path)
                else:
                    storage.write_bytes(path, self._model_bytes or self._proto)
        self.artifact = {"file": f"proxy/{name}", "sha256": file_sha256(storage.join(folder, name))}

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
        out = {"name": self.name, "num_symbols": self.num_symbols, "vocab_size": self.num_symbols,
               "model_sha256": self.model_sha256, "normalizer_overridden": self.normalizer_overridden}
        if self.artifact:
            out["artifact"] = dict(self.artifact)
        return out


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


@register
class TokensAsBytesProxy(Proxy):
    """Each token id as 2 big-endian bytes (256 symbols), optionally Gray-coded over byte-sorted pieces."""

    name = "tokens_as_bytes"
    num_symbols = 256
    lossless = True
    settings = TokenizerProxy.settings + ("gray_code",)
    settings_of = TokenizerProxy.__dict__["settings_of"]  # model_path is named by its file, as there

    @classmethod
    def build(cls, proxy_config, inputs: Inputs) -> "TokensAsBytesProxy":
        return cls(TokenizerProxy.build(proxy_config, inputs), bool(proxy_config.gray_code))

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], inputs: Inputs) -> "TokensAsBytesProxy":
        tokenizer = TokenizerProxy.from_manifest({"name": cls.name, "artifact": manifest.get("artifact")}, inputs)
        return cls(tokenizer, bool(manifest["gray_code"]))

    def pin(self, workdir: str | None) -> None:
        self.tokenizer.pin(workdir)

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
        out = {"name": self.name, "num_symbols": self.num_symbols, "gray_code": self.gray_code,
               "tokenizer_vocab_size": m["vocab_size"], "model_sha256": m["model_sha256"]}
        if "artifact" in m:
            out["artifact"] = m["artifact"]
        return out
