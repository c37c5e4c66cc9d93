"""The two proxies that need no training: raw bytes (the byte baseline) and gzip (the negative control)."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import numpy as np

from proxy_jax import vocab
from proxy_jax.proxies.base import Inputs, Proxy, register


@register
class BytesProxy(Proxy):
    """Identity: the "compressed" view is the raw bytes themselves (ids 64..319, no extra symbols)."""

    name = "bytes"
    num_symbols = 0
    lossless = True
    compresses = False

    def encode(self, data: bytes) -> np.ndarray:
        return vocab.encode_raw(data)

    def decode(self, ids: np.ndarray) -> bytes:
        return vocab.decode_raw(ids, strict=True)

    def manifest(self) -> dict[str, Any]:
        return {"name": self.name, "num_symbols": self.num_symbols}


@register
class GzipProxy(Proxy):
    """The bytes of a deterministic gzip stream (no file name, mtime 0) as 256 symbols."""

    name = "gzip"
    num_symbols = 256
    lossless = True
    settings = ("gzip_level",)

    def __init__(self, level: int = 9):
        if not isinstance(level, int) or not 0 <= level <= 9:
            raise ValueError(f"proxy.gzip_level must be an integer in 0..9, got {level!r}.")
        self.level = level

    def encode(self, data: bytes) -> np.ndarray:
        stream = gzip.compress(bytes(data), compresslevel=self.level, mtime=0)
        return np.frombuffer(stream, dtype=np.uint8).astype(vocab.ID_DTYPE) + vocab.COMP_OFFSET

    def decode(self, ids: np.ndarray) -> bytes:
        symbols = vocab.decode_comp(ids)
        if symbols.size and int(symbols.max()) >= self.num_symbols:
            raise ValueError(f"gzip ids must lie in [320, 576), got {int(symbols.max()) + 320}.")
        try:
            return gzip.decompress(symbols.astype(np.uint8).tobytes())
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"ids are not a valid gzip stream: {e}") from e

    def manifest(self) -> dict[str, Any]:
        return {"name": self.name, "num_symbols": self.num_symbols, "level": self.level}

    @classmethod
    def build(cls, proxy_config, inputs: Inputs) -> "GzipProxy":
        return cls(int(proxy_config.gzip_level))

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], inputs: Inputs) -> "GzipProxy":
        return cls(int(manifest["level"]))
