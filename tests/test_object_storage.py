"""Workdirs on object storage (``--workdir=gs://bucket/run``), against a local Cloud Storage server
(``tests/gcs_emulator.py``: ``gcp-storage-emulator`` with object generations, on 127.0.0.1): training writes its config, lock, run record,
metrics, TensorBoard events and checkpoints into the bucket and nothing on local disk; the same command
resumes; evaluation reads the run back; the lock refuses a live holder."""

import json
import os
import socket
import subprocess
import sys

import pytest

import helpers

gcsfs = pytest.importorskip("gcsfs", reason="the [gcs] extra is not installed")
pytest.importorskip("gcp_storage_emulator", reason="the test extra is not installed")
import gcs_emulator  # noqa: E402 - needs the test extra


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    with gcs_emulator.running(tmp_path_factory.mktemp("gcs")) as served:
        yield served


def _cli(module, args, env, cwd):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(helpers.ROOT)})


def _overrides(**more):
    values = {**helpers.TINY, "train.steps": 4, "train.checkpoint_every": 2, "train.tensorboard": True,
              "data.max_doc_bytes": 2048, **more}
    return [f"--config.{k}={v}" for k, v in values.items()]


def test_a_run_lives_in_the_bucket(bucket, tmp_path):
    fs, env = bucket["fs"], bucket["env"]
    url = "gs://runs/exp/bytes"
    config = f"--config={helpers.ROOT}/configs/bytes.py:tiny"
    first = _cli("proxy_jax.main", [config, f"--workdir={url}", *_overrides()], env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert os.listdir(tmp_path) == [], "nothing may be written on local disk"
    names = {p.split("runs/exp/bytes/", 1)[1] for p in fs.find("runs/exp/bytes")}
    for name in ("config.json", "run.json", "metrics.jsonl", "lock", "corpus_keys.txt.gz"):
        assert name in names
    assert any(n.startswith("checkpoints/4/") for n in names) and any(n.startswith("tensorboard/") for n in names)
    assert fs.cat("runs/exp/bytes/lock") == b""  # released
    assert json.loads(fs.cat("runs/exp/bytes/run.json"))["text_format"] == "plain"

    again = _cli("proxy_jax.main", [config, f"--workdir={url}", *_overrides(**{"train.steps": 6})], env, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert '"start_step": 4' in again.stdout and '"final_step": 6' in again.stdout
    steps = [json.loads(line)["step"] for line in fs.cat("runs/exp/bytes/metrics.jsonl").decode().splitlines()]
    assert 5 in steps and 0 in steps

    scored = _cli("proxy_jax.evaluate", [f"--workdir={url}", "--max_docs=2"], env, tmp_path)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert json.loads(scored.stdout)["step"] == 6


LOCK_CHECK = """
import json, os, socket, sys
from proxy_jax import workdir as workdir_lib
holder = int(sys.argv[1])
try:
    with workdir_lib.lock("gs://runs/locked"):
        print(json.dumps({"took": True}))
except workdir_lib.WorkdirLockedError as e:
    print(json.dumps({"took": False, "message": str(e)}))
"""


def test_the_lock_on_object_storage_refuses_a_live_holder(bucket, tmp_path):
    fs, env = bucket["fs"], bucket["env"]

    def attempt(holder_pid):
        fs.pipe("runs/locked/lock", json.dumps({"host": socket.gethostname(), "pid": holder_pid}).encode())
        out = subprocess.run([sys.executable, "-c", LOCK_CHECK, str(holder_pid)], cwd=tmp_path, env={
            **env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(helpers.ROOT)}, capture_output=True, text=True,
            timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    live = attempt(os.getpid())  # this test's own process: alive, on this host
    assert not live["took"] and "is in use by process" in live["message"]
    assert attempt(2**22 + 12345)["took"]  # a dead holder of this host is taken over
    assert fs.cat("runs/locked/lock") == b""  # and released
