"""``preprocess --processes=N``: local processes share the shards, and their output is byte for byte one
process's (the neural proxy's case, with a sweep's setup: tests/test_sweep_setup.py)."""

import json
import os
import subprocess
import sys

import pytest

from helpers import STDLIB, config_with
from proxy_jax import assemble, preprocess_pool


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
    assert json.load(open(out / "manifest.json")) == one
    assert _files(out) == _files(tmp_path / "one")
    # each process reported its progress on its own lines
    assert "train 1/2" in r.stderr and "train 2/2" in r.stderr
    # --overwrite: prepared once, before the pool starts, and the pool writes the same shards again
    again = preprocess_pool.preprocess(_gzip_config(), str(out), processes=2, num_shards=3, overwrite=True)
    assert again.manifest == one and _files(out) == _files(tmp_path / "one")


def test_a_pool_with_bad_process_counts_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--processes=0 must be >= 1"):
        preprocess_pool.preprocess(_gzip_config(), str(out), processes=0, num_shards=3)
    with pytest.raises(ValueError, match="--processes=4 exceeds --num_shards=3"):
        preprocess_pool.preprocess(_gzip_config(), str(out), processes=4, num_shards=3)
    assert not out.exists()


def test_processes_with_a_host_split_is_one_sentence(tmp_path):
    r = subprocess.run([sys.executable, "-m", "proxy_jax.preprocess", "--config=configs/proxy_gzip.py:tiny",
                        f"--output={tmp_path / 'out'}", "--config.data.source=dir", f"--config.data.path={STDLIB}",
                        "--config.data.glob=email/**/*.py", "--processes=2", "--process_count=2"],
                       capture_output=True, text=True, timeout=300, cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert r.returncode == 2 and "drop --process_index and --process_count" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out").exists()
