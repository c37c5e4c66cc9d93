"""Profiles on demand: ``train.profile_start_step=3, profile_num_steps=2`` leaves a jax.profiler trace under
``{workdir}/profile/`` (the XPlane file TensorBoard's profile plugin reads, and a Perfetto trace whose step
annotations are steps 3 and 4), says where in one log line, and changes none of the run's numbers."""

import glob
import gzip
import json
import logging
import os

import helpers
from proxy_jax import metrics, train

RUN = {"data.source": "dir", "data.val_fraction": 0.2, "data.batch_size": 4, "train.steps": 6,
       "train.checkpoint_every": 6}


def losses(workdir):
    return [(r["step"], r["train/loss"], r["train/grad_norm"]) for r in metrics.read_metrics(workdir)
            if "train/loss" in r]


def test_a_trace_of_steps_3_and_4_changes_no_number(tmp_path, corpus, caplog):
    plain, traced = str(tmp_path / "plain"), str(tmp_path / "traced")
    train.train(helpers.tiny_run_config("configs/bytes.py:tiny", **RUN, **{"data.path": corpus}), plain,
                progress=False)
    config = helpers.tiny_run_config("configs/bytes.py:tiny", **RUN, **{
        "data.path": corpus, "train.profile_start_step": 3, "train.profile_num_steps": 2})
    with caplog.at_level(logging.INFO, logger="proxy_jax"):
        train.train(config, traced, progress=False)
    assert losses(traced) == losses(plain) and len(losses(plain)) == 6
    profile = os.path.join(traced, "profile")
    assert glob.glob(os.path.join(profile, "plugins", "profile", "*", "*.xplane.pb"))
    perfetto = glob.glob(os.path.join(profile, "plugins", "profile", "*", "perfetto_trace.json.gz"))
    assert perfetto
    with gzip.open(perfetto[0], "rt") as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    steps = sorted({int(e["args"]["step_num"]) for e in events if e.get("name") == "train" and "step_num" in
                    e.get("args", {})})
    assert steps == [3, 4]
    said = [r.getMessage() for r in caplog.records if "Wrote a profile" in r.getMessage()]
    assert len(said) == 1 and "steps 3..4" in said[0] and profile in said[0]
