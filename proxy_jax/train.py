"""The training loop: data -> sharded step -> metrics -> checkpoints -> evaluation.

The loop dispatches step t and only then reads step t-1's metrics, so the host never makes the device
wait. Everything it touches is built by a small library function that can be used on its own (in Colab,
in tests): :func:`build` makes the run's pieces, :func:`train` runs the loop, :func:`evaluate_workdir`
scores a finished run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from proxy_jax import checkpoint as ckpt_lib
from proxy_jax import config as config_lib
from proxy_jax import evaluate as eval_lib
from proxy_jax import metrics as metrics_lib
from proxy_jax import vocab

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when a step's loss is NaN or infinite; the newest checkpoint is the last good state."""


@dataclasses.dataclass
class Run:
    """Everything a training run is made of (each piece also usable alone)."""

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
    train_step: Callable
    eval_step: Callable
    pipeline: Any


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: --workdir must be a directory written by proxy_jax.main.")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    config = config_lib.base_config()
    _merge(config, saved)
    return config


def _merge(config: ml_collections.ConfigDict, saved: dict) -> None:
    for key, value in saved.items():
        if isinstance(value, dict) and key in config and isinstance(config[key], ml_collections.ConfigDict):
            _merge(config[key], value)
        else:
            with config.unlocked():
                current = config.get(key)
                config[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value) if isinstance(
                    current, tuple) and isinstance(value, list) else value


def build(config: ml_collections.ConfigDict, workdir: str, *, with_pipeline: bool = True) -> Run:
    """Makes the proxy, model, mesh, optimiser, sharded state, jitted steps and the input pipeline."""
    from proxy_jax import model as model_lib
    from proxy_jax import optimizer as opt_lib
    from proxy_jax import proxies
    from proxy_jax import sharding
    from proxy_jax import train_step as step_lib
    from proxy_jax.data import pipeline as pipeline_lib

    config_lib.validate(config)
    sharding.validate(config, jax.device_count())
    proxy = proxies.make_proxy(config, workdir)
    true_vocab = vocab.vocab_size(proxy.num_symbols)
    model_vocab = config.model.vocab_size or vocab.padded_vocab_size(proxy.num_symbols)
    if model_vocab < true_vocab:
        raise ValueError(f"config.model.vocab_size={model_vocab} is smaller than the proxy's vocabulary "
                         f"{true_vocab}; set it to 0 to derive it.")
    args = model_lib.ModelArgs.from_config(config.model, model_vocab)
    model = model_lib.Transformer(args)
    mesh = sharding.make_mesh(config)
    tx, lr_schedule = opt_lib.make_optimizer(config.opt, config.train.steps)
    rng = jax.random.key(config.seed)
    state, state_shardings = sharding.init_train_state(config, model, tx, mesh, rng)
    train_step = step_lib.make_train_step(config, model, tx, mesh, state_shardings, true_vocab, lr_schedule)
    eval_step = step_lib.make_eval_step(config, model, mesh, state_shardings, true_vocab)
    pipeline = None
    if with_pipeline:
        pipeline = pipeline_lib.make_pipeline(config, "train", proxy=proxy, workdir=workdir)
    return Run(config, workdir, proxy, true_vocab, model, mesh, tx, lr_schedule, state, state_shardings,
               train_step, eval_step, pipeline)


def heldout_docs(config: ml_collections.ConfigDict, max_docs: int = 0, *, split: str = "validation") -> list[bytes]:
    """The documents evaluation scores: whole documents of ``split`` (the first ``max_docs`` if > 0)."""
    from proxy_jax.data import corpus

    data = ml_collections.ConfigDict(config.data.to_dict())
    data.max_doc_bytes = 0  # training may cut documents into pieces; evaluation scores whole ones
    source = corpus.load_split(data, split)
    n = len(source) if max_docs <= 0 else min(max_docs, len(source))
    return [source[i] for i in range(n)]


def make_host_eval(run: Run) -> Callable[[dict[str, np.ndarray]], dict[str, float]]:
    from proxy_jax import sharding

    count, index = jax.process_count(), jax.process_index()

    def host_eval(batch):
        # Every process builds the same global batch; each contributes its own slice of the rows.
        rows = batch["tokens"].shape[0] // count
        local = {k: v[index * rows : (index + 1) * rows] for k, v in batch.items()}
        out = run.eval_step(run.state.params, sharding.host_to_global(local, run.mesh))
        return metrics_lib.to_python(out)

    return host_eval


