"""A sweep's setup (``scaling.setup``): M1 trained once by the training loop, the corpus compressed once by the
neural proxy with two processes (byte for byte one process's shards), proxy_neural runs and their control reading those shards and
the shards' proxy, a run on them resuming exactly, and a rerun making nothing again."""

import json
import os

import numpy as np
import pytest

from helpers import ROOT, STDLIB
from proxy_jax import assemble, run_record, train
from proxy_jax.data import shards
from proxy_jax.scaling import setup as setup_lib
from proxy_jax.scaling import sweep as sweep_lib

SIZE = {"a": dict(d_model=32, d_ff=64, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=32)}
DATA = {"data.source": "dir", "data.path": STDLIB, "data.glob": "importlib/metadata/*.py", "data.val_fraction": 0.2}
NEURAL = {"proxy.chunk_bytes": 64, "proxy.entropy_sample_bytes": 8192, "proxy.m1_tile_positions": 256}


def _sweep():
    m1 = {"config": os.path.join(ROOT, "configs/m1.py:tiny"), "overrides": {
        **DATA, "train.steps": 3, "train.checkpoint_every": 3, "opt.warmup_steps": 1, "train.eval_docs": 3, "data.seq_len": 64,
        "data.batch_size": 4, "model.num_layers": 1, "model.d_ff": 128}}
    neural = os.path.join(ROOT, "configs/proxy_neural.py")
    return {"preset": "tiny", "sizes": SIZE, "evals": 1, "m1": m1,
            "overrides": {**DATA, **NEURAL, "data.seq_len": 64, "data.batch_size": 4, "train.eval_docs": 3,
                          "train.eval_batch_size": 4},
            "methods": {"proxy_neural": {"config": neural},
                        "control_neural": {"config": neural, "control_of": "proxy_neural"}},
            "preprocess": {"methods": ["proxy_neural"], "processes": 2, "num_shards": 4},
            "grids": [{"methods": ["proxy_neural", "control_neural"], "sizes": ["a"], "budgets": [2.6e10]}]}  # 8 steps


def _files(out):
    return {os.path.relpath(os.path.join(d, f), out): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(out) for f in fs
            if not os.path.relpath(d, out).startswith("work") and f != setup_lib.PREPROCESS_RESULT}


def _losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.mark.slow
def test_setup_makes_m1_and_neural_shards_once_and_runs_read_them(tmp_path, monkeypatch):
    monkeypatch.delenv("PROXY_JAX_M1", raising=False)
    root = str(tmp_path / "sweep")
    sweep = _sweep()
    logs = []
    results = sweep_lib.run_sweep(sweep, root, log=logs.append)
    shared = os.path.join(root, setup_lib.SHARED)
    m1_dir, out = os.path.join(shared, setup_lib.M1_DIR), os.path.join(shared, "shards-proxy_neural")

    # M1: trained to its last step, its held-out bpb recorded beside gzip's (and printed).
    m1 = json.load(open(os.path.join(shared, setup_lib.M1_RESULT)))
    assert m1["final_step"] == 3 and m1["eval/raw_bpb"] > 0 and m1["eval/gzip_bpb"] > 0
    assert any(line.startswith("M1: held-out raw bpb") for line in logs)
    # The pool's shards are one process's, byte for byte.
    info = json.load(open(os.path.join(out, setup_lib.PREPROCESS_RESULT)))
    assert info["processes"] == 2 and len(info["peak_rss_mb"]) == 2 and min(info["peak_rss_mb"]) > 50
    config = sweep_lib.base_config(sweep, sweep_lib.runs(sweep)[0], "proxy_neural",
                                   prepared=setup_lib.Prepared(m1_workdir=m1_dir))
    proxy = assemble.make_proxy(config)
    assert proxy.model.context == 64 and proxy.entropy_threshold > 0
    config.proxy.chunk_bytes = 128
    with pytest.raises(ValueError, match="chunk_bytes=128 exceeds the 64-byte context"):
        assemble.make_proxy(config)
    config.proxy.chunk_bytes = 64
    one = assemble.preprocess(config, str(tmp_path / "one"), num_shards=4, progress_bar=False)
    assert one["proxy"]["m1_params_sha256"] == proxy.manifest()["m1_params_sha256"]
    assert _files(out) == _files(tmp_path / "one")
    assert shards.read_manifest(out) == one

    # Both runs read the shards and record the shards' proxy (the threshold they were made with).
    by_method = {r["method"]: r for r in results}
    for name in ("proxy_neural", "control_neural"):
        wd = os.path.join(root, by_method[name]["name"])
        c = json.load(open(os.path.join(wd, "config.json")))
        assert c["data"]["source"] == "preprocessed" and c["data"]["path"] == out
        assert run_record.read(wd).proxy["entropy_threshold"] == one["proxy"]["entropy_threshold"]
        assert np.isfinite(by_method[name]["raw_bpb"])
    assert by_method["control_neural"]["comp_symbols_seen"] == 0 < by_method["proxy_neural"]["comp_symbols_seen"]

    # A rerun makes nothing again.
    stamps = {p: os.path.getmtime(p) for p in (os.path.join(shared, setup_lib.M1_RESULT),
                                               os.path.join(out, shards.MANIFEST))}
    logs = []
    sweep_lib.run_sweep(sweep, root, log=logs.append)
    assert not any(line.startswith(("train", "preprocess")) for line in logs)
    assert stamps == {p: os.path.getmtime(p) for p in stamps}

    # A run on the shards stopped midway and resumed gives the uninterrupted run's losses.
    spec = next(s for s in sweep_lib.runs(sweep) if s.method == "proxy_neural")
    prepared = setup_lib.Prepared(m1_workdir=m1_dir, shards={"proxy_neural": out})
    full = sweep_lib.run_config(sweep, spec, root, prepared=prepared)
    full.train.checkpoint_every = 2
    steps = int(full.train.steps)
    train.train(full, str(tmp_path / "full"), progress=False)
    cut = str(tmp_path / "cut")
    train.train(full, cut, progress=False, stop_after=3)
    train.train(full, cut, progress=False)
    a, b = _losses(str(tmp_path / "full")), _losses(cut)
    assert sorted(a) == list(range(steps)) and steps > 3
    assert {s: b[s] for s in a} == a
