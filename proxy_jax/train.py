"""The training loop: data -> sharded step -> metrics -> checkpoints -> evaluation.

The loop dispatches step t and only then reads step t-1's metrics, so the host never makes the device
wait. Safety: the workdir is locked for the run (``workdir.lock``); a resumed run must match the saved
config (``workdir.check_resume``); SIGTERM and Ctrl-C save at the next step and stop (Ctrl-C then
raises KeyboardInterrupt; a second Ctrl-C stops at once); only a finite state is ever saved (step t-1's
loss and every array of the state are checked first); a save of a step already on disk is a no-op
(SIGTERM at a checkpoint step, the final save); checkpoints newer than the one that restored, which
failed to restore, are set aside and re-trained.

Divergence: finite is not healthy. Each checkpoint is marked healthy or not from the loss and gradient
norm around its step (``proxy_jax.health``, from the metrics the loop reads anyway); a non-finite loss or
gradient norm (or ``train.spike_patience`` steps out of range) stops the run naming the newest *healthy*
checkpoint, and ``train.resume_step`` resumes from it, setting newer ones aside. The spike's batches are
not skipped: the data iterator resumes exactly where the checkpoint was, so a rerun with the original
settings is bitwise the run that never diverged (a divergence caused by the learning rate needs no
skipping; lower the rate to get past a batch that really is bad).

The run's pieces come from ``proxy_jax.assemble.build``; the workdir's files from
``proxy_jax.workdir``. :func:`train` is what ``python -m proxy_jax.main`` calls (and what Colab and
tests import).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from proxy_jax import assemble
from proxy_jax import checkpoint as ckpt_lib
from proxy_jax import health, interrupts, profiling, storage, tracking
from proxy_jax import metrics as metrics_lib
from proxy_jax import progress as progress_lib
from proxy_jax import workdir as workdir_lib
from proxy_jax.evaluation import lm_eval_tasks
from proxy_jax.data import mixture as mixture_lib
from proxy_jax.model import flops_per_token

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when a step's loss or gradient norm, or the train state, is NaN or infinite; the message names
    the newest healthy checkpoint (``proxy_jax.health``) or says there is none."""


class LossSpikeError(NonFiniteLossError):
    """Raised after ``train.spike_patience`` consecutive steps out of the normal range (still finite)."""


@jax.jit
def _all_finite(leaves: list) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def state_is_finite(state: Any) -> bool:
    """True when every floating-point array of ``state`` (parameters and optimiser moments) is finite."""
    leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return bool(_all_finite(leaves)) if leaves else True


def _advice(checkpointer: ckpt_lib.Checkpointer) -> str:
    """Where to resume after a divergence: the newest checkpoint marked healthy, or none."""
    fix = "lower --config.opt.lr or raise --config.opt.warmup_steps (both may change on resume)"
    steps = checkpointer.steps()
    healthy = checkpointer.healthy_steps()
    if not steps:
        return f"No checkpoint was saved before it: {fix} and start again."
    if not healthy:
        return (f"No checkpoint is marked healthy (steps {', '.join(map(str, steps))} are not): {fix} and start "
                "again with --config.train.resume_step=0 (the checkpoints are set aside, not deleted).")
    if healthy[-1] == steps[-1]:
        return (f"The newest checkpoint (step {healthy[-1]}) is the newest healthy state: {fix} and run again to "
                "resume from it.")
    return (f"The newest healthy checkpoint is step {healthy[-1]} (newer ones are not): {fix} and run again with "
            f"--config.train.resume_step={healthy[-1]} to resume from it (newer checkpoints are set aside).")


def _step_scalars(run: assemble.Run, raw: dict[str, float], step_time: float, data_wait: float,
                  flops_per_step: float | None, peak: float | None) -> dict[str, float]:
    c = run.config
    symbols = c.data.batch_size * c.data.seq_len
    out = {f"train/{k}": v for k, v in raw.items()}
    for loss, count in (("raw_loss", "raw_targets"), ("comp_loss", "comp_targets")):
        if raw.get(count) == 0:  # no such targets in this step: no loss, rather than a misleading 0.0
            out.pop(f"train/{loss}", None)
    if raw.get("num_streams", 0) > 0:  # realised fraction of compressed streams in this step's batch
        out["train/compression_rate"] = raw["num_comp_streams"] / raw["num_streams"]
    out.pop("train/num_comp_streams", None)
    for key in [k for k in out if k.startswith("train/data/")]:  # a mixture's data/NAME/docs
        out[key[len("train/"):]] = int(out.pop(key))
    out["perf/step_time"] = step_time
    out["perf/symbols_per_sec"] = symbols / max(step_time, 1e-9)
    out["perf/data_wait_frac"] = data_wait / max(step_time, 1e-9)
    if flops_per_step and peak:
        out["perf/mfu"] = flops_per_step / max(step_time, 1e-9) / (peak * jax.device_count())
    return out


