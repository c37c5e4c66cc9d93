"""The proxy interface: a deterministic map from a document's bytes to the ids of its compressed view.

A proxy returns ids in the shared vocabulary (``proxy_jax.vocab``): compressed symbol ``s`` is id
``s + 320``; a proxy may also pass raw bytes through (ids 64..319), as the neural proxy does for spans
it leaves uncompressed. Sentinels, BOS and EOS are added later by the mixing stage, never by a proxy.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np


class Proxy(abc.ABC):
    """One compressor f. Subclasses must be deterministic: the same bytes always give the same ids."""

    #: Registry name, e.g. "tokenizer", "gzip", "bytes", "neural".
    name: str = ""
    #: Number of compressed symbols; the model's vocabulary is ``320 + num_symbols``.
    num_symbols: int = 0
    #: Whether ``decode(encode(x)) == x`` for every x.
    lossless: bool = True

    @abc.abstractmethod
    def encode(self, data: bytes) -> np.ndarray:
        """Bytes of one document -> int32 ids of its compressed view (no sentinels)."""

    @abc.abstractmethod
    def decode(self, ids: np.ndarray) -> bytes:
        """Ids of a compressed view -> bytes (exact for lossless proxies; used by tests and probes)."""

    @abc.abstractmethod
    def manifest(self) -> dict[str, Any]:
        """JSON-serialisable settings that identify this proxy (written next to preprocessed shards)."""

    def encode_batch(self, docs: list[bytes]) -> list[np.ndarray]:
        """Encode many documents; proxies with a vectorised path (neural) override this."""
        return [self.encode(d) for d in docs]
