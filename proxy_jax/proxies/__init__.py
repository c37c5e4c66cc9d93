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

from proxy_jax.proxies.base import Proxy
from proxy_jax.proxies.simple import BytesProxy, GzipProxy
from proxy_jax.proxies.tokenizer import TokenizerProxy, TokensAsBytesProxy, cached_tokenizer, train_tokenizer

__all__ = ["NAMES", "Proxy", "BytesProxy", "GzipProxy", "TokenizerProxy", "TokensAsBytesProxy", "check_name",
           "make_proxy", "proxy_settings", "train_tokenizer"]

NAMES = ("bytes", "tokenizer", "tokens_as_bytes", "gzip", "neural")

_SETTINGS = {
    "bytes": (),
    "gzip": ("gzip_level",),
    "tokenizer": ("vocab_size", "train_max_bytes", "model_path"),
    "tokens_as_bytes": ("vocab_size", "train_max_bytes", "model_path", "gray_code"),
}
# Keys of config.proxy that belong to no proxy above and are not paths belong to the neural proxy.
_NOT_NEURAL = {"name", "m1_workdir"} | {k for keys in _SETTINGS.values() for k in keys}


def check_name(name: str) -> None:
    """Raises one sentence unless ``name`` is a proxy of :data:`NAMES`."""
    if name not in NAMES:
        raise ValueError(f"--config.proxy.name={name!r} is not one of {', '.join(NAMES)}.")


def proxy_settings(proxy_config) -> dict[str, Any]:
    """The ``config.proxy`` values that determine a proxy's output (recorded with preprocessed shards)."""
    name = proxy_config.name
    check_name(name)
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


def _fingerprint_docs(docs: Iterable[bytes], max_bytes: int) -> str:
    h, total = hashlib.sha256(), 0
    for d in docs:
        if total >= max_bytes:
            break
        d = bytes(d[:max_bytes - total])
        h.update(len(d).to_bytes(8, "little") + d)
        total += len(d)
    return h.hexdigest()


def _tokenizer(p, workdir: str | None, train_docs, corpus_fingerprint: str) -> TokenizerProxy:
    if p.model_path:
        return TokenizerProxy.from_file(p.model_path)
    vocab_size, max_bytes = int(p.vocab_size), int(p.train_max_bytes)
    if max_bytes <= 0:
        raise ValueError(f"config.proxy.train_max_bytes must be > 0, got {max_bytes}.")
    if train_docs is None:
        raise ValueError(f"config.proxy.name={p.name!r} with no proxy.model_path trains a tokenizer and needs "
                         "train_docs (proxy_jax.assemble.make_proxy passes the training split).")
    fingerprint = corpus_fingerprint or "docs:" + _fingerprint_docs(train_docs(), max_bytes)
    return cached_tokenizer(workdir, vocab_size, max_bytes, fingerprint, train_docs)


def make_proxy(proxy_config, *, workdir: str | None = None,
               train_docs: Callable[[], Iterable[bytes]] | None = None, corpus_fingerprint: str = "",
               m1=None, sample_docs: list[bytes] | None = None) -> Proxy:
    """The proxy ``proxy_config.name`` names (``proxy_config`` is ``config.proxy``), from what it is handed.

    A proxy never reads a corpus or a workdir of another run itself: the tokenizer proxies load
    ``proxy_config.model_path`` or train on ``train_docs()`` (cached under ``{workdir}/proxy``, keyed by
    ``corpus_fingerprint`` or a hash of the documents); the neural proxy is handed its loaded ``m1``
    (``proxies.neural.M1``) and, unless ``entropy_threshold`` is set, ``sample_docs`` to fit it on.
    ``proxy_jax.assemble.make_proxy`` gathers all of these from a run's config.
    """
    name = proxy_config.name
    check_name(name)
    if name == "bytes":
        return BytesProxy()
    if name == "gzip":
        return GzipProxy(int(proxy_config.gzip_level))
    if name in ("tokenizer", "tokens_as_bytes"):
        tok = _tokenizer(proxy_config, workdir, train_docs, corpus_fingerprint)
        return tok if name == "tokenizer" else TokensAsBytesProxy(tok, bool(proxy_config.gray_code))
    from proxy_jax.proxies import neural

    return neural.NeuralProxy.from_settings(proxy_config, m1, sample_docs)
