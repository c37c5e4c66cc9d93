"""Compute-matched sweeps: a sweep file -> one run per (method, size, budget, seed) -> results -> report.

A sweep file (``configs/sweeps/*.py``) has ``get_config()`` returning a dict:

    preset     size preset of every run's experiment file (``configs/bytes.py:PRESET``)
    overrides  dotted config overrides for every run ({"data.seq_len": 128})
    sizes      name -> model shape fields ({"d_model": 64, "num_layers": 2, ...})
    methods    name -> {"config": "configs/X.py", "overrides": {...}, optional "control_of": METHOD}
    grids      list of {"methods", "sizes", "budgets" (training FLOPs), "seeds"}; the runs are the union
               of their products, in that order
    evals      evaluations of held-out raw bpb per run (the last one at the end); 0 = none
    skip       {method: reason}: methods left out (e.g. the neural proxy without an M1 workdir)
    m1, preprocess  what the sweep makes once before its runs, in ROOT/_shared: the neural proxy's M1 and
               corpora compressed once (``proxy_jax.scaling.setup``)

Compute matching: a run's step count is ``scaling.compute.steps_for_budget(budget, ModelArgs, seq_len,
batch_size)`` with its own model shape and vocabulary, so all methods at one budget spend the same
training FLOPs (to within half a step). The mixing phases and the optimiser warm-up keep their
fractions of the run. Every run logs every step, so ``raw_bytes_seen`` is the exact sum of the steps'
``train/raw_targets`` (raw-byte targets of the main head): the second axis, equal raw bytes.

A method with ``control_of: P`` is the transfer control of method P at the same size, budget and seed:
P's config with ``data.raw_only_of_mix = True`` (P's draws, raw streams only, byte vocabulary). Its step
count is not matched on compute: it stops where P's run stops in the document stream (found by a dry
pass of its input pipeline), so it sees P's raw bytes and nothing else, to within one batch.

Results: ``ROOT/RUN/result.json`` per finished run (the keys ``scaling.report`` reads, plus ``name``,
``seed``, ``evals``), ``ROOT/results.json`` with all of them. A run with a result is skipped; an
interrupted one resumes from its checkpoint (``train.train`` does that).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import itertools
import json
import math
import os
import time
from typing import Any

import ml_collections

from proxy_jax import assemble
from proxy_jax import config as config_lib
from proxy_jax import recipes, storage
from proxy_jax import train as train_lib
from proxy_jax import run_record
from proxy_jax.model import ModelArgs, count_params
from proxy_jax.scaling import compute
from proxy_jax.scaling import results as results_lib
from proxy_jax.scaling import setup as setup_lib

RESULT = results_lib.RESULT
WALL = results_lib.WALL
_SCALED = ("mix.warmup_steps", "mix.steady_steps", "mix.decay_steps", "opt.warmup_steps")


class Preempted(RuntimeError):
    """SIGTERM stopped a run: the sweep stops too (the host is going away), resumable by rerunning it."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    name: str
    method: str
    size: str
    budget_flops: float
    seed: int


