"""Proxies (the compressors f), registered by name (``proxies.base.register``).

| name              | symbols            | notes                                                   |
|-------------------|--------------------|---------------------------------------------------------|
| ``bytes``         | 0 (raw ids)        | identity; the byte baseline                              |
| ``tokenizer``     | BPE vocabulary     | SentencePiece, lossless on any bytes; trained or loaded  |
| ``tokens_as_bytes`` | 256              | each token as 2 big-endian bytes, optional Gray code     |
| ``gzip``          | 256                | deterministic gzip stream; the negative control          |
| ``neural``        | 65536 (+ raw)      | small byte LM + arithmetic coding (``proxies.neural``)   |

Each proxy class owns its name, its settings keys, its symbol count from a config
(:func:`num_symbols`), how it is built from a config (:func:`make_proxy`) and how it is rebuilt from the
manifest a run recorded (:func:`from_manifest`). The functions here only look the name up.
"""

from __future__ import annotations

from typing import Any

# Registration order is the order of NAMES (and of error messages).
from proxy_jax.proxies.base import REGISTRY, Inputs, Proxy
from proxy_jax.proxies.simple import BytesProxy, GzipProxy  # noqa: I001
from proxy_jax.proxies.tokenizer import TokenizerProxy, TokensAsBytesProxy
from proxy_jax.proxies.neural import NeuralProxy
from proxy_jax.proxies.tokenizer_training import train_tokenizer

__all__ = ["NAMES", "Inputs", "Proxy", "BytesProxy", "GzipProxy", "NeuralProxy", "TokenizerProxy",
           "TokensAsBytesProxy", "check_name", "from_manifest", "make_proxy", "num_symbols", "proxy_class",
           "proxy_settings", "train_tokenizer"]

NAMES = tuple(REGISTRY)


def proxy_class(name: str) -> type[Proxy]:
    """The registered proxy ``name``; one sentence listing the names if there is none."""
    if name not in REGISTRY:
        raise ValueError(f"--config.proxy.name={name!r} is not one of {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def check_name(name: str) -> None:
    proxy_class(name)


def proxy_settings(proxy_config) -> dict[str, Any]:
    """The ``config.proxy`` values that determine a proxy's output (recorded with preprocessed shards)."""
    return proxy_class(proxy_config.name).settings_of(proxy_config)


def num_symbols(proxy_config) -> int:
    """The compressed symbols the proxy of ``proxy_config`` will have, without building it."""
    return proxy_class(proxy_config.name).symbols_of(proxy_config)


def make_proxy(proxy_config, inputs: Inputs | None = None, **kwargs) -> Proxy:
    """The proxy ``proxy_config.name`` names, built from ``inputs`` (or ``Inputs(**kwargs)``).

    A proxy never reads a corpus or another run's workdir itself: ``proxy_jax.assemble.make_proxy``
    gathers its training documents, corpus sample or M1 from a run's config.
    """
    return proxy_class(proxy_config.name).build(proxy_config, inputs or Inputs(**kwargs))


def from_manifest(manifest: dict[str, Any], inputs: Inputs | None = None, **kwargs) -> Proxy:
    """The proxy a run recorded, rebuilt from its manifest and pinned artifacts (no corpus)."""
    return proxy_class(manifest["name"]).from_manifest(manifest, inputs or Inputs(**kwargs))
