"""Every writer goes through the storage layer, against the local Cloud Storage server of
``test_object_storage`` (``tests/gcs_emulator.py``): ``preprocess --output=gs://`` and ``export --out=gs://``
write the same files as to a local folder and leave nothing on local disk (not even in the temporary
folder they stage in); a run stopped by a non-finite loss on a ``gs://`` workdir keeps its metrics rows up
to the divergence; a URL ``evaluate --out`` is refused in one sentence."""

import json
import os
import re
import socket
import sys
import time

import pytest

import helpers
from proxy_jax import assemble
from test_object_storage import _cli, bucket  # noqa: F401 - the emulator fixture, shared

pytest.importorskip("gcsfs", reason="the [gcs] extra is not installed")

PREPROCESS = {"data.source": "dir", "data.path": helpers.STDLIB, "data.glob": "email/**/*.py",
              "data.val_fraction": 0.2}


def _local_files(root) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(root) for n in names}


def _bucket_files(fs, prefix) -> dict[str, bytes]:
    return {p.split(prefix + "/", 1)[1]: fs.cat(p) for p in fs.find(prefix)}


def _nothing_local(cwd, tmp):
    assert sorted(os.listdir(cwd)) == ["tmp"] and os.listdir(tmp) == [], (os.listdir(cwd), os.listdir(tmp))


@pytest.fixture()
def places(tmp_path):
    """A working folder and the temporary folder the commands stage in (TMPDIR): both must stay empty."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "cwd" / "tmp"
    tmp.mkdir(parents=True)
    return cwd, tmp


def test_preprocess_writes_its_shards_into_the_bucket_and_nothing_local(bucket, places, tmp_path):  # noqa: F811
    fs, env = bucket["fs"], bucket["env"]
    cwd, tmp = places
    args = ["--config=" + str(helpers.ROOT / "configs/proxy_gzip.py:tiny"), "--output=gs://runs/pre",
            "--num_shards=2", *[f"--config.{k}={v}" for k, v in PREPROCESS.items()]]
    done = _cli("proxy_jax.preprocess", args, {**env, "TMPDIR": str(tmp)}, cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote gs://runs/pre/manifest.json" in done.stdout
    _nothing_local(cwd, tmp)

    local = tmp_path / "local"
    assemble.preprocess(helpers.config_with("configs/proxy_gzip.py:tiny", **PREPROCESS), str(local), num_shards=2,
                        progress_bar=False)
    remote = _bucket_files(fs, "runs/pre")
    assert remote == _local_files(local)  # the same shards, statistics and manifest, byte for byte
    assert json.loads(remote["manifest.json"])["complete"] is True

    again = _cli("proxy_jax.preprocess", args, {**env, "TMPDIR": str(tmp)}, cwd)  # finished shards are kept
    assert again.returncode == 0, again.stderr[-3000:]
    assert _bucket_files(fs, "runs/pre") == remote
    _nothing_local(cwd, tmp)


def test_export_writes_the_checkpoint_into_the_bucket_and_nothing_local(bucket, bytes_run, places,  # noqa: F811
                                                                       tmp_path):
    pytest.importorskip("safetensors", reason="the [export] extra is not installed")
    pytest.importorskip("tokenizers", reason="the [export] extra is not installed")
    from proxy_jax import huggingface

    fs, env = bucket["fs"], bucket["env"]
    cwd, tmp = places
    done = _cli("proxy_jax.export", [f"--workdir={bytes_run}", "--out=gs://runs/hf"], {**env, "TMPDIR": str(tmp)}, cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "to gs://runs/hf" in done.stdout
    _nothing_local(cwd, tmp)
    huggingface.export_workdir(bytes_run, str(tmp_path / "local"))
    remote, local = _bucket_files(fs, "runs/hf"), _local_files(tmp_path / "local")
    assert sorted(remote) == sorted(local) and "model.safetensors" in remote
    for name in remote:  # safetensors' header lists its metadata in no fixed order: compare what it holds
        assert _tensors(remote[name]) == _tensors(local[name]) if name.endswith(".safetensors") else \
            remote[name] == local[name], name


def _tensors(data: bytes):
    from safetensors.numpy import load

    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    return header.get("__metadata__"), {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in load(data).items()}


def test_a_non_finite_loss_on_a_bucket_keeps_the_metrics_rows_up_to_it(bucket, places):  # noqa: F811
    fs, env = bucket["fs"], bucket["env"]
    cwd, tmp = places
    values = {**helpers.TINY, "train.steps": 40, "train.checkpoint_every": 40, "opt.lr": 1e12,
              "opt.warmup_steps": 0, "opt.clip_norm": 1e30}
    args = ["--config=" + str(helpers.ROOT / "configs/bytes.py:tiny"), "--workdir=gs://runs/diverged",
            *[f"--config.{k}={v}" for k, v in values.items()]]
    stopped = _cli("proxy_jax.main", args, {**env, "TMPDIR": str(tmp)}, cwd)
    assert stopped.returncode == 2 and "Loss became" in stopped.stderr, stopped.stderr[-3000:]
    at = int(re.search(r"at step (\d+)", stopped.stderr)[1])
    rows = [json.loads(line) for line in fs.cat("runs/diverged/metrics.jsonl").decode().splitlines()]
    # Rows are buffered on object storage (one object write every 30 s): closing the writer keeps them all.
    assert [r["step"] for r in rows] == list(range(at)) and at > 0


def test_evaluate_refuses_a_url_out_in_one_sentence(bytes_run, tmp_path):
    from proxy_jax.evaluation import codegen

    with pytest.raises(ValueError, match=r"--out=gs://runs/x.jsonl is a URL; write the results to a local file"):
        codegen.evaluate_task("humaneval", solutions="canonical", out="gs://runs/x.jsonl")
    assert os.listdir(tmp_path) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def test_an_unreachable_bucket_fails_fast_naming_the_endpoint_and_credentials(tmp_path, monkeypatch):
    from proxy_jax import storage

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    for key in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(key, raising=False)
    storage._unreachable.cache_clear()
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"--workdir=gs://bucket/runs/x: cannot reach Google Cloud Storage at "
                                         rf"{re.escape(endpoint)} .*STORAGE_EMULATOR_HOST.*credentials"):
        storage.check_usable("gs://bucket/runs/x")
    assert time.perf_counter() - start < storage.PROBE_TIMEOUT_S + 1  # gcsfs alone retries for about a minute
    storage._unreachable.cache_clear()

    done = _cli("proxy_jax.main", ["--config=" + str(helpers.ROOT / "configs/bytes.py:tiny"),
                                   "--workdir=gs://bucket/runs/x"], {**os.environ, "STORAGE_EMULATOR_HOST": endpoint},
                tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: --workdir=gs://bucket/runs/x: cannot reach")
    assert os.listdir(tmp_path) == []


def test_evaluate_without_gcsfs_names_the_gcs_extra(monkeypatch, capsys):
    from proxy_jax import evaluate

    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if the [gcs] extra were not installed
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--workdir=gs://bucket/runs/x"])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: --workdir=gs://bucket/runs/x is on Google Cloud Storage") and "[gcs]" in last
