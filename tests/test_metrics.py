"""Metrics that do not mislead: no loss for a step without its targets, one row per step and key across
resumes (metrics.jsonl and TensorBoard), one evaluation row per evaluated step."""

import glob
import json
import os
import struct
import types

from tensorboardX.proto import event_pb2

from proxy_jax import metrics, train


def tensorboard_scalars(logdir: str) -> dict[str, list[int]]:
    """Steps per tag as TensorBoard shows them: event files in order, and a ``SessionLog.START`` at step s
    discards the events of step >= s read before it (TensorBoard's purge rule)."""
    events = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    seen: list[tuple[str, int]] = []
    for ev in events:
        if ev.HasField("session_log") and ev.session_log.status == event_pb2.SessionLog.START:
            seen = [(tag, step) for tag, step in seen if step < ev.step]
        for value in ev.summary.value:
            seen.append((value.tag, ev.step))
    out: dict[str, list[int]] = {}
    for tag, step in seen:
        out.setdefault(tag, []).append(step)
    return out


def write_run(wd, start, stop, evals=(), start_step=None):
    w = metrics.MetricsWriter(wd, tensorboard=True, start_step=start_step)
    for step in range(start, stop):
        w.write(step, {"train/loss": 1.0 / (step + 1)})
        if step + 1 in evals:
            w.write(step + 1, {"eval/raw_bpb": 2.0})
    w.close()


def test_a_resume_supersedes_the_rows_it_writes_again(tmp_path):
    wd = str(tmp_path)
    write_run(wd, 0, 9, evals=(4, 8), start_step=0)  # a run killed at step 8; its newest checkpoint is 4
    write_run(wd, 4, 10, evals=(8, 10), start_step=4)  # the resumed run re-trains 4.. and evaluates at 8, 10
    rows = metrics.read_metrics(wd)
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    eval_steps = [r["step"] for r in rows if "eval/raw_bpb" in r]
    assert train_steps == list(range(10)) and eval_steps == [4, 8, 10]
    with open(os.path.join(wd, metrics.SUPERSEDED)) as f:  # kept, not deleted
        old = [json.loads(line)["step"] for line in f]
    assert sorted(old) == [4, 5, 6, 7, 8, 8]
    tb = tensorboard_scalars(os.path.join(wd, "tensorboard"))
    assert tb["train/loss"] == list(range(10)) and sorted(tb["eval/raw_bpb"]) == [4, 8, 10]

    write_run(wd, 10, 10, evals=(), start_step=10)  # a finished run rerun: nothing new
    w = metrics.MetricsWriter(wd, tensorboard=True, start_step=10)
    w.write(10, {"eval/raw_bpb": 2.0})  # its final evaluation again: not a second row
    w.close()
    rows = metrics.read_metrics(wd)
    assert [r["step"] for r in rows if "eval/raw_bpb" in r] == [4, 8, 10]
    assert sorted(tensorboard_scalars(os.path.join(wd, "tensorboard"))["eval/raw_bpb"]) == [4, 8, 10]


def test_a_loss_without_targets_is_not_logged():
    run = types.SimpleNamespace(config=types.SimpleNamespace(data=types.SimpleNamespace(batch_size=2, seq_len=8)))
    raw = {"loss": 2.0, "raw_loss": 0.0, "comp_loss": 3.0, "raw_targets": 0.0, "comp_targets": 12.0,
           "grad_norm": 1.0, "num_streams": 4.0, "num_comp_streams": 4.0}
    out = train._step_scalars(run, raw, 0.1, 0.0, None, None)
    assert "train/raw_loss" not in out and out["train/comp_loss"] == 3.0
    assert out["train/raw_targets"] == 0.0  # the count says why
    out = train._step_scalars(run, {**raw, "raw_targets": 5.0, "raw_loss": 1.5, "comp_targets": 0.0}, 0.1, 0.0,
                              None, None)
    assert out["train/raw_loss"] == 1.5 and "train/comp_loss" not in out
