"""Config -> training run: the one place that turns a config into a proxy, a model, a mesh, a state and steps.

Every piece below is handed what it needs by this module: a proxy gets its training documents, its M1
or its preprocessed tokenizer from here (proxies never read a corpus), the pipeline gets its proxy and
the corpus split, the train step its optimiser and shardings. :func:`validate` runs every check of a
config before anything is built, so a bad value stops the run with one sentence before any costly work.

* :func:`build` -> :class:`Run` for training (``proxy_jax.train``): on the first build of a workdir it
  writes the run record (``run_record``, with the proxy's artifact pinned); a resumed build rebuilds the
  proxy from that record, never from the corpus again;
* :class:`Corpus`: the splits of a config, each indexed once per process and handed on;
* :func:`make_proxy`, :func:`heldout_docs`, :func:`preprocess` for the commands and notebooks.

A finished run is read back by ``proxy_jax.restore`` (evaluation, sampling, export), not here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any, Callable, Iterable

import jax
import ml_collections
import numpy as np

from proxy_jax import __version__, proxies, recipes, run_record, sharding, storage, vocab
from proxy_jax import config as config_lib
from proxy_jax import optimizer as optimizer_lib
from proxy_jax import restore as restore_lib
from proxy_jax import text_format as text_format_lib
from proxy_jax import train_step as step_lib
from proxy_jax.data import corpus as corpus_lib
from proxy_jax.data import mixture as mixture_lib
from proxy_jax.data import mixture_stream
from proxy_jax.data import schedule, shards
from proxy_jax.model import ModelArgs, Transformer
from proxy_jax.model.args import resolve_scan_layers
from proxy_jax.model.attention import kernel_error

log = logging.getLogger(__name__)


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None,
             process_count: int | None = None) -> None:
    """Every check of ``config``, each made by the code that owns the value; raises one sentence."""
    config_lib.validate(config)
    schedule.validate_mix(config.mix)
    proxies.check_name(config.proxy.name)
    corpus_lib.check_source(config.data)
    mixture_lib.check(config)
    args = ModelArgs.from_config(config.model, vocab.RAW_VOCAB_SIZE)  # the model's own constraints
    config.model.dtype, config.model.param_dtype = args.dtype, args.param_dtype  # "fp16" is kept as "float16"
    optimizer_lib.validate(config.opt, config.train.steps)
    sharding.validate(config, jax.device_count() if num_devices is None else num_devices, process_count)


def validate_training(config: ml_collections.ConfigDict) -> None:
    """:func:`validate` plus what training on this machine needs (its attention kernel): the checks a run
    passes before it writes anything to its workdir."""
    validate(config)
    if error := kernel_error(config.model.attention):
        raise ValueError(error)


# ---- the corpus, loaded once ------------------------------------------------------------------------

class Corpus:
    """The splits of ``config.data``, each indexed once per process (names and sizes, no contents) and handed
    to whoever needs it: the tokenizer's training documents, the neural proxy's sample, the pipeline and
    the held-out documents all read the same loaded split."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self._splits: dict[tuple[str, int], Any] = {}
        self._parts: dict[tuple[int, str], dict[str, list[bytes]]] = {}

    def split(self, name: str, *, whole: bool = False):
        """The ``corpus.load_split`` of ``name``; ``whole`` documents (evaluation) ignore ``data.max_doc_bytes``."""
        data = self.config.data
        cut = 0 if whole else int(data.max_doc_bytes)
        key = (name, cut)
        if key not in self._splits:
            if cut != int(data.max_doc_bytes):
                data = ml_collections.ConfigDict(data.to_dict())
                data.max_doc_bytes = cut
            self._splits[key] = mixture_stream.load_split(data, name, proxy_config=self.config.proxy)
        return self._splits[key]

    def train_documents(self) -> Callable[[], Iterable[bytes]]:
        """The training split in a fixed shuffled order (so a byte cap samples the whole corpus)."""
        src = self.split("train")
        if hasattr(src, "mix"):  # a mixture: its components at their weights from step 0
            cum = mixture_lib.weight_plan(src.mix)[0][1]
            return lambda: mixture_lib.cycle_at_weights(src.components, cum)
        order = np.random.default_rng(0).permutation(len(src))
        return lambda: (src[int(i)] for i in order)

    def sample(self, sample_bytes: int, max_docs: int = 256) -> list[bytes]:
        """A fixed sample of the training split: up to ``max_docs`` documents spread evenly over it, each cut
        to an equal share of ``sample_bytes`` (the same sample for the same corpus, whatever the run)."""
        source = self.split("train")
        n = len(source)
        if n == 0:
            raise ValueError("The training split is empty; the neural proxy needs documents to set its threshold.")
        picks = sorted({int(i * n / min(n, max_docs)) for i in range(min(n, max_docs))})
        share = max(1, sample_bytes // len(picks))
        return [bytes(source[i])[:share] for i in picks]

    def heldout(self, max_docs: int = 0, split: str = "validation") -> list[bytes]:
        """Whole documents of ``split`` (the first ``max_docs`` if > 0): what evaluation scores. A mixture's are
        its components' (:meth:`heldout_parts`) drawn at the weights from step 0 (among the components that hold
        out any), each document once, up to the first component with weight > 0 that has none left."""
        parts = self.heldout_parts(max_docs, split)
        if parts:
            mix = self.split(split, whole=True).mix
            weights = [c["weight"] if parts[c["name"]] else 0.0 for c in mix["components"]]
            if not any(weights):
                return []
            cum = mixture_lib.cumulative(weights)
            return mixture_lib.interleave(list(parts.values()), cum, limit=max_docs)
        return _first_documents(self.split(split, whole=True), max_docs)

    def heldout_parts(self, max_docs: int = 0, split: str = "validation") -> dict[str, list[bytes]]:
        """A mixture's held-out documents per component name (each as :meth:`heldout` of that source alone);
        {} without a mixture. Read once per ``(max_docs, split)``: :meth:`heldout` and training both use them."""
        source = self.split(split, whole=True)
        if not hasattr(source, "mix"):
            return {}
        if (max_docs, split) not in self._parts:
            self._parts[max_docs, split] = {name: _first_documents(comp, max_docs)
                                            for name, comp in zip(source.names, source.components)}
        return self._parts[max_docs, split]


def _first_documents(source, max_docs: int) -> list[bytes]:
    """The first ``max_docs`` (all if 0) non-empty documents of ``source``: a lazy index may hold empty ones
    (null rows, empty texts), which are not scored."""
    docs = []
    for i in range(len(source)):
        if max_docs > 0 and len(docs) == max_docs:
            break
        if doc := source[i]:
            docs.append(doc)
    return docs


def heldout_docs(config: ml_collections.ConfigDict, max_docs: int = 0, *, split: str = "validation") -> list[bytes]:
    """The documents evaluation scores: whole documents of ``split`` (the first ``max_docs`` if > 0)."""
    return Corpus(config).heldout(max_docs, split)


# ---- proxies ------------------------------------------------------------------------------------------

def make_proxy(config: ml_collections.ConfigDict, workdir: str | None = None,
               corpus: Corpus | None = None) -> proxies.Proxy:
    """The proxy of ``config.proxy``, with whatever it asks for gathered from the rest of the config.

    The proxy class decides what it uses (``proxies.base.Inputs``): the training split (a tokenizer trained
    and cached under ``{workdir}/proxy``), the tokenizer stored with preprocessed shards (after checking the
    shards' proxy settings), an M1 (``restore.load_m1``), a fixed corpus sample. Nothing is read that the
    proxy does not ask for.
    """
    proxies.check_name(config.proxy.name)
    corpus = corpus or Corpus(config)
    inputs = proxies.Inputs(workdir=workdir, load_m1=restore_lib.load_m1, sample_docs=corpus.sample)
    preprocessed = mixture_lib.preprocessed_paths(config.data)
    if preprocessed:  # the shards' own tokenizer (a mixture's first preprocessed component's)
        for path in preprocessed:
            shards.check_proxy_settings(shards.read_manifest(path), config.proxy, path)
        inputs.tokenizer_file = shards.tokenizer_file(preprocessed[0])
        made = shards.read_manifest(preprocessed[0]).get("proxy", {})
        if config.proxy.name == "neural" and made.get("name") == "neural":
            # The shards' proxy exactly (its M1 hash checked, its recorded threshold): a threshold fitted
            # again here from a sample of the shards could differ from the one that made them.
            return proxies.from_manifest(made, inputs)
        other = [p for p in preprocessed[1:] if proxies.base.file_sha256(shards.tokenizer_file(p)) !=
                 proxies.base.file_sha256(inputs.tokenizer_file)]
        if other:
            raise ValueError(f"The preprocessed shards {other[0]} were made with another tokenizer than "
                             f"{preprocessed[0]}; a mixture's preprocessed components must share one (preprocess them with one "
                             "--config.proxy.model_path).")
    else:
        inputs.train_docs = corpus.train_documents()
        inputs.corpus_fingerprint = corpus.split("train").fingerprint()
    return proxies.make_proxy(config.proxy, inputs)


def vocab_sizes(config: ml_collections.ConfigDict, num_symbols: int | None = None) -> tuple[int, int]:
    """``(logical, padded)`` vocabulary of the run of ``config`` (``num_symbols`` from the built proxy, else
    from the registry without building it); the raw-only control sees bytes only."""
    symbols = proxies.num_symbols(config.proxy) if num_symbols is None else int(num_symbols)
    if config.data.raw_only_of_mix:
        symbols = 0
    logical = vocab.vocab_size(symbols)
    padded = int(config.model.padded_vocab_size) or vocab.padded_vocab_size(symbols)
    if padded < logical:
        raise ValueError(f"--config.model.padded_vocab_size={padded} is smaller than the proxy's vocabulary {logical}; "
                         "set it to 0 to derive it.")
    return logical, padded


def preprocess(config: ml_collections.ConfigDict, output: str, cache_dir: str | None = None, *,
               workdir: str | None = None, **kwargs) -> dict:
    """Compresses the corpus of ``config`` once into shards under ``output`` (``data.shard_writer.write``); a
    tokenizer the proxy trains is cached under ``cache_dir`` (default ``{output}/work``, removed with the
    old output by ``overwrite``). ``workdir`` is the deprecated name of ``cache_dir``."""
    import warnings

    from proxy_jax.data import shard_writer

    if workdir:
        warnings.warn("assemble.preprocess(workdir=...) is deprecated: it names the tokenizer cache; pass "
                      "cache_dir=...", DeprecationWarning, stacklevel=2)
        cache_dir = cache_dir or workdir

    output, cache_dir = storage.resolve(output), storage.resolve(cache_dir)
    storage.resolve_config_paths(config)
    if config.data.source == "preprocessed":
        raise ValueError("config.data.source='preprocessed' is already preprocessed; preprocess the original "
                         "corpus source instead.")
    validate(config)
    for flag, path in (("--output", output), ("--cache_dir", cache_dir)):
        storage.check_usable(path, flag)
    corpus = Corpus(config)
    corpus.split("train")  # a corpus the source cannot read stops here, before anything is written
    with storage.staged(output) as folder:  # ArrayRecord writes local files only
        created = not os.path.isdir(folder)
        os.makedirs(folder, exist_ok=True)
        try:
            shard_writer.prepare_output(config, folder, overwrite=kwargs.get("overwrite", False))  # before training
            proxy = make_proxy(config, workdir=cache_dir or os.path.join(folder, shard_writer.CACHE_DIR),
                               corpus=corpus)
            return shard_writer.write(config, folder, proxy, **kwargs)
        except BaseException:
            if created:  # a refused or interrupted first start leaves no empty folders behind
                _remove_empty_tree(folder)
            raise


def _remove_empty_tree(root: str) -> None:
    """Removes ``root`` and the folders under it when none of them holds a file."""
    walked = list(os.walk(root))
    if any(files for _, _, files in walked):
        return
    for folder, _, _ in sorted(walked, key=lambda w: -len(w[0])):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


# ---- training runs -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """Everything a training run is made of (each piece also usable alone)."""

    config: ml_collections.ConfigDict
    workdir: str
    record: run_record.RunRecord
    proxy: proxies.Proxy
    corpus: Corpus
    model: Transformer
    mesh: Any
    tx: Any
    lr_schedule: Callable[[int], float]
    state: Any
    state_shardings: Any
    train_step: Callable
    eval_step: Callable
    pipeline: Any

    @property
    def vocab_size(self) -> int:
        """Logical vocabulary: 320 + the proxy's symbols."""
        return self.record.vocab_size


def _proxy_of_record(config, workdir: str, corpus: Corpus) -> tuple[proxies.Proxy, run_record.RunRecord] | None:
    """The proxy a workdir's record pins, when the record is for these proxy settings; None otherwise."""
    if not run_record.exists(workdir):
        return None
    record = run_record.read(workdir)
    if record.proxy.get("settings") != proxies.proxy_settings(config.proxy):
        return None  # a run that never saved a checkpoint, restarted with other proxy settings
    proxy = proxies.from_manifest(record.proxy, workdir=workdir, load_m1=restore_lib.load_m1)
    given = str(config.proxy.get("model_path", "") or "")
    if given and os.path.isfile(given) and "model_sha256" in record.proxy:
        sha = proxies.base.file_sha256(given)
        if sha != record.proxy["model_sha256"]:
            raise ValueError(f"--config.proxy.model_path={given} is not the tokenizer the run in {workdir} trained "
                             f"with (sha256 {sha[:12]}..., recorded {record.proxy['model_sha256'][:12]}...); point it "
                             "at the original file or use a new --workdir.")
    if config.data.source != "preprocessed" and record.corpus.get("fingerprint"):
        train = corpus.split("train")
        keys = [train.key(i) for i in range(len(train))]
        change = run_record.corpus_change(record.corpus, train.fingerprint(), keys, run_record.corpus_keys(workdir))
        if change:
            log.warning("%s; the run keeps the %s proxy it recorded (%s).", change[0].upper() + change[1:], record.proxy_name,
                        ", ".join(f"{k} {v[:12]}" for k, v in record.artifact_hashes().items()) or "no artifact")
    return proxy, record


def _new_record(config, workdir: str, proxy: proxies.Proxy, corpus: Corpus, args: ModelArgs,
                logical_vocab: int) -> tuple[run_record.RunRecord, list[str] | None]:
    """The record of a new run and its corpus keys (``build`` writes both once the run is built)."""
    proxy.pin(workdir)
    corpus_info: dict[str, Any] = {"source": "mixture" if config.data.get("mixture") else config.data.source}
    keys = None
    if config.data.source != "preprocessed":
        train = corpus.split("train")
        keys = [train.key(i) for i in range(len(train))]
        corpus_info.update(description=train.description, fingerprint=train.fingerprint(), documents=len(train))
    record = run_record.RunRecord(
        proxy={**proxy.manifest(), "settings": proxies.proxy_settings(config.proxy)},
        text_format=text_format_lib.of_mix(config.mix).name, vocab_size=int(logical_vocab), model=dataclasses.asdict(args),
        num_targets=config_lib.num_targets(args),
        mesh={"shape": list(sharding.mesh_shape(config, jax.device_count())),
              "axis_names": list(config.mesh.axis_names), "devices": jax.device_count()},
        corpus=corpus_info, library_version=__version__)
    return record, keys


def fix_scan_layers(config: ml_collections.ConfigDict, record: run_record.RunRecord | None = None) -> None:
    """Replaces ``model.scan_layers = "auto"`` in ``config`` by the True/False the run uses: the value its record
    holds when the workdir has one (the parameter tree was made with it), else the one resolved for this
    platform and depth (``model.args.resolve_scan_layers``). The training loop writes the result into
    config.json and the record keeps it, so a run never re-derives it, whatever machine it resumes or is
    restored on."""
    value = config.model.scan_layers
    if isinstance(value, bool):
        return
    if record is not None and isinstance(record.model.get("scan_layers"), bool) and str(value).lower() == "auto":
        config.model.scan_layers = record.model["scan_layers"]
    else:
        config.model.scan_layers = resolve_scan_layers(value, config.model.num_layers)


def build(config: ml_collections.ConfigDict, workdir: str, *, with_pipeline: bool = True,
          corpus: Corpus | None = None) -> Run:
    """Makes the proxy, model, mesh, optimiser, sharded state, jitted steps and the input pipeline; writes
    the run record on a workdir's first build, and rebuilds the recorded proxy on later ones."""
    from proxy_jax.data import pipeline as pipeline_lib

    validate_training(config)
    if long := recipes.longer_than_run(config):
        log.warning("train.steps=%d is shorter than %s: set them for this run (--config.train.steps and "
                    "recipes.load_config rescale them; assigning train.steps does not).", config.train.steps,
                    ", ".join(long))
    corpus = corpus or Corpus(config)
    pinned = _proxy_of_record(config, workdir, corpus)
    proxy = pinned[0] if pinned else make_proxy(config, workdir, corpus)
    true_vocab, padded_vocab = vocab_sizes(config, proxy.num_symbols)
    fix_scan_layers(config, pinned[1] if pinned else None)
    args = ModelArgs.from_config(config.model, true_vocab, padded_vocab_size=padded_vocab)
    record, keys = (pinned[1], None) if pinned else _new_record(config, workdir, proxy, corpus, args, true_vocab)
    model = Transformer(args)
    mesh = sharding.make_mesh(config)
    tx, lr_schedule = optimizer_lib.make_optimizer(config.opt, config.train.steps)
    state, state_shardings = sharding.init_train_state(config, model, tx, mesh, jax.random.key(config.seed))
    train_step = step_lib.make_train_step(config, model, tx, mesh, state_shardings, true_vocab, lr_schedule)
    eval_step = step_lib.make_eval_step(config, model, mesh, state_shardings, true_vocab)
    pipeline = (pipeline_lib.make_pipeline(config, "train", proxy=proxy, source=corpus.split("train"),
                                           host_prefetch=config.data.host_prefetch)
                if with_pipeline else None)
    if not pinned and jax.process_index() == 0:  # only once the whole run was built: a refused start leaves no record
        run_record.write(workdir, record, keys)
    return Run(config, workdir, record, proxy, corpus, model, mesh, tx, lr_schedule, state, state_shardings,
               train_step, eval_step, pipeline)
