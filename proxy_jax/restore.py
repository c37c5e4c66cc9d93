"""One restore: a finished run read back from its workdir, for every consumer after training.

``restore(workdir, step=None)`` returns a :class:`RestoredRun`: the run's config and record
(``run_record``), its model, a mesh over this host's devices, the parameters (sharded on that mesh; the
optimiser state is never read), the step, and the proxy rebuilt from the record's manifest with its pinned
artifact (built on first use). Evaluation, sampling, generation, export, the sweep and the notebook all use
it; nothing on this path scans a corpus or builds an optimiser.

A workdir written before runs carried ``run.json`` is read from its ``config.json`` and ``model.json``: the
record is derived once (one log line says so) and written beside them when the workdir is writable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from proxy_jax import config as config_lib
from proxy_jax import proxies, run_record, sharding, storage, text_format, vocab
from proxy_jax import workdir as workdir_lib
from proxy_jax.model import ModelArgs, Transformer
from proxy_jax.model.attention import runtime_kernel

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RestoredRun:
    """A trained run, ready to evaluate, sample from or export (one object for every consumer)."""

    workdir: str
    config: ml_collections.ConfigDict
    record: run_record.RunRecord
    model: Transformer
    mesh: Any
    params: Any
    param_shardings: Any
    step: int
    healthy: bool | None = None  # the checkpoint's health mark, where the run recorded one
    _eval_step: Any = dataclasses.field(default=None, repr=False)

    @property
    def args(self) -> ModelArgs:
        return self.model.args

    @property
    def vocab_size(self) -> int:
        """Logical vocabulary: 320 + the proxy's symbols (ids at or above it were never trained)."""
        return self.record.vocab_size

    @property
    def padded_vocab_size(self) -> int:
        return self.record.padded_vocab_size

    @property
    def text_format(self) -> str:
        return self.record.text_format

    @functools.cached_property
    def proxy(self) -> proxies.Proxy:
        """The proxy the run trained with, from the record (its artifact checked against its sha256)."""
        return proxies.from_manifest(self.record.proxy, workdir=self.workdir, load_m1=load_m1)

    def bpb(self, docs: list[bytes], *, window: int | None = None, progress: bool = True) -> dict[str, float]:
        """Bits per raw byte of ``docs``, each written in the run's text format (``evaluation.bpb.model_bpb``;
        the tokenizer baseline is scored through its pinned tokenizer)."""
        from proxy_jax import train_step
        from proxy_jax.evaluation import bpb

        if self._eval_step is None:
            self._eval_step = train_step.make_eval_step(self.config, self.model, self.mesh, vocab_size=self.vocab_size,
                                                        param_shardings=self.param_shardings)
        proxy = self.proxy if text_format.get(self.text_format).symbols else None
        return bpb.model_bpb(self._eval_step, self.params, self.mesh, docs, config=self.config, fmt=self.text_format,
                             proxy=proxy, window=window, progress=progress)

    @contextlib.contextmanager
    def context(self):
        """``with run.context(): ...`` runs model code on the run's mesh with its logical axis rules."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.logical_rules(self.config)):
            yield self


def read_record(workdir: str, config: ml_collections.ConfigDict | None = None) -> run_record.RunRecord:
    """``run.json`` of ``workdir``; for an older workdir, the record derived from its config and
    ``model.json`` (written back when possible)."""
    workdir = storage.resolve(workdir)
    storage.check_usable(workdir)
    if run_record.exists(workdir):
        return run_record.read(workdir)
    config = config if config is not None else workdir_lib.load_config(workdir)
    args, vocab_size = workdir_lib.load_model(workdir)
    manifest = {"name": config.proxy.name, "num_symbols": vocab_size - vocab.RAW_VOCAB_SIZE,
                "settings": proxies.proxy_settings(config.proxy)}
    folder = storage.join(workdir, "proxy")
    models = [n for n in storage.listdir(folder) if n.endswith(".model")] if storage.isdir(folder) else []
    if len(models) == 1:
        manifest["artifact"] = {"file": f"proxy/{models[0]}",
                                "sha256": proxies.base.file_sha256(storage.join(folder, models[0]))}
    record = run_record.RunRecord(
        proxy=manifest, text_format=text_format.of_mix(config.mix).name, vocab_size=int(vocab_size),
        model=dataclasses.asdict(args), num_targets=config_lib.num_targets(args),
        mesh={"shape": list(config.mesh.shape), "axis_names": list(config.mesh.axis_names)}, corpus={})
    log.info("%s has no %s (written before runs recorded themselves); derived it from config.json and "
             "model.json.", workdir, run_record.RUN)
    try:
        run_record.write(workdir, record)
    except OSError:
        pass
    return record


def restore(workdir: str, step: int | None = None, *, mesh=None) -> RestoredRun:
    """The newest checkpoint of ``workdir`` that loads (or ``step``), parameters only, on ``mesh`` (default:
    the run's mesh shape over this host's devices)."""
    workdir = storage.resolve(workdir)
    storage.check_usable(workdir)
    config = workdir_lib.load_config(workdir)
    record = read_record(workdir, config)
    args = _runs_here(workdir, config, record.args)
    if mesh is None:
        sharding.validate(config, jax.device_count())  # the run's mesh must fit this host's devices
        mesh = sharding.make_mesh(config)
    model = Transformer(args)
    abstract, shardings = sharding.abstract_params(config, model, mesh)
    ckpt = workdir_lib.checkpointer(workdir, config)
    where = storage.join(workdir, workdir_lib.CHECKPOINTS)
    try:
        if step is not None and step not in ckpt.steps():
            raise FileNotFoundError(f"{where} has no step {step}; it holds steps {ckpt.steps() or 'none'}.")
        restored_step, params = ckpt.restore_params(abstract, step=step)
    finally:
        ckpt.close()
    if params is None:
        if ckpt.unreadable:
            raise ckpt.unreadable_error()
        raise FileNotFoundError(f"{where} holds no checkpoint" + (f" of step {step}" if step is not None else "")
                                + "; train the run first.")
    healthy = workdir_lib.warn_if_unhealthy(workdir, int(restored_step))  # one line when not marked healthy
    return RestoredRun(workdir, config, record, model, mesh, params, shardings, int(restored_step), healthy)


def _runs_here(workdir: str, config: ml_collections.ConfigDict, args: ModelArgs) -> ModelArgs:
    """The run's model with an attention kernel that runs on this backend: the kernel is the machine's choice,
    not the parameters' (``model.attention.runtime_kernel``), so a run trained with cuDNN or splash attention
    is restored on a CPU host with the plain one (one log line says so)."""
    kernel = runtime_kernel(args.attention)
    if kernel != args.attention:
        log.info("%s trained with model.attention=%r, which does not run on %s; restored with %r (the same "
                 "attention).", workdir, args.attention, jax.default_backend(), kernel)
    config.model.attention = runtime_kernel(str(config.model.attention))
    return dataclasses.replace(args, attention=kernel) if kernel != args.attention else args


def load_m1(m1_workdir: str, step: int | None = None):
    """The neural proxy's M1: a byte-only run (``configs/m1.py``) restored from ``m1_workdir``."""
    from proxy_jax.proxies.neural import m1 as m1_lib

    m1_workdir = storage.resolve(m1_workdir)
    if not m1_workdir or not storage.isdir(m1_workdir):
        raise FileNotFoundError(
            f"proxy.m1_workdir={m1_workdir!r} is not a directory; train M1 first with "
            "`python -m proxy_jax.main --config=configs/m1.py:tiny --workdir=DIR` and pass that DIR.")
    run = restore(m1_workdir, step)
    if run.record.proxy_name != "bytes":
        raise ValueError(f"{m1_workdir} holds a {run.record.proxy_name!r} run; M1 must be a byte-only run "
                         "(configs/m1.py).")
    return m1_lib.M1.from_params(run.args, run.params, context=int(run.config.data.seq_len))
