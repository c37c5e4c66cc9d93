"""Config -> run: the one place that turns a config into a proxy, a model, a mesh, a state and steps.

Every piece below is handed what it needs by this module: a proxy gets its training documents, its M1
or its preprocessed tokenizer from here (proxies never read a corpus), the pipeline gets its proxy, the
train step its optimiser and shardings. :func:`validate` runs every check of a config before anything is
built, so a bad value stops the run with one sentence before compiling.

* :func:`build` -> :class:`Run` for training (``proxy_jax.train``);
* :func:`restore` -> :class:`Run` from a finished workdir (evaluation, sampling);
* :func:`make_proxy`, :func:`heldout_docs`, :func:`preprocess` for the commands and notebooks.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable

import jax
import ml_collections
import numpy as np

from proxy_jax import config as config_lib
from proxy_jax import metrics as metrics_lib
from proxy_jax import optimizer as optimizer_lib
from proxy_jax import proxies, sharding, vocab
from proxy_jax import train_step as step_lib
from proxy_jax import workdir as workdir_lib
from proxy_jax.data import corpus, schedule, shards
from proxy_jax.evaluation import bpb
from proxy_jax.model import ModelArgs, Transformer


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None,
             process_count: int | None = None) -> None:
    """Every check of ``config``, each made by the code that owns the value; raises one sentence."""
    config_lib.validate(config)
    schedule.validate_mix(config.mix)
    proxies.check_name(config.proxy.name)
    corpus.check_source(config.data)
    ModelArgs.from_config(config.model, vocab.RAW_VOCAB_SIZE)  # the model's own constraints
    optimizer_lib.validate(config.opt, config.train.steps)
    sharding.validate(config, jax.device_count() if num_devices is None else num_devices, process_count)


# ---- proxies and documents ------------------------------------------------------------------------

def train_documents(data_config) -> tuple[Callable[[], Iterable[bytes]], str]:
    """The training split in a fixed shuffled order (so a byte cap samples the whole corpus), and its
    fingerprint (which keys the tokenizer cache)."""
    src = corpus.load_split(data_config, "train")
    order = np.random.default_rng(0).permutation(len(src))
    return (lambda: (src[int(i)] for i in order)), src.fingerprint()


def corpus_sample(data_config, sample_bytes: int, max_docs: int = 256) -> list[bytes]:
    """A fixed sample of the training split: up to ``max_docs`` documents spread evenly over it, each cut to
    an equal share of ``sample_bytes`` (the same sample for the same corpus, whatever the run)."""
    source = corpus.load_split(data_config, "train")
    n = len(source)
    if n == 0:
        raise ValueError("The training split is empty; the neural proxy needs documents to set its threshold.")
    picks = sorted({int(i * n / min(n, max_docs)) for i in range(min(n, max_docs))})
    share = max(1, sample_bytes // len(picks))
    return [bytes(source[i])[:share] for i in picks]


def make_proxy(config: ml_collections.ConfigDict, workdir: str | None = None) -> proxies.Proxy:
    """The proxy of ``config.proxy``, with whatever it needs gathered from the rest of the config.

    Tokenizer proxies: ``proxy.model_path``, else the tokenizer stored with preprocessed shards (after
    checking the shards' proxy settings), else one trained on the training split and cached under
    ``{workdir}/proxy``. Neural: M1 from ``proxy.m1_workdir`` and, unless ``proxy.entropy_threshold`` is
    set, a fixed sample of the training split to fit the threshold on.
    """
    p = config.proxy
    proxies.check_name(p.name)
    kwargs: dict[str, Any] = {}
    if p.name in ("tokenizer", "tokens_as_bytes") and not p.model_path:
        if config.data.source == "preprocessed":
            shards.check_proxy_settings(shards.read_manifest(config.data.path), p, config.data.path)
            p = ml_collections.ConfigDict(p.to_dict())
            p.model_path = os.path.join(config.data.path, shards.TOKENIZER)
        else:
            kwargs["train_docs"], kwargs["corpus_fingerprint"] = train_documents(config.data)
    if p.name == "neural":
        kwargs["m1"] = workdir_lib.load_m1(p.m1_workdir)
        if p.entropy_threshold <= 0:
            kwargs["sample_docs"] = corpus_sample(config.data, int(p.entropy_sample_bytes))
    return proxies.make_proxy(p, workdir=workdir, **kwargs)


def heldout_docs(config: ml_collections.ConfigDict, max_docs: int = 0, *, split: str = "validation") -> list[bytes]:
    """The documents evaluation scores: whole documents of ``split`` (the first ``max_docs`` if > 0)."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.max_doc_bytes = 0  # training may cut documents into pieces; evaluation scores whole ones
    source = corpus.load_split(data, split)
    n = len(source) if max_docs <= 0 else min(max_docs, len(source))
    return [source[i] for i in range(n)]


def preprocess(config: ml_collections.ConfigDict, output: str, workdir: str | None = None, **kwargs) -> dict:
    """Compresses the corpus of ``config`` once into shards under ``output`` (``data.shard_writer.write``)."""
    from proxy_jax.data import shard_writer

    if config.data.source == "preprocessed":
        raise ValueError("config.data.source='preprocessed' is already preprocessed; preprocess the original "
                         "corpus source instead.")
    os.makedirs(output, exist_ok=True)
    proxy = make_proxy(config, workdir=workdir or os.path.join(output, "work"))
    return shard_writer.write(config, output, proxy, **kwargs)


# ---- runs -------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """Everything a run is made of (each piece also usable alone). A restored run has no proxy, train
    step or pipeline."""

    config: ml_collections.ConfigDict
    workdir: str
    proxy: Any
    vocab_size: int  # logical size: 320 + proxy symbols
    model: Any
    mesh: Any
    tx: Any
    lr_schedule: Callable[[int], float]
    state: Any
    state_shardings: Any
    train_step: Callable | None
    eval_step: Callable
    pipeline: Any
    step: int = 0  # the restored step (restored runs)

    def host_eval(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """Summed raw-byte NLL of one global eval batch; every process passes the same batch and feeds its
        own slice of rows."""
        count, index = jax.process_count(), jax.process_index()
        rows = batch["tokens"].shape[0] // count
        local = {k: v[index * rows : (index + 1) * rows] for k, v in batch.items()}
        out = self.eval_step(self.state.params, sharding.host_to_global(local, self.mesh))
        return metrics_lib.to_python(out)

    def bpb(self, docs: list[bytes], *, window: int | None = None, progress: bool = True) -> dict[str, float]:
        """Bits per raw byte of ``docs`` under the current parameters, the documents written as the run
        was trained (``config.text_layout``; the tokenizer baseline scores its symbols per byte of text);
        head 0 only, so rows carry one token beyond the window."""
        window = window or int(self.config.train.eval_window)
        layout = config_lib.text_layout(self.config)
        encode = None
        if layout == "compressed":  # the tokenizer baseline: its symbols' bits per byte of the same text
            if self.proxy is None:
                self.proxy = make_proxy(self.config, self.workdir)
            encode = self.proxy.encode
        return bpb.raw_bpb(self.host_eval, docs, window=window, extra=1,
                           batch_size=int(self.config.train.eval_batch_size),
                           progress=progress and jax.process_index() == 0, layout=layout, encode=encode)

    def sample(self, prompts: list[bytes], max_new_bytes: int, **kwargs) -> list[bytes]:
        """Bytes generated after each raw prompt (``proxy_jax.generate.generate``)."""
        from proxy_jax import generate

        return generate.generate(self.model, self.state.params, prompts, max_new_bytes=max_new_bytes, **kwargs)


def build(config: ml_collections.ConfigDict, workdir: str, *, with_pipeline: bool = True) -> Run:
    """Makes the proxy, model, mesh, optimiser, sharded state, jitted steps and the input pipeline."""
    from proxy_jax.data import pipeline as pipeline_lib

    validate(config)
    proxy = make_proxy(config, workdir)
    # The raw-only control still runs the proxy (its draws need the compressed lengths) but sees bytes only.
    symbols = 0 if config.data.raw_only_of_mix else proxy.num_symbols
    true_vocab = vocab.vocab_size(symbols)
    model_vocab = config.model.vocab_size or vocab.padded_vocab_size(symbols)
    if model_vocab < true_vocab:
        raise ValueError(f"config.model.vocab_size={model_vocab} is smaller than the proxy's vocabulary "
                         f"{true_vocab}; set it to 0 to derive it.")
    model = Transformer(ModelArgs.from_config(config.model, model_vocab))
    mesh = sharding.make_mesh(config)
    tx, lr_schedule = optimizer_lib.make_optimizer(config.opt, config.train.steps)
    state, state_shardings = sharding.init_train_state(config, model, tx, mesh, jax.random.key(config.seed))
    train_step = step_lib.make_train_step(config, model, tx, mesh, state_shardings, true_vocab, lr_schedule)
    eval_step = step_lib.make_eval_step(config, model, mesh, state_shardings, true_vocab)
    pipeline = (pipeline_lib.make_pipeline(config, "train", proxy=proxy, host_prefetch=config.data.host_prefetch)
                if with_pipeline else None)
    return Run(config, workdir, proxy, true_vocab, model, mesh, tx, lr_schedule, state, state_shardings,
               train_step, eval_step, pipeline)


def restore(workdir: str, step: int | None = None) -> Run:
    """A finished run read back from ``workdir`` (newest checkpoint that loads, or ``step``), ready to
    evaluate and sample; no proxy or pipeline is built."""
    config = workdir_lib.load_config(workdir)
    sharding.validate(config, jax.device_count())  # the run's mesh must fit this host's devices
    r = workdir_lib.restore(workdir, step, config=config)
    model = Transformer(r.args)
    tx, lr_schedule = optimizer_lib.make_optimizer(r.config.opt, r.config.train.steps)
    eval_step = step_lib.make_eval_step(r.config, model, r.mesh, r.state_shardings, r.vocab_size)
    return Run(r.config, workdir, None, r.vocab_size, model, r.mesh, tx, lr_schedule, r.state, r.state_shardings,
               None, eval_step, None, step=r.step)
