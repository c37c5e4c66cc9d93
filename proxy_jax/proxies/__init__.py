"""Proxies (the compressors f) and ``make_proxy``, which builds the one a config names.

| name              | symbols            | notes                                                   |
|-------------------|--------------------|---------------------------------------------------------|
| ``bytes``         | 0 (raw ids)        | identity; the byte baseline                              |
| ``tokenizer``     | BPE vocabulary     | SentencePiece, lossless on any bytes; trained or loaded  |
| ``tokens_as_bytes`` | 256              | each token as 2 big-endian bytes, optional Gray code     |
| ``gzip``          | 256                | deterministic gzip stream; the negative control          |
| ``neural``        | 65536 (+ raw)      | small byte LM + arithmetic coding (``proxies.neural``)   |
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Iterable

import numpy as np

from proxy_jax.config import PROXIES
from proxy_jax.proxies.base import Proxy
from proxy_jax.proxies.simple import BytesProxy, GzipProxy
from proxy_jax.proxies.tokenizer import TokenizerProxy, TokensAsBytesProxy, cached_tokenizer, train_tokenizer

__all__ = ["Proxy", "BytesProxy", "GzipProxy", "TokenizerProxy", "TokensAsBytesProxy", "make_proxy",
           "proxy_settings", "train_tokenizer", "PREPROCESSED_TOKENIZER"]

# A preprocessed folder carries the tokenizer its shards were made with, under this name.
PREPROCESSED_TOKENIZER = "tokenizer.model"

_SETTINGS = {
    "bytes": (),
    "gzip": ("gzip_level",),
    "tokenizer": ("vocab_size", "train_max_bytes", "model_path"),
    "tokens_as_bytes": ("vocab_size", "train_max_bytes", "model_path", "gray_code"),
}
# Keys of config.proxy that belong to no proxy above and are not paths belong to the neural proxy.
_NOT_NEURAL = {"name", "m1_workdir"} | {k for keys in _SETTINGS.values() for k in keys}


def proxy_settings(proxy_config) -> dict[str, Any]:
    """The ``config.proxy`` values that determine a proxy's output (recorded with preprocessed shards)."""
    name = proxy_config.name
    if name not in PROXIES:
        raise ValueError(f"config.proxy.name={name!r} is not one of {PROXIES}.")
    keys = _SETTINGS[name] if name != "neural" else tuple(k for k in proxy_config if k not in _NOT_NEURAL)
    settings = {"name": name, **{k: proxy_config[k] for k in keys}}
    if name in ("tokenizer", "tokens_as_bytes"):
        # A user model is named by its file name (folders differ between machines); a trained one by
        # its training settings.
        path = settings.pop("model_path")
        if path:
            del settings["vocab_size"], settings["train_max_bytes"]
            settings["model_file"] = os.path.basename(path)
    return settings


def _train_docs_of_split(data_config) -> tuple[Callable[[], Iterable[bytes]], str]:
    from proxy_jax.data import corpus
    src = corpus.load_split(data_config, "train")
    # A fixed permutation, so that a byte cap takes documents from the whole corpus, not its first files.
    order = np.random.default_rng(0).permutation(len(src))
    return (lambda: (src[int(i)] for i in order)), src.fingerprint()


def _fingerprint_docs(docs: Iterable[bytes], max_bytes: int) -> str:
    h, total = hashlib.sha256(), 0
    for d in docs:
        if total >= max_bytes:
            break
        d = bytes(d[:max_bytes - total])
        h.update(len(d).to_bytes(8, "little") + d)
        total += len(d)
    return h.hexdigest()


def _tokenizer(config, workdir: str | None, train_docs) -> TokenizerProxy:
    p = config.proxy
    if p.model_path:
        return TokenizerProxy.from_file(p.model_path)
    if config.data.source == "preprocessed":
        from proxy_jax.data import corpus
        manifest = corpus.read_manifest(config.data.path)
        corpus.check_proxy_settings(manifest, p, config.data.path)
        return TokenizerProxy.from_file(os.path.join(config.data.path, PREPROCESSED_TOKENIZER))
    vocab_size, max_bytes = int(p.vocab_size), int(p.train_max_bytes)
    if max_bytes <= 0:
        raise ValueError(f"config.proxy.train_max_bytes must be > 0, got {max_bytes}.")
    if train_docs is None:
        train_docs, fingerprint = _train_docs_of_split(config.data)
    else:
        fingerprint = "docs:" + _fingerprint_docs(train_docs(), max_bytes)
    return cached_tokenizer(workdir, vocab_size, max_bytes, fingerprint, train_docs)


def make_proxy(config, workdir: str | None = None,
               train_docs: Callable[[], Iterable[bytes]] | None = None) -> Proxy:
    """The proxy ``config.proxy.name`` names.

    The tokenizer proxies load ``config.proxy.model_path``, or the tokenizer stored with preprocessed
    shards, or train on the training split (or on ``train_docs()``), cached under ``{workdir}/proxy``.
    """
    name = config.proxy.name
    if name == "bytes":
        return BytesProxy()
    if name == "gzip":
        return GzipProxy(int(config.proxy.gzip_level))
    if name in ("tokenizer", "tokens_as_bytes"):
        tok = _tokenizer(config, workdir, train_docs)
        return tok if name == "tokenizer" else TokensAsBytesProxy(tok, bool(config.proxy.gray_code))
    if name == "neural":
        from proxy_jax.proxies import neural
        return neural.NeuralProxy.from_config(config, workdir)
    raise ValueError(f"config.proxy.name={name!r} is not a proxy; choose one of {PROXIES}.")
