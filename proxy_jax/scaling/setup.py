"""What a sweep makes once, before its runs, in ``ROOT/_shared``: M1 and preprocessed corpora.

Two keys of a sweep file (both optional):

    m1          {"config": "configs/m1.py:tiny", "overrides": {...}}: the neural proxy's M1, trained once in
                ROOT/_shared/m1 (resumed if interrupted; skipped when finished) for every run whose proxy is
                ``neural`` and names no M1. ``PROXY_JAX_M1=DIR`` uses a trained M1 instead. Its held-out
                raw bits per byte beside gzip's and xz's go to ROOT/_shared/m1.json.
    preprocess  {"methods": [...], "processes": 2, "num_shards": 16}: those methods' runs (and their
                transfer controls) read their corpus compressed once into ROOT/_shared/shards-METHOD by
                ``proxy_jax.preprocess_pool`` (``processes`` local processes), instead of compressing
                documents while they train. Timing and peak memory go to shards-METHOD/preprocess.json.

The shards depend only on the proxy and data settings (never on the model size or seed), so every run
of a method reads the same ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Callable

import ml_collections

from proxy_jax import config as config_lib
from proxy_jax import recipes, storage
from proxy_jax.data import shards as shards_lib

SHARED = "_shared"
M1_DIR = "m1"
M1_RESULT = "m1.json"
PREPROCESS_RESULT = "preprocess.json"


@dataclasses.dataclass
class Prepared:
    m1_workdir: str = ""
    shards: dict[str, str] = dataclasses.field(default_factory=dict)  # method -> preprocessed folder


@contextlib.contextmanager
def locked(root: str):
    """An exclusive lock on ROOT/_shared/setup.lock while the setup runs (``flock``: hosts sharing ROOT over
    NFS should run the setup once, e.g. with ``--shard=0/1``, before starting the other shards)."""
    import fcntl

    os.makedirs(os.path.join(root, SHARED), exist_ok=True)
    with open(os.path.join(root, SHARED, "setup.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def m1_config(sweep: dict[str, Any]) -> ml_collections.ConfigDict:
    spec = sweep["m1"]
    config = recipes.load_config(spec["config"])
    try:
        config_lib.override(config, **spec.get("overrides", {}))
    except KeyError as e:
        raise ValueError(f"Sweep file's m1 overrides: {e.args[0]}") from None
    config.train.sample_prompt, config.train.tensorboard = "", False
    if not 0 < config.train.eval_every <= config.train.steps:  # M1's held-out bpb is measured at its end
        config.train.eval_every = config.train.steps
    return config


def needs_m1(configs: list[ml_collections.ConfigDict]) -> bool:
    return any(c.proxy.name == "neural" and not c.proxy.m1_workdir for c in configs)


def train_m1(sweep: dict[str, Any], root: str, log: Callable[[str], None]) -> str:
    """ROOT/_shared/m1 trained to its last step (or ``PROXY_JAX_M1``); its workdir."""
    given = os.environ.get("PROXY_JAX_M1", "")
    if given:
        return storage.resolve(given)
    if "m1" not in sweep:
        raise ValueError("A run of this sweep uses the neural proxy without an M1: add an 'm1' entry to the sweep "
                         "file or set PROXY_JAX_M1=/path/to/a/trained/m1.")
    from proxy_jax import train as train_lib

    workdir = os.path.join(root, SHARED, M1_DIR)
    result_path = os.path.join(root, SHARED, M1_RESULT)
    if os.path.exists(result_path):
        return workdir
    config = m1_config(sweep)
    log(f"train M1 ({sweep['m1']['config']}) in {workdir}")
    summary = train_lib.train(config, workdir, progress=False)
    if summary["final_step"] < config.train.steps:
        raise RuntimeError(f"M1 stopped at step {summary['final_step']} of {config.train.steps}; rerun the sweep "
                           "to resume it.")
    out = {k: v for k, v in train_lib.report(summary).items() if k.startswith("eval/") or k == "final_step"}
    storage.write_text(result_path, json.dumps(out, indent=1))
    log(f"M1: held-out raw bpb {out.get('eval/raw_bpb', float('nan')):.3f} (gzip -9 "
        f"{out.get('eval/gzip_bpb', float('nan')):.3f}, xz -9e {out.get('eval/xz_bpb', float('nan')):.3f})")
    return workdir


def preprocess_method(config: ml_collections.ConfigDict, method: str, root: str, spec: dict[str, Any],
                      log: Callable[[str], None]) -> str:
    """``method``'s corpus compressed once into ROOT/_shared/shards-METHOD (resumed if interrupted)."""
    from proxy_jax import preprocess_pool

    output = os.path.join(root, SHARED, f"shards-{method}")
    if os.path.exists(os.path.join(output, shards_lib.MANIFEST)):
        return output
    processes = int(spec.get("processes", 1))
    log(f"preprocess {method} into {output} with {processes} process(es)")
    result = preprocess_pool.preprocess(config, output, processes=processes,
                                        num_shards=int(spec.get("num_shards", 8)))
    if not result.manifest.get("complete"):
        raise RuntimeError(f"Preprocessing {output} did not finish; rerun the sweep to resume it.")
    info = {"seconds": result.seconds, "processes": processes, "peak_rss_mb": result.peak_rss_mb,
            "splits": {k: {f: v[f] for f in ("documents", "bytes", "symbols", "ratio")}
                       for k, v in result.manifest["splits"].items()}}
    storage.write_text(os.path.join(output, PREPROCESS_RESULT), json.dumps(info, indent=1))
    log(f"preprocessed {method}: {result.seconds:.0f} s, peak memory "
        f"{', '.join(f'{m:.0f}' for m in result.peak_rss_mb)} MB per process")
    return output


def prepare(sweep: dict[str, Any], root: str, configs: dict[str, Callable[..., ml_collections.ConfigDict]],
            log: Callable[[str], None]) -> Prepared:
    """M1 if a run needs one, then each ``preprocess`` method's shards; ``configs``: method -> its base config
    (called with ``prepared=`` once M1 is known). Under :func:`locked`, so shards started together make them once."""
    prepared = Prepared()
    with locked(root):
        if needs_m1([make() for make in configs.values()]):
            prepared.m1_workdir = train_m1(sweep, root, log)
        pre = sweep.get("preprocess", {})
        for method in pre.get("methods", ()):
            if method in configs:
                prepared.shards[method] = preprocess_method(configs[method](prepared=prepared), method, root, pre, log)
    return prepared
