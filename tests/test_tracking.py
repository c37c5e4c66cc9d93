"""Trackers (``train.trackers``) and profiles on demand (``train.profile_start_step``).

W&B runs offline (``WANDB_MODE=offline``, files under a temporary ``WANDB_DIR``): its ``.wandb`` files are read
back with W&B's own record type (``wandb.proto.wandb_internal_pb2.Record``) from the framing its writer uses
(a 7-byte file header, 32 KiB blocks of records each with a 7-byte header: CRC, length, type; a record cut at
a block's end continues as FIRST/MIDDLE/LAST pieces). Checked: the history holds every row of metrics.jsonl
(train/loss among them) at its step, the config and run record are the run's config, WANDB_* variables fill
empty settings, a run resumed from an earlier checkpoint (re-training logged steps, from a config.json older
than the tracker keys) continues the same W&B run id with no step sent twice, a tracker that is unknown or
not installed stops the run before the workdir exists, and a sweep groups its runs.
"""

import glob
import json
import os
import shutil
import struct

import pytest

import helpers
from proxy_jax import metrics, train, tracking

CORPUS_RUN = {"data.source": "dir", "data.val_fraction": 0.2, "data.batch_size": 4}


def read_wandb(path: str) -> list:
    """The records of an offline ``.wandb`` file, parsed with W&B's own protobuf type."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    block, pos, records, pieces = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # no room for a header: the rest of the block is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            records.append(wandb_internal_pb2.Record.FromString(pieces))
            pieces = b""
    return records


def history(records) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in r.history.item}
            out.setdefault(int(row["_step"]), {}).update(row)
    return out


def offline_runs(wandb_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*", "run-*.wandb")))


@pytest.fixture
def offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    wandb_dir = tmp_path / "wandb_dir"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return str(wandb_dir)


def test_wandb_history_holds_every_row_and_a_resume_continues_the_run(tmp_path, corpus, offline, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_RUN_GROUP", "group-from-env")
    workdir = str(tmp_path / "run")
    config = helpers.tiny_run_config("configs/bytes.py:tiny", **CORPUS_RUN, **{
        "data.path": corpus, "train.steps": 6, "train.checkpoint_every": 2, "train.eval_every": 3,
        "train.trackers": "tensorboard,wandb", "train.tensorboard": True, "train.wandb_tags": "tiny,ci"})
    train.train(config, workdir, progress=False, stop_after=5)  # stopped after step 4 (checkpoints 4 and 5)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "5"))  # as if killed before saving 5: step 4 is re-trained
    first = offline_runs(offline)
    assert len(first) == 1
    run_id = open(os.path.join(workdir, tracking.WANDB_RUN_ID)).read().strip()
    assert first[0].endswith(f"run-{run_id}.wandb")
    records = read_wandb(first[0])
    run_info = [r.run for r in records if r.WhichOneof("record_type") == "run"][0]
    assert run_info.run_id == run_id and list(run_info.tags) == ["tiny", "ci"]  # tags from the config
    assert run_info.project == "from-env" and run_info.run_group == "group-from-env"  # WANDB_* where it is empty
    logged = {item.key: json.loads(item.value_json) for item in run_info.config.update}
    assert logged["train"]["steps"] == 6 and logged["run"]["text_format"] == "plain"
    before = history(records)
    assert sorted(before) == [0, 1, 2, 3, 4]

    saved = json.load(open(os.path.join(workdir, "config.json")))  # as a workdir from before these keys existed
    for key in [k for k in saved["train"] if k == "trackers" or k.startswith("wandb_")]:
        del saved["train"][key]
    json.dump(saved, open(os.path.join(workdir, "config.json"), "w"))
    train.train(config, workdir, progress=False)  # resumes from step 4: re-trains step 4, then 5, final eval at 6
    runs = offline_runs(offline)
    assert len(runs) == 2 and all(p.endswith(f"run-{run_id}.wandb") for p in runs)  # the same W&B run
    second = [p for p in runs if p != first[0]][0]
    after = history(read_wandb(second))
    assert sorted(after) == [5, 6]  # step 4 is not sent twice
    rows = {}
    for row in metrics.read_metrics(workdir):
        rows.setdefault(row["step"], {}).update({k: v for k, v in row.items() if k not in ("step", "time")})
    combined = {**before, **after}
    assert sorted(combined) == sorted(rows)
    for step, row in rows.items():
        for key, value in row.items():
            if key.startswith("train/") or key.startswith("eval/"):
                assert combined[step][key] == pytest.approx(value, rel=1e-6), (step, key)
    assert "train/loss" in combined[5] and "eval/raw_bpb" in combined[3] and "eval/raw_bpb" in combined[6]


def test_an_unknown_or_missing_tracker_stops_before_the_workdir_exists(tmp_path, corpus, monkeypatch):
    import builtins

    workdir = str(tmp_path / "never")
    config = helpers.tiny_run_config("configs/bytes.py:tiny", **CORPUS_RUN, **{
        "data.path": corpus, "train.trackers": "tensorboard,mlflow"})
    with pytest.raises(ValueError, match="'mlflow', which is not a tracker"):
        train.train(config, workdir, progress=False)
    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb" or name.startswith("wandb."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    config.train.trackers = "wandb"
    with pytest.raises(ValueError, match=r"wandb is not installed; run pip install 'proxy_jax\[wandb\]'"):
        train.train(config, workdir, progress=False)
    assert not os.path.exists(workdir)


def test_the_tensorboard_switch_still_turns_tensorboard_off():
    config = helpers.config_with(**{"train.trackers": "tensorboard,wandb", "train.tensorboard": False})
    pytest.importorskip("wandb")
    assert tracking.names(config.train) == ("wandb",)
    config.train.tensorboard, config.train.trackers = True, ""
    assert tracking.names(config.train) == ()


def test_a_sweep_groups_its_runs_by_name_and_method(tmp_path):
    from proxy_jax.scaling import sweep as sweep_lib

    sweep = {"preset": "tiny", "overrides": {"data.seq_len": 64, "data.batch_size": 4},
             "sizes": {"a": {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 1, "num_kv_heads": 1,
                             "head_dim": 32}},
             "methods": {"bytes": {"config": os.path.join(helpers.ROOT, "configs/bytes.py")}},
             "grids": [{"methods": ["bytes"], "sizes": ["a"], "budgets": [1e10], "seeds": [0, 1]}]}
    root = str(tmp_path / "sweep-2026")
    configs = [sweep_lib.run_config(sweep, spec, root) for spec in sweep_lib.runs(sweep)]
    assert len(configs) == 2
    assert {(c.train.wandb_group, c.train.wandb_job_type) for c in configs} == {("sweep-2026", "bytes")}


def test_the_command_refuses_an_unknown_tracker_in_one_sentence(tmp_path):
    import subprocess
    import sys

    workdir = tmp_path / "never"
    out = subprocess.run([sys.executable, "-m", "proxy_jax.main", "--config=configs/bytes.py:tiny",
                          f"--workdir={workdir}", "--config.train.trackers=tensorboard,wandbb"], cwd=helpers.ROOT,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == ("error: --config.train.trackers names 'wandbb', which is not a tracker; pick from "
                         "tensorboard, wandb (comma-separated), or '' for metrics.jsonl only.")
    assert not workdir.exists()