def train(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True,
          stop_after: int | None = None, restart_if_unreadable: bool = False) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its newest checkpoint) and returns a summary.

    ``stop_after`` ends the loop early after that many steps of this call (used to test resumption);
    the run can be continued later from its checkpoint. When checkpoints exist but none restores, the
    run stops (``checkpoint.UnreadableCheckpointsError``) unless ``restart_if_unreadable``: then they
    are set aside and training starts from step 0.
    """
    workdir = storage.resolve(workdir)  # the one place a library caller's path is made absolute
    storage.resolve_config_paths(config)
    storage.check_usable(workdir)
    # Every check that can refuse the run reads only: the config, the saved run it would resume, the corpus.
    # Nothing (lock, record, config, folders) is written to the workdir before they pass.
    _keep_saved_phases(config, workdir)
    mixture_lib.resolve_config(config)  # config.json records the resolved mixture (weights normalised)
    changed = workdir_lib.check_resume(config, workdir)
    assemble.validate_training(config)
    tracking.names(config.train)  # an unknown or uninstalled tracker: one sentence before the workdir is touched
    tasks = lm_eval_tasks.Tasks(config.train)  # loaded once; a task that does not load stops the run here
    corpus = assemble.Corpus(config)
    corpus.split("train")  # indexed once here: a corpus the source cannot read stops the run now
    with workdir_lib.lock(workdir):
        return _train(config, workdir, progress, stop_after, restart_if_unreadable, changed, corpus, tasks)


def _roll_back(checkpointer: ckpt_lib.Checkpointer, target: int) -> int | None:
    """Applies ``train.resume_step=target``: sets the steps newer than ``target`` aside; returns ``target``, the
    lineage of the checkpoints this run writes, or None when there is nothing to do (-1), or the rollback
    was applied before: the newest checkpoint descends from it and is not marked unhealthy."""
    if target < 0:
        return None
    steps = checkpointer.steps()
    if steps:
        newest = checkpointer.health(steps[-1]) or {}
        if newest.get("rollback") == target and newest.get("healthy") is not False:
            return None
    if target > 0 and target not in steps:
        raise ValueError(f"--config.train.resume_step={target} names no checkpoint of {checkpointer.directory} "
                         f"(it holds steps {', '.join(map(str, steps)) or 'none'}); pick one of them, 0 to start "
                         "over, or -1 for the newest.")
    newer = [s for s in steps if s > target]
    if newer:
        moved = checkpointer.set_aside(newer, "set_aside")
        log.warning("train.resume_step=%d: set aside checkpoints %s (kept in %s).", target,
                    ", ".join(map(str, newer)), os.path.dirname(moved[0]) if moved else "")
    return target


def _resume(checkpointer: ckpt_lib.Checkpointer, run: assemble.Run, data_iter, restart_if_unreadable: bool):
    """Restores the newest readable checkpoint into ``run`` and ``data_iter``; returns its step or None."""
    start_step, restored = checkpointer.restore(run.state, data_iter)
    if restored is None and checkpointer.unreadable:
        if not restart_if_unreadable:
            raise checkpointer.unreadable_error("use a new --workdir, or pass --restart_if_unreadable to set them "
                                                "aside and train from step 0")
        moved = checkpointer.set_aside(list(checkpointer.unreadable))
        log.warning("Set aside %d unreadable checkpoints (%s); training starts from step 0.", len(moved),
                    ", ".join(moved))
        return None
    newer = [s for s in checkpointer.unreadable if restored is not None and s > start_step]
    if newer:  # the run re-trains these steps; Orbax would not save below its newest step otherwise
        moved = checkpointer.set_aside(newer)
        log.warning("Set aside unreadable checkpoints %s; they will be re-trained from step %d.",
                    ", ".join(moved), start_step)
    if restored is None:
        return None
    run.state = restored
    log.info("Resumed from step %d of %s.", start_step, checkpointer.directory.rsplit("/", 1)[0])
    return int(start_step)


_PHASES = ("mix.warmup_steps", "mix.steady_steps", "mix.decay_steps")


def _keep_saved_phases(config: ml_collections.ConfigDict, workdir: str) -> None:
    """A run resumed with another ``train.steps`` keeps its saved mixing phases: the phases cannot change
    on resume (they decide every document's draw), and ``--config.train.steps`` rescaled them for a new run
    (``recipes.with_steps``). The cadences and the optimiser warm-up follow the new steps."""
    if not storage.exists(storage.join(workdir, workdir_lib.CONFIG)) or not storage.isdir(
            storage.join(workdir, workdir_lib.CHECKPOINTS)):
        return
    saved = workdir_lib.load_config(workdir)
    if saved.train.steps == config.train.steps:
        return
    kept = {}
    for dotted in _PHASES:
        key = dotted.split(".")[1]
        if saved.mix[key] != config.mix[key]:
            kept[dotted] = (config.mix[key], saved.mix[key])
            config.mix[key] = saved.mix[key]
    if kept:
        log.warning("Resuming with train.steps=%d (saved %d): the mixing phases stay as saved (%s).",
                    config.train.steps, saved.train.steps,
                    ", ".join(f"{k}={saved_v}, not {now}" for k, (now, saved_v) in kept.items()))


def _train(config, workdir, progress, stop_after, restart_if_unreadable, changed, corpus, tasks) -> dict[str, Any]:
    from proxy_jax import sharding

    run = assemble.build(config, workdir, corpus=corpus)  # writes the run record (run.json) on the first build
    c = run.config
    with contextlib.ExitStack() as stack:  # every way out closes what the run opened, the newest first
        loop = stack.enter_context(contextlib.ExitStack())  # the loop's own: closed before the final evaluation
        checkpointer = loop.enter_context(contextlib.closing(workdir_lib.checkpointer(workdir, c)))
        data_iter = loop.enter_context(contextlib.closing(iter(run.pipeline)))  # stops its packing thread first
        checkpointer.remove_temporary()  # half-written steps of a killed run
        bar = None
        rollback = _roll_back(checkpointer, int(c.train.resume_step))
        resumed = _resume(checkpointer, run, data_iter, restart_if_unreadable)
        start_step = resumed if resumed is not None else 0
        if int(config.data.virtual_shards) == 0:  # fixed for the run's life: a resume takes it (workdir.check_resume)
            config.data.virtual_shards = jax.process_count()
        if config.data.get("mixture"):  # the same for each component of a mixture
            mixture_lib.fix_index(config, run.corpus.split("train").components)
        if config.data.index == "auto":  # the same: the corpus is indexed one way for the run's life
            config.data.index = "lazy" if run.corpus.split("train").lazy else "full"
        workdir_lib.save_config(config, workdir, changed)  # only now: a refused resume changes nothing
        if changed:
            log.info("Resuming with changed %s (recorded in %s).", ", ".join(sorted(changed)),
                     workdir_lib.CONFIG_HISTORY)
        record = checkpointer.health(resumed) if resumed is not None else None
        if rollback is None and record is not None:
            rollback = record.get("rollback")  # the lineage goes on through ordinary resumes
        watch = health.LossWatch(c.train.health_window, c.train.health_loss_ratio, c.train.health_grad_ratio,
                                 recent=(record or {}).get("recent"))
        to_mark = record if record is not None and record.get("after") is None else None
        data_iter.start_prefetch()  # data.host_prefetch: the first batches are packed while the rest is set up
        writer = stack.enter_context(contextlib.closing(metrics_lib.MetricsWriter(
            workdir, start_step=start_step, tracking=tracking.setup(c, run.record))))
        profiler = loop.enter_context(contextlib.closing(profiling.Profiler(c.train, workdir)))
        eval_docs = run.corpus.heldout(c.train.eval_docs) if c.train.eval_every > 0 else []
        eval_parts = run.corpus.heldout_parts(c.train.eval_docs) if c.train.eval_every > 0 else {}
        flops_per_step = flops_per_token(run.model.args, c.data.seq_len) * c.data.batch_size * c.data.seq_len
        peak = metrics_lib.peak_flops_per_device()
        end_step = c.train.steps if stop_after is None else min(c.train.steps, start_step + stop_after)
        if progress and jax.process_index() == 0:  # a bar in a terminal or notebook, plain lines in a log file
            bar = loop.enter_context(contextlib.closing(progress_lib.bar(
                c.train.steps, initial=start_step, every_s=c.train.progress_every_s)))
        pending = None  # (step, device metrics, step_time, data_wait) of the step dispatched last
        last_saved = resumed  # the newest checkpoint on disk, always a finite state
        summary: dict[str, Any] = {"start_step": start_step}

        def finish_pending():
            """Reads the previous step's metrics (the device has moved on to the next step by now)."""
            nonlocal pending, to_mark
            if pending is None:
                return None
            step, dev_metrics, step_time, data_wait = pending
            pending = None
            raw = metrics_lib.to_python(dev_metrics)
            seen = watch.observe(step, raw["loss"], raw["grad_norm"])
            if to_mark is not None and to_mark["step"] == step:  # the first loss of a saved state: its verdict
                checkpointer.write_health(step, health.mark(to_mark, seen))
                to_mark = None
            if not (math.isfinite(raw["loss"]) and math.isfinite(raw["grad_norm"])):
                raise NonFiniteLossError(f"Loss became {raw['loss']} (gradient norm {raw['grad_norm']}) at step "
                                         f"{step}; stopping. {_advice(checkpointer)}")
            if c.train.spike_patience and watch.abnormal_run >= c.train.spike_patience:
                raise LossSpikeError(f"The loss or gradient norm left its normal range for {watch.abnormal_run} "
                                     f"steps up to step {step} (loss {raw['loss']:.4g}, gradient norm "
                                     f"{raw['grad_norm']:.4g}; train.spike_patience={c.train.spike_patience}); "
                                     f"stopping. {_advice(checkpointer)}")
            if bar is not None:
                bar.set_postfix(loss=f"{raw['loss']:.3f}")
                bar.update(1)
            if step % c.train.log_every == 0 or step == end_step - 1:
                scalars = _step_scalars(run, raw, step_time, data_wait, flops_per_step, peak)
                writer.write(step, scalars)
            return raw

        def save(step: int, final: bool = False) -> None:
            """Saves the state after ``step`` steps once it is known finite (a step on disk is kept as it is), with
            its health record: pending until step ``step`` is read, or judged now when none will be (``final``)."""
            nonlocal last_saved, to_mark
            finish_pending()  # the loss of step - 1 must be finite
            if not state_is_finite(run.state):
                raise NonFiniteLossError(f"The train state became non-finite by step {step}; stopping without "
                                         f"saving it. {_advice(checkpointer)}")
            written = checkpointer.save(step, run.state, data_iter, force=True)
            if written or (final and to_mark is not None and to_mark["step"] == step):  # SIGTERM at a checkpoint step
                record = health.save_record(step, watch, rollback, final=final)
                checkpointer.write_health(step, record)
                to_mark = record
            last_saved = step

        with ckpt_lib.PreemptionGuard() as guard, loop:  # the loop's resources close before the guard lets go
            t_prev = time.perf_counter()
            for step in range(start_step, end_step):
                profiler.step(step, run.state)  # train.profile_start_step: starts or stops a trace
                # Checkpoint "state after `step` steps" before the batch for `step` is drawn, so the
                # saved iterator position matches. Its metrics must be known finite first.
                if step != start_step and step % c.train.checkpoint_every == 0:
                    save(step)
                # One process polls every step; several poll at log_every, since polling is a collective.
                poll = jax.process_count() == 1 or step % max(c.train.log_every, 1) == 0
                if poll and guard.should_stop():
                    save(step, final=True)
                    log.warning("%s received: saved step %d and stopped.", guard.stop_reason, step)
                    summary["interrupted_at" if guard.stop_reason == "Ctrl-C" else "preempted_at"] = step
                    break
                t0 = time.perf_counter()
                batch = next(data_iter)  # packed in the background while the device ran the previous steps
                data_wait = time.perf_counter() - t0
                if int(batch["step"][0]) != step:
                    raise RuntimeError(f"The input pipeline produced the batch of step {int(batch['step'][0])} "
                                       f"for optimiser step {step}; its state does not match the checkpoint.")
                global_batch = sharding.host_to_global(batch, run.mesh)
                run.state, dev_metrics = run.train_step(run.state, global_batch)
                for key in ("num_streams", "num_comp_streams"):
                    if key in batch:
                        dev_metrics = {**dev_metrics, key: np.sum(batch[key])}
                if "mixture_docs" in global_batch:  # documents drawn from each component by every shard
                    counts = mixture_lib.doc_metrics(global_batch["mixture_docs"], c.data.mixture)
                    dev_metrics = {**dev_metrics, **counts}
                now = time.perf_counter()
                step_time, t_prev = now - t_prev, now
                finish_pending()
                pending = (step, dev_metrics, step_time, data_wait)
                if c.train.eval_every > 0 and (step + 1) % c.train.eval_every == 0 and step + 1 < end_step:
                    finish_pending()
                    ev = _bpb(run, eval_docs)
                    writer.write(step + 1, {"eval/raw_bpb": ev["raw_bpb"], **_part_bpb(run, eval_parts)})
                    writer.write(step + 1, tasks.score(run))  # train.lm_eval_tasks
                    log.info("step %d: eval raw bpb %.4f", step + 1, ev["raw_bpb"])
            else:
                step = end_step
            last = finish_pending()
            final_step = int(jax.device_get(run.state.step))
            if last_saved != final_step:
                save(final_step, final=True)
            checkpointer.wait()
        summary["final_step"] = final_step
        if "interrupted_at" in summary:  # Ctrl-C: saved above; the caller sees the interrupt, as without a save
            interrupts.clear()
            raise KeyboardInterrupt(f"saved step {summary['interrupted_at']}")
        if last is not None:
            summary["final_loss"] = last["loss"]
        if final_step >= c.train.steps and c.train.eval_every > 0 and eval_docs:
            ev = _bpb(run, eval_docs)
            writer.write(final_step, {"eval/raw_bpb": ev["raw_bpb"], **_part_bpb(run, eval_parts)})
            summary.update({f"eval/{k}": v for k, v in ev.items()})
        elif final_step >= c.train.steps and c.train.eval_every > 0:
            summary["eval_skipped"] = (f"the held-out split is empty (data.val_fraction={c.data.val_fraction}); raise "
                                       "--config.data.val_fraction or score other documents with proxy_jax.evaluate --data")
        if final_step >= c.train.steps and c.train.eval_every > 0:
            writer.write(final_step, tasks.score(run))  # train.lm_eval_tasks
        summary["run"] = run
        return summary


def _bpb(run: assemble.Run, docs: list[bytes]) -> dict[str, float]:
    """Held-out bits per byte under the current parameters, documents written in the run's text format."""
    from proxy_jax.evaluation import bpb

    return bpb.model_bpb(run.eval_step, run.state.params, run.mesh, docs, config=run.config,
                         fmt=run.record.text_format, proxy=run.proxy)


def _part_bpb(run: assemble.Run, parts: dict[str, list[bytes]]) -> dict[str, float]:
    """``eval/NAME/raw_bpb`` of each mixture component's held-out documents (none for one source)."""
    return {f"eval/{name}/raw_bpb": _bpb(run, docs)["raw_bpb"] for name, docs in parts.items() if docs}


def report(summary: dict[str, Any]) -> dict[str, Any]:
    """The end of a run as printed by the command: the summary, gzip/xz beside the final evaluation, and a
    sample from the raw prompt ``train.sample_prompt`` (every process takes part; the mesh samples)."""
    from proxy_jax import generate, text_format
    from proxy_jax.evaluation import bpb

    run = summary["run"]
    config = run.config
    out = {k: v for k, v in summary.items() if k != "run"}
    if "eval/raw_bpb" in summary:
        docs = run.corpus.heldout(config.train.eval_docs)
        out.update({f"eval/{k}": v for k, v in bpb.compressor_bpb(docs).items()})
    if config.train.sample_prompt and config.train.sample_bytes > 0:
        prompt = config.train.sample_prompt.encode()
        fmt = text_format.get(run.record.text_format)  # prompted as the run was trained to read text
        text = generate.generate(run.model, run.state.params, [prompt], max_new_bytes=config.train.sample_bytes,
                                 temperature=config.train.sample_temperature, top_p=config.train.sample_top_p,
                                 rng=jax.random.key(config.seed), fmt=fmt, proxy=run.proxy if fmt.symbols else None,
                                 vocab_size=run.vocab_size)[0]
        out["sample"] = (prompt + text).decode("utf-8", errors="replace")
    return out
