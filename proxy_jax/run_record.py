"""What a trained run *is*, written once when the run is built: ``{workdir}/run.json``.

| field            | what                                                                              |
|------------------|-----------------------------------------------------------------------------------|
| ``proxy``        | the proxy's manifest: name, settings, ``num_symbols``, its artifact pinned by sha256 |
|                  | (the tokenizer ``.model`` kept under ``proxy/``; for the neural proxy M1's workdir,  |
|                  | parameter hash and the fitted entropy threshold)                                   |
| ``text_format``  | how the run writes a document: ``sentinel``, ``plain`` or ``compressed``            |
| ``vocab_size``   | the logical vocabulary (320 + symbols; 320 for the raw-only control)               |
| ``model``        | ``ModelArgs``: the same ``vocab_size`` and the ``padded_vocab_size`` rows the       |
|                  | parameters have (records written before the two names were split kept the padded  |
|                  | size under ``model.vocab_size``; they are read with the logical one)               |
| ``num_targets``  | tokens each position predicts (rows carry ``seq_len + num_targets``)               |
| ``mesh``         | the mesh the run was built on (shape, axis names, devices)                         |
| ``corpus``       | the training split it was built from: description, fingerprint, document count     |
| ``library_version`` | the ``proxy_jax`` version that wrote it                                         |

Every consumer after training (resume, evaluation, sampling, generation, export, sweeps) reads this
record instead of deriving it again from the config and the corpus. The training split's document keys
are kept beside it (``corpus_keys.txt.gz``) so a resumed run can say which files changed.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
from typing import Any

from proxy_jax import __version__, storage
from proxy_jax.model import ModelArgs

RUN = "run.json"
CORPUS_KEYS = "corpus_keys.txt.gz"
FORMAT = 1
MAX_KEYS = 2_000_000  # larger splits record only their fingerprint and count

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    proxy: dict[str, Any]
    text_format: str
    vocab_size: int
    model: dict[str, Any]
    num_targets: int
    mesh: dict[str, Any]
    corpus: dict[str, Any]
    library_version: str = __version__
    format: int = FORMAT

    @property
    def args(self) -> ModelArgs:
        return ModelArgs(**self.model)

    @property
    def padded_vocab_size(self) -> int:
        """Embedding and head rows of the parameters (>= ``vocab_size``)."""
        return int(self.model["padded_vocab_size"])

    @property
    def proxy_name(self) -> str:
        return str(self.proxy["name"])

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "RunRecord":
        fields = {f.name for f in dataclasses.fields(cls)}
        record = {k: v for k, v in obj.items() if k in fields}
        # Older records kept the padded size as model.vocab_size: ModelArgs.vocab_size is the logical one.
        record["model"] = {**record["model"], "vocab_size": int(record["vocab_size"])}
        return cls(**record)

    def artifact_hashes(self) -> dict[str, str]:
        """What pins the proxy: ``{what: sha256}`` (empty for proxies without an artifact)."""
        out = {}
        if self.proxy.get("artifact"):
            out["proxy artifact"] = self.proxy["artifact"]["sha256"]
        if self.proxy.get("m1_params_sha256"):
            out["M1 parameters"] = self.proxy["m1_params_sha256"]
        return out


def path(workdir: str) -> str:
    return storage.join(workdir, RUN)


def exists(workdir: str) -> bool:
    return storage.isfile(path(workdir))


def write(workdir: str, record: RunRecord, corpus_keys: list[str] | None = None) -> None:
    """Writes ``run.json`` (each file replaced whole) and, when given, the training split's keys."""
    storage.makedirs(workdir)
    if corpus_keys is not None and len(corpus_keys) <= MAX_KEYS:
        data = "\n".join(corpus_keys).encode("utf-8", "surrogatepass")
        storage.write_bytes(storage.join(workdir, CORPUS_KEYS), gzip.compress(data, mtime=0))
    storage.write_text(path(workdir), json.dumps(record.to_json(), indent=2, sort_keys=True))


def read(workdir: str) -> RunRecord:
    return RunRecord.from_json(json.loads(storage.read_text(path(workdir))))


def corpus_keys(workdir: str) -> list[str] | None:
    p = storage.join(workdir, CORPUS_KEYS)
    if not storage.isfile(p):
        return None
    text = gzip.decompress(storage.read_bytes(p)).decode("utf-8", "surrogatepass")
    return text.split("\n") if text else []


def _documents(keys: list[str]) -> set[str]:
    """Source documents of split keys (a long document cut into pieces has keys ``name#0``, ``name#1``...)."""
    out = set()
    for key in keys:
        head, sep, tail = key.rpartition("#")
        out.add(head if sep and tail.isdigit() else key)
    return out


def corpus_change(recorded: dict[str, Any], fingerprint: str, keys: list[str], old_keys: list[str] | None) -> str:
    """One line saying how the training split differs from the one the run was built on ('' if it does not)."""
    if recorded.get("fingerprint") == fingerprint:
        return ""
    if old_keys is None:
        return (f"the training split changed since the run started ({recorded.get('documents')} documents then, "
                f"{len(keys)} now)")
    before, now = _documents(old_keys), _documents(keys)
    added, removed = sorted(now - before), sorted(before - now)

    def some(names: list[str]) -> str:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    parts = []
    if added:
        parts.append(f"{len(added)} added ({some(added)})")
    if removed:
        parts.append(f"{len(removed)} removed ({some(removed)})")
    if not parts:
        parts.append("same documents, different contents")
    return f"the training split changed since the run started: {'; '.join(parts)}"
