"""The proxy interface and its registry: each proxy declares its name, the ``config.proxy`` keys that shape
its output, its symbol count from the config, how it is built, and how it is rebuilt from its manifest.

A proxy returns ids in the shared vocabulary (``proxy_jax.vocab``): compressed symbol ``s`` is id
``s + 320``; a proxy may also pass raw bytes through (ids 64..319), as the neural proxy does for spans
it leaves uncompressed. Sentinels, BOS and EOS are added later by the mixing stage, never by a proxy.

A proxy never reads a corpus or another run's workdir itself: what it needs (its training documents, a
corpus sample, a loaded M1, a tokenizer file) arrives in :class:`Inputs`, gathered by
``proxy_jax.assemble``. Its :meth:`Proxy.manifest` is what a run records (``run.json``): its settings,
its symbol count and its artifact pinned by sha256, so :meth:`Proxy.from_manifest` rebuilds exactly the
proxy a run trained with, without the corpus.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from typing import Any, Callable, Iterable

import numpy as np

from proxy_jax import storage

#: name -> proxy class, filled by :func:`register` as each proxy module is imported.
REGISTRY: dict[str, type["Proxy"]] = {}


def register(cls: type["Proxy"]) -> type["Proxy"]:
    """Class decorator: makes ``cls`` the proxy of ``config.proxy.name == cls.name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"proxy name {cls.name!r} is empty or registered twice.")
    REGISTRY[cls.name] = cls
    return cls


@dataclasses.dataclass
class Inputs:
    """What a proxy may be handed to build itself (each optional; a proxy asks only for what it needs).

    ``workdir``: where the proxy keeps its artifacts (a trained tokenizer). ``train_docs()``: the training
    split in a fixed order, and ``corpus_fingerprint`` (keys the tokenizer cache). ``tokenizer_file``: a
    tokenizer that comes with the data (preprocessed shards). ``m1``: a loaded M1, or ``load_m1(workdir)``
    to load one. ``sample_docs``: a fixed corpus sample (a list, or ``f(sample_bytes) -> list``).
    """

    workdir: str | None = None
    train_docs: Callable[[], Iterable[bytes]] | None = None
    corpus_fingerprint: str = ""
    tokenizer_file: str = ""
    m1: Any = None
    load_m1: Callable[[str], Any] | None = None
    sample_docs: Any = None


def file_sha256(path: str) -> str:
    if storage.is_remote(path):
        return hashlib.sha256(storage.read_bytes(path)).hexdigest()
    h = hashlib.sha256()
    with open(storage.local(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pinned_file(manifest: dict[str, Any], workdir: str) -> str:
    """The path of a manifest's artifact under ``workdir``, after checking its sha256; one sentence if not."""
    art = manifest.get("artifact") or {}
    path = storage.join(workdir, art.get("file", ""))
    if not art.get("file") or not storage.isfile(path):
        raise FileNotFoundError(f"{path} is missing: the run in {workdir} recorded its {manifest['name']} proxy "
                                f"there (run.json); restore the file from a copy of the workdir.")
    got = file_sha256(path)
    if got != art.get("sha256"):
        raise ValueError(f"{path} has sha256 {got[:12]}... but the run trained with {str(art.get('sha256'))[:12]}...; "
                         "restore the original file from a copy of the workdir.")
    return path


class Proxy(abc.ABC):
    """One compressor f. Subclasses must be deterministic: the same bytes always give the same ids."""

    #: Registry name, e.g. "tokenizer", "gzip", "bytes", "neural".
    name: str = ""
    #: Number of compressed symbols; the model's vocabulary is ``320 + num_symbols``.
    num_symbols: int = 0
    #: Whether ``decode(encode(x)) == x`` for every x.
    lossless: bool = True
    #: The ``config.proxy`` keys that shape this proxy's output.
    settings: tuple[str, ...] = ()
    #: Whether the proxy makes a compressed view at all (the byte baseline's identity does not).
    compresses: bool = True

    @abc.abstractmethod
    def encode(self, data: bytes) -> np.ndarray:
        """Bytes of one document -> int32 ids of its compressed view (no sentinels)."""

    @abc.abstractmethod
    def decode(self, ids: np.ndarray) -> bytes:
        """Ids of a compressed view -> bytes (exact for lossless proxies; used by tests and probes)."""

    @abc.abstractmethod
    def manifest(self) -> dict[str, Any]:
        """JSON-serialisable settings that identify this proxy (recorded with a run and with preprocessed
        shards); always holds ``name`` and ``num_symbols``."""

    def encode_batch(self, docs: list[bytes]) -> list[np.ndarray]:
        """Encode many documents; proxies with a vectorised path (neural) override this."""
        return [self.encode(d) for d in docs]

    # ---- the registry's side: what a config or a manifest says about this proxy ----------------------
    @classmethod
    def settings_of(cls, proxy_config) -> dict[str, Any]:
        """``{name, key: value ...}`` of the keys that determine the output (preprocessed shards record it)."""
        return {"name": cls.name, **{k: proxy_config[k] for k in cls.settings}}

    @classmethod
    def symbols_of(cls, proxy_config) -> int:
        """The symbol count the proxy of ``proxy_config`` will have, without building it."""
        return int(cls.num_symbols)

    @classmethod
    def build(cls, proxy_config, inputs: Inputs) -> "Proxy":
        """The proxy of ``proxy_config`` from what ``inputs`` holds."""
        return cls()

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], inputs: Inputs) -> "Proxy":
        """The proxy a run recorded (``manifest()`` of the proxy it trained with); artifacts come from
        ``inputs.workdir`` and are checked against their pinned hashes."""
        return cls()

    def pin(self, workdir: str | None) -> None:
        """Keeps the proxy's artifact in ``workdir`` (so the run owns it); a no-op for proxies without one."""