def evaluate_run(run: Run, docs: list[bytes], *, window: int | None = None, progress: bool = True) -> dict[str, float]:
    """Raw-byte BPB of ``docs`` under the run's current parameters."""
    window = window or int(run.config.train.eval_window)
    batch = int(run.config.train.eval_batch_size)
    # Each process scores the same documents; the eval batch is the global one. Only head 0 is scored,
    # so rows carry one token beyond the window.
    return eval_lib.raw_bpb(make_host_eval(run), docs, window=window, extra=1, batch_size=batch,
                            progress=progress and jax.process_index() == 0)


def _step_scalars(run: Run, raw: dict[str, float], step_time: float, data_wait: float,
                  flops_per_step: float | None, peak: float | None) -> dict[str, float]:
    c = run.config
    symbols = c.data.batch_size * c.data.seq_len
    out = {f"train/{k}": v for k, v in raw.items()}
    if raw.get("num_streams", 0) > 0:  # realised fraction of compressed streams in this step's batch
        out["train/compression_rate"] = raw["num_comp_streams"] / raw["num_streams"]
    out.pop("train/num_comp_streams", None)
    out["perf/step_time"] = step_time
    out["perf/symbols_per_sec"] = symbols / max(step_time, 1e-9)
    out["perf/data_wait_frac"] = data_wait / max(step_time, 1e-9)
    if flops_per_step and peak:
        out["perf/mfu"] = flops_per_step / max(step_time, 1e-9) / (peak * jax.device_count())
    return out


