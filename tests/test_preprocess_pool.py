"""``preprocess --processes=N``: local processes share the shards, and their output is byte for byte one
process's, for the gzip proxy and for the neural proxy (whose view must not depend on the process); a
proxy_neural run trained on neural shards takes the shards' proxy and resumes exactly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import STDLIB, TINY, config_with, tiny_run_config
from proxy_jax import assemble, preprocess_pool, train


def _files(out):
    return {os.path.relpath(os.path.join(d, f), out): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(out) for f in fs
            if not os.path.relpath(d, out).startswith("work") and f != "preprocess.json"}


def _gzip_config():
    return config_with(**{"data.source": "dir", "data.path": STDLIB, "data.glob": "email/**/*.py",
                          "data.val_fraction": 0.2, "proxy.name": "gzip"})


def test_command_with_two_processes_writes_one_process_shards(tmp_path):
    one = assemble.preprocess(_gzip_config(), str(tmp_path / "one"), num_shards=3, progress_bar=False)
    cfg = tmp_path / "cfg.py"
    cfg.write_text("from proxy_jax.config import base_config\n\n\ndef get_config():\n"
                   "    c = base_config()\n    c.proxy.name = 'gzip'\n    return c\n")
    out = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "proxy_jax.preprocess", f"--config={cfg}", f"--output={out}",
                        "--num_shards=3", "--processes=2", "--config.data.source=dir", f"--config.data.path={STDLIB}",
                        "--config.data.glob=email/**/*.py", "--config.data.val_fraction=0.2"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 processes:" in r.stdout and "peak memory" in r.stdout
    assert json.load(open(out / "manifest.json")) == {**one, "complete": True} or \
        json.load(open(out / "manifest.json")) == one
    assert _files(out) == _files(tmp_path / "one")
    # each process reported its progress on its own lines
    assert "train 1/2" in r.stderr and "train 2/2" in r.stderr


@pytest.mark.parametrize("flags, message", [
    (["--processes=0"], "--processes=0 must be >= 1"),
    (["--processes=2", "--process_count=2"], "drop --process_index and --process_count"),
    (["--processes=4", "--num_shards=3"], "--processes=4 exceeds --num_shards=3"),
])
def test_bad_process_flags_are_one_sentence(tmp_path, flags, message):
    r = subprocess.run([sys.executable, "-m", "proxy_jax.preprocess", "--config=configs/proxy_gzip.py:tiny",
                        f"--output={tmp_path / 'out'}", "--config.data.source=dir", f"--config.data.path={STDLIB}",
                        "--config.data.glob=email/**/*.py", *flags], capture_output=True, text=True, timeout=300,
                       cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_neural_shards_from_two_processes_train_and_resume_exactly(tmp_path):
    """M1 from the trainer (3 steps); the json package compressed by 1 and by 2 processes is identical; a
    proxy_neural run on those shards records the shards' proxy and gives the same losses when resumed."""
    m1c = config_with("configs/m1.py:tiny", **{**TINY, "train.steps": 3, "data.seq_len": 64, "model.d_ff": 128})
    m1_dir = str(tmp_path / "m1")
    train.train(m1c, m1_dir, progress=False)

    data = {"data.source": "dir", "data.path": STDLIB, "data.glob": "json/*.py", "data.val_fraction": 0.2}
    neural = {"proxy.name": "neural", "proxy.m1_workdir": m1_dir, "proxy.chunk_bytes": 64,
              "proxy.entropy_sample_bytes": 8192, "proxy.m1_tile_positions": 256}
    c = config_with(**data, **neural)
    one = assemble.preprocess(c, str(tmp_path / "one"), num_shards=4, progress_bar=False)
    pool = preprocess_pool.preprocess(c, str(tmp_path / "two"), processes=2, num_shards=4)
    assert pool.manifest == one and len(pool.peak_rss_mb) == 2 and min(pool.peak_rss_mb) > 50
    assert _files(tmp_path / "two") == _files(tmp_path / "one")

    run = {**data, "data.source": "preprocessed", "data.path": str(tmp_path / "two"), "proxy.m1_workdir": m1_dir,
           "proxy.chunk_bytes": 64, "proxy.m1_tile_positions": 256, "train.steps": 6, "train.checkpoint_every": 2}
    full = train.train(tiny_run_config("configs/proxy_neural.py:tiny", **run), str(tmp_path / "full"), progress=False)
    assert full["run"].proxy.manifest() == {**one["proxy"], "m1_workdir": m1_dir} or \
        full["run"].proxy.manifest()["entropy_threshold"] == one["proxy"]["entropy_threshold"]
    cut = str(tmp_path / "cut")
    train.train(tiny_run_config("configs/proxy_neural.py:tiny", **run), cut, progress=False, stop_after=3)
    resumed = train.train(tiny_run_config("configs/proxy_neural.py:tiny", **run), cut, progress=False)
    assert resumed["start_step"] == 2 or resumed["start_step"] == 3

    def losses(wd):
        rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
        return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}

    a, b = losses(str(tmp_path / "full")), losses(cut)
    assert sorted(a) == list(range(6)) and all(np.isfinite(list(a.values())))
    assert {s: b[s] for s in a} == a