def load_sweep(path: str) -> dict[str, Any]:
    """The dict returned by ``get_config()`` of the sweep file ``path`` (``FILE.py:PRESET``: get_config(PRESET))."""
    path, _, preset = path.partition(":")
    path = recipes.config_path(path)  # a shipped sweep by name works from any folder (sweeps/cpu.py)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Sweep file {path!r} does not exist (expected e.g. configs/sweeps/cpu.py).")
    spec = importlib.util.spec_from_file_location(f"_proxy_jax_sweep_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep = dict(module.get_config(preset) if preset else module.get_config())
    for key in ("preset", "sizes", "methods", "grids"):
        if key not in sweep:
            raise ValueError(f"Sweep file {path!r} lacks the key {key!r}; see proxy_jax/scaling/sweep.py.")
    _check_keys(sweep, path)
    return sweep


def _check_keys(sweep: dict[str, Any], path: str) -> None:
    """Every config key a sweep file sets (``sizes`` fields of ``config.model``, ``overrides``) exists: a typo
    would otherwise train every run with the default."""
    base = config_lib.base_config()
    for size, fields in sweep["sizes"].items():
        for key in fields:
            if key not in base.model:
                raise ValueError(f"Sweep file {path!r}, size {size!r}: "
                                 f"{config_lib.unknown_key(key, base.model.keys(), 'model')}")
    blocks = [("overrides", sweep.get("overrides", {}))] + [
        (f"method {name!r} overrides", m.get("overrides", {})) for name, m in sweep["methods"].items()]
    for where, overrides in blocks:
        for dotted in overrides:
            try:
                config_lib.parent_of(base, dotted)
            except KeyError as e:
                raise ValueError(f"Sweep file {path!r}, {where}: {e.args[0]}") from None


def run_name(method: str, size: str, budget: float, seed: int) -> str:
    return f"{method}-{size}-{budget:.1e}-s{seed}".replace("+", "")


def runs(sweep: dict[str, Any]) -> list[RunSpec]:
    """Every run of the sweep without duplicates or skipped methods, smallest budget first (then grid
    order), so that a sweep cut short has every method at its smaller budgets."""
    out, seen = [], set()
    skip = sweep.get("skip", {})
    for grid in sweep["grids"]:
        for method, size, budget, seed in itertools.product(grid["methods"], grid["sizes"], grid["budgets"],
                                                            grid.get("seeds", (0,))):
            if method not in sweep["methods"]:
                raise ValueError(f"A grid names method {method!r}, which sweep['methods'] does not define.")
            if size not in sweep["sizes"]:
                raise ValueError(f"A grid names size {size!r}, which sweep['sizes'] does not define.")
            if method in skip:
                continue
            spec = RunSpec(run_name(method, size, budget, seed), method, size, float(budget), int(seed))
            if spec.name not in seen:
                seen.add(spec.name)
                out.append(spec)
    return sorted(out, key=lambda s: s.budget_flops)


def shard(specs: list[RunSpec], shard_spec: str) -> list[RunSpec]:
    """``"i/n"``: every n-th run starting at i (one task of a job array runs one shard)."""
    try:
        i, n = (int(x) for x in shard_spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard={shard_spec!r} must look like i/n, e.g. 0/4.") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard={shard_spec!r} needs 0 <= i < n.")
    return specs[i::n]


def model_args(config: ml_collections.ConfigDict) -> ModelArgs:
    """The model a run of ``config`` will have (its vocabulary from the proxy registry, nothing built)."""
    logical, padded = assemble.vocab_sizes(config)
    return ModelArgs.from_config(config.model, logical, padded_vocab_size=padded)


def _set(config: ml_collections.ConfigDict, dotted: str, value) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for name in parents:
        node = node[name]
    if leaf not in node:
        raise KeyError(f"Sweep override {dotted!r} names no config key; see proxy_jax/config.py for the keys.")
    node[leaf] = value


def _with_steps(config: ml_collections.ConfigDict, steps: int) -> None:
    """Sets ``train.steps``; mixing phases and the optimiser warm-up keep their fractions of the run."""
    old = int(config.train.steps)
    for dotted in _SCALED:
        group, key = dotted.split(".")
        config[group][key] = int(round(config[group][key] * steps / old))
    config.opt.warmup_steps = max(1, min(config.opt.warmup_steps, steps - 1))
    config.train.steps = steps


def _evals(config: ml_collections.ConfigDict, evals: int) -> None:
    steps = int(config.train.steps)
    if config.train.eval_every > 0 and evals > 0:
        config.train.eval_every = max(1, math.ceil(steps / evals))
    config.train.checkpoint_every = max(1, min(config.train.checkpoint_every, math.ceil(steps / 4)))


def base_config(sweep: dict[str, Any], spec: RunSpec, method: str, tokenizer_path: str = "",
                prepared: setup_lib.Prepared | None = None) -> ml_collections.ConfigDict:
    """``method``'s config at ``spec``'s size and seed with the sweep's overrides (and what the sweep's setup
    made: its M1, its preprocessed shards); steps not yet set."""
    m = sweep["methods"][method]
    config = recipes.load_config(f"{m['config']}:{sweep['preset']}")
    for dotted, value in {**sweep.get("overrides", {}), **m.get("overrides", {})}.items():
        _set(config, dotted, value)
    for key, value in sweep["sizes"][spec.size].items():
        config.model[key] = value
    config.seed = spec.seed
    config.train.log_every = 1  # every step's raw_targets, for raw bytes seen
    config.train.tensorboard = False
    config.train.sample_prompt = ""
    if tokenizer_path and config.proxy.name in ("tokenizer", "tokens_as_bytes") and not config.proxy.model_path:
        config.proxy.model_path = tokenizer_path
    if prepared is not None:
        if prepared.m1_workdir and config.proxy.name == "neural" and not config.proxy.m1_workdir:
            config.proxy.m1_workdir = prepared.m1_workdir
        if method in prepared.shards:
            config.data.source, config.data.path = "preprocessed", prepared.shards[method]
    return config


def control_steps(config: ml_collections.ConfigDict, proxy_steps: int, workdir: str) -> int:
    """Steps of the raw-only control that see the raw documents of the proxy run's first ``proxy_steps``
    batches: a dry pass of the control's pipeline. Each row of the control follows the same row of the proxy
    run (shadow positions, ``data.packing``); where a row reaches the first document the proxy run draws at
    ``proxy_steps`` is where that row's share ends, and the control trains for the rows' mean of those
    positions (its total raw bytes match the proxy run's to within a batch; single rows end a little
    earlier or later)."""
    from proxy_jax.data import elastic
    from proxy_jax.data import pipeline as pipeline_lib

    rows = int(config.data.batch_size) // elastic.resolve_shards(config.data.virtual_shards, 1)
    ends: dict[int, int] = {}

    def on_document(*, step, start, row=0, **_):
        if step >= proxy_steps and row not in ends:
            ends[row] = start

    proxy = assemble.make_proxy(config, workdir)
    batches = iter(pipeline_lib.make_pipeline(config, "train", proxy=proxy, process_index=0, process_count=1,
                                              on_document=on_document))
    try:
        while len(ends) < rows:
            next(batches)
    finally:
        if hasattr(batches, "close"):
            batches.close()
    return max(1, round(sum(ends.values()) / (len(ends) * config.data.seq_len)))


def run_config(sweep: dict[str, Any], spec: RunSpec, root: str, tokenizer_path: str = "",
               prepared: setup_lib.Prepared | None = None) -> ml_collections.ConfigDict:
    """The finished config of one run: compute-matched steps (or, for a control, its proxy run's stream)."""
    m = sweep["methods"][spec.method]
    target = m.get("control_of", spec.method)
    config = base_config(sweep, spec, target, tokenizer_path, prepared)
    steps = compute.steps_for_budget(spec.budget_flops, model_args(config), config.data.seq_len, config.data.batch_size)
    _with_steps(config, steps)
    if "control_of" in m:
        for dotted, value in m.get("overrides", {}).items():
            _set(config, dotted, value)
        config.data.raw_only_of_mix = True
        own = control_steps(config, steps, os.path.join(root, "_shared"))
        # The mixing schedule stays the proxy run's (the draws follow its steps); only the loop is shorter.
        config.train.steps = own
        config.opt.warmup_steps = max(1, min(int(round(config.opt.warmup_steps * own / steps)), own - 1))
    _evals(config, int(sweep.get("evals", 1)))
    # A tracker (train.trackers=wandb) groups the sweep's runs: the group is the sweep's name (its root folder,
    # as the report titles it), the job type the run's method.
    config.train.wandb_group = config.train.wandb_group or os.path.basename(os.path.abspath(root))
    config.train.wandb_job_type = config.train.wandb_job_type or spec.method
    return config


def shared_tokenizer(sweep: dict[str, Any], specs: list[RunSpec], root: str) -> str:
    """Trains the tokenizer once for all tokenizer runs of ``specs`` (cached in ROOT/_shared); its path."""
    for spec in specs:
        m = sweep["methods"][spec.method]
        config = base_config(sweep, spec, m.get("control_of", spec.method))
        if config.proxy.name in ("tokenizer", "tokens_as_bytes") and not config.proxy.model_path:
            config.proxy.name = "tokenizer"
            return assemble.make_proxy(config, os.path.join(root, "_shared")).origin
    return ""


def prepare(sweep: dict[str, Any], specs: list[RunSpec], root: str, log=None) -> setup_lib.Prepared:
    """The sweep's setup (``scaling.setup``) for the runs of ``specs``: M1 if a neural run needs one, then the
    preprocessed shards of the methods the sweep file lists under ``preprocess``."""
    targets = {sweep["methods"][s.method].get("control_of", s.method): s for s in specs}
    return setup_lib.prepare(sweep, root, {m: functools.partial(base_config, sweep, s, m) for m, s in targets.items()},
                             log or _print)


def collect(config: ml_collections.ConfigDict, spec: RunSpec, workdir: str, wall_s: float,
            control_of: str | None = None) -> dict[str, Any]:
    """The result dict of a finished run (the keys ``scaling.report.write_report`` reads, and more); the
    model is the one the run recorded (``run.json``)."""
    args = run_record.read(workdir).args
    c = config
    per_step = compute.flops_per_step(args, c.data.seq_len, c.data.batch_size)
    rows = results_lib.read_rows(workdir)
    steps = int(c.train.steps)
    trained = [rows[s] for s in range(steps) if s in rows and "train/raw_targets" in rows[s]]
    curve, evals = [], []
    for s in sorted(rows):
        r = rows[s]
        ev = r.get("eval/raw_bpb")
        if ev is not None:  # evaluations are logged after s steps
            evals.append((s, ev))
            curve.append((s, s * per_step, None, None, ev))
        if "train/loss" in r:  # training rows are logged at the step taken: s + 1 steps done
            curve.append((s + 1, (s + 1) * per_step, r.get("train/raw_loss") if r.get("train/raw_targets") else None,
                          r.get("train/comp_loss") if r.get("train/comp_targets") else None, None))
    final = [e for s, e in evals if s == steps]
    return {
        "name": spec.name, "method": spec.method, "control_of": control_of, "size": spec.size, "seed": spec.seed,
        "params": count_params(args, include_embedding=False), "budget_flops": spec.budget_flops,
        "flops": compute.training_flops(args, c.data.seq_len, c.data.batch_size, steps), "steps": steps,
        "symbols": steps * c.data.batch_size * c.data.seq_len,
        "raw_bytes_seen": int(sum(r["train/raw_targets"] for r in trained)),
        "comp_symbols_seen": int(sum(r.get("train/comp_targets", 0) for r in trained)),
        "logged_steps": len(trained),
        "raw_bpb": final[-1] if final else None, "evals": evals,
        "final_train_loss": trained[-1]["train/loss"] if trained else None,
        "wall_s": wall_s, "curve": curve,
    }


def _add_wall(workdir: str, seconds: float) -> float:
    storage.makedirs(workdir)
    total = results_lib.wall(workdir) + seconds
    storage.write_text(storage.join(workdir, WALL), json.dumps({"wall_s": total}))
    return total


def run_one(sweep: dict[str, Any], spec: RunSpec, root: str, tokenizer_path: str = "", *,
            stop_after: int | None = None, prepared: setup_lib.Prepared | None = None) -> dict[str, Any] | None:
    """Trains (or resumes) one run and writes its result.json; None if ``stop_after`` cut it short.

    Raises ``Preempted`` when SIGTERM stopped the run (its checkpoint is saved; rerun the sweep to go on).
    """
    workdir = os.path.join(root, spec.name)
    config = run_config(sweep, spec, root, tokenizer_path, prepared)
    t0 = time.perf_counter()
    try:
        summary = train_lib.train(config, workdir, progress=False, stop_after=stop_after)
    finally:  # an interrupted attempt's time counts too
        wall = _add_wall(workdir, time.perf_counter() - t0)
    if "preempted_at" in summary:
        raise Preempted(f"{spec.name} was stopped by SIGTERM at step {summary['preempted_at']}; its checkpoint "
                        "is saved, and rerunning the same sweep command resumes it.")
    if summary["final_step"] < config.train.steps:
        return None
    result = collect(config, spec, workdir, wall, sweep["methods"][spec.method].get("control_of"))
    storage.write_text(storage.join(workdir, RESULT), json.dumps(result, indent=1))
    return result


def _print(text: str) -> None:
    print(text, flush=True)


def local_root(root: str, flag: str = "root") -> str:
    """The sweep's folder, absolute; a URL is refused (the sweep's status, results and report are local files:
    a bucket is reached through a mount)."""
    if storage.is_remote(root):
        raise ValueError(f"{flag}={root} is a URL; a sweep keeps its runs in a folder: mount the bucket (e.g. "
                         "with gcsfuse) and pass the mounted folder.")
    return storage.resolve(root)


def run_sweep(sweep: dict[str, Any], root: str, *, shard_spec: str = "0/1", log=_print) -> list[dict[str, Any]]:
    """Runs this shard's runs in order, skipping finished ones; prints the status table between runs."""
    root = local_root(root)
    storage.makedirs(root)
    for method, reason in sweep.get("skip", {}).items():
        log(f"skipped method {method}: {reason}")
    specs = shard(runs(sweep), shard_spec)
    tokenizer_path = shared_tokenizer(sweep, specs, root)
    prepared = prepare(sweep, specs, root, log)
    for spec in specs:
        if os.path.exists(os.path.join(root, spec.name, RESULT)):
            continue
        log(results_lib.format_status(results_lib.status([s.name for s in runs(sweep)], root)))
        log(f"train {spec.name}")
        run_one(sweep, spec, root, tokenizer_path, prepared=prepared)
    log(results_lib.format_status(results_lib.status([s.name for s in runs(sweep)], root)))
    results = results_lib.load_results(root)
    storage.write_text(storage.join(root, "results.json"), json.dumps(results, indent=1))
    return results


def setup(sweep: dict[str, Any], root: str, *, log=_print) -> setup_lib.Prepared:
    """Only the sweep's shared pieces (tokenizer, M1, preprocessed shards), for all of its runs."""
    root = local_root(root)
    storage.makedirs(root)
    specs = runs(sweep)
    shared_tokenizer(sweep, specs, root)
    return prepare(sweep, specs, root, log)


def report(root: str, out_dir: str | None = None, title: str = "") -> str:
    """Renders ROOT's finished runs with ``scaling.report.write_report``; returns report.md's path."""
    from proxy_jax.scaling import report as report_lib

    root, out_dir = local_root(root), (local_root(out_dir, "--out") if out_dir else None)
    results = results_lib.load_results(root)
    if not results:
        raise ValueError(f"No finished runs (no */{RESULT}) under {root!r}; run the sweep first.")
    path = report_lib.write_report(copy.deepcopy(results), out_dir or root,
                                   title=title or f"Sweep {os.path.basename(os.path.abspath(root))}")
    storage.append_text(path, "\n" + "\n".join(results_lib.raw_bytes_lines(results)) + "\n")
    return str(path)
