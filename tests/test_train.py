"""End-to-end training on the stdlib corpus: resume exactness, a damaged checkpoint, the command line.

One uninterrupted run and one stopped after step 6 are trained once per session; the tests resume copies of
the stopped one. The non-finite guard is tested in ``test_reliability`` (one diverged run for it and
``test_health``)."""

import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import helpers
from proxy_jax import metrics, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    """proxy_gzip shrunk (``helpers.tiny_run_config``): a warm-up of pairs, then sentinel mode."""
    return helpers.tiny_run_config("configs/proxy_gzip.py:tiny", **overrides)


def losses_by_step(workdir):
    out = {}
    for row in metrics.read_metrics(workdir):
        if "train/loss" in row:
            out[row["step"]] = row["train/loss"]  # a resumed run rewrites steps after its checkpoint
    return out


def packing_threads():
    """Live threads of data.host_prefetch (Grain names its prefetch threads so)."""
    return [t for t in threading.enumerate() if t.name.startswith("grain-thread-prefetch")]


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted run (8 steps, data.host_prefetch at its default of 2 batches ahead), its losses by step."""
    def build(wd):
        assert tiny_config().data.host_prefetch == 2
        train.train(tiny_config(), wd, progress=False)
        assert not packing_threads()

    reference = losses_by_step(helpers.shared_folder("test_train/full", build))
    assert sorted(reference) == list(range(8))
    assert reference[7] < reference[0]
    return reference


@pytest.fixture(scope="module")
def stopped():
    """The same run stopped after step 6 (checkpoints 4 and 6), packing 3 batches ahead when it saves."""
    def build(wd):
        train.train(tiny_config(**{"data.host_prefetch": 3}), wd, progress=False, stop_after=6)
        assert not packing_threads()

    return helpers.shared_folder("test_train/stopped_at_6", build)


def test_resume_after_kill_gives_identical_losses(tmp_path, reference, stopped):
    """Also across data.host_prefetch: the reference packs 2 batches ahead (the default), the broken run
    packs 3 ahead when it saves, and the resumed run packs in the loop; every step's loss agrees."""
    broken = helpers.copy_run(stopped, tmp_path / "broken")
    # A kill after step 6 leaves the step-4 checkpoint as the newest complete one.
    shutil.rmtree(os.path.join(broken, "checkpoints", "6"))
    summary = train.train(tiny_config(**{"data.host_prefetch": 0}), broken, progress=False)
    assert summary["start_step"] == 4 and summary["final_step"] == 8
    resumed = losses_by_step(broken)
    np.testing.assert_allclose([resumed[s] for s in range(8)], [reference[s] for s in range(8)], rtol=1e-6)
    assert not packing_threads()


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path, reference, stopped):
    wd = helpers.copy_run(stopped, tmp_path / "run")
    newest = os.path.join(wd, "checkpoints", "6")
    damaged = 0
    for dirpath, _, files in os.walk(os.path.join(newest, "state")):
        for name in files:
            with open(os.path.join(dirpath, name), "wb") as f:
                f.write(b"garbage")
            damaged += 1
    assert damaged
    summary = train.train(tiny_config(), wd, progress=False)
    assert summary["start_step"] == 4 and summary["final_step"] == 8
    resumed = losses_by_step(wd)  # the steps re-trained from step 4 are those of the uninterrupted run
    np.testing.assert_allclose([resumed[s] for s in range(8)], [reference[s] for s in range(8)], rtol=1e-6)


def run_cli(*args, timeout=300, devices=1):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-m", "proxy_jax.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_rejects_misspelt_override(tmp_path):
    out = run_cli("--config=configs/bytes.py:tiny", f"--workdir={tmp_path}", "--config.data.seq_lenn=5")
    assert out.returncode != 0
    assert "--config has no key 'seq_lenn'" in out.stderr and 'Did you mean "seq_len"' in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_rejects_batch_the_mesh_cannot_split(tmp_path):
    out = run_cli("--config=configs/bytes.py:tiny", f"--workdir={tmp_path}", "--config.data.batch_size=3", devices=2)
    assert out.returncode != 0
    assert "batch_size" in out.stderr and "3" in out.stderr
    assert "Traceback" not in out.stderr


def test_sigterm_saves_and_the_same_command_resumes(tmp_path):
    import signal
    import time

    wd = tmp_path / "preempt"
    args = ["--config=configs/bytes.py:tiny", f"--workdir={wd}", "--config.train.steps=400",
            "--config.train.log_every=1", "--config.data.seq_len=64", "--config.data.batch_size=8",
            "--config.train.eval_every=0", "--config.train.sample_prompt=", "--config.train.tensorboard=False",
            *(f"--config.{k}={v}" for k, v in helpers.TINY.items() if k.startswith("model."))]  # quick to compile
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "proxy_jax.main", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        if (wd / "metrics.jsonl").exists() and len((wd / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped by SIGTERM at step" in out
    stopped = int(out.split("stopped by SIGTERM at step")[1].split(";")[0])
    assert 3 <= stopped < 400
    assert str(stopped) in os.listdir(wd / "checkpoints")
    # The same command (shortened to 5 more steps) resumes from the saved step.
    resumed = run_cli(*[a if not a.startswith("--config.train.steps") else f"--config.train.steps={stopped + 5}"
                        for a in args])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f'"start_step": {stopped}' in resumed.stdout and f'"final_step": {stopped + 5}' in resumed.stdout