def train(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True,
          stop_after: int | None = None) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its newest checkpoint) and returns a summary.

    ``stop_after`` ends the loop early after that many steps of this call (used to test resumption);
    the run can be continued later from its checkpoint.
    """
    from proxy_jax import model as model_lib
    from proxy_jax import sharding

    save_config(config, workdir)
    run = build(config, workdir)
    c = run.config
    data_iter = iter(run.pipeline)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=c.train.keep_checkpoints)
    start_step, restored = checkpointer.restore(run.state, data_iter)
    if restored is not None:
        run.state = restored
        log.info("Resumed from step %d of %s.", start_step, workdir)
        start_step = int(start_step)
    else:
        start_step = 0
    writer = metrics_lib.MetricsWriter(workdir, tensorboard=c.train.tensorboard)
    flops_per_step = model_lib.flops_per_token(run.model.args, c.data.seq_len) * c.data.batch_size * c.data.seq_len
    peak = metrics_lib.peak_flops_per_device()
    end_step = c.train.steps if stop_after is None else min(c.train.steps, start_step + stop_after)
    eval_docs = heldout_docs(c, c.train.eval_docs) if c.train.eval_every > 0 else []

    bar = None
    if progress and jax.process_index() == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=c.train.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    pending = None  # (step, device metrics, step_time, data_wait) of the step dispatched last
    last_saved = start_step if restored is not None else None
    summary: dict[str, Any] = {"start_step": start_step}

    def finish_pending():
        """Reads the previous step's metrics (the device has moved on to the next step by now)."""
        nonlocal pending
        if pending is None:
            return None
        step, dev_metrics, step_time, data_wait = pending
        pending = None
        raw = metrics_lib.to_python(dev_metrics)
        if not math.isfinite(raw["loss"]):
            raise NonFiniteLossError(
                f"Loss became {raw['loss']} at step {step}; stopping. The newest checkpoint "
                f"(step {last_saved}) is the last good state: lower --config.opt.lr or raise "
                f"--config.opt.warmup_steps and resume.")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{raw['loss']:.3f}")
        if step % c.train.log_every == 0 or step == end_step - 1:
            scalars = _step_scalars(run, raw, step_time, data_wait, flops_per_step, peak)
            writer.write(step, scalars)
        return raw

    with ckpt_lib.PreemptionGuard() as guard:
        t_prev = time.perf_counter()
        try:
            for step in range(start_step, end_step):
                # Checkpoint "state after `step` steps" before the batch for `step` is drawn, so the
                # saved iterator position matches. Its metrics must be known finite first.
                if step != start_step and step % c.train.checkpoint_every == 0:
                    finish_pending()
                    checkpointer.save(step, run.state, data_iter)
                    last_saved = step
                if step % max(c.train.log_every, 1) == 0 and guard.should_stop():
                    finish_pending()
                    checkpointer.save(step, run.state, data_iter, force=True)
                    last_saved = step
                    log.warning("SIGTERM received: saved step %d and stopped.", step)
                    summary["preempted_at"] = step
                    break
                t0 = time.perf_counter()
                batch = next(data_iter)
                data_wait = time.perf_counter() - t0
                if int(batch["step"][0]) != step:
                    raise RuntimeError(f"The input pipeline produced the batch of step {int(batch['step'][0])} "
                                       f"for optimiser step {step}; its state does not match the checkpoint.")
                global_batch = sharding.host_to_global(batch, run.mesh)
                run.state, dev_metrics = run.train_step(run.state, global_batch)
                for key in ("num_streams", "num_comp_streams"):
                    if key in batch:
                        dev_metrics = {**dev_metrics, key: np.sum(batch[key])}
                now = time.perf_counter()
                step_time, t_prev = now - t_prev, now
                finish_pending()
                pending = (step, dev_metrics, step_time, data_wait)
                if c.train.eval_every > 0 and (step + 1) % c.train.eval_every == 0 and step + 1 < end_step:
                    finish_pending()
                    ev = evaluate_run(run, eval_docs)
                    writer.write(step + 1, {"eval/raw_bpb": ev["raw_bpb"]})
                    log.info("step %d: eval raw bpb %.4f", step + 1, ev["raw_bpb"])
            else:
                step = end_step
            last = finish_pending()
            final_step = int(jax.device_get(run.state.step))
            if last_saved != final_step:
                checkpointer.save(final_step, run.state, data_iter, force=True)
            checkpointer.wait()
        finally:
            checkpointer.close()
            if bar is not None:
                bar.close()
    summary["final_step"] = final_step
    if last is not None:
        summary["final_loss"] = last["loss"]
    if final_step >= c.train.steps and c.train.eval_every > 0 and eval_docs:
        ev = evaluate_run(run, eval_docs)
        writer.write(final_step, {"eval/raw_bpb": ev["raw_bpb"]})
        summary.update({f"eval/{k}": v for k, v in ev.items()})
    writer.close()
    summary["run"] = run
    return summary


def sample(run: Run, prompts: list[bytes], max_new_bytes: int, **kwargs) -> list[bytes]:
    from proxy_jax import generate

    return generate.generate(run.model, run.state.params, prompts, max_new_bytes=max_new_bytes, **kwargs)


def evaluate_workdir(workdir: str, *, data: str = "", data_glob: str = "**/*.py", max_docs: int = 0,
                     window: int = 0, step: int | None = None) -> dict[str, Any]:
    """Restores a run's parameters and scores raw bytes of its held-out split (or every document of ``data``)."""
    config = load_config(workdir)
    # The run's own proxy fixes the vocabulary (its tokenizer is cached in the workdir): build first.
    run = build(config, workdir, with_pipeline=False)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints)
    restored_step, state = checkpointer.restore(run.state, None, step=step)
    checkpointer.close()
    if state is None:
        raise FileNotFoundError(f"No checkpoint could be restored from {workdir}/checkpoints.")
    run.state = state
    split = "validation"
    if data:
        split = "train"  # with val_fraction 0 every document of --data lands in "train"
        config = ml_collections.ConfigDict(config.to_dict())
        config.data.path, config.data.val_fraction = data, 0.0
        if data.endswith((".jsonl", ".jsonl.gz")):
            config.data.source = "jsonl"
        elif data.endswith(".array_record"):
            config.data.source = "arrayrecord"
        else:
            config.data.source, config.data.glob = "dir", data_glob
    docs = heldout_docs(config, max_docs, split=split)
    result = {"workdir": workdir, "step": int(restored_step), "data": data or "held-out split"}
    result.update(evaluate_run(run, docs, window=window or None))
    result.update(eval_lib.compressor_bpb(docs))
    return result
